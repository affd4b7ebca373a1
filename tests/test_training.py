"""Training: the tiny model learns colour on CPU, checkpoints hold the adapter only, resume is exact, export loads."""

from __future__ import annotations

import lightning as L
import numpy as np
import pytest
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from synthetic_boxes import one_cpu_thread  # noqa: F401 (a fixture)

from regionspot import RegionSpotConfig, build_regionspot
from regionspot.data import AugmentConfig, DatasetConfig
from regionspot.data.toy import write_colour_boxes
from regionspot.modeling.preprocess import PreparedImage
from regionspot.training import RegionDataModule, RegionSpotModule, export_adapter
from regionspot.training.settings import grouped_settings

pytestmark = pytest.mark.usefixtures("one_cpu_thread")
TINY = "tiny"


@pytest.fixture(scope="module")
def toy_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("toy")
    train = write_colour_boxes(root, num_images=32)
    return {"train": train, "val": write_colour_boxes(root, num_images=12, seed=1, split="val")}


def make_data(toy_data, **kwargs) -> RegionDataModule:
    (train_ann, train_images), (val_ann, val_images) = toy_data["train"], toy_data["val"]
    return RegionDataModule(
        train={"toy": DatasetConfig(ann_file=str(train_ann), image_dir=str(train_images))},
        val=DatasetConfig(ann_file=str(val_ann), image_dir=str(val_images)),
        val_name="toy_val",
        batch_size=4,
        val_batch_size=8,
        **{"num_workers": 0, "augment": AugmentConfig(short_edges=[64, 80], max_size=128, crop_prob=0.3), **kwargs},
    )


def make_trainer(root, **kwargs) -> L.Trainer:
    settings = {
        "accelerator": "cpu",
        "devices": 1,
        "logger": False,
        "enable_checkpointing": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "use_distributed_sampler": False,
        "num_sanity_val_steps": 0,
        "limit_val_batches": 0,
        "gradient_clip_val": 1.0,
        "default_root_dir": str(root),
    }
    return L.Trainer(**{**settings, **kwargs})


def make_module(config: RegionSpotConfig | None = None, **kwargs) -> RegionSpotModule:
    torch.manual_seed(0)
    config = config or RegionSpotConfig.from_yaml(TINY)
    return RegionSpotModule(**grouped_settings({"model_config": config, "lr": 3e-3, "warmup_steps": 3, **kwargs}))


def adapter_state(module: RegionSpotModule) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.model.adapter.state_dict().items()}


class LossRecorder(L.Callback):
    def __init__(self) -> None:
        self.losses: list[float] = []
        self.backbones_trained = False

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.losses.append(float(outputs["loss"]))
        self.backbones_trained |= pl_module.model.sam.training or pl_module.model.clip.training


def validation_ap(module: RegionSpotModule, data: RegionDataModule, root) -> float:
    metrics = make_trainer(root, limit_val_batches=1.0).validate(module, data, verbose=False)[0]
    return metrics["val/AP"]


@pytest.fixture(scope="module")
def trained(toy_data, tmp_path_factory):
    root = tmp_path_factory.mktemp("trained")
    module, data, recorder = make_module(), make_data(toy_data), LossRecorder()
    frozen = {k: v.clone() for k, v in module.model.state_dict().items() if not k.startswith("adapter.")}
    ap_before = validation_ap(module, data, root)
    trainer = make_trainer(root, max_steps=12, callbacks=[recorder])
    trainer.fit(module, data)
    ap_after = validation_ap(module, data, root)
    return {
        "module": module,
        "data": data,
        "trainer": trainer,
        "frozen": frozen,
        "recorder": recorder,
        "ap": (ap_before, ap_after),
        "root": root,
    }


def test_training_lowers_the_loss_and_raises_validation_ap(trained):
    losses = trained["recorder"].losses
    assert len(losses) == 12
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last < 0.5 * first, losses
    ap_before, ap_after = trained["ap"]
    assert ap_after > ap_before + 0.2 and ap_after > 0.8, trained["ap"]


def test_only_the_adapter_trains(trained):
    module, trainer = trained["module"], trained["trainer"]
    assert not trained["recorder"].backbones_trained  # SAM and CLIP stayed in eval mode in every step
    for key, value in module.model.state_dict().items():
        if key in trained["frozen"]:
            torch.testing.assert_close(value, trained["frozen"][key], rtol=0, atol=0)
    optimized = {id(p) for group in trainer.optimizers[0].param_groups for p in group["params"]}
    assert optimized == {id(p) for p in module.model.adapter.parameters()}


def test_the_softmax_loss_alone_trains_the_names(toy_data, tmp_path):
    """softmax_loss_weight is a naming loss of its own: with the focal loss off, it alone lowers the loss and raises
    validation AP, and the step logs it."""
    module, data, recorder = (
        make_module(focal_loss_weight=0.0, softmax_loss_weight=1.0),
        make_data(toy_data),
        LossRecorder(),
    )
    ap_before = validation_ap(module, data, tmp_path)
    trainer = make_trainer(tmp_path, max_steps=12, callbacks=[recorder])
    trainer.fit(module, data)
    assert np.mean(recorder.losses[-3:]) < np.mean(recorder.losses[:3])
    assert validation_ap(module, data, tmp_path) > ap_before
    assert trainer.callback_metrics["train/focal_loss"] > 0  # still reported, though weighted 0
    softmax = trainer.callback_metrics["train/softmax_loss"].item()
    assert abs(softmax - recorder.losses[-1]) < 1e-5  # the step's loss is the softmax loss alone


def test_the_distillation_loss_pulls_region_features_to_clips_own_region_embeddings(toy_data, tmp_path):
    """distill_loss_weight alone (the naming losses off) trains the adapter's features towards
    `clip_region_embeddings`: the logged distillation loss is the step's loss and falls; it needs CLIP's visual
    tower."""
    module, data, recorder = (
        make_module(focal_loss_weight=0.0, distill_loss_weight=1.0),
        make_data(toy_data, augment=AugmentConfig(short_edges=[], crop_prob=0.0, flip_prob=0.0)),
        LossRecorder(),
    )
    trainer = make_trainer(tmp_path, max_steps=12, callbacks=[recorder])
    trainer.fit(module, data)
    assert np.mean(recorder.losses[-3:]) < 0.8 * np.mean(recorder.losses[:3]), recorder.losses
    assert abs(trainer.callback_metrics["train/distill_loss"].item() - recorder.losses[-1]) < 1e-5
    with pytest.raises(ValueError, match="visual tower"):
        make_module(distill_loss_weight=1.0, image_encoders=False)
    with pytest.raises(ValueError, match="must be >= 0"):
        make_module(distill_loss_weight=-1.0)


def test_checkpoint_holds_the_adapter_and_config_and_export_gives_the_same_logits(trained, tmp_path):
    module, trainer = trained["module"], trained["trainer"]
    ckpt = tmp_path / "run.ckpt"
    trainer.save_checkpoint(ckpt)
    saved = torch.load(ckpt, weights_only=True)
    assert set(saved["state_dict"]) == {f"model.adapter.{k}" for k in module.model.adapter.state_dict()}
    assert saved["regionspot_model_config"]["sam"]["variant"] == "tiny"
    assert {"optimizer_states", "lr_schedulers", "loops"} <= set(saved)

    reloaded = RegionSpotModule.load_from_checkpoint(ckpt)
    for key, value in adapter_state(module).items():
        torch.testing.assert_close(reloaded.model.adapter.state_dict()[key], value)

    _, model_yaml = export_adapter(ckpt, tmp_path / "adapter.safetensors")
    torch.manual_seed(0)  # the tiny backbones are random: rebuild the same ones (real ones come from files)
    exported = build_regionspot(model_yaml)  # the predictor's path: adapter.checkpoint in the model config
    batch = next(iter(trained["data"].val_dataloader()))
    module.eval()
    expected = module(batch["images"], batch["boxes"], "toy_val")
    torch.manual_seed(0)
    from_export = RegionSpotModule(model_config=RegionSpotConfig.from_yaml(model_yaml)).eval()
    from_export.use_data(vocabularies=trained["data"].vocabularies)
    got = from_export(batch["images"], batch["boxes"], "toy_val")
    for a, b in zip(expected, got, strict=True):
        torch.testing.assert_close(a, b)
    for key, value in adapter_state(module).items():
        torch.testing.assert_close(exported.adapter.state_dict()[key], value)


def test_resume_matches_an_uninterrupted_run(toy_data, tmp_path):
    def run(root, max_steps, ckpt_path=None) -> RegionSpotModule:
        config = RegionSpotConfig.from_yaml(TINY)
        config.adapter.dropout = 0.2
        module = make_module(config, warmup_steps=2, lr_milestones=[3])
        every2 = ModelCheckpoint(dirpath=root, every_n_train_steps=2, save_top_k=-1)
        trainer = make_trainer(root, max_steps=max_steps, enable_checkpointing=True, callbacks=[every2])
        trainer.fit(module, make_data(toy_data, batches_per_epoch=3), ckpt_path=ckpt_path)  # stops mid-epoch
        return module

    uninterrupted = run(tmp_path / "full", 5)
    run(tmp_path / "stopped", 2)
    resumed = run(tmp_path / "resumed", 5, ckpt_path=tmp_path / "stopped" / "epoch=0-step=2.ckpt")
    for key, value in adapter_state(uninterrupted).items():
        torch.testing.assert_close(adapter_state(resumed)[key], value, rtol=1e-5, atol=1e-6)
    untrained = make_module().model.adapter.output_proj.weight
    assert not torch.equal(adapter_state(uninterrupted)["output_proj.weight"], untrained)


def test_bf16_mixed_steps_on_cpu(toy_data, tmp_path):
    module, recorder = make_module(), LossRecorder()
    before = adapter_state(module)
    make_trainer(tmp_path, max_steps=2, precision="bf16-mixed", callbacks=[recorder]).fit(module, make_data(toy_data))
    assert next(module.model.sam.parameters()).dtype == torch.bfloat16
    assert next(module.model.clip.parameters()).dtype == torch.bfloat16
    assert all(p.dtype == torch.float32 for p in module.model.adapter.parameters())  # mixed, not pure, bf16
    assert all(torch.isfinite(torch.tensor(loss)) for loss in recorder.losses) and len(recorder.losses) == 2
    assert not torch.equal(before["output_proj.weight"], module.model.adapter.output_proj.weight)


class RankRecorder(L.Callback):
    """Saves what each DDP rank saw and ended with (spawned processes cannot return it)."""

    def __init__(self, out_dir: str) -> None:
        self.out_dir = out_dir
        self.image_ids: list[list[int]] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.image_ids.append(list(batch["image_ids"]))

    def on_train_end(self, trainer, pl_module) -> None:
        torch.save(
            {
                "adapter": {k: v.cpu() for k, v in pl_module.model.adapter.state_dict().items()},
                "image_ids": self.image_ids,
                "metrics": {k: float(v) for k, v in trainer.callback_metrics.items()},
            },
            f"{self.out_dir}/rank{trainer.global_rank}.pt",
        )


@pytest.mark.slow  # two spawned processes: ~10 s on an idle 2-core machine, 30-40 s on a busy one
def test_ddp_two_cpu_processes_keep_identical_adapters(toy_data, tmp_path, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # two processes on a shared CPU
    module = make_module()
    initial = adapter_state(module)
    trainer = make_trainer(
        tmp_path,
        devices=2,
        strategy="ddp_spawn",
        max_steps=2,
        limit_val_batches=1,
        val_check_interval=2,
        check_val_every_n_epoch=None,
        callbacks=[RankRecorder(str(tmp_path))],
    )
    trainer.fit(module, make_data(toy_data))
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    for key, value in ranks[0]["adapter"].items():
        torch.testing.assert_close(ranks[1]["adapter"][key], value, rtol=0, atol=0)
    assert not torch.equal(ranks[0]["adapter"]["output_proj.weight"], initial["output_proj.weight"])
    for ids0, ids1 in zip(ranks[0]["image_ids"], ranks[1]["image_ids"], strict=True):
        assert not set(ids0) & set(ids1)  # each rank trains on its own images
    assert ranks[0]["metrics"]["val/AP"] == ranks[1]["metrics"]["val/AP"] >= 0  # scored once over both ranks


def test_frozen_cache_reuses_backbone_outputs_and_changes_nothing(toy_data, tmp_path, monkeypatch):
    cached, plain = make_module(frozen_cache_size=5), make_module()
    calls = []
    run_frozen = cached.model.frozen_features
    monkeypatch.setattr(
        cached.model, "frozen_features", lambda images, boxes: calls.append(len(images)) or run_frozen(images, boxes)
    )
    batch = next(iter(make_data(toy_data).val_dataloader()))  # 8 images
    images, boxes = batch["images"][:4], batch["boxes"][:4]
    expected = plain.model.region_features(plain.frozen_features(images, boxes))
    with torch.inference_mode():  # as in validation: inference tensors go into the cache
        first = cached.model.region_features(cached.frozen_features(images, boxes))
    again = cached.model.region_features(cached.frozen_features(images, boxes))
    assert calls == [4]  # the second call found all four
    for a, b, c in zip(expected, first, again, strict=True):
        torch.testing.assert_close(b, a, rtol=0, atol=0)
        torch.testing.assert_close(c, a, rtol=0, atol=0)
    again[0].sum().backward()  # outputs cached in inference mode still train the adapter (they are copied into a batch)
    assert cached.model.adapter.output_proj.weight.grad is not None

    moved = [b + 1.0 for b in boxes[:2]]  # other boxes on the same pixels: other SAM tokens
    cached.frozen_features(images[:2], moved)
    assert calls == [4, 2]
    assert len(cached.frozen_cache.entries) == 5  # least recently used dropped first
    for entry in cached.frozen_cache.entries.values():  # each holds its own memory, not a view of its whole batch
        assert (
            entry.clip_tokens.untyped_storage().nbytes() == entry.clip_tokens.numel() * entry.clip_tokens.element_size()
        )

    def fit(module) -> dict[str, torch.Tensor]:
        still = AugmentConfig(short_edges=[], flip_prob=0.0, crop_prob=0.0)
        data = make_data(toy_data, batches_per_epoch=4, augment=still)
        make_trainer(tmp_path, max_steps=8).fit(module, data)  # two epochs: the second is read from the cache
        return adapter_state(module)

    with_cache, without = fit(make_module(frozen_cache_size=100)), fit(make_module())
    for key, value in without.items():
        torch.testing.assert_close(with_cache[key], value)


class _ImageTypes(Callback):
    def __init__(self) -> None:
        self.seen: list[set[type]] = []

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        self.seen.append({type(image) for image in batch["images"]})


def test_images_are_prepared_in_the_workers_and_train_alike(toy_data, tmp_path):
    """With data-loader workers the batches arrive resized for the backbones (`PreparedImage`), and training on them
    ends with the very adapter of training without workers, where the module resizes them itself."""
    adapters, types = [], _ImageTypes()
    for workers in (0, 1):
        module = make_module()
        trainer = make_trainer(tmp_path / str(workers), max_steps=4, callbacks=[types])
        trainer.fit(module, datamodule=make_data(toy_data, num_workers=workers))
        assert not trainer.train_dataloader.pin_memory  # page-locked memory only for a CUDA trainer
        adapters.append(adapter_state(module))
    assert types.seen == [{np.ndarray}] * 4 + [{PreparedImage}] * 4
    for key, value in adapters[0].items():
        torch.testing.assert_close(adapters[1][key], value, rtol=0, atol=0)


def test_one_device_trains_as_with_ddps_zero_on_every_weight(toy_data, tmp_path, monkeypatch):
    """Under DDP each step adds a zero that touches every trained weight (every rank's backward reaches each);
    one device leaves it out, and trains the same, to the bit."""
    adapters = []
    for distributed in (False, True):  # True: the module takes the DDP path on this one CPU
        monkeypatch.setattr(RegionSpotModule, "_distributed", lambda self, d=distributed: d)
        module = make_module()
        make_trainer(tmp_path / str(distributed), max_steps=4).fit(module, datamodule=make_data(toy_data))
        adapters.append(adapter_state(module))
    for key, value in adapters[0].items():
        torch.testing.assert_close(adapters[1][key], value, rtol=0, atol=0)
