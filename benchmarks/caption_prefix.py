"""How many prefix tokens should a region become? Decoders trained on a finished demo's frozen region features.

    python -m regionspot.demo --out outputs/demo            # first: data, backbones, adapter
    python benchmarks/caption_prefix.py --demo outputs/demo --prefix-tokens 1 4

The demo's trained adapter stays as it is; each region's condition (fused feature + SAM token, as
`RegionSpot.region_condition` makes it) is computed once for the training and test splits, then a fresh
decoder of the demo's size is trained on them for `--steps` steps per setting (same seed, same batches) and
its greedy captions of the test regions are scored with pycocoevalcap. Prints one row per setting.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from regionspot import RegionSpotConfig, build_regionspot
from regionspot.data.build import build_dataset
from regionspot.data.detection import DatasetConfig
from regionspot.evaluation.caption_metrics import score_captions
from regionspot.modeling.caption_decoder import CaptionDecoder
from regionspot.transforms import prepare_prompts


@torch.no_grad()
def conditions(model, dataset, batch_size: int = 32) -> tuple[torch.Tensor, list[str], list[str]]:
    """(R, condition_dim) conditions, R captions and R region keys of every box of `dataset`."""
    rows, captions, keys = [], [], []
    for start in range(0, len(dataset), batch_size):
        items = [dataset[i] for i in range(start, min(start + batch_size, len(dataset)))]
        items = [item for item in items if "skipped" not in item]
        prepared = [model.preprocessor(item["image"]) for item in items]
        prompts = [
            prepare_prompts(model.sam, image_size=p.original_size, boxes=item["boxes"])[0]
            for p, item in zip(prepared, items, strict=True)
        ]
        frozen = model.frozen_features(prepared, prompts)
        rows.append(model.region_condition(frozen, model.region_features(frozen)))
        for item in items:
            captions += item["captions"]
            keys += item["region_keys"]
    return torch.cat(rows), captions, keys


def train_and_score(model, settings, prefix_tokens: int, train, test, *, steps: int, batch_size: int, seed: int):
    """A fresh decoder of the demo's `settings` (its CaptionConfig) but `prefix_tokens`, trained and scored."""
    tokenizer = model.caption_tokenizer
    torch.manual_seed(seed)
    decoder = CaptionDecoder(
        vocab_size=tokenizer.vocab_size, condition_dim=model.caption_decoder.condition_dim, width=settings.width,
        depth=settings.depth, num_heads=settings.num_heads, mlp_dim=settings.mlp_dim, dropout=settings.dropout,
        max_length=settings.max_length, prefix_tokens=prefix_tokens,
    )  # fmt: skip
    optimizer = torch.optim.AdamW(decoder.parameters(), lr=1e-3, weight_decay=1e-4, foreach=True)
    condition, captions, _ = train
    tokens = tokenizer.encode(captions, max_length=settings.max_length)
    order = np.random.default_rng(seed)
    start = time.perf_counter()
    for _ in range(steps):
        batch = torch.from_numpy(order.choice(len(tokens), batch_size, replace=False))
        rows = tokens[batch][:, : int((tokens[batch] != tokenizer.pad_id).sum(1).max())]
        loss = decoder.loss(condition[batch], rows, pad_id=tokenizer.pad_id)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    train_s = time.perf_counter() - start
    decoder.eval()
    ids = decoder.generate(test[0], bos_id=tokenizer.bos_id, eos_id=tokenizer.eos_id)
    predicted = dict(zip(test[2], tokenizer.decode(ids), strict=True))
    references = {key: [caption] for key, caption in zip(test[2], test[1], strict=True)}
    scores = score_captions(predicted, references)
    params = sum(p.numel() for p in decoder.parameters())
    return {"loss": loss.item(), "train_s": train_s, "params": params, **scores}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--demo", default="outputs/demo", help="a finished demo's --out folder")
    parser.add_argument("--prefix-tokens", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    demo = Path(args.demo)
    config = RegionSpotConfig.from_yaml(demo / "train" / "adapter.yaml")
    model = build_regionspot(config).eval()
    splits = {}
    for split, ann in (("train", "pretrain_seen.json"), ("test", "test.json")):  # the demo's training captions
        data = DatasetConfig(ann_file=str(demo / "data" / ann), image_dir=str(demo / "data"), captions=True)
        splits[split] = conditions(model, build_dataset(split, data))
    print(f"# {args.demo}: {len(splits['train'][1])} training and {len(splits['test'][1])} test regions, "
          f"{args.steps} steps of {args.batch_size} captions, torch {torch.__version__}")  # fmt: skip
    print("| prefix tokens | parameters | final loss | train s | CIDEr | BLEU-4 | METEOR | ROUGE-L |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    for count in args.prefix_tokens:
        r = train_and_score(
            model,
            config.caption,
            count,
            splits["train"],
            splits["test"],
            steps=args.steps,
            batch_size=args.batch_size,
            seed=args.seed,
        )
        print(f"| {count} | {r['params'] / 1e6:.2f}M | {r['loss']:.3f} | {r['train_s']:.0f} | {100 * r['CIDEr']:.1f} "
              f"| {100 * r['Bleu_4']:.1f} | {100 * r['METEOR']:.1f} | {100 * r['ROUGE_L']:.1f} |")  # fmt: skip


if __name__ == "__main__":
    main()
