"""Synthetic abdominal phantoms, written in a challenge's official on-disk layout.

Everything this module makes is SYNTHETIC: smooth random ellipsoids standing in for body,
fat, muscle, liver, spleen, kidneys and spine, with plausible CT numbers or MR signal and
noise. It exists so that examples, tests and the dataset builders' ``dummy_data/`` can run
the whole pipeline without the real data, whose licences forbid redistribution. Every file
written says so in its header (PatientName ``KSEG^PHANTOM``, ImageComments ``synthetic kseg
phantom``, Manufacturer ``kseg synthetic phantom``); it must never be presented as patient
data.

:func:`write_chaos` reproduces the CHAOS challenge layout (see
``tfds_builders/chaos/README.md``), including the traps of the real download: file names
and InstanceNumbers that do not run in slice-position order, while each ``Ground/*.png``
mask still belongs to the DICOM file of the same sorted-name rank, the rule of the
organisers' evaluation code. Mask files come in every encoding a reader meets
(:data:`CHAOS_MASK_ENCODINGS`: 1-bit PNG as the real CT download ships, 8- and 16-bit grey,
palettes, grey RGB(A), JPEG), by default a different one per patient, so one phantom tree
exercises them all. Regenerate the CHAOS builder's dummy data with::

    python -m kseg.phantoms.chaos tfds_builders/chaos/dummy_data --modality CT MR \\
        --num-patients 5 --num-slices 4 --size 32

Example:
    >>> hu, labels = abdominal_phantom((8, 64, 64), seed=1)
    >>> hu.dtype, labels.dtype, hu.shape
    (dtype('int16'), dtype('uint8'), (8, 64, 64))
    >>> bool((labels == PhantomLabel.LIVER).any())
    True

Reference:
    Kavur et al., "CHAOS Challenge - combined (CT-MR) healthy abdominal organ segmentation",
    Medical Image Analysis 69, 101950 (2021): the dataset layout and label values mimicked.
"""

from __future__ import annotations

import argparse
import dataclasses
import enum
import os
import pathlib
from collections.abc import Sequence

import numpy as np
import pydicom
from PIL import Image
from pydicom.uid import CTImageStorage, MRImageStorage, generate_uid
from tqdm import tqdm

from kseg._files import atomic_directory
from kseg.errors import LayoutError
from kseg.io.dicom_writer import new_dataset, set_grayscale_pixels
from kseg.phantoms._common import (
    IMPLEMENTATION_VERSION_NAME,
    SYNTHETIC_NOTICE,
    check_seed,
    scrambled_permutation,
)


class PhantomLabel(enum.IntEnum):
    """Tissue classes of :func:`abdominal_phantom`'s label map."""

    BACKGROUND = 0  # air outside the body
    FAT = 1  # subcutaneous fat
    MUSCLE = 2  # abdominal wall, paraspinal and psoas muscles
    SOFT_TISSUE = 3  # everything else inside the abdomen (bowel, vessels, spinal canal)
    LIVER = 4
    SPLEEN = 5
    RIGHT_KIDNEY = 6
    LEFT_KIDNEY = 7
    BONE = 8  # vertebra


# Mean CT numbers (HU) of unenhanced tissue; Hounsfield-scale textbook values.
ABDOMEN_CT_NUMBERS = {
    PhantomLabel.BACKGROUND: -1000.0,
    PhantomLabel.FAT: -100.0,
    PhantomLabel.MUSCLE: 40.0,
    PhantomLabel.SOFT_TISSUE: 20.0,
    PhantomLabel.LIVER: 60.0,
    PhantomLabel.SPLEEN: 50.0,
    PhantomLabel.RIGHT_KIDNEY: 30.0,
    PhantomLabel.LEFT_KIDNEY: 30.0,
    PhantomLabel.BONE: 450.0,
}

# Relative MR signal per sequence (scanner units) with the contrasts radiologists rely on:
# fat bright on T1, suppressed on T2-SPIR; spleen and kidneys bright on T2; marrow (fat and
# water in one voxel) darkened on opposed-phase T1.
MR_SIGNAL = {
    "T1_IN": (0, 900, 300, 350, 550, 420, 450, 450, 500),
    "T1_OUT": (0, 820, 290, 330, 520, 400, 430, 430, 230),
    "T2SPIR": (0, 60, 150, 350, 250, 560, 600, 600, 120),
}
MR_SEQUENCES = tuple(MR_SIGNAL)

# CHAOS Ground PNG values (MR): liver, right kidney, left kidney, spleen.
CHAOS_MR_MASK_VALUES = {
    PhantomLabel.LIVER: 63,
    PhantomLabel.RIGHT_KIDNEY: 126,
    PhantomLabel.LEFT_KIDNEY: 189,
    PhantomLabel.SPLEEN: 252,
}
CHAOS_CT_LIVER_VALUE = 255

CHAOS_MASK_ENCODINGS = {
    "1bit": "1-bit PNG (mode '1'), as the real CHAOS CT Ground files are; binary only",
    "8bit": "8-bit grey PNG: 0 / 255 (CT), the grey levels (MR)",
    "8bit_01": "8-bit grey PNG holding 0 / 1; binary only",
    "16bit": "16-bit grey PNG: 0 / 65535 (CT), the grey levels times 257 (MR)",
    "16bit_01": "16-bit grey PNG holding 0 / 1; binary only",
    "palette_grey": "palette PNG of grey entries in reverse order (index is not the value)",
    "palette_index": "palette PNG, entry 0 black, the others colours; the index is 1 (CT) or the "
    "grey level (MR)",
    "rgb": "RGB PNG with three equal channels",
    "rgba": "RGBA PNG with three equal channels and opaque alpha",
    "jpg": "JPEG (quality 95) of the 0 / 255 mask, suffix .jpg; binary only, lossy",
}
"""Mask encodings :func:`write_chaos` writes; the value is what each one stores."""

_BINARY_ONLY_ENCODINGS = frozenset({"1bit", "8bit_01", "16bit_01", "jpg"})
# The default encoding of patient k is entry k % len of its modality's cycle: every lossless
# encoding appears in a tree of enough patients, and patient 0 of CT gets the real format.
# JPEG is left out of the default because it cannot round-trip a mask exactly.
_DEFAULT_ENCODING_CYCLE = {
    "CT": ("1bit", "8bit", "16bit", "palette_grey", "8bit_01", "palette_index", "rgb",
           "16bit_01", "rgba"),
    "MR": ("8bit", "16bit", "palette_grey", "palette_index", "rgb", "rgba"),
}
# Stored grey values of each modality's labels, background first (palette encodings).
_MASK_LEVELS = {
    "CT": (0, CHAOS_CT_LIVER_VALUE),
    "MR": (0, *CHAOS_MR_MASK_VALUES.values()),
}

# Training patient numbers of the real CHAOS download; the phantom uses the same
# non-contiguous numbers so that readers meet the "10" < "2" sorting trap.
CHAOS_CT_PATIENTS = (1, 2, 5, 6, 8, 10, 14, 16, 18, 19, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30)
CHAOS_MR_PATIENTS = (1, 2, 3, 5, 8, 10, 13, 15, 19, 20, 21, 22, 31, 32, 33, 34, 36, 37, 38, 39)

_REFERENCE_VOXEL_MM3 = 3.0 * 0.75 * 0.75
_REFERENCE_NOISE_HU = 12.0
_MR_NOISE_SIGMA = 15.0


def abdominal_phantom(
    shape: Sequence[int] = (24, 256, 256),
    spacing: Sequence[float] = (3.0, 0.75, 0.75),
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """A synthetic axial CT of the upper abdomen and its tissue label map.

    Array axes are ``(z, y, x)`` with z running from feet (index 0) to head, rows from
    anterior to posterior and columns from the patient's right to left (the radiological
    view of a DICOM axial slice), so the liver lies at low column indices. In-plane the
    anatomy is laid out in millimetres relative to the field of view ``shape * spacing``
    (anisotropic pixels do not distort it); along z it spans the volume's extent, with the
    liver appearing a few slices below the top and ending well above the bottom, and the
    kidneys in the lower half. Each seed perturbs every organ smoothly (centre, size,
    rotation, craniocaudal extent and low-order boundary harmonics drifting along z).

    CT numbers are :data:`ABDOMEN_CT_NUMBERS` (unenhanced tissue) plus a per-patient offset of at
    most 4 HU per organ and white Gaussian noise of 12 HU at a 0.75 x 0.75 x 3 mm voxel,
    scaled by one over the square root of the voxel volume: photon counting at a fixed
    dose, a simplification of Brooks and Di Chiro's sigma^2 ~ 1 / (w^3 h).

    Args:
        shape: ``(z, y, x)`` voxels, each at least 1.
        spacing: ``(z, y, x)`` voxel size in mm, each positive.
        seed: non-negative integer; the same seed, shape and spacing give identical arrays.

    Returns:
        ``(hu, labels)``: ``int16`` CT numbers clipped to ``[-1024, 3071]`` and a ``uint8``
        map of :class:`PhantomLabel` values, both of ``shape``.

    Example:
        >>> hu, labels = abdominal_phantom((4, 32, 32), spacing=(5.0, 12.0, 12.0), seed=3)
        >>> sorted(PhantomLabel(v).name for v in np.unique(labels))[:3]
        ['BACKGROUND', 'BONE', 'FAT']

    Reference:
        Brooks and Di Chiro, "Statistical limitations in x-ray reconstructive tomography",
        Medical Physics 3(4), 237-240 (1976): CT noise against voxel size at fixed dose.
    """
    shape, spacing, seed = _check_geometry(shape, spacing, seed)
    rng = np.random.default_rng([seed, 0x6B736567])  # second word: "kseg"
    labels = _phantom_labels(shape, spacing, rng)
    means = np.array([ABDOMEN_CT_NUMBERS[label] for label in PhantomLabel], dtype=np.float32)
    organ_offsets = rng.uniform(-4.0, 4.0, size=means.shape).astype(np.float32)
    organ_offsets[PhantomLabel.BACKGROUND] = 0.0
    voxel_mm3 = float(np.prod(spacing))
    sigma = _REFERENCE_NOISE_HU * np.sqrt(_REFERENCE_VOXEL_MM3 / voxel_mm3)
    hu = (means + organ_offsets)[labels]
    hu += rng.standard_normal(shape, dtype=np.float32) * np.float32(sigma)
    np.clip(np.rint(hu, out=hu), -1024, 3071, out=hu)
    return hu.astype(np.int16), labels


def mr_signal(labels: np.ndarray, sequence: str, seed: int = 0) -> np.ndarray:
    """Synthetic MR magnitude signal for a phantom label map.

    Tissue signal follows :data:`MR_SIGNAL` for the sequence; noise is Rician (the
    magnitude of a complex signal with Gaussian noise of sigma 15 in each channel), so air
    is a low positive floor, as on a real magnitude image.

    Args:
        labels: ``uint8`` map of :class:`PhantomLabel` values, any shape.
        sequence: one of ``"T1_IN"``, ``"T1_OUT"`` (T1 dual echo in / opposed phase) or
            ``"T2SPIR"`` (fat-suppressed T2).
        seed: non-negative integer seed of the noise.

    Returns:
        ``uint16`` signal of the shape of ``labels``, at most 4095 (12-bit).

    Example:
        >>> labels = np.full((2, 2), PhantomLabel.FAT, dtype=np.uint8)
        >>> bool(mr_signal(labels, "T1_IN").mean() > mr_signal(labels, "T2SPIR").mean())
        True

    Reference:
        Gudbjartsson and Patz, "The Rician distribution of noisy MRI data", Magnetic
        Resonance in Medicine 34(6), 910-914 (1995).
    """
    if sequence not in MR_SIGNAL:
        raise ValueError(f"sequence must be one of {MR_SEQUENCES}, got {sequence!r}")
    labels = np.asarray(labels)
    if labels.size and int(labels.max()) >= len(PhantomLabel):
        raise ValueError(f"labels hold {int(labels.max())}, not a PhantomLabel value")
    rng = np.random.default_rng([check_seed(seed), MR_SEQUENCES.index(sequence)])
    clean = np.asarray(MR_SIGNAL[sequence], dtype=np.float32)[labels]
    real = clean + rng.standard_normal(labels.shape, dtype=np.float32) * _MR_NOISE_SIGMA
    imaginary = rng.standard_normal(labels.shape, dtype=np.float32) * _MR_NOISE_SIGMA
    magnitude = np.rint(np.hypot(real, imaginary))
    return np.clip(magnitude, 0, 4095).astype(np.uint16)


@dataclasses.dataclass(frozen=True)
class ChaosPhantomCase:
    """One synthetic CHAOS patient, as :func:`write_chaos` writes it.

    Attributes:
        patient: the patient folder name (a CHAOS training patient number).
        labels: ``uint8`` :class:`PhantomLabel` map ``(z, y, x)``, z from feet to head.
        spacing: ``(z, y, x)`` voxel size in mm, exactly as written to the headers.
        origin: DICOM LPS position (mm) of the centre of voxel ``(0, 0, 0)``; slice ``k``
            lies at ``origin + (0, 0, k * spacing[0])``.
        images: stored pixel values per series: ``{"CT": HU}`` for CT, ``{"T1_IN",
            "T1_OUT", "T2SPIR": signal}`` for MR.
        name_ranks: per series, the sorted-name rank of the file holding slice ``k``
            (a permutation that is deliberately not the identity).
        instance_numbers: per series, the InstanceNumber of slice ``k`` (also scrambled).
    """

    patient: str
    labels: np.ndarray
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    images: dict[str, np.ndarray]
    name_ranks: dict[str, np.ndarray]
    instance_numbers: dict[str, np.ndarray]


def chaos_phantom_case(
    modality: str, patient_index: int, *, num_slices: int, size: int, seed: int = 0
) -> ChaosPhantomCase:
    """The synthetic patient number ``patient_index`` of :func:`write_chaos`.

    Args:
        modality: ``"CT"`` or ``"MR"``.
        patient_index: 0-based position in the list of patients written.
        num_slices: slices per series.
        size: rows and columns per slice.
        seed: the ``seed`` given to :func:`write_chaos`.

    Example:
        >>> case = chaos_phantom_case("CT", 2, num_slices=4, size=32)
        >>> case.patient, case.labels.shape
        ('5', (4, 32, 32))
    """
    modality = _check_modality(modality)
    if isinstance(patient_index, bool) or not isinstance(patient_index, int) or patient_index < 0:
        raise ValueError(f"patient_index must be a non-negative integer, got {patient_index!r}")
    for name, value in (("num_slices", num_slices), ("size", size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    seed = check_seed(seed)
    numbers = CHAOS_CT_PATIENTS if modality == "CT" else CHAOS_MR_PATIENTS
    if patient_index < len(numbers):
        number = numbers[patient_index]
    else:
        number = numbers[-1] + 1 + patient_index - len(numbers)
    rng = np.random.default_rng([seed, number, 0 if modality == "CT" else 1])
    # Field of view and slice thickness in the ranges of the CHAOS acquisitions.
    if modality == "CT":
        field_of_view = rng.uniform(360.0, 405.0)
        thickness = float(rng.choice([2.5, 3.0, 3.2]))
    else:
        field_of_view = rng.uniform(360.0, 420.0)
        thickness = float(rng.choice([5.5, 7.0, 7.7, 8.0]))
    pixel = round(field_of_view / size, 6)
    spacing = (thickness, pixel, pixel)
    origin = (
        round(-(size - 1) / 2 * pixel, 4),
        round(-(size - 1) / 2 * pixel + rng.uniform(-20.0, 20.0), 4),
        round(rng.uniform(-450.0, -150.0), 4),
    )
    phantom_seed = int(rng.integers(2**31))
    hu, labels = abdominal_phantom((num_slices, size, size), spacing, seed=phantom_seed)
    if modality == "CT":
        images = {"CT": hu}
    else:
        images = {seq: mr_signal(labels, seq, seed=phantom_seed) for seq in MR_SEQUENCES}
    # T1 in- and opposed-phase share one Ground stack, so they share one name ranking.
    series_orders = ("CT",) if modality == "CT" else ("T1DUAL", "T2SPIR")
    name_ranks, instance_numbers = {}, {}
    for series in series_orders:
        ranks = scrambled_permutation(num_slices, rng)
        instances = scrambled_permutation(num_slices, rng, avoid=ranks) + 1
        keys = ("T1_IN", "T1_OUT") if series == "T1DUAL" else (series,)
        for key in keys:
            name_ranks[key] = ranks
            instance_numbers[key] = instances
    return ChaosPhantomCase(
        patient=str(number),
        labels=labels,
        spacing=spacing,
        origin=origin,
        images=images,
        name_ranks=name_ranks,
        instance_numbers=instance_numbers,
    )


def default_mask_encoding(modality: str, patient_index: int) -> str:
    """The mask encoding :func:`write_chaos` gives patient ``patient_index`` by default.

    Example:
        >>> [default_mask_encoding("CT", k) for k in range(3)]
        ['1bit', '8bit', '16bit']
    """
    cycle = _DEFAULT_ENCODING_CYCLE[_check_modality(modality)]
    return cycle[patient_index % len(cycle)]


def write_chaos(
    root: os.PathLike | str,
    *,
    modality: str = "CT",
    num_patients: int = 10,
    num_slices: int = 24,
    size: int = 512,
    seed: int = 0,
    mask_encoding: str | None = None,
    progress: bool = True,
) -> pathlib.Path:
    """Write synthetic patients in the layout of the CHAOS training download.

    CT (liver only; 1-bit PNGs in the real download)::

        root/Train_Sets/CT/<n>/DICOM_anon/i0000,0000b.dcm ...
        root/Train_Sets/CT/<n>/Ground/liver_GT_000.png ...   (.jpg for the "jpg" encoding)

    MR (masks 63 liver, 126 right kidney, 189 left kidney, 252 spleen)::

        root/Train_Sets/MR/<n>/T1DUAL/DICOM_anon/InPhase/IMG-0002-00002.dcm ...  (even)
        root/Train_Sets/MR/<n>/T1DUAL/DICOM_anon/OutPhase/IMG-0002-00001.dcm ... (odd)
        root/Train_Sets/MR/<n>/T1DUAL/Ground/IMG-0002-00002.png ...  (one stack, both phases)
        root/Train_Sets/MR/<n>/T2SPIR/DICOM_anon/IMG-0004-00001.dcm ...
        root/Train_Sets/MR/<n>/T2SPIR/Ground/IMG-0004-00001.png ...

    The i-th mask in sorted-name order is the mask of the i-th DICOM file in sorted-name
    order (per series folder), as in the challenge; neither file names nor InstanceNumbers
    run in ImagePositionPatient order. CT pixels are stored as ``uint16`` with
    RescaleIntercept -1024; MR pixels as ``uint16`` signal. UIDs come from
    ``pydicom.uid.generate_uid`` with seeded entropy, so the output is byte-for-byte
    deterministic. Each patient folder is written under a temporary name and renamed into
    place, so a patient is either complete or absent; existing patient folders are never
    touched (a :class:`~kseg.errors.LayoutError` is raised instead).

    Args:
        root: folder to write into (created if missing); pass it to the ``chaos`` builder
            as ``manual_dir``.
        modality: ``"CT"`` or ``"MR"``.
        num_patients: number of patients, at least 1; the builder's default 5 folds need 5.
        num_slices: slices per series, at least 1.
        size: rows and columns per slice, at least 8.
        seed: non-negative integer; the same arguments write identical files.
        mask_encoding: one of :data:`CHAOS_MASK_ENCODINGS` for every patient (MR accepts
            only those that can hold grey levels), or ``None`` for a different encoding per
            patient (:func:`default_mask_encoding`).
        progress: show a progress bar over patients on stderr.

    Returns:
        ``root`` as a path.

    Raises:
        ValueError: an invalid argument, or a binary-only encoding for MR.
        LayoutError: a patient folder already exists.

    Example:
        >>> import tempfile
        >>> root = write_chaos(tempfile.mkdtemp(), num_patients=1, num_slices=2, size=16,
        ...                    progress=False)
        >>> sorted(p.name for p in (root / "Train_Sets" / "CT" / "1" / "Ground").iterdir())
        ['liver_GT_000.png', 'liver_GT_001.png']

    Reference:
        Kavur et al., "CHAOS Challenge - combined (CT-MR) healthy abdominal organ
        segmentation", Medical Image Analysis 69, 101950 (2021).
    """
    modality = _check_modality(modality)
    if isinstance(num_patients, bool) or not isinstance(num_patients, int) or num_patients < 1:
        raise ValueError(f"num_patients must be a positive integer, got {num_patients!r}")
    if isinstance(size, bool) or not isinstance(size, int) or size < 8:
        raise ValueError(f"size must be an integer of at least 8, got {size!r}")
    if mask_encoding is not None and mask_encoding not in CHAOS_MASK_ENCODINGS:
        raise ValueError(
            f"mask_encoding must be None or one of {sorted(CHAOS_MASK_ENCODINGS)}, "
            f"got {mask_encoding!r}"
        )
    if modality == "MR" and mask_encoding in _BINARY_ONLY_ENCODINGS:
        raise ValueError(f"mask_encoding {mask_encoding!r} cannot hold the MR grey levels")
    root = pathlib.Path(root)
    modality_dir = root / "Train_Sets" / modality
    modality_dir.mkdir(parents=True, exist_ok=True)
    patients = tqdm(
        range(num_patients),
        desc=f"synthetic CHAOS {modality} patients",
        unit="patient",
        disable=not progress,
    )
    for index in patients:
        case = chaos_phantom_case(
            modality, index, num_slices=num_slices, size=size, seed=seed
        )
        encoding = mask_encoding or default_mask_encoding(modality, index)
        target = modality_dir / case.patient
        if target.exists():
            raise LayoutError(
                target, "already exists; write_chaos only writes new patient folders"
            )
        with atomic_directory(target) as staging:
            if modality == "CT":
                _write_chaos_ct(staging, case, seed, encoding)
            else:
                _write_chaos_mr(staging, case, seed, encoding)
    return root


def _save_chaos_mask(grey: np.ndarray, stem: pathlib.Path, modality: str, encoding: str) -> None:
    """Write one mask slice given as the CHAOS grey values (0 / 255 CT, grey levels MR)."""
    levels = _MASK_LEVELS[modality]
    on = grey > 0
    if encoding == "1bit":
        image = Image.fromarray(on)
    elif encoding == "8bit":
        image = Image.fromarray(grey)
    elif encoding == "8bit_01":
        image = Image.fromarray(on.astype(np.uint8))
    elif encoding == "16bit":
        image = Image.fromarray(grey.astype(np.uint16) * 257)
    elif encoding == "16bit_01":
        image = Image.fromarray(on.astype(np.uint16))
    elif encoding == "palette_grey":
        reversed_levels = levels[::-1]
        index_of = np.zeros(256, np.uint8)
        index_of[list(reversed_levels)] = np.arange(len(reversed_levels))
        image = Image.fromarray(index_of[grey], mode="P")
        image.putpalette([v for level in reversed_levels for v in (level, level, level)])
    elif encoding == "palette_index":
        indices = on.astype(np.uint8) if modality == "CT" else grey
        image = Image.fromarray(indices, mode="P")
        # Entry 0 black (the background, as label tools' palettes have it: VOC, ITK-SNAP),
        # entry i > 0 (i, 0, 255 - i): colours, never grey.
        image.putpalette([0, 0, 0] + [v for i in range(1, 256) for v in (i, 0, 255 - i)])
    elif encoding in ("rgb", "rgba"):
        channels = [grey] * 3 + ([np.full_like(grey, 255)] if encoding == "rgba" else [])
        image = Image.fromarray(np.dstack(channels))
    else:  # jpg
        Image.fromarray(grey).save(stem.with_suffix(".jpg"), quality=95)
        return
    image.save(stem.with_suffix(".png"))


def _write_chaos_ct(
    folder: pathlib.Path, case: ChaosPhantomCase, seed: int, encoding: str
) -> None:
    dicom_dir, ground_dir = folder / "DICOM_anon", folder / "Ground"
    dicom_dir.mkdir()
    ground_dir.mkdir()
    series = _SeriesWriter(case, "CT", seed, series_number=2)
    liver = case.labels == PhantomLabel.LIVER
    for k in range(case.labels.shape[0]):
        rank = int(case.name_ranks["CT"][k])
        series.write(dicom_dir / f"i{rank:04d},0000b.dcm", k)
        mask = np.where(liver[k], CHAOS_CT_LIVER_VALUE, 0).astype(np.uint8)
        _save_chaos_mask(mask, ground_dir / f"liver_GT_{rank:03d}", "CT", encoding)


def _write_chaos_mr(
    folder: pathlib.Path, case: ChaosPhantomCase, seed: int, encoding: str
) -> None:
    lut = np.zeros(len(PhantomLabel), dtype=np.uint8)
    for label, value in CHAOS_MR_MASK_VALUES.items():
        lut[label] = value
    masks = lut[case.labels]
    t1_number, t2_number = 2, 4
    t1_in = _SeriesWriter(case, "T1_IN", seed, series_number=t1_number)
    t1_out = _SeriesWriter(case, "T1_OUT", seed, series_number=t1_number + 1)
    t2 = _SeriesWriter(case, "T2SPIR", seed, series_number=t2_number)
    paths = {
        "in": folder / "T1DUAL" / "DICOM_anon" / "InPhase",
        "out": folder / "T1DUAL" / "DICOM_anon" / "OutPhase",
        "t1_ground": folder / "T1DUAL" / "Ground",
        "t2": folder / "T2SPIR" / "DICOM_anon",
        "t2_ground": folder / "T2SPIR" / "Ground",
    }
    for path in paths.values():
        path.mkdir(parents=True)
    for k in range(case.labels.shape[0]):
        # In- and opposed-phase images share one counter (out-phase odd, in-phase even).
        t1_rank = int(case.name_ranks["T1_IN"][k])
        in_stem = f"IMG-{t1_number:04d}-{2 * t1_rank + 2:05d}"
        t1_in.write(paths["in"] / f"{in_stem}.dcm", k)
        t1_out.write(paths["out"] / f"IMG-{t1_number:04d}-{2 * t1_rank + 1:05d}.dcm", k)
        _save_chaos_mask(masks[k], paths["t1_ground"] / in_stem, "MR", encoding)
        t2_stem = f"IMG-{t2_number:04d}-{int(case.name_ranks['T2SPIR'][k]) + 1:05d}"
        t2.write(paths["t2"] / f"{t2_stem}.dcm", k)
        _save_chaos_mask(masks[k], paths["t2_ground"] / t2_stem, "MR", encoding)


_MR_PROTOCOLS = {
    # (SeriesDescription, ScanningSequence, SequenceVariant, ScanOptions, TR ms, TE ms)
    "T1_IN": ("T1 DUAL in-phase", "GR", "SP", "", 150.0, 4.6),
    "T1_OUT": ("T1 DUAL opposed-phase", "GR", "SP", "", 150.0, 2.3),
    "T2SPIR": ("T2 SPIR", ["SE", "IR"], "SK", "FS", 1600.0, 90.0),
}


class _SeriesWriter:
    """Writes the slices of one synthetic series; the header parts shared by all slices
    are built once."""

    def __init__(self, case: ChaosPhantomCase, series: str, seed: int, series_number: int):
        self.case = case
        self.series = series
        self.is_ct = series == "CT"
        self.entropy = ["kseg-phantom", str(seed), case.patient, series]
        study_entropy = ["kseg-phantom", str(seed), case.patient, "CT" if self.is_ct else "MR"]
        self.study_uid = generate_uid(entropy_srcs=[*study_entropy, "study"])
        self.frame_uid = generate_uid(entropy_srcs=[*study_entropy, "frame"])
        self.series_uid = generate_uid(entropy_srcs=[*self.entropy, "series"])
        self.series_number = series_number
        # The PatientSex of a synthetic patient is drawn from its number, for stratification.
        self.sex = "F" if int(case.patient) % 2 else "M"

    def write(self, path: pathlib.Path, k: int) -> None:
        case = self.case
        sop_uid = generate_uid(entropy_srcs=[*self.entropy, "slice", str(k)])
        ds = new_dataset(
            CTImageStorage if self.is_ct else MRImageStorage, sop_uid,
            implementation_version_name=IMPLEMENTATION_VERSION_NAME,
        )
        ds.ImageType = ["DERIVED", "SECONDARY", "AXIAL"]
        ds.StudyDate = ds.SeriesDate = ds.ContentDate = "20190401"
        ds.StudyTime = ds.SeriesTime = ds.ContentTime = "120000"
        ds.AccessionNumber = ""
        ds.Modality = "CT" if self.is_ct else "MR"
        ds.Manufacturer = "kseg synthetic phantom"
        ds.ReferringPhysicianName = ""
        ds.StudyDescription = f"{SYNTHETIC_NOTICE} (CHAOS layout)"
        ds.SeriesDescription = "CT abdomen" if self.is_ct else _MR_PROTOCOLS[self.series][0]
        ds.PatientName = "KSEG^PHANTOM"
        ds.PatientID = f"kseg-phantom-{ds.Modality.lower()}-{case.patient}"
        ds.PatientBirthDate = ""
        ds.PatientSex = self.sex
        ds.PatientIdentityRemoved = "YES"
        ds.BodyPartExamined = "ABDOMEN"
        ds.StudyInstanceUID = self.study_uid
        ds.SeriesInstanceUID = self.series_uid
        ds.StudyID = "1"
        ds.SeriesNumber = self.series_number
        ds.AcquisitionNumber = 1
        ds.InstanceNumber = int(case.instance_numbers[self.series][k])
        ds.FrameOfReferenceUID = self.frame_uid
        ds.PositionReferenceIndicator = ""
        z = case.origin[2] + k * case.spacing[0]
        ds.ImagePositionPatient = [case.origin[0], case.origin[1], round(z, 4)]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.SliceLocation = round(z, 4)
        ds.SliceThickness = case.spacing[0]
        ds.SpacingBetweenSlices = case.spacing[0]
        ds.PixelSpacing = [case.spacing[1], case.spacing[2]]
        ds.ImageComments = SYNTHETIC_NOTICE
        ds.BurnedInAnnotation = "NO"
        if self.is_ct:
            ds.KVP = 120
            ds.RescaleIntercept = -1024
            ds.RescaleSlope = 1
            ds.RescaleType = "HU"
            ds.WindowCenter, ds.WindowWidth = 40, 400
            stored = (case.images["CT"][k].astype(np.int32) + 1024).astype(np.uint16)
        else:
            _, scanning, variant, options, repetition, echo = _MR_PROTOCOLS[self.series]
            ds.ScanningSequence = scanning
            ds.SequenceVariant = variant
            ds.ScanOptions = options
            ds.MRAcquisitionType = "2D"
            ds.RepetitionTime = repetition
            ds.EchoTime = echo
            ds.EchoTrainLength = 1
            ds.MagneticFieldStrength = 1.5
            stored = case.images[self.series][k]
        set_grayscale_pixels(ds, stored, bits_stored=16 if self.is_ct else 12)
        pydicom.dcmwrite(path, ds, enforce_file_format=True)


@dataclasses.dataclass(frozen=True)
class _Blob:
    """A smoothly perturbed ellipsoid: elliptic cross-sections whose size follows an
    ellipsoid profile along normalised z, with a boundary rippled by harmonics 2..4 whose
    phases drift along z."""

    centre: tuple[float, float]  # (column, row) in normalised in-plane units
    semi_axes: tuple[float, float]
    angle: float
    z_centre: float
    z_half: float
    amplitudes: np.ndarray
    phases: np.ndarray
    drifts: np.ndarray

    @classmethod
    def random(cls, rng, centre, semi_axes, angle_deg, z_centre, z_half, ripple=0.08, jitter=1.0):
        amplitudes = rng.uniform(0.0, ripple, size=3) / np.arange(2, 5)
        return cls(
            centre=(
                centre[0] + jitter * rng.uniform(-0.025, 0.025),
                centre[1] + jitter * rng.uniform(-0.025, 0.025),
            ),
            semi_axes=(
                semi_axes[0] * rng.uniform(1 - 0.12 * jitter, 1 + 0.12 * jitter),
                semi_axes[1] * rng.uniform(1 - 0.12 * jitter, 1 + 0.12 * jitter),
            ),
            angle=np.deg2rad(angle_deg + jitter * rng.uniform(-8.0, 8.0)),
            z_centre=z_centre + jitter * rng.uniform(-0.04, 0.04),
            z_half=z_half * rng.uniform(1 - 0.08 * jitter, 1 + 0.08 * jitter),
            amplitudes=amplitudes,
            phases=rng.uniform(0.0, 2 * np.pi, size=3),
            drifts=rng.uniform(-np.pi, np.pi, size=3),
        )

    def scale_at(self, t: float) -> float:
        u = (t - self.z_centre) / self.z_half
        return float(np.sqrt(max(0.0, 1.0 - u * u)))

    def radial(self, t: float, columns: np.ndarray, rows: np.ndarray, scale: float):
        """Normalised radius of each grid point and the boundary radius in its direction;
        a point is inside where the first is below the second."""
        dx = columns[None, :] - self.centre[0]
        dy = rows[:, None] - self.centre[1]
        cos_a, sin_a = np.cos(self.angle), np.sin(self.angle)
        p = (dx * cos_a + dy * sin_a) / self.semi_axes[0]
        q = (dy * cos_a - dx * sin_a) / self.semi_axes[1]
        rho = np.hypot(p, q)
        theta = np.arctan2(q, p)
        boundary = np.full_like(rho, scale)
        for harmonic, amplitude, phase, drift in zip(
            range(2, 5), self.amplitudes, self.phases, self.drifts, strict=True
        ):
            boundary += scale * amplitude * np.cos(harmonic * theta - phase - drift * t)
        return rho, boundary

    def paint(self, slice_labels, label, t, columns, rows) -> None:
        scale = self.scale_at(t)
        if scale <= 0.0:
            return
        reach = scale * max(self.semi_axes) * (1.0 + float(self.amplitudes.sum()))
        col_lo, col_hi = np.searchsorted(columns, [self.centre[0] - reach, self.centre[0] + reach])
        row_lo, row_hi = np.searchsorted(rows, [self.centre[1] - reach, self.centre[1] + reach])
        if col_lo >= col_hi or row_lo >= row_hi:
            return
        rho, boundary = self.radial(t, columns[col_lo:col_hi], rows[row_lo:row_hi], scale)
        window = slice_labels[row_lo:row_hi, col_lo:col_hi]
        window[rho < boundary] = label


def _phantom_labels(shape, spacing, rng: np.random.Generator) -> np.ndarray:
    nz, ny, nx = shape
    half_field = 0.5 * max(ny * spacing[1], nx * spacing[2])
    # Normalised in-plane coordinates: columns + towards the patient's left, rows +
    # towards posterior, both in units of half the larger field of view.
    columns = ((np.arange(nx) - (nx - 1) / 2) * spacing[2] / half_field).astype(np.float32)
    rows = ((np.arange(ny) - (ny - 1) / 2) * spacing[1] / half_field).astype(np.float32)

    body = _Blob.random(rng, (0.0, 0.02), (0.82, 0.60), 0.0, 0.5, 10.0, ripple=0.04, jitter=0.4)
    fat_fraction = rng.uniform(0.06, 0.13)
    muscle_fraction = 0.05
    organs = [
        (PhantomLabel.LIVER, _Blob.random(rng, (-0.33, -0.02), (0.40, 0.38), -20.0, 0.58, 0.32)),
        (PhantomLabel.SPLEEN, _Blob.random(rng, (0.50, 0.18), (0.12, 0.20), 35.0, 0.66, 0.20)),
        (
            PhantomLabel.RIGHT_KIDNEY,
            _Blob.random(rng, (-0.27, 0.30), (0.09, 0.13), -25.0, 0.34, 0.20),
        ),
        (
            PhantomLabel.LEFT_KIDNEY,
            _Blob.random(rng, (0.27, 0.28), (0.09, 0.13), 25.0, 0.40, 0.20),
        ),
    ]
    # Spine and back muscles vary less between people than the organs do.
    def back_part(centre, semi_axes, z_centre=0.5, z_half=10.0, ripple=0.03):
        return _Blob.random(rng, centre, semi_axes, 0.0, z_centre, z_half, ripple, jitter=0.3)

    back = [
        (PhantomLabel.MUSCLE, back_part((-0.12, 0.49), (0.08, 0.07))),  # paraspinal
        (PhantomLabel.MUSCLE, back_part((0.12, 0.49), (0.08, 0.07))),
        (PhantomLabel.MUSCLE, back_part((-0.13, 0.33), (0.05, 0.05), 0.0, 0.9)),  # psoas
        (PhantomLabel.MUSCLE, back_part((0.13, 0.33), (0.05, 0.05), 0.0, 0.9)),
        (PhantomLabel.BONE, back_part((0.0, 0.36), (0.085, 0.075), ripple=0.02)),  # body
        (PhantomLabel.BONE, back_part((0.0, 0.53), (0.025, 0.07), ripple=0.02)),  # spinous
        (PhantomLabel.SOFT_TISSUE, back_part((0.0, 0.465), (0.035, 0.03), ripple=0.0)),  # canal
    ]

    labels = np.zeros(shape, dtype=np.uint8)
    for k in range(nz):
        t = 0.5 if nz == 1 else k / (nz - 1)
        slice_labels = labels[k]
        scale = body.scale_at(t)
        rho, boundary = body.radial(t, columns, rows, scale)
        slice_labels[rho < boundary] = PhantomLabel.FAT
        slice_labels[rho < boundary * (1.0 - fat_fraction)] = PhantomLabel.MUSCLE
        cavity = boundary * (1.0 - fat_fraction - muscle_fraction)
        slice_labels[rho < cavity] = PhantomLabel.SOFT_TISSUE
        for label, blob in organs + back:
            blob.paint(slice_labels, label, t, columns, rows)
    return labels


def _check_geometry(shape, spacing, seed):
    shape = tuple(int(s) for s in shape)
    spacing = tuple(float(s) for s in spacing)
    if len(shape) != 3 or min(shape) < 1:
        raise ValueError(f"shape must be three positive sizes (z, y, x), got {shape}")
    if len(spacing) != 3 or not all(np.isfinite(spacing)) or min(spacing) <= 0:
        raise ValueError(f"spacing must be three positive mm sizes (z, y, x), got {spacing}")
    return shape, spacing, check_seed(seed)


def _check_modality(modality: str) -> str:
    if modality not in ("CT", "MR"):
        raise ValueError(f"modality must be 'CT' or 'MR', got {modality!r}")
    return modality


def main(argv: Sequence[str] | None = None) -> None:
    """Command line: ``python -m kseg.phantoms.chaos ROOT --modality CT MR ...``."""
    parser = argparse.ArgumentParser(
        prog="python -m kseg.phantoms.chaos",
        description=f"Write {SYNTHETIC_NOTICE} patients in the CHAOS training layout.",
    )
    parser.add_argument("root", type=pathlib.Path, help="folder to write Train_Sets/ into")
    parser.add_argument("--modality", nargs="+", choices=("CT", "MR"), default=["CT"])
    parser.add_argument(
        "--num-patients", type=int, default=10,
        help="per modality; the chaos builder's default 5 folds need at least 5 (default 10)",
    )
    parser.add_argument("--num-slices", type=int, default=24)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--mask-encoding", choices=sorted(CHAOS_MASK_ENCODINGS), default=None,
        help="one encoding for every mask (default: a different one per patient)",
    )
    args = parser.parse_args(argv)
    for modality in args.modality:
        write_chaos(
            args.root,
            modality=modality,
            num_patients=args.num_patients,
            num_slices=args.num_slices,
            size=args.size,
            seed=args.seed,
            mask_encoding=args.mask_encoding,
        )


if __name__ == "__main__":
    main()
