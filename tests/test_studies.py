"""kseg.studies: each study end to end on a tiny radiograph phantom (nine 32 x 32 images in
three folds, models of a few steps), so the numbers are not the point; the tables are.

References from outside the code under test: the run's own evaluation table (written by the
recipe's ``evaluate`` and read back with the csv module), an expected calibration error
recomputed with a numpy loop over all pooled voxels, the fitted-weight ensemble's guarantee
(its grid holds every single member, so on validation it can never be worse than the best
one), and the files read back with csv and Pillow.
"""

import argparse
import csv
import math
import shutil
import subprocess
import sys
import warnings

import numpy as np
import pytest
from PIL import Image

from kseg import studies

TINY_XRAY = [
    "--epochs", "1", "--image-size", "32", "--batch-size", "4", "--base-filters", "8",
    "--learning-rate", "1e-2", "--phantom-images", "9", "--phantom-size", "32", "--folds", "3",
]  # fmt: skip
TEST_IMAGES = 3  # 9 phantom images in 3 folds


@pytest.fixture(scope="module", autouse=True)
def eager_functions():
    """The studies' models train for a few steps, so tracing their train and predict
    functions is most of the time: eagerly, this file's consistency study took 76 s
    instead of 226 s and train-size 37 s instead of 94 s on a loaded 2-core machine, with
    the same scores. Graph-mode training of the same models is tested where it is the
    point (tests/test_consistency.py, the recipe tests)."""
    import tensorflow as tf

    before = tf.config.functions_run_eagerly()
    tf.config.run_functions_eagerly(True)
    yield
    tf.config.run_functions_eagerly(before)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A trained tiny xray_multiclass run with its test evaluation written."""
    from kseg.recipes import load

    recipe = load("xray_multiclass")
    folder = tmp_path_factory.mktemp("studies") / "run"
    args = recipe.parse_args([*TINY_XRAY, "--output-dir", str(folder)])
    recipe.train(args)
    recipe.evaluate(args, split="test")
    return folder


def study(name, run_folder, *options):
    return studies.run_study(name, studies.parse_args(name, [str(run_folder), *options]))


def read_csv(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def check_files(table, rows):
    folder = table.folder
    assert folder.name == table.name and folder.parent.name == "studies"
    assert len(read_csv(folder / "table.csv")) == rows == len(table.rows)
    assert "Per patient:" in (folder / "table.txt").read_text()
    with Image.open(folder / "figure.png") as figure:
        assert figure.format == "PNG" and figure.size[0] > 100


def test_noise_at_sigma_zero_is_the_runs_own_evaluation(run):
    table = study("noise", run, "--sigmas", "0", "0.3")
    check_files(table, 2 * TEST_IMAGES)
    evaluation = {
        row["patient_id"]: row for row in read_csv(run / "evaluation" / "test" / "scores.csv")
    }
    assert len(evaluation) == TEST_IMAGES
    clean = [row for row in table.rows if row["sigma"] == 0.0]
    assert sorted(row["patient_id"] for row in clean) == sorted(evaluation)
    metric_columns = [
        c
        for c in next(iter(evaluation.values()))
        if c.split("_")[0] in ("dice", "iou", "precision", "recall", "hd95")
    ]
    assert metric_columns
    for row in clean:
        for column in metric_columns:
            assert row[column] == pytest.approx(
                float(evaluation[row["patient_id"]][column]), abs=1e-9
            ), column
        dice = [row[c] for c in row if c.startswith("dice_") and c != "dice_mean"]
        assert row["dice_mean"] == pytest.approx(np.mean(dice))
    noisy = {row["patient_id"]: row for row in table.rows if row["sigma"] == 0.3}
    assert any(noisy[row["patient_id"]]["dice_mean"] != row["dice_mean"] for row in clean)
    assert [entry["sigma"] for entry in table.summary] == [0.0, 0.3]


def numpy_top_label_ece(probabilities, labels, bins):
    """Guo et al.'s ECE over pooled voxels, written out with a loop over the bins."""
    confidence = probabilities.max(axis=-1).ravel()
    correct = (probabilities.argmax(axis=-1) == labels).ravel()
    edges = np.linspace(0.0, 1.0, bins + 1)
    total = 0.0
    for lower, upper in zip(edges[:-1], edges[1:], strict=True):
        inside = (confidence > lower) & (confidence <= upper)
        if lower == 0.0:
            inside |= confidence == 0.0
        if inside.any():
            total += inside.sum() * abs(confidence[inside].mean() - correct[inside].mean())
    return total / confidence.size


def test_uncertainty_of_a_dropout_model(run, tmp_path):
    from kseg.evaluation import predict_on_mask_grid
    from kseg.recipes import load_run

    copy = tmp_path / "dropout_run"
    shutil.copytree(run, copy, ignore=shutil.ignore_patterns("studies", "evaluation"))
    recipe, args = load_run(copy)
    args.dropout = 0.25  # xray_multiclass --dropout, read by its build_model
    data = studies.study_data("xray_multiclass", args, None)
    studies.train_model(data, seed=0, steps=3).save(copy / "best.keras")
    recipe.evaluate(args, split="test")  # the recipe's table of the same model

    table = study("uncertainty", copy, "--mc-samples", "3", "--tta-samples", "2", "--bins", "10")
    check_files(table, 3 * TEST_IMAGES)
    assert [entry["method"] for entry in table.summary] == ["model", "mc_dropout", "tta"]
    evaluation = read_csv(copy / "evaluation" / "test" / "scores.csv")
    expected = {
        row["patient_id"]: np.mean(
            [float(row[f"dice_{name}"]) for name in ("lungs", "heart", "clavicles")]
        )
        for row in evaluation
    }
    for row in table.rows:
        if row["method"] == "model":
            assert row["dice"] == pytest.approx(expected[row["patient_id"]], abs=1e-9)
        for column in ("auroc_entropy", "auroc_mutual_information"):
            assert math.isnan(row[column]) or 0.0 <= row[column] <= 1.0
        assert 0.0 <= row["ece"] <= 1.0 and 0.0 <= row["brier"] <= 2.0
    for row in table.rows:  # both AUROCs score the same errors: undefined together
        if row["method"] == "mc_dropout":
            assert math.isnan(row["auroc_mutual_information"]) == math.isnan(row["auroc_entropy"])
    # pooled calibration of the plain model, recomputed from its probabilities
    import kseg

    model = kseg.load_model(copy / "best.keras")
    cases = list(predict_on_mask_grid(model, studies.load_cases(data, "test")))
    probabilities = np.concatenate([p.reshape(-1, p.shape[-1]) for _, _, p, _ in cases])
    labels = np.concatenate([mask.ravel() for _, mask, _, _ in cases])
    (model_summary,) = [entry for entry in table.summary if entry["method"] == "model"]
    assert model_summary["ece_pooled"] == pytest.approx(
        numpy_top_label_ece(probabilities, labels, 10), abs=1e-5
    )
    assert -1.0 <= model_summary["spearman_uncertainty_dice"] <= 1.0


def test_uncertainty_without_dropout_says_mc_dropout_was_skipped(run):
    table = study("uncertainty", run, "--mc-samples", "2", "--tta-samples", "2")
    assert {row["method"] for row in table.rows} == {"model", "tta"}
    assert any("MC dropout skipped" in note for note in table.notes)


def test_ensemble_fitted_weights_never_lose_to_the_best_member_on_validation(run):
    table = study("ensemble", run, "--members", "2", "--steps", "3", "--weight-step", "0.1")
    methods = ["member-0", "member-1", "mean", "fitted", "majority"]
    check_files(table, len(methods) * TEST_IMAGES)
    summary = {entry["method"]: entry for entry in table.summary}
    assert list(summary) == methods
    best_member = max(
        summary["member-0"]["validation_dice"], summary["member-1"]["validation_dice"]
    )
    assert summary["fitted"]["validation_dice"] >= best_member - 1e-12
    weights = [float(w) for w in summary["fitted"]["weights"].split()]
    assert len(weights) == 2 and sum(weights) == pytest.approx(1.0, abs=0.011)
    assert summary["mean"]["weights"] == "0.50 0.50"


@pytest.mark.slow
def test_train_size_one_model_per_nested_subset(run):
    table = study("train-size", run, "--sizes", "1", "3", "--steps", "3")
    check_files(table, 2 * TEST_IMAGES)
    assert [entry["train_patients"] for entry in table.summary] == [1, 3]
    assert all(entry["patients"] == TEST_IMAGES for entry in table.summary)


@pytest.mark.slow
def test_augment_and_losses_one_row_per_setting_and_patient(run):
    table = study("augment", run, "--steps", "3")
    check_files(table, 2 * TEST_IMAGES)
    assert [entry["augmentation"] for entry in table.summary] == ["on", "off"]
    table = studies.run_study(
        "losses",
        studies.parse_args(
            "losses",
            [
                "xray_multiclass",
                "--steps",
                "3",
                "--losses",
                "bce",
                "topk",
                *TINY_XRAY,
                "--output-dir",
                str(run),
            ],
        ),
    )  # a recipe source: its options, no config read
    check_files(table, 2 * TEST_IMAGES)
    assert table.column("loss") == ["bce"] * TEST_IMAGES + ["topk"] * TEST_IMAGES


@pytest.mark.slow
def test_consistency_methods_at_equal_steps_stay_finite(run):
    table = study("consistency", run, "--labeled", "1", "--steps", "3")
    methods = ["supervised", "mean-teacher", "mean-teacher-ema", "fixmatch"]
    check_files(table, len(methods) * TEST_IMAGES)
    assert [entry["method"] for entry in table.summary] == methods
    assert all(row["labeled"] == 1 and row["unlabeled"] == 2 for row in table.rows)
    assert all(np.isfinite(row["dice_mean"]) for row in table.rows)


def test_consistency_logits_network_is_the_recipes_network_before_its_softmax(run):
    from scipy.special import softmax

    from kseg.losses import DiceCELoss
    from kseg.recipes import load, load_run

    _, args = load_run(run)
    data = studies.study_data("xray_multiclass", args, None)
    logits, loss = studies._logits_network(data)
    assert isinstance(loss, DiceCELoss) and loss.from_logits  # xray_multiclass's loss
    recipe_model = load("xray_multiclass").build_model(args, data.num_classes)
    logits.set_weights(recipe_model.get_weights())  # the activation holds no weights
    images = np.random.default_rng(0).random((2, 32, 32, 1), dtype=np.float32)
    with warnings.catch_warnings():
        # built on network.inputs (a list), the logits model warned at each call that
        # "the structure of `inputs` doesn't match"
        warnings.simplefilter("error", UserWarning)
        logit_values = logits.predict_on_batch(images)
    np.testing.assert_allclose(
        softmax(logit_values, axis=-1), recipe_model.predict_on_batch(images), atol=1e-5
    )


def test_study_augmentation_is_the_recipes_with_the_models_seed(run):
    from kseg.recipes import load, load_run

    _, args = load_run(run)
    data = studies.study_data("xray_multiclass", args, None)

    def unnamed(config):  # layer names count up per process; the rest is the augmentation
        if isinstance(config, dict):
            return {key: unnamed(value) for key, value in config.items() if key != "name"}
        return [unnamed(item) for item in config] if isinstance(config, list) else config

    seeded = argparse.Namespace(**{**vars(args), "seed": 7})
    expected = unnamed(load("xray_multiclass").augmenter(seeded).get_config())
    assert unnamed(studies._augmenter(data, 7).get_config()) == expected
    assert unnamed(studies._augmenter(data, 8).get_config()) != expected
    assert args.seed != 7  # the run's options are left as they were
    strong = [
        type(layer).__name__ for layer in studies._strong_augmenter(data, 7).augmentation_layers
    ]
    # the recipe's affine (no flips for the chest), then kseg's default intensity layers
    assert strong == ["RandomAffine", "RandomGaussianNoise", "RandomContrast", "RandomGaussianBlur"]


def test_recipe_conventions_without_a_run_match_the_runs_config(run):
    from kseg.recipes import load_run, run_config

    _, args = load_run(run)
    from_config = studies.study_data("xray_multiclass", args, run_config.read_config(run))
    from_recipe = studies.study_data("xray_multiclass", args, None)
    for field in (
        "window",
        "image_size",
        "num_classes",
        "labels",
        "threshold",
        "postprocess",
        "metrics",
        "splits",
    ):
        assert getattr(from_recipe, field) == getattr(from_config, field), field
    assert from_config.labels == {"lungs": 1, "heart": 2, "clavicles": 3}


def test_training_batches_are_the_same_for_a_seed_within_a_process(run):
    from kseg.data.pipeline import split_patient_ids
    from kseg.recipes import load

    recipe = load("xray_multiclass")
    four_folds = [*TINY_XRAY[:-1], "4", "--output-dir", str(run)]  # two training files
    data = studies.study_data("xray_multiclass", recipe.parse_args(four_folds), None)
    assert data.splits["train"].count("+") == 1
    patients = split_patient_ids(data.builder, data.splits["train"])

    def batches(seed):
        stream = studies._batches(data, patients, seed=seed, augment=False, images_only=True)
        return np.concatenate([batch.numpy() for batch in stream.take(4)])

    first = batches(0)
    for _ in range(5):  # unseeded, each call deals the two files in a random order
        np.testing.assert_array_equal(batches(0), first)


def test_bad_settings_are_refused_before_training(run):
    from kseg.recipes import load_run

    _, args = load_run(run)
    data = studies.study_data("xray_multiclass", args, None)
    with pytest.raises(ValueError, match="sizes must lie in 1..3"):
        studies.train_size_study(data, sizes=[4], steps=1)
    with pytest.raises(ValueError, match="labeled must lie in 1..2"):
        studies.consistency_study(data, labeled=3, steps=1)
    with pytest.raises(ValueError, match="sigmas must be finite"):
        studies.noise_study(data, sigmas=[-0.1])
    with pytest.raises(ValueError, match="at least 2"):
        studies.ensemble_study(data, members=1, steps=1)
    with pytest.raises(ValueError, match="losses must be names"):
        studies.losses_study(data, losses=["hinge"], steps=1)


def test_a_run_without_a_test_fold_is_refused_with_the_reason(run, tmp_path, capsys):
    from kseg.recipes import load_run

    _, args = load_run(run)
    args.test_fold = None  # as a --test-fold none run records it
    data = studies.study_data("xray_multiclass", args, None)
    assert "test" not in data.splits
    with pytest.raises(studies.StudySettingsError, match="has no test fold"):
        studies.load_cases(data, "test")
    assert [case[0] for case in studies.load_cases(data, "validation")]
    with pytest.raises(SystemExit) as stopped:  # refused before the recipe trains
        studies.main(["noise", "xray_multiclass", "--test-fold", "none",
                      "--output-dir", str(tmp_path / "never")])  # fmt: skip
    error = capsys.readouterr().err
    assert stopped.value.code == 1 and len(error.splitlines()) == 1
    assert error.startswith("kseg: error: ") and "no test fold" in error
    assert not (tmp_path / "never").exists()


def test_a_3d_recipe_is_refused_before_it_trains(tmp_path, capsys):
    with pytest.raises(SystemExit) as stopped:
        studies.main(["noise", "msd_spleen", "--output-dir", str(tmp_path / "never")])
    error = capsys.readouterr().err
    assert stopped.value.code == 1 and "3D volume studies are not implemented" in error
    assert not (tmp_path / "never").exists()  # nothing prepared, nothing trained


def test_a_study_without_matplotlib_is_refused_before_it_trains(tmp_path, monkeypatch, capsys):
    import importlib.util

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "matplotlib" else find_spec(name, *a))
    with pytest.raises(SystemExit) as stopped:
        studies.main(["noise", "xray_multiclass", "--output-dir", str(tmp_path / "never")])
    error = capsys.readouterr().err
    assert stopped.value.code == 1 and "pip install 'kseg[viz]'" in error
    assert not (tmp_path / "never").exists()


def test_bad_settings_are_one_line_errors_not_tracebacks(run, capsys):
    with pytest.raises(SystemExit) as stopped:
        studies.main(["train-size", str(run), "--sizes", "4", "--steps", "1"])
    error = capsys.readouterr().err
    assert stopped.value.code == 1 and len(error.splitlines()) == 1
    assert error.startswith("kseg: error: sizes must lie in 1..3")
    for name, options, expected in [
        ("ensemble", ["--members", "1"], "must be at least 2"),
        ("ensemble", ["--weight-step", "0.3"], "1 / step must be a whole number"),
        ("consistency", ["--ema-decay", "1"], "must lie in [0, 1)"),
        ("consistency", ["--threshold", "1.5"], "must lie in [0, 1]"),
    ]:
        with pytest.raises(SystemExit) as stopped:
            studies.parse_args(name, [str(run), *options])
        assert stopped.value.code == 2 and expected in capsys.readouterr().err, options


def test_recipe_options_are_not_abbreviations_of_study_options():
    args = studies.parse_args("losses", ["xray_multiclass", "--seed", "3"])
    assert args.seeds is None and args.recipe_arguments == ["--seed", "3"]


def test_command_line(tmp_path, capsys):
    args = studies.parse_args("noise", ["xray_multiclass", "--sigmas", "0", "0.1", "--epochs", "2"])
    assert args.source == "xray_multiclass" and args.sigmas == [0.0, 0.1]
    assert args.recipe_arguments == ["--epochs", "2"]
    args = studies.parse_args(
        "losses",
        [
            "xray_multiclass",
            "--steps",
            "5",
            "--epochs",
            "2",
            "--output-dir",
            str(tmp_path / "recipe_run"),
        ],
    )
    recipe, recipe_args, config = studies._source(args, needs_model=False)
    assert (recipe, recipe_args.epochs, recipe_args.output_dir, config) == (
        "xray_multiclass",
        2,
        tmp_path / "recipe_run",
        None,
    )
    assert args.steps == 5
    run_folder = tmp_path / "run"
    run_folder.mkdir()
    (run_folder / "config.json").write_text("{}")
    with pytest.raises(SystemExit) as stopped:
        studies.parse_args("noise", [str(run_folder), "--epochs", "2"])
    assert stopped.value.code == 2
    assert "unrecognized arguments after a run folder: --epochs 2" in capsys.readouterr().err
    with pytest.raises(SystemExit) as stopped:
        studies.main(["noise", str(tmp_path / "missing")])
    assert stopped.value.code == 1
    error = capsys.readouterr().err
    assert error.startswith("kseg: error: ") and "missing" in error and len(error.splitlines()) == 1
    with pytest.raises(SystemExit) as stopped:
        studies.main(["speed"])
    assert stopped.value.code == 2 and "NAME must be one of noise, train-size" in (
        capsys.readouterr().err
    )
    for name in studies.STUDIES:
        studies.add_arguments(argparse.ArgumentParser(), name)
    with pytest.raises(ValueError, match="unknown study 'speed'"):
        studies.add_arguments(argparse.ArgumentParser(), "speed")
    with pytest.raises(ValueError, match="3D volume studies are not implemented"):
        studies.study_data("msd_spleen", argparse.Namespace())
    imported = subprocess.run(
        [sys.executable, "-c", "import sys, kseg.studies; print('tensorflow' in sys.modules)"],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    ).stdout
    assert imported.strip() == "False"


def test_a_study_from_a_recipe_command_line_trains_with_the_plan(tmp_path):
    """A study of a recipe (no run folder) prepares the data as the recipe's training does:
    with --plan auto the options the command line leaves out come from RUN/plan.json."""
    import json

    from kseg.recipes import load

    recipe = load("xray_multiclass")
    args = recipe.parse_args(["--output-dir", str(tmp_path / "run"), "--phantom-images", "9",
                              "--phantom-size", "32", "--folds", "3", "--base-filters", "8"])
    data = studies.study_data("xray_multiclass", args)
    plan = json.loads((tmp_path / "run" / "plan.json").read_text())
    assert data.image_size == tuple(plan["patch_size"]) != (128, 128)
    assert (args.batch_size, args.depth) == (plan["batch_size"], plan["depth"])
    assert args.base_filters == 8  # given on the command line: the plan's 16 does not win
