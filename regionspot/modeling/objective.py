"""The training objective: which losses a step computes over the heads' outputs and how they are weighed.

Beside the losses it composes (`regionspot.modeling.losses`, the caption decoder's and the VQA head's own
next-token losses); the training module calls it once a step and logs what it returns.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from regionspot.modeling.losses import (
    LOSS_REDUCTIONS,
    region_distillation_loss,
    region_focal_loss,
    region_softmax_loss,
)
from regionspot.modeling.regionspot import FrozenFeatures, RegionSpot


@dataclass(frozen=True)
class StepLoss:
    """One step's loss.

    Attributes:
        terms: each loss that this step computed, unweighted, by name ("focal", "softmax", "distill", "caption",
            "vqa"), in the order they were added.
        weighted: the same terms times their weights, in the same order (the step's loss is their sum).
        reached: the heads ("adapter", "caption_decoder", "vqa") some loss of this step sends gradients to.
    """

    terms: dict[str, torch.Tensor]
    weighted: list[torch.Tensor]
    reached: frozenset[str]


@dataclass(kw_only=True)
class Objective:
    """How a step's losses combine: focal_loss_weight x the focal loss (over the boxes with a class, of data sets
    with a vocabulary) + softmax_loss_weight x a softmax cross-entropy over the same scores + distill_loss_weight x
    ViLD's distillation + caption_loss_weight x the captions' next-token cross-entropy (over the boxes with a
    caption, when the model has a captioner) + vqa_loss_weight x the answers' next-token cross-entropy (over the
    images with a conversation, when the model has a VQA head).

    Args:
        focal_alpha: focal loss's weight of positives (RetinaNet's and RegionSpot's 0.25).
        focal_gamma: focal loss's focusing exponent (2).
        focal_loss_weight: weight of RegionSpot's focal loss (`region_focal_loss`).
        caption_loss_weight: weight of the caption decoder's loss.
        vqa_loss_weight: weight of the VQA head's loss.
        softmax_loss_weight: weight of a softmax cross-entropy over the focal loss's scores (`region_softmax_loss`),
            which trains what evaluation's softmax ranks by: the true class above the others. 0 (default) is
            RegionSpot's recipe.
        distill_loss_weight: weight of ViLD's distillation (Gu et al. 2022) of every region's features towards
            CLIP's own embedding of its box (`region_distillation_loss`, `RegionSpot.clip_region_embeddings`), on
            every batch the adapter trains on, labelled or not: it keeps what CLIP knows of names the training
            vocabulary lacks. 0 (default) is RegionSpot's recipe. Needs CLIP's visual tower.
        caption_regions_per_image: caption at most this many regions of each image per step, drawn at random with
            torch's generator (None: all); the caption loss then costs less per step while every caption is still
            met over the epochs.
        loss_reduction: how the boxes' losses (each summed over the vocabulary) make the step's loss: "boxes" (the
            mean over every box of the batch) or "images" (RegionSpot's: the mean over each image's boxes, summed
            over the images of the per-device batch); see `region_focal_loss`.
    """

    focal_alpha: float = 0.25
    focal_gamma: float = 2.0
    focal_loss_weight: float = 1.0
    caption_loss_weight: float = 1.0
    vqa_loss_weight: float = 1.0
    softmax_loss_weight: float = 0.0
    distill_loss_weight: float = 0.0
    caption_regions_per_image: int | None = None
    loss_reduction: str = "boxes"

    def __post_init__(self) -> None:
        weights = (self.focal_loss_weight, self.caption_loss_weight, self.vqa_loss_weight, self.softmax_loss_weight,
                   self.distill_loss_weight)  # fmt: skip
        if min(weights) < 0:
            raise ValueError("the focal, caption, vqa, softmax and distill loss weights must be >= 0")
        if self.caption_regions_per_image is not None and self.caption_regions_per_image < 1:
            raise ValueError(f"caption_regions_per_image must be >= 1 or null, got {self.caption_regions_per_image}")
        if self.loss_reduction not in LOSS_REDUCTIONS:
            raise ValueError(f"loss_reduction must be one of {LOSS_REDUCTIONS}, got {self.loss_reduction!r}")

    def names_regions(self) -> bool:
        """Whether a naming loss counts (a batch then trains naming when its data set has classes)."""
        return self.focal_loss_weight > 0 or self.softmax_loss_weight > 0

    def learns_captions(self, model: RegionSpot, batch: Mapping[str, Any]) -> bool:
        return model.caption_decoder is not None and self.caption_loss_weight > 0 and "captions" in batch

    def learns_answers(self, model: RegionSpot, batch: Mapping[str, Any]) -> bool:
        return model.vqa is not None and self.vqa_loss_weight > 0 and any(batch.get("conversations") or ())

    def __call__(
        self,
        model: RegionSpot,
        frozen: list[FrozenFeatures],
        features: list[torch.Tensor],
        batch: Mapping[str, Any],
        *,
        class_embeddings: torch.Tensor | None,
        train_adapter: bool,
    ) -> StepLoss:
        """The losses of a batch.

        Args:
            model: the RegionSpot whose heads compute them.
            frozen, features: B images' frozen outputs and region features (N_i, T, E) (`RegionSpot.region_features`).
            batch: the data batch: "labels" (B tensors (N_i,), -1 for a box without a class), "captions",
                "conversations" where it has them.
            class_embeddings: (C, E) the batch's vocabulary when this step trains naming, else None.
            train_adapter: whether the adapter trains (the distillation loss then counts, and the caption and VQA
                losses reach it too).
        """
        terms: dict[str, torch.Tensor] = {}
        weighted: list[torch.Tensor] = []
        reached: set[str] = set()
        through_adapter = {"adapter"} if train_adapter else set()  # every head reads the adapter's features
        if class_embeddings is not None:
            terms["focal"], softmax = self._naming_losses(model, features, batch["labels"], class_embeddings)
            weighted.append(self.focal_loss_weight * terms["focal"])
            weighted.append(self.softmax_loss_weight * softmax)
            if self.softmax_loss_weight:
                terms["softmax"] = softmax
            reached.add("adapter")
        if self.distill_loss_weight and train_adapter:
            terms["distill"] = self._distillation_loss(model, frozen, features)
            weighted.append(self.distill_loss_weight * terms["distill"])
            reached.add("adapter")
        if self.learns_captions(model, batch):
            terms["caption"] = model.caption_loss(*self._captioned_regions(frozen, features, batch["captions"]))
            weighted.append(self.caption_loss_weight * terms["caption"])
            reached |= {"caption_decoder"} | through_adapter
        if self.learns_answers(model, batch):
            terms["vqa"] = model.vqa_loss(frozen, features, batch["conversations"])
            weighted.append(self.vqa_loss_weight * terms["vqa"])
            reached |= {"vqa"} | through_adapter
        return StepLoss(terms=terms, weighted=weighted, reached=frozenset(reached))

    def _naming_losses(
        self, model: RegionSpot, features: list[torch.Tensor], labels: list[torch.Tensor], text: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """RegionSpot's focal loss over every token of the boxes that have a class (label -1: captions only), and the
        softmax cross-entropy over the same scores (zero when `softmax_loss_weight` is 0)."""
        tokens = features[0].shape[1]
        named = [y >= 0 for y in labels]
        logits = [model.classify(x[keep], text) for x, keep in zip(features, named, strict=True)]
        scores = torch.cat([x.flatten(0, 1) for x in logits])  # (sum N_i * T, C)
        targets = torch.cat([y[keep].repeat_interleave(tokens) for y, keep in zip(labels, named, strict=True)])
        reduction = {"reduction": self.loss_reduction, "boxes_per_image": [len(x) * tokens for x in logits]}
        focal = region_focal_loss(scores, targets, alpha=self.focal_alpha, gamma=self.focal_gamma, **reduction)
        if not self.softmax_loss_weight:
            return focal, focal.new_zeros(())
        return focal, region_softmax_loss(scores, targets, **reduction)

    def _distillation_loss(
        self, model: RegionSpot, frozen: list[FrozenFeatures], features: list[torch.Tensor]
    ) -> torch.Tensor:
        """`region_distillation_loss` over every token of every region, each against its region's CLIP embedding."""
        tokens = features[0].shape[1]
        targets = model.clip_region_embeddings(frozen)
        return region_distillation_loss(
            torch.cat([x.flatten(0, 1) for x in features]),
            torch.cat([t.repeat_interleave(tokens, dim=0) for t in targets]),
            reduction=self.loss_reduction,
            boxes_per_image=[len(x) * tokens for x in features],
        )

    def _captioned_regions(
        self, frozen: list[FrozenFeatures], features: list[torch.Tensor], captions: list[list[str]]
    ) -> tuple[list[FrozenFeatures], list[torch.Tensor], list[list[str]]]:
        """The regions this step captions: at most `caption_regions_per_image` of each image, at random."""
        limit = self.caption_regions_per_image
        if limit is None:
            return frozen, features, captions
        kept: tuple[list, list, list] = ([], [], [])
        for image_frozen, image_features, image_captions in zip(frozen, features, captions, strict=True):
            keep = torch.randperm(len(image_captions))[:limit].sort().values  # the caller seeds torch per step
            kept[0].append(image_frozen.select(keep))
            kept[1].append(image_features[keep])
            kept[2].append([image_captions[i] for i in keep.tolist()])
        return kept
