"""Adapter training steps/s with the frozen backbones online vs from a feature cache (`python -m regionspot.extract`).

    python benchmarks/bench_training_cache.py                                   # tiny random backbones
    python benchmarks/bench_training_cache.py --config regionspot_bl336 --random-weights \\
        --images 3 --batch-size 1 --steps 2 --image-size 480 640                # SAM-B + CLIP-L/14@336, random

Both runs are `Trainer.fit` on the same toy images and batches (flips only: what a cache can replay), the cached
one without the image encoders (as train.py builds it for cached data), timed from the end of the warm-up steps to
the end of the last one, data loading included. The extraction is timed too (it runs the backbones once per image
and view). Speed does not depend on the weights, so `--random-weights` times the
real architectures without checkpoints. Prints one table.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import lightning as L
import torch
import yaml

from regionspot import RegionSpotConfig
from regionspot.commands.extract import main as extract_main
from regionspot.data import AugmentConfig, DatasetConfig
from regionspot.data.feature_cache import read_manifest
from regionspot.data.toy import write_colour_boxes
from regionspot.training import BackboneSettings, OptimizerSettings, RegionDataModule, RegionSpotModule


class StepTimer(L.Callback):
    """Wall time from the end of step `warmup` to the end of the last step."""

    def __init__(self, warmup: int) -> None:
        self.warmup, self.start, self.end, self.steps = warmup, 0.0, 0.0, 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        now = time.perf_counter()
        if trainer.global_step == self.warmup:
            self.start = now
        elif trainer.global_step > self.warmup:
            self.end, self.steps = now, trainer.global_step - self.warmup

    @property
    def steps_per_s(self) -> float:
        return self.steps / (self.end - self.start)


def steps_per_s(config_path: Path, dataset: DatasetConfig, args: argparse.Namespace) -> float:
    config = RegionSpotConfig.from_yaml(config_path)
    # As train.py builds it: without the image encoders when the data come from a cache.
    module = RegionSpotModule(
        model_config=config,
        optimizer=OptimizerSettings(lr=1e-4, warmup_steps=1),
        backbones=BackboneSettings(image_encoders=dataset.features is None),
    )
    flips_only = AugmentConfig(flip_prob=0.5, short_edges=[], crop_prob=0.0)
    data = RegionDataModule(
        train={"toy": dataset}, batch_size=args.batch_size, num_workers=0, augment=flips_only, max_regions=None
    )
    timer = StepTimer(args.warmup)
    trainer = L.Trainer(
        accelerator=args.accelerator,
        devices=1,
        max_steps=args.warmup + args.steps,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        use_distributed_sampler=False,
        limit_val_batches=0,
        callbacks=[timer],
        precision=args.precision,
    )
    trainer.fit(module, data)
    return timer.steps_per_s


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="tiny")
    parser.add_argument("--random-weights", action="store_true", help="ignore the checkpoints the config names")
    parser.add_argument("--images", type=int, default=16, help="toy images (each with one box)")
    parser.add_argument("--image-size", type=int, nargs=2, default=[64, 80], metavar=("H", "W"))
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--accelerator", default="cpu")
    parser.add_argument("--precision", default="32-true", help="Lightning precision (bf16-mixed on a GPU)")
    parser.add_argument("--dtype", default="bf16", choices=["bf16", "fp16", "fp32"], help="the cache's dtype")
    args = parser.parse_args()

    root = Path(tempfile.mkdtemp(prefix="bench_cache_"))
    config = RegionSpotConfig.from_yaml(args.config)
    if args.random_weights:
        config.sam.checkpoint = config.clip.checkpoint = config.adapter.checkpoint = None
    config_path = root / "model.yaml"
    config_path.write_text(yaml.safe_dump(config.to_dict()))
    ann, images = write_colour_boxes(root / "toy", num_images=args.images, size=tuple(args.image_size))
    start = time.perf_counter()
    extract_main(
        [
            "--config",
            str(config_path),
            "--ann",
            str(ann),
            "--images",
            str(images),
            "--out",
            str(root / "f"),
            "--clip-maps",
            "--flips",
            "--dtype",
            args.dtype,
            "--batch-size",
            str(args.batch_size),
            "--num-workers",
            "0",
            "--accelerator",
            args.accelerator,
        ]
    )
    extraction_s = time.perf_counter() - start
    cache_bytes = read_manifest(root / "f")["counts"]["bytes"]
    online = steps_per_s(config_path, DatasetConfig(ann_file=str(ann), image_dir=str(images)), args)
    cached = steps_per_s(config_path, DatasetConfig(features=str(root / "f")), args)
    print(
        f"# {args.config}{' (random weights)' if args.random_weights else ''}, {args.accelerator}, "
        f"{torch.get_num_threads()} CPU threads, torch {torch.__version__}, precision {args.precision}"
    )
    print(
        f"# {args.images} images of {args.image_size[0]}x{args.image_size[1]} px, 1 box each, batch "
        f"{args.batch_size}, {args.steps} timed steps after {args.warmup}; cache in {args.dtype} with flips"
    )
    print("| online steps/s | cached steps/s | speed-up | extraction s/image (both views) | cache KiB/image |")
    print("|---:|---:|---:|---:|---:|")
    print(
        f"| {online:.3f} | {cached:.2f} | {cached / online:.1f}x | {extraction_s / args.images:.2f} | "
        f"{cache_bytes / args.images / 1024:.1f} |"
    )


if __name__ == "__main__":
    main()
