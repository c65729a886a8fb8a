"""Sliding-window inference against hand-worked window grids and a numpy blending reference."""

import itertools
import math

import numpy as np
import pytest

from kseg.errors import AlignmentError
from kseg.inference import gaussian_importance_map, sliding_window, window_starts


def identity(batch):
    return batch


@pytest.mark.parametrize(
    "size, roi, overlap, expected",
    [
        (110, 64, 0.5, [0, 23, 46]),  # the example in nnU-Net's compute_steps_for_sliding_window
        (64, 64, 0.5, [0]),
        (10, 4, 0.5, [0, 2, 4, 6]),
        (7, 4, 0.5, [0, 2, 3]),  # step 1.5: 1.5 rounds half to even, as numpy does
        (9, 3, 0.0, [0, 3, 6]),
        (10, 4, 0.0, [0, 3, 6]),  # ceil(6 / 4) + 1 = 3 windows, spread evenly
        (4, 1, 0.75, [0, 1, 2, 3]),  # sub-voxel step: repeated starts are dropped
    ],
)
def test_window_starts_hand_worked(size, roi, overlap, expected):
    assert window_starts(size, roi, overlap) == expected


@pytest.mark.parametrize("size, roi, overlap", [(100, 17, 0.5), (33, 32, 0.25), (512, 96, 0.25)])
def test_window_starts_touch_both_borders_and_respect_the_step(size, roi, overlap):
    starts = window_starts(size, roi, overlap)
    assert starts[0] == 0 and starts[-1] == size - roi
    assert len(starts) == math.ceil((size - roi) / (roi * (1 - overlap))) + 1
    assert max(np.diff(starts)) <= math.ceil(roi * (1 - overlap))


def test_gaussian_map_positive_symmetric_peak_at_centre():
    weights = gaussian_importance_map((9, 8, 5))
    assert weights.dtype == np.float32 and weights.shape == (9, 8, 5)
    assert weights.min() > 0
    assert weights.max() == 1.0
    assert np.unravel_index(np.argmax(weights), weights.shape) == (4, 3, 2)
    assert weights[4, 3, 2] == weights[4, 4, 2]  # even axis: two middle voxels share the peak
    np.testing.assert_array_equal(weights, weights[::-1, ::-1, ::-1])
    # corner value from the closed form exp(-d^2 / (2 sigma^2)), sigma = roi / 8, divided by
    # the peak (at distance 0.5 from the centre on even axes)
    corner = math.prod(
        math.exp(-0.5 * (((n - 1) / 2) / (n / 8)) ** 2)
        / math.exp(-0.5 * ((n % 2 == 0) * 0.5 / (n / 8)) ** 2)
        for n in (9, 8, 5)
    )
    assert weights[0, 0, 0] == pytest.approx(corner, rel=1e-5)


def test_gaussian_map_underflow_is_clamped_to_smallest_nonzero_weight():
    weights = gaussian_importance_map((64,), sigma_scale=0.01)
    offsets = np.arange(64) - 31.5
    raw = np.exp(-0.5 * (offsets / 0.64) ** 2)
    raw = (raw / raw.max()).astype(np.float32)
    assert (raw == 0).any()  # the case under test: the tails underflow
    expected = np.where(raw == 0, raw[raw > 0].min(), raw)
    np.testing.assert_array_equal(weights, expected)


@pytest.mark.parametrize("blend", ["gaussian", "constant"])
@pytest.mark.parametrize(
    "shape, roi",
    [
        ((5, 7, 2), (8, 8)),  # smaller than the window: padded and cropped back
        ((8, 8, 1), (8, 8)),  # equal to the window
        ((13, 10, 3), (4, 6)),  # not divisible by the window
        ((3, 11, 6, 1), (4, 4, 4)),  # 3D, smaller along one axis
        ((9, 10, 11, 2), (4, 5, 3)),  # 3D, not divisible
    ],
)
def test_identity_predictor_reproduces_input(shape, roi, blend):
    volume = np.random.default_rng(0).normal(size=shape).astype(np.float32)
    original = volume.copy()
    output = sliding_window(identity, volume, roi, blend=blend, batch_size=3, progress=False)
    assert output.shape == shape and output.dtype == np.float32
    np.testing.assert_allclose(output, volume, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(volume, original)


def test_one_window_per_call_unless_told():
    """MONAI's and nnU-Net's default; on a CPU as fast as larger batches for less memory."""
    volume = np.zeros((10, 12, 1), np.float32)
    calls = []

    def record_batch(batch):
        calls.append(batch.shape[0])
        return batch

    sliding_window(record_batch, volume, (4, 4), overlap=0.5, progress=False)
    windows = len(window_starts(10, 4, 0.5)) * len(window_starts(12, 4, 0.5))
    assert calls == [1] * windows
    calls.clear()
    sliding_window(record_batch, volume, (4, 4), overlap=0.5, batch_size=4, progress=False)
    assert calls == [4] * (windows // 4) + ([windows % 4] if windows % 4 else [])


def test_windows_start_at_zero_and_end_at_the_border():
    shape = (13, 10)
    coordinates = np.stack(np.meshgrid(*map(np.arange, shape), indexing="ij"), axis=-1)
    corners = []

    def record_corners(batch):
        corners.extend(tuple(int(c) for c in window[0, 0]) for window in batch)
        return batch

    sliding_window(record_corners, coordinates, (4, 6), overlap=0.5, progress=False)
    assert sorted(corners) == sorted(itertools.product([0, 2, 4, 5, 7, 9], [0, 2, 4]))


def _reference_blend(volume_shape, roi, starts_per_axis, window_value, weights):
    numerator = np.zeros(volume_shape)
    denominator = np.zeros(volume_shape)
    for corner in itertools.product(*starts_per_axis):
        region = tuple(slice(s, s + r) for s, r in zip(corner, roi, strict=True))
        numerator[region] += weights * window_value(corner)
        denominator[region] += weights
    return numerator / denominator


@pytest.mark.parametrize("blend", ["gaussian", "constant"])
def test_blend_equals_independent_weighted_average(blend):
    # Each window predicts one constant that depends on where it sits: the linear index of
    # its corner voxel, read from the input. The blend must be the weighted average of the
    # constants of the windows covering each voxel.
    shape, roi = (10, 7), (4, 4)
    volume = np.arange(np.prod(shape), dtype=np.float32).reshape(shape + (1,))

    def corner_constant(batch):
        return np.broadcast_to(batch[:, :1, :1, :], batch.shape).copy()

    output = sliding_window(corner_constant, volume, roi, overlap=0.5, blend=blend, progress=False)

    sigma = [r / 8 for r in roi]
    offsets = [np.arange(r) - (r - 1) / 2 for r in roi]
    if blend == "gaussian":
        weights = np.outer(
            np.exp(-0.5 * (offsets[0] / sigma[0]) ** 2), np.exp(-0.5 * (offsets[1] / sigma[1]) ** 2)
        )
    else:
        weights = np.ones(roi)
    expected = _reference_blend(
        shape, roi, ([0, 2, 4, 6], [0, 2, 3]), lambda c: c[0] * shape[1] + c[1], weights
    )
    np.testing.assert_allclose(output[..., 0], expected, rtol=1e-5)
    assert not np.allclose(expected, volume[..., 0])  # the constants really differ per window


def test_output_channels_follow_the_predictor():
    volume = np.ones((6, 6, 1), dtype=np.float32)

    def three_classes(batch):
        return np.concatenate([batch * 0.2, batch * 0.3, batch * 0.5], axis=-1)

    output = sliding_window(three_classes, volume, 4, progress=False)
    np.testing.assert_allclose(output, np.broadcast_to([0.2, 0.3, 0.5], (6, 6, 3)), rtol=1e-6)


def test_edge_padding_is_seen_by_the_predictor():
    volume = np.arange(3, dtype=np.float32).reshape(3, 1)
    seen = []

    def record(batch):
        seen.append(batch[0, :, 0].copy())
        return batch

    sliding_window(record, volume, 7, pad_mode="edge", progress=False)
    np.testing.assert_array_equal(seen[0], [0, 0, 0, 1, 2, 2, 2])


def test_rejects_predictor_that_changes_the_window_shape():
    with pytest.raises(AlignmentError, match="same batch and spatial shape"):
        sliding_window(lambda b: b[:, ::2], np.zeros((8, 8, 1)), 4, progress=False)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"roi_size": (4,)}, "roi_size"),
        ({"roi_size": (4, 0)}, "positive integers"),
        ({"roi_size": 4, "overlap": 1.0}, "overlap"),
        ({"roi_size": 4, "blend": "mean"}, "blend"),
        ({"roi_size": 4, "batch_size": 0}, "batch_size"),
    ],
)
def test_rejects_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        sliding_window(identity, np.zeros((8, 8, 1)), progress=False, **kwargs)
