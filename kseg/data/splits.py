"""Patient-level k-fold splits.

Slices of one patient are strongly correlated, so a split made over slices leaks the test
patients into training and inflates every reported score. kseg therefore splits over patient
ids only: :func:`assign_folds` gives each patient one fold, dataset builders write one TFDS
split per fold (``"fold0"`` .. ``"fold{k-1}"``), and :func:`split_names` /
:func:`cross_validation_splits` turn fold numbers into TFDS split expressions such as
``"fold2+fold3+fold4"``. Every train / validation / test arrangement is then a union of
folds written once, and no patient can ever be in two of them.

Example:
    >>> folds = assign_folds(["p1", "p2", "p3", "p4", "p5", "p6"], num_folds=3, seed=0)
    >>> sorted(folds.values())
    [0, 0, 1, 1, 2, 2]
    >>> split_names(5, test_fold=0, validation_fold=1)
    {'train': 'fold2+fold3+fold4', 'validation': 'fold1', 'test': 'fold0'}

Reference:
    Isensee et al., "nnU-Net: a self-configuring method for deep learning-based biomedical
    image segmentation", Nature Methods 18, 203-211 (2021): five-fold cross-validation over
    patients (training cases), never over slices.
"""

from __future__ import annotations

import hashlib
import numbers
from collections.abc import Hashable, Iterable, Mapping

import numpy as np

FOLD_PREFIX = "fold"


def fold_names(num_folds: int) -> list[str]:
    """The TFDS split name of every fold: ``["fold0", ..., "fold{k-1}"]``.

    Args:
        num_folds: number of folds, at least 1 (one: a dataset scored whole, such as the
            labelled cases ``kseg evaluate --input`` scores, which may be a single case).

    Example:
        >>> fold_names(3)
        ['fold0', 'fold1', 'fold2']
    """
    _check_num_folds(num_folds, minimum=1)
    return [f"{FOLD_PREFIX}{fold}" for fold in range(num_folds)]


def assign_folds(
    patient_ids: Iterable[Hashable],
    num_folds: int = 5,
    *,
    seed: int = 0,
    strata: Mapping[Hashable, Hashable] | None = None,
) -> dict[Hashable, int]:
    """Assign every patient to one of ``num_folds`` folds.

    Patients are put in a canonical order (sorted by ``str(patient_id)``), shuffled with
    ``seed`` and dealt round-robin, so the result depends only on the set of ids and the
    seed, never on the order they are given in, and fold sizes differ by at most one.

    With ``strata``, patients are dealt stratum by stratum (strata in a seeded order, each
    stratum shuffled) while the round-robin counter runs on across strata: every fold then
    receives its share of each stratum (per-stratum counts differ by at most one between
    folds) and overall fold sizes still differ by at most one.

    Args:
        patient_ids: unique patient ids (strings or integers; ``str(id)`` must be unique,
            also ignoring case and whitespace).
        num_folds: number of folds, at least 1 (every patient in fold 0: a dataset that is
            only scored) and at most the number of patients (an empty
            fold would be an empty TFDS split).
        seed: non-negative integer seed of the shuffle.
        strata: optional mapping from every patient id to a hashable stratum, e.g.
            ``(sex, empty_fraction_bin)``; a list (such a tuple read back from JSON) counts
            as the tuple. Entries for patients not in ``patient_ids`` are ignored.

    Returns:
        ``{patient_id: fold}`` with folds in ``0 .. num_folds - 1``, in canonical patient
        order.

    Raises:
        ValueError: duplicate ids (also ids that differ only in case or whitespace, such as
            ``"P01"`` and ``"p01 "``), fewer patients than folds, a bad ``num_folds`` or
            ``seed``, a patient missing from ``strata``, or a stratum that is not hashable
            (a dict, a set).

    Example:
        >>> folds = assign_folds(["a", "b", "c", "d"], num_folds=2, seed=1,
        ...                      strata={"a": "F", "b": "F", "c": "M", "d": "M"})
        >>> sorted(folds[p] for p in ("a", "b")), sorted(folds[p] for p in ("c", "d"))
        ([0, 1], [0, 1])

    Reference:
        Kohavi, "A study of cross-validation and bootstrap for accuracy estimation and model
        selection", IJCAI 1995 (stratified k-fold cross-validation).
    """
    _check_num_folds(num_folds, minimum=1)
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    patients = _canonical_patients(patient_ids)
    if len(patients) < num_folds:
        raise ValueError(
            f"num_folds={num_folds} needs at least {num_folds} patients, got {len(patients)}: "
            "every fold becomes a split and a split cannot be empty"
        )
    rng = np.random.default_rng(int(seed))
    if strata is None:
        groups = [patients]
    else:
        missing = [p for p in patients if p not in strata]
        if missing:
            raise ValueError(f"strata has no stratum for patients {missing!r}")
        by_stratum: dict[Hashable, list[Hashable]] = {}
        for patient in patients:
            by_stratum.setdefault(_stratum(patient, strata[patient]), []).append(patient)
        # repr gives a canonical order even for strata that do not compare with each other.
        stratum_keys = sorted(by_stratum, key=repr)
        groups = [by_stratum[stratum_keys[i]] for i in rng.permutation(len(stratum_keys))]

    folds: dict[Hashable, int] = {}
    dealt = 0
    for group in groups:
        for index in rng.permutation(len(group)):
            folds[group[index]] = dealt % num_folds
            dealt += 1
    return {patient: folds[patient] for patient in patients}


def split_names(
    num_folds: int = 5, *, test_fold: int = 0, validation_fold: int = 1
) -> dict[str, str]:
    """TFDS split expressions for one train / validation / test arrangement of the folds.

    Args:
        num_folds: number of folds the dataset was written with, at least 3.
        test_fold: the fold held out for testing.
        validation_fold: the fold used for validation; must differ from ``test_fold``.

    Returns:
        ``{"train": ..., "validation": ..., "test": ...}``, each a split string that
        ``tfds.load(split=...)`` accepts; training takes every remaining fold.

    Raises:
        ValueError: fewer than 3 folds, a fold outside ``0 .. num_folds - 1``, or
            ``validation_fold == test_fold``.

    Example:
        >>> split_names(5, test_fold=0, validation_fold=1)
        {'train': 'fold2+fold3+fold4', 'validation': 'fold1', 'test': 'fold0'}
    """
    _check_num_folds(num_folds, minimum=3)
    _check_fold("test_fold", test_fold, num_folds)
    _check_fold("validation_fold", validation_fold, num_folds)
    if validation_fold == test_fold:
        raise ValueError(
            f"validation_fold and test_fold must differ, both are {test_fold}"
        )
    names = fold_names(num_folds)
    train = [names[f] for f in range(num_folds) if f not in (test_fold, validation_fold)]
    return {
        "train": "+".join(train),
        "validation": names[validation_fold],
        "test": names[test_fold],
    }


def cross_validation_splits(num_folds: int = 5, *, test_fold: int = 0) -> list[dict[str, str]]:
    """Every train / validation arrangement of the folds that are not the test fold.

    With the test fold held out, each of the other ``num_folds - 1`` folds serves as the
    validation fold once (inner cross-validation); the test fold is the same in all.

    Args:
        num_folds: number of folds the dataset was written with, at least 3.
        test_fold: the fold held out of every arrangement.

    Returns:
        One :func:`split_names` dictionary per validation fold, in fold order.

    Example:
        >>> [s["validation"] for s in cross_validation_splits(4, test_fold=2)]
        ['fold0', 'fold1', 'fold3']
    """
    _check_num_folds(num_folds, minimum=3)
    _check_fold("test_fold", test_fold, num_folds)
    return [
        split_names(num_folds, test_fold=test_fold, validation_fold=fold)
        for fold in range(num_folds)
        if fold != test_fold
    ]


def _canonical_patients(patient_ids: Iterable[Hashable]) -> list[Hashable]:
    if isinstance(patient_ids, (str, bytes)):
        raise ValueError(
            f"patient_ids must be a collection of ids, got the single string {patient_ids!r}"
        )
    by_name: dict[str, Hashable] = {}
    by_key: dict[str, Hashable] = {}
    for patient in patient_ids:
        if patient is None or (isinstance(patient, str) and not patient.strip()):
            # a header without PatientID, read as None or "": such patients cannot be told
            # apart, so they could share folds with anyone
            raise ValueError(f"patient_ids holds an empty patient id {patient!r}")
        try:
            hash(patient)
        except TypeError:
            raise ValueError(
                f"patient_ids must hold hashable ids (str, int), got {type(patient).__name__} "
                f"{patient!r}"
            ) from None
        name = str(patient)
        if name in by_name:
            raise ValueError(f"patient id {patient!r} appears more than once in patient_ids")
        # "P01" and "p01 " from two sources are one patient: in two folds they would leak
        # that patient's images from training into testing.
        key = " ".join(name.split()).casefold()
        if key in by_key:
            raise ValueError(
                f"patient ids {by_key[key]!r} and {patient!r} differ only in case or "
                "whitespace; they name one patient, whose images could land in two folds. "
                "Normalise the ids before splitting"
            )
        by_key[key] = patient
        by_name[name] = patient
    return [by_name[name] for name in sorted(by_name)]


def _stratum(patient, stratum) -> Hashable:
    """A patient's stratum as a dictionary key; lists, as a JSON or YAML file gives a
    ``(sex, bin)`` tuple back, become tuples, so they stratify as the tuple does."""
    if isinstance(stratum, list):
        stratum = tuple(_stratum(patient, part) for part in stratum)
    try:
        hash(stratum)
    except TypeError:
        raise ValueError(
            f"strata: patient {patient!r} has the stratum {stratum!r} of type "
            f"{type(stratum).__name__}, which cannot group patients; give a str, a number "
            "or a tuple of them"
        ) from None
    return stratum


def _check_num_folds(num_folds, *, minimum: int) -> None:
    if isinstance(num_folds, bool) or not isinstance(num_folds, numbers.Integral):
        raise ValueError(f"num_folds must be an integer, got {num_folds!r}")
    if num_folds < minimum:
        raise ValueError(f"num_folds must be at least {minimum}, got {num_folds}")


def _check_fold(name: str, fold, num_folds: int) -> None:
    if isinstance(fold, bool) or not isinstance(fold, numbers.Integral):
        raise ValueError(f"{name} must be an integer, got {fold!r}")
    if not 0 <= fold < num_folds:
        raise ValueError(f"{name} must be in 0..{num_folds - 1}, got {fold}")


def nested_patient_subset(patient_ids: Iterable[str], n: int, *, seed: int = 0) -> list[str]:
    """The ``n`` training patients of a training-set-size sweep; subsets are nested.

    Every patient gets a fixed priority, the SHA-256 of ``f"{seed}:{patient_id}"``, and
    the ``n`` patients of highest priority (lowest digest) are taken. Hence the subset for
    ``n = 5`` is inside the one for ``n = 10``, and so on; the result depends only on the
    set of ids and the seed, never on their order; and adding or removing a patient from
    the pool moves no other patient in or out except at the boundary. All images of a
    chosen patient go with it, so with several images per patient the image count is not
    ``n``.

    Args:
        patient_ids: the pool, e.g. the patients of the training folds
            (:func:`kseg.data.pipeline.split_patient_ids`); duplicates are counted once.
        n: number of patients, 1 .. number of distinct ids.
        seed: non-negative integer; another seed gives another nested family.

    Returns:
        The chosen ids in priority order (so ``subset(n)[:m] == subset(m)``).

    Raises:
        ValueError: ``n`` outside ``1 .. len(set(patient_ids))`` or a negative seed.

    Example:
        >>> pool = [f"P{i:03d}" for i in range(40)]
        >>> small, large = nested_patient_subset(pool, 5), nested_patient_subset(pool, 10)
        >>> set(small) <= set(large), large[:5] == small
        (True, True)
    """
    pool = sorted({str(p) for p in patient_ids})
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= len(pool):
        raise ValueError(f"n must be an integer in 1..{len(pool)} (the patients), got {n!r}")
    return sorted(pool, key=lambda p: hashlib.sha256(f"{seed}:{p}".encode()).digest())[:n]
