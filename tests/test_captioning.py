"""The captioner on the one frozen base: built from config, trained through the module, exported, predicted, scored."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
from PIL import Image
from synthetic_boxes import one_cpu_thread  # noqa: F401 (a fixture)
from test_training import make_trainer

from regionspot import RegionSpotConfig, RegionSpotPredictor, build_regionspot
from regionspot.config import CaptionConfig
from regionspot.data import AugmentConfig, DatasetConfig
from regionspot.data.toy import write_colour_boxes
from regionspot.evaluation.cli import run as evaluate_main
from regionspot.modeling.caption_tokenizer import CaptionTokenizer
from regionspot.training import OptimizerSettings, RegionDataModule, RegionSpotModule, export_adapter
from regionspot.transforms import prepare_prompts

pytestmark = pytest.mark.usefixtures("one_cpu_thread")
TINY = "tiny"


@pytest.fixture(scope="module")
def toy_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("toy_captions")
    return {
        "train": write_colour_boxes(root, num_images=24),
        "val": write_colour_boxes(root, num_images=8, seed=1, split="val"),
    }


def caption_config(toy_data, **caption) -> RegionSpotConfig:
    config = RegionSpotConfig.from_yaml(TINY)
    annotations = json.loads(toy_data["train"][0].read_text())["annotations"]
    vocabulary = CaptionTokenizer.from_corpus(a["caption"] for a in annotations).token_ids
    settings = {"depth": 1, "width": 32, "num_heads": 2, "mlp_dim": 64, "dropout": 0.0, "max_length": 12}
    config.caption = CaptionConfig(token_ids=vocabulary, **{**settings, **caption})
    return config


def caption_data(toy_data) -> RegionDataModule:
    (train_ann, images), (val_ann, _) = toy_data["train"], toy_data["val"]
    return RegionDataModule(
        train={"toy": DatasetConfig(ann_file=str(train_ann), image_dir=str(images), captions=True)},
        val=DatasetConfig(ann_file=str(val_ann), image_dir=str(images), captions=True),
        val_name="toy_val",
        batch_size=8,
        val_batch_size=8,
        num_workers=0,
        augment=AugmentConfig(short_edges=[], flip_prob=0.5, crop_prob=0.0),
    )


def test_built_captioner_reads_the_fused_feature_sams_token_and_the_box(toy_data, image):
    model = build_regionspot(caption_config(toy_data)).eval()
    assert model.caption_decoder.condition_dim == model.clip.embed_dim + model.sam.token_dim + 4
    predictor = RegionSpotPredictor(model)
    predictor.set_image(image)
    result = predictor.predict(boxes=[[30, 20, 90, 60], [100, 50, 150, 90]], vocabulary=["red", "blue"], caption=True)
    assert len(result.captions) == 2 and all(isinstance(c, str) for c in result.captions)
    assert result.to_list()[0]["caption"] == result.captions[0]
    # the batched path gives the same captions as one image at a time
    batched = predictor.predict_images(
        [image], boxes=[[[30, 20, 90, 60], [100, 50, 150, 90]]], vocabulary=["red"], caption=True
    )
    assert batched[0].captions == result.captions


def test_the_heads_read_where_each_region_is(toy_data, image):
    """The last 4 columns of `region_condition` are each prompt's box over the image's size, mapped to [-1, 1]."""
    model = build_regionspot(caption_config(toy_data)).eval()
    height, width = image.shape[:2]
    boxes = torch.tensor([[30.0, 20.0, 90.0, 60.0], [100.0, 50.0, 150.0, 90.0]])
    prompts, _ = prepare_prompts(model.sam, image_size=(height, width), boxes=boxes)
    frozen = model.frozen_features([model.preprocessor(image)], [prompts])
    condition = model.region_condition(frozen, model.region_features(frozen))
    assert condition.shape == (2, model.caption_decoder.condition_dim)
    torch.testing.assert_close(condition[:, -4:], boxes / torch.tensor([width, height, width, height]) * 2 - 1)


def test_caption_needs_a_captioner(tiny_model, image):
    predictor = RegionSpotPredictor(tiny_model)
    predictor.set_image(image)
    with pytest.raises(ValueError, match="caption: section"):
        predictor.predict(boxes=[[0, 0, 20, 20]], vocabulary=["red"], caption=True)
    assert predictor.predict(boxes=[[0, 0, 20, 20]], vocabulary=["red"]).captions is None


@pytest.fixture(scope="module")
def trained(toy_data, tmp_path_factory):
    """The adapter and the captioner trained together on the toy captions; returns (module, trainer, run folder)."""
    root = tmp_path_factory.mktemp("caption_run")
    torch.manual_seed(0)
    module = RegionSpotModule(
        model_config=caption_config(toy_data), optimizer=OptimizerSettings(lr=3e-3, warmup_steps=3)
    )
    untrained = {k: v.clone() for k, v in module.model.caption_decoder.state_dict().items()}
    trainer = make_trainer(
        root, max_steps=60, limit_val_batches=1.0, val_check_interval=60, check_val_every_n_epoch=None
    )
    trainer.fit(module, datamodule=caption_data(toy_data))
    trainer.save_checkpoint(root / "last.ckpt")
    assert any(not torch.equal(untrained[k], v) for k, v in module.model.caption_decoder.state_dict().items())
    return module, trainer, root


def test_joint_training_lowers_the_caption_loss_and_logs_both_losses(trained):
    _, trainer, _ = trained
    metrics = trainer.callback_metrics
    assert {"train/caption_loss", "train/focal_loss", "val/caption_loss"} <= set(metrics)
    # next-token loss over a ~20-token vocabulary starts near log(20) = 3.0; the toy captions are 5 words
    assert float(metrics["val/caption_loss"]) < 1.0
    assert "val/AP" in metrics


def test_checkpoint_and_export_hold_the_captioner(trained, tmp_path, toy_data, image):
    module, _, root = trained
    state = torch.load(root / "last.ckpt", map_location="cpu", weights_only=True)["state_dict"]
    assert any(k.startswith("model.caption_decoder.") for k in state)
    assert all(k.startswith(("model.adapter.", "model.caption_decoder.")) for k in state)
    _, model_yaml = export_adapter(root / "last.ckpt", tmp_path / "adapter.safetensors")
    assert (tmp_path / "caption_decoder.safetensors").is_file()
    exported = build_regionspot(model_yaml).eval()
    for name, tensor in module.model.caption_decoder.state_dict().items():
        torch.testing.assert_close(exported.caption_decoder.state_dict()[name], tensor)
    reloaded = RegionSpotModule.load_from_checkpoint(root / "last.ckpt")
    for name, tensor in module.model.caption_decoder.state_dict().items():
        torch.testing.assert_close(reloaded.model.caption_decoder.state_dict()[name], tensor)


def test_trained_captioner_names_colour_and_side(trained, toy_data):
    module, _, _ = trained
    model = module.model.eval()
    predictor = RegionSpotPredictor(model)
    (val_ann, images) = toy_data["val"]
    gt = json.loads(val_ann.read_text())
    right = 0
    for img, ann in zip(gt["images"], gt["annotations"], strict=True):
        rgb = np.array(Image.open(images / img["file_name"]).convert("RGB"))
        x, y, w, h = ann["bbox"]
        predictor.set_image(rgb)
        caption = predictor.predict(boxes=[[x, y, x + w, y + h]], vocabulary=["red"], caption=True).captions[0]
        right += caption.split()[:2] == ann["caption"].split()[:2]  # "a red ..."
    assert right >= len(gt["annotations"]) // 2


def test_frozen_adapter_stays_as_given(toy_data, tmp_path):
    config = caption_config(toy_data)
    with pytest.raises(ValueError, match=r"adapter\.checkpoint"):
        RegionSpotModule(model_config=config, train_adapter=False)
    from safetensors.torch import save_file

    adapter = build_regionspot(config).adapter
    save_file({k: v.contiguous() for k, v in adapter.state_dict().items()}, str(tmp_path / "a.safetensors"))
    config.adapter.checkpoint = str(tmp_path / "a.safetensors")
    module = RegionSpotModule(
        model_config=config, train_adapter=False, optimizer=OptimizerSettings(lr=3e-3, warmup_steps=1)
    )
    before = {k: v.clone() for k, v in module.model.adapter.state_dict().items()}
    make_trainer(tmp_path, max_steps=4, limit_val_batches=0).fit(module, datamodule=caption_data(toy_data))
    for name, tensor in module.model.adapter.state_dict().items():
        assert torch.equal(tensor, before[name]), name
    assert not module.model.adapter.training
    no_captioner = dataclasses.replace(config, caption=None)
    with pytest.raises(ValueError, match="nothing to train"):
        RegionSpotModule(model_config=no_captioner, train_adapter=False)


def test_evaluate_captions_scores_resumes_and_refuses_a_recogniser(trained, tmp_path, toy_data, caplog):
    _, _, root = trained
    _, model_yaml = export_adapter(root / "last.ckpt", tmp_path / "run" / "adapter.safetensors")
    val_ann, images = toy_data["val"]
    out = tmp_path / "captions"
    args = ["captions", "--config", str(model_yaml), "--ann", str(val_ann), "--images", str(images), "--out", str(out)]
    metrics = evaluate_main([*args, "--batch-size", "3", "--no-progress"])
    assert metrics["regions"] == 8 and metrics["images"]["skipped"] == 0
    assert 0.0 <= metrics["Bleu_4"] <= 1.0 and metrics["CIDEr"] >= 0.0
    captions = json.loads((out / "captions.json").read_text())
    assert set(captions) == {str(a["id"]) for a in json.loads(val_ann.read_text())["annotations"]}
    # a killed run: the last line half-written, two images lost; the rerun captions only what is missing
    part = out / "captions.rank0.jsonl"
    lines = part.read_text().splitlines()
    part.write_text("\n".join(lines[:-2]) + "\n" + lines[-2][:10])
    caplog.set_level("INFO")
    again = evaluate_main([*args, "--no-progress"])
    assert "resuming: 6 images already captioned, 2 to go" in caplog.text
    assert again["CIDEr"] == pytest.approx(metrics["CIDEr"])
    with pytest.raises(SystemExit, match="no caption: section"):
        evaluate_main(
            ["captions", "--config", TINY, "--ann", str(val_ann), "--images", str(images), "--out", str(tmp_path / "x")]
        )
