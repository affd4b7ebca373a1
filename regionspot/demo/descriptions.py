"""What the synthetic generator says about each object it drew, and how the demo reads captions back.

A caption names the object's attributes, where it is in the image and, when another object covers part of it
or it covers part of another, that relation: "a red striped triangle at the top left, partly behind a blue
circle". Everything in it comes from the drawing itself (draw order, full and visible masks), so a captioner
can only get it right by looking.

Questions about an image's objects (`ask_questions`) name them `<region1>`, `<region2>`, ... and have one-word
answers: an object's colour, texture or shape, whether one is left of another, which of two is larger, and how
many of them have a colour.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

# An overlap counts as a relation once it covers this share of the smaller shape: a sliver is not "behind".
_MIN_OVERLAP = 0.05
QUESTION_TYPES = ("colour", "texture", "shape", "left", "larger", "count")
# Pairs that are near ties are not asked about: a box centre a pixel to the left is no visible "left of", nor
# a region a few pixels larger a visible "larger".
_LEFT_MARGIN = 0.05  # box centres at least this share of the image width apart
_LARGER_RATIO = 1.25  # the larger visible area at least this many times the smaller
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


@dataclass(frozen=True)
class RegionFacts:
    """What a question may ask about one drawn object."""

    colour: str
    texture: str
    shape: str
    box: tuple[float, float, float, float]  # x1, y1, x2, y2 in pixels: the visible mask's extent
    area: int  # visible pixels


def ask_questions(
    regions: Sequence[RegionFacts], *, colours: Sequence[str], width: int, turns: int, rng: np.random.Generator
) -> list[tuple[str, str, str]]:
    """Up to `turns` distinct (type, question, answer) triples about `regions`, `<regionK>` naming regions[K - 1].

    Types are dealt in shuffled rounds over those the image allows (a pair question needs two regions far enough
    apart, or different enough in size), so that each type is asked about as often. Within a type the answer is
    drawn first, uniformly over those the image allows, then a question that has it: answers come out balanced
    (yes/no and first/second exactly half and half), so that the majority answer is a weak baseline.

    Args:
        regions: the image's objects, in the order their boxes are listed.
        colours: the colours a count question may ask about (the data set's).
        width: the image's width in pixels (for the left/right margin).
        turns: how many questions at most.
        rng: draws every choice.
    """
    pools = {kind: candidates for kind, candidates in _candidates(regions, colours, width).items() if candidates}
    kinds = [kind for kind in QUESTION_TYPES if kind in pools]
    asked: list[tuple[str, str, str]] = []
    while len(asked) < turns and any(pools.values()):
        for index in rng.permutation(len(kinds)):
            pool = pools[kinds[index]]
            if pool and len(asked) < turns:
                question, answer = _draw_answer_first(pool, rng)
                asked.append((kinds[index], question, answer))
    return asked


def _candidates(regions: Sequence[RegionFacts], colours: Sequence[str], width: int) -> dict[str, list[tuple[str, str]]]:
    """Every (question, answer) of each type that the image allows."""
    tags = [f"<region{k}>" for k in range(1, len(regions) + 1)]
    centres = [(r.box[0] + r.box[2]) / 2 for r in regions]
    pairs = [(i, j) for i in range(len(regions)) for j in range(len(regions)) if i != j]
    areas = [r.area for r in regions]
    return {
        "colour": [(f"what colour is {tag}?", r.colour) for tag, r in zip(tags, regions, strict=True)],
        "texture": [(f"what texture is {tag}?", r.texture) for tag, r in zip(tags, regions, strict=True)],
        "shape": [(f"what shape is {tag}?", r.shape) for tag, r in zip(tags, regions, strict=True)],
        "left": [
            (f"is {tags[i]} left of {tags[j]}?", "yes" if centres[i] < centres[j] else "no")
            for i, j in pairs
            if abs(centres[i] - centres[j]) >= _LEFT_MARGIN * width
        ],
        "larger": [
            (f"which is larger, {tags[i]} or {tags[j]}?", "first" if areas[i] > areas[j] else "second")
            for i, j in pairs
            if max(areas[i], areas[j]) >= _LARGER_RATIO * min(areas[i], areas[j])
        ],
        "count": [
            (f"how many of {' '.join(tags)} are {colour}?", str(sum(r.colour == colour for r in regions)))
            for colour in colours
        ],
    }


def _draw_answer_first(pool: list[tuple[str, str]], rng: np.random.Generator) -> tuple[str, str]:
    """Take one (question, answer) out of `pool`: an answer uniformly over those left, then one of its questions."""
    answers = sorted({answer for _, answer in pool})
    answer = answers[rng.integers(len(answers))]
    having = [i for i, (_, a) in enumerate(pool) if a == answer]
    return pool.pop(having[rng.integers(len(having))])


def question_record(
    image: str, size: tuple[int, int], regions: Sequence[RegionFacts], asked: Sequence[tuple[str, str, str]]
) -> dict[str, Any]:
    """One image's questions as a record of `regionspot.data.region_qa`'s own format.

    Args:
        image: the image's path relative to the record's file; size: its (height, width).
        regions: the objects the questions name, `<regionK>` being regions[K - 1].
        asked: `ask_questions`' (type, question, answer) triples.

    Returns:
        {"image", "width", "height", "boxes" ([x1, y1, x2, y2] per region), "conversations" (alternating
        {"from": "human" | "gpt", "value"} turns), "question_types" (one per question)}.
    """
    turns = []
    for _, question, answer in asked:
        turns += [{"from": "human", "value": question}, {"from": "gpt", "value": answer}]
    return {
        "image": image,
        "width": size[1],
        "height": size[0],
        "boxes": [list(region.box) for region in regions],
        "conversations": turns,
        "question_types": [kind for kind, _, _ in asked],
    }
