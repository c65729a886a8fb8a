import hashlib
import os
import pathlib
import warnings

import nibabel as nib
import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

from kseg.errors import DicomSeriesError, LayoutError, UnreadableFileError
from kseg.io import (
    SkippedFileWarning,
    UnevenSliceSpacingWarning,
    read_dicom_image,
    read_dicom_series,
)

AXIAL = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
ROWS, COLUMNS = 4, 6


def _write_slice(
    path,
    *,
    position,
    orientation=AXIAL,
    pixels=None,
    series_uid="1.2.3.4",
    instance_number=1,
    slope=1.0,
    intercept=-1024.0,
    pixel_spacing=(0.5, 0.75),
    photometric="MONOCHROME2",
    bits_stored=12,
    signed=False,
):
    pixels = np.zeros((ROWS, COLUMNS), np.uint16) if pixels is None else pixels
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = "1.2.3"
    ds.SeriesInstanceUID = series_uid
    ds.FrameOfReferenceUID = "1.2.3.9"
    ds.Modality = "CT"
    ds.PatientID = "P007"
    ds.PatientSex = "F"
    ds.InstanceNumber = instance_number
    ds.ImagePositionPatient = [float(v) for v in position]
    ds.ImageOrientationPatient = [float(v) for v in orientation]
    ds.PixelSpacing = list(pixel_spacing)
    ds.SliceThickness = 9.0  # deliberately wrong: spacing must come from the positions
    ds.RescaleSlope = slope
    ds.RescaleIntercept = intercept
    ds.WindowCenter = 40
    ds.WindowWidth = 400
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.Rows, ds.Columns = pixels.shape
    ds.BitsAllocated = 16
    ds.BitsStored = bits_stored
    ds.HighBit = bits_stored - 1
    ds.PixelRepresentation = int(signed)
    ds.PixelData = pixels.astype(np.int16 if signed else np.uint16).tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


def _oblique_geometry():
    """A tilted plane whose normal points mostly to -z (feet first), as a reversed stack has."""
    row, column = np.array([1.0, 0.0, 0.0]), np.array([0.0, -1.0, 0.0])
    axis, angle = np.array([1.0, 1.0, 0.0]) / np.sqrt(2.0), 0.4
    cross = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    rotation = np.eye(3) + np.sin(angle) * cross + (1 - np.cos(angle)) * cross @ cross
    row, column = rotation @ row, rotation @ column
    normal = np.cross(row, column)
    assert normal[2] < -0.9 and abs(normal[0]) > 0.1
    return row, column, normal


def _write_scrambled_series(folder, count=5, gap=2.5, origin=(10.0, -20.0, 30.0)):
    """Slices written in shuffled name order with InstanceNumbers that lie about the order.

    Slice at spatial rank r (along the normal) holds pixels 100 * r + marker, so the test
    can tell from the pixels alone which slice landed where.
    """
    row, column, normal = _oblique_geometry()
    rng = np.random.default_rng(4)
    names = rng.permutation([f"img{n:03d}.dcm" for n in range(count)])
    instance_numbers = rng.permutation(count) + 1
    positions = []
    for rank in range(count):
        position = np.asarray(origin) + rank * gap * normal
        pixels = np.full((ROWS, COLUMNS), 1024 + 100 * rank, np.uint16)
        pixels[1, 4] += 7  # marks row 1, column 4
        _write_slice(
            folder / names[rank],
            position=position,
            orientation=(*row, *column),
            pixels=pixels,
            instance_number=int(instance_numbers[rank]),
        )
        positions.append(position)
    return [folder / name for name in names], np.array(positions), (row, column, normal)


def _folder_digest(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def _axial_series(folder, z_positions, **kwargs):
    paths = []
    for index, z in enumerate(z_positions):
        paths.append(_write_slice(folder / f"s{index:02d}.dcm", position=(0, 0, z), **kwargs))
    return paths


def test_scrambled_oblique_series_is_ordered_by_position_and_placed_in_ras(tmp_path):
    files, positions, (row, column, normal) = _write_scrambled_series(tmp_path)
    before = _folder_digest(tmp_path)

    volume = read_dicom_series(tmp_path)

    assert _folder_digest(tmp_path) == before
    assert volume.shape == (5, ROWS, COLUMNS)
    # Pixel content proves the order: slice k holds rank k's values, marker at row 1, col 4.
    expected = np.zeros((5, ROWS, COLUMNS), np.int16)
    expected += (100 * np.arange(5, dtype=np.int16))[:, None, None]
    expected[:, 1, 4] += 7
    np.testing.assert_array_equal(volume.array, expected)
    assert volume.array.dtype == np.int16
    assert volume.source_files == tuple(str(f) for f in files)
    # DICOM PS3.3 C.7.6.2.1.1: P = S + i * row_cosine * column_spacing + j * column_cosine
    # * row_spacing, in LPS; RAS negates x and y.
    lps_to_ras = np.array([-1.0, -1.0, 1.0])
    for k in range(5):
        for j, i in [(0, 0), (3, 5), (1, 4)]:
            lps = positions[k] + i * row * 0.75 + j * column * 0.5
            world = volume.affine @ np.array([k, j, i, 1.0])
            np.testing.assert_allclose(world[:3], lps * lps_to_ras, atol=1e-6)
    np.testing.assert_allclose(volume.spacing, (2.5, 0.5, 0.75))
    assert volume.patient_id == "P007"
    assert volume.metadata["instance_numbers"] == tuple(
        int(pydicom.dcmread(f).InstanceNumber) for f in files
    )
    assert volume.metadata["sop_instance_uids"] == tuple(
        pydicom.dcmread(f).SOPInstanceUID for f in files
    )
    assert volume.metadata["modality"] == "CT"
    assert volume.metadata["patient_sex"] == "F"
    assert volume.metadata["series_instance_uid"] == "1.2.3.4"
    assert volume.metadata["study_instance_uid"] == "1.2.3"
    assert (volume.metadata["window_center"], volume.metadata["window_width"]) == (40.0, 400.0)


def test_a_list_of_files_reads_like_the_folder(tmp_path):
    files, _, _ = _write_scrambled_series(tmp_path)
    from_list = read_dicom_series(list(reversed(files)), patient_id="override")
    np.testing.assert_array_equal(from_list.array, read_dicom_series(tmp_path).array)
    assert from_list.patient_id == "override"


def test_non_integer_rescale_gives_exact_float32(tmp_path):
    stored = np.arange(ROWS * COLUMNS, dtype=np.uint16).reshape(ROWS, COLUMNS)
    for index, z in enumerate([0.0, 1.0]):
        _write_slice(
            tmp_path / f"{index}.dcm", position=(0, 0, z), pixels=stored, slope=0.5, intercept=-3
        )
    volume = read_dicom_series(tmp_path)
    assert volume.array.dtype == np.float32
    np.testing.assert_array_equal(volume.array[1], stored * 0.5 - 3)


def test_real_ct_series_matches_pydicom_and_the_nifti_grid(shared_data):
    folder = shared_data / "totalseg-ct" / "ct_dicom"
    volume = read_dicom_series(folder)

    assert volume.shape == (20, 512, 512)
    assert volume.array.dtype == np.int16
    for k, path in enumerate(volume.source_files):
        ds = pydicom.dcmread(path)
        reference = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
        np.testing.assert_array_equal(volume.array[k], reference)
    # Positions are 2 mm apart although SliceThickness says 3.
    np.testing.assert_allclose(volume.spacing, (2.0, 0.9765625, 0.9765625))

    # The segmentation NIfTI sits on the same grid: mapping our voxel centres into its index
    # space must be a signed axis permutation with an integer offset.
    seg_image = nib.load(shared_data / "totalseg-ct" / "ct_dicom_seg.nii.gz")
    to_nifti_index = np.linalg.inv(seg_image.affine) @ volume.affine
    linear, offset = to_nifti_index[:3, :3], to_nifti_index[:3, 3]
    np.testing.assert_allclose(linear, np.round(linear), atol=1e-6)
    np.testing.assert_allclose(np.abs(np.round(linear)).sum(axis=0), 1)
    np.testing.assert_allclose(offset, np.round(offset), atol=1e-4)
    corners = np.array([[k, j, i] for k in (0, 19) for j in (0, 511) for i in (0, 511)]).T
    mapped = np.round(linear) @ corners + np.round(offset)[:, None]
    assert mapped.min() == 0 and set(mapped.max(axis=1)) <= {19, 511}

    # With the grids matched, the labels must land on the right tissue: a flipped or
    # transposed pixel array would put the liver on fat or air.
    segmentation = np.asarray(seg_image.dataobj)
    index = np.indices(volume.shape).reshape(3, -1)
    nifti_index = (np.round(linear) @ index + np.round(offset)[:, None]).astype(int)
    labels = segmentation[tuple(nifti_index)].reshape(volume.shape)
    liver, vertebrae = labels == 5, np.isin(labels, (32, 33))  # TotalSegmentator v2 ids
    assert liver.sum() > 10_000 and vertebrae.sum() > 10_000
    assert 20 < volume.array[liver].mean() < 200
    assert volume.array[vertebrae].mean() > 200
    assert volume.array[labels == 0].mean() < -300


def test_real_three_slice_series_matches_pydicom(shared_data):
    folder = shared_data / "dcmqi-ct3slice" / "data" / "segmentations" / "ct-3slice"
    volume = read_dicom_series(folder)
    z = [float(pydicom.dcmread(p).ImagePositionPatient[2]) for p in volume.source_files]
    assert z == sorted(z)  # axial normal is +z: array order runs feet to head
    for k, path in enumerate(volume.source_files):
        ds = pydicom.dcmread(path)
        reference = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
        np.testing.assert_array_equal(volume.array[k], reference)
    np.testing.assert_allclose(volume.spacing, (1.0, 0.810547, 0.810547), atol=1e-5)
    assert volume.metadata["patient_sex"] == "M"


def test_several_series_need_a_choice(tmp_path):
    _axial_series(tmp_path, [0.0, 1.0, 2.0], series_uid="1.2.3.4")
    _write_slice(tmp_path / "other.dcm", position=(0, 0, 0), series_uid="9.8.7")
    with pytest.raises(DicomSeriesError) as raised:
        read_dicom_series(tmp_path)
    message = str(raised.value)
    assert "1.2.3.4 (3 files)" in message and "9.8.7 (1 files)" in message
    assert str(tmp_path) in message
    assert read_dicom_series(tmp_path, series_uid="1.2.3.4").shape[0] == 3
    with pytest.raises(DicomSeriesError, match="5.5.5 not found"):
        read_dicom_series(tmp_path, series_uid="5.5.5")


def test_one_uid_per_slice_reads_when_told_to_ignore_uids(tmp_path):
    for index, z in enumerate([0.0, 1.0, 2.0]):
        _write_slice(tmp_path / f"{index}.dcm", position=(0, 0, z), series_uid=f"1.2.{index}")
    with pytest.raises(DicomSeriesError, match="3 series"):
        read_dicom_series(tmp_path)
    assert read_dicom_series(tmp_path, ignore_series_uid=True).shape == (3, ROWS, COLUMNS)


def test_duplicate_position_names_both_files(tmp_path):
    a, b, *_ = _axial_series(tmp_path, [1.0, 1.0, 2.0])
    with pytest.raises(DicomSeriesError) as raised:
        read_dicom_series(tmp_path)
    assert a.name in str(raised.value) and b.name in str(raised.value)


def test_missing_slice_is_an_error_naming_the_files_around_the_gap(tmp_path):
    paths = _axial_series(tmp_path, [0.0, 2.0, 4.0, 8.0, 10.0])
    with pytest.raises(DicomSeriesError, match="missing") as raised:
        read_dicom_series(tmp_path)
    assert paths[2].name in str(raised.value) and paths[3].name in str(raised.value)


def test_slightly_uneven_gaps_warn_and_name_the_files(tmp_path):
    paths = _axial_series(tmp_path, [0.0, 2.0, 4.3, 6.3])
    with pytest.warns(UnevenSliceSpacingWarning) as record:
        volume = read_dicom_series(tmp_path)
    message = str(record[0].message)
    assert paths[1].name in message and paths[2].name in message
    np.testing.assert_allclose(volume.spacing[0], 6.3 / 3)


def test_non_dicom_files_are_skipped_with_a_warning(tmp_path):
    _axial_series(tmp_path, [0.0, 1.0])
    (tmp_path / "notes.txt").write_text("scanned on Tuesday\n")
    (tmp_path / "Thumbs.db").write_bytes(bytes(range(256)) * 4)
    directory = Dataset()
    directory.file_meta = FileMetaDataset()
    directory.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.1.3.10"
    directory.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    directory.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    directory.SOPClassUID = "1.2.840.10008.1.3.10"
    directory.FileSetID = "CHAOS"
    directory.save_as(tmp_path / "DICOMDIR", enforce_file_format=True)
    (tmp_path / "sub").mkdir()  # folders are not read

    with pytest.warns(SkippedFileWarning) as record:
        volume = read_dicom_series(tmp_path)
    assert volume.shape == (2, ROWS, COLUMNS)
    message = str(record[0].message)
    for name in ("notes.txt", "Thumbs.db", "DICOMDIR"):
        assert name in message


def test_dicom_without_preamble_is_still_read(tmp_path):
    paths = _axial_series(tmp_path, [0.0, 1.0, 2.0], pixels=np.full((ROWS, COLUMNS), 5, np.uint16))
    dataset = pydicom.dcmread(paths[1])
    dataset.preamble = None
    del dataset.file_meta
    pydicom.dcmwrite(paths[1], dataset, enforce_file_format=False, implicit_vr=True)
    assert paths[1].read_bytes()[128:132] != b"DICM"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        volume = read_dicom_series(tmp_path)
    np.testing.assert_array_equal(volume.array, np.full((3, ROWS, COLUMNS), 5 - 1024))


def test_truncated_pixel_data_is_unreadable_and_named(tmp_path):
    paths = _axial_series(tmp_path, [0.0, 1.0, 2.0])
    data = paths[1].read_bytes()
    paths[1].write_bytes(data[: len(data) - 20])
    with pytest.raises(UnreadableFileError) as raised:
        read_dicom_series(tmp_path)
    assert paths[1].name in str(raised.value)


@pytest.mark.parametrize(
    "change, expected",
    [
        ({"orientation": (0.0, 1.0, 0.0, 0.0, 0.0, -1.0)}, "ImageOrientationPatient"),
        ({"pixel_spacing": (0.6, 0.75)}, "PixelSpacing"),
        ({"pixels": np.zeros((5, COLUMNS), np.uint16)}, "pixels"),
    ],
)
def test_inconsistent_slice_is_named(tmp_path, change, expected):
    _axial_series(tmp_path, [0.0, 1.0])
    odd = _write_slice(tmp_path / "odd.dcm", position=(0, 0, 2.0), **change)
    with pytest.raises(DicomSeriesError, match=expected) as raised:
        read_dicom_series(tmp_path)
    assert odd.name in str(raised.value)


def test_missing_position_is_named(tmp_path):
    _axial_series(tmp_path, [0.0, 1.0])
    broken = _write_slice(tmp_path / "broken.dcm", position=(0, 0, 2.0))
    ds = pydicom.dcmread(broken)
    del ds.ImagePositionPatient
    ds.save_as(broken)
    with pytest.raises(DicomSeriesError, match="ImagePositionPatient") as raised:
        read_dicom_series(tmp_path)
    assert "broken.dcm" in str(raised.value)


def test_folders_without_images_are_layout_errors(tmp_path):
    with pytest.raises(LayoutError, match="does not exist"):
        read_dicom_series(tmp_path / "absent")
    (tmp_path / "InPhase").mkdir()
    with pytest.raises(LayoutError, match="InPhase"):
        read_dicom_series(tmp_path)
    (tmp_path / "readme.txt").write_text("no images here")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SkippedFileWarning)
        with pytest.raises(LayoutError, match="no DICOM image"):
            read_dicom_series(tmp_path)


@pytest.mark.parametrize("photometric", ["MONOCHROME1", "MONOCHROME2"])
def test_radiograph_is_rescaled_and_brighter_is_higher(tmp_path, photometric):
    stored = np.array([[0, 100, 4095], [7, 2048, 1]], np.uint16)
    path = _write_slice(
        tmp_path / "cxr.dcm",
        position=(0, 0, 0),
        pixels=stored,
        photometric=photometric,
        slope=2.0,
        intercept=10.0,
    )
    image = read_dicom_image(path)
    # 12 stored bits: MONOCHROME1 value v shows as 4095 - v on a MONOCHROME2 display.
    shown = 4095 - stored.astype(np.int64) if photometric == "MONOCHROME1" else stored
    np.testing.assert_array_equal(image, shown * 2.0 + 10.0)
    assert image.dtype == np.float32


def test_radiograph_reader_rejects_non_dicom(tmp_path):
    path = tmp_path / "image.dcm"
    path.write_text("not an image")
    with pytest.raises(UnreadableFileError, match="image.dcm"):
        read_dicom_image(path)


def test_input_paths_may_be_str_or_pathlike(tmp_path):
    _axial_series(tmp_path, [0.0, 1.0])
    assert (
        read_dicom_series(os.fspath(tmp_path)).shape
        == read_dicom_series(pathlib.Path(tmp_path)).shape
    )
