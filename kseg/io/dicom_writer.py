"""DICOM files out of arrays and contours: the writing side of :mod:`kseg.io.dicom` and
:mod:`kseg.io.rtstruct`.

A file starts as :func:`new_dataset` (file meta and SOP identity), gets its pixels from
:func:`set_grayscale_pixels` or its structures from :func:`rtstruct_dataset` (which takes
the :class:`~kseg.io.rtstruct.RoiContours` the reader returns), and is written by
:func:`write_dataset`. Everything that says who or what the data is (patient name,
descriptions, manufacturer) is left to the caller.

Example:
    >>> from pydicom.uid import SecondaryCaptureImageStorage
    >>> ds = new_dataset(SecondaryCaptureImageStorage, "1.2.3.4",
    ...                  implementation_version_name="EXAMPLE")
    >>> set_grayscale_pixels(ds, np.zeros((2, 3), np.uint16), bits_stored=12)
    >>> ds.Rows, ds.Columns, ds.BitsAllocated, ds.HighBit
    (2, 3, 16, 11)

Reference:
    DICOM PS3.10 section 7.1 (file meta information); PS3.3 C.7.6.3 (Image Pixel module),
    C.8.8.5 (Structure Set), C.8.8.6 (ROI Contour), C.8.8.8 (RT ROI Observations).
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import warnings
from collections.abc import Sequence

import numpy as np
import pydicom
import pydicom.charset
from pydicom.dataset import FileMetaDataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    CTImageStorage,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    RTStructureSetStorage,
)

from kseg._files import atomic_output
from kseg.io.rtstruct import RoiContours

__all__ = [
    "SeriesReference",
    "new_dataset",
    "rtstruct_dataset",
    "set_grayscale_pixels",
    "write_dataset",
]

# Study Component Management SOP Class, which RT structure sets conventionally cite as the
# class of their referenced study.
_STUDY_COMPONENT_MANAGEMENT = "1.2.840.10008.3.1.2.3.2"

# Value representations whose values are text in the SpecificCharacterSet (PS3.5 6.1.2.3).
_TEXT_VRS = frozenset({"SH", "LO", "ST", "LT", "UC", "UT", "PN"})
# VRs with a 2-byte value length in explicit VR (PS3.5 Table 7.1-2), and the size of each
# value of the binary ones.
_SHORT_LENGTH_VRS = frozenset(
    {"AE", "AS", "AT", "CS", "DA", "DS", "DT", "FL", "FD", "IS", "LO", "LT", "PN", "SH", "SL",
     "SS", "ST", "TM", "UI", "UL", "US"}
)  # fmt: skip
_BINARY_SIZES = {"AT": 4, "FL": 4, "FD": 8, "SL": 4, "SS": 2, "UL": 4, "US": 2}


def new_dataset(
    sop_class_uid: str, sop_instance_uid: str, *, implementation_version_name: str
) -> pydicom.Dataset:
    """An empty DICOM dataset with its file meta (explicit VR little endian) and SOP identity.

    Args:
        sop_class_uid: SOPClassUID, also the MediaStorageSOPClassUID.
        sop_instance_uid: SOPInstanceUID, also the MediaStorageSOPInstanceUID.
        implementation_version_name: the file meta ImplementationVersionName (up to 16
            characters), naming what wrote the file.

    Returns:
        A dataset with SpecificCharacterSet ``ISO_IR 100`` (Latin-1) and nothing else.
    """
    ds = pydicom.Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = sop_class_uid
    ds.file_meta.MediaStorageSOPInstanceUID = sop_instance_uid
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds.file_meta.ImplementationVersionName = implementation_version_name
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = sop_class_uid
    ds.SOPInstanceUID = sop_instance_uid
    return ds


def set_grayscale_pixels(
    ds: pydicom.Dataset, pixels: np.ndarray, *, bits_stored: int | None = None
) -> None:
    """Fill the Image Pixel module of a single-frame MONOCHROME2 image.

    Args:
        ds: the dataset to fill.
        pixels: ``uint8`` or ``uint16`` ``(rows, columns)`` stored values; BitsAllocated is
            their width.
        bits_stored: significant bits of each value, at most BitsAllocated (default: all).

    Raises:
        ValueError: ``pixels`` is not a 2D ``uint8`` / ``uint16`` array, or ``bits_stored``
            is out of range.
    """
    pixels = np.asarray(pixels)
    if pixels.ndim != 2 or pixels.dtype not in (np.uint8, np.uint16):
        raise ValueError(
            f"pixels must be a 2D uint8 or uint16 array, got {pixels.dtype} {pixels.shape}"
        )
    bits_allocated = 8 * pixels.dtype.itemsize
    bits_stored = bits_allocated if bits_stored is None else bits_stored
    if not 1 <= bits_stored <= bits_allocated:
        raise ValueError(f"bits_stored must be in 1..{bits_allocated}, got {bits_stored!r}")
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = pixels.shape
    ds.BitsAllocated = bits_allocated
    ds.BitsStored = bits_stored
    ds.HighBit = bits_stored - 1
    ds.PixelRepresentation = 0
    ds.PixelData = np.ascontiguousarray(pixels, dtype=pixels.dtype.newbyteorder("<")).tobytes()


def write_dataset(ds: pydicom.Dataset, path: os.PathLike | str) -> pathlib.Path:
    """Write ``ds`` as a DICOM file (preamble, file meta), atomically: to a temporary name
    beside ``path``, then renamed, so ``path`` never holds a half-written file.

    A text value its SpecificCharacterSet cannot encode (a patient name in Japanese under
    ``ISO_IR 100``) switches the data set to ``ISO_IR 192`` (UTF-8), which encodes every
    character: pydicom would otherwise write ``?`` in their place. A value longer than the
    64 KiB an explicit VR gives a DS or other short-length VR (ContourData of a contour of
    over 2000-odd points) switches explicit to implicit VR little endian, whose lengths have
    4 bytes: pydicom would otherwise write the element as UN, which readers take for bytes.
    """
    path = pathlib.Path(path)
    if not _fits_character_set(ds):
        ds.SpecificCharacterSet = "ISO_IR 192"
    meta = getattr(ds, "file_meta", None)
    if meta is not None and meta.get("TransferSyntaxUID") == ExplicitVRLittleEndian:
        if _has_long_value(ds):
            meta.TransferSyntaxUID = ImplicitVRLittleEndian
    with atomic_output(path) as temporary:
        pydicom.dcmwrite(temporary, ds, enforce_file_format=True)
    return path


def _fits_character_set(ds: pydicom.Dataset) -> bool:
    """Whether every text value of ``ds`` (nested ones too) encodes in its
    SpecificCharacterSet without replacement characters."""
    encodings = pydicom.charset.convert_encodings(ds.get("SpecificCharacterSet") or "ISO_IR 6")
    with warnings.catch_warnings():
        # pydicom warns, and substitutes "?", where a value does not encode
        warnings.simplefilter("error")
        try:
            for element in ds.iterall():
                if element.VR not in _TEXT_VRS or element.is_empty:
                    continue
                values = element.value if element.VM > 1 else [element.value]
                for value in values:
                    pydicom.charset.encode_string(str(value), encodings)
        except (UserWarning, UnicodeError, LookupError):
            return False
    return True


def _has_long_value(ds: pydicom.Dataset) -> bool:
    """Whether a value of ``ds`` (nested ones too) is too long for the 2-byte length of its
    VR in explicit VR (PS3.5 7.1.2); text counted as UTF-8, an upper bound."""
    for element in ds.iterall():
        if element.VR not in _SHORT_LENGTH_VRS or element.is_empty:
            continue
        values = element.value if element.VM > 1 else [element.value]
        if element.VR in _BINARY_SIZES:
            length = len(values) * _BINARY_SIZES[element.VR]
        elif element.VR in ("DS", "IS") and len(values) * 17 < 0xFFFF:
            continue  # at most 16 characters a value, and a separator
        else:
            length = sum(len(str(v).encode("utf-8")) for v in values) + len(values) - 1
        if length >= 0xFFFF:  # padded to an even length
            return True
    return False


@dataclasses.dataclass(frozen=True)
class SeriesReference:
    """The CT series an RT Structure Set is drawn on, as the structure set references it.

    Attributes:
        patient_id, patient_sex: copied into the structure set.
        study_instance_uid: the study both series belong to.
        series_instance_uid: the CT series.
        frame_of_reference_uid: the CT's FrameOfReferenceUID.
        sop_instance_uids: SOPInstanceUID of every CT slice (a multi-frame image's once per
            frame).
        sop_class_uid: SOPClassUID of the slices (CT Image Storage unless another modality's
            images are referenced).
        frame_numbers: the 1-based frame of every slice when the slices are frames of a
            multi-frame image (Enhanced CT / MR); empty for single-frame images.
        slice_series_uids: the SeriesInstanceUID of every slice when the slices belong to
            several series (a series read with ``ignore_series_uid``); empty when all are
            ``series_instance_uid``.
    """

    patient_id: str
    patient_sex: str
    study_instance_uid: str
    series_instance_uid: str
    frame_of_reference_uid: str
    sop_instance_uids: tuple[str, ...]
    sop_class_uid: str = CTImageStorage
    frame_numbers: tuple[int, ...] = ()
    slice_series_uids: tuple[str, ...] = ()

    def __post_init__(self):
        for given, name in (
            (self.frame_numbers, "frame numbers"), (self.slice_series_uids, "series UIDs")
        ):
            if given and len(given) != len(self.sop_instance_uids):
                raise ValueError(
                    f"SeriesReference has {len(given)} {name} for "
                    f"{len(self.sop_instance_uids)} slices; give one per slice or none"
                )


def rtstruct_dataset(
    rois: Sequence[RoiContours],
    reference: SeriesReference,
    *,
    series_instance_uid: str,
    sop_instance_uid: str,
    implementation_version_name: str,
    label: str,
    date: str,
    time: str,
    series_number: int = 1,
    roi_generation_algorithm: str = "MANUAL",
) -> pydicom.Dataset:
    """An RT Structure Set (PS3.3 A.19) referencing a CT series.

    Holds the patient and study of ``reference``, the Structure Set module
    (StructureSetROISequence; ReferencedFrameOfReferenceSequence down to every CT slice),
    the ROI Contour module (a ContourImageSequence per contour that has a referenced UID;
    ContourData to 4 decimals of a mm) and the RT ROI Observations module. Slices that are
    frames of a multi-frame image are referenced by its SOPInstanceUID and their
    ReferencedFrameNumber (PS3.3 C.8.8.5, C.8.8.6: required for multi-frame images): one
    series-level item per image listing its frames, and each contour's frame.

    Args:
        rois: the ROIs (numbers, names, colours, contours in LPS mm, RTROIInterpretedType:
            ``"ORGAN"`` where it is empty), as :func:`kseg.io.rtstruct.read_rtstruct`
            returns them.
        reference: the CT series.
        series_instance_uid, sop_instance_uid: UIDs of the structure set itself.
        implementation_version_name: see :func:`new_dataset`.
        label: StructureSetLabel.
        date, time: StudyDate / SeriesDate / StructureSetDate (YYYYMMDD) and the matching
            times (HHMMSS).
        series_number: SeriesNumber of the structure set.
        roi_generation_algorithm: ROIGenerationAlgorithm of every ROI (``"MANUAL"``,
            ``"SEMIAUTOMATIC"`` or ``"AUTOMATIC"`` for a model's prediction).

    Returns:
        The dataset, ready for :func:`write_dataset`.
    """
    ds = new_dataset(
        RTStructureSetStorage, sop_instance_uid,
        implementation_version_name=implementation_version_name,
    )
    ds.StudyDate = ds.SeriesDate = ds.StructureSetDate = date
    ds.StudyTime = ds.SeriesTime = ds.StructureSetTime = time
    ds.Modality = "RTSTRUCT"
    ds.PatientID = reference.patient_id
    ds.PatientSex = reference.patient_sex
    ds.StudyInstanceUID = reference.study_instance_uid
    ds.SeriesInstanceUID = series_instance_uid
    ds.SeriesNumber = series_number
    ds.InstanceNumber = 1
    ds.StructureSetLabel = label

    referenced_study = pydicom.Dataset()
    referenced_study.ReferencedSOPClassUID = _STUDY_COMPONENT_MANAGEMENT
    referenced_study.ReferencedSOPInstanceUID = reference.study_instance_uid
    referenced_study.RTReferencedSeriesSequence = DicomSequence(
        _referenced_series(part) for part in _per_series(reference)
    )
    frame = pydicom.Dataset()
    frame.FrameOfReferenceUID = reference.frame_of_reference_uid
    frame.RTReferencedStudySequence = DicomSequence([referenced_study])
    ds.ReferencedFrameOfReferenceSequence = DicomSequence([frame])

    structure_rois, roi_contours, observations = DicomSequence(), DicomSequence(), DicomSequence()
    for roi in rois:
        structure = pydicom.Dataset()
        structure.ROINumber = roi.number
        structure.ReferencedFrameOfReferenceUID = (
            roi.frame_of_reference_uid or reference.frame_of_reference_uid
        )
        structure.ROIName = roi.name
        structure.ROIGenerationAlgorithm = roi_generation_algorithm
        structure_rois.append(structure)
        roi_contour = pydicom.Dataset()
        roi_contour.ROIDisplayColor = list(roi.color or (255, 255, 255))
        roi_contour.ReferencedROINumber = roi.number
        sequence = DicomSequence()
        for contour in roi.contours:
            item = pydicom.Dataset()
            if contour.referenced_sop_instance_uid is not None:
                frame = contour.referenced_frame_number
                image = _image_reference(
                    reference.sop_class_uid, contour.referenced_sop_instance_uid,
                    [] if frame is None else [frame],
                )  # fmt: skip
                item.ContourImageSequence = DicomSequence([image])
            item.ContourGeometricType = contour.geometric_type
            item.NumberOfContourPoints = len(contour.points)
            item.ContourData = [_decimal_string(v) for v in np.asarray(contour.points).ravel()]
            sequence.append(item)
        roi_contour.ContourSequence = sequence
        roi_contours.append(roi_contour)
        observation = pydicom.Dataset()
        observation.ObservationNumber = roi.number
        observation.ReferencedROINumber = roi.number
        observation.RTROIInterpretedType = roi.interpreted_type or "ORGAN"
        observation.ROIInterpreter = ""
        observations.append(observation)
    ds.StructureSetROISequence = structure_rois
    ds.ROIContourSequence = roi_contours
    ds.RTROIObservationsSequence = observations
    return ds


def _per_series(reference: SeriesReference) -> list[SeriesReference]:
    """``reference`` split into one reference per series its slices belong to, in slice
    order of first appearance (PS3.3 C.8.8.5: one RTReferencedSeriesSequence item each)."""
    if not reference.slice_series_uids:
        return [reference]
    slices: dict[str, list[int]] = {}
    for index, uid in enumerate(reference.slice_series_uids):
        slices.setdefault(uid, []).append(index)
    return [
        dataclasses.replace(
            reference,
            series_instance_uid=uid,
            sop_instance_uids=tuple(reference.sop_instance_uids[i] for i in indices),
            frame_numbers=tuple(reference.frame_numbers[i] for i in indices)
            if reference.frame_numbers else (),
            slice_series_uids=(),
        )
        for uid, indices in slices.items()
    ]


def _referenced_series(reference: SeriesReference) -> pydicom.Dataset:
    """An RTReferencedSeriesSequence item: the series and each of its images once."""
    item = pydicom.Dataset()
    item.SeriesInstanceUID = reference.series_instance_uid
    item.ContourImageSequence = DicomSequence(
        _image_reference(reference.sop_class_uid, uid, frames)
        for uid, frames in _images_and_frames(reference)
    )
    return item


def _images_and_frames(reference: SeriesReference) -> list[tuple[str, list[int]]]:
    """Each referenced image once, with the frames of it the series holds (none for a
    single-frame image), in slice order of first appearance."""
    if not reference.frame_numbers:
        return [(uid, []) for uid in reference.sop_instance_uids]
    frames: dict[str, list[int]] = {}
    for uid, frame in zip(reference.sop_instance_uids, reference.frame_numbers, strict=True):
        frames.setdefault(uid, []).append(int(frame))
    return [(uid, sorted(numbers)) for uid, numbers in frames.items()]


def _image_reference(sop_class_uid: str, uid: str, frames: Sequence[int]) -> pydicom.Dataset:
    """An Image SOP Instance Reference (PS3.3 Table 10-3): ReferencedFrameNumber only
    for frames of a multi-frame image."""
    item = pydicom.Dataset()
    item.ReferencedSOPClassUID = sop_class_uid
    item.ReferencedSOPInstanceUID = uid
    if frames:
        item.ReferencedFrameNumber = list(frames) if len(frames) > 1 else frames[0]
    return item


def _decimal_string(value: float) -> str:
    """``value`` to 4 decimals without trailing zeros (DS allows 16 characters)."""
    text = f"{value:.4f}".rstrip("0").rstrip(".")
    return "0" if text in ("-0", "") else text
