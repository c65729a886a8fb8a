"""Session 26, predict26: kseg predict, inference, evaluation and geometry on inputs real
users give. Each test failed on the code before its fix."""

import numpy as np
import pytest

from kseg.errors import MaskError
from kseg.evaluation import evaluate_volumes


def _block_mask() -> np.ndarray:
    mask = np.zeros((4, 8, 8), np.uint8)
    mask[1:3, 2:6, 2:6] = 1
    return mask


@pytest.mark.parametrize(
    "fraction, labels",
    [(0.5, None), (0.5, {"organ": 1}), (np.float32(0.99999994), None)],
    ids=["interpolated-edge", "interpolated-edge-labels", "float-scale"],
)
def test_a_reference_of_fractional_values_is_refused_not_scored(fraction, labels):
    """kseg.metrics.dice refuses a 0.5 in a reference; evaluate_volumes compared it with 1
    and dropped the voxel: a mask resampled by interpolation scored Dice 0.933 against
    the prediction it came from, and a label file read through a float scale
    (0.99999994 for 1) scored as an empty reference."""
    mask = _block_mask()
    reference = mask.astype(np.float32)
    if fraction == 0.5:
        reference[1, 2, 2:6] = 0.5  # the mask's edge row after linear resampling
    else:
        reference *= fraction
    with pytest.raises(MaskError, match=r"patient 'p1'.*not whole numbers \((0\.5|0\.99999994)\)"):
        evaluate_volumes([("p1", reference, mask, (1.0, 1.0, 1.0))], metrics=("dice",),
                         labels=labels, progress=False)  # fmt: skip
    # whole-valued floats (nibabel's get_fdata of a label file) are labels, as before
    table = evaluate_volumes([("p1", mask.astype(np.float64), mask, None)], metrics=("dice",),
                             labels=labels, progress=False)  # fmt: skip
    assert table.rows[0][f"dice{'_organ' if labels else ''}"] == 1.0


# --- kseg predict: what an input folder holds ----------------------------------------------------


def _slices_inference(image_size) -> dict:
    return {
        "kind": "slices", "window": [40.5, 400.0], "image_size": list(image_size),
        "num_classes": 1, "threshold": 0.5, "postprocess": "none", "modality": "CT",
    }  # fmt: skip


def _unloadable_run(run, inference: dict, labels: dict):
    """A run folder whose best.keras cannot load: a test that passes refused its input or
    config before the model loads."""
    import json

    run.mkdir()
    (run / "best.keras").write_bytes(b"")
    (run / "config.json").write_text(json.dumps({
        "kseg_config_version": 1, "recipe": "chaos_liver", "arguments": {}, "seed": 0,
        "created": "2026-12-03T00:00:00+00:00", "versions": {}, "git_commit": None,
        "dataset": {"name": "test"}, "labels": labels, "inference": inference,
    }))  # fmt: skip
    return run


def _tissue(batch):
    """A 2D model's place: foreground where the windowed intensity is at least 0.5."""
    return (np.asarray(batch) >= 0.5).astype(np.float32)


def test_a_folder_of_nifti_files_and_dicom_images_is_refused_naming_both(tmp_path):
    """dcm2niix writes its NIfTI into the DICOM folder by default, and a folder of inputs
    may hold one patient's series beside other patients' volumes: the folder was read as
    NIfTI inputs and the DICOM series left out without a word."""
    import nibabel as nib
    from test_predict import synthetic_hu, write_ct_series

    from kseg.errors import LayoutError
    from kseg.predict import predict_path, write_predictions

    hu = synthetic_hu((3, 12, 10))
    folder = write_ct_series(tmp_path / "patient7", hu)
    [from_series] = predict_path(_tissue, _slices_inference((12, 10)), folder)
    [seg] = write_predictions([from_series], tmp_path / "seg", "dicom-seg", labels={"organ": 1})
    nib.save(nib.Nifti1Image(hu.transpose(2, 1, 0).astype(np.int16), np.eye(4)),
             folder / "patient7_ct.nii.gz")  # fmt: skip
    with pytest.raises(LayoutError, match=r"patient7: holds NIfTI files \(1: patient7_ct"
                       r"\.nii\.gz\) and DICOM images \(3: "):  # fmt: skip
        predict_path(_tissue, _slices_inference((12, 10)), folder)
    # sidecars, notes and a DICOM-SEG (labels, not an image) beside NIfTI files are no
    # inputs, as before
    for dicom in folder.glob("*.dcm"):
        dicom.unlink()
    (folder / "patient7_ct.json").write_text("{}")
    (folder / "README").write_text("converted with dcm2niix\n")
    (folder / "empty").write_bytes(b"")
    (folder / "patient7.seg.dcm").write_bytes(seg.read_bytes())
    [prediction] = predict_path(_tissue, _slices_inference((12, 10)), folder)
    np.testing.assert_array_equal(prediction.labels.array, hu >= 40.5)


def test_a_table_of_non_ascii_patient_ids_is_written_in_utf8_whatever_the_locale(tmp_path):
    """PatientTable.to_csv wrote in the locale's encoding and from_csv reads UTF-8: under a
    POSIX locale (ASCII) a patient named after 'Patiënt_東京.nii.gz' crashed the write
    (UnicodeEncodeError), and a Windows cp1252 file would not read back."""
    import os
    import subprocess
    import sys

    script = (
        "import sys\n"
        "from kseg.evaluation import PatientTable\n"
        "PatientTable([{'patient_id': 'Pati\\u00ebnt_\\u6771\\u4eac', 'dice': 0.9}])"
        ".to_csv(sys.argv[1])\n"
    )
    path = tmp_path / "scores.csv"
    env = {**os.environ, "LC_ALL": "POSIX", "LANG": "POSIX", "PYTHONUTF8": "0",
           "PYTHONCOERCECLOCALE": "0"}  # fmt: skip
    done = subprocess.run([sys.executable, "-c", script, str(path)], env=env,
                          capture_output=True, text=True, encoding="utf-8")  # fmt: skip
    assert done.returncode == 0, done.stderr[-600:]
    assert path.read_bytes().decode("utf-8").splitlines()[1] == "Patiënt_東京,0.9"
    from kseg.evaluation import PatientTable

    assert PatientTable.from_csv(path).patient_ids == ["Patiënt_東京"]


def test_a_dicom_seg_beside_dicom_radiographs_is_skipped_not_predicted(tmp_path):
    """An annotation tool saves a DICOM-SEG beside the radiograph it was drawn on; it has
    pixel data, so the radiograph loader read its 0/1 frame as a chest image, predicted it
    and wrote 'IM0001.seg' outputs. The series reader skips SEG objects; so does this."""
    import warnings

    from test_predict import gradient_image, radiograph_inference, write_cr

    from kseg.errors import LayoutError
    from kseg.io import SkippedFileWarning
    from kseg.predict import predict_path, write_predictions

    folder = tmp_path / "cr"
    folder.mkdir()
    pixels = gradient_image((16, 16), 1)
    write_cr(folder / "IM0001", pixels, ImagerPixelSpacing=[0.2, 0.25])
    inference = radiograph_inference((16, 16))
    [first] = predict_path(_tissue, inference, folder)
    [seg] = write_predictions([first], tmp_path / "out", "dicom-seg", labels={"lungs": 1})
    (folder / "IM0001.seg.dcm").write_bytes(seg.read_bytes())
    with pytest.warns(SkippedFileWarning, match=r"IM0001\.seg\.dcm \(Segmentation Storage"):
        predictions = predict_path(_tissue, inference, folder)
    assert [p.name for p in predictions] == ["IM0001"]
    np.testing.assert_array_equal(predictions[0].labels.array, first.labels.array)
    # the SEG alone is no radiograph: named, not predicted
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SkippedFileWarning)
        with pytest.raises(LayoutError, match=r"IM0001\.seg\.dcm: holds no radiograph"):
            predict_path(_tissue, inference, folder / "IM0001.seg.dcm")


@pytest.mark.parametrize("kind", ["slices", "volume"])
def test_an_mr_series_given_to_a_ct_run_is_refused_before_the_model_loads(tmp_path, kind):
    """CHAOS ships MR series beside its CT ones; a CT run windowed an MR series' signal as
    Hounsfield units and wrote labels with no meaning, without a word (an image file was
    refused already: it holds no HU either)."""
    import shutil

    from pydicom.data import get_testdata_file

    from kseg.errors import LayoutError
    from kseg.predict import predict_command

    series = tmp_path / "T1DUAL"
    series.mkdir()
    shutil.copy(get_testdata_file("MR_small.dcm"), series / "mr.dcm")  # a real MR slice
    inference = (
        _slices_inference((64, 64)) if kind == "slices" else {
            "kind": "volume", "window": [-57.0, 164.0], "spacing": [1.5, 1.5, 2.0],
            "roi_size": [8, 8, 8], "num_classes": 1,
        }
    )  # fmt: skip
    run = _unloadable_run(tmp_path / "run", inference, {"liver": 1})
    reason = "config.json.s inference modality .CT." if kind == "slices" else (
        r"a 3D model windowed at \[-57.0, 164.0\] HU"
    )
    with pytest.raises(LayoutError, match=r"T1DUAL: is a DICOM series of modality MR "
                       rf"\(magnetic resonance\); the run's model is a CT model \({reason}"):
        predict_command(run, series, tmp_path / "out", "nifti")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "num_classes, labels, format, message",
    [
        (1, {"liver": 2}, "nifti", r"name label values \[2\] the model cannot output: "
         r"inference num_classes 1 is one sigmoid channel, label 1"),
        (3, {"low": 1, "high": 3}, "nifti", r"name label values \[3\] the model cannot "
         r"output: inference num_classes 3 gives labels 1\.\.2"),
        (3, {"low": 1}, "dicom-seg", r"name no structure for label values \[2\] the model "
         r"outputs .*add them to \"labels\", or choose --format nifti or png"),
        (3, {"low": 1}, "rtstruct", r"name no structure for label values \[2\]"),
    ],
    ids=["sigmoid-label-2", "3-classes-label-3", "dicom-seg-unnamed", "rtstruct-unnamed"],
)
def test_labels_the_model_cannot_output_or_leaves_unnamed_are_named_before_it_runs(
    tmp_path, num_classes, labels, format, message
):
    """A hand-written config.json whose labels miss a class of a 3-class model ran the model
    and then failed in the DICOM writer with a bare ValueError ('labels holds values
    without a segment name: [2]'), naming no file, and only on inputs where class 2 was
    predicted (earlier inputs written); a label the model cannot output was accepted."""
    from test_predict import synthetic_hu, write_ct_series

    from kseg.errors import UnreadableFileError
    from kseg.predict import predict_command

    series = write_ct_series(tmp_path / "ct", synthetic_hu((2, 12, 10)))
    inference = {**_slices_inference((12, 10)), "num_classes": num_classes}
    run = _unloadable_run(tmp_path / "run", inference, labels)
    with pytest.raises(UnreadableFileError, match=r"run/config\.json: \"labels\" .*" + message):
        predict_command(run, series, tmp_path / "out", format)
    assert not (tmp_path / "out").exists()


def test_dicom_radiographs_given_to_a_ct_run_are_named_as_radiographs(tmp_path):
    """A CT run refuses PNG radiographs as holding no HU; DICOM ones failed as a series
    instead: one CR file 'lacks ImagePositionPatient ... cannot place the slice', a folder
    of two 'holds 2 series ...; pass series_uid= to choose one', advice kseg predict has
    no option for and that would not have helped."""
    from test_predict import gradient_image, write_cr

    from kseg.errors import LayoutError
    from kseg.predict import predict_command

    folder = tmp_path / "chest"
    folder.mkdir()
    for number in (1, 2):
        write_cr(folder / f"IM000{number}", gradient_image((16, 16), number),
                 ImagerPixelSpacing=[0.2, 0.2])  # fmt: skip
    run = _unloadable_run(tmp_path / "run", _slices_inference((16, 16)), {"liver": 1})
    for source in (folder / "IM0001", folder):
        with pytest.raises(LayoutError, match=rf"{source.name}: holds DICOM images of "
                           r"modality CR \(computed radiography\); the run's model is a CT "
                           r"model"):  # fmt: skip
            predict_command(run, source, tmp_path / "out", "nifti")


@pytest.mark.parametrize("name", ["case.nrrd", "CT_0042.zip"])
def test_a_single_file_kseg_cannot_read_is_named_not_its_folder(tmp_path, name):
    """An NRRD volume (3D Slicer's format) or the downloaded zip given as --input to a CT
    run failed as a one-file DICOM series, whose error named the folder around it: 'no
    DICOM image files found in the folder itself (subfolders: ...): pass the folder of one
    series', listing unrelated folders and not the file."""
    from kseg.errors import LayoutError
    from kseg.predict import predict_command

    (tmp_path / "other_patient").mkdir()
    source = tmp_path / name
    source.write_bytes(b"NRRD0004\ntype: short\ndimension: 3\n" if name.endswith("nrrd")
                       else b"PK\x03\x04" + bytes(200))  # fmt: skip
    run = _unloadable_run(tmp_path / "run", _slices_inference((16, 16)), {"liver": 1})
    with pytest.raises(LayoutError, match=rf"{name}: is not a DICOM file \(by its bytes\), a "
                       r"NIfTI file .*convert other volumes \(NRRD, MHA"):  # fmt: skip
        predict_command(run, source, tmp_path / "out", "nifti")


def _write_axial_series(folder, hu: np.ndarray, row_direction, column_direction):
    """A CT series of ``hu`` (slices in order along the normal), with the given
    ImageOrientationPatient: [1,0,0, 0,1,0] head first supine, [-1,0,0, 0,1,0] feet first
    supine (columns toward the patient's right), [-1,0,0, 0,-1,0] head first prone."""
    from pydicom.uid import CTImageStorage, generate_uid

    from kseg.io.dicom_writer import new_dataset, set_grayscale_pixels, write_dataset

    folder.mkdir(parents=True)
    normal = np.cross(row_direction, column_direction)
    uids = generate_uid(), generate_uid(), generate_uid()
    for k, plane in enumerate(hu):
        ds = new_dataset(CTImageStorage, generate_uid(), implementation_version_name="TEST")
        ds.Modality, ds.PatientID = "CT", "P1"
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = uids
        ds.ImageOrientationPatient = [*map(float, row_direction), *map(float, column_direction)]
        ds.ImagePositionPatient = [float(v) for v in np.array([5.0, -8.0, 40.0]) + 2.5 * k * normal]
        ds.PixelSpacing = [0.8, 0.8]
        ds.RescaleSlope, ds.RescaleIntercept = 1, -1024
        set_grayscale_pixels(ds, (plane + 1024).astype(np.uint16))
        write_dataset(ds, folder / f"{k:03d}.dcm")
    return folder


@pytest.mark.parametrize(
    "row_direction, column_direction, patient_right",
    [
        ((1, 0, 0), (0, 1, 0), np.s_[..., :5]),  # head first supine: right on image left
        ((-1, 0, 0), (0, 1, 0), np.s_[..., 5:]),  # feet first supine: stored mirrored
        ((-1, 0, 0), (0, -1, 0), np.s_[..., 5:]),  # head first prone: turned half round
    ],
    ids=["HFS", "FFS", "HFP"],
)
def test_a_2d_ct_model_sees_a_dicom_series_as_a_nifti_of_it(
    tmp_path, row_direction, column_direction, patient_right
):
    """A 2D CT model is shown NIfTI slices the way a head-first supine DICOM series shows
    them (LPS); a DICOM series stored otherwise (feet first: columns toward the patient's
    right; prone: turned half round) went to it as stored, so a model telling the
    patient's right from left (LCTSC's lung_right / lung_left) labelled the other side,
    and the same scan as NIfTI and as DICOM got different labels."""
    from test_predict import synthetic_hu

    from kseg.io import read_dicom_series, write_nifti
    from kseg.predict import predict_path

    def patient_right_half(batch):
        """Foreground on the image's left half: the patient's right, as DICOM shows it."""
        batch = np.asarray(batch)
        out = np.zeros(batch.shape[:-1] + (1,), np.float32)
        out[:, :, : batch.shape[2] // 2] = 1.0
        return out

    hu = synthetic_hu((3, 8, 10))
    series = _write_axial_series(tmp_path / "ct", hu, row_direction, column_direction)
    inference = _slices_inference((8, 10))
    [from_dicom] = predict_path(patient_right_half, inference, series)
    expected = np.zeros(hu.shape, np.uint8)
    expected[patient_right] = 1
    np.testing.assert_array_equal(from_dicom.labels.array, expected)
    # the same scan as a NIfTI file gets the same labels, voxel for voxel in the world
    write_nifti(read_dicom_series(series), tmp_path / "ct.nii.gz")
    [from_nifti] = predict_path(patient_right_half, inference, tmp_path / "ct.nii.gz")
    np.testing.assert_allclose(from_nifti.labels.affine, from_dicom.labels.affine, atol=1e-4)
    np.testing.assert_array_equal(from_nifti.labels.array, from_dicom.labels.array)


def test_a_radiograph_dataset_root_given_as_input_names_its_subfolders(tmp_path):
    """The root of an X-ray layout (images/ and masks/) given as --input to an X-ray run was
    'holds no radiograph: expected PNG ... files', with no word that its images lie one
    folder down; the DICOM series reader names the subfolders in the same case."""
    from PIL import Image
    from test_predict import radiograph_inference

    from kseg.errors import LayoutError
    from kseg.predict import predict_path

    for folder in ("images", "masks"):
        (tmp_path / "cxr" / folder).mkdir(parents=True)
        Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "cxr" / folder / "a.png")
    with pytest.raises(LayoutError, match=r"cxr: holds no radiograph \(subfolders are not "
                       r"read; it has images, masks: pass the one of images\)"):  # fmt: skip
        predict_path(_tissue, radiograph_inference((8, 8)), tmp_path / "cxr")


def test_a_folder_of_two_series_says_what_kseg_predict_users_can_do(tmp_path):
    """A flat PACS export (the volume beside a second series) ended in the reader's 'holds
    2 series: ...; pass series_uid= to choose one', a Python argument kseg predict has no
    option for."""
    from test_predict import synthetic_hu

    from kseg.errors import LayoutError
    from kseg.predict import predict_path

    folder = _write_axial_series(tmp_path / "export", synthetic_hu((3, 8, 10)), (1, 0, 0),
                                 (0, 1, 0))  # fmt: skip
    other = _write_axial_series(tmp_path / "other", synthetic_hu((2, 8, 10)), (1, 0, 0),
                                (0, 1, 0))  # fmt: skip
    for path in other.iterdir():
        path.rename(folder / f"second_{path.name}")
    with pytest.raises(LayoutError, match=r"export: holds 2 series: .*\(2 files\) \[CT\].*; "
                       r"kseg predict reads one series per folder: move") as raised:  # fmt: skip
        predict_path(_tissue, _slices_inference((8, 10)), folder)
    assert "series_uid=" not in str(raised.value)
