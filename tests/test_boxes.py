"""Box conversion and clipping: torch and numpy agree, dtypes are kept, degenerate boxes are caught."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from regionspot.boxes import clip_to_image, has_area, xywh_to_xyxy, xyxy_to_xywh

XYWH = [[10.0, 20.0, 30.0, 40.0], [0.5, 1.5, 2.0, 0.25]]
XYXY = [[10.0, 20.0, 40.0, 60.0], [0.5, 1.5, 2.5, 1.75]]


@pytest.mark.parametrize("array", [np.array, torch.tensor])
def test_conversions_round_trip(array):
    xywh = array(XYWH)
    xyxy = xywh_to_xyxy(xywh)
    assert type(xyxy) is type(xywh)
    assert xyxy.tolist() == XYXY
    assert xyxy_to_xywh(xyxy).tolist() == XYWH
    assert xywh.tolist() == XYWH  # the input is not written to
    assert xywh_to_xyxy(array(XYWH[0])).tolist() == XYXY[0]  # a single (4,) box


@pytest.mark.parametrize("array", [np.array, torch.tensor])
def test_clip_to_image(array):
    boxes = array([[-5.0, 2.0, 70.0, 30.0], [10.0, -1.0, 20.0, 90.0], [60.0, 50.0, 80.0, 60.0]])
    clipped = clip_to_image(boxes, (40, 64))  # H = 40, W = 64
    assert clipped.tolist() == [[0.0, 2.0, 64.0, 30.0], [10.0, 0.0, 20.0, 40.0], [60.0, 40.0, 64.0, 40.0]]
    assert has_area(clipped).tolist() == [True, True, False]  # the third lay below the image


@pytest.mark.parametrize(
    ("array", "dtype"), [(np.array, np.float32), (np.array, np.float64), (torch.tensor, torch.float32)]
)
def test_dtype_kept(array, dtype):
    boxes = array(XYXY, dtype=dtype)
    for out in (xywh_to_xyxy(boxes), xyxy_to_xywh(boxes), clip_to_image(boxes, (480, 640))):
        assert out.dtype == dtype


@pytest.mark.parametrize("array", [np.array, torch.tensor])
def test_has_area_rejects_degenerate_and_non_finite(array):
    nan, inf = float("nan"), float("inf")
    boxes = array(
        [[0, 0, 1, 1], [0, 0, 0, 1], [0, 0, 1, 0], [2, 0, 1, 1], [nan, 0, 1, 1], [0, 0, inf, 1], [0.0, 0.0, 1e-3, 1]]
    )
    assert has_area(boxes).tolist() == [True, False, False, False, False, False, True]
    # Clipping turns infinity into the image's edge and keeps NaN: only the unclipped boxes tell them apart.
    assert has_area(clip_to_image(boxes, (10, 10))).tolist() == [True, False, False, False, False, True, True]
