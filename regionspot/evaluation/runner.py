"""LVIS/COCO evaluation of a RegionSpot model: regions in, detections out, scored by the official API.

One call of `evaluate` does everything: it checks the inputs, launches one process per device with
Lightning Fabric, lets each rank recognise its share of the images (each image's regions in one pass),
appends each finished image to that rank's JSONL file, and, on rank 0, merges the parts into
`detections.json` and scores them into `metrics.json`. A rerun with the same `out` folder skips the
images already done, so an interrupted run resumes where it stopped.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lightning.fabric import Fabric
from PIL import Image

from regionspot.build import build_regionspot
from regionspot.checkpoint import require_file
from regionspot.config import MaskGeneratorSettings, RegionSpotConfig
from regionspot.data.augment import resize_short_edge
from regionspot.data.coco import clean_ground_truth, load_annotations, load_proposals, subset_images
from regionspot.evaluation.detections import DEFAULT_ACTIVATION, DEFAULT_TOP_K, detect_regions, protocol_max_dets
from regionspot.evaluation.lvis_eval import format_metrics, score_results
from regionspot.evaluation.sources import (
    SOURCES,
    ImageJob,
    check_images_exist,
    image_jobs,
    keep_boxes_inside,
)
from regionspot.files import file_sha256, write_json_atomic
from regionspot.modeling.prompts import RegionPrompts
from regionspot.modeling.regionspot import ACTIVATIONS
from regionspot.modeling.sam import build_mask_generator, sam_everything
from regionspot.run_identity import check_or_record, path_digest, run_identity
from regionspot.transforms import clip_boxes
from regionspot.vocabulary import vocabulary_from_categories

log = logging.getLogger(__name__)

DETECTIONS_FILE = "detections.json"  # all detections, COCO/LVIS results format
METRICS_FILE = "metrics.json"  # box metrics at the top level, mask metrics under "segm", image counts
SKIPPED_FILE = "skipped.json"  # images that could not be read: [{"image_id", "reason"}]
PART_GLOB = "detections.rank*.jsonl"  # one JSON line per finished image, per rank
# Mixed precision autocasts the frozen encoders; "-true" precisions would need the model converted, which the
# frozen fp32 heads (decoder, adapter, scores) are meant to avoid.
PRECISIONS = ("32-true", "bf16-mixed", "16-mixed")


def part_file(out: Path, rank: int) -> Path:
    return out / f"detections.rank{rank}.jsonl"


@dataclass
class EvalSettings:
    """Everything one evaluation run needs. Paths are local files; nothing is downloaded."""

    config: str  # model YAML, or a packaged model config's name (regionspot.configs)
    ann: str  # LVIS/COCO annotation JSON
    images: str  # folder of the images (LVIS: COCO's files, found by the basename of coco_url)
    out: str  # output folder; holds the parts of an unfinished run, which a rerun resumes
    adapter: str | None = None  # trained adapter (.safetensors); overrides adapter.checkpoint of `config`
    source: str | None = None  # "gt", "proposals" or "sam"; default "proposals" if `proposals` is given, else "gt"
    proposals: str | None = None  # another detector's results (COCO results JSON with scores)
    fixed_ap: bool = False  # Fixed AP: no per-image cap, top 10k detections per class
    masks: bool = True  # write SAM's mask of each region and report mask AP too (when the GT has masks)
    top_k: int = DEFAULT_TOP_K  # classes kept per region (validation during training uses the same default)
    activation: str = DEFAULT_ACTIVATION  # "softmax" over the vocabulary (RegionSpot's) or independent "sigmoid"
    max_dets_per_image: int | None = None  # default: the protocol's (LVIS 300, COCO 100, Fixed AP none)
    max_images: int | None = None  # evaluate only the first N images (by id), scored on those alone
    accelerator: str = "auto"
    devices: int | str = 1
    strategy: str = "auto"
    precision: str | None = None  # one of PRECISIONS; default "bf16-mixed" on GPU, "32-true" on CPU
    seed: int = 0  # makes models built without checkpoints (random weights) identical on every rank
    sam_points_per_side: int = MaskGeneratorSettings.points_per_side  # "sam" source: the generator's point grid
    sam_pred_iou_thresh: float = MaskGeneratorSettings.pred_iou_thresh  # ... its mask-quality filter
    sam_stability_score_thresh: float = MaskGeneratorSettings.stability_score_thresh  # ... its stability filter
    # The original RegionSpot's evaluation, each off by default (docs/regionspot_compat.md):
    max_candidates: int | None = None  # keep an image's N most probable (region, class) pairs first (RegionSpot: 900)
    test_short_edge: int | None = None  # resize each image to this shortest edge first (RegionSpot: 800) ...
    test_max_size: int = 1333  # ... with its longest edge at most this (detectron2's test resize)
    autocast_heads: bool = False  # also run SAM's decoder, the adapter and the scores in the run's mixed precision
    progress: bool = True
    restart: bool = False  # discard the records of an earlier run in `out` (one that differs refuses to resume)

    def __post_init__(self) -> None:
        if self.source is None:
            self.source = "proposals" if self.proposals else "gt"
        if self.source not in SOURCES:
            raise ValueError(f"source must be one of {SOURCES}, got {self.source!r}")
        if (self.source == "proposals") != (self.proposals is not None):
            raise ValueError("give --proposals exactly when the region source is 'proposals'")
        if self.precision not in (None, *PRECISIONS):
            raise ValueError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        if self.top_k < 1:
            raise ValueError(f"top_k must be at least 1, got {self.top_k}")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {ACTIVATIONS}, got {self.activation!r}")
        if self.max_dets_per_image is not None and self.max_dets_per_image < 1:
            raise ValueError(f"max_dets_per_image must be at least 1, got {self.max_dets_per_image}")
        _check_protocol_settings(self)
        if self.max_images is not None and self.max_images < 1:
            raise ValueError(f"max_images must be at least 1, got {self.max_images}")


def _check_protocol_settings(settings: EvalSettings) -> None:
    if settings.max_candidates is not None and settings.max_candidates < 1:
        raise ValueError(f"max_candidates must be at least 1, got {settings.max_candidates}")
    short, longest = settings.test_short_edge, settings.test_max_size
    if short is not None and (short < 1 or longest < short):
        raise ValueError(f"test_short_edge must be positive and at most test_max_size, got {short} and {longest}")
    if short is not None and settings.source == "sam":
        raise ValueError("test_short_edge resizes the images of given regions; the 'sam' source finds its own")


def evaluate(settings: EvalSettings) -> dict[str, Any]:
    """Run the evaluation `settings` describes; return the metrics that were written to `out/metrics.json`.

    On ranks other than 0 of a multi-process launch that re-runs the script (strategy "ddp"), returns {}.
    """
    gt, plan = plan_run(settings)
    precision = settings.precision or ("bf16-mixed" if _uses_gpu(settings.accelerator) else "32-true")
    fabric = Fabric(
        accelerator=settings.accelerator, devices=settings.devices, strategy=settings.strategy, precision=precision
    )
    out = Path(settings.out)
    if fabric.global_rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        check_or_record(out, _identity(settings, plan, precision=precision), parts=PART_GLOB, restart=settings.restart)
        check_finished_images(out, plan.jobs, Path(settings.images))
    fabric.launch(recognise_shard, settings, plan)
    if fabric.global_rank != 0:
        return {}
    return merge_and_score(settings, plan, gt)


@dataclass
class RunPlan:
    """The checked inputs of a run: what every rank needs besides the settings (small: it is sent to each)."""

    vocabulary: list[str]  # cleaned class names, in category id order
    category_ids: list[int]
    jobs: list[ImageJob]
    max_dets: int | None  # detections kept per image
    gt_boxes_dropped: dict[str, int]  # ground-truth boxes left out by `clean_ground_truth`, by reason


def plan_run(settings: EvalSettings) -> tuple[dict[str, Any], RunPlan]:
    """Read and check every input file, raising a clear error before any model or process starts.

    Returns:
        The ground truth (for scoring, on rank 0 only) and the plan the ranks share.
    """
    config = _check_model_files(settings)
    gt, dropped = clean_ground_truth(load_annotations(settings.ann))
    if dropped:
        log.warning(
            "%s: %d ground-truth boxes can be neither recognised nor scored and are left out (%s), as validation "
            "during training leaves them out",
            settings.ann,
            sum(dropped.values()),
            dict(dropped),
        )
    categories = sorted(gt["categories"], key=lambda cat: cat["id"])
    # The names read as the model reads them (clip.class_names), as training read its data's.
    vocabulary = vocabulary_from_categories(categories, style=config.clip.class_names)
    category_ids = [cat["id"] for cat in categories]
    proposals = None
    if settings.source == "proposals":
        proposals = load_proposals(settings.proposals, gt, ann_path=settings.ann)
    jobs = image_jobs(gt, source=settings.source, proposals=proposals)[: settings.max_images]
    missing = check_images_exist(jobs, Path(settings.images), ann_path=settings.ann)
    if missing:
        log.warning(
            "%d of %d images are not in %s (first ids %s); they are skipped",
            len(missing),
            len(jobs),
            settings.images,
            missing[:5],
        )
    max_dets = settings.max_dets_per_image or protocol_max_dets(gt, fixed_ap=settings.fixed_ap)
    return gt, RunPlan(vocabulary=vocabulary, category_ids=category_ids, jobs=jobs, max_dets=max_dets,
                       gt_boxes_dropped=dict(dropped))  # fmt: skip


def _check_model_files(settings: EvalSettings) -> RegionSpotConfig:
    """Fail before any process starts on a wrong model YAML or adapter path; return the model config."""
    config = RegionSpotConfig.from_yaml(settings.config)
    adapter = settings.adapter or config.adapter.checkpoint
    if adapter is not None:
        require_file(
            adapter,
            what="adapter weights",
            hint="Pass the .safetensors file that training exported, or RegionSpot's model_final.pth.",
        )
    return config


def _uses_gpu(accelerator: str) -> bool:
    return accelerator in ("cuda", "gpu") or (accelerator == "auto" and torch.cuda.is_available())


def _identity(settings: EvalSettings, plan: RunPlan, *, precision: str) -> dict[str, Any]:
    """Everything the detections depend on: a resumed run must share it all (`check_or_record`)."""
    config = RegionSpotConfig.from_yaml(settings.config)
    if settings.adapter is not None:
        config.adapter.checkpoint = settings.adapter
    # Each image by the digest of the bytes its record was made from (`check_finished_images`): an image skipped
    # as unreadable may be mended and retried, but one already recognised may not change.
    data = {"ann": path_digest(settings.ann), "proposals": path_digest(settings.proposals),
            "images": str(Path(settings.images).resolve())}  # fmt: skip
    return run_identity(config_path=settings.config, config=config, data=data, settings=_result_settings(settings,
                        precision=precision, max_dets=plan.max_dets))  # fmt: skip


def check_finished_images(out: Path, jobs: list[ImageJob], images: Path) -> None:
    """Refuse to resume if an image recognised by the earlier run has other bytes now (its record's sha256)."""
    done = read_parts(out)[0]
    changed = []
    for job in jobs:
        recorded = done.get(job.image_id, {}).get("sha256")
        if recorded is not None:
            path = next((p for p in job.candidate_paths(images) if p.is_file()), None)
            if path is None or file_sha256(path) != recorded:
                changed.append(f"{job.file_name} (image {job.image_id})")
    if changed:
        raise ValueError(
            f"{out} holds part of another run: {len(changed)} images it recognised have changed or gone since "
            f"(first {', '.join(changed[:3])}); its records cannot be mixed with this run's. Add --restart to "
            "discard them and start afresh, or give another --out"
        )


def _result_settings(settings: EvalSettings, *, precision: str, max_dets: int | None) -> dict[str, Any]:
    """The settings that decide the detections (not where they go, nor how the work is spread)."""
    return {
        "source": settings.source,
        "masks": settings.masks,
        "top_k": settings.top_k,
        "activation": settings.activation,
        "max_dets_per_image": max_dets,
        "precision": precision,
        "seed": settings.seed,
        "regionspot_protocol": [
            settings.max_candidates,
            settings.test_short_edge,
            settings.test_max_size,
            settings.autocast_heads,
        ],
        "sam": [settings.sam_points_per_side, settings.sam_pred_iou_thresh, settings.sam_stability_score_thresh]
        if settings.source == "sam"
        else None,
    }


def recognise_shard(fabric: Any, settings: EvalSettings, plan: RunPlan) -> None:
    """One rank's work: every image not yet done whose position in the remaining list is this rank's."""
    from tqdm import tqdm

    out = Path(settings.out)
    done = finished_image_ids(out)
    fabric.barrier()  # every rank has read the same parts before any rank appends to them
    jobs = plan.jobs
    remaining = [job for job in jobs if job.image_id not in done]
    mine = remaining[fabric.global_rank :: fabric.world_size]
    if fabric.global_rank == 0 and done:
        log.info("resuming: %d images already done, %d to go", len(jobs) - len(remaining), len(remaining))
    if not mine:
        fabric.barrier()
        return
    recogniser = _ImageRecogniser(fabric, settings, plan)
    with PartWriter(part_file(out, fabric.global_rank)) as writer:
        show = settings.progress and fabric.global_rank == 0
        for job in tqdm(mine, desc=f"rank 0 of {fabric.world_size}", unit="img", disable=not show):
            writer.write(recogniser(job))
    fabric.barrier()  # rank 0 merges only once every rank has written its last image


class _ImageRecogniser:
    """Image file -> one JSON record: its detections, or why it was skipped."""

    def __init__(self, fabric: Any, settings: EvalSettings, plan: RunPlan) -> None:
        config = RegionSpotConfig.from_yaml(settings.config)
        if settings.adapter is not None:
            config.adapter.checkpoint = settings.adapter
        if config.adapter.checkpoint is None:
            log.warning("no adapter weights given (--adapter): the adapter is untrained and the AP is meaningless")
        torch.manual_seed(settings.seed)
        self.model = build_regionspot(config).to(fabric.device).eval()
        self.text = self.model.clip.encode_vocabulary(plan.vocabulary)  # (C, E), once for all images
        self.fabric = fabric
        self.settings = settings
        self.category_ids = plan.category_ids
        self.max_dets = plan.max_dets
        self.images = Path(settings.images)
        self.generator = None
        if settings.source == "sam":
            generator = MaskGeneratorSettings(
                points_per_side=settings.sam_points_per_side,
                pred_iou_thresh=settings.sam_pred_iou_thresh,
                stability_score_thresh=settings.sam_stability_score_thresh,
            )
            self.generator = build_mask_generator(self.model.sam.sam, generator)

    @torch.no_grad()
    def __call__(self, job: ImageJob) -> dict[str, Any]:
        rgb, problem, digest = _read_image(job, self.images)
        if rgb is None:
            log.warning("skipping image %s: %s", job.image_id, problem)
            return {"image_id": job.image_id, "skipped": problem}
        if job.size is not None and rgb.shape[:2] != job.size:
            log.warning(
                "image %s is %s on disk but %s in the annotations: its boxes may not fit",
                job.image_id,
                rgb.shape[:2],
                job.size,
            )
        boxes, box_scores, masks, sam_embedding = self._regions(job, rgb)
        keep = keep_boxes_inside(boxes, rgb.shape[:2])
        record: dict[str, Any] = {"image_id": job.image_id, "sha256": digest, "detections": [],
                                  "dropped_regions": int((~keep).sum())}  # fmt: skip
        if not keep.any():
            return record
        given_masks = masks[keep] if self.settings.masks and masks is not None else None
        box_scores = None if box_scores is None else box_scores[keep]
        record["detections"] = self._detections(job, rgb, clip_boxes(boxes[keep], rgb.shape[:2]), box_scores,
                                                given_masks, sam_embedding)  # fmt: skip
        return record

    def _detections(self, job: ImageJob, rgb: np.ndarray, boxes: torch.Tensor, box_scores, given_masks, sam_embedding):
        """The image's regions (xyxy boxes in its pixels, clipped) -> its detections, in those pixels."""
        settings = self.settings
        frame, frame_boxes = rgb, boxes
        if settings.test_short_edge is not None:  # RegionSpot's: SAM and CLIP see detectron2's resized image
            frame, resized = resize_short_edge(rgb, boxes.numpy(), settings.test_short_edge, settings.test_max_size)
            frame_boxes = torch.from_numpy(resized)
        # Prompts live in the frame; SAM's masks are upscaled straight to the image as stored.
        prepared = dataclasses.replace(self.model.preprocessor(frame), original_size=tuple(rgb.shape[:2]))
        with self.fabric.autocast():  # the heavy encoders run in the run's precision; the rest in float32 unless asked
            embedded = self.model.embed_images([prepared], sam_embeddings=sam_embedding)
        sam_masks = settings.masks and given_masks is None
        with self.fabric.autocast() if settings.autocast_heads else contextlib.nullcontext():
            if not settings.autocast_heads:
                embedded = dataclasses.replace(
                    embedded, sam=embedded.sam.float(), clip_tokens=embedded.clip_tokens.float()
                )
            prompts = RegionPrompts.check(frame.shape[:2], boxes=frame_boxes)
            frozen = self.model.frozen_features(embedded, [prompts], with_masks=sam_masks)[0]
            return detect_regions(
                self.model,
                frozen,
                text_embeddings=self.text,
                image_id=job.image_id,
                boxes=boxes,
                category_ids=self.category_ids,
                box_scores=box_scores,
                masks=given_masks,
                image=prepared if sam_masks else None,
                top_k=settings.top_k,
                activation=settings.activation,
                max_per_image=self.max_dets,
                max_candidates=settings.max_candidates,
            )

    def _regions(self, job: ImageJob, rgb: np.ndarray):
        """(boxes (N, 4) xyxy, box scores (N,) or None, masks (N, H, W) or None, SAM embedding or None)."""
        if self.generator is None:
            boxes = torch.tensor(job.boxes, dtype=torch.float32).reshape(-1, 4)
            scores = None if job.box_scores is None else torch.tensor(job.box_scores, dtype=torch.float32)
            return boxes, scores, None, None
        with self.fabric.autocast():
            boxes, scores, masks = sam_everything(self.generator, rgb)
        # The generator embedded this very image (one crop layer): reuse it rather than run SAM's encoder again.
        return boxes, scores, masks, self.generator.predictor.features


def _read_image(job: ImageJob, images: Path) -> tuple[np.ndarray | None, str, str]:
    """(the image as (H, W, 3) uint8 RGB, "", the sha256 of its file), or (None, why it cannot be read, "")."""
    path = next((p for p in job.candidate_paths(images) if p.is_file()), None)
    if path is None:
        return None, f"file not found (looked for {' and '.join(str(p) for p in job.candidate_paths(images))})", ""
    try:
        data = path.read_bytes()
        with Image.open(io.BytesIO(data)) as image:
            rgb = np.array(image.convert("RGB"))
    except (OSError, ValueError, Image.DecompressionBombError) as err:
        return None, f"cannot read {path}: {err}", ""
    if rgb.ndim != 3 or 0 in rgb.shape:
        return None, f"{path} has no pixels", ""
    return rgb, "", hashlib.sha256(data).hexdigest()


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


def read_parts(out: str | Path) -> tuple[dict[int, dict[str, Any]], dict[int, str]]:
    """All ranks' finished images: ({image id: its record}, {image id: why it was skipped}).

    A half-written last line (a killed run) is ignored; an image skipped once but done later counts as done.
    """
    done: dict[int, dict[str, Any]] = {}
    skipped: dict[int, str] = {}
    for path in sorted(Path(out).glob(PART_GLOB)):
        for record in finished_records(path):
            if "skipped" in record:
                skipped[record["image_id"]] = record["skipped"]
            else:
                done[record["image_id"]] = record
    return done, {k: v for k, v in skipped.items() if k not in done}


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


def finished_image_ids(out: str | Path) -> set[int]:
    return set(read_parts(out)[0])


def merge_and_score(settings: EvalSettings, plan: RunPlan, gt: dict[str, Any]) -> dict[str, Any]:
    """Rank 0, once every rank is done: the parts -> detections.json, skipped.json and metrics.json."""
    out, jobs = Path(settings.out), plan.jobs
    done, skipped = read_parts(out)
    job_ids = [job.image_id for job in jobs]
    records = [done[i] for i in job_ids if i in done]
    detections = [det for record in records for det in record["detections"]]
    write_json_atomic(out / DETECTIONS_FILE, detections, indent=None)
    skipped_list = [{"image_id": i, "reason": skipped[i]} for i in job_ids if i in skipped]
    write_json_atomic(out / SKIPPED_FILE, skipped_list, indent=1)
    if skipped_list:
        log.warning(
            "%d images could not be read (see %s); they and their ground truth are left out of the scoring, as "
            "validation during training leaves them out, so this AP is not comparable with published numbers",
            len(skipped_list),
            out / SKIPPED_FILE,
        )
    gt = subset_images(gt, {record["image_id"] for record in records})  # the images read, as validation scores
    metrics = score_results(gt, detections, fixed_ap=settings.fixed_ap)
    metrics["images"] = {
        "total": len(jobs),
        "evaluated": len(records),
        "skipped": len(skipped_list),
        "regions_dropped": sum(record["dropped_regions"] for record in records),  # no area inside the image
        "gt_boxes_dropped": plan.gt_boxes_dropped,
    }
    write_json_atomic(out / METRICS_FILE, metrics, indent=2)
    exact = " (ground-truth boxes: every box is exact, so AP = AP50 = AP75)" if settings.source == "gt" else ""
    print(f"box AP (%){exact}:\n" + format_metrics(metrics))
    if "segm" in metrics:
        print("mask AP (%), SAM's masks:\n" + format_metrics(metrics["segm"]))
    return metrics
