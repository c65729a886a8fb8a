"""Tests of kseg.phantoms.xray: files read back with numpy, Pillow and pydicom only."""

import numpy as np
import pydicom
import pytest
from PIL import Image

from kseg.errors import LayoutError
from kseg.phantoms import SYNTHETIC_NOTICE, xray

_MODE_OF_ENCODING = {
    "1bit": "1", "8bit": "L", "8bit_01": "L", "8bit_edges": "L", "16bit": "I;16",
    "16bit_01": "I;16", "palette_grey": "P", "palette_index": "P", "rgb": "RGB",
    "rgba": "RGBA", "jpg": "L",
}


def _grey(path, encoding, binary=True):
    """The grey values (0 / 255, or a label map's class values) a mask file holds, decoded
    with Pillow by what each encoding is documented to store."""
    with Image.open(path) as image:
        assert image.mode == _MODE_OF_ENCODING[encoding], (path, image.mode)
        stored = np.asarray(image).astype(np.int64)
        colours = np.asarray(image.convert("RGB")).astype(np.int64)
    if encoding in ("1bit", "8bit_01", "16bit_01"):
        assert set(np.unique(stored).tolist()) <= {0, 1}
        return stored * 255
    if encoding == "16bit":
        assert not (stored % 257).any()
        return stored // 257
    if encoding in ("palette_grey", "rgb", "rgba"):
        assert (colours == colours[..., :1]).all()
        if encoding == "palette_grey":  # the index is not the grey value
            assert not np.array_equal(stored, colours[..., 0])
        if encoding == "rgba":
            assert (stored[..., 3] == 255).all()
        return colours[..., 0]
    if encoding == "palette_index":
        assert not (colours == colours[..., :1]).all(axis=-1).all()
        return stored * 255 if binary else stored
    return stored  # 8bit, 8bit_edges, jpg


def test_radiograph_is_seeded_in_range_and_has_chest_contrast():
    phantom = xray.chest_radiograph((96, 96), seed=4)
    again = xray.chest_radiograph((96, 96), seed=4)
    other = xray.chest_radiograph((96, 96), seed=5)
    np.testing.assert_array_equal(phantom.image, again.image)
    assert not np.array_equal(phantom.image, other.image)
    assert phantom.image.dtype == np.uint16 and phantom.bit_depth == 12
    assert 0 <= phantom.image.min() and phantom.image.max() <= 4095
    s = phantom.structures
    lungs = s["right lung"] | s["left lung"]
    # Lung fields are darker than the heart and the clavicles (less attenuation).
    assert phantom.image[lungs].mean() < phantom.image[s["heart"]].mean() - 500
    assert phantom.image[lungs].mean() < phantom.image[s["right clavicle"]].mean()
    # Air outside the body sits at 8 % of the range with noise of 1 % of the maximum.
    corner = phantom.image[:6, :6].astype(float)
    assert abs(corner.mean() - 0.08 * 4095) < 20
    assert 0.5 * 40.95 < corner.std() < 1.5 * 40.95


def test_structures_follow_the_radiological_view_and_scr_conventions():
    masks = xray.structure_masks((128, 128), seed=2)
    columns = np.arange(128)[None, :]
    assert np.mean(np.broadcast_to(columns, (128, 128))[masks["right lung"]]) < 64
    assert np.mean(np.broadcast_to(columns, (128, 128))[masks["left lung"]]) > 64
    assert not (masks["heart"] & (masks["left lung"] | masks["right lung"])).any()
    assert (masks["right clavicle"] & masks["right lung"]).any()
    lung_fraction = (masks["right lung"] | masks["left lung"]).mean()
    assert 0.15 < lung_fraction < 0.35


def test_jsrt_scr_files_are_inverted_big_endian_words_and_half_resolution_gifs(tmp_path):
    root = xray.write_jsrt_scr(tmp_path, num_images=3, size=32, seed=1)
    names = ["JPCLN001", "JPCNN001", "JPCLN002"]
    assert sorted(p.name for p in (root / "All247images").iterdir()) == sorted(
        f"{n}.IMG" for n in names
    )
    for k, name in enumerate(names):
        data = (root / "All247images" / f"{name}.IMG").read_bytes()
        assert len(data) == 32 * 32 * 2
        stored = np.frombuffer(data, dtype=">u2").reshape(32, 32)
        phantom = xray.chest_radiograph((32, 32), seed=1000 + k)
        np.testing.assert_array_equal(stored, 4095 - phantom.image.astype(int))
        fold = "fold1" if int(name[-3:]) % 2 else "fold2"
        expected = xray.structure_masks((16, 16), seed=1000 + k)
        encoding = xray.default_mask_encoding("gif", k)
        for structure in xray.STRUCTURES:
            path = root / "scratch" / fold / "masks" / structure / f"{name}.gif"
            gif = Image.open(path)
            assert gif.format == "GIF" and gif.size == (16, 16)
            np.testing.assert_array_equal(_grey(path, encoding) == 255, expected[structure])
    assert "synthetic" in (root / "SYNTHETIC.txt").read_text()
    assert not [p for p in root.iterdir() if p.name.startswith(".")]


def test_montgomery_images_are_16_bit_pngs_marked_synthetic(tmp_path):
    root = xray.write_montgomery(tmp_path, num_images=2, size=24, seed=3)
    base = root / "MontgomerySet"
    for k, name in enumerate(["MCUCXR_0001_0.png", "MCUCXR_0002_1.png"]):
        phantom = xray.chest_radiograph((24, 24), seed=3000 + k)
        png = Image.open(base / "CXR_png" / name)
        assert png.mode == "I;16" and png.text["Comment"] == SYNTHETIC_NOTICE
        np.testing.assert_array_equal(np.asarray(png), phantom.image)
        encoding = xray.default_mask_encoding("binary", k)
        for folder, structure in (("leftMask", "left lung"), ("rightMask", "right lung")):
            mask = _grey(base / "ManualMask" / folder / name, encoding)
            np.testing.assert_array_equal(mask, np.where(phantom.structures[structure], 255, 0))


def test_generic_label_maps_store_the_documented_grey_values(tmp_path):
    root = xray.write_generic(
        tmp_path, num_images=2, size=24, seed=7, classes=xray.GENERIC_CLASSES
    )
    assert xray.mask_values() == {"lungs": 85, "heart": 170, "clavicles": 255}
    for k in range(2):
        phantom = xray.chest_radiograph((24, 24), seed=7000 + k, bit_depth=8)
        s = phantom.structures
        expected = np.zeros((24, 24), np.uint8)
        expected[s["right lung"] | s["left lung"]] = 85
        expected[s["heart"]] = 170
        expected[s["right clavicle"] | s["left clavicle"]] = 255
        stem = f"P{k + 1:04d}_0"
        encoding = xray.default_mask_encoding("label_map", k)
        grey = _grey(root / "masks" / f"{stem}.png", encoding, binary=False)
        np.testing.assert_array_equal(grey, expected)
        image = Image.open(root / "images" / f"{stem}.png")
        assert image.mode == "L"
        np.testing.assert_array_equal(np.asarray(image), phantom.image)


def test_generic_dicom_and_per_class_folders(tmp_path):
    root = xray.write_generic(
        tmp_path,
        num_images=1,
        size=16,
        seed=2,
        image_format="dicom",
        bit_depth=14,
        per_class_folders=True,
        classes=("lungs", "heart"),
        images_per_patient=2,
    )
    for view in (0, 1):
        phantom = xray.chest_radiograph((16, 16), seed=2000 + view, bit_depth=14)
        dataset = pydicom.dcmread(root / "images" / f"P0001_{view}.dcm")
        assert dataset.BitsStored == 14 and dataset.PhotometricInterpretation == "MONOCHROME2"
        assert dataset.ImageComments == SYNTHETIC_NOTICE
        assert str(dataset.PatientName) == "KSEG^PHANTOM" and dataset.PatientID == "P0001"
        np.testing.assert_array_equal(dataset.pixel_array, phantom.image)
        encoding = xray.default_mask_encoding("binary", view)
        heart = _grey(root / "masks" / "heart" / f"P0001_{view}.png", encoding)
        np.testing.assert_array_equal(heart, np.where(phantom.structures["heart"], 255, 0))


@pytest.mark.parametrize("display", sorted(xray.DICOM_DISPLAY_ENCODINGS))
def test_dicom_display_encodings_hold_the_documented_attributes(tmp_path, display):
    root = xray.write_generic(
        tmp_path, num_images=1, size=16, seed=4, image_format="dicom", bit_depth=12,
        dicom_display=display,
    )  # fmt: skip
    ds = pydicom.dcmread(root / "images" / "P0001_0.dcm")
    phantom = xray.chest_radiograph((16, 16), seed=4000, bit_depth=12)
    inverted = display in ("monochrome1", "inverse")
    stored = 4095 - phantom.image.astype(np.int64) if inverted else phantom.image
    np.testing.assert_array_equal(ds.pixel_array, stored)
    assert ds.PhotometricInterpretation == (
        "MONOCHROME1" if display == "monochrome1" else "MONOCHROME2"
    )
    assert ds.get("PresentationLUTShape") == ("INVERSE" if inverted else None)
    if display == "none":
        assert "WindowCenter" not in ds and "VOILUTSequence" not in ds
        return
    assert len(ds.WindowCenter) == len(ds.WindowWidth) == 2
    # the first window clips the phantom's values at both ends
    center, width = ds.WindowCenter[0], ds.WindowWidth[0]
    low, high = center - width / 2, center + width / 2
    assert stored.min() < low and stored.max() > high
    expected_function = {"linear_exact": "LINEAR_EXACT", "sigmoid": "SIGMOID"}.get(display)
    assert ds.get("VOILUTFunction") == expected_function
    if display == "voi_lut":
        [item] = ds.VOILUTSequence
        assert list(item.LUTDescriptor) == [4096, 0, 16]
        table = np.frombuffer(item.LUTData, "<u2")
        np.testing.assert_array_equal(table, np.rint(np.sqrt(np.arange(4096) / 4095) * 65535))
    else:
        assert "VOILUTSequence" not in ds


def test_dicom_display_needs_dicom_images(tmp_path):
    with pytest.raises(ValueError, match="dicom_display must be one of"):
        xray.write_generic(tmp_path / "a", num_images=1, size=16, dicom_display="window")
    with pytest.raises(ValueError, match="dicom_display must be one of"):
        xray.write_generic(
            tmp_path / "b", num_images=1, size=16, image_format="dicom", dicom_display="gamma"
        )


def test_writers_never_overwrite_and_the_cli_writes_every_layout(tmp_path):
    xray.main([str(tmp_path), "--num-images", "2", "--size", "16"])
    for folder in ("All247images", "scratch", "MontgomerySet", "images", "masks"):
        assert (tmp_path / folder).is_dir()
    before = (tmp_path / "images" / "P0001_0.png").read_bytes()
    with pytest.raises(LayoutError, match=r"images: already exists"):
        xray.write_generic(tmp_path, num_images=1, size=16, seed=9)
    assert (tmp_path / "images" / "P0001_0.png").read_bytes() == before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="shape must be two integers of at least 8"):
        xray.chest_radiograph((4, 64))
    with pytest.raises(ValueError, match="classes must be distinct names"):
        xray.label_map(xray.structure_masks((16, 16)), ("lungs", "spleen"))
    with pytest.raises(ValueError, match="size must be an even integer"):
        xray.write_jsrt_scr("unused", size=33)


@pytest.mark.parametrize("encoding", sorted(xray.MASK_ENCODINGS))
def test_every_encoding_stores_the_lungs_or_the_label_map(tmp_path, encoding):
    binary_root = xray.write_generic(
        tmp_path / "binary", num_images=1, size=32, seed=3, mask_encoding=encoding
    )
    phantom = xray.chest_radiograph((32, 32), seed=3000, bit_depth=8)
    s = phantom.structures
    lungs = s["right lung"] | s["left lung"]
    suffix = ".jpg" if encoding == "jpg" else ".png"
    grey = _grey(binary_root / "masks" / f"P0001_0{suffix}", encoding)
    if encoding == "jpg":  # lossy: only a few edge pixels may land on the wrong side
        assert np.count_nonzero((grey > 127) != lungs) <= 0.02 * lungs.size
    elif encoding == "8bit_edges":
        # Each pixel holds 255 x the lung fraction of its 4 x 4 sub-pixels.
        fine = xray.structure_masks((128, 128), seed=3000)
        fraction = (fine["right lung"] | fine["left lung"]).reshape(32, 4, 32, 4).mean((1, 3))
        np.testing.assert_array_equal(grey, np.rint(255 * fraction))
        assert ((grey > 0) & (grey < 255)).any()
    else:
        np.testing.assert_array_equal(grey, np.where(lungs, 255, 0))

    classes = xray.GENERIC_CLASSES
    if encoding in ("1bit", "8bit_01", "8bit_edges", "16bit_01", "jpg"):
        with pytest.raises(ValueError, match="cannot hold a label map of several classes"):
            xray.write_generic(tmp_path / "map", classes=classes, mask_encoding=encoding)
        return
    map_root = xray.write_generic(
        tmp_path / "map", num_images=1, size=32, seed=3, classes=classes, mask_encoding=encoding
    )
    expected = np.zeros((32, 32), np.int64)
    expected[lungs] = 85
    expected[s["heart"]] = 170
    expected[s["right clavicle"] | s["left clavicle"]] = 255
    grey = _grey(map_root / "masks" / "P0001_0.png", encoding, binary=False)
    np.testing.assert_array_equal(grey, expected)


def test_default_encodings_vary_per_image_and_bad_ones_are_refused(tmp_path):
    binary = {xray.default_mask_encoding("binary", k) for k in range(9)}
    assert binary == set(xray.MASK_ENCODINGS) - {"8bit_edges", "jpg"}
    assert xray.default_mask_encoding("binary", 0) == "8bit"
    with pytest.raises(ValueError, match="mask_encoding of GIF masks"):
        xray.write_jsrt_scr(tmp_path, mask_encoding="rgb")
    with pytest.raises(ValueError, match="mask_encoding must be None or one of"):
        xray.write_montgomery(tmp_path, mask_encoding="gif")
