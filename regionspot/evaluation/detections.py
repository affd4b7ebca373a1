"""Region scores -> detections in the COCO/LVIS results format (xywh boxes, optional RLE masks)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from pycocotools import mask as mask_utils

from regionspot.boxes import xyxy_to_xywh
from regionspot.data.coco import is_lvis
from regionspot.evaluation.lvis_eval import LVIS_MAX_DETS_PER_IMAGE
from regionspot.modeling.preprocess import PreparedImage
from regionspot.modeling.regionspot import FrozenFeatures, RegionSpot

# Shared by validation during training and evaluate.py, so that the same data gives the same AP in both.
DEFAULT_TOP_K = 300  # classes kept per region: with LVIS's 300 detections per image, enough for any image
DEFAULT_ACTIVATION = "softmax"  # RegionSpot's evaluation: a softmax over the vocabulary
COCO_MAX_DETS_PER_IMAGE = 100  # the COCO challenge's limit
REGIONSPOT_CANDIDATES = 900  # the original RegionSpot's (region, class) pairs kept per image by class probability
_NOT_A_CANDIDATE = -1.0  # below every score (probabilities x box scores lie in [0, 1])


def encode_masks(masks: torch.Tensor) -> list[dict[str, Any]]:
    """(N, H, W) bool -> N COCO RLEs with string counts (JSON-ready)."""
    rles = mask_utils.encode(np.asfortranarray(masks.cpu().numpy().astype(np.uint8).transpose(1, 2, 0)))
    for rle in rles:
        rle["counts"] = rle["counts"].decode("ascii")
    return rles


def region_detections(
    *,
    image_id: int,
    boxes: torch.Tensor,
    class_probs: torch.Tensor,
    category_ids: Sequence[int],
    box_scores: torch.Tensor | None = None,
    masks: torch.Tensor | None = None,
    top_k: int = DEFAULT_TOP_K,
    max_per_image: int | None = None,
    max_candidates: int | None = None,
) -> list[dict[str, Any]]:
    """Each region's `top_k` classes as detections; score = class probability x box score (if any).

    RegionSpot's protocol: with detector boxes the final score is the detector's score times the
    region's class probability; with ground-truth boxes it is the class probability alone. The
    per-image cap (300 for LVIS) is the scorer's to apply, as the official loader does.

    Args:
        image_id: the image's id in the ground truth.
        boxes: (N, 4) xyxy pixels. class_probs: (N, C) probabilities over the vocabulary.
        category_ids: C ground-truth category ids, in vocabulary order.
        box_scores: (N,) the detector's scores, or None for ground-truth boxes.
        masks: (N, H, W) bool masks, to add RLE "segmentation" for mask AP.
        top_k: classes kept per region.
        max_per_image: keep only the image's `max_per_image` best detections, chosen exactly as the official
            LVIS loader chooses them (a stable sort by score of the list this function would otherwise return),
            so that capping here changes no metric while it keeps the results file small.
        max_candidates: first keep only the image's `max_candidates` (region, class) pairs of highest class
            probability, before the box scores weigh them (the original RegionSpot's 900). With ground-truth
            boxes this changes nothing once `max_per_image` <= `max_candidates`.
    """
    if class_probs.shape != (len(boxes), len(category_ids)):
        raise ValueError(f"class_probs must be (N={len(boxes)}, C={len(category_ids)}), got {tuple(class_probs.shape)}")
    probs = class_probs.float()
    scores = probs if box_scores is None else probs * box_scores.float()[:, None]
    if max_candidates is not None and probs.numel() > max_candidates:
        floor = probs.flatten().topk(max_candidates).values[-1]
        scores = scores.masked_fill(probs < floor, _NOT_A_CANDIDATE)
    top_scores, top_classes = scores.topk(min(top_k, scores.shape[1]), dim=1)
    keep = top_scores > _NOT_A_CANDIDATE
    if max_per_image is not None and int(keep.sum()) > max_per_image:
        # Everything below the cap's threshold is ranked after at least `max_per_image` others: never kept.
        threshold = top_scores[keep].topk(max_per_image).values[-1]
        keep &= top_scores >= threshold
    xywh = xyxy_to_xywh(boxes.float()).tolist()
    regions = keep.any(dim=1).nonzero().flatten().tolist()
    rles = dict(zip(regions, encode_masks(masks[regions]), strict=True)) if masks is not None and regions else {}
    detections = []
    for i in regions:
        for score, cls in zip(top_scores[i][keep[i]].tolist(), top_classes[i][keep[i]].tolist(), strict=True):
            det = {"image_id": image_id, "category_id": int(category_ids[cls]), "bbox": xywh[i], "score": score}
            if masks is not None:
                det["segmentation"] = rles[i]
            detections.append(det)
    if max_per_image is not None:
        detections = sorted(detections, key=lambda det: det["score"], reverse=True)[:max_per_image]
    return detections


def protocol_max_dets(gt: dict[str, Any], *, fixed_ap: bool = False) -> int | None:
    """Detections kept per image under the ground truth's protocol: LVIS 300, COCO 100, Fixed AP no cap."""
    if fixed_ap:
        return None
    return LVIS_MAX_DETS_PER_IMAGE if is_lvis(gt) else COCO_MAX_DETS_PER_IMAGE


def detect_regions(
    model: RegionSpot,
    frozen: FrozenFeatures,
    *,
    text_embeddings: torch.Tensor,
    image_id: int,
    boxes: torch.Tensor,
    category_ids: Sequence[int],
    features: torch.Tensor | None = None,
    box_scores: torch.Tensor | None = None,
    masks: torch.Tensor | None = None,
    image: PreparedImage | None = None,
    top_k: int = DEFAULT_TOP_K,
    activation: str = DEFAULT_ACTIVATION,
    max_per_image: int | None = None,
    max_candidates: int | None = None,
) -> list[dict[str, Any]]:
    """The one path from one image's region features to its detections, under validation and evaluate.py.

    `model.score_regions` (SAM's most trusted token per region, softmax or sigmoid over the vocabulary),
    then `region_detections` (top-k classes per region, times the detector's score for proposals).

    Args:
        model, frozen, text_embeddings, features, activation: see `RegionSpot.score_regions`.
        image_id, boxes, category_ids, box_scores, top_k, max_per_image, max_candidates: see `region_detections`.
        masks: (N, H, W) bool masks given with the regions (SAM's automatic mask generator), to write as
            segmentations; or None.
        image: the prepared image, to write SAM's mask of each region instead (needs mask logits in `frozen`).
    """
    scored = model.score_regions(
        frozen, text_embeddings=text_embeddings, features=features, activation=activation, image=image
    )
    return region_detections(
        image_id=image_id,
        boxes=boxes,
        class_probs=scored.probs,
        category_ids=category_ids,
        box_scores=box_scores,
        masks=masks if masks is not None else scored.masks,
        top_k=top_k,
        max_per_image=max_per_image,
        max_candidates=max_candidates,
    )
