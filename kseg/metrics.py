"""Segmentation metrics: streaming Keras metrics for training, numpy functions for evaluation.

Streaming metrics (:class:`DiceScore`, :class:`IoUScore`) take the same ``y_true`` /
``y_pred`` layouts as :mod:`kseg.losses` and add up true positives, false positives and
false negatives over every batch seen since the last ``reset_state``, so the result is one
global (volume-level) score, not a mean of per-batch scores. A NaN in ``y_pred`` (training
has diverged) is never scored as a confident "background": called eagerly the metric raises
``ValueError``; inside a traced ``fit`` / ``evaluate`` step it counts the NaN voxels and its
result is ``nan`` until ``reset_state``, so the logs show ``dice: nan`` instead of 0.
Targets outside the label set (a 0/255 mask, or sparse labels that are not ``0 .. C-1``)
are treated the same way: they would score Dice above 1 or silently drop voxels.

The numpy functions score one whole binary volume (any number of dimensions) and return a
Python float. Each documents the case in which it is undefined and returns its ``empty``
argument there, so a table over patients can choose 1.0 (agreeing on absence is perfect),
0.0, or ``nan`` (leave the case out of averages).

Surface distances and volumes are in millimetres: ``spacing`` gives the voxel size along
each array axis, in array order (``(z, y, x)`` for a :class:`kseg.io.Volume`), or is the
grid's affine (``volume.affine``; its linear part is enough), which is needed when the axes
are not perpendicular, as on a gantry-tilted CT. The surface of a mask is the mask minus
its erosion by the face-connected (6-neighbour in 3D) structuring element, with voxels on
the array border counted as surface, as in MONAI. Distances from every surface voxel of one
mask to the nearest surface voxel of the other come from
``scipy.ndimage.distance_transform_edt(..., sampling=spacing)`` on an orthogonal grid, and
from an exact nearest-neighbour search (``scipy.spatial.cKDTree``) between the surface voxel
centres mapped through the affine on a sheared one; both give the same distances where both
apply.
"""

from __future__ import annotations

import math
import numbers
import warnings
from collections.abc import Callable, Iterable, Mapping
from typing import NamedTuple

import keras
import numpy as np
from keras import ops
from scipy import ndimage, spatial, stats

from kseg.losses import (
    _concrete_bool,
    _invalid_target_voxels,
    _one_hot_target,
    _outside_label_set,
)

__all__ = [
    "Correlation",
    "DiceScore",
    "IoUScore",
    "ReliabilityDiagram",
    "accuracy",
    "average_surface_distance",
    "brier_score",
    "dice",
    "expected_calibration_error",
    "hausdorff_distance",
    "hd95",
    "iou",
    "per_class",
    "precision",
    "recall",
    "relative_absolute_volume_difference",
    "reliability_diagram",
    "specificity",
    "uncertainty_dice_correlation",
    "uncertainty_error_auroc",
    "volume_difference",
    "volume_ml",
]

# Grid axes whose cosine of the angle between them is below this count as perpendicular:
# the distance transform then errs by about this fraction of a distance at most.
ORTHOGONAL_TOLERANCE = 1e-4

_PACKAGE = "kseg"


def _check_empty(name, value):
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name} must be a float (for example 1.0, 0.0 or nan), got {value!r}")
    return float(value)


class _OverlapScore(keras.metrics.Metric):
    """Running per-class TP / FP / FN counts shared by :class:`DiceScore` and :class:`IoUScore`."""

    def __init__(self, num_classes, threshold, from_logits, include_background, empty, name, dtype):
        super().__init__(name=name, dtype=dtype)
        # numbers.Integral / Real: numpy scalars too (labels.max() + 1 is one)
        if (
            isinstance(num_classes, bool)
            or not isinstance(num_classes, numbers.Integral)
            or num_classes < 1
        ):
            raise ValueError(f"num_classes must be an integer >= 1, got {num_classes!r}")
        if isinstance(threshold, bool) or not isinstance(threshold, numbers.Real):
            raise ValueError(f"threshold must be a probability in (0, 1), got {threshold!r}")
        if not 0 < threshold < 1:
            raise ValueError(f"threshold must be a probability in (0, 1), got {threshold!r}")
        for flag_name, flag in (
            ("from_logits", from_logits),
            ("include_background", include_background),
        ):
            if not isinstance(flag, bool):
                raise ValueError(f"{flag_name} must be True or False, got {flag!r}")
        empty = _check_empty("empty", empty)
        num_classes, threshold = int(num_classes), float(threshold)
        self.num_classes = num_classes
        self.threshold = threshold
        self.from_logits = from_logits
        self.include_background = include_background
        self.empty = empty
        self.true_positives = self.add_variable(
            shape=(num_classes,), initializer="zeros", name="true_positives"
        )
        self.false_positives = self.add_variable(
            shape=(num_classes,), initializer="zeros", name="false_positives"
        )
        self.false_negatives = self.add_variable(
            shape=(num_classes,), initializer="zeros", name="false_negatives"
        )
        self.nan_voxels = self.add_variable(shape=(), initializer="zeros", name="nan_voxels")

    def update_state(self, y_true, y_pred, sample_weight=None):
        """Add the counts of one batch.

        Args:
            y_true: binary target, one-hot target or sparse labels (see :mod:`kseg.losses`),
                on the batch and spatial grid of ``y_pred``.
            y_pred: ``(B, *spatial, num_classes)`` probabilities, or logits with
                ``from_logits=True``. A binary model's voxel is foreground when its
                probability is >= ``threshold``; a multi-class voxel takes its argmax class.
            sample_weight: optional weights of shape ``(B,)`` or ``(B, 1)`` (one per
                sample), ``(B, *spatial)`` or ``(B, *spatial, 1)``, multiplying each
                voxel's contribution to the counts.

        Raises:
            ValueError: ``y_pred`` has the wrong channel count; the known batch or spatial
                sizes of ``y_true`` and ``y_pred`` differ (the message gives both shapes);
                or, called eagerly, ``y_pred`` holds NaN or ``y_true`` values outside the
                label set (binary / one-hot targets outside [0, 1], sparse labels that are
                not ``0 .. num_classes-1``). Inside a traced step these cannot raise; they
                make :meth:`result` ``nan`` until ``reset_state`` instead.
        """
        y_pred = ops.convert_to_tensor(y_pred, dtype=self.dtype)
        y_true = ops.convert_to_tensor(y_true, dtype=self.dtype)
        if len(y_pred.shape) < 2 or y_pred.shape[-1] != self.num_classes:
            raise ValueError(
                f"{self.name}: y_pred has shape {tuple(y_pred.shape)}, expected (batch, "
                f"*spatial, {self.num_classes}): the metric was built for "
                f"num_classes={self.num_classes}"
            )
        nan_voxels = ops.sum(ops.cast(ops.any(ops.isnan(y_pred), axis=-1), self.dtype))
        if _concrete_bool(nan_voxels > 0):
            raise ValueError(
                f"{self.name}: y_pred holds NaN in {int(ops.convert_to_numpy(nan_voxels))} of "
                f"{int(np.prod(y_pred.shape[:-1]))} voxels; the model's outputs are not "
                "numbers, which usually means training has diverged (lower the learning "
                "rate, check the inputs for NaN, or use a loss computed from logits)"
            )
        # Targets outside the label set (a 0/255 mask, label 7 of a 3-class model) would
        # score Dice above 1 or drop voxels from every class: undefined, like NaN.
        bad_target_voxels, expected = _invalid_target_voxels(y_true, y_pred, self.dtype)
        if _concrete_bool(bad_target_voxels > 0):
            given = f"num_classes={self.num_classes}"
            raise ValueError(
                f"{self.name}: {_outside_label_set(y_true, bad_target_voxels, expected, given)}"
            )
        self.nan_voxels.assign_add(nan_voxels + bad_target_voxels)
        target = _one_hot_target(y_true, y_pred)
        if self.num_classes == 1:
            probabilities = ops.sigmoid(y_pred) if self.from_logits else y_pred
            predicted = ops.cast(probabilities >= self.threshold, self.dtype)
        else:
            predicted = ops.one_hot(ops.argmax(y_pred, axis=-1), self.num_classes, dtype=self.dtype)
        if sample_weight is not None:
            weight = ops.convert_to_tensor(sample_weight, dtype=self.dtype)
            rank, weight_rank = len(y_pred.shape), len(weight.shape)
            if 1 <= weight_rank < rank - 1 and all(size == 1 for size in weight.shape[1:]):
                # one weight per sample, (B,) or (B, 1) (a batch of per-example (1,) weights)
                weight = ops.reshape(weight, (-1,) + (1,) * (rank - 1))
            elif weight_rank == rank - 1:
                weight = ops.expand_dims(weight, axis=-1)
            elif weight_rank != rank:
                raise ValueError(
                    f"{self.name}: sample_weight of shape {tuple(weight.shape)} is neither one "
                    f"weight per sample, (B,) or (B, 1), nor a voxel map (B, *spatial) or "
                    f"(B, *spatial, 1) of y_pred {tuple(y_pred.shape)}"
                )
            target = target * weight
            predicted_weighted = predicted * weight
        else:
            predicted_weighted = predicted
        axes = tuple(range(len(y_pred.shape) - 1))
        true_positive = ops.sum(target * predicted, axis=axes)
        self.true_positives.assign_add(true_positive)
        self.false_positives.assign_add(ops.sum(predicted_weighted, axis=axes) - true_positive)
        self.false_negatives.assign_add(ops.sum(target, axis=axes) - true_positive)

    def _scored(self, variable):
        if self.include_background or self.num_classes == 1:
            return variable
        return variable[1:]

    def _mean_score(self, numerator, denominator):
        per_class = ops.where(
            denominator > 0,
            numerator / ops.maximum(denominator, keras.config.epsilon()),
            ops.cast(self.empty, self.dtype),
        )
        # NaN predictions seen since the last reset leave the score undefined, not 0.
        return ops.where(self.nan_voxels > 0, ops.cast(math.nan, self.dtype), ops.mean(per_class))

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "num_classes": self.num_classes,
                "threshold": self.threshold,
                "from_logits": self.from_logits,
                "include_background": self.include_background,
                "empty": self.empty,
            }
        )
        return config


@keras.saving.register_keras_serializable(package=_PACKAGE)
class DiceScore(_OverlapScore):
    """Dice coefficient ``2 TP / (2 TP + FP + FN)`` accumulated over batches.

    Counts add up over every batch since ``reset_state``, so the score is that of all
    voxels seen together (a volume-level or dataset-level Dice), not the mean of batch
    scores. A multi-class result is the mean over the scored classes of their Dice.
    A class with ``2 TP + FP + FN = 0`` (absent from every target and prediction seen)
    scores ``empty``. NaN predictions (a diverged model) raise ``ValueError`` when the
    metric is called eagerly and make the result ``nan`` inside a compiled ``fit`` /
    ``evaluate`` step, never a silent 0; target and prediction of different batch or
    spatial sizes raise ``ValueError`` giving both shapes.

    Args:
        num_classes: channels of ``y_pred``; 1 for a binary (sigmoid) model.
        threshold: probability at or above which a binary voxel is foreground. Unused for
            multi-class models, which take the argmax.
        from_logits: whether ``y_pred`` holds logits.
        include_background: when False, class 0 of a multi-class model is left out of
            the mean, so the logged score reflects the structures, not the large and easy
            background. Ignored when ``num_classes == 1``.
        empty: score of a class never present in target or prediction: 1.0 (the
            default, agreement on absence), 0.0, or ``nan`` (which makes the mean nan).
        name: metric name; the default logs as ``dice`` and ``val_dice``.
        dtype: dtype of the counts.

    Example:

    >>> import numpy as np
    >>> metric = DiceScore()
    >>> metric.update_state(np.array([[[[1], [0]]]]), np.array([[[[0.8], [0.6]]]]))
    >>> round(float(metric.result()), 4)  # TP 1, FP 1, FN 0
    0.6667

    Reference:
        Dice LR. "Measures of the amount of ecologic association between species".
        Ecology 26(3):297-302, 1945.
    """

    def __init__(
        self,
        num_classes=1,
        threshold=0.5,
        from_logits=False,
        include_background=False,
        empty=1.0,
        name="dice",
        dtype=None,
    ):
        super().__init__(
            num_classes, threshold, from_logits, include_background, empty, name, dtype
        )

    def result(self):
        true_positive = self._scored(self.true_positives)
        denominator = (
            2.0 * true_positive
            + self._scored(self.false_positives)
            + self._scored(self.false_negatives)
        )
        return self._mean_score(2.0 * true_positive, denominator)


@keras.saving.register_keras_serializable(package=_PACKAGE)
class IoUScore(_OverlapScore):
    """Jaccard index ``TP / (TP + FP + FN)`` accumulated over batches.

    Same accumulation, class handling, ``empty`` convention and handling of NaN
    predictions and mismatched shapes as :class:`DiceScore`.

    Args:
        num_classes: channels of ``y_pred``; 1 for a binary (sigmoid) model.
        threshold: probability at or above which a binary voxel is foreground. Unused for
            multi-class models, which take the argmax.
        from_logits: whether ``y_pred`` holds logits.
        include_background: when False, class 0 of a multi-class model is left out of
            the mean. Ignored when ``num_classes == 1``.
        empty: score of a class never present in target or prediction (1.0, 0.0 or nan).
        name: metric name; the default logs as ``iou`` and ``val_iou``.
        dtype: dtype of the counts.

    Example:

    >>> import numpy as np
    >>> metric = IoUScore(num_classes=3, include_background=True)
    >>> labels = np.array([[[0, 1, 2]]])  # (1, 1, 3) sparse labels, no channel axis
    >>> metric.update_state(labels, np.eye(3)[None, None])
    >>> float(metric.result())
    1.0

    Reference:
        Jaccard P. "The distribution of the flora in the alpine zone". New Phytologist
        11(2):37-50, 1912.
    """

    def __init__(
        self,
        num_classes=1,
        threshold=0.5,
        from_logits=False,
        include_background=False,
        empty=1.0,
        name="iou",
        dtype=None,
    ):
        super().__init__(
            num_classes, threshold, from_logits, include_background, empty, name, dtype
        )

    def result(self):
        true_positive = self._scored(self.true_positives)
        denominator = (
            true_positive + self._scored(self.false_positives) + self._scored(self.false_negatives)
        )
        return self._mean_score(true_positive, denominator)


def _binary_pair(y_true, y_pred):
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    if y_true.shape != y_pred.shape:
        raise ValueError(f"y_true has shape {y_true.shape} but y_pred has shape {y_pred.shape}")
    return _as_binary("y_true", y_true), _as_binary("y_pred", y_pred)


def _as_binary(name, mask):
    if mask.dtype == bool:
        return mask
    if np.any((mask != 0) & (mask != 1)):
        raise ValueError(
            f"{name} must be a binary mask of 0/1 or bool values, got values "
            f"{np.unique(mask)[:5].tolist()}...; score label maps with per_class"
        )
    return mask.astype(bool)


def _confusion(y_true, y_pred):
    y_true, y_pred = _binary_pair(y_true, y_pred)
    true_positive = int(np.count_nonzero(y_true & y_pred))
    false_positive = int(np.count_nonzero(y_pred)) - true_positive
    false_negative = int(np.count_nonzero(y_true)) - true_positive
    true_negative = y_true.size - true_positive - false_positive - false_negative
    return true_positive, false_positive, false_negative, true_negative


def _ratio(numerator, denominator, empty):
    return float(numerator / denominator) if denominator > 0 else float(empty)


def dice(y_true, y_pred, *, empty=1.0) -> float:
    """Dice coefficient ``2 TP / (2 TP + FP + FN)`` of two binary masks.

    Undefined when both masks are empty; returns ``empty`` then.

    Args:
        y_true: reference mask (0/1 or bool), any shape.
        y_pred: predicted mask of the same shape.
        empty: value when both masks are empty (1.0, 0.0 or nan).

    Example:

    >>> dice([1, 1, 0, 0], [1, 0, 1, 0])
    0.5

    Reference:
        Dice LR. "Measures of the amount of ecologic association between species".
        Ecology 26(3):297-302, 1945.
    """
    true_positive, false_positive, false_negative, _ = _confusion(y_true, y_pred)
    return _ratio(2 * true_positive, 2 * true_positive + false_positive + false_negative, empty)


def iou(y_true, y_pred, *, empty=1.0) -> float:
    """Jaccard index ``TP / (TP + FP + FN)`` of two binary masks.

    Undefined when both masks are empty; returns ``empty`` then.

    Args:
        y_true: reference mask (0/1 or bool), any shape.
        y_pred: predicted mask of the same shape.
        empty: value when both masks are empty.

    Example:

    >>> round(iou([1, 1, 0, 0], [1, 0, 1, 0]), 4)
    0.3333

    Reference:
        Jaccard P. "The distribution of the flora in the alpine zone". New Phytologist
        11(2):37-50, 1912.
    """
    true_positive, false_positive, false_negative, _ = _confusion(y_true, y_pred)
    return _ratio(true_positive, true_positive + false_positive + false_negative, empty)


def precision(y_true, y_pred, *, empty=1.0) -> float:
    """Precision (positive predictive value) ``TP / (TP + FP)``.

    Undefined when the prediction is empty, whatever the reference holds; returns
    ``empty`` then (a missed structure shows up in :func:`recall`, which is 0).

    Args:
        y_true: reference mask (0/1 or bool), any shape.
        y_pred: predicted mask of the same shape.
        empty: value when the prediction is empty.

    Example:

    >>> round(precision([1, 1, 0, 0], [1, 1, 1, 0]), 4)
    0.6667

    Reference:
        Taha AA, Hanbury A. "Metrics for evaluating 3D medical image segmentation: analysis,
        selection, and tool". BMC Medical Imaging 15:29, 2015.
    """
    true_positive, false_positive, _, _ = _confusion(y_true, y_pred)
    return _ratio(true_positive, true_positive + false_positive, empty)


def recall(y_true, y_pred, *, empty=1.0) -> float:
    """Recall (sensitivity) ``TP / (TP + FN)``.

    Undefined when the reference is empty, whatever the prediction holds; returns
    ``empty`` then (false positives there show up in :func:`precision`).

    Args:
        y_true: reference mask (0/1 or bool), any shape.
        y_pred: predicted mask of the same shape.
        empty: value when the reference is empty.

    Example:

    >>> recall([1, 1, 0, 0], [1, 0, 0, 0])
    0.5

    Reference:
        Taha AA, Hanbury A. "Metrics for evaluating 3D medical image segmentation: analysis,
        selection, and tool". BMC Medical Imaging 15:29, 2015.
    """
    true_positive, _, false_negative, _ = _confusion(y_true, y_pred)
    return _ratio(true_positive, true_positive + false_negative, empty)


def specificity(y_true, y_pred, *, empty=1.0) -> float:
    """Specificity (true negative rate) ``TN / (TN + FP)``.

    Undefined when the reference has no background voxel (it fills the whole array);
    returns ``empty`` then.

    Args:
        y_true: reference mask (0/1 or bool), any shape.
        y_pred: predicted mask of the same shape.
        empty: value when the reference has no background.

    Example:

    >>> round(specificity([1, 0, 0, 0], [1, 1, 0, 0]), 4)
    0.6667

    Reference:
        Taha AA, Hanbury A. "Metrics for evaluating 3D medical image segmentation: analysis,
        selection, and tool". BMC Medical Imaging 15:29, 2015.
    """
    _, false_positive, _, true_negative = _confusion(y_true, y_pred)
    return _ratio(true_negative, true_negative + false_positive, empty)


def accuracy(y_true, y_pred, *, empty=1.0) -> float:
    """Voxel accuracy ``(TP + TN) / N``.

    Undefined only for arrays with no voxel (size 0); returns ``empty`` then. Dominated
    by the background in most medical images, so report it beside overlap scores.

    Args:
        y_true: reference mask (0/1 or bool), any shape.
        y_pred: predicted mask of the same shape.
        empty: value for zero-size arrays.

    Example:

    >>> accuracy([1, 0, 0, 0], [1, 1, 0, 0])
    0.75

    Reference:
        Taha AA, Hanbury A. "Metrics for evaluating 3D medical image segmentation: analysis,
        selection, and tool". BMC Medical Imaging 15:29, 2015.
    """
    true_positive, false_positive, false_negative, true_negative = _confusion(y_true, y_pred)
    total = true_positive + false_positive + false_negative + true_negative
    return _ratio(true_positive + true_negative, total, empty)


def _spacing(spacing, ndim) -> tuple[float, ...]:
    if spacing is None:
        return (1.0,) * ndim
    if np.ndim(spacing) == 0:
        spacing = (spacing,) * ndim
    try:
        spacing = tuple(float(s) for s in np.asarray(spacing, dtype=float).ravel())
    except (TypeError, ValueError) as error:
        raise ValueError(
            f"spacing must be {ndim} positive voxel sizes in mm (one per array axis), got "
            f"{spacing!r} ({error})"
        ) from None
    if len(spacing) != ndim or not all(math.isfinite(s) and s > 0 for s in spacing):
        raise ValueError(
            f"spacing must be {ndim} positive voxel sizes in mm (one per array axis), got {spacing}"
        )
    return spacing


def _voxel_grid(spacing, ndim) -> tuple[tuple[float, ...], np.ndarray | None]:
    """Voxel sizes along each axis, and the grid's linear map when its axes are not
    perpendicular (else ``None``: the sizes alone describe it)."""
    if spacing is None or np.ndim(spacing) != 2:
        return _spacing(spacing, ndim), None
    try:
        matrix = np.asarray(spacing, dtype=float)
    except (TypeError, ValueError) as error:
        raise ValueError(f"spacing as a grid affine must hold numbers ({error})") from None
    if matrix.shape == (ndim + 1, ndim + 1):
        matrix = matrix[:ndim, :ndim]
    if (
        matrix.shape != (ndim, ndim)
        or not np.all(np.isfinite(matrix))
        or abs(np.linalg.det(matrix)) < 1e-12
    ):
        raise ValueError(
            f"spacing as a grid affine must be a finite, non-singular {ndim + 1}x{ndim + 1} "
            f"affine or its {ndim}x{ndim} linear part, got shape {matrix.shape}"
        )
    sizes = np.linalg.norm(matrix, axis=0)
    cosines = (matrix.T @ matrix) / np.outer(sizes, sizes)
    sheared = np.max(np.abs(cosines - np.eye(ndim))) > ORTHOGONAL_TOLERANCE
    return tuple(float(v) for v in sizes), matrix if sheared else None


def _surface(mask):
    structure = ndimage.generate_binary_structure(mask.ndim, 1)
    return mask & ~ndimage.binary_erosion(mask, structure=structure, border_value=0)


def _surface_distances(y_true, y_pred, grid):
    """Distances (mm) from each prediction surface voxel to the reference surface, and back.

    Both masks must be non-empty. The arrays are first cropped to the bounding box of the
    union: every mask voxel on a face of that box has an outside neighbour that is empty
    in both masks, so it is surface either way, and the nearest surface voxels all lie in
    the box, so neither surfaces nor exact distances change.
    """
    spacing, sheared = grid
    union = np.argwhere(y_true | y_pred)
    box = tuple(
        slice(lo, hi + 1) for lo, hi in zip(union.min(axis=0), union.max(axis=0), strict=True)
    )
    surface_true, surface_pred = _surface(y_true[box]), _surface(y_pred[box])
    if sheared is not None:
        points_true = np.argwhere(surface_true) @ sheared.T
        points_pred = np.argwhere(surface_pred) @ sheared.T
        to_true, _ = spatial.cKDTree(points_true).query(points_pred)
        to_pred, _ = spatial.cKDTree(points_pred).query(points_true)
        return to_true, to_pred
    to_true = ndimage.distance_transform_edt(~surface_true, sampling=spacing)
    to_pred = ndimage.distance_transform_edt(~surface_pred, sampling=spacing)
    return to_true[surface_pred], to_pred[surface_true]


def _distance_inputs(y_true, y_pred, spacing):
    y_true, y_pred = _binary_pair(y_true, y_pred)
    if y_true.ndim == 0:
        raise ValueError("y_true and y_pred need at least one axis for surface distances")
    return y_true, y_pred, _voxel_grid(spacing, y_true.ndim), y_true.any(), y_pred.any()


def hausdorff_distance(
    y_true, y_pred, spacing=None, *, percentile=100, empty=math.nan, one_empty=math.inf
) -> float:
    """Symmetric (percentile) Hausdorff distance between the surfaces of two masks, in mm.

    For each direction the ``percentile``-th percentile of the distances from one mask's
    surface voxels to the other's surface is taken, and the larger of the two directed
    values is returned (MONAI's ``compute_hausdorff_distance``). This differs from the
    variant that takes the percentile of the union of both distance sets (as the CHAOS
    organisers' code does for the maximum): at ``percentile=100`` both agree; below it the
    union's percentile lies between the two directed ones, so the value here is the larger
    (up to interpolation). Percentiles interpolate linearly (``numpy.percentile``).

    Args:
        y_true: reference mask (0/1 or bool), 2D, 3D or any dimension.
        y_pred: predicted mask of the same shape.
        spacing: voxel size in mm along each array axis (a number for isotropic voxels),
            or the grid's affine for a sheared grid (see the module notes); None means 1
            per axis, giving distances in voxels.
        percentile: in [0, 100]; 100 is the classic Hausdorff distance, 95 gives HD95.
        empty: value when both masks are empty (default nan: no surface to compare).
        one_empty: value when exactly one mask is empty (default inf: the distance to an
            empty set is unbounded, and MONAI gives inf too).

    Example:

    >>> import numpy as np
    >>> a = np.zeros((3, 1, 1)); a[0] = 1
    >>> b = np.zeros((3, 1, 1)); b[2] = 1
    >>> hausdorff_distance(a, b, spacing=(3.0, 0.8, 0.8))  # two voxels apart along z
    6.0

    Reference:
        Huttenlocher DP, Klanderman GA, Rucklidge WJ. "Comparing images using the Hausdorff
        distance". IEEE TPAMI 15(9):850-863, 1993.
    """
    # numbers.Real: numpy scalars too (np.arange(90, 101, 5) yields np.int64)
    if isinstance(percentile, bool) or not isinstance(percentile, numbers.Real):
        raise ValueError(f"percentile must be a number in [0, 100], got {percentile!r}")
    if not 0 <= percentile <= 100:
        raise ValueError(f"percentile must be a number in [0, 100], got {percentile!r}")
    y_true, y_pred, spacing, true_any, pred_any = _distance_inputs(y_true, y_pred, spacing)
    if not true_any and not pred_any:
        return float(empty)
    if not true_any or not pred_any:
        return float(one_empty)
    pred_to_true, true_to_pred = _surface_distances(y_true, y_pred, spacing)
    return float(
        max(np.percentile(pred_to_true, percentile), np.percentile(true_to_pred, percentile))
    )


def hd95(y_true, y_pred, spacing=None, *, empty=math.nan, one_empty=math.inf) -> float:
    """95th-percentile Hausdorff distance in mm: :func:`hausdorff_distance` at percentile 95.

    Args:
        y_true: reference mask (0/1 or bool).
        y_pred: predicted mask of the same shape.
        spacing: voxel size in mm along each array axis, or the grid's affine; None means
            1 per axis.
        empty: value when both masks are empty.
        one_empty: value when exactly one mask is empty.

    Example:

    >>> import numpy as np
    >>> a = np.zeros((4, 4), dtype=bool); a[1:3, 1:3] = True
    >>> hd95(a, a, spacing=(2.0, 0.5))
    0.0

    Reference:
        Huttenlocher DP, Klanderman GA, Rucklidge WJ. "Comparing images using the Hausdorff
        distance". IEEE TPAMI 15(9):850-863, 1993.
    """
    return hausdorff_distance(
        y_true, y_pred, spacing, percentile=95, empty=empty, one_empty=one_empty
    )


def average_surface_distance(
    y_true, y_pred, spacing=None, *, symmetric=True, empty=math.nan, one_empty=math.inf
) -> float:
    """Average surface distance in mm; symmetric by default (ASSD).

    Symmetric: the mean over the union of both directed distance sets, i.e.
    ``(Σ d(pred→true) + Σ d(true→pred)) / (n_pred + n_true)`` over surface voxels, the
    CHAOS challenge's ASSD and MONAI's ``symmetric=True``. Not symmetric: the mean
    distance from the prediction's surface voxels to the reference surface.

    Args:
        y_true: reference mask (0/1 or bool).
        y_pred: predicted mask of the same shape.
        spacing: voxel size in mm along each array axis, or the grid's affine; None means
            1 per axis.
        symmetric: average both directions (True) or only prediction to reference.
        empty: value when both masks are empty (default nan).
        one_empty: value when exactly one mask is empty (default inf).

    Example:

    >>> import numpy as np
    >>> a = np.zeros((3, 1, 1)); a[0] = 1
    >>> b = np.zeros((3, 1, 1)); b[2] = 1
    >>> average_surface_distance(a, b, spacing=(3.0, 0.8, 0.8))
    6.0

    Reference:
        Kavur AE, Gezer NS, Barış M, et al. "CHAOS Challenge - combined (CT-MR) healthy
        abdominal organ segmentation". Medical Image Analysis 69:101950, 2021.
    """
    if not isinstance(symmetric, bool):
        raise ValueError(f"symmetric must be True or False, got {symmetric!r}")
    y_true, y_pred, spacing, true_any, pred_any = _distance_inputs(y_true, y_pred, spacing)
    if not true_any and not pred_any:
        return float(empty)
    if not true_any or not pred_any:
        return float(one_empty)
    pred_to_true, true_to_pred = _surface_distances(y_true, y_pred, spacing)
    if not symmetric:
        return float(pred_to_true.mean())
    return float(np.concatenate([pred_to_true, true_to_pred]).mean())


def volume_difference(y_true, y_pred, spacing=None) -> float:
    """Signed volume difference in percent, ``(V_pred - V_true) / V_true * 100``.

    Positive when the prediction is too large. ``nan`` when the reference is empty. Both
    volumes share one grid, so the voxel volume cancels: ``spacing`` is checked against
    the array's dimensions and accepted so that every volume and distance metric can be
    called the same way.

    Args:
        y_true: reference mask (0/1 or bool).
        y_pred: predicted mask of the same shape.
        spacing: voxel size in mm along each array axis, the grid's affine, or None.

    Example:

    >>> volume_difference([1, 1, 1, 1, 0], [1, 1, 1, 1, 1])
    25.0

    Reference:
        Taha AA, Hanbury A. "Metrics for evaluating 3D medical image segmentation: analysis,
        selection, and tool". BMC Medical Imaging 15:29, 2015.
    """
    y_true, y_pred = _binary_pair(y_true, y_pred)
    _voxel_grid(spacing, y_true.ndim)
    reference = np.count_nonzero(y_true)
    if reference == 0:
        return math.nan
    return float((np.count_nonzero(y_pred) - reference) / reference * 100.0)


def relative_absolute_volume_difference(y_true, y_pred, spacing=None) -> float:
    """CHAOS's RAVD in percent, ``|V_true - V_pred| / V_true * 100``.

    ``nan`` when the reference is empty. As in :func:`volume_difference`, ``spacing`` is
    checked and cancels.

    Args:
        y_true: reference mask (0/1 or bool).
        y_pred: predicted mask of the same shape.
        spacing: voxel size in mm along each array axis, the grid's affine, or None.

    Example:

    >>> relative_absolute_volume_difference([1, 1, 1, 1, 0], [1, 1, 1, 0, 0])
    25.0

    Reference:
        Kavur AE, Gezer NS, Barış M, et al. "CHAOS Challenge - combined (CT-MR) healthy
        abdominal organ segmentation". Medical Image Analysis 69:101950, 2021.
    """
    difference = volume_difference(y_true, y_pred, spacing)
    return abs(difference)


def volume_ml(mask, spacing=None) -> float:
    """Volume of a mask's foreground in millilitres: voxel count times the voxel volume.

    The voxel volume is ``|det|`` of the grid's affine when ``spacing`` is one, so a
    sheared grid (a gantry-tilted CT) is measured right; the product of the column lengths
    (:attr:`kseg.io.Volume.spacing`) would overstate it by ``1 / cos(tilt)``.

    Args:
        mask: binary mask (0/1 or bool), any number of axes.
        spacing: voxel size in mm along each array axis, the grid's affine (e.g.
            ``volume.affine``), or None (1 mm voxels).

    Example:

    >>> import numpy as np
    >>> volume_ml(np.ones((10, 10, 10)), spacing=(2.0, 1.0, 0.5))
    1.0

    Reference:
        Taha AA, Hanbury A. "Metrics for evaluating 3D medical image segmentation: analysis,
        selection, and tool". BMC Medical Imaging 15:29, 2015 (volumetric measures).
    """
    mask = _as_binary("mask", np.asarray(mask))
    spacing, sheared = _voxel_grid(spacing, mask.ndim)
    voxel_mm3 = abs(float(np.linalg.det(sheared))) if sheared is not None else math.prod(spacing)
    return float(np.count_nonzero(mask) * voxel_mm3 / 1000.0)


def per_class(
    metric: Callable[..., float],
    y_true_labels,
    y_pred_labels,
    *,
    labels: Iterable[int],
    **kwargs,
) -> dict[int, float]:
    """Apply a binary metric to each label of two integer label maps.

    Args:
        metric: any binary metric of this module, e.g. :func:`dice` or :func:`hd95`.
        y_true_labels: reference label map (integers ``0 .. C-1``).
        y_pred_labels: predicted label map of the same shape.
        labels: the labels to score, e.g. ``range(1, C)`` to skip the background, or a
            ``{name: value}`` mapping (as :func:`kseg.evaluation.evaluate_volumes` takes
            it), whose values are scored.
        **kwargs: passed to ``metric`` (``spacing``, ``empty``, ...).

    Returns:
        ``{label: metric(y_true_labels == label, y_pred_labels == label, **kwargs)}``.

    Raises:
        ValueError: a label map holds values that are not whole numbers (NaN, a
            probability map, labels read through a scale as 0.99999994: round them first).

    Example:

    >>> per_class(dice, [0, 1, 2, 2], [0, 1, 1, 2], labels=[1, 2])
    {1: 0.6666666666666666, 2: 0.6666666666666666}

    Reference:
        Maier-Hein L, Reinke A, et al. "Metrics reloaded: recommendations for image analysis
        validation". Nature Methods 21:195-212, 2024 (scores are reported per class).
    """
    y_true_labels, y_pred_labels = np.asarray(y_true_labels), np.asarray(y_pred_labels)
    if y_true_labels.shape != y_pred_labels.shape:
        raise ValueError(
            f"y_true_labels has shape {y_true_labels.shape} but y_pred_labels has shape "
            f"{y_pred_labels.shape}"
        )
    # a float map read with nibabel's get_fdata through a scale (0.99999994), or a
    # probability map, equals no label where it should: every class scored as missed
    _integer_map("y_true_labels", y_true_labels)
    _integer_map("y_pred_labels", y_pred_labels)
    if isinstance(labels, (str, bytes)) or not isinstance(labels, Iterable):
        raise ValueError(f"labels must be an iterable of integer labels, got {labels!r}")
    given = labels
    # {name: value}, as kseg.evaluation.evaluate_volumes takes labels: its values are scored
    labels = list(labels.values() if isinstance(labels, Mapping) else labels)
    whole = [
        isinstance(label, numbers.Real) and not isinstance(label, bool)
        and math.isfinite(label) and label == int(label)
        for label in labels
    ]
    if not all(whole):
        # a label no voxel can equal would score both masks empty: a perfect 1.0
        raise ValueError(
            f"labels must be integer label values (or a {{name: value}} mapping), got {given!r}"
        )
    return {
        int(label): metric(y_true_labels == label, y_pred_labels == label, **kwargs)
        for label in labels
    }


# --- Calibration and uncertainty -------------------------------------------------------------
#
# Pure numpy functions, like the volume metrics above. "Probabilities" are what a model
# outputs after its sigmoid or softmax: either the foreground probability of each voxel
# (any shape, optionally with a trailing channel of size 1), or class probabilities with
# the classes on the last axis. Labels are then a 0/1 mask of the probabilities' shape, or
# an integer label map of their shape without the class axis.

_CALIBRATION_MODES = ("binary", "top_label")
_BIN_STRATEGIES = ("uniform", "quantile")
_CORRELATION_METHODS = ("spearman", "pearson")
# Softmax outputs in float32 sum to 1 within ~1e-6; anything further off is not a
# distribution over the classes (e.g. independent sigmoids), and its top-label confidence
# or multi-class Brier score would mean nothing.
_SUM_TOLERANCE = 1e-3


class ReliabilityDiagram(NamedTuple):
    """Per-bin data of a reliability diagram (see :func:`reliability_diagram`).

    Attributes:
        mean_predicted: mean predicted probability (confidence) of the voxels in each bin;
            ``nan`` where the bin is empty.
        observed_frequency: fraction of those voxels that are foreground (binary mode) or
            correctly classified (top-label mode); ``nan`` where the bin is empty.
        count: number of voxels in each bin (0 for an empty bin).
        bin_edges: the ``bins + 1`` bin edges; bin ``m`` holds confidences in
            ``(bin_edges[m], bin_edges[m + 1]]``, the first bin also its lower edge.
    """

    mean_predicted: np.ndarray
    observed_frequency: np.ndarray
    count: np.ndarray
    bin_edges: np.ndarray


class Correlation(NamedTuple):
    """A correlation coefficient, its two-sided p-value and the number of pairs."""

    coefficient: float
    p_value: float
    n: int


def _numeric_array(name, values):
    """``values`` as a numpy array; ragged nesting or non-numbers raise naming ``name``."""
    try:
        values = np.asarray(values)
    except (TypeError, ValueError) as error:  # e.g. ragged nested lists
        raise ValueError(f"{name} must be an array of numbers ({error})") from None
    if values.dtype.kind == "V" and _extended_float_eps(values.dtype) is not None:
        # bfloat16 / float8 (ml_dtypes) outputs of mixed-precision models: numpy sees an
        # opaque kind, but every value is exactly a float32
        values = values.astype(np.float32)
    if values.dtype.kind not in "biuf":
        raise ValueError(f"{name} must be an array of numbers, got dtype {values.dtype}")
    return values


def _extended_float_eps(dtype) -> float | None:
    """The machine epsilon of an ml_dtypes float (``bfloat16``, ``float8_*``), else None."""
    try:
        import ml_dtypes

        return float(ml_dtypes.finfo(dtype).eps)
    except (ImportError, TypeError, ValueError):
        return None


def _float_eps(values) -> float:
    """The machine epsilon of the float type ``values`` were stored in (float64 for ints)."""
    try:
        dtype = np.asarray(values).dtype
    except (TypeError, ValueError):  # ragged: _numeric_array names the problem
        return float(np.finfo(np.float64).eps)
    if dtype.kind == "f":
        return float(np.finfo(dtype).eps)
    return _extended_float_eps(dtype) or float(np.finfo(np.float64).eps)


def _checked_probabilities(probabilities):
    probabilities = _numeric_array("probabilities", probabilities)
    if probabilities.size == 0:
        raise ValueError("probabilities is empty: there is no voxel to score")
    if probabilities.dtype.kind != "f":  # hard 0/1 masks scored as probabilities
        probabilities = probabilities.astype(np.float64)
    if probabilities.dtype.kind == "f":
        nan_count = int(np.count_nonzero(np.isnan(probabilities)))
        if nan_count:
            raise ValueError(
                f"probabilities holds NaN in {nan_count} of {probabilities.size} values; a "
                "model that outputs NaN has diverged and its calibration is undefined"
            )
    low, high = probabilities.min(), probabilities.max()
    if low < 0 or high > 1:
        raise ValueError(
            f"probabilities must lie in [0, 1], got values from {low} to {high}; pass "
            "probabilities, not logits (apply the sigmoid or softmax first)"
        )
    return probabilities


def _class_labels(name, labels, num_classes):
    """``labels`` as integers in ``[0, num_classes)``; bool and integral floats accepted."""
    if labels.dtype.kind == "f" and np.any(labels != np.round(labels)):
        raise ValueError(
            f"{name} must hold integer class labels, got non-integer values "
            f"{labels[labels != np.round(labels)][:5].tolist()}"
        )
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        expected = "0/1 (binary)" if num_classes == 2 else f"0 .. {num_classes - 1}"
        raise ValueError(
            f"{name} must hold class labels {expected}, got values from {labels.min()} to "
            f"{labels.max()}"
        )
    return labels.astype(np.intp)


def _classification_inputs(probabilities, labels):
    """Flattened ``(probabilities, labels, binary)`` from either accepted layout.

    Binary: ``probabilities`` of shape ``(N,)`` (foreground), ``labels`` 0/1 of shape
    ``(N,)``. Multi-class: ``probabilities`` ``(N, C)`` summing to 1 over ``C``, ``labels``
    integers ``0 .. C-1`` of shape ``(N,)``.
    """
    # the tolerance of the class sums follows the dtype the probabilities were stored in
    stored_eps = _float_eps(probabilities)
    probabilities = _checked_probabilities(probabilities)
    labels = _numeric_array("labels", labels)
    if probabilities.shape == labels.shape:
        return probabilities.ravel(), _class_labels("labels", labels.ravel(), 2), True
    if probabilities.ndim != labels.ndim + 1 or probabilities.shape[:-1] != labels.shape:
        raise ValueError(
            f"labels has shape {labels.shape} but probabilities has shape "
            f"{probabilities.shape}: labels must be a 0/1 mask of the probabilities' shape "
            "(foreground probabilities) or a label map of their shape without the last "
            "(class) axis"
        )
    num_classes = probabilities.shape[-1]
    if num_classes == 1:  # a binary model's (..., 1) output
        return probabilities.ravel(), _class_labels("labels", labels.ravel(), 2), True
    probabilities = probabilities.reshape(-1, num_classes)
    sums = probabilities.sum(axis=-1, dtype=np.float64)
    # Each stored value is rounded to the dtype: float16 softmax files (nnU-Net keeps its
    # probabilities so) sum to 1 only within a few of its epsilons (9.8e-4) per class.
    tolerance = max(_SUM_TOLERANCE, num_classes * stored_eps)
    if np.max(np.abs(sums - 1.0)) > tolerance:
        raise ValueError(
            f"probabilities over the last (class) axis must sum to 1, got sums from "
            f"{sums.min()} to {sums.max()}; for independent per-class sigmoid outputs score "
            "each class as a binary problem"
        )
    return probabilities, _class_labels("labels", labels.ravel(), num_classes), False


def _refuse_one_hot_labels(probabilities, labels):
    """Refuse class probabilities ``(..., C)`` given with one-hot labels of their shape.

    The equal shapes read as a 0/1 mask beside foreground probabilities, so each of the
    ``C`` channels would be scored as a binary problem of its own (``p >= 0.5``), not the
    argmax: a top-label number that is neither Guo et al.'s nor anything else. Keras'
    ``to_categorical`` targets, which kseg's losses and metrics accept, are this layout.
    """
    probabilities, labels = np.asarray(probabilities), np.asarray(labels)
    channels = probabilities.shape[-1] if probabilities.ndim else 1
    if channels < 2 or probabilities.size == 0:
        return
    rows = labels.reshape(-1, channels)
    sums = probabilities.reshape(-1, channels).sum(axis=-1, dtype=np.float64)
    tolerance = max(_SUM_TOLERANCE, channels * _float_eps(probabilities))
    if np.all(rows.sum(axis=-1) == 1) and np.max(np.abs(sums - 1.0)) <= tolerance:
        raise ValueError(
            f"labels has the shape of probabilities {probabilities.shape} and holds one 1 "
            f"per voxel along the last axis: one-hot targets of {channels} class "
            "probabilities, which mode='top_label' would score as "
            f"{channels} independent binary masks; pass the label map "
            "labels.argmax(axis=-1)"
        )


def _confidence_and_outcome(probabilities, labels, mode):
    """Per-voxel confidence and its 0/1 outcome for calibration in ``mode``."""
    if mode not in _CALIBRATION_MODES:
        raise ValueError(f"mode must be one of {_CALIBRATION_MODES}, got {mode!r}")
    given_probabilities, given_labels = probabilities, labels
    probabilities, labels, binary = _classification_inputs(probabilities, labels)
    if mode == "top_label" and binary:
        _refuse_one_hot_labels(given_probabilities, given_labels)
    if mode == "binary":
        if not binary:
            raise ValueError(
                f"mode='binary' calibrates foreground probabilities, but probabilities has "
                f"{probabilities.shape[-1]} classes on its last axis; use mode='top_label' "
                "or pass one class's probabilities with a 0/1 mask of that class"
            )
        return probabilities, labels
    if binary:
        # The predicted class is foreground at p >= 0.5, kseg's threshold everywhere.
        predicted = probabilities >= 0.5
        confidence = np.where(predicted, probabilities, 1.0 - probabilities)
        return confidence, predicted == labels.astype(bool)
    predicted = np.argmax(probabilities, axis=-1)
    return probabilities.max(axis=-1), predicted == labels


def _bin_statistics(confidence, outcome, bins, strategy):
    """Bin edges and per-bin count, sum of confidence and sum of outcome."""
    if isinstance(bins, bool) or not isinstance(bins, (int, np.integer)) or bins < 1:
        raise ValueError(f"bins must be an integer >= 1, got {bins!r}")
    if strategy not in _BIN_STRATEGIES:
        raise ValueError(f"strategy must be one of {_BIN_STRATEGIES}, got {strategy!r}")
    if strategy == "uniform":
        edges = np.linspace(0.0, 1.0, bins + 1)
    else:
        # Percentiles (not quantiles of linspace(0, 1)) so that the edges, and the bin of
        # a confidence lying exactly on one, agree with scikit-learn's calibration_curve.
        edges = np.percentile(confidence, np.linspace(0.0, 100.0, bins + 1))
    # side="left" puts a confidence equal to an inner edge in the lower bin: bins are
    # (lower, upper], as in Guo et al. and scikit-learn.
    bin_index = np.searchsorted(edges[1:-1], confidence, side="left")
    count = np.bincount(bin_index, minlength=bins)
    confidence_sum = np.bincount(bin_index, weights=confidence, minlength=bins)
    outcome_sum = np.bincount(bin_index, weights=outcome, minlength=bins)
    return edges, count, confidence_sum, outcome_sum


def reliability_diagram(
    probabilities, labels, *, bins=15, strategy="uniform", mode="binary"
) -> ReliabilityDiagram:
    """Data of a reliability diagram: per bin, mean confidence, observed frequency, count.

    Voxels are grouped by their confidence into ``bins`` bins; for each bin the mean
    confidence is set against how often the event happened. A calibrated model's points lie
    on the diagonal. This returns the numbers, not a figure; plot ``observed_frequency``
    against ``mean_predicted`` (bins with ``count == 0`` are ``nan`` and drop out).

    In ``mode="binary"`` the confidence is the foreground probability and the event is
    "the voxel is foreground" (scikit-learn's ``calibration_curve``). In
    ``mode="top_label"`` the confidence is the probability of the predicted class (the
    argmax; foreground at ``p >= 0.5`` for binary probabilities) and the event is "the
    prediction is right" (Guo et al.).

    Args:
        probabilities: foreground probabilities of any shape (a trailing channel of size 1
            is allowed), or class probabilities with the classes on the last axis (summing
            to 1; ``mode="top_label"`` only). Values in [0, 1], no NaN.
        labels: a 0/1 or bool mask of the probabilities' shape, or an integer label map of
            their shape without the class axis.
        bins: number of bins, an integer >= 1.
        strategy: ``"uniform"``: equal-width bins over [0, 1]; ``"quantile"``: edges at
            the quantiles of the confidences, so bins hold about equal counts (repeated
            confidences can still leave some bins empty).
        mode: ``"binary"`` or ``"top_label"``, as above.

    Returns:
        A :class:`ReliabilityDiagram` of arrays of length ``bins`` (``bin_edges``:
        ``bins + 1``). A bin holds confidences in ``(lower, upper]``; the first bin also
        holds its lower edge. Empty bins are reported, as ``nan`` with count 0, so the
        arrays always have ``bins`` entries (scikit-learn drops them instead).

    Raises:
        ValueError: shapes that match neither layout (naming ``labels``), probabilities
            outside [0, 1] or NaN, labels that are not class labels, class probabilities
            that do not sum to 1, class probabilities with ``mode="binary"``, one-hot
            labels of class probabilities with ``mode="top_label"`` (pass their argmax),
            or a bad ``bins``, ``strategy`` or ``mode``.

    Example:

    >>> diagram = reliability_diagram([0.1, 0.1, 0.9, 0.9], [0, 1, 1, 1], bins=2)
    >>> diagram.mean_predicted.tolist(), diagram.observed_frequency.tolist()
    ([0.1, 0.9], [0.5, 1.0])

    Reference:
        DeGroot MH, Fienberg SE. "The comparison and evaluation of forecasters". Journal of
        the Royal Statistical Society D 32(1/2):12-22, 1983. Guo C, Pleiss G, Sun Y,
        Weinberger KQ. "On calibration of modern neural networks". ICML 2017.
    """
    confidence, outcome = _confidence_and_outcome(probabilities, labels, mode)
    edges, count, confidence_sum, outcome_sum = _bin_statistics(confidence, outcome, bins, strategy)
    filled = count > 0
    mean_predicted = np.full(len(count), np.nan)
    observed_frequency = np.full(len(count), np.nan)
    np.divide(confidence_sum, count, out=mean_predicted, where=filled)
    np.divide(outcome_sum, count, out=observed_frequency, where=filled)
    return ReliabilityDiagram(mean_predicted, observed_frequency, count, edges)


def expected_calibration_error(
    probabilities, labels, *, bins=15, strategy="uniform", mode="binary"
) -> float:
    """Expected calibration error: the count-weighted gap between confidence and frequency.

    ``ECE = Σ_m (n_m / N) · |mean confidence in bin m − observed frequency in bin m|``
    over the bins of :func:`reliability_diagram` (empty bins weigh nothing). 0 for a
    perfectly calibrated model; at most 1.

    Two definitions are in use and both are offered. ``mode="binary"`` (the default, for
    kseg's one-channel sigmoid models) measures the calibration of the foreground
    probability itself: its bins run over [0, 1] and the event is "foreground".
    ``mode="top_label"`` is Guo et al.'s definition for classifiers: the confidence is
    the probability of the predicted class and the event is "the prediction is right";
    it is the one to use for softmax (multi-class) outputs and gives a different number
    on binary probabilities (there the confidence is ``max(p, 1 − p)``).

    Args:
        probabilities: foreground probabilities of any shape (a trailing channel of size 1
            is allowed), or class probabilities with the classes on the last axis (summing
            to 1; ``mode="top_label"`` only). Values in [0, 1], no NaN.
        labels: a 0/1 or bool mask of the probabilities' shape, or an integer label map of
            their shape without the class axis.
        bins: number of bins (Guo et al. use 15).
        strategy: ``"uniform"`` (equal-width bins, the usual ECE) or ``"quantile"``
            (equal-count bins).
        mode: ``"binary"`` or ``"top_label"``, as above.

    Returns:
        The ECE as a Python float.

    Raises:
        ValueError: as :func:`reliability_diagram`.

    Example:

    >>> expected_calibration_error([0.25, 0.25, 0.25, 0.25], [1, 0, 0, 0], bins=4)
    0.0
    >>> expected_calibration_error([0.9, 0.9, 0.9, 0.9], [1, 1, 0, 0], bins=10)
    0.4

    Reference:
        Guo C, Pleiss G, Sun Y, Weinberger KQ. "On calibration of modern neural networks".
        ICML 2017. Naeini MP, Cooper GF, Hauskrecht M. "Obtaining well calibrated
        probabilities using Bayesian binning". AAAI 2015. For segmentation: Mehrtash A,
        Wells WM, Tempany CM, Abolmaesumi P, Kapur T. "Confidence calibration and
        predictive uncertainty estimation for deep medical image segmentation". IEEE TMI
        39(12):3868-3878, 2020.
    """
    confidence, outcome = _confidence_and_outcome(probabilities, labels, mode)
    _, _, confidence_sum, outcome_sum = _bin_statistics(confidence, outcome, bins, strategy)
    # (n_m / N) |Σ conf / n_m − Σ outcome / n_m| = |Σ conf − Σ outcome| / N; 0 when empty.
    return float(np.abs(confidence_sum - outcome_sum).sum() / confidence.size)


def brier_score(probabilities, labels) -> float:
    """Brier score: the mean squared difference between probabilities and outcomes.

    Binary (foreground probabilities and a 0/1 mask): ``mean((p − y)²)``, in [0, 1].
    Multi-class (class probabilities on the last axis and a label map):
    ``mean over voxels of Σ_c (p_c − 1[y = c])²``, Brier's original form, in [0, 2].
    The two conventions are scikit-learn's ``brier_score_loss`` defaults: a binary problem
    given as two softmax channels scores twice its one-channel value. Lower is better; the
    score is a strictly proper scoring rule, so it rewards both calibration and sharpness.

    Args:
        probabilities: foreground probabilities of any shape (a trailing channel of size 1
            is allowed), or class probabilities with the classes on the last axis, summing
            to 1. Values in [0, 1], no NaN.
        labels: a 0/1 or bool mask of the probabilities' shape, or an integer label map of
            their shape without the class axis (not one-hot: a one-hot array of the
            probabilities' shape would be read as a binary mask).

    Returns:
        The Brier score as a Python float.

    Raises:
        ValueError: shapes that match neither layout (naming ``labels``), probabilities
            outside [0, 1] or NaN, labels that are not class labels, or class
            probabilities that do not sum to 1.

    Example:

    >>> brier_score([0.9, 0.2], [1, 0])
    0.025
    >>> round(brier_score([[0.5, 0.5, 0.0]], [0]), 4)  # 0.5² + 0.5² + 0²
    0.5

    Reference:
        Brier GW. "Verification of forecasts expressed in terms of probability". Monthly
        Weather Review 78(1):1-3, 1950.
    """
    probabilities, labels, binary = _classification_inputs(probabilities, labels)
    probabilities = probabilities.astype(np.float64, copy=False)
    if binary:
        return float(np.mean(np.square(probabilities - labels)))
    # Σ_c (p_c − 1[y = c])² = Σ_c p_c² − 2 p_y + 1, without building the one-hot array.
    probability_of_label = np.take_along_axis(probabilities, labels[:, None], axis=-1)[:, 0]
    per_voxel = np.square(probabilities).sum(axis=-1) - 2.0 * probability_of_label + 1.0
    return float(per_voxel.mean())


def _integer_map(name, values):
    if values.dtype.kind == "f" and np.any(values != np.round(values)):
        raise ValueError(
            f"{name} must be a label map of integers (hard predictions, not probabilities), "
            f"got non-integer values {values[values != np.round(values)][:5].tolist()}"
        )
    return values


def uncertainty_error_auroc(uncertainty, prediction, reference) -> float:
    """How well per-voxel uncertainty finds the per-voxel errors: the AUROC.

    Each voxel is an error when ``prediction != reference``. The uncertainty is scored as a
    detector of those errors: the result is the probability that a randomly chosen wrong
    voxel is more uncertain than a randomly chosen right one (ties count one half), i.e.
    the area under the ROC curve, computed from the Mann-Whitney U statistic with average
    ranks. 1.0: every error is more uncertain than every correct voxel; 0.5: uncertainty
    says nothing about where the errors are (a constant map gives exactly 0.5).

    Undefined when there is no error or no correct voxel, so it returns ``nan`` and warns
    (``RuntimeWarning``) then: a perfect prediction has nothing to detect. Leave such
    patients out of the mean rather than counting them as 0 or 1.

    Args:
        uncertainty: per-voxel uncertainty (entropy, variance, mutual information, ...),
            any shape, finite; larger means less sure.
        prediction: hard predicted label map (or 0/1 mask) of the same shape.
        reference: reference label map (or 0/1 mask) of the same shape.

    Returns:
        The AUROC as a Python float, or ``nan`` as above.

    Raises:
        ValueError: ``prediction`` or ``reference`` shaped differently from
            ``uncertainty`` (the message names which), non-finite uncertainty, or
            non-integer labels (probabilities passed as a prediction).

    Example:

    >>> uncertainty_error_auroc([0.9, 0.1, 0.2, 0.8], [1, 0, 0, 0], [0, 0, 0, 1])
    1.0

    Reference:
        Hanley JA, McNeil BJ. "The meaning and use of the area under a receiver operating
        characteristic (ROC) curve". Radiology 143(1):29-36, 1982 (the AUROC as the
        Mann-Whitney probability, ties counting one half).
    """
    uncertainty = _numeric_array("uncertainty", uncertainty)
    prediction = _numeric_array("prediction", prediction)
    reference = _numeric_array("reference", reference)
    for name, values in (("prediction", prediction), ("reference", reference)):
        if values.shape != uncertainty.shape:
            raise ValueError(
                f"{name} has shape {values.shape} but uncertainty has shape {uncertainty.shape}"
            )
    if uncertainty.dtype.kind == "f" and not np.all(np.isfinite(uncertainty)):
        bad = int(np.count_nonzero(~np.isfinite(uncertainty)))
        raise ValueError(
            f"uncertainty holds NaN or infinite values in {bad} of {uncertainty.size} voxels"
        )
    error = _integer_map("prediction", prediction) != _integer_map("reference", reference)
    error = error.ravel()
    errors = int(np.count_nonzero(error))
    correct = error.size - errors
    if errors == 0 or correct == 0:
        what = "no voxel is wrong" if errors == 0 else "no voxel is right"
        warnings.warn(
            f"uncertainty_error_auroc: {what} among {error.size} voxels, so there are no "
            "errors to tell from correct voxels (a perfect prediction has nothing to "
            "detect); the AUROC is undefined and returned as nan",
            RuntimeWarning,
            stacklevel=2,
        )
        return math.nan
    ranks = stats.rankdata(uncertainty.ravel())  # average ranks: a tie counts one half
    rank_sum_of_errors = ranks[error].sum()
    return float((rank_sum_of_errors - errors * (errors + 1) / 2) / (errors * correct))


def _patient_values(name, values):
    try:
        values = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as error:
        raise ValueError(f"{name} must be one number per patient ({error})") from None
    if values.ndim != 1:
        raise ValueError(f"{name} must be one number per patient (1-D), got shape {values.shape}")
    not_finite = np.flatnonzero(~np.isfinite(values))
    if not_finite.size:
        raise ValueError(
            f"{name} holds NaN or infinite values at positions {not_finite[:10].tolist()}; "
            "leave those patients out (e.g. a Dice of nan from two empty masks) before "
            "correlating"
        )
    return values


def uncertainty_dice_correlation(
    mean_uncertainty_per_patient, dice_per_patient, *, method="spearman"
) -> Correlation:
    """Correlation of each patient's mean uncertainty with that patient's Dice.

    Useful uncertainty is high where the segmentation is poor, so a strongly negative
    coefficient is what one hopes for. ``method="spearman"`` (the default) correlates the
    ranks (average ranks for ties) and so asks only for a monotone relation;
    ``"pearson"`` asks for a linear one. The two-sided p-value tests a zero correlation
    with Student's t on ``n − 2`` degrees of freedom, ``t = r √((n − 2) / (1 − r²))``
    (exact for Pearson under bivariate normality, the usual large-sample approximation
    for Spearman, as in scipy); it is 0 when ``|r| = 1``. Any per-patient score (IoU,
    HD95) can stand in for the Dice.

    When either list is constant the correlation is undefined: it returns ``nan`` for
    coefficient and p-value and warns (``RuntimeWarning``).

    Args:
        mean_uncertainty_per_patient: one finite number per patient.
        dice_per_patient: one finite number per patient, in the same order.
        method: ``"spearman"`` or ``"pearson"``.

    Returns:
        A :class:`Correlation` ``(coefficient, p_value, n)``.

    Raises:
        ValueError: lists of different lengths, fewer than 3 patients (two points are
            always perfectly correlated and leave no degree of freedom for a test),
            values that are not finite numbers (naming the argument), or a bad ``method``.

    Example:

    >>> uncertainty_dice_correlation([0.1, 0.3, 0.2, 0.6], [0.9, 0.7, 0.8, 0.4])
    Correlation(coefficient=-1.0, p_value=0.0, n=4)

    Reference:
        Spearman C. "The proof and measurement of association between two things".
        American Journal of Psychology 15(1):72-101, 1904. Pearson K. "Note on regression
        and inheritance in the case of two parents". Proceedings of the Royal Society of
        London 58:240-242, 1895.
    """
    if method not in _CORRELATION_METHODS:
        raise ValueError(f"method must be one of {_CORRELATION_METHODS}, got {method!r}")
    uncertainty = _patient_values("mean_uncertainty_per_patient", mean_uncertainty_per_patient)
    dice_values = _patient_values("dice_per_patient", dice_per_patient)
    if uncertainty.size != dice_values.size:
        raise ValueError(
            f"mean_uncertainty_per_patient has {uncertainty.size} values but "
            f"dice_per_patient has {dice_values.size}; give one of each per patient"
        )
    n = int(uncertainty.size)
    if n < 3:
        raise ValueError(
            f"uncertainty_dice_correlation needs at least 3 patients, got {n}: two points are "
            "always perfectly correlated and leave no degree of freedom for a p-value"
        )
    if np.ptp(uncertainty) == 0 or np.ptp(dice_values) == 0:
        constant = (
            "dice_per_patient" if np.ptp(dice_values) == 0 else "mean_uncertainty_per_patient"
        )
        warnings.warn(
            f"uncertainty_dice_correlation: {constant} is the same for all {n} patients, so "
            "the correlation is undefined and returned as nan",
            RuntimeWarning,
            stacklevel=2,
        )
        return Correlation(math.nan, math.nan, n)
    if method == "spearman":
        uncertainty, dice_values = stats.rankdata(uncertainty), stats.rankdata(dice_values)
    uncertainty = uncertainty - uncertainty.mean()
    dice_values = dice_values - dice_values.mean()
    coefficient = float(
        np.dot(uncertainty, dice_values)
        / math.sqrt(np.dot(uncertainty, uncertainty) * np.dot(dice_values, dice_values))
    )
    coefficient = min(1.0, max(-1.0, coefficient))  # rounding can step just past ±1
    if abs(coefficient) == 1.0:
        return Correlation(coefficient, 0.0, n)
    t_statistic = coefficient * math.sqrt((n - 2) / (1.0 - coefficient**2))
    p_value = float(2.0 * stats.t.sf(abs(t_statistic), n - 2))
    return Correlation(coefficient, p_value, n)
