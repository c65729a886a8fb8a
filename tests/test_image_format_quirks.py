"""Valid image files that Pillow decodes differently from what the file says, silently: each
test writes the file as a real tool would, shows what Pillow alone makes of it, and checks
that kseg reads the values the format's standard gives, or refuses the file by name."""

import struct
import warnings

import numpy as np
import pytest
from PIL import Image, TiffImagePlugin, features
from test_io_masks import write_16_bit_png, write_grey_tiff

from kseg.errors import MaskError, UnreadableFileError
from kseg.io import CHAOS_MR_LABEL_RANGES, LabelRule, LossyMaskWarning, read_labels, read_mask
from kseg.io.image_files import seek_full_resolution_page, upright_size
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


def _noisy_structure(seed=0) -> tuple[np.ndarray, np.ndarray]:
    """A 0/255 square with noise, as a scanned or resampled mask: lossy coders keep the
    noise as grey levels rather than the two values."""
    structure = np.zeros((32, 40), bool)
    structure[8:24, 10:30] = True
    noise = np.random.default_rng(seed).integers(-30, 31, structure.shape)
    return structure, np.clip(structure * 255 + noise, 0, 255).astype(np.uint8)


@pytest.mark.skipif(not features.check_codec("jpg_2000"), reason="Pillow built without OpenJPEG")
@pytest.mark.parametrize("suffix", ["jp2", "j2k"])  # boxed file and raw codestream
def test_irreversible_jpeg_2000_mask_is_lossy_like_a_jpeg(tmp_path, suffix):
    structure, _ = _noisy_structure()
    path = tmp_path / f"mask.{suffix}"
    Image.fromarray(structure.astype(np.uint8) * 255).save(
        path, irreversible=True, quality_mode="rates", quality_layers=[5]
    )
    with Image.open(path) as check:  # Pillow alone: ringing around the edges as values
        stored = np.asarray(check)
        assert len(np.unique(stored)) > 2
    with pytest.warns(LossyMaskWarning, match=f"mask.{suffix}"):
        np.testing.assert_array_equal(read_labels(path, LabelRule()), stored > 127)
    with pytest.warns(LossyMaskWarning):
        np.testing.assert_array_equal(read_mask(path), stored > stored.max() / 2)
    with pytest.raises(MaskError, match=f"mask.{suffix}: is lossy"):
        read_labels(path, LabelRule.from_label_ranges(CHAOS_MR_LABEL_RANGES))


@pytest.mark.skipif(not features.check_codec("jpg_2000"), reason="Pillow built without OpenJPEG")
def test_reversible_jpeg_2000_mask_keeps_its_grey_levels_without_a_warning(tmp_path):
    levels = np.array([[0, 63, 126], [189, 252, 0]], np.uint8)  # CHAOS MR's organs
    Image.fromarray(levels).save(tmp_path / "mask.jp2")  # Pillow's default: reversible 5-3
    rule = LabelRule.from_label_ranges(CHAOS_MR_LABEL_RANGES)
    with warnings.catch_warnings():
        warnings.simplefilter("error", LossyMaskWarning)
        np.testing.assert_array_equal(read_mask(tmp_path / "mask.jp2"), levels)
        np.testing.assert_array_equal(read_labels(tmp_path / "mask.jp2", rule), levels // 63)


@pytest.mark.skipif(not features.check("avif"), reason="Pillow built without AVIF")
def test_avif_mask_is_lossy_like_a_jpeg(tmp_path):
    _, noisy = _noisy_structure()
    Image.fromarray(noisy).save(tmp_path / "mask.avif", quality=50)
    with Image.open(tmp_path / "mask.avif") as check:
        stored = np.asarray(check)
        assert len(np.unique(stored)) > 2
    with pytest.warns(LossyMaskWarning, match="mask.avif"):
        np.testing.assert_array_equal(
            read_labels(tmp_path / "mask.avif", LabelRule()), stored > 127
        )


def _write_16_bit_bmp(path, grey: np.ndarray, green_bits: int) -> None:
    """A BMP of 16 bits per pixel, written byte by byte after Microsoft's BITMAPINFOHEADER:
    5-6-5 bits (BI_BITFIELDS with its three masks, GIMP's and Windows' "R5 G6 B5") when
    ``green_bits`` is 6, or the 5-5-5 default (BI_RGB); rows bottom-up, padded to 4 bytes."""
    height, width = grey.shape
    red_blue = grey.astype(np.uint16) >> 3
    green = grey.astype(np.uint16) >> (8 - green_bits)
    pixels = (red_blue << (5 + green_bits)) | (green << 5) | red_blue
    rows = b"".join(
        np.concatenate([row, np.zeros(width % 2, np.uint16)]).astype("<u2").tobytes()
        for row in pixels[::-1]
    )
    bitfields = green_bits == 6
    header = struct.pack("<IiiHHIIiiII", 40, width, height, 1, 16, 3 if bitfields else 0,
                         len(rows), 2835, 2835, 0, 0)  # fmt: skip
    if bitfields:
        header += struct.pack("<III", 0xF800, 0x07E0, 0x001F)
    offset = 14 + len(header)
    path.write_bytes(b"BM" + struct.pack("<IHHI", offset + len(rows), 0, 0, offset) + header + rows)


@pytest.mark.parametrize("green_bits", [5, 6])
def test_16_bit_bmp_mask_of_5_and_6_bit_fields_is_read_not_refused(tmp_path, green_bits):
    # 16 bits per pixel, not per sample: no high byte is lost; 0 and 255 survive whole
    structure = np.zeros((5, 7), bool)
    structure[1:4, 2:6] = True
    _write_16_bit_bmp(tmp_path / "mask.bmp", structure.astype(np.uint8) * 255, green_bits)
    with Image.open(tmp_path / "mask.bmp") as check:
        assert check.mode == "RGB" and set(np.unique(np.asarray(check)).tolist()) == {0, 255}
    np.testing.assert_array_equal(read_labels(tmp_path / "mask.bmp", LabelRule()), structure)
    np.testing.assert_array_equal(read_mask(tmp_path / "mask.bmp"), structure * 255)
    image, bit_depth = read_radiograph(tmp_path / "mask.bmp")
    np.testing.assert_array_equal(image, structure * 255)
    assert bit_depth == 8


def test_grey_png_whose_trns_value_is_the_background_not_0_is_refused(tmp_path):
    # optipng stores a grey + alpha overlay whose alpha is 0 or 255 as grey + tRNS: here a
    # black structure drawn over a transparent white background. By its values alone the
    # background (255) would be the structure.
    structure = np.zeros((5, 7), bool)
    structure[1:4, 2:6] = True
    shown = np.where(structure, 0, 255).astype(np.uint8)
    Image.fromarray(shown).save(tmp_path / "overlay.png", transparency=255)
    write_16_bit_png(
        tmp_path / "overlay16.png", shown[..., None].astype(np.uint16) * 257, 0, transparent=65535
    )
    for name in ("overlay.png", "overlay16.png"):
        with Image.open(tmp_path / name) as check:  # the transparency only in info
            assert check.mode in ("L", "I;16") and check.info["transparency"] in (255, 65535)
        with pytest.raises(MaskError, match=rf"{name}: is a mask with transparency"):
            read_labels(tmp_path / name, LabelRule())
        with pytest.raises(MaskError, match=rf"{name}: is a mask with transparency"):
            read_mask(tmp_path / name)


def test_grey_and_rgb_pngs_transparent_exactly_where_0_read_by_their_values(tmp_path):
    structure = np.zeros((5, 7), bool)
    structure[1:4, 2:6] = True
    Image.fromarray(structure.astype(np.uint8) * 255).save(tmp_path / "grey.png", transparency=0)
    rgb = np.repeat(structure[..., None].astype(np.uint8) * 255, 3, axis=2)
    Image.fromarray(rgb).save(tmp_path / "rgb.png", transparency=(0, 0, 0))
    write_16_bit_png(tmp_path / "grey16.png", structure[..., None] * 1, 0, transparent=0)
    for name in ("grey.png", "rgb.png", "grey16.png"):
        np.testing.assert_array_equal(read_labels(tmp_path / name, LabelRule()), structure)


def test_12_bit_tiff_radiograph_says_12_bits_not_16(tmp_path):
    # Pillow gives a 12-bit TIFF's samples unscaled (0..4095) in a 16-bit mode
    stored = np.array([[0, 1, 4095], [2048, 7, 4000], [5, 4094, 3]], np.uint16)  # odd width
    write_grey_tiff(tmp_path / "cxr.tif", stored, 12)
    with Image.open(tmp_path / "cxr.tif") as check:
        assert check.mode == "I;16" and check.tag_v2[258] == (12,)
    image, bit_depth = read_radiograph(tmp_path / "cxr.tif")
    np.testing.assert_array_equal(image, stored)
    assert bit_depth == 12
    np.testing.assert_array_equal(read_mask(tmp_path / "cxr.tif"), stored)
    write_grey_tiff(tmp_path / "cxr16.tif", stored, 16)
    assert read_radiograph(tmp_path / "cxr16.tif")[1] == 16


def _jpeg_2000_codestream_of(tmp_path, dicom_name: str, **header):
    """The JPEG 2000 codestream of one of pydicom's own test files, saved as a .j2k file,
    and pydicom's decoding of it (``header`` overrides elements first) as the reference."""
    pydicom = pytest.importorskip("pydicom")
    from pydicom.data import get_testdata_file
    from pydicom.encaps import generate_frames

    source = get_testdata_file(dicom_name)
    if source is None:
        pytest.skip(f"pydicom's test file {dicom_name} is not installed")
    dataset = pydicom.dcmread(source)
    for keyword, value in header.items():
        setattr(dataset, keyword, value)
    try:
        reference = dataset.pixel_array.astype(np.int64)
    except Exception as exc:  # no JPEG 2000 plugin for pydicom installed
        pytest.skip(f"pydicom cannot decode JPEG 2000 here ({exc})")
    path = tmp_path / "image.j2k"
    path.write_bytes(next(generate_frames(dataset.PixelData, number_of_frames=1)))
    return path, reference


def test_13_bit_jpeg_2000_gives_its_stored_samples_not_pillows_shifted_ones(tmp_path):
    # the codestream is unsigned 13-bit; its DICOM header's PixelRepresentation 1 is the
    # file's deliberate mismatch, set right for the reference
    path, stored = _jpeg_2000_codestream_of(
        tmp_path, "J2K_pixelrep_mismatch.dcm", PixelRepresentation=0
    )
    with Image.open(path) as check:  # Pillow alone: shifted to the top of 16 bits
        np.testing.assert_array_equal(np.asarray(check), stored << 3)
    image, bit_depth = read_radiograph(path)
    np.testing.assert_array_equal(image, stored)
    assert bit_depth == 13
    np.testing.assert_array_equal(read_mask(path), stored)


def test_signed_jpeg_2000_with_negative_values_is_refused_not_offset(tmp_path):
    path, stored = _jpeg_2000_codestream_of(tmp_path, "JPEG2000.dcm")  # signed 16-bit
    assert stored.min() < 0
    with Image.open(path) as check:  # Pillow alone: offset by 2**15 into unsigned values
        np.testing.assert_array_equal(np.asarray(check), stored + 2**15)
    with pytest.raises(UnreadableFileError, match=r"image\.j2k: is a signed 16-bit JPEG 2000"):
        read_radiograph(path)
    with pytest.raises(MaskError, match=r"image\.j2k: is a signed 16-bit JPEG 2000"):
        read_mask(path)


def _write_pgm(path, samples: np.ndarray, maxval: int, *, plain=False) -> None:
    """A PGM, or a PPM for ``(rows, columns, 3)`` samples, after the netpbm standard:
    binary (P5 / P6: one byte per sample up to maxval 255, else two, most significant
    first) or plain (P2 / P3: decimal text)."""
    height, width = samples.shape[:2]
    colour = samples.ndim == 3
    if plain:
        body = " ".join(map(str, samples.ravel().tolist())).encode() + b"\n"
    else:
        body = samples.astype(np.uint8 if maxval < 256 else ">u2").tobytes()
    magic = (2 if plain else 5) + colour
    path.write_bytes(b"P%d\n%d %d\n%d\n" % (magic, width, height, maxval) + body)


@pytest.mark.parametrize("plain", [False, True])
def test_pgm_samples_read_up_to_their_maxval_not_stretched(tmp_path, plain):
    labels = np.array([[0, 1, 2], [4, 3, 0]])  # a netpbm label map: maxval 4
    _write_pgm(tmp_path / "labels.pgm", labels, 4, plain=plain)
    with Image.open(tmp_path / "labels.pgm") as check:  # Pillow alone: stretched to 0..255
        assert np.asarray(check)[1, 0] == 255
    np.testing.assert_array_equal(read_mask(tmp_path / "labels.pgm"), labels)
    grey_levels = LabelRule(grey_levels=((0, 0, 0), (1, 2, 1), (3, 4, 2)))
    np.testing.assert_array_equal(
        read_labels(tmp_path / "labels.pgm", grey_levels), [[0, 1, 1], [2, 2, 0]]
    )
    structure = np.array([[0, 1, 1], [0, 1, 0]])
    _write_pgm(tmp_path / "mask.pgm", structure, 1, plain=plain)
    np.testing.assert_array_equal(read_labels(tmp_path / "mask.pgm", LabelRule()), structure)

    twelve_bit = np.array([[0, 1, 4095], [2048, 7, 100]])
    _write_pgm(tmp_path / "cxr.pgm", twelve_bit, 4095, plain=plain)
    with Image.open(tmp_path / "cxr.pgm") as check:  # Pillow alone: times 65535 / 4095
        assert np.asarray(check)[0, 1] == 16
    image, bit_depth = read_radiograph(tmp_path / "cxr.pgm")
    np.testing.assert_array_equal(image, twelve_bit)
    assert bit_depth == 12
    np.testing.assert_array_equal(read_mask(tmp_path / "cxr.pgm"), twelve_bit)


def test_pgm_of_maxval_255_or_65535_reads_as_stored(tmp_path):
    values = np.array([[0, 1, 255], [128, 7, 3]])
    _write_pgm(tmp_path / "eight.pgm", values, 255)
    np.testing.assert_array_equal(read_mask(tmp_path / "eight.pgm"), values)
    _write_pgm(tmp_path / "sixteen.pgm", values * 257, 65535)
    image, bit_depth = read_radiograph(tmp_path / "sixteen.pgm")
    np.testing.assert_array_equal(image, values * 257)
    assert bit_depth == 16


def _write_palette_bmp(path, indices: np.ndarray, bits: int, greys: list[int]) -> None:
    """A palette BMP of 1, 4 or 8 bits per pixel, written byte by byte after Microsoft's
    BITMAPINFOHEADER: grey palette entries, rows bottom-up, indices packed most significant
    first, each row padded to 4 bytes."""
    height, width = indices.shape
    per_byte = 8 // bits
    rows = []
    for row in indices[::-1]:
        padded = np.concatenate([row, np.zeros(-len(row) % per_byte, row.dtype)])
        groups = padded.reshape(-1, per_byte).astype(int)
        packed = bytes((groups << (bits * np.arange(per_byte - 1, -1, -1))).sum(axis=1).tolist())
        rows.append(packed + b"\0" * (-len(packed) % 4))
    pixels = b"".join(rows)
    palette = b"".join(bytes([grey, grey, grey, 0]) for grey in greys)
    header = struct.pack("<IiiHHIIiiII", 40, width, height, 1, bits, 0, len(pixels), 2835, 2835,
                         len(greys), 0)  # fmt: skip
    offset = 14 + len(header) + len(palette)
    path.write_bytes(
        b"BM" + struct.pack("<IHHI", offset + len(pixels), 0, 0, offset) + header + palette + pixels
    )


def test_4_bit_bmp_of_the_grey_ramp_palette_reads_like_a_4_bit_grey_file(tmp_path):
    # a 4-bit BMP can only be a palette image; its grey one is the 16 greys 0, 17, ..., 255
    structure = np.zeros((5, 7), bool)
    structure[1:4, 2:6] = True
    grey_ramp = [17 * index for index in range(16)]
    for on in (1, 15):  # a 0/1 label map and a 0/full-scale mask
        path = tmp_path / f"on_{on}.bmp"
        _write_palette_bmp(path, np.where(structure, on, 0).astype(np.uint8), 4, grey_ramp)
        with Image.open(path) as check:
            assert check.mode == "P"
        np.testing.assert_array_equal(read_labels(path, LabelRule(foreground=2)), structure * 2)
        np.testing.assert_array_equal(read_mask(path), structure * on)
    levels = np.array([[0, 5, 10], [15, 0, 5]], np.uint8)  # 0 / 85 / 170 / 255 as displayed
    _write_palette_bmp(tmp_path / "levels.bmp", levels, 4, grey_ramp)
    rule = LabelRule.from_label_ranges({1: (85, 85), 2: (170, 170), 3: (255, 255)})
    np.testing.assert_array_equal(read_labels(tmp_path / "levels.bmp", rule), levels // 5)


def test_16_bit_colour_ppm_is_refused_and_a_low_maxval_one_read_as_stored(tmp_path):
    structure = np.array([[0, 1, 1], [0, 1, 0]])
    grey_rgb = np.repeat(structure[..., None], 3, axis=2)
    _write_pgm(tmp_path / "mask16.ppm", grey_rgb, 65535)
    with Image.open(tmp_path / "mask16.ppm") as check:  # Pillow alone: 8 bits, all label 1 gone
        assert check.mode == "RGB" and not np.asarray(check).any()
    with pytest.raises(MaskError, match=r"mask16\.ppm: is a 16-bit colour PPM \(maxval 65535\)"):
        read_labels(tmp_path / "mask16.ppm", LabelRule())
    with pytest.raises(UnreadableFileError, match=r"mask16\.ppm: is a 16-bit colour PPM"):
        read_radiograph(tmp_path / "mask16.ppm")
    _write_pgm(tmp_path / "labels.ppm", grey_rgb * 4, 4)  # stretched by Pillow to 0 / 255
    np.testing.assert_array_equal(read_mask(tmp_path / "labels.ppm"), structure * 4)


def _write_tiff_pages(path, pages: list[tuple[np.ndarray, bool]]) -> None:
    """An uncompressed little-endian 8-bit grey TIFF of several pages, written after the TIFF
    6.0 standard: ``(samples, reduced)`` per page, ``reduced`` setting NewSubfileType bit 0
    (a thumbnail or pyramid level of the full-resolution page)."""
    data = bytearray(b"II*\0\0\0\0\0")
    next_ifd_link = 4
    for samples, reduced in pages:
        pixels_at = len(data)
        data += samples.astype(np.uint8).tobytes()
        data += b"\0" * (len(data) % 2)
        height, width = samples.shape
        entries = [
            (254, 4, int(reduced)), (256, 4, width), (257, 4, height), (258, 3, 8),
            (259, 3, 1), (262, 3, 1), (273, 4, pixels_at), (277, 3, 1), (278, 4, height),
            (279, 4, samples.size),
        ]  # fmt: skip
        struct.pack_into("<I", data, next_ifd_link, len(data))
        data += struct.pack("<H", len(entries))
        for tag, kind, value in entries:
            packed = struct.pack("<HH", value, 0) if kind == 3 else struct.pack("<I", value)
            data += struct.pack("<HHI", tag, kind, 1) + packed
        next_ifd_link = len(data)
        data += b"\0\0\0\0"
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("thumbnail_first", [True, False])
def test_tiff_of_one_full_page_and_its_thumbnail_reads_the_full_page(tmp_path, thumbnail_first):
    structure = np.zeros((12, 20), bool)
    structure[2:9, 4:15] = True
    full = (structure * 255, False)
    thumbnail = (structure[::4, ::4] * 255, True)
    path = tmp_path / "mask.tif"
    _write_tiff_pages(path, [thumbnail, full] if thumbnail_first else [full, thumbnail])
    with Image.open(path) as check:  # Pillow alone: the first page, and two frames
        assert check.n_frames == 2 and check.size == ((5, 3) if thumbnail_first else (20, 12))
    np.testing.assert_array_equal(read_labels(path, LabelRule()), structure)
    image, bit_depth = read_radiograph(path)
    np.testing.assert_array_equal(image, structure * 255)
    assert bit_depth == 8
    with open(path, "rb") as handle, Image.open(handle) as image:  # the builder's size check
        seek_full_resolution_page(image)
        assert upright_size(str(path), image) == structure.shape


def test_tiff_of_two_full_pages_is_still_refused(tmp_path):
    page = np.zeros((4, 6), np.uint8)
    _write_tiff_pages(tmp_path / "stack.tif", [(page, False), (page, False), (page[::2], True)])
    with pytest.raises(MaskError, match=r"stack\.tif: has 3 frames"):
        read_mask(tmp_path / "stack.tif")
    with pytest.raises(UnreadableFileError, match=r"stack\.tif: has 3 frames"):
        read_radiograph(tmp_path / "stack.tif")


@pytest.mark.parametrize("compression", ["group4", "group3", "tiff_ccitt"])
def test_fax_compressed_white_is_zero_mask_reads_as_displayed(tmp_path, compression):
    # ImageMagick writes a bilevel TIFF WhiteIsZero exactly when fax-compressing it, storing
    # the image so that it shows unchanged: a white structure is stored as 0
    structure = np.zeros((6, 13), bool)
    structure[1:5, 2:9] = True
    white_is_zero = TiffImagePlugin.ImageFileDirectory_v2()
    white_is_zero[262] = 0
    path = tmp_path / "mask.tif"
    Image.fromarray(structure).save(path, compression=compression, tiffinfo=white_is_zero)
    with Image.open(path) as check:  # WhiteIsZero, shown as written
        assert check.tag_v2[262] == 0 and check.info["compression"] == compression
        np.testing.assert_array_equal(np.asarray(check), structure)
    np.testing.assert_array_equal(read_labels(path, LabelRule()), structure)
    np.testing.assert_array_equal(read_mask(path), structure)


def test_uncompressed_white_is_zero_mask_still_reads_its_stored_samples(tmp_path):
    structure = np.zeros((6, 13), bool)
    structure[1:5, 2:9] = True
    write_grey_tiff(tmp_path / "imagej.tif", structure.astype(np.uint8), 1, white_is_zero=True)
    np.testing.assert_array_equal(read_labels(tmp_path / "imagej.tif", LabelRule()), structure)
