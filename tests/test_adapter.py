"""Fusion adapter, naming losses and the whole model's training contract."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch.testing import assert_close

from regionspot.modeling.adapter import RegionFusionAdapter, box_patch_coverage, box_token_mask
from regionspot.modeling.losses import (
    region_distillation_loss,
    region_focal_loss,
    region_softmax_loss,
    sigmoid_focal_loss,
)
from regionspot.modeling.regionspot import FrozenFeatures


@pytest.mark.parametrize(("width", "text_dim", "expected"), [(768, 512, 24_226_304), (1024, 768, 38_853_376)])
def test_default_adapter_has_regionspots_size(width, text_dim, expected):
    """RegionSpot reports 24.2M trainable parameters with CLIP-B/16 and 38.9M with CLIP-L; its released
    checkpoints hold exactly these counts (BB; BL and BL@336), which ours match."""
    adapter = RegionFusionAdapter(token_dim=256, width=width, output_dim=text_dim)
    assert sum(p.numel() for p in adapter.parameters()) == expected


@pytest.mark.parametrize(("alpha", "gamma"), [(0.25, 2.0), (0.5, 1.0), (-1.0, 0.0), (0.25, 0.5)])
@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
def test_focal_loss_equals_torchvision(alpha, gamma, reduction):
    logits = torch.randn(7, 11) * 4
    targets = (torch.rand(7, 11) > 0.8).float()
    ours = sigmoid_focal_loss(logits, targets, alpha=alpha, gamma=gamma, reduction=reduction)
    reference = torchvision.ops.sigmoid_focal_loss(logits, targets, alpha=alpha, gamma=gamma, reduction=reduction)
    assert_close(ours, reference)


def test_focal_loss_gradients_equal_torchvision():
    logits = (torch.randn(5, 9) * 3).requires_grad_()
    targets = (torch.rand(5, 9) > 0.7).float()
    sigmoid_focal_loss(logits, targets, reduction="sum").backward()
    ours = logits.grad.clone()
    logits.grad = None
    torchvision.ops.sigmoid_focal_loss(logits, targets, reduction="sum").backward()
    assert_close(ours, logits.grad)


def test_region_focal_loss_is_per_box_sum_over_vocabulary():
    logits = torch.randn(4, 6)
    labels = torch.tensor([0, 5, 2, 2])
    targets = torch.nn.functional.one_hot(labels, 6).float()
    expected = torchvision.ops.sigmoid_focal_loss(logits, targets, reduction="sum") / 4
    assert_close(region_focal_loss(logits, labels), expected)
    assert region_focal_loss(logits[:0], labels[:0]).item() == 0.0
    with pytest.raises(ValueError, match="expected logits"):
        region_focal_loss(logits, labels[:3])


def test_region_softmax_loss_is_cross_entropy_reduced_as_the_focal_loss():
    logits = (torch.randn(5, 7) * 5).to(torch.bfloat16)
    labels = torch.tensor([0, 6, 3, 3, 1])
    assert region_softmax_loss(logits, labels).dtype == torch.float32  # bf16 scores, fp32 loss
    assert_close(region_softmax_loss(logits, labels), torch.nn.functional.cross_entropy(logits.float(), labels))
    per_box = torch.nn.functional.cross_entropy(logits.float(), labels, reduction="none")
    by_image = region_softmax_loss(logits, labels, reduction="images", boxes_per_image=[2, 0, 3])
    assert_close(by_image, per_box[:2].mean() + per_box[2:].mean())
    assert region_softmax_loss(logits[:0], labels[:0]).item() == 0.0
    with pytest.raises(ValueError, match="boxes_per_image"):
        region_softmax_loss(logits, labels, reduction="images", boxes_per_image=[2, 2])
    with pytest.raises(ValueError, match="expected logits"):
        region_softmax_loss(logits, labels[:3])


def test_region_distillation_loss_is_the_squared_distance_reduced_as_the_focal_loss():
    features = torch.nn.functional.normalize(torch.randn(5, 8), dim=-1).to(torch.bfloat16).requires_grad_()
    targets = torch.nn.functional.normalize(torch.randn(5, 8), dim=-1).requires_grad_()
    loss = region_distillation_loss(features, targets)
    assert loss.dtype == torch.float32
    assert_close(loss, torch.nn.functional.mse_loss(features.float(), targets, reduction="sum") / 5)
    cosine = torch.nn.functional.cosine_similarity(features.float(), targets)
    assert_close(loss, (2 - 2 * cosine).mean(), atol=2e-2, rtol=0)  # unit vectors (up to bf16 rounding)
    per_box = (features.float() - targets).pow(2).sum(dim=1)
    by_image = region_distillation_loss(features, targets, reduction="images", boxes_per_image=[3, 0, 2])
    assert_close(by_image, per_box[:3].mean() + per_box[3:].mean())
    loss.backward()
    assert features.grad is not None and targets.grad is None  # the target is CLIP's: it never trains
    assert region_distillation_loss(targets[:0], targets[:0]).item() == 0.0
    with pytest.raises(ValueError, match=r"one \(N, E\) shape"):
        region_distillation_loss(features, targets[:, :4])


def test_focal_loss_rejects_unknown_reduction():
    with pytest.raises(ValueError, match="reduction"):
        sigmoid_focal_loss(torch.zeros(2), torch.zeros(2), reduction="avg")


def test_adapter_width_must_split_into_heads():
    with pytest.raises(ValueError, match="not divisible"):
        RegionFusionAdapter(token_dim=16, width=30, output_dim=8, num_heads=8)


def _frozen(model, regions: int) -> FrozenFeatures:
    """Random frozen outputs of the right shapes for one image with `regions` regions."""
    return FrozenFeatures(
        region_tokens=torch.randn(regions, 1, model.sam.token_dim),
        mask_scores=torch.rand(regions, 1),
        clip_tokens=torch.randn(65, model.clip.width),
        region_boxes=torch.rand(regions, 4),
    )


@torch.no_grad()
def test_padding_does_not_change_results(tiny_model):
    """Images batched with different region counts give what each gives alone."""
    frozen = [_frozen(tiny_model, 3), _frozen(tiny_model, 1)]
    together = tiny_model.region_features(frozen)
    for i in range(2):
        alone = tiny_model.region_features([frozen[i]])[0]
        assert_close(together[i], alone, atol=1e-5, rtol=1e-5)
        assert_close(together[i].norm(dim=-1), torch.ones(together[i].shape[:2]))


def test_region_features_rejects_bad_batches(tiny_model):
    with pytest.raises(ValueError, match="at least one image"):
        tiny_model.region_features([])
    with pytest.raises(ValueError, match="N >= 1"):
        tiny_model.region_features([_frozen(tiny_model, 0)])


def test_only_the_adapter_trains(tiny_config):
    from regionspot import build_regionspot

    model = build_regionspot(tiny_config).train()
    assert not model.sam.training and not model.clip.training and model.adapter.training
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith("adapter.") for n in trainable)
    counts = model.parameter_counts()
    assert counts["trainable"] == sum(p.numel() for p in model.adapter.parameters())
    assert "trainable=" in repr(model) and "frozen=" in repr(model)

    text = torch.nn.functional.normalize(torch.randn(5, model.clip.embed_dim), dim=-1)
    logits = model([_frozen(model, 2)], text)[0]
    assert logits.shape == (2, 1, 5)
    region_focal_loss(logits[:, 0], torch.tensor([1, 3])).backward()
    assert all(p.grad is not None for p in model.adapter.parameters())
    assert all(p.grad is None for p in model.clip.parameters())


def test_box_token_mask_keeps_the_class_token_and_the_cells_a_box_covers():
    boxes = torch.tensor(
        [
            [0.0, 0.0, 0.5, 0.5],  # the top left cell of a 2 x 2 grid
            [0.25, 0.25, 0.75, 0.75],  # a part of all four
            [0.8, 0.1, 0.8, 0.1],  # a point: the cell it lies in (top right)
            [0.0, 0.5, 1.0, 1.0],  # the bottom row
        ]
    )
    inside = ~box_token_mask(boxes, num_tokens=5)  # class token, then the cells row by row
    expected = [[1, 1, 0, 0, 0], [1, 1, 1, 1, 1], [1, 0, 1, 0, 0], [1, 0, 0, 1, 1]]
    assert inside.tolist() == [[bool(v) for v in row] for row in expected]
    assert box_token_mask(boxes[None], num_tokens=5).shape == (1, 4, 5)  # any leading dimensions
    with pytest.raises(ValueError, match="square patch grid"):
        box_token_mask(boxes, num_tokens=6)


@torch.no_grad()
def test_box_attention_reads_only_the_tokens_of_each_box():
    """With box attention a region's feature does not move when CLIP tokens outside its box do; one whose box is
    the whole image gets what the same weights give without box attention."""
    torch.manual_seed(0)
    plain = RegionFusionAdapter(token_dim=16, width=32, output_dim=24, depth=2, num_heads=2, ffn_dim=64).eval()
    boxed = RegionFusionAdapter(
        token_dim=16, width=32, output_dim=24, depth=2, num_heads=2, ffn_dim=64, box_attention=True
    ).eval()
    boxed.load_state_dict(plain.state_dict())  # no parameters of its own
    regions, tokens = torch.randn(2, 3, 16), torch.randn(2, 17, 32)  # a 4 x 4 grid and the class token
    boxes = torch.tensor([[0.0, 0.0, 0.5, 0.5], [0.0, 0.0, 1.0, 1.0], [0.6, 0.6, 0.9, 0.9]]).expand(2, 3, 4)
    # Regions attend to each other, so each box is tested alone: the other regions would carry what they saw.
    for index in (0, 2):
        alone = boxes[:, index : index + 1]
        moved = tokens.clone()
        moved[:, 1:][box_token_mask(alone, 17)[:, 0, 1:]] += 5.0  # every token outside the box
        before = boxed(regions[:, index : index + 1], tokens, region_boxes=alone)
        assert_close(boxed(regions[:, index : index + 1], moved, region_boxes=alone), before)
        assert not torch.allclose(
            plain(regions[:, index : index + 1], moved), plain(regions[:, index : index + 1], tokens)
        )
    whole = boxes[:, 1:2]
    assert_close(boxed(regions[:, 1:2], tokens, region_boxes=whole), plain(regions[:, 1:2], tokens))
    with pytest.raises(ValueError, match="region boxes"):
        boxed(regions, tokens)


def test_box_attention_follows_the_model_config_and_its_boxes(tiny_config):
    """`adapter.box_attention` builds it; `region_features` hands each region's box (once per SAM token) to it."""
    import dataclasses

    from regionspot import build_regionspot

    config = dataclasses.replace(tiny_config, adapter=dataclasses.replace(tiny_config.adapter, box_attention=True))
    torch.manual_seed(0)
    model = build_regionspot(config).eval()
    assert model.adapter.box_attention and not build_regionspot(tiny_config).adapter.box_attention
    frozen = _frozen(model, 2)
    frozen.region_boxes = torch.tensor([[0.0, 0.0, 0.2, 0.2], [0.6, 0.6, 1.0, 1.0]])
    with torch.no_grad():
        before = model.region_features([frozen])[0]
        frozen.clip_tokens[1:] = frozen.clip_tokens[1:] + 3.0 * box_token_mask_for(frozen)[..., None]
        assert_close(model.region_features([frozen])[0], before)


def box_token_mask_for(frozen: FrozenFeatures) -> torch.Tensor:
    """(L - 1,) True at the patches that lie outside every region's box."""
    return box_token_mask(frozen.region_boxes, len(frozen.clip_tokens))[:, 1:].all(dim=0)


@torch.no_grad()
def test_clip_region_embeddings_pool_the_projected_patch_tokens_by_box_coverage(tiny_model):
    """The distillation target: CLIP's final LayerNorm and projection (open_clip's own modules) on each patch token,
    averaged with weights the share of each cell the box covers (a point: its cell), unit norm; the class token
    plays no part."""
    frozen = _frozen(tiny_model, 4)
    frozen.region_boxes = torch.tensor(
        [[0.0, 0.0, 1.0, 1.0], [0.0, 0.0, 0.125, 0.125], [0.0625, 0.0, 0.25, 0.125], [0.3, 0.3, 0.3, 0.3]]
    )  # the whole image, the top left cell of the 8 x 8 grid, half of it and all of its right neighbour, a point
    visual = tiny_model.clip.model.visual
    grid = (visual.ln_post(frozen.clip_tokens[1:]) @ visual.proj).reshape(8, 8, -1)
    expected = torch.stack(
        [grid.mean((0, 1)), grid[0, 0], (0.5 * grid[0, 0] + grid[0, 1]) / 1.5, grid[2, 2]]  # 0.3 * 8 = 2.4: cell 2
    )
    embeddings = tiny_model.clip_region_embeddings([frozen])[0]
    assert_close(embeddings, torch.nn.functional.normalize(expected, dim=-1), atol=1e-5, rtol=1e-5)
    frozen.clip_tokens[0] += 10.0
    assert_close(tiny_model.clip_region_embeddings([frozen])[0], embeddings)


def test_box_patch_coverage_is_the_share_of_each_cell_inside_the_box():
    boxes = torch.tensor([[0.25, 0.0, 0.75, 0.5], [0.1, 0.1, 0.1, 0.9]])  # a 2 x 2 grid; a zero-width box
    coverage = box_patch_coverage(boxes, num_tokens=5)
    assert_close(coverage, torch.tensor([[0.5, 0.5, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]]))
    assert ((coverage > 0) <= ~box_token_mask(boxes, 5)[:, 1:]).all()  # box attention reads every covered cell
