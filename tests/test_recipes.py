"""kseg.recipes: the recipe interface, RUN/config.json, the evaluation files the report
reads, evaluation of another folder (``--input``) and a two-trial tuning search.

The training tests use the radiograph recipe on a tiny phantom (nine 32 x 32 images, one
epoch): its numbers are not the point, the files are. Expected values come from outside
the code under test: the phantom's PNG files read with Pillow, Dice recomputed with numpy,
``git rev-parse`` and the modules' own ``__version__``, the dataset files listed again
with pathlib.
"""

import argparse
import csv
import hashlib
import json
import pathlib
import platform
import shutil
import subprocess
import sys

import numpy as np
import pydicom
import pytest
from PIL import Image

from kseg.errors import LayoutError, UnreadableFileError
from kseg.recipes import RECIPES, _common, load, load_run, run_config
from tfds_builders.xray import xray_dataset_builder

XRAY_VERSION = str(xray_dataset_builder.Builder.VERSION)

REPOSITORY = pathlib.Path(__file__).resolve().parents[1]
TINY_XRAY = [
    "--epochs", "1", "--image-size", "32", "--batch-size", "4", "--base-filters", "8",
    "--learning-rate", "1e-2", "--phantom-images", "9", "--phantom-size", "32", "--folds", "3",
]
# kseg.phantoms.xray.GENERIC_CLASSES with the mask values write_generic uses for them
PHANTOM_LABELS = {"lungs": 1, "heart": 2, "clavicles": 3}
PHANTOM_MASK_VALUES = {85: 1, 170: 2, 255: 3}
INTERFACE = ("DESCRIPTION", "DATASET", "add_arguments", "finish_arguments", "prepare", "train",
             "evaluate", "tune", "main")


def test_every_recipe_has_the_interface_and_imports_without_tensorflow():
    for name in RECIPES:
        module = load(name)
        assert all(hasattr(module, attribute) for attribute in INTERFACE), name
    assert {load(name).DATASET for name in RECIPES} == {"chaos", "lctsc", "xray", "msd_spleen"}
    with pytest.raises(ValueError, match="unknown recipe 'liver'"):
        load("liver")
    imported = subprocess.run(
        [sys.executable, "-c", "import sys; from kseg import recipes; "
         "[recipes.load(n) for n in recipes.RECIPES]; print(sorted(sys.modules))"],
        capture_output=True, text=True, check=True, timeout=120,
    ).stdout
    assert "'tensorflow'" not in imported and "'keras'" not in imported


@pytest.mark.parametrize("recipe, builder_module", [
    ("xray_multiclass", "tfds_builders.xray"), ("lctsc_lungs", "tfds_builders.lctsc"),
])
def test_config_choices_are_the_builders_configs(recipe, builder_module):
    import importlib

    configs = importlib.import_module(builder_module).Builder.builder_configs
    module = load(recipe)
    assert module.CONFIG_LAYOUTS == {name: config.layout for name, config in configs.items()}
    parser = argparse.ArgumentParser()
    module.add_arguments(parser)
    config_option = next(action for action in parser._actions if action.dest == "config")
    assert sorted(config_option.choices) == sorted(configs)


def test_xray_image_folders_are_the_layouts():
    from tfds_builders.xray import layout

    assert load("xray_multiclass").IMAGE_FOLDERS == {
        "generic": "images", "jsrt_scr": layout.JSRT_IMAGE_FOLDER,
        "montgomery": layout.MONTGOMERY_IMAGE_FOLDER,
    }


SLICE_RECIPES = ("chaos_liver", "lctsc_lungs", "xray_multiclass")


@pytest.mark.parametrize("name", SLICE_RECIPES)
def test_slice_recipes_share_their_splits_augmenter_and_model(name, tmp_path):
    import keras

    recipe = load(name)
    args = recipe.parse_args(["--output-dir", str(tmp_path / "run"), "--image-size", "32",
                              "--base-filters", "4", "--folds", "4"])
    expected = {"train": "fold2+fold3", "validation": "fold1", "test": "fold0"}
    if name == "lctsc_lungs":  # the challenge's own test patients, in no fold
        expected["challenge_test"] = "challenge_test"
    assert recipe.splits(args) == expected
    pair = {"images": np.ones((2, 32, 32, 1), np.float32),
            "segmentation_masks": np.ones((2, 32, 32, 1), np.float32)}
    augmented = recipe.augmenter(args)(pair, training=True)
    assert augmented["images"].shape == augmented["segmentation_masks"].shape == (2, 32, 32, 1)
    model = recipe.build_model(args, 3)
    assert model.input_shape == (None, 32, 32, 1) and model.output_shape == (None, 32, 32, 3)
    assert model.optimizer.learning_rate.numpy() == pytest.approx(args.learning_rate)
    has_dropout = any(isinstance(layer, keras.layers.Dropout) for layer in model.layers)
    assert has_dropout == (name != "xray_multiclass")  # xray: --dropout, default 0


def test_xray_dropout_option(tmp_path, capsys):
    import keras

    recipe = load("xray_multiclass")
    argv = ["--output-dir", str(tmp_path / "run"), "--image-size", "32", "--base-filters", "4"]
    model = recipe.build_model(recipe.parse_args([*argv, "--dropout", "0.25"]), 1)
    rates = [layer.rate for layer in model.layers if isinstance(layer, keras.layers.Dropout)]
    assert rates == [0.25]
    with pytest.raises(SystemExit) as stopped:
        recipe.parse_args([*argv, "--dropout", "1"])
    assert stopped.value.code == 2
    assert "--dropout must be in [0, 1), got 1.0" in capsys.readouterr().err


@pytest.mark.parametrize("name", RECIPES)
def test_test_fold_none_trains_on_every_fold_but_the_validation_one(name, tmp_path, capsys):
    recipe = load(name)
    base = ["--output-dir", str(tmp_path / "run")]
    extra = {"challenge_test": "challenge_test"} if name == "lctsc_lungs" else {}
    args = recipe.parse_args([*base, "--folds", "4", "--test-fold", "none"])
    assert args.test_fold is None and not _common.has_test_fold(args)
    assert recipe.splits(args) == {"train": "fold0+fold2+fold3", "validation": "fold1", **extra}
    args = recipe.parse_args([*base, "--folds", "2", "--test-fold", "None",
                              "--validation-fold", "0"])  # two folds are enough then
    assert recipe.splits(args) == {"train": "fold1", "validation": "fold0", **extra}
    args = recipe.parse_args([*base, "--folds", "4", "--test-fold", "3", "--validation-fold",
                              "0"])
    assert recipe.splits(args) == {"train": "fold1+fold2", "validation": "fold0",
                                   "test": "fold3", **extra}
    for argv, message in [
        (["--test-fold", "last"], "argument --test-fold: expected a fold number or none, got "
                                  "'last'"),
        (["--folds", "2"], "--folds must be at least 3 (a test, a validation and a training "
                           "fold), got 2"),
        (["--folds", "1", "--test-fold", "none"], "--folds must be at least 2 (a validation "
                                                  "and a training fold), got 1"),
        (["--test-fold", "none", "--validation-fold", "5"],
         "--validation-fold must be in 0..4 with --folds 5, got 5"),
        (["--test-fold", "1"], "--test-fold and --validation-fold must differ, both are 1"),
    ]:
        with pytest.raises(SystemExit) as stopped:
            recipe.parse_args([*base, *argv])
        assert stopped.value.code == 2
        assert message in capsys.readouterr().err
    args = recipe.parse_args([*base, "--test-fold", "none"])
    with pytest.raises(LayoutError, match="was trained with --test-fold none"):
        recipe.evaluate(args, split="test")
    # a config.json from before --test-fold: fold 0 tested, fold 1 validated
    old = argparse.Namespace(folds=3, output_dir=tmp_path / "run")
    assert _common.fold_splits(old) == {"train": "fold2", "validation": "fold1",
                                        "test": "fold0"}


@pytest.mark.slow
def test_main_without_a_test_fold_skips_the_test_table(tmp_path, capsys):
    run = tmp_path / "run"
    table = load("xray_multiclass").main(["--output-dir", str(run), *TINY_XRAY,
                                          "--test-fold", "none", "--validation-fold", "2"])
    out = capsys.readouterr().out
    assert table is None
    assert "No test evaluation: --test-fold none trained on every fold but the validation " \
           "fold 2." in out
    # nine images in three folds: folds 0 and 1 train
    assert "6 training patients; splits {'train': 'fold0+fold1', 'validation': 'fold2'}" in out
    assert (run / "best.keras").is_file() and not (run / "evaluation").exists()
    assert json.loads((run / "config.json").read_text())["arguments"]["test_fold"] is None


def write_xray(folder):
    from kseg.phantoms import xray

    xray.write_generic(folder, num_images=4, size=16, seed=0)


def write_spleen(folder):
    from kseg.phantoms.msd_spleen import write_msd_spleen

    write_msd_spleen(folder, num_training=3, num_test=0, shape=(8, 16, 16),
                     spacing=(5.0, 0.8, 0.8), apple_double=False)


def files_and_sizes(folder):
    return {path: path.stat().st_size for path in folder.rglob("*") if path.is_file()}


@pytest.mark.parametrize("recipe_name, dataset, write", [
    ("xray_multiclass", "xray", write_xray), ("msd_spleen", "msd_spleen", write_spleen),
])
def test_train_reuses_the_dataset_kseg_prepare_wrote(recipe_name, dataset, write, tmp_path,
                                                     capsys):
    from kseg import cli

    manual, tfds_dir, run = tmp_path / "download", tmp_path / "tfds", tmp_path / "run"
    write(manual)
    assert cli.main(["prepare", dataset, "--manual-dir", str(manual), "--tfds-dir",
                     str(tfds_dir), "--folds", "3"]) == 0
    prepared = files_and_sizes(tfds_dir)
    capsys.readouterr()
    recipe = load(recipe_name)
    args = recipe.parse_args(["--data-dir", str(manual), "--tfds-dir", str(tfds_dir),
                              "--output-dir", str(run), "--folds", "3"])
    builder = recipe.prepare(args)
    assert f"Using the dataset prepared in {builder.data_dir}" in capsys.readouterr().out
    assert pathlib.Path(builder.data_dir).is_relative_to(tfds_dir)
    assert files_and_sizes(tfds_dir) == prepared and not run.exists()


def test_tfds_dir_defaults_to_the_run_folder(tmp_path):
    for name in RECIPES:
        args = load(name).parse_args(["--output-dir", str(tmp_path / "run")])
        assert args.tfds_dir is None  # recorded as not given: a moved run finds its own
        assert _common.tfds_dir(args) == tmp_path / "run" / "tfds"
    # a config.json from before --tfds-dir: the folder those runs always used
    assert _common.tfds_dir(argparse.Namespace(output_dir="old")) == pathlib.Path("old/tfds")


def tuning_parser():
    parser = argparse.ArgumentParser(prog="kseg tune")
    load("xray_multiclass").add_arguments(parser)
    _common.add_tuning_arguments(parser)
    return parser


def finish(parser, argv, tmp_path):
    args = parser.parse_args(["--output-dir", str(tmp_path / "run"), *argv])
    load("xray_multiclass").finish_arguments(parser, args)
    return args


def test_tuning_options_are_parsed_and_checked(tmp_path, capsys):
    parser = tuning_parser()
    args = finish(parser, ["--strategy", "staged", "--stages", "loss=dice,dice_ce",
                           "base_filters=8,16", "learning_rate=1e-3"], tmp_path)
    assert args.stages == [("loss", ["dice", "dice_ce"]), ("base_filters", [8, 16]),
                           ("learning_rate", [0.001])]
    for argv, message in [
        (["--strategy", "staged", "--stages", "loss"], "--stages takes NAME=V1,V2,... items"),
        (["--strategy", "hyperband", "--max-trials", "2"], "--max-trials does not apply"),
        (["--max-trials", "0"], "--max-trials must be at least 1, got 0"),
        (["--stages", "loss=dice"], "--stages applies to --strategy staged only"),
        (["--mlflow"], "--mlflow applies to training runs"),
    ]:
        with pytest.raises(SystemExit) as stopped:
            finish(parser, argv, tmp_path)
        assert stopped.value.code == 2
        assert message in capsys.readouterr().err


def make_repository(folder):
    def git(*arguments):
        subprocess.run(["git", "-C", str(folder), *arguments], check=True,
                       capture_output=True, timeout=60)

    folder.mkdir()
    git("init", "-q")
    (folder / "file.txt").write_text("content")
    git("add", "file.txt")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "first")
    head = (folder / ".git" / "HEAD").read_text().split("ref: ")[1].strip()
    return (folder / ".git" / head).read_text().strip()


@pytest.mark.skipif(shutil.which("git") is None, reason="needs the git command")
def test_git_commit_only_for_the_root_of_a_checkout(tmp_path):
    sha = make_repository(tmp_path / "checkout")
    assert run_config.git_commit(tmp_path / "checkout") == sha
    (tmp_path / "checkout" / "inside").mkdir()
    # a kseg installed inside some other repository is not that repository's commit
    assert run_config.git_commit(tmp_path / "checkout" / "inside") is None
    (tmp_path / "plain").mkdir()
    assert run_config.git_commit(tmp_path / "plain") is None


def test_read_config_names_the_problem(tmp_path):
    with pytest.raises(LayoutError, match="holds no config.json"):
        run_config.read_config(tmp_path)
    with pytest.raises(LayoutError, match="is not a folder"):
        run_config.read_config(tmp_path / "missing")
    path = tmp_path / "config.json"
    path.write_text("{not json")
    with pytest.raises(UnreadableFileError, match=r"config\.json: is not a readable JSON"):
        run_config.read_config(tmp_path)
    path.write_text(json.dumps({"kseg_config_version": 99}))
    with pytest.raises(UnreadableFileError, match="kseg_config_version 99"):
        run_config.read_config(tmp_path)
    path.write_text(json.dumps({"kseg_config_version": 1, "recipe": "xray_multiclass"}))
    with pytest.raises(UnreadableFileError, match="lacks the keys"):
        run_config.read_config(tmp_path)


def fake_builder(data_dir):
    """What write_config reads of a prepared builder."""
    from types import SimpleNamespace

    return SimpleNamespace(
        name="xray", version="1.0.0", data_dir=str(data_dir),
        builder_config=SimpleNamespace(name="generic"),
        info=SimpleNamespace(splits={"fold0": SimpleNamespace(num_examples=2)}),
    )


def test_resumed_training_keeps_the_created_time(tmp_path):
    import datetime

    run, builder = tmp_path / "run", fake_builder(tmp_path / "tfds")
    args = argparse.Namespace(seed=0, epochs=2)

    def write(recipe="xray_multiclass"):
        before = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0)
        run_config.write_config(run, args, recipe, builder, {"lungs": 1}, {"kind": "slices"})
        config = json.loads((run / "config.json").read_text())
        return before, config

    def edit(**changes):
        config = json.loads((run / "config.json").read_text())
        (run / "config.json").write_text(json.dumps({**config, **changes}))

    def time_of(text):
        return datetime.datetime.fromisoformat(text)

    first = "2026-01-01T00:00:00+00:00"
    before, config = write()
    assert time_of(config["created"]) >= before and "resumed" not in config
    edit(created=first)
    (run / "backup").mkdir()  # an interrupted run: train resumes it
    before, config = write()
    assert config["created"] == first
    assert len(config["resumed"]) == 1 and time_of(config["resumed"][0]) >= before
    again_before, again = write()
    assert again["created"] == first and again["resumed"][0] == config["resumed"][0]
    assert len(again["resumed"]) == 2 and time_of(again["resumed"][1]) >= again_before
    assert run_config.read_config(run)["resumed"] == again["resumed"]
    # another recipe's backup is no resumption of this run
    before, other = write("lctsc_lungs")
    assert time_of(other["created"]) >= before and "resumed" not in other
    # a finished run (its backup deleted) trained again is a new run
    edit(created=first)
    (run / "backup").rmdir()
    before, config = write("lctsc_lungs")
    assert time_of(config["created"]) >= before and "resumed" not in config


def expected_fingerprint(builder):
    """The documented fingerprint, listed again with pathlib."""
    lines = [f"split {name} {builder.info.splits[name].num_examples}\n"
             for name in sorted(builder.info.splits)]
    root = pathlib.Path(builder.data_dir)
    files = sorted(path for path in root.rglob("*") if path.is_file())
    lines += [f"file {path.relative_to(root).as_posix()} {path.stat().st_size}\n"
              for path in files]
    return hashlib.sha256("".join(lines).encode()).hexdigest()


def prepared_phantom(tmp_path, name, images):
    recipe = load("xray_multiclass")
    args = recipe.parse_args(["--output-dir", str(tmp_path / name), "--phantom-images",
                              str(images), "--phantom-size", "16", "--folds", "3"])
    return recipe.prepare(args)


def test_dataset_fingerprint_follows_the_prepared_files(tmp_path):
    three = prepared_phantom(tmp_path, "three", 3)
    assert run_config.dataset_fingerprint(three) == expected_fingerprint(three)
    assert run_config.dataset_fingerprint(three) == run_config.dataset_fingerprint(three)
    four = prepared_phantom(tmp_path, "four", 4)
    assert run_config.dataset_fingerprint(four) != run_config.dataset_fingerprint(three)


@pytest.fixture(scope="module")
def trained_xray(tmp_path_factory):
    """A one-epoch radiograph run on a nine-image phantom (3 folds of 3 images), logged to
    an MLflow file store of its own."""
    recipe = load("xray_multiclass")
    store = tmp_path_factory.mktemp("mlruns")
    args = recipe.parse_args(["--output-dir", str(tmp_path_factory.mktemp("run")), *TINY_XRAY,
                              "--mlflow", "--mlflow-uri", str(store)])
    recipe.train(args)
    return args


@pytest.mark.slow
def test_config_json_records_the_run(trained_xray):
    args = trained_xray
    run = pathlib.Path(args.output_dir)
    config = json.loads((run / "config.json").read_text())
    import keras
    import tensorflow as tf
    import tensorflow_datasets as tfds

    import kseg

    assert config["kseg_config_version"] == 1 and config["recipe"] == "xray_multiclass"
    assert config["seed"] == 0
    assert config["arguments"]["epochs"] == 1 and config["arguments"]["image_size"] == 32
    assert config["arguments"]["output_dir"] == str(run)
    assert config["versions"] == {
        "kseg": kseg.__version__, "keras": keras.__version__, "tensorflow": tf.__version__,
        "tensorflow_datasets": tfds.__version__, "numpy": np.__version__,
        "python": platform.python_version(),
    }
    # the checkout's HEAD when training started: a commit of HEAD's history (others may
    # have committed since), or null where the tests run from an installed kseg
    is_checkout = (REPOSITORY / ".git").exists() and shutil.which("git") is not None
    if is_checkout:
        ancestor = subprocess.run(
            ["git", "-C", str(REPOSITORY), "merge-base", "--is-ancestor",
             config["git_commit"], "HEAD"], capture_output=True, timeout=60)
        assert len(config["git_commit"]) == 40 and ancestor.returncode == 0
    else:
        assert config["git_commit"] is None
    builder = load("xray_multiclass").prepare(args)
    assert config["dataset"] == {
        "name": "xray", "config": "phantom_3class_3fold", "version": XRAY_VERSION,
        "data_dir": str(run / "tfds" / "xray" / "phantom_3class_3fold" / XRAY_VERSION),
        "fingerprint": expected_fingerprint(builder),
    }
    assert config["labels"] == PHANTOM_LABELS
    assert config["inference"] == {
        "kind": "slices", "window": "scale_intensity", "image_size": [32, 32],
        "num_classes": 4, "threshold": 0.5, "postprocess": "none", "modality": "radiograph",
        "mirror_axes": [], "dicom_values": "displayed", "image_formats": ["png"],
    }
    assert (run / "tensorboard").is_dir()
    recipe, reread = load_run(run)
    assert recipe is load("xray_multiclass")
    assert vars(reread) == vars(args)


def dice(reference, prediction, label):
    truth, predicted = reference == label, prediction == label
    return 2 * np.sum(truth & predicted) / (truth.sum() + predicted.sum())


def check_cases(folder, table, expected):
    """Every row's case file holds the image and mask it was scored against (``expected``:
    ``{image_id: (stored image, label map)}``) and the prediction its Dice comes from."""
    with open(folder / "scores.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [row["patient_id"] for row in rows] == table.patient_ids
    assert sorted(path.stem for path in (folder / "cases").iterdir()) == table.patient_ids
    assert sorted(expected) == table.patient_ids
    for row in rows:
        image_id = row["patient_id"]
        stored, mask = expected[image_id]
        stored = np.asarray(stored, dtype=np.float64)
        with np.load(folder / "cases" / f"{image_id}.npz") as case:
            assert set(case.files) == {"image", "reference", "prediction", "spacing"}
            assert case["image"].dtype == np.float32
            assert case["image"].shape == case["reference"].shape == (1, *mask.shape)
            # each radiograph scaled by its own minimum and maximum, on its own grid
            np.testing.assert_allclose(
                case["image"][0], (stored - stored.min()) / np.ptp(stored), atol=1e-6)
            assert case["reference"].dtype == np.uint8 and case["prediction"].dtype == np.uint8
            np.testing.assert_array_equal(case["reference"][0], mask)
            assert case["prediction"].shape == case["reference"].shape
            assert case["spacing"].dtype == np.float64
            np.testing.assert_array_equal(case["spacing"], [1.0, 1.0, 1.0])  # pixels
            for name, label in PHANTOM_LABELS.items():
                expected_dice = dice(case["reference"], case["prediction"], label)
                assert float(row[f"dice_{name}"]) == pytest.approx(expected_dice, abs=1e-6)


def examples_read_by_the_builder(builder, split):
    import tensorflow_datasets as tfds

    return {example["image_id"].decode(): (example["image"], example["mask"])
            for example in tfds.as_numpy(builder.as_dataset(split=split))}


@pytest.mark.slow
def test_evaluate_writes_the_scored_arrays(trained_xray):
    args = trained_xray
    recipe = load("xray_multiclass")
    table = recipe.evaluate(args, split="validation")
    assert len(table) == 3  # nine images in three folds
    expected = examples_read_by_the_builder(recipe.prepare(args), "fold1")  # validation fold
    check_cases(pathlib.Path(args.output_dir) / "evaluation" / "validation", table, expected)


@pytest.mark.slow
def test_evaluate_input_scores_every_image_of_another_folder(trained_xray, tmp_path):
    from kseg.phantoms import xray

    other = tmp_path / "hospital_b"
    # 8-bit grey masks, read back here with Pillow: 85 lungs, 170 heart, 255 clavicles
    xray.write_generic(other, num_images=4, size=24, seed=7, classes=xray.GENERIC_CLASSES,
                       mask_encoding="8bit")
    table = load("xray_multiclass").evaluate(trained_xray, input_dir=other)
    run = pathlib.Path(trained_xray.output_dir)
    expected = {}
    for path in sorted((other / "images").iterdir()):
        grey = np.asarray(Image.open(other / "masks" / path.name))
        labels = np.zeros(grey.shape, np.uint8)
        for value, label in PHANTOM_MASK_VALUES.items():
            labels[grey == value] = label
        expected[path.name] = (np.asarray(Image.open(path)), labels)
    check_cases(run / "evaluation" / "input-hospital_b", table, expected)
    assert (run / "tfds-input-hospital_b").is_dir()


@pytest.mark.slow
def test_evaluate_input_reads_dicom_radiographs_as_the_png_trained_run_saw(trained_xray,
                                                                          tmp_path):
    """A run trained on PNGs (display values) scores an outside folder of DICOM radiographs
    as displayed: the VOI LUT table applied, by pydicom's own apply_voi_lut here."""
    from pydicom.pixels import apply_voi_lut

    from kseg.phantoms import xray

    other = tmp_path / "dicom_site"
    xray.write_generic(other, num_images=3, size=24, seed=3, classes=xray.GENERIC_CLASSES,
                       image_format="dicom", bit_depth=12, dicom_display="voi_lut")
    load("xray_multiclass").evaluate(trained_xray, input_dir=other)

    cases = pathlib.Path(trained_xray.output_dir) / "evaluation" / "input-dicom_site" / "cases"
    for path in sorted((other / "images").iterdir()):
        dataset = pydicom.dcmread(path)
        displayed = apply_voi_lut(dataset.pixel_array, dataset).astype(np.float64)
        stored = dataset.pixel_array.astype(np.float64)
        with np.load(cases / f"{path.name}.npz") as case:
            image = case["image"][0]
        scaled = (displayed - displayed.min()) / np.ptp(displayed)
        np.testing.assert_allclose(image, scaled, atol=1e-6)
        assert not np.allclose(image, (stored - stored.min()) / np.ptp(stored), atol=1e-3)


@pytest.mark.slow
def test_tune_runs_two_random_trials_ranked_by_volume_dice(trained_xray):
    args = argparse.Namespace(**vars(trained_xray), strategy="random", max_trials=2,
                              stages=None)
    results = load("xray_multiclass").tune(args)
    written = pathlib.Path(args.output_dir) / "tuning" / "random" / "results.json"
    assert json.loads(written.read_text()) == json.loads(json.dumps(results))
    assert results["objective"] == "val_volume_dice" and len(results["trials"]) == 2
    scores = [trial["score"] for trial in results["trials"]]
    assert scores == sorted(scores, reverse=True) and all(0 <= s <= 1 for s in scores)
    assert results["best_score"] == scores[0]
    for trial in results["trials"]:
        values = trial["hyperparameters"]
        assert values["model"] == "unet_small" and values["base_filters"] in (8, 16)
        assert values["loss"] in ("dice_ce", "dice")
        assert 1e-3 <= values["learning_rate"] <= 1e-1


@pytest.mark.slow
def test_mlflow_run_holds_the_history_and_the_test_table(trained_xray, monkeypatch):
    from mlflow.tracking import MlflowClient

    args = trained_xray
    run = pathlib.Path(args.output_dir)
    table = load("xray_multiclass").evaluate(args, split="test")
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3 file stores opt in
    client = MlflowClient(tracking_uri=pathlib.Path(args.mlflow_uri).as_uri())
    logged = client.get_run((run / "mlflow_run_id").read_text().strip())
    assert logged.data.params["arguments.epochs"] == "1"
    assert logged.data.params["recipe"] == "xray_multiclass"
    with open(run / "history.csv", newline="") as handle:
        history = list(csv.DictReader(handle))
    assert len(history) == 1  # one epoch
    for column, value in history[0].items():
        if column != "epoch":
            steps = client.get_metric_history(logged.info.run_id, column)
            assert [(m.step, m.value) for m in steps] == [(0, pytest.approx(float(value)))]
    with open(run / "evaluation" / "test" / "scores.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == len(table) == 3
    for name in PHANTOM_LABELS:
        column = [float(row[f"dice_{name}"]) for row in rows]
        expected = np.mean([value for value in column if not np.isnan(value)])
        assert logged.data.metrics[f"test/dice_{name}_mean"] == pytest.approx(expected)
    artefacts = [a.path for a in client.list_artifacts(logged.info.run_id, "evaluation/test")]
    assert artefacts == ["evaluation/test/scores.csv"]


def test_mlflow_options_are_checked(tmp_path, capsys, monkeypatch):
    recipe = load("xray_multiclass")
    argv = ["--output-dir", str(tmp_path / "run")]
    with pytest.raises(SystemExit) as stopped:
        recipe.parse_args([*argv, "--mlflow-uri", "store"])
    assert stopped.value.code == 2
    assert "--mlflow-uri applies with --mlflow only" in capsys.readouterr().err
    monkeypatch.chdir(tmp_path)
    # a folder is recorded absolute: evaluating from elsewhere logs to the same store
    args = recipe.parse_args([*argv, "--mlflow", "--mlflow-uri", "store"])
    assert args.mlflow_uri == str(tmp_path / "store")
    args = recipe.parse_args([*argv, "--mlflow", "--mlflow-uri", "http://localhost:5000"])
    assert args.mlflow_uri == "http://localhost:5000"
    assert recipe.parse_args(argv).mlflow is False
