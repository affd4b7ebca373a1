"""Detection data sets: COCO/LVIS-format JSON + an image folder, or a Hugging Face `datasets` table.

Both become a `DetectionDataset`: a list of image records (boxes as x1, y1, x2, y2 pixels, labels as
indices into the data set's own vocabulary, its class names as stored: the model reads them its own way,
`regionspot.vocabulary.read_class_names`). Region-caption sets (`DatasetConfig.captions`, their own
formats in `regionspot.data.captions`) take the same path, with a caption and a region key per box; so do
region-QA sets (`DatasetConfig.questions`, `regionspot.data.region_qa`), one conversation per image about
its numbered boxes.
Bad entries never stop training: annotations and images that cannot be used (malformed entries of the
JSON, boxes outside their image, corrupt or truncated image files, decompression bombs) are skipped and
counted, by reason, in `DetectionDataset.skipped` (while indexing) or in a sample's "skipped" field (while
reading: "unreadable_image", "image_too_large"). Only a file that cannot be read as a whole (not JSON, or
not an object with images, annotations and categories) is an error, naming it.
"""

from __future__ import annotations

import logging
import warnings
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from itertools import zip_longest
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from regionspot.boxes import clip_to_image, has_area, xywh_to_xyxy, xyxy_to_xywh
from regionspot.data.augment import AugmentConfig, augment, augment_keeping_boxes
from regionspot.data.coco import (
    box_problem,
    check_annotation_lists,
    declared_size,
    drop_malformed,
    image_file_name,
    read_json,
)
from regionspot.images import ImageTooLargeError, load_image, to_rgb_uint8
from regionspot.vocabulary import category_names

log = logging.getLogger(__name__)

BBOX_FORMATS = ("xywh", "xyxy")


@dataclass
class DatasetConfig:
    """One data set of boxes. Give `ann_file` + `image_dir`, or `hf_path` for a Hugging Face data set."""

    # COCO/LVIS-format JSON (images, annotations, categories); with `captions`, also Visual Genome's own
    # region_descriptions.json (regionspot.data.captions)
    ann_file: str | None = None
    image_dir: str | None = None  # folder of the images named by the JSON's file_name (or coco_url's basename)
    ratio: float = 1.0  # sampling weight among the training data sets (RegionSpot: equal)
    hf_path: str | None = None  # a `datasets.load_dataset` name or a `save_to_disk` folder
    hf_split: str = "train"
    bbox_format: str = "xywh"  # box layout of a Hugging Face data set: "xywh" (COCO) or "xyxy"
    # Draw the package's toy set (`regionspot.data.toy`, coloured rectangles) at ann_file when that file is
    # missing: the data of the tiny smoke run, which then needs nothing but the package.
    toy: bool = False
    # Read one caption per box (an annotation's "caption", VG's "phrase"); boxes without one are skipped.
    # Categories become optional: a box without a known one gets label -1 (a captions-only set such as VG).
    captions: bool = False
    # Read a region-QA file or table (regionspot.data.region_qa): one item per conversation, its boxes exactly
    # the record's regions in order (<region1> = the first). No classes (labels -1); max_regions and crops
    # never apply to such an item, since dropping a box would renumber the regions its questions name.
    questions: bool = False
    # A feature cache folder (`python -m regionspot.extract ... --clip-maps`): training reads each image's frozen SAM
    # and CLIP outputs from it instead of the image, and the backbones do not run (regionspot.data.feature_cache).
    # The cache holds the boxes, labels and vocabulary too, so ann_file / hf_path are not needed beside it; a validation
    # set from a cache scores against the annotation file it was extracted from, or `ann_file` if that has moved.
    features: str | None = None
    # This data set's flip probability, instead of data.augment's (None: that one). A flip mirrors "left" and "right"
    # in a conversation (as LLaVA-style region data must, or the answer turns false), so a model must learn both
    # words from one image: a short schedule may learn spatial questions only without flips (measured: docs/vqa.md).
    flip_prob: float | None = None

    def __post_init__(self) -> None:
        if self.flip_prob is not None and not 0.0 <= self.flip_prob <= 1.0:
            raise ValueError(f"flip_prob must be in [0, 1], got {self.flip_prob}")
        for flag in ("captions", "questions"):  # a YAML string such as "false" would read as true
            if not isinstance(getattr(self, flag), bool):
                raise ValueError(f"{flag} must be true or false, got {getattr(self, flag)!r}")
        if self.questions and (self.captions or self.toy):
            raise ValueError("a region-QA data set (questions: true) is neither a caption set nor a toy set")
        self._check_source()
        if self.ann_file is not None and self.image_dir is None and self.features is None:
            raise ValueError(f"data set {self.ann_file} needs image_dir, the folder of its images")
        if self.ratio <= 0:
            raise ValueError(f"data set ratio must be positive, got {self.ratio}")
        if self.bbox_format not in BBOX_FORMATS:
            raise ValueError(f"bbox_format must be one of {BBOX_FORMATS}, got {self.bbox_format!r}")
        if self.toy and (self.ann_file is None or Path(self.image_dir) != Path(self.ann_file).parent / "images"):
            raise ValueError("a toy data set is drawn at ann_file with its images in <ann_file's folder>/images")

    def _check_source(self) -> None:
        if self.features is not None and self.questions:
            raise ValueError("a region-QA data set (questions: true) cannot be read from a feature cache")
        if self.ann_file is not None and self.hf_path is not None:
            raise ValueError("a data set needs either ann_file (with image_dir) or hf_path, not both")
        if self.ann_file is None and self.hf_path is None and self.features is None:
            raise ValueError("a data set needs either ann_file (with image_dir) or hf_path, or features (a cache)")


@dataclass
class ImageRecord:
    """One usable image: where to read it and its boxes."""

    image_id: int
    source: str | int  # file path, or row index of a Hugging Face data set
    boxes: np.ndarray  # (N, 4) float32 x1, y1, x2, y2 in pixels
    labels: np.ndarray  # (N,) int64 indices into the vocabulary; -1: a box with a caption but no known class
    captions: list[str] | None = None  # N captions, one per box in the same order (caption data sets)
    region_keys: list[str] | None = None  # N keys, one per box: what its caption is scored under
    # (question, answer) turns about the boxes, <regionK> naming boxes[K - 1] (region-QA data sets)
    conversation: list[tuple[str, str]] | None = None
    question_types: list[str] | None = None  # one name per turn, where the source names them (for scoring by type)


# One box of an image while indexing: (4,) x1, y1, x2, y2, label, caption and region key (None: no captions).
Region = tuple[np.ndarray, int, str | None, str | None]


def image_record(image_id: int, source: str | int, regions: Sequence[Region]) -> ImageRecord:
    """The record of an image from its (non-empty) regions, in their order."""
    boxes, labels, captions, keys = zip(*regions, strict=True)
    return ImageRecord(
        image_id,
        source,
        np.stack(boxes).astype(np.float32),
        np.asarray(labels, dtype=np.int64),
        captions=None if captions[0] is None else list(captions),
        region_keys=None if keys[0] is None else list(keys),
    )


def region_key(region_id: Any, image_id: Any, j: int) -> str:
    """A region's key: its own id where it has one (GLaMM keys RefCOCOg by annotation id, VG by region_id),
    else TAP's "{image_id}_region_{j}", j being the region's place among its image's regions in file order."""
    return str(region_id) if region_id is not None else f"{image_id}_region_{j}"


def usable_caption(caption: Any, skipped: Counter) -> str | None:
    """The caption stripped, or None (counted as "empty_caption") if it is missing, not a str or blank."""
    if isinstance(caption, str) and caption.strip():
        return caption.strip()
    skipped["empty_caption"] += 1
    return None


class DetectionDataset(Dataset):
    """Images with boxes and labels over one vocabulary (and, for a caption data set, a caption per box).

    An item is keyed by an index, or by (index, seed): the seed drives the augmentation and the choice
    of regions, so a batch sampler that hands out seeds makes every epoch reproducible. An item is a dict
    of "image" ((H, W, 3) uint8 numpy), "boxes" ((N, 4) float32 tensor), "labels" ((N,) int64 tensor),
    "image_id", "dataset" and, when the records have them, "captions" and "region_keys" (N each, in the
    boxes' order) or "conversation" (a region-QA set: (question, answer) string pairs, with every box of the
    record in its order, however many `max_regions` allows, never cropped; and "question_types", one name per
    turn, where the source has them); or {"skipped": reason, "dataset"}
    for an image that cannot be used ("region_outside_image": a QA box that lies off its decoded image).

    Args:
        name: the data set's name (batches carry it; its vocabulary is looked up by it).
        vocabulary: C class names as the source stores them (the model's `clip.class_names` reads them);
            empty for a captions-only data set.
        category_ids: the C category ids of the source, in vocabulary order.
        records: the usable images.
        read_image: source -> (H, W, 3) uint8 RGB by the one image reader (`regionspot.images`): `load_image`
            for a file, `HFImageReader` for a table's row; raises on unreadable files.
        augment_config: training augmentations, or None (validation).
        max_regions: at most this many boxes per image (a random subset), or None for all; a region-QA record
            always keeps all its boxes.
        skipped: counts of what indexing skipped, by reason (logged here, once per data set).
        ground_truth: the COCO/LVIS(-style) annotation dict (for scoring), if the source has one.
    """

    def __init__(
        self,
        *,
        name: str,
        vocabulary: Sequence[str],
        category_ids: Sequence[int],
        records: Sequence[ImageRecord],
        read_image: Callable[[str | int], np.ndarray],
        augment_config: AugmentConfig | None = None,
        max_regions: int | None = None,
        skipped: Counter | None = None,
        ground_truth: dict[str, Any] | None = None,
    ) -> None:
        log_skipped(name, len(records), skipped or Counter())
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
            image = _decode(self.read_image, record.source)
        except (ImageTooLargeError, Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
            log.warning("skipping image %s of data set %s: %s", record.source, self.name, err)
            return {"skipped": "image_too_large", "dataset": self.name}
        except (OSError, ValueError, SyntaxError) as err:
            log.warning("skipping unreadable image %s of data set %s: %s", record.source, self.name, err)
            return {"skipped": "unreadable_image", "dataset": self.name}
        boxes, kept = _boxes_inside(record.boxes, image.shape[:2])  # kept: the record's indices of the boxes
        if len(boxes) == 0:
            return {"skipped": "no_box_inside_image", "dataset": self.name}
        if record.conversation is not None:
            return self._conversation_sample(record, image, boxes, seed)
        captions = _pick(record.captions, kept)
        rng = np.random.default_rng(seed)
        if self.augment_config is not None:
            # The record's indices ride through the crop as the labels, so labels and region keys follow it too.
            image, boxes, kept, captions = augment(image, boxes, kept, rng, self.augment_config, captions=captions)
        if self.max_regions is not None and len(boxes) > self.max_regions:
            subset = np.sort(rng.choice(len(boxes), self.max_regions, replace=False))
            boxes, kept, captions = boxes[subset], kept[subset], _pick(captions, subset)
        sample = {
            # (H, W, 3) uint8 numpy: Lightning leaves it on the CPU, where the model's one preprocessing resizes it
            "image": np.ascontiguousarray(image),
            "boxes": torch.from_numpy(np.asarray(boxes, dtype=np.float32)),
            "labels": torch.from_numpy(np.asarray(record.labels[kept], dtype=np.int64)),
            "image_id": record.image_id,
            "dataset": self.name,
        }
        if captions is not None:
            sample["captions"] = captions
        if record.region_keys is not None:
            sample["region_keys"] = _pick(record.region_keys, kept)
        return sample

    def _conversation_sample(
        self, record: ImageRecord, image: np.ndarray, boxes: np.ndarray, seed: int | Sequence[int]
    ) -> dict[str, Any]:
        """The sample of a region-QA record, whose `boxes` (clipped to the decoded image) must all be there:
        its questions name them by place, so one lost box would point every later tag at the wrong region."""
        if len(boxes) < len(record.boxes):
            return {"skipped": "region_outside_image", "dataset": self.name}
        conversation = list(record.conversation)
        if self.augment_config is not None:
            image, boxes, conversation = augment_keeping_boxes(
                image, boxes, np.random.default_rng(seed), self.augment_config, conversation=conversation
            )
        sample = {
            "image": np.ascontiguousarray(image),
            "boxes": torch.from_numpy(np.asarray(boxes, dtype=np.float32)),
            "labels": torch.from_numpy(record.labels.copy()),
            "image_id": record.image_id,
            "dataset": self.name,
            "conversation": conversation,
        }
        if record.question_types is not None:
            sample["question_types"] = list(record.question_types)
        return sample


def _decode(read_image: Callable[[str | int], np.ndarray], source: str | int) -> np.ndarray:
    """(H, W, 3) uint8 of one image; raises what the reader raises for a file it cannot decode.

    PIL refuses an image of more than twice `Image.MAX_IMAGE_PIXELS` (DecompressionBombError), but between
    once and twice that it only warns and decodes it all: that one is raised too, so that a data loader worker
    never decodes a bomb.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        return read_image(source)


def _boxes_inside(boxes: np.ndarray, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Clip boxes to the decoded image (its size may differ from the JSON's, or be unknown until now); drop those
    left empty. Returns the (M, 4) boxes kept and their (M,) indices in `boxes`."""
    clipped = clip_to_image(boxes, size).astype(np.float32)
    keep = np.flatnonzero(has_area(clipped))
    return clipped[keep], keep


def _pick(items: Sequence[str] | None, indices: np.ndarray) -> list[str] | None:
    return None if items is None else [items[i] for i in indices]


def hf_table(config: DatasetConfig) -> Any:
    """The Hugging Face table `config.hf_path` names (a `save_to_disk` folder or a `load_dataset` name), at
    `config.hf_split` if it has splits."""
    import datasets

    path = Path(config.hf_path)
    hf = datasets.load_from_disk(str(path)) if path.is_dir() else datasets.load_dataset(config.hf_path)
    if isinstance(hf, datasets.DatasetDict):
        if config.hf_split not in hf:
            raise ValueError(f"{config.hf_path} has no split {config.hf_split!r}; it has {sorted(hf)}")
        hf = hf[config.hf_split]
    return hf


def load_coco_detection(
    name: str,
    ann_file: str | Path,
    image_dir: str | Path,
    *,
    augment_config: AugmentConfig | None = None,
    max_regions: int | None = None,
) -> DetectionDataset:
    """A COCO/LVIS-format JSON and its image folder. Categories are ordered by id.

    Entries of the JSON that COCO/LVIS would not accept (not objects, lacking a field, ids that are no ids)
    are skipped and counted ("malformed_image", ...), as are boxes and images that cannot be used.

    Raises:
        FileNotFoundError: if the folder or the file is missing. ValueError: naming the file, if it is not
            JSON or not an object with lists of images, annotations and categories; or if no image has a usable box.
    """
    check_image_dir(name, image_dir)
    data = read_json(ann_file, what="annotation file")
    check_annotation_lists(data, source=str(ann_file))
    skipped: Counter = Counter()
    data = drop_malformed(data, skipped)
    return coco_style_dataset(
        name, data, image_dir, captions=False, augment_config=augment_config, max_regions=max_regions,
        skipped=skipped,
    )  # fmt: skip


def check_image_dir(name: str, image_dir: str | Path) -> None:
    """Raise FileNotFoundError unless `image_dir` is a folder (before the annotation file is read)."""
    if not Path(image_dir).is_dir():
        raise FileNotFoundError(f"image folder of data set {name!r} not found: {image_dir}")


def coco_style_dataset(
    name: str,
    data: dict[str, Any],
    image_dir: str | Path,
    *,
    captions: bool,
    augment_config: AugmentConfig | None = None,
    max_regions: int | None = None,
    skipped: Counter | None = None,
) -> DetectionDataset:
    """The data set of a parsed COCO-style dict (images, annotations, categories ordered by id).

    With `captions`, each box also takes its annotation's "caption" and a region key (`region_key` of the
    annotation's id), categories may be absent, and a box without a known category gets label -1.
    `skipped`: what was skipped before (e.g. `drop_malformed`'s counts), to which this adds its own.
    """
    categories = sorted(data.get("categories") or [], key=lambda cat: cat["id"])
    label_of = {cat["id"]: i for i, cat in enumerate(categories)}
    skipped = Counter(skipped or {})
    images = {}
    for image in data["images"]:
        try:
            images[image["id"]] = (image, image_file_name(image))
        except ValueError:
            skipped["image_without_file_name"] += 1
    by_image = _group_regions(data["annotations"], images, label_of, skipped, captions=captions)
    files = ((image_id, str(Path(image_dir) / file_name)) for image_id, (_, file_name) in images.items())
    records = _image_records(((image_id, file, by_image.get(image_id)) for image_id, file in files), skipped)
    return DetectionDataset(
        name=name,
        vocabulary=category_names(categories),
        category_ids=[cat["id"] for cat in categories],
        records=records,
        read_image=load_image,
        augment_config=augment_config,
        max_regions=max_regions,
        skipped=skipped,
        ground_truth=data,
    )


def _image_records(images: Iterable[tuple[int, str | int, list[Region] | None]], skipped: Counter) -> list[ImageRecord]:
    """The records of the (image id, source, regions) whose regions are not empty; the others are counted in
    `skipped` as "image_without_boxes"."""
    records = []
    for image_id, source, regions in images:
        if regions:
            records.append(image_record(image_id, source, regions))
        else:
            skipped["image_without_boxes"] += 1
    return records


def _group_regions(
    annotations: Iterable[dict[str, Any]],
    images: dict[int, Any],
    label_of: dict[int, int],
    skipped: Counter,
    *,
    captions: bool,
) -> dict[int, list[Region]]:
    by_image: dict[int, list[Region]] = defaultdict(list)
    place: Counter = Counter()  # annotations of each image so far, usable or not: j of "{image_id}_region_{j}"
    for ann in annotations:
        image_id = ann.get("image_id")
        if not isinstance(image_id, int | str):  # e.g. a list: no image's id, and not even a lookup key
            skipped["box_of_unknown_image"] += 1
            continue
        region = _coco_region(ann, images, label_of, skipped, captions=captions, j=place[image_id])
        place[image_id] += 1
        if region is not None:
            by_image[image_id].append(region)
    return by_image


def _coco_region(
    ann: dict[str, Any], images: dict[int, Any], label_of: dict[int, int], skipped: Counter, *, captions: bool, j: int
) -> Region | None:
    """One annotation's region, or None (counted in `skipped`) if it cannot be used."""
    if ann.get("image_id") not in images:
        skipped["box_of_unknown_image"] += 1
        return None
    category_id = ann.get("category_id")
    label = label_of.get(category_id, -1) if isinstance(category_id, int) else -1
    if label < 0 and not captions:
        skipped["box_of_unknown_category"] += 1
        return None
    if ann.get("iscrowd", 0):
        skipped["crowd_box"] += 1
        return None
    caption = usable_caption(ann.get("caption"), skipped) if captions else None
    if captions and caption is None:
        return None
    image = images[ann["image_id"]][0]
    box = xywh_box(ann.get("bbox"), declared_size(image), skipped)
    if box is None:
        return None
    return box, label, caption, region_key(ann.get("id"), ann["image_id"], j) if captions else None


def xywh_box(bbox: Any, image_size: tuple[Any, Any], skipped: Counter) -> np.ndarray | None:
    """A COCO [x, y, w, h] -> x1, y1, x2, y2 clipped to an image of `image_size` (height, width) where it has
    both, or None (counted in `skipped`) if unusable."""
    problem = box_problem(bbox, image_size)  # the rule evaluate.py and validation's ground truth follow too
    if problem is not None:
        skipped[problem] += 1
        return None
    box = xywh_to_xyxy(np.array([float(v) for v in bbox])).astype(np.float32)  # summed in float64, stored as float32
    return clip_to_image(box, image_size) if all(image_size) else box


def load_hf_detection(
    name: str,
    dataset: Any,
    *,
    bbox_format: str = "xywh",
    captions: bool = False,
    augment_config: AugmentConfig | None = None,
    max_regions: int | None = None,
) -> DetectionDataset:
    """A Hugging Face data set with the detection schema: "image" and "objects" {"bbox", "category" (ClassLabel)}.

    With `captions`, objects carry a "caption" each and "category" is optional (label -1 without it); region
    keys are "{image_id}_region_{j}", j being the object's place in its row.
    """
    if bbox_format not in BBOX_FORMATS:
        raise ValueError(f"bbox_format must be one of {BBOX_FORMATS}, got {bbox_format!r}")
    class_names = _hf_class_names(dataset, name, captions=captions)
    image_ids = dataset["image_id"] if "image_id" in dataset.column_names else range(len(dataset))
    skipped: Counter = Counter()
    rows = (
        (int(image_id), row, _hf_regions(
            objects, image_id=int(image_id), num_classes=len(class_names), bbox_format=bbox_format,
            captions=captions, skipped=skipped,
        ))
        for row, (image_id, objects) in enumerate(zip(image_ids, dataset["objects"], strict=True))
    )  # fmt: skip
    records = _image_records(rows, skipped)
    return DetectionDataset(
        name=name,
        vocabulary=list(class_names),
        category_ids=list(range(len(class_names))),
        records=records,
        read_image=HFImageReader(dataset),
        augment_config=augment_config,
        max_regions=max_regions,
        skipped=skipped,
    )


def _hf_regions(
    objects: Any, *, image_id: int, num_classes: int, bbox_format: str, captions: bool, skipped: Counter
) -> list[Region]:
    """The usable regions of one row's objects; the others are counted in `skipped`."""
    regions = []
    for j, (bbox, category, caption) in enumerate(_hf_objects(objects)):
        label = int(category) if category is not None and 0 <= int(category) < num_classes else -1
        if label < 0 and not captions:
            skipped["box_of_unknown_category"] += 1
            continue
        text = usable_caption(caption, skipped) if captions else None
        if captions and text is None:
            continue
        if bbox_format == "xyxy" and bbox is not None and len(bbox) == 4:
            bbox = xyxy_to_xywh(np.array(bbox, dtype=np.float64))
        box = xywh_box(bbox, (None, None), skipped)  # the image size is known only once decoded
        if box is not None:
            regions.append((box, label, text, region_key(None, image_id, j) if captions else None))
    return regions


class HFImageReader:
    """Row index -> (H, W, 3) uint8 RGB of the image a Hugging Face table holds, as `load_image` reads a file
    (a class, so that workers can pickle it)."""

    def __init__(self, dataset: Any) -> None:
        self.dataset = dataset

    def __call__(self, row: str | int) -> np.ndarray:
        return to_rgb_uint8(self.dataset[int(row)]["image"])


def _hf_class_names(dataset: Any, name: str, *, captions: bool) -> list[str]:
    """The ClassLabel names of objects.category; [] for a caption data set without one."""
    objects = dataset.features.get("objects") if "objects" in dataset.column_names else None
    if objects is None or "image" not in dataset.column_names:
        fields = "bbox, caption" if captions else "bbox, category"
        raise ValueError(f"Hugging Face data set {name!r} needs columns 'image' and 'objects' ({fields})")
    if not isinstance(objects, dict):  # a list of per-object dicts
        objects = objects.feature
    category = objects.get("category") if isinstance(objects, dict) else None
    label = getattr(category, "feature", category)
    if getattr(label, "names", None) is None:
        if captions:
            return []
        raise ValueError(f"Hugging Face data set {name!r}: objects.category must be a ClassLabel (it names classes)")
    return list(label.names)


def _hf_objects(objects: Any) -> Iterable[tuple[Any, Any, Any]]:
    """(bbox, category, caption) triples from either layout: a dict of lists, or a list of per-object dicts.

    A field an object lacks is None, so that the object is counted as skipped rather than silently lost.
    """
    if isinstance(objects, dict):
        return zip_longest(objects.get("bbox") or [], objects.get("category") or [], objects.get("caption") or [])
    return ((obj.get("bbox"), obj.get("category"), obj.get("caption")) for obj in objects or [])


def log_skipped(name: str, kept: int, skipped: Counter) -> None:
    """Log, once per data set, how many images it kept and what indexing skipped, by reason."""
    if skipped:
        reasons = ", ".join(f"{count} {reason}" for reason, count in sorted(skipped.items()))
        log.warning("data set %s: %d images kept; skipped %s", name, kept, reasons)
    else:
        log.info("data set %s: %d images", name, kept)
