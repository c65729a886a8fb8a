"""One encoder-decoder for the U-Net family; U-Net, Attention U-Net, Res-U-Net and U-Net++
are configurations of it.

As in MONAI's ``UNet`` (``_get_down_layer`` / ``_get_up_layer`` and ``num_res_units``), one
loop builds every variant and three hooks say what differs between the papers:

- the **block** of every node: two (convolution, batch norm, ReLU) layers, the encoder
  down-sampling by max-pooling (Ronneberger et al., 2015), or a pre-activation residual
  unit whose first convolution strides (Zhang et al., 2018);
- the **skip gate**: the encoder feature as it is, or weighted by an attention gate driven
  by the up-sampled decoder feature (Oktay et al., 2018);
- the **decoder**: one node per level (U-Net), or the nested, densely connected nodes of
  U-Net++ (Zhou et al., 2018), optionally with a head on every full-resolution node.

Every node is ``X[level, step]`` in Zhou et al.'s notation: ``X[level, 0]`` is the encoder,
U-Net's decoder is the diagonal ``X[level, depth - level]`` and U-Net++ fills the triangle
``level + step <= depth``.
"""

from __future__ import annotations

import keras

from kseg.models._building_blocks import (
    UPSAMPLING_MODES,
    check_choice,
    check_divisible,
    check_dropout,
    check_int,
    conv_block,
    max_pool,
    resolve_activation,
    resolve_spatial_dims,
    segmentation_head,
    upsample,
)
from kseg.models.attention_gate import AttentionGate
from kseg.models.residual_unit import ResidualUnit
from kseg.models.segmentation_model import SegmentationModel

BLOCKS = ("double_conv", "residual")
SKIP_GATES = ("identity", "attention")
DECODERS = ("plain", "nested")


def encoder_decoder(
    input_shape=(None, None, 1),
    num_classes: int = 1,
    *,
    depth: int = 4,
    base_filters: int = 32,
    block: str = "double_conv",
    skip_gate: str = "identity",
    decoder: str = "plain",
    deep_supervision: bool = False,
    upsampling: str = "transpose",
    dropout: float = 0.0,
    batch_norm: bool = True,
    activation="auto",
    spatial_dims: int | None = None,
    name: str = "encoder_decoder",
) -> keras.Model:
    """Build a U-Net-family encoder-decoder from its block, skip gate and decoder.

    Level ``i`` (0 = full resolution) has ``base_filters * 2**i`` channels; ``depth``
    down-sampling steps lead to the deepest encoder node. Every decoder node up-samples the
    node below it, concatenates the (gated) encoder features of its own level and applies the
    block. Convolutions are 'same'-padded, so the output grid equals the input grid.

    Args:
        input_shape: ``(H, W, C)`` or ``(D, H, W, C)``; spatial sizes may be ``None``.
            Known sizes must be divisible by ``2**depth``.
        num_classes: output channels of every head.
        depth: number of down-sampling steps.
        base_filters: channels at full resolution.
        block: ``"double_conv"`` (two 3x3(x3) convolution, batch norm, ReLU layers;
            max-pooling down-samples) or ``"residual"`` (a
            :class:`~kseg.models.residual_unit.ResidualUnit`; the first convolution of each
            encoder unit strides, and the first unit starts with its convolution on the raw
            image).
        skip_gate: ``"identity"`` or ``"attention"`` (an
            :class:`~kseg.models.attention_gate.AttentionGate` with ``filters // 2``
            intermediate channels on every skip, gated by the up-sampled decoder feature;
            plain decoder only).
        decoder: ``"plain"`` (U-Net) or ``"nested"`` (U-Net++).
        deep_supervision: nested decoder only: one head on each of ``X[0, 1..depth]``,
            shallowest first, named ``segmentation_1`` ... ``segmentation_<depth>``.
        upsampling: ``"transpose"`` (2x2(x2) transposed convolution with stride 2) or
            ``"resize"`` (nearest-neighbour up-sampling + 3x3(x3) convolution).
        dropout: dropout rate after the deepest encoder node (Monte-Carlo capable);
            0 leaves the layer out.
        batch_norm: batch norm in every block.
        activation: ``"auto"`` (sigmoid for one class, softmax for several),
            ``"sigmoid"``, ``"softmax"`` or ``None`` for logits.
        spatial_dims: 2 or 3; ``None`` reads it off ``input_shape``.
        name: model name.

    Returns:
        A functional :class:`SegmentationModel` (input checked); each output has shape
        ``(batch, *spatial, num_classes)``.

    Example:
        >>> model = encoder_decoder((64, 64, 1), depth=3, base_filters=8, block="residual",
        ...                         decoder="nested")
        >>> model.output_shape
        (None, 64, 64, 1)

    Reference:
        Ronneberger O. et al., MICCAI 2015, https://arxiv.org/abs/1505.04597 ;
        Oktay O. et al., MIDL 2018, https://arxiv.org/abs/1804.03999 ;
        Zhang Z. et al., IEEE GRSL 2018, https://arxiv.org/abs/1711.10684 ;
        Zhou Z. et al., DLMIA 2018, https://arxiv.org/abs/1807.10165
    """
    input_shape, spatial_dims = resolve_spatial_dims(input_shape, spatial_dims)
    num_classes = check_int("num_classes", num_classes, 1)
    depth = check_int("depth", depth, 1)
    base_filters = check_int("base_filters", base_filters, 1)
    block = check_choice("block", block, BLOCKS)
    skip_gate = check_choice("skip_gate", skip_gate, SKIP_GATES)
    decoder = check_choice("decoder", decoder, DECODERS)
    if skip_gate == "attention" and decoder == "nested":
        raise ValueError("skip_gate='attention' needs decoder='plain'")
    if deep_supervision and decoder != "nested":
        raise ValueError("deep_supervision=True needs decoder='nested'")
    upsampling = check_choice("upsampling", upsampling, UPSAMPLING_MODES)
    dropout = check_dropout("dropout", dropout)
    activation = resolve_activation(activation, num_classes)
    check_divisible(input_shape, depth)

    hooks = _Hooks(spatial_dims, block, skip_gate, upsampling, batch_norm)
    node_name = _node_names(block, decoder, depth)
    inputs = keras.Input(shape=input_shape, name="image")
    nodes = {}  # (level, step) -> X[level, step]
    x = inputs
    for level in range(depth + 1):
        previous = node_name(level - 1, 0) if level else None
        x = hooks.down(x, base_filters * 2**level, node_name(level, 0), previous)
        nodes[level, 0] = x
    if dropout:
        dropout_layer = keras.layers.Dropout(dropout, name=f"{node_name(depth, 0)}_dropout")
        nodes[depth, 0] = dropout_layer(nodes[depth, 0])
    for step in range(1, depth + 1):
        # U-Net: one node per level, the diagonal X[depth - step, step]; U-Net++: every node
        # with level + step <= depth, each taking all earlier nodes of its level.
        levels = range(depth - step + 1) if decoder == "nested" else [depth - step]
        for level in levels:
            filters, prefix = base_filters * 2**level, node_name(level, step)
            deeper = hooks.up(nodes[level + 1, step - 1], filters, f"{prefix}_up")
            if decoder == "nested":
                skips = [nodes[level, earlier] for earlier in range(step)]
            else:
                skips = [hooks.gate(nodes[level, 0], deeper, filters, f"{prefix}_gate")]
            # Skips before the up-sampled feature: the order saved models' weights expect.
            merged = keras.layers.Concatenate(name=f"{prefix}_concat")([*skips, deeper])
            nodes[level, step] = hooks.node(merged, filters, prefix)

    def head(step, output_name):
        return segmentation_head(nodes[0, step], num_classes, activation, spatial_dims, output_name)

    if deep_supervision:
        outputs = [head(step, f"segmentation_{step}") for step in range(1, depth + 1)]
    else:
        outputs = head(depth, "segmentation")
    return SegmentationModel(inputs, outputs, name=name, size_divisor=2**depth)


def _node_names(block: str, decoder: str, depth: int):
    """Layer-name prefix of node ``X[level, step]``; saved models and weights keep these.

    U-Net++ uses the paper's ``x{level}_{step}``; the plain decoder names its levels
    ``encoder{i}`` / ``decoder{i}`` and the deepest node after its paper: U-Net's
    "bottleneck", Res-U-Net's "bridge".
    """
    bottom = "bridge" if block == "residual" else "bottleneck"

    def name(level: int, step: int) -> str:
        if decoder == "nested":
            return f"x{level}_{step}"
        if step:
            return f"decoder{level}"
        return bottom if level == depth else f"encoder{level}"

    return name


class _Hooks:
    """The hooks: the layers of an encoder node, an up-sampling, a skip gate, a decoder node."""

    def __init__(self, spatial_dims, block, skip_gate, upsampling, batch_norm):
        self.spatial_dims = spatial_dims
        self.block = block
        self.skip_gate = skip_gate
        self.upsampling = upsampling
        self.batch_norm = batch_norm

    def down(self, x, filters: int, name: str, previous: str | None):
        """Encoder node ``X[level, 0]`` from the node above it (``previous``) or the image."""
        first = previous is None
        if self.block == "residual":
            # Zhang et al.: the stride replaces pooling; the first unit sees the raw image, so
            # it starts with its convolution instead of batch norm + ReLU.
            return self._residual_unit(filters, name, 1 if first else 2, not first)(x)
        if not first:
            x = max_pool(x, self.spatial_dims, f"{previous}_pool")
        return conv_block(x, filters, self.spatial_dims, self.batch_norm, name)

    def up(self, x, filters: int, name: str):
        return upsample(x, filters, self.spatial_dims, self.upsampling, name)

    def gate(self, skip, gating, filters: int, name: str):
        if self.skip_gate == "identity":
            return skip
        # F_int = F_l / 2, as in MONAI's AttentionUnet.
        return AttentionGate(max(1, filters // 2), self.spatial_dims, name=name)(skip, gating)

    def node(self, x, filters: int, name: str):
        """Decoder node: the block at the grid it is given."""
        if self.block == "residual":
            return self._residual_unit(filters, name, 1, True)(x)
        return conv_block(x, filters, self.spatial_dims, self.batch_norm, name)

    def _residual_unit(self, filters, name, strides, preactivate):
        return ResidualUnit(
            filters,
            self.spatial_dims,
            strides=strides,
            preactivate=preactivate,
            batch_norm=self.batch_norm,
            name=name,
        )
