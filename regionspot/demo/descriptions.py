"""What the synthetic generator says about each object it drew, and how the demo reads captions back.

A caption names the object's attributes, where it is in the image and, when another object covers part of it
or it covers part of another, that relation: "a red striped triangle at the top left, partly behind a blue
circle". Everything in it comes from the drawing itself (draw order, full and visible masks), so a captioner
can only get it right by looking.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

# An overlap counts as a relation once it covers this share of the smaller shape: a sliver is not "behind".
_MIN_OVERLAP = 0.05
_VERTICAL = ("top", "middle", "bottom")
_HORIZONTAL = ("left", "center", "right")


@dataclass(frozen=True)
class DrawnObject:
    """One object as `render_image` drew it: its class attributes and masks, (S, S) bool each."""

    colour: str
    texture: str
    shape: str
    full: np.ndarray  # the whole shape as drawn
    visible: np.ndarray  # what later objects and clutter left of it (the annotation)


def position_phrase(box: Sequence[float], size: tuple[int, int]) -> str:
    """Where a box's centre lies in a 3 x 3 grid over the image: "at the top left", "on the right", "in the middle".

    Args:
        box: x1, y1, x2, y2 in pixels; size: the image's (height, width).
    """
    height, width = size
    column = min(int(3 * (box[0] + box[2]) / 2 / width), 2)
    row = min(int(3 * (box[1] + box[3]) / 2 / height), 2)
    vertical, horizontal = _VERTICAL[max(row, 0)], _HORIZONTAL[max(column, 0)]
    if vertical == "middle":
        return "in the middle" if horizontal == "center" else f"on the {horizontal}"
    return f"at the {vertical}" if horizontal == "center" else f"at the {vertical} {horizontal}"


def describe_objects(objects: Sequence[DrawnObject]) -> list[str]:
    """One caption per object, in drawing order (later objects lie on top of earlier ones)."""
    captions = []
    for index, obj in enumerate(objects):
        ys, xs = np.nonzero(obj.visible)
        box = (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
        caption = f"a {obj.colour} {obj.texture} {obj.shape} {position_phrase(box, obj.visible.shape)}"
        covering = _largest_overlap(obj, objects[index + 1 :])
        covered = _largest_overlap(obj, objects[:index])
        if covering is not None:
            caption += f", partly behind a {covering.colour} {covering.shape}"
        elif covered is not None:
            caption += f", in front of a {covered.colour} {covered.shape}"
        captions.append(caption)
    return captions


def _largest_overlap(obj: DrawnObject, others: Sequence[DrawnObject]) -> DrawnObject | None:
    """The object of `others` whose shape overlaps `obj`'s the most, if that overlap is more than a sliver."""
    best, best_overlap = None, 0
    for other in others:
        overlap = int((obj.full & other.full).sum())
        smaller = min(int(obj.full.sum()), int(other.full.sum()))
        if overlap > best_overlap and overlap >= _MIN_OVERLAP * smaller:
            best, best_overlap = other, overlap
    return best


def attribute_words(caption: str, vocabularies: Sequence[Sequence[str]]) -> list[str | None]:
    """The first word of each vocabulary (e.g. colours, textures, shapes) that `caption` uses, None if it uses none.

    Only the words before the first comma count: what follows names another object.
    """
    words = caption.split(",")[0].split()
    return [next((w for w in words if w in vocabulary), None) for vocabulary in vocabularies]
