"""DICOM RT Structure Sets: read the contours, rasterise them onto a CT grid, name the organs.

An RTSTRUCT file holds, per region of interest (ROI), planar polygons in patient coordinates
(DICOM LPS millimetres). :func:`rasterize_rtstruct` turns each ROI into a ``uint8`` mask on
the grid of a :class:`~kseg.io.Volume` read by :func:`~kseg.io.read_dicom_series`:

* **Slice.** A contour goes on the slice whose SOPInstanceUID its ContourImageSequence
  references (with its ReferencedFrameNumber when the image is a multi-frame Enhanced CT /
  MR file), when the volume holds that slice; otherwise on the slice nearest to the
  contour's plane, provided the plane lies within half a slice gap of a slice of the volume.
  When contours of several planes land on one slice (a structure set drawn on a finer grid
  than the volume), only those of the plane nearest the slice are filled; the others are
  dropped and reported. So is a second copy of one contour on its plane (some planning
  systems export contours twice), which the even-odd rule below would cancel with the first.
* **In-plane placement.** Points are mapped from LPS millimetres to continuous pixel
  indices through the inverse of the volume's affine (LPS is first turned into RAS by
  negating x and y, and the affine's index order is ``(k, j, i)``: slice, row, column).
  Pixel ``(j, i)`` is the square of side one centred on the integer point ``(j, i)``:
  DICOM's ImagePositionPatient is the centre of the first pixel.
* **Filling.** A pixel belongs to the ROI when its centre lies inside the polygons by the
  even-odd rule, over all the ROI's contours on that slice together, so a contour drawn
  inside another cuts a hole (PS3.3 C.8.8.6.3 leaves inner contours to this convention).
  Contours of type CLOSEDPLANAR_XOR (PS3.3 C.8.8.6.1, C.8.8.6.3) state that rule outright
  and are filled the same way.
  The test is exact scan-line arithmetic (:func:`fill_polygons`), with no drawing bias:
  the number of pixels differs from the true area in pixels by at most the pixels the
  outline passes through, and on average by much less (for a square whose sides avoid
  pixel centres it is the exact count of centres inside).
* **Nothing vanishes silently.** Contours that find no slice, leave the slice plane, or run
  off the grid are counted per ROI and reported in one
  :class:`ContourOutsideVolumeWarning` naming the ROI and the file; contours whose
  referenced slice is missing from the volume or lies away from their plane are reported
  in a :class:`ContourReferenceWarning`.

LCTSC and other multi-institution archives spell organ names differently (``Lung_L``,
``LUNG_L``, ``L_Lung``, ``Lung_Left``; ``Esophagus`` / ``Oesophagus``; ``SpinalCord`` /
``Spinal_Cord`` / ``Cord``); :func:`canonical_roi_name` and :func:`match_roi_names` map them
to ``lung_left``, ``lung_right``, ``heart``, ``esophagus``, ``spinal_cord`` and report the
names they cannot place. ROIs whose RTROIInterpretedType says they are no organ (the body
outline ``EXTERNAL``, targets such as ``PTV``, couch ``SUPPORT``, markers: see
:data:`NOT_ORGAN_ROI_TYPES`) are left out of that report, since no spelling could make them one.

Reference:
    DICOM PS3.3 A.19 (RT Structure Set IOD), C.8.8.5 (Structure Set Module) and C.8.8.6
    (ROI Contour Module); Yang et al., "Autosegmentation for thoracic radiation treatment
    planning: A grand challenge at AAPM 2017", Medical Physics 45(10), 4568-4581 (2018)
    (the LCTSC structures and their names).
"""

from __future__ import annotations

import dataclasses
import os
import re
import warnings
from collections.abc import Iterable, Mapping, Sequence
from typing import NamedTuple

import numpy as np
import pydicom
from pydicom.errors import InvalidDicomError
from pydicom.uid import RTStructureSetStorage

from kseg.errors import AlignmentError, MaskError, UnreadableFileError
from kseg.io._pointer_files import pointer_note
from kseg.io.dicom import (
    ImageSlices,
    _cut_short,
    _read_every_element,
    _starts_like_data_set,
    referenced_frame_number,
)
from kseg.io.volume import Volume

__all__ = [
    "LCTSC_ROI_NAMES",
    "NOT_ORGAN_ROI_TYPES",
    "Contour",
    "ContourOutsideVolumeWarning",
    "ContourReferenceWarning",
    "RoiContours",
    "RoiNameWarning",
    "RtstructReferences",
    "canonical_roi_name",
    "fill_polygons",
    "match_roi_names",
    "one_roi_per_name",
    "rasterize_roi",
    "rasterize_rtstruct",
    "read_rtstruct",
    "read_rtstruct_references",
]

LCTSC_ROI_NAMES = ("lung_left", "lung_right", "heart", "esophagus", "spinal_cord")

# A contour is on slice k when its plane lies within this many slice gaps of the slice.
SLICE_TOLERANCE = 0.5
# Points of one contour may scatter this far (in slice gaps) off their common plane before
# the contour counts as not lying in a slice plane (rounded coordinates, tilted planes).
PLANARITY_TOLERANCE = 0.25
# A contour along the grid's outer pixel edges (half a pixel beyond the outer pixel
# centres) is on the grid: coordinates rounded to DICOM's 16-character decimal strings
# land up to ~1e-4 pixel beyond that edge.
EDGE_TOLERANCE = 1e-3

_LPS_TO_RAS = np.array([-1.0, -1.0, 1.0])
_CLOSED_PLANAR = "CLOSED_PLANAR"
# Closed polygons with an area; the even-odd fill is the XOR the second one names.
_CLOSED_TYPES = frozenset({_CLOSED_PLANAR, "CLOSEDPLANAR_XOR"})


class ContourOutsideVolumeWarning(UserWarning):
    """Some of an ROI's contours could not be placed, wholly or in part, on the volume.

    One warning per ROI and file, with counts: contours whose plane lies beyond the first
    or last slice (dropped), contours whose points do not lie in one slice plane (dropped),
    contours that run off the rows and columns of the grid (the part off the grid is cut),
    contours of another plane than the one nearest their slice (dropped), a second copy of
    a contour on its plane (dropped: filled together, the two would cancel out), and contours
    that are not closed planar polygons (POINT, OPEN_PLANAR, or fewer than three points: no
    area, dropped).
    """


class ContourReferenceWarning(UserWarning):
    """Contours reference CT slices the volume does not hold, or slices away from their plane.

    Contours referencing a SOPInstanceUID that the volume lacks (another copy of the series,
    or UIDs remapped by an anonymiser) are placed by position instead. Contours whose
    referenced slice lies more than half a slice gap from their own plane stay on the
    referenced slice, as the standard says, but the disagreement is reported.
    """


class RoiNameWarning(UserWarning):
    """ROI names that match none of the canonical organ names, or organs with no ROI."""


class Contour(NamedTuple):
    """One polygon of an ROI.

    Attributes:
        referenced_sop_instance_uid: the SOPInstanceUID of the image the contour was drawn
            on (first item of its ContourImageSequence), or ``None`` when absent.
        points: ``(N, 3)`` float64 vertices in DICOM patient coordinates (LPS, mm).
        geometric_type: ContourGeometricType (``"CLOSED_PLANAR"``, ``"CLOSEDPLANAR_XOR"``,
            ``"POINT"``, ...).
        referenced_frame_number: the 1-based frame of a multi-frame image the contour was
            drawn on (that item's ReferencedFrameNumber), or ``None`` when it names none.
    """

    referenced_sop_instance_uid: str | None
    points: np.ndarray
    geometric_type: str = _CLOSED_PLANAR
    referenced_frame_number: int | None = None


@dataclasses.dataclass(frozen=True)
class RoiContours:
    """One region of interest of a structure set.

    Attributes:
        number: ROINumber.
        name: ROIName exactly as written in the file.
        color: ROIDisplayColor as ``(r, g, b)``, or ``None`` when absent.
        contours: the ROI's polygons in file order.
        frame_of_reference_uid: the ReferencedFrameOfReferenceUID of the ROI ("" if absent).
        interpreted_type: the RTROIInterpretedType of its RTROIObservationsSequence item,
            upper case ("ORGAN", "EXTERNAL", "PTV", ...; "" if absent or empty).
    """

    number: int
    name: str
    color: tuple[int, int, int] | None
    contours: tuple[Contour, ...]
    frame_of_reference_uid: str = ""
    interpreted_type: str = ""

    @property
    def may_be_organ(self) -> bool:
        """False when RTROIInterpretedType says the ROI is no organ (see
        :data:`NOT_ORGAN_ROI_TYPES`); an untyped ROI may be one."""
        return self.interpreted_type not in NOT_ORGAN_ROI_TYPES


# PS3.3 C.8.8.8.1's defined terms for RTROIInterpretedType that never denote an organ: the
# body outline, treatment volumes, dose regions, devices and points. ORGAN, AVOIDANCE (how
# many planning systems type organs at risk), CAVITY and unknown terms may be organs.
NOT_ORGAN_ROI_TYPES = frozenset({
    "EXTERNAL", "PTV", "CTV", "GTV", "TREATED_VOLUME", "IRRAD_VOLUME", "DOSE_REGION",
    "CONTROL", "BOLUS", "BRACHY_CHANNEL", "BRACHY_ACCESSORY", "BRACHY_SRC_APP",
    "BRACHY_CHNL_SHLD", "SUPPORT", "FIXATION", "DOSE_MEASUREMENT", "ISOCENTER",
    "REGISTRATION", "CONTRAST_AGENT", "MARKER",
})  # fmt: skip


@dataclasses.dataclass(frozen=True)
class RtstructReferences:
    """What an RT Structure Set says it was drawn on, for pairing it with its CT series.

    Attributes:
        path: the RTSTRUCT file.
        patient_id: PatientID of the structure set.
        frame_of_reference_uids: every FrameOfReferenceUID of its
            ReferencedFrameOfReferenceSequence and of its ROIs.
        series_instance_uids: SeriesInstanceUIDs of its RTReferencedSeriesSequence.
        sop_instance_uids: SOPInstanceUIDs of every referenced image (series references and
            contour references).
    """

    path: str
    patient_id: str
    frame_of_reference_uids: frozenset[str]
    series_instance_uids: frozenset[str]
    sop_instance_uids: frozenset[str]


def read_rtstruct(path: os.PathLike | str) -> list[RoiContours]:
    """Read every ROI of an RT Structure Set with its contours.

    Args:
        path: the RTSTRUCT file.

    Returns:
        One :class:`RoiContours` per StructureSetROISequence item, in file order; an ROI
        without a ROIContourSequence item has no contours.

    Raises:
        UnreadableFileError: not DICOM, not an RT Structure Set, cut short (a value running
            past the end of the file, or no StructureSetROISequence / ROIContourSequence, both
            Type 1), an ROI without a valid
            ROINumber / ReferencedROINumber, contours referencing an ROI number that
            StructureSetROISequence does not define, two ROIContourSequence items with
            contours of one ROI, or a contour whose ContourData is not a list of
            finite numbers in threes (NaN, infinity, text, a length that is not a multiple of
            three or not three times NumberOfContourPoints). The message names the file, the
            ROI (name and number) and the contour. A contour with a NaN vertex is an error,
            not skipped: dropping it would silently cut a slice out of the organ's mask.
            Also any element pydicom cannot convert (a damaged file), even one not read.

    An ROIDisplayColor that is not three integers is read as ``None`` (it is display only).

    Example:
        >>> import tempfile
        >>> from kseg.phantoms.lctsc import write_lctsc
        >>> root = write_lctsc(tempfile.mkdtemp(), num_patients=1, num_test_patients=0,
        ...                    num_slices=4, size=32)  # LCTSC's layout, phantom anatomy
        >>> path = next(root.glob("LCTSC/*/*/*RTSTRUCT*/1-1.dcm"))
        >>> rois = read_rtstruct(path)
        >>> [(roi.name, len(roi.contours)) for roi in rois]
        [('Lung_l', 2), ('Lung_r', 2), ('Heart', 1), ('Esophagus', 2), ('SpinalCord', 2)]

        On the real LCTSC-Train-S1-001 structure set:

        >>> rois = read_rtstruct("LCTSC-Train-S1-001/.../1-1.dcm")  # doctest: +SKIP
        >>> [(roi.name, len(roi.contours)) for roi in rois]  # doctest: +SKIP
        [('Esophagus', 51), ('Heart', 38), ('Lung_L', 67), ('Lung_R', 69), ('SpinalCord', 98)]
    """
    path = os.fspath(path)
    dataset = _read_structure_set(path)
    try:
        return _read_rois(path, dataset)
    except UnreadableFileError:
        raise
    except Exception as exc:  # pydicom raises many types on damaged values
        raise UnreadableFileError(
            path, f"RT Structure Set cannot be read ({type(exc).__name__}: {exc})"
        ) from exc


def _read_rois(path: str, dataset: pydicom.Dataset) -> list[RoiContours]:
    # Both are Type 1 (PS3.3 C.8.8.5, C.8.8.6): a file without them was cut at an element
    # boundary, which pydicom reads as a shorter, valid-looking file.
    absent = [
        keyword
        for keyword in ("StructureSetROISequence", "ROIContourSequence")
        if keyword not in dataset
    ]
    if absent:
        raise UnreadableFileError(
            path,
            f"lacks {' and '.join(absent)}, which every RT Structure Set holds: the file is cut "
            "short or incomplete",
        )
    names: dict[int, str] = {}
    numbered = []
    for position, item in enumerate(dataset.get("StructureSetROISequence", [])):
        number = _roi_number(path, item, "ROINumber", f"StructureSetROISequence item {position}")
        name = str(item.get("ROIName", ""))
        names.setdefault(number, name)
        numbered.append((number, name, item))
    contours_by_number: dict[int, tuple[tuple[int, int, int] | None, tuple[Contour, ...]]] = {}
    for position, item in enumerate(dataset.get("ROIContourSequence", [])):
        number = _roi_number(
            path, item, "ReferencedROINumber", f"ROIContourSequence item {position}"
        )
        roi = f"ROI {names[number]!r} (number {number})" if number in names else (
            f"ROI number {number}"
        )
        contours = tuple(
            _read_contour(path, roi, index, contour)
            for index, contour in enumerate(item.get("ContourSequence", []))
        )
        if number not in names and contours:
            defined = ", ".join(str(n) for n in sorted(names)) or "none"
            raise UnreadableFileError(
                path,
                f"ROIContourSequence item {position} holds {len(contours)} contour(s) of ROI "
                f"number {number}, which StructureSetROISequence does not define (ROI numbers "
                f"defined: {defined}); the contours belong to no named ROI",
            )
        if number in contours_by_number and contours_by_number[number][1] and contours:
            raise UnreadableFileError(
                path,
                f"ROIContourSequence item {position} is the second item with contours of "
                f"{roi}; one of them would be dropped",
            )
        contours_by_number[number] = (_display_color(item), contours)
    interpreted_types = _interpreted_types(dataset)
    rois = []
    for number, name, item in numbered:
        color, contours = contours_by_number.get(number, (None, ()))
        rois.append(
            RoiContours(
                number=number,
                name=name,
                color=color,
                contours=contours,
                frame_of_reference_uid=str(item.get("ReferencedFrameOfReferenceUID", "") or ""),
                interpreted_type=interpreted_types.get(number, ""),
            )
        )
    return rois


def _interpreted_types(dataset: pydicom.Dataset) -> dict[int, str]:
    """RTROIInterpretedType by ROI number, from RTROIObservationsSequence (the first item
    that types an ROI wins). The module is optional in practice and the type only decides
    which unmatched names are worth a warning, so an item that cannot be read is skipped
    rather than refusing contours that are fine."""
    types: dict[int, str] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom's own "invalid IS" warning
        for item in dataset.get("RTROIObservationsSequence", []):
            try:
                number = int(str(item.get("ReferencedROINumber")).strip())
            except ValueError:
                continue
            interpreted = str(item.get("RTROIInterpretedType", "") or "").strip().upper()
            if interpreted:
                types.setdefault(number, interpreted)
    return types


def _roi_number(path: str, item: pydicom.Dataset, keyword: str, where: str) -> int:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom's own "invalid IS" warning
        value = item.get(keyword)
    try:
        return int(str(value).strip())
    except ValueError:
        raise UnreadableFileError(
            path, f"{where}: {keyword} is {value!r}; expected an integer"
        ) from None


def _display_color(item: pydicom.Dataset) -> tuple[int, int, int] | None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        color = item.get("ROIDisplayColor")
    try:
        values = tuple(int(str(c).strip()) for c in color) if color is not None else ()
    except (TypeError, ValueError):
        return None
    return values if len(values) == 3 else None


def read_rtstruct_references(path: os.PathLike | str) -> RtstructReferences:
    """Read which frame of reference, series and images an RT Structure Set refers to.

    Args:
        path: the RTSTRUCT file.

    Returns:
        :class:`RtstructReferences`; a dataset builder pairs the structure set with the CT
        series whose SeriesInstanceUID (else FrameOfReferenceUID) it names.

    Raises:
        UnreadableFileError: not DICOM or not an RT Structure Set.

    Example:
        >>> import tempfile
        >>> from kseg.phantoms.lctsc import write_lctsc
        >>> root = write_lctsc(tempfile.mkdtemp(), num_patients=1, num_test_patients=0,
        ...                    num_slices=4, size=32)  # LCTSC's layout, phantom anatomy
        >>> path = next(root.glob("LCTSC/*/*/*RTSTRUCT*/1-1.dcm"))
        >>> from kseg.io import read_dicom_series
        >>> ct = read_dicom_series(next(root.glob("LCTSC/*/*/*-CT *")))
        >>> refs = read_rtstruct_references(path)
        >>> sorted(refs.series_instance_uids) == [ct.metadata["series_instance_uid"]]
        True
    """
    path = os.fspath(path)
    dataset = _read_structure_set(path)
    frames, series, images = set(), set(), set()
    for frame in dataset.get("ReferencedFrameOfReferenceSequence", []):
        if frame.get("FrameOfReferenceUID"):
            frames.add(str(frame.FrameOfReferenceUID))
        for study in frame.get("RTReferencedStudySequence", []):
            for referenced in study.get("RTReferencedSeriesSequence", []):
                if referenced.get("SeriesInstanceUID"):
                    series.add(str(referenced.SeriesInstanceUID))
                for image in referenced.get("ContourImageSequence", []):
                    if image.get("ReferencedSOPInstanceUID"):
                        images.add(str(image.ReferencedSOPInstanceUID))
    for roi in dataset.get("StructureSetROISequence", []):
        if roi.get("ReferencedFrameOfReferenceUID"):
            frames.add(str(roi.ReferencedFrameOfReferenceUID))
    for item in dataset.get("ROIContourSequence", []):
        for contour in item.get("ContourSequence", []):
            for image in contour.get("ContourImageSequence", []):
                if image.get("ReferencedSOPInstanceUID"):
                    images.add(str(image.ReferencedSOPInstanceUID))
    return RtstructReferences(
        path=path,
        patient_id=str(dataset.get("PatientID", "")),
        frame_of_reference_uids=frozenset(frames),
        series_instance_uids=frozenset(series),
        sop_instance_uids=frozenset(images),
    )


def rasterize_rtstruct(
    rtstruct_path: os.PathLike | str,
    volume: Volume,
    *,
    roi_names: Iterable[str] | None = None,
) -> dict[str, np.ndarray]:
    """Rasterise the ROIs of an RT Structure Set onto the grid of a CT volume.

    See the module docstring for the slice matching, the pixel-centre convention and the
    even-odd rule.

    Args:
        rtstruct_path: the RTSTRUCT file.
        volume: the CT series it was drawn on, as :func:`~kseg.io.read_dicom_series`
            returns it (``metadata["sop_instance_uids"]`` gives the slices' UIDs; without
            it every contour is placed by position).
        roi_names: ROI names exactly as in the file (see :func:`match_roi_names` to find
            them from canonical names); all ROIs when ``None``.

    Returns:
        ``{roi name: uint8 mask}`` with masks of the volume's shape ``(z, y, x)`` holding
        0 and 1, in file order.

    Raises:
        TypeError: ``rtstruct_path`` is not a path or ``volume`` not a Volume.
        UnreadableFileError: see :func:`read_rtstruct`.
        MaskError: a requested ROI name is not in the file, or two ROIs with contours share
            a name (an ROI without contours beside one with them is left out).
        AlignmentError: an ROI is defined in another frame of reference than the volume.

    Warns:
        ContourOutsideVolumeWarning: contours off the volume (per ROI, naming the file).
        ContourReferenceWarning: contours referencing slices the volume lacks or that lie
            away from their plane.

    Example:
        >>> import tempfile
        >>> from kseg.phantoms.lctsc import write_lctsc
        >>> root = write_lctsc(tempfile.mkdtemp(), num_patients=1, num_test_patients=0,
        ...                    num_slices=4, size=32)  # LCTSC's layout, phantom anatomy
        >>> path = next(root.glob("LCTSC/*/*/*RTSTRUCT*/1-1.dcm"))
        >>> from kseg.io import read_dicom_series
        >>> ct = read_dicom_series(next(root.glob("LCTSC/*/*/*-CT *")))
        >>> masks = rasterize_rtstruct(path, ct, roi_names=["Lung_l"])
        >>> list(masks), masks["Lung_l"].shape == ct.shape
        (['Lung_l'], True)
    """
    try:
        path = os.fspath(rtstruct_path)
    except TypeError:
        raise TypeError(
            "rtstruct_path must be the path of the RT Structure Set file (read_rtstruct's "
            f"output is not accepted), got {type(rtstruct_path).__name__}"
        ) from None
    if not isinstance(volume, Volume):
        raise TypeError(
            f"volume must be the kseg.io.Volume the contours are drawn on, got "
            f"{type(volume).__name__}"
        )
    rois = read_rtstruct(path)
    if roi_names is not None:
        wanted = list(roi_names)
        present = {roi.name for roi in rois}
        missing = [name for name in wanted if name not in present]
        if missing:
            raise MaskError(
                path,
                f"has no ROI named {', '.join(map(repr, missing))}; ROIs present: "
                f"{', '.join(repr(roi.name) for roi in rois) or 'none'}",
            )
        rois = [roi for roi in rois if roi.name in set(wanted)]
    return {
        roi.name: rasterize_roi(roi, volume, source=path)
        for roi in one_roi_per_name(path, rois)
    }


def one_roi_per_name(path: str, rois: list[RoiContours]) -> list[RoiContours]:
    """One ROI per name, in the order the names first appear (``path``: the RTSTRUCT, named
    in the error). A name two ROIs share would key one mask by name and the other ROI's
    contours would vanish. ROIs without contours (planning systems keep empty duplicates)
    lose nothing by being left out; two with contours are an error."""
    by_name: dict[str, list[RoiContours]] = {}
    for roi in rois:
        by_name.setdefault(roi.name, []).append(roi)
    chosen = []
    for name, same in by_name.items():
        drawn = [roi for roi in same if roi.contours]
        if len(drawn) > 1:
            described = ", ".join(f"{roi.number} ({len(roi.contours)} contours)" for roi in drawn)
            raise MaskError(
                path,
                f"ROI name {name!r} is shared by ROI numbers {described}; one mask per name "
                "cannot hold both: rasterise each with read_rtstruct and rasterize_roi",
            )
        chosen.append(drawn[0] if drawn else same[0])
    return chosen


def rasterize_roi(
    roi: RoiContours, volume: Volume, *, source: os.PathLike | str | None = None
) -> np.ndarray:
    """Rasterise one ROI's contours onto the grid of a volume.

    Args:
        roi: an ROI from :func:`read_rtstruct`.
        volume: the CT volume the contours were drawn on.
        source: the RTSTRUCT file, named in warnings and errors.

    Returns:
        ``uint8`` mask of the volume's shape holding 0 and 1.

    Raises:
        AlignmentError: the ROI's frame of reference differs from the volume's.
        MaskError: a contour holds NaN or infinite points (possible only for contours built
            in code; :func:`read_rtstruct` refuses such files).

    Warns:
        ContourOutsideVolumeWarning, ContourReferenceWarning: see :func:`rasterize_rtstruct`.

    Example:
        >>> import tempfile
        >>> from kseg.phantoms.lctsc import write_lctsc
        >>> root = write_lctsc(tempfile.mkdtemp(), num_patients=1, num_test_patients=0,
        ...                    num_slices=4, size=32)  # LCTSC's layout, phantom anatomy
        >>> path = next(root.glob("LCTSC/*/*/*RTSTRUCT*/1-1.dcm"))
        >>> from kseg.io import read_dicom_series
        >>> ct = read_dicom_series(next(root.glob("LCTSC/*/*/*-CT *")))
        >>> roi = next(r for r in read_rtstruct(path) if r.name == "Heart")
        >>> int(rasterize_roi(roi, ct, source=path).sum())  # voxels inside the heart
        25
    """
    where = os.fspath(source) if source is not None else "RTSTRUCT"
    volume_frame = str(volume.metadata.get("frame_of_reference_uid", "") or "")
    if roi.frame_of_reference_uid and volume_frame and roi.frame_of_reference_uid != volume_frame:
        raise AlignmentError(
            where,
            f"ROI {roi.name!r} is defined in frame of reference {roi.frame_of_reference_uid}, "
            f"the volume in {volume_frame}: the contours' coordinates do not apply to its grid",
        )
    nz, ny, nx = volume.shape
    mask = np.zeros(volume.shape, dtype=np.uint8)
    slices = ImageSlices(volume)
    world_to_index = np.linalg.inv(volume.affine)
    problems = _ContourProblems()
    polygons_by_slice: dict[int, list[tuple[float, np.ndarray]]] = {}
    for contour in roi.contours:
        if contour.geometric_type not in _CLOSED_TYPES:
            problems.not_closed.append(contour.geometric_type)
            continue
        if len(contour.points) < 3:
            problems.not_closed.append(
                f"{contour.geometric_type} with {len(contour.points)} point(s)"
            )
            continue
        if not np.all(np.isfinite(contour.points)):
            raise MaskError(
                where, f"ROI {roi.name!r}: a contour has NaN or infinite points; cannot place it"
            )
        ras = contour.points * _LPS_TO_RAS
        index = ras @ world_to_index[:3, :3].T + world_to_index[:3, 3]
        plane = float(index[:, 0].mean())
        k = _slice_of_contour(contour, plane, index, nz, slices, problems)
        if k is None:
            continue
        rows, columns = index[:, 1], index[:, 2]
        edge = 0.5 + EDGE_TOLERANCE
        if rows.min() < -edge or rows.max() > ny - 1 + edge or columns.min() < -edge or (
            columns.max() > nx - 1 + edge
        ):
            problems.clipped.append(k)
        polygons_by_slice.setdefault(k, []).append((plane, index[:, 1:]))
    for k, placed in polygons_by_slice.items():
        mask[k] = fill_polygons(_nearest_plane_polygons(k, placed, problems), (ny, nx))
    problems.report(roi.name, where)
    return mask


def _nearest_plane_polygons(
    k: int, placed: list[tuple[float, np.ndarray]], problems: _ContourProblems
) -> list[np.ndarray]:
    """The polygons of slice ``k`` that lie in the contour plane nearest to it.

    A structure set drawn on a finer grid than the volume (1.25 mm contours on a 2.5 mm
    series) puts contours of two planes on one slice; filled together by the even-odd rule
    they would cut each other out (two copies of one outline leave nothing).
    """
    nearest = min((plane for plane, _ in placed), key=lambda plane: abs(plane - k))
    kept = [polygon for plane, polygon in placed if abs(plane - nearest) <= PLANARITY_TOLERANCE]
    if len(kept) < len(placed):
        problems.other_planes.append((k, len(placed) - len(kept)))
    # A second copy of one outline (planning systems export some contours twice) is no
    # hole: filled together by the even-odd rule, the two would cancel and empty the slice.
    outlines = {}
    for polygon in kept:
        outlines.setdefault(_outline_key(polygon), polygon)
    if len(outlines) < len(kept):
        problems.repeated.append((k, len(kept) - len(outlines)))
    return list(outlines.values())


def _outline_key(polygon: np.ndarray) -> tuple:
    """The same for two copies of one closed outline, whichever vertex they start at and
    whichever way they run (vertices compared to a thousandth of a pixel)."""
    vertices = [tuple(vertex) for vertex in np.round(np.asarray(polygon), 3).tolist()]
    if len(vertices) > 1 and vertices[0] == vertices[-1]:
        vertices = vertices[:-1]  # a closing vertex repeated
    turns = []
    for ring in (vertices, vertices[::-1]):
        start = ring.index(min(ring))
        turns.append(tuple(ring[start:] + ring[:start]))
    return min(turns)


def fill_polygons(polygons: Sequence[np.ndarray], shape: tuple[int, int]) -> np.ndarray:
    """Pixels whose centre lies inside a set of polygons by the even-odd rule.

    Pixel ``(j, i)`` has its centre at the continuous coordinate ``(row, column) = (j, i)``.
    Each polygon is closed implicitly (last vertex back to the first). A centre is inside
    when a ray from it towards increasing columns crosses the outlines of all polygons an odd
    number of times, so overlapping or nested polygons cut holes in each other. Centres
    exactly on an edge follow the usual half-open rule (inside on the left and top edges of
    a square, outside on its right and bottom edges), so two polygons sharing an edge never
    both claim a pixel.

    Args:
        polygons: arrays of shape ``(N, 2)`` holding ``(row, column)`` vertices, N >= 3 for
            an area; parts outside the grid are cut off.
        shape: ``(rows, columns)`` of the output.

    Returns:
        ``uint8`` array of ``shape`` holding 0 and 1.

    Example:
        >>> square = np.array([[0.5, 0.5], [0.5, 3.5], [3.5, 3.5], [3.5, 0.5]])
        >>> int(fill_polygons([square], (5, 5)).sum())  # centres 1, 2, 3 in each direction
        9
    """
    rows_out, columns_out = int(shape[0]), int(shape[1])
    counts = np.zeros((rows_out, columns_out + 1), dtype=np.int32)
    for polygon in polygons:
        vertices = np.asarray(polygon, dtype=np.float64)
        if vertices.ndim != 2 or vertices.shape[1] != 2 or len(vertices) < 3:
            continue
        start, end = vertices, np.roll(vertices, -1, axis=0)
        low = np.minimum(start[:, 0], end[:, 0])
        high = np.maximum(start[:, 0], end[:, 0])
        # Integer rows y with low <= y < high: the half-open rule counts a vertex once.
        first = np.maximum(np.ceil(low), 0).astype(np.int64)
        last = np.minimum(np.ceil(high), rows_out).astype(np.int64)  # exclusive
        spans = np.maximum(last - first, 0)
        if not spans.any():
            continue
        edge = np.repeat(np.arange(len(vertices)), spans)
        offsets = np.arange(spans.sum()) - np.repeat(np.cumsum(spans) - spans, spans)
        row = first[edge] + offsets
        fraction = (row - start[edge, 0]) / (end[edge, 0] - start[edge, 0])
        crossing = start[edge, 1] + fraction * (end[edge, 1] - start[edge, 1])
        # A centre i lies to the right of the crossing when crossing <= i.
        column = np.clip(np.ceil(crossing), 0, columns_out).astype(np.int64)
        np.add.at(counts, (row, column), 1)
    inside = np.cumsum(counts[:, :columns_out], axis=1) % 2
    return inside.astype(np.uint8)


def canonical_roi_name(name: str, aliases: Mapping[str, str] | None = None) -> str | None:
    """The canonical LCTSC organ of an ROI name, or ``None`` when it names none of them.

    The name is split into lower-case words at underscores, spaces, hyphens and case
    changes (``SpinalCord`` -> ``spinal cord``, ``LUNG_L`` -> ``lung l``), and must consist
    of exactly the words of one organ, so ``Lung_L`` matches but ``Lung_L-GTV`` or
    ``Lungs`` do not (they are different structures):

    ======================  =====================================================
    canonical               accepted words (any order for lungs, any case)
    ======================  =====================================================
    ``lung_left``           lung + l / lt / left / lft  (``Lung_L``, ``L_Lung``, ``LungLeft``)
    ``lung_right``          lung + r / rt / right / rgt
    ``heart``               heart
    ``esophagus``           esophagus, oesophagus, esoph, oesoph
    ``spinal_cord``         spinal cord, spinalcord, cord
    ======================  =====================================================

    Args:
        name: the ROIName.
        aliases: extra ``{ROIName: canonical name}`` pairs, compared case-insensitively
            after stripping spaces, tried first (for an archive's own spellings).

    Returns:
        One of :data:`LCTSC_ROI_NAMES` or ``None``.

    Raises:
        ValueError: an alias maps to a name outside :data:`LCTSC_ROI_NAMES`.

    Example:
        >>> [canonical_roi_name(n) for n in ("Lung_l", "L_Lung", "Oesophagus", "Cord", "GTV")]
        ['lung_left', 'lung_left', 'esophagus', 'spinal_cord', None]
    """
    if aliases:
        folded = {}
        for alias, target in aliases.items():
            if target not in LCTSC_ROI_NAMES:
                raise ValueError(
                    f"alias {alias!r} maps to {target!r}, which is not one of {LCTSC_ROI_NAMES}"
                )
            folded[alias.strip().casefold()] = target
        if name.strip().casefold() in folded:
            return folded[name.strip().casefold()]
    words = _words(name)
    if len(words) == 2 and "lung" in words:
        side = words[1] if words[0] == "lung" else words[0]
        if side in _LEFT:
            return "lung_left"
        if side in _RIGHT:
            return "lung_right"
        return None
    return _SINGLE_ORGANS.get(" ".join(words))


def match_roi_names(
    names: Iterable[str],
    *,
    wanted: Sequence[str] = LCTSC_ROI_NAMES,
    aliases: Mapping[str, str] | None = None,
    source: os.PathLike | str | None = None,
) -> dict[str, str]:
    """Find the ROI that holds each wanted canonical organ among a structure set's names.

    Args:
        names: the ROINames of one structure set.
        wanted: canonical names to look for (a subset of :data:`LCTSC_ROI_NAMES`).
        aliases: extra spellings, see :func:`canonical_roi_name`.
        source: the RTSTRUCT file, named in warnings and errors.

    Returns:
        ``{canonical name: ROIName}`` for every wanted organ found.

    Raises:
        MaskError: two ROIs map to the same wanted organ (which one is meant is unknowable;
            pass ``aliases`` to decide: a name an alias maps to an organ sets aside the names
            the built-in table maps to it).

    Warns:
        RoiNameWarning: names that match no canonical organ, names set aside for an alias,
            and wanted organs with no ROI.

    Example:
        >>> match_roi_names(["LUNG_L", "Lung_Right", "Heart", "Oesophagus", "Cord"])
        ... # doctest: +NORMALIZE_WHITESPACE
        {'lung_left': 'LUNG_L', 'lung_right': 'Lung_Right', 'heart': 'Heart',
         'esophagus': 'Oesophagus', 'spinal_cord': 'Cord'}
    """
    where = os.fspath(source) if source is not None else "structure set"
    unknown = [name for name in wanted if name not in LCTSC_ROI_NAMES]
    if unknown:
        raise ValueError(f"wanted names {unknown} are not among {LCTSC_ROI_NAMES}")
    found: dict[str, list[str]] = {}
    by_alias: dict[str, list[str]] = {}
    unmatched = []
    aliased = {alias.strip().casefold() for alias in aliases or {}}
    for name in names:
        canonical = canonical_roi_name(name, aliases)
        if canonical is None:
            unmatched.append(name)
        elif canonical in wanted:
            found.setdefault(canonical, []).append(name)
            if name.strip().casefold() in aliased:
                by_alias.setdefault(canonical, []).append(name)
    # An alias chooses: names the built-in table matches to its organ are set aside.
    set_aside = [
        f"{name!r} ({organ})"
        for organ, chosen in by_alias.items()
        for name in found[organ]
        if name not in chosen
    ]
    found.update(by_alias)
    duplicated = {organ: rois for organ, rois in found.items() if len(rois) > 1}
    if duplicated:
        described = "; ".join(f"{organ}: {', '.join(map(repr, rois))}" for organ, rois in
                              duplicated.items())
        raise MaskError(
            where,
            f"several ROIs name the same organ ({described}); pass aliases to choose one",
        )
    absent = [organ for organ in wanted if organ not in found]
    if unmatched or absent or set_aside:
        parts = []
        if unmatched:
            parts.append(f"ROI names matching no organ: {', '.join(map(repr, unmatched))}")
        if set_aside:
            parts.append(f"ROI names set aside for an alias: {', '.join(set_aside)}")
        if absent:
            parts.append(f"organs with no ROI: {', '.join(absent)}")
        warnings.warn(RoiNameWarning(f"{where}: {'; '.join(parts)}"), stacklevel=2)
    return {organ: found[organ][0] for organ in wanted if organ in found}


_LEFT = frozenset({"l", "lt", "left", "lft"})
_RIGHT = frozenset({"r", "rt", "right", "rgt"})
_SINGLE_ORGANS = {
    "heart": "heart",
    "esophagus": "esophagus",
    "oesophagus": "esophagus",
    "esoph": "esophagus",
    "oesoph": "esophagus",
    "spinal cord": "spinal_cord",
    "spinalcord": "spinal_cord",
    "cord": "spinal_cord",
}


def _words(name: str) -> list[str]:
    spaced = re.sub(r"([a-z0-9])([A-Z])", r"\1 \2", name.strip())
    spaced = re.sub(r"([A-Z]+)([A-Z][a-z])", r"\1 \2", spaced)
    return [word for word in re.split(r"[^0-9A-Za-z]+", spaced.lower()) if word]


def _read_structure_set(path: str) -> pydicom.Dataset:
    """The whole file (preamble-less files too, when they start like a DICOM data set);
    one cut short is an error, since pydicom would silently return fewer contours."""
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as handle:
            head = handle.read(136)
    except OSError as exc:
        raise UnreadableFileError(path, f"cannot be read ({exc})") from exc
    has_preamble = head[128:132] == b"DICM"
    if not has_preamble and not _starts_like_data_set(head):
        raise UnreadableFileError(
            path, "not a DICOM file (no DICM preamble, and it does not start like a data set)"
            + pointer_note(path),
        )
    try:
        dataset = pydicom.dcmread(path, force=not has_preamble)
    except InvalidDicomError as exc:
        raise UnreadableFileError(path, f"not a DICOM file ({exc}){pointer_note(path)}") from exc
    except Exception as exc:  # pydicom raises many types on damaged files (OSError if cut)
        raise UnreadableFileError(path, f"DICOM file cannot be read ({exc})") from exc
    cut = _cut_short(dataset, size)
    if cut:
        raise UnreadableFileError(path, cut)
    _read_every_element(path, dataset)
    sop_class = str(dataset.get("SOPClassUID", ""))
    modality = str(dataset.get("Modality", ""))
    if sop_class != RTStructureSetStorage and modality != "RTSTRUCT":
        raise UnreadableFileError(
            path,
            f"expected an RT Structure Set (Modality RTSTRUCT, SOP Class {RTStructureSetStorage})"
            f", got Modality {modality or '(none)'}, SOP Class {sop_class or '(none)'}",
        )
    return dataset


def _read_contour(path: str, roi: str, index: int, item: pydicom.Dataset) -> Contour:
    where = f"{roi}, contour {index}"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom's own "invalid DS" warnings
        raw = item.get("ContourData")
        declared = item.get("NumberOfContourPoints")
    if isinstance(raw, bytes):
        # a DS over 64 KiB, which an explicit-VR writer (pydicom) leaves as UN: its value
        # is still the DS text (PS3.5 6.2.2)
        raw = raw.decode("ascii", "replace").strip("\x00 ").split("\\")
    values = [] if raw is None or raw == "" else (
        list(raw) if isinstance(raw, (pydicom.multival.MultiValue, list, tuple)) else [raw]
    )
    try:
        data = np.array([float(str(v).strip()) for v in values], dtype=np.float64)
    except ValueError:
        bad = next(v for v in values if not _is_number(v))
        raise UnreadableFileError(
            path, f"{where}: ContourData holds {str(bad)!r}, which is not a number"
        ) from None
    try:
        declared = None if declared in (None, "") else int(str(declared).strip())
    except ValueError:
        raise UnreadableFileError(
            path, f"{where}: NumberOfContourPoints is {declared!r}; expected an integer"
        ) from None
    if data.size % 3 or (declared is not None and declared * 3 != data.size):
        raise UnreadableFileError(
            path,
            f"{where}: ContourData holds {data.size} values, expected three per point "
            f"({declared} points declared)",
        )
    bad = ~np.isfinite(data.reshape(-1, 3)).all(axis=1)
    if bad.any():
        raise UnreadableFileError(
            path,
            f"{where}: {int(bad.sum())} of {len(bad)} points are NaN or infinite (first at "
            f"point {int(np.argmax(bad))}); the contour cannot be placed, and dropping it "
            "would cut it out of the mask silently",
        )
    images = item.get("ContourImageSequence", [])
    uid = str(images[0].get("ReferencedSOPInstanceUID", "") or "") if len(images) else ""
    return Contour(
        referenced_sop_instance_uid=uid or None,
        points=data.reshape(-1, 3),
        geometric_type=str(item.get("ContourGeometricType", _CLOSED_PLANAR)),
        referenced_frame_number=(
            referenced_frame_number(images[0]) if len(images) else None
        ),
    )


def _is_number(value) -> bool:
    try:
        float(str(value).strip())
    except ValueError:
        return False
    return True


@dataclasses.dataclass
class _ContourProblems:
    beyond_slices: list[float] = dataclasses.field(default_factory=list)
    not_planar: list[float] = dataclasses.field(default_factory=list)
    clipped: list[int] = dataclasses.field(default_factory=list)
    not_closed: list[str] = dataclasses.field(default_factory=list)
    other_planes: list[tuple[int, int]] = dataclasses.field(default_factory=list)
    repeated: list[tuple[int, int]] = dataclasses.field(default_factory=list)
    unknown_reference: int = 0
    off_plane_reference: list[tuple[int, float]] = dataclasses.field(default_factory=list)

    def report(self, roi_name: str, where: str) -> None:
        outside = []
        if self.beyond_slices:
            planes = _listed(f"{p:.2f}" for p in self.beyond_slices)
            outside.append(
                f"{len(self.beyond_slices)} contour(s) beyond the first or last slice "
                f"(slice index {planes}), dropped"
            )
        if self.not_planar:
            outside.append(
                f"{len(self.not_planar)} contour(s) not in a slice plane (points spread over "
                f"up to {max(self.not_planar):.2f} slice gaps), dropped"
            )
        if self.clipped:
            outside.append(
                f"{len(self.clipped)} contour(s) running off the rows/columns of the grid on "
                f"slice(s) {_listed(sorted(set(self.clipped)))}, cut at the border"
            )
        if self.not_closed:
            kinds = ", ".join(sorted(set(self.not_closed)))
            outside.append(f"{len(self.not_closed)} contour(s) of type {kinds} (no area), dropped")
        if self.other_planes:
            outside.append(
                f"{_on_slices(self.other_planes)} from a plane other than the one nearest the "
                "slice (the structure set's planes lie closer together than the volume's "
                "slices), dropped: filled together, contours of two planes cut holes in each "
                "other"
            )
        if self.repeated:
            outside.append(
                f"{_on_slices(self.repeated)} repeating another contour of the ROI on its "
                "plane, dropped: filled together by the even-odd rule, two copies of one "
                "outline would cancel each other out"
            )
        if outside:
            warnings.warn(
                ContourOutsideVolumeWarning(f"{where}: ROI {roi_name!r}: " + "; ".join(outside)),
                stacklevel=4,
            )
        references = []
        if self.unknown_reference:
            references.append(
                f"{self.unknown_reference} contour(s) reference a SOPInstanceUID (or a frame of "
                "it) the volume does not hold; placed by position"
            )
        if self.off_plane_reference:
            k, offset = self.off_plane_reference[0]
            references.append(
                f"{len(self.off_plane_reference)} contour(s) lie more than half a slice gap from "
                f"the slice they reference (e.g. slice {k}, {offset:.2f} gaps away); kept on the "
                "referenced slice"
            )
        if references:
            warnings.warn(
                ContourReferenceWarning(f"{where}: ROI {roi_name!r}: " + "; ".join(references)),
                stacklevel=4,
            )


def _slice_of_contour(
    contour: Contour,
    plane: float,
    index: np.ndarray,
    nz: int,
    slices: ImageSlices,
    problems: _ContourProblems,
) -> int | None:
    spread = float(np.ptp(index[:, 0]))
    if spread > 2 * PLANARITY_TOLERANCE:
        problems.not_planar.append(spread)
        return None
    uid = contour.referenced_sop_instance_uid
    k = slices.slice_of(uid, contour.referenced_frame_number)
    if k is not None:
        if abs(plane - k) > SLICE_TOLERANCE:
            problems.off_plane_reference.append((k, plane - k))
        return k
    if uid is not None and slices:
        problems.unknown_reference += 1
    # Nearest slice; a plane more than half a gap beyond the first or last slice has none.
    k = int(np.floor(plane + SLICE_TOLERANCE))
    if not 0 <= k < nz:
        problems.beyond_slices.append(plane)
        return None
    return k


def _listed(values, limit: int = 5) -> str:
    """The first ``limit`` values, comma-separated, then ", ..." when there are more."""
    values = [str(value) for value in values]
    return ", ".join(values[:limit]) + (", ..." if len(values) > limit else "")


def _on_slices(counts) -> str:
    """"N contour(s) on slice(s) k, ..." of ``[(slice, contours), ...]``."""
    return (f"{sum(n for _, n in counts)} contour(s) on slice(s) "
            f"{_listed(k for k, _ in counts)}")  # fmt: skip
