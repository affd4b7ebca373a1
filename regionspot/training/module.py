"""`RegionSpotModule`: trains the adapter of a RegionSpot whose SAM and CLIP stay frozen.

The module is thin: the network comes from `regionspot.build.build_regionspot`; this file holds the
batched forward over a data batch, the loss, the optimizer and schedule, LVIS-style validation and
the checkpoint contents (trainable weights and the model config only).
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import logging
from collections import Counter, OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
import yaml

from regionspot.build import build_regionspot
from regionspot.config import RegionSpotConfig
from regionspot.evaluation import region_detections, score_detections
from regionspot.modeling.losses import region_focal_loss
from regionspot.modeling.sam import SamPrompts
from regionspot.training.schedule import WarmupMultiStep

log = logging.getLogger(__name__)

TRAINABLE_PREFIX = "model.adapter."
CONFIG_KEY = "regionspot_model_config"
BACKBONE_PRECISIONS = ("auto", "float32", "bfloat16")


def resolve_model_config(
    model_config: str | Path | dict[str, Any], overrides: dict[str, Any] | None = None
) -> RegionSpotConfig:
    """A model YAML path (or its dict), with `overrides` merged section by section, as a RegionSpotConfig."""
    if isinstance(model_config, str | Path):
        path = Path(model_config)
        if not path.is_file():
            raise FileNotFoundError(f"model config not found: {path} (see configs/model/)")
        data = yaml.safe_load(path.read_text()) or {}
    else:
        data = copy.deepcopy(dict(model_config))
    for section, values in (overrides or {}).items():
        if not isinstance(values, dict):
            raise ValueError(f"model_overrides.{section} must be a mapping, e.g. {{adapter: {{dropout: 0.0}}}}")
        data[section] = {**(data.get(section) or {}), **values}
    return RegionSpotConfig.from_dict(data)


class RegionSpotModule(L.LightningModule):
    """Lightning wrapper around a RegionSpot built from a model config; only `model.adapter` trains.

    Args:
        model_config: a model YAML (configs/model/*.yaml) or the same content as a dict.
        model_overrides: per-section values merged over it, e.g. {"adapter": {"checkpoint": "stage1.safetensors"}}
            to start stage 2 from a stage-1 adapter.
        lr, weight_decay: AdamW settings (RegionSpot: 2.5e-5, 1e-4).
        warmup_steps, warmup_start_factor: linear warm-up (RegionSpot: 1000 steps).
        lr_milestones, lr_gamma: LR multiplied by `lr_gamma` at these steps (RegionSpot: 350k, 420k; 0.1).
        focal_alpha, focal_gamma: focal loss settings (0.25, 2).
        backbone_precision: dtype of the frozen SAM and CLIP: "auto" (bfloat16 under a bf16 precision,
            except FSDP, whose own mixed precision casts them), "float32" or "bfloat16".
        val_top_k: classes kept per region as detections during validation.
        seed: seeds dropout per step, so a resumed run draws the same masks as an uninterrupted one.
        frozen_cache_size: keep the frozen SAM and CLIP outputs of up to this many (image, boxes) pairs in
            memory (least recently used dropped first) and reuse them when the same pixels and boxes come
            again. Worth it when a small data set is seen for many epochs, as in the demo; augmentations
            that change pixels or boxes simply miss. 0 (default) turns it off.
    """

    def __init__(
        self,
        *,
        model_config: str | dict[str, Any] = "configs/model/regionspot_bl.yaml",
        model_overrides: dict[str, Any] | None = None,
        lr: float = 2.5e-5,
        weight_decay: float = 1e-4,
        warmup_steps: int = 1000,
        warmup_start_factor: float = 0.001,
        lr_milestones: Sequence[int] = (350_000, 420_000),
        lr_gamma: float = 0.1,
        focal_alpha: float = 0.25,
        focal_gamma: float = 2.0,
        backbone_precision: str = "auto",
        val_top_k: int = 10,
        seed: int = 0,
        frozen_cache_size: int = 0,
    ) -> None:
        super().__init__()
        if backbone_precision not in BACKBONE_PRECISIONS:
            raise ValueError(f"backbone_precision must be one of {BACKBONE_PRECISIONS}, got {backbone_precision!r}")
        if frozen_cache_size < 0:
            raise ValueError(f"frozen_cache_size must be >= 0, got {frozen_cache_size}")
        self.save_hyperparameters()
        self.model_config = resolve_model_config(model_config, model_overrides)
        self.model = build_regionspot(self.model_config)
        self.vocabularies: dict[str, list[str]] = {}
        self._class_embedding_cache: dict[str, torch.Tensor] = {}
        self._skipped: Counter = Counter()
        self._val_detections: list[dict[str, Any]] = []
        self._val_image_ids: list[int] = []
        self._frozen_cache: OrderedDict[bytes, FrozenOutputs] = OrderedDict()

    # ----- setup -------------------------------------------------------------------------------------------------
    def setup(self, stage: str) -> None:
        dtype = self.backbone_dtype()
        self.model.sam.to(dtype)
        self.model.clip.to(dtype)
        self.model.clip.clear_text_cache()
        self._class_embedding_cache.clear()
        self._frozen_cache.clear()  # the backbones' dtype may have changed

    def backbone_dtype(self) -> torch.dtype:
        choice = self.hparams.backbone_precision
        if choice != "auto":
            return getattr(torch, choice)
        trainer = self._trainer
        if trainer is None or "bf16" not in str(trainer.precision):
            return torch.float32
        is_fsdp = "FSDP" in type(trainer.strategy).__name__
        return torch.float32 if is_fsdp else torch.bfloat16

    def register_vocabulary(self, name: str, class_names: Sequence[str]) -> None:
        """Name the classes of data set `name` (batches say which data set they come from)."""
        self.vocabularies[name] = list(class_names)
        self._class_embedding_cache.pop(name, None)

    def class_embeddings(self, name: str) -> torch.Tensor:
        """(C, E) text embeddings of data set `name`'s vocabulary, encoded once per data set (chunked)."""
        if name not in self._class_embedding_cache:
            if name not in self.vocabularies:
                self.vocabularies.update(self._vocabularies_of_loaders())
            if name not in self.vocabularies:
                raise KeyError(f"no vocabulary for data set {name!r}; call register_vocabulary({name!r}, names)")
            names = self.vocabularies[name]
            log.info("encoding the %d class names of data set %s", len(names), name)
            with torch.inference_mode(False):  # a plain tensor, usable in training after a validation run
                self._class_embedding_cache[name] = self.model.clip.encode_vocabulary(names).float().clone()
        return self._class_embedding_cache[name].to(self.device)

    def _vocabularies_of_loaders(self) -> dict[str, list[str]]:
        found: dict[str, list[str]] = {}
        if self._trainer is None:
            return found
        loaders = [self.trainer.train_dataloader, self.trainer.val_dataloaders]
        for loader in loaders:
            for one in loader if isinstance(loader, list | tuple) else [loader]:
                dataset = getattr(one, "dataset", None)
                found.update(getattr(dataset, "vocabularies", None) or {})
                if hasattr(dataset, "vocabulary"):
                    found[dataset.name] = dataset.vocabulary
        return found

    # ----- forward -----------------------------------------------------------------------------------------------
    def region_features(self, images: Sequence[torch.Tensor], boxes: Sequence[torch.Tensor]):
        """Unit-norm region features and SAM's mask scores for the boxes of a batch of images.

        Args:
            images: B uint8 tensors (3, H_i, W_i).
            boxes: B float tensors (N_i, 4), x1, y1, x2, y2 in that image's pixels.

        Returns:
            (features, mask_scores): B tensors (N_i, T, E) and B tensors (N_i, T).
        """
        frozen = self.frozen_outputs(images, boxes)
        features = self.model.region_features(
            [f.region_tokens for f in frozen], torch.stack([f.clip_tokens for f in frozen])
        )
        return features, [f.mask_scores for f in frozen]

    def frozen_outputs(self, images: Sequence[torch.Tensor], boxes: Sequence[torch.Tensor]) -> list[FrozenOutputs]:
        """SAM's region tokens and mask scores and CLIP's token map per image, from the cache where it has them."""
        size = self.hparams.frozen_cache_size
        if not size:
            return self._run_backbones(images, boxes)
        keys = [_content_key(image, image_boxes) for image, image_boxes in zip(images, boxes, strict=True)]
        missing = [i for i, key in enumerate(keys) if key not in self._frozen_cache]
        if missing:
            computed = self._run_backbones([images[i] for i in missing], [boxes[i] for i in missing])
            # A CLIP map is a view of its batch's tensor; a copy lets eviction free it whatever the neighbours do.
            computed = [dataclasses.replace(o, clip_tokens=o.clip_tokens.clone()) for o in computed]
            self._frozen_cache.update(zip((keys[i] for i in missing), computed, strict=True))
        for key in keys:
            self._frozen_cache.move_to_end(key)
        outputs = [self._frozen_cache[key] for key in keys]
        while len(self._frozen_cache) > size:
            self._frozen_cache.popitem(last=False)
        return outputs

    @torch.no_grad()
    def _run_backbones(self, images: Sequence[torch.Tensor], boxes: Sequence[torch.Tensor]) -> list[FrozenOutputs]:
        sam, clip = self.model.sam, self.model.clip
        dtype = next(sam.parameters()).dtype
        sam_inputs, clip_inputs, prompts = [], [], []
        for image, image_boxes in zip(images, boxes, strict=True):
            size = tuple(image.shape[-2:])
            pixels = image[None].float()  # (1, 3, H, W) in 0..255
            resized = sam.transform.get_preprocess_shape(*size, sam.image_size)
            sam_pixels = F.interpolate(pixels, size=resized, mode="bilinear", antialias=True, align_corners=False)
            sam_inputs.append(sam.sam.preprocess(sam_pixels.round().clamp(0, 255)))  # normalised, padded to S x S
            clip_pixels = F.interpolate(
                pixels / 255.0, size=(clip.image_size,) * 2, mode="bicubic", align_corners=False
            )
            clip_inputs.append(clip.normalize(clip_pixels))
            prompts.append(sam.transform.apply_boxes_torch(image_boxes.float(), size).to(dtype))
        embeddings = sam.embed_images(torch.cat(sam_inputs).to(dtype))  # (B, C, h, w)
        regions = [sam.decode(embeddings[i : i + 1], SamPrompts(boxes=b)) for i, b in enumerate(prompts)]
        clip_tokens = clip.feature_map(torch.cat(clip_inputs).to(dtype))  # (B, L, D)
        return [
            FrozenOutputs(region_tokens=r.tokens, mask_scores=r.mask_scores.float(), clip_tokens=tokens)
            for r, tokens in zip(regions, clip_tokens, strict=True)
        ]

    def forward(self, images, boxes, dataset: str) -> list[torch.Tensor]:
        """B images and their boxes -> B tensors (N_i, T, C) of logits over data set `dataset`'s vocabulary."""
        features, _ = self.region_features(images, boxes)
        text = self.class_embeddings(dataset)
        return [self.model.classify(f, text) for f in features]

    # ----- training ----------------------------------------------------------------------------------------------
    def on_train_batch_start(self, batch: dict[str, Any], batch_idx: int) -> None:
        seed = np.random.SeedSequence([self.hparams.seed, self.global_step, self.global_rank]).generate_state(1)[0]
        torch.manual_seed(int(seed))  # dropout masks depend on the step, not on how the run got there

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        self._count_skipped(batch.get("skipped") or {})
        if not batch["images"]:  # every image of this batch was unreadable: a zero step keeps DDP ranks in step
            return sum(p.sum() * 0.0 for p in self.model.adapter.parameters())
        logits = self(batch["images"], batch["boxes"], batch["dataset"])
        scores = torch.cat([x.flatten(0, 1) for x in logits])  # (sum N_i * T, C)
        tokens = logits[0].shape[1]
        labels = torch.cat([y.repeat_interleave(tokens) for y in batch["labels"]])
        loss = region_focal_loss(scores, labels, alpha=self.hparams.focal_alpha, gamma=self.hparams.focal_gamma)
        self.log("train/loss", loss, prog_bar=True, batch_size=len(batch["images"]))
        self.log("train/regions", float(len(labels)), batch_size=len(batch["images"]))
        return loss

    def _count_skipped(self, skipped: dict[str, int]) -> None:
        if not skipped:
            return
        self._skipped.update(skipped)
        log.warning("skipped images in a batch: %s (so far on this rank: %s)", skipped, dict(self._skipped))
        self.log("data/skipped_images", float(sum(self._skipped.values())), reduce_fx="max")

    def configure_optimizers(self):
        params = [p for p in self.model.adapter.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=self.hparams.lr, weight_decay=self.hparams.weight_decay)
        schedule = WarmupMultiStep(
            warmup_steps=self.hparams.warmup_steps,
            warmup_start_factor=self.hparams.warmup_start_factor,
            milestones=self.hparams.lr_milestones,
            gamma=self.hparams.lr_gamma,
        )
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # ----- validation: LVIS-style AP with ground-truth boxes as regions ------------------------------------------
    def on_validation_epoch_start(self) -> None:
        self._val_detections, self._val_image_ids = [], []

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        dataset = self._val_dataset()
        self._val_image_ids.extend(batch["image_ids"])
        if not batch["images"]:
            return
        features, mask_scores = self.region_features(batch["images"], batch["boxes"])
        text = self.class_embeddings(batch["dataset"])
        for image_id, boxes, feats, scores in zip(
            batch["image_ids"], batch["boxes"], features, mask_scores, strict=True
        ):
            best = scores.argmax(dim=1)  # with multimask tokens, the one SAM trusts most (as the predictor does)
            probs = self.model.classify(feats[torch.arange(len(best)), best], text).softmax(-1)
            self._val_detections += region_detections(
                image_id=image_id,
                boxes=boxes,
                class_probs=probs,
                category_ids=dataset.category_ids,
                top_k=self.hparams.val_top_k,
            )

    def on_validation_epoch_end(self) -> None:
        if self.trainer.sanity_checking:
            return
        detections, image_ids = _gather((self._val_detections, self._val_image_ids))
        metrics: dict[str, float] | None = None
        if self.trainer.is_global_zero:
            ground_truth = _subset(self._val_dataset().ground_truth, set(image_ids))
            metrics = score_detections(ground_truth, detections)
        metrics = _broadcast(metrics)
        # -1 marks a metric without ground truth; the values are equal on every rank, so syncing changes nothing
        self.log_dict({f"val/{k}": v for k, v in metrics.items() if v >= 0}, sync_dist=True)
        self._val_detections, self._val_image_ids = [], []

    def _val_dataset(self):
        loader = self.trainer.val_dataloaders
        dataset = (loader[0] if isinstance(loader, list | tuple) else loader).dataset
        if getattr(dataset, "ground_truth", None) is None:
            raise ValueError("validation needs a COCO/LVIS-format data set (data.val.ann_file) to score against")
        return dataset

    # ----- checkpoints: trainable weights and the model config only ----------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k.startswith(TRAINABLE_PREFIX)}
        checkpoint[CONFIG_KEY] = self.model_config.to_dict()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        state = checkpoint["state_dict"]
        if not any(k.startswith(TRAINABLE_PREFIX) for k in state):
            raise ValueError("this checkpoint holds no adapter weights (keys model.adapter.*)")
        frozen = {k: v for k, v in self.state_dict().items() if not k.startswith(TRAINABLE_PREFIX)}
        checkpoint["state_dict"] = {**frozen, **state}  # the frozen backbones come from the model config's files


@dataclasses.dataclass(frozen=True)
class FrozenOutputs:
    """What the frozen backbones give for one image and its boxes; all the adapter reads."""

    region_tokens: torch.Tensor  # (N, T, C) SAM's region tokens
    mask_scores: torch.Tensor  # (N, T) SAM's predicted IoU per token
    clip_tokens: torch.Tensor  # (L, D) CLIP's token map


def _content_key(image: torch.Tensor, boxes: torch.Tensor) -> bytes:
    """A digest of the pixels and boxes (and their shapes): equal inputs, equal frozen outputs."""
    digest = hashlib.blake2b(digest_size=16)
    for tensor in (image, boxes.float()):
        data = tensor.detach().cpu().contiguous()
        digest.update(str(tuple(data.shape)).encode())
        digest.update(data.numpy().tobytes())
    return digest.digest()


def _subset(ground_truth: dict[str, Any], image_ids: set[int]) -> dict[str, Any]:
    """The ground truth of the evaluated images only, so that a partial validation is scored fairly."""
    return {
        **ground_truth,
        "images": [img for img in ground_truth["images"] if img["id"] in image_ids],
        "annotations": [a for a in ground_truth["annotations"] if a["image_id"] in image_ids],
    }


def _gather(local: tuple[list, list]) -> tuple[list, list]:
    """Concatenate every rank's (detections, image ids); without a process group, the local lists."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return local
    parts: list[Any] = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(parts, local)
    return [d for p in parts for d in p[0]], [i for p in parts for i in p[1]]


def _broadcast(value: Any) -> Any:
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return value
    box = [value]
    torch.distributed.broadcast_object_list(box, src=0)
    return box[0]
