"""Top-1 accuracy of ground-truth-box classification: is each box's best-scoring name its true class?

With ground-truth boxes as prompts, every detection lies on a ground-truth box, and the detections of one box
are that box's top classes. LVIS AP ranks each class's detections across boxes, so a class scored too high
everywhere still ranks its own boxes first; top-1 accuracy asks what a user reads off a picture instead.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

BoxKey = tuple[int, tuple[float, ...]]


def box_key(image_id: int, xywh: Sequence[float]) -> BoxKey:
    """(image id, xywh rounded to 0.1 px): detections carry a GT box's xywh after an xyxy round trip, which may
    differ from the file's numbers in the last float digits."""
    return image_id, tuple(round(v, 1) for v in xywh)


def best_label_per_box(detections: Sequence[dict[str, Any]]) -> dict[BoxKey, dict[str, Any]]:
    """`box_key` of each region -> that region's highest-scoring detection."""
    best: dict[BoxKey, dict[str, Any]] = {}
    for det in detections:
        key = box_key(det["image_id"], det["bbox"])
        if key not in best or det["score"] > best[key]["score"]:
            best[key] = det
    return best


def top1_accuracy(
    gt: dict[str, Any], detections: Sequence[dict[str, Any]], category_ids: Iterable[int] | None = None
) -> float:
    """Fraction of the ground-truth boxes whose highest-scoring detection names the box's class.

    Args:
        gt: LVIS/COCO-format ground truth (`annotations` with `image_id`, `bbox` xywh, `category_id`).
        detections: results-format records on those boxes (`image_id`, `bbox` xywh, `category_id`, `score`),
            e.g. evaluate.py's detections file. A box without any detection counts as wrong.
        category_ids: count only the boxes of these classes (e.g. the classes seen in training). The top-1 name
            is still chosen among every class the detections hold, as a user of the model sees it; this is not
            the accuracy over a smaller vocabulary.

    Returns:
        A fraction in [0, 1].
    """
    keep = None if category_ids is None else set(category_ids)
    boxes = [ann for ann in gt["annotations"] if keep is None or ann["category_id"] in keep]
    if not boxes:
        raise ValueError("no ground-truth box to score" + ("" if keep is None else f" in categories {sorted(keep)}"))
    best = best_label_per_box(detections)
    right = 0
    for ann in boxes:
        det = best.get(box_key(ann["image_id"], ann["bbox"]))
        right += det is not None and det["category_id"] == ann["category_id"]
    return right / len(boxes)
