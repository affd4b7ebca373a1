"""Evaluation: LVIS/COCO scoring with the official protocols, and region captions scored by pycocoevalcap.

The public names load on first use (PEP 562), so that the commands under this package parse their arguments
before torch, lvis or pycocoevalcap are imported.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from regionspot.lazy import lazy_exports

if TYPE_CHECKING:
    from regionspot.evaluation.caption_metrics import score_captions
    from regionspot.evaluation.caption_results import score_caption_files, score_caption_results
    from regionspot.evaluation.detections import encode_masks, region_detections
    from regionspot.evaluation.lvis_eval import LVIS_METRICS, format_metrics, score_detections, score_results

__all__ = [
    "LVIS_METRICS",
    "encode_masks",
    "format_metrics",
    "region_detections",
    "score_caption_files",
    "score_caption_results",
    "score_captions",
    "score_detections",
    "score_results",
]
__getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "regionspot.evaluation.caption_metrics": ["score_captions"],
        "regionspot.evaluation.caption_results": ["score_caption_files", "score_caption_results"],
        "regionspot.evaluation.detections": ["encode_masks", "region_detections"],
        "regionspot.evaluation.lvis_eval": ["LVIS_METRICS", "format_metrics", "score_detections", "score_results"],
    },
)
