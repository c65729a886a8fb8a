"""kseg.models.dilated_conv: the same convolution as keras.layers.Conv3D, one oneDNN call.

Reference: the stock ``keras.layers.Conv3D`` with the same weights (Keras runs the
dilation as SpaceToBatchND -> Conv3D -> BatchToSpaceND), in this process (oneDNN on, the
direct path) and in fresh processes with oneDNN off, where TensorFlow's Conv3D refuses
dilations and the layer must fall back.
"""

import itertools
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf
from child_processes import run_forked

import kseg
from kseg.models import dilated_conv, highresnet
from kseg.models.dilated_conv import Conv3D as DilatedConv3D

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RNG = np.random.default_rng(0)


def _pair(**kwargs):
    """A DilatedConv3D and a stock Conv3D holding the same random weights."""
    layers = DilatedConv3D(**kwargs), keras.layers.Conv3D(**kwargs)
    for layer in layers:
        layer.build((None, 9, 10, 11, 3))
    for weight in layers[0].weights:
        weight.assign(RNG.normal(size=weight.shape).astype("float32"))
    layers[1].set_weights(layers[0].get_weights())
    return layers


def _graph_ops(layer, x) -> set[str]:
    return {op.type for op in tf.function(layer).get_concrete_function(x).graph.get_operations()}


@pytest.mark.parametrize(
    "kwargs",
    [
        {"filters": 4, "kernel_size": 3, "dilation_rate": 2, "padding": "same", "use_bias": False},
        {"filters": 5, "kernel_size": 3, "dilation_rate": (4, 2, 1), "padding": "same"},
        {"filters": 2, "kernel_size": 2, "dilation_rate": 3, "padding": "valid"},
    ],
)
def test_same_output_as_stock_conv3d(kwargs):
    ours, stock = _pair(**kwargs)
    x = RNG.normal(size=(2, 9, 10, 11, 3)).astype("float32")
    expected = keras.ops.convert_to_numpy(stock(x))
    np.testing.assert_allclose(keras.ops.convert_to_numpy(ours(x)), expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(tf.function(ours)(x).numpy(), expected, rtol=1e-5, atol=1e-5)


def test_takes_the_direct_path_only_where_it_applies():
    # This process runs with oneDNN on (kseg's default, tests import kseg first).
    assert dilated_conv.direct_dilation_supported()
    x = tf.zeros((1, 9, 10, 11, 3))
    dilated, _ = _pair(filters=2, kernel_size=3, dilation_rate=2, padding="same")
    assert "SpaceToBatchND" not in _graph_ops(dilated, x)
    # A float16 input is left to Keras' own path (the direct call is measured in float32).
    half = DilatedConv3D(2, 3, dilation_rate=2, padding="same", dtype="float16")
    assert "SpaceToBatchND" in _graph_ops(half, tf.zeros((1, 9, 10, 11, 3), "float16"))


def test_config_and_variables_are_conv3d_s():
    layer = DilatedConv3D(4, 3, dilation_rate=2, padding="same", name="conv1")
    layer.build((None, 8, 8, 8, 2))
    stock = keras.layers.Conv3D(4, 3, dilation_rate=2, padding="same", name="conv1")
    stock.build((None, 8, 8, 8, 2))
    assert layer.get_config() == stock.get_config()
    assert [(w.path, w.shape) for w in layer.weights] == [(w.path, w.shape) for w in stock.weights]
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(layer))
    assert type(restored) is DilatedConv3D


def test_highresnet_uses_it_for_the_dilated_stages_with_unchanged_weight_paths(monkeypatch):
    model = highresnet((None, None, None, 1), num_classes=2)
    dilated = {layer.path for layer in model._flatten_layers() if isinstance(layer, DilatedConv3D)}
    stages = itertools.product((2, 3), (1, 2, 3), (1, 2))  # dilation 2 and 4; blocks; convs
    assert dilated == {f"stage{s}_block{b}/conv{c}" for s, b, c in stages}
    monkeypatch.setattr(dilated_conv, "Conv3D", keras.layers.Conv3D)
    stock = highresnet((None, None, None, 1), num_classes=2)
    assert [(w.path, w.shape) for w in model.weights] == [(w.path, w.shape) for w in stock.weights]


def test_model_saved_with_stock_conv3d_loads_with_the_same_output(tmp_path, monkeypatch):
    # The code before kseg's Conv3D built the dilated stages from keras.layers.Conv3D.
    with monkeypatch.context() as patch:
        patch.setattr(dilated_conv, "Conv3D", keras.layers.Conv3D)
        old = highresnet((None, None, None, 1), num_classes=2, activation=None)
    # Batch norms away from the identity, so a weight left at its initial value would show.
    for weight in old.weights:
        if weight.name in ("gamma", "moving_variance"):
            weight.assign(RNG.uniform(0.5, 1.5, size=weight.shape).astype("float32"))
        elif weight.name in ("beta", "moving_mean"):
            weight.assign(RNG.normal(scale=0.1, size=weight.shape).astype("float32"))
    x = RNG.normal(size=(1, 12, 12, 12, 1)).astype("float32")
    expected = keras.ops.convert_to_numpy(old(x, training=False))
    old.save(tmp_path / "old.keras")
    loaded = kseg.load_model(tmp_path / "old.keras")
    assert any(isinstance(layer, DilatedConv3D) for layer in loaded._flatten_layers())
    # 21 convolutions summed in another order: float32 rounding, relative to the output scale
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(loaded(x, training=False)), expected,
        rtol=1e-4, atol=1e-4 * np.abs(expected).max(),
    )  # fmt: skip


_CHILD = """
import sys
import numpy as np
import kseg, keras
from kseg.models import dilated_conv
from kseg.models.dilated_conv import Conv3D as DilatedConv3D
x = np.random.default_rng(0).normal(size=(1, 9, 10, 11, 3)).astype("float32")
model = keras.Sequential([keras.Input((9, 10, 11, 3)),
                          DilatedConv3D(4, 3, dilation_rate=2, padding="same", name="dilated")])
stock = keras.layers.Conv3D(4, 3, dilation_rate=2, padding="same")
stock.build((None, 9, 10, 11, 3))
stock.set_weights(model.layers[0].get_weights())
model.save(sys.argv[1])
loaded = kseg.load_model(sys.argv[1])
difference = np.abs(keras.ops.convert_to_numpy(loaded.predict_on_batch(x))
                    - keras.ops.convert_to_numpy(stock(x))).max()
print(dilated_conv.direct_dilation_supported(), type(loaded.layers[0]) is DilatedConv3D,
      difference < 1e-5)
"""


def test_falls_back_with_onednn_off_and_reloads_in_a_fresh_process(tmp_path, zygote):
    env = dict(os.environ, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES="")
    env.pop("TF_ENABLE_ONEDNN_OPTS", None)
    # oneDNN off needs an interpreter of its own, TensorFlow reads the variable at import
    off = subprocess.Popen(
        [sys.executable, "-c", _CHILD, str(tmp_path / "off.keras")],
        env=dict(env, TF_ENABLE_ONEDNN_OPTS="0", KSEG_RUNTIME_DEFAULTS="0"),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    # kseg's default is what the worker's zygote imported TensorFlow with
    returncode, stdout, stderr = run_forked(
        zygote, _CHILD, [tmp_path / "on.keras"], stderr_path=tmp_path / "on.stderr",
        environment=env,
    )  # fmt: skip
    assert returncode == 0, f"oneDNN on: {stderr[-2000:]}"
    outputs = {"oneDNN on (kseg's default)": stdout.strip().splitlines()[-1]}
    stdout, stderr = off.communicate(timeout=300)
    assert off.returncode == 0, f"oneDNN off: {stderr[-2000:]}"
    outputs["oneDNN off"] = stdout.strip().splitlines()[-1]
    assert outputs == {
        "oneDNN on (kseg's default)": "True True True",
        "oneDNN off": "False True True",
    }
