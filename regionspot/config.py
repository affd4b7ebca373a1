"""Model configuration: small dataclasses, read from YAML, turned into a model by `regionspot.build`.

Every field says what it does and where its default comes from: the paper or library the technique is from
(RegionSpot: Yang et al., NeurIPS 2024; SAM: Kirillov et al., 2023; CLIP: Radford et al., 2021; TAP: Pan et al.,
2023; All-Seeing: Wang et al., 2023; LLaVA-1.5: Liu et al., 2023; LoRA: Hu et al., 2021), or "ours" for a choice
of this package. The packaged YAMLs (`regionspot.configs`) set them per model; docs/architecture.md shows where
each part runs.
"""

from __future__ import annotations

import dataclasses
import numbers
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

SAM_VARIANTS = ("vit_b", "vit_l", "vit_h", "tiny")


@dataclass
class SamConfig:
    """The frozen localisation backbone: segment-anything's SAM, whose mask decoder turns each prompt into the
    region token the adapter reads (RegionSpot's design)."""

    # one of SAM_VARIANTS: SAM's released ViT-B/L/H (RegionSpot: vit_b); "tiny" is a 2-block SAM of the same classes
    # for tests and CPU runs (as timm registers tiny test models)
    variant: str = "vit_b"
    # SAM's official .pth (or a tiny one we saved), or a RegionSpot model_final.pth (its SAM part is used);
    # None = random weights.
    checkpoint: str | None = None
    # True: 3 region tokens per prompt (SAM's multimask output, for ambiguous prompts); False: its single-mask token,
    # RegionSpot's choice (token 0)
    multimask: bool = False
    # Prompts per mask-decoder call, over all images of a batch: each holds a copy of its image's embedding
    # (256 x 64 x 64 floats, 4 MiB, for the real SAMs), so this bounds the decoder's memory (ours; like
    # SamAutomaticMaskGenerator's points_per_batch). It changes no result.
    prompt_batch_size: int = 64
    seed: int = 0  # draws the random weights when there is no checkpoint: every build of this config is the same SAM

    def __post_init__(self) -> None:
        check_field_types(self, "sam")
        if self.variant not in SAM_VARIANTS:
            raise ValueError(f"sam.variant must be one of {SAM_VARIANTS}, got {self.variant!r}")
        if self.prompt_batch_size < 1:
            raise ValueError(f"sam.prompt_batch_size must be positive, got {self.prompt_batch_size}")


PROMPT_MEANS = ("normalized", "raw")
CLASS_NAME_STYLES = ("readable", "raw")
CLIP_RESIZES = ("bicubic", "bilinear")
CLIP_PRECISIONS = ("auto", "float32", "float16", "bfloat16")


@dataclass
class ClipConfig:
    """The frozen vision-language backbone (any open_clip model), and how it reads images and class names.

    The defaults are this package's choices; regionspot_{bb,bl,bl336} select the original
    RegionSpot's, so that its released adapters score as they did (docs/regionspot_compat.md compares them).
    """

    # an open_clip name; OpenAI weights need the -quickgelu names (RegionSpot: ViT-B/16, ViT-L/14, ViT-L/14@336)
    model_name: str = "ViT-B-16-quickgelu"
    # Local .pt/.bin/.safetensors, OpenAI's TorchScript file, or a RegionSpot model_final.pth (its CLIP part is
    # used); None = random weights.
    checkpoint: str | None = None
    # The prompts a class name is embedded with: "imagenet": "{}." + the 80 ImageNet prompts of CLIP's zero-shot
    # evaluation (RegionSpot's 81); "plain": "{}." alone (for a CLIP trained on bare names).
    templates: str = "imagenet"
    # How a class's prompt embeddings become one: "normalized" (each prompt normalised, then averaged: CLIP's
    # zero-shot recipe, every prompt weighs the same) or "raw" (RegionSpot's: raw embeddings averaged). The mean
    # is normalised either way.
    prompt_mean: str = "normalized"
    # How a data set's category names are read (training, validation, evaluate.py; the predictor encodes the
    # names it is given as they are): "readable" (regionspot.vocabulary.clean_class_name: "bow_(weapon)" ->
    # "bow") or "raw" (RegionSpot's: the names as stored, with only "-other", "-merged", "-stuff" removed).
    class_names: str = "readable"
    resize: str = "bicubic"  # whole image to CLIP's square: "bicubic" (CLIP's own) or "bilinear" (RegionSpot's)
    # CLIP's dtype, decided here and nowhere else: "auto" (float32 weights; the run's precision decides how it
    # computes: evaluate.py's autocast, the training module's backbone_precision) or a fixed dtype that CLIP is
    # built in and always computes in, whatever the run's autocast ("float16": OpenAI's release, as RegionSpot).
    precision: str = "auto"
    seed: int = 0  # draws the random weights when there is no checkpoint: every build of this config is the same CLIP
    # A folder for the text embeddings of each vocabulary (safetensors keyed by the text tower's weights and the
    # names + templates): a large vocabulary (V3Det's 13k x 81 prompts) is embedded once, ever (ours; RegionSpot
    # embedded its vocabularies offline). None: memory only.
    text_cache_dir: str | None = None

    def __post_init__(self) -> None:
        check_field_types(self, "clip")
        for name, allowed in (
            ("templates", ("imagenet", "plain")),
            ("prompt_mean", PROMPT_MEANS),
            ("class_names", CLASS_NAME_STYLES),
            ("resize", CLIP_RESIZES),
            ("precision", CLIP_PRECISIONS),
        ):
            if getattr(self, name) not in allowed:
                raise ValueError(f"clip.{name} must be one of {allowed}, got {getattr(self, name)!r}")


@dataclass
class AdapterConfig:
    """The trained fusion module: SAM's region tokens attend to CLIP's token map (RegionSpot's defaults)."""

    depth: int = 3  # decoder layers (RegionSpot: 3)
    num_heads: int = 8  # (RegionSpot: 8)
    ffn_dim: int = 2048  # (RegionSpot: 2048)
    dropout: float = 0.1  # (RegionSpot: 0.1)
    # Box-restricted cross-attention: each region reads only CLIP's class token and the patches its box covers,
    # as Mask2Former's masked attention (Cheng et al., 2022) confines a query to its region and RoI pooling
    # (Fast R-CNN; ViLD, RegionCLIP) reads a region's features only: where to look is given, not learned, which
    # helps an adapter trained for few steps (measured in docs/demo.md, "Top-1 names"). RegionSpot attends to the
    # whole image (False). No parameters: any weights load, but score a model as it was trained.
    box_attention: bool = False
    # Trained adapter weights: our .safetensors export, or a RegionSpot model_final.pth (or a state dict in its
    # layout), whose frozen SAM and CLIP entries are ignored here; None = untrained.
    checkpoint: str | None = None

    def __post_init__(self) -> None:
        check_field_types(self, "adapter")
        if self.depth < 1 or self.num_heads < 1 or self.ffn_dim < 1:
            raise ValueError("adapter.depth, adapter.num_heads and adapter.ffn_dim must be positive")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"adapter.dropout must be in [0, 1), got {self.dropout}")


@dataclass
class CaptionConfig:
    """The region captioner: a causal text decoder prompted by each region (TAP's decoder by default)."""

    depth: int = 12  # pre-norm transformer layers (TAP: 12)
    width: int = 512  # (TAP: 512)
    num_heads: int = 8  # (TAP: 8)
    mlp_dim: int = 2048  # (TAP: 2048)
    dropout: float = 0.1  # (TAP: 0.1)
    max_length: int = 40  # tokens per caption, BOS and EOS included (TAP: 40)
    # How many prefix tokens one region becomes (TAP: 1; ClipCap, Mokady et al., 2021, maps an image to several);
    # the decoder reads the region's fused feature and its SAM token through one bias-free Linear to this many
    # tokens of `width`.
    prefix_tokens: int = 1
    # The CLIP BPE ids the decoder's vocabulary keeps (`CaptionTokenizer.from_corpus(captions).token_ids`): a
    # shortlist for a small domain, whose captions use a few hundred tokens, makes the embedding and output
    # layers that much smaller (ours; TAP trains its own 32k SentencePiece vocabulary). None = CLIP's whole
    # 49,408-token vocabulary.
    token_ids: list[int] | None = None
    num_beams: int = 1  # decoding: 1 = greedy (TAP's), more = beam search
    # Trained decoder weights (`caption_decoder.safetensors`, written beside the adapter's); None = untrained.
    checkpoint: str | None = None

    def __post_init__(self) -> None:
        check_field_types(self, "caption")
        for name in ("depth", "width", "num_heads", "mlp_dim", "prefix_tokens", "num_beams"):
            if getattr(self, name) < 1:
                raise ValueError(f"caption.{name} must be positive, got {getattr(self, name)}")
        if self.max_length < 3:
            raise ValueError(f"caption.max_length must leave room for BOS, a word and EOS, got {self.max_length}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"caption.dropout must be in [0, 1), got {self.dropout}")
        if self.token_ids is not None:
            self.token_ids = [int(i) for i in self.token_ids]


LLM_TRAINING = ("frozen", "lora", "full")
LLM_DTYPES = ("auto", "float32", "bfloat16")


@dataclass
class VqaConfig:
    """Region VQA: each region's condition projected into a causal LLM's prompt where a question names it."""

    # A local folder holding a Hugging Face causal LM and its tokenizer (save_pretrained's layout); never downloaded.
    llm: str = ""
    tokens_per_region: int = 1  # LLM input embeddings per <regionK> (All-Seeing, Osprey: 1 per region)
    # One more embedding per region, made from its box alone (`RegionProjector`'s location token): the region's
    # place given to the LLM explicitly, as Kosmos-2's location tokens (Peng et al., 2023) and All-Seeing v2's boxes
    # written as text do, rather than left inside the mixed condition, where a box's 4 numbers sit beside ~130
    # feature columns. Needed for questions about where regions are ("is <region1> left of <region2>?").
    location_token: bool = False
    # What of the LLM trains beside the projector: "frozen" (nothing: LLaVA's first stage, the default), "lora"
    # (peft's low-rank adapters on `lora_targets`, LoRA: Hu et al., 2021) or "full" (every weight: only for a small
    # LLM, such as one that starts random).
    llm_training: str = "frozen"
    lora_rank: int = 8  # LoRA's r (peft's default)
    lora_alpha: int = 16  # LoRA's scale alpha (the update is scaled by alpha / r)
    # the modules LoRA adapts: the attention's query and value projections, as the LoRA paper adapts W_q and W_v
    lora_targets: list[str] = field(default_factory=lambda: ["q_proj", "v_proj"])
    llm_dtype: str = "auto"  # "auto": as the folder's config says; "float32"; "bfloat16"
    # Recompute the LLM's activations in backward (Hugging Face's gradient checkpointing, Chen et al., 2016): less
    # memory for more compute, for large LLMs on small GPUs.
    gradient_checkpointing: bool = False
    max_new_tokens: int = 32  # the answer length cap of generation (Hugging Face generate's max_new_tokens)
    # Trained weights (`vqa.safetensors`, written beside the adapter's): the projector, and the LoRA or full LLM
    # weights when those train; None = an untrained projector.
    checkpoint: str | None = None

    def __post_init__(self) -> None:
        check_field_types(self, "vqa")
        if not self.llm:
            raise ValueError("vqa.llm must name a local folder holding a causal LM and its tokenizer")
        if self.llm_training not in LLM_TRAINING:
            raise ValueError(f"vqa.llm_training must be one of {LLM_TRAINING}, got {self.llm_training!r}")
        if self.llm_dtype not in LLM_DTYPES:
            raise ValueError(f"vqa.llm_dtype must be one of {LLM_DTYPES}, got {self.llm_dtype!r}")
        for name in ("tokens_per_region", "lora_rank", "lora_alpha", "max_new_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"vqa.{name} must be positive, got {getattr(self, name)}")


@dataclass(frozen=True)
class MaskGeneratorSettings:
    """The settings of SAM's automatic mask generator ("segment everything") that regionspot exposes, at
    segment_anything's published defaults (`SamAutomaticMaskGenerator`'s); `regionspot.modeling.sam.
    build_mask_generator` builds the generator from them, for the predictor, the app and `evaluate.py --source sam`.
    """

    points_per_side: int = 32  # the point grid SAM is prompted with: points_per_side**2 points, three masks each
    pred_iou_thresh: float = 0.88  # keep a mask whose predicted IoU is above this ...
    stability_score_thresh: float = 0.95  # ... and whose stability (IoU of the mask at logits +-1) is at least this


@dataclass
class RegionSpotConfig:
    """A whole model: which SAM, which CLIP, what adapter, and optionally a captioner and a VQA head on top."""

    sam: SamConfig = field(default_factory=SamConfig)
    clip: ClipConfig = field(default_factory=ClipConfig)
    adapter: AdapterConfig = field(default_factory=AdapterConfig)
    caption: CaptionConfig | None = None  # None: a recogniser only
    vqa: VqaConfig | None = None  # None: no question answering

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RegionSpotConfig:
        """The config of a plain dict (a YAML's, a checkpoint's); unknown keys raise ValueError and wrong types
        TypeError, each naming the key (`adapter.depth`)."""
        if not isinstance(data, dict):
            raise ValueError(
                f"a model config must be a mapping with sam/clip/adapter sections, got {type(data).__name__}"
            )
        _check_keys(data, cls, "config")
        parts = {}
        for part in dataclasses.fields(cls):
            value = data.get(part.name)
            if value is None and part.name in _OPTIONAL_SECTIONS:
                parts[part.name] = None
                continue
            value = value or {}
            if not isinstance(value, dict):
                raise ValueError(f"config section {part.name!r} must be a mapping, got {type(value).__name__}")
            part_cls = _SECTIONS[part.name]
            _check_keys(value, part_cls, part.name)
            parts[part.name] = part_cls(**value)
        return cls(**parts)

    @classmethod
    def from_yaml(cls, path: str | Path) -> RegionSpotConfig:
        """The config in a YAML file, or in the packaged model config of that name (`regionspot.configs`)."""
        from regionspot.configs import resolve_config

        path = resolve_config(path, kind="model")
        try:
            data = yaml.safe_load(path.read_text())
        except yaml.YAMLError as err:
            raise ValueError(f"model config {path} is not valid YAML: {err}") from err
        if not isinstance(data, dict):
            raise ValueError(f"model config {path} must be a mapping with sam/clip/adapter sections")
        config = cls.from_dict(data)
        for section in (config.sam, config.clip, config.adapter, config.caption, config.vqa):
            if section is not None:
                section.checkpoint = _next_to(path.parent, section.checkpoint)
        if config.vqa is not None and (path.parent / config.vqa.llm).is_dir():  # found next to the YAML first
            config.vqa.llm = str(path.parent / config.vqa.llm)
        return config

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


_SECTIONS = {
    "sam": SamConfig,
    "clip": ClipConfig,
    "adapter": AdapterConfig,
    "caption": CaptionConfig,
    "vqa": VqaConfig,
}
_OPTIONAL_SECTIONS = ("caption", "vqa")


def _next_to(folder: Path, checkpoint: str | None) -> str | None:
    """A YAML's relative checkpoint path, found next to the YAML if it is there, else left to the working directory.

    So a run folder (adapter.yaml beside adapter.safetensors) can be moved and read from anywhere, while the
    packaged configs keep naming checkpoints/... from the folder the user runs in.
    """
    if checkpoint is None or Path(checkpoint).is_absolute() or not (folder / checkpoint).exists():
        return checkpoint
    return str(folder / checkpoint)


def check_field_types(section: Any, where: str) -> None:
    """Raise TypeError, naming `where`.field, unless every field of dataclass `section` has its annotated type.

    YAML and the command line give any type anywhere (`depth: "two"`, `multimask: "false"`, a list for an int),
    and a wrong one would otherwise fail later, unnamed, or not at all (a non-empty string is true). Bools are not
    taken for numbers; ints are taken for floats (YAML writes `dropout: 0`).
    """
    hints = typing.get_type_hints(type(section))
    for f in dataclasses.fields(section):
        value = getattr(section, f.name)
        if not _has_type(value, hints[f.name]):
            raise TypeError(
                f"{where}.{f.name} must be {_type_name(hints[f.name])}, got {value!r} ({type(value).__name__})"
            )


def _has_type(value: Any, hint: Any) -> bool:
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        return any(_has_type(value, option) for option in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if isinstance(value, bool):
        return hint is bool
    if hint is int:
        return isinstance(value, numbers.Integral)
    if hint is float:
        return isinstance(value, numbers.Real)
    if typing.get_origin(hint) is list:
        (item,) = typing.get_args(hint)
        return isinstance(value, list) and all(_has_type(v, item) for v in value)
    return isinstance(value, hint)


def _type_name(hint: Any) -> str:
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        return " or ".join(_type_name(option) for option in typing.get_args(hint))
    if hint is type(None):
        return "null"
    if typing.get_origin(hint) is list:
        item = typing.get_args(hint)[0]
        return f"a list of {_PLURALS.get(item, item.__name__)}"
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string"}.get(hint, hint.__name__)


_PLURALS = {int: "integers", float: "numbers", str: "strings"}


def _check_keys(data: dict[str, Any], cls: type, where: str) -> None:
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"unknown key(s) {unknown} in {where}; expected some of {sorted(known)}")
