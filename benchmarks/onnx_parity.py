"""Parity of the ONNX predictor with the torch one at any config (the tests check the tiny config in CI).

    python benchmarks/onnx_parity.py                                                   # tiny, seconds
    python benchmarks/onnx_parity.py --config regionspot_bb --random-weights --names 80
    python benchmarks/onnx_parity.py --config regionspot_bl336 --random-weights --names 80 1203

Both predictors load the same files (onnx_setup.py, float32). On scikit-image's photos, with boxes, points (with
background points), masks and their mixes, against the first N of open_clip's ImageNet class names (made unique,
numbered beyond 1000), it reports the largest class-score difference, whether the top-1 name agrees for every
region, and the share of mask pixels that agree; it exits 1 unless scores are within --atol, top-1 agrees everywhere
and masks agree on at least 99.9% of pixels. At the real sizes the text tower dominates: CLIP-L encodes 81 prompts
per name (~13 GFLOP each), so 1203 names take a long while on a CPU.
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np
import onnx_setup
from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES
from skimage import data as skimage_data

PHOTOS = {"astronaut": skimage_data.astronaut, "coffee": skimage_data.coffee, "chelsea": skimage_data.chelsea}


def class_names(count: int) -> list[str]:
    unique = list(dict.fromkeys(IMAGENET_CLASSNAMES))
    return (unique + [f"object number {i}" for i in range(count)])[:count]


def prompt_sets(height: int, width: int, regions: int) -> dict[str, dict]:
    rng = np.random.default_rng(0)
    corner = rng.uniform(0, [width * 0.7, height * 0.7], (regions, 2))
    boxes = np.concatenate([corner, np.minimum(corner + rng.uniform(16, [width / 2, height / 2], (regions, 2)),
                                               [width, height])], axis=1)  # fmt: skip
    points = rng.uniform(0, [width, height], (regions, 3, 2))
    labels = rng.integers(0, 2, (regions, 3))
    masks = np.zeros((regions, height, width), bool)
    for i, (x1, y1, x2, y2) in enumerate(boxes.astype(int)):
        masks[i, y1:y2, x1:x2] = True
    return {
        "boxes": {"boxes": boxes},
        "points": {"points": points, "point_labels": labels},
        "masks": {"masks": masks},
        "boxes+points": {"boxes": boxes, "points": points, "point_labels": labels},
        "boxes+masks": {"boxes": boxes, "masks": masks},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="tiny")
    parser.add_argument("--one-template", action="store_true", help="names as '{}.' alone (see onnx_setup.py)")
    parser.add_argument("--random-weights", action="store_true")
    parser.add_argument("--names", type=int, nargs="+", default=[80])
    parser.add_argument("--regions", type=int, default=8)
    parser.add_argument("--photos", nargs="+", default=sorted(PHOTOS), choices=sorted(PHOTOS))
    parser.add_argument("--atol", type=float, default=1e-4)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    work, config = onnx_setup.held_config_of(args)
    torch_predictor, onnx_predictor = onnx_setup.predictors(
        config, onnx_setup.exported(config, work), threads=args.threads
    )
    print("| photo | prompts | names | max score diff | top-1 agrees | mask pixels agree |")
    print("|---|---|---:|---:|---:|---:|")
    worst_diff, all_top1, worst_masks = 0.0, True, 1.0
    for photo in args.photos:
        rgb = PHOTOS[photo]()
        torch_predictor.set_image(rgb)
        onnx_predictor.set_image(rgb)
        for count in args.names:
            names = class_names(count)
            for kind, prompts in prompt_sets(*rgb.shape[:2], args.regions).items():
                start = time.perf_counter()
                want = torch_predictor.predict(vocabulary=names, return_all_scores=True, **prompts)
                got = onnx_predictor.predict(vocabulary=names, return_all_scores=True, **prompts)
                diff = float(np.abs(got.all_scores - want.all_scores.numpy()).max())
                top1 = bool((got.class_ids[:, 0] == want.class_ids[:, 0].numpy()).all())
                masks = float((got.masks == want.masks.numpy()).mean())
                worst_diff, all_top1, worst_masks = max(worst_diff, diff), all_top1 and top1, min(worst_masks, masks)
                print(f"| {photo} | {kind} | {count} | {diff:.2e} | {top1} | {masks:.5%} |  "
                      f"<!-- {time.perf_counter() - start:.0f} s -->", flush=True)  # fmt: skip
    ok = worst_diff <= args.atol and all_top1 and worst_masks >= 0.999
    print(f"\nworst: score diff {worst_diff:.2e} (bound {args.atol}), top-1 everywhere {all_top1}, "
          f"masks {worst_masks:.5%} -> {'PASS' if ok else 'FAIL'}")  # fmt: skip
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
