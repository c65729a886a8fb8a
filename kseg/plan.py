"""A dataset fingerprint, and a training plan derived from it by small, named rules.

nnU-Net's lesson (Isensee et al., "nnU-Net: a self-configuring method for deep
learning-based biomedical image segmentation", Nature Methods 18, 203-211 (2021)) is that
most of a segmentation result comes from settings that follow from the data: spacing,
shape, intensities, how much foreground there is. This module does the same in two steps:

1. :func:`fingerprint` reads a TFDS builder's prepared data once and records, per case
   (patient), the spacing, shape and label voxel counts, plus intensity statistics of the
   foreground voxels (label > 0), sampled with a fixed seed so memory stays bounded. It is
   saved and loaded as JSON (:meth:`Fingerprint.save`, :meth:`Fingerprint.load`).
2. :func:`plan` derives a :class:`Plan` from a fingerprint and a memory / time budget. Each
   setting comes from one ``rule_*`` function whose docstring names its source.

Only reading a dataset imports TensorFlow (inside :func:`fingerprint`).

Example:
    >>> fp = fingerprint(builder, split=None)  # doctest: +SKIP
    >>> fp.save("runs/chaos_ct/fingerprint.json")  # doctest: +SKIP
    >>> p = plan(fp, memory_budget_mb=2000, time_budget_minutes=30)  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Iterable, Mapping, Sequence

import numpy as np

from kseg._files import atomic_output

__all__ = [
    "CaseStats",
    "Fingerprint",
    "fingerprint",
    "MODALITIES",
]

MODALITIES = ("CT", "MR", "XRAY")
# Modality of builders whose configs do not carry one (chaos configs have ``.modality``).
_BUILDER_MODALITIES = {"msd_spleen": "CT", "lctsc": "CT", "xray": "XRAY"}
# nnU-Net's foreground intensity percentiles (fingerprint_extractor.py).
PERCENTILES = (0.5, 50.0, 99.5)
# nnU-Net samples 10e7 foreground voxels over the whole dataset; kseg keeps at most this
# many per case (float32: 0.4 MB per case), which bounds memory by the number of cases.
DEFAULT_SAMPLES_PER_CASE = 100_000
FINGERPRINT_SEED = 1234  # nnU-Net's seed for the foreground sample


@dataclasses.dataclass
class CaseStats:
    """One case (a patient's volume, or one radiograph).

    Attributes:
        case_id: the patient id (2D slice and volume datasets) or image id (radiographs).
        shape: voxels per axis, ``(z, y, x)`` for volumes, ``(rows, columns)`` for images.
        spacing: mm per axis in the order of ``shape``; ``None`` where the dataset has no
            spacing (radiographs), and rules then work in pixels.
        label_voxels: ``{label: voxel count}`` for every label present, background included.
        foreground_voxels: voxels with a label above 0.
    """

    case_id: str
    shape: tuple[int, ...]
    spacing: tuple[float, ...] | None
    label_voxels: dict[int, int]
    foreground_voxels: int


@dataclasses.dataclass
class Fingerprint:
    """What :func:`fingerprint` measured.

    Attributes:
        dataset: ``{"name", "version", "config", "splits"}`` of the builder read.
        modality: ``"CT"``, ``"MR"`` or ``"XRAY"``.
        class_names: label names, background first (the builder's metadata) or ``None``.
        cases: one :class:`CaseStats` per case, in first-seen order.
        foreground_intensity: statistics of the pooled foreground sample: ``mean``,
            ``std``, ``min``, ``max`` and ``percentile_00_5``, ``percentile_50_0``,
            ``percentile_99_5``; ``None`` when no case has foreground.
        foreground_fraction: ``{label: voxels of label / all voxels}`` over the dataset,
            for every label above 0 that occurs.
        samples_per_case: the per-case cap of the foreground sample; a case with fewer
            foreground voxels contributes all of them, so the statistics are exact then.
        seed: seed of the sample.
    """

    dataset: dict
    modality: str
    class_names: list[str] | None
    cases: list[CaseStats]
    foreground_intensity: dict[str, float] | None
    foreground_fraction: dict[int, float]
    samples_per_case: int = DEFAULT_SAMPLES_PER_CASE
    seed: int = FINGERPRINT_SEED

    @property
    def spatial_dims(self) -> int:
        return len(self.cases[0].shape)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping) -> Fingerprint:
        data = dict(data)
        cases = [
            CaseStats(
                case_id=str(c["case_id"]),
                shape=tuple(int(v) for v in c["shape"]),
                spacing=None if c["spacing"] is None else tuple(float(v) for v in c["spacing"]),
                label_voxels={int(k): int(v) for k, v in c["label_voxels"].items()},
                foreground_voxels=int(c["foreground_voxels"]),
            )
            for c in data.pop("cases")
        ]
        data["foreground_fraction"] = {
            int(k): float(v) for k, v in data["foreground_fraction"].items()
        }
        return cls(cases=cases, **data)

    def save(self, path: os.PathLike | str) -> None:
        """Write the fingerprint as JSON, atomically (tmp file + rename)."""
        with atomic_output(path) as temporary:
            with open(temporary, "w", encoding="utf-8") as handle:
                json.dump(self.to_dict(), handle, indent=1)

    @classmethod
    def load(cls, path: os.PathLike | str) -> Fingerprint:
        with open(path, encoding="utf-8") as handle:
            return cls.from_dict(json.load(handle))


class _Reservoir:
    """A uniform sample without replacement of at most ``capacity`` values of a stream.

    Chunks merge exactly: after ``n`` values the reservoir holds a uniform ``k``-subset; a
    chunk of ``m`` new values contributes a hypergeometric number of the new ``k``, so the
    result is a uniform ``k``-subset of all ``n + m``. Fewer values than ``capacity`` are
    all kept.
    """

    def __init__(self, capacity: int, rng: np.random.Generator):
        self.capacity, self.rng = capacity, rng
        self.values = np.empty(0, np.float32)
        self.seen = 0

    def add(self, chunk: np.ndarray) -> None:
        chunk = np.asarray(chunk, np.float32).ravel()
        m = chunk.size
        if m == 0:
            return
        total = self.seen + m
        if total <= self.capacity:
            self.values = np.concatenate([self.values, chunk])
        else:
            k = self.capacity
            from_new = int(self.rng.hypergeometric(m, self.seen, k)) if self.seen else k
            keep_old = self.rng.choice(self.values.size, k - from_new, replace=False)
            take_new = self.rng.choice(m, from_new, replace=False)
            self.values = np.concatenate([self.values[keep_old], chunk[take_new]])
        self.seen = total


class _CaseAccumulator:
    def __init__(self, case_id: str, reservoir: _Reservoir):
        self.case_id = case_id
        self.reservoir = reservoir
        self.label_voxels: dict[int, int] = {}
        self.spacing = None
        self.plane_shape = None
        self.slices = 0
        self.num_slices = None
        self.volume_shape = None

    def add(self, image: np.ndarray, mask: np.ndarray) -> None:
        labels, counts = np.unique(mask, return_counts=True)
        for label, count in zip(labels.tolist(), counts.tolist(), strict=True):
            self.label_voxels[label] = self.label_voxels.get(label, 0) + count
        self.reservoir.add(image[mask > 0])

    def stats(self) -> CaseStats:
        if self.volume_shape is not None:
            shape = tuple(self.volume_shape)
        elif self.num_slices is not None:
            if self.slices != self.num_slices:
                raise ValueError(
                    f"case {self.case_id!r}: {self.slices} slices read, num_slices says "
                    f"{self.num_slices}; fingerprint a split list that holds whole patients"
                )
            shape = (self.num_slices, *self.plane_shape)
        else:
            shape = tuple(self.plane_shape)
        foreground = sum(v for k, v in self.label_voxels.items() if k > 0)
        return CaseStats(
            case_id=self.case_id,
            shape=tuple(int(s) for s in shape),
            spacing=self.spacing,
            label_voxels=dict(sorted(self.label_voxels.items())),
            foreground_voxels=int(foreground),
        )


def _builder_modality(builder, modality):
    config = getattr(builder, "builder_config", None)
    known = getattr(config, "modality", None) or _BUILDER_MODALITIES.get(builder.name)
    if known is not None:
        known = "XRAY" if known.upper() in ("XRAY", "X-RAY", "CR", "DX") else known.upper()
    if modality is None:
        if known is None:
            raise ValueError(
                f"modality: builder {builder.name!r} does not say its modality; pass "
                f"modality= one of {MODALITIES}"
            )
        return known
    if modality not in MODALITIES:
        raise ValueError(f"modality must be one of {MODALITIES} or None, got {modality!r}")
    if known is not None and known != modality:
        raise ValueError(
            f"modality={modality!r} contradicts builder {builder.name!r}, whose data is {known}"
        )
    return modality


def fingerprint(
    dataset_or_builder,
    split: str | Sequence[str] | None = None,
    *,
    modality: str | None = None,
    max_cases: int | None = None,
    samples_per_case: int = DEFAULT_SAMPLES_PER_CASE,
    data_dir: os.PathLike | str | None = None,
    seed: int = FINGERPRINT_SEED,
) -> Fingerprint:
    """Fingerprint a prepared TFDS dataset, reading every example once.

    Slice datasets (the :mod:`kseg.data.examples` contract) are grouped into volumes by
    ``patient_id`` (their order in the files does not matter; a case's shape is
    ``(num_slices, rows, columns)`` and is checked against the slices read); volume
    datasets (``msd_spleen``: ``image``/``label``) give one case per example; radiographs
    (``xray``) one case per image, without spacing.

    Foreground intensities are sampled as nnU-Net's ``DatasetFingerprintExtractor`` does:
    voxels with a label above 0, a fixed seed, the same cap per case so that every case
    weighs alike; kseg samples without replacement and keeps all voxels of a case with
    fewer than the cap, so small datasets get exact statistics.

    Args:
        dataset_or_builder: a ``tfds.core.DatasetBuilder`` whose data is prepared, or a
            registered builder name (``"chaos/ct"``) read from ``data_dir``.
        split: a split name, a list of them, or ``None`` for every split except
            ``unlabeled``.
        modality: ``"CT"``, ``"MR"`` or ``"XRAY"``; needed only when the builder does not
            say it, and an error when it contradicts the builder.
        max_cases: stop after this many complete cases (``None``: all). For slice datasets
            the examples of later cases are still read, but not kept.
        samples_per_case: cap of the foreground sample per case.
        data_dir: where a builder given by name was prepared.
        seed: seed of the foreground sample.

    Raises:
        ValueError: a bad argument (named in the message), a split without examples, a
            case whose slices are missing.
    """
    for name, value in (("max_cases", max_cases), ("samples_per_case", samples_per_case)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                                  or value < 1):
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    import tensorflow_datasets as tfds

    if isinstance(dataset_or_builder, str):
        builder = tfds.builder(dataset_or_builder, data_dir=data_dir)
    elif isinstance(dataset_or_builder, tfds.core.DatasetBuilder):
        builder = dataset_or_builder
    else:
        raise ValueError(
            "dataset_or_builder must be a tfds DatasetBuilder or a registered builder name, "
            f"got {type(dataset_or_builder).__name__}"
        )
    modality = _builder_modality(builder, modality)
    available = list(builder.info.splits.keys())
    if split is None:
        splits = sorted(s for s in available if s != "unlabeled")
    elif isinstance(split, str):
        splits = [split]
    else:
        splits = list(split)
    unknown = [s for s in splits if s not in available]
    if not splits or unknown:
        raise ValueError(f"split: {unknown or splits} not among the builder's {available}")
    features = builder.info.features
    mask_key = "label" if "label" in features else "mask"
    is_slices = "slice_index" in features
    rng = np.random.default_rng(seed)
    cases: dict[str, _CaseAccumulator] = {}
    for name in splits:
        dataset = builder.as_dataset(split=name, shuffle_files=False)
        for example in tfds.as_numpy(dataset):
            if is_slices or mask_key == "label":
                case_id = example["patient_id"].decode()
            else:
                case_id = example["image_id"].decode() if "image_id" in example else (
                    f"{example['patient_id'].decode()}_{len(cases)}"
                )
            case = cases.get(case_id)
            if case is None:
                if max_cases is not None and len(cases) >= max_cases:
                    continue
                case = cases[case_id] = _CaseAccumulator(
                    case_id, _Reservoir(samples_per_case, rng)
                )
                if "spacing" in example:
                    case.spacing = tuple(float(v) for v in example["spacing"])
            image, mask = example["image"], example[mask_key]
            case.add(image, mask)
            if is_slices:
                case.slices += 1
                case.num_slices = int(example["num_slices"])
                case.plane_shape = image.shape
            elif mask_key == "label":
                case.volume_shape = image.shape
            else:
                case.plane_shape = image.shape
    if not cases:
        raise ValueError(f"split: {splits} hold no examples")
    stats = [case.stats() for case in cases.values()]
    pooled = np.concatenate([cases[s.case_id].reservoir.values for s in stats])
    config = getattr(builder, "builder_config", None)
    class_names = builder.info.metadata.get("class_names") if builder.info.metadata else None
    return Fingerprint(
        dataset={
            "name": builder.name,
            "version": str(builder.version),
            "config": None if config is None else config.name,
            "splits": splits,
        },
        modality=modality,
        class_names=None if class_names is None else [str(c) for c in class_names],
        cases=stats,
        foreground_intensity=_intensity_stats(pooled),
        foreground_fraction=_foreground_fraction(stats),
        samples_per_case=samples_per_case,
        seed=seed,
    )


def _intensity_stats(values: np.ndarray) -> dict[str, float] | None:
    if values.size == 0:
        return None
    values = values.astype(np.float64)
    low, median, high = np.percentile(values, PERCENTILES)
    return {
        "mean": float(values.mean()),
        "std": float(values.std()),
        "min": float(values.min()),
        "max": float(values.max()),
        "percentile_00_5": float(low),
        "percentile_50_0": float(median),
        "percentile_99_5": float(high),
    }


def _foreground_fraction(cases: Iterable[CaseStats]) -> dict[int, float]:
    totals: dict[int, int] = {}
    voxels = 0
    for case in cases:
        voxels += math.prod(case.shape)
        for label, count in case.label_voxels.items():
            totals[label] = totals.get(label, 0) + count
    return {label: count / voxels for label, count in sorted(totals.items()) if label > 0}
