"""Inputs a real user or archive produces, against independent references, for the training
data path: tf.data pipeline, augmentation, patches, splits, losses and metrics."""

import io

import keras
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from kseg.augment import (
    AugmentedModel,
    RandomAffine,
    RandomContrast,
    RandomElasticDeformation,
    RandomGaussianBlur,
    RandomGaussianNoise,
    segmentation_augmenter,
)
from kseg.data.patches import random_patches
from kseg.data.pipeline import segmentation_dataset
from kseg.data.splits import assign_folds
from kseg.losses import ComboLoss, DiceCELoss, DiceLoss, FocalLoss, IoULoss, TopKLoss
from kseg.metrics import DiceScore, IoUScore, brier_score, expected_calibration_error


def _png_bytes(array):
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def test_encoded_16_bit_png_keeps_its_stored_values_in_the_pipeline():
    # A 16-bit radiograph and its 16-bit 0/1 mask, as a user's tf.data of file bytes gives
    # them; tf.io.decode_image's default uint8 turned the mask into all 0.
    image = (np.arange(24 * 32).reshape(24, 32) * 53).astype(np.uint16)
    mask = np.zeros((24, 32), np.uint16)
    mask[5:15, 3:20] = 1
    eight_bit = np.array([[0, 1, 128, 255]] * 4, np.uint8)
    assert Image.open(io.BytesIO(_png_bytes(mask))).mode == "I;16"
    examples = tf.data.Dataset.from_tensor_slices(
        {"image": [_png_bytes(image)], "mask": [_png_bytes(mask)]}
    )
    images, masks = next(iter(segmentation_dataset(examples, batch_size=1)))
    np.testing.assert_array_equal(images[0, ..., 0], image.astype(np.float32))
    np.testing.assert_array_equal(masks[0, ..., 0], mask.astype(np.float32))

    # 8-bit PNGs keep their 8-bit values (not rescaled to 16 bits)
    examples = tf.data.Dataset.from_tensor_slices(
        {"image": [_png_bytes(eight_bit)], "mask": [_png_bytes((eight_bit > 0).astype(np.uint8))]}
    )
    images, masks = next(iter(segmentation_dataset(examples, batch_size=1)))
    np.testing.assert_array_equal(images[0, ..., 0], eight_bit.astype(np.float32))
    np.testing.assert_array_equal(masks[0, ..., 0], (eight_bit > 0).astype(np.float32))


def _hand_worked_masks():
    reference = np.zeros((2, 4, 4, 1), np.float32)
    reference[0, 1:3, 1:3] = 1  # 4 voxels, sample 1 empty
    return reference


@pytest.mark.parametrize("metric_class", [DiceScore, IoUScore])
def test_streaming_metric_refuses_a_0_255_mask_instead_of_scoring_above_one(metric_class):
    # A PNG mask read as 0/255 and passed straight to fit: TP = 255 per voxel made the
    # perfect prediction score Dice 1.99.
    reference = _hand_worked_masks()
    metric = metric_class()
    with pytest.raises(ValueError, match=r"outside the label set.*255.*\[0, 1\]"):
        metric.update_state(reference * 255, reference)
    # inside a traced step it cannot raise: the value is nan, never a number above 1
    metric = metric_class()
    tf.function(metric.update_state)(reference * 255, reference)
    assert np.isnan(float(metric.result()))
    metric = metric_class()
    metric.update_state(reference, reference)  # the same mask as 0/1 scores 1 by hand
    assert float(metric.result()) == 1.0


def test_streaming_metric_refuses_sparse_labels_outside_the_classes():
    # Label 7 (or -1) for a 3-class model was one-hot encoded as all zeros and silently
    # left out of every class's counts.
    labels = np.zeros((1, 4, 4), np.int32)
    labels[0, :2] = 1
    labels[0, 3, :] = 2
    probabilities = np.eye(3, dtype=np.float32)[labels]
    for wrong in (7, -1):
        bad = labels.copy()
        bad[0, 3, 0] = wrong
        metric = DiceScore(num_classes=3)
        with pytest.raises(ValueError, match=r"1 voxels outside the label set.*0\.\.2"):
            metric.update_state(bad, probabilities)
        metric = DiceScore(num_classes=3)
        tf.function(metric.update_state)(bad[..., None], probabilities)
        assert np.isnan(float(metric.result()))
    metric = DiceScore(num_classes=3)
    metric.update_state(labels, probabilities)
    assert float(metric.result()) == 1.0


@pytest.mark.parametrize("twin", ["p01", "P01 ", " P01", "p01\t"])
def test_patient_ids_differing_only_in_case_or_whitespace_are_refused(twin):
    # Two spellings of one patient (one source pads or lower-cases the id) were dealt as two
    # patients, so one patient's images could land in the training and the test fold.
    patients = ["P01", "P02", "P03", twin]
    with pytest.raises(ValueError, match="differ only in case or whitespace"):
        assign_folds(patients, num_folds=2, seed=0)
    # distinct ids that merely contain a space inside stay distinct
    folds = assign_folds(["P 01", "P01", "P02", "P03"], num_folds=2, seed=0)
    assert sorted(folds.values()) == [0, 0, 1, 1]


def test_augmented_model_moves_a_per_voxel_weight_map_with_the_mask(monkeypatch):
    # U-Net style per-pixel weights passed as sample_weight stayed where they were while
    # image and mask were flipped, rotated and warped: the weights no longer matched the
    # voxels they were made for.
    seen = {}

    def record(self, data):
        seen["x"], seen["y"], seen["w"] = keras.utils.unpack_x_y_sample_weight(data)
        return {}

    monkeypatch.setattr(keras.Model, "train_step", record)
    shape = (4, 24, 20)
    codes = (np.arange(np.prod(shape)).reshape(shape) % 997 + 1).astype(np.int32)
    images = codes[..., None].astype(np.float32) / 1000.0
    masks = codes[..., None]
    weights = codes.astype(np.float32)  # (B, H, W): the weight names its own voxel
    net = keras.Sequential([keras.Input((24, 20, 1)), keras.layers.Identity()])
    augmenter = segmentation_augmenter(2, intensity=False, seed=3)
    model = AugmentedModel(net, augmenter)
    model.train_step(tuple(tf.constant(v) for v in (images, masks, weights)))
    moved_masks, moved_weights = np.asarray(seen["y"]), np.asarray(seen["w"])
    assert moved_weights.shape == weights.shape
    assert not np.array_equal(moved_masks[..., 0], masks[..., 0])  # something moved
    np.testing.assert_array_equal(moved_weights, moved_masks[..., 0].astype(np.float32))
    assert moved_masks.dtype == np.int32

    # per-sample weights (B,) pass through unchanged
    per_sample = np.arange(4, dtype=np.float32)
    model.train_step(tuple(tf.constant(v) for v in (images, masks, per_sample)))
    np.testing.assert_array_equal(seen["w"], per_sample)


@pytest.mark.parametrize("dtype", ["uint8", "int16"])
def test_integer_images_are_augmented_like_float_ones_then_rounded(dtype):
    # uint8 PNG slices or int16 HU given to a layer directly: noise added in the integer
    # dtype wrapped around (-1 became 255), blur and contrast raised bare TensorFlow errors,
    # and interpolation truncated a constant 100 to 99 in places.
    constant = np.full((2, 32, 32, 1), 100, dtype)
    for layer in (RandomAffine(2, probability=1.0, seed=0), RandomElasticDeformation(
            2, probability=1.0, seed=0)):
        moved = np.asarray(layer(constant, training=True))
        assert moved.dtype == np.dtype(dtype)
        np.testing.assert_array_equal(moved[:, 8:24, 8:24], 100)

    images = np.random.default_rng(0).integers(0, 120, (2, 16, 16, 1)).astype(dtype)
    info = np.iinfo(dtype)
    for make in (
        lambda: RandomGaussianNoise(1.0, stddev=(2.0, 5.0), clip=None, seed=1),
        lambda: RandomGaussianBlur(1.0, sigma=(0.6, 0.8), seed=1),
        lambda: RandomContrast(1.0, factor=(0.8, 1.5), seed=1),
    ):
        as_integers = np.asarray(make()(images, training=True))
        as_floats = np.asarray(make()(images.astype(np.float32), training=True))
        expected = np.clip(np.round(as_floats), info.min, info.max).astype(dtype)
        assert as_integers.dtype == np.dtype(dtype)
        np.testing.assert_array_equal(as_integers, expected)


def test_small_multi_channel_volume_pads_each_channel_with_its_own_minimum():
    # CT (HU, minimum -1000) beside a PET channel (SUV, minimum 0): the padding of the PET
    # channel took the CT's -1000.
    rng = np.random.default_rng(0)
    ct = rng.integers(-1000, 400, (3, 4, 5)).astype(np.float32)
    ct[0, 0, 0] = -1000
    pet = rng.uniform(0.0, 9.0, (3, 4, 5)).astype(np.float32)
    pet[0, 0, 0] = 0.25
    image = np.stack([ct, pet], axis=-1)
    label = np.zeros((3, 4, 5), np.uint8)
    patches = random_patches(
        tf.data.Dataset.from_tensors((image, label)), (5, 4, 7), patches_per_volume=1, seed=0
    )
    patch, _ = next(iter(patches))
    pad = ((1, 1), (0, 0), (1, 1))
    expected = np.stack(
        [np.pad(ct, pad, constant_values=-1000.0), np.pad(pet, pad, constant_values=0.25)], -1
    )
    np.testing.assert_array_equal(patch.numpy(), expected)


def test_calibration_accepts_float16_softmax_files():
    # Softmax computed in float16 (a half-precision model's output layer) sums to 1 only
    # within float16's rounding: 3 classes were refused as "not summing to 1".
    rng = np.random.default_rng(0)
    logits = rng.normal(0.0, 3.0, (40, 40, 3))
    exact = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    stored = tf.nn.softmax(tf.constant(logits, tf.float16)).numpy()
    assert np.abs(stored.astype(np.float64).sum(-1) - 1).max() > 1e-3  # what was refused
    labels = rng.integers(0, 3, (40, 40))
    # numpy reference, Guo et al.: 15 equal bins (lower, upper], |accuracy - confidence|
    confidence = stored.astype(np.float64).max(-1).ravel()
    correct = (stored.argmax(-1) == labels).ravel()
    bins = np.clip(np.ceil(confidence * 15).astype(int) - 1, 0, 14)
    expected = sum(
        abs(correct[bins == b].mean() - confidence[bins == b].mean()) * np.mean(bins == b)
        for b in range(15)
        if np.any(bins == b)
    )
    value = expected_calibration_error(stored, labels, mode="top_label")
    assert value == pytest.approx(expected, rel=1e-9)
    brier = np.mean(np.sum((exact - np.eye(3)[labels]) ** 2, axis=-1))
    assert brier_score(stored, labels) == pytest.approx(brier, abs=2e-3)
    # independent sigmoids, which do not sum to 1, are still refused
    with pytest.raises(ValueError, match="sum to 1"):
        expected_calibration_error(np.full((40, 40, 3), 0.5, np.float16), labels)


@pytest.mark.parametrize(
    "loss", [DiceLoss(), IoULoss(), DiceCELoss(), FocalLoss(), ComboLoss(), TopKLoss()]
)
def test_losses_called_eagerly_refuse_targets_outside_the_label_set(loss):
    # A 0/255 mask gave the Dice loss -0.04 (a "better than perfect" score); label 7 of a
    # 3-class model was one-hot encoded as zeros and left out of every class.
    reference = _hand_worked_masks()
    with pytest.raises(ValueError, match=r"outside the label set.*255.*\[0, 1\]"):
        loss(reference * 255, reference)
    assert np.isfinite(float(loss(reference, reference)))
    labels = np.zeros((1, 4, 4), np.int32)
    labels[0, 3, 0] = 7
    with pytest.raises(ValueError, match=r"1 voxels outside the label set.*0\.\.2"):
        loss(labels, np.full((1, 4, 4, 3), 1 / 3, np.float32))
    soft = np.full((1, 4, 4, 3), 1 / 3, np.float32)  # soft one-hot targets stay accepted
    assert np.isfinite(float(loss(soft, soft)))


def test_disk_cache_is_not_replayed_for_another_window_or_size(tmp_path):
    # Dataset.cache(prefix) reads existing files whatever the pipeline computes now: a rerun
    # with the lung window instead of the abdomen one trained on the abdomen values.
    hounsfield = np.array([-1000, -500, 40, 300], np.int16)
    ct = np.broadcast_to(hounsfield, (2, 4, 4)).copy()
    slices = tf.data.Dataset.from_tensor_slices({"image": ct, "mask": np.zeros_like(ct)})
    prefix = tmp_path / "train"
    for name, (center, width) in (("abdomen", (40.0, 400.0)), ("lung", (-600.0, 1500.0))):
        batches = segmentation_dataset(slices, window=name, batch_size=2, cache=prefix)
        images = np.concatenate([image for image, _ in batches.as_numpy_iterator()])
        expected = np.clip((ct - (center - width / 2)) / width, 0, 1)
        np.testing.assert_allclose(images[..., 0], expected, atol=1e-6)
    batches = segmentation_dataset(slices, window="lung", image_size=(2, 2), cache=prefix)
    assert next(iter(batches))[0].shape[1:3] == (2, 2)
    assert len(list(tmp_path.glob("train-*.index"))) == 3


def test_per_sample_losses_refuse_per_voxel_weight_maps():
    # kseg's losses give one value per sample: a (B, H, W, 1) weight map silently became
    # each sample's mean weight, and (B, H, W) failed with a bare TensorFlow shape error.
    rng = np.random.default_rng(0)
    target = (rng.random((2, 8, 8, 1)) > 0.5).astype(np.float32)
    probabilities = rng.random((2, 8, 8, 1)).astype(np.float32)
    weights = rng.random((2, 8, 8)).astype(np.float32)
    for loss in (DiceLoss(), DiceCELoss(), TopKLoss()):
        for weight_map in (weights, weights[..., None]):
            with pytest.raises(ValueError, match=r"sample_weight of shape \(2, 8, 8"):
                loss(target, probabilities, sample_weight=weight_map)
        per_sample = np.asarray(loss.call(target, probabilities))
        for sample_weight in (np.array([0.25, 1.0]), np.array([[0.25], [1.0]])):
            weighted = float(loss(target, probabilities, sample_weight=sample_weight))
            assert weighted == pytest.approx(np.mean(per_sample * [0.25, 1.0]), rel=1e-6)
