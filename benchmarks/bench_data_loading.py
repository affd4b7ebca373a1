"""Training data loading: images/s from JPEG files to `PreparedImage`s, in the training process vs in workers.

    python benchmarks/bench_data_loading.py                     # 640x480 JPEGs, SAM at 1024 px, CLIP at 336 px
    python benchmarks/bench_data_loading.py --workers 0 2 4 8   # on a machine with more cores

Each row reads the same images through `RegionDataModule`'s training loader (decode, flip, SAM's and CLIP's
resizes: what a training step needs before its backbones run). With 0 workers the training process does all of it
(the module resizes); with workers they do, and the training process only receives the batches: the second column
is what it waits for per image, the time a GPU would idle unless the loader keeps ahead. The images carry noise so
that their JPEG decoding costs what a photograph's does. Prints one table.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from regionspot.data import AugmentConfig, DatasetConfig
from regionspot.data.toy import write_colour_boxes
from regionspot.modeling.preprocess import ImagePreprocessor
from regionspot.training import RegionDataModule


def write_jpegs(root: Path, *, num_images: int, size: tuple[int, int]) -> tuple[Path, Path]:
    """The toy boxes data set, its images re-saved as noisy JPEGs (quality 90)."""
    ann, images = write_colour_boxes(root, num_images=num_images, size=size)
    data = json.loads(ann.read_text())
    rng = np.random.default_rng(0)
    for image in data["images"]:
        pixels = np.asarray(Image.open(images / image["file_name"]).convert("RGB"), dtype=np.int16)
        noisy = np.clip(pixels + rng.integers(-40, 41, pixels.shape), 0, 255).astype(np.uint8)
        image["file_name"] = Path(image["file_name"]).with_suffix(".jpg").name
        Image.fromarray(noisy).save(images / image["file_name"], quality=90)
    ann.write_text(json.dumps(data))
    return ann, images


def images_per_s(
    ann: Path, images: Path, *, workers: int, preprocessor: ImagePreprocessor, args: argparse.Namespace
) -> tuple[float, float]:
    """(images/s through the loader, ms per image the training process spends receiving and resizing)."""
    data = RegionDataModule(
        train={"toy": DatasetConfig(ann_file=str(ann), image_dir=str(images))},
        batch_size=args.batch_size,
        num_workers=workers,
        augment=AugmentConfig(flip_prob=0.5, short_edges=[], crop_prob=0.0),
        batches_per_epoch=args.batches + 1,
    )
    data.setup("fit")
    data.prepare_images_with(preprocessor)  # as RegionSpotModule.setup does
    batches = iter(data.train_dataloader())
    next(batches)  # warm-up: worker start-up, first files
    start, busy, count = time.perf_counter(), 0.0, 0
    for _ in range(args.batches):
        received = time.perf_counter()
        batch = next(batches)
        if workers == 0:  # the module's own fall-back: it resizes what the loader gave
            batch["images"] = [preprocessor(image) for image in batch["images"]]
        busy += time.perf_counter() - received
        count += len(batch["images"])
    return count / (time.perf_counter() - start), 1000 * busy / count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--image-size", type=int, nargs=2, default=[480, 640], metavar=("H", "W"))
    parser.add_argument("--sam-size", type=int, default=1024)
    parser.add_argument("--clip-size", type=int, default=336)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--batches", type=int, default=8, help="timed batches per row, after one warm-up batch")
    args = parser.parse_args()
    preprocessor = ImagePreprocessor(sam_size=args.sam_size, clip_size=args.clip_size)
    with tempfile.TemporaryDirectory() as tmp:
        ann, images = write_jpegs(
            Path(tmp), num_images=args.batch_size * (args.batches + 1), size=tuple(args.image_size)
        )
        height, width = args.image_size
        print(f"{width}x{height} JPEGs -> SAM {args.sam_size} px + CLIP {args.clip_size} px, batch {args.batch_size}")
        print("| workers | images/s | training process ms/image |")
        print("|---:|---:|---:|")
        for workers in args.workers:
            rate, busy = images_per_s(ann, images, workers=workers, preprocessor=preprocessor, args=args)
            print(f"| {workers} | {rate:.1f} | {busy:.1f} |")


if __name__ == "__main__":
    main()
