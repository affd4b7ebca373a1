"""Captions written by any captioning code, scored against a region-caption file by pycocoevalcap.

    python evaluate.py captions score --gt vg_test.json --results captions.json [--out metrics.json]

The references are read by the reader `evaluate.py captions` uses (`regionspot.data.captions`), so a region has
the same key and the same references here as there, and the numbers are the same. The results may be:

- COCO's caption results list, as captioning code writes it: `[{"image_id", "caption", and the region as its id
  ("id" or "region_id": the annotation's id, VG's region_id) or as its box ("bbox": x, y, w, h in pixels)}]`;
- `{region key: caption}`, as `evaluate.py captions` writes `captions.json`.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from regionspot.boxes import clip_to_image, xywh_to_xyxy
from regionspot.data.captions import caption_references, check_caption_annotations, load_caption_file
from regionspot.data.coco import read_json
from regionspot.data.detection import DetectionDataset, coco_style_dataset
from regionspot.evaluation.caption_metrics import score_captions

log = logging.getLogger(__name__)
BOX_TOLERANCE = 1.0  # pixels per coordinate: a result's box is its region's when every corner is this close


def score_caption_files(
    gt: str | Path, results: str | Path, *, images: str | Path | None = None, spice: bool = False
) -> dict[str, float]:
    """Score the captions in the JSON file `results` against the region-caption file `gt` (see the module).

    `images`, the folder of `gt`'s images, is needed for Visual Genome's own format only (whose boxes are clipped
    once each image's size is read); COCO-style files carry their image sizes.
    """
    return score_caption_results(read_json(results, what="caption results file"), reference_captions(gt, images))


def reference_captions(gt: str | Path, images: str | Path | None = None) -> DetectionDataset:
    """The region-caption data set of `gt`, as `evaluate.py captions` reads it (without decoding any image)."""
    if images is not None:
        return load_caption_file("references", gt, images)
    data = read_json(gt, what="reference caption file")
    if isinstance(data, list):
        raise ValueError(
            f"{gt} is Visual Genome's own format, whose boxes need the images' sizes: give --images, its folder"
        )
    check_caption_annotations(data, source=str(gt))
    return coco_style_dataset("references", data, "", captions=True)


def score_caption_results(
    results: list[Mapping[str, Any]] | Mapping[str, str], references: DetectionDataset, *, spice: bool = False
) -> dict[str, float]:
    """pycocoevalcap's CIDEr-D, BLEU-1..4, METEOR and ROUGE-L of `results` (a COCO caption results list, or
    {region key: caption}) against the captions of `references`, one result per reference region.

    Raises:
        ValueError: a malformed result, one that names no region of `references`, two results for one region, or
            regions without a result (each message gives counts and examples).
    """
    if isinstance(results, Mapping):
        predictions = dict(results)
    elif isinstance(results, list):
        predictions = _predictions_by_key(results, references)
    else:
        raise ValueError(f"caption results must be a list (COCO results) or an object, got {type(results).__name__}")
    return score_captions(predictions, caption_references(references), spice=spice)


def _predictions_by_key(results: list[Mapping[str, Any]], references: DetectionDataset) -> dict[str, str]:
    keys = {key for record in references.records for key in record.region_keys or []}
    records = {record.image_id: record for record in references.records}
    images = (references.ground_truth or {}).get("images", [])  # Visual Genome's file has no image sizes
    sizes = {image["id"]: (image.get("height"), image.get("width")) for image in images}
    predictions: dict[str, str] = {}
    for i, result in enumerate(results):
        if not isinstance(result, Mapping) or not isinstance(result.get("caption"), str):
            raise ValueError(f"caption result {i} must be an object with a caption string, got {result!r:.120}")
        key = _result_key(result, i, keys, records, sizes)
        if key in predictions:
            raise ValueError(f"caption results {i} and an earlier one both caption region {key!r}")
        predictions[key] = result["caption"]
    return predictions


def _result_key(result: Mapping[str, Any], i: int, keys: set[str], records: dict, sizes: dict) -> str:
    """The region key a COCO caption result names: its id, else the region of its image with its box."""
    for field in ("id", "region_id"):
        if result.get(field) is not None:
            if str(result[field]) not in keys:
                raise ValueError(f"caption result {i}: {field} {result[field]!r} is no region of the reference file")
            return str(result[field])
    if "bbox" not in result:
        raise ValueError(f"caption result {i} names no region: give its id (id or region_id) or its bbox")
    record = records.get(result.get("image_id"))
    if record is None:
        raise ValueError(f"caption result {i}: image_id {result.get('image_id')!r} has no region in the references")
    try:
        box = xywh_to_xyxy(np.asarray(result["bbox"], dtype=np.float64).reshape(4))
    except (TypeError, ValueError) as err:
        raise ValueError(f"caption result {i}: bbox must be 4 numbers x, y, w, h, got {result['bbox']!r}") from err
    height, width = sizes.get(record.image_id, (None, None))
    if height and width:
        box = clip_to_image(box, (height, width))  # as the reference boxes were clipped
    distance = np.abs(record.boxes - box).max(axis=1)
    best = int(distance.argmin())
    if distance[best] > BOX_TOLERANCE:
        raise ValueError(
            f"caption result {i}: no region of image {record.image_id} has the box {result['bbox']} "
            f"(the nearest is {distance[best]:.1f} px away)"
        )
    return record.region_keys[best]
