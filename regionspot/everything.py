"""What "segment everything" shares between the torch predictor and the torch-free ONNX one: the stability offset,
and the warning (with its message) when SAM's automatic mask generator keeps no mask. Imports neither torch nor
segment_anything, so that `regionspot.onnx` can use it."""

from __future__ import annotations

import math

STABILITY_SCORE_OFFSET = 1.0  # SamAutomaticMaskGenerator's stability_score_offset (its default; regionspot keeps it)


class NothingKeptWarning(UserWarning):
    """SAM's automatic mask generator kept no mask of an image at its thresholds."""


def nothing_kept_message(
    *, best_iou: float, best_stability: float, pred_iou_thresh: float, stability_score_thresh: float
) -> str:
    """The `NothingKeptWarning` text: the thresholds, the best predicted IoU of every mask seen, and the best
    stability score of those above `pred_iou_thresh` (-inf when none was)."""
    stability = (
        f"the best stability score among them {best_stability:.3f}"
        if best_stability > -math.inf
        else "no mask passed it to have its stability scored"
    )
    return (
        f"SAM's automatic mask generator kept no mask: the best predicted IoU it saw was {best_iou:.3f} "
        f"(pred_iou_thresh {pred_iou_thresh:g}), {stability} (stability_score_thresh "
        f"{stability_score_thresh:g}); lower the thresholds or use more points per side"
    )
