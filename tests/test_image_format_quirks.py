"""Valid image files that Pillow decodes differently from what the file says, silently: each
test writes the file as a real tool would, shows what Pillow alone makes of it, and checks
that kseg reads the values the format's standard gives, or refuses the file by name."""

import numpy as np
import pytest
from PIL import Image
from test_io_masks import write_grey_tiff

from kseg.errors import MaskError, UnreadableFileError
from kseg.io import LabelRule, read_labels, read_mask
from kseg.io.radiograph import read_radiograph


def test_signed_8_bit_tiff_with_negative_labels_is_refused_not_read_as_255(tmp_path):
    # tifffile / imageio save a numpy int8 label map with SampleFormat 2; -1 marks "ignore"
    labels = np.array([[0, 1, 1], [-1, 0, 1]], np.int8)
    path = tmp_path / "labels.tif"
    write_grey_tiff(path, labels, 8, sample_format=2)
    with Image.open(path) as check:  # Pillow alone: -1 as 255, the full-scale structure
        assert check.mode == "L" and np.asarray(check)[1, 0] == 255
    with pytest.raises(MaskError, match=r"labels\.tif: is a signed 8-bit TIFF .*-1 \(1 px\)"):
        read_mask(path)
    with pytest.raises(MaskError, match=r"labels\.tif: is a signed 8-bit"):
        read_labels(path, LabelRule())
    with pytest.raises(UnreadableFileError, match=r"labels\.tif: is a signed 8-bit"):
        read_radiograph(path)


def test_signed_8_bit_tiff_without_negative_values_reads_its_values(tmp_path):
    labels = np.array([[0, 1, 127], [3, 0, 1]], np.int8)
    write_grey_tiff(tmp_path / "labels.tif", labels, 8, sample_format=2)
    np.testing.assert_array_equal(read_mask(tmp_path / "labels.tif"), labels)
    image, bit_depth = read_radiograph(tmp_path / "labels.tif")
    np.testing.assert_array_equal(image, labels)
    assert bit_depth == 8


def _imagej_inverting_lut_mask(structure: np.ndarray) -> Image.Image:
    """An ImageJ binary mask as its Java writers store it: the structure stored as 255, the
    inverting LUT (white to black) as a 256-entry palette, so the structure shows black."""
    image = Image.fromarray(np.where(structure, 255, 0).astype(np.uint8), "P")
    image.putpalette([grey for index in range(256) for grey in (255 - index,) * 3])
    return image


@pytest.mark.parametrize("suffix", ["png", "gif", "bmp"])
def test_imagej_inverting_lut_palette_mask_reads_its_stored_structure(tmp_path, suffix):
    structure = np.zeros((6, 9), bool)
    structure[1:4, 2:7] = True
    path = tmp_path / f"mask.{suffix}"
    _imagej_inverting_lut_mask(structure).save(path, optimize=False)
    with Image.open(path) as check:  # the whole LUT kept; shown through it, the structure is 0
        assert check.mode == "P" and len(check.getpalette()) == 768
        assert not np.asarray(check.convert("L"))[structure].any()
    np.testing.assert_array_equal(read_labels(path, LabelRule(foreground=2)), structure * 2)
    np.testing.assert_array_equal(read_mask(path), structure * 255)
    image, bit_depth = read_radiograph(path)  # a radiograph is read as shown
    np.testing.assert_array_equal(image, np.where(structure, 0, 255))
    assert bit_depth == 8


def test_two_entry_palette_in_reverse_grey_order_is_still_read_through(tmp_path):
    # palette optimisers reorder entries; only the whole 256-grey inverting LUT is ImageJ's
    structure = np.zeros((6, 9), bool)
    structure[1:4, 2:7] = True
    image = Image.fromarray(np.where(structure, 0, 1).astype(np.uint8), "P")
    image.putpalette([255, 255, 255, 0, 0, 0])
    image.save(tmp_path / "mask.png")
    np.testing.assert_array_equal(read_labels(tmp_path / "mask.png", LabelRule()), structure)
