"""Tests for the U-Net family builders and the ``build`` registry in kseg.models.

Each model is built once per module with tiny shapes (32x32 and 16^3, 4 base filters).
References: numpy sigmoid/softmax for the heads, hand-counted parameter totals, and the
outputs of the model before it was saved for the ``.keras`` round trip.
"""

import math

import keras
import numpy as np
import pytest

from kseg import models
from kseg.models import AttentionGate, ResidualUnit

FAMILIES = ("unet", "attention_unet", "res_unet", "unet_plus_plus", "highresnet")
SHAPES = {2: (32, 32, 1), 3: (16, 16, 16, 1)}
# Two classes in 2D and one in 3D (or the other way round) so each family meets both the
# sigmoid head and the softmax head.
NUM_CLASSES = {
    ("unet", 2): 1,
    ("unet", 3): 3,
    ("attention_unet", 2): 3,
    ("attention_unet", 3): 1,
    ("res_unet", 2): 1,
    ("res_unet", 3): 2,
    ("unet_plus_plus", 2): 2,
    ("unet_plus_plus", 3): 1,
    ("highresnet", 2): 1,
    ("highresnet", 3): 3,
}


def small_kwargs(family, spatial_dims):
    kwargs = {"input_shape": SHAPES[spatial_dims], "num_classes": NUM_CLASSES[family, spatial_dims]}
    if family != "highresnet":
        kwargs.update(depth=2, base_filters=4)
    return kwargs


def random_input(shape, seed=0, batch=2):
    return np.random.default_rng(seed).normal(size=(batch, *shape)).astype("float32")


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def softmax(x):
    shifted = np.exp(x - x.max(axis=-1, keepdims=True))
    return shifted / shifted.sum(axis=-1, keepdims=True)


@pytest.fixture(scope="module")
def head_pairs():
    """For every (family, spatial_dims): a logits model and an 'auto' model with its weights."""
    # Seeded: with unseeded initial weights, one build in a few hundred gave a 3D attention
    # U-Net whose head weights were all positive, so its logits happened to fall in [0, 1].
    keras.utils.set_random_seed(0)
    pairs = {}
    for family in FAMILIES:
        for spatial_dims in (2, 3):
            kwargs = small_kwargs(family, spatial_dims)
            logits_model = models.build(family, activation=None, **kwargs)
            probability_model = models.build(family, **kwargs)
            probability_model.set_weights(logits_model.get_weights())
            pairs[family, spatial_dims] = (logits_model, probability_model)
    return pairs


@pytest.mark.parametrize("spatial_dims", (2, 3))
@pytest.mark.parametrize("family", FAMILIES)
def test_output_shape_and_head_activation(head_pairs, family, spatial_dims):
    logits_model, probability_model = head_pairs[family, spatial_dims]
    num_classes = NUM_CLASSES[family, spatial_dims]
    x = random_input(SHAPES[spatial_dims]) * 3.0

    logits = keras.ops.convert_to_numpy(logits_model(x, training=False))
    probabilities = keras.ops.convert_to_numpy(probability_model(x, training=False))

    expected_shape = (2, *SHAPES[spatial_dims][:-1], num_classes)
    assert logits.shape == expected_shape
    assert probabilities.shape == expected_shape
    assert probabilities.dtype == np.float32
    # Logits are not squashed into [0, 1]; the probabilities are the numpy head of them.
    assert logits.min() < 0.0 or logits.max() > 1.0
    if num_classes == 1:
        np.testing.assert_allclose(probabilities, sigmoid(logits), rtol=1e-5, atol=1e-6)
        assert probabilities.min() >= 0.0 and probabilities.max() <= 1.0
    else:
        np.testing.assert_allclose(probabilities, softmax(logits), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(probabilities.sum(axis=-1), 1.0, atol=1e-5)


@pytest.mark.parametrize("family", FAMILIES)
def test_saved_model_reloads_without_custom_objects(head_pairs, family, tmp_path):
    _, model = head_pairs[family, 3 if family in ("attention_unet", "highresnet") else 2]
    spatial_dims = len(model.input_shape) - 2
    x = random_input(SHAPES[spatial_dims], seed=1)
    before = keras.ops.convert_to_numpy(model(x, training=False))

    path = tmp_path / f"{family}.keras"
    model.save(path)
    reloaded = keras.saving.load_model(path)

    after = keras.ops.convert_to_numpy(reloaded(x, training=False))
    np.testing.assert_array_equal(after, before)
    original_classes = sorted(type(layer).__name__ for layer in model.layers)
    assert sorted(type(layer).__name__ for layer in reloaded.layers) == original_classes


def test_custom_layers_are_in_the_saved_models(head_pairs):
    attention_layers = head_pairs["attention_unet", 2][0].layers
    assert sum(isinstance(layer, AttentionGate) for layer in attention_layers) == 2
    residual_layers = head_pairs["res_unet", 2][0].layers
    # encoder0, encoder1, bridge, decoder1, decoder0 for depth 2.
    assert sum(isinstance(layer, ResidualUnit) for layer in residual_layers) == 5


def conv_parameters(kernel, spatial_dims, in_channels, out_channels, bias):
    return kernel**spatial_dims * in_channels * out_channels + (out_channels if bias else 0)


def unet_parameters(in_channels, num_classes, depth, base, spatial_dims, upsampling, batch_norm):
    """Parameter count of the U-Net described in Ronneberger et al. with batch norm.

    A batch norm over c channels holds 4c numbers (gamma, beta, moving mean, moving
    variance); a convolution followed by batch norm has no bias.
    """

    def conv_block(cin, cout):
        total = 0
        for block_in in (cin, cout):
            total += conv_parameters(3, spatial_dims, block_in, cout, bias=not batch_norm)
            total += 4 * cout if batch_norm else 0
        return total

    total, channels = 0, in_channels
    for level in range(depth + 1):
        total += conv_block(channels, base * 2**level)
        channels = base * 2**level
    for level in reversed(range(depth)):
        filters = base * 2**level
        up_kernel = 2 if upsampling == "transpose" else 3
        total += conv_parameters(up_kernel, spatial_dims, channels, filters, bias=True)
        total += conv_block(2 * filters, filters)
        channels = filters
    return total + conv_parameters(1, spatial_dims, channels, num_classes, bias=True)


def test_unet_parameter_count_by_hand():
    # depth 1, 2 base filters, 1 -> 1 channel, 2D, transposed convolution, batch norm:
    # encoder 18 + 8 + 36 + 8, bottleneck 72 + 16 + 144 + 16, up 4*4*2 + 2,
    # decoder 72 + 8 + 36 + 8, head 2 + 1.
    model = models.unet((8, 8, 1), 1, depth=1, base_filters=2)
    assert model.count_params() == 70 + 248 + 34 + 124 + 3 == 479


@pytest.mark.parametrize(
    "spatial_dims, upsampling, batch_norm, in_channels, num_classes",
    [(2, "transpose", True, 1, 1), (2, "resize", False, 3, 4), (3, "transpose", True, 2, 3)],
)
def test_unet_parameter_count_matches_formula(
    spatial_dims, upsampling, batch_norm, in_channels, num_classes
):
    shape = (None,) * spatial_dims + (in_channels,)
    model = models.unet(
        shape, num_classes, depth=2, base_filters=4, upsampling=upsampling, batch_norm=batch_norm
    )
    expected = unet_parameters(in_channels, num_classes, 2, 4, spatial_dims, upsampling, batch_norm)
    assert model.count_params() == expected
    batch_norm_channels = 2 * (4 + 8 + 16 + 8 + 4) if batch_norm else 0
    non_trainable = sum(math.prod(w.shape) for w in model.non_trainable_weights)
    assert non_trainable == 2 * batch_norm_channels


def test_unet_depth_sets_the_number_of_poolings():
    small = models.build("unet_small", input_shape=(None, None, 1))
    default = models.build("unet", input_shape=(None, None, 1))
    assert [layer.name for layer in small.layers if "pool" in layer.name] == [
        "encoder0_pool",
        "encoder1_pool",
        "encoder2_pool",
    ]
    assert sum("pool" in layer.name for layer in default.layers) == 4
    # The bottleneck has base_filters * 2**depth channels.
    assert small.get_layer("bottleneck_conv2").filters == 32 * 2**3


def test_unet3d_preset_is_three_dimensional():
    model = models.build("unet3d", num_classes=2, depth=2, base_filters=4)
    assert model.input_shape == (None, None, None, None, 1)
    assert model.output_shape == (None, None, None, None, 2)
    assert isinstance(model.get_layer("encoder0_conv1"), keras.layers.Conv3D)


def test_unet_plus_plus_deep_supervision_outputs():
    single = models.unet_plus_plus((16, 16, 1), depth=3, base_filters=2)
    supervised = models.unet_plus_plus((16, 16, 1), depth=3, base_filters=2, deep_supervision=True)
    assert single.output_shape == (None, 16, 16, 1)
    assert supervised.output_shape == [(None, 16, 16, 1)] * 3
    assert supervised.output_names == ["segmentation_1", "segmentation_2", "segmentation_3"]
    # Deep supervision only adds heads: three 1x1 convolutions of 2 -> 1 channels minus one.
    assert supervised.count_params() - single.count_params() == 2 * (2 + 1)


def test_unet_plus_plus_nodes_take_all_earlier_nodes_of_their_level():
    model = models.unet_plus_plus((16, 16, 1), depth=3, base_filters=2)
    # X[0, 3] concatenates X[0, 0], X[0, 1], X[0, 2] (2 channels each) and the up-sampled
    # X[1, 2] (2 channels after the transposed convolution).
    assert model.get_layer("x0_3_conv1").kernel.shape == (3, 3, 4 * 2, 2)
    assert model.get_layer("x1_2_conv1").kernel.shape == (3, 3, 3 * 4, 4)


@pytest.mark.parametrize("family", ("unet", "attention_unet", "res_unet", "unet_plus_plus"))
def test_mc_dropout_samples_only_in_training_mode(family):
    model = models.build(family, input_shape=(16, 16, 1), depth=2, base_filters=4, dropout=0.5)
    x = random_input((16, 16, 1), seed=2)
    first, second = (keras.ops.convert_to_numpy(model(x, training=True)) for _ in range(2))
    assert not np.allclose(first, second)
    inference = [keras.ops.convert_to_numpy(model(x, training=False)) for _ in range(2)]
    np.testing.assert_array_equal(inference[0], inference[1])


def test_without_dropout_training_mode_is_deterministic():
    model = models.unet((16, 16, 1), depth=2, base_filters=4)
    x = random_input((16, 16, 1), seed=3)
    first, second = (keras.ops.convert_to_numpy(model(x, training=True)) for _ in range(2))
    np.testing.assert_array_equal(first, second)


@pytest.mark.parametrize(
    "family, kwargs",
    [
        ("unet", {"num_classes": 1}),
        ("attention_unet", {"num_classes": 3}),
        ("res_unet", {"num_classes": 1, "activation": None}),
        ("unet_plus_plus", {"num_classes": 1, "deep_supervision": True}),
        ("highresnet", {"num_classes": 2, "dropout": 0.2}),
    ],
)
def test_one_training_step_changes_weights_with_finite_loss(family, kwargs):
    shape = (16, 16, 1)
    if family != "highresnet":
        kwargs = {**kwargs, "depth": 2, "base_filters": 4}
    model = models.build(family, input_shape=shape, **kwargs)
    rng = np.random.default_rng(4)
    x = rng.normal(size=(2, *shape)).astype("float32")
    num_classes = kwargs["num_classes"]
    if num_classes == 1:
        y = (rng.random((2, *shape[:-1], 1)) > 0.5).astype("float32")
        loss = keras.losses.BinaryCrossentropy(from_logits=kwargs.get("activation", "auto") is None)
    else:
        y = rng.integers(0, num_classes, size=(2, *shape[:-1], 1))
        loss = keras.losses.SparseCategoricalCrossentropy()
    targets = [y] * len(model.outputs) if len(model.outputs) > 1 else y
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss=loss, run_eagerly=True)
    kernel_before = keras.ops.convert_to_numpy(model.trainable_weights[0])

    history = model.fit(x, targets, batch_size=2, epochs=1, verbose=0)

    assert np.isfinite(history.history["loss"][0])
    assert not np.array_equal(keras.ops.convert_to_numpy(model.trainable_weights[0]), kernel_before)


def test_build_unknown_name_lists_known_models():
    with pytest.raises(ValueError, match="unknown model name 'vnet'") as error:
        models.build("vnet")
    for name in (
        "unet",
        "unet_small",
        "attention_unet",
        "res_unet",
        "unet_plus_plus",
        "highresnet",
        "unet3d",
    ):
        assert name in str(error.value)


def test_build_passes_arguments_and_presets_can_be_overridden():
    model = models.build("unet_small", input_shape=(None, None, 2), depth=2, base_filters=2)
    assert sum("pool" in layer.name for layer in model.layers) == 2
    assert model.name == "unet_small"
    assert models.build("unet", input_shape=(8, 8, 1), depth=1, name="mine").name == "mine"


def test_numpy_numbers_from_a_hyperparameter_search_are_accepted():
    model = models.unet(
        (np.int64(16), 16, 1),
        np.int64(2),
        depth=np.int64(2),
        base_filters=4,
        dropout=np.float32(0.25),
    )
    assert model.output_shape == (None, 16, 16, 2)
    assert model.get_layer("bottleneck_dropout").rate == 0.25


@pytest.mark.parametrize("family", ("unet", "attention_unet", "res_unet", "unet_plus_plus"))
@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"depth": 0}, "depth must be an integer >= 1"),
        ({"input_shape": (30, 32, 1), "depth": 2}, r"input_shape\[0\]=30 must be divisible by 2"),
        ({"input_shape": (16, 16, 24, 1), "depth": 4}, r"input_shape\[2\]=24 .* 2\*\*depth=16"),
        ({"activation": "relu"}, "activation must be one of"),
        ({"activation": "softmax", "num_classes": 1}, "softmax' with num_classes=1"),
        ({"upsampling": "bilinear"}, "upsampling must be one of"),
        ({"dropout": 1.0}, r"dropout must be a rate in \[0, 1\)"),
        ({"num_classes": 0}, "num_classes must be an integer >= 1"),
        ({"base_filters": 2.5}, "base_filters must be an integer"),
        ({"input_shape": (16, 16, 1), "spatial_dims": 3}, "has 2 spatial axes but spatial_dims=3"),
        ({"input_shape": (16, 1)}, "input_shape must have 3 entries"),
        ({"input_shape": (16, 16, None)}, "channels"),
    ],
)
def test_invalid_arguments_name_the_argument(family, kwargs, message):
    with pytest.raises(ValueError, match=message):
        models.build(family, **kwargs)


def test_unknown_spatial_sizes_skip_the_divisibility_check():
    model = models.attention_unet((None, 32, 1), depth=5, base_filters=1)
    assert model.output_shape == (None, None, 32, 1)


@pytest.mark.parametrize("family", ("unet", "res_unet", "highresnet"))
def test_moving_statistics_catch_up_within_a_short_training(family):
    """After 60 training-mode passes over one batch, inference mode must give (nearly) the
    same output: short CPU trainings of a few hundred steps rely on it. With Keras' default
    momentum 0.99, 55 % of the initial moving variance would still be there."""
    model = models.build(family, **small_kwargs(family, 2))
    x = random_input(SHAPES[2], seed=3, batch=4) * 5.0 + 2.0
    for _ in range(60):
        model(x, training=True)
    # dropout (if any) is off in small_kwargs, so the only train/inference difference is BN
    difference = np.abs(np.asarray(model(x, training=False)) - np.asarray(model(x, training=True)))
    assert difference.mean() < 0.01


# ---- input checks -------------------------------------------------------------------------
# Before SegmentationModel, a 2D one-channel model given one (H, W, 1) image read it as H
# images of H x 1 (Keras adds a "missing" channel axis) and failed inside MaxPool or
# ConcatOp; an odd spatial size failed in ConcatOp when the skips met.


@pytest.fixture(scope="module")
def any_size_models():
    """Every family with unknown spatial sizes, 2D with 1 channel and 3D with 2 channels."""
    built = {}
    for family in FAMILIES:
        for spatial_dims, channels in ((2, 1), (3, 2)):
            kwargs = {"input_shape": (None,) * spatial_dims + (channels,), "num_classes": 2}
            if family != "highresnet":
                kwargs.update(depth=2, base_filters=2)
            built[family, spatial_dims] = models.build(family, **kwargs)
    return built


AXES = {2: "batch, height, width, channels", 3: "batch, depth, height, width, channels"}


@pytest.mark.parametrize("spatial_dims", (2, 3))
@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("entry", ("call", "predict", "predict_on_batch"))
def test_input_without_batch_axis_says_so(any_size_models, family, spatial_dims, entry):
    model = any_size_models[family, spatial_dims]
    image = np.zeros((8,) * spatial_dims + (model.input_shape[-1],), dtype="float32")
    run = {
        "call": model,
        "predict": lambda x: model.predict(x, verbose=0),
        "predict_on_batch": model.predict_on_batch,
    }[entry]
    message = rf"expects input of rank {spatial_dims + 2} \({AXES[spatial_dims]}\); got shape "
    with pytest.raises(ValueError, match=message + r".*add the batch axis"):
        run(image)
    assert run(image[None]).shape == (1,) + (8,) * spatial_dims + (2,)


def test_missing_batch_axis_message_names_the_shape_given():
    model = models.build("unet_small", input_shape=(None, None, 1), base_filters=2)
    expected = (
        "unet_small expects input of rank 4 (batch, height, width, channels); got shape "
        "(256, 256, 1): add the batch axis"
    )
    with pytest.raises(ValueError) as info:
        model(np.zeros((256, 256, 1), dtype="float32"))
    assert str(info.value).startswith(expected)


@pytest.mark.parametrize("family", ("unet", "attention_unet", "res_unet", "unet_plus_plus"))
def test_spatial_size_not_divisible_by_two_to_the_depth_says_which_axis(any_size_models, family):
    model = any_size_models[family, 3]  # depth 2: sizes must be multiples of 4
    good = np.zeros((1, 4, 8, 12, 2), dtype="float32")
    assert model(good).shape == (1, 4, 8, 12, 2)
    message = (
        r"needs spatial sizes divisible by 4.*got shape \(1, 4, 10, 12, 2\): axis 2 \(height\) "
        r"has size 10\. Pad or crop it \(e\.g\. to 12\)"
    )
    with pytest.raises(ValueError, match=message):
        model(np.zeros((1, 4, 10, 12, 2), dtype="float32"))


def test_odd_size_is_named_when_predict_runs_a_step_traced_for_any_size():
    import tensorflow as tf

    model = models.build("unet", input_shape=(None, None, 1), depth=2, base_filters=2)
    message = r"needs spatial sizes divisible by 4"
    with pytest.raises(ValueError, match=message + r".*got shape \(1, 6, 8, 1\): axis 1"):
        model.predict(np.zeros((1, 6, 8, 1), dtype="float32"), verbose=0)
    # Two shapes make Keras retrace predict with (None, None, None, 1): the sizes are only
    # known when the step runs, and the assertion must fire before the skips meet.
    for size in (8, 12):
        model.predict(np.zeros((1, size, 8, 1), dtype="float32"), verbose=0)
    with pytest.raises(tf.errors.InvalidArgumentError, match=message + r".*axis 2 \(width\)"):
        model.predict(np.zeros((1, 8, 10, 1), dtype="float32"), verbose=0)
    assert model.predict(np.zeros((2, 16, 4, 1), dtype="float32"), verbose=0).shape == (
        2,
        16,
        4,
        1,
    )


def test_highresnet_takes_any_spatial_size(any_size_models):
    model = any_size_models["highresnet", 2]
    assert model(np.zeros((1, 7, 9, 1), dtype="float32")).shape == (1, 7, 9, 2)


def test_wrong_channel_count_and_fixed_size_are_named(any_size_models):
    model = any_size_models["unet", 3]
    with pytest.raises(ValueError, match=r"expects 2 channel\(s\).*got shape \(1, 4, 4, 4, 3\)"):
        model(np.zeros((1, 4, 4, 4, 3), dtype="float32"))
    with pytest.raises(ValueError, match=r"rank 5 .*got shape \(1, 4, 4, 4\): add the channel"):
        model(np.zeros((1, 4, 4, 4), dtype="float32"))
    fixed = models.unet((16, 16, 1), depth=2, base_filters=2)
    with pytest.raises(ValueError, match=r"built for input \(None, 16, 16, 1\).*axis 1 \(height\)"):
        fixed(np.zeros((1, 32, 16, 1), dtype="float32"))


def test_one_channel_model_still_takes_a_batch_without_channel_axis(any_size_models):
    model = any_size_models["unet", 2]
    batch = np.random.default_rng(5).normal(size=(2, 8, 12)).astype("float32")
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(model(batch)),
        keras.ops.convert_to_numpy(model(batch[..., None])),
        rtol=1e-6,
    )


def test_input_checks_survive_saving_and_cloning(any_size_models, tmp_path):
    model = any_size_models["res_unet", 2]
    path = tmp_path / "res_unet.keras"
    model.save(path)
    reloaded = keras.saving.load_model(path)
    assert type(reloaded) is models.SegmentationModel and reloaded.size_divisor == 4
    with pytest.raises(ValueError, match="add the batch axis"):
        reloaded(np.zeros((8, 8, 1), dtype="float32"))
    with pytest.raises(ValueError, match="divisible by 4"):
        reloaded(np.zeros((1, 8, 6, 1), dtype="float32"))
    clone = keras.models.clone_model(model)
    assert type(clone) is models.SegmentationModel
    with pytest.raises(ValueError, match="add the batch axis"):
        clone(np.zeros((8, 8, 1), dtype="float32"))


def test_size_divisor_must_be_a_positive_integer():
    inputs = keras.Input((None, None, 1))
    outputs = keras.layers.Conv2D(1, 1)(inputs)
    for bad in (0, 2.0, True):
        with pytest.raises(ValueError, match="size_divisor"):
            models.SegmentationModel(inputs, outputs, size_divisor=bad)
