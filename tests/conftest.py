"""Shared fixtures: tiny random models of the real classes, built once per session."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from regionspot import RegionSpotConfig, build_regionspot
from regionspot.modeling.sam import build_tiny_sam

TINY_CONFIG = "tiny"


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    np.random.seed(0)


@pytest.fixture(scope="session")
def tiny_config() -> RegionSpotConfig:
    return RegionSpotConfig.from_yaml(TINY_CONFIG)


@pytest.fixture(scope="session")
def tiny_model(tiny_config):
    torch.manual_seed(0)
    return build_regionspot(tiny_config).eval()


@pytest.fixture(scope="session")
def tiny_sam():
    torch.manual_seed(0)
    return build_tiny_sam().eval()


@pytest.fixture
def image() -> np.ndarray:
    """A 96x160 RGB image with some structure (SAM and CLIP see more than noise)."""
    rng = np.random.default_rng(0)
    img = rng.integers(0, 60, size=(96, 160, 3), dtype=np.uint8)
    img[20:60, 30:90] = (220, 30, 30)
    img[50:90, 100:150] = (30, 30, 220)
    return img


@pytest.fixture(scope="session")
def tiny_onnx_export(tmp_path_factory) -> tuple[Path, Path]:
    """An adapter's random weights saved to a file, as a user holds trained ones, and the model exported with them
    by the command line. Returns (export folder, adapter file)."""
    folder = tmp_path_factory.mktemp("onnx")
    torch.manual_seed(1)
    adapter = folder / "adapter.safetensors"
    save_file(build_regionspot(TINY_CONFIG).adapter.state_dict(), adapter)
    from regionspot.commands.export import main  # needs onnx: imported by the tests that use it

    main(["onnx", "--config", TINY_CONFIG, "--adapter", str(adapter), "--out", str(folder / "export")])
    return folder / "export", adapter
