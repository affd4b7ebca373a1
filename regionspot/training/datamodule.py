"""`RegionDataModule`: the training mixture and the validation set as Lightning data loaders."""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import lightning as L
from lightning.fabric.utilities.seed import pl_worker_init_function
from lightning.pytorch.accelerators import CUDAAccelerator
from torch.utils.data import DataLoader

from regionspot.data.augment import AugmentConfig
from regionspot.data.build import build_dataset
from regionspot.data.detection import DatasetConfig, DetectionDataset
from regionspot.data.feature_cache import CachedDetectionDataset, collate_with_features, read_ground_truth
from regionspot.data.sampling import MixedBatchSampler, MixedDetectionDataset, ShardSampler
from regionspot.data.toy import write_colour_boxes
from regionspot.data.workers import die_with_parent
from regionspot.modeling.preprocess import ImagePreprocessor

log = logging.getLogger(__name__)
TOY_IMAGES = {"train": 64, "val": 16}  # images of a toy set, by its file's stem (others: as many as "train")


class RegionDataModule(L.LightningDataModule):
    """Detection data sets mixed by ratio for training (one data set per batch) and one set for validation.

    Args:
        train: data sets by name, e.g. {"objects365": {ann_file: ..., image_dir: ..., ratio: 1.0}}.
        val: the validation set (COCO/LVIS-format JSON, scored with LVIS-style AP), or None.
        val_name: the validation set's name (its vocabulary is looked up by it).
        batch_size: images per batch per device (RegionSpot: 2, on 8 GPUs).
        val_batch_size: images per validation batch per device.
        num_workers: data loader worker processes per device.
        augment: training augmentations.
        max_regions: at most this many boxes per training image (a random subset); None for all.
        seed: fixes the data order, the mixing and the augmentations.
        batches_per_epoch: steps per "epoch" per device; default: every training image once.
        pin_memory: batches in page-locked memory, so that their copies to the GPU overlap with its work;
            None (default): when the trainer runs on CUDA.

    Needs `Trainer(use_distributed_sampler=False)`: the batch sampler gives each rank its own samples.
    """

    def __init__(
        self,
        *,
        train: dict[str, DatasetConfig] | None = None,
        val: DatasetConfig | None = None,
        val_name: str = "val",
        batch_size: int = 2,
        val_batch_size: int = 2,
        num_workers: int = 4,
        augment: AugmentConfig | None = None,
        max_regions: int | None = 100,
        seed: int = 0,
        batches_per_epoch: int | None = None,
        pin_memory: bool | None = None,
    ) -> None:
        super().__init__()
        self.train_configs = {name: _as_config(c) for name, c in (train or {}).items()}
        self.val_config = None if val is None else _as_config(val)
        self.val_name = val_name
        self.batch_size = batch_size
        self.val_batch_size = val_batch_size
        self.num_workers = num_workers
        self.augment = augment if augment is not None else AugmentConfig()
        self.max_regions = max_regions
        self.seed = seed
        self.batches_per_epoch = batches_per_epoch
        self.pin_memory = pin_memory
        self.preprocessor: ImagePreprocessor | None = None
        self.train_set: MixedDetectionDataset | None = None
        self.val_set: DetectionDataset | None = None

    def prepare_data(self) -> None:
        """Draw the toy data sets that are not on disk yet (rank 0 only, before any rank reads them)."""
        configs = [*self.train_configs.values(), *([self.val_config] if self.val_config is not None else [])]
        for index, config in enumerate(configs):
            if config.toy and not Path(config.ann_file).is_file():
                ann_file = Path(config.ann_file)
                log.info("drawing the toy data set %s (first use)", ann_file)
                num_images = TOY_IMAGES.get(ann_file.stem, TOY_IMAGES["train"])
                write_colour_boxes(ann_file.parent, num_images=num_images, split=ann_file.stem, seed=index)

    def _augment_of(self, config: DatasetConfig) -> AugmentConfig:
        """data.augment, with the data set's own flip probability where it sets one."""
        if config.flip_prob is None:
            return self.augment
        return dataclasses.replace(self.augment, flip_prob=config.flip_prob)

    def setup(self, stage: str) -> None:
        if stage == "fit" and self.train_set is None:
            if not self.train_configs:
                raise ValueError("no training data: set data.train to {name: {ann_file: ..., image_dir: ...}}")
            datasets = [
                build_dataset(name, c, augment_config=self._augment_of(c), max_regions=self.max_regions)
                for name, c in self.train_configs.items()
            ]
            self.train_set = MixedDetectionDataset(datasets, seed=self.seed)
        if stage in ("fit", "validate") and self.val_config is not None and self.val_set is None:
            if self.val_config.features is None and self.val_config.ann_file is None:
                raise ValueError(
                    "data.val must be a COCO/LVIS-format JSON (ann_file + image_dir), or a feature cache of one: AP "
                    "needs its ground truth"
                )
            val_set = build_dataset(self.val_name, self.val_config)
            if isinstance(val_set, CachedDetectionDataset):  # scored against the JSON it was extracted from
                val_set.ground_truth = read_ground_truth(val_set.cache, ann_file=self.val_config.ann_file)
            self.val_set = val_set

    def prepare_images_with(self, preprocessor: ImagePreprocessor) -> None:
        """Resize the images for the backbones in the data-loader workers, so that the training process only moves
        them to its device (`RegionSpotModule.setup` hands over its model's preprocessor). Without workers the
        module prepares them itself, after its frozen-feature cache, where a hit needs no resizing at all."""
        self.preprocessor = preprocessor

    @property
    def vocabularies(self) -> dict[str, list[str]]:
        """Class names of every data set, by data set name."""
        found = dict(self.train_set.vocabularies) if self.train_set is not None else {}
        if self.val_set is not None:
            found[self.val_set.name] = self.val_set.vocabulary
        return found

    @property
    def feature_manifests(self) -> dict[str, dict]:
        """The manifests of the data sets read from a feature cache, training and validation, by cache folder (the
        module checks that its backbones made them)."""
        datasets = [*(self.train_set.datasets if self.train_set is not None else []), self.val_set]
        return {str(d.cache.folder): d.cache.manifest for d in datasets if isinstance(d, CachedDetectionDataset)}

    def _world(self) -> tuple[int, int, int]:
        """(rank, world size, batches already trained), from the trainer when there is one."""
        trainer = self.trainer
        if trainer is None:
            return 0, 1, 0
        return trainer.global_rank, trainer.world_size, trainer.global_step * trainer.accumulate_grad_batches

    def train_dataloader(self) -> DataLoader:
        if self.train_set is None:
            self.setup("fit")
        rank, world_size, done = self._world()
        sampler = MixedBatchSampler(
            dataset_sizes=[len(d) for d in self.train_set.datasets],
            ratios=[self.train_configs[d.name].ratio for d in self.train_set.datasets],
            batch_size=self.batch_size,
            num_replicas=world_size,
            rank=rank,
            seed=self.seed,
            batches_per_epoch=self.batches_per_epoch,
            start_batch=done,  # a resumed run continues the same sample stream
        )
        return self._loader(self.train_set, batch_sampler=sampler)

    def val_dataloader(self) -> DataLoader | list:
        if self.val_config is None:
            return []
        if self.val_set is None:
            self.setup("validate")
        rank, world_size, _ = self._world()
        sampler = ShardSampler(len(self.val_set), num_replicas=world_size, rank=rank)
        return self._loader(self.val_set, sampler=sampler, batch_size=self.val_batch_size)

    def _loader(self, dataset, **kwargs) -> DataLoader:
        in_workers = self.preprocessor is not None and self.num_workers > 0
        pin_memory = self.pin_memory
        if pin_memory is None:
            pin_memory = self.trainer is not None and isinstance(self.trainer.accelerator, CUDAAccelerator)
        return DataLoader(
            dataset,
            num_workers=self.num_workers,
            collate_fn=PreparingCollate(self.preprocessor) if in_workers else collate_with_features,
            pin_memory=pin_memory,
            persistent_workers=self.num_workers > 0,
            worker_init_fn=functools.partial(init_worker, os.getpid(), self._world()[0]),
            **kwargs,
        )


def init_worker(parent: int, rank: int, worker_id: int) -> None:
    """A loader worker's start: it dies with the trainer (`die_with_parent`), and is seeded as Lightning seeds the
    workers of a loader that has no `worker_init_fn` of its own (`seed_everything(workers=True)`, as LightningCLI)."""
    die_with_parent(parent, worker_id)
    if os.environ.get("PL_SEED_WORKERS") == "1":
        pl_worker_init_function(worker_id, rank=rank)


class PreparingCollate:
    """`collate_with_features`, then each image resized for the backbones (`ImagePreprocessor`), in the worker
    process that read the batch: "images" become `PreparedImage`s. Entries read from a feature cache have none."""

    def __init__(self, preprocessor: ImagePreprocessor) -> None:
        self.preprocessor = preprocessor

    def __call__(self, samples: list[dict]) -> dict:
        batch = collate_with_features(samples)
        if "frozen" not in batch:
            batch["images"] = [self.preprocessor(image) for image in batch["images"]]
        return batch


def reads_images(train: Mapping[str, Any] | None, val: Any | None) -> list[str]:
    """The data sets of a run that read images (and so need the image encoders): the training sets without a
    feature cache, by name, and "data.val" unless it has one. Each set is a `DatasetConfig`, or its fields as a
    mapping or namespace (as the command line parses them)."""
    readers = [name for name, config in (train or {}).items() if _field(config, "features") is None]
    return readers + (["data.val"] if val is not None and _field(val, "features") is None else [])


def _field(config: Any, name: str) -> Any:
    return config.get(name) if isinstance(config, Mapping) else getattr(config, name, None)


def _as_config(value: DatasetConfig | dict) -> DatasetConfig:
    return value if isinstance(value, DatasetConfig) else DatasetConfig(**value)
