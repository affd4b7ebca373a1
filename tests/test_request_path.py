"""The one request path: prompts in an image's pixels (`RegionPrompts`) -> `RegionSpot.frozen_features` ->
`FrozenFeatures`, which `select` and `to` cut and move; the extractor runs it without Lightning."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
from synthetic_boxes import one_cpu_thread  # noqa: F401 (a fixture)
from torch.testing import assert_close

from regionspot import build_regionspot
from regionspot.modeling.prompts import RegionPrompts
from regionspot.modeling.regionspot import FrozenFeatures
from regionspot.transforms import prepare_prompts

pytestmark = pytest.mark.usefixtures("one_cpu_thread")
BOXES = [np.array([[2.0, 3.0, 40.0, 30.0], [10.0, 5.0, 59.0, 39.0]]), np.array([[-5.0, 0.0, 20.0, 70.0]])]


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_regionspot("tiny").eval()


@pytest.fixture(scope="module")
def images():
    rng = np.random.default_rng(0)
    return [rng.integers(0, 256, (40, 60, 3), dtype=np.uint8), rng.integers(0, 256, (64, 32, 3), dtype=np.uint8)]


def _assert_same(left: list[FrozenFeatures], right: list[FrozenFeatures]) -> None:
    for a, b in zip(left, right, strict=True):
        for name in ("region_tokens", "mask_scores", "clip_tokens", "region_boxes"):
            torch.testing.assert_close(getattr(a, name), getattr(b, name), rtol=0, atol=0)


def test_every_form_of_images_and_prompts_gives_the_same_frozen_features(model, images):
    prepared = [model.preprocessor(image) for image in images]
    sam = [
        prepare_prompts(model.sam, image_size=p.original_size, boxes=b)[0] for p, b in zip(prepared, BOXES, strict=True)
    ]
    reference = model.frozen_features(prepared, sam)
    _assert_same(model.frozen_features(images, [torch.from_numpy(b) for b in BOXES]), reference)
    _assert_same(model.frozen_features(images, RegionPrompts.of_boxes([i.shape[:2] for i in images], BOXES)), reference)
    _assert_same(model.frozen_features(model.embed_images(prepared), BOXES), reference)


def test_region_prompts_are_checked_and_carry_the_clipped_boxes(model):
    prompts = RegionPrompts.check((40, 60), boxes=BOXES[1])
    assert len(prompts) == 1
    assert prompts.clipped_boxes.tolist() == [[0.0, 0.0, 20.0, 40.0]]
    with pytest.raises(ValueError, match="no area"):
        RegionPrompts.check((40, 60), boxes=[[70.0, 0.0, 80.0, 10.0]])
    with pytest.raises(ValueError, match="give at least one prompt"):
        RegionPrompts.check((40, 60))
    points = RegionPrompts.check((40, 60), points=[[[5.0, 6.0]]])
    assert points.clipped_boxes is None and points.point_labels.tolist() == [[1]]
    with pytest.raises(ValueError, match="2 images but 1 prompt sets"):
        model.frozen_features([np.zeros((8, 8, 3), np.uint8)] * 2, [BOXES[0]])


def test_select_and_to_cut_and_move_the_regions_as_by_hand(model, images):
    frozen = model.frozen_features(images[:1], BOXES[:1], with_masks=True)[0]
    keep = torch.tensor([1])
    picked = frozen.select(keep)
    assert_close(picked.region_tokens, frozen.region_tokens[keep])
    assert_close(picked.mask_scores, frozen.mask_scores[keep])
    assert_close(picked.region_boxes, frozen.region_boxes[keep])
    assert_close(picked.mask_logits, frozen.mask_logits[keep])
    assert picked.clip_tokens is frozen.clip_tokens
    assert frozen.select(np.array([True, False])).region_tokens.shape[0] == 1
    moved = frozen.to("cpu", torch.bfloat16)
    assert moved.region_tokens.dtype == moved.clip_tokens.dtype == torch.bfloat16
    assert moved.mask_scores.dtype == moved.region_boxes.dtype == torch.float32


def test_the_extractor_runs_the_model_without_lightning():
    code = (
        "import sys; from regionspot.config import RegionSpotConfig; "
        "from regionspot.extract import build_extraction_module; "
        "m = build_extraction_module(RegionSpotConfig.from_yaml('tiny'), backbone_precision='float32'); "
        "print(type(m).__name__, any(name.startswith('lightning') for name in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.split() == ["RegionSpot", "False"]
