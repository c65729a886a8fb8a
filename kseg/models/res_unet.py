"""Residual U-Net (Zhang et al., 2018): U-Net levels built from pre-activation residual units."""

from __future__ import annotations

import keras

from kseg.models.encoder_decoder import encoder_decoder


def res_unet(
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
    name: str = "res_unet",
) -> keras.Model:
    """Build a Residual U-Net (ResUNet).

    Every level is a :class:`~kseg.models.residual_unit.ResidualUnit`. The encoder
    down-samples with a stride-2 first convolution instead of max-pooling; its first unit
    starts with a convolution on the raw image rather than batch norm + ReLU. A strided
    unit with ``base_filters * 2**depth`` channels forms the bridge; each decoder level
    up-samples, concatenates the encoder feature of the same level and applies a unit with
    a projection shortcut (Zhang et al., 2018, generalised to ``depth`` levels and
    3D as in Diakogiannis et al., 2020). This is :func:`~kseg.models.encoder_decoder` with
    ``block="residual"``.

    Args:
        input_shape: ``(H, W, C)`` or ``(D, H, W, C)``; spatial sizes may be ``None``.
            Known sizes must be divisible by ``2**depth``.
        num_classes: output channels.
        depth: number of down-sampling steps (3 in Zhang et al.).
        base_filters: channels at full resolution (64 in Zhang et al.).
        upsampling: ``"transpose"`` or ``"resize"`` (see :func:`kseg.models.unet`).
        dropout: dropout rate after the bridge (Monte-Carlo capable); 0 leaves it out.
        batch_norm: batch norm inside the residual units.
        activation: ``"auto"``, ``"sigmoid"``, ``"softmax"`` or ``None`` for logits.
        spatial_dims: 2 or 3; ``None`` reads it off ``input_shape``.
        name: model name.

    Returns:
        A functional :class:`SegmentationModel` (input checked) mapping ``(batch, *spatial, C)`` to
        ``(batch, *spatial, num_classes)``.

    Example:
        >>> model = res_unet((224, 224, 3), num_classes=1, depth=3, base_filters=64)
        >>> model.output_shape
        (None, 224, 224, 1)

    Reference:
        Zhang Z., Liu Q., Wang Y., "Road Extraction by Deep Residual U-Net", IEEE GRSL 2018,
        https://arxiv.org/abs/1711.10684 ;
        Diakogiannis F. I. et al., "ResUNet-a: a deep learning framework for semantic
        segmentation of remotely sensed data", ISPRS J. 2020, https://arxiv.org/abs/1904.00592
    """
    return encoder_decoder(
        input_shape,
        num_classes,
        depth=depth,
        base_filters=base_filters,
        block="residual",
        upsampling=upsampling,
        dropout=dropout,
        batch_norm=batch_norm,
        activation=activation,
        spatial_dims=spatial_dims,
        name=name,
    )
