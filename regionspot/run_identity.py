"""What a run's results depend on, recorded beside them, so that a rerun resumes only the very same run.

An evaluation (or an extraction) appends finished images to its output folder and a rerun skips them. That is
right only if the rerun would have produced the same records: the same weights behind every path the model YAML
names, the same annotation file, the same images, the same settings. `run_identity` gathers all of these (files
by their SHA-256, the image folder by a listing of names and sizes); `check_or_record` refuses, in one line that
names what changed, to add to a folder holding another run's records.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from regionspot.config import RegionSpotConfig
from regionspot.files import file_sha256, write_json_atomic

log = logging.getLogger(__name__)
RUN_FILE = "run.json"  # the run's identity, checked when a run resumes
# Every field of a model YAML that names weights: a file, or (vqa.llm) a folder.
WEIGHT_FIELDS = ("sam.checkpoint", "clip.checkpoint", "adapter.checkpoint", "caption.checkpoint", "vqa.checkpoint",
                 "vqa.llm")  # fmt: skip


def path_digest(path: str | Path | None) -> dict[str, Any] | None:
    """{"path", "sha256"} of a file, or of a folder (every file in it, by relative name and content); None for no
    path; {"path", "sha256": None} for a path that does not exist."""
    if path is None or path == "":
        return None
    path = Path(path)
    if path.is_file():
        return {"path": str(path.resolve()), "sha256": file_sha256(path)}
    if path.is_dir():
        digest = hashlib.sha256()
        for file in sorted(p for p in path.rglob("*") if p.is_file()):
            digest.update(f"{file.relative_to(path).as_posix()}\t{file_sha256(file)}\n".encode())
        return {"path": str(path.resolve()), "sha256": digest.hexdigest()}
    return {"path": str(path), "sha256": None}


def weight_digests(config: RegionSpotConfig) -> dict[str, dict[str, Any] | None]:
    """The digest of every weight file (or folder) the model config names, keyed by its field ("adapter.checkpoint")."""
    digests = {}
    for name in WEIGHT_FIELDS:
        section, key = name.split(".")
        part = getattr(config, section)
        digests[name] = None if part is None else path_digest(getattr(part, key))
    return digests


def listing_digest(paths: Iterable[str | Path], root: str | Path) -> dict[str, Any]:
    """The images a run reads, by their names under `root` and sizes (-1: missing): a file replaced, added to the
    run or taken from it changes the digest, without reading every image."""
    root = Path(root)
    digest, count = hashlib.sha256(), 0
    for path in paths:
        path = Path(path)
        size = path.stat().st_size if path.is_file() else -1
        name = path.relative_to(root).as_posix() if path.is_relative_to(root) else str(path)
        digest.update(f"{name}\t{size}\n".encode())
        count += 1
    return {"folder": str(root.resolve()), "files": count, "sha256": digest.hexdigest()}


def dataset_digests(
    *, ann: str | None, images: str | None, hf_path: str | None, hf_split: str, sources: Iterable[str | int]
) -> dict[str, Any]:
    """What a data set read by `build_dataset` is: its annotation file's bytes and the listing of the image files
    its records read (`sources`), or its Hugging Face name and split (a `save_to_disk` folder by its content)."""
    if ann is not None:
        files = [source for source in sources if isinstance(source, str)]
        return {"ann": path_digest(ann), "images": listing_digest(files, images or ".")}
    return {"hf_path": path_digest(hf_path) if Path(hf_path or "").is_dir() else hf_path, "hf_split": hf_split}


def run_identity(
    *, config_path: str | Path, config: RegionSpotConfig, data: dict[str, Any], settings: dict[str, Any]
) -> dict[str, Any]:
    """Everything a run's records depend on.

    Args:
        config_path: the model YAML (its text: sections that name no file, such as the adapter's depth).
        config: the config the run builds (overrides applied): its weight files are digested.
        data: the data's digests ({"ann": path_digest(...), "images": listing_digest(...), ...}).
        settings: the run's settings that shape its records.
    """
    return {
        "config": path_digest(config_path),
        "weights": weight_digests(config),
        "data": data,
        "settings": settings,
    }


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(tree, dict) or not tree:
        return {prefix: tree}
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        flat.update(_flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return flat


def differences(previous: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """What differs between two identities, one short phrase per changed item ("weights.adapter.checkpoint.sha256
    3f2a9c1d.. -> 9b1c4e02..")."""
    old, new = _flatten(previous), _flatten(current)
    changed = []
    for key in sorted(old.keys() | new.keys()):
        if old.get(key, "<absent>") != new.get(key, "<absent>"):
            changed.append(f"{key} {_short(old.get(key, '<absent>'))} -> {_short(new.get(key, '<absent>'))}")
    return changed


def _short(value: Any) -> str:
    """A digest by its first 12 hex digits; anything else as JSON, cut at 60 characters."""
    if isinstance(value, str) and len(value) == 64:
        return value[:12] + ".."
    return value if isinstance(value, str) else json.dumps(value)[:60]


def check_or_record(out: Path, identity: dict[str, Any], *, parts: str, restart: bool = False) -> None:
    """Refuse to add to `out` if it holds records (files matching `parts`) of a run with another identity; else
    record `identity` there. With `restart`, first delete those records and the old identity: a fresh run.

    Raises:
        ValueError: in one line, naming what changed and the two ways to start afresh.
    """
    run_file = out / RUN_FILE
    if restart:
        removed = sorted(out.glob(parts))
        for path in [*removed, run_file]:
            path.unlink(missing_ok=True)
        if removed:
            log.info("--restart: removed %d part files of the earlier run in %s", len(removed), out)
    elif run_file.is_file() and any(out.glob(parts)):
        try:
            previous = json.loads(run_file.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError):
            previous = {}
        changed = differences(previous, identity)
        if changed:
            raise ValueError(
                f"{out} holds part of another run ({'; '.join(changed[:4])}"
                f"{f'; and {len(changed) - 4} more' if len(changed) > 4 else ''}; see {run_file}): its records "
                "cannot be mixed with this run's. Add --restart to discard them and start afresh, or give another --out"
            )
    write_json_atomic(run_file, identity, indent=2)
