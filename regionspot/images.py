"""The one image reader: an image file (a path or its bytes) -> (H, W, 3) uint8 RGB, in numpy and PIL only.

Every reader of image files goes through `load_image` (or, for an image already opened, `to_rgb_uint8`): the
predictor's callers, the data sets, evaluate.py, the app and the demo, so that one file is the same pixels
everywhere. The rules are `regionspot.checks.to_rgb_uint8`'s:

- EXIF orientation: turned upright, as viewers (and cv2.imread, which SAM's examples use) show the file.
- More than 8 bits a sample (16-bit PNGs: mode I;16, or I): scaled, 65535 -> 255, not clipped to 255.
- CMYK (JPEGs from print workflows): PIL's conversion to RGB (no colour profile applied).
- Greyscale (L, 1), palette (P): their RGB colours.
- Alpha (RGBA, LA, PA, a palette with a transparent colour): dropped, not composited on any background: each
  pixel keeps the colour stored under it, as cv2.imread (IMREAD_COLOR) and CLIP's own preprocessing
  (`convert("RGB")`) read such files, so that the frozen models see what their reference pipelines give them.

Torch-free (the ONNX predictor imports it through `regionspot.checks`).
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

from regionspot.checks import to_rgb_uint8

__all__ = ["ImageTooLargeError", "decode_image", "load_image", "to_rgb_uint8"]


class ImageTooLargeError(ValueError):
    """An image of more pixels than PIL allows (`PIL.Image.MAX_IMAGE_PIXELS`): a possible decompression bomb."""


def load_image(path: str | Path) -> np.ndarray:
    """An image file -> (H, W, 3) uint8 RGB under the module's rules (upright by EXIF, 16-bit scaled, alpha dropped).

    Raises:
        FileNotFoundError: if there is no such file. ImageTooLargeError: naming the file, for more pixels than
            PIL allows (PIL's DecompressionBombError; also its DecompressionBombWarning where a caller made that
            warning an error). ValueError: naming the file, if it cannot be decoded as an image (corrupt,
            truncated, not an image).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image not found: {path}")
    return _read(path, name=path)


def decode_image(data: bytes, *, name: str | Path) -> np.ndarray:
    """The bytes of an image file -> (H, W, 3) uint8 RGB, as `load_image` reads the file; errors name `name`."""
    return _read(io.BytesIO(data), name=name)


def _read(source: Path | io.BytesIO, *, name: str | Path) -> np.ndarray:
    try:
        with Image.open(source) as image:
            return to_rgb_uint8(image)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise ImageTooLargeError(f"image {name} is too large to decode: {err}") from err
    except (OSError, ValueError, SyntaxError) as err:
        raise ValueError(f"cannot read image {name}: {err}") from err
