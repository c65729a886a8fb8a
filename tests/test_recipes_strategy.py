"""The recipes' ``--strategy default|mirrored|multi-worker`` (kseg.training.distribute).

The multi-worker run is two ``python -m kseg train`` processes on the loopback address,
with the command line a user gives them (README); only the chief writes the run folder.
"""

import argparse
import json
import os
import pathlib
import time

import pytest
from child_processes import PYTHON_M_KSEG, free_ports

from kseg.recipes import _common, load

REPOSITORY = pathlib.Path(__file__).resolve().parents[1]
# 12 images in 3 folds: 4 train, 4 validate, 4 test; two replicas of 2 make a global batch
# of 4, so every step splits evenly between two workers
TINY_XRAY = [
    "--epochs", "1", "--image-size", "16", "--batch-size", "2", "--base-filters", "4",
    "--learning-rate", "1e-2", "--phantom-images", "12", "--phantom-size", "16",
    "--folds", "3",
]  # fmt: skip
WORKER_TIMEOUT = 420  # seconds: two TensorFlow processes on a busy two-core machine
# what ``python -m kseg`` runs


def run_files(run_dir: pathlib.Path) -> list[str]:
    """The run folder's files, the TFDS data and TensorBoard event files (named after
    the host and time) left out."""
    return sorted(
        str(path.relative_to(run_dir))
        for path in run_dir.rglob("*")
        if path.is_file()
        and path.parts[len(run_dir.parts)] not in ("tfds", "tensorboard", "phantom")
    )


def test_mirrored_strategy_gives_the_run_folder_of_the_default_one(tmp_path):
    recipe = load("xray_multiclass")
    folders = {}
    for strategy in ("default", "mirrored"):
        run_dir = tmp_path / strategy
        args = recipe.parse_args(["--output-dir", str(run_dir), *TINY_XRAY, "--strategy", strategy])
        assert recipe.train(args) == run_dir / "best.keras"
        folders[strategy] = run_dir
        config = json.loads((run_dir / "config.json").read_text())
        assert config["arguments"]["distribution"] == strategy
        assert config["arguments"]["batch_size"] == 2  # per replica, as given
        assert (run_dir / "tensorboard").is_dir()
    assert run_files(folders["mirrored"]) == run_files(folders["default"])
    assert {"config.json", "best.keras", "best.keras.json", "history.csv"} <= set(
        run_files(folders["mirrored"])
    )


def test_multi_worker_without_tf_config_is_a_usage_error(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    for name in ("xray_multiclass", "chaos_liver", "lctsc_lungs", "msd_spleen"):
        with pytest.raises(SystemExit) as stopped:
            load(name).parse_args(
                ["--output-dir", str(tmp_path / "run"), "--strategy", "multi-worker"]
            )
        assert stopped.value.code == 2
        assert "--strategy multi-worker reads the cluster from the TF_CONFIG" in (
            capsys.readouterr().err
        )
    with pytest.raises(SystemExit) as stopped:
        load("msd_spleen").parse_args(
            [
                "--output-dir",
                str(tmp_path / "run"),
                "--strategy",
                "mirrored",
                "--accumulate-steps",
                "2",
            ]
        )
    assert stopped.value.code == 2
    assert "--accumulate-steps applies to --strategy default only, not mirrored" in (
        capsys.readouterr().err
    )
    assert (
        load("xray_multiclass").parse_args(["--output-dir", str(tmp_path / "run")]).distribution
        == "default"
    )


def test_a_tuning_command_line_takes_the_search_strategy(tmp_path, capsys):
    parser = argparse.ArgumentParser(prog="kseg tune")
    load("xray_multiclass").add_arguments(parser)
    _common.add_tuning_arguments(parser)
    assert parser.parse_args(["--strategy", "bayesian"]).strategy == "bayesian"
    tuning = parser.parse_args([])
    # the search trains on one device; Keras Tuner's own variables spread its trials
    assert tuning.strategy == "random" and not hasattr(tuning, "distribution")
    with pytest.raises(SystemExit):
        parser.parse_args(["--strategy", "mirrored"])
    assert "invalid choice: 'mirrored'" in capsys.readouterr().err
    help_text = parser.format_help()
    assert "Keras Tuner search" in help_text and "TF_CONFIG" not in help_text


def test_a_tuner_worker_never_prepares_the_dataset(tmp_path, monkeypatch):
    from kseg.errors import LayoutError

    class Unprepared:
        data_dir = str(tmp_path / "tfds")

        def is_prepared(self):
            return False

        def download_and_prepare(self, **_):
            raise AssertionError("a worker must leave preparing to the chief")

    monkeypatch.setenv("KERASTUNER_ORACLE_IP", "127.0.0.1")
    monkeypatch.setenv("KERASTUNER_ORACLE_PORT", "8000")
    monkeypatch.setenv("KERASTUNER_TUNER_ID", "tuner0")
    with pytest.raises(LayoutError, match="after the chief has prepared it"):
        _common.prepare(Unprepared(), tmp_path / "manual")


def test_a_worker_that_is_not_the_chief_trains_without_a_word(tmp_path, monkeypatch, capsys):
    """It reads the dataset the chief prepared and trains silently: the chief's lines (the
    dataset reused, the plan, the training data, the progress) speak for every worker.
    ``fit`` itself is not run; its verbosity and shuffling are checked. The two-worker test
    below checks that the chief does say them."""
    import keras

    from kseg.training import distribute

    recipe = load("xray_multiclass")
    args = recipe.parse_args(["--output-dir", str(tmp_path / "run"), *TINY_XRAY])
    recipe.prepare(args)  # what the chief did before the barrier
    capsys.readouterr()
    monkeypatch.setattr(distribute, "is_chief", lambda distribution=None: False)
    fit_options = []
    monkeypatch.setattr(
        keras.Model, "fit",
        lambda self, *a, **k: fit_options.append((k["verbose"], k.get("shuffle", True))),
    )
    recipe._train(args)
    assert capsys.readouterr().out == ""
    # shuffle=False: the pipeline shuffles, and Keras warns at each fit that it ignores True
    assert fit_options == [(0, False)]


class _RecordingModel:
    """Stands in for a compiled Keras model: keeps what ``fit`` is given."""

    def fit(self, training, **options):
        self.options = options


def _fit_on_one_device(fit, tmp_path, **options):
    """``fit(start, args, model, training, validation, None, ...)`` on the default strategy;
    returns its value, the callbacks' class names and the other options ``model.fit`` got."""
    import tensorflow as tf

    args = argparse.Namespace(output_dir=str(tmp_path / "run"), epochs=3, learning_rate=1e-3,
                              **options)
    start = _common.TrainingStart(tf.distribute.get_strategy(), True, None, args)
    batches = tf.data.Dataset.range(4).batch(2)
    model = _RecordingModel()
    if fit is _common.fit:
        returned = fit(start, args, model, batches, batches, None, reduce_lr_patience=None,
                       steps_per_epoch=5)
    else:
        returned = fit(start, args, model, batches, batches, None)
    callbacks = model.options.pop("callbacks")
    return returned, [type(callback).__name__ for callback in callbacks], model.options


def test_fit_orders_the_callbacks_and_passes_the_steps(tmp_path):
    # msd_spleen's way: no plateau, its own steps per epoch, a time budget
    (best, seconds, chief), names, options = _fit_on_one_device(
        _common.fit, tmp_path, max_minutes=2.0
    )
    assert (best, chief) == (tmp_path / "run" / "best.keras", True)
    assert seconds >= 0
    assert names == ["BestModelCheckpoint", "TimeBudget", "_ChiefStopsAll", "ResumableCSVLogger",
                     "AtomicBackupAndRestore", "EpochTensorBoard"]  # fmt: skip
    assert options["epochs"] == 3 and options["steps_per_epoch"] == 5
    assert options["shuffle"] is False


@pytest.mark.parametrize("schedule, names", [
    ("plateau", ["BestModelCheckpoint", "ResumableReduceLROnPlateau", "ResumableCSVLogger",
                 "AtomicBackupAndRestore", "EpochTensorBoard"]),
    ("cosine", ["BestModelCheckpoint", "ResumableCSVLogger", "AtomicBackupAndRestore",
                "LearningRateScheduler", "EpochTensorBoard"]),
])  # fmt: skip
def test_a_2d_recipe_fits_with_its_schedule(tmp_path, schedule, names):
    from kseg.recipes import _planned

    _, recorded, options = _fit_on_one_device(_planned.fit, tmp_path, schedule=schedule)
    assert recorded == names
    assert "steps_per_epoch" not in options


@pytest.mark.slow
def test_two_workers_train_a_recipe_and_only_the_chief_writes(tmp_path, zygote):
    run_dir = tmp_path / "run"
    ports = free_ports(2)
    workers = []
    # both are forked from the worker's zygote, which imported TensorFlow once (CPU-seconds
    # each otherwise); each starts its own TensorFlow runtime, then runs ``python -m kseg train``
    try:
        for index in range(2):
            environment = dict(
                os.environ, PYTHONPATH=str(REPOSITORY), TF_CPP_MIN_LOG_LEVEL="2",
                CUDA_VISIBLE_DEVICES="",  # two processes on one GPU would each take all of it
                TF_CONFIG=json.dumps({
                    "cluster": {"worker": [f"127.0.0.1:{port}" for port in ports]},
                    "task": {"type": "worker", "index": index},
                }),
            )  # fmt: skip
            with open(tmp_path / f"worker{index}.log", "w") as log:
                workers.append(zygote.popen(
                    PYTHON_M_KSEG,
                    ["train", "xray_multiclass", "--output-dir", run_dir, *TINY_XRAY,
                     "--strategy", "multi-worker"],
                    environment, log, stdout=log, cwd=tmp_path,
                ))  # fmt: skip
        deadline = time.monotonic() + WORKER_TIMEOUT
        codes = [worker.wait(timeout=max(1.0, deadline - time.monotonic())) for worker in workers]
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
                worker.wait(timeout=30)
    logs = [(tmp_path / f"worker{index}.log").read_text() for index in range(2)]
    assert codes == [0, 0], "\n\n".join(log[-3000:] for log in logs)
    assert "replicas, global batch 4, learning rate 0.02" in logs[0]
    files = run_files(run_dir)
    assert {"config.json", "best.keras", "best.keras.json", "history.csv"} <= set(files)
    rows = (run_dir / "history.csv").read_text().splitlines()
    assert len(rows) == 2  # one epoch, written once (by the chief)
    assert json.loads((run_dir / "config.json").read_text())["arguments"]["distribution"] == (
        "multi-worker"
    )
    # worker 1 trained silently: the chief's progress lines speak for both
    assert " - loss: " in logs[0] and " - loss: " not in logs[1]
    # and without a word: the chief prepared the dataset and says what it trains on
    assert "Using the dataset prepared in" not in logs[1]
    for chief_line in ("Plan (auto", "training patients", "Best model:"):
        assert chief_line in logs[0] and chief_line not in logs[1], chief_line
