"""Turning user inputs (images of any kind, prompts in original pixels) into what the models take.

Every check here raises ValueError with a message a user can act on, so that nothing bad reaches torch.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps

from regionspot.boxes import clip_to_image, has_area
from regionspot.modeling.sam import SamPrompts, SamRegionEncoder

# A binary mask prompt becomes SAM logits of +-9.2 (logit of 1e-4): confident, like SAM's own outputs.
_MASK_PROB_CLAMP = 1e-4
# PIL modes of more than 8 bits a sample (besides the I;16 family), which convert("RGB") would clip to 255.
_WIDE_PIL_MODES = ("I", "F")
_UINT16_MAX = 65535  # a 16-bit sample's white, mapped onto 8 bits' 255


def to_rgb_uint8(image: Image.Image | np.ndarray | torch.Tensor) -> np.ndarray:
    """Any supported image -> (H, W, 3) uint8 RGB.

    Accepts PIL images; numpy arrays (H, W), (H, W, 1), (H, W, 3) or (H, W, 4); tensors (H, W) or
    (C, H, W) with C in 1, 3, 4. Integers must be uint8, or uint16 (16-bit samples, 65535 white, scaled to 8
    bits); floats must lie in [0, 1]; bools are black and white; alpha is dropped. A PIL image is first turned
    upright by its EXIF orientation, as viewers (and cv2.imread, which SAM's examples use) show it, so that
    prompts drawn on what one sees fit; one with more than 8 bits a sample is read as its array, under the rules
    for arrays, rather than clipped to 255 by PIL's conversion: modes I;16 (a 16-bit PNG) and I as 16-bit
    samples (I must hold 0 to 65535), F as floats.

    Raises:
        ValueError: for anything else (another type, shape or dtype; no pixels; NaN, infinite or out-of-range
            floats; a PIL image whose file cannot be decoded).
    """
    if isinstance(image, Image.Image):
        return _pil_to_rgb_uint8(image)
    if isinstance(image, torch.Tensor):
        array = image.detach().cpu()
        if array.dtype == torch.bfloat16:  # numpy has no bfloat16
            array = array.float()
        if array.ndim == 3:
            array = array.permute(1, 2, 0)
        array = array.numpy()
    elif isinstance(image, np.ndarray):
        array = image
    else:
        raise ValueError(f"image must be a PIL image, numpy array or torch tensor, got {type(image).__name__}")
    if array.ndim == 2:
        array = array[:, :, None]
    if array.ndim != 3 or array.shape[2] not in (1, 3, 4):
        raise ValueError(
            f"image of shape {tuple(image.shape)} is not an image: use (H, W), (H, W, 1|3|4) for numpy "
            "or (H, W), (1|3|4, H, W) for tensors"
        )
    if array.shape[0] == 0 or array.shape[1] == 0:
        raise ValueError(f"image has no pixels (shape {tuple(image.shape)})")
    array = _to_uint8(array)
    if array.shape[2] == 1:
        array = np.repeat(array, 3, axis=2)
    return np.ascontiguousarray(array[:, :, :3])


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


def _pil_to_rgb_uint8(image: Image.Image) -> np.ndarray:
    try:
        upright = ImageOps.exif_transpose(image)
        if image.mode in _WIDE_PIL_MODES or image.mode.startswith("I;16"):
            return to_rgb_uint8(_wide_samples(np.asarray(upright), mode=image.mode))
        return np.array(upright.convert("RGB"))
    except (OSError, SyntaxError) as err:  # a lazily opened file is decoded only now: truncated, corrupt
        raise ValueError(f"cannot decode the image: {err}") from err


def _wide_samples(array: np.ndarray, *, mode: str) -> np.ndarray:
    """A wide PIL image's samples under the rules for arrays: integers (I;16 family, I) as native uint16, floats as
    they are."""
    if array.dtype.kind == "f":
        return array
    if array.size and (array.min() < 0 or array.max() > _UINT16_MAX):
        raise ValueError(
            f"a PIL image of mode {mode} is read as 16-bit samples (0 to {_UINT16_MAX}), but it holds "
            f"[{array.min()}, {array.max()}]: scale it into that range, or to 8 bits"
        )
    return array.astype(np.uint16)


def _to_uint8(array: np.ndarray) -> np.ndarray:
    if array.dtype == np.uint8:
        return array
    if array.dtype == np.uint16:
        return np.round(array * (255 / _UINT16_MAX)).astype(np.uint8)
    if array.dtype == np.bool_:
        return array.astype(np.uint8) * 255
    if np.issubdtype(array.dtype, np.floating):
        if not np.isfinite(array).all():
            raise ValueError("image contains NaN or infinite values")
        if array.min() < 0 or array.max() > 1:
            raise ValueError(
                f"float image values must lie in [0, 1], got [{array.min():.3g}, {array.max():.3g}]; "
                "divide by 255 or pass uint8"
            )
        return np.round(array * 255).astype(np.uint8)
    raise ValueError(f"image dtype {array.dtype.name} is not supported: use uint8, uint16 or float in [0, 1]")


def clip_boxes(boxes: np.ndarray | torch.Tensor, image_size: tuple[int, int]) -> torch.Tensor:
    """(N, 4) xyxy boxes in pixels -> float tensor clipped to the image.

    A box partly outside the image is clipped to it; one left with no area inside it (wholly outside, inverted
    with x2 <= x1 or y2 <= y1, or degenerate) is refused, as is one with a NaN or infinite coordinate: a box is
    never silently dropped or reordered, so that results stay one per box given.

    Raises:
        TypeError: if the boxes are not numbers. ValueError: for another shape, or the boxes above, naming them.
    """
    boxes = _numbers(boxes, name="boxes").float()
    if boxes.ndim == 1 and boxes.shape[0] == 4:
        boxes = boxes[None]
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise ValueError(f"boxes must have shape (N, 4) as x1, y1, x2, y2 in pixels, got {tuple(boxes.shape)}")
    bad = (~torch.isfinite(boxes)).any(dim=1).nonzero().flatten().tolist()
    if bad:
        raise ValueError(f"{numbered(bad, 'box', 'boxes')} {_has(bad)} NaN or infinite coordinates")
    height, width = image_size
    clipped = clip_to_image(boxes, image_size)
    empty = (~has_area(clipped)).nonzero().flatten().tolist()
    if empty:
        raise ValueError(
            f"{numbered(empty, 'box', 'boxes')} {_has(empty)} no area inside the {width}x{height} image "
            f"(first: {boxes[empty[0]].tolist()}); boxes are x1, y1, x2, y2 with x2 > x1 and y2 > y1"
        )
    return clipped


def numbered(indices: list[int], one: str, many: str) -> str:
    """Items as a user is told of them, counted from 1 as the app numbers boxes and as `<region1>` names the first,
    with their Python index: "box 2 (index 1)", "boxes 1, 3 (indices 0, 2)" (the first ten)."""
    shown, more = indices[:10], f" and {len(indices) - 10} more" if len(indices) > 10 else ""
    if len(indices) == 1:
        return f"{one} {indices[0] + 1} (index {indices[0]})"
    return f"{many} {', '.join(str(i + 1) for i in shown)}{more} (indices {', '.join(map(str, shown))}{more})"


def _has(indices: list[int]) -> str:
    return "has" if len(indices) == 1 else "have"


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
    device = encoder.sam.device
    clipped = None if boxes is None else clip_boxes(boxes, image_size)
    sam_boxes = None if clipped is None else encoder.transform.apply_boxes_torch(clipped, image_size).to(device)
    sam_points, sam_labels = None, None
    if points is not None:
        sam_points, sam_labels = _prepare_points(encoder, points, point_labels, image_size)
    elif point_labels is not None:
        raise ValueError("point_labels were given without points")
    mask_logits = None if masks is None else _mask_logits(encoder, masks, image_size)
    given = {"boxes": sam_boxes, "points": sam_points, "masks": mask_logits}
    counts = {name: len(value) for name, value in given.items() if value is not None}
    if not counts:
        raise ValueError("give at least one prompt: boxes, points or masks")
    if len(set(counts.values())) > 1:
        raise ValueError(f"prompts must describe the same regions, but their counts differ: {counts}")
    if 0 in counts.values():
        raise ValueError("prompts are empty: give at least one region")
    return SamPrompts(sam_boxes, sam_points, sam_labels, mask_logits), clipped


def _numbers(values: np.ndarray | torch.Tensor, *, name: str) -> torch.Tensor:
    """A prompt as a CPU tensor of its own (bool, integer or float) dtype, or TypeError naming it (strings,
    None, objects); ragged nesting is a ValueError, the shape being wrong."""
    if not torch.is_tensor(values):
        try:
            values = np.asarray(values)
        except ValueError as err:  # numpy refuses ragged nesting
            raise ValueError(f"{name} must be a rectangular array of numbers: {err}") from None
        if values.dtype.kind not in "biuf":
            raise TypeError(f"{name} must be numbers, got an array of dtype {values.dtype.name}")
        values = torch.from_numpy(values if values.flags.writeable else values.copy())  # torch warns on read-only
    if values.is_complex():
        raise TypeError(f"{name} must be real numbers, got dtype {values.dtype}")
    return values.detach().cpu()


def _prepare_points(encoder, points, point_labels, image_size) -> tuple[torch.Tensor, torch.Tensor]:
    points = _numbers(points, name="points").float()
    if points.ndim != 3 or points.shape[2] != 2 or points.shape[1] == 0:
        raise ValueError(
            f"points must have shape (N regions, P >= 1 points, 2) as x, y in pixels, got {tuple(points.shape)}; "
            "for one point per region use points[:, None]"
        )
    if not torch.isfinite(points).all():
        raise ValueError("points contain NaN or infinite coordinates")
    height, width = image_size
    outside = (points[..., 0] < 0) | (points[..., 0] > width) | (points[..., 1] < 0) | (points[..., 1] > height)
    if outside.any():
        regions = outside.any(dim=1).nonzero().flatten().tolist()
        raise ValueError(f"points of {numbered(regions, 'region', 'regions')} lie outside the {width}x{height} image")
    if point_labels is None:
        labels = torch.ones(points.shape[:2])
    else:
        labels = _numbers(point_labels, name="point_labels")
        if labels.shape != points.shape[:2]:
            raise ValueError(f"point_labels must have shape {tuple(points.shape[:2])}, got {tuple(labels.shape)}")
        if not ((labels == 0) | (labels == 1)).all():
            raise ValueError("point_labels must be 1 (foreground) or 0 (background)")
    device = encoder.sam.device
    return encoder.transform.apply_coords_torch(points, image_size).to(device), labels.to(device, torch.int)


def _mask_logits(encoder: SamRegionEncoder, masks, image_size: tuple[int, int]) -> torch.Tensor:
    masks = _numbers(masks, name="masks")
    if masks.ndim != 3 or tuple(masks.shape[1:]) != tuple(image_size):
        height, width = image_size
        raise ValueError(f"masks must have shape (N, {height}, {width}) like the image, got {tuple(masks.shape)}")
    masks = masks.float()
    if not ((masks >= 0) & (masks <= 1)).all():
        raise ValueError("masks must be binary (bool, or 0/1 values)")
    low_res = masks_in_sam_frame(encoder, masks)
    return torch.logit(low_res.clamp(_MASK_PROB_CLAMP, 1 - _MASK_PROB_CLAMP)).to(encoder.sam.device)


def masks_in_sam_frame(encoder: SamRegionEncoder, masks: torch.Tensor) -> torch.Tensor:
    """(N, H, W) masks in [0, 1] at the image's size -> (N, 1, 4h, 4w) in [0, 1] on SAM's low-resolution mask grid.

    The masks go through SAM's own geometry: resized with the image, zero-padded to SAM's square, then
    area-averaged to the grid of SAM's mask logits (its mask input, and its mask output before upscaling).
    """
    resized = encoder.transform.get_preprocess_shape(*masks.shape[1:], encoder.image_size)
    masks = F.interpolate(masks[:, None].float(), size=resized, mode="bilinear", align_corners=False)
    masks = F.pad(masks, (0, encoder.image_size - resized[1], 0, encoder.image_size - resized[0]))
    return F.interpolate(masks, size=encoder.mask_input_size, mode="area")
