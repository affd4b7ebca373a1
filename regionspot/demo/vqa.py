"""The demo's question answering, against what answers without looking: the blind LM and the majority answer.

- **Blind baseline**: the VQA head as `build_vqa_head` builds it from the demo's `vqa:` section (the same tiny LM and
  projector), trained with the same steps, batch and learning rate on the same conversations, but every region
  condition made from zeros: it learns what the questions alone tell (the answer priors, and what earlier turns
  say), nothing of the regions. It has its own few-line loop: the training module's step starts from SAM's and
  CLIP's frozen features, and the baseline's point is to have none.
- **Majority answer**: the most frequent training answer of each question type.

Both are scored as the model is (`regionspot.evaluation.vqa_eval.accuracy_by_type`), per question type.
"""

from __future__ import annotations

import time
from collections import Counter, defaultdict
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from regionspot.build import build_vqa_head
from regionspot.config import VqaConfig
from regionspot.data.region_qa import RegionQA, load_region_qa
from regionspot.evaluation.vqa_eval import asked_turns, normalize_answer
from regionspot.modeling.region_lm import RegionLanguageModel
from regionspot.modeling.regionspot import BOX_COLUMNS

# The blind LM's regions are zeros of this width (a box's columns and one more): whatever the width, the projector
# makes one constant of them.
_NO_REGION = BOX_COLUMNS + 1


def train_blind_baseline(
    *,
    qa_file: str | Path,
    vqa: VqaConfig,
    test_file: str | Path,
    steps: int,
    batch_size: int,
    lr: float,
    seed: int = 0,
) -> tuple[list[list[str]], float]:
    """Train the blind LM, the VQA head `vqa` describes, on `qa_file`'s conversations (no images read) and answer
    `test_file`'s questions: its LLM, prompt length and answer length are the trained head's.

    Returns:
        The answers per test record, turn by turn (each asked with the record's earlier turns, as evaluate.py
        asks), and the seconds it took.
    """
    start = time.perf_counter()
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    records, _ = load_region_qa(qa_file)
    head = build_vqa_head(vqa, condition_dim=_NO_REGION)
    optimizer = torch.optim.AdamW([p for p in head.parameters() if p.requires_grad], lr=lr, weight_decay=1e-4)
    head.train()
    for _ in range(steps):
        batch = [records[i] for i in rng.choice(len(records), size=min(batch_size, len(records)), replace=False)]
        loss = head.loss([r.conversation for r in batch], [_no_regions(r) for r in batch])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    tests, _ = load_region_qa(test_file)
    return _answer_blind(head, tests), time.perf_counter() - start


def _no_regions(record: RegionQA) -> torch.Tensor:
    return torch.zeros(len(record.boxes), _NO_REGION)


def _answer_blind(vqa: RegionLanguageModel, tests: Sequence[RegionQA], *, chunk: int = 64) -> list[list[str]]:
    asked = [
        (n, conversation, _no_regions(record))
        for n, record in enumerate(tests)
        for conversation in asked_turns(record.conversation)
    ]
    answers: list[list[str]] = [[] for _ in tests]
    for first in range(0, len(asked), chunk):
        part = asked[first : first + chunk]
        replies = vqa.generate([c for _, c, _ in part], [r for _, _, r in part])
        for (n, _, _), reply in zip(part, replies, strict=True):
            answers[n].append(reply)
    return answers


def majority_answers(train: Sequence[RegionQA], test: Sequence[RegionQA]) -> list[list[str]]:
    """Each test turn answered with its question type's most frequent training answer."""
    counts: dict[str, Counter] = defaultdict(Counter)
    for record in train:
        for (_, answer), kind in zip(record.conversation, record.question_types or (), strict=True):
            counts[kind][normalize_answer(answer)] += 1
    return [[counts[kind].most_common(1)[0][0] if counts[kind] else "" for kind in r.question_types] for r in test]


def format_vqa_table(rows: dict[str, dict[str, float]]) -> str:
    """Rows of accuracy in percent, one per system, a column per question type ("all" first)."""
    columns = list(next(iter(rows.values())))
    lines = ["| | " + " | ".join(columns) + " |", "|---|" + "---:|" * len(columns)]
    for name, row in rows.items():
        lines.append(f"| {name} | " + " | ".join(f"{100 * row[c]:.1f}" for c in columns) + " |")
    return "\n".join(lines)
