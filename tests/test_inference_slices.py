"""predict_slices with fixed-weight Keras models against numpy."""

import keras
import numpy as np
import pytest
from child_processes import run_forked

from kseg.inference import predict_slices


def pointwise_conv_model(kernel, bias):
    inputs = keras.Input((None, None, kernel.shape[0]))
    conv = keras.layers.Conv2D(kernel.shape[1], 1)
    model = keras.Model(inputs, conv(inputs))
    conv.set_weights([kernel[None, None], bias])
    return model


def test_pointwise_conv_over_every_slice_equals_numpy():
    rng = np.random.default_rng(1)
    volume = rng.normal(size=(5, 6, 7, 2)).astype(np.float32)
    kernel = rng.normal(size=(2, 3)).astype(np.float32)
    bias = np.array([0.5, -1.0, 2.0], dtype=np.float32)
    # batch_size 2 over 5 slices leaves a partial last batch
    output = predict_slices(
        pointwise_conv_model(kernel, bias), volume, batch_size=2, progress=False
    )
    expected = np.einsum("zhwc,ck->zhwk", volume, kernel) + bias
    assert output.shape == (5, 6, 7, 3)
    np.testing.assert_allclose(output, expected, rtol=1e-5, atol=1e-5)


def test_slice_dependent_callable_keeps_slice_order():
    volume = np.arange(4, dtype=np.float32)[:, None, None, None] * np.ones((4, 3, 3, 1))
    seen_shapes = []

    def double(batch):
        seen_shapes.append(batch.shape)
        return 2 * batch

    output = predict_slices(double, volume, batch_size=3, progress=False)
    np.testing.assert_array_equal(output, 2 * volume)
    assert seen_shapes == [(3, 3, 3, 1), (1, 3, 3, 1)]  # the 2D model sees plain 2D batches


def test_rejects_volume_without_channel_axis():
    with pytest.raises(ValueError, match=r"\(Z, H, W, C\)"):
        predict_slices(lambda b: b, np.zeros((4, 3, 3)), progress=False)


_MODELS_IN_ONE_PROCESS = """
import keras, numpy as np, tensorflow as tf
from kseg.inference import predict_slices

volume = np.zeros((5, 8, 8, 1), np.float32)  # batches of 2, 2 and 1 slices: two traces
for seed in range(4):  # as a fold ensemble or a model loaded per split does
    keras.utils.set_random_seed(seed)
    model = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Conv2D(1, 3, padding="same")])
    predict_slices(model, volume, batch_size=2, progress=False)

doubled = tf.function(lambda x: 2 * x)  # a user's own function, retraced on every shape
for size in range(1, 7):
    doubled(tf.zeros((size,)))
"""


def test_keras_predict_traces_counted_across_models_do_not_warn_others_still_do(
    tmp_path, zygote
):
    # A process that never traced a function (forked from one that only imported
    # TensorFlow): TensorFlow warns at most twice per function for the whole process.
    returncode, _, stderr = run_forked(
        zygote, _MODELS_IN_ONE_PROCESS, stderr_path=tmp_path / "child.stderr"
    )
    assert returncode == 0, stderr[-3000:]
    retracing = [line for line in stderr.splitlines() if "triggered tf.function retracing" in line]
    assert retracing, stderr[-2000:]
    assert all("<lambda>" in line for line in retracing), retracing
