"""The training module's settings: grouped, typed and checked in Python; by their flat names in every training YAML,
on the command line and in checkpoints; and importing the training code changes no warning filter."""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import pytest

from regionspot.configs import resolve_config
from regionspot.modeling.objective import Objective
from regionspot.training import BackboneSettings, FaultToleranceSettings, OptimizerSettings, ValidationSettings
from regionspot.training.settings import GROUPS, SETTING_NAMES, flat_settings, grouped_settings

TRAINING_CONFIGS = ["tiny", "demo", *(f"stage{s}_{p}" for s in (1, 2) for p in ("bb", "bl", "bl336"))]


def _run(code: str) -> str:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()


def test_importing_the_training_code_sets_no_warning_filter():
    """module.py and datamodule.py used to add warning filters (and a logging filter) at import, for every program
    that imported them; the command line now leaves those notices out while it runs, and nothing else."""
    changed = _run(
        "import logging, warnings\n"
        "import lightning.pytorch.cli, regionspot.build, regionspot.data.detection, regionspot.evaluation.metric\n"
        "before = list(warnings.filters)  # Lightning's own, and those of the libraries the model imports\n"
        "import regionspot.training.cli, regionspot.training.module, regionspot.training.datamodule\n"
        "rank_zero = logging.getLogger('lightning.pytorch.utilities.rank_zero')\n"
        "print(len([f for f in warnings.filters if f not in before]), len(rank_zero.filters))"
    )
    assert changed == "0 0"


def test_the_objective_does_not_import_lightning():
    assert _run("import sys, regionspot.modeling.objective; print('lightning' in sys.modules)") == "False"


def test_flat_names_and_groups_round_trip_and_every_setting_has_one_name():
    names = [f.name for group in GROUPS.values() for f in dataclasses.fields(group)]
    assert len(names) == len(set(names))  # a flat name says which group it belongs to
    flat = {"lr": 1e-3, "lr_milestones": [5], "softmax_loss_weight": 3.0, "frozen_cache_size": 7, "val_top_k": 5,
            "max_bad_steps_in_a_row": 2, "seed": 4}  # fmt: skip
    grouped = grouped_settings(flat)
    assert grouped["optimizer"] == OptimizerSettings(lr=1e-3, lr_milestones=[5])
    assert grouped["objective"] == Objective(softmax_loss_weight=3.0)
    assert grouped["backbones"] == BackboneSettings(frozen_cache_size=7)
    assert grouped["validation"] == ValidationSettings(val_top_k=5)
    assert grouped["fault_tolerance"] == FaultToleranceSettings(max_bad_steps_in_a_row=2)
    back = flat_settings(**grouped)
    assert set(back) == SETTING_NAMES - {"train_adapter"} and {k: back[k] for k in flat} == flat


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: OptimizerSettings(lr_milestones=[10, 5]), "lr_milestones must be increasing"),
        (lambda: OptimizerSettings(warmup_start_factor=2.0), "warmup_start_factor"),
        (lambda: Objective(distill_loss_weight=-1.0), "loss weights must be >= 0"),
        (lambda: Objective(caption_regions_per_image=0), "caption_regions_per_image"),
        (lambda: Objective(loss_reduction="sum"), "loss_reduction must be one of"),
        (lambda: BackboneSettings(backbone_precision="float16"), "backbone_precision must be one of"),
        (lambda: ValidationSettings(val_top_k=0), "val_top_k"),
        (lambda: FaultToleranceSettings(max_skipped_fraction=2.0), "max_skipped_fraction"),
        (lambda: FaultToleranceSettings(max_bad_steps_in_a_row=0), "max_bad_steps_in_a_row"),
    ],
)
def test_each_group_checks_its_settings_when_made(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_settings_are_keyword_only():
    with pytest.raises(TypeError):
        OptimizerSettings(1e-3)  # type: ignore[misc]


@pytest.mark.parametrize("name", TRAINING_CONFIGS)
def test_every_shipped_training_config_gives_the_module_its_settings(name, capsys):
    """Each packaged training YAML parses against the command line's signature, and each setting its `model:`
    section names reaches the module's groups with that value."""
    import yaml

    from regionspot.training.cli import RegionSpotCLI

    path = resolve_config(name, kind="training")
    written = {k: v for k, v in (yaml.safe_load(path.read_text()).get("model") or {}).items() if k != "model_config"}
    args = ["fit", "--config", str(path), "--model.model_config", "tiny", "--print_config"]
    with pytest.raises(SystemExit) as exit_info:
        RegionSpotCLI(args=args)
    assert exit_info.value.code in (0, None)
    parsed = yaml.safe_load(capsys.readouterr().out)["model"]
    grouped = flat_settings(**grouped_settings({k: v for k, v in parsed.items() if k != "model_config"}))
    for key, value in written.items():
        assert grouped[key] == value, key
