"""Turning user inputs (images of any kind, prompts in original pixels) into what the models take.

The checks themselves live in `regionspot.checks` (torch-free, shared with the ONNX predictor); each raises an
error a user can act on, so that nothing bad reaches torch. `to_rgb_uint8` is re-exported from there.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from regionspot.checks import check_boxes, to_rgb_uint8
from regionspot.modeling.prompts import RegionPrompts, mask_prompt_logits, masks_in_sam_frame
from regionspot.modeling.sam import SamPrompts, SamRegionEncoder

__all__ = [
    "RegionPrompts", "clip_boxes", "load_image", "mask_prompt_logits", "masks_in_sam_frame", "prepare_prompts",
    "to_rgb_uint8",
]  # fmt: skip


def load_image(path: str | Path) -> np.ndarray:
    """An image file -> (H, W, 3) uint8 RGB, upright by its EXIF orientation (see `to_rgb_uint8`).

    Raises:
        FileNotFoundError: if there is no such file. ValueError: naming the file, if it cannot be decoded as an
            image (corrupt, truncated, not an image, or a decompression bomb: more pixels than PIL allows).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image not found: {path}")
    try:
        with Image.open(path) as image:
            return to_rgb_uint8(image)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
        raise ValueError(f"cannot read image {path}: {err}") from err


def clip_boxes(boxes: np.ndarray | torch.Tensor, image_size: tuple[int, int]) -> torch.Tensor:
    """(N, 4) xyxy boxes in pixels -> float tensor clipped to the image.

    A box partly outside the image is clipped to it; one left with no area inside it (wholly outside, inverted
    with x2 <= x1 or y2 <= y1, or degenerate) is refused, as is one with a NaN or infinite coordinate: a box is
    never silently dropped or reordered, so that results stay one per box given.

    Raises:
        TypeError: if the boxes are not numbers. ValueError: for another shape, or the boxes above, naming them.
    """
    return torch.from_numpy(check_boxes(boxes, image_size))


def prepare_prompts(
    encoder: SamRegionEncoder,
    *,
    image_size: tuple[int, int],
    boxes: np.ndarray | torch.Tensor | None = None,
    points: np.ndarray | torch.Tensor | None = None,
    point_labels: np.ndarray | torch.Tensor | None = None,
    masks: np.ndarray | torch.Tensor | None = None,
) -> tuple[SamPrompts, torch.Tensor | None]:
    """Validate prompts given in original pixels and move them to SAM's input frame: `RegionPrompts.check`, then
    `RegionPrompts.sam_prompts` (its arguments and errors).

    Returns:
        The prompts in SAM's frame, and the clipped boxes in original pixels (None without boxes).
    """
    prompts = RegionPrompts.check(image_size, boxes=boxes, points=points, point_labels=point_labels, masks=masks)
    return prompts.sam_prompts(encoder), prompts.clipped_boxes
