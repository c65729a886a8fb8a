"""Training helpers: callbacks that validate on whole volumes and keep the best model, and
resumable run state that a kill at any moment cannot corrupt, and a time budget the run
keeps; :mod:`kseg.training.distribute` trains on several devices or workers with
TensorFlow's distribution strategies."""

from kseg.evaluation import EmptyReferenceWarning  # what VolumeValidation warns with
from kseg.training import distribute
from kseg.training.budget import TimeBudget
from kseg.training.callbacks import (
    BestModelCheckpoint,
    CheckpointRecordWarning,
    VolumeValidation,
    training_callbacks,
)
from kseg.training.consistency import (
    FixMatch,
    MeanTeacher,
    consistency_loss,
    fixmatch_loss,
    masked_cross_entropy,
    pseudo_labels,
    sigmoid_rampup,
)
from kseg.training.optimizer import build_optimizer
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
    "FixMatch",
    "MeanTeacher",
    "ResumableCSVLogger",
    "ResumableReduceLROnPlateau",
    "TimeBudget",
    "VolumeValidation",
    "build_optimizer",
    "consistency_loss",
    "distribute",
    "fixmatch_loss",
    "masked_cross_entropy",
    "pseudo_labels",
    "sigmoid_rampup",
    "training_callbacks",
]
