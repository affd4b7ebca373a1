"""The ONNX export and the torch-free `OnnxRegionPredictor`: parity with `RegionSpotPredictor` on the tiny config,
the same errors for bad inputs, a manifest that catches a changed file, and no torch in its process."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from skimage import data as skimage_data
from torchless import run_without_torch

from regionspot import RegionSpotConfig, RegionSpotPredictor, build_regionspot
from regionspot.onnx import OnnxRegionPredictor
from regionspot.onnx.export import export_onnx

TINY_CONFIG = "tiny"
VOCAB = ["person", "cat", "coffee cup", "rocket", "tree", "car", "dog", "astronaut", "teapot"]
PHOTOS = {"astronaut": skimage_data.astronaut, "coffee": skimage_data.coffee, "chelsea": skimage_data.chelsea}


@pytest.fixture(scope="module")
def predictors(tiny_onnx_export):
    folder, adapter = tiny_onnx_export
    config = RegionSpotConfig.from_yaml(TINY_CONFIG)
    config.adapter.checkpoint = str(adapter)
    return RegionSpotPredictor(build_regionspot(config)), OnnxRegionPredictor(folder, threads=1)


def _prompts(height: int, width: int) -> list[dict]:
    rng = np.random.default_rng(0)
    x1, y1 = rng.uniform(0, width * 0.6, 6), rng.uniform(0, height * 0.6, 6)
    boxes = np.stack([x1, y1, x1 + rng.uniform(8, width * 0.4, 6), y1 + rng.uniform(8, height * 0.4, 6)], axis=1)
    boxes[0] = [-20, -20, width + 30, height + 5]  # clipped to the image
    points = np.stack([rng.uniform(0, width, (6, 3)), rng.uniform(0, height, (6, 3))], axis=-1)
    labels = rng.integers(0, 2, (6, 3))
    masks = np.zeros((6, height, width), bool)
    for i, (a, b, c, d) in enumerate(boxes.astype(int)):
        masks[i, max(b, 0) : d, max(a, 0) : c] = True
    return [
        {"boxes": boxes},
        {"points": points, "point_labels": labels},
        {"points": points[:, :1]},
        {"masks": masks},
        {"boxes": boxes, "points": points, "point_labels": labels},
        {"boxes": boxes, "masks": masks},
        {"points": points, "masks": masks},
    ]


@pytest.mark.parametrize("photo", sorted(PHOTOS))
def test_onnx_predictor_matches_torch_on_photos(predictors, photo):
    torch_predictor, onnx_predictor = predictors
    rgb = PHOTOS[photo]()
    torch_predictor.set_image(rgb)
    onnx_predictor.set_image(rgb)
    for prompts in _prompts(*rgb.shape[:2]):
        for activation in ("softmax", "sigmoid"):
            want = torch_predictor.predict(vocabulary=VOCAB, activation=activation, return_all_scores=True, **prompts)
            got = onnx_predictor.predict(vocabulary=VOCAB, activation=activation, return_all_scores=True, **prompts)
            assert isinstance(got.scores, np.ndarray) and got.masks.dtype == np.bool_
            np.testing.assert_allclose(got.all_scores, want.all_scores.numpy(), atol=1e-4, rtol=0)
            np.testing.assert_allclose(got.mask_scores, want.mask_scores.numpy(), atol=1e-4, rtol=0)
            assert got.labels[0] == want.labels[0] and [r[0] for r in got.labels] == [r[0] for r in want.labels]
            assert (got.masks == want.masks.numpy()).mean() >= 0.999, (photo, list(prompts))
            assert got.boxes is None if want.boxes is None else np.array_equal(got.boxes, want.boxes.numpy())
        # tokens only: the decoder_tokens graph (the first block's image side shared), or with masks prompts the
        # decoder graph, its masks dropped; against torch's tokens-only decoding
        want = torch_predictor.predict(vocabulary=VOCAB, return_masks=False, return_all_scores=True, **prompts)
        got = onnx_predictor.predict(vocabulary=VOCAB, return_masks=False, return_all_scores=True, **prompts)
        assert got.masks is None and [r[0] for r in got.labels] == [r[0] for r in want.labels]
        np.testing.assert_allclose(got.all_scores, want.all_scores.numpy(), atol=1e-4, rtol=0)
        np.testing.assert_allclose(got.mask_scores, want.mask_scores.numpy(), atol=1e-4, rtol=0)


def test_many_regions_and_names_in_chunks(predictors):
    """More regions than one decoder call takes (prompt_batch_size) and a vocabulary of 80 names."""
    torch_predictor, onnx_predictor = predictors
    rgb = skimage_data.coffee()
    torch_predictor.set_image(rgb)
    onnx_predictor.set_image(rgb)
    rng = np.random.default_rng(1)
    corners = rng.uniform(0, 300, (150, 2))
    boxes = np.concatenate([corners, corners + rng.uniform(5, 200, (150, 2))], axis=1)
    names = [f"thing number {i}" for i in range(80)]
    want = torch_predictor.predict(vocabulary=names, boxes=boxes, return_all_scores=True, return_masks=False)
    got = onnx_predictor.predict(vocabulary=names, boxes=boxes, return_all_scores=True, return_masks=False)
    np.testing.assert_allclose(got.all_scores, want.all_scores.numpy(), atol=1e-4, rtol=0)
    assert np.array_equal(got.class_ids[:, 0], want.class_ids[:, 0].numpy())


BAD_PROMPTS = [
    {"boxes": [[10, 10, 10, 40]]},
    {"boxes": [[500, 500, 600, 600]]},
    {"boxes": [[0, 0, float("nan"), 9]]},
    {"boxes": [[0, 0, 9]]},
    {"boxes": np.zeros((0, 4))},
    {"boxes": [["a", "b", "c", "d"]]},
    {"points": [[10, 10]]},
    {"points": [[[10, 10]]], "point_labels": [[2]]},
    {"points": [[[1000, 10]]]},
    {"points": [[[10, 10]]], "point_labels": [[1, 1]]},
    {"point_labels": [[1]]},
    {"boxes": [[0, 0, 5, 5]] * 3, "points": [[[10, 10]]]},
    {"masks": np.zeros((1, 10, 10))},
    {"masks": np.full((1, 96, 160), 3.0)},
    {},
    {"boxes": [[0, 0, 5, 5]], "vocabulary": []},
    {"boxes": [[0, 0, 5, 5]], "vocabulary": "cat"},
    {"boxes": [[0, 0, 5, 5]], "vocabulary": ["cat", "cat"]},
    {"boxes": [[0, 0, 5, 5]], "vocabulary": ["cat", 3]},
    {"boxes": [[0, 0, 5, 5]], "top_k": 0},
    {"boxes": [[0, 0, 5, 5]], "top_k": 1.5},
    {"boxes": [[0, 0, 5, 5]], "activation": "relu"},
]


def _error(call) -> tuple[type, str]:
    with pytest.raises((TypeError, ValueError, RuntimeError)) as caught:
        call()
    return type(caught.value), str(caught.value)


@pytest.mark.parametrize("kwargs", BAD_PROMPTS, ids=range(len(BAD_PROMPTS)))
def test_bad_prompts_get_the_torch_predictors_errors(predictors, image, kwargs):
    for predictor in predictors:
        predictor.set_image(image)
    kwargs = {"vocabulary": VOCAB, **kwargs}
    assert _error(lambda: predictors[1].predict(**kwargs)) == _error(lambda: predictors[0].predict(**kwargs))


@pytest.mark.parametrize(
    "bad",
    [np.zeros((4, 4, 2), np.uint8), np.full((4, 4, 3), 200.0), np.zeros((4, 4, 3), np.int64), "image.png",
     np.zeros((5000, 10, 3), np.uint8), torch.zeros(2, 3, 4, 4)],
    ids=["channels", "range", "dtype", "path", "thin", "tensor"],
)  # fmt: skip
def test_bad_images_get_the_torch_predictors_errors(predictors, bad):
    errors = [_error(lambda p=p: p.set_image(bad)) for p in predictors]
    assert errors[0] == errors[1]
    for predictor in predictors:  # a failed set_image leaves no image behind
        assert _error(lambda p=predictor: p.predict(vocabulary=VOCAB, boxes=[[0, 0, 2, 2]]))[0] is RuntimeError


def test_manifest_names_what_was_exported_and_catches_a_changed_file(tiny_onnx_export, tmp_path):
    folder, adapter = tiny_onnx_export
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["backbones"] == {"sam": "tiny", "clip": "RegionSpot-Tiny-CLIP", "clip_precision": "float32"}
    assert manifest["checkpoints"]["adapter"]["path"] == str(adapter)
    assert manifest["preprocessing"]["sam_size"] == 128 and manifest["text"]["templates"] == ["{}."]
    decoder = manifest["graphs"]["decoder"]
    assert [i["name"] for i in decoder["inputs"]][:3] == ["image_embedding", "point_coords", "point_labels"]
    assert decoder["inputs"][1]["shape"] == ["regions", "points", 2]
    tokens = manifest["graphs"]["decoder_tokens"]  # no mask input: its regions share the first block's image side
    assert [i["name"] for i in tokens["inputs"]] == ["image_embedding", "point_coords", "point_labels"]
    assert (decoder["opset"], tokens["opset"]) == (17, 18)  # the TorchScript exporter's, torch.export's
    copy = tmp_path / "export"
    copy.mkdir()
    for file in folder.iterdir():
        (copy / file.name).write_bytes(file.read_bytes())
    (copy / "score.onnx").write_bytes((copy / "score.onnx").read_bytes() + b"\0")
    with pytest.raises(ValueError, match=r"score\.onnx is not the file the manifest names"):
        OnnxRegionPredictor(copy)
    (copy / "text.onnx").unlink()
    with pytest.raises(FileNotFoundError, match=r"text\.onnx is missing"):
        OnnxRegionPredictor(copy, verify=True)
    (copy / "manifest.json").write_text(json.dumps({**manifest, "format": "regionspot-onnx-1"}))
    with pytest.raises(ValueError, match=r"of format 'regionspot-onnx-1', .* export the model again"):
        OnnxRegionPredictor(copy)


def test_box_attention_adapters_are_refused_clearly(tmp_path):
    config = RegionSpotConfig.from_yaml(TINY_CONFIG)
    config.adapter.box_attention = True
    with pytest.raises(ValueError, match="box_attention is not exportable"):
        export_onnx(config, tmp_path)


def test_the_onnx_predictor_runs_with_torch_unimportable(tiny_onnx_export):
    """A subprocess in which importing torch, Lightning, open_clip or segment_anything fails, as where none is
    installed: the ONNX predictor still loads, predicts (segments everything, takes a list of images), and none of
    them is in sys.modules."""
    folder, _ = tiny_onnx_export
    done = run_without_torch(f"""
        import numpy as np
        from regionspot.onnx import OnnxRegionPredictor

        predictor = OnnxRegionPredictor({str(folder)!r})
        predictor.set_image(np.full((40, 60, 3), 120, np.uint8))
        result = predictor.predict(vocabulary=["cat", "dog"], boxes=[[2, 2, 30, 30]], points=[[[5, 5]]], top_k=1)
        assert result.masks.shape == (1, 40, 60) and result.labels[0][0] in ("cat", "dog")
        everything = predictor.predict_everything(vocabulary=["cat"], points_per_side=2, pred_iou_thresh=0.0,
                                                  stability_score_thresh=0.0)
        assert everything.masks.shape[1:] == (40, 60)
        assert len(predictor.predict_images([np.zeros((9, 9, 3), np.uint8)], boxes=[[[0, 0, 5, 5]]],
                                            vocabulary=["cat"])) == 1
    """)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]
