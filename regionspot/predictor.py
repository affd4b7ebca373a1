"""Stateful inference in SamPredictor's style: `set_image` once, then any number of `predict` calls.

Also `predict_everything` (SAM's automatic masks, each named) and `predict_images` (a list of images, batched).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image

from regionspot.checks import about_image, check_captioner, check_image_batch, check_integer, check_request
from regionspot.config import MaskGeneratorSettings
from regionspot.modeling.preprocess import PreparedImage
from regionspot.modeling.prompts import RegionPrompts
from regionspot.modeling.regionspot import FrozenFeatures, ImageEmbeddings, RegionSpot
from regionspot.modeling.sam import build_mask_generator, sam_everything
from regionspot.predictions import RegionPredictions
from regionspot.transforms import to_rgb_uint8


class RegionSpotPredictor:
    """Names, and segments, any regions of one image (or of a list of images) against any vocabulary.

    Args:
        model: a built RegionSpot (see `regionspot.build_regionspot`).
    """

    def __init__(self, model: RegionSpot) -> None:
        self.model = model.eval()
        self._image: ImageEmbeddings | None = None
        self._rgb: np.ndarray | None = None

    @torch.no_grad()
    def set_image(self, image: Image.Image | np.ndarray | torch.Tensor) -> None:
        """Embed `image` once with SAM and CLIP. See `to_rgb_uint8` for the accepted formats (a PIL image is
        turned upright by its EXIF orientation first; prompts are then in that upright frame).

        Raises:
            ValueError: for an image `to_rgb_uint8` refuses, or one too thin for SAM (a side that its resize to
                SAM's input would round to no pixel). A failed call leaves no image set.
        """
        self._image, self._rgb = None, None  # a failed call leaves no stale image behind
        rgb = to_rgb_uint8(image)
        self._image = self.model.embed_images([self.model.preprocessor(rgb)])
        self._rgb = rgb

    @torch.no_grad()
    def predict(
        self,
        *,
        vocabulary: Sequence[str],
        boxes: np.ndarray | torch.Tensor | None = None,
        points: np.ndarray | torch.Tensor | None = None,
        point_labels: np.ndarray | torch.Tensor | None = None,
        masks: np.ndarray | torch.Tensor | None = None,
        top_k: int = 5,
        activation: str = "softmax",
        return_all_scores: bool = False,
        caption: bool = False,
        return_masks: bool = True,
    ) -> RegionPredictions:
        """Recognise (and, with `caption`, describe) N regions given as prompts in the image's pixels.

        Args:
            vocabulary: C class names to choose from (a list; one string is refused, not split into letters).
            boxes: (N, 4) x1, y1, x2, y2; clipped to the image.
            points: (N, P, 2) x, y; point_labels: (N, P), 1 foreground / 0 background (default 1).
            masks: (N, H, W) binary masks.
            top_k: how many labels to return per region (at most C).
            activation: "softmax" over the vocabulary (RegionSpot's evaluation) or independent "sigmoid".
            return_all_scores: also return the (N, C) score matrix.
            caption: also describe each region in words (needs a model with a captioner: a `caption:` section).
            return_masks: also return SAM's masks; False (masks None) decodes tokens only, several times faster
                per box (benchmarks/bench_sam_decoder.py), with the same labels and scores.

        Returns:
            N predictions, one per region in the order given: labels and scores (N, min(top_k, C)), scores
            finite in [0, 1], masks (N, H, W) of the image set (or None).

        Raises:
            RuntimeError: before `set_image`. TypeError: for a vocabulary that is not a list of strings, a
                top_k that is not an integer, or prompts that are not numbers. ValueError: for an empty
                vocabulary, a blank or repeated name, top_k < 1, an unknown activation, caption without a
                captioner, or prompts `RegionPrompts.check` refuses (boxes are clipped to the image; one with no
                area left inside it, inverted, or NaN/infinite is refused, never dropped, and named as the app
                numbers boxes, from 1, with its index: "box 1 (index 0)").
        """
        if self._image is None:
            raise RuntimeError("call set_image(image) before predict(...)")
        vocabulary = check_request(vocabulary, top_k, activation)
        self._check_captioner(caption)
        image = self._image.images[0]
        prompts = RegionPrompts.check(
            image.original_size, boxes=boxes, points=points, point_labels=point_labels, masks=masks
        )
        frozen = self.model.frozen_features(self._image, [prompts], with_masks=return_masks)[0]
        return self._predictions(
            frozen, image if return_masks else None, prompts.clipped_boxes, vocabulary, top_k=top_k,
            activation=activation, all_scores=return_all_scores, caption=caption,
        )  # fmt: skip

    @torch.no_grad()
    def predict_images(
        self,
        images: Sequence[Image.Image | np.ndarray | torch.Tensor],
        *,
        boxes: Sequence[np.ndarray | torch.Tensor],
        vocabulary: Sequence[str],
        top_k: int = 5,
        activation: str = "softmax",
        return_all_scores: bool = False,
        caption: bool = False,
        batch_size: int = 8,
    ) -> list[RegionPredictions]:
        """Recognise the boxes of several images in batches: one SAM and CLIP pass per `batch_size` images,
        SAM's decoder over all their boxes together, one adapter pass. Leaves `set_image`'s image alone.

        Args:
            images: B images (any format `set_image` takes).
            boxes: B arrays (N_i, 4) of x1, y1, x2, y2 in that image's pixels.
            vocabulary, top_k, activation, return_all_scores, caption: as in `predict` (the captions of all the
                batch's regions are decoded together).
            batch_size: images embedded at once (bounds memory).

        Raises:
            TypeError: if images or boxes are not lists (one per image), or batch_size is not an integer; and as
                `predict`. ValueError: as `set_image` and `predict`, or for unequal counts of images and box sets.
                A refused image, or box of an image, is named: "image 3 (index 2): box 1 (index 0) has no area ...".
        """
        check_image_batch(images, boxes, batch_size)
        vocabulary = check_request(vocabulary, top_k, activation)
        self._check_captioner(caption)
        results: list[RegionPredictions] = []
        for start in range(0, len(images), batch_size):
            prepared, prompts = [], []
            for i in range(start, min(start + batch_size, len(images))):
                with about_image(i):
                    image = self.model.preprocessor(to_rgb_uint8(images[i]))
                    prompts.append(RegionPrompts.check(image.original_size, boxes=boxes[i]))
                prepared.append(image)
            frozen = self.model.frozen_features(prepared, prompts, with_masks=True)
            features = self.model.region_features(frozen)
            captions = self.model.caption_regions(frozen, features) if caption else [None] * len(frozen)
            results += [
                self._predictions(
                    f, image, p.clipped_boxes, vocabulary, features=x, top_k=top_k, activation=activation,
                    all_scores=return_all_scores, captions=c,
                )
                for f, x, image, p, c in zip(frozen, features, prepared, prompts, captions, strict=True)
            ]  # fmt: skip
        return results

    @torch.no_grad()
    def predict_everything(
        self,
        *,
        vocabulary: Sequence[str],
        top_k: int = 5,
        activation: str = "softmax",
        return_all_scores: bool = False,
        caption: bool = False,
        points_per_side: int = MaskGeneratorSettings.points_per_side,
        pred_iou_thresh: float = MaskGeneratorSettings.pred_iou_thresh,
        stability_score_thresh: float = MaskGeneratorSettings.stability_score_thresh,
    ) -> RegionPredictions:
        """Segment everything in the image with SAM's automatic mask generator, then name every mask.

        The masks, and their `mask_scores` (SAM's predicted IoU), are the generator's; each region is
        recognised from the box around its mask, as `evaluate.py --source sam` does. The generator embeds
        the image with SAM once more (its own pass over its point grid).

        Args:
            vocabulary, top_k, activation, return_all_scores, caption: as in `predict`.
            points_per_side, pred_iou_thresh, stability_score_thresh: SamAutomaticMaskGenerator's settings
                (`MaskGeneratorSettings`: its published defaults).

        Returns:
            As `predict`, one region per mask kept; none, with a `NothingKeptWarning` that names the thresholds and
            the best scores SAM gave, when the generator keeps no mask.

        Raises:
            RuntimeError, TypeError, ValueError: as `predict`; ValueError also for points_per_side < 1.
        """
        if self._image is None:
            raise RuntimeError("call set_image(image) before predict_everything(...)")
        vocabulary = check_request(vocabulary, top_k, activation)
        check_integer(points_per_side, name="points_per_side")
        self._check_captioner(caption)
        settings = MaskGeneratorSettings(
            points_per_side=points_per_side,
            pred_iou_thresh=pred_iou_thresh,
            stability_score_thresh=stability_score_thresh,
        )
        generator = build_mask_generator(self.model.sam.sam, settings)
        boxes, objectness, masks = sam_everything(generator, self._rgb)
        if len(boxes) == 0:
            return _no_regions(self._rgb.shape[:2], len(vocabulary), top_k, return_all_scores, caption)
        result = self.predict(  # the generator's masks replace SAM's decoder's: tokens only, the faster decoding
            vocabulary=vocabulary, boxes=boxes, top_k=top_k, activation=activation, return_all_scores=return_all_scores,
            caption=caption, return_masks=False,
        )  # fmt: skip
        return dataclasses.replace(result, masks=masks, mask_scores=objectness)

    def _predictions(
        self,
        frozen: FrozenFeatures,
        image: PreparedImage | None,
        clipped: torch.Tensor | None,
        vocabulary: list[str],
        *,
        features: torch.Tensor | None = None,
        top_k: int,
        activation: str,
        all_scores: bool,
        caption: bool = False,
        captions: list[str] | None = None,
    ) -> RegionPredictions:
        """One image's predictions (masks upscaled to `image`, none without it); its captions are decoded here when
        `caption` and not already given."""
        scored = self.model.score_regions(
            frozen, text_embeddings=self.model.clip.encode_vocabulary(vocabulary), features=features,
            activation=activation, image=image,
        )  # fmt: skip
        if caption and captions is None:
            captions = self.model.caption_regions([frozen], None if features is None else [features])[0]
        probs = scored.probs.cpu()
        scores, class_ids = probs.topk(min(top_k, len(vocabulary)), dim=-1)
        return RegionPredictions(
            labels=[[vocabulary[c] for c in row] for row in class_ids.tolist()],
            class_ids=class_ids,
            scores=scores,
            masks=scored.masks,
            mask_scores=scored.mask_scores.cpu(),
            boxes=clipped,
            all_scores=probs if all_scores else None,
            captions=captions,
        )

    @torch.no_grad()
    def ask(
        self,
        question: str | Sequence[str],
        *,
        boxes: np.ndarray | torch.Tensor,
        history: Sequence[tuple[str, str]] = (),
        max_new_tokens: int | None = None,
        do_sample: bool = False,
        temperature: float = 1.0,
        top_p: float = 1.0,
    ) -> str | list[str]:
        """Answer a question about regions of the image set: "what is <region1> holding?", `<regionK>` being
        boxes[K - 1]. Several questions (a list) about the same boxes are answered together.

        Args:
            question: one question, or a list of them.
            boxes: (N, 4) x1, y1, x2, y2 in the image's pixels (clipped to it), the regions the tags name.
            history: earlier (question, answer) turns of the conversation, read before each question.
            max_new_tokens, do_sample, temperature, top_p: the LLM's generation (greedy by default).

        Returns:
            The answer (a list of answers for a list of questions).

        Raises:
            RuntimeError: before `set_image`. ValueError: a model without a VQA head (a `vqa:` section), an empty
                question, a tag naming a region not given (`<region3>` with two boxes), or boxes `RegionPrompts.check`
                refuses.
        """
        if self._image is None:
            raise RuntimeError("call set_image(image) before ask(...)")
        questions = [question] if isinstance(question, str) else list(question)
        if not questions:
            raise ValueError("ask needs a question")
        prompts = RegionPrompts.check(self._image.images[0].original_size, boxes=boxes)
        frozen = self.model.frozen_features(self._image, [prompts])[0]
        conversations = [[*history, (q, None)] for q in questions]
        answers = self.model.answer(
            [frozen] * len(questions), conversations, max_new_tokens=max_new_tokens, do_sample=do_sample,
            temperature=temperature, top_p=top_p,
        )  # fmt: skip
        return answers[0] if isinstance(question, str) else answers

    def _check_captioner(self, caption: bool) -> None:
        check_captioner(caption, has_captioner=self.model.caption_decoder is not None)


def _no_regions(
    size: tuple[int, int], num_classes: int, top_k: int, all_scores: bool, caption: bool
) -> RegionPredictions:
    k = min(top_k, num_classes)
    return RegionPredictions(
        labels=[],
        class_ids=torch.zeros(0, k, dtype=torch.long),
        scores=torch.zeros(0, k),
        masks=torch.zeros(0, *size, dtype=torch.bool),
        mask_scores=torch.zeros(0),
        boxes=torch.zeros(0, 4),
        all_scores=torch.zeros(0, num_classes) if all_scores else None,
        captions=[] if caption else None,
    )
