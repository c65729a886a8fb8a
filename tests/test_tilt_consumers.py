"""What consumes a gantry-tilted (sheared) volume: figures, DICOM-SEG read without its
series, and ``kseg predict``.

Tilted series are written with pydicom by tests/test_gantry_tilt.py's helpers: slice k sits
k * STEP_MM along the slice normal plus k * tan(tilt) * STEP_MM along the column direction.
References are numpy on physical coordinates.
"""

import math
import warnings

import numpy as np
import pytest
from test_gantry_tilt import (
    COLUMN_MM,
    ROW_MM,
    STEP_MM,
    TILT_DEGREES,
    _centres,
    _sheared_affine,
    _tilt_warnings,
    _tilted_positions,
    _write_series,
)

from kseg.io import Volume, read_dicom_series
from kseg.io.dicom import GantryTiltWarning


def test_tri_planar_of_a_sheared_volume_takes_the_distance_between_planes():
    pytest.importorskip("matplotlib")
    from kseg import viz

    volume = Volume(np.zeros((6, 8, 10)), _sheared_affine(), "tilted")
    assert volume.spacing[0] == pytest.approx(STEP_MM / math.cos(math.radians(20.0)))

    figure = viz.tri_planar(volume)

    # imshow's aspect: the displayed height of one row over the width of one column
    assert [ax.get_aspect() for ax in figure.axes] == pytest.approx(
        [ROW_MM / COLUMN_MM, STEP_MM / COLUMN_MM, STEP_MM / ROW_MM]
    )


# --- DICOM-SEG read without its series ---------------------------------------------------------


def _tilted_series(folder, count=6):
    folder.mkdir()
    _write_series(folder, _tilted_positions(count), tilt=TILT_DEGREES)
    with pytest.warns(GantryTiltWarning):
        return read_dicom_series(folder)


def test_seg_of_a_tilted_series_read_alone_has_the_series_sheared_affine(tmp_path):
    pytest.importorskip("highdicom")
    from kseg.io import read_dicom_seg, read_dicom_seg_masks, write_dicom_seg

    series = _tilted_series(tmp_path / "ct")
    labels = np.zeros(series.shape, np.uint8)
    labels[:, 1:3, 1:4] = 1  # on every slice: the SEG spans the series' grid
    labels[[1, 2, 4], 0, 0] = 2
    write_dicom_seg(labels, series, tmp_path / "seg.dcm", {1: "tumour", 2: "node"})

    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        volume = read_dicom_seg(tmp_path / "seg.dcm")
    (warning,) = _tilt_warnings(record)
    assert str(tmp_path / "seg.dcm") in str(warning.message)
    assert warning.filename == __file__  # the caller's line, through read_dicom_seg_masks
    assert f"{TILT_DEGREES:.2f}°" in str(warning.message)
    np.testing.assert_allclose(volume.affine, series.affine, atol=1e-6)
    np.testing.assert_array_equal(volume.array, labels)
    assert volume.plane_spacing == pytest.approx((STEP_MM, ROW_MM, COLUMN_MM))

    # frames on slices 1, 2 and 4 only: the grid spans them, sheared as the series
    sparse = np.zeros(series.shape, np.uint8)
    sparse[[1, 2, 4], 2, 3] = 1
    write_dicom_seg(sparse, series, tmp_path / "sparse.dcm", {1: "node"})
    with pytest.warns(GantryTiltWarning) as caught:
        (node,) = read_dicom_seg_masks(tmp_path / "sparse.dcm").values()
    assert caught[0].filename == __file__
    shifted = series.affine.copy()
    shifted[:3, 3] = series.affine[:3, :3] @ [1, 0, 0] + series.affine[:3, 3]
    np.testing.assert_allclose(node.affine, shifted, atol=1e-6)
    np.testing.assert_array_equal(node.array, sparse[1:5])



@pytest.mark.parametrize(
    "stated", [STEP_MM, STEP_MM / math.cos(math.radians(TILT_DEGREES))],
    ids=["plane-distance", "centre-to-centre"],
)  # fmt: skip
def test_tilted_seg_takes_either_reading_of_spacing_between_slices(tmp_path, stated):
    """PS3.3 measures SpacingBetweenSlices centre to centre (the slanted step on a tilted
    stack); writers also store the plane distance. Frames on slices 0, 1 and 4."""
    pytest.importorskip("highdicom")
    import pydicom

    from kseg.io import read_dicom_seg, write_dicom_seg

    series = _tilted_series(tmp_path / "ct")
    labels = np.zeros(series.shape, np.uint8)
    labels[[0, 1, 4], 1, 2] = 1
    path = write_dicom_seg(labels, series, tmp_path / "seg.dcm", {1: "tumour"})
    ds = pydicom.dcmread(path)
    ds.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0].SpacingBetweenSlices = stated
    ds.save_as(path)

    with pytest.warns(GantryTiltWarning):
        volume = read_dicom_seg(path)

    np.testing.assert_allclose(volume.affine, series.affine, atol=1e-6)
    np.testing.assert_array_equal(volume.array, labels[:5])


# --- kseg predict -----------------------------------------------------------------------------

# A sheared NIfTI grid (RAS, index (k, j, i)): each slice 2.5 mm up and exactly two rows on,
# so the orthogonal grid through its planes holds the same voxels, shifted by whole rows.
SHIFT_ROWS, ROD_HU, AIR_HU = 2, 120, -200
NIFTI_SHEAR = np.array([
    [0.0, 0.0, 0.75, -5.0],
    [SHIFT_ROWS * 0.5, 0.5, 0.0, 7.0],
    [2.5, 0.0, 0.0, -30.0],
    [0.0, 0.0, 0.0, 1.0],
])  # fmt: skip


def _rod_phantom(path):
    """Six slices of a rod straight up in the patient (y 6..10 mm, x 1.5..10.5 mm): on the
    sheared grid it moves two rows back per slice. Written (x, y, z) with nibabel."""
    nib = pytest.importorskip("nibabel")
    y_mm = _centres(NIFTI_SHEAR, (6, 24, 16))[..., 1] - NIFTI_SHEAR[1, 3]
    x_mm = _centres(NIFTI_SHEAR, (6, 24, 16))[..., 0] - NIFTI_SHEAR[0, 3]
    rod = (y_mm >= 6) & (y_mm < 10) & (x_mm >= 1.5) & (x_mm < 10.5)
    hu = np.where(rod, ROD_HU, AIR_HU)
    stored_affine = NIFTI_SHEAR[:, [2, 1, 0, 3]]  # index (i, j, k), as NIfTI stores it
    nib.save(nib.Nifti1Image(hu.transpose(2, 1, 0).astype(np.int16), stored_affine), path)
    return rod


def _vertical_erosion_model():
    """The minimum over the voxel and its neighbours one slice below and above: a rod
    straight along the slice axis keeps its width, a slanted one loses the slant."""
    import keras

    inputs = keras.Input((None, None, None, 1))
    negated = keras.layers.Rescaling(-1.0)(inputs)
    pooled = keras.layers.MaxPooling3D((3, 1, 1), strides=1, padding="same")(negated)
    return keras.Model(inputs, keras.layers.Rescaling(-1.0)(pooled))


def test_3d_model_predicts_a_sheared_volume_on_the_straight_grid(tmp_path):
    from test_predict import volume_inference

    from kseg.predict import predict_path

    source = tmp_path / "tilted.nii.gz"
    rod = _rod_phantom(source)
    # the model's spacing (x, y, z) is the orthogonal grid's own: deskewing is the only
    # resampling, and by whole rows, so the labels are the rod exactly
    inference = volume_inference(spacing=[0.75, 0.5, 2.5], roi_size=[4, 8, 8])

    with pytest.warns(GantryTiltWarning, match=r"tilted\.nii\.gz: .* 21\.80° .*deskew"):
        [prediction] = predict_path(_vertical_erosion_model(), inference, source)

    np.testing.assert_allclose(prediction.labels.affine, NIFTI_SHEAR)
    np.testing.assert_array_equal(prediction.labels.array, rod)


def test_2d_model_predicts_each_sheared_slice_as_stored(tmp_path, monkeypatch):
    from test_predict import slices_inference, windowed

    from kseg import geometry
    from kseg.predict import predict_path

    source = tmp_path / "tilted.nii.gz"
    rod = _rod_phantom(source)

    def no_resampling(*args, **kwargs):
        raise AssertionError("a 2D model's slices were resampled")

    monkeypatch.setattr(geometry, "resample_to", no_resampling)
    seen = []

    def model(batch):
        seen.append(batch[..., 0])
        return (batch > 0.5).astype(np.float32)

    with warnings.catch_warnings():
        warnings.simplefilter("error", GantryTiltWarning)
        [prediction] = predict_path(model, slices_inference((24, 16)), source)

    # the DICOM view of RAS slices: rows toward posterior, columns toward the left
    hu = np.where(rod, ROD_HU, AIR_HU)
    np.testing.assert_allclose(np.concatenate(seen), windowed(hu[:, ::-1, ::-1]), atol=1e-6)
    np.testing.assert_array_equal(prediction.labels.array, windowed(hu) > 0.5)
    np.testing.assert_allclose(prediction.labels.affine, NIFTI_SHEAR)


def test_3d_model_on_a_tilted_dicom_series_writes_the_seg_on_the_series(tmp_path):
    pytest.importorskip("highdicom")
    from test_io_dicom import _write_slice
    from test_predict import volume_inference, write_run

    from kseg.io import read_dicom_seg
    from kseg.predict import predict_command

    (tmp_path / "ct").mkdir()
    # axial slices 2.5 mm apart, each 1 mm further along y (two 0.5 mm rows): a 21.8° tilt;
    # the rod stands straight along z, so it moves two rows back per slice
    rod = np.zeros((6, 24, 16), bool)
    for k in range(6):
        rod[k, 12 - SHIFT_ROWS * k : 20 - SHIFT_ROWS * k, 2:14] = True
        _write_slice(tmp_path / "ct" / f"s{k}.dcm", position=(-5.0, 7.0 + k, 30.0 + 2.5 * k),
                     pixels=np.where(rod[k], 1024 + ROD_HU, 1024 + AIR_HU).astype(np.uint16))
    inference = volume_inference(spacing=[0.75, 0.5, 2.5], roi_size=[4, 8, 8])
    run = write_run(tmp_path / "run", _vertical_erosion_model(), inference)

    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        [path] = predict_command(run, tmp_path / "ct", tmp_path / "out", "dicom-seg")
    said = [str(w.message) for w in _tilt_warnings(record)]
    said_by_predict = [message for message in said if "the 3D model predicts" in message]
    assert len(said_by_predict) == 1 and said_by_predict[0].startswith(f"{tmp_path / 'ct'}: ")

    with pytest.warns(GantryTiltWarning):
        series = read_dicom_series(tmp_path / "ct")
    np.testing.assert_array_equal(read_dicom_seg(path, reference_series=series).array, rod)



def test_3d_model_input_of_a_sheared_volume_is_interpolated_once(tmp_path, monkeypatch):
    """Deskewing and resampling to the model's spacing: the values the model sees are one
    trilinear interpolation of the input (scipy on the stored array), not two."""
    import nibabel as nib
    from scipy import ndimage
    from test_predict import volume_inference, windowed

    import kseg.inference
    from kseg.data.preprocess3d import preprocess_volume
    from kseg.geometry import deskew
    from kseg.io import read_nifti
    from kseg.predict import predict_path

    affine = NIFTI_SHEAR.copy()
    affine[1, 0] = 0.3  # 0.6 rows per slice: deskewing interpolates
    hu = np.random.default_rng(7).integers(-50, 160, (8, 20, 16))  # inside the window
    source = tmp_path / "tilted.nii.gz"
    nib.save(nib.Nifti1Image(hu.transpose(2, 1, 0).astype(np.int16), affine[:, [2, 1, 0, 3]]),
             source)  # fmt: skip
    seen = []

    def recording_window(model, inputs, roi_size, **kwargs):
        seen.append(inputs[..., 0])
        return np.zeros(inputs.shape, np.float32)

    monkeypatch.setattr(kseg.inference, "sliding_window", recording_window)
    inference = volume_inference(spacing=[1.0, 0.8, 3.0])
    with pytest.warns(GantryTiltWarning):
        predict_path(None, inference, source)

    # the grid deskewing and resampling choose (the subject here is the values on it)
    grid = preprocess_volume(deskew(read_nifti(source), fill=-57.0), orientation="RAS",
                             spacing=(3.0, 0.8, 1.0), crop_threshold=-57.0).image  # fmt: skip
    assert seen[0].shape == grid.shape
    centres = _centres(grid.affine, grid.shape).reshape(-1, 3)
    stored_index = (centres - affine[:3, 3]) @ np.linalg.inv(affine[:3, :3]).T
    once = ndimage.map_coordinates(hu.astype(float), stored_index.T, order=1)
    inside = np.all((stored_index >= 0) & (stored_index <= np.array(hu.shape) - 1), axis=1)
    assert inside.mean() > 0.5
    np.testing.assert_allclose(seen[0].reshape(-1)[inside], windowed(once, 53.5, 221.0)[inside],
                               atol=1e-5)  # fmt: skip


def test_preprocessing_puts_a_sheared_case_and_its_label_on_the_straight_grid():
    """What the MSD builder stores for training: image and label on the orthogonal grid
    through the slice planes, the label the rod exactly (an analytic reference on the output
    grid's centres), voxels outside the scan at its minimum."""
    from kseg.data.preprocess3d import preprocess_volume

    shape = (6, 24, 16)
    centres = _centres(NIFTI_SHEAR, shape) - NIFTI_SHEAR[:3, 3]
    rod = (centres[..., 1] >= 6) & (centres[..., 1] < 10) & (centres[..., 0] >= 1.5) & (
        centres[..., 0] < 10.5)  # fmt: skip
    image = Volume(np.where(rod, ROD_HU, AIR_HU).astype(np.int16), NIFTI_SHEAR, "tilted")
    label = image.with_array(rod.astype(np.uint8))

    # the target spacing is the planes' own, so whole-row shifts are the only resampling
    prepared = preprocess_volume(image, label, orientation=None, spacing=(2.5, 0.5, 0.75),
                                 crop_threshold=None)  # fmt: skip

    columns = prepared.image.affine[:3, :3]
    np.testing.assert_allclose(columns.T @ columns, np.diag([2.5, 0.5, 0.75]) ** 2, atol=1e-9)
    out = _centres(prepared.image.affine, prepared.image.shape) - NIFTI_SHEAR[:3, 3]
    expected = (out[..., 1] >= 6) & (out[..., 1] < 10) & (out[..., 0] >= 1.5) & (
        out[..., 0] < 10.5)  # fmt: skip
    np.testing.assert_array_equal(prepared.label.array, expected)
    assert prepared.label.shape == prepared.image.shape
    stored_index = np.round(np.linalg.solve(NIFTI_SHEAR[:3, :3], out.reshape(-1, 3).T).T, 6)
    inside = ((stored_index >= 0) & (stored_index <= np.array(shape) - 1)).all(axis=1)
    inside = inside.reshape(prepared.image.shape)
    np.testing.assert_allclose(prepared.image.array[inside],
                               np.where(expected, ROD_HU, AIR_HU)[inside])  # fmt: skip
    np.testing.assert_array_equal(prepared.image.array[~inside], AIR_HU)
    assert (~inside).any()


# --- MSD spleen recipe ------------------------------------------------------------------------


def test_msd_spleen_validation_measures_a_sheared_case_by_its_affine(monkeypatch):
    import argparse

    from kseg.evaluation import evaluate_volumes
    from kseg.recipes import msd_spleen

    label = np.zeros((6, 24, 16), np.uint8)
    label[2, 10, 5] = 1
    prediction = np.zeros_like(label)
    prediction[3, 10 - SHIFT_ROWS, 5] = 1  # the voxel straight above: one plane, 2.5 mm
    example = {
        "patient_id": "spleen_1", "input": label[..., None].astype(np.float32),
        "label": label, "affine": NIFTI_SHEAR,
        "spacing": np.linalg.norm(NIFTI_SHEAR[:3, :3], axis=0).astype(np.float32),
    }  # fmt: skip
    monkeypatch.setattr(msd_spleen, "whole_volumes", lambda builder, split: [example])
    args = argparse.Namespace(roi_size=8, validate_every=1, overlap=0.25, batch_size=1,
                              largest_component=False)  # fmt: skip

    validation = msd_spleen._volume_validation(args, None, {"validation": "fold0"})

    [(_, _, _, grid)] = validation.volumes
    table = evaluate_volumes([("spleen_1", label, prediction, grid)], metrics=("hausdorff",),
                             progress=False)  # fmt: skip
    assert table.column("hausdorff") == pytest.approx([2.5])
