"""Caption scores: parity with pycocoevalcap's own COCOEvalCap, CIDEr-D's set-wide IDF, bad input, missing java.

Scoring runs Java: the PTB tokenizer (under a second) and METEOR, whose JVM spends ~10 s loading its paraphrase
tables. So the parity set is scored once per module, for real, by the toolkit and by `score_captions`; the tests
that read CIDEr, BLEU and ROUGE-L alone stand a placeholder in for METEOR.
"""

from __future__ import annotations

import contextlib
import io
import json
import subprocess
import sys
from pathlib import Path

import pycocoevalcap.eval
import pytest
from PIL import Image
from pycocoevalcap.eval import COCOEvalCap
from pycocotools.coco import COCO

from regionspot.evaluation import caption_metrics
from regionspot.evaluation.caption_metrics import CAPTION_METRICS, score_captions
from regionspot.evaluation.caption_results import (
    _predictions_by_key,
    reference_captions,
    score_caption_files,
    score_caption_results,
)
from regionspot.evaluation.cli import run as evaluate_main

# Regions keyed as TAP keys Visual Genome; one to three references each, predictions from perfect to empty.
REFERENCES = {
    "1_region_0": ["a brown dog lying on the grass", "dog resting on a lawn"],
    "1_region_1": ["a red frisbee"],
    "1_region_2": ["white fence behind the dog", "a wooden\nfence", "the fence is white"],
    "2_region_0": ["a man riding a bicycle", "person on a bike"],
    "2_region_1": ["blue sky with clouds"],
    "2_region_2": ["a black helmet on the man's head", "Helmet."],
    "3_region_0": ["two cups of coffee on a table", "coffee cups"],
    "3_region_1": ["a laptop computer", "an open laptop"],
}
PREDICTIONS = {
    "1_region_0": "A brown dog lying on the grass.",
    "1_region_1": "a red frisbee",
    "1_region_2": "a white fence",
    "2_region_0": "a man on a bike",
    "2_region_1": "clouds in a blue sky",
    "2_region_2": "",  # an empty caption
    "3_region_0": "a cup of tea on a wooden table",
    "3_region_1": "a dog on the grass",
}


class _Unscored:
    """Stands in for a Java scorer whose number a test does not read (NaN, so that a stray use shows)."""

    def compute_score(self, gts, res):
        return float("nan"), [float("nan")] * len(gts)

    def method(self):
        return "unscored"


def _toolkit_eval(predictions, references) -> COCOEvalCap:
    """pycocoevalcap's own evaluation on pycocotools COCO objects built in memory; SPICE (whose constructor
    downloads Stanford CoreNLP) left out."""
    annotations = [{"image_id": key, "caption": text} for key, texts in references.items() for text in texts]
    coco = COCO()
    coco.dataset = {
        "images": [{"id": key} for key in references],
        "annotations": [{"id": i, **ann} for i, ann in enumerate(annotations, start=1)],
    }
    with pytest.MonkeyPatch.context() as patch, contextlib.redirect_stdout(io.StringIO()):
        patch.setattr(pycocoevalcap.eval, "Spice", _Unscored)
        coco.createIndex()
        evaluator = COCOEvalCap(coco, coco.loadRes([{"image_id": k, "caption": t} for k, t in predictions.items()]))
        evaluator.evaluate()
    return evaluator


def _score_without_meteor(predictions, references) -> dict[str, float]:
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(caption_metrics, "Meteor", _Unscored)
        return score_captions(predictions, references)


@pytest.fixture(scope="module")
def toolkit() -> COCOEvalCap:
    return _toolkit_eval(PREDICTIONS, REFERENCES)


@pytest.fixture(scope="module")
def scored() -> dict[str, float]:
    return score_captions(PREDICTIONS, REFERENCES)


def test_scores_equal_the_toolkits(toolkit, scored):
    expected = {name: score for name, score in toolkit.eval.items() if name != "SPICE"}
    assert set(CAPTION_METRICS) < set(expected)
    assert {name: score for name, score in scored.items() if name != "regions"} == pytest.approx(expected, abs=1e-9)
    assert scored["regions"] == len(REFERENCES)
    assert all(type(score) is float for name, score in scored.items() if name != "regions")


def test_empty_prediction_scores_zero_for_its_region(toolkit, scored):
    """The toolkit takes an empty caption as it is (METEOR's Java scorer too); parity above covers our side."""
    per_region = toolkit.imgToEval["2_region_2"]
    assert per_region["METEOR"] == per_region["ROUGE_L"] == per_region["CIDEr"] == 0.0
    assert scored["METEOR"] > 0


def test_cider_idf_is_over_the_evaluated_set(toolkit):
    """One image's regions alone (as `max_images` scores them) get another CIDEr than in the full set."""
    keys = ["3_region_0", "3_region_1"]
    subset = _score_without_meteor({k: PREDICTIONS[k] for k in keys}, {k: REFERENCES[k] for k in keys})
    full_mean = sum(toolkit.imgToEval[key]["CIDEr"] for key in keys) / len(keys)
    assert abs(subset["CIDEr"] - full_mean) > 0.1 * full_mean


@pytest.fixture(scope="module")
def single_region() -> dict[str, float]:
    """One region whose prediction is its reference but for line breaks, at which the Java tokenizer splits."""
    key = "7_region_0"
    return _score_without_meteor({key: "a dog lying on the grass"}, {key: ["a dog\r\nlying on\u2028the grass"]})


def test_single_region_scores_zero_cider(single_region):
    assert single_region["CIDEr"] == 0.0
    assert single_region["regions"] == 1


def test_line_breaks_stay_inside_their_caption(single_region):
    assert single_region["Bleu_4"] == pytest.approx(1.0, abs=1e-6)
    assert single_region["ROUGE_L"] == pytest.approx(1.0)


def test_perfect_predictions():
    references = {
        "4_region_0": ["a cat sleeping on a sofa"],
        "4_region_1": ["a green traffic light"],
        "5_region_0": ["an old wooden boat on a lake"],
    }
    scores = _score_without_meteor({key: texts[0] for key, texts in references.items()}, references)
    assert scores["Bleu_4"] == pytest.approx(1.0, abs=1e-6)
    assert scores["ROUGE_L"] == pytest.approx(1.0)
    assert scores["CIDEr"] > 1.0


@pytest.mark.parametrize(
    ("predictions", "references", "match"),
    [
        ({"a": "x", "b": "y"}, {"a": ["x"], "c": ["z"]}, r"same region keys.*\['c'\].*\['b'\]"),
        ({}, {}, "no regions"),
        ({"a": "x", "b": "y"}, {"a": ["x"], "b": []}, "'b' has no reference"),
        ({"a": "x"}, {"a": "x"}, "list of str, not a str"),
        ({"a": None}, {"a": ["x"]}, "not a str"),
        ({"a": "x"}, {"a": ["x", 3]}, "must all be str"),
    ],
)
def test_bad_input_is_a_value_error(predictions, references, match):
    with pytest.raises(ValueError, match=match):
        score_captions(predictions, references)


def test_missing_java_is_a_clear_error_before_any_subprocess(monkeypatch, tmp_path):
    def no_subprocess(*args, **kwargs):
        raise AssertionError(f"a subprocess was started: {args}")

    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(subprocess, "Popen", no_subprocess)
    with pytest.raises(RuntimeError, match=r"PTB tokenizer and METEOR.*apt-get install -y openjdk-17-jre-headless"):
        score_captions(PREDICTIONS, REFERENCES)


def test_module_does_not_import_lightning():
    probe = "import sys, regionspot.evaluation.caption_metrics; print('lightning' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout == "False\n"


def _caption_file(tmp_path) -> Path:
    """REFERENCES as a COCO-style region-caption file: one annotation per reference, a region's references sharing
    its id (so they pool under one key), a box per region, images of 100 x 100."""
    regions = {key: i for i, key in enumerate(REFERENCES)}
    annotations = [
        {"id": key, "image_id": int(key[0]), "bbox": [regions[key], 2 * regions[key], 30, 20], "caption": text}
        for key, texts in REFERENCES.items()
        for text in texts
    ]
    images = [{"id": i, "file_name": f"{i}.jpg", "width": 100, "height": 100} for i in (1, 2, 3)]
    path = tmp_path / "references.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations}))
    return path


def test_a_coco_caption_results_file_scores_as_the_toolkit(tmp_path, toolkit, scored):
    """Results as captioning code writes them, the region named by its id or by its box, score the toolkit's numbers
    (`captions score` and `score_caption_files` alike); so does `captions.json` ({key: caption})."""
    gt = _caption_file(tmp_path)
    boxes = {ann["id"]: ann["bbox"] for ann in json.loads(gt.read_text())["annotations"]}
    results = [
        {"image_id": int(key[0]), **({"id": key} if i % 2 else {"bbox": boxes[key]}), "caption": text}
        for i, (key, text) in enumerate(PREDICTIONS.items())
    ]
    (tmp_path / "results.json").write_text(json.dumps(results))
    (tmp_path / "captions.json").write_text(json.dumps(PREDICTIONS))
    expected = {name: score for name, score in toolkit.eval.items() if name != "SPICE"}
    from_list = evaluate_main(["captions", "score", "--gt", str(gt), "--results", str(tmp_path / "results.json")])
    assert {name: from_list[name] for name in expected} == pytest.approx(expected, abs=1e-9)
    assert score_caption_files(gt, tmp_path / "captions.json") == pytest.approx(scored, abs=1e-9)


def test_caption_results_that_miss_or_repeat_a_region_are_refused(tmp_path):
    gt = _caption_file(tmp_path)
    references = reference_captions(gt)
    one = [{"image_id": 1, "id": "1_region_0", "caption": "a dog"}]
    with pytest.raises(ValueError, match="7 regions have no prediction"):
        score_caption_results(one, references)
    with pytest.raises(ValueError, match="both caption region '1_region_0'"):
        score_caption_results(one + one, references)
    with pytest.raises(ValueError, match="no region of image 1 has the box"):
        score_caption_results([{"image_id": 1, "bbox": [50, 50, 5, 5], "caption": "x"}], references)
    with pytest.raises(ValueError, match="names no region"):
        score_caption_results([{"image_id": 1, "caption": "x"}], references)
    with pytest.raises(ValueError, match="id 'nope' is no region"):
        score_caption_results([{"image_id": 1, "id": "nope", "caption": "x"}], references)
    with pytest.raises(ValueError, match="caption string"):
        score_caption_results([{"image_id": 1, "id": "1_region_0", "caption": 3}], references)


def test_results_name_visual_genome_regions_by_box_too(tmp_path):
    """Visual Genome's own file carries no image sizes (no COCO dict behind the data set): a box still finds its
    region, and a wrong one is refused, rather than failing inside the lookup of sizes."""
    (tmp_path / "images").mkdir()
    Image.new("RGB", (100, 100)).save(tmp_path / "images" / "7.jpg")
    regions = [{"region_id": 70 + j, "phrase": "a dog", "x": 10 * j, "y": 5, "width": 30, "height": 20} for j in (0, 1)]
    gt = tmp_path / "region_descriptions.json"
    gt.write_text(json.dumps([{"id": 7, "regions": regions}]))
    references = reference_captions(gt, tmp_path / "images")
    predictions = _predictions_by_key([{"image_id": 7, "bbox": [10, 5, 30, 20], "caption": "a dog"}], references)
    assert predictions == {"71": "a dog"}
    with pytest.raises(ValueError, match="no region of image 7 has the box"):
        _predictions_by_key([{"image_id": 7, "bbox": [60, 60, 5, 5], "caption": "x"}], references)
