"""Whether the in-memory frozen cache (`model.frozen_cache_size`) earns its place: `regionspot-train fit` with and
without it, on the demo's detection training and on the `tiny` config.

    python benchmarks/bench_frozen_cache.py --out /tmp/frozen_cache            # 300 demo steps, 400 tiny steps

The demo run uses the `demo` training config and model config at the demo's QUICK size (600 pretraining images of
the synthetic shapes, seen names only), with the stand-in backbones' random weights (the same sizes and cost as
fitted ones) and without the caption and VQA heads (which the cache does not change). Each run is a separate
process; prints wall seconds per run and the median images/s of its second half (`train/images_per_sec`).
"""

from __future__ import annotations

import argparse
import csv
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import yaml

from regionspot.configs import resolve_config
from regionspot.data.coco import load_annotations
from regionspot.demo.run import OBJECT_SIZE, OBJECTS_PER_IMAGE, QUICK
from regionspot.demo.synthetic import generate_dataset
from regionspot.evaluation.subsets import restrict_to_categories
from regionspot.files import write_json_atomic


def demo_config(out: Path) -> Path:
    """The demo's detection training at QUICK size, random stand-in backbones, written under `out`."""
    data = generate_dataset(out_dir=out / "data", seed=0, num_train=QUICK.num_train, num_val=QUICK.num_val,
                            num_pretrain=QUICK.num_pretrain, objects_per_image=OBJECTS_PER_IMAGE,
                            object_size=OBJECT_SIZE)  # fmt: skip
    seen = load_annotations(data.annotation_files["train"])["train_category_ids"]
    write_json_atomic(
        out / "pretrain_seen.json",
        restrict_to_categories(load_annotations(data.annotation_files["pretrain"]), [], seen)[0],
        indent=None,
    )
    model = yaml.safe_load(resolve_config("demo", kind="model").read_text())
    model["sam"]["checkpoint"] = model["clip"]["checkpoint"] = None
    model.pop("caption")
    (out / "model.yaml").write_text(yaml.safe_dump(model))
    train = yaml.safe_load(resolve_config("demo", kind="training").read_text())
    for key in ("caption_loss_weight", "caption_regions_per_image", "vqa_loss_weight"):
        train["model"].pop(key)
    train["model"]["model_config"] = str(out / "model.yaml")
    train["data"]["train"] = {"shapes": {"ann_file": str(out / "pretrain_seen.json"), "image_dir": str(data.root),
                                         "flip_prob": 0.0}}  # fmt: skip
    train["data"]["val"] = {"ann_file": str(data.annotation_files["val"]), "image_dir": str(data.root)}
    train["logging"] = {"wandb": False}
    (out / "train.yaml").write_text(yaml.safe_dump(train))
    return out / "train.yaml"


def fit(config: str, cache: int, steps: int, root: Path) -> tuple[float, float]:
    """(wall seconds, median images/s of the second half) of one `fit` in its own process."""
    args = ["fit", "--config", config, "--model.frozen_cache_size", str(cache), "--trainer.max_steps", str(steps),
            "--trainer.val_check_interval", str(steps), "--trainer.default_root_dir", str(root),
            "--trainer.enable_progress_bar", "false", "--export.path", str(root / "adapter.safetensors")]  # fmt: skip
    start = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "regionspot.training", *args], check=True, capture_output=True, cwd=root.parent
    )
    wall = time.perf_counter() - start
    rows = csv.DictReader((root / "logs" / "version_0" / "metrics.csv").open())
    rates = [float(r["train/images_per_sec"]) for r in rows if r.get("train/images_per_sec")]
    return wall, statistics.median(rates[len(rates) // 2 :])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="a folder for the data and the runs")
    parser.add_argument("--demo-steps", type=int, default=300)
    parser.add_argument("--tiny-steps", type=int, default=400)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    runs = [("demo", str(demo_config(args.out)), 11000, args.demo_steps), ("tiny", "tiny", 1000, args.tiny_steps)]
    print("| config | frozen_cache_size | steps | wall s | images/s (2nd half, median) |\n|---|---|---|---|---|")
    for name, config, size, steps in runs:
        for cache in (size, 0):
            wall, rate = fit(config, cache, steps, args.out / f"{name}_{cache}")
            print(f"| {name} | {cache} | {steps} | {wall:.0f} | {rate:.0f} |", flush=True)


if __name__ == "__main__":
    main()
