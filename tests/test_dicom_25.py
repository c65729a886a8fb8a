"""Session 25, helper "dicom25": the DICOM, radiograph and image-file readers on files a
hospital export or an archive holds. Each expected outcome is worked out from what the file
says (written here with pydicom or PIL, or pydicom.data's own files) and the DICOM standard,
never from kseg."""

import shutil

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import FileMetaDataset
from pydicom.pixels import apply_voi_lut
from pydicom.uid import DigitalXRayImageStorageForPresentation, ExplicitVRLittleEndian, generate_uid
from test_io_dicom import _write_slice

from kseg.errors import LayoutError, UnreadableFileError
from kseg.io import SkippedFileWarning, read_dicom_image, read_dicom_series, read_radiograph


def _retag(path, **values):
    ds = pydicom.dcmread(path)
    for keyword, value in values.items():
        setattr(ds, keyword, value)
    ds.save_as(path, enforce_file_format=True)
    return path


# --- RT Dose: a dose grid is not an image of the patient ---------------------------------------


def test_rt_dose_beside_the_planning_ct_is_skipped_not_a_second_series(tmp_path):
    """A treatment-planning export puts RD*.dcm beside the CT slices. The dose grid's stored
    values are dose only times DoseGridScaling (PS3.3 C.8.8.3; 1e-6 here), which no rescale
    tag says: it is skipped with a warning naming it, as an RTSTRUCT beside the slices is,
    and the CT reads; before, the folder was refused as two series."""
    for rank in range(3):
        _write_slice(tmp_path / f"CT{rank}.dcm", position=(0.0, 0.0, 2.0 * rank))
    dose = tmp_path / "RD.dcm"
    shutil.copy(get_testdata_file("rtdose_1frame.dcm"), dose)
    with pytest.warns(SkippedFileWarning, match=r"RD\.dcm \(an RT Dose grid .*DoseGridScaling"):
        volume = read_dicom_series(tmp_path)
    assert volume.shape == (3, 4, 6) and volume.metadata["modality"] == "CT"


@pytest.mark.parametrize("name", ["rtdose_1frame.dcm", "rtdose.dcm"])
def test_rt_dose_read_alone_is_refused_not_read_as_stored_integers(tmp_path, name):
    """pydicom's single-frame RT Dose stores 795000 .. 1254000 with DoseGridScaling 1e-6:
    the dose is 0.795 .. 1.254 (DoseUnits RELATIVE). read_dicom_image and read_dicom_series
    returned the stored integers as if they were the image's values; read_radiograph said
    only that they do not fit 16 bits. Now each names the file and DoseGridScaling."""
    source = get_testdata_file(name)
    dose = pydicom.dcmread(source)
    assert float(dose.DoseGridScaling) == pytest.approx(1e-6)
    for read in (read_dicom_image, read_radiograph):
        with pytest.raises(UnreadableFileError, match="RT Dose grid .*DoseGridScaling 1"):
            read(source)
    folder = tmp_path / "dose"
    folder.mkdir()
    shutil.copy(source, folder / name)
    with pytest.warns(SkippedFileWarning, match="RT Dose grid"):
        with pytest.raises(LayoutError, match="no DICOM image"):
            read_dicom_series(folder)


# --- Pixel Padding Value: padding is not the image ---------------------------------------------


def _write_dx(path, stored, photometric="MONOCHROME2", **attributes):
    """A 12-bit DX image written with pydicom alone."""
    ds = pydicom.Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = DigitalXRayImageStorageForPresentation
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.SOPClassUID = DigitalXRayImageStorageForPresentation
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.PatientID = "DX", "D1"
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
    ds.Rows, ds.Columns = stored.shape
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = stored.astype("<u2").tobytes()
    for keyword, value in attributes.items():
        setattr(ds, keyword, value)
    ds.save_as(path, enforce_file_format=True)
    return ds


def _padded_radiograph():
    """A 12-bit radiograph of 1000 .. 3000 inside a 4-pixel padded border, and where the
    border is."""
    native = np.linspace(1000, 3000, 32 * 32).round().astype(np.uint16).reshape(32, 32)
    border = np.ones(native.shape, bool)
    border[4:-4, 4:-4] = False
    return native, border


@pytest.mark.parametrize("photometric, padding", [("MONOCHROME2", 0), ("MONOCHROME1", 4095)])
def test_radiograph_padding_reads_black_and_leaves_the_image_range_alone(
    tmp_path, photometric, padding
):
    """A CR / DX padded to its rectangle with PixelPaddingValue (0 for MONOCHROME2, 4095 for
    MONOCHROME1: PS3.3 C.7.5.1.1.2 note 1, black). The value is named so that viewers leave
    it out of the image's dynamic range (note 2). It was read as the image's minimum, so
    per-image min-max scaling (the X-ray recipes' scale_intensity) squeezed the radiograph
    into [0.33, 1]; now the padding is the image's own darkest value and the image spans
    [0, 1] as a viewer shows it."""
    native, border = _padded_radiograph()
    stored = np.where(border, padding, native)
    path = tmp_path / "cr.dcm"
    _write_dx(path, stored, photometric, PixelPaddingValue=padding)
    image, bits = read_radiograph(path)
    shown = native if photometric == "MONOCHROME2" else 4095 - native  # higher is brighter
    inside = shown[~border]
    expected = np.where(border, inside.min(), shown)
    np.testing.assert_array_equal(image, expected)
    scaled = (image - image.min()) / (image.max() - image.min())
    np.testing.assert_allclose(scaled[~border], (inside - inside.min()) / np.ptp(inside))
    assert bits == 12


def test_mammogram_background_padding_range_is_black_through_the_window(tmp_path):
    """A mammogram's background air as a padding range (PixelPaddingValue 0 ..
    PixelPaddingRangeLimit 60, IHE Mammo's use of CP 692): through the window it read as
    grey noise up to 82 of 4095; now as black, the breast exactly as pydicom's
    apply_voi_lut windows it."""
    rng = np.random.default_rng(0)
    native, border = _padded_radiograph()
    stored = np.where(border, rng.integers(0, 61, native.shape), native).astype(np.uint16)
    path = tmp_path / "mg.dcm"
    ds = _write_dx(
        path, stored, PixelPaddingValue=0, PixelPaddingRangeLimit=60,
        WindowCenter=1500, WindowWidth=3000,
    )  # fmt: skip
    image, bits = read_radiograph(path, dicom_values="displayed")
    reference = apply_voi_lut(stored.astype(np.float64), ds)  # 0 .. 4095, unsigned 12-bit
    assert reference[border].max() > 0  # the window alone shows the background grey
    np.testing.assert_array_equal(image[~border], np.rint(reference[~border]))
    assert bits == 12 and not image[border].any()
