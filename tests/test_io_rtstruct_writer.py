"""RT Structure Sets from label maps: outlines checked against an independent even-odd test
and hand-computed areas; files read back by kseg's reader and rasteriser and by plain
pydicom, on a synthetic sagittal series and on the real shared CT series."""

import os
import pathlib
import warnings

import numpy as np
import pydicom
import pytest
from pydicom.uid import CTImageStorage, MRImageStorage, RTStructureSetStorage, generate_uid

from kseg.io import rasterize_rtstruct, read_dicom_series, read_nifti, read_rtstruct
from kseg.io.dicom_writer import new_dataset, set_grayscale_pixels, write_dataset
from kseg.io.rtstruct_writer import BlankSeriesUidWarning, label_outlines, write_rtstruct


def _inside_even_odd(polygons, points):
    """Independent reference: a point is inside when a ray towards +column crosses the
    polygons' edges an odd number of times (an edge spans the rows [low, high), so a vertex
    on the ray's row counts once)."""
    inside = np.zeros(len(points), bool)
    for polygon in polygons:
        start, end = polygon, np.roll(polygon, -1, axis=0)
        for (y0, x0), (y1, x1) in zip(start, end, strict=True):
            if y0 == y1:
                continue
            y, x = points[:, 0], points[:, 1]
            spans = (np.minimum(y0, y1) <= y) & (y < np.maximum(y0, y1))
            crossing = x0 + (y - y0) / (y1 - y0) * (x1 - x0)
            inside ^= spans & (crossing > x)
    return inside


def _shoelace(polygon):
    y, x = polygon[:, 0], polygon[:, 1]
    return (np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))) / 2


def _annulus_and_islands(shape=(40, 44)):
    yy, xx = np.indices(shape)
    radius = np.hypot(yy - 15, xx - 15)
    mask = np.zeros(shape, np.uint8)
    mask[(radius <= 11) & (radius > 5)] = 1
    mask[30:36, 32:40] = 2  # an island of label 2 ...
    mask[4:8, 34:38] = 2  # ... and another one
    return mask


def test_a_lone_pixel_is_a_diamond_through_the_midpoints_to_its_neighbours():
    mask = np.zeros((3, 4), bool)
    mask[1, 2] = True
    (outline,) = label_outlines(mask)
    expected = {(0.5, 2.0), (1.0, 2.5), (1.5, 2.0), (1.0, 1.5)}
    assert {tuple(v) for v in outline} == expected
    assert abs(_shoelace(outline)) == 0.5


def test_a_square_is_an_octagon_one_half_pixel_short_of_its_count():
    mask = np.zeros((6, 6), bool)
    mask[1:5, 2:5] = True  # 4 x 3 pixels
    (outline,) = label_outlines(mask)
    assert len(outline) == 8  # straight runs keep only their ends
    assert abs(_shoelace(outline)) == 12 - 0.5
    assert outline[:, 0].min() == 0.5 and outline[:, 0].max() == 4.5
    assert outline[:, 1].min() == 1.5 and outline[:, 1].max() == 4.5


def test_a_hole_is_a_separate_outline_running_the_other_way():
    mask = np.zeros((9, 9), bool)
    mask[1:8, 1:8] = True
    mask[3:6, 3:6] = False
    outlines = label_outlines(mask)
    assert len(outlines) == 2
    areas = sorted((_shoelace(o) for o in outlines), key=abs)
    assert abs(areas[0]) == 9 - 0.5  # the hole: 3 x 3 outside pixels, its corners cut too
    assert abs(areas[1]) == 49 - 0.5
    assert np.sign(areas[0]) != np.sign(areas[1])


def test_islands_touching_at_a_corner_are_one_outline_and_apart_two():
    diagonal = np.array([[1, 0], [0, 1]], bool)
    assert len(label_outlines(diagonal)) == 1
    apart = np.array([[1, 0, 1]], bool)
    assert len(label_outlines(apart)) == 2
    assert label_outlines(np.zeros((3, 3), bool)) == []


@pytest.mark.parametrize("seed", range(6))
def test_outlines_hold_exactly_the_mask_pixels_by_the_even_odd_rule(seed):
    rng = np.random.default_rng(seed)
    shape = tuple(rng.integers(1, 25, size=2))
    mask = rng.random(shape) < rng.uniform(0.2, 0.8)
    outlines = label_outlines(mask)
    centres = np.indices(shape).reshape(2, -1).T.astype(float)
    inside = _inside_even_odd(outlines, centres).reshape(shape)
    np.testing.assert_array_equal(inside, mask)


def _sagittal_series(folder: pathlib.Path, shape=(4, 40, 44), sop_class=CTImageStorage):
    """A small sagittal series: rows run head to feet, columns anterior to posterior."""
    study, series, frame = generate_uid(), generate_uid(), generate_uid()
    for k in range(shape[0]):
        ds = new_dataset(sop_class, generate_uid(), implementation_version_name="TEST")
        ds.Modality = "CT" if sop_class == CTImageStorage else "MR"
        ds.PatientID, ds.PatientName, ds.PatientSex = "P1", "TEST^SERIES", "O"
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame
        ds.StudyDate, ds.StudyTime, ds.StudyID, ds.AccessionNumber = "20240101", "1200", "7", ""
        ds.InstanceNumber = k + 1
        ds.ImageOrientationPatient = [0, 1, 0, 0, 0, -1]
        ds.ImagePositionPatient = [-20.0 + 2.5 * k, -30.0, 40.0]
        ds.PixelSpacing = [1.5, 0.75]
        ds.RescaleSlope, ds.RescaleIntercept = 1, 0
        set_grayscale_pixels(ds, np.full(shape[1:], 100 + k, np.uint16))
        write_dataset(ds, folder / f"slice{k}.dcm")
    volume = read_dicom_series(folder)
    # In array order (the slice normal points to -x, so the last file written comes first).
    uids = [pydicom.dcmread(f).SOPInstanceUID for f in volume.source_files]
    return volume, uids, frame


def test_round_trip_through_kseg_and_pydicom_on_a_sagittal_series(tmp_path):
    series_folder = tmp_path / "series"
    volume, uids, frame = _sagittal_series(series_folder)
    labels = np.zeros(volume.shape, np.uint8)
    labels[1] = _annulus_and_islands()
    labels[2, 10:20, 5:9] = 1
    labels[3] = _annulus_and_islands()[::-1]
    given = labels.copy()

    out = tmp_path / "out" / "rs.dcm"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        written = write_rtstruct(labels, volume, out, roi_names=["Ring", "Islands"])
        rois = {roi.name: roi for roi in read_rtstruct(written)}
        masks = rasterize_rtstruct(written, volume)
    np.testing.assert_array_equal(labels, given)  # input untouched
    assert written == out and os.listdir(out.parent) == ["rs.dcm"]  # no temporary left
    assert list(masks) == ["Ring", "Islands"]
    for value, name in ((1, "Ring"), (2, "Islands")):
        np.testing.assert_array_equal(masks[name], labels == value)
    # Annulus: an outer and an inner contour; two islands: two contours.
    on_slice_1 = [c for c in rois["Ring"].contours if c.referenced_sop_instance_uid == uids[1]]
    assert len(on_slice_1) == 2
    assert len([c for c in rois["Islands"].contours
                if c.referenced_sop_instance_uid == uids[1]]) == 2

    ds = pydicom.dcmread(written)
    assert ds.SOPClassUID == RTStructureSetStorage and ds.Modality == "RTSTRUCT"
    assert ds.PatientName == "TEST^SERIES" and ds.StudyID == "7" and ds.PatientID == "P1"
    assert ds.StudyInstanceUID == volume.metadata["study_instance_uid"]
    reference = ds.ReferencedFrameOfReferenceSequence[0]
    assert reference.FrameOfReferenceUID == frame
    series = reference.RTReferencedStudySequence[0].RTReferencedSeriesSequence[0]
    assert series.SeriesInstanceUID == volume.metadata["series_instance_uid"]
    assert [i.ReferencedSOPInstanceUID for i in series.ContourImageSequence] == uids
    assert {s.ReferencedFrameOfReferenceUID for s in ds.StructureSetROISequence} == {frame}
    assert {s.ROIGenerationAlgorithm for s in ds.StructureSetROISequence} == {"AUTOMATIC"}
    # Each contour lies in the plane of the slice it references (sagittal: constant x),
    # inside the slice's field of view, read off pydicom's own headers.
    position = {}
    for path in series_folder.iterdir():
        header = pydicom.dcmread(path)
        position[header.SOPInstanceUID] = np.array(header.ImagePositionPatient, float)
    for item in ds.ROIContourSequence:
        for contour in item.ContourSequence:
            points = np.reshape(np.array(contour.ContourData, float), (-1, 3))
            origin = position[contour.ContourImageSequence[0].ReferencedSOPInstanceUID]
            np.testing.assert_allclose(points[:, 0], origin[0], atol=1e-4)
            assert (points[:, 1] >= origin[1] - 0.75 / 2).all()  # columns run along +y
            assert (points[:, 2] <= origin[2] + 1.5 / 2).all()  # rows run along -z


def test_other_modalities_are_referenced_by_their_own_sop_class(tmp_path):
    volume, uids, _ = _sagittal_series(
        tmp_path / "mr", shape=(2, 6, 6), sop_class=MRImageStorage
    )
    labels = np.zeros(volume.shape, np.uint8)
    labels[0, 2:4, 2:4] = 1
    ds = pydicom.dcmread(write_rtstruct(labels, volume, tmp_path / "rs.dcm", roi_names=["A"]))
    (contour,) = ds.ROIContourSequence[0].ContourSequence
    assert contour.ContourImageSequence[0].ReferencedSOPClassUID == MRImageStorage
    assert contour.ContourImageSequence[0].ReferencedSOPInstanceUID == uids[0]


def test_a_named_label_without_pixels_is_an_roi_without_contours(tmp_path):
    volume, _, _ = _sagittal_series(tmp_path / "s", shape=(2, 6, 6))
    labels = np.zeros(volume.shape, np.uint8)
    labels[1, 1:3, 1:3] = 3
    path = write_rtstruct(labels, volume, tmp_path / "rs.dcm", roi_names={3: "C", 5: "E"},
                          colors={3: (1, 2, 3)})
    rois = {roi.name: roi for roi in read_rtstruct(path)}
    assert (rois["C"].number, rois["C"].color, len(rois["C"].contours)) == (3, (1, 2, 3), 1)
    assert (rois["E"].number, rois["E"].contours) == (5, ())
    masks = rasterize_rtstruct(path, volume)
    assert not masks["E"].any()


def test_bad_arguments_are_named(tmp_path):
    volume, _, _ = _sagittal_series(tmp_path / "s", shape=(2, 6, 6))
    labels = np.zeros(volume.shape, np.uint8)
    labels[0, 1, 1] = 2
    out = tmp_path / "rs.dcm"
    with pytest.raises(ValueError, match="shape"):
        write_rtstruct(labels[:1], volume, out, roi_names=["A", "B"])
    with pytest.raises(ValueError, match=r"without an ROI name: \[2\]"):
        write_rtstruct(labels, volume, out, roi_names=["A"])
    with pytest.raises(ValueError, match="integer"):
        write_rtstruct(labels + 0.5, volume, out, roi_names=["A", "B"])
    with pytest.raises(ValueError, match="name 'A'"):
        write_rtstruct(labels, volume, out, roi_names=["A", "A"])
    with pytest.raises(ValueError, match="would be overwritten"):
        write_rtstruct(labels, volume, volume.source_files[0], roi_names=["A", "B"])
    with pytest.raises(ValueError, match="reference_series"):
        write_rtstruct(labels, labels, out, roi_names=["A", "B"])
    assert not out.exists()


def _labels_on_dicom_grid(shared_data, volume):
    """The TotalSegmentator labels of the shared series, taken onto the DICOM array order
    through the two affines (nibabel's grid vs pydicom's positions): a signed permutation
    with an integer offset, checked, not assumed."""
    seg = read_nifti(shared_data / "totalseg-ct" / "ct_dicom_seg.nii.gz")
    to_seg = np.linalg.inv(seg.affine) @ volume.affine
    np.testing.assert_allclose(to_seg, np.round(to_seg), atol=1e-4)
    to_seg = np.round(to_seg).astype(int)
    index = np.indices(volume.shape).reshape(3, -1)
    seg_index = to_seg[:3, :3] @ index + to_seg[:3, 3:]
    return seg.array[tuple(seg_index)].reshape(volume.shape)


def test_real_ct_organs_round_trip_with_dice_one(shared_data, tmp_path):
    folder = shared_data / "totalseg-ct" / "ct_dicom"
    volume = read_dicom_series(folder)
    labels = _labels_on_dicom_grid(shared_data, volume)
    values = [int(v) for v in np.unique(labels) if v]
    assert len(values) > 20
    names = {v: f"TotalSegmentator {v}" for v in values}
    with pytest.warns(BlankSeriesUidWarning, match="no StudyInstanceUID and SeriesInstanceUID"):
        path = write_rtstruct(labels, volume, tmp_path / "rs.dcm", roi_names=names)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        masks = rasterize_rtstruct(path, volume)
    for value, name in names.items():
        reference = labels == value
        predicted = masks[name].astype(bool)
        dice = 2 * (reference & predicted).sum() / (reference.sum() + predicted.sum())
        assert dice >= 0.99, (name, dice)
        np.testing.assert_array_equal(predicted, reference)  # in fact exact

    # Plain pydicom: this anonymised series blanks SOPInstanceUID in the data sets; the file
    # meta (and the file names, CT.<uid>) keep it, and the structure set references those.
    ds = pydicom.dcmread(path)
    headers = [pydicom.dcmread(f, stop_before_pixels=True) for f in volume.source_files]
    media_uids = [h.file_meta.MediaStorageSOPInstanceUID for h in headers]
    assert media_uids == [pathlib.Path(f).name.removeprefix("CT.") for f in volume.source_files]
    reference = ds.ReferencedFrameOfReferenceSequence[0]
    assert reference.FrameOfReferenceUID == headers[0].FrameOfReferenceUID
    series = reference.RTReferencedStudySequence[0].RTReferencedSeriesSequence[0]
    assert [i.ReferencedSOPInstanceUID for i in series.ContourImageSequence] == media_uids
    z_of_uid = {
        uid: float(h.ImagePositionPatient[2]) for uid, h in zip(media_uids, headers, strict=True)
    }
    for item in ds.ROIContourSequence:
        for contour in item.ContourSequence:
            z = np.array(contour.ContourData[2::3], float)
            uid = contour.ContourImageSequence[0].ReferencedSOPInstanceUID
            np.testing.assert_allclose(z, z_of_uid[uid], atol=1e-4)


def test_real_three_slice_series_is_matched_by_uid(shared_data, tmp_path):
    volume = read_dicom_series(
        shared_data / "dcmqi-ct3slice" / "data" / "segmentations" / "ct-3slice"
    )
    labels = np.zeros(volume.shape, np.uint16)
    labels[:, 100:140, 100:144] = np.where(_annulus_and_islands() == 1, 300, 0)
    labels[1, 300:310, 200:260] = 7
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        path = write_rtstruct(labels, volume, tmp_path / "rs.dcm",
                              roi_names={300: "ring", 7: "bar"})
        masks = rasterize_rtstruct(path, volume)
    np.testing.assert_array_equal(masks["ring"], labels == 300)
    np.testing.assert_array_equal(masks["bar"], labels == 7)
    ds = pydicom.dcmread(path)
    assert ds.PatientName == pydicom.dcmread(volume.source_files[0]).PatientName
    series = ds.ReferencedFrameOfReferenceSequence[0].RTReferencedStudySequence[0]
    uids = [i.ReferencedSOPInstanceUID
            for i in series.RTReferencedSeriesSequence[0].ContourImageSequence]
    assert uids == [pydicom.dcmread(f).SOPInstanceUID for f in volume.source_files]
