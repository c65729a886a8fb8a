"""Tests of kseg.io.radiograph: expected values come from numpy decoding of the raw bytes,
from Pillow and from pydicom, never from the readers."""

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

from kseg.errors import UnreadableFileError
from kseg.io import read_jsrt_image, read_radiograph


def test_jsrt_image_is_the_raw_big_endian_words_inverted_over_12_bits(tmp_path):
    stored = np.random.default_rng(0).integers(0, 4096, size=(8, 8)).astype(">u2")
    path = tmp_path / "JPCLN001.IMG"
    path.write_bytes(stored.tobytes())
    image = read_jsrt_image(path)
    assert image.dtype == np.uint16
    np.testing.assert_array_equal(image, 4095 - stored.astype(np.int64))


def test_jsrt_file_that_is_not_a_square_of_words_or_above_12_bits_is_refused(tmp_path):
    path = tmp_path / "JPCNN001.IMG"
    path.write_bytes(b"\0" * 100)
    with pytest.raises(UnreadableFileError, match=r"JPCNN001\.IMG: 100 bytes is not a square"):
        read_jsrt_image(path)
    path.write_bytes(np.full((4, 4), 4096, ">u2").tobytes())
    with pytest.raises(UnreadableFileError, match="4096, above the 12-bit maximum 4095"):
        read_jsrt_image(path)


@pytest.mark.parametrize(
    "values, bit_depth",
    [
        (np.arange(64, dtype=np.uint8).reshape(8, 8) * 4, 8),
        (np.arange(64, dtype=np.uint16).reshape(8, 8) * 1000, 16),
    ],
)
def test_grey_png_keeps_its_stored_values_and_bit_depth(tmp_path, values, bit_depth):
    path = tmp_path / "image.png"
    Image.fromarray(values).save(path)
    image, depth = read_radiograph(path)
    assert image.dtype == np.uint16 and depth == bit_depth
    np.testing.assert_array_equal(image, np.asarray(Image.open(path)))


def test_grey_rgb_is_read_as_one_channel_and_colour_is_refused(tmp_path):
    grey = np.repeat(np.arange(16, dtype=np.uint8).reshape(4, 4, 1) * 10, 3, axis=2)
    Image.fromarray(grey).save(tmp_path / "grey.png")
    image, depth = read_radiograph(tmp_path / "grey.png")
    np.testing.assert_array_equal(image, grey[..., 0])
    assert depth == 8
    colour = grey.copy()
    colour[0, 0] = (255, 0, 0)
    Image.fromarray(colour).save(tmp_path / "colour.png")
    with pytest.raises(UnreadableFileError, match=r"colour\.png: is a colour \(RGB\) image"):
        read_radiograph(tmp_path / "colour.png")


def test_grey_palette_image_gives_its_grey_values_not_its_indices(tmp_path):
    grey = np.arange(16, dtype=np.uint8).reshape(4, 4) * 16 + 3
    # Entry k holds grey 255 - k: indices and grey values differ at every pixel.
    reversed_greys = [v for k in range(256) for v in (255 - k,) * 3]
    palette = Image.fromarray((255 - grey).astype(np.uint8), "P")
    palette.putpalette(reversed_greys)
    palette.save(tmp_path / "palette.png")
    image, depth = read_radiograph(tmp_path / "palette.png")
    np.testing.assert_array_equal(image, grey)
    assert depth == 8
    palette.putpalette([255, 0, 0] + reversed_greys[3:])  # entry 0 red, and in use
    palette.putpixel((0, 0), 0)
    palette.save(tmp_path / "colour_palette.png")
    with pytest.raises(UnreadableFileError, match=r"colour_palette\.png: is a colour"):
        read_radiograph(tmp_path / "colour_palette.png")


def test_several_frames_and_non_images_are_refused(tmp_path):
    frames = [Image.fromarray(np.full((4, 4), k, np.uint8)) for k in range(2)]
    frames[0].save(tmp_path / "two.tif", save_all=True, append_images=frames[1:])
    with pytest.raises(UnreadableFileError, match=r"two\.tif: has 2 frames"):
        read_radiograph(tmp_path / "two.tif")
    (tmp_path / "notes.png").write_text("not an image")
    with pytest.raises(UnreadableFileError, match=r"notes\.png: cannot be read as an image"):
        read_radiograph(tmp_path / "notes.png")


def _write_dicom(path, pixels: np.ndarray, *, bits_stored: int, slope=1.0, intercept=0.0):
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = pydicom.Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "DX"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, bits_stored, bits_stored - 1
    ds.PixelRepresentation = 0
    ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
    ds.PixelData = pixels.astype("<u2").tobytes()
    ds.save_as(path, enforce_file_format=True)


def test_dicom_radiograph_is_read_with_its_bits_stored(tmp_path):
    pixels = np.arange(64, dtype=np.uint16).reshape(8, 8) * 60
    _write_dicom(tmp_path / "image.dcm", pixels, bits_stored=12)
    image, depth = read_radiograph(tmp_path / "image.dcm")
    np.testing.assert_array_equal(image, pydicom.dcmread(tmp_path / "image.dcm").pixel_array)
    assert image.dtype == np.uint16 and depth == 12


def test_dicom_values_outside_uint16_or_fractional_after_rescale_are_refused(tmp_path):
    pixels = np.arange(16, dtype=np.uint16).reshape(4, 4)
    _write_dicom(tmp_path / "negative.dcm", pixels, bits_stored=12, intercept=-1024.0)
    with pytest.raises(UnreadableFileError, match=r"negative\.dcm: values span -1024\.\.-1009"):
        read_radiograph(tmp_path / "negative.dcm")
    _write_dicom(tmp_path / "half.dcm", pixels, bits_stored=12, slope=0.5)
    with pytest.raises(UnreadableFileError, match=r"half\.dcm: has fractional values"):
        read_radiograph(tmp_path / "half.dcm")


@pytest.mark.parametrize("bits", [8, 16])
def test_white_is_zero_tiff_radiograph_reads_higher_is_brighter(tmp_path, bits):
    from test_io_masks import write_grey_tiff

    full_scale = 2**bits - 1
    stored = np.random.default_rng(bits).integers(0, full_scale + 1, size=(6, 9))
    write_grey_tiff(tmp_path / "white.tif", stored, bits, white_is_zero=True)
    write_grey_tiff(tmp_path / "black.tif", full_scale - stored, bits)
    white, white_depth = read_radiograph(tmp_path / "white.tif")
    black, black_depth = read_radiograph(tmp_path / "black.tif")
    # WhiteIsZero: 0 is white, so the brightness is the full scale minus the stored value
    np.testing.assert_array_equal(white, full_scale - stored)
    np.testing.assert_array_equal(white, black)
    assert white_depth == black_depth == bits


def test_16_bit_colour_radiograph_is_refused_not_cut_to_its_high_bytes(tmp_path):
    from test_io_masks import write_16_bit_png

    twelve_bit = np.random.default_rng(3).integers(0, 4096, size=(5, 6))
    write_16_bit_png(tmp_path / "cxr.png", np.repeat(twelve_bit[..., None], 3, axis=2), 2)
    with Image.open(tmp_path / "cxr.png") as check:  # Pillow alone: 16 grey levels left
        assert np.asarray(check).max() <= 15
    with pytest.raises(UnreadableFileError, match=r"cxr\.png: is a 16-bit RGB image"):
        read_radiograph(tmp_path / "cxr.png")


def test_12_bit_white_is_zero_tiff_is_refused_naming_the_file(tmp_path):
    # Pillow has no decoder for it; what must not happen is a reading inverted over 16 bits
    from test_io_masks import write_grey_tiff

    write_grey_tiff(tmp_path / "white.tif", np.array([[0, 4095], [7, 2048]]), 12,
                    white_is_zero=True)  # fmt: skip
    with pytest.raises(UnreadableFileError, match=r"white\.tif: cannot be read as an image"):
        read_radiograph(tmp_path / "white.tif")
