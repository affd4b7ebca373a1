"""The one factory: a `RegionSpotConfig` (or its YAML) in, a ready `RegionSpot` out."""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

import open_clip
import torch

from regionspot.checkpoint import load_weights, model_part, read_state_dict, require_file
from regionspot.config import CaptionConfig, RegionSpotConfig, VqaConfig
from regionspot.modeling.adapter import RegionFusionAdapter
from regionspot.modeling.caption_decoder import CaptionDecoder
from regionspot.modeling.caption_tokenizer import CaptionTokenizer
from regionspot.modeling.clip import PROMPT_TEMPLATES, ClipBackbone, build_clip
from regionspot.modeling.region_lm import RegionLanguageModel, load_causal_lm
from regionspot.modeling.region_projector import RegionProjector
from regionspot.modeling.regionspot import BOX_COLUMNS, RegionSpot, region_condition_dim
from regionspot.modeling.sam import SamRegionEncoder, build_sam


def build_regionspot(config: RegionSpotConfig | str | Path, *, image_encoders: bool = True) -> RegionSpot:
    """Build SAM, CLIP and the adapter from `config`, loading every checkpoint it names from local files.

    The adapter checkpoint may be the original RegionSpot's `model_final.pth`: its adapter is read and its
    frozen SAM and CLIP are ignored, unless `sam.checkpoint` / `clip.checkpoint` name the same file.
    The model is built on the current default device (`with torch.device("meta")` builds shapes only).
    `image_encoders=False` leaves SAM's image encoder and CLIP's visual tower out (`regionspot.modeling.left_out`),
    for training from a feature cache: the model then reads cached frozen outputs only, never images.
    """
    if not isinstance(config, RegionSpotConfig):
        config = RegionSpotConfig.from_yaml(config)
    adapter_path = _adapter_path(config)  # checked before the backbones take their time to build
    with _seeded(config.sam.seed):  # weights without a checkpoint are the same at every build
        sam_model = build_sam(
            variant=config.sam.variant, checkpoint=config.sam.checkpoint, image_encoder=image_encoders
        )
    with _seeded(config.clip.seed):
        clip_model = build_clip(
            model_name=config.clip.model_name,
            checkpoint=config.clip.checkpoint,
            precision=config.clip.precision,
            image_encoder=image_encoders,
        )
    sam = SamRegionEncoder(
        sam=sam_model,
        multimask=config.sam.multimask,
        prompt_batch_size=config.sam.prompt_batch_size,
    )
    clip = ClipBackbone(
        model=clip_model,
        tokenizer=open_clip.get_tokenizer(config.clip.model_name),
        templates=PROMPT_TEMPLATES[config.clip.templates],
        prompt_mean=config.clip.prompt_mean,
        resize=config.clip.resize,
        fixed_precision=config.clip.precision != "auto",
        text_cache_dir=config.clip.text_cache_dir,
    )
    adapter = RegionFusionAdapter(
        token_dim=sam.token_dim,
        width=clip.width,
        output_dim=clip.embed_dim,
        depth=config.adapter.depth,
        num_heads=config.adapter.num_heads,
        ffn_dim=config.adapter.ffn_dim,
        dropout=config.adapter.dropout,
        box_attention=config.adapter.box_attention,
    )
    if adapter_path is not None:
        state = model_part(read_state_dict(adapter_path), "adapter", path=adapter_path)
        load_weights(adapter, state, path=adapter_path, model_name="the RegionSpot adapter")
    condition_dim = region_condition_dim(sam, clip)  # what `RegionSpot.region_condition` gives each head
    captioner = _build_captioner(config.caption, condition_dim=condition_dim)
    vqa = build_vqa_head(config.vqa, condition_dim=condition_dim) if config.vqa is not None else None
    return RegionSpot(sam=sam, clip=clip, adapter=adapter, vqa=vqa, **captioner)


def _adapter_path(config: RegionSpotConfig) -> Path | None:
    """The adapter checkpoint the config names, checked to be there (None: an untrained adapter)."""
    if config.adapter.checkpoint is None:
        return None
    return require_file(
        config.adapter.checkpoint,
        what="adapter checkpoint",
        hint="Give the .safetensors that training wrote (<run>/adapter.safetensors, or `python train.py export`), "
        "RegionSpot's model_final.pth, or null for an untrained adapter; a model YAML's relative paths are "
        "looked for next to the YAML, then from the working directory.",
    )


# The `caption:` fields that are CaptionDecoder's keyword arguments of the same names.
_CAPTION_DECODER_FIELDS = ("width", "depth", "num_heads", "mlp_dim", "dropout", "max_length", "prefix_tokens")


def _build_captioner(config: CaptionConfig | None, *, condition_dim: int) -> dict:
    """The caption decoder and tokenizer a `caption:` section describes (none without one), weights loaded."""
    if config is None:
        return {}
    tokenizer = CaptionTokenizer(token_ids=config.token_ids)
    sizes = {name: getattr(config, name) for name in _CAPTION_DECODER_FIELDS}
    decoder = CaptionDecoder(vocab_size=tokenizer.vocab_size, condition_dim=condition_dim, **sizes)
    if config.checkpoint is not None:
        path = require_file(
            config.checkpoint,
            what="caption decoder checkpoint",
            hint="Give the caption_decoder.safetensors that training wrote beside adapter.safetensors, or null for "
            "an untrained captioner; it must match caption.token_ids and the decoder sizes it was trained with.",
        )
        load_weights(decoder, read_state_dict(path), path=path, model_name="the caption decoder")
    return {"caption_decoder": decoder, "caption_tokenizer": tokenizer, "caption_beams": config.num_beams}


def build_vqa_head(config: VqaConfig, *, condition_dim: int) -> RegionLanguageModel:
    """The LLM of `vqa.llm` (from its local folder), set to train as `vqa.llm_training` says, with a projector
    from `condition_dim` region conditions sized to it; trained weights loaded from `vqa.checkpoint`: RegionSpot's
    VQA head, as `build_regionspot` builds it."""
    llm, tokenizer = load_causal_lm(config.llm, dtype=config.llm_dtype)
    if config.llm_training == "frozen":
        llm.requires_grad_(False)
    elif config.llm_training == "lora":
        from peft import LoraConfig, get_peft_model  # imported on use: only LoRA runs need peft

        lora = LoraConfig(
            r=config.lora_rank, lora_alpha=config.lora_alpha, target_modules=config.lora_targets, lora_dropout=0.0
        )
        try:
            llm = get_peft_model(llm, lora)
        except ValueError as err:  # e.g. target modules the LLM does not have
            raise ValueError(
                f"vqa.lora_targets {config.lora_targets} do not fit the LLM in {config.llm}: {err}"
            ) from err
    if config.gradient_checkpointing:
        llm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    with _seeded(0):  # an untrained projector is the same at every build
        projector = RegionProjector(
            condition_dim=condition_dim,
            hidden_size=llm.get_input_embeddings().embedding_dim,
            tokens_per_region=config.tokens_per_region,
            location_columns=BOX_COLUMNS if config.location_token else 0,
        )
    vqa = RegionLanguageModel(llm=llm, tokenizer=tokenizer, projector=projector, max_new_tokens=config.max_new_tokens)
    if config.checkpoint is not None:
        path = require_file(
            config.checkpoint,
            what="VQA checkpoint",
            hint="Give the vqa.safetensors that training wrote beside adapter.safetensors, or null for an untrained "
            "projector; it must match the vqa.llm, vqa.llm_training, vqa.tokens_per_region and vqa.location_token "
            "it was trained with.",
        )
        state = read_state_dict(path)
        expected = set(vqa.trained_state_dict())
        if set(state) != expected:
            missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
            raise ValueError(
                f"{path} does not fit this VQA head (vqa.llm_training={config.llm_training!r}, "
                f"tokens_per_region={config.tokens_per_region}, location_token={config.location_token}): "
                f"missing {missing[:5]}, unexpected {unexpected[:5]}"
            )
        load_weights(vqa, {**vqa.state_dict(), **state}, path=path, model_name="the VQA head")
    return vqa


@contextmanager
def _seeded(seed: int):
    """Run with torch's CPU generator seeded, then give it back as it was (the caller's randomness is untouched)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield
