"""Additive attention gate (Oktay et al., 2018) for U-Net skip connections."""

from __future__ import annotations

import keras
from keras import ops

from kseg.models._building_blocks import check_int, check_spatial_dims, conv


@keras.saving.register_keras_serializable(package="kseg")
class AttentionGate(keras.layers.Layer):
    """Weights a skip connection by attention coefficients computed from a gating signal.

    ``alpha = sigmoid(psi(relu(W_x(skip) + W_g(gating) + b_g)) + b_psi)`` and the output is
    ``skip * alpha`` (Oktay et al., 2018, eq. 1-2), where ``W_x``, ``W_g`` and ``psi`` are
    1x1(x1) convolutions and ``alpha`` has one channel broadcast over the skip's channels.
    As in MONAI's ``AttentionUnet``, the gating signal is the decoder feature after
    up-sampling, so skip and gating share one grid and the paper's resampler is not needed.

    Args:
        inter_channels: channels of the intermediate ``W_x`` / ``W_g`` projections (F_int).
        spatial_dims: 2 or 3.
        **kwargs: standard ``keras.layers.Layer`` arguments (``name``, ``dtype``, ...).

    Example:
        >>> gate = AttentionGate(inter_channels=8, spatial_dims=2)
        >>> skip = keras.ops.ones((1, 16, 16, 16))
        >>> gating = keras.ops.ones((1, 16, 16, 32))
        >>> tuple(gate(skip, gating).shape)
        (1, 16, 16, 16)

    Reference:
        Oktay O. et al., "Attention U-Net: Learning Where to Look for the Pancreas",
        MIDL 2018, https://arxiv.org/abs/1804.03999
    """

    def __init__(self, inter_channels: int, spatial_dims: int = 2, **kwargs):
        super().__init__(**kwargs)
        self.inter_channels = check_int("inter_channels", inter_channels, 1)
        self.spatial_dims = check_spatial_dims(spatial_dims)
        # W_x has no bias: the paper's single additive bias b_g sits on W_g.
        # Sublayers follow this layer's dtype policy, so a mixed-precision model saved to a
        # .keras file reloads in a float32 process.
        policy = self.dtype_policy
        self.skip_projection = conv(
            self.spatial_dims, self.inter_channels, 1, "skip_projection", use_bias=False,
            dtype=policy,
        )
        self.gating_projection = conv(
            self.spatial_dims, self.inter_channels, 1, "gating_projection", dtype=policy
        )
        self.attention = conv(self.spatial_dims, 1, 1, "attention", dtype=policy)

    def build(self, skip_shape, gating_shape):
        expected_rank = self.spatial_dims + 2
        if len(skip_shape) != expected_rank or len(gating_shape) != expected_rank:
            raise ValueError(
                f"{self.name}: skip and gating must be rank {expected_rank} "
                f"(batch, {self.spatial_dims} spatial axes, channels), "
                f"got {tuple(skip_shape)} and {tuple(gating_shape)}"
            )
        for skip_size, gating_size in zip(skip_shape[1:-1], gating_shape[1:-1], strict=True):
            if None not in (skip_size, gating_size) and skip_size != gating_size:
                raise ValueError(
                    f"{self.name}: skip {tuple(skip_shape)} and gating {tuple(gating_shape)} "
                    "must share their spatial size; up-sample the gating signal first"
                )
        self.skip_projection.build(skip_shape)
        self.gating_projection.build(gating_shape)
        self.attention.build(tuple(skip_shape[:-1]) + (self.inter_channels,))

    def call(self, skip, gating):
        combined = ops.relu(self.skip_projection(skip) + self.gating_projection(gating))
        alpha = ops.sigmoid(self.attention(combined))
        return skip * alpha

    def compute_output_shape(self, skip_shape, gating_shape):
        return tuple(skip_shape)

    def get_config(self):
        config = super().get_config()
        config.update({"inter_channels": self.inter_channels, "spatial_dims": self.spatial_dims})
        return config
