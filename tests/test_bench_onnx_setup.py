"""The ONNX benchmarks' setup (benchmarks/onnx_setup.py): both predictors load the very same weights, and a cached
export is remade when the weights it was made from are not the ones held now, so that their numbers are true."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file
from skimage import data as skimage_data

from regionspot.onnx.predictor import file_sha256

sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))  # a folder of scripts, not a package
import onnx_setup

VOCAB = ["person", "cat", "coffee cup", "rocket", "tree"]
BOXES = np.array([[10, 20, 200, 300], [100, 100, 400, 380], [0, 0, 600, 400]], np.float32)


@pytest.fixture(scope="module")
def held_tiny(tmp_path_factory):
    """The tiny config as onnx_parity.py holds it without --random-weights, and its export."""
    args = argparse.Namespace(config="tiny", random_weights=False, one_template=False)
    work, config = onnx_setup.held_config_of(args, work=tmp_path_factory.mktemp("bench"))
    return work, config, onnx_setup.exported(config, work)


def _largest_score_gap(config, folder) -> float:
    torch_predictor, onnx_predictor = onnx_setup.predictors(config, folder, threads=1)
    rgb = skimage_data.coffee()
    gaps = []
    for predictor in (torch_predictor, onnx_predictor):
        predictor.set_image(rgb)
        gaps.append(np.asarray(predictor.predict(vocabulary=VOCAB, boxes=BOXES, return_all_scores=True).all_scores))
    return float(np.abs(gaps[0] - gaps[1]).max())


def test_the_tiny_adapter_is_held_as_a_file_both_predictors_load(held_tiny):
    """The tiny config names no adapter checkpoint: each build drew its own random adapter, and parity failed."""
    _, config, folder = held_tiny
    assert config.adapter.checkpoint is not None and Path(config.adapter.checkpoint).is_file()
    assert _largest_score_gap(config, folder) <= 1e-4


def test_a_cached_export_of_other_weights_is_made_again(held_tiny):
    """New weights in the same files (as a user replaces a checkpoint): the export in the work folder is stale and
    is made again, not reused (a stale one gave a parity gap of 0.46)."""
    work, config, folder = held_tiny
    adapter = Path(config.adapter.checkpoint)
    save_file({k: v + 0.05 * torch.randn_like(v) for k, v in load_file(adapter).items()}, adapter)
    assert onnx_setup.exported(config, work) == folder
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["checkpoints"]["adapter"]["sha256"] == file_sha256(adapter)
    assert _largest_score_gap(config, folder) <= 1e-4
