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
