"""Writing and fingerprinting files: the one place every artifact of a run (adapters, their YAML, detections,
metrics, manifests) is written, so that a reader (or a rerun after a kill) sees the old file or the new one, never
half of one."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

PARTIAL = ".partial"  # the suffix of a file being written (`.<name>.partial` beside `<name>`)


@contextlib.contextmanager
def atomic_path(path: str | Path, *, per_process: bool = False) -> Iterator[Path]:
    """A temporary path beside `path` to write; once the block ends without error, it is fsynced and renamed over
    `path` (os.replace: atomic on one file system). On an error the temporary file is removed and `path` untouched.

    Args:
        per_process: name the temporary file by the process too, for a file several processes may write at once (a
            cache); else one fixed name, so that what a killed write left is overwritten by the next.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}{f'.{os.getpid()}' if per_process else ''}{PARTIAL}")
    try:
        yield partial
        with open(partial, "rb") as written:
            os.fsync(written.fileno())
        os.replace(partial, path)
        fsync_folder(path.parent)  # so that the rename survives a crash of the machine too
    finally:
        partial.unlink(missing_ok=True)


def fsync_folder(folder: Path) -> None:
    try:
        descriptor = os.open(folder, os.O_RDONLY)
    except OSError:  # a file system without directory handles: the rename is as durable as it gets
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)


def write_atomic(path: str | Path, write: Callable[[IO], None], *, mode: str = "w") -> None:
    """Open a temporary file beside `path` in `mode`, let `write` fill it, then rename it over `path`."""
    with atomic_path(path) as partial, open(partial, mode) as file:
        write(file)


def write_text_atomic(path: str | Path, text: str) -> None:
    write_atomic(path, lambda file: file.write(text))


def write_json_atomic(path: str | Path, data: Any, *, indent: int | None = 1) -> None:
    """Write JSON to a temporary file, fsync it, rename it over `path`: a reader sees the old file or the new one."""
    write_atomic(path, lambda file: json.dump(data, file, indent=indent))


def save_picture(picture: Any, path: str | Path) -> None:
    """Save a PIL image atomically, in the format its file name's extension names (PNG, JPEG, ...)."""
    from PIL import Image

    suffix = Path(path).suffix.lower()
    if suffix not in Image.registered_extensions():
        raise ValueError(f"cannot tell an image format from {path}: give a name ending in .png, .jpg, ...")
    with atomic_path(path) as partial:
        picture.save(partial, format=Image.registered_extensions()[suffix])


def file_sha256(path: str | Path) -> str:
    """SHA-256 of a file's bytes, read in blocks (checkpoints are gigabytes)."""
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()
