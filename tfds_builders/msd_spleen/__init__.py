"""The ``msd_spleen`` TFDS dataset; importing this package registers it with TFDS."""

from tfds_builders.msd_spleen.layout import task_folder
from tfds_builders.msd_spleen.msd_spleen_dataset_builder import (
    UNLABELED_SPLIT,
    Builder,
    MsdSpleenConfig,
)

__all__ = ["UNLABELED_SPLIT", "Builder", "MsdSpleenConfig", "task_folder"]
