"""Heteroscedastic head, loss and aleatoric maps against numpy Monte-Carlo references."""

import keras
import numpy as np
import pytest
import tensorflow as tf
from keras_harness import run_layer_test, run_saving_test, run_serialization_test
from scipy.special import expit, log_softmax, logsumexp, softmax

from kseg import inference, losses, models


def ref_loss(target, outputs, noise):
    """-log mean_t p(y | f + σ ε_t), per sample, float64; ``target`` one-hot or binary."""
    outputs = outputs.astype(np.float64)
    logits, s = outputs[..., :-1], outputs[..., -1:]
    sigma = np.exp(0.5 * 20.0 * np.tanh(s / 20.0))
    sampled = logits[None] + sigma[None] * noise.astype(np.float64)
    count = len(noise)
    if logits.shape[-1] == 1:
        log_p = logsumexp(-np.logaddexp(0.0, -sampled), axis=0) - np.log(count)
        log_not_p = logsumexp(-np.logaddexp(0.0, sampled), axis=0) - np.log(count)
        voxel = -(target * log_p + (1 - target) * log_not_p)[..., 0]
    else:
        log_p = logsumexp(log_softmax(sampled, axis=-1), axis=0) - np.log(count)
        voxel = -(target * log_p).sum(axis=-1)
    return voxel.reshape(len(voxel), -1).mean(axis=1)


def make_case(spatial, classes, seed=0, log_variance=(-3.0, 2.0)):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, max(classes, 2), size=spatial)
    logits = rng.normal(0.0, 2.0, size=spatial + (classes,))
    s = rng.uniform(*log_variance, size=spatial + (1,))
    outputs = np.concatenate([logits, s], axis=-1).astype("float32")
    target = labels[..., None].astype(float) if classes == 1 else np.eye(classes)[labels]
    return labels, target, outputs, rng


CASES = {
    "binary-2d": ((2, 5, 6), 1),
    "binary-3d": ((2, 3, 4, 5), 1),
    "multiclass-2d": ((2, 5, 6), 3),
    "multiclass-3d": ((2, 3, 4, 5), 4),
}


def numpy_of(value):
    return keras.ops.convert_to_numpy(value)


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("sparse", [False, True])
def test_loss_matches_numpy_monte_carlo_with_the_same_draws(case, sparse):
    spatial, classes = CASES[case]
    labels, target, outputs, rng = make_case(spatial, classes)
    noise = rng.standard_normal((7,) + spatial + (classes,)).astype("float32")
    y_true = labels if sparse else target
    got = numpy_of(losses.heteroscedastic_cross_entropy(y_true, outputs, noise))
    np.testing.assert_allclose(got, ref_loss(target, outputs, noise), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("classes", [1, 3])
def test_loss_class_draws_standard_normal_noise(classes):
    """The seeded class agrees with a numpy MC estimate of many independent draws."""
    _, target, outputs, rng = make_case((2, 6, 6), classes, seed=1)
    noise = rng.standard_normal((4000, 2, 6, 6, classes))
    expected = ref_loss(target, outputs, noise).mean()
    loss = losses.HeteroscedasticCrossEntropy(num_samples=4000, seed=5)
    assert float(loss(target, outputs)) == pytest.approx(expected, abs=0.01)


def test_loss_seed_reproduces_and_each_call_draws_afresh():
    _, target, outputs, _ = make_case((2, 6, 6), 3, seed=2)
    first = losses.HeteroscedasticCrossEntropy(num_samples=3, seed=7)
    second = losses.HeteroscedasticCrossEntropy(num_samples=3, seed=7)
    a, b = float(first(target, outputs)), float(first(target, outputs))
    assert float(second(target, outputs)) == a
    assert a != b


@pytest.mark.parametrize("classes", [1, 3])
def test_vanishing_sigma_is_plain_cross_entropy(classes):
    labels, target, outputs, rng = make_case((2, 5, 6), classes, seed=3)
    outputs[..., -1] = -60.0  # bounded to -19.8: σ = 5e-5
    logits = outputs[..., :-1]
    if classes == 1:
        expected = keras.losses.binary_crossentropy(target, logits, from_logits=True)
    else:
        expected = keras.losses.sparse_categorical_crossentropy(labels, logits, from_logits=True)
    expected = numpy_of(expected).reshape(2, -1).mean(axis=1)
    got = numpy_of(losses.HeteroscedasticCrossEntropy(num_samples=4, seed=0).call(labels, outputs))
    np.testing.assert_allclose(got, expected, atol=1e-3)
    # and the numpy reference of plain cross-entropy, without Keras
    if classes == 1:
        z = logits.astype(float)
        plain = np.logaddexp(0, z) - target * z
    else:
        plain = -(target * log_softmax(logits.astype(float), axis=-1)).sum(-1, keepdims=True)
    np.testing.assert_allclose(got, plain.reshape(2, -1).mean(axis=1), atol=1e-3)


@pytest.mark.parametrize("classes", [1, 3])
@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_loss_and_gradients_finite_at_extreme_outputs(classes, dtype):
    spatial = (2, 4, 4)
    rng = np.random.default_rng(4)
    logits = rng.choice([-1e4, 1e4], size=spatial + (classes,))
    s = rng.choice([-50.0, 50.0], size=spatial + (1,))
    outputs = tf.constant(np.concatenate([logits, s], axis=-1), dtype=dtype)
    labels = rng.integers(0, max(classes, 2), size=spatial)
    loss = losses.HeteroscedasticCrossEntropy(num_samples=5, seed=0)
    with tf.GradientTape() as tape:
        tape.watch(outputs)
        value = losses.heteroscedastic_cross_entropy(
            labels, outputs, rng.standard_normal((5,) + spatial + (classes,))
        )
    gradient = numpy_of(tape.gradient(value, outputs))
    assert value.dtype == tf.float32
    assert np.all(np.isfinite(numpy_of(value))) and np.all(np.isfinite(gradient))
    assert np.isfinite(float(loss(labels, outputs)))


def test_confident_wrong_voxel_costs_its_logit_margin_when_sigma_vanishes():
    outputs = np.array([[[[1e4, -50.0], [-1e4, -50.0]]]], dtype="float32")  # (1, 1, 2, 2)
    y_true = np.array([[[[0.0], [0.0]]]])
    value = losses.heteroscedastic_cross_entropy(y_true, outputs, np.ones((3, 1, 1, 2, 1)))
    assert float(value[0]) == pytest.approx(1e4 / 2, rel=1e-4)  # (1e4 + 0) / 2 voxels


@pytest.mark.parametrize("classes", [1, 3])
def test_gradients_reach_logit_and_variance_channels(classes):
    labels, _, outputs, rng = make_case((2, 5, 6), classes, seed=5, log_variance=(-1, 1))
    outputs = tf.constant(outputs)
    with tf.GradientTape() as tape:
        tape.watch(outputs)
        value = losses.HeteroscedasticCrossEntropy(num_samples=8, seed=1)(labels, outputs)
    gradient = numpy_of(tape.gradient(value, outputs))
    assert np.count_nonzero(gradient[..., :-1]) == gradient[..., :-1].size
    assert np.count_nonzero(gradient[..., -1]) == gradient[..., -1].size


@pytest.mark.parametrize("classes", [1, 3])
def test_loss_falls_with_sigma_when_wrong_and_rises_when_right(classes):
    """Fixed antithetic draws (ε, -ε): deterministic, and for a sigmoid the direction holds
    for any draws (sigmoid(a + x) + sigmoid(a - x) moves away from 2 sigmoid(a) as x grows)."""
    z = np.random.default_rng(6).standard_normal((16, 1, 1, 1, classes))
    noise = np.concatenate([z, -z])
    logit = np.zeros(classes) if classes > 1 else np.zeros(1)
    logit[-1] = 4.0  # confident in the last class (foreground for a binary model)
    # sparse labels (1, 1, 1): the first class is wrong, the last (foreground) is right
    wrong, right = np.array([[[0]]]), np.array([[[max(classes - 1, 1)]]])
    values = {"wrong": [], "right": []}
    for s in (-4.0, -1.0, 0.0, 1.0, 3.0):
        outputs = np.concatenate([logit, [s]])[None, None, None].astype("float32")
        for kind, y_true in (("wrong", wrong), ("right", right)):
            loss = losses.heteroscedastic_cross_entropy(y_true, outputs, noise)
            values[kind].append(float(loss[0]))
    assert np.all(np.diff(values["wrong"]) < 0)
    assert np.all(np.diff(values["right"]) > 0)


def test_loss_arguments_are_checked():
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="num_samples"):
            losses.HeteroscedasticCrossEntropy(num_samples=bad)
    with pytest.raises(ValueError, match="seed"):
        losses.HeteroscedasticCrossEntropy(seed="0")
    with pytest.raises(ValueError, match="y_pred"):
        losses.HeteroscedasticCrossEntropy()(np.zeros((1, 2, 2, 1)), np.zeros((1, 2, 2, 1)))


def test_loss_serialises():
    revived = run_serialization_test(losses.HeteroscedasticCrossEntropy(num_samples=5, seed=3))
    assert revived.num_samples == 5 and revived.seed == 3


# ---- head ----------------------------------------------------------------------------------


def test_head_layer_contract(tmp_path):
    data = np.random.default_rng(0).normal(size=(2, 8, 8, 3)).astype("float32")
    run_layer_test(models.HeteroscedasticHead, {"num_classes": 2}, data, (2, 8, 8, 3), tmp_path)


def test_head_3d_layout_and_initial_variance():
    head = models.HeteroscedasticHead(num_classes=1, initial_log_variance=-2.0)
    out = numpy_of(head(np.random.default_rng(1).normal(size=(1, 4, 4, 4, 5)).astype("float32")))
    assert out.shape == (1, 4, 4, 4, 2)
    np.testing.assert_allclose(out[..., -1], -2.0)
    with pytest.raises(ValueError, match="num_classes"):
        models.HeteroscedasticHead(num_classes=0)
    with pytest.raises(ValueError, match="initial_log_variance"):
        models.HeteroscedasticHead(num_classes=2, initial_log_variance="low")


def test_head_returns_float32_under_mixed_precision():
    features = np.ones((1, 4, 4, 3), dtype="float16")
    head = models.HeteroscedasticHead(num_classes=2, dtype="mixed_float16")
    assert keras.backend.standardize_dtype(head(features).dtype) == "float32"


def test_compiled_model_round_trips_with_its_loss(tmp_path):
    inputs = keras.Input((8, 8, 1))
    features = keras.layers.Conv2D(4, 3, padding="same")(inputs)
    model = keras.Model(inputs, models.HeteroscedasticHead(num_classes=3)(features))
    model.compile(loss=losses.HeteroscedasticCrossEntropy(num_samples=4, seed=0))
    data = np.random.default_rng(2).normal(size=(2, 8, 8, 1)).astype("float32")
    reloaded = run_saving_test(model, data, tmp_path / "heteroscedastic.keras")
    assert isinstance(reloaded.loss, losses.HeteroscedasticCrossEntropy)
    assert reloaded.loss.get_config() == model.loss.get_config()


def test_noisy_half_learns_larger_variance():
    """Labels flipped at random in the left half: the head learns a larger σ² there.

    The head sees the image and a half indicator. Its logits ``a x + b half + c`` cannot
    be less confident in one half only (the slope ``a`` is shared, and the clean half keeps
    raising it), so the loss can lower the noisy half's cost only by raising its ``σ``.
    """
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(16, 16, 16, 1)).astype("float32")
    y = (x > 0).astype("float32")
    flip = rng.random(y.shape) < 0.3
    flip[:, :, 8:] = False
    y = np.where(flip, 1.0 - y, y)
    half = np.zeros_like(x)
    half[:, :, :8] = 1.0
    data = np.concatenate([x, half], axis=-1)
    inputs = keras.Input((16, 16, 2))
    model = keras.Model(inputs, models.HeteroscedasticHead(1, initial_log_variance=0.0)(inputs))
    model.compile(
        optimizer=keras.optimizers.Adam(0.1),
        loss=losses.HeteroscedasticCrossEntropy(num_samples=8, seed=0),
    )
    # 300 full-batch steps in one epoch: Keras' per-epoch work would cost more than the steps
    steps = 300
    model.fit(np.tile(data, (steps, 1, 1, 1)), np.tile(y, (steps, 1, 1, 1)), batch_size=16,
              epochs=1, shuffle=False, verbose=0)
    variance = inference.aleatoric_variance(model.predict(data, verbose=0))
    noisy, clean = variance[:, :, :8].mean(), variance[:, :, 8:].mean()
    assert noisy > 10 * clean, (noisy, clean)


# ---- inference maps -----------------------------------------------------------------------


def test_aleatoric_variance_and_logit_probabilities():
    _, _, outputs, _ = make_case((2, 5, 6), 3, seed=7)
    outputs[0, 0, 0, -1] = 80.0  # past the bound
    result = inference.heteroscedastic_uncertainty(outputs)
    expected_variance = np.exp(20.0 * np.tanh(outputs[..., -1].astype(float) / 20.0))
    np.testing.assert_allclose(inference.aleatoric_variance(outputs), expected_variance, rtol=1e-6)
    np.testing.assert_allclose(result.variance, expected_variance, rtol=1e-6)
    probabilities = softmax(outputs[..., :-1].astype(float), axis=-1)
    np.testing.assert_allclose(result.mean, probabilities, rtol=1e-5)
    np.testing.assert_allclose(
        result.entropy, -(probabilities * np.log(probabilities)).sum(-1), rtol=1e-5
    )
    assert result.samples == 0


def test_sampled_probabilities_match_gauss_hermite_integral():
    """E[sigmoid(f + σ ε)] by quadrature, an independent reference for the sampled mean."""
    f = np.array([-2.0, 0.5, 3.0])
    s = np.array([1.0, 2.0, -1.0])
    outputs = np.stack([f, s], axis=-1)[None, None].astype("float32")  # (1, 1, 3, 2)
    nodes, weights = np.polynomial.hermite_e.hermegauss(80)
    sigma = np.exp(0.5 * 20 * np.tanh(s / 20))
    expected = (expit(f[:, None] + sigma[:, None] * nodes) * weights).sum(1) / weights.sum()
    result = inference.heteroscedastic_uncertainty(outputs, samples=20000, seed=0)
    np.testing.assert_allclose(result.mean[0, 0, :, 0], expected, atol=0.01)
    assert result.samples == 20000


def test_uncertainty_arguments_are_checked():
    with pytest.raises(ValueError, match="outputs"):
        inference.aleatoric_variance(np.zeros((1, 4, 4, 1)))
    with pytest.raises(ValueError, match="samples"):
        inference.heteroscedastic_uncertainty(np.zeros((1, 4, 4, 2)), samples=-1)
