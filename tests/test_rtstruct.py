"""RTSTRUCT reading and rasterisation against shapes whose pixels and areas are known by hand.

The CT grids are written here with pydicom and read back with read_dicom_series: anisotropic
pixels (0.7 mm between rows, 1.3 mm between columns), a non-zero origin, and both the usual
and the 180-degree rotated in-plane orientation. Expected pixels are computed from the
DICOM geometry formula (position = origin + i * column spacing * row cosine + j * row
spacing * column cosine), never from the code under test.
"""

import warnings

import numpy as np
import pydicom
import pytest
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.tag import Tag
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, RTStructureSetStorage

from kseg.errors import AlignmentError, MaskError, UnreadableFileError
from kseg.io import read_dicom_series
from kseg.io.dicom_writer import SeriesReference
from kseg.io.rtstruct import (
    Contour,
    ContourOutsideVolumeWarning,
    ContourReferenceWarning,
    RoiContours,
    RoiNameWarning,
    canonical_roi_name,
    fill_polygons,
    match_roi_names,
    rasterize_rtstruct,
    read_rtstruct,
    read_rtstruct_references,
)
from kseg.phantoms.lctsc import write_phantom_rtstruct
from tfds_builders.lctsc.layout import organ_label_map

NZ, ROWS, COLUMNS = 5, 40, 60
ROW_SPACING, COLUMN_SPACING, SLICE_GAP = 0.7, 1.3, 2.5
ORIGIN = (-30.2, 12.7, -100.0)
STANDARD = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
ROTATED = (-1.0, 0.0, 0.0, 0.0, -1.0, 0.0)
FRAME = "1.2.826.0.1.3680043.10.1.9"
SERIES = "1.2.826.0.1.3680043.10.1.2"


def _slice_uid(k):
    return f"1.2.826.0.1.3680043.10.1.3.{k}"


def _write_ct(folder, orientation):
    folder.mkdir()
    for k in range(NZ):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = _slice_uid(k)
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = _slice_uid(k)
        ds.StudyInstanceUID = "1.2.826.0.1.3680043.10.1.1"
        ds.SeriesInstanceUID = SERIES
        ds.FrameOfReferenceUID = FRAME
        ds.Modality = "CT"
        ds.PatientID = "P1"
        ds.InstanceNumber = NZ - k
        ds.ImagePositionPatient = [ORIGIN[0], ORIGIN[1], ORIGIN[2] + k * SLICE_GAP]
        ds.ImageOrientationPatient = list(orientation)
        ds.PixelSpacing = [ROW_SPACING, COLUMN_SPACING]
        ds.RescaleSlope, ds.RescaleIntercept = 1, -1024
        ds.Rows, ds.Columns = ROWS, COLUMNS
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
        ds.PixelData = np.zeros((ROWS, COLUMNS), "<u2").tobytes()
        pydicom.dcmwrite(folder / f"{k}.dcm", ds, enforce_file_format=True)
    return read_dicom_series(folder)


def _pixel_centres(orientation):
    """LPS x of every column centre and y of every row centre, from the DICOM formula."""
    i, j = np.arange(COLUMNS), np.arange(ROWS)
    x = ORIGIN[0] + i * COLUMN_SPACING * orientation[0]
    y = ORIGIN[1] + j * ROW_SPACING * orientation[4]
    return x, y


def _write_rois(path, rois, frame=FRAME):
    reference = SeriesReference("P1", "F", "1.2.826.0.1.3680043.10.1.1", SERIES, frame,
                                tuple(_slice_uid(k) for k in range(NZ)))
    return write_phantom_rtstruct(path, rois, reference,
                                  series_instance_uid="1.2.826.0.1.3680043.10.2",
                                  sop_instance_uid="1.2.826.0.1.3680043.10.2.1")


def _polygon(xy, z):
    xy = np.asarray(xy, dtype=np.float64)
    return np.column_stack([xy, np.full(len(xy), z)])


def _rectangle(x0, x1, y0, y1):
    return [(x0, y0), (x1, y0), (x1, y1), (x0, y1)]


def _z(k):
    return ORIGIN[2] + k * SLICE_GAP


@pytest.fixture(params=[STANDARD, ROTATED], ids=["standard", "rotated"], scope="module")
def grid(request, tmp_path_factory):
    orientation = request.param
    return orientation, _write_ct(tmp_path_factory.mktemp("ct") / "ct", orientation)


def _field_mm(orientation):
    """A box well inside the field of view, in mm, for either orientation."""
    x, y = _pixel_centres(orientation)
    return np.sort(x)[[5, -6]], np.sort(y)[[5, -6]]


def test_square_with_square_hole_covers_exactly_the_pixel_centres_inside(grid, tmp_path):
    orientation, volume = grid
    (x_lo, x_hi), (y_lo, y_hi) = _field_mm(orientation)
    # Edges chosen between pixel centres, so the answer does not depend on edge rules.
    outer = (x_lo + 3.37, x_lo + 41.11, y_lo + 2.23, y_lo + 19.94)
    inner = (x_lo + 13.01, x_lo + 27.29, y_lo + 7.16, y_lo + 13.52)
    rois = [RoiContours(1, "Ring", (255, 0, 0), (
        Contour(_slice_uid(2), _polygon(_rectangle(*outer), _z(2))),
        Contour(_slice_uid(2), _polygon(_rectangle(*inner)[::-1], _z(2))),
    ))]
    path = _write_rois(tmp_path / "rs.dcm", rois)
    mask = rasterize_rtstruct(path, volume)["Ring"]

    x, y = _pixel_centres(orientation)
    in_outer = ((y > outer[2]) & (y < outer[3]))[:, None] & ((x > outer[0]) & (x < outer[1]))
    in_inner = ((y > inner[2]) & (y < inner[3]))[:, None] & ((x > inner[0]) & (x < inner[1]))
    expected = in_outer & ~in_inner
    np.testing.assert_array_equal(mask[2], expected.astype(np.uint8))
    assert mask[[0, 1, 3, 4]].sum() == 0
    # And against the analytic area: |count - area| stays within the pixels the outlines
    # cross (one row or column of pixels along each side).
    pixel_area = ROW_SPACING * COLUMN_SPACING
    area = ((outer[1] - outer[0]) * (outer[3] - outer[2])
            - (inner[1] - inner[0]) * (inner[3] - inner[2])) / pixel_area
    crossed = sum(2 * (b[1] - b[0]) / COLUMN_SPACING + 2 * (b[3] - b[2]) / ROW_SPACING
                  for b in (outer, inner))
    assert abs(int(mask.sum()) - area) <= 0.5 * crossed


def test_circle_area_and_centre_match_the_analytic_values(grid, tmp_path):
    orientation, volume = grid
    (x_lo, x_hi), (y_lo, y_hi) = _field_mm(orientation)
    centre = (0.5 * (x_lo + x_hi) + 0.31, 0.5 * (y_lo + y_hi) - 0.17)
    radius = 11.0
    theta = np.linspace(0, 2 * np.pi, 720, endpoint=False)
    circle = np.column_stack([centre[0] + radius * np.cos(theta),
                              centre[1] + radius * np.sin(theta)])
    rois = [RoiContours(1, "Disc", None, (Contour(_slice_uid(1), _polygon(circle, _z(1))),))]
    mask = rasterize_rtstruct(_write_rois(tmp_path / "rs.dcm", rois), volume)["Disc"][1]

    area_pixels = np.pi * radius**2 / (ROW_SPACING * COLUMN_SPACING)
    # The outline crosses about 2 * diameter / spacing pixels in each direction. Each can be
    # miscounted by at most one pixel, with errors of both signs; a quarter of them bounds
    # the net error, while drawing the outline itself (an outward half-pixel bias, about
    # half a pixel per pixel of perimeter) would add some 0.4 of them.
    crossed = 2 * (2 * radius) / COLUMN_SPACING + 2 * (2 * radius) / ROW_SPACING
    assert abs(int(mask.sum()) - area_pixels) <= 0.25 * crossed
    x, y = _pixel_centres(orientation)
    rows, columns = np.nonzero(mask)
    # The centroid of the filled centres lies on the circle's centre (in mm) within the
    # lattice noise of ~500 pixels (a tenth of a pixel here), far from the half-pixel shift
    # a wrong pixel-centre convention would give.
    assert abs(x[columns].mean() - centre[0]) < 0.2 * COLUMN_SPACING
    assert abs(y[rows].mean() - centre[1]) < 0.2 * ROW_SPACING


def test_slice_found_by_referenced_uid_before_position(grid, tmp_path):
    orientation, volume = grid
    (x_lo, _), (y_lo, _) = _field_mm(orientation)
    box = _rectangle(x_lo + 2.1, x_lo + 12.2, y_lo + 2.1, y_lo + 8.1)
    rois = [
        # Drawn at slice 1's position but referencing slice 3: the reference wins, loudly.
        RoiContours(1, "ByUid", None, (Contour(_slice_uid(3), _polygon(box, _z(1))),)),
        # No reference: the plane 0.4 gaps above slice 4 is within half a gap of it.
        RoiContours(2, "ByPosition", None, (Contour(None, _polygon(box, _z(4) - 0.4 * 2.5)),)),
        # A reference the volume does not hold: placed by position.
        RoiContours(3, "Foreign", None, (Contour("1.2.3.999", _polygon(box, _z(0))),)),
    ]
    path = _write_rois(tmp_path / "rs.dcm", rois)
    with pytest.warns(ContourReferenceWarning) as caught:
        masks = rasterize_rtstruct(path, volume)
    messages = " | ".join(str(w.message) for w in caught)
    assert "'ByUid'" in messages and "slice 3" in messages
    assert "'Foreign'" in messages and "placed by position" in messages
    for name, k in (("ByUid", 3), ("ByPosition", 4), ("Foreign", 0)):
        per_slice = masks[name].sum(axis=(1, 2))
        assert per_slice[k] > 0 and per_slice.sum() == per_slice[k], (name, per_slice)


def test_contours_off_the_volume_are_reported_never_silently_dropped(grid, tmp_path):
    orientation, volume = grid
    (x_lo, x_hi), (y_lo, _) = _field_mm(orientation)
    box = _rectangle(x_lo + 2.1, x_lo + 12.2, y_lo + 2.1, y_lo + 8.1)
    x, _ = _pixel_centres(orientation)
    beyond_x = x.max() + 10.0  # past the last column
    running_off = _rectangle(x_hi - 5.05, beyond_x, y_lo + 2.1, y_lo + 8.1)
    rois = [RoiContours(7, "Lung_L", None, (
        Contour(None, _polygon(box, _z(4) + 0.6 * SLICE_GAP)),  # above the last slice
        Contour(_slice_uid(2), _polygon(running_off, _z(2))),
        Contour(_slice_uid(1), _polygon(box[:1], _z(1)), "POINT"),
        Contour(_slice_uid(1), _polygon(box[:2], _z(1))),
    ))]
    path = _write_rois(tmp_path / "rs.dcm", rois)
    with pytest.warns(ContourOutsideVolumeWarning) as caught:
        mask = rasterize_rtstruct(path, volume)["Lung_L"]
    message = str(caught[0].message)
    assert str(path) in message and "'Lung_L'" in message
    assert "1 contour(s) beyond the first or last slice" in message
    assert "running off" in message and "slice(s) 2" in message
    assert "2 contour(s) of type CLOSED_PLANAR with 2 point(s), POINT (no area)" in message
    assert mask[4].sum() == 0 and mask[1].sum() == 0
    # The part on the grid is still filled: every column centre from the box's edge on.
    _, y = _pixel_centres(orientation)
    rows = (y > y_lo + 2.1) & (y < y_lo + 8.1)
    columns = x > x_hi - 5.05
    np.testing.assert_array_equal(mask[2], (rows[:, None] & columns).astype(np.uint8))


def test_read_rtstruct_returns_what_pydicom_decodes(tmp_path):
    square = _polygon(_rectangle(0.0, 10.0, 0.0, 5.0), -97.5)
    rois = [
        RoiContours(3, "Heart", (255, 0, 0), (Contour(_slice_uid(1), square),)),
        RoiContours(5, "Cord", (0, 0, 255), (
            Contour(None, square + [1.25, 0, 0]),
            Contour(_slice_uid(2), square + [0, 0, 2.5]),
        )),
    ]
    path = _write_rois(tmp_path / "rs.dcm", rois)
    read = read_rtstruct(path)
    dataset = pydicom.dcmread(path)
    assert [(r.number, r.name, r.color) for r in read] == [
        (3, "Heart", (255, 0, 0)), (5, "Cord", (0, 0, 255))]
    for roi, item in zip(read, dataset.ROIContourSequence, strict=True):
        for contour, raw in zip(roi.contours, item.ContourSequence, strict=True):
            np.testing.assert_array_equal(
                contour.points, np.asarray(raw.ContourData, dtype=float).reshape(-1, 3))
    assert read[1].contours[0].referenced_sop_instance_uid is None
    assert read[1].contours[1].referenced_sop_instance_uid == _slice_uid(2)
    assert read[0].frame_of_reference_uid == FRAME
    refs = read_rtstruct_references(path)
    assert refs.series_instance_uids == {SERIES}
    assert refs.frame_of_reference_uids == {FRAME}
    assert refs.sop_instance_uids == {_slice_uid(k) for k in range(NZ)}
    assert dataset.SOPClassUID == RTStructureSetStorage


def test_interpreted_types_decide_which_unmatched_names_are_worth_a_warning(grid, tmp_path):
    orientation, volume = grid
    (x_lo, _), (y_lo, _) = _field_mm(orientation)
    square = _polygon(_rectangle(x_lo + 3.37, x_lo + 21.11, y_lo + 2.23, y_lo + 9.94), _z(2))
    names = ["Lung_L", "Body", "PTV_60", "Couch", "Lung_Rt_old", "Spacer"]
    rois = [RoiContours(number, name, None, (Contour(_slice_uid(2), square),))
            for number, name in enumerate(names, start=1)]
    path = _write_rois(tmp_path / "rs.dcm", rois)
    dataset = pydicom.dcmread(path)
    # As planning systems write them: organs at risk typed AVOIDANCE, padded values, one
    # ROI typed empty (Type 2), one item whose number cannot be read, and a second item for
    # an ROI already typed.
    typed = ["AVOIDANCE", "EXTERNAL ", "PTV", "SUPPORT", "", "ORGAN"]
    for item, interpreted in zip(dataset.RTROIObservationsSequence, typed, strict=True):
        item.RTROIInterpretedType = interpreted
    unreadable = RawDataElement(Tag(0x3006, 0x0084), "IS", 2, b"x6", 0, True, True)
    dataset.RTROIObservationsSequence[5][unreadable.tag] = unreadable
    extra = Dataset()
    extra.ObservationNumber, extra.ReferencedROINumber = 7, 3
    extra.RTROIInterpretedType, extra.ROIInterpreter = "ORGAN", ""
    dataset.RTROIObservationsSequence.append(extra)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns while writing the invalid number
        dataset.save_as(path)

    read = read_rtstruct(path)
    assert [(roi.name, roi.interpreted_type, roi.may_be_organ) for roi in read] == [
        ("Lung_L", "AVOIDANCE", True), ("Body", "EXTERNAL", False), ("PTV_60", "PTV", False),
        ("Couch", "SUPPORT", False), ("Lung_Rt_old", "", True), ("Spacer", "", True)]
    with pytest.warns(RoiNameWarning) as warned:
        labels = organ_label_map(path, volume)
    message = str(warned[0].message)
    assert "matching no organ: 'Lung_Rt_old', 'Spacer';" in message
    assert not any(name in message for name in ("Body", "PTV_60", "Couch"))
    np.testing.assert_array_equal(np.unique(labels), [0, 1])  # Lung_L only


def test_bad_inputs_raise_errors_naming_the_file(grid, tmp_path):
    _, volume = grid
    square = _polygon(_rectangle(0.0, 10.0, 0.0, 5.0), _z(1))
    heart = [RoiContours(1, "Heart", None, (Contour(None, square),))]
    path = _write_rois(tmp_path / "rs.dcm", heart)
    with pytest.raises(MaskError, match=r"rs\.dcm: has no ROI named 'Lung_R'.*'Heart'"):
        rasterize_rtstruct(path, volume, roi_names=["Lung_R"])
    other = _write_rois(tmp_path / "other.dcm", heart, frame="9.9")
    with pytest.raises(AlignmentError, match=r"other\.dcm.*frame of reference 9\.9"):
        rasterize_rtstruct(other, volume)
    with pytest.raises(UnreadableFileError, match="expected an RT Structure Set"):
        read_rtstruct(volume.source_files[0])
    text = tmp_path / "notes.txt"
    text.write_text("not dicom")
    with pytest.raises(UnreadableFileError, match="notes.txt"):
        read_rtstruct(text)


def test_fill_polygons_hand_worked_cases():
    square = np.array([[0.5, 0.5], [0.5, 3.5], [3.5, 3.5], [3.5, 0.5]])
    assert fill_polygons([square], (5, 5)).sum() == 9  # centres 1..3 in each direction
    # Edges through pixel centres: inside on the top/left edge, outside on bottom/right.
    on_centres = np.array([[1.0, 1.0], [1.0, 3.0], [3.0, 3.0], [3.0, 1.0]])
    expected = np.zeros((5, 5), np.uint8)
    expected[1:3, 1:3] = 1
    np.testing.assert_array_equal(fill_polygons([on_centres], (5, 5)), expected)
    # Two overlapping squares: the even-odd rule leaves their overlap empty.
    shifted = square + 1.0
    both = fill_polygons([square, shifted], (6, 6))
    assert both[2, 2] == 0 and both[3, 3] == 0 and both[1, 1] == 1 and both[4, 4] == 1
    assert both.sum() == 9 + 9 - 2 * 4
    # A triangle with a vertex on a row of centres is counted once on that row.
    triangle = np.array([[0.5, 2.0], [4.0, 0.2], [4.0, 3.8]])
    filled = fill_polygons([triangle], (5, 5))
    np.testing.assert_array_equal(filled[1], [0, 0, 1, 0, 0])
    # Polygons beyond the grid are cut, not wrapped.
    assert fill_polygons([square + 10.0], (5, 5)).sum() == 0
    assert fill_polygons([square - 2.0], (5, 5)).sum() == 4  # centres 0, 1 of -1, 0, 1


@pytest.mark.parametrize(
    "name, canonical",
    [
        ("Lung_L", "lung_left"), ("Lung_l", "lung_left"), ("LUNG_L", "lung_left"),
        ("L_Lung", "lung_left"), ("Lung_Left", "lung_left"), ("LungLeft", "lung_left"),
        ("Left Lung", "lung_left"), ("Lung_R", "lung_right"), ("R_Lung", "lung_right"),
        ("LUNG_RT", "lung_right"), ("Lung_Right", "lung_right"), ("Heart", "heart"),
        ("HEART", "heart"), ("Esophagus", "esophagus"), ("Oesophagus", "esophagus"),
        ("ESOPHAGUS", "esophagus"), ("SpinalCord", "spinal_cord"),
        ("Spinal_Cord", "spinal_cord"), ("SPINAL CORD", "spinal_cord"), ("Cord", "spinal_cord"),
        ("Lungs", None), ("Lung_L-GTV", None), ("External", None), ("SpinalCanal", None),
        ("Lung", None), ("Heart_PRV", None),
    ],
)
def test_roi_name_normalisation_table(name, canonical):
    assert canonical_roi_name(name) == canonical


def test_match_roi_names_reports_unmatched_and_refuses_duplicates():
    with pytest.warns(RoiNameWarning, match=r"rs\.dcm: ROI names matching no organ: 'GTV'.*"
                      r"organs with no ROI: esophagus"):
        found = match_roi_names(["Lung_L", "RtLung", "Heart", "GTV", "Cord"], source="rs.dcm")
    assert found == {"lung_left": "Lung_L", "lung_right": "RtLung", "heart": "Heart",
                     "spinal_cord": "Cord"}
    with pytest.raises(MaskError, match=r"lung_left: 'Lung_L', 'L_Lung'"):
        match_roi_names(["Lung_L", "L_Lung"], wanted=["lung_left"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert match_roi_names(["Poumon G"], wanted=["lung_left"],
                               aliases={"poumon g": "lung_left"}) == {"lung_left": "Poumon G"}
    with pytest.raises(ValueError, match="not one of"):
        canonical_roi_name("x", aliases={"x": "liver"})
