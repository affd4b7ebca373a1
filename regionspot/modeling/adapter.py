"""The fusion adapter, RegionSpot's only trained part: region tokens attend over CLIP's token map."""

from __future__ import annotations

import torch
from torch import nn


class RegionFusionAdapter(nn.Module):
    """Region tokens (queries) cross-attend to CLIP's image tokens (keys/values).

    Linear(token_dim -> width), then `depth` post-norm decoder layers of [self-attention among the
    regions of one image, cross-attention to the CLIP tokens, ReLU FFN], a final LayerNorm and a
    Linear(width -> output_dim) into CLIP's text space. No positional embeddings: SAM's tokens
    already carry position.

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
