"""Guards on runs and predictions found by this round's hunts, in files the hunters did not
own: a study of a run without a model, a run written into its own download, a best.keras
swapped in from another run, an evaluation folder reused, NaN voxels fed to a 2D model, and
a grey secondary capture placed in the patient.

Each is checked against what is on disk (file listings, hashes) or a hand-worked value.
"""

import json
import re

import nibabel as nib
import numpy as np
import pytest
from test_predict import (
    file_hashes,
    identity_model,
    radiograph_inference,
    slices_inference,
    synthetic_hu,
    write_run,
)
from test_radiograph_hunt import _chest, _secondary_capture
from test_run_hunt import _hand_written_run

from kseg.errors import UnreadableFileError
from kseg.io import NonFiniteVoxelWarning


def test_a_study_of_a_run_without_best_keras_is_one_line(tmp_path, capsys, monkeypatch):
    """``kseg study noise RUN`` on a run killed before its first validation prepared the
    data, then ended in a bare TypeError (the LayoutError was built with one argument); now
    the line ``kseg evaluate`` gives, before any data is read."""
    from kseg import cli, studies

    run = _hand_written_run(tmp_path / "run")
    monkeypatch.setattr(studies, "study_data",
                        lambda *a, **k: pytest.fail("the study read data without a model"))
    assert cli.main(["study", "noise", str(run)]) == 1
    error = capsys.readouterr().err.strip()
    assert error.startswith(f"kseg: error: {run / 'best.keras'}: is missing")
    assert "run the same kseg train command again" in error


def test_the_study_api_names_a_missing_model_in_one_kseg_error(tmp_path):
    """The same check where the API is called without the command (``_trained_model``)."""
    from types import SimpleNamespace

    from kseg.errors import LayoutError
    from kseg.studies import _trained_model

    data = SimpleNamespace(run_dir=tmp_path, recipe_name="xray_multiclass")
    with pytest.raises(LayoutError, match=re.escape(
            f"{tmp_path}: holds no best.keras; train the run first (kseg train "
            "xray_multiclass)")):  # fmt: skip
        _trained_model(data)


@pytest.mark.parametrize("option", ["--output-dir", "--tfds-dir"])
def test_a_run_inside_its_download_is_a_usage_error_before_anything_is_written(
    tmp_path, capsys, option
):
    """``--output-dir data/chaos/run`` wrote config.json, tfds/ and checkpoints into the
    download, and every later evaluation of the run found its prepared data stale."""
    from kseg import cli

    download = tmp_path / "chaos"
    (download / "Train_Sets").mkdir(parents=True)
    (download / "Train_Sets" / "readme.txt").write_text("the download")
    before = file_hashes(download)
    arguments = ["train", "chaos_liver", "--data-dir", str(download), "--output-dir",
                 str(tmp_path / "run"), option, str(download / "inside")]  # fmt: skip
    with pytest.raises(SystemExit) as exited:
        cli.main(arguments)
    assert exited.value.code == 2
    assert f"{option} {download / 'inside'} lies in --data-dir {download}" in (
        capsys.readouterr().err
    )
    assert file_hashes(download) == before
    assert sorted(p.name for p in download.iterdir()) == ["Train_Sets"]


def test_evaluating_a_best_keras_of_another_class_count_names_it(tmp_path):
    """A four-channel model copied into a one-class run was scored without a word (Dice 0,
    HD95 inf, exit 0)."""
    from kseg.recipes._evaluation import run_model

    run = write_run(tmp_path / "run", identity_model(2), slices_inference((12, 10)))
    expected = f"{run / 'best.keras'}: outputs 1 channels, but {run / 'config.json'} says the "
    config = json.loads((run / "config.json").read_text())
    config["inference"]["num_classes"] = 4
    (run / "config.json").write_text(json.dumps(config))
    with pytest.raises(UnreadableFileError, match=re.escape(expected)):
        run_model(run)


def test_saving_scores_removes_case_files_of_patients_not_scored(tmp_path):
    """An evaluation into the folder of an earlier one (``kseg evaluate --input`` of the
    same folder after cases were removed from it; before each input had a folder of its
    own, another folder of the same name): the earlier case files stayed beside the new
    scores."""
    from kseg.evaluation import PatientTable
    from kseg.recipes._evaluation import save_table

    cases = tmp_path / "cases"
    cases.mkdir()
    for name in ("a-1", "a-2", "b-1", "b.2"):
        np.savez(cases / f"{name}.npz", image=np.zeros((1, 2, 2)))
    (cases / "notes.txt").write_text("not a case file")
    table = PatientTable([{"patient_id": "b-1", "dice": 0.9}, {"patient_id": "b.2",
                                                                "dice": 0.8}])  # fmt: skip
    save_table(table, tmp_path)
    assert sorted(p.name for p in cases.iterdir()) == ["b-1.npz", "b.2.npz", "notes.txt"]
    assert (tmp_path / "scores.csv").read_text().splitlines()[1].startswith("b-1,")


def test_a_2d_model_refuses_nan_voxels_naming_the_file(tmp_path):
    """A CT NIfTI with NaN outside the field of view: the 2D model predicted NaN
    probabilities there and wrote them as background."""
    from kseg.predict import predict_command

    hu = synthetic_hu((3, 12, 10)).astype(np.float32)
    hu[:, :2, :2] = np.nan
    volume = tmp_path / "ct.nii.gz"
    nib.save(nib.Nifti1Image(np.transpose(hu, (2, 1, 0)), np.eye(4)), volume)
    run = write_run(tmp_path / "run", identity_model(2), slices_inference((12, 10)))
    with pytest.warns(NonFiniteVoxelWarning), pytest.raises(
        UnreadableFileError, match=re.escape(f"{volume}: 12 of 360 voxels are NaN or infinite")
    ):
        predict_command(run, volume, tmp_path / "out", "nifti")
    assert not (tmp_path / "out").exists()


def test_a_grey_colour_secondary_capture_placed_in_the_patient_is_predicted(tmp_path):
    """A grey radiograph stored as RGB samples that also carries ImagePositionPatient,
    ImageOrientationPatient and PixelSpacing was sent to the series reader, which refuses
    colour samples: ``kseg predict`` failed on a file ``read_radiograph`` reads."""
    import pydicom

    from kseg.predict import predict_command

    grey = _chest(12, 10)
    source = tmp_path / "sc.dcm"
    _secondary_capture(source, np.repeat(grey[..., None], 3, axis=-1), "RGB")
    dataset = pydicom.dcmread(source)
    dataset.ImagePositionPatient = [0.0, 0.0, 0.0]
    dataset.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    dataset.PixelSpacing = [0.2, 0.25]
    dataset.save_as(source)
    run = write_run(tmp_path / "run", identity_model(2), radiograph_inference((12, 10)))
    [path] = predict_command(run, source, tmp_path / "out", "nifti")
    image = nib.load(path)
    np.testing.assert_allclose(nib.affines.voxel_sizes(image.affine)[:2], (0.25, 0.2))
    scaled = (grey - grey.min()) / (grey.max() - grey.min())
    np.testing.assert_array_equal(np.asarray(image.dataobj)[:, :, 0].T, scaled >= 0.5)


def _nifti_folder(folder, count):
    from test_predict import write_volume_nifti

    folder.mkdir()
    for k in range(count):
        write_volume_nifti(folder / f"case_{k}.nii.gz", synthetic_hu((2, 12, 10), seed=k),
                           np.eye(4))  # fmt: skip
    return folder


def test_predict_holds_one_input_at_a_time_and_writes_each_before_the_next(
    tmp_path, monkeypatch
):
    """A folder of many volumes was read whole before the first prediction, and every
    prediction was held until the last was done: memory grew with the folder, and an error
    on the last input lost every output. Counted with weak references to the arrays read."""
    import gc
    import weakref

    from kseg import predict

    inputs = _nifti_folder(tmp_path / "in", 3)
    run = write_run(tmp_path / "run", identity_model(2), slices_inference((12, 10)))
    arrays, alive_when_predicting = [], []
    read, predict_input = predict._nifti_input, predict._predict_input

    def reading(path):
        item = read(path)
        arrays.append(weakref.ref(item[3].array))
        return item

    def predicting(model, inference, name, *rest):
        gc.collect()
        alive_when_predicting.append(sum(ref() is not None for ref in arrays))
        written = sorted(p.name for p in (tmp_path / "out").glob("*.nii.gz"))
        assert written == [f"case_{k}.nii.gz" for k in range(int(name[-1]))]
        if name == "case_2":
            raise RuntimeError("the model failed on the last input")
        return predict_input(model, inference, name, *rest)

    monkeypatch.setattr(predict, "_nifti_input", reading)
    monkeypatch.setattr(predict, "_predict_input", predicting)
    with pytest.raises(RuntimeError, match="the last input"):
        predict.predict_command(run, inputs, tmp_path / "out", "nifti")
    assert alive_when_predicting == [1, 1, 1]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["case_0.nii.gz",
                                                                   "case_1.nii.gz"]  # fmt: skip
    for k in range(2):
        written = nib.load(tmp_path / "out" / f"case_{k}.nii.gz")
        assert written.shape == (10, 12, 2)


@pytest.mark.parametrize(
    "labels", [{"liver": "one"}, {"liver": None}, {"liver": 0}, {"liver": True}, ["liver"]]
)
def test_a_config_whose_labels_are_not_positive_integers_is_named(tmp_path, labels):
    """A hand-edited ``labels`` section (a name, null, 0 or true as the value) reached the
    writers and evaluation, which took ``int(value)`` or crashed on it."""
    from kseg.recipes.run_config import read_config

    run = write_run(tmp_path / "run", identity_model(2), slices_inference((12, 10)))
    config = json.loads((run / "config.json").read_text())
    config["labels"] = labels
    (run / "config.json").write_text(json.dumps(config))
    with pytest.raises(UnreadableFileError, match=re.escape(
            f"{run / 'config.json'}: has labels {labels!r}; expected {{structure name: label "
            "value >= 1}")):  # fmt: skip
        read_config(run)


@pytest.mark.parametrize("name", ["Lung\\Left", "x" * 65])
def test_structure_names_dicom_cannot_hold_are_named_before_the_model_loads(
    ct_series, tmp_path, monkeypatch, name
):
    """``kseg predict --format rtstruct`` with a label name the writer refuses (a backslash
    reads back as two names; LO holds 64 characters) failed only after the model had
    predicted the input."""
    import kseg
    from kseg.predict import predict_command

    run = write_run(tmp_path / "run", identity_model(2), slices_inference((12, 10)),
                    labels={name: 1})  # fmt: skip
    monkeypatch.setattr(kseg, "load_model", lambda *a, **k: pytest.fail("the model loaded"))
    for format in ("rtstruct", "dicom-seg"):
        with pytest.raises(UnreadableFileError, match=re.escape(
                f"{run / 'config.json'}: labels cannot name DICOM segments or ROIs")):  # fmt: skip
            predict_command(run, ct_series, tmp_path / "out", format)
    assert not (tmp_path / "out").exists()


@pytest.fixture(scope="module")
def ct_series(tmp_path_factory):
    from test_predict import write_ct_series

    folder = tmp_path_factory.mktemp("guards_ct") / "patient"
    return write_ct_series(folder, synthetic_hu((2, 12, 10)))
