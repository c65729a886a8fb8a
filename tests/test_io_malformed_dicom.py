"""Malformed DICOM inputs: each gives a kseg error naming the file (or a documented warning with
a right result), never a raw traceback, a shorter volume or a silently wrong one.

The files are written here with pydicom, broken on purpose (cut at a byte offset, a value
written as raw bytes), or are pydicom's own test files. Expected outcomes are stated by hand:
which exception class, which file and which tag the message must name. Every test also checks
that the input bytes are unchanged.
"""

import hashlib
import shutil
import warnings

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.pixels import get_decoder
from pydicom.tag import Tag
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, JPEGLSLossless, generate_uid

from kseg.errors import DicomSeriesError, KsegError, UnreadableFileError
from kseg.io import SkippedFileWarning, read_dicom_image, read_dicom_series
from kseg.io.dicom import HeaderValueWarning, scan_dicom_files

ROWS, COLUMNS = 4, 6
STORED = np.arange(ROWS * COLUMNS, dtype=np.uint16).reshape(ROWS, COLUMNS) * 10


def _write_slice(path, z, *, raw=None, **values):
    """A CT slice at (0, 0, z); ``raw`` = {keyword: text} written as raw bytes, unvalidated."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.SeriesInstanceUID = "1.2.3.4"
    ds.Modality = "CT"
    ds.PatientID = "P1"
    ds.InstanceNumber = 1
    ds.ImagePositionPatient = [0.0, 0.0, float(z)]
    ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    ds.PixelSpacing = [0.5, 0.5]
    ds.RescaleSlope, ds.RescaleIntercept = 1, -1024
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = ROWS, COLUMNS
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = STORED.tobytes()
    for keyword, value in values.items():
        setattr(ds, keyword, list(value) if isinstance(value, tuple) else value)
    for keyword, text in (raw or {}).items():
        tag = Tag(pydicom.datadict.tag_for_keyword(keyword))
        data = text.encode("ascii")
        data += b" " * (len(data) % 2)
        vr = pydicom.datadict.dictionary_VR(tag)
        ds[tag] = RawDataElement(tag, vr, len(data), data, 0, False, True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns while writing the invalid values
        ds.save_as(path, enforce_file_format=True)
    return path


def _series(folder, count=3, **kwargs):
    """``count`` slices 2 mm apart; keyword arguments go to the middle one only."""
    folder.mkdir(exist_ok=True)
    return [
        _write_slice(folder / f"s{k}.dcm", 2.0 * k, **(kwargs if k == count // 2 else {}))
        for k in range(count)
    ]


def _digest(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def _raises_naming(error, folder, name, *needles, reader=read_dicom_series):
    before = _digest(folder)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no stray pydicom / numpy warnings either
        with pytest.raises(error) as raised:
            reader(folder if reader is read_dicom_series else folder / name)
    message = str(raised.value)
    assert name in message, message
    for needle in needles:
        assert needle in message, message
    assert _digest(folder) == before
    return message


def _pixel_data_offset(path):
    """Where the PixelData value starts: the file's length less the value's (it is last)."""
    return len(path.read_bytes()) - STORED.nbytes


# --- a slice cut short is an error, never a shorter volume --------------------------------------


@pytest.mark.parametrize(
    "where",
    ["in the preamble", "in the file meta", "in the data set", "between elements",
     "in the pixel data"],
)
def test_a_slice_cut_short_is_an_error_naming_it(tmp_path, where):
    paths = _series(tmp_path, count=4)
    data = paths[1].read_bytes()
    pixels = _pixel_data_offset(paths[1])
    cut = {
        "in the preamble": 100,
        "in the file meta": 150,
        "in the data set": data.index(b"1.2.3.4") + 3,  # inside SeriesInstanceUID's value
        "between elements": pixels - 12,  # just before the PixelData element
        "in the pixel data": pixels + 10,
    }[where]
    paths[1].write_bytes(data[:cut])
    _raises_naming(UnreadableFileError, tmp_path, paths[1].name)


def test_a_damaged_dicm_marker_is_an_error_not_a_skipped_file(tmp_path):
    # Two slices remain 4 mm apart: no gap check could tell that one is missing.
    paths = _series(tmp_path)
    data = bytearray(paths[1].read_bytes())
    data[130] ^= 0xFF  # "DICM" -> "DI?M"
    paths[1].write_bytes(bytes(data))
    _raises_naming(UnreadableFileError, tmp_path, paths[1].name, "DICM")


def test_a_last_slice_cut_short_is_an_error_not_a_shorter_volume(tmp_path):
    # No gap check can catch a lost end slice: only the file itself can say it is broken.
    paths = _series(tmp_path, count=3)
    data = paths[2].read_bytes()
    paths[2].write_bytes(data[: data.index(b"1.2.3.4") + 3])
    _raises_naming(UnreadableFileError, tmp_path, paths[2].name, "cut short")


def test_a_preamble_less_slice_cut_short_is_an_error(tmp_path):
    paths = _series(tmp_path, count=3)
    dataset = pydicom.dcmread(paths[2])
    dataset.preamble = None
    del dataset.file_meta
    pydicom.dcmwrite(paths[2], dataset, enforce_file_format=False, implicit_vr=True)
    data = paths[2].read_bytes()
    paths[2].write_bytes(data[: len(data) // 3])
    _raises_naming(UnreadableFileError, tmp_path, paths[2].name)


def test_an_empty_file_is_an_error_but_stray_files_are_skipped(tmp_path):
    _series(tmp_path, count=3)
    (tmp_path / "LICENSE").write_text("Creative Commons Attribution 3.0\n" * 20)
    (tmp_path / "readme.txt").write_text("CT of patient 1\n")
    (tmp_path / ".keep").write_bytes(b"")
    (tmp_path / "image.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(200))
    shutil.copy(get_testdata_file("rtstruct.dcm"), tmp_path / "RS.dcm")
    directory = Dataset()
    directory.file_meta = FileMetaDataset()
    directory.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.1.3.10"
    directory.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    directory.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    directory.FileSetID = "SET"
    directory.save_as(tmp_path / "DICOMDIR", enforce_file_format=True)
    with pytest.warns(SkippedFileWarning) as record:
        volume = read_dicom_series(tmp_path)
    assert volume.shape == (3, ROWS, COLUMNS)
    np.testing.assert_array_equal(volume.array[1], STORED.astype(np.int16) - 1024)
    message = str(record[0].message)
    for name in ("LICENSE", "readme.txt", ".keep", "image.png", "RS.dcm", "DICOMDIR"):
        assert name in message
    (tmp_path / "s9.dcm").write_bytes(b"")
    _raises_naming(UnreadableFileError, tmp_path, "s9.dcm", "0 bytes")


def test_an_image_without_pixel_data_is_an_error(tmp_path):
    paths = _series(tmp_path)
    dataset = pydicom.dcmread(paths[1])
    del dataset.PixelData
    dataset.save_as(paths[1])
    _raises_naming(UnreadableFileError, tmp_path, paths[1].name, "no pixel data")


# --- geometry tags -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "keyword, text",
    [
        ("ImagePositionPatient", "a\\b\\c"),
        ("ImagePositionPatient", "0\\0"),
        ("ImagePositionPatient", "0\\NaN\\2"),
        ("ImagePositionPatient", "0\\0\\inf"),
        ("ImageOrientationPatient", "1\\0\\0\\0\\1"),
        ("ImageOrientationPatient", "1\\0\\0\\0\\x\\0"),
        ("ImageOrientationPatient", "1\\0\\0\\0\\NaN\\0"),
        ("PixelSpacing", "0.5"),
        ("PixelSpacing", "abc\\0.5"),
        ("PixelSpacing", "0\\0.5"),
        ("PixelSpacing", "-0.5\\0.5"),
    ],
)
def test_malformed_geometry_tags_name_file_and_tag(tmp_path, keyword, text):
    paths = _series(tmp_path, raw={keyword: text})
    _raises_naming(DicomSeriesError, tmp_path, paths[1].name, keyword)


@pytest.mark.parametrize(
    "orientation",
    [
        (1.0, 0.0, 0.0, 1.0, 0.0, 0.0),  # row cosine = column cosine
        (0.0, 0.0, 0.0, 0.0, 0.0, 0.0),  # zero vectors
        (1.0, 0.0, 0.0, 0.0, 0.0, 0.0),  # one zero vector
        (1.0, 0.0, 0.0, 0.6, 0.8, 0.0),  # unit but not perpendicular
        (2.0, 0.0, 0.0, 0.0, 2.0, 0.0),  # perpendicular but not unit
    ],
)
def test_degenerate_orientation_is_reported_as_such(tmp_path, orientation):
    # All slices share the orientation, so the consistency check cannot catch it.
    tmp_path.joinpath("ct").mkdir()
    for k in range(3):
        _write_slice(tmp_path / "ct" / f"s{k}.dcm", 2.0 * k, ImageOrientationPatient=orientation)
    message = _raises_naming(DicomSeriesError, tmp_path / "ct", "s0.dcm", "degenerate")
    assert "same slice position" not in message


def test_slightly_rounded_cosines_are_accepted(tmp_path):
    tmp_path.joinpath("ct").mkdir()
    rounded = (0.9998, 0.0175, 0.0, -0.0175, 0.9998, 0.0)  # a 1-degree tilt, 4 decimals
    for k in range(3):
        _write_slice(tmp_path / "ct" / f"s{k}.dcm", 2.0 * k, ImageOrientationPatient=rounded)
    assert read_dicom_series(tmp_path / "ct").shape == (3, ROWS, COLUMNS)


# --- pixel module and size -----------------------------------------------------------------------


@pytest.mark.parametrize("reader", ["series", "image"])
@pytest.mark.parametrize(
    "values",
    [{"Rows": 65535, "Columns": 65535}, {"Rows": 65535}, {"Columns": 7}],
    ids=["65535x65535", "rows", "columns"],
)
def test_a_size_the_pixel_data_cannot_hold_is_refused_before_allocating(tmp_path, values, reader):
    paths = _series(tmp_path, **values)
    read = read_dicom_series if reader == "series" else read_dicom_image
    _raises_naming(UnreadableFileError, tmp_path, paths[1].name, "bytes", reader=read)


@pytest.mark.parametrize(
    "name", ["MR_small_RLE.dcm", "MR_small_jp2klossless.dcm", "JPEG2000.dcm", "JPEG-lossy.dcm"]
)
def test_compressed_pixel_data_claiming_65535_squared_is_refused_fast(tmp_path, name):
    dataset = pydicom.dcmread(get_testdata_file(name))
    dataset.Rows = dataset.Columns = 65535
    dataset.save_as(tmp_path / name)
    _raises_naming(UnreadableFileError, tmp_path, name, "65535", reader=read_dicom_image)


@pytest.mark.parametrize(
    "values, needle",
    [
        ({"BitsAllocated": 12}, "BitsAllocated"),
        ({"BitsStored": 20}, "BitsStored"),
        ({"PixelRepresentation": 2}, "PixelRepresentation"),
        ({"PhotometricInterpretation": "PALETTE COLOR"}, "PALETTE COLOR"),
        ({"SamplesPerPixel": 3}, "SamplesPerPixel"),
    ],
)
def test_pixel_module_values_are_checked(tmp_path, values, needle):
    paths = _series(tmp_path, **values)
    _raises_naming(KsegError, tmp_path, paths[1].name, needle)
    _raises_naming(UnreadableFileError, tmp_path, paths[1].name, needle, reader=read_dicom_image)


@pytest.mark.parametrize("keyword", ["RescaleSlope", "RescaleIntercept"])
@pytest.mark.parametrize("text", ["NaN", "inf", "-inf", "abc"])
@pytest.mark.parametrize("reader", ["series", "image"])
def test_non_finite_or_non_numeric_rescale_is_an_error(tmp_path, keyword, text, reader):
    paths = _series(tmp_path, raw={keyword: text})
    read = read_dicom_series if reader == "series" else read_dicom_image
    _raises_naming(UnreadableFileError, tmp_path, paths[1].name, keyword, reader=read)


def test_zero_rescale_slope_is_an_error(tmp_path):
    paths = _series(tmp_path, RescaleSlope=0)
    _raises_naming(UnreadableFileError, tmp_path, paths[1].name, "RescaleSlope")


@pytest.mark.parametrize("how", ["deleted", "empty"])
@pytest.mark.parametrize("absent", ["RescaleSlope", "RescaleIntercept"])
def test_a_lone_rescale_value_is_applied_with_the_default_of_the_other(tmp_path, absent, how):
    # pydicom rescales only when both tags are there: a CT kept with RescaleIntercept -1024
    # but no RescaleSlope came out 1024 HU too bright.
    folder = tmp_path / "ct"
    folder.mkdir()
    for k in range(3):
        path = _write_slice(folder / f"s{k}.dcm", 2.0 * k, RescaleSlope=2)
        dataset = pydicom.dcmread(path)
        if how == "deleted":
            delattr(dataset, absent)
        else:
            dataset[absent].value = None
        dataset.save_as(path)
    before = _digest(folder)
    slope = 1 if absent == "RescaleSlope" else 2
    intercept = 0 if absent == "RescaleIntercept" else -1024
    expected = STORED.astype(np.int64) * slope + intercept
    volume = read_dicom_series(folder)
    np.testing.assert_array_equal(volume.array, np.broadcast_to(expected, (3, ROWS, COLUMNS)))
    np.testing.assert_array_equal(read_dicom_image(folder / "s0.dcm"), expected)
    assert _digest(folder) == before


def _drop_rescale(path):
    dataset = pydicom.dcmread(path)
    del dataset.RescaleSlope, dataset.RescaleIntercept
    dataset.save_as(path)


def test_a_slice_without_the_rescale_of_the_others_is_an_error(tmp_path):
    paths = _series(tmp_path)
    _drop_rescale(paths[1])
    # Read, its stored values would have been taken as HU: 1024 HU off its neighbours.
    message = _raises_naming(DicomSeriesError, tmp_path, paths[1].name, "RescaleIntercept")
    assert paths[0].name in message and "-1024" in message


def test_identity_rescale_beside_slices_without_one_reads(tmp_path):
    paths = _series(tmp_path, RescaleIntercept=0)
    for path in paths[::2]:
        _drop_rescale(path)
    volume = read_dicom_series(tmp_path)
    np.testing.assert_array_equal(volume.array, np.broadcast_to(STORED, (3, ROWS, COLUMNS)))


# --- pydicom's own broken files ------------------------------------------------------------------


@pytest.mark.parametrize("reader", ["series", "image"])
def test_bad_vr_file_is_an_error_naming_it(tmp_path, reader):
    # badVR.dcm is an RT Dose, which is skipped / refused as dose; as a CT image its broken
    # NumberOfFrames ('1A') must still be named.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom's own "invalid value" warnings
        ds = pydicom.dcmread(get_testdata_file("badVR.dcm"))
        ds.Modality = "CT"
        ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
        ds.save_as(tmp_path / "badVR.dcm")
    read = read_dicom_series if reader == "series" else read_dicom_image
    _raises_naming(UnreadableFileError, tmp_path, "badVR.dcm", "NumberOfFrames", reader=read)


@pytest.mark.parametrize(
    "name, needle",
    [
        ("MR_truncated.dcm", "bytes"),
        ("rtplan_truncated.dcm", "cut short"),
        ("meta_missing_tsyntax.dcm", "Rows"),
    ],
)
def test_pydicom_truncated_files_are_errors(tmp_path, name, needle):
    shutil.copy(get_testdata_file(name), tmp_path / name)
    _raises_naming(UnreadableFileError, tmp_path, name, needle)
    _raises_naming(UnreadableFileError, tmp_path, name, needle, reader=read_dicom_image)


@pytest.mark.parametrize("name", ["CT_small.dcm", "MR_small_RLE.dcm", "image_dfl.dcm"])
def test_valid_pydicom_files_read_as_pydicom_decodes_them(name):
    path = get_testdata_file(name)
    reference = pydicom.dcmread(path)
    expected = reference.pixel_array * float(reference.get("RescaleSlope", 1)) + float(
        reference.get("RescaleIntercept", 0)
    )
    np.testing.assert_array_equal(read_dicom_image(path), expected.astype(np.float32))


def test_missing_decoder_names_the_transfer_syntax_and_what_to_install(tmp_path):
    if get_decoder(JPEGLSLossless).is_available:
        pytest.skip("a JPEG-LS decoder is installed here")
    shutil.copy(get_testdata_file("MR_small_jpeg_ls_lossless.dcm"), tmp_path / "jls.dcm")
    for reader in (read_dicom_image, read_dicom_series):
        _raises_naming(UnreadableFileError, tmp_path, "jls.dcm", "JPEG-LS", "pip install",
                       reader=reader)


def test_unknown_transfer_syntax_and_corrupt_compressed_data_are_named(tmp_path):
    dataset = pydicom.dcmread(get_testdata_file("MR_small_RLE.dcm"))
    dataset.file_meta.TransferSyntaxUID = "1.2.3.4"
    dataset.save_as(tmp_path / "unknown.dcm")
    _raises_naming(UnreadableFileError, tmp_path, "unknown.dcm", "1.2.3.4", reader=read_dicom_image)
    dataset = pydicom.dcmread(get_testdata_file("MR_small_RLE.dcm"))
    data = bytearray(dataset.PixelData)
    data[100:400] = bytes(300)
    dataset.PixelData = bytes(data)
    dataset.save_as(tmp_path / "corrupt.dcm")
    _raises_naming(UnreadableFileError, tmp_path, "corrupt.dcm", "RLE", reader=read_dicom_image)


# --- values only reported: warned and left out ---------------------------------------------------


def test_malformed_reported_values_warn_and_the_volume_is_right(tmp_path):
    paths = _series(tmp_path, raw={"InstanceNumber": "1A", "WindowCenter": "abc"})
    before = _digest(tmp_path)
    with pytest.warns(HeaderValueWarning) as record:
        volume = read_dicom_series(tmp_path)
    assert _digest(tmp_path) == before
    assert any("InstanceNumber" in str(w.message) and paths[1].name in str(w.message)
               for w in record)
    assert volume.metadata["instance_numbers"] == (1, None, 1)
    np.testing.assert_array_equal(volume.array, np.stack([STORED.astype(np.int16) - 1024] * 3))


# --- the header scanner on its own ---------------------------------------------------------------


def test_scanner_returns_every_dicom_header_and_skips_the_rest(tmp_path):
    paths = _series(tmp_path)
    shutil.copy(get_testdata_file("rtstruct.dcm"), tmp_path / "RS.dcm")
    (tmp_path / "metadata.csv").write_text("Series UID,Modality\n1.2.3.4,CT\n")
    files = sorted(tmp_path.iterdir())
    with pytest.warns(SkippedFileWarning, match="metadata.csv"):
        headers = scan_dicom_files(files, where=tmp_path)
    assert [path for path, _ in headers] == [str(p) for p in files if p.suffix == ".dcm"]
    modalities = {path.rsplit("/", 1)[-1]: str(h.Modality) for path, h in headers}
    assert modalities == {"RS.dcm": "RTSTRUCT", **{p.name: "CT" for p in paths}}
    ct = dict(headers)[str(paths[0])]
    assert "PixelData" in ct and ct.PixelData == STORED.tobytes()
