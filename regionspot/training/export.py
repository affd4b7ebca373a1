"""Adapter export: a training checkpoint -> `adapter.safetensors` + a model YAML that loads it.

The YAML is the run's model config with `adapter.checkpoint` pointing at the exported file, so
`build_regionspot("adapter.yaml")` (or the predictor) gives the trained model.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
import yaml
from safetensors.torch import save_file

from regionspot.checkpoint import require_file
from regionspot.config import RegionSpotConfig
from regionspot.training.module import CONFIG_KEY, TRAINABLE_PREFIX


def save_adapter(state: dict[str, torch.Tensor], model_config: RegionSpotConfig, out: str | Path) -> tuple[Path, Path]:
    """Write the adapter weights to `out` (.safetensors) and the model config to `out` with suffix .yaml.

    Returns:
        (weights path, model config path).
    """
    out = Path(out)
    if out.suffix != ".safetensors":
        raise ValueError(f"the adapter is written as .safetensors, got {out}")
    out.parent.mkdir(parents=True, exist_ok=True)
    config = model_config.to_dict()
    config["adapter"]["checkpoint"] = str(out)
    tensors = {k: v.detach().cpu().float().contiguous() for k, v in state.items()}
    save_file(tensors, str(out), metadata={"regionspot_model_config": json.dumps(config)})
    config_path = out.with_suffix(".yaml")
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    return out, config_path


def read_training_checkpoint(path: str | Path) -> tuple[dict[str, torch.Tensor], RegionSpotConfig]:
    """The adapter weights (keys without the module prefix) and model config saved by RegionSpotModule."""
    path = require_file(path, what="training checkpoint", hint="Give a .ckpt written by `python train.py fit`.")
    try:
        checkpoint: dict[str, Any] = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise ValueError(f"cannot read {path} as a Lightning checkpoint: {err}") from err
    if not isinstance(checkpoint, dict) or CONFIG_KEY not in checkpoint or "state_dict" not in checkpoint:
        raise ValueError(f"{path} is not a RegionSpotModule checkpoint (no {CONFIG_KEY!r} or state_dict)")
    state = {
        k.removeprefix(TRAINABLE_PREFIX): v
        for k, v in checkpoint["state_dict"].items()
        if k.startswith(TRAINABLE_PREFIX)
    }
    if not state:
        raise ValueError(f"{path} holds no adapter weights (keys {TRAINABLE_PREFIX}*)")
    return state, RegionSpotConfig.from_dict(checkpoint[CONFIG_KEY])


def export_adapter(ckpt: str | Path, out: str | Path) -> tuple[Path, Path]:
    """`python train.py export --ckpt last.ckpt --out adapter.safetensors`: see `save_adapter`."""
    state, config = read_training_checkpoint(ckpt)
    return save_adapter(state, config, out)
