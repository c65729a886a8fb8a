"""HighResNet (Li et al., 2017): a compact, full-resolution network of dilated residual units."""

from __future__ import annotations

import keras

from kseg.models._building_blocks import (
    batch_normalization,
    check_dropout,
    check_int,
    conv,
    resolve_activation,
    resolve_spatial_dims,
    segmentation_head,
)
from kseg.models.residual_unit import ResidualUnit
from kseg.models.segmentation_model import SegmentationModel

# (filters, dilation) of the three stages, each of BLOCKS_PER_STAGE residual units of two
# 3x3(x3) convolutions (Li et al., 2017; NiftyNet and MONAI use the same list).
STAGES = ((16, 1), (32, 2), (64, 4))
BLOCKS_PER_STAGE = 3
INITIAL_FILTERS = 16
FEATURE_FILTERS = 80


def highresnet(
    input_shape=(None, None, None, 1),
    num_classes: int = 2,
    *,
    dropout: float = 0.0,
    activation="auto",
    spatial_dims: int | None = None,
    name: str = "highresnet",
) -> keras.Model:
    """Build HighResNet (HighRes3DNet, or its 2D analogue).

    A 3x3(x3) convolution with 16 filters (+ batch norm + ReLU); three stages of three
    pre-activation residual units with dilation 1, 2 and 4 and 16, 32 and 64 filters (the
    units that widen the features zero-pad the shortcut's channels, so residual
    connections add no parameters); a 1x1(x1) convolution to 80 features (+ batch norm
    + ReLU), dropout, and a 1x1(x1) convolution to the classes. Nothing down-samples, so
    the output keeps the input's resolution and the network takes any input size; its
    receptive field is ``3 + 2 * 3 * 2 * (1 + 2 + 4) = 87`` voxels along each axis.
    Convolutions that feed batch norm have no bias; the classifier has one. Li et al. use
    the dropout for Monte-Carlo sampling of voxel-wise uncertainty: it is a standard
    ``keras.layers.Dropout``, so ``model(x, training=True)`` draws samples.

    Args:
        input_shape: ``(D, H, W, C)`` or ``(H, W, C)``; spatial sizes may be ``None``.
        num_classes: output channels.
        dropout: dropout rate on the 80 features; 0 leaves the layer out.
        activation: ``"auto"`` (sigmoid for one class, softmax for several),
            ``"sigmoid"``, ``"softmax"`` or ``None`` for logits.
        spatial_dims: 2 or 3; ``None`` reads it off ``input_shape``.
        name: model name.

    Returns:
        A functional :class:`SegmentationModel` (input checked) mapping ``(batch, *spatial, C)`` to
        ``(batch, *spatial, num_classes)``.

    Example:
        >>> model = highresnet((None, None, None, 1), num_classes=160, dropout=0.5)
        >>> model.output_shape
        (None, None, None, None, 160)

    Reference:
        Li W., Wang G., Fidon L., Ourselin S., Cardoso M. J., Vercauteren T., "On the
        Compactness, Efficiency, and Representation of 3D Convolutional Networks: Brain
        Parcellation as a Pretext Task", IPMI 2017, https://arxiv.org/abs/1707.01992
    """
    input_shape, spatial_dims = resolve_spatial_dims(input_shape, spatial_dims)
    num_classes = check_int("num_classes", num_classes, 1)
    dropout = check_dropout("dropout", dropout)
    activation = resolve_activation(activation, num_classes)

    inputs = keras.Input(shape=input_shape, name="image")
    x = conv(spatial_dims, INITIAL_FILTERS, 3, "initial_conv", use_bias=False)(inputs)
    x = batch_normalization("initial_bn")(x)
    x = keras.layers.ReLU(name="initial_relu")(x)
    for stage, (filters, dilation) in enumerate(STAGES, start=1):
        for block in range(1, BLOCKS_PER_STAGE + 1):
            x = ResidualUnit(
                filters,
                spatial_dims,
                dilation_rate=dilation,
                shortcut="pad",
                name=f"stage{stage}_block{block}",
            )(x)
    x = conv(spatial_dims, FEATURE_FILTERS, 1, "features_conv", use_bias=False)(x)
    x = batch_normalization("features_bn")(x)
    x = keras.layers.ReLU(name="features_relu")(x)
    if dropout:
        x = keras.layers.Dropout(dropout, name="features_dropout")(x)
    outputs = segmentation_head(x, num_classes, activation, spatial_dims, "segmentation")
    return SegmentationModel(inputs, outputs, name=name, size_divisor=1)
