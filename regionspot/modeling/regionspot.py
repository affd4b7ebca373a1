"""RegionSpot: frozen SAM regions + frozen CLIP map, fused by a small trained adapter, scored against text."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import pad_sequence

from regionspot.modeling.adapter import RegionFusionAdapter
from regionspot.modeling.clip import ClipBackbone
from regionspot.modeling.sam import SamRegionEncoder


class RegionSpot(nn.Module):
    """The region recogniser. Only `adapter` trains; SAM and CLIP stay frozen and in eval mode.

    Args:
        sam: the frozen SAM region encoder.
        clip: the frozen CLIP backbone.
        adapter: the fusion adapter, sized to `sam.token_dim`, `clip.width` and `clip.embed_dim`.
    """

    def __init__(self, *, sam: SamRegionEncoder, clip: ClipBackbone, adapter: RegionFusionAdapter) -> None:
        super().__init__()
        self.sam = sam
        self.clip = clip
        self.adapter = adapter
        self.freeze_backbones()

    def freeze_backbones(self) -> None:
        for backbone in (self.sam, self.clip):
            backbone.requires_grad_(False)
            backbone.eval()

    def train(self, mode: bool = True) -> RegionSpot:
        super().train(mode)
        self.sam.eval()  # frozen backbones never switch to training behaviour (dropout, drop-path)
        self.clip.eval()
        return self

    def region_features(self, region_tokens: list[torch.Tensor], clip_tokens: torch.Tensor) -> list[torch.Tensor]:
        """Fuse each image's regions with its CLIP map.

        Args:
            region_tokens: B tensors (N_i, T, C), the SAM tokens of image i's regions (N_i may differ).
            clip_tokens: (B, L, D) CLIP token maps.

        Returns:
            B tensors (N_i, T, E) of unit-norm region features.
        """
        if len(region_tokens) != clip_tokens.shape[0]:
            raise ValueError(f"{len(region_tokens)} region sets for {clip_tokens.shape[0]} images")
        if any(t.ndim != 3 or t.shape[0] == 0 for t in region_tokens):
            raise ValueError("each image needs region tokens of shape (N >= 1, T, C)")
        counts = [t.shape[0] * t.shape[1] for t in region_tokens]
        queries = pad_sequence([t.flatten(0, 1) for t in region_tokens], batch_first=True)  # (B, Q, C)
        padding = (
            torch.arange(queries.shape[1], device=queries.device)[None]
            >= torch.tensor(counts, device=queries.device)[:, None]
        )
        fused = F.normalize(self.adapter(queries, clip_tokens, padding).float(), dim=-1)  # (B, Q, E)
        return [fused[i, :n].view(*t.shape[:2], -1) for i, (n, t) in enumerate(zip(counts, region_tokens, strict=True))]

    def classify(self, features: torch.Tensor, text_embeddings: torch.Tensor) -> torch.Tensor:
        """(..., E) unit-norm region features x (K, E) unit-norm class embeddings -> (..., K) logits."""
        return self.clip.logit_scale.float() * features @ text_embeddings.float().T

    def forward(
        self, region_tokens: list[torch.Tensor], clip_tokens: torch.Tensor, text_embeddings: torch.Tensor
    ) -> list[torch.Tensor]:
        """Region tokens of B images (see `region_features`) -> B tensors (N_i, T, K) of class logits."""
        return [self.classify(f, text_embeddings) for f in self.region_features(region_tokens, clip_tokens)]

    def parameter_counts(self) -> dict[str, int]:
        counts = {"trainable": 0, "frozen": 0}
        for p in self.parameters():
            counts["trainable" if p.requires_grad else "frozen"] += p.numel()
        return counts

    def extra_repr(self) -> str:
        counts = self.parameter_counts()
        return f"trainable={counts['trainable'] / 1e6:.2f}M, frozen={counts['frozen'] / 1e6:.2f}M"
