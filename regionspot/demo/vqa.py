"""The demo's question answering, against what answers without looking: the blind LM and the majority answer.

- **Blind baseline**: the demo's VQA head trained and asked as the real one is (train.py and evaluate.py vqa, the same
  model and training configs, steps, batch and learning rate), on the same conversations with nothing to look at:
  `blind_questions` puts every record on one grey image and makes each of its boxes the whole image, so every
  region's features are the same and the LM learns only what the questions tell (the answer priors, and what
  earlier turns say). `<regionK>` still names the K-th of as many regions as before.
- **Majority answer**: the most frequent training answer of each question type.

Both are scored as the model is (`regionspot.evaluation.vqa_eval.accuracy_by_type`), per question type.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from collections.abc import Sequence
from pathlib import Path

from PIL import Image

from regionspot.data.region_qa import RegionQA
from regionspot.evaluation.vqa_eval import normalize_answer
from regionspot.files import write_json_atomic

_GREY = 128  # the blind image's every pixel, in each channel


def blind_questions(qa_file: str | Path, out_file: str | Path) -> Path:
    """Write `qa_file`'s records (ours, with "width" and "height", as the demo's generator writes them) to
    `out_file` with nothing to see: each on a grey image of its size, written beside `out_file`, every box the
    whole image. Returns `out_file`; its images are in its folder."""
    out_file = Path(out_file)
    out_file.parent.mkdir(parents=True, exist_ok=True)
    records = json.loads(Path(qa_file).read_text())
    for record in records:
        width, height = record["width"], record["height"]
        record["image"] = f"grey_{width}x{height}.png"
        record["boxes"] = [[0, 0, width, height] for _ in record["boxes"]]
        image = out_file.parent / record["image"]
        if not image.exists():
            Image.new("RGB", (width, height), (_GREY,) * 3).save(image)
    write_json_atomic(out_file, records, indent=None)
    return out_file


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
