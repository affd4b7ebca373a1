"""Box layouts and clipping, for torch tensors and numpy arrays alike.

Boxes are (..., 4) in pixels: x1, y1, x2, y2 ("xyxy", what the model takes) or x, y, w, h ("xywh",
what COCO/LVIS files hold). Every function keeps the input's type, dtype and device. An image's size is always
(H, W), as numpy and torch shapes give it (`image.shape[:2]`).

Torch-free: a tensor is told by its type, and torch is imported only for one (`regionspot.checks`, which the
torch-free ONNX predictor imports, clips with these).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

if TYPE_CHECKING:
    import torch

Boxes = TypeVar("Boxes", "torch.Tensor", np.ndarray)


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
    if _is_tensor(boxes):
        import torch  # already imported by whoever holds a tensor

        upper = torch.tensor([width, height, width, height], dtype=boxes.dtype, device=boxes.device)
        return torch.minimum(boxes.clamp(min=0), upper)
    # Bounds in the boxes' own dtype: a list of Python ints would promote float32 boxes to float64.
    return np.clip(boxes, 0, np.array([width, height, width, height], dtype=boxes.dtype))


def has_area(boxes: Boxes) -> Boxes:
    """(..., 4) xyxy boxes -> (...,) bool: every coordinate finite, x2 > x1 and y2 > y1."""
    finite = boxes.isfinite() if _is_tensor(boxes) else np.isfinite(boxes)
    return finite.all(-1) & (boxes[..., 2] > boxes[..., 0]) & (boxes[..., 3] > boxes[..., 1])


def _copy(boxes: Boxes) -> Boxes:
    return boxes.clone() if _is_tensor(boxes) else boxes.copy()


def _is_tensor(boxes: Any) -> bool:
    return type(boxes).__module__.startswith("torch")
