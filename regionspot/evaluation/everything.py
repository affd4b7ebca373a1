"""How well "segment everything, then name it" finds and names a data set's objects, as a user reads it off.

Every region the automatic mask generator keeps is one guess: a ground-truth object is found when a region's box
overlaps its box at IoU >= 0.5 (each region finds at most one object, each object is found at most once, the
closest pairs first), named right when that region's top name is the object's class; a region that finds no
object is an extra one (a duplicate, a part, the background).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import torch
from torchvision.ops import box_iou

from regionspot.boxes import xywh_to_xyxy

FOUND_IOU = 0.5


def score_everything(
    gt: dict[str, Any], regions: Sequence[dict[str, Any]], *, iou_threshold: float = FOUND_IOU
) -> dict[str, float]:
    """Share of the ground-truth objects found, share of those named right, and extra regions per image.

    Args:
        gt: LVIS/COCO-format ground truth (`images`, `annotations` with `image_id`, `bbox` xywh, `category_id`).
        regions: one record per region kept (`image_id`, `bbox` xywh, `category_id` of its top name).
        iou_threshold: the box IoU at which a region finds an object.

    Returns:
        {"found", "named", "extra_per_image", "objects", "regions", "images"}: found is a share of the objects,
        named a share of the found ones (0 when none is), extra a mean over the ground truth's images.
    """
    objects, guesses = _by_image(gt["annotations"]), _by_image(regions)
    found = named = 0
    for image_id, truth in objects.items():
        for t, g in _match(truth, guesses.get(image_id, []), iou_threshold):
            found += 1
            named += truth[t]["category_id"] == guesses[image_id][g]["category_id"]
    total_objects = sum(map(len, objects.values()))
    if not total_objects:
        raise ValueError("no ground-truth object to find")
    image_ids = {image["id"] for image in gt["images"]}
    kept = sum(len(guesses.get(i, [])) for i in image_ids)
    return {
        "found": found / total_objects,
        "named": named / found if found else 0.0,
        "extra_per_image": (kept - found) / len(image_ids),
        "objects": total_objects,
        "regions": kept,
        "images": len(image_ids),
    }


def _by_image(records: Sequence[dict[str, Any]]) -> dict[int, list[dict[str, Any]]]:
    grouped: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for record in records:
        grouped[record["image_id"]].append(record)
    return grouped


def _match(truth: list[dict], guesses: list[dict], iou_threshold: float) -> list[tuple[int, int]]:
    """(object, region) index pairs at IoU >= `iou_threshold`, one to one, the highest IoU first."""
    if not truth or not guesses:
        return []
    boxes = [xywh_to_xyxy(torch.tensor([r["bbox"] for r in rs], dtype=torch.float64)) for rs in (truth, guesses)]
    iou = box_iou(*boxes)  # (objects, regions)
    pairs: list[tuple[int, int]] = []
    while True:
        best = int(iou.argmax())
        t, g = divmod(best, iou.shape[1])
        if iou[t, g] < iou_threshold:
            return pairs
        pairs.append((t, g))
        iou[t, :], iou[:, g] = -1, -1
