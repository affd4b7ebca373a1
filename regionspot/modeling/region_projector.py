"""What a causal LLM reads of a region: its condition vector projected to LLM input embeddings (LLaVA-1.5's MLP)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn


class RegionProjector(nn.Module):
    """(R, D) region conditions -> (R, T, H) input embeddings of an LLM of hidden size H, T per region.

    LLaVA-1.5's projector (Linear, GELU, Linear) with its last layer widened to T tokens, after a per-feature
    standardisation (batch normalisation without weights, as input whitening is usual before a fresh layer): the
    frozen features of all regions share a large common part (measured per feature, the spread across regions can
    be ~1/6 of the mean: docs/vqa.md), which a fresh projector passes on to the LLM nearly unchanged; standardised,
    what tells regions apart reaches the LLM from the first step. One token per region is All-Seeing's and
    Osprey's choice for a box; more give the LLM more room per region.

    With `location_columns`, the condition's last columns are the region's box, and one more embedding per region
    is made from them alone (a location token, as Kosmos-2's location tokens give a box to an LLM): mixed into the
    first layer with the ~130 feature columns, a box's 4 columns can reach the LLM too weakly for it to learn
    where regions are ("is <region1> left of <region2>?"; measured in docs/vqa.md).

    Args:
        condition_dim: D, the size of `RegionSpot.region_condition`'s rows.
        hidden_size: H, the LLM's input embedding size.
        tokens_per_region: T, the embeddings made from the whole condition.
        location_columns: how many of the condition's last columns are the region's box (0: no location token);
            with a location token each region gets T + 1 embeddings, the location token last.
    """

    def __init__(
        self, *, condition_dim: int, hidden_size: int, tokens_per_region: int = 1, location_columns: int = 0
    ) -> None:
        super().__init__()
        if tokens_per_region < 1:
            raise ValueError(f"tokens_per_region must be positive, got {tokens_per_region}")
        if not 0 <= location_columns <= condition_dim:
            raise ValueError(f"location_columns must be in [0, {condition_dim}], got {location_columns}")
        self.condition_tokens = tokens_per_region
        self.location_columns = location_columns
        self.tokens_per_region = tokens_per_region + (location_columns > 0)  # embeddings per <regionK> tag
        self.standardize = nn.BatchNorm1d(condition_dim, affine=False)
        self.fc1 = nn.Linear(condition_dim, hidden_size)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_size, hidden_size * tokens_per_region)
        if location_columns:
            self.location = nn.Sequential(
                nn.Linear(location_columns, hidden_size), nn.GELU(), nn.Linear(hidden_size, hidden_size)
            )

    def forward(self, conditions: torch.Tensor) -> torch.Tensor:
        norm = self.standardize
        if self.training and len(conditions) > 1:
            standardized = norm(conditions)
        else:  # evaluation, or one region in training (no batch statistics to take): the running statistics
            standardized = F.batch_norm(conditions, norm.running_mean, norm.running_var, training=False, eps=norm.eps)
        embeddings = self.fc2(self.act(self.fc1(standardized)))  # (R, T * H)
        embeddings = rearrange(embeddings, "r (t h) -> r t h", t=self.condition_tokens)
        if not self.location_columns:
            return embeddings
        location = self.location(standardized[:, -self.location_columns :])  # (R, H)
        return torch.cat([embeddings, location[:, None]], dim=1)
