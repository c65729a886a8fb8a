"""kseg.tuning: the grid strategy, on a hypermodel whose score is known exactly.

Training a real model would make the best trial a matter of luck. Here every trial trains a
one-layer model for one epoch with ``VolumeValidation`` in the callbacks (the path real
searches take), and a callback right after it overwrites ``val_volume_dice`` with a
closed-form score of the trial's hyperparameters, so the best trial is known by hand.
"""

import json
import pathlib

import keras
import keras_tuner
import pytest
from test_tuning import SHAPE, CrashOnTraining, SimulatedCrash, problem

from kseg.training import VolumeValidation
from kseg.tuning import GridSearch, tuner

# additive score: loss_k, learning_rate and base_filters each add a known amount
K_SCORE = {5: 0.1, 10: 0.3, 20: 0.2}
LR_SCORE = {1e-4: 0.3, 1e-3: 0.1, 3e-4: 0.2}
FILTERS_SCORE = {4: 0.0, 8: 0.05, 16: 0.02}


def score(values):
    return (
        0.1
        + K_SCORE[values["loss_k"]]
        + LR_SCORE[values["learning_rate"]]
        + FILTERS_SCORE[values["base_filters"]]
    )


class ReportScore(keras.callbacks.Callback):
    """Writes ``val_volume_dice`` = the known score into each epoch's logs."""

    def __init__(self, value):
        super().__init__()
        self.value = value

    def on_epoch_end(self, epoch, logs=None):
        logs["val_volume_dice"] = self.value


class KnownScore(keras_tuner.HyperModel):
    """Declares ``loss_k``, ``learning_rate`` and ``base_filters``; a trial scores ``score``.

    ``learning_rate`` is a continuous log range (default 1e-4, its low end) unless
    ``learning_rates`` lists choices.
    """

    def __init__(self, loss_k=(5, 10, 20), base_filters=(4, 8, 16), learning_rates=None):
        super().__init__()
        self.loss_k, self.base_filters, self.learning_rates = loss_k, base_filters, learning_rates

    def build(self, hp):
        hp.Choice("loss_k", list(self.loss_k))
        if self.learning_rates is None:
            hp.Float("learning_rate", 1e-4, 1e-2, sampling="log")
        else:
            hp.Choice("learning_rate", list(self.learning_rates))
        hp.Choice("base_filters", list(self.base_filters))
        inputs = keras.Input(SHAPE)
        outputs = keras.layers.Conv2D(1, 1, activation="sigmoid")(inputs)
        model = keras.Model(inputs, outputs)
        model.compile("adam", "binary_crossentropy")
        return model

    def fit(self, hp, model, *args, callbacks=(), **kwargs):
        callbacks = list(callbacks)
        # right after the VolumeValidation, before Keras Tuner's best-epoch checkpoint
        last = max(i for i, c in enumerate(callbacks) if isinstance(c, VolumeValidation))
        callbacks.insert(last + 1, ReportScore(score(hp.values)))
        return model.fit(*args, callbacks=callbacks, **kwargs)


def run(search, crash_at=0):
    """Search with one epoch per trial; returns how many trainings ran."""
    train, validation_data, volumes = problem()
    CrashOnTraining.trainings = 0
    search.search(
        *train,
        validation_data=validation_data,
        epochs=1,
        verbose=0,
        callbacks=[VolumeValidation(volumes), CrashOnTraining(crash_at)],
    )
    return CrashOnTraining.trainings


def trial_records(project_dir):
    """``{trial_id: (status, values, score)}`` as Keras Tuner wrote them."""
    records = {}
    for path in pathlib.Path(project_dir).glob("trial_*/trial.json"):
        record = json.loads(path.read_text())
        records[record["trial_id"]] = (
            record["status"],
            record["hyperparameters"]["values"],
            record["score"],
        )
    return records


def combinations(records):
    return sorted((values["loss_k"], values["base_filters"]) for _, values, _ in records.values())


# --- grid -----------------------------------------------------------------------------


def test_grid_runs_every_combination_once_and_ranks_by_volume_dice(tmp_path):
    hypermodel = KnownScore(loss_k=(5, 10, 20), base_filters=(4, 8), learning_rates=(3e-4,))
    search = tuner("grid", hypermodel, directory=tmp_path, project_name="grid")
    assert isinstance(search, GridSearch)
    assert search.oracle.objective.name == "val_volume_dice"
    assert search.oracle.objective.direction == "max"
    assert run(search) == 6

    records = trial_records(search.project_dir)
    assert combinations(records) == [(5, 4), (5, 8), (10, 4), (10, 8), (20, 4), (20, 8)]
    for status, values, recorded in records.values():
        assert status == "COMPLETED" and recorded == pytest.approx(score(values))
    # best: k=10 (0.3) and 8 filters (0.05): 0.1 + 0.3 + 0.2 + 0.05
    best = search.get_best_hyperparameters()[0].values
    assert (best["loss_k"], best["base_filters"]) == (10, 8)
    assert search.oracle.get_best_trials(1)[0].score == pytest.approx(0.65)


def test_crashed_grid_resumes_with_the_combinations_it_had_not_finished(tmp_path):
    hypermodel = KnownScore(loss_k=(5, 10, 20), base_filters=(4, 8), learning_rates=(3e-4,))
    arguments = dict(directory=tmp_path, project_name="grid")
    first = tuner("grid", hypermodel, **arguments)
    with pytest.raises(SimulatedCrash):
        run(first, crash_at=3)
    before = trial_records(first.project_dir)
    assert sorted(status for status, _, _ in before.values()) == [
        "COMPLETED",
        "COMPLETED",
        "RUNNING",
    ]

    second = tuner("grid", hypermodel, **arguments)
    assert run(second) == 1 + 3  # the interrupted trial again, then the three not started
    after = trial_records(second.project_dir)
    assert combinations(after) == [(5, 4), (5, 8), (10, 4), (10, 8), (20, 4), (20, 8)]
    assert all(status == "COMPLETED" for status, _, _ in after.values())
    finished = [trial_id for trial_id, record in before.items() if record[0] == "COMPLETED"]
    assert {trial_id: after[trial_id] for trial_id in finished} == {
        trial_id: before[trial_id] for trial_id in finished
    }
    assert run(tuner("grid", hypermodel, **arguments)) == 0  # finished: nothing to run


@pytest.mark.parametrize(
    "arguments, named",
    [
        ({"max_epochs": 3}, "max_epochs"),
        ({"max_trials": 0}, "max_trials"),
        ({"objective": "dice"}, "'dice'"),
        ({"objective": keras_tuner.Objective("val_volume_dice", "min")}, "direction"),
    ],
)
def test_grid_refuses_wrong_arguments_by_name(arguments, named, tmp_path):
    hypermodel = KnownScore(learning_rates=(3e-4,))
    with pytest.raises(ValueError, match=named):
        tuner("grid", hypermodel, directory=tmp_path, project_name="g", **arguments)
    assert not (tmp_path / "g").exists()


def test_grid_refuses_continuous_ranges_by_name(tmp_path):
    with pytest.raises(ValueError, match=r"\['learning_rate'\]"):
        tuner("grid", KnownScore(), directory=tmp_path, project_name="g")
    assert not (tmp_path / "g").exists()
