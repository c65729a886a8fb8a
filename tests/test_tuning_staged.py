"""kseg.tuning: the grid and staged strategies, on a hypermodel whose score is known exactly.

Training a real model would make the best trial a matter of luck. Here every trial trains a
one-layer model for one epoch with ``VolumeValidation`` in the callbacks (the path real
searches take), and a callback right after it overwrites ``val_volume_dice`` with a
closed-form score of the trial's hyperparameters, so the best value of each stage is known
by hand.
"""

import csv
import json
import pathlib

import keras
import keras_tuner
import pytest
from test_tuning import SHAPE, CrashOnTraining, SimulatedCrash, problem, small_hypermodel

from kseg.training import VolumeValidation
from kseg.tuning import GridSearch, StagedSearch, tuner

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
        # eager: tracing a training and a predict function for each one-epoch trial took
        # longer than the epoch itself
        model.compile("adam", "binary_crossentropy", run_eagerly=True)
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
        ({"stages": [("loss_k", [5])]}, "stages"),
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


# --- staged ---------------------------------------------------------------------------

STAGES = [("loss_k", [5, 10, 20]), ("learning_rate", [1e-3, 3e-4]), ("base_filters", [8, 16])]

# Hand-worked. Defaults: learning_rate 1e-4 (the range's low end), base_filters 4.
# stage 1, lr 1e-4, 4 filters: k=5 0.1+0.1+0.3 = 0.5, k=10 0.7, k=20 0.6       -> k=10
# stage 2, k=10, 4 filters:    lr=1e-3 0.1+0.3+0.1 = 0.5, lr=3e-4 0.6          -> 3e-4
# stage 3, k=10, lr=3e-4:      8 filters 0.6+0.05 = 0.65, 16 filters 0.62      -> 8
EXPECTED_TABLES = [
    [
        ["0000", "5", "0.0001", "4", 0.5],
        ["0001", "10", "0.0001", "4", 0.7],
        ["0002", "20", "0.0001", "4", 0.6],
    ],
    [["0000", "10", "0.001", "4", 0.5], ["0001", "10", "0.0003", "4", 0.6]],
    [["0000", "10", "0.0003", "8", 0.65], ["0001", "10", "0.0003", "16", 0.62]],
]


def read_table(path):
    with open(path, newline="") as handle:
        header, *rows = list(csv.reader(handle))
    return header, [[*row[:-1], float(row[-1])] for row in rows]


def check_tables(search):
    assert len(search.results) == len(EXPECTED_TABLES)
    for index, result in enumerate(search.results, 1):
        name, expected = STAGES[index - 1][0], EXPECTED_TABLES[index - 1]
        assert result.table == str(pathlib.Path(search.project_dir) / f"stage_{index}_{name}.csv")
        header, rows = read_table(result.table)
        assert header[0] == "trial_id" and header[-1] == "val_volume_dice"
        assert sorted(header[1:-1]) == ["base_filters", "learning_rate", "loss_k"]
        order = [header.index(key) for key in ("loss_k", "learning_rate", "base_filters")]
        rows = [[row[0], *(row[i] for i in order), row[-1]] for row in rows]
        assert [row[:-1] for row in rows] == [row[:-1] for row in expected]
        assert [row[-1] for row in rows] == pytest.approx([row[-1] for row in expected])
    assert not list(pathlib.Path(search.project_dir).glob("*.tmp"))


def test_staged_carries_each_stage_best_forward_and_writes_a_table_per_stage(tmp_path):
    search = tuner("staged", KnownScore(), directory=tmp_path, project_name="s", stages=STAGES)
    assert isinstance(search, StagedSearch)
    assert run(search) == 3 + 2 + 2

    assert search.best_values() == {"loss_k": 10, "learning_rate": 3e-4, "base_filters": 8}
    assert [result.best_score for result in search.results] == pytest.approx([0.7, 0.6, 0.65])
    assert search.results[2].best_hyperparameters.values == {
        "loss_k": 10,
        "learning_rate": 3e-4,
        "base_filters": 8,
    }
    # the best trial overall is stage 1's k=10 at the default learning rate (0.7)
    best = search.get_best_hyperparameters(2)
    assert [hp.values for hp in best] == [
        {"loss_k": 10, "learning_rate": 1e-4, "base_filters": 4},
        {"loss_k": 10, "learning_rate": 3e-4, "base_filters": 8},
    ]
    check_tables(search)


@pytest.mark.parametrize(
    "crash_at, stages_done, rerun",
    [
        (2, 0, 1 + 1 + 2 + 2),  # stage 1, its second trial: it, stage 1's third, stages 2, 3
        (5, 1, 1 + 2),  # stage 2, its second trial: it, then stage 3
    ],
)
def test_crashed_staged_search_resumes_without_repeating_trials_or_stages(
    crash_at, stages_done, rerun, tmp_path
):
    arguments = dict(directory=tmp_path, project_name="s", stages=STAGES)
    first = tuner("staged", KnownScore(), **arguments)
    with pytest.raises(SimulatedCrash):
        run(first, crash_at=crash_at)
    project = pathlib.Path(first.project_dir)
    names = [f"stage_{index}_{name}" for index, (name, _) in enumerate(STAGES, 1)]
    before = {name: trial_records(project / name) for name in names}
    assert [(project / f"{name}.csv").exists() for name in names] == [
        index < stages_done for index in range(3)
    ]
    crashed = before[names[stages_done]]
    assert sorted(status for status, _, _ in crashed.values()) == ["COMPLETED", "RUNNING"]
    assert not (project / names[stages_done + 1]).exists()

    second = tuner("staged", KnownScore(), **arguments)
    assert run(second) == rerun
    for name in names[: stages_done + 1]:
        after = trial_records(project / name)
        assert all(status == "COMPLETED" for status, _, _ in after.values())
        finished = [key for key, record in before[name].items() if record[0] == "COMPLETED"]
        assert {key: after[key] for key in finished} == {key: before[name][key] for key in finished}
    assert [len(trial_records(project / name)) for name in names] == [3, 2, 2]
    assert second.best_values() == {"loss_k": 10, "learning_rate": 3e-4, "base_filters": 8}
    check_tables(second)

    third = tuner("staged", KnownScore(), **arguments)
    assert run(third) == 0  # finished: nothing to run, same answer
    assert third.best_values() == second.best_values()

    with pytest.raises(ValueError, match="kseg_stages.json"):
        tuner("staged", KnownScore(), directory=tmp_path, project_name="s", stages=STAGES[:2])


@pytest.mark.parametrize(
    "arguments, named",
    [
        ({"stages": [("loss_k", [5]), ("filters", [8])]}, r"stages\[1\].*'filters'"),
        ({"stages": [("loss_k", [])]}, r"stages\[0\].*'loss_k'.*non-empty"),
        ({"stages": [("loss_k", 5)]}, r"stages\[0\].*'loss_k'"),
        ({"stages": [("loss_k", [5, 5])]}, r"stages\[0\].*repeat"),
        ({"stages": [("learning_rate", [1e-3, 1])]}, r"stages\[0\].*mix types"),
        ({"stages": [("loss_k", [5]), ("loss_k", [10])]}, r"stages\[1\].*earlier"),
        ({"stages": []}, "stages"),
        ({"stages": None}, "stages"),
        ({"stages": [("loss_k", [5])], "max_trials": 2}, "max_trials"),
        ({"stages": [("loss_k", [5])], "objective": "loss"}, "'loss'"),
        ({"stages": [("loss_k", [5])], "objective": "val_volume_hd95"}, "val_volume_hd95"),
        (
            {"stages": [("loss_k", [5])], "objective": keras_tuner.Objective("val_dice", "min")},
            "direction",
        ),
    ],
)
def test_staged_refuses_wrong_arguments_by_name(arguments, named, tmp_path):
    if "val_volume_hd95" in str(arguments.get("objective")):
        # a direction-correct objective that the VolumeValidation does not write: refused
        # at search(), before any trial trains
        search = tuner("staged", KnownScore(), directory=tmp_path, project_name="s", **arguments)
        with pytest.raises(ValueError, match=named):
            run(search)
        assert not list((tmp_path / "s").glob("stage_*/trial_*"))
        return
    with pytest.raises(ValueError, match=named):
        tuner("staged", KnownScore(), directory=tmp_path, project_name="s", **arguments)
    assert not (tmp_path / "s").exists()


# get_best_models restores weights only; the fresh model's optimizer has no slots to fill
@pytest.mark.filterwarnings("ignore:Skipping variable loading for optimizer")
def test_staged_search_over_real_models_fixes_conditional_winners(tmp_path):
    """``base_filters`` is declared only for models that have it (a conditional scope);
    the hypermodel pins it at 4, which the stage over it overrides."""
    keras.utils.set_random_seed(7)
    hypermodel = small_hypermodel(
        models=("unet", "highresnet"), base_filters=4, depth=1, losses=("dice", "dice_ce")
    )
    search = tuner(
        "staged",
        hypermodel,
        directory=tmp_path,
        project_name="real",
        stages=[("loss", ["dice", "dice_ce"]), ("base_filters", [4, 2])],
    )
    run(search)
    loss_stage, filters_stage = search.results
    _, rows = read_table(loss_stage.table)
    header, _ = read_table(loss_stage.table)
    column = header.index("loss")
    assert loss_stage.best_value == max(rows, key=lambda row: row[-1])[column]
    trials = trial_records(filters_stage.tuner.project_dir)
    # stage 2: the stage-1 loss, U-Net (the model default), both filter counts, the rest
    # at their defaults (dropout 0, learning rate 1e-3: the range's low end)
    assert sorted(values["base_filters"] for _, values, _ in trials.values()) == [2, 4]
    for _, values, _ in trials.values():
        assert values["loss"] == loss_stage.best_value
        assert values["model"] == "unet" and values["depth"] == 1
        assert values["dropout"] == 0.0 and values["learning_rate"] == pytest.approx(1e-3)
    best_model = filters_stage.tuner.get_best_models()[0]
    first_conv = next(
        layer for layer in best_model.layers if isinstance(layer, keras.layers.Conv2D)
    )
    assert first_conv.filters == filters_stage.best_value
    assert (
        type(best_model.loss).__name__
        == {"dice": "DiceLoss", "dice_ce": "DiceCELoss"}[loss_stage.best_value]
    )


def test_staged_refuses_a_stage_its_fixed_parents_switch_off(tmp_path):
    # topk_k is declared under loss == "topk"; the default loss here is "dice"
    hypermodel = small_hypermodel(models="unet", losses=("dice", "topk"), topk_k=(5, 10))
    search = tuner(
        "staged",
        hypermodel,
        directory=tmp_path,
        project_name="s",
        stages=[("topk_k", [5, 20])],
    )
    with pytest.raises(ValueError, match=r"stages: 'topk_k' is only used when \{'loss'"):
        run(search)
    assert not (tmp_path / "s" / "stage_1_topk_k").exists()
