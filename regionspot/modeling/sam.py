"""Frozen SAM: one image embedding per image, then position-aware region tokens for all its prompts.

The region token is the output of SAM's mask token(s) after the mask decoder's two-way transformer,
before the hypernetwork MLPs. `segment_anything` has no API for it: when masks are wanted, a forward hook on
`mask_decoder.transformer` reads it while SAM's own decoder runs unchanged; when only tokens are wanted, the
decoding is composed from SAM's own submodules so that what is the same for every prompt of an image is
computed once per image (see `SamRegionEncoder.decode`).
"""

from __future__ import annotations

import itertools
import math
import warnings
from contextlib import nullcontext
from dataclasses import dataclass
from functools import partial

import numpy as np
import torch
from segment_anything import SamAutomaticMaskGenerator, SamPredictor
from segment_anything.build_sam import sam_model_registry
from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer
from segment_anything.utils.amg import calculate_stability_score
from segment_anything.utils.transforms import ResizeLongestSide
from torch import nn

from regionspot.boxes import xywh_to_xyxy
from regionspot.checkpoint import check_release_digest, load_weights, model_part, read_state_dict, require_file
from regionspot.config import MaskGeneratorSettings
from regionspot.everything import STABILITY_SCORE_OFFSET, NothingKeptWarning, nothing_kept_message
from regionspot.extents import prompt_extents
from regionspot.modeling.left_out import LeftOutImageEncoder, allocate_meta_tensors

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


def build_sam(*, variant: str, checkpoint: str | None = None, image_encoder: bool = True) -> Sam:
    """Build SAM `variant` with random weights, then load `checkpoint` (a local file) if given: SAM's own
    file, or a RegionSpot model_final.pth (its `sam` part, the weights RegionSpot was trained with).

    SAM's own loader calls `torch.load` without `map_location` or `weights_only`, so the model is
    built empty and the state dict is read here. `image_encoder=False` leaves the image encoder out
    (`regionspot.modeling.left_out`): with a checkpoint it is never built nor loaded; with random weights it is
    built and dropped, so that the prompt encoder's and the decoder's random weights are those of a whole build.
    """
    if variant not in SAM_BUILDERS:
        raise ValueError(f"unknown SAM variant {variant!r}; choose one of {sorted(SAM_BUILDERS)}")
    if checkpoint is not None:
        official = f"SAM's official {OFFICIAL_SAM_FILES[variant]}" if variant in OFFICIAL_SAM_FILES else "a checkpoint"
        path = require_file(
            checkpoint,
            what=f"SAM checkpoint for variant {variant!r}",
            hint=f"Put {official} of this variant there, or set sam.checkpoint to its path.",
        )
        if path.name in OFFICIAL_SAM_FILES.values():
            # Meta publishes no checksum; each release's name ends in the first six hex digits of its MD5.
            md5_prefix = path.stem.rsplit("_", 1)[1]
            check_release_digest(path, algorithm="md5", expected=md5_prefix, release=f"SAM's {path.name}")
    on_meta = not image_encoder and checkpoint is not None
    with torch.device("meta") if on_meta else nullcontext():
        sam = SAM_BUILDERS[variant]()
    if not image_encoder:
        sam.image_encoder = LeftOutImageEncoder(name="SAM's image encoder", img_size=sam.image_encoder.img_size)
    if on_meta:  # SAM's pixel mean and std are made on the CPU even under a meta device: nothing else to fill
        allocate_meta_tensors(sam)
    if checkpoint is not None:
        state = model_part(read_state_dict(path), "sam", path=path)
        if not image_encoder:
            state = {k: v for k, v in state.items() if not k.startswith("image_encoder.")}
        load_weights(sam, state, path=path, model_name=f"SAM {variant}")
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

    def extents(self, input_size: tuple[int, int], *, square_size: int) -> torch.Tensor:
        """(N, 4) float32 x1, y1, x2, y2 of where each prompt says its region is, as fractions of the image, on
        the prompts' device: `regionspot.extents.prompt_extents` (the rule the ONNX predictor shares) of them.

        Args:
            input_size: (h, w) of the resized image inside SAM's square (`PreparedImage.sam_input_size`).
            square_size: the side of SAM's padded square input, on which the mask grid lies.
        """
        fields = {"boxes": self.boxes, "points": self.points, "mask_logits": self.mask_logits}
        given = {name: value.detach().float().cpu().numpy() for name, value in fields.items() if value is not None}
        if self.point_labels is not None:
            given["point_labels"] = self.point_labels.cpu().numpy()
        extent = prompt_extents(input_size, square_size=square_size, **given)
        device = next(value.device for value in fields.values() if value is not None)
        return torch.from_numpy(extent).to(device)

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


@dataclass
class _ImageSide:
    """The image side of SAM's first two-way block for B images (hw image tokens, H heads of width c)."""

    keys: torch.Tensor  # (B, hw, C) image embedding + no-mask embedding, as tokens
    key_pe: torch.Tensor  # (1, hw, C) the dense positional encoding, as tokens
    token_to_image_k: torch.Tensor  # (B, H, hw, c) token-to-image attention keys
    token_to_image_v: torch.Tensor  # (B, H, hw, c) token-to-image attention values
    image_to_token_q: torch.Tensor  # (B, H, hw, c) image-to-token attention queries


def _runs(prompts: torch.Tensor, sizes: tuple[int, ...]) -> tuple[torch.Tensor, ...]:
    """`prompts` split into runs of `sizes` along its first axis; one run is the tensor itself, so that a graph
    traced over one image's prompts (`regionspot.onnx`) keeps their number dynamic instead of baking in a split."""
    return (prompts,) if len(sizes) == 1 else prompts.split(sizes)


def _tokens_attend_image(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Scaled dot-product attention of n prompts' tokens over one image's keys, which are not copied per prompt.

    Each query attends on its own, so the n prompts' T tokens attend as one sequence of n*T queries.

    Args:
        q: (n, H, T, c) the prompts' queries; k, v: (H, hw, c) the image's keys and values.

    Returns:
        (n, H, T, c).
    """
    n, heads, t, c = q.shape
    attn = torch.softmax(q.transpose(0, 1).reshape(heads, n * t, c) @ k.transpose(1, 2) / math.sqrt(c), dim=-1)
    return (attn @ v).reshape(heads, n, t, c).transpose(0, 1)


def _image_attends_tokens(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Scaled dot-product attention of one image's queries over each of n prompts' tokens, the queries not copied.

    Args:
        q: (H, hw, c) the image's queries; k, v: (n, H, T, c) the prompts' keys and values.

    Returns:
        (n, H, hw, c): for each prompt, the image tokens' attention over that prompt's T tokens alone.
    """
    n, heads, t, c = k.shape
    scores = q @ k.permute(1, 3, 0, 2).reshape(heads, c, n * t)  # (H, hw, n*T): all prompts in one product
    attn = torch.softmax((scores / math.sqrt(c)).unflatten(-1, (n, t)), dim=-1)  # softmax within each prompt
    return attn.permute(2, 0, 1, 3) @ v


class SamRegionEncoder(nn.Module):
    """A frozen SAM that embeds a batch of images and turns all their prompts into region tokens.

    Runs under the caller's grad mode (the model's frozen path wraps it in no_grad; the demo fits SAM
    through it).

    Args:
        sam: a `segment_anything` Sam model (weights already loaded).
        multimask: if True, each prompt yields SAM's three multimask tokens and masks, else one.
        prompt_batch_size: prompts per decoder call, over all images of a batch; bounds memory, since the
            decoder holds one copy of the image embedding per prompt (the tokens-only decoding from the first
            block's output on, SAM's own decoder from its input on).
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
    def image_encoder_built(self) -> bool:
        """False when the build left the image encoder out (`regionspot.modeling.left_out`)."""
        return not isinstance(self.sam.image_encoder, LeftOutImageEncoder)

    @property
    def tokens_per_region(self) -> int:
        return 3 if self.multimask else 1

    @property
    def mask_input_size(self) -> tuple[int, int]:
        return tuple(4 * s for s in self.sam.prompt_encoder.image_embedding_size)

    def normalize_and_pad(self, pixels: list[torch.Tensor]) -> torch.Tensor:
        """B resized uint8 images (3, h_i, w_i) -> (B, 3, S, S), normalised and padded as SamPredictor does."""
        device = self.sam.device
        return torch.cat([self.sam.preprocess(p.to(device, non_blocking=True)[None]) for p in pixels])

    def embed_images(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) preprocessed images -> (B, C, S/16, S/16) image embeddings."""
        return self.sam.image_encoder(images.to(self.sam.pixel_mean.dtype))

    def decode(
        self, embeddings: torch.Tensor, prompts: list[SamPrompts], *, with_masks: bool = True
    ) -> list[SamRegions]:
        """Region tokens, mask scores (and masks) for the prompts of B images, in as few decoder calls as memory allows.

        The prompts of all images are decoded together, `prompt_batch_size` at a time (chunks may span images).
        With masks, SAM's own decoder runs: it takes one image and adds its embedding to each prompt's dense
        embedding first, so each prompt's own image embedding is added here instead, which is the per-image call
        batched (tested equal). Tokens only (and no mask inputs), the decoding is composed from SAM's modules
        with the image side of the first two-way block computed once per image (`_image_side`), and the mask
        upscaling and hypernetworks skipped (tested equal to SAM's decoder).

        Args:
            embeddings: (B, C, h, w) the images' SAM embeddings.
            prompts: B prompt sets, one per image, in SAM's input frame.
            with_masks: also return the low-resolution mask logits; False returns tokens and scores only, by the
                faster decoding (or, for prompts with a mask input, by SAM's own decoder, masks dropped).
        """
        if embeddings.ndim != 4 or embeddings.shape[0] != len(prompts):
            raise ValueError(
                f"decode takes B image embeddings (B, C, h, w) and B prompt sets, got "
                f"{tuple(embeddings.shape)} and {len(prompts)}"
            )
        counts = [len(p) for p in prompts]
        if 0 in counts:
            raise ValueError("decode needs at least one prompt per image")
        owners = [image for image, count in enumerate(counts) for _ in range(count)]
        joined = SamPrompts.cat(prompts)
        # A mask input gives each prompt its own dense embedding, so nothing is shared: SAM's own decoder then.
        shared = None if with_masks or joined.mask_logits is not None else self._image_side(embeddings)
        size = self.prompt_batch_size
        parts = [
            self._decode_chunk(embeddings, shared, owners[start : start + size], chunk, with_masks=with_masks)
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

    def _decode_chunk(
        self,
        embeddings: torch.Tensor,
        shared: _ImageSide | None,
        owners: list[int],
        prompts: SamPrompts,
        *,
        with_masks: bool,
    ):
        dtype = embeddings.dtype
        boxes = None if prompts.boxes is None else prompts.boxes.to(dtype)
        points = None if prompts.points is None else (prompts.points.to(dtype), prompts.point_labels)
        mask_input = None if prompts.mask_logits is None else prompts.mask_logits.to(dtype)
        sparse, dense = self.sam.prompt_encoder(points=points, boxes=boxes, masks=mask_input)
        if shared is not None:
            images, sizes = zip(*[(image, len(list(run))) for image, run in itertools.groupby(owners)], strict=True)
            return *self._decode_tokens(shared, images, sizes, sparse), None
        # (n, C, h, w): what SAM's decoder builds from one image's embedding
        src = embeddings[torch.tensor(owners, device=embeddings.device)] + dense
        tokens, scores, masks = self._decode_with_masks(src, self.sam.prompt_encoder.get_dense_pe(), sparse)
        return tokens, scores, masks if with_masks else None

    def _image_side(self, embeddings: torch.Tensor) -> _ImageSide:
        """What SAM's first two-way block computes from the image alone, once per image.

        With no mask input, SAM's decoder feeds every prompt of an image the same image side: keys = the image
        embedding + the prompt encoder's `no_mask_embed` (its dense embedding for "no mask"), key positions =
        the dense positional encoding. So, in the first block, the token-to-image keys and values and the
        image-to-token queries are projections of the same tensors for every prompt; SAM's decoder repeats the
        embedding per prompt and projects each copy, this projects each image once (the same arithmetic, so the
        same numbers up to float summation order). From the first block's image-to-token update on, the keys
        depend on the prompt's tokens and are per prompt.
        """
        block = self.sam.mask_decoder.transformer.layers[0]
        no_mask = self.sam.prompt_encoder.no_mask_embed.weight.reshape(1, -1, 1, 1)
        keys = (embeddings + no_mask).flatten(2).transpose(1, 2)  # (B, hw, C)
        key_pe = self.sam.prompt_encoder.get_dense_pe().flatten(2).transpose(1, 2)  # (1, hw, C)
        to_image, to_tokens = block.cross_attn_token_to_image, block.cross_attn_image_to_token
        return _ImageSide(
            keys=keys,
            key_pe=key_pe,
            token_to_image_k=to_image._separate_heads(to_image.k_proj(keys + key_pe), to_image.num_heads),
            token_to_image_v=to_image._separate_heads(to_image.v_proj(keys), to_image.num_heads),
            image_to_token_q=to_tokens._separate_heads(to_tokens.q_proj(keys + key_pe), to_tokens.num_heads),
        )

    def _decode_tokens(self, shared: _ImageSide, images: tuple[int, ...], sizes: tuple[int, ...], sparse: torch.Tensor):
        """SAM's decoder up to its two-way transformer's output tokens and its IoU head, composed from its modules.

        Args:
            shared: the image side of the first block for the B images.
            images, sizes: the n prompts as consecutive runs, `sizes[i]` prompts of image `images[i]`.
            sparse: (n, P, C) the prompts' sparse embeddings.

        Returns:
            tokens (n, T, C) and mask scores (n, T).
        """
        decoder = self.sam.mask_decoder
        transformer = decoder.transformer
        output_tokens = torch.cat([decoder.iou_token.weight, decoder.mask_tokens.weight], dim=0)
        point_pe = torch.cat([output_tokens[None].expand(sparse.shape[0], -1, -1), sparse], dim=1)  # (n, 5 + P, C)
        queries, keys = self._first_block(shared, images, sizes, point_pe)
        for layer in transformer.layers[1:]:
            queries, keys = layer(queries=queries, keys=keys, query_pe=point_pe, key_pe=shared.key_pe)
        attn_out = transformer.final_attn_token_to_image(q=queries + point_pe, k=keys + shared.key_pe, v=keys)
        hidden = transformer.norm_final_attn(queries + attn_out)  # (n, 5 + P, C)
        scores = decoder.iou_prediction_head(hidden[:, 0])
        scores = scores[:, 1:] if self.multimask else scores[:, :1]
        return hidden[:, _MULTIMASK_TOKENS if self.multimask else _SINGLE_MASK_TOKEN], scores

    def _first_block(
        self, shared: _ImageSide, images: tuple[int, ...], sizes: tuple[int, ...], point_pe: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """SAM's first `TwoWayAttentionBlock` over n prompts, its image side read from `shared`.

        Args:
            images, sizes: the n prompts as consecutive runs, `sizes[i]` prompts of image `images[i]`.
            point_pe: (n, T, C) the prompts' tokens, also their positional encoding.

        Returns:
            queries (n, T, C) and keys (n, hw, C), as the block returns them.
        """
        block = self.sam.mask_decoder.transformer.layers[0]
        # SAM's first block has no positional encoding (and no residual) in its self-attention.
        queries = block.norm1(block.self_attn(q=point_pe, k=point_pe, v=point_pe))
        to_image = block.cross_attn_token_to_image
        q = to_image._separate_heads(to_image.q_proj(queries + point_pe), to_image.num_heads)  # (n, H, T, c)
        out = torch.cat(
            [
                _tokens_attend_image(q_i, shared.token_to_image_k[image], shared.token_to_image_v[image])
                for image, q_i in zip(images, _runs(q, sizes), strict=True)
            ]
        )
        queries = block.norm2(queries + to_image.out_proj(to_image._recombine_heads(out)))
        queries = block.norm3(queries + block.mlp(queries))

        to_tokens = block.cross_attn_image_to_token
        k = to_tokens._separate_heads(to_tokens.k_proj(queries + point_pe), to_tokens.num_heads)  # (n, H, T, c)
        v = to_tokens._separate_heads(to_tokens.v_proj(queries), to_tokens.num_heads)
        out = torch.cat(
            [
                _image_attends_tokens(shared.image_to_token_q[image], k_i, v_i)
                for image, k_i, v_i in zip(images, _runs(k, sizes), _runs(v, sizes), strict=True)
            ]
        )  # (n, H, hw, c)
        update = to_tokens.out_proj(to_tokens._recombine_heads(out))  # (n, hw, C): from here on, keys are per prompt
        keys = torch.cat([shared.keys[image] + u for image, u in zip(images, _runs(update, sizes), strict=True)])
        return queries, block.norm4(keys)

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


def build_mask_generator(sam: Sam, settings: MaskGeneratorSettings | None = None) -> SamAutomaticMaskGenerator:
    """SAM's automatic mask generator on `sam` with `settings` (its other settings at segment_anything's defaults):
    the one construction the predictor, the app and `evaluate.py --source sam` use. It remembers the best scores it
    sees, for `sam_everything`'s warning when it keeps no mask (default settings: segment_anything's published ones)."""
    settings = settings or MaskGeneratorSettings()
    generator = SamAutomaticMaskGenerator(
        sam,
        points_per_side=settings.points_per_side,
        pred_iou_thresh=settings.pred_iou_thresh,
        stability_score_thresh=settings.stability_score_thresh,
        stability_score_offset=STABILITY_SCORE_OFFSET,
    )
    generator.predictor = _ScoreKeepingPredictor(sam, pred_iou_thresh=settings.pred_iou_thresh)
    return generator


class _ScoreKeepingPredictor(SamPredictor):
    """SAM's predictor as the automatic mask generator calls it, keeping the best predicted IoU of every mask and
    the best stability score of those above `pred_iou_thresh`: what to report when the generator keeps none."""

    def __init__(self, sam: Sam, *, pred_iou_thresh: float) -> None:
        super().__init__(sam)
        self.pred_iou_thresh = pred_iou_thresh
        self.forget_scores()

    def forget_scores(self) -> None:
        self.best_iou, self.best_stability = -math.inf, -math.inf

    def predict_torch(self, *args, **kwargs):
        masks, iou_preds, low_res = super().predict_torch(*args, **kwargs)
        self.best_iou = max(self.best_iou, float(iou_preds.max()))
        passing = masks[iou_preds > self.pred_iou_thresh]  # (M, H, W) logits: the generator returns logits
        if len(passing):
            stability = calculate_stability_score(passing, self.model.mask_threshold, STABILITY_SCORE_OFFSET)
            self.best_stability = max(self.best_stability, float(stability.max()))
        return masks, iou_preds, low_res


def sam_everything(generator: SamAutomaticMaskGenerator, rgb: np.ndarray) -> tuple[torch.Tensor, ...]:
    """SAM's automatic mask generator as a region source ("segment everything, then name it").

    Args:
        generator: one built by `build_mask_generator`.
        rgb: (H, W, 3) uint8 image.

    Returns:
        boxes (N, 4) xyxy around the pixels of each mask, scores (N,) SAM's predicted mask IoU clipped to
        [0, 1] (the region's "objectness"), masks (N, H, W) bool. When the generator keeps no mask, a
        `NothingKeptWarning` names its thresholds and the best scores it saw.
    """
    generator.predictor.forget_scores()
    records = generator.generate(rgb)
    height, width = rgb.shape[:2]
    if not records:
        warnings.warn(_nothing_kept(generator), NothingKeptWarning, stacklevel=2)
        return torch.zeros(0, 4), torch.zeros(0), torch.zeros(0, height, width, dtype=torch.bool)
    # SAM's box spans mask pixel indices inclusively; the pixels themselves cover one more pixel each way.
    xywh = torch.tensor([r["bbox"] for r in records], dtype=torch.float64)
    boxes = xywh_to_xyxy(xywh).float() + torch.tensor([0, 0, 1, 1])
    scores = torch.tensor([r["predicted_iou"] for r in records], dtype=torch.float32).clamp(0, 1)
    masks = torch.from_numpy(np.stack([r["segmentation"] for r in records])).bool()
    return boxes, scores, masks


def _nothing_kept(generator: SamAutomaticMaskGenerator) -> str:
    seen: _ScoreKeepingPredictor = generator.predictor
    return nothing_kept_message(
        best_iou=seen.best_iou,
        best_stability=seen.best_stability,
        pred_iou_thresh=generator.pred_iou_thresh,
        stability_score_thresh=generator.stability_score_thresh,
    )
