"""Export a RegionSpot model to ONNX graphs, a CLIP tokenizer file and a manifest, for `OnnxRegionPredictor`.

    regionspot-export onnx --config tiny [--adapter adapter.safetensors] --out DIR

The graphs (see `regionspot.onnx.graphs`): image (once per image), decoder and decoder_tokens (SAM's decoder with
masks, and tokens only for regions prompted without masks; any number of regions), mask_prompt (mask prompts into
SAM's mask input), masks (upscaling), point_masks (SAM's decoder as its automatic mask generator calls it, for
`predict_everything`), adapter (all regions of an image), text (any number of names), score. They are traced with
torch.onnx's TorchScript exporter (`dynamo=False`; a few with torch.export's, `_Graph.dynamo`), then each is
checked by `onnx.checker` and run once by onnxruntime against the torch module it came from. A model with a
captioner gets caption_step (one greedy decoding step), one with a VQA head gets vqa_projector (its region
projector), and either gets condition (the region condition both read, from the decoder's and the adapter's outputs
and each region's extent); the VQA head's LLM stays a Hugging Face model, and the manifest says so (`not_exported`).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import open_clip
import torch
from open_clip.tokenizer import SimpleTokenizer
from tokenizers import Regex, Tokenizer, decoders, normalizers, pre_tokenizers, processors
from tokenizers.models import BPE

import regionspot
from regionspot.build import build_regionspot
from regionspot.config import RegionSpotConfig
from regionspot.modeling.regionspot import RegionSpot, region_condition_dim
from regionspot.onnx import graphs
from regionspot.onnx.predictor import file_sha256

log = logging.getLogger(__name__)

OPSET = 17
OPSET_DYNAMO = 18  # torch.export-based exporter's lowest
MANIFEST = "manifest.json"
TOKENIZER = "tokenizer.json"
FORMAT = "regionspot-onnx-2"


@dataclass
class _Graph:
    """One graph to export: its module, example inputs, names and dynamic axes, and its exporter (torch.export's
    where the TorchScript tracer would bake a dynamic size into a reshape: `F.multi_head_attention_forward`'s)."""

    module: torch.nn.Module
    inputs: dict[str, torch.Tensor]
    outputs: list[str]
    dynamic: dict[str, dict[int, str]]
    dynamo: bool = False
    largest: dict[str, int] = field(default_factory=dict)  # a dynamic axis' largest size, where the model has one

    @property
    def opset(self) -> int:
        return OPSET_DYNAMO if self.dynamo else OPSET


@dataclass
class _Sizes:
    """The sizes of one set of example inputs; a graph traced at one set is checked at another."""

    regions: int
    points: int
    names: int
    height: int
    width: int


_TRACE_SIZES = _Sizes(regions=3, points=2, names=3, height=45, width=60)
_CHECK_SIZES = _Sizes(regions=5, points=1, names=4, height=70, width=41)
_EXAMPLE_NAMES = ["cat", "a dog", "traffic light", "teddy bear"]


def export_onnx(config: RegionSpotConfig | str | Path, out: str | Path, *, adapter: str | None = None) -> Path:
    """Build the model of `config` (its checkpoints from local files; `adapter` overrides `adapter.checkpoint`) and
    write its ONNX graphs, tokenizer and manifest into `out`. Returns the manifest's path. Everything is exported in
    float32 (a config's float16 CLIP included; the config object is changed to say so).

    Raises:
        ValueError: for a model the graphs cannot express (a box-attention adapter, whose region boxes the torch
            path computes from each prompt kind), or an open_clip tokenizer other than CLIP's BPE.
    """
    if not isinstance(config, RegionSpotConfig):
        config = RegionSpotConfig.from_yaml(config)
    if adapter is not None:
        config.adapter.checkpoint = adapter
    if config.adapter.box_attention:
        raise ValueError("adapter.box_attention is not exportable yet: export a model with box_attention: false")
    if config.clip.precision in ("float16", "bfloat16"):
        log.warning(
            "clip.precision %s: exporting CLIP in float32 (onnxruntime's CPU kernels are float32; the "
            "torch predictor matches it with clip.precision float32)",
            config.clip.precision,
        )
        config.clip.precision = "float32"
    if config.adapter.checkpoint is None:
        log.warning(
            "adapter.checkpoint is null: exporting an untrained adapter, whose random weights differ at every "
            "build (give --adapter to export trained weights)"
        )
    model = build_regionspot(config).eval()
    if model.caption_beams > 1 and model.caption_decoder is not None:
        log.warning(
            "caption.num_beams %d: the exported captioner decodes greedily (one beam); captions may differ from "
            "the torch predictor's beam search",
            model.caption_beams,
        )
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = _write_tokenizer(model, out / TOKENIZER)
    files = {}
    fastpath = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)  # its fused attention op has no ONNX form; the same numbers without
    try:
        with torch.no_grad():
            traced, checked = (_graphs(model, tokenizer, sizes) for sizes in (_TRACE_SIZES, _CHECK_SIZES))
            for name, graph in traced.items():
                files[name] = _export_graph(name, graph, out / f"{name}.onnx", check=checked[name].inputs)
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)
    manifest = _manifest(config, model, files, out)
    path = out / MANIFEST
    path.write_text(json.dumps(manifest, indent=2))
    log.info("wrote %d graphs and %s to %s", len(files), MANIFEST, out)
    return path


def _graphs(model: RegionSpot, tokenizer: SimpleTokenizer, sizes: _Sizes) -> dict[str, _Graph]:
    """Every graph, with example inputs of `sizes` (drawn in one order, so that a seed gives the same inputs)."""
    decoder_inputs = _decoder_inputs(model, sizes)
    clip_tokens = torch.randn(1, _clip_token_count(model), model.clip.width)
    return {
        **_head_graphs(model, sizes),
        **_sam_graphs(model, sizes, decoder_inputs),
        **_clip_graphs(model, tokenizer, sizes, clip_tokens),
    }


def _decoder_inputs(model: RegionSpot, sizes: _Sizes) -> dict[str, torch.Tensor]:
    """Example inputs of SAM's mask decoder: an image embedding and `sizes.regions` prompts of points and masks."""
    sam = model.sam
    side = sam.sam.prompt_encoder.image_embedding_size[0]
    return {
        "image_embedding": torch.randn(1, sam.token_dim, side, side),
        "point_coords": torch.rand(sizes.regions, sizes.points + 2, 2) * sam.image_size,
        "point_labels": torch.randint(-1, 4, (sizes.regions, sizes.points + 2)).float(),
        "mask_input": torch.randn(sizes.regions, 1, *sam.mask_input_size),
        "has_mask_input": torch.ones(1),
    }


_POINT_AXES = {"point_coords": {0: "regions", 1: "points"}, "point_labels": {0: "regions", 1: "points"}}


def _decoder_graphs(model: RegionSpot, decoder_inputs: dict[str, torch.Tensor]) -> dict[str, _Graph]:
    """SAM's mask decoder over any number of prompted regions: with its mask logits (any prompts), and tokens only
    for prompts without masks (the first block's image side once for all regions)."""
    tokens_only = ("region_tokens", "mask_scores")
    with_masks = [*tokens_only, "mask_logits"]
    return {
        "decoder": _Graph(
            graphs.DecoderGraph(model),
            decoder_inputs,
            with_masks,
            {**_POINT_AXES, "mask_input": {0: "regions"}, **{name: {0: "regions"} for name in with_masks}},
        ),
        "decoder_tokens": _Graph(
            graphs.TokensGraph(model),
            {name: decoder_inputs[name] for name in ("image_embedding", "point_coords", "point_labels")},
            list(tokens_only),
            {**_POINT_AXES, **{name: {0: "regions"} for name in tokens_only}},
            dynamo=True,  # the tracer bakes the number of regions into the shared attention's reshapes
        ),
    }


def _sam_graphs(model: RegionSpot, sizes: _Sizes, decoder_inputs: dict[str, torch.Tensor]) -> dict[str, _Graph]:
    """The image graph and SAM's graphs: decoder (with and without masks), mask prompts, masks, point masks."""
    regions, sam_size = sizes.regions, torch.tensor(_sam_input_size(sizes, model.sam.image_size))
    original_size = torch.tensor([sizes.height, sizes.width])
    return {
        "image": _Graph(
            graphs.ImageGraph(model),
            {
                "sam_pixels": torch.randint(0, 256, (1, 3, *sam_size.tolist()), dtype=torch.uint8),
                "image": torch.randint(0, 256, (1, 3, sizes.height, sizes.width), dtype=torch.uint8),
            },
            ["sam_embedding", "clip_tokens"],
            {"sam_pixels": {2: "sam_height", 3: "sam_width"}, "image": {2: "height", 3: "width"}},
        ),
        **_decoder_graphs(model, decoder_inputs),
        "mask_prompt": _Graph(
            graphs.MaskPromptGraph(model),
            {"masks": (torch.rand(regions, sizes.height, sizes.width) > 0.5).float(), "input_size": sam_size},
            ["mask_input"],
            {"masks": {0: "regions", 1: "height", 2: "width"}, "mask_input": {0: "regions"}},
        ),
        "masks": _Graph(
            graphs.MaskGraph(model),
            {
                "mask_logits": torch.randn(regions, 1, *model.sam.mask_input_size),
                "input_size": sam_size,
                "original_size": original_size,
            },
            ["masks"],
            {"mask_logits": {0: "regions"}, "masks": {0: "regions", 1: "height", 2: "width"}},
        ),
        "point_masks": _Graph(
            graphs.PointMasksGraph(model),
            {
                "image_embedding": decoder_inputs["image_embedding"],
                "point_coords": decoder_inputs["point_coords"][:, :2],
                "point_labels": decoder_inputs["point_labels"][:, :2],
                "input_size": sam_size,
                "original_size": original_size,
            },
            ["mask_logits", "mask_scores"],
            {
                **_POINT_AXES,
                "mask_logits": {0: "regions", 2: "height", 3: "width"},
                "mask_scores": {0: "regions"},
            },
        ),
    }


def _clip_graphs(
    model: RegionSpot, tokenizer: SimpleTokenizer, sizes: _Sizes, clip_tokens: torch.Tensor
) -> dict[str, _Graph]:
    """The adapter (all regions against CLIP's token map), text and score graphs."""
    regions, names = sizes.regions, _EXAMPLE_NAMES[: sizes.names]
    region_tokens = torch.randn(1, regions * model.sam.tokens_per_region, model.sam.token_dim)
    return {
        "adapter": _Graph(
            graphs.AdapterGraph(model),
            {"region_tokens": region_tokens, "clip_tokens": clip_tokens},
            ["region_features"],
            {"region_tokens": {1: "queries"}, "region_features": {1: "queries"}},
            dynamo=True,
        ),
        "text": _Graph(
            graphs.TextGraph(model),
            {
                "text_tokens": torch.tensor(_tokenize(tokenizer, names, model)).view(
                    len(names), len(model.clip.templates), tokenizer.context_length
                )
            },
            ["class_embeddings"],
            {"text_tokens": {0: "names"}, "class_embeddings": {0: "names"}},
        ),
        "score": _Graph(
            graphs.ScoreGraph(model),
            {
                "region_features": torch.randn(regions, model.clip.embed_dim),
                "class_embeddings": torch.randn(sizes.names, model.clip.embed_dim),
            },
            ["logits", "softmax", "sigmoid"],
            {
                "region_features": {0: "regions"},
                "class_embeddings": {0: "names"},
                **{name: {0: "regions", 1: "names"} for name in ("logits", "softmax", "sigmoid")},
            },
        ),
    }


def _head_graphs(model: RegionSpot, sizes: _Sizes) -> dict[str, _Graph]:
    """The captioner's step graph and the VQA projector's graph, for a model that has them."""
    head_graphs = {}
    condition = torch.randn(sizes.regions, region_condition_dim(model.sam, model.clip))
    if model.caption_decoder is not None or model.vqa is not None:
        head_graphs["condition"] = _condition_graph(model, sizes)
    if model.caption_decoder is not None:
        decoder, tokenizer = model.caption_decoder, model.caption_tokenizer
        length = min(sizes.points + 2, decoder.max_length)
        tokens = torch.randint(0, tokenizer.vocab_size, (sizes.regions, length))
        tokens[:, 0] = tokenizer.bos_id
        head_graphs["caption_step"] = _Graph(
            graphs.CaptionStepGraph(decoder),
            {"condition": condition, "tokens": tokens},
            ["next_logits"],
            {"condition": {0: "regions"}, "tokens": {0: "regions", 1: "length"}, "next_logits": {0: "regions"}},
            dynamo=True,  # the tracer bakes the number of regions of the prefix's view
            largest={"length": decoder.max_length},
        )
    if model.vqa is not None:
        head_graphs["vqa_projector"] = _Graph(
            graphs.ProjectorGraph(model.vqa.projector),
            {"conditions": condition},
            ["embeddings"],
            {"conditions": {0: "regions"}, "embeddings": {0: "regions"}},
        )
    return head_graphs


def _condition_graph(model: RegionSpot, sizes: _Sizes) -> _Graph:
    """The region condition that the captioner and the VQA projector read, from the decoder's and adapter's outputs."""
    regions, per_region = sizes.regions, model.sam.tokens_per_region
    return _Graph(
        graphs.ConditionGraph(),
        {
            "region_features": torch.randn(regions, per_region, model.clip.embed_dim),
            "region_tokens": torch.randn(regions, per_region, model.sam.token_dim),
            "mask_scores": torch.randn(regions, per_region),
            "region_boxes": torch.rand(regions, 4),
        },
        ["condition"],
        {
            **{name: {0: "regions"} for name in ("region_features", "region_tokens", "mask_scores", "region_boxes")},
            "condition": {0: "regions"},
        },
        dynamo=True,  # the tracer bakes the number of regions into the rows it picks
    )


def _heads_manifest(config: RegionSpotConfig, model: RegionSpot) -> dict:
    """What a deployment needs besides the head graphs: the captioner's token ids (into CLIP's BPE, whose
    tokenizer.json decodes them), BOS, EOS and length; the VQA head's LLM folder, which stays a Hugging Face model."""
    heads = {}
    if model.caption_decoder is not None:
        tokenizer = model.caption_tokenizer
        heads["caption"] = {
            "token_ids": config.caption.token_ids,  # None: all of CLIP's BPE
            "bos_id": tokenizer.bos_id,
            "eos_id": tokenizer.eos_id,
            "max_length": model.caption_decoder.max_length,
            "num_beams_trained_with": model.caption_beams,
            "decoding": "greedy",
        }
    if model.vqa is not None:
        heads["vqa"] = {"llm": config.vqa.llm, "tokens_per_region": model.vqa.projector.tokens_per_region}
    return heads


def _sam_input_size(sizes: _Sizes, sam_size: int) -> tuple[int, int]:
    scale = sam_size / max(sizes.height, sizes.width)
    return int(sizes.height * scale + 0.5), int(sizes.width * scale + 0.5)


def _clip_token_count(model: RegionSpot) -> int:
    with torch.no_grad():
        probe = torch.zeros(1, 3, model.clip.image_size, model.clip.image_size)
        return model.clip.feature_map(model.clip.normalize(probe)).shape[1]


def _tokenize(tokenizer: SimpleTokenizer, names: list[str], model: RegionSpot) -> list[list[int]]:
    prompts = [template(name) for name in names for template in model.clip.templates]
    return tokenizer(prompts).tolist()


def _export_graph(name: str, graph: _Graph, path: Path, *, check: dict[str, torch.Tensor]) -> dict:
    """Trace `graph` into `path`, check it, and run it in onnxruntime against torch, at the traced inputs and at the
    `check` inputs of other sizes (a size baked into the trace fails there). Returns its manifest entry."""
    graph.module.eval()
    options = {"input_names": list(graph.inputs), "output_names": graph.outputs}
    if graph.dynamo:
        dims: dict[str, torch.export.Dim] = {}
        options["dynamic_shapes"] = {
            k: {
                axis: dims.setdefault(n, torch.export.Dim(n, max=graph.largest.get(n)))
                for axis, n in graph.dynamic.get(k, {}).items()
            }
            or None
            for k in graph.inputs
        }
    else:
        options["dynamic_axes"] = graph.dynamic
    torch.onnx.export(
        graph.module,
        tuple(graph.inputs.values()),
        str(path),
        dynamo=graph.dynamo,
        opset_version=graph.opset,
        external_data=False,
        **options,
    )
    onnx.checker.check_model(str(path))
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for inputs in (graph.inputs, check):
        _compare(name, graph, session, inputs)
    return {  # read from the session: loading the graph again would hold a second copy of its weights
        "file": path.name,
        "sha256": file_sha256(path),
        "opset": graph.opset,
        "inputs": [_value_info(v) for v in session.get_inputs()],
        "outputs": [_value_info(v) for v in session.get_outputs()],
    }


def _compare(name: str, graph: _Graph, session: onnxruntime.InferenceSession, inputs: dict[str, torch.Tensor]) -> None:
    expected = graph.module(*inputs.values())
    expected = expected if isinstance(expected, tuple) else (expected,)
    got = session.run(graph.outputs, {k: v.numpy() for k, v in inputs.items()})
    for output, want, have in zip(graph.outputs, expected, got, strict=True):
        if want.shape != have.shape:
            raise RuntimeError(f"the exported {name} graph's {output} has shape {have.shape}, torch's {want.shape}")
        if want.dtype == torch.bool:
            agree = (want.numpy() == have).mean()
            if agree < 0.999:
                raise RuntimeError(f"the exported {name} graph's {output} agrees with torch on {agree:.4%} only")
        elif not np.allclose(want.float().numpy(), have, rtol=1e-3, atol=1e-4):
            gap = np.abs(want.float().numpy() - have).max()
            raise RuntimeError(f"the exported {name} graph's {output} differs from torch by up to {gap:.3g}")


_NUMPY_DTYPES = {"float": "float32", "double": "float64"}  # onnxruntime's element type names that numpy spells apart


def _value_info(value: onnxruntime.NodeArg) -> dict:
    """An input or output: its name, numpy dtype and shape (dynamic axes by name)."""
    element = value.type.removeprefix("tensor(").removesuffix(")")
    return {"name": value.name, "dtype": _NUMPY_DTYPES.get(element, element), "shape": list(value.shape)}


def _write_tokenizer(model: RegionSpot, path: Path) -> SimpleTokenizer:
    """Write CLIP's BPE tokenizer as a Hugging Face `tokenizers` file (torch-free to load), checked against
    open_clip's on every prompt of a sample of names. Returns open_clip's tokenizer."""
    tokenizer = model.clip.tokenizer
    if not isinstance(tokenizer, SimpleTokenizer):
        raise ValueError(f"only CLIP's BPE tokenizer is exportable, this model uses {type(tokenizer).__name__}")
    sot, eot = "<|startoftext|>", "<|endoftext|>"
    bpe = BPE(
        vocab=tokenizer.encoder,
        merges=list(tokenizer.bpe_ranks),
        continuing_subword_prefix="",
        end_of_word_suffix="</w>",
        fuse_unk=False,
        unk_token=eot,
    )
    portable = Tokenizer(bpe)
    portable.normalizer = normalizers.Sequence(
        [normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Strip(), normalizers.Lowercase()]
    )
    portable.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(
                Regex(r"""'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""), behavior="removed", invert=True
            ),
            pre_tokenizers.ByteLevel(add_prefix_space=False),
        ]
    )
    portable.decoder = decoders.ByteLevel()
    portable.post_processor = processors.RobertaProcessing(
        (eot, tokenizer.eot_token_id), (sot, tokenizer.sot_token_id), trim_offsets=False, add_prefix_space=False
    )
    portable.enable_truncation(max_length=tokenizer.context_length)
    portable.enable_padding(length=tokenizer.context_length, pad_id=0, pad_token="!")
    sample = ["person", "traffic light", "hot-dog", "teddy bear", "bow (weapon)", "Wall  Other", "café", "7-up can"]
    prompts = [template(name) for name in sample for template in model.clip.templates]
    if [e.ids for e in portable.encode_batch(prompts)] != tokenizer(prompts).tolist():
        raise RuntimeError("the exported tokenizer does not reproduce open_clip's token ids")
    portable.save(str(path))
    return tokenizer


def checkpoint_digests(config: RegionSpotConfig) -> dict[str, dict[str, str] | None]:
    """The path and SHA-256 of each checkpoint `config` names (None for a part without one), as the manifest
    records them: what a deployment, or a cached export, compares with the files it holds."""
    return {
        part: None if path is None else {"path": str(path), "sha256": file_sha256(Path(path))}
        for part, path in (
            ("sam", config.sam.checkpoint),
            ("clip", config.clip.checkpoint),
            ("adapter", config.adapter.checkpoint),
        )
    }


def _manifest(config: RegionSpotConfig, model: RegionSpot, files: dict, out: Path) -> dict:
    sam, clip = model.sam, model.clip
    preprocess = open_clip.get_model_preprocess_cfg(clip.model)
    return {
        "format": FORMAT,
        "regionspot_version": regionspot.__version__,
        "onnx_version": onnx.__version__,
        "torch_version": torch.__version__,
        "backbones": {"sam": config.sam.variant, "clip": config.clip.model_name, "clip_precision": "float32"},
        "checkpoints": checkpoint_digests(config),
        "not_exported": ["vqa_llm"] if model.vqa is not None else [],
        "heads": _heads_manifest(config, model),
        "preprocessing": {
            "sam_size": sam.image_size,
            "sam_pixel_mean": sam.sam.pixel_mean.flatten().tolist(),
            "sam_pixel_std": sam.sam.pixel_std.flatten().tolist(),
            "clip_size": clip.image_size,
            "clip_resize": clip.resize,
            "clip_mean": list(preprocess["mean"]),
            "clip_std": list(preprocess["std"]),
            "mask_threshold": float(sam.sam.mask_threshold),
            "mask_input_size": list(sam.mask_input_size),
        },
        "regions": {"tokens_per_region": sam.tokens_per_region, "prompt_batch_size": sam.prompt_batch_size},
        "text": {
            "tokenizer": TOKENIZER,
            "tokenizer_sha256": file_sha256(out / TOKENIZER),
            "context_length": clip.tokenizer.context_length,
            "templates": [template("{}") for template in clip.templates],
            "prompt_mean": clip.prompt_mean,
            "text_batch_size": clip.text_batch_size,
        },
        "graphs": files,
    }
