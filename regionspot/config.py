"""Model configuration: small dataclasses, read from YAML, turned into a model by `regionspot.build`."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

SAM_VARIANTS = ("vit_b", "vit_l", "vit_h", "tiny")


@dataclass
class SamConfig:
    """The frozen localisation backbone."""

    variant: str = "vit_b"  # one of SAM_VARIANTS; "tiny" is a 2-block SAM for tests and demos
    checkpoint: str | None = None  # SAM's official .pth (or a tiny one we saved); None = random weights
    multimask: bool = False  # True: 3 region tokens per prompt (SAM's multimask tokens), else the single-mask token
    # Prompts per mask-decoder call, over all images of a batch: each holds a copy of its image's embedding
    # (256 x 64 x 64 floats, 4 MiB, for the real SAMs), so this bounds the decoder's memory.
    prompt_batch_size: int = 64

    def __post_init__(self) -> None:
        if self.variant not in SAM_VARIANTS:
            raise ValueError(f"sam.variant must be one of {SAM_VARIANTS}, got {self.variant!r}")
        if self.prompt_batch_size < 1:
            raise ValueError(f"sam.prompt_batch_size must be positive, got {self.prompt_batch_size}")


@dataclass
class ClipConfig:
    """The frozen vision-language backbone (any open_clip model)."""

    model_name: str = "ViT-B-16-quickgelu"  # an open_clip name; OpenAI weights need the -quickgelu names
    checkpoint: str | None = None  # local .pt/.bin/.safetensors or OpenAI's TorchScript file; None = random
    templates: str = "imagenet"  # "imagenet": "{}." + the 80 CLIP ImageNet prompts; "plain": "{}." alone

    def __post_init__(self) -> None:
        if self.templates not in ("imagenet", "plain"):
            raise ValueError(f"clip.templates must be 'imagenet' or 'plain', got {self.templates!r}")


@dataclass
class AdapterConfig:
    """The trained fusion module (RegionSpot's defaults)."""

    depth: int = 3  # decoder layers
    num_heads: int = 8
    ffn_dim: int = 2048
    dropout: float = 0.1
    checkpoint: str | None = None  # trained adapter weights (.safetensors); None = untrained

    def __post_init__(self) -> None:
        if self.depth < 1 or self.num_heads < 1 or self.ffn_dim < 1:
            raise ValueError("adapter.depth, adapter.num_heads and adapter.ffn_dim must be positive")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"adapter.dropout must be in [0, 1), got {self.dropout}")


@dataclass
class RegionSpotConfig:
    """A whole model: which SAM, which CLIP, what adapter."""

    sam: SamConfig = field(default_factory=SamConfig)
    clip: ClipConfig = field(default_factory=ClipConfig)
    adapter: AdapterConfig = field(default_factory=AdapterConfig)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RegionSpotConfig:
        _check_keys(data, cls, "config")
        parts = {}
        for part in dataclasses.fields(cls):
            value = data.get(part.name) or {}
            if not isinstance(value, dict):
                raise ValueError(f"config section {part.name!r} must be a mapping, got {type(value).__name__}")
            part_cls = {"sam": SamConfig, "clip": ClipConfig, "adapter": AdapterConfig}[part.name]
            _check_keys(value, part_cls, part.name)
            parts[part.name] = part_cls(**value)
        return cls(**parts)

    @classmethod
    def from_yaml(cls, path: str | Path) -> RegionSpotConfig:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"model config not found: {path}")
        try:
            data = yaml.safe_load(path.read_text())
        except yaml.YAMLError as err:
            raise ValueError(f"model config {path} is not valid YAML: {err}") from err
        if not isinstance(data, dict):
            raise ValueError(f"model config {path} must be a mapping with sam/clip/adapter sections")
        return cls.from_dict(data)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _check_keys(data: dict[str, Any], cls: type, where: str) -> None:
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"unknown key(s) {unknown} in {where}; expected some of {sorted(known)}")
