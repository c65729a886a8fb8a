"""Random smooth (B-spline) elastic deformation of images and masks, for 2D and 3D."""

from __future__ import annotations

import numbers

import keras
from keras import ops

from kseg.augment._base import JointAugmentation, check_per_axis
from kseg.augment.resample import INTERPOLATIONS, sample_at, sample_mask_at, voxel_grid


def _cubic_bspline_basis(num_samples, num_control: int):
    """``(num_samples, num_control)`` weights of a uniform cubic B-spline over the axis."""
    step = (num_control - 1) / ops.maximum(ops.cast(num_samples, "float32") - 1.0, 1.0)
    positions = ops.arange(num_samples, dtype="float32") * step
    distance = ops.abs(
        ops.expand_dims(positions, 1) - ops.expand_dims(ops.arange(num_control, dtype="float32"), 0)
    )
    near = 2.0 / 3.0 - distance**2 + distance**3 / 2.0
    far = (2.0 - distance) ** 3 / 6.0
    return ops.where(distance < 1.0, near, ops.where(distance < 2.0, far, 0.0))


@keras.saving.register_keras_serializable(package="kseg")
class RandomElasticDeformation(JointAugmentation):
    """Warps a sample by a smooth random displacement field shared by image and mask.

    Random displacements on a coarse grid of ``control_points`` per axis (the outermost
    ring held at zero, so borders stay put) are interpolated to every voxel by a cubic
    B-spline, as in TorchIO's ``RandomElasticDeformation``; images are then resampled
    (bi/trilinear) and masks by nearest neighbour through the same coordinates.

    ``keras.layers.RandomElasticTransform`` (Keras 3.15) is not used: it draws its noise from
    the layer's seed generator once for the images and again for the masks, so the two are
    warped by different fields, and its field size is a traced ``range`` that XLA rejects.

    Args:
        spatial_dims: 2 or 3.
        control_points: control points per axis (>= 3: the border ring is fixed).
        max_displacement: largest control-point displacement as a fraction of the axis
            length, one number or one per spatial axis. The B-spline smooths the field, so
            voxels move by up to about two thirds of this.
        probability: chance that a sample is deformed.
        interpolation: ``"linear"`` or ``"nearest"`` for images (masks are always nearest).
        fill_value: image value read from outside the grid.
        mask_fill_value: mask label read from outside the grid; a one-hot
            mask (several channels) reads that channel set to 1, other multi-channel
            masks 0 (see ``kseg.augment.resample.sample_mask_at``).
        seed: int seed, or ``None``.
        **kwargs: standard ``keras.layers.Layer`` arguments.

    Example:
        >>> elastic = RandomElasticDeformation(spatial_dims=2, max_displacement=0.05, seed=0)
        >>> warped = elastic(keras.ops.zeros((2, 64, 64, 1)))

    Reference:
        Simard P. Y. et al., "Best practices for convolutional neural networks applied to
        visual document analysis", ICDAR 2003 (elastic distortion);
        Pérez-García F. et al., "TorchIO", Comput. Methods Programs Biomed. 208 (2021)
        (B-spline control grid).
    """

    def __init__(
        self,
        spatial_dims: int = 2,
        control_points: int = 5,
        max_displacement=0.05,
        probability: float = 0.2,
        interpolation: str = "linear",
        fill_value: float = 0.0,
        mask_fill_value: int = 0,
        seed=None,
        **kwargs,
    ):
        super().__init__(spatial_dims=spatial_dims, probability=probability, seed=seed, **kwargs)
        if (
            isinstance(control_points, bool)
            or not isinstance(control_points, numbers.Integral)
            or (control_points < 3)
        ):
            raise ValueError(f"control_points must be an integer >= 3, got {control_points!r}")
        self.control_points = int(control_points)
        self.max_displacement = check_per_axis(
            "max_displacement", max_displacement, self.spatial_dims
        )
        if interpolation not in INTERPOLATIONS:
            raise ValueError(
                f"interpolation must be one of {INTERPOLATIONS}, got {interpolation!r}"
            )
        self.interpolation = interpolation
        self.fill_value = float(fill_value)
        self.mask_fill_value = int(mask_fill_value)

    def transform(self, images, masks):
        spatial_dims = self.spatial_dims
        shape = ops.shape(images)
        batch_size, spatial_shape = shape[0], shape[1:-1]
        applies = self.sample_applies(batch_size)

        interior = self.control_points - 2
        displacements = self.uniform(
            (batch_size,) + (interior,) * spatial_dims + (spatial_dims,), -1.0, 1.0
        )
        sizes = ops.cast(ops.stack(spatial_shape), "float32")
        displacements = displacements * ops.convert_to_tensor(self.max_displacement) * sizes
        displacements = ops.where(
            ops.reshape(applies, (-1,) + (1,) * (spatial_dims + 1)), displacements, 0.0
        )
        border = [[0, 0]] + [[1, 1]] * spatial_dims + [[0, 0]]
        displacements = ops.pad(displacements, border)

        letters = "xyz"[:spatial_dims]
        control_letters = "ijk"[:spatial_dims]
        bases = [_cubic_bspline_basis(size, self.control_points) for size in spatial_shape]
        equation = (
            f"b{control_letters}d,"
            + ",".join(f"{out}{inp}" for out, inp in zip(letters, control_letters, strict=True))
            + f"->b{letters}d"
        )
        field = ops.einsum(equation, displacements, *bases)
        coordinates = voxel_grid(spatial_shape)[None] + field

        transformed = sample_at(images, coordinates, self.interpolation, self.fill_value)
        images = ops.cast(transformed, images.dtype)
        if masks is not None:
            masks = sample_mask_at(masks, coordinates, self.mask_fill_value)
        return images, masks

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "control_points": self.control_points,
                "max_displacement": list(self.max_displacement),
                "interpolation": self.interpolation,
                "fill_value": self.fill_value,
                "mask_fill_value": self.mask_fill_value,
            }
        )
        return config
