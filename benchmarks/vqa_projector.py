"""Which region projector lets a fresh LM read the regions: standardised or not, one token per region or four, with
the region's box in its condition or without.

    python benchmarks/vqa_projector.py --demo-out outputs/demo [--steps 1000] [--lr 1e-3] [--seed 0]

Needs a finished demo run (`python -m regionspot.demo`): its data's questions and its trained adapter. Each
region's condition (`RegionSpot.region_condition`, what the VQA head reads) is computed once for the training
and test questions' regions; then, per variant, a fresh copy of the demo's tiny LM and a fresh projector train
for `--steps` steps of 16 conversations (AdamW, `--lr`, by default the demo's 1e-3) on the cached conditions, and
answer the test questions greedily. "without the box" drops the condition's last `BOX_COLUMNS` columns (where the
region is); "a location token" adds one embedding per region made from the box alone (`vqa.location_token`).
Prints one table: accuracy per question type, next to the majority answer.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from regionspot import build_regionspot
from regionspot.data.region_qa import RegionQA, load_region_qa
from regionspot.demo.vqa import format_vqa_table, majority_answers
from regionspot.evaluation.vqa_eval import accuracy_by_type, asked_turns
from regionspot.modeling.region_lm import RegionLanguageModel, load_causal_lm
from regionspot.modeling.region_projector import RegionProjector
from regionspot.modeling.regionspot import BOX_COLUMNS
from regionspot.transforms import prepare_prompts


class UnstandardisedProjector(RegionProjector):
    """The same MLP without the per-feature standardisation in front: LLaVA-1.5's projector as published."""

    def forward(self, conditions: torch.Tensor) -> torch.Tensor:
        embeddings = self.fc2(self.act(self.fc1(conditions)))
        return embeddings.unflatten(-1, (self.condition_tokens, -1))


@torch.no_grad()
def region_conditions(model, records: list[RegionQA], root: Path) -> list[torch.Tensor]:
    conditions = []
    for start in range(0, len(records), 32):
        part = records[start : start + 32]
        prepared = [model.preprocessor(np.array(Image.open(root / r.image).convert("RGB"))) for r in part]
        prompts = [
            prepare_prompts(model.sam, image_size=image.original_size, boxes=torch.as_tensor(r.boxes))[0]
            for image, r in zip(prepared, part, strict=True)
        ]
        frozen = model.frozen_features(prepared, prompts)
        rows = model.region_condition(frozen, model.region_features(frozen))
        conditions += list(rows.split([len(r.boxes) for r in part]))
    return conditions


def train_and_answer(
    projector_cls,
    *,
    tokens: int,
    llm_folder: Path,
    data,
    steps: int,
    lr: float,
    box: bool = True,
    location: bool = False,
    seed: int = 0,
) -> dict[str, float]:
    train, train_conditions, test, test_conditions = data
    if not box:
        parts = (train_conditions, test_conditions)
        train_conditions, test_conditions = ([c[:, :-BOX_COLUMNS] for c in part] for part in parts)
    torch.manual_seed(seed)
    llm, tokenizer = load_causal_lm(llm_folder)
    projector = projector_cls(
        condition_dim=train_conditions[0].shape[1],
        hidden_size=llm.config.hidden_size,
        tokens_per_region=tokens,
        location_columns=BOX_COLUMNS if location else 0,
    )
    vqa = RegionLanguageModel(llm=llm, tokenizer=tokenizer, projector=projector)
    optimizer = torch.optim.AdamW(vqa.parameters(), lr=lr, weight_decay=1e-4)
    rng = np.random.default_rng(seed)
    for _ in range(steps):
        batch = rng.choice(len(train), 16, replace=False)
        loss = vqa.loss([train[i].conversation for i in batch], [train_conditions[i] for i in batch])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vqa.parameters(), 1.0)
        optimizer.step()
    vqa.eval()
    asked = [(n, turns, test_conditions[n]) for n, r in enumerate(test) for turns in asked_turns(r.conversation)]
    answers: list[list[str]] = [[] for _ in test]
    for start in range(0, len(asked), 64):
        part = asked[start : start + 64]
        replies = vqa.generate([c for _, c, _ in part], [x for _, _, x in part], max_new_tokens=3)
        for (n, _, _), reply in zip(part, replies, strict=True):
            answers[n].append(reply)
    return accuracy_by_type(test, answers)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--demo-out", default="outputs/demo")
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--lr", type=float, default=1e-3, help="AdamW's learning rate (the demo's: 1e-3)")
    parser.add_argument("--seed", type=int, default=0, help="seeds the projector's initial weights and the batches")
    parser.add_argument("--only", nargs="+", help="run only the variants of these names (the table's row names)")
    args = parser.parse_args()
    torch.set_num_threads(1)  # the demo's setting on 2 cores
    out = Path(args.demo_out)
    root = out / "data"
    model = build_regionspot(out / "train" / "adapter.yaml").eval()
    train, _ = load_region_qa(root / "qa_train.json")
    test, _ = load_region_qa(root / "qa_test.json")
    data = (train, region_conditions(model, train, root), test, region_conditions(model, test, root))
    rows = {"majority answer": accuracy_by_type(test, majority_answers(train, test))}
    for name, projector_cls, tokens, box, location in (
        ("MLP, not standardised, 1 token", UnstandardisedProjector, 1, True, False),
        ("MLP, standardised, 1 token (default)", RegionProjector, 1, True, False),
        ("MLP, standardised, 4 tokens", RegionProjector, 4, True, False),
        ("MLP, standardised, 4 tokens, without the box", RegionProjector, 4, False, False),
        ("MLP, standardised, 4 tokens and a location token", RegionProjector, 4, True, True),
    ):
        if args.only and name not in args.only:
            continue
        start = time.perf_counter()
        rows[name] = train_and_answer(
            projector_cls,
            tokens=tokens,
            llm_folder=out / "llm",
            data=data,
            steps=args.steps,
            lr=args.lr,
            box=box,
            location=location,
            seed=args.seed,
        )
        print(f"{name}: {time.perf_counter() - start:.0f} s", flush=True)
    print(format_vqa_table(rows))


if __name__ == "__main__":
    main()
