"""AP over a subset of the categories (e.g. classes seen in training vs held out), by the official protocol.

LVIS scores every category on its own images (those where it is annotated or verified absent), so the
mean AP over a subset equals the AP of the ground truth and detections restricted to that subset, as
long as the per-image cap of 300 detections does not bind (it does not with a few regions per image).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from regionspot.evaluation.lvis_eval import score_detections


def restrict_to_categories(
    gt: dict[str, Any], detections: Sequence[dict[str, Any]], category_ids: Iterable[int]
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The ground truth and detections with every category outside `category_ids` removed."""
    keep = set(category_ids)
    unknown = sorted(keep - {c["id"] for c in gt["categories"]})
    if unknown:
        raise ValueError(f"category ids {unknown[:10]} are not in the ground truth")
    images = [
        {
            **img,
            **{
                key: [c for c in img[key] if c in keep]
                for key in ("neg_category_ids", "not_exhaustive_category_ids")
                if key in img
            },
        }
        for img in gt["images"]
    ]
    subset = {
        **gt,
        "images": images,
        "categories": [c for c in gt["categories"] if c["id"] in keep],
        "annotations": [a for a in gt["annotations"] if a["category_id"] in keep],
    }
    return subset, [d for d in detections if d["category_id"] in keep]


def score_category_subsets(
    gt: dict[str, Any], detections: Sequence[dict[str, Any]], subsets: dict[str, Iterable[int]], **kwargs: Any
) -> dict[str, dict[str, float]]:
    """`score_detections` on each named subset of categories, e.g. {"seen": [...], "heldout": [...]}."""
    return {
        name: score_detections(*restrict_to_categories(gt, detections, ids), **kwargs) for name, ids in subsets.items()
    }
