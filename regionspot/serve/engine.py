"""The server's model side: a predictor (torch or ONNX), an LRU of image embeddings, one thread that runs them.

A predictor holds one image at a time, so every model call runs on one worker thread, in arrival order. A request
for an image already embedded (by its pixels' hash, or the `image_id` an earlier answer gave) swaps that image's
embedding in and runs only the region, adapter and scoring graphs; concurrent requests for the same new image embed
it once (the first embeds it, the ones queued behind it find it cached).
"""

from __future__ import annotations

import logging
import threading
import time
import warnings
from collections import OrderedDict
from typing import Any

import numpy as np

from regionspot.everything import NothingKeptWarning
from regionspot.serve.requests import BadRequest, Query, encode_masks

log = logging.getLogger(__name__)


class Engine:
    """Answers `Query`s with a predictor, keeping the embeddings of the last `cache_size` images.

    Args:
        predictor: a `regionspot.onnx.OnnxRegionPredictor` or a `regionspot.RegionSpotPredictor`.
        cache_size: images whose embeddings are kept (each ~6.5 MB at the real sizes: SAM's 256x64x64 and CLIP-L's
            577x1024 float32), so memory stays bounded under a stream of distinct images.
    """

    def __init__(self, predictor: Any, *, cache_size: int = 32) -> None:
        if cache_size < 1:
            raise ValueError(f"cache_size must be at least 1, got {cache_size}")
        self.predictor = predictor
        self.cache_size = cache_size
        self._cache: OrderedDict[str, Any] = OrderedDict()
        self._lock = threading.Lock()  # one model call at a time, whichever thread calls
        self.counts = {"requests": 0, "embedded": 0, "reused": 0}

    @property
    def backend(self) -> str:
        return "onnx" if hasattr(self.predictor, "use_embedding") else "torch"

    def answer(self, query: Query) -> dict[str, Any]:
        """The JSON-ready answer to `query`.

        Raises:
            BadRequest: 404 for an unknown image_id; 400 for what the predictor refuses (its ValueError/TypeError).
        """
        with self._lock:
            start = time.perf_counter()
            self.counts["requests"] += 1
            cached = self._select_image(query)
            embedded = time.perf_counter()
            try:
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always", NothingKeptWarning)
                    result = self._predict(query)
                answers = self._ask(query) if query.question is not None else None
            except (TypeError, ValueError) as err:
                raise BadRequest(400, str(err)) from None
            done = time.perf_counter()
        notes = [str(w.message) for w in caught if issubclass(w.category, NothingKeptWarning)]
        return {
            "image_id": query.image_id,
            "cached": cached,
            "regions": _regions(result),
            **({"notes": notes} if notes else {}),
            **({"answers": answers} if answers is not None else {}),
            "timing_ms": {"embed": round(1000 * (embedded - start), 2), "regions": round(1000 * (done - embedded), 2)},
        }

    def _predict(self, query: Query) -> Any:
        if query.everything is None:
            return self.predictor.predict(vocabulary=query.vocabulary, **query.prompts, **query.options)
        return self.predictor.predict_everything(vocabulary=query.vocabulary, **query.everything, **query.options)

    def _select_image(self, query: Query) -> bool:
        """Make the query's image the predictor's, embedding it unless cached. Returns whether it was cached."""
        if query.image_id in self._cache:
            self._cache.move_to_end(query.image_id)
            self._restore(self._cache[query.image_id])
            self.counts["reused"] += 1
            return True
        if query.image is None:
            raise BadRequest(
                404, f"image_id {query.image_id!r} is not known here (never sent, or evicted): send the image"
            )
        try:
            self.predictor.set_image(query.image)
        except ValueError as err:
            raise BadRequest(400, str(err)) from None
        self._cache[query.image_id] = self._state()
        self.counts["embedded"] += 1
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        return False

    def _state(self) -> Any:
        # The torch predictor keeps its image in two attributes and has no public way to hand them over; these two
        # lines are the only place that knows (the ONNX predictor has `use_embedding` for this).
        if self.backend == "onnx":
            return self.predictor._image
        return self.predictor._image, self.predictor._rgb

    def _restore(self, state: Any) -> None:
        if self.backend == "onnx":
            self.predictor.use_embedding(state)
        else:
            self.predictor._image, self.predictor._rgb = state

    def _ask(self, query: Query) -> list[str]:
        boxes = query.prompts.get("boxes")
        if boxes is None:
            raise ValueError("a question needs boxes: <region1> is boxes[0]")
        return self.predictor.ask([query.question], boxes=boxes)


def _regions(result: Any) -> list[dict[str, Any]]:
    """A predictor's `RegionPredictions` -> one JSON object per region (masks as COCO RLE)."""
    masks = None if result.masks is None else encode_masks(np.asarray(result.masks))
    scores, mask_scores = np.asarray(result.scores), np.asarray(result.mask_scores)
    boxes = None if result.boxes is None else np.asarray(result.boxes)
    return [
        {
            "labels": result.labels[i],
            "scores": [round(float(s), 6) for s in scores[i]],
            "mask_score": round(float(mask_scores[i]), 6),
            **({} if boxes is None else {"box": [round(float(c), 3) for c in boxes[i]]}),
            **({} if masks is None else {"mask": masks[i]}),
            **({} if result.captions is None else {"caption": result.captions[i]}),
        }
        for i in range(len(result))
    ]
