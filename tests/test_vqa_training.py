"""The VQA head on the one frozen base, end to end: region-QA data -> RegionSpotModule -> export -> evaluate.py vqa.

Tiny random backbones, the demo's synthetic shapes (64 px) with their question files, and a tiny Llama written in
the test; nothing is downloaded.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from synthetic_boxes import one_cpu_thread  # noqa: F401 (a fixture)
from test_demo import SMALL as DEMO_SMALL
from test_training import make_trainer

from regionspot import RegionSpotConfig, build_regionspot
from regionspot.config import VqaConfig
from regionspot.data import AugmentConfig, DatasetConfig
from regionspot.demo.language_model import write_tiny_causal_lm
from regionspot.demo.synthetic import generate_dataset
from regionspot.evaluation.cli import main as evaluate_main
from regionspot.training import RegionDataModule, RegionSpotModule, export_adapter

pytestmark = pytest.mark.usefixtures("one_cpu_thread")
TINY = "configs/model/tiny.yaml"
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


@pytest.fixture(scope="module")
def trained(qa_data, tmp_path_factory):
    data, llm = qa_data
    root = tmp_path_factory.mktemp("vqa_run")
    torch.manual_seed(0)
    module = RegionSpotModule(model_config=vqa_config(llm), lr=3e-3, warmup_steps=3)
    datamodule = RegionDataModule(
        train={
            "shapes_qa": DatasetConfig(
                ann_file=str(data.question_files["train"]), image_dir=str(data.root), questions=True
            )
        },
        batch_size=8,
        num_workers=0,
        augment=AugmentConfig(short_edges=[], flip_prob=0.5, crop_prob=0.0),
    )
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
    plain.write_text(Path(TINY).read_text())
    with pytest.raises(SystemExit, match="no vqa: section"):
        evaluate_main(["vqa", "--config", str(plain), *args[3:-3], "--out", str(tmp_path / "x")])


def test_the_vqa_head_learns_at_its_own_rate(qa_data):
    _, llm = qa_data
    module = RegionSpotModule(model_config=vqa_config(llm), lr=1e-3, vqa_lr=3e-3)
    optimizer = module.configure_optimizers()["optimizer"]
    recogniser, vqa = optimizer.param_groups
    assert (recogniser["initial_lr"], vqa["initial_lr"]) == (1e-3, 3e-3)
    assert {id(p) for p in vqa["params"]} == {id(p) for p in module.model.vqa.parameters() if p.requires_grad}
    assert not {id(p) for p in recogniser["params"]} & {id(p) for p in vqa["params"]}
