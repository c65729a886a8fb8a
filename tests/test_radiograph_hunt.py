"""Radiographs and their masks as archives and users ship them: inputs that were read wrongly
without a word, each checked against a file written directly with Pillow / pydicom here."""

from __future__ import annotations

import dataclasses
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


def test_colour_mask_saved_as_gif_is_not_read_inverted(tmp_path):
    # Pillow's GIF writer (and quantize / image editors) order a colour mask's palette by
    # colour: the red lungs became index 0 and the black background index 1, so reading the
    # indices gave the background as the lungs, and "lungs present" passed.
    rgb = _lungs_rgb((255, 0, 0), (255, 0, 0))
    path = tmp_path / "JPCLN001.gif"
    Image.fromarray(rgb).save(path)
    with Image.open(path) as written:  # the premise: black is not index 0
        assert written.getpalette()[:6] == [255, 0, 0, 0, 0, 0]
    np.testing.assert_array_equal(
        read_labels(path, LabelRule()), (rgb[..., 0] > 0).astype(np.uint8)
    )


def test_colour_gif_of_several_structures_in_colour_order_is_refused(tmp_path):
    # Three colours in a quantizer's order: green 0, red 1, black 2. Under a label-map rule
    # green (a lung) read as background and the black background as label 2.
    path = tmp_path / "CHNCXR_0001_0.gif"
    Image.fromarray(_lungs_rgb((255, 0, 0), (0, 255, 0))).save(path)
    rule = LabelRule(grey_levels=((0, 0, 0), (1, 1, 1), (2, 2, 2)))
    with pytest.raises(MaskError, match="index 2, not 0") as error:
        read_labels(path, rule)
    assert str(path) in str(error.value)


def _secondary_capture(path, pixels: np.ndarray, photometric: str, *, jpeg: bytes | None = None):
    """A single-frame Secondary Capture of 8-bit colour samples, written with pydicom."""
    import pydicom
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.encaps import encapsulate
    from pydicom.uid import ExplicitVRLittleEndian, JPEGBaseline8Bit, generate_uid

    dataset = Dataset()
    dataset.file_meta = FileMetaDataset()
    dataset.file_meta.TransferSyntaxUID = JPEGBaseline8Bit if jpeg else ExplicitVRLittleEndian
    dataset.file_meta.MediaStorageSOPClassUID = pydicom.uid.SecondaryCaptureImageStorage
    dataset.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    dataset.SOPClassUID = dataset.file_meta.MediaStorageSOPClassUID
    dataset.SOPInstanceUID = dataset.file_meta.MediaStorageSOPInstanceUID
    dataset.Modality = "OT"
    dataset.Rows, dataset.Columns = pixels.shape[:2]
    dataset.SamplesPerPixel = 3
    dataset.PlanarConfiguration = 0
    dataset.PhotometricInterpretation = photometric
    dataset.BitsAllocated = dataset.BitsStored = 8
    dataset.HighBit = 7
    dataset.PixelRepresentation = 0
    dataset.PixelData = encapsulate([jpeg]) if jpeg else pixels.tobytes()
    dataset.save_as(path, enforce_file_format=True)


def _chest(rows=48, columns=40) -> np.ndarray:
    y, x = np.mgrid[:rows, :columns]
    return np.clip(120 + 80 * np.sin(x / 5.0) * np.cos(y / 7.0), 0, 255).astype(np.uint8)


def test_grey_radiograph_stored_as_rgb_or_ybr_secondary_capture_reads_its_grey(tmp_path):
    # A grey radiograph exported as an RGB / YBR_FULL secondary capture was refused
    # ("expected grayscale images"), while the same pixels as an RGB PNG read as grey.
    from kseg.io import read_radiograph

    grey = _chest()
    cases = {
        "rgb.dcm": (np.stack([grey] * 3, axis=-1), "RGB"),
        "ybr.dcm": (np.stack([grey, np.full_like(grey, 128), np.full_like(grey, 128)], -1),
                    "YBR_FULL"),
    }  # fmt: skip
    for name, (samples, photometric) in cases.items():
        _secondary_capture(tmp_path / name, samples, photometric)
        for values in ("displayed", "modality"):
            image, bit_depth = read_radiograph(tmp_path / name, dicom_values=values)
            np.testing.assert_array_equal(image, grey)
            assert image.dtype == np.uint16 and bit_depth == 8


def test_grey_radiograph_as_ybr_jpeg_secondary_capture_reads_like_the_jpeg(tmp_path):
    import io

    from kseg.io import read_radiograph

    buffer = io.BytesIO()
    Image.fromarray(_chest()).convert("RGB").save(buffer, format="JPEG", quality=90)
    decoded = np.asarray(Image.open(io.BytesIO(buffer.getvalue())))  # Pillow's own reading
    assert (decoded == decoded[..., :1]).all()
    path = tmp_path / "sc.dcm"
    _secondary_capture(path, decoded, "YBR_FULL_422", jpeg=buffer.getvalue())
    image, bit_depth = read_radiograph(path, dicom_values="displayed")
    np.testing.assert_array_equal(image, decoded[..., 0])
    assert bit_depth == 8


def test_colour_secondary_capture_is_still_refused_naming_the_file(tmp_path):
    from kseg.errors import UnreadableFileError
    from kseg.io import read_radiograph

    colour = np.stack([_chest(), _chest()[::-1], np.zeros((48, 40), np.uint8)], axis=-1)
    path = tmp_path / "photo.dcm"
    _secondary_capture(path, np.ascontiguousarray(colour), "RGB")
    with pytest.raises(UnreadableFileError, match="colour") as error:
        read_radiograph(path)
    assert str(path) in str(error.value)


@pytest.mark.parametrize("kind", ["missing", "folder"])
def test_jsrt_file_that_cannot_be_opened_is_an_error_naming_it(tmp_path, kind):
    # read_jsrt_image let FileNotFoundError / IsADirectoryError out bare.
    from kseg.errors import UnreadableFileError
    from kseg.io import read_jsrt_image

    path = tmp_path / "All247images" / "JPCLN001.IMG"
    if kind == "folder":
        path.mkdir(parents=True)
    with pytest.raises(UnreadableFileError) as error:
        read_jsrt_image(path)
    assert str(path) in str(error.value)


def _camera_jpeg(path, grey: np.ndarray, second_kind: int) -> None:
    """A JPEG with a Multi-Picture index, as cameras and phones write: the image, then a
    smaller copy whose MPType is ``second_kind`` (0x010001: large thumbnail)."""
    import struct

    image = Image.fromarray(grey)
    image.save(path, format="MPO", save_all=True, append_images=[image.resize((16, 16))])
    data = bytearray(path.read_bytes())
    tiff = data.find(b"MPF\0") + 4  # the MP index: a little-endian TIFF IFD
    ifd = tiff + struct.unpack_from("<L", data, tiff + 4)[0]
    for k in range(struct.unpack_from("<H", data, ifd)[0]):
        tag, _, _, offset = struct.unpack_from("<HHLL", data, ifd + 2 + 12 * k)
        if tag == 0xB002:  # MPEntry: 16 bytes per image, its MPType first
            second = tiff + offset + 16
    assert struct.unpack_from("<L", data, second)[0] == 0  # Pillow writes "Undefined"
    data[second : second + 4] = struct.pack("<L", second_kind)
    path.write_bytes(bytes(data))


def test_camera_jpeg_with_a_large_thumbnail_reads_its_primary_image(tmp_path):
    # Pillow opens a JPEG whose Multi-Picture index lists a large thumbnail as two frames
    # (format MPO): a photographed radiograph was refused as "has 2 frames".
    from kseg.io import read_radiograph

    path = tmp_path / "DSC_0001.JPG"
    _camera_jpeg(path, _chest(64, 64), 0x010001)
    with Image.open(path) as opened:
        assert opened.n_frames == 2
        primary = np.asarray(opened)  # frame 0, the primary image
    image, bit_depth = read_radiograph(path)
    np.testing.assert_array_equal(image, primary)
    assert bit_depth == 8


def test_multi_picture_jpeg_of_two_undefined_images_is_still_refused(tmp_path):
    from kseg.errors import UnreadableFileError
    from kseg.io import read_radiograph

    path = tmp_path / "pair.jpg"
    _camera_jpeg(path, _chest(64, 64), 0x000000)
    with pytest.raises(UnreadableFileError, match="2 frames"):
        read_radiograph(path)


def test_secondary_capture_with_a_damaged_photometric_value_names_the_file(tmp_path):
    from kseg.errors import UnreadableFileError
    from kseg.io import read_radiograph

    path = tmp_path / "sc.dcm"
    _secondary_capture(path, np.stack([_chest()] * 3, axis=-1), "RGB")
    data = bytearray(path.read_bytes())
    element = data.find(b"\x28\x00\x04\x00")  # (0028,0004) PhotometricInterpretation
    data[element + 4 : element + 6] = b"C:"  # a VR pydicom does not know
    path.write_bytes(bytes(data))
    with pytest.raises(UnreadableFileError) as error:
        read_radiograph(path)
    assert str(path) in str(error.value)


def test_image_whose_mask_has_another_suffix_or_case_names_that_mask(tmp_path):
    # Kaggle's "Chest Xray Masks and Labels" holds Shenzhen masks named <image>_mask.png
    # beside Montgomery masks named <image>.png: the MaskError named only the missing name.
    from etils import epath

    from tfds_builders.xray.layout import find_records
    from tfds_builders.xray.xray_dataset_builder import Builder

    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    for name in ("CHNCXR_0001_0", "MCUCXR_0001_0"):
        Image.fromarray(_chest()).save(tmp_path / "images" / f"{name}.png")
    for name in ("CHNCXR_0001_0_mask", "MCUCXR_0001_0"):
        Image.fromarray(np.zeros((48, 40), np.uint8)).save(tmp_path / "masks" / f"{name}.png")
    config = Builder.builder_configs["generic"]
    with pytest.raises(MaskError, match=r"CHNCXR_0001_0\.png: has no mask") as error:
        find_records(epath.Path(tmp_path), config)
    assert "CHNCXR_0001_0_mask.png" in str(error.value)
    assert "mask_suffix='_mask'" in str(error.value)
    suffixed = dataclasses.replace(config, mask_suffix="_mask")
    with pytest.raises(MaskError, match=r"MCUCXR_0001_0\.png: has no mask") as error:
        find_records(epath.Path(tmp_path), suffixed)
    assert "mask_suffix=''" in str(error.value)
