"""Run the frozen backbones once over a detection data set and keep what they give, for training without them.
The command, `regionspot-extract` (regionspot.commands.extract), says how to run it.

Each image goes through the model's one frozen-feature step (`RegionSpot.frozen_features`: its one preprocessing,
the boxes as `RegionPrompts`, SAM and CLIP), the step training runs, and SAM's region tokens and mask scores of
its boxes (with --clip-maps, CLIP's token map; with --flips, the same for the mirrored image) are written to
WebDataset tar shards (`regionspot.data.feature_cache` describes the folder). Each process writes its own shards
(shard k on rank k mod world size); a shard is written to a temporary file, fsynced and renamed, then recorded
with its sha256. Run the same command again after a crash: finished shards are kept, a shard without its record
or whose bytes differ from it is done again. Unreadable images are skipped and counted, as in training.
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import math
import os
from collections import Counter
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from torch.utils.data import DataLoader, Dataset

from regionspot.build import build_regionspot
from regionspot.config import RegionSpotConfig
from regionspot.data.augment import hflip
from regionspot.data.build import build_dataset
from regionspot.data.detection import DatasetConfig, DetectionDataset
from regionspot.data.feature_cache import (
    FORMAT,
    MANIFEST,
    STORAGE_DTYPES,
    backbone_digest,
    backbone_fields,
    checkpoint_files,
    dataset_digest,
    encode_entry,
    entry_key,
    finished_shard,
    member_offsets,
    shard_name,
)
from regionspot.data.workers import die_with_parent
from regionspot.files import atomic_path, file_sha256, write_json_atomic
from regionspot.modeling.regionspot import RegionSpot
from regionspot.run_identity import listing_digest

log = logging.getLogger(__name__)
# `plan`'s settings: the command's options of the same names (its backbone_precision "auto" resolved by the device).
_SETTINGS = ("dtype", "backbone_precision", "clip_maps", "flips", "shard_size")
# What a rerun must agree on with the manifest already in the folder (else its shards would mix two extractions).
# The backbones' weights by content (a checkpoint replaced behind the same name), the images by a listing of names and
# sizes (`regionspot.run_identity.listing_digest`).
_PLAN_KEYS = ("backbone_digest", "checkpoint_sha256", "dataset_digest", "images_digest", *_SETTINGS)
_EXTRACTION_PRECISIONS = ("float32", "bfloat16")


def plan(
    *,
    model_config: RegionSpotConfig,
    data: DatasetConfig,
    dataset: DetectionDataset,
    clip_maps: bool,
    flips: bool,
    dtype: str,
    backbone_precision: str,
    shard_size: int,
) -> dict[str, Any]:
    """The manifest of an extraction before any shard is written (`complete` false, no counts)."""
    if dtype not in STORAGE_DTYPES:
        raise ValueError(f"dtype must be one of {sorted(STORAGE_DTYPES)}, got {dtype!r}")
    checkpoints = checkpoint_files(model_config)
    image_files = [record.source for record in dataset.records if isinstance(record.source, str)]
    return {
        "format": FORMAT,
        "backbone_digest": backbone_digest(model_config),
        "backbones": backbone_fields(model_config),
        "model_config": {"sam": vars(model_config.sam), "clip": vars(model_config.clip)},
        "checkpoints": checkpoints,
        "checkpoint_sha256": {section: file and file["sha256"] for section, file in checkpoints.items()},
        "dataset_digest": dataset_digest(data),
        "images_digest": listing_digest(image_files, data.image_dir or ".")["sha256"],
        "dataset": {
            "name": dataset.name,
            "source": vars(data),
            "images": len(dataset),
            "vocabulary": dataset.vocabulary,
            "category_ids": dataset.category_ids,
            "skipped_when_indexed": dict(dataset.skipped),
        },
        "dtype": dtype,
        "backbone_precision": backbone_precision,
        "clip_maps": clip_maps,
        "flips": flips,
        "shard_size": shard_size,
        "shards": math.ceil(len(dataset) / shard_size),
        "complete": False,
    }


def prepare(out: Path, manifest: dict[str, Any], *, restart: bool = False) -> None:
    """Write the plan to `out`, or check that the one there is the same extraction (a rerun resumes it). With
    `restart`, the shards and manifest of an earlier extraction in `out` are deleted first."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / MANIFEST
    if restart:
        for old in [*out.glob("shard-*.tar"), *out.glob("shard-*.json"), path]:
            old.unlink(missing_ok=True)
    if path.is_file():
        existing = json.loads(path.read_text())
        differ = [k for k in _PLAN_KEYS if existing.get(k) != manifest[k]]
        if differ:
            raise ValueError(
                f"{out} holds another extraction (its {', '.join(differ)} differ from this command's): its shards "
                "cannot be mixed with this one's. Add --restart to discard them and start afresh, or give another --out"
            )
        if existing.get("complete"):
            return
    write_json_atomic(path, manifest)


class _Indexed(Dataset):
    """(index, sample) of a data set: a skipped sample has no image id of its own, its record has."""

    def __init__(self, dataset: DetectionDataset, indices: range) -> None:
        self.dataset, self.indices = dataset, indices

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> tuple[int, dict[str, Any]]:
        index = self.indices[i]
        return index, self.dataset[index]


def extract_rank(
    *,
    module,
    dataset: DetectionDataset,
    out: Path,
    manifest: dict[str, Any],
    rank: int = 0,
    world_size: int = 1,
    batch_size: int = 8,
    num_workers: int = 0,
) -> list[int]:
    """Extract this rank's shards (k with k mod world_size == rank) that are not finished yet.

    Args:
        module: the `RegionSpot` model (`build_extraction_module`), its backbones on the device and in the dtype
            to run.
        dataset: the data set of the manifest, without augmentation.

    Returns:
        The shards this call wrote (finished ones are skipped).
    """
    written = []
    for index in range(rank, manifest["shards"], world_size):
        if finished_shard(out, index) is not None:
            continue
        log.info("rank %d: extracting shard %d of %d", rank, index + 1, manifest["shards"])
        size = manifest["shard_size"]
        indices = range(index * size, min((index + 1) * size, len(dataset)))
        loader = DataLoader(
            _Indexed(dataset, indices), batch_size=batch_size, num_workers=num_workers, collate_fn=list,
            worker_init_fn=functools.partial(die_with_parent, os.getpid()),
        )  # fmt: skip
        write_shard(out, index, (e for batch in loader for e in _entries(module, dataset, batch, manifest)))
        written.append(index)
    return written


def write_shard(out: Path, index: int, entries) -> dict[str, Any]:
    """Write WebDataset samples to shard `index` (temporary file, fsync, rename), then its record."""
    import webdataset

    path = out / shard_name(index)
    counts: Counter = Counter()
    keys: list[str] = []
    with atomic_path(path) as partial, open(partial, "wb") as stream:
        writer = webdataset.TarWriter(stream, encoder=False, mtime=0.0)
        for sample, meta in entries:
            writer.write(sample)
            if not meta.get("flipped"):
                keys.append(sample["__key__"])
                counts["entries"] += 1
                counts[f"skipped:{meta['skipped']}" if "skipped" in meta else "images"] += 1
                counts["boxes"] += len(meta.get("boxes", ()))
        writer.close()
        stream.flush()
    record = {
        "shard": index,
        "bytes": path.stat().st_size,
        "sha256": file_sha256(path),
        "counts": dict(counts),
        "keys": keys,
        "members": member_offsets(path),
    }
    write_json_atomic(path.with_suffix(".json"), record)
    return record


def _entries(model, dataset: DetectionDataset, batch: list[tuple[int, dict[str, Any]]], manifest: dict[str, Any]):
    """(WebDataset sample, meta) of every entry of a batch of (index, sample): one per image, two with flips."""
    views = {(index, False): s for index, s in batch if "skipped" not in s}
    if manifest["flips"]:
        views |= {(index, True): _flipped(s) for (index, _), s in list(views.items())}
    frozen = _frozen(model, [s["image"] for s in views.values()], [s["boxes"] for s in views.values()])
    features = dict(zip(views, frozen, strict=True))
    dtype = STORAGE_DTYPES[manifest["dtype"]]
    for index, sample in batch:
        image_id = dataset.records[index].image_id
        if "skipped" in sample:
            meta = {"key": entry_key(image_id), "image_id": image_id, "index": index, "skipped": sample["skipped"]}
            yield encode_entry(meta, None), meta
            continue
        for flipped in (False, True) if manifest["flips"] else (False,):
            view = views[index, flipped]
            yield _entry(image_id, index, view, features[index, flipped], flipped, dtype, manifest["clip_maps"])


def _entry(image_id, index, sample, frozen, flipped: bool, dtype: torch.dtype, clip_maps: bool):
    meta = {
        "key": entry_key(image_id, flipped=flipped),
        "image_id": image_id,
        "index": index,
        "flipped": flipped,
        "boxes": sample["boxes"].tolist(),
        "labels": sample["labels"].tolist(),
    }
    for field in ("captions", "region_keys"):
        if field in sample:
            meta[field] = sample[field]
    tensors = {
        "region_tokens": frozen.region_tokens.to(dtype),
        "mask_scores": frozen.mask_scores.float(),
        "region_boxes": frozen.region_boxes.float(),
    }
    if clip_maps:
        tensors["clip_tokens"] = frozen.clip_tokens.to(dtype)
    return encode_entry(meta, tensors), meta


def _flipped(sample: dict[str, Any]) -> dict[str, Any]:
    image, boxes = hflip(sample["image"], sample["boxes"].numpy())
    return {**sample, "image": image, "boxes": torch.from_numpy(np.asarray(boxes, dtype=np.float32))}


def _frozen(model: RegionSpot, images, boxes):
    """The model's frozen step, under bf16 autocast when the backbones run in bf16 (as training)."""
    if not images:  # every image of the batch was skipped
        return []
    backbone = next(model.sam.parameters())
    bf16 = backbone.dtype == torch.bfloat16
    autocast = torch.autocast(backbone.device.type, dtype=torch.bfloat16) if bf16 else nullcontext()
    with torch.inference_mode(), autocast:
        return model.frozen_features(images, boxes)


def finalise(out: Path) -> dict[str, Any]:
    """Check every shard is there (each rank checked the sha256 of its own), add the counts to the manifest and
    mark it complete."""
    manifest = json.loads((out / MANIFEST).read_text())
    records = [finished_shard(out, k, verify=False) for k in range(manifest["shards"])]
    missing = [k for k, record in enumerate(records) if record is None]
    if missing:
        raise RuntimeError(f"shards {missing[:10]} of {out} are not finished: run the same command again")
    counts: Counter = Counter()
    for record in records:
        counts.update(record["counts"])
    skipped = {k.split(":", 1)[1]: v for k, v in counts.items() if k.startswith("skipped:")}
    manifest["counts"] = {
        "entries": counts["entries"],
        "images": counts["images"],
        "boxes": counts["boxes"],
        "skipped": skipped,
        "bytes": sum(r["bytes"] for r in records),
    }
    manifest["complete"] = True
    write_json_atomic(out / MANIFEST, manifest)
    return manifest


def build_extraction_module(model_config: RegionSpotConfig, *, backbone_precision: str) -> RegionSpot:
    """The model whose frozen step the extraction runs, in eval mode, its backbones in `backbone_precision`
    ("float32" or "bfloat16"; the command resolves "auto" by the device)."""
    if backbone_precision not in _EXTRACTION_PRECISIONS:
        raise ValueError(f"backbone_precision must be one of {_EXTRACTION_PRECISIONS}, got {backbone_precision!r}")
    model = build_regionspot(model_config)
    model.cast_backbones(getattr(torch, backbone_precision))
    return model.eval()


def run_ranks(fabric, args: argparse.Namespace) -> None:
    model_config, data = RegionSpotConfig.from_yaml(args.config), _data_config(args)
    dataset = build_dataset(args.name, data)
    settings = {name: getattr(args, name) for name in _SETTINGS}
    if settings["backbone_precision"] == "auto":
        settings["backbone_precision"] = "bfloat16" if fabric.device.type == "cuda" else "float32"
    manifest = plan(model_config=model_config, data=data, dataset=dataset, **settings)
    out = Path(args.out)
    if fabric.global_rank == 0:
        prepare(out, manifest, restart=args.restart)
    fabric.barrier()
    model = build_extraction_module(model_config, backbone_precision=settings["backbone_precision"]).to(fabric.device)
    extract_rank(
        module=model,
        dataset=dataset,
        out=out,
        manifest=manifest,
        rank=fabric.global_rank,
        world_size=fabric.world_size,
        batch_size=args.batch_size,
        num_workers=args.num_workers,
    )
    fabric.barrier()
    if fabric.global_rank == 0:
        counts = finalise(out)["counts"]
        print(json.dumps({"out": str(out), **counts}))


def _data_config(args: argparse.Namespace) -> DatasetConfig:
    if args.data is not None:
        values = yaml.safe_load(Path(args.data).read_text())
        if not isinstance(values, dict):
            raise ValueError(f"{args.data} must be a mapping of DatasetConfig fields (ann_file, image_dir, ...)")
        return DatasetConfig(**values)
    if args.ann is None:
        raise ValueError("give the data set: --data DATA.yaml, or --ann FILE --images FOLDER")
    return DatasetConfig(ann_file=args.ann, image_dir=args.images)


if __name__ == "__main__":
    from regionspot.commands.extract import main

    main()
