"""The example contract between the dataset builders and what reads their datasets.

A 2D builder writes one example per slice with the features :data:`SLICE_FEATURES`:
``image`` (the slice in its stored units), ``mask`` (``uint8`` labels), ``patient_id``,
``slice_index`` (position order), ``num_slices`` and ``spacing`` (``(z, y, x)`` mm, float32),
keyed ``<patient>_<index:04d>``. :func:`slice_features_dict` declares them in a builder's
``_info`` and :func:`slice_examples` yields them from a volume, so the builders, and
:func:`kseg.evaluation.evaluate_slices`, which reassembles the slices into volumes, share
one definition. Every builder writes one split per patient-level fold; :func:`fold_splits`
deals the patients to those splits. :func:`to_image_dtype` stores image values in the
feature's dtype without ever wrapping them.

Example:
    >>> splits = fold_splits(["p1", "p2", "p3"], num_folds=3, seed=0, where="manual")
    >>> sorted(splits), sorted(sum(splits.values(), []))
    (['fold0', 'fold1', 'fold2'], ['p1', 'p2', 'p3'])
"""

from __future__ import annotations

from collections.abc import Hashable, Iterator, Mapping, Sequence

import numpy as np

from kseg.data.splits import assign_folds, fold_names
from kseg.errors import DicomSeriesError

__all__ = [
    "SLICE_FEATURES",
    "fold_splits",
    "slice_examples",
    "slice_features_dict",
    "to_image_dtype",
]

SLICE_FEATURES = ("image", "mask", "patient_id", "slice_index", "num_slices", "spacing")


def slice_features_dict(image_dtype, **extra_features):
    """The ``tfds.features.FeaturesDict`` of a slice example.

    Args:
        image_dtype: numpy dtype the images are stored in (``np.int16`` for CT in HU,
            ``np.uint16`` for MR signal).
        **extra_features: dataset-specific features added after :data:`SLICE_FEATURES`
            (e.g. ``patient_sex=tfds.features.Text()``).

    Example:
        >>> features = slice_features_dict(np.int16)
        >>> sorted(features.keys())
        ['image', 'mask', 'num_slices', 'patient_id', 'slice_index', 'spacing']
        >>> features["image"]
        Tensor(shape=(None, None), dtype=int16)
    """
    # Imported here: kseg.evaluation reads SLICE_FEATURES without loading TFDS.
    import tensorflow_datasets as tfds

    def plane(dtype):
        return tfds.features.Tensor(
            shape=(None, None), dtype=dtype, encoding=tfds.features.Encoding.ZLIB
        )

    return tfds.features.FeaturesDict(
        {
            "image": plane(image_dtype),
            "mask": plane(np.uint8),
            "patient_id": tfds.features.Text(),
            "slice_index": np.int32,
            "num_slices": np.int32,
            "spacing": tfds.features.Tensor(shape=(3,), dtype=np.float32),
            **extra_features,
        }
    )


def slice_examples(
    patient_id: str,
    images: np.ndarray,
    labels: np.ndarray,
    spacing: Sequence[float],
    **extra_values,
) -> Iterator[tuple[str, dict]]:
    """``(key, example)`` for every slice of one patient's volume, in array order.

    Args:
        patient_id: the patient; keys are ``f"{patient_id}_{index:04d}"``, unique per
            dataset because patient ids are.
        images: ``(slices, rows, columns)`` in the dtype of the ``image`` feature.
        labels: ``(slices, rows, columns)`` ``uint8`` label map of the same shape.
        spacing: ``(z, y, x)`` voxel size in mm.
        **extra_values: values of the builder's extra features, the same for every slice.

    Example:
        >>> volume = np.zeros((2, 4, 4), np.int16)
        >>> [key for key, _ in slice_examples("7", volume, volume.astype(np.uint8), (3, 1, 1))]
        ['7_0000', '7_0001']
    """
    spacing = np.asarray(spacing, dtype=np.float32)
    num_slices = images.shape[0]
    for index in range(num_slices):
        yield f"{patient_id}_{index:04d}", {
            "image": images[index],
            "mask": labels[index],
            "patient_id": patient_id,
            "slice_index": index,
            "num_slices": num_slices,
            "spacing": spacing,
            **extra_values,
        }


def fold_splits(
    patient_ids: Sequence[Hashable],
    num_folds: int,
    *,
    seed: int,
    strata: Mapping[Hashable, Hashable] | None = None,
    where: str,
) -> dict[str, list[Hashable]]:
    """The patients of every fold split, ``{"fold0": [...], ..., "fold{k-1}": [...]}``.

    Folds come from :func:`kseg.data.splits.assign_folds` (which depends only on the set of
    ids, the seed and the strata); each split lists its patients in the order given.

    Args:
        patient_ids: unique patient ids.
        num_folds: number of folds, at least 2 and at most the number of patients.
        seed: seed of the fold assignment.
        strata: optional ``{patient_id: stratum}`` to deal each stratum evenly.
        where: what the patients were read from, prefixed to the message of a
            ``ValueError`` (e.g. the manual folder).

    Raises:
        ValueError: the fold assignment is impossible (too few patients, duplicate ids, a
            bad ``num_folds`` or ``seed``); the message starts with ``where``.
    """
    try:
        folds = assign_folds(patient_ids, num_folds, seed=seed, strata=strata)
    except ValueError as exc:
        raise ValueError(f"{where}: {exc}") from exc
    return {
        name: [patient for patient in patient_ids if folds[patient] == fold]
        for fold, name in enumerate(fold_names(num_folds))
    }


def to_image_dtype(
    values: np.ndarray,
    dtype,
    *,
    source,
    modality: str = "CT",
    error: type[Exception] = DicomSeriesError,
) -> np.ndarray:
    """Image values in the dtype of the dataset's image feature, never wrapped.

    Integers are kept, non-integer values (a fractional RescaleSlope, an interpolated
    volume) are rounded to the nearest integer; values outside the dtype's range are an
    error, since a cast would wrap them into wrong intensities.

    Args:
        values: the image or volume as read.
        dtype: the feature's integer dtype (``np.int16`` for HU, ``np.uint16`` for MR).
        source: the file or folder the values were read from, named in the error.
        modality: named in the error (``"CT"``, ``"MR"``).
        error: the :mod:`kseg.errors` class to raise, taking ``(source, problem)``.

    Raises:
        error: a value lies outside the dtype's range, or is NaN or infinite.

    Example:
        >>> to_image_dtype(np.array([0.4, 1.6, 2.5]), np.uint16, source="series")
        array([0, 2, 2], dtype=uint16)
    """
    if values.dtype == dtype:
        return values
    rounded = np.rint(values) if np.issubdtype(values.dtype, np.floating) else values
    if np.issubdtype(rounded.dtype, np.floating) and not np.isfinite(rounded).all():
        # NaN passes both range comparisons below and casts to 0, water in HU
        bad = int(np.count_nonzero(~np.isfinite(rounded)))
        raise error(
            source,
            f"{bad} {modality} values are NaN or infinite; the dataset's "
            f"{np.dtype(dtype).name} image feature cannot hold them",
        )
    limits = np.iinfo(dtype)
    low, high = float(rounded.min()), float(rounded.max())
    if low < limits.min or high > limits.max:
        raise error(
            source,
            f"{modality} values span {low:g}..{high:g}, outside the {np.dtype(dtype).name} "
            f"range {limits.min}..{limits.max} of the dataset's image feature",
        )
    return rounded.astype(dtype)
