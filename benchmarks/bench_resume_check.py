"""What a resumed evaluate.py spends on its run identity, against the evaluation itself.

    python benchmarks/bench_resume_check.py                  # 300 images of 480x640, tiny random backbones, CPU
    python benchmarks/bench_resume_check.py --images 1000 --height 800 --width 1066

A resume checks that nothing the finished images depend on has changed: the model YAML, every weight file it names
and the annotation file by SHA-256 (`run_identity`), and each finished image by the SHA-256 of its bytes
(`check_finished_images`). This times those checks on a finished run (every image re-hashed: the worst case) and
the fresh evaluation that produced it. The images are noisy PNGs, larger files than COCO's JPEGs (~160 kB), so the
hashing time is an upper bound for that size; the evaluation here runs tiny backbones, so real ones (SAM ViT-B
~12 s per image on a CPU, see docs/benchmarks.md) make the checks' share far smaller still.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from regionspot.data.toy import write_colour_boxes
from regionspot.evaluation.cli import main as evaluate_main
from regionspot.evaluation.runner import EvalSettings, _identity, check_finished_images, plan_run
from regionspot.files import file_sha256


def noisy_images(folder: Path, seed: int = 0) -> int:
    """Add noise to every PNG in `folder` (same size, same boxes); return their total bytes."""
    rng = np.random.default_rng(seed)
    total = 0
    for path in sorted(folder.glob("*.png")):
        pixels = np.asarray(Image.open(path).convert("RGB"), dtype=np.int16)
        noisy = np.clip(pixels + rng.integers(-24, 25, pixels.shape), 0, 255).astype(np.uint8)
        Image.fromarray(noisy).save(path)
        total += path.stat().st_size
    return total


def seconds(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=300)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--width", type=int, default=640)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as work:
        root = Path(work)
        ann, images = write_colour_boxes(root, num_images=args.images, size=(args.height, args.width), split="val")
        total = noisy_images(images)
        out = root / "eval"
        argv = ["--config", "tiny", "--ann", str(ann), "--images", str(images), "--out", str(out), "--no-progress"]
        fresh = seconds(lambda: evaluate_main(argv))
        resumed = seconds(lambda: evaluate_main(argv))  # every image done: the checks, then merging and scoring
        settings = EvalSettings(config="tiny", ann=str(ann), images=str(images), out=str(out), progress=False)
        plan = plan_run(settings)[1]
        identity = seconds(lambda: _identity(settings, plan, precision="32-true"))
        finished = seconds(lambda: check_finished_images(out, plan.jobs, images))
        hashing = seconds(lambda: [file_sha256(p) for p in sorted(images.glob("*.png"))])
    size = f"{total / 1e6:.1f} MB ({total / args.images / 1e3:.0f} kB each)"
    print(f"{args.images} images of {args.height}x{args.width}, {size}")
    print("| step | seconds | share of the fresh evaluation |")
    print("| --- | ---: | ---: |")
    for name, value in [
        ("fresh evaluation (evaluate.py, tiny backbones)", fresh),
        ("rerun with every image done (evaluate.py)", resumed),
        ("run identity (YAML, weights, annotation file)", identity),
        ("finished images re-hashed (check_finished_images)", finished),
        (f"SHA-256 of the images alone ({total / hashing / 1e9:.2f} GB/s)", hashing),
    ]:
        print(f"| {name} | {value:.3f} | {100 * value / fresh:.1f}% |")


if __name__ == "__main__":
    main()
