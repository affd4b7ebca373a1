"""Why the demo's top-1 names can be wrong where its AP is high: the adapter alone, on a finished demo's frozen
features, with what it is trained on and how, and where its errors come from.

    python benchmarks/demo_top1.py --demo-out outputs/demo                     # the demo's recipe
    python benchmarks/demo_top1.py --demo-out outputs/demo --train-split train  # the long-tailed training split
    python benchmarks/demo_top1.py --demo-out outputs/demo --softmax-weight 0   # focal loss alone (RegionSpot's)
    python benchmarks/demo_top1.py --demo-out outputs/demo --no-box-attention  # RegionSpot's adapter, no box attention
    python benchmarks/demo_top1.py --demo-out outputs/demo --distill-weight 0  # no distillation towards CLIP

Needs a finished demo run (`python -m regionspot.demo`): its data and stand-in backbones. SAM and CLIP outputs of
the ground-truth boxes are computed once (no flips); a fresh adapter then trains as `benchmarks/demo_learning.py`
trains it (focal loss over the training names plus, as the demo, 3 x a softmax cross-entropy and 4 x ViLD's
distillation towards CLIP's own embedding of each box) and the test split is scored with all the names. Printed,
in %: LVIS AP (official API) and top-1 accuracy on seen and held-out classes; the share of seen-class boxes whose
top name has the right colour / texture / shape; the share of seen-class boxes named as a held-out class; and top-1
after subtracting each name's mean logit over the test boxes, which tells how much of the error is a per-name
offset rather than a region the adapter cannot tell apart (a diagnostic that reads the test set, not a method).
The first row is CLIP alone: each box's mask-pooled CLIP tokens against the names (no adapter, no SAM), what the
stand-in CLIP itself knows; the second is CLIP's embedding of each box (`RegionSpot.clip_region_embeddings`), what
the distillation pulls the adapter towards.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import numpy as np
import torch
from demo_learning import MODEL_CONFIG, cache_features, detections, train_adapter

from regionspot import RegionSpotConfig, build_regionspot
from regionspot.data.coco import load_annotations
from regionspot.demo.backbones import region_embeddings, region_weights
from regionspot.demo.synthetic import load_split
from regionspot.evaluation.subsets import score_category_subsets

ATTRIBUTES = ("colour", "texture", "shape")  # the words of a class name, in order


def error_shares(logits: torch.Tensor, labels: torch.Tensor, names: dict[int, str], ids: list[int], heldout) -> dict:
    """Top-1 and its parts from (N, K) logits over the names `ids` and the N true category ids."""
    seen = torch.tensor([int(y) not in heldout for y in labels])
    index = torch.tensor(ids)

    def top1(scores: torch.Tensor) -> dict[str, float]:
        predicted = index[scores.argmax(1)]
        parts = {"seen": seen, "held": ~seen}
        return {part: (predicted[m] == labels[m]).float().mean().item() for part, m in parts.items()}

    predicted = index[logits.argmax(1)][seen]
    truth = labels[seen]
    row = {f"top-1 {k}": v for k, v in top1(logits).items()}
    words = [(names[int(p)].split(), names[int(t)].split()) for p, t in zip(predicted, truth, strict=True)]
    for position, attribute in enumerate(ATTRIBUTES):
        row[f"seen {attribute}"] = float(np.mean([p[position] == t[position] for p, t in words]))
    row["seen named held-out"] = float(np.mean([int(p) in heldout for p in predicted]))
    row["top-1 seen, name offsets removed"] = top1(logits - logits.mean(0, keepdim=True))["seen"]
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--demo-out", default="outputs/demo")
    parser.add_argument("--train-split", default="pretrain_seen", choices=("pretrain_seen", "train"))
    parser.add_argument("--steps", type=int, default=2500)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--softmax-weight", type=float, default=3.0)
    parser.add_argument("--distill-weight", type=float, default=4.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--box-attention", action=argparse.BooleanOptionalAction, default=None,
        help="restrict the adapter's cross-attention to each box's CLIP tokens (default: as the demo's model config)",
    )  # fmt: skip
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.demo_out)
    config = RegionSpotConfig.from_yaml(MODEL_CONFIG)
    config = dataclasses.replace(
        config,
        sam=dataclasses.replace(config.sam, checkpoint=str(out / "backbones" / "sam.pth")),
        clip=dataclasses.replace(config.clip, checkpoint=str(out / "backbones" / "clip.pt")),
    )
    if args.box_attention is not None:
        config = dataclasses.replace(
            config, adapter=dataclasses.replace(config.adapter, box_attention=args.box_attention)
        )
    torch.manual_seed(args.seed)
    model = build_regionspot(config)
    gt = load_annotations(out / "data" / "test.json")
    train_ids, heldout = gt["train_category_ids"], set(gt["heldout_category_ids"])
    names = {c["id"]: c["name"] for c in gt["categories"]}
    all_ids = sorted(names)
    train = load_split(out / "data" / f"{args.train_split}.json", exclude_category_ids=sorted(heldout))
    test = load_split(out / "data" / "test.json")
    train_cache, test_cache = cache_features(model, train), cache_features(model, test)
    labels = torch.cat([torch.as_tensor(e.category_ids) for e in test])
    all_text = model.clip.encode_vocabulary([names[c] for c in all_ids])

    with torch.no_grad():
        pooled = torch.cat(
            [
                region_embeddings(model.clip, torch.as_tensor(e.pixels.copy()).permute(2, 0, 1)[None],
                                  [region_weights(torch.as_tensor(e.masks), model.clip)])
                for e in test
            ]
        )  # fmt: skip
    boxed = torch.cat(model.clip_region_embeddings([c["frozen"] for c in test_cache]))
    rows = {
        "CLIP alone (GT masks)": error_shares(pooled @ all_text.T, labels, names, all_ids, heldout),
        "CLIP alone (GT boxes, by cell coverage)": error_shares(boxed @ all_text.T, labels, names, all_ids, heldout),
    }

    index = {c: i for i, c in enumerate(train_ids)}
    train_labels = [torch.tensor([index[int(c)] for c in e.category_ids]) for e in train]
    train_text = model.clip.encode_vocabulary([names[c] for c in train_ids])
    train_adapter(
        model, train_cache, train_labels, train_text, steps=args.steps, lr=args.lr, batch_size=16, seed=args.seed,
        softmax_weight=args.softmax_weight, distill_weight=args.distill_weight,
    )  # fmt: skip
    model.eval()
    with torch.no_grad():
        features = torch.cat([model.region_features([c["frozen"]])[0][:, 0] for c in test_cache])
    row = error_shares(features @ all_text.T, labels, names, all_ids, heldout)
    scores = score_category_subsets(
        gt, detections(model, test, test_cache, all_text, all_ids), {"seen": train_ids, "held": sorted(heldout)}
    )
    rows[f"adapter on {args.train_split}"] = {"AP seen": scores["seen"]["AP"], "AP held": scores["held"]["AP"], **row}

    columns = list(dict.fromkeys(key for row in rows.values() for key in row))
    print("| | " + " | ".join(columns) + " |\n|---|" + "---:|" * len(columns))
    for name, row in rows.items():
        print(f"| {name} | " + " | ".join(f"{100 * row[c]:.1f}" if c in row else "" for c in columns) + " |")


if __name__ == "__main__":
    main()
