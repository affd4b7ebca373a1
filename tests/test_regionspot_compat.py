"""Coming from RegionSpot: its released checkpoints load, and its inference choices are what they were.

RegionSpot's checkpoints are built here in its exact layout (detectron2's {"model": {"model.<name>": ...}}
with the frozen backbones and trainer entries beside the adapter), spelled out from its key names rather
than derived from our modules, so that the renaming is tested and not assumed.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import open_clip
import pytest
import torch
import torch.nn.functional as F
import torchvision
import torchvision.transforms.functional as TF
import yaml
from lvis_tiny import write_tiny_lvis
from PIL import Image
from safetensors.torch import load_file
from torch.testing import assert_close

from regionspot import RegionSpotConfig, RegionSpotPredictor, build_regionspot
from regionspot.checkpoint import CheckpointMismatchError, model_part, read_state_dict
from regionspot.commands.train import export_main
from regionspot.data.augment import resize_short_edge
from regionspot.evaluation.cli import run as evaluate_main
from regionspot.evaluation.detections import region_detections
from regionspot.evaluation.runner import EvalSettings, evaluate, plan_run
from regionspot.modeling.adapter import RegionFusionAdapter
from regionspot.modeling.clip import PROMPT_TEMPLATES, ClipBackbone, build_clip
from regionspot.modeling.losses import region_focal_loss
from regionspot.modeling.objective import Objective
from regionspot.modeling.preprocess import ImagePreprocessor
from regionspot.training.module import RegionSpotModule
from regionspot.transforms import prepare_prompts
from regionspot.vocabulary import read_class_names, vocabulary_from_categories

# (CLIP width, text dim) of RegionSpot-BB and -BL (BL@336 has BL's shapes).
VARIANTS = {"bb": (768, 512), "bl": (1024, 768)}
TINY_CLIP = "RegionSpot-Tiny-CLIP"


def regionspot_adapter_keys(width: int, text_dim: int, depth: int = 3, ffn: int = 2048) -> dict[str, tuple]:
    """RegionSpot's trainable entries and shapes: to_clip, decoder (post-norm layers), projector."""
    keys = {"to_clip.weight": (width, 256), "to_clip.bias": (width,)}
    for i in range(depth):
        layer = f"decoder.layers.{i}."
        for attn in ("self_attn", "multihead_attn"):
            keys[f"{layer}{attn}.in_proj_weight"] = (3 * width, width)
            keys[f"{layer}{attn}.in_proj_bias"] = (3 * width,)
            keys[f"{layer}{attn}.out_proj.weight"] = (width, width)
            keys[f"{layer}{attn}.out_proj.bias"] = (width,)
        keys |= {f"{layer}linear1.weight": (ffn, width), f"{layer}linear1.bias": (ffn,)}
        keys |= {f"{layer}linear2.weight": (width, ffn), f"{layer}linear2.bias": (width,)}
        for norm in ("norm1", "norm2", "norm3"):
            keys |= {f"{layer}{norm}.weight": (width,), f"{layer}{norm}.bias": (width,)}
    keys |= {"decoder.norm.weight": (width,), "decoder.norm.bias": (width,)}
    return keys | {"projector.weight": (text_dim, width), "projector.bias": (text_dim,)}


def ours(regionspot_key: str) -> str:
    return regionspot_key.replace("to_clip.", "input_proj.").replace("projector.", "output_proj.")


def write_release(path, adapter: dict[str, torch.Tensor], *, sam=None, clip=None) -> None:
    """A detectron2 `model_final.pth` of RegionSpot: every key under "model.", backbones and trainer state beside."""
    sam = sam if sam is not None else {"image_encoder.patch_embed.proj.weight": torch.randn(4, 3, 2, 2)}
    clip = clip if clip is not None else {"visual.conv1.weight": torch.randn(4, 3, 2, 2).half()}
    model = {f"model.{k}": v for k, v in adapter.items()}
    model |= {f"model.sam.{k}": v for k, v in sam.items()} | {f"model.clip_model.{k}": v for k, v in clip.items()}
    torch.save({"model": model, "trainer": {"iteration": 449_999, "hooks": {}}, "iteration": 449_999}, path)


def random_release(variant: str) -> dict[str, torch.Tensor]:
    return {k: torch.randn(shape) for k, shape in regionspot_adapter_keys(*VARIANTS[variant]).items()}


@pytest.mark.parametrize("variant", ["bb", "bl"])
def test_adapter_is_regionspots_under_other_names(variant):
    """Key for key and shape for shape (so 24,226,304 and 38,853,376 parameters: tests/test_adapter.py)."""
    width, text_dim = VARIANTS[variant]
    adapter = RegionFusionAdapter(token_dim=256, width=width, output_dim=text_dim)
    shapes = {k: tuple(v.shape) for k, v in adapter.state_dict().items()}
    assert shapes == {ours(k): v for k, v in regionspot_adapter_keys(width, text_dim).items()}


@pytest.mark.parametrize("variant", ["bb", "bl"])
def test_release_loads_through_a_model_config(tmp_path, variant):
    """Real-size backbones (SAM ViT-B + CLIP ViT-B/16 or L/14, random; 2-4 s): the adapter loads strictly, the
    frozen entries of the file are ignored."""
    source = random_release(variant)
    path = tmp_path / "model_final.pth"
    write_release(path, source)
    config = RegionSpotConfig.from_yaml(f"regionspot_{variant}")
    config.sam.checkpoint = config.clip.checkpoint = None
    config.adapter.checkpoint = str(path)
    model = build_regionspot(config)
    loaded = model.adapter.state_dict()
    assert loaded.keys() == {ours(k) for k in source}
    for key, tensor in source.items():
        assert torch.equal(loaded[ours(key)], tensor), key


@pytest.mark.parametrize("variant", ["bb", "bl"])
def test_export_converts_a_release(tmp_path, variant):
    source = random_release(variant)
    path = tmp_path / "model_final.pth"
    write_release(path, source)
    out = tmp_path / "adapter.safetensors"
    export_main(["--ckpt", str(path), "--out", str(out), "--config", f"regionspot_{variant}"])
    exported = load_file(out)
    assert exported.keys() == {ours(k) for k in source}
    assert all(torch.equal(exported[ours(k)], v) for k, v in source.items())
    config = RegionSpotConfig.from_yaml(out.with_suffix(".yaml"))
    assert config.adapter.checkpoint == str(out)
    shipped = RegionSpotConfig.from_yaml(f"regionspot_{variant}").clip
    assert config.clip.checkpoint == str(Path(shipped.checkpoint).resolve())  # absolute: the run folder can move
    assert dataclasses.replace(config.clip, checkpoint=None) == dataclasses.replace(shipped, checkpoint=None)


def test_export_says_which_config_a_release_needs(tmp_path):
    path = tmp_path / "model_final.pth"
    write_release(path, random_release("bl"))
    out = str(tmp_path / "a.safetensors")
    with pytest.raises(ValueError, match=r"RegionSpot-BL or BL@336 .*regionspot_bl .*describes RegionSpot-BB"):
        export_main(["--ckpt", str(path), "--out", out, "--config", "regionspot_bb"])
    with pytest.raises(ValueError, match=r"original RegionSpot checkpoint: give its model config, e\.g\. --config"):
        export_main(["--ckpt", str(path), "--out", out])
    torch.save({"input_proj.weight": torch.zeros(2, 2)}, tmp_path / "ours.pth")
    with pytest.raises(ValueError, match="not an original RegionSpot checkpoint"):
        export_main(["--ckpt", str(tmp_path / "ours.pth"), "--out", out, "--config", "regionspot_bb"])
    deeper = {**random_release("bb"), "decoder.layers.3.norm1.weight": torch.zeros(768)}
    write_release(path, deeper)
    with pytest.raises(CheckpointMismatchError, match=r"1 unexpected \(first: decoder\.layers\.3\.norm1\.weight"):
        export_main(["--ckpt", str(path), "--out", out, "--config", "regionspot_bb"])


def _regionspot_names(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    renamed = {k.replace("input_proj.", "to_clip.").replace("output_proj.", "projector."): v for k, v in state.items()}
    assert set(map(ours, renamed)) == set(state)
    return renamed


def test_release_backbones_are_used_only_when_asked(tiny_config, tmp_path):
    torch.manual_seed(11)
    trained = build_regionspot(tiny_config)
    path = tmp_path / "model_final.pth"
    write_release(
        path,
        _regionspot_names(trained.adapter.state_dict()),
        sam=trained.sam.sam.state_dict(),
        clip=trained.clip.model.state_dict(),
    )
    config = copy.deepcopy(tiny_config)
    config.adapter.checkpoint = str(path)
    config.sam.seed = config.clip.seed = 12  # random backbones other than the file's, unless it is asked for them
    adapter_only = build_regionspot(config)
    assert_close(adapter_only.adapter.state_dict(), trained.adapter.state_dict(), rtol=0, atol=0)
    assert not torch.equal(
        adapter_only.sam.sam.image_encoder.patch_embed.proj.weight,
        trained.sam.sam.image_encoder.patch_embed.proj.weight,
    )

    config.sam.checkpoint = config.clip.checkpoint = str(path)
    everything = build_regionspot(config)
    assert_close(everything.state_dict(), trained.state_dict(), rtol=0, atol=0)

    stripped = tmp_path / "model_final_modified.pth"  # what RegionSpot's tools/re_save_ckpt.py leaves
    torch.save(
        {"model": {f"model.{k}": v for k, v in _regionspot_names(trained.adapter.state_dict()).items()}}, stripped
    )
    config.sam.checkpoint = str(stripped)
    with pytest.raises(CheckpointMismatchError, match=r"without its frozen SAM weights.*sam\.checkpoint"):
        build_regionspot(config)
    plain = {k.removeprefix("model."): v for k, v in torch.load(stripped, weights_only=True)["model"].items()}
    assert model_part(plain, "adapter", path="plain").keys() == trained.adapter.state_dict().keys()


def test_a_file_that_needs_more_than_weights_says_how_to_resave_it(tmp_path):
    path = tmp_path / "model_final.pth"
    adapter = random_release("bb")
    torch.save({"model": {f"model.{k}": v for k, v in adapter.items()}, "cfg": argparse.Namespace(lr=1)}, path)
    with pytest.raises(CheckpointMismatchError, match=r"argparse\.Namespace.*weights_only=True") as info:
        read_state_dict(path)
    command = re.search(r'python -c "(.*)"', str(info.value)).group(1)
    subprocess.run([sys.executable, "-c", command], check=True)  # the advice works as given
    resaved = read_state_dict(tmp_path / "model_final_weights.pth")
    assert all(torch.equal(model_part(resaved, "adapter", path=path)[ours(k)], v) for k, v in adapter.items())


@torch.no_grad()
def test_regionspot_text_recipe_is_the_normalised_raw_mean():
    """prompt_mean "raw": open_clip's encode_text over the 81 prompts, averaged unnormalised, then normalised."""
    model, tokenizer = build_clip(model_name=TINY_CLIP).eval(), open_clip.get_tokenizer(TINY_CLIP)
    names = ["red circle", "bow_(weapon)", "traffic light"]
    raw = ClipBackbone(model=model, tokenizer=tokenizer, prompt_mean="raw").encode_vocabulary(names)
    normalized = ClipBackbone(model=model, tokenizer=tokenizer).encode_vocabulary(names)
    for i, name in enumerate(names):
        per_prompt = model.encode_text(tokenizer([t(name) for t in PROMPT_TEMPLATES["imagenet"]]))  # (81, E)
        mean = per_prompt.mean(dim=0)
        assert_close(raw[i], mean / mean.norm(), rtol=0, atol=1e-7)
    assert (raw - normalized).abs().max() > 1e-3  # the two recipes are different embeddings


def test_regionspot_resize_is_torchvisions_bilinear_without_antialias(image):
    """RegionSpot resized the [0, 1] image tensor with torchvision's `resize` (bilinear, no antialiasing)."""
    prepared = ImagePreprocessor(sam_size=128, clip_size=64, clip_resize="bilinear")(image)
    pixels = torch.from_numpy(image).permute(2, 0, 1).float() / 255
    expected = TF.resize(pixels, [64, 64], interpolation=TF.InterpolationMode.BILINEAR, antialias=False)
    assert torch.equal(prepared.clip_pixels, expected)
    bicubic = ImagePreprocessor(sam_size=128, clip_size=64)(image).clip_pixels
    assert not torch.allclose(bicubic, expected, atol=1e-3)
    with pytest.raises(ValueError, match="clip_resize"):
        ImagePreprocessor(sam_size=128, clip_size=64, clip_resize="nearest")


def test_regionspot_reading_of_class_names():
    names = ["bow_(weapon)", "wall-other-merged", "sky-stuff", "aerosol_can", "-other"]
    assert read_class_names(names, style="raw") == ["bow_(weapon)", "wall", "sky", "aerosol_can", "-other"]
    assert read_class_names(names) == ["bow", "wall", "sky", "aerosol can", "-other"]
    with pytest.raises(ValueError, match="class-name style"):
        read_class_names(names, style="clean")


def test_evaluation_and_training_read_class_names_as_the_model_config_says(tiny_config, tmp_path):
    data = write_tiny_lvis(tmp_path / "lvis")
    raw = copy.deepcopy(tiny_config)
    raw.clip.class_names = "raw"
    config_path = tmp_path / "raw.yaml"
    config_path.write_text(yaml.safe_dump(raw.to_dict()))
    settings = EvalSettings(config=str(config_path), ann=str(data["ann"]), images=str(data["images"]), out="o")
    assert plan_run(settings)[1].vocabulary == ["red_square", "blue_box_(container)", "green_disc", "yellow_bar"]
    settings.config = "tiny"
    assert plan_run(settings)[1].vocabulary == ["red square", "blue box", "green disc", "yellow bar"]

    for config, expected in ((raw, ["blue_box_(container)"]), (tiny_config, ["blue box"])):
        module = RegionSpotModule(model_config=config)
        module.use_data(vocabularies={"lvis": ["blue_box_(container)"]})
        assert module.vocabularies == {"lvis": expected}


def test_loss_reductions_equal_a_direct_computation():
    """Reduction "images" is RegionSpot's per-GPU-batch loss: the (B, n, C) focal loss, mean over boxes, summed
    over images and classes."""
    batch, boxes, classes = 2, 5, 7
    logits, labels = torch.randn(batch, boxes, classes) * 3, torch.randint(0, classes, (batch, boxes))
    targets = F.one_hot(labels, classes).float()
    loss = torchvision.ops.sigmoid_focal_loss(logits, targets, alpha=0.25, gamma=2.0)  # (B, n, C)
    regionspot = loss.mean(1).sum() / boxes * boxes  # its sigmoid_focal_loss(...) * n_box, as written
    flat_logits, flat_labels = logits.flatten(0, 1), labels.flatten()
    images = region_focal_loss(flat_logits, flat_labels, reduction="images", boxes_per_image=[boxes] * batch)
    assert_close(images, regionspot)
    assert_close(region_focal_loss(flat_logits, flat_labels), loss.sum() / (batch * boxes))
    # Unequal images: each image's mean counts once, whatever its box count; "boxes" weighs every box alike.
    per_box = loss.flatten(0, 1).sum(-1)
    uneven = region_focal_loss(flat_logits, flat_labels, reduction="images", boxes_per_image=[2, 8])
    assert_close(uneven, per_box[:2].mean() + per_box[2:].mean())
    with pytest.raises(ValueError, match="boxes_per_image summing to N=10"):
        region_focal_loss(flat_logits, flat_labels, reduction="images", boxes_per_image=[2, 3])
    with pytest.raises(ValueError, match="reduction must be one of"):
        region_focal_loss(flat_logits, flat_labels, reduction="mean")


@torch.no_grad()
def test_fixed_clip_precision_is_openais_float16_whatever_the_run(tiny_config, image):
    config = copy.deepcopy(tiny_config)
    config.clip.precision = "float16"
    torch.manual_seed(3)
    model = build_regionspot(config).eval()
    visual = model.clip.model.visual
    assert visual.conv1.weight.dtype == torch.float16 and visual.ln_pre.weight.dtype == torch.float32
    reference = open_clip.create_model(TINY_CLIP, precision="fp16").eval()  # open_clip's OpenAI-style fp16
    reference.load_state_dict(model.clip.model.state_dict())
    pixels = model.clip.normalize(model.preprocessor(image).clip_pixels[None])
    assert pixels.dtype == torch.float16
    with torch.autocast("cpu", dtype=torch.bfloat16):  # a bf16 run: the fixed CLIP still computes in fp16
        tokens = model.clip.feature_map(pixels)
    last = [len(reference.visual.transformer.resblocks) - 1]
    expected = reference.visual.forward_intermediates(pixels, indices=last, intermediates_only=True, output_fmt="NLC")
    assert tokens.dtype == torch.float16
    assert torch.equal(tokens[:, 1:], expected["image_intermediates"][-1])

    model.cast_backbones(torch.bfloat16)  # what training does with backbone_precision
    assert visual.conv1.weight.dtype == torch.float16 and next(model.sam.parameters()).dtype == torch.bfloat16
    auto = build_regionspot(tiny_config)
    auto.cast_backbones(torch.bfloat16)
    assert auto.clip.dtype == torch.bfloat16


@torch.no_grad()
def test_region_features_are_divided_by_norm_plus_epsilon(tiny_model):
    """RegionSpot's x / (|x| + 1e-7), seen on features of norm ~1e-6, where it differs from F.normalize."""
    model = copy.deepcopy(tiny_model)
    model.adapter.output_proj.weight.mul_(1e-6)
    model.adapter.output_proj.bias.mul_(1e-6)
    prompts, _ = prepare_prompts(model.sam, image_size=(40, 60), boxes=torch.tensor([[2.0, 3.0, 30.0, 20.0]]))
    frozen = model.frozen_features([model.preprocessor(np.full((40, 60, 3), 90, np.uint8))], [prompts])
    fused = model.adapter(frozen[0].region_tokens.flatten(0, 1)[None], frozen[0].clip_tokens[None])[0].float()
    features = model.region_features(frozen)[0][:, 0]
    assert_close(features, fused / (fused.norm(dim=-1, keepdim=True) + 1e-7))
    assert not torch.allclose(features, F.normalize(fused, dim=-1), atol=1e-3)


def test_training_step_reduces_as_loss_reduction_says(tiny_config, image, monkeypatch):
    """The module hands each image's box count to the loss: "images" is the sum of per-image means."""
    boxes = [
        torch.tensor([[2.0, 3.0, 40.0, 30.0]]),
        torch.tensor([[5.0, 5.0, 60.0, 50.0], [0, 0, 90, 80], [9, 9, 20, 20]]),
    ]
    labels = [torch.tensor([1]), torch.tensor([0, 2, 1])]
    batch = {"images": [image, image[::-1].copy()], "boxes": boxes, "labels": labels, "dataset": "toy"}
    losses = {}
    for reduction in ("boxes", "images"):
        torch.manual_seed(0)
        module = RegionSpotModule(model_config=tiny_config, objective=Objective(loss_reduction=reduction)).eval()
        monkeypatch.setattr(module, "log", lambda *args, **kwargs: None)
        module.use_data(vocabularies={"toy": ["red", "green", "blue"]})
        losses[reduction] = module.training_step(batch, 0)
        logits = [x[:, 0] for x in module(batch["images"], boxes, "toy")]
    per_image = [region_focal_loss(x, y) for x, y in zip(logits, labels, strict=True)]
    assert_close(losses["images"], per_image[0] + per_image[1])
    assert_close(losses["boxes"], region_focal_loss(torch.cat(logits), torch.cat(labels)))
    with pytest.raises(ValueError, match="loss_reduction must be one of"):
        RegionSpotModule(model_config=tiny_config, objective=Objective(loss_reduction="sum"))


def test_candidates_are_the_most_probable_pairs_before_the_box_scores():
    probs = torch.tensor([[0.6, 0.3, 0.1], [0.5, 0.4, 0.1]])
    box_scores = torch.tensor([0.1, 1.0])
    boxes = torch.tensor([[0.0, 0, 10, 10], [5, 5, 20, 20]])
    kept = region_detections(
        image_id=1, boxes=boxes, class_probs=probs, category_ids=[1, 2, 3], box_scores=box_scores, max_candidates=3
    )
    # RegionSpot's rule, computed directly: the 3 most probable pairs (0.6, 0.5, 0.4), each times its box's score.
    flat = probs.flatten().topk(3)
    expected = sorted(
        ((int(i) // 3, int(i) % 3 + 1, float(p * box_scores[int(i) // 3])) for p, i in zip(*flat, strict=True)),
    )
    got = sorted((0 if d["bbox"][0] == 0 else 1, d["category_id"], d["score"]) for d in kept)
    assert [(r, c) for r, c, _ in got] == [(r, c) for r, c, _ in expected]
    assert [s for *_, s in got] == pytest.approx([s for *_, s in expected])
    unbounded = region_detections(
        image_id=1, boxes=boxes, class_probs=probs, category_ids=[1, 2, 3], box_scores=box_scores
    )
    assert len(unbounded) == 6  # without candidates, (region 1, class 3) at 0.1 x 1.0 beats (region 0, class 1) at 0.06
    gt_boxes = region_detections(
        image_id=1, boxes=boxes, class_probs=probs, category_ids=[1, 2, 3], max_candidates=6, max_per_image=3
    )
    assert gt_boxes == region_detections(
        image_id=1, boxes=boxes, class_probs=probs, category_ids=[1, 2, 3], max_per_image=3
    )


@pytest.fixture(scope="module")
def tiny_lvis(tmp_path_factory):
    return write_tiny_lvis(tmp_path_factory.mktemp("lvis"))


def _evaluate(tiny_lvis, out, **kwargs):
    settings = EvalSettings(
        config="tiny", ann=str(tiny_lvis["ann"]), images=str(tiny_lvis["images"]), out=str(out),
        progress=False, **kwargs,
    )  # fmt: skip
    evaluate(settings)
    return json.loads((out / "detections.json").read_text())


def test_test_time_resize_feeds_sam_and_clip_the_resized_image_and_keeps_boxes_in_pixels(tiny_lvis, tmp_path):
    detections = _evaluate(tiny_lvis, tmp_path / "resized", test_short_edge=80, test_max_size=100, masks=False)
    gt = json.loads(tiny_lvis["ann"].read_text())
    image = gt["images"][0]
    boxes = [a["bbox"] for a in gt["annotations"] if a["image_id"] == image["id"]]
    assert {tuple(d["bbox"]) for d in detections if d["image_id"] == image["id"]} == {
        tuple(map(float, b)) for b in boxes
    }
    rgb = np.array(Image.open(tiny_lvis["images"] / image["coco_url"].rsplit("/", 1)[1]).convert("RGB"))
    xyxy = np.array([[x, y, x + w, y + h] for x, y, w, h in boxes], dtype=np.float32)
    frame, frame_boxes = resize_short_edge(rgb, xyxy, 80, 100)  # 48x64 -> 75x100 (the long edge caps it)
    assert frame.shape[:2] == (75, 100)
    torch.manual_seed(0)
    predictor = RegionSpotPredictor(build_regionspot("tiny"))
    predictor.set_image(frame)
    categories = sorted(gt["categories"], key=lambda c: c["id"])
    vocabulary = vocabulary_from_categories(categories)
    probs = predictor.predict(boxes=frame_boxes, vocabulary=vocabulary, return_all_scores=True).all_scores
    for det in (d for d in detections if d["image_id"] == image["id"]):
        region = [tuple(map(float, b)) for b in boxes].index(tuple(det["bbox"]))
        column = [c["id"] for c in categories].index(det["category_id"])
        assert det["score"] == pytest.approx(float(probs[region, column]), rel=1e-5)


def test_heads_under_the_runs_mixed_precision(tiny_lvis, tmp_path):
    full = _evaluate(tiny_lvis, tmp_path / "fp32", precision="bf16-mixed", masks=False)
    mixed = _evaluate(tiny_lvis, tmp_path / "bf16", precision="bf16-mixed", masks=False, autocast_heads=True)
    key = lambda d: (d["image_id"], tuple(d["bbox"]), d["category_id"])  # noqa: E731
    scores = {key(d): d["score"] for d in full}
    assert len(mixed) == len(full) and all(key(d) in scores for d in mixed)
    differences = [abs(d["score"] - scores[key(d)]) for d in mixed]
    assert 0 < max(differences) < 0.05  # bf16 rounding in the decoder, the adapter and the scores, and only that


def test_the_protocol_flags_reach_evaluate(tiny_lvis, tmp_path):
    out = tmp_path / "cli"
    args = ["--config", "tiny", "--ann", str(tiny_lvis["ann"]), "--images", str(tiny_lvis["images"])]
    evaluate_main([*args, "--out", str(out), "--no-masks", "--no-progress", "--max-candidates", "2"])
    per_image = Counter(d["image_id"] for d in json.loads((out / "detections.json").read_text()))
    assert set(per_image.values()) == {2}  # 4 classes x every box, cut to the 2 most probable pairs
    assert json.loads((out / "run.json").read_text())["settings"]["regionspot_protocol"] == [2, None, 1333, False]
