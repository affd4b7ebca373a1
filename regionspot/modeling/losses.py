"""Sigmoid focal loss (Lin et al. 2017) over a region-by-class score matrix."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def sigmoid_focal_loss(
    logits: torch.Tensor, targets: torch.Tensor, *, alpha: float = 0.25, gamma: float = 2.0, reduction: str = "none"
) -> torch.Tensor:
    """Elementwise focal loss; equals `torchvision.ops.sigmoid_focal_loss` but always computes in fp32.

    Computing in fp32 keeps (1 - p)^gamma from underflowing when the scores come out of bf16 autocast.

    Args:
        logits: scores of any shape. targets: same shape, 1 for the true class, 0 otherwise.
        alpha: weight of positives in (0, 1); negative disables the weighting. gamma: focusing exponent.
        reduction: "none", "mean" or "sum".
    """
    logits, targets = logits.float(), targets.float()
    prob = logits.sigmoid()
    ce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    p_t = prob * targets + (1 - prob) * (1 - targets)
    loss = ce * (1 - p_t) ** gamma
    if alpha >= 0:
        loss = loss * (alpha * targets + (1 - alpha) * (1 - targets))
    if reduction == "mean":
        return loss.mean()
    if reduction == "sum":
        return loss.sum()
    if reduction != "none":
        raise ValueError(f"reduction must be 'none', 'mean' or 'sum', got {reduction!r}")
    return loss


def region_focal_loss(
    logits: torch.Tensor, labels: torch.Tensor, *, alpha: float = 0.25, gamma: float = 2.0
) -> torch.Tensor:
    """RegionSpot's loss: every box against its data set's whole vocabulary, summed over classes, mean over boxes.

    Args:
        logits: (N, C) scores of N boxes against C classes.
        labels: (N,) the class index of each box.
    """
    if logits.ndim != 2 or labels.shape != logits.shape[:1]:
        raise ValueError(f"expected logits (N, C) and labels (N,), got {tuple(logits.shape)} and {tuple(labels.shape)}")
    if logits.shape[0] == 0:
        return logits.sum() * 0.0
    targets = F.one_hot(labels.long(), num_classes=logits.shape[1])
    return sigmoid_focal_loss(logits, targets, alpha=alpha, gamma=gamma).sum() / logits.shape[0]
