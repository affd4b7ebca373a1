"""The fusion adapter, RegionSpot's only trained part: region tokens attend over CLIP's token map."""

from __future__ import annotations

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

    Args:
        token_dim: width of SAM's region tokens (256 for the real SAMs).
        width: CLIP's vision width D (768 ViT-B, 1024 ViT-L).
        output_dim: CLIP's image-text embedding dimension.
        depth, num_heads, ffn_dim, dropout: decoder layer settings (RegionSpot: 3, 8, 2048, 0.1).
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
    ) -> None:
        super().__init__()
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
        self, region_tokens: torch.Tensor, clip_tokens: torch.Tensor, padding_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Fuse regions with the image.

        Args:
            region_tokens: (B, Q, token_dim) the regions of B images, padded to Q per image.
            clip_tokens: (B, L, width) CLIP's token map of each image.
            padding_mask: (B, Q) True where a query is padding (it is then ignored as a key).

        Returns:
            (B, Q, output_dim) region features (not normalised).
        """
        queries = self.input_proj(region_tokens.to(self.input_proj.weight.dtype))  # (B, Q, D)
        fused = self.decoder(queries, clip_tokens.to(queries.dtype), tgt_key_padding_mask=padding_mask)
        return self.output_proj(fused)


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
