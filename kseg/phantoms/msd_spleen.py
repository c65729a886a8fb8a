"""Synthetic contrast-enhanced abdominal CT with a spleen, in the MSD Task09_Spleen layout.

Everything this module writes is SYNTHETIC: the anatomy is :func:`kseg.phantoms.chaos.
abdominal_phantom`'s smooth random ellipsoids (body, subcutaneous fat, muscle, liver,
spleen, kidneys, spine), given portal-venous-phase CT numbers and noise. It exists so that
the ``msd_spleen`` builder, its tests and ``examples/msd_spleen_highresnet.py`` run without
the real Decathlon data. Every NIfTI header's ``descrip`` says ``synthetic kseg phantom``
and ``dataset.json`` says so in its name, description and reference; it must never be
presented as patient data.

:func:`write_msd_spleen` reproduces the layout of ``Task09_Spleen.tar`` as extracted:
``dataset.json`` with the real file's keys, ``imagesTr/spleen_<n>.nii.gz`` (int16 HU),
``labelsTr/spleen_<n>.nii.gz`` (1 = spleen, stored in one of :data:`LABEL_ENCODINGS`) and
``imagesTs/spleen_<n>.nii.gz``,
where ``<n>`` runs through the real archive's case numbers in its ``dataset.json`` order
(so ``spleen_3`` and ``spleen_31`` meet in every sort). Like the real tar, which was made
on macOS, every folder also holds an AppleDouble ``._spleen_<n>.nii.gz`` beside each volume:
a small resource-fork file that is not NIfTI and breaks any reader that globs ``*.nii.gz``
(reported for the real archive in Project-MONAI/MONAI issue #8305).

Label files reach users in more encodings than uint8 (the common one, e.g. TotalSegmentator's
masks in the shared sample data): int16, as ITK-based tools (SimpleITK, 3D Slicer) save label
maps; float32 saved from float arrays, here with scl_slope 0, which NIfTI-1 defines as "no
scaling" (some writers leave it; a reader that multiplies by it empties the mask); a float32
0/255 mask image whose scl_slope 1/255 maps it back to 0/1; and uint8 that nibabel scaled on
its own when a float 0/1 array was saved with a uint8 header (stored 0/255, scl_slope 1/255,
read back as 1.00000006). :data:`LABEL_ENCODINGS` names them; by default
:func:`write_msd_spleen` cycles through them case by case, so a reader that handles only one
fails on the phantom, not on a user's copy. Every file is ``.nii.gz``, as in the release.

The volumes are stored as a DICOM-derived NIfTI typically is: columns run towards the
patient's left, rows towards posterior, slices from feet to head (axis codes ``"LPS"``), so
the ``"RAS"`` reorientation of :mod:`kseg.data.preprocess3d` has work to do.

Regenerate the builder's dummy data with::

    python -m kseg.phantoms.msd_spleen tfds_builders/msd_spleen/dummy_data \\
        --num-training 5 --num-test 2 --shape 6 16 16 --spacing 5 2 2

Example:
    >>> case = spleen_phantom_case(19, shape=(8, 32, 32), spacing=(5.0, 3.0, 3.0))
    >>> case.patient_id, case.image.array.dtype, sorted(np.unique(case.label.array).tolist())
    ('spleen_19', dtype('int16'), [0, 1])

Reference:
    Antonelli et al., "The Medical Segmentation Decathlon", Nature Communications 13, 4128
    (2022); Simpson et al., "A large annotated medical image dataset for the development
    and evaluation of segmentation algorithms", arXiv:1902.09063 (2019): the layout and
    ``dataset.json`` mimicked.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import pathlib
import struct
from collections.abc import Sequence

import nibabel as nib
import numpy as np

from kseg._files import atomic_directory
from kseg.errors import LayoutError
from kseg.io.volume import Volume
from kseg.phantoms._common import SYNTHETIC_NOTICE, check_seed
from kseg.phantoms.chaos import PhantomLabel, abdominal_phantom

__all__ = [
    "LABEL_ENCODINGS",
    "MSD_SPLEEN_TEST_CASES",
    "MSD_SPLEEN_TRAINING_CASES",
    "PORTAL_VENOUS_CT_NUMBERS",
    "SpleenPhantomCase",
    "main",
    "spleen_phantom_case",
    "write_msd_spleen",
]

# Case numbers of Task09_Spleen, in the order its dataset.json lists them (41 training
# cases with labels, 20 test cases without).
MSD_SPLEEN_TRAINING_CASES = (
    19, 31, 52, 40, 3, 17, 21, 33, 9, 29, 46, 25, 13, 62, 27, 44, 56, 60, 2, 53, 41,
    22, 14, 18, 20, 32, 16, 12, 63, 28, 24, 59, 47, 8, 6, 61, 10, 38, 45, 26, 49,
)  # fmt: skip
MSD_SPLEEN_TEST_CASES = (
    15, 23, 1, 42, 50, 54, 37, 58, 39, 48, 35, 11, 7, 30, 43, 51, 36, 55, 57, 34,
)  # fmt: skip

# Mean CT numbers (HU) in the portal venous phase, the phase of the MSD spleen scans
# (patients followed for liver metastases): enhancing spleen slightly above liver, kidneys
# (nephrographic) well above both.
PORTAL_VENOUS_CT_NUMBERS = {
    PhantomLabel.BACKGROUND: -1000.0,
    PhantomLabel.FAT: -100.0,
    PhantomLabel.MUSCLE: 55.0,
    PhantomLabel.SOFT_TISSUE: 40.0,
    PhantomLabel.LIVER: 105.0,
    PhantomLabel.SPLEEN: 120.0,
    PhantomLabel.RIGHT_KIDNEY: 160.0,
    PhantomLabel.LEFT_KIDNEY: 160.0,
    PhantomLabel.BONE: 450.0,
}
# Per-patient shift of every enhanced organ (contrast timing differs between scans); kept
# below half the spleen-liver difference so that the spleen stays the brighter of the two.
_ENHANCEMENT_SHIFT_HU = 6.0
# Quantum noise of 10 HU at a 0.8 x 0.8 x 5 mm voxel, scaled with 1 / sqrt(voxel volume).
_REFERENCE_NOISE_HU = 10.0
_REFERENCE_VOXEL_MM3 = 0.8 * 0.8 * 5.0
_ENHANCED = (
    PhantomLabel.MUSCLE,
    PhantomLabel.SOFT_TISSUE,
    PhantomLabel.LIVER,
    PhantomLabel.SPLEEN,
    PhantomLabel.RIGHT_KIDNEY,
    PhantomLabel.LEFT_KIDNEY,
)
# An AppleDouble header (magic, version 2, "Mac OS X" filler, no entries): what makes a
# "._" file start like the ones macOS tar writes, and not like gzip or NIfTI.
_APPLE_DOUBLE = struct.pack(">II16sH", 0x00051607, 0x00020000, b"Mac OS X".ljust(16), 0)

# Label file encodings: (on-disk dtype, stored spleen value, (scl_slope, scl_inter) or
# None for the unscaled 1 / 0 nibabel writes). "float32" carries scl_slope 0, which NIfTI-1
# defines as "no scaling": a reader that multiplied by it would empty the mask.
# "uint8_scaled" is left out: nibabel chooses its scaling itself (see _save_nifti).
_LABEL_STORAGE = {
    "uint8": (np.uint8, 1, None),
    "int16": (np.int16, 1, None),
    "float32": (np.float32, 1, (0.0, 0.0)),
    "float32_scaled": (np.float32, 255, (1 / 255, 0.0)),
}
LABEL_ENCODINGS = (*_LABEL_STORAGE, "uint8_scaled")

DEFAULT_SHAPE = (40, 96, 96)
DEFAULT_SPACING = (5.0, 0.8, 0.8)


@dataclasses.dataclass(frozen=True)
class SpleenPhantomCase:
    """One synthetic case, exactly as :func:`write_msd_spleen` writes it.

    Attributes:
        patient_id: ``"spleen_<n>"``, the file name without ``.nii.gz``.
        image: int16 HU Volume ``(z, y, x)`` with the affine written to the file.
        label: uint8 Volume on the same grid, 1 = spleen, 0 = everything else.
    """

    patient_id: str
    image: Volume
    label: Volume


def _check_case_number(case_number) -> int:
    if isinstance(case_number, bool) or not isinstance(case_number, (int, np.integer)):
        raise ValueError(f"case_number must be a positive integer, got {case_number!r}")
    if case_number < 1:
        raise ValueError(f"case_number must be a positive integer, got {case_number!r}")
    return int(case_number)


def spleen_phantom_case(
    case_number: int,
    *,
    shape: Sequence[int] = DEFAULT_SHAPE,
    spacing: Sequence[float] = DEFAULT_SPACING,
    seed: int = 0,
) -> SpleenPhantomCase:
    """The synthetic case ``spleen_<case_number>``.

    Anatomy comes from :func:`kseg.phantoms.chaos.abdominal_phantom` (laid out relative to
    the field of view ``shape * spacing``, slices from feet to head); CT numbers are
    :data:`PORTAL_VENOUS_CT_NUMBERS` with one per-case shift of at most 6 HU for all
    enhancing tissue, plus Gaussian noise of 10 HU at a 0.8 x 0.8 x 5 mm voxel (scaled by
    the square root of the voxel volume), rounded and clipped to [-1024, 3071].

    Args:
        case_number: the ``<n>`` of ``spleen_<n>``, a positive integer.
        shape: ``(z, y, x)`` voxels.
        spacing: ``(z, y, x)`` voxel size in mm; the default 5 mm slices of 0.8 mm pixels
            are typical of the real scans (which have 512 x 512 pixels).
        seed: non-negative integer; with the case number it fixes the case.

    Returns:
        :class:`SpleenPhantomCase`; the affine has axis codes ``"LPS"`` (columns towards
        the left, rows towards posterior, slices towards the head) and puts the centre of
        each slice on the scanner's z axis.

    Example:
        >>> case = spleen_phantom_case(2, shape=(4, 24, 24), spacing=(5.0, 4.0, 4.0))
        >>> case.image.spacing
        (5.0, 4.0, 4.0)
    """
    case_number = _check_case_number(case_number)
    seed = check_seed(seed)
    rng = np.random.default_rng([seed, case_number, 0x73706C6E])  # "spln"
    phantom_seed = int(rng.integers(2**31))
    _, tissues = abdominal_phantom(shape, spacing, seed=phantom_seed)
    spacing = tuple(float(s) for s in spacing)

    means = np.array([PORTAL_VENOUS_CT_NUMBERS[t] for t in PhantomLabel], dtype=np.float32)
    means[list(_ENHANCED)] += np.float32(rng.uniform(-_ENHANCEMENT_SHIFT_HU, _ENHANCEMENT_SHIFT_HU))
    sigma = _REFERENCE_NOISE_HU * np.sqrt(_REFERENCE_VOXEL_MM3 / float(np.prod(spacing)))
    hu = means[tissues] + rng.standard_normal(tissues.shape, dtype=np.float32) * np.float32(sigma)
    hu = np.clip(np.rint(hu), -1024, 3071).astype(np.int16)
    label = (tissues == PhantomLabel.SPLEEN).astype(np.uint8)

    nz, ny, nx = tissues.shape
    affine = np.zeros((4, 4))
    # Index (k, j, i) -> RAS+ mm: slices superior, rows posterior (-y), columns left (-x).
    affine[:3, :3] = np.diag([-spacing[2], -spacing[1], spacing[0]])[:, ::-1]
    affine[:3, 3] = (
        (nx - 1) / 2 * spacing[2],
        (ny - 1) / 2 * spacing[1],
        round(float(rng.uniform(-400.0, -150.0)), 2),
    )
    affine[3, 3] = 1.0
    patient_id = f"spleen_{case_number}"
    metadata = {"description": SYNTHETIC_NOTICE}
    return SpleenPhantomCase(
        patient_id=patient_id,
        image=Volume(hu, affine, patient_id, metadata=dict(metadata)),
        label=Volume(label, affine, patient_id, metadata=dict(metadata)),
    )


def _save_nifti(volume: Volume, path: pathlib.Path, label_encoding: str | None = None) -> None:
    """NIfTI-1 as the MSD files are stored: sform and qform set, mm units, ``descrip``
    marking the file synthetic; a label in ``label_encoding``. ``path`` lies in a staging
    folder, renamed into place whole."""
    nib_affine = volume.affine[:, [2, 1, 0, 3]]
    array = np.asarray(volume.array).transpose(2, 1, 0)
    if label_encoding is None:
        image = nib.Nifti1Image(array, nib_affine)
    elif label_encoding == "uint8_scaled":
        # A float 0/1 array given a uint8 header: nibabel stores 0/255 with scl_slope 1/255.
        image = nib.Nifti1Image(array.astype(np.float64), nib_affine)
        image.set_data_dtype(np.uint8)
    else:
        dtype, spleen_value, scaling = _LABEL_STORAGE[label_encoding]
        image = nib.Nifti1Image((array * spleen_value).astype(dtype), nib_affine)
        if scaling is not None:
            image.header["scl_slope"], image.header["scl_inter"] = scaling
    image.header.set_xyzt_units("mm")
    image.header["descrip"] = SYNTHETIC_NOTICE.encode()
    image.set_sform(nib_affine, code=1)
    image.set_qform(nib_affine, code=1)
    nib.save(image, str(path))


def _write_apple_double(path: pathlib.Path) -> None:
    path.write_bytes(_APPLE_DOUBLE)


def _check_count(name: str, value, minimum: int, maximum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if not minimum <= value <= maximum:
        raise ValueError(f"{name} must be in {minimum}..{maximum}, got {value!r}")
    return int(value)


def _dataset_json(training: Sequence[str], test: Sequence[str]) -> dict:
    """``dataset.json`` with the keys, key order and path style of the real Task09 file."""
    return {
        "name": "Spleen",
        "description": f"Spleen Segmentation ({SYNTHETIC_NOTICE}; not patient data)",
        "reference": f"{SYNTHETIC_NOTICE} (kseg.phantoms.msd_spleen)",
        "licence": "Apache-2.0 (synthetic data generated by kseg)",
        "release": f"{SYNTHETIC_NOTICE} in the layout of the MSD 1.0 release",
        "tensorImageSize": "3D",
        "modality": {"0": "CT"},
        "labels": {"0": "background", "1": "spleen"},
        "numTraining": len(training),
        "numTest": len(test),
        "training": [
            {"image": f"./imagesTr/{name}.nii.gz", "label": f"./labelsTr/{name}.nii.gz"}
            for name in training
        ],
        "test": [f"./imagesTs/{name}.nii.gz" for name in test],
    }


def write_msd_spleen(
    root: os.PathLike | str,
    *,
    num_training: int = 5,
    num_test: int = 2,
    shape: Sequence[int] = DEFAULT_SHAPE,
    spacing: Sequence[float] = DEFAULT_SPACING,
    seed: int = 0,
    apple_double: bool = True,
    label_encoding: str | None = None,
) -> pathlib.Path:
    """Write synthetic cases as the extracted ``Task09_Spleen.tar``::

        root/Task09_Spleen/dataset.json
        root/Task09_Spleen/imagesTr/spleen_19.nii.gz   ._spleen_19.nii.gz ...
        root/Task09_Spleen/labelsTr/spleen_19.nii.gz   ._spleen_19.nii.gz ...
        root/Task09_Spleen/imagesTs/spleen_15.nii.gz   ._spleen_15.nii.gz ...

    Training cases take the first ``num_training`` numbers of
    :data:`MSD_SPLEEN_TRAINING_CASES`, test cases the first ``num_test`` of
    :data:`MSD_SPLEEN_TEST_CASES`. The folder is assembled under a temporary name beside
    its destination and renamed into place, so it is either complete or absent.

    Args:
        root: folder to create ``Task09_Spleen`` in (created if missing); pass it to the
            ``msd_spleen`` builder as ``manual_dir``.
        num_training: labelled cases, 1..41.
        num_test: unlabelled cases, 0..20.
        shape: ``(z, y, x)`` voxels per case.
        spacing: ``(z, y, x)`` voxel size in mm.
        seed: non-negative integer; the same arguments write identical volumes.
        apple_double: also write the macOS ``._*`` companions the real archive carries.
        label_encoding: one of :data:`LABEL_ENCODINGS` for every label file; ``None``
            gives the ``i``-th training case ``LABEL_ENCODINGS[i % 5]``.

    Returns:
        The ``Task09_Spleen`` folder.

    Raises:
        LayoutError: ``root/Task09_Spleen`` already exists (it is never overwritten).
        ValueError: an unknown ``label_encoding``.

    Example:
        >>> import tempfile
        >>> task = write_msd_spleen(tempfile.mkdtemp(), num_training=2, num_test=1,
        ...                         shape=(4, 16, 16), spacing=(5.0, 4.0, 4.0))
        >>> sorted(p.name for p in (task / "labelsTr").iterdir())
        ['._spleen_19.nii.gz', '._spleen_31.nii.gz', 'spleen_19.nii.gz', 'spleen_31.nii.gz']
    """
    num_training = _check_count("num_training", num_training, 1, len(MSD_SPLEEN_TRAINING_CASES))
    num_test = _check_count("num_test", num_test, 0, len(MSD_SPLEEN_TEST_CASES))
    seed = check_seed(seed)
    if label_encoding not in (None, *LABEL_ENCODINGS):
        raise ValueError(
            f"label_encoding must be one of {LABEL_ENCODINGS} or None, got {label_encoding!r}"
        )
    root = pathlib.Path(root)
    root.mkdir(parents=True, exist_ok=True)
    target = root / "Task09_Spleen"
    if target.exists():
        raise LayoutError(target, "already exists; write_msd_spleen only writes a new folder")

    training = MSD_SPLEEN_TRAINING_CASES[:num_training]
    test = MSD_SPLEEN_TEST_CASES[:num_test]
    with atomic_directory(target) as staging:
        for folder in ("imagesTr", "labelsTr", "imagesTs"):
            (staging / folder).mkdir()
        for index, number in enumerate(training):
            case = spleen_phantom_case(number, shape=shape, spacing=spacing, seed=seed)
            encoding = label_encoding or LABEL_ENCODINGS[index % len(LABEL_ENCODINGS)]
            _save_nifti(case.image, staging / "imagesTr" / f"{case.patient_id}.nii.gz")
            _save_nifti(case.label, staging / "labelsTr" / f"{case.patient_id}.nii.gz",
                        encoding)
        for number in test:
            case = spleen_phantom_case(number, shape=shape, spacing=spacing, seed=seed)
            _save_nifti(case.image, staging / "imagesTs" / f"{case.patient_id}.nii.gz")
        if apple_double:
            for volume_file in sorted(staging.glob("*/*.nii.gz")):
                _write_apple_double(volume_file.with_name(f"._{volume_file.name}"))
        names = [f"spleen_{n}" for n in training], [f"spleen_{n}" for n in test]
        (staging / "dataset.json").write_text(json.dumps(_dataset_json(*names), indent=4) + "\n")
    return target


def main(argv: Sequence[str] | None = None) -> None:
    """Command line: ``python -m kseg.phantoms.msd_spleen ROOT [--num-training N] ...``."""
    parser = argparse.ArgumentParser(
        prog="python -m kseg.phantoms.msd_spleen",
        description=f"Write {SYNTHETIC_NOTICE} cases in the MSD Task09_Spleen layout.",
    )
    parser.add_argument("root", type=pathlib.Path, help="folder to write Task09_Spleen/ into")
    parser.add_argument("--num-training", type=int, default=5)
    parser.add_argument("--num-test", type=int, default=2)
    parser.add_argument("--shape", type=int, nargs=3, default=list(DEFAULT_SHAPE),
                        metavar=("Z", "Y", "X"))
    parser.add_argument("--spacing", type=float, nargs=3, default=list(DEFAULT_SPACING),
                        metavar=("Z", "Y", "X"), help="voxel size in mm, (z, y, x) order")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-apple-double", action="store_true",
                        help="leave out the macOS ._* files the real archive carries")
    parser.add_argument("--label-encoding", choices=LABEL_ENCODINGS, default=None,
                        help="encoding of every label file (default: cycle by case)")
    args = parser.parse_args(argv)
    task = write_msd_spleen(
        args.root,
        num_training=args.num_training,
        num_test=args.num_test,
        shape=args.shape,
        spacing=args.spacing,
        seed=args.seed,
        apple_double=not args.no_apple_double,
        label_encoding=args.label_encoding,
    )
    print(task)


if __name__ == "__main__":
    main()
