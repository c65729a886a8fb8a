"""Tests for the custom layers of kseg.models: AttentionGate and ResidualUnit.

References: the layers' equations evaluated in numpy with the same weights (1x1 kernels
make every convolution a matrix product); build, serialisation, saving and a training step
through the shared harness in tests/keras_harness.py.
"""

import keras
import numpy as np
import pytest
from keras_harness import run_layer_test

from kseg.models import AttentionGate, ResidualUnit

EPSILON = 1e-3  # keras.layers.BatchNormalization's default


def relu(x):
    return np.maximum(x, 0.0)


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def random(rng, *shape):
    return rng.normal(size=shape).astype("float32")


def test_attention_gate_matches_oktay_equations():
    rng = np.random.default_rng(0)
    skip, gating = random(rng, 2, 4, 5, 3), random(rng, 2, 4, 5, 6)
    gate = AttentionGate(inter_channels=2, spatial_dims=2)
    gate(skip, gating)
    w_x, w_g, b_g = random(rng, 3, 2), random(rng, 6, 2), random(rng, 2)
    psi, b_psi = random(rng, 2, 1), random(rng, 1)
    gate.skip_projection.kernel.assign(w_x[None, None])
    gate.gating_projection.kernel.assign(w_g[None, None])
    gate.gating_projection.bias.assign(b_g)
    gate.attention.kernel.assign(psi[None, None])
    gate.attention.bias.assign(b_psi)

    output = keras.ops.convert_to_numpy(gate(skip, gating))

    alpha = sigmoid(relu(skip @ w_x + gating @ w_g + b_g) @ psi + b_psi)
    np.testing.assert_allclose(output, skip * alpha, rtol=1e-5, atol=1e-6)
    # W_x carries no bias: eq. 1 of the paper has one additive bias, b_g.
    assert gate.skip_projection.bias is None


def test_attention_gate_3d_keeps_the_skip_shape():
    gate = AttentionGate(inter_channels=4, spatial_dims=3)
    output = gate(np.ones((1, 4, 6, 8, 5), "float32"), np.ones((1, 4, 6, 8, 7), "float32"))
    assert tuple(output.shape) == (1, 4, 6, 8, 5)
    assert gate.compute_output_shape((1, 4, 6, 8, 5), (1, 4, 6, 8, 7)) == (1, 4, 6, 8, 5)


def test_attention_gate_rejects_gating_on_another_grid():
    gate = AttentionGate(inter_channels=4, spatial_dims=2, name="gate")
    with pytest.raises(ValueError, match="gate: skip .* must share their spatial size"):
        gate(np.ones((1, 8, 8, 2), "float32"), np.ones((1, 4, 4, 2), "float32"))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"inter_channels": 0}, "inter_channels must be an integer >= 1"),
        ({"inter_channels": 2, "spatial_dims": 1}, "spatial_dims must be 2 or 3"),
    ],
)
def test_attention_gate_invalid_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        AttentionGate(**kwargs)


def batch_norm(x, gamma, beta, mean, variance):
    return gamma * (x - mean) / np.sqrt(variance + EPSILON) + beta


def random_batch_norm(rng, layer, channels):
    stats = {
        "gamma": rng.uniform(0.5, 2.0, channels).astype("float32"),
        "beta": random(rng, channels),
        "moving_mean": random(rng, channels),
        "moving_variance": rng.uniform(0.5, 2.0, channels).astype("float32"),
    }
    for name, value in stats.items():
        getattr(layer, name).assign(value)
    return stats["gamma"], stats["beta"], stats["moving_mean"], stats["moving_variance"]


@pytest.mark.parametrize("preactivate", (True, False))
def test_residual_unit_matches_preactivation_equations(preactivate):
    rng = np.random.default_rng(1)
    x = random(rng, 2, 5, 5, 4)
    unit = ResidualUnit(6, spatial_dims=2, kernel_size=1, strides=2, preactivate=preactivate)
    unit(x)
    w1, w2, w_shortcut = random(rng, 4, 6), random(rng, 6, 6), random(rng, 4, 6)
    for conv, weights in zip((*unit.convs, unit.shortcut_conv), (w1, w2, w_shortcut), strict=True):
        conv.kernel.assign(weights[None, None])
    norms = [random_batch_norm(rng, norm, norm.gamma.shape[0]) for norm in unit.norms]
    shortcut_norm = random_batch_norm(rng, unit.shortcut_norm, 6)

    output = keras.ops.convert_to_numpy(unit(x, training=False))

    # A 1x1 convolution with stride 2 and 'same' padding samples every other pixel.
    strided = x[:, ::2, ::2]
    h = relu(batch_norm(strided, *norms[0])) if preactivate else strided
    h = relu(batch_norm(h @ w1, *norms[-1])) @ w2
    expected = h + batch_norm(strided @ w_shortcut, *shortcut_norm)
    np.testing.assert_allclose(output, expected, rtol=1e-4, atol=1e-5)
    assert len(unit.norms) == (2 if preactivate else 1)


def test_residual_unit_without_batch_norm_has_biases_and_no_norms():
    rng = np.random.default_rng(2)
    x = random(rng, 1, 3, 3, 2, 3)
    unit = ResidualUnit(3, spatial_dims=3, kernel_size=1, batch_norm=False)
    unit(x)
    w1, w2, b1, b2 = random(rng, 3, 3), random(rng, 3, 3), random(rng, 3), random(rng, 3)
    for conv, kernel, bias in zip(unit.convs, (w1, w2), (b1, b2), strict=True):
        conv.kernel.assign(kernel[None, None, None])
        conv.bias.assign(bias)

    output = keras.ops.convert_to_numpy(unit(x))

    # Same channels, stride 1: the shortcut is the identity.
    expected = relu(relu(x) @ w1 + b1) @ w2 + b2 + x
    np.testing.assert_allclose(output, expected, rtol=1e-5, atol=1e-5)
    assert unit.norms == [] and unit.shortcut_conv is None


def test_residual_unit_pad_shortcut_splits_zero_channels_around_the_input():
    rng = np.random.default_rng(3)
    x = random(rng, 1, 4, 4, 4)
    unit = ResidualUnit(7, spatial_dims=2, shortcut="pad")
    unit(x)
    for conv in unit.convs:
        conv.kernel.assign(np.zeros(conv.kernel.shape, "float32"))

    output = keras.ops.convert_to_numpy(unit(x, training=False))

    # 3 missing channels: 1 before the input's 4, 2 after (NiftyNet's split).
    expected = np.concatenate([np.zeros((1, 4, 4, 1)), x, np.zeros((1, 4, 4, 2))], axis=-1)
    np.testing.assert_array_equal(output, expected)
    assert unit.shortcut_conv is None


@pytest.mark.parametrize("size", (5, 8))
def test_residual_unit_output_shape_matches_its_output(size):
    unit = ResidualUnit(8, spatial_dims=3, strides=2)
    x = np.zeros((1, size, size, 3, 2), "float32")
    assert unit.compute_output_shape(x.shape) == tuple(unit(x).shape)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"filters": 0}, "filters must be an integer >= 1"),
        ({"filters": 4, "strides": 2, "dilation_rate": 2}, "cannot both stride and dilate"),
        ({"filters": 4, "shortcut": "pad", "strides": 2}, "shortcut='pad' cannot down-sample"),
        ({"filters": 4, "shortcut": "identity"}, "shortcut must be one of"),
        ({"filters": 4, "spatial_dims": 4}, "spatial_dims must be 2 or 3"),
    ],
)
def test_residual_unit_invalid_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ResidualUnit(**kwargs)


def test_residual_unit_pad_cannot_drop_channels():
    unit = ResidualUnit(2, shortcut="pad", name="narrowing")
    with pytest.raises(ValueError, match="narrowing: shortcut='pad' needs filters >= input"):
        unit(np.zeros((1, 4, 4, 3), "float32"))


@pytest.mark.parametrize(
    "cls, init_kwargs, input_shapes, expected_output_shape",
    [
        (AttentionGate, {"inter_channels": 3, "spatial_dims": 3}, [(2, 4, 4, 4, 5)] * 2,
         (2, 4, 4, 4, 5)),
        (AttentionGate, {"inter_channels": 2}, [(2, 6, 6, 3), (2, 6, 6, 4)], (2, 6, 6, 3)),
        (
            ResidualUnit,
            {
                "filters": 5,
                "spatial_dims": 3,
                "kernel_size": 5,
                "dilation_rate": 2,
                "shortcut": "pad",
                "preactivate": False,
                "batch_norm": False,
            },
            [(2, 6, 6, 6, 3)],
            (2, 6, 6, 6, 5),
        ),
        (ResidualUnit, {"filters": 4, "strides": 2}, [(2, 6, 6, 3)], (2, 3, 3, 4)),
    ],
    ids=["gate-3d", "gate-2d", "unit-pad-dilated-3d", "unit-strided-projection"],
)
def test_layer_harness(cls, init_kwargs, input_shapes, expected_output_shape, tmp_path):
    rng = np.random.default_rng(4)
    arrays = tuple(random(rng, *shape) for shape in input_shapes)
    input_data = arrays if len(arrays) > 1 else arrays[0]
    run_layer_test(cls, init_kwargs, input_data, expected_output_shape, tmp_path)


@pytest.mark.parametrize("family", ("highresnet", "attention_unet", "res_unet"))
def test_mixed_precision_model_reloads_in_a_float32_process(family, tmp_path):
    """Custom layers pass their dtype policy to their sublayers: a model trained with
    mixed_float16 (on a GPU) must load for float32 inference elsewhere."""
    import kseg
    from kseg import models

    kwargs = {"input_shape": (16, 16, 1), "num_classes": 2}
    if family != "highresnet":
        kwargs.update(depth=2, base_filters=4)
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        model = models.build(family, **kwargs)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    path = tmp_path / "mixed.keras"
    model.save(path)
    x = np.random.default_rng(0).random((1, 16, 16, 1), dtype=np.float32)
    reloaded = kseg.load_model(path)
    np.testing.assert_allclose(reloaded(x), model(x), atol=1e-2)
