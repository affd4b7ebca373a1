"""The demo's "segment everything": `RegionSpotPredictor.predict_everything`, at its defaults, on test images.

    python -m regionspot.demo.everything --demo-out outputs/demo [--images 50]

Each image is segmented by SAM's automatic mask generator (its published thresholds) on the demo's stand-in SAM,
every mask is named over the whole vocabulary, and `regionspot.evaluation.everything` scores what a user sees: the
share of objects found, the share of those named right, and the extra regions per image.
"""

from __future__ import annotations

import argparse
import time
import warnings
from pathlib import Path
from typing import Any

from regionspot.boxes import xyxy_to_xywh
from regionspot.build import build_regionspot
from regionspot.data.coco import load_annotations
from regionspot.evaluation.everything import score_everything
from regionspot.images import load_image
from regionspot.modeling.sam import NothingKeptWarning
from regionspot.predictor import RegionSpotPredictor

COLUMNS = ("found", "named", "extra_per_image")


def segment_everything(
    model_config: str | Path, ann_file: str | Path, *, max_images: int | None = None
) -> tuple[dict[str, float], float]:
    """Segment and name every (or the first `max_images`) image of `ann_file` with `predict_everything`'s
    defaults; return `score_everything`'s numbers on those images, with the count of images on which the generator
    kept nothing (`nothing_kept`: counted, not warned about once each), and the seconds per image."""
    gt = load_annotations(ann_file)
    images = sorted(gt["images"], key=lambda image: image["id"])[:max_images]
    names = [category["name"] for category in gt["categories"]]
    ids = [category["id"] for category in gt["categories"]]
    predictor = RegionSpotPredictor(build_regionspot(model_config))
    start = time.perf_counter()
    regions: list[dict[str, Any]] = []
    nothing_kept = 0
    for image in images:
        predictor.set_image(load_image(Path(ann_file).parent / image["file_name"]))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NothingKeptWarning)
            found = predictor.predict_everything(vocabulary=names, top_k=1)
        nothing_kept += len(found) == 0
        regions += [
            {"image_id": image["id"], "bbox": xyxy_to_xywh(box).tolist(), "category_id": ids[int(best[0])]}
            for box, best in zip(found.boxes.double(), found.class_ids, strict=True)
        ]
    seconds = (time.perf_counter() - start) / len(images)
    kept = {image["id"] for image in images}
    subset = {**gt, "images": images, "annotations": [a for a in gt["annotations"] if a["image_id"] in kept]}
    return {**score_everything(subset, regions), "nothing_kept": nothing_kept}, seconds


def format_everything_table(scores: dict[str, float]) -> str:
    return "\n".join(
        [
            "| objects found (%) | found named right (%) | extra regions per image | images | images, none kept |",
            "|---:|---:|---:|---:|---:|",
            f"| {100 * scores['found']:.1f} | {100 * scores['named']:.1f} | {scores['extra_per_image']:.2f} "
            f"| {scores['images']} | {scores['nothing_kept']} |",
        ]
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m regionspot.demo.everything", description=__doc__.split("\n")[0])
    parser.add_argument("--demo-out", default="outputs/demo", help="a finished demo run's folder")
    parser.add_argument("--images", type=int, default=None, help="the first N test images only (default: all)")
    args = parser.parse_args(argv)
    out = Path(args.demo_out)
    test = out / "data" / "test.json"
    scores, seconds = segment_everything(out / "train" / "adapter.yaml", test, max_images=args.images)
    print(format_everything_table(scores))
    print(f"{seconds:.2f} s per image")


if __name__ == "__main__":
    main()
