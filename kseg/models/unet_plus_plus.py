"""U-Net++ (Zhou et al., 2018): nested, densely connected skip pathways."""

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
from kseg.models.segmentation_model import SegmentationModel


def unet_plus_plus(
    input_shape=(None, None, 1),
    num_classes: int = 1,
    *,
    depth: int = 4,
    base_filters: int = 32,
    upsampling: str = "transpose",
    dropout: float = 0.0,
    batch_norm: bool = True,
    deep_supervision: bool = False,
    activation="auto",
    spatial_dims: int | None = None,
    name: str = "unet_plus_plus",
) -> keras.Model:
    """Build a U-Net++.

    Node ``X[i, j]`` (level ``i``, ``j`` steps along the skip pathway) is a conv block with
    ``base_filters * 2**i`` channels over the concatenation of ``X[i, 0..j-1]`` and the
    up-sampled ``X[i+1, j-1]``; ``X[i, 0]`` is the encoder. The full-resolution nodes
    ``X[0, 1..depth]`` are each a U-Net of a different depth, which is what deep
    supervision trains and what pruning at inference exploits.

    Args:
        input_shape: ``(H, W, C)`` or ``(D, H, W, C)``; spatial sizes may be ``None``.
            Known sizes must be divisible by ``2**depth``.
        num_classes: output channels of every head.
        depth: number of down-sampling steps (4 in the paper).
        base_filters: channels at full resolution (32 in the paper).
        upsampling: ``"transpose"`` or ``"resize"`` (see :func:`kseg.models.unet`).
        dropout: dropout rate after the deepest encoder node (Monte-Carlo capable);
            0 leaves it out.
        batch_norm: batch norm after every convolution.
        deep_supervision: when True the model has ``depth`` outputs, the heads on
            ``X[0, 1]``, ..., ``X[0, depth]`` in that order (shallowest first, the full
            model last), named ``segmentation_1`` ... ``segmentation_<depth>``; when False a
            single output on ``X[0, depth]``.
        activation: ``"auto"``, ``"sigmoid"``, ``"softmax"`` or ``None`` for logits.
        spatial_dims: 2 or 3; ``None`` reads it off ``input_shape``.
        name: model name.

    Returns:
        A functional :class:`SegmentationModel` (input checked); each output has shape
        ``(batch, *spatial, num_classes)``.

    Example:
        >>> model = unet_plus_plus((96, 96, 1), depth=3, base_filters=16,
        ...                        deep_supervision=True)
        >>> model.output_shape
        [(None, 96, 96, 1), (None, 96, 96, 1), (None, 96, 96, 1)]

    Reference:
        Zhou Z., Rahman Siddiquee M. M., Tajbakhsh N., Liang J., "UNet++: A Nested U-Net
        Architecture for Medical Image Segmentation", DLMIA 2018,
        https://arxiv.org/abs/1807.10165
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
    # nodes[i][j] is X[i, j].
    nodes = [[] for _ in range(depth + 1)]
    x = inputs
    for level in range(depth + 1):
        if level:
            x = max_pool(nodes[level - 1][0], spatial_dims, f"x{level - 1}_0_pool")
        x = conv_block(x, base_filters * 2**level, spatial_dims, batch_norm, f"x{level}_0")
        if level == depth and dropout:
            x = keras.layers.Dropout(dropout, name=f"x{level}_0_dropout")(x)
        nodes[level].append(x)
    for step in range(1, depth + 1):
        for level in range(depth - step + 1):
            filters = base_filters * 2**level
            node_name = f"x{level}_{step}"
            deeper = upsample(
                nodes[level + 1][step - 1], filters, spatial_dims, upsampling, f"{node_name}_up"
            )
            merged = keras.layers.Concatenate(name=f"{node_name}_concat")(
                nodes[level][:step] + [deeper]
            )
            nodes[level].append(conv_block(merged, filters, spatial_dims, batch_norm, node_name))

    if not deep_supervision:
        outputs = segmentation_head(
            nodes[0][depth], num_classes, activation, spatial_dims, "segmentation"
        )
        return SegmentationModel(inputs, outputs, name=name, size_divisor=2**depth)
    outputs = [
        segmentation_head(
            nodes[0][step], num_classes, activation, spatial_dims, f"segmentation_{step}"
        )
        for step in range(1, depth + 1)
    ]
    return SegmentationModel(inputs, outputs, name=name, size_divisor=2**depth)
