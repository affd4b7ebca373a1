"""Box AP during training as a torchmetrics `Metric`: detections gathered across ranks, scored by the official API."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

from regionspot.data.coco import clean_ground_truth, subset_images
from regionspot.evaluation.lvis_eval import score_detections

# A detection as one row of floats: image id, category id, x, y, w, h, score. float64 keeps ids exact (< 2^53).
_FIELDS = 7


class DetectionAP(Metric):
    """LVIS-style (or COCO) box AP of the detections of an epoch, against the ground truth of the images seen.

    Each rank adds its images' detections with `update`; `compute` gathers every rank's (torchmetrics
    concatenates the states) and scores them with `score_detections` on every rank, so that all ranks
    log the same numbers. Only the images that were evaluated count, so a partial validation
    (`limit_val_batches`) is scored fairly.

    Args:
        ground_truth: the validation set's COCO/LVIS annotation dict.
    """

    full_state_update = False

    def __init__(self, *, ground_truth: dict[str, Any], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        # evaluate.py's rule: boxes no detector can be scored on are left out of the ground truth, and counted
        self.ground_truth, self.gt_boxes_dropped = clean_ground_truth(ground_truth)
        self.add_state("detections", default=[], dist_reduce_fx="cat")  # flat (K * _FIELDS,) per update
        self.add_state("image_ids", default=[], dist_reduce_fx="cat")
        self.add_state("skipped_images", default=torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.set_dtype(torch.float64)  # also the dtype torchmetrics gives a rank with no update at all

    def update(self, detections: Sequence[dict[str, Any]], image_ids: Sequence[int], *, skipped: int = 0) -> None:
        """Add the detections (COCO results format, xywh boxes) of the images `image_ids`, and the count of images
        that could not be read (left out of the scoring with their ground truth, as evaluate.py leaves them)."""
        rows = [[d["image_id"], d["category_id"], *d["bbox"], d["score"]] for d in detections]
        self.detections.append(torch.tensor(rows, dtype=torch.float64, device=self.device).reshape(-1))
        self.image_ids.append(torch.tensor(list(image_ids), dtype=torch.float64, device=self.device))
        self.skipped_images += skipped

    def compute(self) -> dict[str, float]:
        """AP, AP50, ... as fractions (-1 marks a metric without ground truth among the images seen), and the counts
        of images skipped as unreadable and of ground-truth boxes left out (`clean_ground_truth`)."""
        rows = _cat(self.detections).reshape(-1, _FIELDS).tolist()
        detections = [
            {"image_id": int(row[0]), "category_id": int(row[1]), "bbox": row[2:6], "score": row[6]} for row in rows
        ]
        seen = {int(i) for i in _cat(self.image_ids).tolist()}
        metrics = score_detections(subset_images(self.ground_truth, seen), detections)
        dropped = float(sum(self.gt_boxes_dropped.values()))
        return {**metrics, "skipped_images": float(self.skipped_images), "gt_boxes_dropped": dropped}


def _cat(state: list[torch.Tensor] | torch.Tensor) -> torch.Tensor:
    if isinstance(state, list) and not state:
        return torch.zeros(0, dtype=torch.float64)
    return dim_zero_cat(state).cpu()
