"""Radiographs and their masks as archives and users ship them: inputs that were read wrongly
without a word, each checked against a file written directly with Pillow / pydicom here."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from PIL import Image

from kseg.errors import MaskError
from kseg.io import LabelRule, LossyMaskWarning, read_labels, read_mask


def _lungs_rgb(left, right) -> np.ndarray:
    """A 64 x 64 RGB mask: the left lung field in colour ``left``, the right in ``right``."""
    mask = np.zeros((64, 64, 3), np.uint8)
    mask[10:50, 5:28] = left
    mask[10:50, 36:60] = right
    return mask


@pytest.mark.parametrize("suffix", [".jpg", ".webp"])
def test_colour_lossy_mask_is_refused_not_read_by_its_brightness(tmp_path, suffix):
    # Label tools colour each structure; saved as JPEG, Pillow's grey conversion weighs the
    # channels, so red (255, 0, 0) became grey 76, below the split at 127: the red lung was
    # dropped and the green one kept, a one-lung mask that passes "lungs present".
    path = tmp_path / f"CHNCXR_0001_0_mask{suffix}"
    Image.fromarray(_lungs_rgb((255, 0, 0), (0, 255, 0))).save(path, quality=95)
    for read in (lambda p: read_labels(p, LabelRule()), read_mask):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", LossyMaskWarning)
            with pytest.raises(MaskError, match="colour") as error:
                read(path)
        assert str(path) in str(error.value)


def test_grey_mask_saved_as_colour_jpeg_still_reads_its_structure(tmp_path):
    # A white-on-black mask saved as RGB JPEG decodes with equal channels: still a mask.
    path = tmp_path / "MCUCXR_0001_0.jpg"
    Image.fromarray(_lungs_rgb((255, 255, 255), (255, 255, 255))).save(path, quality=75)
    written = np.asarray(Image.open(path).convert("L")) > 127
    with pytest.warns(LossyMaskWarning):
        labels = read_labels(path, LabelRule())
    np.testing.assert_array_equal(labels, written.astype(np.uint8))


def test_colour_mask_saved_as_gif_is_not_read_inverted(tmp_path):
    # Pillow's GIF writer (and quantize / image editors) order a colour mask's palette by
    # colour: the red lungs became index 0 and the black background index 1, so reading the
    # indices gave the background as the lungs, and "lungs present" passed.
    rgb = _lungs_rgb((255, 0, 0), (255, 0, 0))
    path = tmp_path / "JPCLN001.gif"
    Image.fromarray(rgb).save(path)
    with Image.open(path) as written:  # the premise: black is not index 0
        assert written.getpalette()[:6] == [255, 0, 0, 0, 0, 0]
    np.testing.assert_array_equal(
        read_labels(path, LabelRule()), (rgb[..., 0] > 0).astype(np.uint8)
    )


def test_colour_gif_of_several_structures_in_colour_order_is_refused(tmp_path):
    # Three colours in a quantizer's order: green 0, red 1, black 2. Under a label-map rule
    # green (a lung) read as background and the black background as label 2.
    path = tmp_path / "CHNCXR_0001_0.gif"
    Image.fromarray(_lungs_rgb((255, 0, 0), (0, 255, 0))).save(path)
    rule = LabelRule(grey_levels=((0, 0, 0), (1, 1, 1), (2, 2, 2)))
    with pytest.raises(MaskError, match="index 2, not 0") as error:
        read_labels(path, rule)
    assert str(path) in str(error.value)
