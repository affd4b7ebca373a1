"""COCO/LVIS files: annotation JSON (images, annotations, categories) and results files (detections).

Every reader checks what it reads and raises FileNotFoundError or ValueError naming the file and the
offending entry, so that a wrong path or format fails before any model runs.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import numpy as np

from regionspot.boxes import clip_to_image, has_area, xywh_to_xyxy


def read_json(path: str | Path, *, what: str) -> Any:
    """The parsed JSON of `path`; `what` ("annotation file", ...) names it in the errors.

    Raises:
        FileNotFoundError: if there is no such file. ValueError: if it is not valid JSON (truncated, binary,
            or nested too deep for Python's parser).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} not found: {path}")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as err:
        raise ValueError(f"{what} {path} is not valid JSON: {err or 'nested too deep'}") from err


def load_annotations(path: str | Path) -> dict[str, Any]:
    """Read and check a COCO/LVIS annotation JSON.

    Raises:
        FileNotFoundError: if there is no such file. ValueError: if it is not valid JSON or not COCO/LVIS.
    """
    data = read_json(path, what="annotation file")
    check_annotations(data, source=str(path))
    return data


def image_file_name(image: dict[str, Any]) -> str:
    """The file of a COCO/LVIS image record: `file_name`, or the basename of LVIS's `coco_url`."""
    if image.get("file_name"):
        return str(image["file_name"])
    if image.get("coco_url"):
        return Path(urlparse(str(image["coco_url"])).path).name
    raise ValueError(f"image {image.get('id')} has neither 'file_name' nor 'coco_url': the file cannot be found")


# What each entry of a COCO/LVIS file needs: these fields, with ids that can key a lookup (categories are ordered
# by theirs, so only ints there) and a category name that is a string. Boxes are checked where they are read.
_REQUIRED_FIELDS = {
    "images": ("id",),
    "categories": ("id", "name"),
    "annotations": ("id", "image_id", "category_id", "bbox"),
}
_FIELD_TYPES = {
    "images": {"id": (int, str)},
    "categories": {"id": (int,), "name": (str,)},
    "annotations": {"id": (int, str), "image_id": (int, str), "category_id": (int,)},
}
_ENTRY_KINDS = {"images": "image", "categories": "category", "annotations": "annotation"}


def check_annotations(data: Any, *, source: str = "annotations") -> None:
    """Raise ValueError unless `data` has images, annotations and categories as COCO/LVIS define them."""
    check_annotation_lists(data, source=source)
    for key in _REQUIRED_FIELDS:
        for i, entry in enumerate(data[key]):
            problem = _entry_problem(key, entry)
            if problem:
                raise ValueError(f"{source}: {key}[{i}] {problem}")


def check_annotation_lists(data: Any, *, source: str) -> None:
    """Raise ValueError, naming `source`, unless `data` is an object with lists of images, annotations and
    categories: what a file must be for any of it to be read."""
    if not isinstance(data, dict):
        raise ValueError(f"{source}: expected a JSON object with images, annotations and categories")
    missing = [key for key in _REQUIRED_FIELDS if not isinstance(data.get(key), list)]
    if missing:
        raise ValueError(f"{source}: missing or non-list key(s) {missing}")


def drop_malformed(data: dict[str, Any], skipped: Counter) -> dict[str, Any]:
    """`data` (checked by `check_annotation_lists`) without the entries `check_annotations` would refuse, each
    counted in `skipped` ("malformed_image", "malformed_category", "malformed_annotation"): a training set
    loses the bad rows of a stranger's file, not the run, and what it keeps is valid ground truth to score on."""
    kept = dict(data)
    for key, kind in _ENTRY_KINDS.items():
        kept[key] = [entry for entry in data[key] if _entry_problem(key, entry) is None]
        if len(kept[key]) < len(data[key]):
            skipped[f"malformed_{kind}"] += len(data[key]) - len(kept[key])
    return kept


def _entry_problem(key: str, entry: Any) -> str | None:
    """What is wrong with one entry of `data[key]`, or None."""
    absent = [f for f in _REQUIRED_FIELDS[key] if not isinstance(entry, dict) or f not in entry]
    if absent:
        return f"lacks {absent}"
    for field, allowed in _FIELD_TYPES[key].items():
        value = entry[field]
        if isinstance(value, bool) or not isinstance(value, allowed):  # JSON true is no id
            return f"has {field} {value!r} of type {type(value).__name__}"
    if key == "images":
        sizes = [entry.get(side) for side in ("width", "height")]
        if any(v is not None and (isinstance(v, bool) or not isinstance(v, int | float)) for v in sizes):
            return f"has width/height {sizes}, not numbers"
    return None


def declared_size(image: dict[str, Any]) -> tuple[Any, Any]:
    """(height, width) an image entry of a COCO-style file declares (either may be missing: None)."""
    return image.get("height"), image.get("width")


def box_problem(bbox: Any, image_size: tuple[Any, Any] = (None, None)) -> str | None:
    """Why a ground-truth [x, y, w, h] box can be neither recognised nor scored, or None if it can be:
    "malformed_box" (not 4 numbers), "non_finite_box" (NaN or infinite), "zero_area_box" (w or h <= 0: a negative
    or empty size), "box_outside_image" (no area inside the image's declared `image_size` (height, width), when it
    has both).
    Training, validation during training and evaluate.py judge every box by this one rule."""
    try:
        x, y, w, h = (float(v) for v in bbox)
    except (TypeError, ValueError):
        return "malformed_box"
    if not np.isfinite([x, y, w, h]).all():
        return "non_finite_box"
    if w <= 0 or h <= 0:  # the given w and h decide, even where float32 would round a tiny one away
        return "zero_area_box"
    height, width = image_size
    if width and height:
        box = xywh_to_xyxy(np.array([x, y, w, h])).astype(np.float32)  # summed in float64, stored as float32
        if not has_area(clip_to_image(box, (height, width))):
            return "box_outside_image"
    return None


def clean_ground_truth(gt: dict[str, Any]) -> tuple[dict[str, Any], Counter]:
    """`gt` without the annotations no detector can be scored on, and their counts by reason: a box of an image or
    category the file does not list ("box_of_unknown_image", "box_of_unknown_category") or one `box_problem`
    refuses. Validation during training and evaluate.py score against this same ground truth, and evaluate.py
    recognises only its boxes (an unknown category's box was scored as a region, a box of no area as a miss)."""
    images = {image["id"]: image for image in gt["images"]}
    categories = {category["id"] for category in gt["categories"]}
    kept, dropped = [], Counter()
    for ann in gt["annotations"]:
        image = images.get(ann["image_id"])
        if image is None:
            problem = "box_of_unknown_image"
        elif ann["category_id"] not in categories:
            problem = "box_of_unknown_category"
        else:
            problem = box_problem(ann.get("bbox"), declared_size(image))
        if problem is None:
            kept.append(ann)
        else:
            dropped[problem] += 1
    return {**gt, "annotations": kept}, dropped


def is_lvis(data: dict[str, Any]) -> bool:
    """LVIS ground truth carries federated image lists and category frequencies; COCO's does not."""
    return all("neg_category_ids" in img and "not_exhaustive_category_ids" in img for img in data["images"]) and all(
        "frequency" in cat for cat in data["categories"]
    )


def load_proposals(path: str | Path, gt: dict[str, Any], *, ann_path: str) -> list[dict[str, Any]]:
    """Read another detector's results (COCO results format) and check them against the ground truth.

    Raises:
        FileNotFoundError, ValueError: naming the file and the offending entries or image ids.
    """
    path = Path(path)
    data = read_json(path, what="proposals file")
    if not isinstance(data, list):
        raise ValueError(f"proposals file {path} must hold a JSON list of detections (COCO results format)")
    for i, det in enumerate(data):
        if not isinstance(det, dict) or not {"image_id", "bbox", "score"} <= det.keys():
            raise ValueError(f"proposals file {path}: entry {i} needs image_id, bbox (x, y, w, h) and score")
        if not (isinstance(det["bbox"], list) and len(det["bbox"]) == 4 and np.isfinite(det["bbox"]).all()):
            raise ValueError(f"proposals file {path}: entry {i} has bbox {det['bbox']!r}, not 4 finite numbers")
    unknown = sorted({det["image_id"] for det in data} - {img["id"] for img in gt["images"]})
    if unknown:
        raise ValueError(
            f"proposals file {path} names {len(unknown)} image ids that are not in {ann_path}: {unknown[:10]}; "
            "use proposals made for this split (e.g. LVIS v1 val) or the matching annotation file"
        )
    return data


def subset_images(gt: dict[str, Any], image_ids: set[int]) -> dict[str, Any]:
    """The ground truth of the images `image_ids` only, so that a partial run is scored on what it saw."""
    return {
        **gt,
        "images": [img for img in gt["images"] if img["id"] in image_ids],
        "annotations": [ann for ann in gt["annotations"] if ann["image_id"] in image_ids],
    }
