"""Adapter export: a training checkpoint -> `adapter.safetensors` (+ `caption_decoder.safetensors` for a model
with a captioner) + a model YAML that loads them.

The YAML is the run's model config with `adapter.checkpoint` (and `caption.checkpoint`) pointing at the
exported files, so
`build_regionspot("adapter.yaml")` (or the predictor) gives the trained model. The original RegionSpot's
`model_final.pth` converts the same way, given the model config it was trained for
(the packaged regionspot_{bb,bl,bl336} configs): only its adapter is written, under this package's names.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import torch
import yaml
from safetensors.torch import save_file

from regionspot.build import build_regionspot
from regionspot.checkpoint import (
    check_fits,
    is_regionspot_release,
    load_torch_file,
    model_part,
    read_state_dict,
    require_file,
)
from regionspot.config import RegionSpotConfig
from regionspot.files import atomic_path, write_text_atomic
from regionspot.modeling.adapter import RegionFusionAdapter
from regionspot.modeling.regionspot import RegionSpot

# The parts a training checkpoint holds (the frozen backbones come from the model config's files): the adapter,
# also when it is kept frozen under a captioner (a checkpoint is then whole), the caption decoder and the VQA head.
HEAD_PARTS = ("adapter", "caption_decoder", "vqa")
CONFIG_KEY = "regionspot_model_config"  # the model config in a training checkpoint, as a plain dict

# RegionSpot's adapters by (CLIP width, text dim): what to give as --config.
_REGIONSPOT_VARIANTS = {
    (768, 512): "BB (CLIP ViT-B/16): regionspot_bb",
    (1024, 768): "BL or BL@336 (CLIP ViT-L/14): regionspot_bl or regionspot_bl336",
}


CAPTION_DECODER_FILE = "caption_decoder.safetensors"
VQA_FILE = "vqa.safetensors"


def save_adapter(
    state: dict[str, torch.Tensor],
    model_config: RegionSpotConfig,
    out: str | Path,
    *,
    caption_decoder: dict[str, torch.Tensor] | None = None,
    vqa: dict[str, torch.Tensor] | None = None,
) -> tuple[Path, Path]:
    """Write the adapter weights to `out` (.safetensors) and the model config to `out` with suffix .yaml; the
    caption decoder's weights, when given, to `caption_decoder.safetensors` beside them, and the VQA head's
    trained weights (`RegionLanguageModel.trained_state_dict`) to `vqa.safetensors`.

    Returns:
        (adapter weights path, model config path).
    """
    if (caption_decoder is None) != (model_config.caption is None):
        raise ValueError("give the caption decoder's weights exactly when the model config has a caption: section")
    if (vqa is None) != (model_config.vqa is None):
        raise ValueError("give the VQA head's weights exactly when the model config has a vqa: section")
    out = Path(out)
    if out.suffix != ".safetensors":
        raise ValueError(f"the adapter is written as .safetensors, got {out}")
    out.parent.mkdir(parents=True, exist_ok=True)
    config = model_config.to_dict()
    for section in ("sam", "clip"):  # the backbones stay where they are: absolute, so that the run folder can move
        if config[section]["checkpoint"] is not None:
            config[section]["checkpoint"] = str(Path(config[section]["checkpoint"]).resolve())
    config["adapter"]["checkpoint"] = out.name  # beside the YAML: found from wherever the folder goes
    if caption_decoder is not None:
        config["caption"]["checkpoint"] = CAPTION_DECODER_FILE
        _save_tensors(caption_decoder, out.parent / CAPTION_DECODER_FILE, config)
    if vqa is not None:
        config["vqa"]["llm"] = str(Path(config["vqa"]["llm"]).resolve())
        config["vqa"]["checkpoint"] = VQA_FILE
        _save_tensors(vqa, out.parent / VQA_FILE, config)
    _save_tensors(state, out, config)
    config_path = out.with_suffix(".yaml")
    write_text_atomic(config_path, yaml.safe_dump(config, sort_keys=False))
    return out, config_path


def _save_tensors(state: dict[str, torch.Tensor], path: Path, config: dict[str, Any]) -> None:
    tensors = {k: v.detach().cpu().float().contiguous() for k, v in state.items()}
    with atomic_path(path) as partial:  # a reader (an evaluation, a resumed export) never sees half a file
        save_file(tensors, str(partial), metadata={"regionspot_model_config": json.dumps(config)})


def checkpointed(model: RegionSpot, key: str) -> bool:
    """Whether a training checkpoint holds the weight `key` of `RegionSpotModule.state_dict()`: the heads' do, except
    a VQA head's LLM weights that do not train (a frozen LLM comes from its folder, as the backbones from theirs)."""
    if key.startswith("model.vqa."):
        return key.removeprefix("model.vqa.") in model.vqa.trained_state_dict()
    return key.startswith(tuple(f"model.{part}." for part in HEAD_PARTS))


def read_training_checkpoint(path: str | Path) -> tuple[dict[str, dict[str, torch.Tensor]], RegionSpotConfig]:
    """The trained parts saved by RegionSpotModule ("adapter", "caption_decoder" for a model with a captioner,
    "vqa" for one with a VQA head; each a state dict without the module prefix) and the model config.

    Raises:
        FileNotFoundError: if there is no such file. ValueError (CheckpointMismatchError): naming the file, if it
            cannot be read, pickles more than tensors and plain data (refused unrun), or is not such a checkpoint.
    """
    path = require_file(path, what="training checkpoint", hint="Give a .ckpt written by `python train.py fit`.")
    checkpoint: dict[str, Any] = load_torch_file(
        path,
        what="Lightning checkpoint",
        refused_hint=" A checkpoint of `train.py fit` holds only tensors and plain data: this one was made "
        "elsewhere, or changed since.",
    )
    if (
        not isinstance(checkpoint, dict)
        or CONFIG_KEY not in checkpoint
        or not isinstance(checkpoint.get("state_dict"), dict)
    ):
        hint = ""
        weights = checkpoint.get("model", checkpoint) if isinstance(checkpoint, dict) else None
        if isinstance(weights, dict) and is_regionspot_release(weights):
            hint = (
                " It is an original RegionSpot checkpoint: give its model config, "
                "e.g. --config regionspot_bl (a packaged model config)."
            )
        raise ValueError(f"{path} is not a RegionSpotModule checkpoint (no {CONFIG_KEY!r} or state_dict).{hint}")
    parts = {}
    for part in HEAD_PARTS:
        prefix = f"model.{part}."
        state = {k.removeprefix(prefix): v for k, v in checkpoint["state_dict"].items() if k.startswith(prefix)}
        if state:
            parts[part] = state
    if "adapter" not in parts:
        raise ValueError(f"{path} holds no adapter weights (keys model.adapter.*)")
    return parts, RegionSpotConfig.from_dict(checkpoint[CONFIG_KEY])


def read_regionspot_release(path: str | Path, model_config: RegionSpotConfig) -> dict[str, torch.Tensor]:
    """The adapter of an original RegionSpot `model_final.pth` (or a state dict in its layout) under this
    package's names, checked to fit the adapter `model_config` describes (BB and BL adapters differ in shape)."""
    path = require_file(path, what="RegionSpot checkpoint", hint="Give RegionSpot's released model_final.pth.")
    state = read_state_dict(path)
    if not is_regionspot_release(state):
        raise ValueError(
            f"{path} is not an original RegionSpot checkpoint (no to_clip / projector weights). --config is for "
            "those; a checkpoint of `python train.py fit` carries its own model config."
        )
    adapter = model_part(state, "adapter", path=path)
    expected = _adapter_shapes(model_config)
    if "input_proj.weight" in adapter and "output_proj.weight" in adapter:  # else check_fits names what is missing
        found = _variant(adapter["input_proj.weight"].shape[0], adapter["output_proj.weight"].shape[0])
        wanted = _variant(expected.input_proj.out_features, expected.output_proj.out_features)
        if found != wanted:
            raise ValueError(f"{path} holds a RegionSpot-{found}, but the model config describes RegionSpot-{wanted}")
    check_fits(expected, adapter, path=path, model_name="the adapter of this model config")
    return adapter


def _variant(width: int, text_dim: int) -> str:
    return _REGIONSPOT_VARIANTS.get((width, text_dim), f"adapter of CLIP width {width} and text dim {text_dim}")


def _adapter_shapes(config: RegionSpotConfig) -> RegionFusionAdapter:
    """The adapter `config` describes, built on the meta device: its shapes, no weights read or allocated."""
    bare = dataclasses.replace(
        config,
        sam=dataclasses.replace(config.sam, checkpoint=None),
        clip=dataclasses.replace(config.clip, checkpoint=None),
        adapter=dataclasses.replace(config.adapter, checkpoint=None),
    )
    with torch.device("meta"):
        return build_regionspot(bare).adapter


def export_adapter(
    ckpt: str | Path, out: str | Path, *, model_config: RegionSpotConfig | str | Path | None = None
) -> tuple[Path, Path]:
    """`python train.py export --ckpt last.ckpt --out adapter.safetensors`: see `save_adapter`.

    With `model_config` (or its YAML), `ckpt` is an original RegionSpot checkpoint (`read_regionspot_release`),
    written with that config; without, a checkpoint of `python train.py fit`, written with the config it holds.
    """
    if model_config is None:
        parts, config = read_training_checkpoint(ckpt)
        return save_adapter(
            parts["adapter"], config, out, caption_decoder=parts.get("caption_decoder"), vqa=parts.get("vqa")
        )
    if not isinstance(model_config, RegionSpotConfig):
        model_config = RegionSpotConfig.from_yaml(model_config)
    if model_config.caption is not None or model_config.vqa is not None:
        raise ValueError(
            "RegionSpot's releases have no captioner or VQA head: give a model config without caption: and vqa:"
        )
    return save_adapter(read_regionspot_release(ckpt, model_config), model_config, out)
