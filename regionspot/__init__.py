"""regionspot: name any region of an image against any vocabulary, and describe it in words, with frozen SAM +
CLIP (RegionSpot) and a small caption decoder on top (TAP-style).

The public names load on first use (PEP 562), so that `import regionspot` stays fast: torch,
segment_anything and open_clip (which imports transformers and timm) take seconds to import and are
imported only when a model, a config or the predictor is first asked for.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from regionspot.lazy import lazy_exports

if TYPE_CHECKING:
    from regionspot.build import build_regionspot
    from regionspot.config import (
        AdapterConfig,
        CaptionConfig,
        ClipConfig,
        MaskGeneratorSettings,
        RegionSpotConfig,
        SamConfig,
        VqaConfig,
    )
    from regionspot.configs import config_names, resolve_config
    from regionspot.modeling.regionspot import RegionSpot
    from regionspot.predictor import RegionPredictions, RegionSpotPredictor

__version__ = "0.1.0"
__all__ = [
    "AdapterConfig",
    "CaptionConfig",
    "ClipConfig",
    "MaskGeneratorSettings",
    "RegionPredictions",
    "RegionSpot",
    "RegionSpotConfig",
    "RegionSpotPredictor",
    "SamConfig",
    "VqaConfig",
    "build_regionspot",
    "config_names",
    "resolve_config",
]
__getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "regionspot.build": ["build_regionspot"],
        "regionspot.config": [
            "AdapterConfig",
            "CaptionConfig",
            "ClipConfig",
            "MaskGeneratorSettings",
            "RegionSpotConfig",
            "SamConfig",
            "VqaConfig",
        ],
        "regionspot.configs": ["config_names", "resolve_config"],
        "regionspot.modeling.regionspot": ["RegionSpot"],
        "regionspot.predictor": ["RegionPredictions", "RegionSpotPredictor"],
    },
)
