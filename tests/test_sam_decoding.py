"""The tokens-only SAM decoding (image side of the first block once per image) against SAM's own MaskDecoder."""

from __future__ import annotations

from functools import partial

import pytest
import torch
from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer
from torch import nn
from torch.testing import assert_close

from regionspot.modeling.sam import SamPrompts, SamRegionEncoder, build_tiny_sam

PROMPT_COUNTS = (3, 1, 4)  # three images, different prompt counts; chunks of 3 cut across them


def _vit_b_decoder_sam(grid: int = 64) -> Sam:
    """SAM ViT-B's prompt encoder and mask decoder at their real shape (256 wide, depth 2, 8 heads, MLP 2048),
    random weights, on a `grid` x `grid` embedding; the image encoder is a stub, never run here."""
    image_size = 16 * grid
    return Sam(
        image_encoder=ImageEncoderViT(
            img_size=image_size, embed_dim=16, depth=1, num_heads=1, out_chans=256, norm_layer=partial(nn.LayerNorm)
        ),
        prompt_encoder=PromptEncoder(
            embed_dim=256,
            image_embedding_size=(grid, grid),
            input_image_size=(image_size, image_size),
            mask_in_chans=16,
        ),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=3,
            transformer=TwoWayTransformer(depth=2, embedding_dim=256, mlp_dim=2048, num_heads=8),
            transformer_dim=256,
            iou_head_depth=3,
            iou_head_hidden_dim=256,
        ),
    ).eval()


@pytest.fixture(scope="module", params=["tiny", "vit_b_decoder"])
def sam(request) -> Sam:
    torch.manual_seed(0)
    return build_tiny_sam().eval() if request.param == "tiny" else _vit_b_decoder_sam()


def _prompts(kind: str, count: int, size: int) -> SamPrompts:
    """`count` random prompts of `kind` in SAM's input frame (`size` px)."""
    corners = torch.rand(count, 2) * size / 2
    boxes = torch.cat([corners, corners + 4 + torch.rand(count, 2) * size / 2], dim=1)
    points = torch.rand(count, 2, 2) * size
    labels = torch.tensor([[1, 0]]).repeat(count, 1)
    return SamPrompts(
        boxes=boxes if "boxes" in kind else None,
        points=points if "points" in kind else None,
        point_labels=labels if "points" in kind else None,
    )


def _sam_decoder(sam: Sam, embedding: torch.Tensor, prompts: SamPrompts) -> tuple[torch.Tensor, torch.Tensor]:
    """SAM's own `MaskDecoder.predict_masks` on one image: its transformer's output tokens (a hook reads them) and
    its IoU predictions, (N, 5 + P, C) and (N, 4)."""
    points = None if prompts.points is None else (prompts.points, prompts.point_labels)
    sparse, dense = sam.prompt_encoder(points=points, boxes=prompts.boxes, masks=prompts.mask_logits)
    captured = []
    hook = sam.mask_decoder.transformer.register_forward_hook(lambda _m, _i, outputs: captured.append(outputs[0]))
    try:
        _, iou = sam.mask_decoder.predict_masks(
            image_embeddings=embedding[None],
            image_pe=sam.prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
        )
    finally:
        hook.remove()
    return captured[0], iou


@pytest.mark.parametrize("multimask", [False, True])
@pytest.mark.parametrize("kind", ["boxes", "points", "boxes+points"])
@torch.no_grad()
def test_tokens_only_decoding_equals_sams_decoder(sam, kind, multimask):
    torch.manual_seed(1)
    encoder = SamRegionEncoder(sam=sam, multimask=multimask, prompt_batch_size=3)
    size, grid = encoder.image_size, sam.prompt_encoder.image_embedding_size
    embeddings = torch.randn(len(PROMPT_COUNTS), encoder.token_dim, *grid)
    prompts = [_prompts(kind, count, size) for count in PROMPT_COUNTS]
    tokens = slice(2, 5) if multimask else slice(1, 2)
    scores = slice(1, None) if multimask else slice(0, 1)
    for embedding, image_prompts, got in zip(
        embeddings, prompts, encoder.decode(embeddings, prompts, with_masks=False), strict=True
    ):
        hidden, iou = _sam_decoder(sam, embedding, image_prompts)
        assert got.mask_logits is None
        assert_close(got.tokens, hidden[:, tokens])  # fp32 defaults: rtol 1.3e-6, atol 1e-5
        assert_close(got.mask_scores, iou[:, scores])


@torch.no_grad()
def test_first_block_projects_each_image_once(sam):
    """The token-to-image keys and values and the image-to-token queries of the first block are computed on one
    copy of each image's embedding, however many prompts it has."""
    encoder = SamRegionEncoder(sam=sam, prompt_batch_size=2)
    block = sam.mask_decoder.transformer.layers[0]
    projections = [
        block.cross_attn_token_to_image.k_proj,
        block.cross_attn_token_to_image.v_proj,
        block.cross_attn_image_to_token.q_proj,
    ]
    inputs = []
    hooks = [p.register_forward_hook(lambda _m, args, _o: inputs.append(args[0].shape)) for p in projections]
    try:
        embeddings = torch.randn(2, encoder.token_dim, *sam.prompt_encoder.image_embedding_size)
        encoder.decode(embeddings, [_prompts("boxes", 5, encoder.image_size), _prompts("boxes", 2, 64)])
        assert sum(shape[0] for shape in inputs) == 3 * 7  # SAM's decoder projects one copy per prompt
        inputs.clear()
        encoder.decode(
            embeddings, [_prompts("boxes", 5, encoder.image_size), _prompts("boxes", 2, 64)], with_masks=False
        )
    finally:
        for hook in hooks:
            hook.remove()
    hw = sam.prompt_encoder.image_embedding_size[0] * sam.prompt_encoder.image_embedding_size[1]
    assert inputs == [torch.Size([2, hw, encoder.token_dim])] * 3


@torch.no_grad()
def test_mask_inputs_fall_back_to_sams_decoder(tiny_sam):
    """A mask input makes each prompt's image side its own: tokens only then reads SAM's own decoder."""
    encoder = SamRegionEncoder(sam=tiny_sam)
    embeddings = torch.randn(2, encoder.token_dim, *tiny_sam.prompt_encoder.image_embedding_size)
    prompts = [
        SamPrompts(boxes=_prompts("boxes", count, encoder.image_size).boxes, mask_logits=torch.randn(count, 1, 32, 32))
        for count in (2, 3)
    ]
    with_masks = encoder.decode(embeddings, prompts)
    tokens_only = encoder.decode(embeddings, prompts, with_masks=False)
    for full, light, image_prompts, embedding in zip(with_masks, tokens_only, prompts, embeddings, strict=True):
        hidden, iou = _sam_decoder(tiny_sam, embedding, image_prompts)
        assert light.mask_logits is None
        assert torch.equal(light.tokens, full.tokens) and torch.equal(light.mask_scores, full.mask_scores)
        assert_close(light.tokens[:, 0], hidden[:, 1])
        assert_close(light.mask_scores, iou[:, :1])
