"""The clean-up recorded in config.json's inference section is the one evaluate and predict
apply: every label ("largest-component") or only the labels a cross-validation chose
("postprocess_labels")."""

import pathlib

import numpy as np
import pytest

from kseg.errors import UnreadableFileError
from kseg.predict import checked_inference, postprocessing
from kseg.recipes import load, run_config

TINY_XRAY = [
    "--plan", "none", "--epochs", "1", "--image-size", "32", "--batch-size", "4",
    "--base-filters", "8", "--learning-rate", "1e-2", "--phantom-images", "9",
    "--phantom-size", "32", "--folds", "3",
]
SLICES = {"kind": "slices", "window": None, "image_size": [32, 32], "num_classes": 4,
          "threshold": 0.5, "modality": "radiograph"}


def two_objects_per_label():
    """Label 1: a 3x3 and a 1x1 square; label 2: a 2x2 and a 1x1 square."""
    labels = np.zeros((10, 10), np.uint8)
    labels[0:3, 0:3] = 1
    labels[8, 8] = 1
    labels[5:7, 0:2] = 2
    labels[0, 9] = 2
    return labels


def test_the_recorded_labels_are_cleaned_and_the_others_kept():
    labels = two_objects_per_label()
    only_two = postprocessing({**SLICES, "postprocess": "none", "postprocess_labels": [2]})
    expected = labels.copy()
    expected[0, 9] = 0  # label 2's smaller object; label 1 keeps both of its objects
    np.testing.assert_array_equal(only_two(labels), expected)

    every = postprocessing({**SLICES, "postprocess": "largest-component"})
    expected[8, 8] = 0
    np.testing.assert_array_equal(every(labels), expected)
    assert postprocessing({**SLICES, "postprocess": "none"}) is None
    assert postprocessing({**SLICES, "postprocess": "none", "postprocess_labels": []}) is None


@pytest.mark.parametrize("chosen", ["2", [0], [1.5], [True], {"lungs": 1}])
def test_a_malformed_label_list_is_named(chosen, tmp_path):
    with pytest.raises(UnreadableFileError, match="postprocess_labels"):
        checked_inference({**SLICES, "postprocess": "none", "postprocess_labels": chosen},
                          tmp_path / "config.json")


def case_predictions(run_dir):
    folder = pathlib.Path(run_dir) / "evaluation" / "test" / "cases"
    return {path.stem: np.load(path)["prediction"] for path in sorted(folder.glob("*.npz"))}


@pytest.fixture(scope="module")
def tiny_xray_run(tmp_path_factory):
    recipe = load("xray_multiclass")
    args = recipe.parse_args(["--output-dir", str(tmp_path_factory.mktemp("run")), *TINY_XRAY])
    recipe.train(args)
    return recipe, args


@pytest.mark.slow
def test_xray_evaluate_applies_the_recorded_clean_up(tiny_xray_run):
    from kseg.inference import keep_largest_component

    recipe, args = tiny_xray_run
    recipe.evaluate(args, split="test")
    plain = case_predictions(args.output_dir)

    run_config.update_inference(args.output_dir, postprocess="none", postprocess_labels=[2, 3])
    recipe.evaluate(args, split="test")
    cleaned = case_predictions(args.output_dir)
    assert cleaned.keys() == plain.keys() and plain
    expected = {image: keep_largest_component(prediction, labels=[2, 3])
                for image, prediction in plain.items()}  # fmt: skip
    # a one-epoch model leaves stray specks: the clean-up has something to remove
    assert any(not np.array_equal(expected[image], plain[image]) for image in plain)
    for image in plain:
        np.testing.assert_array_equal(cleaned[image], expected[image])


@pytest.mark.slow
def test_kseg_predict_replaces_an_earlier_output_only_when_told(tiny_xray_run, tmp_path,
                                                                 capsys):
    from kseg import cli

    _, args = tiny_xray_run
    radiograph = sorted(pathlib.Path(args.manual_dir).rglob("*.png"))[0]
    output = tmp_path / "predictions"
    command = ["predict", str(args.output_dir), "--input", str(radiograph),
               "--output", str(output), "--format", "png"]
    assert cli.main(command) == 0
    written = output / f"{radiograph.stem}.png"
    before = written.read_bytes()
    written.write_bytes(b"an earlier prediction")
    capsys.readouterr()

    assert cli.main(command) == 1
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and str(written) in error and "--overwrite" in error
    assert written.read_bytes() == b"an earlier prediction"
    assert cli.main([*command, "--overwrite"]) == 0
    assert written.read_bytes() == before
