"""What the app serves: which model (and how the page describes it), its vocabulary lists and sample images.

With no arguments the app serves the built-in demo's trained model when `python -m regionspot.demo` has left one
in `outputs/demo` (of the folder it runs from), else the tiny random backbones of the packaged `tiny` model config, and
says which on the page and in the log.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from regionspot.app import DEMO_DIR
from regionspot.boxes import xywh_to_xyxy
from regionspot.config import RegionSpotConfig
from regionspot.configs import resolve_config
from regionspot.data.coco import image_file_name, read_json
from regionspot.vocabulary import vocabulary_from_categories

TINY_CONFIG = resolve_config("tiny")
DEMO_MODEL = Path("train") / "adapter.yaml"  # the trained model's YAML, under the demo's folder
DEMO_SAMPLES = 3  # test images of the demo offered as samples, with their ground-truth boxes
# Photos scikit-image ships (no download), with words a user might try on them.
PHOTOS = {
    "astronaut (scikit-image)": "astronaut",
    "coffee (scikit-image)": "coffee",
    "chelsea the cat (scikit-image)": "chelsea",
    "rocket (scikit-image)": "rocket",
}
PHOTO_VOCABULARY = ["person", "face", "flag", "rocket", "spacesuit", "helmet", "cat", "cup", "saucer", "sky"]


@dataclass
class ModelChoice:
    """The model to serve and what the page says about it."""

    config: RegionSpotConfig
    path: Path  # the model YAML
    kind: str  # "demo", "tiny" or "given"
    summary: str  # one line for the log
    description: str  # a paragraph for the page (Markdown)
    demo_dir: Path | None = None  # the demo's folder, for its class names and test images


@dataclass
class Sample:
    """An image to pick, and the boxes to start with (a demo test image's ground truth; none for a photo)."""

    load: Callable[[], np.ndarray]
    boxes: list[list[float]] = field(default_factory=list)


def choose_model(config: str | Path | None, adapter: str | Path | None, *, demo_dir: Path = DEMO_DIR) -> ModelChoice:
    """The model YAML to serve: `config` (its adapter weights replaced by `adapter`), else the one beside
    `adapter`, else the demo's trained model under `demo_dir`, else the tiny random backbones.

    Raises:
        FileNotFoundError: for a missing file. ValueError: for an adapter without a model YAML to go with it.
    """
    if config is None and adapter is not None:
        beside = Path(adapter).with_name("adapter.yaml")
        if not beside.is_file():
            raise ValueError(
                f"--adapter {adapter} needs the model it was trained for: give --config MODEL.yaml too (a training "
                "run writes adapter.yaml beside adapter.safetensors)"
            )
        config = beside
    if config is not None:
        config = resolve_config(config)  # a path, or a packaged model config's name
        model = RegionSpotConfig.from_yaml(config)
        if adapter is not None:
            if not Path(adapter).is_file():
                raise FileNotFoundError(f"adapter weights not found: {adapter}")
            model.adapter.checkpoint = str(adapter)
        weights = f", adapter {model.adapter.checkpoint}" if model.adapter.checkpoint else ", untrained adapter"
        summary = f"the model of {config}{weights}"
        return ModelChoice(model, config, "given", summary, f"**Model:** {summary}.")
    demo_model = demo_dir / DEMO_MODEL
    if demo_model.is_file():
        summary = f"the built-in demo's trained model ({demo_model})"
        description = (
            f"**Model:** {summary}. Its SAM and CLIP are tiny stand-ins fitted on the demo's synthetic shapes "
            "(real weights cannot be downloaded here): it knows the demo's shape names and means little on photos. "
            "Try a demo test image from the samples."
        )
        return ModelChoice(RegionSpotConfig.from_yaml(demo_model), demo_model, "demo", summary, description, demo_dir)
    summary = f"tiny random backbones ({TINY_CONFIG.name}, untrained: the labels are meaningless)"
    description = (
        f"**Model:** {summary}. No trained model was found in {demo_model}; run `python -m regionspot.demo` for "
        "one, or start the app with `--config MODEL.yaml [--adapter ADAPTER.safetensors]`."
    )
    return ModelChoice(RegionSpotConfig.from_yaml(TINY_CONFIG), TINY_CONFIG, "tiny", summary, description)


def read_category_names(path: str | Path, *, style: str = "readable") -> list[str]:
    """The class names of a COCO/LVIS annotation file (its `categories`), or of a JSON list of such records,
    read as the model reads class names (`clip.class_names`).

    Raises:
        ValueError: for a file that is not JSON or holds no categories.
    """
    data = read_json(path, what="annotation file")
    categories = data.get("categories") if isinstance(data, dict) else data
    if not isinstance(categories, list) or not categories:
        raise ValueError(f"{Path(path).name} holds no categories: give a COCO or LVIS annotation file")
    return vocabulary_from_categories(categories, style=style)


@functools.cache
def coco_names() -> tuple[str, ...]:
    """COCO's 80 detection class names, from torchvision's weights metadata (no weights are loaded)."""
    from torchvision.models.detection import FasterRCNN_ResNet50_FPN_Weights

    return tuple(
        name
        for name in FasterRCNN_ResNet50_FPN_Weights.COCO_V1.meta["categories"]
        if name not in ("__background__", "N/A")
    )


def vocabulary_lists(choice: ModelChoice, category_files: Sequence[str | Path] = ()) -> dict[str, Callable[[], list]]:
    """Named vocabularies to pick from: COCO's, the demo's shapes (when serving the demo), and the categories of
    each annotation file given (e.g. LVIS's `lvis_v1_val.json` for its 1203 names). Each is read when picked."""
    style = choice.config.clip.class_names
    lists: dict[str, Callable[[], list]] = {"photo words (for the samples)": lambda: list(PHOTO_VOCABULARY)}
    if choice.demo_dir is not None and _demo_test_file(choice.demo_dir).is_file():
        lists["the demo's shapes"] = lambda: read_category_names(_demo_test_file(choice.demo_dir), style=style)
    lists["COCO (80 names)"] = lambda: list(coco_names())
    for path in category_files:
        lists[f"{Path(path).name} (its categories)"] = functools.partial(read_category_names, path, style=style)
    return lists


def default_vocabulary(choice: ModelChoice) -> list[str]:
    """The vocabulary the page starts with: the demo's shape names when serving the demo, else photo words."""
    if choice.kind == "demo" and _demo_test_file(choice.demo_dir).is_file():
        return read_category_names(_demo_test_file(choice.demo_dir), style=choice.config.clip.class_names)
    return list(PHOTO_VOCABULARY)


def samples(choice: ModelChoice) -> dict[str, Sample]:
    """Images to pick: the demo's first test images with their ground-truth boxes (when serving the demo), then
    scikit-image's photos."""
    picks: dict[str, Sample] = {}
    if choice.demo_dir is not None and _demo_test_file(choice.demo_dir).is_file():
        picks |= _demo_samples(_demo_test_file(choice.demo_dir))
    for name, function in PHOTOS.items():
        picks[name] = Sample(functools.partial(_photo, function))
    return picks


def _demo_test_file(demo_dir: Path) -> Path:
    return demo_dir / "data" / "test.json"


def _demo_samples(test_file: Path) -> dict[str, Sample]:
    from regionspot.transforms import load_image

    gt = read_json(test_file, what="the demo's test split")
    picks = {}
    for image in sorted(gt["images"], key=lambda img: img["id"])[:DEMO_SAMPLES]:
        boxes = [ann["bbox"] for ann in gt["annotations"] if ann["image_id"] == image["id"]]
        xyxy = xywh_to_xyxy(np.asarray(boxes, dtype=np.float64).reshape(-1, 4)).round(1).tolist()
        path = test_file.parent / image_file_name(image)
        picks[f"demo test image {image['id']} (its true boxes)"] = Sample(functools.partial(load_image, path), xyxy)
    return picks


def _photo(name: str) -> np.ndarray:
    from skimage import data

    return getattr(data, name)()
