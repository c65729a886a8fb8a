"""Session 24, image files and augmentation: inputs a user or an archive produces that were
read or augmented wrongly without a word, each checked against an independent reference (a
file written directly with Pillow / pydicom here, or a numpy formula)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from kseg.errors import MaskError
from kseg.io import LabelRule, read_labels


def _structure_rgb(structure, background) -> np.ndarray:
    """A 40 x 48 RGB mask: one rectangle (384 px, under half the image) in ``structure``."""
    rgb = np.empty((40, 48, 3), np.uint8)
    rgb[:] = background
    rgb[8:32, 10:26] = structure
    return rgb


@pytest.mark.parametrize("suffix", [".gif", ".png"])
def test_colour_structure_on_grey_in_quantizer_order_is_not_read_inverted(tmp_path, suffix):
    # Pillow's GIF writer and quantize() put the green structure at index 0 and its grey
    # background at index 1: read as indices, the background became the structure.
    rgb = _structure_rgb((0, 255, 0), (128, 128, 128))
    path = tmp_path / f"CHNCXR_0001_0_mask{suffix}"
    image = Image.fromarray(rgb)
    (image if suffix == ".gif" else image.quantize(colors=2)).save(path)
    with Image.open(path) as written:  # the premise: the structure is index 0
        assert written.mode == "P" and written.getpalette()[:3] == [0, 255, 0]
    np.testing.assert_array_equal(
        read_labels(path, LabelRule()), (rgb[..., 1] == 255).astype(np.uint8)
    )


def test_two_colour_palette_with_no_background_entry_is_refused(tmp_path):
    # Green on red, neither black nor grey nor transparent: the file does not say which is
    # the background, and the quantizer put the structure first.
    path = tmp_path / "mask.gif"
    Image.fromarray(_structure_rgb((0, 255, 0), (255, 0, 0))).save(path)
    with pytest.raises(MaskError, match=r"mask\.gif: .*none of which is the background"):
        read_labels(path, LabelRule())


def test_transparent_palette_background_at_index_1_is_the_background(tmp_path):
    # An overlay export: red structure, background a transparent (white) entry at index 1.
    structure = np.zeros((40, 48), bool)
    structure[8:32, 10:26] = True
    image = Image.fromarray(np.where(structure, 0, 1).astype(np.uint8), "P")
    image.putpalette([255, 0, 0, 255, 255, 255])
    image.save(tmp_path / "overlay.png", transparency=1)
    np.testing.assert_array_equal(
        read_labels(tmp_path / "overlay.png", LabelRule()), structure.astype(np.uint8)
    )
