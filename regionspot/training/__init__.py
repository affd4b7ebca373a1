"""Training with Lightning (the model package never imports it): module, data module, callbacks, export, and
fault tolerance (atomic checkpoints, a checkpoint on SIGTERM)."""

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
