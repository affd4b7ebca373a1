"""Nothing lost on a crash: checkpoints written atomically, one saved on pre-emption, bad steps skipped and counted.

- `AtomicCheckpointIO`: a checkpoint is written to a temporary file beside its final name, flushed to disk, then
  renamed over it, so a kill while writing leaves the previous checkpoint whole. Lightning's own writer stages
  it in the system temp folder and moves it, a copy when that is another file system (as on most clusters),
  and never syncs it to disk.
- `PreemptionCheckpoint`: on SIGTERM (pre-emption; SLURM's requeue sends it too) Lightning ends the run after
  the step in flight; this saves a checkpoint first, where the next run's resume looks for it.
- `NonFiniteSteps`: a step whose loss or gradients are NaN or infinite changes no weight; too many in a row stop
  the run (`FaultToleranceSettings.max_bad_steps_in_a_row`).
- `StepGuard`: the training module's callback that skips those steps, drops the gradients of heads no loss
  reached, and counts the training images that could not be used (stopping when too many could not).
"""

from __future__ import annotations

import logging
import os
import pickle
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.fabric.plugins.environments import SLURMEnvironment
from lightning.fabric.utilities.cloud_io import get_filesystem
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from lightning.pytorch.utilities.exceptions import SIGTERMException

from regionspot.files import PARTIAL, atomic_path

log = logging.getLogger(__name__)

PARTIAL_SUFFIX = PARTIAL  # a checkpoint being written; never ends in .ckpt, so "last" never picks one


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's torch checkpoint format, written atomically; read back with `weights_only=True` by default.

    A checkpoint goes to `.<name>.partial` in its own folder, is fsynced, and is renamed over `<name>`
    (`os.replace`, atomic on POSIX file systems), then the folder is fsynced so that the rename survives a crash
    of the machine too. A partial file a killed run left behind is overwritten by the next save of that name.
    Remote paths (`s3://...`, whose uploads are all or nothing already) are Lightning's to write.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any = None) -> None:
        if "://" in str(path):
            return super().save_checkpoint(checkpoint, path, storage_options=storage_options)
        if storage_options is not None:
            raise TypeError("AtomicCheckpointIO takes no storage_options")
        with atomic_path(path) as partial, partial.open("wb") as file:
            torch.save(checkpoint, file)

    def load_checkpoint(
        self, path: str | Path, map_location: Any = "cpu", weights_only: bool | None = None
    ) -> dict[str, Any]:
        # A checkpoint of this package holds tensors and plain data only: nothing in it needs to run code.
        weights_only = True if weights_only is None else weights_only
        if "://" in str(path) or not Path(path).is_file():  # remote, or missing: Lightning's own message
            return super().load_checkpoint(path, map_location=map_location, weights_only=weights_only)
        try:
            return super().load_checkpoint(path, map_location=map_location, weights_only=weights_only)
        except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError) as err:
            raise UnreadableCheckpointError(why_unreadable(Path(path), err)) from err


class UnreadableCheckpointError(ValueError):
    """A checkpoint to resume from that cannot be read, or pickles more than tensors and plain data; its message is
    one line, which `train.py` prints without a traceback."""


def why_unreadable(path: Path, err: BaseException) -> str:
    """One line: why the checkpoint `path` cannot be resumed from (`err`, what reading it raised) and what to do."""
    pickled = re.search(r"Unsupported global: GLOBAL (\S+)", str(err))
    if pickled is not None:
        return (
            f"cannot resume from {path}: it pickles {pickled.group(1)}, which could run code, and a checkpoint of "
            "train.py holds tensors and plain data only (refused unrun); resume from a checkpoint train.py wrote"
        )
    reason = (str(err).strip().splitlines() or [type(err).__name__])[0]
    return (
        f"cannot resume from {path}: it is not a readable checkpoint ({reason[:200]}); give another --ckpt_path "
        "(the step checkpoints beside it), or leave it out to start afresh"
    )


def last_checkpoint_path(trainer: L.Trainer) -> Path:
    """The `last` checkpoint of the run's ModelCheckpoint, where `fit(ckpt_path="last")` looks; without one,
    `<default_root_dir>/checkpoints/last.ckpt` (which only `--ckpt_path <that path>` resumes from)."""
    callback = trainer.checkpoint_callback
    if isinstance(callback, ModelCheckpoint) and callback.dirpath is not None:
        return Path(callback.dirpath) / f"{callback.CHECKPOINT_NAME_LAST}{callback.FILE_EXTENSION}"
    return Path(trainer.default_root_dir) / "checkpoints" / "last.ckpt"


def pin_checkpoint_folder(callback: L.Callback, root: str | Path) -> None:
    """Give a ModelCheckpoint without a `dirpath` the folder `<root>/checkpoints`, the same in every run of a command.

    Lightning's default is the logger's version folder (`logs/version_N/checkpoints`), a new one for every run:
    a rerun with `--ckpt_path last` looked there, found nothing and trained from step 0 without a word.
    """
    if not isinstance(callback, ModelCheckpoint) or callback.dirpath is not None:
        return
    folder = f"{str(root).rstrip('/')}/checkpoints"
    callback._fs = get_filesystem(folder)  # as ModelCheckpoint.__init__ sets it for a dirpath given there
    callback.dirpath = folder if "://" in folder else os.path.realpath(os.path.expanduser(folder))


def requeues_on_slurm(trainer: L.Trainer) -> bool:
    """Whether the run is a SLURM job that Lightning requeues (`SLURMEnvironment(auto_requeue=True)`)."""
    # Lightning keeps the cluster environment on its accelerator connector (no public property for one device).
    environment = getattr(trainer._accelerator_connector, "cluster_environment", None)
    return isinstance(environment, SLURMEnvironment) and environment.auto_requeue


class PreemptionCheckpoint(L.Callback):
    """On SIGTERM, save a checkpoint before the run exits, where the next run resumes from.

    Lightning ends a run that received SIGTERM once the step in flight is done (raising `SIGTERMException`); this
    then writes a checkpoint of that step: Lightning's next `hpc_ckpt_N.ckpt` in `default_root_dir` for a SLURM
    job that requeues (the requeued job, started without `--ckpt_path`, resumes from the newest of those by
    itself), else the run's `last` checkpoint (`--ckpt_path last` resumes from it). With gradient accumulation,
    a SIGTERM between two optimizer steps saves nothing: the previous checkpoint stays the one to resume from.
    """

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        if not isinstance(exception, SIGTERMException) or trainer.state.fn != TrainerFn.FITTING:
            return
        if trainer.fit_loop.epoch_loop.batch_progress.current.completed % trainer.accumulate_grad_batches:
            rank_zero_warn("SIGTERM between two optimizer steps of an accumulation: no checkpoint saved")
            return
        if requeues_on_slurm(trainer):
            path = Path(trainer._checkpoint_connector.hpc_save_path(trainer.default_root_dir))
        else:
            path = last_checkpoint_path(trainer)
        trainer.save_checkpoint(path)
        rank_zero_info(f"SIGTERM at step {trainer.global_step}: saved {path}; exiting")


class NonFiniteSteps:
    """Counts the optimizer steps skipped because the loss or a gradient was NaN or infinite.

    Args:
        max_in_a_row: stop after this many skipped steps in a row (the run has diverged, or its data is broken).
    """

    def __init__(self, max_in_a_row: int) -> None:
        if max_in_a_row < 1:
            raise ValueError(f"max_bad_steps_in_a_row must be >= 1, got {max_in_a_row}")
        self.max_in_a_row = max_in_a_row
        self.skipped = 0
        self.in_a_row = 0

    @staticmethod
    def is_bad(loss: torch.Tensor | None, parameters: Iterable[torch.nn.Parameter]) -> bool:
        """Whether the loss or the gradients' total norm (NaN if any entry is NaN, inf if any is infinite or the
        norm overflows) is not finite. One host sync."""
        gradients = [p.grad for p in parameters if p.grad is not None]
        norm = torch.nn.utils.get_total_norm(gradients) if gradients else torch.zeros(())
        checked = norm if loss is None else torch.stack([norm.float(), loss.detach().float().to(norm.device)])
        return not bool(torch.isfinite(checked).all())

    def record(self, bad: bool) -> None:
        self.skipped += bad
        self.in_a_row = self.in_a_row + 1 if bad else 0

    @property
    def too_many(self) -> bool:
        return self.in_a_row >= self.max_in_a_row

    def state_dict(self) -> dict[str, int]:
        return {"skipped": self.skipped, "in_a_row": self.in_a_row}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.skipped, self.in_a_row = int(state["skipped"]), int(state["in_a_row"])


BAD_STEPS_KEY = "regionspot_bad_steps"  # NonFiniteSteps' counts in a checkpoint
_SKIP_CHECK_EVERY = 50  # steps between checks of the skipped share (a collective on every rank)


@dataclass(frozen=True, kw_only=True)
class FaultToleranceSettings:
    """When a run gives up on its data or its steps.

    Args:
        max_skipped_fraction: stop with an error when more than this share of the training images read (checked
            every 50 steps and at each epoch's end) could not be used, e.g. unreadable files.
        max_bad_steps_in_a_row: a step whose loss or gradients are NaN or infinite is skipped (no weight changes;
            counted as `train/skipped_steps`); after this many in a row the run saves its `last` checkpoint and
            stops with an error.
    """

    max_skipped_fraction: float = 0.5
    max_bad_steps_in_a_row: int = 20

    def __post_init__(self) -> None:
        if not 0.0 <= self.max_skipped_fraction <= 1.0:
            raise ValueError(f"max_skipped_fraction must lie in [0, 1], got {self.max_skipped_fraction}")
        if self.max_bad_steps_in_a_row < 1:
            raise ValueError(f"max_bad_steps_in_a_row must be >= 1, got {self.max_bad_steps_in_a_row}")


class StepGuard(L.Callback):
    """Keeps a run going through bad data and bad steps, on every rank alike.

    The module tells it each step's loss, the heads a loss reached and the images read (`record_step`). Before the
    optimizer steps, a step whose loss or a gradient is NaN or infinite loses its gradients: AdamW then leaves the
    weights and its moments as they were; the step still counts, so the data and the schedule go on as in any other
    run. Likewise the heads no loss reached on any rank since the last step lose their (zero) gradients, so AdamW
    leaves them alone instead of coasting on its momentum and decaying their weights: a VQA head trained on a third
    of the steps moves on those steps only. Images a batch could not use are counted (`data/skipped_images`).

    Args:
        settings: when to stop.
        heads: the model's trained parts by attribute name, as `record_step` names them.
    """

    def __init__(self, settings: FaultToleranceSettings, *, heads: Sequence[str]) -> None:
        self.settings = settings
        self.heads = tuple(heads)
        self.bad_steps = NonFiniteSteps(settings.max_bad_steps_in_a_row)
        self.skipped: Counter = Counter()
        self.images_read = 0  # on this rank, kept or skipped
        self._loss: torch.Tensor | None = None
        self._reached: set[str] = set()  # the heads a loss reached since the last optimizer step
        self._images: tuple[str, list] = ("", [])  # the step's data set and image ids, for the log
        self._head_parameters: dict[str, list[torch.nn.Parameter]] = {}

    def record_step(self, *, loss: torch.Tensor, reached: Iterable[str], dataset: str, image_ids: list) -> None:
        self._loss, self._images = loss.detach(), (dataset, image_ids)
        self._reached |= set(reached)

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int):
        skipped = batch.get("skipped") or {}
        self.images_read += len(batch["images"]) + sum(skipped.values())
        if not skipped:
            return
        self.skipped.update(skipped)
        log.warning("skipped images in a batch: %s (so far on this rank: %s)", skipped, dict(self.skipped))
        pl_module.log("data/skipped_images", float(sum(self.skipped.values())), reduce_fx="max")

    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer) -> None:
        trained = [p for group in optimizer.param_groups for p in group["params"]]  # what the step would change
        bad = trainer.strategy.reduce_boolean_decision(NonFiniteSteps.is_bad(self._loss, trained), all=False)
        self._loss = None
        self._drop_unreached_gradients(trainer, pl_module)
        if bad:
            optimizer.zero_grad(set_to_none=True)
            log.warning(
                "step %d: NaN or infinite loss or gradients; the optimizer step is skipped (data set %s, images %s)",
                trainer.global_step,
                *self._images,
            )
        self.bad_steps.record(bad)
        pl_module.log("train/skipped_steps", float(self.bad_steps.skipped), batch_size=1)

    def _drop_unreached_gradients(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        reached = torch.tensor([head in self._reached for head in self.heads], device=pl_module.device)
        reached = trainer.strategy.reduce(reached.float(), reduce_op="sum") > 0  # a loss on any rank counts
        self._reached = set()
        for head, was_reached in zip(self.heads, reached.tolist(), strict=True):
            if not was_reached:
                for p in self._parameters_of(pl_module, head):
                    p.grad = None

    def _parameters_of(self, pl_module: L.LightningModule, head: str) -> list[torch.nn.Parameter]:
        """A head's parameters, listed once: walking a head's modules every step (an LLM's hundreds) cost about 5 ms
        a step of the demo's training."""
        if head not in self._head_parameters:
            module = getattr(pl_module.model, head)
            self._head_parameters[head] = [] if module is None else list(module.parameters())
        return self._head_parameters[head]

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx) -> None:
        if trainer.global_step % _SKIP_CHECK_EVERY == 0:
            self._stop_if_too_many_skipped(trainer)
        if self.bad_steps.too_many:
            self._stop_after_bad_steps(trainer, pl_module)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._stop_if_too_many_skipped(trainer)

    def _stop_after_bad_steps(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Save the run where a resume finds it (its weights are those before the bad steps), then stop."""
        path = last_checkpoint_path(trainer)
        trainer.save_checkpoint(path)
        count, step, lr = self.bad_steps.in_a_row, trainer.global_step, pl_module.hparams["lr"]
        raise RuntimeError(
            f"the {count} optimizer steps before step {step} all had a NaN or infinite loss or gradient and were "
            f"skipped (model.max_bad_steps_in_a_row={self.settings.max_bad_steps_in_a_row}): stopping. The weights "
            f"are those before them; the run is saved in {path}. Check the data those steps read (the warnings name "
            f"their images), then rerun the same command with a lower rate and --ckpt_path {path} (e.g. "
            f"--model.lr={lr / 10:g}): a resumed run takes the rate, schedule and weight decay it is given"
        )

    def _stop_if_too_many_skipped(self, trainer: L.Trainer) -> None:
        """Stop (on every rank at once) when more than `max_skipped_fraction` of the images read were unusable."""
        fraction = sum(self.skipped.values()) / max(self.images_read, 1)
        limit = self.settings.max_skipped_fraction
        if trainer.strategy.reduce_boolean_decision(self.images_read > 0 and fraction > limit, all=False):
            raise RuntimeError(
                f"{fraction:.0%} of the {self.images_read} training images read on this rank could not be used "
                f"({dict(self.skipped)}), more than model.max_skipped_fraction={limit}: "
                "check data.train.<name>.image_dir and the files it names (the log names each skipped one)"
            )

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        checkpoint[BAD_STEPS_KEY] = self.bad_steps.state_dict()

    def on_load_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        if BAD_STEPS_KEY in checkpoint:
            self.bad_steps.load_state_dict(checkpoint[BAD_STEPS_KEY])
            self.bad_steps.in_a_row = 0  # a resumed run (a lower lr, mended data) gets the whole allowance again
