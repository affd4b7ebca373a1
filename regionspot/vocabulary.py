"""Class names as data sets store them -> class names as a text encoder should read them.

LVIS names are identifiers such as "aerosol_can" or "bow_(weapon)". CLIP reads "aerosol can" and
"bow (weapon)" better; the parenthesised disambiguator is kept by default because dropping it makes
distinct LVIS classes identical ("bow_(weapon)" and "bow_(decorative_ribbons)" would both read "bow").
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

_DISAMBIGUATOR = re.compile(r"\s*\([^()]*\)")


def clean_class_name(name: str, *, keep_disambiguator: bool = True) -> str:
    """ "bow_(weapon)" -> "bow (weapon)" (or "bow" without the disambiguator); spaces collapsed.

    Raises:
        ValueError: if `name` is not a string or nothing readable is left.
    """
    if not isinstance(name, str):
        raise ValueError(f"class name must be a string, got {name!r}")
    text = name.replace("_", " ")
    if not keep_disambiguator:
        text = _DISAMBIGUATOR.sub("", text)
    text = " ".join(text.split())
    if not text:
        raise ValueError(f"class name {name!r} has no text left after cleaning")
    return text


def vocabulary_from_categories(
    categories: Iterable[Mapping[str, Any]], *, keep_disambiguator: bool = True
) -> tuple[list[str], list[int]]:
    """COCO/LVIS `categories` entries -> (cleaned names, category ids), both in ascending id order.

    Raises:
        ValueError: on an entry without id or name, or on duplicate ids.
    """
    entries = list(categories)
    for i, cat in enumerate(entries):
        if not isinstance(cat, Mapping) or "id" not in cat or "name" not in cat:
            raise ValueError(f"categories[{i}] needs an 'id' and a 'name', got {cat!r}")
    ids = [int(cat["id"]) for cat in entries]
    if len(set(ids)) != len(ids):
        raise ValueError(f"duplicate category ids: {sorted({i for i in ids if ids.count(i) > 1})[:10]}")
    ordered = sorted(entries, key=lambda cat: int(cat["id"]))
    names = [clean_class_name(cat["name"], keep_disambiguator=keep_disambiguator) for cat in ordered]
    return names, [int(cat["id"]) for cat in ordered]
