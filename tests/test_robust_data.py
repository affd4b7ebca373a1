"""Data sets from strangers: bad image files and malformed annotation entries are skipped and counted, never
fatal; only an annotation file that cannot be read as a whole is an error, and it names the file."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from regionspot.data import DatasetConfig, build_dataset, collate_detections, load_coco_detection
from regionspot.data.coco import check_annotations

GOOD_CATEGORY = {"id": 1, "name": "square"}


def _png_bytes(tmp_path: Path, size: tuple[int, int] = (40, 30)) -> bytes:
    path = tmp_path / "_source.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(path)
    return path.read_bytes()


def _jpeg_bytes(tmp_path: Path) -> bytes:
    path = tmp_path / "_source.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (30, 40, 3), dtype=np.uint8)).save(path)
    return path.read_bytes()


def _data_set(tmp_path: Path, files: dict[str, bytes]) -> Path:
    """An annotation file with one box on each of `files` (name -> bytes written in images/)."""
    images = tmp_path / "images"
    images.mkdir(exist_ok=True)
    for name, content in files.items():
        (images / name).write_bytes(content)
    entries = [{"id": i + 1, "file_name": name, "width": 40, "height": 30} for i, name in enumerate(files)]
    annotations = [
        {"id": i + 1, "image_id": i + 1, "category_id": 1, "bbox": [2, 2, 20, 15]} for i in range(len(files))
    ]
    path = tmp_path / "ann.json"
    path.write_text(json.dumps({"images": entries, "annotations": annotations, "categories": [GOOD_CATEGORY]}))
    return path


def test_bad_image_files_are_skipped_and_counted(tmp_path, monkeypatch):
    png, jpeg = _png_bytes(tmp_path), _jpeg_bytes(tmp_path)
    bad = {
        "garbage.jpg": b"\x00\x01 not an image at all",
        "empty.png": b"",
        "text.png": b"a text file named like an image",
        "truncated.jpg": jpeg[: len(jpeg) // 2],
        "truncated.png": png[: len(png) // 2],
        "header_only.png": png[:40],
        "wrong_suffix.jpg": b"GIF89a" + b"\x00" * 20,
    }
    ann = _data_set(tmp_path, {"good.png": png, **bad})
    dataset = load_coco_detection("strangers", ann, tmp_path / "images")
    samples = [dataset[i] for i in range(len(dataset))]  # nothing raises
    assert samples[0]["image"].shape == (30, 40, 3)
    assert [s.get("skipped") for s in samples[1:]] == ["unreadable_image"] * len(bad)
    batch = collate_detections(samples)
    assert batch["skipped"] == {"unreadable_image": len(bad)} and len(batch["images"]) == 1


def test_decompression_bombs_are_skipped_and_counted(tmp_path, monkeypatch):
    """PIL raises over twice MAX_IMAGE_PIXELS and only warns (then decodes it all) between once and twice: both
    are skipped. The limit is lowered here, so that the bombs are small files."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    files = {
        "small.png": _png_bytes(tmp_path, (20, 20)),  # 400 pixels: fine
        "warns.png": _png_bytes(tmp_path, (40, 40)),  # 1,600: over the limit, under twice it
        "raises.png": _png_bytes(tmp_path, (100, 100)),  # 10,000: over twice the limit
    }
    ann = _data_set(tmp_path, files)
    dataset = load_coco_detection("bombs", ann, tmp_path / "images")
    samples = [dataset[i] for i in range(len(dataset))]
    assert samples[0]["image"].shape == (20, 20, 3)
    assert [s.get("skipped") for s in samples[1:]] == ["image_too_large", "image_too_large"]
    assert collate_detections(samples)["skipped"] == {"image_too_large": 2}


def test_malformed_annotation_entries_are_skipped_and_counted(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "a.png").write_bytes(_png_bytes(tmp_path))
    images = [
        {"id": 1, "file_name": "a.png", "width": 40, "height": 30},
        "not an object",
        {"file_name": "a.png"},  # no id
        {"id": [2], "file_name": "a.png"},  # an id that is no id
        {"id": 3, "file_name": "a.png", "width": "wide", "height": 30},
        {"id": True, "file_name": "a.png"},
    ]
    categories = [GOOD_CATEGORY, {"id": 2}, {"id": "3", "name": "x"}, {"id": 4, "name": ["x"]}, None]
    good = {"id": 1, "image_id": 1, "category_id": 1, "bbox": [2, 2, 20, 15]}
    annotations = [
        good,
        42,
        {"image_id": 1, "category_id": 1, "bbox": [2, 2, 5, 5]},  # no id
        {"id": 3, "image_id": 1, "category_id": 1},  # no bbox
        {"id": 4, "image_id": [1], "category_id": 1, "bbox": [2, 2, 5, 5]},
        {"id": 5, "image_id": 1, "category_id": {"id": 1}, "bbox": [2, 2, 5, 5]},
        {"id": 6, "image_id": 1, "category_id": 1, "bbox": "2, 2, 5, 5"},  # read later: a malformed box
        {"id": 7, "image_id": 1, "category_id": 1, "bbox": [2, 2, 5]},
        {"id": 8, "image_id": 1, "category_id": 1, "bbox": [2, 2, None, 5]},
        {"id": 9, "image_id": 1, "category_id": 1, "bbox": [2, 2, float("nan"), 5]},
        {"id": 10, "image_id": 1, "category_id": 1, "bbox": [2, 2, float("inf"), 5]},
    ]
    ann = tmp_path / "ann.json"
    ann.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    dataset = build_dataset("messy", DatasetConfig(ann_file=str(ann), image_dir=str(tmp_path / "images")))
    assert dict(dataset.skipped) == {
        "malformed_image": 5,
        "malformed_category": 4,
        "malformed_annotation": 5,
        "malformed_box": 3,
        "non_finite_box": 2,  # NaN and infinity: not counted as a zero-area box
    }
    assert len(dataset) == 1 and dataset[0]["boxes"].tolist() == [[2, 2, 22, 17]]
    check_annotations(dataset.ground_truth)  # what is kept is valid ground truth to score against
    assert dataset.ground_truth["annotations"][0] == good and len(dataset.ground_truth["categories"]) == 1


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b'{"images": [{"id": 1, "file_na', "is not valid JSON"),  # truncated
        (b"", "is not valid JSON"),
        (b"\xff\xfe\x00\x01\x80", "is not valid JSON"),  # binary
        (b"[" * 100_000 + b"]" * 100_000, "is not valid JSON"),  # deeper than Python's parser goes
        (b"[]", "expected a JSON object with images, annotations and categories"),
        (b'"images"', "expected a JSON object"),
        (b'{"images": [], "categories": []}', r"missing or non-list key\(s\) \['annotations'\]"),
        (b'{"images": {}, "annotations": [], "categories": []}', r"non-list key\(s\) \['images'\]"),
    ],
)
def test_a_wholly_unreadable_annotation_file_is_an_error_naming_it(tmp_path, content, message):
    (tmp_path / "images").mkdir()
    ann = tmp_path / "broken.json"
    ann.write_bytes(content)
    with pytest.raises(ValueError, match=message) as info:
        load_coco_detection("broken", ann, tmp_path / "images")
    assert str(ann) in str(info.value)


def test_a_missing_annotation_file_is_an_error_naming_it(tmp_path):
    (tmp_path / "images").mkdir()
    with pytest.raises(FileNotFoundError, match=r"annotation file not found: .*absent\.json"):
        load_coco_detection("absent", tmp_path / "absent.json", tmp_path / "images")


def test_counts_of_everything_skipped(tmp_path, monkeypatch):
    """The totals the robustness note reports: bad image files and malformed entries, all skipped, none fatal."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    png = _png_bytes(tmp_path, (20, 20))
    files = {"ok.png": png, "bad.png": b"junk", "cut.png": png[:60], "bomb.png": _png_bytes(tmp_path, (100, 100))}
    ann = _data_set(tmp_path, files)
    data = json.loads(ann.read_text())
    data["annotations"] += [None, {"id": 99}]
    data["images"].append({"id": "x"})  # an image without a file and without boxes
    ann.write_text(json.dumps(data))
    dataset = load_coco_detection("all", ann, tmp_path / "images")
    read = Counter(dataset[i].get("skipped", "kept") for i in range(len(dataset)))
    assert read == {"kept": 1, "unreadable_image": 2, "image_too_large": 1}
    assert dataset.skipped["malformed_annotation"] == 2 and dataset.skipped["image_without_file_name"] == 1
