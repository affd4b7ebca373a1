"""regionspot: name any region of an image against any vocabulary, and describe it in words, with frozen SAM +
CLIP (RegionSpot) and a small caption decoder on top (TAP-style).

The public names load on first use (PEP 562), so that `import regionspot` stays fast: torch,
segment_anything and open_clip (which imports transformers and timm) take seconds to import and are
imported only when a model, a config or the predictor is first asked for.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from regionspot.build import build_regionspot
    from regionspot.config import AdapterConfig, CaptionConfig, ClipConfig, RegionSpotConfig, SamConfig, VqaConfig
    from regionspot.modeling.regionspot import RegionSpot
    from regionspot.predictor import RegionPredictions, RegionSpotPredictor

_PUBLIC = {
    "AdapterConfig": "regionspot.config",
    "CaptionConfig": "regionspot.config",
    "ClipConfig": "regionspot.config",
    "RegionSpotConfig": "regionspot.config",
    "SamConfig": "regionspot.config",
    "VqaConfig": "regionspot.config",
    "RegionSpot": "regionspot.modeling.regionspot",
    "RegionPredictions": "regionspot.predictor",
    "RegionSpotPredictor": "regionspot.predictor",
    "build_regionspot": "regionspot.build",
}
__all__ = [
    "AdapterConfig",
    "CaptionConfig",
    "ClipConfig",
    "RegionPredictions",
    "RegionSpot",
    "RegionSpotConfig",
    "RegionSpotPredictor",
    "SamConfig",
    "VqaConfig",
    "build_regionspot",
]
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    if name not in _PUBLIC:
        raise AttributeError(f"module 'regionspot' has no attribute {name!r}")
    value = getattr(importlib.import_module(_PUBLIC[name]), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_PUBLIC])
