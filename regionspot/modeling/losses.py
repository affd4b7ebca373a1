"""Naming losses over a region-by-class score matrix: RegionSpot's sigmoid focal loss (Lin et al. 2017) and, beside
it where asked, a softmax cross-entropy over the vocabulary; and ViLD's distillation of region features towards
CLIP's own embedding of each region."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

LOSS_REDUCTIONS = ("boxes", "images")


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
    logits: torch.Tensor,
    labels: torch.Tensor,
    *,
    alpha: float = 0.25,
    gamma: float = 2.0,
    reduction: str = "boxes",
    boxes_per_image: Sequence[int] | None = None,
) -> torch.Tensor:
    """RegionSpot's loss: every box against its data set's whole vocabulary, summed over classes, then reduced.

    Args:
        logits: (N, C) scores of the N boxes of a batch against C classes, image after image.
        labels: (N,) the class index of each box.
        reduction: "boxes", the mean over all N boxes (this package's: every box weighs the same and the loss's
            scale, hence what lr and gradient clipping mean, does not depend on the batch size); or "images",
            RegionSpot's: the mean over each image's boxes, summed over the images (each image weighs the same,
            whatever its box count, and the loss grows with the images per device).
        boxes_per_image: how many of the N rows belong to each image, in order; needed for "images".
    """
    _check_region_scores(logits, labels, reduction)
    if logits.shape[0] == 0:
        return logits.sum() * 0.0
    targets = F.one_hot(labels.long(), num_classes=logits.shape[1])
    per_box = sigmoid_focal_loss(logits, targets, alpha=alpha, gamma=gamma).sum(dim=1)  # (N,)
    return _reduce_boxes(per_box, reduction, boxes_per_image)


def region_softmax_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    *,
    reduction: str = "boxes",
    boxes_per_image: Sequence[int] | None = None,
) -> torch.Tensor:
    """The cross-entropy of a softmax over the vocabulary, per box, reduced as `region_focal_loss` reduces.

    Not RegionSpot's: its focal loss scores each class on its own, so nothing in it ranks a box's true class above
    the others, while evaluation's softmax ranks by exactly that (see docs/demo.md for what that costs the top-1
    name). Arguments as `region_focal_loss`'s; computed in fp32.
    """
    _check_region_scores(logits, labels, reduction)
    if logits.shape[0] == 0:
        return logits.sum() * 0.0
    per_box = F.cross_entropy(logits.float(), labels.long(), reduction="none")  # (N,)
    return _reduce_boxes(per_box, reduction, boxes_per_image)


def region_distillation_loss(
    features: torch.Tensor,
    targets: torch.Tensor,
    *,
    reduction: str = "boxes",
    boxes_per_image: Sequence[int] | None = None,
) -> torch.Tensor:
    """ViLD's image distillation (Gu et al. 2022) with a squared distance: ||feature - target||^2 per region, both unit
    norm (so 2 - 2 cos), reduced as `region_focal_loss` reduces.

    Not RegionSpot's. Names train the features towards the training vocabulary alone; this pulls them towards what
    CLIP itself sees in the region, names outside that vocabulary included, and needs no labels. ViLD's L1 distance
    pulls as hard however close a feature is; this pull fades as it nears its target, so that it does not keep
    the lion's share of a gradient norm clipped for every head at once (docs/demo.md: with L1 it slowed the demo's
    VQA head until "left of" stayed at chance on one seed).

    Args:
        features, targets: (N, E) each, unit norm; the targets carry no gradient. Computed in fp32.
    """
    if features.ndim != 2 or targets.shape != features.shape:
        raise ValueError(f"expected features and targets of one (N, E) shape, got {tuple(features.shape)} and "
                         f"{tuple(targets.shape)}")  # fmt: skip
    _check_reduction(reduction)
    if features.shape[0] == 0:
        return features.sum() * 0.0
    per_box = (features.float() - targets.detach().float()).pow(2).sum(dim=1)  # (N,)
    return _reduce_boxes(per_box, reduction, boxes_per_image)


def _check_region_scores(logits: torch.Tensor, labels: torch.Tensor, reduction: str) -> None:
    if logits.ndim != 2 or labels.shape != logits.shape[:1]:
        raise ValueError(f"expected logits (N, C) and labels (N,), got {tuple(logits.shape)} and {tuple(labels.shape)}")
    _check_reduction(reduction)


def _check_reduction(reduction: str) -> None:
    if reduction not in LOSS_REDUCTIONS:
        raise ValueError(f"reduction must be one of {LOSS_REDUCTIONS}, got {reduction!r}")


def _reduce_boxes(per_box: torch.Tensor, reduction: str, boxes_per_image: Sequence[int] | None) -> torch.Tensor:
    if reduction == "boxes":
        return per_box.mean()
    if boxes_per_image is None or sum(boxes_per_image) != len(per_box):
        raise ValueError(f"reduction 'images' needs boxes_per_image summing to N={len(per_box)}, got {boxes_per_image}")
    return sum(image.mean() for image in per_box.split(list(boxes_per_image)) if len(image))
