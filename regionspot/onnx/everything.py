"""SAM's automatic mask generator ("segment everything") in numpy, on the exported point_masks graph.

The same steps as segment_anything's `SamAutomaticMaskGenerator` at the settings regionspot builds it with
(`regionspot.modeling.sam.build_mask_generator`: one crop, the whole image; no small-region removal): a grid of
points, each prompting SAM's decoder for three masks; masks whose predicted IoU is above `pred_iou_thresh` and whose
stability score is at least `stability_score_thresh` are kept (each threshold applied only when above 0, as
there); then non-maximum suppression of their boxes (IoU 0.7) by predicted IoU. With one crop that is the whole
image, the generator's "near a crop edge" filter drops nothing, so it is left out. Checked against
segment_anything's generator in tests/test_onnx_everything.py.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from regionspot.everything import STABILITY_SCORE_OFFSET, NothingKeptWarning, nothing_kept_message

POINTS_PER_BATCH = 64  # SamAutomaticMaskGenerator's points_per_batch: bounds the (n, 3, H, W) logits held at once
BOX_NMS_THRESH = 0.7  # its box_nms_thresh


@dataclass
class KeptMasks:
    """The masks the generator keeps, best predicted IoU first."""

    masks: np.ndarray  # (M, H, W) bool
    scores: np.ndarray  # (M,) float32 SAM's predicted IoU
    boxes: np.ndarray  # (M, 4) float32 x1, y1, x2, y2 around each mask's pixels (pixel edges, not indices)


def point_grid(points_per_side: int) -> np.ndarray:
    """(n*n, 2) x, y in [0, 1]: the centres of an n x n grid of cells (segment_anything's `build_point_grid`)."""
    offset = 1 / (2 * points_per_side)
    side = np.linspace(offset, 1 - offset, points_per_side)
    return np.stack(np.meshgrid(side, side), axis=-1).reshape(-1, 2)


def stability_scores(logits: np.ndarray, mask_threshold: float) -> np.ndarray:
    """(M, H, W) logits -> (M,) IoU of the mask thresholded at `mask_threshold` +- the offset (the higher
    threshold's mask lies inside the lower one's, so that IoU is a ratio of pixel counts)."""
    inner = (logits > mask_threshold + STABILITY_SCORE_OFFSET).sum(axis=(1, 2))
    outer = (logits > mask_threshold - STABILITY_SCORE_OFFSET).sum(axis=(1, 2))
    with np.errstate(invalid="ignore", divide="ignore"):  # 0/0 is NaN, as torch gives: never kept
        return (inner / outer).astype(np.float32)


def mask_boxes(masks: np.ndarray) -> np.ndarray:
    """(M, H, W) bool -> (M, 4) x1, y1, x2, y2 of the first and last pixel index holding mask (0s for an empty
    mask), as segment_anything's `batched_mask_to_box`."""
    boxes = np.zeros((len(masks), 4), np.int64)
    for axis, (low, high) in ((2, (1, 3)), (1, (0, 2))):  # rows hold mask -> y; columns hold mask -> x
        occupied = masks.any(axis=axis)
        first = occupied.argmax(axis=1)
        last = occupied.shape[1] - 1 - occupied[:, ::-1].argmax(axis=1)
        boxes[:, low], boxes[:, high] = first, last
    boxes[~masks.any(axis=(1, 2))] = 0
    return boxes


def box_nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float) -> np.ndarray:
    """Indices of the boxes kept by greedy non-maximum suppression, best score first (torchvision's `nms`: a box
    is dropped when its IoU with a kept, better one exceeds `iou_threshold`; area = (x2 - x1) * (y2 - y1))."""
    boxes = boxes.astype(np.float64)
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    order = np.argsort(-scores, kind="stable")
    keep = []
    while len(order):
        best, rest = order[0], order[1:]
        keep.append(best)
        top_left = np.maximum(boxes[best, :2], boxes[rest, :2])
        bottom_right = np.minimum(boxes[best, 2:], boxes[rest, 2:])
        inter = np.clip(bottom_right - top_left, 0, None).prod(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            iou = inter / (areas[best] + areas[rest] - inter)
        order = rest[~(iou > iou_threshold)]
    return np.array(keep, dtype=np.int64)


def generate_masks(
    decode: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]],
    *,
    image_size: tuple[int, int],
    points_per_side: int,
    pred_iou_thresh: float,
    stability_score_thresh: float,
    mask_threshold: float,
) -> KeptMasks:
    """Segment everything in an image of `image_size` (H, W).

    Args:
        decode: (n, 2) points in the image's pixels -> SAM's (n, 3, H, W) mask logits and (n, 3) predicted IoUs.
        points_per_side, pred_iou_thresh, stability_score_thresh: the generator's settings.
        mask_threshold: SAM's logit threshold of a mask pixel.

    Returns:
        The masks kept; none, with a `NothingKeptWarning` naming the thresholds and the best scores seen.
    """
    height, width = image_size
    points = point_grid(points_per_side) * np.array([width, height])
    masks, scores = [], []
    best_iou, best_stability = -np.inf, -np.inf
    for start in range(0, len(points), POINTS_PER_BATCH):
        logits, iou = decode(points[start : start + POINTS_PER_BATCH])
        logits, iou = logits.reshape(-1, height, width), iou.reshape(-1)
        stability = stability_scores(logits, mask_threshold)
        above = iou > pred_iou_thresh
        best_iou = max(best_iou, float(iou.max()))
        best_stability = max(best_stability, float(np.nanmax(stability[above], initial=-np.inf)))
        kept = np.ones(len(iou), bool)  # the generator applies a threshold only when it is above 0
        if pred_iou_thresh > 0:
            kept &= above
        if stability_score_thresh > 0:
            kept &= stability >= stability_score_thresh
        masks.append(logits[kept] > mask_threshold)
        scores.append(iou[kept])
    masks, scores = np.concatenate(masks), np.concatenate(scores).astype(np.float32)
    boxes = mask_boxes(masks)
    keep = box_nms(boxes, scores, BOX_NMS_THRESH)
    if len(keep) == 0:
        message = nothing_kept_message(
            best_iou=best_iou,
            best_stability=best_stability,
            pred_iou_thresh=pred_iou_thresh,
            stability_score_thresh=stability_score_thresh,
        )
        warnings.warn(message, NothingKeptWarning, stacklevel=3)
    # SAM's box spans mask pixel indices inclusively; the pixels themselves cover one more pixel each way.
    return KeptMasks(masks=masks[keep], scores=scores[keep], boxes=(boxes[keep] + [0, 0, 1, 1]).astype(np.float32))
