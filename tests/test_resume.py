"""AtomicBackupAndRestore and ResumableCSVLogger: the state a resumed run starts from."""

import json

import h5py
import keras
import numpy as np
import pytest

from kseg.errors import UnreadableFileError
from kseg.training import AtomicBackupAndRestore, ResumableCSVLogger

X = np.linspace(-1, 1, 8, dtype=np.float32).reshape(8, 1)
Y = 3 * X


def tiny_model():
    model = keras.Sequential([keras.Input((1,)), keras.layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.Adam(0.05), loss="mse")
    return model


class Crash(keras.callbacks.Callback):
    def __init__(self, at_epoch):
        super().__init__()
        self.at_epoch = at_epoch

    def on_epoch_begin(self, epoch, logs=None):
        if epoch == self.at_epoch:
            raise RuntimeError("simulated crash")


class Starts(keras.callbacks.Callback):
    """Records the epochs a fit runs and the model's weights and optimizer step at its start."""

    def __init__(self):
        super().__init__()
        self.epochs = []

    def on_train_begin(self, logs=None):
        self.iterations = None

    def on_epoch_begin(self, epoch, logs=None):
        if not self.epochs:
            self.weights = [w.copy() for w in self.model.get_weights()]
            self.iterations = int(self.model.optimizer.iterations.numpy())
        self.epochs.append(epoch)


def test_resumes_weights_optimizer_and_epoch_and_cleans_up(tmp_path):
    backup = tmp_path / "backup"
    first = tiny_model()
    with pytest.raises(RuntimeError):
        first.fit(X, Y, batch_size=4, epochs=5, verbose=0,
                  callbacks=[AtomicBackupAndRestore(backup), Crash(3)])
    assert sorted(p.name for p in backup.iterdir()) == ["latest.weights.h5"]
    with h5py.File(backup / "latest.weights.h5") as handle:
        assert json.loads(handle.attrs["kseg_backup"]) == {
            "epoch": 3, "batch": 0, "callbacks": {}
        }

    # a temporary left by a write killed part-way through is removed when training starts
    (backup / ".latest.weights.h5.a1b2c3d4.weights.h5").write_bytes(b"\x89HDF half")
    resumed, starts = tiny_model(), Starts()
    resumed.fit(X, Y, batch_size=4, epochs=5, verbose=0,
                callbacks=[AtomicBackupAndRestore(backup), starts])
    assert starts.epochs == [3, 4]
    assert starts.iterations == 3 * 2  # three epochs of two batches: Adam's state came back
    for restored, saved in zip(starts.weights, first.get_weights(), strict=True):
        np.testing.assert_array_equal(restored, saved)
    assert not backup.exists()  # deleted after a finished fit, as Keras does


def test_restores_a_backup_written_by_keras(tmp_path):
    backup = tmp_path / "backup"
    with pytest.raises(RuntimeError):
        tiny_model().fit(X, Y, epochs=5, verbose=0,
                         callbacks=[keras.callbacks.BackupAndRestore(backup), Crash(2)])
    starts = Starts()
    tiny_model().fit(X, Y, epochs=4, verbose=0,
                     callbacks=[AtomicBackupAndRestore(backup), starts])
    assert starts.epochs == [2, 3]


@pytest.mark.filterwarnings("ignore:Skipping variable loading for optimizer")
def test_unreadable_backups_are_named(tmp_path):
    backup = tmp_path / "backup"
    backup.mkdir()
    weights = backup / "latest.weights.h5"
    # what Keras' in-place write leaves when killed: an HDF5 file cut short
    tiny_model().save_weights(tmp_path / "whole.weights.h5")
    weights.write_bytes((tmp_path / "whole.weights.h5").read_bytes()[:600])
    with pytest.raises(UnreadableFileError, match=r"latest\.weights\.h5: is not a readable"):
        tiny_model().fit(X, Y, epochs=1, verbose=0, callbacks=[AtomicBackupAndRestore(backup)])

    # a complete backup of another model
    other = keras.Sequential([keras.Input((1,)), keras.layers.Dense(2), keras.layers.Dense(1)])
    other.compile(optimizer="adam", loss="mse")
    other.save_weights(weights)
    with h5py.File(weights, "a") as handle:
        handle.attrs["kseg_backup"] = json.dumps({"epoch": 1, "batch": 0, "callbacks": {}})
    with pytest.raises(UnreadableFileError, match="cannot be restored into this model"):
        tiny_model().fit(X, Y, epochs=2, verbose=0, callbacks=[AtomicBackupAndRestore(backup)])


class ScriptedScore(keras.callbacks.Callback):
    def __init__(self, values):
        super().__init__()
        self.values = values

    def on_epoch_end(self, epoch, logs=None):
        logs["val_volume_dice"] = self.values[epoch]


def test_learning_rate_schedule_resumes_its_patience_count(tmp_path):
    """Patience 3, no improvement after epoch 0: the rate halves at the end of epoch 3, even
    when a crash at the start of epoch 3 split the waiting over two fits."""
    from kseg.training import ResumableReduceLROnPlateau

    scores = [0.5, 0.4, 0.4, 0.4, 0.4]

    def callbacks(*extra):
        plateau = ResumableReduceLROnPlateau(
            monitor="val_volume_dice", mode="max", factor=0.5, patience=3
        )
        backup = AtomicBackupAndRestore(tmp_path / "backup", stateful={"reduce_lr": plateau})
        return [ScriptedScore(scores), plateau, backup, *extra]

    with pytest.raises(RuntimeError):
        tiny_model().fit(X, Y, epochs=5, verbose=0, callbacks=callbacks(Crash(3)))
    resumed = tiny_model()
    history = resumed.fit(X, Y, epochs=5, verbose=0, callbacks=callbacks())
    np.testing.assert_allclose(history.history["learning_rate"], [0.05, 0.025], rtol=1e-6)

    with pytest.raises(ValueError, match=r"stateful\['csv'\] \(CSVLogger\)"):
        AtomicBackupAndRestore(tmp_path, stateful={"csv": keras.callbacks.CSVLogger("h.csv")})


def write_history(path, text):
    path.write_bytes(text.encode())


def logged_epochs(path):
    lines = path.read_text().splitlines()
    assert lines[0].startswith("epoch,")
    return [int(line.split(",")[0]) for line in lines[1:]]


def test_history_of_a_resumed_run_has_each_epoch_once(tmp_path):
    """Rows of the epoch a run resumes at and later (written before a kill took their
    backup) go, and so does a last row cut short; earlier rows stay as they are."""
    path = tmp_path / "history.csv"
    write_history(path, "epoch,loss\r\n0,5.0\r\n1,4.0\r\n2,3.0\r\n3,2.")
    tiny_model().fit(X, Y, epochs=4, initial_epoch=2, verbose=0,
                     callbacks=[ResumableCSVLogger(path)])
    lines = path.read_text().splitlines()
    assert lines[1:3] == ["0,5.0", "1,4.0"]
    assert logged_epochs(path) == [0, 1, 2, 3]

    # a new run (from epoch 0) starts a new history
    tiny_model().fit(X, Y, epochs=2, verbose=0, callbacks=[ResumableCSVLogger(path)])
    assert logged_epochs(path) == [0, 1]


def test_history_with_a_header_cut_short_starts_again(tmp_path):
    path = tmp_path / "history.csv"
    write_history(path, "epo")
    tiny_model().fit(X, Y, epochs=3, initial_epoch=1, verbose=0,
                     callbacks=[ResumableCSVLogger(path)])
    assert logged_epochs(path) == [1, 2]
