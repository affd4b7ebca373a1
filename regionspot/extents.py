"""Where each prompt says its region is: the one rule behind `SamPrompts.extents` (torch) and the ONNX predictor's
region conditions, in numpy (torch-free: `regionspot.onnx` imports it).

The captioner, the VQA head and a box-attention adapter read it as each region's box, so both predictors must give
the same numbers for the same prompts: the torch path converts its tensors and calls `prompt_extents`.
"""

from __future__ import annotations

import numpy as np


def prompt_extents(
    input_size: tuple[int, int],
    *,
    square_size: int,
    boxes: np.ndarray | None = None,
    points: np.ndarray | None = None,
    point_labels: np.ndarray | None = None,
    mask_logits: np.ndarray | None = None,
) -> np.ndarray:
    """(N, 4) float32 x1, y1, x2, y2 of where each region's prompt puts it, as fractions of the image.

    The box where there is one; else the span of the positive points (of all points where none is positive);
    else the bounding box of the mask input (logit > 0; the whole image for an empty mask).

    Args:
        input_size: (h, w) of the resized image inside SAM's square (`PreparedImage.sam_input_size`).
        square_size: the side of SAM's padded square input, on which the mask grid lies.
        boxes: (N, 4) xyxy, points: (N, P, 2) xy, point_labels: (N, P) 1 positive / 0 negative (default all 1),
            mask_logits: (N, 1, 4h, 4w) SAM's mask input; all in SAM's input frame, the ones given sharing N.
    """
    height, width = input_size
    if boxes is not None:
        extent = np.asarray(boxes, dtype=np.float32)
    elif points is not None:
        extent = _point_span(np.asarray(points, dtype=np.float32), point_labels)
    elif mask_logits is not None:
        extent = _mask_span(np.asarray(mask_logits)[:, 0] > 0, square_size / mask_logits.shape[-1], (height, width))
    else:
        raise ValueError("prompt_extents needs boxes, points or mask logits")
    scale = np.array([width, height, width, height], dtype=np.float32)
    return np.clip(extent / scale, 0, 1)


def _point_span(points: np.ndarray, labels: np.ndarray | None) -> np.ndarray:
    """(N, P, 2) points -> (N, 4) the box around the positive ones (around all where none is positive)."""
    positive = np.ones(points.shape[:2], bool) if labels is None else np.asarray(labels) == 1
    used = (positive | ~positive.any(axis=1, keepdims=True))[..., None]  # (N, P, 1)
    return np.concatenate([np.where(used, points, np.inf).min(axis=1), np.where(used, points, -np.inf).max(axis=1)], 1)


def _mask_span(inside: np.ndarray, cell: float, size: tuple[int, int]) -> np.ndarray:
    """(N, G, G) cells of SAM's mask grid inside each mask -> (N, 4) their bounding box in pixels of SAM's frame;
    an empty mask's is the whole image of `size` (h, w)."""
    columns, rows = _occupied_span(inside.any(axis=1), cell), _occupied_span(inside.any(axis=2), cell)
    extent = np.stack([columns[:, 0], rows[:, 0], columns[:, 1], rows[:, 1]], axis=1)
    extent[~inside.reshape(len(inside), -1).any(axis=1)] = [0.0, 0.0, size[1], size[0]]
    return extent


def _occupied_span(occupied: np.ndarray, cell: float) -> np.ndarray:
    """(N, G) which grid columns (or rows) hold mask -> (N, 2) float32 their first and past-the-last edge."""
    index = np.arange(occupied.shape[1])
    first = np.where(occupied, index, occupied.shape[1]).min(axis=1)
    last = np.where(occupied, index, -1).max(axis=1)
    return np.stack([first, last + 1], axis=1).astype(np.float32) * np.float32(cell)
