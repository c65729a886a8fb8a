"""DICOM Segmentation objects (DICOM-SEG): label maps out through highdicom, and back in as
kseg Volumes with pydicom alone.

:func:`write_dicom_seg` needs the optional extra ``kseg[seg]`` (highdicom); the readers
need nothing beyond pydicom, so kseg reads the SEG files other tools write (dcmqi, 3D
Slicer, highdicom) whether or not highdicom is installed.

A SEG file stores, per segment, one binary frame per slice the segment appears on, each
frame with its own ImagePositionPatient (and usually the SOPInstanceUID of the image it was
drawn on). A LABELMAP SEG (Label Map Segmentation Storage, as recent highdicom versions
write it) stores one frame per slice whose pixels hold segment numbers instead, the background
being its PixelPaddingValue. :func:`read_dicom_seg_masks` places each frame on a grid:

* **With the reference series** (the Volume :func:`kseg.io.read_dicom_series` returned for
  the images the SEG was drawn on), on that series' grid: a frame goes on the slice whose
  SOPInstanceUID it references (with its ReferencedFrameNumber when the series is one
  multi-frame Enhanced CT / MR file), else on the slice its position falls on; its in-plane
  origin, orientation, pixel spacing and size must be the series' (or an AlignmentError
  says which differs).
* **Without it**, on the grid the frames span: slices sorted along the normal of their
  orientation (as :func:`kseg.io.read_dicom_series` sorts images), slice planes
  SpacingBetweenSlices apart (else the smallest gap between frame positions along the
  normal; on a tilted stack SpacingBetweenSlices may be the slanted centre-to-centre step
  PS3.3 defines or the plane distance, whichever puts the frames on whole planes). A SEG
  of a gantry-tilted series, whose frame positions step off the normal, gets the sheared
  affine the series has (the mean step from the first frame to the last) and the series
  reader's :class:`kseg.io.GantryTiltWarning`, by the same thresholds.

Reference:
    DICOM PS3.3 A.51 (Segmentation IOD), C.8.20 (Segmentation Image Module); Herz C. et al.,
    "highdicom: a Python library for standardized encoding of image annotations and machine
    learning model outputs in pathology and radiology", J. Digit. Imaging 35, 1719-1737
    (2022).
"""

from __future__ import annotations

import contextlib
import copy
import math
import os
import pathlib
import sys
import warnings
from collections.abc import Mapping, Sequence

import numpy as np
import pydicom
import pydicom.encaps
from pydicom.errors import InvalidDicomError
from pydicom.uid import generate_uid

from kseg._files import atomic_output
from kseg.errors import AlignmentError, MaskError, UnreadableFileError
from kseg.io._pointer_files import pointer_note
from kseg.io.dicom import (
    ORIENTATION_ORTHONORMAL_TOLERANCE,
    ImageSlices,
    _gantry_tilt,
    _grid,
    _integer,
    _read_every_element,
    _warn_if_sheared,
    referenced_frame_number,
    unit_cosines,
)
from kseg.io.dicom_writer import _fits_character_set
from kseg.io.rtstruct_writer import (
    _LO_LENGTH,
    _STAND_IN_NOTE,
    BlankSeriesUidWarning,
    _check_text,
    _label_array,
    _roi_names,
    _stand_in_uid,
)
from kseg.io.volume import Volume, image_affine

__all__ = ["read_dicom_seg", "read_dicom_seg_masks", "write_dicom_seg"]

SEGMENTATION_STORAGE = "1.2.840.10008.5.1.4.1.1.66.4"
LABEL_MAP_SEGMENTATION_STORAGE = "1.2.840.10008.5.1.4.1.1.66.7"

_LPS_TO_RAS = np.array([-1.0, -1.0, 1.0])
# Patient and General Study attributes highdicom copies from the first source image; files
# written without them (kseg's own radiograph phantoms, some converters) get them empty.
_TYPE_2_PATIENT_AND_STUDY = (
    "PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
    "ReferringPhysicianName", "StudyID", "AccessionNumber",
)  # fmt: skip
# A frame lies on a slice / the grid's origin when its position is this close (in slices /
# pixels) to it: SEG writers round positions (dcmqi keeps 7 significant digits).
_POSITION_TOLERANCE = 0.05


def write_dicom_seg(
    labels: np.ndarray | Volume,
    reference_series: Volume,
    path: os.PathLike | str,
    segment_names: Mapping[int, str] | Sequence[str],
    *,
    series_description: str = "kseg segmentation",
    algorithm_name: str = "kseg",
    algorithm_version: str | None = None,
) -> pathlib.Path:
    """Write a label map on a DICOM series' grid as a binary DICOM-SEG drawn on that series.

    Built by highdicom (``pip install kseg[seg]``): one segment per named label, each frame
    referencing its source image, patient and study copied from the series, segments
    marked AUTOMATIC with the algorithm's name and version (family: artificial
    intelligence), property category "Anatomical Structure" and type "Organ" (SNOMED CT).
    Empty frames are left out. A series read from one multi-frame Enhanced CT / MR file is
    referenced as that file and its frame numbers (ReferencedFrameNumber). Segment numbers
    are 1, 2, ... over the named labels in increasing order, so labels 1..n keep their
    values; the segment label is the name.
    Written atomically (temporary name beside ``path``, then renamed).

    Args:
        labels: ``(z, y, x)`` integer label map (0 is background) on the series' grid, or
            a Volume on that grid.
        reference_series: the series, as :func:`kseg.io.read_dicom_series` returns it.
        path: the SEG file to write.
        segment_names: ``{label value: segment label}``, or names for labels 1, 2, ...
            Every nonzero value of ``labels`` needs one.
        series_description: SeriesDescription of the SEG.
        algorithm_name, algorithm_version: the AlgorithmIdentificationSequence (version:
            kseg's by default).

    Returns:
        ``path`` as a path.

    Raises:
        ImportError: highdicom is not installed.
        ValueError: as :func:`kseg.io.write_rtstruct` (labels off the grid, unnamed or
            negative values, repeated names, ``path`` one of the series' files, a series
            without FrameOfReferenceUID); a series of frames that is not every frame of one
            multi-frame file; a reference series cropped or resampled in-plane; a
            ``series_description``, ``algorithm_name`` or ``algorithm_version`` DICOM cannot
            hold as one value (over 64 characters, a backslash, a control character).
        OSError: a file of the series cannot be read.

    Warns:
        BlankSeriesUidWarning: the series has no StudyInstanceUID / SeriesInstanceUID; the
            SEG references stand-ins derived from the images' SOPInstanceUIDs, the ones
            :func:`kseg.io.write_rtstruct` writes for the same series.

    Example:
        >>> import tempfile
        >>> from kseg.io import read_dicom_series
        >>> from kseg.phantoms.lctsc import write_lctsc
        >>> root = write_lctsc(tempfile.mkdtemp(), num_patients=1, num_test_patients=0,
        ...                    num_slices=4, size=32)  # LCTSC's layout, phantom anatomy
        >>> ct = read_dicom_series(next(root.glob("LCTSC/*/*/*-CT *")))
        >>> prediction = np.zeros(ct.shape, np.uint8)
        >>> prediction[1:3, 8:20, 10:24] = 1
        >>> prediction[2, 20:28, 4:8] = 2
        >>> path = write_dicom_seg(prediction, ct, root / "seg.dcm", {1: "Liver", 2: "Spleen"})
        >>> seg = pydicom.dcmread(path)
        >>> [item.SegmentLabel for item in seg.SegmentSequence], int(seg.NumberOfFrames)
        (['Liver', 'Spleen'], 3)
        >>> np.array_equal(read_dicom_seg(path, reference_series=ct).array, prediction)
        True

        Three frames: Liver on two slices, Spleen on one; empty frames are not written.
    """
    try:
        import highdicom as hd
        from pydicom.sr.codedict import codes
    except ImportError as exc:
        raise ImportError(
            "write_dicom_seg needs highdicom: pip install 'kseg[seg]'"
        ) from exc
    import kseg

    array = _label_array(labels, reference_series)
    names = _roi_names(segment_names)
    # LO values (PS3.5 6.2); highdicom checks two of them without naming the argument and
    # wrote a longer AlgorithmVersion into the file
    _check_text(series_description, "series_description", _LO_LENGTH)
    _check_text(algorithm_name, "algorithm_name", _LO_LENGTH)
    if algorithm_version is not None:
        _check_text(algorithm_version, "algorithm_version", _LO_LENGTH)
    present = {int(v) for v in np.unique(array)} - {0}
    unnamed = sorted(present - set(names))
    if unnamed:
        raise ValueError(
            f"labels holds values without a segment name: {unnamed[:10]}; segment_names "
            f"covers {sorted(names)}"
        )
    path = pathlib.Path(path)
    if os.path.realpath(path) in {os.path.realpath(f) for f in reference_series.source_files}:
        raise ValueError(f"{path}: is a file of the reference series; it would be overwritten")
    sources = _source_datasets(reference_series)

    values = sorted(names)
    segment_of = np.zeros(max(values) + 1, np.uint16)
    segment_of[values] = np.arange(1, len(values) + 1)
    algorithm = hd.AlgorithmIdentificationSequence(
        name=algorithm_name,
        family=codes.cid7162.ArtificialIntelligence,
        version=algorithm_version or kseg.__version__,
    )
    descriptions = [
        hd.seg.SegmentDescription(
            segment_number=number,
            segment_label=names[value],
            segmented_property_category=codes.SCT.AnatomicalStructure,
            segmented_property_type=codes.SCT.Organ,
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algorithm,
        )
        for number, value in enumerate(values, start=1)
    ]
    segments = segment_of[array]
    if reference_series.metadata.get("frame_numbers"):
        segments = _in_frame_order(segments, reference_series, sources[0])
    seg = hd.seg.Segmentation(
        source_images=sources,
        pixel_array=segments,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        series_instance_uid=generate_uid(),
        series_number=1,
        sop_instance_uid=generate_uid(),
        instance_number=1,
        manufacturer="kseg",
        manufacturer_model_name=algorithm_name,
        software_versions=f"kseg {kseg.__version__}",
        device_serial_number="",
        series_description=series_description,
    )
    if not _fits_character_set(seg):
        # highdicom keeps the source's character set: a segment name in Japanese on a
        # Latin-1 series would be written as "??"
        seg.SpecificCharacterSet = "ISO_IR 192"
    with atomic_output(path) as temporary:
        seg.save_as(temporary, enforce_file_format=True)
    return path


def _source_datasets(series: Volume) -> list[pydicom.Dataset]:
    """The series' headers in array order, as highdicom needs them (a multi-frame file's
    once); UIDs an anonymiser blanked are restored from the file meta (SOP instance) or
    replaced (study, series)."""
    if len(series.source_files) != series.shape[0]:
        raise ValueError(
            f"reference_series has {len(series.source_files)} source files for "
            f"{series.shape[0]} slices: pass the Volume read_dicom_series returns"
        )
    files = list(dict.fromkeys(series.source_files))
    if series.metadata.get("frame_numbers") and len(files) > 1:
        raise ValueError(
            f"reference_series holds frames of {len(files)} files ({files[0]}, ...); a SEG "
            "references the frames of one multi-frame image (highdicom takes one as the "
            "source; for an image split into a Concatenation, write_rtstruct references "
            "each file's frames)"
        )
    datasets = []
    for path in files:
        try:
            datasets.append(pydicom.dcmread(path, stop_before_pixels=True, force=True))
        except Exception as exc:  # pydicom raises many types on damaged files
            raise OSError(f"{path}: cannot read the series' header ({exc})") from exc
    for path, ds in zip(files, datasets, strict=True):
        pixels = (ds.get("Rows"), ds.get("Columns"))
        if pixels != series.shape[1:]:
            # highdicom: "Arguments 'plane_positions' and 'pixel_measures' must be provided"
            raise ValueError(
                f"{path}: its image is {pixels[0]} x {pixels[1]} pixels, reference_series "
                f"{series.shape[1]} x {series.shape[2]} (cropped or resampled?); a SEG's "
                "frames are its source images' pixels: pass the series as read_dicom_series "
                "returns it, with the labels on that grid (kseg.geometry.uncrop or "
                "to_original_grid bring a result back onto it)"
            )
    enhanced = [
        path for path, ds in zip(files, datasets, strict=True)
        if "PerFrameFunctionalGroupsSequence" in ds or "SharedFunctionalGroupsSequence" in ds
    ]  # fmt: skip
    if enhanced and len(files) > 1:
        raise ValueError(
            f"{enhanced[0]}: reference_series is a series of {len(files)} files, Enhanced "
            "(multi-frame IOD) images among them, each holding one frame; highdicom takes a "
            "single multi-frame source image, so a SEG cannot reference them "
            "(write_rtstruct references each file)"
        )
    # SOPInstanceUIDs an anonymiser blanked in the data set are the file meta's (PS3.10)
    sop_uids = [
        str(ds.get("SOPInstanceUID", "") or "")
        or str(getattr(ds, "file_meta", {}).get("MediaStorageSOPInstanceUID", "") or "")
        for ds in datasets
    ]
    replaced = {}
    for keyword in ("StudyInstanceUID", "SeriesInstanceUID"):
        if not all(str(ds.get(keyword, "") or "") for ds in datasets):
            # the same stand-in write_rtstruct uses: both objects in one study
            replaced[keyword] = _stand_in_uid(keyword, sop_uids)
    if replaced:
        warnings.warn(
            BlankSeriesUidWarning(
                f"{os.path.dirname(series.source_files[0])}: the series has no "
                f"{' and '.join(replaced)} (blanked by an anonymiser?); the SEG "
                f"{_STAND_IN_NOTE}"
            ),
            stacklevel=3,
        )
    patched = []
    for path, ds in zip(files, datasets, strict=True):
        ds = copy.deepcopy(ds)
        for keyword, uid in replaced.items():
            setattr(ds, keyword, uid)
        if not str(ds.get("SOPInstanceUID", "") or ""):
            uid = str(ds.file_meta.get("MediaStorageSOPInstanceUID", "") or "")
            if not uid:
                raise ValueError(f"{path}: the slice has no SOPInstanceUID; a SEG references it")
            ds.SOPInstanceUID = uid
        if not str(ds.get("SOPClassUID", "") or ""):
            ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID
        if not str(ds.get("FrameOfReferenceUID", "") or ""):
            if "ImagePositionPatient" in ds or "PerFrameFunctionalGroupsSequence" in ds:
                # highdicom copied a blank one into the SEG, where it is Type 1
                raise ValueError(
                    f"reference_series ({os.path.dirname(path)}) has no FrameOfReferenceUID "
                    f"(first: {path}; blanked by an anonymiser?): a SEG of images placed in "
                    "patient coordinates must carry theirs (PS3.3 C.7.4.1, Type 1)"
                )
            ds.pop("FrameOfReferenceUID", None)  # blank: absent, where the IOD allows it
        if "SpecificCharacterSet" in ds and not ds.SpecificCharacterSet:
            del ds.SpecificCharacterSet  # empty: the default repertoire, as if absent
        elif not isinstance(ds.get("SpecificCharacterSet", ""), str):
            # "\ISO 2022 IR 87" (Japanese archives): an empty first value is the default
            # repertoire (PS3.3 C.12.1.1.2), which highdicom accepts only by its name
            ds.SpecificCharacterSet = [v or "ISO 2022 IR 6" for v in ds.SpecificCharacterSet]
        for keyword in _TYPE_2_PATIENT_AND_STUDY:
            if keyword not in ds:  # type 2: present, empty when unknown (PS3.3 C.7.1.1, C.7.2.1)
                setattr(ds, keyword, "")
        if "ImagePositionPatient" in ds and not ds.get("SliceThickness"):
            # highdicom copies it into the SEG's pixel measures; the distance between slice
            # planes stands in (not the step, which a gantry tilt slants)
            ds.SliceThickness = series.plane_spacing[0]
        if "PerFrameFunctionalGroupsSequence" in ds:
            _share_plane_groups(ds)
        patched.append(ds)
    first_with: dict[str, str] = {}
    for path, ds in zip(files, patched, strict=True):
        other = first_with.setdefault(str(ds.SOPInstanceUID), path)
        if other != path:
            raise ValueError(
                f"reference_series: {other} and {path} share SOPInstanceUID "
                f"{ds.SOPInstanceUID} (an anonymiser gave the slices one UID?); a SEG's frames "
                "reference their slices by it"
            )
    return patched


def _share_plane_groups(ds: pydicom.Dataset) -> None:
    """Give a multi-frame header shared orientation and pixel measures where its frames
    carry them each: highdicom reads them from the shared functional groups only, PS3.3
    C.7.6.16 allows either, and the series reader has checked that the frames agree."""
    if not ds.get("SharedFunctionalGroupsSequence"):
        ds.SharedFunctionalGroupsSequence = [pydicom.Dataset()]
    shared = ds.SharedFunctionalGroupsSequence[0]
    first_frame = ds.PerFrameFunctionalGroupsSequence[0]
    for keyword in ("PlaneOrientationSequence", "PixelMeasuresSequence"):
        if keyword not in shared and keyword in first_frame:
            setattr(shared, keyword, copy.deepcopy(first_frame[keyword].value))


def _in_frame_order(segments: np.ndarray, series: Volume, source: pydicom.Dataset):
    """A label map on a multi-frame image's slices, reordered into its frames' order (what
    highdicom pairs with the source's frames)."""
    numbers = np.asarray(series.metadata["frame_numbers"], int)
    count = int(source.get("NumberOfFrames", 0) or 0)
    if sorted(numbers.tolist()) != list(range(1, count + 1)):
        raise ValueError(
            f"{series.source_files[0]}: reference_series holds frames "
            f"{sorted(numbers.tolist())[:10]} of its {count}; a SEG on a multi-frame image "
            "covers each of its frames once (pass the Volume read_dicom_series returns)"
        )
    in_file_order = np.empty_like(segments)
    in_file_order[numbers - 1] = segments
    return in_file_order


def read_dicom_seg_masks(
    path: os.PathLike | str, *, reference_series: Volume | None = None
) -> dict[int, Volume]:
    """Read each segment of a DICOM-SEG as a binary mask Volume.

    See the module docstring for how frames are placed on a grid.

    Args:
        path: the SEG file (BINARY; FRACTIONAL read as value >= half the maximum;
            LABELMAP, each segment where the pixels hold its number).
        reference_series: the series the SEG was drawn on; its grid is used.

    Returns:
        ``{segment number: Volume}`` in SegmentSequence order (a LABELMAP's background
        segment left out); each array ``uint8`` 0/1, ``metadata["segment_label"]`` the
        SegmentLabel, ``source_files`` the SEG file.

    Raises:
        UnreadableFileError: not DICOM, not a Segmentation, or its frames lack the
            position / orientation / spacing / segment number needed to place them; a
            LABELMAP pixel value that is neither a segment nor the background; an element
            pydicom cannot convert (a damaged file); NumberOfFrames, Rows or Columns not
            integers, no SegmentSequence, or pixel data that do not hold NumberOfFrames
            frames (compressed: more frames than fragments).
        AlignmentError: with ``reference_series``: another FrameOfReferenceUID, another
            orientation, pixel spacing or size, or frames off the series' slices.

    Warns:
        GantryTiltWarning: without ``reference_series``, the frame positions step off the
            slice normal (a gantry-tilted series); the masks keep the sheared affine.
    """
    path = os.fspath(path)
    ds = _read_segmentation(path)
    frames = _frames(path, ds)
    if frames.positions is None:
        grid = _grid_of_source_images(path, ds, frames, reference_series)
    elif reference_series is None:
        grid = _grid_of_frames(path, ds, frames)
    else:
        grid = _grid_of_series(path, ds, frames, reference_series)
    pixels = _pixels(path, ds)
    background = _label_map_background(ds)
    labels = {
        int(item.SegmentNumber): str(item.get("SegmentLabel", "") or "")
        for item in ds.SegmentSequence
        if int(item.SegmentNumber) != background
    }
    masks = {number: np.zeros(grid.shape, np.uint8) for number in labels}
    for frame, (number, k) in enumerate(zip(frames.segments, grid.slices, strict=True)):
        if number is None:
            _check_label_map_frame(path, pixels[frame], frame, set(masks), background)
            for value, mask in masks.items():
                mask[k] |= pixels[frame] == value
            continue
        if number not in masks:
            raise UnreadableFileError(
                path, f"frame {frame} names segment {number}, which SegmentSequence lacks"
            )
        masks[number][k] |= pixels[frame]
    metadata = {
        "frame_of_reference_uid": str(ds.get("FrameOfReferenceUID", "") or ""),
        "series_instance_uid": str(ds.get("SeriesInstanceUID", "") or ""),
    }
    return {
        number: Volume(
            array=mask,
            affine=grid.affine,
            patient_id=str(ds.get("PatientID", "") or ""),
            source_files=(path,),
            metadata={**metadata, "segment_label": labels[number]},
        )
        for number, mask in masks.items()
    }


def read_dicom_seg(
    path: os.PathLike | str, *, reference_series: Volume | None = None
) -> Volume:
    """Read a DICOM-SEG as one label map: each voxel holds its segment number (0: none).

    Args:
        path: the SEG file.
        reference_series: the series the SEG was drawn on; its grid is used (see
            :func:`read_dicom_seg_masks`).

    Returns:
        A ``uint16`` label Volume; ``metadata["segment_labels"]`` maps segment numbers to
        SegmentLabels.

    Raises:
        MaskError: segments overlap (a label map cannot hold both); the message names them
            (use :func:`read_dicom_seg_masks`).
        UnreadableFileError, AlignmentError: see :func:`read_dicom_seg_masks`.

    Example:
        A SEG written by :func:`write_dicom_seg` on a phantom series:

        >>> import tempfile
        >>> from kseg.io import read_dicom_series
        >>> from kseg.phantoms.lctsc import write_lctsc
        >>> root = write_lctsc(tempfile.mkdtemp(), num_patients=1, num_test_patients=0,
        ...                    num_slices=4, size=32)
        >>> ct = read_dicom_series(next(root.glob("LCTSC/*/*/*-CT *")))
        >>> drawn = np.zeros(ct.shape, np.uint8)
        >>> drawn[1:3, 8:20, 10:24] = 1
        >>> path = write_dicom_seg(drawn, ct, root / "liver.dcm", ["Liver"])
        >>> liver = read_dicom_seg(path, reference_series=ct)
        >>> liver.metadata["segment_labels"], liver.array.dtype, liver.shape
        ({1: 'Liver'}, dtype('uint16'), (4, 32, 32))

        Without the series, the grid is the slices the frames span:

        >>> read_dicom_seg(path).shape
        (2, 32, 32)
    """
    masks = read_dicom_seg_masks(path, reference_series=reference_series)
    if not masks:
        raise UnreadableFileError(path, "the SEG holds no segment")
    first = next(iter(masks.values()))
    labels = np.zeros(first.shape, np.uint16)
    overlaps = set()
    for number, mask in masks.items():
        inside = mask.array.astype(bool)
        for other in np.unique(labels[inside & (labels > 0)]):
            overlaps.add((int(other), number))
        labels[inside] = number
    if overlaps:
        described = ", ".join(f"{a} and {b}" for a, b in sorted(overlaps))
        raise MaskError(
            path,
            f"segments overlap ({described}), which one label map cannot hold; read them "
            "with read_dicom_seg_masks",
        )
    metadata = {key: value for key, value in first.metadata.items() if key != "segment_label"}
    metadata["segment_labels"] = {n: m.metadata["segment_label"] for n, m in masks.items()}
    return Volume(labels, first.affine, first.patient_id, first.source_files, metadata)


class _Frames:
    def __init__(self, positions, segments, sources, orientation, spacing):
        self.positions = positions  # (n, 3) LPS
        self.segments = segments  # segment number per frame
        # (referenced SOPInstanceUID or "", its ReferencedFrameNumber or None) per frame
        self.sources = sources
        self.orientation = orientation  # (6,)
        self.spacing = spacing  # (row spacing, column spacing)


class _Grid:
    def __init__(self, shape, affine, slices):
        self.shape = shape
        self.affine = affine
        self.slices = slices  # slice index per frame


def _read_segmentation(path: str) -> pydicom.Dataset:
    try:
        ds = pydicom.dcmread(path)
    except InvalidDicomError as exc:
        raise UnreadableFileError(path, f"not a DICOM file ({exc}){pointer_note(path)}") from exc
    except Exception as exc:  # pydicom raises many types on damaged files
        raise UnreadableFileError(path, f"DICOM file cannot be read ({exc})") from exc
    _read_every_element(path, ds)
    sop_classes = (SEGMENTATION_STORAGE, LABEL_MAP_SEGMENTATION_STORAGE)
    if str(ds.get("SOPClassUID", "")) not in sop_classes and ds.get("Modality") != "SEG":
        raise UnreadableFileError(
            path,
            f"expected a DICOM Segmentation (SOP Class {' or '.join(sop_classes)}), got "
            f"Modality {ds.get('Modality') or '(none)'}, SOP Class "
            f"{ds.get('SOPClassUID') or '(none)'}",
        )
    if ds.get("SegmentationType") not in ("BINARY", "FRACTIONAL", "LABELMAP"):
        raise UnreadableFileError(
            path,
            f"SegmentationType {ds.get('SegmentationType')!r} is not BINARY, FRACTIONAL or "
            "LABELMAP",
        )
    # checked once here: the frames are counted and reshaped by them everywhere below
    frames = _integer(
        path, ds, "NumberOfFrames", UnreadableFileError, default=1, allowed=range(1, 2**31)
    )
    rows, columns = _grid(path, ds, UnreadableFileError)
    if not ds.get("SegmentSequence"):
        raise UnreadableFileError(path, "has no SegmentSequence: its segments are not described")
    _check_frames_held(path, ds, frames, rows, columns)
    return ds


def _check_frames_held(path: str, ds: pydicom.Dataset, frames: int, rows: int, columns: int):
    """Refuse pixel data that do not hold NumberOfFrames frames, before the frames are
    walked one by one: a SEG declaring 10**8 frames in its shared functional groups kept the
    reader busy for an hour (39 s a million), and compressed, had pydicom allocate 24 GiB
    for 10**5; one declaring fewer frames than it holds failed in numpy's reshape.
    Compressed data are counted by their fragments here (each frame takes one or more) and
    by their frames once decoded, in :func:`_pixels`."""
    if "PixelData" not in ds:
        raise UnreadableFileError(path, "has no PixelData")
    syntax = ds.file_meta.get("TransferSyntaxUID")
    if syntax is not None and pydicom.uid.UID(str(syntax)).is_compressed:
        fragments = _fragment_count(path, ds.PixelData)
        if fragments < frames:
            raise UnreadableFileError(
                path,
                f"NumberOfFrames is {frames}, but its compressed PixelData hold {fragments} "
                "fragments, and each frame takes at least one",
            )
        return
    bits = _integer(path, ds, "BitsAllocated", UnreadableFileError, allowed=(1, 8, 16))
    held = len(ds.PixelData)
    frame_pixels = rows * columns
    needed = math.ceil(frames * frame_pixels * bits / 8)  # BINARY frames are packed end to end
    one_more = math.ceil((frames + 1) * frame_pixels * bits / 8)
    if held < needed or (held > needed + 1 and held >= one_more):  # + 1: the even-length pad
        raise UnreadableFileError(
            path,
            f"NumberOfFrames is {frames}, but its PixelData ({held} bytes) hold "
            f"{held * 8 // (frame_pixels * bits)} frames of {rows} x {columns} pixels of "
            f"{bits} bit(s)",
        )


def _fragment_count(path: str, encapsulated: bytes) -> int:
    """The fragments of encapsulated pixel data, after their Basic Offset Table item."""
    try:
        first_fragment = 8 + int.from_bytes(encapsulated[4:8], "little")
        return pydicom.encaps.parse_fragments(encapsulated[first_fragment:])[0]
    except Exception as exc:  # pydicom raises ValueError on a damaged item
        raise UnreadableFileError(
            path, f"compressed PixelData cannot be split into fragments ({exc})"
        ) from exc


def _functional(path: str, ds: pydicom.Dataset, frame: int, sequence: str, keyword: str):
    """``keyword`` of ``sequence`` from the frame's functional groups, else the shared ones."""
    groups = []
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    if per_frame is not None and frame < len(per_frame):
        groups.append(per_frame[frame])
    shared = ds.get("SharedFunctionalGroupsSequence")
    if shared:
        groups.append(shared[0])
    for group in groups:
        items = group.get(sequence)
        if items and keyword in items[0]:
            return items[0].get(keyword)
    raise UnreadableFileError(path, f"frame {frame} has no {sequence} > {keyword}")


def _frames(path: str, ds: pydicom.Dataset) -> _Frames:
    count = int(ds.get("NumberOfFrames", 1) or 1)
    segments, sources = _segments_and_sources(path, ds, count)
    if not _has_plane_positions(ds):
        return _Frames(None, segments, sources, None, None)
    positions, orientations, spacings = [], [], []
    for frame in range(count):
        try:
            positions.append([float(v) for v in _functional(
                path, ds, frame, "PlanePositionSequence", "ImagePositionPatient")])
            orientations.append([float(v) for v in _functional(
                path, ds, frame, "PlaneOrientationSequence", "ImageOrientationPatient")])
            spacings.append([float(v) for v in _functional(
                path, ds, frame, "PixelMeasuresSequence", "PixelSpacing")])
        except (TypeError, ValueError) as exc:
            raise UnreadableFileError(path, f"frame {frame}: unusable geometry ({exc})") from exc
    positions = np.array(positions, float)
    orientations = np.array(orientations, float)
    spacings = np.array(spacings, float)
    if positions.shape != (count, 3) or orientations.shape != (count, 6) or (
        spacings.shape != (count, 2)
    ):
        raise UnreadableFileError(path, "frames hold positions, orientations or spacings of "
                                        "the wrong length")
    if not np.isfinite(positions).all() or not np.allclose(orientations, orientations[0],
                                                           atol=1e-4):
        raise UnreadableFileError(path, "frames differ in orientation or hold non-finite "
                                        "positions; cannot put them on one grid")
    if not np.allclose(spacings, spacings[0], rtol=1e-4) or (spacings[0] <= 0).any():
        raise UnreadableFileError(path, "frames differ in pixel spacing or it is not positive")
    orientation = orientations[0]
    lengths = np.linalg.norm(orientation.reshape(2, 3), axis=1)
    if not np.all(np.abs(lengths - 1) <= ORIENTATION_ORTHONORMAL_TOLERANCE):
        raise UnreadableFileError(
            path, f"ImageOrientationPatient {orientation.tolist()} is not two unit vectors"
        )
    # normalised as the series reader normalises them, so that a SEG copying its series'
    # rounded orientation lies on the series' grid
    orientation = unit_cosines(orientation)
    return _Frames(positions, segments, sources, orientation, spacings[0])


def _segments_and_sources(path: str, ds: pydicom.Dataset, count: int):
    """Each frame's segment number (``None`` in a LABELMAP SEG, whose frames hold them all)
    and the image it was drawn on: ``(SOPInstanceUID, frame number)``, ``""`` when it names
    none, the frame ``None`` unless it names one frame of a multi-frame image."""
    segments, sources = [], []
    per_frame = ds.get("PerFrameFunctionalGroupsSequence") or []
    for frame in range(count):
        if ds.SegmentationType == "LABELMAP":  # every segment in every frame
            segments.append(None)
        else:
            try:
                segments.append(int(_functional(
                    path, ds, frame, "SegmentIdentificationSequence", "ReferencedSegmentNumber")))
            except (TypeError, ValueError) as exc:
                raise UnreadableFileError(
                    path, f"frame {frame}: unusable segment number ({exc})"
                ) from exc
        image = ("", None)
        if frame < len(per_frame):
            for derivation in per_frame[frame].get("DerivationImageSequence", []):
                for source in derivation.get("SourceImageSequence", []):
                    uid = str(source.get("ReferencedSOPInstanceUID", "") or "")
                    if uid and not image[0]:
                        image = (uid, referenced_frame_number(source))
        sources.append(image)
    return segments, sources


def _has_plane_positions(ds: pydicom.Dataset) -> bool:
    """Whether any frame is placed in the patient: SEGs of images without a frame of
    reference (projection radiographs, photographs) place frames by source image only."""
    groups = [*(ds.get("PerFrameFunctionalGroupsSequence") or []),
              *(ds.get("SharedFunctionalGroupsSequence") or [])]  # fmt: skip
    return any("PlanePositionSequence" in group for group in groups)


def _grid_of_source_images(
    path: str, ds: pydicom.Dataset, frames: _Frames, series: Volume | None
) -> _Grid:
    """A SEG without plane positions: each frame lies on the image it references, one
    slice per image (the reference's slices, else the images in the order frames name
    them, on plain axes at the SEG's pixel spacing or 1 mm)."""
    unplaced = [frame for frame, (uid, _) in enumerate(frames.sources) if not uid]
    if unplaced:
        raise UnreadableFileError(
            path, f"frame {unplaced[0]} has neither a plane position nor a source image"
        )
    if series is None:
        images = list(dict.fromkeys(frames.sources))
        slice_of_image = {image: k for k, image in enumerate(images)}
        spacing = [1.0, 1.0]
        with contextlib.suppress(UnreadableFileError, TypeError, ValueError):
            spacing = [float(v) for v in _functional(
                path, ds, 0, "PixelMeasuresSequence", "PixelSpacing")]
        affine = image_affine(*spacing)
        shape = (len(images), int(ds.Rows), int(ds.Columns))
    else:
        slices = ImageSlices(series)
        slice_of_image = {image: slices.slice_of(*image) for image in set(frames.sources)}
        affine, shape = series.affine, series.shape
        if (int(ds.Rows), int(ds.Columns)) != shape[1:]:
            raise AlignmentError(
                path, f"the SEG's frames are {ds.Rows}x{ds.Columns}, the reference images' "
                f"{shape[1]}x{shape[2]}",
            )
        strangers = [image for image in frames.sources if slice_of_image[image] is None]
        if strangers:
            uid, number = strangers[0]
            raise AlignmentError(
                path, f"frames reference the image {uid}"
                + (f" frame {number}" if number is not None else "")
                + ", which is not in the reference series (its metadata['sop_instance_uids']"
                " and ['frame_numbers'])",
            )
    placed = np.array([slice_of_image[image] for image in frames.sources], int)
    return _Grid(shape, affine, placed)


def _label_map_background(ds: pydicom.Dataset) -> int | None:
    """The pixel value of a LABELMAP SEG's background: its PixelPaddingValue (highdicom also
    describes it as a segment, labelled "Background"); ``None`` for other SEGs."""
    if ds.SegmentationType != "LABELMAP" or ds.get("PixelPaddingValue") is None:
        return None
    return int(ds.PixelPaddingValue)


def _check_label_map_frame(path, frame_pixels, frame: int, segments: set, background) -> None:
    stray = sorted(set(np.unique(frame_pixels).tolist()) - segments - {background})
    if stray:
        raise UnreadableFileError(
            path,
            f"LABELMAP frame {frame} holds pixel value(s) {stray[:5]}, which neither "
            f"SegmentSequence ({sorted(segments)}) nor PixelPaddingValue (background, "
            f"{background}) names",
        )


def _pixels(path: str, ds: pydicom.Dataset) -> np.ndarray:
    try:
        pixels = np.asarray(ds.pixel_array)
    except Exception as exc:  # pydicom raises many types on damaged pixel data
        raise UnreadableFileError(path, f"pixel data cannot be decoded ({exc})") from exc
    shape = (int(ds.get("NumberOfFrames", 1) or 1), int(ds.Rows), int(ds.Columns))
    if pixels.size != np.prod(shape):
        raise UnreadableFileError(
            path,
            f"pixel data decode to {pixels.shape}, not NumberOfFrames x Rows x Columns {shape}",
        )
    pixels = pixels.reshape(shape)
    if ds.SegmentationType == "LABELMAP":  # segment numbers, palette indices if PALETTE COLOR
        return pixels
    if ds.SegmentationType == "FRACTIONAL":
        maximum = float(ds.get("MaximumFractionalValue", 255) or 255)
        return (pixels >= maximum / 2).astype(np.uint8)
    return (pixels > 0).astype(np.uint8)


def _normal(frames: _Frames) -> np.ndarray:
    return np.cross(frames.orientation[:3], frames.orientation[3:])


def _index_affine(frames: _Frames, origin: np.ndarray, step: np.ndarray) -> np.ndarray:
    """Index (k, j, i) -> RAS+ mm of frames at ``origin`` stepping by ``step`` (LPS mm)."""
    row_cosine, column_cosine = frames.orientation[:3], frames.orientation[3:]
    row_spacing, column_spacing = frames.spacing
    affine = np.eye(4)
    affine[:3, 0] = step * _LPS_TO_RAS
    affine[:3, 1] = column_cosine * row_spacing * _LPS_TO_RAS
    affine[:3, 2] = row_cosine * column_spacing * _LPS_TO_RAS
    affine[:3, 3] = origin * _LPS_TO_RAS
    return affine


def _first_level_outside_this_module() -> int:
    """The ``stacklevel`` of a warning issued one call below the caller of this function
    that names the first frame outside this module: read_dicom_seg reaches here through
    read_dicom_seg_masks, so a fixed level would name this file for one of the two."""
    level, frame = 2, sys._getframe(1)
    while frame is not None and frame.f_code.co_filename == __file__:
        level, frame = level + 1, frame.f_back
    return level


def _grid_of_frames(path: str, ds: pydicom.Dataset, frames: _Frames) -> _Grid:
    """The grid the frames span: planes ``spacing`` apart along the normal, the slice axis
    the mean step between frame positions, which a gantry-tilted series slants off the
    normal (a GantryTiltWarning, by the series reader's rule, says so)."""
    normal = _normal(frames)
    along = frames.positions @ normal
    first, last = int(np.argmin(along)), int(np.argmax(along))
    offsets = along - along[first]
    spacing = _plane_distance(ds, frames, offsets, first, last)
    if not _on_whole_planes(offsets, spacing):
        raise UnreadableFileError(
            path, f"frame positions are not whole multiples of the slice spacing {spacing} mm"
        )
    slices = np.round(offsets / spacing).astype(int)
    step = normal * spacing
    measured = (frames.positions[last] - frames.positions[first]) / max(int(slices[last]), 1)
    if _gantry_tilt(measured, normal, int(slices[last]) + 1) is not None:
        step = measured
        _warn_if_sheared(path, path, ds, step, normal, int(slices[last]) + 1,
                         stacklevel=_first_level_outside_this_module())
    affine = _index_affine(frames, frames.positions[first], step)
    in_plane = _to_index(affine, frames.positions)[:, 1:]
    if np.abs(in_plane).max() > _POSITION_TOLERANCE:
        raise UnreadableFileError(
            path, "frames have different in-plane origins: they do not step evenly from "
            "the first frame's position to the last's"
        )  # fmt: skip
    shape = (int(slices[last]) + 1, int(ds.Rows), int(ds.Columns))
    return _Grid(shape, affine, slices)


def _plane_distance(ds: pydicom.Dataset, frames: _Frames, offsets, first: int, last: int):
    """The distance between slice planes. SpacingBetweenSlices is measured centre to centre
    (PS3.3 C.7.6.16.2.1), which on a gantry-tilted stack is the slanted step, longer than the
    plane distance some writers store: whichever puts the frames on whole planes is taken.
    Without it, the smallest gap between frames along the normal."""
    stated = _functional_or_none(ds, "PixelMeasuresSequence", "SpacingBetweenSlices")
    if stated is None or stated <= 0:
        gaps = np.diff(np.unique(np.round(offsets, 4)))
        return float(gaps.min()) if len(gaps) else float(
            _functional_or_none(ds, "PixelMeasuresSequence", "SliceThickness") or 1.0
        )
    span = float(np.linalg.norm(frames.positions[last] - frames.positions[first]))
    cosine = offsets[last] / span if span > 0 else 1.0
    return next(
        (spacing for spacing in (stated, stated * cosine) if _on_whole_planes(offsets, spacing)),
        stated,
    )


def _on_whole_planes(offsets: np.ndarray, spacing: float) -> bool:
    index = offsets / spacing
    return bool(np.abs(index - np.round(index)).max() <= _POSITION_TOLERANCE)


def _grid_of_series(path: str, ds: pydicom.Dataset, frames: _Frames, series: Volume) -> _Grid:
    series_frame = str(series.metadata.get("frame_of_reference_uid", "") or "")
    seg_frame = str(ds.get("FrameOfReferenceUID", "") or "")
    if series_frame and seg_frame and series_frame != seg_frame:
        raise AlignmentError(
            path, f"the SEG is in frame of reference {seg_frame}, the series in {series_frame}"
        )
    expected = _index_affine(frames, np.zeros(3), _normal(frames))
    actual = series.affine[:3, 1:3]
    if not np.allclose(expected[:3, 1:3], actual, atol=1e-3 * max(frames.spacing)):
        raise AlignmentError(
            path,
            f"the SEG's orientation {frames.orientation.tolist()} and pixel spacing "
            f"{frames.spacing.tolist()} differ from the series'",
        )
    if (int(ds.Rows), int(ds.Columns)) != series.shape[1:]:
        raise AlignmentError(
            path, f"the SEG's frames are {ds.Rows}x{ds.Columns}, the series' slices "
            f"{series.shape[1]}x{series.shape[2]}",
        )
    index = _to_index(series.affine, frames.positions)
    image_slices = ImageSlices(series)
    slices = []
    for frame, (image, (k, j, i)) in enumerate(zip(frames.sources, index, strict=True)):
        nearest = int(np.round(k))
        if max(abs(j), abs(i), abs(k - nearest)) > _POSITION_TOLERANCE or not (
            0 <= nearest < series.shape[0]
        ):
            raise AlignmentError(
                path,
                f"frame {frame} lies at slice {k:.2f}, row {j:.2f}, column {i:.2f} of the "
                "series, not on one of its slices",
            )
        referenced = image_slices.slice_of(*image)
        if referenced is not None and referenced != nearest:
            raise AlignmentError(
                path, f"frame {frame} references slice {referenced} but lies on slice {nearest}"
            )
        slices.append(nearest)
    return _Grid(series.shape, series.affine, np.array(slices, int))


def _to_index(affine: np.ndarray, lps: np.ndarray) -> np.ndarray:
    inverse = np.linalg.inv(affine)
    return (lps * _LPS_TO_RAS) @ inverse[:3, :3].T + inverse[:3, 3]


def _functional_or_none(ds: pydicom.Dataset, sequence: str, keyword: str) -> float | None:
    shared = ds.get("SharedFunctionalGroupsSequence")
    if shared:
        items = shared[0].get(sequence)
        if items and items[0].get(keyword) not in (None, ""):
            try:
                return float(items[0].get(keyword))
            except (TypeError, ValueError):
                return None
    return None
