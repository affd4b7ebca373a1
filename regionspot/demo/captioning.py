"""The demo's captioning scores: the trained captioner against two baselines, and attribute words on held-out classes.

Baselines, scored by the same toolkit on the same regions:
- "most frequent caption": every region gets the training split's most common caption;
- "top-1 name": the recogniser's best class for the region put in the caption template, "a {name}" (all the
  template a recogniser can fill: where the region is and what hides it are not among its classes).
Attribute accuracy reads the colour, texture and shape words of a caption's first clause (the object itself)
and compares them with the region's true class; on held-out classes it shows whether the captioner composes
attributes it saw apart into a combination it never saw.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

from regionspot.demo.descriptions import attribute_words
from regionspot.demo.picture import best_label_per_box
from regionspot.demo.synthetic import COLOURS, SHAPES, TEXTURES
from regionspot.evaluation.caption_metrics import score_captions

CAPTION_COLUMNS = ("CIDEr", "Bleu_4", "METEOR", "ROUGE_L")
ATTRIBUTES = ("colour", "texture", "shape")


def baseline_captions(
    *, train_gt: dict[str, Any], test_gt: dict[str, Any], detections: Sequence[dict[str, Any]]
) -> dict[str, dict[str, str]]:
    """{baseline name: {region key: caption}} for every test region (keys: annotation ids as strings)."""
    most_common = Counter(ann["caption"] for ann in train_gt["annotations"]).most_common(1)[0][0]
    names = {cat["id"]: cat["name"].replace("_", " ") for cat in test_gt["categories"]}
    best = best_label_per_box(detections)
    top1 = {}
    for ann in test_gt["annotations"]:
        det = best.get((ann["image_id"], tuple(round(v, 1) for v in ann["bbox"])))
        top1[str(ann["id"])] = "" if det is None else f"a {names[det['category_id']]}"
    return {
        "most frequent caption": {str(ann["id"]): most_common for ann in test_gt["annotations"]},
        "top-1 name": top1,
    }


def caption_rows(
    test_gt: dict[str, Any],
    systems: Mapping[str, Mapping[str, str]],
    *,
    heldout_ids: Sequence[int],
    scored: Mapping[str, Mapping[str, float]] | None = None,
) -> dict[str, dict[str, float]]:
    """Caption metrics of every system on the test regions, and its attribute accuracy on held-out classes.

    `scored` holds the metrics of systems already scored on exactly these regions (evaluate.py's metrics.json):
    each scoring runs METEOR's Java process, ~10 s here, so none is run twice.
    """
    references = {str(ann["id"]): [ann["caption"]] for ann in test_gt["annotations"]}
    heldout = [ann for ann in test_gt["annotations"] if ann["category_id"] in set(heldout_ids)]
    classes = {cat["id"]: cat["name"].split() for cat in test_gt["categories"]}
    rows = {}
    for name, captions in systems.items():
        scores = (scored or {}).get(name) or score_captions(
            {key: captions.get(key, "") for key in references}, references
        )
        row = {column: scores[column] for column in CAPTION_COLUMNS}
        row.update(attribute_accuracy(heldout, captions, classes))
        rows[name] = row
    return rows


def attribute_accuracy(
    annotations: Sequence[dict[str, Any]], captions: Mapping[str, str], classes: Mapping[int, list[str]]
) -> dict[str, float]:
    """Share of `annotations` whose caption names each true attribute ("colour", ...), and all three ("all")."""
    if not annotations:
        return {**{attribute: -1.0 for attribute in ATTRIBUTES}, "all": -1.0}
    right = Counter()
    for ann in annotations:
        said = attribute_words(captions.get(str(ann["id"]), ""), (tuple(COLOURS), TEXTURES, SHAPES))
        hits = [word == truth for word, truth in zip(said, classes[ann["category_id"]], strict=True)]
        right.update(attribute for attribute, hit in zip(ATTRIBUTES, hits, strict=True) if hit)
        right["all"] += all(hits)
    return {key: right[key] / len(annotations) for key in (*ATTRIBUTES, "all")}


def format_caption_table(rows: Mapping[str, Mapping[str, float]]) -> str:
    """Caption metrics (x100, the toolkit's usual scale) and held-out attribute accuracy (%), one row per system."""
    columns = [*CAPTION_COLUMNS, *(f"held-out {a}" for a in ATTRIBUTES), "held-out all three"]
    lines = ["| | " + " | ".join(columns) + " |", "|---|" + "---:|" * len(columns)]
    for name, row in rows.items():
        values = [row[c] for c in CAPTION_COLUMNS] + [row[a] for a in (*ATTRIBUTES, "all")]
        lines.append(f"| {name} | " + " | ".join("n/a" if v < 0 else f"{100 * v:.1f}" for v in values) + " |")
    return "\n".join(lines)
