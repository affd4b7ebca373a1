"""SAM wrapper: parity with segment_anything's own modules, batching, checkpoints."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from segment_anything import SamPredictor, sam_model_registry
from segment_anything.utils.transforms import ResizeLongestSide
from torch.testing import assert_close

from regionspot.checkpoint import CheckpointMismatchError
from regionspot.modeling.preprocess import resize_for_sam
from regionspot.modeling.sam import SamPrompts, SamRegionEncoder, build_sam, build_tiny_sam
from regionspot.transforms import prepare_prompts

BOXES = torch.tensor([[10.0, 12.0, 80.0, 70.0], [90.0, 40.0, 155.0, 95.0], [0.0, 0.0, 160.0, 96.0], [40, 30, 60, 50]])


def _reference_tokens(sam, embedding, boxes):
    """The decoder's transformer output, composed by hand from segment_anything's modules."""
    sparse, dense = sam.prompt_encoder(points=None, boxes=boxes, masks=None)
    decoder = sam.mask_decoder
    output_tokens = torch.cat([decoder.iou_token.weight, decoder.mask_tokens.weight], dim=0)
    tokens = torch.cat([output_tokens[None].expand(len(boxes), -1, -1), sparse], dim=1)
    src = embedding.repeat(len(boxes), 1, 1, 1) + dense
    pos = sam.prompt_encoder.get_dense_pe().repeat(len(boxes), 1, 1, 1)
    hidden, _ = decoder.transformer(src, pos, tokens)
    return hidden


def _embed(encoder, image):
    """(1, C, h, w) SAM embedding of an (H, W, 3) uint8 image through the package's one preprocessing."""
    return encoder.embed_images(encoder.normalize_and_pad([resize_for_sam(image, encoder.image_size)]))


@torch.no_grad()
def test_region_tokens_match_segment_anything(tiny_sam, image):
    encoder = SamRegionEncoder(sam=tiny_sam)
    embedding = _embed(encoder, image)
    prompts, _ = prepare_prompts(encoder, image_size=image.shape[:2], boxes=BOXES)
    regions = encoder.decode(embedding, [prompts])[0]
    hidden = _reference_tokens(tiny_sam, embedding, prompts.boxes)
    assert regions.tokens.shape == (4, 1, tiny_sam.mask_decoder.transformer_dim)
    assert_close(regions.tokens[:, 0], hidden[:, 1])

    multimask = SamRegionEncoder(sam=tiny_sam, multimask=True).decode(embedding, [prompts])[0]
    assert multimask.tokens.shape[1] == 3 and multimask.mask_logits.shape[1] == 3
    assert_close(multimask.tokens, hidden[:, 2:5])


@torch.no_grad()
def test_masks_match_sam_predictor(tiny_sam, image):
    """Same image, same boxes: our masks and IoU scores equal SamPredictor's."""
    encoder = SamRegionEncoder(sam=tiny_sam)
    prompts, _ = prepare_prompts(encoder, image_size=image.shape[:2], boxes=BOXES)
    regions = encoder.decode(_embed(encoder, image), [prompts])[0]
    input_size = ResizeLongestSide.get_preprocess_shape(*image.shape[:2], encoder.image_size)
    masks = encoder.upscale_masks(regions.mask_logits, input_size, image.shape[:2])

    reference = SamPredictor(tiny_sam)
    reference.set_image(image)
    ref_masks, ref_scores, ref_low_res = reference.predict_torch(
        point_coords=None,
        point_labels=None,
        boxes=reference.transform.apply_boxes_torch(BOXES, image.shape[:2]),
        multimask_output=False,
    )
    assert_close(regions.mask_logits, ref_low_res)
    assert_close(regions.mask_scores, ref_scores)
    assert torch.equal(masks, ref_masks)


@torch.no_grad()
def test_batched_prompts_equal_one_at_a_time(tiny_sam, image):
    encoder = SamRegionEncoder(sam=tiny_sam, multimask=True, prompt_batch_size=3)
    embedding = _embed(encoder, image)
    points = torch.tensor([[[20.0, 30.0], [70.0, 60.0]]]).repeat(4, 1, 1)
    labels = torch.tensor([[1, 0]]).repeat(4, 1)
    prompts, _ = prepare_prompts(encoder, image_size=image.shape[:2], boxes=BOXES, points=points, point_labels=labels)
    together = encoder.decode(embedding, [prompts])[0]
    for i, one in enumerate(prompts.chunk(1)):
        alone = encoder.decode(embedding, [one])[0]
        assert_close(together.tokens[i : i + 1], alone.tokens, atol=1e-5, rtol=1e-5)
        assert_close(together.mask_logits[i : i + 1], alone.mask_logits, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("multimask", [False, True])
@torch.no_grad()
def test_several_images_decode_together_as_one_at_a_time(tiny_sam, image, multimask):
    """The prompts of images of different sizes, in shared decoder calls that cut across images, give what
    SamPredictor gives for each image alone; the tokens-only mode gives the same tokens and scores."""
    images = [image, image[:70, 20:].copy(), np.ascontiguousarray(image.transpose(1, 0, 2))]
    boxes = [BOXES, BOXES[:1], BOXES[1:3]]
    encoder = SamRegionEncoder(sam=tiny_sam, multimask=multimask, prompt_batch_size=2)  # chunks span images
    embeddings = encoder.embed_images(
        encoder.normalize_and_pad([resize_for_sam(img, encoder.image_size) for img in images])
    )
    prepared = [
        prepare_prompts(encoder, image_size=img.shape[:2], boxes=b) for img, b in zip(images, boxes, strict=True)
    ]
    prompts, clipped = [p for p, _ in prepared], [c for _, c in prepared]
    together = encoder.decode(embeddings, prompts)
    tokens_only = encoder.decode(embeddings, prompts, with_masks=False)
    for img, b, got, light in zip(images, clipped, together, tokens_only, strict=True):
        reference = SamPredictor(tiny_sam)
        reference.set_image(img)
        _, ref_scores, ref_low_res = reference.predict_torch(
            None, None, boxes=reference.transform.apply_boxes_torch(b, img.shape[:2]), multimask_output=multimask
        )
        # Equal up to float rounding: BLAS sums a batch of 3 images (and of 2 prompts) in another order.
        assert_close(got.mask_logits, ref_low_res)
        assert_close(got.mask_scores, ref_scores)
        assert light.mask_logits is None
        # The tokens-only path computes the first block's image side once per image (a matmul of another shape),
        # so on some CPUs (seen on AMD EPYC) its last bits differ: equal up to float32 rounding, not bit for bit.
        assert_close(light.tokens, got.tokens, rtol=1e-5, atol=1e-5)
        assert_close(light.mask_scores, got.mask_scores, rtol=1e-5, atol=1e-5)


def test_decode_rejects_bad_calls(tiny_sam):
    encoder = SamRegionEncoder(sam=tiny_sam)
    with pytest.raises(ValueError, match="B image embeddings"):
        encoder.decode(torch.zeros(2, 64, 8, 8), [SamPrompts(boxes=torch.zeros(1, 4))])
    with pytest.raises(ValueError, match="at least one prompt"):
        encoder.decode(torch.zeros(1, 64, 8, 8), [SamPrompts()])
    with pytest.raises(ValueError, match="same prompt kinds"):
        encoder.decode(
            torch.zeros(2, 64, 8, 8),
            [
                SamPrompts(boxes=torch.zeros(1, 4)),
                SamPrompts(points=torch.zeros(1, 1, 2), point_labels=torch.ones(1, 1)),
            ],
        )


@pytest.mark.parametrize("variant", ["tiny", "vit_b"])
def test_segment_anything_checkpoint_loads(tmp_path, variant):
    """A state dict saved from segment_anything's own model class loads with no missing or unexpected keys."""
    torch.manual_seed(1)
    original = build_tiny_sam() if variant == "tiny" else sam_model_registry["vit_b"]()
    path = tmp_path / f"sam_{variant}.pth"
    torch.save(original.state_dict(), path)
    loaded = build_sam(variant=variant, checkpoint=str(path))
    for (name, expected), actual in zip(original.state_dict().items(), loaded.state_dict().values(), strict=True):
        assert torch.equal(expected, actual), name


def test_missing_sam_checkpoint_names_file_and_official_weights(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"vit_h.*nowhere\.pth.*sam_vit_h_4b8939\.pth"):
        build_sam(variant="vit_h", checkpoint=str(tmp_path / "nowhere.pth"))


def test_mismatched_sam_checkpoint_names_keys(tmp_path):
    other = build_tiny_sam(embed_dim=32)
    path = tmp_path / "other.pth"
    torch.save(other.state_dict(), path)
    with pytest.raises(CheckpointMismatchError, match=r"other\.pth.*SAM tiny.*wrong shape.*image_encoder"):
        build_sam(variant="tiny", checkpoint=str(path))

    partial = {k: v for k, v in build_tiny_sam().state_dict().items() if not k.startswith("mask_decoder.")}
    partial["extra.weight"] = torch.zeros(1)
    torch.save({"model": partial}, path)
    with pytest.raises(CheckpointMismatchError, match=r"missing \(first: mask_decoder\..*1 unexpected \(first: extra"):
        build_sam(variant="tiny", checkpoint=str(path))


def test_unreadable_checkpoint_is_a_clear_error(tmp_path):
    path = tmp_path / "broken.pth"
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointMismatchError, match=r"cannot read .*broken\.pth"):
        build_sam(variant="tiny", checkpoint=str(path))


def test_prompt_extents_say_where_each_region_is_as_fractions_of_the_image(tiny_sam):
    """Boxes, points and masks of a non-square image give each region's extent over (width, height) of the
    original image, whatever SAM's resizing and padding did to them."""
    encoder = SamRegionEncoder(sam=tiny_sam)
    height, width = 300, 500
    input_size = encoder.transform.get_preprocess_shape(height, width, encoder.image_size)
    boxes = torch.tensor([[50.0, 30.0, 250.0, 150.0], [0.0, 0.0, 500.0, 300.0]])
    expected = boxes / torch.tensor([width, height, width, height])

    def extents(**given):
        prompts, _ = prepare_prompts(encoder, image_size=(height, width), **given)
        return prompts.extents(input_size, square_size=encoder.image_size)

    assert_close(extents(boxes=boxes), expected)
    # points: the span of the positive ones; a region with only negative points spans all its points
    points = torch.tensor([[[50.0, 30.0], [250.0, 150.0], [400.0, 290.0]], [[100.0, 60.0], [300.0, 240.0], [200, 90]]])
    labels = torch.tensor([[1, 1, 0], [0, 0, 0]])
    assert_close(
        extents(points=points, point_labels=labels),
        torch.tensor([[0.1, 0.1, 0.5, 0.5], [0.2, 0.2, 0.6, 0.8]]),
    )
    # masks: their bounding box, to within one cell of SAM's low-resolution grid; an empty mask is the whole image
    masks = np.zeros((2, height, width), dtype=bool)
    masks[0, 30:150, 50:250] = True
    cell = encoder.image_size / encoder.mask_input_size[0] / (input_size[1] / width)  # original pixels per cell
    found = extents(masks=masks)
    assert_close(found[0], expected[0], atol=cell / height + 1e-6, rtol=0)
    assert_close(found[1], torch.tensor([0.0, 0.0, 1.0, 1.0]))
    # a box wins over the points given with it
    assert_close(extents(boxes=boxes, points=points[:, :1]), expected)
