"""Tests of kseg.data.xray_phantom: files read back with numpy, Pillow and pydicom only."""

import numpy as np
import pydicom
import pytest
from PIL import Image

from kseg.data import xray_phantom
from kseg.errors import LayoutError


def test_radiograph_is_seeded_in_range_and_has_chest_contrast():
    phantom = xray_phantom.chest_radiograph((96, 96), seed=4)
    again = xray_phantom.chest_radiograph((96, 96), seed=4)
    other = xray_phantom.chest_radiograph((96, 96), seed=5)
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
    masks = xray_phantom.structure_masks((128, 128), seed=2)
    columns = np.arange(128)[None, :]
    assert np.mean(np.broadcast_to(columns, (128, 128))[masks["right lung"]]) < 64
    assert np.mean(np.broadcast_to(columns, (128, 128))[masks["left lung"]]) > 64
    assert not (masks["heart"] & (masks["left lung"] | masks["right lung"])).any()
    assert (masks["right clavicle"] & masks["right lung"]).any()
    lung_fraction = (masks["right lung"] | masks["left lung"]).mean()
    assert 0.15 < lung_fraction < 0.35


def test_jsrt_scr_files_are_inverted_big_endian_words_and_half_resolution_gifs(tmp_path):
    root = xray_phantom.write_jsrt_scr(tmp_path, num_images=3, size=32, seed=1)
    names = ["JPCLN001", "JPCNN001", "JPCLN002"]
    assert sorted(p.name for p in (root / "All247images").iterdir()) == sorted(
        f"{n}.IMG" for n in names
    )
    for k, name in enumerate(names):
        data = (root / "All247images" / f"{name}.IMG").read_bytes()
        assert len(data) == 32 * 32 * 2
        stored = np.frombuffer(data, dtype=">u2").reshape(32, 32)
        phantom = xray_phantom.chest_radiograph((32, 32), seed=1000 + k)
        np.testing.assert_array_equal(stored, 4095 - phantom.image.astype(int))
        fold = "fold1" if int(name[-3:]) % 2 else "fold2"
        expected = xray_phantom.structure_masks((16, 16), seed=1000 + k)
        for structure in xray_phantom.STRUCTURES:
            gif = Image.open(root / "scratch" / fold / "masks" / structure / f"{name}.gif")
            assert gif.format == "GIF" and gif.size == (16, 16)
            np.testing.assert_array_equal(np.asarray(gif.convert("L")) == 255, expected[structure])
    assert "synthetic" in (root / "SYNTHETIC.txt").read_text()
    assert not [p for p in root.iterdir() if p.name.startswith(".")]


def test_montgomery_images_are_16_bit_pngs_marked_synthetic(tmp_path):
    root = xray_phantom.write_montgomery(tmp_path, num_images=2, size=24, seed=3)
    base = root / "MontgomerySet"
    for k, name in enumerate(["MCUCXR_0001_0.png", "MCUCXR_0002_1.png"]):
        phantom = xray_phantom.chest_radiograph((24, 24), seed=3000 + k)
        png = Image.open(base / "CXR_png" / name)
        assert png.mode == "I;16" and png.text["Comment"] == xray_phantom.SYNTHETIC_NOTICE
        np.testing.assert_array_equal(np.asarray(png), phantom.image)
        for folder, structure in (("leftMask", "left lung"), ("rightMask", "right lung")):
            mask = np.asarray(Image.open(base / "ManualMask" / folder / name))
            np.testing.assert_array_equal(mask, np.where(phantom.structures[structure], 255, 0))


def test_generic_label_maps_store_the_documented_grey_values(tmp_path):
    root = xray_phantom.write_generic(
        tmp_path, num_images=2, size=24, seed=7, classes=xray_phantom.GENERIC_CLASSES
    )
    assert xray_phantom.mask_values() == {"lungs": 85, "heart": 170, "clavicles": 255}
    for k in range(2):
        phantom = xray_phantom.chest_radiograph((24, 24), seed=7000 + k, bit_depth=8)
        s = phantom.structures
        expected = np.zeros((24, 24), np.uint8)
        expected[s["right lung"] | s["left lung"]] = 85
        expected[s["heart"]] = 170
        expected[s["right clavicle"] | s["left clavicle"]] = 255
        stem = f"P{k + 1:04d}_0"
        np.testing.assert_array_equal(
            np.asarray(Image.open(root / "masks" / f"{stem}.png")), expected
        )
        image = Image.open(root / "images" / f"{stem}.png")
        assert image.mode == "L"
        np.testing.assert_array_equal(np.asarray(image), phantom.image)


def test_generic_dicom_and_per_class_folders(tmp_path):
    root = xray_phantom.write_generic(
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
        phantom = xray_phantom.chest_radiograph((16, 16), seed=2000 + view, bit_depth=14)
        dataset = pydicom.dcmread(root / "images" / f"P0001_{view}.dcm")
        assert dataset.BitsStored == 14 and dataset.PhotometricInterpretation == "MONOCHROME2"
        assert dataset.ImageComments == xray_phantom.SYNTHETIC_NOTICE
        assert str(dataset.PatientName) == "KSEG^PHANTOM" and dataset.PatientID == "P0001"
        np.testing.assert_array_equal(dataset.pixel_array, phantom.image)
        heart = np.asarray(Image.open(root / "masks" / "heart" / f"P0001_{view}.png"))
        np.testing.assert_array_equal(heart, np.where(phantom.structures["heart"], 255, 0))


def test_writers_never_overwrite_and_the_cli_writes_every_layout(tmp_path):
    xray_phantom.main([str(tmp_path), "--num-images", "2", "--size", "16"])
    for folder in ("All247images", "scratch", "MontgomerySet", "images", "masks"):
        assert (tmp_path / folder).is_dir()
    before = (tmp_path / "images" / "P0001_0.png").read_bytes()
    with pytest.raises(LayoutError, match=r"images: already exists"):
        xray_phantom.write_generic(tmp_path, num_images=1, size=16, seed=9)
    assert (tmp_path / "images" / "P0001_0.png").read_bytes() == before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="shape must be two integers of at least 8"):
        xray_phantom.chest_radiograph((4, 64))
    with pytest.raises(ValueError, match="classes must be distinct names"):
        xray_phantom.label_map(xray_phantom.structure_masks((16, 16)), ("lungs", "spleen"))
    with pytest.raises(ValueError, match="size must be an even integer"):
        xray_phantom.write_jsrt_scr("unused", size=33)
