"""Class names as the text encoder should read them.

Detection data sets name classes for code, not for CLIP: LVIS writes "bow_(weapon)", COCO-panoptic
"wall-other-merged". Each data set's vocabulary is its categories' names cleaned the same way.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from typing import Any

_SUFFIXES = ("-merged", "-other", "-stuff")
_DISAMBIGUATOR = re.compile(r"\s*\(([^()]*)\)\s*")


def clean_class_name(name: str, *, keep_disambiguator: bool = False) -> str:
    """ "bow_(weapon)" -> "bow"; "wall-other-merged" -> "wall"; "traffic_light" -> "traffic light".

    Args:
        name: the data set's category name.
        keep_disambiguator: keep a parenthesised qualifier as text ("bow (weapon)"), for names that
            would otherwise collide with another class of the same vocabulary.
    """
    text = name.replace("_", " ")
    changed = True
    while changed:  # "wall-other-merged" carries two suffixes
        changed = False
        for suffix in _SUFFIXES:
            if text.endswith(suffix) and len(text) > len(suffix):
                text, changed = text[: -len(suffix)], True
    if keep_disambiguator:
        text = _DISAMBIGUATOR.sub(lambda m: f" ({m.group(1).strip()}) ", text)
    else:
        text = _DISAMBIGUATOR.sub(" ", text)
    text = " ".join(text.split())
    return text or " ".join(name.replace("_", " ").split())


def vocabulary_from_categories(categories: Sequence[dict[str, Any]]) -> list[str]:
    """Clean names of `categories` (COCO/LVIS records with "name"), in the given order.

    A name whose cleaned form collides with another class keeps its disambiguator, so that
    "bow_(weapon)" and "bow_(decorative_ribbons)" stay two different texts.
    """
    plain = [clean_class_name(str(cat["name"])) for cat in categories]
    counts = Counter(plain)
    return [
        clean_class_name(str(cat["name"]), keep_disambiguator=True) if counts[text] > 1 else text
        for cat, text in zip(categories, plain, strict=True)
    ]
