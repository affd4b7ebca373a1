"""RegionSpot's learning-rate schedule: linear warm-up, then steps down by a factor at milestones."""

from __future__ import annotations

import dataclasses
from bisect import bisect_right
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from torch.optim.lr_scheduler import LambdaLR


class WarmupMultiStep:
    """LR multiplier at optimizer step `step` (a picklable callable, so LambdaLR can checkpoint it).

    Args:
        warmup_steps: steps of linear warm-up from `warmup_start_factor` to 1.
        milestones: steps at which the rate is multiplied by `gamma` (RegionSpot: 350k, 420k).
    """

    def __init__(
        self, *, warmup_steps: int, warmup_start_factor: float, milestones: Sequence[int], gamma: float
    ) -> None:
        if warmup_steps < 0 or not 0.0 <= warmup_start_factor <= 1.0:
            raise ValueError("warmup_steps must be >= 0 and warmup_start_factor in [0, 1]")
        if list(milestones) != sorted(milestones):
            raise ValueError(f"lr_milestones must be increasing, got {list(milestones)}")
        self.warmup_steps = warmup_steps
        self.warmup_start_factor = warmup_start_factor
        self.milestones = list(milestones)
        self.gamma = gamma

    def __call__(self, step: int) -> float:
        factor = self.gamma ** bisect_right(self.milestones, step)
        if step < self.warmup_steps:
            progress = step / self.warmup_steps
            factor *= self.warmup_start_factor + (1.0 - self.warmup_start_factor) * progress
        return factor


@dataclass(frozen=True, kw_only=True)
class OptimizerSettings:
    """AdamW and its schedule (RegionSpot's defaults). A resumed run takes these from its command line, not from the
    checkpoint (whose optimizer and scheduler state Lightning restores, rates and schedule included).

    Args:
        lr: AdamW's learning rate (RegionSpot: 2.5e-5).
        vqa_lr: the VQA head's learning rate (its projector, and the LLM's weights that train); None: `lr`. An
            LLM's LoRA weights or projector usually want another rate than the recogniser's adapter.
        weight_decay: AdamW's weight decay (RegionSpot: 1e-4).
        warmup_steps: steps of linear warm-up (RegionSpot: 1000).
        warmup_start_factor: the rate's factor at step 0 of the warm-up.
        lr_milestones: steps at which the rate is multiplied by `lr_gamma` (RegionSpot: 350k, 420k).
        lr_gamma: that factor (RegionSpot: 0.1).
    """

    lr: float = 2.5e-5
    vqa_lr: float | None = None
    weight_decay: float = 1e-4
    warmup_steps: int = 1000
    warmup_start_factor: float = 0.001
    lr_milestones: Sequence[int] = (350_000, 420_000)
    lr_gamma: float = 0.1

    def __post_init__(self) -> None:
        schedule_of(dataclasses.asdict(self))  # checks the schedule's settings


OPTIMIZER_SETTINGS = tuple(field.name for field in dataclasses.fields(OptimizerSettings))


def schedule_of(hparams: Mapping[str, Any]) -> WarmupMultiStep:
    """The schedule that a module's hyperparameters (`RegionSpotModule.hparams`) describe."""
    return WarmupMultiStep(
        warmup_steps=hparams["warmup_steps"],
        warmup_start_factor=hparams["warmup_start_factor"],
        milestones=hparams["lr_milestones"],
        gamma=hparams["lr_gamma"],
    )


def changed_settings(saved: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    """ "lr 0.002 -> 0.001" for each optimizer setting in which `current` differs from the checkpoint's `saved`."""
    changed = []
    for name in OPTIMIZER_SETTINGS:
        old, new = saved.get(name), current.get(name)
        if (list(old) if isinstance(old, Sequence) else old) != (list(new) if isinstance(new, Sequence) else new):
            changed.append(f"model.{name} {old} -> {new}")
    return changed


def apply_settings(scheduler: LambdaLR, hparams: Mapping[str, Any]) -> None:
    """Give a restored AdamW and its LambdaLR the run's own rates, weight decay and schedule, at the restored step:
    parameter group 0 gets `lr`, a second group (the VQA head's) `vqa_lr` or `lr`. AdamW's moments are kept."""
    schedule = schedule_of(hparams)
    groups = scheduler.optimizer.param_groups
    base_lrs = [hparams["lr"], hparams["vqa_lr"] or hparams["lr"]][: len(groups)]
    for group, lr in zip(groups, base_lrs, strict=True):
        group.update(initial_lr=lr, weight_decay=hparams["weight_decay"], lr=lr * schedule(scheduler.last_epoch))
    scheduler.base_lrs = base_lrs
    scheduler.lr_lambdas = [schedule] * len(groups)
    scheduler._last_lr = [group["lr"] for group in groups]  # what get_last_lr() (and the LR monitor) report
