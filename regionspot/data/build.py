"""The one factory of data sets: a `DatasetConfig` -> the `DetectionDataset` (or feature cache) it describes.

It sits above the format modules, which never import it: `detection` (COCO/LVIS JSON, Hugging Face tables)
is the base that `captions` and `region_qa` build on, so that the package's data modules form no import cycle.
"""

from __future__ import annotations

from regionspot.data.augment import AugmentConfig
from regionspot.data.captions import load_caption_file
from regionspot.data.detection import DatasetConfig, DetectionDataset, hf_table, load_coco_detection, load_hf_detection
from regionspot.data.region_qa import load_region_qa_dataset

__all__ = ["build_dataset"]


def build_dataset(
    name: str, config: DatasetConfig, *, augment_config: AugmentConfig | None = None, max_regions: int | None = None
) -> DetectionDataset:
    """The data set `config` describes: a COCO/LVIS JSON with its image folder, or a Hugging Face data set;
    with `config.captions`, a region-caption file (`regionspot.data.captions.load_caption_file`) or table; with
    `config.questions`, a region-QA file or table (`regionspot.data.region_qa`), whose items keep every box; with
    `config.features`, the data set's feature cache (`regionspot.data.feature_cache`), whose items hold the frozen
    outputs instead of the image."""
    if config.features is not None:
        # Imported here: the cache imports the model package, which reading images and JSON does not need.
        from regionspot.data.feature_cache import load_feature_cache

        return load_feature_cache(name, config.features, augment_config=augment_config, max_regions=max_regions)
    if config.questions:
        return load_region_qa_dataset(name, config, augment_config=augment_config)
    if config.ann_file is not None and config.captions:
        return load_caption_file(
            name, config.ann_file, config.image_dir, augment_config=augment_config, max_regions=max_regions
        )
    if config.ann_file is not None:
        return load_coco_detection(
            name, config.ann_file, config.image_dir, augment_config=augment_config, max_regions=max_regions
        )
    return load_hf_detection(
        name,
        hf_table(config),
        bbox_format=config.bbox_format,
        captions=config.captions,
        augment_config=augment_config,
        max_regions=max_regions,
    )
