"""onnxruntime against torch eager on the CPU: per image (set_image) and per query of 1 / 10 / 100 / 300 regions.

    python benchmarks/bench_onnx.py                                                    # tiny config, seconds
    python benchmarks/bench_onnx.py --config regionspot_bb --random-weights --repeats 1
    python benchmarks/bench_onnx.py --config regionspot_bl336 --random-weights --repeats 1

Both predictors load the same files (onnx_setup.py; float32 both) and see the same photo (scikit-image's
astronaut, 512 x 512) and the same random boxes, against 80 names whose text embeddings are computed before the
timing (both cache a vocabulary). "first query" = set_image + predict (a new image), "repeat" = predict alone (an
image already embedded, as the server's cache serves it). Masks are decoded and upscaled (return_masks=True), or
with --tokens-only not (return_masks=False: the decoder_tokens graph, the first block's image side shared).
Times are medians of --repeats calls after one warm-up, with --threads compute threads for both. On a GPU:
--device cuda for torch, --providers CUDAExecutionProvider CPUExecutionProvider for onnxruntime (install
onnxruntime-gpu in place of onnxruntime); benchmarks/gpu.sh runs it so.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import onnx_setup
from skimage import data as skimage_data


def median_s(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def random_boxes(count: int, height: int, width: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    corner = rng.uniform(0, [width * 0.8, height * 0.8], (count, 2))
    size = rng.uniform(8, [width * 0.5, height * 0.5], (count, 2))
    return np.concatenate([corner, np.minimum(corner + size, [width, height])], axis=1).astype(np.float32)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="tiny")
    parser.add_argument("--one-template", action="store_true", help="names as '{}.' alone (see onnx_setup.py)")
    parser.add_argument("--random-weights", action="store_true", help="random SAM/CLIP/adapter saved to files")
    parser.add_argument("--work", help="folder for the weights and the export (default /tmp/regionspot-bench-NAME)")
    parser.add_argument("--regions", type=int, nargs="+", default=[1, 10, 100, 300])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--names", type=int, default=80, help="vocabulary size (its text is embedded before timing)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu", help="the torch predictor's device (cuda: on the GPU)")
    parser.add_argument("--providers", nargs="+", help="onnxruntime's, e.g. CUDAExecutionProvider CPUExecutionProvider")
    parser.add_argument("--tokens-only", action="store_true", help="predict(return_masks=False): names, no masks")
    args = parser.parse_args()
    work, config = onnx_setup.held_config_of(args, work=Path(args.work) if args.work else None)
    start = time.perf_counter()
    folder = onnx_setup.exported(config, work)
    print(f"# export ready in {time.perf_counter() - start:.0f} s: {folder}")
    torch_predictor, onnx_predictor = onnx_setup.predictors(
        config, folder, threads=args.threads, device=args.device, providers=args.providers
    )
    rgb = skimage_data.astronaut()
    names = [f"object number {i}" for i in range(args.names)]
    print(f"# {args.config}, {platform.processor() or platform.machine()}, {args.threads} threads, torch on "
          f"{args.device}, onnxruntime on {onnx_predictor.providers}, "
          f"repeats {args.repeats}, image {rgb.shape[1]}x{rgb.shape[0]}, {args.names} names, "
          f"masks {'not ' if args.tokens_only else ''}returned")  # fmt: skip
    rows = []
    for name, predictor in (("torch eager", torch_predictor), ("onnxruntime", onnx_predictor)):
        embed = median_s(lambda p=predictor: p.set_image(rgb), args.repeats)
        predictor.predict(vocabulary=names, boxes=random_boxes(1, *rgb.shape[:2]))  # the text embeddings, once
        for count in args.regions:
            boxes = random_boxes(count, *rgb.shape[:2])
            query = median_s(
                lambda p=predictor, b=boxes: p.predict(vocabulary=names, boxes=b, return_masks=not args.tokens_only),
                args.repeats,
            )
            rows.append((name, count, embed, query))
            print(f"# {name}: set_image {embed:.2f} s, {count} regions {query:.2f} s", flush=True)
    print("\n| backend | regions | set_image (ms) | predict (ms) | ms / region | first query (ms) | first / repeat |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, count, embed, query in rows:
        print(f"| {name} | {count} | {embed * 1e3:.1f} | {query * 1e3:.1f} | {query * 1e3 / count:.2f} | "
              f"{(embed + query) * 1e3:.1f} | {(embed + query) / query:.1f}x |")  # fmt: skip
    by = {(name, count): embed + query for name, count, embed, query in rows}
    print("\n| regions | first query: torch / onnxruntime |")
    print("|---:|---:|")
    for count in args.regions:
        print(f"| {count} | {by['torch eager', count] / by['onnxruntime', count]:.2f}x |")


if __name__ == "__main__":
    main()
