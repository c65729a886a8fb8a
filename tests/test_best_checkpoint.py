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
        logs["val_volume_dice"] = self.values[epoch]


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
    checkpoint = BestModelCheckpoint(path, mode="min")
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
