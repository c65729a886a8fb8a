"""Segmentation models for 2D slices and 3D volumes, built by name or by function.

Every builder returns a functional ``keras.Model`` ending in sigmoid (one class), softmax
(several) or, with ``activation=None``, logits; 2D or 3D follows from ``input_shape`` (or
``spatial_dims``). The model is a :class:`SegmentationModel`, which checks every input
before running: a missing batch axis, a wrong channel count or a spatial size that does not
halve cleanly ``depth`` times raises a ``ValueError`` saying so, instead of an error from
deep inside the network. Custom layers are registered with Keras under the ``kseg`` package, so
a saved ``.keras`` file reloads with ``keras.saving.load_model`` once ``kseg.models`` is
imported, without ``custom_objects``.

``unet``, ``attention_unet``, ``res_unet`` and ``unet_plus_plus`` are configurations of one
:func:`encoder_decoder` (its block, skip gate and decoder); HighResNet, which never
down-samples, is built on its own.

Example:
    >>> from kseg import models
    >>> model = models.build("unet_small", input_shape=(256, 256, 1), num_classes=1)
    >>> volume_model = models.build("unet3d", input_shape=(64, 64, 64, 1), num_classes=3)
"""

from __future__ import annotations

import functools

import keras

from kseg.models.attention_gate import AttentionGate
from kseg.models.attention_unet import attention_unet
from kseg.models.encoder_decoder import encoder_decoder
from kseg.models.heteroscedastic_head import HeteroscedasticHead
from kseg.models.highresnet import highresnet
from kseg.models.normalization import BatchNormalization as FusedBatchNormalization
from kseg.models.res_unet import res_unet
from kseg.models.residual_unit import ResidualUnit
from kseg.models.segmentation_model import SegmentationModel
from kseg.models.unet import unet
from kseg.models.unet_plus_plus import unet_plus_plus

MODELS = {
    "unet": unet,
    "unet_small": functools.partial(unet, depth=3, name="unet_small"),
    "unet3d": functools.partial(unet, input_shape=(None, None, None, 1), spatial_dims=3,
                                name="unet3d"),
    "attention_unet": attention_unet,
    "res_unet": res_unet,
    "unet_plus_plus": unet_plus_plus,
    "highresnet": highresnet,
}


def build(name: str, /, **kwargs) -> keras.Model:
    """Build a registered model by name.

    Args:
        name: one of ``MODELS``: ``"unet"``, ``"unet_small"`` (U-Net with ``depth=3``),
            ``"unet3d"`` (U-Net with ``spatial_dims=3``; default input
            ``(None, None, None, 1)``), ``"attention_unet"``, ``"res_unet"``,
            ``"unet_plus_plus"``, ``"highresnet"``.
        **kwargs: the builder's arguments; they override the preset ones
            (``build("unet_small", depth=2)`` is a depth-2 U-Net). ``name`` is positional
            only, so ``name=`` here names the model.

    Returns:
        The built ``keras.Model``.

    Example:
        >>> model = build("attention_unet", input_shape=(128, 128, 1), num_classes=2)

    Raises:
        ValueError: the name is unknown (the message lists the known ones) or an argument
            is invalid.
    """
    if name not in MODELS:
        raise ValueError(f"unknown model name {name!r}; known models: {', '.join(MODELS)}")
    return MODELS[name](**kwargs)


__all__ = [
    "MODELS",
    "AttentionGate",
    "FusedBatchNormalization",
    "HeteroscedasticHead",
    "ResidualUnit",
    "SegmentationModel",
    "attention_unet",
    "build",
    "encoder_decoder",
    "highresnet",
    "res_unet",
    "unet",
    "unet_plus_plus",
]
