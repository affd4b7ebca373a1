"""LVIS scoring: the federated protocol worked by hand, the 300 cap, Fixed AP, COCO data, bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest
from lvis import LVIS, LVISEval, LVISResults

from regionspot.data.coco import load_annotations, subset_images
from regionspot.evaluation import format_metrics, score_detections
from regionspot.evaluation.metric import DetectionAP


def _gt():
    """Image 1: cat 1 present, cat 2 verified absent, cat 3 not exhaustive. Image 2: cats 2, 3, 4 present."""
    boxes = {1: [10, 10, 40, 40], 2: [50, 50, 30, 20], 3: [5, 60, 20, 20], 4: [70, 5, 25, 35]}
    anns = [
        {"id": 1, "image_id": 1, "category_id": 1, "bbox": boxes[1], "area": 1600},
        {"id": 2, "image_id": 2, "category_id": 2, "bbox": boxes[2], "area": 600},
        {"id": 3, "image_id": 2, "category_id": 3, "bbox": boxes[3], "area": 400},
        {"id": 4, "image_id": 2, "category_id": 4, "bbox": boxes[4], "area": 875},
    ]
    images = [
        {"id": 1, "width": 100, "height": 100, "neg_category_ids": [2], "not_exhaustive_category_ids": [3]},
        {"id": 2, "width": 100, "height": 100, "neg_category_ids": [1], "not_exhaustive_category_ids": []},
    ]
    cats = [{"id": i, "name": f"c{i}", "frequency": f} for i, f in ((1, "r"), (2, "c"), (3, "f"), (4, "f"))]
    return {"images": images, "annotations": anns, "categories": cats}, boxes


def _det(image_id, category_id, bbox, score):
    return {"image_id": image_id, "category_id": category_id, "bbox": bbox, "score": score}


def test_federated_protocol_by_hand():
    gt, boxes = _gt()
    detections = [
        _det(1, 1, boxes[1], 0.9),  # true positive
        _det(1, 2, [0, 0, 30, 30], 0.95),  # cat 2 is verified absent on image 1: a false positive
        _det(2, 2, boxes[2], 0.8),  # true positive, ranked below that false positive: AP(cat 2) = 0.5
        _det(1, 3, [60, 60, 20, 20], 0.99),  # cat 3 not exhaustive on image 1: unmatched, so ignored
        _det(2, 3, boxes[3], 0.7),
        _det(1, 4, [0, 0, 50, 50], 0.99),  # cat 4 neither present nor negative on image 1: ignored
        _det(2, 4, boxes[4], 0.6),
    ]
    metrics = score_detections(gt, detections)
    assert metrics["AP"] == pytest.approx((1 + 0.5 + 1 + 1) / 4)
    assert metrics["AP50"] == metrics["AP75"] == pytest.approx(0.875)
    assert (metrics["APr"], metrics["APc"], metrics["APf"]) == pytest.approx((1.0, 0.5, 1.0))
    assert metrics["APs"] == pytest.approx(5 / 6)  # cats 2-4 are small (< 32^2); cat 1 is medium
    assert metrics["APl"] == -1  # no large objects: the official "undefined"


def test_equals_official_api_on_files(tmp_path):
    """A random case: our numbers are the official API's, run from files as its own docs show."""
    rng = np.random.default_rng(0)
    gt, _ = _gt()
    gt["images"] += [
        {"id": i, "width": 200, "height": 200, "neg_category_ids": [1, 2], "not_exhaustive_category_ids": [3]}
        for i in range(3, 9)
    ]
    gt["annotations"] += [
        {
            "id": 10 + i,
            "image_id": 3 + i % 6,
            "category_id": 3 + i % 2,
            "bbox": [*rng.uniform(0, 100, 2).tolist(), 40, 50],
            "area": 2000,
        }
        for i in range(20)
    ]
    detections = [
        _det(
            int(rng.integers(1, 9)),
            int(rng.integers(1, 5)),
            [*rng.uniform(0, 120, 2).tolist(), 45, 45],
            float(rng.random()),
        )
        for _ in range(400)
    ]
    gt_path, dt_path = tmp_path / "gt.json", tmp_path / "dt.json"
    gt_path.write_text(json.dumps(gt))
    dt_path.write_text(json.dumps(detections))
    official = LVISEval(LVIS(str(gt_path)), LVISResults(str(gt_path), str(dt_path)), "bbox")
    official.run()
    ours = score_detections(gt_path, detections)
    assert ours == {k: pytest.approx(float(official.results[k])) for k in ours}
    assert ours["AP"] > 0


def test_three_hundred_per_image_cap_and_fixed_ap():
    """301 detections on image 2: the official loader keeps its 300 best, dropping the one true positive."""
    gt, boxes = _gt()
    flood = [_det(2, 1, [0, 0, 10 + i % 50, 10], 0.9) for i in range(300)]  # cat 1 is negative on image 2
    detections = [*flood, _det(2, 2, boxes[2], 0.5)]
    assert score_detections(gt, detections)["APc"] == pytest.approx(0.0)
    assert score_detections(gt, detections, fixed_ap=True)["APc"] == pytest.approx(1.0)


def test_coco_ground_truth_uses_coco_protocol():
    gt = {
        "images": [{"id": 1, "width": 100, "height": 100}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 7, "bbox": [10, 10, 30, 30]}],
        "categories": [{"id": 7, "name": "thing"}, {"id": 8, "name": "other"}],
    }
    metrics = score_detections(gt, [_det(1, 7, [10, 10, 30, 30], 0.9), _det(1, 8, [50, 50, 10, 10], 0.99)])
    assert set(metrics) == {"AP", "AP50", "AP75", "APs", "APm", "APl"}
    assert metrics["AP"] == pytest.approx(1.0)


@pytest.mark.parametrize(
    ("detections", "message"),
    [
        ([_det(99, 1, [0, 0, 5, 5], 0.5)], r"image ids are not in the ground truth: \[99\]"),
        ([_det(1, 42, [0, 0, 5, 5], 0.5)], r"category ids not in the ground truth: \[42\]"),
        ([{"image_id": 1, "category_id": 1, "bbox": [0, 0, 5, 5]}], r"lacks \['score'\]"),
    ],
)
def test_bad_detections(detections, message):
    with pytest.raises(ValueError, match=message):
        score_detections(_gt()[0], detections)


def test_bad_annotation_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="annotation file not found"):
        load_annotations(tmp_path / "none.json")
    broken = tmp_path / "broken.json"
    broken.write_text('{"images": [')
    with pytest.raises(ValueError, match="not valid JSON"):
        load_annotations(broken)
    broken.write_text('{"images": [], "annotations": []}')
    with pytest.raises(ValueError, match=r"missing or non-list key\(s\) \['categories'\]"):
        load_annotations(broken)
    broken.write_text('{"images": [{"id": 1}], "annotations": [{"id": 1, "image_id": 1}], "categories": []}')
    with pytest.raises(ValueError, match=r"annotations\[0\] lacks \['category_id', 'bbox'\]"):
        load_annotations(broken)


def test_no_detections_and_table():
    metrics = score_detections(_gt()[0], [])
    assert metrics["AP"] == metrics["APs"] == metrics["APm"] == metrics["APr"] == 0.0  # nothing found of what is there
    assert metrics["APl"] == -1.0  # no large object to find: n/a, as the official API says with detections
    table = format_metrics(metrics)
    assert "APr" in table and "n/a" in table and table.count("n/a") == 1


def test_region_detections_format_and_scores():
    import torch
    from pycocotools import mask as mask_utils

    from regionspot.evaluation.detections import region_detections

    boxes = torch.tensor([[10.0, 20.0, 50.0, 60.0], [0.0, 0.0, 5.0, 8.0]])
    probs = torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]])
    masks = torch.zeros(2, 70, 60, dtype=torch.bool)
    masks[0, 20:60, 10:50] = True
    dets = region_detections(
        image_id=4,
        boxes=boxes,
        class_probs=probs,
        category_ids=[11, 12, 13],
        box_scores=torch.tensor([0.5, 1.0]),
        masks=masks,
        top_k=2,
    )
    assert len(dets) == 4
    assert dets[0] == {**dets[0], "image_id": 4, "category_id": 11, "bbox": [10.0, 20.0, 40.0, 40.0]}
    assert dets[0]["score"] == pytest.approx(0.35) and dets[2]["score"] == pytest.approx(0.8)
    assert mask_utils.area(dets[0]["segmentation"]) == 1600
    with pytest.raises(ValueError, match="class_probs must be"):
        region_detections(image_id=1, boxes=boxes, class_probs=probs[:, :2], category_ids=[1, 2, 3])


def test_detection_metric_scores_what_it_was_given_on_the_images_seen():
    gt, boxes = _gt()
    detections = [_det(1, 1, boxes[1], 0.9), _det(1, 2, [0, 0, 30, 30], 0.95), _det(2, 2, boxes[2], 0.8)]
    metric = DetectionAP(ground_truth=gt)
    no_counts = {"skipped_images": 0.0, "gt_boxes_dropped": 0.0}
    metric.update(detections[:2], [1])
    metric.update([], [], skipped=2)  # a batch of unreadable images
    metric.update(detections[2:], [2])
    assert metric.compute() == {**score_detections(gt, detections), **no_counts, "skipped_images": 2.0}

    metric.reset()
    metric.update(detections[:1], [1])  # a partial validation: image 2's ground truth is not counted
    assert metric.compute() == {**score_detections(subset_images(gt, {1}), detections[:1]), **no_counts}
    metric.reset()
    assert metric.compute() == {**score_detections(subset_images(gt, set()), []), **no_counts}  # a rank saw nothing
