"""The skeleton every evaluation runs on: its settings, the model it builds, and its resumable part files.

LVIS detections (`runner`), region captions (`caption_eval`) and region VQA (`vqa_eval`) each recognise a data set
image by image, append each finished image to a part file (one JSON line, flushed), record what the results
depend on (`regionspot.run_identity`) and, rerun with the same `out`, skip the images already done. The shared
settings fields and their checks (`RunSettings`, `RegionEvalSettings`), the device resolution, and the part files
(`PartWriter`, `read_part_records`) live here; the captions and VQA drivers also share `run_remaining`, the loop
over a data set's images in batches.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from regionspot.build import build_regionspot
from regionspot.config import RegionSpotConfig
from regionspot.data.build import build_dataset
from regionspot.data.detection import DatasetConfig, DetectionDataset
from regionspot.modeling.regionspot import FrozenFeatures, RegionSpot
from regionspot.run_identity import check_or_record, dataset_digests

log = logging.getLogger(__name__)

METRICS_FILE = "metrics.json"  # every evaluation's scores


@dataclass(kw_only=True)
class RunSettings:
    """What every evaluation run is given. Paths are local files; nothing is downloaded."""

    config: str  # model YAML, or a packaged model config's name (regionspot.configs)
    out: str  # output folder; holds the part files of an unfinished run, which a rerun resumes
    max_images: int | None = None  # only the first N images, scored on those alone
    seed: int = 0  # draws the weights of parts without a checkpoint: the same in every run, so a rerun resumes alike
    progress: bool = True
    restart: bool = False  # discard the records of an earlier run in `out` (one that differs refuses to resume)

    def __post_init__(self) -> None:
        if self.max_images is not None and self.max_images < 1:
            raise ValueError(f"max_images must be at least 1, got {self.max_images}")


@dataclass(kw_only=True)
class RegionEvalSettings(RunSettings):
    """An evaluation over a region data set `build_dataset` reads: give `ann` + `images`, or `hf_path`."""

    ann: str | None = None  # the data set's annotation file
    images: str | None = None  # its image folder
    hf_path: str | None = None  # or a Hugging Face data set
    hf_split: str = "test"
    batch_size: int = 8  # images whose regions are embedded and decoded together
    device: str = "auto"  # "auto" (CUDA when there is one), "cpu", "cuda", ...

    def __post_init__(self) -> None:
        super().__post_init__()
        if (self.ann is None) == (self.hf_path is None):
            raise ValueError("give the data as --ann with --images, or as --hf-path")
        if self.ann is not None and self.images is None:
            raise ValueError(f"{self.ann} needs --images, the folder of its images")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {self.batch_size}")


def resolve_device(device: str) -> str:
    """The device "auto" names: "cuda" when there is a GPU, else "cpu"; any other name as given."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def build_eval_model(config: RegionSpotConfig, *, seed: int, device: str) -> RegionSpot:
    """The model to evaluate, in eval mode on `device` ("auto" resolved); `seed` draws parts without weights."""
    torch.manual_seed(seed)
    return build_regionspot(config).to(resolve_device(device)).eval()


def region_dataset(name: str, settings: RegionEvalSettings, **kinds: bool) -> DetectionDataset:
    """The data set `settings` names, read as `kinds` says (captions=True, questions=True)."""
    return build_dataset(
        name,
        DatasetConfig(
            ann_file=settings.ann, image_dir=settings.images, hf_path=settings.hf_path, hf_split=settings.hf_split,
            **kinds,
        ),
    )  # fmt: skip


def data_identity(settings: RegionEvalSettings, dataset: DetectionDataset) -> dict[str, Any]:
    """The digests of an evaluation's data (`settings` with ann, images, hf_path, hf_split)."""
    return dataset_digests(
        ann=settings.ann,
        images=settings.images,
        hf_path=settings.hf_path,
        hf_split=settings.hf_split,
        sources=(record.source for record in dataset.records),
    )


def run_remaining(
    settings: RegionEvalSettings,
    dataset: DetectionDataset,
    *,
    identity: dict[str, Any],
    parts: str,
    records_of: Callable[[list[tuple[int, dict]]], list[dict]],
    done_as: str,
) -> list[int]:
    """Start `settings.out` (or resume it, if the run recorded there has this `identity`), and run `records_of` over
    the images of the first `max_images` not finished yet, appending to the part file of `parts` (a glob).

    Returns:
        The indices of the images evaluated (the first `max_images` of the data set).
    """
    indices = list(range(len(dataset)))[: settings.max_images]
    out = Path(settings.out)
    out.mkdir(parents=True, exist_ok=True)
    check_or_record(out, identity, parts=parts, restart=settings.restart)
    done = read_part_records(out, parts)
    remaining = [i for i in indices if dataset.records[i].image_id not in done]
    if done:
        log.info("resuming: %d images already %s, %d to go", len(indices) - len(remaining), done_as, len(remaining))
    write_records(
        records_of, dataset, remaining, out / parts.replace("*", "0"), batch_size=settings.batch_size,
        progress=settings.progress,
    )  # fmt: skip
    return indices


@torch.no_grad()
def write_records(
    records_of: Callable[[list[tuple[int, dict]]], list[dict]],
    dataset: DetectionDataset,
    indices: list[int],
    part: Path,
    *,
    batch_size: int,
    progress: bool,
) -> None:
    """Items `indices` of `dataset`, `batch_size` at a time, through `records_of`; each record appended to `part`
    as soon as its batch is done (what a rerun resumes from)."""
    from tqdm import tqdm

    with PartWriter(part) as writer, tqdm(total=len(indices), unit="img", disable=not progress) as bar:
        for start in range(0, len(indices), batch_size):
            batch = [(i, dataset[i]) for i in indices[start : start + batch_size]]
            for record in records_of(batch):
                writer.write(record)
            bar.update(len(batch))


def usable_items(dataset: DetectionDataset, batch: list[tuple[int, dict]]) -> tuple[list[dict], list[tuple[int, dict]]]:
    """A batch's records of skipped images ({image_id, skipped}, logged) and its (image id, item) pairs to run."""
    skipped, usable = [], []
    for index, item in batch:
        image_id = dataset.records[index].image_id
        if "skipped" in item:
            log.warning("skipping image %s: %s", image_id, item["skipped"])
            skipped.append({"image_id": image_id, "skipped": item["skipped"]})
        else:
            usable.append((image_id, item))
    return skipped, usable


def frozen_of(model: RegionSpot, items: list[dict]) -> list[FrozenFeatures]:
    """The model's frozen-feature step for data set items, their boxes as the regions."""
    return model.frozen_features([item["image"] for item in items], [item["boxes"] for item in items])


class PartWriter:
    """Appends one JSON line per image and flushes it, so a killed run loses at most the image in flight."""

    def __init__(self, path: Path) -> None:
        _drop_partial_last_line(path)
        self.path = path

    def __enter__(self) -> PartWriter:
        self.file = self.path.open("a", encoding="utf-8")
        return self

    def write(self, record: dict[str, Any]) -> None:
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()

    def __exit__(self, *exc: object) -> None:
        self.file.close()


def _drop_partial_last_line(path: Path) -> None:
    """Cut a line left half-written by a killed run, so that the next line starts on its own."""
    if not path.is_file() or path.stat().st_size == 0:
        return
    data = path.read_bytes()
    if not data.endswith(b"\n"):
        os.truncate(path, data.rfind(b"\n") + 1)  # in place, one call: a rewrite killed half-way lost the file


def read_part_records(out: str | Path, pattern: str) -> dict[int, dict[str, Any]]:
    """{image id: its record} of every image finished in `out`'s part files matching `pattern` (a half-written
    last line is ignored; a record that skipped the image does not replace one that finished it)."""
    done: dict[int, dict[str, Any]] = {}
    for path in sorted(Path(out).glob(pattern)):
        for record in finished_records(path):
            if "skipped" not in record or record["image_id"] not in done:
                done[record["image_id"]] = record
    return done


def finished_records(path: Path) -> list[dict[str, Any]]:
    """The records of a part file that were written whole: each a JSON object on a line of its own, ended by its
    newline. A last line without one was cut by a kill, even if what came before the cut parses (the next
    `PartWriter` drops it, and its image is done again); a line that does not parse is skipped, with a warning."""
    data = path.read_bytes()
    records = []
    for number, line in enumerate(data[: data.rfind(b"\n") + 1].splitlines(), start=1):
        try:
            record = json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError):
            record = None
        if not isinstance(record, dict) or "image_id" not in record:
            log.warning("%s, line %d: not a record (a damaged file?); its image is done again", path, number)
            continue
        records.append(record)
    return records
