"""kseg's training pipelines tell Keras how many batches an epoch holds.

A ``tf.data`` pipeline of unknown length (after a filter or an unbatch) makes Keras end
every epoch, and every validation pass, on running out of data and warn "Your input ran
out of data; interrupting training". The expected step counts are worked by hand from the
examples written here.
"""

import warnings

import numpy as np
import pytest
import tensorflow as tf

from kseg.data.pipeline import keep_patients, segmentation_dataset
from kseg.recipes import load

RAN_OUT = "ran out of data"


def _slices(patients):
    """One 8 x 8 slice per entry of ``patients`` (repeat an id for several slices)."""
    count = len(patients)
    return tf.data.Dataset.from_tensor_slices({
        "image": np.zeros((count, 8, 8), np.uint8),
        "mask": np.zeros((count, 8, 8), np.uint8),
        "patient_id": np.array(patients, dtype=object).astype(bytes),
    })


def _fit_one_epoch(training, validation):
    """Steps of one epoch of a one-weight model, and the warnings Keras gave."""
    import keras

    model = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Conv2D(1, 1)])
    model.compile("sgd", "mse")
    steps = []
    counter = keras.callbacks.LambdaCallback(
        on_train_batch_end=lambda batch, logs: steps.append(batch)
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model.fit(training, validation_data=validation, epochs=1, verbose=0, callbacks=[counter])
    return len(steps), [str(warning.message) for warning in caught]


def test_kept_patients_give_keras_the_epoch_length():
    # a: 3 slices, b: 2, c: 1; keeping a and c leaves 4 slices, 2 batches of 3 and 1
    examples = _slices(["a", "b", "a", "c", "b", "a"])
    counts = {"a": 3, "b": 2, "c": 1}
    training = segmentation_dataset(keep_patients(examples, ["c", "a"], counts), batch_size=3)
    validation = segmentation_dataset(keep_patients(examples, ["b"], counts), batch_size=3)

    assert int(training.cardinality()) == 2 and int(validation.cardinality()) == 1
    steps, caught = _fit_one_epoch(training, validation)
    assert steps == 2
    assert not [message for message in caught if RAN_OUT in message]


def test_a_wrong_count_is_an_error_not_a_shorter_epoch():
    examples = _slices(["a", "b", "a"])
    kept = keep_patients(examples, ["a"], {"a": 3, "b": 1})
    with pytest.raises(tf.errors.FailedPreconditionError, match="expected to contain 3 elements"):
        list(kept)


def test_a_patient_without_a_count_is_named():
    with pytest.raises(ValueError, match=r"\['z'\]"):
        keep_patients(_slices(["a"]), ["a", "z"], {"a": 1})


def test_xray_training_batches_know_their_steps(tmp_path):
    recipe = load("xray_multiclass")
    # 9 radiographs in 3 folds of 3: the training fold holds 3, 2 batches of 2 (--max-train
    # 2: one batch)
    arguments = ["--output-dir", str(tmp_path), "--phantom-images", "9", "--phantom-size", "16",
                 "--image-size", "16", "--folds", "3", "--batch-size", "2"]
    args = recipe.parse_args(arguments)
    builder = recipe.prepare(args)
    num_classes, labels = recipe._classes(builder)
    for max_train, steps in ((None, 2), (1, 1)):
        args.max_train = max_train
        training, validation_batches, _ = recipe._training_data(
            args, builder, recipe.splits(args), num_classes, labels
        )
        assert int(training.cardinality()) == steps
        assert int(validation_batches.cardinality()) == 2


def prepared_small_spleen(tmp_path, *options):
    """The msd_spleen recipe, its arguments and its prepared builder on 3 phantom volumes of
    8 x 16 x 16 voxels in 3 folds (one per split), 8-voxel patches."""
    from kseg.phantoms.msd_spleen import write_msd_spleen

    recipe = load("msd_spleen")
    manual = tmp_path / "download"
    write_msd_spleen(manual, num_training=3, num_test=0, shape=(8, 16, 16),
                     spacing=(5.0, 0.8, 0.8), apple_double=False)
    args = recipe.parse_args(["--data-dir", str(manual), "--output-dir", str(tmp_path / "run"),
                              "--folds", "3", "--patch-size", "8", *options])
    return recipe, args, recipe.prepare(args)


def test_spleen_validation_patches_know_their_steps(tmp_path):
    # unbatching keeps the count only while each volume's patches have a static number
    recipe, args, builder = prepared_small_spleen(tmp_path, "--batch-size", "3")
    # one validation volume, 4 patches: 2 batches of 3 and 1
    validation = recipe.validation_patches(builder, recipe.splits(args)["validation"], args)
    assert int(validation.cardinality()) == 2
    assert sum(int(images.shape[0]) for images, _ in validation) == 4
