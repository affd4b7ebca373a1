"""Loading weights from local files, with errors that say which file, which model and which keys.

Nothing here downloads: a path is a path, and a missing file is an error that says what to do.
Files are read with `torch.load(weights_only=True)` (`load_torch_file`), which runs no code from the file: one
that pickles more than tensors and plain data is refused, unrun, with an error naming it.

The original RegionSpot's released `model_final.pth` files are read too (`model_part`): detectron2's
`{"model": {"model.<name>": tensor}, "trainer": ..., "iteration": ...}`, holding its trained `to_clip`,
`decoder` and `projector` beside the frozen `sam` and `clip_model` it was trained with.
"""

from __future__ import annotations

import hashlib
import pickle
import re
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

_SHOWN_KEYS = 5
_DIGEST_BLOCK = 1 << 24
MODEL_PARTS = ("adapter", "sam", "clip")
# RegionSpot's module names -> ours: its adapter is our RegionFusionAdapter, `decoder` named alike.
_REGIONSPOT_ADAPTER_NAMES = {"to_clip.": "input_proj.", "projector.": "output_proj."}
_REGIONSPOT_BACKBONES = {"sam": "sam.", "clip": "clip_model."}


class CheckpointMismatchError(ValueError):
    """The checkpoint's tensors do not fit the model it was loaded into."""


def require_file(path: str | Path, *, what: str, hint: str) -> Path:
    """Return `path` as a Path, or raise FileNotFoundError naming it and saying how to get it."""
    path = Path(path).expanduser()
    if not path.is_file():
        looked = "" if path.is_absolute() else f" (looked for {path.absolute()}: relative to the folder you run in)"
        raise FileNotFoundError(f"{what} not found: {path}{looked}. {hint}")
    return path


def check_release_digest(path: Path, *, algorithm: str, expected: str, release: str) -> None:
    """Raise CheckpointMismatchError unless `path`'s `algorithm` digest starts with `expected` (an official release's).

    Called only for files under an official release's name: a truncated or corrupted download, or another file
    saved under that name, then fails here with a clear message instead of deep inside a loader (or not at all).
    """
    digest = hashlib.new(algorithm)
    with path.open("rb") as file:
        for block in iter(lambda: file.read(_DIGEST_BLOCK), b""):
            digest.update(block)
    if not digest.hexdigest().startswith(expected):
        raise CheckpointMismatchError(
            f"{path} carries the name of {release} but not its content ({algorithm} {digest.hexdigest()[:12]}..., "
            f"the release's starts with {expected[:12]}): the download is incomplete or the file is another one. "
            "Download it again, or rename a file of your own so that it is not taken for the release."
        )


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a state dict from .safetensors, a torch pickle (weights only) or a TorchScript archive.

    Unwraps the usual containers ({"state_dict": ...}, {"model": ...}) and DDP's "module." prefix.
    """
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device="cpu")
        except Exception as err:  # safetensors raises its own error type for a truncated or foreign file
            raise CheckpointMismatchError(f"cannot read {path} as safetensors: {err}") from err
    if _is_torchscript(path):
        # OpenAI's original CLIP files are TorchScript; their state dict carries three int entries. TorchScript's
        # own reader runs no Python from the file; a file that only looks like an archive fails here, named.
        try:
            state = torch.jit.load(str(path), map_location="cpu").state_dict()
        except Exception as err:
            raise CheckpointMismatchError(f"cannot read {path} as a TorchScript archive: {err}") from err
        return {k: v for k, v in state.items() if k not in ("input_resolution", "context_length", "vocab_size")}
    state = load_torch_file(path, what="PyTorch checkpoint", refused_hint=_resave_weights_hint(path))
    for container in ("state_dict", "model"):
        if isinstance(state, Mapping) and isinstance(state.get(container), Mapping):
            state = state[container]
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointMismatchError(f"{path} does not hold a state dict of tensors")
    if state and all(k.startswith("module.") for k in state):
        state = {k.removeprefix("module."): v for k, v in state.items()}
    return dict(state)


def load_torch_file(path: str | Path, *, what: str, refused_hint: str = "") -> Any:
    """`torch.load(path, weights_only=True)` on the CPU, memory-mapped where the format allows.

    weights_only unpickles tensors and plain data only, so a file that pickles anything else (a class, or a
    function such as `exec` that would run code) is refused before any of it runs.

    Args:
        path: the file.
        what: what the file should be ("PyTorch checkpoint", "Lightning checkpoint"), for errors.
        refused_hint: appended to the error when the file pickles more than weights (what the user can do).

    Raises:
        CheckpointMismatchError: naming `path`, if the file pickles more than weights or cannot be read at all.
    """
    path = Path(path)
    try:
        # Memory-mapped where the format allows: a RegionSpot file holds SAM and CLIP beside the adapter, and
        # only the tensors used are then read from disk.
        return torch.load(path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
    except pickle.UnpicklingError as err:
        # torch names the global that weights_only refuses; garbage fails without one.
        pickled = re.search(r"Unsupported global: GLOBAL (\S+)", str(err))
        if pickled is None:
            raise CheckpointMismatchError(f"cannot read {path} as a {what}: {err}") from err
        raise CheckpointMismatchError(
            f"{path} holds more than weights (it pickles {pickled.group(1)}), which torch.load(weights_only=True) "
            f"refuses to run: nothing of it was executed.{refused_hint}"
        ) from err
    except Exception as err:
        raise CheckpointMismatchError(f"cannot read {path} as a {what}: {err}") from err


def _resave_weights_hint(path: Path) -> str:
    saved = path.with_name(f"{path.stem}_weights.pth")
    return (
        " If you trust the file, re-save its weights once and use the new file:\n"
        f"  python -c \"import torch; c = torch.load({str(path)!r}, map_location='cpu', weights_only=False); "
        f"torch.save(c.get('model', c.get('state_dict', c)), {str(saved)!r})\""
    )


def model_part(state: Mapping[str, torch.Tensor], part: str, *, path: str | Path) -> dict[str, torch.Tensor]:
    """`state` as it is, or, for a RegionSpot release (`is_regionspot_release`), its `part` under our names.

    Args:
        state: a state dict from `read_state_dict`.
        part: "adapter" (RegionSpot's to_clip / decoder / projector, renamed to `RegionFusionAdapter`'s
            input_proj / decoder / output_proj; any other trained entry is kept, so that a strict load names
            it), "sam" or "clip" (its frozen backbone, the weights it was trained with).
        path: the file, for errors.
    """
    if part not in MODEL_PARTS:
        raise ValueError(f"part must be one of {MODEL_PARTS}, got {part!r}")
    if not is_regionspot_release(state):
        return dict(state)
    state = _without_detectron2_prefix(state)
    if part != "adapter":
        prefix = _REGIONSPOT_BACKBONES[part]
        found = {k.removeprefix(prefix): v for k, v in state.items() if k.startswith(prefix)}
        if not found:
            raise CheckpointMismatchError(
                f"{path} is a RegionSpot checkpoint without its frozen {part.upper()} weights (no model.{prefix}* "
                f"entries; it was re-saved without them): point {part}.checkpoint at the backbone's own file."
            )
        return found
    adapter = {}
    for key, tensor in state.items():
        if key.startswith(tuple(_REGIONSPOT_BACKBONES.values())):
            continue
        for old, new in _REGIONSPOT_ADAPTER_NAMES.items():
            if key.startswith(old):
                key = new + key.removeprefix(old)
                break
        adapter[key] = tensor
    return adapter


def is_regionspot_release(state: Mapping[str, torch.Tensor]) -> bool:
    """Whether `state` is in the original RegionSpot's layout (its `to_clip` / `projector`, with or without
    detectron2's "model." prefix), rather than this package's."""
    return any(k.startswith(("to_clip.", "projector.")) for k in _without_detectron2_prefix(state))


def _without_detectron2_prefix(state: Mapping[str, torch.Tensor]) -> Mapping[str, torch.Tensor]:
    # detectron2 wraps RegionSpot's network as `model`: every key of its checkpoints starts with "model.".
    if state and all(k.startswith("model.") for k in state):
        return {k.removeprefix("model."): v for k, v in state.items()}
    return state


def check_fits(model: nn.Module, state: Mapping[str, torch.Tensor], *, path: str | Path, model_name: str) -> None:
    """Raise CheckpointMismatchError, naming the first keys, unless `state` has exactly `model`'s keys and shapes.

    Works on a model built on the meta device: only the shapes are compared.
    """
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    wrong_shape = [
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and state[k].shape != v.shape
    ]
    if missing or unexpected or wrong_shape:
        problems = []
        for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong_shape)):
            if keys:
                problems.append(f"{len(keys)} {label} (first: {', '.join(keys[:_SHOWN_KEYS])})")
        raise CheckpointMismatchError(
            f"checkpoint {path} does not fit {model_name}: {'; '.join(problems)}. "
            "Check that the file is the one made for this variant."
        )


def load_weights(model: nn.Module, state: Mapping[str, torch.Tensor], *, path: str | Path, model_name: str) -> None:
    """Load `state` into `model` strictly; on any mismatch raise CheckpointMismatchError with the first keys."""
    check_fits(model, state, path=path, model_name=model_name)
    model.load_state_dict(state, strict=True)


def _is_torchscript(path: Path) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(name.endswith("constants.pkl") for name in archive.namelist())
