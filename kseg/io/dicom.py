"""DICOM readers: a folder of single-frame slices becomes one Volume in Hounsfield units.

Slices are ordered by ImagePositionPatient projected on the slice normal (the cross product of
the two ImageOrientationPatient vectors). File names and InstanceNumber are never used for
ordering: challenge archives rename files, and scanners number instances in acquisition order,
which is not always spatial order (nnU-Net and dcm2niix sort the same way).

Headers are read once, with large values (the pixel data) left on disk, to group and order the
files; only the files of the chosen series are then decoded, each exactly once. Nothing is ever
written to the input.

Files are read by what they say: the transfer syntax picks the decoder, and Rows, Columns,
BitsAllocated, SamplesPerPixel, PixelRepresentation, PhotometricInterpretation, the rescale
values and the geometry tags are checked before any pixel is decoded or any array allocated.
An Enhanced image (Enhanced CT / MR, Legacy Converted Enhanced) is read by the rescale,
position, orientation and pixel spacing of its functional groups, where such files keep them,
frame by frame: a multi-frame one is a series in one file, its frames ordered, checked and
placed exactly as single-frame slices are; so are the frames of all the files of an image
split into a Concatenation. A file that is DICOM but broken (cut short, an
image without pixel data, a header value that is not what its tag needs) is an error naming
the file and the tag; only files that are not DICOM at all, or DICOM objects without an image
(DICOMDIR, RTSTRUCT, SR ...), DICOM-SEG files (labels, for :func:`kseg.io.read_dicom_seg`) and
RT Dose grids (dose only once multiplied by DoseGridScaling, not an image), are skipped, with a
:class:`SkippedFileWarning`. Lossy-compressed
images are read with a :class:`LossyImageWarning`. :func:`scan_dicom_files` is that header
pass on its own, for dataset builders that walk a whole download.

Reference:
    DICOM PS3.3 C.7.6.2.1.1 (Image Position and Image Orientation, patient coordinate system),
    C.7.6.3 (Image Pixel Module), C.7.6.16 (Multi-frame Functional Groups), C.7.6.17
    (Multi-frame Dimension), C.7.6.1.1.5 (Lossy Image Compression) and C.11.1.1.2
    (Modality LUT / rescale); PS3.5 8.2 and A.4 (transfer syntaxes); ISO 14495-1 C.2.3
    (JPEG-LS NEAR); ISO 15444-1 A.6.1 (JPEG 2000 COD: 9-7 irreversible or 5-3 reversible
    wavelet); PS3.10 7.1 (file preamble and meta information);
    Li X. et al., "The first step for neuroimaging data analysis: DICOM to NIfTI conversion",
    J Neurosci Methods 264 (2016) 47-56 (dcm2niix: slice order from positions).
"""

from __future__ import annotations

import collections
import contextlib
import functools
import math
import os
import re
import warnings
from collections.abc import Iterable, Sequence
from typing import NamedTuple

import numpy as np
import pydicom
from pydicom.dataelem import RawDataElement
from pydicom.encaps import generate_frames
from pydicom.pixels import apply_modality_lut, get_decoder
from pydicom.tag import Tag
from pydicom.uid import (
    HTJ2K,
    JPEG2000,
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLSNearLossless,
    RLELossless,
)

from kseg.errors import DicomSeriesError, KsegError, LayoutError, UnreadableFileError
from kseg.io._pointer_files import pointer_note
from kseg.io.image_files import jpeg_2000_irreversible
from kseg.io.volume import Volume

__all__ = [
    "DICOM_VALUES",
    "GantryTiltWarning",
    "HeaderValueWarning",
    "LossyImageWarning",
    "SkippedFileWarning",
    "UnevenSliceSpacingWarning",
    "read_dicom_image",
    "read_dicom_series",
    "scan_dicom_files",
]

# A gap larger than this multiple of the typical gap means a slice is missing: the volume
# would otherwise be stretched silently and every mask below the gap would sit one slice off.
MISSING_SLICE_GAP_RATIO = 1.5
# Gaps may differ from the typical gap by this fraction (or by the absolute floor, which covers
# positions written with two decimals) before a UnevenSliceSpacingWarning is raised.
UNEVEN_GAP_RELATIVE_TOLERANCE = 0.01
UNEVEN_GAP_ABSOLUTE_TOLERANCE_MM = 0.02
# No slice may sit further than this many mean steps from its position on the regular grid
# of the mean step (slight unevenness warns; two slice spacings in one series are an error).
MAX_MISPLACEMENT_STEPS = 0.5
# ... nor further than this many pixels, in its plane, from the line through the first and
# the last slice's positions (a straight or gantry-tilted stack lies on it).
MAX_MISPLACEMENT_PIXELS = 0.5
# Two slices closer than this along the normal are the same slice position.
SAME_POSITION_TOLERANCE_MM = 1e-3
# A slice step leaning further than this off the slice normal is a gantry tilt (scanners tilt
# by whole degrees; positions written to two decimals lean by far less over a series).
GANTRY_TILT_TOLERANCE_DEGREES = 0.1
# ImageOrientationPatient cosines must have unit length and be perpendicular to within this
# (scanners write them rounded to a few decimals); beyond it the orientation is degenerate.
ORIENTATION_ORTHONORMAL_TOLERANCE = 1e-2
_ORIENTATION_TOLERANCE = 1e-3
_SPACING_TOLERANCE_MM = 1e-4
# Header values longer than this are left on disk by the header pass (the pixel data, large
# private blobs): their length and offset are still known, which is all the checks need.
_DEFER_SIZE = 1024
_PIXEL_TAGS = (0x7FE00010, 0x7FE00008, 0x7FE00009)  # PixelData, Float-, DoubleFloatPixelData
_UNDEFINED_LENGTH = 0xFFFFFFFF
_BITS_ALLOCATED = (1, 8, 16, 32, 64)
_GRAYSCALE = ("MONOCHROME1", "MONOCHROME2")
# JPEG start-of-frame markers (ISO 10918-1 B.1.1.3; 0xF7 is JPEG-LS SOF55).
_SOF_MARKERS = frozenset({*range(0xC0, 0xC4), *range(0xC5, 0xC8), *range(0xC9, 0xCC),
                          *range(0xCD, 0xD0), 0xF7})
# pip names of pydicom decoder dependencies whose import name differs.
_PIP_NAMES = {"gdcm": "python-gdcm"}

_NOT_DICOM = "not DICOM"

# Enhanced (multi-frame IOD) images keep rescale, geometry and window in functional groups
# (PS3.3 C.7.6.16), where neither pydicom's rescale nor a top-level lookup finds them.
_FUNCTIONAL_GROUP_VALUES = {
    "PixelValueTransformationSequence": ("RescaleSlope", "RescaleIntercept", "RescaleType"),
    "PlanePositionSequence": ("ImagePositionPatient",),
    "PlaneOrientationSequence": ("ImageOrientationPatient",),
    "PixelMeasuresSequence": ("PixelSpacing", "SliceThickness", "SpacingBetweenSlices"),
    "FrameVOILUTSequence": ("WindowCenter", "WindowWidth", "VOILUTFunction"),
    "CTAcquisitionDetailsSequence": ("GantryDetectorTilt",),
}
_PLACING_OR_RESCALING = frozenset(
    {"RescaleSlope", "RescaleIntercept", "ImagePositionPatient", "ImageOrientationPatient",
     "PixelSpacing"}
)
# Frame attributes (per-frame functional groups, or dimensions of DimensionIndexSequence)
# whose frames, when they take several values, belong to several volumes: a stack each, a
# time point, phase, b-value, echo, contrast or magnitude / phase image each (PS3.3
# C.7.6.16.2.2, C.8.13.5, C.8.13.6).
_SEVERAL_VOLUMES_BY = {
    "StackID": "stacks",
    "TemporalPositionIndex": "temporal positions",
    "NominalCardiacTriggerDelayTime": "cardiac phases",
    "DiffusionBValue": "b-values",
    "DiffusionGradientOrientation": "diffusion directions",
    "EffectiveEchoTime": "echoes",
    "AcquisitionContrast": "contrasts",
    "ComplexImageComponent": "image components",
}
# Single-frame slices of one series that are several volumes when these take several values.
_SEVERAL_VOLUMES_BY_SLICE = {
    "EchoNumbers": "echoes",
    "TemporalPositionIdentifier": "temporal positions",
}
# What tells two slices at one position apart: named when a series holds such a pair.
_DISTINGUISHING = (
    "EchoNumbers", "EchoTime", "TemporalPositionIdentifier", "TriggerTime",
    "AcquisitionNumber", "InversionTime", "DiffusionBValue", "ImageType",
)
# Transfer syntaxes that are lossy whatever the file says (PS3.5 A.4.1).
_ALWAYS_LOSSY = (JPEGBaseline8Bit, JPEGExtended12Bit)
# Either lossy or reversible: the codestream's wavelet says which (ISO 15444-1 A.6.1).
_JPEG_2000_EITHER = (JPEG2000, HTJ2K)

# DICOM patient coordinates are LPS+; RAS+ negates x and y.
_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


class SkippedFileWarning(UserWarning):
    """A file in a DICOM folder was not used: not DICOM, or DICOM without an image.

    The message names every skipped file and why: not DICOM (a text file such as a README or
    LICENSE, ``Thumbs.db``, a PNG, an empty hidden file; a file without the DICM preamble whose
    bytes do not start like a DICOM data set), or a DICOM object that holds no image
    (DICOMDIR, RTSTRUCT, RT Plan, SR ... stored beside the slices). A file that *is* DICOM but
    broken (cut short, an image SOP class without Rows/Columns or pixel data, an empty data
    set) is never skipped: it raises UnreadableFileError, since skipping it would silently
    drop a slice. So does a non-hidden empty (0-byte) file, and a file that starts with a
    zero-filled 128-byte preamble (or is zeros to its end) without the DICM marker after it:
    an interrupted copy or a damaged DICOM file.
    """


class UnevenSliceSpacingWarning(UserWarning):
    """Gaps between consecutive slices differ slightly, without a slice being missing.

    The volume is still returned on a regular grid whose slice step is the mean step from the
    first to the last slice, so a slice may sit up to the reported deviation away from its
    true position. Deviations above ``UNEVEN_GAP_RELATIVE_TOLERANCE`` of the typical gap (or
    ``UNEVEN_GAP_ABSOLUTE_TOLERANCE_MM``, whichever is larger) trigger it; a gap of more than
    ``MISSING_SLICE_GAP_RATIO`` times the typical gap is a missing slice and raises
    DicomSeriesError instead, and so does a series whose mean step would put a slice more
    than ``MAX_MISPLACEMENT_STEPS`` steps from its position (a series of two slice
    spacings, as a head CT with a finer posterior fossa). The message names the files on
    both sides of each uneven gap.
    """


class GantryTiltWarning(UserWarning):
    """The slices step off the slice normal: a gantry-tilted CT (or any sheared series).

    Raised once per series when the mean step from the first to the last slice leans more
    than ``GANTRY_TILT_TOLERANCE_DEGREES`` off the normal of ImageOrientationPatient (and the
    slices drift in-plane by more than ``UNEVEN_GAP_ABSOLUTE_TOLERANCE_MM`` overall, so that
    positions rounded to two decimals never trigger it). The message names the folder, the
    SeriesInstanceUID, the angle measured from the positions and GantryDetectorTilt when the
    header has it. The Volume keeps the true, sheared affine: every voxel centre is where the
    scanner put it.
    Its ``spacing[0]`` is then the step between slice centres; ``plane_spacing`` and
    ``voxel_volume`` give the physical sizes, kseg's metrics take the affine for distances
    and volumes, and :func:`kseg.geometry.deskew` resamples onto an orthogonal grid (as
    dcm2niix does on conversion; ITK-based readers drop the shear and misplace the slices).
    """


class HeaderValueWarning(UserWarning):
    """A header value kseg only reports, never computes with, is malformed.

    InstanceNumber, WindowCenter and WindowWidth (and, for a single-slice series,
    SpacingBetweenSlices / SliceThickness) do not change the voxel values or the geometry of
    the Volume; when one is not a valid number it is left out of ``Volume.metadata`` (an
    instance number becomes ``None``; a single slice falls back to the next thickness tag,
    then 1 mm) and this warning names the file, the tag and the value. Malformed values of
    the tags that do matter (positions, orientation, pixel spacing, the pixel module, the
    rescale slope and intercept) are errors.
    """


class LossyImageWarning(UserWarning):
    """Images of a series were compressed lossily: their values are approximate.

    A lossy codec changes the stored values, so the Hounsfield units (or MR intensities) read
    are not the scanner's: thresholds, windows and intensity statistics computed on them
    shift by the compression error, and a model trained on lossless data sees noise it never
    saw. Raised once per series by :func:`read_dicom_series`, naming the first such file and
    why it is lossy: LossyImageCompression "01" in its header; a JPEG baseline / extended
    transfer syntax; JPEG-LS near-lossless with NEAR above 0 in the codestream; JPEG 2000 or
    HTJ2K whose codestream uses the 9-7 irreversible wavelet. The volume is still returned.
    """


class _Slice(NamedTuple):
    """The validated geometry of one slice."""

    position: np.ndarray  # (3,) LPS mm
    orientation: np.ndarray  # (6,) row cosine, column cosine
    spacing: np.ndarray  # (2,) row spacing, column spacing
    grid: tuple[int, int]  # rows, columns


class _Frame(pydicom.Dataset):
    """One frame of a multi-frame Enhanced image, as the series reader takes a slice: the
    file's header with the frame's functional-group values lifted to its top level and
    without NumberOfFrames (the slice checks see one frame); ``frame_number`` counts from 1,
    as DICOM does."""

    def __init__(self, header: pydicom.Dataset, frame_number: int):
        # A dict of its own: lifting one frame's values must change neither the file's header
        # nor the other frames, whose elements it shares.
        super().__init__(dict(header._dict))
        # The header's read context too (file meta, file name, encoding), so that a value
        # the header pass left on disk is read from the file when a check asks for it.
        vars(self).update({key: value for key, value in vars(header).items() if key != "_dict"})
        self.frame_number = frame_number
        if "NumberOfFrames" in self:
            del self.NumberOfFrames


def read_dicom_series(
    source: os.PathLike | str | Sequence[os.PathLike | str],
    *,
    series_uid: str | None = None,
    ignore_series_uid: bool = False,
    patient_id: str | None = None,
) -> Volume:
    """Read one DICOM series into a Volume in modality units (HU for CT).

    The series is a set of single-frame slices, or one multi-frame Enhanced CT / MR or Legacy
    Converted Enhanced image, whose frames are read like slices: each placed by its
    PlanePositionSequence and PlaneOrientationSequence, sized by PixelMeasuresSequence and
    rescaled by PixelValueTransformationSequence, per frame or shared, and the frames ordered
    along the slice normal with the same spacing, gap and duplicate-position rules. An image
    split into a Concatenation (several files sharing a ConcatenationUID, as Philips and
    Siemens write large series) is one image: the frames of all its files, once the files are
    checked to be the whole of it (InConcatenationNumber 1..InConcatenationTotalNumber, each
    ConcatenationFrameOffsetNumber the count of frames before it). The image is refused when
    its frames are not one volume, as its frame content and dimensions
    (DimensionIndexSequence) say: several stacks (StackID), temporal positions, cardiac phases,
    b-values, diffusion directions, echoes, contrasts or image components (magnitude and
    phase).

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
        ``metadata["sop_instance_uids"]`` / ``["instance_numbers"]`` in array order (an
        Enhanced file's name and UIDs once per frame, and ``metadata["frame_numbers"]``, the
        1-based frame of each slice in its file; for a concatenation also
        ``metadata["concatenation_source_uid"]`` and ``["source_frame_numbers"]``, each
        slice's frame in the image before it was split);
        ``metadata`` also holds modality, series_instance_uid, study_instance_uid,
        frame_of_reference_uid, patient_sex, series_description, and window_center /
        window_width (first value) when the header has them. A RescaleSlope or
        RescaleIntercept that is absent or empty takes its DICOM default (1 or 0) while the
        other is applied, as GDCM and dcm2niix do. The slice step is taken from the
        positions (mean step from first to last slice), never from SliceThickness; a single
        slice falls back to SpacingBetweenSlices, then SliceThickness, then 1 mm.

    Raises:
        LayoutError: the folder does not exist or holds no DICOM image (the message lists
            the image series a DICOMDIR there indexes, as on a CD, else the subfolders), or
            ``source`` is a CD's DICOMDIR (the message lists its series).
        DicomSeriesError: several series and no ``series_uid``; the requested series is absent;
            a slice lacks ImagePositionPatient / ImageOrientationPatient / PixelSpacing, or
            holds a value there that is not the right count of finite numbers; a degenerate
            ImageOrientationPatient (zero, parallel or non-perpendicular cosines) or a pixel
            spacing that is not positive; orientation, pixel spacing or rows/columns differ
            within the series (the message names the odd slices, a localizer as one); the
            slices of one series hold several EchoNumbers or TemporalPositionIdentifier values
            (several echoes or time points, whether at the same or interleaved positions: the
            message names the tag and each value's files), or, with no EchoNumbers, several
            EchoTime values at overlapping positions; two slices share a position (the
            message names the header values that differ between them, e.g. AcquisitionNumber,
            or calls them a duplicated file); a Siemens mosaic (ImageType MOSAIC: a
            volume's slices tiled into one image); a gap shows a missing slice, or the slice spacing
            changes within the series (two spacings, no one regular grid), or a slice's
            origin lies over half a pixel off the line through the first and the last
            (the field of view moves within the series); a
            multi-frame file without functional groups, a colour or palette file; some slices
            carry a rescale (or Modality LUT) that is not the identity while others carry
            none; an Enhanced multi-frame image beside other images of its series (several
            Enhanced images of one series: the message lists them; pass one image's files as
            a list), or whose frames are several volumes (see above), or differ in orientation
            or spacing (the message names the file and the frame); a concatenation missing
            files or frames, or with an instance number twice (the message names the folder,
            the ConcatenationUID and what is missing).
        UnreadableFileError: a file that is DICOM but cannot be used: cut short (header or
            pixel data), an empty data set, an image without pixel data, an empty (0-byte)
            file, a Git LFS or git-annex pointer in place of a file (a fetch left undone);
            Rows/Columns/BitsAllocated/BitsStored/PixelRepresentation that are not valid,
            or that need more bytes than the PixelData holds (checked before anything is
            allocated); a HighBit other than BitsStored - 1 (samples not aligned to bit 0,
            which pydicom cannot read); RescaleSlope / RescaleIntercept that are not finite
            numbers (or a zero slope); a transfer syntax with no decoder installed (the
            message names the syntax and what to install) or pixel data the decoder
            rejects; an Enhanced file whose functional groups contradict its top-level
            rescale or geometry, or whose PerFrameFunctionalGroupsSequence does not hold one
            item per frame.

    Warns:
        SkippedFileWarning: files that are not DICOM images (RT Dose grids among them) were
            ignored.
        UnevenSliceSpacingWarning: slice gaps are slightly uneven.
        GantryTiltWarning: the slices step off the slice normal (gantry tilt); the affine is
            the true, sheared one.
        HeaderValueWarning: a malformed InstanceNumber / WindowCenter / WindowWidth /
            GantryDetectorTilt was left out of the metadata (or the tilt warning).
        LossyImageWarning: images of the series are lossy-compressed (once per series).

    Example:
        >>> import tempfile
        >>> from kseg.phantoms.lctsc import write_lctsc
        >>> root = write_lctsc(tempfile.mkdtemp(), num_patients=1, num_test_patients=0,
        ...                    num_slices=4, size=32)  # LCTSC's layout, phantom anatomy
        >>> volume = read_dicom_series(next(root.glob("LCTSC/*/*/*-CT *")))
        >>> volume.array.shape, volume.array.dtype, volume.metadata["modality"]
        ((4, 32, 32), dtype('int16'), 'CT')
        >>> tuple(round(s, 2) for s in volume.spacing)  # (z, y, x) mm
        (3.0, 14.65, 14.65)
    """
    folder, paths = _list_source(source)
    headers = _read_image_headers(paths, folder)
    series = headers if ignore_series_uid else _select_series(headers, series_uid, folder)
    ordered, slices, step = _order_slices(_frames_as_slices(series, folder), folder)
    array = _decode_in_hounsfield_units(ordered)
    first = ordered[0][1]
    return Volume(
        array=array,
        affine=_affine(slices[0], step),
        patient_id=_text(first, "PatientID") if patient_id is None else str(patient_id),
        source_files=tuple(path for path, _ in ordered),
        metadata=_series_metadata(ordered),
    )


# How read_dicom_image reads values: modality units, or as a viewer displays them.
DICOM_VALUES = ("modality", "displayed")


def read_dicom_image(path: os.PathLike | str, *, values: str = "modality") -> np.ndarray:
    """Read a single-frame grayscale DICOM image (a radiograph) as a 2D float32 array.

    ``values="modality"`` (the default) gives modality units: RescaleSlope/Intercept (or a
    Modality LUT) are applied; one given alone is applied with the other's default (slope 1,
    intercept 0). MONOCHROME1 images, where the stored value grows darker, and images with
    Presentation LUT Shape INVERSE are inverted over the stored-value range given by
    BitsStored and PixelRepresentation before rescaling (the output of a Modality LUT
    Sequence table over the range of its entries, after the table: the polarity applies to
    the table's output), so in the result a higher value is always brighter. No VOI
    transform is applied. An XA / XRF image whose PixelIntensityRelationship is LOG or DISP
    keeps its stored values in both modes: its Modality LUT maps back to linear X-ray
    intensity and is not part of the display pipeline (PS3.3 C.8.7.1.1.2, PS3.4 N.2.1.2).

    ``values="displayed"`` gives the image as a DICOM viewer shows it, the grayscale pipeline
    of PS3.3 C.11 in its order: the Modality LUT / rescale, then the VOI transform, then the
    polarity (MONOCHROME1, or Presentation LUT Shape INVERSE), so that higher is brighter:

    * VOILUTSequence present: its first item's table (pydicom's ``apply_voi_lut`` prefers
      the table to a window too); values below the first mapped input take the first entry,
      above the last the last. The result is integers ``0 .. 2**bits - 1``, ``bits`` being
      the LUTDescriptor's third value.
    * else WindowCenter / WindowWidth: the first pair (files list alternatives, e.g. for
      lungs and bone, with WindowCenterWidthExplanation; a viewer opens the first), by
      VOILUTFunction LINEAR (the default), LINEAR_EXACT or SIGMOID (PS3.3 C.11.2.1.2,
      C.11.2.1.3), rounded to integers ``0 .. 2**BitsStored - 1``. That is pydicom's output
      range for an unsigned image without rescale; for signed or rescaled images pydicom
      shifts or rescales the range, kseg keeps ``0 .. 2**BitsStored - 1`` so that the bit
      depth is fixed.
    * neither: the file has no VOI transform and reads as its stored units, exactly as
      ``values="modality"``.

    After the VOI transform a MONOCHROME1 image, or one with Presentation LUT Shape INVERSE,
    is inverted over the output range (``2**bits - 1 - value``); DX and MG files pair
    MONOCHROME1 with INVERSE (PS3.3 C.8.11.3), which is one inversion, not two. Files
    without the DICM preamble are read when their bytes start like a DICOM data set.

    Padding (stored values equal to PixelPaddingValue, or between it and
    PixelPaddingRangeLimit: a radiograph's padded border, a mammogram's background air, a
    CT's outside of the reconstruction circle) is not the image (PS3.3 C.7.5.1.1.2) and reads
    black in either mode: the lowest value of the rest of the image in modality units, 0 when
    displayed. It never sets the image's range, which per-image min-max scaling would
    otherwise stretch to it. (:func:`read_dicom_series` keeps a CT's padding as stored, as
    dcm2niix and SimpleITK do.)

    Args:
        path: the DICOM file.
        values: ``"modality"`` or ``"displayed"`` (see above).

    Returns:
        float32 array of shape ``(rows, columns)``.

    Raises:
        ValueError: ``values`` is neither ``"modality"`` nor ``"displayed"``.
        UnreadableFileError: not a DICOM file; a DICOM file cut short or without pixel data;
            an RT Dose grid (its values are dose only times DoseGridScaling);
            an image that is not single-frame grayscale (MONOCHROME1/2, one sample per pixel);
            a pixel-module or rescale value that is malformed (the message names the tag;
            HighBit must be BitsStored - 1), given differently in an Enhanced file's
            functional groups, or a size the PixelData cannot hold; a transfer syntax with
            no decoder installed (the message names the syntax and what to install) or pixel
            data that cannot be decoded; a Presentation LUT Shape other than IDENTITY or
            INVERSE. With ``values="displayed"``, also a malformed VOI value, naming the
            tag: a window width below 1 (LINEAR) or not above 0, a centre or width that is
            not a number, only one of the two, an unknown VOILUTFunction, a LUTDescriptor
            that is not three numbers with 8 to 16 bits, LUTData whose length or values do
            not match it. Such a file cannot be shown as its maker meant, and falling back
            to stored units would silently give a model another contrast.

    Example:
        pydicom's CT_small.dcm stores 128 .. 2191 with RescaleIntercept -1024 and no window:

        >>> import tempfile
        >>> import pydicom.data
        >>> path = pydicom.data.get_testdata_file("CT_small.dcm")
        >>> image = read_dicom_image(path)
        >>> image.shape, image.dtype, float(image.min()), float(image.max())  # HU
        ((128, 128), dtype('float32'), -896.0, 1167.0)

        With a window of -160 .. 240 HU, displayed values span ``0 .. 2**16 - 1``:

        >>> ds = pydicom.dcmread(path)
        >>> ds.WindowCenter, ds.WindowWidth = 40, 400
        >>> windowed = os.path.join(tempfile.mkdtemp(), "windowed.dcm")
        >>> ds.save_as(windowed)
        >>> shown = read_dicom_image(windowed, values="displayed")
        >>> float(shown.min()), float(shown.max())
        (0.0, 65535.0)
    """
    return _read_image(path, values)[0]


def _read_image(path: os.PathLike | str, values: str) -> tuple[np.ndarray, int | None]:
    """:func:`read_dicom_image`'s array, and the bits of its values when a VOI transform
    gave them (``None`` for modality or stored units)."""
    if values not in DICOM_VALUES:
        raise ValueError(f"values must be one of {DICOM_VALUES}, got {values!r}")
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise UnreadableFileError(
            path, "is not a file" if os.path.exists(path) else "does not exist"
        )
    header, reason = _scan_file(path)
    if header is None:
        raise UnreadableFileError(
            path,
            f"{reason}: no DICM preamble at byte 128, and the bytes do not start like a DICOM "
            "data set",
        )
    if not _has_image(header):
        raise UnreadableFileError(
            path, f"expected a single-frame grayscale image, got a {_sop_class_name(header)} "
            "object without pixel data"
        )
    if _is_rt_dose(header):
        _read_every_element(path, header)  # a damaged file says so first
        raise UnreadableFileError(path, f"is {_rt_dose_reason(header)}")
    with _reading(path, UnreadableFileError):
        _check_pixel_module(path, header, UnreadableFileError)
        dataset = _read_vetted_file(path)
        stored = _decode_pixels(path, dataset, _grid(path, dataset, UnreadableFileError))
        inverted = _presentation_inverse(path, dataset) or (
            _text(dataset, "PhotometricInterpretation").strip().upper() == "MONOCHROME1"
        )
        padding = _padding(path, dataset, stored)
        if _modality_lut_leaves_the_pipeline(dataset):
            to_units = np.asarray  # XA / XRF: the stored values are what is windowed
        else:
            to_units = functools.partial(_to_modality_units, path, dataset=dataset)
        voi = None
        if values == "displayed":
            voi = _voi_lut(path, dataset) or _voi_window(path, dataset)
        if voi is None:
            table = to_units is not np.asarray and _has_modality_lut(dataset)
            if inverted and not table:  # a rescale: the same as inverting its output
                low, high = _stored_value_range(path, dataset)
                stored = (high + low) - stored.astype(np.int64)
            units = np.asarray(to_units(stored), dtype=np.float32)
            if inverted and table:  # the polarity applies to the table's output (C.7.6.3.1.2)
                units = _inverted_over_table(path, dataset, units)
            if padding is not None and not padding.all():  # black: the image's own darkest
                units = np.where(padding, units[~padding].min(), units)
            return units, None
        transform, bits = voi
        shown = transform(np.asarray(to_units(stored), np.float64))
        if inverted:
            shown = (2**bits - 1) - shown
        if padding is not None:  # black, whatever the VOI transform made of it
            shown = np.where(padding, 0.0, shown)
        return shown.astype(np.float32), bits


# IODs with the X-Ray Image Module, whose Modality LUT is not part of the display pipeline.
_XRAY_IMAGE_MODULE_CLASSES = frozenset(
    {
        "1.2.840.10008.5.1.4.1.1.12.1",  # X-Ray Angiographic Image Storage
        "1.2.840.10008.5.1.4.1.1.12.2",  # X-Ray Radiofluoroscopic Image Storage
        "1.2.840.10008.5.1.4.1.1.12.3",  # X-Ray Angiographic Bi-Plane Image Storage (retired)
    }
)


def _modality_lut_leaves_the_pipeline(dataset: pydicom.Dataset) -> bool:
    """Whether an XA / XRF image's Modality LUT maps back to X-ray intensity instead of
    forward to display: with PixelIntensityRelationship LOG or DISP the Modality LUT is
    not applied before the VOI transform (PS3.3 C.8.7.1.1.2, PS3.4 N.2.1.2), as DCMTK,
    fo-dicom and dcm4che read these files."""
    if str(_sop_class(dataset)) not in _XRAY_IMAGE_MODULE_CLASSES:
        return False
    return _text(dataset, "PixelIntensityRelationship").strip().upper() in ("LOG", "DISP")


def _inverted_over_table(path: str, dataset: pydicom.Dataset, units: np.ndarray) -> np.ndarray:
    """``units``, the output of a Modality LUT Sequence table, inverted over the range of
    the table's entries, as a rescale's output is inverted over its range."""
    item = dataset.ModalityLUTSequence[0]
    entries = _lut_data(path, dataset, item, "ModalityLUTSequence item 1")
    low, high = float(entries.min()), float(entries.max())
    return ((high + low) - units).astype(np.float32)


def _padding(path: str, dataset: pydicom.Dataset, stored: np.ndarray) -> np.ndarray | None:
    """Where ``stored`` holds padding, or ``None`` when the file declares none.

    PixelPaddingValue, alone or with PixelPaddingRangeLimit (the range between them,
    inclusive), names stored values that are not the image: the area outside a CT's
    reconstruction circle, a radiograph's padded border, a mammogram's background air
    (PS3.3 C.7.5.1.1.2). They lie beyond the native image's range, so that viewers leave
    them out of its dynamic range, and are shown black.
    """
    value = _first_window_value(path, dataset, "PixelPaddingValue")
    if value is None:
        return None
    limit = _first_window_value(path, dataset, "PixelPaddingRangeLimit")
    limit = value if limit is None else limit
    return (stored >= min(value, limit)) & (stored <= max(value, limit))


def _presentation_inverse(path: str, dataset: pydicom.Dataset) -> bool:
    shape = _text(dataset, "PresentationLUTShape").strip().upper()
    if shape not in ("", "IDENTITY", "INVERSE"):
        raise UnreadableFileError(
            path, f"PresentationLUTShape is {shape!r}; expected IDENTITY or INVERSE"
        )
    return shape == "INVERSE"


def _voi_window(path: str, dataset: pydicom.Dataset):
    """``(window function, BitsStored)`` of the first WindowCenter / WindowWidth pair, or
    ``None`` when the file has neither."""
    center = _first_window_value(path, dataset, "WindowCenter")
    width = _first_window_value(path, dataset, "WindowWidth")
    if center is None and width is None:
        return None
    if center is None or width is None:
        given, lacking = ("WindowWidth", "WindowCenter") if center is None else (
            "WindowCenter", "WindowWidth")  # fmt: skip
        raise UnreadableFileError(path, f"has {given} but lacks {lacking}; expected both")
    function = _text(dataset, "VOILUTFunction").strip().upper() or "LINEAR"
    if function not in ("LINEAR", "LINEAR_EXACT", "SIGMOID"):
        raise UnreadableFileError(
            path, f"VOILUTFunction is {function!r}; expected LINEAR, LINEAR_EXACT or SIGMOID"
        )
    smallest = 1.0 if function == "LINEAR" else 0.0
    if not width >= smallest or (function != "LINEAR" and width == 0):
        bound = "at least 1 for LINEAR" if function == "LINEAR" else f"above 0 for {function}"
        raise UnreadableFileError(path, f"WindowWidth is {width:g}; expected {bound}")
    bits = _integer(path, dataset, "BitsAllocated", UnreadableFileError, default=16)
    bits = _integer(path, dataset, "BitsStored", UnreadableFileError, default=bits)
    top = 2**bits - 1
    if function == "SIGMOID":
        return (lambda x: np.rint(top / (1.0 + np.exp(-4.0 * (x - center) / width)))), bits
    if function == "LINEAR":  # PS3.3 C.11.2.1.2.1: the window of centre c, width w
        center, width = center - 0.5, width - 1.0  # covers c - 0.5 +- (w - 1) / 2
    if width == 0:  # a LINEAR width of 1: a threshold at the centre
        return (lambda x: np.where(x > center, float(top), 0.0)), bits
    return (lambda x: np.rint(np.clip((x - center) / width + 0.5, 0.0, 1.0) * top)), bits


def _first_window_value(path: str, dataset: pydicom.Dataset, keyword: str) -> float | None:
    value = _raw_value(path, dataset, keyword, UnreadableFileError)
    if value is None:
        return None
    first = _as_list(value)[0]
    try:
        number = float(str(first).strip())
    except ValueError:
        number = math.nan
    if not math.isfinite(number):
        raise UnreadableFileError(path, f"{keyword} is {value!r}; expected numbers")
    return number


def _voi_lut(path: str, dataset: pydicom.Dataset):
    """``(table lookup, LUTDescriptor bits)`` of the first VOILUTSequence item, or ``None``
    when the file has none (PS3.3 C.11.2.1.1)."""
    sequence = _raw_value(path, dataset, "VOILUTSequence", UnreadableFileError)
    if not sequence:
        return None
    item = sequence[0]
    where = "VOILUTSequence item 1"
    descriptor = _raw_value(path, item, "LUTDescriptor", UnreadableFileError)
    try:
        entries, first, bits = (int(v) for v in _as_list(descriptor))
    except (TypeError, ValueError):
        raise UnreadableFileError(
            path, f"{where}: LUTDescriptor is {descriptor!r}; expected three integers"
        ) from None
    if not 8 <= bits <= 16:
        raise UnreadableFileError(
            path, f"{where}: LUTDescriptor gives {bits} bits per entry; expected 8 to 16"
        )
    entries = entries or 2**16  # PS3.3 C.11.2.1.1: 0 stands for 65536 entries
    signed = str(dataset.get("PixelRepresentation", 0)).strip() == "1"
    if signed and item["LUTDescriptor"].VR == "US" and first >= 2**15:
        first -= 2**16  # the first mapped value of a signed image, written as US
    table = _lut_data(path, dataset, item, where)
    if table.size != entries or (table.size and int(table.max()) > 2**bits - 1):
        raise UnreadableFileError(
            path,
            f"{where}: LUTData holds {table.size} entries up to "
            f"{int(table.max()) if table.size else 0}; its LUTDescriptor says {entries} "
            f"entries of {bits} bits",
        )
    table = table.astype(np.float64)

    def look_up(x: np.ndarray) -> np.ndarray:
        return table[np.clip(np.floor(x) - first, 0, entries - 1).astype(np.int64)]

    return look_up, bits


def _lut_data(path: str, dataset: pydicom.Dataset, item: pydicom.Dataset, where: str):
    """LUTData as integers: a list (VR US) or 16-bit words in the file's byte order (OW)."""
    data = _raw_value(path, item, "LUTData", UnreadableFileError)
    if data is None:
        raise UnreadableFileError(path, f"{where} lacks LUTData")
    if isinstance(data, bytes):
        little = dataset.original_encoding[1] is not False
        if len(data) % 2:
            raise UnreadableFileError(
                path, f"{where}: LUTData has {len(data)} bytes; expected 16-bit words"
            )
        return np.frombuffer(data, dtype="<u2" if little else ">u2")
    try:
        return np.asarray([int(v) for v in _as_list(data)], dtype=np.int64)
    except (TypeError, ValueError):
        raise UnreadableFileError(path, f"{where}: LUTData is not integers") from None


def scan_dicom_files(
    paths: Iterable[os.PathLike | str],
    *,
    where: os.PathLike | str | None = None,
    progress: str | None = None,
) -> list[tuple[str, pydicom.Dataset]]:
    """The header pass of :func:`read_dicom_series` over any files: which are DICOM, and what
    each says, without decoding (or loading) pixel data.

    Each file is classified by its bytes, never by its name:

    * **DICOM**: the ``DICM`` preamble at byte 128, or no preamble but a data set that starts
      with a group 0002/0008 element (or parses with SOPClassUID, or Rows and Columns). Its
      header is returned, images and non-images (RTSTRUCT, SEG, DICOMDIR ...) alike.
    * **Broken DICOM** raises UnreadableFileError naming the file: a header that cannot be
      parsed, a value that runs past the end of the file (cut short), an empty data set, an
      image (Rows and Columns, or an image-storage SOP class) without pixel data, a
      non-hidden 0-byte file, and a zero-filled preamble without the DICM marker (an
      interrupted copy, a damaged marker).
    * **Not DICOM** (text, README, LICENSE, Thumbs.db, PNG, hidden empty files) is skipped;
      all skipped files are named in one :class:`SkippedFileWarning`.

    Args:
        paths: the files to scan, in any order.
        where: the folder (or dataset) named at the head of the warning.
        progress: a tqdm description to show a progress bar; ``None`` for none.

    Returns:
        ``[(path, header)]`` in input order, ``path`` a ``str``. Each header is a
        ``pydicom.Dataset`` read with values over 1 KiB (the pixel data) left on disk:
        ``"PixelData" in header`` works; reading ``header.PixelData`` reads it from the file.

    Raises:
        ValueError: ``paths`` is a single path rather than a collection of them.
        UnreadableFileError: a file cannot be opened, or is DICOM but broken (see above).

    Warns:
        SkippedFileWarning: files that are not DICOM.

    Example:
        >>> import tempfile
        >>> from kseg.phantoms.lctsc import write_lctsc
        >>> root = write_lctsc(tempfile.mkdtemp(), num_patients=1, num_test_patients=0,
        ...                    num_slices=4, size=32)  # LCTSC's layout, phantom anatomy
        >>> headers = scan_dicom_files(sorted(root.rglob("*.dcm")))
        >>> len(headers), sorted({str(header.Modality) for _, header in headers})
        (5, ['CT', 'RTSTRUCT'])
    """
    if isinstance(paths, (str, bytes, os.PathLike)):
        raise ValueError(
            f"paths must be a collection of files; got the single path {os.fspath(paths)!r}"
        )
    paths = [os.fspath(p) for p in paths]
    if progress is not None:
        from tqdm.auto import tqdm

        paths = tqdm(paths, desc=progress, unit="file", leave=False)
    headers, skipped = [], []
    for path in paths:
        dataset, reason = _scan_file(path)
        if dataset is None:
            skipped.append(f"{path} ({reason})")
        else:
            headers.append((path, dataset))
    _warn_skipped(where, skipped, stacklevel=3)
    return headers


# --- the header pass --------------------------------------------------------------------------


def _list_source(source) -> tuple[str, list[str]]:
    if isinstance(source, (str, os.PathLike)):
        folder = os.fspath(source)
        if not os.path.isdir(folder):
            listed = (
                _dicomdir_series(folder)
                if os.path.basename(folder).upper() == "DICOMDIR" and os.path.isfile(folder)
                else []
            )
            if listed:  # the index of a CD / DVD, which many viewers take as the input
                raise LayoutError(
                    folder, f"expected a folder of DICOM files, not the index of a CD: this "
                    f"{_listing(listed)}",
                )  # fmt: skip
            problem = (
                "is not a folder (pass a list of files)"
                if os.path.exists(folder)
                else ("does not exist")
            )
            raise LayoutError(folder, f"expected a folder of DICOM files; it {problem}")
        entries = sorted(os.scandir(folder), key=lambda entry: entry.name)
        for entry in entries:
            # a slice behind a dead link would leave a shorter series, or a gap error
            # that names the wrong cause
            if entry.is_symlink() and not entry.name.startswith(".") and not os.path.exists(
                entry.path
            ):
                raise UnreadableFileError(
                    entry.path,
                    f"is a link to {os.readlink(entry.path)}, which does not exist; expected "
                    f"a link to a DICOM file{pointer_note(entry.path)}",
                )
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


def _starts_like_data_set(head: bytes) -> bool:
    """The first bytes of a preamble-less file hold a group 0002 or 0008 element tag."""
    if len(head) < 8 or head[:2] not in (b"\x02\x00", b"\x08\x00", b"\x00\x02", b"\x00\x08"):
        return False
    vr = head[4:6]
    # Explicit VR: two upper-case letters; implicit VR: a 4-byte length, small for group 8.
    return vr.isalpha() and vr.isupper() or int.from_bytes(head[4:8], "little") < 1 << 24


def _scan_file(path: str) -> tuple[pydicom.Dataset | None, str | None]:
    """``(header, None)`` for a DICOM file, ``(None, reason)`` for a file that is not DICOM.

    Raises UnreadableFileError for a file that cannot be opened, is DICOM but broken, or is
    a Git LFS / git-annex pointer standing for a file that was not fetched.
    """
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as handle:
            head = handle.read(136)
    except OSError as exc:
        raise UnreadableFileError(path, f"cannot be opened ({exc}){pointer_note(path)}") from exc
    if size == 0:
        if os.path.basename(path).startswith("."):
            return None, "empty hidden file"
        raise UnreadableFileError(
            path, "is empty (0 bytes): a copy or download that did not complete"
        )
    pointer = pointer_note(path) if size <= 1024 else ""
    if pointer:
        # It stands for a file that is not there (a fetch left undone or cut short), as a
        # file cut short does: skipped, the series would read without that slice.
        raise UnreadableFileError(path, f"is not the file it stands for{pointer}")
    has_preamble = head[128:132] == b"DICM"
    if not has_preamble and not any(head[:128]):
        # DICOM preambles are usually zero-filled; no other file a DICOM folder holds is.
        raise UnreadableFileError(
            path,
            f"starts with {min(size, 128)} zero bytes like a DICOM preamble but has no DICM "
            "marker at byte 128: a DICOM file cut short or damaged (or an unfinished copy)",
        )
    looks_dicom = has_preamble or _starts_like_data_set(head)
    try:
        with warnings.catch_warnings():
            # Forcing a parse of a non-DICOM file makes pydicom warn about every odd byte.
            if not has_preamble:
                warnings.simplefilter("ignore")
            dataset = pydicom.dcmread(path, defer_size=_DEFER_SIZE, force=not has_preamble)
    except Exception as exc:  # pydicom raises many types on damaged files
        if looks_dicom:
            raise UnreadableFileError(path, f"DICOM header cannot be read ({exc})") from exc
        return None, _NOT_DICOM
    if not looks_dicom and not (
        "SOPClassUID" in dataset or ("Rows" in dataset and "Columns" in dataset)
    ):
        # A forced parse of a text or thumbnail file yields a few junk elements at most.
        return None, _NOT_DICOM
    if len(dataset) == 0:
        raise UnreadableFileError(
            path,
            "is a DICOM file with an empty data set (cut short inside or right after its file "
            "meta information?)",
        )
    cut = _cut_short(dataset, size)
    if cut:
        raise UnreadableFileError(path, cut)
    is_image = "Rows" in dataset and "Columns" in dataset
    if _has_image(dataset) and not is_image:
        raise UnreadableFileError(
            path, "has pixel data but no Rows/Columns: the image size is unknown"
        )
    if is_image and not _has_image(dataset):
        raise UnreadableFileError(
            path,
            "has Rows and Columns but no pixel data: the file is cut short before its pixel "
            "data, or is not a complete image",
        )
    if not is_image and _is_image_storage(dataset):
        raise UnreadableFileError(
            path,
            f"is a {_sop_class_name(dataset)} file without Rows/Columns or pixel data: the "
            "header is cut short or incomplete",
        )
    _lift_functional_groups(path, dataset)
    return dataset, None


def _lift_functional_groups(path: str, dataset: pydicom.Dataset) -> None:
    """Copy a single-frame Enhanced image's frame values to the top level, in memory.

    An Enhanced CT / MR / Legacy Converted file of one frame is an ordinary slice whose
    RescaleSlope / RescaleIntercept, position, orientation and pixel spacing sit in its
    per-frame or shared functional groups. Left there, its stored values would pass for
    Hounsfield units (1024 HU too bright for a CT intercept of -1024), silently. A value
    that places or rescales the pixels, given both at the top level and, differently, in the
    functional groups, is an error: which one the writer meant is unknowable (for reported
    values, such as the window, the top level's is kept). Files of several frames are
    read frame by frame (:func:`_frames_as_slices`).
    """
    if not _has_functional_groups(dataset):
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            if int(str(dataset.get("NumberOfFrames", 1)).strip() or 1) != 1:
                return
            groups = [
                *(dataset.get("PerFrameFunctionalGroupsSequence") or [])[:1],
                *(dataset.get("SharedFunctionalGroupsSequence") or [])[:1],
            ]
        except Exception:  # malformed: the pixel-module checks name it
            return
    _lift_frame_values(path, dataset, groups)


def _has_functional_groups(dataset: pydicom.Dataset) -> bool:
    return "PerFrameFunctionalGroupsSequence" in dataset or (
        "SharedFunctionalGroupsSequence" in dataset
    )


def _lift_frame_values(name: str, dataset: pydicom.Dataset, groups) -> None:
    """Copy the values of one frame's functional groups (its per-frame item, then the shared
    one) to ``dataset``'s top level; a placing or rescaling value given differently at the
    top level is an UnreadableFileError naming ``name``."""
    found = {}
    for group in groups:  # per-frame first: a group sits in one of the two, never both
        for sequence, keywords in _FUNCTIONAL_GROUP_VALUES.items():
            items = group.get(sequence)
            for keyword in keywords if items else ():
                if keyword in items[0] and keyword not in found:
                    found[keyword] = items[0][keyword]
    for keyword, element in found.items():
        if keyword not in dataset:
            dataset[element.tag] = element
        elif keyword in _PLACING_OR_RESCALING and dataset[keyword].value != element.value:
            raise UnreadableFileError(
                name,
                f"{keyword} is {dataset[keyword].value!r} at the top level but "
                f"{element.value!r} in the functional groups; expected one value",
            )


def _cut_short(dataset: pydicom.Dataset, size: int) -> str | None:
    """Say which element runs past the end of the file, if one does."""
    syntax = dataset.file_meta.get("TransferSyntaxUID")
    if syntax == DeflatedExplicitVRLittleEndian:
        return None  # offsets count in the inflated stream; zlib reports a cut itself
    for tag in dataset.keys():
        element = _stored_element(dataset, tag)
        if not isinstance(element, RawDataElement) or element.length == _UNDEFINED_LENGTH:
            continue
        end = element.value_tell + element.length
        if end > size:
            name = pydicom.datadict.keyword_for_tag(tag) or str(tag)
            return (
                f"is cut short: {name} needs {element.length} bytes from byte "
                f"{element.value_tell}, but the file ends at byte {size}"
            )
    return None


def _stored_element(dataset: pydicom.Dataset, tag: int):
    """The element as parsed, without reading a deferred value from the file (which
    ``Dataset.get_item`` would do): a RawDataElement knows its length and file offset."""
    return dataset._dict[Tag(tag)]


def _read_every_element(path: str, dataset: pydicom.Dataset) -> None:
    """Convert every element of ``dataset`` now, nested ones included, so that a value
    pydicom cannot convert (an unknown VR, a damaged number) is an error naming the file here,
    not a NotImplementedError or ValueError from whichever later ``get`` first touches it."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom's "invalid value" warnings: values kept
        try:
            for _ in dataset.iterall():
                pass
        except Exception as exc:  # pydicom raises many types on damaged values
            raise UnreadableFileError(
                path, f"has a DICOM element that cannot be read ({type(exc).__name__}: {exc})"
            ) from exc


def _has_image(dataset: pydicom.Dataset) -> bool:
    return any(tag in dataset for tag in _PIXEL_TAGS)


def _sop_class(dataset: pydicom.Dataset) -> UID:
    uid = _text(dataset, "SOPClassUID") or _text(dataset.file_meta, "MediaStorageSOPClassUID")
    return UID(uid.strip())


def _sop_class_name(dataset: pydicom.Dataset) -> str:
    uid = _sop_class(dataset)
    return uid.name if uid else "DICOM"


def _is_rt_dose(dataset: pydicom.Dataset) -> bool:
    return _sop_class(dataset).name == "RT Dose Storage" or (
        _text(dataset, "Modality").strip().upper() == "RTDOSE"
    )


def _rt_dose_reason(dataset: pydicom.Dataset) -> str:
    """Why an RT Dose object is not read as an image (PS3.3 C.8.8.3): its stored values are
    dose only once multiplied by DoseGridScaling, which no rescale tag says, and a
    multi-frame grid is placed by GridFrameOffsetVector, not by functional groups."""
    scaling = _text(dataset, "DoseGridScaling").strip() or "absent"
    units = _text(dataset, "DoseUnits").strip() or "absent"
    return (
        f"an RT Dose grid (DoseGridScaling {scaling}, DoseUnits {units}), not an image: its "
        "stored values are dose only once multiplied by DoseGridScaling; kseg reads CT / MR "
        "images and radiographs, not dose"
    )


def _is_image_storage(dataset: pydicom.Dataset) -> bool:
    name = _sop_class(dataset).name
    return "Image Storage" in name or name in ("RT Dose Storage", "Segmentation Storage")


def _warn_skipped(where, skipped: list[str], stacklevel: int = 4) -> None:
    if skipped:
        prefix = f"{os.fspath(where)}: " if where is not None else ""
        warnings.warn(
            SkippedFileWarning(f"{prefix}skipped {len(skipped)} file(s): " + "; ".join(skipped)),
            stacklevel=stacklevel,
        )


def _images_elsewhere(folder: str) -> str:
    """Where the images are when ``folder`` holds none itself (its subfolders are not read):
    the series its DICOMDIR lists, as on a CD or DVD export (PS3.10, PS3.11: the DICOMDIR at
    the top, the images in PT000000/ST000000/SE000000-like folders), else its subfolders;
    ``""`` when it has neither."""
    if not os.path.isdir(folder):
        return ""
    entries = sorted(os.scandir(folder), key=lambda entry: entry.name)
    dicomdir = next((e.path for e in entries if e.name.upper() == "DICOMDIR" and e.is_file()), None)
    listed = _dicomdir_series(dicomdir) if dicomdir else []
    if listed:
        return f" in the folder itself (subfolders are not read); its {_listing(listed)}"
    subfolders = [entry.name for entry in entries if entry.is_dir()]
    if subfolders:
        return (
            f" in the folder itself (subfolders are not read; subfolders: "
            f"{', '.join(subfolders[:10])}{' ...' if len(subfolders) > 10 else ''}): pass the "
            "folder of one series"
        )
    return ""


def _listing(listed) -> str:
    """What a DICOMDIR lists, from :func:`_dicomdir_series`, and what to pass instead."""
    described = "; ".join(
        f"series {number} ({modality}, {count} images) in {', '.join(folders)}"
        for number, modality, count, folders in listed[:5]
    )
    more = f"; and {len(listed) - 5} more" if len(listed) > 5 else ""
    return (
        f"DICOMDIR lists {len(listed)} image series: {described}{more}. Pass the folder of one "
        "series (a series spread over several folders: its files, as a list)"
    )


def _dicomdir_series(dicomdir: str) -> list[tuple[str, str, int, list[str]]]:
    """``(SeriesNumber, Modality, image count, folders)`` of each series whose images a
    DICOMDIR lists (its SERIES records' IMAGE records, PS3.3 F.3), folders that exist only,
    under the names the DICOMDIR gives or in lower case (a CD mounted so); empty when the
    DICOMDIR cannot be read."""
    top = os.path.dirname(dicomdir)
    try:
        ds = pydicom.dcmread(dicomdir, force=True)
        records = {item.seq_item_tell: item for item in ds.DirectoryRecordSequence}
        series: dict[int, list[str]] = {}
        pending = [(int(ds.OffsetOfTheFirstDirectoryRecordOfTheRootDirectoryEntity), None)]
        seen = set()
        while pending:  # each record once, whatever loops a damaged file's offsets make
            offset, owner = pending.pop()
            while offset in records and offset not in seen:
                seen.add(offset)
                record = records[offset]
                kind = str(record.get("DirectoryRecordType", "")).strip()
                parts = record.get("ReferencedFileID")
                parts = [parts] if isinstance(parts, str) else list(parts or [])
                if kind == "IMAGE" and owner is not None and len(parts) > 1:
                    series[owner].append(os.path.join(*parts[:-1]))
                lower = int(record.get("OffsetOfReferencedLowerLevelDirectoryEntity", 0) or 0)
                if lower:
                    if kind == "SERIES":
                        series.setdefault(offset, [])
                    pending.append((lower, offset if kind == "SERIES" else owner))
                offset = int(record.get("OffsetOfTheNextDirectoryRecord", 0) or 0)
    except Exception:  # a damaged DICOMDIR only loses the hint
        return []
    listed = []
    for offset, relatives in series.items():
        folders = [
            next((os.path.join(top, name) for name in (relative, relative.lower())
                  if os.path.isdir(os.path.join(top, name))), None)
            for relative in relatives
        ]  # fmt: skip
        folders = [folder for folder in folders if folder is not None]
        if folders:
            record = records[offset]
            listed.append((
                str(record.get("SeriesNumber", "") or "?"),
                str(record.get("Modality", "") or "?"),
                len(folders),
                list(dict.fromkeys(folders)),
            ))  # fmt: skip
    return listed


def _read_image_headers(paths: Iterable[str], folder: str) -> list[tuple[str, pydicom.Dataset]]:
    """Headers of the files that are DICOM images; everything else is skipped with a warning."""
    headers, skipped = [], []
    for path in paths:
        dataset, reason = _scan_file(path)
        if dataset is None:
            skipped.append(f"{path} ({reason})")
        elif not _has_image(dataset):
            # DICOMDIR, RTSTRUCT, SR ... stored beside the slices carry no image.
            skipped.append(f"{path} ({_sop_class_name(dataset)}, no image)")
        elif "Segmentation" in _sop_class_name(dataset):
            # A DICOM-SEG has pixel data, but they are labels of another series' images.
            skipped.append(f"{path} ({_sop_class_name(dataset)}: read it with read_dicom_seg)")
        elif _is_rt_dose(dataset):
            # A dose grid exported beside the planning CT: pixel data, but dose, not an image;
            # skipped only when whole (a damaged file is an error, as everywhere here).
            _read_every_element(path, dataset)
            skipped.append(f"{path} ({_rt_dose_reason(dataset)})")
        else:
            headers.append((path, dataset))
    _warn_skipped(folder, skipped)
    if not headers:
        raise LayoutError(folder, "no DICOM image files found" + _images_elsewhere(folder))
    return headers


def _select_series(headers, series_uid: str | None, folder: str):
    groups: dict[str, list] = {}
    for path, dataset in headers:
        groups.setdefault(_text(dataset, "SeriesInstanceUID"), []).append((path, dataset))
    listing = ", ".join(
        f"{uid or '(blank SeriesInstanceUID)'} ({len(files)} files){_describe_series(files)}"
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


def _describe_series(files) -> str:
    """`` [CT, series 2 'Topogram', localizer]``: what tells a user which series to choose
    (a PACS export holds the scout and dose report series beside the volume)."""
    header = files[0][1]
    parts = [_text(header, key).strip() for key in ("Modality", "SeriesNumber")]
    parts = [parts[0], f"series {parts[1]}" if parts[1] else ""]
    description = _text(header, "SeriesDescription").strip()
    parts.append(repr(description) if description else "")
    if all("LOCALIZER" in _image_type(ds) for _, ds in files):
        parts.append("localizer")
    shown = ", ".join(part for part in parts if part)
    return f" [{shown}]" if shown else ""


def _frames_as_slices(series, folder: str):
    """The series' ``(path, header)`` pairs, an Enhanced multi-frame image's as one
    ``(path, _Frame)`` pair per frame, which the series reader then orders and checks like
    slices. An image split into a Concatenation (PS3.3 C.7.6.16.2.2: several files sharing a
    ConcatenationUID) is one image: the frames of all its files, each decoded from its own."""
    images = _enhanced_images(series)
    if not images:
        _check_one_volume_of_slices(series, folder)
        return series
    if len(images) > 1:
        raise DicomSeriesError(
            folder,
            f"holds {len(images)} Enhanced multi-frame images in one series: "
            + "; ".join(_describe_image(image) for image in images)
            + "; expected one, since each image's frames are the series (they share a "
            "SeriesInstanceUID, so series_uid= cannot choose: pass the list of one image's "
            "files)",
        )
    (image,) = images
    if len(series) > len(image):
        members = {path for path, _ in image}
        others = [path for path, _ in series if path not in members]
        raise DicomSeriesError(
            image[0][0],
            f"is {_describe_image(image)}, a multi-frame Enhanced image, and its series also "
            f"holds {len(others)} other image file(s) (first: {others[0]}): expected the "
            "Enhanced image alone, since its frames are the series (pass series_uid= or a "
            "list of files to choose, or move the other files out)",
        )
    if _text(image[0][1], "ConcatenationUID").strip():
        image = _whole_concatenation(image, folder)
    frames = []
    for path, header in image:
        with _reading(path, UnreadableFileError):
            frames += _frames(path, header)
    with _reading(_describe_image(image), UnreadableFileError):
        _check_one_volume(image, folder)
    return frames


def _check_one_volume_of_slices(series, folder: str) -> None:
    """Refuse single-frame slices of several volumes, as their headers say: a
    :data:`_SEVERAL_VOLUMES_BY_SLICE` attribute that takes several values. An MR series of
    two echoes or a dynamic series stores every volume under one SeriesInstanceUID; at the
    same positions its slices would read as duplicates, at interleaved ones (echoes or time
    points offset along the normal) as one volume of twice the slices, silently. A Siemens
    mosaic (ImageType MOSAIC: the slices of one volume tiled into one image, as fMRI and
    diffusion series store them) would read as one slice of tiles."""
    for path, dataset in series:
        image_type = _image_type(dataset)
        if "MOSAIC" in image_type:
            shown_type = "\\".join(image_type)
            raise DicomSeriesError(
                path,
                f"is a mosaic (ImageType {shown_type}): one image "
                "tiling the slices of a whole volume, whose tiles this reader would take for "
                "one slice; expected one slice per file: convert the series first (dcm2niix "
                "unpacks mosaics)",
            )
    for keyword, what in _SEVERAL_VOLUMES_BY_SLICE.items():
        files: dict[str, list[str]] = {}
        for path, dataset in series:
            value = _label(dataset, keyword)
            if value:
                files.setdefault(value, []).append(path)
        if len(files) > 1:
            shown = "; ".join(
                f"{value}: {len(paths)} file(s), first {sorted(paths)[0]}"
                for value, paths in sorted(files.items())
            )
            raise DicomSeriesError(
                folder,
                f"{_which_series(series)} is not one volume: its {len(series)} slices hold "
                f"{len(files)} {what} ({keyword} {shown}); expected one volume per series: "
                f"read each {keyword} value's files as a list of files",
            )


def _which_series(slices) -> str:
    """How an error names the series of ``slices`` (``(path, dataset)`` pairs): its UID, or
    how many series were read as one."""
    uids = {_text(dataset, "SeriesInstanceUID") for _, dataset in slices}
    uid = next(iter(uids)) or "(blank SeriesInstanceUID)"
    return f"series {uid}" if len(uids) == 1 else f"these {len(uids)} series read as one"


def _check_one_echo_time(ordered, distances: np.ndarray, folder: str) -> None:
    """Refuse slices of several EchoTime values whose positions overlap: echoes of one
    series that no EchoNumbers tells apart. EchoNumbers is Type 3 and converters and
    anonymisers drop it, EchoTime is Type 2 (PS3.3 C.8.3.1); interleaved along the normal
    the echoes would read as one volume of twice the slices, alternating contrasts. Slabs
    of different EchoTime one after the other are left to the gap checks."""
    spans: dict[str, list[float]] = {}
    files: dict[str, list[str]] = {}
    for (path, dataset), distance in zip(ordered, distances, strict=True):
        value = _label(dataset, "EchoTime")
        if value:
            spans.setdefault(value, []).append(float(distance))
            files.setdefault(value, []).append(path)
    if len(spans) < 2 or min(len(v) for v in spans.values()) < 2:
        return
    ranges = sorted((min(v), max(v)) for v in spans.values())
    lows, highs = [low for low, _ in ranges[1:]], [high for _, high in ranges[:-1]]
    if all(low > high + SAME_POSITION_TOLERANCE_MM for low, high in zip(lows, highs, strict=True)):
        return
    shown = "; ".join(
        f"{value} ms: {len(paths)} file(s), first {sorted(paths)[0]}"
        for value, paths in sorted(files.items(), key=lambda item: _number_first(item[0]))
    )
    raise DicomSeriesError(
        folder,
        f"{_which_series(ordered)} is not one volume: its {len(ordered)} slices hold "
        f"{len(files)} echoes at overlapping positions (EchoTime {shown}) that no EchoNumbers "
        "tells apart; expected one volume per series: read each EchoTime value's files as a "
        "list of files",
    )


def _number_first(label: str) -> tuple:
    """A sort key putting :func:`_label` values that are numbers first, in numeric order."""
    try:
        return (0, float(label), label)
    except ValueError:  # a malformed EchoTime ("4.6\\9.2", "n/a"): after the numbers
        return (1, 0.0, label)


def _label(dataset: pydicom.Dataset, keyword: str) -> str:
    """A header value as one comparable string (numbers as numbers: ``01`` is ``1``); ``''``
    when absent, empty or unreadable."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            value = dataset.get(keyword)
        except Exception:  # an optional value pydicom cannot convert: no label
            return ""
    if value is None or value == "":
        return ""
    items = []
    for item in _as_list(value):
        text = str(item).strip()
        try:
            text = f"{float(text):g}"
        except ValueError:
            pass
        items.append(text)
    return "\\".join(items)


def _enhanced_images(series) -> list[list[tuple[str, pydicom.Dataset]]]:
    """The series' Enhanced multi-frame images, each as the ``(path, header)`` pairs of its
    files: one file, or the files of one concatenation (which may hold a single frame)."""
    images, concatenations = [], {}
    for path, header in series:
        count = _frame_count(path, header)
        if count > 1 and not _has_functional_groups(header):
            raise DicomSeriesError(
                path,
                f"has {count} frames but no functional groups "
                "(PerFrameFunctionalGroupsSequence) to place them: expected single-frame "
                "slices or an Enhanced multi-frame image",
            )
        concatenation = _text(header, "ConcatenationUID").strip()
        if concatenation and _has_functional_groups(header):
            if concatenation not in concatenations:
                concatenations[concatenation] = []
                images.append(concatenations[concatenation])
            concatenations[concatenation].append((path, header))
        elif count > 1:
            images.append([(path, header)])
    return images


def _describe_image(image) -> str:
    if len(image) == 1:
        return image[0][0]
    uid = _text(image[0][1], "ConcatenationUID")
    return f"concatenation {uid} of {len(image)} files ({', '.join(path for path, _ in image)})"


def _whole_concatenation(image, folder: str):
    """The files of one concatenation in their InConcatenationNumber order, once checked to
    be all of it: numbers 1..InConcatenationTotalNumber each once, one source image, and
    each file's ConcatenationFrameOffsetNumber the count of the frames before it (a file
    missing from the middle, or a frame missing from a file, shows there)."""
    uid = _text(image[0][1], "ConcatenationUID")
    numbered, totals, sources = {}, set(), set()
    for path, header in image:
        number = _integer(
            path, header, "InConcatenationNumber", DicomSeriesError, allowed=range(1, 2**16)
        )
        if number in numbered:
            raise DicomSeriesError(
                folder,
                f"concatenation {uid}: {numbered[number][0]} and {path} both have "
                f"InConcatenationNumber {number}; expected each instance once",
            )
        numbered[number] = (path, header)
        total = _integer(
            path, header, "InConcatenationTotalNumber", DicomSeriesError, default=0,
            allowed=range(1, 2**16),
        )  # fmt: skip
        totals |= {total} - {0}  # type 3: files may leave it out
        sources.add(_text(header, "SOPInstanceUIDOfConcatenationSource").strip())
    for keyword, found in (("InConcatenationTotalNumber", totals),
                           ("SOPInstanceUIDOfConcatenationSource", sources)):  # fmt: skip
        if len(found) > 1:
            raise DicomSeriesError(
                folder, f"concatenation {uid}: its files disagree on {keyword} ({sorted(found)})"
            )
    total = totals.pop() if totals else max(numbered)
    missing = sorted(set(range(1, total + 1)) - numbered.keys())
    if missing or max(numbered) > total:
        raise DicomSeriesError(
            folder,
            f"concatenation {uid} (of source image {sources.pop()}) is incomplete: it has "
            f"{total} instances, these files hold InConcatenationNumber "
            f"{sorted(numbered)}; missing {missing or 'none, but a number is beyond the total'}"
            " (read all of its files together: the folder, or a list of them all)",
        )
    ordered, frames_before = [], 0
    for number in sorted(numbered):
        path, header = numbered[number]
        ordered.append((path, header))
        offset = _integer(
            path, header, "ConcatenationFrameOffsetNumber", DicomSeriesError,
            allowed=range(2**32),
        )  # fmt: skip
        if offset != frames_before:
            raise DicomSeriesError(
                folder,
                f"concatenation {uid} is incomplete: {path} (InConcatenationNumber "
                f"{number}) starts at ConcatenationFrameOffsetNumber "
                f"{offset}, but the instances before it hold {frames_before} frames; expected "
                "each instance to continue where the previous one ends",
            )
        frames_before += _frame_count(path, header)
    return ordered


def _frame_count(path: str, header: pydicom.Dataset) -> int:
    return _integer(
        path, header, "NumberOfFrames", UnreadableFileError, default=1, allowed=range(1, 2**31)
    )


def _frames(path: str, header: pydicom.Dataset) -> list[tuple[str, _Frame]]:
    count = _frame_count(path, header)
    _check_pixel_module(path, header, DicomSeriesError, frames=count)
    per_frame = _per_frame_groups(path, header)
    shared = _raw_value(path, header, "SharedFunctionalGroupsSequence", UnreadableFileError)
    frames = []
    for number, group in enumerate(per_frame, start=1):
        frame = _Frame(header, number)
        _lift_frame_values(_slice_name(path, frame), frame, [group, *(shared or [])[:1]])
        frames.append((path, frame))
    return frames


def _per_frame_groups(path: str, header: pydicom.Dataset):
    count = _frame_count(path, header)
    per_frame = _raw_value(path, header, "PerFrameFunctionalGroupsSequence", UnreadableFileError)
    per_frame = per_frame or []
    if len(per_frame) != count:
        raise UnreadableFileError(
            path,
            f"NumberOfFrames is {count} but PerFrameFunctionalGroupsSequence holds "
            f"{len(per_frame)} item(s); expected one per frame",
        )
    return per_frame


def _check_one_volume(image, folder: str) -> None:
    """Refuse an image whose frames (all its files' frames, for a concatenation) are several
    volumes, as the image says so: a :data:`_SEVERAL_VOLUMES_BY` attribute in the per-frame
    functional groups, or a dimension of DimensionIndexSequence pointing at one, that takes
    several values. Frame order is never used: scanners store frames slice-major or
    time-major alike."""
    path, header = image[0]
    dimensions = {}  # position in DimensionIndexValues -> keyword
    for index, item in enumerate(
        _raw_value(path, header, "DimensionIndexSequence", UnreadableFileError) or []
    ):
        keyword = pydicom.datadict.keyword_for_tag(item.get("DimensionIndexPointer") or 0)
        if keyword in _SEVERAL_VOLUMES_BY:
            dimensions[index] = keyword
    values = {keyword: set() for keyword in _SEVERAL_VOLUMES_BY}
    indices = {keyword: set() for keyword in _SEVERAL_VOLUMES_BY}
    per_frame = [group for member in image for group in _per_frame_groups(*member)]
    for group in per_frame:
        for element in group:
            for item in element.value[:1] if element.VR == "SQ" else ():
                for keyword in values.keys() & set(item.dir()):
                    values[keyword].add(str(item[keyword].value))
        content = group.get("FrameContentSequence") or [pydicom.Dataset()]
        frame_indices = _as_list(content[0].get("DimensionIndexValues") or [])
        for index, keyword in dimensions.items():
            if index < len(frame_indices):
                indices[keyword].add(int(frame_indices[index]))
    where, what_frames = path, f"its {len(per_frame)} frames"
    if len(image) > 1:
        where = folder
        what_frames = (
            f"concatenation {_text(header, 'ConcatenationUID')}'s {len(per_frame)} frames "
            f"in {len(image)} files"
        )
    for keyword, what in _SEVERAL_VOLUMES_BY.items():
        found = values[keyword] if len(values[keyword]) > 1 else indices[keyword]
        if len(found) > 1:
            shown = ", ".join(map(str, sorted(found)[:5])) + (", ..." if len(found) > 5 else "")
            source = "" if found is values[keyword] else " dimension index"
            raise DicomSeriesError(
                where,
                f"is not one volume: {what_frames} hold {len(found)} {what} "
                f"({keyword}{source} {shown}); expected one frame per slice position (split "
                "the image into one volume each first)",
            )


def _slice_name(path: str, dataset: pydicom.Dataset) -> str:
    """The file, and for a frame of an Enhanced image the frame: what messages name."""
    return f"{path} frame {dataset.frame_number}" if isinstance(dataset, _Frame) else path


# --- what references a series' slices ---------------------------------------------------------


def referenced_frame_number(item: pydicom.Dataset) -> int | None:
    """The one frame an image reference names (its ReferencedFrameNumber), or ``None`` when
    it names none, several, or no valid frame number. A single-frame image needs none, so a
    broken value there changes nothing; on a multi-frame image the reference then names no
    slice, and what it refers to is placed by position with a warning."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom's own "invalid IS" warning
        value = item.get("ReferencedFrameNumber")
    values = list(value) if isinstance(value, (pydicom.multival.MultiValue, list)) else [value]
    if len(values) != 1:
        return None
    try:
        frame = int(str(values[0]).strip())
    except ValueError:
        return None
    return frame if frame >= 1 else None


class ImageSlices:
    """A volume's slices by the image each was read from, to place what references them.

    A single-frame image is one slice; each frame of a multi-frame Enhanced CT / MR file is
    one slice, so its SOPInstanceUID names several and only the frame number tells which
    (``metadata["frame_numbers"]`` of :func:`read_dicom_series`). A slice of a
    concatenation is named by its file's SOPInstanceUID and frame, as PS3.3 C.7.6.16.2.2
    has references made, and also by the concatenation's source image and the frame's number
    there (``metadata["concatenation_source_uid"]``, ``["source_frame_numbers"]``): what a
    SEG or RTSTRUCT drawn on the image before it was split names.
    """

    def __init__(self, volume: Volume):
        uids = volume.metadata.get("sop_instance_uids", ())
        frames = volume.metadata.get("frame_numbers") or (None,) * len(uids)
        self._slices = {
            (str(uid), frame): k
            for k, (uid, frame) in enumerate(zip(uids, frames, strict=True))
            if uid
        }
        source = volume.metadata.get("concatenation_source_uid")
        if source:
            for k, frame in enumerate(volume.metadata["source_frame_numbers"]):
                self._slices[(str(source), frame)] = k

    def __bool__(self) -> bool:
        return bool(self._slices)

    def slice_of(self, uid: str | None, frame: int | None) -> int | None:
        """The slice drawn from image ``uid`` (frame ``frame``), or ``None`` when the volume
        holds no such slice. A frame number on a reference to a single-frame image is
        ignored (frame 1 is the image); a reference to a multi-frame image without one names
        no slice."""
        if uid is None:
            return None
        if frame is not None and (uid, frame) in self._slices:
            return self._slices[(uid, frame)]
        return self._slices.get((uid, None))


# --- header values ----------------------------------------------------------------------------


@contextlib.contextmanager
def _reading(path: str, error: type[KsegError]):
    """Turn any exception other than a kseg error into ``error(path, ...)``.

    pydicom and numpy raise ValueError, TypeError, KeyError, struct.error, ... on damaged
    files; whatever slips past the explicit checks still names the file.
    """
    try:
        yield
    except (KsegError, MemoryError):
        raise
    except Exception as exc:
        raise error(path, f"cannot be read ({type(exc).__name__}: {exc})") from exc


def _raw_value(path: str, dataset: pydicom.Dataset, keyword: str, error):
    """The value pydicom gives for ``keyword`` (``None`` when absent or empty); pydicom's own
    warnings about invalid values are folded into the error the caller raises instead."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            value = dataset.get(keyword)
        except Exception as exc:  # a value pydicom cannot convert at all
            raise error(path, f"{keyword} cannot be read ({exc})") from exc
    if value is None or value == "":
        return None
    return value


def _as_list(value) -> list:
    if isinstance(value, (pydicom.multival.MultiValue, list, tuple)):
        return list(value)
    return [value]


def _numbers(path: str, dataset, keyword: str, count: int, error, *, required=True):
    """``count`` finite floats from a DS/FD/IS element, or an error naming tag and value."""
    value = _raw_value(path, dataset, keyword, error)
    if value is None:
        if required:
            raise error(path, f"lacks {keyword}; cannot place the slice")
        return None
    items = _as_list(value)
    try:
        numbers = np.array([float(str(item).strip()) for item in items], dtype=np.float64)
    except ValueError:
        numbers = None
    shown = "\\".join(str(item) for item in items)
    if numbers is None or len(numbers) != count or not np.all(np.isfinite(numbers)):
        raise error(path, f"{keyword} is {shown!r}; expected {count} finite number(s)")
    return numbers


def _integer(path: str, dataset, keyword: str, error, *, default=None, allowed=None):
    value = _raw_value(path, dataset, keyword, error)
    if value is None:
        if default is None:
            raise error(path, f"lacks {keyword}, which the pixel data need")
        return default
    items = _as_list(value)
    try:
        number = int(str(items[0]).strip()) if len(items) == 1 else None
    except ValueError:
        number = None
    if number is None or (allowed is not None and number not in allowed):
        expected = "an integer" if allowed is None else f"one of {_describe_allowed(allowed)}"
        raise error(path, f"{keyword} is {value!r}; expected {expected}")
    return number


def _describe_allowed(allowed) -> str:
    if isinstance(allowed, range):
        return f"{allowed.start}..{allowed.stop - 1}"
    return ", ".join(map(str, allowed))


def _text(dataset: pydicom.Dataset, keyword: str) -> str:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            value = dataset.get(keyword)
        except Exception:  # a reported-only string that pydicom cannot convert
            return ""
    return "" if value is None else str(value)


def _image_type(dataset: pydicom.Dataset) -> list[str]:
    """ImageType's values, upper case (``[]`` when absent or unreadable: it is only reported)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            values = _as_list(dataset.get("ImageType") or [])
        except Exception:  # a reported-only value that pydicom cannot convert
            return []
    return [str(value).strip().upper() for value in values]


def _grid(path: str, dataset, error) -> tuple[int, int]:
    rows = _integer(path, dataset, "Rows", error, allowed=range(1, 65536))
    columns = _integer(path, dataset, "Columns", error, allowed=range(1, 65536))
    return rows, columns


def _check_pixel_module(
    path: str, dataset: pydicom.Dataset, kind_error, *, frames: int = 1
) -> None:
    """Grayscale with the expected count of ``frames`` (else ``kind_error``), a valid pixel
    module, pixel data long enough for the header's size, a decoder for the transfer syntax,
    finite rescale values."""
    error = UnreadableFileError
    stored_frames = _integer(
        path, dataset, "NumberOfFrames", error, default=1, allowed=range(1, 2**31)
    )
    samples = _integer(path, dataset, "SamplesPerPixel", error, default=1, allowed=range(1, 5))
    photometric = _text(dataset, "PhotometricInterpretation").strip().upper()
    if stored_frames != frames or samples != 1 or photometric not in _GRAYSCALE:
        expected = "single-frame" if frames == 1 else f"{frames}-frame"
        raise kind_error(
            path,
            f"expected {expected} grayscale images (MONOCHROME1/2), got {stored_frames} "
            f"frame(s) with SamplesPerPixel={samples}, PhotometricInterpretation "
            f"{photometric or '(none)'}",
        )
    rows, columns = _grid(path, dataset, error)
    if 0x7FE00010 not in dataset:  # Float/DoubleFloatPixelData: 32/64-bit, no rescale
        return
    bits = _integer(path, dataset, "BitsAllocated", error, allowed=_BITS_ALLOCATED)
    stored = _integer(
        path, dataset, "BitsStored", error, default=bits, allowed=range(1, bits + 1)
    )
    high_bit = _integer(path, dataset, "HighBit", error, default=stored - 1)
    if high_bit != stored - 1:
        # pydicom reads the low BitsStored bits of each sample: an ACR-NEMA-era file whose
        # samples sit higher (HighBit 15 for 12 stored bits) would come back as other bits.
        raise UnreadableFileError(
            path,
            f"HighBit is {high_bit} with BitsStored {stored}: the samples are not aligned to "
            f"bit 0 (HighBit {stored - 1}) as pydicom reads them; it would return other "
            "bits than the file's values",
        )
    _integer(path, dataset, "PixelRepresentation", error, default=0, allowed=(0, 1))
    # Files without file meta (no preamble) are always in an uncompressed transfer syntax.
    syntax = _transfer_syntax(dataset)
    if syntax is not None and not syntax.is_transfer_syntax:
        raise UnreadableFileError(
            path, f"TransferSyntaxUID {syntax} is not a transfer syntax pydicom knows"
        )
    if syntax is None or not syntax.is_compressed:
        needed = math.ceil(frames * rows * columns * bits / 8)
        element = _stored_element(dataset, 0x7FE00010)
        held = (
            element.length
            if isinstance(element, RawDataElement)
            else len(element.value or b"")
        )
        if held != _UNDEFINED_LENGTH and held < needed:
            times_frames = f" x {frames} frames" if frames > 1 else ""
            raise UnreadableFileError(
                path,
                f"Rows {rows} x Columns {columns} x BitsAllocated {bits}{times_frames} needs "
                f"{needed} bytes of pixel data; the PixelData element holds {held}",
            )
    else:
        _check_decoder(path, syntax)
    _check_rescale(path, dataset)


def _transfer_syntax(dataset: pydicom.Dataset) -> UID | None:
    syntax = dataset.file_meta.get("TransferSyntaxUID")
    return UID(str(syntax)) if syntax else None


def _install_hint(syntax: UID) -> str:
    """What to pip install so that pydicom can decode ``syntax`` ("" when nothing helps)."""
    try:
        decoder = get_decoder(syntax)
    except NotImplementedError:
        return ""
    commands = []
    for line in decoder.missing_dependencies:  # "pylibjpeg - requires pylibjpeg>=2.0 and ..."
        requirements = line.partition("requires")[2].split(" and ")
        names = [re.split(r"[<>=!~ ]", r.strip())[0] for r in requirements if r.strip()]
        names = [_PIP_NAMES.get(n, n) for n in names if n and n != "numpy"]
        if names:
            commands.append("pip install " + " ".join(names))
    return f"; install a decoder for it: {' or '.join(commands)}" if commands else ""


def _check_decoder(path: str, syntax: UID) -> None:
    try:
        decoder = get_decoder(syntax)
    except NotImplementedError as exc:
        raise UnreadableFileError(
            path,
            f"pixel data are compressed as {syntax.name} ({syntax}), which pydicom has no "
            "decoder for; convert the file (e.g. dcmdjpeg, gdcmconv --raw) first",
        ) from exc
    if not decoder.is_available:
        raise UnreadableFileError(
            path,
            f"pixel data are compressed as {syntax.name} ({syntax}) and no decoder for it is "
            f"installed{_install_hint(syntax)}",
        )


def _check_rescale(path: str, dataset: pydicom.Dataset) -> tuple[float | None, float | None]:
    """``(slope, intercept)`` as the header gives them, ``None`` for an absent or empty one."""
    slope = _numbers(path, dataset, "RescaleSlope", 1, UnreadableFileError, required=False)
    intercept = _numbers(
        path, dataset, "RescaleIntercept", 1, UnreadableFileError, required=False
    )
    if slope is not None and slope[0] == 0:
        raise UnreadableFileError(
            path, "RescaleSlope is 0: every stored value would map to the intercept"
        )
    return (
        None if slope is None else float(slope[0]),
        None if intercept is None else float(intercept[0]),
    )


def _slice_geometry(path: str, dataset: pydicom.Dataset) -> _Slice:
    missing = [
        keyword
        for keyword in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing")
        if _raw_value(path, dataset, keyword, DicomSeriesError) is None
    ]
    if missing:
        raise DicomSeriesError(path, f"lacks {', '.join(missing)}; cannot place the slice")
    position = _numbers(path, dataset, "ImagePositionPatient", 3, DicomSeriesError)
    orientation = _numbers(path, dataset, "ImageOrientationPatient", 6, DicomSeriesError)
    _check_orientation(path, orientation)
    orientation = unit_cosines(orientation)
    spacing = _numbers(path, dataset, "PixelSpacing", 2, DicomSeriesError)
    if np.any(spacing <= 0):
        raise DicomSeriesError(path, f"PixelSpacing {list(spacing)} is not positive")
    return _Slice(position, orientation, spacing, _grid(path, dataset, UnreadableFileError))


def unit_cosines(orientation: np.ndarray) -> np.ndarray:
    """ImageOrientationPatient's row and column cosines scaled to unit length. They are unit
    vectors; ones written to two or three decimals (0.71\\0.71\\0) are up to 1 % long and
    would stretch the pixel spacing with them."""
    pair = np.asarray(orientation, dtype=np.float64).reshape(2, 3)
    return (pair / np.linalg.norm(pair, axis=1, keepdims=True)).ravel()


def _check_orientation(path: str, orientation: np.ndarray) -> None:
    row, column = orientation[:3], orientation[3:]
    lengths = np.linalg.norm(row), np.linalg.norm(column)
    tolerance = ORIENTATION_ORTHONORMAL_TOLERANCE
    if min(lengths) < tolerance:
        reason = "a zero cosine vector"
    elif np.linalg.norm(np.cross(row, column)) < tolerance * lengths[0] * lengths[1]:
        reason = "parallel row and column cosines (no slice normal)"
    elif max(abs(length - 1.0) for length in lengths) > tolerance:
        reason = f"cosines of length {lengths[0]:.4f} and {lengths[1]:.4f}, not 1"
    elif abs(float(row @ column)) > tolerance:
        reason = f"row and column cosines that are not perpendicular (dot {row @ column:.4f})"
    else:
        return
    raise DicomSeriesError(
        path,
        f"ImageOrientationPatient {list(orientation)} is degenerate: {reason}; expected two "
        "perpendicular unit vectors",
    )


def _order_slices(series, folder: str):
    """Sort by position along the slice normal and check that the slices form one grid."""
    geometry = []
    names = [_slice_name(path, dataset) for path, dataset in series]
    for name, (_, dataset) in zip(names, series, strict=True):
        with _reading(name, UnreadableFileError):
            _check_pixel_module(name, dataset, DicomSeriesError)
            geometry.append(_slice_geometry(name, dataset))
    _check_rescale_everywhere(series)
    reference = _check_one_plane_grid(names, series, geometry)
    orientation = reference.orientation
    normal = np.cross(orientation[:3], orientation[3:])
    positions = np.array([g.position for g in geometry])
    distances = positions @ normal
    order = np.argsort(distances, kind="stable")
    ordered = [series[i] for i in order]
    geometry = [geometry[i] for i in order]
    positions, distances = positions[order], distances[order]
    if len(ordered) == 1:
        return ordered, geometry, normal * _single_slice_thickness(*ordered[0])
    _check_one_echo_time(ordered, distances, folder)
    _check_gaps(ordered, np.diff(distances), folder)
    step = (positions[-1] - positions[0]) / (len(ordered) - 1)
    _check_on_one_line(ordered, positions, step, normal, reference.spacing, folder)
    _warn_if_tilted(ordered, step, normal, folder)
    return ordered, geometry, step


def _check_one_plane_grid(names, series, geometry) -> _Slice:
    """Refuse slices whose orientation, pixel spacing or size differ from the others', and
    return the geometry the slices share.

    The odd slices are those of the smaller group (on a tie, the group without the first
    file), so a localizer / scout stored in the series is named as the odd one even when
    its file sorts first, rather than every slice of the volume being blamed for differing
    from it; one whose ImageType says LOCALIZER is called one.
    """
    groups: list[list[int]] = []
    for index, candidate in enumerate(geometry):
        for members in groups:
            if _plane_difference(candidate, geometry[members[0]]) is None:
                members.append(index)
                break
        else:
            groups.append([index])
    majority = max(groups, key=len)  # the first of the largest: the first file's on a tie
    reference = geometry[majority[0]]
    odd = sorted(index for members in groups if members is not majority for index in members)
    if not odd:
        return reference
    first = odd[0]
    keyword, found, expected = _plane_difference(geometry[first], reference)
    others = f" (and {len(odd) - 1} more such file(s))" if len(odd) > 1 else ""
    message = (
        f"{keyword} {found} differs from {expected} of the other {len(majority)} "
        f"slice(s) of the series (first: {names[majority[0]]}){others}"
    )
    image_type = _image_type(series[first][1])
    if "LOCALIZER" in image_type:
        shown_type = "\\".join(image_type)
        message += (
            f"; its ImageType {shown_type} makes it a localizer (scout), not a "
            "slice of the volume: read the series without it (pass the list of the other "
            "files)"
        )
    raise DicomSeriesError(names[first], message)


def _plane_difference(found: _Slice, expected: _Slice) -> tuple[str, str, str] | None:
    """``(keyword, found, expected)`` of the first of orientation, pixel spacing and size in
    which two slices differ, shown as the header writes them; ``None`` when they agree."""
    if not np.allclose(found.orientation, expected.orientation, atol=_ORIENTATION_TOLERANCE):
        return "ImageOrientationPatient", _shown(found.orientation), _shown(
            expected.orientation
        )
    if not np.allclose(found.spacing, expected.spacing, atol=_SPACING_TOLERANCE_MM):
        return "PixelSpacing", _shown(found.spacing), _shown(expected.spacing)
    if found.grid != expected.grid:
        return (
            "Rows x Columns",
            f"{found.grid[0]}x{found.grid[1]} pixels",
            f"{expected.grid[0]}x{expected.grid[1]}",
        )
    return None


def _shown(values) -> str:
    return "[" + ", ".join(f"{float(value):.6g}" for value in values) + "]"


def _check_rescale_everywhere(series) -> None:
    """Refuse a series where some slices are rescaled and others carry no rescale at all.

    Slices may rescale differently (each value is applied to its own slice), but a slice
    without RescaleSlope, RescaleIntercept or a Modality LUT keeps its stored values: beside
    CT slices rescaled by intercept -1024 it would sit 1024 HU off, silently. It is the
    trace of an edited or damaged file. Slices whose rescale is the identity (slope 1,
    intercept 0) are consistent with slices that have none.
    """
    rescaled, bare = [], []
    for path, dataset in ((_slice_name(*pair), pair[1]) for pair in series):
        slope, intercept = _check_rescale(path, dataset)
        if _has_modality_lut(dataset):
            rescaled.append((path, "a Modality LUT"))
        elif slope is None and intercept is None:
            bare.append(path)
        elif (slope, intercept) not in ((1.0, 0.0), (1.0, None), (None, 0.0)):
            shown = f"slope {1.0 if slope is None else slope:g}, intercept "
            rescaled.append((path, shown + f"{0.0 if intercept is None else intercept:g}"))
    if rescaled and bare:
        path, how = rescaled[0]
        raise DicomSeriesError(
            bare[0],
            f"has no RescaleSlope, RescaleIntercept or Modality LUT ({len(bare)} such slices), "
            f"while {path} rescales by {how} ({len(rescaled)} such slices): the stored values "
            "of the slices without one would be taken as modality units; expected every slice "
            "of a series to carry its rescale",
        )


def _single_slice_thickness(path: str, dataset: pydicom.Dataset) -> float:
    for keyword in ("SpacingBetweenSlices", "SliceThickness"):
        value = _raw_value(path, dataset, keyword, DicomSeriesError)
        if value is None:
            continue
        try:
            thickness = float(str(_as_list(value)[0]))
        except ValueError:
            thickness = math.nan
        if math.isfinite(thickness) and thickness > 0:
            return thickness
        warnings.warn(
            HeaderValueWarning(f"{path}: {keyword} {value!r} is not a positive number; ignored"),
            stacklevel=5,
        )
    return 1.0


def _check_gaps(ordered, gaps: np.ndarray, folder: str) -> None:
    names = [_slice_name(path, dataset) for path, dataset in ordered]
    duplicates = np.flatnonzero(gaps < SAME_POSITION_TOLERANCE_MM)
    if duplicates.size:
        index = duplicates[0]
        first, second = ordered[index][1], ordered[index + 1][1]
        differing = [
            f"{keyword} {_label(first, keyword) or '(none)'} and "
            f"{_label(second, keyword) or '(none)'}"
            for keyword in _DISTINGUISHING
            if _label(first, keyword) != _label(second, keyword)
        ]
        why = (
            f"they differ in {', '.join(differing)}: several echoes, time points or "
            "acquisitions in one series, read each as its own list of files"
            if differing
            else "duplicated file (no EchoNumbers, TemporalPositionIdentifier, "
            "AcquisitionNumber or other header value tells them apart)"
        )
        raise DicomSeriesError(
            names[index],
            f"and {names[index + 1]} are at the same slice position "
            f"({gaps[index]:.4f} mm apart): {why}; expected one slice per position",
        )
    # The lower median stays the true step even when half the gaps are doubled by losses.
    typical = float(np.partition(gaps, (len(gaps) - 1) // 2)[(len(gaps) - 1) // 2])
    missing = np.flatnonzero(gaps > MISSING_SLICE_GAP_RATIO * typical)
    if missing.size:
        described = "; ".join(
            f"between {names[i]} and {names[i + 1]} (gap {gaps[i]:.3f} mm)" for i in missing[:5]
        )
        more = f" (and {missing.size - 5} more)" if missing.size > 5 else ""
        raise DicomSeriesError(
            folder,
            f"slice(s) missing {described}{more}; typical gap {typical:.3f} mm"
            + _spacing_change_note(names, gaps, missing),
        )
    # Gaps far below the typical one are no missing slice, but a series of two slice
    # spacings (a head CT's posterior fossa at 2.5 mm, its cerebrum at 5 mm): on one grid of
    # the mean step its slices would sit far from where the scanner put them.
    distances = np.concatenate([[0.0], np.cumsum(gaps)])
    mean_step = distances[-1] / len(gaps)
    misplaced = np.abs(distances - mean_step * np.arange(len(distances)))
    worst = int(np.argmax(misplaced))
    if misplaced[worst] > MAX_MISPLACEMENT_STEPS * mean_step:
        small = int(np.argmin(gaps))
        large = int(np.argmax(gaps))
        raise DicomSeriesError(
            folder,
            f"the slice spacing changes within the series: gaps of {gaps[small]:.3f} mm (e.g. "
            f"{names[small]} -> {names[small + 1]}) and of {gaps[large]:.3f} mm (e.g. "
            f"{names[large]} -> {names[large + 1]}); on one regular grid of the mean step "
            f"{mean_step:.3f} mm, {names[worst]} would sit {misplaced[worst]:.3f} mm from its "
            "position. A series of several slice spacings is not one volume: read each part "
            "as its own list of files",
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


def _check_on_one_line(ordered, positions, step, normal, spacing, folder: str) -> None:
    """Refuse slices whose in-plane origin leaves the straight line from the first slice to
    the last. The volume places slice k at the first position plus k steps: a series whose
    field of view moves part way (its slices' origins jump sideways) would otherwise be read
    as a gantry tilt, every slice between shifted by a share of the jump."""
    residual = positions - (positions[0] + np.arange(len(positions))[:, None] * step)
    sideways = np.linalg.norm(residual - np.outer(residual @ normal, normal), axis=1)
    worst = int(np.argmax(sideways))
    pixel = float(min(spacing))
    if sideways[worst] > MAX_MISPLACEMENT_PIXELS * pixel:
        names = [_slice_name(path, dataset) for path, dataset in ordered]
        raise DicomSeriesError(
            folder,
            f"the slices' ImagePositionPatient do not lie on one line: on the grid from "
            f"{names[0]} to {names[-1]}, {names[worst]} would sit {sideways[worst]:.3f} mm "
            f"({sideways[worst] / pixel:.1f} pixels) beside its position, in its plane (the "
            "field of view moves within the series); expected every slice's origin on the "
            "line through the first and the last: read each part as its own list of files",
        )


def _spacing_change_note(names, gaps: np.ndarray, missing: np.ndarray) -> str:
    """A clause for a run of at least three wide gaps in a row: more likely a second slice
    spacing in the series than as many slices missing one after another."""
    runs = np.split(missing, np.flatnonzero(np.diff(missing) > 1) + 1)
    run = max(runs, key=len)
    if len(run) < 3:
        return ""
    return (
        f"; or the slice spacing changes within the series ({len(run)} gaps in a row of "
        f"{gaps[run].min():.3f} to {gaps[run].max():.3f} mm, {names[run[0]]} to "
        f"{names[run[-1] + 1]}): a series of several slice spacings is not one volume, read "
        "each part as its own list of files"
    )


def _warn_if_tilted(ordered, step: np.ndarray, normal: np.ndarray, folder: str) -> None:
    path, first = ordered[0]
    _warn_if_sheared(folder, _slice_name(path, first), first, step, normal, len(ordered), 5)


def _gantry_tilt(step: np.ndarray, normal: np.ndarray, slices: int) -> float | None:
    """Degrees a stack of ``slices`` whose mean step is ``step`` leans off the unit slice
    ``normal`` (both in one patient frame, LPS or RAS), or ``None`` when that is no gantry
    tilt by :class:`GantryTiltWarning`'s thresholds."""
    along = float(step @ normal)
    sideways = float(np.linalg.norm(step - along * normal))
    angle = math.degrees(math.atan2(sideways, along))
    drift = sideways * (slices - 1)
    if angle <= GANTRY_TILT_TOLERANCE_DEGREES or drift <= UNEVEN_GAP_ABSOLUTE_TOLERANCE_MM:
        return None
    return angle


def _warn_if_sheared(where: str, name: str, header, step, normal, slices: int, stacklevel: int):
    """The GantryTiltWarning of a tilted stack (series, Enhanced frames or DICOM-SEG frames),
    naming ``where`` and ``header``'s SeriesInstanceUID and GantryDetectorTilt (a malformed
    one is reported for the file ``name``)."""
    angle = _gantry_tilt(step, normal, slices)
    if angle is None:
        return
    along = float(step @ normal)
    tilt = _reported_number(name, header, "GantryDetectorTilt", float)
    stated = "no GantryDetectorTilt" if tilt is None else f"GantryDetectorTilt {tilt:g}°"
    warnings.warn(
        GantryTiltWarning(
            f"{where}: the slices of series {_text(header, 'SeriesInstanceUID') or '(no UID)'} "
            f"step {angle:.2f}° off the slice normal ({stated}): a "
            f"sheared grid, slice centres {np.linalg.norm(step):.4g} mm apart but slice planes "
            f"{along:.4g} mm apart. kseg keeps the true sheared affine (Volume.spacing[0] is "
            "the step; Volume.plane_spacing and voxel_volume are the physical sizes); "
            "kseg.geometry.deskew resamples it onto an orthogonal grid"
        ),
        stacklevel=stacklevel,
    )


# --- decoding ---------------------------------------------------------------------------------


def _decode_pixels(path: str, dataset: pydicom.Dataset, grid: tuple[int, int]) -> np.ndarray:
    """All frames: ``grid``-shaped for one, ``(frames, *grid)`` for several."""
    syntax = _transfer_syntax(dataset)
    if syntax is not None and syntax.is_transfer_syntax and syntax.is_compressed:
        _check_encapsulated_size(path, dataset, syntax, grid)
    try:
        pixels = dataset.pixel_array
    except Exception as exc:  # decoders raise ValueError, RuntimeError, OSError, ...
        named = f" ({syntax.name})" if syntax is not None else ""
        unsupported = "support" in str(exc) or "missing dependencies" in str(exc)
        hint = _install_hint(syntax) if syntax is not None and unsupported else ""
        raise UnreadableFileError(
            path, f"pixel data{named} cannot be decoded ({exc}){hint}"
        ) from exc
    frames = _frame_count(path, dataset)
    _check_decoded_shape(path, pixels, grid if frames == 1 else (frames, *grid))
    return pixels


def _check_encapsulated_size(path: str, dataset, syntax: UID, grid: tuple[int, int]) -> None:
    """Refuse compressed pixel data that cannot hold the header's Rows x Columns *before* the
    decoder allocates them (pydicom allocates the full frame first: a header claiming
    65535 x 65535 would cost gigabytes and minutes before failing)."""
    try:
        frame = next(generate_frames(dataset.PixelData, number_of_frames=1))
    except Exception as exc:  # not a valid item/fragment structure
        raise UnreadableFileError(
            path, f"encapsulated ({syntax.name}) pixel data cannot be parsed ({exc})"
        ) from exc
    bits = _integer(path, dataset, "BitsAllocated", UnreadableFileError, allowed=_BITS_ALLOCATED)
    if syntax == RLELossless:
        # PackBits turns at most 2 bytes into 128 and never crosses a row: at most 64 times.
        needed = grid[0] * grid[1] * max(bits // 8, 1)
        if needed > 64 * len(frame) + 64:
            raise UnreadableFileError(
                path,
                f"Rows {grid[0]} x Columns {grid[1]} x BitsAllocated {bits} ({needed} bytes) "
                f"cannot come from {len(frame)} bytes of RLE data (64:1 at most)",
            )
        return
    size = _codestream_size(frame)
    if size is not None and size != grid and size[0] != 0:
        raise UnreadableFileError(
            path,
            f"the header says Rows {grid[0]} x Columns {grid[1]}; the {syntax.name} codestream "
            f"holds {size[0]} x {size[1]} pixels",
        )


def _codestream_size(frame: bytes) -> tuple[int, int] | None:
    """(height, width) from a JPEG / JPEG-LS SOF or a JPEG 2000 SIZ marker, else None."""
    siz = frame.find(b"\xff\x4f\xff\x51", 0, 512)  # JPEG 2000: SOC then SIZ
    if siz >= 0 and len(frame) >= siz + 24:
        width, height, x0, y0 = np.frombuffer(frame, ">u4", 4, siz + 8)
        return int(height - y0), int(width - x0)
    for marker, segment in _jpeg_segments(frame):
        if marker in _SOF_MARKERS and len(segment) >= 7:
            return int.from_bytes(segment[3:5], "big"), int.from_bytes(segment[5:7], "big")
    return None


def _jpeg_segments(frame: bytes):
    """``(marker, segment)`` of a JPEG / JPEG-LS codestream's header, up to and including the
    start of scan; ``segment`` starts with its 2-byte length."""
    if not frame.startswith(b"\xff\xd8"):
        return
    offset = 2
    while offset + 4 <= len(frame) and frame[offset] == 0xFF:
        marker = frame[offset + 1]
        if marker == 0xFF:  # fill byte
            offset += 1
            continue
        length = int.from_bytes(frame[offset + 2 : offset + 4], "big")
        if length < 2:
            return
        yield marker, frame[offset + 2 : offset + 2 + length]
        if marker == 0xDA:  # the entropy-coded data follow: no marker segments to walk
            return
        offset += 2 + length


def _lossy_compression(path: str, dataset: pydicom.Dataset) -> str | None:
    """Why the file's pixel data are lossy-compressed, or ``None`` when they are not."""
    if _text(dataset, "LossyImageCompression").strip() == "01":
        method = _text(dataset, "LossyImageCompressionMethod").strip()
        return "LossyImageCompression is 01" + (f" ({method})" if method else "")
    syntax = _transfer_syntax(dataset)
    if syntax in _ALWAYS_LOSSY:
        return f"its transfer syntax is {syntax.name}, which is always lossy"
    if syntax not in (JPEGLSNearLossless, *_JPEG_2000_EITHER):
        return None
    # The first frame's header is all the checks read; as one "frame", the fragments need
    # no offset table to be split by.
    frame = next(generate_frames(dataset.PixelData, number_of_frames=1))
    if syntax == JPEGLSNearLossless:
        near = _jpeg_ls_near(frame)
        if near == 0:
            return None
        shown = "a NEAR the codestream does not say" if near is None else f"NEAR {near}"
        return f"it is {syntax.name} with {shown}"
    if jpeg_2000_irreversible(frame):
        return f"it is {syntax.name} with the 9-7 irreversible wavelet"
    return None


def _jpeg_ls_near(frame: bytes) -> int | None:
    """The NEAR of a JPEG-LS scan (ISO 14495-1 C.2.3): 0 is lossless."""
    for marker, segment in _jpeg_segments(frame):
        if marker == 0xDA and len(segment) >= 3:
            components = segment[2]
            near_at = 3 + 2 * components
            return segment[near_at] if near_at < len(segment) else None
    return None


def _check_decoded_shape(path: str, pixels: np.ndarray, shape: tuple[int, ...]) -> None:
    if pixels.shape != shape:
        raise UnreadableFileError(
            path, f"decoded pixel array has shape {pixels.shape}, header says {shape}"
        )


def _read_vetted_file(path: str) -> pydicom.Dataset:
    """Full read of a file the header pass accepted, preamble or not."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # already parsed once; its oddities are known
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
    _lift_functional_groups(path, dataset)
    return dataset


def _to_modality_units(path: str, pixels: np.ndarray, dataset: pydicom.Dataset) -> np.ndarray:
    """The Modality LUT as pydicom applies it, else RescaleSlope/Intercept (values checked).

    A rescale value that is absent or empty takes its DICOM default (slope 1, intercept 0),
    as GDCM and dcm2niix read it: pydicom applies neither unless both are present, so a CT
    slice whose anonymiser kept RescaleIntercept -1024 but dropped RescaleSlope would come
    out 1024 HU too bright.
    """
    slope, intercept = _check_rescale(path, dataset)
    if not _has_modality_lut(dataset):
        if slope is None and intercept is None:
            return np.asarray(pixels)
        values = np.asarray(pixels).astype(np.float64) * (1.0 if slope is None else slope)
        values += 0.0 if intercept is None else intercept
        if not np.all(np.isfinite(values)):
            raise UnreadableFileError(path, "rescaled pixel values are not all finite")
        return values
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            _sign_first_mapped_value(dataset)
            values = apply_modality_lut(pixels, dataset)
        except Exception as exc:  # a malformed ModalityLUTSequence
            raise UnreadableFileError(
                path, f"the Modality LUT / rescale cannot be applied ({exc})"
            ) from exc
    values = np.asarray(values)
    if values.dtype.kind == "f" and not np.all(np.isfinite(values)):
        raise UnreadableFileError(path, "rescaled pixel values are not all finite")
    return values


def _sign_first_mapped_value(dataset: pydicom.Dataset) -> None:
    """Read a signed image's Modality LUT first-mapped value as signed, in memory.

    LUTDescriptor's second value is the first stored value the LUT maps, signed (VR SS)
    when PixelRepresentation is 1 (PS3.3 C.11.1.1.1). Explicit-VR writers that encode it
    as US store -2 as 65534, which pydicom cannot subtract from int16 pixels; its 16 bits
    are the two's complement of the signed value the standard asks for.
    """
    if str(dataset.get("PixelRepresentation", 0)).strip() != "1":
        return
    item = dataset.ModalityLUTSequence[0]
    element = item["LUTDescriptor"]
    entries, first, bits = element.value
    if element.VR == "US" and first >= 1 << 15:
        item.add_new(element.tag, "SS", [entries, first - (1 << 16), bits])


def _has_modality_lut(dataset: pydicom.Dataset) -> bool:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return bool(dataset.get("ModalityLUTSequence"))
        except Exception:  # a sequence pydicom cannot parse: let apply_modality_lut name it
            return True


def _decode_in_hounsfield_units(ordered) -> np.ndarray:
    """Decode each slice once; int16 while every value is an exact int16, else float32.

    The stack is allocated only after the first slice decoded to the header's size, so a
    header claiming a huge grid cannot make it allocate memory the files do not back.
    """
    volume, lossy = None, []
    int16 = np.iinfo(np.int16)
    # A multi-frame file's frames are decoded once, together, and kept until its last frame
    # is placed: a concatenation's files may hold frames from anywhere in the stack.
    decoded, frames_left = {}, collections.Counter(path for path, _ in ordered)
    for index, (path, header) in enumerate(ordered):
        name = _slice_name(path, header)
        with _reading(name, UnreadableFileError):
            grid = _grid(path, header, UnreadableFileError)
            if path not in decoded:
                dataset = _read_vetted_file(path)
                decoded[path] = dataset, _decode_pixels(path, dataset, grid)
                reason = _lossy_compression(path, dataset)
                if reason is not None:
                    lossy.append((path, reason))
            dataset, pixels = decoded[path]
            frames_left[path] -= 1
            if not frames_left[path]:
                del decoded[path]
            if isinstance(header, _Frame):
                # The frame's own lifted rescale: frames may rescale differently. (A
                # concatenation's file may hold one frame, which decodes without a frame axis.)
                frame = pixels.reshape(-1, *grid)[header.frame_number - 1]
                values = _to_modality_units(name, frame, header)
            else:
                values = _to_modality_units(path, pixels, dataset)
        if volume is None:
            volume = np.empty((len(ordered), *grid), dtype=np.int16)
        exact_int16 = (
            volume.dtype == np.int16
            and values.min() >= int16.min
            and values.max() <= int16.max
            and np.array_equal(values, np.round(values))
        )
        if volume.dtype == np.int16 and not exact_int16:
            volume = volume.astype(np.float32)
        volume[index] = values
    if lossy:
        path, reason = lossy[0]
        more = f" (and {len(lossy) - 1} more file(s) of the series)" if len(lossy) > 1 else ""
        warnings.warn(
            LossyImageWarning(
                f"{path}: lossy-compressed image{more}: {reason}; its values are approximate "
                "(not the scanner's Hounsfield units / intensities)"
            ),
            stacklevel=3,
        )
    return volume


def _affine(first: _Slice, step: np.ndarray) -> np.ndarray:
    """Index (k, j, i) -> RAS+ mm. Column j follows the column cosine (down the rows)."""
    row_spacing, column_spacing = first.spacing
    lps = np.eye(4)
    lps[:3, 0] = step
    lps[:3, 1] = first.orientation[3:] * row_spacing
    lps[:3, 2] = first.orientation[:3] * column_spacing
    lps[:3, 3] = first.position
    return _LPS_TO_RAS @ lps


# --- metadata ---------------------------------------------------------------------------------


def _reported_number(path: str, dataset, keyword: str, convert):
    """A value that only goes into metadata: malformed ones are left out with a warning."""
    try:
        value = _raw_value(path, dataset, keyword, UnreadableFileError)
    except UnreadableFileError:  # pydicom cannot convert it at all
        value = dataset.get_item(keyword).value if keyword in dataset else None
    if value is None:
        return None
    items = _as_list(value)
    try:
        number = convert(str(items[0]).strip()) if items else None
    except (TypeError, ValueError):
        number = None
    if number is None or (isinstance(number, float) and not math.isfinite(number)):
        warnings.warn(
            HeaderValueWarning(f"{path}: {keyword} {value!r} is not a number; left out"),
            stacklevel=4,
        )
        return None
    return number


def _series_metadata(ordered) -> dict:
    first_path, first = ordered[0]
    metadata = {
        "modality": _text(first, "Modality"),
        "series_instance_uid": _text(first, "SeriesInstanceUID"),
        "study_instance_uid": _text(first, "StudyInstanceUID"),
        "frame_of_reference_uid": _text(first, "FrameOfReferenceUID"),
        "series_description": _text(first, "SeriesDescription"),
        "patient_sex": _text(first, "PatientSex"),
        "sop_instance_uids": tuple(_text(ds, "SOPInstanceUID") for _, ds in ordered),
        "instance_numbers": tuple(
            _reported_number(path, ds, "InstanceNumber", int) for path, ds in ordered
        ),
    }
    if isinstance(first, _Frame):
        metadata["frame_numbers"] = tuple(frame.frame_number for _, frame in ordered)
        if _text(first, "ConcatenationUID").strip():
            metadata["concatenation_source_uid"] = _text(
                first, "SOPInstanceUIDOfConcatenationSource"
            ).strip()
            metadata["source_frame_numbers"] = tuple(
                int(frame.ConcatenationFrameOffsetNumber) + frame.frame_number
                for _, frame in ordered
            )
    for key, tag in (("window_center", "WindowCenter"), ("window_width", "WindowWidth")):
        value = _reported_number(first_path, first, tag, float)
        if value is not None:
            metadata[key] = value
    return metadata


def _stored_value_range(path: str, dataset: pydicom.Dataset) -> tuple[int, int]:
    bits = _integer(path, dataset, "BitsAllocated", UnreadableFileError, default=16)
    bits = _integer(
        path, dataset, "BitsStored", UnreadableFileError, default=bits, allowed=range(1, 65)
    )
    signed = _integer(path, dataset, "PixelRepresentation", UnreadableFileError, default=0)
    if signed == 1:
        return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    return 0, 2**bits - 1
