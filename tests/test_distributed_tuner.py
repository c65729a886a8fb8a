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

The same three processes then run a staged search and a Hyperband search, each on ports of
its own, one after the other (TensorFlow's start-up, seconds per process, is paid once):
the tests below each check one of the three searches.
"""

import dataclasses
import itertools
import json
import os
import socket
import textwrap
import time

import pytest
from child_processes import JsonLinesChild, free_ports

TIMEOUT = 900  # seconds for the three searches; each process imports TensorFlow (slow when busy)
BASE_FILTERS = (2, 4)
LOSSES = ("dice", "dice_ce")
SEARCHES = ("grid", "staged", "hyperband")  # in the order each process runs them

CHILD = textwrap.dedent(
    """
    import json
    import os
    import sys
    import time
    import types

    import keras
    import numpy as np
    import tensorflow as tf

    from kseg.training import VolumeValidation
    from kseg.tuning import SegmentationHyperModel, distributed_role, tuner

    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    if distributed_role() == "chief":
        from keras_tuner.src.distribute import oracle_chief

        # Once a worker is told the search is over, Keras Tuner's chief looks every 20 s for
        # the others to have left too; looking every 0.5 s ends each search that much sooner
        # and changes nothing else
        oracle_chief.time = types.SimpleNamespace(
            sleep=lambda seconds: time.sleep(min(seconds, 0.5)))
    directory, pause = sys.argv[1], sys.argv[2] == "pause"
    ports = dict(zip(("grid", "staged", "hyperband"), sys.argv[3:6], strict=True))
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    field = rng.normal(size=(16, 8, 8))
    field = (field + np.roll(field, 1, axis=1) + np.roll(field, 1, axis=2)) / 3
    labels = (field > 0.2).astype(np.uint8)
    images = (field + 0.3 * rng.normal(size=field.shape)).astype(np.float32)[..., None]
    volumes = [(f"p{index}", images[8 + 4 * index: 12 + 4 * index],
                labels[8 + 4 * index: 12 + 4 * index], (2.0, 1.0, 1.0)) for index in range(2)]


    def report(**message):
        print(json.dumps({**message, "search": Reporting.search}), flush=True)


    class Reporting(SegmentationHyperModel):
        paused = False
        search = None

        def fit(self, hp, model, *args, **kwargs):
            report(training=hp.values)
            if pause and not Reporting.paused:
                Reporting.paused = True
                report(paused=hp.values)
                sys.stdin.readline()
            history = super().fit(hp, model, *args, **kwargs)
            report(completed=hp.values, val_volume_dice=history.history["val_volume_dice"])
            return history


    for kind, port in ports.items():
        Reporting.search = kind
        os.environ["KERASTUNER_ORACLE_PORT"] = port  # the staged search also uses port + 1
        hypermodel = Reporting(
            (8, 8, 1), 1, models="unet", base_filters=(2, 4), depth=1, dropout=0.0,
            losses=("dice", "dice_ce"), learning_rate=0.01,
            compile_kwargs={"run_eagerly": True})
        if kind == "grid":
            search = tuner("grid", hypermodel, directory=directory, project_name="grid", seed=0)
        elif kind == "hyperband":
            search = tuner("hyperband", hypermodel, directory=directory,
                           project_name="hyperband", max_epochs=3, factor=3, seed=0)
        else:
            search = tuner("staged", hypermodel, directory=directory, project_name="staged",
                           stages=[("loss", ["dice", "dice_ce"]), ("base_filters", [2, 4])])
        search.search(images[:8], labels[:8, ..., None], batch_size=4, epochs=2, verbose=0,
                      validation_data=(images[8:], labels[8:, ..., None]),
                      callbacks=[VolumeValidation(volumes)])
        if distributed_role() == "chief":
            report(best=search.get_best_hyperparameters()[0].values)
            if kind == "staged":
                report(stages=search.best_values())
    print(json.dumps({"finished": distributed_role()}), flush=True)
    """
)


def search_ports():
    """A free port for each search; the staged search's stage 2 takes the next one, free too."""
    while True:
        grid, staged, hyperband = free_ports(3)
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", staged + 1))
            except OSError:
                continue
        if staged + 1 not in (grid, hyperband):
            return {"grid": grid, "staged": staged, "hyperband": hyperband}


class Process(JsonLinesChild):
    """One tuner process; stdout read as JSON lines, stderr kept in a file."""

    def __init__(self, zygote, tmp_path, tuner_id, ports, directory, *, pause=False, log_name=None):
        environment = dict(
            os.environ,
            KERASTUNER_TUNER_ID=tuner_id,
            KERASTUNER_ORACLE_IP="127.0.0.1",
            KERASTUNER_ORACLE_PORT=str(ports["grid"]),
        )
        arguments = [directory, "pause" if pause else "run", *(ports[s] for s in SEARCHES)]
        super().__init__(
            tmp_path, log_name or tuner_id, CHILD, arguments, environment, zygote=zygote
        )

    def said(self, search, key):
        """What this process reported under ``key`` during ``search``, in order."""
        return [m[key] for m in self.messages if m.get("search") == search and key in m]


@dataclasses.dataclass
class Searches:
    directory: object
    chief: Process
    worker0: Process
    killed: Process  # tuner1, killed in the middle of its first grid trial
    restarted: Process  # tuner1 again
    interrupted: dict  # the values of the trial the killed worker left unfinished

    def completed(self, search):
        return [
            values
            for process in (self.worker0, self.restarted)
            for values in process.said(search, "completed")
        ]

    def logged(self, search):
        """``{key(values): val_volume_dice per epoch}`` of every trial the workers finished."""
        return {
            key(m["completed"]): m["val_volume_dice"]
            for process in (self.worker0, self.restarted)
            for m in process.messages
            if m.get("search") == search and "completed" in m
        }


@pytest.fixture(scope="module")
def searches(tmp_path_factory, zygote):
    tmp_path = tmp_path_factory.mktemp("distributed")
    directory = tmp_path / "search"
    ports = search_ports()
    processes = []
    # the four processes are forked from the worker's zygote, which imported TensorFlow once
    # (CPU-seconds each otherwise); each starts its own TensorFlow runtime and imports Keras
    # Tuner itself
    try:
        chief = Process(zygote, tmp_path, "chief", ports, directory)
        worker0 = Process(zygote, tmp_path, "tuner0", ports, directory)
        worker1 = Process(zygote, tmp_path, "tuner1", ports, directory, pause=True)
        processes += [chief, worker0, worker1]
        deadline = time.monotonic() + TIMEOUT
        interrupted = worker1.read_until("paused", deadline)["paused"]
        worker1.kill()  # in the middle of its first trial
        restarted = Process(
            zygote, tmp_path, "tuner1", ports, directory, log_name="tuner1-restarted"
        )
        processes.append(restarted)
        for process in (chief, worker0, restarted):
            process.read_until("finished", deadline)
    finally:
        for process in processes:
            process.kill()
    return Searches(directory, chief, worker0, worker1, restarted, interrupted)


def key(values):
    return (values["base_filters"], values["loss"])


def best_values(records):
    """The hyperparameters of each trial record with the best score: there may be several,
    as two trials that both predict foreground everywhere score the same."""
    top = max(record["score"] for record in records)
    return [record["hyperparameters"]["values"] for record in records if record["score"] == top]


@pytest.mark.slow
def test_chief_and_two_workers_run_every_trial_once_and_survive_a_killed_worker(searches):
    # the restarted worker took back the trial its predecessor left unfinished
    assert key(searches.restarted.said("grid", "training")[0]) == key(searches.interrupted)
    assert not [m for m in searches.killed.messages if "completed" in m]

    # every combination of the grid ran to completion exactly once, over all workers
    completed = searches.completed("grid")
    assert sorted(key(values) for values in completed) == sorted(
        itertools.product(BASE_FILTERS, LOSSES)
    )

    # the chief's record: each trial scored by the whole-volume Dice its worker logged
    project = searches.directory / "grid"
    records = [json.loads(path.read_text()) for path in project.glob("trial_*/trial.json")]
    assert len(records) == len(completed) == 4
    logged = searches.logged("grid")
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
    [best] = searches.chief.said("grid", "best")
    assert best in best_values(records)


@pytest.mark.slow
def test_staged_search_runs_stage_by_stage_with_a_chief_and_two_workers(searches):
    """Each stage is one distributed search on its own port; the chief carries the winner."""
    [stages] = searches.chief.said("staged", "stages")
    completed = searches.completed("staged")
    # stage 1 searched the loss at the default base_filters (2); stage 2 the filters with the
    # winning loss, which the chief's trials carried to the workers
    assert sorted(key(values) for values in completed) == sorted(
        [(2, "dice"), (2, "dice_ce"), (2, stages["loss"]), (4, stages["loss"])]
    )
    project = searches.directory / "staged"
    for index, name in enumerate(("loss", "base_filters"), 1):
        records = [
            json.loads(path.read_text())
            for path in (project / f"stage_{index}_{name}").glob("trial_*/trial.json")
        ]
        assert [record["status"] for record in records] == ["COMPLETED"] * 2
        assert stages[name] in [values[name] for values in best_values(records)]
        table = (project / f"stage_{index}_{name}.csv").read_text().splitlines()
        assert table[0].endswith(",val_volume_dice") and len(table) == 3


@pytest.mark.slow
def test_hyperband_continues_trials_across_workers(searches):
    """Hyperband's later rounds load a model another worker trained, from the shared folder,
    and workers wait while the oracle answers IDLE (a round waiting for the previous one)."""
    trial_files = (searches.directory / "hyperband").glob("trial_*/trial.json")
    records = [json.loads(path.read_text()) for path in trial_files]
    assert records and {record["status"] for record in records} == {"COMPLETED"}
    continued = [
        record for record in records if "tuner/trial_id" in record["hyperparameters"]["values"]
    ]
    assert continued  # a second round ran from a first-round checkpoint
    assert len(searches.completed("hyperband")) == len(records)  # every trial trained once
    [best] = searches.chief.said("hyperband", "best")
    assert best in best_values(records)


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
