"""Segmentation losses for binary and multi-class, 2D and 3D models.

Every loss follows the Keras argument order ``loss(y_true, y_pred)`` and the same input
conventions:

- ``y_pred`` has shape ``(B, *spatial, C)`` with two or more spatial axes (2D slices or 3D
  volumes); a ``(B, H, W)`` map, without its channel axis, is refused rather than read as
  ``W`` classes. ``C == 1`` is a binary model (sigmoid probabilities, or logits with
  ``from_logits=True``); ``C > 1`` is a multi-class model (softmax probabilities over the
  last axis, or logits with ``from_logits=True``).
- ``y_true`` is read by its rank: with the rank of ``y_pred`` and ``C`` channels it is a
  one-hot (or, binary, a ``{0, 1}``) target; with the rank of ``y_pred`` and one channel
  while ``C > 1``, or with one rank less (no channel axis), it holds sparse integer labels
  ``0 .. C-1``, which are one-hot encoded here. Any other shape raises ``ValueError``
  naming ``y_true`` or ``y_pred`` and both shapes. The cross-entropy losses (Dice + CE,
  focal, top-k, heteroscedastic) refuse, called eagerly, a multi-channel target with
  voxels of several classes (summing to more than 1): a binary ``(B, D, H, W)`` volume
  without its channel axis reads as ``W`` classes, several per voxel.
- Each loss returns one value per sample (shape ``(B,)``); the Keras ``reduction``
  (default ``"sum_over_batch_size"``) averages them and applies ``sample_weight``. Losses
  with ``batch_dice=True`` pool the whole batch into one overlap score, as nnU-Net's
  ``batch_dice`` does, and give that shared value to every sample.

Overlap losses (Dice, IoU, Tversky, generalised Dice) score every class of a multi-class
model and average over classes; ``include_background=False`` drops channel 0 first. A
binary model has one channel, the foreground, so there ``include_background`` has nothing
to drop. All classes are registered with Keras under the package ``"kseg"``, so a compiled
``.keras`` model reloads without ``custom_objects`` once ``kseg.losses`` is imported.
"""

from __future__ import annotations

import fractions
import numbers

import keras
import numpy as np
from keras import ops

_PACKAGE = "kseg"


def _channels(y_pred) -> int:
    channels = y_pred.shape[-1]
    if len(y_pred.shape) == 3:
        # (B, H, W) slices: read as (B, length, C) their last spatial axis became W classes
        raise ValueError(
            f"y_pred of shape {tuple(y_pred.shape)} has no channel axis: kseg's losses and "
            "metrics take 2D or 3D maps, (B, H, W, C) or (B, D, H, W, C); a binary map "
            "without it needs y_pred[..., None] (and y_true[..., None])"
        )
    if channels is None or len(y_pred.shape) < 3:
        raise ValueError(
            "y_pred must have shape (batch, *spatial, channels) with a known channel count, "
            f"got shape {tuple(y_pred.shape)}"
        )
    return int(channels)


def _check_one_class_per_voxel(target, y_true, y_pred):
    """Called eagerly, refuse a multi-channel target with voxels of several classes (their
    values summing to more than 1): a softmax cross-entropy of it is no loss of any
    labelling. A binary volume without its channel axis, ``(B, D, H, W)``, has the rank of
    a 2D multi-class map and was read as ``W`` classes. All-zero voxels (no class: the
    usual way to leave voxels out of a categorical cross-entropy) pass. Inside a traced
    step nothing can raise here."""
    if target.shape[-1] == 1:
        return
    several = ops.sum(ops.cast(ops.sum(target, axis=-1) > 1.0 + 1e-3, "float32"))
    if _concrete_bool(several > 0):
        raise ValueError(
            f"y_true of shape {tuple(y_true.shape)} is read as one-hot over the last axis of "
            f"y_pred {tuple(y_pred.shape)} ({target.shape[-1]} classes), but "
            f"{int(ops.convert_to_numpy(several))} voxels of y_true hold several classes "
            "(their values sum to more than 1 over it); a softmax cross-entropy needs at most "
            "one class per voxel. A binary volume without its channel axis has this shape: "
            "add it to both, y_true[..., None] and y_pred[..., None]"
        )


def _concrete_bool(flag):
    """A scalar boolean tensor as a Python bool when computed eagerly, else ``None``.

    Inside a traced function (``tf.function``, ``jax.jit``) the value is not known yet, so
    no Python decision can depend on it.
    """
    if keras.config.backend() == "tensorflow":
        import tensorflow as tf

        if not tf.executing_eagerly():
            return None
    try:
        return bool(ops.convert_to_numpy(flag))
    except TypeError:  # a traced value, e.g. under jax.jit
        return None


def _invalid_target_voxels(y_true, y_pred, dtype):
    """``(count, expected)``: voxels of ``y_true`` that hold no valid target, and what is valid.

    A binary target (one channel) or a one-hot target (``y_pred``'s rank and channel count)
    must lie in [0, 1]; sparse labels of a multi-class model must be the integers
    ``0 .. C-1``.
    """
    channels = y_pred.shape[-1]
    one_hot = len(y_true.shape) == len(y_pred.shape) and y_true.shape[-1] == channels
    if channels == 1 or one_hot:
        # not "< 0 or > 1": NaN (a mask resampled with a NaN fill) compares false to both
        bad = ops.logical_not(ops.logical_and(y_true >= 0, y_true <= 1))
        if one_hot:
            bad = ops.any(bad, axis=-1)
        return ops.sum(ops.cast(bad, dtype)), "values in [0, 1] (0/1, or soft labels)"
    bad = ops.logical_or(
        ops.logical_or(y_true < 0, y_true > channels - 1), ops.not_equal(y_true, ops.round(y_true))
    )
    return ops.sum(ops.cast(bad, dtype)), f"integer labels 0..{channels - 1}"


def _one_hot_target(y_true, y_pred):
    """``y_true`` as a float tensor with the shape of ``y_pred``.

    A one-hot or binary target passes through; sparse labels, with or without a trailing
    axis of size one, are one-hot encoded over the ``C`` channels of ``y_pred``.
    """
    channels = _channels(y_pred)
    rank_true, rank_pred = len(y_true.shape), len(y_pred.shape)
    y_true = ops.cast(y_true, y_pred.dtype)
    if rank_true == rank_pred and y_true.shape[-1] == channels:
        _check_grids(y_true.shape[:-1], y_true.shape, y_pred.shape)
        _check_target_values(y_true, y_pred)
        return y_true
    if rank_true == rank_pred and y_true.shape[-1] == 1:
        labels = ops.squeeze(y_true, axis=-1)
    elif rank_true == rank_pred - 1:
        labels = y_true
    else:
        raise ValueError(
            f"y_true of shape {tuple(y_true.shape)} fits neither a one-hot target nor sparse "
            f"labels for y_pred of shape {tuple(y_pred.shape)}: expected "
            f"(B, *spatial, {channels}), (B, *spatial, 1) or (B, *spatial)"
        )
    _check_grids(labels.shape, y_true.shape, y_pred.shape)
    _check_target_values(y_true, y_pred)
    if channels == 1:
        return ops.expand_dims(labels, axis=-1)
    return ops.one_hot(ops.cast(labels, "int32"), channels, dtype=y_pred.dtype)


def _check_target_values(y_true, y_pred):
    """Called eagerly, refuse a target outside the label set (a 0/255 mask, labels outside
    ``0 .. C-1``): it would give a negative Dice loss or drop voxels from every class.
    Inside a traced step nothing can raise here; the streaming metrics turn ``nan``."""
    bad, expected = _invalid_target_voxels(y_true, y_pred, "float32")
    if _concrete_bool(bad > 0):
        raise ValueError(
            _outside_label_set(y_true, bad, expected, f"y_pred of shape {tuple(y_pred.shape)}")
        )


def _outside_label_set(y_true, bad, expected: str, given: str) -> str:
    """The message for ``bad`` voxels of ``y_true`` outside the label set ``expected`` of
    what ``given`` describes (a 0/255 mask, labels past the classes)."""
    values = np.unique(ops.convert_to_numpy(y_true))
    return (
        f"y_true holds {int(ops.convert_to_numpy(bad))} voxels outside the label set, values "
        f"{values[:8].tolist()}{'...' if values.size > 8 else ''}; expected {expected} for "
        f"{given} (map a 0/255 mask to 0/1 first)"
    )


def _check_grids(leading, true_shape, pred_shape):
    """Raise when the known batch and spatial sizes of target and prediction differ.

    Sizes unknown while a model is traced (``None``) cannot be compared here; a mismatch
    there still fails when the tensors meet, with the backend's own message.
    """
    expected = tuple(pred_shape[:-1])
    for size, wanted in zip(tuple(leading), expected, strict=True):
        if size is not None and wanted is not None and size != wanted:
            raise ValueError(
                f"y_true has shape {tuple(true_shape)} but y_pred has shape "
                f"{tuple(pred_shape)}: their batch and spatial axes must match "
                f"({expected} before the channel axis)"
            )


def _probabilities(y_pred, from_logits):
    if not from_logits:
        return y_pred
    if y_pred.shape[-1] == 1:
        return ops.sigmoid(y_pred)
    return ops.softmax(y_pred, axis=-1)


def _log_probabilities(y_pred, from_logits):
    """``(log p, log(1 - p))`` per channel, computed stably from logits when given them."""
    epsilon = keras.config.epsilon()
    if from_logits and y_pred.shape[-1] == 1:
        return ops.log_sigmoid(y_pred), ops.log_sigmoid(-y_pred)
    if from_logits:
        log_p = ops.log_softmax(y_pred, axis=-1)
        return log_p, ops.log(ops.clip(1.0 - ops.exp(log_p), epsilon, 1.0))
    probabilities = ops.clip(y_pred, epsilon, 1.0 - epsilon)
    return ops.log(probabilities), ops.log(1.0 - probabilities)


def _cross_entropy_map(y_true, y_pred, from_logits):
    """Per-voxel cross-entropy, shape ``(B, *spatial)``.

    Binary models get binary cross-entropy, multi-class models categorical cross-entropy.
    """
    target = _one_hot_target(y_true, y_pred)
    _check_one_class_per_voxel(target, y_true, y_pred)
    log_p, log_not_p = _log_probabilities(y_pred, from_logits)
    if y_pred.shape[-1] == 1:
        return -ops.squeeze(target * log_p + (1.0 - target) * log_not_p, axis=-1)
    return -ops.sum(target * log_p, axis=-1)


def _spatial_axes(tensor, batch_dice):
    axes = tuple(range(1, len(tensor.shape) - 1))
    return (0,) + axes if batch_dice else axes


def _drop_background(tensor, include_background):
    if include_background or tensor.shape[-1] == 1:
        return tensor
    return tensor[..., 1:]


def _per_sample(value, y_pred, batch_dice):
    """Broadcast a batch-pooled value to one entry per sample, so reductions stay valid."""
    if batch_dice:
        return ops.broadcast_to(value, (ops.shape(y_pred)[0],))
    return value


def _check_flag(name, value):
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be True or False, got {value!r}")


def _python_number(value):
    """A numpy scalar (``np.arange`` grids, values read from arrays) as the Python int or
    float Keras' JSON configs hold; anything else as it is."""
    return value.item() if isinstance(value, np.generic) else value


def _check_non_negative(name, value):
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not value >= 0:
        raise ValueError(f"{name} must be a number >= 0, got {value!r}")
    return _python_number(value)


def _check_unit_interval(name, value):
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0 <= value <= 1:
        raise ValueError(f"{name} must be a number in [0, 1], got {value!r}")
    return _python_number(value)


class _PerSampleLoss(keras.losses.Loss):
    """A loss with one value per sample: ``sample_weight`` can weight samples, not voxels.

    Keras broadcasts a per-voxel weight map against the ``(B,)`` values: ``(B, *spatial)``
    failed with a bare shape error and ``(B, *spatial, 1)`` silently became each sample's
    mean weight. Both are refused here, naming the shapes.
    """

    def __call__(self, y_true, y_pred, sample_weight=None):
        if sample_weight is not None:
            shape = getattr(sample_weight, "shape", None)
            if shape is None:
                shape = np.shape(sample_weight)
            # a traced weight of unknown rank cannot be told apart here
            shape = () if getattr(shape, "rank", 0) is None else tuple(shape)
            if len(shape) > 1 and any(size is None or size > 1 for size in shape[1:]):
                raise ValueError(
                    f"{self.name} gives one value per sample, so sample_weight of shape "
                    f"{shape} cannot weight voxels; pass one weight per sample, (B,), or "
                    "use a voxel-wise loss (e.g. keras.losses.BinaryCrossentropy) for a "
                    "per-voxel weight map"
                )
        return super().__call__(y_true, y_pred, sample_weight=sample_weight)


class _OverlapLoss(_PerSampleLoss):
    """Shared arguments and sums of the overlap (Dice-family) losses."""

    def __init__(
        self,
        smooth,
        include_background,
        batch_dice,
        from_logits,
        reduction,
        name,
        dtype,
    ):
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        smooth = _check_non_negative("smooth", smooth)
        _check_flag("include_background", include_background)
        _check_flag("batch_dice", batch_dice)
        _check_flag("from_logits", from_logits)
        self.smooth = smooth
        self.include_background = include_background
        self.batch_dice = batch_dice
        self.from_logits = from_logits

    def _overlap_sums(self, y_true, y_pred, squared_denominator=False):
        """``(intersection, sum_true, sum_pred)`` per sample and class, ``(B or 1, C')``."""
        target = _drop_background(_one_hot_target(y_true, y_pred), self.include_background)
        probabilities = _drop_background(
            _probabilities(y_pred, self.from_logits), self.include_background
        )
        axes = _spatial_axes(target, self.batch_dice)
        intersection = ops.sum(target * probabilities, axis=axes)
        if squared_denominator:
            sum_true = ops.sum(ops.square(target), axis=axes)
            sum_pred = ops.sum(ops.square(probabilities), axis=axes)
        else:
            sum_true = ops.sum(target, axis=axes)
            sum_pred = ops.sum(probabilities, axis=axes)
        return intersection, sum_true, sum_pred

    def _ratio(self, numerator, denominator):
        """``(numerator + s) / (denominator + s)``, and 1 where that is ``0 / 0``.

        The denominators of these losses are 0 only when the class is empty in target and
        prediction alike (the numerator is then 0 too). Agreeing on absence is perfect, so
        such a class scores 1 whatever ``smooth`` is: ``s / s`` for ``s > 0``, and 1 by
        definition for ``s = 0`` or an ``s`` too small for the dtype. No epsilon floor is
        added to the denominator, since ``s / max(s, epsilon)`` is less than 1 for
        ``s < epsilon``. The safe divisor keeps the gradient of the unused branch finite.
        Only an exact 0 is read as agreement: a NaN (a diverged model's output) stays NaN,
        as in MONAI, so Keras logs ``nan`` and ``TerminateOnNaN`` stops, where a perfect
        score would have let checkpoints keep the diverged model.
        """
        denominator = denominator + self.smooth
        empty = ops.equal(denominator, 0.0)
        divisor = ops.where(empty, ops.ones_like(denominator), denominator)
        return ops.where(empty, ops.ones_like(divisor), (numerator + self.smooth) / divisor)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "smooth": self.smooth,
                "include_background": self.include_background,
                "batch_dice": self.batch_dice,
                "from_logits": self.from_logits,
                "dtype": self.dtype,
            }
        )
        return config


def _soft_dice(loss, y_true, y_pred, squared_denominator):
    intersection, sum_true, sum_pred = loss._overlap_sums(y_true, y_pred, squared_denominator)
    return loss._ratio(2.0 * intersection, sum_true + sum_pred)


@keras.saving.register_keras_serializable(package=_PACKAGE)
class DiceLoss(_OverlapLoss):
    """Soft Dice loss, ``1 - mean over classes of (2 |X∩Y| + s) / (|X| + |Y| + s)``.

    ``|X∩Y| = sum(y_true * p)`` and ``|X| + |Y| = sum(y_true) + sum(p)`` over the spatial
    axes of each sample (or of the whole batch with ``batch_dice=True``). A class absent
    from both target and prediction scores ``s / s = 1``, so it adds no loss; with
    ``smooth=0`` it scores 1 too (``0 / 0`` is read as agreement on absence).

    Args:
        smooth: ``s`` >= 0, added to numerator and denominator; it keeps the gradient
            bounded when a class is nearly empty. A class absent from both target and
            prediction scores 1 (no loss) for every ``smooth``, 0 included.
        include_background: when False, channel 0 of a multi-class model is left out of
            the mean. Ignored for binary (one-channel) models.
        from_logits: whether ``y_pred`` holds logits (sigmoid or softmax is applied here).
        squared_denominator: use ``sum(y_true**2) + sum(p**2)`` in the denominator, the
            V-Net form of Milletari et al.
        batch_dice: compute one Dice per class over the whole batch instead of one per
            sample (nnU-Net's ``batch_dice``); every sample then carries the same value.
        reduction: Keras loss reduction over the per-sample values.
        name: loss name shown in logs.
        dtype: dtype the loss is computed in.

    Example:

    >>> import numpy as np
    >>> y_true = np.array([[[[1.0], [0.0]], [[1.0], [1.0]]]])  # (1, 2, 2, 1)
    >>> y_pred = np.array([[[[1.0], [0.0]], [[1.0], [0.0]]]])
    >>> round(float(DiceLoss(smooth=0.0)(y_true, y_pred)), 4)  # 1 - 2*2 / (3 + 2)
    0.2

    Reference:
        Milletari F, Navab N, Ahmadi S-A. "V-Net: Fully Convolutional Neural Networks for
        Volumetric Medical Image Segmentation". 3DV 2016. arXiv:1606.04797.
    """

    def __init__(
        self,
        smooth=1.0,
        include_background=True,
        from_logits=False,
        squared_denominator=False,
        batch_dice=False,
        reduction="sum_over_batch_size",
        name="dice_loss",
        dtype=None,
    ):
        super().__init__(
            smooth, include_background, batch_dice, from_logits, reduction, name, dtype
        )
        _check_flag("squared_denominator", squared_denominator)
        self.squared_denominator = squared_denominator

    def call(self, y_true, y_pred):
        dice = _soft_dice(self, y_true, y_pred, self.squared_denominator)
        return _per_sample(1.0 - ops.mean(dice, axis=-1), y_pred, self.batch_dice)

    def get_config(self):
        config = super().get_config()
        config["squared_denominator"] = self.squared_denominator
        return config


@keras.saving.register_keras_serializable(package=_PACKAGE)
class IoULoss(_OverlapLoss):
    """Soft Jaccard (IoU) loss, ``1 - mean over classes of (|X∩Y| + s) / (|X∪Y| + s)``.

    ``|X∩Y| = sum(y_true * p)`` and ``|X∪Y| = sum(y_true) + sum(p) - |X∩Y|`` over the
    spatial axes of each sample (or of the batch with ``batch_dice=True``). A class absent
    from both target and prediction scores 1 (no loss) for every ``smooth``, 0 included.

    Args:
        smooth: ``s`` >= 0 added to numerator and denominator.
        include_background: when False, channel 0 of a multi-class model is left out.
            Ignored for binary models.
        from_logits: whether ``y_pred`` holds logits.
        squared_denominator: use ``sum(y_true**2) + sum(p**2) - |X∩Y|`` as the union.
        batch_dice: one score per class over the whole batch instead of per sample.
        reduction: Keras loss reduction over the per-sample values.
        name: loss name shown in logs.
        dtype: dtype the loss is computed in.

    Example:

    >>> import numpy as np
    >>> y_true = np.array([[[[1.0], [0.0]], [[1.0], [1.0]]]])
    >>> y_pred = np.array([[[[1.0], [0.0]], [[1.0], [0.0]]]])
    >>> round(float(IoULoss(smooth=0.0)(y_true, y_pred)), 4)  # 1 - 2 / 3
    0.3333

    Reference:
        Rahman MA, Wang Y. "Optimizing Intersection-Over-Union in Deep Neural Networks for
        Image Segmentation". ISVC 2016, LNCS 10072, pp. 234-244.
    """

    def __init__(
        self,
        smooth=1.0,
        include_background=True,
        from_logits=False,
        squared_denominator=False,
        batch_dice=False,
        reduction="sum_over_batch_size",
        name="iou_loss",
        dtype=None,
    ):
        super().__init__(
            smooth, include_background, batch_dice, from_logits, reduction, name, dtype
        )
        _check_flag("squared_denominator", squared_denominator)
        self.squared_denominator = squared_denominator

    def call(self, y_true, y_pred):
        intersection, sum_true, sum_pred = self._overlap_sums(
            y_true, y_pred, self.squared_denominator
        )
        iou = self._ratio(intersection, sum_true + sum_pred - intersection)
        return _per_sample(1.0 - ops.mean(iou, axis=-1), y_pred, self.batch_dice)

    def get_config(self):
        config = super().get_config()
        config["squared_denominator"] = self.squared_denominator
        return config


@keras.saving.register_keras_serializable(package=_PACKAGE)
class TverskyLoss(_OverlapLoss):
    """Tversky loss, ``1 - mean over classes of (TP + s) / (TP + α FP + β FN + s)``.

    With soft predictions ``TP = sum(p * y)``, ``FP = sum(p * (1 - y))`` and
    ``FN = sum((1 - p) * y)``. ``α`` weighs false positives and ``β`` false negatives;
    ``α = β = 0.5`` is the Dice loss, ``α = β = 1`` the IoU loss. Salehi et al. found
    ``α = 0.3, β = 0.7`` (favouring recall) best for small lesions.

    Args:
        alpha: weight of false positives, >= 0.
        beta: weight of false negatives, >= 0.
        smooth: ``s`` >= 0 added to numerator and denominator. A class absent from both
            target and prediction scores 1 (no loss) for every ``smooth``, 0 included.
        include_background: when False, channel 0 of a multi-class model is left out.
            Ignored for binary models.
        from_logits: whether ``y_pred`` holds logits.
        batch_dice: one score per class over the whole batch instead of per sample.
        reduction: Keras loss reduction over the per-sample values.
        name: loss name shown in logs.
        dtype: dtype the loss is computed in.

    Example:

    >>> import numpy as np
    >>> y_true = np.array([[[[1.0], [0.0]], [[1.0], [1.0]]]])
    >>> y_pred = np.array([[[[1.0], [1.0]], [[1.0], [0.0]]]])  # TP 2, FP 1, FN 1
    >>> loss = TverskyLoss(alpha=0.3, beta=0.7, smooth=0.0)
    >>> round(float(loss(y_true, y_pred)), 4)  # 1 - 2 / (2 + 0.3 + 0.7)
    0.3333

    Reference:
        Salehi SSM, Erdogmus D, Gholipour A. "Tversky loss function for image segmentation
        using 3D fully convolutional deep networks". MLMI 2017, LNCS 10541, pp. 379-387.
        arXiv:1706.05721.
    """

    def __init__(
        self,
        alpha=0.3,
        beta=0.7,
        smooth=1.0,
        include_background=True,
        from_logits=False,
        batch_dice=False,
        reduction="sum_over_batch_size",
        name="tversky_loss",
        dtype=None,
    ):
        super().__init__(
            smooth, include_background, batch_dice, from_logits, reduction, name, dtype
        )
        alpha = _check_non_negative("alpha", alpha)
        beta = _check_non_negative("beta", beta)
        self.alpha = alpha
        self.beta = beta

    def call(self, y_true, y_pred):
        true_positive, sum_true, sum_pred = self._overlap_sums(y_true, y_pred)
        false_positive = sum_pred - true_positive
        false_negative = sum_true - true_positive
        tversky = self._ratio(
            true_positive,
            true_positive + self.alpha * false_positive + self.beta * false_negative,
        )
        return _per_sample(1.0 - ops.mean(tversky, axis=-1), y_pred, self.batch_dice)

    def get_config(self):
        config = super().get_config()
        config.update({"alpha": self.alpha, "beta": self.beta})
        return config


@keras.saving.register_keras_serializable(package=_PACKAGE)
class GeneralizedDiceLoss(_OverlapLoss):
    """Generalised Dice loss with class weights ``w_c = 1 / (sum of reference_c)**2``.

    ``L = 1 - (2 Σ_c w_c Σ_n y_cn p_cn + s) / (Σ_c w_c Σ_n (y_cn + p_cn) + s)``: each class
    counts in inverse proportion to its squared volume, so small structures weigh as much
    as large ones. A class absent from the reference (infinite weight) gets the largest
    finite weight of that sample (of the batch with ``batch_dice=True``), as MONAI does, so
    false positives in it are still penalised; when every class is absent all weights are 0
    and the loss is 0 for every ``smooth``, 0 included (``1 - s / s``, or ``0 / 0`` read
    as 1), whatever the prediction holds, as in MONAI.

    A binary model is scored as Sudre et al. score it: as two classes, background
    ``1 - p`` and foreground ``p``; ``include_background=False`` keeps only the foreground.

    Args:
        smooth: ``s`` >= 0 added to numerator and denominator.
        include_background: when False, the background class (channel 0, or ``1 - p`` of
            a binary model) is left out.
        from_logits: whether ``y_pred`` holds logits.
        batch_dice: weights and sums over the whole batch instead of per sample.
        reduction: Keras loss reduction over the per-sample values.
        name: loss name shown in logs.
        dtype: dtype the loss is computed in.

    Example:

    >>> import numpy as np
    >>> y_true = np.array([[[[0], [1]], [[2], [2]]]])  # sparse labels, (1, 2, 2, 1)
    >>> y_pred = np.full((1, 2, 2, 3), 1 / 3)
    >>> loss = GeneralizedDiceLoss(smooth=0.0)(y_true, y_pred)

    Reference:
        Sudre CH, Li W, Vercauteren T, Ourselin S, Cardoso MJ. "Generalised Dice overlap as
        a deep learning loss function for highly unbalanced segmentations". DLMIA 2017,
        LNCS 10553, pp. 240-248. arXiv:1707.03237.
    """

    def __init__(
        self,
        smooth=1e-5,
        include_background=True,
        from_logits=False,
        batch_dice=False,
        reduction="sum_over_batch_size",
        name="generalized_dice_loss",
        dtype=None,
    ):
        super().__init__(
            smooth, include_background, batch_dice, from_logits, reduction, name, dtype
        )

    def call(self, y_true, y_pred):
        target = _one_hot_target(y_true, y_pred)
        probabilities = _probabilities(y_pred, self.from_logits)
        if y_pred.shape[-1] == 1:
            target = ops.concatenate([1.0 - target, target], axis=-1)
            probabilities = ops.concatenate([1.0 - probabilities, probabilities], axis=-1)
        target = _drop_background(target, self.include_background)
        probabilities = _drop_background(probabilities, self.include_background)

        axes = _spatial_axes(target, self.batch_dice)
        intersection = ops.sum(target * probabilities, axis=axes)
        reference_volume = ops.sum(target, axis=axes)
        denominator = reference_volume + ops.sum(probabilities, axis=axes)

        present = reference_volume > 0
        weights = ops.where(present, 1.0 / ops.square(ops.maximum(reference_volume, 1.0)), 0.0)
        largest = ops.max(weights, axis=-1, keepdims=True)
        weights = ops.where(present, weights, largest)

        numerator = 2.0 * ops.sum(weights * intersection, axis=-1)
        generalized_dice = self._ratio(numerator, ops.sum(weights * denominator, axis=-1))
        return _per_sample(1.0 - generalized_dice, y_pred, self.batch_dice)


@keras.saving.register_keras_serializable(package=_PACKAGE)
class BinaryCrossentropy(_PerSampleLoss):
    """β-weighted cross-entropy of the Combo loss (Taghanaki et al. 2019, eq. 2).

    ``L = -mean_n [ β y_n log p_n + (1 - β)(1 - y_n) log(1 - p_n) ]``. ``β > 0.5`` weighs
    errors on foreground voxels (false negatives) more, ``β < 0.5`` errors on background
    voxels (false positives); ``β = 0.5`` is half the usual binary cross-entropy. The
    typeset equation in the paper reads ``β (t_i - ln p_i)``; the text and the authors'
    description make clear the intended term is ``β t_i ln p_i``, which is what is used.

    Multi-class models are scored one-vs-rest: every channel is treated as its own binary
    problem and the mean runs over voxels and channels.

    Args:
        beta: weight of the foreground term, in [0, 1].
        from_logits: whether ``y_pred`` holds logits.
        reduction: Keras loss reduction over the per-sample values.
        name: loss name shown in logs.
        dtype: dtype the loss is computed in.

    Example:

    >>> import numpy as np
    >>> y_true = np.array([[[[1.0], [0.0]]]])  # (1, 1, 2, 1)
    >>> y_pred = np.array([[[[0.5], [0.5]]]])
    >>> round(float(BinaryCrossentropy(beta=0.5)(y_true, y_pred)), 4)  # 0.5 * ln 2
    0.3466

    Reference:
        Taghanaki SA, Zheng Y, Zhou SK, Georgescu B, Sharma P, Xu D, Comaniciu D,
        Hamarneh G. "Combo loss: Handling input and output imbalance in multi-organ
        segmentation". Computerized Medical Imaging and Graphics 75:24-33, 2019.
        arXiv:1805.02798.
    """

    def __init__(
        self,
        beta=0.5,
        from_logits=False,
        reduction="sum_over_batch_size",
        name="binary_crossentropy",
        dtype=None,
    ):
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        beta = _check_unit_interval("beta", beta)
        _check_flag("from_logits", from_logits)
        self.beta = beta
        self.from_logits = from_logits

    def call(self, y_true, y_pred):
        return _weighted_binary_crossentropy(y_true, y_pred, self.beta, self.from_logits)

    def get_config(self):
        config = super().get_config()
        config.update({"beta": self.beta, "from_logits": self.from_logits, "dtype": self.dtype})
        return config


def _weighted_binary_crossentropy(y_true, y_pred, beta, from_logits):
    target = _one_hot_target(y_true, y_pred)
    log_p, log_not_p = _log_probabilities(y_pred, from_logits)
    voxel_loss = -(beta * target * log_p + (1.0 - beta) * (1.0 - target) * log_not_p)
    return ops.mean(ops.reshape(voxel_loss, (ops.shape(voxel_loss)[0], -1)), axis=-1)


@keras.saving.register_keras_serializable(package=_PACKAGE)
class ComboLoss(_OverlapLoss):
    """Combo loss, ``L = α L_mBCE - (1 - α) DSC`` (Taghanaki et al. 2019, eq. 3).

    ``L_mBCE`` is :class:`BinaryCrossentropy` with weight ``β`` and ``DSC`` the soft Dice
    coefficient ``(2 Σ y p + s) / (Σ y + Σ p + s)``. The Dice coefficient is subtracted,
    not ``1 - DSC`` added, so the loss of a perfect prediction is ``-(1 - α)``, not 0.

    Shares: expanding ``L_mBCE`` gives three terms with weights ``α β`` (foreground
    cross-entropy), ``α (1 - β)`` (background cross-entropy) and ``1 - α`` (Dice). With
    the defaults ``α = 2/3, β = 0.5`` all three equal ``1/3``: the Dice term weighs the same
    as each half of the cross-entropy (and half as much as the whole cross-entropy).

    For a multi-class model ``DSC`` is the mean Dice over the scored classes. The paper
    writes a sum over its K classes; the mean keeps the α/β shares above independent of
    the number of classes and equals the paper's term for a binary model (K = 1).

    Args:
        alpha: weight of the cross-entropy term, in [0, 1].
        beta: foreground weight inside the cross-entropy, in [0, 1].
        smooth: ``s`` >= 0 in the Dice coefficient.
        include_background: when False, channel 0 of a multi-class model is left out of
            the Dice term (the cross-entropy always covers every channel).
        from_logits: whether ``y_pred`` holds logits.
        batch_dice: Dice over the whole batch instead of per sample.
        reduction: Keras loss reduction over the per-sample values.
        name: loss name shown in logs.
        dtype: dtype the loss is computed in.

    Example:

    >>> import numpy as np
    >>> y_true = np.array([[[[1.0], [0.0]]]])
    >>> y_pred = np.array([[[[0.9], [0.2]]]])
    >>> loss = ComboLoss()(y_true, y_pred)

    Reference:
        Taghanaki SA, Zheng Y, Zhou SK, Georgescu B, Sharma P, Xu D, Comaniciu D,
        Hamarneh G. "Combo loss: Handling input and output imbalance in multi-organ
        segmentation". Computerized Medical Imaging and Graphics 75:24-33, 2019.
        arXiv:1805.02798.
    """

    def __init__(
        self,
        alpha=2.0 / 3.0,
        beta=0.5,
        smooth=1.0,
        include_background=True,
        from_logits=False,
        batch_dice=False,
        reduction="sum_over_batch_size",
        name="combo_loss",
        dtype=None,
    ):
        super().__init__(
            smooth, include_background, batch_dice, from_logits, reduction, name, dtype
        )
        alpha = _check_unit_interval("alpha", alpha)
        beta = _check_unit_interval("beta", beta)
        self.alpha = alpha
        self.beta = beta

    def call(self, y_true, y_pred):
        cross_entropy = _weighted_binary_crossentropy(y_true, y_pred, self.beta, self.from_logits)
        dice = ops.mean(_soft_dice(self, y_true, y_pred, False), axis=-1)
        dice = _per_sample(dice, y_pred, self.batch_dice)
        return self.alpha * cross_entropy - (1.0 - self.alpha) * dice

    def get_config(self):
        config = super().get_config()
        config.update({"alpha": self.alpha, "beta": self.beta})
        return config


@keras.saving.register_keras_serializable(package=_PACKAGE)
class DiceCELoss(_OverlapLoss):
    """Dice plus cross-entropy, ``λ_dice · DiceLoss + λ_ce · CE``, nnU-Net's default loss.

    ``CE`` is the mean per-voxel cross-entropy (binary cross-entropy for a binary model,
    categorical for a multi-class one) and ``DiceLoss`` is :class:`DiceLoss` with the same
    ``smooth``, ``include_background`` and ``batch_dice``. nnU-Net leaves the background out
    of the Dice term, hence ``include_background=False`` by default; it writes the Dice term
    as ``-DSC`` where this class uses ``1 - DSC``, a constant offset with equal gradients.

    Args:
        lambda_dice: weight of the Dice term, >= 0.
        lambda_ce: weight of the cross-entropy term, >= 0.
        smooth: ``s`` >= 0 in the Dice term.
        include_background: when False, channel 0 of a multi-class model is left out of
            the Dice term. Ignored for binary models.
        from_logits: whether ``y_pred`` holds logits.
        squared_denominator: V-Net squared denominator in the Dice term.
        batch_dice: Dice over the whole batch instead of per sample.
        reduction: Keras loss reduction over the per-sample values.
        name: loss name shown in logs.
        dtype: dtype the loss is computed in.

    Example:

    >>> import numpy as np
    >>> y_true = np.array([[[[0], [1]], [[2], [1]]]])  # sparse labels
    >>> logits = np.zeros((1, 2, 2, 3))
    >>> loss = DiceCELoss(from_logits=True)(y_true, logits)

    Reference:
        Isensee F, Jaeger PF, Kohl SAA, Petersen J, Maier-Hein KH. "nnU-Net: a
        self-configuring method for deep learning-based biomedical image segmentation".
        Nature Methods 18:203-211, 2021.
    """

    def __init__(
        self,
        lambda_dice=1.0,
        lambda_ce=1.0,
        smooth=1e-5,
        include_background=False,
        from_logits=False,
        squared_denominator=False,
        batch_dice=False,
        reduction="sum_over_batch_size",
        name="dice_ce_loss",
        dtype=None,
    ):
        super().__init__(
            smooth, include_background, batch_dice, from_logits, reduction, name, dtype
        )
        lambda_dice = _check_non_negative("lambda_dice", lambda_dice)
        lambda_ce = _check_non_negative("lambda_ce", lambda_ce)
        _check_flag("squared_denominator", squared_denominator)
        self.lambda_dice = lambda_dice
        self.lambda_ce = lambda_ce
        self.squared_denominator = squared_denominator

    def call(self, y_true, y_pred):
        dice = ops.mean(_soft_dice(self, y_true, y_pred, self.squared_denominator), axis=-1)
        dice_loss = _per_sample(1.0 - dice, y_pred, self.batch_dice)
        voxel_ce = _cross_entropy_map(y_true, y_pred, self.from_logits)
        cross_entropy = ops.mean(ops.reshape(voxel_ce, (ops.shape(voxel_ce)[0], -1)), axis=-1)
        return self.lambda_dice * dice_loss + self.lambda_ce * cross_entropy

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "lambda_dice": self.lambda_dice,
                "lambda_ce": self.lambda_ce,
                "squared_denominator": self.squared_denominator,
            }
        )
        return config


@keras.saving.register_keras_serializable(package=_PACKAGE)
class FocalLoss(_PerSampleLoss):
    """Focal loss, ``-mean_n Σ_c w_c y_cn (1 - p_cn)**γ log p_cn``.

    The modulating factor ``(1 - p)**γ`` shrinks the loss of voxels that are already
    well classified, so training concentrates on the hard ones; ``γ = 0`` without ``α`` is
    plain cross-entropy. A binary model is treated as the two classes background
    ``1 - p`` and foreground ``p``. ``α`` balances them as in Lin et al.: foreground
    classes get weight ``α`` and the background (class 0, or ``1 - p``) ``1 - α``;
    ``alpha=None`` weighs every class 1. The mean runs over voxels (Lin et al. normalise by
    the number of foreground anchors, which is undefined for an empty mask).

    Args:
        gamma: focusing parameter ``γ`` >= 0.
        alpha: ``None`` or the foreground weight in [0, 1].
        from_logits: whether ``y_pred`` holds logits.
        reduction: Keras loss reduction over the per-sample values.
        name: loss name shown in logs.
        dtype: dtype the loss is computed in.

    Example:

    >>> import numpy as np
    >>> y_true = np.array([[[[1.0], [0.0]]]])
    >>> y_pred = np.array([[[[0.9], [0.2]]]])
    >>> loss = FocalLoss(gamma=2.0, alpha=0.25)(y_true, y_pred)

    Reference:
        Lin T-Y, Goyal P, Girshick R, He K, Dollár P. "Focal Loss for Dense Object
        Detection". ICCV 2017, pp. 2980-2988. arXiv:1708.02002.
    """

    def __init__(
        self,
        gamma=2.0,
        alpha=None,
        from_logits=False,
        reduction="sum_over_batch_size",
        name="focal_loss",
        dtype=None,
    ):
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        gamma = _check_non_negative("gamma", gamma)
        if alpha is not None:
            alpha = _check_unit_interval("alpha", alpha)
        _check_flag("from_logits", from_logits)
        self.gamma = gamma
        self.alpha = alpha
        self.from_logits = from_logits

    def call(self, y_true, y_pred):
        target = _one_hot_target(y_true, y_pred)
        _check_one_class_per_voxel(target, y_true, y_pred)
        log_p, log_not_p = _log_probabilities(y_pred, self.from_logits)
        if y_pred.shape[-1] == 1:
            target = ops.concatenate([1.0 - target, target], axis=-1)
            log_p = ops.concatenate([log_not_p, log_p], axis=-1)
        modulation = ops.power(1.0 - ops.exp(log_p), self.gamma)
        voxel_loss = -target * modulation * log_p
        if self.alpha is not None:
            channels = voxel_loss.shape[-1]
            weights = [1.0 - self.alpha] + [self.alpha] * (channels - 1)
            voxel_loss = voxel_loss * ops.convert_to_tensor(weights, dtype=voxel_loss.dtype)
        voxel_loss = ops.sum(voxel_loss, axis=-1)
        return ops.mean(ops.reshape(voxel_loss, (ops.shape(voxel_loss)[0], -1)), axis=-1)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "gamma": self.gamma,
                "alpha": self.alpha,
                "from_logits": self.from_logits,
                "dtype": self.dtype,
            }
        )
        return config


@keras.saving.register_keras_serializable(package=_PACKAGE)
class TopKLoss(_PerSampleLoss):
    """Cross-entropy averaged over the ``k`` percent hardest voxels of each sample.

    The per-voxel cross-entropy (binary for a binary model, categorical for a
    multi-class one) is sorted and the ``max(1, floor(N k / 100))`` largest of the ``N``
    voxels of the sample are averaged; easy voxels, usually the vast background, no
    longer dilute the loss. This is the online bootstrapping of Wu et al., as nnU-Net's
    ``TopKLoss`` uses it (nnU-Net pools the whole batch; here each sample keeps its own
    hardest voxels so the loss stays per sample). ``k=100`` is plain cross-entropy.

    Args:
        k: percentage of voxels kept, in (0, 100].
        from_logits: whether ``y_pred`` holds logits.
        reduction: Keras loss reduction over the per-sample values.
        name: loss name shown in logs.
        dtype: dtype the loss is computed in.

    Example:

    >>> import numpy as np
    >>> y_true = np.zeros((1, 4, 5, 1))
    >>> y_pred = np.full((1, 4, 5, 1), 0.1)
    >>> loss = TopKLoss(k=10)(y_true, y_pred)  # the mean of the 2 largest of 20 losses

    Reference:
        Wu Z, Shen C, van den Hengel A. "Bridging Category-level and Instance-level Semantic
        Image Segmentation". arXiv:1605.06885, 2016.
    """

    def __init__(
        self,
        k=10.0,
        from_logits=False,
        reduction="sum_over_batch_size",
        name="top_k_loss",
        dtype=None,
    ):
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        if isinstance(k, bool) or not isinstance(k, numbers.Real) or not 0 < k <= 100:
            raise ValueError(f"k must be a percentage in (0, 100], got {k!r}")
        k = _python_number(k)
        _check_flag("from_logits", from_logits)
        self.k = k
        self.from_logits = from_logits

    def call(self, y_true, y_pred):
        voxel_ce = _cross_entropy_map(y_true, y_pred, self.from_logits)
        voxel_ce = ops.reshape(voxel_ce, (ops.shape(voxel_ce)[0], -1))
        voxel_count = ops.shape(voxel_ce)[1]
        # Exact rational arithmetic: a float k / 100 can round 30 * 20% down to 5 voxels.
        share = fractions.Fraction(self.k).limit_denominator(10**6) / 100
        if isinstance(voxel_count, int):
            kept = max(1, voxel_count * share.numerator // share.denominator)
        else:
            kept = ops.cast(voxel_count, "int64") * share.numerator // share.denominator
            kept = ops.cast(ops.maximum(kept, 1), "int32")
        hardest_first = -ops.sort(-voxel_ce, axis=-1)
        keep = ops.cast(ops.arange(voxel_count) < kept, voxel_ce.dtype)
        return ops.sum(hardest_first * keep, axis=-1) / ops.cast(kept, voxel_ce.dtype)

    def get_config(self):
        config = super().get_config()
        config.update({"k": self.k, "from_logits": self.from_logits, "dtype": self.dtype})
        return config


# ---- heteroscedastic (learned aleatoric) cross-entropy -----------------------------------

# The log-variance channel is read through ``s ↦ B tanh(s / B)`` with this ``B``: the
# identity near 0 (within 1 % for |s| < 3.4), smooth, and bounded so that ``σ = exp(s / 2)``
# stays in [exp(-10), exp(10)] ≈ [4.5e-5, 2.2e4] whatever the network outputs.
LOG_VARIANCE_BOUND = 20.0


def bounded_log_variance(log_variance):
    """``B tanh(s / B)`` with ``B = LOG_VARIANCE_BOUND``: the log-variance the loss uses."""
    return LOG_VARIANCE_BOUND * ops.tanh(log_variance / LOG_VARIANCE_BOUND)


def _split_heteroscedastic(y_pred):
    """``(logits, log_variance)`` of a ``(B, *spatial, C + 1)`` output, in float32 or wider."""
    channels = _channels(y_pred)
    if channels < 2:
        raise ValueError(
            "y_pred must hold the logits followed by one log-variance channel, "
            f"(B, *spatial, num_classes + 1), got shape {tuple(y_pred.shape)}"
        )
    if keras.backend.standardize_dtype(y_pred.dtype) in ("float16", "bfloat16"):
        y_pred = ops.cast(y_pred, "float32")
    return y_pred[..., :-1], y_pred[..., -1:]


def heteroscedastic_cross_entropy(y_true, y_pred, noise):
    """Per-sample heteroscedastic cross-entropy for given standard-normal draws ``noise``.

    The computation behind :class:`HeteroscedasticCrossEntropy`, with the draws passed in
    (tests and custom samplers use it). ``y_pred`` holds ``C`` logits ``f`` followed by one
    log-variance channel ``s``; with ``σ = exp(bounded_log_variance(s) / 2)`` the sampled
    logits are ``x̂_t = f + σ ε_t`` and the voxel loss is ``-log (1/T Σ_t p(y | x̂_t))``,
    ``p`` the sigmoid (``C == 1``) or softmax (``C > 1``) of ``x̂_t``, computed as a
    log-sum-exp over the samples of log-sigmoid / log-softmax values.

    Args:
        y_true: target as for every kseg loss, read against the ``C`` logit channels.
        y_pred: ``(B, *spatial, C + 1)`` logits and log-variance.
        noise: ``ε``, shape ``(T, B, *spatial, C)``.

    Returns:
        The mean voxel loss of each sample, shape ``(B,)``.
    """
    logits, log_variance = _split_heteroscedastic(y_pred)
    noise = ops.cast(noise, logits.dtype)
    sigma = ops.exp(0.5 * bounded_log_variance(log_variance))
    sampled = logits[None] + sigma[None] * noise
    log_count = ops.log(ops.cast(ops.shape(noise)[0], logits.dtype))
    target = _one_hot_target(y_true, logits)
    _check_one_class_per_voxel(target, y_true, logits)
    if logits.shape[-1] == 1:
        log_p = ops.logsumexp(ops.log_sigmoid(sampled), axis=0) - log_count
        log_not_p = ops.logsumexp(ops.log_sigmoid(-sampled), axis=0) - log_count
        voxel_loss = -ops.squeeze(target * log_p + (1.0 - target) * log_not_p, axis=-1)
    else:
        log_p = ops.logsumexp(ops.log_softmax(sampled, axis=-1), axis=0) - log_count
        voxel_loss = -ops.sum(target * log_p, axis=-1)
    return ops.mean(ops.reshape(voxel_loss, (ops.shape(voxel_loss)[0], -1)), axis=-1)


@keras.saving.register_keras_serializable(package=_PACKAGE)
class HeteroscedasticCrossEntropy(_PerSampleLoss):
    """Cross-entropy of logits corrupted by learned gaussian noise (Kendall and Gal, eq. 12).

    The model outputs ``C`` logits ``f`` and one log-variance ``s`` per voxel, shape
    ``(B, *spatial, C + 1)`` (see :class:`kseg.models.HeteroscedasticHead`). The loss draws
    ``T`` standard-normal ``ε_t`` per voxel and logit, samples ``x̂_t = f + σ ε_t`` with one
    ``σ = exp(s / 2)`` shared by the ``C`` logits of the voxel, and returns
    ``-log (1/T Σ_t p(y | x̂_t))`` averaged over voxels, where ``p`` is the sigmoid of a
    binary model (``C == 1``) and the softmax of a multi-class one. Voxels the network
    cannot fit lower their loss by raising ``σ`` (their sampled prediction is less
    confidently wrong), so ``σ²`` becomes a per-voxel map of aleatoric uncertainty
    (:func:`kseg.inference.heteroscedastic_uncertainty`).

    Stability: the mean over samples is a log-sum-exp of log-sigmoid / log-softmax values,
    so logits of ±1e4 give finite values and gradients; a 16-bit ``y_pred`` is cast to
    float32 first. ``s`` is read through ``20 tanh(s / 20)`` (``bounded_log_variance``),
    the identity near 0 that keeps ``σ`` within ``[4.5e-5, 2.2e4]`` for any output. With
    ``σ → 0`` the loss is the ordinary (binary or categorical) cross-entropy of ``f``.

    Memory: the ``T`` samples are held at once, ``T`` times the size of ``y_pred``.

    Args:
        num_samples: ``T``, Monte-Carlo samples per voxel, an integer >= 1.
        seed: seed of the draws (an integer or ``None``); each call draws fresh ``ε``.
        reduction: Keras loss reduction over the per-sample values.
        name: loss name shown in logs.
        dtype: dtype the loss is computed in.

    Example:

    >>> import numpy as np
    >>> y_true = np.array([[[[1.0], [0.0]]]])  # (1, 1, 2, 1), binary
    >>> y_pred = np.array([[[[2.0, -3.0], [1.0, 0.5]]]])  # logit, log-variance
    >>> loss = HeteroscedasticCrossEntropy(num_samples=20, seed=0)(y_true, y_pred)

    Reference:
        Kendall A, Gal Y. "What Uncertainties Do We Need in Bayesian Deep Learning for
        Computer Vision?". NeurIPS 2017, eq. 12. arXiv:1703.04977.
    """

    def __init__(
        self,
        num_samples=10,
        seed=None,
        reduction="sum_over_batch_size",
        name="heteroscedastic_cross_entropy",
        dtype=None,
    ):
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        if (
            isinstance(num_samples, bool)
            or not isinstance(num_samples, numbers.Integral)
            or num_samples < 1
        ):
            raise ValueError(f"num_samples must be an integer >= 1, got {num_samples!r}")
        if seed is not None and (
            isinstance(seed, bool) or not isinstance(seed, numbers.Integral)
        ):
            raise ValueError(f"seed must be an integer or None, got {seed!r}")
        self.num_samples = int(num_samples)
        self.seed = None if seed is None else int(seed)
        self._seed_generator = keras.random.SeedGenerator(self.seed)

    def call(self, y_true, y_pred):
        logits, _ = _split_heteroscedastic(y_pred)
        noise = keras.random.normal(
            (self.num_samples, *ops.shape(logits)), dtype=logits.dtype, seed=self._seed_generator
        )
        return heteroscedastic_cross_entropy(y_true, y_pred, noise)

    def get_config(self):
        config = super().get_config()
        config.update({"num_samples": self.num_samples, "seed": self.seed, "dtype": self.dtype})
        return config
