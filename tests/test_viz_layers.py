"""kseg.viz viewer layers: grey levels, mask layers and PNG bytes, checked pixel by pixel.

PNG content is decoded with Pillow and compared with arrays worked out by hand.
"""

import io

import numpy as np
import pytest

pytest.importorskip("matplotlib")

from PIL import Image  # noqa: E402

from kseg import viz  # noqa: E402


def decoded(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)))


def test_grey_levels_map_the_window_to_0_255_and_clip_outside():
    image = np.array([[-100.0, 0.0, 50.0], [100.0, 25.0, 300.0]])
    levels = viz.grey_levels(image, window=(0, 100))
    # 25 -> 63.75 -> 64; 50 -> 127.5 -> 128 (numpy rounds half to even)
    np.testing.assert_array_equal(levels, [[0, 0, 128], [255, 64, 255]])
    assert levels.dtype == np.uint8


def test_grey_levels_default_to_the_image_range_and_show_constants_mid_grey():
    np.testing.assert_array_equal(viz.grey_levels(np.array([[2.0, 4.0, 6.0]])), [[0, 128, 255]])
    np.testing.assert_array_equal(viz.grey_levels(np.full((2, 2), 7.0)), np.full((2, 2), 128))


@pytest.mark.parametrize("image, window, message", [
    (np.zeros(4), None, "image must be a 2D array"),
    (np.array([[np.nan, 1.0]]), None, "NaN or inf"),
    (np.zeros((2, 2)), (1, 0), "window must be finite with low < high"),
])  # fmt: skip
def test_grey_levels_reject_bad_input(image, window, message):
    with pytest.raises(ValueError, match=message):
        viz.grey_levels(image, window=window)


def test_label_layer_outlines_a_square_opaque_and_fills_inside_with_fill_alpha():
    mask = np.zeros((7, 7), dtype=bool)
    mask[1:6, 2:6] = True  # 5 rows x 4 columns
    layer = viz.label_layer(mask, viz.REFERENCE_COLOR, fill_alpha=0.4)
    assert layer.shape == (7, 7, 4) and layer.dtype == np.uint8
    expected_alpha = np.zeros((7, 7), dtype=np.uint8)
    expected_alpha[1:6, 2:6] = 255
    expected_alpha[2:5, 3:5] = 102  # round(255 * 0.4)
    np.testing.assert_array_equal(layer[..., 3], expected_alpha)
    np.testing.assert_array_equal(layer[mask, :3], np.tile([0, 204, 0], (mask.sum(), 1)))
    np.testing.assert_array_equal(layer[~mask], 0)


def test_label_layer_closes_masks_at_the_image_edge_and_borders_between_labels():
    labels = np.zeros((4, 6), dtype=np.uint8)
    labels[:, :3] = 1
    labels[:, 3:] = 2
    alpha = viz.label_layer(labels, viz.PREDICTION_COLOR, fill_alpha=0.0)[..., 3]
    # every pixel touches the edge or the other label, except the inner columns 1 and 4
    expected = np.full((4, 6), 255, dtype=np.uint8)
    expected[1:3, [1, 4]] = 0
    np.testing.assert_array_equal(alpha, expected)


@pytest.mark.parametrize("arguments, message", [
    ((np.zeros((2, 2, 2)), (1, 0, 0)), "labels must be a 2D array"),
    ((np.array([[0.5, 0]]), (1, 0, 0)), "whole non-negative labels"),
    ((np.zeros((2, 2)), (1, 0)), "color must be an RGB triple"),
    ((np.zeros((2, 2)), (2, 0, 0)), "color must be an RGB triple"),
    ((np.zeros((2, 2)), "red"), "color must be an RGB triple"),
])  # fmt: skip
def test_label_layer_rejects_bad_input(arguments, message):
    with pytest.raises(ValueError, match=message):
        viz.label_layer(*arguments)


def test_label_layer_rejects_fill_alpha_outside_0_1():
    with pytest.raises(ValueError, match=r"alpha must be in \[0, 1\]"):
        viz.label_layer(np.zeros((2, 2)), viz.REFERENCE_COLOR, fill_alpha=1.5)


@pytest.mark.parametrize("shape", [(5, 3), (5, 3, 3), (5, 3, 4)])
def test_png_bytes_round_trips_8_bit_arrays_pixel_for_pixel(shape):
    array = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
    np.testing.assert_array_equal(decoded(viz.png_bytes(array)), array)


def test_png_bytes_of_a_layer_over_grey_composes_as_a_browser_would():
    grey = np.full((6, 6), 100, dtype=np.uint8)
    mask = np.zeros((6, 6), dtype=bool)
    mask[1:5, 1:5] = True
    layer = decoded(viz.png_bytes(viz.label_layer(mask, viz.PREDICTION_COLOR, fill_alpha=0.5)))
    alpha = layer[..., 3:] / 255
    composed = alpha * layer[..., :3] + (1 - alpha) * grey[..., None]
    np.testing.assert_allclose(composed[0, 0], [100, 100, 100])  # outside: grey
    np.testing.assert_allclose(composed[1, 1], [255, 0, 255])  # border: magenta
    # inside: round(255 * 0.5) = 128 of magenta over grey 100
    np.testing.assert_allclose(composed[2, 2], 128 / 255 * np.array([255, 0, 255])
                               + (1 - 128 / 255) * 100)  # fmt: skip


def test_png_bytes_renders_a_figure_at_its_size_times_dpi():
    figure = viz.overlay(np.zeros((4, 4)))
    png = decoded(viz.png_bytes(figure, dpi=50))
    assert png.shape[:2] == (300, 300)  # 6 x 6 inches at 50 dpi


@pytest.mark.parametrize("picture, message", [
    (np.zeros((2, 2)), "must be a uint8 array"),
    (np.zeros((2, 2, 2), np.uint8), "must be \\(rows, columns\\)"),
    (np.zeros((0, 3), np.uint8), "must be \\(rows, columns\\)"),
    ([[0, 1]], "matplotlib Figure or a uint8 array"),
])  # fmt: skip
def test_png_bytes_rejects_other_pictures(picture, message):
    with pytest.raises(ValueError, match=message):
        viz.png_bytes(picture)


def test_accuracy_vs_dice_takes_a_generator_of_pairs():
    def pairs():
        for shift in (0, 2):
            truth = np.zeros((10, 10), bool)
            truth[2:6, 2:6] = True
            yield truth, np.roll(truth, shift, axis=1)

    figure = viz.accuracy_vs_dice(pairs())
    points = next(c for c in figure.axes[0].collections if c.get_gid() == "cases")
    # shift 2: 8 of 16 pixels overlap -> Dice 0.5; 8 missed + 8 extra of 100 -> accuracy 0.84
    np.testing.assert_allclose(points.get_offsets(), [[1.0, 1.0], [0.5, 0.84]])
