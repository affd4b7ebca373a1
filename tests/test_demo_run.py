"""The README's first command, shortened: synthetic data -> stand-in backbones -> train.py -> evaluate.py (names,
captions and questions)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from transformers import AutoTokenizer

from regionspot.data.region_qa import load_region_qa
from regionspot.demo.run import EVERYTHING_IMAGES, QUICK, format_table, run_demo
from regionspot.demo.vqa import blind_questions


@pytest.fixture(autouse=True)
def _one_thread():
    # Two threads on a 2-core machine that also runs pytest's own work thrash; one is several times faster.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.slow
def test_shortened_demo_learns_far_above_chance(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # the demo runs from any working directory
    summary = run_demo(out_dir=tmp_path, size=QUICK)
    said = capsys.readouterr().out
    for step in range(1, 9):  # every step says what it does
        assert f"[{step}/8] " in said
    assert said.count("Assuming user provided the results") == 0  # lvis's per-call notice stays quiet
    assert "box AP (%) (ground-truth boxes: every box is exact, so AP = AP50 = AP75)" in said
    assert "box attention, not RegionSpot's design" in said  # the demo's departures from RegionSpot, said
    assert "ViLD's distillation, not RegionSpot's loss" in said

    model, chance = summary["metrics"]["regionspot"], summary["metrics"]["chance"]
    # Measured at this size (seed 0, 2026-12-01): seen AP 0.167 and AP 0.164 against chance 0.082 and 0.080;
    # the full demo reaches seen AP 0.51-0.55 on seeds 0-2 against 0.07 (docs/demo.md).
    assert model["seen AP"] > 1.5 * chance["seen AP"]
    assert model["AP"] > chance["AP"] + 0.04
    # The same files a user gets: the exported adapter, the evaluation outputs, the picture, the summary.
    files = (
        "train/adapter.safetensors",
        "train/caption_decoder.safetensors",
        "train/vqa.safetensors",
        "train/adapter.yaml",
        "eval/metrics.json",
    )
    for path in (*files, "captions/captions.json", "captions/metrics.json", "vqa/metrics.json", "demo.png"):
        assert (tmp_path / path).is_file(), path
    assert json.loads((tmp_path / "demo_metrics.json").read_text())["metrics"] == summary["metrics"]
    assert yaml.safe_load((tmp_path / "train/adapter.yaml").read_text())["adapter"]["box_attention"] is True
    assert set(summary["timings_s"]) == {
        "generate data",
        "fit stand-in backbones",
        "train adapter + captioner + VQA (train.py), the blind VQA baseline beside",
        "evaluate (evaluate.py)",
        "caption and score (evaluate.py captions)",
        "answer and score (evaluate.py vqa)",
        "segment everything (predict_everything), beside steps 4-6",
    }
    everything = summary["everything_metrics"]  # scored, whatever this short a fit finds
    assert everything["images"] == EVERYTHING_IMAGES and 0 <= everything["found"] <= 1
    assert 0 <= everything["nothing_kept"] <= EVERYTHING_IMAGES
    assert "held-out AP" in format_table(summary["metrics"])
    # The captioner learns too: measured at this size (seed 0, 2026-12-02), CIDEr-D 1.17 against 0.96 for the
    # most frequent training caption and 0.87 for the top-1 name in the template.
    captions = summary["caption_metrics"]
    baselines = max(captions["most frequent caption"]["CIDEr"], captions["top-1 name"]["CIDEr"])
    assert captions["regionspot captioner"]["CIDEr"] > baselines + 0.1
    # The VQA head reads the regions: measured at this size (seed 0, 2026-12-02), 37.3% of the answers right against
    # 33.0% for the blind LM, colour 38.6% against 22.8%, before the location token (full demo: 71.6% against 37.2%).
    vqa = summary["vqa_metrics"]
    model, blind = vqa["regionspot VQA"], vqa["blind LM (no regions)"]
    assert set(vqa) == {"regionspot VQA", "blind LM (no regions)", "majority answer"}
    assert model["all"] > blind["all"] and model["colour"] > blind["colour"] + 0.1
    # A flip turns "is <region1> left of <region2>?" into "... right of ...": the LM's vocabulary has both words.
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "llm")
    assert tokenizer.unk_token_id not in tokenizer("is right of left ?")["input_ids"]


def test_blind_questions_leave_nothing_to_see(tmp_path):
    """The blind LM's conversations: the same turns and region count, every region the whole of one grey image."""
    records = [
        {"image": "a.png", "width": 40, "height": 30, "boxes": [[1, 2, 10, 12], [5, 5, 20, 25]],
         "conversations": [{"from": "human", "value": "is <region2> red?"}, {"from": "gpt", "value": "yes"}],
         "question_types": ["colour"]},
        {"image": "b.png", "width": 40, "height": 30, "boxes": [[3, 3, 9, 9]],
         "conversations": [{"from": "human", "value": "what is <region1>?"}, {"from": "gpt", "value": "a square"}],
         "question_types": ["shape"]},
    ]  # fmt: skip
    (tmp_path / "qa.json").write_text(json.dumps(records))
    written = blind_questions(tmp_path / "qa.json", tmp_path / "blind" / "qa.json")
    blind, skipped = load_region_qa(written)
    assert not skipped and [r.conversation for r in blind] == [
        [("is <region2> red?", "yes")],
        [("what is <region1>?", "a square")],
    ]
    assert [r.boxes.tolist() for r in blind] == [[[0, 0, 40, 30]] * 2, [[0, 0, 40, 30]]]
    assert {r.image for r in blind} == {str(written.parent / "grey_40x30.png")}
    pixels = np.asarray(Image.open(written.parent / "grey_40x30.png"))
    assert pixels.shape == (30, 40, 3) and (pixels == pixels.flat[0]).all()
