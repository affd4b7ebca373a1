"""regionspot: name any region of an image against any vocabulary, with frozen SAM + CLIP (RegionSpot)."""

from regionspot.build import build_regionspot
from regionspot.config import AdapterConfig, ClipConfig, RegionSpotConfig, SamConfig
from regionspot.modeling.regionspot import RegionSpot
from regionspot.predictor import RegionPredictions, RegionSpotPredictor

__all__ = [
    "AdapterConfig",
    "ClipConfig",
    "RegionPredictions",
    "RegionSpot",
    "RegionSpotConfig",
    "RegionSpotPredictor",
    "SamConfig",
    "build_regionspot",
]
__version__ = "0.1.0"
