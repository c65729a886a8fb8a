"""Prediction exports read back by independent readers: PNG stacks by PIL, NIfTI by nibabel
with voxel positions checked against pydicom's own ImagePositionPatient."""

import os

import nibabel as nib
import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.uid import CTImageStorage, generate_uid

from kseg.io import Volume, read_dicom_series, write_nifti, write_png_stack
from kseg.io.dicom_writer import new_dataset, set_grayscale_pixels, write_dataset


def _read_pngs(paths):
    images = [Image.open(p) for p in paths]
    return [image.mode for image in images], np.stack([np.array(image) for image in images])


def _labels(shape, high, seed=0):
    return np.random.default_rng(seed).integers(0, high + 1, size=shape)


def test_png_stack_holds_8_bit_labels_in_sorted_slice_files(tmp_path):
    labels = _labels((12, 7, 9), 4).astype(np.int64)
    given = labels.copy()
    paths = write_png_stack(labels, tmp_path / "pngs")
    np.testing.assert_array_equal(labels, given)
    assert [p.name for p in paths] == [f"slice_{k:04d}.png" for k in range(12)]
    assert sorted(os.listdir(tmp_path / "pngs")) == [p.name for p in paths]  # nothing else
    modes, read = _read_pngs(sorted((tmp_path / "pngs").iterdir()))
    assert set(modes) == {"L"} and read.dtype == np.uint8
    np.testing.assert_array_equal(read, labels)


def test_png_stack_goes_16_bit_for_labels_above_255_on_every_slice(tmp_path):
    labels = np.zeros((3, 5, 6), np.int32)
    labels[1, 2, 3] = 300
    labels[2, 0, 0] = 65535
    labels[0, 4, 5] = 1  # slice 0 alone would fit 8 bits, but the stack is one depth
    modes, read = _read_pngs(write_png_stack(labels, tmp_path))
    assert set(modes) == {"I;16"} and read.dtype == np.uint16
    np.testing.assert_array_equal(read, labels)


def test_png_stack_takes_booleans_volumes_and_integral_floats(tmp_path):
    mask = _labels((2, 4, 4), 1).astype(bool)
    _, read = _read_pngs(write_png_stack(mask, tmp_path / "bool"))
    np.testing.assert_array_equal(read, mask)
    volume = Volume(_labels((2, 4, 4), 3).astype(np.float32), np.eye(4), "p")
    _, read = _read_pngs(write_png_stack(volume, tmp_path / "volume"))
    np.testing.assert_array_equal(read, volume.array)


def test_png_stack_replaces_files_of_a_previous_run_whole(tmp_path):
    write_png_stack(np.full((2, 3, 3), 7, np.uint8), tmp_path)
    write_png_stack(np.full((2, 3, 3), 2, np.uint8), tmp_path)
    assert sorted(os.listdir(tmp_path)) == ["slice_0000.png", "slice_0001.png"]
    _, read = _read_pngs(sorted(tmp_path.iterdir()))
    assert (read == 2).all()


@pytest.mark.parametrize(
    ("labels", "names", "message"),
    [
        (np.zeros((4, 4), np.uint8), None, "labels\\[None\\]"),
        (np.full((1, 2, 2), -1), None, "0..65535"),
        (np.full((1, 2, 2), 70000), None, "0..65535"),
        (np.full((1, 2, 2), 0.5), None, "integer"),
        (np.zeros((2, 2, 2), np.uint8), ["a"], "1 entries for 2 slices"),
        (np.zeros((2, 2, 2), np.uint8), ["a", "A.png"], "slices 0 and 1"),
        (np.zeros((1, 2, 2), np.uint8), ["../a"], "plain file names"),
        (np.zeros((1, 2, 2), np.uint8), "a", "sequence"),
    ],
)
def test_png_stack_refuses_what_png_labels_cannot_hold(tmp_path, labels, names, message):
    with pytest.raises(ValueError, match=message):
        write_png_stack(labels, tmp_path / "out", names=names)
    assert not (tmp_path / "out").exists() or not os.listdir(tmp_path / "out")


def test_png_stack_never_writes_over_its_source_files(tmp_path):
    source = tmp_path / "mask.png"
    Image.fromarray(np.ones((2, 2), np.uint8)).save(source)
    volume = Volume(np.zeros((1, 2, 2), np.uint8), np.eye(4), "p", source_files=(source,))
    with pytest.raises(ValueError, match="would be overwritten"):
        write_png_stack(volume, tmp_path, names=["mask"])
    assert np.array(Image.open(source)).max() == 1


def test_png_stack_named_after_the_real_dicom_files(shared_data, tmp_path):
    ct = read_dicom_series(shared_data / "totalseg-ct" / "ct_dicom")
    prediction = (ct.array > 200).astype(np.uint8)  # bone, as a stand-in prediction
    names = [os.path.basename(f) for f in ct.source_files]
    paths = write_png_stack(prediction, tmp_path, names=names)
    assert [p.name for p in paths] == [f"{name}.png" for name in names]
    _, read = _read_pngs(paths)
    np.testing.assert_array_equal(read, prediction)


def _axial_series(folder, positions, spacing=(0.8, 0.6), shape=(6, 5)):
    study, series, frame = generate_uid(), generate_uid(), generate_uid()
    for k, z in enumerate(positions):
        ds = new_dataset(CTImageStorage, generate_uid(), implementation_version_name="TEST")
        ds.Modality, ds.PatientID = "CT", "P2"
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.ImagePositionPatient = [-10.0, 20.0, z]
        ds.PixelSpacing = list(spacing)
        ds.RescaleSlope, ds.RescaleIntercept = 1, -1024
        set_grayscale_pixels(ds, np.full(shape, k, np.uint16))
        write_dataset(ds, folder / f"{k:02d}.dcm")
    return read_dicom_series(folder)


def _expected_corner_positions(source_folder, shape):
    """RAS millimetres of voxels (i, j, k) = (column, row, slice) at the grid's corners,
    computed from pydicom's headers alone: slices sorted along the normal of their
    orientation, position = IPP + column * column spacing * row cosine + row * row spacing
    * column cosine, LPS turned into RAS."""
    headers = [pydicom.dcmread(source_folder / name, stop_before_pixels=True)
               for name in os.listdir(source_folder)]
    first = headers[0]
    row_cosine = np.array(first.ImageOrientationPatient[:3], float)
    column_cosine = np.array(first.ImageOrientationPatient[3:], float)
    normal = np.cross(row_cosine, column_cosine)
    headers.sort(key=lambda h: float(np.dot(normal, np.array(h.ImagePositionPatient, float))))
    row_spacing, column_spacing = (float(v) for v in first.PixelSpacing)
    expected = {}
    for i in (0, shape[2] - 1):
        for j in (0, shape[1] - 1):
            for k in (0, shape[0] - 1):
                lps = (np.array(headers[k].ImagePositionPatient, float)
                       + i * column_spacing * row_cosine + j * row_spacing * column_cosine)
                expected[(i, j, k)] = lps * [-1, -1, 1]
    return expected


def _check_prediction_nifti(path, prediction, source_folder):
    image = nib.load(path)
    data = np.asarray(image.dataobj)
    np.testing.assert_array_equal(data, prediction.transpose(2, 1, 0))
    assert nib.aff2axcodes(image.affine) == ("L", "P", "S")  # axial, head-first supine
    for (i, j, k), ras in _expected_corner_positions(source_folder, prediction.shape).items():
        np.testing.assert_allclose(image.affine @ [i, j, k, 1], [*ras, 1], atol=1e-4)
        assert data[i, j, k] == prediction[k, j, i]


def test_nifti_prediction_keeps_the_dicom_geometry(tmp_path):
    folder = tmp_path / "ct"
    folder.mkdir()
    ct = _axial_series(folder, positions=[7.5, 2.5, 5.0, 0.0])  # files out of order
    prediction = _labels(ct.shape, 3).astype(np.uint8)
    write_nifti(ct.with_array(prediction), tmp_path / "pred.nii.gz")
    _check_prediction_nifti(tmp_path / "pred.nii.gz", prediction, folder)


def test_nifti_prediction_on_the_real_series_keeps_its_geometry(shared_data, tmp_path):
    folder = shared_data / "totalseg-ct" / "ct_dicom"
    ct = read_dicom_series(folder)
    prediction = (ct.array > 200).astype(np.uint8)
    prediction[0, 0, 0], prediction[-1, -1, -1] = 2, 3  # corners told apart
    write_nifti(ct.with_array(prediction), tmp_path / "pred.nii.gz")
    _check_prediction_nifti(tmp_path / "pred.nii.gz", prediction, folder)
