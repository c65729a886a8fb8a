"""Contrast scaling about each image's mean, with a per-sample probability."""

from __future__ import annotations

import keras
from keras import ops

from kseg.augment._base import JointAugmentation, check_range, per_sample


@keras.saving.register_keras_serializable(package="kseg")
class RandomContrast(JointAugmentation):
    """Scales intensities about the image mean: ``(x - mean) * factor + mean``.

    Chosen samples draw ``factor`` uniformly from ``factor``; the mean is taken per sample and
    channel over the spatial axes, so the mean is preserved. With ``preserve_range`` the
    result is clipped to the sample's own original minimum and maximum (nnU-Net's
    ``preserve_range``), which keeps a [0, 1] window inside [0, 1]. Masks are returned
    untouched. Works on 2D and 3D. ``keras.layers.RandomContrast`` draws the same kind of
    factor but applies it to every sample, clips to a fixed ``value_range`` and is 2D only.

    Args:
        probability: chance that a sample's contrast is changed.
        factor: ``(low, high)`` range of the multiplicative factor, ``low > 0``.
        preserve_range: clip to each sample's original intensity range.
        spatial_dims: 2 or 3 (tells a batch from an unbatched volume).
        seed: int seed, or ``None``.
        **kwargs: standard ``keras.layers.Layer`` arguments.

    Example:
        >>> contrast = RandomContrast(probability=0.5, factor=(0.8, 1.5), seed=0)
        >>> adjusted = contrast(keras.ops.ones((4, 32, 32, 1)))

    Reference:
        Isensee F. et al., "nnU-Net: a self-configuring method for deep learning-based
        biomedical image segmentation", Nature Methods 18, 203-211 (2021) (contrast
        augmentation, factor range (0.75, 1.25) there).
    """

    def __init__(
        self,
        probability: float = 0.5,
        factor=(0.8, 1.5),
        preserve_range: bool = True,
        spatial_dims: int = 2,
        seed=None,
        **kwargs,
    ):
        super().__init__(spatial_dims=spatial_dims, probability=probability, seed=seed, **kwargs)
        self.factor = check_range("factor", factor, minimum=0.0)
        self.preserve_range = bool(preserve_range)

    def transform(self, images, masks):
        rank = len(images.shape)
        spatial_axes = tuple(range(1, rank - 1))
        batch_size = ops.shape(images)[0]
        applies = per_sample(self.sample_applies(batch_size), rank)
        factors = ops.cast(
            per_sample(self.uniform((batch_size,), *self.factor), rank), images.dtype
        )
        means = ops.mean(images, axis=spatial_axes, keepdims=True)
        adjusted = (images - means) * factors + means
        if self.preserve_range:
            adjusted = ops.clip(
                adjusted,
                ops.min(images, axis=spatial_axes, keepdims=True),
                ops.max(images, axis=spatial_axes, keepdims=True),
            )
        return ops.where(applies, adjusted, images), masks

    def get_config(self):
        config = super().get_config()
        config.update({"factor": list(self.factor), "preserve_range": self.preserve_range})
        return config
