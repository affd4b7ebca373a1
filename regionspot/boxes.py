"""Box layouts and clipping, for torch tensors and numpy arrays alike.

Boxes are (..., 4) in pixels: x1, y1, x2, y2 ("xyxy", what the model takes) or x, y, w, h ("xywh",
what COCO/LVIS files hold). Every function keeps the input's type, dtype and device.
"""

from __future__ import annotations

from typing import TypeVar

import numpy as np
import torch

Boxes = TypeVar("Boxes", torch.Tensor, np.ndarray)


def xywh_to_xyxy(boxes: Boxes) -> Boxes:
    """(..., 4) x, y, w, h -> (..., 4) x1, y1, x2, y2."""
    xyxy = _copy(boxes)
    xyxy[..., 2:] = boxes[..., :2] + boxes[..., 2:]
    return xyxy


def xyxy_to_xywh(boxes: Boxes) -> Boxes:
    """(..., 4) x1, y1, x2, y2 -> (..., 4) x, y, w, h."""
    xywh = _copy(boxes)
    xywh[..., 2:] = boxes[..., 2:] - boxes[..., :2]
    return xywh


def clip_to_image(boxes: Boxes, image_size: tuple[int, int]) -> Boxes:
    """(..., 4) xyxy boxes clipped to an image of `image_size` (H, W): 0 <= x <= W, 0 <= y <= H.

    NaN stays NaN and infinities become the image's edges, so check `has_area` on the unclipped boxes
    to reject non-finite ones.
    """
    height, width = image_size
    if isinstance(boxes, torch.Tensor):
        upper = torch.tensor([width, height, width, height], dtype=boxes.dtype, device=boxes.device)
        return torch.minimum(boxes.clamp(min=0), upper)
    # Bounds in the boxes' own dtype: a list of Python ints would promote float32 boxes to float64.
    return np.clip(boxes, 0, np.array([width, height, width, height], dtype=boxes.dtype))


def has_area(boxes: Boxes) -> Boxes:
    """(..., 4) xyxy boxes -> (...,) bool: every coordinate finite, x2 > x1 and y2 > y1."""
    finite = torch.isfinite(boxes) if isinstance(boxes, torch.Tensor) else np.isfinite(boxes)
    return finite.all(-1) & (boxes[..., 2] > boxes[..., 0]) & (boxes[..., 3] > boxes[..., 1])


def _copy(boxes: Boxes) -> Boxes:
    return boxes.clone() if isinstance(boxes, torch.Tensor) else boxes.copy()
