"""Resumable training state that a ``kill -9`` at any moment cannot corrupt.

Keras' ``BackupAndRestore`` writes ``latest.weights.h5`` in place and the epoch counter to a
second file: a kill during the write leaves a truncated HDF5 file that crashes every later
start, and a kill between the two files pairs new weights with an old epoch. Keras'
``CSVLogger(append=True)`` writes a row before the backup of its epoch exists, so the epoch
re-run after a kill appears twice. The callbacks here keep the same semantics with one rule:
every piece of state is committed by one atomic rename of one file that holds all of it.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Mapping

import h5py
import keras

from kseg._files import atomic_output, remove_stale_temporaries
from kseg.errors import UnreadableFileError
from kseg.training.distribute import is_chief, strategy_of

# HDF5 attribute of the backup file holding {"epoch": ..., "batch": ...}
_BACKUP_RECORD = "kseg_backup"


class AtomicBackupAndRestore(keras.callbacks.BackupAndRestore):
    """``keras.callbacks.BackupAndRestore`` whose backup survives a kill at any moment.

    The weights (optimizer state included) and the epoch counter are written together into
    one HDF5 file, ``backup_dir/latest.weights.h5`` (the counter as an attribute), under a
    temporary name that is flushed to disk and renamed over the previous backup. A kill
    leaves either the previous complete backup or the new one, so the next ``fit`` resumes
    from the last finished epoch and loses at most the epoch in progress. Temporary files
    of killed writes are removed when training starts. Otherwise it behaves as Keras'
    callback: the same ``fit`` run again restores the weights and continues at the saved
    epoch; the backup folder is deleted when training finishes (``delete_checkpoint``).

    A backup written by Keras' own callback (weights plus ``training_metadata.json``) is
    still restored; a backup that cannot be read raises :class:`kseg.errors.UnreadableFileError`
    naming the file instead of a bare ``OSError`` from h5py.

    Callbacks with their own running state (a learning-rate schedule's patience count) can
    be backed up in the same file: pass them as ``stateful``; each needs ``resume_state()``
    returning a JSON-able dict and ``restore_state(state)``, as
    :class:`ResumableReduceLROnPlateau` has. List this callback after them, so their own
    ``on_train_begin`` resets them before the backup restores them.

    Under a multi-worker ``tf.distribute`` strategy only the chief writes (and deletes) the
    backup, and every worker restores the chief's, so ``backup_dir`` must be on storage all
    workers read (a shared file system, ``gs://``); the weights are the same on every worker,
    so one backup resumes them all.

    Args:
        backup_dir: folder of the backup, used by nothing else.
        save_freq: ``"epoch"``, or a number of batches (the backup then restarts the epoch
            in progress with the weights of its last saved batch, as in Keras).
        delete_checkpoint: delete the backup folder when training finishes.
        stateful: ``{name: callback}`` whose state is backed up with the weights.

    Example:
        >>> model.fit(train, epochs=50, callbacks=[
        ...     AtomicBackupAndRestore("runs/liver/backup")])  # doctest: +SKIP
    """

    def __init__(
        self,
        backup_dir,
        save_freq="epoch",
        delete_checkpoint: bool = True,
        *,
        stateful: Mapping[str, keras.callbacks.Callback] | None = None,
    ):
        super().__init__(
            os.fspath(backup_dir),
            save_freq=save_freq,
            double_checkpoint=False,
            delete_checkpoint=delete_checkpoint,
        )
        self.stateful = dict(stateful or {})
        self._writes = True
        for name, callback in self.stateful.items():
            if not (hasattr(callback, "resume_state") and hasattr(callback, "restore_state")):
                raise ValueError(
                    f"stateful[{name!r}] ({type(callback).__name__}) has no resume_state() "
                    "and restore_state(state)"
                )

    def on_train_begin(self, logs=None):
        self._writes = is_chief(strategy_of(self.model))
        if self._writes:
            remove_stale_temporaries(self._weights_path)
        self._load_model()

    def _read_record(self) -> dict:
        """``{"epoch": ..., "callbacks": {...}}`` of the backup."""
        path = self._weights_path
        try:
            with h5py.File(path, "r") as handle:
                raw = handle.attrs.get(_BACKUP_RECORD)
        except OSError as error:
            raise UnreadableFileError(
                path,
                f"is not a readable backup ({error}); delete {self.backup_dir} to train "
                "from epoch 0",
            ) from error
        if raw is not None:
            try:
                record = json.loads(raw)
                return {
                    "epoch": int(record["epoch"]),
                    "callbacks": dict(record.get("callbacks", {})),
                }
            except (ValueError, KeyError, TypeError) as error:
                raise UnreadableFileError(
                    path, f"holds no valid epoch record ({error!r}); delete {self.backup_dir}"
                ) from error
        # a backup written by keras.callbacks.BackupAndRestore
        if not os.path.exists(self._training_metadata_path):
            return {"epoch": 0, "callbacks": {}}
        try:
            with open(self._training_metadata_path) as handle:
                return {"epoch": int(json.load(handle)["epoch"]), "callbacks": {}}
        except (ValueError, KeyError, TypeError) as error:
            raise UnreadableFileError(
                self._training_metadata_path,
                f"is not Keras' backup metadata ({error!r}); delete {self.backup_dir}",
            ) from error

    def _load_model(self):
        if not self.model.built:
            raise ValueError(
                "To use the BackupAndRestore callback, the model must be built before "
                f"fit() is called; {self.model} is unbuilt. Build it by calling it on a batch."
            )
        if not os.path.exists(self._weights_path):
            return
        record = self._read_record()
        if self.model.optimizer is not None and not self.model.optimizer.built:
            # optimizer variables must exist to receive their saved values
            self.model.optimizer.build(self.model.trainable_variables)
        try:
            self.model.load_weights(self._weights_path)
        except (OSError, ValueError) as error:
            raise UnreadableFileError(
                self._weights_path,
                f"cannot be restored into this model ({error}); a backup only restores the "
                f"model and optimizer it was written from; delete {self.backup_dir} to train "
                "from epoch 0",
            ) from error
        for name, callback in self.stateful.items():
            if name in record["callbacks"]:
                callback.restore_state(record["callbacks"][name])
        self.model._initial_epoch = record["epoch"]

    def on_epoch_begin(self, epoch, logs=None):
        # Keras sets the epoch a backup records only at an epoch's end, so a backup every
        # few batches of a resumed fit's first epoch recorded epoch 0 (a new run)
        self._current_epoch = epoch
        self._last_batch_seen = 0

    def _save_model(self):
        if not self._writes:
            return
        os.makedirs(self.backup_dir, exist_ok=True)
        record = json.dumps(
            {
                "epoch": self._current_epoch,
                "batch": self._last_batch_seen,
                "callbacks": {
                    name: callback.resume_state() for name, callback in self.stateful.items()
                },
            }
        )
        with atomic_output(self._weights_path) as temporary:
            self.model.save_weights(temporary, overwrite=True)
            with h5py.File(temporary, "a") as handle:
                handle.attrs[_BACKUP_RECORD] = record

    def on_train_end(self, logs=None):
        if self._writes and self.delete_checkpoint and os.path.exists(self.backup_dir):
            # the weights first: a kill part-way through leaves no backup, never weights
            # whose epoch counter (Keras' training_metadata.json) is gone
            if os.path.exists(self._weights_path):
                os.remove(self._weights_path)
            super().on_train_end(logs)


class ResumableReduceLROnPlateau(keras.callbacks.ReduceLROnPlateau):
    """``keras.callbacks.ReduceLROnPlateau`` whose patience count survives a resume.

    The learning rate itself is an optimizer variable and comes back with any backup; the
    epochs waited without improvement, the best value and the cooldown count do not, so a
    run resumed after a crash would wait ``patience`` epochs afresh. Pass this callback to
    :class:`AtomicBackupAndRestore` as ``stateful`` and they are backed up with the weights.
    Arguments as for Keras' callback.

    An optimizer whose learning rate is a ``keras.optimizers.schedules`` schedule (or
    another callable) is refused when training begins: Keras lets no callback set it, so
    the first plateau would stop training with a ``TypeError``.
    """

    def on_train_begin(self, logs=None):
        optimizer = getattr(self.model, "optimizer", None)
        optimizer = getattr(optimizer, "inner_optimizer", optimizer)  # mixed precision
        rate = getattr(optimizer, "_learning_rate", None)
        if isinstance(rate, keras.optimizers.schedules.LearningRateSchedule) or (
            callable(rate) and not isinstance(rate, keras.Variable)
        ):
            raise ValueError(
                f"ResumableReduceLROnPlateau: the optimizer's learning rate follows "
                f"{type(rate).__name__}, which Keras lets no callback set, so the first "
                f"plateau of {self.monitor!r} would stop training; let the schedule alone "
                "set the rate (training_callbacks(..., reduce_lr_patience=None)), or "
                "compile with a float learning rate"
            )
        super().on_train_begin(logs)

    def resume_state(self) -> dict:
        return {
            "wait": int(self.wait),
            "best": float(self.best),
            "cooldown_counter": int(self.cooldown_counter),
        }

    def restore_state(self, state: Mapping) -> None:
        self.wait = int(state["wait"])
        self.best = float(state["best"])
        self.cooldown_counter = int(state["cooldown_counter"])


class ResumableCSVLogger(keras.callbacks.CSVLogger):
    """``keras.callbacks.CSVLogger`` appending to a history that a resumed run continues.

    When the first epoch of a ``fit`` begins (after ``BackupAndRestore`` has set the epoch a
    resumed run starts at), rows of that epoch and later ones, and a last row cut short by a
    kill, are dropped from the file (rewritten atomically), so every epoch appears once
    however often training was killed and resumed. A ``fit`` starting at epoch 0 is a new
    run and starts a new history.

    Under a multi-worker ``tf.distribute`` strategy only the chief writes the file.

    Args:
        filename: the CSV file.
        separator: column separator.
    """

    def __init__(self, filename, separator: str = ","):
        super().__init__(os.fspath(filename), separator=separator, append=True)
        self._opened = False
        self._writes = True
        self._header = None

    def on_epoch_end(self, epoch, logs=None):
        if self._writes:
            if self.keys is None and self._header:
                self._follow_header(logs or {})
            super().on_epoch_end(epoch, logs)

    def _follow_header(self, logs) -> None:
        """Write a resumed run's rows under the columns of the file it continues.

        Keras' logger orders a row by the sorted keys of its first epoch, so a resumed
        ``fit`` whose logs gained or lost a key (a time budget added on resume) wrote values
        under other columns' names. Keys the file lacks are added as columns (``NA`` in the
        earlier rows, rewritten atomically); keys the logs lack are written ``NA``."""
        columns = self._header[1:]
        new = sorted(set(logs) - set(columns))
        if new:
            self.csv_file.close()
            with open(self.filename, newline="") as handle:
                rows = list(csv.reader(handle, delimiter=self.sep))
            with (
                atomic_output(self.filename) as temporary,
                open(temporary, "w", newline="") as handle,
            ):
                writer = csv.writer(handle, delimiter=self.sep)
                writer.writerow(self._header + new)
                writer.writerows(row + ["NA"] * len(new) for row in rows[1:])
            self.csv_file = open(self.filename, "a", newline="")  # noqa: SIM115
            self.append_header = False
        self.keys = columns + new

    def on_train_end(self, logs=None):
        if self._writes:
            super().on_train_end(logs)

    def on_train_begin(self, logs=None):
        self._writes = is_chief(strategy_of(self.model))
        if self._writes:
            remove_stale_temporaries(self.filename)
        self._opened = False

    def on_epoch_begin(self, epoch, logs=None):
        if self._writes and not self._opened:
            self._drop_rows_from(epoch)
            self._header = self._read_header()
            super().on_train_begin()
            self._opened = True

    def _read_header(self) -> list[str] | None:
        """The columns of the history this ``fit`` appends to, or ``None`` for a new one."""
        if not os.path.exists(self.filename):
            return None
        with open(self.filename, newline="") as handle:
            header = next(csv.reader(handle, delimiter=self.sep), None)
        return header or None

    def _drop_rows_from(self, epoch: int) -> None:
        if not os.path.exists(self.filename):
            return
        with open(self.filename, newline="") as handle:
            lines = handle.read().splitlines(keepends=True)
        complete = [line for line in lines if line.endswith("\n")]
        kept = complete[:1]
        for line in complete[1:]:
            fields = next(csv.reader([line], delimiter=self.sep), [])
            try:
                if fields and int(fields[0]) < epoch:
                    kept.append(line)
            except ValueError as error:
                raise UnreadableFileError(
                    self.filename, f"has a row whose epoch is not a number: {line!r}"
                ) from error
        if len(kept) <= 1:  # no rows left: the next row writes a fresh header
            os.remove(self.filename)
            return
        if kept == lines:
            return
        with atomic_output(self.filename) as temporary, open(temporary, "w", newline="") as handle:
            handle.writelines(kept)
