"""What the predictor adds to its frozen backbones: end-to-end time over backbones-only time, same image and boxes.

    python benchmarks/bench_overhead.py                                    # tiny random backbones, CPU
    python benchmarks/bench_overhead.py --config regionspot_bl336 --random-weights \\
        --boxes 1 10 100 --repeats 1                                       # real sizes on a CPU (minutes)
    python benchmarks/bench_overhead.py --config regionspot_bl336 --random-weights \\
        --device cuda --dtype bfloat16 --peak-tflops 989

End to end: `set_image` (preprocessing, SAM's image encoder, CLIP's token map), then `predict` (prompt checks, SAM's
decoder, the adapter, scores against `--classes` names whose text embeddings are already cached, masks upscaled to
the image). Backbones only: SAM's image encoder, CLIP's token map and SAM's decoder on the already prepared image and
prompts, decoding as `predict` does (with masks; `--tokens-only`: both without). Overhead = end to end / backbones
only - 1; the issue's target is under 10% at 100 regions per image, and time per image growing less than 2x from 1
to 300 regions (the "vs first row" column). MFU: the backbones' counted FLOPs over their time.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from bench_predictor import add_model_arguments, build, measure, print_header, random_boxes, utilisation

from regionspot import RegionSpotPredictor
from regionspot.transforms import prepare_prompts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_arguments(parser)
    parser.add_argument("--classes", type=int, default=1203, help="vocabulary size (LVIS: 1203)")
    args = parser.parse_args()

    torch.manual_seed(0)
    device = torch.device(args.device)
    model, flops = build(args, one_template=True)  # the text is embedded before any timing: its templates do not matter
    predictor = RegionSpotPredictor(model)
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (args.image_size, args.image_size, 3), dtype=np.uint8)
    vocabulary = [f"class {i}" for i in range(args.classes)]
    model.clip.encode_vocabulary(vocabulary)  # cached, as in a predictor that has served this vocabulary before
    prepared = model.preprocessor(image)
    with_masks = not args.tokens_only

    print_header(model, args)
    print(f"# one {args.image_size}px image, {args.classes} classes; masks {'' if with_masks else 'not '}returned")
    print("| regions | backbones only ms | end to end ms | overhead | end to end vs first row | peak MiB "
          "| backbones TFLOP/s | backbones MFU |")  # fmt: skip
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    first_ms = None
    for count in args.boxes:
        boxes = random_boxes(rng, count, args.image_size)
        prompts, _ = prepare_prompts(model.sam, image_size=prepared.original_size, boxes=boxes)

        def backbones(prompts=prompts) -> None:
            model.decode_regions(model.embed_images([prepared]), [prompts], with_masks=with_masks)

        def end_to_end(boxes=boxes) -> None:
            predictor.set_image(image)
            predictor.predict(boxes=boxes, vocabulary=vocabulary, return_masks=with_masks)

        frozen, whole = measure(backbones, end_to_end, device=device, repeats=args.repeats)
        first_ms = first_ms or whole.ms
        print(
            f"| {count} | {frozen.ms:.1f} | {whole.ms:.1f} | {whole.ms / frozen.ms - 1:+.1%} "
            f"| {whole.ms / first_ms:.2f}x | {whole.peak_mib:.0f} "
            f"| {utilisation(flops.tflop(count, with_masks=with_masks), frozen.ms, args.peak_tflops)} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
