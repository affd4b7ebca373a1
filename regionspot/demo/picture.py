"""A picture of what the model says: test images with each ground-truth box, its predicted label and score, and
its caption when there is one."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw, ImageFont

_RIGHT = (40, 200, 60)
_WRONG = (230, 40, 40)


def best_label_per_box(detections: Sequence[dict[str, Any]]) -> dict[tuple[int, tuple[float, ...]], dict[str, Any]]:
    """(image id, rounded xywh box) -> that region's highest-scoring detection."""
    best: dict[tuple[int, tuple[float, ...]], dict[str, Any]] = {}
    for det in detections:
        key = (det["image_id"], tuple(round(v, 1) for v in det["bbox"]))
        if key not in best or det["score"] > best[key]["score"]:
            best[key] = det
    return best


def draw_predictions(
    *,
    gt: dict[str, Any],
    detections: Sequence[dict[str, Any]],
    image_dir: str | Path,
    out_file: str | Path,
    captions: Mapping[str, str] | None = None,
    num_images: int = 6,
    scale: int = 3,
    columns: int = 3,
) -> Path:
    """Draw the first `num_images` images of `gt` with every GT box labelled by its top prediction.

    A label is green when the top class is the box's true class and red (with the truth after "/")
    when it is not; a box's caption (`captions`, keyed by annotation id as a string) is written in white
    under its label. Images are enlarged `scale` times so that the labels stay readable.
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
    font = ImageFont.load_default(size=11)
    said = captions or {}
    tiles = [
        _draw_one(img, boxes_by_image[img["id"]], best, names, said, Path(image_dir), scale, font) for img in images
    ]
    width, height = tiles[0].size
    rows = -(-len(tiles) // columns)
    sheet = Image.new("RGB", (width * min(columns, len(tiles)), height * rows), "white")
    for i, tile in enumerate(tiles):
        sheet.paste(tile, ((i % columns) * width, (i // columns) * height))
    out_file = Path(out_file)
    out_file.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(out_file)
    return out_file


def _draw_one(image_record, annotations, best, names, captions, image_dir: Path, scale: int, font) -> Image.Image:
    with Image.open(image_dir / image_record["file_name"]) as raw:
        image = raw.convert("RGB")
    image = image.resize((image.width * scale, image.height * scale), Image.Resampling.NEAREST)
    draw = ImageDraw.Draw(image)
    for ann in annotations:
        x, y, w, h = (v * scale for v in ann["bbox"])
        det = best.get((image_record["id"], tuple(round(v, 1) for v in ann["bbox"])))
        right = det is not None and det["category_id"] == ann["category_id"]
        colour = _RIGHT if right else _WRONG
        if det is None:
            text = f"? / {names[ann['category_id']]}"
        else:
            text = f"{names[det['category_id']]} {det['score']:.2f}"
            if not right:
                text += f" / {names[ann['category_id']]}"
        draw.rectangle((x, y, x + w, y + h), outline=colour, width=2)
        left, top, right_edge, bottom = draw.textbbox((x + 2, y + 2), text, font=font)
        draw.rectangle((left - 1, top - 1, right_edge + 1, bottom + 1), fill=(0, 0, 0))
        draw.text((x + 2, y + 2), text, fill=colour, font=font)
        caption = captions.get(str(ann["id"]))
        if caption:
            below = (x + 2, bottom + 2)
            left, top, right_edge, bottom = draw.textbbox(below, caption, font=font)
            draw.rectangle((left - 1, top - 1, right_edge + 1, bottom + 1), fill=(0, 0, 0))
            draw.text(below, caption, fill=(255, 255, 255), font=font)
    return image
