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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from regionspot.config import RegionSpotConfig
from regionspot.data.captions import caption_references
from regionspot.data.detection import DetectionDataset
from regionspot.evaluation.caption_metrics import require_java, score_captions
from regionspot.evaluation.driver import (
    METRICS_FILE,
    RegionEvalSettings,
    build_eval_model,
    data_identity,
    frozen_of,
    read_part_records,
    region_dataset,
    run_remaining,
    usable_items,
)
from regionspot.files import write_json_atomic
from regionspot.modeling.regionspot import RegionSpot
from regionspot.run_identity import RUN_FILE, run_identity

log = logging.getLogger(__name__)

CAPTIONS_FILE = "captions.json"  # {region key: predicted caption}
CAPTION_PARTS = "captions.rank*.jsonl"  # one JSON line per finished image


@dataclass(kw_only=True)
class CaptionEvalSettings(RegionEvalSettings):
    """One captioning evaluation (and `RegionEvalSettings`: config, out, the data, max_images, batch_size, device,
    seed, progress, restart). Give `ann` + `images`, or `hf_path`; paths are local, nothing is downloaded.

    `config` is a model YAML with a caption: section (a captioning run's adapter.yaml); `ann` a region-caption JSON
    (COCO-style with a caption per annotation, or VG's own); `hf_path` a Hugging Face data set (objects with bbox
    and caption); `max_images` scores the first N images alone (CIDEr-D's IDF changes).
    """

    num_beams: int | None = None  # default: the model config's caption.num_beams
    spice: bool = False  # SPICE downloads Stanford CoreNLP on first use: off unless asked

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.num_beams is not None and self.num_beams < 1:
            raise ValueError(f"num_beams must be at least 1, got {self.num_beams}")


def evaluate_captions(settings: CaptionEvalSettings) -> dict[str, Any]:
    """Caption the data set's regions (resuming `out`), score them, write and return the metrics."""
    require_java()  # before hours of decoding, not after
    config = _model_config(settings)
    model = build_eval_model(config, seed=settings.seed, device=settings.device)
    dataset = region_dataset("captions", settings, captions=True)
    indices = run_remaining(
        settings, dataset, identity=_identity(settings, config, dataset), parts=CAPTION_PARTS,
        records_of=lambda batch: caption_batch(model, dataset, batch), done_as="captioned",
    )  # fmt: skip
    return _merge_and_score(dataset, indices, Path(settings.out), settings)


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


def _identity(settings: CaptionEvalSettings, config: RegionSpotConfig, dataset: DetectionDataset) -> dict[str, Any]:
    """Everything the captions depend on: a resumed run must share it all."""
    return run_identity(
        config_path=settings.config,
        config=config,
        data=data_identity(settings, dataset),
        settings={"num_beams": config.caption.num_beams, "seed": settings.seed},
    )


def caption_batch(model: RegionSpot, dataset: DetectionDataset, batch: list[tuple[int, dict]]) -> list[dict]:
    """(index, data set item) pairs -> one JSON record per image: its captions by region key, or why it was skipped."""
    records, usable = usable_items(dataset, batch)
    if usable:
        captions = model.caption_regions(frozen_of(model, [item for _, item in usable]))
        for (image_id, item), texts in zip(usable, captions, strict=True):
            records.append({"image_id": image_id, "captions": dict(zip(item["region_keys"], texts, strict=True))})
    return records


def _merge_and_score(
    dataset: DetectionDataset, indices: list[int], out: Path, settings: CaptionEvalSettings
) -> dict[str, Any]:
    done = read_part_records(out, CAPTION_PARTS)
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
