"""Training from a feature cache: the same adapter as training on the images with the same batches, with the image
encoders never built; a cache of other backbones, an unfinished one or one without CLIP maps is refused."""

from __future__ import annotations

import json

import lightning as L
import pytest
import torch
from synthetic_boxes import extraction_args, one_cpu_thread  # noqa: F401 (a fixture)

from regionspot import RegionSpotConfig
from regionspot.commands.extract import main as extract_main
from regionspot.data import AugmentConfig, DatasetConfig
from regionspot.data.feature_cache import MANIFEST, backbone_digest
from regionspot.data.toy import write_colour_boxes
from regionspot.training import BackboneSettings, OptimizerSettings, RegionDataModule, RegionSpotModule

pytestmark = pytest.mark.usefixtures("one_cpu_thread")
TINY = "tiny"
STEPS = 6
# Flips only: the one augmentation a cache can replay (it holds the mirrored view); resizes and crops change pixels.
FLIPS_ONLY = AugmentConfig(flip_prob=0.5, short_edges=[], crop_prob=0.0)


@pytest.fixture(scope="module")
def toy(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("toy")
    ann, images = write_colour_boxes(root, num_images=12)
    out = root / "features"
    extract_main(extraction_args(TINY, ann=ann, images=images, out=out, shard_size=5, batch_size=4))
    return {"ann": ann, "images": images, "features": out}


def _train(dataset: DatasetConfig, root, *, image_encoders: bool = True) -> RegionSpotModule:
    torch.manual_seed(0)
    config = RegionSpotConfig.from_yaml(TINY)
    module = RegionSpotModule(
        model_config=config,
        optimizer=OptimizerSettings(lr=3e-3, warmup_steps=2),
        backbones=BackboneSettings(image_encoders=image_encoders),
    )
    data = RegionDataModule(train={"toy": dataset}, batch_size=4, num_workers=0, augment=FLIPS_ONLY, max_regions=None)
    trainer = L.Trainer(
        accelerator="cpu",
        devices=1,
        max_steps=STEPS,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        use_distributed_sampler=False,
        limit_val_batches=0,
        gradient_clip_val=1.0,
        default_root_dir=str(root),
    )
    trainer.fit(module, data)
    return module


def _image_encoder_weights(module: RegionSpotModule) -> list[str]:
    return [
        n
        for n, _ in module.named_parameters()
        if n.startswith(("model.sam.sam.image_encoder.", "model.clip.model.visual."))
    ]


def test_training_from_the_cache_gives_the_adapter_of_training_on_the_images(toy, tmp_path):
    online = _train(DatasetConfig(ann_file=str(toy["ann"]), image_dir=str(toy["images"])), tmp_path / "online")
    # Without the image encoders: what stands in their place raises if called, so the frozen step never ran.
    cached = _train(DatasetConfig(features=str(toy["features"])), tmp_path / "cached", image_encoders=False)
    assert _image_encoder_weights(online) and not _image_encoder_weights(cached)
    online_state, cached_state = online.model.adapter.state_dict(), cached.model.adapter.state_dict()
    assert online_state.keys() == cached_state.keys()
    moved = max(
        (
            online_state[k]
            - RegionSpotModule(model_config=RegionSpotConfig.from_yaml(TINY)).model.adapter.state_dict()[k]
        )
        .abs()
        .max()
        for k in online_state
    )
    assert moved > 5e-3  # the adapter did train: AdamW moves an element by up to lr x steps = 1.2e-2
    for key, value in online_state.items():
        # The cache's features were computed in other batches than training's (SAM decodes a batch's boxes together):
        # equal to the last bits. AdamW's normalised step turns last-bit gradient differences into lr-sized moves
        # where a gradient is ~0 (attention's key biases: softmax ignores them), by up to 5e-4 here on AMD EPYC; a
        # cache of wrong features moves the adapter elsewhere by the whole lr x steps.
        torch.testing.assert_close(cached_state[key], value, rtol=1e-4, atol=1.5e-3, msg=key)


def test_a_cache_of_other_backbones_is_refused(toy, tmp_path):
    folder = tmp_path / "other"
    folder.mkdir()
    for path in toy["features"].iterdir():
        (folder / path.name).symlink_to(path)
    manifest = json.loads((toy["features"] / MANIFEST).read_text())
    other = RegionSpotConfig.from_yaml(TINY)
    other.sam.seed = 1
    manifest["backbone_digest"], manifest["backbones"]["sam"]["seed"] = backbone_digest(other), 1
    (folder / MANIFEST).unlink()
    (folder / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match=r"other backbones.*sam\.seed: cache 1, model 0"):
        _train(DatasetConfig(features=str(folder)), tmp_path)


def test_the_digest_follows_what_decides_the_features():
    config = RegionSpotConfig.from_yaml(TINY)
    digest = backbone_digest(config)
    config.sam.prompt_batch_size, config.clip.text_cache_dir, config.clip.templates = 7, "somewhere", "imagenet"
    assert backbone_digest(config) == digest  # the text side and decoder batching leave the features as they are
    for section, field, value in (("sam", "multimask", True), ("clip", "resize", "bilinear"), ("clip", "seed", 3)):
        changed = RegionSpotConfig.from_yaml(TINY)
        setattr(getattr(changed, section), field, value)
        assert backbone_digest(changed) != digest, field


def test_an_unfinished_cache_and_one_without_clip_maps_are_refused(toy, tmp_path):
    manifest = json.loads((toy["features"] / MANIFEST).read_text())
    for name, change, message in (
        ("unfinished", {"complete": False}, "not finished"),
        ("tokens_only", {"clip_maps": False}, "needs the CLIP maps"),
    ):
        folder = tmp_path / name
        folder.mkdir()
        for path in toy["features"].iterdir():
            if path.name != MANIFEST:
                (folder / path.name).symlink_to(path)
        (folder / MANIFEST).write_text(json.dumps({**manifest, **change}))
        with pytest.raises(ValueError, match=message):
            RegionDataModule(train={"toy": DatasetConfig(features=str(folder))}).setup("fit")


def test_train_py_fit_reads_a_cache_given_on_the_command_line(toy, tmp_path):
    from regionspot.training.cli import RegionSpotCLI

    run = tmp_path / "run"
    cli = RegionSpotCLI(
        args=[
            "fit",
            "--config=tiny",
            f"--data.train={{toy: {{features: {toy['features']}}}}}",
            f"--data.val={{features: {toy['features']}, ann_file: null, toy: false}}",  # from a cache, against its JSON
            "--data.augment.short_edges=[]",
            "--data.augment.crop_prob=0",
            "--trainer.max_steps=2",
            "--trainer.val_check_interval=2",
            f"--trainer.default_root_dir={run}",
            "--trainer.enable_progress_bar=false",
            "--trainer.enable_model_summary=false",
            "--logging.wandb=false",
        ]
    )
    assert (run / "adapter.safetensors").is_file()
    # Every data set came from a cache, validation's too: train.py built no image encoder, and validation scored.
    assert not cli.model.model.image_encoders_built and not _image_encoder_weights(cli.model)
    assert "val/AP" in cli.trainer.callback_metrics
    # Its checkpoint loads with them, ready to read images.
    (checkpoint,) = run.glob("**/last.ckpt")
    loaded = RegionSpotModule.load_from_checkpoint(checkpoint)
    assert loaded.model.image_encoders_built
    torch.testing.assert_close(loaded.model.adapter.state_dict(), cli.model.model.adapter.state_dict())


def test_data_that_read_images_are_refused_without_the_image_encoders(toy, tmp_path):
    images = DatasetConfig(ann_file=str(toy["ann"]), image_dir=str(toy["images"]))
    cached = DatasetConfig(features=str(toy["features"]))
    for train, val, named in (
        ({"cached": cached, "photos": images}, None, "photos read images"),
        ({"cached": cached}, images, "data.val read images"),
    ):
        module = RegionSpotModule(
            model_config=RegionSpotConfig.from_yaml(TINY), backbones=BackboneSettings(image_encoders=False)
        )
        data = RegionDataModule(train=train, val=val, num_workers=0)
        trainer = L.Trainer(
            accelerator="cpu", max_steps=1, logger=False, enable_checkpointing=False, use_distributed_sampler=False
        )
        with pytest.raises(ValueError, match=f"model.image_encoders is false, but {named}"):
            trainer.fit(module, data)
    # Called on images anyway (e.g. in a notebook), the model says what is missing and why.
    module = RegionSpotModule(
        model_config=RegionSpotConfig.from_yaml(TINY), backbones=BackboneSettings(image_encoders=False)
    )
    image = torch.zeros(32, 40, 3, dtype=torch.uint8).numpy()
    with pytest.raises(RuntimeError, match=r"SAM's image encoder was not built \(image_encoders=False"):
        module.frozen_features([image], [torch.tensor([[2.0, 2.0, 20.0, 20.0]])])


def _validate(module: RegionSpotModule, val: DatasetConfig) -> dict[str, float]:
    data = RegionDataModule(train={"toy": val}, val=val, val_name="toy", val_batch_size=5, num_workers=0)
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False)
    (metrics,) = trainer.validate(module, data, verbose=False)
    return metrics


def test_validation_from_a_cache_scores_as_validation_from_the_images(toy):
    torch.manual_seed(0)
    online = RegionSpotModule(model_config=RegionSpotConfig.from_yaml(TINY))
    cached = RegionSpotModule(
        model_config=RegionSpotConfig.from_yaml(TINY), backbones=BackboneSettings(image_encoders=False)
    )
    cached.model.adapter.load_state_dict(online.model.adapter.state_dict())
    from_images = _validate(online, DatasetConfig(ann_file=str(toy["ann"]), image_dir=str(toy["images"])))
    from_cache = _validate(cached, DatasetConfig(features=str(toy["features"])))
    assert from_images["val/AP"] > 0
    assert from_cache.keys() == from_images.keys()
    for name, value in from_images.items():  # the cache's tokens were decoded in other batches: last bits only
        assert abs(from_cache[name] - value) < 1e-4, name


def test_validation_from_a_cache_needs_the_very_annotation_file_it_was_extracted_from(toy, tmp_path):
    from regionspot.data.feature_cache import FeatureCache, read_ground_truth

    cache = FeatureCache(toy["features"])
    truth = read_ground_truth(cache)
    assert len(truth["images"]) == 12 and truth["annotations"]
    moved = tmp_path / "moved.json"
    moved.write_bytes(toy["ann"].read_bytes())
    assert read_ground_truth(cache, ann_file=moved) == truth
    changed = json.loads(toy["ann"].read_text())
    changed["annotations"] = changed["annotations"][1:]
    other = tmp_path / "other.json"
    other.write_text(json.dumps(changed))
    with pytest.raises(ValueError, match=r"other\.json is not the annotation file feature cache .* was extracted from"):
        read_ground_truth(cache, ann_file=other)
    with pytest.raises(FileNotFoundError, match=r"gone\.json, the annotation file .* give data\.val\.ann_file"):
        read_ground_truth(cache, ann_file=tmp_path / "gone.json")
