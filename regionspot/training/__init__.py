"""Training with Lightning (the model package never imports it): module and its grouped settings, data module,
callbacks, export, and fault tolerance (atomic checkpoints, a checkpoint on SIGTERM).

The public names load on first use (PEP 562), so that `regionspot-train --help` answers before Lightning loads.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from regionspot.lazy import lazy_exports

if TYPE_CHECKING:
    from regionspot.training.callbacks import ExportAdapter, ImagesPerSecond, ValidationScores
    from regionspot.training.datamodule import RegionDataModule
    from regionspot.training.export import export_adapter, read_training_checkpoint, save_adapter
    from regionspot.training.fault_tolerance import AtomicCheckpointIO, FaultToleranceSettings, PreemptionCheckpoint
    from regionspot.training.module import RegionSpotModule
    from regionspot.training.schedule import OptimizerSettings
    from regionspot.training.settings import BackboneSettings
    from regionspot.training.validation import ValidationSettings

__all__ = [
    "AtomicCheckpointIO",
    "BackboneSettings",
    "ExportAdapter",
    "FaultToleranceSettings",
    "ImagesPerSecond",
    "OptimizerSettings",
    "PreemptionCheckpoint",
    "RegionDataModule",
    "RegionSpotModule",
    "ValidationScores",
    "ValidationSettings",
    "export_adapter",
    "read_training_checkpoint",
    "save_adapter",
]
__getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "regionspot.training.callbacks": ["ExportAdapter", "ImagesPerSecond", "ValidationScores"],
        "regionspot.training.datamodule": ["RegionDataModule"],
        "regionspot.training.export": ["export_adapter", "read_training_checkpoint", "save_adapter"],
        "regionspot.training.fault_tolerance": ["AtomicCheckpointIO", "FaultToleranceSettings", "PreemptionCheckpoint"],
        "regionspot.training.module": ["RegionSpotModule"],
        "regionspot.training.schedule": ["OptimizerSettings"],
        "regionspot.training.settings": ["BackboneSettings"],
        "regionspot.training.validation": ["ValidationSettings"],
    },
)
