"""Scoring detections the way the field reports them: the official LVIS API (and COCO's, for COCO data).

`lvis` 0.5.3 calls `np.float`, which numpy 1.24 removed. Rather than patching numpy for everyone,
`lvis.eval` alone is given a view of numpy that still has `float`; every number comes from the
official code unchanged.
"""

from __future__ import annotations

import contextlib
import io
import logging
import types
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lvis.eval
import numpy as np
from lvis import LVIS, LVISEval, LVISResults

from regionspot.data.coco import check_annotations, is_lvis, load_annotations

LVIS_METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl", "APr", "APc", "APf")
COCO_METRICS = LVIS_METRICS[:6]
LVIS_MAX_DETS_PER_IMAGE = 300
FIXED_AP_DETS_PER_CLASS = 10_000


class _NumpyWithFloat(types.ModuleType):
    """numpy as lvis 0.5.3 expects it: `np.float` is the builtin float, as it was before numpy 1.24."""

    float = float

    def __getattr__(self, name: str) -> Any:
        return getattr(np, name)


if not hasattr(np, "float"):
    lvis.eval.np = _NumpyWithFloat("numpy")

# `import lvis` calls logging.basicConfig: a root handler that would print every library's log lines (Lightning's
# among them) a second time. Remove that handler (only it: one a user installed has another format) ...
_LVIS_LOG_FORMAT = "[%(asctime)s] %(name)s %(levelname)s: %(message)s"
for _handler in list(logging.getLogger().handlers):
    if _handler.formatter is not None and _handler.formatter._fmt == _LVIS_LOG_FORMAT:
        logging.getLogger().removeHandler(_handler)
# ... and keep its per-call notices to itself: "Assuming user provided the results in correct format" comes on
# every LVISResults of a list, which `check_detections` has already checked.
logging.getLogger("lvis").setLevel(logging.ERROR)


class _LVISFromDict(LVIS):
    """The official LVIS index over an annotation dict already in memory (LVIS() only reads paths)."""

    def __init__(self, dataset: dict[str, Any]) -> None:
        self.logger = logging.getLogger(LVIS.__module__)
        self.dataset = dataset
        self._create_index()


def check_detections(detections: Sequence[dict[str, Any]], gt: dict[str, Any], *, iou_type: str = "bbox") -> None:
    """Raise ValueError if a detection names an unknown image or category or lacks its fields."""
    image_ids = {img["id"] for img in gt["images"]}
    category_ids = {cat["id"] for cat in gt["categories"]}
    geometry = "bbox" if iou_type == "bbox" else "segmentation"
    for i, det in enumerate(detections):
        if not isinstance(det, dict):
            raise ValueError(f"detection {i} is not a JSON object: {det!r:.80}")
        absent = [f for f in ("image_id", "category_id", "score", geometry) if f not in det]
        if absent:
            raise ValueError(f"detection {i} lacks {absent}")
    unknown_images = sorted({d["image_id"] for d in detections} - image_ids)
    if unknown_images:
        raise ValueError(
            f"{len(unknown_images)} detection image ids are not in the ground truth: {unknown_images[:10]}"
        )
    unknown_cats = sorted({d["category_id"] for d in detections} - category_ids)
    if unknown_cats:
        raise ValueError(f"detection category ids not in the ground truth: {unknown_cats[:10]}")


def top_per_class(detections: Sequence[dict[str, Any]], limit: int = FIXED_AP_DETS_PER_CLASS) -> list[dict[str, Any]]:
    """Keep each category's `limit` highest-scoring detections over the whole data set (Fixed AP)."""
    by_class: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for det in detections:
        by_class[det["category_id"]].append(det)
    kept: list[dict[str, Any]] = []
    for dets in by_class.values():
        kept.extend(sorted(dets, key=lambda d: -d["score"])[:limit])
    return kept


def score_detections(
    gt: dict[str, Any] | str | Path,
    detections: Sequence[dict[str, Any]],
    *,
    iou_type: str = "bbox",
    fixed_ap: bool = False,
) -> dict[str, float]:
    """AP of `detections` (COCO results format, xywh boxes) against `gt`, by the ground truth's own protocol.

    LVIS ground truth (federated lists, frequencies) is scored by the official `lvis` API: at most 300
    detections per image, APr/APc/APf included. With `fixed_ap`, Dave et al.'s Fixed AP instead: no
    per-image cap, the top 10,000 detections per class. COCO ground truth is scored by pycocotools.
    Values are fractions; -1 marks a metric with no ground truth (the official APIs' convention).
    """
    data = load_annotations(gt) if isinstance(gt, str | Path) else gt
    check_annotations(data)
    detections = list(detections)
    check_detections(detections, data, iou_type=iou_type)
    # Copies: the official loader writes area, id and box polygons into the dicts it is given. For mask AP
    # the box is dropped so that the loader takes each detection's area from its mask, not its box (as
    # detectron2 does), which decides the small/medium/large split.
    detections = [{k: v for k, v in d.items() if iou_type == "bbox" or k != "bbox"} for d in detections]
    if not is_lvis(data):
        return _score_coco(data, detections, iou_type)
    if not detections:
        return _metrics_of_nothing(data, LVIS_METRICS)
    gt_index = _LVISFromDict(_with_areas(data))
    if fixed_ap:
        results = LVISResults(gt_index, top_per_class(detections), max_dets=-1)
    else:
        results = LVISResults(gt_index, detections, max_dets=LVIS_MAX_DETS_PER_IMAGE)
    evaluator = LVISEval(gt_index, results, iou_type=iou_type)
    evaluator.run()
    return {key: float(evaluator.results[key]) for key in LVIS_METRICS}


def score_results(
    gt: dict[str, Any] | str | Path, detections: Sequence[dict[str, Any]], *, fixed_ap: bool = False
) -> dict[str, Any]:
    """Box metrics (`score_detections`), plus mask metrics under "segm" when the detections carry masks and
    every ground-truth annotation has a segmentation."""
    data = load_annotations(gt) if isinstance(gt, str | Path) else gt
    metrics: dict[str, Any] = score_detections(data, detections, iou_type="bbox", fixed_ap=fixed_ap)
    has_masks = bool(detections) and all("segmentation" in det for det in detections)
    if has_masks and data["annotations"] and all("segmentation" in ann for ann in data["annotations"]):
        metrics["segm"] = score_detections(data, detections, iou_type="segm", fixed_ap=fixed_ap)
    elif has_masks:
        logging.getLogger(__name__).warning("the ground truth has no segmentations: mask AP is not reported")
    return metrics


def _score_coco(data: dict[str, Any], detections: list[dict[str, Any]], iou_type: str) -> dict[str, float]:
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    if not detections:
        return _metrics_of_nothing(data, COCO_METRICS)
    data = _with_areas(data)
    data["annotations"] = [{"iscrowd": 0, **a} for a in data["annotations"]]
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress on stdout
        coco = COCO()
        coco.dataset = data
        coco.createIndex()
        evaluator = COCOeval(coco, coco.loadRes(detections), iou_type)
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return {key: float(value) for key, value in zip(COCO_METRICS, evaluator.stats[:6], strict=True)}


def _metrics_of_nothing(data: dict[str, Any], keys: Sequence[str]) -> dict[str, float]:
    """The metrics of no detections at all: 0 where there is ground truth to find, -1 (n/a) where there is none."""
    frequency = {cat["id"]: cat.get("frequency") for cat in data["categories"]}
    areas = [(a, frequency.get(a["category_id"])) for a in _with_areas(data)["annotations"]]
    present = {
        "AP": bool(areas), "AP50": bool(areas), "AP75": bool(areas),
        "APs": any(a["area"] < 32**2 for a, _ in areas),
        "APm": any(32**2 <= a["area"] < 96**2 for a, _ in areas),
        "APl": any(a["area"] >= 96**2 for a, _ in areas),
        **{f"AP{f}": any(g == f for _, g in areas) for f in "rcf"},
    }  # fmt: skip
    return {key: 0.0 if present[key] else -1.0 for key in keys}


def _with_areas(data: dict[str, Any]) -> dict[str, Any]:
    """A shallow copy whose annotations all have an area (box area where the file gives none)."""
    anns = [a if "area" in a else {**a, "area": a["bbox"][2] * a["bbox"][3]} for a in data["annotations"]]
    return {**data, "annotations": anns}


def format_metrics(metrics: dict[str, float]) -> str:
    """A two-row text table of the metrics, in percent."""
    keys = [k for k in LVIS_METRICS if k in metrics]
    cells = [f"{100 * metrics[k]:.1f}" if metrics[k] >= 0 else "n/a" for k in keys]
    widths = [max(len(k), len(c)) for k, c in zip(keys, cells, strict=True)]
    header = " | ".join(k.rjust(w) for k, w in zip(keys, widths, strict=True))
    row = " | ".join(c.rjust(w) for c, w in zip(cells, widths, strict=True))
    return f"{header}\n{row}"
