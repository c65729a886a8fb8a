"""Argument checks and layer stacks shared by the kseg model builders.

Every builder takes the same ``input_shape`` / ``spatial_dims`` / ``num_classes`` /
``activation`` arguments; checking them here keeps the error messages identical across
models. The layer stacks are plain functions over functional-API tensors, so the models
they build stay functional and reload from ``.keras`` files without ``custom_objects``.
"""

from __future__ import annotations

import numbers

import keras

from kseg.models import dilated_conv
from kseg.models.normalization import BatchNormalization as FusedBatchNormalization

_CONV = {2: keras.layers.Conv2D, 3: keras.layers.Conv3D}
_CONV_TRANSPOSE = {2: keras.layers.Conv2DTranspose, 3: keras.layers.Conv3DTranspose}
_MAX_POOLING = {2: keras.layers.MaxPooling2D, 3: keras.layers.MaxPooling3D}
_UP_SAMPLING = {2: keras.layers.UpSampling2D, 3: keras.layers.UpSampling3D}

# PyTorch's default (momentum 0.1 there), which MONAI and nnU-Net reference models train
# with. Keras' 0.99 keeps ~10 % of the initial variance of 1 after 230 steps, so a model
# trained for a few hundred steps on the CPU scores near zero in inference mode while its
# training-mode Dice is high.
BATCH_NORM_MOMENTUM = 0.9

UPSAMPLING_MODES = ("transpose", "resize")
ACTIVATIONS = ("auto", "sigmoid", "softmax", None)


def batch_normalization(name: str, **kwargs) -> keras.layers.BatchNormalization:
    """Batch normalisation with kseg's momentum (see ``BATCH_NORM_MOMENTUM``), run by
    TensorFlow's fused kernel where it applies (:class:`FusedBatchNormalization`)."""
    return FusedBatchNormalization(momentum=BATCH_NORM_MOMENTUM, name=name, **kwargs)


def check_int(name: str, value, minimum: int) -> int:
    """``value`` as an int, or a ValueError naming ``name`` when it is not an int >= minimum.

    NumPy integers pass (hyperparameter searches often hand them over); bools do not.
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def check_dropout(name: str, value) -> float:
    """A dropout rate in [0, 1), or a ValueError naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0 <= value < 1:
        raise ValueError(f"{name} must be a rate in [0, 1), got {value!r}")
    return float(value)


def check_spatial_dims(spatial_dims) -> int:
    if isinstance(spatial_dims, bool) or spatial_dims not in (2, 3):
        raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims!r}")
    return int(spatial_dims)


def resolve_spatial_dims(input_shape, spatial_dims) -> tuple[tuple, int]:
    """Check ``input_shape`` (spatial sizes then channels) and work out ``spatial_dims``.

    Returns:
        ``(input_shape as a tuple, spatial_dims)``. ``spatial_dims=None`` is read off the
        length of ``input_shape``; an explicit value must agree with it.
    """
    try:
        shape = tuple(input_shape)
    except TypeError:
        raise ValueError(
            f"input_shape must be a tuple (spatial sizes..., channels), got {input_shape!r}"
        ) from None
    inferred = len(shape) - 1
    if spatial_dims is None:
        if inferred not in (2, 3):
            raise ValueError(
                "input_shape must have 3 entries (H, W, C) for 2D or 4 (D, H, W, C) for 3D, "
                f"got {shape!r}"
            )
        spatial_dims = inferred
    check_spatial_dims(spatial_dims)
    if inferred != spatial_dims:
        raise ValueError(
            f"input_shape {shape!r} has {inferred} spatial axes but spatial_dims={spatial_dims}"
        )
    for axis, size in enumerate(shape[:-1]):
        if size is not None:
            check_int(f"input_shape[{axis}]", size, 1)
    check_int("input_shape[-1] (channels)", shape[-1], 1)
    return shape, spatial_dims


def check_divisible(input_shape: tuple, depth: int) -> None:
    """Known spatial sizes must halve cleanly ``depth`` times so skips line up."""
    factor = 2**depth
    for axis, size in enumerate(input_shape[:-1]):
        if size is not None and size % factor:
            raise ValueError(
                f"input_shape[{axis}]={size} must be divisible by 2**depth={factor} "
                f"(depth={depth}); pad or crop the input, or lower depth"
            )


def check_choice(name: str, value, choices: tuple):
    """``value`` when it is one of ``choices``, or a ValueError naming ``name``."""
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")
    return value


def resolve_activation(activation, num_classes: int) -> str | None:
    """The head's activation: ``"auto"`` is sigmoid for one class and softmax for several."""
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")
    if activation == "auto":
        return "sigmoid" if num_classes == 1 else "softmax"
    if activation == "softmax" and num_classes == 1:
        raise ValueError(
            "activation='softmax' with num_classes=1 always outputs 1; use 'sigmoid' for one "
            "foreground class or num_classes=2 for background + foreground"
        )
    return activation


def conv(spatial_dims: int, filters: int, kernel_size: int, name: str, **kwargs):
    """A "same"-padded convolution; a dilated 3D one is kseg's
    :class:`kseg.models.dilated_conv.Conv3D`, which skips Keras' space-to-batch rewrite of
    the dilation where oneDNN allows (its variables are Conv3D's, so models saved with the
    stock layer load unchanged)."""
    layer = _CONV[spatial_dims]
    if spatial_dims == 3 and kwargs.get("dilation_rate", 1) > 1:
        layer = dilated_conv.Conv3D
    return layer(filters, kernel_size, padding="same", name=name, **kwargs)


def conv_block(x, filters: int, spatial_dims: int, batch_norm: bool, name: str):
    """Two (3x3 convolution, batch norm, ReLU) layers, the unit of every U-Net level.

    The convolutions drop their bias when batch norm follows, since its shift replaces it.
    """
    for index in (1, 2):
        x = conv(spatial_dims, filters, 3, f"{name}_conv{index}", use_bias=not batch_norm)(x)
        if batch_norm:
            x = batch_normalization(f"{name}_bn{index}")(x)
        x = keras.layers.ReLU(name=f"{name}_relu{index}")(x)
    return x


def max_pool(x, spatial_dims: int, name: str):
    return _MAX_POOLING[spatial_dims](pool_size=2, name=name)(x)


def upsample(x, filters: int, spatial_dims: int, mode: str, name: str):
    """Double the spatial size and map to ``filters`` channels.

    ``"transpose"``: a 2x2(x2) transposed convolution with stride 2 (Ronneberger et al.'s
    "up-convolution"). ``"resize"``: nearest-neighbour up-sampling followed by a 3x3(x3)
    convolution, which avoids the checkerboard artefacts of transposed convolutions
    (Odena et al., 2016, https://distill.pub/2016/deconv-checkerboard/).
    """
    if mode == "transpose":
        return _CONV_TRANSPOSE[spatial_dims](filters, 2, strides=2, padding="same", name=name)(x)
    x = _UP_SAMPLING[spatial_dims](size=2, name=f"{name}_resize")(x)
    return conv(spatial_dims, filters, 3, f"{name}_conv")(x)


def segmentation_head(x, num_classes: int, activation: str | None, spatial_dims: int, name: str):
    """1x1(x1) convolution to ``num_classes`` channels, then the output activation.

    The activation runs in float32 so that a mixed-precision model still returns
    probabilities that sum to one (and logits that do not overflow float16).
    """
    x = conv(spatial_dims, num_classes, 1, f"{name}_conv")(x)
    return keras.layers.Activation(activation or "linear", dtype="float32", name=name)(x)
