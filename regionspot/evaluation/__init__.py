"""Evaluation: LVIS/COCO scoring with the official protocols."""

from regionspot.evaluation.detections import encode_masks, region_detections
from regionspot.evaluation.lvis_eval import LVIS_METRICS, format_metrics, score_detections, score_results

__all__ = [
    "LVIS_METRICS",
    "encode_masks",
    "format_metrics",
    "region_detections",
    "score_detections",
    "score_results",
]
