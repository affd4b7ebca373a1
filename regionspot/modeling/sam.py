"""Frozen SAM: one image embedding per image, then position-aware region tokens for all its prompts.

The region token is the output of SAM's mask token(s) after the mask decoder's two-way transformer,
before the hypernetwork MLPs. `segment_anything` has no API for it, so a forward hook on
`mask_decoder.transformer` reads it while SAM's own decoder runs unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import numpy as np
import torch
from segment_anything import SamAutomaticMaskGenerator
from segment_anything.build_sam import sam_model_registry
from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer
from segment_anything.utils.transforms import ResizeLongestSide
from torch import nn

from regionspot.boxes import xywh_to_xyxy
from regionspot.checkpoint import check_release_digest, load_weights, model_part, read_state_dict, require_file

OFFICIAL_SAM_FILES = {"vit_b": "sam_vit_b_01ec64.pth", "vit_l": "sam_vit_l_0b3195.pth", "vit_h": "sam_vit_h_4b8939.pth"}

# Index of SAM's single-mask token in the transformer's output tokens: [iou, mask0, mask1..3, prompts...].
_SINGLE_MASK_TOKEN = slice(1, 2)
_MULTIMASK_TOKENS = slice(2, 5)


def build_tiny_sam(*, image_size: int = 128, embed_dim: int = 64, depth: int = 2, prompt_dim: int = 64) -> Sam:
    """A SAM of the real classes at toy size (random weights): for tests and the CPU demo."""
    embedding_size = image_size // 16
    return Sam(
        image_encoder=ImageEncoderViT(
            img_size=image_size,
            patch_size=16,
            embed_dim=embed_dim,
            depth=depth,
            num_heads=2,
            mlp_ratio=4,
            out_chans=prompt_dim,
            qkv_bias=True,
            norm_layer=partial(nn.LayerNorm, eps=1e-6),
            use_rel_pos=True,
            window_size=4,
            global_attn_indexes=(depth - 1,),
        ),
        prompt_encoder=PromptEncoder(
            embed_dim=prompt_dim,
            image_embedding_size=(embedding_size, embedding_size),
            input_image_size=(image_size, image_size),
            mask_in_chans=16,
        ),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=3,
            transformer=TwoWayTransformer(depth=2, embedding_dim=prompt_dim, mlp_dim=128, num_heads=2),
            transformer_dim=prompt_dim,
            iou_head_depth=3,
            iou_head_hidden_dim=prompt_dim,
        ),
    )


SAM_BUILDERS = {
    "vit_b": sam_model_registry["vit_b"],
    "vit_l": sam_model_registry["vit_l"],
    "vit_h": sam_model_registry["vit_h"],
    "tiny": build_tiny_sam,
}


def build_sam(*, variant: str, checkpoint: str | None = None) -> Sam:
    """Build SAM `variant` with random weights, then load `checkpoint` (a local file) if given: SAM's own
    file, or a RegionSpot model_final.pth (its `sam` part, the weights RegionSpot was trained with).

    SAM's own loader calls `torch.load` without `map_location` or `weights_only`, so the model is
    built empty and the state dict is read here.
    """
    if variant not in SAM_BUILDERS:
        raise ValueError(f"unknown SAM variant {variant!r}; choose one of {sorted(SAM_BUILDERS)}")
    if checkpoint is not None:
        official = OFFICIAL_SAM_FILES.get(variant, "a checkpoint saved from this variant")
        path = require_file(
            checkpoint,
            what=f"SAM checkpoint for variant {variant!r}",
            hint=f"Put SAM's official {official} there, or set sam.checkpoint to its path.",
        )
        if path.name in OFFICIAL_SAM_FILES.values():
            # Meta publishes no checksum; each release's name ends in the first six hex digits of its MD5.
            md5_prefix = path.stem.rsplit("_", 1)[1]
            check_release_digest(path, algorithm="md5", expected=md5_prefix, release=f"SAM's {path.name}")
    sam = SAM_BUILDERS[variant]()
    if checkpoint is not None:
        load_weights(sam, model_part(read_state_dict(path), "sam", path=path), path=path, model_name=f"SAM {variant}")
    return sam


@dataclass
class SamPrompts:
    """Prompts for N regions of one image, in SAM's input frame (after ResizeLongestSide).

    Any of the fields may be None, but not all; the ones given share N.
    boxes: (N, 4) xyxy. points: (N, P, 2) xy. point_labels: (N, P), 1 positive, 0 negative.
    mask_logits: (N, 1, 4h, 4w), SAM's low-resolution mask input.
    """

    boxes: torch.Tensor | None = None
    points: torch.Tensor | None = None
    point_labels: torch.Tensor | None = None
    mask_logits: torch.Tensor | None = None

    def __len__(self) -> int:
        for value in (self.boxes, self.points, self.mask_logits):
            if value is not None:
                return value.shape[0]
        return 0

    def _fields(self) -> tuple[torch.Tensor | None, ...]:
        return (self.boxes, self.points, self.point_labels, self.mask_logits)

    def chunk(self, size: int) -> list[SamPrompts]:
        return [
            SamPrompts(*(None if f is None else f[start : start + size] for f in self._fields()))
            for start in range(0, len(self), size)
        ]

    @staticmethod
    def cat(prompts: list[SamPrompts]) -> SamPrompts:
        """The prompts of several images as one set; every image must give the same kinds (and point counts)."""
        kinds = {tuple(f is None for f in p._fields()) for p in prompts}
        point_counts = {p.points.shape[1] for p in prompts if p.points is not None}
        if len(kinds) > 1 or len(point_counts) > 1:
            raise ValueError("decoding several images at once needs the same prompt kinds (and points per region)")
        columns = zip(*(p._fields() for p in prompts), strict=True)
        return SamPrompts(*(None if parts[0] is None else torch.cat(parts) for parts in columns))


@dataclass
class SamRegions:
    """SAM's output for N regions. T is 3 with multimask output, else 1."""

    tokens: torch.Tensor  # (N, T, C) region tokens, C = SAM's transformer width (256 for the real SAMs)
    mask_scores: torch.Tensor  # (N, T) SAM's predicted IoU of each mask
    mask_logits: torch.Tensor | None = None  # (N, T, 4h, 4w) low-resolution mask logits, when asked for


class SamRegionEncoder(nn.Module):
    """A frozen SAM that embeds a batch of images and turns all their prompts into region tokens.

    Runs under the caller's grad mode (the model's frozen path wraps it in no_grad; the demo fits SAM
    through it).

    Args:
        sam: a `segment_anything` Sam model (weights already loaded).
        multimask: if True, each prompt yields SAM's three multimask tokens and masks, else one.
        prompt_batch_size: prompts per decoder call, over all images of a batch; bounds memory, since the
            decoder holds one copy of the image embedding per prompt.
    """

    def __init__(self, *, sam: Sam, multimask: bool = False, prompt_batch_size: int = 64) -> None:
        super().__init__()
        self.sam = sam
        self.multimask = multimask
        self.prompt_batch_size = prompt_batch_size
        self.transform = ResizeLongestSide(sam.image_encoder.img_size)

    @property
    def token_dim(self) -> int:
        return self.sam.mask_decoder.transformer_dim

    @property
    def image_size(self) -> int:
        return self.sam.image_encoder.img_size

    @property
    def tokens_per_region(self) -> int:
        return 3 if self.multimask else 1

    @property
    def mask_input_size(self) -> tuple[int, int]:
        return tuple(4 * s for s in self.sam.prompt_encoder.image_embedding_size)

    def normalize_and_pad(self, pixels: list[torch.Tensor]) -> torch.Tensor:
        """B resized uint8 images (3, h_i, w_i) -> (B, 3, S, S), normalised and padded as SamPredictor does."""
        device = self.sam.device
        return torch.cat([self.sam.preprocess(p.to(device)[None]) for p in pixels])

    def embed_images(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) preprocessed images -> (B, C, S/16, S/16) image embeddings."""
        return self.sam.image_encoder(images.to(self.sam.pixel_mean.dtype))

    def decode(
        self, embeddings: torch.Tensor, prompts: list[SamPrompts], *, with_masks: bool = True
    ) -> list[SamRegions]:
        """Region tokens, mask scores (and masks) for the prompts of B images, in as few decoder calls as memory allows.

        The prompts of all images are decoded together, `prompt_batch_size` at a time: SAM's decoder takes
        one image and adds its embedding to each prompt's dense embedding first, so each prompt's own image
        embedding is added here instead, which is the per-image call batched (tested equal).

        Args:
            embeddings: (B, C, h, w) the images' SAM embeddings.
            prompts: B prompt sets, one per image, in SAM's input frame.
            with_masks: also return the low-resolution mask logits; False skips the decoder's mask
                upscaling and hypernetworks (the costly part of a decoder call when only tokens are read).
        """
        if embeddings.ndim != 4 or embeddings.shape[0] != len(prompts):
            raise ValueError(
                f"decode takes B image embeddings (B, C, h, w) and B prompt sets, got "
                f"{tuple(embeddings.shape)} and {len(prompts)}"
            )
        counts = [len(p) for p in prompts]
        if 0 in counts:
            raise ValueError("decode needs at least one prompt per image")
        owners = torch.repeat_interleave(torch.arange(len(prompts)), torch.tensor(counts)).to(embeddings.device)
        joined = SamPrompts.cat(prompts)
        size = self.prompt_batch_size
        parts = [
            self._decode_chunk(embeddings, owners[start : start + size], chunk, with_masks=with_masks)
            for start, chunk in zip(range(0, len(joined), size), joined.chunk(size), strict=True)
        ]
        tokens, scores, masks = (
            torch.cat(column) if column[0] is not None else None for column in zip(*parts, strict=True)
        )
        masks = masks.split(counts) if masks is not None else [None] * len(counts)
        return [
            SamRegions(tokens=t, mask_scores=s, mask_logits=m)
            for t, s, m in zip(tokens.split(counts), scores.split(counts), masks, strict=True)
        ]

    def _decode_chunk(self, embeddings: torch.Tensor, owners: torch.Tensor, prompts: SamPrompts, *, with_masks: bool):
        dtype = embeddings.dtype
        boxes = None if prompts.boxes is None else prompts.boxes.to(dtype)
        points = None if prompts.points is None else (prompts.points.to(dtype), prompts.point_labels)
        mask_input = None if prompts.mask_logits is None else prompts.mask_logits.to(dtype)
        sparse, dense = self.sam.prompt_encoder(points=points, boxes=boxes, masks=mask_input)
        src = embeddings[owners] + dense  # (n, C, h, w): what SAM's decoder builds from one image's embedding
        image_pe = self.sam.prompt_encoder.get_dense_pe()
        decoder = self.sam.mask_decoder
        if with_masks:
            return self._decode_with_masks(src, image_pe, sparse)
        # Tokens only: the decoder's own steps up to its transformer and IoU head, without mask upscaling.
        output_tokens = torch.cat([decoder.iou_token.weight, decoder.mask_tokens.weight], dim=0)
        tokens = torch.cat([output_tokens[None].expand(len(src), -1, -1), sparse], dim=1)
        hidden, _ = decoder.transformer(src, image_pe.expand(len(src), -1, -1, -1), tokens)
        scores = decoder.iou_prediction_head(hidden[:, 0])
        scores = scores[:, 1:] if self.multimask else scores[:, :1]
        return hidden[:, _MULTIMASK_TOKENS if self.multimask else _SINGLE_MASK_TOKEN], scores, None

    def _decode_with_masks(self, src: torch.Tensor, image_pe: torch.Tensor, sparse: torch.Tensor):
        # SAM's own decoder, fed a zero image embedding: it adds that to `src` (exact), then runs unchanged.
        captured: list[torch.Tensor] = []
        hook = self.sam.mask_decoder.transformer.register_forward_hook(
            lambda _module, _inputs, outputs: captured.append(outputs[0])
        )
        try:
            masks, scores = self.sam.mask_decoder(
                image_embeddings=torch.zeros_like(src[:1]),
                image_pe=image_pe,
                sparse_prompt_embeddings=sparse,
                dense_prompt_embeddings=src,
                multimask_output=self.multimask,
            )
        finally:
            hook.remove()
        hidden = captured[0]  # (n, 5 + prompt tokens, C)
        return hidden[:, _MULTIMASK_TOKENS if self.multimask else _SINGLE_MASK_TOKEN], scores, masks

    def upscale_masks(self, mask_logits: torch.Tensor, input_size: tuple[int, int], original_size: tuple[int, int]):
        """(N, T, 4h, 4w) logits -> (N, T, H, W) boolean masks at the original image size."""
        logits = self.sam.postprocess_masks(mask_logits, input_size, original_size)
        return logits > self.sam.mask_threshold


def sam_everything(generator: SamAutomaticMaskGenerator, rgb: np.ndarray) -> tuple[torch.Tensor, ...]:
    """SAM's automatic mask generator as a region source ("segment everything, then name it").

    Args:
        generator: a segment_anything `SamAutomaticMaskGenerator` (output_mode "binary_mask").
        rgb: (H, W, 3) uint8 image.

    Returns:
        boxes (N, 4) xyxy around the pixels of each mask, scores (N,) SAM's predicted mask IoU clipped to
        [0, 1] (the region's "objectness"), masks (N, H, W) bool.
    """
    records = generator.generate(rgb)
    height, width = rgb.shape[:2]
    if not records:
        return torch.zeros(0, 4), torch.zeros(0), torch.zeros(0, height, width, dtype=torch.bool)
    # SAM's box spans mask pixel indices inclusively; the pixels themselves cover one more pixel each way.
    xywh = torch.tensor([r["bbox"] for r in records], dtype=torch.float64)
    boxes = xywh_to_xyxy(xywh).float() + torch.tensor([0, 0, 1, 1])
    scores = torch.tensor([r["predicted_iou"] for r in records], dtype=torch.float32).clamp(0, 1)
    masks = torch.from_numpy(np.stack([r["segmentation"] for r in records])).bool()
    return boxes, scores, masks
