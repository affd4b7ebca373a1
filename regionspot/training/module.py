"""`RegionSpotModule`: trains the heads of a RegionSpot whose SAM and CLIP stay frozen.

The network comes from `regionspot.build.build_regionspot` and does the work (its one frozen-feature step, the
adapter, the scores, the caption and VQA losses), or a batch brings the frozen outputs from a feature cache
(`regionspot.data.feature_cache`) and that step is skipped. The losses combine as `modeling.objective.Objective`
says; `fault_tolerance.StepGuard` skips bad steps and counts unusable images; this file holds the steps, the
optimizer and schedule, validation with ground-truth boxes scored as evaluate.py scores them, and the checkpoint
contents (trained weights and the model config only).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_info

from regionspot.build import build_regionspot
from regionspot.config import RegionSpotConfig
from regionspot.data.detection import DetectionDataset
from regionspot.data.feature_cache import cached_frozen, check_backbones
from regionspot.evaluation.metric import DetectionAP
from regionspot.modeling.objective import Objective
from regionspot.modeling.preprocess import PreparedImage
from regionspot.modeling.regionspot import FrozenFeatures
from regionspot.training.datamodule import RegionDataModule, reads_images
from regionspot.training.export import CONFIG_KEY, HEAD_PARTS, checkpointed
from regionspot.training.fault_tolerance import FaultToleranceSettings, StepGuard
from regionspot.training.frozen_cache import FrozenOutputCache
from regionspot.training.schedule import OptimizerSettings, apply_settings, changed_settings, schedule_of
from regionspot.training.settings import SETTING_NAMES, BackboneSettings, check_heads, flat_settings, grouped_settings
from regionspot.training.validation import ValidationSettings, log_validation_ap, val_detections
from regionspot.vocabulary import read_class_names

log = logging.getLogger(__name__)


class RegionSpotModule(L.LightningModule):
    """Lightning wrapper around a RegionSpot built from a model config; its adapter, and its caption decoder when
    the config has a `caption:` section, train (SAM and CLIP stay frozen).

    It is handed its data's vocabularies and validation set: by `RegionDataModule` when the trainer has one
    (read in `setup`), or by `use_data` in a notebook. Class names are read as the model config's
    `clip.class_names` says. `hparams` hold every setting by the name a training YAML gives it under `model:`
    (`regionspot.training.settings`).

    Args:
        model_config: the model.
        optimizer: AdamW and its schedule.
        objective: the losses and their weights.
        backbones: how the frozen SAM and CLIP run.
        validation: how validation scores regions.
        fault_tolerance: when a run gives up on its data or its steps.
        train_adapter: False keeps the adapter as `adapter.checkpoint` gives it (no gradients, eval mode).
        seed: seeds dropout per step, so a resumed run draws the same masks as an uninterrupted one.
    """

    def __init__(
        self,
        *,
        model_config: RegionSpotConfig,
        optimizer: OptimizerSettings | None = None,
        objective: Objective | None = None,
        backbones: BackboneSettings | None = None,
        validation: ValidationSettings | None = None,
        fault_tolerance: FaultToleranceSettings | None = None,
        train_adapter: bool = True,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.optimizer_settings = optimizer or OptimizerSettings()
        self.objective = objective or Objective()
        self.backbones = backbones or BackboneSettings()
        self.validation = validation or ValidationSettings()
        check_heads(model_config, self.objective, self.backbones, train_adapter=train_adapter)
        # Plain data by name (readable with weights_only=True); the model config goes in as CONFIG_KEY.
        fault_tolerance = fault_tolerance or FaultToleranceSettings()
        groups = {"optimizer": self.optimizer_settings, "objective": self.objective, "backbones": self.backbones}
        groups |= {"validation": self.validation, "fault_tolerance": fault_tolerance}
        self.save_hyperparameters(flat_settings(**groups, train_adapter=train_adapter, seed=seed))
        self.model_config = model_config
        self.model = build_regionspot(model_config, image_encoders=self.backbones.image_encoders)
        if not train_adapter:
            self.model.freeze_adapter()
        self.vocabularies: dict[str, list[str]] = {}
        self.val_set: DetectionDataset | None = None
        self.val_ap: DetectionAP | None = None
        self.frozen_cache = FrozenOutputCache(self.backbones.frozen_cache_size)
        self.guard = StepGuard(fault_tolerance, heads=HEAD_PARTS)
        self._resumed_settings: dict[str, Any] | None = None  # the checkpoint's hyperparameters, on resume

    def configure_callbacks(self) -> list[L.Callback]:
        return [self.guard]

    # ----- setup -------------------------------------------------------------------------------------------------
    def setup(self, stage: str) -> None:
        self.model.cast_backbones(self.backbone_dtype())
        if self.backbones.compile_backbones:
            self.model.compile_backbones()
        self.frozen_cache.clear()  # the backbones' dtype may have changed
        data = self.trainer.datamodule
        if isinstance(data, RegionDataModule):  # any other data: call use_data before fitting
            image_readers = reads_images(data.train_configs, data.val_config)
            if image_readers and not self.model.image_encoders_built:
                raise ValueError(
                    f"model.image_encoders is false, but {', '.join(image_readers)} read images: give them a feature "
                    "cache (features: DIR, python -m regionspot.extract) or build the image encoders"
                )
            self.use_data(vocabularies=data.vocabularies, val_set=data.val_set)
            data.prepare_images_with(self.model.preprocessor)
            for folder, manifest in data.feature_manifests.items():
                check_backbones(manifest, self.model_config, where=folder)

    @classmethod
    def load_from_checkpoint(cls, checkpoint_path, **kwargs: Any) -> RegionSpotModule:
        """Lightning's loader, given the model config and the settings that the checkpoint holds as plain data
        (settings in `kwargs`, by name, win), and with the image encoders, whatever data the run trained on
        (`image_encoders=False` leaves them out)."""
        checkpoint = torch.load(checkpoint_path, map_location="cpu", weights_only=True)
        settings = {**checkpoint.get("hyper_parameters", {}), "image_encoders": True, **kwargs}
        kwargs = grouped_settings({k: v for k, v in settings.items() if k in SETTING_NAMES or k in kwargs})
        kwargs.setdefault("model_config", RegionSpotConfig.from_dict(checkpoint[CONFIG_KEY]))
        # train.py's checkpoints named LightningCLI's instantiator, which re-parses the hyperparameters and loses the
        # RegionSpotConfig given here (it built the default model): the module is built directly instead.
        kwargs["_instantiator"] = None
        return super().load_from_checkpoint(checkpoint_path, **kwargs)

    def backbone_dtype(self) -> torch.dtype:
        return self.backbones.dtype(self._trainer)

    def use_data(self, *, vocabularies: Mapping[str, Sequence[str]], val_set: DetectionDataset | None = None) -> None:
        """What the module needs of the data: each data set's class names as it stores them (batches name their
        data set; the names are read as `clip.class_names` says), and the validation set, whose ground truth
        validation scores against."""
        style = self.model_config.clip.class_names
        self.vocabularies.update({name: read_class_names(names, style=style) for name, names in vocabularies.items()})
        if val_set is None:
            return
        self.val_set = val_set
        if not val_set.vocabulary:  # a captions-only set (e.g. Visual Genome): validated by its caption loss
            return
        if val_set.ground_truth is None:
            raise ValueError("validation needs a COCO/LVIS-format data set (data.val.ann_file) to score against")
        self.vocabularies[val_set.name] = read_class_names(val_set.vocabulary, style=style)
        self.val_ap = DetectionAP(ground_truth=val_set.ground_truth).to(self.device)

    def class_embeddings(self, name: str) -> torch.Tensor:
        """(C, E) text embeddings of data set `name`'s vocabulary (the CLIP backbone's cache encodes each once)."""
        if name not in self.vocabularies:
            raise KeyError(f"no vocabulary for data set {name!r}; give it with use_data(vocabularies={{...}})")
        return self.model.clip.encode_vocabulary(self.vocabularies[name]).to(self.device)

    # ----- the frozen step -----------------------------------------------------------------------------------------
    def frozen_features(
        self, images: Sequence[PreparedImage | np.ndarray], boxes: Sequence[torch.Tensor]
    ) -> list[FrozenFeatures]:
        """The model's frozen-feature step for the boxes of a batch, from the frozen cache where it has them.

        Args:
            images: B prepared images, or B (H, W, 3) uint8 arrays (a data batch's; prepared here, on the CPU).
            boxes: B float tensors (N_i, 4), x1, y1, x2, y2 in that image's pixels.
        """
        return self.frozen_cache(images, boxes, self.model.frozen_features)

    def _batch_frozen(self, batch: dict[str, Any]) -> list[FrozenFeatures]:
        """A batch's frozen outputs: read from its feature cache (the backbones do not run), else computed."""
        if "frozen" in batch:
            return cached_frozen(batch, device=self.device, dtype=self.backbone_dtype())
        return self.frozen_features(batch["images"], batch["boxes"])

    def forward(
        self, images: Sequence[PreparedImage | np.ndarray], boxes: Sequence[torch.Tensor], dataset: str
    ) -> list[torch.Tensor]:
        """B images and their boxes -> B tensors (N_i, T, C) of logits over data set `dataset`'s vocabulary."""
        return self.model(self.frozen_features(images, boxes), self.class_embeddings(dataset))

    # ----- training ----------------------------------------------------------------------------------------------
    def on_fit_start(self) -> None:
        # Lightning keeps every module in the mode it was built in, and transformers builds an LLM in eval mode: what
        # trains must switch to training behaviour (an LLM's dropout, LoRA's dropout); RegionSpot.train keeps the
        # frozen parts in eval mode.
        self.model.train()
        counts = self.model.parameter_counts()
        trained = [part for part in HEAD_PARTS if any(p.requires_grad for p in self._part(part).parameters())]
        left_out = "" if self.model.image_encoders_built else ", their image encoders not built (feature caches)"
        rank_zero_info(
            f"training the {' and the '.join(trained).replace('_', ' ')} ({counts['trainable'] / 1e6:.2f}M "
            f"parameters); {'SAM, CLIP and the adapter' if 'adapter' not in trained else 'SAM and CLIP'} "
            f"({counts['frozen'] / 1e6:.1f}M) stay frozen, in eval mode{left_out}"
        )

    def _part(self, name: str) -> torch.nn.Module:
        return getattr(self.model, name) or torch.nn.Module()

    def transfer_batch_to_device(self, batch: Any, device: torch.device, dataloader_idx: int) -> Any:
        # Read on the CPU, a batch has nowhere to go there; Lightning's walk over it cost ~1 ms an item (docs/demo.md)
        if device.type == "cpu":
            return batch
        return super().transfer_batch_to_device(batch, device, dataloader_idx)

    def on_train_batch_start(self, batch: dict[str, Any], batch_idx: int) -> None:
        seed = np.random.SeedSequence([self.hparams.seed, self.global_step, self.global_rank]).generate_state(1)[0]
        torch.manual_seed(int(seed))  # dropout masks depend on the step, not on how the run got there

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        if not batch["images"]:  # every image of this batch was unreadable
            return self._zero_on_every_weight()
        frozen = self._batch_frozen(batch)
        train_adapter = self.hparams.train_adapter
        with torch.set_grad_enabled(train_adapter):
            features = self.model.region_features(frozen)
        names = train_adapter and self.objective.names_regions() and bool(self.vocabularies.get(batch["dataset"]))
        text = self.class_embeddings(batch["dataset"]) if names else None
        step = self.objective(self.model, frozen, features, batch, class_embeddings=text, train_adapter=train_adapter)
        # Under DDP every rank's backward must reach every trained weight (a zero through each); one device leaves out
        # those ~100 autograd nodes a step (~7% of the demo's): AdamW then leaves a weight no loss reached alone, as
        # StepGuard does for whole heads. A batch that no loss applies to steps on that zero alone.
        touch = self._distributed() or not step.weighted
        loss = sum(step.weighted, self._zero_on_every_weight() if touch else 0.0)
        batch_size = len(batch["images"])
        for name, value in step.terms.items():
            self.log(f"train/{name}_loss", value, prog_bar=name in ("caption", "vqa"), batch_size=batch_size)
        self.log("train/loss", loss, prog_bar=True, batch_size=batch_size)
        self.log("train/regions", float(sum(len(b) for b in batch["boxes"])), batch_size=batch_size)
        image_ids = list(batch.get("image_ids", ()))
        self.guard.record_step(loss=loss, reached=step.reached, dataset=batch["dataset"], image_ids=image_ids)
        return loss

    def _zero_on_every_weight(self) -> torch.Tensor:
        """A zero that touches every trained weight: a step that has nothing to learn keeps DDP ranks in step."""
        return sum(p.sum() * 0.0 for p in self.parameters() if p.requires_grad)

    def _distributed(self) -> bool:  # a process group, not the trainer: a notebook may call training_step without one
        return torch.distributed.is_available() and torch.distributed.is_initialized()

    def configure_optimizers(self):
        settings = self.hparams
        vqa = {id(p) for p in self.model.vqa.parameters()} if self.model.vqa is not None else set()
        params = [p for p in self.model.parameters() if p.requires_grad and id(p) not in vqa]
        groups = [{"params": params, "lr": settings.lr}]
        if vqa:
            vqa_params = [p for p in self.model.vqa.parameters() if p.requires_grad]
            groups.append({"params": vqa_params, "lr": settings.vqa_lr or settings.lr})
        # foreach: one kernel per step for all tensors; the per-tensor loop costs ~10 ms a step on CPU
        optimizer = torch.optim.AdamW(groups, lr=settings.lr, weight_decay=settings.weight_decay, foreach=True)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule_of(settings))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def on_train_start(self) -> None:
        """Settings given on resume apply: Lightning restored the checkpoint's optimizer and scheduler, rates and
        schedule included, which would otherwise win without a word."""
        changed = [] if self._resumed_settings is None else changed_settings(self._resumed_settings, self.hparams)
        if changed:
            apply_settings(self.lr_schedulers(), self.hparams)
            rank_zero_info(f"resumed at step {self.global_step} with {', '.join(changed)}: applied from this step")

    # ----- validation: ground-truth boxes as regions, scored exactly as evaluate.py scores them -------------------
    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        if self.val_set is None:
            raise ValueError("validation needs a validation set: data.val, or use_data(val_set=...)")
        skipped = sum((batch.get("skipped") or {}).values())  # unreadable: left out of val AP, as in evaluate.py
        if not batch["images"]:
            if self.val_ap is not None:
                self.val_ap.update([], batch["image_ids"], skipped=skipped)
            return
        frozen = self._batch_frozen(batch)
        features = self.model.region_features(frozen)
        if self.objective.learns_captions(self.model, batch):  # teacher-forced, as in training: comparable across runs
            caption = self.model.caption_loss(frozen, features, batch["captions"])
            self.log("val/caption_loss", caption, sync_dist=True, batch_size=len(batch["images"]))
        if self.objective.learns_answers(self.model, batch):
            answers = self.model.vqa_loss(frozen, features, batch["conversations"])
            self.log("val/vqa_loss", answers, sync_dist=True, batch_size=len(batch["images"]))
        if self.val_ap is not None:
            text = self.class_embeddings(batch["dataset"])
            detections = val_detections(self.model, batch, frozen, features, text, self.val_set, self.validation)
            self.val_ap.update(detections, batch["image_ids"], skipped=skipped)

    def on_validation_epoch_end(self) -> None:
        if self.val_ap is not None:
            log_validation_ap(self, self.val_ap)

    # ----- checkpoints: trainable weights and the model config only ----------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if checkpointed(self.model, k)}
        checkpoint[CONFIG_KEY] = self.model_config.to_dict()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        state = checkpoint["state_dict"]
        if not any(k.startswith("model.adapter.") for k in state):
            raise ValueError("this checkpoint holds no adapter weights (keys model.adapter.*)")
        frozen = {k: v for k, v in self.state_dict().items() if not checkpointed(self.model, k)}
        checkpoint["state_dict"] = {**frozen, **state}  # the frozen backbones come from the model config's files
        self._resumed_settings = checkpoint.get("hyper_parameters") or {}
