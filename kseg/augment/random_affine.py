"""Random rotation, scaling and translation of images and masks, for 2D and 3D."""

from __future__ import annotations

import math

import keras
from keras import ops

from kseg.augment._base import JointAugmentation, check_per_axis, check_range
from kseg.augment.resample import INTERPOLATIONS, sample_at, sample_mask_at, voxel_grid

# Rotation planes as pairs of spatial axes: 2D has one; in 3D the first is the in-plane
# (H, W) rotation of an axial volume, then the two out-of-plane tilts.
ROTATION_PLANES = {2: ((0, 1),), 3: ((1, 2), (0, 2), (0, 1))}


def _plane_rotation(angles, plane, spatial_dims: int):
    """``(B, D, D)`` rotation matrices by ``angles`` (radians, ``(B,)``) in ``plane``."""
    first, second = plane

    def unit(row, column):
        return [
            [float(r == row and c == column) for c in range(spatial_dims)]
            for r in range(spatial_dims)
        ]

    identity = ops.eye(spatial_dims)
    diagonal = ops.convert_to_tensor(unit(first, first)) + ops.convert_to_tensor(
        unit(second, second)
    )
    skew = ops.convert_to_tensor(unit(second, first)) - ops.convert_to_tensor(unit(first, second))
    cosines = ops.reshape(ops.cos(angles), (-1, 1, 1))
    sines = ops.reshape(ops.sin(angles), (-1, 1, 1))
    return identity + (cosines - 1.0) * diagonal + sines * skew


@keras.saving.register_keras_serializable(package="kseg")
class RandomAffine(JointAugmentation):
    """Rotates, scales and shifts a sample about its centre in one resampling step.

    Each transformed sample draws an angle per rotation plane in ``[-r, r]`` degrees, one
    isotropic scale in ``scale`` (``> 1`` enlarges the content) and a shift per axis in
    ``[-t, t]`` times the axis length. Images are resampled bilinearly (2D) or trilinearly
    (3D), masks by nearest neighbour, both through the same coordinate map; voxels mapped
    from outside the grid read ``fill_value`` (images) and ``mask_fill_value`` (masks).
    Angles are in voxel index space: resample anisotropic volumes to isotropic spacing first,
    or keep the out-of-plane angles small. Unlike ``keras.layers.RandomRotation`` /
    ``RandomZoom`` / ``RandomTranslation`` (TensorFlow's ``ImageProjectiveTransformV3``, no XLA
    kernel) this layer compiles under XLA and works in 3D.

    Args:
        spatial_dims: 2 or 3.
        rotation: largest angle in degrees; one number for every plane or one per plane
            (2D: one plane; 3D: ``(in-plane H-W, D-W, D-H)``).
        scale: ``(low, high)`` range of the isotropic scale factor, both > 0.
        translation: largest shift as a fraction of the axis length, one number or one per
            spatial axis.
        probability: chance that a sample is transformed.
        interpolation: ``"linear"`` or ``"nearest"`` for images (masks are always nearest).
        fill_value: image value outside the original grid (0 is the bottom of a [0, 1] CT
            window).
        mask_fill_value: mask label outside the original grid (background); a one-hot
            mask (several channels) reads that channel set to 1, other multi-channel
            masks 0 (see ``kseg.augment.resample.sample_mask_at``).
        seed: int seed, or ``None``.
        **kwargs: standard ``keras.layers.Layer`` arguments.

    Example:
        >>> affine = RandomAffine(spatial_dims=2, rotation=15, scale=(0.85, 1.15), seed=0)
        >>> batch = {"images": keras.ops.zeros((4, 64, 64, 1)),
        ...          "segmentation_masks": keras.ops.zeros((4, 64, 64, 1), "int32")}
        >>> augmented = affine(batch)

    Reference:
        Isensee F. et al., "nnU-Net: a self-configuring method for deep learning-based
        biomedical image segmentation", Nature Methods 18, 203-211 (2021) (rotation and
        scaling augmentation in one spatial transform).
    """

    def __init__(
        self,
        spatial_dims: int = 2,
        rotation=15.0,
        scale=(0.85, 1.15),
        translation=0.0,
        probability: float = 0.5,
        interpolation: str = "linear",
        fill_value: float = 0.0,
        mask_fill_value: int = 0,
        seed=None,
        **kwargs,
    ):
        super().__init__(spatial_dims=spatial_dims, probability=probability, seed=seed, **kwargs)
        planes = ROTATION_PLANES[self.spatial_dims]
        self.rotation = check_per_axis("rotation", rotation, len(planes))
        self.scale = check_range("scale", scale)
        if self.scale[0] <= 0:
            raise ValueError(f"scale must be positive, got {scale!r}")
        self.translation = check_per_axis("translation", translation, self.spatial_dims)
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

        matrix = ops.broadcast_to(ops.eye(spatial_dims), (batch_size, spatial_dims, spatial_dims))
        for plane, largest in zip(ROTATION_PLANES[spatial_dims], self.rotation, strict=True):
            if largest > 0:
                angles = self.uniform((batch_size,), -largest, largest) * (math.pi / 180.0)
                angles = ops.where(applies, angles, 0.0)
                matrix = ops.matmul(matrix, _plane_rotation(angles, plane, spatial_dims))
        scales = ops.where(applies, self.uniform((batch_size,), *self.scale), 1.0)
        matrix = matrix / ops.reshape(scales, (-1, 1, 1))

        sizes = ops.cast(ops.stack(spatial_shape), "float32")
        shifts = self.uniform((batch_size, spatial_dims), -1.0, 1.0)
        shifts = shifts * ops.convert_to_tensor(self.translation) * sizes
        shifts = ops.where(ops.expand_dims(applies, -1), shifts, 0.0)

        center = (sizes - 1.0) / 2.0
        grid = ops.reshape(voxel_grid(spatial_shape), (-1, spatial_dims)) - center
        coordinates = ops.einsum("bij,nj->bni", matrix, grid)
        coordinates = coordinates + center + ops.expand_dims(shifts, 1)
        coordinates = ops.reshape(
            coordinates, (batch_size,) + tuple(spatial_shape) + (spatial_dims,)
        )
        transformed = sample_at(images, coordinates, self.interpolation, self.fill_value)
        images = ops.cast(transformed, images.dtype)
        if masks is not None:
            masks = sample_mask_at(masks, coordinates, self.mask_fill_value)
        return images, masks

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "rotation": list(self.rotation),
                "scale": list(self.scale),
                "translation": list(self.translation),
                "interpolation": self.interpolation,
                "fill_value": self.fill_value,
                "mask_fill_value": self.mask_fill_value,
            }
        )
        return config
