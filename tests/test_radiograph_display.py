"""DICOM radiographs read as displayed: the grayscale pipeline of PS3.3 C.11 (Modality LUT /
rescale, VOI window or table, MONOCHROME1 / Presentation LUT Shape polarity).

Expected values come from the PS3.3 formulas written here in numpy, hand-written VOI LUT
tables, files written with pydicom in the test and pydicom's own ``apply_voi_lut`` on
pydicom's test files, never from kseg's readers.
"""

import os
import types
import warnings

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataelem import RawDataElement
from pydicom.dataset import FileMetaDataset
from pydicom.pixels import apply_voi_lut
from pydicom.tag import Tag
from pydicom.uid import DigitalXRayImageStorageForPresentation, ExplicitVRLittleEndian, generate_uid
from test_predict import identity_model, min_max, radiograph_inference, write_run

from kseg.errors import UnreadableFileError
from kseg.io import read_dicom_image, read_radiograph
from kseg.predict import predict_path
from kseg.recipes.xray_multiclass import radiograph_reading

RAMP_12_BIT = np.arange(4096, dtype=np.uint16).reshape(64, 64)  # every 12-bit value once


def write_dx(path, stored, *, bits_stored=12, **attributes):
    """A DX image written with pydicom alone; ``attributes`` set after the pixel module
    (``bytes`` values written as they are, so that invalid ones reach the file)."""
    stored = np.asarray(stored)
    ds = pydicom.Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = DigitalXRayImageStorageForPresentation
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.SOPClassUID = DigitalXRayImageStorageForPresentation
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.PatientID = "DX", "D1"
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.Rows, ds.Columns = stored.shape
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, bits_stored, bits_stored - 1
    ds.PixelRepresentation = int(stored.dtype.kind == "i")
    ds.PixelData = stored.astype("<i2" if stored.dtype.kind == "i" else "<u2").tobytes()
    for keyword, value in attributes.items():
        if isinstance(value, bytes):
            tag = Tag(pydicom.datadict.tag_for_keyword(keyword))
            vr = pydicom.datadict.dictionary_VR(tag)
            ds[tag] = RawDataElement(tag, vr, len(value), value, 0, False, True)
        else:
            setattr(ds, keyword, value)
    ds.save_as(path, enforce_file_format=True)
    return path


def window_reference(x, center, width, function, bits):
    """PS3.3 C.11.2.1.2.1 (LINEAR), C.11.2.1.3.2 (LINEAR_EXACT), C.11.2.1.3.1 (SIGMOID) onto
    0 .. 2**bits - 1, rounded."""
    top = 2**bits - 1
    x = np.asarray(x, dtype=np.float64)
    if function == "SIGMOID":
        return np.rint(top / (1 + np.exp(-4 * (x - center) / width)))
    if function == "LINEAR":
        low, high = center - 0.5 - (width - 1) / 2, center - 0.5 + (width - 1) / 2
        inside = ((x - (center - 0.5)) / (width - 1) + 0.5) * top
    else:
        low, high = center - width / 2, center + width / 2
        inside = ((x - center) / width + 0.5) * top
    return np.rint(np.where(x <= low, 0, np.where(x > high, top, inside)))


def _unchanged(path):
    return path.read_bytes(), os.stat(path).st_mtime_ns


@pytest.mark.parametrize("function", [None, "LINEAR", "LINEAR_EXACT", "SIGMOID"])
def test_first_window_follows_the_ps33_formula_on_every_12_bit_value(tmp_path, function):
    extra = {} if function is None else {"VOILUTFunction": function}
    path = write_dx(tmp_path / "dx.dcm", RAMP_12_BIT, WindowCenter=[1500, 2048],
                    WindowWidth=[801, 4096], **extra)  # fmt: skip
    before = _unchanged(path)
    expected = window_reference(RAMP_12_BIT, 1500, 801, function or "LINEAR", 12)
    np.testing.assert_array_equal(read_dicom_image(path, values="displayed"), expected)
    image, bit_depth = read_radiograph(path, dicom_values="displayed")
    assert image.dtype == np.uint16 and bit_depth == 12
    np.testing.assert_array_equal(image, expected)
    # pydicom's own windowing, unsigned and without rescale: the same output range
    ds = pydicom.dcmread(path)
    np.testing.assert_array_equal(expected, np.rint(apply_voi_lut(ds.pixel_array, ds)))
    # the default stays the stored values
    np.testing.assert_array_equal(read_radiograph(path)[0], RAMP_12_BIT)
    assert _unchanged(path) == before


def test_window_applies_to_rescaled_signed_values_and_keeps_the_bits_stored_range(tmp_path):
    stored = (RAMP_12_BIT.astype(np.int16) - 2048).reshape(64, 64)
    path = write_dx(tmp_path / "dx.dcm", stored, RescaleSlope=2, RescaleIntercept=-100,
                    WindowCenter=300, WindowWidth=2000, VOILUTFunction="LINEAR_EXACT")  # fmt: skip
    expected = window_reference(2.0 * stored - 100, 300, 2000, "LINEAR_EXACT", 12)
    np.testing.assert_array_equal(read_dicom_image(path, values="displayed"), expected)
    assert expected.min() == 0 and expected.max() == 4095


def _voi_lut_item(entries, first, bits, data, *, descriptor_vr="US"):
    item = pydicom.Dataset()
    item.add_new(0x00283002, descriptor_vr, [entries, first, bits])  # LUTDescriptor
    item.add_new(0x00283006, "US", [int(v) for v in data])  # LUTData
    return item


def test_voi_lut_table_is_looked_up_and_preferred_to_the_window(tmp_path):
    table = np.array([3, 9, 40, 100, 180, 260, 330, 400, 470, 560, 650, 740, 830, 900, 990,
                      1023])  # fmt: skip
    path = write_dx(tmp_path / "dx.dcm", RAMP_12_BIT % 128, bits_stored=8,
                    VOILUTSequence=[_voi_lut_item(16, 100, 10, table)],
                    WindowCenter=60, WindowWidth=20)  # fmt: skip
    expected = table[np.clip((RAMP_12_BIT % 128).astype(int) - 100, 0, 15)]
    image, bit_depth = read_radiograph(path, dicom_values="displayed")
    np.testing.assert_array_equal(image, expected)
    assert bit_depth == 10
    ds = pydicom.dcmread(path)
    np.testing.assert_array_equal(apply_voi_lut(ds.pixel_array, ds), expected)


def test_signed_image_voi_lut_first_value_written_as_us_is_read_as_signed(tmp_path):
    stored = np.arange(-8, 8, dtype=np.int16).reshape(4, 4)
    table = np.arange(8) * 30 + 5
    # first mapped value -2, written with VR US as 65534
    path = write_dx(tmp_path / "dx.dcm", stored, bits_stored=16,
                    VOILUTSequence=[_voi_lut_item(8, 65534, 8, table)])  # fmt: skip
    expected = table[np.clip(stored.astype(int) + 2, 0, 7)]
    np.testing.assert_array_equal(read_dicom_image(path, values="displayed"), expected)


@pytest.mark.parametrize(
    "photometric, shape, inverted",
    [("MONOCHROME1", None, True), ("MONOCHROME1", "INVERSE", True),
     ("MONOCHROME2", "INVERSE", True), ("MONOCHROME2", "IDENTITY", False)],
)  # fmt: skip
def test_polarity_is_applied_once_after_the_voi_window(tmp_path, photometric, shape, inverted):
    extra = {} if shape is None else {"PresentationLUTShape": shape}
    path = write_dx(tmp_path / "dx.dcm", RAMP_12_BIT, WindowCenter=1000, WindowWidth=1200,
                    **extra)  # fmt: skip
    ds = pydicom.dcmread(path)
    ds.PhotometricInterpretation = photometric
    ds.save_as(path)
    windowed = window_reference(RAMP_12_BIT, 1000, 1200, "LINEAR", 12)
    expected = 4095 - windowed if inverted else windowed
    np.testing.assert_array_equal(read_dicom_image(path, values="displayed"), expected)
    # modality units: the same polarity, over the stored range, without the window
    stored = 4095 - RAMP_12_BIT.astype(int) if inverted else RAMP_12_BIT
    np.testing.assert_array_equal(read_dicom_image(path), stored)


def test_file_without_voi_reads_as_its_stored_units(tmp_path):
    path = write_dx(tmp_path / "dx.dcm", RAMP_12_BIT, RescaleSlope=1, RescaleIntercept=5)
    np.testing.assert_array_equal(read_dicom_image(path, values="displayed"), RAMP_12_BIT + 5)
    image, bit_depth = read_radiograph(path, dicom_values="displayed")
    np.testing.assert_array_equal(image, RAMP_12_BIT + 5)
    assert bit_depth == 13  # the rescaled values need it


def test_pydicom_test_files_match_apply_voi_lut():
    # examples_overlay.dcm: unsigned 12-bit, two windows (450/790 and 200/443): the first
    overlay = get_testdata_file("examples_overlay.dcm")
    ds = pydicom.dcmread(overlay)
    assert list(ds.WindowCenter) == [450, 200]
    np.testing.assert_array_equal(
        read_dicom_image(overlay, values="displayed"), np.rint(apply_voi_lut(ds.pixel_array, ds))
    )
    # MR_small.dcm: signed 16-bit; pydicom maps onto -32768..32767, kseg onto 0..65535
    small = get_testdata_file("MR_small.dcm")
    ds = pydicom.dcmread(small)
    assert ds.PixelRepresentation == 1
    np.testing.assert_array_equal(
        read_dicom_image(small, values="displayed"),
        np.rint(apply_voi_lut(ds.pixel_array, ds)) + 2**15,
    )


@pytest.mark.parametrize(
    "attributes, needle",
    [
        ({"WindowCenter": 100, "WindowWidth": 0}, "WindowWidth is 0; expected at least 1"),
        ({"WindowCenter": 100, "WindowWidth": 0.5}, "WindowWidth is 0.5; expected at least 1"),
        ({"WindowCenter": 100, "WindowWidth": -3, "VOILUTFunction": "SIGMOID"},
         "WindowWidth is -3; expected above 0 for SIGMOID"),
        ({"WindowCenter": 100}, "has WindowCenter but lacks WindowWidth"),
        ({"WindowCenter": b"abc ", "WindowWidth": 10}, "WindowCenter is .*abc.*expected numbers"),
        ({"WindowCenter": 1, "WindowWidth": 9, "VOILUTFunction": "GAMMA"},
         "VOILUTFunction is 'GAMMA'"),
        ({"VOILUTSequence": [_voi_lut_item(16, 0, 10, range(15))]},
         "LUTData holds 15 entries .* says 16 entries of 10 bits"),
        ({"VOILUTSequence": [_voi_lut_item(4, 0, 8, [0, 1, 2, 256])]},
         "LUTData holds 4 entries up to 256; .* 4 entries of 8 bits"),
        ({"VOILUTSequence": [_voi_lut_item(4, 0, 20, range(4))]},
         "LUTDescriptor gives 20 bits per entry; expected 8 to 16"),
        ({"PresentationLUTShape": "SIDEWAYS"}, "PresentationLUTShape is 'SIDEWAYS'"),
    ],
)  # fmt: skip
def test_malformed_voi_values_name_the_file_and_tag(tmp_path, attributes, needle):
    path = write_dx(tmp_path / "bad.dcm", RAMP_12_BIT, **attributes)
    before = _unchanged(path)
    with pytest.raises(UnreadableFileError, match=rf"bad\.dcm: .*{needle}"):
        read_radiograph(path, dicom_values="displayed")
    assert _unchanged(path) == before


def test_window_onto_more_than_16_bits_is_refused_not_wrapped(tmp_path):
    path = write_dx(tmp_path / "wide.dcm", RAMP_12_BIT, WindowCenter=2000, WindowWidth=1000)
    ds = pydicom.dcmread(path)
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 32, 32, 31
    ds.PixelData = RAMP_12_BIT.astype("<u4").tobytes()
    ds.save_as(path)
    expected = window_reference(RAMP_12_BIT, 2000, 1000, "LINEAR", 32)
    np.testing.assert_allclose(read_dicom_image(path, values="displayed"), expected, rtol=1e-7)
    with pytest.raises(UnreadableFileError, match=r"wide\.dcm: its window gives 32-bit values"):
        read_radiograph(path, dicom_values="displayed")


def test_unknown_values_argument_is_refused(tmp_path):
    path = write_dx(tmp_path / "dx.dcm", RAMP_12_BIT)
    with pytest.raises(ValueError, match="values must be one of"):
        read_dicom_image(path, values="shown")
    with pytest.raises(ValueError, match="dicom_values must be one of"):
        read_radiograph(path, dicom_values="shown")


# --- the run's record, and kseg predict repeating it --------------------------------------------


def _builder(formats, dicom_values):
    return types.SimpleNamespace(
        info=types.SimpleNamespace(metadata={"image_formats": formats}),
        builder_config=types.SimpleNamespace(dicom_values=dicom_values),
    )


def test_run_records_displayed_for_png_training_images_and_the_config_for_dicom():
    assert radiograph_reading(_builder(["png"], "modality")) == {
        "dicom_values": "displayed", "image_formats": ["png"]}  # fmt: skip
    assert radiograph_reading(_builder(["dicom", "png"], "modality"))["dicom_values"] == (
        "modality"
    )
    assert radiograph_reading(_builder(["dicom"], "displayed"))["dicom_values"] == "displayed"


def _window_cr(folder):
    """A DX whose first window (800 wide, centred at 1000) clips the 12-bit ramp unevenly,
    so min-max scaling of its displayed and of its stored values split it elsewhere."""
    folder.mkdir()
    return write_dx(folder / "chest.dcm", RAMP_12_BIT, WindowCenter=1000, WindowWidth=800)


def test_predict_reads_dicom_as_displayed_for_a_png_trained_run_and_says_so_once(tmp_path):
    source = _window_cr(tmp_path / "in")
    write_dx(tmp_path / "in" / "second.dcm", RAMP_12_BIT, WindowCenter=1000, WindowWidth=800)
    inference = radiograph_inference((64, 64), dicom_values="displayed", image_formats=["png"])
    with pytest.warns(UserWarning, match=r"2 DICOM radiograph\(s\) read as displayed") as record:
        predictions = predict_path(identity_model(2), inference, source.parent)
    assert sum("read as displayed" in str(w.message) for w in record) == 1
    displayed = window_reference(RAMP_12_BIT, 1000, 800, "LINEAR", 12)
    for prediction in predictions:
        np.testing.assert_array_equal(prediction.labels.array[0], min_max(displayed) >= 0.5)
        np.testing.assert_array_equal(prediction.image.array[0], displayed)


def test_predict_with_an_older_config_keeps_the_stored_values(tmp_path):
    source = _window_cr(tmp_path / "in")
    displayed = window_reference(RAMP_12_BIT, 1000, 800, "LINEAR", 12)
    assert not np.array_equal(min_max(displayed) >= 0.5, min_max(RAMP_12_BIT) >= 0.5)
    for inference in (
        radiograph_inference((64, 64)),  # written before kseg recorded dicom_values
        radiograph_inference((64, 64), dicom_values="modality", image_formats=["dicom"]),
    ):
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            [prediction] = predict_path(identity_model(2), inference, source)
        np.testing.assert_array_equal(prediction.labels.array[0], min_max(RAMP_12_BIT) >= 0.5)


def test_predict_refuses_an_unknown_dicom_values_record(tmp_path):
    source = _window_cr(tmp_path / "in")
    run = write_run(tmp_path / "run", identity_model(2),
                    radiograph_inference((64, 64), dicom_values="shown"))  # fmt: skip
    from kseg.predict import read_run

    with pytest.raises(UnreadableFileError, match="config.json: inference dicom_values 'shown'"):
        read_run(run)
    assert source.exists()
