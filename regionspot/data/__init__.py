"""Detection data for training adapters: COCO/LVIS JSON or Hugging Face data sets, mixed by ratio."""

from regionspot.data.augment import AugmentConfig, augment
from regionspot.data.detection import (
    DatasetConfig,
    DetectionDataset,
    build_dataset,
    load_coco_detection,
    load_hf_detection,
)
from regionspot.data.sampling import MixedBatchSampler, MixedDetectionDataset, ShardSampler, collate_detections

__all__ = [
    "AugmentConfig",
    "DatasetConfig",
    "DetectionDataset",
    "MixedBatchSampler",
    "MixedDetectionDataset",
    "ShardSampler",
    "augment",
    "build_dataset",
    "collate_detections",
    "load_coco_detection",
    "load_hf_detection",
]
