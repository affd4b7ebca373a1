"""Inference speed and memory of the predictor: images/s and regions/s against regions per image and vocabulary size.

    python benchmarks/bench_predictor.py                                   # tiny random backbones, CPU
    python benchmarks/bench_predictor.py --config regionspot_bl336 --random-weights \\
        --one-template --boxes 1 10 100 --classes 80 1203 --repeats 1  # real sizes on a CPU (minutes)
    python benchmarks/bench_predictor.py --config regionspot_bl336 --random-weights \\
        --device cuda --dtype bfloat16 --peak-tflops 989               # an H100/H200 (dense bf16 peak)

One random image is embedded once (`set_image`, timed apart). Per vocabulary, the text embeddings are computed once
("text, once": every prompt through CLIP's text tower; `predict` then reads them from the cache), and each row times
`predict` on N random boxes against the C names. One image costs set_image + predict: images/s and regions/s count
both. Peak memory is that of the row's warm-up calls (RSS on a CPU, allocated tensors on a GPU). Backbones TFLOP/s:
the FLOPs of SAM's image encoder, CLIP's token map and SAM's decoder (`BackboneFlops`) over the image's time; MFU is
that over `--peak-tflops`. Speed does not depend on the weights, so `--random-weights` times the real architectures
without checkpoints. Paste the tables into docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import threading
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import numpy as np
import torch
from timing import once_ms
from torch.utils.flop_counter import FlopCounterMode

from regionspot import RegionSpotConfig, RegionSpotPredictor, build_regionspot
from regionspot.modeling.regionspot import RegionSpot
from regionspot.modeling.sam import SamPrompts


class PeakMemory:
    """Peak memory (MiB) while the block runs: CUDA's allocator peak, or on a CPU (Linux) the RSS sampled every 2 ms
    (the process's lifetime high-water mark, ru_maxrss, could not tell one setting from the ones before it)."""

    def __init__(self, device: torch.device) -> None:
        self.device, self.mib = device, 0.0
        self._done = threading.Event()

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _sample(self) -> None:
        page_mib = os.sysconf("SC_PAGE_SIZE") / 2**20
        while True:  # torch's kernels release the GIL, so this runs while they compute
            with open("/proc/self/statm") as statm:  # Linux: size, resident, ... in pages
                self.mib = max(self.mib, int(statm.read().split()[1]) * page_mib)
            if self._done.wait(0.002):
                return

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            self.mib = torch.cuda.max_memory_allocated(self.device) / 2**20
        else:
            self._done.set()
            self._thread.join()


@dataclass
class Measured:
    ms: float  # median wall time of the timed calls
    peak_mib: float  # peak memory of the warm-up call


def measure(*fns: Callable[[], object], device: torch.device, repeats: int) -> list[Measured]:
    """Each fn's peak memory on an untimed warm-up call, then the median of `repeats` timed calls, the fns taking
    turns, so that a neighbour's load on the machine falls on all of them alike (timing.median_ms times one fn)."""
    peaks = []
    for fn in fns:
        with PeakMemory(device) as memory:
            fn()
        peaks.append(memory.mib)
    times = [[once_ms(fn, device=device) for fn in fns] for _ in range(repeats)]
    return [
        Measured(ms=statistics.median(fn_times), peak_mib=mib)
        for fn_times, mib in zip(zip(*times, strict=True), peaks, strict=True)
    ]


class BackboneFlops:
    """FLOPs of the frozen backbones for one image and N boxes: SAM's image encoder, CLIP's token map, SAM's decoder.

    Counted (FlopCounterMode) on a copy built on the meta device: free, and the same whatever kernels a device picks
    (on a CPU the fused attention kernels go uncounted). For SAM ViT-B and CLIP ViT-L/14@336 this gives the issue's
    0.97 and 0.38 TFLOP per image, and 3.6 GFLOP per box with masks (2.0 tokens only).
    """

    def __init__(self, config: RegionSpotConfig) -> None:
        config = copy.deepcopy(config)
        config.clip.precision = "auto"  # a fixed precision turns autocast off, which the meta device does not have
        with torch.device("meta"):
            self.model = build_regionspot(config)

    @torch.no_grad()
    def tflop(self, boxes: int, *, with_masks: bool) -> float:
        sam, clip = self.model.sam, self.model.clip
        with FlopCounterMode(display=False) as flops:
            embedding = sam.embed_images(torch.empty(1, 3, sam.image_size, sam.image_size, device="meta"))
            clip.feature_map(torch.empty(1, 3, clip.image_size, clip.image_size, device="meta"))
            sam.decode(embedding, [SamPrompts(boxes=torch.zeros(boxes, 4, device="meta"))], with_masks=with_masks)
        return flops.get_total_flops() / 1e12


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """What bench_predictor.py and bench_overhead.py share: the model, where it runs, the image and the boxes."""
    parser.add_argument("--config", default="tiny")
    parser.add_argument("--random-weights", action="store_true", help="ignore the checkpoints the config names")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32", help="the whole model's")
    parser.add_argument("--image-size", type=int, default=640, help="side of the square test image")
    parser.add_argument("--boxes", type=int, nargs="+", default=[1, 10, 100, 300], help="regions per image")
    parser.add_argument("--tokens-only", action="store_true", help="predict(return_masks=False): no SAM masks")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per setting, after one warm-up")
    parser.add_argument("--peak-tflops", type=float, help="the device's peak at --dtype, for MFU")
    parser.add_argument("--compile", action="store_true", help="torch.compile the image encoders (compile_backbones)")


def build(args: argparse.Namespace, *, one_template: bool = False) -> tuple[RegionSpot, BackboneFlops]:
    """The model on --device in --dtype, and its backbones' FLOP counter."""
    config = RegionSpotConfig.from_yaml(args.config)
    if args.random_weights:
        config.sam.checkpoint = config.clip.checkpoint = config.adapter.checkpoint = None
    if one_template:
        config.clip.templates = "plain"
    # All of it in --dtype, CLIP too whatever clip.precision fixes (RegionSpot's float16 is slow on a CPU).
    model = build_regionspot(config).to(device=args.device, dtype=getattr(torch, args.dtype))
    if args.compile:  # the warm-up call of each timing compiles
        model.compile_backbones()
    return model, BackboneFlops(config)


def random_boxes(rng: np.random.Generator, count: int, image_size: int) -> np.ndarray:
    """(count, 4) x1, y1, x2, y2 inside the image, 8 px to half the image wide."""
    corners = rng.uniform(0, image_size / 2, (count, 2))
    return np.concatenate([corners, corners + rng.uniform(8, image_size / 2, (count, 2))], axis=1)


def print_header(model: RegionSpot, args: argparse.Namespace) -> None:
    counts = model.parameter_counts()
    threads = torch.get_num_threads()
    compiled = ", image encoders compiled" if args.compile else ""
    print(
        f"# {args.config} on {args.device} ({args.dtype}{compiled}), {threads} CPU threads, torch {torch.__version__}"
    )
    print(f"# trainable {counts['trainable'] / 1e6:.2f}M, frozen {counts['frozen'] / 1e6:.2f}M parameters")


def utilisation(tflop: float, ms: float, peak_tflops: float | None) -> str:
    """'achieved TFLOP/s | MFU' table cells."""
    achieved = tflop / ms * 1000
    return f"{achieved:.3g} | {'-' if peak_tflops is None else f'{achieved / peak_tflops:.1%}'}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_arguments(parser)
    parser.add_argument("--classes", type=int, nargs="+", default=[80, 1203, 13204], help="LVIS 1203, V3Det 13204")
    parser.add_argument(
        "--one-template", action="store_true", help='one prompt per class ("{}."): 13k names x 81 prompts take hours'
    )
    args = parser.parse_args()

    torch.manual_seed(0)
    device = torch.device(args.device)
    model, flops = build(args, one_template=args.one_template)
    predictor = RegionSpotPredictor(model)
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (args.image_size, args.image_size, 3), dtype=np.uint8)

    print_header(model, args)
    with_masks = not args.tokens_only
    print(f"# {len(model.clip.templates)} prompt(s) per class; masks {'' if with_masks else 'not '}returned")
    (embedded,) = measure(lambda: predictor.set_image(image), device=device, repeats=args.repeats)
    print(f"# set_image (SAM + CLIP embedding of a {args.image_size}px image): {embedded.ms:.1f} ms, "
          f"peak {embedded.peak_mib:.0f} MiB")  # fmt: skip
    once_ms(lambda: model.clip.encode_vocabulary(["warm-up"]), device=device)  # so that "text, once" is the text alone
    print(
        "| regions | classes | text, once ms | predict ms | images/s | regions/s | peak MiB | backbones TFLOP/s | MFU |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for num_classes in args.classes:
        vocabulary = [f"class {i}" for i in range(num_classes)]
        model.clip.clear_text_cache()
        text_ms = once_ms(lambda v=vocabulary: model.clip.encode_vocabulary(v), device=device)
        for num_boxes in args.boxes:
            boxes = random_boxes(rng, num_boxes, args.image_size)
            predict = partial(predictor.predict, boxes=boxes, vocabulary=vocabulary, return_masks=with_masks)
            (run,) = measure(predict, device=device, repeats=args.repeats)
            image_ms = embedded.ms + run.ms
            print(
                f"| {num_boxes} | {num_classes} | {text_ms:.0f} | {run.ms:.1f} | {1000 / image_ms:.3g} "
                f"| {num_boxes * 1000 / image_ms:.3g} | {max(run.peak_mib, embedded.peak_mib):.0f} "
                f"| {utilisation(flops.tflop(num_boxes, with_masks=with_masks), image_ms, args.peak_tflops)} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
