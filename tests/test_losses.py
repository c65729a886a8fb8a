"""kseg.losses against independent numpy formulas written out per sample and per class."""

import math
import re

import keras
import numpy as np
import pytest
from keras_harness import run_serialization_test

from kseg import losses

SHAPES = {
    "binary-2d": ((2, 5, 6), 1),
    "binary-3d": ((2, 3, 4, 5), 1),
    "multiclass-2d": ((2, 5, 6), 3),
    "multiclass-3d": ((2, 3, 4, 5), 3),
}


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def softmax(x):
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def make_case(name, seed=0):
    """Labels, one-hot target, logits and probabilities for one of SHAPES."""
    spatial, channels = SHAPES[name]
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, max(channels, 2), size=spatial)
    logits = rng.normal(0.0, 1.5, size=spatial + (channels,))
    if channels == 1:
        target = labels[..., None].astype(np.float64)
        probabilities = sigmoid(logits)
    else:
        target = np.eye(channels)[labels]
        probabilities = softmax(logits)
    return labels, target, logits.astype("float32"), probabilities.astype("float32")


def as_float(value):
    return float(keras.ops.convert_to_numpy(value))


# ---- numpy references -------------------------------------------------------------------


def samples(target, probabilities, batch):
    if batch:
        return [(target.reshape(-1, target.shape[-1]), probabilities.reshape(-1, target.shape[-1]))]
    return [
        (target[b].reshape(-1, target.shape[-1]), probabilities[b].reshape(-1, target.shape[-1]))
        for b in range(len(target))
    ]


def classes(target, probabilities, include_background):
    if target.shape[-1] > 1 and not include_background:
        return target[..., 1:], probabilities[..., 1:]
    return target, probabilities


def ref_dice_coefficients(target, probabilities, smooth, include_background, squared, batch):
    """Mean-over-classes soft Dice per sample (or one value for the pooled batch)."""
    target, probabilities = classes(target, probabilities, include_background)
    scores = []
    for t, p in samples(target, probabilities, batch):
        per_class = []
        for c in range(t.shape[1]):
            x, y = t[:, c].astype(np.float64), p[:, c].astype(np.float64)
            denominator = x @ x + y @ y if squared else x.sum() + y.sum()
            per_class.append((2 * (x @ y) + smooth) / (denominator + smooth))
        scores.append(np.mean(per_class))
    return np.array(scores)


def ref_dice(
    target, probabilities, smooth=1.0, include_background=True, squared=False, batch=False
):
    return np.mean(
        1 - ref_dice_coefficients(target, probabilities, smooth, include_background, squared, batch)
    )


def ref_iou(target, probabilities, smooth=1.0, include_background=True, squared=False, batch=False):
    target, probabilities = classes(target, probabilities, include_background)
    values = []
    for t, p in samples(target, probabilities, batch):
        per_class = []
        for c in range(t.shape[1]):
            x, y = t[:, c].astype(np.float64), p[:, c].astype(np.float64)
            total = x @ x + y @ y if squared else x.sum() + y.sum()
            per_class.append(1 - (x @ y + smooth) / (total - x @ y + smooth))
        values.append(np.mean(per_class))
    return np.mean(values)


def ref_tversky(target, probabilities, alpha, beta, smooth=1.0, include_background=True):
    target, probabilities = classes(target, probabilities, include_background)
    values = []
    for t, p in samples(target, probabilities, False):
        per_class = []
        for c in range(t.shape[1]):
            x, y = t[:, c].astype(np.float64), p[:, c].astype(np.float64)
            tp, fp, fn = np.sum(x * y), np.sum((1 - x) * y), np.sum(x * (1 - y))
            per_class.append(1 - (tp + smooth) / (tp + alpha * fp + beta * fn + smooth))
        values.append(np.mean(per_class))
    return np.mean(values)


def ref_generalized_dice(target, probabilities, smooth=1e-5, include_background=True):
    if target.shape[-1] == 1:
        target = np.concatenate([1 - target, target], axis=-1)
        probabilities = np.concatenate([1 - probabilities, probabilities], axis=-1)
    if not include_background:
        target, probabilities = target[..., 1:], probabilities[..., 1:]
    values = []
    for t, p in samples(target, probabilities, False):
        t, p = t.astype(np.float64), p.astype(np.float64)
        volumes = t.sum(axis=0)
        weights = np.array([1 / v**2 if v > 0 else 0.0 for v in volumes])
        weights[volumes == 0] = weights.max()
        numerator = 2 * np.sum(weights * (t * p).sum(axis=0)) + smooth
        denominator = np.sum(weights * (t.sum(axis=0) + p.sum(axis=0))) + smooth
        values.append(1 - numerator / denominator)
    return np.mean(values)


def ref_weighted_bce(target, probabilities, beta):
    t, p = target.astype(np.float64), probabilities.astype(np.float64)
    return -np.mean(beta * t * np.log(p) + (1 - beta) * (1 - t) * np.log(1 - p))


def ref_cross_entropy_map(target, probabilities):
    t, p = target.astype(np.float64), probabilities.astype(np.float64)
    if t.shape[-1] == 1:
        return -(t * np.log(p) + (1 - t) * np.log(1 - p))[..., 0]
    return -np.sum(t * np.log(p), axis=-1)


def ref_focal(target, probabilities, gamma, alpha):
    t, p = target.astype(np.float64), probabilities.astype(np.float64)
    if t.shape[-1] == 1:
        t = np.concatenate([1 - t, t], axis=-1)
        p = np.concatenate([1 - p, p], axis=-1)
    weights = (
        np.ones(t.shape[-1])
        if alpha is None
        else np.array([1 - alpha] + [alpha] * (t.shape[-1] - 1))
    )
    return np.mean(-np.sum(weights * t * (1 - p) ** gamma * np.log(p), axis=-1))


def ref_top_k(target, probabilities, k):
    voxel_losses = ref_cross_entropy_map(target, probabilities).reshape(len(target), -1)
    kept = max(1, math.floor(voxel_losses.shape[1] * k / 100))
    return np.mean([np.sort(row)[::-1][:kept].mean() for row in voxel_losses])


# ---- values against the references ------------------------------------------------------

OPTIONS = [
    pytest.param({}, id="defaults"),
    pytest.param({"smooth": 0.0, "include_background": False}, id="no-background"),
    pytest.param({"squared_denominator": True, "smooth": 0.5}, id="squared"),
    pytest.param({"batch_dice": True}, id="batch"),
]


@pytest.mark.parametrize("case", SHAPES)
@pytest.mark.parametrize("options", OPTIONS)
def test_dice_and_iou_match_numpy(case, options):
    _, target, _, probabilities = make_case(case)
    reference_options = {
        "smooth": options.get("smooth", 1.0),
        "include_background": options.get("include_background", True),
        "squared": options.get("squared_denominator", False),
        "batch": options.get("batch_dice", False),
    }
    dice = as_float(losses.DiceLoss(**options)(target, probabilities))
    iou = as_float(losses.IoULoss(**options)(target, probabilities))
    assert dice == pytest.approx(ref_dice(target, probabilities, **reference_options), rel=1e-5)
    assert iou == pytest.approx(ref_iou(target, probabilities, **reference_options), rel=1e-5)


@pytest.mark.parametrize("case", SHAPES)
@pytest.mark.parametrize("alpha, beta", [(0.3, 0.7), (0.5, 0.5), (0.9, 0.1)])
def test_tversky_matches_numpy(case, alpha, beta):
    _, target, _, probabilities = make_case(case, seed=1)
    loss = losses.TverskyLoss(alpha=alpha, beta=beta)(target, probabilities)
    assert as_float(loss) == pytest.approx(
        ref_tversky(target, probabilities, alpha, beta), rel=1e-5
    )


def test_tversky_half_half_is_dice_and_one_one_is_iou():
    _, target, _, probabilities = make_case("multiclass-2d", seed=2)
    # the smoothing terms differ (s added to TP, not 2 TP), so compare without them
    tversky_half = losses.TverskyLoss(alpha=0.5, beta=0.5, smooth=0.0)(target, probabilities)
    tversky_one = losses.TverskyLoss(alpha=1.0, beta=1.0, smooth=0.0)(target, probabilities)
    dice, iou = (
        ref_dice(target, probabilities, smooth=0.0),
        ref_iou(target, probabilities, smooth=0.0),
    )
    assert as_float(tversky_half) == pytest.approx(dice, rel=1e-5)
    assert as_float(tversky_one) == pytest.approx(iou, rel=1e-5)


@pytest.mark.parametrize("case", SHAPES)
@pytest.mark.parametrize("include_background", [True, False])
def test_generalized_dice_matches_numpy(case, include_background):
    _, target, _, probabilities = make_case(case, seed=3)
    loss = losses.GeneralizedDiceLoss(include_background=include_background)
    expected = ref_generalized_dice(target, probabilities, include_background=include_background)
    assert as_float(loss(target, probabilities)) == pytest.approx(expected, rel=1e-5)


def test_generalized_dice_gives_absent_class_the_largest_weight():
    labels = np.zeros((1, 4, 4), dtype=int)
    labels[0, :1, :1] = 1  # class 1 has 1 voxel, class 2 is absent
    target = np.eye(3)[labels]
    probabilities = np.full((1, 4, 4, 3), 0.2, dtype="float32")
    probabilities[..., 0] = 0.6
    # weights: background 1/15**2, class 1 1/1**2, absent class 2 gets max = 1
    weights = np.array([1 / 225, 1.0, 1.0])
    intersection = (target * probabilities).reshape(-1, 3).sum(axis=0)
    totals = (target + probabilities).reshape(-1, 3).sum(axis=0)
    expected = 1 - (2 * weights @ intersection + 1e-5) / (weights @ totals + 1e-5)
    assert as_float(losses.GeneralizedDiceLoss()(target, probabilities)) == pytest.approx(expected)
    empty = losses.GeneralizedDiceLoss(include_background=False)(
        np.zeros_like(target), probabilities
    )
    assert as_float(empty) == pytest.approx(0.0)


@pytest.mark.parametrize("case", SHAPES)
@pytest.mark.parametrize("beta", [0.5, 0.8, 0.2])
def test_weighted_binary_crossentropy_matches_numpy(case, beta):
    _, target, _, probabilities = make_case(case, seed=4)
    loss = losses.BinaryCrossentropy(beta=beta)(target, probabilities)
    assert as_float(loss) == pytest.approx(ref_weighted_bce(target, probabilities, beta), rel=1e-5)


def test_half_beta_crossentropy_is_half_keras_binary_crossentropy():
    _, target, _, probabilities = make_case("binary-2d", seed=5)
    keras_bce = keras.losses.BinaryCrossentropy()(target, probabilities)
    ours = losses.BinaryCrossentropy(beta=0.5)(target, probabilities)
    assert as_float(ours) == pytest.approx(0.5 * as_float(keras_bce), rel=1e-5)


@pytest.mark.parametrize("case", SHAPES)
@pytest.mark.parametrize("alpha, beta", [(2 / 3, 0.5), (0.3, 0.9)])
def test_combo_loss_matches_paper_formula(case, alpha, beta):
    _, target, _, probabilities = make_case(case, seed=6)
    dice_coefficient = ref_dice_coefficients(target, probabilities, 1.0, True, False, False)
    expected = alpha * ref_weighted_bce(target, probabilities, beta) - (1 - alpha) * np.mean(
        dice_coefficient
    )
    loss = losses.ComboLoss(alpha=alpha, beta=beta)(target, probabilities)
    assert as_float(loss) == pytest.approx(expected, rel=1e-5, abs=1e-6)


def test_combo_default_weights_split_three_equal_shares():
    _, target, _, probabilities = make_case("binary-3d", seed=7)
    t, p = target.astype(np.float64), probabilities.astype(np.float64)
    foreground_ce = -np.mean(t * np.log(p))
    background_ce = -np.mean((1 - t) * np.log(1 - p))
    dice_coefficient = np.mean(
        ref_dice_coefficients(target, probabilities, 1.0, True, False, False)
    )
    expected = (foreground_ce + background_ce - dice_coefficient) / 3
    assert as_float(losses.ComboLoss()(target, probabilities)) == pytest.approx(expected, rel=1e-5)


def test_combo_loss_of_perfect_prediction_is_minus_dice_share():
    target = np.zeros((1, 4, 4, 1), dtype="float32")
    target[0, 1:3, 1:3] = 1
    loss = losses.ComboLoss(alpha=0.25, smooth=0.0)(target, target)
    assert as_float(loss) == pytest.approx(-0.75, abs=1e-5)


@pytest.mark.parametrize("case", SHAPES)
@pytest.mark.parametrize("gamma, alpha", [(2.0, None), (2.0, 0.25), (0.5, 0.75)])
def test_focal_loss_matches_numpy(case, gamma, alpha):
    _, target, _, probabilities = make_case(case, seed=8)
    loss = losses.FocalLoss(gamma=gamma, alpha=alpha)(target, probabilities)
    assert as_float(loss) == pytest.approx(ref_focal(target, probabilities, gamma, alpha), rel=1e-5)


@pytest.mark.parametrize("case", SHAPES)
def test_focal_loss_without_focus_is_cross_entropy(case):
    _, target, _, probabilities = make_case(case, seed=9)
    loss = losses.FocalLoss(gamma=0.0)(target, probabilities)
    expected = ref_cross_entropy_map(target, probabilities).mean()
    assert as_float(loss) == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("case", SHAPES)
@pytest.mark.parametrize("k", [10, 33.3, 100])
def test_top_k_is_mean_of_hardest_voxels_by_numpy_sort(case, k):
    _, target, _, probabilities = make_case(case, seed=10)
    loss = losses.TopKLoss(k=k)(target, probabilities)
    assert as_float(loss) == pytest.approx(ref_top_k(target, probabilities, k), rel=1e-5)


def test_top_k_keeps_at_least_one_voxel_and_works_with_unknown_spatial_shape():
    import tensorflow as tf

    _, target, _, probabilities = make_case("multiclass-2d", seed=11)
    loss = losses.TopKLoss(k=1)  # floor(30 * 1 / 100) = 0 voxels -> 1
    assert as_float(loss(target, probabilities)) == pytest.approx(
        ref_top_k(target, probabilities, 1), rel=1e-5
    )
    spec = tf.TensorSpec([None, None, None, 3], tf.float32)
    traced = tf.function(lambda t, p: losses.TopKLoss(k=20)(t, p), input_signature=[spec, spec])
    value = traced(tf.constant(target, tf.float32), tf.constant(probabilities))
    assert float(value) == pytest.approx(ref_top_k(target, probabilities, 20), rel=1e-5)


@pytest.mark.parametrize("case", SHAPES)
@pytest.mark.parametrize("include_background", [True, False])
def test_dice_ce_matches_numpy(case, include_background):
    _, target, _, probabilities = make_case(case, seed=12)
    loss = losses.DiceCELoss(lambda_dice=0.7, lambda_ce=1.5, include_background=include_background)
    expected = 0.7 * ref_dice(
        target, probabilities, smooth=1e-5, include_background=include_background
    ) + 1.5 * np.mean(ref_cross_entropy_map(target, probabilities))
    assert as_float(loss(target, probabilities)) == pytest.approx(expected, rel=1e-5)


# ---- input conventions ------------------------------------------------------------------

ALL_LOSSES = [
    losses.DiceLoss,
    losses.IoULoss,
    losses.TverskyLoss,
    losses.GeneralizedDiceLoss,
    losses.BinaryCrossentropy,
    losses.ComboLoss,
    losses.DiceCELoss,
    losses.FocalLoss,
    losses.TopKLoss,
]


@pytest.mark.parametrize("loss_class", ALL_LOSSES)
@pytest.mark.parametrize("case", SHAPES)
def test_from_logits_equals_probabilities(loss_class, case):
    _, target, logits, probabilities = make_case(case, seed=13)
    from_probabilities = loss_class()(target, probabilities)
    from_logits = loss_class(from_logits=True)(target, logits)
    assert as_float(from_logits) == pytest.approx(as_float(from_probabilities), rel=1e-4, abs=1e-6)


@pytest.mark.parametrize("loss_class", ALL_LOSSES)
@pytest.mark.parametrize("case", ["multiclass-2d", "multiclass-3d", "binary-2d"])
def test_sparse_labels_equal_one_hot(loss_class, case):
    labels, target, _, probabilities = make_case(case, seed=14)
    one_hot = as_float(loss_class()(target, probabilities))
    with_channel = as_float(loss_class()(labels[..., None], probabilities))
    without_channel = as_float(loss_class()(labels, probabilities))
    assert with_channel == pytest.approx(one_hot, rel=1e-6)
    assert without_channel == pytest.approx(one_hot, rel=1e-6)


@pytest.mark.parametrize("loss_class", [losses.DiceLoss, losses.IoULoss, losses.TverskyLoss])
def test_overlap_losses_on_perfect_disjoint_and_empty_masks(loss_class):
    mask = np.zeros((1, 4, 4, 4, 1), dtype="float32")
    mask[0, :2] = 1
    disjoint = 1 - mask
    empty = np.zeros_like(mask)
    exact = loss_class(smooth=0.0)
    assert as_float(exact(mask, mask)) == pytest.approx(0.0, abs=1e-6)
    assert as_float(exact(mask, disjoint)) == pytest.approx(1.0, abs=1e-6)
    assert as_float(loss_class()(empty, empty)) == pytest.approx(0.0, abs=1e-6)
    assert as_float(exact(empty, empty)) == 0.0  # 0/0 is agreement on absence
    assert as_float(exact(mask, empty)) == pytest.approx(1.0, abs=1e-6)


EMPTY_CASE_LOSSES = [
    losses.DiceLoss,
    losses.IoULoss,
    losses.TverskyLoss,
    losses.GeneralizedDiceLoss,
]


def empty_pair(channels):
    """A target and a (hard) prediction in which every foreground class is absent."""
    if channels == 1:
        empty = np.zeros((2, 4, 3, 1), dtype="float32")
        return empty, empty
    labels = np.zeros((2, 4, 3), dtype=int)  # all background
    return labels, np.eye(channels, dtype="float32")[labels]


@pytest.mark.parametrize("loss_class", EMPTY_CASE_LOSSES)
@pytest.mark.parametrize("smooth", [0.0, 1e-12, 1e-8, 1e-5, 1.0])
@pytest.mark.parametrize("channels", [1, 3], ids=["binary", "multiclass"])
@pytest.mark.parametrize("include_background", [True, False])
@pytest.mark.parametrize("batch_dice", [False, True])
def test_empty_target_and_prediction_cost_nothing_for_every_smooth(
    loss_class, smooth, channels, include_background, batch_dice
):
    # Regression: with the denominator floored at epsilon (1e-7) and smooth=1e-8 the score
    # was 1e-8 / 1e-7, a loss of 0.9 for a perfect prediction of absence.
    import tensorflow as tf

    target, prediction = empty_pair(channels)
    loss = loss_class(
        smooth=smooth,
        include_background=include_background,
        batch_dice=batch_dice,
        reduction="none",
    )
    prediction = tf.Variable(prediction)
    with tf.GradientTape() as tape:
        values = loss(target, prediction)
    gradient = tape.gradient(values, prediction)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(values), [0.0, 0.0])
    assert np.isfinite(gradient.numpy()).all()


def test_empty_class_of_one_sample_scores_one_beside_a_scored_sample():
    # Hard predictions, smooth=0: the per-sample losses, worked out by hand.
    labels = np.array([[[0, 1], [1, 0]], [[2, 1], [0, 0]]])  # (2, 2, 2)
    predicted = np.array([[[0, 1], [0, 0]], [[2, 2], [0, 0]]])
    prediction = np.eye(3, dtype="float32")[predicted]
    # sample 0: background 2*2/(2+3) = 0.8, class 1 2*1/(2+1) = 2/3, class 2 absent = 1
    # sample 1: background 2*2/(2+2) = 1, class 1 0/(1+0) = 0, class 2 2*1/(1+2) = 2/3
    expected_dice = 1 - np.array([(0.8 + 2 / 3 + 1) / 3, (1 + 0 + 2 / 3) / 3])
    dice = losses.DiceLoss(smooth=0.0, reduction="none")(labels, prediction)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(dice), expected_dice, rtol=1e-6)
    # IoU: sample 0 2/3, 1/2, 1; sample 1 1, 0, 1/2
    expected_iou = 1 - np.array([(2 / 3 + 1 / 2 + 1) / 3, (1 + 0 + 1 / 2) / 3])
    iou = losses.IoULoss(smooth=0.0, reduction="none")(labels, prediction)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(iou), expected_iou, rtol=1e-6)


# MONAI's published GeneralizedDiceLoss cases (tests/losses/test_generalized_dice_loss.py),
# moved from MONAI's (B, C, N) layout to kseg's (B, N, C), then given a spatial axis of one
# row (kseg's losses take 2D or 3D maps); MONAI's smooth_nr = smooth_dr.
MONAI_GDL_INPUT = np.array(
    [[[-1.0, 0.0, 1.0], [1.0, 0.0, -1.0]], [[0.0, 0.0, 0.0], [0.0, 0.0, 0.0]]]
).transpose(0, 2, 1)
MONAI_GDL_HARD = np.array(
    [[[1.0, 1.0, 0.0], [0.0, 0.0, 1.0]], [[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]]]
).transpose(0, 2, 1)


@pytest.mark.parametrize(
    "options, y_true, y_pred, expected",
    [
        pytest.param(
            {"include_background": False, "smooth": 1e-8},
            np.zeros((2, 3)),
            MONAI_GDL_HARD,
            [0.0, 0.0],
            id="empty-target-smooth-1e-8",
        ),
        pytest.param(
            {"include_background": False, "smooth": 0.0},
            np.array([[0.0, 0.0, 1.0], [0.0, 1.0, 0.0]]),
            MONAI_GDL_HARD,
            [0.0, 0.0],
            id="perfect-smooth-0",
        ),
        pytest.param(
            {"include_background": True, "from_logits": True, "smooth": 1e-4},
            np.array([[1.0, 0.0, 0.0], [1.0, 1.0, 0.0]]),
            MONAI_GDL_INPUT,
            [0.273476, 0.555539],
            id="softmax-per-sample",
        ),
    ],
)
def test_generalized_dice_matches_monai_published_values(options, y_true, y_pred, expected):
    y_true, y_pred = y_true[:, None], y_pred[:, None]  # (B, 1, N, C): one row of N pixels
    loss = losses.GeneralizedDiceLoss(reduction="none", **options)
    values = keras.ops.convert_to_numpy(loss(y_true, y_pred.astype("float32")))
    np.testing.assert_allclose(values, expected, rtol=1e-5, atol=1e-7)
    mean = losses.GeneralizedDiceLoss(**options)(y_true, y_pred.astype("float32"))
    assert as_float(mean) == pytest.approx(np.mean(expected), rel=1e-5, abs=1e-7)


def test_per_sample_values_and_sample_weight():
    _, target, _, probabilities = make_case("binary-2d", seed=15)
    per_sample = losses.DiceLoss(reduction="none")(target, probabilities)
    expected = 1 - ref_dice_coefficients(target, probabilities, 1.0, True, False, False)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(per_sample), expected, rtol=1e-5)
    weighted = losses.DiceLoss()(target, probabilities, sample_weight=np.array([0.0, 1.0]))
    assert as_float(weighted) == pytest.approx(expected[1] / 2, rel=1e-5)


@pytest.mark.parametrize(
    "y_true_shape",
    [(2, 5, 6, 2), (2, 5), (2, 5, 6, 3, 1)],
    ids=["wrong-channels", "too-few-axes", "too-many-axes"],
)
def test_target_of_wrong_shape_raises_value_error_naming_both_shapes(y_true_shape):
    probabilities = np.full((2, 5, 6, 3), 1 / 3, dtype="float32")
    expected = r"y_true of shape .*y_pred of shape \(2, 5, 6, 3\)"
    with pytest.raises(ValueError, match=expected) as info:
        losses.DiceLoss()(np.zeros(y_true_shape), probabilities)
    assert type(info.value) is ValueError  # an argument error, not a file error


@pytest.mark.parametrize("loss_class", ALL_LOSSES)
@pytest.mark.parametrize(
    "y_true_shape, y_pred_shape",
    [((2, 8, 8, 1), (2, 4, 4, 1)), ((3, 4, 4), (2, 4, 4, 3)), ((2, 4, 5, 3), (2, 4, 4, 3))],
    ids=["binary-spatial", "sparse-batch", "one-hot-spatial"],
)
def test_grid_mismatch_raises_value_error_naming_both_shapes(
    loss_class, y_true_shape, y_pred_shape
):
    # Before: a raw backend error from the first elementwise product.
    expected = re.escape(f"y_true has shape {y_true_shape} but y_pred has shape {y_pred_shape}")
    with pytest.raises(ValueError, match=expected):
        loss_class()(np.zeros(y_true_shape), np.full(y_pred_shape, 0.3, dtype="float32"))


def test_prediction_without_channel_axis_raises_value_error_naming_y_pred():
    with pytest.raises(ValueError, match=r"y_pred must have shape .*got shape \(2, 5\)") as info:
        losses.DiceLoss()(np.zeros((2, 5)), np.zeros((2, 5), dtype="float32"))
    assert type(info.value) is ValueError


@pytest.mark.parametrize(
    "make",
    [
        lambda: losses.DiceLoss(smooth=-1.0),
        lambda: losses.DiceLoss(include_background="no"),
        lambda: losses.IoULoss(squared_denominator=1),
        lambda: losses.TverskyLoss(alpha=-0.1),
        lambda: losses.BinaryCrossentropy(beta=1.5),
        lambda: losses.ComboLoss(alpha=2.0),
        lambda: losses.FocalLoss(gamma=-1.0),
        lambda: losses.FocalLoss(alpha=1.2),
        lambda: losses.TopKLoss(k=0),
        lambda: losses.TopKLoss(k=150),
        lambda: losses.DiceCELoss(lambda_ce=-1.0),
        lambda: losses.GeneralizedDiceLoss(batch_dice=None),
    ],
)
def test_invalid_arguments_raise(make):
    with pytest.raises(ValueError):
        make()


@pytest.mark.parametrize("loss_class", ALL_LOSSES)
@pytest.mark.parametrize("channels", [1, 3], ids=["binary", "multiclass"])
def test_one_training_step_on_unknown_spatial_shape_gives_finite_loss(loss_class, channels):
    inputs = keras.Input((None, None, 1))
    model = keras.Model(inputs, keras.layers.Conv2D(channels, 3, padding="same")(inputs))
    model.compile(optimizer="sgd", loss=loss_class(from_logits=True))
    rng = np.random.default_rng(16)
    images = rng.normal(size=(2, 6, 6, 1)).astype("float32")
    labels = rng.integers(0, max(channels, 2), size=(2, 6, 6, 1))
    history = model.fit(images, labels, epochs=1, batch_size=2, verbose=0)
    assert np.isfinite(history.history["loss"][0])
    assert all(np.isfinite(keras.ops.convert_to_numpy(w)).all() for w in model.weights)


# ---- serialisation ----------------------------------------------------------------------

CONFIGURED = [
    losses.DiceLoss(
        smooth=0.5, include_background=False, squared_denominator=True, batch_dice=True
    ),
    losses.IoULoss(smooth=0.1, from_logits=True),
    losses.TverskyLoss(alpha=0.4, beta=0.6, include_background=False),
    losses.GeneralizedDiceLoss(smooth=1e-3, include_background=False),
    losses.BinaryCrossentropy(beta=0.7, from_logits=True),
    losses.ComboLoss(alpha=0.4, beta=0.3, smooth=2.0),
    losses.DiceCELoss(lambda_dice=0.5, lambda_ce=2.0, include_background=True),
    losses.FocalLoss(gamma=1.5, alpha=0.25),
    losses.TopKLoss(k=25, from_logits=True),
]


@pytest.mark.parametrize("loss", CONFIGURED, ids=lambda loss: type(loss).__name__)
def test_config_round_trip(loss):
    run_serialization_test(loss)


@pytest.mark.parametrize("loss", CONFIGURED, ids=lambda loss: type(loss).__name__)
def test_saved_model_reloads_without_custom_objects(loss, tmp_path):
    inputs = keras.Input((4, 4, 1))
    outputs = keras.layers.Conv2D(3, 1)(inputs)
    model = keras.Model(inputs, outputs)
    model.compile(optimizer="sgd", loss=loss)
    path = tmp_path / "model.keras"
    model.save(path)
    restored = keras.saving.load_model(path)
    assert type(restored.loss) is type(loss)
    assert restored.loss.get_config() == loss.get_config()
