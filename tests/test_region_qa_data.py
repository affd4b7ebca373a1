"""Region-QA data: its formats, what is skipped and counted, boxes kept whole, the generator's question files."""

from __future__ import annotations

import json
import logging
from collections import Counter

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from regionspot.data import AugmentConfig, DatasetConfig, build_dataset, collate_detections
from regionspot.data.region_qa import load_region_qa, regions_named
from regionspot.demo.synthetic import generate_dataset

COLOURS = [(220, 30, 30), (30, 200, 40), (40, 50, 220), (230, 210, 30), (200, 40, 200)]
BOXES = [[2, 2, 12, 12], [20, 4, 30, 14], [40, 2, 52, 14], [4, 24, 16, 36], [30, 26, 50, 38]]  # one colour each


def _png(path, height=40, width=60, boxes=BOXES):
    """An image whose i-th box is filled with COLOURS[i], so that a box's pixels say which box it is."""
    pixels = np.full((height, width, 3), 128, np.uint8)
    for (x1, y1, x2, y2), colour in zip(boxes, COLOURS, strict=False):
        pixels[y1:y2, x1:x2] = colour
    Image.fromarray(pixels).save(path)
    return path


def _turns(*pairs, first="human", second="gpt"):
    return [turn for q, a in pairs for turn in ({"from": first, "value": q}, {"from": second, "value": a})]


def _record(**overrides):
    return {
        "image": "a.png",
        "boxes": BOXES[:2],
        "conversations": _turns(("is <region1> left of <region2>?", "yes")),
    } | (overrides)


def _write(tmp_path, records, name="qa.json"):
    path = tmp_path / name
    if name.endswith(".jsonl"):
        path.write_text("".join(json.dumps(r) + "\n" for r in records))
    else:
        path.write_text(json.dumps(records))
    return path


def test_our_format_as_json_and_jsonl(tmp_path):
    _png(tmp_path / "a.png")
    records = [
        _record(conversations=_turns(("<image>\nwhat colour is <region2>?", "green"), ("and <region1>?", "red"))),
        _record(
            boxes=BOXES,
            conversations=_turns(
                ("how many of <region1> <region3> <region5> are red?", "1"), first="user", second="assistant"
            ),
            question_types=["count"],
            extra_key="ignored",
        ),
    ]
    for name in ("qa.json", "qa.jsonl"):
        loaded, skipped = load_region_qa(_write(tmp_path, records, name))
        assert not skipped and [r.index for r in loaded] == [0, 1]
        assert loaded[0].conversation == [("what colour is <region2>?", "green"), ("and <region1>?", "red")]
        assert loaded[0].image == str(tmp_path / "a.png") and loaded[0].question_types is None
        np.testing.assert_array_equal(loaded[1].boxes, np.asarray(BOXES, np.float32))
        assert loaded[1].question_types == ["count"] and regions_named(loaded[1].conversation[0][0]) == [1, 3, 5]
    config = DatasetConfig(ann_file=str(tmp_path / "qa.jsonl"), image_dir=str(tmp_path), questions=True)
    dataset = build_dataset("qa", config)
    assert dataset.vocabulary == [] and [r.image_id for r in dataset.records] == [1, 2]
    item = dataset[1]
    assert item["conversation"] == [("how many of <region1> <region3> <region5> are red?", "1")]
    assert item["labels"].tolist() == [-1] * 5 and item["question_types"] == ["count"] and item["image_id"] == 2
    np.testing.assert_array_equal(item["boxes"].numpy(), np.asarray(BOXES, np.float32))


def test_osprey_format_box_from_bbox_or_segmentation(tmp_path):
    _png(tmp_path / "000000000139.jpg")
    rle = mask_utils.encode(np.asfortranarray(np.pad(np.ones((5, 8), np.uint8), ((10, 25), (30, 22)))))
    rle["counts"] = rle["counts"].decode("ascii")
    polygon = [[1.0, 2.0, 11.0, 2.0, 11.0, 9.0, 1.0, 9.0]]
    entry = {
        "file_name": "COCO_train2014_000000000139.jpg",  # Osprey's COCO 2014 name over a COCO 2017 folder
        "height": 40,
        "width": 60,
        "annotation": [
            {"bbox": [2, 3, 10, 5], "segmentation": polygon},
            {"segmentation": polygon},
            {"segmentation": rle},
        ],
        "conversations": _turns(("<image>\nWhat is <region1> next to <region3>?", "A <region2>.")),
    }
    loaded, skipped = load_region_qa(_write(tmp_path, [entry]))
    assert not skipped and loaded[0].image == str(tmp_path / "000000000139.jpg")
    np.testing.assert_allclose(loaded[0].boxes, [[2, 3, 12, 8], [1, 2, 11, 9], [30, 10, 38, 15]])
    assert loaded[0].conversation == [("What is <region1> next to <region3>?", "A <region2>.")]


def test_hugging_face_tables_of_images_or_paths(tmp_path):
    datasets = pytest.importorskip("datasets")
    image = Image.open(_png(tmp_path / "a.png"))
    turns = _turns(("is <region2> left of <region1>?", "no"))
    columns = {"boxes": [BOXES[:2], BOXES[:1]], "conversations": [turns, turns]}  # row 2 names a missing region
    datasets.Dataset.from_dict({"image": [image, image], **columns}).save_to_disk(str(tmp_path / "hf"))
    dataset = build_dataset("hf", DatasetConfig(hf_path=str(tmp_path / "hf"), questions=True))
    assert dict(dataset.skipped) == {"region_out_of_range": 1} and len(dataset) == 1
    item = dataset[0]
    assert item["conversation"] == [("is <region2> left of <region1>?", "no")] and item["image"].shape == (40, 60, 3)
    np.testing.assert_array_equal(item["boxes"].numpy(), np.asarray(BOXES[:2], np.float32))
    paths = {"image": ["a.png", "gone.png"], **columns, "boxes": [BOXES[:2], BOXES[:2]]}
    datasets.Dataset.from_dict(paths).save_to_disk(str(tmp_path / "hf_paths"))
    config = DatasetConfig(hf_path=str(tmp_path / "hf_paths"), image_dir=str(tmp_path), questions=True)
    dataset = build_dataset("hf_paths", config)
    assert dict(dataset.skipped) == {"image_not_found": 1} and dataset[0]["image"][3, 3].tolist() == list(COLOURS[0])


def test_bad_records_are_skipped_and_counted(tmp_path, caplog):
    _png(tmp_path / "a.png")
    bad = {
        "no_turns": _record(conversations=[]),
        "turns_not_alternating": _record(conversations=_turns(("q?", "a"))[::-1]),
        "empty_question": _record(conversations=_turns(("<image>\n", "a"))),
        "empty_answer": _record(conversations=_turns(("what is <region1>?", " "))),
        "region_out_of_range": _record(conversations=_turns(("is <region1> left of <region3>?", "no"))),
        "malformed_box": _record(boxes=[[1, 2, 3]]),
        "zero_area_box": _record(boxes=[[5, 5, 5, 9]]),
        "box_outside_image": _record(boxes=[[70, 0, 80, 10]], width=60, height=40),
        "no_boxes": _record(boxes=[]),
        "image_not_found": _record(image="missing.png"),
        "unknown_record_format": {"picture": "a.png"},
        "malformed_record": ["not", "a", "record"],
    }
    good = _record()
    lines = [json.dumps(r) for r in [good, *bad.values()]] + ["{not json"]
    (tmp_path / "qa.jsonl").write_text("\n".join(lines))
    config = DatasetConfig(ann_file=str(tmp_path / "qa.jsonl"), image_dir=str(tmp_path), questions=True)
    with caplog.at_level(logging.WARNING):
        dataset = build_dataset("qa", config)
    assert dict(dataset.skipped) == dict.fromkeys([*bad, "unparsable_line"], 1) and len(dataset) == 1
    assert "data set qa: 1 images kept; skipped" in caplog.text and "1 region_out_of_range" in caplog.text
    (tmp_path / "zero.json").write_text(json.dumps([_record(conversations=[{"from": "gpt", "value": "hi"}])]))
    with pytest.raises(ValueError, match=r"no image with a usable box.*turns_not_alternating"):
        build_dataset(
            "qa", DatasetConfig(ann_file=str(tmp_path / "zero.json"), image_dir=str(tmp_path), questions=True)
        )


def test_unreadable_files_raise_errors_naming_them(tmp_path):
    (tmp_path / "broken.json").write_text('[{"image": "a.png"')
    (tmp_path / "object.json").write_text('{"image": "a.png"}')
    (tmp_path / "binary.jsonl").write_bytes(b"\x89PNG\r\n\x1a\n\xff\xfe")
    (tmp_path / "words.jsonl").write_text("not json\nnor this\n")
    for name, message in [
        ("broken.json", "broken.json is not valid JSON"),
        ("object.json", "object.json must hold a JSON list"),
        ("binary.jsonl", "binary.jsonl is not text"),
        ("words.jsonl", "words.jsonl is not JSON Lines"),
    ]:
        with pytest.raises(ValueError, match=message):
            load_region_qa(tmp_path / name)
    with pytest.raises(FileNotFoundError, match=r"nothing\.json"):
        load_region_qa(tmp_path / "nothing.json")
    with pytest.raises(ValueError, match="questions must be true or false"):
        DatasetConfig(ann_file="qa.json", image_dir=".", questions="true")
    with pytest.raises(ValueError, match="neither a caption set"):
        DatasetConfig(ann_file="qa.json", image_dir=".", questions=True, captions=True)


def _colour_of(image, box):
    x1, y1, x2, y2 = np.round(np.asarray(box)).astype(int)
    return image[y1 + 1 : y2 - 1, x1 + 1 : x2 - 1].reshape(-1, 3).mean(axis=0)


def test_qa_boxes_stay_whole_and_in_order_through_augment_max_regions_and_collate(tmp_path):
    _png(tmp_path / "a.png")
    question = "how many of <region1> <region2> <region3> <region4> <region5> are red?"
    _write(tmp_path, [_record(boxes=BOXES, conversations=_turns((question, "1")))])
    config = DatasetConfig(ann_file=str(tmp_path / "qa.json"), image_dir=str(tmp_path), questions=True)
    augment = AugmentConfig(flip_prob=0.5, short_edges=[30, 60, 90], max_size=200, crop_prob=1.0)
    dataset = build_dataset("qa", config, augment_config=augment, max_regions=2)
    sizes = set()
    for seed in range(12):
        item = dataset[(0, seed)]
        sizes.add(item["image"].shape)
        assert len(item["boxes"]) == 5 and item["conversation"] == [(question, "1")]
        for box, colour in zip(item["boxes"].numpy(), COLOURS, strict=True):  # box i still covers box i's pixels
            np.testing.assert_allclose(_colour_of(item["image"], box), colour, atol=30)
    assert len(sizes) > 1  # resizing did run
    batch = collate_detections([dataset[(0, 1)], dataset[(0, 2)], {"skipped": "unreadable_image", "dataset": "qa"}])
    assert batch["conversations"] == [[(question, "1")]] * 2 and [len(b) for b in batch["boxes"]] == [5, 5]
    assert batch["skipped"] == {"unreadable_image": 1} and "captions" not in batch


def test_flip_mirrors_left_and_right_in_questions_and_answers(tmp_path):
    _png(tmp_path / "a.png")
    turns = _turns(("is <region1> left of <region2>?", "yes"), ("which side is <region2> on, Left or right?", "left"))
    _write(tmp_path, [_record(conversations=turns)])
    config = DatasetConfig(ann_file=str(tmp_path / "qa.json"), image_dir=str(tmp_path), questions=True)
    flip = AugmentConfig(flip_prob=1.0, short_edges=[], crop_prob=0.0)
    item = build_dataset("qa", config, augment_config=flip)[(0, 0)]
    assert item["conversation"] == [
        ("is <region1> right of <region2>?", "yes"),
        ("which side is <region2> on, Right or left?", "right"),
    ]
    np.testing.assert_allclose(item["boxes"].numpy(), [[48, 2, 58, 12], [30, 4, 40, 14]])
    assert build_dataset("qa", config)[0]["conversation"][0] == ("is <region1> left of <region2>?", "yes")


def test_a_region_off_the_decoded_image_skips_the_sample(tmp_path):
    _png(tmp_path / "a.png")  # 60 x 40; the record says nothing of its size, so this shows only once decoded
    _write(tmp_path, [_record(boxes=[BOXES[0], [70, 0, 80, 10]])])
    config = DatasetConfig(ann_file=str(tmp_path / "qa.json"), image_dir=str(tmp_path), questions=True)
    assert build_dataset("qa", config)[0] == {"skipped": "region_outside_image", "dataset": "qa"}


# 2 x 2 x 2 = 8 classes, none held out: the smallest set whose long tail the generator can deal out.
SMALL = {
    "num_train": 70,
    "num_val": 12,
    "num_test": 12,
    "num_pretrain": 4,
    "image_size": 64,
    "num_heldout": 0,
    "colours": ("red", "blue"),
    "textures": ("solid", "striped"),
    "shapes": ("circle", "square"),
    "objects_per_image": (2, 5),
}


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    return generate_dataset(out_dir=tmp_path_factory.mktemp("synthetic_qa"), seed=5, **SMALL)


def test_generator_questions_leave_other_files_alone_and_match_for_any_workers(generated, tmp_path):
    assert sorted(generated.question_files) == ["test", "train", "val"]
    without = generate_dataset(out_dir=tmp_path / "without", seed=5, questions_per_image=0, **SMALL)
    assert without.question_files == {} and not list((tmp_path / "without").glob("qa_*"))
    for split, path in generated.annotation_files.items():
        assert path.read_bytes() == without.annotation_files[split].read_bytes()
        for image in json.loads(path.read_text())["images"]:
            assert (generated.root / image["file_name"]).read_bytes() == (
                without.root / image["file_name"]
            ).read_bytes()
    again = generate_dataset(out_dir=tmp_path / "again", seed=5, workers=2, **SMALL)
    for split, path in generated.question_files.items():
        assert path.read_bytes() == again.question_files[split].read_bytes()


def _answer(kind, question, objects):
    """The right answer to a generated question, worked out again from the LVIS annotations."""
    named = [objects[k - 1] for k in regions_named(question)]
    if kind in ("colour", "texture", "shape"):
        return named[0]["attributes"][("colour", "texture", "shape").index(kind)]
    if kind == "left":
        first, second = (o["bbox"][0] + o["bbox"][2] / 2 for o in named)
        assert abs(first - second) >= 0.05 * 64  # near ties are not asked
        return "yes" if first < second else "no"
    if kind == "larger":
        assert max(o["area"] for o in named) >= 1.25 * min(o["area"] for o in named)
        return "first" if named[0]["area"] > named[1]["area"] else "second"
    colour = question.rsplit(" ", 1)[1].rstrip("?")
    assert len(named) == len(objects)
    return str(sum(o["attributes"][0] == colour for o in objects))


def test_generated_questions_name_real_regions_and_have_the_right_answers(generated):
    answers = Counter()
    for split, path in generated.question_files.items():
        lvis = json.loads(generated.annotation_files[split].read_text())
        attributes = {c["id"]: c["attributes"] for c in lvis["categories"]}
        objects = {img["file_name"]: [] for img in lvis["images"]}
        file_of = {img["id"]: img["file_name"] for img in lvis["images"]}
        for ann in lvis["annotations"]:
            objects[file_of[ann["image_id"]]].append({**ann, "attributes": attributes[ann["category_id"]]})
        raw = json.loads(path.read_text())
        records, skipped = load_region_qa(path)
        assert not skipped and len(records) == len(raw) == len(lvis["images"])
        for entry, record in zip(raw, records, strict=True):
            anns = objects[entry["image"]]
            expected_boxes = [[x, y, x + w, y + h] for x, y, w, h in (a["bbox"] for a in anns)]
            np.testing.assert_array_equal(record.boxes, np.asarray(expected_boxes, np.float32))
            assert len(record.conversation) == len(entry["question_types"]) == 6
            assert len(set(record.conversation)) == 6  # no question twice
            for (question, answer), kind in zip(record.conversation, entry["question_types"], strict=True):
                assert _answer(kind, question, anns) == answer, (entry["image"], question)
                answers[kind, answer] += 1
    for kind, pair in (("left", ("yes", "no")), ("larger", ("first", "second"))):
        share = answers[kind, pair[0]] / (answers[kind, pair[0]] + answers[kind, pair[1]])
        assert 0.35 < share < 0.65, (kind, share)  # answer-first drawing: a coin flip, not the layout's habit
    assert not json.loads(generated.manifest.read_text())["question_files"].get("pretrain")


def test_a_records_stated_size_is_read_as_width_and_height_on_a_wide_image(tmp_path):
    """Sizes are (H, W) inside the package: a record's "width": 60, "height": 40 keeps a box at x 45-55 (inside the
    width, outside what the height would allow) and clips one that crosses the right and bottom edges; an Osprey
    polygon's extent is decoded on a 40-row, 60-column grid."""
    _png(tmp_path / "a.png")
    ours = _record(boxes=[[45, 0, 55, 10], [50, 30, 70, 50]], width=60, height=40)
    polygon = [[44.0, 2.0, 58.0, 2.0, 58.0, 12.0, 44.0, 12.0]]
    osprey = {
        "file_name": "a.png", "height": 40, "width": 60, "conversations": _turns(("what is <region1>?", "a box")),
        "annotation": [{"segmentation": polygon}],
    }  # fmt: skip
    records, skipped = load_region_qa(_write(tmp_path, [ours, osprey]), image_dir=tmp_path)
    assert not skipped and len(records) == 2
    np.testing.assert_array_equal(records[0].boxes, [[45, 0, 55, 10], [50, 30, 60, 40]])
    np.testing.assert_allclose(records[1].boxes, [[44, 2, 58, 12]], atol=1)
