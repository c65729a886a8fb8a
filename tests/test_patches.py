"""kseg.data.patches: the foreground fraction against a binomial bound computed from the
sampling rule, padding of small volumes against numpy, and seeding."""

import numpy as np
import pytest
import tensorflow as tf

from kseg.data.patches import random_patches

VOLUME = (32, 32, 32)
PATCH = (8, 8, 8)
FOREGROUND = (16, 16, 16)


def _volumes(count, foreground=True):
    images = np.random.default_rng(0).normal(size=(count, *VOLUME)).astype(np.float32)
    labels = np.zeros((count, *VOLUME), np.uint8)
    if foreground:
        labels[(slice(None), *FOREGROUND)] = 1
    return tf.data.Dataset.from_tensor_slices(
        {"image": images, "label": labels, "id": [b"x"] * count}
    )


def _centre_is_foreground(labels):
    centre = tuple(size // 2 for size in PATCH)
    return labels[(slice(None), *centre, 0)] > 0


@pytest.mark.parametrize("positive_fraction", [0.0, 0.3])
def test_positive_fraction_over_many_draws(positive_fraction):
    """One foreground voxel in the middle: a positive patch has it at its centre
    (8 // 2 = 4 voxels in), a uniform one only when its start is 12 on all three axes,
    1 in 25**3 of the 25 possible starts per axis."""
    volumes, per_volume = 40, 25
    ds = random_patches(
        _volumes(volumes),
        PATCH,
        positive_fraction=positive_fraction,
        patches_per_volume=per_volume,
        seed=0,
    )
    labels = np.stack([label for _, label in ds.as_numpy_iterator()])
    draws = volumes * per_volume
    assert labels.shape == (draws, *PATCH, 1)
    expected = positive_fraction + (1 - positive_fraction) / 25**3
    observed = _centre_is_foreground(labels).mean()
    tolerance = 4 * np.sqrt(expected * (1 - expected) / draws) + 1e-3
    assert abs(observed - expected) < tolerance


def test_volume_without_foreground_gives_uniform_patches():
    ds = random_patches(_volumes(4, foreground=False), PATCH, positive_fraction=1.0, seed=1)
    labels = np.stack([label for _, label in ds.as_numpy_iterator()])
    assert labels.shape == (16, *PATCH, 1) and not labels.any()


def test_small_volume_is_padded_evenly_with_its_minimum():
    image = np.arange(5 * 6 * 7, dtype=np.float32).reshape(5, 6, 7) + 10.0
    label = np.ones((5, 6, 7), np.uint8)
    ds = random_patches(
        tf.data.Dataset.from_tensors((image, label)), PATCH, patches_per_volume=2, seed=0
    )
    for patch_image, patch_label in ds.as_numpy_iterator():
        assert patch_image.shape == (*PATCH, 1) and patch_image.dtype == np.float32
        assert patch_label.dtype == np.int32
        padding = ((1, 2), (1, 1), (0, 1))
        np.testing.assert_array_equal(
            patch_image[..., 0], np.pad(image, padding, constant_values=10.0)
        )
        np.testing.assert_array_equal(patch_label[..., 0], np.pad(label, padding))


def test_seed_repeats_runs_and_epochs_differ():
    def run(seed):
        ds = random_patches(_volumes(3), PATCH, patches_per_volume=3, seed=seed)
        epochs = [np.stack([image for image, _ in ds.as_numpy_iterator()]) for _ in range(2)]
        return epochs

    first_run, second_run = run(7), run(7)
    np.testing.assert_array_equal(first_run[0], second_run[0])
    np.testing.assert_array_equal(first_run[1], second_run[1])
    assert not np.array_equal(first_run[0], first_run[1])


@pytest.mark.parametrize(
    "kwargs",
    [
        {"patch_size": (8, 8)},
        {"positive_fraction": 1.5},
        {"patches_per_volume": 0},
        {"label_key": "mask"},
    ],
)
def test_bad_arguments_raise_value_error(kwargs):
    with pytest.raises(ValueError):
        random_patches(_volumes(1), **{"patch_size": PATCH, **kwargs})
