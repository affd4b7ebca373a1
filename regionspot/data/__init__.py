"""Detection data: COCO/LVIS files (annotations, results) and training sets from them or from Hugging Face."""

from regionspot.data.augment import AugmentConfig, augment
from regionspot.data.build import build_dataset
from regionspot.data.coco import (
    check_annotations,
    image_file_name,
    is_lvis,
    load_annotations,
    load_proposals,
    read_json,
)
from regionspot.data.detection import DatasetConfig, DetectionDataset, load_coco_detection, load_hf_detection
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
    "check_annotations",
    "collate_detections",
    "image_file_name",
    "is_lvis",
    "load_annotations",
    "load_coco_detection",
    "load_hf_detection",
    "load_proposals",
    "read_json",
]
