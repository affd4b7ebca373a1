"""The LightningCLI behind `regionspot-train` / train.py (regionspot.commands.train): RegionSpotModule and
RegionDataModule with RegionSpot's defaults, whose `--config` and `--model.model_config` also take the name of a
packaged config (regionspot.configs)."""

from __future__ import annotations

import inspect
import logging
import os
import pickle
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from jsonargparse import ActionYesNo
from lightning.fabric.plugins.environments import SLURMEnvironment
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.loggers import CSVLogger, Logger
from lightning.pytorch.plugins.io import CheckpointIO
from lightning.pytorch.utilities import rank_zero_warn
from lightning.pytorch.utilities.warnings import PossibleUserWarning

from regionspot.configs import resolve_config
from regionspot.training.callbacks import ExportAdapter, ImagesPerSecond, StepProgressBar, ValidationScores
from regionspot.training.datamodule import RegionDataModule, reads_images
from regionspot.training.fault_tolerance import (
    AtomicCheckpointIO,
    PreemptionCheckpoint,
    UnreadableCheckpointError,
    pin_checkpoint_folder,
    why_unreadable,
)
from regionspot.training.module import RegionSpotModule
from regionspot.training.run_logs import LOGS, ContinuedCSVLogger, ContinuedLogs, refuse_or_restart, wandb_run_id
from regionspot.training.schedule import OPTIMIZER_SETTINGS
from regionspot.training.settings import flat_docs, flat_signature, grouped_settings


def training_module(**settings) -> RegionSpotModule:
    """A `RegionSpotModule` from its settings by name, as a training YAML's `model:` section and the command line
    (`--model.lr`) name them."""
    return RegionSpotModule(**grouped_settings(settings))


training_module.__signature__ = flat_signature(RegionSpotModule)  # what LightningCLI reads
training_module.__doc__ = f"{inspect.cleandoc(training_module.__doc__)}\n\n{flat_docs()}"


@dataclass
class LoggingConfig:
    """Where metrics go: wandb (offline unless told otherwise, never a login prompt) and always a CSV file."""

    wandb: bool = True  # False, or WANDB_MODE=disabled, or wandb not installed: CSV only
    project: str = "regionspot"
    run_name: str | None = None
    offline: bool = True  # offline runs can be uploaded later with `wandb sync <dir>`


def build_loggers(
    save_dir: str | Path, config: LoggingConfig, *, fitting: bool = True, resuming: bool = False
) -> list[Logger]:
    """A CSV logger, and a wandb logger beside it when wandb is wanted and usable.

    Args:
        fitting: a `fit`, which logs to `<save_dir>/logs` in every run of a command (`run_logs`), and to the wandb
            run whose id `<save_dir>/logs/wandb_run_id` keeps; else (`validate`) a new `logs/validate/version_N`
            and a new wandb run.
        resuming: the `fit` continues from a checkpoint: it continues the earlier run's wandb run.
    """
    csv_logger = ContinuedCSVLogger(save_dir) if fitting else CSVLogger(Path(save_dir) / LOGS, name="validate")
    loggers: list[Logger] = [csv_logger]
    if not config.wandb or os.environ.get("WANDB_MODE") == "disabled":
        return loggers
    try:
        import wandb  # noqa: F401
        from lightning.pytorch.loggers import WandbLogger
    except ImportError:
        rank_zero_warn("wandb is not installed: logging to CSV only")
        return loggers
    if config.offline:
        os.environ["WANDB_MODE"] = "offline"
    os.environ.setdefault("WANDB_SILENT", "true")
    run: dict[str, str] = {}
    if fitting:  # the same wandb run across resumes
        run = {"id": wandb_run_id(save_dir, resuming=resuming), "resume": "allow"}
    loggers.append(
        WandbLogger(project=config.project, name=config.run_name, save_dir=str(save_dir), offline=config.offline, **run)
    )
    return loggers


class RegionSpotCLI(LightningCLI):
    """LightningCLI with RegionSpot's defaults: no Lightning-injected sampler, seeded, loggers from `logging`,
    checkpoints written atomically (unless `trainer.plugins` names another CheckpointIO) to
    `<default_root_dir>/checkpoints` (unless a ModelCheckpoint names its `dirpath`), one saved on SIGTERM
    (`regionspot.training.fault_tolerance`), and each validation's scores printed (`ValidationScores`)."""

    def __init__(self, *, args: list[str] | None = None, **kwargs) -> None:
        kwargs.setdefault("seed_everything_default", 0)
        kwargs.setdefault("save_config_kwargs", {"overwrite": True})  # a resumed run logs to the same folder
        kwargs.setdefault("trainer_defaults", {"use_distributed_sampler": False})
        # No abbreviations: a misspelt `--trainer.max_step` is an error, not `--trainer.max_steps`.
        strict = {"allow_abbrev": False}
        kwargs.setdefault("parser_kwargs", {**strict, **{name: strict for name in self.subcommands()}})
        args = sys.argv[1:] if args is None else args
        with lightning_notices_left_out():
            super().__init__(training_module, RegionDataModule, args=resolve_config_names(args), **kwargs)

    @staticmethod
    def subcommands() -> dict[str, set[str]]:
        """fit and validate: the model has no test or predict step (evaluate.py scores a data set)."""
        return {name: skip for name, skip in LightningCLI.subcommands().items() if name in ("fit", "validate")}

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_lightning_class_args(ImagesPerSecond, "throughput")
        parser.add_lightning_class_args(ExportAdapter, "export")
        parser.add_class_arguments(LoggingConfig, "logging")
        parser.add_argument(
            "--restart", action=ActionYesNo, default=False,
            help="fit: discard the earlier run's logs and checkpoints in trainer.default_root_dir and start afresh",
        )  # fmt: skip
        # A run whose data all come from feature caches never builds the image encoders (nearly all the weights).
        parser.link_arguments(
            ("data.train", "data.val"), "model.image_encoders", compute_fn=_needs_image_encoders, apply_on="parse"
        )

    def _parse_ckpt_path(self) -> None:
        """Lightning's (it puts the checkpoint's hyperparameters over the command's), with two changes: the command's
        optimizer settings win (RegionSpotModule applies them to the restored optimizer; they were silently
        replaced by the checkpoint's), and a checkpoint that cannot be read is a one-line error."""
        subcommand = self.config.get("subcommand")
        path = self.config[subcommand].get("ckpt_path") if subcommand else None
        if not path or not Path(path).is_file():
            return super()._parse_ckpt_path()
        given = {name: self.config[subcommand]["model"].get(name) for name in OPTIMIZER_SETTINGS}
        try:
            super()._parse_ckpt_path()
        except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError) as err:
            raise UnreadableCheckpointError(why_unreadable(Path(path), err)) from err
        for name, value in given.items():
            self.config[subcommand]["model"][name] = value

    def instantiate_trainer(self, **kwargs):
        trainer_config = self._get(self.config_init, "trainer", default={})
        root = trainer_config.get("default_root_dir") or os.getcwd()
        for callback in _as_list(trainer_config.get("callbacks")):
            pin_checkpoint_folder(callback, root)  # where the same command plus --ckpt_path last looks
        fitting = self.config.get("subcommand") == "fit"
        resuming = fitting and self._resumes(root)
        if fitting and not resuming:  # a fresh run never mixes its logs and checkpoints with an earlier one's
            restart = self._get(self.config, "restart")
            refuse_or_restart(root, self._checkpoint_folder(trainer_config, root), restart=restart)
        if trainer_config.get("logger") in (None, True):
            logging_config = self._get(self.config_init, "logging")
            kwargs["logger"] = build_loggers(root, logging_config, fitting=fitting, resuming=resuming)
        plugins = _as_list(trainer_config.get("plugins"))
        if not any(isinstance(plugin, CheckpointIO) for plugin in plugins):
            kwargs["plugins"] = [*plugins, AtomicCheckpointIO()]
        added = [PreemptionCheckpoint(), ValidationScores(), ContinuedLogs()]
        if trainer_config.get("enable_progress_bar") is not False:
            added.append(StepProgressBar())
        kwargs["callbacks"] = [*_as_list(trainer_config.get("callbacks")), *added]
        return super().instantiate_trainer(**kwargs)

    def _resumes(self, root: str) -> bool:
        """Whether `fit` continues from a checkpoint: `--ckpt_path` given, or a SLURM job that Lightning resumes
        from the newest `hpc_ckpt_N.ckpt` in `root` by itself."""
        if self._get(self.config, "ckpt_path") is not None:
            return True
        return SLURMEnvironment.detect() and any(Path(root).glob("hpc_ckpt_*.ckpt"))

    @staticmethod
    def _checkpoint_folder(trainer_config, root: str) -> str:
        folders = [c.dirpath for c in _as_list(trainer_config.get("callbacks")) if isinstance(c, ModelCheckpoint)]
        return next((folder for folder in folders if folder), f"{root}/checkpoints")


@contextmanager
def lightning_notices_left_out() -> Iterator[None]:
    """Lightning's notices that a run of this command cannot act on, left out of its output while it runs."""
    tips = logging.getLogger("lightning.pytorch.utilities.rank_zero")

    def no_tips(record: logging.LogRecord) -> bool:  # the training output is not the place for product tips
        return "💡 Tip" not in record.getMessage()

    with warnings.catch_warnings():
        # The frozen backbones are in eval mode by design (the module says so once, at fit start).
        warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode", category=PossibleUserWarning)
        # The training batches are a function of the step (MixedBatchSampler's start_batch): a run resumed mid-epoch
        # goes on with the very batches an uninterrupted one reads (tests/test_robust_resume.py), which Lightning
        # cannot see.
        warnings.filterwarnings("ignore", message="You're resuming from a checkpoint that ended before the epoch ended")
        # Lightning 2.6 asks torch's pytree in a way torch 2.14 deprecates, once per run: not ours to act on.
        warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)", category=FutureWarning)
        tips.addFilter(no_tips)
        try:
            yield
        finally:
            tips.removeFilter(no_tips)


def _needs_image_encoders(train, val) -> bool:
    """`reads_images` of the data sets as the parser holds them (a data class as its class path and init args)."""

    def fields(config):
        return getattr(config, "init_args", config)

    return bool(reads_images({name: fields(c) for name, c in (train or {}).items()}, fields(val)))


def resolve_config_names(args: list[str]) -> list[str]:
    """`args` with the value of every `--config` (a training config) and `--model.model_config` (a model config)
    that names no file but a packaged config replaced by that config's path."""
    kinds = {"--config": "training", "--model.model_config": "model"}
    resolved = list(args)
    for i, arg in enumerate(args):
        option, equals, value = arg.partition("=")
        at = i if equals else i + 1
        if option not in kinds or at == len(args):
            continue
        value = value if equals else args[at]
        if "\n" in value or ":" in value:
            continue  # YAML text given inline
        try:
            path = str(resolve_config(value, kind=kinds[option]))
        except FileNotFoundError:
            continue  # not ours to name: jsonargparse says what is wrong with it
        resolved[at] = f"{option}={path}" if equals else path
    return resolved


def _as_list(value) -> list:
    return [] if value is None else value if isinstance(value, list) else [value]
