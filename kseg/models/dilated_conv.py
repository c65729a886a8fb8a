"""A 3D convolution that runs its dilation inside oneDNN's kernel on the CPU.

Keras hands a dilated convolution to ``tf.nn.convolution``, which rewrites it as
``SpaceToBatchND -> Conv3D -> BatchToSpaceND``: the input is cut into ``d**3`` interleaved
sub-grids, convolved without dilation and put back together, two extra copies of every
activation. oneDNN's Conv3D kernel takes the dilation itself; TensorFlow's own (Eigen) CPU
Conv3D refuses any dilation other than 1, so the direct call is made only where oneDNN is
on, and everywhere else the layer is a stock ``keras.layers.Conv3D``.

Same variables (``kernel``, ``bias``), same config and same output as ``Conv3D``. The class
keeps the name ``Conv3D`` on purpose: a ``.keras`` file stores the weights of a layer held in
a list (a model's layers, a ResidualUnit's ``convs``) under its class name in snake case
(``conv3d``, ``conv3d_1``), so any other name would leave the weights of models saved with
``keras.layers.Conv3D`` unfound. It is registered as ``kseg>Conv3D``.
"""

from __future__ import annotations

import functools

import keras


@functools.cache
def direct_dilation_supported() -> bool:
    """Whether this process runs dilated 3D convolutions in one oneDNN Conv3D call.

    True only with the TensorFlow backend, oneDNN on (TensorFlow reads
    ``TF_ENABLE_ONEDNN_OPTS`` once, at import, so the running library is asked rather than
    the environment) and no GPU (the direct call is measured on the CPU only). Cached: none
    of the three changes within a process once TensorFlow has been imported.
    """
    if keras.backend.backend() != "tensorflow":
        return False
    import tensorflow as tf

    try:
        from tensorflow.python.util import _pywrap_util_port

        onednn = bool(_pywrap_util_port.IsMklEnabled())
    except (ImportError, AttributeError):  # a TensorFlow without the probe: stay stock
        return False
    return onednn and not tf.config.list_logical_devices("GPU")


@keras.saving.register_keras_serializable(package="kseg")
class Conv3D(keras.layers.Conv3D):
    """``keras.layers.Conv3D`` whose dilated, unstrided, channels-last case calls oneDNN directly.

    Takes exactly ``Conv3D``'s arguments. When :func:`direct_dilation_supported` holds and
    the layer has ``dilation_rate > 1``, ``strides == 1``, ``groups == 1``, channels last
    and a float32 input, the convolution is one ``tf.nn.conv3d(..., dilations=...)``
    instead of Keras' space-to-batch rewrite: HighResNet's sliding window took
    12 % less CPU time, 16.2 -> 14.3 CPU-s, and 45 MiB less
    peak memory at batch 4 (``benchmarks/monai_compare.py``'s setting). Any other case runs the
    stock ``Conv3D`` code.

    Example:
        >>> layer = Conv3D(8, 3, dilation_rate=2, padding="same")
        >>> tuple(layer(keras.ops.ones((1, 12, 12, 12, 4))).shape)
        (1, 12, 12, 12, 8)
    """

    def _direct(self, inputs) -> bool:
        return (
            max(self.dilation_rate) > 1
            and max(self.strides) == 1
            and self.groups == 1
            and self.data_format == "channels_last"
            and keras.backend.standardize_dtype(inputs.dtype) == "float32"
            and direct_dilation_supported()
        )

    def convolution_op(self, inputs, kernel):
        if not self._direct(inputs):
            return super().convolution_op(inputs, kernel)
        import tensorflow as tf

        return tf.nn.conv3d(
            inputs,
            kernel,
            strides=(1, 1, 1, 1, 1),
            padding=self.padding.upper(),
            dilations=(1, *self.dilation_rate, 1),
        )
