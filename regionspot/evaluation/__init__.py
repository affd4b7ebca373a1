"""Evaluation: LVIS/COCO scoring with the official protocols."""

from regionspot.evaluation.detections import encode_masks, region_detections, xyxy_to_xywh
from regionspot.evaluation.lvis_eval import (
    LVIS_METRICS,
    check_annotations,
    format_metrics,
    is_lvis,
    load_annotations,
    score_detections,
    score_results,
)

__all__ = [
    "LVIS_METRICS",
    "check_annotations",
    "encode_masks",
    "format_metrics",
    "is_lvis",
    "load_annotations",
    "region_detections",
    "score_detections",
    "score_results",
    "xyxy_to_xywh",
]
