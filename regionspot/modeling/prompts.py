"""The prompts of a request: one image's regions as boxes, points or masks in its own pixels, checked, and turned
into SAM's prompts (`SamPrompts`, whose `extents` say where each region lies) by the one path every caller shares.

The checks themselves live in `regionspot.checks` (torch-free, shared with the ONNX predictor); each raises an
error a user can act on, so that nothing bad reaches torch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from regionspot.checks import check_prompts
from regionspot.modeling.sam import SamPrompts, SamRegionEncoder

# A binary mask prompt becomes SAM logits of +-9.2 (logit of 1e-4): confident, like SAM's own outputs.
_MASK_PROB_CLAMP = 1e-4


@dataclass(frozen=True)
class RegionPrompts:
    """The prompts of one image's N regions in its pixels, checked against its size: make it with `check`.

    Any prompt field may be None, but not all; the ones given share N.
    """

    image_size: tuple[int, int]  # (H, W) of the image the prompts are in
    boxes: np.ndarray | None = None  # (N, 4) float32 x1, y1, x2, y2, clipped to the image
    points: np.ndarray | None = None  # (N, P, 2) float32 x, y
    point_labels: np.ndarray | None = None  # (N, P) int32, 1 foreground / 0 background (given with points)
    masks: np.ndarray | None = None  # (N, H, W) float32 in {0, 1}

    @classmethod
    def check(
        cls, image_size: tuple[int, int], *, boxes: Any = None, points: Any = None, point_labels: Any = None,
        masks: Any = None,
    ) -> RegionPrompts:  # fmt: skip
        """Check prompts given in the pixels of an image of `image_size` (H, W).

        Args:
            boxes: (N, 4) xyxy, clipped to the image. points: (N, P, 2) xy. point_labels: (N, P) in {0, 1}
                (default all 1). masks: (N, H, W) binary masks at the image's size.

        Raises:
            TypeError: if a prompt is not numbers. ValueError: for a wrong shape; a box with no area inside the
                image, inverted or not finite (never dropped: results stay one per box); a point outside the image
                or not finite; a label not 0 or 1; a mask not binary or not the image's size; labels without
                points; no prompt, or none for any region; prompts that disagree on the region count.
        """
        checked = check_prompts(image_size, boxes=boxes, points=points, point_labels=point_labels, masks=masks)
        return cls(tuple(image_size), checked.boxes, checked.points, checked.point_labels, checked.masks)

    @classmethod
    def of_boxes(
        cls, image_sizes: Sequence[tuple[int, int]], boxes: Sequence[np.ndarray | torch.Tensor]
    ) -> list[RegionPrompts]:
        """B images' box prompts: `image_sizes` (H, W) and B (N_i, 4) xyxy boxes in those images' pixels."""
        return [cls.check(size, boxes=b) for size, b in zip(image_sizes, boxes, strict=True)]

    def __len__(self) -> int:
        return next(len(v) for v in (self.boxes, self.points, self.masks) if v is not None)

    @property
    def clipped_boxes(self) -> torch.Tensor | None:
        """(N, 4) float32 the boxes as checked (clipped to the image), or None without boxes."""
        return None if self.boxes is None else torch.from_numpy(self.boxes)

    def sam_prompts(self, encoder: SamRegionEncoder) -> SamPrompts:
        """The prompts in SAM's input frame (its resize of the image), on SAM's device."""
        device = encoder.sam.device
        size = self.image_size
        boxes = None
        if self.boxes is not None:
            boxes = encoder.transform.apply_boxes_torch(torch.from_numpy(self.boxes), size).to(device)
        points, labels = None, None
        if self.points is not None:
            points = encoder.transform.apply_coords_torch(torch.from_numpy(self.points), size).to(device)
            labels = torch.from_numpy(self.point_labels).to(device)
        mask_logits = None
        if self.masks is not None:
            mask_logits = mask_prompt_logits(encoder, torch.from_numpy(self.masks)).to(device)
        return SamPrompts(boxes, points, labels, mask_logits)


def mask_prompt_logits(encoder: SamRegionEncoder, masks: torch.Tensor, resized=None) -> torch.Tensor:
    """(N, H, W) binary masks -> (N, 1, 4h, 4w) SAM mask-input logits (`masks_in_sam_frame`, then confident logits)."""
    low_res = masks_in_sam_frame(encoder, masks, resized=resized)
    return torch.logit(low_res.clamp(_MASK_PROB_CLAMP, 1 - _MASK_PROB_CLAMP))


def masks_in_sam_frame(encoder: SamRegionEncoder, masks: torch.Tensor, resized=None) -> torch.Tensor:
    """(N, H, W) masks in [0, 1] at the image's size -> (N, 1, 4h, 4w) in [0, 1] on SAM's low-resolution mask grid.

    The masks go through SAM's own geometry: resized with the image, zero-padded to SAM's square, then
    area-averaged to the grid of SAM's mask logits (its mask input, and its mask output before upscaling).
    `resized`: the (h, w) of the image inside SAM's square, if already known (the ONNX export passes it as an
    input, so that its graph serves every image size).
    """
    if resized is None:
        resized = encoder.transform.get_preprocess_shape(*masks.shape[1:], encoder.image_size)
    masks = F.interpolate(masks[:, None].float(), size=resized, mode="bilinear", align_corners=False)
    masks = F.pad(masks, (0, encoder.image_size - resized[1], 0, encoder.image_size - resized[0]))
    # Area interpolation by SAM's whole factor (4), written as the average it is (bit-equal on the CPU): its ONNX
    # export needs the input size, which a graph serving every image size cannot state.
    return F.avg_pool2d(masks, kernel_size=encoder.image_size // encoder.mask_input_size[0])
