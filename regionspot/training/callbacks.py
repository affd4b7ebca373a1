"""Training callbacks: a progress bar over steps, images/s on it, the validation scores printed as a table, and the
adapter exported when `fit` ends."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import ProgressBar
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from tqdm.auto import tqdm

from regionspot.evaluation.lvis_eval import LVIS_METRICS, format_metrics
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


class ValidationScores(L.Callback):
    """Prints each validation's scores during `fit` as a small table, on rank zero: box AP by the validation set's
    protocol (in %, as `evaluate.py` prints it), and the caption and VQA losses when those heads train.

    `trainer.validate` is left to Lightning, which prints its own table of the same numbers.
    """

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero or trainer.state.fn != TrainerFn.FITTING:
            return
        scores = {k.removeprefix("val/"): float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
        if scores:
            tqdm.write(validation_table(scores, step=trainer.global_step))  # above a progress bar, not through it


def validation_table(scores: dict[str, float], *, step: int) -> str:
    """`scores` (AP, AP50, ... as fractions; losses by name) as a few lines of text: AP's table, then the rest."""
    ap = {k: v for k, v in scores.items() if k in LVIS_METRICS}
    rest = {k: v for k, v in scores.items() if k not in LVIS_METRICS}
    lines = [f"step {step}: validation" + (" AP (%)" if ap else "")]
    if ap:
        lines.append(format_metrics(ap))
    if rest:
        lines.append(", ".join(f"{name.replace('_', ' ')} {value:.3f}" for name, value in sorted(rest.items())))
    return "\n".join(lines)


class StepProgressBar(ProgressBar):
    """One bar over the run's optimizer steps, with the rate, the time left, the loss and the last validation AP.

    RegionSpot's runs are bounded by `max_steps`, not epochs; Lightning's own bar counts epochs
    (and reads "Epoch 26/-2" when there is no epoch limit).

    Args:
        refresh_every: steps between updates of the loss shown.
    """

    def __init__(self, refresh_every: int = 10) -> None:
        super().__init__()
        self.refresh_every = refresh_every
        self._enabled = True
        self._bar: tqdm | None = None

    def disable(self) -> None:
        self._enabled = False

    def enable(self) -> None:
        self._enabled = True

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        total = trainer.max_steps if trainer.max_steps > 0 else None
        show = self._enabled and trainer.is_global_zero
        self._bar = tqdm(total=total, initial=trainer.global_step, desc="training", unit="step", disable=not show)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch: Any, batch_idx: int) -> None:
        self._bar.update(trainer.global_step - self._bar.n)
        if trainer.global_step % self.refresh_every == 0:
            self._show_metrics(trainer, pl_module, refresh=False)

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._bar is not None and not trainer.sanity_checking:
            self._bar.write(f"step {trainer.global_step}: validating on {sum(trainer.num_val_batches)} batch(es)")

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._bar is not None and not trainer.sanity_checking:
            self._show_metrics(trainer, pl_module, refresh=True)

    def _show_metrics(self, trainer: L.Trainer, pl_module: L.LightningModule, *, refresh: bool) -> None:
        """The metrics logged with prog_bar=True: train/loss as `loss`, ..., and val/AP as it is."""
        shown = {k: v for k, v in self.get_metrics(trainer, pl_module).items() if k.startswith(("train/", "val/"))}
        self._bar.set_postfix({k.removeprefix("train/"): v for k, v in shown.items()}, refresh=refresh)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._bar is not None:
            self._bar.close()


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
        decoder, vqa = pl_module.model.caption_decoder, pl_module.model.vqa
        weights, config = save_adapter(
            pl_module.model.adapter.state_dict(),
            pl_module.model_config,
            self.output_path(trainer),
            caption_decoder=None if decoder is None else decoder.state_dict(),
            vqa=None if vqa is None else vqa.trained_state_dict(),
        )
        rank_zero_info(f"exported the adapter to {weights}; load it with build_regionspot({str(config)!r})")
