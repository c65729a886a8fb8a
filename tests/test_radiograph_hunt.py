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
