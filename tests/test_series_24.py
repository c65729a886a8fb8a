"""Session 24, helper "series": DICOM series reading as hospital exports and archives ship
them. Each expected outcome is worked out from what the files say (written here with
pydicom, or pydicom.data's own files), never from kseg."""


import pydicom
import pytest
from etils import epath
from pydicom.uid import generate_uid

from kseg.errors import LayoutError
from kseg.io import SkippedFileWarning
from kseg.phantoms.lctsc import write_lctsc
from tfds_builders.lctsc.layout import tcia_cases


def _copy_as_series(source, target, **changes):
    """Copy every CT file of ``source`` to ``target`` as a new series (new UIDs)."""
    target.mkdir(parents=True)
    series_uid = generate_uid()
    for path in sorted(source.iterdir()):
        ds = pydicom.dcmread(path)
        ds.SeriesInstanceUID = series_uid
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        for keyword, value in changes.items():
            setattr(ds, keyword, value)
        ds.save_as(target / path.name, enforce_file_format=True)
    return series_uid


# --- LCTSC: a CT series no structure set references ------------------------------------------


def test_lctsc_unreferenced_scout_series_is_skipped_with_a_warning(tmp_path):
    """A hospital export holds a scout series beside the planning CT: the case is the series
    the RTSTRUCT references; the other is named in a warning, not a stop of the build."""
    manual = tmp_path / "manual"
    write_lctsc(manual, num_patients=2, num_test_patients=0, num_slices=2, size=16)
    ct_folder = next(manual.rglob("0.000000-CT *"))
    patient = ct_folder.parent.parent.name
    referenced = pydicom.dcmread(next(ct_folder.iterdir())).SeriesInstanceUID
    scout_uid = _copy_as_series(
        ct_folder, ct_folder.parent / "2.000000-Topogram-00001",
        ImageType=["ORIGINAL", "PRIMARY", "LOCALIZER"], SeriesDescription="Topogram",
    )
    with pytest.warns(SkippedFileWarning) as caught:
        cases = tcia_cases(epath.Path(manual))
    messages = [str(w.message) for w in caught if scout_uid in str(w.message)]
    assert len(messages) == 1 and "Topogram" in messages[0] and patient in messages[0]
    assert len(cases) == 2
    (case,) = [case for case in cases if case.patient_id == patient]
    assert case.series_uid == referenced
    assert all(str(ct_folder) in path for path in case.ct_files)


def test_lctsc_two_referenced_series_of_one_patient_stay_an_error(tmp_path):
    manual = tmp_path / "manual"
    write_lctsc(manual, num_patients=1, num_test_patients=0, num_slices=2, size=16)
    ct_folder = next(manual.rglob("0.000000-CT *"))
    rt_file = next(manual.rglob("1-1.dcm"))
    second_uid = _copy_as_series(ct_folder, ct_folder.parent / "3.000000-CT again-00002")
    rt = pydicom.dcmread(rt_file)
    rt.SOPInstanceUID = rt.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    rt.SeriesInstanceUID = generate_uid()
    study = rt.ReferencedFrameOfReferenceSequence[0].RTReferencedStudySequence[0]
    study.RTReferencedSeriesSequence[0].SeriesInstanceUID = second_uid
    second_rt = ct_folder.parent / "4.000000-RTSTRUCT again-00003"
    second_rt.mkdir()
    rt.save_as(second_rt / "1-1.dcm", enforce_file_format=True)
    with pytest.raises(LayoutError, match="has two cases"):
        tcia_cases(epath.Path(manual))
