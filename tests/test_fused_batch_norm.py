"""FusedBatchNormalization against the stock keras.layers.BatchNormalization: the same
outputs, gradients and moving statistics with the same weights and inputs, the fused op
actually used where it applies (and not where it does not), and saved models, old and new,
reloading in a fresh process with oneDNN off."""

import json
import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf

from kseg.models import FusedBatchNormalization, _building_blocks, build

TESTS = os.path.dirname(os.path.abspath(__file__))


def _run(layer_class, shape, policy="float32", **layer_kwargs):
    """Two training steps (batch norm then ReLU, as in kseg's blocks, inside a tf.function
    as in ``fit``), then inference and a frozen layer; every result as numpy float32."""
    rng = np.random.default_rng(0)
    channels = shape[layer_kwargs.get("axis", -1)]
    layer = layer_class(momentum=0.9, dtype=policy, **layer_kwargs)
    layer.build(shape)
    if layer.scale:
        layer.gamma.assign(rng.uniform(0.5, 2.0, channels))
    if layer.center:
        layer.beta.assign(rng.normal(size=channels))
    layer.moving_mean.assign(rng.normal(size=channels))
    layer.moving_variance.assign(rng.uniform(0.5, 2.0, channels))
    inputs = [tf.constant(rng.normal(3.0, 2.0, shape), tf.float32) for _ in range(2)]
    upstream = tf.constant(rng.normal(size=shape), tf.float32)

    @tf.function
    def train_step(x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = layer(x, training=True)
            loss = tf.reduce_sum(tf.nn.relu(tf.cast(y, tf.float32)) * upstream)
        return y, tape.gradient(loss, [x, *layer.trainable_weights])

    result = {}
    for step, x in enumerate(inputs):
        y, gradients = train_step(x)
        result[f"train output {step}"] = y
        for index, gradient in enumerate(gradients):
            result[f"gradient {index} step {step}"] = gradient
    result["moving_mean"] = layer.moving_mean
    result["moving_variance"] = layer.moving_variance
    result["inference output"] = tf.function(lambda x: layer(x, training=False))(inputs[0])
    layer.trainable = False  # Keras: a frozen batch norm runs in inference mode
    result["frozen output"] = tf.function(lambda x: layer(x, training=True))(inputs[1])
    result["frozen moving_mean"] = layer.moving_mean
    fused_ops = [
        op.type for op in train_step.get_concrete_function(inputs[0]).graph.get_operations()
        if op.type.startswith("FusedBatchNorm")
    ]
    return {k: np.asarray(keras.ops.convert_to_numpy(v), np.float32) for k, v in result.items()}, (
        fused_ops
    )


def _max_differences(shape, policy="float32", **layer_kwargs):
    """Largest |fused - stock| per result, relative to the stock result's scale."""
    stock, _ = _run(keras.layers.BatchNormalization, shape, policy, **layer_kwargs)
    fused, fused_ops = _run(FusedBatchNormalization, shape, policy, **layer_kwargs)
    differences = {
        key: float(np.max(np.abs(fused[key] - stock[key])) / max(1.0, np.max(np.abs(stock[key]))))
        for key in stock
    }
    return differences, fused_ops


CASES = {
    "2d float32": ((4, 6, 5, 3), "float32", {}),
    "3d float32": ((2, 3, 4, 5, 3), "float32", {}),
    "2d no center, no scale": ((4, 6, 5, 3), "float32", {"center": False, "scale": False}),
    "2d mixed_bfloat16": ((4, 6, 5, 3), "mixed_bfloat16", {}),
    "3d mixed_float16": ((2, 3, 4, 5, 3), "mixed_float16", {}),
}
# bfloat16 keeps 8 bits of mantissa: one rounding step of an output of ~3 is 0.0156.
TOLERANCE = {"float32": 1e-5, "mixed_float16": 2e-3, "mixed_bfloat16": 2e-2}


@pytest.mark.parametrize("case", CASES)
def test_fused_matches_stock_layer_and_uses_the_fused_op(case):
    shape, policy, kwargs = CASES[case]
    differences, fused_ops = _max_differences(shape, policy, **kwargs)
    assert fused_ops, "the fused layer did not run TensorFlow's FusedBatchNorm op"
    worst = {k: v for k, v in differences.items() if v > TOLERANCE[policy]}
    assert not worst, f"{case}: fused differs from stock keras BatchNormalization: {worst}"


FALLBACKS = {
    "channels first": ((4, 3, 6, 5), {"axis": 1}),
    "rank 3": ((4, 7, 3), {}),
    "epsilon below the fused op's floor": ((4, 6, 5, 3), {"epsilon": 1e-6}),
    "renorm": ((4, 6, 5, 3), {"renorm": True}),
}


@pytest.mark.parametrize("case", FALLBACKS)
def test_unsupported_configurations_fall_back_to_the_stock_computation(case):
    shape, kwargs = FALLBACKS[case]
    differences, fused_ops = _max_differences(shape, **kwargs)
    assert not fused_ops, f"{case}: the fused op ran where it cannot match Keras"
    assert max(differences.values()) == 0.0, differences


def test_masked_inputs_fall_back_to_the_stock_computation():
    # the fused op has no mask; Keras leaves masked positions out of the batch statistics
    rng = np.random.default_rng(0)
    x = tf.constant(rng.normal(size=(2, 4, 6, 3)), tf.float32)
    mask = tf.constant(rng.random((2, 4, 6)) > 0.3)
    stock, fused = keras.layers.BatchNormalization(), FusedBatchNormalization()
    np.testing.assert_array_equal(fused(x, mask=mask, training=True),
                                  stock(x, mask=mask, training=True))
    np.testing.assert_array_equal(fused.moving_variance.numpy(), stock.moving_variance.numpy())


def test_moving_variance_takes_the_biased_batch_variance():
    # Hand-worked: one channel, values 0 and 2 -> mean 1, biased variance 1 (the fused op
    # reports the unbiased 2). Momentum 0.5 from the initial (0, 1): mean 0.5, variance 1.
    layer = FusedBatchNormalization(momentum=0.5, epsilon=1e-3)
    layer(tf.constant([0.0, 2.0], shape=(2, 1, 1, 1)), training=True)
    np.testing.assert_allclose(layer.moving_mean.numpy(), [0.5], rtol=1e-6)
    np.testing.assert_allclose(layer.moving_variance.numpy(), [1.0], rtol=1e-6)


def test_kseg_models_use_the_fused_layer_with_stock_weight_names():
    model = build("unet", input_shape=(16, 16, 1), depth=1, base_filters=4)
    norms = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
    assert norms and all(type(layer) is FusedBatchNormalization for layer in norms)
    assert norms[0].momentum == _building_blocks.BATCH_NORM_MOMENTUM
    assert [w.path.split("/")[-1] for w in norms[0].weights] == [
        "gamma", "beta", "moving_mean", "moving_variance"
    ]


def _models(monkeypatch):
    """A 2D and a 3D U-Net with random weights (moving statistics too), each also rebuilt
    with the stock layer (as models saved before kseg used the fused one) and given the same
    weights; the 3D stock one is compared here, not reloaded, to keep the child short."""
    rng = np.random.default_rng(0)
    models = {}
    for key, shape in (("2d", (16, 16, 1)), ("3d", (8, 8, 8, 1))):
        model = build("unet", input_shape=shape, depth=1, base_filters=4, num_classes=2)
        model.set_weights([
            rng.uniform(0.5, 2.0, w.shape) if w.path.endswith("variance")
            else rng.normal(0.0, 0.5, w.shape)
            for w in model.weights
        ])
        with monkeypatch.context() as patch:
            patch.setattr(_building_blocks, "FusedBatchNormalization",
                          keras.layers.BatchNormalization)
            stock = build("unet", input_shape=shape, depth=1, base_filters=4, num_classes=2)
        # the same variable names and shapes: a checkpoint of one loads into the other
        assert [w.path for w in stock.weights] == [w.path for w in model.weights]
        stock.set_weights(model.get_weights())
        models[key] = (model, stock, rng.normal(size=(2, *shape)).astype(np.float32))
    return models


def test_saved_models_reload_in_a_fresh_process_with_onednn_off(tmp_path, monkeypatch):
    expected = {}
    for key, (model, stock, x) in _models(monkeypatch).items():
        predictions = {"fused": model.predict_on_batch(x), "stock": stock.predict_on_batch(x)}
        np.testing.assert_allclose(predictions["fused"], predictions["stock"],
                                   rtol=1e-5, atol=1e-6, err_msg=key)
        for kind, one in (("fused", model), ("stock", stock))[: 2 if key == "2d" else 1]:
            one.save(tmp_path / f"{key}_{kind}.keras")
            expected[f"{key}_{kind}"] = predictions[kind]
        np.save(tmp_path / f"{key}_x.npy", x)
    script = textwrap.dedent(
        f"""
        import json, pathlib, sys
        import numpy as np
        import kseg
        from kseg import _runtime
        sys.path.insert(0, {TESTS!r})
        from test_fused_batch_norm import CASES, _max_differences
        folder = pathlib.Path({str(tmp_path)!r})
        classes = {{}}
        for key, kind in (("2d", "fused"), ("2d", "stock"), ("3d", "fused")):
            x = np.load(folder / f"{{key}}_x.npy")
            model = kseg.load_model(folder / f"{{key}}_{{kind}}.keras")
            classes[f"{{key}}_{{kind}}"] = sorted(
                {{type(layer).__module__ for layer in model.layers if "Normalization" in
                 type(layer).__name__}})
            np.save(folder / f"{{key}}_{{kind}}_reloaded.npy", model.predict_on_batch(x))
        differences = {{case: _max_differences(*CASES[case][:2], **CASES[case][2])[0]
                       for case in ("2d float32", "3d float32")}}
        print(json.dumps({{"onednn": _runtime._onednn_enabled(), "classes": classes,
                          "differences": differences}}))
        """
    )
    environment = dict(os.environ, TF_ENABLE_ONEDNN_OPTS="0", KSEG_RUNTIME_DEFAULTS="0",
                       TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="")
    completed = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                               env=environment, cwd=os.path.dirname(TESTS), check=False)
    assert completed.returncode == 0, completed.stderr[-3000:]
    report = json.loads(completed.stdout.strip().splitlines()[-1])
    assert report["onednn"] is False, "the child was meant to run with oneDNN off"
    fused, stock = ["kseg.models.normalization"], [keras.layers.BatchNormalization.__module__]
    assert report["classes"] == {"2d_fused": fused, "2d_stock": stock, "3d_fused": fused}
    for case, differences in report["differences"].items():
        worst = {k: v for k, v in differences.items() if v > TOLERANCE["float32"]}
        assert not worst, f"oneDNN off, {case}: fused differs from stock: {worst}"
    for name, prediction in expected.items():
        # oneDNN on here, off there: the convolutions round differently
        np.testing.assert_allclose(np.load(tmp_path / f"{name}_reloaded.npy"), prediction,
                                   rtol=1e-4, atol=1e-5, err_msg=name)


def test_residual_units_saved_with_the_stock_layer_load_with_the_same_output(tmp_path,
                                                                             monkeypatch):
    """ResidualUnit rebuilds its norms from its own config, so they come back as kseg's
    layer; Keras finds their saved weights by class name, which therefore stays
    ``BatchNormalization`` (a model saved before kseg's layer existed must still load)."""
    import kseg

    with monkeypatch.context() as patch:
        patch.setattr(_building_blocks, "FusedBatchNormalization",
                      keras.layers.BatchNormalization)
        old = build("res_unet", input_shape=(16, 16, 1), depth=1, base_filters=4,
                    num_classes=2)
    assert not any(isinstance(layer, FusedBatchNormalization)
                   for layer in old._flatten_layers())
    rng = np.random.default_rng(3)
    old.set_weights([rng.uniform(0.5, 2.0, w.shape) if w.path.endswith("variance")
                     else rng.normal(0.0, 0.5, w.shape) for w in old.weights])  # fmt: skip
    old.save(tmp_path / "old.keras")
    x = rng.normal(size=(2, 16, 16, 1)).astype(np.float32)
    loaded = kseg.load_model(tmp_path / "old.keras")
    assert any(isinstance(layer, FusedBatchNormalization) for layer in loaded._flatten_layers())
    np.testing.assert_allclose(loaded.predict_on_batch(x), old.predict_on_batch(x),
                               rtol=1e-5, atol=1e-6)
