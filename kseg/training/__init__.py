"""Training helpers: callbacks that validate on whole volumes and keep the best model, and
resumable run state that a kill at any moment cannot corrupt."""

from kseg.evaluation import EmptyReferenceWarning  # what VolumeValidation warns with
from kseg.training.callbacks import (
    BestModelCheckpoint,
    CheckpointRecordWarning,
    VolumeValidation,
    training_callbacks,
)
from kseg.training.resume import (
    AtomicBackupAndRestore,
    ResumableCSVLogger,
    ResumableReduceLROnPlateau,
)

__all__ = [
    "AtomicBackupAndRestore",
    "BestModelCheckpoint",
    "CheckpointRecordWarning",
    "EmptyReferenceWarning",
    "ResumableCSVLogger",
    "ResumableReduceLROnPlateau",
    "VolumeValidation",
    "training_callbacks",
]
