"""The fusion adapter, RegionSpot's only trained part: region tokens attend over CLIP's token map."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class RegionFusionAdapter(nn.Module):
    """Region tokens (queries) cross-attend to CLIP's image tokens (keys/values).

    Linear(token_dim -> width), then `depth` post-norm decoder layers of [self-attention among the
    regions of one image, cross-attention to the CLIP tokens, ReLU FFN], a final LayerNorm and a
    Linear(width -> output_dim) into CLIP's text space. No positional embeddings: SAM's tokens
    already carry position. The self-attention is a `RegionSelfAttention`: linear memory in the number of
    regions, in inference too.

    With `box_attention` (not RegionSpot's design, off by default) each region's cross-attention reads only CLIP's
    class token and the patch tokens whose cells overlap the region's box (always the cell of its centre, so a
    point's zero-size box keeps one): where to look is then given, not learned. It adds no parameters, so an
    adapter's weights load either way, but one trained with it should be scored with it.

    Args:
        token_dim: width of SAM's region tokens (256 for the real SAMs).
        width: CLIP's vision width D (768 ViT-B, 1024 ViT-L).
        output_dim: CLIP's image-text embedding dimension.
        depth, num_heads, ffn_dim, dropout: decoder layer settings (RegionSpot: 3, 8, 2048, 0.1).
        box_attention: restrict each region's cross-attention to the CLIP tokens of its box.
    """

    def __init__(
        self,
        *,
        token_dim: int,
        width: int,
        output_dim: int,
        depth: int = 3,
        num_heads: int = 8,
        ffn_dim: int = 2048,
        dropout: float = 0.1,
        box_attention: bool = False,
    ) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.box_attention = box_attention
        if width % num_heads:
            raise ValueError(f"CLIP width {width} is not divisible by adapter.num_heads={num_heads}")
        self.input_proj = nn.Linear(token_dim, width)
        layer = nn.TransformerDecoderLayer(
            d_model=width,
            nhead=num_heads,
            dim_feedforward=ffn_dim,
            dropout=dropout,
            activation="relu",
            batch_first=True,
            norm_first=False,
        )
        layer.self_attn = RegionSelfAttention.replacing(layer.self_attn)
        self.decoder = nn.TransformerDecoder(layer, num_layers=depth, norm=nn.LayerNorm(width))
        self.output_proj = nn.Linear(width, output_dim)

    def forward(
        self,
        region_tokens: torch.Tensor,
        clip_tokens: torch.Tensor,
        padding_mask: torch.Tensor | None = None,
        region_boxes: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Fuse regions with the image.

        Args:
            region_tokens: (B, Q, token_dim) the regions of B images, padded to Q per image.
            clip_tokens: (B, L, width) CLIP's token map of each image.
            padding_mask: (B, Q) True where a query is padding (it is then ignored as a key).
            region_boxes: (B, Q, 4) each region's x1, y1, x2, y2 as fractions of the image; needed with
                `box_attention`, ignored without.

        Returns:
            (B, Q, output_dim) region features (not normalised).
        """
        queries = self.input_proj(region_tokens.to(self.input_proj.weight.dtype))  # (B, Q, D)
        memory_mask = None
        if self.box_attention:
            if region_boxes is None or region_boxes.shape != (*region_tokens.shape[:2], 4):
                raise ValueError(f"box attention needs (B, Q, 4) region boxes for {tuple(region_tokens.shape[:2])}")
            outside = box_token_mask(region_boxes, clip_tokens.shape[1])  # (B, Q, L)
            memory_mask = outside.repeat_interleave(self.num_heads, dim=0)  # (B * heads, Q, L), batch-major
        fused = self.decoder(
            queries, clip_tokens.to(queries.dtype), tgt_key_padding_mask=padding_mask, memory_mask=memory_mask
        )
        return self.output_proj(fused)


def box_token_mask(boxes: torch.Tensor, num_tokens: int) -> torch.Tensor:
    """(..., 4) boxes (x1, y1, x2, y2, fractions of the image) -> (..., num_tokens) True where a CLIP token lies
    outside the box: a patch whose cell has no area in common with it and is not the cell of its centre. The class
    token (first) is never outside. The patches must form a square grid of the whole image, class token first, as
    every CLIP ViT's token map does (the whole image is resized to CLIP's square input)."""
    side = _grid_side(num_tokens)
    boxes = boxes.float().clamp(0, 1)

    def overlaps(start: torch.Tensor, end: torch.Tensor) -> torch.Tensor:  # (...,) -> (..., side)
        centre_cell = ((start + end) / 2 * side).long().clamp(max=side - 1)
        return (_cell_overlaps(start, end, side) > 0) | F.one_hot(centre_cell, side).bool()

    columns, rows = overlaps(boxes[..., 0], boxes[..., 2]), overlaps(boxes[..., 1], boxes[..., 3])
    inside = rows[..., :, None] & columns[..., None, :]  # (..., side, side), row-major as the patch tokens
    inside = torch.cat([torch.ones_like(inside[..., 0, :1]), inside.flatten(-2)], dim=-1)
    return ~inside


def box_patch_coverage(boxes: torch.Tensor, num_tokens: int) -> torch.Tensor:
    """(..., 4) boxes as `box_token_mask` takes them -> (..., num_tokens - 1) the share of each patch's cell that the
    box covers, in [0, 1], in the patch tokens' order (the class token has no cell). A zero-size box covers none."""
    side = _grid_side(num_tokens)
    boxes = boxes.float().clamp(0, 1)
    columns = _cell_overlaps(boxes[..., 0], boxes[..., 2], side)
    rows = _cell_overlaps(boxes[..., 1], boxes[..., 3], side)
    return (rows[..., :, None] * columns[..., None, :]).flatten(-2)


def _grid_side(num_tokens: int) -> int:
    side = math.isqrt(num_tokens - 1)
    if side * side != num_tokens - 1:
        raise ValueError(
            f"box attention and box pooling need a class token and a square patch grid, got {num_tokens} tokens"
        )
    return side


def _cell_overlaps(start: torch.Tensor, end: torch.Tensor, side: int) -> torch.Tensor:
    """(...,) extents [start, end] as fractions of a side -> (..., side) the share of each of its `side` cells
    they cover."""
    edges = torch.arange(side + 1, device=start.device, dtype=torch.float32) / side
    low, high = edges[:-1], edges[1:]
    return ((torch.minimum(end[..., None], high) - torch.maximum(start[..., None], low)) * side).clamp(min=0)


class RegionSelfAttention(nn.MultiheadAttention):
    """`nn.MultiheadAttention` that never takes its inference fast path, for the regions' self-attention.

    On the CPU that path (`torch._native_multi_head_attention`, taken in eval mode without gradients) builds
    each (Q, Q) attention matrix in full: over 10,000 regions, 800 MB a head (measured). The path taken in
    training, `F.multi_head_attention_forward`, goes through `scaled_dot_product_attention` in a few MB and
    is faster; this module always takes it, so inference computes what training computes. Its parameters and
    their names are nn.MultiheadAttention's (checkpoints load unchanged); its outputs equal
    nn.MultiheadAttention's with `torch.backends.mha.set_fastpath_enabled(False)`, the global switch this
    replaces. Cross-attention needs nothing of the kind: the fast path serves self-attention only.
    """

    @classmethod
    def replacing(cls, attention: nn.MultiheadAttention) -> RegionSelfAttention:
        """The same attention (its very parameters) as this class; draws no random numbers."""
        if not attention._qkv_same_embed_dim or attention.bias_k is not None or not attention.batch_first:
            raise ValueError("RegionSelfAttention takes a batch-first self-attention with one in-projection")
        replaced = cls(attention.embed_dim, attention.num_heads, dropout=attention.dropout, batch_first=True,
                       device="meta")  # fmt: skip
        replaced.load_state_dict(attention.state_dict(), assign=True)
        return replaced

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        key_padding_mask: torch.Tensor | None = None,
        need_weights: bool = True,
        attn_mask: torch.Tensor | None = None,
        average_attn_weights: bool = True,
        is_causal: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(B, Q, D) queries, keys and values (the same tensor: self-attention) -> (B, Q, D), attention weights."""
        if not (query is key and key is value) or query.dim() != 3:
            raise ValueError("RegionSelfAttention is self-attention over batched (B, Q, D) tokens")
        tokens = query.transpose(0, 1)  # (Q, B, D): the functional form is sequence-first
        output, weights = F.multi_head_attention_forward(
            tokens, tokens, tokens, self.embed_dim, self.num_heads, self.in_proj_weight, self.in_proj_bias,
            self.bias_k, self.bias_v, self.add_zero_attn, self.dropout, self.out_proj.weight, self.out_proj.bias,
            training=self.training, key_padding_mask=key_padding_mask, need_weights=need_weights,
            attn_mask=attn_mask, average_attn_weights=average_attn_weights, is_causal=is_causal,
        )  # fmt: skip
        return output.transpose(0, 1), weights
