"""Frozen CLIP (any open_clip ViT): an image-level token map for the adapter, and class-name embeddings."""

from __future__ import annotations

import hashlib
import json
import logging
from collections import OrderedDict
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from pathlib import Path

import open_clip
import torch
import torch.nn.functional as F
from open_clip.factory import convert_state_dict
from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn

from regionspot.checkpoint import check_release_digest, load_weights, model_part, read_state_dict, require_file
from regionspot.config import CLIP_PRECISIONS, CLIP_RESIZES, PROMPT_MEANS
from regionspot.files import atomic_path
from regionspot.modeling.left_out import LeftOutImageEncoder, allocate_meta_tensors

# Tiny open_clip configs shipped with the package (e.g. "RegionSpot-Tiny-CLIP"), registered with open_clip.
open_clip.add_model_config(Path(__file__).parent / "clip_configs")


log = logging.getLogger(__name__)

_VOCABULARIES_KEPT = 8
# Bumped when the meaning of a text-embedding cache file changes, so that older files miss.
_TEXT_CACHE_FORMAT = "regionspot-text-embeddings-1"
# clip.precision -> open_clip's precision: "fp16"/"bf16" convert the weights as OpenAI's release is stored
# (linear, convolution and attention weights in low precision; LayerNorms computing in float32).
_OPEN_CLIP_PRECISIONS = {"auto": "fp32", "float32": "fp32", "float16": "fp16", "bfloat16": "bf16"}


def _plain(name: str) -> str:
    return f"{name}."


# RegionSpot's 81 prompts: a plain "{}." and CLIP's 80 ImageNet templates.
PROMPT_TEMPLATES: dict[str, tuple[Callable[[str], str], ...]] = {
    "imagenet": (_plain, *OPENAI_IMAGENET_TEMPLATES),
    "plain": (_plain,),
}


def openai_release_sha256() -> dict[str, str]:
    """OpenAI's CLIP file names -> their SHA-256, from open_clip's registry (each release URL carries its hash)."""
    released = {}
    for model_name, tag in open_clip.list_pretrained():
        url = open_clip.get_pretrained_url(model_name, tag) if tag == "openai" else ""
        if "openaipublic" in url:
            released[url.rsplit("/", 1)[1]] = url.rsplit("/", 2)[1]
    return released


def build_clip(
    *, model_name: str, checkpoint: str | None = None, precision: str = "auto", image_encoder: bool = True
) -> open_clip.CLIP:
    """Build open_clip model `model_name` with random weights, then load `checkpoint` (a local file) if given.

    Args:
        model_name: an open_clip model name.
        checkpoint: open_clip or OpenAI weights, or a RegionSpot model_final.pth (its `clip_model` part).
        precision: one of CLIP_PRECISIONS (`clip.precision`); "auto" and "float32" build in float32.
        image_encoder: False leaves the visual tower out (`regionspot.modeling.left_out`): with a checkpoint it is
            never built nor loaded; with random weights it is built and dropped, so that the text tower's random
            weights are those of a whole build.

    The model is built on the current default device (a `with torch.device(...)` block), "meta" included.
    """
    if model_name not in open_clip.list_models():
        raise ValueError(f"unknown open_clip model {model_name!r}; see open_clip.list_models()")
    if precision not in CLIP_PRECISIONS:
        raise ValueError(f"CLIP precision must be one of {CLIP_PRECISIONS}, got {precision!r}")
    if checkpoint is not None:
        path = require_file(
            checkpoint,
            what=f"CLIP checkpoint for {model_name!r}",
            hint="Save the open_clip weights (or OpenAI's original .pt) there, or set clip.checkpoint to their path.",
        )
        released = openai_release_sha256().get(path.name)
        if released is not None:
            check_release_digest(path, algorithm="sha256", expected=released, release=f"OpenAI's CLIP {path.name}")
    on_meta = not image_encoder and checkpoint is not None
    device = torch.device("meta") if on_meta else torch.get_default_device()
    # open_clip builds on the default device, then moves the model to `device` (it would move it to the CPU)
    with _quiet_root_warnings(), device:  # open_clip warns "initialized randomly" although weights come next
        model = open_clip.create_model(
            model_name, pretrained=None, load_weights=False, precision=_OPEN_CLIP_PRECISIONS[precision], device=device
        )
    if not image_encoder:
        visual = model.visual
        model.visual = LeftOutImageEncoder(
            name="CLIP's visual tower",
            image_size=visual.image_size,
            width=visual.transformer.width,
            preprocess_cfg=dict(getattr(visual, "preprocess_cfg", {})),
        )
    if on_meta:
        allocate_meta_tensors(model, constants={"attn_mask": _causal_mask})
    if checkpoint is not None:
        state = convert_state_dict(model, model_part(read_state_dict(path), "clip", path=path))
        if not image_encoder:
            state = {k: v for k, v in state.items() if not k.startswith("visual.")}
        if "logit_scale" in state and state["logit_scale"].ndim != model.logit_scale.ndim:
            state["logit_scale"] = state["logit_scale"].reshape(model.logit_scale.shape)
        load_weights(model, state, path=path, model_name=f"open_clip {model_name}")
    return model


def _causal_mask(placeholder: torch.Tensor) -> torch.Tensor:
    """The text transformer's additive causal mask (n, n): -inf above the diagonal, as open_clip builds it."""
    return torch.full(placeholder.shape, float("-inf")).triu_(1)


@contextmanager
def _quiet_root_warnings():
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


class ClipBackbone(nn.Module):
    """A frozen CLIP giving the image token map (the adapter's keys and values) and text embeddings.

    Args:
        model: an open_clip CLIP whose visual tower is a VisionTransformer.
        tokenizer: the model's open_clip tokenizer.
        templates: prompt templates; a class embedding is the normalised mean over them.
        prompt_mean: "normalized" (each prompt's embedding normalised before the mean) or "raw" (RegionSpot's).
        resize: the interpolation that makes CLIP's input from a whole image ("bicubic" or "bilinear"); the
            model's preprocessing reads it here.
        fixed_precision: True when `model` was built in the dtype it must compute in (`clip.precision`): its
            towers then run with autocast off, so that a run's mixed precision does not recast them.
        text_batch_size: prompts per text-encoder call, to bound memory for large vocabularies (whole names per
            call: at least one name's templates).
        text_cache_dir: a folder where each vocabulary's embeddings are kept on disk between runs (see
            `encode_vocabulary`); None (the default) keeps them in memory only. Also settable afterwards as the
            `text_cache_dir` attribute.
    """

    def __init__(
        self,
        *,
        model: open_clip.CLIP,
        tokenizer: Callable[[list[str]], torch.Tensor],
        templates: Sequence[Callable[[str], str]] = PROMPT_TEMPLATES["imagenet"],
        prompt_mean: str = "normalized",
        resize: str = "bicubic",
        fixed_precision: bool = False,
        text_batch_size: int = 1024,
        text_cache_dir: str | Path | None = None,
    ) -> None:
        super().__init__()
        left_out = isinstance(model.visual, LeftOutImageEncoder)
        if not left_out and not (
            hasattr(model.visual, "forward_intermediates") and hasattr(model.visual, "transformer")
        ):
            raise ValueError(f"{type(model.visual).__name__} has no token map; RegionSpot needs an open_clip ViT")
        if prompt_mean not in PROMPT_MEANS or resize not in CLIP_RESIZES:
            raise ValueError(f"prompt_mean must be one of {PROMPT_MEANS} and resize one of {CLIP_RESIZES}")
        self.model = model
        self.tokenizer = tokenizer
        self.templates = tuple(templates)
        self.prompt_mean = prompt_mean
        self.resize = resize
        self.fixed_precision = fixed_precision
        self.text_batch_size = text_batch_size
        self.text_cache_dir = None if text_cache_dir is None else Path(text_cache_dir)
        self._text_cache: dict[str, torch.Tensor] = {}  # per class name, CPU float32
        self._text_tower_sha256: str | None = None  # of the text tower's weights, read once (see clear_text_cache)
        # per vocabulary, stacked on the device, last few used: a training step's vocabulary then costs nothing
        self._vocabulary_cache: OrderedDict[tuple[str, ...], torch.Tensor] = OrderedDict()
        cfg = open_clip.get_model_preprocess_cfg(model)
        self.register_buffer("image_mean", torch.tensor(cfg["mean"]).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("image_std", torch.tensor(cfg["std"]).view(1, 3, 1, 1), persistent=False)

    @property
    def image_encoder_built(self) -> bool:
        """False when the build left the visual tower out (`regionspot.modeling.left_out`)."""
        return not isinstance(self.model.visual, LeftOutImageEncoder)

    def _visual_tower(self) -> nn.Module:
        """The visual tower; an error that says why when the build left it out."""
        if not self.image_encoder_built:
            self.model.visual.refuse()
        return self.model.visual

    @property
    def width(self) -> int:
        """D, the width of the visual transformer (768 for ViT-B, 1024 for ViT-L)."""
        visual = self.model.visual
        return visual.width if not self.image_encoder_built else visual.transformer.width

    @property
    def embed_dim(self) -> int:
        """Dimension of the joint image-text space."""
        return self.model.text_projection.shape[-1] if self.model.text_projection is not None else self.width

    @property
    def image_size(self) -> int:
        return self.model.visual.image_size[0]

    @property
    def logit_scale(self) -> torch.Tensor:
        return self.model.logit_scale.exp()

    @property
    def device(self) -> torch.device:
        return self.image_mean.device

    @property
    def dtype(self) -> torch.dtype:
        """The dtype the visual tower's weights are in (its patch embedding's)."""
        return self._visual_tower().conv1.weight.dtype

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, s, s) in [0, 1] (`PreparedImage.clip_pixels`) -> CLIP-normalised on its device, in its dtype.

        Normalised in float32, then cast, as RegionSpot fed its float16 CLIP.
        """
        images = images.to(self.device).float().clamp(0, 1)
        return ((images - self.image_mean.float()) / self.image_std.float()).to(self.dtype)

    def _own_precision(self) -> AbstractContextManager:
        """Autocast off while a fixed-precision CLIP runs (see `fixed_precision`); else the caller's mode."""
        if not self.fixed_precision:
            return nullcontext()
        return torch.autocast(device_type=self.image_mean.device.type, enabled=False)

    @torch.no_grad()
    def feature_map(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, s, s) normalised images -> (B, 1 + HW, D): last block's tokens, CLS first, before ln_post."""
        visual = self._visual_tower()
        with self._own_precision():
            out = visual.forward_intermediates(
                images,
                indices=[len(visual.transformer.resblocks) - 1],
                output_fmt="NLC",
                intermediates_only=True,
                output_extra_tokens=True,
            )
            return torch.cat([out["image_intermediates_prefix"][0], out["image_intermediates"][0]], dim=1)

    @torch.no_grad()
    def embed_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """(..., D) tokens of `feature_map` -> (..., E) float32, through CLIP's final LayerNorm and projection: what
        `encode_image` does to the class token, done to any token or mean of tokens (not normalised)."""
        visual = self._visual_tower()
        if visual.proj is None:
            raise ValueError(f"{type(visual).__name__} has no image projection to embed its tokens with")
        with self._own_precision():
            return (visual.ln_post(tokens.to(self.dtype)) @ visual.proj).float()

    def encode_vocabulary(self, names: Sequence[str]) -> torch.Tensor:
        """Class names -> (C, E) unit-norm float32 embeddings (`prompt_mean` over the templates), on its device.

        The package's one text-embedding cache: each name is encoded once (until `clear_text_cache`), as a
        plain tensor even when first asked for under inference mode, so that training can use it. With
        `text_cache_dir`, a vocabulary's embeddings are also written there and read back by later runs: one
        safetensors file per (text tower, vocabulary), named and checked by the digests of the text tower's
        weights, tokenizer and compute precision, and of the names, templates and `prompt_mean`. A file that
        does not match or is damaged is recomputed (and rewritten) with a warning, never read as data.
        """
        if len(names) == 0:
            raise ValueError("the vocabulary is empty: give at least one class name")
        bad = [n for n in names if not isinstance(n, str) or not n.strip()]
        if bad:
            raise ValueError(f"class names must be non-empty strings, got {bad[:5]}")
        key = tuple(names)
        if key not in self._vocabulary_cache:
            with torch.inference_mode(False), torch.no_grad():
                self._vocabulary_cache[key] = self._embed_vocabulary(list(names)).to(self.image_mean.device)
            while len(self._vocabulary_cache) > _VOCABULARIES_KEPT:
                self._vocabulary_cache.popitem(last=False)
        self._vocabulary_cache.move_to_end(key)
        return self._vocabulary_cache[key].to(self.image_mean.device)  # no copy unless the model moved since

    def _embed_vocabulary(self, names: list[str]) -> torch.Tensor:
        """(C, E) CPU float32: read from the disk cache if it holds them, else encoded (names not yet in memory)."""
        path, metadata = self._disk_cache_entry(names) if self.text_cache_dir is not None else (None, {})
        cached = None if path is None else _read_text_cache(path, metadata, rows=len(names))
        if cached is not None:
            self._text_cache.update(zip(names, cached, strict=True))
            return cached
        new = list(dict.fromkeys(n for n in names if n not in self._text_cache))
        if new:
            self._text_cache.update(zip(new, self._encode_names(new), strict=True))
        embeddings = torch.stack([self._text_cache[n] for n in names])
        if path is not None:
            _write_text_cache(path, embeddings, metadata)
        return embeddings

    def _encode_names(self, names: list[str]) -> torch.Tensor:
        # Whole names per text-encoder call: each call's prompt embeddings are reduced to one row per name at
        # once, so memory holds (C, E), not all C x templates prompt embeddings (V3Det: 13k x 81).
        per_call = max(1, self.text_batch_size // len(self.templates))
        return torch.cat([self._encode_batch(names[i : i + per_call]) for i in range(0, len(names), per_call)])

    def _encode_batch(self, names: list[str]) -> torch.Tensor:
        prompts = [template(name) for name in names for template in self.templates]
        tokens = self.tokenizer(prompts).to(self.image_mean.device)
        return self.encode_prompt_tokens(tokens.view(len(names), len(self.templates), -1)).cpu()

    def encode_prompt_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """(C, K, L) token ids of C names' K prompts -> (C, E) unit-norm float32 class embeddings (`prompt_mean`
        over the K prompts). The text graph of the ONNX export is this method."""
        names, templates = tokens.shape[:2]
        normalized = self.prompt_mean == "normalized"
        with self._own_precision():
            per_prompt = self.model.encode_text(tokens.flatten(0, 1), normalize=normalized)
        per_prompt = per_prompt.view(names, templates, -1)
        if normalized:
            per_prompt = per_prompt.float()
        # "raw" averages and normalises in the text tower's dtype, as RegionSpot did (in float16 with its CLIP).
        return F.normalize(per_prompt.mean(dim=1), dim=-1).float()

    def _disk_cache_entry(self, names: list[str]) -> tuple[Path, dict[str, str]]:
        """The cache file of `names` for this text tower, and the metadata that file must carry."""
        device = self.image_mean.device.type
        autocast = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else None
        computes_in = "own dtype" if self.fixed_precision or autocast is None else f"autocast {autocast}"
        model = hashlib.sha256(f"{self._text_tower_digest()}|{computes_in}".encode()).hexdigest()
        recipe = {"names": names, "templates": [t("{}") for t in self.templates], "prompt_mean": self.prompt_mean}
        vocabulary = hashlib.sha256(json.dumps(recipe, ensure_ascii=False).encode()).hexdigest()
        metadata = {"format": _TEXT_CACHE_FORMAT, "text_tower": model, "vocabulary": vocabulary}
        return self.text_cache_dir / f"text_{model[:16]}_{vocabulary[:16]}.safetensors", metadata

    def _text_tower_digest(self) -> str:
        """SHA-256 of what decides a text embedding besides the prompt: the text tower's weights (every entry
        but the visual tower's and the logit scale/bias), their dtypes, and the tokenizer's kind and length."""
        if self._text_tower_sha256 is None:
            tokenizer = f"{type(self.tokenizer).__name__}:{getattr(self.tokenizer, 'context_length', None)}"
            digest = hashlib.sha256(tokenizer.encode())
            for name, tensor in self.model.state_dict().items():
                if name.startswith("visual.") or name in ("logit_scale", "logit_bias"):
                    continue
                digest.update(f"|{name}:{tensor.dtype}:{tuple(tensor.shape)}|".encode())
                digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy())
            self._text_tower_sha256 = digest.hexdigest()
        return self._text_tower_sha256

    def clear_text_cache(self) -> None:
        """Forget every text embedding in memory (after the backbone's weights, dtype or device change); the disk
        cache is keyed by the weights, so files of the old weights are simply no longer read."""
        self._text_cache.clear()
        self._vocabulary_cache.clear()
        self._text_tower_sha256 = None


def _read_text_cache(path: Path, metadata: dict[str, str], *, rows: int) -> torch.Tensor | None:
    """The (rows, E) float32 embeddings stored at `path`, or None (with a warning if a file was there but is not
    the one asked for or is damaged: its metadata is checked first, then the digest of its data it records)."""
    if not path.is_file():
        return None
    try:
        with safe_open(path, framework="pt") as stored:
            found = stored.metadata() or {}
            if any(found.get(k) != v for k, v in metadata.items()):
                log.warning("text-embedding cache %s is another model's or vocabulary's: recomputing it", path)
                return None
            embeddings = stored.get_tensor("embeddings")
    except (SafetensorError, OSError) as error:
        log.warning("text-embedding cache %s is unreadable (%s): recomputing it", path, error)
        return None
    if (
        embeddings.dtype != torch.float32
        or len(embeddings) != rows
        or found.get("sha256") != _tensor_sha256(embeddings)
    ):
        log.warning("text-embedding cache %s is damaged (its data does not match its digest): recomputing it", path)
        return None
    return embeddings


def _write_text_cache(path: Path, embeddings: torch.Tensor, metadata: dict[str, str]) -> None:
    """Write `embeddings` (C, E) float32 to `path` atomically (a reader never sees half a file); a cache that
    cannot be written is warned about, not fatal."""
    try:
        with atomic_path(path, per_process=True) as staging:  # one per process: ranks may write at once
            save_file({"embeddings": embeddings}, staging, metadata={**metadata, "sha256": _tensor_sha256(embeddings)})
    except OSError as error:
        log.warning("could not write the text-embedding cache %s (%s); continuing without it", path, error)


def _tensor_sha256(tensor: torch.Tensor) -> str:
    return hashlib.sha256(tensor.contiguous().reshape(-1).view(torch.uint8).numpy()).hexdigest()
