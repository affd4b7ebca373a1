"""The one image preprocessing of RegionSpot: what SAM and CLIP see of an image, for every consumer.

The predictor, training, validation, evaluation, the demo and the benchmarks all turn an image into
model inputs here, in two halves:

- `ImagePreprocessor` (CPU, e.g. in data-loader workers): SAM's resize exactly as `segment_anything`'s
  `SamPredictor` does it (`ResizeLongestSide.apply_image`: PIL, bilinear with antialiasing, long side to
  SAM's input size, uint8), and CLIP's resize of the whole image, no crop, to CLIP's square input
  (on [0, 1] floats, no antialiasing: bicubic, or RegionSpot's bilinear, as the model's `clip.resize`
  says). The result is a `PreparedImage`, small enough to send to a device.
- On the device, `SamRegionEncoder.normalize_and_pad` and `ClipBackbone.normalize` finish the job
  (mean/std, SAM's zero padding to a square), batched.

So an image gives bit-identical backbone inputs whichever path it takes.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch
import torch.nn.functional as F
from segment_anything.utils.transforms import ResizeLongestSide

from regionspot.checks import sam_input_shape
from regionspot.config import CLIP_RESIZES


@dataclass
class PreparedImage:
    """One image resized for SAM and for CLIP (not yet normalised)."""

    sam_pixels: torch.Tensor  # (3, h, w) uint8, long side = SAM's input size, aspect ratio kept
    clip_pixels: torch.Tensor  # (3, s, s) float32, about [0, 1] (bicubic may overshoot; `normalize` clamps)
    original_size: tuple[int, int]  # (H, W) of the image as given; prompts and masks live in this frame

    def pin_memory(self) -> PreparedImage:
        """A copy in page-locked memory (a DataLoader with `pin_memory=True` calls this): then the copies to the GPU
        (`non_blocking`) overlap with the step that runs there."""
        return replace(self, sam_pixels=self.sam_pixels.pin_memory(), clip_pixels=self.clip_pixels.pin_memory())

    @property
    def sam_input_size(self) -> tuple[int, int]:
        """(h, w) of the resized image inside SAM's padded square: where its masks are cropped."""
        return tuple(self.sam_pixels.shape[-2:])


def resize_for_sam(image: np.ndarray, size: int) -> torch.Tensor:
    """(H, W, 3) uint8 -> (3, h, w) uint8 with long side `size`, exactly as SamPredictor resizes (PIL, bilinear)."""
    sam_input_shape(*image.shape[:2], size)  # refuses an image too thin for SAM
    return torch.from_numpy(ResizeLongestSide(size).apply_image(image)).permute(2, 0, 1).contiguous()


def resize_for_clip(pixels: torch.Tensor, size: int, *, mode: str = "bicubic") -> torch.Tensor:
    """(B, 3, H, W) uint8 -> (B, 3, size, size) float32 in about [0, 1]: whole images, no crop (RegionSpot's input).

    Args:
        mode: "bicubic" (the interpolation CLIP was trained with) or "bilinear" (RegionSpot's, torchvision's
            tensor `resize` without antialiasing); both interpolate without antialiasing, as RegionSpot did.
    """
    if mode not in CLIP_RESIZES:
        raise ValueError(f"CLIP resize must be one of {CLIP_RESIZES}, got {mode!r}")
    scaled = pixels.float() / 255.0
    if scaled.shape[-2:] == (size, size):  # both interpolations are exactly the identity at scale 1 (tested)
        return scaled
    return F.interpolate(scaled, size=(size, size), mode=mode)


class ImagePreprocessor:
    """(H, W, 3) uint8 RGB -> `PreparedImage`. Plain and picklable, so that data-loader workers can run it.

    Args:
        sam_size: SAM's square input size (1024 for the real SAMs).
        clip_size: CLIP's square input size (224, or 336 for ViT-L/14@336).
        clip_resize: the interpolation of CLIP's resize, "bicubic" or "bilinear" (`resize_for_clip`).
    """

    def __init__(self, *, sam_size: int, clip_size: int, clip_resize: str = "bicubic") -> None:
        if clip_resize not in CLIP_RESIZES:
            raise ValueError(f"clip_resize must be one of {CLIP_RESIZES}, got {clip_resize!r}")
        self.sam_size = sam_size
        self.clip_size = clip_size
        self.clip_resize = clip_resize

    def __call__(self, image: np.ndarray) -> PreparedImage:
        if not (isinstance(image, np.ndarray) and image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3):
            raise ValueError(
                "ImagePreprocessor takes (H, W, 3) uint8 RGB; convert with regionspot.transforms.to_rgb_uint8"
            )
        return PreparedImage(
            sam_pixels=resize_for_sam(image, self.sam_size),
            clip_pixels=resize_for_clip(
                torch.from_numpy(image).permute(2, 0, 1)[None], self.clip_size, mode=self.clip_resize
            )[0],
            original_size=tuple(image.shape[:2]),
        )
