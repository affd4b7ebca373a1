"""Configs: every shipped YAML parses and points at the right parts; the factory's errors."""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from regionspot import RegionSpotConfig, RegionSpotPredictor, build_regionspot
from regionspot.checkpoint import CheckpointMismatchError
from regionspot.configs import KINDS

MODEL_CONFIGS = sorted(KINDS["model"].glob("*.yaml"))


def test_configs_are_shipped():
    names = {p.stem for p in MODEL_CONFIGS}
    assert {"tiny", "regionspot_bb", "regionspot_bl", "regionspot_bl336", "regionspot_ll", "regionspot_hl"} <= names


@pytest.mark.parametrize("path", MODEL_CONFIGS, ids=lambda p: p.stem)
def test_shipped_config_parses_and_names_local_files(path, tmp_path, monkeypatch):
    config = RegionSpotConfig.from_yaml(path)
    if config.sam.variant == "tiny":
        return
    assert config.sam.checkpoint and config.clip.checkpoint and "quickgelu" in config.clip.model_name
    monkeypatch.chdir(tmp_path)  # no checkpoints here: the error must name the SAM file, before any build
    with pytest.raises(FileNotFoundError, match=Path(config.sam.checkpoint).name):
        build_regionspot(config)


@pytest.mark.parametrize("path", MODEL_CONFIGS, ids=lambda p: p.stem)
def test_regionspot_configs_select_regionspots_inference_and_the_others_ours(path):
    clip = RegionSpotConfig.from_yaml(path).clip
    choices = (clip.prompt_mean, clip.class_names, clip.resize, clip.precision)
    if path.stem in ("regionspot_bb", "regionspot_bl", "regionspot_bl336"):
        assert choices == ("raw", "raw", "bilinear", "float16")
    else:
        assert choices == ("normalized", "readable", "bicubic", "auto")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("sam: {variant: vit_x}", "sam.variant must be one of"),
        ("sam: {variant: vit_b, checkpiont: a.pth}", r"unknown key\(s\) \['checkpiont'\] in sam"),
        ("clip: {templates: fancy}", "clip.templates"),
        ("clip: {prompt_mean: median}", "clip.prompt_mean must be one of"),
        ("clip: {class_names: clean}", "clip.class_names must be one of"),
        ("clip: {resize: nearest}", "clip.resize must be one of"),
        ("clip: {precision: fp16}", r"clip.precision must be one of \('auto', 'float32'"),
        ("adapter: {dropout: 1.5}", "dropout"),
        ("models: {}", r"unknown key\(s\) \['models'\] in config"),
        ("sam: [1, 2]", "must be a mapping"),
        ("- a list", "must be a mapping"),
        ("sam: {variant: [", "not valid YAML"),
    ],
)
def test_bad_configs_are_clear(tmp_path, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ValueError, match=message):
        RegionSpotConfig.from_yaml(path)


def test_missing_config_file():
    with pytest.raises(FileNotFoundError, match=r"model config not found: nope\.yaml"):
        RegionSpotConfig.from_yaml("nope.yaml")


def test_adapter_checkpoint_round_trip(tiny_config, tmp_path, image):
    torch.manual_seed(5)
    trained = build_regionspot(tiny_config)
    path = tmp_path / "adapter.safetensors"
    save_file(trained.adapter.state_dict(), path)
    config = copy.deepcopy(tiny_config)
    config.adapter.checkpoint = str(path)
    torch.manual_seed(6)
    loaded = build_regionspot(config)
    for name, tensor in trained.adapter.state_dict().items():
        assert torch.equal(loaded.adapter.state_dict()[name], tensor), name
    predictor = RegionSpotPredictor(loaded)
    predictor.set_image(image)
    assert len(predictor.predict(boxes=[[0, 0, 50, 50]], vocabulary=["a", "b"])) == 1

    save_file({"input_proj.weight": torch.zeros(1)}, path)
    with pytest.raises(CheckpointMismatchError, match=r"adapter\.safetensors.*RegionSpot adapter"):
        build_regionspot(config)
    config.adapter.checkpoint = str(tmp_path / "absent.safetensors")
    with pytest.raises(FileNotFoundError, match=r"absent\.safetensors"):
        build_regionspot(config)


def test_model_code_does_not_import_lightning():
    code = "import sys, regionspot, regionspot.data; regionspot.build_regionspot; print('lightning' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
