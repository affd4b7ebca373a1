"""The synthetic captions say what was drawn, and the demo's caption scoring reads them back."""

from __future__ import annotations

import numpy as np
import pytest

from regionspot.demo.captioning import attribute_accuracy, baseline_captions
from regionspot.demo.descriptions import DrawnObject, attribute_words, describe_objects, position_phrase


@pytest.mark.parametrize(
    ("box", "phrase"),
    [
        ((0, 0, 10, 10), "at the top left"),
        ((45, 0, 55, 10), "at the top"),
        ((90, 45, 100, 55), "on the right"),
        ((40, 40, 60, 60), "in the middle"),
        ((0, 90, 10, 100), "at the bottom left"),
        ((90, 90, 100, 100), "at the bottom right"),
    ],
)
def test_position_is_the_boxs_centre_in_a_3x3_grid(box, phrase):
    assert position_phrase(box, (100, 100)) == phrase


def _disc(cx: int, cy: int, r: int, size: int = 60) -> np.ndarray:
    ys, xs = np.mgrid[:size, :size]
    return (xs - cx) ** 2 + (ys - cy) ** 2 <= r**2


def test_captions_name_attributes_place_and_what_hides_what():
    back, front, apart = _disc(12, 12, 8), _disc(17, 13, 8), _disc(50, 50, 6)
    objects = [
        DrawnObject(colour="red", texture="striped", shape="circle", full=back, visible=back & ~front),
        DrawnObject(colour="blue", texture="solid", shape="square", full=front, visible=front),
        DrawnObject(colour="green", texture="dotted", shape="triangle", full=apart, visible=apart),
    ]
    assert describe_objects(objects) == [
        "a red striped circle at the top left, partly behind a blue square",
        "a blue solid square at the top left, in front of a red circle",
        "a green dotted triangle at the bottom right",
    ]


def test_a_sliver_of_overlap_is_no_relation():
    a, b = _disc(10, 30, 8), _disc(26, 30, 8)  # touching edges: a pixel or two in common
    objects = [
        DrawnObject(colour="red", texture="solid", shape="circle", full=a, visible=a & ~b),
        DrawnObject(colour="blue", texture="solid", shape="circle", full=b, visible=b),
    ]
    assert all("," not in caption for caption in describe_objects(objects))


def test_attribute_words_read_the_first_clause_only():
    words = attribute_words(
        "a red dotted square on the left, partly behind a blue circle",
        (("red", "blue"), ("dotted",), ("square", "circle")),
    )
    assert words == ["red", "dotted", "square"]
    assert attribute_words("a blue thing", (("red", "blue"), ("dotted",), ("square",))) == ["blue", None, None]


def test_attribute_accuracy_and_baselines():
    gt = {
        "categories": [{"id": 1, "name": "red_solid_circle"}, {"id": 2, "name": "blue striped square"}],
        "annotations": [
            {
                "id": 7,
                "image_id": 1,
                "category_id": 1,
                "bbox": [0, 0, 4, 4],
                "caption": "a red solid circle on the left",
            },
            {"id": 8, "image_id": 1, "category_id": 2, "bbox": [5, 5, 4, 4], "caption": "a blue striped square"},
        ],
    }
    classes = {1: ["red", "solid", "circle"], 2: ["blue", "striped", "square"]}
    accuracy = attribute_accuracy(gt["annotations"], {"7": "a red solid circle", "8": "a blue solid square"}, classes)
    assert accuracy == {"colour": 1.0, "texture": 0.5, "shape": 1.0, "all": 0.5}
    detections = [
        {"image_id": 1, "bbox": [0, 0, 4, 4], "category_id": 2, "score": 0.9},
        {"image_id": 1, "bbox": [0, 0, 4, 4], "category_id": 1, "score": 0.1},
    ]
    baselines = baseline_captions(train_gt=gt, test_gt=gt, detections=detections)
    assert baselines["top-1 name"] == {"7": "a blue striped square", "8": ""}  # no detection: an empty caption
    assert set(baselines["most frequent caption"].values()) <= {a["caption"] for a in gt["annotations"]}
