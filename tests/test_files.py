"""atomic_output / atomic_directory: nothing half-written survives a failure; finished
outputs have the permissions open() / mkdir() would give them."""

import os
import stat

import pytest

from kseg._files import atomic_directory, atomic_output


def test_failed_write_keeps_the_previous_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "scores.csv"
    target.write_text("old")
    with pytest.raises(RuntimeError), atomic_output(target) as temporary:
        with open(temporary, "w") as handle:
            handle.write("half")
        raise RuntimeError("disk full")
    assert target.read_text() == "old"
    assert os.listdir(tmp_path) == ["scores.csv"]


def test_finished_file_replaces_the_target_with_the_mode_open_would_give(tmp_path):
    target = tmp_path / "sub" / "volume.nii.gz"
    with atomic_output(target) as temporary:
        assert temporary.endswith(".nii.gz")  # writers choose their format by suffix
        with open(temporary, "w") as handle:
            handle.write("new")
    reference = tmp_path / "reference"
    reference.write_text("x")  # created by open() under the same umask
    assert target.read_text() == "new"
    assert stat.S_IMODE(target.stat().st_mode) == stat.S_IMODE(reference.stat().st_mode)


def test_failed_folder_leaves_nothing_under_the_final_name(tmp_path):
    target = tmp_path / "Task09_Spleen"
    with pytest.raises(RuntimeError), atomic_directory(target) as staging:
        (staging / "imagesTr").mkdir()
        raise RuntimeError("disk full")
    assert os.listdir(tmp_path) == []


def test_finished_folder_has_the_mode_mkdir_would_give(tmp_path):
    with atomic_directory(tmp_path / "data" / "patient") as staging:
        (staging / "slice.dcm").write_text("x")
    reference = tmp_path / "reference"
    reference.mkdir()
    target = tmp_path / "data" / "patient"
    assert (target / "slice.dcm").read_text() == "x"
    assert stat.S_IMODE(target.stat().st_mode) == stat.S_IMODE(reference.stat().st_mode)


def test_phantom_patient_folders_are_not_private(tmp_path):
    from kseg.data import phantoms

    root = phantoms.write_chaos(tmp_path / "chaos", num_patients=1, num_slices=2, size=16)
    reference = tmp_path / "reference"
    reference.mkdir()
    (patient,) = (root / "Train_Sets" / "CT").iterdir()
    assert stat.S_IMODE(patient.stat().st_mode) == stat.S_IMODE(reference.stat().st_mode)
