"""RT Structure Sets from label maps: a prediction on a DICOM series' grid, as contours.

:func:`write_rtstruct` is the inverse of :func:`kseg.io.rasterize_rtstruct`. Each label of
a ``(z, y, x)`` label map becomes one ROI; on each slice its pixels are outlined by
:func:`label_outlines`, marching squares on the pixel-centre grid (pixel ``(j, i)`` is the
point ``(row, column) = (j, i)``, the centre DICOM's ImagePositionPatient names):

* **Where the outline runs.** Between a pixel inside and a pixel outside, the outline passes
  through the midpoint of their centres, so along a straight run of pixels it follows the
  pixel border exactly and at a convex corner it cuts 1/8 of a pixel (a lone pixel is a
  diamond of area 1/2). The enclosed area of a convex region is its pixel count less 1/2.
* **Exact round trip.** No pixel centre lies on an outline, so rasterising the outlines by
  the even-odd rule (what :func:`kseg.io.rtstruct.fill_polygons` does) gives back exactly
  the pixels they were traced from.
* **Holes and islands.** Every boundary is a separate closed polygon: an island is an
  outline of its own, a hole an outline inside its region's outline (the even-odd rule cuts
  it out, PS3.3 C.8.8.6.3). Pixels touching only at a corner count as connected (the
  outline passes between the two background pixels of the 2x2 square).
* **Few points.** Vertices in the middle of a straight run are dropped; the polygons are
  the same.

Reference:
    Lorensen W. E., Cline H. E., "Marching cubes: a high resolution 3D surface construction
    algorithm", SIGGRAPH 1987 (the 2D case is marching squares); DICOM PS3.3 A.19 (RT
    Structure Set IOD), C.8.8.6 (ROI Contour Module).
"""

from __future__ import annotations

import copy
import datetime
import os
import pathlib
import warnings
from collections.abc import Mapping, Sequence

import numpy as np
import pydicom
from pydicom.uid import CTImageStorage, generate_uid
from scipy import ndimage

from kseg.io.dicom_writer import SeriesReference, rtstruct_dataset, write_dataset
from kseg.io.rtstruct import Contour, RoiContours
from kseg.io.volume import Volume

__all__ = ["BlankSeriesUidWarning", "label_outlines", "write_rtstruct"]

IMPLEMENTATION_VERSION_NAME = "KSEG_RTSTRUCT"

_RAS_TO_LPS = np.array([-1.0, -1.0, 1.0])

# Distinct display colours, reused in turn when there are more ROIs.
_PALETTE = (
    (230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48),
    (145, 30, 180), (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212),
    (0, 128, 128), (220, 190, 255), (170, 110, 40), (255, 250, 200), (128, 0, 0),
    (170, 255, 195), (128, 128, 0), (255, 215, 180), (0, 0, 128), (128, 128, 128),
)

# Attributes of the Patient and General Study modules copied from the series' first file
# (Type 2: written empty when the series lacks them).
_PATIENT_AND_STUDY = (
    "PatientName", "PatientBirthDate", "StudyDate", "StudyTime", "StudyID",
    "AccessionNumber", "ReferringPhysicianName",
)
# Copied when the series has them. Patient Identity Removed YES needs De-identification
# Method or its code sequence beside it (PS3.3 C.7.1.1, Type 1C).
_OPTIONAL_STUDY = (
    "StudyDescription", "PatientAge", "PatientIdentityRemoved", "DeidentificationMethod",
    "DeidentificationMethodCodeSequence",
)  # fmt: skip
# ROIGenerationAlgorithm's enumerated values (PS3.3 C.8.8.5).
_GENERATION_ALGORITHMS = ("AUTOMATIC", "SEMIAUTOMATIC", "MANUAL")
# Maximum lengths of the LO and SH value representations (PS3.5 Table 6.2-1).
_LO_LENGTH, _SH_LENGTH = 64, 16


class BlankSeriesUidWarning(UserWarning):
    """The reference series has no StudyInstanceUID or SeriesInstanceUID (an anonymiser
    blanked them): the structure set or SEG references stand-ins derived from the images'
    SOPInstanceUIDs, the same for every object written on the series,
    and viewers can tie it to the images by their FrameOfReferenceUID and SOPInstanceUIDs
    only."""


_STAND_IN_NOTE = (
    "references stand-ins derived from the images' SOPInstanceUIDs, the same for every "
    "RTSTRUCT and SEG kseg writes on this series (so a PACS files them in one study), but "
    "not the images' own: give the series its StudyInstanceUID / SeriesInstanceUID to file "
    "them with the images; tied to the images by FrameOfReferenceUID and SOPInstanceUIDs only"
)


def _stand_in_uid(keyword: str, sop_instance_uids: Sequence[str]) -> str:
    """The UID kseg writes for a series' blank ``keyword`` (StudyInstanceUID or
    SeriesInstanceUID): derived from the keyword and the images' SOPInstanceUIDs, so the
    DICOM-SEG and the RT Structure Set of one series land in one study and reference one
    series, where two random UIDs filed them in two new studies."""
    return generate_uid(entropy_srcs=[keyword, *sorted(set(sop_instance_uids))])


def label_outlines(mask: np.ndarray) -> list[np.ndarray]:
    """The closed outlines of a 2D mask, by marching squares on the pixel-centre grid.

    Args:
        mask: 2D array; nonzero pixels are inside.

    Returns:
        One ``(N, 2)`` float64 array of ``(row, column)`` vertices per outline (N >= 4, the
        polygon closes from the last vertex back to the first), outer outlines and hole
        outlines alike; vertices lie at half-pixel positions. Outlines run with the inside on
        the same side (holes therefore the other way round). Empty for an empty mask.

    Example:
        >>> square = np.zeros((5, 5), bool)
        >>> square[1:4, 1:4] = True
        >>> (outline,) = label_outlines(square)  # an octagon: corners cut by 1/8 pixel
        >>> len(outline), float(_area(outline))
        (8, 8.5)
    """
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"mask must be 2D, got shape {mask.shape}")
    padded = np.pad(mask != 0, 1)
    rows, columns = padded.shape  # H + 2, W + 2
    # Corners of cell (r, s), clockwise on screen: a top left, b top right, c bottom right,
    # d bottom left (padded indices).
    a, b = padded[:-1, :-1], padded[:-1, 1:]
    c, d = padded[1:, 1:], padded[1:, :-1]
    r, s = np.indices(a.shape)
    # Crossing points: h(r, s) midway between padded (r, s) and (r, s + 1); v(r, s) midway
    # between (r, s) and (r + 1, s).
    n_horizontal = rows * (columns - 1)
    top = r * (columns - 1) + s
    bottom = (r + 1) * (columns - 1) + s
    left = n_horizontal + r * columns + s
    right = left + 1
    # Walking the cell border a -> b -> c -> d -> a, an edge is an exit where it leaves the
    # inside and an entry where it enters it; an outline runs from entry to exit, so the
    # next cell continues from where this one stopped.
    edges = (
        (top, a & ~b, ~a & b),
        (right, b & ~c, ~b & c),
        (bottom, c & ~d, ~c & d),
        (left, d & ~a, ~d & a),
    )
    saddle = (a & c & ~b & ~d) | (b & d & ~a & ~c)
    following = np.full(n_horizontal + (rows - 1) * columns, -1, dtype=np.int64)
    exit_point = np.select([e[1] for e in edges], [e[0] for e in edges], default=-1)
    for point, _, entry in edges:
        chosen = entry & ~saddle
        following[point[chosen]] = exit_point[chosen]
    # Saddles join the two inside corners: cut off the two outside corners.
    ac = saddle & a
    following[right[ac]], following[left[ac]] = top[ac], bottom[ac]
    bd = saddle & b
    following[top[bd]], following[bottom[bd]] = left[bd], right[bd]

    point_row = np.concatenate([
        np.repeat(np.arange(rows), columns - 1).astype(np.float64),
        np.repeat(np.arange(rows - 1), columns) + 0.5,
    ]) - 1.0
    point_column = np.concatenate([
        np.tile(np.arange(columns - 1), rows) + 0.5,
        np.tile(np.arange(columns), rows - 1).astype(np.float64),
    ]) - 1.0
    outlines = []
    unvisited = following >= 0
    for start in np.flatnonzero(unvisited):
        if not unvisited[start]:
            continue
        loop = [start]
        unvisited[start] = False
        point = following[start]
        while point != start:
            loop.append(point)
            unvisited[point] = False
            point = following[point]
        vertices = np.column_stack([point_row[loop], point_column[loop]])
        outlines.append(_without_straight_runs(vertices))
    return outlines


def _without_straight_runs(vertices: np.ndarray) -> np.ndarray:
    """Drop vertices lying on the straight line through their neighbours (exact: the
    coordinates are multiples of 1/2)."""
    before = vertices - np.roll(vertices, 1, axis=0)
    after = np.roll(vertices, -1, axis=0) - vertices
    turn = before[:, 0] * after[:, 1] - before[:, 1] * after[:, 0]
    return vertices[turn != 0]


def _area(vertices: np.ndarray) -> float:
    """Unsigned area of a polygon (shoelace formula)."""
    y, x = vertices[:, 0], vertices[:, 1]
    return abs(float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1)))) / 2


def write_rtstruct(
    labels: np.ndarray | Volume,
    reference_series: Volume,
    path: os.PathLike | str,
    *,
    roi_names: Mapping[int, str] | Sequence[str],
    label: str = "KSEG",
    series_description: str = "kseg segmentation",
    colors: Mapping[int, tuple[int, int, int]] | None = None,
    roi_generation_algorithm: str = "AUTOMATIC",
) -> pathlib.Path:
    """Write a label map on a DICOM series' grid as an RT Structure Set drawn on that series.

    Each label becomes an ROI whose contours are the :func:`label_outlines` of its pixels on
    each slice, converted to patient coordinates (LPS mm, to 1e-4 mm) through the series'
    affine; each contour's ContourImageSequence references its slice's SOPInstanceUID (and
    ReferencedFrameNumber when the slice is a frame of a multi-frame Enhanced CT / MR file),
    and the Structure Set references every slice of the series and its FrameOfReferenceUID.
    Patient and study attributes are copied from the series' first file, so archives file
    the structure set with its images. A slice whose data set has a blank SOPInstanceUID
    (some anonymisers) is referenced by its file meta's MediaStorageSOPInstanceUID.
    :func:`kseg.io.rasterize_rtstruct` on the written file returns the label map's masks
    exactly. The file is written atomically (temporary name beside ``path``, then renamed).

    Args:
        labels: ``(z, y, x)`` integer label map (0 is background) on the grid of
            ``reference_series``, or a Volume on that grid.
        reference_series: the series, as :func:`kseg.io.read_dicom_series` returns it (its
            ``source_files`` and ``metadata`` UIDs are used).
        path: the RTSTRUCT file to write.
        roi_names: ``{label value: ROI name}``, or names for labels 1, 2, ... in order.
            Every nonzero value of ``labels`` needs a name (at most 64 characters, no
            backslash); a named label with no pixels becomes an ROI without contours.
        label: StructureSetLabel (up to 16 characters).
        series_description: SeriesDescription of the structure set (up to 64 characters).
        colors: ROIDisplayColor by label value, three integers 0..255 (default: a fixed
            palette).
        roi_generation_algorithm: ROIGenerationAlgorithm (``"AUTOMATIC"`` for a model's
            prediction, ``"SEMIAUTOMATIC"``, ``"MANUAL"``).

    Returns:
        ``path`` as a path.

    Raises:
        ValueError: ``labels`` is not on the series' grid, is not integral, holds negative
            values or values without a name; ``roi_names`` is empty, repeats a name or names
            label 0; a name (or ``label``, ``series_description``) longer than DICOM allows
            (64 characters, ``label`` 16) or holding a backslash or control character;
            ``reference_series`` lacks the files, FrameOfReferenceUID or SOPInstanceUIDs a
            structure set needs, or gives two slices one SOPInstanceUID; ``path`` is one of
            the series' files.
        OSError: a file of the series cannot be read.

    Warns:
        BlankSeriesUidWarning: the series has no StudyInstanceUID / SeriesInstanceUID; the
            structure set references stand-ins derived from the images' SOPInstanceUIDs,
            the ones :func:`kseg.io.write_dicom_seg` writes for the same series.

    Example:
        >>> import tempfile
        >>> from pathlib import Path
        >>> from kseg.io import rasterize_rtstruct, read_dicom_series
        >>> from kseg.phantoms.lctsc import write_lctsc
        >>> root = write_lctsc(tempfile.mkdtemp(), num_patients=1, num_test_patients=0,
        ...                    num_slices=4, size=32)
        >>> ct = read_dicom_series(next(root.glob("LCTSC/*/*/*-CT *")))
        >>> prediction = np.zeros(ct.shape, np.uint8)  # labels on the series' grid
        >>> prediction[1:3, 8:20, 10:22] = 1
        >>> prediction[1:3, 12:16, 14:18] = 2
        >>> path = write_rtstruct(prediction, ct, Path(tempfile.mkdtemp()) / "rs.dcm",
        ...                       roi_names={1: "Liver", 2: "Spleen"})
        >>> masks = rasterize_rtstruct(path, ct)
        >>> np.array_equal(masks["Liver"], prediction == 1), int(masks["Spleen"].sum())
        (True, 32)
    """
    array = _label_array(labels, reference_series)
    names = _roi_names(roi_names)
    _check_text(label, "label", _SH_LENGTH)
    _check_text(series_description, "series_description", _LO_LENGTH)
    if roi_generation_algorithm not in _GENERATION_ALGORITHMS:
        raise ValueError(
            f"roi_generation_algorithm must be one of {_GENERATION_ALGORITHMS} (PS3.3 "
            f"C.8.8.5, enumerated values), got {roi_generation_algorithm!r}"
        )
    present = {int(v) for v in np.unique(array)} - {0}
    unnamed = sorted(present - set(names))
    if unnamed:
        raise ValueError(
            f"labels holds values without an ROI name: {unnamed[:10]}; roi_names covers "
            f"{sorted(names)}"
        )
    reference, header = _series_reference(reference_series)
    path = pathlib.Path(path)
    sources = {os.path.realpath(f) for f in reference_series.source_files}
    if os.path.realpath(path) in sources:
        raise ValueError(f"{path}: is a file of the reference series; it would be overwritten")

    index_to_lps = reference_series.affine.copy()
    index_to_lps[:3] *= _RAS_TO_LPS[:, None]
    colors = _colors(colors or {})
    rois = []
    # One pass finds every label's bounding box; each label is then outlined inside its own.
    boxes = ndimage.find_objects(array) if present else []
    for position, (value, name) in enumerate(sorted(names.items())):
        contours = []
        box = boxes[value - 1] if value in present else None
        if box is not None:
            inside = array[box] == value
            for depth in np.flatnonzero(inside.any(axis=(1, 2))):
                k = box[0].start + depth
                for outline in _slice_outlines(inside[depth]):
                    outline = outline + (box[1].start, box[2].start)
                    index = np.column_stack([np.full(len(outline), float(k)), outline])
                    points = index @ index_to_lps[:3, :3].T + index_to_lps[:3, 3]
                    contours.append(Contour(
                        reference.sop_instance_uids[k], points,
                        referenced_frame_number=(
                            reference.frame_numbers[k] if reference.frame_numbers else None
                        ),
                    ))  # fmt: skip
        color = colors.get(value, _PALETTE[position % len(_PALETTE)])
        rois.append(RoiContours(value, name, tuple(color), tuple(contours)))

    now = datetime.datetime.now()
    ds = rtstruct_dataset(
        rois, reference,
        series_instance_uid=generate_uid(),
        sop_instance_uid=generate_uid(),
        implementation_version_name=IMPLEMENTATION_VERSION_NAME,
        label=label,
        date=now.strftime("%Y%m%d"),
        time=now.strftime("%H%M%S"),
        roi_generation_algorithm=roi_generation_algorithm,
    )
    for keyword in _PATIENT_AND_STUDY:
        setattr(ds, keyword, header.get(keyword, ""))
    for keyword in _OPTIONAL_STUDY:
        if keyword in header:
            setattr(ds, keyword, copy.deepcopy(header[keyword].value))
    ds.Manufacturer = "kseg"
    ds.OperatorsName = ""
    ds.SeriesDescription = series_description
    ds.StructureSetName = label
    return write_dataset(ds, path)


def _slice_outlines(mask: np.ndarray) -> list[np.ndarray]:
    """:func:`label_outlines` of the mask's bounding box, shifted back to the slice."""
    rows, columns = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    top, left = rows[0], columns[0]
    box = mask[top : rows[-1] + 1, left : columns[-1] + 1]
    return [outline + (top, left) for outline in label_outlines(box)]


def _label_array(labels, reference: Volume) -> np.ndarray:
    if not isinstance(reference, Volume):
        raise ValueError(
            f"reference_series must be a kseg.io.Volume from read_dicom_series, got "
            f"{type(reference).__name__}"
        )
    if isinstance(labels, Volume):
        from kseg.geometry import match_grid

        # a label file in another axis order or direction on the series' voxels (a LAS
        # NIfTI beside an LPS series) is moved onto the series' grid without interpolation
        matched = match_grid(labels, reference, tolerance_mm=1e-4)
        if matched is None:
            raise ValueError(
                f"labels ({labels.source_files[0] if labels.source_files else 'a Volume'}) "
                f"is on another grid than reference_series (shape {labels.shape} vs "
                f"{reference.shape}; affines differ, also with the axes reordered or "
                "flipped); resample it onto the series first (kseg.geometry.resample_to)"
            )
        labels = matched.array
    array = np.asarray(labels)
    if array.shape != reference.shape:
        raise ValueError(
            f"labels has shape {array.shape}; the reference series' grid is {reference.shape}"
        )
    if array.dtype == np.bool_:
        return array.astype(np.uint8)
    if not np.issubdtype(array.dtype, np.integer):
        if not np.issubdtype(array.dtype, np.floating) or not np.all(array == np.round(array)):
            raise ValueError(f"labels must hold integer label values, got dtype {array.dtype}")
        array = array.astype(np.int64)
    if array.size and array.min() < 0:
        raise ValueError(f"labels holds negative values (min {array.min()})")
    return array


def _roi_names(roi_names) -> dict[int, str]:
    if isinstance(roi_names, Mapping):
        names = {int(value): str(name) for value, name in roi_names.items()}
    elif isinstance(roi_names, str):
        raise ValueError("roi_names must be a mapping or a sequence of names, not one string")
    else:
        names = {position + 1: str(name) for position, name in enumerate(roi_names)}
    if not names:
        raise ValueError("roi_names is empty: name at least one label")
    if any(value <= 0 for value in names):
        raise ValueError(f"roi_names keys must be positive labels, got {sorted(names)}")
    blank = [value for value, name in names.items() if not name.strip()]
    if blank:
        raise ValueError(f"roi_names gives labels {blank} an empty name")
    for value, name in names.items():
        _check_text(name, f"roi_names gives label {value} the name", _LO_LENGTH)
    seen: dict[str, int] = {}
    for value, name in names.items():
        if name in seen:
            raise ValueError(f"roi_names gives labels {seen[name]} and {value} the name {name!r}")
        seen[name] = value
    return names


def _colors(colors: Mapping) -> dict[int, tuple[int, int, int]]:
    """``{label: (r, g, b)}`` with integer components 0..255 (ROIDisplayColor, PS3.3
    C.8.8.6); matplotlib's 0..1 floats would be cut to black, so they are refused."""
    checked = {}
    for value, color in colors.items():
        components = np.asarray(color, dtype=object).ravel().tolist()
        if len(components) != 3 or not all(
            isinstance(c, (int, np.integer)) and not isinstance(c, bool) and 0 <= c <= 255
            for c in components
        ):
            raise ValueError(
                f"colors gives label {value} the colour {color!r}; expected three integers "
                "0..255 (r, g, b)"
            )
        checked[int(value)] = tuple(int(c) for c in components)
    return checked


def _check_text(text: str, what: str, length: int) -> None:
    """Refuse a name a DICOM text value (LO, SH) cannot hold as one value: over ``length``
    characters (PS3.5 6.2), a backslash (which separates values: read back, ``Lung\\Left``
    is two names) or a control character."""
    problem = (
        f"is longer than the {length} characters DICOM allows" if len(text) > length
        else "holds a backslash, which DICOM reads as a value separator" if "\\" in text
        else "holds a control character" if any(ord(c) < 32 or ord(c) == 127 for c in text)
        else None
    )  # fmt: skip
    if problem:
        raise ValueError(f"{what} {text!r}, which {problem}")


def _series_reference(series: Volume) -> tuple[SeriesReference, pydicom.Dataset]:
    metadata = series.metadata
    nz = series.shape[0]
    if len(series.source_files) != nz:
        raise ValueError(
            f"reference_series has {len(series.source_files)} source files for {nz} slices: "
            "pass the Volume read_dicom_series returns for the series the labels were "
            "predicted on"
        )
    frame = str(metadata.get("frame_of_reference_uid", "") or "")
    if not frame:
        raise ValueError(
            f"reference_series ({_folder(series)}) has no FrameOfReferenceUID: contours in "
            "patient coordinates cannot be tied to its images"
        )
    # A multi-frame file is every slice's source: its header is read once.
    header_of = {path: _header(path) for path in dict.fromkeys(series.source_files)}
    headers = [header_of[path] for path in series.source_files]
    uids = tuple(metadata.get("sop_instance_uids", ())) or ("",) * nz
    # An anonymiser may blank SOPInstanceUID in the data set and leave the file meta's
    # MediaStorageSOPInstanceUID, which PS3.10 makes the same identity.
    uids = tuple(
        str(uid or _media_uid(header) or "") for uid, header in zip(uids, headers, strict=True)
    )
    blank = [f for f, uid in zip(series.source_files, uids, strict=True) if not uid]
    if blank:
        raise ValueError(
            f"reference_series: {len(blank)} slice(s) have no SOPInstanceUID, in the data set "
            f"or the file meta (first: {blank[0]}); a structure set must reference each slice"
        )
    numbers = tuple(metadata.get("frame_numbers", ())) or (None,) * nz
    first_with: dict[tuple, str] = {}
    for path, uid, number in zip(series.source_files, uids, numbers, strict=True):
        other = first_with.setdefault((uid, number), path)
        if other != path:
            raise ValueError(
                f"reference_series: {other} and {path} share SOPInstanceUID {uid} (an "
                "anonymiser gave the slices one UID?); a structure set tells slices apart by "
                "it, so a reader would put their contours on one slice"
            )
    study = str(metadata.get("study_instance_uid", "") or "")
    series_uid = str(metadata.get("series_instance_uid", "") or "")
    if not study or not series_uid:
        missing = " and ".join(
            name for name, uid in (("StudyInstanceUID", study), ("SeriesInstanceUID", series_uid))
            if not uid
        )
        warnings.warn(
            BlankSeriesUidWarning(
                f"{_folder(series)}: the series has no {missing} (blanked by an anonymiser?); "
                f"the structure set {_STAND_IN_NOTE}"
            ),
            stacklevel=3,
        )
        study = study or _stand_in_uid("StudyInstanceUID", uids)
        series_uid = series_uid or _stand_in_uid("SeriesInstanceUID", uids)
    header = headers[0]
    reference = SeriesReference(
        patient_id=str(header.get("PatientID", "") or series.patient_id or ""),
        patient_sex=str(metadata.get("patient_sex", "") or ""),
        study_instance_uid=study,
        series_instance_uid=series_uid,
        frame_of_reference_uid=frame,
        sop_instance_uids=uids,
        sop_class_uid=str(
            header.get("SOPClassUID", "") or _media_class(header) or CTImageStorage
        ),
        frame_numbers=tuple(int(frame) for frame in metadata.get("frame_numbers", ())),
        slice_series_uids=_slice_series_uids(headers),
    )
    return reference, header


def _slice_series_uids(headers: list[pydicom.Dataset]) -> tuple[str, ...]:
    """Each slice's SeriesInstanceUID where the slices come from several series (read with
    ``ignore_series_uid``), so each is referenced under its own; else empty."""
    uids = tuple(str(header.get("SeriesInstanceUID", "") or "") for header in headers)
    return uids if all(uids) and len(set(uids)) > 1 else ()


def _header(path: str) -> pydicom.Dataset:
    try:
        return pydicom.dcmread(path, stop_before_pixels=True, force=True)
    except Exception as exc:  # pydicom raises many types on damaged files
        raise OSError(f"{path}: cannot read the series' header ({exc})") from exc


def _media_uid(header: pydicom.Dataset) -> str:
    meta = getattr(header, "file_meta", None)
    return str(meta.get("MediaStorageSOPInstanceUID", "") or "") if meta is not None else ""


def _media_class(header: pydicom.Dataset) -> str:
    meta = getattr(header, "file_meta", None)
    return str(meta.get("MediaStorageSOPClassUID", "") or "") if meta is not None else ""


def _folder(series: Volume) -> str:
    return os.path.dirname(series.source_files[0]) if series.source_files else "series"
