"""Training with Lightning (the model package never imports it): module, data module, callbacks, export, and
fault tolerance (atomic checkpoints, a checkpoint on SIGTERM).

The public names load on first use (PEP 562), so that `regionspot-train --help` answers before Lightning loads.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from regionspot.lazy import lazy_exports

if TYPE_CHECKING:
    from regionspot.training.callbacks import ExportAdapter, ImagesPerSecond, ValidationScores
    from regionspot.training.datamodule import RegionDataModule
    from regionspot.training.export import export_adapter, read_training_checkpoint, save_adapter
    from regionspot.training.fault_tolerance import AtomicCheckpointIO, PreemptionCheckpoint
    from regionspot.training.module import RegionSpotModule

__all__ = [
    "AtomicCheckpointIO",
    "ExportAdapter",
    "ImagesPerSecond",
    "PreemptionCheckpoint",
    "RegionDataModule",
    "RegionSpotModule",
    "ValidationScores",
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
        "regionspot.training.fault_tolerance": ["AtomicCheckpointIO", "PreemptionCheckpoint"],
        "regionspot.training.module": ["RegionSpotModule"],
    },
)
