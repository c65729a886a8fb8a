"""Mask and radiograph files read by what they say about transparency and orientation.

Files are written here with Pillow directly (no kseg writer); the expected arrays are numpy
formulas on the written pixels.
"""

import warnings

import numpy as np
import pytest
from PIL import Image

from kseg.errors import MaskError
from kseg.io import LabelRule, LossyMaskWarning, read_labels, read_mask, read_radiograph
from kseg.io.image_files import upright_size

_EXIF_ORIENTATION = 0x0112

# A structure that is neither symmetric nor square, so every turn and mirror shows.
_STRUCTURE = np.zeros((6, 9), np.uint8)
_STRUCTURE[1:3, 1:7] = 1
_STRUCTURE[3:5, 1:3] = 1


def _save_rgba(path, grey, alpha):
    rgba = np.zeros((*grey.shape, 4), np.uint8)
    rgba[..., :3] = grey[..., None]
    rgba[..., 3] = alpha
    Image.fromarray(rgba, "RGBA").save(path)
    return path


@pytest.mark.parametrize(
    "grey",
    [np.full_like(_STRUCTURE, 255), np.zeros_like(_STRUCTURE)],
    ids=["white overlay", "black overlay"],
)
def test_overlay_keeping_the_structure_in_alpha_is_a_mask_error(tmp_path, grey):
    # Read by its grey values alone, the white overlay was all structure and the black one
    # all background, without a word.
    path = _save_rgba(tmp_path / "overlay.png", grey, _STRUCTURE * 255)
    for read in (lambda p: read_labels(p, LabelRule()), read_mask):
        with pytest.raises(MaskError, match=r"overlay\.png.*alpha"):
            read(path)


def test_grey_and_alpha_overlay_and_transparent_palette_entry_are_refused(tmp_path):
    la = np.stack([np.full_like(_STRUCTURE, 255), _STRUCTURE * 255], axis=-1)
    Image.fromarray(la, "LA").save(tmp_path / "la.png")
    # Two white palette entries, index 0 transparent: the structure is only in the alpha.
    palette = Image.fromarray(_STRUCTURE, "P")
    palette.putpalette([255, 255, 255, 255, 255, 255])
    palette.save(tmp_path / "palette.png", transparency=0)
    for name in ("la.png", "palette.png"):
        with pytest.raises(MaskError, match=rf"{name}.*alpha"):
            read_labels(tmp_path / name, LabelRule())
    with pytest.raises(MaskError, match=r"la\.png.*alpha"):
        read_mask(tmp_path / "la.png")
    # read_mask gives palette indices, and those agree with the transparency.
    np.testing.assert_array_equal(read_mask(tmp_path / "palette.png"), _STRUCTURE)


def test_alpha_that_agrees_with_the_values_or_is_uniform_is_ignored(tmp_path):
    transparent_background = _save_rgba(
        tmp_path / "agree.png", _STRUCTURE * 255, _STRUCTURE * 255
    )
    half_opaque = _save_rgba(
        tmp_path / "uniform.png", _STRUCTURE * 255, np.full_like(_STRUCTURE, 128)
    )
    for path in (transparent_background, half_opaque):
        np.testing.assert_array_equal(read_labels(path, LabelRule()), _STRUCTURE)
        np.testing.assert_array_equal(read_mask(path), _STRUCTURE * 255)


# EXIF orientation -> the displayed image as a numpy formula on the stored pixels (EXIF 2.32,
# tag 0x0112: 2 mirror, 3 rotate 180, 4 flip, 5 transpose, 6 rotate 90 clockwise,
# 7 transverse, 8 rotate 90 counter-clockwise).
_DISPLAYED = {
    1: lambda a: a,
    2: np.fliplr,
    3: lambda a: np.rot90(a, 2),
    4: np.flipud,
    5: lambda a: a.T,
    6: lambda a: np.rot90(a, -1),
    7: lambda a: np.rot90(a, 2).T,
    8: lambda a: np.rot90(a, 1),
}


def _save_with_orientation(path, array, orientation, **options):
    image = Image.fromarray(array)
    exif = image.getexif()
    exif[_EXIF_ORIENTATION] = orientation
    image.save(path, exif=exif, **options)
    return path


@pytest.mark.parametrize("orientation", sorted(_DISPLAYED))
def test_exif_orientation_turns_radiograph_and_mask_alike(tmp_path, orientation):
    radiograph = (np.arange(_STRUCTURE.size, dtype=np.uint8).reshape(_STRUCTURE.shape) * 3) + 1
    image_path = _save_with_orientation(tmp_path / "cxr.png", radiograph, orientation)
    mask_path = _save_with_orientation(tmp_path / "mask.png", _STRUCTURE * 255, orientation)
    shown = _DISPLAYED[orientation]

    image, bit_depth = read_radiograph(image_path)
    np.testing.assert_array_equal(image, shown(radiograph))
    assert bit_depth == 8
    np.testing.assert_array_equal(read_labels(mask_path, LabelRule()), shown(_STRUCTURE))
    np.testing.assert_array_equal(read_mask(mask_path), shown(_STRUCTURE * 255))
    # the size the X-ray builder checks masks against, from the header without decoding
    with Image.open(mask_path) as opened:
        assert upright_size(str(mask_path), opened) == shown(_STRUCTURE).shape


@pytest.mark.parametrize("orientation", sorted(_DISPLAYED))
@pytest.mark.parametrize("mode", ["1", "L", "I;16"])
def test_tiff_orientation_turns_masks_of_every_depth(tmp_path, orientation, mode):
    # Pillow turns TIFFs while loading; a TIFF opened by its name is memory-mapped with the
    # turned size, rows and columns swapped (Pillow 12.3), so kseg must not open it so.
    stored = {
        "1": _STRUCTURE.astype(bool),
        "L": _STRUCTURE * 255,
        "I;16": _STRUCTURE.astype(np.uint16) * 65535,
    }[mode]
    path = tmp_path / "mask.tif"
    Image.fromarray(stored).save(path, tiffinfo={_EXIF_ORIENTATION: orientation})
    with Image.open(path) as check:
        assert check.mode == mode
    shown = _DISPLAYED[orientation]
    np.testing.assert_array_equal(read_labels(path, LabelRule()), shown(_STRUCTURE))
    np.testing.assert_array_equal(read_mask(path), shown(stored).astype(read_mask(path).dtype))
    with Image.open(path) as opened:
        assert upright_size(str(path), opened) == shown(_STRUCTURE).shape


def test_exif_orientation_of_16_bit_tiff_and_jpeg_files(tmp_path):
    wide = np.arange(_STRUCTURE.size, dtype=np.uint16).reshape(_STRUCTURE.shape) * 1000
    tiff = tmp_path / "cxr.tif"
    Image.fromarray(wide).save(tiff, tiffinfo={_EXIF_ORIENTATION: 6})
    image, bit_depth = read_radiograph(tiff)
    np.testing.assert_array_equal(image, np.rot90(wide, -1))
    assert bit_depth == 16

    big = np.kron(_STRUCTURE, np.ones((8, 8), np.uint8)) * 255  # JPEG blocks are 8 x 8
    jpeg = _save_with_orientation(tmp_path / "mask.jpg", big, 8, quality=95)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", LossyMaskWarning)
        labels = read_labels(jpeg, LabelRule())
    np.testing.assert_array_equal(labels, np.rot90(big > 127, 1))
