"""VolumeValidation: whole-volume Dice in the logs, where ModelCheckpoint can monitor it."""

import re

import keras
import numpy as np
import pytest

from kseg.metrics import DiceScore
from kseg.training import VolumeValidation


def numpy_dice(truth, prediction):
    return 2 * np.sum(truth & prediction) / (truth.sum() + prediction.sum())


def pointwise_model(spatial_dims):
    conv = keras.layers.Conv3D if spatial_dims == 3 else keras.layers.Conv2D
    inputs = keras.Input((None,) * spatial_dims + (1,))
    model = keras.Model(inputs, conv(1, 1, activation="sigmoid")(inputs))
    model.compile(
        optimizer=keras.optimizers.SGD(0.5), loss="binary_crossentropy", metrics=[DiceScore()]
    )
    return model


def volume_case(rng, shape):
    image = rng.normal(size=shape + (1,)).astype(np.float32)
    label = (image[..., 0] + 0.5 * rng.normal(size=shape) > 0).astype(np.uint8)
    return image, label


def test_checkpoint_monitors_volume_dice(tmp_path):
    rng = np.random.default_rng(11)
    model = pointwise_model(3)
    volumes = [
        ("v1", *volume_case(rng, (6, 7, 5)), (2.0, 1.0, 1.0)),
        ("v2", *volume_case(rng, (5, 6, 6)), (2.0, 1.0, 1.0)),
    ]
    patches, patch_labels = volume_case(rng, (8, 4, 4, 4))
    validation = VolumeValidation(volumes, roi_size=(4, 4, 4), overlap=0.25)
    checkpoint = keras.callbacks.ModelCheckpoint(
        tmp_path / "best.keras", monitor="val_volume_dice", mode="max", save_best_only=True
    )
    history = model.fit(
        patches,
        patch_labels[..., None],
        batch_size=4,
        epochs=2,
        verbose=0,
        validation_data=(patches[:4], patch_labels[:4, ..., None]),
        callbacks=[validation, checkpoint],
    )
    logged = history.history["val_volume_dice"]
    assert len(logged) == 2 and sorted(validation.history) == [0, 1]
    assert checkpoint.best == pytest.approx(max(logged))
    assert (tmp_path / "best.keras").exists()

    # the last logged value is the mean over patients of the whole-volume Dice of the final
    # model; a 1x1x1 convolution sees each voxel alone, so predicting the whole volume at
    # once with keras gives the same voxels the sliding window gave
    expected = np.mean(
        [
            numpy_dice(label.astype(bool), model.predict(image[None], verbose=0)[0, ..., 0] >= 0.5)
            for _, image, label, _ in volumes
        ]
    )
    assert logged[-1] == pytest.approx(expected, rel=1e-6)
    gap = np.array(history.history["val_dice"]) - np.array(logged)
    np.testing.assert_allclose(history.history["val_patch_volume_gap"], gap, rtol=1e-6)


def test_slice_wise_validation_runs_every_few_epochs_and_repeats_between():
    rng = np.random.default_rng(12)
    model = pointwise_model(2)
    image, label = volume_case(rng, (4, 6, 6))
    validation = VolumeValidation(
        [("p", image, label[..., None], None)], every=3, log_per_patient=True
    )
    patches, patch_labels = volume_case(rng, (8, 6, 6))
    history = model.fit(
        patches, patch_labels[..., None], epochs=3, verbose=0, callbacks=[validation]
    )
    logged = history.history["val_volume_dice"]
    assert sorted(validation.history) == [0, 2]  # after the first epoch, then every third
    assert logged[1] == logged[0]  # carried over on the epoch without validation
    assert history.history["val_volume_dice/p"] == logged
    prediction = model.predict(image, verbose=0)[..., 0] >= 0.5
    assert logged[2] == pytest.approx(numpy_dice(label.astype(bool), prediction), rel=1e-6)


def test_rejects_volumes_that_fit_no_inference_path():
    model = pointwise_model(2)
    validation = VolumeValidation([("p", np.zeros((2, 3, 4, 4, 1)), np.ones((2, 3, 4, 4)), None)])
    validation.set_model(model)
    with pytest.raises(ValueError, match="fits neither"):
        validation.evaluate()


def test_from_slices_scores_on_the_stored_mask_grid():
    """A 2D model running at half resolution is scored against the full-resolution masks."""
    import tensorflow as tf

    rng = np.random.default_rng(13)
    # prediction and reference made of 2x2 blocks: halving and resizing back bilinearly is
    # then exact after thresholding, so the expected score is plain numpy Dice
    reference = np.kron(rng.uniform(size=(3, 4, 4)) > 0.5, np.ones((1, 2, 2))).astype(np.uint8)
    predicted = np.kron(rng.uniform(size=(3, 4, 4)) > 0.5, np.ones((1, 2, 2))).astype(bool)
    dataset = tf.data.Dataset.from_tensor_slices(
        {
            "image": (predicted * 0.8 + 0.1).astype(np.float32)[..., None][::-1],
            "mask": reference[::-1],
            "patient_id": np.array(["p"] * 3),
            "slice_index": np.arange(3)[::-1],
            "num_slices": np.full(3, 3),
            "spacing": np.tile(np.float32([3.0, 0.8, 0.8]), (3, 1)),
        }
    )
    identity = keras.Sequential([keras.Input((None, None, 1)), keras.layers.Identity()])
    validation = VolumeValidation.from_slices(
        dataset, preprocess=lambda example: tf.image.resize(example["image"], (4, 4))
    )
    validation.set_model(identity)
    (patient_id, inputs, label, spacing), = validation.volumes
    assert (patient_id, inputs.shape, label.shape) == ("p", (3, 4, 4, 1), (3, 8, 8))
    table = validation.evaluate()
    assert table.rows[0]["dice"] == pytest.approx(numpy_dice(reference.astype(bool), predicted))


def test_a_resumed_fit_is_scored_from_its_first_epoch():
    """Hyperband and BackupAndRestore resume at initial_epoch > 0: every epoch needs the key."""
    rng = np.random.default_rng(14)
    model = pointwise_model(2)
    image, label = volume_case(rng, (3, 6, 6))
    validation = VolumeValidation([("p", image, label, None)], every=4)
    patches, patch_labels = volume_case(rng, (8, 6, 6))
    history = model.fit(
        patches, patch_labels[..., None], initial_epoch=2, epochs=5, verbose=0,
        callbacks=[validation],
    )
    assert len(history.history["val_volume_dice"]) == len(history.history["loss"]) == 3
    assert sorted(validation.history) == [2, 3]  # the first epoch of this fit, then epoch 4


def test_postprocess_is_applied_to_the_validation_volumes():
    rng = np.random.default_rng(14)
    model = pointwise_model(2)
    image, label = volume_case(rng, (4, 6, 6))
    empty = np.zeros_like(label)
    validation = VolumeValidation(
        [("p", image, label, None)], postprocess=lambda label_map: empty
    )
    validation.set_model(model)
    raw = VolumeValidation([("p", image, label, None)])
    raw.set_model(model)
    prediction = model.predict(image, verbose=0)[..., 0] >= 0.5
    expected = numpy_dice(label.astype(bool), prediction)
    assert raw.evaluate().rows[0]["dice"] == pytest.approx(expected)
    # an empty prediction against a non-empty reference scores 0
    assert label.any()
    assert validation.evaluate().rows[0]["dice"] == 0.0


def test_empty_references_warn_once_and_an_all_empty_set_is_refused():
    import warnings

    from kseg.evaluation import EmptyReferenceWarning

    rng = np.random.default_rng(15)
    image, label = volume_case(rng, (3, 6, 6))
    empty = np.zeros_like(label)
    with pytest.warns(EmptyReferenceWarning, match=r"2 of 3 .*\(e1, e2\)") as caught:
        validation = VolumeValidation(
            [("p", image, label, None), ("e1", image, empty, None), ("e2", image, empty, None)]
        )
    assert len(caught) == 1 and validation.empty_references == ["e1", "e2"]
    # the warning comes once, at construction, not at every evaluation
    validation.set_model(pointwise_model(2))
    with warnings.catch_warnings():
        warnings.simplefilter("error", EmptyReferenceWarning)
        validation.evaluate()

    with pytest.raises(ValueError, match="every validation reference is empty"):
        VolumeValidation([("e1", image, empty, None), ("e2", image, empty[..., None], None)])


def test_empty_references_per_scored_structure():
    from kseg.evaluation import EmptyReferenceWarning

    rng = np.random.default_rng(16)
    image, _ = volume_case(rng, (3, 6, 6))
    only_spleen = np.zeros((3, 6, 6), np.uint8)
    only_spleen[1, 2:4, 2:4] = 2
    both = only_spleen.copy()
    both[0, 0, 0] = 1
    with pytest.raises(ValueError, match=r"every validation reference lacks 'liver' \(patients s"):
        VolumeValidation([("s", image, only_spleen, None)], labels={"liver": 1})
    # a structure no validation volume holds cannot be validated, whatever the others hold
    with pytest.raises(ValueError, match=r"lacks 'liver'"):
        VolumeValidation(
            [("s", image, only_spleen, None), ("t", image, only_spleen, None)],
            labels={"liver": 1, "spleen": 2},
        )
    with pytest.warns(EmptyReferenceWarning, match=r"1 of 2 .*\(s: 1\)"):
        validation = VolumeValidation(
            [("s", image, only_spleen, None), ("b", image, both, None)], labels=iter([1, 2])
        )
    assert validation.empty_references == ["s"]
    # the labels were kept as a list: every evaluation scores both structures
    validation.set_model(keras.Sequential([keras.Input((None, None, 1)),
                                           keras.layers.Conv2D(3, 1, activation="softmax")]))
    for _ in range(2):
        assert validation.evaluate().metric_names == ["dice_1", "dice_2"]


@pytest.mark.parametrize("output_activation", [None, "sigmoid"])
def test_volume_validation_refuses_the_wrong_output_kind_before_training(output_activation):
    rng = np.random.default_rng(0)
    x = rng.random((8, 8, 8, 1), dtype=np.float32)
    y = (x > 0.5).astype(np.float32)
    model = keras.Sequential([keras.Input((8, 8, 1)),
                              keras.layers.Conv2D(1, 3, padding="same",
                                                  activation=output_activation)])
    model.compile(optimizer="adam", loss=keras.losses.BinaryCrossentropy(
        from_logits=output_activation is None))
    logits = output_activation is None
    # scored as the other kind: logits thresholded as probabilities, or probabilities
    # through a sigmoid again (every pixel >= 0.5: all foreground)
    validation = VolumeValidation([("p", x[:2], y[:2, ..., 0], None)], from_logits=not logits)
    trained = []
    counter = keras.callbacks.LambdaCallback(on_train_batch_end=lambda *a: trained.append(1))
    message = "needs VolumeValidation(..., from_logits=True)" if logits else "drop from_logits"
    with pytest.raises(ValueError, match=re.escape(message)):
        model.fit(x, y, batch_size=4, epochs=1, verbose=0, callbacks=[validation, counter])
    assert trained == []
    # the right kind trains and scores
    right = VolumeValidation([("p", x[:2], y[:2, ..., 0], None)], from_logits=logits)
    history = model.fit(x, y, batch_size=4, epochs=1, verbose=0, callbacks=[right])
    assert 0 <= history.history["val_volume_dice"][0] <= 1
