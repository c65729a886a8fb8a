"""kseg.tracking: TensorBoard event files and MLflow runs, read back by independent readers
(TensorFlow's event-file iterator, MLflow's own client)."""

from __future__ import annotations

import csv
import glob
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from kseg.tracking import (
    RUN_ID_FILE,
    TrackingError,
    flatten_params,
    log_run_to_mlflow,
    tracking_callbacks,
)


@pytest.fixture
def mlflow_client(monkeypatch, tmp_path):
    """A reader of the file store ``tmp_path/mlruns`` (where runs in ``tmp_path/run`` go)."""
    mlflow = pytest.importorskip("mlflow")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)

    def client():
        # Opened only when a test reads back, so the code under test meets the environment
        # a user has (no MLFLOW_ALLOW_FILE_STORE).
        monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
        return mlflow.tracking.MlflowClient(tracking_uri=(tmp_path / "mlruns").as_uri())

    return client


class VolumeDiceStub:
    """Stands in for VolumeValidation: puts a known val_volume_dice in the epoch logs."""

    @staticmethod
    def make():
        import keras

        class Stub(keras.callbacks.Callback):
            def on_epoch_end(self, epoch, logs=None):
                logs["val_volume_dice"] = 0.5 + 0.1 * epoch

        return Stub()


def _fit(run_dir, *, epochs, initial_epoch=0, mlflow=False, params=None, weights=None):
    import keras

    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(16, 3)).astype("float32")
    y = (x.sum(axis=1, keepdims=True) > 0).astype("float32")
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1, activation="sigmoid")])
    model.compile(
        optimizer=keras.optimizers.SGD(0.1), loss="binary_crossentropy", metrics=["accuracy"]
    )
    if weights is not None:
        model.set_weights(weights)
    callbacks = [VolumeDiceStub.make(), *tracking_callbacks(run_dir, mlflow=mlflow, params=params)]
    history = model.fit(
        x,
        y,
        batch_size=8,
        epochs=epochs,
        initial_epoch=initial_epoch,
        validation_data=(x[:8], y[:8]),
        callbacks=callbacks,
        verbose=0,
    )
    return model, history


def _read_events(folder):
    """{tag: [(step, value), ...]} from every event file under ``folder``."""
    import tensorflow as tf

    scalars = {}
    for path in sorted(glob.glob(os.path.join(folder, "events.out.tfevents.*"))):
        for event in tf.compat.v1.train.summary_iterator(path):
            for value in event.summary.value:
                # What TensorBoard's data provider files a scalar under.
                assert value.metadata.plugin_data.plugin_name == "scalars"
                number = (
                    float(tf.make_ndarray(value.tensor))
                    if value.HasField("tensor")
                    else value.simple_value
                )
                scalars.setdefault(value.tag, []).append((event.step, number))
    return scalars


def test_importing_tracking_imports_neither_mlflow_nor_keras():
    code = "import sys, kseg.tracking; print('mlflow' in sys.modules, 'keras' in sys.modules)"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.split() == ["False", "False"]


def test_tensorboard_holds_each_epoch_scalar_once(tmp_path):
    run_dir = tmp_path / "run"
    _, history = _fit(run_dir, epochs=3)
    train = _read_events(run_dir / "tensorboard" / "train")
    validation = _read_events(run_dir / "tensorboard" / "validation")
    for name in ("loss", "accuracy"):
        steps, values = zip(*train[f"epoch_{name}"], strict=True)
        assert steps == (0, 1, 2)
        np.testing.assert_allclose(values, history.history[name], rtol=1e-6)
    for name in ("loss", "accuracy", "volume_dice"):
        steps, values = zip(*validation[f"epoch_{name}"], strict=True)
        assert steps == (0, 1, 2)
        np.testing.assert_allclose(values, history.history[f"val_{name}"], rtol=1e-6)
    assert [step for step, _ in train["epoch_learning_rate"]] == [0, 1, 2]
    # Light: no weight histograms, no graph, no profile.
    assert not [tag for tag in train if "histogram" in tag]
    assert not glob.glob(str(run_dir / "tensorboard" / "train" / "plugins" / "profile"))


def test_tensorboard_resumed_fit_adds_only_new_epochs(tmp_path):
    run_dir = tmp_path / "run"
    model, first = _fit(run_dir, epochs=2)
    _, second = _fit(run_dir, epochs=4, initial_epoch=2, weights=model.get_weights())
    validation = _read_events(run_dir / "tensorboard" / "validation")
    steps, values = zip(*validation["epoch_volume_dice"], strict=True)
    assert steps == (0, 1, 2, 3)
    np.testing.assert_allclose(values, [0.5, 0.6, 0.7, 0.8], rtol=1e-6)


def test_tensorboard_new_training_in_the_same_folder_replaces_the_old(tmp_path):
    run_dir = tmp_path / "run"
    _fit(run_dir, epochs=2)
    _, history = _fit(run_dir, epochs=1)
    for folder in ("train", "validation"):
        for tag, points in _read_events(run_dir / "tensorboard" / folder).items():
            assert len(points) == 1, tag
    validation = _read_events(run_dir / "tensorboard" / "validation")
    assert validation["epoch_loss"] == [(0, pytest.approx(history.history["val_loss"][0]))]


def _scalar_event(tag, value, step):
    import tensorflow as tf
    from tensorflow.core.framework import summary_pb2
    from tensorflow.core.util import event_pb2

    tensor = tf.make_tensor_proto(np.float32(value))
    metadata = summary_pb2.SummaryMetadata(
        plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name="scalars")
    )
    summary = summary_pb2.Summary(
        value=[summary_pb2.Summary.Value(tag=tag, tensor=tensor, metadata=metadata)]
    )
    return event_pb2.Event(wall_time=1.0, step=step, summary=summary).SerializeToString()


def test_tensorboard_resume_drops_an_interrupted_epoch_and_a_cut_record(tmp_path):
    """A kill after TensorBoard logged epoch 2 but before its backup, mid-record."""
    import tensorflow as tf
    from tensorflow.core.util import event_pb2

    run_dir = tmp_path / "run"
    model, _ = _fit(run_dir, epochs=2)
    stray = run_dir / "tensorboard" / "validation" / "events.out.tfevents.2.host.1.0.v2"
    with tf.io.TFRecordWriter(str(stray)) as writer:
        writer.write(
            event_pb2.Event(wall_time=1.0, file_version="brain.Event:2").SerializeToString()
        )
        writer.write(_scalar_event("epoch_volume_dice", 9.9, step=1))
        writer.write(_scalar_event("epoch_volume_dice", 9.9, step=2))
    with open(stray, "ab") as handle:
        handle.write(_scalar_event("epoch_volume_dice", 9.9, step=2)[:7])
    _fit(run_dir, epochs=3, initial_epoch=2, weights=model.get_weights())
    validation = _read_events(run_dir / "tensorboard" / "validation")
    assert sorted(validation["epoch_volume_dice"]) == [
        (0, pytest.approx(0.5)),
        (1, pytest.approx(0.6)),
        (1, pytest.approx(9.9)),
        (2, pytest.approx(0.7)),
    ]
    assert not [path for path in os.listdir(stray.parent) if path.startswith(".")]


def test_mlflow_logs_params_and_every_epoch(tmp_path, mlflow_client):
    run_dir = tmp_path / "run"
    params = {"epochs": 3, "model": {"name": "unet", "filters": [8, 16]}, "note": "a b"}
    _, history = _fit(run_dir, epochs=3, mlflow=True, params=params)
    run_id = (run_dir / RUN_ID_FILE).read_text().strip()
    client = mlflow_client()
    run = client.get_run(run_id)
    assert run.data.params == {
        "epochs": "3",
        "model.name": "unet",
        "model.filters": "[8, 16]",
        "note": "a b",
    }
    assert run.info.status == "FINISHED"
    assert client.get_experiment(run.info.experiment_id).name == "kseg"
    for name, values in history.history.items():
        logged = client.get_metric_history(run_id, name)
        assert [metric.step for metric in logged] == [0, 1, 2]
        np.testing.assert_allclose([metric.value for metric in logged], values, rtol=1e-6)


def test_mlflow_params_default_to_config_json(tmp_path, mlflow_client):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    config = {"recipe": "chaos_liver", "seed": 0, "arguments": {"epochs": 1, "window": None}}
    (run_dir / "config.json").write_text(json.dumps(config))
    _fit(run_dir, epochs=1, mlflow=True)
    run = mlflow_client().get_run((run_dir / RUN_ID_FILE).read_text().strip())
    assert run.data.params == {
        "recipe": "chaos_liver",
        "seed": "0",
        "arguments.epochs": "1",
        "arguments.window": "null",
    }


def test_mlflow_resumed_fit_continues_the_same_run(tmp_path, mlflow_client):
    run_dir = tmp_path / "run"
    model, first = _fit(run_dir, epochs=2, mlflow=True, params={"epochs": 4})
    run_id = (run_dir / RUN_ID_FILE).read_text().strip()
    _, second = _fit(
        run_dir,
        epochs=4,
        initial_epoch=2,
        mlflow=True,
        params={"epochs": 4},
        weights=model.get_weights(),
    )
    assert (run_dir / RUN_ID_FILE).read_text().strip() == run_id
    client = mlflow_client()
    assert len(client.search_runs([client.get_run(run_id).info.experiment_id])) == 1
    for name in first.history:
        logged = client.get_metric_history(run_id, name)
        assert [metric.step for metric in logged] == [0, 1, 2, 3]
        np.testing.assert_allclose(
            [metric.value for metric in logged],
            first.history[name] + second.history[name],
            rtol=1e-6,
        )


def test_mlflow_resume_fills_epochs_missing_from_history_csv(tmp_path, mlflow_client):
    """A kill after the backup and history row, before the MLflow logger, loses nothing."""
    run_dir = tmp_path / "run"
    model, first = _fit(run_dir, epochs=1, mlflow=True)
    with open(run_dir / "history.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["epoch", "loss", "val_volume_dice"])
        writer.writerow([0, first.history["loss"][0], 0.5])
        writer.writerow([1, 0.25, "NA"])
    _fit(run_dir, epochs=3, initial_epoch=2, mlflow=True, weights=model.get_weights())
    run_id = (run_dir / RUN_ID_FILE).read_text().strip()
    client = mlflow_client()
    loss = client.get_metric_history(run_id, "loss")
    assert [metric.step for metric in loss] == [0, 1, 2]
    assert loss[1].value == 0.25
    assert [metric.step for metric in client.get_metric_history(run_id, "val_volume_dice")] == [
        0,
        2,
    ]


class Interrupted(Exception):
    pass


def test_killed_and_resumed_with_training_callbacks_logs_each_epoch_once(tmp_path, mlflow_client):
    """The real resume path: training_callbacks' backup restores the epoch; a kill after
    epoch 2's backup and history row, before the tracking callbacks saw it."""
    import keras

    from kseg.training import training_callbacks

    class KillAfterBackup(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch == 2:
                raise Interrupted

    run_dir = tmp_path / "run"
    rng = np.random.default_rng(0)
    x = rng.normal(size=(16, 3)).astype("float32")
    y = (x.sum(axis=1, keepdims=True) > 0).astype("float32")

    def fit(extra):
        keras.utils.set_random_seed(0)
        model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1, "sigmoid")])
        model.compile(optimizer="sgd", loss="binary_crossentropy")
        callbacks = [
            *training_callbacks(run_dir, None, monitor="val_loss", mode="min"),
            *extra,
            *tracking_callbacks(run_dir, mlflow=True),
        ]
        model.fit(
            x, y, batch_size=8, epochs=5, validation_data=(x, y), callbacks=callbacks, verbose=0
        )

    with pytest.raises(Interrupted):
        fit([KillAfterBackup()])
    fit([])
    with open(run_dir / "history.csv", newline="") as handle:
        history = list(csv.DictReader(handle))
    assert [int(row["epoch"]) for row in history] == [0, 1, 2, 3, 4]
    client = mlflow_client()
    run_id = (run_dir / RUN_ID_FILE).read_text().strip()
    for name in ("loss", "val_loss"):
        logged = client.get_metric_history(run_id, name)
        assert [m.step for m in logged] == [0, 1, 2, 3, 4]
        np.testing.assert_allclose(
            [m.value for m in logged], [float(row[name]) for row in history], rtol=1e-6
        )
    assert client.get_run(run_id).info.status == "FINISHED"
    # TensorBoard never saw epoch 2 (documented); every other epoch appears once.
    train = _read_events(run_dir / "tensorboard" / "train")
    assert [step for step, _ in train["epoch_loss"]] == [0, 1, 3, 4]


def test_mlflow_fit_from_epoch_zero_again_is_a_new_run(tmp_path, mlflow_client):
    run_dir = tmp_path / "run"
    _fit(run_dir, epochs=1, mlflow=True)
    first_id = (run_dir / RUN_ID_FILE).read_text().strip()
    _fit(run_dir, epochs=1, mlflow=True)
    second_id = (run_dir / RUN_ID_FILE).read_text().strip()
    assert second_id != first_id
    client = mlflow_client()
    assert [m.step for m in client.get_metric_history(first_id, "loss")] == [0]
    assert [m.step for m in client.get_metric_history(second_id, "loss")] == [0]


def test_mlflow_logs_to_the_active_run_and_leaves_it_open(tmp_path, mlflow_client, monkeypatch):
    mlflow = pytest.importorskip("mlflow")
    mlflow_client()  # MLFLOW_ALLOW_FILE_STORE for the caller's own start_run
    monkeypatch.setenv("MLFLOW_TRACKING_URI", (tmp_path / "store").as_uri())
    run_dir = tmp_path / "run"
    with mlflow.start_run() as active:
        _, history = _fit(run_dir, epochs=2, mlflow=True, params={"a": 1})
        assert mlflow.active_run().info.run_id == active.info.run_id
    assert (run_dir / RUN_ID_FILE).read_text().strip() == active.info.run_id
    client = mlflow.tracking.MlflowClient(tracking_uri=(tmp_path / "store").as_uri())
    assert client.get_run(active.info.run_id).data.params == {"a": "1"}
    logged = client.get_metric_history(active.info.run_id, "loss")
    assert [(m.step, m.value) for m in logged] == [
        (0, pytest.approx(history.history["loss"][0])),
        (1, pytest.approx(history.history["loss"][1])),
    ]


def test_mlflow_changed_param_on_resume_warns_and_keeps_the_first(tmp_path, mlflow_client):
    from kseg.tracking import TrackingWarning

    run_dir = tmp_path / "run"
    model, _ = _fit(run_dir, epochs=1, mlflow=True, params={"lr": 0.1})
    with pytest.warns(TrackingWarning, match="lr"):
        _fit(
            run_dir,
            epochs=2,
            initial_epoch=1,
            mlflow=True,
            params={"lr": 0.2, "new": 1},
            weights=model.get_weights(),
        )
    run = mlflow_client().get_run((run_dir / RUN_ID_FILE).read_text().strip())
    assert run.data.params == {"lr": "0.1", "new": "1"}


def _write_run_folder(run_dir):
    """A hand-made finished run: config, history, two evaluations, a report."""
    (run_dir / "evaluation" / "test").mkdir(parents=True)
    (run_dir / "evaluation" / "input-scans").mkdir(parents=True)
    config = {
        "kseg_config_version": 1,
        "recipe": "chaos_liver",
        "seed": 0,
        "arguments": {"epochs": 2, "output": str(run_dir)},
        "labels": {"liver": 1},
        "git_commit": None,
    }
    (run_dir / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True))
    # A vector-valued metric as Keras' CSVLogger writes it; a last line cut by a kill.
    (run_dir / "history.csv").write_text(
        "epoch,loss,val_volume_dice,val_dice(liver),per_class\n"
        '0,0.9,0.41,0.5,"[1, 2]"\n1,0.7,NA,nan,"[1, 2]"\n2,0.5,0.'
    )
    (run_dir / "evaluation" / "test" / "scores.csv").write_text(
        "patient_id,dice,hd95,reference_empty\n1,0.9,3.5,False\n2,0.7,nan,False\n3,0.85,inf,True\n"
    )
    (run_dir / "evaluation" / "input-scans" / "scores.csv").write_text(
        "patient_id,dice\na,0.25\nb,0.5\n"
    )
    (run_dir / "report.html").write_text("<html><body>report</body></html>")


def test_log_run_to_mlflow_logs_params_history_tables_and_report(tmp_path, mlflow_client):
    run_dir = tmp_path / "run"
    _write_run_folder(run_dir)
    run_id = log_run_to_mlflow(run_dir)
    assert (run_dir / RUN_ID_FILE).read_text().strip() == run_id
    client = mlflow_client()
    run = client.get_run(run_id)
    assert run.data.params["recipe"] == "chaos_liver"
    assert run.data.params["arguments.epochs"] == "2"
    assert run.data.params["labels.liver"] == "1"
    assert run.data.params["git_commit"] == "null"
    loss = client.get_metric_history(run_id, "loss")
    assert [(m.step, m.value) for m in loss] == [(0, 0.9), (1, 0.7)]
    assert [(m.step, m.value) for m in client.get_metric_history(run_id, "val_volume_dice")] == [
        (0, 0.41)
    ]
    # MLflow refuses parentheses in names; a nan (diverged) value is kept.
    dice = client.get_metric_history(run_id, "val_dice_liver_")
    assert dice[0].value == 0.5 and np.isnan(dice[1].value)
    assert "per_class" not in run.data.metrics
    # Summary means equal numpy's over the CSV columns (nan left out, inf kept).
    for name in ("test", "input-scans"):
        with open(run_dir / "evaluation" / name / "scores.csv", newline="") as handle:
            rows = list(csv.DictReader(handle))
        for column in ("dice", "hd95") if name == "test" else ("dice",):
            values = np.array([float(row[column]) for row in rows])
            expected = np.mean(values[~np.isnan(values)])
            assert run.data.metrics[f"{name}/{column}_mean"] == expected
    assert run.data.metrics["test/reference_empty_mean"] == pytest.approx(1 / 3)
    artifacts = {item.path for item in client.list_artifacts(run_id)}
    assert artifacts == {"config.json", "history.csv", "report.html", "evaluation"}
    assert {item.path for item in client.list_artifacts(run_id, "evaluation/test")} == {
        "evaluation/test/scores.csv"
    }
    local = client.download_artifacts(
        run_id, "evaluation/input-scans/scores.csv", str(tmp_path / "download")
    )
    assert open(local).read() == (run_dir / "evaluation/input-scans/scores.csv").read_text()


def test_log_run_to_mlflow_again_logs_nothing_twice(tmp_path, mlflow_client):
    run_dir = tmp_path / "run"
    _write_run_folder(run_dir)
    run_id = log_run_to_mlflow(run_dir)
    assert log_run_to_mlflow(run_dir) == run_id
    client = mlflow_client()
    assert len(client.get_metric_history(run_id, "loss")) == 2
    assert len(client.get_metric_history(run_id, "test/dice_mean")) == 1


def test_log_run_to_mlflow_continues_the_training_run(tmp_path, mlflow_client):
    run_dir = tmp_path / "run"
    _, history = _fit(run_dir, epochs=2, mlflow=True)
    run_id = (run_dir / RUN_ID_FILE).read_text().strip()
    (run_dir / "report.html").write_text("<html></html>")
    assert log_run_to_mlflow(run_dir) == run_id
    client = mlflow_client()
    assert [m.step for m in client.get_metric_history(run_id, "loss")] == [0, 1]
    assert "report.html" in {item.path for item in client.list_artifacts(run_id)}


def test_log_run_to_mlflow_given_folder_uri(tmp_path, mlflow_client):
    run_dir = tmp_path / "run"
    _write_run_folder(run_dir)
    store = tmp_path / "elsewhere"
    run_id = log_run_to_mlflow(run_dir, tracking_uri=store, experiment="liver")
    assert not (tmp_path / "mlruns").exists()
    mlflow = pytest.importorskip("mlflow")
    mlflow_client()  # sets MLFLOW_ALLOW_FILE_STORE for the reader below
    client = mlflow.tracking.MlflowClient(tracking_uri=store.as_uri())
    run = client.get_run(run_id)
    assert client.get_experiment(run.info.experiment_id).name == "liver"


def test_recorded_run_missing_from_store_is_a_clear_error(tmp_path, mlflow_client):
    run_dir = tmp_path / "run"
    _write_run_folder(run_dir)
    (run_dir / RUN_ID_FILE).write_text("0123456789abcdef\n")
    with pytest.raises(TrackingError, match=f"{RUN_ID_FILE}.*0123456789abcdef.*tracking_uri"):
        log_run_to_mlflow(run_dir)


def test_unreadable_inputs_are_errors_naming_the_file(tmp_path, mlflow_client):
    from kseg.errors import LayoutError, UnreadableFileError

    with pytest.raises(LayoutError, match="does not exist"):
        log_run_to_mlflow(tmp_path / "missing")
    run_dir = tmp_path / "run"
    _write_run_folder(run_dir)
    (run_dir / "config.json").write_text("{not json")
    with pytest.raises(UnreadableFileError, match="config.json"):
        log_run_to_mlflow(run_dir)
    (run_dir / "config.json").write_text("{}")
    (run_dir / "history.csv").write_text("epoch,loss\n0,abc\n")
    with pytest.raises(UnreadableFileError, match="history.csv.*line 2"):
        log_run_to_mlflow(run_dir)
    with pytest.raises(LayoutError, match="is a file"):
        tracking_callbacks(run_dir / "config.json")


def test_missing_mlflow_is_an_import_error_naming_the_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "mlflow", None)  # what an uninstalled package reads as
    with pytest.raises(ImportError, match=r"pip install 'kseg\[mlflow\]'"):
        tracking_callbacks(tmp_path / "run", mlflow=True)
    with pytest.raises(ImportError, match=r"kseg\[mlflow\]"):
        log_run_to_mlflow(tmp_path)


def test_flatten_params():
    assert flatten_params({"a": {"b": {"c": 1}}, "d": "x", "e": [1, "y"], "f": {}, "g": True}) == {
        "a.b.c": "1",
        "d": "x",
        "e": '[1, "y"]',
        "f": "{}",
        "g": "true",
    }
