"""Region VQA evaluation: answer every question of a region-QA file, score normalised exact match; or caption
every region of a region-caption file through the LLM and score it as `evaluate.py captions` does.

    python evaluate.py vqa --config run/adapter.yaml --ann qa_test.json --images images/ --out vqa_eval/
    python evaluate.py vqa --config run/adapter.yaml --ann test.json --images images/ --out vqa_cap/ --captions

Each turn is asked with the conversation's earlier turns, as the file gives them, before it (the usual
teacher-forced protocol for multi-turn region QA). Answers are appended to `answers.rank0.jsonl` as each
batch finishes, so a rerun with the same `out` resumes; `answers.json` and `metrics.json` are written at the end.
"""

from __future__ import annotations

import logging
import re
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from regionspot.build import build_regionspot
from regionspot.config import RegionSpotConfig
from regionspot.data.build import build_dataset
from regionspot.data.captions import caption_references
from regionspot.data.detection import DatasetConfig, DetectionDataset
from regionspot.evaluation.caption_eval import data_identity, frozen_of, usable_items, write_records
from regionspot.evaluation.caption_metrics import require_java, score_captions
from regionspot.evaluation.runner import METRICS_FILE, read_part_records
from regionspot.files import write_json_atomic
from regionspot.modeling.region_lm import Turn
from regionspot.modeling.regionspot import RegionSpot
from regionspot.run_identity import check_or_record, run_identity

log = logging.getLogger(__name__)

ANSWERS_FILE = "answers.json"
ANSWER_PARTS = "answers.rank*.jsonl"
CAPTION_PROMPT = "describe <region1> in a few words."
_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = re.compile(r"[^\w\s]")
_NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")
_NUMBERS = {word: str(value) for value, word in enumerate(_NUMBER_WORDS)}


@dataclass
class VqaEvalSettings:
    """One VQA evaluation. Give `ann` + `images`, or `hf_path`; paths are local, nothing is downloaded."""

    config: str  # model YAML with a vqa: section (a VQA run's adapter.yaml)
    out: str  # output folder; holds the part file of an unfinished run, which a rerun resumes
    ann: str | None = None  # region-QA file (image, boxes, conversations); with `captions`, a region-caption file
    images: str | None = None
    hf_path: str | None = None
    hf_split: str = "test"
    captions: bool = False  # caption every region through the LLM (`caption_prompt`), scored with pycocoevalcap
    caption_prompt: str = CAPTION_PROMPT
    max_images: int | None = None
    batch_size: int = 8  # records (images) whose questions are answered together
    max_new_tokens: int | None = None  # default: the model config's vqa.max_new_tokens
    device: str = "auto"
    seed: int = 0  # draws the weights of parts without a checkpoint: the same in every run, so a rerun resumes alike
    progress: bool = True
    restart: bool = False  # discard the records of an earlier run in `out` (one that differs refuses to resume)

    def __post_init__(self) -> None:
        if (self.ann is None) == (self.hf_path is None):
            raise ValueError("give the data as --ann with --images, or as --hf-path")
        if self.ann is not None and self.images is None:
            raise ValueError(f"{self.ann} needs --images, the folder of its images")
        if self.batch_size < 1 or (self.max_images is not None and self.max_images < 1):
            raise ValueError("batch_size and max_images must be at least 1")
        if "<region1>" not in self.caption_prompt:
            raise ValueError(f"the caption prompt must name the region as <region1>, got {self.caption_prompt!r}")


def normalize_answer(text: str) -> str:
    """Lowercase, punctuation and articles removed, number words as digits, spaces collapsed: "The Two." -> "2"."""
    words = _PUNCTUATION.sub(" ", _ARTICLES.sub(" ", text.lower().replace("'s", ""))).split()
    return " ".join(_NUMBERS.get(word, word) for word in words)


def evaluate_vqa(settings: VqaEvalSettings) -> dict[str, Any]:
    """Answer (or caption) the data set's regions through the VQA head, resuming `out`; write and return metrics."""
    if settings.captions:
        require_java()
    config = RegionSpotConfig.from_yaml(settings.config)
    if config.vqa is None:
        raise ValueError(f"{settings.config} has no vqa: section; give the adapter.yaml of a VQA run")
    if config.vqa.checkpoint is None:
        log.warning("the model config names no VQA weights: the projector is untrained")
    device = settings.device if settings.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(settings.seed)
    model = build_regionspot(config).to(device).eval()
    dataset = build_dataset(
        "vqa",
        DatasetConfig(
            ann_file=settings.ann, image_dir=settings.images, hf_path=settings.hf_path, hf_split=settings.hf_split,
            captions=settings.captions, questions=not settings.captions,
        ),
    )  # fmt: skip
    indices = list(range(len(dataset)))[: settings.max_images]
    out = Path(settings.out)
    out.mkdir(parents=True, exist_ok=True)
    check_or_record(out, _identity(settings, config, dataset), parts=ANSWER_PARTS, restart=settings.restart)
    done = read_part_records(out, ANSWER_PARTS)
    remaining = [i for i in indices if dataset.records[i].image_id not in done]
    if done:
        log.info("resuming: %d images already answered, %d to go", len(indices) - len(remaining), len(remaining))
    write_records(
        lambda batch: answer_batch(model, dataset, batch, settings), dataset, remaining,
        out / "answers.rank0.jsonl", batch_size=settings.batch_size, progress=settings.progress,
    )  # fmt: skip
    done = read_part_records(out, ANSWER_PARTS)
    if settings.captions:
        metrics = _score_captions(dataset, indices, done, out)
    else:
        metrics = score_answers(dataset, indices, done)
    write_json_atomic(out / METRICS_FILE, metrics, indent=2)
    print(format_vqa_metrics(metrics))
    return metrics


def _identity(settings: VqaEvalSettings, config: RegionSpotConfig, dataset: DetectionDataset) -> dict[str, Any]:
    """Everything the answers depend on (the LLM folder by its content): a resumed run must share it all."""
    return run_identity(
        config_path=settings.config,
        config=config,
        data=data_identity(settings, dataset),
        settings={
            "captions": settings.caption_prompt if settings.captions else None,
            "max_new_tokens": settings.max_new_tokens,
            "seed": settings.seed,
        },
    )


def answer_batch(
    model: RegionSpot, dataset: DetectionDataset, batch: list[tuple[int, dict]], settings: VqaEvalSettings
) -> list[dict]:
    """(index, item) pairs -> one JSON record per image: its answers in turn order (or captions by region key)."""
    records, usable = usable_items(dataset, batch)
    if not usable:
        return records
    frozen = frozen_of(model, [item for _, item in usable])
    features = model.region_features(frozen)
    conditions = model.region_condition(frozen, features).split([len(f.region_tokens) for f in frozen])
    asked, owners = _questions([item for _, item in usable], conditions, settings)
    replies = model.vqa.generate(
        [conversation for conversation, _ in asked], [regions for _, regions in asked],
        max_new_tokens=settings.max_new_tokens,
    )  # fmt: skip
    by_image: dict[int, list[str]] = defaultdict(list)
    for owner, reply in zip(owners, replies, strict=True):
        by_image[owner].append(reply)
    for n, (image_id, item) in enumerate(usable):
        if settings.captions:
            records.append({"image_id": image_id, "captions": dict(zip(item["region_keys"], by_image[n], strict=True))})
        else:
            records.append({"image_id": image_id, "answers": by_image[n]})
    return records


def _questions(items: list[dict], conditions, settings: VqaEvalSettings) -> tuple[list, list[int]]:
    """One conversation to answer per question (per region, captioning) with its regions, and whose it is."""
    asked, owners = [], []
    for n, item in enumerate(items):
        if settings.captions:
            for region in range(len(item["boxes"])):
                asked.append(([(settings.caption_prompt, None)], conditions[n][region : region + 1]))
                owners.append(n)
        else:
            for conversation in asked_turns(item["conversation"]):
                asked.append((conversation, conditions[n]))
                owners.append(n)
    return asked, owners


def asked_turns(conversation: Sequence[tuple[str, str]]) -> list[list[Turn]]:
    """Every turn of a conversation as an open question after the conversation's earlier turns (the protocol)."""
    return [[*conversation[:k], (question, None)] for k, (question, _) in enumerate(conversation)]


def answer_hits(records: Sequence[Any], answers: Sequence[Sequence[str]]) -> dict[str, list[bool]]:
    """Whether each turn's answer matches its reference after `normalize_answer`, per question type where the
    records name types (`question_types`), and over every turn ("all", first).

    Args:
        records: with `conversation` ((question, reference) turns) and `question_types` (or None).
        answers: the answers to each record's turns, in turn order (missing ones count as wrong).
    """
    hits: dict[str, list[bool]] = {"all": []}
    for record, given in zip(records, answers, strict=True):
        types = record.question_types or [None] * len(record.conversation)
        for k, ((_, reference), kind) in enumerate(zip(record.conversation, types, strict=True)):
            right = k < len(given) and normalize_answer(given[k]) == normalize_answer(reference)
            hits["all"].append(right)
            if kind is not None:
                hits.setdefault(kind, []).append(right)
    return hits


def accuracy_by_type(records: Sequence[Any], answers: Sequence[Sequence[str]]) -> dict[str, float]:
    """Normalised exact-match accuracy over every turn ("all") and per question type (`answer_hits`)."""
    return {kind: sum(right) / len(right) for kind, right in answer_hits(records, answers).items() if right}


def score_answers(dataset: DetectionDataset, indices: list[int], done: dict[int, dict[str, Any]]) -> dict[str, Any]:
    """Normalised exact-match accuracy over every turn, and per question type where the records give types."""
    records = [dataset.records[i] for i in indices]
    hits = answer_hits(records, [done.get(r.image_id, {}).get("answers") or [] for r in records])
    metrics: dict[str, Any] = {"accuracy": {kind: sum(v) / len(v) for kind, v in hits.items() if v}}
    metrics["questions"] = {kind: len(v) for kind, v in hits.items()}
    metrics["images"] = {"total": len(indices), "skipped": sum("skipped" in done.get(i, {}) for i in done)}
    return metrics


def _score_captions(
    dataset: DetectionDataset, indices: list[int], done: dict[int, dict[str, Any]], out: Path
) -> dict[str, Any]:
    keys = {key for i in indices for key in (dataset.records[i].region_keys or [])}
    references = {key: refs for key, refs in caption_references(dataset).items() if key in keys}
    predictions = {key: text for record in done.values() for key, text in record.get("captions", {}).items()}
    predictions = {key: predictions.get(key, "") for key in references}
    write_json_atomic(out / ANSWERS_FILE, predictions, indent=0)
    return score_captions(predictions, references)


def format_vqa_metrics(metrics: dict[str, Any]) -> str:
    if "accuracy" not in metrics:  # captions through the LLM
        names = [n for n in ("CIDEr", "Bleu_4", "METEOR", "ROUGE_L") if n in metrics]
        return ", ".join(f"{n} {100 * metrics[n]:.1f}" for n in names)
    return ", ".join(f"{kind} {100 * value:.1f}%" for kind, value in metrics["accuracy"].items())
