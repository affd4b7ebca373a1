"""Where the regions to recognise come from: ground-truth boxes, another detector's boxes, or SAM itself.

The data set is first turned into a list of `ImageJob`s (one per image: which file, which boxes),
checked as a whole before any model runs, so that a wrong file or id fails in seconds with a message.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import numpy as np
import torch

from regionspot.boxes import clip_to_image, has_area, xywh_to_xyxy
from regionspot.data.coco import image_file_name

SOURCES = ("gt", "proposals", "sam")


@dataclass
class ImageJob:
    """One image to evaluate and its given regions (none for the "sam" source)."""

    image_id: int
    file_name: str  # the file's name: `file_name`, or the basename of `coco_url` (LVIS)
    subfolder: str | None = None  # the folder in `coco_url` ("val2017"), tried under the images folder
    size: tuple[int, int] | None = None  # (height, width) the annotation declares
    boxes: list[list[float]] = field(default_factory=list)  # x1, y1, x2, y2 in pixels
    box_scores: list[float] | None = None  # the detector's scores, for the "proposals" source

    def candidate_paths(self, images: Path) -> list[Path]:
        paths = [images / self.file_name]
        if self.subfolder:
            paths.append(images / self.subfolder / Path(self.file_name).name)
        return paths


def image_jobs(gt: dict[str, Any], *, source: str, proposals: list[dict[str, Any]] | None = None) -> list[ImageJob]:
    """The ground truth's images, in ascending id order, with the regions `source` gives for each.

    Args:
        gt: a checked COCO/LVIS annotation dict (`load_annotations`).
        source: "gt" (every annotated box), "proposals" (the boxes of `proposals`) or "sam" (none given).
        proposals: detections in the COCO results format (xywh boxes with scores), for "proposals".
    """
    if source not in SOURCES:
        raise ValueError(f"unknown region source {source!r}; choose one of {SOURCES}")
    jobs = {img["id"]: _job(img) for img in sorted(gt["images"], key=lambda img: img["id"])}
    if source == "gt":
        anns = [ann for ann in gt["annotations"] if ann["image_id"] in jobs]
        for ann, box in zip(anns, _xyxy_lists([ann["bbox"] for ann in anns]), strict=True):
            jobs[ann["image_id"]].boxes.append(box)
    elif source == "proposals":
        if proposals is None:
            raise ValueError("the 'proposals' source needs a proposals file")
        for job in jobs.values():
            job.box_scores = []
        for det, box in zip(proposals, _xyxy_lists([det["bbox"] for det in proposals]), strict=True):
            jobs[det["image_id"]].boxes.append(box)
            jobs[det["image_id"]].box_scores.append(float(det["score"]))
    return list(jobs.values())


def _job(img: dict[str, Any]) -> ImageJob:
    size = (int(img["height"]), int(img["width"])) if "height" in img and "width" in img else None
    file_name = image_file_name(img)
    if img.get("file_name"):
        return ImageJob(image_id=img["id"], file_name=file_name, size=size)
    subfolder = Path(urlparse(str(img["coco_url"])).path).parent.name or None
    return ImageJob(image_id=img["id"], file_name=file_name, subfolder=subfolder, size=size)


def _xyxy_lists(bboxes: list[Any]) -> list[list[float]]:
    """N COCO [x, y, w, h] boxes -> N [x1, y1, x2, y2] lists, summed in float64 as Python would."""
    return xywh_to_xyxy(np.asarray(bboxes, dtype=np.float64).reshape(len(bboxes), 4)).tolist()


def check_images_exist(jobs: list[ImageJob], images: Path, *, ann_path: str) -> list[int]:
    """Ids of images not found; raises FileNotFoundError when none is found (a wrong --images folder)."""
    if not images.is_dir():
        raise FileNotFoundError(f"images folder not found: {images}")
    missing = [job.image_id for job in jobs if not any(p.is_file() for p in job.candidate_paths(images))]
    if jobs and len(missing) == len(jobs):
        tried = " or ".join(str(p) for p in jobs[0].candidate_paths(images))
        raise FileNotFoundError(
            f"none of the {len(jobs)} images of {ann_path} is in {images} (image {jobs[0].image_id} was looked "
            f"for as {tried}); point --images at the folder that holds the image files"
        )
    return missing


def keep_boxes_inside(boxes: torch.Tensor, image_size: tuple[int, int]) -> torch.Tensor:
    """(N,) bool: boxes (N, 4 xyxy) that are finite and keep some area once clipped to the (H, W) image."""
    if len(boxes) == 0:
        return torch.zeros(0, dtype=torch.bool)
    # Clipping turns infinities into the image's edges: finiteness is judged on the boxes as given.
    return has_area(boxes) & has_area(clip_to_image(boxes, image_size))
