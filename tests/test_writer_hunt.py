"""What kseg writes for other tools, read back by pydicom / highdicom: hostile headers and
layouts a real archive produces (non-Latin text, de-identified series)."""

import numpy as np
import pydicom
from test_io_dicom import _write_scrambled_series

from kseg.io import rasterize_rtstruct, read_dicom_series, write_rtstruct


def _series(folder, edit):
    """The scrambled oblique series of test_io_dicom, each header changed by ``edit``."""
    folder.mkdir()
    paths, _, _ = _write_scrambled_series(folder)
    for path in paths:
        ds = pydicom.dcmread(path)
        edit(ds)
        ds.save_as(path)
    return read_dicom_series(folder)


def _japanese(ds):
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.PatientName = "山田^太郎"
    ds.StudyDescription = "胸部 CT"


def test_rtstruct_keeps_names_latin1_cannot_encode(tmp_path, recwarn):
    # A UTF-8 series (ISO_IR 192, as Japanese and Chinese archives send): the structure set
    # copied the patient's name into a Latin-1 file and pydicom wrote "??^??", so an
    # archive filed it under another patient.
    ct = _series(tmp_path / "ct", _japanese)
    labels = np.zeros(ct.shape, np.uint8)
    labels[1:4, 1:3, 2:5] = 1
    path = write_rtstruct(labels, ct, tmp_path / "rs.dcm", roi_names={1: "肝臓"})
    ds = pydicom.dcmread(path)
    assert str(ds.PatientName) == "山田^太郎"
    assert ds.StudyDescription == "胸部 CT"
    assert ds.StructureSetROISequence[0].ROIName == "肝臓"
    assert not [w for w in recwarn if "encode" in str(w.message)]
    assert np.array_equal(rasterize_rtstruct(path, ct)["肝臓"], labels == 1)
