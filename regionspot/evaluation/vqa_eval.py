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

from regionspot.config import RegionSpotConfig
from regionspot.data.captions import caption_references
from regionspot.data.detection import DetectionDataset
from regionspot.evaluation import driver
from regionspot.evaluation.caption_metrics import require_java, score_captions
from regionspot.files import write_json_atomic
from regionspot.modeling.region_lm import Turn
from regionspot.modeling.regionspot import RegionSpot
from regionspot.run_identity import run_identity

log = logging.getLogger(__name__)

ANSWERS_FILE = "answers.json"
ANSWER_PARTS = "answers.rank*.jsonl"
CAPTION_PROMPT = "describe <region1> in a few words."
_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = re.compile(r"[^\w\s]")
_NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")
_NUMBERS = {word: str(value) for value, word in enumerate(_NUMBER_WORDS)}


@dataclass(kw_only=True)
class VqaEvalSettings(driver.RegionEvalSettings):
    """One VQA evaluation (and `RegionEvalSettings`: config, out, the data, max_images, batch_size, device, seed,
    progress, restart). Give `ann` + `images`, or `hf_path`; paths are local, nothing is downloaded.

    `config` is a model YAML with a vqa: section (a VQA run's adapter.yaml); `ann` a region-QA file (image, boxes,
    conversations), or with `captions` a region-caption file; `batch_size` records (images) whose questions are
    answered together.
    """

    captions: bool = False  # caption every region through the LLM (`caption_prompt`), scored with pycocoevalcap
    caption_prompt: str = CAPTION_PROMPT
    max_new_tokens: int | None = None  # default: the model config's vqa.max_new_tokens

    def __post_init__(self) -> None:
        super().__post_init__()
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
    model = driver.build_eval_model(config, seed=settings.seed, device=settings.device)
    dataset = driver.region_dataset("vqa", settings, captions=settings.captions, questions=not settings.captions)
    indices = driver.run_remaining(
        settings, dataset, identity=_identity(settings, config, dataset), parts=ANSWER_PARTS,
        records_of=lambda batch: answer_batch(model, dataset, batch, settings), done_as="answered",
    )  # fmt: skip
    out = Path(settings.out)
    done = driver.read_part_records(out, ANSWER_PARTS)
    if settings.captions:
        metrics = _score_captions(dataset, indices, done, out)
    else:
        metrics = score_answers(dataset, indices, done)
    write_json_atomic(out / driver.METRICS_FILE, metrics, indent=2)
    print(format_vqa_metrics(metrics))
    return metrics


def _identity(settings: VqaEvalSettings, config: RegionSpotConfig, dataset: DetectionDataset) -> dict[str, Any]:
    """Everything the answers depend on (the LLM folder by its content): a resumed run must share it all."""
    return run_identity(
        config_path=settings.config,
        config=config,
        data=driver.data_identity(settings, dataset),
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
    records, usable = driver.usable_items(dataset, batch)
    if not usable:
        return records
    frozen = driver.frozen_of(model, [item for _, item in usable])
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
