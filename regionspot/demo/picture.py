"""A picture of what the model says: test images with each ground-truth box, SAM's mask from it, its predicted
name and score, and its caption when there is one, drawn by `regionspot.visualize`."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

from regionspot.boxes import xywh_to_xyxy
from regionspot.evaluation.top1 import best_label_per_box, box_key
from regionspot.files import save_picture
from regionspot.images import load_image
from regionspot.visualize import CAPTION_TEXT, PAPER, RIGHT, WRONG, draw_legend, draw_regions, stack_vertically

TILE_GAP = 8  # pixels of paper between the images of the sheet


def draw_predictions(
    *,
    gt: dict[str, Any],
    detections: Sequence[dict[str, Any]],
    image_dir: str | Path,
    out_file: str | Path,
    captions: Mapping[str, str] | None = None,
    num_images: int = 6,
    min_size: int = 512,
    columns: int = 3,
) -> Path:
    """Draw the first `num_images` annotated images of `gt`, every GT box labelled by its top detection.

    A label is green when the top class is the box's true class and red, with the truth under it, when it is
    not; SAM's mask of the box (the detection's segmentation, when the detections hold one) is outlined in the
    same colour; a box's caption (`captions`, keyed by annotation id as a string) is written under its name.
    Images are enlarged until their short side has `min_size` pixels so that the labels stay readable; a
    legend under them says what the colours and numbers mean.
    """
    names = {cat["id"]: cat["name"].replace("_", " ") for cat in gt["categories"]}
    best = best_label_per_box(detections)
    boxes_by_image: dict[int, list[dict[str, Any]]] = {}
    for ann in gt["annotations"]:
        boxes_by_image.setdefault(ann["image_id"], []).append(ann)
    images = [img for img in sorted(gt["images"], key=lambda img: img["id"]) if img["id"] in boxes_by_image]
    images = images[:num_images]
    if not images:
        raise ValueError("the ground truth has no annotated image to draw")
    shown = [
        (ann, best.get(box_key(ann["image_id"], ann["bbox"]))) for img in images for ann in boxes_by_image[img["id"]]
    ]
    tiles = [
        _draw_one(Path(image_dir) / img["file_name"], boxes_by_image[img["id"]], best, names, captions or {}, min_size)
        for img in images
    ]
    right = sum(det is not None and det["category_id"] == ann["category_id"] for ann, det in shown)
    legend = [
        (None, f"Each box: the model's top name among the {len(names)} and its probability."),
        (RIGHT, "right"),
        (WRONG, "wrong (the true name under it)"),
        *([(CAPTION_TEXT, "the region's caption")] if captions else []),
        (None, "thick outline: SAM's mask from the box."),
        (None, f"Shown: {right} of {len(shown)} right."),
    ]
    sheet = _grid(tiles, columns)
    sheet = stack_vertically([sheet, draw_legend(legend, width=sheet.width, font_size=15)])
    out_file = Path(out_file)
    save_picture(sheet, out_file)
    return out_file


def _draw_one(
    image_file: Path,
    annotations: list[dict[str, Any]],
    best: Mapping[tuple[int, tuple[float, ...]], dict[str, Any]],
    names: Mapping[int, str],
    captions: Mapping[str, str],
    min_size: int,
) -> Image.Image:
    image = load_image(image_file)
    dets = [best.get(box_key(ann["image_id"], ann["bbox"])) for ann in annotations]
    with_masks = all(det is not None and "segmentation" in det for det in dets)
    return draw_regions(
        image,
        boxes=xywh_to_xyxy(np.array([ann["bbox"] for ann in annotations], dtype=np.float64)),
        labels=["?" if det is None else names[det["category_id"]] for det in dets],
        scores=[0.0 if det is None else det["score"] for det in dets],
        truths=[names[ann["category_id"]] for ann in annotations],
        captions=[captions.get(str(ann["id"]), "") for ann in annotations] if captions else None,
        masks=np.stack([mask_utils.decode(det["segmentation"]) for det in dets]) if with_masks else None,
        min_size=min_size,
        mask_alpha=0.0,  # outlines only: a tint would change the colours the names are about
        legend=False,
    )


def _grid(tiles: Sequence[Image.Image], columns: int) -> Image.Image:
    """Tiles in rows of `columns`, each row as tall as its tallest tile, `TILE_GAP` pixels apart."""
    columns = min(columns, len(tiles))
    rows = [tiles[i : i + columns] for i in range(0, len(tiles), columns)]
    width = max(t.width for t in tiles)
    heights = [max(t.height for t in row) for row in rows]
    sheet = Image.new(
        "RGB", (columns * width + (columns - 1) * TILE_GAP, sum(heights) + (len(rows) - 1) * TILE_GAP), PAPER
    )
    y = 0
    for row, height in zip(rows, heights, strict=True):
        for k, tile in enumerate(row):
            sheet.paste(tile, (k * (width + TILE_GAP), y))
        y += height + TILE_GAP
    return sheet
