"""TimeBudget: training stops in the batch after which one more batch and the end-of-epoch
validation would pass the budget; the best model stays the one its score was measured on;
a resumed run keeps the budget of the whole run.

Time is simulated: a fake clock is given to the callback, and callbacks listed before it
advance that clock by a set duration for every training batch, for Keras' validation and
for the whole-volume validation. The expected stopping batches are worked out by hand in
each test from those durations, never read from the callback.
"""

import json
import zipfile

import keras
import numpy as np
import pytest

from kseg.training import TimeBudget, VolumeValidation, training_callbacks

SIZE = 16


class FakeClock:
    def __init__(self, start=0.0):
        self.now = float(start)

    def __call__(self):
        return self.now

    def advance(self, seconds):
        self.now += seconds


class SimulatedWork(keras.callbacks.Callback):
    """Listed first: a training batch costs ``batch_seconds(epoch, batch)``, Keras'
    validation ``keras_validation_seconds``."""

    def __init__(self, clock, batch_seconds, keras_validation_seconds):
        super().__init__()
        self.clock = clock
        self.batch_seconds = batch_seconds
        self.keras_validation_seconds = keras_validation_seconds
        self.batches = []  # (epoch, batch) of every batch trained

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        self.clock.advance(self.batch_seconds(self.epoch, batch))
        self.batches.append((self.epoch, batch))

    def on_test_end(self, logs=None):
        self.clock.advance(self.keras_validation_seconds)


class SlowVolumeValidation(VolumeValidation):
    """Whole-volume validation that takes ``seconds`` on the fake clock."""

    def __init__(self, volumes, clock, seconds):
        super().__init__(volumes)
        self.clock = clock
        self.seconds = seconds

    def on_epoch_end(self, epoch, logs=None):
        super().on_epoch_end(epoch, logs)
        self.clock.advance(self.seconds)


class Crash(keras.callbacks.Callback):
    def __init__(self, at_epoch):
        super().__init__()
        self.at_epoch = at_epoch

    def on_epoch_begin(self, epoch, logs=None):
        if epoch == self.at_epoch:
            raise RuntimeError("simulated crash")


def tiny_model():
    """45 parameters on 16 x 16 images."""
    keras.utils.set_random_seed(0)
    inputs = keras.Input((SIZE, SIZE, 1))
    hidden = keras.layers.Conv2D(4, 3, padding="same", activation="relu")(inputs)
    model = keras.Model(inputs, keras.layers.Conv2D(1, 1, activation="sigmoid")(hidden))
    model.compile(optimizer=keras.optimizers.Adam(0.05), loss="binary_crossentropy")
    return model


def images(count, seed):
    rng = np.random.default_rng(seed)
    image = rng.normal(size=(count, SIZE, SIZE, 1)).astype(np.float32)
    label = (image[..., 0] + 0.3 * rng.normal(size=(count, SIZE, SIZE)) > 0.2).astype(np.uint8)
    return image, label


def validation_volumes():
    """Two radiograph-like one-slice volumes, predicted slice-wise by the 2D model."""
    image, label = images(2, seed=1)
    return [(f"v{i}", image[i : i + 1], label[i : i + 1], None) for i in range(2)]


def fit(model, callbacks, *, steps, epochs=10, batch_size=2):
    image, label = images(steps * batch_size, seed=0)
    check_image, check_label = images(2, seed=2)
    return model.fit(
        image, label[..., None], batch_size=batch_size, epochs=epochs, verbose=0,
        shuffle=False, validation_data=(check_image, check_label[..., None]),
        callbacks=callbacks,
    )


def budgeted_run(tmp_path, clock, *, minutes, batch_seconds, keras_validation, volume_validation):
    work = SimulatedWork(clock, batch_seconds, keras_validation)
    callbacks = training_callbacks(
        tmp_path, SlowVolumeValidation(validation_volumes(), clock, volume_validation),
        max_minutes=minutes, clock=clock,
    )
    budget = next(callback for callback in callbacks if isinstance(callback, TimeBudget))
    return work, [work, *callbacks], budget


def numpy_dice(truth, prediction):
    return 2 * np.sum(truth & prediction) / (truth.sum() + prediction.sum())


def test_stops_mid_epoch_before_the_batch_that_would_overrun(tmp_path, capsys):
    clock = FakeClock(start=1000.0)
    work, callbacks, budget = budgeted_run(
        tmp_path, clock, minutes=1, batch_seconds=lambda epoch, batch: 1.0,
        keras_validation=4.0, volume_validation=6.0,
    )
    history = fit(tiny_model(), callbacks, steps=30)

    # epoch 1: 30 batches of 1 s, then 4 + 6 s of validation: 40 s used. 40 + 1 + 10 <= 60,
    # so epoch 2 starts. Its batch k ends at 40 + k s; after batch 10 (50 s) one more batch
    # and the validation would end at 61 s: training stops there and validates, at 60 s.
    assert work.batches[-1] == (1, 9)
    assert len(work.batches) == 40
    assert (budget.stopped_epoch, budget.stopped_after_batch) == (1, 9)
    assert budget.last_finished_epoch == 0
    assert budget.used_seconds == pytest.approx(60.0)
    assert "would pass the budget" in budget.stop_reason
    np.testing.assert_allclose(history.history["time_budget_used_minutes"], [40 / 60, 1.0])

    printed = [line for line in capsys.readouterr().out.splitlines() if "time budget" in line]
    assert printed == [
        "time budget: stopped training in epoch 2 after batch 10 (validated and checkpointed "
        "as trained so far): one more batch (~1 s) and the end-of-epoch validation (~10 s) "
        "would pass the budget of 1 min; 1.00 min used; last finished epoch 1 (epochs "
        "counted from 1)"
    ]
    # the budget ends the run as EarlyStopping does: no backup to resume from
    assert not (tmp_path / "backup").exists()
    rows = (tmp_path / "history.csv").read_text().splitlines()
    assert len(rows) == 3  # a header, the finished epoch and the validated partial one


def test_the_best_model_file_holds_the_model_its_score_was_measured_on(tmp_path):
    clock = FakeClock()
    _, callbacks, budget = budgeted_run(
        tmp_path, clock, minutes=1, batch_seconds=lambda epoch, batch: 1.0,
        keras_validation=4.0, volume_validation=6.0,
    )
    history = fit(tiny_model(), callbacks, steps=30)
    assert budget.stopped_after_batch is not None

    scores = history.history["val_volume_dice"]
    with zipfile.ZipFile(tmp_path / "best.keras") as archive:
        record = json.loads(archive.read("kseg_checkpoint.json"))
    assert record["epoch"] == int(np.argmax(scores))
    assert record["best"] == pytest.approx(max(scores))
    assert json.loads((tmp_path / "best.keras.json").read_text()) == record

    best = keras.saving.load_model(tmp_path / "best.keras")
    dice = [
        numpy_dice(label[0].astype(bool), best.predict(image, verbose=0)[0, ..., 0] >= 0.5)
        for _, image, label, _ in validation_volumes()
    ]
    assert np.mean(dice) == pytest.approx(record["best"], rel=1e-6)


def test_uneven_batches_overrun_by_less_than_one_batch(tmp_path):
    durations = np.random.default_rng(5).uniform(0.5, 2.0, size=(10, 25))
    clock = FakeClock()
    work, callbacks, budget = budgeted_run(
        tmp_path, clock, minutes=1.5,
        batch_seconds=lambda epoch, batch: float(durations[epoch, batch]),
        keras_validation=3.0, volume_validation=5.0,
    )
    fit(tiny_model(), callbacks, steps=25)
    assert budget.stopped_epoch is not None
    # it stops when its estimate of one batch (at most 2 s) and the 8 s validation would
    # overrun, so it uses more than the budget less one batch; it overruns only by what a
    # batch takes beyond the longest of the last ten
    assert 90.0 - 2.0 < budget.used_seconds <= 90.0 + 2.0
    assert budget.used_seconds == pytest.approx(clock.now)
    trained = sum(durations[epoch, batch] for epoch, batch in work.batches)
    epochs_validated = budget.stopped_epoch + 1
    assert clock.now == pytest.approx(trained + 8.0 * epochs_validated)


def test_stops_after_an_epoch_when_the_next_one_would_not_fit(tmp_path):
    clock = FakeClock()
    work, callbacks, budget = budgeted_run(
        tmp_path, clock, minutes=0.5, batch_seconds=lambda epoch, batch: 1.0,
        keras_validation=4.0, volume_validation=6.0,
    )
    fit(tiny_model(), callbacks, steps=10)
    # epoch 1 ends at 10 + 10 = 20 s; a batch of epoch 2 and its validation would end at 31
    assert work.batches[-1] == (0, 9)
    assert (budget.stopped_epoch, budget.stopped_after_batch) == (0, None)
    assert budget.last_finished_epoch == 0
    assert budget.used_seconds == pytest.approx(20.0)
    assert "another epoch's first batch" in budget.stop_reason


def test_a_resumed_run_keeps_the_budget_of_the_whole_run(tmp_path):
    def batch_seconds(epoch, batch):
        return 1.0

    first_clock = FakeClock()
    _, callbacks, _ = budgeted_run(
        tmp_path, first_clock, minutes=85 / 60, batch_seconds=batch_seconds,
        keras_validation=4.0, volume_validation=6.0,
    )
    with pytest.raises(RuntimeError, match="simulated crash"):
        fit(tiny_model(), [*callbacks, Crash(at_epoch=2)], steps=20)
    # two epochs of 20 + 10 s were backed up: 60 s of the 85 s used

    second_clock = FakeClock(start=5000.0)  # a new process: its clock has its own origin
    work, callbacks, budget = budgeted_run(
        tmp_path, second_clock, minutes=85 / 60, batch_seconds=batch_seconds,
        keras_validation=4.0, volume_validation=6.0,
    )
    fit(tiny_model(), callbacks, steps=20)
    # epoch 3 resumes at 60 s; after its batch 15 (75 s) one more batch and the 10 s
    # validation would end at 86 s; with a budget per process it would not stop at all
    assert work.batches[0] == (2, 0) and work.batches[-1] == (2, 14)
    assert (budget.stopped_epoch, budget.stopped_after_batch) == (2, 14)
    assert budget.last_finished_epoch == 1
    assert budget.used_seconds == pytest.approx(85.0)


@pytest.mark.parametrize("minutes", [0, -1, float("nan"), float("inf"), True, "20", None])
def test_a_budget_that_is_not_a_positive_number_is_refused(minutes):
    with pytest.raises(ValueError, match="minutes must be a positive, finite number"):
        TimeBudget(minutes)


@pytest.mark.parametrize("max_minutes", [0, -2.5, float("inf")])
def test_training_callbacks_refuse_a_bad_max_minutes_before_creating_anything(
    max_minutes, tmp_path
):
    with pytest.raises(ValueError, match=r"^max_minutes must be a positive"):
        training_callbacks(tmp_path / "run", None, monitor="val_dice", max_minutes=max_minutes)
    assert not (tmp_path / "run").exists()


def test_a_clock_that_cannot_be_called_is_refused():
    with pytest.raises(TypeError, match="clock must be callable"):
        TimeBudget(5, clock=12.0)


def test_an_epoch_of_unknown_length_is_learnt_from_the_first(tmp_path):
    import tensorflow as tf

    image, label = images(20, seed=0)
    # filter hides the length from Keras: params["steps"] is None
    train = tf.data.Dataset.from_tensor_slices((image, label[..., None])).filter(
        lambda *example: True
    ).batch(2)
    check_image, check_label = images(2, seed=2)
    clock = FakeClock()
    work, callbacks, budget = budgeted_run(
        tmp_path, clock, minutes=1, batch_seconds=lambda epoch, batch: 1.0,
        keras_validation=4.0, volume_validation=6.0,
    )
    tiny_model().fit(train, epochs=10, verbose=0, callbacks=callbacks,
                     validation_data=(check_image, check_label[..., None]))
    # epochs of 10 batches and 10 s of validation end at 20, 40 and 60 s; in the third, one
    # more batch and the validation would pass 60 s only after its 10th batch, the last:
    # that is the end of the epoch, not a stop in the middle of it
    assert work.batches[-1] == (2, 9)
    assert (budget.stopped_epoch, budget.stopped_after_batch) == (2, None)
    assert budget.last_finished_epoch == 2
    assert budget.used_seconds == pytest.approx(60.0)
