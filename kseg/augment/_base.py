"""The base class and argument checks shared by kseg's joint augmentation layers.

Every layer takes what Keras' own image preprocessing layers take: either a tensor of
images or a dict ``{"images": ..., "segmentation_masks": ...}``, batched
``(B, *spatial, C)`` or unbatched ``(*spatial, C)``, and returns the same structure. Spatial
layers move image and mask with one random draw (masks by nearest neighbour, so label
values never blend); intensity layers return the mask tensor untouched. Randomness is drawn
per sample from a ``keras.random.SeedGenerator``, so one batch mixes augmented and
untouched samples and a seeded layer repeats its sequence.
"""

from __future__ import annotations

import numbers

import keras
import numpy as np
from keras import ops

IMAGES = "images"
MASKS = "segmentation_masks"


def check_spatial_dims(spatial_dims) -> int:
    if isinstance(spatial_dims, bool) or spatial_dims not in (2, 3):
        raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims!r}")
    return int(spatial_dims)


def check_probability(name: str, value) -> float:
    # numbers.Real: numpy scalars too (np.float32 read from an array, np.int64 of a grid)
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0 <= value <= 1:
        raise ValueError(f"{name} must be a probability in [0, 1], got {value!r}")
    return float(value)


def check_range(name: str, value, minimum: float | None = None) -> tuple[float, float]:
    """``value`` as ``(low, high)`` with ``low <= high`` (a number ``v`` means ``(v, v)``)."""
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        value = (value, value)
    try:
        low, high = (float(v) for v in value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number or a (low, high) pair, got {value!r}") from None
    if low > high:
        raise ValueError(f"{name} must have low <= high, got {value!r}")
    if minimum is not None and low < minimum:
        raise ValueError(f"{name} must not go below {minimum}, got {value!r}")
    return low, high


def check_axes(name: str, axes, spatial_dims: int) -> tuple[int, ...]:
    """Spatial axes (0-based, batch and channel excluded) as a tuple of distinct ints."""
    try:
        axes = tuple(int(axis) for axis in axes)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a sequence of spatial axes, got {axes!r}") from None
    if not axes or len(set(axes)) != len(axes) or any(not 0 <= a < spatial_dims for a in axes):
        raise ValueError(
            f"{name} must hold distinct spatial axes in [0, {spatial_dims}) "
            f"(batch and channel axes excluded), got {axes!r}"
        )
    return axes


def check_per_axis(name: str, value, count: int, minimum: float = 0.0) -> tuple[float, ...]:
    """One float per axis from a number or a sequence, each >= ``minimum``."""
    values = (value,) * count if isinstance(value, numbers.Real) else tuple(value)
    if len(values) != count or any(
        isinstance(v, bool) or not isinstance(v, numbers.Real) or v < minimum for v in values
    ):
        raise ValueError(
            f"{name} must be a number >= {minimum} or a sequence of {count} such numbers, "
            f"got {value!r}"
        )
    return tuple(float(v) for v in values)


def _round_to(values, dtype: str):
    """Float ``values`` as integer ``dtype``: nearest integer, clipped to the dtype's range."""
    info = np.iinfo(dtype)
    return ops.cast(ops.clip(ops.round(values), float(info.min), float(info.max)), dtype)


def per_sample(values, rank: int):
    """Reshape a ``(B,)`` tensor to ``(B, 1, ..., 1)`` so it broadcasts over rank ``rank``."""
    return ops.reshape(values, (-1,) + (1,) * (rank - 1))


class JointAugmentation(keras.layers.Layer):
    """A random transform applied with one draw to images and their segmentation masks.

    Subclasses implement ``transform(images, masks)`` on batched tensors
    ``(B, *spatial, C)`` (``masks`` may be ``None``) and return both; this class handles the
    dict / tensor input forms, unbatched inputs and ``training=False`` (identity).

    Args:
        spatial_dims: 2 (images ``(B, H, W, C)``) or 3 (volumes ``(B, D, H, W, C)``).
        probability: chance that a sample is transformed; drawn independently per sample.
        seed: int seed of the layer's ``keras.random.SeedGenerator``, or ``None``.
        **kwargs: standard ``keras.layers.Layer`` arguments (``name``, ``dtype``, ...).
    """

    def __init__(self, spatial_dims: int = 2, probability: float = 0.5, seed=None, **kwargs):
        super().__init__(**kwargs)
        self.spatial_dims = check_spatial_dims(spatial_dims)
        self.probability = check_probability("probability", probability)
        # a numpy seed (rng.integers) as the int a JSON config holds
        self.seed = int(seed) if isinstance(seed, numbers.Integral) else seed
        self.seed_generator = keras.random.SeedGenerator(self.seed)

    def transform(self, images, masks):
        raise NotImplementedError(f"{type(self).__name__} must implement transform()")

    def call(self, inputs, training=True):
        is_dict = isinstance(inputs, dict)
        images = ops.convert_to_tensor(inputs[IMAGES] if is_dict else inputs)
        masks = inputs.get(MASKS) if is_dict else None
        if masks is not None:
            masks = ops.convert_to_tensor(masks)
        rank = len(images.shape)
        if rank not in (self.spatial_dims + 1, self.spatial_dims + 2):
            raise ValueError(
                f"{self.name}: images must have rank {self.spatial_dims + 2} "
                f"(batch, {self.spatial_dims} spatial axes, channels) or {self.spatial_dims + 1} "
                f"(one unbatched sample), got shape {tuple(images.shape)}"
            )
        if masks is not None and len(masks.shape) != rank:
            raise ValueError(
                f"{self.name}: segmentation_masks must have the rank of images ({rank}), "
                f"got shape {tuple(masks.shape)}; add a channel axis to the mask"
            )
        if training:
            unbatched = rank == self.spatial_dims + 1
            if unbatched:
                images = ops.expand_dims(images, 0)
                masks = None if masks is None else ops.expand_dims(masks, 0)
            dtype = keras.backend.standardize_dtype(images.dtype)
            if "int" in dtype:
                # Integer images (uint8 PNGs, int16 HU) are transformed in float32 and
                # rounded back: in their own dtype noise wrapped around and interpolated or
                # blurred values were truncated or refused.
                images, masks = self.transform(ops.cast(images, "float32"), masks)
                images = _round_to(images, dtype)
            else:
                images, masks = self.transform(images, masks)
            if unbatched:
                images = ops.squeeze(images, 0)
                masks = None if masks is None else ops.squeeze(masks, 0)
        if not is_dict:
            return images
        outputs = dict(inputs)
        outputs[IMAGES] = images
        if masks is not None:
            outputs[MASKS] = masks
        return outputs

    def sample_applies(self, batch_size):
        """A ``(B,)`` boolean tensor: which samples of the batch get transformed."""
        draws = keras.random.uniform((batch_size,), seed=self.seed_generator)
        return ops.less(draws, self.probability)

    def uniform(self, shape, low, high):
        return keras.random.uniform(shape, minval=low, maxval=high, seed=self.seed_generator)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update(
            {"spatial_dims": self.spatial_dims, "probability": self.probability, "seed": self.seed}
        )
        return config
