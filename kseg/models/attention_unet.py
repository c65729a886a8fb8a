"""Attention U-Net (Oktay et al., 2018): a U-Net whose skips pass through attention gates."""

from __future__ import annotations

import keras

from kseg.models._building_blocks import (
    check_divisible,
    check_dropout,
    check_int,
    check_upsampling,
    conv_block,
    max_pool,
    resolve_activation,
    resolve_spatial_dims,
    segmentation_head,
    upsample,
)
from kseg.models.attention_gate import AttentionGate
from kseg.models.segmentation_model import SegmentationModel


def attention_unet(
    input_shape=(None, None, 1),
    num_classes: int = 1,
    *,
    depth: int = 4,
    base_filters: int = 32,
    upsampling: str = "transpose",
    dropout: float = 0.0,
    batch_norm: bool = True,
    activation="auto",
    spatial_dims: int | None = None,
    name: str = "attention_unet",
) -> keras.Model:
    """Build an Attention U-Net.

    The U-Net of :func:`kseg.models.unet` in which every skip connection is multiplied by
    the coefficients of an :class:`~kseg.models.attention_gate.AttentionGate` driven by the
    up-sampled decoder feature, so the decoder suppresses skip activations outside the
    organ it is segmenting. The gate at level ``i`` projects to ``base_filters * 2**i // 2``
    channels (F_int, as in MONAI).

    Args:
        input_shape: ``(H, W, C)`` or ``(D, H, W, C)``; spatial sizes may be ``None``.
            Known sizes must be divisible by ``2**depth``.
        num_classes: output channels.
        depth: number of down-sampling steps.
        base_filters: channels at full resolution.
        upsampling: ``"transpose"`` or ``"resize"`` (see :func:`kseg.models.unet`).
        dropout: dropout rate at the bottleneck (Monte-Carlo capable); 0 leaves it out.
        batch_norm: batch norm after every convolution of the conv blocks.
        activation: ``"auto"``, ``"sigmoid"``, ``"softmax"`` or ``None`` for logits.
        spatial_dims: 2 or 3; ``None`` reads it off ``input_shape``.
        name: model name.

    Returns:
        A functional :class:`SegmentationModel` (input checked) mapping ``(batch, *spatial, C)`` to
        ``(batch, *spatial, num_classes)``.

    Example:
        >>> model = attention_unet((64, 64, 64, 1), num_classes=2, depth=3, base_filters=8)
        >>> model.output_shape
        (None, 64, 64, 64, 2)

    Reference:
        Oktay O. et al., "Attention U-Net: Learning Where to Look for the Pancreas",
        MIDL 2018, https://arxiv.org/abs/1804.03999
    """
    input_shape, spatial_dims = resolve_spatial_dims(input_shape, spatial_dims)
    num_classes = check_int("num_classes", num_classes, 1)
    depth = check_int("depth", depth, 1)
    base_filters = check_int("base_filters", base_filters, 1)
    upsampling = check_upsampling(upsampling)
    dropout = check_dropout("dropout", dropout)
    activation = resolve_activation(activation, num_classes)
    check_divisible(input_shape, depth)

    inputs = keras.Input(shape=input_shape, name="image")
    x = inputs
    skips = []
    for level in range(depth):
        x = conv_block(x, base_filters * 2**level, spatial_dims, batch_norm, f"encoder{level}")
        skips.append(x)
        x = max_pool(x, spatial_dims, f"encoder{level}_pool")
    x = conv_block(x, base_filters * 2**depth, spatial_dims, batch_norm, "bottleneck")
    if dropout:
        x = keras.layers.Dropout(dropout, name="bottleneck_dropout")(x)
    for level in reversed(range(depth)):
        filters = base_filters * 2**level
        x = upsample(x, filters, spatial_dims, upsampling, f"decoder{level}_up")
        gate = AttentionGate(max(1, filters // 2), spatial_dims, name=f"decoder{level}_gate")
        gated_skip = gate(skips[level], x)
        x = keras.layers.Concatenate(name=f"decoder{level}_concat")([gated_skip, x])
        x = conv_block(x, filters, spatial_dims, batch_norm, f"decoder{level}")
    outputs = segmentation_head(x, num_classes, activation, spatial_dims, "segmentation")
    return SegmentationModel(inputs, outputs, name=name, size_divisor=2**depth)
