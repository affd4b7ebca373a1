"""What a causal LLM reads of a region: its condition vector projected to LLM input embeddings (LLaVA-1.5's MLP)."""

from __future__ import annotations

import torch
from einops import rearrange
from torch import nn


class RegionProjector(nn.Module):
    """(R, D) region conditions -> (R, T, H) input embeddings of an LLM of hidden size H, T per region.

    LLaVA-1.5's projector (Linear, GELU, Linear) with its last layer widened to T tokens. One token per region
    is All-Seeing's and Osprey's choice for a box; more tokens give the LLM more room per region (measured in
    docs/vqa.md).

    Args:
        condition_dim: D, the size of `RegionSpot.region_condition`'s rows.
        hidden_size: H, the LLM's input embedding size.
        tokens_per_region: T.
    """

    def __init__(self, *, condition_dim: int, hidden_size: int, tokens_per_region: int = 1) -> None:
        super().__init__()
        if tokens_per_region < 1:
            raise ValueError(f"tokens_per_region must be positive, got {tokens_per_region}")
        self.tokens_per_region = tokens_per_region
        self.fc1 = nn.Linear(condition_dim, hidden_size)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_size, hidden_size * tokens_per_region)

    def forward(self, conditions: torch.Tensor) -> torch.Tensor:
        embeddings = self.fc2(self.act(self.fc1(conditions)))  # (R, T * H)
        return rearrange(embeddings, "r (t h) -> r t h", t=self.tokens_per_region)
