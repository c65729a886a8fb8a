"""BestModelCheckpoint: atomic saves of the best model, and a resumed run keeps its best."""

import json

import keras
import numpy as np
import pytest

from kseg.training import BestModelCheckpoint


class ScriptedScore(keras.callbacks.Callback):
    """Writes a scripted value per epoch, standing in for a validation callback."""

    def __init__(self, values):
        super().__init__()
        self.values = values

    def on_epoch_end(self, epoch, logs=None):
        # a score, and a distance for the minimising checkpoint
        logs["val_volume_dice"] = logs["val_volume_hd95"] = self.values[epoch]


class WeightStamp(keras.callbacks.Callback):
    """Sets the single weight to the epoch number, so a saved file tells which epoch it is."""

    def on_epoch_end(self, epoch, logs=None):
        self.model.layers[-1].set_weights([np.full((1, 1), float(epoch))])


def tiny_model():
    model = keras.Sequential([keras.Input((1,)), keras.layers.Dense(1, use_bias=False)])
    model.compile(optimizer="sgd", loss="mse")
    return model


def fit(model, checkpoint, values, **kwargs):
    x = np.zeros((2, 1), np.float32)
    model.fit(x, x, verbose=0, callbacks=[WeightStamp(), ScriptedScore(values), checkpoint],
              epochs=len(values), **kwargs)


def saved_epoch(path):
    return float(keras.saving.load_model(path).layers[-1].get_weights()[0][0, 0])


def test_keeps_the_best_epoch_and_leaves_no_temporary_files(tmp_path):
    path = tmp_path / "best.keras"
    checkpoint = BestModelCheckpoint(path)
    fit(tiny_model(), checkpoint, [0.2, 0.5, float("nan"), 0.4])
    assert saved_epoch(path) == 1.0
    assert json.loads((tmp_path / "best.keras.json").read_text())["best"] == 0.5
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.keras", "best.keras.json"]


def test_resumed_run_does_not_replace_a_better_model(tmp_path):
    path = tmp_path / "best.keras"
    fit(tiny_model(), BestModelCheckpoint(path), [0.3, 0.9])
    resumed = BestModelCheckpoint(path)
    fit(tiny_model(), resumed, [None, None, 0.5, 0.95], initial_epoch=2)
    assert saved_epoch(path) == 3.0 and resumed.best == 0.95

    # a resumed run whose scores never beat the saved best leaves the file alone
    fit(tiny_model(), BestModelCheckpoint(path), [None, None, 0.1, 0.2], initial_epoch=2)
    assert saved_epoch(path) == 3.0


def test_a_new_run_from_epoch_zero_starts_from_no_best(tmp_path):
    path = tmp_path / "best.keras"
    fit(tiny_model(), BestModelCheckpoint(path), [0.9])
    fit(tiny_model(), BestModelCheckpoint(path, mode="max"), [0.1, 0.05])
    assert saved_epoch(path) == 0.0  # the new run's best, not the old run's 0.9


def test_minimising_and_argument_checks(tmp_path):
    path = tmp_path / "best.keras"
    checkpoint = BestModelCheckpoint(path, monitor="val_volume_hd95", mode="min")
    fit(tiny_model(), checkpoint, [3.0, 1.0, 2.0])
    assert saved_epoch(path) == 1.0 and checkpoint.best_epoch == 1
    with pytest.raises(ValueError, match="end in .keras"):
        BestModelCheckpoint(tmp_path / "best.h5")
    with pytest.raises(ValueError, match="mode"):
        BestModelCheckpoint(path, mode="up")


class Crash(keras.callbacks.Callback):
    def __init__(self, at_epoch):
        super().__init__()
        self.at_epoch = at_epoch

    def on_epoch_begin(self, epoch, logs=None):
        if epoch == self.at_epoch:
            raise RuntimeError("simulated crash")


def test_training_callbacks_resume_a_crashed_run_with_nothing_lost(tmp_path):
    """Crash in epoch 3, run the same fit again: it continues at epoch 3 with the weights of
    epoch 2, keeps the earlier best model, and the history has every epoch once."""
    from kseg.training import VolumeValidation, training_callbacks

    rng = np.random.default_rng(0)
    image = rng.normal(size=(3, 6, 6, 1)).astype(np.float32)
    label = (image[..., 0] > 0).astype(np.uint8)

    def callbacks(extra):
        validation = VolumeValidation([("p", image, label, None)])
        return [*training_callbacks(tmp_path, validation), *extra]

    def model():
        inputs = keras.Input((None, None, 1))
        net = keras.Model(inputs, keras.layers.Conv2D(1, 1, activation="sigmoid")(inputs))
        net.compile(optimizer=keras.optimizers.SGD(0.1), loss="binary_crossentropy")
        return net

    first = model()
    with pytest.raises(RuntimeError, match="simulated crash"):
        first.fit(image, label[..., None], epochs=5, verbose=0, callbacks=callbacks([Crash(3)]))
    weights_after_epoch_2 = [w.copy() for w in first.get_weights()]

    resumed = model()
    seen, starting_weights = [], []

    def on_epoch_begin(epoch, logs):
        seen.append(epoch)
        starting_weights.append([w.copy() for w in resumed.get_weights()])

    record = keras.callbacks.LambdaCallback(on_epoch_begin=on_epoch_begin)
    resumed.fit(image, label[..., None], epochs=5, verbose=0, callbacks=callbacks([record]))
    assert seen == [3, 4]
    with open(tmp_path / "history.csv") as handle:
        epochs = [int(line.split(",")[0]) for line in handle.readlines()[1:]]
    assert epochs == [0, 1, 2, 3, 4]
    state = json.loads((tmp_path / "best.keras.json").read_text())
    scores = {}
    with open(tmp_path / "history.csv") as handle:
        header = handle.readline().strip().split(",")
        for line in handle:
            values = dict(zip(header, line.strip().split(","), strict=True))
            scores[int(values["epoch"])] = float(values["val_volume_dice"])
    assert state["best"] == pytest.approx(max(scores.values()))
    # the resumed model started from the weights the first run had at the crash
    for restored, saved in zip(starting_weights[0], weights_after_epoch_2, strict=True):
        np.testing.assert_array_equal(restored, saved)
    assert not (tmp_path / "backup").exists()


def test_score_travels_inside_the_model_file(tmp_path):
    """The .keras archive holds the score of the model in it, so one rename replaces both."""
    import zipfile

    path = tmp_path / "best.keras"
    fit(tiny_model(), BestModelCheckpoint(path), [0.3, 0.9])
    with zipfile.ZipFile(path) as archive:
        inside = json.loads(archive.read("kseg_checkpoint.json"))
    assert inside == {"monitor": "val_volume_dice", "mode": "max", "best": 0.9, "epoch": 1}
    assert json.loads((tmp_path / "best.keras.json").read_text()) == inside


def test_kill_between_model_and_score_copy_is_repaired_from_the_model(tmp_path):
    """Killed after best.keras was replaced but before best.keras.json: the copy is one
    save behind; a resumed run takes the model's own score and rewrites the copy."""
    path = tmp_path / "best.keras"
    fit(tiny_model(), BestModelCheckpoint(path), [0.3, 0.9])
    stale = {"monitor": "val_volume_dice", "mode": "max", "best": 0.3, "epoch": 0}
    (tmp_path / "best.keras.json").write_text(json.dumps(stale))
    resumed = BestModelCheckpoint(path)
    fit(tiny_model(), resumed, [None, None, 0.5], initial_epoch=2)
    assert saved_epoch(path) == 1.0  # 0.5 beats the stale 0.3 but not the model's 0.9
    assert resumed.best == 0.9
    assert json.loads((tmp_path / "best.keras.json").read_text())["best"] == 0.9


def test_corrupt_score_copy_is_rewritten_with_a_warning(tmp_path):
    from kseg.training import CheckpointRecordWarning

    path = tmp_path / "best.keras"
    fit(tiny_model(), BestModelCheckpoint(path), [0.3, 0.9])
    (tmp_path / "best.keras.json").write_text('{"monitor": "val_volu')  # cut short
    resumed = BestModelCheckpoint(path)
    with pytest.warns(CheckpointRecordWarning, match="best.keras.json"):
        fit(tiny_model(), resumed, [None, None, 0.5], initial_epoch=2)
    assert resumed.best == 0.9 and saved_epoch(path) == 1.0
    assert json.loads((tmp_path / "best.keras.json").read_text())["epoch"] == 1


def test_older_model_without_its_score_needs_a_readable_score_file(tmp_path):
    from kseg.errors import UnreadableFileError

    path = tmp_path / "best.keras"
    model = tiny_model()
    model.save(path)  # as kseg wrote it before the score went inside
    state = tmp_path / "best.keras.json"
    state.write_text(json.dumps({"monitor": "val_volume_dice", "mode": "max", "best": 0.8,
                                 "epoch": 0}))
    resumed = BestModelCheckpoint(path)
    fit(tiny_model(), resumed, [None, 0.5], initial_epoch=1)
    assert resumed.best == 0.8 and resumed.best_epoch == 0

    state.write_text("{not json")
    with pytest.raises(UnreadableFileError, match=r"best\.keras\.json.*not valid JSON"):
        fit(tiny_model(), BestModelCheckpoint(path), [None, 0.5], initial_epoch=1)
    state.write_text(json.dumps({"best": 0.8}))
    with pytest.raises(UnreadableFileError, match=r"best\.keras\.json.*monitor"):
        fit(tiny_model(), BestModelCheckpoint(path), [None, 0.5], initial_epoch=1)


def test_unreadable_model_file_is_named(tmp_path):
    from kseg.errors import UnreadableFileError

    path = tmp_path / "best.keras"
    path.write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(UnreadableFileError, match=r"best\.keras: is not a readable \.keras"):
        fit(tiny_model(), BestModelCheckpoint(path), [None, 0.5], initial_epoch=1)


def test_temporaries_of_killed_saves_are_removed_when_training_starts(tmp_path):
    path = tmp_path / "best.keras"
    for name in (".best.keras.k3x_9a0q.keras", ".best.keras.json.0a1b2c3d.keras.json"):
        (tmp_path / name).write_text("half written")
    (tmp_path / "notes.txt").write_text("mine")
    fit(tiny_model(), BestModelCheckpoint(path), [0.4])
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "best.keras", "best.keras.json", "notes.txt"
    ]


def test_training_callbacks_name_an_output_folder_that_is_a_file(tmp_path):
    from kseg.errors import LayoutError
    from kseg.training import training_callbacks

    run = tmp_path / "run"
    run.write_text("not a folder")
    with pytest.raises(LayoutError, match=r"run: is a file; output_dir"):
        training_callbacks(run, None, monitor="loss", mode="min")
    with pytest.raises(LayoutError, match=r"run/liver: cannot be created.*run is a file"):
        training_callbacks(run / "liver", None, monitor="loss", mode="min")
