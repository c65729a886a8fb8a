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
    from kseg.phantoms import chaos

    root = chaos.write_chaos(tmp_path / "chaos", num_patients=1, num_slices=2, size=16)
    reference = tmp_path / "reference"
    reference.mkdir()
    (patient,) = (root / "Train_Sets" / "CT").iterdir()
    assert stat.S_IMODE(patient.stat().st_mode) == stat.S_IMODE(reference.stat().st_mode)


def test_stale_temporaries_of_a_killed_writer_are_removed_and_nothing_else(tmp_path):
    """A writer killed inside atomic_output (SIGKILL: no finally runs) leaves its temporary;
    remove_stale_temporaries removes exactly the temporaries of that target."""
    import signal
    import subprocess
    import sys

    from kseg._files import remove_stale_temporaries

    target = tmp_path / "best.keras"
    target.write_text("previous model")
    killed = subprocess.run(
        [
            sys.executable,
            "-c",
            "import os, signal, sys\n"
            "from kseg._files import atomic_output\n"
            "with atomic_output(sys.argv[1]) as temporary:\n"
            "    open(temporary, 'w').write('half a model')\n"
            "    os.kill(os.getpid(), signal.SIGKILL)\n",
            str(target),
        ],
        cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
    )
    assert killed.returncode == -signal.SIGKILL
    (leftover,) = [p for p in tmp_path.iterdir() if p.name != "best.keras"]
    assert leftover.name.startswith(".best.keras.") and leftover.name.endswith(".keras")
    assert target.read_text() == "previous model"

    unrelated = [
        ".best.keras.json.ab12cd_3.keras.json",  # the temporary of best.keras.json
        ".best.keras.notes",
        "best.keras.ab12cd_3.keras",  # not hidden: someone's own file
        ".best.keras.ab12cd_34.keras",  # nine characters
    ]
    for name in unrelated:
        (tmp_path / name).write_text("keep")
    (tmp_path / ".best.keras.zz99__00.keras").mkdir()  # a folder, not a temporary file
    assert remove_stale_temporaries(target) == [leftover]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["best.keras", ".best.keras.zz99__00.keras", *unrelated]
    )
    assert remove_stale_temporaries(tmp_path / "missing" / "best.keras") == []


def test_temporaries_are_named_as_the_cleaner_expects(tmp_path):
    from kseg._files import remove_stale_temporaries

    for name in ("best.keras", "best.keras.json", "latest.weights.h5", "history.csv"):
        with atomic_output(tmp_path / name) as temporary:
            assert os.path.exists(temporary)
            assert remove_stale_temporaries(tmp_path / name) == [
                tmp_path / os.path.basename(temporary)
            ]
            with open(temporary, "w") as handle:  # the writer carries on regardless
                handle.write(name)
        assert (tmp_path / name).read_text() == name


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc to name fds")
def test_file_is_flushed_before_the_rename_and_the_folder_after(tmp_path, monkeypatch):
    import kseg._files

    events = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(descriptor):
        events.append(("fsync", os.readlink(f"/proc/self/fd/{descriptor}")))
        real_fsync(descriptor)

    def replace(source, destination):
        events.append(("replace", os.fspath(source), os.fspath(destination)))
        real_replace(source, destination)

    monkeypatch.setattr(kseg._files.os, "fsync", fsync)
    monkeypatch.setattr(kseg._files.os, "replace", replace)
    target = tmp_path / "scores.csv"
    with atomic_output(target) as temporary, open(temporary, "w") as handle:
        handle.write("1,2")
    assert events == [
        ("fsync", temporary),
        ("replace", temporary, str(target)),
        ("fsync", str(tmp_path)),
    ]
