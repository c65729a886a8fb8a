"""The ``xray`` TFDS dataset; importing this package registers it with TFDS."""

from tfds_builders.xray.xray_dataset_builder import (
    Builder,
    XrayConfig,
    add_gaussian_noise,
    noisy_config,
)

__all__ = [
    "Builder",
    "XrayConfig",
    "add_gaussian_noise",
    "noisy_config",
]
