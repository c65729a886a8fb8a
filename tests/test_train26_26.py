"""Session 26 findings in training, models, tuning, plan and tracking, each against an
independent reference (the epochs Keras runs, numpy formulas, hand-worked cases)."""

import json

import h5py
import keras
import numpy as np

from kseg.training import AtomicBackupAndRestore

X = np.linspace(-1, 1, 8, dtype=np.float32).reshape(8, 1)
Y = 3 * X


def _tiny_model():
    model = keras.Sequential([keras.Input((1,)), keras.layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.Adam(0.05), loss="mse")
    return model


class _CrashAfterBatch(keras.callbacks.Callback):
    """Raises after batch ``batch`` of epoch ``epoch`` (a kill mid-epoch)."""

    def __init__(self, epoch, batch):
        super().__init__()
        self.epoch, self.batch, self.current = epoch, batch, None

    def on_epoch_begin(self, epoch, logs=None):
        self.current = epoch

    def on_train_batch_end(self, batch, logs=None):
        if (self.current, batch) == (self.epoch, self.batch):
            raise RuntimeError("simulated kill")


class _Epochs(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.seen = []

    def on_epoch_begin(self, epoch, logs=None):
        self.seen.append(epoch)


def _fit(backup_dir, *extra):
    epochs = _Epochs()
    try:
        _tiny_model().fit(
            X, Y, batch_size=2, epochs=4, verbose=0,
            callbacks=[AtomicBackupAndRestore(backup_dir, save_freq=2), epochs, *extra],
        )  # fmt: skip
    except RuntimeError:
        pass
    return epochs.seen


def test_a_resumed_run_backed_up_every_few_batches_is_not_sent_back_to_epoch_0(tmp_path):
    # 4 batches per epoch, a backup every 2. The first process is killed early in epoch 2;
    # the second (a new callback, as after a restart) resumes in epoch 1 and is killed
    # after its mid-epoch backup: that backup recorded epoch 0 (the callback's counter
    # was only set at an epoch's end), so the third process trained from epoch 0 again
    # (history.csv emptied, the best model's record forgotten).
    backup = tmp_path / "backup"
    assert _fit(backup, _CrashAfterBatch(2, 0)) == [0, 1, 2]
    assert _fit(backup, _CrashAfterBatch(1, 2)) == [1]  # resumed in epoch 1, killed again
    with h5py.File(backup / "latest.weights.h5") as handle:
        assert json.loads(handle.attrs["kseg_backup"])["epoch"] == 1
    assert _fit(backup) == [1, 2, 3]
