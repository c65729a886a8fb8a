"""The README's main job, examples/chaos_liver.py, runs end to end on a tiny phantom."""

import csv
import importlib.util
import pathlib
import sys

EXAMPLES = pathlib.Path(__file__).resolve().parents[1] / "examples"


def load_example(name):
    """examples/<name>.py as a module. The scripts import ``_common`` from beside
    themselves, where ``python examples/<name>.py`` finds it first on ``sys.path``."""
    if str(EXAMPLES) not in sys.path:
        sys.path.insert(0, str(EXAMPLES))
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_chaos_liver_example_end_to_end(tmp_path, capsys):
    example = load_example("chaos_liver")
    table = example.main([
        "--output-dir", str(tmp_path), "--epochs", "2", "--image-size", "32",
        "--batch-size", "4", "--base-filters", "4", "--folds", "3",
        "--phantom-patients", "4", "--phantom-slices", "6", "--phantom-size", "64",
    ])
    # 4 patients dealt round-robin into 3 folds: fold0, the test fold, holds two of them
    # (with the default 5 folds, 4 patients would not even build)
    assert len(table) == 2
    assert (tmp_path / "tfds" / "chaos" / "ct_3fold").is_dir()
    with open(tmp_path / "test_scores.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [row["patient_id"] for row in rows] == table.patient_ids
    assert all(0.0 <= float(row["dice"]) <= 1.0 for row in rows)
    printed = capsys.readouterr().out
    assert "Writing a SYNTHETIC tree (4 patients; phantoms, not real data)" in printed
    assert "s CPU (" in printed.splitlines()[-1]  # the closing run-time line
    assert (tmp_path / "best.keras").is_file() and (tmp_path / "history.csv").is_file()
    assert not (tmp_path / "backup").exists()  # BackupAndRestore clears it after a full run


def test_msd_spleen_example_end_to_end(tmp_path):
    example = load_example("msd_spleen_highresnet")
    table = example.main([
        "--output-dir", str(tmp_path), "--epochs", "1", "--steps-per-epoch", "2",
        "--patch-size", "16", "--roi-size", "16", "--batch-size", "1",
        "--phantom-cases", "5", "--phantom-shape", "12", "32", "32",
    ])
    # 5 labelled cases in 5 folds: the test fold holds one, scored on its NIfTI grid
    assert len(table) == 1 and set(table.metric_names) == {"dice", "hd95"}
    patient = table.patient_ids[0]
    assert (tmp_path / "predictions" / f"{patient}.nii.gz").is_file()
    assert (tmp_path / "test_patients.csv").is_file() and (tmp_path / "best.keras").is_file()
