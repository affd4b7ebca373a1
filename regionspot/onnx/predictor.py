"""`OnnxRegionPredictor`: `RegionSpotPredictor`'s `set_image` / `predict` / `predict_everything` / `predict_images`
(captions included) on the exported ONNX graphs, without torch. Questions (`ask`) are refused: the VQA head's LLM is
a Hugging Face (torch) model that the export leaves out.

Imports onnxruntime, numpy, Pillow, PyYAML and Hugging Face `tokenizers` only (`pip install regionspot[onnx]`); its
input checks are `regionspot.checks`, the torch predictor's own, so a bad input gets the same error from either.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

import numpy as np
import onnxruntime
from PIL import Image
from tokenizers import Tokenizer

from regionspot.checks import (
    CheckedPrompts,
    about_image,
    check_captioner,
    check_image_batch,
    check_integer,
    check_prompts,
    check_request,
    sam_input_shape,
    to_rgb_uint8,
)
from regionspot.config import MaskGeneratorSettings
from regionspot.extents import prompt_extents
from regionspot.onnx.caption import caption_vocabulary, greedy_caption_tokens
from regionspot.onnx.everything import generate_masks
from regionspot.predictions import RegionPredictions

# The manifest format `regionspot.onnx.export` writes. 2 (2026-12-08): decoder_tokens takes no mask input and shares
# the first block's image side across regions.
FORMAT = "regionspot-onnx-2"
_VOCABULARIES_KEPT = 8
_MASK_UPSCALE_CHUNK = 32  # as the torch predictor: SAM upsamples to its full input size first
# SAM's ONNX point labels (segment_anything.utils.onnx): -1 padding, 0/1 background/foreground, 2/3 box corners.
_PAD, _BOX_CORNERS = -1.0, (2.0, 3.0)


class OnnxRegionPredictor:
    """Names, and segments, any regions of one image against any vocabulary, with onnxruntime.

    Args:
        folder: what `regionspot-export onnx` wrote (manifest.json, the graphs, tokenizer.json).
        providers: onnxruntime execution providers (default: the CPU).
        threads: intra-op threads per graph (default: onnxruntime's choice).
        verify: check every file's SHA-256 against the manifest first (a deployment then knows what it runs).

    Raises:
        FileNotFoundError: for a missing manifest or file. ValueError: for a manifest of another format, or a file
            whose digest differs from the manifest's.
    """

    def __init__(
        self,
        folder: str | Path,
        *,
        providers: Sequence[str] | None = None,
        threads: int | None = None,
        verify: bool = True,
    ) -> None:
        self.folder = Path(folder)
        self.manifest = _read_manifest(self.folder, verify=verify)
        options = onnxruntime.SessionOptions()
        if threads is not None:
            options.intra_op_num_threads = threads
        providers = list(providers or ["CPUExecutionProvider"])
        self._sessions = {
            name: onnxruntime.InferenceSession(str(self.folder / entry["file"]), options, providers=providers)
            for name, entry in self.manifest["graphs"].items()
        }
        text = self.manifest["text"]
        self._tokenizer = Tokenizer.from_file(str(self.folder / text["tokenizer"]))
        caption = self.manifest.get("heads", {}).get("caption")
        self._captions = None if caption is None else caption_vocabulary(caption, self._tokenizer)
        self._vocabularies: OrderedDict[tuple[str, ...], np.ndarray] = OrderedDict()
        self._image: dict[str, Any] | None = None

    @property
    def providers(self) -> list[str]:
        """The execution providers onnxruntime runs the image graph on (the first that took it first)."""
        return self._sessions["image"].get_providers()

    @property
    def sam_size(self) -> int:
        return self.manifest["preprocessing"]["sam_size"]

    def set_image(self, image: Any) -> None:
        """Embed `image` once (the image graph); formats and errors as `RegionSpotPredictor.set_image`."""
        self._image = None  # a failed call leaves no stale image behind
        rgb = to_rgb_uint8(image)
        self._image = self.embed(rgb)

    def embed(self, rgb: np.ndarray) -> dict[str, Any]:
        """(H, W, 3) uint8 RGB -> the image graph's outputs and the sizes the prompts need (what `set_image` keeps;
        a server keeps these per image and hands them back with `use_embedding`)."""
        height, width = rgb.shape[:2]
        resized = sam_input_shape(height, width, self.sam_size)
        # SAM's ResizeLongestSide.apply_image: PIL's bilinear resize of the uint8 image
        sam_pixels = np.asarray(Image.fromarray(rgb).resize(resized[::-1], Image.BILINEAR))
        embedding, clip_tokens = self._sessions["image"].run(
            None,
            {"sam_pixels": sam_pixels.transpose(2, 0, 1)[None].copy(), "image": rgb.transpose(2, 0, 1)[None].copy()},
        )
        return {"sam": embedding, "clip": clip_tokens, "original_size": (height, width), "input_size": resized}

    def use_embedding(self, embedded: dict[str, Any]) -> None:
        """Make an image embedded earlier by `embed` the current one (no image graph run)."""
        self._image = embedded

    def predict(
        self,
        *,
        vocabulary: Sequence[str],
        boxes: Any = None,
        points: Any = None,
        point_labels: Any = None,
        masks: Any = None,
        top_k: int = 5,
        activation: str = "softmax",
        return_all_scores: bool = False,
        caption: bool = False,
        return_masks: bool = True,
    ) -> RegionPredictions:
        """As `RegionSpotPredictor.predict`, with numpy arrays out (class_ids int64, scores float32, masks bool).
        Captions are decoded greedily (the manifest's `heads.caption.decoding`), whatever beams the model was
        trained with.

        Raises:
            RuntimeError, TypeError, ValueError: as `RegionSpotPredictor.predict`; ValueError also for caption=True
                on an export made before the condition graph (export it again).
        """
        if self._image is None:
            raise RuntimeError("call set_image(image) before predict(...)")
        vocabulary = check_request(vocabulary, top_k, activation)
        self._check_captioner(caption)
        prompts = check_prompts(
            self._image["original_size"], boxes=boxes, points=points, point_labels=point_labels, masks=masks
        )
        mask_input = self._mask_input(prompts)
        tokens, scores, mask_logits = self._decode(prompts, mask_input, with_masks=return_masks)
        n, per_region = tokens.shape[:2]
        (features,) = self._sessions["adapter"].run(
            None, {"region_tokens": tokens.reshape(1, n * per_region, -1), "clip_tokens": self._image["clip"]}
        )
        features = features.reshape(n, per_region, -1)
        best = scores.argmax(axis=1)
        rows = np.arange(n)
        chosen = features[rows, best]
        _, softmax, sigmoid = self._sessions["score"].run(
            None, {"region_features": chosen, "class_embeddings": self.encode_vocabulary(vocabulary)}
        )
        probs = softmax if activation == "softmax" else sigmoid
        k = min(top_k, len(vocabulary))
        class_ids = np.argsort(-probs, axis=1, kind="stable")[:, :k]
        return RegionPredictions(
            labels=[[vocabulary[c] for c in row] for row in class_ids.tolist()],
            class_ids=class_ids,
            scores=np.take_along_axis(probs, class_ids, axis=1),
            masks=None if mask_logits is None else self._upscale(mask_logits[rows, best][:, None]),
            mask_scores=scores[rows, best],
            boxes=prompts.boxes,
            all_scores=probs if return_all_scores else None,
            captions=self._caption(features, tokens, scores, prompts, mask_input) if caption else None,
        )

    def predict_images(
        self,
        images: Sequence[Any],
        *,
        boxes: Sequence[Any],
        vocabulary: Sequence[str],
        top_k: int = 5,
        activation: str = "softmax",
        return_all_scores: bool = False,
        caption: bool = False,
        batch_size: int = 8,
    ) -> list[RegionPredictions]:
        """As `RegionSpotPredictor.predict_images`: the boxes of several images, the image `set_image` set left
        alone. The image graph takes one image at a time, so `batch_size` is checked but changes nothing here.

        Raises:
            TypeError, ValueError: as `RegionSpotPredictor.predict_images` (a refused image, or box of an image, is
                named: "image 3 (index 2): box 1 (index 0) has no area ..."); ValueError as `predict` for caption.
        """
        check_image_batch(images, boxes, batch_size)
        vocabulary = check_request(vocabulary, top_k, activation)
        self._check_captioner(caption)
        current, results = self._image, []
        try:
            for i, (image, image_boxes) in enumerate(zip(images, boxes, strict=True)):
                with about_image(i):
                    rgb = to_rgb_uint8(image)
                    check_prompts(rgb.shape[:2], boxes=image_boxes)  # before the costly image graph
                    self._image = self.embed(rgb)
                    prediction = self.predict(
                        vocabulary=vocabulary, boxes=image_boxes, top_k=top_k, activation=activation,
                        return_all_scores=return_all_scores, caption=caption,
                    )  # fmt: skip
                results.append(prediction)
        finally:
            self._image = current
        return results

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
        """As `RegionSpotPredictor.predict_everything`: SAM's automatic mask generator (in numpy,
        `regionspot.onnx.everything`, on the point_masks graph and the embedding `set_image` made), then every mask
        named from the box around it; its masks and `mask_scores` (SAM's predicted IoU, clipped to [0, 1]) are the
        generator's. None, with a `NothingKeptWarning`, when the generator keeps no mask.

        Raises:
            RuntimeError, TypeError, ValueError: as `predict`; ValueError also for points_per_side < 1, and for an
                export made before the point_masks graph (export it again).
        """
        if self._image is None:
            raise RuntimeError("call set_image(image) before predict_everything(...)")
        vocabulary = check_request(vocabulary, top_k, activation)
        check_integer(points_per_side, name="points_per_side")
        self._check_captioner(caption)
        if "point_masks" not in self._sessions:
            raise ValueError(f"{self.folder} has no point_masks graph (an older export): export the model again")
        kept = generate_masks(
            self._decode_points,
            image_size=self._image["original_size"],
            points_per_side=points_per_side,
            pred_iou_thresh=pred_iou_thresh,
            stability_score_thresh=stability_score_thresh,
            mask_threshold=self.manifest["preprocessing"]["mask_threshold"],
        )
        if len(kept.masks) == 0:
            return _no_regions(self._image["original_size"], len(vocabulary), top_k, return_all_scores, caption)
        result = self.predict(  # the generator's masks replace SAM's decoder's: tokens only, the faster decoding
            vocabulary=vocabulary, boxes=kept.boxes, top_k=top_k, activation=activation,
            return_all_scores=return_all_scores, caption=caption, return_masks=False,
        )  # fmt: skip
        return dataclasses.replace(result, masks=kept.masks, mask_scores=np.clip(kept.scores, 0, 1))

    def ask(self, *args: Any, **kwargs: Any) -> NoReturn:
        """Refused: answering questions needs the VQA head's LLM, a Hugging Face (torch) model that the export leaves
        out (the manifest's `not_exported`); `RegionSpotPredictor.ask` answers them (`regionspot-serve --config`).

        Raises:
            ValueError: always.
        """
        raise ValueError(
            "questions need the VQA head's LLM, a Hugging Face (torch) model the ONNX export leaves out: "
            "use RegionSpotPredictor.ask (regionspot-serve --config)"
        )

    def _decode_points(self, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(n, 2) points in the image's pixels, one region each -> (n, 3, H, W) mask logits and (n, 3) predicted
        IoUs (the point_masks graph; each point is followed by SAM's padding point, as its prompt encoder pads)."""
        (height, width), (new_h, new_w) = self._image["original_size"], self._image["input_size"]
        coords = np.zeros((len(points), 2, 2), np.float32)
        coords[:, 0] = points * np.array([new_w / width, new_h / height])
        labels = np.tile(np.array([1.0, _PAD], np.float32), (len(points), 1))
        return self._sessions["point_masks"].run(
            None,
            {
                "image_embedding": self._image["sam"],
                "point_coords": coords,
                "point_labels": labels,
                "input_size": np.array(self._image["input_size"], dtype=np.int64),
                "original_size": np.array(self._image["original_size"], dtype=np.int64),
            },
        )

    def encode_vocabulary(self, names: Sequence[str]) -> np.ndarray:
        """Class names -> (C, E) unit-norm float32 embeddings (the text graph; the last few vocabularies kept)."""
        key = tuple(names)
        if key not in self._vocabularies:
            text = self.manifest["text"]
            templates = text["templates"]
            per_call = max(1, text["text_batch_size"] // len(templates))
            self._vocabularies[key] = np.concatenate(
                [self._encode_names(list(names[i : i + per_call])) for i in range(0, len(names), per_call)]
            )
            while len(self._vocabularies) > _VOCABULARIES_KEPT:
                self._vocabularies.popitem(last=False)
        self._vocabularies.move_to_end(key)
        return self._vocabularies[key]

    def _encode_names(self, names: list[str]) -> np.ndarray:
        templates = self.manifest["text"]["templates"]
        prompts = [template.replace("{}", name) for name in names for template in templates]
        ids = np.array([e.ids for e in self._tokenizer.encode_batch(prompts)], dtype=np.int64)
        (embeddings,) = self._sessions["text"].run(None, {"text_tokens": ids.reshape(len(names), len(templates), -1)})
        return embeddings

    def _mask_input(self, prompts: CheckedPrompts) -> np.ndarray | None:
        """The mask prompts as SAM's (N, 1, 4e, 4e) mask-input logits (the mask_prompt graph), or None."""
        if prompts.masks is None:
            return None
        input_size = np.array(self._image["input_size"], dtype=np.int64)
        return self._sessions["mask_prompt"].run(None, {"masks": prompts.masks, "input_size": input_size})[0]

    def _decode(
        self, prompts: CheckedPrompts, mask_input: np.ndarray | None, *, with_masks: bool
    ) -> tuple[np.ndarray, ...]:
        """SAM's decoder over the regions, `prompt_batch_size` at a time: tokens (N, T, C), scores (N, T), and
        low-resolution mask logits (N, T, 4e, 4e) or None. Tokens only, regions prompted without masks take the
        decoder_tokens graph; with mask prompts the decoder graph runs and its masks are dropped, as in torch."""
        coords, labels = self._sam_points(prompts)
        inputs = {"image_embedding": self._image["sam"], "point_coords": coords, "point_labels": labels}
        if with_masks or mask_input is not None:
            session = self._sessions["decoder"]
            grid = self.manifest["preprocessing"]["mask_input_size"]
            inputs["has_mask_input"] = np.array([float(mask_input is not None)], np.float32)
            inputs["mask_input"] = mask_input if mask_input is not None else np.zeros((1, 1, *grid), np.float32)
        else:
            session = self._sessions["decoder_tokens"]
        per_region = {"point_coords", "point_labels"} | ({"mask_input"} if mask_input is not None else set())
        size = self.manifest["regions"]["prompt_batch_size"]
        parts = []
        for start in range(0, len(prompts), size):
            chunk = slice(start, start + size)
            parts.append(session.run(None, {k: v[chunk] if k in per_region else v for k, v in inputs.items()}))
        columns = [np.concatenate(column) for column in zip(*parts, strict=True)]
        return columns[0], columns[1], columns[2] if with_masks else None

    def _sam_points(self, prompts: CheckedPrompts) -> tuple[np.ndarray, np.ndarray]:
        """Points and box corners in SAM's input frame, labelled as SAM's ONNX decoder takes them: (N, P', 2) and
        (N, P'), the points first, then the box's two corners, or one padding point when there is no box (as SAM's
        prompt encoder pads); masks alone give no point at all."""
        boxes, points = self._in_sam_frame(prompts)
        n = len(prompts)
        coords = [np.zeros((n, 0, 2), np.float32)]
        labels = [np.zeros((n, 0), np.float32)]
        if points is not None:
            coords.append(points)
            labels.append(prompts.point_labels.astype(np.float32))
        if boxes is not None:
            coords.append(boxes.reshape(n, 2, 2))
            labels.append(np.tile(np.array(_BOX_CORNERS, np.float32), (n, 1)))
        elif prompts.points is not None:
            coords.append(np.zeros((n, 1, 2), np.float32))
            labels.append(np.full((n, 1), _PAD, np.float32))
        return np.concatenate(coords, axis=1), np.concatenate(labels, axis=1)

    def _in_sam_frame(self, prompts: CheckedPrompts) -> tuple[np.ndarray | None, np.ndarray | None]:
        """The boxes (N, 4) and points (N, P, 2), or None, in SAM's input frame (as `ResizeLongestSide` scales
        them: float32 times the float32 ratio of the sides)."""
        (height, width), (new_h, new_w) = self._image["original_size"], self._image["input_size"]
        scale = np.array([new_w / width, new_h / height], dtype=np.float32)
        boxes = None if prompts.boxes is None else (prompts.boxes.reshape(-1, 2, 2) * scale).reshape(-1, 4)
        points = None if prompts.points is None else prompts.points * scale
        return boxes, points

    def _check_captioner(self, caption: bool) -> None:
        check_captioner(caption, has_captioner=self._captions is not None)
        if caption and "condition" not in self._sessions:
            raise ValueError(f"{self.folder} has no condition graph (an older export): export the model again")

    def _caption(
        self,
        features: np.ndarray,
        tokens: np.ndarray,
        scores: np.ndarray,
        prompts: CheckedPrompts,
        mask_input: np.ndarray | None,
    ) -> list[str]:
        """A caption for each of N regions: its condition (the condition graph, of its features (N, T, E), SAM's
        tokens (N, T, C) and scores (N, T), and where its prompt puts it), decoded greedily to text."""
        boxes, points = self._in_sam_frame(prompts)
        extents = prompt_extents(
            self._image["input_size"], square_size=self.sam_size, boxes=boxes, points=points,
            point_labels=prompts.point_labels, mask_logits=mask_input,
        )  # fmt: skip
        (condition,) = self._sessions["condition"].run(
            None,
            {"region_features": features, "region_tokens": tokens, "mask_scores": scores, "region_boxes": extents},
        )
        head = self.manifest["heads"]["caption"]
        ids = greedy_caption_tokens(
            self._sessions["caption_step"], condition, bos_id=head["bos_id"], eos_id=head["eos_id"],
            max_length=head["max_length"],
        )  # fmt: skip
        return self._captions.decode(ids.tolist())

    def _upscale(self, mask_logits: np.ndarray) -> np.ndarray:
        """(N, 1, 4e, 4e) -> (N, H, W) bool at the image's size, a few regions at a time."""
        sizes = {
            "input_size": np.array(self._image["input_size"], dtype=np.int64),
            "original_size": np.array(self._image["original_size"], dtype=np.int64),
        }
        return np.concatenate(
            [
                self._sessions["masks"].run(None, {"mask_logits": mask_logits[i : i + _MASK_UPSCALE_CHUNK], **sizes})[0]
                for i in range(0, len(mask_logits), _MASK_UPSCALE_CHUNK)
            ]
        )


def _no_regions(
    size: tuple[int, int], num_classes: int, top_k: int, all_scores: bool, caption: bool
) -> RegionPredictions:
    k = min(top_k, num_classes)
    return RegionPredictions(
        labels=[],
        class_ids=np.zeros((0, k), np.int64),
        scores=np.zeros((0, k), np.float32),
        masks=np.zeros((0, *size), bool),
        mask_scores=np.zeros(0, np.float32),
        boxes=np.zeros((0, 4), np.float32),
        all_scores=np.zeros((0, num_classes), np.float32) if all_scores else None,
        captions=[] if caption else None,
    )


def _read_manifest(folder: Path, *, verify: bool) -> dict[str, Any]:
    path = folder / "manifest.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: give the folder `regionspot-export onnx --out` wrote")
    manifest = json.loads(path.read_text())
    if manifest.get("format") != FORMAT:
        raise ValueError(
            f"{path} is of format {manifest.get('format')!r}, this predictor reads {FORMAT!r}: export the model again "
            "with this version (regionspot-export onnx)"
        )
    if verify:
        files = [(e["file"], e["sha256"]) for e in manifest["graphs"].values()]
        for name, expected in [*files, (manifest["text"]["tokenizer"], manifest["text"]["tokenizer_sha256"])]:
            file = folder / name
            if not file.is_file():
                raise FileNotFoundError(f"{file} is missing: the export in {folder} is incomplete; export it again")
            if file_sha256(file) != expected:
                raise ValueError(f"{file} is not the file the manifest names (SHA-256 differs): export it again")
    return manifest


def file_sha256(path: Path) -> str:
    """SHA-256 of a file, read in 1 MiB blocks (the manifest's digests)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
