"""The first hour with the package: fast import, quiet output, self-contained smoke run, loud bad data, commands."""

from __future__ import annotations

import copy
import csv
import dataclasses
import importlib.metadata
import logging
import shutil
import subprocess
import sys

import lightning as L
import pytest
import torch
from synthetic_boxes import one_cpu_thread  # noqa: F401 (a fixture)

import regionspot
import regionspot.config
from regionspot import RegionSpotConfig, build_regionspot
from regionspot.checkpoint import CheckpointMismatchError
from regionspot.configs import resolve_config
from regionspot.data import DatasetConfig
from regionspot.data.toy import write_colour_boxes
from regionspot.evaluation import score_detections
from regionspot.evaluation.runner import EvalSettings, evaluate
from regionspot.modeling.clip import build_clip
from regionspot.modeling.sam import build_sam, build_tiny_sam
from regionspot.training import RegionDataModule, RegionSpotModule
from regionspot.training.cli import RegionSpotCLI

pytestmark = pytest.mark.usefixtures("one_cpu_thread")
TINY_TRAIN = resolve_config("tiny", kind="training")


def test_import_is_light_and_every_public_name_loads():
    probe = "import sys, regionspot; print(sorted(m for m in ('torch', 'open_clip', 'lightning') if m in sys.modules))"
    assert subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout == "[]\n"
    for name in regionspot.__all__:
        assert getattr(regionspot, name).__name__ == name
    with pytest.raises(AttributeError, match="no attribute 'Nope'"):
        regionspot.Nope  # noqa: B018


def test_every_model_config_dataclass_is_exported():
    configs = {name for name, value in vars(regionspot.config).items() if dataclasses.is_dataclass(value)}
    assert configs and configs <= set(regionspot.__all__), sorted(configs - set(regionspot.__all__))
    assert regionspot.VqaConfig is regionspot.config.VqaConfig


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
    assert scripts["regionspot-demo"] == "regionspot.commands.demo:main"
    assert scripts["regionspot-train"] == "regionspot.commands.train:main"
    assert scripts["regionspot-evaluate"] == "regionspot.evaluation.cli:main"
    assert scripts["regionspot-recognize"] == "regionspot.recognize:main"
    assert scripts["regionspot-configs"] == "regionspot.configs:main"


def test_the_tiny_config_runs_from_anywhere_on_data_it_draws_itself(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    RegionSpotCLI(args=["fit", "--config=tiny", "--trainer.max_steps=2", "--trainer.val_check_interval=2"])
    assert (tmp_path / "data/tiny/train.json").is_file() and (tmp_path / "data/tiny/val.json").is_file()
    assert (tmp_path / "runs/tiny/adapter.safetensors").is_file()


def test_a_run_on_unreadable_images_stops_with_a_clear_error(tmp_path):
    ann, images = write_colour_boxes(tmp_path, num_images=8)
    for png in images.iterdir():
        png.write_bytes(b"not a png")
    data = RegionDataModule(
        train={"broken": DatasetConfig(ann_file=str(ann), image_dir=str(images))}, batch_size=4, num_workers=0
    )
    module = RegionSpotModule(model_config=RegionSpotConfig.from_yaml("tiny"))
    trainer = L.Trainer(
        accelerator="cpu", max_steps=4, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        use_distributed_sampler=False, default_root_dir=str(tmp_path),
    )  # fmt: skip
    with pytest.raises(RuntimeError, match=r"100% of the 8 training images .* could not be used.*image_dir"):
        trainer.fit(module, data)


def test_random_backbones_come_from_the_config_seed_and_the_adapter_from_the_callers(tiny_config):
    torch.manual_seed(1)
    first = build_regionspot(tiny_config)
    torch.manual_seed(2)
    second = build_regionspot(tiny_config)
    for part in ("sam", "clip"):
        a, b = getattr(first, part).state_dict(), getattr(second, part).state_dict()
        assert all(torch.equal(a[k], b[k]) for k in a), part
    assert not torch.equal(first.adapter.output_proj.weight, second.adapter.output_proj.weight)
    other = copy.deepcopy(tiny_config)
    other.sam.seed = 7
    assert not torch.equal(
        build_regionspot(other).sam.sam.mask_decoder.iou_token.weight, first.sam.sam.mask_decoder.iou_token.weight
    )


def test_a_moved_run_folder_loads_and_evaluate_gives_validations_ap(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    RegionSpotCLI(args=["fit", f"--config={TINY_TRAIN}", "--trainer.max_steps=4", "--trainer.val_check_interval=4"])
    rows = list(csv.DictReader((tmp_path / "runs/tiny/logs/metrics.csv").read_text().splitlines()))
    val_ap = float(next(r["val/AP"] for r in rows if r.get("val/AP")))
    shutil.move(tmp_path / "runs/tiny", tmp_path / "elsewhere")
    (tmp_path / "other").mkdir()
    monkeypatch.chdir(tmp_path / "other")
    adapter_yaml = tmp_path / "elsewhere/adapter.yaml"
    assert RegionSpotConfig.from_yaml(adapter_yaml).adapter.checkpoint == str(
        tmp_path / "elsewhere/adapter.safetensors"
    )
    settings = EvalSettings(
        config=str(adapter_yaml), ann=str(tmp_path / "data/tiny/val.json"), images=str(tmp_path / "data/tiny/images"),
        out=str(tmp_path / "eval"), progress=False,
    )  # fmt: skip
    assert 0 < val_ap < 1
    assert evaluate(settings)["AP"] == pytest.approx(val_ap, abs=1e-6)  # validation logs float32


def test_a_file_under_an_official_name_must_be_the_release(tmp_path):
    fake_sam = tmp_path / "sam_vit_b_01ec64.pth"
    torch.save(build_tiny_sam().state_dict(), fake_sam)
    with pytest.raises(CheckpointMismatchError, match=r"name of SAM's sam_vit_b_01ec64\.pth but not its content.*md5"):
        build_sam(variant="tiny", checkpoint=str(fake_sam))
    renamed = tmp_path / "my_sam.pth"
    fake_sam.rename(renamed)
    build_sam(variant="tiny", checkpoint=str(renamed))  # a file of one's own is not checked
    fake_clip = tmp_path / "ViT-B-16.pt"
    fake_clip.write_bytes(b"truncated")
    with pytest.raises(CheckpointMismatchError, match=r"OpenAI's CLIP ViT-B-16\.pt.*starts with 5806e77cd80f"):
        build_clip(model_name="RegionSpot-Tiny-CLIP", checkpoint=str(fake_clip))
