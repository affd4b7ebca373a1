"""One path from pixels to region features: the predictor, validation during training and evaluate.py agree.

The same image and boxes give the same class probabilities through all three consumers, validation's AP
with its defaults equals evaluate.py's with its defaults, and the predictor's SAM tokens and masks equal
segment_anything's own SamPredictor on real photos.
"""

from __future__ import annotations

import json
from collections import defaultdict

import lightning as L
import numpy as np
import pytest
import torch
from PIL import Image
from segment_anything import SamPredictor
from skimage import data as skimage_data
from synthetic_boxes import one_cpu_thread  # noqa: F401 (a fixture)
from torch.testing import assert_close

from regionspot import RegionSpotConfig, RegionSpotPredictor, build_regionspot
from regionspot.data import DatasetConfig
from regionspot.data.toy import write_colour_boxes
from regionspot.evaluation import runner
from regionspot.evaluation.lvis_eval import LVIS_METRICS
from regionspot.evaluation.runner import EvalSettings, evaluate
from regionspot.training import RegionDataModule, RegionSpotModule
from regionspot.transforms import prepare_prompts

pytestmark = pytest.mark.usefixtures("one_cpu_thread")
TINY = "tiny"


@pytest.fixture(scope="module")
def val_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("one_path")
    ann, images = write_colour_boxes(root, num_images=6, seed=3, size=(60, 90), split="val")
    return {"ann": ann, "images": images, "root": root}


@pytest.fixture(scope="module")
def evaluated(val_data):
    """evaluate.py with its defaults (GT boxes, softmax, 300 classes per region), seed 0."""
    out = val_data["root"] / "eval"
    settings = EvalSettings(
        config=TINY, ann=str(val_data["ann"]), images=str(val_data["images"]), out=str(out), progress=False
    )
    metrics = evaluate(settings)
    return metrics, json.loads((out / runner.DETECTIONS_FILE).read_text())


def _module() -> RegionSpotModule:
    torch.manual_seed(0)  # evaluate.py's seed: the same random tiny backbones and adapter
    return RegionSpotModule(model_config=RegionSpotConfig.from_yaml(TINY)).eval()


def _datamodule(val_data) -> RegionDataModule:
    val = DatasetConfig(ann_file=str(val_data["ann"]), image_dir=str(val_data["images"]))
    return RegionDataModule(train=None, val=val, val_name="colours", val_batch_size=4, num_workers=0)


def _by_region(detections: list[dict]) -> dict[tuple, dict[int, float]]:
    """(image id, box) -> {category id: score}."""
    table: dict[tuple, dict[int, float]] = defaultdict(dict)
    for det in detections:
        table[(det["image_id"], tuple(det["bbox"]))][det["category_id"]] = det["score"]
    return table


def test_predictor_validation_and_evaluate_give_the_same_class_probabilities(val_data, evaluated):
    _, eval_detections = evaluated
    module, data = _module(), _datamodule(val_data)
    data.setup("validate")
    module.use_data(vocabularies={}, val_set=data.val_set)
    for index, batch in enumerate(data.val_dataloader()):
        module.validation_step(batch, index)
    state = torch.cat(module.val_ap.detections).reshape(-1, 7)
    val_detections = [
        {"image_id": int(r[0]), "category_id": int(r[1]), "bbox": r[2:6], "score": r[6]} for r in state.tolist()
    ]

    gt = json.loads(val_data["ann"].read_text())
    category_ids = sorted(c["id"] for c in gt["categories"])
    torch.manual_seed(0)
    predictor = RegionSpotPredictor(build_regionspot(TINY))
    expected: dict[tuple, dict[int, float]] = {}
    for image in gt["images"]:
        boxes = [a["bbox"] for a in gt["annotations"] if a["image_id"] == image["id"]]
        predictor.set_image(Image.open(val_data["images"] / image["file_name"]))
        xyxy = [[x, y, x + w, y + h] for x, y, w, h in boxes]
        probs = predictor.predict(boxes=xyxy, vocabulary=data.val_set.vocabulary, return_all_scores=True).all_scores
        for box, row in zip(boxes, probs.tolist(), strict=True):
            expected[(image["id"], tuple(float(v) for v in box))] = dict(zip(category_ids, row, strict=True))

    from_validation, from_evaluate = _by_region(val_detections), _by_region(eval_detections)
    assert set(from_validation) == set(from_evaluate) == set(expected) and len(expected) == 6
    for region, probs in expected.items():
        assert set(from_validation[region]) == set(from_evaluate[region]) == set(probs)  # all 4 classes kept
        for category, prob in probs.items():
            assert_close(from_validation[region][category], prob, rtol=1e-5, atol=1e-7)
            assert_close(from_evaluate[region][category], prob, rtol=1e-5, atol=1e-7)


def test_validation_defaults_give_evaluate_defaults_ap(val_data, evaluated):
    metrics, _ = evaluated
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False)
    validated = trainer.validate(_module(), _datamodule(val_data), verbose=False)[0]
    assert 0 < metrics["AP"] < 1  # a real score, not a degenerate one
    scored = {key for key in LVIS_METRICS if metrics[key] >= 0}  # -1: no such classes; validation logs none
    assert {key.removeprefix("val/") for key in validated} == scored | set(COUNTS)
    assert {key: validated[f"val/{key}"] for key in COUNTS} == {key: 0 for key in COUNTS}
    for key in scored:  # equal up to Lightning logging them as float32
        assert validated[f"val/{key}"] == pytest.approx(metrics[key], abs=1e-6), key


COUNTS = ("skipped_images", "gt_boxes_dropped")  # logged beside val AP


def test_dirty_data_gives_validation_and_evaluate_the_same_ap_and_counts(tmp_path, caplog):
    """Unreadable images, and ground-truth boxes of an unknown category or of no usable area (negative, zero, outside
    the image, NaN), under one rule: the images and those boxes are left out of the scoring, counted and logged."""
    clean, images = write_colour_boxes(tmp_path, num_images=12, seed=4, size=(60, 90), split="val")
    data = json.loads(clean.read_text())
    for image in data["images"][:2]:
        (images / image["file_name"]).write_bytes(b"not an image")
    image = data["images"][2]
    bad_boxes = [[1, 1, 10, 10], [5, 5, -4, 6], [5, 5, 0, 6], [image["width"] + 10, 5, 5, 5], [float("nan"), 5, 5, 5]]
    for k, bbox in enumerate(bad_boxes):
        category = 999 if k == 0 else data["categories"][0]["id"]  # the first: a category the file does not list
        data["annotations"].append({"id": 9000 + k, "image_id": image["id"], "category_id": category, "bbox": bbox,
                                    "area": 1.0})  # fmt: skip
    ann = tmp_path / "dirty.json"
    ann.write_text(json.dumps(data))  # NaN as JSON's NaN, which Python and the official loaders read
    dirty = {"ann": ann, "images": images}
    settings = EvalSettings(config=TINY, ann=str(ann), images=str(images), out=str(tmp_path / "eval"), progress=False)
    metrics = evaluate(settings)
    assert "5 ground-truth boxes can be neither recognised nor scored" in caplog.text
    dropped = {"box_of_unknown_category": 1, "zero_area_box": 2, "box_outside_image": 1, "non_finite_box": 1}
    on_disk = json.loads((tmp_path / "eval" / runner.METRICS_FILE).read_text())["images"]
    assert on_disk["skipped"] == 2 and on_disk["gt_boxes_dropped"] == dropped
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False)
    with pytest.warns(UserWarning, match="validation left out 2 unreadable images"):
        validated = trainer.validate(_module(), _datamodule(dirty), verbose=False)[0]
    assert validated["val/skipped_images"] == 2 and validated["val/gt_boxes_dropped"] == 5
    scored = [key for key in LVIS_METRICS if metrics[key] >= 0]
    assert 0 < metrics["AP"] < 1 and {f"val/{key}" for key in scored} <= set(validated)
    for key in scored:
        assert validated[f"val/{key}"] == pytest.approx(metrics[key], abs=1e-6), key


def _photos() -> dict[str, np.ndarray]:
    return {"astronaut": skimage_data.astronaut(), "chelsea": skimage_data.chelsea(), "coffee": skimage_data.coffee()}


@pytest.mark.parametrize("name", ["astronaut", "chelsea", "coffee"])
@torch.no_grad()
def test_real_photos_give_sam_predictors_tokens_and_masks(tiny_model, name):
    photo = _photos()[name]
    height, width = photo.shape[:2]
    boxes = torch.tensor([[0.1 * width, 0.1 * height, 0.6 * width, 0.7 * height], [0, 0, width, height]])
    predictor = RegionSpotPredictor(tiny_model)
    predictor.set_image(photo)
    result = predictor.predict(boxes=boxes, vocabulary=["cat", "person", "cup"])
    prompts, _ = prepare_prompts(tiny_model.sam, image_size=(height, width), boxes=boxes)
    tokens = tiny_model.decode_regions(predictor._image, [prompts])[0].region_tokens

    reference = SamPredictor(tiny_model.sam.sam)
    reference.set_image(photo)  # resizes with PIL, as the package's one preprocessing does
    assert torch.equal(predictor._image.sam, reference.features)
    captured = []
    hook = reference.model.mask_decoder.transformer.register_forward_hook(lambda m, i, o: captured.append(o[0]))
    masks, scores, _ = reference.predict_torch(
        None, None, boxes=reference.transform.apply_boxes_torch(boxes, (height, width)), multimask_output=False
    )
    hook.remove()
    assert torch.equal(result.masks, masks[:, 0])
    assert torch.equal(result.mask_scores, scores[:, 0])
    # decode_regions decodes tokens only, computing the first block's image side once per image (a matmul of
    # another shape): equal up to float32 rounding (bit for bit on some CPUs, not on AMD EPYC).
    torch.testing.assert_close(tokens[:, 0], captured[0][:, 1], rtol=1e-5, atol=1e-5)


def test_training_reaches_the_predictors_inputs(val_data):
    """A data batch's image and the predictor's image file give the same backbone inputs and frozen features."""
    module, data = _module(), _datamodule(val_data)
    data.setup("validate")
    batch = next(iter(data.val_dataloader()))
    frozen = module.frozen_features(batch["images"][:1], batch["boxes"][:1])[0]
    prepared = module.model.preprocessor(batch["images"][0])

    predictor = RegionSpotPredictor(module.model)
    gt = json.loads(val_data["ann"].read_text())
    file_name = next(img["file_name"] for img in gt["images"] if img["id"] == batch["image_ids"][0])
    predictor.set_image(Image.open(val_data["images"] / file_name))
    mine = predictor._image.images[0]
    assert torch.equal(prepared.sam_pixels, mine.sam_pixels) and torch.equal(prepared.clip_pixels, mine.clip_pixels)
    prompts, _ = prepare_prompts(module.model.sam, image_size=mine.original_size, boxes=batch["boxes"][0])
    from_predictor = module.model.decode_regions(predictor._image, [prompts])[0]
    assert torch.equal(frozen.region_tokens, from_predictor.region_tokens)
    assert torch.equal(frozen.clip_tokens, from_predictor.clip_tokens)


def test_compiled_backbones_give_the_eager_frozen_features():
    """`compile_backbones` (torch.compile of SAM's image encoder and CLIP's visual blocks) changes the speed only:
    the frozen step's tokens, scores and CLIP map match the eager model's to float32 rounding. The graphs are
    captured as for inductor but run by the `aot_eager` backend: inductor's C++ code generation takes ~80 s here for
    the tiny model, and `benchmarks/gpu.sh` runs it (bench_predictor --compile) where it pays off."""
    model = build_regionspot(TINY).eval()
    image = np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8)
    prepared = model.preprocessor(image)
    boxes = torch.tensor([[4.0, 6, 40, 30]])
    prompts = [prepare_prompts(model.sam, image_size=prepared.original_size, boxes=boxes)[0]]
    eager = model.frozen_features([prepared], prompts)[0]
    model.compile_backbones(backend="aot_eager")
    compiled = model.frozen_features([prepared], prompts)[0]
    assert model.sam.sam.image_encoder._compiled_call_impl is not None  # the compiled call is what ran
    for name in ("region_tokens", "mask_scores", "clip_tokens"):
        assert_close(getattr(compiled, name), getattr(eager, name), rtol=1e-4, atol=1e-5, msg=name)
