"""The ``lctsc`` TFDS dataset; importing this package registers it with TFDS."""

from tfds_builders.lctsc.lctsc_dataset_builder import Builder, LctscConfig

__all__ = ["Builder", "LctscConfig"]
