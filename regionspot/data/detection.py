"""Detection data sets: COCO/LVIS-format JSON + an image folder, or a Hugging Face `datasets` table.

Both become a `DetectionDataset`: a list of image records (boxes as x1, y1, x2, y2 pixels, labels as
indices into the data set's own vocabulary, its class names as stored: the model reads them its own way,
`regionspot.vocabulary.read_class_names`). Bad entries never stop training: annotations and images
that cannot be used are skipped and counted, by reason, in `DetectionDataset.skipped` (while indexing)
or in a sample's "skipped" field (while reading, e.g. an unreadable image file).
"""

from __future__ import annotations

import logging
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from regionspot.boxes import clip_to_image, has_area, xywh_to_xyxy
from regionspot.data.augment import AugmentConfig, augment
from regionspot.data.coco import image_file_name, load_annotations
from regionspot.vocabulary import category_names

log = logging.getLogger(__name__)

BBOX_FORMATS = ("xywh", "xyxy")


@dataclass
class DatasetConfig:
    """One detection data set. Give `ann_file` + `image_dir`, or `hf_path` for a Hugging Face data set."""

    ann_file: str | None = None  # COCO/LVIS-format JSON (images, annotations, categories)
    image_dir: str | None = None  # folder of the images named by the JSON's file_name (or coco_url's basename)
    ratio: float = 1.0  # sampling weight among the training data sets (RegionSpot: equal)
    hf_path: str | None = None  # a `datasets.load_dataset` name or a `save_to_disk` folder
    hf_split: str = "train"
    bbox_format: str = "xywh"  # box layout of a Hugging Face data set: "xywh" (COCO) or "xyxy"
    # Draw the package's toy set (`regionspot.data.toy`, coloured rectangles) at ann_file when that file is
    # missing: the data of the tiny smoke run, which then needs nothing but the package.
    toy: bool = False

    def __post_init__(self) -> None:
        if (self.ann_file is None) == (self.hf_path is None):
            raise ValueError("a data set needs either ann_file (with image_dir) or hf_path, not both")
        if self.ann_file is not None and self.image_dir is None:
            raise ValueError(f"data set {self.ann_file} needs image_dir, the folder of its images")
        if self.ratio <= 0:
            raise ValueError(f"data set ratio must be positive, got {self.ratio}")
        if self.bbox_format not in BBOX_FORMATS:
            raise ValueError(f"bbox_format must be one of {BBOX_FORMATS}, got {self.bbox_format!r}")
        if self.toy and (self.ann_file is None or Path(self.image_dir) != Path(self.ann_file).parent / "images"):
            raise ValueError("a toy data set is drawn at ann_file with its images in <ann_file's folder>/images")


@dataclass
class ImageRecord:
    """One usable image: where to read it and its boxes."""

    image_id: int
    source: str | int  # file path, or row index of a Hugging Face data set
    boxes: np.ndarray  # (N, 4) float32 x1, y1, x2, y2 in pixels
    labels: np.ndarray  # (N,) int64 indices into the vocabulary


class DetectionDataset(Dataset):
    """Images with boxes and labels over one vocabulary.

    An item is keyed by an index, or by (index, seed): the seed drives the augmentation and the choice
    of regions, so a batch sampler that hands out seeds makes every epoch reproducible.

    Args:
        name: the data set's name (batches carry it; its vocabulary is looked up by it).
        vocabulary: C class names as the source stores them (the model's `clip.class_names` reads them).
        category_ids: the C category ids of the source, in vocabulary order.
        records: the usable images.
        read_image: source -> PIL image (raises on unreadable files).
        augment_config: training augmentations, or None (validation).
        max_regions: at most this many boxes per image (a random subset), or None for all.
        skipped: counts of what indexing skipped, by reason.
        ground_truth: the COCO/LVIS annotation dict (for scoring), if the source has one.
    """

    def __init__(
        self,
        *,
        name: str,
        vocabulary: Sequence[str],
        category_ids: Sequence[int],
        records: Sequence[ImageRecord],
        read_image: Callable[[str | int], Image.Image],
        augment_config: AugmentConfig | None = None,
        max_regions: int | None = None,
        skipped: Counter | None = None,
        ground_truth: dict[str, Any] | None = None,
    ) -> None:
        if not records:
            raise ValueError(f"data set {name!r} has no image with a usable box (skipped: {dict(skipped or {})})")
        self.name = name
        self.vocabulary = list(vocabulary)
        self.category_ids = list(category_ids)
        self.records = list(records)
        self.read_image = read_image
        self.augment_config = augment_config
        self.max_regions = max_regions
        self.skipped = Counter(skipped or {})
        self.ground_truth = ground_truth

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Any]:
        index, seed = key if isinstance(key, tuple) else (key, key)
        record = self.records[index]
        try:
            image = np.array(self.read_image(record.source).convert("RGB"))
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
            log.warning("skipping unreadable image %s of data set %s: %s", record.source, self.name, err)
            return {"skipped": "unreadable_image", "dataset": self.name}
        boxes, labels = _boxes_inside(record.boxes, record.labels, image.shape[:2])
        if len(boxes) == 0:
            return {"skipped": "no_box_inside_image", "dataset": self.name}
        rng = np.random.default_rng(seed)
        if self.augment_config is not None:
            image, boxes, labels = augment(image, boxes, labels, rng, self.augment_config)
        if self.max_regions is not None and len(boxes) > self.max_regions:
            keep = np.sort(rng.choice(len(boxes), self.max_regions, replace=False))
            boxes, labels = boxes[keep], labels[keep]
        return {
            # (H, W, 3) uint8 numpy: Lightning leaves it on the CPU, where the model's one preprocessing resizes it
            "image": np.ascontiguousarray(image),
            "boxes": torch.from_numpy(np.asarray(boxes, dtype=np.float32)),
            "labels": torch.from_numpy(np.asarray(labels, dtype=np.int64)),
            "image_id": record.image_id,
            "dataset": self.name,
        }


def _boxes_inside(boxes: np.ndarray, labels: np.ndarray, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Clip boxes to the decoded image (its size may differ from the JSON's); drop those left empty."""
    clipped = clip_to_image(boxes, size).astype(np.float32)
    keep = has_area(clipped)
    return clipped[keep], labels[keep]


def build_dataset(
    name: str, config: DatasetConfig, *, augment_config: AugmentConfig | None = None, max_regions: int | None = None
) -> DetectionDataset:
    """The data set `config` describes: a COCO/LVIS JSON with its image folder, or a Hugging Face data set."""
    if config.ann_file is not None:
        return load_coco_detection(
            name, config.ann_file, config.image_dir, augment_config=augment_config, max_regions=max_regions
        )
    import datasets

    path = Path(config.hf_path)
    hf = datasets.load_from_disk(str(path)) if path.is_dir() else datasets.load_dataset(config.hf_path)
    if isinstance(hf, datasets.DatasetDict):
        if config.hf_split not in hf:
            raise ValueError(f"{config.hf_path} has no split {config.hf_split!r}; it has {sorted(hf)}")
        hf = hf[config.hf_split]
    return load_hf_detection(
        name, hf, bbox_format=config.bbox_format, augment_config=augment_config, max_regions=max_regions
    )


def load_coco_detection(
    name: str,
    ann_file: str | Path,
    image_dir: str | Path,
    *,
    augment_config: AugmentConfig | None = None,
    max_regions: int | None = None,
) -> DetectionDataset:
    """A COCO/LVIS-format JSON and its image folder. Categories are ordered by id."""
    image_dir = Path(image_dir)
    if not image_dir.is_dir():
        raise FileNotFoundError(f"image folder of data set {name!r} not found: {image_dir}")
    data = load_annotations(ann_file)
    categories = sorted(data["categories"], key=lambda cat: cat["id"])
    label_of = {cat["id"]: i for i, cat in enumerate(categories)}
    skipped: Counter = Counter()
    images = {}
    for image in data["images"]:
        try:
            images[image["id"]] = (image, image_file_name(image))
        except ValueError:
            skipped["image_without_file_name"] += 1
    by_image = _group_boxes(data["annotations"], images, label_of, skipped)
    records = []
    for image_id, (_, file_name) in images.items():
        if image_id not in by_image:
            skipped["image_without_boxes"] += 1
            continue
        boxes, labels = (np.asarray(x) for x in zip(*by_image[image_id], strict=True))
        records.append(ImageRecord(image_id, str(image_dir / file_name), boxes.astype(np.float32), labels))
    _log_skipped(name, len(records), skipped)
    return DetectionDataset(
        name=name,
        vocabulary=category_names(categories),
        category_ids=[cat["id"] for cat in categories],
        records=records,
        read_image=Image.open,
        augment_config=augment_config,
        max_regions=max_regions,
        skipped=skipped,
        ground_truth=data,
    )


def _group_boxes(
    annotations: Iterable[dict[str, Any]], images: dict[int, Any], label_of: dict[int, int], skipped: Counter
) -> dict[int, list[tuple[np.ndarray, int]]]:
    by_image: dict[int, list[tuple[np.ndarray, int]]] = defaultdict(list)
    for ann in annotations:
        if ann["image_id"] not in images:
            skipped["box_of_unknown_image"] += 1
        elif ann["category_id"] not in label_of:
            skipped["box_of_unknown_category"] += 1
        elif ann.get("iscrowd", 0):
            skipped["crowd_box"] += 1
        else:
            image = images[ann["image_id"]][0]
            box = xywh_box(ann["bbox"], image.get("width"), image.get("height"), skipped)
            if box is not None:
                by_image[ann["image_id"]].append((box, label_of[ann["category_id"]]))
    return by_image


def xywh_box(bbox: Any, width: float | None, height: float | None, skipped: Counter) -> np.ndarray | None:
    """A COCO [x, y, w, h] -> x1, y1, x2, y2 clipped to the image, or None (counted in `skipped`) if unusable."""
    try:
        x, y, w, h = (float(v) for v in bbox)
    except (TypeError, ValueError):
        skipped["malformed_box"] += 1
        return None
    box = xywh_to_xyxy(np.array([x, y, w, h])).astype(np.float32)  # summed in float64, then stored as float32
    # Not `has_area`: the skip reason follows the given w and h, even where float32 rounds a tiny one away.
    if not np.isfinite(box).all() or w <= 0 or h <= 0:
        skipped["zero_area_box"] += 1
        return None
    if width and height:
        box = clip_to_image(box, (height, width))
        if not has_area(box):
            skipped["box_outside_image"] += 1
            return None
    return box


def load_hf_detection(
    name: str,
    dataset: Any,
    *,
    bbox_format: str = "xywh",
    augment_config: AugmentConfig | None = None,
    max_regions: int | None = None,
) -> DetectionDataset:
    """A Hugging Face data set with the detection schema: "image" and "objects" {"bbox", "category" (ClassLabel)}."""
    if bbox_format not in BBOX_FORMATS:
        raise ValueError(f"bbox_format must be one of {BBOX_FORMATS}, got {bbox_format!r}")
    class_names = _hf_class_names(dataset, name)
    image_ids = dataset["image_id"] if "image_id" in dataset.column_names else range(len(dataset))
    skipped: Counter = Counter()
    records = []
    for row, (image_id, objects) in enumerate(zip(image_ids, dataset["objects"], strict=True)):
        boxes, labels = [], []
        for bbox, category in _hf_objects(objects):
            if not 0 <= int(category) < len(class_names):
                skipped["box_of_unknown_category"] += 1
                continue
            if bbox_format == "xyxy" and bbox is not None and len(bbox) == 4:
                bbox = [bbox[0], bbox[1], bbox[2] - bbox[0], bbox[3] - bbox[1]]
            box = xywh_box(bbox, None, None, skipped)  # the image size is known only once decoded
            if box is not None:
                boxes.append(box)
                labels.append(int(category))
        if not boxes:
            skipped["image_without_boxes"] += 1
            continue
        records.append(ImageRecord(int(image_id), row, np.stack(boxes), np.asarray(labels, dtype=np.int64)))
    _log_skipped(name, len(records), skipped)
    return DetectionDataset(
        name=name,
        vocabulary=list(class_names),
        category_ids=list(range(len(class_names))),
        records=records,
        read_image=_HFImageReader(dataset),
        augment_config=augment_config,
        max_regions=max_regions,
        skipped=skipped,
    )


class _HFImageReader:
    """Row index -> PIL image of a Hugging Face data set (a class, so that workers can pickle it)."""

    def __init__(self, dataset: Any) -> None:
        self.dataset = dataset

    def __call__(self, row: str | int) -> Image.Image:
        return self.dataset[int(row)]["image"]


def _hf_class_names(dataset: Any, name: str) -> list[str]:
    objects = dataset.features.get("objects") if "objects" in dataset.column_names else None
    if objects is None or "image" not in dataset.column_names:
        raise ValueError(f"Hugging Face data set {name!r} needs columns 'image' and 'objects' (bbox, category)")
    if not isinstance(objects, dict):  # a list of per-object dicts
        objects = objects.feature
    category = objects.get("category") if isinstance(objects, dict) else None
    label = getattr(category, "feature", category)
    if getattr(label, "names", None) is None:
        raise ValueError(f"Hugging Face data set {name!r}: objects.category must be a ClassLabel (it names classes)")
    return list(label.names)


def _hf_objects(objects: Any) -> Iterable[tuple[Any, Any]]:
    """(bbox, category) pairs from either layout: a dict of lists, or a list of per-object dicts."""
    if isinstance(objects, dict):
        return zip(objects.get("bbox") or [], objects.get("category") or [], strict=False)
    return ((obj.get("bbox"), obj.get("category")) for obj in objects or [])


def _log_skipped(name: str, kept: int, skipped: Counter) -> None:
    if skipped:
        reasons = ", ".join(f"{count} {reason}" for reason, count in sorted(skipped.items()))
        log.warning("data set %s: %d images kept; skipped %s", name, kept, reasons)
    else:
        log.info("data set %s: %d images", name, kept)
