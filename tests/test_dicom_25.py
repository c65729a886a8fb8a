"""Session 25, helper "dicom25": the DICOM, radiograph and image-file readers on files a
hospital export or an archive holds. Each expected outcome is worked out from what the file
says (written here with pydicom or PIL, or pydicom.data's own files) and the DICOM standard,
never from kseg."""

import shutil

import pydicom
import pytest
from pydicom.data import get_testdata_file
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
