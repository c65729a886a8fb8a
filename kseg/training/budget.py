"""A training time budget that the run keeps, stopping mid-epoch when it must.

Stopping "after the epoch that overran" can overshoot a budget by a whole epoch and its
validation. :class:`TimeBudget` measures what training costs as it goes (each batch, and
the pause between an epoch's last batch and the next epoch's first one, in which Keras
validates, :class:`kseg.training.VolumeValidation` scores whole volumes and the best model
and the backup are written) and stops as soon as one more batch followed by that
end-of-epoch work would pass the budget.
"""

from __future__ import annotations

import collections
import math
import numbers
import time
from collections.abc import Callable, Mapping

import keras

from kseg.training.distribute import is_chief, strategy_of

# batch durations the next batch is estimated from (the longest of them): long enough to
# remember a slow batch (the first of an epoch fills the shuffle buffer), short enough to
# forget the first batch of a fit, which traces the training step
_RECENT_BATCHES = 10


def _checked_minutes(minutes, name: str) -> float:
    if (
        isinstance(minutes, bool)
        or not isinstance(minutes, numbers.Real)  # numpy numbers too
        or not math.isfinite(minutes)
        or minutes <= 0
    ):
        raise ValueError(
            f"{name} must be a positive, finite number of minutes (None for no budget), "
            f"got {minutes!r}"
        )
    return float(minutes)


class TimeBudget(keras.callbacks.Callback):
    """Stop training before it runs past ``minutes`` of wall-clock time.

    After every training batch the callback predicts when one more batch and the
    end-of-epoch work after it would finish; if that passes the budget, it sets
    ``model.stop_training`` now, so the epoch ends after this batch. At every epoch end it
    makes the same prediction for the next epoch's first batch and ends training after this
    epoch when it does not fit. The estimates are:

    - one batch: the longest of the last 10 batches, each measured from the end of the
      batch before it (so the other callbacks' per-batch work counts too);
    - end-of-epoch work: the longest pause measured so far between an epoch's last batch
      and the next epoch's first (Keras' validation, ``VolumeValidation``, saving the best
      model and the backup, logging, starting the next epoch); in the first epoch, before
      any pause has been measured, the part of the pause that has already happened when
      this callback's ``on_epoch_end`` runs. List it after ``VolumeValidation`` and the
      checkpoint, as :func:`kseg.training.training_callbacks` does, so that part holds them.

    The longest, not the mean, so a slow batch or a validation that runs only every few
    epochs is not under-estimated: the run may stop a little early, and overruns the budget
    only by what a batch or a validation takes beyond the longest seen so far. Until the
    first epoch has ended, the end-of-epoch work is unknown and counted as zero: a budget
    that ends inside the first epoch can be overrun by one validation pass. For a dataset
    of unknown length (a ``tf.data`` pipeline whose cardinality Keras cannot tell), the
    number of batches per epoch is learnt from the first epoch; until then a stop after what
    turns out to be the epoch's last batch is reported as a mid-epoch stop.

    **The interrupted epoch.** After a mid-epoch stop Keras still validates and calls every
    ``on_epoch_end``; the budget has kept time for that. So the partial epoch is validated
    and logged like any other (its training metrics cover the batches it ran), and
    :class:`kseg.training.BestModelCheckpoint` keeps its model only if that finished
    validation beats the best: the best model file always holds the weights its score was
    measured on. Training then ends as after ``EarlyStopping``: the backup of
    :class:`kseg.training.AtomicBackupAndRestore` is deleted, and running the same ``fit``
    again starts a new run.

    **Resumed runs.** The budget covers the whole run, not each process: given to
    ``AtomicBackupAndRestore`` as ``stateful`` (``training_callbacks`` does), the time used
    and the estimates are saved with every backup, and a run resumed after a kill continues
    with the budget left at its last backup. The time of the epoch a kill cut short is not
    charged, because its work is lost and done again. Used alone, each ``fit`` has the
    whole budget. Keras checks ``stop_training`` only after a batch, so a ``fit`` always
    trains at least one batch and validates it, even when resumed with its budget spent.

    When the budget stops training, one line is printed (by the chief alone under a
    multi-worker strategy: the chief's budget decides for every worker, see
    :func:`kseg.training.training_callbacks`) and the attributes below say why.
    Every epoch's logs get ``time_budget_used_minutes``, the minutes the run has used, so
    ``history.csv`` records the budget as it was spent.

    Args:
        minutes: the budget, a positive finite number of minutes.
        clock: seconds as a float, only differences used (``time.monotonic``: wall-clock
            time that system clock changes do not move).
        verbose: print the line saying why training stopped.

    Attributes:
        budget_seconds: the budget in seconds.
        used_seconds: seconds of the run used so far (earlier processes of a resumed run
            included); after training, the total.
        stop_reason: why the budget stopped training, or ``None`` while it has not.
        stopped_epoch: the 0-based epoch in which it stopped training, or ``None``.
        stopped_after_batch: the 0-based batch after which it stopped, or ``None`` when it
            stopped at an epoch's end (or not at all).
        last_finished_epoch: the last 0-based epoch that trained all its batches (``None``
            when the budget ended the first one).

    Raises:
        ValueError: ``minutes`` is not a positive finite number.
        TypeError: ``clock`` is not callable.

    Example:
        >>> model.fit(train, validation_data=val, epochs=100, callbacks=[
        ...     VolumeValidation.from_slices(val_slices, preprocess=prep),
        ...     BestModelCheckpoint("run/best.keras"),
        ...     TimeBudget(20)])  # doctest: +SKIP
    """

    def __init__(
        self, minutes: float, *, clock: Callable[[], float] = time.monotonic, verbose=True
    ):
        super().__init__()
        self.minutes = _checked_minutes(minutes, "minutes")
        if not callable(clock):
            raise TypeError(f"clock must be callable (such as time.monotonic), got {clock!r}")
        self.budget_seconds = 60.0 * self.minutes
        self.clock = clock
        self.verbose = verbose
        self._reset()

    def _reset(self) -> None:
        self._used_before = 0.0  # seconds used by earlier processes of a resumed run
        self._fit_started = None
        self._batch_seconds = collections.deque(maxlen=_RECENT_BATCHES)
        self._end_of_epoch_seconds = None  # longest measured pause between epochs
        self._last_batch_end = None
        self._epoch = 0
        self._epoch_batches = 0
        self._epoch_length = None  # batches per epoch, when Keras or a full epoch told it
        self._final_seconds = None
        self.stop_reason = None
        self.stopped_epoch = None
        self.stopped_after_batch = None
        self.last_finished_epoch = None

    @property
    def used_seconds(self) -> float:
        if self._final_seconds is not None:
            return self._final_seconds
        if self._fit_started is None:
            return self._used_before
        return self._used_before + self.clock() - self._fit_started

    # --- state saved with the backup of AtomicBackupAndRestore ---------------------------

    def resume_state(self) -> dict:
        return {
            "used_seconds": float(self.used_seconds),
            "batch_seconds": [float(seconds) for seconds in self._batch_seconds],
            "end_of_epoch_seconds": self._end_of_epoch_seconds,
        }

    def restore_state(self, state: Mapping) -> None:
        # the clock restarts at this process' fit: what earlier processes used is added
        self._used_before = float(state["used_seconds"])
        self._batch_seconds.extend(float(seconds) for seconds in state["batch_seconds"])
        end_of_epoch = state["end_of_epoch_seconds"]
        self._end_of_epoch_seconds = None if end_of_epoch is None else float(end_of_epoch)

    # --- Keras hooks ----------------------------------------------------------------------

    def on_train_begin(self, logs=None):
        self._reset()
        self._fit_started = self.clock()
        # None for a tf.data dataset of unknown length: then learnt from the first epoch
        self._epoch_length = (self.params or {}).get("steps")

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch
        self._epoch_batches = 0
        if self.last_finished_epoch is None and epoch > 0:  # a resumed run's earlier epochs
            self.last_finished_epoch = epoch - 1

    def on_train_batch_begin(self, batch, logs=None):
        now = self.clock()
        if self._epoch_batches == 0:
            if self._last_batch_end is not None:  # the pause since the last epoch's batch
                self._end_of_epoch_seconds = max(
                    self._end_of_epoch_seconds or 0.0, now - self._last_batch_end
                )
            self._last_batch_end = now  # the first batch of an epoch is timed from here

    def on_train_batch_end(self, batch, logs=None):
        now = self.clock()
        self._batch_seconds.append(now - self._last_batch_end)
        self._last_batch_end = now
        # the index of the execution's last batch: with compile(steps_per_execution=n)
        # Keras calls this hook once per n batches
        self._epoch_batches = batch + 1
        if self._epoch_length is not None and self._epoch_batches >= self._epoch_length:
            return  # the epoch's last batch: on_epoch_end decides about the next epoch
        next_batch = max(self._batch_seconds)
        end_of_epoch = self._end_of_epoch_seconds or 0.0
        if self.used_seconds + next_batch + end_of_epoch > self.budget_seconds:
            self._stop(
                self._epoch, batch,
                f"one more batch (~{next_batch:.3g} s) and the end-of-epoch validation "
                f"(~{end_of_epoch:.3g} s) would pass the budget",
            )

    def on_epoch_end(self, epoch, logs=None):
        if self.stopped_epoch is None:
            self.last_finished_epoch = epoch
            if self._epoch_length is None:
                self._epoch_length = self._epoch_batches
            pause_so_far = self.clock() - self._last_batch_end
            end_of_epoch = max(self._end_of_epoch_seconds or 0.0, pause_so_far)
            rest_of_pause = end_of_epoch - pause_so_far
            next_batch = max(self._batch_seconds, default=0.0)
            if self.used_seconds + rest_of_pause + next_batch + end_of_epoch > self.budget_seconds:
                self._stop(
                    epoch, None,
                    f"another epoch's first batch (~{next_batch:.3g} s) and its end-of-epoch "
                    f"validation (~{end_of_epoch:.3g} s) would pass the budget",
                )
        if logs is not None:
            logs["time_budget_used_minutes"] = self.used_seconds / 60.0

    def _stop(self, epoch: int, batch: int | None, reason: str) -> None:
        self.model.stop_training = True
        self.stop_reason = reason
        self.stopped_epoch = epoch
        self.stopped_after_batch = batch

    def on_train_end(self, logs=None):
        self._final_seconds = self.used_seconds
        if self.stop_reason is None or not self.verbose:
            return
        if not is_chief(strategy_of(self.model)):  # its own clock may have been overruled
            return
        print(self.summary(), flush=True)

    def summary(self) -> str:
        """One line: where and why the budget stopped training, and the time used."""
        if self.stop_reason is None:
            return f"time budget: {self.used_seconds / 60:.2f} of {self.minutes:g} min used"
        where = f"after epoch {self.stopped_epoch + 1}"
        if self.stopped_after_batch is not None:
            where = (
                f"in epoch {self.stopped_epoch + 1} after batch {self.stopped_after_batch + 1}"
                " (validated and checkpointed as trained so far)"
            )
        finished = (
            "no epoch finished" if self.last_finished_epoch is None
            else f"last finished epoch {self.last_finished_epoch + 1}"
        )
        return (
            f"time budget: stopped training {where}: {self.stop_reason} of "
            f"{self.minutes:g} min; {self.used_seconds / 60:.2f} min used; {finished} "
            "(epochs counted from 1)"
        )
