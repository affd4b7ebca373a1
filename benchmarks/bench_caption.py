"""Captioning speed beside recognition alone: regions per second at 1, 10 and 100 regions per image.

    python benchmarks/bench_caption.py                                  # a tiny model with the demo's decoder
    python benchmarks/bench_caption.py --config regionspot_bl --decoder tap --device cuda

The image is embedded once (`set_image`); each row times `predict` on N boxes against 80 class names, without
and with `caption=True`, so the difference is the captioner: its condition, and greedy (or beam) decoding of
all N regions together until every caption has ended or `max_length` tokens. Random weights decode to the
full `max_length` (nothing ever says EOS), the worst case; trained ones stop earlier. Speed does not depend on
the weights, so the real architectures are timed without checkpoints. Paste the table into docs/benchmarks.md.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from timing import median_ms

from regionspot import RegionSpotConfig, RegionSpotPredictor, build_regionspot
from regionspot.config import CaptionConfig

# "tap": TAP's decoder (12 layers, width 512, CLIP's whole vocabulary); "demo": the demo's (2 layers, width 128).
DECODERS = {
    "tap": CaptionConfig(),
    "demo": CaptionConfig(depth=2, width=128, num_heads=4, mlp_dim=512, max_length=24, token_ids=list(range(1, 200))),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="tiny")
    parser.add_argument("--decoder", choices=sorted(DECODERS), default="demo")
    parser.add_argument("--beams", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--image-size", type=int, default=640)
    parser.add_argument("--boxes", type=int, nargs="+", default=[1, 10, 100])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    config = RegionSpotConfig.from_yaml(args.config)
    config.sam.checkpoint = config.clip.checkpoint = config.adapter.checkpoint = None
    config.caption = DECODERS[args.decoder]
    config.caption.num_beams = args.beams
    device = torch.device(args.device)
    model = build_regionspot(config).to(device).eval()
    decoder_params = sum(p.numel() for p in model.caption_decoder.parameters())
    predictor = RegionSpotPredictor(model)
    rng = np.random.default_rng(0)
    predictor.set_image(rng.integers(0, 256, (args.image_size, args.image_size, 3), dtype=np.uint8))
    vocabulary = [f"class {i}" for i in range(80)]
    model.clip.encode_vocabulary(vocabulary)  # text once, outside the timings

    print(f"# {args.config} + the {args.decoder} decoder ({decoder_params / 1e6:.1f}M parameters, "
          f"max {config.caption.max_length} tokens, {args.beams} beam(s)) on {device}, "
          f"{torch.get_num_threads()} CPU threads, torch {torch.__version__}")  # fmt: skip
    print("| regions | recognise ms | recognise + caption ms | recognised regions/s | captioned regions/s |")
    print("|---:|---:|---:|---:|---:|")
    for count in args.boxes:
        corners = rng.uniform(0, args.image_size / 2, (count, 2))
        boxes = np.concatenate([corners, corners + rng.uniform(8, args.image_size / 2, (count, 2))], axis=1)
        plain, captioned = (
            median_ms(
                lambda b=boxes, c=caption: predictor.predict(boxes=b, vocabulary=vocabulary, caption=c),
                device=device,
                repeats=args.repeats,
            )
            for caption in (False, True)
        )
        rates = f"{count / plain * 1000:.0f} | {count / captioned * 1000:.0f}"
        print(f"| {count} | {plain:.1f} | {captioned:.1f} | {rates} |")


if __name__ == "__main__":
    main()
