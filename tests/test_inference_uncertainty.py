"""MC dropout: dropout on, BatchNorm in inference mode, entropies against closed forms."""

import keras
import numpy as np
import pytest
from scipy.special import entr

from kseg.inference import mc_dropout, mc_dropout_model

MOVING_MEAN = np.array([1.0], dtype=np.float32)
MOVING_VARIANCE = np.array([4.0], dtype=np.float32)


def normalised_dropout_model():
    """x -> BatchNorm (fixed moving statistics) -> Dropout(0.5) -> sigmoid, one channel."""
    inputs = keras.Input((3, 1))
    norm = keras.layers.BatchNormalization(epsilon=0.0)
    dropped = keras.layers.Dropout(0.5, seed=7)(norm(inputs))
    model = keras.Model(inputs, keras.layers.Activation("sigmoid")(dropped))
    norm.set_weights([np.ones(1), np.zeros(1), MOVING_MEAN, MOVING_VARIANCE])
    return model, norm


def kept_probability(x):
    """A kept unit: inference-mode BatchNorm, scaled by 1 / (1 - 0.5), through the sigmoid."""
    return 1 / (1 + np.exp(-2 * (x - MOVING_MEAN) / np.sqrt(MOVING_VARIANCE)))


def binary_entropy(p):
    return entr(p) + entr(1 - p)


def test_samples_use_moving_statistics_and_leave_them_untouched():
    model, norm = normalised_dropout_model()
    x = np.random.default_rng(6).normal(loc=3.0, scale=2.0, size=(4, 3, 1)).astype(np.float32)
    x[np.abs(x - 1) < 0.5] = 4.0  # keep the kept value away from sigmoid(0) = the dropped one
    result = mc_dropout(model, x, samples=16)

    # every sample is 0.5 (dropped) or q (kept): with f the kept fraction, the mean is
    # 0.5 + f (q - 0.5) and the population variance f (1 - f) (q - 0.5)^2 = (m - 0.5)(q - m).
    # Training-mode BatchNorm would normalise with batch statistics and give another q.
    q = kept_probability(x)
    fraction_kept = (result.mean - 0.5) / (q - 0.5)
    np.testing.assert_allclose(fraction_kept * 16, np.round(fraction_kept * 16), atol=1e-3)
    np.testing.assert_allclose(
        result.variance, (result.mean - 0.5) * (q - result.mean), rtol=1e-3, atol=1e-6
    )
    assert (result.variance > 0).mean() > 0.5  # dropout really was active
    np.testing.assert_array_equal(norm.moving_mean.numpy(), MOVING_MEAN)
    np.testing.assert_array_equal(norm.moving_variance.numpy(), MOVING_VARIANCE)


def test_entropy_and_mutual_information_match_closed_form():
    model, _ = normalised_dropout_model()
    x = np.array([[[4.0], [-3.0], [9.0]]], dtype=np.float32)
    result = mc_dropout(model, x, samples=20)

    q = kept_probability(x)
    kept = (result.mean - 0.5) / (q - 0.5)
    expected_entropy = binary_entropy(result.mean)[..., 0]
    expected_mi = (
        expected_entropy - (kept * binary_entropy(q) + (1 - kept) * binary_entropy(0.5))[..., 0]
    )
    assert result.predictive_entropy.shape == (1, 3)
    np.testing.assert_allclose(result.predictive_entropy, expected_entropy, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(result.mutual_information, expected_mi, rtol=1e-3, atol=1e-5)
    assert result.mutual_information.max() > 0.01


def test_softmax_entropy_sums_over_classes():
    inputs = keras.Input((2,))
    dropped = keras.layers.Dropout(0.5, seed=3)(inputs)
    model = keras.Model(inputs, keras.layers.Softmax()(dropped))
    x = np.array([[2.0, -1.0]], dtype=np.float32)
    result = mc_dropout(model, x, samples=10)
    mean = result.mean.astype(np.float64)
    np.testing.assert_allclose(
        result.predictive_entropy, -(mean * np.log(mean)).sum(axis=-1), rtol=1e-5
    )


def test_model_without_dropout_or_probabilities_is_rejected():
    inputs = keras.Input((3,))
    with pytest.raises(ValueError, match="no dropout layer"):
        mc_dropout_model(keras.Model(inputs, keras.layers.Dense(1)(inputs)))
    constant_logit = keras.layers.Dense(1, kernel_initializer="zeros", bias_initializer="ones")
    logits = keras.Model(inputs, constant_logit(keras.layers.Dropout(0.5)(inputs)) * -2.0)
    with pytest.raises(ValueError, match="outside \\[0, 1\\]"):
        mc_dropout(logits, np.ones((1, 3)), samples=2)
