"""Class names as data sets store them -> class names as the text encoder should read them.

Detection data sets name classes for code, not for CLIP: LVIS writes "bow_(weapon)", COCO-panoptic
"wall-other-merged". Training and evaluation both read a vocabulary through this one module, so a
trained adapter is always scored against the texts it was trained on.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Any

_SUFFIXES = ("-merged", "-other", "-stuff")
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


def vocabulary_from_categories(categories: Iterable[Mapping[str, Any]]) -> list[str]:
    """Cleaned names of COCO/LVIS `categories` records, in the given order.

    A name whose cleaned form collides with another class keeps its disambiguator, so that
    "bow_(weapon)" and "bow_(decorative_ribbons)" stay two different texts.

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
    plain = [clean_class_name(cat["name"]) for cat in records]
    counts = Counter(plain)
    return [
        clean_class_name(cat["name"], keep_disambiguator=True) if counts[text] > 1 else text
        for cat, text in zip(records, plain, strict=True)
    ]
