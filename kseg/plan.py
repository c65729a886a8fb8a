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
    "MODALITIES",
    "Plan",
    "fingerprint",
    "measure_seconds_per_step",
    "plan",
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
            spacing (radiographs), and rules then work in pixels. Where examples carry an
            ``affine``, its :attr:`~kseg.io.Volume.plane_spacing`: the slice entry is the
            distance between slice planes, also on a sheared (gantry-tilted) grid.
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
        layout: ``"slices"`` (a 2D slice dataset, cases re-assembled into volumes),
            ``"volumes"`` (one example per volume) or ``"images"`` (one 2D image per case).
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
    layout: str = "volumes"
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
        """Read a fingerprint written by :meth:`save`.

        Raises:
            kseg.errors.UnreadableFileError: the file is not JSON, or not a fingerprint
                (keys missing or unknown, named in the message).
        """
        return _load_json_dataclass(cls, path, "a kseg fingerprint.json")


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
                case.spacing = _example_spacing(example)
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
        layout="slices" if is_slices else "volumes" if mask_key == "label" else "images",
        samples_per_case=samples_per_case,
        seed=seed,
    )


def _example_spacing(example) -> tuple[float, ...] | None:
    """An example's voxel size in mm; from its affine where it has one, as the distance
    between slice planes and the in-plane spacings: on a sheared (gantry-tilted) grid the
    ``spacing`` feature's column lengths overstate the slice spacing by 1 / cos(tilt)."""
    affine = example.get("affine")
    if affine is not None and np.shape(affine) == (4, 4):
        from kseg.io.volume import Volume

        return Volume(np.zeros((1, 1, 1)), affine, "").plane_spacing
    if "spacing" in example:
        return tuple(float(v) for v in example["spacing"])
    return None


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


# ---------------------------------------------------------------------------------------
# The plan: small named rules, each with its source.
# ---------------------------------------------------------------------------------------

NNUNET = "nnU-Net (Isensee et al., Nature Methods 18, 203-211, 2021)"
NNUNET_SUPP = f"{NNUNET}, Supplementary Information, 'rule-based parameters'"
ANISOTROPY_THRESHOLD = 3.0  # nnU-Net's ratio of spacings (and sizes) that marks anisotropy
MIN_FEATURE_MAP = 4  # nnU-Net: down-sample an axis while its feature map stays >= 4 voxels
MAX_DEPTH = 5  # kseg's cap on poolings (nnU-Net has none; see rule_depth)
# nnU-Net's initial patch: the target spacing's aspect ratio at 256**3 voxels (3D) or
# 2048**2 pixels (2D), clipped to the median shape.
INITIAL_PATCH_VOXELS = {2: 2048**2, 3: 256**3}
MIN_BATCH = 2  # nnU-Net: batch size at least 2
MAX_BATCH_DATASET_FRACTION = 0.05  # nnU-Net: one batch covers at most 5 % of the dataset
# Activations kept for back-propagation per U-Net stage: encoder and decoder, two 3x3 convs
# each, every conv keeping its output, the normalisation output and the activation output:
# 2 x 2 x 3 = 12 float32 tensors of the stage's channels per voxel at that stage. An
# estimate of kseg's own (not measured); gradients are transient and not counted.
TENSORS_PER_STAGE = 12
BYTES_PER_VALUE = 4
# Issue 9's measurement on the project's 2-core AMD AVX2 machine: a U-Net training step
# runs at 17-18 GFLOP per CPU-second; 2 cores -> ~34 GFLOP/s of wall time.
CPU_TRAINING_GFLOPS = 34.0
# kseg's measurement (session 16, this machine: 2 cores with AVX-512, TensorFlow 2 with
# oneDNN): a 2D U-Net training step (kseg.models unet_small, 16 base filters, Adam,
# DiceCELoss) ran at 104-124 GFLOP per CPU-second (rule_training_flops_per_voxel's count)
# at 96-192 pixels, depth 3-5, batch 8-16; x 2 cores -> ~220 GFLOP/s of wall time on a
# quiet machine. 2D CPU plans use it; 3D plans keep issue 9's CPU_TRAINING_GFLOPS.
CPU_2D_TRAINING_GFLOPS = 220.0
# Time kept back from the training budget for validation and checkpoints (kseg's choice).
TIME_RESERVE = 0.1
MAX_STEPS = 250_000  # nnU-Net: 1000 epochs x 250 iterations
# kseg's CPU rule (rule_cpu_input_size): passes over the training images the budget must
# afford at the chosen input size; and the shallowest U-Net it may shrink to (3 poolings:
# kseg's unet_small, the session-15 recipes' network). kseg's measurement (session 16,
# chaos phantom, 192 training slices resampled 512 -> 112, batch 20, Adam 1e-3 cosine):
# the whole-volume validation Dice passed 0.98 after 6 passes and peaked (0.988) after 9
# of 16; 20 keeps about twice that for data harder than the phantom.
CPU_MIN_PASSES = 20
MIN_CPU_DEPTH = 3


def rule_target_spacing(spacings: Sequence[Sequence[float]], shapes: Sequence[Sequence[int]]):
    """Median spacing per axis; on an anisotropic dataset the 10th percentile on the coarse axis.

    The coarse axis (largest median spacing) is anisotropic when its spacing exceeds
    ``ANISOTROPY_THRESHOLD`` times the coarsest other spacing and its median voxel count
    times the threshold is below the smallest other median voxel count. Its target spacing
    is then the 10th percentile of its spacings, but never finer than the coarsest other
    axis (then that axis's spacing + 1e-5 mm, as nnU-Net).

    Source: nnU-Net Supplementary Information and ``default_experiment_planner.py``
    (``determine_fullres_target_spacing``).
    """
    spacing = np.asarray(spacings, np.float64)
    target = np.median(spacing, axis=0)
    median_shape = np.median(np.asarray(shapes, np.float64), axis=0)
    worst = int(np.argmax(target))
    others = [a for a in range(target.size) if a != worst]
    if others:
        aniso_spacing = target[worst] > ANISOTROPY_THRESHOLD * max(target[others])
        aniso_voxels = median_shape[worst] * ANISOTROPY_THRESHOLD < min(median_shape[others])
        if aniso_spacing and aniso_voxels:
            tenth = float(np.percentile(spacing[:, worst], 10))
            coarsest_other = float(max(target[others]))
            target[worst] = tenth if tenth >= coarsest_other else coarsest_other + 1e-5
    return tuple(float(v) for v in target)


def rule_shape_at_spacing(shapes, spacings, target) -> tuple[int, ...]:
    """Median over cases of each case's shape resampled to ``target``, rounded.

    Source: nnU-Net ``default_experiment_planner.py`` (``new_shapes``, then the median).
    """
    shapes = np.asarray(shapes, np.float64)
    if spacings is not None:
        shapes = np.round(shapes * np.asarray(spacings, np.float64) / np.asarray(target))
    return tuple(int(v) for v in np.median(shapes, axis=0).round())


def rule_depth(patch_size: Sequence[int], max_depth: int = MAX_DEPTH) -> int:
    """Poolings until the smallest axis would fall below ``MIN_FEATURE_MAP`` voxels.

    ``depth = min(max_depth, min_axis floor(log2(size / 4)))``; kseg's U-Nets pool every
    axis together, so the smallest axis decides (nnU-Net pools each axis separately).
    Source: nnU-Net ``UNet_featuremap_min_edge_length = 4`` (default_experiment_planner.py).
    nnU-Net sets no depth cap; ``MAX_DEPTH = 5`` is kseg's, because kseg's U-Nets double
    the filters at every stage without nnU-Net's 320 / 512 cap.
    """
    per_axis = [int(math.floor(math.log2(max(size, 1) / MIN_FEATURE_MAP))) for size in patch_size]
    return max(0, min(max_depth, *per_axis))


def rule_filters(device: str, spatial_dims: int) -> tuple[int, int]:
    """``(base_filters, max_filters)``.

    GPU: 32 doubling per stage, capped at 320 in 3D and 512 in 2D (nnU-Net). CPU: 16 and
    half the caps: a convolution's cost grows with the square of its width, so half the
    filters is a quarter of the FLOPs per step and four times the steps within a CPU-minute
    budget (issue 9 measured U-Net training at 17-18 GFLOP per CPU-second). kseg's choice;
    its Dice cost is not measured yet.
    """
    cap = 320 if spatial_dims == 3 else 512
    return (32, cap) if device == "gpu" else (16, cap // 2)


def stage_filters(depth: int, base_filters: int, max_filters: int) -> list[int]:
    return [min(base_filters * 2**k, max_filters) for k in range(depth + 1)]


def rule_bytes_per_voxel(spatial_dims: int, depth: int, base_filters: int,
                         max_filters: int) -> float:
    """Training activation bytes per input voxel of one patch.

    ``BYTES_PER_VALUE * TENSORS_PER_STAGE * sum_k f_k / 2**(spatial_dims * k)``, stage
    ``k`` having ``f_k`` channels at ``1 / 2**(spatial_dims * k)`` of the voxels. kseg's own
    estimate (see ``TENSORS_PER_STAGE``).
    """
    filters = stage_filters(depth, base_filters, max_filters)
    channels = sum(f / 2 ** (spatial_dims * k) for k, f in enumerate(filters))
    return BYTES_PER_VALUE * TENSORS_PER_STAGE * channels


def rule_patch_size(median_shape: Sequence[int], spatial_dims: int, memory_budget_mb: float,
                    base_filters: int, max_filters: int, max_depth: int = MAX_DEPTH,
                    target_spacing: Sequence[float] | None = None):
    """``(patch_size, depth)``: the median shape, shrunk until a batch of 2 fits the budget.

    The patch starts at the median shape at target spacing, clipped to
    ``INITIAL_PATCH_VOXELS`` in the target spacing's aspect ratio (``target_spacing``
    ``None``: isotropic), each axis rounded up to a multiple of ``2**depth``. While
    ``MIN_BATCH`` patches need more than the budget (:func:`rule_bytes_per_voxel`), the axis
    with the largest patch / median-shape ratio loses ``2**depth`` voxels and the depth is
    recomputed. Source: nnU-Net ``default_experiment_planner.py``
    (``get_plans_for_configuration``: the same start and loop, there against a VRAM
    estimate of the instantiated network).

    Raises:
        ValueError: ``memory_budget_mb`` cannot hold even a patch of ``2**depth`` voxels
            per axis.
    """
    median = np.asarray(median_shape, np.float64)
    inverse = 1 / np.asarray(target_spacing or [1.0] * spatial_dims, np.float64)
    scale = (INITIAL_PATCH_VOXELS[spatial_dims] / np.prod(inverse)) ** (1 / spatial_dims)
    patch = [min(int(round(v)), int(s)) for v, s in zip(inverse * scale, median_shape,
                                                         strict=True)]
    budget = memory_budget_mb * 2**20
    # a U-Net pools at least once where the data allows it (the recipes refuse --depth 0)
    least_depth = min(1, rule_depth(patch, max_depth))
    while True:
        depth = rule_depth(patch, max_depth)
        step = 2**depth
        patch = [int(math.ceil(s / step) * step) for s in patch]
        per_voxel = rule_bytes_per_voxel(spatial_dims, depth, base_filters, max_filters)
        if depth < least_depth:
            raise ValueError(
                f"memory_budget_mb={memory_budget_mb} cannot hold a batch of {MIN_BATCH} "
                f"patches of a U-Net with one pooling (at least {2 * MIN_FEATURE_MAP} voxels "
                "per axis); give more memory"
            )
        if MIN_BATCH * math.prod(patch) * per_voxel <= budget:
            return tuple(patch), depth
        axis = int(np.argmax(np.asarray(patch) / median))
        if patch[axis] <= step:
            raise ValueError(
                f"memory_budget_mb={memory_budget_mb} cannot hold a batch of {MIN_BATCH} "
                f"patches of {patch} voxels ({MIN_BATCH * math.prod(patch) * per_voxel / 2**20:.0f}"
                " MB); give more memory"
            )
        patch[axis] -= step


def rule_batch_size(patch_size: Sequence[int], bytes_per_voxel: float, memory_budget_mb: float,
                    dataset_voxels: int) -> int:
    """As many patches as the memory budget holds, at least 2, at most 5 % of the dataset.

    ``max(2, min(floor(budget / (patch voxels * bytes_per_voxel)),
    round(0.05 * dataset voxels / patch voxels)))``, the dataset's voxels counted as
    nnU-Net does: median shape at target spacing times the number of cases. Source: nnU-Net
    ``default_experiment_planner.py`` (``UNet_min_batch_size = 2``,
    ``max_dataset_covered = 0.05``).
    """
    voxels = math.prod(patch_size)
    fits = int(memory_budget_mb * 2**20 // (voxels * bytes_per_voxel))
    covers = round(MAX_BATCH_DATASET_FRACTION * dataset_voxels / voxels)
    return max(MIN_BATCH, min(fits, covers))


def rule_normalization(fp: Fingerprint) -> dict:
    """CT: clip to the foreground 0.5 / 99.5 percentiles, z-score with the foreground mean
    and std. MR and X-ray: z-score each image with its own mean and std.

    Source: nnU-Net paper, Methods ("intensity normalization"; ``CTNormalization`` and
    ``ZScoreNormalization`` in nnunetv2/preprocessing/normalization).
    """
    if fp.modality == "CT":
        stats = fp.foreground_intensity
        if stats is None:
            raise ValueError("fingerprint: no foreground voxels, CT normalisation needs them")
        return {
            "scheme": "ct",
            "clip": [stats["percentile_00_5"], stats["percentile_99_5"]],
            "mean": stats["mean"],
            "std": max(stats["std"], 1e-8),
        }
    return {"scheme": "zscore_per_image"}


def rule_optimizer(device: str) -> dict:
    """GPU: nnU-Net's SGD, Nesterov momentum 0.99, learning rate 0.01, weight decay 3e-5, poly decay
    ``(1 - step / steps) ** 0.9`` (nnU-Net paper, Methods). CPU: Adam 1e-3 with cosine
    decay after a linear warm-up over 5 % of the steps: nnU-Net's schedule is tuned for
    250,000 steps, a CPU budget gives a few thousand, where Adam's per-weight step sizes
    make faster early progress. Cosine: Loshchilov & Hutter, ICLR 2017; warm-up: Goyal et
    al. 2017. kseg's choice for CPU, not yet measured against SGD on kseg's data.
    """
    if device == "gpu":
        return {"name": "SGD", "learning_rate": 0.01, "momentum": 0.99, "nesterov": True,
                "weight_decay": 3e-5,
                "schedule": "poly", "poly_exponent": 0.9, "warmup_fraction": 0.0}
    return {"name": "Adam", "learning_rate": 1e-3, "schedule": "cosine",
            "warmup_fraction": 0.05}


def class_name_list(class_names) -> list[str] | None:
    """``class_names`` as a list of names (``None`` stays ``None``).

    Raises:
        ValueError: a single string: read letter by letter, ``"lung_left"`` says neither
            left nor right, and the left-right axis would be mirrored.
    """
    if class_names is None:
        return None
    if isinstance(class_names, (str, bytes)):
        raise ValueError(
            f"class_names must be a sequence of class names, got the single name "
            f"{class_names!r}; pass [{class_names!r}]"
        )
    return [str(name) for name in class_names]


def rule_mirror_axes(
    spatial_dims: int, class_names, modality: str | None = None
) -> tuple[int, ...]:
    """Spatial axes mirrored in training and test-time augmentation.

    All axes (nnU-Net mirrors every axis in training and in inference), except the last
    (left-right) axis when a class name says "left" or "right": mirroring would swap those
    labels (kseg's rule); none for a radiograph (``modality`` ``"XRAY"``), which is always
    shown one way up with the heart on the image's right, and which kseg's X-ray recipe
    therefore trains without flips (kseg's rule).
    """
    if modality is not None and modality.upper() == "XRAY":
        return ()
    axes = tuple(range(spatial_dims))
    names = " ".join(class_name_list(class_names) or []).lower()
    if "left" in names or "right" in names:
        axes = axes[:-1]
    return axes


def rule_augmentation(patch_size: Sequence[int], modality: str, mirror_axes) -> dict:
    """nnU-Net's default augmentation probabilities and ranges.

    Rotation ±180° for a 2D patch whose sides differ by at most 1.5x, ±15° for a longer
    one, ±30° in 3D, each with probability 0.2; scaling 0.7-1.4 (0.2); gaussian noise up to
    variance 0.1 (0.1); gaussian blur sigma 0.5-1 (0.2); brightness x0.75-1.25 (0.15);
    contrast 0.75-1.25 (0.15); low-resolution simulation 0.5-1 (0.25); gamma 0.7-1.5 (0.3);
    mirroring 0.5 per axis. Source: nnU-Net Supplementary Information ("data augmentation") and
    nnunetv2 ``nnUNetTrainer`` (``configure_rotation_dummyDA_mirroring_and_inital_patch_size``,
    ``get_training_transforms``). X-ray: ±15° whatever the patch, since radiographs are
    taken upright (kseg's rule).
    """
    if len(patch_size) == 3:
        rotation = 30.0
    else:
        rotation = 15.0 if max(patch_size) / min(patch_size) > 1.5 else 180.0
    if modality == "XRAY":
        rotation = 15.0
    return {
        "rotation_degrees": rotation, "p_rotation": 0.2,
        "scale": [0.7, 1.4], "p_scale": 0.2,
        "noise_variance": 0.1, "p_noise": 0.1,
        "blur_sigma": [0.5, 1.0], "p_blur": 0.2,
        "brightness": [0.75, 1.25], "p_brightness": 0.15,
        "contrast": [0.75, 1.25], "p_contrast": 0.15,
        "low_resolution": [0.5, 1.0], "p_low_resolution": 0.25,
        "gamma": [0.7, 1.5], "p_gamma": 0.3,
        "mirror_axes": list(mirror_axes), "p_mirror": 0.5,
    }


def rule_training_flops_per_voxel(spatial_dims: int, depth: int, base_filters: int,
                                  max_filters: int, in_channels: int = 1) -> float:
    """FLOPs of one training step per input voxel of a U-Net.

    Each stage has two 3x3(x3) convolutions in the encoder (``f_{k-1} -> f_k``,
    ``f_k -> f_k``) and, above the bottleneck, two in the decoder (``2 f_k -> f_k``,
    ``f_k -> f_k``); a multiply-add is 2 FLOPs; training costs 3 forward passes
    (backward ~ 2x forward). Pooling, up-sampling and the head are left out. kseg's own
    estimate.
    """
    kernel = 3**spatial_dims
    filters = stage_filters(depth, base_filters, max_filters)
    macs = 0.0
    for k, f in enumerate(filters):
        previous = in_channels if k == 0 else filters[k - 1]
        stage = previous * f + f * f
        if k < depth:
            stage += 2 * f * f + f * f
        macs += kernel * stage / 2 ** (spatial_dims * k)
    return 3 * 2 * macs


def rule_cpu_input_size(median_plane: Sequence[int], training_examples: int,
                        time_budget_minutes: float, base_filters: int,
                        max_depth: int = MAX_DEPTH, min_passes: int = CPU_MIN_PASSES,
                        gflops: float = CPU_2D_TRAINING_GFLOPS) -> tuple[tuple[int, int], int]:
    """``((side, side), depth)``: the 2D input a CPU budget can train, images resampled to it.

    The largest side ``s`` (a multiple of ``2**depth(s)``, :func:`rule_depth`, at most the
    median shape's larger side, at least ``2**MIN_CPU_DEPTH * MIN_FEATURE_MAP``) for which
    ``min_passes`` passes over ``training_examples`` images of ``s x s`` pixels fit the
    budget less ``TIME_RESERVE``: ``min_passes * training_examples * s**2 *
    rule_training_flops_per_voxel(2, depth(s), base_filters, no cap) / (gflops * 1e9)
    <= minutes * 60 * (1 - TIME_RESERVE)``; kseg's U-Nets do not cap the filters. The
    smallest side when even that does not fit.

    kseg's rule, not nnU-Net's: nnU-Net trains its full-resolution patch for 1000 epochs
    on a GPU; a few CPU-minutes train a 512 x 512 CT slice set (chaos phantom, 192
    training slices) for about one pass, too few to learn. kseg's measurement (session
    16): see ``CPU_MIN_PASSES`` and ``CPU_2D_TRAINING_GFLOPS``.
    """
    if isinstance(training_examples, bool) or not isinstance(training_examples, int) \
            or training_examples < 1:
        raise ValueError(f"training_examples must be a positive integer, got {training_examples!r}")
    budget = time_budget_minutes * 60 * (1 - TIME_RESERVE) * gflops * 1e9
    smallest = 2**MIN_CPU_DEPTH * MIN_FEATURE_MAP
    largest = max(int(max(median_plane)), smallest)
    candidates = [s for s in range(largest, smallest - 1, -1)
                  if s % 2 ** rule_depth((s, s), max_depth) == 0]
    for side in candidates:
        depth = rule_depth((side, side), max_depth)
        flops = rule_training_flops_per_voxel(2, depth, base_filters, 2**30)
        if min_passes * training_examples * side * side * flops <= budget:
            return (side, side), depth
    side = candidates[-1]
    return (side, side), rule_depth((side, side), max_depth)


def rule_training_steps(time_budget_minutes: float, seconds_per_step: float) -> int:
    """Optimizer steps that fit the time budget, after 10 % kept for validation.

    ``min(250000, floor(minutes * 60 * 0.9 / seconds_per_step))``; the cap is nnU-Net's
    1000 epochs of 250 steps. The reserve is kseg's choice.
    """
    steps = int(time_budget_minutes * 60 * (1 - TIME_RESERVE) // seconds_per_step)
    return max(1, min(MAX_STEPS, steps))


@dataclasses.dataclass
class Plan:
    """A training recipe derived from a :class:`Fingerprint` (see :func:`plan`).

    ``rules`` maps every setting to the rule that set it and that rule's source.
    """

    dataset: dict
    modality: str
    device: str
    spatial_dims: int
    target_spacing: tuple[float, ...] | None
    median_shape: tuple[int, ...]
    patch_size: tuple[int, ...]
    depth: int
    base_filters: int
    max_filters: int
    batch_size: int
    memory_estimate_mb: float
    model: str
    deep_supervision: bool
    normalization: dict
    loss: dict
    optimizer: dict
    augmentation: dict
    tta_mirror_axes: tuple[int, ...]
    postprocessing: dict
    seconds_per_step: float
    training_steps: int
    rules: dict[str, str]

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping) -> Plan:
        data = dict(data)
        for key in ("median_shape", "patch_size", "tta_mirror_axes"):
            data[key] = tuple(int(v) for v in data[key])
        if data["target_spacing"] is not None:
            data["target_spacing"] = tuple(float(v) for v in data["target_spacing"])
        return cls(**data)

    def save(self, path: os.PathLike | str) -> None:
        """Write the plan as JSON, atomically (tmp file + rename)."""
        with atomic_output(path) as temporary:
            with open(temporary, "w", encoding="utf-8") as handle:
                json.dump(self.to_dict(), handle, indent=1)

    @classmethod
    def load(cls, path: os.PathLike | str) -> Plan:
        """Read a plan written by :meth:`save`.

        Raises:
            kseg.errors.UnreadableFileError: the file is not JSON, or not a plan (keys
                missing or unknown, named in the message: a ``config.json`` or
                ``fingerprint.json`` given for ``plan.json``, a file edited by hand).
        """
        return _load_json_dataclass(cls, path, "a kseg plan.json")


def _load_json_dataclass(cls, path, what: str):
    """``cls.from_dict`` of the JSON object in ``path``; a file that is not JSON, or whose
    keys are not ``cls``'s fields, is an :class:`~kseg.errors.UnreadableFileError` naming
    the file, the missing and the unknown keys."""
    from kseg.errors import UnreadableFileError

    with open(path, encoding="utf-8") as handle:
        try:
            data = json.load(handle)
        except ValueError as error:
            raise UnreadableFileError(path, f"not JSON ({error}); expected {what}") from None
    if not isinstance(data, dict):
        raise UnreadableFileError(path, f"holds a JSON {type(data).__name__}; expected {what}")
    fields = {f.name for f in dataclasses.fields(cls)}
    required = {f.name for f in dataclasses.fields(cls)
                if f.default is dataclasses.MISSING}
    missing, unknown = sorted(required - data.keys()), sorted(data.keys() - fields)
    if missing or unknown:
        said = "; ".join(part for part in (
            f"missing keys {missing}" if missing else "",
            f"unknown keys {unknown}" if unknown else "") if part)
        raise UnreadableFileError(
            path, f"{said}: expected {what} (written by this kseg version; derive it again)"
        )
    try:
        return cls.from_dict(data)
    except (KeyError, TypeError, ValueError, AttributeError) as error:
        raise UnreadableFileError(
            path, f"a value of the wrong type ({type(error).__name__}: {error}); expected {what}"
        ) from None


MODELS = ("unet", "unet_plus_plus", "attention_unet", "res_unet")


def measure_seconds_per_step(p: Plan, *, steps: int = 3, seed: int = 0) -> float:
    """Median wall-clock seconds of one training step of the plan's model, measured here.

    Builds ``p.model`` (``p.depth``, ``p.base_filters``, deep supervision as planned) for
    one-channel ``p.patch_size`` patches with one sigmoid output, compiles it with the
    plan's optimiser and :class:`kseg.losses.DiceCELoss` (no XLA: issue 9 measured
    ``jit_compile`` 2x slower on CPU), runs one untimed step (tracing), then times
    ``steps`` steps on a random batch of ``p.batch_size``. A multi-class head costs a
    little more than the one-output head timed here. Imports TensorFlow.
    """
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive integer, got {steps!r}")
    import time

    import keras

    from kseg.losses import DiceCELoss
    from kseg.models import build
    from kseg.training import build_optimizer

    keras.utils.set_random_seed(seed)
    kwargs = {"deep_supervision": True} if p.deep_supervision else {}
    model = build(p.model, input_shape=(*p.patch_size, 1), num_classes=1, depth=p.depth,
                  base_filters=p.base_filters, **kwargs)
    if p.optimizer["name"] == "SGD":
        optimizer = keras.optimizers.SGD(p.optimizer["learning_rate"],
                                         momentum=p.optimizer["momentum"], nesterov=True,
                                         weight_decay=p.optimizer["weight_decay"])
    else:
        optimizer = keras.optimizers.Adam(p.optimizer["learning_rate"])
    outputs = len(model.outputs)
    model.compile(optimizer=optimizer, loss=[DiceCELoss() for _ in range(outputs)],
                  jit_compile=False)
    build_optimizer(model)
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((p.batch_size, *p.patch_size, 1)).astype(np.float32)
    y = (rng.random((p.batch_size, *p.patch_size, 1)) > 0.5).astype(np.float32)
    targets = [y] * outputs if outputs > 1 else y
    model.train_on_batch(x, targets)
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        model.train_on_batch(x, targets)
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def _positive(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0 \
            or not math.isfinite(value):
        raise ValueError(f"{name} must be a positive finite number, got {value!r}")
    return float(value)


def plan(
    fp: Fingerprint,
    *,
    memory_budget_mb: float,
    time_budget_minutes: float,
    device: str = "cpu",
    seconds_per_step: float | str | None = None,
    spatial_dims: int | None = None,
    model: str = "unet",
    max_depth: int = MAX_DEPTH,
    training_examples: int | None = None,
) -> Plan:
    """Derive a :class:`Plan` from a fingerprint by the ``rule_*`` functions of this module.

    Args:
        fp: a :class:`Fingerprint` (or the path of its JSON file).
        memory_budget_mb: memory for training activations (GPU memory, or RAM on CPU).
        time_budget_minutes: wall-clock training budget; sets the number of steps.
        device: ``"cpu"`` or ``"gpu"``.
        seconds_per_step: a measured time per step; ``"measure"`` times the planned model
            here (:func:`measure_seconds_per_step`, imports TensorFlow); ``None`` on CPU
            estimates it from :func:`rule_training_flops_per_voxel` and
            ``CPU_2D_TRAINING_GFLOPS`` (2D, kseg's measurement) or ``CPU_TRAINING_GFLOPS``
            (3D, issue 9's measurement); a GPU plan needs it given or
            measured.
        spatial_dims: 2 or 3; default 2 for slice datasets and radiographs, 3 for volumes.
        model: a kseg.models name; ``"unet_plus_plus"`` gets deep supervision.
        max_depth: most poolings.
        training_examples: 2D training images (slices or radiographs); on CPU with
            ``spatial_dims=2`` the input is then resampled to what the time budget can
            train (:func:`rule_cpu_input_size`) when that is smaller than the memory rule's
            patch; ``None`` keeps nnU-Net's patch.

    Raises:
        ValueError: a bad argument, named in the message.
    """
    if isinstance(fp, (str, os.PathLike)):
        fp = Fingerprint.load(fp)
    if not isinstance(fp, Fingerprint):
        raise ValueError(f"fp must be a Fingerprint or its JSON path, got {type(fp).__name__}")
    memory_budget_mb = _positive("memory_budget_mb", memory_budget_mb)
    time_budget_minutes = _positive("time_budget_minutes", time_budget_minutes)
    if device not in ("cpu", "gpu"):
        raise ValueError(f"device must be 'cpu' or 'gpu', got {device!r}")
    if model not in MODELS:
        raise ValueError(f"model must be one of {MODELS}, got {model!r}")
    if isinstance(max_depth, bool) or not isinstance(max_depth, int) or max_depth < 0:
        raise ValueError(f"max_depth must be a non-negative integer, got {max_depth!r}")
    case_dims = fp.spatial_dims
    if spatial_dims is None:
        spatial_dims = 3 if fp.layout == "volumes" else 2
    if spatial_dims not in (2, 3) or spatial_dims > case_dims:
        raise ValueError(
            f"spatial_dims must be 2 or 3 and at most the cases' {case_dims} axes, "
            f"got {spatial_dims!r}"
        )
    measure = isinstance(seconds_per_step, str) and seconds_per_step == "measure"
    if seconds_per_step is None and device == "gpu":
        raise ValueError("seconds_per_step: a GPU plan needs it given or 'measure'")
    if measure:
        seconds_per_step = None
    elif seconds_per_step is not None:
        seconds_per_step = _positive("seconds_per_step", seconds_per_step)

    shapes = [case.shape for case in fp.cases]
    known = all(case.spacing is not None for case in fp.cases)
    spacings = [case.spacing for case in fp.cases] if known else None
    if known:
        target = rule_target_spacing(spacings, shapes)
        median_shape = rule_shape_at_spacing(shapes, spacings, target)
    else:
        target, median_shape = None, rule_shape_at_spacing(shapes, None, None)
    # A 2D model on volumes trains on the in-plane (last two) axes.
    plane = slice(case_dims - spatial_dims, None)
    if target is not None:
        target = target[plane]
    base, cap = rule_filters(device, spatial_dims)
    patch, depth = rule_patch_size(median_shape[plane], spatial_dims, memory_budget_mb, base,
                                   cap, max_depth, target)
    dataset_voxels = math.prod(median_shape) * len(shapes)  # nnU-Net's approximation
    cpu_resampled = False
    if training_examples is not None and device == "cpu" and spatial_dims == 2:
        cpu_patch, cpu_depth = rule_cpu_input_size(
            median_shape[plane], training_examples, time_budget_minutes, base, max_depth
        )
        if math.prod(cpu_patch) < math.prod(patch):
            # the images are resampled to the smaller input: the dataset shrinks with them
            factor = math.prod(cpu_patch) / math.prod(median_shape[plane])
            dataset_voxels = dataset_voxels * factor
            if target is not None:
                target = tuple(float(t * m / p) for t, m, p in
                               zip(target, median_shape[plane], cpu_patch, strict=True))
            patch, depth, cpu_resampled = cpu_patch, cpu_depth, True
            cap = max(cap, base * 2**depth)  # kseg's U-Nets do not cap the filters
    per_voxel = rule_bytes_per_voxel(spatial_dims, depth, base, cap)
    batch = rule_batch_size(patch, per_voxel, memory_budget_mb, dataset_voxels)
    estimated = seconds_per_step is None
    if estimated:  # a first value; a measured one replaces it below
        flops = rule_training_flops_per_voxel(spatial_dims, depth, base, cap)
        rate = CPU_2D_TRAINING_GFLOPS if spatial_dims == 2 else CPU_TRAINING_GFLOPS
        seconds_per_step = batch * math.prod(patch) * flops / (rate * 1e9)
    mirror = rule_mirror_axes(spatial_dims, fp.class_names, fp.modality)
    result = Plan(
        dataset=dict(fp.dataset),
        modality=fp.modality,
        device=device,
        spatial_dims=spatial_dims,
        target_spacing=target,
        median_shape=tuple(median_shape[plane]),
        patch_size=patch,
        depth=depth,
        base_filters=base,
        max_filters=cap,
        batch_size=batch,
        memory_estimate_mb=batch * math.prod(patch) * per_voxel / 2**20,
        model=model,
        deep_supervision=model == "unet_plus_plus",
        normalization=rule_normalization(fp),
        loss={"name": "kseg.losses.DiceCELoss", "source": NNUNET},
        optimizer=rule_optimizer(device),
        augmentation=rule_augmentation(patch, fp.modality, mirror),
        tta_mirror_axes=mirror,
        postprocessing={
            "rule": "keep the largest component per class where it raises validation Dice",
            "function": "kseg.evaluation.choose_postprocessing",
            "source": NNUNET,
        },
        seconds_per_step=seconds_per_step,
        training_steps=rule_training_steps(time_budget_minutes, seconds_per_step),
        rules={
            "target_spacing": f"rule_target_spacing: {NNUNET_SUPP}",
            "patch_size": ("rule_cpu_input_size: kseg, CPU_MIN_PASSES passes over the "
                           "training images must fit the time budget (images resampled "
                           "in-plane to it)" if cpu_resampled else
                           "rule_patch_size: nnU-Net default_experiment_planner.py"),
            "depth": f"rule_depth: {NNUNET_SUPP}",
            "filters": "rule_filters: nnU-Net (GPU); kseg, issue 9 measurement (CPU)",
            "batch_size": f"rule_batch_size: {NNUNET_SUPP}",
            "memory": "rule_bytes_per_voxel: kseg estimate",
            "normalization": f"rule_normalization: {NNUNET}",
            "loss": f"Dice + CE: {NNUNET}",
            "optimizer": "rule_optimizer: nnU-Net (GPU); kseg choice (CPU)",
            "deep_supervision": "unet_plus_plus only (nnU-Net supervises every decoder stage)",
            "augmentation": f"rule_augmentation: {NNUNET_SUPP}",
            "tta_mirror_axes": f"rule_mirror_axes: {NNUNET}; left/right classes, radiographs: kseg",
            "postprocessing": f"choose_postprocessing: {NNUNET}",
            "training_steps": "rule_training_steps: time budget / seconds per step "
            + ("(estimated: rule_training_flops_per_voxel / CPU_2D_TRAINING_GFLOPS, kseg's "
               "session-16 measurement)" if estimated and spatial_dims == 2 else
               "(estimated: rule_training_flops_per_voxel / CPU_TRAINING_GFLOPS, issue 9)"
               if estimated else "(given)"),
        },
    )
    if measure:
        measured = measure_seconds_per_step(result)
        result.seconds_per_step = measured
        result.training_steps = rule_training_steps(time_budget_minutes, measured)
        result.rules["training_steps"] = (
            "rule_training_steps: time budget / seconds per step (measured here by "
            "measure_seconds_per_step)"
        )
    return result
