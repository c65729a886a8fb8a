"""Flip TTA against closed forms."""

import numpy as np
import pytest

from kseg.inference import flip_tta, sliding_window


def cumulative_sum_rows(batch):
    return np.cumsum(batch, axis=1)


def test_flip_average_of_a_cumulative_sum_is_half_total_plus_value():
    # cumsum along rows is not flip-equivariant: flipping the rows, summing and flipping back
    # gives the reverse cumulative sum; the two add up to (column total + value). Flipping the
    # columns commutes with it. The mean over the 4 flips is therefore (total + x) / 2.
    batch = np.random.default_rng(2).normal(size=(2, 5, 4, 1)).astype(np.float32)
    output = flip_tta(cumulative_sum_rows)(batch)
    expected = (batch.sum(axis=1, keepdims=True) + batch) / 2
    np.testing.assert_allclose(output, expected, rtol=1e-5, atol=1e-6)


def test_only_requested_axes_are_flipped():
    batch = np.random.default_rng(3).normal(size=(1, 5, 4, 1)).astype(np.float32)
    calls = []

    def record(x):
        calls.append(x.copy())
        return cumulative_sum_rows(x)

    output = flip_tta(record, axes=[1])(batch)
    assert len(calls) == 2
    np.testing.assert_array_equal(calls[1], batch[:, :, ::-1])
    np.testing.assert_allclose(output, np.cumsum(batch, axis=1), rtol=1e-5, atol=1e-6)


def test_equivariant_predictor_is_unchanged_and_composes_with_sliding_window():
    volume = np.random.default_rng(4).uniform(size=(6, 7, 5, 1)).astype(np.float32)
    output = sliding_window(flip_tta(np.square), volume, 4, progress=False)
    np.testing.assert_allclose(output, volume**2, rtol=1e-5)


def test_rejects_axis_outside_the_batch():
    with pytest.raises(ValueError, match="not a spatial axis"):
        flip_tta(np.square, axes=[2])(np.zeros((1, 4, 4, 1)))


def test_spatial_transforms_are_the_distinct_flips_and_turns_and_invert_exactly():
    from kseg.inference import spatial_transforms

    batch = np.random.default_rng(8).normal(size=(2, 4, 4, 3)).astype(np.float32)
    transforms = spatial_transforms(batch.shape[1:-1])
    # the dihedral group of the square: 4 turns, each with or without a mirror
    images = {t.apply(batch).tobytes() for t in transforms}
    expected = {
        np.rot90(np.flip(batch, 1) if mirror else batch, k, axes=(1, 2)).tobytes()
        for k in range(4)
        for mirror in (False, True)
    }
    assert len(transforms) == 8 and images == expected
    np.testing.assert_array_equal(transforms[0].apply(batch), batch)
    for transform in transforms:
        np.testing.assert_array_equal(transform.invert(transform.apply(batch)), batch)

    volume = np.arange(2 * 3 * 4 * 5).reshape(1, 2, 3, 4, 5)  # (n, Z, H, W, C)
    assert len(spatial_transforms((2, 3, 4))) == 8  # H != W: half turn only, equal to 2 flips
    assert len(spatial_transforms((2, 4, 4))) == 16
    for transform in spatial_transforms((2, 3, 4)):
        assert transform.apply(volume).shape == volume.shape
        np.testing.assert_array_equal(transform.invert(transform.apply(volume)), volume)
    assert len(spatial_transforms((4, 4), rotation_plane=None, flip_axes=[1])) == 2


def test_spatial_transforms_reject_axes_outside_the_grid():
    from kseg.inference import spatial_transforms

    with pytest.raises(ValueError, match="flip_axes"):
        spatial_transforms((4, 4), flip_axes=[2])
    with pytest.raises(ValueError, match="rotation_plane"):
        spatial_transforms((4, 4), rotation_plane=(0, 0))
    with pytest.raises(ValueError, match="rotation_plane"):
        spatial_transforms((4, 4, 4), rotation_plane=(0, 3))
