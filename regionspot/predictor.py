"""Stateful inference in SamPredictor's style: `set_image` once, then any number of `predict` calls."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image

from regionspot.modeling.regionspot import ACTIVATIONS, ImageEmbeddings, RegionSpot
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


class RegionSpotPredictor:
    """Names, and segments, any regions of one image against any vocabulary.

    Args:
        model: a built RegionSpot (see `regionspot.build_regionspot`).
    """

    def __init__(self, model: RegionSpot) -> None:
        self.model = model.eval()
        self._image: ImageEmbeddings | None = None

    @torch.no_grad()
    def set_image(self, image: Image.Image | np.ndarray | torch.Tensor) -> None:
        """Embed `image` once with SAM and CLIP. See `to_rgb_uint8` for the accepted formats."""
        self._image = None  # a failed call leaves no stale image behind
        self._image = self.model.embed_images([self.model.preprocessor(to_rgb_uint8(image))])

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
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")
        if top_k < 1:
            raise ValueError(f"top_k must be at least 1, got {top_k}")
        vocabulary = list(vocabulary)
        text = self.model.clip.encode_vocabulary(vocabulary)
        image = self._image.images[0]
        prompts, clipped = prepare_prompts(
            self.model.sam,
            image_size=image.original_size,
            boxes=boxes,
            points=points,
            point_labels=point_labels,
            masks=masks,
        )
        frozen = self.model.decode_regions(self._image, [prompts], with_masks=True)[0]
        scored = self.model.score_regions(frozen, text_embeddings=text, activation=activation, image=image)
        probs = scored.probs.cpu()
        scores, class_ids = probs.topk(min(top_k, len(vocabulary)), dim=-1)
        return RegionPredictions(
            labels=[[vocabulary[c] for c in row] for row in class_ids.tolist()],
            class_ids=class_ids,
            scores=scores,
            masks=scored.masks,
            mask_scores=scored.mask_scores.cpu(),
            boxes=clipped,
            all_scores=probs if return_all_scores else None,
        )
