"""Experiment tracking: TensorBoard logs of every run, and MLflow when asked.

:func:`tracking_callbacks` gives the Keras callbacks that write a run's per-epoch scalars
(``loss``, ``dice``, ``val_volume_dice`` ... everything in the epoch logs) to
``RUN/tensorboard`` and, with ``mlflow=True``, to an MLflow run. :func:`log_run_to_mlflow`
logs a finished run folder afterwards: its configuration, history, per-patient evaluation
tables and report.

Resumed runs are logged once per epoch: every value is logged at ``step = epoch`` (the
epoch a resumed ``fit`` starts at included). When a ``fit`` starts, TensorBoard events it
will write again (an epoch a kill interrupted; everything, for a new training from epoch 0
in the same folder) are removed from the event files. The MLflow run id is kept in
``RUN/mlflow_run_id``, so a resumed run continues the same MLflow run; a ``fit`` starting
over epochs that MLflow run already holds (a new training in the same folder) gets a new
MLflow run, as MLflow values cannot be removed.

TensorBoard scalars are written by TensorFlow alone (viewing them needs ``pip install
tensorboard``). MLflow is optional (``pip install 'kseg[mlflow]'``) and imported only when
used; importing this module imports neither MLflow nor Keras. The tracking URI is the one
passed, else MLflow's own when set (``MLFLOW_TRACKING_URI``, ``mlflow.set_tracking_uri``),
else the local file store ``mlruns`` beside the run folder. MLflow 3 keeps file stores in
maintenance mode behind ``MLFLOW_ALLOW_FILE_STORE``; kseg opts in for the ``file:`` stores
it writes (mlflow-skinny has no database store) unless that variable is set.
"""

from __future__ import annotations

import contextlib
import csv
import functools
import json
import math
import os
import pathlib
import re
import time
import urllib.parse
import warnings
from collections.abc import Iterator, Mapping

from kseg._files import atomic_output, remove_stale_temporaries
from kseg.errors import KsegError, LayoutError, UnreadableFileError

RUN_ID_FILE = "mlflow_run_id"
TENSORBOARD_FOLDER = "tensorboard"

# MLflow's limits (mlflow.utils.validation): characters of a param value, entries per
# log_batch call.
_MAX_PARAM_LENGTH = 6000
_MAX_PARAMS_PER_BATCH = 100
_MAX_METRICS_PER_BATCH = 1000
# Characters MLflow accepts in metric and param names; others become "_".
_NAME_FORBIDDEN = re.compile(r"[^\w\-./ :]")


class TrackingWarning(UserWarning):
    """Something could not be logged as asked (a changed param, a shortened value)."""


class TrackingError(KsegError, RuntimeError):
    """The MLflow run of a run folder cannot be continued as recorded."""

    def __init__(self, path, problem: str):
        self.path = path
        super().__init__(f"{os.fspath(path)}: {problem}")


def _import_mlflow():
    try:
        import mlflow
    except ImportError as error:
        raise ImportError(
            "MLflow tracking needs the mlflow package: pip install 'kseg[mlflow]' "
            "(or pip install mlflow-skinny)"
        ) from error
    return mlflow


def _run_folder(run_dir) -> pathlib.Path:
    try:
        folder = pathlib.Path(os.fspath(run_dir))
    except TypeError:
        raise TypeError(f"run_dir must be a folder path, got {run_dir!r}") from None
    if folder.exists() and not folder.is_dir():
        raise LayoutError(folder, "is a file; run_dir must be the folder of the run")
    return folder


def _tracking_uri(run_folder: pathlib.Path, tracking_uri, mlflow) -> str:
    """The explicit URI (a path becomes a file URI), else MLflow's when set
    (``MLFLOW_TRACKING_URI``, ``mlflow.set_tracking_uri``), else ``mlruns`` beside the run
    folder."""
    if tracking_uri is None:
        tracking_uri = (
            mlflow.get_tracking_uri()
            if mlflow.is_tracking_uri_set()
            else run_folder.absolute().parent / "mlruns"
        )
    tracking_uri = os.fspath(tracking_uri)
    scheme = urllib.parse.urlparse(tracking_uri).scheme
    if len(scheme) <= 1:  # no scheme, or a Windows drive letter: a folder path
        # "~" as a shell leaves it in --mlflow-uri=~/mlruns: the home folder, as MLflow
        # reads it, not a folder named "~" in the working directory
        return pathlib.Path(tracking_uri).expanduser().absolute().as_uri()
    return tracking_uri


@contextlib.contextmanager
def _file_store_allowed(uri: str) -> Iterator[None]:
    """Let MLflow open a local file store for the calls inside (see the module docstring)."""
    if not uri.startswith("file:") or "MLFLOW_ALLOW_FILE_STORE" in os.environ:
        yield
        return
    os.environ["MLFLOW_ALLOW_FILE_STORE"] = "true"
    try:
        yield
    finally:
        os.environ.pop("MLFLOW_ALLOW_FILE_STORE", None)


def _mlflow_name(key: str) -> str:
    return _NAME_FORBIDDEN.sub("_", key)


def flatten_params(config: Mapping, prefix: str = "") -> dict[str, str]:
    """Nested mappings to ``{"a.b": "value"}``: strings as they are, other values as JSON.

    Example:
        >>> flatten_params({"arguments": {"epochs": 3, "window": [40, 400]}, "seed": 0})
        {'arguments.epochs': '3', 'arguments.window': '[40, 400]', 'seed': '0'}
    """
    flat = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat.update(flatten_params(value, prefix=f"{name}."))
        elif isinstance(value, str):
            flat[name] = value
        else:
            flat[name] = json.dumps(value, sort_keys=True, default=str)
    return flat


class _MlflowRun:
    """One MLflow run of a run folder: created, or continued from ``RUN/mlflow_run_id``."""

    def __init__(
        self,
        run_folder: pathlib.Path,
        *,
        tracking_uri=None,
        experiment="kseg",
        adopt_active_run=False,
    ):
        self.mlflow = _import_mlflow()
        from mlflow.tracking import MlflowClient

        self.run_folder = run_folder
        self.experiment = experiment
        self.id_file = run_folder / RUN_ID_FILE
        active = self.mlflow.active_run() if adopt_active_run else None
        # A run the caller started (``with mlflow.start_run():``) is theirs to end; it is
        # used when the folder records none and no other store is asked for.
        self.adopted = active is not None and tracking_uri is None and not self.id_file.exists()
        self.uri = _tracking_uri(
            run_folder,
            self.mlflow.get_tracking_uri() if self.adopted else tracking_uri,
            self.mlflow,
        )
        with self.allowed():
            self.client = MlflowClient(tracking_uri=self.uri)
        self.run_id = self._recorded_run_id()
        if self.adopted:
            self._record(active.info.run_id)

    def allowed(self):
        return _file_store_allowed(self.uri)

    def _recorded_run_id(self) -> str | None:
        if not self.id_file.exists():
            return None
        run_id = self.id_file.read_text().strip()
        with self.allowed():
            try:
                self.client.get_run(run_id)
            except self.mlflow.exceptions.MlflowException as error:
                raise TrackingError(
                    self.id_file,
                    f"names MLflow run {run_id!r}, which the tracking store {self.uri} does "
                    "not hold; pass the tracking_uri the run was logged to, or delete the "
                    f"file to start a new MLflow run ({error.message})",
                ) from error
        return run_id

    def start_new(self) -> str:
        with self.allowed():
            found = self.client.get_experiment_by_name(self.experiment)
            experiment_id = (
                found.experiment_id
                if found is not None
                else self.client.create_experiment(self.experiment)
            )
            run = self.client.create_run(
                experiment_id,
                run_name=self.run_folder.absolute().name,
                tags={"kseg.run_dir": os.fspath(self.run_folder.absolute())},
            )
        self.adopted = False
        self._record(run.info.run_id)
        return self.run_id

    def _record(self, run_id: str) -> None:
        self.run_id = run_id
        self.run_folder.mkdir(parents=True, exist_ok=True)
        with atomic_output(self.id_file) as temporary:
            pathlib.Path(temporary).write_text(run_id + "\n")

    def ensure(self) -> str:
        return self.run_id if self.run_id is not None else self.start_new()

    def logged_steps(self) -> dict[str, dict[int, float]]:
        """Every metric of the run: name -> {step: last value logged at that step}."""
        with self.allowed():
            names = self.client.get_run(self.run_id).data.metrics
            return {
                name: {
                    metric.step: metric.value
                    for metric in self.client.get_metric_history(self.run_id, name)
                }
                for name in names
            }

    def log_params(self, params: Mapping[str, str]) -> None:
        """Log params the run lacks; a param it holds with another value stays, with a
        warning (MLflow params cannot change)."""
        from mlflow.entities import Param

        with self.allowed():
            logged = self.client.get_run(self.run_id).data.params
        new, changed = [], []
        for key, value in params.items():
            key = _mlflow_name(key)
            if len(value) > _MAX_PARAM_LENGTH:
                warnings.warn(
                    f"param {key!r} has {len(value)} characters; MLflow keeps "
                    f"{_MAX_PARAM_LENGTH}, so it is logged shortened",
                    TrackingWarning,
                    stacklevel=3,
                )
                value = value[:_MAX_PARAM_LENGTH]
            if key not in logged:
                new.append(Param(key, value))
            elif logged[key] != value:
                changed.append(key)
        if changed:
            warnings.warn(
                f"MLflow run {self.run_id} keeps its earlier values of params "
                f"{sorted(changed)} (MLflow params cannot change); a resumed run was given "
                "other values",
                TrackingWarning,
                stacklevel=3,
            )
        with self.allowed():
            for start in range(0, len(new), _MAX_PARAMS_PER_BATCH):
                self.client.log_batch(
                    self.run_id, params=new[start : start + _MAX_PARAMS_PER_BATCH]
                )

    def log_metrics(self, values: Mapping[str, float], step: int) -> None:
        from mlflow.entities import Metric

        timestamp = int(time.time() * 1000)
        metrics = [
            Metric(_mlflow_name(key), float(value), timestamp, int(step))
            for key, value in values.items()
        ]
        with self.allowed():
            for start in range(0, len(metrics), _MAX_METRICS_PER_BATCH):
                self.client.log_batch(
                    self.run_id, metrics=metrics[start : start + _MAX_METRICS_PER_BATCH]
                )


def _scalar(value) -> float | None:
    """A log value as a float, or None for what is not one number (arrays, strings)."""
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _read_config_params(run_folder: pathlib.Path) -> dict[str, str]:
    path = run_folder / "config.json"
    if not path.exists():
        return {}
    try:
        config = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise UnreadableFileError(
            path, f"is not a readable JSON run configuration: {error}"
        ) from error
    if not isinstance(config, dict):
        raise UnreadableFileError(path, "should hold a JSON object (the run configuration)")
    return flatten_params(config)


@functools.cache
def _callback_types():
    """The callback classes, defined on first use so that importing kseg.tracking does not
    import Keras."""
    import keras
    import tensorflow as tf
    from tensorflow.core.framework import summary_pb2

    class ScalarSummaries:
        """``tf.summary`` whose ``scalar`` needs TensorFlow alone.

        TensorFlow's own ``tf.summary.scalar`` is implemented by the tensorboard package,
        which TensorFlow no longer installs; this writes the same event: a float32 tensor
        summary marked for TensorBoard's scalars plugin (what ``tensorboard.summary.v2.
        scalar`` writes), so no dependency is needed to log, only to view.
        """

        def __getattr__(self, name):
            return getattr(tf.summary, name)

        def scalar(self, name, data, step=None, description=None):
            metadata = summary_pb2.SummaryMetadata(
                summary_description=description or "",
                plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name="scalars"),
                data_class=summary_pb2.DATA_CLASS_SCALAR,
            )
            return tf.summary.write(
                tag=name, tensor=tf.cast(data, tf.float32), step=step, metadata=metadata
            )

    class EpochTensorBoard(keras.callbacks.TensorBoard):
        """``keras.callbacks.TensorBoard`` writing scalars without the tensorboard package,
        flushed every epoch, so a killed run keeps the epochs it finished."""

        @property
        def summary(self):
            return ScalarSummaries()

        def on_train_begin(self, logs=None):
            self._pruned = False
            super().on_train_begin(logs)

        def on_epoch_begin(self, epoch, logs=None):
            if not self._pruned:  # the first epoch of this fit, as a resumed run sets it
                iterations = int(keras.ops.convert_to_numpy(self.model.optimizer.iterations))
                _drop_events_from(self.log_dir, epoch=epoch, iterations=iterations)
                self._pruned = True
            super().on_epoch_begin(epoch, logs)

        def on_epoch_end(self, epoch, logs=None):
            super().on_epoch_end(epoch, logs)
            for writer in self._writers.values():
                writer.flush()

    class MlflowLogger(keras.callbacks.Callback):
        """Logs params at the first epoch and every epoch's logs at ``step = epoch`` to the
        MLflow run of ``RUN/mlflow_run_id`` (created when missing).

        A ``fit`` resumed at epoch ``e`` continues the recorded MLflow run and logs the
        epochs ``< e`` it lacks from ``RUN/history.csv`` (epochs finished but not logged
        when a kill came between the backup and this callback); a ``fit`` starting at an
        epoch the MLflow run already holds is a new training and gets a new MLflow run.
        """

        def __init__(self, run_folder, *, params, tracking_uri, experiment):
            super().__init__()
            self.run_folder = run_folder
            self.run_params = params  # not self.params: Keras sets that to fit's
            self.tracking_uri = tracking_uri
            self.experiment = experiment
            self._run = None

        def on_train_begin(self, logs=None):
            self._run = None

        def on_epoch_begin(self, epoch, logs=None):
            if self._run is None:
                self._start(epoch)

        def _start(self, first_epoch: int) -> None:
            run = _MlflowRun(
                self.run_folder,
                tracking_uri=self.tracking_uri,
                experiment=self.experiment,
                adopt_active_run=True,
            )
            logged = run.logged_steps() if run.run_id is not None else {}
            if any(step >= first_epoch for steps in logged.values() for step in steps):
                run.start_new()
                logged = {}
            run.ensure()
            if not run.adopted:
                with run.allowed():
                    run.client.update_run(run.run_id, status="RUNNING")
            params = (
                flatten_params(self.run_params)
                if self.run_params is not None
                else _read_config_params(self.run_folder)
            )
            run.log_params(params)
            _log_history(run, self.run_folder / "history.csv", logged, before=first_epoch)
            self._run = run

        def on_epoch_end(self, epoch, logs=None):
            values = {
                key: value
                for key, value in ((key, _scalar(value)) for key, value in (logs or {}).items())
                if value is not None
            }
            if values:
                self._run.log_metrics(values, step=epoch)

        def on_train_end(self, logs=None):
            if self._run is not None and not self._run.adopted:
                with self._run.allowed():
                    self._run.client.set_terminated(self._run.run_id, "FINISHED")

    return EpochTensorBoard, MlflowLogger


def tracking_callbacks(
    run_dir,
    *,
    mlflow: bool = False,
    params: Mapping | None = None,
    tracking_uri=None,
    experiment: str = "kseg",
) -> list:
    """Callbacks logging every epoch's logs to TensorBoard and, with ``mlflow``, to MLflow.

    Put them after :func:`kseg.training.training_callbacks` in the ``fit`` callbacks:
    Keras calls ``on_epoch_end`` in list order, so ``val_volume_dice`` is then in the logs,
    and an epoch is logged only once its resume backup is written (a run killed in between
    lacks that epoch in TensorBoard; MLflow fills it from ``history.csv`` on resume).

    1. ``keras.callbacks.TensorBoard`` writing ``RUN/tensorboard`` (``train/`` and
       ``validation/``, scalars ``epoch_<name>`` at step = epoch, the learning rate too; no
       histograms, graph or profiling), flushed every epoch, events a resumed ``fit``
       writes again removed when it starts;
    2. with ``mlflow=True``, a logger of ``params`` (flattened as ``a.b``; default: the
       run's ``config.json`` when it exists) at the first epoch and of every epoch's logs at
       ``step = epoch`` to the MLflow run named in ``RUN/mlflow_run_id``; when the folder
       names none, the active run (``with mlflow.start_run():`` around ``fit``; left for
       its owner to end) or else a new run in ``experiment``, recorded there so a resumed
       run continues it.

    Args:
        run_dir: folder of the run (created if missing).
        mlflow: also log to MLflow (needs ``kseg[mlflow]``).
        params: the run's arguments to log as MLflow params; ``None``: ``config.json``.
        tracking_uri: MLflow tracking URI or folder; default MLflow's when set
            (``MLFLOW_TRACKING_URI``), else ``mlruns`` beside the run folder.
        experiment: MLflow experiment of a new MLflow run.

    Raises:
        ImportError: ``mlflow=True`` and MLflow is not installed (names the pip command).
        kseg.errors.LayoutError: ``run_dir`` is a file.
        TrackingError: ``RUN/mlflow_run_id`` names a run the tracking store lacks (when
            training starts).

    Example:
        >>> callbacks = training_callbacks("runs/liver", validation)  # doctest: +SKIP
        >>> callbacks += tracking_callbacks("runs/liver", mlflow=True)  # doctest: +SKIP
        >>> model.fit(train, epochs=50, callbacks=callbacks)  # doctest: +SKIP
    """
    run_folder = _run_folder(run_dir)
    if params is not None and not isinstance(params, Mapping):
        raise TypeError(f"params must be a mapping of the run's arguments, got {params!r}")
    if mlflow:
        _import_mlflow()  # a missing extra fails here, not after the first epoch
    tensorboard_type, mlflow_type = _callback_types()
    run_folder.mkdir(parents=True, exist_ok=True)
    callbacks = [
        tensorboard_type(
            log_dir=os.fspath(run_folder / TENSORBOARD_FOLDER),
            histogram_freq=0,
            write_graph=False,
            write_images=False,
            update_freq="epoch",
            profile_batch=0,
        )
    ]
    if mlflow:
        callbacks.append(
            mlflow_type(run_folder, params=params, tracking_uri=tracking_uri, experiment=experiment)
        )
    return callbacks


def _drop_events_from(log_dir, *, epoch: int, iterations: int) -> None:
    """Remove from the event files under ``log_dir`` what a ``fit`` starting at ``epoch``
    (with the optimizer at ``iterations`` steps) writes again.

    That is every ``epoch_*`` scalar at a step >= ``epoch`` and every other scalar (Keras'
    ``evaluation_*_vs_iterations``) at a step > ``iterations``: after a resume, the epoch a
    kill interrupted; at epoch 0 (a new training in the same folder), all of them. A file
    is rewritten atomically, and removed when no summary is left; a record cut short by a
    kill ends the file. Files with nothing to remove are left alone.
    """
    import tensorflow as tf
    from tensorflow.core.util import event_pb2

    for path in sorted(pathlib.Path(log_dir).glob("*/events.out.tfevents.*")):
        remove_stale_temporaries(path)
        records, cut_short = [], False
        iterator = iter(tf.data.TFRecordDataset(os.fspath(path)))
        while True:
            try:
                records.append(next(iterator).numpy())
            except StopIteration:
                break
            except tf.errors.DataLossError:
                cut_short = True
                break
        kept, summaries = [], 0
        for record in records:
            event = event_pb2.Event.FromString(record)
            if not event.summary.value:  # the file-version header
                kept.append(record)
                continue
            values = [
                value
                for value in event.summary.value
                if (
                    event.step < epoch
                    if value.tag.startswith("epoch_")
                    else event.step <= iterations
                )
            ]
            if len(values) == len(event.summary.value):
                kept.append(record)
            elif values:
                del event.summary.value[:]
                event.summary.value.extend(values)
                kept.append(event.SerializeToString())
            summaries += bool(values)
        if kept == records and not cut_short:
            # Also this fit's own new files: Keras opens the train writer before the first
            # epoch begins.
            continue
        if not summaries:
            path.unlink()
        else:
            with atomic_output(path) as temporary, tf.io.TFRecordWriter(temporary) as writer:
                for record in kept:
                    writer.write(record)


def _read_history(path: pathlib.Path) -> list[tuple[int, dict[str, float]]]:
    """``history.csv`` rows as (epoch, {column: value}).

    Left out, as the MLflow logger leaves them out of the epoch logs: "NA" and empty cells
    (a metric not computed that epoch) and lists (a vector-valued metric, written by
    Keras' CSVLogger as ``[a, b]``); and a last line cut short by a kill (no line end).
    """
    with open(path, newline="") as handle:
        lines = [line for line in handle.read().splitlines(keepends=True) if line.endswith("\n")]
    reader = csv.DictReader(lines)
    if reader.fieldnames is None:  # empty: opened by a CSV logger, no epoch written yet
        return []
    if reader.fieldnames[0] != "epoch":
        raise UnreadableFileError(
            path, f"expected a header starting with 'epoch', got {reader.fieldnames}"
        )
    rows = []
    for line_number, row in enumerate(reader, start=2):
        try:
            epoch = int(row.pop("epoch"))
            values = {
                name: float(value)
                for name, value in row.items()
                if value not in ("", "NA", None) and not value.startswith("[")
            }
        except (AttributeError, TypeError, ValueError) as error:
            raise UnreadableFileError(
                path, f"line {line_number}: expected an epoch number and numbers ({error})"
            ) from error
        rows.append((epoch, values))
    return rows


def _log_history(run: _MlflowRun, path: pathlib.Path, logged, *, before=None) -> int:
    """Log the (metric, epoch) values of ``history.csv`` the run lacks; returns how many."""
    if not path.exists():
        return 0
    count = 0
    for epoch, values in _read_history(path):
        if before is not None and epoch >= before:
            continue
        missing = {
            name: value
            for name, value in values.items()
            if epoch not in logged.get(_mlflow_name(name), {})
        }
        if missing:
            run.log_metrics(missing, step=epoch)
            count += len(missing)
    return count


def log_run_to_mlflow(run_dir, *, tracking_uri=None, experiment: str = "kseg") -> str:
    """Log a run folder to MLflow: configuration, history, evaluations and report.

    The MLflow run is the one ``RUN/mlflow_run_id`` names (logged during training by
    :func:`tracking_callbacks`), else a new one in ``experiment``, recorded there. Logged:

    - ``config.json`` flattened as params (``arguments.epochs``, ``dataset.name`` ...) and
      as an artefact;
    - ``history.csv``: every column at ``step = epoch``, for the (metric, epoch) pairs the
      run does not hold yet, and the file as an artefact;
    - each ``evaluation/<name>/scores.csv`` (one row per patient) as the artefact
      ``evaluation/<name>/scores.csv`` and its summary means as metrics
      ``<name>/<column>_mean`` (``nan`` scores left out, as
      :meth:`kseg.evaluation.PatientTable.summary` does; a flag's mean is the share of
      patients it marks), logged when they differ from the run's last value;
    - ``report.html`` as an artefact.

    Calling it again logs only what changed. Per-case ``.npz`` files are not uploaded
    (``report.html`` shows them).

    Args:
        run_dir: the run folder.
        tracking_uri: MLflow tracking URI or folder; default MLflow's when set
            (``MLFLOW_TRACKING_URI``), else ``mlruns`` beside the run folder.
        experiment: MLflow experiment of a new MLflow run.

    Returns:
        The MLflow run id.

    Raises:
        ImportError: MLflow is not installed (names the pip command).
        kseg.errors.LayoutError: ``run_dir`` is missing or a file.
        kseg.errors.UnreadableFileError: ``config.json``, ``history.csv`` or a
            ``scores.csv`` cannot be read, naming the file and the line.
        TrackingError: ``RUN/mlflow_run_id`` names a run the tracking store lacks.

    Example:
        >>> log_run_to_mlflow("runs/liver")  # doctest: +SKIP
        'c3f1...'
    """
    import numpy as np

    from kseg.evaluation import PatientTable

    run_folder = _run_folder(run_dir)
    if not run_folder.is_dir():
        raise LayoutError(run_folder, "does not exist; expected the folder of a kseg run")
    run = _MlflowRun(run_folder, tracking_uri=tracking_uri, experiment=experiment)
    created = run.run_id is None
    run.ensure()
    params = _read_config_params(run_folder)
    history = run_folder / "history.csv"
    evaluations = sorted((run_folder / "evaluation").glob("*/scores.csv"))
    summaries = {}
    for scores in evaluations:
        try:
            table = PatientTable.from_csv(scores)
        except (OSError, UnicodeDecodeError) as error:
            raise UnreadableFileError(scores, f"cannot be read: {error}") from error
        # The means of PatientTable.summary (nan left out, inf kept; a flag's share), here
        # without the standard deviations, which an inf score turns into numpy warnings.
        for column in table.metric_names + table.flag_names:
            values = table.column(column).astype(float)
            values = values[~np.isnan(values)]
            summaries[f"{scores.parent.name}/{column}_mean"] = (
                float(np.mean(values)) if values.size else math.nan
            )
    run.log_params(params)
    logged = run.logged_steps()
    _log_history(run, history, logged)
    changed = {
        name: value
        for name, value in summaries.items()
        if not _same_value(logged.get(_mlflow_name(name), {}).get(0), value)
    }
    if changed:
        run.log_metrics(changed, step=0)
    with run.allowed():
        for name in ("config.json", "history.csv", "report.html"):
            if (run_folder / name).is_file():
                run.client.log_artifact(run.run_id, os.fspath(run_folder / name))
        for scores in evaluations:
            run.client.log_artifact(
                run.run_id, os.fspath(scores), artifact_path=f"evaluation/{scores.parent.name}"
            )
        if created:
            run.client.set_terminated(run.run_id, "FINISHED")
    return run.run_id


def _same_value(logged: float | None, value: float) -> bool:
    if logged is None:
        return False
    return logged == value or (math.isnan(logged) and math.isnan(value))
