"""The first hour with the package: fast import, quiet output, self-contained smoke run, loud bad data, commands."""

from __future__ import annotations

import importlib.metadata
import logging
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
from synthetic_boxes import one_cpu_thread  # noqa: F401 (a fixture)

import regionspot
from regionspot import RegionSpotConfig
from regionspot.data import DatasetConfig
from regionspot.data.toy import write_colour_boxes
from regionspot.evaluation import score_detections
from regionspot.training import RegionDataModule, RegionSpotModule
from regionspot.training.cli import RegionSpotCLI

pytestmark = pytest.mark.usefixtures("one_cpu_thread")
TINY_TRAIN = Path("configs/tiny.yaml").resolve()


def test_import_is_light_and_every_public_name_loads():
    probe = "import sys, regionspot; print(sorted(m for m in ('torch', 'open_clip', 'lightning') if m in sys.modules))"
    assert subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout == "[]\n"
    for name in regionspot.__all__:
        assert getattr(regionspot, name).__name__ == name
    with pytest.raises(AttributeError, match="no attribute 'Nope'"):
        regionspot.Nope  # noqa: B018


def test_lvis_leaves_the_root_logger_and_the_console_alone(caplog):
    probe = "import logging, regionspot.evaluation.lvis_eval; print(logging.getLogger().handlers)"
    assert subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout == "[]\n"
    gt = {
        "images": [{"id": 1, "width": 50, "height": 50, "neg_category_ids": [], "not_exhaustive_category_ids": []}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [5, 5, 20, 20], "area": 400}],
        "categories": [{"id": 1, "name": "a", "frequency": "f"}],
    }
    with caplog.at_level(logging.INFO):
        score_detections(gt, [{"image_id": 1, "category_id": 1, "bbox": [5, 5, 20, 20], "score": 0.9}])
    assert not [r for r in caplog.records if r.name.startswith("lvis")]


def test_console_commands_are_installed():
    scripts = {e.name: e.value for e in importlib.metadata.entry_points(group="console_scripts")}
    assert scripts["regionspot-demo"] == "regionspot.demo.run:main"
    assert scripts["regionspot-train"] == "regionspot.training.cli:main"
    assert scripts["regionspot-evaluate"] == "regionspot.evaluation.cli:main"
    assert scripts["regionspot-recognize"] == "regionspot.recognize:main"


def test_the_tiny_config_runs_from_anywhere_on_data_it_draws_itself(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    RegionSpotCLI(args=["fit", f"--config={TINY_TRAIN}", "--trainer.max_steps=2", "--trainer.val_check_interval=2"])
    assert (tmp_path / "data/tiny/train.json").is_file() and (tmp_path / "data/tiny/val.json").is_file()
    assert (tmp_path / "runs/tiny/adapter.safetensors").is_file()


def test_a_run_on_unreadable_images_stops_with_a_clear_error(tmp_path):
    ann, images = write_colour_boxes(tmp_path, num_images=8)
    for png in images.iterdir():
        png.write_bytes(b"not a png")
    data = RegionDataModule(
        train={"broken": DatasetConfig(ann_file=str(ann), image_dir=str(images))}, batch_size=4, num_workers=0
    )
    module = RegionSpotModule(model_config=RegionSpotConfig.from_yaml("configs/model/tiny.yaml"))
    trainer = L.Trainer(
        accelerator="cpu", max_steps=4, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        use_distributed_sampler=False, default_root_dir=str(tmp_path),
    )  # fmt: skip
    with pytest.raises(RuntimeError, match=r"100% of the 8 training images .* could not be used.*image_dir"):
        trainer.fit(module, data)
