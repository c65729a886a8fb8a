"""Session 24 hunt: tuning, tracking, plan, splits and models, each against a reference."""

import math

import keras
import numpy as np
import pytest

from kseg import models
from kseg.training import TimeBudget, VolumeValidation


def _diverged_validation():
    """A tiny U-Net and a VolumeValidation over one volume with a foreground cube."""
    model = models.build("unet", input_shape=(8, 8, 1), depth=1, base_filters=2)
    label = np.zeros((4, 8, 8), np.uint8)
    label[:, 2:5, 2:5] = 1
    image = np.random.default_rng(0).random((4, 8, 8, 1)).astype(np.float32)
    validation = VolumeValidation(
        [("p1", image, label, (1.0, 1.0, 1.0))], log_per_patient=True
    )
    validation.set_model(model)
    return model, validation


def test_a_diverged_model_logs_nan_volume_scores_instead_of_ending_fit():
    # Keras logs a NaN val_loss and goes on; Keras Tuner then scores a trial by its best
    # finite epoch. VolumeValidation raised a ValueError from on_epoch_end instead, which
    # ended model.fit and, in a search, turned a trial with good earlier epochs into a
    # failed one (three such trials in a row abort the whole search).
    model, validation = _diverged_validation()
    logs = {}
    validation.on_epoch_end(0, logs)
    assert math.isfinite(logs["val_volume_dice"])
    for weight in model.weights:  # what a diverged optimiser leaves
        weight.assign(np.full(weight.shape, np.nan, weight.dtype))
    logs = {"val_dice": 0.5}
    with pytest.warns(RuntimeWarning, match="epoch 2.*'p1'"):
        validation.on_epoch_end(1, logs)
    assert set(logs) == {"val_dice", "val_volume_dice", "val_volume_dice/p1",
                         "val_patch_volume_gap"}
    assert all(math.isnan(logs[key]) for key in logs if key != "val_dice")
    # called directly, evaluate still refuses to score NaN as background
    with pytest.raises(ValueError, match="'p1'.*NaN"):
        validation.evaluate()


class _BatchIndices(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.ends = []

    def on_train_batch_end(self, batch, logs=None):
        self.ends.append(batch)


def test_time_budget_counts_batches_not_executions_with_steps_per_execution():
    # compile(steps_per_execution=2), as SegmentationHyperModel's compile_kwargs allow:
    # Keras calls the batch hooks once per 2 batches, with the index of the last one. The
    # budget counted calls, never saw the epoch's last batch, and reported an epoch that
    # ran all 4 of its batches as stopped mid-epoch, with no finished epoch.
    ticks = iter(range(1, 10_000))
    budget = TimeBudget(6 / 60, clock=lambda: float(next(ticks)), verbose=False)
    indices = _BatchIndices()
    model = keras.Sequential([keras.Input((1,)), keras.layers.Dense(1)])
    model.compile("sgd", "mse", steps_per_execution=2)
    history = model.fit(np.zeros((8, 1)), np.zeros((8, 1)), batch_size=2, epochs=3,
                        verbose=0, callbacks=[indices, budget])
    assert history.epoch == [0] and indices.ends == [1, 3]  # 4 batches = the whole epoch
    assert budget.stopped_epoch == 0
    assert budget.stopped_after_batch is None  # stopped at the epoch's end
    assert budget.last_finished_epoch == 0


def test_fixmatch_moves_a_per_voxel_weight_map_with_the_weakly_augmented_mask():
    # U-Net border weights (B, H, W) with a voxel-wise Keras loss: the weak view flipped
    # image and mask but left the weights in place, so the loss weighted the wrong voxels
    # (AugmentedModel moves them along; FixMatch's labeled batch must too).
    import tensorflow as tf

    from kseg.augment import RandomAxisFlip
    from kseg.training import FixMatch

    inputs = keras.Input((8, 8, 1))
    logits = keras.layers.Conv2D(
        1, 1, kernel_initializer="zeros", bias_initializer=keras.initializers.Constant(2.0)
    )(inputs)
    student = keras.Model(inputs, logits)
    model = FixMatch(student, weak=RandomAxisFlip(2, axes=[1], probability=1.0), strong=None)
    model.compile(
        keras.optimizers.SGD(0.0),
        loss=keras.losses.BinaryCrossentropy(from_logits=True),
    )
    image = np.zeros((1, 8, 8, 1), np.float32)
    mask = np.zeros((1, 8, 8, 1), np.float32)
    mask[:, :, :3] = 1  # foreground in the first 3 columns
    weight = mask[..., 0].copy()  # weight 1 on the foreground voxels only
    labeled = tf.data.Dataset.from_tensors((image, mask, weight))
    unlabeled = tf.data.Dataset.from_tensors(image)
    history = model.fit(tf.data.Dataset.zip((labeled, unlabeled)), epochs=1, verbose=0)
    # the flip keeps every weighted voxel on the foreground: each costs softplus(-2)
    expected = weight.sum() * np.log1p(np.exp(-2.0)) / weight.size
    assert history.history["supervised_loss"][0] == pytest.approx(expected, rel=1e-5)


def test_volume_validation_of_a_logits_model_is_not_thresholded_at_logit_one_half():
    # A logits model (SegmentationHyperModel(model_kwargs={"activation": None}), the
    # network of MeanTeacher / FixMatch) under VolumeValidation: its logits were
    # thresholded at 0.5 as if probabilities, silently scoring Dice 0 here.
    def constant_logit_model(value):
        inputs = keras.Input((8, 8, 1))
        logits = keras.layers.Conv2D(
            1, 1, kernel_initializer="zeros", bias_initializer=keras.initializers.Constant(value)
        )(inputs)
        return keras.Model(inputs, logits)

    label = np.zeros((4, 8, 8), np.uint8)
    label[:, 2:5, 2:5] = 1
    volume = ("p1", np.zeros((4, 8, 8, 1), np.float32), label, (1.0, 1.0, 1.0))

    # logits outside [0, 1] cannot be probabilities: refused, naming the argument
    plain = VolumeValidation([volume])
    plain.set_model(constant_logit_model(-2.0))
    with pytest.raises(ValueError, match="from_logits=True"):
        plain.on_epoch_end(0, {})

    validation = VolumeValidation([volume], from_logits=True)
    validation.set_model(constant_logit_model(0.3))
    logs = {}
    validation.on_epoch_end(0, logs)
    # sigmoid(0.3) = 0.574 >= 0.5: every voxel is foreground
    expected = 2 * label.sum() / (label.sum() + label.size)
    assert logs["val_volume_dice"] == pytest.approx(expected)


def test_strata_read_back_from_json_stratify_as_the_tuples_they_were():
    # (sex, empty-fraction bin) strata saved to JSON come back as lists: assign_folds
    # raised a bare "TypeError: unhashable type: 'list'". A list now counts as its tuple,
    # and a stratum that cannot group patients is a ValueError naming the patient.
    import json

    from kseg.data.splits import assign_folds

    patients = [f"P{number:02d}" for number in range(12)]
    strata = {patient: ("F" if k % 3 else "M", k % 2) for k, patient in enumerate(patients)}
    from_json = json.loads(json.dumps(strata))
    assert all(isinstance(value, list) for value in from_json.values())
    assert assign_folds(patients, 3, seed=4, strata=from_json) == assign_folds(
        patients, 3, seed=4, strata=strata
    )
    with pytest.raises(ValueError, match="'P00'.*dict"):
        assign_folds(patients, 3, strata={**strata, "P00": {"sex": "M"}})
