"""Shared fixtures: tiny random models of the real classes, built once per session."""

from __future__ import annotations

import numpy as np
import pytest
import torch

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
