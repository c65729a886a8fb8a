"""One test harness for kseg's Keras objects (layers, models, losses, metrics, augmenters).

Modelled on keras-hub's ``TestCase.run_layer_test`` / ``run_serialization_test``
(``keras_hub/src/tests/test_case.py``): one call checks what every Keras object must do, so
each test file states only what is particular to its object.

- :func:`run_serialization_test`: ``get_config`` -> ``from_config`` and
  ``serialize_keras_object`` -> JSON -> ``deserialize_keras_object`` give back an object of
  the same class with the same config; a kseg class is found by its registered name.
- :func:`run_saving_test`: a model saved to ``.keras`` reloads without ``custom_objects``
  and computes the same outputs.
- :func:`run_training_test`: one gradient step reaches every trainable weight, then one
  ``fit`` step gives a finite loss and moves the weights.
- :func:`run_layer_test`: all of these for a layer, plus its symbolic and eager output
  shapes.
"""

from __future__ import annotations

import json

import keras
import numpy as np
import tensorflow as tf


def _config_json(instance) -> str:
    # JSON, not ==, so that NaN settings (an ``empty=nan`` metric) compare equal.
    return json.dumps(instance.get_config(), sort_keys=True)


def run_serialization_test(instance):
    """Round-trip ``instance`` through its config and through Keras' serialisation.

    Returns:
        The object revived by ``deserialize_keras_object``, for further checks.
    """
    cls = type(instance)
    expected = _config_json(instance)

    revived = cls.from_config(instance.get_config())
    assert type(revived) is cls
    assert _config_json(revived) == expected

    serialized = keras.saving.serialize_keras_object(instance)
    if cls.__module__.startswith("kseg."):
        assert serialized["registered_name"] == f"kseg>{cls.__name__}"
    revived = keras.saving.deserialize_keras_object(json.loads(json.dumps(serialized)))
    assert type(revived) is cls
    assert _config_json(revived) == expected
    return revived


def _outputs(model, inputs) -> list[np.ndarray]:
    outputs = model(inputs, training=False)
    return [keras.ops.convert_to_numpy(output) for output in keras.tree.flatten(outputs)]


def run_saving_test(model: keras.Model, inputs, path):
    """Save ``model`` to ``path`` (a ``.keras`` file), reload it and compare.

    The reloaded model must be of the same class, hold layers of the same classes and
    compute exactly the same outputs (inference mode) on ``inputs``.

    Returns:
        The reloaded model, for further checks.
    """
    before = _outputs(model, inputs)
    model.save(path)
    reloaded = keras.saving.load_model(path)
    assert type(reloaded) is type(model)
    layer_classes = sorted(type(layer).__name__ for layer in model.layers)
    assert sorted(type(layer).__name__ for layer in reloaded.layers) == layer_classes
    after = _outputs(reloaded, inputs)
    assert len(after) == len(before)
    for reloaded_output, output in zip(after, before, strict=True):
        np.testing.assert_array_equal(reloaded_output, output)
    return reloaded


def run_training_test(model: keras.Model, inputs, loss="mse", targets=None, seed=0):
    """One training step: every trainable weight gets a gradient and ``fit`` moves them.

    Args:
        model: a built model.
        inputs: one batch for ``model`` (an array, or a list of arrays for several inputs).
        loss: a Keras loss (name or object), applied to every output.
        targets: one array per output; random values in [0, 1] when not given.
        seed: seed of the random targets.
    """
    if targets is None:
        rng = np.random.default_rng(seed)
        outputs = keras.tree.flatten(model(inputs, training=False))
        targets = [rng.uniform(size=tuple(output.shape)).astype("float32") for output in outputs]
    loss_fn = keras.losses.get(loss)
    with tf.GradientTape() as tape:
        outputs = keras.tree.flatten(model(inputs, training=True))
        pairs = zip(targets, outputs, strict=True)
        total = sum(loss_fn(target, output) for target, output in pairs)
    assert model.trainable_weights, f"{model.name} has no trainable weights"
    gradients = tape.gradient(total, model.trainable_weights)
    for weight, gradient in zip(model.trainable_weights, gradients, strict=True):
        assert gradient is not None, f"no gradient reaches {weight.path}"
        gradient = keras.ops.convert_to_numpy(gradient)
        assert np.all(np.isfinite(gradient)), f"non-finite gradient for {weight.path}"
        assert np.any(gradient != 0), f"zero gradient for {weight.path}"

    before = [keras.ops.convert_to_numpy(weight) for weight in model.trainable_weights]
    model.compile(optimizer=keras.optimizers.SGD(0.01), loss=loss_fn, jit_compile=False)
    batch_size = len(keras.tree.flatten(inputs)[0])
    fit_targets = targets if len(targets) > 1 else targets[0]
    history = model.fit(inputs, fit_targets, batch_size=batch_size, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])
    after = [keras.ops.convert_to_numpy(weight) for weight in model.trainable_weights]
    assert any(not np.array_equal(a, b) for a, b in zip(after, before, strict=True))


def run_layer_test(cls, init_kwargs: dict, input_data, expected_output_shape: tuple, tmp_path):
    """Check a layer the way keras-hub's ``run_layer_test`` does.

    Args:
        cls: the layer class.
        init_kwargs: its constructor arguments.
        input_data: one array, or a tuple of arrays for a layer called on several inputs.
        expected_output_shape: the shape of the output on ``input_data``.
        tmp_path: a folder for the ``.keras`` file.
    """
    run_serialization_test(cls(**init_kwargs))
    arrays = input_data if isinstance(input_data, tuple) else (input_data,)

    layer = cls(**init_kwargs)
    symbolic = [keras.Input(batch_shape=(None, *array.shape[1:])) for array in arrays]
    symbolic_output = layer(*symbolic)
    assert layer.built
    assert tuple(symbolic_output.shape) == (None, *expected_output_shape[1:])

    eager_output = cls(**init_kwargs)(*arrays)
    assert tuple(eager_output.shape) == tuple(expected_output_shape)

    model = keras.Model(symbolic, symbolic_output)
    run_saving_test(model, list(arrays), tmp_path / f"{cls.__name__}.keras")
    run_training_test(model, list(arrays))
