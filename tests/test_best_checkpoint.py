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
