"""`build_regionspot(config, image_encoders=False)`: SAM and CLIP without their image encoders, for training from a
feature cache. Everything that remains equals a whole build (weights, constants, sizes, text embeddings); with
checkpoints the encoders are built on the meta device only, never given memory nor initialised; images are refused
with an error that says why."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import regionspot.modeling.clip as clip_module
from regionspot import RegionSpotConfig
from regionspot.build import build_regionspot
from regionspot.modeling import sam as sam_module
from regionspot.modeling.left_out import allocate_meta_tensors

TINY = "tiny"
ENCODERS = ("sam.sam.image_encoder.", "clip.model.visual.")


def _backbone_tensors(model) -> dict[str, torch.Tensor]:
    """Every parameter and buffer of SAM and CLIP, persistent or not (the adapter's random start is not theirs)."""
    tensors = {**dict(model.named_parameters()), **dict(model.named_buffers())}
    return {name: t for name, t in tensors.items() if name.startswith(("sam.", "clip."))}


def _assert_the_rest_equals(left_out, whole) -> None:
    kept, full = _backbone_tensors(left_out), _backbone_tensors(whole)
    assert not [name for name in kept if name.startswith(ENCODERS)]
    assert set(kept) == {name for name in full if not name.startswith(ENCODERS)}
    for name, tensor in kept.items():
        assert tensor.dtype == full[name].dtype and not tensor.is_meta, name
        torch.testing.assert_close(tensor, full[name], rtol=0, atol=0, msg=name)
    assert (left_out.sam.image_size, left_out.sam.token_dim) == (whole.sam.image_size, whole.sam.token_dim)
    assert (left_out.clip.image_size, left_out.clip.width, left_out.clip.embed_dim) == (
        whole.clip.image_size,
        whole.clip.width,
        whole.clip.embed_dim,
    )
    names = ["red square", "blue circle"]
    torch.testing.assert_close(left_out.clip.encode_vocabulary(names), whole.clip.encode_vocabulary(names))
    assert left_out.adapter.input_proj.weight.shape == whole.adapter.input_proj.weight.shape


def test_random_backbones_without_image_encoders_equal_the_rest_of_a_whole_build():
    config = RegionSpotConfig.from_yaml(TINY)
    left_out, whole = build_regionspot(config, image_encoders=False), build_regionspot(config)
    assert not left_out.image_encoders_built and whole.image_encoders_built
    _assert_the_rest_equals(left_out, whole)
    assert left_out.parameter_counts()["frozen"] < whole.parameter_counts()["frozen"]


@pytest.mark.parametrize("precision", ["auto", "float16"])
def test_with_checkpoints_the_image_encoders_are_never_built_and_the_rest_is_loaded(tmp_path, monkeypatch, precision):
    config = RegionSpotConfig.from_yaml(TINY)
    config.clip.precision = precision
    whole = build_regionspot(config)
    torch.save(whole.sam.sam.state_dict(), tmp_path / "sam.pth")
    torch.save(whole.clip.model.state_dict(), tmp_path / "clip.pt")
    config.sam.checkpoint, config.clip.checkpoint = str(tmp_path / "sam.pth"), str(tmp_path / "clip.pt")

    built_on = []  # where each backbone's image encoder was made
    tiny_sam, create_clip = sam_module.SAM_BUILDERS["tiny"], clip_module.open_clip.create_model

    def spied_sam():
        sam = tiny_sam()
        built_on.append(("sam", sam.image_encoder.patch_embed.proj.weight.device.type))
        return sam

    def spied_clip(*args, **kwargs):
        model = create_clip(*args, **kwargs)
        built_on.append(("clip", model.visual.conv1.weight.device.type))
        return model

    monkeypatch.setitem(sam_module.SAM_BUILDERS, "tiny", spied_sam)
    monkeypatch.setattr(clip_module.open_clip, "create_model", spied_clip)
    left_out = build_regionspot(config, image_encoders=False)
    assert built_on == [("sam", "meta"), ("clip", "meta")]  # shapes only: no memory, no initialisation
    _assert_the_rest_equals(left_out, build_regionspot(config))


def test_images_are_refused_with_an_error_that_says_why():
    model = build_regionspot(TINY, image_encoders=False)
    with pytest.raises(RuntimeError, match=r"CLIP's visual tower was not built \(image_encoders=False"):
        model.clip.feature_map(torch.zeros(1, 3, 64, 64))
    with pytest.raises(RuntimeError, match=r"SAM's image encoder was not built .*features: DIR"):
        model.sam.embed_images(torch.zeros(1, 3, 128, 128))
    model.compile_backbones()  # nothing to compile is not an error


def test_meta_tensors_get_memory_constants_their_value_and_shared_ones_stay_shared():
    class Tied(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Linear(3, 3), nn.Linear(3, 3)
            self.b.weight = self.a.weight
            self.register_buffer("kept", torch.ones(2))
            self.register_buffer("constant", torch.ones(2), persistent=False)

    with torch.device("meta"):
        model = Tied()
    allocate_meta_tensors(model, constants={"constant": lambda placeholder: torch.full(placeholder.shape, 7.0)})
    assert not any(t.is_meta for t in [*model.parameters(), *model.buffers()])
    assert model.a.weight is model.b.weight and model.a.weight.requires_grad
    assert model.constant.tolist() == [7.0, 7.0]
    model.load_state_dict(Tied().state_dict())  # what the builders do next: every persistent entry loaded

    with torch.device("meta"):
        unknown = Tied()
    with pytest.raises(RuntimeError, match=r"buffer 'constant' is not in its state dict and has no known value"):
        allocate_meta_tensors(unknown)
