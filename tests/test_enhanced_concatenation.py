"""An Enhanced CT split into a Concatenation (PS3.3 C.7.6.16.2.2) reads as the one image it is.

The concatenations are made here with pydicom from an Enhanced file written by
tests/test_io_enhanced_dicom.py's writer (frames shuffled against their spatial order, so each
instance holds frames from all over the stack), or converted by highdicom from the real
TotalSegmentator series: each instance takes a run of the source's frames, its pixel bytes and
per-frame groups, with ConcatenationFrameOffsetNumber the count of frames before it. The
reference is the source file read alone and the same frames as classic slices.
"""

import warnings

import numpy as np
import pydicom
import pytest
from pydicom.uid import generate_uid
from test_enhanced_references import _frame_of_plane, _labels, _seg_without_plane_positions
from test_io_dicom import _write_slice
from test_io_enhanced_dicom import SPACING, _shuffled_volume, _write_enhanced

import kseg.io.dicom
from kseg.errors import DicomSeriesError
from kseg.io import (
    deidentify,
    rasterize_rtstruct,
    read_dicom_seg,
    read_dicom_series,
    write_dicom_seg,
    write_rtstruct,
)
from kseg.io.dicom import ImageSlices

COUNT = 5


def _split(source, folder, sizes, *, names=None, total=True):
    """Write ``source``'s frames as a concatenation of len(sizes) instances into ``folder``,
    instance n holding the next sizes[n - 1] frames; files named ``names`` (default: in
    reverse of InConcatenationNumber, so listing order is no guide). Returns the paths in
    InConcatenationNumber order."""
    whole = pydicom.dcmread(source)
    folder.mkdir(exist_ok=True)
    frame_bytes = whole.Rows * whole.Columns * whole.BitsAllocated // 8
    concatenation_uid = generate_uid()
    names = names or [f"{len(sizes) - n}.dcm" for n in range(len(sizes))]
    paths, offset = [], 0
    for number, (size, name) in enumerate(zip(sizes, names, strict=True), start=1):
        part = pydicom.dcmread(source)
        part.SOPInstanceUID = part.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        part.ConcatenationUID = concatenation_uid
        part.SOPInstanceUIDOfConcatenationSource = whole.SOPInstanceUID
        part.InConcatenationNumber = number
        if total:
            part.InConcatenationTotalNumber = len(sizes)
        part.ConcatenationFrameOffsetNumber = offset
        part.NumberOfFrames = size
        part.PerFrameFunctionalGroupsSequence = whole.PerFrameFunctionalGroupsSequence[
            offset : offset + size
        ]
        part.PixelData = whole.PixelData[offset * frame_bytes : (offset + size) * frame_bytes]
        part.save_as(folder / name, enforce_file_format=True)
        paths.append(folder / name)
        offset += size
    return paths


def _enhanced(tmp_path, **options):
    """A shuffled Enhanced CT of COUNT frames (not in ``ct/``) and its frames' positions."""
    _, stored, positions, orientation = _shuffled_volume(count=COUNT)
    path = _write_enhanced(
        tmp_path / "whole.dcm", stored, positions, orientation=orientation, **options
    )
    return path, positions


def _unchanged(paths):
    return [(path.read_bytes(), path.stat().st_mtime_ns) for path in paths]


@pytest.mark.parametrize("shared_groups", [True, False], ids=["shared", "per-frame"])
def test_concatenation_reads_like_its_source_file_and_the_classic_series(
    tmp_path, monkeypatch, shared_groups
):
    source, positions = _enhanced(tmp_path, shared_groups=shared_groups)
    paths = _split(source, tmp_path / "ct", (2, 1, 2))
    before = _unchanged(paths)
    _, stored, _, orientation = _shuffled_volume(count=COUNT)
    (tmp_path / "classic").mkdir()
    for slot in range(COUNT):
        _write_slice(
            tmp_path / "classic" / f"{slot}.dcm", position=positions[slot],
            orientation=orientation, pixels=stored[slot], pixel_spacing=SPACING,
        )  # fmt: skip

    decoded = []
    read_vetted_file = kseg.io.dicom._read_vetted_file
    monkeypatch.setattr(kseg.io.dicom, "_read_vetted_file",
                        lambda path: decoded.append(path) or read_vetted_file(path))  # fmt: skip
    volume = read_dicom_series(tmp_path / "ct")
    monkeypatch.undo()
    whole = read_dicom_series([source])
    classic = read_dicom_series(tmp_path / "classic")

    for reference in (whole, classic):
        np.testing.assert_array_equal(volume.array, reference.array)
        np.testing.assert_allclose(volume.affine, reference.affine, atol=1e-9)
    assert _unchanged(paths) == before
    # Slices alternate between the files (1, 2, 3, 1, 3 here), yet each is decoded once.
    assert len(set(volume.source_files[:3])) == 3 and sorted(decoded) == sorted(map(str, paths))
    # Each slice names its own instance and the frame within it, and the source's frame.
    instance_of = {pydicom.dcmread(p).SOPInstanceUID: (str(p), n) for n, p in enumerate(paths)}
    offsets = (0, 2, 3)
    for k in range(COUNT):
        path, n = instance_of[volume.metadata["sop_instance_uids"][k]]
        assert volume.source_files[k] == path
        frame = volume.metadata["frame_numbers"][k]
        assert volume.metadata["source_frame_numbers"][k] == offsets[n] + frame
        assert volume.metadata["source_frame_numbers"][k] == whole.metadata["frame_numbers"][k]
    assert volume.metadata["concatenation_source_uid"] == pydicom.dcmread(source).SOPInstanceUID


def _refusal(folder):
    with pytest.raises(DicomSeriesError) as caught:
        read_dicom_series(folder)
    return str(caught.value)


@pytest.mark.parametrize("total", [True, False], ids=["with-total", "without-total"])
def test_a_concatenation_missing_an_instance_is_refused_naming_it(tmp_path, total):
    source, _ = _enhanced(tmp_path)
    paths = _split(source, tmp_path / "ct", (2, 1, 2), total=total)
    uid = pydicom.dcmread(paths[0]).ConcatenationUID
    paths[1].unlink()

    message = _refusal(tmp_path / "ct")

    assert message.startswith(str(tmp_path / "ct"))
    assert f"concatenation {uid}" in message and "incomplete" in message
    assert "InConcatenationNumber [1, 3]; missing [2]" in message


def test_a_concatenation_missing_its_last_instance_is_refused_by_its_total(tmp_path):
    source, _ = _enhanced(tmp_path)
    paths = _split(source, tmp_path / "ct", (2, 1, 2))
    paths[2].unlink()

    assert "it has 3 instances" in _refusal(tmp_path / "ct")
    assert "missing [3]" in _refusal(tmp_path / "ct")


def test_one_instance_read_alone_is_refused_as_part_of_a_concatenation(tmp_path):
    source, _ = _enhanced(tmp_path)
    paths = _split(source, tmp_path / "ct", (2, 1, 2))

    with pytest.raises(DicomSeriesError, match=r"InConcatenationNumber \[3\]; missing \[1, 2\]"):
        read_dicom_series([paths[2]])


def test_an_instance_missing_a_frame_is_refused_by_the_frame_offsets(tmp_path):
    source, _ = _enhanced(tmp_path)
    paths = _split(source, tmp_path / "ct", (2, 1, 2))
    first = pydicom.dcmread(paths[0])
    first.NumberOfFrames = 1
    first.PerFrameFunctionalGroupsSequence = first.PerFrameFunctionalGroupsSequence[:1]
    first.PixelData = first.PixelData[: len(first.PixelData) // 2]
    first.save_as(paths[0])

    message = _refusal(tmp_path / "ct")

    assert f"{paths[1]} (InConcatenationNumber 2) starts at ConcatenationFrameOffsetNumber 2" in (
        message
    )
    assert "the instances before it hold 1 frames" in message


def test_an_instance_given_twice_is_refused_naming_both_files(tmp_path):
    source, _ = _enhanced(tmp_path)
    paths = _split(source, tmp_path / "ct", (2, 1, 2))
    twin = pydicom.dcmread(paths[1])
    twin.SOPInstanceUID = twin.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    twin.save_as(tmp_path / "ct" / "twin.dcm")

    message = _refusal(tmp_path / "ct")

    assert "both have InConcatenationNumber 2" in message and "twin.dcm" in message


@pytest.mark.parametrize(
    "keyword, value",
    [("SOPInstanceUIDOfConcatenationSource", "1.2.3.4.5"), ("InConcatenationTotalNumber", 4)],
)
def test_instances_disagreeing_on_their_concatenation_are_refused(tmp_path, keyword, value):
    source, _ = _enhanced(tmp_path)
    paths = _split(source, tmp_path / "ct", (2, 1, 2))
    stray = pydicom.dcmread(paths[2])
    setattr(stray, keyword, value)
    stray.save_as(paths[2])

    assert f"its files disagree on {keyword}" in _refusal(tmp_path / "ct")


def test_stacks_split_across_the_instances_are_refused_as_several_volumes(tmp_path):
    """Each instance alone is one stack; the concatenation is two."""
    stacks = [{"StackID": "1"}] * 2 + [{"StackID": "2"}] * 3
    source, _ = _enhanced(tmp_path, frame_contents=stacks)
    _split(source, tmp_path / "ct", (2, 3))

    message = _refusal(tmp_path / "ct")

    assert "is not one volume" in message and "5 frames in 2 files hold 2 stacks" in message


def test_two_enhanced_images_of_one_series_are_refused_listing_both(tmp_path):
    (tmp_path / "ct").mkdir()
    _, stored, positions, orientation = _shuffled_volume(count=COUNT)
    first = _write_enhanced(tmp_path / "ct" / "a.dcm", stored, positions, orientation=orientation)
    second = _write_enhanced(
        tmp_path / "ct" / "b.dcm", stored, positions + 100, orientation=orientation
    )
    parts = _split(first, tmp_path / "ct", (3, 2), names=["c1.dcm", "c2.dcm"])

    message = _refusal(tmp_path / "ct")

    assert "holds 3 Enhanced multi-frame images in one series" in message
    for path in (first, second, *parts):
        assert str(path) in message
    assert "pass the list of one image's files" in message
    # ... which reads each alone.
    np.testing.assert_array_equal(
        read_dicom_series(parts).array, read_dicom_series([first]).array
    )


def test_a_concatenation_beside_a_classic_slice_is_refused_naming_it(tmp_path):
    source, positions = _enhanced(tmp_path)
    paths = _split(source, tmp_path / "ct", (2, 3))
    _write_slice(tmp_path / "ct" / "classic.dcm", position=positions[0] + 50)

    message = _refusal(tmp_path / "ct")

    assert f"is concatenation {pydicom.dcmread(paths[0]).ConcatenationUID} of 2 files" in message
    assert "also holds 1 other image file(s)" in message and "classic.dcm" in message


# --- references -------------------------------------------------------------------------------


def test_slices_are_found_by_instance_frame_and_by_source_frame(tmp_path):
    source, positions = _enhanced(tmp_path)
    paths = _split(source, tmp_path / "ct", (2, 1, 2))
    volume = read_dicom_series(tmp_path / "ct")
    source_uid = pydicom.dcmread(source).SOPInstanceUID
    # The slice at each source frame's position, from the affine (LPS -> RAS, then index).
    to_index = np.linalg.inv(volume.affine)
    slice_at = [
        int(round((to_index @ [-x, -y, z, 1.0])[0])) for x, y, z in positions
    ]  # source frame f + 1 lies on slice slice_at[f]

    slices = ImageSlices(volume)
    for number, (path, offset) in enumerate(zip(paths, (0, 2, 3), strict=True)):
        uid = pydicom.dcmread(path).SOPInstanceUID
        for frame in range(1, (2, 1, 2)[number] + 1):
            assert slices.slice_of(uid, frame) == slice_at[offset + frame - 1]
    for frame in range(1, COUNT + 1):
        assert slices.slice_of(source_uid, frame) == slice_at[frame - 1]
    assert slices.slice_of(source_uid, COUNT + 1) is None


def _concatenation_and_seg_of_its_source(tmp_path):
    """A concatenation in ``ct/`` and a SEG of ``_labels`` drawn on its source file before the
    split, its frames placed by the source frame they reference alone: (source, the
    concatenation's paths, its volume, the SEG dataset)."""
    pytest.importorskip("highdicom")
    source, _ = _enhanced(tmp_path)
    paths = _split(source, tmp_path / "ct", (2, 1, 2))
    volume = read_dicom_series(tmp_path / "ct")
    seg = _seg_without_plane_positions(tmp_path, read_dicom_series([source]))
    return source, paths, volume, seg


def test_a_seg_referencing_the_source_or_the_instances_lands_on_the_right_slices(tmp_path):
    _, paths, volume, seg = _concatenation_and_seg_of_its_source(tmp_path)
    seg.save_as(tmp_path / "by-source.dcm")
    # The same SEG referencing each frame's instance and its number there instead.
    instances = [(pydicom.dcmread(p).SOPInstanceUID, offset)
                 for p, offset in zip(paths, (0, 2, 3), strict=True)]  # fmt: skip
    for group in seg.PerFrameFunctionalGroupsSequence:
        (reference,) = group.DerivationImageSequence[0].SourceImageSequence
        frame = int(reference.ReferencedFrameNumber)
        uid, offset = next((u, o) for u, o in reversed(instances) if o < frame)
        reference.ReferencedSOPInstanceUID, reference.ReferencedFrameNumber = uid, frame - offset
    seg.save_as(tmp_path / "by-instance.dcm")

    for name in ("by-source.dcm", "by-instance.dcm"):
        back = read_dicom_seg(tmp_path / name, reference_series=volume)
        np.testing.assert_array_equal(back.array, _labels(volume.shape))


def test_an_rtstruct_on_a_concatenation_references_instances_and_rasterizes_back(tmp_path):
    source, positions = _enhanced(tmp_path)
    paths = _split(source, tmp_path / "ct", (2, 1, 2))
    volume = read_dicom_series(tmp_path / "ct")
    labels = _labels(volume.shape)

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a contour placed by position alone would warn
        written = write_rtstruct(labels, volume, tmp_path / "rs.dcm", roi_names=["A", "B"])
        masks = rasterize_rtstruct(written, volume)

    np.testing.assert_array_equal(masks["A"] + 2 * masks["B"], labels)
    # Plain pydicom: each contour names the instance holding its plane's frame, and the
    # frame's number within that instance.
    instance = {pydicom.dcmread(p).SOPInstanceUID: offset
                for p, offset in zip(paths, (0, 2, 3), strict=True)}  # fmt: skip
    normal = np.cross(*np.reshape(_shuffled_volume(count=COUNT)[3], (2, 3)))
    rs = pydicom.dcmread(written)
    for roi in rs.ROIContourSequence:
        for contour in roi.ContourSequence:
            (image,) = contour.ContourImageSequence
            points = np.reshape(np.array(contour.ContourData, float), (-1, 3))
            offset = instance[image.ReferencedSOPInstanceUID]
            assert offset + int(image.ReferencedFrameNumber) == _frame_of_plane(
                positions, normal, points
            )


def test_a_seg_on_a_concatenation_is_refused_pointing_at_rtstruct(tmp_path):
    """highdicom takes one multi-frame source image: the refusal says what does work."""
    source, _ = _enhanced(tmp_path)
    _split(source, tmp_path / "ct", (2, 3))
    volume = read_dicom_series(tmp_path / "ct")

    with pytest.raises(ValueError, match="frames of 2 files .*Concatenation, write_rtstruct"):
        write_dicom_seg(_labels(volume.shape), volume, tmp_path / "seg.dcm",
                        segment_names={1: "A", 2: "B"})  # fmt: skip
    assert not (tmp_path / "seg.dcm").exists()


@pytest.mark.filterwarnings("ignore:The string .* person name:UserWarning")  # highdicom's
def test_real_series_as_a_concatenation_reads_like_the_classic_series(shared_data, tmp_path):
    hd = pytest.importorskip("highdicom")
    folder = shared_data / "totalseg-ct" / "ct_dicom"
    if not folder.is_dir():
        pytest.skip("totalseg-ct/ct_dicom not in the shared data")
    classic = read_dicom_series(folder)
    # In reverse slice order, so source frame numbers run against the volume's slices;
    # decompressed (the split cuts native pixel data) and with the SOP class an anonymiser
    # blanked, which highdicom checks.
    slices = [pydicom.dcmread(path) for path in reversed(classic.source_files)]
    for ds in slices:
        ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID
        ds.decompress()
    hd.legacy.LegacyConvertedEnhancedCTImage(
        legacy_datasets=slices,
        series_instance_uid=generate_uid(),
        series_number=99,
        sop_instance_uid=generate_uid(),
        instance_number=1,
    ).save_as(tmp_path / "whole.dcm")
    paths = _split(tmp_path / "whole.dcm", tmp_path / "ct", (7, 7, 6))
    before = _unchanged(paths)

    volume = read_dicom_series(tmp_path / "ct")
    whole = read_dicom_series([tmp_path / "whole.dcm"])

    for reference in (whole, classic):
        np.testing.assert_array_equal(volume.array, reference.array)
        np.testing.assert_allclose(volume.affine, reference.affine, atol=1e-6)
    assert volume.metadata["source_frame_numbers"] == tuple(range(20, 0, -1))
    assert _unchanged(paths) == before


def test_deidentified_concatenation_still_reads_as_one_image_and_its_seg_lands(tmp_path):
    source, paths, original, seg = _concatenation_and_seg_of_its_source(tmp_path)
    seg.save_as(tmp_path / "ct" / "seg.dcm")
    source_uid = pydicom.dcmread(source).SOPInstanceUID

    deidentify(tmp_path / "ct", tmp_path / "deid", secret=b"k" * 32, progress=False)
    files = sorted((tmp_path / "deid").rglob("*.dcm"))
    headers = {path: pydicom.dcmread(path, stop_before_pixels=True) for path in files}
    (seg_path,) = [path for path, h in headers.items() if h.Modality == "SEG"]
    images = [path for path in files if path != seg_path]
    volume = read_dicom_series(images)

    np.testing.assert_array_equal(volume.array, original.array)
    new = [headers[path] for path in images]
    assert len({h.ConcatenationUID for h in new}) == 1
    assert new[0].ConcatenationUID != pydicom.dcmread(paths[0]).ConcatenationUID
    assert {h.SOPInstanceUIDOfConcatenationSource for h in new} != {source_uid}
    back = read_dicom_seg(seg_path, reference_series=volume)
    np.testing.assert_array_equal(back.array, _labels(volume.shape))
