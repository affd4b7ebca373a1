"""RegionSpot's learning-rate schedule: linear warm-up, then steps down by a factor at milestones."""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Sequence


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
