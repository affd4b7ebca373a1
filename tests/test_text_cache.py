"""The text-embedding disk cache: read back exactly, missed when the model or vocabulary changes, never trusted
when damaged."""

from __future__ import annotations

import copy
import logging

import open_clip
import pytest
import torch

from regionspot.modeling.clip import PROMPT_TEMPLATES, ClipBackbone, build_clip

TINY = "RegionSpot-Tiny-CLIP"
NAMES = ["red circle", "dog", "traffic light", "dog"]


@pytest.fixture(scope="module")
def clip_model() -> open_clip.CLIP:
    torch.manual_seed(0)
    return build_clip(model_name=TINY).eval()


def _backbone(model, cache_dir, templates: str = "plain") -> ClipBackbone:
    """A backbone over its own copy of `model`, as a new run would build (and so that counting its text-encoder
    calls leaves the shared model alone)."""
    return ClipBackbone(
        model=copy.deepcopy(model),
        tokenizer=open_clip.get_tokenizer(TINY),
        templates=PROMPT_TEMPLATES[templates],
        text_cache_dir=cache_dir,
    )


def _counting_encoder(backbone: ClipBackbone) -> list[int]:
    """Count the backbone's text-encoder calls (an instance attribute shadows the model's method)."""
    calls = []
    encode = backbone.model.encode_text

    def counted(*args, **kwargs):
        calls.append(1)
        return encode(*args, **kwargs)

    backbone.model.encode_text = counted
    return calls


@pytest.fixture
def cached(clip_model, tmp_path):
    """The tiny CLIP's embeddings of NAMES, written to a fresh cache folder."""
    first = _backbone(clip_model, tmp_path).encode_vocabulary(NAMES)
    return first, next(tmp_path.glob("*.safetensors"))


def test_a_later_run_reads_the_cache_exactly(clip_model, cached, tmp_path):
    first, _ = cached
    backbone = _backbone(clip_model, tmp_path)  # a later run: nothing in memory
    calls = _counting_encoder(backbone)
    again = backbone.encode_vocabulary(NAMES)
    assert not calls
    assert torch.equal(again, first)
    assert len(list(tmp_path.iterdir())) == 1  # no staging file left behind


def test_a_changed_name_template_or_text_weight_misses(clip_model, cached, tmp_path):
    first, _ = cached
    renamed = _backbone(clip_model, tmp_path)
    calls = _counting_encoder(renamed)
    # the other names are recomputed in another batch: equal to float32 rounding (bit for bit on some CPUs only)
    torch.testing.assert_close(renamed.encode_vocabulary([*NAMES[:-1], "cat"])[:3], first[:3], rtol=1e-5, atol=1e-6)
    assert calls

    other_templates = _backbone(clip_model, tmp_path, templates="imagenet")
    calls = _counting_encoder(other_templates)
    other_templates.encode_vocabulary(NAMES)
    assert calls

    changed = copy.deepcopy(clip_model)
    with torch.no_grad():
        changed.ln_final.bias.add_(0.1)
    retrained = _backbone(changed, tmp_path)
    calls = _counting_encoder(retrained)
    assert not torch.equal(retrained.encode_vocabulary(NAMES), first)
    assert calls
    assert len(list(tmp_path.glob("*.safetensors"))) == 4  # one file per (text tower, vocabulary)


def test_the_image_tower_is_not_part_of_the_key(clip_model, cached, tmp_path):
    first, _ = cached
    changed = copy.deepcopy(clip_model)
    with torch.no_grad():
        changed.visual.conv1.weight.add_(0.1)
    backbone = _backbone(changed, tmp_path)
    calls = _counting_encoder(backbone)
    assert torch.equal(backbone.encode_vocabulary(NAMES), first)
    assert not calls


def _truncate(path):
    path.write_bytes(path.read_bytes()[:-7])


def _flip_last_byte(path):  # the header still parses; the data no longer matches its digest
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.mark.parametrize(("damage", "reason"), [(_truncate, "unreadable"), (_flip_last_byte, "damaged")])
def test_a_damaged_cache_file_is_recomputed_and_rewritten(clip_model, cached, tmp_path, caplog, damage, reason):
    first, path = cached
    damage(path)
    backbone = _backbone(clip_model, tmp_path)
    calls = _counting_encoder(backbone)
    with caplog.at_level(logging.WARNING, logger="regionspot.modeling.clip"):
        again = backbone.encode_vocabulary(NAMES)
    assert calls and reason in caplog.text
    assert torch.equal(again, first)

    later = _backbone(clip_model, tmp_path)
    calls = _counting_encoder(later)
    assert torch.equal(later.encode_vocabulary(NAMES), first)
    assert not calls  # the recomputed embeddings were written back, whole


def test_another_vocabularys_file_under_this_name_is_not_read(clip_model, cached, tmp_path, caplog):
    first, path = cached
    other = _backbone(clip_model, tmp_path)
    other.encode_vocabulary(["cat"])
    cat_file = next(p for p in tmp_path.glob("*.safetensors") if p != path)
    path.write_bytes(cat_file.read_bytes())  # a valid file, of the wrong vocabulary
    backbone = _backbone(clip_model, tmp_path)
    with caplog.at_level(logging.WARNING, logger="regionspot.modeling.clip"):
        assert torch.equal(backbone.encode_vocabulary(NAMES), first)
    assert "another model's or vocabulary's" in caplog.text
