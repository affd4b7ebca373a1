"""A small detection data set in LVIS v1 format, drawn from a seed: coloured, textured shapes named by text.

Every class is a colour x texture x shape combination named like "red striped triangle". Images hold
2-6 objects of varied size over a noisy background with clutter (marks of no class); later objects may
hide part of earlier ones, and the annotation is the visible mask. The same seed gives the same files.

A fourth split, `pretrain`, stands in for the web data SAM and CLIP were pretrained on: it draws all
classes uniformly (web data is not long-tailed the way LVIS is, and web-pretrained CLIP has seen LVIS's rare
classes too); `heldout_in_pretrain=False` keeps the held-out classes out of it as well. The demo fits its
stand-in backbones on it and trains the adapter on it with the held-out annotations removed, as
open-vocabulary LVIS removes the novel classes' annotations from the detector's training data.

Frequency groups follow LVIS: a class is rare (r) in 1-10 training images, common (c) in 11-100 and
frequent (f) in more; training instances are dealt out by per-class quotas so that all three groups
exist. A few classes are held out of the training split entirely: unseen combinations of seen attributes
(every attribute pair they use is seen in training). Besides the evaluation splits they appear only in
`pretrain`, have no training images and are therefore marked rare, as in the open-vocabulary LVIS protocol where the
novel classes are the rare ones. Evaluation splits draw classes uniformly, so every class is scored.

Layout written under `out_dir`: `{split}.json` (LVIS v1 annotations plus `heldout_category_ids` and
`train_category_ids`), `images/{split}/*.png` (`file_name` is relative to the JSON's folder), and
`manifest.json` (settings, class lists, file paths).

Train, val and test also get `qa_{split}.json`: one region-QA record per image (see `question_record` in
`regionspot.demo.descriptions`), its boxes every object's in annotation order. The questions draw from a
stream of each image's own seed that nothing else draws from, so asking them leaves every other file as it was.
"""

from __future__ import annotations

import argparse
import itertools
import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw
from pycocotools import mask as mask_utils
from tqdm.auto import tqdm

from regionspot.boxes import xywh_to_xyxy
from regionspot.demo.descriptions import DrawnObject, RegionFacts, ask_questions, describe_objects, question_record
from regionspot.demo.parallel import map_in_processes
from regionspot.images import load_image

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (215, 40, 40),
    "green": (40, 175, 60),
    "blue": (45, 85, 215),
    "yellow": (230, 205, 40),
}
TEXTURES = ("solid", "striped", "dotted")
SHAPES = ("circle", "square", "triangle")
# Clutter is drawn in colours no class uses, so it is never a missed object.
CLUTTER_COLOURS = ((20, 20, 20), (240, 240, 240), (120, 120, 120), (120, 80, 50))
SPLITS = ("train", "val", "test", "pretrain")
QUESTION_SPLITS = ("train", "val", "test")  # the splits with region questions (the stand-ins never read them)
# 2: the pretrain split; shapes upright unless `rotation` says otherwise; 3: captions; 4: QA; 5: held-out classes
# in the pretrain split
GENERATOR_VERSION = 5
_QUESTION_STREAM = 1  # the child of an image's seed that its questions draw from (nothing else spawns from it)

RARE_MAX_IMAGES = 10  # LVIS: rare = 1-10 training images, common = 11-100, frequent = more
COMMON_MAX_IMAGES = 100
_RARE_QUOTA = (2, 9)  # instance quotas drawn per class, [low, high)
_COMMON_QUOTA = (16, 70)
_MIN_VISIBLE = 0.5  # an object keeps at least half of its pixels visible
_PLACEMENT_TRIES = 20


@dataclass(frozen=True)
class SyntheticClass:
    id: int
    colour: str
    texture: str
    shape: str

    @property
    def name(self) -> str:
        return f"{self.colour} {self.texture} {self.shape}"

    @property
    def attributes(self) -> tuple[str, str, str]:
        return (self.colour, self.texture, self.shape)


@dataclass(frozen=True)
class GeneratedDataset:
    """Where `generate_dataset` wrote things."""

    root: Path
    annotation_files: dict[str, Path]  # split -> LVIS json
    manifest: Path
    question_files: dict[str, Path] = field(default_factory=dict)  # split -> region-QA json (train, val, test)


def make_classes(
    colours: Sequence[str] = tuple(COLOURS), textures: Sequence[str] = TEXTURES, shapes: Sequence[str] = SHAPES
) -> list[SyntheticClass]:
    """All colour x texture x shape combinations, ids from 1."""
    unknown = [c for c in colours if c not in COLOURS] + [t for t in textures if t not in TEXTURES]
    unknown += [s for s in shapes if s not in SHAPES]
    if unknown:
        raise ValueError(f"unknown attribute(s) {unknown}; choose from {list(COLOURS)}, {TEXTURES}, {SHAPES}")
    combos = itertools.product(colours, textures, shapes)
    return [SyntheticClass(i, *combo) for i, combo in enumerate(combos, start=1)]


def choose_heldout(classes: list[SyntheticClass], count: int, rng: np.random.Generator) -> list[SyntheticClass]:
    """`count` classes whose every attribute pair stays covered by the remaining (training) classes."""
    heldout: list[SyntheticClass] = []
    for index in rng.permutation(len(classes)):
        if len(heldout) == count:
            break
        candidate = classes[index]
        remaining = [c for c in classes if c not in heldout and c != candidate]
        if _pairs(candidate) <= set().union(*(_pairs(c) for c in remaining)):
            heldout.append(candidate)
    if len(heldout) < count:
        raise ValueError(f"cannot hold out {count} classes and still see every attribute pair in training")
    return sorted(heldout, key=lambda c: c.id)


def _pairs(cls: SyntheticClass) -> set[tuple[int, str, str]]:
    attrs = cls.attributes
    return {(i, attrs[i], attrs[j]) for i, j in ((0, 1), (0, 2), (1, 2))}


def _instance_quotas(classes: list[SyntheticClass], total: int, rng: np.random.Generator) -> dict[int, int]:
    """Per-class training instance counts: ~20% of classes rare, ~40% common, the rest share what is left."""
    order = rng.permutation(len(classes))
    num_rare = max(1, round(0.2 * len(classes)))
    num_frequent = max(1, round(0.4 * len(classes)))
    rare, common = order[:num_rare], order[num_rare : len(classes) - num_frequent]
    frequent = order[len(classes) - num_frequent :]
    quotas = {classes[i].id: int(rng.integers(*_RARE_QUOTA)) for i in rare}
    quotas |= {classes[i].id: int(rng.integers(*_COMMON_QUOTA)) for i in common}
    left = total - sum(quotas.values())
    if left < len(frequent):
        raise ValueError(f"{total} training objects are too few for {len(classes)} classes; add training images")
    shares = np.full(len(frequent), left // len(frequent))
    shares[: left % len(frequent)] += 1
    quotas |= {classes[i].id: int(n) for i, n in zip(frequent, shares, strict=True)}
    return quotas


def _class_draws(
    split: str,
    counts: np.ndarray,
    train_classes: list[SyntheticClass],
    all_classes,
    rng: np.random.Generator,
    *,
    heldout_in_pretrain: bool,
) -> list[list[SyntheticClass]]:
    """The classes of each image: training by quotas (long tail), the other splits uniformly over all classes
    (pretraining over the training classes alone unless `heldout_in_pretrain`)."""
    if split == "pretrain" and not heldout_in_pretrain:
        return [[train_classes[i] for i in rng.integers(0, len(train_classes), size=n)] for n in counts]
    if split != "train":
        return [[all_classes[i] for i in rng.integers(0, len(all_classes), size=n)] for n in counts]
    quotas = _instance_quotas(train_classes, int(counts.sum()), rng)
    by_id = {c.id: c for c in train_classes}
    pool = [by_id[cid] for cid, n in quotas.items() for _ in range(n)]
    pool = [pool[i] for i in rng.permutation(len(pool))]
    bounds = np.concatenate([[0], np.cumsum(counts)])
    return [pool[bounds[i] : bounds[i + 1]] for i in range(len(counts))]


# ---------------------------------------------------------------------------------------------------- drawing


def _background(size: int, rng: np.random.Generator) -> np.ndarray:
    """Dull grey-ish colour, low-frequency blotches and pixel noise, (S, S, 3) float."""
    base = rng.uniform(80, 170) + rng.uniform(-15, 15, size=3)
    coarse = rng.uniform(-30, 30, size=(3, 4, 4)).astype(np.float32)
    blotch = [np.asarray(Image.fromarray(c, mode="F").resize((size, size), Image.BILINEAR)) for c in coarse]
    return base + np.stack(blotch, axis=-1) + rng.normal(0, 6, size=(size, size, 3))


def _shape_mask(
    shape: str, size: float, grid: tuple[np.ndarray, np.ndarray], rng: np.random.Generator, rotation: float
) -> np.ndarray:
    """A `shape` of about `size` px inside the image, turned by up to `rotation` degrees: an (S, S) bool mask."""
    yy, xx = grid
    extent = yy.shape[0]
    cx, cy = rng.uniform(size / 2, extent - size / 2, size=2)
    angle = np.deg2rad(rng.uniform(-rotation, rotation))
    u = (xx - cx) * np.cos(angle) + (yy - cy) * np.sin(angle)
    v = -(xx - cx) * np.sin(angle) + (yy - cy) * np.cos(angle)
    if shape == "circle":
        return u**2 + v**2 <= (size / 2) ** 2
    if shape == "square":
        half = size / (2 * np.sqrt(2))  # its diagonal fits `size` at any rotation
        return (np.abs(u) <= half) & (np.abs(v) <= half)
    radius = size / 2  # triangle: three half-planes around the centre
    inside = np.ones_like(u, dtype=bool)
    for k in range(3):
        theta = 2 * np.pi * k / 3
        inside &= u * np.cos(theta) + v * np.sin(theta) <= radius / 2
    return inside


def _texture(texture: str, colour: np.ndarray, grid: tuple[np.ndarray, np.ndarray], rng: np.random.Generator):
    """An (S, S, 3) fill: the colour, with darker stripes or dots."""
    yy, xx = grid
    fill = np.broadcast_to(colour, (*yy.shape, 3)).copy()
    if texture == "solid":
        return fill
    angle = rng.uniform(0, np.pi)
    u = xx * np.cos(angle) + yy * np.sin(angle)
    v = -xx * np.sin(angle) + yy * np.cos(angle)
    if texture == "striped":
        period = rng.uniform(5, 8)
        marks = (u / period) % 1.0 < 0.45
    else:
        spacing = rng.uniform(6, 8)
        radius = rng.uniform(1.4, 2.2)
        marks = ((u % spacing) - spacing / 2) ** 2 + ((v % spacing) - spacing / 2) ** 2 <= radius**2
    fill[marks] = colour * 0.3
    return fill


def _clutter(image: np.ndarray, owner: np.ndarray, rng: np.random.Generator, count: int) -> None:
    """Draw `count` lines, arcs and specks of non-class colours; their pixels belong to no object."""
    size = image.shape[0]
    layer = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(layer)
    colours = []
    for index in range(1, count + 1):
        kind = rng.integers(0, 3)
        x0, y0 = rng.uniform(0, size, size=2)
        x1, y1 = np.clip(np.array([x0, y0]) + rng.uniform(-40, 40, size=2), 0, size)
        if kind == 0:
            draw.line([(x0, y0), (x1, y1)], fill=index, width=int(rng.integers(1, 3)))
        elif kind == 1:
            box = [min(x0, x1), min(y0, y1), max(x0, x1) + 2, max(y0, y1) + 2]
            draw.arc(box, start=float(rng.uniform(0, 360)), end=float(rng.uniform(0, 360)), fill=index, width=1)
        else:
            radius = rng.uniform(1.5, 4)
            draw.ellipse([x0 - radius, y0 - radius, x0 + radius, y0 + radius], fill=index)
        colours.append(np.asarray(CLUTTER_COLOURS[rng.integers(0, len(CLUTTER_COLOURS))], dtype=np.float64))
    marks = np.asarray(layer)
    for index, colour in enumerate(colours, start=1):
        painted = marks == index
        image[painted] = colour
        owner[painted] = -1


def render_image(
    classes: Sequence[SyntheticClass],
    *,
    size: int,
    rng: np.random.Generator,
    object_size: tuple[float, float] = (0.18, 0.38),
    rotation: float = 0.0,
) -> tuple[np.ndarray, list[tuple[SyntheticClass, np.ndarray, str]]]:
    """Draw one image with one object per entry of `classes` (an object that finds no place is dropped).

    Returns:
        (S, S, 3) uint8 RGB, and (class, (S, S) bool visible mask, caption) per object kept, in drawing order.
    """
    grid = np.mgrid[0:size, 0:size].astype(np.float64)
    grid = (grid[0] + 0.5, grid[1] + 0.5)
    image = _background(size, rng)
    owner = np.full((size, size), -1, dtype=np.int64)
    _clutter(image, owner, rng, int(rng.integers(2, 6)))
    kept: list[tuple[SyntheticClass, np.ndarray]] = []
    for cls in classes:
        mask = _place(cls, kept, owner, grid, size, rng, object_size, rotation)
        if mask is None:
            continue
        colour = np.clip(np.asarray(COLOURS[cls.colour], dtype=np.float64) + rng.uniform(-20, 20, size=3), 0, 255)
        image[mask] = _texture(cls.texture, colour, grid, rng)[mask]
        owner[mask] = len(kept)
        kept.append((cls, mask))
    _clutter(image, owner, rng, int(rng.integers(0, 3)))
    image += rng.normal(0, 4, size=image.shape)
    drawn = [
        DrawnObject(colour=cls.colour, texture=cls.texture, shape=cls.shape, full=full, visible=owner == index)
        for index, (cls, full) in enumerate(kept)
    ]
    objects = zip((cls for cls, _ in kept), (d.visible for d in drawn), describe_objects(drawn), strict=True)
    return np.clip(image, 0, 255).astype(np.uint8), list(objects)


def _place(cls, kept, owner, grid, size, rng, object_size, rotation) -> np.ndarray | None:
    """A mask for `cls` that leaves every earlier object at least `_MIN_VISIBLE` visible, or None."""
    full_areas = [mask.sum() for _, mask in kept]
    for _ in range(_PLACEMENT_TRIES):
        mask = _shape_mask(cls.shape, float(rng.uniform(*object_size) * size), grid, rng, rotation)
        trial = np.where(mask, len(kept), owner)
        if all((trial == i).sum() >= _MIN_VISIBLE * area for i, area in enumerate(full_areas)):
            return mask
    return None


# ---------------------------------------------------------------------------------------------------- LVIS files


def _annotation(image_id: int, cls: SyntheticClass, mask: np.ndarray, caption: str) -> dict[str, Any]:
    """An LVIS annotation without its "id" (ids are dealt out in order once every image of a split is drawn)."""
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    bbox = [float(v) for v in mask_utils.toBbox(rle)]  # the visible mask's extent, xywh
    rle["counts"] = rle["counts"].decode("ascii")
    return {
        "image_id": image_id,
        "category_id": cls.id,
        "bbox": bbox,
        "area": int(mask.sum()),
        "segmentation": rle,
        "caption": caption,  # what the drawing shows of it (regionspot.demo.descriptions)
    }


def _write_split(split, draws, *, seeds, start_ids, workers, **settings) -> tuple[dict[str, Any], list[dict]]:
    """Render and save the split's images (in `workers` processes); return its images and annotations, and its
    region-QA records (none unless the split has questions)."""
    (settings["root"] / "images" / split).mkdir(parents=True, exist_ok=True)
    image_id, ann_id = start_ids
    tasks = zip(draws, seeds, range(image_id, image_id + len(draws)), strict=True)
    drawn = map_in_processes(partial(_draw_image, split=split, **settings), tasks, workers=workers)
    images, annotations, questions = [], [], []
    for image, objects, record in tqdm(drawn, total=len(draws), desc=f"drawing the {split} images", unit="img"):
        images.append(image)
        for ann in objects:
            annotations.append({"id": ann_id, **ann})
            ann_id += 1
        if record is not None:
            questions.append(record)
    return {"images": images, "annotations": annotations}, questions


def _draw_image(
    task, *, split, root, image_size, object_size, rotation, neg_fraction, all_ids, colours, questions_per_image
) -> tuple[dict[str, Any], list[dict[str, Any]], dict[str, Any] | None]:
    """Draw and save one image from its own seed (so that any number of workers draws the same files); return its
    LVIS image and annotations, and its region-QA record (None if its split has no questions)."""
    classes, seed, image_id = task
    rng = np.random.default_rng(seed)
    pixels, objects = render_image(classes, size=image_size, rng=rng, object_size=object_size, rotation=rotation)
    file_name = f"images/{split}/{image_id:06d}.png"
    # uncompressed: 2-3x faster to write and to read than at PNG's default level, for 1.4x the bytes (docs/demo.md)
    Image.fromarray(pixels).save(root / file_name, optimize=False, compress_level=0)
    present = {cls.id for cls, _, _ in objects}
    absent = [cid for cid in all_ids if cid not in present]
    negatives = sorted(cid for cid in absent if rng.random() < neg_fraction)
    image = {
        "id": image_id,
        "file_name": file_name,
        "width": image_size,
        "height": image_size,
        "neg_category_ids": negatives,
        "not_exhaustive_category_ids": [],  # every object drawn is annotated
    }
    annotations = [_annotation(image_id, cls, mask, caption) for cls, mask, caption in objects]
    if split not in QUESTION_SPLITS or questions_per_image == 0 or not objects:
        return image, annotations, None
    facts = [
        RegionFacts(*cls.attributes, box=tuple(xywh_to_xyxy(np.asarray(ann["bbox"])).tolist()), area=ann["area"])
        for (cls, _, _), ann in zip(objects, annotations, strict=True)
    ]
    asked = ask_questions(facts, colours=colours, width=image_size, turns=questions_per_image, rng=_question_rng(seed))
    return image, annotations, question_record(image["file_name"], (image_size, image_size), facts, asked)


def _question_rng(seed: np.random.SeedSequence) -> np.random.Generator:
    """An image's stream for its questions: the child `seed.spawn` would make, without spawning (which would
    change `seed`); nothing else draws from it, so asking questions changes no pixel and no annotation."""
    return np.random.default_rng(np.random.SeedSequence(seed.entropy, spawn_key=(*seed.spawn_key, _QUESTION_STREAM)))


def _categories(classes: list[SyntheticClass], train: dict[str, Any]) -> list[dict[str, Any]]:
    """LVIS categories with frequency, image and instance counts taken from the training split."""
    images: dict[int, set[int]] = {c.id: set() for c in classes}
    instances: Counter[int] = Counter()
    for ann in train["annotations"]:
        images[ann["category_id"]].add(ann["image_id"])
        instances[ann["category_id"]] += 1
    categories = []
    for cls in classes:
        count = len(images[cls.id])
        frequency = "r" if count <= RARE_MAX_IMAGES else "c" if count <= COMMON_MAX_IMAGES else "f"
        categories.append(
            {
                "id": cls.id,
                "name": cls.name,
                "attributes": list(cls.attributes),  # colour, texture, shape: lets text phrases be built per part
                "synonyms": [cls.name, f"{cls.colour} {cls.shape}"],
                "def": f"a {cls.shape} painted {cls.colour}, {_TEXTURE_WORDS[cls.texture]}",
                "frequency": frequency,
                "image_count": count,
                "instance_count": instances[cls.id],
            }
        )
    return categories


_TEXTURE_WORDS = {"solid": "in one flat colour", "striped": "with dark stripes", "dotted": "with dark dots"}


def generate_dataset(
    *,
    out_dir: str | Path,
    seed: int = 0,
    num_train: int = 1500,
    num_val: int = 200,
    num_test: int = 0,
    num_pretrain: int = 0,
    image_size: int = 128,
    num_heldout: int = 6,
    colours: Sequence[str] = tuple(COLOURS),
    textures: Sequence[str] = TEXTURES,
    shapes: Sequence[str] = SHAPES,
    objects_per_image: tuple[int, int] = (2, 6),
    object_size: tuple[float, float] = (0.18, 0.38),
    rotation: float = 0.0,
    neg_fraction: float = 0.5,
    questions_per_image: int = 6,
    heldout_in_pretrain: bool = True,
    workers: int = 1,
) -> GeneratedDataset:
    """Write the synthetic data set under `out_dir` (see the module docstring); the same arguments give the same files.

    Args:
        out_dir: folder to write into (created; existing files of the same names are replaced).
        seed: the one seed everything is drawn from.
        num_train, num_val, num_test, num_pretrain: images per split (a split with 0 images is not written).
        image_size: side of the square images in pixels.
        num_heldout: classes kept out of the training split.
        colours, textures, shapes: the attributes whose combinations are the classes.
        objects_per_image: inclusive range of objects drawn per image.
        object_size: range of an object's size (its circumscribed circle's diameter) as a fraction of the image side.
        rotation: each shape is turned by a uniform angle in [-rotation, rotation] degrees. Upright by default:
            tiny backbones fitted in minutes learn upright shapes well and turned ones poorly (docs/demo.md).
        neg_fraction: chance that a class absent from an image is listed in its `neg_category_ids`
            (verified absent); unlisted absent classes are not evaluated on that image, as in LVIS.
        questions_per_image: region questions asked about each image of train, val and test, written to
            `qa_{split}.json` (an image allowing fewer distinct ones gets fewer); 0 writes no such files.
        heldout_in_pretrain: whether the pretraining split draws the held-out classes too (open-vocabulary LVIS:
            CLIP was pretrained on web data that shows them); False keeps them out of every training file.
        workers: processes that draw the images (each image has its own seed: any number gives the same files).
    """
    settings = {
        "num_train": num_train, "num_val": num_val, "num_test": num_test, "num_pretrain": num_pretrain,
        "objects_per_image": list(objects_per_image), "object_size": list(object_size), "rotation": rotation,
        "neg_fraction": neg_fraction, "questions_per_image": questions_per_image,
        "heldout_in_pretrain": heldout_in_pretrain,
    }  # fmt: skip
    _check_settings(settings, image_size=image_size)
    root = Path(out_dir)
    root.mkdir(parents=True, exist_ok=True)
    design, *split_seeds = np.random.SeedSequence(seed).spawn(1 + len(SPLITS))
    classes = make_classes(colours, textures, shapes)
    heldout = choose_heldout(classes, num_heldout, np.random.default_rng(design))
    splits, questions = _draw_splits(
        settings, split_seeds, classes=classes, heldout=heldout, root=root, image_size=image_size,
        colours=list(colours), workers=workers,
    )  # fmt: skip
    return _write_files(root, splits, questions, classes=classes, heldout=heldout, seed=seed, settings=settings,
                        image_size=image_size)  # fmt: skip


def _check_settings(settings: dict[str, Any], *, image_size: int) -> None:
    """ValueError for the settings of `generate_dataset` (as its manifest records them) it cannot draw from."""
    if settings["num_train"] < 1 or min(settings[f"num_{split}"] for split in ("val", "test", "pretrain")) < 0:
        raise ValueError("need num_train >= 1 and num_val, num_test, num_pretrain >= 0")
    if not 0 <= settings["neg_fraction"] <= 1:
        raise ValueError(f"neg_fraction must be in [0, 1], got {settings['neg_fraction']}")
    low, high = settings["objects_per_image"]
    if not 1 <= low <= high:
        raise ValueError(f"objects_per_image must be (low, high) with 1 <= low <= high, got {(low, high)}")
    low, high = settings["object_size"]
    if not 0 < low <= high <= 1:
        raise ValueError(f"object_size must be (low, high) with 0 < low <= high <= 1 of the side, got {(low, high)}")
    if image_size < 32:
        raise ValueError(f"image_size must be at least 32 px, got {image_size}")
    if settings["questions_per_image"] < 0:
        raise ValueError(f"questions_per_image must be 0 or more, got {settings['questions_per_image']}")


def _draw_splits(
    settings: dict[str, Any],
    split_seeds: Sequence[np.random.SeedSequence],
    *,
    classes: list[SyntheticClass],
    heldout: list[SyntheticClass],
    **drawing: Any,
) -> tuple[dict[str, dict[str, Any]], dict[str, list[dict[str, Any]]]]:
    """Draw and write every split with images (in `SPLITS` order, ids running on across splits): each split's
    images and annotations, and its question records. `settings`: `generate_dataset`'s, as its manifest records
    them; `drawing`: the rest of what `_write_split` takes."""
    train_classes = [c for c in classes if c not in heldout]
    sizes = {split: settings[f"num_{split}"] for split in SPLITS}
    low, high = settings["objects_per_image"]
    drawing |= {name: settings[name] for name in ("rotation", "neg_fraction", "questions_per_image")}
    drawing |= {"object_size": tuple(settings["object_size"]), "all_ids": [c.id for c in classes]}
    splits: dict[str, dict[str, Any]] = {}
    questions: dict[str, list[dict[str, Any]]] = {}
    next_ids = (1, 1)
    for split, split_seed in zip(SPLITS, split_seeds, strict=True):
        if sizes[split] == 0:
            continue
        rng = np.random.default_rng(split_seed)
        counts = rng.integers(low, high + 1, size=sizes[split])
        draws = _class_draws(
            split, counts, train_classes, classes, rng, heldout_in_pretrain=settings["heldout_in_pretrain"]
        )
        splits[split], questions[split] = _write_split(
            split, draws, start_ids=next_ids, seeds=split_seed.spawn(sizes[split]), **drawing
        )
        last_ann = splits[split]["annotations"][-1]["id"] if splits[split]["annotations"] else next_ids[1] - 1
        next_ids = (splits[split]["images"][-1]["id"] + 1, last_ann + 1)
    return splits, questions


def _write_files(
    root: Path,
    splits: dict[str, dict[str, Any]],
    questions: dict[str, list[dict[str, Any]]],
    *,
    classes: list[SyntheticClass],
    heldout: list[SyntheticClass],
    seed: int,
    settings: dict[str, Any],
    image_size: int,
) -> GeneratedDataset:
    """Write each split's annotation file, the question files and the manifest."""
    info = {"description": "regionspot synthetic shapes", "version": GENERATOR_VERSION, "seed": seed}
    categories = _categories(classes, splits["train"])
    heldout_ids = [c.id for c in heldout]
    train_ids = [c.id for c in classes if c not in heldout]
    files = {}
    for split, data in splits.items():
        files[split] = root / f"{split}.json"
        payload = {"info": info, "categories": categories, **data}
        payload |= {"heldout_category_ids": heldout_ids, "train_category_ids": train_ids}
        files[split].write_text(json.dumps(payload))
    question_files = _write_question_files(root, questions)
    manifest = root / "manifest.json"
    manifest.write_text(
        json.dumps(
            {
                **info,
                "settings": settings,
                "image_size": image_size,
                "annotation_files": {split: path.name for split, path in files.items()},
                "question_files": {split: path.name for split, path in question_files.items()},
                "heldout_categories": [c.name for c in heldout],
                "heldout_category_ids": heldout_ids,
                "train_category_ids": train_ids,
                "frequency": {g: [c["name"] for c in categories if c["frequency"] == g] for g in "rcf"},
            },
            indent=2,
        )
    )
    return GeneratedDataset(root=root, annotation_files=files, manifest=manifest, question_files=question_files)


def _write_question_files(root: Path, questions: dict[str, list[dict[str, Any]]]) -> dict[str, Path]:
    """Write each split's region-QA records to `qa_{split}.json` (splits without any are not written)."""
    files = {}
    for split, records in questions.items():
        if records:
            files[split] = root / f"qa_{split}.json"
            files[split].write_text(json.dumps(records))
    return files


@dataclass
class AnnotatedImage:
    """One image of a split with its objects, ready for fitting or scoring."""

    image_id: int
    pixels: np.ndarray  # (H, W, 3) uint8 RGB
    boxes: np.ndarray  # (N, 4) float32 x1, y1, x2, y2 in pixels
    masks: np.ndarray  # (N, H, W) bool visible masks
    category_ids: np.ndarray  # (N,) int64


def load_split(ann_file: str | Path, *, exclude_category_ids: Sequence[int] = ()) -> list[AnnotatedImage]:
    """Read an LVIS-format split (images resolved next to the JSON) into memory; images with no objects are skipped.

    Raises ValueError if an annotation names a category in `exclude_category_ids` (e.g. held-out classes
    found in a training file), and FileNotFoundError naming a missing image.
    """
    from regionspot.data.coco import load_annotations

    ann_file = Path(ann_file)
    data = load_annotations(ann_file)
    banned = sorted({a["category_id"] for a in data["annotations"]} & set(exclude_category_ids))
    if banned:
        raise ValueError(f"{ann_file} annotates categories {banned[:10]} that must stay out of it (held-out classes)")
    by_image: dict[int, list[dict[str, Any]]] = {}
    for ann in data["annotations"]:
        by_image.setdefault(ann["image_id"], []).append(ann)
    examples = []
    for info in data["images"]:
        anns = by_image.get(info["id"])
        if not anns:
            continue
        path = ann_file.parent / info["file_name"]
        if not path.is_file():
            raise FileNotFoundError(f"image {info['id']} of {ann_file} not found: {path}")
        pixels = load_image(path)  # writable: torch warns on read-only arrays
        masks = np.stack([_decode_segmentation(a, pixels.shape[:2]) for a in anns])
        xywh = np.asarray([a["bbox"] for a in anns], dtype=np.float32)
        boxes = xywh_to_xyxy(xywh)
        category_ids = np.asarray([a["category_id"] for a in anns], dtype=np.int64)
        examples.append(AnnotatedImage(info["id"], pixels, boxes, masks, category_ids))
    return examples


def _decode_segmentation(ann: dict[str, Any], size: tuple[int, int]) -> np.ndarray:
    segm = ann.get("segmentation")
    if segm is None:
        raise ValueError(f"annotation {ann['id']} has no segmentation")
    height, width = size
    if isinstance(segm, list):
        rle = mask_utils.merge(mask_utils.frPyObjects(segm, height, width))
    elif isinstance(segm.get("counts"), list):
        rle = mask_utils.frPyObjects(segm, height, width)
    else:
        rle = segm
    return mask_utils.decode(rle).astype(bool)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", dest="out_dir", metavar="OUT", required=True, help="folder to write the data set into")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--num-train", type=int, default=1500)
    parser.add_argument("--num-val", type=int, default=200)
    parser.add_argument("--num-test", type=int, default=0)
    parser.add_argument("--num-pretrain", type=int, default=0, help="class-balanced images for the stand-ins")
    parser.add_argument(
        "--no-heldout-in-pretrain", action="store_false", dest="heldout_in_pretrain",
        help="keep the held-out classes out of the pretraining split",
    )  # fmt: skip
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument(
        "--object-size", type=float, nargs=2, default=(0.18, 0.38), metavar=("MIN", "MAX"),
        help="an object's size as a fraction of the image side (the demo draws 0.25 0.45)",
    )  # fmt: skip
    parser.add_argument(
        "--objects-per-image", type=int, nargs=2, default=(2, 6), metavar=("MIN", "MAX"),
        help="inclusive range of objects per image (the demo draws 2 4)",
    )  # fmt: skip
    parser.add_argument("--num-heldout", type=int, default=6)
    parser.add_argument("--questions-per-image", type=int, default=6, help="region questions per image (0: none)")
    parser.add_argument("--workers", type=int, default=1, help="processes drawing images (same files for any number)")
    options = vars(parser.parse_args(argv))  # its dests are generate_dataset's keywords
    for pair in ("object_size", "objects_per_image"):  # nargs=2 gives a list; the keyword is a (low, high) tuple
        options[pair] = tuple(options[pair])
    data = generate_dataset(**options)
    print(f"wrote {', '.join(str(p) for p in data.annotation_files.values())} and {data.manifest}")


if __name__ == "__main__":
    main()
