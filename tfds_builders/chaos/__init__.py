"""The ``chaos`` TFDS dataset; importing this package registers it with TFDS."""

from tfds_builders.chaos.chaos_dataset_builder import Builder, ChaosConfig

__all__ = ["Builder", "ChaosConfig"]
