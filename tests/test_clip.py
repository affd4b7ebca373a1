"""CLIP wrapper: parity with open_clip, text embeddings and their cache, checkpoints."""

from __future__ import annotations

import numpy as np
import open_clip
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch.testing import assert_close

from regionspot.checkpoint import CheckpointMismatchError, read_state_dict
from regionspot.modeling.clip import PROMPT_TEMPLATES, ClipBackbone, build_clip
from regionspot.modeling.preprocess import ImagePreprocessor, resize_for_clip

TINY = "RegionSpot-Tiny-CLIP"


def _backbone(model, templates="imagenet"):
    return ClipBackbone(
        model=model.eval(), tokenizer=open_clip.get_tokenizer(TINY), templates=PROMPT_TEMPLATES[templates]
    )


def test_templates_are_regionspots_81():
    templates = PROMPT_TEMPLATES["imagenet"]
    assert len(templates) == 81
    assert templates[0]("cat") == "cat."
    assert templates[1]("cat") == "a bad photo of a cat."


@torch.no_grad()
def test_feature_map_equals_open_clip_last_block(image):
    backbone = _backbone(build_clip(model_name=TINY))
    images = backbone.normalize(
        resize_for_clip(torch.from_numpy(np.stack([image, image[::-1]])).permute(0, 3, 1, 2), 64)
    )
    captured = []
    hook = backbone.model.visual.transformer.resblocks[-1].register_forward_hook(lambda m, i, o: captured.append(o))
    backbone.model.encode_image(images)
    hook.remove()
    tokens = backbone.feature_map(images)
    grid = backbone.image_size // backbone.model.visual.patch_size[0]
    assert tokens.shape == (2, 1 + grid * grid, backbone.width)
    assert_close(tokens, captured[0])


@torch.no_grad()
def test_embedding_the_class_token_is_open_clips_image_embedding(image):
    """`embed_tokens` (the distillation target's projection) does to a token what open_clip does to the class token."""
    backbone = _backbone(build_clip(model_name=TINY))
    images = backbone.normalize(resize_for_clip(torch.from_numpy(image[None].copy()).permute(0, 3, 1, 2), 64))
    assert_close(backbone.embed_tokens(backbone.feature_map(images)[:, 0]), backbone.model.encode_image(images))


@pytest.mark.parametrize("mode", ["bicubic", "bilinear"])
def test_an_image_already_at_clips_size_is_not_interpolated_and_comes_out_as_interpolation_would(mode):
    pixels = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    expected = F.interpolate(pixels.float() / 255.0, size=(32, 32), mode=mode)
    assert torch.equal(resize_for_clip(pixels, 32, mode=mode), expected)  # the shortcut is exact


def test_preprocessing_resizes_the_whole_image_and_normalises(image):
    backbone = _backbone(build_clip(model_name=TINY))
    preprocessor = ImagePreprocessor(sam_size=128, clip_size=backbone.image_size)
    prepared = preprocessor(image)
    assert prepared.clip_pixels.shape == (3, backbone.image_size, backbone.image_size)
    resized = F.interpolate(torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255, size=(64, 64), mode="bicubic")
    assert torch.equal(prepared.clip_pixels, resized[0])  # no crop: the whole image, squeezed to CLIP's square
    white = backbone.normalize(preprocessor(image * 0 + 255).clip_pixels[None])
    assert_close(white[0, :, 0, 0], ((1 - backbone.image_mean) / backbone.image_std).flatten())


@torch.no_grad()
def test_vocabulary_embedding_is_normalised_template_mean_and_cached():
    backbone = _backbone(build_clip(model_name=TINY))
    names = ["red circle", "dog", "traffic light"]
    embeddings = backbone.encode_vocabulary(names)
    tokenizer = open_clip.get_tokenizer(TINY)
    for i, name in enumerate(names):
        prompts = [t(name) for t in PROMPT_TEMPLATES["imagenet"]]
        per_prompt = backbone.model.encode_text(tokenizer(prompts), normalize=True)
        assert_close(embeddings[i], F.normalize(per_prompt.mean(0), dim=-1), atol=1e-5, rtol=1e-5)

    calls = []
    backbone.model.encode_text = lambda *a, **k: calls.append(a) or torch.zeros(1)
    again = backbone.encode_vocabulary(["dog", "red circle"])
    assert not calls  # every name was cached
    assert_close(again, embeddings[[1, 0]])


def test_vocabulary_errors():
    backbone = _backbone(build_clip(model_name=TINY), templates="plain")
    with pytest.raises(ValueError, match="vocabulary is empty"):
        backbone.encode_vocabulary([])
    with pytest.raises(ValueError, match="non-empty strings"):
        backbone.encode_vocabulary(["dog", "  "])


@pytest.mark.parametrize("fmt", ["pt", "wrapped", "safetensors"])
def test_open_clip_checkpoint_loads(tmp_path, fmt):
    torch.manual_seed(3)
    original = open_clip.create_model(TINY)
    state = original.state_dict()
    path = tmp_path / f"clip.{'safetensors' if fmt == 'safetensors' else 'pt'}"
    if fmt == "pt":
        torch.save(state, path)
    elif fmt == "wrapped":  # a training checkpoint saved under DDP
        torch.save({"epoch": 3, "state_dict": {f"module.{k}": v for k, v in state.items()}}, path)
    else:
        save_file({k: v.contiguous() for k, v in state.items()}, path)
    loaded = build_clip(model_name=TINY, checkpoint=str(path))
    for name, tensor in loaded.state_dict().items():
        assert torch.equal(tensor, state[name]), name


def test_real_size_open_clip_checkpoint_loads(tmp_path):
    """ViT-B-16 as RegionSpot uses it: open_clip's own state dict fits with no missing or unexpected keys."""
    original = open_clip.create_model("ViT-B-16-quickgelu")
    path = tmp_path / "vit_b_16.pt"
    torch.save(original.state_dict(), path)
    loaded = build_clip(model_name="ViT-B-16-quickgelu", checkpoint=str(path))
    assert torch.equal(loaded.visual.conv1.weight, original.visual.conv1.weight)
    assert _backbone(loaded).width == 768 and _backbone(loaded).embed_dim == 512


def test_torchscript_state_dict_drops_openai_extras(tmp_path):
    class Holder(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.proj = torch.nn.Linear(2, 2)
            self.register_buffer("input_resolution", torch.tensor(224))
            self.register_buffer("vocab_size", torch.tensor(49408))

        def forward(self, x):
            return self.proj(x)

    path = tmp_path / "openai.pt"
    torch.jit.script(Holder()).save(str(path))
    assert sorted(read_state_dict(path)) == ["proj.bias", "proj.weight"]


def test_clip_checkpoint_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"ViT-L-14-quickgelu.*missing\.pt"):
        build_clip(model_name="ViT-L-14-quickgelu", checkpoint=str(tmp_path / "missing.pt"))
    with pytest.raises(ValueError, match="unknown open_clip model"):
        build_clip(model_name="ViT-Q-99")
    path = tmp_path / "tiny.pt"
    state = open_clip.create_model(TINY).state_dict()
    torch.save({k: v for k, v in state.items() if not k.startswith("visual.")}, path)
    with pytest.raises(CheckpointMismatchError, match=r"tiny\.pt.*RegionSpot-Tiny-CLIP.*missing \(first: visual\."):
        build_clip(model_name=TINY, checkpoint=str(path))
