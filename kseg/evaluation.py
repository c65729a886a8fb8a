"""Per-patient evaluation: one row of scores per patient, computed on the whole volume.

A paper reports how well each patient's organ is segmented, then the mean, median and
spread over patients. Averaging per-slice scores instead weights every slice the same,
however much organ it holds, and scores empty slices at all; it gives a different (usually
flattering) number. :func:`evaluate_volumes` scores whole volumes; :func:`evaluate_slices`
first reassembles a per-slice TFDS dataset into volumes, checking that no slice is missing
or repeated; :func:`evaluate_on_original_grid` segments preprocessed 3D volumes and scores
them on the grid of the label files they came from. :func:`choose_postprocessing` makes
nnU-Net's validation-driven choice of keeping only the largest component per class.

A patient whose reference holds no voxel of a scored structure has no segmentation to
measure: Dice and IoU are 1.0 when the prediction is empty too and 0.0 for a single false
positive voxel, distances are ``nan`` or ``inf``. Such scores are never silent: every table
has a ``reference_empty`` flag column per structure, the summary counts the flagged
patients, and the evaluation raises one :class:`EmptyReferenceWarning` naming them.

:class:`PatientTable` needs only numpy; Keras (for the metrics) and TensorFlow (for datasets)
are imported by the functions that use them, so reading a results table stays light.
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import math
import os
import pathlib
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence

import numpy as np
from tqdm.auto import tqdm

from kseg._files import atomic_output
from kseg.data.examples import SLICE_FEATURES
from kseg.errors import AlignmentError, MaskError, UnreadableFileError

DEFAULT_METRICS = ("dice", "iou", "precision", "recall", "specificity")
OVERLAP_METRICS = ("dice", "iou", "precision", "recall", "specificity", "accuracy")
SPACING_METRICS = ("hd95", "hausdorff", "assd", "volume_difference", "ravd")
SUMMARY_STATISTICS = ("mean", "median", "std", "count")
REFERENCE_EMPTY = "reference_empty"


class EmptyReferenceWarning(UserWarning):
    """Some evaluated references have no voxel of a scored structure.

    Their overlap scores follow the empty-mask conventions of :mod:`kseg.metrics` (Dice 1.0
    for an empty prediction, 0.0 for any false positive) and measure no segmentation; the
    table marks them in its ``reference_empty`` columns. Silence it where that is expected::

        warnings.filterwarnings("ignore", category=EmptyReferenceWarning)
    """


def _is_flag(value) -> bool:
    return isinstance(value, (bool, np.bool_))


class PatientTable:
    """Scores of several patients, one row per patient, with summary statistics.

    A row holds floats (metric scores) and booleans (flags such as ``reference_empty``,
    which :func:`evaluate_volumes` sets for a structure absent from the reference). Flags
    are kept apart from the metrics: :attr:`metric_names` lists only scores,
    :attr:`flag_names` the flags, and :meth:`summary` counts the rows each flag marks.

    Args:
        rows: dicts holding ``"patient_id"``, one float per metric and one bool per flag. A
            metric missing from a row reads as ``nan``, a missing flag as False. Patient ids
            must be unique.

    Example:
        >>> table = PatientTable([{"patient_id": "1", "dice": 0.9}, {"patient_id": "2",
        ...                       "dice": 0.7}])
        >>> table.summary()["dice"]["mean"]
        0.8
    """

    def __init__(self, rows: Iterable[Mapping] = ()):
        self._rows: list[dict] = []
        self._metric_names: list[str] = []
        self._flag_names: list[str] = []
        for row in rows:
            row = dict(row)
            if "patient_id" not in row:
                raise ValueError(f"every row needs a 'patient_id', got keys {sorted(row)}")
            self.add(row.pop("patient_id"), row)

    def add(self, patient_id, scores: Mapping[str, float | bool]) -> None:
        """Append one patient's scores (floats) and flags (bools)."""
        patient_id = str(patient_id)
        if patient_id in self.patient_ids:
            raise ValueError(f"patient {patient_id!r} is already in the table")
        for name, value in scores.items():
            kind, other = (
                (self._flag_names, self._metric_names)
                if _is_flag(value)
                else (self._metric_names, self._flag_names)
            )
            if name in other:
                raise ValueError(
                    f"patient {patient_id!r}: column {name!r} holds scores in some rows and "
                    "True/False flags in others"
                )
            if name not in kind:
                kind.append(name)
        self._rows.append(
            {
                "patient_id": patient_id,
                **{
                    name: bool(value) if _is_flag(value) else float(value)
                    for name, value in scores.items()
                },
            }
        )

    @property
    def metric_names(self) -> list[str]:
        return list(self._metric_names)

    @property
    def flag_names(self) -> list[str]:
        """The boolean columns, e.g. ``["reference_empty"]`` or ``["reference_empty_liver"]``."""
        return list(self._flag_names)

    @property
    def patient_ids(self) -> list[str]:
        return [row["patient_id"] for row in self._rows]

    @property
    def rows(self) -> list[dict]:
        """The rows as dicts, every metric present (``nan`` where a row had none), then
        every flag (False where a row had none)."""
        return [
            {
                "patient_id": row["patient_id"],
                **{n: row.get(n, math.nan) for n in self._metric_names},
                **{n: row.get(n, False) for n in self._flag_names},
            }
            for row in self._rows
        ]

    @property
    def empty_references(self) -> list[str]:
        """Patient ids of the rows with any ``reference_empty`` flag set, in row order."""
        flags = [name for name in self._flag_names if name.startswith(REFERENCE_EMPTY)]
        return [row["patient_id"] for row in self._rows if any(row.get(n, False) for n in flags)]

    def __len__(self) -> int:
        return len(self._rows)

    def column(self, metric: str) -> np.ndarray:
        """One column over all patients, in row order: float64 for a metric, bool for a flag."""
        if metric in self._flag_names:
            return np.array([row.get(metric, False) for row in self._rows], dtype=bool)
        if metric not in self._metric_names:
            raise KeyError(
                f"no metric {metric!r} in the table; it has {self._metric_names}"
                + (f" and the flags {self._flag_names}" if self._flag_names else "")
            )
        return np.array([row.get(metric, math.nan) for row in self._rows], dtype=np.float64)

    def summary(self) -> dict[str, dict[str, float]]:
        """Mean, median, standard deviation and count of each metric, leaving out ``nan``.

        ``nan`` marks an undefined score (for example a distance when both masks are empty)
        and is excluded; ``count`` says how many patients remain. ``inf`` (a distance to an
        empty prediction) is kept, so it shows in the mean. ``std`` is the sample standard
        deviation (divisor ``count - 1``), as reported in papers' "mean ± SD"; it is ``nan``
        for fewer than two values and when a value is infinite (no finite spread).

        Each flag (e.g. ``reference_empty``) has an entry too: ``count`` is the number of
        patients it marks and ``mean`` their share; ``median`` and ``std`` are ``nan``.
        """
        summary = {}
        for metric in self._metric_names:
            values = self.column(metric)
            values = values[~np.isnan(values)]
            count = values.size
            summary[metric] = {
                "mean": float(np.mean(values)) if count else math.nan,
                "median": float(np.median(values)) if count else math.nan,
                "std": float(np.std(values, ddof=1))
                if count > 1 and np.isfinite(values).all() else math.nan,
                "count": count,
            }
        for flag in self._flag_names:
            marked = self.column(flag)
            summary[flag] = {
                "mean": float(marked.mean()) if marked.size else math.nan,
                "median": math.nan,
                "std": math.nan,
                "count": int(marked.sum()),
            }
        return summary

    def to_csv(self, path: os.PathLike | str) -> None:
        """Write one line per patient (no summary lines), atomically.

        The file is written beside ``path`` under a temporary name and moved into place, so
        a crash never leaves a half-written table. Floats are written with ``repr`` and read
        back exactly by :meth:`from_csv`; flags follow the metrics as ``True`` / ``False``.
        The file is UTF-8 whatever the locale.
        """
        # UTF-8 whatever the locale (a Windows cp1252, a POSIX locale's ASCII), as
        # from_csv reads it: patient ids are file and folder names, in any script
        with atomic_output(path) as temporary, open(
            temporary, "w", newline="", encoding="utf-8"
        ) as handle:
            writer = csv.writer(handle)
            writer.writerow(["patient_id", *self._metric_names, *self._flag_names])
            for row in self.rows:
                writer.writerow(
                    [
                        row["patient_id"],
                        *(repr(row[name]) for name in self._metric_names),
                        *(str(row[name]) for name in self._flag_names),
                    ]
                )

    @classmethod
    def from_csv(cls, path: os.PathLike | str) -> PatientTable:
        """Read a table written by :meth:`to_csv` (or any CSV with a ``patient_id`` column).

        Cells reading ``True`` or ``False`` are flags, every other cell a float.
        """
        # utf-8-sig: a table saved by Excel ("CSV UTF-8") starts with a byte-order mark
        with open(path, newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            if not reader.fieldnames or reader.fieldnames[0] != "patient_id":
                raise UnreadableFileError(
                    path, f"expected a header starting with 'patient_id', got {reader.fieldnames}"
                )
            table = cls()
            for line_number, row in enumerate(reader, start=2):
                patient_id = row.pop("patient_id")
                try:
                    scores = {
                        name: value == "True" if value in ("True", "False") else float(value)
                        for name, value in row.items()
                    }
                    table.add(patient_id, scores)
                except (TypeError, ValueError) as error:
                    raise UnreadableFileError(
                        path, f"line {line_number} (patient {patient_id!r}): {error}"
                    ) from error
        return table

    def __str__(self) -> str:
        """The rows, then mean, median, std and count per column, then a note on flags.

        A flag column shows ``yes`` / ``no`` per patient and, on the ``count`` line, the
        number of patients it marks; a table with empty references ends with a line that
        names them.
        """
        header = ["patient_id", *self._metric_names, *self._flag_names]
        body = [
            [
                row["patient_id"],
                *(f"{row[name]:.4f}" for name in self._metric_names),
                *("yes" if row[name] else "no" for name in self._flag_names),
            ]
            for row in self.rows
        ]
        summary = self.summary()
        footer = [
            [
                statistic,
                *(
                    str(summary[name][statistic])
                    if statistic == "count"
                    else f"{summary[name][statistic]:.4f}"
                    for name in self._metric_names
                ),
                *(
                    str(summary[name]["count"]) if statistic == "count" else ""
                    for name in self._flag_names
                ),
            ]
            for statistic in SUMMARY_STATISTICS
        ]
        widths = [
            max(len(line[i]) for line in [header, *body, *footer]) for i in range(len(header))
        ]

        def render(line):
            return "  ".join(
                cell.ljust(width) if i == 0 else cell.rjust(width)
                for i, (cell, width) in enumerate(zip(line, widths, strict=True))
            )

        rule = "  ".join("-" * width for width in widths)
        lines = [render(header), rule, *map(render, body), rule, *map(render, footer)]
        empty = self.empty_references
        if empty:
            lines.append(
                f"reference empty for {len(empty)} of {len(self)} patients "
                f"({_listed(empty)}): their scores follow the empty-mask conventions"
            )
        return "\n".join(lines)

    def __repr__(self) -> str:
        flags = f", flags={self._flag_names}" if self._flag_names else ""
        return f"PatientTable({len(self)} patients, metrics={self._metric_names}{flags})"


def _listed(patient_ids: Sequence[str], limit: int = 10) -> str:
    shown = ", ".join(patient_ids[:limit])
    return shown + (f" and {len(patient_ids) - limit} more" if len(patient_ids) > limit else "")


def _metric_functions() -> dict[str, Callable]:
    from kseg import metrics

    return {
        "dice": metrics.dice,
        "iou": metrics.iou,
        "precision": metrics.precision,
        "recall": metrics.recall,
        "specificity": metrics.specificity,
        "accuracy": metrics.accuracy,
        "hd95": metrics.hd95,
        "hausdorff": metrics.hausdorff_distance,
        "assd": metrics.average_surface_distance,
        "volume_difference": metrics.volume_difference,
        "ravd": metrics.relative_absolute_volume_difference,
    }


def labels_from_probabilities(probabilities: np.ndarray, threshold: float) -> np.ndarray:
    """The label map kseg scores and writes: foreground where the one channel is
    ``>= threshold``, the argmax over several channels (evaluation, ``kseg predict``, the
    recipes' case files and the studies all use this one rule)."""
    if probabilities.shape[-1] == 1:
        return probabilities[..., 0] >= threshold
    return np.argmax(probabilities, axis=-1)


def _label_map(
    patient_id, y_pred: np.ndarray, reference_shape, threshold: float, *, labelled: bool = False
) -> np.ndarray:
    """Predicted labels from probabilities ``(*spatial, C)`` or from a label map.

    With ``labelled`` (structures given by label value), a float map holding only whole
    numbers is a label map stored as floats (nibabel's ``get_fdata()`` of a label NIfTI)
    and is used as it is: thresholding it would merge every label into 1. So is such a map,
    or an integer one, with a trailing axis of one (a label NIfTI of shape ``(x, y, z, 1)``):
    one channel of labels, not a sigmoid's probabilities."""
    if (
        labelled
        and y_pred.ndim == len(reference_shape) + 1
        and y_pred.shape[-1] == 1
        and (
            y_pred.dtype.kind in "biu"
            or (y_pred.dtype.kind == "f" and bool(np.all(y_pred == np.round(y_pred))))
        )
    ):
        y_pred = y_pred[..., 0]
    if y_pred.ndim == len(reference_shape) + 1:
        labels = labels_from_probabilities(y_pred, threshold)
    elif y_pred.ndim == len(reference_shape):
        labels = y_pred
        if np.issubdtype(y_pred.dtype, np.floating):
            whole = labelled and bool(np.all(y_pred == np.round(y_pred)))
            labels = y_pred.astype(np.int64) if whole else y_pred >= threshold
    else:
        labels = y_pred
    if labels.shape != tuple(reference_shape):
        raise AlignmentError(
            None,
            f"patient {patient_id!r}: prediction {y_pred.shape} does not match the reference "
            f"label map {tuple(reference_shape)}; give probabilities (*spatial, C) or labels "
            "(*spatial) on the reference grid",
        )
    return labels


def _normalise_labels(labels) -> dict[str, int] | None:
    if labels is None:
        return None
    if isinstance(labels, Mapping):
        return {str(name): int(index) for name, index in labels.items()}
    return {str(int(index)): int(index) for index in labels}


def metric_columns(metric: str, labels: Mapping[str, int] | Iterable[int] | None = None):
    """The table columns :func:`evaluate_volumes` writes for ``metric``.

    The flag columns follow the same naming: ``metric_columns(REFERENCE_EMPTY, labels)``
    names the ``reference_empty`` columns.

    Example:
        >>> metric_columns("dice", {"liver": 1, "spleen": 2})
        ['dice_liver', 'dice_spleen']
    """
    names = _normalise_labels(labels)
    return [metric] if names is None else [f"{metric}_{name}" for name in names]


def _postprocessed(patient_id, predicted: np.ndarray, postprocess) -> np.ndarray:
    """``postprocess(predicted)``, checked to keep the grid (``predicted`` without one)."""
    if postprocess is None:
        return predicted
    processed = np.asarray(postprocess(predicted))
    if processed.shape != predicted.shape:
        raise ValueError(
            f"patient {patient_id!r}: postprocess returned shape {processed.shape} for a "
            f"label map of shape {predicted.shape}; it must keep the grid"
        )
    return processed


def refuse_fractional_reference(patient_id, reference: np.ndarray, *, prefix: str = "") -> None:
    """A :class:`~kseg.errors.MaskError` naming the patient when a float reference holds
    values that are not whole numbers. Scoring compares the reference with each label
    value, so these voxels would belong to no structure, silently: a mask resampled by
    interpolation (0.5 on its edge) or a label file read through a float scale (0.99999994
    for 1) would score against a smaller, or empty, reference. ``prefix`` starts the
    message (the caller's name)."""
    if reference.dtype.kind != "f" or np.all(reference == np.round(reference)):
        return
    fractional = np.unique(reference[reference != np.round(reference)])
    raise MaskError(
        None,
        f"{prefix}patient {patient_id!r}: the reference holds {fractional.size} values that "
        f"are not whole numbers ({', '.join(f'{v:.9g}' for v in fractional[:4])}"
        f"{', ...' if fractional.size > 4 else ''}); a reference is a label map: threshold "
        "an interpolated mask (mask >= 0.5) or round labels read through a float scale "
        "(numpy.rint)",
    )


def _score_case(
    patient_id, y_true, y_pred, spacing, metric_names, labels, threshold, functions, postprocess
) -> dict[str, float]:
    y_true = np.asarray(y_true)
    refuse_fractional_reference(patient_id, y_true)
    predicted = _postprocessed(
        patient_id,
        _label_map(patient_id, np.asarray(y_pred), y_true.shape, threshold,
                   labelled=labels is not None),
        postprocess,
    )  # fmt: skip
    if labels is None:
        if y_true.size and (y_true.min() < 0 or y_true.max() > 1):
            raise MaskError(
                None,
                f"patient {patient_id!r}: the reference holds labels "
                f"{np.unique(y_true)[:6].tolist()}; pass labels={{'organ': index, ...}} to "
                "score a multi-class label map",
            )
        # An integer label map of 0/255 (a PNG mask) would score label 1 only: Dice 0.
        given = np.asarray(y_pred)
        if given.shape == y_true.shape and given.dtype.kind in "iu" and given.size and (
            given.min() < 0 or given.max() > 1
        ):
            raise MaskError(
                None,
                f"patient {patient_id!r}: the prediction holds labels "
                f"{np.unique(given)[:6].tolist()} but one binary structure (0/1) is "
                "scored; pass labels={'organ': index, ...} for a multi-class label map, or "
                "give a 0/1 mask (e.g. prediction > 0 for a 0/255 mask)",
            )
        classes = {None: 1}
    else:
        classes = labels
    scores = {}
    for class_name, index in classes.items():
        truth, prediction = y_true == index, predicted == index
        for name in metric_names:
            column = name if class_name is None else f"{name}_{class_name}"
            if name in SPACING_METRICS:
                scores[column] = functions[name](truth, prediction, spacing)
            else:
                scores[column] = functions[name](truth, prediction)
    for class_name, index in classes.items():
        flag = REFERENCE_EMPTY if class_name is None else f"{REFERENCE_EMPTY}_{class_name}"
        scores[flag] = not bool(np.any(y_true == index))
    return scores


def _warn_empty_references(function: str, table: PatientTable) -> None:
    """One :class:`EmptyReferenceWarning` naming every patient (and structure) flagged."""
    flags = [name for name in table.flag_names if name.startswith(REFERENCE_EMPTY)]
    described = []
    for row in table.rows:
        empty = [name for name in flags if row[name]]
        if not empty:
            continue
        structures = [name[len(REFERENCE_EMPTY) + 1 :] for name in empty if name != REFERENCE_EMPTY]
        described.append(
            f"{row['patient_id']}: {', '.join(structures)}" if structures else row["patient_id"]
        )
    if not described:
        return
    shown = "; ".join(described[:10]) + (
        f"; and {len(described) - 10} more" if len(described) > 10 else ""
    )
    warnings.warn(
        f"{function}: the reference is empty for {len(described)} of {len(table)} patients "
        f"({shown}); their scores follow the empty-mask conventions (Dice and IoU 1.0 for an "
        "empty prediction, 0.0 for any false positive) and measure no segmentation. The "
        f"table flags them in its {REFERENCE_EMPTY} columns",
        EmptyReferenceWarning,
        stacklevel=3,
    )


def evaluate_volumes(
    cases: Iterable[tuple],
    *,
    metrics: Sequence[str] = DEFAULT_METRICS,
    labels: Mapping[str, int] | Iterable[int] | None = None,
    threshold: float = 0.5,
    postprocess: Callable[[np.ndarray], np.ndarray] | None = None,
    progress: bool = True,
    warn_empty: bool = True,
) -> PatientTable:
    """Score whole volumes, one table row per patient.

    Args:
        cases: ``(patient_id, y_true, y_pred, spacing)`` tuples. ``y_true`` is the reference
            label map ``(*spatial)`` (``{0, 1}`` for one structure, ``0..C-1`` otherwise).
            ``y_pred`` is on the same grid, either probabilities ``(*spatial, C)`` (one
            channel: foreground where ``>= threshold``; several: argmax) or a label map
            ``(*spatial)`` (integers used as they are, floats thresholded; with ``labels``,
            floats that are all whole numbers, as nibabel's ``get_fdata()`` reads a label
            file, are used as labels). ``spacing`` is
            the voxel size in mm per spatial axis, or the grid's affine, which a sheared
            grid (gantry-tilted CT) needs for exact distances (``None`` gives distances in
            voxels); it is checked whichever metrics are chosen.
        metrics: names from ``dice, iou, precision, recall, specificity, accuracy`` and the
            spacing-aware ``hd95, hausdorff, assd, volume_difference, ravd``
            (:mod:`kseg.metrics`; each keeps its documented empty-mask value).
        labels: for label maps, ``{"liver": 1, "spleen": 2}`` (columns ``dice_liver``, ...)
            or a list of label indices (columns ``dice_1``, ...). ``None`` scores one
            binary structure (columns ``dice``, ...).
        threshold: probability at or above which a one-channel prediction is foreground.
        postprocess: ``label map -> label map`` applied to each predicted label map (after
            thresholding or argmax) before it is scored, e.g.
            :func:`kseg.inference.keep_largest_component`; it must keep the grid.
        progress: show a tqdm bar over the cases.
        warn_empty: raise one :class:`EmptyReferenceWarning` naming the patients whose
            reference lacks a scored structure (False for callers that warned already).

    Returns:
        :class:`PatientTable` with the metric columns and, per structure, a boolean
        ``reference_empty`` column (``reference_empty_<label>`` with ``labels``) that is
        True where the reference holds no voxel of it; :attr:`PatientTable.empty_references`
        lists those patients.

    Raises:
        ValueError: no cases; a case that is not a 4-tuple; a reference or prediction with
            NaN or infinite values; a spacing that is not one finite positive size per axis;
            a patient listed twice; unknown metrics or a threshold outside (0, 1).
        AlignmentError: a prediction off the reference grid.
        MaskError: a reference, or an integer prediction label map, with labels other
            than 0/1 and no ``labels`` given; a float reference with values that are not
            whole numbers (an interpolated mask: threshold it; labels read through a float
            scale: round them).

    Example:
        >>> import numpy as np
        >>> mask = np.zeros((4, 8, 8), np.uint8)
        >>> mask[1:3, 2:6, 2:6] = 1
        >>> probabilities = np.zeros((4, 8, 8, 1), np.float32)  # a model's output
        >>> probabilities[1:3, 2:6, 2:5, 0] = 0.9
        >>> table = evaluate_volumes([("p1", mask, probabilities, (3.0, 1.0, 1.0))],
        ...                          metrics=("dice", "hd95"), progress=False)
        >>> print(table)  # doctest: +NORMALIZE_WHITESPACE
        patient_id    dice    hd95  reference_empty
        ----------  ------  ------  ---------------
        p1          0.8571  1.0000               no
        ----------  ------  ------  ---------------
        mean        0.8571  1.0000
        median      0.8571  1.0000
        std            nan     nan
        count            1       1                0

        ``cases`` may be a generator, so that only one patient's volumes are in memory:
        ``evaluate_volumes(((pid, mask, sliding_window(model, ct[..., None], 96), spacing)
        for pid, ct, mask, spacing in test_cases), metrics=("dice", "hd95", "assd"))``.

    Reference:
        Maier-Hein L, Reinke A, et al. "Metrics reloaded: recommendations for image analysis
        validation". Nature Methods 21:195-212, 2024.
    """
    functions = _metric_functions()
    metric_names = tuple(metrics)
    unknown = [name for name in metric_names if name not in functions]
    if unknown or not metric_names:
        raise ValueError(f"metrics must be names from {sorted(functions)}, got {metric_names}")
    if not 0 < threshold < 1:
        raise ValueError(f"threshold must be a probability in (0, 1), got {threshold!r}")
    if not isinstance(warn_empty, bool):
        raise ValueError(f"warn_empty must be True or False, got {warn_empty!r}")
    class_labels = _normalise_labels(labels)
    table = PatientTable()
    for case in tqdm(cases, desc="evaluating", unit="patient", disable=not progress):
        patient_id, y_true, y_pred, spacing = _checked_case(case)
        table.add(
            patient_id,
            _score_case(
                patient_id,
                y_true,
                y_pred,
                spacing,
                metric_names,
                class_labels,
                threshold,
                functions,
                postprocess,
            ),
        )
    if not len(table):
        raise ValueError("cases is empty: evaluate_volumes needs at least one patient to score")
    if warn_empty:
        _warn_empty_references("evaluate_volumes", table)
    return table


def _checked_case(case) -> tuple:
    """``(patient_id, y_true, y_pred, spacing)`` with the arrays and the spacing checked.

    The spacing is checked whether or not a chosen metric uses it, so that a wrong one is
    found on the first run rather than when a distance metric is added later.
    """
    from kseg.metrics import _voxel_grid

    if isinstance(case, (str, bytes)) or not hasattr(case, "__len__") or len(case) != 4:
        raise ValueError(
            "each item of cases must be a (patient_id, y_true, y_pred, spacing) tuple, got "
            f"{type(case).__name__} of length {len(case) if hasattr(case, '__len__') else '?'}"
        )
    patient_id, y_true, y_pred, spacing = case
    # bfloat16 / float8 (ml_dtypes: a mixed-precision model's output) read as float32, so
    # they are thresholded and checked for NaN as floats, not taken for integer labels
    y_true, y_pred = (
        values.astype(np.float32)
        if values.dtype.kind == "V" and values.dtype.name.startswith(("bfloat16", "float8"))
        else values
        for values in (np.asarray(y_true), np.asarray(y_pred))
    )
    for name, values in (("reference", y_true), ("prediction", y_pred)):
        if values.dtype.kind == "f" and not np.all(np.isfinite(values)):
            bad = int(np.count_nonzero(~np.isfinite(values)))
            raise ValueError(
                f"patient {patient_id!r}: the {name} holds {bad} NaN or infinite values of "
                f"{values.size}; they would be scored as background"
            )
    if spacing is not None:
        try:
            _voxel_grid(spacing, y_true.ndim)
        except ValueError as error:
            raise ValueError(f"patient {patient_id!r}: {error}") from None
    return patient_id, y_true, y_pred, spacing


@dataclasses.dataclass(frozen=True)
class PostprocessingChoice:
    """What :func:`choose_postprocessing` decided, and the validation Dice it decided on.

    Attributes:
        labels: the label values whose largest connected component alone is kept, in the
            order of the structures; empty when no clean-up raised the Dice.
        dice_without: mean validation Dice per Dice column (``"dice"`` for one structure,
            ``"dice_<name>"`` with labels) of the predictions as they are.
        dice_with: the same after keeping only the largest component of that structure.
        connectivity: the neighbourhood the components were found with.
    """

    labels: tuple[int, ...]
    dice_without: dict[str, float]
    dice_with: dict[str, float]
    connectivity: int = 1

    @property
    def postprocess(self) -> Callable[[np.ndarray], np.ndarray] | None:
        """The chosen clean-up as a ``postprocess`` argument, or ``None`` for none."""
        if not self.labels:
            return None
        from kseg.inference import keep_largest_component

        return functools.partial(
            keep_largest_component, labels=self.labels, connectivity=self.connectivity
        )


def choose_postprocessing(
    cases: Iterable[tuple],
    *,
    labels: Mapping[str, int] | Iterable[int] | None = None,
    threshold: float = 0.5,
    connectivity: int = 1,
    warn_empty: bool = True,
) -> PostprocessingChoice:
    """Keep only the largest component of a structure if that raises its validation Dice.

    nnU-Net's rule: for each structure, the validation predictions are scored as they are
    and with all but the largest connected component of that structure removed; the
    clean-up is kept when the mean Dice over patients is strictly higher with it. Cleaning
    one structure turns some of its voxels into background and leaves every other
    structure's voxels alone, so each structure is decided on its own Dice. (nnU-Net also
    tries all foreground classes merged into one region first; kseg decides per structure.)

    Args:
        cases: validation ``(patient_id, y_true, y_pred, spacing)`` tuples, as
            :func:`evaluate_volumes` takes them (e.g. from :func:`predict_on_mask_grid`).
            Each prediction is turned into its label map as it arrives and kept in memory
            with its reference: they are scored once as they are and once per structure.
        labels, threshold: as in :func:`evaluate_volumes`.
        connectivity: as in :func:`kseg.inference.keep_largest_component`.
        warn_empty: as in :func:`evaluate_volumes`.

    Returns:
        :class:`PostprocessingChoice`; its ``postprocess`` goes to :func:`evaluate_volumes`
        or :func:`evaluate_slices` for the test set.

    Example:
        >>> import numpy as np
        >>> mask = np.zeros((1, 8, 8), np.uint8)
        >>> mask[0, 2:6, 2:6] = 1
        >>> probabilities = mask[..., None].astype(np.float32)
        >>> probabilities[0, 7, 7, 0] = 1.0  # one stray voxel away from the structure
        >>> choice = choose_postprocessing([("p1", mask, probabilities, (3.0, 1.0, 1.0))])
        >>> choice.labels, round(choice.dice_without["dice"], 3), choice.dice_with["dice"]
        ((1,), 0.97, 1.0)

        On a 2D model's validation split, then the test split:

        >>> validation = list(predict_on_mask_grid(model, reassemble_slices(  # doctest: +SKIP
        ...     validation_split, preprocess=prep)))
        >>> choice = choose_postprocessing(validation)  # doctest: +SKIP
        >>> table = evaluate_slices(model, test_split, preprocess=prep,  # doctest: +SKIP
        ...                         postprocess=choice.postprocess)

    Reference:
        Isensee F. et al., "nnU-Net: a self-configuring method for deep learning-based
        biomedical image segmentation", Nature Methods 18, 203-211 (2021) (post-processing;
        ``nnunetv2.postprocessing.remove_connected_components.determine_postprocessing``).
    """
    from kseg.inference import keep_largest_component

    labelled = []
    for patient_id, y_true, y_pred, spacing in cases:
        predicted = _label_map(patient_id, np.asarray(y_pred), np.shape(y_true), threshold,
                               labelled=labels is not None)
        labelled.append((patient_id, y_true, predicted, spacing))
    if not labelled:
        raise ValueError("cases must hold at least one validation case")
    structures = {None: 1} if labels is None else _normalise_labels(labels)
    columns = metric_columns("dice", labels)

    def mean_dice(postprocess, warn: bool) -> dict[str, float]:
        table = evaluate_volumes(
            labelled, metrics=("dice",), labels=labels, threshold=threshold,
            postprocess=postprocess, progress=False, warn_empty=warn,
        )  # fmt: skip
        return {column: float(np.mean(table.column(column))) for column in columns}

    dice_without = mean_dice(None, warn_empty)
    dice_with, chosen = {}, []
    for index, column in zip(structures.values(), columns, strict=True):
        cleaned = functools.partial(
            keep_largest_component, labels=[index], connectivity=connectivity
        )
        dice_with[column] = mean_dice(cleaned, False)[column]
        if dice_with[column] > dice_without[column]:
            chosen.append(index)
    return PostprocessingChoice(tuple(chosen), dice_without, dice_with, connectivity)


def _decode(value) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def resize_probabilities(probabilities: np.ndarray, plane_shape) -> np.ndarray:
    """Bring per-slice probabilities ``(Z, h, w, C)`` to the reference plane ``(H, W)``.

    A 2D model usually runs at a smaller in-plane size than the acquisition; scores belong
    on the acquisition grid, so probabilities (not labels) are resized back, bilinearly,
    before thresholding or argmax.
    """
    if probabilities.shape[1:3] == tuple(plane_shape):
        return probabilities
    import tensorflow as tf

    # Resize probabilities, not labels, so the boundary lands between model voxels where
    # the probability crosses the threshold; antialias only acts when shrinking.
    return tf.image.resize(probabilities, plane_shape, method="bilinear", antialias=True).numpy()


def reassemble_slices(
    dataset, *, preprocess: Callable | None = None, progress: bool = False
) -> Iterator[tuple]:
    """Turn a per-slice dataset back into whole volumes, one patient at a time.

    Slices may arrive in any order (shuffled, interleaved across patients); each patient is
    yielded as soon as all its ``num_slices`` slices have arrived, so memory holds only the
    patients still incomplete. A repeated, out-of-range or missing slice raises
    ``ValueError`` naming the patient.

    Args:
        dataset: ``tf.data.Dataset`` of unbatched dicts with ``image``, ``mask``,
            ``patient_id``, ``slice_index``, ``num_slices`` and ``spacing``, as kseg's TFDS
            builders produce.
        preprocess: TensorFlow function ``example -> model input (h, w, C)`` applied per
            example with ``Dataset.map``; ``None`` keeps ``example["image"]``.
        progress: show a tqdm bar over the slices.

    Yields:
        ``(patient_id, inputs (Z, h, w, C) or (Z, H, W), mask (Z, H, W), spacing)`` with
        slices in ``slice_index`` order; the mask stays on its stored (original) grid.

    Example:
        >>> import numpy as np
        >>> import tensorflow as tf
        >>> mask = np.zeros((3, 8, 8), np.uint8)
        >>> mask[:, 2:6, 2:6] = 1
        >>> slices = tf.data.Dataset.from_tensor_slices({  # one patient, as a builder stores it
        ...     "image": np.where(mask == 1, 60, -1000).astype(np.int16), "mask": mask,
        ...     "patient_id": ["1"] * 3, "slice_index": [2, 0, 1], "num_slices": [3] * 3,
        ...     "spacing": [[3.0, 0.8, 0.8]] * 3})
        >>> [(patient_id, image.shape, mask.shape, spacing.tolist())
        ...  for patient_id, image, mask, spacing in reassemble_slices(slices)]
        [('1', (3, 8, 8), (3, 8, 8), [3.0, 0.800000011920929, 0.800000011920929])]

        A CHAOS fold as a model sees it:
        ``list(reassemble_slices(tfds.load("chaos/ct", split="fold1"), preprocess=prep))``.
    """
    import tensorflow as tf

    missing = [key for key in SLICE_FEATURES if key not in dataset.element_spec]
    if missing:
        raise ValueError(
            f"dataset examples lack the features {missing}; slice reassembly needs "
            f"{list(SLICE_FEATURES)}"
        )

    def prepare(example):
        return {
            "input": example["image"] if preprocess is None else preprocess(example),
            **{key: example[key] for key in SLICE_FEATURES if key != "image"},
        }

    examples = dataset.map(prepare, num_parallel_calls=tf.data.AUTOTUNE)
    total = int(dataset.cardinality())
    pending: dict[str, dict] = {}
    finished: set[str] = set()
    for example in tqdm(
        examples.as_numpy_iterator(),
        total=total if total >= 0 else None,
        desc="slices",
        unit="slice",
        disable=not progress,
    ):
        patient_id = _decode(example["patient_id"])
        index, num_slices = int(example["slice_index"]), int(example["num_slices"])
        if patient_id in finished:
            raise ValueError(f"patient {patient_id!r}: slice {index} arrived after all slices")
        volume = pending.setdefault(
            patient_id, {"num_slices": num_slices, "spacing": example["spacing"], "slices": {}}
        )
        if num_slices != volume["num_slices"]:
            raise ValueError(
                f"patient {patient_id!r}: slices disagree on num_slices "
                f"({volume['num_slices']} and {num_slices})"
            )
        if not 0 <= index < num_slices:
            raise ValueError(
                f"patient {patient_id!r}: slice_index {index} outside 0..{num_slices - 1}"
            )
        if index in volume["slices"]:
            raise ValueError(f"patient {patient_id!r}: slice {index} appears twice")
        mask = example["mask"]
        if mask.ndim == 3 and mask.shape[-1] == 1:
            mask = mask[..., 0]
        volume["slices"][index] = (example["input"], mask)
        if len(volume["slices"]) == num_slices:
            del pending[patient_id]
            finished.add(patient_id)
            ordered = [volume["slices"][i] for i in range(num_slices)]
            inputs = np.stack([model_input for model_input, _ in ordered])
            masks = np.stack([mask for _, mask in ordered])
            yield patient_id, inputs, masks, volume["spacing"]
    if pending:
        incomplete = {
            patient_id: sorted(set(range(volume["num_slices"])) - set(volume["slices"]))[:10]
            for patient_id, volume in pending.items()
        }
        raise ValueError(
            f"incomplete patients (missing slice indices, first 10 shown): {incomplete}"
        )


def predict_on_mask_grid(model, volumes: Iterable[tuple], *, batch_size: int = 16) -> Iterator:
    """Predict volumes slice by slice with a 2D model, probabilities on each mask's grid.

    The model runs at its own in-plane size; its probabilities are resized back to the
    stored mask's plane with :func:`resize_probabilities`, so they can be scored where the
    mask was annotated.

    Args:
        model: a 2D ``keras.Model`` or callable batch -> batch.
        volumes: ``(patient_id, inputs, mask, spacing)`` tuples as
            :func:`reassemble_slices` yields them: model inputs ``(Z, h, w, C)`` and the mask
            ``(Z, H, W)``; or one image, inputs ``(h, w, C)`` and mask ``(H, W)`` (scored in
            2D, so surface distances measure its outline).
        batch_size: slices per model call.

    Yields:
        ``(patient_id, mask, probabilities (*mask.shape, C), spacing)``, the cases
        :func:`evaluate_volumes` and :func:`choose_postprocessing` score.

    Example:
        >>> import numpy as np
        >>> import tensorflow as tf
        >>> mask = np.zeros((3, 8, 8), np.uint8)
        >>> mask[:, 2:6, 2:6] = 1
        >>> slices = tf.data.Dataset.from_tensor_slices({  # one patient, as a builder stores it
        ...     "image": np.where(mask == 1, 60, -1000).astype(np.int16), "mask": mask,
        ...     "patient_id": ["1"] * 3, "slice_index": [2, 0, 1], "num_slices": [3] * 3,
        ...     "spacing": [[3.0, 0.8, 0.8]] * 3})
        >>> from kseg.data.pipeline import model_input
        >>> prep = model_input(window="abdomen", image_size=(16, 16))  # the model's size
        >>> model = lambda batch: (batch > 0.5).astype(np.float32)  # stands in for a 2D model
        >>> cases = predict_on_mask_grid(model, reassemble_slices(slices, preprocess=prep))
        >>> [(patient_id, probabilities.shape) for patient_id, _, probabilities, _ in cases]
        [('1', (3, 8, 8, 1))]

        Scored on a CHAOS fold:

        >>> cases = predict_on_mask_grid(model, reassemble_slices(  # doctest: +SKIP
        ...     tfds.load("chaos/ct", split="fold1"), preprocess=prep))
        >>> table = evaluate_volumes(cases, metrics=("dice", "hd95"))  # doctest: +SKIP
    """
    from kseg.inference import predict_slices

    for patient_id, inputs, mask, spacing in volumes:
        inputs, mask = np.asarray(inputs), np.asarray(mask)
        one_image = mask.ndim == 2
        probabilities = predict_slices(
            model, inputs[None] if one_image else inputs, batch_size=batch_size, progress=False
        )
        probabilities = resize_probabilities(probabilities, mask.shape[-2:])
        yield patient_id, mask, probabilities[0] if one_image else probabilities, spacing


def evaluate_slices(
    model,
    dataset,
    *,
    preprocess: Callable,
    metrics: Sequence[str] = DEFAULT_METRICS,
    labels: Mapping[str, int] | Iterable[int] | None = None,
    threshold: float = 0.5,
    postprocess: Callable[[np.ndarray], np.ndarray] | None = None,
    batch_size: int = 16,
    progress: bool = True,
    warn_empty: bool = True,
) -> PatientTable:
    """Score a 2D model per patient on a per-slice dataset, over each whole volume.

    Slices (in any order, e.g. shuffled) are grouped by ``patient_id`` and put in
    ``slice_index`` order; a patient is scored as soon as all its ``num_slices`` slices have
    arrived, so memory holds only the patients still incomplete. A repeated, out-of-range or
    missing slice raises ``ValueError`` naming the patient.

    Scores are computed on the grid of the stored ``mask``, the original acquisition grid,
    as a publication needs: when ``preprocess`` resizes the image for the model, the
    predicted probabilities of each slice are resized back to the mask's in-plane shape
    (``tf.image.resize``, bilinear, half-pixel centres) and only then thresholded or
    argmaxed. ``preprocess`` may therefore change intensities and resize, but not crop or
    pad (that would shift the prediction against the mask). ``spacing`` is read from the
    examples, so distances are in millimetres of the original grid.

    Args:
        model: a 2D ``keras.Model`` or callable batch -> batch (e.g. ``flip_tta(model)``).
        dataset: ``tf.data.Dataset`` of dicts with ``image``, ``mask`` (``(H, W)`` or
            ``(H, W, 1)`` label map), ``patient_id``, ``slice_index``, ``num_slices`` and
            ``spacing`` (voxel size in mm along ``(z, y, x)``), as kseg's TFDS builders
            produce. Not batched.
        preprocess: TensorFlow function ``example -> model input (h, w, C)``, applied per
            example with ``Dataset.map``.
        metrics, labels, threshold, postprocess: as in :func:`evaluate_volumes`; a
            ``postprocess`` sees each patient's whole label map ``(slices, H, W)``.
        batch_size: slices per model call.
        progress: show a tqdm bar over the slices.
        warn_empty: as in :func:`evaluate_volumes`.

    Returns:
        :class:`PatientTable`, rows sorted by patient id, with the ``reference_empty``
        flags of :func:`evaluate_volumes`.

    Example:
        >>> import numpy as np
        >>> import tensorflow as tf
        >>> mask = np.zeros((3, 8, 8), np.uint8)
        >>> mask[:, 2:6, 2:6] = 1
        >>> slices = tf.data.Dataset.from_tensor_slices({  # one patient, as a builder stores it
        ...     "image": np.where(mask == 1, 60, -1000).astype(np.int16), "mask": mask,
        ...     "patient_id": ["1"] * 3, "slice_index": [2, 0, 1], "num_slices": [3] * 3,
        ...     "spacing": [[3.0, 0.8, 0.8]] * 3})
        >>> from kseg.data.pipeline import model_input
        >>> model = lambda batch: (batch > 0.5).astype(np.float32)  # stands in for a 2D model
        >>> table = evaluate_slices(model, slices, preprocess=model_input(window="abdomen"),
        ...                         metrics=("dice", "hd95"), progress=False)
        >>> table.rows
        [{'patient_id': '1', 'dice': 1.0, 'hd95': 0.0, 'reference_empty': False}]

        The CHAOS CT test fold:

        >>> import tfds_builders.chaos  # registers the builder  # doctest: +SKIP
        >>> test = tfds.load("chaos/ct", split="fold0")  # the test fold  # doctest: +SKIP
        >>> table = evaluate_slices(  # doctest: +SKIP
        ...     model, test, preprocess=model_input(window="abdomen", image_size=(256, 256)),
        ...     metrics=("dice", "hd95", "assd"))
        >>> table.to_csv("test_scores.csv")  # doctest: +SKIP

    Reference:
        Kavur AE, Gezer NS, Barış M, et al. "CHAOS Challenge - combined (CT-MR) healthy
        abdominal organ segmentation". Medical Image Analysis 69:101950, 2021 (scores per
        patient volume).
    """
    volumes = reassemble_slices(dataset, preprocess=preprocess, progress=progress)
    table = evaluate_volumes(
        predict_on_mask_grid(model, volumes, batch_size=batch_size),
        metrics=metrics,
        labels=labels,
        threshold=threshold,
        postprocess=postprocess,
        progress=False,
        warn_empty=False,
    )
    table = PatientTable(sorted(table.rows, key=lambda row: row["patient_id"]))
    if warn_empty:
        _warn_empty_references("evaluate_slices", table)
    return table


def evaluate_on_original_grid(
    model,
    volumes: Iterable[tuple],
    *,
    roi_size,
    overlap: float = 0.5,
    blend: str = "gaussian",
    batch_size: int = 4,
    threshold: float = 0.5,
    postprocess: Callable[[np.ndarray], np.ndarray] | None = None,
    metrics: Sequence[str] = DEFAULT_METRICS,
    labels: Mapping[str, int] | Iterable[int] | None = None,
    prediction_dir: os.PathLike | str | None = None,
    progress: bool = True,
    warn_empty: bool = True,
) -> PatientTable:
    """Segment preprocessed volumes and score each on the grid of its reference label file.

    A 3D model sees volumes after preprocessing (reoriented, resampled, cropped, e.g. the
    ``msd_spleen/preprocessed`` examples); a result is reported on the grid the reference
    was annotated on. For each volume:

    1. :func:`kseg.inference.sliding_window` predicts probabilities on the model's grid;
    2. one channel is thresholded, several are argmaxed, and ``postprocess`` is applied to
       that label map (on the model's grid, as :class:`kseg.training.VolumeValidation`
       applies it when it picks the checkpoint);
    3. :func:`kseg.geometry.to_original_grid` maps it onto the reference file's grid
       (nearest neighbour; voxels outside the model's field of view are background);
    4. the reference is read with :func:`kseg.io.read_nifti_labels` and the label map is
       written beside the others as ``<prediction_dir>/<patient_id>.nii.gz`` with the
       reference's affine (uint8);
    5. :func:`evaluate_volumes` scores it, distances in mm on the reference's grid (its
       affine, so a sheared reference grid is measured exactly).

    Args:
        model: a ``keras.Model`` or callable batch -> batch with as many spatial axes as the
            volumes.
        volumes: ``(patient_id, model input (z, y, x, C), affine, reference label file)``
            tuples: the input on the preprocessed grid, that grid's 4x4 affine (index
            ``(k, j, i)`` to RAS+ mm, the ``affine`` feature of a preprocessed example) and
            the NIfTI label file on the original grid.
        roi_size, overlap, blend, batch_size: passed to the sliding window.
        threshold: probability at or above which a one-channel prediction is foreground.
        postprocess: ``label map -> label map`` on the model's grid, e.g.
            :func:`kseg.inference.keep_largest_component`; it must keep the grid.
        metrics, labels, warn_empty: as in :func:`evaluate_volumes`.
        prediction_dir: folder the predicted label maps are written to (created if
            needed); ``None`` writes none.
        progress: show a tqdm bar over the volumes.

    Returns:
        :class:`PatientTable` as :func:`evaluate_volumes` returns it.

    Example:
        >>> volumes = [(ex["patient_id"].decode(), window(ex["image"], *WINDOWS["spleen_msd"])
        ...             .numpy()[..., None], ex["affine"],
        ...             f"Task09_Spleen/labelsTr/{ex['patient_id'].decode()}.nii.gz")
        ...            for ex in tfds.as_numpy(test_split)]  # doctest: +SKIP
        >>> table = evaluate_on_original_grid(model, volumes, roi_size=(96, 96, 96),
        ...                                   metrics=("dice", "hd95"),
        ...                                   prediction_dir="predictions")  # doctest: +SKIP
    """
    from kseg.geometry import to_original_grid
    from kseg.inference import sliding_window
    from kseg.io import Volume, read_nifti_labels, write_nifti

    if prediction_dir is not None:
        prediction_dir = pathlib.Path(prediction_dir)
        prediction_dir.mkdir(parents=True, exist_ok=True)

    def cases():
        for patient_id, model_input, affine, label_file in volumes:
            patient_id = str(patient_id)
            probabilities = sliding_window(
                model, np.asarray(model_input), roi_size, overlap=overlap, blend=blend,
                batch_size=batch_size, progress=False,
            )  # fmt: skip
            predicted = _postprocessed(
                patient_id, labels_from_probabilities(probabilities, threshold).astype(np.uint8),
                postprocess,
            )  # fmt: skip
            reference = read_nifti_labels(label_file, patient_id=patient_id)
            on_reference_grid = to_original_grid(Volume(predicted, affine, patient_id), reference)
            if prediction_dir is not None:
                write_nifti(
                    reference.with_array(on_reference_grid),
                    prediction_dir / f"{patient_id}.nii.gz",
                )
            yield patient_id, reference.array, on_reference_grid, reference.affine

    return evaluate_volumes(
        cases(), metrics=metrics, labels=labels, threshold=threshold, progress=progress,
        warn_empty=warn_empty,
    )  # fmt: skip
