"""Training helpers: callbacks that validate on whole volumes and keep the best model."""

from kseg.training.callbacks import BestModelCheckpoint, VolumeValidation

__all__ = ["BestModelCheckpoint", "VolumeValidation"]
