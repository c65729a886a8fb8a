"""The ``kseg`` command, run as a user runs it: ``python -m kseg ...`` in a fresh
interpreter (``-X importtime`` lists every module it imported).

``--help`` must answer before TensorFlow loads; a kseg error ends with one line
``kseg: error: ...`` and exit status 1 (the traceback only with ``--debug``); a usage
error is argparse's, exit status 2. ``kseg prepare`` is checked against the phantom it
reads (how many radiographs it wrote) and the ``dataset_info.json`` TFDS wrote, not
against what the command printed about itself.

Commands whose point is not the fresh interpreter (``prepare`` building a phantom, and
``evaluate`` / ``predict`` / ``report`` after a ``kseg train`` that ran as a user runs it)
go through :func:`kseg.cli.main` in the test's own process: each fresh interpreter spends
about 6 CPU-seconds importing TensorFlow, and the suite has a time budget.
"""

import contextlib
import csv
import hashlib
import io
import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest
from child_processes import PYTHON_M_KSEG, run_forked
from PIL import Image

import kseg
import tfds_builders
from kseg.data.splits import assign_folds
from kseg.phantoms import xray
from kseg.recipes import RECIPES
from kseg.studies import STUDIES
from tfds_builders.xray import xray_dataset_builder

XRAY_VERSION = str(xray_dataset_builder.Builder.VERSION)

TENSORFLOW_STACK = {"tensorflow", "keras"}
RUN_COMMANDS = ("evaluate", "predict", "report")


def kseg_command(*args, cwd, importtime=False):
    options = ["-X", "importtime"] if importtime else []
    return subprocess.run(
        [sys.executable, *options, "-m", "kseg", *map(str, args)],
        capture_output=True, text=True, cwd=cwd, timeout=300, check=False,
    )


def kseg_in_process(*args, cwd):
    """``kseg args`` through :func:`kseg.cli.main` in this process, in ``cwd``, as a
    ``CompletedProcess`` (exit status, printed stdout and stderr)."""
    from kseg.cli import main

    argv, stdout, stderr = [str(arg) for arg in args], io.StringIO(), io.StringIO()
    before = os.getcwd()
    os.chdir(cwd)
    try:
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            try:
                status = main(argv)
            except SystemExit as usage:  # argparse's usage errors
                status = usage.code
    finally:
        os.chdir(before)
    return subprocess.CompletedProcess(["kseg", *argv], status, stdout.getvalue(),
                                       stderr.getvalue())


def imported_modules(stderr: str) -> set[str]:
    """Module names from ``-X importtime`` lines: ``import time: self | cumulative | name``."""
    return {
        line.rsplit("|", 1)[1].strip()
        for line in stderr.splitlines()
        if line.startswith("import time:") and "|" in line
    }


def messages(stderr: str) -> list[str]:
    """The lines of stderr that are not ``-X importtime`` lines."""
    return [line for line in stderr.splitlines() if not line.startswith("import time:")]


def kseg_errors(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("kseg: error:")]


def run_arguments(command, run):
    """The smallest valid command line of ``command`` on the run folder ``run``."""
    return {
        "evaluate": ("evaluate", run, "--split", "test"),
        "predict": ("predict", run, "--input", run, "--output", run / "out", "--format", "png"),
        "report": ("report", run),
    }[command]


@pytest.mark.parametrize("command", [(), ("prepare",), *((name,) for name in RUN_COMMANDS)])
def test_help_answers_without_importing_tensorflow(command, tmp_path):
    result = kseg_command(*command, "--help", cwd=tmp_path, importtime=True)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.startswith(f"usage: {' '.join(('kseg', *command))} ")
    modules = imported_modules(result.stderr)
    assert "argparse" in modules  # the -X importtime listing is there to be read
    assert not TENSORFLOW_STACK & modules


@pytest.mark.parametrize("command", ["train", "tune"])
@pytest.mark.parametrize("recipe", [None, *RECIPES])
def test_recipe_help_answers_without_importing_tensorflow(command, recipe, tmp_path):
    words = (command,) if recipe is None else (command, recipe)
    result = kseg_command(*words, "--help", cwd=tmp_path, importtime=True)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.startswith(f"usage: kseg {' '.join(words)} ")
    # TFDS too: listing a builder's configs must not cost its seconds-long import
    assert not {*TENSORFLOW_STACK, "tensorflow_datasets"} & imported_modules(result.stderr)
    if recipe is None:  # the command lists every recipe
        assert all(f"\n    {name}" in result.stdout for name in RECIPES)
    else:  # the recipe's own options; --strategy is the search for tune, the
        # distribution strategy for train
        assert "--output-dir" in result.stdout
        assert ("--max-trials" in result.stdout) == (command == "tune")
        assert ("multi-worker" in result.stdout) == (command == "train")


def test_top_level_help_lists_every_command(tmp_path):
    result = kseg_command("--help", cwd=tmp_path)
    for command in ("prepare", "train", "tune", *RUN_COMMANDS, "study"):
        assert f"\n    {command} " in result.stdout


@pytest.mark.parametrize("study", [None, *STUDIES])
def test_study_help_answers_without_importing_tensorflow(study, tmp_path):
    words = ("study",) if study is None else ("study", study)
    result = kseg_command(*words, "--help", cwd=tmp_path, importtime=True)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.startswith(f"usage: kseg {' '.join(words)} ")
    assert not {*TENSORFLOW_STACK, "tensorflow_datasets"} & imported_modules(result.stderr)
    if study is None:  # every study, one line each
        assert all(f"\n    {name}" in result.stdout for name in STUDIES)
    else:  # the study's own options (kseg.studies.add_arguments)
        assert "--split" in result.stdout and "source" in result.stdout


def test_study_source_errors(tmp_path):
    missing = tmp_path / "no_such_run"
    result = kseg_command("study", "noise", missing, cwd=tmp_path, importtime=True)
    assert result.returncode == 1
    assert messages(result.stderr) == [
        f"kseg: error: {missing}: no such run folder, and not a recipe name; expected the "
        "--output-dir of a `kseg train` run or one of " + ", ".join(RECIPES)
    ]
    assert not TENSORFLOW_STACK & imported_modules(result.stderr)
    run = run_with_config(tmp_path / "run")
    result = kseg_command("study", "noise", run, "--epochs", "1", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.splitlines()[-1] == (
        "kseg study noise: error: unrecognized arguments after a run folder: --epochs 1 "
        "(recipe options follow a recipe name)")
    # the recipe's own checks, before anything is written
    result = kseg_command("study", "losses", "xray_multiclass", "--output-dir", tmp_path / "x",
                          "--epochs", "0", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.splitlines()[-1] == (
        "kseg study losses xray_multiclass: error: --epochs must be at least 1, got 0")
    assert not (tmp_path / "x").exists()
    # other commands still refuse options they do not know
    result = kseg_command("report", run, "--epochs", "1", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.splitlines()[-1] == "kseg: error: unrecognized arguments: --epochs 1"


def test_study_options_are_not_abbreviations_of_recipe_options():
    from kseg.cli import build_parser

    args, rest = build_parser().parse_known_args(
        ["study", "augment", "xray_multiclass", "--seed", "3", "--seeds", "1", "2"])
    assert args.seeds == [1, 2] and rest == ["--seed", "3"]  # --seed is the recipe's


def test_version_is_the_package_version(tmp_path):
    result = kseg_command("--version", cwd=tmp_path)
    assert (result.returncode, result.stdout) == (0, f"kseg {kseg.__version__}\n")


@pytest.mark.parametrize("command", RUN_COMMANDS)
def test_missing_run_folder_is_one_line(command, tmp_path):
    run = tmp_path / "no_such_run"
    result = kseg_command(*run_arguments(command, run), cwd=tmp_path, importtime=True)
    assert result.returncode == 1
    assert messages(result.stderr) == [
        f"kseg: error: {run}: no such run folder; expected the --output-dir of a `kseg train` "
        "run (it holds config.json)"
    ]
    assert not TENSORFLOW_STACK & imported_modules(result.stderr)


def test_run_folder_that_is_a_file_is_one_line(tmp_path):
    run = tmp_path / "run.txt"
    run.write_text("not a run")
    result = kseg_command("report", run, cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        f"kseg: error: {run}: is a file; expected the --output-dir of a `kseg train` run (a "
        "folder holding config.json)"
    ]


@pytest.mark.parametrize("command", RUN_COMMANDS)
def test_run_folder_without_config_is_one_line(command, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "best.keras").write_bytes(b"")
    result = kseg_command(*run_arguments(command, run), cwd=tmp_path, importtime=True)
    assert result.returncode == 1
    assert messages(result.stderr) == [
        f"kseg: error: {run}: holds no config.json; expected the folder of a kseg training "
        "run (train writes config.json before the first epoch)"
    ]
    assert not TENSORFLOW_STACK & imported_modules(result.stderr)


def test_run_folder_with_a_damaged_config_is_one_line(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text('{"recipe": "xray_multiclass", ')  # cut off mid-write
    result = kseg_command("evaluate", run, "--split", "test", cwd=tmp_path)
    assert result.returncode == 1
    [line] = result.stderr.splitlines()
    assert line.startswith(f"kseg: error: {run / 'config.json'}: is not a readable JSON file")


def run_with_config(folder):
    """A run folder whose config.json has every key a config of version 1 must have (the
    values are never used: these commands stop at their input first)."""
    folder.mkdir()
    keys = ("recipe", "arguments", "seed", "created", "versions", "git_commit", "dataset",
            "labels", "inference")
    config = {key: {} for key in keys} | {"kseg_config_version": 1, "recipe": "xray_multiclass"}
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def test_evaluating_the_test_fold_of_a_run_without_one_is_one_line(tmp_path):
    run = run_with_config(tmp_path / "run")
    config = json.loads((run / "config.json").read_text())
    config["arguments"] = {"folds": 3, "test_fold": None, "validation_fold": 1}
    (run / "config.json").write_text(json.dumps(config))
    result = kseg_command("evaluate", run, "--split", "test", cwd=tmp_path, importtime=True)
    assert result.returncode == 1
    assert messages(result.stderr) == [
        f"kseg: error: {run}: was trained with --test-fold none: every fold but the validation "
        "one trained, so it has no test fold to evaluate; use --split validation, or --input "
        "DIR with other labeled cases"
    ]
    assert not TENSORFLOW_STACK & imported_modules(result.stderr)


@pytest.mark.parametrize(
    ("command", "state", "message"),
    [
        ("evaluate", "missing", "no such folder; expected a folder of labeled cases in the "
                                "layout of the run's dataset"),
        ("evaluate", "file", "is a file; expected a folder of labeled cases in the layout of "
                             "the run's dataset"),
        ("predict", "missing", "no such file or folder; expected a DICOM series folder, a "
                               "NIfTI file or radiographs"),
    ],
)
def test_missing_input_is_one_line(command, state, message, tmp_path):
    run = run_with_config(tmp_path / "run")
    cases = tmp_path / "cases"
    if state == "file":
        cases.write_text("")
    arguments = {
        "evaluate": ("evaluate", run, "--input", cases),
        "predict": ("predict", run, "--input", cases, "--output", tmp_path / "out",
                    "--format", "png"),
    }[command]
    result = kseg_command(*arguments, cwd=tmp_path, importtime=True)
    assert result.returncode == 1
    assert messages(result.stderr) == [f"kseg: error: {cases}: {message}"]
    assert not TENSORFLOW_STACK & imported_modules(result.stderr)
    assert not (tmp_path / "out").exists()


def test_unknown_recipe_is_a_usage_error(tmp_path):
    result = kseg_command("train", "unet", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.splitlines()[-1].startswith(
        "kseg train: error: argument RECIPE: invalid choice: 'unet'"
    )


def test_recipe_option_error_is_a_usage_error(tmp_path):
    result = kseg_command("train", "xray_multiclass", "--epochs", "0", "--output-dir",
                          tmp_path / "run", cwd=tmp_path, importtime=True)
    assert result.returncode == 2
    assert messages(result.stderr)[-1] == (
        "kseg train xray_multiclass: error: --epochs must be at least 1, got 0"
    )
    assert not (tmp_path / "run").exists()
    assert not TENSORFLOW_STACK & imported_modules(result.stderr)


def test_tune_options_reach_the_recipes_checks(tmp_path):
    result = kseg_command("tune", "xray_multiclass", "--strategy", "random", "--stages",
                          "loss=dice,dice_ce", "--output-dir", tmp_path / "run", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.splitlines()[-1] == (
        "kseg tune xray_multiclass: error: --stages applies to --strategy staged only, not "
        "random"
    )
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("where", ["before", "after"])
def test_debug_shows_the_traceback(where, tmp_path):
    run = tmp_path / "no_such_run"
    command = ("evaluate", run, "--split", "test")
    arguments = ("--debug", *command) if where == "before" else (*command, "--debug")
    result = kseg_command(*arguments, cwd=tmp_path)
    assert result.returncode == 1
    assert "Traceback (most recent call last)" in result.stderr
    assert f"kseg.errors.LayoutError: {run}: no such run folder" in result.stderr
    assert not kseg_errors(result.stderr)


def test_unknown_dataset_is_a_usage_error(tmp_path):
    result = kseg_command("prepare", "mnist", "--manual-dir", tmp_path, cwd=tmp_path,
                          importtime=True)
    assert result.returncode == 2
    assert messages(result.stderr)[-1] == (
        "kseg prepare: error: argument DATASET: invalid choice: 'mnist' (choose from "
        "'chaos', 'lctsc', 'msd_spleen', 'xray')"
    )
    assert not TENSORFLOW_STACK & imported_modules(result.stderr)


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (("--config", "jsrt"), "argument --config: invalid choice for xray: 'jsrt' (choose "
                               "from generic, jsrt_scr, jsrt_scr_left_right, montgomery, "
                               "montgomery_lungs)"),
        (("--folds", "2"), "--folds must be at least 3 (a test, a validation and a training "
                           "fold), got 2"),
    ],
)
def test_prepare_option_errors_are_usage_errors(arguments, message, tmp_path):
    (tmp_path / "download").mkdir()
    (tmp_path / "download" / "notes.txt").write_text("")
    result = kseg_command("prepare", "xray", "--manual-dir", tmp_path / "download",
                          *arguments, cwd=tmp_path, importtime=True)
    assert result.returncode == 2
    assert messages(result.stderr)[-1] == f"kseg prepare: error: {message}"
    assert not TENSORFLOW_STACK & imported_modules(result.stderr)
    assert not (tmp_path / "tensorflow_datasets").exists()


@pytest.mark.parametrize("state", ["missing", "file", "empty"])
def test_unusable_manual_dir_is_one_line_before_tensorflow(state, tmp_path):
    manual = tmp_path / "download"
    if state == "file":
        manual.write_text("a zip that was not extracted")
    elif state == "empty":
        manual.mkdir()
    result = kseg_command("prepare", "chaos", "--manual-dir", manual, "--tfds-dir",
                          tmp_path / "tfds", cwd=tmp_path, importtime=True)
    assert result.returncode == 1
    problem = {"missing": "no such folder", "file": "is a file", "empty": "is empty"}[state]
    readme = pathlib.Path(tfds_builders.__file__).parent / "chaos" / "README.md"
    assert readme.is_file()
    assert messages(result.stderr) == [
        f"kseg: error: {manual}: {problem}; expected the folder the chaos download was "
        f"extracted into (layouts: {readme})"
    ]
    assert not TENSORFLOW_STACK & imported_modules(result.stderr)
    assert not (tmp_path / "tfds").exists()


def test_manual_dir_without_the_layout_is_the_builders_error(tmp_path):
    manual = tmp_path / "download"
    manual.mkdir()
    (manual / "readme.txt").write_text("the images are elsewhere")
    result = kseg_in_process("prepare", "xray", "--manual-dir", manual, "--tfds-dir",
                             tmp_path / "tfds", cwd=tmp_path)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert kseg_errors(result.stderr) == [f"kseg: error: {manual / 'images'}: not found; "
                                          "expected:"]
    # the expected layout follows, indented under the error line
    assert "  <manual_dir>/images/<name>.png|.tif|.jpg|.bmp|.dcm" in result.stderr


def file_digests(folder):
    return {
        path.relative_to(folder): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(folder.rglob("*")) if path.is_file()
    }


def test_prepare_builds_the_phantom_in_the_folds_asked_for(tmp_path):
    images = 7
    manual = xray.write_generic(tmp_path / "download", num_images=images, size=32)
    before = file_digests(manual)
    tfds_dir = tmp_path / "tfds"

    result = kseg_in_process("prepare", "xray", "--manual-dir", manual, "--tfds-dir",
                             tfds_dir, "--folds", "3", cwd=tmp_path)

    assert result.returncode == 0, result.stderr[-3000:]
    dataset = tfds_dir / "xray" / "generic_3fold" / XRAY_VERSION
    info = json.loads((dataset / "dataset_info.json").read_text())
    written = {split["name"]: sum(int(n) for n in split["shardLengths"])
               for split in info["splits"]}
    assert sorted(written) == ["fold0", "fold1", "fold2"]
    assert sum(written.values()) == images  # one example per radiograph, each in one fold
    assert min(written.values()) >= 1
    lines = result.stdout.splitlines()
    table = lines[lines.index(f"Dataset xray/generic_3fold/{XRAY_VERSION} in {dataset}") + 1:]
    assert table[0].split() == ["split", "examples", "patients"]
    # one radiograph per patient in the generic layout
    rows = {row.split()[0]: [int(n) for n in row.split()[1:]] for row in table[1:]}
    assert rows == {**{name: [count, count] for name, count in written.items()},
                    "total": [images, images]}
    assert file_digests(manual) == before  # the download is read, never written

    again = kseg_in_process("prepare", "xray", "--manual-dir", manual, "--tfds-dir",
                            tfds_dir, "--folds", "3", cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"Using the dataset prepared in {dataset}" in again.stdout
    assert again.stdout.splitlines()[-len(table):] == table


def test_prepare_folds_all_points_to_the_validation_fold(tmp_path):
    result = kseg_command("prepare", "xray", "--manual-dir", tmp_path, "--folds", "all",
                          cwd=tmp_path)  # fmt: skip
    assert result.returncode == 2
    assert result.stderr.splitlines()[-1] == (
        "kseg prepare: error: argument --folds: --folds is the number of folds the patients "
        "are split into; for one model per fold averaged into an ensemble (nnU-Net's all "
        "folds) use --validation-fold all"
    )


def test_more_folds_than_patients_is_one_line(tmp_path):
    manual = xray.write_generic(tmp_path / "download", num_images=4, size=16)
    result = kseg_in_process("prepare", "xray", "--manual-dir", manual, "--tfds-dir",
                             tmp_path / "tfds", "--folds", "5", cwd=tmp_path)
    assert result.returncode == 1
    assert kseg_errors(result.stderr) == [
        f"kseg: error: preparing xray/generic/{XRAY_VERSION} failed: {manual}: num_folds=5 "
        "needs at least 5 patients, got 4: every fold becomes a split and a split cannot be "
        "empty"
    ]
    assert "Traceback" not in result.stderr


@pytest.mark.slow
def test_train_evaluate_report_on_a_phantom(tmp_path, zygote):
    """``kseg train``, ``kseg evaluate RUN --split test``, ``kseg predict`` and ``kseg
    report RUN``: the run folder's layout, and the scored patients are exactly the test
    fold's, as the fold assignment deals the phantom's radiographs (one patient each, named
    by file stem)."""
    run, images, folds = tmp_path / "run", 9, 3
    # `python -m kseg train` in a process of its own, forked from the worker's zygote
    # (TensorFlow imported, kseg not: a new interpreter would add TensorFlow's import)
    returncode, _, stderr = run_forked(
        zygote, PYTHON_M_KSEG,
        ["train", "xray_multiclass", "--output-dir", run, "--epochs", 1, "--folds", folds,
         "--phantom-images", images, "--phantom-size", 32, "--image-size", 32,
         "--batch-size", 4, "--base-filters", 4],
        stderr_path=tmp_path / "train.stderr", cwd=tmp_path,
    )  # fmt: skip
    assert returncode == 0, stderr[-3000:]
    for name in ("config.json", "best.keras", "best.keras.json", "history.csv"):
        assert (run / name).is_file(), name
    assert (run / "tensorboard").is_dir()
    config = json.loads((run / "config.json").read_text())
    assert config["recipe"] == "xray_multiclass"
    assert config["arguments"]["epochs"] == 1
    assert config["arguments"]["output_dir"] == str(run)
    assert not {"command", "handler", "recipe_parser", "debug", "recipe_arguments"} & set(
        config["arguments"])

    evaluate = kseg_in_process("evaluate", run, "--split", "test", cwd=tmp_path)
    assert evaluate.returncode == 0, evaluate.stderr[-3000:]
    evaluation = run / "evaluation" / "test"
    with open(evaluation / "scores.csv", newline="") as handle:
        scored = [row["patient_id"] for row in csv.DictReader(handle)]
    stems = [xray.generic_stem(index) for index in range(images)]
    test_fold = [stem for stem, fold in assign_folds(stems, folds, seed=0).items() if fold == 0]
    # the xray tables name each radiograph by its file name
    assert sorted(pathlib.PurePath(image).stem for image in scored) == sorted(test_fold)
    assert sorted(path.stem for path in (evaluation / "cases").glob("*.npz")) == sorted(scored)
    with np.load(evaluation / "cases" / f"{scored[0]}.npz") as case:
        assert {"image", "reference", "prediction", "spacing"} <= set(case.files)
        assert case["image"].shape[0] == 1  # a radiograph is a one-slice case

    radiograph = run / "phantom" / "images" / f"{test_fold[0]}.png"  # the phantom it wrote
    predict = kseg_in_process("predict", run, "--input", radiograph, "--output",
                              tmp_path / "out", "--format", "png", cwd=tmp_path)
    assert predict.returncode == 0, predict.stderr[-3000:]
    with Image.open(tmp_path / "out" / f"{test_fold[0]}.png") as written:
        labels = np.asarray(written)
    assert labels.shape == (32, 32)  # the radiograph's own grid
    assert set(np.unique(labels)) <= {0, *config["labels"].values()}

    report = kseg_in_process("report", run, cwd=tmp_path)
    assert report.returncode == 0, report.stderr[-3000:]
    html = (run / "report.html").read_text()
    assert html.lstrip().lower().startswith("<!doctype html")
    assert all(patient in html for patient in scored)


@pytest.mark.slow
def test_study_runs_on_a_recipe(tmp_path):
    """``kseg study losses RECIPE [recipe options]``, the cheapest study: one model, one
    step, scored on the test fold the fold assignment deals from the phantom."""
    run, images, folds = tmp_path / "run", 9, 3
    result = kseg_in_process(
        "study", "losses", "xray_multiclass", "--losses", "dice", "--steps", 1,
        "--output-dir", run, "--folds", folds, "--phantom-images", images,
        "--phantom-size", 32, "--image-size", 32, "--batch-size", 4, "--base-filters", 4,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    folder = run / "studies" / "losses"
    assert {path.name for path in folder.iterdir()} == {"table.csv", "table.txt", "figure.png"}
    with open(folder / "table.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    stems = [xray.generic_stem(index) for index in range(images)]
    test_fold = [stem for stem, fold in assign_folds(stems, folds, seed=0).items() if fold == 0]
    assert sorted(pathlib.PurePath(row["patient_id"]).stem for row in rows) == sorted(test_fold)
    for row in rows:
        assert (row["loss"], row["seed"]) == ("dice", "0")
        per_class = [float(row[f"dice_{name}"]) for name in ("lungs", "heart", "clavicles")]
        assert all(0 <= value <= 1 for value in per_class)
        assert float(row["dice_mean"]) == pytest.approx(np.mean(per_class))


@pytest.mark.parametrize("chief", [True, False])
def test_train_names_the_best_model_on_the_chief_only(chief, tmp_path, monkeypatch, capsys):
    """Every worker of a multi-worker run trains; only the chief (as the recipe's training
    reports it) prints where the best model is and what to run next."""
    from kseg import cli
    from kseg.recipes import load

    run = tmp_path / "run"
    trained = []

    def train_one_worker(args):
        trained.append(args.distribution)
        return run / "best.keras", 0.0, chief

    monkeypatch.setattr(load("xray_multiclass"), "_train", train_one_worker)
    index = 0 if chief else 1
    monkeypatch.setenv("TF_CONFIG", json.dumps({
        "cluster": {"worker": ["127.0.0.1:12345", "127.0.0.1:12346"]},
        "task": {"type": "worker", "index": index},
    }))
    assert cli.main(["train", "xray_multiclass", "--output-dir", str(run),
                     "--strategy", "multi-worker"]) == 0
    assert trained == ["multi-worker"]
    printed = capsys.readouterr().out
    assert ("Best model:" in printed) == chief
    assert (f"Next: kseg evaluate {run} --split test" in printed) == chief
