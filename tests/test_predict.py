"""kseg.predict: a run's model on DICOM series, NIfTI volumes and radiographs, written as
NIfTI, DICOM-SEG, PNG and RTSTRUCT on the input's own grid.

The models are tiny Keras models whose output is a known function of their input (the
windowed intensity itself, or three classes by thirds of it), so the expected label map is
computed here in numpy from pydicom's / nibabel's / Pillow's own reading of the input, and
every output is read back by an independent reader (nibabel, highdicom, pydicom, Pillow).
"""

import hashlib
import json
import os
import pathlib
import shutil
import warnings

import highdicom as hd
import keras
import nibabel as nib
import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.data import get_testdata_file
from pydicom.uid import ComputedRadiographyImageStorage, CTImageStorage, generate_uid
from scipy import ndimage

from kseg.errors import AlignmentError, LayoutError, UnreadableFileError
from kseg.io import (
    BlankSeriesUidWarning,
    ContourOutsideVolumeWarning,
    SkippedFileWarning,
    rasterize_rtstruct,
    read_dicom_seg_masks,
    read_dicom_series,
)
from kseg.io.dicom_writer import new_dataset, set_grayscale_pixels, write_dataset
from kseg.predict import Prediction, predict_command, predict_path, write_predictions

# Centre and width of the CT window: a centre between integers, so no HU lands exactly on
# the 0.5 threshold of the windowed intensity.
CENTER, WIDTH = 40.5, 400.0
LABELS = {"organ": 1}
THREE_LABELS = {"low": 1, "high": 2}


# --- runs -------------------------------------------------------------------------------------


def identity_model(spatial_dims: int) -> keras.Model:
    """Probability = the model input (the windowed intensity, in [0, 1])."""
    inputs = keras.Input((None,) * spatial_dims + (1,))
    return keras.Model(inputs, keras.layers.Identity()(inputs))


def thirds_model() -> keras.Model:
    """Three classes: argmax of 2 m_k x - m_k^2 (m = 1/6, 1/2, 5/6) is the class whose
    centre m_k is nearest to x, i.e. class 0 below 1/3, 1 up to 2/3, 2 above."""
    centres = np.array([1 / 6, 1 / 2, 5 / 6], np.float32)
    layer = keras.layers.Conv2D(3, 1, activation="softmax")
    inputs = keras.Input((None, None, 1))
    model = keras.Model(inputs, layer(inputs))
    layer.set_weights([(2 * centres).reshape(1, 1, 1, 3), -(centres**2)])
    return model


def write_run(run_dir, model, inference, labels=LABELS) -> pathlib.Path:
    """A run folder as kseg train leaves it: best.keras and a config.json written by hand."""
    run_dir = pathlib.Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    model.save(run_dir / "best.keras")
    config = {
        "kseg_config_version": 1, "recipe": "chaos_liver", "arguments": {}, "seed": 0,
        "created": "2026-12-02T03:00:00+00:00", "versions": {}, "git_commit": None,
        "dataset": {"name": "test"}, "labels": labels, "inference": inference,
    }  # fmt: skip
    (run_dir / "config.json").write_text(json.dumps(config))
    return run_dir


def slices_inference(image_size, **changes) -> dict:
    inference = {
        "kind": "slices", "window": [CENTER, WIDTH], "image_size": list(image_size),
        "num_classes": 1, "threshold": 0.5, "postprocess": "none", "modality": "CT",
    }  # fmt: skip
    return {**inference, **changes}


def windowed(values, center=CENTER, width=WIDTH) -> np.ndarray:
    return np.clip((np.asarray(values, float) - (center - width / 2)) / width, 0.0, 1.0)


def min_max(values) -> np.ndarray:
    values = np.asarray(values, float)
    return (values - values.min()) / (values.max() - values.min())


def file_hashes(folder) -> dict:
    folder = pathlib.Path(folder)
    files = [folder] if folder.is_file() else sorted(p for p in folder.rglob("*") if p.is_file())
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


def dice(a, b) -> float:
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    return 2.0 * (a & b).sum() / (a.sum() + b.sum())


# --- inputs and their independent readings -----------------------------------------------------


def write_ct_series(folder, hu: np.ndarray, *, spacing=(0.8, 0.6), step=2.5) -> pathlib.Path:
    """A CT series of ``hu`` (slices in position order), files written out of that order."""
    folder = pathlib.Path(folder)
    folder.mkdir(parents=True)
    study, series, frame = generate_uid(), generate_uid(), generate_uid()
    for k in np.random.default_rng(0).permutation(len(hu)):
        ds = new_dataset(CTImageStorage, generate_uid(), implementation_version_name="TEST")
        ds.Modality, ds.PatientID, ds.PatientName = "CT", "P7", "TEST^PATIENT"
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.ImagePositionPatient = [-10.0, 20.0, 100.0 - step * (len(hu) - 1 - k)]
        ds.PixelSpacing = list(spacing)
        ds.RescaleSlope, ds.RescaleIntercept = 1, -1024
        set_grayscale_pixels(ds, (hu[k] + 1024).astype(np.uint16))
        write_dataset(ds, folder / f"{int(k) * 7 % 11:02d}_{k}.dcm")
    return folder


def synthetic_hu(shape, seed=0) -> np.ndarray:
    """Integer HU with a bright block, a dimmer one and noise: several components."""
    rng = np.random.default_rng(seed)
    hu = rng.integers(-300, 0, shape)
    z, y, x = shape
    hu[:, y // 4 : y // 2, x // 4 : 3 * x // 4] = 200
    hu[: z // 2, 3 * y // 4 :, : x // 3] = 150
    return hu


def pydicom_series(folder):
    """(HU volume in position order, the sorted headers): pydicom alone."""
    datasets = []
    for path in pathlib.Path(folder).iterdir():
        ds = pydicom.dcmread(path)
        if "PixelData" in ds:
            datasets.append(ds)
    normal = np.cross(*np.reshape(np.array(datasets[0].ImageOrientationPatient, float), (2, 3)))
    datasets.sort(key=lambda d: float(np.dot(normal, np.array(d.ImagePositionPatient, float))))
    hu = np.stack([d.pixel_array * float(d.RescaleSlope) + float(d.RescaleIntercept)
                   for d in datasets])  # fmt: skip
    return hu, datasets


def dicom_ras_affine(datasets) -> np.ndarray:
    """NIfTI-order affine (i, j, k) -> RAS mm of headers sorted by position."""
    first = datasets[0]
    row_cosine, column_cosine = np.reshape(np.array(first.ImageOrientationPatient, float), (2, 3))
    row_spacing, column_spacing = (float(v) for v in first.PixelSpacing)
    affine = np.eye(4)
    affine[:3, 0] = row_cosine * column_spacing
    affine[:3, 1] = column_cosine * row_spacing
    if len(datasets) > 1:
        affine[:3, 2] = (
            np.array(datasets[-1].ImagePositionPatient, float)
            - np.array(first.ImagePositionPatient, float)
        ) / (len(datasets) - 1)
    affine[:3, 3] = np.array(first.ImagePositionPatient, float)
    affine[:2] *= -1  # LPS -> RAS
    return affine


def seg_masks_by_pydicom(path, datasets) -> dict[str, np.ndarray]:
    """{segment label: (z, y, x) mask} from the SEG's frames and their referenced images."""
    seg = pydicom.dcmread(path)
    # anonymised files may blank SOPInstanceUID; their file meta keeps it
    slice_of = {str(d.get("SOPInstanceUID") or d.file_meta.MediaStorageSOPInstanceUID): k
                for k, d in enumerate(datasets)}  # fmt: skip
    names = {int(s.SegmentNumber): str(s.SegmentLabel) for s in seg.SegmentSequence}
    masks = {name: np.zeros((len(datasets), seg.Rows, seg.Columns), np.uint8)
             for name in names.values()}  # fmt: skip
    pixels = seg.pixel_array.reshape(-1, seg.Rows, seg.Columns)
    for frame, item in enumerate(seg.PerFrameFunctionalGroupsSequence):
        source = item.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        number = (
            item.get("SegmentIdentificationSequence")
            or seg.SharedFunctionalGroupsSequence[0].SegmentIdentificationSequence
        )[0]
        masks[names[int(number.ReferencedSegmentNumber)]][slice_of[str(source)]] |= pixels[frame]
    return masks


# --- DICOM series: every format ----------------------------------------------------------------


@pytest.fixture(scope="module")
def ct_case(tmp_path_factory):
    root = tmp_path_factory.mktemp("ct")
    folder = write_ct_series(root / "patient7", synthetic_hu((5, 24, 20)))
    run = write_run(root / "run", identity_model(2), slices_inference((24, 20)))
    return folder, run


def test_series_to_nifti_keeps_the_dicom_geometry(ct_case, tmp_path):
    folder, run = ct_case
    before = file_hashes(folder)
    [path] = predict_command(run, folder, tmp_path / "out", "nifti")
    assert path == tmp_path / "out" / "patient7.nii.gz"
    hu, datasets = pydicom_series(folder)
    image = nib.load(path)
    np.testing.assert_allclose(image.affine, dicom_ras_affine(datasets), atol=1e-4)
    expected = windowed(hu) >= 0.5
    np.testing.assert_array_equal(np.asarray(image.dataobj), expected.transpose(2, 1, 0))
    assert image.get_data_dtype() == np.uint8
    assert file_hashes(folder) == before


def test_series_to_dicom_seg_references_the_series(ct_case, tmp_path):
    folder, run = ct_case
    [path] = predict_command(run, folder, tmp_path, "dicom-seg")
    assert path.name == "patient7.seg.dcm"
    hu, datasets = pydicom_series(folder)
    expected = (windowed(hu) >= 0.5).astype(np.uint8)
    seg = hd.seg.segread(path)
    assert seg.SeriesInstanceUID != datasets[0].SeriesInstanceUID
    [referenced] = seg.ReferencedSeriesSequence
    assert referenced.SeriesInstanceUID == datasets[0].SeriesInstanceUID
    assert {str(i.ReferencedSOPInstanceUID) for i in referenced.ReferencedInstanceSequence} == {
        str(d.SOPInstanceUID) for d in datasets
    }
    assert seg.StudyInstanceUID == datasets[0].StudyInstanceUID
    assert seg.PatientID == "P7"
    np.testing.assert_array_equal(seg_masks_by_pydicom(path, datasets)["organ"], expected)
    [mask] = read_dicom_seg_masks(path, reference_series=read_dicom_series(folder)).values()
    np.testing.assert_array_equal(mask.array, expected)


def test_series_to_png_one_file_per_slice_in_position_order(ct_case, tmp_path):
    folder, run = ct_case
    paths = predict_command(run, folder, tmp_path, "png")
    assert [p.name for p in paths] == [f"slice_{k:04d}.png" for k in range(5)]
    assert {p.parent for p in paths} == {tmp_path / "patient7"}
    hu, _ = pydicom_series(folder)
    read = np.stack([np.array(Image.open(p)) for p in paths])
    np.testing.assert_array_equal(read, windowed(hu) >= 0.5)


def test_series_to_rtstruct_rasterizes_back_to_the_prediction(ct_case, tmp_path):
    folder, run = ct_case
    [path] = predict_command(run, folder, tmp_path, "rtstruct")
    assert path.name == "patient7.rtstruct.dcm"
    hu, datasets = pydicom_series(folder)
    expected = windowed(hu) >= 0.5
    ds = pydicom.dcmread(path)
    assert ds.Modality == "RTSTRUCT"
    assert [str(r.ROIName) for r in ds.StructureSetROISequence] == ["organ"]
    frame = ds.ReferencedFrameOfReferenceSequence[0]
    assert frame.FrameOfReferenceUID == datasets[0].FrameOfReferenceUID
    masks = rasterize_rtstruct(path, read_dicom_series(folder))
    assert dice(masks["organ"], expected) >= 0.99


def test_enhanced_ct_to_dicom_seg_and_rtstruct_reference_its_frames(ct_case, tmp_path):
    from test_io_enhanced_dicom import _write_enhanced

    folder, run = ct_case
    hu, datasets = pydicom_series(folder)
    order = np.random.default_rng(5).permutation(len(hu))  # frame f holds slice order[f]
    source = tmp_path / "enhanced" / "ct.dcm"
    source.parent.mkdir()
    _write_enhanced(
        source, (hu[order] + 1024).astype(np.uint16),
        [datasets[k].ImagePositionPatient for k in order],
    )  # fmt: skip
    expected = (windowed(hu) >= 0.5).astype(np.uint8)

    [seg] = predict_command(run, source, tmp_path / "seg", "dicom-seg")
    [rtstruct] = predict_command(run, source, tmp_path / "rt", "rtstruct")

    # pydicom alone: each SEG frame's pixels go on the slice its ReferencedFrameNumber holds.
    ds = pydicom.dcmread(seg)
    pixels = ds.pixel_array.reshape(-1, ds.Rows, ds.Columns)
    by_frame = np.zeros_like(expected)
    for frame, item in enumerate(ds.PerFrameFunctionalGroupsSequence):
        (image,) = item.DerivationImageSequence[0].SourceImageSequence
        by_frame[order[int(image.ReferencedFrameNumber) - 1]] |= pixels[frame]
    np.testing.assert_array_equal(by_frame, expected)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a contour matched by position alone would warn
        masks = rasterize_rtstruct(rtstruct, read_dicom_series([source]))
    np.testing.assert_array_equal(masks["organ"], expected)

def test_three_classes_become_two_segments_and_two_rois(tmp_path):
    hu = synthetic_hu((3, 16, 12), seed=3)
    folder = write_ct_series(tmp_path / "three", hu)
    inference = slices_inference((16, 12), num_classes=3)
    run = write_run(tmp_path / "run", thirds_model(), inference, THREE_LABELS)
    expected = np.digitize(windowed(pydicom_series(folder)[0]), [1 / 3, 2 / 3])
    [prediction] = predict_path(keras.models.load_model(run / "best.keras"), inference, folder)
    np.testing.assert_array_equal(prediction.labels.array, expected)

    [seg] = predict_command(run, folder, tmp_path / "seg", "dicom-seg")
    masks = seg_masks_by_pydicom(seg, pydicom_series(folder)[1])
    for name, value in THREE_LABELS.items():
        np.testing.assert_array_equal(masks[name], expected == value)
    [rtstruct] = predict_command(run, folder, tmp_path / "rt", "rtstruct")
    rois = rasterize_rtstruct(rtstruct, read_dicom_series(folder))
    for name, value in THREE_LABELS.items():
        assert dice(rois[name], expected == value) >= 0.99


def test_model_at_another_size_is_resized_back_to_the_slices(tmp_path):
    """A model at half the in-plane size: probabilities are resized back, so the labels
    differ from the full-resolution threshold at most next to an edge."""
    hu = np.full((2, 32, 32), -500)
    hu[:, 8:24, 4:20] = 300
    folder = write_ct_series(tmp_path / "ct", hu)
    run = write_run(tmp_path / "run", identity_model(2), slices_inference((16, 16)))
    [path] = predict_command(run, folder, tmp_path / "out", "nifti")
    predicted = np.asarray(nib.load(path).dataobj).transpose(2, 1, 0)
    expected = hu >= CENTER
    assert predicted.shape == hu.shape
    assert dice(predicted, expected) > 0.95
    interior = np.zeros_like(expected)
    interior[:, 10:22, 6:18] = True
    assert predicted[interior].all() and not predicted[:, :6].any()


def test_largest_component_keeps_one_object(tmp_path):
    hu = np.full((2, 20, 20), -500)
    hu[:, 2:12, 2:12] = 300
    hu[:, 15:17, 15:17] = 300
    folder = write_ct_series(tmp_path / "ct", hu)
    inference = slices_inference((20, 20), postprocess="largest-component")
    run = write_run(tmp_path / "run", identity_model(2), inference)
    [path] = predict_command(run, folder, tmp_path / "out", "nifti")
    predicted = np.asarray(nib.load(path).dataobj).transpose(2, 1, 0)
    expected = np.zeros(hu.shape, np.uint8)
    expected[:, 2:12, 2:12] = 1
    np.testing.assert_array_equal(predicted, expected)


def test_one_dicom_file_of_pydicom_is_a_one_slice_series(tmp_path):
    source = tmp_path / "input" / "CT_small.dcm"
    source.parent.mkdir()
    shutil.copy(get_testdata_file("CT_small.dcm"), source)
    run = write_run(tmp_path / "run", identity_model(2), slices_inference((128, 128)))
    ds = pydicom.dcmread(source)
    expected = windowed(ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept))
    expected = (expected >= 0.5)[None]
    [nifti] = predict_command(run, source, tmp_path / "out", "nifti")
    np.testing.assert_array_equal(np.asarray(nib.load(nifti).dataobj).transpose(2, 1, 0), expected)
    np.testing.assert_allclose(
        nib.load(nifti).affine[:3, 3],
        np.array(ds.ImagePositionPatient, float) * [-1, -1, 1],
        atol=1e-4,
    )
    [seg] = predict_command(run, source, tmp_path / "out", "dicom-seg")
    np.testing.assert_array_equal(seg_masks_by_pydicom(seg, [ds])["organ"], expected)
    [rtstruct] = predict_command(run, source, tmp_path / "out", "rtstruct")
    assert expected[0, :, -1].any()  # the body reaches the last column: contours on its edge
    with warnings.catch_warnings():
        warnings.simplefilter("error", ContourOutsideVolumeWarning)
        rois = rasterize_rtstruct(rtstruct, read_dicom_series([source]))
    assert dice(rois["organ"], expected) >= 0.99


# --- the real TotalSegmentator series ----------------------------------------------------------


@pytest.fixture(scope="module")
def real_series_predictions(shared_data, tmp_path_factory):
    folder = shared_data / "totalseg-ct" / "ct_dicom"
    root = tmp_path_factory.mktemp("real")
    # threshold -300 HU (body against air and lung): tens of contours per slice, not the
    # hundreds of a soft-tissue threshold, which would take RTSTRUCT seconds to minutes
    inference = slices_inference((512, 512), window=[-299.5, WIDTH])
    run = write_run(root / "run", identity_model(2), inference)
    before = file_hashes(folder)
    written = {format: predict_command(run, folder, root / format, format)
               for format in ("nifti", "png")}  # fmt: skip
    for format in ("dicom-seg", "rtstruct"):  # the anonymiser blanked the series UIDs
        with pytest.warns(BlankSeriesUidWarning, match="no StudyInstanceUID"):
            written[format] = predict_command(run, folder, root / format, format)
    assert file_hashes(folder) == before
    hu, datasets = pydicom_series(folder)
    return folder, written, datasets, windowed(hu, -299.5) >= 0.5


def test_real_series_every_format_on_its_grid(real_series_predictions):
    folder, written, datasets, expected = real_series_predictions
    image = nib.load(written["nifti"][0])
    np.testing.assert_allclose(image.affine, dicom_ras_affine(datasets), atol=1e-3)
    np.testing.assert_array_equal(np.asarray(image.dataobj).transpose(2, 1, 0), expected)
    masks = seg_masks_by_pydicom(written["dicom-seg"][0], datasets)
    np.testing.assert_array_equal(masks["organ"], expected)
    assert hd.seg.segread(written["dicom-seg"][0]).FrameOfReferenceUID == (
        datasets[0].FrameOfReferenceUID
    )
    pngs = np.stack([np.array(Image.open(p)) for p in written["png"]])
    np.testing.assert_array_equal(pngs, expected)


def test_real_series_rtstruct_round_trips_with_dice_099(real_series_predictions):
    folder, written, _, expected = real_series_predictions
    masks = rasterize_rtstruct(written["rtstruct"][0], read_dicom_series(folder))
    assert dice(masks["organ"], expected) >= 0.99


# highdicom's advice about the fixture's one-component PatientName, copied into the SEG
@pytest.mark.filterwarnings("ignore:The string .* person name:UserWarning")
def test_real_ge_slices_to_dicom_seg_and_rtstruct(shared_data, tmp_path):
    folder = shared_data / "dcmqi-ct3slice" / "data" / "segmentations" / "ct-3slice"
    inference = slices_inference((512, 512), window=[-299.5, WIDTH])
    run = write_run(tmp_path / "run", identity_model(2), inference)
    hu, datasets = pydicom_series(folder)
    expected = windowed(hu, -299.5) >= 0.5
    [seg] = predict_command(run, folder, tmp_path / "seg", "dicom-seg")
    np.testing.assert_array_equal(seg_masks_by_pydicom(seg, datasets)["organ"], expected)
    assert hd.seg.segread(seg).FrameOfReferenceUID == datasets[0].FrameOfReferenceUID
    [rtstruct] = predict_command(run, folder, tmp_path / "rt", "rtstruct")
    masks = rasterize_rtstruct(rtstruct, read_dicom_series(folder))
    assert dice(masks["organ"], expected) >= 0.99


# --- NIfTI -------------------------------------------------------------------------------------


def test_real_nifti_keeps_its_affine_and_refuses_dicom_formats(shared_data, tmp_path):
    source = shared_data / "totalseg-ct" / "example_ct_sm.nii.gz"
    run = write_run(tmp_path / "run", identity_model(2), slices_inference((101, 122)))
    original = nib.load(source)
    assert original.shape[:2] == (122, 101)  # (x, y): slices are 101 rows x 122 columns
    [path] = predict_command(run, source, tmp_path / "out", "nifti")
    assert path.name == "example_ct_sm.nii.gz"
    written = nib.load(path)
    assert written.shape == original.shape
    np.testing.assert_array_equal(written.affine, original.affine)
    np.testing.assert_array_equal(
        np.asarray(written.dataobj), windowed(original.get_fdata()) >= 0.5
    )
    pngs = predict_command(run, source, tmp_path / "png", "png")
    assert len(pngs) == original.shape[2]
    assert np.array(Image.open(pngs[3])).shape == (101, 122)
    for format in ("dicom-seg", "rtstruct"):
        with pytest.raises(LayoutError, match="example_ct_sm.nii.gz.*NIfTI"):
            predict_command(run, source, tmp_path / format, format)
        assert not (tmp_path / format).exists()


def test_a_2d_ct_model_sees_nifti_slices_as_dicom_shows_them(tmp_path):
    """RAS storage is mirrored in both in-plane axes against DICOM's axial slices (columns
    toward the patient's left, rows toward posterior): the model gets the DICOM view, the
    labels come back on the file's grid."""
    data = np.random.default_rng(4).integers(-1000, 1000, (6, 5, 3))  # (x, y, z), RAS
    source = tmp_path / "ras.nii.gz"
    nib.save(nib.Nifti1Image(data.astype(np.int16), np.diag([0.7, 0.8, 2.0, 1.0])), source)
    seen = []

    def model(batch):
        seen.append(batch[..., 0])
        return (batch > 0.5).astype(np.float32)

    [prediction] = predict_path(model, slices_inference((5, 6)), source)
    dicom_view = np.stack([data[::-1, ::-1, k].T for k in range(3)])  # (slice, row, column)
    np.testing.assert_allclose(np.concatenate(seen), windowed(dicom_view), atol=1e-6)
    labels = prediction.labels.array.transpose(2, 1, 0)  # back to the file's (x, y, z)
    np.testing.assert_array_equal(labels, windowed(data) > 0.5)


# --- 3D volume models --------------------------------------------------------------------------


def volume_inference(**changes) -> dict:
    inference = {
        "kind": "volume", "window": [-57.0, 164.0], "spacing": [1.5, 1.5, 2.0],
        "orientation": "RAS", "roi_size": [8, 8, 8], "overlap": 0.25, "blend": "gaussian",
        "num_classes": 1, "postprocess": "none",
    }  # fmt: skip
    return {**inference, **changes}


def write_volume_nifti(path, hu, affine) -> pathlib.Path:
    """``hu`` given (z, y, x), stored (x, y, z) as NIfTI stores it."""
    nib.save(nib.Nifti1Image(hu.transpose(2, 1, 0).astype(np.int16), affine), path)
    return path


@pytest.mark.parametrize("orientation", ["RAS", "LPS"])
def test_volume_model_on_a_nifti_at_its_training_spacing(tmp_path, orientation):
    """A 3D model on a volume already at the model's spacing: reorienting, cropping and
    the sliding window lose nothing, so the labels are the numpy threshold exactly."""
    hu = synthetic_hu((10, 14, 12), seed=5)
    affine = np.diag([1.5, 1.5, 2.0, 1.0])  # (x, y, z) mm
    if orientation == "LPS":
        affine[:2] *= -1
    source = write_volume_nifti(tmp_path / "case.nii.gz", hu, affine)
    run = write_run(tmp_path / "run", identity_model(3), volume_inference())
    [path] = predict_command(run, source, tmp_path / "out", "nifti")
    written, original = nib.load(path), nib.load(source)
    np.testing.assert_array_equal(written.affine, original.affine)
    expected = windowed(original.get_fdata(), 53.5, 221.0) >= 0.5
    np.testing.assert_array_equal(np.asarray(written.dataobj), expected)


def test_volume_model_resamples_and_maps_back_to_the_file_grid(tmp_path):
    hu = np.full((12, 24, 24), -200)
    hu[3:9, 6:18, 5:17] = 120
    source = write_volume_nifti(tmp_path / "case.nii.gz", hu, np.diag([0.75, 0.75, 1.0, 1.0]))
    run = write_run(tmp_path / "run", identity_model(3), volume_inference())
    [prediction] = predict_path(keras.models.load_model(run / "best.keras"),
                                volume_inference(), source)  # fmt: skip
    assert prediction.labels.shape == hu.shape
    np.testing.assert_array_equal(prediction.labels.affine, prediction.image.affine)
    # the model's voxels are two of the file's along each axis: edges move by at most that
    truth = hu > 53.5
    predicted = prediction.labels.array.astype(bool)
    assert not (ndimage.binary_erosion(truth, iterations=2) & ~predicted).any()
    assert not (predicted & ~ndimage.binary_dilation(truth, iterations=2)).any()


def test_volume_model_largest_component(tmp_path):
    hu = np.full((10, 16, 16), -200)
    hu[1:8, 2:10, 2:10] = 150
    hu[8:10, 13:15, 13:15] = 150
    source = write_volume_nifti(tmp_path / "case.nii.gz", hu, np.diag([1.5, 1.5, 2.0, 1.0]))
    inference = volume_inference(postprocess="largest-component")
    [prediction] = predict_path(identity_model(3), inference, source)
    expected = np.zeros(hu.shape, np.uint8)
    expected[1:8, 2:10, 2:10] = 1
    np.testing.assert_array_equal(prediction.labels.array, expected)


def test_volume_model_on_a_dicom_series_writes_a_seg(tmp_path):
    hu = synthetic_hu((6, 16, 16), seed=2)
    folder = write_ct_series(tmp_path / "ct", hu, spacing=(1.5, 1.5), step=2.0)
    run = write_run(tmp_path / "run", identity_model(3), volume_inference())
    [path] = predict_command(run, folder, tmp_path / "out", "dicom-seg")
    hu_read, datasets = pydicom_series(folder)
    masks = seg_masks_by_pydicom(path, datasets)
    np.testing.assert_array_equal(masks["organ"], windowed(hu_read, 53.5, 221.0) >= 0.5)


# --- radiographs -------------------------------------------------------------------------------


def radiograph_inference(image_size, **changes) -> dict:
    inference = {
        "kind": "slices", "window": "scale_intensity", "image_size": list(image_size),
        "num_classes": 1, "threshold": 0.5, "postprocess": "none", "modality": "radiograph",
    }  # fmt: skip
    return {**inference, **changes}


def write_cr(path, pixels, **attributes) -> pathlib.Path:
    """A computed radiograph as kseg's phantoms write it: no patient geometry."""
    ds = new_dataset(ComputedRadiographyImageStorage, generate_uid(),
                     implementation_version_name="TEST")  # fmt: skip
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.Modality, ds.PatientID = "CR", "R1"
    for keyword, value in attributes.items():
        setattr(ds, keyword, value)
    set_grayscale_pixels(ds, pixels.astype(np.uint16), bits_stored=12)
    return write_dataset(ds, path)


def gradient_image(shape, seed) -> np.ndarray:
    rng = np.random.default_rng(seed)
    rows, columns = np.mgrid[: shape[0], : shape[1]]
    return (rows * 40 + columns * 13 + rng.integers(0, 30, shape)) % 4000


def test_png_radiographs_to_png_and_nifti(tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    images = {name: gradient_image((24, 16), seed).astype(np.uint8)
              for seed, name in enumerate(["a", "b"])}  # fmt: skip
    for name, pixels in images.items():
        Image.fromarray(pixels).save(folder / f"{name}.png")
    (folder / "notes.txt").write_text("not an image")
    run = write_run(tmp_path / "run", identity_model(2), radiograph_inference((24, 16)))
    before = file_hashes(folder)
    with pytest.warns(SkippedFileWarning, match="notes.txt"):
        paths = predict_command(run, folder, tmp_path / "png", "png")
    assert paths == [tmp_path / "png" / "a.png", tmp_path / "png" / "b.png"]
    for path in paths:
        read = np.array(Image.open(path))
        np.testing.assert_array_equal(read, min_max(images[path.stem]) >= 0.5)
    with pytest.warns(SkippedFileWarning):
        [nifti, _] = predict_command(run, folder, tmp_path / "nifti", "nifti")
    assert nib.load(nifti).shape == (16, 24, 1)
    np.testing.assert_array_equal(np.asarray(nib.load(nifti).dataobj)[..., 0].T,
                                  min_max(images["a"]) >= 0.5)  # fmt: skip
    assert file_hashes(folder) == before


@pytest.mark.parametrize("format", ["dicom-seg", "rtstruct"])
def test_png_radiograph_refuses_dicom_outputs_naming_the_file(tmp_path, format):
    source = tmp_path / "chest.png"
    Image.fromarray(gradient_image((8, 8), 0).astype(np.uint8)).save(source)
    run = write_run(tmp_path / "run", identity_model(2), radiograph_inference((8, 8)))
    with pytest.raises(LayoutError, match=r"chest.png: is a PNG radiograph.*DICOM"):
        predict_command(run, source, tmp_path / "out", format)
    assert not (tmp_path / "out").exists()


def test_dicom_radiographs_to_dicom_seg_read_back_by_highdicom_and_kseg(tmp_path):
    folder = tmp_path / "cr"
    folder.mkdir()
    pixels = gradient_image((64, 64), 1)  # MR_small's size
    write_cr(folder / "IM0001", pixels, ImagerPixelSpacing=[0.2, 0.25])  # no suffix
    shutil.copy(get_testdata_file("MR_small.dcm"), folder / "mr.dcm")  # placed in the patient
    run = write_run(tmp_path / "run", identity_model(2), radiograph_inference((64, 64)))
    paths = predict_command(run, folder, tmp_path / "out", "dicom-seg")
    assert [p.name for p in paths] == ["IM0001.seg.dcm", "mr.seg.dcm"]
    for path, source in zip(paths, [folder / "IM0001", folder / "mr.dcm"], strict=True):
        ds = pydicom.dcmread(source)
        expected = (min_max(ds.pixel_array) >= 0.5)[None]
        seg = hd.seg.segread(path)
        [referenced] = seg.ReferencedSeriesSequence
        assert referenced.ReferencedInstanceSequence[0].ReferencedSOPInstanceUID == (
            ds.SOPInstanceUID
        )
        np.testing.assert_array_equal(seg_masks_by_pydicom(path, [ds])["organ"], expected)
        [mask] = read_dicom_seg_masks(path).values()
        np.testing.assert_array_equal(mask.array, expected)
    [mask] = read_dicom_seg_masks(paths[0]).values()
    np.testing.assert_allclose(mask.spacing, (1.0, 1.0, 1.0))  # the SEG keeps no spacing


def test_radiographs_refuse_rtstruct_and_3d_models(tmp_path):
    source = write_cr(tmp_path / "cr.dcm", gradient_image((8, 8), 2))
    run = write_run(tmp_path / "run", identity_model(2), radiograph_inference((8, 8)))
    with pytest.raises(LayoutError, match="cr.dcm: is a DICOM radiograph; an RT Structure"):
        predict_command(run, source, tmp_path / "out", "rtstruct")
    volume_run = write_run(tmp_path / "volume", identity_model(3), volume_inference())
    png = tmp_path / "chest.png"
    Image.fromarray(gradient_image((8, 8), 0).astype(np.uint8)).save(png)
    with pytest.raises(LayoutError, match="chest.png: is a radiograph; .* 3D volume model"):
        predict_command(volume_run, png, tmp_path / "out", "nifti")


def test_dicom_radiograph_nifti_has_the_imager_pixel_spacing(tmp_path):
    source = write_cr(
        tmp_path / "cr.dcm", gradient_image((12, 10), 2), ImagerPixelSpacing=[0.2, 0.25]
    )
    run = write_run(tmp_path / "run", identity_model(2), radiograph_inference((12, 10)))
    [path] = predict_command(run, source, tmp_path / "out", "nifti")
    image = nib.load(path)
    assert image.shape == (10, 12, 1)
    np.testing.assert_allclose(nib.affines.voxel_sizes(image.affine), (0.25, 0.2, 1.0))
    [prediction] = predict_path(identity_model(2), radiograph_inference((12, 10)), source)
    assert isinstance(prediction, Prediction) and prediction.kind == "radiograph"
    assert prediction.dicom and prediction.labels.shape == (1, 12, 10)


def test_real_chest_radiographs(shared_data, tmp_path):
    folder = tmp_path / "cxr"
    folder.mkdir()
    names = sorted(os.listdir(shared_data / "cxr-lungs" / "images"))[:2]
    for name in names:
        shutil.copy(shared_data / "cxr-lungs" / "images" / name, folder / name)
    run = write_run(tmp_path / "run", identity_model(2), radiograph_inference((512, 512)))
    paths = predict_command(run, folder, tmp_path / "out", "png")
    assert [p.name for p in paths] == names
    for name, path in zip(names, paths, strict=True):
        original = np.array(Image.open(folder / name).convert("L"))
        np.testing.assert_array_equal(np.array(Image.open(path)), min_max(original) >= 0.5)
    # a model at a quarter of the size, resized back
    run = write_run(tmp_path / "small", identity_model(2), radiograph_inference((128, 128)))
    [prediction, _] = predict_path(keras.models.load_model(run / "best.keras"),
                                   radiograph_inference((128, 128)), folder)  # fmt: skip
    original = np.array(Image.open(folder / names[0]).convert("L"))
    assert prediction.labels.shape == (1, *original.shape)
    assert dice(prediction.labels.array[0], min_max(original) >= 0.5) > 0.95


# --- errors ------------------------------------------------------------------------------------


def test_run_folder_without_config_or_model(ct_case, tmp_path):
    folder, run = ct_case
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(LayoutError, match="empty.*config.json"):
        predict_command(empty, folder, tmp_path / "out", "nifti")
    no_model = tmp_path / "no_model"
    no_model.mkdir()
    shutil.copy(run / "config.json", no_model / "config.json")
    with pytest.raises(LayoutError, match=r"no_model/best.keras: is missing"):
        predict_command(no_model, folder, tmp_path / "out", "nifti")


@pytest.mark.parametrize(
    "inference, message",
    [
        (slices_inference((8, 8), kind="patches"), "inference kind 'patches' is not one of"),
        ({"kind": "slices", "window": None, "num_classes": 1}, "lacks 'image_size'"),
        (slices_inference((8, 8), postprocess="smooth"), "postprocess 'smooth'"),
        (slices_inference((8, 8), num_classes=0), "num_classes 0"),
        (volume_inference(roi_size=[8, 8]), "roi_size"),
        (slices_inference((8, 8), window="abdominal"), "window 'abdominal'"),
        (slices_inference((8, 8), window=[40, 0]), "window"),
        (volume_inference(window=[164, -57]), "window"),
        (volume_inference(overlap=1.0), "overlap 1.0"),
        (volume_inference(blend="median"), "blend 'median'"),
        ("slices", "must be an object"),
    ],
)
def test_invalid_inference_section_names_the_config(ct_case, tmp_path, inference, message):
    folder, _ = ct_case
    run = write_run(tmp_path / "run", identity_model(2), inference)
    with pytest.raises(UnreadableFileError, match=f"run/config.json: .*{message}"):
        predict_command(run, folder, tmp_path / "out", "nifti")


def test_model_channels_must_match_num_classes(ct_case, tmp_path):
    folder, _ = ct_case
    run = write_run(tmp_path / "run", identity_model(2), slices_inference((24, 20), num_classes=3))
    with pytest.raises(UnreadableFileError, match="num_classes is 3 but .*best.keras outputs 1"):
        predict_command(run, folder, tmp_path / "out", "nifti")


def test_unreadable_inputs_are_named(ct_case, tmp_path):
    _, run = ct_case
    with pytest.raises(LayoutError, match="nowhere: does not exist"):
        predict_command(run, tmp_path / "nowhere", tmp_path / "out", "nifti")
    broken = tmp_path / "broken.nii.gz"
    broken.write_bytes(b"not a nifti file at all")
    with pytest.raises(UnreadableFileError, match="broken.nii.gz"):
        predict_command(run, broken, tmp_path / "out", "nifti")
    text_only = tmp_path / "texts"
    text_only.mkdir()
    (text_only / "readme.txt").write_text("hello")
    with pytest.raises(LayoutError, match="texts"), warnings.catch_warnings():
        warnings.simplefilter("ignore", SkippedFileWarning)
        predict_command(run, text_only, tmp_path / "out", "nifti")
    with pytest.raises(ValueError, match="format 'jpeg' is not one of"):
        predict_command(run, text_only, tmp_path / "out", "jpeg")


def test_outputs_never_land_in_the_input_series(ct_case):
    folder, run = ct_case
    before = file_hashes(folder)
    with pytest.raises(LayoutError, match="lies in the input folder"):
        predict_command(run, folder, folder / "predictions", "png")
    assert file_hashes(folder) == before and not (folder / "predictions").exists()


def test_two_inputs_with_one_output_name_are_refused(tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    for suffix in ("png", "bmp"):
        Image.fromarray(np.zeros((4, 4), np.uint8)).save(folder / f"chest.{suffix}")
    with pytest.raises(LayoutError, match="chest.png: would write outputs named 'chest'"):
        predict_path(identity_model(2), radiograph_inference((4, 4)), folder)


def test_write_predictions_takes_predictions_and_labels(ct_case, tmp_path):
    folder, _ = ct_case
    predictions = predict_path(identity_model(2), slices_inference((24, 20)), folder)
    paths = write_predictions(predictions, tmp_path, "nifti", labels=LABELS)
    assert paths == [tmp_path / "patient7.nii.gz"]
    with pytest.raises(ValueError, match="format"):
        write_predictions(predictions, tmp_path, "mha", labels=LABELS)


def test_outputs_never_land_in_an_input_folder_of_radiographs(tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    Image.fromarray(gradient_image((8, 8), 0).astype(np.uint8)).save(folder / "a.png")
    run = write_run(tmp_path / "run", identity_model(2), radiograph_inference((8, 8)))
    with pytest.raises(LayoutError, match="lies in the input folder"):
        predict_command(run, folder, folder, "nifti")
    assert os.listdir(folder) == ["a.png"]


def test_a_file_that_is_no_radiograph_is_named(tmp_path):
    source = tmp_path / "scan.raw"
    source.write_text("raw detector counts, no header")
    run = write_run(tmp_path / "run", identity_model(2), radiograph_inference((8, 8)))
    with pytest.raises(LayoutError, match="scan.raw: holds no radiograph"):
        with pytest.warns(SkippedFileWarning, match="scan.raw"):
            predict_command(run, source, tmp_path / "out", "png")


def test_the_series_folder_given_as_dot_names_the_output(ct_case, tmp_path, monkeypatch):
    folder, run = ct_case
    monkeypatch.chdir(folder)
    [path] = predict_command(run, ".", tmp_path / "out", "nifti")
    assert path == tmp_path / "out" / "patient7.nii.gz"


def test_kseg_predict_command_line(ct_case, tmp_path, capsys):
    from kseg.cli import main

    folder, run = ct_case
    status = main(["predict", str(run), "--input", str(folder), "--output",
                   str(tmp_path / "out"), "--format", "dicom-seg"])  # fmt: skip
    assert status == 0
    assert (tmp_path / "out" / "patient7.seg.dcm").is_file()
    nifti = tmp_path / "case.nii.gz"
    write_volume_nifti(nifti, synthetic_hu((2, 24, 20)), np.eye(4))
    status = main(["predict", str(run), "--input", str(nifti), "--output",
                   str(tmp_path / "rt"), "--format", "rtstruct"])  # fmt: skip
    assert status == 1
    assert capsys.readouterr().err.strip().startswith(f"kseg: error: {nifti}: is a NIfTI volume")


def test_dicom_seg_of_a_radiograph_reads_on_its_reference_image(tmp_path):
    """kseg.io reads SEGs without plane positions (no frame of reference) onto the images
    the frames reference, and refuses a reference that holds none of them."""
    pixels = gradient_image((12, 10), 3)
    source = write_cr(tmp_path / "cr.dcm", pixels, ImagerPixelSpacing=[0.2, 0.25])
    [prediction] = predict_path(identity_model(2), radiograph_inference((12, 10)), source)
    [path] = write_predictions([prediction], tmp_path / "out", "dicom-seg", labels=LABELS)
    assert "FrameOfReferenceUID" not in pydicom.dcmread(path)
    [mask] = read_dicom_seg_masks(path, reference_series=prediction.image).values()
    np.testing.assert_array_equal(mask.array, (min_max(pixels) >= 0.5)[None])
    np.testing.assert_array_equal(mask.affine, prediction.image.affine)
    np.testing.assert_allclose(mask.spacing, (1.0, 0.2, 0.25))
    other = write_cr(tmp_path / "other.dcm", pixels)
    [unrelated] = predict_path(identity_model(2), radiograph_inference((12, 10)), other)
    with pytest.raises(AlignmentError, match="not in the reference series"):
        read_dicom_seg_masks(path, reference_series=unrelated.image)


def test_a_second_dicom_anon_series_does_not_replace_the_first(ct_case, tmp_path, monkeypatch):
    """CHAOS names every series folder DICOM_anon: patient 2 predicted into patient 1's
    output folder is refused before the model loads, and patient 1's file is kept."""
    _, run = ct_case
    first = write_ct_series(tmp_path / "1" / "DICOM_anon", synthetic_hu((5, 24, 20), seed=1))
    second = write_ct_series(tmp_path / "2" / "DICOM_anon", synthetic_hu((3, 24, 20), seed=2))
    out = tmp_path / "out"
    [nifti] = predict_command(run, first, out, "nifti")
    pngs = predict_command(run, first, out, "png")
    before = file_hashes(out)

    import kseg

    with monkeypatch.context() as patch:
        patch.setattr(kseg, "load_model", lambda *a, **k: pytest.fail("the model loaded"))
        for format, existing in (("nifti", nifti), ("png", pngs[0].parent)):
            with pytest.raises(LayoutError, match=f"{existing}: exists already.*--overwrite"):
                predict_command(run, second, out, format)
    predictions = predict_path(identity_model(2), slices_inference((24, 20)), second)
    with pytest.raises(LayoutError, match="DICOM_anon.nii.gz: exists already"):
        write_predictions(predictions, out, "nifti", labels=LABELS)
    assert file_hashes(out) == before

    assert predict_command(run, second, out, "nifti", overwrite=True) == [nifti]
    expected = windowed(pydicom_series(second)[0]) >= 0.5
    np.testing.assert_array_equal(np.asarray(nib.load(nifti).dataobj).transpose(2, 1, 0), expected)
    # the overwritten PNG folder holds the 3 slices of patient 2, none of patient 1's 5
    written = predict_command(run, second, out, "png", overwrite=True)
    assert sorted((out / "DICOM_anon").iterdir()) == written == pngs[:3]
    np.testing.assert_array_equal(np.stack([np.array(Image.open(p)) for p in written]), expected)
