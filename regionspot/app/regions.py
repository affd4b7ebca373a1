"""The app's regions as the user gives them: boxes and points typed as text or clicked on the image.

Pure functions over plain values (text, lists, arrays), so that every rule the page follows is tested without a
browser. A box is `x1, y1, x2, y2` in the image's pixels; a point is `x, y` with label 1 (on the object) or 0 (off
it). Each box is one region; all points together are one more region (SAM reads several clicks as one object).
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from regionspot.transforms import load_image
from regionspot.visualize import PALETTE, draw_regions

CLICK_MODES = ("box: two corners", "point on the object", "point off the object")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")
ON_COLOUR, OFF_COLOUR = (40, 205, 70), (240, 60, 60)  # a point on the object, and one off it
_SEPARATORS = re.compile(r"[,\s]+")


class InputError(ValueError):
    """An input the app refuses; the message says what to do instead (the page shows it as an error)."""


@dataclass
class Regions:
    """The regions to recognise: N boxes, and optionally one region of P points."""

    boxes: list[list[float]] = field(default_factory=list)  # (N, 4) x1, y1, x2, y2
    points: list[list[float]] = field(default_factory=list)  # (P, 2) x, y, all of one region
    point_labels: list[int] = field(default_factory=list)  # (P,) 1 on the object, 0 off it

    def __len__(self) -> int:
        return len(self.boxes) + (1 if self.points else 0)


def read_image_file(path: str | Path) -> np.ndarray:
    """An uploaded file -> (H, W, 3) uint8 RGB, upright by its EXIF orientation.

    Raises:
        InputError: for a file that is not an image by its name, or one that cannot be decoded.
    """
    path = Path(path)
    kinds = ", ".join(s.lstrip(".").upper() for s in IMAGE_SUFFIXES if s not in (".jpeg", ".tif"))
    if path.suffix.lower() not in IMAGE_SUFFIXES:
        what = f"a {path.suffix.lstrip('.').upper()} file" if path.suffix else "a file without an extension"
        raise InputError(f"{path.name} is not an image ({what}): upload a picture ({kinds})")
    try:
        return load_image(path)
    except (OSError, ValueError) as err:
        raise InputError(f"{path.name} cannot be read as an image ({err}): upload a picture ({kinds})") from err


def parse_boxes(text: str) -> list[list[float]]:
    """Boxes typed one per line as `x1, y1, x2, y2` (commas or spaces), or as JSON (`[[x1, y1, x2, y2], ...]`).

    Raises:
        InputError: for a box that is not four finite numbers, or one with x2 <= x1 or y2 <= y1, naming it.
    """
    rows = _rows(text, what="boxes", one="box")
    for i, row in enumerate(rows, start=1):
        if len(row) != 4:
            raise InputError(f"box {i} has {len(row)} numbers ({_show(row)}): give x1, y1, x2, y2 in pixels")
        if not (row[2] > row[0] and row[3] > row[1]):
            raise InputError(
                f"box {i} ({_show(row)}) is empty or inverted: x1, y1 is its top-left corner and x2, y2 its "
                "bottom-right one, so x2 > x1 and y2 > y1"
            )
    return rows


def parse_points(text: str) -> tuple[list[list[float]], list[int]]:
    """Points typed one per line as `x, y` (on the object) or `x, y, label` (1 on it, 0 off it), or as JSON.

    Returns:
        (P, 2) points and their P labels.

    Raises:
        InputError: for a point that is not two or three numbers, or a label other than 0 or 1, naming it.
    """
    points, labels = [], []
    for i, row in enumerate(_rows(text, what="points", one="point"), start=1):
        if len(row) not in (2, 3):
            raise InputError(f"point {i} has {len(row)} numbers ({_show(row)}): give x, y or x, y, label")
        label = 1 if len(row) == 2 else row[2]
        if label not in (0, 1):
            raise InputError(f"point {i} has the label {_show([label])}: 1 puts it on the object, 0 off it")
        points.append(row[:2])
        labels.append(int(label))
    if points and not any(labels):
        raise InputError("every point is off the object (label 0): put at least one on it (label 1)")
    return points, labels


def parse_regions(boxes_text: str, points_text: str) -> Regions:
    """Both text fields -> the regions they describe.

    Raises:
        InputError: as `parse_boxes` and `parse_points`, or when they describe no region at all.
    """
    points, labels = parse_points(points_text)
    regions = Regions(boxes=parse_boxes(boxes_text), points=points, point_labels=labels)
    if not len(regions):
        raise InputError(
            "no region: click two corners of a box on the image, click a point on an object, or type a box "
            "as x1, y1, x2, y2"
        )
    return regions


def format_boxes(boxes: list[list[float]]) -> str:
    """Boxes as the text `parse_boxes` reads: one `x1, y1, x2, y2` per line."""
    return "\n".join(_show(box) for box in boxes)


def format_points(points: list[list[float]], labels: list[int]) -> str:
    """Points as the text `parse_points` reads: one `x, y, label` per line."""
    return "\n".join(_show([*point, label]) for point, label in zip(points, labels, strict=True))


def add_click(
    boxes_text: str, points_text: str, corner: list[int] | None, x: int, y: int, *, mode: str
) -> tuple[str, str, list[int] | None]:
    """One click at pixel (x, y): a box's first corner, its second (the box is added), or a point.

    Args:
        boxes_text, points_text: the regions so far, as typed.
        corner: the first corner of a box being drawn, or None.
        x, y: the click, in the image's pixels.
        mode: one of `CLICK_MODES`.

    Returns:
        The new boxes text, points text and pending corner.

    Raises:
        InputError: for a second corner on the first one's row or column (a box without area), or text the
            parsers refuse.
    """
    if mode not in CLICK_MODES:
        raise InputError(f"unknown click mode {mode!r}: choose one of {', '.join(CLICK_MODES)}")
    if mode != CLICK_MODES[0]:
        points, labels = parse_points(points_text) if points_text.strip() else ([], [])
        return boxes_text, format_points([*points, [x, y]], [*labels, int(mode == CLICK_MODES[1])]), None
    if corner is None:
        return boxes_text, points_text, [x, y]
    if corner[0] == x or corner[1] == y:
        raise InputError(
            f"the corners ({_show(corner)}) and ({_show([x, y])}) make a box without area: click two opposite corners"
        )
    box = [min(corner[0], x), min(corner[1], y), max(corner[0], x), max(corner[1], y)]
    return format_boxes([*parse_boxes(boxes_text), box]), points_text, None


def draw_prompts(image: np.ndarray, regions: Regions, corner: list[int] | None = None) -> np.ndarray:
    """The image, same size, with the regions drawn on it: boxes numbered in order, points green (on the object)
    or red (off it), and a box's pending first corner as a cross. Clicks on it land in the image's own pixels."""
    height, width = image.shape[:2]
    names = [str(i) for i in range(1, len(regions.boxes) + 1)]
    if regions.boxes:
        boxed = draw_regions(image, boxes=regions.boxes, labels=names, min_size=1, legend=False)
        picture = boxed.crop((0, 0, width, height))  # labels that did not fit inside go into added room
    else:
        picture = Image.fromarray(image).convert("RGB")
    draw = ImageDraw.Draw(picture)
    radius = max(3, round(min(height, width) / 80))
    for (x, y), label in zip(regions.points, regions.point_labels, strict=True):
        fill = ON_COLOUR if label else OFF_COLOUR
        draw.ellipse((x - radius, y - radius, x + radius, y + radius), fill=fill, outline=(255, 255, 255))
    if corner is not None:
        x, y = corner
        colour = PALETTE[len(regions.boxes) % len(PALETTE)]
        draw.line((x - 2 * radius, y, x + 2 * radius, y), fill=colour, width=2)
        draw.line((x, y - 2 * radius, x, y + 2 * radius), fill=colour, width=2)
    return np.asarray(picture)


def _rows(text: str, *, what: str, one: str) -> list[list[float]]:
    """Rows of numbers from text: JSON (a list of lists, or one list), else one row per line."""
    text = (text or "").strip()
    if not text:
        return []
    if text.startswith("["):
        try:
            value = json.loads(text)
        except json.JSONDecodeError as err:
            raise InputError(
                f"the {what} are not valid JSON ({err.msg}): type one per line, e.g. 10, 20, 200, 240"
            ) from err
        rows = [value] if value and not isinstance(value[0], list) else value
    else:
        rows = [[part for part in _SEPARATORS.split(line.strip()) if part] for line in text.splitlines()]
        rows = [row for row in rows if row]
    parsed = []
    for i, row in enumerate(rows, start=1):
        try:
            numbers = [float(v) for v in row]
        except (TypeError, ValueError):
            raise InputError(
                f"{one} {i} ({', '.join(map(str, row))}) is not numbers: type one per line, e.g. 10, 20, 200, 240"
            ) from None
        if not all(math.isfinite(v) for v in numbers):
            raise InputError(f"{one} {i} ({_show(numbers)}) has a NaN or infinite coordinate")
        parsed.append(numbers)
    return parsed


def _show(values: list[float]) -> str:
    return ", ".join(f"{v:g}" for v in values)
