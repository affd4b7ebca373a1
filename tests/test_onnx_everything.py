"""`OnnxRegionPredictor.predict_everything` and `predict_images` against the torch predictor on the tiny config:
the numpy mask generator (regionspot.onnx.everything) against segment_anything's SamAutomaticMaskGenerator, which the
torch predictor runs, and its pieces against segment_anything's and torchvision's own."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from segment_anything.utils import amg
from skimage import data as skimage_data
from torchvision.ops import nms

from regionspot import RegionSpotConfig, RegionSpotPredictor, build_regionspot
from regionspot.config import MaskGeneratorSettings
from regionspot.everything import NothingKeptWarning
from regionspot.modeling.sam import build_mask_generator
from regionspot.onnx import OnnxRegionPredictor, everything
from regionspot.onnx.everything import box_nms, mask_boxes, point_grid, stability_scores
from regionspot.onnx.export import export_onnx

VOCAB = ["person", "cat", "coffee cup", "rocket", "tree", "car"]


@pytest.fixture(scope="module")
def predictors(tmp_path_factory):
    """Both predictors on one tiny model whose SAM is sharpened (its hypernetworks' output x40, its IoU head +0.7):
    the random tiny SAM's masks are near-constant logits, all of stability 0, which no threshold tells apart."""
    folder = tmp_path_factory.mktemp("everything")
    config = RegionSpotConfig.from_yaml("tiny")
    model = build_regionspot(config)
    decoder = model.sam.sam.mask_decoder
    with torch.no_grad():
        for mlp in decoder.output_hypernetworks_mlps:
            mlp.layers[-1].weight.mul_(40)
        decoder.iou_prediction_head.layers[-1].bias.add_(0.7)
    for part, module in (("sam", model.sam.sam), ("adapter", model.adapter)):
        save_file({k: v.contiguous() for k, v in module.state_dict().items()}, folder / f"{part}.safetensors")
    config.sam.checkpoint, config.adapter.checkpoint = (
        str(folder / "sam.safetensors"),
        str(folder / "adapter.safetensors"),
    )
    export_onnx(config, folder / "export")
    return RegionSpotPredictor(build_regionspot(config)), OnnxRegionPredictor(folder / "export", threads=1)


def test_the_numpy_pieces_match_segment_anythings():
    rng = np.random.default_rng(0)
    assert np.allclose(point_grid(5), amg.build_point_grid(5))
    logits = rng.normal(0, 2, (6, 30, 40)).astype(np.float32)
    logits[0] = -5  # an empty mask: 0/0, never stable
    want = amg.calculate_stability_score(torch.from_numpy(logits), 0.0, 1.0).numpy()
    np.testing.assert_array_equal(stability_scores(logits, 0.0), want)
    masks = logits > 1.5
    masks[1] = False
    masks[2, 3:9, 4:20] = True
    assert np.array_equal(mask_boxes(masks), amg.batched_mask_to_box(torch.from_numpy(masks)).numpy())
    corners = rng.uniform(0, 80, (200, 2))
    boxes = np.concatenate([corners, corners + rng.uniform(1, 40, (200, 2))], axis=1).round()
    scores = rng.uniform(0, 1, 200).astype(np.float32)
    want = nms(torch.from_numpy(boxes).float(), torch.from_numpy(scores), 0.7).numpy()
    assert np.array_equal(box_nms(boxes, scores, 0.7), want)


@pytest.mark.parametrize(
    ("photo", "settings"),
    [("coffee", (0.5, 0.3)), ("astronaut", (0.5, 0.3)), ("astronaut", (0.9, 0.1)), ("chelsea", (0.0, 0.0))],
)
def test_the_masks_kept_are_sams_mask_generators(predictors, photo, settings, monkeypatch):
    """Every mask kept by the thresholds, with NMS off on both sides (the tiny SAM's masks overlap, so NMS would
    leave one): the same masks, boxes and scores, in the same order, as SamAutomaticMaskGenerator's."""
    torch_predictor, onnx_predictor = predictors
    pred_iou_thresh, stability_score_thresh = settings
    rgb = getattr(skimage_data, photo)()
    generator = build_mask_generator(
        torch_predictor.model.sam.sam, MaskGeneratorSettings(6, pred_iou_thresh, stability_score_thresh)
    )
    generator.box_nms_thresh = 1.0
    want = generator.generate(rgb)
    monkeypatch.setattr(everything, "BOX_NMS_THRESH", 1.0)
    onnx_predictor.set_image(rgb)
    got = everything.generate_masks(
        onnx_predictor._decode_points, image_size=rgb.shape[:2], points_per_side=6, pred_iou_thresh=pred_iou_thresh,
        stability_score_thresh=stability_score_thresh, mask_threshold=0.0,
    )  # fmt: skip
    assert len(want) > 1 and len(got.masks) == len(want)
    np.testing.assert_allclose(got.scores, [r["predicted_iou"] for r in want], atol=1e-4, rtol=0)
    assert (got.masks == np.stack([r["segmentation"] for r in want])).mean() >= 0.999
    boxes = np.array([r["bbox"] for r in want])  # x, y, w, h of pixel indices: one pixel more each way
    np.testing.assert_allclose(got.boxes, np.concatenate([boxes[:, :2], boxes[:, :2] + boxes[:, 2:] + 1], 1), atol=1)


@pytest.mark.parametrize("photo", ["coffee", "astronaut", "chelsea"])
def test_segment_everything_matches_the_torch_predictor(predictors, photo):
    rgb = getattr(skimage_data, photo)()
    results = []
    for predictor in predictors:
        predictor.set_image(rgb)
        results.append(
            predictor.predict_everything(
                vocabulary=VOCAB,
                top_k=3,
                return_all_scores=True,
                points_per_side=6,
                pred_iou_thresh=0.5,
                stability_score_thresh=0.3,
            )
        )
    want, got = results
    assert len(want) > 0 and len(got) == len(want)
    assert isinstance(got.masks, np.ndarray) and got.masks.dtype == np.bool_ and got.masks.shape == want.masks.shape
    assert (got.masks == want.masks.numpy()).mean() >= 0.999
    np.testing.assert_array_equal(got.boxes, want.boxes.numpy())
    np.testing.assert_allclose(got.mask_scores, want.mask_scores.numpy(), atol=1e-4, rtol=0)
    np.testing.assert_allclose(got.all_scores, want.all_scores.numpy(), atol=1e-4, rtol=0)
    assert [r[0] for r in got.labels] == [r[0] for r in want.labels]


def test_segment_everything_warns_as_the_torch_predictor_when_nothing_is_kept(predictors, image):
    messages = []
    for predictor in predictors:
        predictor.set_image(image)
        with pytest.warns(NothingKeptWarning) as caught:
            nothing = predictor.predict_everything(vocabulary=VOCAB, points_per_side=3, pred_iou_thresh=2.0)
        assert len(nothing) == 0 and tuple(nothing.masks.shape) == (0, *image.shape[:2])
        assert tuple(nothing.class_ids.shape) == (0, 5)
        messages.append(str(caught[0].message))
    assert messages[1].split("was ")[0] == messages[0].split("was ")[0] and "no mask passed it" in messages[1]
    with warnings.catch_warnings():  # at the published defaults too, the same outcome as the torch predictor
        warnings.simplefilter("ignore", NothingKeptWarning)
        assert len(predictors[1].predict_everything(vocabulary=VOCAB)) == len(
            predictors[0].predict_everything(vocabulary=VOCAB)
        )
    with pytest.raises(ValueError, match="points_per_side must be at least 1"):
        predictors[1].predict_everything(vocabulary=VOCAB, points_per_side=0)


def test_predict_images_matches_torch_and_leaves_the_set_image_alone(predictors, image):
    torch_predictor, onnx_predictor = predictors
    photos = [skimage_data.coffee(), skimage_data.chelsea(), image]
    boxes = [np.array([[10, 20, 200, 300], [0, 0, 600, 400]]), np.array([[50, 50, 150, 120]]), np.array([[0, 0, 9, 9]])]
    onnx_predictor.set_image(image)
    before = onnx_predictor.predict(vocabulary=VOCAB, boxes=[[5, 5, 60, 60]], return_all_scores=True)
    want = torch_predictor.predict_images(photos, boxes=boxes, vocabulary=VOCAB, return_all_scores=True)
    got = onnx_predictor.predict_images(photos, boxes=boxes, vocabulary=VOCAB, return_all_scores=True)
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(g.all_scores, w.all_scores.numpy(), atol=1e-4, rtol=0)
        assert g.labels == w.labels and (g.masks == w.masks.numpy()).mean() >= 0.999
        np.testing.assert_array_equal(g.boxes, w.boxes.numpy())
    after = onnx_predictor.predict(vocabulary=VOCAB, boxes=[[5, 5, 60, 60]], return_all_scores=True)
    np.testing.assert_array_equal(after.all_scores, before.all_scores)


@pytest.mark.parametrize(
    "call",
    [
        {"images": np.zeros((2, 8, 8, 3), np.uint8), "boxes": [[[0, 0, 4, 4]]] * 2},
        {"images": [np.zeros((8, 8, 3), np.uint8)], "boxes": [[[0, 0, 4, 4]]] * 2},
        {"images": [np.zeros((8, 8, 3), np.uint8)] * 2, "boxes": [[[0, 0, 4, 4]], [[5, 5, 5, 9]]]},
        {"images": [np.zeros((8, 8, 3), np.uint8), np.zeros((8, 8), np.float64) + 7], "boxes": [[[0, 0, 4, 4]]] * 2},
        {"images": [np.zeros((8, 8, 3), np.uint8)], "boxes": [[[0, 0, 4, 4]]], "batch_size": 0},
        {"images": [np.zeros((8, 8, 3), np.uint8)], "boxes": [[[0, 0, 4, 4]]], "vocabulary": []},
    ],
    ids=["array", "counts", "box", "image", "batch", "vocabulary"],
)
def test_predict_images_refuses_as_the_torch_predictor(predictors, call):
    call = {"vocabulary": VOCAB, **call}
    errors = []
    for predictor in predictors:
        with pytest.raises((TypeError, ValueError)) as caught:
            predictor.predict_images(**call)
        errors.append((type(caught.value), str(caught.value)))
    assert errors[0] == errors[1]
