"""Tests for kseg.models.highresnet against Li et al. (2017).

References: a parameter count computed from the paper's layer list, and the receptive
field computed analytically (1 + sum of (kernel - 1) * dilation) and measured by an
impulse-response experiment.
"""

import math

import keras
import numpy as np
import pytest

from kseg.models import highresnet

# The layer list of Li et al. (2017). INITIAL and FEATURES: (kernel, dilation, output
# channels). STAGES: (output channels, dilation) of each residual block of two 3x3(x3)
# convolutions, pre-activation (BN, ReLU, conv) x 2, so their batch norms sit before the
# convolutions and are counted with the block.
INITIAL = (3, 1, 16)
STAGES = [(16, 1)] * 3 + [(32, 2)] * 3 + [(64, 4)] * 3
FEATURES = (1, 1, 80)


def paper_parameter_count(spatial_dims, in_channels, num_classes):
    """Weights of every convolution (no bias before batch norm) + 4 numbers per BN channel."""
    total = 3**spatial_dims * in_channels * INITIAL[2] + 4 * INITIAL[2]
    channels = INITIAL[2]
    for filters, _ in STAGES:
        total += 4 * channels + 3**spatial_dims * channels * filters  # BN, conv 1
        total += 4 * filters + 3**spatial_dims * filters * filters  # BN, conv 2
        channels = filters
    total += channels * FEATURES[2] + 4 * FEATURES[2]
    return total + FEATURES[2] * num_classes + num_classes


def analytic_receptive_field():
    conv_layers = [INITIAL[:2]]
    for _, dilation in STAGES:
        conv_layers += [(3, dilation), (3, dilation)]
    conv_layers += [FEATURES[:2], (1, 1)]
    return 1 + sum((kernel - 1) * dilation for kernel, dilation in conv_layers)


@pytest.fixture(scope="module")
def impulse_models():
    """Logit models whose kernels are positive, biases zero, batch norms the identity.

    With these weights every path from an input voxel to an output voxel carries a
    positive product, so an output responds to a delta exactly when the delta lies in
    its receptive field. Each kernel is 1 / (input channels) so that values along the
    longest paths neither overflow nor underflow float32.
    """
    built = {}
    for spatial_dims, shape in ((2, (99, 99, 1)), (3, (99, 5, 5, 1))):
        model = highresnet(shape, num_classes=2, activation=None)
        for weight in model.weights:
            if weight.name == "kernel":
                weight.assign(np.full(weight.shape, 1.0 / weight.shape[-2], "float32"))
            elif weight.name in ("bias", "beta", "moving_mean"):
                weight.assign(np.zeros(weight.shape, "float32"))
            elif weight.name in ("gamma", "moving_variance"):
                weight.assign(np.ones(weight.shape, "float32"))
        built[spatial_dims] = model
    return built


def responding_voxels(model, shape, centre):
    impulse = np.zeros((1, *shape), "float32")
    impulse[(0, *centre, 0)] = 1.0
    baseline = keras.ops.convert_to_numpy(model(np.zeros_like(impulse), training=False))
    response = keras.ops.convert_to_numpy(model(impulse, training=False))
    return np.any(response != baseline, axis=-1)[0]


def test_receptive_field_of_the_paper_layer_list_is_87_voxels():
    # 3x3x3 initial conv, then 9 blocks of two 3x3x3 convs at dilation 1, 2, 4: 2 + 12 +
    # 24 + 48 = 86 voxels of context, 87 with the centre voxel (the same value as
    # fepegar/highresnet's closed form 3 + sum_d 2 * 3 * 2**(d + 1), d = 0..2).
    assert analytic_receptive_field() == 87


def test_impulse_response_2d_covers_exactly_the_receptive_field(impulse_models):
    field = analytic_receptive_field()
    responding = responding_voxels(impulse_models[2], (99, 99, 1), (49, 49))
    half = field // 2
    expected = np.zeros((99, 99), bool)
    expected[49 - half : 49 + half + 1, 49 - half : 49 + half + 1] = True
    np.testing.assert_array_equal(responding, expected)
    assert responding[49].sum() == field


def test_impulse_response_3d_spans_the_receptive_field_along_depth(impulse_models):
    responding = responding_voxels(impulse_models[3], (99, 5, 5, 1), (49, 2, 2))
    depth_profile = responding.any(axis=(1, 2))
    (indices,) = np.nonzero(depth_profile)
    assert indices.min() == 49 - 43 and indices.max() == 49 + 43
    assert depth_profile.sum() == analytic_receptive_field()


@pytest.mark.parametrize(
    "spatial_dims, in_channels, num_classes", [(3, 1, 160), (3, 2, 2), (2, 1, 4)]
)
def test_parameter_count_matches_the_paper_layer_list(spatial_dims, in_channels, num_classes):
    shape = (None,) * spatial_dims + (in_channels,)
    model = highresnet(shape, num_classes=num_classes)
    assert model.count_params() == paper_parameter_count(spatial_dims, in_channels, num_classes)
    # Residual connections are parameter-free (zero-padded channels): no 1x1 projections.
    assert not any("shortcut" in weight.path for weight in model.weights)


def test_fully_convolutional_any_input_size():
    model = highresnet((None, None, None, 1), num_classes=3, dropout=0.5)
    for size in ((7, 9, 5), (12, 3, 10)):
        output = model(np.zeros((1, *size, 1), "float32"), training=False)
        assert tuple(output.shape) == (1, *size, 3)
        np.testing.assert_allclose(keras.ops.convert_to_numpy(output).sum(-1), 1.0, atol=1e-5)


def test_two_dimensional_variant_uses_2d_convolutions():
    model = highresnet((24, 24, 1), num_classes=1)
    assert model.output_shape == (None, 24, 24, 1)
    kernels = [w for w in model.weights if w.name == "kernel"]
    assert all(len(w.shape) == 4 for w in kernels)
    assert math.prod(kernels[0].shape[:2]) == 9


def test_mc_dropout_samples_only_in_training_mode():
    model = highresnet((8, 8, 8, 1), num_classes=2, dropout=0.5)
    x = np.random.default_rng(0).normal(size=(1, 8, 8, 8, 1)).astype("float32")
    first, second = (keras.ops.convert_to_numpy(model(x, training=True)) for _ in range(2))
    assert not np.allclose(first, second)
    inference = [keras.ops.convert_to_numpy(model(x, training=False)) for _ in range(2)]
    np.testing.assert_array_equal(inference[0], inference[1])


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"input_shape": (8, 8, 1, 1, 1)}, "input_shape must have 3 entries"),
        ({"num_classes": 0}, "num_classes must be an integer >= 1"),
        ({"dropout": -0.1}, "dropout must be a rate"),
        ({"activation": "tanh"}, "activation must be one of"),
        ({"input_shape": (8, 8, 8, 1), "spatial_dims": 2}, "spatial_dims=2"),
    ],
)
def test_invalid_arguments_name_the_argument(kwargs, message):
    with pytest.raises(ValueError, match=message):
        highresnet(**kwargs)
