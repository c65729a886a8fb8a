"""Training helpers: callbacks that validate on whole volumes and keep the best model."""

from kseg.training.callbacks import BestModelCheckpoint, VolumeValidation, training_callbacks

__all__ = ["BestModelCheckpoint", "VolumeValidation", "training_callbacks"]
