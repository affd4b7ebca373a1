"""evaluate.py killed (SIGKILL at a random moment) in each mode, then run again: the rerun does only the images the
killed run did not finish, and its outputs equal an uninterrupted run's byte for byte. A last line that a kill cut
is done again, even where what was written of it parses.

Tiny random backbones and heads (drawn from `--seed`), tiny data on disk: LVIS-format detections, region captions
(the toy set's), region questions about those boxes answered by a tiny random Llama written in the test.
"""

from __future__ import annotations

import json
import random
import signal
import time
from pathlib import Path

import killable
import pytest
import yaml
from lvis_tiny import write_tiny_lvis
from synthetic_boxes import one_cpu_thread  # noqa: F401 (a fixture)

from regionspot import RegionSpotConfig
from regionspot.config import CaptionConfig, VqaConfig
from regionspot.data.toy import write_colour_boxes
from regionspot.demo.language_model import write_tiny_causal_lm
from regionspot.evaluation import caption_eval, runner, vqa_eval
from regionspot.evaluation.cli import run as evaluate_main
from regionspot.modeling.caption_tokenizer import CaptionTokenizer

pytestmark = pytest.mark.usefixtures("one_cpu_thread")
TINY = "tiny"
MODES = ("detections", "captions", "vqa")
PARTS = {"detections": runner.PART_GLOB, "captions": caption_eval.CAPTION_PARTS, "vqa": vqa_eval.ANSWER_PARTS}
OUTPUTS = {"detections": ("detections.json", "skipped.json", "metrics.json"), "captions": ("captions.json",
           "metrics.json"), "vqa": ("metrics.json",)}  # fmt: skip


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict[str, list[str]]:
    """evaluate.py's arguments for each mode, but --out."""
    root = tmp_path_factory.mktemp("eval_world")
    lvis = write_tiny_lvis(root / "lvis", num_images=6)
    captions_ann, images = write_colour_boxes(root / "toy", num_images=8, split="val")
    annotations = json.loads(captions_ann.read_text())
    config = RegionSpotConfig.from_yaml(TINY)
    words = CaptionTokenizer.from_corpus(a["caption"] for a in annotations["annotations"]).token_ids
    config.caption = CaptionConfig(token_ids=words, depth=1, width=32, num_heads=2, mlp_dim=64, max_length=12)
    (root / "captioner.yaml").write_text(yaml.safe_dump(config.to_dict()))

    questions = _colour_questions(annotations)
    (root / "questions.json").write_text(json.dumps(questions))
    corpus = [turn["value"] for record in questions for turn in record["conversations"]]
    llm = write_tiny_causal_lm(root / "llm", corpus=corpus, hidden_size=32, depth=1, num_heads=2)
    config = RegionSpotConfig.from_yaml(TINY)
    config.vqa = VqaConfig(llm=str(llm), max_new_tokens=3)
    (root / "vqa.yaml").write_text(yaml.safe_dump(config.to_dict()))
    common = ["--no-progress"]
    return {
        "detections": ["--config", TINY, "--ann", str(lvis["ann"]), "--images", str(lvis["images"]), *common],
        "captions": ["captions", "--config", str(root / "captioner.yaml"), "--ann", str(captions_ann),
                     "--images", str(images), "--batch-size", "2", *common],
        "vqa": ["vqa", "--config", str(root / "vqa.yaml"), "--ann", str(root / "questions.json"),
                "--images", str(images), "--batch-size", "2", *common],
    }  # fmt: skip


def _colour_questions(annotations: dict) -> list[dict]:
    """One record per image of the toy set: "what colour is <regionK>?" about each of its boxes."""
    names = {c["id"]: c["name"] for c in annotations["categories"]}
    records = []
    for image in annotations["images"]:
        boxes = [a for a in annotations["annotations"] if a["image_id"] == image["id"]]
        turns = []
        for k, box in enumerate(boxes, start=1):
            turns += [{"from": "human", "value": f"what colour is <region{k}>?"},
                      {"from": "gpt", "value": names[box["category_id"]]}]  # fmt: skip
        xyxy = [[x, y, x + w, y + h] for x, y, w, h in (b["bbox"] for b in boxes)]
        records.append({"image": image["file_name"], "boxes": xyxy, "conversations": turns,
                        "question_types": ["colour"] * len(boxes)})  # fmt: skip
    return records


def count_processed(monkeypatch, mode: str) -> list[int]:
    """The image ids this process works on from now, in `mode`."""
    processed: list[int] = []
    if mode == "detections":
        recognise = runner._ImageRecogniser.__call__

        def recognising(self, job):
            processed.append(job.image_id)
            return recognise(self, job)

        monkeypatch.setattr(runner._ImageRecogniser, "__call__", recognising)
        return processed
    module, name = (caption_eval, "caption_batch") if mode == "captions" else (vqa_eval, "answer_batch")
    run_batch = getattr(module, name)

    def counting(model, dataset, batch, *rest):
        processed.extend(dataset.records[index].image_id for index, _ in batch)
        return run_batch(model, dataset, batch, *rest)

    monkeypatch.setattr(module, name, counting)
    return processed


def outputs(mode: str, out: Path) -> dict[str, object]:
    """What a run leaves: its output files, and every image's record in the part files (ids as JSON keys)."""
    files = {name: (out / name).read_bytes() for name in OUTPUTS[mode]}
    records = runner.read_part_records(out, PARTS[mode])
    return {**files, "records": json.dumps({str(k): records[k] for k in sorted(records)}, sort_keys=True)}


def exact_match_scores(predictions: dict[str, str], references: dict[str, list[str]], **_) -> dict[str, float]:
    """A stand-in for pycocoevalcap, whose Java takes ~10 s a run here (tests/test_captioning.py runs the real one)."""
    hits = sum(predictions[key] in refs for key, refs in references.items())
    return {"exact": hits / len(references), "regions": len(references)}


@pytest.mark.parametrize("mode", MODES)
def test_kill_9_then_a_rerun_does_the_rest_only_and_equals_an_uninterrupted_run(
    mode, world, tmp_path, monkeypatch, capsys
):
    monkeypatch.setattr(caption_eval, "score_captions", exact_match_scores)
    evaluate_main([*world[mode], "--out", str(tmp_path / "reference")])
    expected = outputs(mode, tmp_path / "reference")
    everything = set(runner.read_part_records(tmp_path / "reference", PARTS[mode]))

    out, rng = tmp_path / "killed", random.Random(f"18-{mode}")
    process = killable.start_evaluation([*world[mode], "--out", str(out)], pause=0.3)
    part = out / PARTS[mode].replace("*", "0")
    per_write = 1 if mode == "detections" else 2  # the caption and VQA modes write a batch (2 images) at a time
    target = per_write * rng.randint(1, len(everything) // per_write - 1)
    killable.wait_until(lambda: killable.finished_lines(part) >= target, process)
    time.sleep(rng.uniform(0.0, 0.3))  # while the next image or batch is worked on, or written
    assert killable.kill(process) == -signal.SIGKILL
    finished = set(runner.read_part_records(out, PARTS[mode]))
    assert 0 < len(finished) < len(everything)

    processed = count_processed(monkeypatch, mode)
    evaluate_main([*world[mode], "--out", str(out)])
    assert sorted(processed) == sorted(everything - finished)  # nothing finished is done again
    assert outputs(mode, out) == expected
    with capsys.disabled():
        print(f"\n{mode}: killed with {len(finished)} of {len(everything)} images done; the rerun did {len(processed)}")


def test_a_cut_last_line_is_done_again_even_when_what_was_written_parses(world, tmp_path, monkeypatch, caplog):
    out = tmp_path / "run"
    evaluate_main([*world["detections"], "--out", str(out)])
    expected = outputs("detections", out)
    part = runner.part_file(out, 0)
    lines = part.read_bytes().splitlines(keepends=True)
    cut = lines[-1].rstrip(b"\n")  # the kill came between the record and its newline: it parses, yet is not whole
    damaged = b"not json at all\n"  # and a line mangled in the middle of the file
    part.write_bytes(b"".join([lines[0], damaged, *lines[2:-1], cut]))
    redone = [json.loads(lines[1])["image_id"], json.loads(cut)["image_id"]]
    processed = count_processed(monkeypatch, "detections")
    evaluate_main([*world["detections"], "--out", str(out)])
    assert sorted(processed) == sorted(redone)
    assert "line 2: not a record" in caplog.text
    assert outputs("detections", out) == expected
