"""Inference speed and memory of the predictor: one image embedding, then N boxes against C classes.

    python benchmarks/bench_predictor.py --config configs/model/tiny.yaml
    python benchmarks/bench_predictor.py --config configs/model/regionspot_bl.yaml --random-weights --device cuda

Speed does not depend on the weights, so `--random-weights` times the real architectures without
checkpoints on disk. Prints one table row per (boxes, classes) setting; paste it into docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import resource
import time

import numpy as np
import torch
from timing import median_ms

from regionspot import RegionSpotConfig, RegionSpotPredictor, build_regionspot


def _peak_memory_mib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/model/tiny.yaml")
    parser.add_argument("--random-weights", action="store_true", help="ignore the checkpoints the config names")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    parser.add_argument("--image-size", type=int, default=640, help="side of the square test image")
    parser.add_argument("--boxes", type=int, nargs="+", default=[1, 16, 100])
    parser.add_argument("--classes", type=int, nargs="+", default=[80, 1203])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    config = RegionSpotConfig.from_yaml(args.config)
    if args.random_weights:
        config.sam.checkpoint = config.clip.checkpoint = config.adapter.checkpoint = None
    device = torch.device(args.device)
    model = build_regionspot(config).to(device=device, dtype=getattr(torch, args.dtype))
    predictor = RegionSpotPredictor(model)
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (args.image_size, args.image_size, 3), dtype=np.uint8)

    counts = model.parameter_counts()
    print(
        f"# {args.config} on {device} ({args.dtype}), {torch.get_num_threads()} CPU threads, torch {torch.__version__}"
    )
    print(f"# trainable {counts['trainable'] / 1e6:.2f}M, frozen {counts['frozen'] / 1e6:.2f}M parameters")
    embed_ms = median_ms(lambda: predictor.set_image(image), device=device, repeats=args.repeats)
    print(f"# set_image (SAM + CLIP embedding of a {args.image_size}px image): {embed_ms:.1f} ms")
    print("| boxes | classes | text (first call) ms | predict ms | regions/s | peak MiB |")
    print("|---:|---:|---:|---:|---:|---:|")
    for num_classes in args.classes:
        vocabulary = [f"class {i}" for i in range(num_classes)]
        model.clip.clear_text_cache()
        start = time.perf_counter()
        model.clip.encode_vocabulary(vocabulary)
        text_ms = (time.perf_counter() - start) * 1000
        for num_boxes in args.boxes:
            corners = rng.uniform(0, args.image_size / 2, (num_boxes, 2))
            sizes = rng.uniform(8, args.image_size / 2, (num_boxes, 2))
            boxes = np.concatenate([corners, corners + sizes], axis=1)
            ms = median_ms(
                lambda b=boxes, v=vocabulary: predictor.predict(boxes=b, vocabulary=v),
                device=device,
                repeats=args.repeats,
            )
            print(
                f"| {num_boxes} | {num_classes} | {text_ms:.0f} | {ms:.1f} | {num_boxes / ms * 1000:.0f} "
                f"| {_peak_memory_mib(device):.0f} |"
            )


if __name__ == "__main__":
    main()
