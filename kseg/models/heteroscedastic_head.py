"""A segmentation head that outputs logits and a per-voxel log-variance."""

from __future__ import annotations

import keras

from kseg.models._building_blocks import check_int, conv


@keras.saving.register_keras_serializable(package="kseg")
class HeteroscedasticHead(keras.layers.Layer):
    """1x1(x1) convolution to ``num_classes`` logits plus one log-variance channel.

    Output layout: ``(batch, *spatial, num_classes + 1)``; channels ``0 .. num_classes-1``
    are the logits ``f`` (no activation), the last channel is ``s = log σ²``, one variance
    shared by the logits of a voxel, as :class:`kseg.losses.HeteroscedasticCrossEntropy`
    samples ``f + σ ε``. A binary model (``num_classes=1``) has two channels. The head
    computes in float32, so a mixed-precision network still returns float32 logits and
    log-variances. 2D or 3D follows from the rank of the input.

    The log-variance convolution starts with zero kernel and the bias
    ``initial_log_variance``, so every voxel starts with the same ``σ``; the logits use
    Keras' default initialisers.

    Args:
        num_classes: number of logit channels (1 for a sigmoid model).
        initial_log_variance: starting ``s`` of every voxel (default ``-4``: ``σ ≈ 0.14``,
            training starts close to plain cross-entropy).
        **kwargs: ``keras.layers.Layer`` arguments (``name``, ...).

    Example:
        >>> features = keras.Input((64, 64, 16))
        >>> outputs = HeteroscedasticHead(num_classes=3)(features)  # (None, 64, 64, 4)

    Reference:
        Kendall A, Gal Y. "What Uncertainties Do We Need in Bayesian Deep Learning for
        Computer Vision?". NeurIPS 2017. arXiv:1703.04977.
    """

    def __init__(self, num_classes, initial_log_variance=-4.0, **kwargs):
        super().__init__(**kwargs)
        self.num_classes = check_int("num_classes", num_classes, 1)
        if isinstance(initial_log_variance, bool) or not isinstance(
            initial_log_variance, (int, float)
        ):
            raise ValueError(
                f"initial_log_variance must be a number, got {initial_log_variance!r}"
            )
        self.initial_log_variance = float(initial_log_variance)
        self.logits = None
        self.log_variance = None

    def build(self, input_shape):
        spatial_dims = len(input_shape) - 2
        if spatial_dims not in (2, 3):
            raise ValueError(
                f"{self.name}: input must be (batch, *spatial, channels) with 2 or 3 spatial "
                f"axes, got shape {tuple(input_shape)}"
            )
        if input_shape[-1] is None:
            raise ValueError(f"{self.name}: the channel axis of the input must be known")
        self.logits = conv(spatial_dims, self.num_classes, 1, "logits", dtype="float32")
        self.log_variance = conv(
            spatial_dims,
            1,
            1,
            "log_variance",
            kernel_initializer="zeros",
            bias_initializer=keras.initializers.Constant(self.initial_log_variance),
            dtype="float32",
        )
        self.logits.build(input_shape)
        self.log_variance.build(input_shape)

    def call(self, inputs):
        inputs = keras.ops.cast(inputs, "float32")
        return keras.ops.concatenate([self.logits(inputs), self.log_variance(inputs)], axis=-1)

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], self.num_classes + 1)

    def get_config(self):
        config = super().get_config()
        config.update(
            {"num_classes": self.num_classes, "initial_log_variance": self.initial_log_variance}
        )
        return config
