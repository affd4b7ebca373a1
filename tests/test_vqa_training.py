"""The VQA head on the one frozen base, end to end: region-QA data -> RegionSpotModule -> export -> evaluate.py vqa.

Tiny random backbones, the demo's synthetic shapes (64 px) with their question files, and a tiny Llama written in
the test; nothing is downloaded.
"""

from __future__ import annotations

import json
from itertools import pairwise

import pytest
import torch
from lightning.pytorch.callbacks import Callback
from synthetic_boxes import one_cpu_thread  # noqa: F401 (a fixture)
from test_demo import SMALL as DEMO_SMALL
from test_training import make_trainer

from regionspot import RegionSpotConfig, build_regionspot
from regionspot.config import VqaConfig
from regionspot.configs import resolve_config
from regionspot.data import AugmentConfig, DatasetConfig
from regionspot.demo.language_model import write_tiny_causal_lm
from regionspot.demo.synthetic import generate_dataset
from regionspot.evaluation.cli import run as evaluate_main
from regionspot.training import OptimizerSettings, RegionDataModule, RegionSpotModule, export_adapter

pytestmark = pytest.mark.usefixtures("one_cpu_thread")
TINY = "tiny"
# The generator test's small world (8 classes, 64 px), fewer images: questions need no pretraining split.
SMALL = {**DEMO_SMALL, "num_train": 40, "num_val": 8, "num_test": 8, "num_pretrain": 0}


@pytest.fixture(scope="module")
def qa_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("qa")
    data = generate_dataset(out_dir=root / "data", seed=0, questions_per_image=4, **SMALL)
    records = json.loads(data.question_files["train"].read_text())
    corpus = [turn["value"] for record in records for turn in record["conversations"]]
    llm = write_tiny_causal_lm(root / "lm", corpus=corpus, hidden_size=32, depth=1, num_heads=2)
    return data, llm


def vqa_config(llm) -> RegionSpotConfig:
    config = RegionSpotConfig.from_yaml(TINY)
    config.vqa = VqaConfig(llm=str(llm), llm_training="full", max_new_tokens=3)
    return config


def qa_datamodule(data, *, batch_size: int, flip_prob: float = 0.0, detection: bool = False) -> RegionDataModule:
    """The generated questions as training data ("shapes_qa"), with its detection split beside them ("shapes")."""
    train = {
        "shapes_qa": DatasetConfig(ann_file=str(data.question_files["train"]), image_dir=str(data.root), questions=True)
    }
    if detection:
        train = {
            "shapes": DatasetConfig(ann_file=str(data.annotation_files["train"]), image_dir=str(data.root))
        } | train
    return RegionDataModule(
        train=train,
        batch_size=batch_size,
        num_workers=0,
        augment=AugmentConfig(short_edges=[], flip_prob=flip_prob, crop_prob=0.0),
    )


@pytest.fixture(scope="module")
def trained(qa_data, tmp_path_factory):
    data, llm = qa_data
    root = tmp_path_factory.mktemp("vqa_run")
    torch.manual_seed(0)
    module = RegionSpotModule(model_config=vqa_config(llm), optimizer=OptimizerSettings(lr=3e-3, warmup_steps=3))
    datamodule = qa_datamodule(data, batch_size=8, flip_prob=0.5)
    trainer = make_trainer(root, max_steps=40)
    trainer.fit(module, datamodule=datamodule)
    trainer.save_checkpoint(root / "last.ckpt")
    return module, trainer, root


def test_training_lowers_the_answer_loss_and_checkpoints_only_what_trains(trained):
    _, trainer, root = trained
    # one-word answers over a ~40-word vocabulary start near log(40) = 3.7
    assert float(trainer.callback_metrics["train/vqa_loss"]) < 2.0
    state = torch.load(root / "last.ckpt", map_location="cpu", weights_only=True)["state_dict"]
    assert any(k.startswith("model.vqa.projector.") for k in state) and any(
        k.startswith("model.vqa.llm.") for k in state
    )
    assert all(k.startswith(("model.adapter.", "model.vqa.")) for k in state)


def test_export_rebuilds_the_head_and_evaluate_vqa_scores_and_resumes(trained, qa_data, tmp_path):
    module, _, root = trained
    data, _ = qa_data
    _, model_yaml = export_adapter(root / "last.ckpt", tmp_path / "run" / "adapter.safetensors")
    exported = build_regionspot(model_yaml)
    for name, tensor in module.model.vqa.trained_state_dict().items():
        torch.testing.assert_close(exported.vqa.trained_state_dict()[name], tensor)
    args = ["vqa", "--config", str(model_yaml), "--ann", str(data.question_files["test"]), "--images",
            str(data.root), "--out", str(tmp_path / "eval"), "--no-progress"]  # fmt: skip
    metrics = evaluate_main(args)
    turns = sum(len(r["conversations"]) // 2 for r in json.loads(data.question_files["test"].read_text()))
    assert metrics["questions"]["all"] == turns
    assert 0.0 <= metrics["accuracy"]["all"] <= 1.0
    assert set(metrics["accuracy"]) - {"all"} <= {"colour", "texture", "shape", "left", "larger", "count"}
    again = evaluate_main(args)  # everything answered: resumes with nothing to do, the same numbers
    assert again["accuracy"] == metrics["accuracy"]
    plain = tmp_path / "plain.yaml"
    plain.write_text(resolve_config(TINY).read_text())
    with pytest.raises(SystemExit, match="no vqa: section"):
        evaluate_main(["vqa", "--config", str(plain), *args[3:-3], "--out", str(tmp_path / "x")])


def test_the_vqa_head_learns_at_its_own_rate(qa_data):
    _, llm = qa_data
    module = RegionSpotModule(model_config=vqa_config(llm), optimizer=OptimizerSettings(lr=1e-3, vqa_lr=3e-3))
    optimizer = module.configure_optimizers()["optimizer"]
    recogniser, vqa = optimizer.param_groups
    assert (recogniser["initial_lr"], vqa["initial_lr"]) == (1e-3, 3e-3)
    assert {id(p) for p in vqa["params"]} == {id(p) for p in module.model.vqa.parameters() if p.requires_grad}
    assert not {id(p) for p in recogniser["params"]} & {id(p) for p in vqa["params"]}


class _VqaSnapshots(Callback):
    """After each step: the batch's data set, the VQA head's weights and their AdamW moments."""

    def __init__(self) -> None:
        self.steps: list[tuple[str, list[torch.Tensor], list[torch.Tensor]]] = []

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        state = trainer.optimizers[0].state
        params = [p for p in module.model.vqa.parameters() if p.requires_grad]
        moments = [state[p]["exp_avg"].clone() if p in state else torch.zeros_like(p) for p in params]
        self.steps.append((batch["dataset"], [p.detach().clone() for p in params], moments))


def test_a_head_without_a_loss_in_a_step_is_left_alone(qa_data, tmp_path):
    """Detection batches carry no questions: AdamW must not move the VQA head on them (no momentum coasting, no
    weight decay)."""
    data, llm = qa_data
    torch.manual_seed(0)
    module = RegionSpotModule(
        model_config=vqa_config(llm), optimizer=OptimizerSettings(lr=3e-3, warmup_steps=1, weight_decay=0.1)
    )
    datamodule = qa_datamodule(data, batch_size=4, detection=True)
    snapshots = _VqaSnapshots()
    make_trainer(tmp_path, max_steps=12, callbacks=[snapshots]).fit(module, datamodule=datamodule)
    datasets = [name for name, _, _ in snapshots.steps]
    assert {"shapes", "shapes_qa"} <= set(datasets[1:]), datasets  # both kinds of step, after a first one
    for (_, before, moments_before), (name, after, moments_after) in pairwise(snapshots.steps):
        moved = any(not torch.equal(a, b) for a, b in zip(before, after, strict=True))
        coasting = any(not torch.equal(a, b) for a, b in zip(moments_before, moments_after, strict=True))
        assert moved == coasting == (name == "shapes_qa"), name


class _LlmModes(Callback):
    """At each step: whether the LLM, and each of its dropout modules, is in training mode."""

    def __init__(self) -> None:
        self.modes: list[set[bool]] = []

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        self.modes.append({m.training for m in module.model.vqa.llm.modules()})


@pytest.mark.parametrize("llm_training", ["full", "lora", "frozen"])
def test_an_llm_that_trains_is_in_training_mode(qa_data, tmp_path, llm_training):
    """transformers builds an LLM in eval mode and Lightning keeps each module's mode: without switching, a trained
    LLM's dropout (and LoRA's) would be off in training; a frozen one stays in eval mode."""
    data, llm = qa_data
    config = vqa_config(llm)
    config.vqa.llm_training = llm_training
    module = RegionSpotModule(model_config=config, optimizer=OptimizerSettings(lr=1e-3, warmup_steps=1))
    datamodule = qa_datamodule(data, batch_size=2)
    modes = _LlmModes()
    make_trainer(tmp_path, max_steps=2, callbacks=[modes]).fit(module, datamodule=datamodule)
    assert modes.modes == [{llm_training != "frozen"}] * 2
    assert module.model.sam.training is module.model.clip.training is False  # the frozen backbones stay in eval


def test_a_data_set_can_set_its_own_flip_probability(qa_data):
    """data.augment flips the detection batches; a region-QA set with flip_prob 0 is never mirrored, one with 1
    always is ("left" read as "right" in its questions, its boxes mirrored)."""
    data, _ = qa_data
    qa = {"ann_file": str(data.question_files["train"]), "image_dir": str(data.root), "questions": True}
    datamodule = RegionDataModule(
        train={
            "shapes": DatasetConfig(ann_file=str(data.annotation_files["train"]), image_dir=str(data.root)),
            "never": DatasetConfig(**qa, flip_prob=0.0),
            "always": DatasetConfig(**qa, flip_prob=1.0),
        },
        batch_size=2,
        num_workers=0,
        augment=AugmentConfig(short_edges=[], flip_prob=0.5, crop_prob=0.0),
    )
    datamodule.setup("fit")
    shapes, never, always = datamodule.train_set.datasets
    assert shapes.augment_config.flip_prob == 0.5
    assert never.augment_config.flip_prob == 0.0 and always.augment_config.flip_prob == 1.0
    asks_left = next(i for i, r in enumerate(never.records) if any(" left of " in q for q, _ in r.conversation))
    plain, mirrored = never[(asks_left, [0])], always[(asks_left, [0])]
    assert any(" left of " in q for q, _ in plain["conversation"])
    assert any(" right of " in q for q, _ in mirrored["conversation"])
    width = plain["image"].shape[1]
    torch.testing.assert_close(mirrored["boxes"][:, [2, 0]], width - plain["boxes"][:, [0, 2]])
    with pytest.raises(ValueError, match="flip_prob"):
        DatasetConfig(**qa, flip_prob=1.5)
