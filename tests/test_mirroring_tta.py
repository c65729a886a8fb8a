"""Mirroring test-time augmentation of a single planned run (config.json's ``inference``
``mirror_axes``), as nnU-Net predicts: what training flipped, the evaluation averages over.

The model is one 3x3 convolution that copies the upper-left neighbour of each pixel, so a
flip changes its output and the mirrored mean is a known numpy expression: the mean of the
diagonal neighbours that the flips copy.
"""

from __future__ import annotations

import argparse

import keras
import numpy as np
import pytest
from PIL import Image
from test_predict import radiograph_inference, write_run  # tests/ is on sys.path

from kseg.errors import UnreadableFileError
from kseg.plan import rule_mirror_axes
from kseg.predict import checked_inference, inference_model, predict_command
from kseg.recipes import _planned


def upper_left_model() -> keras.Model:
    inputs = keras.Input((None, None, 1))
    layer = keras.layers.Conv2D(1, 3, padding="same", use_bias=False)
    model = keras.Model(inputs, layer(inputs))
    kernel = np.zeros((3, 3, 1, 1), np.float32)
    kernel[0, 0] = 1.0  # output[r, c] = input[r - 1, c - 1], zero outside
    layer.set_weights([kernel])
    return model


def mirrored_reference(image: np.ndarray, axes) -> np.ndarray:
    """Mean over every flip subset of ``axes`` of flip(upper-left copy of flip(image))."""
    padded = np.pad(image, 1)
    rows, columns = image.shape
    outputs = []
    for row_shift in ([-1, 1] if 0 in axes else [-1]):
        for column_shift in ([-1, 1] if 1 in axes else [-1]):
            outputs.append(padded[1 + row_shift: 1 + row_shift + rows,
                                  1 + column_shift: 1 + column_shift + columns])  # fmt: skip
    return np.mean(outputs, axis=0)


@pytest.mark.parametrize("axes", [[0], [1], [0, 1]])
def test_inference_model_is_the_mean_over_flips(axes):
    image = np.random.default_rng(0).random((7, 9)).astype(np.float32)
    model = inference_model(upper_left_model(), {"mirror_axes": axes})
    predicted = model.predict_on_batch(image[None, ..., None])[0, ..., 0]
    np.testing.assert_allclose(predicted, mirrored_reference(image, axes), atol=1e-6)


def test_no_axes_keep_the_model_itself():
    model = upper_left_model()
    assert inference_model(model, {}) is model
    assert inference_model(model, {"mirror_axes": []}) is model


def test_predict_mirrors_as_config_json_says(tmp_path):
    pixels = np.random.default_rng(1).integers(0, 256, (12, 10)).astype(np.uint8)
    Image.fromarray(pixels).save(tmp_path / "chest.png")
    scaled = (pixels - pixels.min()) / (pixels.max() - pixels.min())
    for axes in ([], [0, 1]):
        run = write_run(tmp_path / f"run{len(axes)}", upper_left_model(),
                        radiograph_inference((12, 10), mirror_axes=axes))  # fmt: skip
        [written] = predict_command(run, tmp_path / "chest.png", tmp_path / f"out{len(axes)}",
                                    "png")  # fmt: skip
        expected = mirrored_reference(scaled, axes) >= 0.5
        np.testing.assert_array_equal(np.asarray(Image.open(written)) > 0, expected)


@pytest.mark.parametrize("axes", [[0, 0], [2], ["0"], [True], 1, [-1]])
def test_bad_mirror_axes_are_named(axes):
    with pytest.raises(UnreadableFileError, match=r"config.json: inference mirror_axes"):
        checked_inference(radiograph_inference((8, 8), mirror_axes=axes), "config.json")


def test_a_planned_run_mirrors_what_its_augmentation_flipped():
    planned = argparse.Namespace(plan="auto")
    flips_both = _planned.nnunet_augmenter(32, "CT", (0, 1), seed=0)
    assert _planned.mirror_axes(planned, flips_both, ["liver"]) == [0, 1]
    # never the left-right axis of left/right classes
    assert _planned.mirror_axes(planned, flips_both, ["lung_left", "lung_right"]) == [0]
    no_flips = _planned.nnunet_augmenter(32, "XRAY", (), seed=0)
    assert _planned.mirror_axes(planned, no_flips, ["liver"]) == []
    # the hand-picked recipes predict without test-time augmentation
    assert _planned.mirror_axes(argparse.Namespace(plan="none"), flips_both, ["liver"]) == []


def test_radiographs_are_not_mirrored_by_the_plan():
    assert rule_mirror_axes(2, ["lungs"], "XRAY") == ()
    assert rule_mirror_axes(2, ["lungs"], "CT") == (0, 1)
