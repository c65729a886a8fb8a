"""Separable Gaussian blur with a per-sample probability and sigma, for 2D and 3D."""

from __future__ import annotations

import math

import keras
from keras import ops

from kseg.augment._base import JointAugmentation, check_range, per_sample

# Kernel half-width in units of the largest sigma; 3 keeps 99.7 % of the weight.
TRUNCATE = 3.0


@keras.saving.register_keras_serializable(package="kseg")
class RandomGaussianBlur(JointAugmentation):
    """Blurs chosen samples with an isotropic Gaussian whose sigma is drawn per sample.

    The kernel is separable: one 1D pass per spatial axis, with half-width
    ``ceil(3 * sigma_high)`` voxels and borders mirrored (``d c b a | a b c d``, scipy's
    ``mode="reflect"``, repeated along an axis shorter than that, as on a 2-slice patch).
    Each sample's weights are its own, so one batch mixes sigmas. Masks are returned
    untouched. ``keras.layers.RandomGaussianBlur`` draws one sigma per
    batch and axis (anisotropic, shared by every sample), clips to a fixed ``value_range``
    and is 2D only.

    Args:
        probability: chance that a sample is blurred.
        sigma: ``(low, high)`` range of the Gaussian standard deviation in voxels, ``low > 0``.
        spatial_dims: 2 or 3.
        seed: int seed, or ``None``.
        **kwargs: standard ``keras.layers.Layer`` arguments.

    Example:
        >>> blur = RandomGaussianBlur(probability=0.3, sigma=(0.4, 0.8), spatial_dims=3)
        >>> blurred = blur(keras.ops.ones((2, 16, 16, 16, 1)))

    Reference:
        Isensee F. et al., "nnU-Net: a self-configuring method for deep learning-based
        biomedical image segmentation", Nature Methods 18, 203-211 (2021) (Gaussian blur,
        sigma drawn per sample).
    """

    def __init__(
        self,
        probability: float = 0.3,
        sigma=(0.4, 0.8),
        spatial_dims: int = 2,
        seed=None,
        **kwargs,
    ):
        super().__init__(spatial_dims=spatial_dims, probability=probability, seed=seed, **kwargs)
        self.sigma = check_range("sigma", sigma)
        if self.sigma[0] <= 0:
            raise ValueError(f"sigma must be positive, got {sigma!r}")
        self.radius = max(1, math.ceil(TRUNCATE * self.sigma[1]))

    def kernels(self, sigmas):
        """``(B, 2 * radius + 1)`` normalised 1D Gaussian weights for per-sample ``sigmas``."""
        offsets = ops.arange(-self.radius, self.radius + 1, dtype="float32")
        weights = ops.exp(-0.5 * (offsets[None, :] / ops.expand_dims(sigmas, 1)) ** 2)
        return weights / ops.sum(weights, axis=1, keepdims=True)

    def reflected_indices(self, length):
        """Indices of an axis of ``length`` voxels padded by ``radius`` on each side, borders
        mirrored as scipy's ``mode="reflect"`` does, again and again where the axis is shorter
        than the radius (a 2-slice patch: ``a b b a | a b | b a a b``), which
        ``ops.pad(mode="symmetric")`` refuses."""
        positions = ops.arange(-self.radius, self.radius + length, dtype="int32")
        period = ops.mod(positions, 2 * length)
        return ops.where(period < length, period, 2 * length - 1 - period)

    def transform(self, images, masks):
        rank = len(images.shape)
        batch_size = ops.shape(images)[0]
        applies = per_sample(self.sample_applies(batch_size), rank)
        kernels = ops.cast(self.kernels(self.uniform((batch_size,), *self.sigma)), images.dtype)
        blurred = images
        for axis in range(1, rank - 1):
            length = blurred.shape[axis]
            if length is None:
                length = ops.shape(blurred)[axis]
            padded = ops.take(blurred, self.reflected_indices(length), axis=axis)
            total = 0.0
            for tap in range(2 * self.radius + 1):
                window = [slice(None)] * rank
                window[axis] = slice(tap, tap + length)
                total = total + per_sample(kernels[:, tap], rank) * padded[tuple(window)]
            blurred = total
        return ops.where(applies, blurred, images), masks

    def get_config(self):
        config = super().get_config()
        config.update({"sigma": list(self.sigma)})
        return config
