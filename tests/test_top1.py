"""Top-1 accuracy of ground-truth-box classification from a detections file."""

from __future__ import annotations

import pytest

from regionspot.evaluation.top1 import top1_accuracy

GT = {
    "categories": [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}, {"id": 3, "name": "sofa"}],
    "annotations": [
        {"id": 1, "image_id": 7, "category_id": 1, "bbox": [0.0, 0.0, 10.0, 10.0]},
        {"id": 2, "image_id": 7, "category_id": 2, "bbox": [20.0, 0.0, 10.0, 10.0]},
        {"id": 3, "image_id": 8, "category_id": 2, "bbox": [0.0, 0.0, 10.0, 10.0]},
        {"id": 4, "image_id": 8, "category_id": 3, "bbox": [5.0, 5.0, 30.0, 30.0]},
    ],
}
DETECTIONS = [
    # box 1 (cat): cat wins -> right. The box comes back through xyxy -> xywh with float noise.
    {"image_id": 7, "category_id": 1, "bbox": [0.0, 0.0, 10.000000001, 10.0], "score": 0.6},
    {"image_id": 7, "category_id": 2, "bbox": [0.0, 0.0, 10.0, 10.0], "score": 0.3},
    # box 2 (dog): sofa wins -> wrong.
    {"image_id": 7, "category_id": 3, "bbox": [20.0, 0.0, 10.0, 10.0], "score": 0.5},
    {"image_id": 7, "category_id": 2, "bbox": [20.0, 0.0, 10.0, 10.0], "score": 0.4},
    # box 3 (dog, image 8): dog wins -> right; the same box in image 7 is another region.
    {"image_id": 8, "category_id": 2, "bbox": [0.0, 0.0, 10.0, 10.0], "score": 0.9},
    # box 4 (sofa) has no detection at all -> wrong.
]


def test_top1_accuracy_counts_the_boxes_whose_best_detection_names_their_class() -> None:
    assert top1_accuracy(GT, DETECTIONS) == pytest.approx(2 / 4)


def test_top1_accuracy_on_a_subset_counts_only_that_subsets_boxes() -> None:
    # Boxes 2 and 3; box 2's top name is still chosen among every class (sofa), not among the subset's.
    assert top1_accuracy(GT, DETECTIONS, category_ids=[2]) == pytest.approx(1 / 2)
    assert top1_accuracy(GT, DETECTIONS, category_ids={1, 3}) == pytest.approx(1 / 2)  # boxes 1 and 4


def test_top1_accuracy_without_boxes_to_score_raises() -> None:
    with pytest.raises(ValueError, match="no ground-truth box"):
        top1_accuracy(GT, DETECTIONS, category_ids=[99])
