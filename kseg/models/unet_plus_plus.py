"""U-Net++ (Zhou et al., 2018): nested, densely connected skip pathways."""

from __future__ import annotations

import keras

from kseg.models.encoder_decoder import encoder_decoder


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
    supervision trains and what pruning at inference exploits. This is
    :func:`~kseg.models.encoder_decoder` with ``decoder="nested"``.

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
    return encoder_decoder(
        input_shape,
        num_classes,
        depth=depth,
        base_filters=base_filters,
        decoder="nested",
        deep_supervision=deep_supervision,
        upsampling=upsampling,
        dropout=dropout,
        batch_norm=batch_norm,
        activation=activation,
        spatial_dims=spatial_dims,
        name=name,
    )
