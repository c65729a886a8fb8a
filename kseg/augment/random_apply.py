"""Apply any augmentation layer to a random subset of the samples in a batch."""

from __future__ import annotations

import keras
from keras import ops

from kseg.augment._base import IMAGES, MASKS, check_probability, per_sample


@keras.saving.register_keras_serializable(package="kseg")
class RandomApply(keras.layers.Layer):
    """Runs ``layer`` on the batch and keeps its output for a random subset of samples.

    Gives a per-sample probability to layers that have none, e.g.
    ``RandomApply(keras.layers.RandomRotation(0.05), probability=0.2)``. The wrapped layer
    sees the whole batch (it is vectorised; choosing first would need ragged batches), and
    each sample independently keeps the transformed version with chance ``probability``,
    images and masks together. Inputs and outputs are Keras' augmentation structure: a
    batched image tensor ``(B, ...)`` or ``{"images": ..., "segmentation_masks": ...}`` of
    batched tensors (the first axis is always read as the batch).

    Args:
        layer: a Keras layer taking and returning that structure.
        probability: chance that a sample keeps ``layer``'s output.
        seed: int seed, or ``None``.
        **kwargs: standard ``keras.layers.Layer`` arguments.

    Example:
        >>> rotate = RandomApply(keras.layers.RandomRotation(0.05, fill_mode="constant"), 0.2)
        >>> out = rotate({"images": keras.ops.zeros((4, 32, 32, 1)),
        ...               "segmentation_masks": keras.ops.zeros((4, 32, 32, 1))})
    """

    def __init__(self, layer, probability: float = 0.5, seed=None, **kwargs):
        super().__init__(**kwargs)
        if isinstance(layer, dict):
            layer = keras.saving.deserialize_keras_object(layer)
        if not isinstance(layer, keras.layers.Layer):
            raise ValueError(f"layer must be a keras.layers.Layer, got {layer!r}")
        self.layer = layer
        self.probability = check_probability("probability", probability)
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    def build(self, input_shape):
        if not self.layer.built:
            self.layer.build(input_shape)
        self.built = True

    def call(self, inputs, training=True):
        is_dict = isinstance(inputs, dict)
        layer_inputs = dict(inputs) if is_dict else inputs
        outputs = self.layer(layer_inputs, training=training)
        if not training:
            return outputs
        original = inputs[IMAGES] if is_dict else inputs
        original = ops.convert_to_tensor(original)
        rank = len(original.shape)
        batch_size = ops.shape(original)[0]
        draws = keras.random.uniform((batch_size,), seed=self.seed_generator)
        keep = per_sample(ops.less(draws, self.probability), rank)

        def choose(transformed, untouched):
            untouched = ops.convert_to_tensor(untouched)
            return ops.where(keep, ops.cast(transformed, untouched.dtype), untouched)

        if not is_dict:
            return choose(outputs, original)
        chosen = dict(outputs)
        chosen[IMAGES] = choose(outputs[IMAGES], original)
        if MASKS in inputs:
            chosen[MASKS] = choose(outputs[MASKS], inputs[MASKS])
        return chosen

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "layer": keras.saving.serialize_keras_object(self.layer),
                "probability": self.probability,
                "seed": self.seed,
            }
        )
        return config
