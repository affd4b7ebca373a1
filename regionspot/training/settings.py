"""The training module's settings, grouped: what the frozen backbones run in, validation, and (beside the code they
configure) the optimizer (`schedule.OptimizerSettings`), the objective (`modeling.objective.Objective`) and fault
tolerance (`fault_tolerance.FaultToleranceSettings`).

A training YAML and the command line name each setting by its own name under `model:` (`model.lr`,
`model.distill_loss_weight`), as checkpoints store them: `flat_settings` and `grouped_settings` turn one form into
the other, and `flat_signature` is the signature the command line reads.
"""

from __future__ import annotations

import dataclasses
import inspect
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import lightning as L
import torch

from regionspot.config import RegionSpotConfig
from regionspot.modeling.objective import Objective
from regionspot.training.fault_tolerance import FaultToleranceSettings
from regionspot.training.schedule import OptimizerSettings
from regionspot.training.validation import ValidationSettings

BACKBONE_PRECISIONS = ("auto", "float32", "bfloat16")


@dataclass(frozen=True, kw_only=True)
class BackboneSettings:
    """How the frozen SAM and CLIP run.

    Args:
        backbone_precision: dtype of the frozen SAM, and of CLIP when the model config's `clip.precision` is "auto"
            (a fixed one, e.g. RegionSpot's float16, is kept): "auto" (bfloat16 under a bf16 precision, except
            FSDP, whose own mixed precision casts them), "float32" or "bfloat16".
        compile_backbones: `torch.compile` SAM's and CLIP's image encoders (`RegionSpot.compile_backbones`) when
            fitting starts; the first steps of each image size pay the compilation.
        image_encoders: False builds the model without SAM's image encoder and CLIP's visual tower
            (`build_regionspot(..., image_encoders=False)`), for a run whose data, validation included, all come
            from feature caches; `train.py` sets it from the data (`reads_images`), and fitting refuses data that
            read images without them. A checkpoint loads with them (`load_from_checkpoint`), ready to read images.
        frozen_cache_size: keep the frozen SAM and CLIP outputs of up to this many (image, boxes) pairs in memory
            and reuse them when the same pixels and boxes come again (`regionspot.training.frozen_cache`). Worth
            it when a small data set is seen for many epochs, as in the demo; augmentations that change pixels or
            boxes simply miss. 0 (default) turns it off.
    """

    backbone_precision: str = "auto"
    compile_backbones: bool = False
    image_encoders: bool = True
    frozen_cache_size: int = 0

    def __post_init__(self) -> None:
        if self.backbone_precision not in BACKBONE_PRECISIONS:
            raise ValueError(
                f"backbone_precision must be one of {BACKBONE_PRECISIONS}, got {self.backbone_precision!r}"
            )

    def dtype(self, trainer: L.Trainer | None) -> torch.dtype:
        """The backbones' dtype under `trainer`'s precision (float32 without a trainer)."""
        if self.backbone_precision != "auto":
            return getattr(torch, self.backbone_precision)
        if trainer is None or "bf16" not in str(trainer.precision):
            return torch.float32
        is_fsdp = "FSDP" in type(trainer.strategy).__name__
        return torch.float32 if is_fsdp else torch.bfloat16


# The module's keyword arguments that are groups of settings, and the dataclass of each.
GROUPS: dict[str, type] = {
    "optimizer": OptimizerSettings,
    "objective": Objective,
    "backbones": BackboneSettings,
    "validation": ValidationSettings,
    "fault_tolerance": FaultToleranceSettings,
}
# The module's own keyword arguments beside the groups, with their defaults.
LOOSE = {"train_adapter": True, "seed": 0}
LOOSE_DOCS = """
    model_config: the model (a model YAML or a packaged config's name on the command line; a `RegionSpotConfig` in
        Python). Its fields can be set one by one: `--model.model_config.adapter.dropout 0.0`; stage 2 starts from a
        stage-1 adapter through `adapter.checkpoint`.
    train_adapter: False keeps the adapter as `adapter.checkpoint` gives it (no gradients, eval mode), so that a
        captioner learns on a recogniser that stays exactly as it was; True trains it (jointly with the captioner
        when there is one).
    seed: seeds dropout per step, so a resumed run draws the same masks as an uninterrupted one."""


SETTING_NAMES = frozenset(LOOSE).union(*({f.name for f in dataclasses.fields(g)} for g in GROUPS.values()))


def check_heads(
    model_config: RegionSpotConfig, objective: Objective, backbones: BackboneSettings, *, train_adapter: bool
) -> None:
    """Refuse settings that leave a head without what it needs."""
    if not train_adapter and model_config.adapter.checkpoint is None:
        raise ValueError("train_adapter=False keeps the adapter as it is: give it trained weights (adapter.checkpoint)")
    if objective.distill_loss_weight and not backbones.image_encoders:
        raise ValueError("distill_loss_weight needs CLIP's visual tower (its final LayerNorm and projection): "
                         "image_encoders=False leaves it out")  # fmt: skip
    if not train_adapter and model_config.caption is None and model_config.vqa is None:
        raise ValueError("train_adapter=False with no caption: or vqa: section leaves nothing to train")


def grouped_settings(flat: Mapping[str, Any]) -> dict[str, Any]:
    """The module's keyword arguments from settings by name (a YAML's `model:` keys, a checkpoint's
    hyperparameters); names that are no setting (e.g. `model_config`) are passed on as they are."""
    kwargs: dict[str, Any] = {k: v for k, v in flat.items() if not any(k in _names(c) for c in GROUPS.values())}
    for group, settings in GROUPS.items():
        kwargs[group] = settings(**{k: v for k, v in flat.items() if k in _names(settings)})
    return kwargs


def flat_settings(**groups: Any) -> dict[str, Any]:
    """Every setting by name, as the command line and checkpoints name them (the inverse of `grouped_settings`)."""
    flat = {k: v for k, v in groups.items() if k not in GROUPS}
    for group in GROUPS:
        flat.update(dataclasses.asdict(groups[group]))
    return flat


def flat_signature(returns: type) -> inspect.Signature:
    """`model_config`, then every setting by name with its type and default: what the command line reads."""
    kind = inspect.Parameter.KEYWORD_ONLY
    params = [inspect.Parameter("model_config", kind, annotation=RegionSpotConfig)]
    params += [inspect.Parameter(k, kind, default=v, annotation=type(v)) for k, v in LOOSE.items()]
    for settings in GROUPS.values():
        hints = typing.get_type_hints(settings)
        params += [
            inspect.Parameter(f.name, kind, default=f.default, annotation=hints[f.name])
            for f in dataclasses.fields(settings)
        ]
    return inspect.Signature(params, return_annotation=returns)


def flat_docs() -> str:
    """The Args section of every setting, from the groups' docstrings."""
    sections = [inspect.getdoc(settings).split("Args:\n", 1)[1] for settings in GROUPS.values()]
    return "Args:" + LOOSE_DOCS + "\n" + "\n".join(section.rstrip() for section in sections)


def _names(settings: type) -> set[str]:
    return {f.name for f in dataclasses.fields(settings)}
