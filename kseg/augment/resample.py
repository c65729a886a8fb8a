"""Sampling a batch of 2D images or 3D volumes at arbitrary voxel coordinates.

Written with gathers over the flattened batch (``keras.ops.take``), so it runs inside
``tf.data``, inside a jit-compiled (XLA) train step and on any Keras backend. TensorFlow's
``ImageProjectiveTransformV3`` (behind ``keras.layers.RandomRotation`` / ``RandomZoom`` /
``RandomTranslation``) has no XLA kernel and no 3D form; this is the replacement kseg's
affine and elastic layers are built on.
"""

from __future__ import annotations

import itertools
import math

from keras import ops

INTERPOLATIONS = ("linear", "nearest")


def voxel_grid(spatial_shape):
    """The index coordinates of every voxel: float32 ``(*spatial_shape, len(spatial_shape))``."""
    axes = [ops.arange(size, dtype="float32") for size in spatial_shape]
    return ops.stack(ops.meshgrid(*axes, indexing="ij"), axis=-1)


def sample_at(inputs, coordinates, interpolation: str = "linear", fill_value=0):
    """Sample ``inputs`` at ``coordinates`` (voxel indices), one coordinate map per sample.

    ``linear`` is bilinear in 2D and trilinear in 3D; ``nearest`` rounds half up and keeps the
    input dtype, so integer label maps come back holding only their original labels.
    Neighbours outside the grid read ``fill_value`` (scipy's ``mode="grid-constant"``).

    Args:
        inputs: ``(B, *spatial, C)`` tensor, ``len(spatial)`` = 2 or 3.
        coordinates: ``(B, *out_spatial, D)`` float tensor of voxel indices into ``inputs``'
            spatial axes (``D = len(spatial)``, index order, not x/y order).
        interpolation: ``"linear"`` or ``"nearest"``.
        fill_value: value read outside the grid.

    Returns:
        ``(B, *out_spatial, C)``: float32 for ``linear``, ``inputs``' dtype for ``nearest``.

    Example:
        >>> import keras
        >>> images = keras.ops.reshape(keras.ops.arange(16, dtype="float32"), (1, 4, 4, 1))
        >>> half_step = voxel_grid((4, 4))[None] + 0.5
        >>> float(sample_at(images, half_step)[0, 0, 0, 0])  # mean of 0, 1, 4, 5
        2.5

    Reference:
        Jaderberg M. et al., "Spatial Transformer Networks", NeurIPS 2015 (the sampler);
        scipy.ndimage.map_coordinates (order 0/1, mode "grid-constant") for the conventions.
    """
    if interpolation not in INTERPOLATIONS:
        raise ValueError(f"interpolation must be one of {INTERPOLATIONS}, got {interpolation!r}")
    spatial_dims = coordinates.shape[-1]
    if spatial_dims is None or len(inputs.shape) != spatial_dims + 2:
        raise ValueError(
            f"inputs must be (batch, *spatial, channels) with one spatial axis per coordinate "
            f"component, got inputs {tuple(inputs.shape)} and coordinates "
            f"{tuple(coordinates.shape)}"
        )
    input_shape = ops.shape(inputs)
    batch_size, spatial_shape, channels = input_shape[0], input_shape[1:-1], input_shape[-1]
    output_shape = tuple(ops.shape(coordinates)[:-1]) + (channels,)

    voxels_per_sample = math.prod(spatial_shape)
    strides = [math.prod(spatial_shape[axis + 1 :]) for axis in range(spatial_dims)]
    flat_inputs = ops.reshape(inputs, (-1, channels))
    points = ops.reshape(ops.cast(coordinates, "float32"), (batch_size, -1, spatial_dims))
    sample_offsets = ops.reshape(ops.arange(batch_size, dtype="int32") * voxels_per_sample, (-1, 1))
    upper_bounds = [ops.cast(size - 1, "int32") for size in spatial_shape]

    def gather(indices):
        """Values at integer voxel indices (one ``(B, M)`` tensor per axis), fill outside."""
        inside = None
        linear = sample_offsets
        for axis, index in enumerate(indices):
            axis_inside = ops.logical_and(index >= 0, index <= upper_bounds[axis])
            inside = axis_inside if inside is None else ops.logical_and(inside, axis_inside)
            linear = linear + ops.clip(index, 0, upper_bounds[axis]) * strides[axis]
        values = ops.take(flat_inputs, linear, axis=0)
        fill = ops.cast(fill_value, values.dtype)
        return ops.where(ops.expand_dims(inside, -1), values, fill)

    if interpolation == "nearest":
        nearest = ops.cast(ops.floor(points + 0.5), "int32")
        indices = [nearest[..., axis] for axis in range(spatial_dims)]
        return ops.reshape(gather(indices), output_shape)

    flat_inputs = ops.cast(flat_inputs, "float32")
    lower = ops.floor(points)
    fractions = points - lower
    lower = ops.cast(lower, "int32")
    result = 0.0
    for corner in itertools.product((0, 1), repeat=spatial_dims):
        weight = 1.0
        indices = []
        for axis, step in enumerate(corner):
            fraction = fractions[..., axis]
            weight = weight * (fraction if step else 1.0 - fraction)
            indices.append(lower[..., axis] + step)
        result = result + ops.expand_dims(weight, -1) * gather(indices)
    return ops.reshape(result, output_shape)


def sample_mask_at(masks, coordinates, fill_label: int = 0):
    """Sample segmentation ``masks`` at ``coordinates`` by nearest neighbour, reading label
    ``fill_label`` outside the grid, as :func:`sample_at` does for images.

    A label map (one channel) reads ``fill_label`` there. A one-hot mask (several channels
    summing to 1 at every voxel of the sample: ``keras.utils.to_categorical`` of a label
    map) reads the one-hot vector of ``fill_label``, background, not all-zero channels: a
    voxel of no class at all, which a softmax loss with one-hot targets counts as nothing
    and a Dice over channels as missing background. Other multi-channel masks (overlapping
    regions, one sigmoid channel per structure, or all-zero voxels already) read 0 in every
    channel: outside is no structure.

    Args:
        masks: ``(B, *spatial, C)`` tensor.
        coordinates: as for :func:`sample_at`.
        fill_label: label read outside the grid; for one-hot masks, the channel set to 1
            (``0 <= fill_label < C``).

    Returns:
        ``(B, *out_spatial, C)`` tensor of ``masks``' dtype.
    """
    channels = masks.shape[-1]
    if channels is None or channels == 1:
        return sample_at(masks, coordinates, "nearest", fill_label)
    if not 0 <= fill_label < channels:
        raise ValueError(
            f"mask_fill_value {fill_label} is not a channel of the {channels}-channel "
            f"(one-hot) masks; expected 0..{channels - 1}"
        )
    sampled = sample_at(masks, coordinates, "nearest", 0)
    inside = sample_at(ops.ones_like(masks[..., :1], "float32"), coordinates, "nearest", 0)
    rank = len(masks.shape)
    sums = ops.sum(ops.cast(masks, "float32"), axis=-1)
    one_hot = ops.all(ops.abs(sums - 1.0) < 1e-6, axis=tuple(range(1, rank - 1)))
    background = ops.cast(ops.one_hot(fill_label, channels), masks.dtype)
    fill = ops.where(
        ops.reshape(one_hot, (-1,) + (1,) * (rank - 1)), background, ops.zeros_like(background)
    )
    return ops.where(inside > 0.5, sampled, fill)
