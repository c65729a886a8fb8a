"""Attention U-Net (Oktay et al., 2018): a U-Net whose skips pass through attention gates."""

from __future__ import annotations

import keras

from kseg.models.encoder_decoder import encoder_decoder


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
    channels (F_int, as in MONAI). This is :func:`~kseg.models.encoder_decoder` with
    ``skip_gate="attention"``.

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
    return encoder_decoder(
        input_shape,
        num_classes,
        depth=depth,
        base_filters=base_filters,
        skip_gate="attention",
        upsampling=upsampling,
        dropout=dropout,
        batch_norm=batch_norm,
        activation=activation,
        spatial_dims=spatial_dims,
        name=name,
    )
