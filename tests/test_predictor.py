"""The predictor: every accepted image format, prompt kinds, outputs, and the documented errors."""

from __future__ import annotations

import copy
import dataclasses
import inspect
import warnings

import numpy as np
import pytest
import torch
from PIL import Image
from segment_anything import SamAutomaticMaskGenerator, SamPredictor
from torch.testing import assert_close

from regionspot import RegionSpotPredictor, build_regionspot
from regionspot.app.recognition import Recognizer
from regionspot.config import MaskGeneratorSettings
from regionspot.evaluation import cli as evaluation_cli
from regionspot.evaluation import runner
from regionspot.evaluation.runner import EvalSettings
from regionspot.modeling.sam import NothingKeptWarning, build_mask_generator
from regionspot.transforms import load_image, prepare_prompts, to_rgb_uint8

VOCAB = ["red square", "blue square", "background", "cat"]
BOXES = [[30, 20, 90, 60], [100, 50, 150, 90], [-20, -5, 400, 300]]


@pytest.fixture
def predictor(tiny_model, image):
    predictor = RegionSpotPredictor(tiny_model)
    predictor.set_image(image)
    return predictor


def test_predict_boxes(predictor, image, tiny_model):
    result = predictor.predict(boxes=BOXES, vocabulary=VOCAB, top_k=2, return_all_scores=True)
    assert len(result) == 3
    assert result.scores.shape == result.class_ids.shape == (3, 2)
    assert all(len(labels) == 2 and set(labels) <= set(VOCAB) for labels in result.labels)
    assert (result.scores[:, 0] >= result.scores[:, 1]).all()
    assert_close(result.all_scores.sum(-1), torch.ones(3))
    assert_close(result.all_scores.gather(1, result.class_ids), result.scores)
    assert result.masks.shape == (3, *image.shape[:2]) and result.masks.dtype == torch.bool
    assert result.boxes[2].tolist() == [0, 0, 160, 96]  # clipped to the image
    assert result.to_list()[0]["labels"] == result.labels[0]


def test_predict_masks_equal_sam_predictor(predictor, tiny_model, image):
    result = predictor.predict(boxes=BOXES, vocabulary=VOCAB)
    reference = SamPredictor(tiny_model.sam.sam)
    reference.set_image(image)
    boxes = reference.transform.apply_boxes_torch(result.boxes, image.shape[:2])
    masks, scores, _ = reference.predict_torch(None, None, boxes=boxes, multimask_output=False)
    assert torch.equal(result.masks, masks[:, 0])
    assert_close(result.mask_scores, scores[:, 0])


def test_points_masks_and_combinations(predictor, image):
    points = np.array([[[50, 40]], [[120, 70]]])
    by_points = predictor.predict(points=points, vocabulary=VOCAB, activation="sigmoid")
    assert len(by_points) == 2 and by_points.boxes is None
    assert ((by_points.scores > 0) & (by_points.scores < 1)).all()
    masks = np.zeros((2, *image.shape[:2]), dtype=bool)
    masks[0, 20:60, 30:90] = masks[1, 50:90, 100:150] = True
    combined = predictor.predict(
        boxes=BOXES[:2],
        points=np.concatenate([points, points[::-1]], axis=1),
        point_labels=[[1, 0], [1, 0]],
        masks=masks,
        vocabulary=VOCAB,
    )
    assert len(combined) == 2
    by_masks = predictor.predict(masks=torch.from_numpy(masks), vocabulary=VOCAB)
    assert not torch.equal(by_masks.scores, combined.scores)


def test_predict_without_masks_names_the_regions_as_with_them(predictor):
    """return_masks=False decodes SAM's tokens only (faster per box): same names and scores, no masks."""
    boxes = [[10, 10, 60, 50], [40, 20, 120, 90], [0, 0, 160, 96]]
    full = predictor.predict(boxes=boxes, vocabulary=VOCAB)
    light = predictor.predict(boxes=boxes, vocabulary=VOCAB, return_masks=False)
    assert light.masks is None and all(row["mask"] is None for row in light.to_list())
    assert light.labels == full.labels
    torch.testing.assert_close(light.scores, full.scores, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(light.mask_scores, full.mask_scores, rtol=1e-5, atol=1e-6)


def test_multimask_reports_the_best_mask(tiny_config, image):
    config = copy.deepcopy(tiny_config)
    config.sam.multimask = True
    predictor = RegionSpotPredictor(build_regionspot(config))
    predictor.set_image(image)
    result = predictor.predict(points=[[[50, 40]]], vocabulary=VOCAB)
    prompts, _ = prepare_prompts(predictor.model.sam, image_size=image.shape[:2], points=[[[50, 40]]])
    regions = predictor.model.sam.decode(predictor._image.sam, [prompts])[0]
    assert regions.mask_scores.shape == (1, 3)
    assert result.mask_scores[0] == regions.mask_scores[0].max()


def _formats(image):
    rgba = np.concatenate([image, np.full((*image.shape[:2], 1), 255, np.uint8)], axis=2)
    return {
        "numpy uint8": image,
        "numpy float": image.astype(np.float32) / 255,
        "numpy rgba": rgba,
        "PIL": Image.fromarray(image),
        "tensor uint8 CHW": torch.from_numpy(image).permute(2, 0, 1),
        "tensor float CHW": torch.from_numpy(image).permute(2, 0, 1).double() / 255,
    }


def test_every_image_format_gives_the_same_result(tiny_model, image):
    predictor = RegionSpotPredictor(tiny_model)
    results = {}
    for name, value in _formats(image).items():
        predictor.set_image(value)
        results[name] = predictor.predict(boxes=BOXES, vocabulary=VOCAB, return_all_scores=True).all_scores
    for name, scores in results.items():
        assert_close(scores, results["numpy uint8"], msg=name)


def test_grayscale_and_odd_sizes(tiny_model):
    predictor = RegionSpotPredictor(tiny_model)
    gray = np.tile(np.linspace(0, 255, 37, dtype=np.uint8), (301, 1))
    assert to_rgb_uint8(gray).shape == (301, 37, 3)
    predictor.set_image(gray)
    result = predictor.predict(boxes=[[0, 0, 37, 301]], vocabulary=VOCAB)
    assert result.masks.shape == (1, 301, 37)
    predictor.set_image(torch.rand(1, 5, 900))
    assert predictor.predict(boxes=[[1, 1, 800, 4]], vocabulary=VOCAB).masks.shape == (1, 5, 900)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"boxes": [[10, 10, 10, 40]]}, "no area"),
        ({"boxes": [[50, 50, 20, 80]]}, "x2 > x1"),
        ({"boxes": [[500, 500, 600, 600]]}, "no area inside the 160x96 image"),
        ({"boxes": [[0, 0, float("nan"), 9]]}, "NaN"),
        ({"boxes": [[0, 0, 9]]}, r"shape \(N, 4\)"),
        ({"boxes": np.zeros((0, 4))}, "at least one region"),
        ({"points": [[10, 10]]}, r"points\[:, None\]"),
        ({"points": [[[10, 10]]], "point_labels": [[2]]}, "must be 1 .* or 0"),
        ({"points": [[[1000, 10]]]}, "outside"),
        ({"points": [[[10, 10]]], "point_labels": [[1, 1]]}, "point_labels must have shape"),
        ({"point_labels": [[1]]}, "without points"),
        ({"boxes": BOXES, "points": [[[10, 10]]]}, "counts differ"),
        ({"masks": np.zeros((1, 10, 10))}, "like the image"),
        ({"masks": np.full((1, 96, 160), 3.0)}, "binary"),
        ({}, "at least one prompt"),
    ],
)
def test_bad_prompts_are_value_errors(predictor, kwargs, message):
    with pytest.raises(ValueError, match=message):
        predictor.predict(vocabulary=VOCAB, **kwargs)


def test_bad_calls(tiny_model, predictor):
    with pytest.raises(RuntimeError, match="set_image"):
        RegionSpotPredictor(tiny_model).predict(boxes=BOXES, vocabulary=VOCAB)
    with pytest.raises(ValueError, match="vocabulary is empty"):
        predictor.predict(boxes=BOXES, vocabulary=[])
    with pytest.raises(ValueError, match="activation"):
        predictor.predict(boxes=BOXES, vocabulary=VOCAB, activation="relu")
    with pytest.raises(ValueError, match="top_k"):
        predictor.predict(boxes=BOXES, vocabulary=VOCAB, top_k=0)
    assert predictor.predict(boxes=BOXES, vocabulary=VOCAB[:1], top_k=5).scores.shape == (3, 1)


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (np.zeros((4, 4, 2), np.uint8), "is not an image"),
        (np.zeros((0, 4, 3), np.uint8), "no pixels"),
        (np.full((4, 4, 3), 200.0), r"\[0, 1\].*divide by 255"),
        (np.full((4, 4), np.nan), "NaN"),
        (np.zeros((4, 4, 3), np.int64), "dtype int64"),
        (torch.zeros(2, 3, 4, 4), "is not an image"),
        ("image.png", "PIL image, numpy array or torch tensor"),
        (np.zeros((5000, 10, 3), np.uint8), "too thin for SAM"),
    ],
)
def test_bad_images_are_value_errors(bad, message, predictor):
    with pytest.raises(ValueError, match=message):
        predictor.set_image(bad)
    with pytest.raises(RuntimeError, match="set_image"):  # a failed set_image leaves no stale image behind
        predictor.predict(boxes=BOXES, vocabulary=VOCAB)


def test_a_vocabulary_string_is_refused_not_split_into_letters(predictor):
    with pytest.raises(ValueError, match=r"list of class names.*\['cat'\]"):
        predictor.predict(boxes=BOXES, vocabulary="cat")


def test_a_list_of_images_in_one_call_gives_what_each_gives_alone(tiny_model, image):
    images = [image, image[10:80, 5:150].copy(), np.ascontiguousarray(image[:, ::-1])]
    boxes = [BOXES, BOXES[:1], [[5, 5, 60, 40], [20, 30, 90, 90]]]
    predictor = RegionSpotPredictor(tiny_model)
    together = predictor.predict_images(images, boxes=boxes, vocabulary=VOCAB, top_k=4, batch_size=2)
    assert len(together) == 3
    for img, img_boxes, got in zip(images, boxes, together, strict=True):
        predictor.set_image(img)
        alone = predictor.predict(boxes=img_boxes, vocabulary=VOCAB, top_k=4)
        assert got.labels == alone.labels
        assert_close(got.scores, alone.scores, rtol=1e-5, atol=1e-6)
        assert torch.equal(got.boxes, alone.boxes)
        assert (got.masks != alone.masks).float().mean() < 1e-3  # float rounding may flip a pixel at the threshold
    with pytest.raises(ValueError, match="one \\(N_i, 4\\) array per image"):
        predictor.predict_images(images, boxes=boxes[:2], vocabulary=VOCAB)


def test_a_refusal_in_a_list_of_images_names_the_image_and_the_box(tiny_model, image):
    predictor = RegionSpotPredictor(tiny_model)
    images, boxes = [image, image, image], [BOXES, BOXES, BOXES]
    with pytest.raises(ValueError, match=r"^image 3 \(index 2\): image dtype int64"):
        predictor.predict_images([image, image, image.astype(np.int64)], boxes=boxes, vocabulary=VOCAB, batch_size=2)
    outside = [[0, 0, 9, 9], [500, 500, 600, 600]]
    with pytest.raises(ValueError, match=r"^image 2 \(index 1\): box 2 \(index 1\) has no area inside"):
        predictor.predict_images(images, boxes=[BOXES, outside, BOXES], vocabulary=VOCAB)
    with pytest.raises(TypeError, match=r"^image 1 \(index 0\): boxes must be numbers"):
        predictor.predict_images(images[:1], boxes=[[["a", "b", "c", "d"]]], vocabulary=VOCAB)


def test_boxes_and_regions_are_numbered_from_one_as_the_app_and_region_tags_number_them(predictor):
    """The user sees box 1 where `<region1>` and the app's box 1 are: boxes[0], said as "box 1 (index 0)"."""
    nan = [[0, 0, 9, 9], [0, 0, 9, 9], [0, float("nan"), 9, 9], [0, 0, float("inf"), 9]]
    with pytest.raises(ValueError, match=r"^boxes 3, 4 \(indices 2, 3\) have NaN or infinite"):
        predictor.predict(boxes=nan, vocabulary=VOCAB)
    with pytest.raises(ValueError, match=r"^box 1 \(index 0\) has no area inside the 160x96 image"):
        predictor.predict(boxes=[[500, 500, 600, 600], [0, 0, 9, 9]], vocabulary=VOCAB)
    with pytest.raises(ValueError, match=r"^points of region 2 \(index 1\) lie outside"):
        predictor.predict(points=[[[10, 10]], [[1000, 10]]], vocabulary=VOCAB)


def test_sixteen_bit_and_wide_pil_images_are_read_as_load_image_reads_the_file(tiny_model, tmp_path):
    """A 16-bit PNG opens as mode I;16: the predictor and `load_image` read it by one conversion, 65535 -> 255."""
    samples = np.linspace(0, 65535, 96 * 160).round().astype(np.uint16).reshape(96, 160)
    path = tmp_path / "sixteen_bits.png"
    Image.fromarray(samples).save(path)
    eight_bits = np.repeat(np.round(samples / 257).astype(np.uint8)[..., None], 3, axis=2)
    assert np.array_equal(load_image(path), eight_bits)
    wide = {
        "opened 16-bit PNG": Image.open(path),
        "I": Image.fromarray(samples.astype(np.int32)),
        "I;16B": Image.frombytes("I;16B", (160, 96), samples.astype(">u2").tobytes()),
        "F in [0, 1]": Image.fromarray((samples / 65535).astype(np.float32)),
        "numpy uint16": samples,
    }
    assert Image.open(path).mode == "I;16" and wide["I"].mode == "I" and wide["F in [0, 1]"].mode == "F"
    predictor = RegionSpotPredictor(tiny_model)
    predictor.set_image(eight_bits)
    expected = predictor.predict(boxes=BOXES, vocabulary=VOCAB, return_all_scores=True).all_scores
    for name, image in wide.items():
        assert np.abs(to_rgb_uint8(image).astype(int) - eight_bits).max() <= 1, name  # float rounding at most
        predictor.set_image(image)
        got = predictor.predict(boxes=BOXES, vocabulary=VOCAB, return_all_scores=True).all_scores
        if name != "F in [0, 1]":
            assert_close(got, expected, msg=name)
    with pytest.raises(ValueError, match="mode I is read as 16-bit samples"):
        predictor.set_image(Image.fromarray(np.array([[-1, 70000]], np.int32)))


def test_segment_everything_and_name_it(predictor, image):
    settings = {"points_per_side": 4, "pred_iou_thresh": 0.0, "stability_score_thresh": 0.0}
    result = predictor.predict_everything(vocabulary=VOCAB, top_k=2, return_all_scores=True, **settings)
    assert len(result) > 0 and result.masks.shape == (len(result), *image.shape[:2])
    assert all(set(labels) <= set(VOCAB) for labels in result.labels)
    assert ((result.mask_scores >= 0) & (result.mask_scores <= 1)).all()
    again = predictor.predict(boxes=result.boxes, vocabulary=VOCAB, top_k=2, return_all_scores=True)
    assert_close(result.all_scores, again.all_scores)  # each mask is named from the box around it
    for mask, box in zip(result.masks, result.boxes.long(), strict=True):  # the box is the mask's extent
        ys, xs = mask.nonzero(as_tuple=True)
        assert [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1] == box.tolist()
    with pytest.warns(NothingKeptWarning):
        nothing = predictor.predict_everything(vocabulary=VOCAB, points_per_side=1, pred_iou_thresh=2.0)
    assert len(nothing) == 0 and nothing.masks.shape == (0, *image.shape[:2])


def test_segment_everything_says_when_it_keeps_nothing_and_the_best_scores_it_saw(predictor, tiny_model, image):
    # Everything the generator saw, unfiltered: its best predicted IoU, and the best stability among those above 0.
    seen = build_mask_generator(
        tiny_model.sam.sam, MaskGeneratorSettings(points_per_side=3, pred_iou_thresh=0.0, stability_score_thresh=0.0)
    ).generate(image)
    best_iou = max(r["predicted_iou"] for r in seen)
    best_stability = max(r["stability_score"] for r in seen if r["predicted_iou"] > 0)
    too_high = f"{best_iou + 0.01:.3f}"
    with pytest.warns(NothingKeptWarning) as caught:
        nothing = predictor.predict_everything(vocabulary=VOCAB, points_per_side=3, pred_iou_thresh=float(too_high))
    assert len(nothing) == 0
    message = str(caught[0].message)
    assert f"best predicted IoU it saw was {best_iou:.3f} (pred_iou_thresh {float(too_high):g})" in message
    assert "no mask passed it" in message and "stability_score_thresh 0.95" in message
    with pytest.warns(NothingKeptWarning) as caught:
        predictor.predict_everything(
            vocabulary=VOCAB, points_per_side=3, pred_iou_thresh=0.0, stability_score_thresh=best_stability + 0.01
        )
    assert f"the best stability score among them {best_stability:.3f}" in str(caught[0].message)
    with warnings.catch_warnings():  # masks kept: no warning
        warnings.simplefilter("error", NothingKeptWarning)
        assert len(predictor.predict_everything(vocabulary=VOCAB, points_per_side=3, pred_iou_thresh=0.0,
                                                stability_score_thresh=0.0))  # fmt: skip


def test_one_set_of_mask_generator_defaults_segment_anythings_published_ones(monkeypatch):
    published = inspect.signature(SamAutomaticMaskGenerator).parameters
    settings = dataclasses.asdict(MaskGeneratorSettings())
    assert settings == {name: published[name].default for name in settings}
    for function in (RegionSpotPredictor.predict_everything, Recognizer.segment_everything):
        parameters = inspect.signature(function).parameters
        assert {name: parameters[name].default for name in settings} == settings, function.__qualname__
    evaluation = {f.name: f.default for f in dataclasses.fields(EvalSettings)}
    assert {name: evaluation[f"sam_{name}"] for name in settings} == settings
    monkeypatch.setattr(runner, "evaluate", lambda parsed: parsed)  # evaluate.py's options, parsed and not run
    parsed = evaluation_cli.run(["--config", "m.yaml", "--ann", "a.json", "--images", "images", "--source", "sam"])
    assert {name: getattr(parsed, f"sam_{name}") for name in settings} == settings
