"""Does the offline demo learn? Generate the synthetic set, fit the tiny backbones, train only the adapter, score.

Plain PyTorch (the real training path is train.py). SAM and CLIP are frozen, so their outputs for the
ground-truth boxes are computed once and cached; the adapter then trains with RegionSpot's focal loss
against the training vocabulary. Held-out validation images are scored with ground-truth boxes against
the whole vocabulary (training and held-out names), softmax class probabilities, official LVIS API.
Chance is the same protocol fed random class probabilities (Dirichlet(1) per box, mean of 3 draws).

    python benchmarks/demo_learning.py                 # everything, into outputs/demo
    python benchmarks/demo_learning.py --reuse         # reuse the data set and backbones already there
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import time
from pathlib import Path

import numpy as np
import torch

from regionspot import RegionSpotConfig, build_regionspot
from regionspot.data.coco import load_annotations
from regionspot.demo.backbones import fit_backbones, region_embeddings, region_weights
from regionspot.demo.run import FULL, OBJECT_SIZE, OBJECTS_PER_IMAGE
from regionspot.demo.synthetic import generate_dataset, load_split
from regionspot.evaluation import region_detections
from regionspot.evaluation.detections import detect_regions
from regionspot.evaluation.subsets import score_category_subsets
from regionspot.modeling.losses import region_distillation_loss, region_focal_loss, region_softmax_loss
from regionspot.transforms import prepare_prompts

MODEL_CONFIG = "demo"
COLUMNS = ("AP", "AP50", "APr", "APc", "APf")


@torch.no_grad()
def cache_features(model, examples, batch_size: int = 32):
    """Per image: its `FrozenFeatures` for the GT boxes (with mask logits), clipped boxes, SAM masks (N, H, W)."""
    cached = []
    for start in range(0, len(examples), batch_size):
        chunk = examples[start : start + batch_size]
        images = [model.preprocessor(e.pixels) for e in chunk]
        prepared = [prepare_prompts(model.sam, image_size=e.pixels.shape[:2], boxes=e.boxes) for e in chunk]
        frozen = model.frozen_features(images, [prompts for prompts, _ in prepared], with_masks=True)
        for image, features, (_, boxes) in zip(images, frozen, prepared, strict=True):
            masks = model.sam.upscale_masks(features.mask_logits, image.sam_input_size, image.original_size)
            cached.append({"frozen": features, "boxes": boxes, "masks": masks[:, 0]})  # one token per region
    return cached


def mask_iou(examples, cached) -> float:
    ious = []
    for example, feats in zip(examples, cached, strict=True):
        truth, pred = torch.as_tensor(example.masks), feats["masks"]
        ious.append(((truth & pred).sum((1, 2)) / (truth | pred).sum((1, 2)).clamp(min=1)).float())
    return torch.cat(ious).mean().item()


@torch.no_grad()
def clip_region_accuracy(model, examples, text, category_ids) -> dict[int, bool]:
    """Zero-shot CLIP alone (no adapter): mask-pooled tokens vs class names; correct or not per annotation id."""
    images = torch.stack([torch.as_tensor(e.pixels.copy()).permute(2, 0, 1) for e in examples])
    weights = [region_weights(torch.as_tensor(e.masks), model.clip) for e in examples]
    right = []
    for start in range(0, len(examples), 32):
        emb = region_embeddings(model.clip, images[start : start + 32], weights[start : start + 32])
        labels = torch.cat([torch.as_tensor(e.category_ids) for e in examples[start : start + 32]])
        right.append(torch.as_tensor(category_ids)[(emb @ text.T).argmax(1)] == labels)
    return torch.cat(right)


def train_adapter(
    model, cached, labels, text, *, steps, lr, batch_size, seed, softmax_weight=0.0, distill_weight=0.0
) -> list[float]:
    """AdamW + warm-up + cosine on the adapter alone, focal loss over the training vocabulary (plus
    `softmax_weight` x the cross-entropy of a softmax over it and `distill_weight` x ViLD's distillation towards
    CLIP's own embedding of each box)."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=1e-4)
    warmup = max(1, steps // 20)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda s: (s + 1) / warmup if s < warmup else 0.5 * (1 + math.cos(math.pi * (s - warmup) / (steps - warmup))),
    )
    model.train()
    losses = []
    for _ in range(steps):
        batch = rng.choice(len(cached), size=min(batch_size, len(cached)), replace=False)
        frozen = [cached[b]["frozen"] for b in batch]
        features = torch.cat(model.region_features(frozen))[:, 0]
        logits, targets = model.classify(features, text), torch.cat([labels[b] for b in batch])
        loss = region_focal_loss(logits, targets)
        if softmax_weight:
            loss = loss + softmax_weight * region_softmax_loss(logits, targets)
        if distill_weight:
            loss = loss + distill_weight * region_distillation_loss(
                features, torch.cat(model.clip_region_embeddings(frozen))
            )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        schedule.step()
        losses.append(loss.item())
    return losses


@torch.no_grad()
def detections(model, examples, cached, text, category_ids, *, random_seed: int | None = None):
    """GT boxes scored against the whole vocabulary; with `random_seed`, random class probabilities instead."""
    model.eval()
    rng = np.random.default_rng(random_seed)
    results = []
    for example, feats in zip(examples, cached, strict=True):
        if random_seed is None:
            results += detect_regions(
                model,
                feats["frozen"],
                text_embeddings=text,
                image_id=example.image_id,
                boxes=feats["boxes"],
                category_ids=category_ids,
            )
        else:
            probs = torch.as_tensor(rng.dirichlet(np.ones(len(category_ids)), size=len(feats["boxes"]))).float()
            results += region_detections(
                image_id=example.image_id, boxes=feats["boxes"], class_probs=probs, category_ids=category_ids
            )
    return results


def table(rows: dict[str, dict[str, dict[str, float]]]) -> str:
    subsets = ("all", "seen", "heldout")
    header = f"{'':8} | " + " | ".join(
        f"{s}:{c}".rjust(11) for s in subsets for c in COLUMNS if s == "seen" or c in ("AP", "AP50")
    )
    lines = [header]
    for name, scores in rows.items():
        cells = [
            f"{100 * scores[s][c]:.1f}".rjust(11) if scores[s][c] >= 0 else "n/a".rjust(11)
            for s in subsets
            for c in COLUMNS
            if s == "seen" or c in ("AP", "AP50")
        ]
        lines.append(f"{name:8} | " + " | ".join(cells))
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="outputs/demo")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--num-train", type=int, default=FULL.num_train)
    parser.add_argument("--num-val", type=int, default=200)
    parser.add_argument("--num-pretrain", type=int, default=FULL.num_pretrain)
    parser.add_argument("--sam-steps", type=int, default=FULL.sam_steps)
    parser.add_argument("--clip-steps", type=int, default=FULL.clip_steps)
    parser.add_argument("--clip-lr", type=float, default=2e-3)
    parser.add_argument("--adapter-steps", type=int, default=FULL.adapter_steps)
    parser.add_argument("--adapter-lr", type=float, default=1e-3)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--reuse", action="store_true", help="reuse the data set and backbones under --out")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    out, seconds = Path(args.out), {}
    data_dir, backbone_dir = out / "data", out / "backbones"

    start = time.perf_counter()
    if not args.reuse:
        generate_dataset(
            out_dir=data_dir,
            seed=args.seed,
            num_train=args.num_train,
            num_val=args.num_val,
            num_pretrain=args.num_pretrain,
            objects_per_image=OBJECTS_PER_IMAGE,
            object_size=OBJECT_SIZE,
        )
    seconds["generate"] = time.perf_counter() - start
    start = time.perf_counter()
    if not args.reuse:
        fitted = fit_backbones(
            ann_file=data_dir / "pretrain.json",
            out_dir=backbone_dir,
            seed=args.seed,
            sam_steps=args.sam_steps,
            clip_steps=args.clip_steps,
            batch_size=args.batch_size,
            clip_lr=args.clip_lr,
        )
        for name in ("sam", "clip"):
            curve = getattr(fitted, f"{name}_losses")
            print(f"fit {name}: loss {curve[0]:.3f} -> {np.mean(curve[-20:]):.3f} in {fitted.seconds[name]:.0f} s")
    seconds["fit backbones"] = time.perf_counter() - start

    start = time.perf_counter()
    config = RegionSpotConfig.from_yaml(MODEL_CONFIG)
    config = dataclasses.replace(
        config,
        sam=dataclasses.replace(config.sam, checkpoint=str(backbone_dir / "sam.pth")),
        clip=dataclasses.replace(config.clip, checkpoint=str(backbone_dir / "clip.pt")),
    )
    torch.manual_seed(args.seed)
    model = build_regionspot(config)
    gt = load_annotations(data_dir / "val.json")
    train_ids, heldout_ids = gt["train_category_ids"], gt["heldout_category_ids"]
    names = {c["id"]: c["name"] for c in gt["categories"]}
    all_ids = sorted(names)
    train_examples = load_split(data_dir / "train.json", exclude_category_ids=heldout_ids)
    val_examples = load_split(data_dir / "val.json")
    train_cache = cache_features(model, train_examples)
    val_cache = cache_features(model, val_examples)
    seconds["cache features"] = time.perf_counter() - start

    start = time.perf_counter()
    index = {cid: i for i, cid in enumerate(train_ids)}
    labels = [torch.tensor([index[int(c)] for c in e.category_ids]) for e in train_examples]
    train_text = model.clip.encode_vocabulary([names[c] for c in train_ids])
    losses = train_adapter(
        model,
        train_cache,
        labels,
        train_text,
        steps=args.adapter_steps,
        lr=args.adapter_lr,
        batch_size=args.batch_size,
        seed=args.seed,
    )
    seconds["train adapter"] = time.perf_counter() - start
    print(f"adapter: focal loss {losses[0]:.3f} -> {np.mean(losses[-50:]):.3f}")

    start = time.perf_counter()
    all_text = model.clip.encode_vocabulary([names[c] for c in all_ids])
    subsets = {"all": all_ids, "seen": train_ids, "heldout": heldout_ids}
    rows = {
        "regionspot": score_category_subsets(gt, detections(model, val_examples, val_cache, all_text, all_ids), subsets)
    }
    chance = [
        score_category_subsets(
            gt, detections(model, val_examples, val_cache, all_text, all_ids, random_seed=s), subsets
        )
        for s in range(3)
    ]
    rows["chance"] = {s: {k: float(np.mean([c[s][k] for c in chance])) for k in chance[0][s]} for s in subsets}
    seconds["evaluate"] = time.perf_counter() - start

    right = clip_region_accuracy(model, val_examples, all_text, all_ids)
    seen_mask = torch.cat([torch.as_tensor(np.isin(e.category_ids, train_ids)) for e in val_examples])
    print(f"SAM mask IoU on val (GT boxes): {mask_iou(val_examples, val_cache):.3f}")
    print(
        f"CLIP alone, mask-pooled zero-shot top-1 over {len(all_ids)} names: "
        f"seen {right[seen_mask].float().mean():.3f}, held-out {right[~seen_mask].float().mean():.3f}"
    )
    print(table(rows))
    print(" | ".join(f"{k} {v:.0f} s" for k, v in seconds.items()), f"| total {sum(seconds.values()):.0f} s")


if __name__ == "__main__":
    main()
