"""Session 26 findings in training, models, tuning, plan and tracking, each against an
independent reference (the epochs Keras runs, numpy formulas, hand-worked cases)."""

import json

import h5py
import keras
import numpy as np
from test_resume import X, Y, tiny_model

from kseg.training import AtomicBackupAndRestore


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
        tiny_model().fit(
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


def _weighted_fit_loss(model, *fit_args, **fit_kwargs):
    """The loss of one step at the model's initial weights (learning rate 0)."""
    history = model.fit(*fit_args, epochs=1, verbose=0, shuffle=False, **fit_kwargs)
    return history.history["loss"][0]


def _segmentation_model(num_classes, loss):
    from kseg import models

    keras.utils.set_random_seed(0)
    model = models.build(
        "unet", input_shape=(8, 8, 1), num_classes=num_classes, depth=1, base_filters=2
    )
    model.compile(optimizer=keras.optimizers.SGD(0.0), loss=loss)
    return model


def test_class_weight_weights_the_voxels_of_numpy_masks():
    # model.fit(images, masks, class_weight=...) on numpy masks crashed in Keras with
    # "TypeError: only 0-dimensional arrays can be converted to Python scalars".
    rng = np.random.default_rng(0)
    images = rng.normal(size=(2, 8, 8, 1)).astype(np.float32)
    masks = np.zeros((2, 8, 8, 1), np.float32)
    masks[0, 2:5, 3:7] = 1
    model = _segmentation_model(1, keras.losses.BinaryCrossentropy())
    # as the training step computes it: batch normalisation on the batch's statistics
    p = np.clip(np.asarray(model(images, training=True))[..., 0], 1e-7, 1 - 1e-7)
    y = masks[..., 0]
    bce = -(y * np.log(p) + (1 - y) * np.log(1 - p))
    weights = np.where(y == 1, 4.0, 0.5)
    expected = np.sum(weights * bce) / bce.size  # Keras: the weighted sum over the voxels
    loss = _weighted_fit_loss(model, images, masks, batch_size=2, class_weight={0: 0.5, 1: 4})
    np.testing.assert_allclose(loss, expected, rtol=1e-4)


def test_class_weight_reads_masks_without_a_channel_axis_as_class_values():
    # A tf.data of (image, mask) with integer masks (batch, H, W): Keras' class_weight map
    # took the argmax over the mask's last spatial axis as each voxel's class.
    import tensorflow as tf

    rng = np.random.default_rng(1)
    images = rng.normal(size=(2, 8, 8, 1)).astype(np.float32)
    masks = np.zeros((2, 8, 8), np.int32)
    masks[:, 1:4, 2:6] = 1
    masks[1, 5:7, 5:8] = 2
    model = _segmentation_model(3, keras.losses.SparseCategoricalCrossentropy())
    probabilities = np.asarray(model(images, training=True))
    chosen = np.take_along_axis(probabilities, masks[..., None], axis=-1)[..., 0]
    class_weight = {0: 0.2, 1: 1.0, 2: 5.0}
    weights = np.vectorize(class_weight.get)(masks)
    expected = np.sum(weights * -np.log(chosen)) / masks.size
    dataset = tf.data.Dataset.from_tensor_slices((images, masks)).batch(2)
    loss = _weighted_fit_loss(model, dataset, class_weight=class_weight)
    np.testing.assert_allclose(loss, expected, rtol=1e-4)


def test_a_search_space_computed_with_numpy_builds_as_the_same_python_one():
    # SegmentationHyperModel accepted numpy integers (they pass its checks) and Keras Tuner
    # then refused them when the first trial was built ("A `Choice` can contain only
    # `int`, `float`, `str`, or `bool`"); a numpy array of choices was refused outright.
    import keras_tuner

    from kseg.tuning import SegmentationHyperModel

    def first_trial(**space):
        hypermodel = SegmentationHyperModel((16, 16, 1), 1, losses="dice", **space)
        hp = keras_tuner.HyperParameters()
        model = hypermodel.build(hp)
        json.dumps(hp.get_config())  # what Keras Tuner writes into each trial.json
        return hp.values, model.count_params()

    plain = first_trial(
        base_filters=[4, 8], depth=(1, 2), learning_rate=(1e-4, 1e-2), batch_sizes=[2, 4],
        fixed={"dropout": 0.25},
    )  # fmt: skip
    computed = first_trial(
        base_filters=np.array([4, 8]),
        depth=(np.int64(1), np.int64(2)),
        learning_rate=tuple(np.array([1e-4, 1e-2])),
        batch_sizes=(np.int64(2), np.int64(4)),
        fixed={"dropout": np.float64(0.25)},
    )
    assert computed == plain
    assert first_trial(fixed={"depth": np.int64(2), "base_filters": np.int32(4)})[0][
        "depth"
    ] == 2


def _dice(prediction, reference):
    prediction, reference = prediction.astype(bool), reference.astype(bool)
    return 2 * np.sum(prediction & reference) / (prediction.sum() + reference.sum())


def test_volume_validation_of_a_3d_model_of_any_size_takes_volumes_of_any_size():
    # models.build("unet3d") takes (None, None, None, 1); VolumeValidation's default window
    # (the model's input shape, None axes whole) was then the volume itself, and a volume
    # of 5 x 9 x 7 voxels (any real CT: 87 x 512 x 512) stopped fit after its first epoch
    # ("roi_size (5, 9, 7): unet needs window sizes divisible by 2"). Reference: the
    # volume padded with zeros to the next sizes the U-Net divides, as sliding_window pads
    # (evenly on both sides), predicted by the model and cropped back, scored by numpy.
    from kseg import models
    from kseg.training import VolumeValidation

    keras.utils.set_random_seed(0)
    model = models.build("unet3d", num_classes=1, depth=1, base_filters=2)
    rng = np.random.default_rng(2)
    image = rng.normal(size=(5, 9, 7, 1)).astype(np.float32)
    label = np.zeros((5, 9, 7), np.uint8)
    label[1:4, 2:7, 1:6] = 1
    validation = VolumeValidation([("p1", image, label, (2.0, 1.0, 1.0))])
    validation.set_model(model)
    dice = validation.evaluate().column("dice")[0]

    padded = np.pad(image, ((0, 1), (0, 1), (0, 1), (0, 0)))  # 6 x 10 x 8: (0, 1) each
    probabilities = np.asarray(model(padded[None], training=False))[0, :5, :9, :7, 0]
    np.testing.assert_allclose(dice, _dice(probabilities >= 0.5, label), rtol=1e-6)


def test_a_validation_image_without_its_channel_axis_is_refused_before_training():
    # A (slices, H, W) volume given to a one-channel 2D model was read as a 2D image of W
    # channels; the error came at the end of the first epoch, from inside the model, and
    # named no patient.
    import pytest

    from kseg import models
    from kseg.training import VolumeValidation

    model = models.build("unet", input_shape=(None, None, 1), num_classes=1, depth=1)
    label = np.zeros((4, 8, 8), np.uint8)
    label[1:3, 2:6, 2:6] = 1
    image = np.zeros((4, 8, 8), np.float32)
    validation = VolumeValidation([("p1", image[..., None], label, None),
                                   ("p2", image, label, None)])  # fmt: skip
    validation.set_model(model)
    with pytest.raises(ValueError, match=r"patient 'p2'.*\(4, 8, 8\).*channel axis"):
        validation.on_train_begin()
    model3d = models.build("unet3d", num_classes=1, depth=1)
    validation = VolumeValidation([("p2", image, label, None)])
    validation.set_model(model3d)
    with pytest.raises(ValueError, match=r"patient 'p2'.*\(4, 8, 8\).*channel axis"):
        validation.on_train_begin()


def test_a_resumed_history_keeps_its_columns_when_the_logs_gain_a_key(tmp_path):
    # A run resumed with a time budget (training_callbacks(..., max_minutes=...)) logs
    # time_budget_used_minutes too: Keras' CSVLogger appended rows in the new sorted key
    # order under the file's old header, so the resumed epochs' val_loss column held the
    # minutes used (and MLflow and the report read them as val_loss). Reference: the
    # values of Keras' History of each fit.
    import csv

    from kseg.training import ResumableCSVLogger, TimeBudget

    class CrashAtEpoch(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            if epoch == 2:
                raise RuntimeError("simulated kill")

    history_path, backup = tmp_path / "history.csv", tmp_path / "backup"
    model = tiny_model()
    first = keras.callbacks.History()
    try:
        model.fit(X, Y, epochs=4, verbose=0, validation_data=(X, Y), callbacks=[
            ResumableCSVLogger(history_path), AtomicBackupAndRestore(backup), first,
            CrashAtEpoch()])  # fmt: skip
    except RuntimeError:
        pass
    resumed = tiny_model().fit(
        X, Y, epochs=4, verbose=0, validation_data=(X, Y), callbacks=[
            TimeBudget(60, verbose=False), ResumableCSVLogger(history_path),
            AtomicBackupAndRestore(backup)])  # fmt: skip
    with open(history_path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [int(row["epoch"]) for row in rows] == [0, 1, 2, 3]
    expected = {key: first.history[key] + resumed.history[key] for key in ("loss", "val_loss")}
    for key, values in expected.items():
        np.testing.assert_allclose([float(row[key]) for row in rows], values, rtol=1e-6)
    assert [row["time_budget_used_minutes"] for row in rows[:2]] == ["NA", "NA"]
    minutes = [float(row["time_budget_used_minutes"]) for row in rows[2:]]
    np.testing.assert_allclose(minutes, resumed.history["time_budget_used_minutes"])


def test_volume_validation_of_a_deep_supervision_model_scores_its_full_output():
    # unet_plus_plus(deep_supervision=True) returns one output per head, the full model's
    # last; VolumeValidation stopped fit after its first epoch ("the predictor returned
    # several outputs"). nnU-Net trains with deep supervision and validates the full-
    # resolution output alone. Reference: the model's last output, thresholded, numpy Dice.
    from kseg import models
    from kseg.training import VolumeValidation

    keras.utils.set_random_seed(3)
    model = models.build("unet_plus_plus", input_shape=(None, None, 1), num_classes=1,
                         depth=2, base_filters=2, deep_supervision=True)  # fmt: skip
    rng = np.random.default_rng(3)
    image = rng.normal(size=(4, 8, 8, 1)).astype(np.float32)
    label = np.zeros((4, 8, 8), np.uint8)
    label[1:3, 2:6, 1:7] = 1
    validation = VolumeValidation([("p1", image, label, (2.0, 1.0, 1.0))])
    validation.set_model(model)
    validation.on_train_begin()
    dice = validation.evaluate().column("dice")[0]
    outputs = [np.asarray(output) for output in model(image, training=False)]
    assert len(outputs) == 2
    np.testing.assert_allclose(dice, _dice(outputs[-1][..., 0] >= 0.5, label), rtol=1e-6)


def test_staged_search_stages_computed_with_numpy_are_its_python_values(tmp_path):
    # stages=[("base_filters", np.array([4, 8]))] was refused as "needs a non-empty list",
    # and numpy numbers in a list failed with "Object of type int64 is not JSON
    # serializable" while the search recorded its stages (or later in Keras Tuner's Choice).
    from kseg.tuning import SegmentationHyperModel, tuner

    hypermodel = SegmentationHyperModel((16, 16, 1), 1, depth=(1, 2), losses="dice")
    search = tuner("staged", hypermodel, directory=tmp_path, project_name="s", stages=[
        ("base_filters", np.array([4, 8])),
        ("learning_rate", [np.float64(1e-3), np.float64(1e-2)]),
        ("depth", [np.int64(1), np.int64(2)])])  # fmt: skip
    assert search.stages == [("base_filters", [4, 8]), ("learning_rate", [1e-3, 1e-2]),
                             ("depth", [1, 2])]  # fmt: skip
    assert {type(value) for _, values in search.stages for value in values} == {int, float}
    recorded = json.loads((tmp_path / "s" / "kseg_stages.json").read_text())
    assert recorded["stages"] == [["base_filters", [4, 8]], ["learning_rate", [1e-3, 1e-2]],
                                  ["depth", [1, 2]]]  # fmt: skip
    hp = search._stage_hyperparameters("depth", [1, 2], {"base_filters": 8})
    assert hp.values["depth"] == 1 and hp.values["base_filters"] == 8


def test_a_checkpoint_directed_against_its_monitor_is_refused(tmp_path):
    # training_callbacks(run, None, monitor="val_loss") kept mode="max": the best model
    # was the epoch of the highest validation loss, and the learning rate was halved while
    # the loss fell. kseg's tuners refuse such objectives; the checkpoint now does too.
    import pytest

    from kseg.training import BestModelCheckpoint, training_callbacks

    run = tmp_path / "run"
    for monitor, better in (("val_loss", "lower"), ("val_volume_hd95", "lower"),
                            ("val_volume_assd_liver", "lower")):  # fmt: skip
        with pytest.raises(ValueError, match=f"{monitor}.*{better}.*mode='min'"):
            training_callbacks(run, None, monitor=monitor)
        with pytest.raises(ValueError, match=f"{monitor}.*{better}.*mode='min'"):
            BestModelCheckpoint(run / "best.keras", monitor=monitor)
    with pytest.raises(ValueError, match="val_volume_dice.*higher.*mode='max'"):
        training_callbacks(run, None, monitor="val_volume_dice", mode="min")
    assert not run.exists()  # refused before anything was created
    # the right directions, and a name whose direction kseg cannot tell, are taken
    assert training_callbacks(run, None, monitor="val_loss", mode="min")[0].mode == "min"
    assert BestModelCheckpoint(run / "b.keras", monitor="val_my_score").mode == "max"


def test_training_callbacks_take_numbers_computed_with_numpy(tmp_path):
    # max_minutes=np.float32(0.5) or every=np.int64(2) (from a numpy computation) were
    # refused with "must be a positive, finite number ..., got np.float32(0.5)".
    import pytest

    from kseg.training import (
        ResumableReduceLROnPlateau,
        TimeBudget,
        VolumeValidation,
        training_callbacks,
    )

    assert TimeBudget(np.float32(0.5)).budget_seconds == 30.0
    assert TimeBudget(np.int64(2)).budget_seconds == 120.0
    callbacks = training_callbacks(tmp_path / "run", None, monitor="val_dice",
                                   reduce_lr_patience=np.int64(3), max_minutes=np.int64(5))
    (reduce_lr,) = [c for c in callbacks if isinstance(c, ResumableReduceLROnPlateau)]
    (budget,) = [c for c in callbacks if isinstance(c, TimeBudget)]
    assert (reduce_lr.patience, budget.budget_seconds) == (3, 300.0)
    label = np.ones((4, 4), np.uint8)
    validation = VolumeValidation([("p", np.zeros((4, 4, 1)), label, None)], every=np.int64(2))
    assert validation.every == 2 and type(validation.every) is int
    for refused in (np.float32(np.nan), np.float64(-1.0), True):
        with pytest.raises(ValueError, match="minutes"):
            TimeBudget(refused)


def test_validation_references_evaluation_would_refuse_are_refused_when_given():
    # A 0/255 mask volume, or a multi-class label map without labels=, was accepted by
    # VolumeValidation and refused by the scoring only at the end of the first epoch
    # (MaskError "the reference holds labels [0, 255]"), a whole epoch of training later.
    import pytest

    from kseg.errors import MaskError
    from kseg.training import VolumeValidation

    image = np.zeros((4, 8, 8, 1), np.float32)
    mask = np.zeros((4, 8, 8), np.uint8)
    mask[1:3, 2:6, 2:6] = 1
    two_organs = mask.copy()
    two_organs[1:3, 6:8, 0:2] = 2
    resampled = mask.astype(np.float32)
    resampled[1, 2, 2] = 0.5  # a mask interpolated onto another grid
    for label, named in ((mask * 255, r"\[0, 255\]"), (two_organs, r"\[0, 1, 2\]"),
                         (resampled, "not whole numbers")):  # fmt: skip
        with pytest.raises(MaskError, match=f"patient 'p2'.*{named}"):
            VolumeValidation([("p1", image, mask, None), ("p2", image, label, None)])
    # the same label map with its classes named is taken
    VolumeValidation([("p2", image, two_organs, None)], labels={"liver": 1, "spleen": 2})


def test_a_plateau_schedule_on_an_optimizer_with_a_schedule_is_refused_before_training(
    tmp_path,
):
    # training_callbacks' learning-rate halving (on by default) on a model compiled with
    # Adam(CosineDecay(...)) trained until the first plateau and then stopped with Keras'
    # "TypeError: ... its learning rate is not settable" (hours into a run).
    import pytest

    from kseg.training import training_callbacks

    class FlatScore(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            logs["val_dice"] = 0.5

    class Epochs(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            self.ran = 0

        def on_epoch_end(self, epoch, logs=None):
            self.ran += 1

    model = keras.Sequential([keras.Input((1,)), keras.layers.Dense(1)])
    schedule = keras.optimizers.schedules.CosineDecay(1e-3, 100)
    model.compile(optimizer=keras.optimizers.Adam(schedule), loss="mse")
    epochs = Epochs()
    callbacks = training_callbacks(tmp_path / "a", None, monitor="val_dice", reduce_lr_patience=1)
    with pytest.raises(ValueError, match="CosineDecay.*reduce_lr_patience=None"):
        model.fit(X, Y, epochs=4, verbose=0, callbacks=[FlatScore(), epochs, *callbacks])
    assert epochs.ran == 0  # refused before the first epoch trained
    # without the plateau halving, the schedule trains
    callbacks = training_callbacks(tmp_path / "b", None, monitor="val_dice",
                                   reduce_lr_patience=None)  # fmt: skip
    model.fit(X, Y, epochs=2, verbose=0, callbacks=[FlatScore(), epochs, *callbacks])
    assert epochs.ran == 2


def test_class_weight_leaves_the_validation_split_unweighted_as_keras_does():
    # Keras applies class_weight to the training data only; the per-voxel weights kseg
    # makes from it must not weight the val_loss of a validation_split.
    rng = np.random.default_rng(4)
    images = rng.normal(size=(4, 8, 8, 1)).astype(np.float32)
    masks = np.zeros((4, 8, 8, 1), np.float32)
    masks[:, 2:5, 3:7] = 1
    model = _segmentation_model(1, keras.losses.BinaryCrossentropy())
    history = model.fit(images, masks, batch_size=2, epochs=1, verbose=0, shuffle=False,
                        validation_split=0.5, class_weight={0: 0.5, 1: 4.0})  # fmt: skip
    # validated after the step (learning rate 0; batch norm statistics updated by it)
    p = np.clip(np.asarray(model(images[2:], training=False))[..., 0], 1e-7, 1 - 1e-7)
    y = masks[2:, ..., 0]
    unweighted = np.mean(-(y * np.log(p) + (1 - y) * np.log(1 - p)))
    np.testing.assert_allclose(history.history["val_loss"][0], unweighted, rtol=1e-4)


def test_a_search_refuses_callbacks_that_write_one_run_folder_for_every_trial(tmp_path):
    # search(callbacks=training_callbacks(run, validation)) gave every trial the same
    # best.keras, history.csv and backup: each trial's fit starts at epoch 0, a new run, so
    # best.keras ended as the last trial's best epoch, not the search's best model, and a
    # crashed trial's backup was restored into the next trial's model.
    import pytest

    from kseg.training import VolumeValidation, training_callbacks
    from kseg.tuning import check_search_callbacks

    label = np.zeros((4, 8, 8), np.uint8)
    label[1:3, 2:6, 2:6] = 1
    validation = VolumeValidation([("p1", np.zeros((4, 8, 8, 1), np.float32), label, None)])
    callbacks = training_callbacks(tmp_path / "run", validation)
    with pytest.raises(ValueError, match=r"BestModelCheckpoint.*every trial.*get_best_models"):
        check_search_callbacks("val_volume_dice", callbacks)
    with pytest.raises(ValueError, match=r"BackupAndRestore"):
        check_search_callbacks(
            "val_volume_dice", [validation, keras.callbacks.BackupAndRestore(tmp_path / "b")]
        )
    check_search_callbacks("val_volume_dice", [validation])  # what kseg tune gives


def test_slice_wise_validation_of_a_2d_model_of_any_size_takes_slices_of_any_size():
    # A (slices, 10, 10, 1) volume and a depth-2 U-Net of input (None, None, 1): the
    # slice-wise path stopped fit after its first epoch ("unet needs spatial sizes divisible
    # by 4 ... axis 1 (height) has size 10"). Reference: each slice padded with zeros to
    # 12 x 12 (1 before, 1 after, as sliding_window pads), predicted, cropped, numpy Dice.
    from kseg import models
    from kseg.training import VolumeValidation

    keras.utils.set_random_seed(5)
    model = models.build("unet", input_shape=(None, None, 1), num_classes=1, depth=2,
                         base_filters=2)  # fmt: skip
    image = np.random.default_rng(5).normal(size=(3, 10, 10, 1)).astype(np.float32)
    label = np.zeros((3, 10, 10), np.uint8)
    label[:, 2:7, 3:9] = 1
    validation = VolumeValidation([("p1", image, label, (2.0, 1.0, 1.0))])
    validation.set_model(model)
    validation.on_train_begin()
    dice = validation.evaluate().column("dice")[0]
    padded = np.pad(image, ((0, 0), (1, 1), (1, 1), (0, 0)))
    probabilities = np.asarray(model(padded, training=False))[:, 1:11, 1:11, 0]
    np.testing.assert_allclose(dice, _dice(probabilities >= 0.5, label), rtol=1e-6)
