"""Mixing several data sets: one data set per batch, chosen by ratio; distinct samples on every rank.

The order is a pure function of (seed, batch number): batch n of the whole run is the same whether
the run was interrupted or not, so resuming at step n continues exactly where training stopped.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
from torch.utils.data import Dataset, Sampler

from regionspot.data.detection import DetectionDataset

SampleKey = tuple[int, int, int]  # (data set, index in it, position in that data set's sample stream)


class MixedDetectionDataset(Dataset):
    """Several `DetectionDataset`s behind one index of (data set, index, stream position) keys."""

    def __init__(self, datasets: Sequence[DetectionDataset], *, seed: int = 0) -> None:
        names = [d.name for d in datasets]
        if len(set(names)) != len(names):
            raise ValueError(f"data set names must be unique, got {names}")
        self.datasets = list(datasets)
        self.seed = seed

    @property
    def vocabularies(self) -> dict[str, list[str]]:
        return {d.name: d.vocabulary for d in self.datasets}

    def __len__(self) -> int:
        return sum(len(d) for d in self.datasets)

    def __getitem__(self, key: SampleKey) -> dict[str, Any]:
        dataset, index, position = key
        # The augmentation seed is tied to the sample's place in the stream, not to the worker that reads it.
        return self.datasets[dataset][(index, [self.seed, dataset, position])]


class MixedBatchSampler(Sampler[list[SampleKey]]):
    """Batches of `batch_size` keys for this rank; all ranks draw the same data set at each step.

    Step n draws data set d with probability ratio[d] / sum(ratios). Each data set is read as an endless
    stream of shuffled passes over it; step n takes the next `batch_size * num_replicas` samples of
    d's stream, and rank r takes its own slice of them.

    Args:
        dataset_sizes: number of images in each data set.
        ratios: sampling weight of each data set (RegionSpot: all equal, whatever the sizes).
        batch_size: images per batch on one rank.
        num_replicas, rank: the distributed world (1, 0 without DDP).
        seed: fixes the whole order.
        batches_per_epoch: length of an "epoch" on each rank; default: all images once over all ranks.
        start_batch: global step to begin at (a resumed run's step).
    """

    def __init__(
        self,
        *,
        dataset_sizes: Sequence[int],
        ratios: Sequence[float],
        batch_size: int,
        num_replicas: int = 1,
        rank: int = 0,
        seed: int = 0,
        batches_per_epoch: int | None = None,
        start_batch: int = 0,
    ) -> None:
        if len(dataset_sizes) != len(ratios) or not dataset_sizes:
            raise ValueError("give one ratio per data set, and at least one data set")
        if any(size < 1 for size in dataset_sizes) or any(r <= 0 for r in ratios):
            raise ValueError(f"data set sizes and ratios must be positive, got {dataset_sizes} and {ratios}")
        if batch_size < 1 or not 0 <= rank < num_replicas:
            raise ValueError(f"bad batch_size {batch_size} or rank {rank} of {num_replicas}")
        self.sizes = list(dataset_sizes)
        self.probs = np.asarray(ratios, dtype=np.float64) / float(sum(ratios))
        self.batch_size = batch_size
        self.num_replicas = num_replicas
        self.rank = rank
        self.seed = seed
        global_batch = batch_size * num_replicas
        self.batches_per_epoch = batches_per_epoch or max(1, math.ceil(sum(self.sizes) / global_batch))
        self._next_batch = start_batch
        self._passes: dict[tuple[int, int], np.ndarray] = {}

    def __len__(self) -> int:
        return self.batches_per_epoch

    def __iter__(self) -> Iterator[list[SampleKey]]:
        start = self._next_batch
        epoch = start // self.batches_per_epoch
        end = (epoch + 1) * self.batches_per_epoch
        self._next_batch = end  # the next epoch continues the stream, even if this one is cut short
        choices = self.dataset_choices(epoch)
        drawn = self._draws_before(epoch) + np.bincount(
            choices[: start - epoch * self.batches_per_epoch], minlength=len(self.sizes)
        )
        global_batch = self.batch_size * self.num_replicas
        for step in range(start, end):
            dataset = int(choices[step - epoch * self.batches_per_epoch])
            first = int(drawn[dataset]) * global_batch + self.rank * self.batch_size
            drawn[dataset] += 1
            yield [(dataset, self._index(dataset, p), p) for p in range(first, first + self.batch_size)]

    def dataset_choices(self, epoch: int) -> np.ndarray:
        """(batches_per_epoch,) the data set of each step of `epoch`."""
        rng = np.random.default_rng([self.seed, epoch])
        return rng.choice(len(self.sizes), size=self.batches_per_epoch, p=self.probs)

    def _draws_before(self, epoch: int) -> np.ndarray:
        counts = np.zeros(len(self.sizes), dtype=np.int64)
        for earlier in range(epoch):
            counts += np.bincount(self.dataset_choices(earlier), minlength=len(self.sizes))
        return counts

    def _index(self, dataset: int, position: int) -> int:
        size = self.sizes[dataset]
        pass_number, offset = divmod(position, size)
        key = (dataset, pass_number)
        if key not in self._passes:
            if len(self._passes) > 4 * len(self.sizes):
                self._passes.clear()
            self._passes[key] = np.random.default_rng([self.seed, dataset, pass_number]).permutation(size)
        return int(self._passes[key][offset])


# The fields only some data sets' samples have: (sample key, batch key).
_OPTIONAL_FIELDS = (
    ("captions", "captions"),
    ("region_keys", "region_keys"),
    ("conversation", "conversations"),
    ("question_types", "question_types"),
)


def collate_detections(samples: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Samples of one data set -> a batch of lists (images differ in size); skipped samples are counted.

    Returns a dict with "images" (B uint8 numpy (H, W, 3)), "boxes" (B (N_i, 4)), "labels" (B (N_i,)),
    "image_ids", "dataset" (the name) and "skipped" (reason -> count); for a caption data set also
    "captions" and "region_keys" (B lists of N_i strings); for a region-QA data set "conversations" (B lists of
    (question, answer) string pairs, image i's <regionK> naming boxes[i][K - 1]) and, where the set names them,
    "question_types" (B lists, one name per turn).
    """
    names = {s["dataset"] for s in samples}
    if len(names) != 1:
        raise ValueError(f"a batch must come from one data set, got {sorted(names)}")
    kept = [s for s in samples if "skipped" not in s]
    batch = {
        "images": [s["image"] for s in kept],
        "boxes": [s["boxes"] for s in kept],
        "labels": [s["labels"] for s in kept],
        "image_ids": [s["image_id"] for s in kept],
        "dataset": names.pop(),
        "skipped": dict(Counter(s["skipped"] for s in samples if "skipped" in s)),
    }
    for field, key in _OPTIONAL_FIELDS:
        if kept and field in kept[0]:  # one data set: its samples all have the field or none does
            batch[key] = [s[field] for s in kept]
    return batch


class ShardSampler(Sampler[int]):
    """Indices rank, rank + R, ... of a data set: every sample on exactly one rank (no padding, for evaluation)."""

    def __init__(self, size: int, *, num_replicas: int = 1, rank: int = 0) -> None:
        self.indices = list(range(rank, size, num_replicas))

    def __len__(self) -> int:
        return len(self.indices)

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)
