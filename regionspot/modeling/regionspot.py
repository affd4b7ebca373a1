"""RegionSpot: frozen SAM regions + frozen CLIP map, fused by a small trained adapter, scored against text."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange, repeat
from torch import nn
from torch.nn.utils.rnn import pad_sequence

from regionspot.checks import ACTIVATIONS
from regionspot.modeling.adapter import RegionFusionAdapter, box_patch_coverage, box_token_mask
from regionspot.modeling.caption_decoder import CaptionDecoder
from regionspot.modeling.caption_tokenizer import CaptionTokenizer
from regionspot.modeling.clip import ClipBackbone
from regionspot.modeling.preprocess import ImagePreprocessor, PreparedImage
from regionspot.modeling.prompts import RegionPrompts
from regionspot.modeling.region_lm import RegionLanguageModel, Turn
from regionspot.modeling.sam import SamPrompts, SamRegionEncoder

# Regions whose masks are upscaled at once: SAM upsamples to its full input size (1024^2 floats per region) first.
_MASK_UPSCALE_CHUNK = 32
# Region features are divided by (norm + this), RegionSpot's formula: equal to F.normalize within float32
# rounding for any feature of norm >= 1, and RegionSpot's released adapters then score exactly as they did.
_FEATURE_NORM_EPS = 1e-7


BOX_COLUMNS = 4  # the last columns of a region condition: where the region is (x1, y1, x2, y2)


def region_condition_dim(sam: SamRegionEncoder, clip: ClipBackbone) -> int:
    """The width of `RegionSpot.region_condition`'s rows: CLIP's embedding, SAM's token and the region's box."""
    return clip.embed_dim + sam.token_dim + BOX_COLUMNS


def region_condition_rows(
    features: torch.Tensor, tokens: torch.Tensor, mask_scores: torch.Tensor, boxes: torch.Tensor
) -> torch.Tensor:
    """`RegionSpot.region_condition` of R regions given as tensors (what the ONNX condition graph exports).

    Args:
        features: (R, T, E) region features; tokens: (R, T, C) SAM's region tokens; mask_scores: (R, T) SAM's
            predicted IoUs, whose largest picks each region's token; boxes: (R, 4) its extent, fractions of the image.

    Returns:
        (R, E + C + 4) float32.
    """
    best = mask_scores.argmax(dim=1)
    rows = torch.arange(best.shape[0], device=best.device)  # not len(): torch.export would fix R at the example's
    fused = features[rows, best].float()  # (R, E)
    tokens = tokens[rows, best].float()  # (R, C)
    where = boxes.float() * 2 - 1  # (R, 4)
    return torch.cat([F.layer_norm(part, part.shape[-1:]) for part in (fused, tokens)] + [where], dim=-1)


@dataclass
class ImageEmbeddings:
    """What the frozen image encoders give for a batch of B images, before any prompt."""

    sam: torch.Tensor  # (B, C, h, w) SAM's image embeddings
    clip_tokens: torch.Tensor  # (B, L, D) CLIP's token maps, CLS first
    images: list[PreparedImage]  # the inputs, for their sizes (prompt frames, mask upscaling)


@dataclass
class FrozenFeatures:
    """What the frozen backbones give for one image and its N prompts: everything the adapter and the heads read."""

    region_tokens: torch.Tensor  # (N, T, C) SAM's region tokens (T = 3 with multimask, else 1)
    mask_scores: torch.Tensor  # (N, T) float32, SAM's predicted IoU of each token's mask
    clip_tokens: torch.Tensor  # (L, D) CLIP's token map of the image
    region_boxes: torch.Tensor  # (N, 4) float32 where each prompt puts its region: x1, y1, x2, y2 / image size
    mask_logits: torch.Tensor | None = None  # (N, T, 4h, 4w) SAM's low-resolution masks, when asked for

    def select(self, regions: torch.Tensor | np.ndarray) -> FrozenFeatures:
        """Some of the N regions (`regions`: their indices, or a boolean mask over them); the CLIP map is kept."""
        return replace(
            self,
            region_tokens=self.region_tokens[regions],
            mask_scores=self.mask_scores[regions],
            region_boxes=self.region_boxes[regions],
            mask_logits=None if self.mask_logits is None else self.mask_logits[regions],
        )

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> FrozenFeatures:
        """On `device`, with the backbones' outputs (region tokens, CLIP map, mask logits) in `dtype` when given
        (e.g. the run's backbone dtype); mask scores and region boxes keep theirs (float32)."""
        return replace(
            self,
            region_tokens=self.region_tokens.to(device, dtype),
            mask_scores=self.mask_scores.to(device),
            clip_tokens=self.clip_tokens.to(device, dtype),
            region_boxes=self.region_boxes.to(device),
            mask_logits=None if self.mask_logits is None else self.mask_logits.to(device, dtype),
        )


@dataclass
class ScoredRegions:
    """`RegionSpot.score_regions` for N regions of one image and K classes (SAM's most trusted token per region)."""

    probs: torch.Tensor  # (N, K) class probabilities (softmax over the vocabulary) or sigmoid scores
    mask_scores: torch.Tensor  # (N,) SAM's predicted IoU of the chosen token's mask
    masks: torch.Tensor | None = None  # (N, H, W) bool at the original image size (CPU), when asked for


class RegionSpot(nn.Module):
    """The region model: SAM and CLIP stay frozen and in eval mode; the adapter, and the captioner on top of it
    when there is one, are what train.

    Args:
        sam: the frozen SAM region encoder.
        clip: the frozen CLIP backbone.
        adapter: the fusion adapter, sized to `sam.token_dim`, `clip.width` and `clip.embed_dim`.
        caption_decoder: the region captioner (its `condition_dim` = `region_condition_dim(sam, clip)`), or None.
        caption_tokenizer: the captioner's vocabulary (given with `caption_decoder`).
        caption_beams: beams of its decoding (1: greedy).
        vqa: the region VQA head (an LLM and its region projector, `condition_dim` as the captioner's), or None.
    """

    def __init__(
        self,
        *,
        sam: SamRegionEncoder,
        clip: ClipBackbone,
        adapter: RegionFusionAdapter,
        caption_decoder: CaptionDecoder | None = None,
        caption_tokenizer: CaptionTokenizer | None = None,
        caption_beams: int = 1,
        vqa: RegionLanguageModel | None = None,
    ) -> None:
        super().__init__()
        if (caption_decoder is None) != (caption_tokenizer is None):
            raise ValueError("a caption decoder needs its tokenizer, and a tokenizer its decoder")
        self.sam = sam
        self.clip = clip
        self.adapter = adapter
        self.caption_decoder = caption_decoder
        self.caption_tokenizer = caption_tokenizer
        self.caption_beams = caption_beams
        self.vqa = vqa
        self._frozen_parts = ["sam", "clip"]
        self.freeze_backbones()

    @property
    def preprocessor(self) -> ImagePreprocessor:
        """The one image preprocessing (CPU half); see `regionspot.modeling.preprocess`."""
        return ImagePreprocessor(
            sam_size=self.sam.image_size, clip_size=self.clip.image_size, clip_resize=self.clip.resize
        )

    @property
    def image_encoders_built(self) -> bool:
        """False when the build left SAM's image encoder and CLIP's visual tower out (`build_regionspot(...,
        image_encoders=False)`): the model then reads cached frozen outputs only."""
        return self.sam.image_encoder_built and self.clip.image_encoder_built

    def freeze_backbones(self) -> None:
        for backbone in (self.sam, self.clip):
            backbone.requires_grad_(False)
            backbone.eval()

    def freeze_adapter(self) -> None:
        """Keep the adapter as it is (e.g. while a captioner learns on top of it): no gradients, eval mode."""
        self.adapter.requires_grad_(False)
        self.adapter.eval()
        self._frozen_parts.append("adapter")

    def cast_backbones(self, dtype: torch.dtype) -> None:
        """Put SAM, and CLIP unless its config fixed its precision (`clip.fixed_precision`), in `dtype`: the run's
        choice for the backbones, which a fixed `clip.precision` (e.g. RegionSpot's float16) overrides."""
        self.sam.to(dtype)
        if not self.clip.fixed_precision:
            self.clip.to(dtype)
        self.clip.clear_text_cache()  # the text embeddings came from the weights as they were

    def compile_backbones(self, **options: Any) -> None:
        """Compile the frozen image encoders, nearly all of the compute, with `torch.compile` (`options`: its
        keyword arguments, e.g. `mode="max-autotune"`): SAM's image encoder whole, and CLIP's visual blocks one by
        one (`feature_map` stops before CLIP's pooling, so it runs the blocks itself; the blocks share one compiled
        graph). The first batch of each shape pays the compilation; the adapter and the heads stay eager. Encoders
        the build left out are skipped."""
        if self.sam.image_encoder_built:
            self.sam.sam.image_encoder.compile(**options)
        if self.clip.image_encoder_built:
            for block in self.clip.model.visual.transformer.resblocks:
                block.compile(**options)

    def train(self, mode: bool = True) -> RegionSpot:
        super().train(mode)
        for part in self._frozen_parts:  # frozen parts never switch to training behaviour (dropout, drop-path)
            getattr(self, part).eval()
        return self

    @torch.no_grad()
    def embed_images(
        self, images: Sequence[PreparedImage], *, sam_embeddings: torch.Tensor | None = None
    ) -> ImageEmbeddings:
        """SAM's image encoder and CLIP's token map over a batch of prepared images of any sizes, once each.

        Args:
            images: B prepared images (`preprocessor`).
            sam_embeddings: (B, C, h, w) SAM's embeddings of these very images, if already computed (e.g. by
                SAM's automatic mask generator, which embeds with the same preprocessing), so that SAM's image
                encoder does not run twice.
        """
        if not images:
            raise ValueError("embed_images needs at least one image")
        sam = sam_embeddings
        if sam is None:
            sam = self.sam.embed_images(self.sam.normalize_and_pad([image.sam_pixels for image in images]))
        # Each image to the device first: from pinned memory (a GPU DataLoader's) the copies do not block.
        pixels = torch.stack([image.clip_pixels.to(self.clip.device, non_blocking=True) for image in images])
        clip_tokens = self.clip.feature_map(self.clip.normalize(pixels))
        return ImageEmbeddings(sam=sam, clip_tokens=clip_tokens, images=list(images))

    @torch.no_grad()
    def decode_regions(
        self, embedded: ImageEmbeddings, prompts: Sequence[SamPrompts], *, with_masks: bool = False
    ) -> list[FrozenFeatures]:
        """SAM's region tokens for the prompts of every embedded image, decoded together (`SamRegionEncoder.decode`).

        Args:
            embedded: `embed_images`' output for B images.
            prompts: B prompt sets in SAM's frame (`regionspot.transforms.prepare_prompts`).
            with_masks: also keep SAM's low-resolution mask logits; off, the decoder skips mask upscaling.
        """
        regions = self.sam.decode(embedded.sam, list(prompts), with_masks=with_masks)
        return [
            FrozenFeatures(
                region_tokens=r.tokens,
                mask_scores=r.mask_scores.float(),
                clip_tokens=tokens,
                region_boxes=p.extents(image.sam_input_size, square_size=self.sam.image_size).to(r.tokens.device),
                mask_logits=r.mask_logits,
            )
            for r, tokens, p, image in zip(regions, embedded.clip_tokens, prompts, embedded.images, strict=True)
        ]

    def frozen_features(
        self,
        images: Sequence[PreparedImage | np.ndarray] | ImageEmbeddings,
        prompts: Sequence[RegionPrompts | SamPrompts | torch.Tensor | np.ndarray],
        *,
        with_masks: bool = False,
    ) -> list[FrozenFeatures]:
        """The one frozen-feature step, under every caller: B images and their prompts -> B `FrozenFeatures`.

        SAM's image encoder and CLIP run once per image, batched; SAM's mask decoder runs over the prompts of
        all images together. Nothing here trains, so it runs without gradients.

        Args:
            images: B prepared images (`preprocessor`), B (H, W, 3) uint8 RGB arrays (prepared here), or their
                `embed_images` output (an image embedded once for many requests, or embedded apart).
            prompts: per image, its `RegionPrompts` (in the pixels of the image they were checked against), its
                (N, 4) x1, y1, x2, y2 boxes in its pixels (checked here, as `RegionPrompts.check`), or `SamPrompts`
                already in SAM's frame.
            with_masks: also keep SAM's low-resolution mask logits; off, the decoder skips mask upscaling.
        """
        if isinstance(images, ImageEmbeddings):
            embedded, prepared = images, images.images
        else:
            preprocess = self.preprocessor
            embedded, prepared = None, [i if isinstance(i, PreparedImage) else preprocess(i) for i in images]
        if len(prepared) != len(prompts):
            raise ValueError(f"{len(prepared)} images but {len(prompts)} prompt sets")
        sam_prompts = [self._sam_prompts(p, image) for p, image in zip(prompts, prepared, strict=True)]
        if embedded is None:
            embedded = self.embed_images(prepared)
        return self.decode_regions(embedded, sam_prompts, with_masks=with_masks)

    def _sam_prompts(
        self, prompts: RegionPrompts | SamPrompts | torch.Tensor | np.ndarray, image: PreparedImage
    ) -> SamPrompts:
        if isinstance(prompts, SamPrompts):
            return prompts
        if not isinstance(prompts, RegionPrompts):
            prompts = RegionPrompts.check(image.original_size, boxes=prompts)
        return prompts.sam_prompts(self.sam)

    def region_features(self, frozen: Sequence[FrozenFeatures]) -> list[torch.Tensor]:
        """Fuse each image's regions with its CLIP map: the adapter over a batch of B images.

        Args:
            frozen: B images' `FrozenFeatures` (their N_i may differ).

        Returns:
            B tensors (N_i, T, E) of unit-norm region features (divided by their norm + 1e-7, as RegionSpot).
        """
        if not frozen:
            raise ValueError("region_features needs at least one image")
        if any(f.region_tokens.ndim != 3 or f.region_tokens.shape[0] == 0 for f in frozen):
            raise ValueError("each image needs region tokens of shape (N >= 1, T, C)")
        tokens_per_region = frozen[0].region_tokens.shape[1]
        queries = [rearrange(f.region_tokens, "n t c -> (n t) c") for f in frozen]
        counts = [len(q) for q in queries]
        padded = pad_sequence(queries, batch_first=True)  # (B, Q, C)
        padding = (
            torch.arange(padded.shape[1], device=padded.device)[None]
            >= torch.tensor(counts, device=padded.device)[:, None]
        )  # (B, Q) True at padding
        clip_tokens = torch.stack([f.clip_tokens for f in frozen])  # (B, L, D)
        boxes = pad_sequence(
            [repeat(f.region_boxes.float(), "n k -> (n t) k", t=tokens_per_region) for f in frozen], batch_first=True
        )  # (B, Q, 4), each region's box beside each of its tokens, in the queries' order
        fused = self.adapter(padded, clip_tokens, padding, boxes).float()  # (B, Q, E)
        fused = fused / (fused.norm(dim=-1, keepdim=True) + _FEATURE_NORM_EPS)
        return [rearrange(fused[i, :n], "(n t) e -> n t e", t=tokens_per_region) for i, n in enumerate(counts)]

    def classify(self, features: torch.Tensor, text_embeddings: torch.Tensor) -> torch.Tensor:
        """(..., E) unit-norm region features x (K, E) unit-norm class embeddings -> (..., K) logits."""
        return self.clip.logit_scale.float() * features @ text_embeddings.float().T

    @torch.no_grad()
    def clip_region_embeddings(self, frozen: Sequence[FrozenFeatures]) -> list[torch.Tensor]:
        """CLIP's own embedding of each region, the target of `region_distillation_loss`: CLIP's patch tokens, each
        through CLIP's final LayerNorm and projection, averaged with weights the share of each patch's cell that the
        region's box covers (`box_patch_coverage`; a point's zero-size box: the cell it lies in), unit norm. A
        stand-in for ViLD's CLIP embedding of the region's crop that costs no CLIP pass: the token map is at hand.
        It is as good as CLIP's patch tokens are at naming what they cover: well for the demo's stand-in CLIP,
        which was fitted that way; OpenAI's CLIP was not (MaskCLIP), so measure before relying on it there.

        Returns:
            B tensors (N_i, E), unit norm, float32.
        """
        embeddings = []
        for f in frozen:
            tokens = f.clip_tokens.shape[0]
            weights = box_patch_coverage(f.region_boxes, tokens)  # (N, HW)
            point_cell = (~box_token_mask(f.region_boxes, tokens))[:, 1:].float()  # a zero-size box: its one cell
            weights = torch.where(weights.sum(1, keepdim=True) > 0, weights, point_cell)
            patches = self.clip.embed_tokens(f.clip_tokens[1:])  # (HW, E): the projection is linear, pool after it
            embeddings.append(F.normalize(weights @ patches / weights.sum(1, keepdim=True), dim=-1))
        return embeddings

    def score_regions(
        self,
        frozen: FrozenFeatures,
        *,
        text_embeddings: torch.Tensor,
        features: torch.Tensor | None = None,
        activation: str = "softmax",
        image: PreparedImage | None = None,
    ) -> ScoredRegions:
        """Class scores of one image's N regions, each read from the token SAM trusts most (its only one without
        multimask): the one path from region features to scores, under the predictor, validation and evaluation.

        Args:
            frozen: the image's `FrozenFeatures`.
            text_embeddings: (K, E) unit-norm class embeddings (`clip.encode_vocabulary`).
            features: (N, T, E) its region features if already fused (a batch's adapter pass); else fused here.
            activation: "softmax" over the K classes (RegionSpot's evaluation) or independent "sigmoid".
            image: the prepared image, to upscale the chosen token's mask to it (needs `frozen.mask_logits`).
        """
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")
        if features is None:
            features = self.region_features([frozen])[0]
        best = frozen.mask_scores.argmax(dim=1)
        rows = torch.arange(len(best), device=best.device)
        logits = self.classify(features[rows, best], text_embeddings)  # (N, K)
        masks = None
        if image is not None:
            if frozen.mask_logits is None:
                raise ValueError("masks need FrozenFeatures decoded with_masks=True")
            masks = self._upscale(frozen.mask_logits[rows, best][:, None], image)
        return ScoredRegions(
            probs=logits.softmax(-1) if activation == "softmax" else logits.sigmoid(),
            mask_scores=frozen.mask_scores[rows, best],
            masks=masks,
        )

    def _upscale(self, mask_logits: torch.Tensor, image: PreparedImage) -> torch.Tensor:
        """(N, 1, 4h, 4w) -> (N, H, W) bool on the CPU, a few regions at a time (SAM upsamples to S x S first)."""
        return torch.cat(
            [
                self.sam.upscale_masks(chunk, image.sam_input_size, image.original_size)[:, 0].cpu()
                for chunk in mask_logits.split(_MASK_UPSCALE_CHUNK)
            ]
        )

    # ----- captioning ---------------------------------------------------------------------------------------------
    def region_condition(self, frozen: Sequence[FrozenFeatures], features: Sequence[torch.Tensor]) -> torch.Tensor:
        """What the captioner and the VQA head read of B images' regions: (sum N_i, E + C + 4), each region's fused
        feature and SAM region token, of the token SAM trusts most (as `score_regions` picks it), and where its
        prompt lies in the image, all images at once.

        The fused feature knows what a region is (it is trained to name it) and SAM's token what bounds it; each is
        layer-normalised (no weights) because the unit-norm feature is ~sqrt(E) times smaller than SAM's token, and
        the heads should weigh both from the start. The box (x1, y1, x2, y2 as fractions of the image, mapped to
        [-1, 1]) says where the region is and how large, which SAM's token carries too weakly for a head to compare
        two regions by: on the demo the VQA head answered "is <region1> left of <region2>?" at chance without it
        (docs/vqa.md); All-Seeing and Osprey give their LLMs the box as well.

        Args:
            frozen: B images' `FrozenFeatures`; features: their (N_i, T, E) region features.
        """
        return region_condition_rows(
            torch.cat(list(features)),
            torch.cat([f.region_tokens for f in frozen]),
            torch.cat([f.mask_scores for f in frozen]),
            torch.cat([f.region_boxes for f in frozen]),
        )

    def caption_loss(
        self, frozen: Sequence[FrozenFeatures], features: Sequence[torch.Tensor], captions: Sequence[Sequence[str]]
    ) -> torch.Tensor:
        """Mean next-token cross-entropy of the reference captions of B images' regions (one caption per region).

        Args:
            frozen: B images' `FrozenFeatures`; features: their (N_i, T, E) region features; captions: B lists of
                N_i captions.
        """
        decoder, tokenizer = self._captioner()
        if any(len(c) != len(f.region_tokens) for c, f in zip(captions, frozen, strict=True)):
            raise ValueError("caption_loss needs one caption per region")
        condition = self.region_condition(frozen, features)
        tokens = tokenizer.encode([c for image in captions for c in image], max_length=decoder.max_length)
        return decoder.loss(condition, tokens.to(condition.device), pad_id=tokenizer.pad_id)

    @torch.no_grad()
    def caption_regions(
        self, frozen: Sequence[FrozenFeatures], features: Sequence[torch.Tensor] | None = None
    ) -> list[list[str]]:
        """A caption for every region of B images, decoded together (`caption_beams` beams; 1 = greedy).

        Args:
            frozen: B images' `FrozenFeatures`.
            features: their region features if already fused (`region_features`); else fused here.

        Returns:
            B lists of N_i captions.
        """
        decoder, tokenizer = self._captioner()
        if features is None:
            features = self.region_features(frozen)
        condition = self.region_condition(frozen, features)
        was_training = decoder.training
        decoder.eval()  # decoding never drops out
        try:
            ids = decoder.generate(
                condition, bos_id=tokenizer.bos_id, eos_id=tokenizer.eos_id, num_beams=self.caption_beams
            )
        finally:
            decoder.train(was_training)
        texts = iter(tokenizer.decode(ids.cpu()))
        return [[next(texts) for _ in range(len(f.region_tokens))] for f in frozen]

    # ----- questions ----------------------------------------------------------------------------------------------
    def vqa_loss(
        self,
        frozen: Sequence[FrozenFeatures],
        features: Sequence[torch.Tensor],
        conversations: Sequence[Sequence[Turn] | None],
    ) -> torch.Tensor:
        """Mean next-token cross-entropy of the answers of B images' conversations, `<regionK>` being image i's
        K-th region (images without a conversation are left out).

        Args:
            frozen: B images' `FrozenFeatures`; features: their (N_i, T, E) region features; conversations: B lists
                of (question, answer) turns, or None.
        """
        vqa = self._vqa()
        conditions = self.region_condition(frozen, features).split([len(f.region_tokens) for f in frozen])
        asked = [i for i, c in enumerate(conversations) if c]
        if not asked:
            raise ValueError("vqa_loss needs at least one image with a conversation")
        return vqa.loss([conversations[i] for i in asked], [conditions[i] for i in asked])

    @torch.no_grad()
    def answer(
        self,
        frozen: Sequence[FrozenFeatures],
        conversations: Sequence[Sequence[Turn]],
        features: Sequence[torch.Tensor] | None = None,
        **generation,
    ) -> list[str]:
        """The VQA head's answer to the last, open question (answer None) of each of B images' conversations.

        Args:
            frozen: B images' `FrozenFeatures`, `<regionK>` being image i's K-th region.
            conversations: B lists of (question, answer) turns ending in (question, None).
            features: their region features if already fused; else fused here.
            generation: `RegionLanguageModel.generate`'s options (max_new_tokens, do_sample, temperature, top_p).
        """
        vqa = self._vqa()
        if features is None:
            features = self.region_features(frozen)
        conditions = self.region_condition(frozen, features).split([len(f.region_tokens) for f in frozen])
        return vqa.generate(conversations, conditions, **generation)

    def _vqa(self) -> RegionLanguageModel:
        if self.vqa is None:
            raise ValueError("this model has no VQA head: give its model config a `vqa:` section (vqa.llm: a folder)")
        return self.vqa

    def _captioner(self) -> tuple[CaptionDecoder, CaptionTokenizer]:
        if self.caption_decoder is None or self.caption_tokenizer is None:
            raise ValueError("this model has no captioner: give its model config a `caption:` section")
        return self.caption_decoder, self.caption_tokenizer

    def forward(self, frozen: Sequence[FrozenFeatures], text_embeddings: torch.Tensor) -> list[torch.Tensor]:
        """B images' `FrozenFeatures` -> B tensors (N_i, T, K) of class logits (every token, for training)."""
        return [self.classify(f, text_embeddings) for f in self.region_features(frozen)]

    def parameter_counts(self) -> dict[str, int]:
        counts = {"trainable": 0, "frozen": 0}
        for p in self.parameters():
            counts["trainable" if p.requires_grad else "frozen"] += p.numel()
        return counts

    def extra_repr(self) -> str:
        counts = self.parameter_counts()
        return f"trainable={counts['trainable'] / 1e6:.2f}M, frozen={counts['frozen'] / 1e6:.2f}M"
