"""What the app's buttons do: name regions, segment everything, caption regions, answer questions; then the
picture (`regionspot.visualize.draw_regions`) and the table shown for them. No Gradio here: plain values in and out.

One `Recognizer` serves every browser tab. The predictor holds one image at a time, so a lock keeps two requests
from interleaving, and an image already embedded is not embedded again (a second click costs only the decoder).
"""

from __future__ import annotations

import hashlib
import re
import threading
import warnings
from dataclasses import dataclass, field

import numpy as np
import torch
from PIL import Image
from torchvision.ops import masks_to_boxes

from regionspot.app.regions import InputError, Regions
from regionspot.boxes import clip_to_image
from regionspot.config import MaskGeneratorSettings
from regionspot.modeling.sam import NothingKeptWarning
from regionspot.predictor import RegionPredictions, RegionSpotPredictor
from regionspot.visualize import draw_named_regions, draw_regions

TABLE_HEADERS = ["region", "prompt", "box (x1, y1, x2, y2)", "top labels (score)", "SAM mask IoU", "mask px"]
CAPTION_HEADERS = ["region", "box (x1, y1, x2, y2)", "caption", "top label (score)"]
_TAG = re.compile(r"<region(\d+)>")


@dataclass
class Shown:
    """What the page shows for one request: a picture, table rows, and notes to raise as warnings."""

    picture: Image.Image
    rows: list[list]
    notes: list[str] = field(default_factory=list)


@dataclass
class Named:
    """N named regions, from one or more predictor calls: what the picture and the table are drawn from."""

    prompts: list[str]  # N "box" / "points" / "SAM" (segment everything)
    boxes: torch.Tensor  # (N, 4) xyxy pixels
    labels: list[list[str]]  # N top-k names
    scores: torch.Tensor  # (N, k)
    masks: torch.Tensor  # (N, H, W) bool
    mask_scores: torch.Tensor  # (N,)
    captions: list[str] | None = None


def parse_vocabulary(text: str) -> list[str]:
    """Class names typed separated by commas or new lines; blanks dropped, repeats kept once.

    Raises:
        InputError: for no name at all.
    """
    names = [name.strip() for name in re.split(r"[,\n]", text or "")]
    vocabulary = list(dict.fromkeys(name for name in names if name))
    if not vocabulary:
        raise InputError(
            "the vocabulary is empty: type the class names to choose from, separated by commas, or pick a list"
        )
    return vocabulary


class Recognizer:
    """The app's one predictor, shared by every request.

    Args:
        predictor: a predictor over a built model.
    """

    def __init__(self, predictor: RegionSpotPredictor) -> None:
        self.predictor = predictor
        self._lock = threading.Lock()
        self._image_key: tuple | None = None

    @property
    def has_captioner(self) -> bool:
        return self.predictor.model.caption_decoder is not None

    @property
    def has_vqa(self) -> bool:
        return self.predictor.model.vqa is not None

    def recognise(self, image: np.ndarray | None, regions: Regions, vocabulary: list[str], *, top_k: int = 3) -> Shown:
        """Name each region: its SAM mask and top labels drawn on the image, one table row each."""
        named = self._name(image, regions, vocabulary, top_k=top_k)
        return Shown(draw_named(image, named, vocabulary_size=len(vocabulary)), table_rows(named))

    def describe(self, image: np.ndarray | None, regions: Regions, vocabulary: list[str]) -> Shown:
        """Caption each region (and name it): the captions drawn under the names, one table row each."""
        if not self.has_captioner:
            raise InputError("this model has no captioner: serve a model whose config has a caption: section")
        named = self._name(image, regions, vocabulary, top_k=1, caption=True)
        return Shown(draw_named(image, named, vocabulary_size=len(vocabulary)), caption_rows(named))

    def segment_everything(
        self,
        image: np.ndarray | None,
        vocabulary: list[str],
        *,
        top_k: int = 3,
        points_per_side: int = MaskGeneratorSettings.points_per_side,
        pred_iou_thresh: float = MaskGeneratorSettings.pred_iou_thresh,
        stability_score_thresh: float = MaskGeneratorSettings.stability_score_thresh,
    ) -> Shown:
        """SAM's automatic masks, each named; the predictor's warning as a note instead when SAM keeps none at
        these thresholds."""
        with self._lock, warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", NothingKeptWarning)
            self._use(image)
            result = self.predictor.predict_everything(
                vocabulary=vocabulary, top_k=top_k, points_per_side=points_per_side, pred_iou_thresh=pred_iou_thresh,
                stability_score_thresh=stability_score_thresh,
            )  # fmt: skip
        if not len(result):
            notes = [str(w.message) for w in caught if issubclass(w.category, NothingKeptWarning)]
            return Shown(Image.fromarray(image), [], notes)
        named = _merge(image.shape[:2], [("SAM", result, None)])
        return Shown(draw_named(image, named, vocabulary_size=len(vocabulary), everything=True), table_rows(named))

    def ask(self, image: np.ndarray | None, regions: Regions, question: str) -> tuple[str, Image.Image]:
        """Answer a question about the boxes (`<region1>` is the first); returns the answer and the image with
        the boxes tagged as the question names them."""
        if not self.has_vqa:
            raise InputError("this model has no VQA head: serve a model whose config has a vqa: section")
        question = (question or "").strip()
        if not question:
            raise InputError("the question is empty: ask about a box, e.g. what is <region1>?")
        if not regions.boxes:
            raise InputError("questions are about boxes: draw or type at least one box (<region1> is the first)")
        named = [int(k) for k in _TAG.findall(question)]
        if not named:
            raise InputError("the question names no region: write <region1> for the first box, <region2> for the next")
        with self._lock:
            self._use(image)
            answer = self.predictor.ask(question, boxes=regions.boxes)
        tags = [f"<region{i}>" for i in range(1, len(regions.boxes) + 1)]
        return answer, draw_regions(image, boxes=regions.boxes, labels=tags, legend=False)

    def _name(
        self, image: np.ndarray | None, regions: Regions, vocabulary: list[str], *, top_k: int, caption: bool = False
    ) -> Named:
        if not len(regions):
            raise InputError("no region: draw a box or click a point on the image first")
        asked = {"vocabulary": vocabulary, "top_k": top_k, "caption": caption}
        calls = []
        with self._lock:
            self._use(image)
            if regions.boxes:
                calls.append(("box", self.predictor.predict(boxes=regions.boxes, **asked), None))
            if regions.points:
                points = {"points": [regions.points], "point_labels": [regions.point_labels]}
                calls.append(("points", self.predictor.predict(**points, **asked), regions.points))
        return _merge(image.shape[:2], calls)

    def _use(self, image: np.ndarray | None) -> None:
        """Set `image` on the predictor unless it is the one set already (the caller holds the lock)."""
        if image is None:
            raise InputError("no image: upload one or pick a sample first")
        key = (image.shape, hashlib.blake2b(np.ascontiguousarray(image).tobytes(), digest_size=16).digest())
        if key != self._image_key:
            self._image_key = None
            self.predictor.set_image(image)
            self._image_key = key


def draw_named(image: np.ndarray, named: Named, *, vocabulary_size: int, everything: bool = False) -> Image.Image:
    """The image with each region's SAM mask, box, top label and score (and caption), and a legend."""
    source = "SAM's automatic mask" if everything else "SAM's mask from the box or points"
    return draw_named_regions(image, named, vocabulary_size=vocabulary_size, mask_source=source)


def table_rows(named: Named) -> list[list]:
    """One row per region: number, prompt, box, its top labels with scores, SAM's IoU estimate, mask area."""
    return [
        [
            i + 1,
            named.prompts[i],
            _box_text(named.boxes[i]),
            ", ".join(
                f"{label} {score:.2f}" for label, score in zip(named.labels[i], named.scores[i].tolist(), strict=True)
            ),
            round(float(named.mask_scores[i]), 3),
            int(named.masks[i].sum()),
        ]
        for i in range(len(named.labels))
    ]


def caption_rows(named: Named) -> list[list]:
    """One row per region: number, box, caption, top label with its score."""
    return [
        [i + 1, _box_text(named.boxes[i]), named.captions[i], f"{named.labels[i][0]} {float(named.scores[i, 0]):.2f}"]
        for i in range(len(named.labels))
    ]


def _merge(size: tuple[int, int], calls: list[tuple[str, RegionPredictions, list | None]]) -> Named:
    """Predictions of several calls as one list of regions. A region of points has no box of its own: it is
    drawn with its mask's (the points' extent when the mask is empty)."""
    boxes = [
        result.boxes if points is None else _points_box(result.masks[0], points, size) for _, result, points in calls
    ]
    captions = [result.captions for _, result, _ in calls]
    return Named(
        prompts=[prompt for prompt, result, _ in calls for _ in range(len(result))],
        boxes=torch.cat([b.float().reshape(-1, 4) for b in boxes]),
        labels=[labels for _, result, _ in calls for labels in result.labels],
        scores=torch.cat([result.scores for _, result, _ in calls]),
        masks=torch.cat([result.masks.cpu() for _, result, _ in calls]),
        mask_scores=torch.cat([result.mask_scores for _, result, _ in calls]),
        captions=None if any(c is None for c in captions) else [c for part in captions for c in part],
    )


def _points_box(mask: torch.Tensor, points: list[list[float]], size: tuple[int, int]) -> torch.Tensor:
    if mask.any():
        box = masks_to_boxes(mask[None].cpu())[0] + torch.tensor([0, 0, 1, 1])  # pixel extent -> edges
    else:
        xy = torch.tensor(points, dtype=torch.float32)
        box = torch.cat([xy.min(0).values - 1, xy.max(0).values + 1])
    return clip_to_image(box, size)


def _box_text(box: torch.Tensor) -> str:
    return ", ".join(f"{v:g}" for v in box.round(decimals=1).tolist())
