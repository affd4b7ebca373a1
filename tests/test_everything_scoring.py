"""Scoring "segment everything": objects found at box IoU >= 0.5, one region each, named right, extra regions."""

from __future__ import annotations

import pytest

from regionspot.evaluation.everything import score_everything

GT = {
    "images": [{"id": 1}, {"id": 2}],
    "annotations": [
        {"image_id": 1, "bbox": [0, 0, 10, 10], "category_id": 7},
        {"image_id": 1, "bbox": [20, 20, 10, 10], "category_id": 8},
        {"image_id": 2, "bbox": [0, 0, 20, 20], "category_id": 7},
    ],
}


def test_found_named_and_extra_one_region_per_object():
    regions = [
        {"image_id": 1, "bbox": [0, 0, 10, 9], "category_id": 7},  # IoU 0.9: found, named right
        {"image_id": 1, "bbox": [0, 0, 10, 10], "category_id": 8},  # IoU 1.0 with the same object: it wins, misnamed
        {"image_id": 1, "bbox": [20, 20, 10, 4], "category_id": 8},  # IoU 0.4: not found -> extra
        {"image_id": 2, "bbox": [0, 0, 20, 10], "category_id": 7},  # IoU exactly 0.5: found, named right
        {"image_id": 3, "bbox": [0, 0, 5, 5], "category_id": 7},  # an image the ground truth does not have: ignored
    ]
    scores = score_everything(GT, regions)
    assert scores["found"] == pytest.approx(2 / 3)
    assert scores["named"] == pytest.approx(1 / 2)  # object 1 taken by the misnamed exact box, image 2's named right
    assert scores["extra_per_image"] == pytest.approx((4 - 2) / 2)
    assert (scores["objects"], scores["regions"], scores["images"]) == (3, 4, 2)


def test_nothing_kept_finds_nothing_and_no_objects_is_refused():
    assert score_everything(GT, []) | {"objects": 0} == {
        "found": 0.0, "named": 0.0, "extra_per_image": 0.0, "objects": 0, "regions": 0, "images": 2,
    }  # fmt: skip
    with pytest.raises(ValueError, match="no ground-truth object"):
        score_everything({"images": [{"id": 1}], "annotations": []}, [])
