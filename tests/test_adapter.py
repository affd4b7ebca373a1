"""Fusion adapter, naming losses and the whole model's training contract."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch.testing import assert_close

from regionspot.modeling.adapter import RegionFusionAdapter
from regionspot.modeling.losses import region_focal_loss, region_softmax_loss, sigmoid_focal_loss
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
