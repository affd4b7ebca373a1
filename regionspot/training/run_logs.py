"""A training run's logs in one fixed place that a resumed run continues: `<default_root_dir>/logs/`.

Lightning's CSVLogger opens a new `logs/version_N` for every run (and deletes a `metrics.csv` it finds in the
folder it opens), so a run resumed with `--ckpt_path last` logged its steps in a second folder and no file held the
whole run. Here `fit` always logs to `<root>/logs/metrics.csv`; a resumed run keeps the rows the checkpoint's run
logged before the checkpoint's step and drops those logged after it (those steps are trained again, and logged
again), so the file reads as one uninterrupted run. Each row is written when it is logged (Lightning's writer keeps
100 steps in memory), so a kill loses only a row logged in the instant after a step checkpoint was saved (see
docs/training.md). wandb continues the same run id, kept in `<root>/logs/wandb_run_id`.

A `fit` without `--ckpt_path` into a root that holds an earlier run refuses (`earlier_run_files`), unless given
`--restart`, which deletes that run's logs and checkpoints first.
"""

from __future__ import annotations

import csv
import io
import os
import secrets
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.utilities import rank_zero_info, rank_zero_only

from regionspot.files import write_text_atomic

LOGS = "logs"  # <default_root_dir>/logs: the run's metrics.csv, hparams.yaml, config.yaml and wandb_run_id
WANDB_RUN_ID = "wandb_run_id"


class AppendingWriter(ExperimentWriter):
    """Lightning's CSV writer, but it appends to the `metrics.csv` it finds (Lightning's deletes it), and rewrites
    the file (for a new column, or to drop rows) atomically."""

    def __init__(self, log_dir: str) -> None:
        super().__init__(log_dir)
        header = _complete_lines(self.metrics_file_path)[:1]
        self.metrics_keys = next(csv.reader(header)) if header else []

    def _check_log_dir_exists(self) -> None:
        """Lightning's deletes the folder's metrics.csv; this one continues it."""

    def _rewrite_with_new_header(self, fieldnames: list[str]) -> None:
        self._rewrite(list(csv.DictReader(_complete_lines(self.metrics_file_path))), fieldnames)

    def keep_steps_before(self, step: int) -> int:
        """Rewrite `metrics.csv` with only its rows logged at steps before `step` (and no half-written last line).
        Returns how many rows it dropped."""
        if not self.metrics_keys:
            return 0
        rows = list(csv.DictReader(_complete_lines(self.metrics_file_path)))
        kept = [row for row in rows if row.get("step", "").isdigit() and int(row["step"]) < step]
        self._rewrite(kept, self.metrics_keys)
        return len(rows) - len(kept)

    def _rewrite(self, rows: list[dict[str, str]], fieldnames: list[str]) -> None:
        text = io.StringIO()
        writer = csv.DictWriter(text, fieldnames=fieldnames)
        writer.writeheader()
        writer.writerows(rows)
        write_text_atomic(self.metrics_file_path, text.getvalue())


def _complete_lines(path: str) -> list[str]:
    """The lines of `path` that end in a newline (a kill while writing may leave a torn last one); [] if none."""
    if not os.path.isfile(path):
        return []
    with open(path, newline="") as file:
        text = file.read()
    return text[: text.rfind("\n") + 1].splitlines(keepends=True)


class ContinuedCSVLogger(CSVLogger):
    """A CSVLogger writing `<save_dir>/logs/metrics.csv` in every run of a command, each row as it is logged.

    `ContinuedLogs` trims the file to the resumed step when a run starts from a checkpoint (to nothing when it
    starts from step 0)."""

    def __init__(self, save_dir: str | Path) -> None:
        super().__init__(save_dir, name="", version=LOGS, flush_logs_every_n_steps=1)

    @property
    def experiment(self) -> AppendingWriter:
        if self._experiment is None:
            self._fs.makedirs(self.log_dir, exist_ok=True)
            self._experiment = AppendingWriter(log_dir=self.log_dir)
        return self._experiment


class ContinuedLogs(L.Callback):
    """Trims the run's `ContinuedCSVLogger` file to the step the run starts from: the checkpoint's, or 0."""

    def __init__(self) -> None:
        self.resumed_step = 0

    def on_load_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        # Rows are logged at the number of optimizer steps done before (train) or at the end of (validation) their
        # batch: those of the batches before the checkpoint's, at steps below its global step.
        self.resumed_step = int(checkpoint.get("global_step", 0))

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.global_rank != 0:
            return
        for logger in trainer.loggers:
            if isinstance(logger, ContinuedCSVLogger):
                dropped = logger.experiment.keep_steps_before(self.resumed_step)
                if dropped:
                    rank_zero_info(
                        f"{logger.experiment.metrics_file_path}: dropped {dropped} rows logged from step "
                        f"{self.resumed_step} on, which this run trains again"
                    )


def wandb_run_id(save_dir: str | Path, *, resuming: bool) -> str:
    """The wandb run id of the run in `save_dir`: the one recorded in `<save_dir>/logs/wandb_run_id` when resuming
    and there is one, else a new one, recorded there (by rank 0) for the next resume."""
    path = Path(save_dir) / LOGS / WANDB_RUN_ID
    if resuming and path.is_file():
        return path.read_text().strip()
    new_id = secrets.token_hex(6)  # letters and digits, as wandb's own ids
    if _rank() == 0:
        write_text_atomic(path, new_id + "\n")
    return new_id


def earlier_run_files(root: str | Path, checkpoints: str | Path) -> list[Path]:
    """The files of an earlier `fit` in `root` that a fresh one would mix with: its logs, its checkpoints in
    `checkpoints` and SLURM's `hpc_ckpt_N.ckpt` in `root`."""
    root, checkpoints = Path(root), Path(checkpoints)
    logs = [p for p in (root / LOGS).glob("*") if p.is_file()]
    return sorted([*logs, *checkpoints.glob("*.ckpt"), *root.glob("hpc_ckpt_*.ckpt")])


class EarlierRunError(FileExistsError):
    """A fresh `fit` into a root that holds an earlier run; its message is one line, which `train.py` prints."""


def refuse_or_restart(root: str | Path, checkpoints: str | Path, *, restart: bool) -> None:
    """Before a fresh `fit` (no checkpoint to resume): with `restart`, delete an earlier run's files in `root`; else
    refuse, in one line, to start a run whose logs and checkpoints would mix with that run's.

    Raises:
        EarlierRunError: `root` holds an earlier run and `restart` is False.
    """
    if _rank() != 0:
        return  # rank 0 decides before Lightning starts the other ranks
    found = earlier_run_files(root, checkpoints)
    if restart:
        for path in found:
            path.unlink(missing_ok=True)
        if found:
            rank_zero_info(f"--restart: removed {len(found)} files of the earlier run in {root}")
        return
    if found:
        raise EarlierRunError(
            f"{root} holds an earlier run ({', '.join(os.path.relpath(p, root) for p in found[:3])}"
            f"{f' and {len(found) - 3} more' if len(found) > 3 else ''}): continue it with --ckpt_path last, add "
            "--restart to discard it and start afresh, or give another --trainer.default_root_dir"
        )


def _rank() -> int:
    return getattr(rank_zero_only, "rank", 0)
