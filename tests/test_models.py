"""Tests for the U-Net family builders and the ``build`` registry in kseg.models.

Each model is built once per module with tiny shapes (32x32 and 16^3, 4 base filters).
References: numpy sigmoid/softmax for the heads, hand-counted parameter totals, and the
outputs of the model before it was saved for the ``.keras`` round trip.
"""

import math

import keras
import numpy as np
import pytest
import tensorflow as tf
from keras_harness import run_saving_test, run_serialization_test, run_training_test

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
def test_config_and_saved_model_round_trips(head_pairs, family, tmp_path):
    _, model = head_pairs[family, 3 if family in ("attention_unet", "highresnet") else 2]
    spatial_dims = len(model.input_shape) - 2
    run_serialization_test(model)
    run_saving_test(model, random_input(SHAPES[spatial_dims], seed=1), tmp_path / "m.keras")


def test_custom_layers_are_in_the_saved_models(head_pairs):
    attention_layers = head_pairs["attention_unet", 2][0].layers
    assert sum(isinstance(layer, AttentionGate) for layer in attention_layers) == 2
    residual_layers = head_pairs["res_unet", 2][0].layers
    # encoder0, encoder1, bridge, decoder1, decoder0 for depth 2.
    assert sum(isinstance(layer, ResidualUnit) for layer in residual_layers) == 5


# ---- parameter counts from the papers' layer lists -------------------------------------
# Each count is summed layer by layer from the paper's description: a k^d convolution holds
# k^d * c_in * c_out weights plus c_out biases (none when batch norm follows, whose shift
# replaces the bias); a batch norm over c channels holds 4c numbers (gamma, beta, moving mean
# and variance); level i has base * 2**i channels; the head is a 1x1 convolution with bias.


def conv_parameters(kernel, spatial_dims, in_channels, out_channels, bias):
    return kernel**spatial_dims * in_channels * out_channels + (out_channels if bias else 0)


class PaperCounts:
    """Parameter counts of one configuration, one method per paper."""

    def __init__(self, in_channels, num_classes, depth, base, spatial_dims, upsampling, batch_norm):
        self.in_channels, self.num_classes, self.depth = in_channels, num_classes, depth
        self.filters = [base * 2**level for level in range(depth + 1)]
        self.spatial_dims, self.upsampling, self.batch_norm = spatial_dims, upsampling, batch_norm

    def conv(self, kernel, cin, cout, before_batch_norm=True):
        bias = not (before_batch_norm and self.batch_norm)
        return conv_parameters(kernel, self.spatial_dims, cin, cout, bias)

    def norm(self, channels):
        return 4 * channels if self.batch_norm else 0

    def double_conv(self, cin, cout):
        """Ronneberger et al.: two 3x3 convolutions, each followed by batch norm and ReLU."""
        first = self.conv(3, cin, cout) + self.norm(cout)
        return first + self.conv(3, cout, cout) + self.norm(cout)

    def up(self, cin, cout):
        """2x2 up-convolution, or nearest-neighbour up-sampling + 3x3 convolution; bias."""
        kernel = 2 if self.upsampling == "transpose" else 3
        return self.conv(kernel, cin, cout, before_batch_norm=False)

    def head(self):
        return self.conv(1, self.filters[0], self.num_classes, before_batch_norm=False)

    def unet(self):
        f = self.filters
        encoder = sum(
            self.double_conv(f[level - 1] if level else self.in_channels, f[level])
            for level in range(self.depth + 1)
        )
        decoder = sum(
            self.up(f[level + 1], f[level]) + self.double_conv(2 * f[level], f[level])
            for level in range(self.depth)
        )
        return encoder + decoder + self.head()

    def attention_unet(self):
        """Oktay et al., eq. 1-2: per skip, W_x (1x1, no bias), W_g (1x1, bias b_g) into F_int
        channels and psi (1x1 to one channel, bias b_psi); F_int = F_l / 2."""

        def gate(channels):
            inter = max(1, channels // 2)
            return channels * inter + (channels * inter + inter) + (inter + 1)

        return self.unet() + sum(gate(self.filters[level]) for level in range(self.depth))

    def residual_unit(self, cin, cout, strides, preactivate):
        """Zhang et al. Fig. 2(b) / He et al. (2016): [BN, ReLU,] conv, BN, ReLU, conv, plus a
        1x1 convolution + BN on the shortcut when the unit changes channels or grid."""
        total = (self.norm(cin) if preactivate else 0) + self.conv(3, cin, cout)
        total += self.norm(cout) + self.conv(3, cout, cout)
        if strides > 1 or cin != cout:
            total += self.conv(1, cin, cout) + self.norm(cout)
        return total

    def res_unet(self):
        """Zhang et al. Table 1: level 1 unit without pre-activation, strided units down to
        the bridge, then per decoder level up-sampling, concatenation and a unit."""
        f = self.filters
        total = self.residual_unit(self.in_channels, f[0], 1, preactivate=False)
        total += sum(self.residual_unit(f[i - 1], f[i], 2, True) for i in range(1, self.depth + 1))
        total += sum(
            self.up(f[i + 1], f[i]) + self.residual_unit(2 * f[i], f[i], 1, True)
            for i in range(self.depth)
        )
        return total + self.head()

    def unet_plus_plus(self, deep_supervision=False):
        """Zhou et al. eq. 1: X[i, j>0] = H([X[i, 0..j-1], U(X[i+1, j-1])]), H a double conv."""
        f = self.filters
        total = sum(
            self.double_conv(f[i - 1] if i else self.in_channels, f[i])
            for i in range(self.depth + 1)
        )
        for step in range(1, self.depth + 1):
            for i in range(self.depth - step + 1):
                total += self.up(f[i + 1], f[i]) + self.double_conv((step + 1) * f[i], f[i])
        return total + self.head() * (self.depth if deep_supervision else 1)


def test_unet_parameter_count_by_hand():
    # depth 1, 2 base filters, 1 -> 1 channel, 2D, transposed convolution, batch norm:
    # encoder 18 + 8 + 36 + 8, bottleneck 72 + 16 + 144 + 16, up 4*4*2 + 2,
    # decoder 72 + 8 + 36 + 8, head 2 + 1.
    model = models.unet((8, 8, 1), 1, depth=1, base_filters=2)
    assert model.count_params() == 70 + 248 + 34 + 124 + 3 == 479


def test_counts_published_with_the_unet_plus_plus_reference_code():
    # MrGiovanni/UNetPlusPlus model.py (Zhou et al.'s Keras code): U_Net and Nest_Net with
    # filters 32..512, one input channel, one sigmoid class, 2x2 transposed convolutions and no
    # batch norm print "Total params: 7,759,521" and "Total params: 9,041,601".
    kwargs = {"depth": 4, "base_filters": 32, "batch_norm": False}
    assert models.unet((None, None, 1), 1, **kwargs).count_params() == 7_759_521
    assert models.unet_plus_plus((None, None, 1), 1, **kwargs).count_params() == 9_041_601
    paper = PaperCounts(1, 1, 4, 32, 2, "transpose", batch_norm=False)
    assert paper.unet() == 7_759_521 and paper.unet_plus_plus() == 9_041_601


@pytest.mark.parametrize("family", ("unet", "attention_unet", "res_unet", "unet_plus_plus"))
@pytest.mark.parametrize(
    "spatial_dims, upsampling, batch_norm, in_channels, num_classes",
    [(2, "transpose", True, 1, 1), (2, "resize", False, 3, 4), (3, "transpose", True, 2, 3)],
)
def test_parameter_count_and_output_shape_follow_the_paper(
    family, spatial_dims, upsampling, batch_norm, in_channels, num_classes
):
    size = (16, 8, 24)[:spatial_dims]
    model = models.build(
        family,
        input_shape=(*size, in_channels),
        num_classes=num_classes,
        depth=3,
        base_filters=4,
        upsampling=upsampling,
        batch_norm=batch_norm,
    )
    paper = PaperCounts(in_channels, num_classes, 3, 4, spatial_dims, upsampling, batch_norm)
    assert model.count_params() == getattr(paper, family)()
    assert model.output_shape == (None, *size, num_classes)


def test_unet_plus_plus_deep_supervision_count_follows_the_paper():
    model = models.unet_plus_plus(
        (None, None, 2), 3, depth=3, base_filters=4, deep_supervision=True
    )
    paper = PaperCounts(2, 3, 3, 4, 2, "transpose", batch_norm=True)
    assert model.count_params() == paper.unet_plus_plus(deep_supervision=True)


def test_batch_norm_statistics_are_the_only_non_trainable_weights():
    model = models.unet((None, None, 2), 3, depth=2, base_filters=4)
    batch_norm_channels = 2 * (4 + 8 + 16 + 8 + 4)  # two per double conv
    non_trainable = sum(math.prod(w.shape) for w in model.non_trainable_weights)
    assert non_trainable == 2 * batch_norm_channels  # moving mean and variance


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
def test_one_training_step_reaches_every_weight(family, kwargs):
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
    run_training_test(model, x, loss, targets=[y] * len(model.outputs))


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


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"skip_gate": "attention", "decoder": "nested"}, "skip_gate='attention' needs decoder"),
        ({"deep_supervision": True}, "deep_supervision=True needs decoder='nested'"),
        ({"block": "dense"}, "block must be one of"),
        ({"skip_gate": "gated"}, "skip_gate must be one of"),
        ({"decoder": "full"}, "decoder must be one of"),
    ],
)
def test_encoder_decoder_rejects_unknown_hooks_and_combinations(kwargs, message):
    with pytest.raises(ValueError, match=message):
        models.encoder_decoder((16, 16, 1), depth=2, base_filters=2, **kwargs)


def test_encoder_decoder_combines_residual_blocks_with_the_nested_decoder():
    model = models.encoder_decoder(
        (16, 16, 1), 2, depth=2, base_filters=2, block="residual", decoder="nested",
        deep_supervision=True,
    )
    assert model.output_shape == [(None, 16, 16, 2)] * 2
    # Nodes X[0..2, 0], X[0, 1], X[1, 1], X[0, 2], each a residual unit.
    assert sum(isinstance(layer, ResidualUnit) for layer in model.layers) == 6


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
    # traced once: 60 eager passes of HighResNet took about 9 CPU-s
    training_pass = tf.function(lambda batch: model(batch, training=True))
    for _ in range(60):
        training_pass(x)
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
    x = random_input((8, 12, 1), seed=6)
    reloaded = run_saving_test(model, x, tmp_path / "res_unet.keras")
    assert reloaded.size_divisor == 4
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
