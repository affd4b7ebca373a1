"""Validation during training: ground-truth boxes as regions, scored exactly as evaluate.py scores them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_warn

from regionspot.data.detection import DetectionDataset
from regionspot.evaluation.detections import DEFAULT_ACTIVATION, DEFAULT_TOP_K, detect_regions, protocol_max_dets
from regionspot.evaluation.metric import DetectionAP
from regionspot.modeling.regionspot import ACTIVATIONS, FrozenFeatures, RegionSpot


@dataclass(frozen=True, kw_only=True)
class ValidationSettings:
    """How validation scores regions; the defaults are evaluate.py's, so validation AP equals evaluate.py's AP on
    the same data.

    Args:
        val_top_k: classes kept per region (evaluate.py's `--top-k`).
        val_activation: how they are scored (evaluate.py's `--activation`).
    """

    val_top_k: int = DEFAULT_TOP_K
    val_activation: str = DEFAULT_ACTIVATION

    def __post_init__(self) -> None:
        if self.val_top_k < 1 or self.val_activation not in ACTIVATIONS:
            raise ValueError(f"val_top_k must be >= 1 and val_activation one of {ACTIVATIONS}")


def val_detections(
    model: RegionSpot,
    batch: dict[str, Any],
    frozen: list[FrozenFeatures],
    features: list[torch.Tensor],
    text: torch.Tensor,
    val_set: DetectionDataset,
    settings: ValidationSettings,
) -> list[dict[str, Any]]:
    """A validation batch's detections: each ground-truth box named against the (C, E) vocabulary `text`."""
    detections: list[dict[str, Any]] = []
    for image_id, boxes, image_frozen, image_features in zip(
        batch["image_ids"], batch["boxes"], frozen, features, strict=True
    ):
        detections += detect_regions(
            model,
            image_frozen,
            features=image_features,
            text_embeddings=text,
            image_id=image_id,
            boxes=boxes,
            category_ids=val_set.category_ids,
            top_k=settings.val_top_k,
            activation=settings.val_activation,
            max_per_image=protocol_max_dets(val_set.ground_truth),
        )
    return detections


def log_validation_ap(module: L.LightningModule, val_ap: DetectionAP) -> None:
    """Score an epoch's detections (every rank's, the same numbers on every rank), log them and start afresh."""
    if module.trainer.sanity_checking:
        val_ap.reset()
        return
    metrics = val_ap.compute()
    val_ap.reset()
    if metrics["skipped_images"] or metrics["gt_boxes_dropped"]:
        rank_zero_warn(
            f"validation left out {metrics['skipped_images']:.0f} unreadable images with their ground truth and "
            f"{val_ap.gt_boxes_dropped} ground-truth boxes no detector can be scored on (evaluate.py's rule)"
        )
    # -1 marks a metric without ground truth; the values are equal on every rank, so syncing changes nothing
    scores = {f"val/{k}": v for k, v in metrics.items() if v >= 0}
    ap = scores.pop("val/AP", None)
    module.log_dict(scores, sync_dist=True)
    if ap is not None:  # the headline number, on the progress bar too
        module.log("val/AP", ap, prog_bar=True, sync_dist=True)
