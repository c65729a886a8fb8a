import gzip
import os
import tracemalloc
import warnings

import nibabel as nib
import numpy as np
import pytest

from kseg.errors import GeometryError, MaskError, UnreadableFileError
from kseg.io import Volume, read_nifti, read_nifti_labels, write_nifti
from kseg.io.nifti import FormMismatchWarning, NonFiniteVoxelWarning, UnknownOrientationWarning


def _sheared_volume(dtype=np.int16):
    """Oblique, anisotropic, sheared (gantry-tilt-like) geometry: any axis mix-up shows."""
    rng = np.random.default_rng(1)
    array = rng.integers(-1000, 1000, size=(3, 4, 5)).astype(dtype)
    affine = np.array(
        [
            [0.1, 0.0, -0.7, 12.0],
            [0.3, -0.8, 0.05, -40.0],
            [2.5, 0.2, 0.0, 101.5],
            [0.0, 0.0, 0.0, 1.0],
        ]
    )
    return Volume(array=array, affine=affine, patient_id="case7")


def test_read_matches_nibabel_voxel_for_voxel(shared_data):
    path = shared_data / "totalseg-ct" / "example_ct_sm.nii.gz"
    reference = nib.load(path)
    data = np.asarray(reference.dataobj)

    volume = read_nifti(path)

    assert volume.shape == data.shape[::-1] == (30, 101, 122)
    assert volume.array.dtype == data.dtype == np.int16
    assert volume.patient_id == "example_ct_sm"
    assert volume.source_files == (str(path),)
    for k, j, i in [(0, 0, 0), (29, 100, 121), (7, 50, 3), (12, 1, 99)]:
        assert volume.array[k, j, i] == data[i, j, k]
        np.testing.assert_allclose(
            volume.affine @ [k, j, i, 1], reference.affine @ [i, j, k, 1], atol=1e-9
        )
    np.testing.assert_allclose(volume.spacing, (3.0, 3.0, 3.0))
    assert read_nifti(path, patient_id="p1").patient_id == "p1"


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii"])
def test_round_trip_keeps_array_affine_and_dtype(tmp_path, suffix):
    volume = _sheared_volume()
    path = tmp_path / f"case7{suffix}"
    write_nifti(volume, path)
    assert sorted(os.listdir(tmp_path)) == [path.name]  # no temporary file left behind

    back = read_nifti(path)
    np.testing.assert_array_equal(back.array, volume.array)
    assert back.array.dtype == np.int16
    np.testing.assert_allclose(back.affine, volume.affine, atol=1e-6)
    # Independent of kseg's reader: nibabel sees the same voxel at the same world point.
    stored = nib.load(path)
    np.testing.assert_allclose(stored.affine @ [4, 2, 1, 1], volume.affine @ [1, 2, 4, 1])
    assert np.asarray(stored.dataobj)[4, 2, 1] == volume.array[1, 2, 4]


def test_boolean_and_int64_arrays_are_stored_in_nifti_types(tmp_path):
    base = _sheared_volume()
    write_nifti(base.with_array(base.array > 0), tmp_path / "mask.nii.gz")
    mask = read_nifti(tmp_path / "mask.nii.gz")
    assert mask.array.dtype == np.uint8
    np.testing.assert_array_equal(mask.array, base.array > 0)

    write_nifti(base.with_array(base.array.astype(np.int64)), tmp_path / "labels.nii.gz")
    labels = read_nifti(tmp_path / "labels.nii.gz")
    assert labels.array.dtype == np.int32
    np.testing.assert_array_equal(labels.array, base.array)


def test_failed_write_leaves_the_old_file_and_no_temporary(tmp_path, monkeypatch):
    path = tmp_path / "case.nii.gz"
    write_nifti(_sheared_volume(), path)
    before = path.read_bytes()

    def disk_full(image, file_map):  # part of the file written, then the disk fills up
        file_map["image"].fileobj.write(b"\x00" * 100)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(nib.Nifti1Image, "to_file_map", disk_full)
    with pytest.raises(OSError, match="No space"):
        write_nifti(_sheared_volume(np.float32), path)
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["case.nii.gz"]
    with pytest.raises(ValueError, match=r"\.nii"):
        write_nifti(_sheared_volume(), tmp_path / "case.nrrd")


def test_metre_units_are_converted_to_millimetres(tmp_path):
    image = nib.Nifti1Image(np.zeros((2, 3, 4), np.float32), np.diag([0.002, 0.003, 0.004, 1]))
    image.header.set_xyzt_units("meter")
    nib.save(image, tmp_path / "metres.nii")
    np.testing.assert_allclose(read_nifti(tmp_path / "metres.nii").spacing, (4.0, 3.0, 2.0))


def test_not_nifti_and_4d_are_unreadable(tmp_path):
    (tmp_path / "fake.nii.gz").write_bytes(b"not a nifti")
    with pytest.raises(UnreadableFileError, match="fake.nii.gz"):
        read_nifti(tmp_path / "fake.nii.gz")
    nib.save(nib.Nifti1Image(np.zeros((2, 3, 4, 2), np.float32), np.eye(4)), tmp_path / "4d.nii")
    with pytest.raises(UnreadableFileError, match="3D"):
        read_nifti(tmp_path / "4d.nii")


# --- malformed files: a kseg error naming the file, or a documented warning -----------------


def _valid_nifti(path, data=None, zooms=(2.0, 3.0, 4.0)):
    data = np.arange(24, dtype=np.float32).reshape(2, 3, 4) if data is None else data
    image = nib.Nifti1Image(data, np.diag([*zooms, 1.0]))
    image.set_qform(np.diag([*zooms, 1.0]), code=1)
    image.set_sform(np.diag([*zooms, 1.0]), code=1)
    nib.save(image, path)
    return path


def _patch_header(path, **fields):
    """Rewrite NIfTI-1 header fields in place, byte for byte, without nibabel's checks."""
    raw = bytearray(path.read_bytes())
    header = np.frombuffer(bytes(raw[:348]), dtype=nib.nifti1.header_dtype).copy()
    for name, value in fields.items():
        header[name] = value
    raw[:348] = header.tobytes()
    path.write_bytes(bytes(raw))
    return path


def _unchanged_after(path, call):
    before = path.read_bytes()
    try:
        return call()
    finally:
        assert path.read_bytes() == before


def test_non_finite_voxels_warn_with_counts_and_are_returned_as_stored(tmp_path):
    data = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    data[0, 1, 2] = np.nan
    data[1, 2, 3] = np.nan
    data[1, 0, 0] = np.inf
    data[0, 0, 1] = -np.inf
    path = _valid_nifti(tmp_path / "nan.nii.gz", data)
    with pytest.warns(NonFiniteVoxelWarning, match=r"4 of 24 voxels.*2 NaN, 1 \+inf, 1 -inf"):
        volume = _unchanged_after(path, lambda: read_nifti(path))
    np.testing.assert_array_equal(volume.array, data.transpose(2, 1, 0))  # NaN == NaN here
    np.testing.assert_allclose(volume.spacing, (4.0, 3.0, 2.0))


@pytest.mark.parametrize(
    "fields, needle",
    [
        ({"srow_y": [0.0, 0.0, 0.0, 0.0]}, "singular"),  # zero spacing along y
        ({"srow_y": [2.0, 0.0, 0.0, 0.0]}, "singular"),  # y axis parallel to x
        ({"srow_x": [np.nan, 0.0, 0.0, 0.0]}, "NaN"),
        ({"srow_z": [0.0, 0.0, 4.0, np.inf]}, "NaN or infinity"),
        ({"sform_code": 0, "quatern_b": np.nan}, "qform"),
        ({"sform_code": 0, "pixdim": [1.0, 2.0, 0.0, 4.0, 1, 1, 1, 1]}, "pixdim"),
        ({"sform_code": 0, "pixdim": [1.0, 2.0, np.nan, 4.0, 1, 1, 1, 1]}, "pixdim"),
        ({"sform_code": 0, "qform_code": 0, "pixdim": [1.0, 0.0, 3.0, 4.0, 1, 1, 1, 1]}, "pixdim"),
        ({"sform_code": 0, "pixdim": [1.0, -2.0, 3.0, 4.0, 1, 1, 1, 1]}, "pixdim"),
        ({"sform_code": 7170}, "sform_code 7170"),  # nibabel would fall back to the qform
        ({"qform_code": 169}, "qform_code 169"),
    ],
)
def test_singular_or_non_finite_affines_are_geometry_errors(tmp_path, fields, needle):
    path = _patch_header(_valid_nifti(tmp_path / "bad.nii"), **fields)
    with pytest.raises(GeometryError, match=needle) as raised:
        _unchanged_after(path, lambda: read_nifti(path))
    assert "bad.nii" in str(raised.value)


def test_no_sform_and_no_qform_warns_and_keeps_the_voxel_sizes(tmp_path):
    path = _patch_header(_valid_nifti(tmp_path / "method1.nii"), sform_code=0, qform_code=0)
    with pytest.warns(UnknownOrientationWarning, match="method1.nii"):
        volume = read_nifti(path)
    np.testing.assert_allclose(volume.spacing, (4.0, 3.0, 2.0))
    assert volume.metadata["sform_code"] == volume.metadata["qform_code"] == 0


def test_qform_only_is_read_without_warning(tmp_path):
    path = _patch_header(_valid_nifti(tmp_path / "q.nii"), sform_code=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        volume = read_nifti(path)
    # kseg's affine takes (k, j, i): its first column is NIfTI's third axis.
    np.testing.assert_allclose(volume.affine[:3, :3], np.diag([2.0, 3.0, 4.0])[:, ::-1])


def test_sform_and_qform_that_disagree_warn_and_the_sform_is_used(tmp_path):
    data = np.arange(24, dtype=np.int16).reshape(2, 3, 4)
    sform = np.diag([2.0, 3.0, 4.0, 1.0])
    qform = np.diag([-2.0, -3.0, 4.0, 1.0])
    qform[:3, 3] = [50.0, 60.0, 0.0]
    image = nib.Nifti1Image(data, sform)
    image.set_sform(sform, code=1)
    image.set_qform(qform, code=1)
    nib.save(image, tmp_path / "both.nii.gz")
    # ITK-based readers take the qform here: 60 mm and a flip away from what nibabel reads.
    with pytest.warns(FormMismatchWarning, match=r"both\.nii\.gz.*up to 60 mm"):
        volume = read_nifti(tmp_path / "both.nii.gz")
    np.testing.assert_allclose(volume.affine, sform[:, [2, 1, 0, 3]])

    image.set_qform(sform, code=1)
    nib.save(image, tmp_path / "agree.nii.gz")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        read_nifti(tmp_path / "agree.nii.gz")


@pytest.mark.parametrize(
    "change, needle",
    [
        ("empty dimension", "empty dimension"),
        ("cut short", "cannot be read"),
        ("rgb", "RGB"),
        ("complex", "complex"),
        ("units", "xyzt_units"),
    ],
)
def test_malformed_data_are_unreadable_and_named(tmp_path, change, needle):
    path = tmp_path / "case.nii"
    if change == "empty dimension":
        _patch_header(_valid_nifti(path), dim=[3, 2, 0, 4, 1, 1, 1, 1])
    elif change == "cut short":
        _valid_nifti(path, np.zeros((20, 20, 20), np.float32))
        path.write_bytes(path.read_bytes()[:5000])
    elif change == "units":
        _patch_header(_valid_nifti(path), xyzt_units=5)  # 5 is no space or time unit code
    elif change == "rgb":
        rgb = np.zeros((2, 3, 4), dtype=[("R", "u1"), ("G", "u1"), ("B", "u1")])
        nib.save(nib.Nifti1Image(rgb, np.eye(4)), path)
    else:
        nib.save(nib.Nifti1Image(np.zeros((2, 3, 4), np.complex64), np.eye(4)), path)
    with pytest.raises(UnreadableFileError, match=needle) as raised:
        _unchanged_after(path, lambda: read_nifti(path))
    assert "case.nii" in str(raised.value)


def test_nifti_gz_is_inflated_once_with_its_gzip_trailer_checked(tmp_path, monkeypatch):
    # The CRC-32 and length after the voxels are checked by reading on to the end of the
    # stream the voxels came from; a separate checking pass cost 0.7 s of 1.2 s on a CT.
    voxels = np.random.default_rng(0).integers(-1000, 1000, (64, 48, 32)).astype(np.int16)
    path = tmp_path / "ct.nii.gz"
    nib.save(nib.Nifti1Image(voxels, np.eye(4)), path)
    inflated = []
    read = gzip.GzipFile.read  # readinto (nibabel's voxel read) goes through read too

    def counted_read(self, *args):
        data = read(self, *args)
        inflated.append(len(data))
        return data

    monkeypatch.setattr(gzip.GzipFile, "read", counted_read)
    np.testing.assert_array_equal(read_nifti(path).array, voxels.transpose(2, 1, 0))
    assert voxels.nbytes < sum(inflated) < 1.1 * voxels.nbytes


def test_nifti_gz_voxels_are_not_held_twice_while_inflating(tmp_path):
    # GzipFile.readinto inflates a whole request into one bytes object before copying it,
    # which for a 100 MB CT doubled the peak memory of the read; it now goes in 1 MiB pieces.
    voxels = np.zeros((256, 256, 128), np.int16)  # 16 MiB: zeros keep the gzipping quick
    voxels[100:150, 80:200, 10:90] = 1
    path = tmp_path / "mask.nii.gz"
    nib.save(nib.Nifti1Image(voxels, np.eye(4)), path)
    tracemalloc.start()
    try:
        array = read_nifti(path).array
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert array.sum() == voxels.sum()
    assert peak < 1.5 * voxels.nbytes


def _label_file(path, labels, dtype, slope=None, inter=0.0):
    image = nib.Nifti1Image(labels.astype(dtype), np.diag([1.5, 1.5, 2.0, 1.0]))
    if slope is not None:
        image.header.set_slope_inter(slope, inter)
    nib.save(image, path)
    return path


@pytest.mark.parametrize(
    ("dtype", "slope"),
    [(np.uint8, None), (np.int16, None), (np.float32, None), (np.uint8, 1 / 85)],
)
def test_label_maps_come_back_as_the_integers_written(tmp_path, dtype, slope):
    labels = np.zeros((6, 5, 4), np.uint8)
    labels[1:4, 2:4, 1:3] = 1
    labels[5, 0, 0] = 3
    stored = labels * 85 if slope is not None else labels  # label 3 is stored as 255
    path = _label_file(tmp_path / "case.nii.gz", stored, dtype, slope)
    # nibabel itself returns the scaled values a rounding error off the integers
    assert slope is None or not np.array_equal(nib.load(path).get_fdata(), labels)
    volume = read_nifti_labels(path)
    assert volume.array.dtype == np.uint8
    np.testing.assert_array_equal(volume.array, labels.transpose(2, 1, 0))


@pytest.mark.parametrize("value", [0.5, -1.0, np.nan])
def test_label_maps_that_are_not_integers_are_refused_by_name(tmp_path, value):
    labels = np.zeros((3, 3, 3), np.float32)
    labels[1, 1, 1] = value
    path = _label_file(tmp_path / "bad.nii", labels, np.float32)
    with pytest.raises(MaskError, match="bad.nii"), warnings.catch_warnings():
        warnings.simplefilter("ignore", NonFiniteVoxelWarning)
        read_nifti_labels(path)
