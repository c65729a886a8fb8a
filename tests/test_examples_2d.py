"""examples/lctsc_lungs.py and examples/xray_multiclass.py run end to end on tiny phantoms.

The expected patients and images come from the phantom writers' documented naming
(``kseg.phantoms.lctsc.lctsc_patient_id``, the ``images/`` files written), and the
expected columns from the LCTSC organ list, not from the examples' own output. The minimum
Dice each test asserts is what its tiny settings reach, measured on a 2-core CPU, less a
margin for run-to-run differences (see tests/test_examples.py).
"""

import csv

import pytest
from test_examples import load_example

import kseg
from kseg.io.rtstruct import LCTSC_ROI_NAMES

TINY_LCTSC = [
    "--epochs", "10", "--image-size", "64", "--batch-size", "4", "--base-filters", "8",
    "--learning-rate", "1e-2", "--phantom-patients", "5", "--phantom-test-patients", "1",
    "--phantom-slices", "6", "--phantom-size", "64",
]
# lungs at TINY_LCTSC: Dice 0.965 (fold0) and 0.962 (challenge_test) with seed 0, the
# default; 0.898 and 0.913 with seed 1.
LCTSC_MIN_LUNG_DICE = 0.8
# xray at TINY_XRAY: mean lung Dice 0.83 with seed 0, the default; 0.77 and 0.79 with seeds
# 1 and 2. The heart (0.85, 0.20, 0.93) and the clavicles (0.31, 0.0, 0.47) are learned or
# not depending on the seed in so few steps, so only the lungs have a minimum.
TINY_XRAY = [
    "--epochs", "10", "--image-size", "32", "--batch-size", "4", "--base-filters", "8",
    "--learning-rate", "1e-2", "--phantom-images", "20", "--phantom-size", "32",
]
XRAY_MIN_LUNG_DICE = 0.6
# write_lctsc names training patients LCTSC-Train-S<site>-<nnn> with sites dealt in turn,
# and its first test patient LCTSC-Test-S1-101.
PHANTOM_TRAIN_PATIENTS = {
    "LCTSC-Train-S1-001", "LCTSC-Train-S2-001", "LCTSC-Train-S3-001",
    "LCTSC-Train-S1-002", "LCTSC-Train-S2-002",
}
PHANTOM_TEST_PATIENT = "LCTSC-Test-S1-101"
# where each test split's table is written: RUN/evaluation/<evaluation name>/scores.csv
EVALUATION_OF_SPLIT = {"fold0": "test", "challenge_test": "challenge_test"}


def scores(output_dir, split):
    return output_dir / "evaluation" / EVALUATION_OF_SPLIT[split] / "scores.csv"


def read_csv(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def check_lctsc_tables(output_dir, tables):
    # 5 training patients in 5 folds: fold0 holds one of them; the one LCTSC-Test-* patient
    # is only in the challenge's own split
    assert set(tables) == {"fold0", "challenge_test"}
    assert len(tables["fold0"]) == 1
    assert tables["fold0"].patient_ids[0] in PHANTOM_TRAIN_PATIENTS
    assert tables["challenge_test"].patient_ids == [PHANTOM_TEST_PATIENT]
    for split, table in tables.items():
        rows = read_csv(scores(output_dir, split))
        assert [row["patient_id"] for row in rows] == table.patient_ids
    assert (output_dir / "best.keras").is_file() and (output_dir / "history.csv").is_file()


@pytest.mark.slow
def test_lctsc_lungs_example_end_to_end(tmp_path):
    tables = load_example("lctsc_lungs").main(["--output-dir", str(tmp_path), *TINY_LCTSC])
    check_lctsc_tables(tmp_path, tables)
    row = read_csv(scores(tmp_path, "challenge_test"))[0]
    assert {"dice", "hd95", "assd"} <= set(row)
    for split in ("fold0", "challenge_test"):
        assert tables[split].summary()["dice"]["mean"] >= LCTSC_MIN_LUNG_DICE
    assert kseg.load_model(tmp_path / "best.keras").output_shape[-1] == 1  # sigmoid lungs


@pytest.mark.slow
def test_lctsc_organs_example_scores_every_organ(tmp_path):
    # what is checked is which organs are scored, not how well: one epoch is enough
    tables = load_example("lctsc_lungs").main(
        ["--config", "organs", "--output-dir", str(tmp_path), *TINY_LCTSC, "--epochs", "1"]
    )
    check_lctsc_tables(tmp_path, tables)
    columns = set(read_csv(scores(tmp_path, "fold0"))[0]) - {"patient_id"}
    assert columns == {f"{metric}_{organ}" for organ in LCTSC_ROI_NAMES
                       for metric in ("dice", "hd95", "reference_empty")}
    # every phantom patient has every organ, so no row may be scored against an empty mask
    for row in read_csv(scores(tmp_path, "fold0")):
        assert {row[f"reference_empty_{organ}"] for organ in LCTSC_ROI_NAMES} == {"False"}
    # softmax over background and the five organs
    assert kseg.load_model(tmp_path / "best.keras").output_shape[-1] == 1 + len(LCTSC_ROI_NAMES)


@pytest.mark.slow
def test_xray_multiclass_example_end_to_end(tmp_path):
    table = load_example("xray_multiclass").main(["--output-dir", str(tmp_path), *TINY_XRAY])
    written = {path.name for path in (tmp_path / "phantom" / "images").iterdir()}
    assert len(written) == 20
    # one image per patient, 20 patients in 5 folds: the test fold holds 4 of the images,
    # each row named by its image id, the file name
    rows = read_csv(tmp_path / "evaluation" / "test" / "scores.csv")
    assert len(rows) == 4 and {row["patient_id"] for row in rows} <= written
    assert [row["patient_id"] for row in rows] == table.patient_ids
    assert {f"dice_{name}" for name in ("lungs", "heart", "clavicles")} <= set(rows[0])
    assert table.summary()["dice_lungs"]["mean"] >= XRAY_MIN_LUNG_DICE
    assert (tmp_path / "best.keras").is_file() and (tmp_path / "history.csv").is_file()
    assert not (tmp_path / "backup").exists()  # BackupAndRestore clears it after a full run
