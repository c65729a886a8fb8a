"""Session 25, helper "dicom25": the DICOM, radiograph and image-file readers on files a
hospital export or an archive holds. Each expected outcome is worked out from what the file
says (written here with pydicom or PIL, or pydicom.data's own files) and the DICOM standard,
never from kseg."""

import shutil

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.pixels import apply_voi_lut
from test_io_dicom import _write_slice
from test_radiograph_display import write_dx
from test_series_24 import _retag

from kseg.errors import DicomSeriesError, LayoutError, UnreadableFileError
from kseg.io import SkippedFileWarning, read_dicom_image, read_dicom_series, read_radiograph

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
    """A 12-bit unsigned DX image written with pydicom alone, read back."""
    write_dx(path, np.asarray(stored).astype(np.uint16), PhotometricInterpretation=photometric,
             **attributes)
    return pydicom.dcmread(path)


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


# --- echoes that no EchoNumbers tells apart ---------------------------------------------------


def _echoes_without_echo_numbers(folder, offset):
    """A dual-echo MR series whose converter dropped EchoNumbers (Type 3) but kept EchoTime
    (Type 2): echo 1 (TE 4.6 ms) at z = 0, 5, 10, 15, echo 2 (TE 9.2 ms) shifted by
    ``offset``; each slice's pixels hold 100 * echo + its rank."""
    echoes = {1: [], 2: []}
    for echo, echo_time in ((1, 4.6), (2, 9.2)):
        for rank in range(4):
            path = _write_slice(
                folder / f"E{echo}S{rank}.dcm",
                position=(0.0, 0.0, 5.0 * rank + (offset if echo == 2 else 0.0)),
                pixels=np.full((4, 6), 1024 + 100 * echo + rank, np.uint16),
                instance_number=10 * echo + rank,
            )
            echoes[echo].append(
                _retag(path, Modality="MR", EchoTime=echo_time, AcquisitionNumber=echo)
            )
    return echoes


@pytest.mark.parametrize("offset", [2.5, 1.0], ids=["half_step", "offset_1mm"])
def test_interleaved_echoes_without_echo_numbers_are_refused_naming_echo_time(tmp_path, offset):
    """At positions offset by half a step the two echoes read as one volume of 8 slices at
    2.5 mm, contrasts alternating slice by slice (as ITK does); 1 mm off, the gap check
    called the series unevenly spaced or missing slices. Now the error names EchoTime and
    each value's files, and each echo read as a list is its own 4-slice 5 mm volume."""
    echoes = _echoes_without_echo_numbers(tmp_path, offset)
    with pytest.raises(DicomSeriesError) as raised:
        read_dicom_series(tmp_path)
    message = str(raised.value)
    assert "2 echoes" in message and "EchoTime 4.6 ms: 4 file(s)" in message, message
    assert "9.2 ms: 4 file(s)" in message
    for echo, files in echoes.items():
        volume = read_dicom_series(files)
        assert volume.shape[0] == 4
        np.testing.assert_allclose(volume.spacing[0], 5.0)
        np.testing.assert_array_equal(volume.array[:, 0, 0], 100 * echo + np.arange(4))


def test_slabs_of_one_echo_time_each_and_acquisition_numbers_per_block_still_read(tmp_path):
    """What must still read: an MR series of one EchoTime, and a sequential CT whose
    AcquisitionNumber changes with each rotation's block of slices (no EchoTime)."""
    (tmp_path / "mr").mkdir()
    (tmp_path / "ct").mkdir()
    for rank in range(6):
        path = _write_slice(tmp_path / "mr" / f"S{rank}.dcm", position=(0, 0, 3.0 * rank))
        _retag(path, Modality="MR", EchoTime="4.60", AcquisitionNumber=1 + rank // 3)
    assert read_dicom_series(tmp_path / "mr").shape == (6, 4, 6)
    for rank in range(8):
        path = _write_slice(tmp_path / "ct" / f"S{rank}.dcm", position=(0, 0, 2.5 * rank))
        _retag(path, AcquisitionNumber=1 + rank // 4)
    assert read_dicom_series(tmp_path / "ct").shape == (8, 4, 6)


# --- MONOCHROME1 through a Modality LUT table ------------------------------------------------


def test_monochrome1_through_a_modality_lut_table_is_inverted_after_the_table(tmp_path):
    """MONOCHROME1: the minimum is shown white after the grayscale transforms (PS3.3
    C.7.6.3.1.2), i.e. the polarity applies to the Modality LUT's output, not its input. For
    a rescale the two are the same; for a nonlinear Modality LUT Sequence (a CR's log table)
    kseg looked the table up at the mirrored stored value, table(4095 - s): a stored 1024
    read 3547 instead of 4095 - table(1024) = 2047. Reference: the table written here,
    looked up by hand, then inverted over the range of its entries (0 .. 4095)."""
    stored = np.arange(0, 4096, 16, dtype=np.uint16).reshape(16, 16)
    table = np.rint(np.sqrt(np.arange(4096)) * 64).clip(0, 4095).astype(np.uint16)
    item = pydicom.Dataset()
    item.LUTDescriptor = [4096, 0, 16]  # 8 or 16 (PS3.3 C.11.1.1.1); entries up to 4095
    item.ModalityLUTType = "US"
    item.add_new("LUTData", "OW", table.astype("<u2").tobytes())
    path = tmp_path / "cr.dcm"
    _write_dx(path, stored, "MONOCHROME1", ModalityLUTSequence=pydicom.Sequence([item]))
    image, _ = read_radiograph(path)
    np.testing.assert_array_equal(image, 4095 - table[stored])
    assert image[stored == 1024] == 2047


# --- XA / XRF: the Modality LUT maps back to X-ray intensity, not to display ------------------


def _xrf_with_to_linear_lut(path, stored, relationship):
    """A single-frame XRF spot image, 12-bit, logarithmic (PixelIntensityRelationship LOG)
    with a Modality LUT Sequence back to values linear in X-ray intensity, and a window on
    its stored values."""
    table = np.rint(np.exp(np.arange(4096) / 4095 * np.log(65535))).astype(np.uint16)
    item = pydicom.Dataset()
    item.LUTDescriptor = [4096, 0, 16]
    item.ModalityLUTType = "US"
    item.add_new("LUTData", "OW", table.astype("<u2").tobytes())
    ds = _write_dx(
        path, stored, ModalityLUTSequence=pydicom.Sequence([item]), WindowCenter=2048,
        WindowWidth=4096, PixelIntensityRelationship=relationship, Modality="RF",
    )  # fmt: skip
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.12.2"
    ds.save_as(path, enforce_file_format=True)
    return ds, table


def test_xrf_modality_lut_back_to_linear_is_not_applied_before_the_window(tmp_path):
    """In IODs with the X-Ray Image Module (XA, XRF) whose PixelIntensityRelationship is LOG
    or DISP, the Modality LUT is not part of the display pipeline: it maps the stored values
    back to linear X-ray intensity for analysis, and the window applies to the stored values
    (PS3.3 C.8.7.1.1.2, PS3.4 N.2.1.2; DCMTK, fo-dicom and dcm4che / Weasis read it so).
    kseg applied the exponential table first: displayed, the brightest quarter of the
    stored values saturated white and over two thirds fell below the window's centre; in
    modality units the image read exponentially stretched. Now displayed values are
    pydicom's apply_voi_lut of the stored values, and modality units the stored values."""
    stored = np.arange(0, 4096, 16, dtype=np.uint16).reshape(16, 16)
    path = tmp_path / "rf.dcm"
    ds, table = _xrf_with_to_linear_lut(path, stored, "LOG")
    shown, bits = read_radiograph(path, dicom_values="displayed")
    del ds.ModalityLUTSequence  # the reference: the window on the stored values
    np.testing.assert_array_equal(shown, np.rint(apply_voi_lut(stored.astype(np.float64), ds)))
    assert bits == 12
    image, _ = read_radiograph(path)
    np.testing.assert_array_equal(image, stored)
    # LIN: the Modality LUT is the usual forward transform, applied as before.
    ds, table = _xrf_with_to_linear_lut(path, stored, "LIN")
    np.testing.assert_array_equal(read_dicom_image(path), table[stored])


def test_echo_time_check_names_a_multi_valued_echo_time_instead_of_crashing(tmp_path):
    """EchoTime is VM 1; a converter writing both echoes' times into it ("4.6\\9.2") on half
    the slices must be named, not end in a bare ValueError from sorting the values."""
    for rank in range(4):
        path = _write_slice(tmp_path / f"S{rank}.dcm", position=(0.0, 0.0, 2.0 * rank))
        _retag(path, EchoTime=[4.6, 9.2] if rank % 2 else 4.6)
    with pytest.raises(DicomSeriesError, match=r"EchoTime 4\.6 ms: 2 file.*4\.6\\9\.2 ms: 2"):
        read_dicom_series(tmp_path)
