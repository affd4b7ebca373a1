"""Region captioning evaluation: caption every annotated region of a data set, score with the COCO caption toolkit.

    python evaluate.py captions --config run/adapter.yaml --ann test.json --images images/ --out caption_eval/

The data set is any region-caption file `build_dataset` reads with `captions=True`: GRiT's Visual Genome
test.json (one reference per region, keyed "{image_id}_region_{j}": TAP's protocol), RefCOCOg as GLaMM
converted it (keyed by annotation id: GLaMM's), Visual Genome's own region_descriptions.json, or a Hugging
Face data set. Each image's captions are appended to `captions.rank0.jsonl` as soon as they are decoded, so a
rerun with the same `out` resumes where an interrupted one stopped; `captions.json` ({region key: caption})
and `metrics.json` (CIDEr-D, BLEU-4, METEOR, ROUGE-L by pycocoevalcap itself) are written at the end.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from regionspot.build import build_regionspot
from regionspot.config import RegionSpotConfig
from regionspot.data.captions import caption_references
from regionspot.data.detection import DatasetConfig, DetectionDataset, build_dataset
from regionspot.evaluation.caption_metrics import require_java, score_captions
from regionspot.evaluation.runner import METRICS_FILE, PartWriter, read_part_records
from regionspot.files import write_json_atomic
from regionspot.modeling.regionspot import FrozenFeatures, RegionSpot
from regionspot.run_identity import RUN_FILE, check_or_record, dataset_digests, run_identity

log = logging.getLogger(__name__)

CAPTIONS_FILE = "captions.json"  # {region key: predicted caption}
CAPTION_PARTS = "captions.rank*.jsonl"  # one JSON line per finished image


@dataclass
class CaptionEvalSettings:
    """One captioning evaluation. Give `ann` + `images`, or `hf_path`; paths are local, nothing is downloaded."""

    config: str  # model YAML with a caption: section (a captioning run's adapter.yaml)
    out: str  # output folder; holds the part file of an unfinished run, which a rerun resumes
    ann: str | None = None  # region-caption JSON (COCO-style with a caption per annotation, or VG's own)
    images: str | None = None  # its image folder
    hf_path: str | None = None  # or a Hugging Face data set (objects with bbox and caption)
    hf_split: str = "test"
    max_images: int | None = None  # only the first N images (scored on those alone: CIDEr-D's IDF changes)
    batch_size: int = 8  # images whose regions are embedded and decoded together
    num_beams: int | None = None  # default: the model config's caption.num_beams
    device: str = "auto"  # "auto" (CUDA when there is one), "cpu", "cuda", ...
    seed: int = 0  # draws the weights of parts without a checkpoint: the same in every run, so a rerun resumes alike
    spice: bool = False  # SPICE downloads Stanford CoreNLP on first use: off unless asked
    progress: bool = True
    restart: bool = False  # discard the records of an earlier run in `out` (one that differs refuses to resume)

    def __post_init__(self) -> None:
        if (self.ann is None) == (self.hf_path is None):
            raise ValueError("give the data as --ann with --images, or as --hf-path")
        if self.ann is not None and self.images is None:
            raise ValueError(f"{self.ann} needs --images, the folder of its images")
        if self.max_images is not None and self.max_images < 1:
            raise ValueError(f"max_images must be at least 1, got {self.max_images}")
        if self.batch_size < 1 or (self.num_beams is not None and self.num_beams < 1):
            raise ValueError("batch_size and num_beams must be at least 1")


def evaluate_captions(settings: CaptionEvalSettings) -> dict[str, Any]:
    """Caption the data set's regions (resuming `out`), score them, write and return the metrics."""
    require_java()  # before hours of decoding, not after
    config = _model_config(settings)
    torch.manual_seed(settings.seed)
    model = _build_model(config, device=settings.device)
    dataset = build_dataset(
        "captions",
        DatasetConfig(
            ann_file=settings.ann, image_dir=settings.images, hf_path=settings.hf_path, hf_split=settings.hf_split,
            captions=True,
        ),
    )  # fmt: skip
    indices = list(range(len(dataset)))[: settings.max_images]
    out = Path(settings.out)
    out.mkdir(parents=True, exist_ok=True)
    check_or_record(out, _identity(settings, config, dataset), parts=CAPTION_PARTS, restart=settings.restart)
    part = out / "captions.rank0.jsonl"
    done = read_caption_parts(out)
    remaining = [i for i in indices if dataset.records[i].image_id not in done]
    if done:
        log.info("resuming: %d images already captioned, %d to go", len(indices) - len(remaining), len(remaining))
    write_records(
        lambda batch: caption_batch(model, dataset, batch), dataset, remaining, part,
        batch_size=settings.batch_size, progress=settings.progress,
    )  # fmt: skip
    return _merge_and_score(dataset, indices, out, settings)


def _model_config(settings: CaptionEvalSettings) -> RegionSpotConfig:
    """The model YAML, checked to caption, with the run's beam count."""
    config = RegionSpotConfig.from_yaml(settings.config)
    if config.caption is None:
        raise ValueError(f"{settings.config} has no caption: section; give the adapter.yaml of a captioning run")
    if config.caption.checkpoint is None:
        log.warning("the model config names no caption decoder weights: the captions are untrained")
    if settings.num_beams is not None:
        config.caption.num_beams = settings.num_beams
    return config


def _build_model(config: RegionSpotConfig, *, device: str) -> RegionSpot:
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return build_regionspot(config).to(device).eval()


def _identity(settings: CaptionEvalSettings, config: RegionSpotConfig, dataset: DetectionDataset) -> dict[str, Any]:
    """Everything the captions depend on: a resumed run must share it all."""
    return run_identity(
        config_path=settings.config,
        config=config,
        data=data_identity(settings, dataset),
        settings={"num_beams": config.caption.num_beams, "seed": settings.seed},
    )


def data_identity(settings: CaptionEvalSettings, dataset: DetectionDataset) -> dict[str, Any]:
    """The digests of an evaluation's data (`settings` with ann, images, hf_path, hf_split)."""
    return dataset_digests(
        ann=settings.ann,
        images=settings.images,
        hf_path=settings.hf_path,
        hf_split=settings.hf_split,
        sources=(record.source for record in dataset.records),
    )


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


def caption_batch(model: RegionSpot, dataset: DetectionDataset, batch: list[tuple[int, dict]]) -> list[dict]:
    """(index, data set item) pairs -> one JSON record per image: its captions by region key, or why it was skipped."""
    records, usable = usable_items(dataset, batch)
    if usable:
        captions = model.caption_regions(frozen_of(model, [item for _, item in usable]))
        for (image_id, item), texts in zip(usable, captions, strict=True):
            records.append({"image_id": image_id, "captions": dict(zip(item["region_keys"], texts, strict=True))})
    return records


def read_caption_parts(out: str | Path) -> dict[int, dict[str, Any]]:
    """{image id: its record} of every image finished in `out` (a half-written last line is ignored)."""
    return read_part_records(out, CAPTION_PARTS)


def _merge_and_score(
    dataset: DetectionDataset, indices: list[int], out: Path, settings: CaptionEvalSettings
) -> dict[str, Any]:
    done = read_caption_parts(out)
    evaluated = {dataset.records[i].image_id for i in indices}
    keys = {key for i in indices for key in (dataset.records[i].region_keys or [])}
    references = {key: refs for key, refs in caption_references(dataset).items() if key in keys}
    predictions = {
        key: text
        for image_id, record in done.items()
        if image_id in evaluated
        for key, text in record.get("captions", {}).items()
    }
    missing = sorted(set(references) - set(predictions))
    if missing:  # an unreadable image or a box with no area inside it: an empty caption, scored as such
        log.warning("%d regions have no caption (unreadable images, empty boxes); they score 0", len(missing))
    predictions = {key: predictions.get(key, "") for key in references}
    write_json_atomic(out / CAPTIONS_FILE, predictions, indent=0)
    metrics = score_captions(predictions, references, spice=settings.spice)
    metrics["images"] = {
        "total": len(indices),
        "skipped": sum("skipped" in done.get(i, {}) for i in evaluated),
        "regions_without_caption": len(missing),
    }
    write_json_atomic(out / METRICS_FILE, metrics, indent=2)
    print(format_caption_metrics(metrics))
    log.info("captions: %s; metrics: %s; run settings: %s", out / CAPTIONS_FILE, out / METRICS_FILE, out / RUN_FILE)
    return metrics


def format_caption_metrics(metrics: dict[str, Any]) -> str:
    """One line of the caption metrics in the toolkit's usual scale (x100)."""
    names = [name for name in ("CIDEr", "Bleu_4", "METEOR", "ROUGE_L", "SPICE") if name in metrics]
    return ", ".join(f"{name} {100 * metrics[name]:.1f}" for name in names) + f" ({metrics['regions']} regions)"
