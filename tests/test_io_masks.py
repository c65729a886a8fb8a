import numpy as np
import pytest
from PIL import Image

from kseg.errors import MaskError, UnreadableFileError
from kseg.io import (
    CHAOS_MR_LABEL_RANGES,
    LabelRule,
    LossyMaskWarning,
    binarize,
    map_label_ranges,
    read_labels,
    read_mask,
    read_mask_stack,
)


def _square_mask(value=255, dtype=np.uint8, shape=(32, 40)):
    mask = np.zeros(shape, dtype)
    mask[8:24, 10:30] = value
    return mask


def test_16_bit_png_keeps_its_values(tmp_path):
    stored = np.array([[0, 1, 300], [65535, 4096, 7]], np.uint16)
    Image.fromarray(stored).save(tmp_path / "mask.png")
    with Image.open(tmp_path / "mask.png") as check:
        assert check.mode.startswith("I")  # really written as a 16-bit PNG
    mask = read_mask(tmp_path / "mask.png")
    assert mask.dtype == np.uint16
    np.testing.assert_array_equal(mask, stored)


@pytest.mark.parametrize("suffix", ["png", "tif", "bmp"])
def test_lossless_8_bit_formats_keep_label_values(tmp_path, suffix):
    stored = np.array([[0, 63, 126], [189, 252, 0]], np.uint8)
    Image.fromarray(stored).save(tmp_path / f"mask.{suffix}")
    mask = read_mask(tmp_path / f"mask.{suffix}")
    assert mask.dtype == np.uint8
    np.testing.assert_array_equal(mask, stored)


def test_palette_bilevel_and_grey_rgb_masks(tmp_path):
    indices = np.array([[0, 1], [2, 1]], np.uint8)
    palette = Image.fromarray(indices, mode="P")
    palette.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0] + [0] * 759)
    palette.save(tmp_path / "palette.png")
    np.testing.assert_array_equal(read_mask(tmp_path / "palette.png"), indices)

    Image.fromarray(_square_mask() > 0).convert("1").save(tmp_path / "bilevel.tif")
    np.testing.assert_array_equal(read_mask(tmp_path / "bilevel.tif"), _square_mask(value=1))

    grey = np.repeat(_square_mask()[..., None], 3, axis=2)
    Image.fromarray(grey).save(tmp_path / "grey_rgb.png")
    np.testing.assert_array_equal(read_mask(tmp_path / "grey_rgb.png"), _square_mask())


def test_colour_mask_is_refused(tmp_path):
    colour = np.zeros((4, 4, 3), np.uint8)
    colour[1, 1] = (255, 0, 0)
    Image.fromarray(colour).save(tmp_path / "colour.png")
    with pytest.raises(MaskError, match="colour.png"):
        read_mask(tmp_path / "colour.png")


def test_noisy_jpeg_mask_is_thresholded_at_half_max_with_a_warning(tmp_path):
    truth = _square_mask(value=1)
    noise = np.random.default_rng(0).integers(-40, 41, truth.shape)
    noisy = np.clip(truth * 255 + noise, 0, 255).astype(np.uint8)
    Image.fromarray(noisy).save(tmp_path / "liver.jpg", quality=60)
    stored = np.asarray(Image.open(tmp_path / "liver.jpg"))
    assert len(np.unique(stored)) > 2  # compression and noise really left grey levels

    with pytest.warns(LossyMaskWarning, match="liver.jpg"):
        mask = read_mask(tmp_path / "liver.jpg")
    np.testing.assert_array_equal(mask, (stored > stored.max() / 2).astype(np.uint8))
    np.testing.assert_array_equal(mask, truth)


def test_unreadable_and_multi_page_files(tmp_path):
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 10)
    with pytest.raises(UnreadableFileError, match="broken.png"):
        read_mask(tmp_path / "broken.png")
    pages = [Image.fromarray(_square_mask()), Image.fromarray(_square_mask(128))]
    pages[0].save(tmp_path / "pages.tif", save_all=True, append_images=pages[1:])
    with pytest.raises(MaskError, match="2 frames"):
        read_mask(tmp_path / "pages.tif")


def test_stack_keeps_order_and_names_the_odd_slice(tmp_path):
    paths = []
    for index in range(3):
        paths.append(tmp_path / f"slice{index}.png")
        Image.fromarray(np.full((5, 7), index * 10, np.uint8)).save(paths[-1])
    stack = read_mask_stack(list(reversed(paths)))
    assert stack.shape == (3, 5, 7)
    np.testing.assert_array_equal(stack[:, 0, 0], [20, 10, 0])

    Image.fromarray(np.zeros((5, 8), np.uint8)).save(tmp_path / "wide.png")
    with pytest.raises(MaskError, match="wide.png.*5x7"):
        read_mask_stack([*paths, tmp_path / "wide.png"])
    with pytest.raises(MaskError, match="slice0.png.*6x7"):
        read_mask_stack(paths, expected_shape=(6, 7))
    with pytest.raises(MaskError, match="3 mask files, expected 4"):
        read_mask_stack(paths, expected_shape=(4, 5, 7))
    assert read_mask_stack(paths, expected_shape=(3, 5, 7)).shape == (3, 5, 7)


def test_chaos_mr_grey_levels_map_to_organ_labels():
    stored = np.array(
        [
            [0, 63, 55, 70],  # liver, with drift to both range ends
            [126, 110, 135, 0],  # right kidney
            [189, 175, 200, 0],  # left kidney
            [252, 240, 255, 0],  # spleen
        ],
        np.uint8,
    )
    expected = np.array([[0, 1, 1, 1], [2, 2, 2, 0], [3, 3, 3, 0], [4, 4, 4, 0]], np.uint8)
    labels = map_label_ranges(stored, CHAOS_MR_LABEL_RANGES)
    assert labels.dtype == np.uint8
    np.testing.assert_array_equal(labels, expected)


def test_unknown_grey_level_is_an_error_listing_it():
    stored = np.array([[0, 63, 100, 100, 150]], np.uint8)
    with pytest.raises(MaskError, match=r"mask7.png.*100 \(2 px\), 150 \(1 px\)"):
        map_label_ranges(stored, CHAOS_MR_LABEL_RANGES, source="mask7.png")


def test_overlapping_ranges_are_refused():
    with pytest.raises(MaskError, match="overlap"):
        map_label_ranges(np.zeros(3), {1: (10, 20), 2: (20, 30)})


def test_binarize_splits_at_half_the_maximum():
    np.testing.assert_array_equal(binarize(np.array([0, 127, 128, 255])), [0, 0, 1, 1])
    np.testing.assert_array_equal(binarize(np.array([0, 1, 1])), [0, 1, 1])
    np.testing.assert_array_equal(binarize(np.zeros(4)), [0, 0, 0, 0])
    np.testing.assert_array_equal(binarize(np.array([0, 5, 9]), threshold=5), [0, 0, 1])


def test_real_lung_mask_binarizes_like_the_dataset_readme(shared_data):
    path = next(iter(sorted((shared_data / "cxr-lungs" / "masks").glob("*.png"))))
    with Image.open(path) as image:
        stored = np.asarray(image)
    mask = read_mask(path)
    np.testing.assert_array_equal(mask, stored)
    np.testing.assert_array_equal(binarize(mask), (stored > 127).astype(np.uint8))


# --- read_labels: one structure written in every encoding, read back by its mode -------------

# A liver-like region, not a rectangle, so that a transposed or shifted read would show.
_TRUTH = np.zeros((24, 30), bool)
_TRUTH[5:17, 4:20] = True
_TRUTH[9:20, 15:26] = True
_TRUTH[6, 4:8] = False


def _grey_palette_image(indices, grey_of_index):
    image = Image.fromarray(indices.astype(np.uint8), mode="P")
    image.putpalette([g for value in grey_of_index for g in (value, value, value)])
    return image


def _colour_palette_image(indices):
    image = Image.fromarray(indices.astype(np.uint8), mode="P")
    image.putpalette([0, 0, 0, 128, 0, 0, 0, 128, 0] + [0, 0, 255] * 253)
    return image


_BINARY_WRITERS = {
    "1-bit png": lambda m: Image.fromarray(m),
    "8-bit 0/255": lambda m: Image.fromarray(m.astype(np.uint8) * 255),
    "8-bit 0/1": lambda m: Image.fromarray(m.astype(np.uint8)),
    "16-bit 0/65535": lambda m: Image.fromarray(m.astype(np.uint16) * 65535),
    "16-bit 0/1": lambda m: Image.fromarray(m.astype(np.uint16)),
    # Grey palette whose index order is the reverse of the grey order: read through it.
    "palette grey": lambda m: _grey_palette_image(np.where(m, 0, 1), [255, 0]),
    "palette colour indices": lambda m: _colour_palette_image(m.astype(np.uint8)),
    "grey rgb": lambda m: Image.fromarray(np.repeat(m[..., None], 3, 2).astype(np.uint8) * 255),
    "grey rgba": lambda m: Image.fromarray(
        np.dstack([m * 255] * 3 + [np.full(m.shape, 255)]).astype(np.uint8)
    ),
}


@pytest.mark.parametrize("encoding", sorted(_BINARY_WRITERS))
@pytest.mark.parametrize("suffix", ["png", "tif"])
def test_binary_mask_in_every_lossless_encoding_gives_the_written_structure(
    tmp_path, encoding, suffix
):
    path = tmp_path / f"liver.{suffix}"
    _BINARY_WRITERS[encoding](_TRUTH).save(path)
    labels = read_labels(path, LabelRule(foreground=3))
    assert labels.dtype == np.uint8
    np.testing.assert_array_equal(labels, np.where(_TRUTH, 3, 0))


def test_true_1_bit_png_is_what_chaos_ct_ships_and_reads_as_the_structure(tmp_path):
    Image.fromarray(_TRUTH).save(tmp_path / "liver_GT_000.png")
    with Image.open(tmp_path / "liver_GT_000.png") as check:
        assert check.mode == "1"
    labels = read_labels(tmp_path / "liver_GT_000.png", LabelRule())
    assert int(labels.sum()) == int(_TRUTH.sum())


def test_empty_mask_is_all_background_in_every_encoding(tmp_path):
    empty = np.zeros_like(_TRUTH)
    for index, (encoding, write) in enumerate(_BINARY_WRITERS.items()):
        path = tmp_path / f"{index}.png"
        write(empty).save(path)
        assert not read_labels(path, LabelRule()).any(), encoding


@pytest.mark.parametrize(
    "stored, found",
    [
        (np.where(_TRUTH, 100, 0), r"0 \(\d+ px\), 100 \(\d+ px\)"),
        (np.where(_TRUTH, 255, 0) + (np.arange(30) == 0) * 100, r"100 \(24 px\), 255"),
        (np.where(_TRUTH, 255, 1), r"0 and one of 1, 255"),
    ],
)
def test_binary_dataset_mask_with_other_values_is_a_mask_error_listing_them(
    tmp_path, stored, found
):
    path = tmp_path / "odd.png"
    Image.fromarray(stored.astype(np.uint8)).save(path)
    with pytest.raises(MaskError, match=rf"odd\.png: 8-bit grey mask holds .*{found}"):
        read_labels(path, LabelRule())


def test_interpolated_edges_are_split_at_half_scale_only_where_the_rule_allows(tmp_path):
    stored = np.where(_TRUTH, 255, 0).astype(np.uint8)
    stored[5, 4:20] = 200  # an edge row, above half: structure
    stored[16, 4:15] = 60  # an edge row, below half: background
    expected = _TRUTH.copy()
    expected[16, 4:15] = False
    Image.fromarray(stored).save(tmp_path / "smooth.png")
    edges = LabelRule(interpolated_edges=True)
    np.testing.assert_array_equal(read_labels(tmp_path / "smooth.png", edges), expected)
    with pytest.raises(MaskError, match="smooth.png.*60 .*200 "):
        read_labels(tmp_path / "smooth.png", LabelRule())
    # 0 and 100 are not edges of anything: no full-scale value at all.
    Image.fromarray(np.where(_TRUTH, 100, 0).astype(np.uint8)).save(tmp_path / "dim.png")
    with pytest.raises(MaskError, match=r"dim.png.*only as interpolated edges"):
        read_labels(tmp_path / "dim.png", edges)
    # A grey region larger than the full-scale one is not an edge either.
    blob = np.where(_TRUTH, 128, 0).astype(np.uint8)
    blob[0, :3] = 255
    Image.fromarray(blob).save(tmp_path / "blob.png")
    with pytest.raises(MaskError, match="blob.png"):
        read_labels(tmp_path / "blob.png", edges)


_MR_GREY = np.array([[0, 63, 126], [189, 252, 0]], np.uint8)
_MR_LABELS = np.array([[0, 1, 2], [3, 4, 0]], np.uint8)
_MR_RULE = LabelRule.from_label_ranges(CHAOS_MR_LABEL_RANGES)


@pytest.mark.parametrize(
    "write",
    [
        lambda g: Image.fromarray(g),
        lambda g: Image.fromarray(g.astype(np.uint16) * 257),  # 8-bit widened to 16 bits
        lambda g: Image.fromarray(g.astype(np.uint16)),  # 8-bit values in a 16-bit file
        lambda g: _grey_palette_image(np.array([[4, 3, 2], [1, 0, 4]]), [252, 189, 126, 63, 0]),
        lambda g: _colour_palette_image(g),  # colour palette: indices are the stored values
        lambda g: Image.fromarray(np.repeat(g[..., None], 3, 2)),
    ],
    ids=["8-bit", "16-bit x257", "16-bit", "palette grey", "palette indices", "grey rgb"],
)
def test_chaos_mr_grey_levels_in_every_encoding_give_the_organ_labels(tmp_path, write):
    write(_MR_GREY).save(tmp_path / "IMG-0004-00001.png")
    labels = read_labels(tmp_path / "IMG-0004-00001.png", _MR_RULE)
    np.testing.assert_array_equal(labels, _MR_LABELS)


def test_grey_level_rule_refuses_1_bit_jpeg_and_off_scale_16_bit(tmp_path):
    Image.fromarray(_TRUTH).save(tmp_path / "bits.png")
    with pytest.raises(MaskError, match="bits.png: is a 1-bit mask"):
        read_labels(tmp_path / "bits.png", _MR_RULE)
    Image.fromarray(np.repeat(_MR_GREY, 8, 0).repeat(8, 1)).save(tmp_path / "mr.jpg")
    with pytest.raises(MaskError, match=r"mr.jpg: is lossy \(JPEG"):
        read_labels(tmp_path / "mr.jpg", _MR_RULE)
    Image.fromarray(np.array([[0, 300]], np.uint16)).save(tmp_path / "wide.png")
    with pytest.raises(MaskError, match=r"wide.png: 16-bit grey mask holds 0 \(1 px\), 300"):
        read_labels(tmp_path / "wide.png", _MR_RULE)
    Image.fromarray(np.array([[0, 100]], np.uint8)).save(tmp_path / "stray.png")
    with pytest.raises(MaskError, match=r"stray.png: values in no range.*100 \(1 px\)"):
        read_labels(tmp_path / "stray.png", _MR_RULE)


def test_jpeg_binary_mask_is_split_at_half_full_scale_with_a_warning(tmp_path):
    big = np.repeat(np.repeat(_TRUTH, 4, 0), 4, 1)
    Image.fromarray(big.astype(np.uint8) * 255).save(tmp_path / "liver.jpg", quality=90)
    with pytest.warns(LossyMaskWarning, match="liver.jpg"):
        labels = read_labels(tmp_path / "liver.jpg", LabelRule())
    np.testing.assert_array_equal(labels, big)
    # An empty JPEG's compression noise stays background (half of its own max would not).
    noise = np.random.default_rng(1).integers(0, 6, big.shape).astype(np.uint8)
    Image.fromarray(noise).save(tmp_path / "empty.jpg", quality=90)
    with pytest.warns(LossyMaskWarning):
        assert not read_labels(tmp_path / "empty.jpg", LabelRule()).any()


def test_jpeg_compressed_tiff_mask_is_lossy_like_a_jpeg(tmp_path):
    big = np.repeat(np.repeat(_TRUTH, 4, 0), 4, 1)
    Image.fromarray(big.astype(np.uint8) * 255).save(
        tmp_path / "liver.tif", compression="jpeg", quality=50
    )
    with Image.open(tmp_path / "liver.tif") as check:
        assert len(np.unique(np.asarray(check))) > 2  # compression noise in the file
    with pytest.warns(LossyMaskWarning, match="liver.tif"):
        labels = read_labels(tmp_path / "liver.tif", LabelRule())
    np.testing.assert_array_equal(labels, big)
    with pytest.warns(LossyMaskWarning):
        np.testing.assert_array_equal(read_mask(tmp_path / "liver.tif"), big)
    with pytest.raises(MaskError, match=r"liver.tif: is lossy"):
        read_labels(tmp_path / "liver.tif", _MR_RULE)


def test_label_rule_checks_itself():
    assert LabelRule().labels == (0, 1)
    assert _MR_RULE.labels == (0, 1, 2, 3, 4)
    with pytest.raises(ValueError, match="overlap"):
        LabelRule(grey_levels=((0, 10, 0), (10, 20, 1)))
    with pytest.raises(ValueError, match="interpolated_edges applies to binary"):
        LabelRule(grey_levels=((0, 0, 0), (255, 255, 1)), interpolated_edges=True)
    with pytest.raises(ValueError, match="foreground"):
        LabelRule(foreground=0)


def test_read_mask_stack_with_a_rule_reads_labels(tmp_path):
    paths = [tmp_path / "a.png", tmp_path / "b.png"]
    Image.fromarray(_TRUTH).save(paths[0])
    Image.fromarray(_TRUTH.astype(np.uint8) * 255).save(paths[1])
    stack = read_mask_stack(paths, expected_shape=(2, *_TRUTH.shape), rule=LabelRule())
    np.testing.assert_array_equal(stack, np.stack([_TRUTH, _TRUTH]).astype(np.uint8))


def test_real_lung_masks_with_interpolated_edges_read_as_the_readme_says(shared_data):
    """All 637 real cxr-lungs masks: 8-bit with resampled edges, "threshold at > 127"."""
    rule = LabelRule(interpolated_edges=True)
    paths = sorted((shared_data / "cxr-lungs" / "masks").glob("*.png"))
    assert len(paths) == 637
    for path in paths:
        with Image.open(path) as image:
            stored = np.asarray(image)
        np.testing.assert_array_equal(read_labels(path, rule), stored > 127, err_msg=path.name)
    with pytest.raises(MaskError, match=paths[0].name):
        read_labels(paths[0], LabelRule())  # a strict 0/255 dataset would refuse its edges


def _packed_rows(samples: np.ndarray, bits: int) -> list[bytes]:
    """Rows of ``samples`` packed ``bits`` to a byte, most significant first (PNG and TIFF)."""
    per_byte = 8 // bits
    rows = []
    for row in samples:
        padded = np.concatenate([row, np.zeros(-len(row) % per_byte, row.dtype)])
        groups = padded.reshape(-1, per_byte).astype(int)
        shifts = bits * np.arange(per_byte - 1, -1, -1)
        rows.append(bytes((groups << shifts).sum(axis=1).tolist()))
    return rows


def _write_grey_png(path, samples: np.ndarray, bits: int) -> None:
    """A grey PNG of ``bits`` bits per sample, written byte by byte after the PNG standard
    (not by Pillow, whose writer has no 2- or 4-bit grey)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    height, width = samples.shape
    header = struct.pack(">IIBBBBB", width, height, bits, 0, 0, 0, 0)
    scanlines = b"".join(b"\0" + row for row in _packed_rows(samples, bits))
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(scanlines))
        + chunk(b"IEND", b"")
    )


def write_grey_tiff(
    path, samples: np.ndarray, bits: int, *, white_is_zero=False, orientation=1, sample_format=1
):
    """An uncompressed little-endian grey TIFF of ``bits`` (1, 2, 4, 8, 12 or 16) bits per
    sample, written after the TIFF 6.0 standard (one strip; sub-byte and 12-bit samples
    packed most significant bit first, each row padded to whole bytes): BlackIsZero, or
    WhiteIsZero (PhotometricInterpretation 0), with an Orientation tag and a SampleFormat
    (1 unsigned, 2 signed: ``samples`` are then written as their two's-complement bytes)."""
    import struct

    height, width = samples.shape
    if bits == 16:
        pixels = samples.astype("<i2" if sample_format == 2 else "<u2").tobytes()
    elif bits == 8:
        pixels = samples.astype(np.int8 if sample_format == 2 else np.uint8).tobytes()
    elif bits == 12:
        row_bits = (samples.astype(np.uint16)[..., None] >> np.arange(11, -1, -1)) & 1
        pixels = np.packbits(row_bits.reshape(height, -1).astype(np.uint8), axis=1).tobytes()
    else:
        pixels = b"".join(_packed_rows(samples, bits))
    entries = [  # (tag, type SHORT=3 / LONG=4, value), in ascending tag order
        (256, 4, width), (257, 4, height), (258, 3, bits), (259, 3, 1),
        (262, 3, 0 if white_is_zero else 1), (273, 4, 8), (274, 3, orientation),
        (277, 3, 1), (278, 4, height), (279, 4, len(pixels)), (339, 3, sample_format),
    ]  # fmt: skip
    ifd = struct.pack("<H", len(entries))
    for tag, kind, value in entries:
        packed = struct.pack("<HH", value, 0) if kind == 3 else struct.pack("<I", value)
        ifd += struct.pack("<HHI", tag, kind, 1) + packed
    ifd += struct.pack("<I", 0)
    path.write_bytes(b"II*\0" + struct.pack("<I", 8 + len(pixels)) + pixels + ifd)


_SUB_BYTE_WRITERS = {"png": _write_grey_png, "tif": write_grey_tiff}


@pytest.mark.parametrize("suffix", sorted(_SUB_BYTE_WRITERS))
@pytest.mark.parametrize("bits", [2, 4])
def test_2_and_4_bit_masks_read_by_their_stored_samples(tmp_path, suffix, bits):
    structure = _square_mask(value=1, shape=(9, 13)).astype(bool)  # odd width: row padding
    full_scale = 2**bits - 1
    rule = LabelRule(foreground=3)
    for on in (1, full_scale):  # a 0/1 label map and a 0/full-scale mask
        path = tmp_path / f"on_{on}.{suffix}"
        _SUB_BYTE_WRITERS[suffix](path, np.where(structure, on, 0).astype(np.uint8), bits)
        with Image.open(path) as check:  # what Pillow alone makes of the file
            assert check.mode == "L" and int(np.asarray(check).max()) == on * 255 // full_scale
        np.testing.assert_array_equal(read_mask(path), np.where(structure, on, 0))
        np.testing.assert_array_equal(read_labels(path, rule), np.where(structure, 3, 0))

    three_values = np.where(structure, 2, 0).astype(np.uint8)
    three_values[0, 0] = 1
    path = tmp_path / f"three.{suffix}"
    _SUB_BYTE_WRITERS[suffix](path, three_values, bits)
    with pytest.raises(MaskError, match=rf"three\.{suffix}.*{bits}-bit grey mask holds"):
        read_labels(path, rule)


def test_2_bit_png_under_a_grey_level_rule_reads_its_samples_on_the_8_bit_scale(tmp_path):
    # optipng stores an 8-bit 0 / 85 / 170 / 255 label image as a 2-bit PNG, losslessly
    samples = np.array([[0, 1, 2, 3], [3, 2, 1, 0]], np.uint8)
    _write_grey_png(tmp_path / "labels.png", samples, 2)
    rule = LabelRule.from_label_ranges({1: (85, 85), 2: (170, 170), 3: (255, 255)})
    np.testing.assert_array_equal(read_labels(tmp_path / "labels.png", rule), samples)
    chaos_mr = LabelRule.from_label_ranges(CHAOS_MR_LABEL_RANGES)
    with pytest.raises(MaskError, match="labels.png"):
        read_labels(tmp_path / "labels.png", chaos_mr)  # 85 is no CHAOS MR grey level


@pytest.mark.parametrize("bits", [1, 2, 4, 8, 16])
def test_white_is_zero_tiff_masks_give_their_stored_samples(tmp_path, bits):
    # ImageJ / Fiji save binary masks with an inverting LUT as WhiteIsZero TIFFs: the
    # structure is stored as the full scale and shown black.
    structure = _square_mask(value=1, shape=(9, 13)).astype(bool)
    on = 2**bits - 1
    stored = np.where(structure, on, 0).astype(np.uint16 if bits == 16 else np.uint8)
    path = tmp_path / "mask.tif"
    write_grey_tiff(path, stored, bits, white_is_zero=True)
    with Image.open(path) as check:  # Pillow alone shows it inverted up to 8 bits
        shown = np.asarray(check).astype(int)
        assert shown[0, 0] == (0 if bits == 16 else (1 if bits == 1 else 255))
    np.testing.assert_array_equal(read_mask(path), stored)
    np.testing.assert_array_equal(read_labels(path, LabelRule()), structure.astype(np.uint8))


def write_16_bit_png(path, samples: np.ndarray, colour_type: int, transparent=None) -> None:
    """A 16-bit PNG of colour type 0 (grey), 2 (RGB), 4 (grey + alpha) or 6 (RGBA), written
    byte by byte after the PNG standard; ``samples`` is ``(rows, columns, channels)``. A grey
    or RGB file may name one ``transparent`` value (an int or RGB tuple) in a tRNS chunk."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    height, width = samples.shape[:2]
    header = struct.pack(">IIBBBBB", width, height, 16, colour_type, 0, 0, 0)
    scanlines = b"".join(b"\0" + row.astype(">u2").tobytes() for row in samples)
    key = np.atleast_1d(transparent).astype(">u2").tobytes() if transparent is not None else b""
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + (chunk(b"tRNS", key) if key else b"")
        + chunk(b"IDAT", zlib.compress(scanlines))
        + chunk(b"IEND", b"")
    )


@pytest.mark.parametrize("colour_type, channels", [(2, 3), (4, 2), (6, 4)])
def test_16_bit_colour_or_alpha_png_mask_is_refused_not_read_empty(
    tmp_path, colour_type, channels
):
    labels = _square_mask(value=1, dtype=np.uint16, shape=(6, 7))
    samples = np.repeat(labels[..., None], channels, axis=2)
    if colour_type in (4, 6):
        samples[..., -1] = 65535  # opaque
    path = tmp_path / "mask.png"
    write_16_bit_png(path, samples, colour_type)
    with Image.open(path) as check:  # what Pillow alone makes of it: every label 1 is 0
        assert not np.asarray(check)[..., :3].any()
    with pytest.raises(MaskError, match=r"mask\.png: is a 16-bit .*high byte"):
        read_labels(path, LabelRule())
    with pytest.raises(MaskError, match=r"mask\.png: is a 16-bit"):
        read_mask(path)
