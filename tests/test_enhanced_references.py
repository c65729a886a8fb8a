"""DICOM-SEG and RTSTRUCT drawn on a volume read from one multi-frame Enhanced CT file: written
referencing the file's SOPInstanceUID and frame numbers, read back onto the right slices.

The Enhanced files are written with pydicom by tests/test_io_enhanced_dicom.py's writer (frames
shuffled against their spatial order, so a frame number is never a slice index), or converted
from the real 3-slice CT by highdicom. References are the frame positions as written.
"""

import warnings

import numpy as np
import pydicom
import pytest
from pydicom.uid import EnhancedCTImageStorage, EnhancedMRImageStorage, generate_uid
from test_io_dicom import _write_slice
from test_io_enhanced_dicom import SPACING, _shuffled_volume, _write_enhanced

from kseg.errors import AlignmentError
from kseg.io import (
    ContourReferenceWarning,
    rasterize_rtstruct,
    read_dicom_seg,
    read_dicom_series,
    write_dicom_seg,
    write_rtstruct,
)
from kseg.io.dicom_writer import SeriesReference
from kseg.io.volume import Volume

COUNT = 5


def _labels(shape):
    """Two labels, each slice's pattern its own, the first and last slices drawn on (so a
    SEG's frames span the whole volume)."""
    labels = np.zeros(shape, np.uint8)
    labels[0, 1:3, 1:4] = 1
    labels[1, 0:4, 2:5] = 1
    labels[2, 2, 0:6] = 2
    labels[-1, 0, 0] = 2
    return labels


def _enhanced_ct(tmp_path, *, shared_groups=True, sop_class=EnhancedCTImageStorage):
    """An Enhanced CT (or MR) of COUNT shuffled oblique frames in its own folder: (the file,
    its volume, each frame's position in file order, the slice normal)."""
    _, stored, positions, orientation = _shuffled_volume(count=COUNT)
    (tmp_path / "ct").mkdir()
    path = _write_enhanced(
        tmp_path / "ct" / "enhanced.dcm", stored, positions, orientation=orientation,
        shared_groups=shared_groups, sop_class=sop_class,
    )  # fmt: skip
    normal = np.cross(orientation[:3], orientation[3:])
    return path, read_dicom_series([path]), positions, normal


@pytest.fixture(
    params=[(True, EnhancedCTImageStorage), (False, EnhancedCTImageStorage),
            (True, EnhancedMRImageStorage)],
    ids=["ct-shared-groups", "ct-per-frame-groups", "mr"],
)  # fmt: skip
def enhanced(request, tmp_path):
    shared_groups, sop_class = request.param
    return _enhanced_ct(tmp_path, shared_groups=shared_groups, sop_class=sop_class)


def _frame_at(positions, point):
    """The 1-based frame whose position is ``point`` (LPS mm)."""
    distance = np.linalg.norm(np.asarray(positions) - np.asarray(point, float), axis=1)
    assert distance.min() < 1e-3
    return int(np.argmin(distance)) + 1


def _frame_of_plane(positions, normal, points):
    """The 1-based frame whose plane holds every point (LPS mm)."""
    offsets = (np.asarray(points) - np.asarray(positions)[:, None, :]) @ normal
    on_plane = np.flatnonzero(np.abs(offsets).max(axis=1) < 1e-3)
    assert len(on_plane) == 1
    return int(on_plane[0]) + 1


def test_seg_on_an_enhanced_ct_references_frames_and_reads_back(enhanced, tmp_path):
    hd = pytest.importorskip("highdicom")
    path, volume, positions, _ = enhanced
    labels = _labels(volume.shape)

    seg_path = write_dicom_seg(labels, volume, tmp_path / "seg.dcm", {1: "Liver", 2: "Spleen"})
    back = read_dicom_seg(seg_path, reference_series=volume)
    alone = read_dicom_seg(seg_path)

    np.testing.assert_array_equal(back.array, labels)
    np.testing.assert_allclose(alone.affine, volume.affine, atol=1e-4)
    np.testing.assert_array_equal(alone.array, labels)
    # Plain pydicom: each SEG frame names the Enhanced file and the frame at its own position.
    seg = pydicom.dcmread(seg_path)
    enhanced_uid = pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID
    for group in seg.PerFrameFunctionalGroupsSequence:
        (source,) = group.DerivationImageSequence[0].SourceImageSequence
        position = group.PlanePositionSequence[0].ImagePositionPatient
        assert source.ReferencedSOPInstanceUID == enhanced_uid
        assert int(source.ReferencedFrameNumber) == _frame_at(positions, position)
    # highdicom's own reading, by source frame: the labels in the file's frame order.
    file_order = np.empty_like(labels)
    file_order[np.array(volume.metadata["frame_numbers"]) - 1] = labels
    by_frame = hd.seg.segread(seg_path).get_pixels_by_source_frame(
        source_sop_instance_uid=enhanced_uid,
        source_frame_numbers=range(1, COUNT + 1),
        combine_segments=True,
    )
    np.testing.assert_array_equal(by_frame, file_order)


def test_rtstruct_on_an_enhanced_ct_references_frames_and_rasterizes_back(enhanced, tmp_path):
    path, volume, positions, normal = enhanced
    labels = _labels(volume.shape)

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a frame matched by position alone would warn
        written = write_rtstruct(labels, volume, tmp_path / "rs.dcm", roi_names=["A", "B"])
        masks = rasterize_rtstruct(written, volume)

    np.testing.assert_array_equal(masks["A"], labels == 1)
    np.testing.assert_array_equal(masks["B"], labels == 2)
    ds = pydicom.dcmread(written)
    enhanced_uid = pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID
    series = ds.ReferencedFrameOfReferenceSequence[0].RTReferencedStudySequence[0]
    (image,) = series.RTReferencedSeriesSequence[0].ContourImageSequence
    assert image.ReferencedSOPInstanceUID == enhanced_uid
    assert [int(n) for n in image.ReferencedFrameNumber] == list(range(1, COUNT + 1))
    contours = [c for item in ds.ROIContourSequence for c in item.ContourSequence]
    assert len(contours) == 4
    for contour in contours:
        (reference,) = contour.ContourImageSequence
        points = np.reshape(np.array(contour.ContourData, float), (-1, 3))
        assert reference.ReferencedSOPInstanceUID == enhanced_uid
        assert int(reference.ReferencedFrameNumber) == _frame_of_plane(positions, normal, points)


@pytest.mark.parametrize("frame", [None, 0, [1, 2]], ids=["absent", "zero", "several"])
def test_a_contour_naming_no_one_frame_of_an_enhanced_ct_is_placed_by_position(
    tmp_path, frame
):
    _, volume, _, _ = _enhanced_ct(tmp_path)
    labels = _labels(volume.shape)
    written = write_rtstruct(labels, volume, tmp_path / "rs.dcm", roi_names=["A", "B"])
    ds = pydicom.dcmread(written)
    for item in ds.ROIContourSequence:
        for contour in item.ContourSequence:
            del contour.ContourImageSequence[0].ReferencedFrameNumber
            if frame is not None:
                contour.ContourImageSequence[0].ReferencedFrameNumber = frame
    ds.save_as(written)

    with pytest.warns(ContourReferenceWarning) as caught:
        masks = rasterize_rtstruct(written, volume)

    assert sorted(str(w.message).split(": ", 1)[1] for w in caught) == [
        f"ROI {name!r}: 2 contour(s) reference a SOPInstanceUID (or a frame of it) the volume "
        "does not hold; placed by position" for name in ("A", "B")
    ]

    np.testing.assert_array_equal(masks["A"], labels == 1)
    np.testing.assert_array_equal(masks["B"], labels == 2)


def test_a_frame_number_on_a_classic_slice_reference_changes_nothing(tmp_path):
    """Single-frame images need no frame number; a stray or broken one is ignored as before."""
    _, stored, positions, orientation = _shuffled_volume(count=COUNT)
    (tmp_path / "classic").mkdir()
    for slot in range(COUNT):
        _write_slice(tmp_path / "classic" / f"{slot}.dcm", position=positions[slot],
                     orientation=orientation, pixels=stored[slot], pixel_spacing=SPACING)
    classic = read_dicom_series(tmp_path / "classic")
    labels = _labels(classic.shape)
    written = write_rtstruct(labels, classic, tmp_path / "rs.dcm", roi_names=["A", "B"])
    ds = pydicom.dcmread(written)
    for number, contour in enumerate(ds.ROIContourSequence[0].ContourSequence):
        contour.ContourImageSequence[0].ReferencedFrameNumber = [0, 7][number % 2]
    ds.save_as(written)

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        masks = rasterize_rtstruct(written, classic)

    np.testing.assert_array_equal(masks["A"], labels == 1)


def _seg_without_plane_positions(tmp_path, volume):
    """A SEG of ``_labels`` whose frames are placed by their source image and frame alone."""
    path = write_dicom_seg(_labels(volume.shape), volume, tmp_path / "seg.dcm", ["A", "B"])
    ds = pydicom.dcmread(path)
    for group in ds.PerFrameFunctionalGroupsSequence:
        del group.PlanePositionSequence
    return ds


def test_seg_frames_without_positions_go_on_the_frame_they_reference(tmp_path):
    pytest.importorskip("highdicom")
    _, volume, _, _ = _enhanced_ct(tmp_path)
    ds = _seg_without_plane_positions(tmp_path, volume)
    ds.save_as(tmp_path / "unplaced.dcm")
    source = ds.PerFrameFunctionalGroupsSequence[2].DerivationImageSequence[0]
    source.SourceImageSequence[0].ReferencedFrameNumber = COUNT + 4
    ds.save_as(tmp_path / "stray.dcm")

    back = read_dicom_seg(tmp_path / "unplaced.dcm", reference_series=volume)
    alone = read_dicom_seg(tmp_path / "unplaced.dcm")

    labels = _labels(volume.shape)
    np.testing.assert_array_equal(back.array, labels)
    # Without the series, one slice per referenced frame (not one per file), each a drawn one.
    drawn = [k for k in range(COUNT) if labels[k].any()]
    assert sorted(image.tobytes() for image in alone.array) == sorted(
        labels[k].astype(alone.array.dtype).tobytes() for k in drawn
    )
    with pytest.raises(AlignmentError, match=rf"stray\.dcm.* frame {COUNT + 4}, which is not"):
        read_dicom_seg(tmp_path / "stray.dcm", reference_series=volume)


def test_seg_on_part_of_an_enhanced_file_is_refused_naming_it(tmp_path):
    pytest.importorskip("highdicom")
    _, volume, _, _ = _enhanced_ct(tmp_path)
    keep = slice(0, COUNT - 1)
    part = Volume(
        volume.array[keep], volume.affine, volume.patient_id, volume.source_files[keep],
        {key: value[keep] if key in ("sop_instance_uids", "frame_numbers", "instance_numbers")
         else value for key, value in volume.metadata.items()},
    )  # fmt: skip

    with pytest.raises(ValueError, match=rf"enhanced\.dcm: .* of its {COUNT}; a SEG"):
        write_dicom_seg(_labels(part.shape), part, tmp_path / "seg.dcm", ["A", "B"])


def test_a_series_reference_needs_a_frame_number_per_slice_or_none():
    with pytest.raises(ValueError, match="2 frame numbers for 3 slices"):
        SeriesReference("P", "", "1.2", "1.3", "1.4", ("1.5",) * 3, frame_numbers=(1, 2))

def test_classic_and_enhanced_references_give_the_same_masks(tmp_path):
    """The same frames as a classic series: single-frame references without frame numbers,
    and the masks read back on either volume the same."""
    pytest.importorskip("highdicom")
    _, volume, _, _ = _enhanced_ct(tmp_path)
    _, stored, positions, orientation = _shuffled_volume(count=COUNT)  # the same frames
    (tmp_path / "classic").mkdir()
    for slot in range(COUNT):
        _write_slice(tmp_path / "classic" / f"{slot}.dcm", position=positions[slot],
                     orientation=orientation, pixels=stored[slot], pixel_spacing=SPACING)
    classic = read_dicom_series(tmp_path / "classic")
    np.testing.assert_array_equal(classic.array, volume.array)
    labels = _labels(volume.shape)

    for name, series in (("classic", classic), ("enhanced", volume)):
        seg = write_dicom_seg(labels, series, tmp_path / f"{name}.seg.dcm", ["A", "B"])
        rs = write_rtstruct(labels, series, tmp_path / f"{name}.rs.dcm", roi_names=["A", "B"])
        np.testing.assert_array_equal(read_dicom_seg(seg, reference_series=series).array, labels)
        masks = rasterize_rtstruct(rs, series)
        np.testing.assert_array_equal(masks["A"] + 2 * masks["B"], labels)
    for name in ("classic.seg.dcm", "classic.rs.dcm"):
        assert "ReferencedFrameNumber" not in str(pydicom.dcmread(tmp_path / name))


@pytest.mark.filterwarnings("ignore:The string .* person name:UserWarning")  # highdicom's
def test_real_ct_as_a_legacy_converted_enhanced_file_round_trips(shared_data, tmp_path):
    hd = pytest.importorskip("highdicom")
    folder = shared_data / "dcmqi-ct3slice" / "data" / "segmentations" / "ct-3slice"
    classic = read_dicom_series(folder)
    # In reverse slice order, so frame numbers run against the volume's slices.
    converted = hd.legacy.LegacyConvertedEnhancedCTImage(
        legacy_datasets=[pydicom.dcmread(path) for path in reversed(classic.source_files)],
        series_instance_uid=generate_uid(),
        series_number=99,
        sop_instance_uid=generate_uid(),
        instance_number=1,
    )
    (tmp_path / "ct").mkdir()
    converted.save_as(tmp_path / "ct" / "legacy.dcm")
    volume = read_dicom_series([tmp_path / "ct" / "legacy.dcm"])
    assert volume.metadata["frame_numbers"] == (3, 2, 1)
    labels = np.zeros(volume.shape, np.uint8)
    labels[0, 100:180, 120:200] = 1
    labels[1, 200:260, 300:330] = 2
    labels[2, 40:60, 40:400] = 1

    seg = write_dicom_seg(labels, volume, tmp_path / "seg.dcm", ["Liver", "Spleen"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        rs = write_rtstruct(labels, volume, tmp_path / "rs.dcm", roi_names=["Liver", "Spleen"])
        masks = rasterize_rtstruct(rs, volume)
    back = read_dicom_seg(seg, reference_series=volume)

    for value, name in ((1, "Liver"), (2, "Spleen")):
        reference = labels == value
        predicted = back.array == value
        assert 2 * (reference & predicted).sum() / (reference.sum() + predicted.sum()) == 1.0
        np.testing.assert_array_equal(masks[name], reference)
    frames = [
        int(group.DerivationImageSequence[0].SourceImageSequence[0].ReferencedFrameNumber)
        for group in pydicom.dcmread(seg).PerFrameFunctionalGroupsSequence
    ]
    assert sorted(set(frames)) == [1, 2, 3]


def test_reading_and_both_exports_leave_the_enhanced_file_as_it_was(tmp_path):
    pytest.importorskip("highdicom")
    # Per-frame groups: the SEG writer lifts them into a shared group of its own copy.
    path, volume, _, _ = _enhanced_ct(tmp_path, shared_groups=False)
    before = (path.read_bytes(), path.stat().st_mtime_ns)
    labels = _labels(volume.shape)
    write_dicom_seg(labels, volume, tmp_path / "seg.dcm", {1: "Liver", 2: "Spleen"})
    write_rtstruct(labels, volume, tmp_path / "rs.dcm", roi_names={1: "Liver", 2: "Spleen"})
    read_dicom_series([path])
    assert (path.read_bytes(), path.stat().st_mtime_ns) == before
