"""Additive Gaussian noise with a per-sample probability and standard deviation."""

from __future__ import annotations

import keras
from keras import ops

from kseg.augment._base import JointAugmentation, check_range, per_sample


@keras.saving.register_keras_serializable(package="kseg")
class RandomGaussianNoise(JointAugmentation):
    """Adds zero-mean Gaussian noise to the images of randomly chosen samples.

    Each chosen sample draws its standard deviation uniformly from ``stddev`` and gets
    independent noise per voxel; the result is clipped to ``clip`` (the chosen samples only,
    so untouched samples pass through bit-identical). Masks are returned untouched.
    ``keras.layers.GaussianNoise`` is a regulariser with one fixed deviation for every
    sample and no probability, hence this layer.

    Args:
        probability: chance that a sample gets noise.
        stddev: ``(low, high)`` range of the noise standard deviation, in image units
            (``(0.01, 0.05)`` is 1-5 % of a [0, 1] CT window).
        clip: ``(low, high)`` range to clip noisy images to, or ``None`` for no clipping
            (z-normalised MR).
        spatial_dims: 2 or 3 (tells a batch from an unbatched volume).
        seed: int seed, or ``None``.
        **kwargs: standard ``keras.layers.Layer`` arguments.

    Example:
        >>> noise = RandomGaussianNoise(probability=0.5, stddev=(0.01, 0.05), seed=0)
        >>> noisy = noise({"images": keras.ops.ones((4, 32, 32, 1)) * 0.5,
        ...                "segmentation_masks": keras.ops.ones((4, 32, 32, 1), "int32")})

    Reference:
        Isensee F. et al., "nnU-Net: a self-configuring method for deep learning-based
        biomedical image segmentation", Nature Methods 18, 203-211 (2021) (Gaussian noise,
        variance drawn per sample).
    """

    def __init__(
        self,
        probability: float = 0.5,
        stddev=(0.01, 0.05),
        clip=(0.0, 1.0),
        spatial_dims: int = 2,
        seed=None,
        **kwargs,
    ):
        super().__init__(spatial_dims=spatial_dims, probability=probability, seed=seed, **kwargs)
        self.stddev = check_range("stddev", stddev, minimum=0.0)
        self.clip = None if clip is None else check_range("clip", clip)

    def transform(self, images, masks):
        rank = len(images.shape)
        batch_size = ops.shape(images)[0]
        applies = per_sample(self.sample_applies(batch_size), rank)
        stddevs = per_sample(self.uniform((batch_size,), *self.stddev), rank)
        noise = keras.random.normal(ops.shape(images), seed=self.seed_generator)
        noisy = images + ops.cast(noise * stddevs, images.dtype)
        if self.clip is not None:
            noisy = ops.clip(noisy, *self.clip)
        return ops.where(applies, noisy, images), masks

    def get_config(self):
        config = super().get_config()
        config.update(
            {"stddev": list(self.stddev), "clip": None if self.clip is None else list(self.clip)}
        )
        return config
