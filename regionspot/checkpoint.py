"""Loading weights from local files, with errors that say which file, which model and which keys.

Nothing here downloads: a path is a path, and a missing file is an error that says what to do.
"""

from __future__ import annotations

import zipfile
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

_SHOWN_KEYS = 5


class CheckpointMismatchError(ValueError):
    """The checkpoint's tensors do not fit the model it was loaded into."""


def require_file(path: str | Path, *, what: str, hint: str) -> Path:
    """Return `path` as a Path, or raise FileNotFoundError naming it and saying how to get it."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"{what} not found: {path}. {hint}")
    return path


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a state dict from .safetensors, a torch pickle (weights only) or a TorchScript archive.

    Unwraps the usual containers ({"state_dict": ...}, {"model": ...}) and DDP's "module." prefix.
    """
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path), device="cpu")
    if _is_torchscript(path):
        # OpenAI's original CLIP files are TorchScript; their state dict carries three int entries.
        state = torch.jit.load(str(path), map_location="cpu").state_dict()
        return {k: v for k, v in state.items() if k not in ("input_resolution", "context_length", "vocab_size")}
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise CheckpointMismatchError(f"cannot read {path} as a PyTorch checkpoint: {err}") from err
    for container in ("state_dict", "model"):
        if isinstance(state, Mapping) and isinstance(state.get(container), Mapping):
            state = state[container]
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointMismatchError(f"{path} does not hold a state dict of tensors")
    if state and all(k.startswith("module.") for k in state):
        state = {k.removeprefix("module."): v for k, v in state.items()}
    return dict(state)


def load_weights(model: nn.Module, state: Mapping[str, torch.Tensor], *, path: str | Path, model_name: str) -> None:
    """Load `state` into `model` strictly; on any mismatch raise CheckpointMismatchError with the first keys."""
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
    model.load_state_dict(state, strict=True)


def _is_torchscript(path: Path) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(name.endswith("constants.pkl") for name in archive.namelist())
