"""Stateful inference in SamPredictor's style: `set_image` once, then any number of `predict` calls."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image

from regionspot.modeling.regionspot import RegionSpot
from regionspot.transforms import prepare_prompts, to_rgb_uint8


@dataclass
class RegionPredictions:
    """What `RegionSpotPredictor.predict` returns for N regions and a vocabulary of C names."""

    labels: list[list[str]]  # N lists of the top-k class names, best first
    class_ids: torch.Tensor  # (N, k) indices into the vocabulary
    scores: torch.Tensor  # (N, k) class probabilities (softmax over the vocabulary) or sigmoid scores
    masks: torch.Tensor  # (N, H, W) bool, SAM's mask of each region
    mask_scores: torch.Tensor  # (N,) SAM's predicted IoU of that mask
    boxes: torch.Tensor | None  # (N, 4) the input boxes clipped to the image, or None without boxes
    all_scores: torch.Tensor | None = None  # (N, C), when asked for

    def __len__(self) -> int:
        return len(self.labels)

    def to_list(self) -> list[dict[str, Any]]:
        """One plain dict per region (labels, scores, mask, box)."""
        return [
            {
                "labels": self.labels[i],
                "scores": self.scores[i].tolist(),
                "mask": self.masks[i],
                "box": None if self.boxes is None else self.boxes[i].tolist(),
            }
            for i in range(len(self))
        ]


# Regions whose masks are upscaled at once: SAM upsamples to its full input size (1024^2 floats per region) first.
_MASK_UPSCALE_CHUNK = 32


@dataclass
class ScoredRegions:
    """What `score_regions` returns for N regions of one image and C classes (SAM's best token per region)."""

    probs: torch.Tensor  # (N, C) class probabilities (softmax over the vocabulary) or sigmoid scores
    mask_scores: torch.Tensor  # (N,) SAM's predicted IoU of the region's mask
    masks: torch.Tensor | None  # (N, H, W) bool at the original image size, or None when not asked for
    boxes: torch.Tensor | None  # (N, 4) the input boxes clipped to the image, or None without boxes


@torch.no_grad()
def embed_image(
    model: RegionSpot, image: Image.Image | np.ndarray | torch.Tensor, *, sam_embedding: torch.Tensor | None = None
) -> dict[str, Any]:
    """Embed one image with SAM and CLIP: the state that `score_regions` reads.

    Args:
        model: a built RegionSpot.
        image: any format `to_rgb_uint8` accepts.
        sam_embedding: (1, C, h, w) SAM's embedding of this very image, if already computed (e.g. by
            SAM's automatic mask generator), so that SAM's image encoder does not run twice.
    """
    rgb = to_rgb_uint8(image)
    if sam_embedding is None:
        sam_input, input_size = model.sam.preprocess(rgb)
        sam_embedding = model.sam.embed_images(sam_input)
    else:
        input_size = model.sam.transform.get_preprocess_shape(*rgb.shape[:2], model.sam.image_size)
    return {
        "original_size": rgb.shape[:2],
        "input_size": tuple(input_size),
        "sam_embedding": sam_embedding,
        "clip_tokens": model.clip.feature_map(model.clip.preprocess(rgb)),
    }


@torch.no_grad()
def score_regions(
    model: RegionSpot,
    embedded: dict[str, Any],
    *,
    text_embeddings: torch.Tensor,
    boxes: np.ndarray | torch.Tensor | None = None,
    points: np.ndarray | torch.Tensor | None = None,
    point_labels: np.ndarray | torch.Tensor | None = None,
    masks: np.ndarray | torch.Tensor | None = None,
    activation: str = "softmax",
    return_masks: bool = True,
) -> ScoredRegions:
    """Score all N regions of one embedded image against C classes in one pass of SAM's decoder and the adapter.

    Args:
        model: the RegionSpot that embedded the image.
        embedded: `embed_image`'s output.
        text_embeddings: (C, E) unit-norm class embeddings (`model.clip.encode_vocabulary`).
        boxes, points, point_labels, masks: prompts in the image's pixels (see `RegionSpotPredictor.predict`).
        activation: "softmax" over the vocabulary or independent "sigmoid".
        return_masks: also upscale SAM's mask of each region to the image (costs memory for many regions).
    """
    if activation not in ("softmax", "sigmoid"):
        raise ValueError(f"activation must be 'softmax' or 'sigmoid', got {activation!r}")
    prompts, clipped = prepare_prompts(
        model.sam,
        image_size=embedded["original_size"],
        boxes=boxes,
        points=points,
        point_labels=point_labels,
        masks=masks,
    )
    regions = model.sam.decode(embedded["sam_embedding"], prompts)
    logits = model([regions.tokens], embedded["clip_tokens"], text_embeddings)[0]  # (N, T, C)
    best = regions.mask_scores.argmax(dim=1)  # with multimask, keep the token SAM trusts most
    rows = torch.arange(len(best), device=best.device)
    probs = (logits.softmax(-1) if activation == "softmax" else logits.sigmoid())[rows, best]
    upscaled = None
    if return_masks:
        best_logits = regions.mask_logits[rows, best][:, None]  # (N, 1, 4h, 4w)
        upscaled = torch.cat(
            [
                model.sam.upscale_masks(chunk, embedded["input_size"], embedded["original_size"])[:, 0].cpu()
                for chunk in best_logits.split(_MASK_UPSCALE_CHUNK)
            ]
        )
    return ScoredRegions(
        probs=probs.cpu(), mask_scores=regions.mask_scores[rows, best].cpu(), masks=upscaled, boxes=clipped
    )


class RegionSpotPredictor:
    """Names, and segments, any regions of one image against any vocabulary.

    Args:
        model: a built RegionSpot (see `regionspot.build_regionspot`).
    """

    def __init__(self, model: RegionSpot) -> None:
        self.model = model.eval()
        self._image: dict[str, Any] | None = None

    @torch.no_grad()
    def set_image(self, image: Image.Image | np.ndarray | torch.Tensor) -> None:
        """Embed `image` once with SAM and CLIP. See `to_rgb_uint8` for the accepted formats."""
        self._image = embed_image(self.model, image)

    @torch.no_grad()
    def predict(
        self,
        *,
        vocabulary: Sequence[str],
        boxes: np.ndarray | torch.Tensor | None = None,
        points: np.ndarray | torch.Tensor | None = None,
        point_labels: np.ndarray | torch.Tensor | None = None,
        masks: np.ndarray | torch.Tensor | None = None,
        top_k: int = 5,
        activation: str = "softmax",
        return_all_scores: bool = False,
    ) -> RegionPredictions:
        """Recognise N regions given as prompts in the image's pixels.

        Args:
            vocabulary: C class names to choose from.
            boxes: (N, 4) x1, y1, x2, y2; clipped to the image.
            points: (N, P, 2) x, y; point_labels: (N, P), 1 foreground / 0 background (default 1).
            masks: (N, H, W) binary masks.
            top_k: how many labels to return per region (at most C).
            activation: "softmax" over the vocabulary (RegionSpot's evaluation) or independent "sigmoid".
            return_all_scores: also return the (N, C) score matrix.
        """
        if self._image is None:
            raise RuntimeError("call set_image(image) before predict(...)")
        if activation not in ("softmax", "sigmoid"):
            raise ValueError(f"activation must be 'softmax' or 'sigmoid', got {activation!r}")
        if top_k < 1:
            raise ValueError(f"top_k must be at least 1, got {top_k}")
        vocabulary = list(vocabulary)
        text = self.model.clip.encode_vocabulary(vocabulary)
        scored = score_regions(
            self.model,
            self._image,
            text_embeddings=text,
            boxes=boxes,
            points=points,
            point_labels=point_labels,
            masks=masks,
            activation=activation,
        )
        scores, class_ids = scored.probs.topk(min(top_k, len(vocabulary)), dim=-1)
        return RegionPredictions(
            labels=[[vocabulary[c] for c in row] for row in class_ids.tolist()],
            class_ids=class_ids,
            scores=scores,
            masks=scored.masks,
            mask_scores=scored.mask_scores,
            boxes=scored.boxes,
            all_scores=scored.probs if return_all_scores else None,
        )
