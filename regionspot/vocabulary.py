"""Class names as data sets store them -> class names as the text encoder should read them.

Detection data sets name classes for code, not for CLIP: LVIS writes "bow_(weapon)", COCO-panoptic
"wall-other-merged". Data sets keep their own names; training, validation and evaluation read them
through `read_class_names` with the model config's `clip.class_names`, so a trained adapter is always
scored against the texts it was trained on.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from regionspot.config import CLASS_NAME_STYLES

# COCO-panoptic's suffixes, in the order RegionSpot's reading removes them (wherever they occur, str.replace).
_SUFFIXES = ("-other", "-merged", "-stuff")
_DISAMBIGUATOR = re.compile(r"\s*\(([^()]*)\)\s*")


def clean_class_name(name: str, *, keep_disambiguator: bool = False) -> str:
    """ "bow_(weapon)" -> "bow" ("bow (weapon)" if kept); "wall-other-merged" -> "wall"; "a_b" -> "a b".

    Raises:
        ValueError: if `name` is not a non-empty string.
    """
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"class names must be non-empty strings, got {name!r}")
    text = name.replace("_", " ")
    changed = True
    while changed:  # "wall-other-merged" carries two suffixes
        changed = False
        for suffix in _SUFFIXES:
            if text.endswith(suffix) and len(text) > len(suffix):
                text, changed = text[: -len(suffix)], True
    replacement = (lambda m: f" ({m.group(1).strip()}) ") if keep_disambiguator else " "
    text = " ".join(_DISAMBIGUATOR.sub(replacement, text).split())
    return text or " ".join(name.replace("_", " ").split())


def read_class_names(names: Sequence[str], *, style: str = "readable") -> list[str]:
    """A data set's class names -> the texts the text encoder reads, as `clip.class_names` says.

    "readable": `clean_class_name`, and a name whose cleaned form collides with another class keeps its
    disambiguator, so that "bow_(weapon)" and "bow_(decorative_ribbons)" stay two different texts.
    "raw": RegionSpot's reading, the names as stored with only "-other", "-merged" and "-stuff" removed.

    Raises:
        ValueError: on an unknown style or a name that is not a non-empty string.
    """
    if style not in CLASS_NAME_STYLES:
        raise ValueError(f"class-name style must be one of {CLASS_NAME_STYLES}, got {style!r}")
    bad = [name for name in names if not isinstance(name, str) or not name.strip()]
    if bad:
        raise ValueError(f"class names must be non-empty strings, got {bad[:5]}")
    if style == "raw":
        return [_regionspot_name(name) for name in names]
    plain = [clean_class_name(name) for name in names]
    counts = Counter(plain)
    return [
        clean_class_name(name, keep_disambiguator=True) if counts[text] > 1 else text
        for name, text in zip(names, plain, strict=True)
    ]


def _regionspot_name(name: str) -> str:
    text = name
    for part in _SUFFIXES:
        text = text.replace(part, "")
    return text or name  # a name that is nothing but a suffix stays itself rather than become empty


def category_names(categories: Iterable[Mapping[str, Any]]) -> list[str]:
    """The names of COCO/LVIS `categories` records, as stored, in the given order.

    Raises:
        ValueError: on a record without "id" or "name", or on duplicate ids.
    """
    records = list(categories)
    for i, cat in enumerate(records):
        if not isinstance(cat, Mapping) or "id" not in cat or "name" not in cat:
            raise ValueError(f"categories[{i}] needs an 'id' and a 'name', got {cat!r}")
    ids = [cat["id"] for cat in records]
    if len(set(ids)) != len(ids):
        raise ValueError(f"duplicate category ids: {sorted({i for i in ids if ids.count(i) > 1})[:10]}")
    return [cat["name"] for cat in records]


def vocabulary_from_categories(categories: Iterable[Mapping[str, Any]], *, style: str = "readable") -> list[str]:
    """The texts of COCO/LVIS `categories` records, in the given order: `read_class_names` of their names."""
    return read_class_names(category_names(categories), style=style)
