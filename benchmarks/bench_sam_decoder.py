"""SAM's mask decoder against the composed tokens-only decoding, per image, as boxes per image grow.

    python benchmarks/bench_sam_decoder.py                         # SAM ViT-B's decoder shape, CPU
    python benchmarks/bench_sam_decoder.py --boxes 1 10 --device cuda

Three decodings of the same boxes of one image, `--prompt-batch-size` prompts per call:
- SAM's decoder: segment_anything's `MaskDecoder` (the package's path when masks are wanted);
- SAM's transformer, tokens only: its two-way transformer run whole on one copy of the image embedding per box,
  no mask upscaling (the tokens-only path before the image side of the first block was shared);
- composed, tokens only: `SamRegionEncoder.decode(..., with_masks=False)`, the first block's image side once per
  image (the package's path when only region tokens are read: training, validation, extraction).
The SAM is ViT-B with random weights and a random 64x64 image embedding (the decoder's cost does not depend on
the weights or the embedding's values; its image encoder is not run). Prints a table, ms per image.
"""

from __future__ import annotations

import argparse

import torch
from timing import median_ms

from regionspot.modeling.sam import SamPrompts, SamRegionEncoder, build_sam


def sam_transformer_tokens(encoder: SamRegionEncoder, embedding: torch.Tensor, prompts: SamPrompts) -> None:
    """SAM's two-way transformer and IoU head on one image's prompts, chunked as the encoder chunks them."""
    sam, decoder = encoder.sam, encoder.sam.mask_decoder
    image_pe = sam.prompt_encoder.get_dense_pe()
    output_tokens = torch.cat([decoder.iou_token.weight, decoder.mask_tokens.weight], dim=0)
    for chunk in prompts.chunk(encoder.prompt_batch_size):
        sparse, dense = sam.prompt_encoder(points=None, boxes=chunk.boxes, masks=None)
        tokens = torch.cat([output_tokens[None].expand(len(chunk), -1, -1), sparse], dim=1)
        src = embedding + dense  # (n, C, h, w): one copy of the image embedding per box
        hidden, _ = decoder.transformer(src, image_pe.expand(len(chunk), -1, -1, -1), tokens)
        decoder.iou_prediction_head(hidden[:, 0])


def time_decodings(
    encoder: SamRegionEncoder, embedding: torch.Tensor, prompts: SamPrompts, repeats: int
) -> tuple[float, ...]:
    """Median ms of SAM's decoder, SAM's transformer tokens only, and the composed tokens-only decoding."""
    device = embedding.device
    runs = [
        lambda: encoder.decode(embedding, [prompts], with_masks=True),
        lambda: sam_transformer_tokens(encoder, embedding, prompts),
        lambda: encoder.decode(embedding, [prompts], with_masks=False),
    ]
    with torch.inference_mode():
        return tuple(median_ms(run, device=device, repeats=repeats) for run in runs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variant", default="vit_b", choices=["tiny", "vit_b", "vit_l", "vit_h"])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--boxes", type=int, nargs="+", default=[1, 10, 100, 300], help="boxes per image")
    parser.add_argument("--prompt-batch-size", type=int, default=64, help="prompts per decoder call")
    parser.add_argument("--seconds", type=float, default=20.0, help="rough time budget per cell, sets the repeats")
    args = parser.parse_args()

    device = torch.device(args.device)
    torch.manual_seed(0)
    encoder = SamRegionEncoder(sam=build_sam(variant=args.variant), prompt_batch_size=args.prompt_batch_size)
    encoder = encoder.to(device).eval()
    grid = encoder.sam.prompt_encoder.image_embedding_size
    embedding = torch.randn(1, encoder.token_dim, *grid, device=device)

    print(f"# SAM {args.variant} decoder on {device}, {torch.get_num_threads()} CPU threads, torch {torch.__version__}")
    print(f"# one image, {grid[0]}x{grid[1]} embedding, {args.prompt_batch_size} prompts per call; ms per image")
    print("| boxes per image | SAM's decoder | SAM's transformer, tokens only | composed, tokens only | speed-up |")
    print("|---:|---:|---:|---:|---:|")
    for count in args.boxes:
        corners = torch.rand(count, 2, device=device) * encoder.image_size / 2
        boxes = torch.cat([corners, corners + 8 + torch.rand_like(corners) * encoder.image_size / 2], dim=-1)
        # Large box counts take seconds per call: fewer repeats there (the median of one call after a warm-up).
        repeats = max(1, min(5, int(args.seconds * 1000 / (100 * count))))
        sam_ms, transformer_ms, composed_ms = time_decodings(encoder, embedding, SamPrompts(boxes=boxes), repeats)
        print(
            f"| {count} | {sam_ms:.1f} | {transformer_ms:.1f} | {composed_ms:.1f} | {sam_ms / composed_ms:.2f}x |",
            flush=True,
        )


if __name__ == "__main__":
    main()
