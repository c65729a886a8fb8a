"""atomic_output: the old file survives a failed write; a finished file has normal permissions."""

import os
import stat

import pytest

from kseg._files import atomic_output


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
