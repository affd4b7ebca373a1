"""The fp16 bound: every graph of an export converted to float16 (onnxruntime's `float16` converter, inputs and
outputs kept float32), against the float32 export, on scikit-image's photos (onnx_parity.py's prompts and names).

    python benchmarks/onnx_fp16.py                      # tiny, seconds
    python benchmarks/onnx_fp16.py --config regionspot_bb --random-weights --names 80

Two graphs stay float32 by default (see --keep-float32). Reports, per photo and
prompt kind, the largest class-score difference, whether top-1 agrees, and the share of mask pixels that agree,
then the worst of each: the bound an fp16 deployment would state. Runs on onnxruntime's CPU provider, which runs
float16 graphs (no faster than float32 there: many of its float16 kernels are casts around float32 ones).
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import onnx_parity
import onnx_setup
from onnxruntime.transformers.float16 import convert_float_to_float16

from regionspot.onnx import OnnxRegionPredictor
from regionspot.onnx.predictor import file_sha256


def fp16_export(folder: Path, out: Path, *, keep_float32: list[str]) -> Path:
    """A copy of the export in `folder` with every graph but `keep_float32` in float16 (inputs and outputs float32),
    its manifest's digests updated."""
    out.mkdir(parents=True, exist_ok=True)
    manifest = json.loads((folder / "manifest.json").read_text())
    for name, entry in manifest["graphs"].items():
        model = onnx.load(folder / entry["file"])
        if name not in keep_float32:
            model = convert_float_to_float16(model, keep_io_types=True)
        onnx.save(model, out / entry["file"])
        entry["sha256"] = file_sha256(out / entry["file"])
    shutil.copy(folder / manifest["text"]["tokenizer"], out / manifest["text"]["tokenizer"])
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="tiny")
    parser.add_argument("--one-template", action="store_true")
    parser.add_argument("--random-weights", action="store_true")
    parser.add_argument("--names", type=int, default=80)
    parser.add_argument("--regions", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--keep-float32", nargs="*", default=["text", "mask_prompt"],
        help="graphs left in float32. Default: text (its float16 conversion crashes onnxruntime 1.32's CPU provider "
        "with a segmentation fault; it runs once per vocabulary) and mask_prompt (its logit of probabilities "
        "clamped to 1 - eps is infinite in float16, where 1 - eps rounds to 1: every score NaN)",
    )  # fmt: skip
    args = parser.parse_args()
    work, config = onnx_setup.held_config_of(args)
    folder = onnx_setup.exported(config, work)
    fp32 = OnnxRegionPredictor(folder, threads=args.threads)
    fp16_folder = fp16_export(folder, work / "export-fp16", keep_float32=args.keep_float32)
    fp16 = OnnxRegionPredictor(fp16_folder, threads=args.threads)
    names = onnx_parity.class_names(args.names)
    print("| photo | prompts | max score diff | top-1 agrees | mask pixels agree |\n|---|---|---:|---:|---:|")
    worst = [0.0, 1.0, 1.0]
    for photo, load in onnx_parity.PHOTOS.items():
        rgb = load()
        fp32.set_image(rgb)
        fp16.set_image(rgb)
        for kind, prompts in onnx_parity.prompt_sets(*rgb.shape[:2], args.regions).items():
            want = fp32.predict(vocabulary=names, return_all_scores=True, **prompts)
            got = fp16.predict(vocabulary=names, return_all_scores=True, **prompts)
            diff = float(np.nan_to_num(np.abs(got.all_scores - want.all_scores), nan=np.inf).max())
            top1 = float((got.class_ids[:, 0] == want.class_ids[:, 0]).mean())
            masks = float((got.masks == want.masks).mean())
            worst = [max(worst[0], diff), min(worst[1], top1), min(worst[2], masks)]
            print(f"| {photo} | {kind} | {diff:.2e} | {top1:.0%} | {masks:.4%} |", flush=True)
    print(f"\nworst: score diff {worst[0]:.2e}, top-1 agreement {worst[1]:.0%}, mask pixels {worst[2]:.4%}")


if __name__ == "__main__":
    main()
