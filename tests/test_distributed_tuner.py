"""Distributed Keras Tuner search through kseg.tuning: a chief and two workers on 127.0.0.1.

Keras Tuner's own distributed mode (``KERASTUNER_TUNER_ID``, ``KERASTUNER_ORACLE_IP``,
``KERASTUNER_ORACLE_PORT``; the chief serves the oracle over gRPC) runs a kseg grid search
(:func:`kseg.tuning.tuner` ``"grid"``, its resumable oracle on the chief) of four trials on a
tiny in-memory problem whose validation set is two synthetic volumes, so every trial is
ranked by ``VolumeValidation``'s whole-volume Dice. Worker ``tuner1`` is killed (``kill -9``)
in the middle of its first trial and started again with the same tuner id, as Keras Tuner
expects: it takes its unfinished trial back and the search completes. Checked: every grid
combination ran to completion exactly once over all workers, the killed one included;
every trial's score is the best ``val_volume_dice`` its worker logged (the chief's trial
records hold that epoch's value, not the patch ``val_dice``); the chief's best
hyperparameters are those of the best recorded trial.
"""

import itertools
import json
import os
import textwrap
import time

import pytest
from child_processes import JsonLinesChild, free_ports

TIMEOUT = 400  # seconds for a whole search; each process imports TensorFlow (slow when busy)
BASE_FILTERS = (2, 4)
LOSSES = ("dice", "dice_ce")

CHILD = textwrap.dedent(
    """
    import json
    import sys

    import keras
    import numpy as np
    import tensorflow as tf

    from kseg.training import VolumeValidation
    from kseg.tuning import SegmentationHyperModel, distributed_role, tuner

    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    directory, pause, kind = sys.argv[1], sys.argv[2] == "pause", sys.argv[3]
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    field = rng.normal(size=(16, 8, 8))
    field = (field + np.roll(field, 1, axis=1) + np.roll(field, 1, axis=2)) / 3
    labels = (field > 0.2).astype(np.uint8)
    images = (field + 0.3 * rng.normal(size=field.shape)).astype(np.float32)[..., None]
    volumes = [(f"p{index}", images[8 + 4 * index: 12 + 4 * index],
                labels[8 + 4 * index: 12 + 4 * index], (2.0, 1.0, 1.0)) for index in range(2)]


    class Reporting(SegmentationHyperModel):
        paused = False

        def fit(self, hp, model, *args, **kwargs):
            print(json.dumps({"training": hp.values}), flush=True)
            if pause and not Reporting.paused:
                Reporting.paused = True
                print(json.dumps({"paused": hp.values}), flush=True)
                sys.stdin.readline()
            history = super().fit(hp, model, *args, **kwargs)
            print(json.dumps({"completed": hp.values,
                              "val_volume_dice": history.history["val_volume_dice"]}),
                  flush=True)
            return history


    hypermodel = Reporting(
        (8, 8, 1), 1, models="unet", base_filters=(2, 4), depth=1, dropout=0.0,
        losses=("dice", "dice_ce"), learning_rate=0.01, compile_kwargs={"run_eagerly": True})
    if kind == "grid":
        search = tuner("grid", hypermodel, directory=directory, project_name="grid", seed=0)
    elif kind == "hyperband":
        search = tuner("hyperband", hypermodel, directory=directory, project_name="hyperband",
                       max_epochs=3, factor=3, seed=0)
    else:
        search = tuner("staged", hypermodel, directory=directory, project_name="staged",
                       stages=[("loss", ["dice", "dice_ce"]), ("base_filters", [2, 4])])
    search.search(images[:8], labels[:8, ..., None], batch_size=4, epochs=2, verbose=0,
                  validation_data=(images[8:], labels[8:, ..., None]),
                  callbacks=[VolumeValidation(volumes)])
    if distributed_role() == "chief":
        print(json.dumps({"best": search.get_best_hyperparameters()[0].values}), flush=True)
        if kind == "staged":
            print(json.dumps({"stages": search.best_values()}), flush=True)
    print(json.dumps({"finished": distributed_role()}), flush=True)
    """
)


def free_port():
    return free_ports(1)[0]


class Process(JsonLinesChild):
    """One tuner process; stdout read as JSON lines, stderr kept in a file."""

    def __init__(
        self, tmp_path, tuner_id, port, directory, *, pause=False, log_name=None, kind="grid"
    ):
        environment = dict(
            os.environ,
            KERASTUNER_TUNER_ID=tuner_id,
            KERASTUNER_ORACLE_IP="127.0.0.1",
            KERASTUNER_ORACLE_PORT=str(port),
        )
        arguments = [directory, "pause" if pause else "run", kind]
        super().__init__(tmp_path, log_name or tuner_id, CHILD, arguments, environment)


def key(values):
    return (values["base_filters"], values["loss"])


@pytest.mark.slow
def test_chief_and_two_workers_run_every_trial_once_and_survive_a_killed_worker(tmp_path):
    directory = tmp_path / "search"
    port = free_port()
    processes = []
    try:
        chief = Process(tmp_path, "chief", port, directory)
        worker0 = Process(tmp_path, "tuner0", port, directory)
        worker1 = Process(tmp_path, "tuner1", port, directory, pause=True)
        processes += [chief, worker0, worker1]
        deadline = time.monotonic() + TIMEOUT
        interrupted = worker1.read_until("paused", deadline)["paused"]
        worker1.kill()  # in the middle of its first trial
        restarted = Process(tmp_path, "tuner1", port, directory, log_name="tuner1-restarted")
        processes.append(restarted)
        best = chief.read_until("best", deadline)["best"]
        for process in (chief, worker0, restarted):
            process.read_until("finished", deadline)
    finally:
        for process in processes:
            process.kill()

    # the restarted worker took back the trial its predecessor left unfinished
    trained_after_restart = [m["training"] for m in restarted.messages if "training" in m]
    assert key(trained_after_restart[0]) == key(interrupted)
    assert not [m for m in worker1.messages if "completed" in m]

    # every combination of the grid ran to completion exactly once, over all workers
    completed = [
        message
        for process in (worker0, restarted)
        for message in process.messages
        if "completed" in message
    ]
    assert sorted(key(message["completed"]) for message in completed) == sorted(
        itertools.product(BASE_FILTERS, LOSSES)
    )

    # the chief's record: each trial scored by the whole-volume Dice its worker logged
    project = directory / "grid"
    records = [json.loads(path.read_text()) for path in project.glob("trial_*/trial.json")]
    assert len(records) == len(completed) == 4
    logged = {key(message["completed"]): message["val_volume_dice"] for message in completed}
    for record in records:
        assert record["status"] == "COMPLETED"
        observations = record["metrics"]["metrics"]["val_volume_dice"]["observations"]
        recorded = [value for observation in observations for value in observation["value"]]
        # Keras Tuner reports a trial's best epoch to the oracle
        best_logged = max(logged[key(record["hyperparameters"]["values"])])
        assert recorded == pytest.approx([best_logged])
        assert record["score"] == pytest.approx(best_logged)
    assert json.loads((project / "kseg_objective.json").read_text()) == {
        "name": "val_volume_dice",
        "direction": "max",
    }
    best_record = max(records, key=lambda record: record["score"])
    assert best == best_record["hyperparameters"]["values"]


@pytest.mark.slow
def test_staged_search_runs_stage_by_stage_with_a_chief_and_two_workers(tmp_path):
    """Each stage is one distributed search on its own port; the chief carries the winner."""
    directory = tmp_path / "search"
    port = free_port()
    processes = []
    try:
        processes += [
            Process(tmp_path, tuner_id, port, directory, kind="staged")
            for tuner_id in ("chief", "tuner0", "tuner1")
        ]
        deadline = time.monotonic() + TIMEOUT
        stages = processes[0].read_until("stages", deadline)["stages"]
        for process in processes:
            process.read_until("finished", deadline)
    finally:
        for process in processes:
            process.kill()

    completed = [
        message["completed"]
        for process in processes[1:]
        for message in process.messages
        if "completed" in message
    ]
    # stage 1 searched the loss at the default base_filters (2); stage 2 the filters with the
    # winning loss, which the chief's trials carried to the workers
    assert sorted(key(values) for values in completed) == sorted(
        [(2, "dice"), (2, "dice_ce"), (2, stages["loss"]), (4, stages["loss"])]
    )
    project = directory / "staged"
    for index, name in enumerate(("loss", "base_filters"), 1):
        records = [
            json.loads(path.read_text())
            for path in (project / f"stage_{index}_{name}").glob("trial_*/trial.json")
        ]
        assert [record["status"] for record in records] == ["COMPLETED"] * 2
        best_record = max(records, key=lambda record: record["score"])
        assert stages[name] == best_record["hyperparameters"]["values"][name]
        table = (project / f"stage_{index}_{name}.csv").read_text().splitlines()
        assert table[0].endswith(",val_volume_dice") and len(table) == 3


@pytest.mark.slow
def test_hyperband_continues_trials_across_workers(tmp_path):
    """Hyperband's later rounds load a model another worker trained, from the shared folder,
    and workers wait while the oracle answers IDLE (a round waiting for the previous one)."""
    directory = tmp_path / "search"
    port = free_port()
    processes = []
    try:
        processes += [
            Process(tmp_path, tuner_id, port, directory, kind="hyperband")
            for tuner_id in ("chief", "tuner0", "tuner1")
        ]
        deadline = time.monotonic() + TIMEOUT
        best = processes[0].read_until("best", deadline)["best"]
        for process in processes:
            process.read_until("finished", deadline)
    finally:
        for process in processes:
            process.kill()

    trial_files = (directory / "hyperband").glob("trial_*/trial.json")
    records = [json.loads(path.read_text()) for path in trial_files]
    assert records and {record["status"] for record in records} == {"COMPLETED"}
    continued = [
        record for record in records if "tuner/trial_id" in record["hyperparameters"]["values"]
    ]
    assert continued  # a second round ran from a first-round checkpoint
    completed = [
        message["completed"]
        for process in processes[1:]
        for message in process.messages
        if "completed" in message
    ]
    assert len(completed) == len(records)  # every trial trained once
    best_record = max(records, key=lambda record: record["score"])
    assert best == best_record["hyperparameters"]["values"]


def test_distributed_role_reads_keras_tuners_variables(monkeypatch):
    from kseg.tuning import distributed_role

    for name in ("KERASTUNER_ORACLE_IP", "KERASTUNER_ORACLE_PORT", "KERASTUNER_TUNER_ID"):
        monkeypatch.delenv(name, raising=False)
    assert distributed_role() is None
    monkeypatch.setenv("KERASTUNER_ORACLE_IP", "127.0.0.1")
    with pytest.raises(ValueError, match="KERASTUNER_ORACLE_PORT"):
        distributed_role()
    monkeypatch.setenv("KERASTUNER_ORACLE_PORT", "8000")
    monkeypatch.setenv("KERASTUNER_TUNER_ID", "chief")
    assert distributed_role() == "chief"
    monkeypatch.setenv("KERASTUNER_TUNER_ID", "tuner3")
    assert distributed_role() == "worker"
