"""`RegionSpotModule`: trains the heads of a RegionSpot whose SAM and CLIP stay frozen.

The module is thin: the network comes from `regionspot.build.build_regionspot` and does the work (its one
frozen-feature step, the adapter, the scores, the caption loss), or a batch brings the frozen outputs from a feature
cache (`regionspot.data.feature_cache`) and that step is skipped; this file holds how the losses combine, the
optimizer and schedule, validation with ground-truth boxes scored as evaluate.py scores them, the
checkpoint contents (trained weights and the model config only), and which steps are skipped (a NaN or
infinite loss or gradient: `regionspot.training.fault_tolerance`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import warnings
from collections import Counter, OrderedDict
from collections.abc import Mapping, Sequence
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from lightning.pytorch.utilities.warnings import PossibleUserWarning

from regionspot.build import build_regionspot
from regionspot.config import RegionSpotConfig
from regionspot.data.detection import DetectionDataset
from regionspot.data.feature_cache import cached_frozen, check_backbones
from regionspot.evaluation.detections import DEFAULT_ACTIVATION, DEFAULT_TOP_K, detect_regions, protocol_max_dets
from regionspot.evaluation.metric import DetectionAP
from regionspot.modeling.losses import (
    LOSS_REDUCTIONS,
    region_distillation_loss,
    region_focal_loss,
    region_softmax_loss,
)
from regionspot.modeling.preprocess import PreparedImage
from regionspot.modeling.regionspot import ACTIVATIONS, FrozenFeatures
from regionspot.training.datamodule import RegionDataModule, reads_images
from regionspot.training.fault_tolerance import NonFiniteSteps, last_checkpoint_path
from regionspot.training.schedule import apply_settings, changed_settings, schedule_of
from regionspot.transforms import prepare_prompts
from regionspot.vocabulary import read_class_names

log = logging.getLogger(__name__)

# The frozen backbones are in eval mode by design (the module says so once, at fit start), and the training
# output is not the place for product tips.
warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode", category=PossibleUserWarning)
logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(lambda record: "💡 Tip" not in record.getMessage())
# Lightning 2.6 asks torch's pytree in a way torch 2.14 deprecates, once per run: not ours to act on.
warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)", category=FutureWarning)

# The parts a checkpoint holds (the frozen backbones come from the model config's files): the adapter, also
# when it is kept frozen under a captioner (a checkpoint is then whole), and the caption decoder.
HEAD_PARTS = ("adapter", "caption_decoder", "vqa")
HEAD_PREFIXES = tuple(f"model.{part}." for part in HEAD_PARTS)
_SKIP_CHECK_EVERY = 50  # steps between checks of the skipped share (a collective on every rank)
CONFIG_KEY = "regionspot_model_config"
BAD_STEPS_KEY = "regionspot_bad_steps"
BACKBONE_PRECISIONS = ("auto", "float32", "bfloat16")


class RegionSpotModule(L.LightningModule):
    """Lightning wrapper around a RegionSpot built from a model config; its adapter, and its caption decoder when
    the config has a `caption:` section, train (SAM and CLIP stay frozen).

    It is handed its data's vocabularies and validation set: by `RegionDataModule` when the trainer has one
    (read in `setup`), or by `use_data` in a notebook. Class names are read as the model config's
    `clip.class_names` says.

    Args:
        model_config: the model (a model YAML or a packaged config's name on the command line; a
            `RegionSpotConfig` in Python). Its fields can be set one by one:
            `--model.model_config.adapter.dropout 0.0`; stage 2 starts from a stage-1 adapter through
            `adapter.checkpoint`.
        lr, weight_decay: AdamW settings (RegionSpot: 2.5e-5, 1e-4).
        vqa_lr: the VQA head's learning rate (its projector, and the LLM's weights that train); None: `lr`. An
            LLM's LoRA weights or projector usually want another rate than the recogniser's adapter.
        warmup_steps, warmup_start_factor: linear warm-up (RegionSpot: 1000 steps).
        lr_milestones, lr_gamma: LR multiplied by `lr_gamma` at these steps (RegionSpot: 350k, 420k; 0.1).
        focal_alpha, focal_gamma: focal loss settings (0.25, 2).
        focal_loss_weight, caption_loss_weight, vqa_loss_weight: the step's loss is focal_loss_weight x the focal
            loss (over the boxes with a class, of data sets with a vocabulary) + caption_loss_weight x the captions'
            next-token cross-entropy (over the boxes with a caption, when the model has a captioner) +
            vqa_loss_weight x the answers' next-token cross-entropy (over the images with a conversation, when the
            model has a VQA head).
        softmax_loss_weight: adds this x a softmax cross-entropy over the same scores as the focal loss
            (`region_softmax_loss`), which trains what evaluation's softmax ranks by: the true class above the
            others. 0 (default) is RegionSpot's recipe; the demo uses it (docs/demo.md).
        distill_loss_weight: adds this x ViLD's distillation of every region's features towards CLIP's own
            embedding of its box (`region_distillation_loss`, `RegionSpot.clip_region_embeddings`), on every batch
            the adapter trains on, labelled or not: it keeps what CLIP knows of names the training vocabulary lacks.
            0 (default) is RegionSpot's recipe; the demo uses it (docs/demo.md). Needs CLIP's visual tower.
        caption_regions_per_image: caption at most this many regions of each image per step, drawn at random (None:
            all); the caption loss then costs less per step while every caption is still met over the epochs.
        train_adapter: False keeps the adapter as `adapter.checkpoint` gives it (no gradients, eval mode), so
            that a captioner learns on a recogniser that stays exactly as it was; True trains it (jointly with
            the captioner when there is one).
        loss_reduction: how the boxes' losses (each summed over the vocabulary) make the step's loss: "boxes"
            (the mean over every box of the batch) or "images" (RegionSpot's: the mean over each image's boxes,
            summed over the images of the per-device batch); see `region_focal_loss`.
        backbone_precision: dtype of the frozen SAM, and of CLIP when the model config's `clip.precision` is
            "auto" (a fixed one, e.g. RegionSpot's float16, is kept): "auto" (bfloat16 under a bf16 precision,
            except FSDP, whose own mixed precision casts them), "float32" or "bfloat16".
        val_top_k, val_activation: classes kept per region and how they are scored during validation;
            the defaults are evaluate.py's, so validation AP equals evaluate.py's AP on the same data.
        seed: seeds dropout per step, so a resumed run draws the same masks as an uninterrupted one.
        frozen_cache_size: keep the frozen SAM and CLIP outputs of up to this many (image, boxes) pairs in
            memory (least recently used dropped first) and reuse them when the same pixels and boxes come
            again. Worth it when a small data set is seen for many epochs, as in the demo; augmentations
            that change pixels or boxes simply miss. 0 (default) turns it off. Misses are computed together, as
            without the cache; SAM decodes a batch's boxes jointly and their last bits (~5e-7) depend on the
            neighbours, so a run resumed with an empty cache matches an uninterrupted one to about that, not bit
            for bit (with the cache off, exactly).
        max_skipped_fraction: stop with an error when more than this share of the training images read
            (checked every 50 steps and at each epoch's end) could not be used, e.g. unreadable files.
        max_bad_steps_in_a_row: a step whose loss or gradients are NaN or infinite is skipped (no weight changes;
            counted as `train/skipped_steps`); after this many in a row the run saves its `last` checkpoint and
            stops with an error.
        compile_backbones: `torch.compile` SAM's and CLIP's image encoders (`RegionSpot.compile_backbones`) when
            fitting starts; the first steps of each image size pay the compilation.
        image_encoders: False builds the model without SAM's image encoder and CLIP's visual tower
            (`build_regionspot(..., image_encoders=False)`), for a run whose data, validation included, all come
            from feature caches;
            `train.py` sets it from the data (`reads_images`), and fitting refuses data that read images without
            them. A checkpoint loads with them (`load_from_checkpoint`), ready to read images.
    """

    def __init__(
        self,
        *,
        model_config: RegionSpotConfig,
        lr: float = 2.5e-5,
        vqa_lr: float | None = None,
        weight_decay: float = 1e-4,
        warmup_steps: int = 1000,
        warmup_start_factor: float = 0.001,
        lr_milestones: Sequence[int] = (350_000, 420_000),
        lr_gamma: float = 0.1,
        focal_alpha: float = 0.25,
        focal_gamma: float = 2.0,
        focal_loss_weight: float = 1.0,
        caption_loss_weight: float = 1.0,
        vqa_loss_weight: float = 1.0,
        softmax_loss_weight: float = 0.0,
        distill_loss_weight: float = 0.0,
        caption_regions_per_image: int | None = None,
        train_adapter: bool = True,
        loss_reduction: str = "boxes",
        backbone_precision: str = "auto",
        val_top_k: int = DEFAULT_TOP_K,
        val_activation: str = DEFAULT_ACTIVATION,
        seed: int = 0,
        frozen_cache_size: int = 0,
        max_skipped_fraction: float = 0.5,
        max_bad_steps_in_a_row: int = 20,
        compile_backbones: bool = False,
        image_encoders: bool = True,
    ) -> None:
        super().__init__()
        if backbone_precision not in BACKBONE_PRECISIONS:
            raise ValueError(f"backbone_precision must be one of {BACKBONE_PRECISIONS}, got {backbone_precision!r}")
        if loss_reduction not in LOSS_REDUCTIONS:
            raise ValueError(f"loss_reduction must be one of {LOSS_REDUCTIONS}, got {loss_reduction!r}")
        if frozen_cache_size < 0:
            raise ValueError(f"frozen_cache_size must be >= 0, got {frozen_cache_size}")
        if not 0.0 <= max_skipped_fraction <= 1.0:
            raise ValueError(f"max_skipped_fraction must lie in [0, 1], got {max_skipped_fraction}")
        if val_top_k < 1 or val_activation not in ACTIVATIONS:
            raise ValueError(f"val_top_k must be >= 1 and val_activation one of {ACTIVATIONS}")
        _check_loss_settings(
            weights=(focal_loss_weight, caption_loss_weight, vqa_loss_weight, softmax_loss_weight, distill_loss_weight),
            captioned=caption_regions_per_image,
        )
        if not train_adapter and model_config.adapter.checkpoint is None:
            raise ValueError(
                "train_adapter=False keeps the adapter as it is: give it trained weights (adapter.checkpoint)"
            )
        if distill_loss_weight and not image_encoders:
            raise ValueError("distill_loss_weight needs CLIP's visual tower (its final LayerNorm and projection): "
                             "image_encoders=False leaves it out")  # fmt: skip
        if not train_adapter and model_config.caption is None and model_config.vqa is None:
            raise ValueError("train_adapter=False with no caption: or vqa: section leaves nothing to train")
        # The model config goes into checkpoints as a plain dict (CONFIG_KEY), readable with weights_only=True.
        self.save_hyperparameters(ignore=["model_config"])
        self.model_config = model_config
        self.model = build_regionspot(model_config, image_encoders=image_encoders)
        if not train_adapter:
            self.model.freeze_adapter()
        self.vocabularies: dict[str, list[str]] = {}
        self.val_set: DetectionDataset | None = None
        self.val_ap: DetectionAP | None = None
        self._skipped: Counter = Counter()
        self._images_read = 0  # on this rank, kept or skipped
        self._frozen_cache: OrderedDict[bytes, FrozenFeatures] = OrderedDict()
        self._bad_steps = NonFiniteSteps(max_bad_steps_in_a_row)
        self._resumed_settings: dict[str, Any] | None = None  # the checkpoint's hyperparameters, on resume
        self._step_loss: torch.Tensor | None = None
        self._step_parts: set[str] = set()  # the HEAD_PARTS a loss reached since the last optimizer step
        self._step_images: tuple[str, list] = ("", [])  # the step's data set and image ids, for the log

    # ----- setup -------------------------------------------------------------------------------------------------
    def setup(self, stage: str) -> None:
        self.model.cast_backbones(self.backbone_dtype())
        if self.hparams.compile_backbones:
            self.model.compile_backbones()
        self._frozen_cache.clear()  # the backbones' dtype may have changed
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
        """Lightning's loader, given the model config that the checkpoint holds as a plain dict (`CONFIG_KEY`), and
        with the image encoders, whatever data the run trained on (`image_encoders=False` leaves them out)."""
        kwargs.setdefault("image_encoders", True)
        # train.py's checkpoints name LightningCLI's instantiator, which re-parses the hyperparameters and loses the
        # RegionSpotConfig given here (it built the default model): the module is built directly instead.
        kwargs.setdefault("_instantiator", None)
        if "model_config" not in kwargs:
            checkpoint = torch.load(checkpoint_path, map_location="cpu", weights_only=True)
            kwargs["model_config"] = RegionSpotConfig.from_dict(checkpoint[CONFIG_KEY])
        return super().load_from_checkpoint(checkpoint_path, **kwargs)

    def backbone_dtype(self) -> torch.dtype:
        choice = self.hparams.backbone_precision
        if choice != "auto":
            return getattr(torch, choice)
        trainer = self._trainer
        if trainer is None or "bf16" not in str(trainer.precision):
            return torch.float32
        is_fsdp = "FSDP" in type(trainer.strategy).__name__
        return torch.float32 if is_fsdp else torch.bfloat16

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
    def _prepared(self, images: Sequence[PreparedImage | np.ndarray]) -> list[PreparedImage]:
        preprocess = self.model.preprocessor
        return [image if isinstance(image, PreparedImage) else preprocess(image) for image in images]

    def frozen_features(
        self, images: Sequence[PreparedImage | np.ndarray], boxes: Sequence[torch.Tensor]
    ) -> list[FrozenFeatures]:
        """The model's frozen-feature step for the boxes of a batch, from the cache where it has them.

        Args:
            images: B prepared images, or B (H, W, 3) uint8 arrays (a data batch's; prepared here, on the CPU).
            boxes: B float tensors (N_i, 4), x1, y1, x2, y2 in that image's pixels.
        """
        size = self.hparams.frozen_cache_size
        if not size:
            return self._run_frozen(self._prepared(images), boxes)
        keys = [_content_key(image, image_boxes) for image, image_boxes in zip(images, boxes, strict=True)]
        missing = [i for i, key in enumerate(keys) if key not in self._frozen_cache]
        if missing:  # only these are preprocessed: a hit costs a digest of the raw pixels
            computed = self._run_frozen(self._prepared([images[i] for i in missing]), [boxes[i] for i in missing])
            # A CLIP map is a view of its batch's tensor; a copy lets eviction free it whatever the neighbours do.
            computed = [dataclasses.replace(f, clip_tokens=f.clip_tokens.clone()) for f in computed]
            self._frozen_cache.update(zip((keys[i] for i in missing), computed, strict=True))
        for key in keys:
            self._frozen_cache.move_to_end(key)
        outputs = [self._frozen_cache[key] for key in keys]
        while len(self._frozen_cache) > size:
            self._frozen_cache.popitem(last=False)
        return outputs

    def _batch_frozen(self, batch: dict[str, Any]) -> list[FrozenFeatures]:
        """A batch's frozen outputs: read from its feature cache (the backbones do not run), else computed."""
        if "frozen" in batch:
            return cached_frozen(batch, device=self.device, dtype=self.backbone_dtype())
        return self.frozen_features(batch["images"], batch["boxes"])

    def _run_frozen(self, images: Sequence[PreparedImage], boxes: Sequence[torch.Tensor]) -> list[FrozenFeatures]:
        sam = self.model.sam
        prompts = [
            prepare_prompts(sam, image_size=image.original_size, boxes=image_boxes)[0]
            for image, image_boxes in zip(images, boxes, strict=True)
        ]
        return self.model.frozen_features(images, prompts)

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

    def on_train_batch_start(self, batch: dict[str, Any], batch_idx: int) -> None:
        seed = np.random.SeedSequence([self.hparams.seed, self.global_step, self.global_rank]).generate_state(1)[0]
        torch.manual_seed(int(seed))  # dropout masks depend on the step, not on how the run got there

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        self._count_skipped(batch.get("skipped") or {}, kept=len(batch["images"]))
        # A zero that touches every trained weight: a step that has nothing to learn keeps DDP ranks in step.
        loss = sum(p.sum() * 0.0 for p in self.parameters() if p.requires_grad)
        if not batch["images"]:  # every image of this batch was unreadable
            return loss
        frozen = self._batch_frozen(batch)
        with torch.set_grad_enabled(self.hparams.train_adapter):
            features = self.model.region_features(frozen)
        batch_size = len(batch["images"])
        through_adapter = {"adapter"} if self.hparams.train_adapter else set()  # every head reads its features
        if self._learns_names(batch["dataset"]):
            focal, softmax = self._naming_losses(features, batch["labels"], batch["dataset"])
            loss = loss + self.hparams.focal_loss_weight * focal + self.hparams.softmax_loss_weight * softmax
            self._step_parts |= {"adapter"}
            self.log("train/focal_loss", focal, batch_size=batch_size)
            if self.hparams.softmax_loss_weight:
                self.log("train/softmax_loss", softmax, batch_size=batch_size)
        if self.hparams.distill_loss_weight and self.hparams.train_adapter:
            distill = self._distillation_loss(frozen, features)
            loss = loss + self.hparams.distill_loss_weight * distill
            self._step_parts |= {"adapter"}
            self.log("train/distill_loss", distill, batch_size=batch_size)
        if self._learns_captions(batch):
            caption = self.model.caption_loss(*self._captioned_regions(frozen, features, batch["captions"]))
            loss = loss + self.hparams.caption_loss_weight * caption
            self._step_parts |= {"caption_decoder"} | through_adapter
            self.log("train/caption_loss", caption, prog_bar=True, batch_size=batch_size)
        if self._learns_answers(batch):
            answers = self.model.vqa_loss(frozen, features, batch["conversations"])
            loss = loss + self.hparams.vqa_loss_weight * answers
            self._step_parts |= {"vqa"} | through_adapter
            self.log("train/vqa_loss", answers, prog_bar=True, batch_size=batch_size)
        self.log("train/loss", loss, prog_bar=True, batch_size=batch_size)
        self.log("train/regions", float(sum(len(b) for b in batch["boxes"])), batch_size=batch_size)
        self._step_loss, self._step_images = loss.detach(), (batch["dataset"], list(batch.get("image_ids", ())))
        return loss

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        """Skip the step (every rank alike) when the loss or a gradient is NaN or infinite: without gradients,
        AdamW leaves the weights and its moments as they were; the step still counts, so the data and the
        schedule go on as in any other run. Likewise the heads no loss reached on any rank since the last step
        lose their (zero) gradients, so AdamW leaves them alone instead of coasting on its momentum and decaying
        their weights: a VQA head trained on a third of the steps moves on those steps only."""
        trained = [p for p in self.parameters() if p.requires_grad]
        bad = self.trainer.strategy.reduce_boolean_decision(NonFiniteSteps.is_bad(self._step_loss, trained), all=False)
        self._step_loss = None
        self._drop_unreached_gradients()
        if bad:
            optimizer.zero_grad(set_to_none=True)
            log.warning(
                "step %d: NaN or infinite loss or gradients; the optimizer step is skipped (data set %s, images %s)",
                self.global_step,
                *self._step_images,
            )
        self._bad_steps.record(bad)
        self.log("train/skipped_steps", float(self._bad_steps.skipped), batch_size=1)

    def _drop_unreached_gradients(self) -> None:
        reached = torch.tensor([part in self._step_parts for part in HEAD_PARTS], device=self.device)
        reached = self.trainer.strategy.reduce(reached.float(), reduce_op="sum") > 0  # a loss on any rank counts
        self._step_parts = set()
        for part, was_reached in zip(HEAD_PARTS, reached.tolist(), strict=True):
            if not was_reached:
                for p in self._part(part).parameters():
                    p.grad = None

    def _captioned_regions(
        self, frozen: list[FrozenFeatures], features: list[torch.Tensor], captions: list[list[str]]
    ) -> tuple[list[FrozenFeatures], list[torch.Tensor], list[list[str]]]:
        """The regions this step captions: at most `caption_regions_per_image` of each image, at random."""
        limit = self.hparams.caption_regions_per_image
        if limit is None:
            return frozen, features, captions
        kept: tuple[list, list, list] = ([], [], [])
        for image_frozen, image_features, image_captions in zip(frozen, features, captions, strict=True):
            keep = torch.randperm(len(image_captions))[:limit].sort().values  # seeded per step (on_train_batch_start)
            kept[0].append(
                dataclasses.replace(
                    image_frozen,
                    region_tokens=image_frozen.region_tokens[keep],
                    mask_scores=image_frozen.mask_scores[keep],
                    region_boxes=image_frozen.region_boxes[keep],
                    mask_logits=None,
                )
            )
            kept[1].append(image_features[keep])
            kept[2].append([image_captions[i] for i in keep.tolist()])
        return kept

    def _learns_names(self, dataset: str) -> bool:
        """Whether this batch trains naming: the adapter trains, a naming loss counts, the data set has classes."""
        hparams = self.hparams
        weighted = hparams.focal_loss_weight > 0 or hparams.softmax_loss_weight > 0
        return hparams.train_adapter and weighted and bool(self.vocabularies.get(dataset))

    def _learns_captions(self, batch: dict[str, Any]) -> bool:
        return self.model.caption_decoder is not None and self.hparams.caption_loss_weight > 0 and "captions" in batch

    def _learns_answers(self, batch: dict[str, Any]) -> bool:
        return self.model.vqa is not None and self.hparams.vqa_loss_weight > 0 and any(batch.get("conversations") or ())

    def _naming_losses(
        self, features: list[torch.Tensor], labels: list[torch.Tensor], dataset: str
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """RegionSpot's focal loss over every token of the boxes that have a class (label -1: captions only), and the
        softmax cross-entropy over the same scores (zero when `softmax_loss_weight` is 0)."""
        text = self.class_embeddings(dataset)
        tokens = features[0].shape[1]
        named = [y >= 0 for y in labels]
        logits = [self.model.classify(x[keep], text) for x, keep in zip(features, named, strict=True)]
        scores = torch.cat([x.flatten(0, 1) for x in logits])  # (sum N_i * T, C)
        targets = torch.cat([y[keep].repeat_interleave(tokens) for y, keep in zip(labels, named, strict=True)])
        reduction = {"reduction": self.hparams.loss_reduction, "boxes_per_image": [len(x) * tokens for x in logits]}
        focal = region_focal_loss(
            scores, targets, alpha=self.hparams.focal_alpha, gamma=self.hparams.focal_gamma, **reduction
        )
        if not self.hparams.softmax_loss_weight:
            return focal, focal.new_zeros(())
        return focal, region_softmax_loss(scores, targets, **reduction)

    def _distillation_loss(self, frozen: list[FrozenFeatures], features: list[torch.Tensor]) -> torch.Tensor:
        """`region_distillation_loss` over every token of every region, each against its region's CLIP embedding."""
        tokens = features[0].shape[1]
        targets = self.model.clip_region_embeddings(frozen)
        return region_distillation_loss(
            torch.cat([x.flatten(0, 1) for x in features]),
            torch.cat([t.repeat_interleave(tokens, dim=0) for t in targets]),
            reduction=self.hparams.loss_reduction,
            boxes_per_image=[len(x) * tokens for x in features],
        )

    def _count_skipped(self, skipped: dict[str, int], kept: int) -> None:
        self._images_read += kept + sum(skipped.values())
        if not skipped:
            return
        self._skipped.update(skipped)
        log.warning("skipped images in a batch: %s (so far on this rank: %s)", skipped, dict(self._skipped))
        self.log("data/skipped_images", float(sum(self._skipped.values())), reduce_fx="max")

    def on_train_batch_end(self, outputs: Any, batch: dict[str, Any], batch_idx: int) -> None:
        if self.global_step % _SKIP_CHECK_EVERY == 0:
            self._stop_if_too_many_skipped()
        if self._bad_steps.too_many:
            self._stop_after_bad_steps()

    def _stop_after_bad_steps(self) -> None:
        """Save the run where a resume finds it (its weights are those before the bad steps), then stop."""
        path = last_checkpoint_path(self.trainer)
        self.trainer.save_checkpoint(path)
        count, step, lr = self._bad_steps.in_a_row, self.global_step, self.hparams.lr
        raise RuntimeError(
            f"the {count} optimizer steps before step {step} all had a NaN or infinite loss or gradient and were "
            f"skipped (model.max_bad_steps_in_a_row={self.hparams.max_bad_steps_in_a_row}): stopping. The weights "
            f"are those before them; the run is saved in {path}. Check the data those steps read (the warnings name "
            f"their images), then rerun the same command with a lower rate and --ckpt_path {path} (e.g. "
            f"--model.lr={lr / 10:g}): a resumed run takes the rate, schedule and weight decay it is given"
        )

    def on_train_epoch_end(self) -> None:
        self._stop_if_too_many_skipped()

    def _stop_if_too_many_skipped(self) -> None:
        """Stop (on every rank at once) when more than `max_skipped_fraction` of the images read were unusable."""
        fraction = sum(self._skipped.values()) / max(self._images_read, 1)
        too_many = self._images_read > 0 and fraction > self.hparams.max_skipped_fraction
        if self.trainer.strategy.reduce_boolean_decision(too_many, all=False):
            raise RuntimeError(
                f"{fraction:.0%} of the {self._images_read} training images read on this rank could not be used "
                f"({dict(self._skipped)}), more than model.max_skipped_fraction={self.hparams.max_skipped_fraction}: "
                "check data.train.<name>.image_dir and the files it names (the log names each skipped one)"
            )

    def configure_optimizers(self):
        vqa = {id(p) for p in self.model.vqa.parameters()} if self.model.vqa is not None else set()
        params = [p for p in self.model.parameters() if p.requires_grad and id(p) not in vqa]
        groups = [{"params": params, "lr": self.hparams.lr}]
        if vqa:
            vqa_params = [p for p in self.model.vqa.parameters() if p.requires_grad]
            groups.append({"params": vqa_params, "lr": self.hparams.vqa_lr or self.hparams.lr})
        # foreach: one kernel per step for all tensors; the per-tensor loop costs ~10 ms a step on CPU
        optimizer = torch.optim.AdamW(groups, lr=self.hparams.lr, weight_decay=self.hparams.weight_decay, foreach=True)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule_of(self.hparams))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

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
        if self._learns_captions(batch):  # teacher-forced, as in training: cheap, and comparable across runs
            caption = self.model.caption_loss(frozen, features, batch["captions"])
            self.log("val/caption_loss", caption, sync_dist=True, batch_size=len(batch["images"]))
        if self._learns_answers(batch):
            answers = self.model.vqa_loss(frozen, features, batch["conversations"])
            self.log("val/vqa_loss", answers, sync_dist=True, batch_size=len(batch["images"]))
        if self.val_ap is None:
            return
        text = self.class_embeddings(batch["dataset"])
        detections: list[dict[str, Any]] = []
        for image_id, boxes, image_frozen, image_features in zip(
            batch["image_ids"], batch["boxes"], frozen, features, strict=True
        ):
            detections += detect_regions(
                self.model,
                image_frozen,
                features=image_features,
                text_embeddings=text,
                image_id=image_id,
                boxes=boxes,
                category_ids=self.val_set.category_ids,
                top_k=self.hparams.val_top_k,
                activation=self.hparams.val_activation,
                max_per_image=protocol_max_dets(self.val_set.ground_truth),
            )
        self.val_ap.update(detections, batch["image_ids"], skipped=skipped)

    def on_validation_epoch_end(self) -> None:
        if self.val_ap is None:
            return
        if self.trainer.sanity_checking:
            self.val_ap.reset()
            return
        metrics = self.val_ap.compute()  # every rank's detections, the same numbers on every rank
        self.val_ap.reset()
        if metrics["skipped_images"] or metrics["gt_boxes_dropped"]:
            rank_zero_warn(
                f"validation left out {metrics['skipped_images']:.0f} unreadable images with their ground truth and "
                f"{self.val_ap.gt_boxes_dropped} ground-truth boxes no detector can be scored on (evaluate.py's rule)"
            )
        # -1 marks a metric without ground truth; the values are equal on every rank, so syncing changes nothing
        scores = {f"val/{k}": v for k, v in metrics.items() if v >= 0}
        ap = scores.pop("val/AP", None)
        self.log_dict(scores, sync_dist=True)
        if ap is not None:  # the headline number, on the progress bar too
            self.log("val/AP", ap, prog_bar=True, sync_dist=True)

    # ----- checkpoints: trainable weights and the model config only ----------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if self._checkpointed(k)}
        checkpoint[CONFIG_KEY] = self.model_config.to_dict()
        checkpoint[BAD_STEPS_KEY] = self._bad_steps.state_dict()

    def _checkpointed(self, key: str) -> bool:
        """Whether a checkpoint holds this weight: the heads' do, except a VQA head's LLM weights that do not train
        (a frozen LLM comes from its folder, as the backbones come from theirs)."""
        if key.startswith("model.vqa."):
            return key.removeprefix("model.vqa.") in self.model.vqa.trained_state_dict()
        return key.startswith(HEAD_PREFIXES)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        state = checkpoint["state_dict"]
        if not any(k.startswith(HEAD_PREFIXES[0]) for k in state):
            raise ValueError("this checkpoint holds no adapter weights (keys model.adapter.*)")
        frozen = {k: v for k, v in self.state_dict().items() if not self._checkpointed(k)}
        checkpoint["state_dict"] = {**frozen, **state}  # the frozen backbones come from the model config's files
        if BAD_STEPS_KEY in checkpoint:
            self._bad_steps.load_state_dict(checkpoint[BAD_STEPS_KEY])
            self._bad_steps.in_a_row = 0  # a resumed run (a lower lr, mended data) gets the whole allowance again
        self._resumed_settings = checkpoint.get("hyper_parameters") or {}

    def on_train_start(self) -> None:
        """Settings given on resume apply: Lightning restored the checkpoint's optimizer and scheduler, rates and
        schedule included, which would otherwise win without a word."""
        changed = [] if self._resumed_settings is None else changed_settings(self._resumed_settings, self.hparams)
        if changed:
            apply_settings(self.lr_schedulers(), self.hparams)
            rank_zero_info(f"resumed at step {self.global_step} with {', '.join(changed)}: applied from this step")


def _check_loss_settings(*, weights: tuple[float, ...], captioned: int | None) -> None:
    if min(weights) < 0:
        raise ValueError("the focal, caption, vqa, softmax and distill loss weights must be >= 0")
    if captioned is not None and captioned < 1:
        raise ValueError(f"caption_regions_per_image must be >= 1 or null, got {captioned}")


def _content_key(image: PreparedImage | np.ndarray, boxes: torch.Tensor) -> bytes:
    """A digest of the pixels and boxes (and their shapes): equal inputs, equal frozen outputs."""
    pixels = (image.sam_pixels, image.clip_pixels) if isinstance(image, PreparedImage) else (torch.from_numpy(image),)
    digest = hashlib.blake2b(digest_size=16)
    for tensor in (*pixels, boxes.float()):
        data = tensor.detach().cpu().contiguous()
        digest.update(str(tuple(data.shape)).encode())
        digest.update(data.numpy().tobytes())
    return digest.digest()
