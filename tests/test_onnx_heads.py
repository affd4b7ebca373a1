"""The captioner's and the VQA projector's exported graphs against torch on the tiny config: greedy caption tokens
equal to `CaptionDecoder.generate`'s, projector embeddings within 1e-5 (the LLM stays a Hugging Face model), and
`OnnxRegionPredictor`'s captions equal to `RegionSpotPredictor`'s text for every prompt kind, with and without torch."""

from __future__ import annotations

import json
import warnings

import numpy as np
import onnxruntime
import pytest
import torch
from safetensors.torch import save_file
from skimage import data as skimage_data
from tokenizers import Tokenizer
from torchless import run_without_torch

from regionspot import RegionSpotConfig, RegionSpotPredictor, build_regionspot
from regionspot.config import CaptionConfig, VqaConfig
from regionspot.demo.language_model import write_tiny_causal_lm
from regionspot.everything import NothingKeptWarning
from regionspot.modeling.caption_tokenizer import CaptionTokenizer
from regionspot.modeling.regionspot import region_condition_dim
from regionspot.onnx import OnnxRegionPredictor
from regionspot.onnx.caption import caption_vocabulary, greedy_caption_tokens
from regionspot.onnx.export import export_onnx

CORPUS = ["a red box on the left", "a blue circle at the top", "the green square is small", "what colour is it"]


@pytest.fixture(scope="module")
def exported_heads(tmp_path_factory):
    """A tiny model with a captioner and a VQA head whose weights (projector statistics moved off 0 and 1) are held
    as files, as a trained run leaves them, with its adapter and a SAM sharpened as tests/test_onnx_everything.py's
    (so that segment everything keeps masks); its export; and the torch model built from the same files."""
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
        for mlp in model.sam.sam.mask_decoder.output_hypernetworks_mlps:
            mlp.layers[-1].weight.mul_(40)
        model.sam.sam.mask_decoder.iou_prediction_head.layers[-1].bias.add_(0.7)
    parts = {
        "caption": model.caption_decoder.state_dict(),
        "vqa": model.vqa.trained_state_dict(),
        "sam": model.sam.sam.state_dict(),
        "adapter": model.adapter.state_dict(),
    }
    for part, state in parts.items():
        save_file({k: v.contiguous() for k, v in state.items()}, folder / f"{part}.safetensors")
        getattr(config, part).checkpoint = str(folder / f"{part}.safetensors")
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


def test_caption_text_without_torch_is_open_clips(exported_heads):
    """The ONNX side's text (tokenizer.json's byte-level BPE) equals `CaptionTokenizer.decode`'s (open_clip's) for
    rows over CLIP's whole vocabulary and over a shortlist with UNK, EOS and padding."""
    folder, manifest, _ = exported_heads
    tokenizer = Tokenizer.from_file(str(folder / manifest["text"]["tokenizer"]))
    rng = np.random.default_rng(0)
    for token_ids in (None, manifest["heads"]["caption"]["token_ids"]):
        want = CaptionTokenizer(token_ids=token_ids)
        head = {"token_ids": token_ids, "bos_id": want.bos_id, "eos_id": want.eos_id}
        rows = rng.integers(0, want.vocab_size, (3000, 8)).tolist()
        assert caption_vocabulary(head, tokenizer).decode(rows) == want.decode(rows)


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


VOCAB = ["cup", "saucer", "table", "spoon"]


@pytest.fixture(scope="module")
def predictors(exported_heads):
    folder, _, model = exported_heads
    return RegionSpotPredictor(model), OnnxRegionPredictor(folder, threads=1)


def _prompts(height: int, width: int) -> list[dict]:
    rng = np.random.default_rng(0)
    x1, y1 = rng.uniform(0, width * 0.6, 8), rng.uniform(0, height * 0.6, 8)
    boxes = np.stack([x1, y1, x1 + rng.uniform(8, width * 0.4, 8), y1 + rng.uniform(8, height * 0.4, 8)], axis=1)
    points = np.stack([rng.uniform(0, width, (8, 3)), rng.uniform(0, height, (8, 3))], axis=-1)
    labels = rng.integers(0, 2, (8, 3))
    labels[0] = 0  # no positive point: the span of all of them
    masks = np.zeros((8, height, width), bool)
    for i, (a, b, c, d) in enumerate(boxes.astype(int)):
        masks[i, b:d, a:c] = True
    masks[1] = False  # an empty mask: the whole image
    return [
        {"boxes": boxes},
        {"points": points, "point_labels": labels},
        {"points": points[:, :1]},
        {"masks": masks},
        {"points": points, "masks": masks},
    ]


def test_onnx_captions_are_the_torch_predictors_text(predictors):
    torch_predictor, onnx_predictor = predictors
    rgb = skimage_data.coffee()
    for predictor in predictors:
        predictor.set_image(rgb)
    seen = set()
    for prompts in _prompts(*rgb.shape[:2]):
        want = torch_predictor.predict(vocabulary=VOCAB, caption=True, return_masks=False, **prompts).captions
        got = onnx_predictor.predict(vocabulary=VOCAB, caption=True, return_masks=False, **prompts).captions
        assert got == want, list(prompts)
        seen.update(got)
    assert len(seen) > 1 and all(isinstance(c, str) for c in seen)  # not one caption for every region
    images, boxes = [rgb, skimage_data.astronaut()], [_prompts(*rgb.shape[:2])[0]["boxes"], [[30, 40, 300, 400]]]
    want = torch_predictor.predict_images(images, boxes=boxes, vocabulary=VOCAB, caption=True)
    got = onnx_predictor.predict_images(images, boxes=boxes, vocabulary=VOCAB, caption=True)
    assert [g.captions for g in got] == [w.captions for w in want]
    assert onnx_predictor.predict(vocabulary=VOCAB, boxes=boxes[1]).captions is None


def test_segment_everything_captions_are_the_torch_predictors(predictors):
    torch_predictor, onnx_predictor = predictors
    rgb = skimage_data.chelsea()
    for predictor in predictors:
        predictor.set_image(rgb)
    settings = {"points_per_side": 4, "pred_iou_thresh": 0.5, "stability_score_thresh": 0.5}
    want = torch_predictor.predict_everything(vocabulary=VOCAB, caption=True, **settings)
    got = onnx_predictor.predict_everything(vocabulary=VOCAB, caption=True, **settings)
    assert len(want) > 0 and np.allclose(got.boxes, want.boxes.numpy(), atol=1)
    assert got.captions == want.captions
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NothingKeptWarning)
        none = onnx_predictor.predict_everything(vocabulary=VOCAB, caption=True, points_per_side=1,
                                                 pred_iou_thresh=1.5)  # fmt: skip
    assert none.captions == [] and len(none) == 0


def test_captions_and_questions_are_refused_clearly(predictors, exported_heads, tiny_onnx_export, tmp_path):
    onnx_predictor = predictors[1]
    without_captioner = OnnxRegionPredictor(tiny_onnx_export[0], threads=1)
    for predictor in (without_captioner, RegionSpotPredictor(build_regionspot("tiny"))):
        predictor.set_image(np.zeros((20, 30, 3), np.uint8))
        with pytest.raises(ValueError, match="caption=True needs a model with a captioner"):
            predictor.predict(vocabulary=VOCAB, boxes=[[0, 0, 9, 9]], caption=True)
    with pytest.raises(ValueError, match=r"VQA head's LLM, a Hugging Face \(torch\) model .* RegionSpotPredictor\.ask"):
        onnx_predictor.ask("what is <region1>?", boxes=[[0, 0, 9, 9]])
    folder = exported_heads[0]
    manifest = json.loads((folder / "manifest.json").read_text())
    older = tmp_path / "older"  # an export from before the condition graph
    older.mkdir()
    for file in folder.iterdir():
        if file.name != "condition.onnx":
            (older / file.name).write_bytes(file.read_bytes())
    del manifest["graphs"]["condition"]
    (older / "manifest.json").write_text(json.dumps(manifest))
    predictor = OnnxRegionPredictor(older)
    predictor.set_image(np.zeros((20, 30, 3), np.uint8))
    with pytest.raises(ValueError, match=r"has no condition graph .* export the model again"):
        predictor.predict(vocabulary=VOCAB, boxes=[[0, 0, 9, 9]], caption=True)


def test_onnx_captions_run_with_torch_unimportable(exported_heads, predictors):
    folder, _, _ = exported_heads
    torch_predictor = predictors[0]
    torch_predictor.set_image(np.full((40, 60, 3), 120, np.uint8))
    boxes = [[2, 2, 30, 30], [10, 5, 59, 39]]
    want = torch_predictor.predict(vocabulary=VOCAB, boxes=boxes, caption=True).captions
    done = run_without_torch(f"""
        import numpy as np
        from regionspot.onnx import OnnxRegionPredictor

        predictor = OnnxRegionPredictor({str(folder)!r})
        predictor.set_image(np.full((40, 60, 3), 120, np.uint8))
        assert predictor.predict(vocabulary={VOCAB!r}, boxes={boxes!r}, caption=True).captions == {want!r}
    """)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]
