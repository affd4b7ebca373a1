"""The feature extractor: what it writes, that it resumes without redoing finished shards (after a truncated shard,
a lost record, a kill -9), and that ranks splitting the shards write what one process writes.

Tiny random backbones, the toy data set (10 images, one of them unreadable), 3 images per shard: 4 shards.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import random
import signal
import tarfile
import time
from pathlib import Path

import killable
import pytest
import torch
from synthetic_boxes import extraction_args, one_cpu_thread  # noqa: F401 (a fixture)

from regionspot import RegionSpotConfig
from regionspot.commands.extract import main
from regionspot.data import DatasetConfig, build_dataset
from regionspot.data.feature_cache import (
    CachedDetectionDataset,
    FeatureCache,
    finished_shard,
    read_manifest,
    shard_name,
)
from regionspot.data.toy import write_colour_boxes
from regionspot.extract import build_extraction_module, extract_rank, finalise, plan, prepare
from regionspot.images import load_image

pytestmark = pytest.mark.usefixtures("one_cpu_thread")
TINY = "tiny"
SHARD_SIZE = 3


@pytest.fixture(scope="module")
def toy(tmp_path_factory) -> dict:
    ann, images = write_colour_boxes(tmp_path_factory.mktemp("toy"), num_images=10)
    config = DatasetConfig(ann_file=str(ann), image_dir=str(images))
    dataset = build_dataset("toy", config)
    Path(dataset.records[4].source).write_bytes(b"not a png")  # read as unreadable, skipped and counted
    return {"ann": ann, "images": images, "config": config, "dataset": dataset}


@pytest.fixture(scope="module")
def module():
    return build_extraction_module(RegionSpotConfig.from_yaml(TINY), backbone_precision="float32")


def _manifest(toy, **kwargs) -> dict:
    settings = {
        "clip_maps": True,
        "flips": True,
        "dtype": "fp32",
        "backbone_precision": "float32",
        "shard_size": SHARD_SIZE,
        **kwargs,
    }
    return plan(model_config=RegionSpotConfig.from_yaml(TINY), data=toy["config"], dataset=toy["dataset"], **settings)


def _extract(out: Path, toy, module, *, ranks: int = 1) -> list[int]:
    manifest = _manifest(toy)
    prepare(out, manifest)
    written = []
    for rank in range(ranks):
        written += extract_rank(
            module=module, dataset=toy["dataset"], out=out, manifest=manifest, rank=rank, world_size=ranks, batch_size=2
        )
    finalise(out)
    return sorted(written)


def contents(out: Path) -> dict[str, bytes]:
    """Every member of every shard, by shard and name: equal contents, equal caches."""
    found = {}
    for k in range(read_manifest(out)["shards"]):
        with tarfile.open(out / shard_name(k)) as tar:
            found.update({f"{k}/{m.name}": tar.extractfile(m).read() for m in tar.getmembers()})
    return found


@pytest.fixture(scope="module")
def reference(toy, tmp_path_factory) -> Path:
    """An uninterrupted extraction through the command line (one CPU process through Lightning Fabric)."""
    out = tmp_path_factory.mktemp("reference")
    main(extraction_args(TINY, ann=toy["ann"], images=toy["images"], out=out, shard_size=SHARD_SIZE, batch_size=2,
                         name="toy"))  # fmt: skip
    return out


def test_the_cache_holds_every_box_of_every_readable_image(reference, toy, module):
    manifest = read_manifest(reference)
    assert manifest["complete"] and manifest["shards"] == 4
    dataset = toy["dataset"]
    boxes = sum(len(r.boxes) for i, r in enumerate(dataset.records) if i != 4)
    assert manifest["counts"] | {"bytes": 0} == {
        "entries": 10,
        "images": 9,
        "boxes": boxes,
        "skipped": {"unreadable_image": 1},
        "bytes": 0,
    }
    assert manifest["checkpoints"] == {"sam": None, "clip": None} and manifest["dataset"]["vocabulary"]
    cache = FeatureCache(reference)
    assert cache.entry(4)[0]["skipped"] == "unreadable_image" and cache.entry(4)[1] is None
    training_set = CachedDetectionDataset(name="toy", cache=cache)
    assert training_set[4] == {"skipped": "unreadable_image", "dataset": "toy"}  # training counts it as skipped
    assert training_set[7]["image"] is None and training_set[7]["frozen"].clip_tokens.shape[0] > 1
    sample = dataset[7]
    expected = module.frozen_features([sample["image"]], [sample["boxes"]])[0]
    meta, tensors = cache.entry(7)
    assert meta["image_id"] == dataset.records[7].image_id and meta["labels"] == sample["labels"].tolist()
    # Computed in another batch (SAM decodes a batch's boxes together), so equal to the last bits only.
    torch.testing.assert_close(tensors["region_tokens"], expected.region_tokens, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(tensors["clip_tokens"], expected.clip_tokens, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(tensors["region_boxes"], expected.region_boxes)  # where the heads read the regions
    flipped_meta, flipped_tensors = cache.entry(7, flipped=True)
    width = sample["image"].shape[1]
    assert flipped_meta["boxes"][0][0] == pytest.approx(width - meta["boxes"][0][2])
    assert flipped_tensors["region_boxes"][0, 0].item() == pytest.approx(1 - tensors["region_boxes"][0, 2].item())


def test_the_shards_are_webdataset_shards(reference):
    import webdataset

    keys = {
        s["__key__"] for s in webdataset.WebDataset(str(reference / "shard-{000000..000003}.tar"), shardshuffle=False)
    }
    assert len(keys) == 10 + 9  # every image, and the flipped view of each readable one


def test_ranks_splitting_the_shards_write_what_one_process_writes(reference, toy, module, tmp_path):
    assert _extract(tmp_path, toy, module, ranks=2) == [0, 1, 2, 3]
    assert contents(tmp_path) == contents(reference)


def test_a_rerun_redoes_only_a_truncated_shard_a_lost_record_and_a_partial_one(reference, toy, module, tmp_path):
    assert _extract(tmp_path, toy, module) == [0, 1, 2, 3]
    (tmp_path / shard_name(1)).write_bytes((tmp_path / shard_name(1)).read_bytes()[:700])  # cut short
    (tmp_path / shard_name(2).replace(".tar", ".json")).unlink()  # killed between the tar and its record
    (tmp_path / shard_name(3)).rename(tmp_path / f".{shard_name(3)}.partial")  # killed while writing
    with pytest.raises(ValueError, match="not the size"):
        FeatureCache(tmp_path)  # a damaged shard is never read as data
    assert _extract(tmp_path, toy, module) == [1, 2, 3]
    assert contents(tmp_path) == contents(reference)


def test_a_folder_of_another_extraction_is_refused(reference, toy):
    with pytest.raises(ValueError, match=r"another extraction.*dtype"):
        prepare(reference, _manifest(toy, dtype="bf16"))


def test_a_rerun_after_a_backbone_checkpoint_or_an_image_changes_is_refused(toy, tmp_path):
    config = RegionSpotConfig.from_yaml(TINY)
    weights = tmp_path / "sam_tiny.pth"  # only its bytes matter to the manifest: nothing is loaded here
    weights.write_bytes(b"weights one")
    config.sam.checkpoint = str(weights)

    def manifest() -> dict:
        return plan(model_config=config, data=toy["config"], dataset=toy["dataset"], clip_maps=True, flips=True,
                    dtype="fp32", backbone_precision="float32", shard_size=SHARD_SIZE)  # fmt: skip

    out = tmp_path / "cache"
    prepare(out, manifest())
    weights.write_bytes(b"weights two")  # retrained behind the same file name
    with pytest.raises(ValueError, match=r"checkpoint_sha256.*Add --restart.*another --out"):
        prepare(out, manifest())
    weights.write_bytes(b"weights one")
    image = Path(toy["dataset"].records[0].source)
    original = image.read_bytes()
    image.write_bytes(original + b"\0")
    try:
        with pytest.raises(ValueError, match="images_digest"):
            prepare(out, manifest())
    finally:
        image.write_bytes(original)
    prepare(out, manifest())  # the same extraction again: it resumes
    weights.write_bytes(b"weights two")
    (out / shard_name(0)).write_bytes(b"a shard of the old extraction")
    prepare(out, manifest(), restart=True)
    assert (
        not (out / shard_name(0)).exists()
        and read_manifest(out)["checkpoint_sha256"]["sam"] == manifest()["checkpoint_sha256"]["sam"]
    )


def _killable_extraction(out: str, toy, module, pause: float) -> None:
    """The extraction, pausing after each batch so that a kill lands in the middle of a shard."""
    import regionspot.extract as extraction

    torch.set_num_threads(1)
    entries = extraction._entries

    def paused(*args):
        yield from entries(*args)
        time.sleep(pause)

    extraction._entries = paused
    manifest = _manifest(toy)
    extract_rank(module=module, dataset=toy["dataset"], out=Path(out), manifest=manifest, batch_size=2)


def test_kill_9_mid_extraction_then_rerun_equals_an_uninterrupted_run(reference, toy, module, tmp_path):
    prepare(tmp_path, _manifest(toy))
    process = multiprocessing.get_context("fork").Process(
        target=_killable_extraction, args=(str(tmp_path), toy, module, 0.1), daemon=True
    )
    process.start()
    deadline = time.monotonic() + 60
    while finished_shard(tmp_path, 0) is None:
        assert process.is_alive() and time.monotonic() < deadline, "the extraction ended before the kill"
        time.sleep(0.005)
    time.sleep(random.Random(17).uniform(0.0, 0.15))  # somewhere in shard 1
    os.kill(process.pid, signal.SIGKILL)
    process.join(30)
    assert process.exitcode == -signal.SIGKILL
    finished = {k for k in range(4) if finished_shard(tmp_path, k) is not None}
    assert 0 in finished and finished != set(range(4))
    assert _extract(tmp_path, toy, module) == sorted(set(range(4)) - finished)
    assert contents(tmp_path) == contents(reference)
    assert json.loads((tmp_path / "manifest.json").read_text())["counts"] == read_manifest(reference)["counts"]


def _extraction_with_slow_workers(out: str, toy, module, reading: str) -> None:
    """The extraction with 2 loader workers, each stuck for a minute in its first image (a huge file, a stalled
    network file system)."""
    torch.set_num_threads(1)
    dataset = toy["dataset"]

    def stuck(source):
        Path(reading, str(os.getpid())).touch()
        time.sleep(60)
        return load_image(source)

    dataset.read_image = stuck
    extract_rank(module=module, dataset=dataset, out=Path(out), manifest=_manifest(toy), batch_size=1, num_workers=2)


def test_kill_9_of_the_extractor_leaves_no_loader_worker_behind(toy, module, tmp_path):
    reading = tmp_path / "reading"
    reading.mkdir()
    prepare(tmp_path / "out", _manifest(toy))
    args = (str(tmp_path / "out"), toy, module, str(reading))
    process, workers = killable.start_with_stuck_workers(_extraction_with_slow_workers, args, reading)
    survivors = killable.survivors_of_kill_9(process, workers)
    assert not survivors, f"{len(survivors)} of {len(workers)} loader workers outlived the extractor"


@pytest.mark.slow
def test_two_gloo_processes_through_lightning_write_what_one_process_writes(reference, toy, tmp_path):
    main(["--config", TINY, "--ann", str(toy["ann"]), "--images", str(toy["images"]), "--name", "toy",
          "--out", str(tmp_path), "--clip-maps", "--flips", "--dtype", "fp32", "--backbone-precision", "float32",
          "--shard-size", str(SHARD_SIZE), "--batch-size", "2", "--num-workers", "0", "--accelerator", "cpu",
          "--devices", "2", "--strategy", "ddp_spawn"])  # fmt: skip
    assert contents(tmp_path) == contents(reference)
    assert read_manifest(tmp_path)["counts"] == read_manifest(reference)["counts"]


def test_the_data_set_comes_from_a_yaml_or_from_ann_and_images(toy, tmp_path):
    from regionspot.commands.extract import parse_args
    from regionspot.extract import _data_config

    (tmp_path / "data.yaml").write_text(f"ann_file: {toy['ann']}\nimage_dir: {toy['images']}\n")
    common = ["--config", TINY, "--out", str(tmp_path / "out")]
    assert _data_config(parse_args([*common, "--data", str(tmp_path / "data.yaml")])) == toy["config"]
    given = parse_args([*common, "--ann", str(toy["ann"]), "--images", str(toy["images"])])
    assert _data_config(given) == toy["config"]
    with pytest.raises(ValueError, match="give the data set"):
        _data_config(parse_args(common))
