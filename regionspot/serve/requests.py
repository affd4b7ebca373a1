"""Reading one HTTP request into a `Query`, or a `BadRequest` with its status and one line saying what is wrong.

Torch-free: the server of an ONNX export runs without torch. The checks of prompts and vocabularies themselves are
the predictors' (`regionspot.checks`); this module checks only what HTTP adds: JSON, base64, the image's size
before it is decoded, and the server's limits.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image

from regionspot.checks import to_rgb_uint8


class BadRequest(Exception):
    """A request the server refuses: `status` (4xx) and a one-line `message`."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass
class Limits:
    """What one request may ask of the server (each refusal is a 413 that names the limit)."""

    max_body_bytes: int = 64 << 20
    max_pixels: int = 40_000_000  # e.g. 8000 x 5000; SAM and CLIP see it resized to 1024 and 336 anyway
    max_regions: int = 1000
    max_names: int = 5000


@dataclass
class Query:
    """One request, parsed: an image (decoded, with its id) or the id of one sent before, prompts and options."""

    image: np.ndarray | None  # (H, W, 3) uint8, None when only image_id was given
    image_id: str
    vocabulary: Any
    prompts: dict[str, Any] = field(default_factory=dict)  # boxes, points, point_labels, masks: as given
    options: dict[str, Any] = field(default_factory=dict)  # top_k, activation, return_masks, caption
    question: str | None = None
    everything: dict[str, Any] | None = None  # predict_everything's generator settings, when asked to segment all


_OPTIONS = ("top_k", "activation", "return_masks", "caption")
_EVERYTHING = ("points_per_side", "pred_iou_thresh", "stability_score_thresh")
_KNOWN = {"image", "image_id", "vocabulary", "boxes", "points", "point_labels", "masks", "question", "everything",
          *_OPTIONS}  # fmt: skip


def parse_query(body: bytes, limits: Limits) -> Query:
    """The JSON body of POST /predict -> a `Query`.

    Body: {"image": base64 of an image file, or "image_id": from an earlier answer; "vocabulary": [names];
    "boxes": [[x1, y1, x2, y2], ...], "points": [[[x, y], ...], ...], "point_labels": [[1 | 0, ...], ...],
    "masks": [COCO RLE {"size": [H, W], "counts": str}, ...]; "top_k", "activation", "return_masks", "caption",
    "question"; or, in place of prompts, "everything": true or {"points_per_side", "pred_iou_thresh",
    "stability_score_thresh"} to segment everything (the predictor's `predict_everything`)}.

    Raises:
        BadRequest: 400 for malformed JSON, unknown fields, an undecodable image; 413 over a limit.
    """
    try:
        request = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise BadRequest(400, f"the body is not valid JSON: {err}") from None
    if not isinstance(request, dict):
        raise BadRequest(400, f"the body must be a JSON object, got {type(request).__name__}")
    unknown = sorted(set(request) - _KNOWN)
    if unknown:
        raise BadRequest(400, f"unknown fields {unknown}; known: {sorted(_KNOWN)}")
    if ("image" in request) == ("image_id" in request):
        raise BadRequest(
            400, "give exactly one of image (base64 of an image file) and image_id (from an earlier answer)"
        )
    _check_counts(request, limits)
    image, image_id = None, request.get("image_id")
    if "image" in request:
        image = decode_image(request["image"], limits)
        image_id = image_hash(image)
    elif not isinstance(image_id, str):
        raise BadRequest(400, f"image_id must be a string, got {type(image_id).__name__}")
    prompts = {k: request[k] for k in ("boxes", "points", "point_labels") if request.get(k) is not None}
    if request.get("masks") is not None:
        prompts["masks"] = _decode_masks(request["masks"])
    question = request.get("question")
    if question is not None and not isinstance(question, str):
        raise BadRequest(400, f"question must be a string, got {type(question).__name__}")
    options = {k: request[k] for k in _OPTIONS if k in request}
    everything = _everything(request, prompts)
    return Query(image, image_id, request.get("vocabulary"), prompts, options, question, everything)


def _everything(request: dict, prompts: dict) -> dict[str, Any] | None:
    """The request's "everything" settings ({} for true), or None; 400 with prompts, a question or return_masks."""
    value = request.get("everything", False)
    if value is False:
        return None
    if value is True:
        value = {}
    if not isinstance(value, dict) or set(value) - set(_EVERYTHING):
        raise BadRequest(400, f"everything must be true or an object with some of {list(_EVERYTHING)}, got {value!r}")
    clash = sorted(set(prompts) | {k for k in ("question", "return_masks") if k in request})
    if clash:
        raise BadRequest(400, f"everything finds its own regions: leave out {clash}")
    return value


def _check_counts(request: dict, limits: Limits) -> None:
    """413 for more regions or names than the limits, counted before anything is converted."""
    for name in ("boxes", "points", "masks"):
        value = request.get(name)
        if isinstance(value, list) and len(value) > limits.max_regions:
            raise BadRequest(413, f"{len(value)} {name}: this server takes at most {limits.max_regions} regions")
    vocabulary = request.get("vocabulary")
    if isinstance(vocabulary, list) and len(vocabulary) > limits.max_names:
        raise BadRequest(413, f"{len(vocabulary)} class names: this server takes at most {limits.max_names}")


def decode_image(data: Any, limits: Limits) -> np.ndarray:
    """Base64 of an image file -> (H, W, 3) uint8 RGB; its size is checked from the header, before decoding."""
    if not isinstance(data, str):
        raise BadRequest(400, f"image must be a base64 string of an image file, got {type(data).__name__}")
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError) as err:
        raise BadRequest(400, f"image is not valid base64: {err}") from None
    try:
        with Image.open(io.BytesIO(raw)) as image:
            width, height = image.size
            if width * height > limits.max_pixels:
                raise BadRequest(
                    413, f"the image is {width}x{height} = {width * height / 1e6:.1f} MP; this server takes at most "
                    f"{limits.max_pixels / 1e6:.1f} MP (resize it: the models see it at 1024 px anyway)",
                )  # fmt: skip
            return to_rgb_uint8(image)
    except Image.DecompressionBombError as err:
        raise BadRequest(413, f"the image is too large to decode: {err}") from None
    except (OSError, SyntaxError, ValueError) as err:
        raise BadRequest(400, f"image is not a decodable image file: {err}") from None


def image_hash(image: np.ndarray) -> str:
    """The image's id: SHA-256 of its pixels and shape (the same picture sent twice, in any file format, is one)."""
    digest = hashlib.sha256(repr(image.shape).encode())
    digest.update(np.ascontiguousarray(image).data)
    return digest.hexdigest()[:32]


def _decode_masks(masks: Any) -> np.ndarray:
    from pycocotools import mask as mask_utils  # only requests with mask prompts need it

    if not isinstance(masks, list) or not masks:
        raise BadRequest(400, "masks must be a non-empty list of COCO RLE objects {'size': [H, W], 'counts': str}")
    try:
        rles = [{"size": list(m["size"]), "counts": m["counts"].encode()} for m in masks]
        return mask_utils.decode(rles).transpose(2, 0, 1).astype(bool)
    except (KeyError, TypeError, AttributeError, ValueError) as err:
        raise BadRequest(400, f"masks must be COCO RLE objects {{'size': [H, W], 'counts': str}}: {err!r}") from None


def encode_masks(masks: np.ndarray) -> list[dict[str, Any]]:
    """(N, H, W) bool -> N COCO RLEs with string counts (JSON-ready)."""
    from pycocotools import mask as mask_utils

    if len(masks) == 0:
        return []
    rles = mask_utils.encode(np.asfortranarray(masks.transpose(1, 2, 0).astype(np.uint8)))
    return [{"size": [int(s) for s in r["size"]], "counts": r["counts"].decode()} for r in rles]
