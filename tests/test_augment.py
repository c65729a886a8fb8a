"""kseg.augment against numpy/scipy references: flips and quarter turns against np.flip /
np.rot90, resampling against scipy.ndimage.map_coordinates, blur against
scipy.ndimage.gaussian_filter, contrast against its formula, probabilities against binomial
bounds; plus image/mask alignment, XLA compilation and the in-train-step placement."""

import keras
import numpy as np
import pytest
import tensorflow as tf
from keras_harness import run_serialization_test
from scipy import ndimage

from kseg.augment import (
    AugmentedModel,
    RandomAffine,
    RandomApply,
    RandomAxisFlip,
    RandomContrast,
    RandomElasticDeformation,
    RandomGaussianBlur,
    RandomGaussianNoise,
    RandomRotate90,
    SegmentationAugmenter,
    sample_at,
    segmentation_augmenter,
)


def _labels(shape, seed=0):
    """Blocky integer label maps (labels 0, 1, 2) with a random offset per sample."""
    rng = np.random.default_rng(seed)
    labels = np.zeros(shape, np.int32)
    spatial = shape[1:-1]
    for sample in range(shape[0]):
        start = rng.integers(1, 4, len(spatial))
        labels[(sample, *(slice(s, s + n // 2) for s, n in zip(start, spatial, strict=True)))] = 1
        labels[(sample, *(slice(n // 2 + 1, n - 1) for n in spatial))] = 2
    return labels


def _binomial_tolerance(n, p, sigmas=4.0):
    return sigmas * np.sqrt(p * (1 - p) / n)


def test_keras_random_flip_moves_image_and_mask_together():
    images = np.arange(4 * 6 * 5, dtype=np.float32).reshape(4, 6, 5, 1)
    masks = _labels((4, 6, 5, 1))
    flip = keras.layers.RandomFlip("horizontal", seed=3)
    out = flip({"images": images, "segmentation_masks": masks})
    out_images, out_masks = np.asarray(out["images"]), np.asarray(out["segmentation_masks"])
    for sample in range(4):
        flipped = not np.array_equal(out_images[sample], images[sample])
        if flipped:
            np.testing.assert_array_equal(out_images[sample], np.flip(images[sample], axis=1))
        expected_mask = np.flip(masks[sample], axis=1) if flipped else masks[sample]
        np.testing.assert_array_equal(out_masks[sample], expected_mask)


@pytest.mark.parametrize(
    "shape, axes", [((6, 5, 5, 1), (0, 1)), ((6, 3, 4, 4, 1), (1, 2)), ((6, 4, 3, 4, 1), (0, 2))]
)
def test_rotate90_matches_numpy_rot90_for_image_and_mask(shape, axes):
    images = np.arange(np.prod(shape), dtype=np.float32).reshape(shape)
    masks = _labels(shape)
    layer = RandomRotate90(spatial_dims=len(shape) - 2, axes=axes, probability=1.0, seed=1)
    out = layer({"images": images, "segmentation_masks": masks})
    batch_axes = tuple(a + 1 for a in axes)
    turns_seen = set()
    for sample in range(shape[0]):
        matches = [
            k
            for k in (1, 2, 3)
            if np.array_equal(out["images"][sample], np.rot90(images, k, batch_axes)[sample])
        ]
        assert len(matches) == 1, f"sample {sample} is not a quarter turn of its input"
        turns_seen.add(matches[0])
        expected = np.rot90(masks, matches[0], batch_axes)[sample]
        np.testing.assert_array_equal(out["segmentation_masks"][sample], expected)
    assert len(turns_seen) >= 2


def test_rotate90_rejects_non_square_plane():
    with pytest.raises(ValueError, match="square"):
        RandomRotate90(spatial_dims=2, probability=1.0)(np.zeros((1, 4, 5, 1), np.float32))


def test_axis_flip_3d_matches_numpy_flip_per_sample():
    shape = (8, 3, 4, 5, 1)
    images = np.arange(np.prod(shape), dtype=np.float32).reshape(shape)
    masks = _labels(shape)
    out = RandomAxisFlip(spatial_dims=3, probability=0.5, seed=2)(
        {"images": images, "segmentation_masks": masks}
    )
    combinations = [(), (0,), (1,), (2,), (0, 1), (0, 2), (1, 2), (0, 1, 2)]
    seen = set()
    for sample in range(shape[0]):
        found = [
            axes
            for axes in combinations
            if np.array_equal(out["images"][sample], np.flip(images[sample], axes))
        ]
        assert len(found) == 1
        seen.add(found[0])
        np.testing.assert_array_equal(
            out["segmentation_masks"][sample], np.flip(masks[sample], found[0])
        )
    assert len(seen) >= 3
    everything = RandomAxisFlip(spatial_dims=3, probability=1.0)(images)
    np.testing.assert_array_equal(everything, np.flip(images, (1, 2, 3)))


SPATIAL_LAYERS = [
    lambda d: RandomAxisFlip(d, probability=0.7, seed=0),
    lambda d: RandomRotate90(d, probability=1.0, seed=0),
    lambda d: RandomAffine(
        d,
        rotation=30.0,
        scale=(0.8, 1.2),
        translation=0.1,
        probability=1.0,
        interpolation="nearest",
        seed=0,
    ),
    lambda d: RandomElasticDeformation(
        d,
        control_points=4,
        max_displacement=0.15,
        probability=1.0,
        interpolation="nearest",
        seed=0,
    ),
]


@pytest.mark.parametrize("shape", [(4, 24, 24, 1), (2, 12, 12, 12, 1)])
@pytest.mark.parametrize("make_layer", SPATIAL_LAYERS)
def test_spatial_layers_move_mask_with_image(shape, make_layer):
    """An image equal to its mask must stay equal to it: one coordinate map for both."""
    masks = _labels(shape)
    layer = make_layer(len(shape) - 2)
    out = layer({"images": masks.astype(np.float32), "segmentation_masks": masks})
    out_images, out_masks = np.asarray(out["images"]), np.asarray(out["segmentation_masks"])
    assert out_masks.dtype == np.int32
    assert not np.array_equal(out_masks, masks)
    np.testing.assert_array_equal(out_images, out_masks.astype(np.float32))
    assert set(np.unique(out_masks)) <= {0, 1, 2}


def test_linear_affine_keeps_mask_labels_and_masks_stay_nearest():
    masks = _labels((4, 24, 24, 1)) * 3  # labels 0, 3, 6
    out = RandomAffine(2, rotation=20.0, probability=1.0, seed=5)(
        {"images": masks.astype(np.float32), "segmentation_masks": masks}
    )
    assert set(np.unique(out["segmentation_masks"])) <= {0, 3, 6}
    interpolated = np.asarray(out["images"])
    assert np.any((interpolated % 3) != 0)  # the image was interpolated, the mask was not


def test_affine_zoom_matches_hand_worked_nearest_indices():
    """Scale 2 about the centre of a 5x5 grid reads source index p/2 + 1, rounded half up."""
    image = np.arange(25, dtype=np.float32).reshape(1, 5, 5, 1)
    layer = RandomAffine(
        2, rotation=0.0, scale=(2.0, 2.0), probability=1.0, interpolation="nearest"
    )
    source = [1, 2, 2, 3, 3]
    np.testing.assert_array_equal(layer(image)[0, ..., 0], image[0, ..., 0][source][:, source])


@pytest.mark.parametrize("interpolation, order", [("linear", 1), ("nearest", 0)])
@pytest.mark.parametrize("spatial", [(7, 6), (5, 4, 6)])
def test_resample_matches_scipy_map_coordinates(interpolation, order, spatial):
    rng = np.random.default_rng(1)
    volume = rng.normal(size=(2, *spatial, 2)).astype(np.float32)
    coordinates = rng.uniform(-1.5, max(spatial) + 0.5, size=(2, 9, 4, len(spatial)))
    coordinates = coordinates.astype(np.float32)
    out = np.asarray(sample_at(volume, coordinates, interpolation, fill_value=-2.0))
    for sample in range(2):
        for channel in range(2):
            expected = ndimage.map_coordinates(
                volume[sample, ..., channel],
                np.moveaxis(coordinates[sample], -1, 0),
                order=order,
                mode="grid-constant",
                cval=-2.0,
            )
            np.testing.assert_allclose(out[sample, ..., channel], expected, atol=1e-5)


@pytest.mark.parametrize("shape", [(3, 16, 16, 1), (2, 8, 8, 8, 1)])
@pytest.mark.parametrize(
    "layer",
    [
        RandomGaussianNoise(1.0, clip=None),
        RandomContrast(1.0),
        RandomGaussianBlur(1.0),
    ],
)
def test_intensity_layers_leave_masks_bit_identical(shape, layer):
    layer = layer.__class__.from_config({**layer.get_config(), "spatial_dims": len(shape) - 2})
    rng = np.random.default_rng(0)
    images = rng.uniform(size=shape).astype(np.float32)
    masks = _labels(shape).astype(np.uint8)
    out = layer({"images": images, "segmentation_masks": masks})
    assert np.asarray(out["segmentation_masks"]).dtype == np.uint8
    np.testing.assert_array_equal(out["segmentation_masks"], masks)
    assert not np.allclose(out["images"], images)


def test_noise_probability_and_stddev_range():
    samples, p = 1500, 0.3
    images = np.full((samples, 32, 32, 1), 0.5, np.float32)
    layer = RandomGaussianNoise(p, stddev=(0.01, 0.05), clip=None, seed=7)
    noise = np.asarray(layer(images)) - images
    noisy = np.any(noise != 0, axis=(1, 2, 3))
    assert abs(noisy.mean() - p) < _binomial_tolerance(samples, p)
    stddevs = noise[noisy].std(axis=(1, 2, 3))
    # 1024 voxels estimate a deviation to about 2 %; allow 10 %.
    assert stddevs.min() > 0.01 * 0.9 and stddevs.max() < 0.05 * 1.1
    assert stddevs.max() - stddevs.min() > 0.02  # drawn per sample, not one per batch


def test_noise_clips_only_the_augmented_samples():
    images = np.stack([np.full((8, 8, 1), -3.0, np.float32), np.full((8, 8, 1), 0.5, np.float32)])
    out = np.asarray(RandomGaussianNoise(0.0, clip=(0.0, 1.0))(images))
    np.testing.assert_array_equal(out, images)
    out = np.asarray(RandomGaussianNoise(1.0, stddev=(0.5, 0.5), clip=(0.0, 1.0))(images))
    assert out.min() >= 0.0 and out.max() <= 1.0


def test_contrast_matches_numpy_formula_and_preserves_mean():
    rng = np.random.default_rng(3)
    images = rng.uniform(size=(64, 10, 12, 2)).astype(np.float32)
    out = np.asarray(RandomContrast(1.0, factor=(0.8, 1.5), preserve_range=False, seed=0)(images))
    mean = images.mean(axis=(1, 2), keepdims=True)
    np.testing.assert_allclose(out.mean(axis=(1, 2), keepdims=True), mean, atol=1e-5)
    factors = (out - mean)[..., :1].std(axis=(1, 2, 3)) / (images - mean)[..., :1].std(
        axis=(1, 2, 3)
    )
    assert factors.min() >= 0.8 - 1e-4 and factors.max() <= 1.5 + 1e-4
    assert factors.max() - factors.min() > 0.3
    expected = (images - mean) * factors[:, None, None, None] + mean
    np.testing.assert_allclose(out, expected, atol=1e-5)

    fixed = np.asarray(RandomContrast(1.0, factor=(1.5, 1.5), preserve_range=True)(images))
    low, high = images.min(axis=(1, 2), keepdims=True), images.max(axis=(1, 2), keepdims=True)
    np.testing.assert_allclose(fixed, np.clip((images - mean) * 1.5 + mean, low, high), atol=1e-5)


@pytest.mark.parametrize("shape", [(2, 9, 11, 1), (2, 6, 7, 8, 1)])
def test_blur_matches_scipy_gaussian_filter(shape):
    rng = np.random.default_rng(4)
    images = rng.uniform(size=shape).astype(np.float32)
    sigma = 0.7
    layer = RandomGaussianBlur(1.0, sigma=(sigma, sigma), spatial_dims=len(shape) - 2)
    out = np.asarray(layer(images))
    spatial_sigma = (0.0,) + (sigma,) * (len(shape) - 2) + (0.0,)
    expected = ndimage.gaussian_filter(
        images, spatial_sigma, mode="reflect", truncate=layer.radius / sigma
    )
    np.testing.assert_allclose(out, expected, atol=1e-5)


def test_random_apply_probability_per_sample_with_mask():
    samples, p = 800, 0.4
    images = np.tile(np.arange(6, dtype=np.float32).reshape(1, 1, 6, 1), (samples, 3, 1, 1))
    masks = images.astype(np.int32)
    layer = RandomApply(keras.layers.RandomFlip("horizontal", seed=0), probability=p, seed=1)
    out = layer({"images": images, "segmentation_masks": masks})
    changed = np.any(np.asarray(out["images"]) != images, axis=(1, 2, 3))
    # Keras flips half the samples; RandomApply keeps p of those.
    assert abs(changed.mean() - p / 2) < _binomial_tolerance(samples, p / 2)
    np.testing.assert_array_equal(np.asarray(out["images"]), np.asarray(out["segmentation_masks"]))


def test_inference_passes_batch_through_untouched():
    rng = np.random.default_rng(5)
    images = rng.uniform(size=(2, 16, 16, 1)).astype(np.float32)
    masks = _labels((2, 16, 16, 1))
    out = segmentation_augmenter(seed=0)(
        {"images": images, "segmentation_masks": masks}, training=False
    )
    np.testing.assert_array_equal(out["images"], images)
    np.testing.assert_array_equal(out["segmentation_masks"], masks)


def test_unbatched_sample_is_augmented_like_a_batch_of_one():
    image = np.arange(16, dtype=np.float32).reshape(4, 4, 1)
    out = RandomAxisFlip(2, axes=(1,), probability=1.0)(image)
    np.testing.assert_array_equal(out, np.flip(image, 1))


@pytest.mark.parametrize("spatial_dims, shape", [(2, (4, 32, 32, 1)), (3, (2, 16, 16, 16, 1))])
def test_default_augmenter_compiles_under_xla(spatial_dims, shape):
    augmenter = segmentation_augmenter(spatial_dims, seed=0)
    masks = _labels(shape).astype(np.uint8)
    images = np.random.default_rng(0).uniform(size=shape).astype(np.float32)
    compiled = tf.function(lambda batch: augmenter(batch, training=True), jit_compile=True)
    out = compiled({"images": images, "segmentation_masks": masks})
    assert out["images"].shape == shape and out["images"].dtype == tf.float32
    assert out["segmentation_masks"].dtype == tf.uint8
    assert set(np.unique(out["segmentation_masks"])) <= {0, 1, 2}
    assert not np.array_equal(out["images"], images)


def test_augmenter_config_round_trip():
    augmenter = segmentation_augmenter(2, seed=3)
    restored = run_serialization_test(augmenter)
    assert [type(layer) for layer in restored.augmentation_layers] == [
        type(layer) for layer in augmenter.augmentation_layers
    ]


@pytest.mark.parametrize(
    "build",
    [
        lambda: RandomGaussianNoise(probability=1.5),
        lambda: RandomContrast(factor=(1.5, 0.8)),
        lambda: RandomGaussianBlur(sigma=(0.0, 0.5)),
        lambda: RandomAffine(3, rotation=(10.0, 5.0)),
        lambda: RandomAxisFlip(2, axes=(2,)),
        lambda: segmentation_augmenter(spatial_dims=4),
    ],
)
def test_bad_arguments_raise(build):
    with pytest.raises(ValueError):
        build()


def test_augmented_model_augments_jointly_in_fit_only():
    """Identity model, y == x: the training loss is the added noise's variance only if the
    flip moved x and y together; evaluate and predict see the data unaugmented."""
    inputs = keras.Input((16, 16, 1))
    identity = keras.layers.Conv2D(1, 1, use_bias=False, kernel_initializer="ones")(inputs)
    network = keras.Model(inputs, identity)
    x = np.zeros((8, 16, 16, 1), np.float32)
    x[:, 2:6, 1:11] = 1.0  # not mirror-symmetric: flipping x alone would add 0.22 loss
    stddev = 0.1
    augmenter = SegmentationAugmenter(
        [
            RandomAxisFlip(2, axes=(1,), probability=1.0),
            RandomGaussianNoise(1.0, stddev=(stddev, stddev), clip=None, seed=0),
        ]
    )
    model = AugmentedModel(network, augmenter)
    model.compile(optimizer=keras.optimizers.SGD(0.0), loss="mse", jit_compile=True)
    history = model.fit(x, x, batch_size=8, epochs=1, verbose=0)
    # the mean of 2048 squared N(0, s^2) draws has a standard deviation of s^2 * sqrt(2/2048)
    assert abs(history.history["loss"][0] - stddev**2) < 5 * stddev**2 * np.sqrt(2 / 2048)
    assert model.evaluate(x, x, verbose=0) == 0.0
    np.testing.assert_array_equal(model.predict(x, verbose=0), x)


def test_augmented_model_reloads_from_keras_file(tmp_path):
    inputs = keras.Input((8, 8, 1))
    identity = keras.layers.Conv2D(1, 1, use_bias=False, kernel_initializer="ones")(inputs)
    model = AugmentedModel(keras.Model(inputs, identity), segmentation_augmenter(seed=0))
    x = np.random.default_rng(0).uniform(size=(2, 8, 8, 1)).astype(np.float32)
    model(x)
    model.save(tmp_path / "augmented.keras")
    restored = keras.models.load_model(tmp_path / "augmented.keras")
    assert isinstance(restored.augmenter, SegmentationAugmenter)
    assert len(restored.augmenter.augmentation_layers) == 7
    np.testing.assert_allclose(restored.predict(x, verbose=0), x, rtol=1e-6)
