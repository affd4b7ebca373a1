"""The checks every predictor makes of what a user gives it, in numpy and PIL only (no torch import).

The torch predictor (`regionspot.predictor`) and the torch-free one (`regionspot.onnx`) both call these, so a bad
image, prompt or vocabulary gets the same clear error from either. Torch tensors are accepted where the torch
predictor accepts them, read through their own methods (`detach`, `cpu`, `numpy`), never by importing torch.
"""

from __future__ import annotations

import contextlib
import numbers
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image, ImageOps

from regionspot.boxes import clip_to_image, has_area

ACTIVATIONS = ("softmax", "sigmoid")
# PIL modes of more than 8 bits a sample (besides the I;16 family), which convert("RGB") would clip to 255.
_WIDE_PIL_MODES = ("I", "F")
_UINT16_MAX = 65535  # a 16-bit sample's white, mapped onto 8 bits' 255


# ----- images -------------------------------------------------------------------------------------------------------
def to_rgb_uint8(image: Any) -> np.ndarray:
    """Any supported image -> (H, W, 3) uint8 RGB.

    Accepts PIL images; numpy arrays (H, W), (H, W, 1), (H, W, 3) or (H, W, 4); tensors (H, W) or
    (C, H, W) with C in 1, 3, 4. Integers must be uint8, or uint16 (16-bit samples, 65535 white, scaled to 8
    bits); floats must lie in [0, 1]; bools are black and white; alpha is dropped, for PIL images too (not
    composited: `regionspot.images` says why; it reads files by these rules). A PIL image is first turned
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
    if _is_tensor(image):
        array = image.detach().cpu()
        if str(array.dtype) == "torch.bfloat16":  # numpy has no bfloat16
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


def _is_tensor(value: Any) -> bool:
    """A torch tensor, known without importing torch (a caller holding one has imported it)."""
    return type(value).__module__.startswith("torch") and hasattr(value, "detach")


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


def sam_input_shape(height: int, width: int, size: int) -> tuple[int, int]:
    """(h, w) of an image resized to long side `size`, as SAM's `ResizeLongestSide.get_preprocess_shape` rounds it.

    Raises:
        ValueError: for an image so thin that a side would round to no pixel.
    """
    scale = size * 1.0 / max(height, width)
    resized = int(height * scale + 0.5), int(width * scale + 0.5)
    if min(resized) < 1:
        raise ValueError(
            f"a {width}x{height} image is too thin for SAM: resized to a long side of {size} px it would be "
            f"{resized[1]}x{resized[0]}; crop or pad it to a less extreme aspect ratio"
        )
    return resized


# ----- requests -----------------------------------------------------------------------------------------------------
def check_request(vocabulary: Sequence[str], top_k: int, activation: str) -> list[str]:
    """The vocabulary as a list, after checking it, `top_k` and `activation` (see `RegionSpotPredictor.predict`)."""
    if isinstance(vocabulary, str):
        raise ValueError(
            f"vocabulary must be a list of class names, got the string {vocabulary!r}; use [{vocabulary!r}]"
        )
    if isinstance(vocabulary, bytes) or not isinstance(vocabulary, Iterable):
        raise TypeError(f"vocabulary must be a list of class names, got {type(vocabulary).__name__}")
    vocabulary = list(vocabulary)
    not_strings = [name for name in vocabulary if not isinstance(name, str)]
    if not_strings:
        raise TypeError(f"class names must be strings, got {not_strings[:5]!r}")
    if not vocabulary:
        raise ValueError("the vocabulary is empty: give at least one class name")
    blank = [name for name in vocabulary if not name.strip()]
    if blank:
        raise ValueError(f"class names must be non-empty strings, got {blank[:5]!r}")
    repeated = [name for name, count in Counter(vocabulary).items() if count > 1]
    if repeated:  # a repeated name would split its class's softmax share between its copies
        raise ValueError(f"the vocabulary names {repeated[:5]!r} more than once: give each class once")
    if not isinstance(activation, str) or activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")
    check_integer(top_k, name="top_k")
    return vocabulary


def check_captioner(caption: bool, *, has_captioner: bool) -> None:
    """Refuse caption=True for a model (or an export of one) without a captioner."""
    if caption and not has_captioner:
        raise ValueError(
            "caption=True needs a model with a captioner: build it from a model config with a caption: "
            "section (a run trained with one writes it into adapter.yaml)"
        )


def check_integer(value: int, *, name: str) -> None:
    """TypeError unless `value` is an integer (not a bool), ValueError unless it is at least 1."""
    if not isinstance(value, numbers.Integral) or isinstance(value, bool):
        raise TypeError(f"{name} must be an integer, got {value!r}")
    if value < 1:
        raise ValueError(f"{name} must be at least 1, got {value}")


def check_image_batch(images: Any, boxes: Any, batch_size: int) -> None:
    """`predict_images`' arguments: B images and B box sets, both lists (an array's rows would be taken for
    images), and a batch size of at least 1. Raises TypeError or ValueError naming the argument."""
    for name, value in (("images", images), ("boxes", boxes)):
        if not isinstance(value, list | tuple):
            raise TypeError(f"{name} must be a list with one entry per image, got {type(value).__name__}")
    if not isinstance(batch_size, numbers.Integral) or isinstance(batch_size, bool):
        raise TypeError(f"batch_size must be an integer, got {batch_size!r}")
    if len(images) != len(boxes):
        raise ValueError(f"{len(images)} images but {len(boxes)} box sets: give one (N_i, 4) array per image")
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")


@contextlib.contextmanager
def about_image(index: int) -> Iterator[None]:
    """A refusal (ValueError, TypeError) of images[index] or its boxes says which image it is about."""
    try:
        yield
    except (ValueError, TypeError) as err:
        kind = TypeError if isinstance(err, TypeError) else ValueError
        raise kind(f"{numbered([index], 'image', 'images')}: {err}") from err


# ----- prompts ------------------------------------------------------------------------------------------------------
@dataclass
class CheckedPrompts:
    """Prompts for N regions in the image's pixels, checked; any field may be None, but not all."""

    boxes: np.ndarray | None  # (N, 4) float32 x1, y1, x2, y2, clipped to the image
    points: np.ndarray | None  # (N, P, 2) float32 x, y
    point_labels: np.ndarray | None  # (N, P) int32, 1 foreground / 0 background (given with points)
    masks: np.ndarray | None  # (N, H, W) float32 in {0, 1}

    def __len__(self) -> int:
        return next(len(v) for v in (self.boxes, self.points, self.masks) if v is not None)


def check_prompts(
    image_size: tuple[int, int], *, boxes: Any = None, points: Any = None, point_labels: Any = None, masks: Any = None
) -> CheckedPrompts:
    """Check prompts given in the pixels of an image of `image_size` (H, W).

    Raises:
        TypeError: if a prompt is not numbers. ValueError: for a wrong shape; a box refused by `check_boxes`; a
            point outside the image or not finite; a label not 0 or 1; a mask not binary or not the image's size;
            labels without points; no prompt, or none for any region; prompts that disagree on the region count.
    """
    boxes = None if boxes is None else check_boxes(boxes, image_size)
    labels = None
    if points is not None:
        points, labels = _check_points(points, point_labels, image_size)
    elif point_labels is not None:
        raise ValueError("point_labels were given without points")
    masks = None if masks is None else _check_masks(masks, image_size)
    given = {"boxes": boxes, "points": points, "masks": masks}
    counts = {name: len(value) for name, value in given.items() if value is not None}
    if not counts:
        raise ValueError("give at least one prompt: boxes, points or masks")
    if len(set(counts.values())) > 1:
        raise ValueError(f"prompts must describe the same regions, but their counts differ: {counts}")
    if 0 in counts.values():
        raise ValueError("prompts are empty: give at least one region")
    return CheckedPrompts(boxes=boxes, points=points, point_labels=labels, masks=masks)


def check_boxes(boxes: Any, image_size: tuple[int, int]) -> np.ndarray:
    """(N, 4) xyxy boxes in pixels -> float32 array clipped to the image.

    A box partly outside the image is clipped to it; one left with no area inside it (wholly outside, inverted
    with x2 <= x1 or y2 <= y1, or degenerate) is refused, as is one with a NaN or infinite coordinate: a box is
    never silently dropped or reordered, so that results stay one per box given.

    Raises:
        TypeError: if the boxes are not numbers. ValueError: for another shape, or the boxes above, naming them.
    """
    boxes = as_numbers(boxes, name="boxes").astype(np.float32)
    if boxes.ndim == 1 and boxes.shape[0] == 4:
        boxes = boxes[None]
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise ValueError(f"boxes must have shape (N, 4) as x1, y1, x2, y2 in pixels, got {tuple(boxes.shape)}")
    bad = np.flatnonzero(~np.isfinite(boxes).all(axis=1)).tolist()
    if bad:
        raise ValueError(f"{numbered(bad, 'box', 'boxes')} {_has(bad)} NaN or infinite coordinates")
    height, width = image_size
    clipped = clip_to_image(boxes, image_size)
    empty = np.flatnonzero(~has_area(clipped)).tolist()  # every coordinate is finite by now
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


def as_numbers(values: Any, *, name: str) -> np.ndarray:
    """A prompt as a numpy array of its own (bool, integer or float) dtype, or TypeError naming it (strings,
    None, objects); ragged nesting is a ValueError, the shape being wrong."""
    if _is_tensor(values):
        if values.is_complex():
            raise TypeError(f"{name} must be real numbers, got dtype {values.dtype}")
        values = values.detach().cpu()
        return (values.float() if str(values.dtype) == "torch.bfloat16" else values).numpy()
    try:
        values = np.asarray(values)
    except ValueError as err:  # numpy refuses ragged nesting
        raise ValueError(f"{name} must be a rectangular array of numbers: {err}") from None
    if values.dtype.kind == "c":
        raise TypeError(f"{name} must be real numbers, got dtype {values.dtype.name}")
    if values.dtype.kind not in "biuf":
        raise TypeError(f"{name} must be numbers, got an array of dtype {values.dtype.name}")
    return values


def _check_points(points: Any, point_labels: Any, image_size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    points = as_numbers(points, name="points").astype(np.float32)
    if points.ndim != 3 or points.shape[2] != 2 or points.shape[1] == 0:
        raise ValueError(
            f"points must have shape (N regions, P >= 1 points, 2) as x, y in pixels, got {tuple(points.shape)}; "
            "for one point per region use points[:, None]"
        )
    if not np.isfinite(points).all():
        raise ValueError("points contain NaN or infinite coordinates")
    height, width = image_size
    outside = (points[..., 0] < 0) | (points[..., 0] > width) | (points[..., 1] < 0) | (points[..., 1] > height)
    if outside.any():
        regions = np.flatnonzero(outside.any(axis=1)).tolist()
        raise ValueError(f"points of {numbered(regions, 'region', 'regions')} lie outside the {width}x{height} image")
    if point_labels is None:
        return points, np.ones(points.shape[:2], dtype=np.int32)
    labels = as_numbers(point_labels, name="point_labels")
    if labels.shape != points.shape[:2]:
        raise ValueError(f"point_labels must have shape {tuple(points.shape[:2])}, got {tuple(labels.shape)}")
    if not ((labels == 0) | (labels == 1)).all():
        raise ValueError("point_labels must be 1 (foreground) or 0 (background)")
    return points, labels.astype(np.int32)


def _check_masks(masks: Any, image_size: tuple[int, int]) -> np.ndarray:
    masks = as_numbers(masks, name="masks")
    if masks.ndim != 3 or tuple(masks.shape[1:]) != tuple(image_size):
        height, width = image_size
        raise ValueError(f"masks must have shape (N, {height}, {width}) like the image, got {tuple(masks.shape)}")
    masks = masks.astype(np.float32)
    if not ((masks >= 0) & (masks <= 1)).all():
        raise ValueError("masks must be binary (bool, or 0/1 values)")
    return masks
