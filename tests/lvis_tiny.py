"""A tiny LVIS-format data set on disk: a few small PNGs of coloured shapes with federated annotations."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

CATEGORIES = [
    {"id": 1, "name": "red_square", "frequency": "r"},
    {"id": 2, "name": "blue_box_(container)", "frequency": "c"},
    {"id": 3, "name": "green_disc", "frequency": "f"},
    {"id": 5, "name": "yellow_bar", "frequency": "f"},
]
_COLOURS = {1: (220, 30, 30), 2: (30, 30, 220), 3: (30, 200, 30), 5: (230, 220, 40)}


def write_tiny_lvis(root: Path, *, num_images: int = 4, size: tuple[int, int] = (48, 64)) -> dict[str, Path]:
    """Write images/ and val.json (LVIS v1 style: coco_url, no file_name) under `root`; return their paths."""
    rng = np.random.default_rng(0)
    images_dir = root / "images"
    images_dir.mkdir(parents=True, exist_ok=True)
    height, width = size
    images, annotations = [], []
    for index in range(num_images):
        image_id = 10 + 7 * index  # ids that are not positions
        pixels = rng.integers(0, 50, size=(height, width, 3), dtype=np.uint8)
        present = [c["id"] for c in CATEGORIES if rng.random() < 0.6] or [CATEGORIES[index % 4]["id"]]
        for category_id in present:
            w, h = (int(v) for v in rng.integers(8, 20, size=2))
            x, y = int(rng.integers(0, width - w)), int(rng.integers(0, height - h))
            pixels[y : y + h, x : x + w] = _COLOURS[category_id]
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": category_id,
                    "bbox": [x, y, w, h],
                    "area": w * h,
                    "segmentation": [[x, y, x + w, y, x + w, y + h, x, y + h]],
                }
            )
        absent = [c["id"] for c in CATEGORIES if c["id"] not in present]
        name = f"{image_id:012d}.png"
        Image.fromarray(pixels).save(images_dir / name)
        images.append(
            {
                "id": image_id,
                "width": width,
                "height": height,
                "coco_url": f"http://images.cocodataset.org/val2017/{name}",
                "neg_category_ids": absent[:1],
                "not_exhaustive_category_ids": absent[1:2],
            }
        )
    ann = root / "val.json"
    ann.write_text(json.dumps({"images": images, "annotations": annotations, "categories": CATEGORIES}))
    return {"ann": ann, "images": images_dir}
