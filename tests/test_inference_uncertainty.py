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


# ---------------------------------------------------------------- decomposition (Depeweg 2018)


def reference_decomposition(stack):
    """Independent numpy: entropy of the mean, mean of the entropies, over axis 0 (softmax)."""
    stack = np.asarray(stack, dtype=np.float64)
    mean = stack.mean(axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        total = -np.nansum(np.where(mean > 0, mean * np.log(mean), 0.0), axis=-1)
        per_sample = -np.nansum(np.where(stack > 0, stack * np.log(stack), 0.0), axis=-1)
    return total, per_sample.mean(axis=0)


def test_decomposition_of_hand_made_stacks():
    from kseg.inference import decompose_uncertainty

    # voxel 0: two confident samples that disagree -> all epistemic (ln 2, 0, ln 2)
    # voxel 1: two samples both at 0.5 -> all aleatoric (ln 2, ln 2, 0)
    # voxel 2: two confident samples that agree -> nothing
    stack = np.array([[[0.0], [0.5], [1.0]], [[1.0], [0.5], [1.0]]])  # (T=2, n=3, C=1)
    maps = decompose_uncertainty(stack)
    np.testing.assert_allclose(maps.total, [np.log(2), np.log(2), 0.0], atol=1e-7)
    np.testing.assert_allclose(maps.aleatoric, [0.0, np.log(2), 0.0], atol=1e-7)
    np.testing.assert_allclose(maps.epistemic, [np.log(2), 0.0, 0.0], atol=1e-7)


def test_decomposition_of_random_softmax_samples_matches_numpy_and_adds_up():
    from kseg.inference import decompose_uncertainty

    rng = np.random.default_rng(11)
    stack = rng.dirichlet([0.7, 1.0, 2.0], size=(6, 2, 5, 4))  # (T, n, H, W, C=3)
    total, aleatoric = reference_decomposition(stack)
    maps = decompose_uncertainty(list(stack))
    np.testing.assert_allclose(maps.total, total, rtol=1e-5)
    np.testing.assert_allclose(maps.aleatoric, aleatoric, rtol=1e-5)
    np.testing.assert_allclose(maps.epistemic, total - aleatoric, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(maps.total, maps.aleatoric + maps.epistemic, rtol=1e-6)
    assert (maps.epistemic >= 0).all() and maps.epistemic.max() > 0.05
    # the sample axis may be elsewhere
    moved = decompose_uncertainty(np.moveaxis(stack, 0, 2), axis=2)
    np.testing.assert_allclose(moved.total, maps.total, rtol=1e-6)


def test_decomposition_rejects_bad_stacks():
    from kseg.inference import decompose_uncertainty

    with pytest.raises(ValueError, match="at least 2 predictions"):
        decompose_uncertainty(np.full((1, 3, 1), 0.5))
    with pytest.raises(ValueError, match="axis"):
        decompose_uncertainty(np.full((2, 3, 1), 0.5), axis=-1)
    with pytest.raises(ValueError, match="outside \\[0, 1\\]"):
        decompose_uncertainty(np.full((2, 3, 1), 1.5))


def test_dropout_model_samples_decompose_and_mc_dropout_adds_up():
    from kseg.inference import decompose_uncertainty

    model, _ = normalised_dropout_model()
    x = np.array([[[4.0], [-3.0], [9.0]], [[2.5], [0.0], [5.0]]], dtype=np.float32)
    stochastic = mc_dropout_model(model)
    stack = np.stack([keras.ops.convert_to_numpy(stochastic(x)) for _ in range(24)])
    # every sample is 0.5 (dropped) or the kept probability q: a real mixture of both
    q = kept_probability(x)
    assert np.all(np.isclose(stack, 0.5, atol=1e-6) | np.isclose(stack, q, atol=1e-5))
    total, aleatoric = reference_decomposition(np.concatenate([stack, 1 - stack], axis=-1))
    maps = decompose_uncertainty(stack)
    np.testing.assert_allclose(maps.total, total, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(maps.aleatoric, aleatoric, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(maps.total, maps.aleatoric + maps.epistemic, atol=1e-6)
    assert maps.epistemic.max() > 0.01

    result = mc_dropout(model, x, samples=24)
    kept = (result.mean - 0.5) / (q - 0.5)
    expected_aleatoric = (kept * binary_entropy(q) + (1 - kept) * binary_entropy(0.5))[..., 0]
    np.testing.assert_allclose(result.expected_entropy, expected_aleatoric, rtol=1e-3, atol=1e-5)
    np.testing.assert_allclose(
        result.predictive_entropy,
        result.expected_entropy + result.mutual_information,
        atol=1e-6,
    )


# ------------------------------------------------------------- test-time augmentation (Wang 2019)


def test_tta_of_a_position_dependent_predictor_is_hand_worked():
    from kseg.inference import tta_uncertainty

    # the predictor ignores the image and returns a ramp down the rows: the flipped copy's
    # prediction, flipped back, is the reversed ramp, so mean and spread are known exactly
    ramp = np.array([0.1, 0.2, 0.6, 0.9], dtype=np.float32)

    def row_ramp(batch):
        return np.broadcast_to(ramp[None, :, None, None], batch.shape[:3] + (1,)).copy()

    batch = np.zeros((1, 4, 3, 1), dtype=np.float32)
    result = tta_uncertainty(row_ramp, batch, flip_axes=[0], rotation_plane=None)
    reversed_ramp = ramp[::-1]
    mean = (ramp + reversed_ramp) / 2
    assert result.samples == 2
    np.testing.assert_allclose(result.mean[0, :, 1, 0], mean, rtol=1e-6)
    np.testing.assert_allclose(result.variance[0, :, 1, 0], ((ramp - reversed_ramp) / 2) ** 2)
    np.testing.assert_allclose(result.entropy[0, :, 1], binary_entropy(mean), rtol=1e-5)


def test_tta_predicts_every_transform_and_an_equivariant_model_is_certain():
    from kseg.inference import tta_uncertainty

    batch = np.random.default_rng(12).normal(size=(2, 5, 5, 1)).astype(np.float32)
    seen = []

    def pointwise_sigmoid(x):
        seen.append(x.copy())
        return 1 / (1 + np.exp(-x))

    result = tta_uncertainty(pointwise_sigmoid, batch)
    expected_inputs = {
        np.rot90(np.flip(batch, 1) if mirror else batch, k, axes=(1, 2)).tobytes()
        for k in range(4)
        for mirror in (False, True)
    }
    assert result.samples == 8 and {x.tobytes() for x in seen} == expected_inputs
    p = 1 / (1 + np.exp(-batch.astype(np.float64)))
    np.testing.assert_allclose(result.mean, p, rtol=1e-5)
    np.testing.assert_allclose(result.variance, 0.0, atol=1e-10)
    np.testing.assert_allclose(result.entropy, binary_entropy(p)[..., 0], rtol=1e-5)


def test_tta_intensity_noise_spreads_the_prediction_by_its_variance():
    from kseg.inference import tta_uncertainty

    # p = 0.5 + x is linear, so with x = 0 the variance of p is the noise variance
    batch = np.zeros((1, 8, 8, 1), dtype=np.float32)
    result = tta_uncertainty(
        lambda x: np.clip(0.5 + x, 0, 1), batch, samples=200, noise_std=0.05, seed=1
    )
    assert result.samples == 200
    np.testing.assert_allclose(result.variance.mean(), 0.05**2, rtol=0.05)
    np.testing.assert_allclose(result.mean.mean(), 0.5, atol=2e-3)
    again = tta_uncertainty(
        lambda x: np.clip(0.5 + x, 0, 1), batch, samples=200, noise_std=0.05, seed=1
    )
    np.testing.assert_array_equal(again.variance, result.variance)


def test_tta_rejects_bad_arguments():
    from kseg.inference import tta_uncertainty

    batch = np.zeros((1, 4, 4, 1), dtype=np.float32)
    with pytest.raises(ValueError, match="samples"):
        tta_uncertainty(np.square, batch, samples=1)
    with pytest.raises(ValueError, match="noise_std"):
        tta_uncertainty(np.square, batch, noise_std=-0.1)
    with pytest.raises(ValueError, match="only the identity"):
        tta_uncertainty(np.square, batch, flip_axes=[], rotation_plane=None)
    with pytest.raises(ValueError, match="x must be a batch"):
        tta_uncertainty(np.square, np.zeros((4, 4)))
    with pytest.raises(ValueError, match="outside \\[0, 1\\]"):
        tta_uncertainty(lambda x: x + 2, batch)


# ------------------------------------------------------------------ per-patient summaries


def test_summary_means_inside_the_foreground_and_over_the_volume():
    from kseg.inference import UncertaintyDecomposition, uncertainty_summary

    total = np.array([[0.2, 0.4], [0.6, 0.8]])
    foreground = np.array([[True, False], [False, True]])
    maps = UncertaintyDecomposition(total=total, aleatoric=total / 2, epistemic=total / 2)
    row = uncertainty_summary(maps, foreground)
    assert row["total_foreground"] == pytest.approx((0.2 + 0.8) / 2)
    assert row["total_volume"] == pytest.approx(0.5)
    assert row["epistemic_foreground"] == pytest.approx(0.25)
    assert row["foreground_voxels"] == 2

    variance = np.stack([total, 3 * total], axis=-1)  # two channels: averaged first
    row = uncertainty_summary({"variance": variance}, np.zeros((2, 2), dtype=bool))
    assert row["variance_volume"] == pytest.approx(1.0)
    assert np.isnan(row["variance_foreground"]) and row["foreground_voxels"] == 0


def test_summary_of_an_mc_dropout_result_and_its_errors():
    from kseg.inference import uncertainty_summary

    model, _ = normalised_dropout_model()
    result = mc_dropout(model, np.array([[[4.0], [-3.0], [9.0]]], dtype=np.float32), samples=4)
    foreground = result.mean[..., 0] >= 0.5
    row = uncertainty_summary(result, foreground)
    assert set(row) == {
        f"{name}_{where}"
        for name in ("variance", "predictive_entropy", "mutual_information", "expected_entropy")
        for where in ("foreground", "volume")
    } | {"foreground_voxels"}
    assert row["expected_entropy_volume"] == pytest.approx(result.expected_entropy.mean())
    with pytest.raises(ValueError, match="foreground must be a boolean"):
        uncertainty_summary(result, foreground.astype(int))
    with pytest.raises(ValueError, match="maps\\['total'\\]"):
        uncertainty_summary({"total": np.zeros((3, 3))}, np.zeros((2, 2), dtype=bool))
    with pytest.raises(ValueError, match="maps must be"):
        uncertainty_summary([np.zeros(2)], np.zeros(2, dtype=bool))


def test_tta_of_a_keras_model_matches_a_loop_over_the_dihedral_group():
    from kseg.inference import tta_uncertainty

    # an asymmetric 3x3 kernel: neither flip- nor rotation-equivariant, so the copies differ
    inputs = keras.Input((5, 5, 1))
    conv = keras.layers.Conv2D(1, 3, padding="same", activation="sigmoid", use_bias=False)
    model = keras.Model(inputs, conv(inputs))
    conv.set_weights([np.arange(9, dtype=np.float32).reshape(3, 3, 1, 1) / 9 - 0.3])
    x = np.random.default_rng(13).normal(size=(2, 5, 5, 1)).astype(np.float32)

    copies = []
    for mirror in (False, True):
        for k in range(4):
            augmented = np.rot90(np.flip(x, 1) if mirror else x, k, axes=(1, 2))
            prediction = keras.ops.convert_to_numpy(model(np.ascontiguousarray(augmented)))
            restored = np.rot90(prediction, -k, axes=(1, 2))
            copies.append(np.flip(restored, 1) if mirror else restored)
    copies = np.stack(copies).astype(np.float64)

    result = tta_uncertainty(model, x)
    np.testing.assert_allclose(result.mean, copies.mean(axis=0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(result.variance, copies.var(axis=0), rtol=1e-4, atol=1e-7)
    assert result.variance.max() > 1e-3
