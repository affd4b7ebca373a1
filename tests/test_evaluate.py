"""evaluate.py end to end on a tiny LVIS-format set: three region sources, official scores, resume, ranks, bad input."""

from __future__ import annotations

import contextlib
import copy
import json
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from lvis import LVIS, LVISEval, LVISResults
from lvis_tiny import write_tiny_lvis
from safetensors.torch import save_file

from regionspot import RegionSpotPredictor, build_regionspot
from regionspot.evaluation import runner
from regionspot.evaluation.cli import run as main
from regionspot.evaluation.detections import region_detections
from regionspot.evaluation.lvis_eval import LVIS_METRICS
from regionspot.evaluation.runner import EvalSettings, evaluate
from regionspot.vocabulary import clean_class_name, vocabulary_from_categories

TINY = "tiny"
SAM_SETTINGS = {"sam_points_per_side": 2, "sam_pred_iou_thresh": 0.0, "sam_stability_score_thresh": 0.0}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_tiny_lvis(tmp_path_factory.mktemp("lvis"))


def _settings(data, out, **kwargs) -> EvalSettings:
    return EvalSettings(
        config=TINY, ann=str(data["ann"]), images=str(data["images"]), out=str(out), progress=False, **kwargs
    )


@pytest.fixture(scope="module")
def gt_run(data, tmp_path_factory):
    """One uninterrupted single-process run with GT boxes: the reference for resume and multi-process runs."""
    out = tmp_path_factory.mktemp("gt_run")
    metrics = evaluate(_settings(data, out))
    return out, metrics


def _detections(out: Path) -> list[dict]:
    return json.loads((out / runner.DETECTIONS_FILE).read_text())


def _assert_same_detections(actual: list[dict], expected: list[dict]) -> None:
    assert len(actual) == len(expected)
    for a, e in zip(actual, expected, strict=True):
        assert {k: v for k, v in a.items() if k != "score"} == {k: v for k, v in e.items() if k != "score"}
        assert a["score"] == pytest.approx(e["score"], rel=1e-4, abs=1e-6)


def _official(gt_path: Path, detections_path: Path, iou_type: str = "bbox", max_dets: int = 300) -> dict:
    evaluator = LVISEval(LVIS(str(gt_path)), LVISResults(str(gt_path), str(detections_path), max_dets), iou_type)
    evaluator.run()
    return {k: float(evaluator.results[k]) for k in LVIS_METRICS}


def test_vocabulary_names_are_cleaned_for_text():
    assert clean_class_name("aerosol_can") == "aerosol can"
    assert clean_class_name("bow_(weapon)") == "bow"
    assert clean_class_name("bow_(weapon)", keep_disambiguator=True) == "bow (weapon)"
    with pytest.raises(ValueError, match="non-empty strings"):
        clean_class_name(3)
    with pytest.raises(ValueError, match="duplicate category ids"):
        vocabulary_from_categories([{"id": 1, "name": "a"}, {"id": 1, "name": "b"}])
    with pytest.raises(ValueError, match=r"categories\[0\] needs"):
        vocabulary_from_categories([{"name": "a"}])


def test_gt_boxes_through_the_cli_score_as_the_official_api(data, tmp_path, tiny_model):
    adapter = tmp_path / "adapter.safetensors"
    save_file({k: v.contiguous() for k, v in tiny_model.adapter.state_dict().items()}, str(adapter))
    out = tmp_path / "out"
    metrics = main(
        [
            "--config",
            TINY,
            "--adapter",
            str(adapter),
            "--ann",
            str(data["ann"]),
            "--images",
            str(data["images"]),
            "--out",
            str(out),
            "--no-progress",
        ]
    )
    written = json.loads((out / runner.METRICS_FILE).read_text())
    assert written == metrics and set(LVIS_METRICS) <= set(written) and set(LVIS_METRICS) <= set(written["segm"])
    assert written["images"] == {"total": 4, "evaluated": 4, "skipped": 0, "regions_dropped": 0, "gt_boxes_dropped": {}}
    gt = json.loads(data["ann"].read_text())
    detections = _detections(out)
    # Every GT box is classified over the whole vocabulary (4 classes <= top_k), each class once.
    assert len(detections) == 4 * len(gt["annotations"])
    boxes = {(a["image_id"], tuple(map(float, a["bbox"]))) for a in gt["annotations"]}
    assert {(d["image_id"], tuple(d["bbox"])) for d in detections} == boxes
    official = _official(data["ann"], out / runner.DETECTIONS_FILE)
    assert {k: written[k] for k in LVIS_METRICS} == pytest.approx(official)
    assert written["AP"] > 0
    masks_only = tmp_path / "segm.json"  # the official API reads mask areas only without boxes
    masks_only.write_text(json.dumps([{k: v for k, v in d.items() if k != "bbox"} for d in detections]))
    assert {k: written["segm"][k] for k in LVIS_METRICS} == pytest.approx(_official(data["ann"], masks_only, "segm"))


def test_proposals_score_is_detector_score_times_class_probability(data, tmp_path):
    proposals = [
        {"image_id": 10, "bbox": [2, 3, 20, 15], "score": 0.9, "category_id": 1},
        {"image_id": 10, "bbox": [30, 10, 25, 30], "score": 0.4, "category_id": 1},
        {"image_id": 10, "bbox": [100, 100, 5, 5], "score": 0.8, "category_id": 1},  # outside the image: dropped
        {"image_id": 24, "bbox": [0, 0, 64, 48], "score": 0.5},
    ]
    path = tmp_path / "proposals.json"
    path.write_text(json.dumps(proposals))
    metrics = evaluate(_settings(data, tmp_path / "out", proposals=str(path), top_k=2, masks=False))
    assert metrics["images"]["regions_dropped"] == 1 and "segm" not in metrics
    detections = _detections(tmp_path / "out")
    assert {d["image_id"] for d in detections} == {10, 24} and len(detections) == 3 * 2
    gt = json.loads(data["ann"].read_text())
    categories = sorted(gt["categories"], key=lambda cat: cat["id"])
    vocabulary, category_ids = vocabulary_from_categories(categories), [cat["id"] for cat in categories]
    assert "blue box" in vocabulary
    torch.manual_seed(0)  # the runner's seed: the same random tiny backbones
    predictor = RegionSpotPredictor(build_regionspot(TINY))
    from PIL import Image

    predictor.set_image(Image.open(data["images"] / "000000000010.png"))
    boxes = [[2, 3, 22, 18], [30, 10, 55, 40]]
    probs = predictor.predict(boxes=boxes, vocabulary=vocabulary, return_all_scores=True).all_scores
    for det in (d for d in detections if d["image_id"] == 10):
        region = 0 if det["bbox"][0] == 2 else 1
        expected = [0.9, 0.4][region] * probs[region, category_ids.index(det["category_id"])]
        assert det["score"] == pytest.approx(float(expected), rel=1e-4)


def test_sam_everything_end_to_end(data, tmp_path):
    metrics = evaluate(_settings(data, tmp_path, source="sam", max_images=2, **SAM_SETTINGS))
    assert set(LVIS_METRICS) <= set(metrics) and set(LVIS_METRICS) <= set(metrics["segm"])
    detections = _detections(tmp_path)
    assert len({d["image_id"] for d in detections}) == 2
    from pycocotools import mask as mask_utils

    for det in detections[:20]:
        assert 0 <= det["score"] <= 1
        x, y, w, h = mask_utils.toBbox(det["segmentation"])  # the box is the box of SAM's mask
        assert det["bbox"] == pytest.approx([x, y, w, h])


def test_resume_recomputes_nothing_and_equals_an_uninterrupted_run(data, tmp_path, gt_run, monkeypatch):
    reference_out, reference = gt_run
    evaluate(_settings(data, tmp_path, max_images=2))
    part = runner.part_file(tmp_path, 0)
    with part.open("a") as file:  # a run killed while writing its third image
        file.write('{"image_id": 24, "detections": [{"image_id"')
    computed: list[int] = []
    original = runner._ImageRecogniser.__call__

    def counting(self, job):
        computed.append(job.image_id)
        return original(self, job)

    monkeypatch.setattr(runner._ImageRecogniser, "__call__", counting)
    metrics = evaluate(_settings(data, tmp_path))
    assert computed == [24, 31]  # images 10 and 17 were done by the first run
    _assert_same_detections(_detections(tmp_path), _detections(reference_out))
    assert {k: metrics[k] for k in LVIS_METRICS} == pytest.approx({k: reference[k] for k in LVIS_METRICS})
    computed.clear()
    evaluate(_settings(data, tmp_path))
    assert computed == []
    with pytest.raises(ValueError, match=r"settings\.top_k 300 -> 3"):
        evaluate(_settings(data, tmp_path, top_k=3))


class _ThreadRank:
    """What `recognise_shard` asks of Fabric, for one rank run as a thread (the fast stand-in for a process)."""

    device = torch.device("cpu")

    def __init__(self, rank: int, barrier: threading.Barrier) -> None:
        self.global_rank, self.world_size, self._barrier = rank, barrier.parties, barrier

    def barrier(self) -> None:
        self._barrier.wait(timeout=60)

    def autocast(self):
        return contextlib.nullcontext()


def test_two_ranks_shard_and_merge_to_the_detections_of_one(data, tmp_path, gt_run, monkeypatch):
    reference_out, reference = gt_run
    torch.manual_seed(0)  # the runner's seed: the model each rank would build
    model = build_regionspot(TINY)
    monkeypatch.setattr(runner, "build_regionspot", lambda config: copy.deepcopy(model))
    settings = _settings(data, tmp_path)
    gt, plan = runner.plan_run(settings)
    barrier = threading.Barrier(2)
    ranks = [
        threading.Thread(target=runner.recognise_shard, args=(_ThreadRank(r, barrier), settings, plan))
        for r in range(2)
    ]
    for rank in ranks:
        rank.start()
    for rank in ranks:
        rank.join()
    assert [len(runner.part_file(tmp_path, r).read_text().splitlines()) for r in range(2)] == [2, 2]
    metrics = runner.merge_and_score(settings, plan, gt)
    _assert_same_detections(_detections(tmp_path), _detections(reference_out))
    assert metrics["AP"] == pytest.approx(reference["AP"])


@pytest.mark.slow
def test_two_processes_give_the_detections_of_one(data, tmp_path, gt_run):
    """Fabric's ddp_spawn on CPU (gloo): about 15 s, mostly two fresh interpreters importing torch."""
    reference_out, reference = gt_run
    metrics = evaluate(_settings(data, tmp_path, accelerator="cpu", devices=2, strategy="ddp_spawn"))
    assert runner.part_file(tmp_path, 0).is_file() and runner.part_file(tmp_path, 1).is_file()
    _assert_same_detections(_detections(tmp_path), _detections(reference_out))
    assert metrics["AP"] == pytest.approx(reference["AP"])


def test_score_command_equals_official_api(data, tmp_path):
    rng = np.random.default_rng(1)
    gt = json.loads(data["ann"].read_text())
    detections = [
        {
            "image_id": int(rng.choice([img["id"] for img in gt["images"]])),
            "category_id": int(rng.choice([c["id"] for c in gt["categories"]])),
            "bbox": [*rng.uniform(0, 40, 2).tolist(), *rng.uniform(5, 20, 2).tolist()],
            "score": float(rng.random()),
        }
        for _ in range(1000)
    ]
    for ann in gt["annotations"][:6]:
        detections.append(
            {
                "image_id": ann["image_id"],
                "category_id": ann["category_id"],
                "bbox": ann["bbox"],
                "score": float(rng.random()),
            }
        )
    dt_path, out = tmp_path / "dt.json", tmp_path / "metrics.json"
    dt_path.write_text(json.dumps(detections))
    main(["score", "--gt", str(data["ann"]), "--detections", str(dt_path), "--out", str(out)])
    official = _official(data["ann"], dt_path)  # > 300 detections on some images: the cap matters
    assert json.loads(out.read_text()) == pytest.approx(official)
    assert official["AP"] > 0
    fixed = main(["score", "--gt", str(data["ann"]), "--detections", str(dt_path), "--out", str(out), "--fixed-ap"])
    assert fixed == pytest.approx(_official(data["ann"], dt_path, max_dets=-1))


def test_per_image_cap_keeps_what_the_official_loader_keeps():
    probs = torch.rand(40, 30).round(decimals=2)  # many ties
    kwargs = {
        "image_id": 1,
        "boxes": torch.rand(40, 4) * 10 + torch.tensor([0, 0, 10, 10]),
        "class_probs": probs,
        "category_ids": list(range(30)),
        "top_k": 20,
    }
    full = region_detections(**kwargs)
    capped = region_detections(**kwargs, max_per_image=300)
    assert capped == sorted(full, key=lambda d: d["score"], reverse=True)[:300]


def test_missing_and_corrupt_images_are_skipped_counted_and_retried(data, tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    for png in data["images"].iterdir():
        (images / png.name).write_bytes(png.read_bytes())
    (images / "000000000017.png").unlink()
    (images / "000000000024.png").write_bytes(b"not a png")
    settings = EvalSettings(
        config=TINY, ann=str(data["ann"]), images=str(images), out=str(tmp_path / "out"), progress=False
    )
    metrics = evaluate(settings)
    assert metrics["images"]["evaluated"] == 2 and metrics["images"]["skipped"] == 2
    skipped = json.loads((tmp_path / "out" / runner.SKIPPED_FILE).read_text())
    assert [s["image_id"] for s in skipped] == [17, 24]
    assert "file not found" in skipped[0]["reason"] and "cannot read" in skipped[1]["reason"]
    (images / "000000000024.png").write_bytes((data["images"] / "000000000024.png").read_bytes())
    metrics = evaluate(settings)
    assert metrics["images"]["evaluated"] == 3 and metrics["images"]["skipped"] == 1


def _run_cli(*args: str) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main(list(args))
    return str(exit_info.value)


def test_bad_inputs_give_clear_messages(data, tmp_path):
    common = ["--config", TINY, "--images", str(data["images"]), "--out", str(tmp_path / "out")]
    broken = tmp_path / "broken.json"
    broken.write_text('{"images": [')
    assert f"annotation file {broken} is not valid JSON" in _run_cli(*common, "--ann", str(broken))
    gt = json.loads(data["ann"].read_text())
    no_name = copy.deepcopy(gt)
    del no_name["images"][1]["coco_url"]
    broken.write_text(json.dumps(no_name))
    assert "image 17 has neither 'file_name' nor 'coco_url'" in _run_cli(*common, "--ann", str(broken))
    proposals = tmp_path / "proposals.json"
    proposals.write_text(json.dumps([{"image_id": 999, "bbox": [0, 0, 5, 5], "score": 0.5}]))
    message = _run_cli(*common, "--ann", str(data["ann"]), "--proposals", str(proposals))
    assert f"proposals file {proposals} names 1 image ids that are not in {data['ann']}: [999]" in message
    message = _run_cli("--config", TINY, "--ann", str(data["ann"]), "--images", str(tmp_path), "--out", "x")
    assert f"none of the 4 images of {data['ann']} is in {tmp_path}" in message
    message = _run_cli(*common, "--ann", str(data["ann"]), "--adapter", str(tmp_path / "none.safetensors"))
    assert "adapter weights not found" in message
    assert "--proposals exactly when" in _run_cli(*common, "--ann", str(data["ann"]), "--source", "proposals")
    message = _run_cli("score", "--gt", str(data["ann"]), "--detections", str(broken), "--out", str(tmp_path / "m"))
    assert "must hold a JSON list" in message


def test_image_files_by_file_name_or_coco_url(tmp_path):
    from regionspot.evaluation.sources import image_jobs

    gt = {
        "images": [
            {"id": 2, "file_name": "a/x.jpg"},
            {"id": 1, "coco_url": "http://images.cocodataset.org/train2017/000000000001.jpg"},
        ],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [1, 2, 3, 4]}],
        "categories": [{"id": 1, "name": "a"}],
    }
    first, second = image_jobs(gt, source="gt")
    assert (first.image_id, first.boxes, second.boxes) == (1, [[1.0, 2.0, 4.0, 6.0]], [])
    assert first.candidate_paths(tmp_path) == [tmp_path / "000000000001.jpg", tmp_path / "train2017/000000000001.jpg"]
    assert second.candidate_paths(tmp_path) == [tmp_path / "a/x.jpg"]
