"""DICOM-SEG: kseg's reader checked against highdicom on dcmqi's own SEG files, and kseg's
writer read back by highdicom and plain pydicom."""

import dataclasses
import os
import sys

import numpy as np
import pydicom
import pytest
from pydicom.uid import CTImageStorage, generate_uid

from kseg.errors import AlignmentError, MaskError, UnreadableFileError
from kseg.io import (
    BlankSeriesUidWarning,
    read_dicom_seg,
    read_dicom_seg_masks,
    read_dicom_series,
    write_dicom_seg,
)
from kseg.io.dicom_writer import new_dataset, set_grayscale_pixels, write_dataset


def _dcmqi(shared_data):
    return shared_data / "dcmqi-ct3slice" / "data" / "segmentations"


def _highdicom_masks(hd, path, volume):
    """highdicom's own reading, one (z, y, x, segment) array in the series' slice order."""
    seg = hd.seg.segread(path)
    return seg.get_pixels_by_source_instance(
        source_sop_instance_uids=list(volume.metadata["sop_instance_uids"]),
        combine_segments=False,
        ignore_spatial_locations=True,  # dcmqi does not say so, but they are
    )


def test_dcmqi_liver_seg_matches_highdicom_with_and_without_the_series(shared_data):
    hd = pytest.importorskip("highdicom")
    folder = _dcmqi(shared_data)
    ct = read_dicom_series(folder / "ct-3slice")
    liver = read_dicom_seg(folder / "liver.dcm", reference_series=ct)
    assert liver.shape == ct.shape and liver.metadata["segment_labels"] == {1: "Liver"}
    np.testing.assert_array_equal(liver.array, _highdicom_masks(hd, folder / "liver.dcm", ct)[
        ..., 0])
    assert liver.array.sum() > 50_000
    # From the SEG's own frame positions alone, the same grid.
    alone = read_dicom_seg(folder / "liver.dcm")
    np.testing.assert_allclose(alone.affine, ct.affine, atol=1e-4)
    np.testing.assert_array_equal(alone.array, liver.array)
    assert alone.metadata["frame_of_reference_uid"] == ct.metadata["frame_of_reference_uid"]


def test_a_seg_beside_its_series_is_skipped_by_the_series_reader(shared_data, tmp_path):
    """A study folder holding the CT slices and their DICOM-SEG (real dcmqi files): the SEG's
    pixel data are labels, not a second series to choose between."""
    import shutil

    from kseg.io import SkippedFileWarning

    folder = _dcmqi(shared_data)
    flat = tmp_path / "study"
    shutil.copytree(folder / "ct-3slice", flat)
    shutil.copy(folder / "liver.dcm", flat / "liver.dcm")

    with pytest.warns(SkippedFileWarning, match=r"liver\.dcm \(Segmentation Storage: read it "):
        ct = read_dicom_series(flat)

    alone = read_dicom_series(folder / "ct-3slice")
    np.testing.assert_array_equal(ct.array, alone.array)
    np.testing.assert_array_equal(ct.affine, alone.affine)


def test_dcmqi_overlapping_segments_are_read_one_mask_each(shared_data):
    hd = pytest.importorskip("highdicom")
    folder = _dcmqi(shared_data)
    ct = read_dicom_series(folder / "ct-3slice")
    masks = read_dicom_seg_masks(folder / "partial_overlaps.dcm", reference_series=ct)
    assert {n: m.metadata["segment_label"] for n, m in masks.items()} == {
        1: "GREEN", 2: "ORANGE", 3: "PURPLE", 4: "LIGHT_BLUE", 5: "DARK_BLUE"
    }
    reference = _highdicom_masks(hd, folder / "partial_overlaps.dcm", ct)
    for number, mask in masks.items():
        np.testing.assert_array_equal(mask.array, reference[..., number - 1])
        assert mask.array.any()
    with pytest.raises(MaskError, match="segments overlap .*1 and 2"):
        read_dicom_seg(folder / "partial_overlaps.dcm", reference_series=ct)


def test_dcmqi_frames_counted_by_plain_pydicom(shared_data):
    folder = _dcmqi(shared_data)
    ds = pydicom.dcmread(folder / "partial_overlaps.dcm")
    frames = ds.pixel_array.reshape(-1, ds.Rows, ds.Columns)
    per_segment = {}
    for frame, item in zip(frames, ds.PerFrameFunctionalGroupsSequence, strict=True):
        number = int(item.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
        per_segment[number] = per_segment.get(number, 0) + int(frame.sum())
    masks = read_dicom_seg_masks(folder / "partial_overlaps.dcm")
    assert {n: int(m.array.sum()) for n, m in masks.items()} == per_segment


def test_the_seg_must_lie_on_the_reference_series(shared_data):
    folder = _dcmqi(shared_data)
    ct = read_dicom_series(folder / "ct-3slice")
    elsewhere = dataclasses.replace(
        ct, metadata={**ct.metadata, "frame_of_reference_uid": "1.2.3"}
    )
    with pytest.raises(AlignmentError, match="frame of reference"):
        read_dicom_seg(folder / "liver.dcm", reference_series=elsewhere)
    moved = ct.affine.copy()
    moved[0, 3] += 5.0  # the grid 5 mm to the side
    shifted = dataclasses.replace(ct, affine=moved)
    with pytest.raises(AlignmentError, match="not on one of its slices"):
        read_dicom_seg(folder / "liver.dcm", reference_series=shifted)
    with pytest.raises(UnreadableFileError, match="expected a DICOM Segmentation"):
        read_dicom_seg(ct.source_files[0])


def _axial_series(folder, count=4, shape=(24, 20)):
    study, series, frame = generate_uid(), generate_uid(), generate_uid()
    for k in range(count):
        ds = new_dataset(CTImageStorage, generate_uid(), implementation_version_name="TEST")
        ds.Modality, ds.PatientID, ds.PatientName = "CT", "P3", "TEST^SEG"
        ds.PatientBirthDate, ds.PatientSex = "", "F"
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame
        ds.StudyDate, ds.StudyTime, ds.StudyID, ds.AccessionNumber = "20240101", "1200", "1", ""
        ds.ReferringPhysicianName, ds.SeriesNumber, ds.InstanceNumber = "", 1, k + 1
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.ImagePositionPatient = [-10.0, 20.0, 3.0 * (count - k)]  # files in reverse
        ds.PixelSpacing = [0.8, 0.6]
        ds.SliceThickness = 3
        ds.RescaleSlope, ds.RescaleIntercept = 1, -1024
        set_grayscale_pixels(ds, np.full(shape, 1000 + k, np.uint16))
        write_dataset(ds, folder / f"{k:02d}.dcm")
    return read_dicom_series(folder)


def test_written_seg_reads_back_in_highdicom_pydicom_and_kseg(tmp_path):
    hd = pytest.importorskip("highdicom")
    (tmp_path / "ct").mkdir()
    ct = _axial_series(tmp_path / "ct")
    labels = np.zeros(ct.shape, np.uint8)
    labels[0, 2:10, 3:9] = 1
    labels[1:, 12:20, 5:15] = 4
    labels[3, 0:3, 0:3] = 1
    given = labels.copy()
    out = tmp_path / "out" / "seg.dcm"
    written = write_dicom_seg(labels, ct, out, {1: "Liver", 4: "Spleen"})
    np.testing.assert_array_equal(labels, given)
    assert written == out and os.listdir(out.parent) == ["seg.dcm"]

    seg = hd.seg.segread(written)
    assert seg.get_segment_numbers() == [1, 2]
    assert [seg.get_segment_description(n).segment_label for n in (1, 2)] == ["Liver", "Spleen"]
    uids = [pydicom.dcmread(f).SOPInstanceUID for f in ct.source_files]
    assert {uid for _, _, uid in seg.get_source_image_uids()} == set(uids)
    pixels = seg.get_pixels_by_source_instance(uids, combine_segments=False)
    np.testing.assert_array_equal(pixels[..., 0], labels == 1)
    np.testing.assert_array_equal(pixels[..., 1], labels == 4)

    ds = pydicom.dcmread(written)
    first = pydicom.dcmread(ct.source_files[0])
    assert ds.FrameOfReferenceUID == first.FrameOfReferenceUID
    assert ds.StudyInstanceUID == first.StudyInstanceUID and ds.PatientID == "P3"
    assert ds.ReferencedSeriesSequence[0].SeriesInstanceUID == first.SeriesInstanceUID
    assert ds.SegmentSequence[0].SegmentAlgorithmType == "AUTOMATIC"

    back = read_dicom_seg(written, reference_series=ct)
    np.testing.assert_array_equal(back.array, np.where(labels == 4, 2, labels))
    assert back.metadata["segment_labels"] == {1: "Liver", 2: "Spleen"}
    alone = read_dicom_seg(written)  # every slice holds a segment: the series' grid
    np.testing.assert_allclose(alone.affine, ct.affine, atol=1e-6)
    np.testing.assert_array_equal(alone.array, back.array)


def test_writer_refuses_unnamed_labels_and_overwriting_the_series(tmp_path):
    pytest.importorskip("highdicom")
    (tmp_path / "ct").mkdir()
    ct = _axial_series(tmp_path / "ct", count=2, shape=(4, 4))
    labels = np.zeros(ct.shape, np.uint8)
    labels[0, 1, 1] = 2
    with pytest.raises(ValueError, match=r"without a segment name: \[2\]"):
        write_dicom_seg(labels, ct, tmp_path / "seg.dcm", ["A"])
    with pytest.raises(ValueError, match="would be overwritten"):
        write_dicom_seg(labels, ct, ct.source_files[0], ["A", "B"])
    assert not (tmp_path / "seg.dcm").exists()


def test_writer_without_highdicom_says_what_to_install(tmp_path, monkeypatch):
    (tmp_path / "ct").mkdir()
    ct = _axial_series(tmp_path / "ct", count=1, shape=(2, 2))
    monkeypatch.setitem(sys.modules, "highdicom", None)  # import fails as if absent
    with pytest.raises(ImportError, match=r"kseg\[seg\]"):
        write_dicom_seg(np.zeros(ct.shape, np.uint8), ct, tmp_path / "seg.dcm", ["A"])


def test_real_ct_series_with_blanked_uids_round_trips(shared_data, tmp_path):
    hd = pytest.importorskip("highdicom")
    ct = read_dicom_series(shared_data / "totalseg-ct" / "ct_dicom")
    bone = (ct.array > 200).astype(np.uint8)
    with pytest.warns(BlankSeriesUidWarning):
        path = write_dicom_seg(bone, ct, tmp_path / "seg.dcm", ["bone"])
    np.testing.assert_array_equal(read_dicom_seg(path, reference_series=ct).array, bone)
    media = [pydicom.dcmread(f, stop_before_pixels=True).file_meta.MediaStorageSOPInstanceUID
             for f in ct.source_files]
    seg = hd.seg.segread(path)
    assert {uid for _, _, uid in seg.get_source_image_uids()} == set(media)
