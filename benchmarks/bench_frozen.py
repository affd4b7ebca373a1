"""SAM's mask decoder in the one frozen-feature step: one call per image vs the prompts of a batch together,
with and without mask upscaling (training and validation read the region tokens only).

    python benchmarks/bench_frozen.py                              # tiny SAM
    python benchmarks/bench_frozen.py --variant vit_b --images 2 --boxes 16
    python benchmarks/bench_frozen.py --variant vit_b --device cuda --images 16 --boxes 50

The image embeddings are random (the decoder's cost does not depend on them or on the weights), so the
real SAMs are timed without checkpoints and without running their image encoder. Prints a table.
"""

from __future__ import annotations

import argparse

import torch
from timing import median_ms

from regionspot.modeling.sam import SamPrompts, SamRegionEncoder, build_sam


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variant", default="tiny", choices=["tiny", "vit_b", "vit_l", "vit_h"])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--boxes", type=int, default=16, help="boxes per image")
    parser.add_argument("--prompt-batch-size", type=int, default=64, help="prompts per decoder call")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    device = torch.device(args.device)
    torch.manual_seed(0)
    encoder = SamRegionEncoder(sam=build_sam(variant=args.variant), prompt_batch_size=args.prompt_batch_size)
    encoder = encoder.to(device).eval()
    size = encoder.image_size
    grid = encoder.sam.prompt_encoder.image_embedding_size
    embeddings = torch.randn(args.images, encoder.token_dim, *grid, device=device)
    corners = torch.rand(args.images, args.boxes, 2, device=device) * size / 2
    boxes = torch.cat([corners, corners + 8 + torch.rand_like(corners) * size / 2], dim=-1)
    prompts = [SamPrompts(boxes=b) for b in boxes]

    def per_image(with_masks: bool):
        return [encoder.decode(embeddings[i : i + 1], [p], with_masks=with_masks) for i, p in enumerate(prompts)]

    runs = {
        "one call per image, with masks (the old training path)": lambda: per_image(True),
        "batched over images, with masks (predictor, evaluate.py)": lambda: encoder.decode(embeddings, prompts),
        "batched over images, tokens only (training, validation)": lambda: encoder.decode(
            embeddings, prompts, with_masks=False
        ),
    }
    print(f"# SAM {args.variant} decoder on {device}, {torch.get_num_threads()} CPU threads, torch {torch.__version__}")
    print(f"# {args.images} images x {args.boxes} boxes, {args.prompt_batch_size} prompts per call")
    print("| decoding | ms per batch | ms per box |")
    print("|---|---:|---:|")
    total = args.images * args.boxes
    with torch.no_grad():
        for name, run in runs.items():
            ms = median_ms(run, device=device, repeats=args.repeats)
            print(f"| {name} | {ms:.1f} | {ms / total:.2f} |")


if __name__ == "__main__":
    main()
