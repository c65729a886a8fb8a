"""TimeBudget's "stopped training" line comes from the chief alone: under a multi-worker
strategy a worker's own clock may stop it, but the chief's decision overrules it (every
worker trains as long as the chief), so the worker's line would be false."""

import itertools

import keras
import numpy as np

from kseg.training import TimeBudget, budget


def fit_with_a_clock_that_runs_an_hour_a_reading():
    readings = itertools.count()
    callback = TimeBudget(1, clock=lambda: 3600.0 * next(readings))
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.compile(optimizer="sgd", loss="mse")
    data = np.zeros((8, 2), "float32"), np.zeros((8, 1), "float32")
    model.fit(*data, batch_size=2, epochs=1, verbose=0, callbacks=[callback])
    return callback


def test_the_chief_says_why_the_budget_stopped_training(capsys):
    callback = fit_with_a_clock_that_runs_an_hour_a_reading()
    assert callback.stopped_after_batch == 0
    assert "time budget: stopped training in epoch 1 after batch 1" in capsys.readouterr().out


def test_another_worker_stops_quietly(monkeypatch, capsys):
    monkeypatch.setattr(budget, "is_chief", lambda distribution: False)
    callback = fit_with_a_clock_that_runs_an_hour_a_reading()
    # it still records why its own clock would have stopped it
    assert callback.stop_reason is not None and callback.stopped_after_batch == 0
    assert capsys.readouterr().out == ""
