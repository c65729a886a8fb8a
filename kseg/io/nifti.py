"""NIfTI-1/2 volumes in and out of kseg's Volume.

nibabel stores arrays as ``(i, j, k)`` (x fastest on disk) with an affine to RAS+ world
coordinates. kseg arrays are ``(z, y, x)``: the array is transposed and the affine's first
three columns reversed, so the same voxel keeps the same world position. Writing does the
inverse, so a round trip returns the same array and the same affine.

Reference:
    Cox R. W. et al., "A (sort of) new image data format standard: NiFTI-1", NIfTI Data Format
    Working Group (2004), https://nifti.nimh.nih.gov/nifti-1 (qform / sform, xyzt_units).
"""

from __future__ import annotations

import os

import nibabel as nib
import numpy as np

from kseg._files import atomic_output
from kseg.errors import UnreadableFileError
from kseg.io.volume import Volume

__all__ = ["read_nifti", "write_nifti"]

# Millimetres per NIfTI spatial unit; "unknown" is taken as mm, as every viewer does.
_MM_PER_UNIT = {"mm": 1.0, "unknown": 1.0, "meter": 1000.0, "micron": 0.001}
_NIFTI_SUFFIXES = (".nii.gz", ".nii")
# Index (k, j, i) <-> (i, j, k): reverse the three spatial columns, keep the translation.
_REVERSE_AXES = [2, 1, 0, 3]


def read_nifti(path: os.PathLike | str, *, patient_id: str | None = None) -> Volume:
    """Read a NIfTI file (``.nii`` or ``.nii.gz``) into a Volume.

    Args:
        path: the NIfTI file.
        patient_id: patient the volume belongs to; by default the file name without
            ``.nii``/``.nii.gz`` (datasets usually name files after the case).

    Returns:
        Volume with ``array`` ``(z, y, x)`` = nibabel's ``(i, j, k)`` transposed, in the
        stored dtype after any scl_slope/scl_inter scaling; ``affine`` = nibabel's affine
        (sform, else qform; RAS+) with its spatial columns reordered to ``(k, j, i)`` and
        converted to millimetres when the header states metres or microns;
        ``source_files`` = ``(path,)``; ``metadata`` with ``sform_code``, ``qform_code`` and the
        header's ``spatial_unit``.

    Raises:
        UnreadableFileError: the file cannot be read as NIfTI, or is not a 3D volume
            (trailing dimensions of size 1 are dropped; a 2D image becomes one slice).

    Example:
        >>> ct = read_nifti("example_ct_sm.nii.gz")  # doctest: +SKIP
        >>> ct.shape, ct.spacing  # doctest: +SKIP
        ((30, 101, 122), (3.0, 3.0, 3.0))
    """
    path = os.fspath(path)
    try:
        image = nib.load(path)
        data = np.asarray(image.dataobj)
    except Exception as exc:  # nibabel raises ImageFileError, OSError, EOFError, zlib.error
        raise UnreadableFileError(path, f"cannot be read as NIfTI ({exc})") from exc
    while data.ndim > 3 and data.shape[-1] == 1:
        data = data[..., 0]
    if data.ndim == 2:
        data = data[..., np.newaxis]
    if data.ndim != 3:
        raise UnreadableFileError(path, f"expected a 3D volume, got shape {data.shape}")
    spatial_unit = image.header.get_xyzt_units()[0]
    if spatial_unit not in _MM_PER_UNIT:
        raise UnreadableFileError(path, f"unsupported spatial unit {spatial_unit!r}")
    affine = np.array(image.affine, dtype=np.float64)
    affine[:3, :] *= _MM_PER_UNIT[spatial_unit]
    if patient_id is None:
        patient_id = _strip_suffix(os.path.basename(path))
    return Volume(
        array=np.ascontiguousarray(data.transpose(2, 1, 0)),
        affine=affine[:, _REVERSE_AXES],
        patient_id=str(patient_id),
        source_files=(path,),
        metadata={
            "sform_code": int(image.header["sform_code"]),
            "qform_code": int(image.header["qform_code"]),
            "spatial_unit": spatial_unit,
        },
    )


def write_nifti(volume: Volume, path: os.PathLike | str) -> None:
    """Write a Volume as NIfTI-1, atomically (temporary file in the same folder, then rename).

    The affine goes to the sform (code 1, scanner) and, when it has no shear, also to the
    qform; units are millimetres. Boolean arrays are stored as uint8 and 64-bit integers as
    int32 when their values fit (nibabel's ``dtype="compat"``; otherwise nibabel raises). An
    existing file at ``path`` is replaced only once the new one is complete.

    Args:
        volume: the Volume to write.
        path: destination ending in ``.nii`` or ``.nii.gz`` (gzip follows the suffix).

    Raises:
        ValueError: ``path`` does not end in ``.nii`` or ``.nii.gz``.

    Example:
        >>> write_nifti(read_dicom_series("DICOM_anon"), "case_0001.nii.gz")  # doctest: +SKIP
    """
    path = os.fspath(path)
    suffix = next((s for s in _NIFTI_SUFFIXES if path.endswith(s)), None)
    if suffix is None:
        raise ValueError(f"{path}: NIfTI output must end in .nii or .nii.gz")
    data = np.asarray(volume.array).transpose(2, 1, 0)
    if data.dtype == np.bool_:
        data = data.astype(np.uint8)
    affine = volume.affine[:, _REVERSE_AXES]
    image = nib.Nifti1Image(data, affine, dtype="compat" if data.dtype.itemsize == 8 else None)
    image.header.set_xyzt_units("mm")
    image.set_sform(affine, code=1)
    image.set_qform(affine, code=1 if _is_orthogonal(affine) else 0)
    with atomic_output(path) as temporary:
        nib.save(image, temporary)


def _strip_suffix(name: str) -> str:
    for suffix in _NIFTI_SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def _is_orthogonal(affine: np.ndarray) -> bool:
    columns = affine[:3, :3]
    gram = columns.T @ columns
    return bool(np.allclose(gram, np.diag(np.diag(gram)), atol=1e-6 * np.abs(gram).max()))
