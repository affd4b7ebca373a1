"""The captioner's and the VQA projector's exported graphs against torch on the tiny config: greedy caption tokens
equal to `CaptionDecoder.generate`'s, projector embeddings within 1e-5 (the LLM stays a Hugging Face model)."""

from __future__ import annotations

import json

import numpy as np
import onnxruntime
import pytest
import torch
from safetensors.torch import save_file

from regionspot import RegionSpotConfig, build_regionspot
from regionspot.config import CaptionConfig, VqaConfig
from regionspot.demo.language_model import write_tiny_causal_lm
from regionspot.modeling.caption_tokenizer import CaptionTokenizer
from regionspot.modeling.regionspot import region_condition_dim
from regionspot.onnx.caption import greedy_caption_tokens
from regionspot.onnx.export import export_onnx

CORPUS = ["a red box on the left", "a blue circle at the top", "the green square is small", "what colour is it"]


@pytest.fixture(scope="module")
def exported_heads(tmp_path_factory):
    """A tiny model with a captioner and a VQA head whose weights (projector statistics moved off 0 and 1) are held
    as files, as a trained run leaves them; its export; and the torch model built from the same files."""
    folder = tmp_path_factory.mktemp("heads")
    config = RegionSpotConfig.from_yaml("tiny")
    token_ids = CaptionTokenizer.from_corpus(CORPUS).token_ids
    config.caption = CaptionConfig(depth=2, width=32, num_heads=2, mlp_dim=64, dropout=0.0, max_length=12,
                                   token_ids=token_ids)  # fmt: skip
    config.vqa = VqaConfig(llm=str(write_tiny_causal_lm(folder / "lm", corpus=CORPUS)), tokens_per_region=2,
                           location_token=True)  # fmt: skip
    torch.manual_seed(3)
    model = build_regionspot(config)
    with torch.no_grad():
        model.vqa.projector.standardize.running_mean.normal_(0, 2)
        model.vqa.projector.standardize.running_var.uniform_(0.5, 3)
    save_file(
        {k: v.contiguous() for k, v in model.caption_decoder.state_dict().items()}, folder / "caption.safetensors"
    )
    save_file({k: v.contiguous() for k, v in model.vqa.trained_state_dict().items()}, folder / "vqa.safetensors")
    config.caption.checkpoint, config.vqa.checkpoint = (
        str(folder / "caption.safetensors"),
        str(folder / "vqa.safetensors"),
    )
    manifest = json.loads(export_onnx(config, folder / "export").read_text())
    return folder / "export", manifest, build_regionspot(config).eval()


def _session(folder, manifest, name):
    return onnxruntime.InferenceSession(
        str(folder / manifest["graphs"][name]["file"]), providers=["CPUExecutionProvider"]
    )


def test_greedy_captions_are_the_torch_decoders_tokens(exported_heads):
    folder, manifest, model = exported_heads
    caption = manifest["heads"]["caption"]
    assert caption["decoding"] == "greedy" and caption["token_ids"] == model.caption_tokenizer.token_ids
    condition = torch.randn(23, region_condition_dim(model.sam, model.clip), generator=torch.Generator().manual_seed(0))
    want = model.caption_decoder.generate(condition, bos_id=caption["bos_id"], eos_id=caption["eos_id"], num_beams=1)
    got = greedy_caption_tokens(
        _session(folder, manifest, "caption_step"), condition.numpy(), bos_id=caption["bos_id"],
        eos_id=caption["eos_id"], max_length=caption["max_length"],
    )  # fmt: skip
    assert got.shape == tuple(want.shape) and len(set(map(tuple, got.tolist()))) > 1  # not one caption for all
    np.testing.assert_array_equal(got, want.numpy())
    assert greedy_caption_tokens(_session(folder, manifest, "caption_step"), np.zeros((0, condition.shape[1])),
                                 bos_id=1, eos_id=2, max_length=5).shape == (0, 0)  # fmt: skip


def test_the_vqa_projector_graph_matches_torch_and_the_llm_is_not_exported(exported_heads):
    folder, manifest, model = exported_heads
    assert manifest["not_exported"] == ["vqa_llm"] and manifest["heads"]["vqa"]["tokens_per_region"] == 3
    for regions in (1, 7):
        conditions = torch.randn(regions, region_condition_dim(model.sam, model.clip))
        with torch.no_grad():
            want = model.vqa.projector(conditions)
        (got,) = _session(folder, manifest, "vqa_projector").run(None, {"conditions": conditions.numpy()})
        assert got.shape == (regions, 3, 64)
        np.testing.assert_allclose(got, want.numpy(), atol=1e-5, rtol=0)
