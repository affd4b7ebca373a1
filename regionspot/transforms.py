"""Turning user inputs (images of any kind, prompts in original pixels) into what the models take.

The checks themselves live in `regionspot.checks` (torch-free, shared with the ONNX predictor); each raises an
error a user can act on, so that nothing bad reaches torch. `to_rgb_uint8` is re-exported from there, and
`load_image` from `regionspot.images` (the one image reader).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from regionspot.checks import check_boxes, check_prompts, to_rgb_uint8
from regionspot.images import load_image
from regionspot.modeling.sam import SamPrompts, SamRegionEncoder

__all__ = ["clip_boxes", "load_image", "mask_prompt_logits", "masks_in_sam_frame", "prepare_prompts", "to_rgb_uint8"]

# A binary mask prompt becomes SAM logits of +-9.2 (logit of 1e-4): confident, like SAM's own outputs.
_MASK_PROB_CLAMP = 1e-4


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
    """Validate prompts given in original pixels and move them to SAM's input frame.

    Args:
        encoder: the SAM encoder (for its resize transform and mask-input size).
        image_size: (H, W) of the original image.
        boxes: (N, 4) xyxy. points: (N, P, 2) xy. point_labels: (N, P) in {0, 1} (default all 1).
        masks: (N, H, W) binary masks at the image's size.

    Returns:
        The prompts in SAM's frame, and the clipped boxes in original pixels (None without boxes).

    Raises:
        TypeError: if a prompt is not numbers. ValueError: for a wrong shape; a box refused by `clip_boxes`; a
            point outside the image or not finite; a label not 0 or 1; a mask not binary or not the image's size;
            labels without points; no prompt, or none for any region; prompts that disagree on the region count.
    """
    checked = check_prompts(image_size, boxes=boxes, points=points, point_labels=point_labels, masks=masks)
    device = encoder.sam.device
    clipped = None if checked.boxes is None else torch.from_numpy(checked.boxes)
    sam_boxes = None if clipped is None else encoder.transform.apply_boxes_torch(clipped, image_size).to(device)
    sam_points, sam_labels = None, None
    if checked.points is not None:
        sam_points = encoder.transform.apply_coords_torch(torch.from_numpy(checked.points), image_size).to(device)
        sam_labels = torch.from_numpy(checked.point_labels).to(device)
    mask_logits = None
    if checked.masks is not None:
        mask_logits = mask_prompt_logits(encoder, torch.from_numpy(checked.masks)).to(device)
    return SamPrompts(sam_boxes, sam_points, sam_labels, mask_logits), clipped


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
