"""Training callbacks: images/s on the progress bar, and the adapter exported when `fit` ends."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

from regionspot.training.export import save_adapter


class ImagesPerSecond(L.Callback):
    """Logs `train/images_per_sec` (all ranks together), smoothed, on the progress bar.

    Args:
        smoothing: weight of the newest step in the running mean.
    """

    def __init__(self, smoothing: float = 0.1) -> None:
        self.smoothing = smoothing
        self._start: float | None = None
        self._rate: float | None = None

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int):
        self._start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch: Any, batch_idx: int) -> None:
        if self._start is None:
            return
        elapsed = max(time.perf_counter() - self._start, 1e-9)
        rate = len(batch["images"]) * trainer.world_size / elapsed
        self._rate = rate if self._rate is None else (1 - self.smoothing) * self._rate + self.smoothing * rate
        pl_module.log("train/images_per_sec", self._rate, prog_bar=True, batch_size=1)


class ExportAdapter(L.Callback):
    """At the end of `fit`, write the adapter and its model YAML (see `regionspot.training.export`).

    Args:
        path: where to write; default `<trainer.default_root_dir>/adapter.safetensors` (+ adapter.yaml).
    """

    def __init__(self, path: str | None = None) -> None:
        self.path = path

    def output_path(self, trainer: L.Trainer) -> Path:
        return Path(self.path) if self.path else Path(trainer.default_root_dir) / "adapter.safetensors"

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        if "FSDP" in type(trainer.strategy).__name__:  # the adapter's weights are shards here
            rank_zero_warn("not exporting under FSDP: run `python train.py export --ckpt <last.ckpt>` instead")
            return
        weights, config = save_adapter(
            pl_module.model.adapter.state_dict(), pl_module.model_config, self.output_path(trainer)
        )
        rank_zero_info(f"exported the adapter to {weights}; load it with build_regionspot({str(config)!r})")
