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
from segment_anything.build_sam import sam_model_registry
from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer
from segment_anything.utils.transforms import ResizeLongestSide
from torch import nn

from regionspot.checkpoint import load_weights, read_state_dict, require_file

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
    """Build SAM `variant` with random weights, then load `checkpoint` (a local file) if given.

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
    sam = SAM_BUILDERS[variant]()
    if checkpoint is not None:
        load_weights(sam, read_state_dict(path), path=path, model_name=f"SAM {variant}")
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

    def chunk(self, size: int) -> list[SamPrompts]:
        fields = (self.boxes, self.points, self.point_labels, self.mask_logits)
        return [
            SamPrompts(*(None if f is None else f[start : start + size] for f in fields))
            for start in range(0, len(self), size)
        ]


@dataclass
class SamRegions:
    """SAM's output for N regions. T is 3 with multimask output, else 1."""

    tokens: torch.Tensor  # (N, T, C) region tokens, C = SAM's transformer width (256 for the real SAMs)
    mask_logits: torch.Tensor  # (N, T, 4h, 4w) low-resolution mask logits
    mask_scores: torch.Tensor  # (N, T) SAM's predicted IoU of each mask


class SamRegionEncoder(nn.Module):
    """A frozen SAM that embeds an image once and turns all prompts of that image into region tokens.

    Args:
        sam: a `segment_anything` Sam model (weights already loaded).
        multimask: if True, each prompt yields SAM's three multimask tokens and masks, else one.
        prompt_batch_size: prompts per decoder call; bounds memory, since the decoder copies the image
            embedding once per prompt.
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

    def preprocess(self, image: np.ndarray) -> tuple[torch.Tensor, tuple[int, int]]:
        """(H, W, 3) uint8 RGB -> ((1, 3, S, S) normalised, padded tensor; (h, w) resized size before padding)."""
        resized = self.transform.apply_image(image)
        tensor = torch.as_tensor(resized, device=self.sam.device).permute(2, 0, 1)[None].float()
        return self.sam.preprocess(tensor), tuple(resized.shape[:2])

    @torch.no_grad()
    def embed_images(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) preprocessed images -> (B, C, S/16, S/16) image embeddings."""
        return self.sam.image_encoder(images)

    @torch.no_grad()
    def decode(self, embedding: torch.Tensor, prompts: SamPrompts) -> SamRegions:
        """Region tokens, masks and mask scores for all `prompts` of one image.

        Args:
            embedding: (1, C, h, w) the image's SAM embedding.
            prompts: N prompts of that image, in SAM's input frame.
        """
        if embedding.ndim != 4 or embedding.shape[0] != 1:
            raise ValueError(f"decode takes one image embedding (1, C, h, w), got {tuple(embedding.shape)}")
        if len(prompts) == 0:
            raise ValueError("decode needs at least one prompt")
        parts = [self._decode_chunk(embedding, chunk) for chunk in prompts.chunk(self.prompt_batch_size)]
        return SamRegions(*(torch.cat(tensors) for tensors in zip(*parts, strict=True)))

    def _decode_chunk(self, embedding: torch.Tensor, prompts: SamPrompts) -> tuple[torch.Tensor, ...]:
        points = None if prompts.points is None else (prompts.points, prompts.point_labels)
        sparse, dense = self.sam.prompt_encoder(points=points, boxes=prompts.boxes, masks=prompts.mask_logits)
        captured: list[torch.Tensor] = []
        hook = self.sam.mask_decoder.transformer.register_forward_hook(
            lambda _module, _inputs, outputs: captured.append(outputs[0])
        )
        try:
            masks, scores = self.sam.mask_decoder(
                image_embeddings=embedding,
                image_pe=self.sam.prompt_encoder.get_dense_pe(),
                sparse_prompt_embeddings=sparse,
                dense_prompt_embeddings=dense,
                multimask_output=self.multimask,
            )
        finally:
            hook.remove()
        hidden = captured[0]  # (N, 5 + prompt tokens, C)
        tokens = hidden[:, _MULTIMASK_TOKENS if self.multimask else _SINGLE_MASK_TOKEN]
        return tokens, masks, scores

    def upscale_masks(self, mask_logits: torch.Tensor, input_size: tuple[int, int], original_size: tuple[int, int]):
        """(N, T, 4h, 4w) logits -> (N, T, H, W) boolean masks at the original image size."""
        logits = self.sam.postprocess_masks(mask_logits, input_size, original_size)
        return logits > self.sam.mask_threshold
