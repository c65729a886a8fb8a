"""U-Net (Ronneberger et al., 2015) with batch norm, for 2D slices and 3D volumes."""

from __future__ import annotations

import keras

from kseg.models.encoder_decoder import encoder_decoder


def unet(
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
    name: str = "unet",
) -> keras.Model:
    """Build a U-Net: a contracting path, a bottleneck and an expanding path with skips.

    Level ``i`` (0 = full resolution) has two (3x3(x3) convolution, batch norm, ReLU)
    layers with ``base_filters * 2**i`` channels; ``depth`` max-poolings lead to the
    bottleneck with ``base_filters * 2**depth`` channels. Convolutions are 'same'-padded
    (unlike the paper's 'valid' ones), so the output grid equals the input grid. Dropout
    sits at the end of the contracting path as in the paper; it is a standard
    ``keras.layers.Dropout``, so ``model(x, training=True)`` draws Monte-Carlo dropout
    samples (Gal and Ghahramani, 2016). This is :func:`~kseg.models.encoder_decoder` with its
    default hooks (double-conv blocks, identity skips, plain decoder).

    Args:
        input_shape: ``(H, W, C)`` or ``(D, H, W, C)``; spatial sizes may be ``None``.
            Known sizes must be divisible by ``2**depth``.
        num_classes: output channels.
        depth: number of down-sampling steps (4 in the paper; 3 is the "small" U-Net).
        base_filters: channels at full resolution (64 in the paper).
        upsampling: ``"transpose"`` (2x2 transposed convolution) or ``"resize"``
            (nearest-neighbour up-sampling + 3x3 convolution).
        dropout: dropout rate at the bottleneck; 0 leaves the layer out.
        batch_norm: batch norm after every convolution (Ioffe and Szegedy, 2015).
        activation: ``"auto"`` (sigmoid for one class, softmax for several),
            ``"sigmoid"``, ``"softmax"`` or ``None`` for logits.
        spatial_dims: 2 or 3; ``None`` reads it off ``input_shape``.
        name: model name.

    Returns:
        A functional :class:`SegmentationModel` (input checked) mapping ``(batch, *spatial, C)`` to
        ``(batch, *spatial, num_classes)``.

    Example:
        >>> model = unet((128, 128, 1), num_classes=1, depth=3, base_filters=16)
        >>> model.output_shape
        (None, 128, 128, 1)
        >>> volume_model = unet((None, None, None, 1), num_classes=3)  # 3D, any size

    Reference:
        Ronneberger O., Fischer P., Brox T., "U-Net: Convolutional Networks for Biomedical
        Image Segmentation", MICCAI 2015, https://arxiv.org/abs/1505.04597 ;
        Cicek O. et al., "3D U-Net: Learning Dense Volumetric Segmentation from Sparse
        Annotation", MICCAI 2016, https://arxiv.org/abs/1606.06650
    """
    return encoder_decoder(
        input_shape,
        num_classes,
        depth=depth,
        base_filters=base_filters,
        upsampling=upsampling,
        dropout=dropout,
        batch_norm=batch_norm,
        activation=activation,
        spatial_dims=spatial_dims,
        name=name,
    )
