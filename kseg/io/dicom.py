"""DICOM readers: a folder of single-frame slices becomes one Volume in Hounsfield units.

Slices are ordered by ImagePositionPatient projected on the slice normal (the cross product of
the two ImageOrientationPatient vectors). File names and InstanceNumber are never used for
ordering: challenge archives rename files, and scanners number instances in acquisition order,
which is not always spatial order (nnU-Net and dcm2niix sort the same way).

Headers are read once with ``stop_before_pixels`` to group and order the files; only the files
of the chosen series are then decoded, each exactly once. Nothing is ever written to the input.

Reference:
    DICOM PS3.3 C.7.6.2.1.1 (Image Position and Image Orientation, patient coordinate system)
    and C.11.1.1.2 (Modality LUT / rescale);
    Li X. et al., "The first step for neuroimaging data analysis: DICOM to NIfTI conversion",
    J Neurosci Methods 264 (2016) 47-56 (dcm2niix: slice order from positions).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterable, Sequence

import numpy as np
import pydicom
from pydicom.errors import InvalidDicomError
from pydicom.pixels import apply_modality_lut
from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from kseg.errors import DicomSeriesError, LayoutError, UnreadableFileError
from kseg.io.volume import Volume

__all__ = [
    "SkippedFileWarning",
    "UnevenSliceSpacingWarning",
    "read_dicom_image",
    "read_dicom_series",
]

# A gap larger than this multiple of the typical gap means a slice is missing: the volume
# would otherwise be stretched silently and every mask below the gap would sit one slice off.
MISSING_SLICE_GAP_RATIO = 1.5
# Gaps may differ from the typical gap by this fraction (or by the absolute floor, which covers
# positions written with two decimals) before a UnevenSliceSpacingWarning is raised.
UNEVEN_GAP_RELATIVE_TOLERANCE = 0.01
UNEVEN_GAP_ABSOLUTE_TOLERANCE_MM = 0.02
# Two slices closer than this along the normal are the same slice position.
SAME_POSITION_TOLERANCE_MM = 1e-3
_ORIENTATION_TOLERANCE = 1e-3
_SPACING_TOLERANCE_MM = 1e-4

# DICOM patient coordinates are LPS+; RAS+ negates x and y.
_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


class SkippedFileWarning(UserWarning):
    """A file in a DICOM folder was not used: not DICOM, or DICOM without an image.

    The message names every skipped file and why (DICOMDIR, ``.txt``, ``Thumbs.db``, a
    preamble-less file pydicom cannot parse, an RTSTRUCT stored beside the slices).
    """


class UnevenSliceSpacingWarning(UserWarning):
    """Gaps between consecutive slices differ slightly, without a slice being missing.

    The volume is still returned on a regular grid whose slice step is the mean step from the
    first to the last slice, so a slice may sit up to the reported deviation away from its
    true position. Deviations above ``UNEVEN_GAP_RELATIVE_TOLERANCE`` of the typical gap (or
    ``UNEVEN_GAP_ABSOLUTE_TOLERANCE_MM``, whichever is larger) trigger it; a gap of more than
    ``MISSING_SLICE_GAP_RATIO`` times the typical gap is a missing slice and raises
    DicomSeriesError instead. The message names the files on both sides of each uneven gap.
    """


def read_dicom_series(
    source: os.PathLike | str | Sequence[os.PathLike | str],
    *,
    series_uid: str | None = None,
    ignore_series_uid: bool = False,
    patient_id: str | None = None,
) -> Volume:
    """Read one DICOM series of single-frame slices into a Volume in modality units (HU for CT).

    Args:
        source: a folder (its files are read, not its subfolders) or a list of files.
        series_uid: SeriesInstanceUID to read when the files hold several series. Files whose
            SeriesInstanceUID is blank (some anonymisers empty it) form one group of their own.
        ignore_series_uid: treat every DICOM image in ``source`` as one series, for archives
            whose anonymiser gave each file its own SeriesInstanceUID. Orientation, spacing,
            grid and position checks still apply, so mixed series still fail loudly.
        patient_id: overrides the header's PatientID (anonymised archives often blank it;
            the dataset layout then names the patient).

    Returns:
        A Volume with ``array`` of shape ``(slices, rows, columns)``, int16 when every value
        after RescaleSlope/RescaleIntercept is an integer in the int16 range, else float32;
        ``affine`` from index ``(k, j, i)`` to RAS+ mm; ``source_files`` and
        ``metadata["sop_instance_uids"]`` / ``["instance_numbers"]`` in array order;
        ``metadata`` also holds modality, series_instance_uid, study_instance_uid,
        frame_of_reference_uid, patient_sex, series_description, and window_center /
        window_width (first value) when the header has them. The slice step is taken from the
        positions (mean step from first to last slice), never from SliceThickness; a single
        slice falls back to SpacingBetweenSlices, then SliceThickness, then 1 mm.

    Raises:
        LayoutError: the folder does not exist or holds no DICOM image.
        DicomSeriesError: several series and no ``series_uid``; the requested series is absent;
            a slice lacks ImagePositionPatient / ImageOrientationPatient; orientation, pixel
            spacing or rows/columns differ within the series; two slices share a position; a
            gap shows a missing slice; a multi-frame or colour file.
        UnreadableFileError: a DICOM file whose header or pixel data cannot be decoded.

    Warns:
        SkippedFileWarning: files that are not DICOM images were ignored.
        UnevenSliceSpacingWarning: slice gaps are slightly uneven.

    Example:
        >>> volume = read_dicom_series("Train_Sets/CT/1/DICOM_anon")  # doctest: +SKIP
        >>> volume.array.shape, volume.spacing  # doctest: +SKIP
        ((95, 512, 512), (3.0, 0.78, 0.78))
    """
    folder, paths = _list_source(source)
    headers = _read_image_headers(paths, folder)
    series = headers if ignore_series_uid else _select_series(headers, series_uid, folder)
    ordered, positions, step = _order_slices(series, folder)
    array = _decode_in_hounsfield_units(ordered)
    first = ordered[0][1]
    return Volume(
        array=array,
        affine=_affine(first, positions, step),
        patient_id=str(first.get("PatientID", "")) if patient_id is None else str(patient_id),
        source_files=tuple(path for path, _ in ordered),
        metadata=_series_metadata(ordered),
    )


def read_dicom_image(path: os.PathLike | str) -> np.ndarray:
    """Read a single-frame grayscale DICOM image (a radiograph) as a 2D float32 array.

    RescaleSlope/Intercept (or a Modality LUT) are applied. MONOCHROME1 images, where the
    stored value grows darker, are inverted over the stored-value range given by BitsStored and
    PixelRepresentation before rescaling, so in the result a higher value is always brighter.

    Args:
        path: the DICOM file.

    Returns:
        float32 array of shape ``(rows, columns)``.

    Raises:
        UnreadableFileError: not a DICOM file, pixel data that cannot be decoded, or an image
            that is not single-frame grayscale.

    Example:
        >>> image = read_dicom_image("CXR/patient0001.dcm")  # doctest: +SKIP
        >>> image.shape, image.dtype  # doctest: +SKIP
        ((2048, 2500), dtype('float32'))
    """
    path = os.fspath(path)
    try:
        dataset = pydicom.dcmread(path)
    except InvalidDicomError as exc:
        raise UnreadableFileError(path, f"not a DICOM file ({exc})") from exc
    except Exception as exc:  # pydicom raises many types on damaged files
        raise UnreadableFileError(path, f"DICOM header cannot be read ({exc})") from exc
    frames = int(dataset.get("NumberOfFrames", 1) or 1)
    samples = int(dataset.get("SamplesPerPixel", 1) or 1)
    if "PixelData" not in dataset or frames != 1 or samples != 1:
        raise UnreadableFileError(
            path,
            "expected a single-frame grayscale image, got "
            f"{'no pixel data' if 'PixelData' not in dataset else f'{frames} frame(s)'}"
            f" with SamplesPerPixel={samples}",
        )
    stored = _decode_pixels(path, dataset)
    if str(dataset.get("PhotometricInterpretation", "")).upper() == "MONOCHROME1":
        low, high = _stored_value_range(dataset)
        stored = (high + low) - stored.astype(np.int64)
    return np.asarray(apply_modality_lut(stored, dataset), dtype=np.float32)


def _list_source(source) -> tuple[str, list[str]]:
    if isinstance(source, (str, os.PathLike)):
        folder = os.fspath(source)
        if not os.path.isdir(folder):
            problem = (
                "is not a folder (pass a list of files)"
                if os.path.exists(folder)
                else ("does not exist")
            )
            raise LayoutError(folder, f"expected a folder of DICOM files; it {problem}")
        entries = sorted(os.scandir(folder), key=lambda entry: entry.name)
        paths = [entry.path for entry in entries if entry.is_file()]
        if not paths:
            subfolders = [entry.name for entry in entries if entry.is_dir()]
            hint = f" (subfolders: {', '.join(subfolders)}; pass one of them)" if subfolders else ""
            raise LayoutError(folder, f"no files in the folder{hint}")
        return folder, paths
    paths = [os.fspath(p) for p in source]
    if not paths:
        raise LayoutError(None, "read_dicom_series got an empty list of files")
    parents = sorted({os.path.dirname(os.path.abspath(p)) for p in paths})
    folder = parents[0] if len(parents) == 1 else f"{len(paths)} files in {len(parents)} folders"
    return folder, paths


def _has_dicom_preamble(path: str) -> bool:
    with open(path, "rb") as handle:
        handle.seek(128)
        return handle.read(4) == b"DICM"


def _read_image_headers(paths: Iterable[str], folder: str) -> list[tuple[str, pydicom.Dataset]]:
    """Headers of the files that are DICOM images; everything else is skipped with a warning."""
    headers, skipped = [], []
    for path in paths:
        try:
            has_preamble = _has_dicom_preamble(path)
        except OSError as exc:
            raise UnreadableFileError(path, f"cannot be opened ({exc})") from exc
        try:
            with warnings.catch_warnings():
                # Forcing a parse of a non-DICOM file makes pydicom warn about every odd byte.
                if not has_preamble:
                    warnings.simplefilter("ignore")
                dataset = pydicom.dcmread(path, stop_before_pixels=True, force=not has_preamble)
        except Exception as exc:  # pydicom raises many types on damaged files
            if has_preamble:
                raise UnreadableFileError(path, f"DICOM header cannot be read ({exc})") from exc
            skipped.append(f"{path} (not DICOM)")
            continue
        is_image = "Rows" in dataset and "Columns" in dataset
        if not has_preamble and not (is_image and "SeriesInstanceUID" in dataset):
            # A forced parse of a text or thumbnail file yields a few junk elements at most.
            skipped.append(f"{path} (not DICOM)")
            continue
        if not is_image:
            # DICOMDIR, RTSTRUCT, SEG, SR ... stored beside the slices carry no image.
            kind = getattr(dataset.get("SOPClassUID"), "name", None) or "DICOM"
            skipped.append(f"{path} ({kind}, no image)")
            continue
        headers.append((path, dataset))
    if skipped:
        warnings.warn(
            SkippedFileWarning(f"{folder}: skipped {len(skipped)} file(s): " + "; ".join(skipped)),
            stacklevel=3,
        )
    if not headers:
        raise LayoutError(folder, "no DICOM image files found")
    return headers


def _select_series(headers, series_uid: str | None, folder: str):
    groups: dict[str, list] = {}
    for path, dataset in headers:
        groups.setdefault(str(dataset.get("SeriesInstanceUID", "") or ""), []).append(
            (path, dataset)
        )
    listing = ", ".join(
        f"{uid or '(blank SeriesInstanceUID)'} ({len(files)} files)"
        for uid, files in sorted(groups.items())
    )
    if series_uid is not None:
        if series_uid not in groups:
            raise DicomSeriesError(folder, f"series {series_uid} not found; present: {listing}")
        return groups[series_uid]
    if len(groups) > 1:
        raise DicomSeriesError(
            folder,
            f"holds {len(groups)} series: {listing}; pass series_uid= to choose one, or "
            "ignore_series_uid=True if an anonymiser gave each slice its own UID",
        )
    return next(iter(groups.values()))


def _order_slices(series, folder: str):
    """Sort by position along the slice normal and check that the slices form one grid."""
    for path, dataset in series:
        missing = [
            tag
            for tag in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing")
            if tag not in dataset
        ]
        if missing:
            raise DicomSeriesError(path, f"lacks {', '.join(missing)}; cannot place the slice")
        frames = int(dataset.get("NumberOfFrames", 1) or 1)
        samples = int(dataset.get("SamplesPerPixel", 1) or 1)
        if frames != 1 or samples != 1:
            raise DicomSeriesError(
                path,
                f"expected single-frame grayscale slices, got {frames} frame(s) with "
                f"SamplesPerPixel={samples}",
            )
    reference_path, reference = series[0]
    orientation = np.asarray(reference.ImageOrientationPatient, dtype=np.float64)
    spacing = np.asarray(reference.PixelSpacing, dtype=np.float64)
    grid = (int(reference.Rows), int(reference.Columns))
    for path, dataset in series[1:]:
        tilted = dataset.ImageOrientationPatient
        if not np.allclose(tilted, orientation, atol=_ORIENTATION_TOLERANCE):
            raise DicomSeriesError(
                path,
                f"ImageOrientationPatient {list(dataset.ImageOrientationPatient)} differs from "
                f"{list(orientation)} in {reference_path}",
            )
        if not np.allclose(dataset.PixelSpacing, spacing, atol=_SPACING_TOLERANCE_MM):
            raise DicomSeriesError(
                path,
                f"PixelSpacing {list(dataset.PixelSpacing)} differs from {list(spacing)} in "
                f"{reference_path}",
            )
        if (int(dataset.Rows), int(dataset.Columns)) != grid:
            raise DicomSeriesError(
                path,
                f"is {int(dataset.Rows)}x{int(dataset.Columns)} pixels, {reference_path} is "
                f"{grid[0]}x{grid[1]}",
            )
    normal = np.cross(orientation[:3], orientation[3:])
    positions = np.array([dataset.ImagePositionPatient for _, dataset in series], dtype=np.float64)
    distances = positions @ normal
    order = np.argsort(distances, kind="stable")
    ordered = [series[i] for i in order]
    positions, distances = positions[order], distances[order]
    if len(ordered) == 1:
        only = ordered[0][1]
        thickness = only.get("SpacingBetweenSlices") or only.get("SliceThickness") or 1.0
        return ordered, positions, normal * float(thickness)
    _check_gaps(ordered, np.diff(distances), folder)
    return ordered, positions, (positions[-1] - positions[0]) / (len(ordered) - 1)


def _check_gaps(ordered, gaps: np.ndarray, folder: str) -> None:
    names = [path for path, _ in ordered]
    duplicates = np.flatnonzero(gaps < SAME_POSITION_TOLERANCE_MM)
    if duplicates.size:
        index = duplicates[0]
        raise DicomSeriesError(
            names[index],
            f"and {names[index + 1]} are at the same slice position "
            f"({gaps[index]:.4f} mm apart): duplicated file, or several echoes/phases in one "
            "series",
        )
    # The lower median stays the true step even when half the gaps are doubled by losses.
    typical = float(np.partition(gaps, (len(gaps) - 1) // 2)[(len(gaps) - 1) // 2])
    missing = np.flatnonzero(gaps > MISSING_SLICE_GAP_RATIO * typical)
    if missing.size:
        described = "; ".join(
            f"between {names[i]} and {names[i + 1]} (gap {gaps[i]:.3f} mm)" for i in missing
        )
        raise DicomSeriesError(
            folder, f"slice(s) missing {described}; typical gap {typical:.3f} mm"
        )
    tolerance = max(UNEVEN_GAP_RELATIVE_TOLERANCE * typical, UNEVEN_GAP_ABSOLUTE_TOLERANCE_MM)
    uneven = np.flatnonzero(np.abs(gaps - typical) > tolerance)
    if uneven.size:
        described = "; ".join(f"{names[i]} -> {names[i + 1]}: {gaps[i]:.3f} mm" for i in uneven[:5])
        more = f" (and {uneven.size - 5} more)" if uneven.size > 5 else ""
        warnings.warn(
            UnevenSliceSpacingWarning(
                f"{folder}: slice gaps differ from the typical {typical:.3f} mm by more than "
                f"{tolerance:.3f} mm: {described}{more}; the volume uses the mean step"
            ),
            stacklevel=4,
        )


def _decode_pixels(path: str, dataset: pydicom.Dataset) -> np.ndarray:
    try:
        return dataset.pixel_array
    except Exception as exc:  # decoders raise ValueError, RuntimeError, OSError, ...
        raise UnreadableFileError(path, f"pixel data cannot be decoded ({exc})") from exc


def _read_vetted_file(path: str) -> pydicom.Dataset:
    """Full read of a file the header pass accepted, preamble or not."""
    try:
        dataset = pydicom.dcmread(path, force=True)
    except Exception as exc:  # pydicom raises many types on damaged files
        raise UnreadableFileError(path, f"DICOM file cannot be read ({exc})") from exc
    if "TransferSyntaxUID" not in dataset.file_meta:
        # Preamble-less files carry no file meta: the decoder needs the encoding pydicom
        # detected while parsing. Only the in-memory copy is changed.
        implicit_vr, little_endian = dataset.original_encoding
        if implicit_vr:
            dataset.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
        elif little_endian:
            dataset.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        else:
            dataset.file_meta.TransferSyntaxUID = ExplicitVRBigEndian
    return dataset


def _decode_in_hounsfield_units(ordered) -> np.ndarray:
    """Decode each slice once; int16 while every value is an exact int16, else float32."""
    first_path, first = ordered[0]
    shape = (len(ordered), int(first.Rows), int(first.Columns))
    volume = np.empty(shape, dtype=np.int16)
    int16 = np.iinfo(np.int16)
    for index, (path, _) in enumerate(ordered):
        dataset = _read_vetted_file(path)
        pixels = _decode_pixels(path, dataset)
        if pixels.shape != shape[1:]:
            raise UnreadableFileError(
                path, f"decoded pixel array has shape {pixels.shape}, header says {shape[1:]}"
            )
        values = apply_modality_lut(pixels, dataset)
        exact_int16 = (
            volume.dtype == np.int16
            and values.min() >= int16.min
            and values.max() <= int16.max
            and np.array_equal(values, np.round(values))
        )
        if volume.dtype == np.int16 and not exact_int16:
            volume = volume.astype(np.float32)
        volume[index] = values
    return volume


def _affine(first: pydicom.Dataset, positions: np.ndarray, step: np.ndarray) -> np.ndarray:
    """Index (k, j, i) -> RAS+ mm. Column j follows the column cosine (down the rows)."""
    orientation = np.asarray(first.ImageOrientationPatient, dtype=np.float64)
    row_spacing, column_spacing = (float(v) for v in first.PixelSpacing)
    lps = np.eye(4)
    lps[:3, 0] = step
    lps[:3, 1] = orientation[3:] * row_spacing
    lps[:3, 2] = orientation[:3] * column_spacing
    lps[:3, 3] = positions[0]
    return _LPS_TO_RAS @ lps


def _first_value(value) -> float | None:
    if value is None or value == "":
        return None
    if isinstance(value, (pydicom.multival.MultiValue, list, tuple)):
        return float(value[0]) if len(value) else None
    return float(value)


def _series_metadata(ordered) -> dict:
    first = ordered[0][1]
    metadata = {
        "modality": str(first.get("Modality", "")),
        "series_instance_uid": str(first.get("SeriesInstanceUID", "")),
        "study_instance_uid": str(first.get("StudyInstanceUID", "")),
        "frame_of_reference_uid": str(first.get("FrameOfReferenceUID", "")),
        "series_description": str(first.get("SeriesDescription", "")),
        "patient_sex": str(first.get("PatientSex", "")),
        "sop_instance_uids": tuple(str(ds.get("SOPInstanceUID", "")) for _, ds in ordered),
        "instance_numbers": tuple(
            int(ds.InstanceNumber) if ds.get("InstanceNumber") not in (None, "") else None
            for _, ds in ordered
        ),
    }
    for key, tag in (("window_center", "WindowCenter"), ("window_width", "WindowWidth")):
        value = _first_value(first.get(tag))
        if value is not None:
            metadata[key] = value
    return metadata


def _stored_value_range(dataset: pydicom.Dataset) -> tuple[int, int]:
    bits = int(dataset.get("BitsStored", dataset.get("BitsAllocated", 16)))
    if int(dataset.get("PixelRepresentation", 0)) == 1:
        return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    return 0, 2**bits - 1
