"""Training augmentations on (image, boxes): horizontal flip, multi-scale resize, random crop.

Every geometric change is applied to the boxes too, so a box always covers the same pixels, and to the
boxes' captions where it changes what they say (a flip swaps left and right). Region-QA samples take
`augment_keeping_boxes`: their questions name boxes by place, so nothing may crop one away.
Images are (H, W, 3) uint8 arrays and boxes (N, 4) float32 x1, y1, x2, y2 in pixels.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from regionspot.boxes import clip_to_image


def _default_short_edges() -> list[int]:
    return list(range(480, 801, 32))  # RegionSpot's multi-scale range, 480-800


@dataclass
class AugmentConfig:
    """How training images are perturbed (validation images never are): the flip, multi-scale resize and random
    crop RegionSpot trained with, its resize range, detectron2's defaults elsewhere (RegionSpot trains on
    detectron2), and "ours" where neither says."""

    flip_prob: float = 0.5  # chance of a horizontal flip (detectron2's RandomFlip: 0.5)
    # shortest edge drawn from these (RegionSpot: 480-800 in steps of 32, detectron2's ResizeShortestEdge); [] = keep
    short_edges: list[int] = field(default_factory=_default_short_edges)
    max_size: int = 1333  # cap on the longest edge after resizing (detectron2's MAX_SIZE_TRAIN)
    crop_prob: float = 0.5  # chance of a random crop, which always keeps at least one box (ours)
    crop_min_scale: float = 0.5  # each crop side is at least this fraction of the image side (ours)
    # boxes narrower or lower than this many pixels after a crop are dropped (ours: a sliver of an object cannot be
    # named from it)
    min_box_size: float = 2.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.flip_prob <= 1.0 or not 0.0 <= self.crop_prob <= 1.0:
            raise ValueError("augment.flip_prob and augment.crop_prob must lie in [0, 1]")
        if not 0.0 < self.crop_min_scale <= 1.0:
            raise ValueError(f"augment.crop_min_scale must lie in (0, 1], got {self.crop_min_scale}")
        if any(edge < 1 for edge in self.short_edges) or self.max_size < 1:
            raise ValueError("augment.short_edges and augment.max_size must be positive")


def hflip(image: np.ndarray, boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    width = image.shape[1]
    flipped = boxes.copy()
    flipped[:, 0], flipped[:, 2] = width - boxes[:, 2], width - boxes[:, 0]
    return np.ascontiguousarray(image[:, ::-1]), flipped


# Whole words only: "bright" and "leftover" say nothing about a side.
_SIDE_WORD = re.compile(r"\b(left|right)\b", re.IGNORECASE)
_OTHER_SIDE = {"left": "right", "right": "left"}


def mirror_left_right(caption: str) -> str:
    """The caption of the mirrored image: "left" and "right" swapped as whole words, keeping their case."""
    return _SIDE_WORD.sub(_other_side, caption)


def _other_side(match: re.Match[str]) -> str:
    word = match.group(0)
    other = _OTHER_SIDE[word.lower()]
    if word.isupper():
        return other.upper()
    return other.capitalize() if word[0].isupper() else other


def resize_short_edge(
    image: np.ndarray, boxes: np.ndarray, short_edge: int, max_size: int
) -> tuple[np.ndarray, np.ndarray]:
    """Resize so the shortest edge is `short_edge`, unless that makes the longest exceed `max_size`."""
    height, width = image.shape[:2]
    scale = min(short_edge / min(height, width), max_size / max(height, width))
    # detectron2's rounding (half up), so that RegionSpot's test resize (evaluate.py --test-short-edge) is its own
    new_h, new_w = max(1, int(height * scale + 0.5)), max(1, int(width * scale + 0.5))
    if (new_h, new_w) == (height, width):
        return image, boxes
    resized = np.array(Image.fromarray(image).resize((new_w, new_h), Image.BILINEAR))
    factors = np.array([new_w / width, new_h / height, new_w / width, new_h / height], dtype=np.float32)
    return resized, boxes * factors


def random_crop(
    image: np.ndarray, boxes: np.ndarray, rng: np.random.Generator, *, min_scale: float, min_box_size: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Crop a random window around the centre of one random box; returns (image, boxes, indices of kept boxes).

    Boxes are clipped to the window; those left smaller than `min_box_size` are dropped. If none
    would survive, the image is returned uncropped.
    """
    height, width = image.shape[:2]
    crop_w = max(1, round(width * rng.uniform(min_scale, 1.0)))
    crop_h = max(1, round(height * rng.uniform(min_scale, 1.0)))
    anchor = boxes[rng.integers(len(boxes))]
    cx, cy = (anchor[0] + anchor[2]) / 2, (anchor[1] + anchor[3]) / 2
    x0 = int(rng.uniform(max(0.0, cx - crop_w), min(cx, width - crop_w)))
    y0 = int(rng.uniform(max(0.0, cy - crop_h), min(cy, height - crop_h)))
    x0, y0 = min(max(x0, 0), width - crop_w), min(max(y0, 0), height - crop_h)
    shifted = boxes - np.array([x0, y0, x0, y0], dtype=np.float32)
    clipped = clip_to_image(shifted, (crop_h, crop_w)).astype(np.float32)
    keep = np.flatnonzero(
        (clipped[:, 2] - clipped[:, 0] >= min_box_size) & (clipped[:, 3] - clipped[:, 1] >= min_box_size)
    )
    if len(keep) == 0:
        return image, boxes, np.arange(len(boxes))
    window = np.ascontiguousarray(image[y0 : y0 + crop_h, x0 : x0 + crop_w])
    return window, clipped[keep], keep


def augment(
    image: np.ndarray,
    boxes: np.ndarray,
    labels: np.ndarray,
    rng: np.random.Generator,
    config: AugmentConfig,
    *,
    captions: Sequence[str] | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str] | None]:
    """Flip, resize the shortest edge to a random scale, then maybe crop.

    Args:
        image: (H, W, 3) uint8.
        boxes: (N, 4) float32 x1, y1, x2, y2 in pixels.
        labels: (N,) any per-box values; they follow the boxes the crop keeps.
        rng: draws every random choice.
        config: which augmentations, how strong.
        captions: N captions, one per box, or None.

    Returns:
        (image, boxes (M, 4), labels (M,), captions (M) or None) of the M <= N boxes kept; a flip mirrors the
        captions' "left" and "right", since a caption that kept them would describe the wrong side.
    """
    image, boxes, flipped = _flip_and_resize(image, boxes, rng, config)
    out_captions = None if captions is None else [mirror_left_right(c) if flipped else c for c in captions]
    if rng.random() < config.crop_prob:
        image, boxes, keep = random_crop(
            image, boxes, rng, min_scale=config.crop_min_scale, min_box_size=config.min_box_size
        )
        labels = labels[keep]
        if out_captions is not None:
            out_captions = [out_captions[i] for i in keep]
    return image, boxes, labels, out_captions


def augment_keeping_boxes(
    image: np.ndarray,
    boxes: np.ndarray,
    rng: np.random.Generator,
    config: AugmentConfig,
    *,
    conversation: Sequence[tuple[str, str]],
) -> tuple[np.ndarray, np.ndarray, list[tuple[str, str]]]:
    """Flip and resize as `augment` does, but never crop: every box stays, in its order.

    A region-QA conversation names its boxes by place (`<region2>` is the second box), so a crop that cut one
    away would leave a question about a region that is gone, or renumber the rest.

    Args:
        image: (H, W, 3) uint8.
        boxes: (N, 4) float32 x1, y1, x2, y2 in pixels.
        rng: draws every random choice.
        config: the flip and resize settings (its crop settings are not used).
        conversation: (question, answer) turns about the boxes.

    Returns:
        (image, boxes (N, 4), turns); a flip mirrors "left" and "right" in questions and answers alike, so that
        "is <region1> left of <region2>?" asks, of the mirrored image, what its answer still says.
    """
    image, boxes, flipped = _flip_and_resize(image, boxes, rng, config)
    if flipped:
        return image, boxes, [(mirror_left_right(q), mirror_left_right(a)) for q, a in conversation]
    return image, boxes, list(conversation)


def _flip_and_resize(
    image: np.ndarray, boxes: np.ndarray, rng: np.random.Generator, config: AugmentConfig
) -> tuple[np.ndarray, np.ndarray, bool]:
    """Maybe flip, then resize the shortest edge to a random scale; returns (image, boxes, whether it flipped)."""
    flipped = bool(rng.random() < config.flip_prob)
    if flipped:
        image, boxes = hflip(image, boxes)
    if config.short_edges:
        short_edge = int(config.short_edges[rng.integers(len(config.short_edges))])
        image, boxes = resize_short_edge(image, boxes, short_edge, config.max_size)
    return image, boxes, flipped
