"""The README's main job, examples/chaos_liver.py, and the 3D spleen example run end to
end on tiny phantoms.

The tiny settings train for seconds, so the Dice they reach is far below the README's
figures for the full runs; each test states the minimum its settings reach, with the
values measured on a 2-core CPU and a margin for the run-to-run differences of tf.data's
parallel maps and the CPU's floating-point kernels.
"""

import csv
import json
import pathlib
import shutil

import nibabel as nib
import numpy as np
import pytest

from kseg.recipes import load

EXAMPLES = pathlib.Path(__file__).resolve().parents[1] / "examples"
# examples/<script>.py -> the kseg.recipes module it runs
RECIPE_OF_EXAMPLE = {
    "chaos_liver": "chaos_liver",
    "lctsc_lungs": "lctsc_lungs",
    "xray_multiclass": "xray_multiclass",
    "msd_spleen_highresnet": "msd_spleen",
}


def load_example(name):
    """The recipe module examples/<name>.py runs (the script is a two-line wrapper)."""
    return load(RECIPE_OF_EXAMPLE[name])


def test_example_scripts_are_wrappers_of_their_recipes():
    for script, recipe in RECIPE_OF_EXAMPLE.items():
        source = (EXAMPLES / f"{script}.py").read_text()
        assert f"from kseg.recipes import {recipe}\n" in source
        assert source.rstrip().endswith(f"{recipe}.main()")


# Six epochs of a U-Net with 8 base filters on two training patients of 16 slices at the
# phantom's own 64 x 64: mean test Dice 0.906 with seed 0, the default; 0.949 and 0.974
# with seeds 1 and 2 (ten epochs: 0.933, 0.946, 0.943). (One training patient was a coin
# toss: 0.0 to 0.87 by seed.)
CHAOS_MIN_TEST_DICE = 0.85


@pytest.mark.slow
def test_chaos_liver_example_end_to_end(tmp_path, capsys):
    example = load_example("chaos_liver")
    argv = [
        "--output-dir", str(tmp_path), "--epochs", "6", "--image-size", "64",
        "--batch-size", "4", "--base-filters", "8", "--learning-rate", "5e-3", "--folds", "3",
        "--phantom-patients", "6", "--phantom-slices", "16", "--phantom-size", "64",
    ]
    table = example.main(argv)
    # 6 patients dealt round-robin into 3 folds: fold0, the test fold, holds two of them
    assert len(table) == 2
    assert (tmp_path / "tfds" / "chaos" / "ct_3fold").is_dir()
    with open(tmp_path / "evaluation" / "test" / "scores.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [row["patient_id"] for row in rows] == table.patient_ids
    assert [float(row["dice"]) for row in rows] == table.column("dice").tolist()
    assert table.summary()["dice"]["mean"] >= CHAOS_MIN_TEST_DICE
    printed = capsys.readouterr().out
    assert "Validation Dice without / with largest-component cleanup: " in printed
    assert "Writing a SYNTHETIC tree (6 patients; phantoms, not real data)" in printed
    assert "s CPU (" in printed.splitlines()[-1]  # the closing run-time line
    assert (tmp_path / "best.keras").is_file() and (tmp_path / "history.csv").is_file()
    assert not (tmp_path / "backup").exists()  # BackupAndRestore clears it after a full run
    # the post-processing validation chose, recorded for evaluate and predict
    chosen = printed.split("Validation Dice without / with largest-component cleanup: ")[1]
    recorded = json.loads((tmp_path / "config.json").read_text())["inference"]["postprocess"]
    assert chosen.split("-> ")[1].splitlines()[0] == recorded

    # evaluate reuses that choice, and each case file holds what its row was scored on:
    # the slices the builder stored, in slice order, the CT in the abdomen window
    # (40 / 400 HU: -160 HU -> 0, 240 HU -> 1)
    import tensorflow_datasets as tfds

    args = example.parse_args(argv)
    validation = example.evaluate(args, split="validation")
    assert f"post-processing: {recorded}):" in capsys.readouterr().out
    stored = {}
    for slice_example in tfds.as_numpy(example.prepare(args).as_dataset(split="fold1")):
        patient = stored.setdefault(slice_example["patient_id"].decode(), {})
        patient[int(slice_example["slice_index"])] = slice_example
    assert sorted(stored) == validation.patient_ids
    for row in validation.rows:
        ordered = [stored[row["patient_id"]][k] for k in sorted(stored[row["patient_id"]])]
        hounsfield = np.stack([s["image"] for s in ordered]).astype(np.float64)
        mask = np.stack([s["mask"] for s in ordered])
        case_file = tmp_path / "evaluation" / "validation" / "cases" / f"{row['patient_id']}.npz"
        with np.load(case_file) as case:
            np.testing.assert_array_equal(case["reference"], mask)
            np.testing.assert_allclose(
                case["image"], np.clip((hounsfield + 160) / 400, 0, 1), atol=1e-6)
            np.testing.assert_array_equal(case["spacing"], ordered[0]["spacing"])
            truth, predicted = case["reference"] == 1, case["prediction"] == 1
            dice = 2 * np.sum(truth & predicted) / (truth.sum() + predicted.sum())
        assert row["dice"] == pytest.approx(dice)


# two training steps of HighResNet on five phantom cases in five folds
TINY_MSD_SPLEEN = [
    "--epochs", "1", "--steps-per-epoch", "2", "--patch-size", "16", "--roi-size", "16",
    "--batch-size", "1", "--phantom-cases", "5", "--phantom-shape", "12", "32", "32",
]  # fmt: skip


@pytest.fixture(scope="module")
def msd_spleen_run(tmp_path_factory):
    """The 3D spleen example's run folder and test table, made once for the tests that
    read it (a test that writes to the run works on a copy)."""
    run = tmp_path_factory.mktemp("msd_spleen") / "run"
    table = load_example("msd_spleen_highresnet").main(["--output-dir", str(run), *TINY_MSD_SPLEEN])
    return run, table


@pytest.mark.slow
def test_msd_spleen_example_end_to_end(msd_spleen_run):
    """The reported Dice is the Dice of the written NIfTI prediction against the phantom's
    label file, both read with nibabel. Two training steps of HighResNet learn no spleen
    (Dice 0.02-0.05 measured; 20 steps gave 0.0, the model then predicting nothing), so
    no minimum Dice is asserted; the untrained network's scattered foreground keeps the
    comparison from being empty against empty."""
    tmp_path, table = msd_spleen_run
    # 5 labelled cases in 5 folds: the test fold holds one, scored on its NIfTI grid
    assert len(table) == 1 and set(table.metric_names) == {"dice", "hd95"}
    patient = table.patient_ids[0]
    written = nib.load(tmp_path / "evaluation" / "test" / "predictions" / f"{patient}.nii.gz")
    label = nib.load(tmp_path / "phantom" / "Task09_Spleen" / "labelsTr" / f"{patient}.nii.gz")
    prediction = np.asarray(written.dataobj) == 1
    truth = np.asarray(label.dataobj) == 1
    assert prediction.shape == truth.shape == (32, 32, 12)  # nibabel's (x, y, z)
    np.testing.assert_allclose(written.affine, label.affine, atol=1e-4)
    assert prediction.any() and truth.any()
    dice = 2 * np.sum(prediction & truth) / (prediction.sum() + truth.sum())
    assert table.rows[0]["dice"] == pytest.approx(dice)
    assert (tmp_path / "evaluation" / "test" / "scores.csv").is_file()
    assert (tmp_path / "best.keras").is_file()
    # the case file holds the arrays the row was scored on, on the label file's grid
    with np.load(tmp_path / "evaluation" / "test" / "cases" / f"{patient}.npz") as case:
        np.testing.assert_array_equal(case["reference"], np.transpose(truth.astype(np.uint8)))
        np.testing.assert_array_equal(case["prediction"] == 1, np.transpose(prediction))
        assert case["image"].shape == (12, 32, 32) and case["image"].dtype == np.float32
        # the label file's voxel size (NIfTI stores it as float32), in (z, y, x) order
        assert case["spacing"].dtype == np.float64
        np.testing.assert_allclose(case["spacing"], label.header.get_zooms()[::-1], rtol=1e-6)
        np.testing.assert_allclose(case["spacing"], [5.0, 0.8, 0.8], rtol=1e-6)


@pytest.mark.slow
def test_msd_spleen_evaluates_every_labelled_case_of_another_folder(msd_spleen_run, tmp_path):
    """``evaluate(input_dir=...)`` scores every labelled case of a second Task09 folder
    (all its folds; the unlabelled imagesTs are not scored) against its own label files.
    A model of two training steps is enough to check which cases and files are scored."""
    from kseg.phantoms.msd_spleen import write_msd_spleen

    recipe = load_example("msd_spleen_highresnet")
    shutil.copytree(msd_spleen_run[0], tmp_path / "run")  # evaluate writes into the run
    args = recipe.parse_args(["--output-dir", str(tmp_path / "run"), *TINY_MSD_SPLEEN])
    task = write_msd_spleen(tmp_path / "site_b", num_training=3, num_test=1,
                            shape=(10, 24, 24), seed=5, label_encoding="uint8")
    table = recipe.evaluate(args, input_dir=tmp_path / "site_b")
    listed = json.loads((task / "dataset.json").read_text())["training"]
    expected = sorted(pathlib.Path(case["label"]).name.split(".")[0] for case in listed)
    assert sorted(table.patient_ids) == expected
    folder = tmp_path / "run" / "evaluation" / "input-site_b"
    for patient in expected:
        label = nib.load(task / "labelsTr" / f"{patient}.nii.gz")
        with np.load(folder / "cases" / f"{patient}.npz") as case:
            np.testing.assert_array_equal(
                case["reference"], np.transpose(np.asarray(label.dataobj)).astype(np.uint8))
        assert (folder / "predictions" / f"{patient}.nii.gz").is_file()
    assert (tmp_path / "run" / "tfds-input-site_b").is_dir()
