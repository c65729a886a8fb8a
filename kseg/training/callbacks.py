"""Full-volume validation during training.

Patch-level validation Dice (the ``val_dice`` Keras logs) scores random crops; what a paper
reports is the Dice of whole patient volumes, which also pays for false positives far from
the organ that patches rarely contain. :class:`VolumeValidation` runs the real inference
path (sliding window or slice-wise) on whole validation volumes, so checkpoints, early
stopping and learning-rate schedules can follow the number that matters.
"""

from __future__ import annotations

import json
import math
import numbers
import os
import pathlib
import time
import warnings
import zipfile
from collections.abc import Callable, Iterable, Mapping, Sequence

import keras
import numpy as np
import tensorflow as tf

from kseg._files import atomic_output, remove_stale_temporaries
from kseg.errors import LayoutError, MaskError, UnreadableFileError
from kseg.evaluation import (
    EmptyReferenceWarning,
    PatientTable,
    evaluate_volumes,
    metric_columns,
    reassemble_slices,
    refuse_fractional_reference,
    resize_probabilities,
)
from kseg.inference import predict_slices, sliding_window
from kseg.training.budget import TimeBudget, _checked_minutes
from kseg.training.distribute import broadcast_from_chief, is_chief, num_workers, strategy_of
from kseg.training.resume import (
    AtomicBackupAndRestore,
    ResumableCSVLogger,
    ResumableReduceLROnPlateau,
)


def _mean_ignoring_nan(values: np.ndarray, axis=None):
    """``nanmean`` that returns nan for all-nan input without a RuntimeWarning."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        mean = np.nanmean(values, axis=axis)
    return float(mean) if axis is None else mean


def _listed(patient_ids: Sequence, limit: int = 5) -> str:
    shown = ", ".join(str(patient_id) for patient_id in patient_ids[:limit])
    return shown + (f" and {len(patient_ids) - limit} more" if len(patient_ids) > limit else "")


class _NonFinitePrediction(ValueError):
    """A validation volume's prediction holds NaN or infinite values."""

    def __init__(self, patient_id, prediction: np.ndarray):
        self.patient_id = patient_id
        self.count = int(np.count_nonzero(~np.isfinite(prediction)))
        self.size = int(prediction.size)
        super().__init__(
            f"patient {patient_id!r}: the prediction holds {self.count} NaN or infinite "
            f"values of {self.size}; they would be scored as background"
        )


# Scores where higher is better, and distances where lower is better, by the metric names
# Keras and kseg.evaluation log; every loss is lower-is-better. kseg.tuning ranks trials
# by the same rule.
HIGHER_IS_BETTER = (
    "dice",
    "iou",
    "precision",
    "recall",
    "specificity",
    "accuracy",
    "binary_accuracy",
    "categorical_accuracy",
    "sparse_categorical_accuracy",
    "auc",
)
LOWER_IS_BETTER = ("hd95", "hausdorff", "assd", "ravd")


def metric_direction(name: str) -> tuple[str | None, str]:
    """``(direction, score name)`` of a log key: ``"max"``, ``"min"`` or ``None`` (a name
    whose direction kseg cannot tell), for ``val_volume_dice_liver``, ``val_loss``,
    ``val_volume_hd95/<patient_id>``, ``dice`` ..."""
    score = name[len("val_") :] if name.startswith("val_") else name
    if score.startswith("volume_"):
        score = score[len("volume_") :]
    score = score.split("/", 1)[0]  # per-patient keys: val_volume_dice/<patient_id>
    if score == "loss" or score.endswith("loss"):
        return "min", score
    for metric in HIGHER_IS_BETTER:
        if score == metric or score.startswith(metric + "_"):
            return "max", score
    for metric in LOWER_IS_BETTER:
        if score == metric or score.startswith(metric + "_"):
            return "min", score
    return None, score


def _check_mode(monitor: str, mode: str) -> None:
    """Refuse a ``mode`` that contradicts what ``monitor`` measures: the checkpoint would
    keep the worst model (``monitor="val_loss"`` with the default ``mode="max"``)."""
    if mode not in ("max", "min"):
        raise ValueError(f"mode must be 'max' or 'min', got {mode!r}")
    direction, score = metric_direction(monitor) if isinstance(monitor, str) else (None, "")
    if direction is not None and direction != mode:
        better = "higher" if direction == "max" else "lower"
        raise ValueError(
            f"monitor {monitor!r} with mode={mode!r}: {better} {score} is better, so the "
            f"best model would be the worst epoch; give mode={direction!r}"
        )


def output_kind(model) -> tuple[bool, str] | None:
    """``(outputs logits, why)`` of ``model`` from its output layer's activation: linear
    (kseg's builders with ``activation=None``) gives logits, sigmoid or softmax gives
    probabilities; ``None`` when it is not known (a subclassed model, a custom output
    layer)."""
    kinds = {keras.activations.get("linear"): True, keras.activations.get("sigmoid"): False,
             keras.activations.get("softmax"): False}
    for output in getattr(model, "outputs", None) or ():
        history = getattr(output, "_keras_history", None)
        layer = getattr(history, "operation", None)
        activation = getattr(layer, "activation", None)
        if activation in kinds:
            return kinds[activation], (f"its output layer {layer.name!r} has a "
                                       f"{activation.__name__} activation")
    return None


class VolumeValidation(keras.callbacks.Callback):
    """Score whole validation volumes every few epochs and put the result in the logs.

    After the first epoch of every ``fit`` (also one resumed at ``initial_epoch > 0``, as
    Keras Tuner's Hyperband and BackupAndRestore do) and then after every ``every``-th epoch
    the model predicts each validation volume and scores it per patient; the mean over
    patients is written to
    ``logs["val_volume_<metric>"]`` (``val_volume_dice`` by default; with ``labels``, the
    mean over classes and the per-class means ``val_volume_dice_<class>``). On the epochs
    in between the last values are written again, so ``ModelCheckpoint``, ``EarlyStopping``
    and ``ReduceLROnPlateau`` find the key every epoch instead of warning; a repeated value
    is never an improvement, so count ``patience`` in epochs, as a multiple of ``every``.

    Put this callback **before** any callback that monitors its keys: Keras calls
    ``on_epoch_end`` in list order on one shared ``logs`` dict, so a monitor listed earlier
    reads the logs before the volume scores are in them. (``History`` and the progress bar
    are appended by Keras after user callbacks and do see them.)

    The inference path follows the shapes: a volume with as many spatial axes as the model
    is predicted with :func:`kseg.inference.sliding_window` (window ``roi_size``, by default
    the model's input shape, ``None`` axes taken whole, padded up to a multiple of the
    model's ``size_divisor``, so a U-Net of any input size takes volumes of any size); a
    volume with one more axis than a 2D model is predicted slice by slice with
    :func:`kseg.inference.predict_slices` (in-plane ``None`` axes padded the same way and
    cropped back), and the probabilities are resized back to the
    label's in-plane size before scoring (so labels can stay on the acquisition grid while
    the model runs smaller; see :meth:`from_slices`). A deep-supervision model (one output
    per head, ``unet_plus_plus(deep_supervision=True)``) is scored on its last output, the
    full model's, as nnU-Net validates only its full-resolution output.

    Args:
        volumes: ``(patient_id, image, label, spacing)`` tuples: image ``(*spatial, C)`` as
            the model takes it, label map ``(*spatial)`` or ``(*spatial, 1)`` on the same
            grid, spacing in mm per spatial axis or the grid's 4×4 affine, which a sheared
            (gantry-tilted) grid needs for exact distances (used by distance metrics, as
            :func:`kseg.evaluation.evaluate_volumes` takes it).
        roi_size: sliding-window shape for models with the volume's number of spatial axes.
        every: run every this many epochs (and always after the first epoch of a ``fit``).
        metrics: metric names of :func:`kseg.evaluation.evaluate_volumes`.
        labels: class names to indices for label maps, as in ``evaluate_volumes``.
        threshold: foreground threshold of one-channel probabilities.
        postprocess: ``label map -> label map`` applied before scoring, as in
            ``evaluate_volumes`` (validate what the test table will score).
        overlap, blend, batch_size: passed to the sliding window (``batch_size`` also to
            slice-wise prediction).
        patch_metric: the log key of the patch-level validation Dice; when present,
            ``logs["val_patch_volume_gap"] = logs[patch_metric] - logs["val_volume_dice"]``
            shows how much patches flatter the model.
        log_per_patient: also write ``val_volume_<metric>/<patient_id>`` keys.
        progress: show inference progress bars.
        from_logits: the model outputs logits (a kseg builder with ``activation=None``,
            the network of :class:`kseg.training.MeanTeacher` or ``FixMatch``): they are
            turned into probabilities (sigmoid for one channel, softmax for several) before
            ``threshold`` applies. A prediction outside ``[0, 1]`` without it is a
            ``ValueError``: thresholding logits at 0.5 would score another cut-off.

    Validation volumes whose reference is empty (no voxel of a scored structure) score 1.0
    for an empty prediction and 0.0 for a single false-positive voxel, so a few of them swing
    the mean: they are accepted with one :class:`kseg.evaluation.EmptyReferenceWarning`
    naming them (and the structures they lack), given when the callback is made, not every
    epoch. A set in which every reference is empty, or lacks one of the scored structures,
    measures no segmentation of it and cannot drive a checkpoint; it is refused with a
    ``ValueError``.

    Attributes:
        history: ``{epoch: PatientTable}`` for every epoch that ran (0-based epochs).
        empty_references: patient ids of the volumes whose reference lacks a scored
            structure.

    Example:
        >>> import numpy as np
        >>> image = np.zeros((96, 96, 96, 1), np.float32)
        >>> label = np.zeros((96, 96, 96), np.uint8)
        >>> label[40:60, 40:60, 40:60] = 1
        >>> val_volumes = [("p1", image, label, (1.5, 1.0, 1.0))]
        >>> validation = VolumeValidation(val_volumes, roi_size=(64, 64, 64), every=5)
        >>> import keras
        >>> checkpoint = keras.callbacks.ModelCheckpoint(
        ...     "best.keras", monitor="val_volume_dice", mode="max", save_best_only=True)
        >>> model.fit(patches, epochs=100, validation_data=val_patches,  # doctest: +SKIP
        ...           callbacks=[validation, checkpoint])  # the validation first
    """

    def __init__(
        self,
        volumes: Iterable[tuple],
        *,
        roi_size=None,
        every: int = 1,
        metrics: Sequence[str] = ("dice",),
        labels: Mapping[str, int] | Iterable[int] | None = None,
        threshold: float = 0.5,
        postprocess: Callable[[np.ndarray], np.ndarray] | None = None,
        overlap: float = 0.5,
        blend: str = "gaussian",
        batch_size: int = 4,
        patch_metric: str = "val_dice",
        log_per_patient: bool = False,
        progress: bool = False,
        from_logits: bool = False,
    ):
        super().__init__()
        self.volumes = list(volumes)
        if not self.volumes:
            raise ValueError("volumes must hold at least one (patient_id, image, label, spacing)")
        if isinstance(every, bool) or not isinstance(every, numbers.Integral) or every < 1:
            raise ValueError(f"every must be a positive integer, got {every!r}")
        every = int(every)  # a numpy integer too
        self.roi_size = roi_size
        self.every = every
        self.metrics = tuple(metrics)
        # a list, not a one-shot iterator: the labels are read at every evaluation
        self.labels = labels if labels is None or isinstance(labels, Mapping) else list(labels)
        self.threshold = threshold
        self.postprocess = postprocess
        self.overlap = overlap
        self.blend = blend
        self.batch_size = batch_size
        self.patch_metric = patch_metric
        self.log_per_patient = log_per_patient
        self.progress = progress
        self.from_logits = bool(from_logits)
        self.history: dict[int, PatientTable] = {}
        self._latest_logs: dict[str, float] = {}
        self._replicated_call = None
        self._final_output = None
        self._check_references()

    def _structures(self) -> dict[str, int]:
        """Scored structure names to label values (``{"": 1}`` for one binary structure)."""
        if self.labels is None:
            return {"": 1}
        if isinstance(self.labels, Mapping):
            return {str(name): int(index) for name, index in self.labels.items()}
        return {str(int(index)): int(index) for index in self.labels}

    def _check_references(self) -> None:
        structures = self._structures()
        absent = {}
        for patient_id, _, label, *_ in self.volumes:
            label = np.asarray(label)
            self._check_label_values(patient_id, label)
            if self.labels is None:
                missing = [] if np.any(label) else [""]
            else:
                missing = [name for name, index in structures.items() if not np.any(label == index)]
            if missing:
                absent[patient_id] = missing
        self.empty_references = list(absent)
        never_present = [
            name
            for name in structures
            if sum(name in missing for missing in absent.values()) == len(self.volumes)
        ]
        if never_present:
            what = (
                "reference is empty"
                if self.labels is None
                else (f"reference lacks {', '.join(map(repr, never_present))}")
            )
            raise ValueError(
                f"volumes: every validation {what} (patients {_listed(self.empty_references)}"
                "): their scores measure no segmentation and cannot drive a checkpoint; "
                "validate on patients with the structure"
            )
        if absent:
            described = _listed(
                [
                    str(patient_id)
                    if self.labels is None
                    else f"{patient_id}: {', '.join(missing)}"
                    for patient_id, missing in absent.items()
                ]
            )
            warnings.warn(
                f"VolumeValidation: {len(absent)} of {len(self.volumes)} validation volumes "
                f"have an empty reference ({described}); each scores Dice 1.0 for an empty "
                "prediction and 0.0 for any false positive, which swings the mean",
                EmptyReferenceWarning,
                stacklevel=3,
            )

    def _check_label_values(self, patient_id, label: np.ndarray) -> None:
        """Refuse now the references :func:`kseg.evaluation.evaluate_volumes` refuses, not
        after the first epoch: fractional values, and without ``labels`` values beyond 0/1."""
        refuse_fractional_reference(patient_id, label, prefix="VolumeValidation: ")
        if self.labels is None and label.size and (label.min() < 0 or label.max() > 1):
            raise MaskError(
                None,
                f"VolumeValidation: patient {patient_id!r}: the reference holds labels "
                f"{np.unique(label)[:6].tolist()} but one binary structure (0/1) is scored; "
                "pass labels={'organ': index, ...} for a multi-class label map, or give a "
                "0/1 mask (e.g. mask > 0 for a 0/255 mask)",
            )

    def _predictor(self):
        """The model, or under a distribution strategy with several replicas its plain call.

        Keras' ``predict_on_batch`` runs on every replica and concatenates their outputs
        (across workers, too), which returns each window several times; every worker holds
        all weights, so it predicts the volumes on its own."""
        model = self._final_output_model()
        strategy = strategy_of(self.model)
        if strategy.num_replicas_in_sync == 1:
            return model
        if self._replicated_call is None:
            self._replicated_call = tf.function(
                lambda batch: model(batch, training=False), reduce_retracing=True
            )
        return self._replicated_call

    def _final_output_model(self):
        """The model, or for a deep-supervision model (one output per head, the full
        model's last: ``unet_plus_plus(deep_supervision=True)``) a model of its last output,
        sharing its layers: nnU-Net trains with deep supervision and validates the
        full-resolution output alone."""
        outputs = getattr(self.model, "outputs", None) or ()
        if len(outputs) < 2 or len(self.model.inputs) != 1:
            return self.model
        if self._final_output is None or self._final_output[0] is not self.model:
            from kseg.models import SegmentationModel

            final = SegmentationModel(
                self.model.inputs,
                outputs[-1],
                size_divisor=getattr(self.model, "size_divisor", 1),
                name=self.model.name,
            )
            self._final_output = (self.model, final)
        return self._final_output[1]

    def _predict(self, image: np.ndarray, label_plane) -> np.ndarray:
        model_input_shape = tuple(self.model.inputs[0].shape)
        model_spatial_dims = len(model_input_shape) - 2
        image_spatial_dims = image.ndim - 1
        if image_spatial_dims == model_spatial_dims:
            roi_size = self.roi_size
            if roi_size is None:
                # the model's input shape; an axis of any size (None) is taken whole, padded
                # up to a size the network divides (sliding_window pads and crops back)
                divisor = getattr(self.model, "size_divisor", 1)
                roi_size = tuple(
                    -(-size // divisor) * divisor if wanted is None else wanted
                    for wanted, size in zip(model_input_shape[1:-1], image.shape[:-1], strict=True)
                )
            return sliding_window(
                self._predictor(),
                image,
                roi_size,
                overlap=self.overlap,
                blend=self.blend,
                batch_size=self.batch_size,
                progress=self.progress,
            )
        if model_spatial_dims == 2 and image_spatial_dims == 3:
            # in-plane axes of any size (None) padded evenly up to a size the network
            # divides, and cropped back, as sliding_window does for the other path
            divisor = getattr(self.model, "size_divisor", 1)
            padding = [(0, 0)]
            for wanted, size in zip(model_input_shape[1:3], image.shape[1:3], strict=True):
                missing = -(-size // divisor) * divisor - size if wanted is None else 0
                padding.append((missing // 2, missing - missing // 2))
            padded = np.pad(image, [*padding, (0, 0)]) if any(map(any, padding)) else image
            probabilities = predict_slices(
                self._predictor(), padded, batch_size=self.batch_size, progress=self.progress
            )
            crop = tuple(
                slice(before, before + size)
                for (before, _), size in zip(padding, image.shape[:3], strict=True)
            )
            return resize_probabilities(probabilities[crop], label_plane)
        raise ValueError(
            f"validation image {image.shape} fits neither the model's input "
            f"{model_input_shape} (same spatial axes) nor slice-wise prediction of a 2D model"
        )

    @classmethod
    def from_slices(cls, dataset, *, preprocess=None, **kwargs) -> VolumeValidation:
        """Validate a 2D model on whole volumes reassembled from a per-slice dataset.

        The slices are read once, reassembled per patient with
        :func:`kseg.evaluation.reassemble_slices` and kept in memory, already preprocessed
        for the model; masks stay on their stored grid and slice-wise probabilities are
        resized back to it before scoring, exactly as :func:`kseg.evaluation.evaluate_slices`
        scores the test set.

        Args:
            dataset: unbatched per-slice TFDS examples (a validation split).
            preprocess: ``example -> model input (h, w, C)``, as for ``evaluate_slices``.
            **kwargs: the constructor's keyword arguments.

        Example:
            >>> validation = VolumeValidation.from_slices(
            ...     tfds.load("chaos/ct", split="fold1"), preprocess=prep)  # doctest: +SKIP
        """
        return cls(list(reassemble_slices(dataset, preprocess=preprocess)), **kwargs)

    def _cases(self):
        for patient_id, image, label, spacing in self.volumes:
            image, label = np.asarray(image), np.asarray(label)
            if label.ndim == image.ndim and label.shape[-1] == 1:
                label = label[..., 0]
            prediction = self._predict(image, label.shape[-2:])
            if not np.all(np.isfinite(prediction)):
                raise _NonFinitePrediction(patient_id, prediction)
            prediction = self._probabilities(patient_id, prediction)
            yield patient_id, label, prediction, spacing

    def _probabilities(self, patient_id, prediction: np.ndarray) -> np.ndarray:
        if self.from_logits:
            logits = prediction.astype(np.float32)
            if logits.shape[-1] == 1:
                return 1.0 / (1.0 + np.exp(-logits))
            shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
            return shifted / shifted.sum(axis=-1, keepdims=True)
        low, high = float(prediction.min()), float(prediction.max())
        if low < -1e-3 or high > 1 + 1e-3:
            raise ValueError(
                f"VolumeValidation: the prediction for patient {patient_id!r} spans "
                f"[{low:.3g}, {high:.3g}], not probabilities in [0, 1]: a model that outputs "
                "logits (activation=None) needs VolumeValidation(..., from_logits=True), or "
                f"its whole-volume scores would threshold logits at {self.threshold}"
            )
        return prediction

    def evaluate(self) -> PatientTable:
        """Predict and score every validation volume with the current weights."""
        return evaluate_volumes(
            self._cases(),
            metrics=self.metrics,
            labels=self.labels,
            threshold=self.threshold,
            postprocess=self.postprocess,
            progress=self.progress,
            warn_empty=False,  # warned once, when the volumes were given
        )

    def _logs_from(self, table: PatientTable) -> dict[str, float]:
        logs = {}
        for metric in self.metrics:
            columns = metric_columns(metric, self.labels)
            per_class = np.stack([table.column(column) for column in columns])
            if self.labels is not None:
                for column, values in zip(columns, per_class, strict=True):
                    logs[f"val_volume_{column}"] = _mean_ignoring_nan(values)
            patient_means = _mean_ignoring_nan(per_class, axis=0)
            logs[f"val_volume_{metric}"] = _mean_ignoring_nan(patient_means)
            if self.log_per_patient:
                for patient_id, value in zip(table.patient_ids, patient_means, strict=True):
                    logs[f"val_volume_{metric}/{patient_id}"] = float(value)
        return logs

    def _nan_logs(self) -> dict[str, float]:
        """The keys of :meth:`_logs_from`, every value NaN."""
        logs = {}
        for metric in self.metrics:
            if self.labels is not None:
                for column in metric_columns(metric, self.labels):
                    logs[f"val_volume_{column}"] = math.nan
            logs[f"val_volume_{metric}"] = math.nan
            if self.log_per_patient:
                for patient_id, *_ in self.volumes:
                    logs[f"val_volume_{metric}/{patient_id}"] = math.nan
        return logs

    def _agreed(self, logs: dict[str, float]) -> dict[str, float]:
        """Under a multi-worker strategy, the chief's scores on every worker.

        Every worker scores the same volumes with the same weights; taking the chief's
        numbers makes sure the checkpoint, the learning-rate schedule and early stopping
        decide the same on all of them even where floating point differs."""
        keys = list(logs)  # the same order on every worker: the same code wrote them
        values = broadcast_from_chief([logs[key] for key in keys], strategy_of(self.model))
        return dict(zip(keys, values, strict=True))

    def _due(self, epoch: int) -> bool:
        return not self._latest_logs or (epoch + 1) % self.every == 0

    def on_train_begin(self, logs=None):
        self._latest_logs = {}
        self._replicated_call = None
        self._final_output = None
        kind = output_kind(self.model)
        if kind is not None and kind[0] != self.from_logits:
            # before a whole epoch trains: logits would be refused at the first validation,
            # probabilities read as logits would score every pixel foreground, silently
            logits, reason = kind
            raise ValueError(
                f"VolumeValidation: the model outputs logits ({reason}): a model that "
                "outputs logits (activation=None) needs VolumeValidation(..., "
                f"from_logits=True), or its whole-volume scores would threshold logits at "
                f"{self.threshold}" if logits else
                f"VolumeValidation(from_logits=True): the model outputs probabilities "
                f"({reason}), which it would pass through a sigmoid or softmax again (a "
                "sigmoid's output then lies in [0.5, 0.73]: every pixel foreground); drop "
                "from_logits=True, or build the model with activation=None"
            )  # fmt: skip
        self._check_images_fit()

    def _check_images_fit(self) -> None:
        """Refuse, before an epoch trains, a validation image the model cannot take."""
        inputs = getattr(self.model, "inputs", None)
        if not inputs or len(inputs) != 1:
            return
        expected = tuple(inputs[0].shape)
        spatial_dims, channels = len(expected) - 2, expected[-1]
        for patient_id, image, *_ in self.volumes:
            shape = tuple(np.shape(image))
            image_dims = len(shape) - 1
            fits = image_dims == spatial_dims or (spatial_dims == 2 and image_dims == 3)
            if fits and (channels is None or shape[-1] == channels):
                continue
            hint = (
                "; add the channel axis (image[..., None])"
                if channels == 1 and image_dims in (spatial_dims - 1, spatial_dims)
                else ""
            )
            raise ValueError(
                f"VolumeValidation: patient {patient_id!r}: validation image {shape} fits "
                f"neither the model's input {expected} (the same spatial axes and "
                f"{channels} channel(s) last) nor slice-wise prediction of a 2D model{hint}"
            )

    def on_epoch_end(self, epoch, logs=None):
        if logs is None:
            return
        if self._due(epoch):
            try:
                table = self.evaluate()
            except _NonFinitePrediction as diverged:
                # A diverged model (NaN weights) segments nothing: its scores are NaN, as
                # Keras logs a NaN val_loss, so fit goes on and checkpoints, early stopping
                # and Keras Tuner (best finite epoch; a trial NaN throughout is invalid) keep
                # the earlier epochs instead of losing the whole training or trial.
                warnings.warn(
                    f"VolumeValidation: epoch {epoch + 1}: the model predicts "
                    f"{diverged.count} NaN or infinite values of {diverged.size} for patient "
                    f"{diverged.patient_id!r} (diverged training?); its val_volume_* scores "
                    "are logged as NaN",
                    RuntimeWarning,
                    stacklevel=2,
                )
                self._latest_logs = self._agreed(self._nan_logs())
            else:
                self.history[epoch] = table
                self._latest_logs = self._agreed(self._logs_from(table))
        logs.update(self._latest_logs)
        if self.patch_metric in logs and "val_volume_dice" in self._latest_logs:
            logs["val_patch_volume_gap"] = float(logs[self.patch_metric]) - float(
                self._latest_logs["val_volume_dice"]
            )


class BestModelCheckpoint(keras.callbacks.Callback):
    """Keep the best model by a monitored score, written atomically and resumable.

    Unlike ``keras.callbacks.ModelCheckpoint``, the ``.keras`` file is written to a temporary
    file beside the target, flushed to disk and renamed over it, so a crash during saving
    never leaves a truncated best model. The score travels inside the model file (an entry
    ``kseg_checkpoint.json`` of the ``.keras`` archive, which Keras ignores when loading), so
    the one rename that replaces the model also replaces its score; ``<filepath>.json`` is a
    copy for people and scripts. A run resumed after a crash (:class:`AtomicBackupAndRestore`,
    or ``fit`` with ``initial_epoch > 0``) takes its best from the model file and only replaces
    it with a better one. A ``fit`` that starts at epoch 0 is a new run and starts from no
    best.

    When a ``fit`` starts, temporary files of killed saves are removed, and a ``.json`` copy
    that does not match the model file (a kill between the two writes, or an unreadable
    copy, which is warned about) is rewritten from it. A ``.keras`` file from an older kseg,
    without the entry, is paired with its ``.json`` as before; an unreadable ``.json`` beside
    it, or an unreadable model file, raises :class:`kseg.errors.UnreadableFileError`.

    List it after :class:`VolumeValidation` when monitoring ``val_volume_*`` keys.

    Args:
        filepath: the ``.keras`` file of the best model.
        monitor: log key to compare, e.g. ``"val_volume_dice"``.
        mode: ``"max"`` (scores) or ``"min"`` (losses, distances); one that contradicts a
            monitor kseg knows (``"max"`` for ``val_loss``, ``"min"`` for a Dice) is a
            ``ValueError``: the best model would be the worst epoch.

    Attributes:
        best: the best value so far (``None`` before the first finite value).
        best_epoch: the 0-based epoch it came from.

    Example:
        >>> model.fit(train, epochs=50, validation_data=val, callbacks=[
        ...     VolumeValidation.from_slices(val_slices, preprocess=prep),
        ...     BestModelCheckpoint("run/best.keras", monitor="val_volume_dice"),
        ...     AtomicBackupAndRestore("run/backup")])  # doctest: +SKIP
    """

    def __init__(self, filepath, *, monitor: str = "val_volume_dice", mode: str = "max"):
        super().__init__()
        self.filepath = os.fspath(filepath)
        if not self.filepath.endswith(".keras"):
            raise ValueError(f"filepath must end in .keras, got {self.filepath!r}")
        _check_mode(monitor, mode)
        self.monitor = monitor
        self.mode = mode
        self.state_path = self.filepath + ".json"
        self.best = None
        self.best_epoch = None
        self._first_epoch_seen = False
        self._writes = True

    def on_train_begin(self, logs=None):
        self._first_epoch_seen = False
        # under a multi-worker strategy only the chief writes; the others keep the same
        # best (their logs are the chief's, see VolumeValidation) and write nothing
        self._writes = is_chief(strategy_of(self.model))
        if self._writes:
            remove_stale_temporaries(self.filepath)
            remove_stale_temporaries(self.state_path)

    def on_epoch_begin(self, epoch, logs=None):
        if self._first_epoch_seen:
            return
        self._first_epoch_seen = True
        self.best, self.best_epoch = None, None
        record = self._saved_record()
        if (
            epoch > 0
            and record is not None
            and record["monitor"] == self.monitor
            and record["mode"] == self.mode
        ):
            self.best, self.best_epoch = record["best"], record["epoch"]

    def _saved_record(self) -> dict | None:
        """The record of the saved model, with ``<filepath>.json`` made to match it."""
        if not os.path.exists(self.filepath):
            return None
        embedded = _read_embedded_record(self.filepath)
        try:
            copy = _read_record(self.state_path) if os.path.exists(self.state_path) else None
        except UnreadableFileError as error:
            if embedded is None:
                raise
            warnings.warn(
                f"{error}; rewritten from the score inside {self.filepath}",
                CheckpointRecordWarning,
                stacklevel=2,
            )
            copy = None
        if embedded is None:  # written by an older kseg: the .json copy is all there is
            return copy
        if copy != embedded and self._writes:
            _write_json_atomically(self.state_path, embedded)
        return embedded

    def _improves(self, value: float) -> bool:
        if not math.isfinite(value):
            return False
        if self.best is None:
            return True
        return value > self.best if self.mode == "max" else value < self.best

    def on_epoch_end(self, epoch, logs=None):
        if not logs or self.monitor not in logs:
            warnings.warn(
                f"BestModelCheckpoint: {self.monitor!r} is not in the logs of epoch {epoch} "
                f"(keys: {sorted(logs or {})}); nothing saved",
                stacklevel=2,
            )
            return
        value = float(logs[self.monitor])
        if not self._improves(value):
            return
        record = {"monitor": self.monitor, "mode": self.mode, "best": value, "epoch": epoch}
        if not self._writes:
            self.best, self.best_epoch = value, epoch
            return
        with atomic_output(self.filepath) as temporary:
            self.model.save(temporary)
            with zipfile.ZipFile(temporary, "a") as archive:
                archive.writestr(_CHECKPOINT_ENTRY, json.dumps(record))
        self.best, self.best_epoch = value, epoch
        _write_json_atomically(self.state_path, record)


class _ChiefStopsAll(keras.callbacks.Callback):
    """Under a multi-worker strategy, every worker stops training exactly when the chief does.

    A worker that stops on its own leaves the others waiting in their next all-reduce for
    ever; a time budget measured on each worker's clock would do that. After every batch
    and epoch the chief's ``model.stop_training`` is handed to all workers (one small
    all-reduce); on one process this callback does nothing.
    """

    def on_train_begin(self, logs=None):
        self._several_workers = num_workers(strategy_of(self.model)) > 1

    def _agree(self) -> None:
        if self._several_workers:
            (chief_stops,) = broadcast_from_chief(
                [float(bool(self.model.stop_training))], strategy_of(self.model)
            )
            self.model.stop_training = bool(chief_stops)

    def on_train_batch_end(self, batch, logs=None):
        self._agree()

    def on_epoch_end(self, epoch, logs=None):
        self._agree()


class CheckpointRecordWarning(UserWarning):
    """The ``.json`` copy of a best model's score was unreadable and has been rewritten."""


# the entry of a .keras archive that holds the score of the model in it
_CHECKPOINT_ENTRY = "kseg_checkpoint.json"


def _validated_record(path, record) -> dict:
    try:
        return {
            "monitor": str(record["monitor"]),
            "mode": str(record["mode"]),
            "best": float(record["best"]),
            "epoch": int(record["epoch"]),
        }
    except (KeyError, TypeError, ValueError) as error:
        raise UnreadableFileError(
            path, f"is not a best-model score record (monitor, mode, best, epoch): {error!r}"
        ) from error


def _read_record(path) -> dict:
    try:
        with open(path) as handle:
            record = json.load(handle)
    except (ValueError, UnicodeDecodeError) as error:
        raise UnreadableFileError(path, f"is not valid JSON ({error})") from error
    return _validated_record(path, record)


def _read_embedded_record(path) -> dict | None:
    try:
        with zipfile.ZipFile(path) as archive:
            if _CHECKPOINT_ENTRY not in archive.namelist():
                return None
            content = archive.read(_CHECKPOINT_ENTRY)
        record = json.loads(content)
    except (zipfile.BadZipFile, ValueError, UnicodeDecodeError) as error:
        raise UnreadableFileError(
            path,
            f"is not a readable .keras model with its score ({error}); move it away to start "
            "a new best model",
        ) from error
    return _validated_record(path, record)


def _write_json_atomically(path: str, content: dict) -> None:
    with atomic_output(path) as temporary, open(temporary, "w") as stream:
        json.dump(content, stream)


def training_callbacks(
    output_dir,
    validation: VolumeValidation | None,
    *,
    monitor: str = "val_volume_dice",
    mode: str = "max",
    reduce_lr_patience: int | None = 4,
    max_minutes: float | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> list[keras.callbacks.Callback]:
    """The callbacks of a trustworthy, resumable run, in the order that makes them work.

    1. ``validation`` (whole-volume scores in the logs, so it must come first); ``None``
       when ``monitor`` is a Keras metric already in the logs, e.g. ``"val_dice"`` for 2D
       images that are whole cases (radiographs), where per-batch validation is per case;
    2. :class:`BestModelCheckpoint` to ``output_dir/best.keras`` by ``monitor``;
    3. :class:`ResumableReduceLROnPlateau` on ``monitor`` (unless ``reduce_lr_patience`` is
       None), its patience count backed up with the weights;
    4. :class:`kseg.training.TimeBudget` of ``max_minutes`` (when given): after the
       validation and the checkpoint, so the end-of-epoch time it measures holds them; it
       stops mid-epoch when one more batch and the validation would pass the budget, and
       the budget spans a resumed run (its used time is backed up with the weights); under
       a multi-worker strategy the chief's clock decides for every worker;
    5. :class:`ResumableCSVLogger` to ``output_dir/history.csv`` (a resumed run continues
       it, each epoch once);
    6. :class:`AtomicBackupAndRestore` in ``output_dir/backup``: run the same ``fit`` again
       after a crash (or a ``kill -9`` at any moment) and training resumes from the last
       finished epoch, best score (and time used) included.

    Every file is written atomically, and temporary files of killed writes are removed when
    training starts.

    The same list serves every worker of a multi-worker ``tf.distribute`` strategy (see
    :mod:`kseg.training.distribute`): only the chief writes the run folder, every worker
    takes the chief's whole-volume scores and restores the chief's backup, so
    ``output_dir`` must be on storage all workers read.

    Args:
        output_dir: folder of the run (created if missing).
        validation: the :class:`VolumeValidation` writing ``monitor``, or ``None``.
        monitor: log key the checkpoint and the learning-rate schedule follow.
        mode: ``"max"`` or ``"min"``, as the monitored score needs (checked as
            :class:`BestModelCheckpoint` checks it).
        reduce_lr_patience: epochs without improvement before halving the learning rate.
        max_minutes: training time budget in minutes, or ``None`` for none.
        clock: the time source of the budget (seconds; ``time.monotonic``).

    Raises:
        kseg.errors.LayoutError: ``output_dir`` (or a folder above it) is a file.
        TypeError: ``output_dir`` is not a path, or ``validation`` is neither a Keras
            callback nor ``None``.
        ValueError: ``monitor`` is not a non-empty log key, ``mode`` is not ``"max"`` or
            ``"min"`` or contradicts ``monitor``, ``reduce_lr_patience`` is not ``None`` or
            an integer >= 0, or ``max_minutes`` is not ``None`` or a positive finite number
            (all checked before anything is created).

    Example:
        >>> import os
        >>> import tempfile
        >>> image = np.zeros((8, 8, 8, 1), np.float32)
        >>> label = np.zeros((8, 8, 8), np.uint8)
        >>> label[2:5, 2:5, 2:5] = 1
        >>> validation = VolumeValidation([("p1", image, label, (1.0, 1.0, 1.0))])
        >>> run_dir = os.path.join(tempfile.mkdtemp(), "liver")  # e.g. "runs/liver"
        >>> callbacks = training_callbacks(run_dir, validation)
        >>> [type(callback).__name__ for callback in callbacks]  # doctest: +NORMALIZE_WHITESPACE
        ['VolumeValidation', 'BestModelCheckpoint', 'ResumableReduceLROnPlateau',
         'ResumableCSVLogger', 'AtomicBackupAndRestore']
        >>> model.fit(train, validation_data=val, epochs=50, callbacks=callbacks)  # doctest: +SKIP

        With a 2D model, the validation volumes come from a slice split:
        ``VolumeValidation.from_slices(val_slices, preprocess=prep)``.
    """
    try:
        output_dir = os.fspath(output_dir)
    except TypeError:
        raise TypeError(f"output_dir must be a folder path, got {output_dir!r}") from None
    if validation is not None and not isinstance(validation, keras.callbacks.Callback):
        raise TypeError(
            "validation must be a VolumeValidation (or another Keras callback writing "
            f"{monitor!r}) or None, got {type(validation).__name__}"
        )
    if not isinstance(monitor, str) or not monitor:
        raise ValueError(
            f"monitor must be a non-empty log key such as 'val_volume_dice', got {monitor!r}"
        )
    _check_mode(monitor, mode)
    if reduce_lr_patience is not None and (
        isinstance(reduce_lr_patience, bool)
        or not isinstance(reduce_lr_patience, numbers.Integral)
        or reduce_lr_patience < 0
    ):
        raise ValueError(
            f"reduce_lr_patience must be None or an integer >= 0, got {reduce_lr_patience!r}"
        )
    if reduce_lr_patience is not None:
        reduce_lr_patience = int(reduce_lr_patience)  # a numpy integer too
    if max_minutes is not None:
        _checked_minutes(max_minutes, "max_minutes")
        if not callable(clock):
            raise TypeError(f"clock must be callable (such as time.monotonic), got {clock!r}")
    if os.path.exists(output_dir) and not os.path.isdir(output_dir):
        raise LayoutError(output_dir, "is a file; output_dir must be the folder of the run")
    try:
        os.makedirs(output_dir, exist_ok=True)
    except (FileExistsError, NotADirectoryError) as error:
        blocking = next(
            (
                parent
                for parent in pathlib.Path(output_dir).absolute().parents
                if parent.exists() and not parent.is_dir()
            ),
            error.filename,
        )
        raise LayoutError(
            output_dir, f"cannot be created as the folder of the run: {blocking} is a file"
        ) from error
    callbacks = [] if validation is None else [validation]
    callbacks.append(
        BestModelCheckpoint(os.path.join(output_dir, "best.keras"), monitor=monitor, mode=mode)
    )
    stateful = {}
    if reduce_lr_patience is not None:
        stateful["reduce_lr"] = ResumableReduceLROnPlateau(
            monitor=monitor, mode=mode, factor=0.5, patience=reduce_lr_patience
        )
        callbacks.append(stateful["reduce_lr"])
    if max_minutes is not None:
        stateful["time_budget"] = TimeBudget(max_minutes, clock=clock)
        callbacks += [stateful["time_budget"], _ChiefStopsAll()]
    callbacks += [
        ResumableCSVLogger(os.path.join(output_dir, "history.csv")),
        AtomicBackupAndRestore(os.path.join(output_dir, "backup"), stateful=stateful),
    ]
    return callbacks
