"""Batch normalisation that runs TensorFlow's fused kernel where it applies.

Keras 3 normalises with ``tf.nn.moments`` and ``tf.nn.batch_normalization`` on the
TensorFlow backend: a chain of reductions and element-wise ops over the whole activation in
the forward pass and again in the backward pass. TensorFlow's ``FusedBatchNormV3`` (the op
``tf.keras`` 2 used, oneDNN-accelerated on x86 CPUs) does the statistics, normalisation and
both gradients in one op each way. For channels-last 4D / 5D inputs
:class:`BatchNormalization` calls it; everything else falls back to the stock layer.

The class keeps the stock layer's name (``kseg.models.FusedBatchNormalization`` is the same
class): Keras saves the weights of a layer that another layer holds in a list (the norms of
:class:`kseg.models.ResidualUnit`) under its snake-cased class name, so a differently named
class could not load the models saved before kseg used it.
"""

from __future__ import annotations

import keras

# tf.compat.v1.nn.fused_batch_norm raises smaller epsilons to this floor (cuDNN's minimum);
# below it the fused op would normalise differently from the stock layer.
_FUSED_MIN_EPSILON = 1.001e-5
_FUSED_RANKS = (4, 5)
# Input dtypes the fused op takes (with float32 scale, offset and statistics).
_FUSED_DTYPES = ("float16", "bfloat16", "float32")


@keras.saving.register_keras_serializable(package="kseg")
class BatchNormalization(keras.layers.BatchNormalization):
    """``keras.layers.BatchNormalization`` computed by TensorFlow's fused kernel.

    Same arguments, weights (``gamma``, ``beta``, ``moving_mean``, ``moving_variance``,
    same names and shapes), outputs and moving-statistics updates as the stock layer, which
    it subclasses: a checkpoint of one loads into the other. The fused op runs when all of
    these hold, and the stock computation otherwise:

    - the TensorFlow backend;
    - a 4D (NHWC) or 5D (NDHWC) input normalised over its last axis;
    - an input dtype of float32, float16 or bfloat16 with float32 weights (mixed precision
      keeps its statistics in float32, as the stock layer does);
    - ``epsilon >= 1.001e-5`` (the fused op's floor), no ``renorm``, no ``synchronized``
      statistics and no mask.

    Training mode (``training=True`` on a trainable layer; a layer with
    ``trainable=False`` runs in inference mode, as in Keras) normalises with the batch
    statistics and moves ``moving_mean`` / ``moving_variance`` by ``momentum`` towards
    them. The fused op returns the Bessel-corrected batch variance (divided by ``n - 1``);
    the moving variance is fed the biased one (divided by ``n``), as Keras does, so that
    swapping the layers changes no statistic.

    Measured on a 2-core AMD EPYC (Zen 5), oneDNN on, under load, in interleaved A/B
    runs (``benchmarks/cpu_path.py``, its "stock keras BN" row): a ``unet_small`` 256²
    batch-8 training step took 0.75 CPU-seconds instead of 0.92–0.96, about what the same
    network costs with no batch norm at all (oneDNN also folds the ReLU that follows into
    the forward op); its prediction 0.22 instead of 0.25. A ``unet3d`` 48³ batch-2 step
    took 0.41 instead of 0.46–0.49, HighResNet 48³ batch-2 inference 1.51 instead of
    1.57–1.62 (+18 MiB peak memory).

    Example:
        >>> layer = BatchNormalization(momentum=0.9)
        >>> tuple(layer(keras.ops.ones((2, 8, 8, 4)), training=True).shape)
        (2, 8, 8, 4)
    """

    def _fusable(self, inputs, mask) -> bool:
        rank = len(inputs.shape)
        return (
            keras.backend.backend() == "tensorflow"
            and mask is None
            and not self.renorm
            and not self.synchronized
            and rank in _FUSED_RANKS
            and self.axis in (-1, rank - 1)
            and self.epsilon >= _FUSED_MIN_EPSILON
            and keras.backend.standardize_dtype(inputs.dtype) in _FUSED_DTYPES
            and self.variable_dtype == "float32"
        )

    def call(self, inputs, training=None, mask=None):
        if not self._fusable(inputs, mask):
            return super().call(inputs, training=training, mask=mask)
        import tensorflow as tf

        channels = inputs.shape[-1]
        gamma = self.gamma if self.scale else tf.ones((channels,), tf.float32)
        beta = self.beta if self.center else tf.zeros((channels,), tf.float32)
        shape = None
        if len(inputs.shape) == 5:
            # Statistics are per channel over all other axes, so (N, D, H, W, C) as
            # (N, D*H, W, C) normalises the same; oneDNN takes the 4D op but not the 5D one,
            # whose Eigen kernel made a 3D U-Net train step no faster than the stock layer
            # (unet3d 48³ batch 2: 0.41 CPU-s folded, 0.48 5D, 0.46-0.49 stock).
            shape = tf.shape(inputs)
            inputs = tf.reshape(inputs, tf.concat([[shape[0], shape[1] * shape[2]], shape[3:]], 0))
        if training and self.trainable:
            outputs, mean, corrected_variance = tf.compat.v1.nn.fused_batch_norm(
                inputs, gamma, beta, epsilon=self.epsilon, data_format="NHWC",
                is_training=True,
            )
            # Values per channel; the fused kernel divides the variance by max(n - 1, 1).
            count = tf.cast(tf.size(inputs, out_type=tf.int64) // channels, tf.float32)
            variance = corrected_variance * (tf.maximum(count - 1.0, 1.0) / count)
            self.moving_mean.assign(
                self.moving_mean * self.momentum + mean * (1.0 - self.momentum)
            )
            self.moving_variance.assign(
                self.moving_variance * self.momentum + variance * (1.0 - self.momentum)
            )
        else:
            outputs, _, _ = tf.compat.v1.nn.fused_batch_norm(
                inputs, gamma, beta, mean=self.moving_mean, variance=self.moving_variance,
                epsilon=self.epsilon, data_format="NHWC", is_training=False,
            )
        if shape is not None:
            outputs = tf.reshape(outputs, shape)
        return keras.ops.cast(outputs, self.compute_dtype)
