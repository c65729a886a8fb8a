"""kseg.data.pipeline against numpy references: windows and scalings against their
formulas and hand-worked values, nearest resizing against numpy strides, crop/pad against
numpy slicing; segmentation_dataset's label handling, order (cache before augmentation)
and determinism."""

import numpy as np
import pytest
import tensorflow as tf

from kseg.augment import RandomGaussianNoise, SegmentationAugmenter
from kseg.data import pipeline
from kseg.data.pipeline import (
    WINDOWS,
    center_crop_or_pad,
    resize,
    scale_intensity,
    segmentation_dataset,
    window,
    z_normalize,
)


def test_window_hand_worked_abdomen_values():
    hounsfield = tf.constant([-1000, -160, -60, 40, 140, 240, 3000], tf.int16)
    np.testing.assert_allclose(
        window(hounsfield, 40, 400), [0.0, 0.0, 0.25, 0.5, 0.75, 1.0, 1.0], atol=1e-7
    )


@pytest.mark.parametrize("preset", sorted(WINDOWS))
def test_window_presets_match_numpy(preset):
    center, width = WINDOWS[preset]
    hounsfield = np.random.default_rng(0).integers(-1024, 3072, size=(32, 32)).astype(np.int16)
    low, high = center - width / 2, center + width / 2
    expected = np.clip((hounsfield.astype(np.float64) - low) / (high - low), 0, 1)
    out = window(hounsfield, center, width)
    assert out.dtype == tf.float32
    np.testing.assert_allclose(out, expected, atol=1e-6)


def test_spleen_msd_window_spans_minus_57_to_164():
    assert WINDOWS["spleen_msd"] == (53.5, 221.0)
    center, width = WINDOWS["spleen_msd"]
    np.testing.assert_allclose(window(tf.constant([-57.0, 164.0]), center, width), [0.0, 1.0])
    # MONAI's ScaleIntensityRange(a_min=-57, a_max=164, b_min=0, b_max=1, clip=True) on a
    # numpy volume, as the spleen example windows whole volumes
    hu = np.array([-1000, -57, 53.5, 164, 400], np.float32)
    np.testing.assert_allclose(window(hu, center, width).numpy(), [0.0, 0.0, 0.5, 1.0, 1.0])


def test_scale_intensity_and_z_normalize_match_numpy():
    pixels = np.random.default_rng(1).integers(0, 256, size=(20, 30)).astype(np.uint8)
    np.testing.assert_allclose(scale_intensity(pixels, 0, 255), pixels / 255.0, atol=1e-6)
    span = pixels.max() - pixels.min()
    np.testing.assert_allclose(scale_intensity(pixels), (pixels - pixels.min()) / span, atol=1e-6)
    np.testing.assert_array_equal(scale_intensity(np.full((3, 3), 7.0)), np.zeros((3, 3)))

    values = pixels.astype(np.float64)
    np.testing.assert_allclose(
        z_normalize(pixels), (values - values.mean()) / values.std(), atol=1e-5
    )
    values[:5] = 0
    inside = values != 0
    expected = np.where(inside, (values - values[inside].mean()) / values[inside].std(), 0.0)
    np.testing.assert_allclose(z_normalize(values, nonzero=True), expected, atol=1e-5)


def test_resize_mask_keeps_labels_and_picks_nearest_source_pixels():
    rng = np.random.default_rng(2)
    mask = rng.choice(np.array([0, 3, 7], np.uint8), size=(16, 12, 1))
    image = rng.uniform(size=(16, 12, 1)).astype(np.float32)
    out_image, out_mask = resize(image, mask, (8, 6))
    assert out_image.dtype == tf.float32 and out_image.shape == (8, 6, 1)
    assert out_mask.dtype == tf.uint8
    # Halving with half-pixel centres reads source pixel 2i + 1.
    np.testing.assert_array_equal(out_mask, mask[1::2, 1::2])
    _, upsampled = resize(image, mask, (23, 17))
    assert set(np.unique(upsampled)) <= {0, 3, 7}


def test_center_crop_or_pad_matches_numpy():
    image = np.arange(5 * 8, dtype=np.float32).reshape(5, 8, 1)
    mask = (image % 3).astype(np.uint8)
    out_image, out_mask = center_crop_or_pad(image, mask, (9, 4))
    expected = np.pad(image[:, 2:6], ((2, 2), (0, 0), (0, 0)))
    np.testing.assert_array_equal(out_image, expected)
    np.testing.assert_array_equal(out_mask, np.pad(mask[:, 2:6], ((2, 2), (0, 0), (0, 0))))


def _slices(count=6, size=12, labels=(0, 1, 2, 6)):
    rng = np.random.default_rng(3)
    return {
        "image": rng.integers(-1024, 1500, size=(count, size, size)).astype(np.int16),
        "mask": rng.choice(np.array(labels, np.uint8), size=(count, size, size)),
        "patient_id": np.array([b"p1", b"p2"] * (count // 2)),
        "slice_index": np.arange(count),
    }


def test_binary_dataset_windows_and_maps_labels_to_foreground():
    data = _slices()
    ds = segmentation_dataset(
        tf.data.Dataset.from_tensor_slices(data), window="abdomen", batch_size=4
    )
    batches = list(ds)
    assert [tuple(images.shape) for images, _ in batches] == [(4, 12, 12, 1), (2, 12, 12, 1)]
    images = np.concatenate([images for images, _ in batches])
    masks = np.concatenate([masks for _, masks in batches])
    assert masks.dtype == np.float32
    np.testing.assert_array_equal(masks[..., 0], (data["mask"] > 0).astype(np.float32))
    expected = np.clip((data["image"] + 160.0) / 400.0, 0, 1)
    np.testing.assert_allclose(images[..., 0], expected, atol=1e-6)


def test_label_map_and_multiclass_labels():
    data = _slices()
    source = tf.data.Dataset.from_tensor_slices(data)
    liver = segmentation_dataset(source, label_map={6: 1}, batch_size=6)
    _, masks = next(iter(liver))
    np.testing.assert_array_equal(masks[..., 0], (data["mask"] == 6).astype(np.float32))

    organs = segmentation_dataset(source, num_classes=3, label_map={1: 1, 6: 2}, batch_size=6)
    _, labels = next(iter(organs))
    assert labels.dtype == tf.int32 and labels.shape == (6, 12, 12, 1)
    expected = np.select([data["mask"] == 1, data["mask"] == 6], [1, 2], 0)
    np.testing.assert_array_equal(labels[..., 0], expected)

    unmapped = segmentation_dataset(source, num_classes=3, batch_size=6)
    with pytest.raises(tf.errors.InvalidArgumentError, match="num_classes=3"):
        next(iter(unmapped))


def test_tuple_input_resize_and_drop_remainder():
    data = _slices(count=5)
    source = tf.data.Dataset.from_tensor_slices((data["image"], data["mask"]))
    ds = segmentation_dataset(source, image_size=(8, 8), batch_size=2, drop_remainder=True)
    assert ds.element_spec[0].shape == (2, 8, 8, 1)
    assert len(list(ds)) == 2


def test_cache_sits_before_augmentation_and_seeds_repeat():
    data = _slices(count=4)
    source = tf.data.Dataset.from_tensor_slices(data)

    def build(augment):
        return segmentation_dataset(
            source,
            window="abdomen",
            batch_size=4,
            cache=True,
            shuffle_buffer=4,
            seed=0,
            augment=augment,
        )

    def noise():
        return SegmentationAugmenter([RandomGaussianNoise(1.0, stddev=(0.1, 0.1), seed=1)])

    plain = build(None)
    first, second = (next(iter(plain))[0].numpy() for _ in range(2))
    assert not np.array_equal(first, second)  # reshuffled each epoch...
    np.testing.assert_array_equal(np.sort(first, axis=None), np.sort(second, axis=None))

    augmented = build(noise())
    epoch_one, epoch_two = (next(iter(augmented))[0].numpy() for _ in range(2))
    # ...and augmented afresh each epoch rather than replayed from the cache,
    assert not np.array_equal(np.sort(epoch_one, axis=None), np.sort(epoch_two, axis=None))
    # while the same seeds give the same run.
    again = build(noise())
    np.testing.assert_array_equal(next(iter(again))[0].numpy(), epoch_one)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"window": "kidney"},
        {"window": (40, 0)},
        {"num_classes": 0},
        {"label_map": {6: 2}},
        {"image_size": (0, 4)},
        {"image_key": "pixels"},
    ],
)
def test_bad_arguments_raise_value_error(kwargs):
    with pytest.raises(ValueError):
        segmentation_dataset(tf.data.Dataset.from_tensor_slices(_slices()), **kwargs)


def test_model_input_matches_the_training_images():
    """The inference transform equals what segmentation_dataset feeds training, and both
    equal the HU window formula followed by an antialiased bilinear resize."""
    rng = np.random.default_rng(5)
    hu = rng.integers(-1000, 1000, size=(2, 40, 40)).astype(np.int16)
    examples = {"image": hu, "mask": (hu > 0).astype(np.uint8)}
    prep = pipeline.model_input(window="abdomen", image_size=(16, 16))
    batch, _ = next(iter(pipeline.segmentation_dataset(
        tf.data.Dataset.from_tensor_slices(examples), window="abdomen", image_size=(16, 16),
        batch_size=2)))
    center, width = pipeline.WINDOWS["abdomen"]
    windowed = np.clip((hu.astype(np.float32) - (center - width / 2)) / width, 0, 1)[..., None]
    expected = tf.image.resize(windowed, (16, 16), antialias=True).numpy()
    for index in range(2):
        single = prep({"image": tf.constant(hu[index])}).numpy()
        np.testing.assert_allclose(single, expected[index], atol=1e-6)
        np.testing.assert_allclose(single, batch[index].numpy(), atol=1e-6)
