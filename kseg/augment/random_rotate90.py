"""Random rotations by multiples of 90° in one plane, for 2D and 3D."""

from __future__ import annotations

import keras
from keras import ops

from kseg.augment._base import JointAugmentation, check_axes, per_sample


@keras.saving.register_keras_serializable(package="kseg")
class RandomRotate90(JointAugmentation):
    """Rotates a sample by 90°, 180° or 270° (equally likely) in the plane ``axes``.

    Rotation by quarter turns moves voxels exactly (no interpolation), so image and mask stay
    bit-exact. A sample's plane must be square, since a quarter turn swaps its two sizes and a
    batch holds one shape.

    Args:
        spatial_dims: 2 or 3.
        axes: the two spatial axes spanning the rotation plane (0-based, batch excluded);
            defaults to the last two (the in-plane axes of an axial ``(D, H, W)`` volume).
            A quarter turn goes from the first axis towards the second, as ``numpy.rot90``.
        probability: chance that a sample is rotated at all.
        seed: int seed, or ``None``.
        **kwargs: standard ``keras.layers.Layer`` arguments.

    Example:
        >>> rotate = RandomRotate90(spatial_dims=3, probability=0.5, seed=0)
        >>> rotated = rotate(keras.ops.zeros((2, 4, 8, 8, 1)))
    """

    def __init__(
        self, spatial_dims: int = 2, axes=None, probability: float = 0.5, seed=None, **kwargs
    ):
        super().__init__(spatial_dims=spatial_dims, probability=probability, seed=seed, **kwargs)
        default_axes = (self.spatial_dims - 2, self.spatial_dims - 1)
        self.axes = check_axes("axes", default_axes if axes is None else axes, self.spatial_dims)
        if len(self.axes) != 2:
            raise ValueError(f"axes must name exactly two spatial axes, got {axes!r}")

    def transform(self, images, masks):
        first, second = (axis + 1 for axis in self.axes)
        sizes = (images.shape[first], images.shape[second])
        if None in sizes or sizes[0] != sizes[1]:
            raise ValueError(
                f"{self.name}: the rotation plane (axes {self.axes}) must be square with a known "
                f"size, got images of shape {tuple(images.shape)}"
            )
        rank = len(images.shape)
        batch_size = ops.shape(images)[0]
        applies = self.sample_applies(batch_size)
        # k in {1, 2, 3} for the samples that rotate, 0 for the rest.
        quarter_turns = ops.minimum(ops.floor(self.uniform((batch_size,), 1.0, 4.0)), 3.0)
        quarter_turns = ops.cast(quarter_turns, "int32")
        quarter_turns = per_sample(ops.where(applies, quarter_turns, 0), rank)

        def rotate(tensor):
            result = tensor
            for k in (1, 2, 3):
                turned = ops.rot90(tensor, k=k, axes=(first, second))
                result = ops.where(quarter_turns == k, turned, result)
            return result

        return rotate(images), None if masks is None else rotate(masks)

    def get_config(self):
        config = super().get_config()
        config.update({"axes": list(self.axes)})
        return config
