"""kseg.metrics against hand-worked cases, set formulas and brute-force surface distances."""

import math
import re

import keras
import numpy as np
import pytest
from keras_harness import run_serialization_test
from scipy import ndimage

from kseg import losses, metrics

ANISOTROPIC = (3.0, 0.8, 0.8)


def nan_equal(actual, expected):
    return (math.isnan(actual) and math.isnan(expected)) or actual == pytest.approx(expected)


def random_mask(shape, seed, fill=0.45):
    """A smooth random blob: thresholded box-filtered noise, so surfaces are compact."""
    noise = ndimage.uniform_filter(np.random.default_rng(seed).random(shape), size=3)
    return noise > np.quantile(noise, 1 - fill)


# ---- overlap and confusion-matrix scores ------------------------------------------------


def set_scores(t, p):
    """The scores written with set operations on boolean arrays."""
    t, p = t.astype(bool), p.astype(bool)
    both, either = np.logical_and(t, p).sum(), np.logical_or(t, p).sum()
    return {
        "dice": 2 * both / (t.sum() + p.sum()),
        "iou": both / either,
        "precision": both / p.sum(),
        "recall": both / t.sum(),
        "specificity": np.logical_and(~t, ~p).sum() / (~t).sum(),
        "accuracy": np.mean(t == p),
    }


SCORES = ["dice", "iou", "precision", "recall", "specificity", "accuracy"]


@pytest.mark.parametrize("shape", [(7, 9), (4, 6, 5)], ids=["2d", "3d"])
@pytest.mark.parametrize("seed", [0, 1])
def test_scores_match_set_formulas(shape, seed):
    t, p = random_mask(shape, seed), random_mask(shape, seed + 10)
    expected = set_scores(t, p)
    for name in SCORES:
        assert getattr(metrics, name)(t.astype(np.uint8), p) == pytest.approx(expected[name])


def test_scores_on_a_hand_worked_case():
    t = np.array([1, 1, 1, 0, 0, 0, 0, 0])
    p = np.array([1, 1, 0, 1, 0, 0, 0, 0])  # TP 2, FP 1, FN 1, TN 4
    assert metrics.dice(t, p) == pytest.approx(4 / 6)
    assert metrics.iou(t, p) == pytest.approx(2 / 4)
    assert metrics.precision(t, p) == pytest.approx(2 / 3)
    assert metrics.recall(t, p) == pytest.approx(2 / 3)
    assert metrics.specificity(t, p) == pytest.approx(4 / 5)
    assert metrics.accuracy(t, p) == pytest.approx(6 / 8)


FULL = np.ones((2, 3), dtype=bool)
EMPTY = np.zeros((2, 3), dtype=bool)
PART = np.array([[1, 1, 0], [0, 0, 0]], dtype=bool)
OTHER = np.array([[0, 0, 0], [0, 1, 1]], dtype=bool)
E = "empty"  # stands for the `empty` argument in the table below

UNDEFINED_CASES = [
    # name, y_true, y_pred, expected ("empty" where the score is undefined)
    ("dice", EMPTY, EMPTY, E),
    ("dice", PART, EMPTY, 0.0),
    ("dice", PART, PART, 1.0),
    ("dice", PART, OTHER, 0.0),
    ("iou", EMPTY, EMPTY, E),
    ("iou", EMPTY, PART, 0.0),
    ("precision", PART, EMPTY, E),
    ("precision", EMPTY, EMPTY, E),
    ("precision", EMPTY, PART, 0.0),
    ("recall", EMPTY, PART, E),
    ("recall", EMPTY, EMPTY, E),
    ("recall", PART, EMPTY, 0.0),
    ("specificity", FULL, PART, E),
    ("specificity", EMPTY, EMPTY, 1.0),
    ("specificity", EMPTY, FULL, 0.0),
    ("accuracy", np.zeros((0, 3)), np.zeros((0, 3)), E),
    ("accuracy", EMPTY, EMPTY, 1.0),
    ("accuracy", PART, OTHER, 2 / 6),
]


@pytest.mark.parametrize("name, y_true, y_pred, expected", UNDEFINED_CASES)
@pytest.mark.parametrize("empty", [1.0, 0.0, math.nan])
def test_empty_conventions(name, y_true, y_pred, expected, empty):
    value = getattr(metrics, name)(y_true, y_pred, empty=empty)
    assert nan_equal(value, empty if expected == E else expected)


@pytest.mark.parametrize("name", SCORES + ["hd95", "volume_difference"])
def test_shape_mismatch_raises_value_error(name):
    with pytest.raises(ValueError, match="shape"):
        getattr(metrics, name)(np.zeros((3, 4)), np.zeros((4, 3)))


def test_non_binary_values_are_refused():
    with pytest.raises(ValueError, match="y_true must be a binary"):
        metrics.dice(np.array([0, 1, 2]), np.array([0, 1, 1]))


# ---- surface distances ------------------------------------------------------------------


def reference_surface(mask):
    """Mask voxels with a face neighbour outside the mask or outside the array."""
    padded = np.pad(mask.astype(bool), 1)
    interior = tuple(slice(1, -1) for _ in range(mask.ndim))
    all_neighbours_inside = np.ones(mask.shape, dtype=bool)
    for axis in range(mask.ndim):
        for shift in (-1, 1):
            all_neighbours_inside &= np.roll(padded, shift, axis=axis)[interior]
    return mask.astype(bool) & ~all_neighbours_inside


def brute_force_directed(from_mask, to_mask, spacing):
    """Every pairwise distance in mm, then the nearest target for each source voxel."""
    source = np.argwhere(reference_surface(from_mask)) * np.asarray(spacing)
    target = np.argwhere(reference_surface(to_mask)) * np.asarray(spacing)
    pairwise = np.sqrt(((source[:, None, :] - target[None, :, :]) ** 2).sum(axis=-1))
    return pairwise.min(axis=1)


def single_voxel(shape, index):
    mask = np.zeros(shape, dtype=bool)
    mask[index] = True
    return mask


def box(shape, slices):
    mask = np.zeros(shape, dtype=bool)
    mask[slices] = True
    return mask


HAND_CASES = [
    # y_true, y_pred, spacing, hausdorff, hd95, assd
    pytest.param(
        single_voxel((6, 3, 3), (0, 1, 1)),
        single_voxel((6, 3, 3), (4, 1, 1)),
        ANISOTROPIC,
        12.0,
        12.0,
        12.0,
        id="voxels-4-slices-apart-along-z",
    ),
    pytest.param(
        # 2x2x2 cubes, the second shifted by 2 slices: half the faces are 1 slice apart
        box((6, 4, 4), np.s_[1:3, 1:3, 1:3]),
        box((6, 4, 4), np.s_[3:5, 1:3, 1:3]),
        ANISOTROPIC,
        6.0,
        6.0,
        4.5,
        id="cubes-shifted-along-z",
    ),
    pytest.param(
        box((4, 4, 6), np.s_[1:3, 1:3, 1:3]),
        box((4, 4, 6), np.s_[1:3, 1:3, 3:5]),
        ANISOTROPIC,
        1.6,
        1.6,
        1.2,
        id="cubes-shifted-in-plane",
    ),
    pytest.param(
        # full 3x3x3 block: its array-border voxels are surface, its centre is not;
        # the centre voxel is 0.8 mm from the nearest face, the corners sqrt(9+.64+.64)
        np.ones((3, 3, 3), dtype=bool),
        single_voxel((3, 3, 3), (1, 1, 1)),
        ANISOTROPIC,
        math.sqrt(10.28),
        math.sqrt(10.28),
        # ASSD: the 26 border voxels' distances to the centre, plus the centre's 0.8 mm
        (
            4 * 0.8
            + 4 * math.hypot(0.8, 0.8)
            + 2 * 3.0
            + 8 * math.hypot(3.0, 0.8)
            + 8 * math.sqrt(10.28)
            + 0.8
        )
        / 27,
        id="array-border-counts-as-surface",
    ),
    pytest.param(
        box((5, 5), np.s_[1:3, 1:3]),
        box((5, 5), np.s_[1:3, 1:3]),
        (2.0, 0.5),
        0.0,
        0.0,
        0.0,
        id="perfect-2d",
    ),
]


@pytest.mark.parametrize("y_true, y_pred, spacing, hausdorff, hd95, assd", HAND_CASES)
def test_surface_distances_on_hand_worked_cases(y_true, y_pred, spacing, hausdorff, hd95, assd):
    assert metrics.hausdorff_distance(y_true, y_pred, spacing) == pytest.approx(hausdorff)
    assert metrics.hd95(y_true, y_pred, spacing) == pytest.approx(hd95)
    assert metrics.average_surface_distance(y_true, y_pred, spacing) == pytest.approx(assd)


@pytest.mark.parametrize(
    "shape, spacing",
    [((7, 9, 8), ANISOTROPIC), ((12, 11), (2.0, 0.7)), ((5, 6, 7), None)],
    ids=["3d-anisotropic", "2d-anisotropic", "3d-unit"],
)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_surface_distances_match_brute_force(shape, spacing, seed):
    y_true, y_pred = random_mask(shape, seed, 0.3), random_mask(shape, seed + 50, 0.35)
    unit = (1.0,) * len(shape) if spacing is None else spacing
    pred_to_true = brute_force_directed(y_pred, y_true, unit)
    true_to_pred = brute_force_directed(y_true, y_pred, unit)
    for percentile in (100, 95, 50):
        expected = max(
            np.percentile(pred_to_true, percentile), np.percentile(true_to_pred, percentile)
        )
        actual = metrics.hausdorff_distance(y_true, y_pred, spacing, percentile=percentile)
        assert actual == pytest.approx(expected)
    assert metrics.hd95(y_true, y_pred, spacing) == pytest.approx(
        max(np.percentile(pred_to_true, 95), np.percentile(true_to_pred, 95))
    )
    symmetric = np.concatenate([pred_to_true, true_to_pred]).mean()
    assert metrics.average_surface_distance(y_true, y_pred, spacing) == pytest.approx(symmetric)
    directed = metrics.average_surface_distance(y_true, y_pred, spacing, symmetric=False)
    assert directed == pytest.approx(pred_to_true.mean())


def test_hd95_is_the_larger_directed_percentile_not_the_pooled_one():
    # a 9x9 reference and the same square plus a 3-voxel spur: the spur is 3 % of the
    # union of distances but a larger share of one direction
    y_true = box((15, 15), np.s_[2:11, 2:11])
    y_pred = y_true.copy()
    y_pred[11:14, 6] = True
    pred_to_true = brute_force_directed(y_pred, y_true, (1.0, 1.0))
    true_to_pred = brute_force_directed(y_true, y_pred, (1.0, 1.0))
    directed = max(np.percentile(pred_to_true, 95), np.percentile(true_to_pred, 95))
    pooled = np.percentile(np.concatenate([pred_to_true, true_to_pred]), 95)
    assert directed > pooled
    assert metrics.hd95(y_true, y_pred) == pytest.approx(directed)


@pytest.mark.parametrize(
    "function", [metrics.hausdorff_distance, metrics.hd95, metrics.average_surface_distance]
)
def test_surface_distance_empty_conventions(function):
    empty, mask = np.zeros((3, 4, 4)), box((3, 4, 4), np.s_[1, 1:3, 1:3])
    assert math.isnan(function(empty, empty, ANISOTROPIC))
    assert function(mask, empty, ANISOTROPIC) == math.inf
    assert function(empty, mask, ANISOTROPIC) == math.inf
    assert function(empty, empty, ANISOTROPIC, empty=0.0) == 0.0
    assert math.isnan(function(empty, mask, ANISOTROPIC, one_empty=math.nan))
    assert function(mask, empty, ANISOTROPIC, one_empty=373.0) == 373.0


@pytest.mark.parametrize(
    "call",
    [
        lambda m: metrics.hausdorff_distance(m, m, (1.0, 1.0)),
        lambda m: metrics.hausdorff_distance(m, m, (1.0, -1.0, 1.0)),
        lambda m: metrics.hausdorff_distance(m, m, percentile=101),
        lambda m: metrics.average_surface_distance(m, m, symmetric="yes"),
        lambda m: metrics.volume_difference(m, m, (1.0, 1.0)),
    ],
)
def test_bad_spacing_and_options_raise(call):
    with pytest.raises(ValueError):
        call(np.ones((2, 2, 2), dtype=bool))


def test_isotropic_scalar_spacing_scales_distances():
    a, b = single_voxel((5, 5), (0, 0)), single_voxel((5, 5), (3, 4))
    assert metrics.hausdorff_distance(a, b, 2.0) == pytest.approx(10.0)


# ---- volumes ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "true_voxels, pred_voxels, signed, absolute",
    [(8, 10, 25.0, 25.0), (8, 6, -25.0, 25.0), (8, 8, 0.0, 0.0), (8, 0, -100.0, 100.0)],
)
def test_volume_differences(true_voxels, pred_voxels, signed, absolute):
    y_true, y_pred = np.zeros((3, 4, 4)), np.zeros((3, 4, 4))
    y_true.flat[:true_voxels] = 1
    y_pred.flat[:pred_voxels] = 1
    assert metrics.volume_difference(y_true, y_pred, ANISOTROPIC) == pytest.approx(signed)
    assert metrics.relative_absolute_volume_difference(y_true, y_pred) == pytest.approx(absolute)


def test_volume_differences_are_nan_without_reference():
    empty, mask = np.zeros((2, 2)), np.ones((2, 2))
    assert math.isnan(metrics.volume_difference(empty, mask))
    assert math.isnan(metrics.relative_absolute_volume_difference(empty, empty))


# ---- per class ---------------------------------------------------------------------------


def test_per_class_scores_each_label():
    y_true = np.array([[0, 1, 1], [2, 2, 0]])
    y_pred = np.array([[0, 1, 2], [2, 2, 2]])
    scores = metrics.per_class(metrics.dice, y_true, y_pred, labels=[1, 2, 3])
    assert scores == {1: pytest.approx(2 / 3), 2: pytest.approx(4 / 6), 3: 1.0}
    nan_for_absent = metrics.per_class(metrics.dice, y_true, y_pred, labels=[3], empty=math.nan)
    assert math.isnan(nan_for_absent[3])
    distances = metrics.per_class(
        metrics.hausdorff_distance, y_true, y_pred, labels=[1], spacing=(2.0, 1.0)
    )
    assert distances == {1: pytest.approx(1.0)}


def test_per_class_rejects_mismatched_maps():
    with pytest.raises(ValueError, match="shape"):
        metrics.per_class(metrics.dice, np.zeros((2, 2)), np.zeros((2, 3)), labels=[1])


# ---- streaming Keras metrics ------------------------------------------------------------


def binary_batches(seed):
    rng = np.random.default_rng(seed)
    return [
        (rng.integers(0, 2, size=(n, 5, 6, 1)), rng.random((n, 5, 6, 1)).astype("float32"))
        for n in (2, 3)
    ]


@pytest.mark.parametrize(
    "metric_class, reference", [(metrics.DiceScore, metrics.dice), (metrics.IoUScore, metrics.iou)]
)
def test_binary_streaming_equals_numpy_over_concatenation(metric_class, reference):
    batches = binary_batches(0)
    metric = metric_class(threshold=0.4)
    for y_true, y_pred in batches:
        metric.update_state(y_true, y_pred)
    all_true = np.concatenate([t for t, _ in batches])
    all_pred = np.concatenate([p for _, p in batches]) >= 0.4
    assert float(metric.result()) == pytest.approx(reference(all_true, all_pred), rel=1e-6)


@pytest.mark.parametrize("include_background", [True, False])
@pytest.mark.parametrize("label_layout", ["sparse", "sparse-channel", "one-hot"])
def test_multiclass_streaming_dice_is_mean_of_per_class_dice(include_background, label_layout):
    rng = np.random.default_rng(1)
    labels = [rng.integers(0, 3, size=(n, 3, 4, 5)) for n in (2, 1)]
    logits = [rng.normal(size=(n, 3, 4, 5, 3)).astype("float32") for n in (2, 1)]
    layouts = {
        "sparse": lambda x: x,
        "sparse-channel": lambda x: x[..., None],
        "one-hot": lambda x: np.eye(3)[x],
    }
    metric = metrics.DiceScore(
        num_classes=3, from_logits=True, include_background=include_background
    )
    for y_true, y_pred in zip(labels, logits, strict=True):
        metric.update_state(layouts[label_layout](y_true), y_pred)
    all_true = np.concatenate(labels)
    all_pred = np.concatenate(logits).argmax(axis=-1)
    scored = range(0 if include_background else 1, 3)
    expected = np.mean([metrics.dice(all_true == c, all_pred == c) for c in scored])
    assert float(metric.result()) == pytest.approx(expected, rel=1e-6)


def test_streaming_logits_threshold_reset_and_sample_weight():
    (t1, p1), (t2, p2) = binary_batches(2)
    logits = np.log(p1 / (1 - p1))
    metric = metrics.DiceScore(threshold=0.7, from_logits=True)
    metric.update_state(t1, logits)
    assert float(metric.result()) == pytest.approx(metrics.dice(t1, p1 >= 0.7), rel=1e-6)
    metric.reset_state()
    weights = np.array([0.0, 1.0, 1.0])  # the first sample drops out of the counts
    metric.update_state(t2, np.log(p2 / (1 - p2)), sample_weight=weights)
    assert float(metric.result()) == pytest.approx(metrics.dice(t2[1:], p2[1:] >= 0.7), rel=1e-6)
    iou = metrics.IoUScore(threshold=0.7)
    iou.update_state(t2, p2, sample_weight=weights)
    assert float(iou.result()) == pytest.approx(metrics.iou(t2[1:], p2[1:] >= 0.7), rel=1e-6)


@pytest.mark.parametrize("empty", [1.0, 0.0, math.nan])
def test_streaming_empty_convention(empty):
    metric = metrics.DiceScore(empty=empty)
    metric.update_state(np.zeros((1, 4, 4, 1)), np.zeros((1, 4, 4, 1)))
    assert nan_equal(float(metric.result()), empty)


def test_streaming_rejects_wrong_channel_count_and_bad_arguments():
    with pytest.raises(ValueError, match=r"\(1, 2, 2, 3\).*num_classes=2"):
        metrics.DiceScore(num_classes=2).update_state(np.zeros((1, 2, 2)), np.zeros((1, 2, 2, 3)))
    for kwargs in ({"num_classes": 0}, {"threshold": 1.0}, {"from_logits": "yes"}, {"empty": None}):
        with pytest.raises(ValueError):
            metrics.IoUScore(**kwargs)


STREAMING = [
    pytest.param(lambda: metrics.DiceScore(), 1, id="dice-binary"),
    pytest.param(lambda: metrics.IoUScore(), 1, id="iou-binary"),
    pytest.param(lambda: metrics.DiceScore(num_classes=3), 3, id="dice-multiclass"),
    pytest.param(lambda: metrics.IoUScore(num_classes=3), 3, id="iou-multiclass"),
]


@pytest.mark.parametrize("make, channels", STREAMING)
def test_streaming_nan_predictions_raise_when_called_eagerly(make, channels):
    metric = make()
    labels = np.ones((2, 4, 4), dtype=int)
    prediction = np.full((2, 4, 4, channels), np.nan, dtype="float32")
    with pytest.raises(ValueError, match=r"NaN in 32 of 32 voxels.*diverged"):
        metric.update_state(labels, prediction)
    # A single NaN voxel is enough; the counts of the refused batch are not kept.
    prediction = np.full((2, 4, 4, channels), 0.9, dtype="float32")
    prediction[1, 2, 3, 0] = np.nan
    with pytest.raises(ValueError, match="NaN in 1 of 32 voxels"):
        metric.update_state(labels, prediction)
    for variable in metric.variables:
        assert not np.any(keras.ops.convert_to_numpy(variable))


@pytest.mark.parametrize("make, channels", STREAMING)
def test_streaming_nan_predictions_inside_compiled_evaluate_give_nan_not_zero(make, channels):
    # Before: NaN >= threshold is False, so a diverged model logged dice 0.0 as if it
    # predicted empty masks. Inside a traced step the metric cannot raise, so it says nan.
    inputs = keras.Input((4, 4, channels))
    diverged = keras.layers.Lambda(lambda x: x * np.float32("nan"))(inputs)
    model = keras.Model(inputs, diverged)
    model.compile(loss=losses.DiceLoss(), metrics=[make()])
    images = np.full((2, 4, 4, channels), 0.5, dtype="float32")
    labels = np.ones((2, 4, 4, 1), dtype="float32")
    logs = model.evaluate(images, labels, verbose=0, return_dict=True)
    scores = {key: value for key, value in logs.items() if key != "loss"}
    assert len(scores) == 1 and math.isnan(next(iter(scores.values()))), logs


def test_streaming_nan_state_clears_on_reset():
    import tensorflow as tf

    metric = metrics.DiceScore()
    tf.function(metric.update_state)(
        np.ones((1, 2, 2, 1), dtype="float32"), np.full((1, 2, 2, 1), np.nan, dtype="float32")
    )
    assert math.isnan(float(metric.result()))
    metric.reset_state()
    metric.update_state(np.array([[[[1], [0]]]]), np.array([[[[0.8], [0.6]]]]))
    assert float(metric.result()) == pytest.approx(2 / 3)


@pytest.mark.parametrize(
    "metric, y_true_shape, y_pred_shape",
    [
        (metrics.DiceScore(), (2, 8, 8, 1), (2, 4, 4, 1)),
        (metrics.IoUScore(), (2, 4, 4, 1), (3, 4, 4, 1)),
        (metrics.DiceScore(num_classes=3), (2, 8, 8), (2, 4, 4, 3)),
        (metrics.IoUScore(num_classes=3), (2, 4, 5, 1), (2, 4, 4, 3)),
        (metrics.DiceScore(num_classes=3), (2, 4, 5, 3), (2, 4, 4, 3)),
    ],
    ids=["dice-binary", "iou-batch", "dice-sparse", "iou-sparse-channel", "dice-one-hot"],
)
def test_streaming_shape_mismatch_names_both_shapes(metric, y_true_shape, y_pred_shape):
    y_true = np.zeros(y_true_shape)
    y_pred = np.full(y_pred_shape, 0.2, dtype="float32")
    expected = rf"y_true has shape {re.escape(str(y_true_shape))} but y_pred has shape "
    expected += re.escape(str(y_pred_shape))
    with pytest.raises(ValueError, match=expected):
        metric.update_state(y_true, y_pred)


def test_streaming_metrics_log_as_dice_and_iou():
    assert metrics.DiceScore().name == "dice"
    assert metrics.IoUScore().name == "iou"


@pytest.mark.parametrize(
    "metric",
    [
        metrics.DiceScore(
            num_classes=4, threshold=0.3, from_logits=True, include_background=True, empty=0.0
        ),
        metrics.IoUScore(num_classes=2, name="val_overlap", empty=math.nan),
    ],
    ids=["dice", "iou"],
)
def test_streaming_config_round_trip(metric):
    run_serialization_test(metric)


def test_compiled_model_reloads_and_evaluates_like_numpy(tmp_path):
    inputs = keras.Input((5, 6, 1))
    model = keras.Model(inputs, keras.layers.Identity()(inputs))
    model.compile(
        loss=losses.DiceLoss(),
        metrics=[metrics.DiceScore(threshold=0.3), metrics.IoUScore(threshold=0.6)],
    )
    path = tmp_path / "model.keras"
    model.save(path)
    restored = keras.saving.load_model(path)
    batches = binary_batches(3)
    y_true = np.concatenate([t for t, _ in batches]).astype("float32")
    y_pred = np.concatenate([p for _, p in batches])
    logs = restored.evaluate(y_pred, y_true, batch_size=2, verbose=0, return_dict=True)
    assert logs["dice"] == pytest.approx(metrics.dice(y_true, y_pred >= 0.3), rel=1e-6)
    assert logs["iou"] == pytest.approx(metrics.iou(y_true, y_pred >= 0.6), rel=1e-6)
