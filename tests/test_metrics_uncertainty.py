"""Calibration and uncertainty metrics of kseg.metrics against independent references.

References: scikit-learn's ``calibration_curve``, ``brier_score_loss`` and ``roc_auc_score``,
scipy's ``spearmanr`` / ``pearsonr``, an explicit per-bin loop written from Guo et al.'s
definition, and cases worked by hand.
"""

import math

import numpy as np
import pytest
from scipy import stats
from sklearn.calibration import calibration_curve
from sklearn.metrics import brier_score_loss, roc_auc_score

from kseg import metrics
from kseg.metrics import (
    brier_score,
    expected_calibration_error,
    reliability_diagram,
    uncertainty_dice_correlation,
    uncertainty_error_auroc,
)


def _loop_ece(confidence, outcome, bins):
    """ECE over uniform bins (lower, upper], the first one closed, written as in Guo et al."""
    confidence, outcome = np.ravel(confidence), np.ravel(outcome).astype(float)
    total = 0.0
    for m in range(bins):
        lower, upper = m / bins, (m + 1) / bins
        members = (confidence > lower) & (confidence <= upper)
        if m == 0:
            members |= confidence == 0.0
        if members.any():
            gap = abs(confidence[members].mean() - outcome[members].mean())
            total += members.sum() / confidence.size * gap
    return total


def _random_binary_case(seed, size=(6, 7, 8)):
    rng = np.random.default_rng(seed)
    # A gap in (0.3, 0.6) leaves uniform bins empty, where scikit-learn drops them.
    low = rng.uniform(0.0, 0.3, size)
    high = rng.uniform(0.6, 1.0, size)
    probabilities = np.where(rng.random(size) < 0.5, low, high)
    # Values exactly on inner bin edges test the (lower, upper] convention.
    probabilities.flat[:4] = [0.1, 0.2, 0.7, 0.0]
    labels = (rng.random(size) < probabilities**1.5).astype(np.uint8)
    return probabilities, labels


# --- reliability_diagram / expected_calibration_error ----------------------------------------


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_uniform_bins_agree_with_sklearn_calibration_curve(seed):
    probabilities, labels = _random_binary_case(seed)
    diagram = reliability_diagram(probabilities, labels, bins=10)
    prob_true, prob_pred = calibration_curve(
        labels.ravel(), probabilities.ravel(), n_bins=10, strategy="uniform"
    )
    filled = diagram.count > 0
    assert not filled.all(), "the case must leave some bins empty"
    np.testing.assert_allclose(diagram.mean_predicted[filled], prob_pred, rtol=1e-12)
    np.testing.assert_allclose(diagram.observed_frequency[filled], prob_true, rtol=1e-12)
    assert np.isnan(diagram.mean_predicted[~filled]).all()
    assert np.isnan(diagram.observed_frequency[~filled]).all()
    assert diagram.count.sum() == probabilities.size
    np.testing.assert_allclose(diagram.bin_edges, np.arange(11) / 10, atol=1e-15)


@pytest.mark.parametrize("seed", [0, 1])
def test_quantile_bins_agree_with_sklearn_calibration_curve(seed):
    probabilities, labels = _random_binary_case(seed)
    probabilities = np.round(probabilities, 1)  # repeated values: some quantile bins empty
    diagram = reliability_diagram(probabilities, labels, bins=8, strategy="quantile")
    prob_true, prob_pred = calibration_curve(
        labels.ravel(), probabilities.ravel(), n_bins=8, strategy="quantile"
    )
    filled = diagram.count > 0
    np.testing.assert_allclose(diagram.mean_predicted[filled], prob_pred, rtol=1e-12)
    np.testing.assert_allclose(diagram.observed_frequency[filled], prob_true, rtol=1e-12)
    assert diagram.count.sum() == probabilities.size
    assert len(diagram.count) == 8 and len(diagram.bin_edges) == 9


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ece_matches_a_per_bin_loop(seed):
    probabilities, labels = _random_binary_case(seed)
    for bins in (1, 10, 15):
        assert expected_calibration_error(probabilities, labels, bins=bins) == pytest.approx(
            _loop_ece(probabilities, labels, bins), abs=1e-12
        )


def test_perfectly_calibrated_toy_set_has_zero_ece():
    # Of the voxels said to be 25% foreground one in four is, of the 75% ones three in four.
    probabilities = [0.25] * 4 + [0.75] * 4
    labels = [1, 0, 0, 0] + [1, 1, 1, 0]
    assert expected_calibration_error(probabilities, labels, bins=4) == pytest.approx(0, abs=1e-15)
    assert expected_calibration_error(
        probabilities, labels, bins=4, mode="top_label"
    ) == pytest.approx(0, abs=1e-15)


def test_overconfident_toy_set_by_hand():
    # 0.9 said, 0.5 happened: gap 0.4 on all voxels.
    assert expected_calibration_error([0.9] * 4, [1, 1, 0, 0]) == pytest.approx(0.4)
    # Half at 0.95 with 70% foreground (gap 0.25), half at 0.05 with 10% (gap 0.05).
    probabilities = [0.95] * 10 + [0.05] * 10
    labels = [1] * 7 + [0] * 3 + [1] + [0] * 9
    assert expected_calibration_error(probabilities, labels) == pytest.approx(
        0.5 * 0.25 + 0.5 * 0.05
    )
    diagram = reliability_diagram(probabilities, labels, bins=10)
    assert diagram.count.tolist() == [10, 0, 0, 0, 0, 0, 0, 0, 0, 10]
    np.testing.assert_allclose(diagram.mean_predicted[[0, 9]], [0.05, 0.95])
    np.testing.assert_allclose(diagram.observed_frequency[[0, 9]], [0.1, 0.7])


def test_binary_and_top_label_modes_differ_by_hand():
    # 0.9 with 100% foreground (underconfident by 0.1) and 0.1 with 30% foreground
    # (overconfident by 0.2). Binary: 0.5 * 0.1 + 0.5 * 0.2. Top label: every voxel has
    # confidence 0.9 and 17 of 20 predictions are right, so one bin with gap 0.05.
    probabilities = [0.9] * 10 + [0.1] * 10
    labels = [1] * 10 + [1] * 3 + [0] * 7
    assert expected_calibration_error(probabilities, labels, bins=10) == pytest.approx(0.15)
    assert expected_calibration_error(
        probabilities, labels, bins=10, mode="top_label"
    ) == pytest.approx(0.05)


def test_top_label_of_binary_probabilities_predicts_foreground_at_one_half():
    # kseg thresholds at p >= 0.5, so the 0.5 voxel predicts foreground and is right: one bin
    # with mean confidence (0.5 + 0.8) / 2 and accuracy 1. As background it would be wrong
    # (accuracy 0.5, ECE 0.15).
    ece = expected_calibration_error([0.5, 0.8], [1, 1], bins=1, mode="top_label")
    assert ece == pytest.approx(0.35)


def test_top_label_multiclass_by_hand():
    # Four voxels at confidence 0.7, two right (gap 0.2); two at 0.4, one right (gap 0.1).
    probabilities = np.array([[0.7, 0.2, 0.1]] * 4 + [[0.25, 0.4, 0.35]] * 2)
    labels = np.array([0, 0, 1, 2, 1, 0])
    expected = 4 / 6 * 0.2 + 2 / 6 * 0.1
    assert expected_calibration_error(probabilities, labels, mode="top_label") == pytest.approx(
        expected
    )
    diagram = reliability_diagram(probabilities, labels, bins=10, mode="top_label")
    assert diagram.count.tolist() == [0, 0, 0, 2, 0, 0, 4, 0, 0, 0]
    np.testing.assert_allclose(diagram.observed_frequency[[3, 6]], [0.5, 0.5])


def test_top_label_multiclass_agrees_with_sklearn_on_confidence_and_correctness():
    rng = np.random.default_rng(3)
    logits = rng.normal(size=(5, 9, 9, 4)) * 2
    probabilities = np.exp(logits) / np.exp(logits).sum(axis=-1, keepdims=True)
    labels = rng.integers(0, 4, size=(5, 9, 9))
    confidence = probabilities.max(axis=-1).ravel()
    correct = (probabilities.argmax(axis=-1) == labels).ravel()
    diagram = reliability_diagram(probabilities, labels, bins=10, mode="top_label")
    prob_true, prob_pred = calibration_curve(correct, confidence, n_bins=10)
    filled = diagram.count > 0
    np.testing.assert_allclose(diagram.mean_predicted[filled], prob_pred, rtol=1e-12)
    np.testing.assert_allclose(diagram.observed_frequency[filled], prob_true, rtol=1e-12)
    assert expected_calibration_error(
        probabilities, labels, bins=10, mode="top_label"
    ) == pytest.approx(_loop_ece(confidence, correct, 10), abs=1e-12)


def test_a_trailing_channel_of_one_is_a_binary_model_output():
    probabilities, labels = _random_binary_case(4)
    with_channel = probabilities[..., None]
    assert expected_calibration_error(with_channel, labels) == pytest.approx(
        expected_calibration_error(probabilities, labels), abs=1e-15
    )
    assert expected_calibration_error(with_channel, labels[..., None]) == pytest.approx(
        expected_calibration_error(probabilities, labels), abs=1e-15
    )
    assert brier_score(with_channel, labels) == pytest.approx(brier_score(probabilities, labels))


@pytest.mark.parametrize("function", [expected_calibration_error, reliability_diagram])
def test_calibration_argument_errors(function):
    good = np.array([0.2, 0.8, 0.6])
    with pytest.raises(ValueError, match="labels has shape"):
        function(good, [0, 1])
    with pytest.raises(ValueError, match=r"probabilities must lie in \[0, 1\]"):
        function([0.2, 1.5, 0.1], [0, 1, 0])
    with pytest.raises(ValueError, match=r"probabilities must lie in \[0, 1\]"):
        function([-0.1, 0.5, 0.1], [0, 1, 0])
    with pytest.raises(ValueError, match="probabilities holds NaN"):
        function([0.2, np.nan, 0.1], [0, 1, 0])
    with pytest.raises(ValueError, match="probabilities is empty"):
        function([], [])
    with pytest.raises(ValueError, match="labels must hold class labels 0/1"):
        function(good, [0, 2, 1])
    with pytest.raises(ValueError, match="labels must hold integer class labels"):
        function(good, [0, 0.5, 1])
    with pytest.raises(ValueError, match="labels must be an array of numbers"):
        function(good, ["a", "b", "c"])
    with pytest.raises(ValueError, match="probabilities must be an array of numbers"):
        function([[0.2, 0.8], [0.5]], [0, 1])
    with pytest.raises(ValueError, match="sum to 1"):
        function([[0.2, 0.2], [0.5, 0.5]], [0, 1], mode="top_label")
    with pytest.raises(ValueError, match="mode='binary'"):
        function([[0.2, 0.8], [0.5, 0.5]], [0, 1])
    with pytest.raises(ValueError, match="mode must be one of"):
        function(good, [0, 1, 1], mode="multiclass")
    with pytest.raises(ValueError, match="strategy must be one of"):
        function(good, [0, 1, 1], strategy="kmeans")
    for bins in (0, True, 2.5, "15"):
        with pytest.raises(ValueError, match="bins must be an integer"):
            function(good, [0, 1, 1], bins=bins)


# --- brier_score -----------------------------------------------------------------------------


def test_brier_score_binary_agrees_with_sklearn():
    probabilities, labels = _random_binary_case(5)
    assert brier_score(probabilities, labels) == pytest.approx(
        brier_score_loss(labels.ravel(), probabilities.ravel()), rel=1e-12
    )
    assert brier_score(probabilities.astype(np.float32), labels.astype(bool)) == pytest.approx(
        brier_score_loss(labels.ravel(), probabilities.astype(np.float32).ravel()), rel=1e-6
    )


def test_hard_masks_score_as_probabilities_zero_and_one():
    probabilities = np.array([True, False, True, True, False])
    labels = np.array([1, 0, 0, 1, 1])
    assert brier_score(probabilities, labels) == pytest.approx(
        brier_score_loss(labels, probabilities.astype(float))
    )
    # Two of five voxels wrong, each with a gap of 1: whichever binning, ECE = 2/5.
    for strategy in ("uniform", "quantile"):
        assert expected_calibration_error(
            probabilities, labels, strategy=strategy
        ) == pytest.approx(0.4)


def test_brier_score_multiclass_agrees_with_sklearn():
    rng = np.random.default_rng(6)
    logits = rng.normal(size=(4, 6, 6, 3))
    probabilities = np.exp(logits) / np.exp(logits).sum(axis=-1, keepdims=True)
    labels = rng.integers(0, 3, size=(4, 6, 6))
    expected = brier_score_loss(labels.ravel(), probabilities.reshape(-1, 3), labels=[0, 1, 2])
    assert brier_score(probabilities, labels) == pytest.approx(expected, rel=1e-12)


def test_brier_score_by_hand():
    assert brier_score([0.9, 0.2], [1, 0]) == pytest.approx((0.01 + 0.04) / 2)
    assert brier_score([1.0, 0.0], [1, 0]) == 0.0
    assert brier_score([0.0, 1.0], [1, 0]) == 1.0
    # (0.5² + 0.5² + 0²) and (0.1² + 0.1² + 0.8² − …): voxel 2 is class 2 at 0.8.
    probabilities = [[0.5, 0.5, 0.0], [0.1, 0.1, 0.8]]
    assert brier_score(probabilities, [0, 2]) == pytest.approx((0.5 + (0.01 + 0.01 + 0.04)) / 2)
    # A binary problem as two softmax channels scores twice its one-channel value.
    p = np.array([0.9, 0.3, 0.6])
    y = np.array([1, 0, 0])
    assert brier_score(np.stack([1 - p, p], axis=-1), y) == pytest.approx(2 * brier_score(p, y))


def test_brier_score_argument_errors():
    with pytest.raises(ValueError, match="labels has shape"):
        brier_score(np.full((2, 3), 0.5), np.zeros((3, 2)))
    with pytest.raises(ValueError, match="probabilities holds NaN"):
        brier_score([np.nan, 0.5], [0, 1])
    with pytest.raises(ValueError, match=r"probabilities must lie in \[0, 1\]"):
        brier_score([2.0, 0.5], [0, 1])
    with pytest.raises(ValueError, match="labels must hold class labels 0 .. 2"):
        brier_score(np.full((2, 3), 1 / 3), [0, 3])


# --- uncertainty_error_auroc -----------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_auroc_agrees_with_sklearn_roc_auc_score_with_ties(seed):
    rng = np.random.default_rng(seed)
    reference = rng.integers(0, 3, size=(4, 10, 12))
    prediction = np.where(rng.random(reference.shape) < 0.2, (reference + 1) % 3, reference)
    error = prediction != reference
    # Rounded to one decimal, the uncertainty is full of ties; errors are more uncertain.
    uncertainty = np.round(np.clip(rng.normal(0.4 + 0.3 * error, 0.2), 0, 1), 1)
    expected = roc_auc_score(error.ravel(), uncertainty.ravel())
    assert uncertainty_error_auroc(uncertainty, prediction, reference) == pytest.approx(
        expected, rel=1e-12
    )


def test_auroc_ties_by_hand():
    # Errors at uncertainty 0.5 and 0.9, correct voxels at 0.5 and 0.1. Of the four
    # (error, correct) pairs three rank the error higher and one ties: (3 + 0.5) / 4.
    uncertainty = [0.5, 0.5, 0.1, 0.9]
    prediction = [1, 0, 0, 1]
    reference = [0, 0, 0, 0]
    assert uncertainty_error_auroc(uncertainty, prediction, reference) == 0.875
    assert uncertainty_error_auroc([0.3] * 4, prediction, reference) == 0.5
    assert uncertainty_error_auroc([0.9, 0.0, 0.1, 0.8], prediction, reference) == 1.0
    assert uncertainty_error_auroc([0.1, 0.9, 0.8, 0.0], prediction, reference) == 0.0


def test_auroc_is_nan_with_a_warning_when_nothing_to_detect():
    with pytest.warns(RuntimeWarning, match="nothing to detect"):
        assert math.isnan(uncertainty_error_auroc([0.1, 0.2], [1, 0], [1, 0]))
    with pytest.warns(RuntimeWarning, match="no voxel is right"):
        assert math.isnan(uncertainty_error_auroc([0.1, 0.2], [1, 0], [0, 1]))


def test_auroc_argument_errors():
    with pytest.raises(ValueError, match="prediction has shape"):
        uncertainty_error_auroc(np.zeros((2, 2)), np.zeros(4), np.zeros((2, 2)))
    with pytest.raises(ValueError, match="reference has shape"):
        uncertainty_error_auroc(np.zeros((2, 2)), np.zeros((2, 2)), np.zeros((2, 3)))
    with pytest.raises(ValueError, match="uncertainty holds NaN"):
        uncertainty_error_auroc([np.nan, 0.1], [1, 0], [0, 0])
    with pytest.raises(ValueError, match="uncertainty holds NaN"):
        uncertainty_error_auroc([np.inf, 0.1], [1, 0], [0, 0])
    with pytest.raises(ValueError, match="prediction must be a label map of integers"):
        uncertainty_error_auroc([0.2, 0.1], [0.7, 0.2], [1, 0])
    with pytest.raises(ValueError, match="reference must be an array of numbers"):
        uncertainty_error_auroc([0.2, 0.1], [1, 0], ["liver", "spleen"])


# --- uncertainty_dice_correlation ------------------------------------------------------------


@pytest.mark.parametrize("n", [3, 5, 12, 40])
def test_correlation_agrees_with_scipy(n):
    rng = np.random.default_rng(n)
    uncertainty = rng.random(n)
    dice_values = np.clip(0.9 - 0.5 * uncertainty + rng.normal(0, 0.15, n), 0, 1)
    dice_values[: n // 3] = np.round(dice_values[: n // 3], 1)  # ties for Spearman
    for method, reference in (("spearman", stats.spearmanr), ("pearson", stats.pearsonr)):
        result = uncertainty_dice_correlation(uncertainty, dice_values, method=method)
        expected = reference(uncertainty, dice_values)
        assert result.n == n
        assert result.coefficient == pytest.approx(expected[0], rel=1e-10, abs=1e-14)
        assert result.p_value == pytest.approx(expected[1], rel=1e-8, abs=1e-14)


def test_correlation_perfect_and_default_method():
    coefficient, p_value, n = uncertainty_dice_correlation([0.1, 0.3, 0.2, 0.6], [9, 7, 8, 1])
    assert (coefficient, p_value, n) == (-1.0, 0.0, 4)  # monotone, so Spearman gives -1


def test_correlation_of_a_constant_list_is_nan_with_a_warning():
    with pytest.warns(RuntimeWarning, match="dice_per_patient is the same"):
        result = uncertainty_dice_correlation([0.1, 0.2, 0.3], [1.0, 1.0, 1.0])
    assert math.isnan(result.coefficient) and math.isnan(result.p_value) and result.n == 3


def test_correlation_argument_errors():
    with pytest.raises(ValueError, match="at least 3 patients, got 2"):
        uncertainty_dice_correlation([0.1, 0.2], [0.9, 0.8])
    with pytest.raises(ValueError, match="mean_uncertainty_per_patient has 3 values"):
        uncertainty_dice_correlation([0.1, 0.2, 0.3], [0.9, 0.8, 0.7, 0.6])
    with pytest.raises(ValueError, match="dice_per_patient holds NaN"):
        uncertainty_dice_correlation([0.1, 0.2, 0.3], [0.9, np.nan, 0.7])
    with pytest.raises(ValueError, match="mean_uncertainty_per_patient must be one number"):
        uncertainty_dice_correlation([[0.1, 0.2, 0.3]], [0.9, 0.8, 0.7])
    with pytest.raises(ValueError, match="mean_uncertainty_per_patient must be one number"):
        uncertainty_dice_correlation(["a", "b", "c"], [0.9, 0.8, 0.7])
    with pytest.raises(ValueError, match="method must be one of"):
        uncertainty_dice_correlation([0.1, 0.2, 0.3], [0.9, 0.8, 0.7], method="kendall")


def test_new_functions_are_exported():
    for name in metrics.__all__:
        assert hasattr(metrics, name), name
    for name in (
        "expected_calibration_error",
        "reliability_diagram",
        "brier_score",
        "uncertainty_error_auroc",
        "uncertainty_dice_correlation",
    ):
        assert name in metrics.__all__
