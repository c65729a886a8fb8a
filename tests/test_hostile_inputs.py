"""Hostile and malformed inputs found by a sweep over the public readers: each must give a
kseg error (or a documented warning) naming the file or argument, and leave the file as it
was. The inputs are written here with PIL, numpy, pydicom or raw bytes, never by kseg."""

from __future__ import annotations

import hashlib
import os
import struct
import warnings
import zipfile
import zlib

import numpy as np
import pydicom
import pytest
from PIL import Image, ImageFile
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from kseg.errors import MaskError, UnreadableFileError
from kseg.io import (
    LabelRule,
    LossyMaskWarning,
    read_labels,
    read_mask,
    read_mask_stack,
    read_npz_mask,
    read_radiograph,
)


def _fingerprint(path) -> tuple[str, int]:
    with open(path, "rb") as handle:
        return hashlib.sha256(handle.read()).hexdigest(), os.stat(path).st_mtime_ns


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    crc = zlib.crc32(kind + data) & 0xFFFFFFFF
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)


def _bomb_png(width: int, height: int) -> bytes:
    """A few hundred bytes declaring a ``width x height`` 8-bit grey PNG."""
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", header)
        + _png_chunk(b"IDAT", zlib.compress(b"\0" * 1000))
        + _png_chunk(b"IEND", b"")
    )


@pytest.mark.parametrize("side", [15_000, 100_000])
@pytest.mark.parametrize(
    "reader",
    [
        read_mask,
        lambda p: read_labels(p, LabelRule()),
        lambda p: read_mask_stack([p]),
        read_radiograph,
    ],
    ids=["read_mask", "read_labels", "read_mask_stack", "read_radiograph"],
)
def test_decompression_bomb_is_an_unreadable_file_error(tmp_path, reader, side):
    # Pillow raises DecompressionBombError (neither OSError nor ValueError) before decoding.
    path = tmp_path / "liver_GT_001.png"
    path.write_bytes(_bomb_png(side, side))
    before = _fingerprint(path)
    with pytest.raises(UnreadableFileError, match="too large") as caught:
        reader(path)
    assert str(path) in str(caught.value)
    assert _fingerprint(path) == before


def _webp(path, lossless: bool) -> np.ndarray:
    mask = np.zeros((32, 32), np.uint8)
    mask[8:20, 6:25] = 255
    Image.fromarray(mask).save(path, format="WEBP", lossless=lossless, quality=30)
    return mask


def test_lossy_webp_mask_is_thresholded_with_a_warning(tmp_path):
    path = tmp_path / "mask.webp"
    mask = _webp(path, lossless=False)
    before = _fingerprint(path)
    with pytest.warns(LossyMaskWarning, match=str(path)):
        labels = read_labels(path, LabelRule())
    # Reference: Pillow's own decoding of the file, split at half the 8-bit full scale.
    decoded = np.asarray(Image.open(path).convert("L"))
    np.testing.assert_array_equal(labels, (decoded > 127).astype(np.uint8))
    assert np.mean(labels == (mask > 0)) > 0.95
    with pytest.warns(LossyMaskWarning, match=str(path)):
        read_mask(path)
    assert _fingerprint(path) == before


def test_lossless_webp_mask_reads_without_warning(tmp_path):
    path = tmp_path / "mask.webp"
    mask = _webp(path, lossless=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        labels = read_labels(path, LabelRule())
    np.testing.assert_array_equal(labels, (mask > 0).astype(np.uint8))


def test_read_mask_stack_refuses_a_single_path(tmp_path):
    path = tmp_path / "mask.png"
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(path)
    with pytest.raises(ValueError, match="paths") as caught:
        read_mask_stack(str(path))
    assert str(path) in str(caught.value)


@pytest.mark.parametrize(
    "kwargs", [{"foreground": "liver"}, {"grey_levels": 5}, {"grey_levels": (("a", 1, 2),)}]
)
def test_label_rule_with_wrong_types_names_the_argument(kwargs):
    with pytest.raises(ValueError, match="grey_levels") as caught:
        LabelRule(**kwargs)
    assert "foreground" in str(caught.value)


class _Evil:
    """Unpickling this would create a file: the reader must never unpickle."""

    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return (open, (self.target, "w"))


def test_npz_member_that_is_a_pickle_is_refused_unloaded(tmp_path):
    import pickle

    path = tmp_path / "mask.npz"
    target = tmp_path / "pwned"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("mask", pickle.dumps(_Evil(str(target))))
    before = _fingerprint(path)
    with pytest.raises(UnreadableFileError, match="not a .npy array") as caught:
        read_npz_mask(path)
    assert str(path) in str(caught.value)
    assert not target.exists()
    assert _fingerprint(path) == before


def test_npz_mask_with_an_empty_dimension_is_a_mask_error(tmp_path):
    path = tmp_path / "mask.npz"
    np.savez(path, mask=np.zeros((0, 4, 4), np.uint8))
    with pytest.raises(MaskError, match="empty dimension") as caught:
        read_npz_mask(path)
    assert str(path) in str(caught.value)


def test_radiograph_dicom_without_preamble_or_file_meta(tmp_path):
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"
    ds.SOPInstanceUID = generate_uid()
    ds.Modality = "DX"
    ds.Rows, ds.Columns = 4, 5
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 12, 11
    ds.PixelRepresentation, ds.SamplesPerPixel = 0, 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    stored = np.arange(20, dtype=np.uint16).reshape(4, 5) * 100
    ds.PixelData = stored.tobytes()
    buffer = DicomBytesIO()
    buffer.is_implicit_VR, buffer.is_little_endian = False, True
    pydicom.filewriter.write_dataset(buffer, ds)  # data set only: no preamble, no file meta
    path = tmp_path / "radiograph.dcm"
    path.write_bytes(buffer.getvalue())
    before = _fingerprint(path)
    image, bit_depth = read_radiograph(path)
    np.testing.assert_array_equal(image, stored)
    assert bit_depth == 12
    assert _fingerprint(path) == before


_BUILDERS = ["chaos/ct", "lctsc/lungs", "xray/generic", "msd_spleen/raw"]


@pytest.mark.parametrize("name", _BUILDERS)
@pytest.mark.parametrize("kind", ["missing", "empty", "file"])
def test_builder_manual_dir_that_is_not_a_folder_is_a_layout_error(tmp_path, name, kind):
    import tensorflow_datasets as tfds

    import tfds_builders.chaos
    import tfds_builders.lctsc
    import tfds_builders.msd_spleen
    import tfds_builders.xray  # noqa: F401  (registers the builders)
    from kseg.errors import LayoutError

    manual = tmp_path / "download"
    if kind == "empty":
        manual.mkdir()
    elif kind == "file":
        manual.write_bytes(b"not a folder")
    builder = tfds.builder(name, data_dir=str(tmp_path / "tfds"))
    config = tfds.download.DownloadConfig(manual_dir=str(manual))
    with pytest.raises(LayoutError) as caught:
        builder.download_and_prepare(download_config=config)
    assert str(manual) in str(caught.value)
    if kind == "file":
        assert manual.read_bytes() == b"not a folder"


def _volume_pair():
    reference = np.zeros((4, 8, 8), np.uint8)
    reference[1:3, 2:6, 2:6] = 1
    return reference


@pytest.mark.parametrize(
    ("cases", "named"),
    [
        ([], "cases"),
        ([("p1", _volume_pair())], "cases"),
        ([("p1", _volume_pair(), np.full((4, 8, 8), np.nan), (1, 1, 1))], "NaN"),
        ([("p1", _volume_pair(), _volume_pair(), (1, 1))], "spacing"),
        ([("p1", _volume_pair(), _volume_pair(), (np.nan, 1, 1))], "spacing"),
        ([("p1", _volume_pair(), _volume_pair(), (0, 1, 1))], "spacing"),
        ([("p1", _volume_pair(), _volume_pair(), "abc")], "spacing"),
    ],
    ids=["empty", "2-tuple", "nan-prediction", "spacing-2", "spacing-nan", "spacing-0", "str"],
)
def test_evaluate_volumes_refuses_malformed_cases(cases, named):
    from kseg.evaluation import evaluate_volumes

    # Dice alone needs no spacing: a wrong one must still be found on the first run.
    with pytest.raises(ValueError, match=named):
        evaluate_volumes(cases, metrics=("dice",), progress=False)


def test_hd95_with_a_string_spacing_names_the_argument():
    from kseg.metrics import hd95

    with pytest.raises(ValueError, match="spacing must be 3"):
        hd95(_volume_pair(), _volume_pair(), spacing="ab")


def _keras_zip(path, config: str) -> None:
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("config.json", config)
        archive.writestr("metadata.json", '{"keras_version": "3.15.0"}')


@pytest.mark.parametrize(
    ("config", "problem"),
    [
        ("{not json", "not JSON"),
        (
            '{"module": "nowhere", "class_name": "Boom", "config": {}, '
            '"registered_name": "nowhere>Boom"}',
            "cannot be rebuilt",
        ),
        (
            '{"module": "keras.layers", "class_name": "Lambda", "config": {"function": '
            '{"class_name": "__lambda__", "config": {"code": "abc", "defaults": null, '
            '"closure": null}}}, "registered_name": null}',
            "cannot be rebuilt",
        ),
    ],
    ids=["config-not-json", "foreign-class", "lambda"],
)
def test_load_model_on_a_foreign_or_damaged_archive(tmp_path, config, problem):
    import kseg

    path = tmp_path / "model.keras"
    _keras_zip(path, config)
    before = _fingerprint(path)
    with pytest.raises(UnreadableFileError, match=problem) as caught:
        kseg.load_model(path)
    assert str(path) in str(caught.value)
    assert _fingerprint(path) == before


def test_load_model_wrong_keyword_is_a_type_error(tmp_path):
    import kseg

    path = tmp_path / "model.keras"
    _keras_zip(path, "{}")
    with pytest.raises(TypeError, match="colour"):
        kseg.load_model(path, colour="blue")


def test_nifti_header_declaring_an_impossible_size_names_it(tmp_path):
    import nibabel as nib

    from kseg.io import read_nifti

    header = nib.Nifti1Header()
    header.set_data_shape((32767, 32767, 32767))  # 2.8e14 bytes: beyond any address space
    header.set_data_dtype(np.float64)
    header.set_sform(np.eye(4), code=1)
    path = tmp_path / "huge.nii"
    path.write_bytes(header.binaryblock + b"\0" * 4 + b"\0" * 1024)
    before = _fingerprint(path)
    with pytest.raises(UnreadableFileError, match=r"declares shape \(32767, 32767, 32767\)") as e:
        read_nifti(path)
    assert str(path) in str(e.value)
    assert _fingerprint(path) == before


@pytest.mark.parametrize(
    ("kwargs", "exception", "named"),
    [
        ({"output_dir": 5}, TypeError, "output_dir"),
        ({"validation": "val"}, TypeError, "validation"),
        ({"monitor": ""}, ValueError, "monitor"),
        ({"mode": "up"}, ValueError, "mode"),
        ({"reduce_lr_patience": -1}, ValueError, "reduce_lr_patience"),
        ({"reduce_lr_patience": 2.5}, ValueError, "reduce_lr_patience"),
    ],
)
def test_training_callbacks_checks_arguments_before_creating_anything(
    tmp_path, kwargs, exception, named
):
    from kseg.training import training_callbacks

    arguments = {"output_dir": tmp_path / "run", "validation": None, **kwargs}
    output_dir, validation = arguments.pop("output_dir"), arguments.pop("validation")
    with pytest.raises(exception, match=named):
        training_callbacks(output_dir, validation, **arguments)
    assert not (tmp_path / "run").exists()


def _rtstruct(path, referenced_numbers) -> None:
    """An RT Structure Set with ROI 1 'Heart' and one contour item per referenced number."""
    from pydicom.sequence import Sequence

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.481.3"
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.Modality = "RTSTRUCT"
    roi = Dataset()
    roi.ROINumber, roi.ROIName = 1, "Heart"
    ds.StructureSetROISequence = Sequence([roi])
    items = []
    for number in referenced_numbers:
        contour = Dataset()
        contour.ContourGeometricType = "CLOSED_PLANAR"
        contour.NumberOfContourPoints = 3
        contour.ContourData = [0, 0, 0, 10, 0, 0, 0, 10, 0]
        item = Dataset()
        item.ReferencedROINumber = number
        item.ContourSequence = Sequence([contour])
        items.append(item)
    ds.ROIContourSequence = Sequence(items)
    ds.save_as(path, enforce_file_format=True)


@pytest.mark.parametrize(
    ("numbers", "problem"),
    [((2,), "ROI number 2, which StructureSetROISequence does not define"),
     ((1, 1), "second item with contours of ROI 'Heart'")],
    ids=["dangling-reference", "two-items-one-roi"],
)
def test_rtstruct_contours_that_would_be_dropped_are_an_error(tmp_path, numbers, problem):
    from kseg.io import read_rtstruct

    path = tmp_path / "rtstruct.dcm"
    _rtstruct(path, numbers)
    before = _fingerprint(path)
    with pytest.raises(UnreadableFileError, match=problem) as caught:
        read_rtstruct(path)
    assert str(path) in str(caught.value)
    assert _fingerprint(path) == before


def test_rtstruct_with_its_one_contour_item_reads(tmp_path):
    from kseg.io import read_rtstruct

    path = tmp_path / "rtstruct.dcm"
    _rtstruct(path, (1,))
    (heart,) = read_rtstruct(path)
    assert heart.name == "Heart" and len(heart.contours) == 1
    np.testing.assert_array_equal(heart.contours[0].points[:, :2], [[0, 0], [10, 0], [0, 10]])


def test_aligned_npz_mask_needs_a_volume_not_an_array(tmp_path):
    from kseg.io import read_aligned_npz_mask

    path = tmp_path / "mask.npz"
    np.savez(path, mask=np.ones((2, 3, 4), np.uint8))
    with pytest.raises(TypeError, match="volume must be the kseg.io.Volume"):
        read_aligned_npz_mask(path, np.zeros((2, 3, 4), np.int16))


def test_sliding_window_names_an_unknown_pad_mode_even_without_padding():
    from kseg.inference import sliding_window

    volume = np.zeros((6, 6, 6, 1), np.float32)
    for roi in ((4, 4, 4), (8, 8, 8)):  # no padding needed, then padding needed
        with pytest.raises(ValueError, match="pad_mode must be one of"):
            sliding_window(lambda x: x, volume, roi, pad_mode="mirror", progress=False)


@pytest.mark.parametrize(
    ("ids", "problem"),
    [([None, "a", "b"], "empty patient id None"), (["", "a", "b"], "empty patient id ''"),
     ([["a"], ["b"], ["c"]], "hashable ids")],
)
def test_assign_folds_refuses_ids_that_name_no_patient(ids, problem):
    from kseg.data.splits import assign_folds

    with pytest.raises(ValueError, match=f"patient_ids .*{problem}"):
        assign_folds(ids, 2)


def _ct_file(path) -> None:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.PatientName, ds.PatientID, ds.Modality = "Doe^Jane", "MRN-1", "CT"
    ds.Rows, ds.Columns = 2, 2
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 12, 11
    ds.PixelRepresentation, ds.SamplesPerPixel = 0, 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.PixelData = np.arange(4, dtype=np.uint16).tobytes()
    ds.save_as(path, enforce_file_format=True)


def test_deidentify_into_a_file_is_a_layout_error_naming_dst(tmp_path):
    from kseg.errors import LayoutError
    from kseg.io import deidentify

    src = tmp_path / "src"
    src.mkdir()
    _ct_file(src / "slice.dcm")
    before = _fingerprint(src / "slice.dcm")
    dst = tmp_path / "report.txt"
    dst.write_text("keep me")
    for target in (dst, dst / "deid"):
        with pytest.raises(LayoutError, match="is a file") as caught:
            deidentify(src, target, secret="key")
        assert str(target) in str(caught.value)
    assert dst.read_text() == "keep me"
    assert _fingerprint(src / "slice.dcm") == before


def test_scan_dicom_files_refuses_a_single_path(tmp_path):
    from kseg.io import scan_dicom_files

    _ct_file(tmp_path / "slice.dcm")
    with pytest.raises(ValueError, match="paths must be a collection") as caught:
        scan_dicom_files(tmp_path / "slice.dcm")
    assert str(tmp_path / "slice.dcm") in str(caught.value)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
@pytest.mark.parametrize(
    "reader", [read_mask, lambda p: read_labels(p, LabelRule())], ids=["read_mask", "read_labels"]
)
def test_float_tiff_mask_with_nan_or_inf_is_a_mask_error(tmp_path, reader, bad):
    values = np.zeros((8, 8), np.float32)
    values[2:5, 2:5] = 1.0
    values[0, 0] = bad
    path = tmp_path / "mask.tif"
    Image.fromarray(values).save(path)  # Pillow writes a 32-bit float (mode F) TIFF
    before = _fingerprint(path)
    with pytest.raises(MaskError, match="1 NaN or infinite values") as caught:
        reader(path)
    assert str(path) in str(caught.value)
    assert _fingerprint(path) == before


def test_small_nifti_gz_declaring_gigabytes_is_refused_before_allocating(tmp_path):
    import gzip
    import resource

    import nibabel as nib

    from kseg.io import read_nifti

    header = nib.Nifti1Header()
    header.set_data_shape((1024, 1024, 600))  # 5 GB of float64 in a 1.4 kB file
    header.set_data_dtype(np.float64)
    header.set_sform(np.eye(4), code=1)
    path = tmp_path / "bomb.nii.gz"
    path.write_bytes(gzip.compress(header.binaryblock + b"\0" * 4 + b"\0" * 1000))
    before = _fingerprint(path)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(UnreadableFileError, match=r"declares shape .*\(5033164800 bytes\)") as e:
        read_nifti(path)
    assert str(path) in str(e.value)
    # deflate expands at most 1032:1, so no reading of the file needs the 5 GB declared
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak < 500_000  # kB
    assert _fingerprint(path) == before


@pytest.mark.parametrize(
    ("spacing", "problem"),
    [((1.0, 1.0), "one or three positive"), ("abc", "one or three positive"),
     ((1e-4, 1e-4, 1e-4), "more than memory holds")],
    ids=["two-values", "text", "micrometres"],
)
def test_resample_names_a_spacing_it_cannot_use(spacing, problem):
    from kseg.errors import GeometryError
    from kseg.geometry import resample
    from kseg.io import Volume

    volume = Volume(
        array=np.zeros((6, 8, 10), np.float32), affine=np.diag([2.0, 1.0, 1.0, 1.0]),
        patient_id="p", source_files=(), metadata={},
    )
    with pytest.raises(GeometryError, match=problem):
        resample(volume, spacing)


def test_rasterize_rtstruct_names_arguments_of_the_wrong_kind(tmp_path):
    from kseg.io import Volume, rasterize_rtstruct, read_rtstruct

    path = tmp_path / "rtstruct.dcm"
    _rtstruct(path, (1,))
    volume = Volume(
        array=np.zeros((2, 4, 4), np.int16), affine=np.eye(4), patient_id="p",
        source_files=(), metadata={},
    )
    with pytest.raises(TypeError, match="rtstruct_path must be the path"):
        rasterize_rtstruct(read_rtstruct(path), volume)
    with pytest.raises(TypeError, match="volume must be the kseg.io.Volume"):
        rasterize_rtstruct(path, np.zeros((2, 4, 4)))


@pytest.mark.parametrize(
    "reader",
    [read_mask, lambda p: read_labels(p, LabelRule()), read_radiograph],
    ids=["read_mask", "read_labels", "read_radiograph"],
)
def test_cut_short_png_is_refused_even_where_pillow_was_told_to_allow_it(
    tmp_path, monkeypatch, reader
):
    # tfds's thumbnails (as_dataframe's HTML) and many notebooks set this flag True for good;
    # the mask then loaded with its missing rows as 0, background, silently.
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    mask = np.zeros((64, 64), np.uint8)
    mask[8:60, 8:60] = 255
    path = tmp_path / "cut.png"
    Image.fromarray(mask).save(path, compress_level=0)
    path.write_bytes(path.read_bytes()[: 2 * path.stat().st_size // 3])
    before = _fingerprint(path)
    with pytest.raises(UnreadableFileError, match=r"cut\.png: .*truncated"):
        reader(path)
    assert ImageFile.LOAD_TRUNCATED_IMAGES is True  # the caller's setting is left as it was
    assert _fingerprint(path) == before


def _tiff_claiming_16_bits(path):
    """An 8-bit TIFF whose BitsPerSample entry says 16: its strip holds half the bytes."""
    Image.fromarray(np.zeros((16, 16), np.uint8)).save(path)
    data = bytearray(path.read_bytes())
    (ifd,) = struct.unpack("<I", data[4:8])
    (count,) = struct.unpack("<H", data[ifd : ifd + 2])
    for entry in range(ifd + 2, ifd + 2 + 12 * count, 12):
        if struct.unpack("<H", data[entry : entry + 2])[0] == 258:  # BitsPerSample
            data[entry + 8 : entry + 10] = struct.pack("<H", 16)
    path.write_bytes(bytes(data))
    return path


def _png_with_text_bomb(path):
    """A valid 4 x 4 PNG with a zTXt chunk inflating past Pillow's MAX_TEXT_CHUNK (1 MiB)."""
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(path)
    data = path.read_bytes()
    bomb = _png_chunk(b"zTXt", b"Comment\x00\x00" + zlib.compress(b"A" * (2 << 20)))
    path.write_bytes(data[:33] + bomb + data[33:])  # right after the 25-byte IHDR chunk
    return path


@pytest.mark.parametrize(
    "reader",
    [read_mask, lambda p: read_labels(p, LabelRule()), read_radiograph],
    ids=["read_mask", "read_labels", "read_radiograph"],
)
@pytest.mark.parametrize(
    "damaged, name",
    [(_tiff_claiming_16_bits, "damaged.tif"), (_png_with_text_bomb, "damaged.png")],
    ids=["tiff", "png text bomb"],
)
def test_damaged_files_pillow_raises_value_errors_on_are_named(tmp_path, reader, damaged, name):
    # Pillow raised a bare ValueError here ("buffer is not large enough", "Decompressed data
    # too large"), naming neither the file nor what it should be.
    path = damaged(tmp_path / name)
    before = _fingerprint(path)
    with pytest.raises(UnreadableFileError, match=rf"{name}: cannot be read as"):
        reader(path)
    assert _fingerprint(path) == before
