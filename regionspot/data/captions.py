"""Region-caption data sets: the formats `build_dataset` reads with `DatasetConfig(captions=True, ann_file=...)`.

- COCO-style JSON with a "caption" string per annotation (GRiT's Visual Genome test.json; RefCOCOg as GLaMM
  and All-Seeing converted it): "images" (id, file_name), "annotations" (image_id, bbox as x, y, w, h,
  caption, optional category_id), optional "categories". One caption per annotation: a list-valued
  "captions" field is not read. A region's key is the annotation's id, else "{image_id}_region_{j}".
- Visual Genome's own region_descriptions.json: a JSON list of images {"id" (or "image_id"), "regions":
  [{"region_id", "phrase", "x", "y", "width", "height"}]}, the images being `{image_dir}/{image_id}.jpg`
  or in VG's own sub-folders `VG_100K/` and `VG_100K_2/`. A region's key is its region_id. The file holds
  no image sizes, so boxes are clipped once the image is decoded.

The format is told from the JSON itself (a top-level list is Visual Genome's). Hugging Face tables with
captions go through `load_hf_detection(captions=True)`. Everything ends as a `DetectionDataset` whose
records carry a caption and a region key per box.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

from regionspot.data.augment import AugmentConfig
from regionspot.data.coco import read_json
from regionspot.data.detection import (
    DetectionDataset,
    Region,
    check_image_dir,
    coco_style_dataset,
    image_record,
    region_key,
    usable_caption,
    xywh_box,
)
from regionspot.images import load_image

VG_IMAGE_FOLDERS = ("", "VG_100K", "VG_100K_2")  # where under image_dir a Visual Genome image may lie


def load_caption_file(
    name: str,
    ann_file: str | Path,
    image_dir: str | Path,
    *,
    augment_config: AugmentConfig | None = None,
    max_regions: int | None = None,
) -> DetectionDataset:
    """A region-caption JSON (COCO-style or Visual Genome's region_descriptions.json) and its image folder.

    Raises:
        FileNotFoundError: if the folder or the file is missing. ValueError: if the file is not valid JSON,
            is in neither format, or no image has a usable box.
    """
    check_image_dir(name, image_dir)
    data = read_json(ann_file, what="annotation file")
    if isinstance(data, list):
        return _load_visual_genome(
            name, data, image_dir, source=str(ann_file), augment_config=augment_config, max_regions=max_regions
        )
    check_caption_annotations(data, source=str(ann_file))
    return coco_style_dataset(
        name, data, image_dir, captions=True, augment_config=augment_config, max_regions=max_regions
    )


def check_caption_annotations(data: Any, *, source: str) -> None:
    """Raise ValueError unless `data` is a COCO-style object: lists of images (with ids) and annotations
    (objects), and of categories (with id and name) if it has them. Bad rows are skipped later, not here."""
    if not isinstance(data, dict) or not all(isinstance(data.get(key), list) for key in ("images", "annotations")):
        raise ValueError(
            f"{source}: expected COCO-style JSON (images, annotations with a caption each) or Visual Genome's "
            "region_descriptions.json (a list of images with regions)"
        )
    if not isinstance(data.get("categories", []), list):
        raise ValueError(f"{source}: categories must be a list")
    for key, fields in (("images", ("id",)), ("annotations", ()), ("categories", ("id", "name"))):
        for i, entry in enumerate(data.get(key, [])):
            if not isinstance(entry, dict) or not all(field in entry for field in fields):
                raise ValueError(f"{source}: {key}[{i}] must be an object with {list(fields)}")


def _load_visual_genome(
    name: str,
    entries: list[Any],
    image_dir: str | Path,
    *,
    source: str,
    augment_config: AugmentConfig | None = None,
    max_regions: int | None = None,
) -> DetectionDataset:
    """Visual Genome's region_descriptions.json (parsed) over its image folder; a captions-only set."""
    skipped: Counter = Counter()
    records = []
    for i, entry in enumerate(entries):
        image_id, regions = _vg_image(entry, i, source)
        path = _vg_image_file(Path(image_dir), image_id)
        if path is None:
            skipped["image_file_not_found"] += 1
            continue
        found = [r for j, region in enumerate(regions) if (r := _vg_region(region, image_id, j, skipped)) is not None]
        if found:
            records.append(image_record(image_id, str(path), found))
        else:
            skipped["image_without_boxes"] += 1
    return DetectionDataset(
        name=name,
        vocabulary=[],
        category_ids=[],
        records=records,
        read_image=load_image,
        augment_config=augment_config,
        max_regions=max_regions,
        skipped=skipped,
    )


def _vg_image(entry: Any, i: int, source: str) -> tuple[int, list[Any]]:
    """(image id, regions) of the i-th entry of region_descriptions.json; ValueError if it is not one."""
    image_id = entry.get("id", entry.get("image_id")) if isinstance(entry, dict) else None
    if isinstance(image_id, str) and image_id.isdigit():
        image_id = int(image_id)
    if not isinstance(image_id, int) or not isinstance(entry.get("regions"), list):
        raise ValueError(
            f"{source}: entry {i} is not a Visual Genome image: it needs an integer id (or image_id) and a regions list"
        )
    return image_id, entry["regions"]


def _vg_image_file(image_dir: Path, image_id: int) -> Path | None:
    for folder in VG_IMAGE_FOLDERS:
        path = image_dir / folder / f"{image_id}.jpg"
        if path.is_file():
            return path
    return None


def _vg_region(region: Any, image_id: int, j: int, skipped: Counter) -> Region | None:
    """One region of an image, or None (counted in `skipped`): label -1 (VG has no classes), its phrase, its key."""
    region = region if isinstance(region, dict) else {}
    caption = usable_caption(region.get("phrase"), skipped)
    if caption is None:
        return None
    box = xywh_box([region.get(k) for k in ("x", "y", "width", "height")], (None, None), skipped)
    if box is None:
        return None
    return box, -1, caption, region_key(region.get("region_id"), image_id, j)


def caption_references(dataset: DetectionDataset) -> dict[str, list[str]]:
    """Every region key of a caption data set -> its reference captions, for scoring.

    A key has one reference per box filed under it (Visual Genome and GRiT's test set: one per region);
    boxes that share a key pool their captions.

    Raises:
        ValueError: if the data set was not read with captions.
    """
    references: dict[str, list[str]] = defaultdict(list)
    for record in dataset.records:
        if record.captions is None or record.region_keys is None:
            raise ValueError(f"data set {dataset.name!r} has no captions: read it with captions=True")
        for key, caption in zip(record.region_keys, record.captions, strict=True):
            references[key].append(caption)
    return dict(references)
