"""The package's toy detection data set: solid coloured rectangles on grey, classes named by colour, LVIS format,
with a caption per box ("a red box on the left").

Random frozen backbones carry colour but not shape (docs/demo.md), so colour is what an adapter on them
can learn; each image holds one rectangle so that its colour decides its class. `tiny`'s
smoke run draws it on first use (`DatasetConfig.toy`), and the tests use it.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

COLOURS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220), "yellow": (230, 220, 30)}


def write_colour_boxes(
    root: Path, *, num_images: int, seed: int = 0, size: tuple[int, int] = (64, 80), split: str = "train"
) -> tuple[Path, Path]:
    """Write `num_images` PNGs and an LVIS-format JSON (file_name, federated lists, frequencies).

    Returns:
        (annotation file, image folder).
    """
    rng = np.random.default_rng(seed)
    image_dir = root / "images"
    image_dir.mkdir(parents=True, exist_ok=True)
    height, width = size
    categories = [
        {"id": i + 1, "name": name, "synonyms": [name], "frequency": "frc"[i % 3]} for i, name in enumerate(COLOURS)
    ]
    images, annotations = [], []
    for index in range(num_images):
        image_id = 1000 * (split == "val") + index + 1
        pixels = np.full((height, width, 3), 128, dtype=np.uint8)
        label = int(rng.integers(len(COLOURS)))
        w, h = int(rng.integers(width // 3, width * 3 // 4)), int(rng.integers(height // 3, height * 3 // 4))
        x, y = int(rng.integers(0, width - w)), int(rng.integers(0, height - h))
        pixels[y : y + h, x : x + w] = list(COLOURS.values())[label]
        file_name = f"{split}_{index:04d}.png"
        Image.fromarray(pixels).save(image_dir / file_name)
        images.append(
            {
                "id": image_id,
                "file_name": file_name,
                "width": width,
                "height": height,
                "neg_category_ids": [c["id"] for c in categories if c["id"] != label + 1],
                "not_exhaustive_category_ids": [],
            }
        )
        name, side = list(COLOURS)[label], "left" if x + w / 2 < width / 2 else "right"
        annotations.append(
            {
                "id": image_id,
                "image_id": image_id,
                "category_id": label + 1,
                "bbox": [x, y, w, h],
                "area": w * h,
                "caption": f"a {name} box on the {side}",  # for captioning tests: what and where
            }
        )
    ann_file = root / f"{split}.json"
    ann_file.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    return ann_file, image_dir
