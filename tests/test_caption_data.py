"""Region-caption data: COCO-style, Visual Genome and Hugging Face formats, skips, captions through augmentation."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from regionspot.data import AugmentConfig, DatasetConfig, build_dataset, collate_detections, load_hf_detection
from regionspot.data.augment import mirror_left_right
from regionspot.data.captions import caption_references

COLOURS = {"red": (220, 30, 30), "blue": (30, 40, 220), "green": (30, 200, 40)}


def _png(path, height=40, width=60):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((height, width, 3), 128, np.uint8)).save(path)


def _captions_json(tmp_path, data, name="captions.json"):
    (tmp_path / name).write_text(json.dumps(data))
    return DatasetConfig(ann_file=str(tmp_path / name), image_dir=str(tmp_path), captions=True)


def test_coco_style_captions_keys_and_skips(tmp_path):
    _png(tmp_path / "a.png")
    _png(tmp_path / "b.png")
    images = [{"id": 1, "file_name": "a.png", "width": 60, "height": 40}, {"id": 2, "file_name": "b.png"}]
    annotations = [
        {"id": 11, "image_id": 1, "bbox": [10, 5, 20, 10], "caption": "a cat", "category_id": 7},
        {"image_id": 1, "bbox": [0, 0, 5, 5], "caption": "  the sky  "},  # no id: keyed by place, no class: -1
        {"image_id": 1, "bbox": [0, 0, 5, 5], "caption": " "},
        {"image_id": 1, "bbox": [0, 0, 5, 5], "caption": ["a list"]},
        {"image_id": 1, "bbox": [100, 100, 5, 5], "caption": "far away"},
        {"image_id": 1, "bbox": "not a box", "caption": "broken"},
        {"image_id": 1, "bbox": [50, 30, 30, 30], "caption": "clipped", "category_id": 99},
        {"image_id": 42, "bbox": [1, 1, 5, 5], "caption": "no such image"},
        {"image_id": 2, "bbox": [1, 1, 0, 5], "caption": "no area"},
    ]
    data = {"images": images, "annotations": annotations, "categories": [{"id": 7, "name": "cat"}]}
    dataset = build_dataset("refcocog", _captions_json(tmp_path, data))
    assert dict(dataset.skipped) == {
        "empty_caption": 2,
        "box_outside_image": 1,
        "malformed_box": 1,
        "box_of_unknown_image": 1,
        "zero_area_box": 1,
        "image_without_boxes": 1,
    }
    assert dataset.vocabulary == ["cat"] and dataset.ground_truth == data and len(dataset) == 1
    record = dataset.records[0]
    assert record.captions == ["a cat", "the sky", "clipped"]
    assert record.region_keys == ["11", "1_region_1", "1_region_6"]
    np.testing.assert_allclose(record.boxes, [[10, 5, 30, 15], [0, 0, 5, 5], [50, 30, 60, 40]])
    sample = dataset[0]
    assert sample["labels"].tolist() == [0, -1, -1]
    assert sample["captions"] == record.captions and sample["region_keys"] == record.region_keys

    del data["categories"]  # a captions-only set: no vocabulary, no classes
    captions_only = build_dataset("vg", _captions_json(tmp_path, data, "no_categories.json"))
    assert captions_only.vocabulary == [] and captions_only.records[0].labels.tolist() == [-1, -1, -1]


def test_visual_genome_region_descriptions(tmp_path):
    _png(tmp_path / "1.jpg")
    _png(tmp_path / "VG_100K" / "2.jpg")
    _png(tmp_path / "VG_100K_2" / "3.jpg")
    regions = [
        {"region_id": 501, "phrase": "a dog ", "x": 1, "y": 2, "width": 10, "height": 8},
        {"region_id": 502, "phrase": "", "x": 1, "y": 2, "width": 10, "height": 8},
        {"region_id": 503, "phrase": "half out", "x": 50, "y": 30, "width": 30, "height": 30},
        {"region_id": 504, "phrase": "no height", "x": 1, "y": 2, "width": 10},
        {"region_id": 505, "phrase": "all out", "x": 100, "y": 100, "width": 5, "height": 5},
        {"phrase": "no region id", "x": 0, "y": 0, "width": 4, "height": 4},
    ]
    data = [
        {"id": 1, "regions": regions},
        {"image_id": 2, "regions": [{"region_id": 601, "phrase": "grass", "x": 0, "y": 0, "width": 9, "height": 9}]},
        {"id": 3, "regions": []},
        {"id": 4, "regions": [{"region_id": 701, "phrase": "lost", "x": 0, "y": 0, "width": 9, "height": 9}]},
    ]
    dataset = build_dataset("vg", _captions_json(tmp_path, data, "region_descriptions.json"))
    assert dict(dataset.skipped) == {
        "empty_caption": 1,
        "malformed_box": 1,
        "image_without_boxes": 1,
        "image_file_not_found": 1,
    }
    assert dataset.vocabulary == [] and dataset.ground_truth is None
    assert [r.image_id for r in dataset.records] == [1, 2]
    assert dataset.records[1].source == str(tmp_path / "VG_100K" / "2.jpg")
    assert dataset.records[0].region_keys == ["501", "503", "505", "1_region_5"]
    sample = dataset[0]  # sizes are known once decoded: "half out" is clipped there, "all out" dropped
    np.testing.assert_allclose(sample["boxes"].numpy(), [[1, 2, 11, 10], [50, 30, 60, 40], [0, 0, 4, 4]])
    assert sample["captions"] == ["a dog", "half out", "no region id"]
    assert sample["region_keys"] == ["501", "503", "1_region_5"] and sample["labels"].tolist() == [-1, -1, -1]


def test_bad_caption_files_raise_clear_errors(tmp_path):
    (tmp_path / "bad.json").write_text("[{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        build_dataset("x", DatasetConfig(ann_file=str(tmp_path / "bad.json"), image_dir=str(tmp_path), captions=True))
    with pytest.raises(ValueError, match=r"neither\.json: expected COCO-style JSON .* or Visual Genome"):
        build_dataset("x", _captions_json(tmp_path, {"regions": []}, "neither.json"))
    with pytest.raises(ValueError, match=r"vg\.json: entry 0 is not a Visual Genome image"):
        build_dataset("x", _captions_json(tmp_path, [{"regions": []}], "vg.json"))
    with pytest.raises(ValueError, match="captions must be true or false"):
        DatasetConfig(ann_file="a.json", image_dir=".", captions="false")


def test_detection_file_read_for_captions_has_no_usable_box(tmp_path):
    _png(tmp_path / "a.png")
    data = {
        "images": [{"id": 1, "file_name": "a.png"}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [1, 1, 5, 5]}],
        "categories": [{"id": 1, "name": "thing"}],
    }
    with pytest.raises(ValueError, match=r"no image with a usable box.*'empty_caption': 1"):
        build_dataset("det", _captions_json(tmp_path, data))
    detection = build_dataset("det", DatasetConfig(ann_file=str(tmp_path / "captions.json"), image_dir=str(tmp_path)))
    assert "captions" not in detection[0] and "region_keys" not in detection[0]
    with pytest.raises(ValueError, match="has no captions"):
        caption_references(detection)


def test_hugging_face_captions(tmp_path):
    datasets = pytest.importorskip("datasets")
    features = datasets.Features(
        {
            "image": datasets.Image(),
            "image_id": datasets.Value("int64"),
            "objects": [{"bbox": [datasets.Value("float32")], "caption": datasets.Value("string")}],
        }
    )
    image = Image.fromarray(np.zeros((20, 30, 3), np.uint8))
    rows = [
        {"image": image, "image_id": 8, "objects": [{"bbox": [2, 3, 10, 5], "caption": "a"}, {"bbox": [1, 1, 2, 2]}]},
        {"image": image, "image_id": 9, "objects": [{"bbox": [0, 0, 0, 4], "caption": "flat"}]},
        {"image": image, "image_id": 5, "objects": [{"bbox": [1, 1, 4, 4], "caption": "b"}, {"caption": "c"}]},
    ]
    datasets.Dataset.from_list(rows, features=features).save_to_disk(str(tmp_path / "hf"))
    dataset = build_dataset("hf", DatasetConfig(hf_path=str(tmp_path / "hf"), captions=True))
    assert dataset.vocabulary == [] and [r.image_id for r in dataset.records] == [8, 5]
    assert dict(dataset.skipped) == {
        "empty_caption": 1,
        "zero_area_box": 1,
        "malformed_box": 1,
        "image_without_boxes": 1,
    }
    sample = dataset[0]
    np.testing.assert_allclose(sample["boxes"].numpy(), [[2, 3, 12, 8]])
    assert sample["captions"] == ["a"] and sample["region_keys"] == ["8_region_0"] and sample["labels"].tolist() == [-1]
    assert dataset.records[1].region_keys == ["5_region_0"]
    with pytest.raises(ValueError, match="must be a ClassLabel"):  # without captions, classes are what it reads
        load_hf_detection("hf", datasets.load_from_disk(str(tmp_path / "hf")))


def _coloured_set(tmp_path, **kwargs):
    """A 60x90 image with three coloured boxes, captioned by colour and side, class = colour."""
    image = np.full((60, 90, 3), 128, np.uint8)
    boxes = {"red": [50, 10, 80, 30], "blue": [5, 35, 40, 55], "green": [42, 36, 58, 58]}
    for colour, (x1, y1, x2, y2) in boxes.items():
        image[y1:y2, x1:x2] = COLOURS[colour]
    Image.fromarray(image).save(tmp_path / "c.png")
    captions = {"red": "a red box at the top right", "blue": "a blue box on the Left", "green": "a bright green box"}
    data = {
        "images": [{"id": 1, "file_name": "c.png"}],
        "annotations": [
            {"id": 100 + i, "image_id": 1, "category_id": i, "caption": captions[c], "bbox": [x1, y1, x2 - x1, y2 - y1]}
            for i, (c, (x1, y1, x2, y2)) in enumerate(boxes.items())
        ],
        "categories": [{"id": i, "name": c} for i, c in enumerate(COLOURS)],
    }
    (tmp_path / "c.json").write_text(json.dumps(data))
    config = DatasetConfig(ann_file=str(tmp_path / "c.json"), image_dir=str(tmp_path), captions=True)
    return build_dataset("colours", config, **kwargs)


def _colour_named(caption: str) -> str:
    return next(colour for colour in COLOURS if colour in caption.split())


def test_captions_follow_boxes_through_crop_and_max_regions(tmp_path):
    augment = AugmentConfig(flip_prob=0.0, short_edges=[48, 72], max_size=200, crop_prob=1.0, min_box_size=6)
    dataset = _coloured_set(tmp_path, augment_config=augment, max_regions=2)
    original = dict(zip(dataset.records[0].region_keys, dataset.records[0].captions, strict=True))
    counts = set()
    for seed in range(12):
        sample = dataset[(0, seed)]
        image, boxes = sample["image"], sample["boxes"].numpy()
        counts.add(len(boxes))
        regions = zip(boxes, sample["captions"], sample["region_keys"], sample["labels"], strict=True)
        for box, caption, key, label in regions:
            colour = _colour_named(caption)
            assert original[key] == caption and list(COLOURS)[int(label)] == colour
            x1, y1, x2, y2 = np.round(box).astype(int)
            inside = image[y1 + 1 : y2 - 1, x1 + 1 : x2 - 1].reshape(-1, 3).mean(axis=0)
            np.testing.assert_allclose(inside, COLOURS[colour], atol=25)
    assert counts == {1, 2}  # subsets of max_regions boxes, and crops that drop some


def test_flip_mirrors_left_and_right_in_captions(tmp_path):
    dataset = _coloured_set(tmp_path, augment_config=AugmentConfig(flip_prob=1.0, short_edges=[], crop_prob=0.0))
    sample = dataset[0]
    assert sample["captions"] == ["a red box at the top left", "a blue box on the Right", "a bright green box"]
    assert sample["region_keys"] == ["100", "101", "102"]
    np.testing.assert_allclose(sample["boxes"].numpy()[:2], [[10, 10, 40, 30], [50, 35, 85, 55]])
    assert dataset.records[0].captions[0] == "a red box at the top right"  # the record itself is untouched
    assert (
        mirror_left_right("LEFT, right-hand; leftover, bright, Rightmost")
        == "RIGHT, left-hand; leftover, bright, Rightmost"
    )


def test_collate_carries_captions_and_references_pool_shared_keys(tmp_path):
    _png(tmp_path / "a.png")
    _png(tmp_path / "b.png")
    data = {
        "images": [{"id": 1, "file_name": "a.png"}, {"id": 2, "file_name": "b.png"}],
        "annotations": [
            {"id": 7, "image_id": 1, "bbox": [1, 1, 5, 5], "caption": "a mug"},
            {"id": 7, "image_id": 1, "bbox": [1, 1, 5, 5], "caption": "a cup"},
            {"id": 8, "image_id": 2, "bbox": [2, 2, 5, 5], "caption": "a plate"},
        ],
    }
    dataset = build_dataset("refs", _captions_json(tmp_path, data))
    assert caption_references(dataset) == {"7": ["a mug", "a cup"], "8": ["a plate"]}
    batch = collate_detections([dataset[0], {"skipped": "unreadable_image", "dataset": "refs"}, dataset[1]])
    assert batch["captions"] == [["a mug", "a cup"], ["a plate"]]
    assert batch["region_keys"] == [["7", "7"], ["8"]] and batch["skipped"] == {"unreadable_image": 1}
