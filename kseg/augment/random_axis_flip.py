"""Random mirroring along each spatial axis independently, for 2D and 3D."""

from __future__ import annotations

import keras
from keras import ops

from kseg.augment._base import JointAugmentation, check_axes, per_sample


@keras.saving.register_keras_serializable(package="kseg")
class RandomAxisFlip(JointAugmentation):
    """Flips each of ``axes`` with probability ``probability``, independently per sample.

    ``keras.layers.RandomFlip`` covers 2D, but its ``"horizontal_and_vertical"`` mode flips
    both axes with one draw (identity or a 180° turn, never a single mirror) and it has no
    3D form; this layer draws every axis on its own, like nnU-Net's mirroring.

    Args:
        spatial_dims: 2 or 3.
        axes: spatial axes to flip (0-based, batch excluded: in 3D ``0`` is depth). Defaults
            to every spatial axis.
        probability: chance, per sample and per axis, that the axis is flipped.
        seed: int seed, or ``None``.
        **kwargs: standard ``keras.layers.Layer`` arguments.

    Example:
        >>> flip = RandomAxisFlip(spatial_dims=3, axes=(1, 2), probability=0.5, seed=0)
        >>> batch = {"images": keras.ops.zeros((2, 8, 8, 8, 1)),
        ...          "segmentation_masks": keras.ops.zeros((2, 8, 8, 8, 1), "int32")}
        >>> flipped = flip(batch)

    Reference:
        Isensee F. et al., "nnU-Net: a self-configuring method for deep learning-based
        biomedical image segmentation", Nature Methods 18, 203-211 (2021) (mirroring).
    """

    def __init__(
        self, spatial_dims: int = 2, axes=None, probability: float = 0.5, seed=None, **kwargs
    ):
        super().__init__(spatial_dims=spatial_dims, probability=probability, seed=seed, **kwargs)
        self.axes = check_axes(
            "axes", range(self.spatial_dims) if axes is None else axes, self.spatial_dims
        )

    def transform(self, images, masks):
        rank = len(images.shape)
        batch_size = ops.shape(images)[0]
        for axis in self.axes:
            flips = per_sample(self.sample_applies(batch_size), rank)
            images = ops.where(flips, ops.flip(images, axis=axis + 1), images)
            if masks is not None:
                masks = ops.where(flips, ops.flip(masks, axis=axis + 1), masks)
        return images, masks

    def get_config(self):
        config = super().get_config()
        config.update({"axes": list(self.axes)})
        return config
