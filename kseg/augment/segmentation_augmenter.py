"""One serialisable layer running a list of joint augmentations, and kseg's default list."""

from __future__ import annotations

import keras
from keras import ops

from kseg.augment._base import IMAGES, MASKS, check_spatial_dims
from kseg.augment.random_affine import RandomAffine
from kseg.augment.random_axis_flip import RandomAxisFlip
from kseg.augment.random_contrast import RandomContrast
from kseg.augment.random_elastic_deformation import RandomElasticDeformation
from kseg.augment.random_gaussian_blur import RandomGaussianBlur
from kseg.augment.random_gaussian_noise import RandomGaussianNoise
from kseg.augment.random_rotate90 import RandomRotate90


@keras.saving.register_keras_serializable(package="kseg")
class SegmentationAugmenter(keras.layers.Layer):
    """Runs augmentation layers in order on ``{"images": ..., "segmentation_masks": ...}``.

    Each layer receives a fresh dict (Keras' own preprocessing layers write their results
    into the dict they are given), images are cast to float32 on the way in and masks are
    cast back to the dtype they came with (``keras.layers.RandomFlip`` returns masks as
    floats). With ``training=False`` the batch passes through untouched.

    Args:
        layers: augmentation layers, each taking and returning that dict: kseg's joint
            layers, or Keras' ``RandomFlip`` / ``RandomRotation`` / ``RandomZoom`` /
            ``RandomTranslation`` and any intensity layer that leaves masks alone.
        **kwargs: standard ``keras.layers.Layer`` arguments.

    Example:
        >>> augmenter = SegmentationAugmenter([RandomAxisFlip(2), RandomGaussianNoise()])
        >>> out = augmenter({"images": keras.ops.zeros((2, 32, 32, 1)),
        ...                  "segmentation_masks": keras.ops.zeros((2, 32, 32, 1), "uint8")})
    """

    def __init__(self, layers, **kwargs):
        super().__init__(**kwargs)
        layers = [
            keras.saving.deserialize_keras_object(layer) if isinstance(layer, dict) else layer
            for layer in layers
        ]
        for layer in layers:
            if not isinstance(layer, keras.layers.Layer):
                raise ValueError(f"layers must be keras.layers.Layer instances, got {layer!r}")
        self.augmentation_layers = layers

    def build(self, input_shape):
        # The layers hold no weights, only seed state; building them up front spares
        # Keras' unbuilt-state warning when the first call is an inference pass.
        for layer in self.augmentation_layers:
            if not layer.built:
                layer.build(input_shape)
        self.built = True

    def call(self, inputs, training=True):
        if not isinstance(inputs, dict) or IMAGES not in inputs:
            raise ValueError(
                f'{self.name} takes a dict {{"images": ..., "segmentation_masks": ...}}, '
                f"got {type(inputs).__name__}"
            )
        data = dict(inputs)
        data[IMAGES] = ops.convert_to_tensor(data[IMAGES])
        self._check_intensity_scale(data[IMAGES].dtype)
        data[IMAGES] = ops.cast(data[IMAGES], "float32")
        mask_dtype = None
        if MASKS in data:
            data[MASKS] = ops.convert_to_tensor(data[MASKS])
            mask_dtype = data[MASKS].dtype
        if not training:
            return data
        for layer in self.augmentation_layers:
            data = dict(layer(dict(data), training=True))
        if mask_dtype is not None:
            data[MASKS] = ops.cast(data[MASKS], mask_dtype)
        return data

    def _check_intensity_scale(self, dtype) -> None:
        """Integer images (8-bit PNGs, stored CT values) through a layer that clips to an
        intensity range would come out as that range's ends: the noise layer's default
        [0, 1] turned every sample it drew into a black-and-white image, silently. The
        dtype is known when the step is traced, so this refuses before training."""
        dtype = keras.backend.standardize_dtype(dtype)
        if "int" not in dtype:
            return
        for layer in self.augmentation_layers:
            clip = getattr(layer, "clip", None)
            if clip is not None:
                raise ValueError(
                    f"{self.name}: images of dtype {dtype}, but {layer.name} clips "
                    f"intensities to {list(clip)}: scale them first (a CT window with "
                    "kseg.data.pipeline.window, 8-bit images divided by 255) or give the "
                    "layer clip=None"
                )

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "layers": [
                    keras.saving.serialize_keras_object(layer) for layer in self.augmentation_layers
                ]
            }
        )
        return config


def _seeded(seed, index):
    return None if seed is None else seed + index


def default_spatial_layers(spatial_dims: int, seed=None, class_names=None) -> list:
    """kseg's default spatial augmentations for ``spatial_dims`` (see segmentation_augmenter);
    with left / right ``class_names``, none that mirrors or turns the left-right axis."""
    from kseg.plan import rule_mirror_axes

    lateral = spatial_dims - 1 not in rule_mirror_axes(spatial_dims, class_names)
    if spatial_dims == 2:
        flips = [keras.layers.RandomFlip("vertical", seed=_seeded(seed, 1))]
        if not lateral:
            flips.insert(0, keras.layers.RandomFlip("horizontal", seed=_seeded(seed, 0)))
        return [
            *flips,
            RandomAffine(
                2, rotation=15.0, scale=(0.85, 1.15), probability=0.5, seed=_seeded(seed, 2)
            ),
            RandomElasticDeformation(
                2, control_points=5, max_displacement=0.05, probability=0.2, seed=_seeded(seed, 3)
            ),
        ]
    if lateral:
        turns = []
        flip = RandomAxisFlip(3, axes=(0, 1), probability=0.5, seed=_seeded(seed, 0))
    else:
        turns = [RandomRotate90(3, axes=(1, 2), probability=0.5, seed=_seeded(seed, 1))]
        flip = RandomAxisFlip(3, probability=0.5, seed=_seeded(seed, 0))
    return [
        flip,
        *turns,
        RandomAffine(
            3, rotation=(15.0, 5.0, 5.0), scale=(0.9, 1.1), probability=0.3, seed=_seeded(seed, 2)
        ),
    ]


def default_intensity_layers(spatial_dims: int, seed=None) -> list:
    """kseg's default intensity augmentations (see segmentation_augmenter)."""
    return [
        RandomGaussianNoise(
            0.5,
            stddev=(0.01, 0.05),
            clip=(0.0, 1.0),
            spatial_dims=spatial_dims,
            seed=_seeded(seed, 10),
        ),
        RandomContrast(0.5, factor=(0.8, 1.5), spatial_dims=spatial_dims, seed=_seeded(seed, 11)),
        RandomGaussianBlur(
            0.3, sigma=(0.4, 0.8), spatial_dims=spatial_dims, seed=_seeded(seed, 12)
        ),
    ]


def segmentation_augmenter(
    spatial_dims: int = 2, spatial=True, intensity=True, seed=None, class_names=None
):
    """Build the default joint augmentation for 2D slices or 3D patches as one layer.

    Spatial (image and mask together, masks by nearest neighbour):

    - 2D: ``keras.layers.RandomFlip("horizontal")`` and ``RandomFlip("vertical")`` (each
      p = 0.5 per sample), ``RandomAffine`` (p = 0.5: rotation ±15°, scale 0.85-1.15),
      ``RandomElasticDeformation`` (p = 0.2, control-point displacement up to 5 % of the
      side).
    - 3D: ``RandomAxisFlip`` on every axis (p = 0.5 each), ``RandomRotate90`` in the
      in-plane (H, W) axes (p = 0.5, needs square patches), ``RandomAffine`` (p = 0.3:
      ±15° in-plane, ±5° out of plane, scale 0.9-1.1).

    Intensity (images only, masks bit-identical): ``RandomGaussianNoise`` (p = 0.5,
    sigma in [0.01, 0.05], clipped to [0, 1]), ``RandomContrast`` (p = 0.5, factor in
    [0.8, 1.5] about the mean), ``RandomGaussianBlur`` (p = 0.3, sigma in [0.4, 0.8] voxels).
    The noise clip and the [0, 1] fill values assume windowed CT (``kseg.data.pipeline.window``);
    for z-normalised MR pass your own intensity list.

    Every layer compiles under XLA, so the result can run in ``tf.data``
    (``segmentation_dataset(..., augment=augmenter)``) or inside a jit-compiled train step
    (``AugmentedModel``).

    Args:
        spatial_dims: 2 (``(B, H, W, C)``) or 3 (``(B, D, H, W, C)``).
        spatial: ``True`` for the defaults above, ``False`` for none, or a list of layers.
        intensity: ``True`` for the defaults above, ``False`` for none, or a list of layers.
        seed: int; each default layer is seeded with ``seed + i`` so runs repeat. ``None``
            draws fresh randomness.
        class_names: the classes, channel order. When one says "left" or "right" (LCTSC's
            ``lung_left`` / ``lung_right``), the default spatial layers leave out what
            mirrors or turns the left-right (last spatial) axis: the horizontal flip in 2D,
            the flip of the last axis and the quarter turns in 3D; a mirrored copy would
            teach the model those labels swapped (:func:`kseg.plan.rule_mirror_axes`, as
            the recipes' plans mirror). ``None``: every default layer.

    Returns:
        A ``SegmentationAugmenter`` taking and returning
        ``{"images": float32, "segmentation_masks": any dtype}``.

    Example:
        >>> augmenter = segmentation_augmenter(spatial_dims=2, seed=42)
        >>> batch = {"images": keras.ops.zeros((8, 128, 128, 1)),
        ...          "segmentation_masks": keras.ops.zeros((8, 128, 128, 1), "int32")}
        >>> augmented = augmenter(batch, training=True)

    Reference:
        Isensee F. et al., "nnU-Net: a self-configuring method for deep learning-based
        biomedical image segmentation", Nature Methods 18, 203-211 (2021) (the augmentation
        recipe these defaults follow in kind).
    """
    spatial_dims = check_spatial_dims(spatial_dims)
    layers = []
    for name, choice, defaults in (
        ("spatial", spatial, lambda: default_spatial_layers(spatial_dims, seed, class_names)),
        ("intensity", intensity, lambda: default_intensity_layers(spatial_dims, seed)),
    ):
        if choice is True:
            layers.extend(defaults())
        elif choice is False or choice is None:
            continue
        elif isinstance(choice, list | tuple):
            layers.extend(choice)
        else:
            raise ValueError(f"{name} must be True, False or a list of layers, got {choice!r}")
    return SegmentationAugmenter(layers)
