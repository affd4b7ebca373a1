"""Region question answering data: conversations about the numbered regions of an image.

The formats `build_dataset` reads with `DatasetConfig(questions=True, ...)`:

- Ours (All-Seeing-v2-like): a JSON list, or a JSON Lines file (`*.jsonl`, one record a line), of records
  {"image": path relative to image_dir, "boxes": [[x1, y1, x2, y2], ...] in pixels, "conversations":
  [{"from": "human", "value": question}, {"from": "gpt", "value": answer}, ...]}. Optional: "width" and
  "height" (the boxes are then checked against the image at once, else once it is decoded) and
  "question_types" (one name per turn, for scoring by type, as the synthetic set writes them).
- Osprey's: a JSON list of {"file_name", "height", "width", "annotation": [{"bbox": [x, y, w, h],
  "segmentation": ...}, ...], "conversations": [...]}; a region's box is its bbox, else its segmentation's
  extent. Told from ours by its "annotation" key, record by record.
- Hugging Face tables with columns "image" (an Image feature, or file paths), "boxes" (as ours) and
  "conversations" (and optionally "question_types").

In questions and answers, `<regionK>` names the K-th box, from 1 (`REGION_TAG`); a question may name several.
A leading "<image>" line in the first question (where LLaVA and Osprey put the image) is dropped: the model
places the image itself. "human" or "user" asks, "gpt" or "assistant" answers, strictly in turn ("from" and
"value", or "role" and "content"). A record that breaks any of this is skipped whole and counted by reason:
a turn cannot be dropped without changing what the next one refers to, nor a box without renumbering the rest.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils

from regionspot.boxes import xyxy_to_xywh
from regionspot.data.augment import AugmentConfig
from regionspot.data.detection import (
    DatasetConfig,
    DetectionDataset,
    HFImageReader,
    ImageRecord,
    check_image_dir,
    hf_table,
    xywh_box,
)
from regionspot.images import load_image

REGION_TAG = re.compile(r"<region(\d+)>")  # <region2> names boxes[1]
_IMAGE_TAG = re.compile(r"^\s*<image>\s*")
ASKING_ROLES = frozenset({"human", "user"})
ANSWERING_ROLES = frozenset({"gpt", "assistant"})
HF_COLUMNS = ("image", "boxes", "conversations")


@dataclass
class RegionQA:
    """One usable conversation about an image's regions."""

    index: int  # the record's place in its file or table, from 0
    image: str | int  # the image file's path, or the row of a Hugging Face table that holds the image
    boxes: np.ndarray  # (N, 4) float32 x1, y1, x2, y2 in pixels; <regionK> is boxes[K - 1]
    conversation: list[tuple[str, str]]  # (question, answer) turns
    question_types: list[str] | None = None  # one per turn, where the source names them


def load_region_qa(path: str | Path, *, image_dir: str | Path | None = None) -> tuple[list[RegionQA], Counter]:
    """The usable records of a region-QA file (ours as JSON or JSONL, or Osprey's), and what was skipped, by reason.

    Args:
        path: the file; `*.jsonl` is read as JSON Lines, anything else as one JSON list.
        image_dir: the folder the records' image paths are relative to; default: the file's own folder.

    Raises:
        FileNotFoundError: if there is no such file. ValueError: naming the file, if it is not text, not JSON
            (or, for JSONL, no line is), or not a list of records.
    """
    path = Path(path)
    skipped: Counter = Counter()
    folder = Path(image_dir) if image_dir is not None else path.parent
    records = [
        record
        for index, entry in enumerate(_read_entries(path, skipped))
        if (record := _file_record(entry, index, folder, skipped)) is not None
    ]
    return records, skipped


def hf_region_qa(table: Any, *, image_dir: str | Path | None = None) -> tuple[list[RegionQA], Counter]:
    """The usable rows of a Hugging Face region-QA table, and what was skipped, by reason.

    A record's `image` is its row when the "image" column holds images (read back with the table), else the
    path the column holds (relative to `image_dir` if given). Images are not decoded here.

    Raises:
        ValueError: if a column of `HF_COLUMNS` is missing.
    """
    missing = [column for column in HF_COLUMNS if column not in table.column_names]
    if missing:
        raise ValueError(f"a Hugging Face region-QA table needs columns {list(HF_COLUMNS)}; it lacks {missing}")
    paths = _holds_paths(table)
    images = table["image"] if paths else range(len(table))
    types = table["question_types"] if "question_types" in table.column_names else [None] * len(table)
    folder = Path(image_dir) if image_dir is not None else Path()
    skipped: Counter = Counter()
    records = []
    for index, (image, boxes, turns, names) in enumerate(
        zip(images, table["boxes"], table["conversations"], types, strict=True)
    ):
        # A row of images is read back from the table by its index; a path, from the disk.
        find_image = partial(_existing_file, [image], folder) if paths else partial(int, index)
        read_boxes = partial(xyxy_boxes, boxes, (None, None))  # the image size is known only once decoded
        record = _qa_record(index, turns, read_boxes, find_image, names, skipped)
        if record is not None:
            records.append(record)
    return records, skipped


def load_region_qa_dataset(
    name: str, config: DatasetConfig, *, augment_config: AugmentConfig | None = None
) -> DetectionDataset:
    """The region-QA data set `config` (with `questions`) describes: a file over its image folder, or a table.

    Its items carry "conversation" and keep every box of their record in order (see `DetectionDataset`).
    """
    if config.ann_file is not None:
        check_image_dir(name, config.image_dir)
        records, skipped = load_region_qa(config.ann_file, image_dir=config.image_dir)
        read_image: Callable[[str | int], np.ndarray] = load_image
    else:
        table = hf_table(config)
        records, skipped = hf_region_qa(table, image_dir=config.image_dir)
        read_image = load_image if _holds_paths(table) else HFImageReader(table)
    return DetectionDataset(
        name=name,
        vocabulary=[],  # no classes: what a region is, is what the conversation says
        category_ids=[],
        records=[_image_record(qa) for qa in records],
        read_image=read_image,
        augment_config=augment_config,
        skipped=skipped,
    )


def _image_record(qa: RegionQA) -> ImageRecord:
    labels = np.full(len(qa.boxes), -1, dtype=np.int64)
    return ImageRecord(
        qa.index + 1, qa.image, qa.boxes, labels, conversation=qa.conversation, question_types=qa.question_types
    )


def conversation_turns(turns: Any, skipped: Counter) -> list[tuple[str, str]] | None:
    """(question, answer) pairs of alternating turns, stripped, the first question without its "<image>" tag;
    or None, counted in `skipped` ("no_turns", "turns_not_alternating", "empty_question", "empty_answer")."""
    if not isinstance(turns, list | tuple) or not turns:
        skipped["no_turns"] += 1
        return None
    roles = [str(_either(turn, "from", "role")).lower() for turn in turns]
    expected = [ASKING_ROLES if i % 2 == 0 else ANSWERING_ROLES for i in range(len(turns))]
    if len(turns) % 2 or any(role not in allowed for role, allowed in zip(roles, expected, strict=True)):
        skipped["turns_not_alternating"] += 1
        return None
    texts = [_either(turn, "value", "content") for turn in turns]
    texts = [text.strip() if isinstance(text, str) else "" for text in texts]
    texts[0] = _IMAGE_TAG.sub("", texts[0], count=1)
    questions, answers = texts[0::2], texts[1::2]
    for kind, said in (("question", questions), ("answer", answers)):
        if not all(said):
            skipped[f"empty_{kind}"] += 1
            return None
    return list(zip(questions, answers, strict=True))


def regions_named(text: str) -> list[int]:
    """The K of every `<regionK>` in `text`, in order (1 names the first box)."""
    return [int(k) for k in REGION_TAG.findall(text)]


def xyxy_boxes(boxes: Any, size: tuple[float | None, float | None], skipped: Counter) -> np.ndarray | None:
    """(N, 4) float32 boxes from [[x1, y1, x2, y2], ...] in pixels, clipped to an image of `size` (height,
    width) where known; or None, counted in `skipped`, if there is none ("no_boxes") or any one is unusable
    (`xywh_box`'s reasons): the boxes are numbered, so one bad box spoils the record."""
    if not isinstance(boxes, list | tuple | np.ndarray) or len(boxes) == 0:
        skipped["no_boxes"] += 1
        return None
    corners = []
    for box in boxes:
        try:
            x1, y1, x2, y2 = (float(v) for v in box)
        except (TypeError, ValueError):
            skipped["malformed_box"] += 1
            return None
        corners.append([x1, y1, x2, y2])
    return _checked_boxes(xyxy_to_xywh(np.array(corners)), size, skipped)


def _checked_boxes(xywh: Iterable[Any], size: tuple[float | None, float | None], skipped: Counter) -> np.ndarray | None:
    """(N, 4) float32 xyxy from x, y, w, h boxes by the detection sets' own checks, or None at the first bad one."""
    checked = []
    for box in xywh:
        xyxy = xywh_box(box, size, skipped)
        if xyxy is None:
            return None
        checked.append(xyxy)
    return np.stack(checked).astype(np.float32)


def _read_entries(path: Path, skipped: Counter) -> list[Any]:
    """The records of a JSON list or (for `*.jsonl`) a JSON Lines file; JSONL lines that do not parse are
    counted as "unparsable_line" (but if none parses, the file is not JSONL and raises)."""
    if not path.is_file():
        raise FileNotFoundError(f"region-QA file not found: {path}")
    try:
        text = path.read_text()
    except UnicodeDecodeError as err:
        raise ValueError(f"region-QA file {path} is not text (JSON or JSON Lines): {err}") from err
    if path.suffix == ".jsonl":
        return _json_lines(text, path, skipped)
    try:
        data = json.loads(text)
    except (json.JSONDecodeError, RecursionError) as err:
        raise ValueError(
            f"region-QA file {path} is not valid JSON (a JSON Lines file is named *.jsonl): {err}"
        ) from err
    if not isinstance(data, list):
        raise ValueError(f"region-QA file {path} must hold a JSON list of records, not a {type(data).__name__}")
    return data


def _json_lines(text: str, path: Path, skipped: Counter) -> list[Any]:
    entries, bad = [], 0
    for line in filter(str.strip, text.splitlines()):
        try:
            entries.append(json.loads(line))
        except (json.JSONDecodeError, RecursionError):
            bad += 1
    if bad and not entries:
        raise ValueError(f"region-QA file {path} is not JSON Lines: none of its {bad} lines is a JSON value")
    if bad:
        skipped["unparsable_line"] += bad
    return entries


def _file_record(entry: Any, index: int, image_dir: Path, skipped: Counter) -> RegionQA | None:
    """One record of a file, ours or Osprey's (told by its keys), or None (counted in `skipped`)."""
    if not isinstance(entry, dict):
        skipped["malformed_record"] += 1
        return None
    size = _image_size(entry)
    if "annotation" in entry:
        read_boxes = partial(_osprey_boxes, entry.get("annotation"), size)
        file_name = entry.get("file_name")
        # Osprey's COCO-derived files name images as COCO 2014 did ("COCO_train2014_000000000139.jpg") over a
        # COCO 2017 folder ("000000000139.jpg"); its own loader keeps the part after the last "_". Both are tried.
        names = [file_name, file_name.rsplit("_", 1)[-1]] if isinstance(file_name, str) else []
    elif "boxes" in entry:
        read_boxes = partial(xyxy_boxes, entry.get("boxes"), size)
        names = [entry.get("image")]
    else:
        skipped["unknown_record_format"] += 1
        return None
    find_image = partial(_existing_file, names, image_dir)
    return _qa_record(index, entry.get("conversations"), read_boxes, find_image, entry.get("question_types"), skipped)


def _qa_record(
    index: int,
    turns: Any,
    read_boxes: Callable[[Counter], np.ndarray | None],
    find_image: Callable[[], str | int | None],
    question_types: Any,
    skipped: Counter,
) -> RegionQA | None:
    """A record from its parts, checked in order of cost (turns, boxes, the regions named, the image file);
    None at the first problem, counted once in `skipped`."""
    conversation = conversation_turns(turns, skipped)
    if conversation is None:
        return None
    boxes = read_boxes(skipped)
    if boxes is None:
        return None
    named = [k for turn in conversation for text in turn for k in regions_named(text)]
    if any(not 1 <= k <= len(boxes) for k in named):
        skipped["region_out_of_range"] += 1
        return None
    image = find_image()
    if image is None:
        skipped["image_not_found"] += 1
        return None
    return RegionQA(index, image, boxes, conversation, _question_types(question_types, len(conversation)))


def _osprey_boxes(annotations: Any, size: tuple[float | None, float | None], skipped: Counter) -> np.ndarray | None:
    """The boxes of Osprey's "annotation" list: each one's bbox (x, y, w, h), else its segmentation's extent."""
    if not isinstance(annotations, list) or not annotations:
        skipped["no_boxes"] += 1
        return None
    xywh = []
    for ann in annotations:
        ann = ann if isinstance(ann, dict) else {}
        bbox = ann.get("bbox")
        xywh.append(bbox if bbox is not None else _segmentation_extent(ann.get("segmentation"), size))
    return _checked_boxes(xywh, size, skipped)


def _segmentation_extent(segmentation: Any, size: tuple[float | None, float | None]) -> list[float] | None:
    """x, y, w, h of a COCO segmentation (polygons, or RLE compressed or not), or None if it is not one."""
    height, width = size
    try:
        if isinstance(segmentation, list):  # polygons carry no image size: the record's is needed
            rle = mask_utils.merge(mask_utils.frPyObjects(segmentation, int(height), int(width)))
        elif isinstance(segmentation.get("counts"), list):
            rle = mask_utils.frPyObjects(segmentation, *segmentation["size"])
        else:
            rle = segmentation
        return [float(v) for v in mask_utils.toBbox(rle)]
    except (AttributeError, IndexError, KeyError, TypeError, ValueError):
        return None


def _image_size(entry: dict[str, Any]) -> tuple[float | None, float | None]:
    """(height, width) a record states, if both are positive numbers; else (None, None)."""
    size = (entry.get("height"), entry.get("width"))
    if all(isinstance(v, int | float) and not isinstance(v, bool) and v > 0 for v in size):
        return size
    return None, None


def _existing_file(names: list[Any], folder: Path) -> str | None:
    """The first of `names` (relative to `folder`, or absolute) that is a file, as a path string."""
    for name in names:
        if isinstance(name, str) and name and (folder / name).is_file():
            return str(folder / name)
    return None


def _question_types(names: Any, turns: int) -> list[str] | None:
    """A record's question type names, if it has one string per turn (else they are ignored)."""
    if isinstance(names, list | tuple) and len(names) == turns and all(isinstance(n, str) for n in names):
        return list(names)
    return None


def _either(turn: Any, key: str, other: str) -> Any:
    """`turn[key]`, else `turn[other]` (LLaVA's "from"/"value" or the chat "role"/"content"), else None."""
    if not isinstance(turn, dict):
        return None
    return turn[key] if turn.get(key) is not None else turn.get(other)


def _holds_paths(table: Any) -> bool:
    """Whether a table's "image" column holds file paths rather than images."""
    import datasets

    return not isinstance(table.features["image"], datasets.Image)
