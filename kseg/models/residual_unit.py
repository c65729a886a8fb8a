"""Pre-activation residual unit shared by Res-U-Net and HighResNet."""

from __future__ import annotations

import math

import keras
from keras import ops

from kseg.models._building_blocks import batch_normalization, check_int, check_spatial_dims, conv

SHORTCUTS = ("projection", "pad")


@keras.saving.register_keras_serializable(package="kseg")
class ResidualUnit(keras.layers.Layer):
    """Two (batch norm, ReLU, convolution) steps added to a shortcut of the input.

    The full pre-activation unit of He et al. (2016): ``x + conv(relu(bn(conv(relu(bn(x))))))``.
    The first convolution carries the stride (Res-U-Net down-samples this way instead of
    pooling) and both carry the dilation (HighResNet's dilated stages). When the unit
    changes the channel count or the grid, the shortcut either projects the input with a
    strided 1x1(x1) convolution (+ batch norm), as in Zhang et al. (2018), or zero-pads the
    missing channels, which adds no parameters, as in Li et al. (2017).

    Args:
        filters: output channels.
        spatial_dims: 2 or 3.
        kernel_size: size of both convolutions along every axis.
        strides: stride of the first convolution (and of a projection shortcut).
        dilation_rate: dilation of both convolutions; must be 1 when ``strides > 1``.
        shortcut: ``"projection"`` or ``"pad"`` (zero channels split evenly before and
            after the input's; only for ``strides == 1`` and ``filters`` >= input channels).
            An identity shortcut is used whenever input and output shapes already agree.
        preactivate: start with batch norm + ReLU. The first unit of Res-U-Net sees the raw
            image and starts with its convolution instead (Zhang et al., 2018).
        batch_norm: use batch norm; convolutions carry a bias only without it.
        **kwargs: standard ``keras.layers.Layer`` arguments (``name``, ``dtype``, ...).

    Example:
        >>> unit = ResidualUnit(filters=32, spatial_dims=3, strides=2)
        >>> tuple(unit(keras.ops.ones((1, 8, 8, 8, 16))).shape)
        (1, 4, 4, 4, 32)

    Reference:
        He K. et al., "Identity Mappings in Deep Residual Networks", ECCV 2016,
        https://arxiv.org/abs/1603.05027 ;
        Zhang Z., Liu Q., Wang Y., "Road Extraction by Deep Residual U-Net", IEEE GRSL 2018,
        https://arxiv.org/abs/1711.10684 ;
        Li W. et al., "On the Compactness, Efficiency, and Representation of 3D Convolutional
        Networks: Brain Parcellation as a Pretext Task", IPMI 2017,
        https://arxiv.org/abs/1707.01992
    """

    def __init__(
        self,
        filters: int,
        spatial_dims: int = 2,
        kernel_size: int = 3,
        strides: int = 1,
        dilation_rate: int = 1,
        shortcut: str = "projection",
        preactivate: bool = True,
        batch_norm: bool = True,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.filters = check_int("filters", filters, 1)
        self.spatial_dims = check_spatial_dims(spatial_dims)
        self.kernel_size = check_int("kernel_size", kernel_size, 1)
        self.strides = check_int("strides", strides, 1)
        self.dilation_rate = check_int("dilation_rate", dilation_rate, 1)
        if self.strides > 1 and self.dilation_rate > 1:
            raise ValueError(
                f"strides={strides} and dilation_rate={dilation_rate}: a convolution cannot "
                "both stride and dilate; one of them must be 1"
            )
        if shortcut not in SHORTCUTS:
            raise ValueError(f"shortcut must be one of {SHORTCUTS}, got {shortcut!r}")
        if shortcut == "pad" and self.strides > 1:
            raise ValueError("shortcut='pad' cannot down-sample; use strides=1 or 'projection'")
        self.shortcut = shortcut
        self.preactivate = bool(preactivate)
        self.batch_norm = bool(batch_norm)

        self.convs = [
            self._conv(f"conv{index}", strides=self.strides if index == 1 else 1)
            for index in (1, 2)
        ]
        # Which of the two steps open with (batch norm,) ReLU; the norms follow that order.
        self._activated_steps = (self.preactivate, True)
        self.norms = [
            batch_normalization(f"bn{index}", dtype=self.dtype_policy)
            for index, activated in enumerate(self._activated_steps, start=1)
            if activated and self.batch_norm
        ]
        self.shortcut_conv = None
        self.shortcut_norm = None
        self.channel_padding = (0, 0)

    def _conv(self, name: str, strides: int):
        return conv(self.spatial_dims, self.filters, self.kernel_size, name, strides=strides,
                    dilation_rate=self.dilation_rate, use_bias=not self.batch_norm,
                    dtype=self.dtype_policy)  # fmt: skip

    def build(self, input_shape):
        in_channels = input_shape[-1]
        if in_channels is None:
            raise ValueError(f"{self.name}: the channel axis of the input must be known")
        if self.shortcut == "pad" and in_channels > self.filters:
            raise ValueError(
                f"{self.name}: shortcut='pad' needs filters >= input channels, got "
                f"filters={self.filters} for {in_channels} input channels"
            )
        shape = tuple(input_shape)
        norms = iter(self.norms)
        for activated, conv_layer in zip(self._activated_steps, self.convs, strict=True):
            if activated and self.batch_norm:
                next(norms).build(shape)
            conv_layer.build(shape)
            shape = conv_layer.compute_output_shape(shape)

        needs_reshaping = self.strides > 1 or in_channels != self.filters
        if needs_reshaping and self.shortcut == "projection":
            self.shortcut_conv = conv(
                self.spatial_dims,
                self.filters,
                1,
                "shortcut_conv",
                strides=self.strides,
                use_bias=not self.batch_norm,
                dtype=self.dtype_policy,
            )
            self.shortcut_conv.build(input_shape)
            if self.batch_norm:
                self.shortcut_norm = batch_normalization("shortcut_bn", dtype=self.dtype_policy)
                self.shortcut_norm.build(self.shortcut_conv.compute_output_shape(input_shape))
        elif needs_reshaping:
            missing = self.filters - in_channels
            self.channel_padding = (missing // 2, missing - missing // 2)

    def call(self, inputs, training=None):
        x = inputs
        norms = iter(self.norms)
        for activated, conv_layer in zip(self._activated_steps, self.convs, strict=True):
            if activated:
                if self.batch_norm:
                    x = next(norms)(x, training=training)
                x = ops.relu(x)
            x = conv_layer(x)
        return x + self._shortcut(inputs, training)

    def _shortcut(self, inputs, training):
        if self.shortcut_conv is not None:
            shortcut = self.shortcut_conv(inputs)
            if self.shortcut_norm is not None:
                shortcut = self.shortcut_norm(shortcut, training=training)
            return shortcut
        if self.channel_padding != (0, 0):
            no_padding = [(0, 0)] * (self.spatial_dims + 1)
            return ops.pad(inputs, no_padding + [self.channel_padding])
        return inputs

    def compute_output_shape(self, input_shape):
        spatial = tuple(
            None if size is None else math.ceil(size / self.strides) for size in input_shape[1:-1]
        )
        return (input_shape[0],) + spatial + (self.filters,)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "filters": self.filters,
                "spatial_dims": self.spatial_dims,
                "kernel_size": self.kernel_size,
                "strides": self.strides,
                "dilation_rate": self.dilation_rate,
                "shortcut": self.shortcut,
                "preactivate": self.preactivate,
                "batch_norm": self.batch_norm,
            }
        )
        return config
