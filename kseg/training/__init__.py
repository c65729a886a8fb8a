"""Training helpers: callbacks that validate on whole volumes."""

from kseg.training.callbacks import VolumeValidation

__all__ = ["VolumeValidation"]
