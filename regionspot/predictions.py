"""What a predictor returns: one record for N regions, the same fields whichever predictor made it.

`RegionSpotPredictor` (torch) fills it with torch tensors, `regionspot.onnx.OnnxRegionPredictor` with numpy arrays;
this module imports neither torch nor onnxruntime.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeAlias

if TYPE_CHECKING:
    import numpy as np
    import torch

    Array: TypeAlias = torch.Tensor | np.ndarray
else:
    Array = Any


@dataclass
class RegionPredictions:
    """What a predictor's `predict` returns for N regions and a vocabulary of C names."""

    labels: list[list[str]]  # N lists of the top-k class names, best first
    class_ids: Array  # (N, k) indices into the vocabulary
    scores: Array  # (N, k) class probabilities (softmax over the vocabulary) or sigmoid scores
    masks: Array | None  # (N, H, W) bool, SAM's mask of each region; None when not asked for
    mask_scores: Array  # (N,) SAM's predicted IoU of that mask
    boxes: Array | None  # (N, 4) the input boxes clipped to the image, or None without boxes
    all_scores: Array | None = None  # (N, C), when asked for
    captions: list[str] | None = None  # N captions (the model's captioner), when asked for

    def __len__(self) -> int:
        return len(self.labels)

    def to_list(self) -> list[dict[str, Any]]:
        """One plain dict per region (labels, scores, mask, box)."""
        return [
            {
                "labels": self.labels[i],
                "scores": self.scores[i].tolist(),
                "mask": None if self.masks is None else self.masks[i],
                "box": None if self.boxes is None else self.boxes[i].tolist(),
                **({} if self.captions is None else {"caption": self.captions[i]}),
            }
            for i in range(len(self))
        ]
