"""A data set's frozen SAM and CLIP outputs on disk, in WebDataset tar shards: what `regionspot.extract` writes
and what training reads instead of images (`DatasetConfig.features`).

Layout of a cache folder:

    manifest.json           the backbone config and its digest, sha256 of each checkpoint file, the data set (name,
                            vocabulary, digest), shard size, dtype, what each entry holds; with `complete: true`
                            and the counts (images, boxes, skipped) once every shard is finished
    shard-000000.tar        a WebDataset shard: per image, `<key>.json` (image id, boxes, labels, ...) and
                            `<key>.safetensors` (region tokens, mask scores, and the CLIP map with --clip-maps);
                            the flipped view, with --flips, as a second entry `<key>_flip`
    shard-000000.json       the shard's record, written after the tar is whole: its sha256 and size, counts, and
                            each member's offset in the tar (training reads entries by offset, without a scan)

Shard k holds the images k * shard_size ... (k + 1) * shard_size - 1 of the data set, in its order, so a
training index is an image's place in the data set whether it comes from the cache or from the images. An image
the extractor could not read has an entry that says why (json only), and training skips it as it skips an
unreadable image file.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import tarfile
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch
from safetensors.torch import load as load_tensors
from torch.utils.data import Dataset

from regionspot.config import RegionSpotConfig
from regionspot.data.augment import AugmentConfig, mirror_left_right
from regionspot.data.coco import check_annotation_lists, drop_malformed, read_json
from regionspot.files import file_sha256
from regionspot.modeling.regionspot import FrozenFeatures

log = logging.getLogger(__name__)
FORMAT = "regionspot-feature-cache-v1"
MANIFEST = "manifest.json"
FLIP_SUFFIX = "_flip"
_EXTENSIONS = ("json", "safetensors")  # an entry's members, in the order WebDataset writes them
STORAGE_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
# What decides the frozen outputs, section by section (a checkpoint by its file name; its sha256 is in the manifest).
# Not here: prompt_batch_size (how many prompts per decoder call), the text side (templates, names, text cache).
_BACKBONE_FIELDS = {
    "sam": ("variant", "checkpoint", "multimask", "seed"),
    "clip": ("model_name", "checkpoint", "resize", "precision", "seed"),
}


def shard_name(index: int) -> str:
    return f"shard-{index:06d}.tar"


def entry_key(image_id: int | str, *, flipped: bool = False) -> str:
    """An entry's WebDataset key (the member names' stem): the image id, `_flip` for the mirrored view."""
    return f"{image_id}{FLIP_SUFFIX if flipped else ''}"


def backbone_fields(config: RegionSpotConfig) -> dict[str, Any]:
    """The fields of `config` that decide SAM's region tokens and CLIP's map; a checkpoint by its file name, a
    random backbone by its seed."""
    fields: dict[str, Any] = {}
    for section, names in _BACKBONE_FIELDS.items():
        values = {name: getattr(getattr(config, section), name) for name in names}
        if values["checkpoint"] is not None:
            values["checkpoint"] = Path(values["checkpoint"]).name
            values.pop("seed")  # the weights come from the file
        fields[section] = values
    return fields


def backbone_digest(config: RegionSpotConfig) -> str:
    """SHA-256 of `backbone_fields(config)`: a cache is read only by a model whose digest is the same."""
    return hashlib.sha256(json.dumps(backbone_fields(config), sort_keys=True).encode()).hexdigest()


def dataset_digest(config: Any) -> str:
    """SHA-256 of what a data set is: its annotation file's bytes and image folder, or its Hugging Face table
    (`config`: a `DatasetConfig`, or anything with its fields)."""
    source: dict[str, Any] = {"image_dir": config.image_dir, "captions": config.captions}
    if config.ann_file is not None:
        source["ann_sha256"] = file_sha256(config.ann_file)
    else:
        source.update(hf_path=config.hf_path, hf_split=config.hf_split, bbox_format=config.bbox_format)
    return hashlib.sha256(json.dumps(source, sort_keys=True).encode()).hexdigest()


def checkpoint_files(config: RegionSpotConfig) -> dict[str, dict[str, Any] | None]:
    """sha256 and size of the SAM and CLIP checkpoint files (None for random weights)."""
    files = {}
    for section in ("sam", "clip"):
        path = getattr(config, section).checkpoint
        files[section] = (
            None
            if path is None
            else {"path": str(path), "sha256": file_sha256(path), "bytes": Path(path).stat().st_size}
        )
    return files


def check_backbones(manifest: dict[str, Any], config: RegionSpotConfig, *, where: str | Path) -> None:
    """Raise ValueError, naming the cache and the fields that differ, unless `config`'s backbones made the cache."""
    if manifest.get("backbone_digest") == backbone_digest(config):
        return
    cached, wanted = manifest.get("backbones", {}), backbone_fields(config)
    differ = [
        f"{s}.{k}: cache {cached.get(s, {}).get(k)!r}, model {v!r}"
        for s, fields in wanted.items()
        for k, v in fields.items()
        if cached.get(s, {}).get(k) != v
    ]
    raise ValueError(
        f"feature cache {where} was extracted with other backbones than this model config's ({'; '.join(differ)}): "
        "its region tokens and CLIP maps are not this model's. Extract again with this config "
        "(python -m regionspot.extract --config ...), or train from the images"
    )


def read_manifest(folder: str | Path) -> dict[str, Any]:
    path = Path(folder) / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(f"no feature cache in {folder}: {MANIFEST} is missing (python -m regionspot.extract)")
    manifest = json.loads(path.read_text())
    if manifest.get("format") != FORMAT:
        raise ValueError(f"{path} is not a {FORMAT} manifest (format {manifest.get('format')!r})")
    return manifest


def finished_shard(folder: Path, index: int, *, verify: bool = True) -> dict[str, Any] | None:
    """Shard `index`'s record if the shard is whole (its tar's size and, with `verify`, its sha256 are the record's),
    else None: a shard a kill cut short, or one damaged since, is not data."""
    record_path = folder / shard_name(index).replace(".tar", ".json")
    tar_path = folder / shard_name(index)
    if not record_path.is_file() or not tar_path.is_file():
        return None
    try:
        record = json.loads(record_path.read_text())
    except json.JSONDecodeError:
        return None
    if tar_path.stat().st_size != record.get("bytes") or (verify and file_sha256(tar_path) != record.get("sha256")):
        return None
    return record


def member_offsets(tar_path: Path) -> dict[str, list[int]]:
    """{member name: [data offset, size]} of a tar file (the standard library's reader)."""
    with tarfile.open(tar_path) as tar:
        return {m.name: [m.offset_data, m.size] for m in tar.getmembers()}


def encode_entry(meta: dict[str, Any], tensors: dict[str, torch.Tensor] | None) -> dict[str, Any]:
    """One WebDataset sample: `__key__`, `json` and (unless the image was skipped) `safetensors`, as bytes."""
    from safetensors.torch import save as save_tensors

    sample = {"__key__": meta["key"], "json": json.dumps(meta).encode()}
    if tensors is not None:
        sample["safetensors"] = save_tensors({k: v.detach().cpu().contiguous() for k, v in tensors.items()})
    return sample


class FeatureCache:
    """Random access to a finished cache's entries by data set index (training's batches are a function of the
    step, so the entries are read by offset, not streamed in order).

    Args:
        folder: a cache folder whose manifest says `complete: true`.
    """

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self.manifest = read_manifest(self.folder)
        if not self.manifest.get("complete"):
            raise ValueError(
                f"feature cache {self.folder} is not finished (some shards are missing): run the same "
                "python -m regionspot.extract command again, which resumes where it stopped"
            )
        self.shard_size = int(self.manifest["shard_size"])
        self.offsets = [self._offsets(k) for k in range(int(self.manifest["shards"]))]

    def _offsets(self, index: int) -> np.ndarray:
        """(images, 4, 2) int64: where each image's json, safetensors, flipped json and flipped safetensors lie in
        shard `index` (offset, size; -1 where there is none). A numpy array, not the record's dict: data loader
        workers share it as it is (a dict of millions of members would be copied into each, refcount by refcount)."""
        path = self.folder / shard_name(index).replace(".tar", ".json")
        record = json.loads(path.read_text())
        if (self.folder / shard_name(index)).stat().st_size != record["bytes"]:
            raise ValueError(f"{self.folder / shard_name(index)} is not the size its record says: extract again")
        members, missing = record["members"], [-1, -1]
        return np.array(
            [[members.get(f"{key}{flip}.{ext}", missing) for flip in ("", FLIP_SUFFIX) for ext in _EXTENSIONS]
             for key in record["keys"]],
            dtype=np.int64,
        ).reshape(-1, 4, 2)  # fmt: skip

    def __len__(self) -> int:
        return int(self.manifest["counts"]["entries"])

    def entry(self, index: int, *, flipped: bool = False) -> tuple[dict[str, Any], dict[str, torch.Tensor] | None]:
        """(meta, tensors) of the `index`-th image of the data set (its mirrored view with `flipped`); tensors are
        None for an image the extractor skipped."""
        shard, place = divmod(index, self.shard_size)
        (json_at, tensors_at) = self.offsets[shard][place, 2 * flipped : 2 * flipped + 2]
        if json_at[0] < 0:
            raise KeyError(f"feature cache {self.folder} has no {'flipped ' if flipped else ''}entry of image {index}")
        with open(self.folder / shard_name(shard), "rb") as file:
            meta = json.loads(_read(file, json_at))
            tensors = None if "skipped" in meta else load_tensors(_read(file, tensors_at))
        return meta, tensors


def _read(file: io.BufferedReader, where: Sequence[int]) -> bytes:
    file.seek(int(where[0]))
    return file.read(int(where[1]))


class CachedDetectionDataset(Dataset):
    """A detection data set read from its feature cache: a sample holds the frozen outputs instead of the image.

    A sample is what `DetectionDataset` gives, with "image" None and "frozen" a `FrozenFeatures` (CPU, the cache's
    dtype) of its boxes; or {"skipped": reason, "dataset"} for an image the extractor could not use. Keyed by
    index or (index, seed) as `DetectionDataset`; the seed draws the flip (with `augment.flip_prob`, when the
    cache holds flipped views, drawn first as the image path draws it) and the `max_regions` subset. Resizing and
    cropping cannot apply: the pixels are gone.
    """

    def __init__(
        self,
        *,
        name: str,
        cache: FeatureCache,
        augment_config: AugmentConfig | None = None,
        max_regions: int | None = None,
    ) -> None:
        data = cache.manifest["dataset"]
        if not cache.manifest["clip_maps"]:
            raise ValueError(
                f"feature cache {cache.folder} holds SAM's region tokens only: training from a cache needs the CLIP "
                "maps too (extract with --clip-maps)"
            )
        if augment_config is not None and (augment_config.short_edges or augment_config.crop_prob > 0):
            log.warning("data set %s reads a feature cache: its resizes and crops cannot apply (flips can)", name)
        self.name = name
        self.cache = cache
        self.vocabulary = list(data["vocabulary"])
        self.category_ids = list(data["category_ids"])
        self.augment_config = augment_config
        self.max_regions = max_regions
        self.ground_truth = None

    def __len__(self) -> int:
        return len(self.cache)

    def __getitem__(self, key: int | tuple[int, Any]) -> dict[str, Any]:
        index, seed = key if isinstance(key, tuple) else (key, key)
        rng = np.random.default_rng(seed)
        flip_prob = self.augment_config.flip_prob if self.augment_config is not None else 0.0
        flipped = bool(rng.random() < flip_prob) and self.cache.manifest["flips"]
        meta, tensors = self.cache.entry(index, flipped=flipped)
        if tensors is None:
            return {"skipped": meta["skipped"], "dataset": self.name}
        keep = np.arange(len(meta["boxes"]))
        if self.max_regions is not None and len(keep) > self.max_regions:
            keep = np.sort(rng.choice(len(keep), self.max_regions, replace=False))
        frozen = FrozenFeatures(
            region_tokens=tensors["region_tokens"],
            mask_scores=tensors["mask_scores"].float(),
            clip_tokens=tensors["clip_tokens"],
            region_boxes=tensors["region_boxes"],
        ).select(keep)
        sample = {
            "image": None,
            "frozen": frozen,
            "boxes": torch.tensor(meta["boxes"], dtype=torch.float32).reshape(-1, 4)[keep],
            "labels": torch.tensor(meta["labels"], dtype=torch.int64)[keep],
            "image_id": meta["image_id"],
            "dataset": self.name,
        }
        for field in ("captions", "region_keys"):
            if field in meta:
                sample[field] = [meta[field][i] for i in keep]
        if flipped and "captions" in sample:
            sample["captions"] = [mirror_left_right(c) for c in sample["captions"]]
        return sample


def read_ground_truth(cache: FeatureCache, *, ann_file: str | Path | None = None) -> dict[str, Any]:
    """The COCO/LVIS ground truth of a cached data set, for validation: the annotation file it was extracted from
    (the manifest names it; `ann_file` where it has moved since), checked to be that very file (its sha256, through
    the manifest's data set digest), and read as the image path reads it.

    Raises:
        ValueError: if the cache was not extracted from a COCO/LVIS detection JSON, or the file is another one.
        FileNotFoundError: if the file is not there.
    """
    source = cache.manifest["dataset"]["source"]
    if source.get("ann_file") is None or source.get("captions") or source.get("questions"):
        raise ValueError(
            f"feature cache {cache.folder} was not extracted from a COCO/LVIS detection JSON (ann_file, no captions): "
            "validation from a cache scores against that file"
        )
    path = Path(ann_file if ann_file is not None else source["ann_file"])
    if not path.is_file():
        raise FileNotFoundError(
            f"{path}, the annotation file feature cache {cache.folder} was extracted from, is not there: give "
            "data.val.ann_file, where it is now"
        )
    if dataset_digest(SimpleNamespace(**{**source, "ann_file": str(path)})) != cache.manifest["dataset_digest"]:
        raise ValueError(
            f"{path} is not the annotation file feature cache {cache.folder} was extracted from (its sha256 differs): "
            "validate against that file, or extract the cache again"
        )
    data = read_json(path, what="annotation file")
    check_annotation_lists(data, source=str(path))
    return drop_malformed(data, Counter())


def load_feature_cache(
    name: str, folder: str | Path, *, augment_config: AugmentConfig | None = None, max_regions: int | None = None
) -> CachedDetectionDataset:
    return CachedDetectionDataset(
        name=name, cache=FeatureCache(folder), augment_config=augment_config, max_regions=max_regions
    )


def cached_frozen(batch: dict[str, Any], *, device: torch.device, dtype: torch.dtype) -> list[FrozenFeatures]:
    """A cached batch's frozen outputs on `device`, tokens and maps in `dtype` (the backbones' dtype of the run)."""
    return [f.to(device, dtype) for f in batch["frozen"]]


def collate_with_features(samples: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """`collate_detections`, plus "frozen" (B `FrozenFeatures`) when the samples come from a feature cache."""
    from regionspot.data.sampling import collate_detections

    batch = collate_detections(samples)
    kept = [s for s in samples if "skipped" not in s]
    if kept and "frozen" in kept[0]:
        batch["frozen"] = [s["frozen"] for s in kept]
    return batch
