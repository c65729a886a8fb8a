"""Tests for kseg.io.deid against references independent of the module.

The expected action of each attribute is written out here from DICOM PS3.15 Table E.1-1 and
the legend of Table E.1-1a (what X, Z, D, U and the combined codes allow); nothing is imported
from the module's own table. Leaks are checked on the raw bytes of the output files, and
pixels and references are compared with what pydicom decodes from the source files.
"""

import hashlib
import json
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.errors import InvalidDicomError
from pydicom.sequence import Sequence
from pydicom.uid import (
    UID,
    CTImageStorage,
    ExplicitVRLittleEndian,
    RTStructureSetStorage,
)

from kseg.errors import LayoutError
from kseg.io.deid import deidentify

SECRET = "test-secret"
STUDY_UID = "1.2.826.0.1.3680043.9999.77.1"
SERIES_UID = "1.2.826.0.1.3680043.9999.77.2"
FRAME_UID = "1.2.826.0.1.3680043.9999.77.3"
SLICE_UIDS = [f"1.2.826.0.1.3680043.9999.77.10.{i}" for i in range(3)]
RTSTRUCT_UID = "1.2.826.0.1.3680043.9999.77.20"
RTSTRUCT_SERIES_UID = "1.2.826.0.1.3680043.9999.77.21"
OTHER_SOP_UID = "1.2.826.0.1.3680043.9999.88.1"
OTHER_SERIES_UID = "1.2.826.0.1.3680043.9999.88.2"
OTHER_STUDY_UID = "1.2.826.0.1.3680043.9999.88.3"

# Every identifying value put into the source files; none may reach any output byte.
IDENTIFYING_VALUES = [
    "DOE^JOHN", "MRN-4711-DOE", "19450317", "20230412", "101530", "ACC-998877",
    "STUDY-5512", "HOUSE^GREGORY", "RATCHED^MILDRED", "St Elsewhere Hospital",
    "1 Main Street Springfield", "CTROOM7", "SN-44551", "CHEST FOR JOHN DOE",
    "ABDOMEN SERIES DOE", "PROTOCOL JOHNS LIVER", "DOE^JANE", "ROE^RICHARD", "MRN-0815-ROE",
    "JOHN DOE SECRET", "overlay by dr house", "seen at night by DOE", "555-0199",
    "Jane Doe Trust", "DOE STRUCTURES", "20230413", "PRIOR MRN 31337",
    STUDY_UID, SERIES_UID, FRAME_UID, *SLICE_UIDS, RTSTRUCT_UID, RTSTRUCT_SERIES_UID,
    OTHER_SOP_UID, OTHER_SERIES_UID, OTHER_STUDY_UID,
]  # fmt: skip

# Attribute keyword -> action code of PS3.15 Table E.1-1 (basic profile column), copied by
# hand from the standard for the attributes the fixtures carry.
PROFILE_SUBSET = {
    "PatientName": "Z",
    "PatientBirthDate": "Z",
    "PatientSex": "Z",
    "AccessionNumber": "Z",
    "StudyDate": "Z",
    "StudyTime": "Z",
    "StudyID": "Z",
    "ReferringPhysicianName": "Z",
    "PatientBirthTime": "X",
    "PatientAge": "X",
    "PatientAddress": "X",
    "PatientTelephoneNumbers": "X",
    "OtherPatientIDs": "X",
    "OtherPatientNames": "X",
    "IssuerOfPatientID": "X",
    "StudyDescription": "X",
    "SeriesDescription": "X",
    "InstitutionAddress": "X",
    "PerformingPhysicianName": "X",
    "PhysiciansOfRecord": "X",
    "ImageComments": "X",
    "AdditionalPatientHistory": "X",
    "RequestAttributesSequence": "X",
    "ResponsiblePerson": "X",
    "ResponsibleOrganization": "X",
    "AcquisitionDate": "X/Z",
    "SeriesDate": "X/D",
    "SeriesTime": "X/D",
    "ProtocolName": "X/D",
    "InstitutionName": "X/Z/D",
    "StationName": "X/Z/D",
    "DeviceSerialNumber": "X/Z/D",
    "OperatorsName": "X/Z/D",
    "ContentDate": "Z/D",
    "ContentTime": "Z/D",
    "PatientID": "Z/D",
    "StudyInstanceUID": "U",
    "SeriesInstanceUID": "U",
    "SOPInstanceUID": "U",
    "FrameOfReferenceUID": "U",
}
# Not in Table E.1-1: kept unchanged.
KEPT = ["Modality", "Rows", "Columns", "PixelSpacing", "ImagePositionPatient", "Manufacturer"]


def _file_meta(sop_class, sop_uid):
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.SourceApplicationEntityTitle = "CTROOM7"
    return meta


def _patient_and_study(ds, name="DOE^JOHN", patient_id="MRN-4711-DOE", study=STUDY_UID):
    ds.PatientName = name
    ds.PatientID = patient_id
    ds.PatientBirthDate = "19450317"
    ds.PatientBirthTime = "101530"
    ds.PatientSex = "M"
    ds.PatientAge = "078Y"
    ds.PatientAddress = "1 Main Street Springfield"
    ds.PatientTelephoneNumbers = "555-0199"
    ds.OtherPatientIDs = "PRIOR MRN 31337"
    ds.OtherPatientNames = "DOE^JANE"
    ds.IssuerOfPatientID = "St Elsewhere Hospital"
    ds.ResponsiblePerson = "DOE^JANE"
    ds.ResponsibleOrganization = "Jane Doe Trust"
    ds.AdditionalPatientHistory = "seen at night by DOE"
    ds.StudyInstanceUID = study
    ds.StudyDate = "20230412"
    ds.StudyTime = "101530"
    ds.StudyID = "STUDY-5512"
    ds.AccessionNumber = "ACC-998877"
    ds.ReferringPhysicianName = "HOUSE^GREGORY"
    ds.PhysiciansOfRecord = "HOUSE^GREGORY"
    ds.StudyDescription = "CHEST FOR JOHN DOE"
    ds.InstitutionName = "St Elsewhere Hospital"
    ds.InstitutionAddress = "1 Main Street Springfield"
    ds.StationName = "CTROOM7"
    ds.DeviceSerialNumber = "SN-44551"
    ds.OperatorsName = "RATCHED^MILDRED"
    ds.Manufacturer = "ACME"


def _ct_slice(index):
    ds = Dataset()
    ds.file_meta = _file_meta(CTImageStorage, SLICE_UIDS[index])
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = SLICE_UIDS[index]
    _patient_and_study(ds)
    ds.Modality = "CT"
    ds.SeriesInstanceUID = SERIES_UID
    ds.SeriesDescription = "ABDOMEN SERIES DOE"
    ds.SeriesDate = "20230412"
    ds.SeriesTime = "101530"
    ds.ProtocolName = "PROTOCOL JOHNS LIVER"
    ds.PerformingPhysicianName = "HOUSE^GREGORY"
    ds.AcquisitionDate = "20230412"
    ds.ContentDate = "20230413"
    ds.ContentTime = "101530"
    ds.FrameOfReferenceUID = FRAME_UID
    ds.ImageComments = "seen at night by DOE"
    ds.ImagePositionPatient = [0.0, 0.0, float(index)]
    ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    ds.PixelSpacing = [0.5, 0.5]
    if index:  # an X/Z/U* sequence: kept, with the UIDs inside remapped
        reference = Dataset()
        reference.ReferencedSOPClassUID = CTImageStorage
        reference.ReferencedSOPInstanceUID = SLICE_UIDS[0]
        ds.ReferencedImageSequence = Sequence([reference])
    request = Dataset()
    request.RequestedProcedureID = "ACC-998877"
    request.ScheduledProcedureStepDescription = "CHEST FOR JOHN DOE"
    ds.RequestAttributesSequence = Sequence([request])
    # A sequence the profile keeps, holding attributes it must still clean.
    equipment = Dataset()
    equipment.InstitutionName = "St Elsewhere Hospital"
    equipment.OperatorsName = "RATCHED^MILDRED"
    equipment.Manufacturer = "ACME"
    equipment.private_block(0x0011, "ACME NESTED", create=True).add_new(0x01, "LO", "DOE^JANE")
    ds.ContributingEquipmentSequence = Sequence([equipment])
    ds.Rows, ds.Columns = 4, 5
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 16, 15
    ds.PixelRepresentation = 1
    pixels = (np.arange(20, dtype=np.int16).reshape(4, 5) - 7) * (index + 3)
    ds.PixelData = pixels.tobytes()
    return ds


def _rtstruct():
    ds = Dataset()
    ds.file_meta = _file_meta(RTStructureSetStorage, RTSTRUCT_UID)
    ds.SOPClassUID = RTStructureSetStorage
    ds.SOPInstanceUID = RTSTRUCT_UID
    _patient_and_study(ds)
    ds.Modality = "RTSTRUCT"
    ds.SeriesInstanceUID = RTSTRUCT_SERIES_UID
    ds.StructureSetLabel = "DOE STRUCTURES"
    ds.StructureSetDate = "20230412"
    ds.StructureSetTime = "101530"

    def contour_images():
        images = []
        for uid in SLICE_UIDS:
            image = Dataset()
            image.ReferencedSOPClassUID = CTImageStorage
            image.ReferencedSOPInstanceUID = uid
            images.append(image)
        return Sequence(images)

    series = Dataset()
    series.SeriesInstanceUID = SERIES_UID
    series.ContourImageSequence = contour_images()
    study = Dataset()
    study.ReferencedSOPClassUID = "1.2.840.10008.3.1.2.3.1"
    study.ReferencedSOPInstanceUID = STUDY_UID
    study.RTReferencedSeriesSequence = Sequence([series])
    frame = Dataset()
    frame.FrameOfReferenceUID = FRAME_UID
    frame.RTReferencedStudySequence = Sequence([study])
    ds.ReferencedFrameOfReferenceSequence = Sequence([frame])
    roi = Dataset()
    roi.ROINumber = 1
    roi.ReferencedFrameOfReferenceUID = FRAME_UID
    roi.ROIName = "Liver"
    roi.ROIGenerationAlgorithm = "MANUAL"
    ds.StructureSetROISequence = Sequence([roi])
    contour = Dataset()
    contour.ContourImageSequence = contour_images()[:1]
    contour.ContourGeometricType = "CLOSED_PLANAR"
    contour.NumberOfContourPoints = 3
    contour.ContourData = [0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    roi_contour = Dataset()
    roi_contour.ReferencedROINumber = 1
    roi_contour.ContourSequence = Sequence([contour])
    ds.ROIContourSequence = Sequence([roi_contour])
    observation = Dataset()
    observation.ObservationNumber = 1
    observation.ReferencedROINumber = 1
    observation.ROIInterpreter = "DOE^JANE"
    observation.RTROIInterpretedType = "ORGAN"
    ds.RTROIObservationsSequence = Sequence([observation])
    return ds


def _other_patient_with_private_tags():
    ds = Dataset()
    ds.file_meta = _file_meta(CTImageStorage, OTHER_SOP_UID)
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = OTHER_SOP_UID
    _patient_and_study(ds, name="ROE^RICHARD", patient_id="MRN-0815-ROE", study=OTHER_STUDY_UID)
    ds.Modality = "CT"
    ds.SeriesInstanceUID = OTHER_SERIES_UID
    block = ds.private_block(0x0009, "ACME 1.1", create=True)
    block.add_new(0x01, "LO", "JOHN DOE SECRET")
    block.add_new(0x02, "DS", "12.5")
    ds.add_new(0x60000010, "US", 4)
    ds.add_new(0x60003000, "OW", b"\x01\x00" * 8)
    ds.add_new(0x60004000, "LT", "overlay by dr house")
    ds.add_new(0x50000005, "US", 1)  # Curve Dimensions, a retired curve attribute
    ds.BurnedInAnnotation = "YES"
    return ds


def _write_source(src):
    """The source tree: names in folders and file names, as challenge downloads have."""
    series_dir = src / "DOE_JOHN" / "CT"
    series_dir.mkdir(parents=True)
    for index in range(3):
        _ct_slice(index).save_as(series_dir / f"DOE_JOHN_{index}.dcm", enforce_file_format=True)
    _rtstruct().save_as(src / "DOE_JOHN" / "rtstruct.dcm", enforce_file_format=True)
    other = src / "ROE_RICHARD"
    other.mkdir()
    _other_patient_with_private_tags().save_as(other / "img", enforce_file_format=True)
    (src / "DOE_JOHN" / "notes_DOE_JOHN.txt").write_text("John Doe called on 20230412\n")


def _hashes(folder):
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def _outputs(dst):
    return [pydicom.dcmread(p) for p in sorted(dst.rglob("*.dcm"))]


def _walk(dataset):
    for element in dataset:
        yield element
        if element.VR == "SQ":
            for item in element.value:
                yield from _walk(item)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("deid")
    src = root / "src"
    _write_source(src)
    before = _hashes(src)
    report = deidentify(src, root / "out", secret=SECRET, progress=False)
    datasets = _outputs(root / "out")
    return {
        "root": root,
        "src": src,
        "dst": root / "out",
        "before": before,
        "report": report,
        "ct": sorted(
            (d for d in datasets if d.Modality == "CT" and "PixelData" in d),
            key=lambda d: float(d.ImagePositionPatient[2]),
        ),
        "rtstruct": next(d for d in datasets if d.Modality == "RTSTRUCT"),
        "other": next(d for d in datasets if d.get("BurnedInAnnotation") == "YES"),
    }


def test_no_identifying_value_reaches_any_output_byte_or_name(run):
    files = [p for p in run["dst"].rglob("*") if p.is_file()]
    assert len(files) == 5
    for path in files:
        data = path.read_bytes()
        for value in IDENTIFYING_VALUES:
            assert value.encode() not in data, (value, path)
        assert "DOE" not in path.relative_to(run["dst"]).as_posix()
        assert "ROE" not in path.relative_to(run["dst"]).as_posix()


def test_profile_actions_match_the_standard(run):
    originals = {kw: _ct_slice(0).get(kw) for kw in PROFILE_SUBSET}
    out = run["ct"][0]
    for keyword, code in PROFILE_SUBSET.items():
        original = originals[keyword]
        assert original not in (None, ""), keyword
        present = keyword in out
        value = out.get(keyword) if present else None
        empty = present and (value is None or value == "" or value == [])
        if code == "X":  # removed
            assert not present, keyword
        elif code == "Z":  # zero length, or a dummy; never the original, never removed
            assert present and (empty or value != original), keyword
        elif code == "D":
            assert present and not empty and value != original, keyword
        elif code == "U":
            assert present and UID(value).is_valid and value != original, keyword
        else:  # combined codes: any of their branches, never the original value
            branches = code.split("/")
            allowed = (
                ("X" in branches and not present)
                or ("Z" in branches and empty)
                or ("D" in branches and present and not empty and value != original)
            )
            assert allowed, (keyword, value)
    for keyword in KEPT:
        assert out[keyword].value == _ct_slice(0)[keyword].value, keyword


def test_sequences_are_cleaned_inside(run):
    out = run["ct"][0]
    assert "RequestAttributesSequence" not in out
    item = out.ContributingEquipmentSequence[0]
    assert item.Manufacturer == "ACME"
    assert item.get("InstitutionName") != "St Elsewhere Hospital"
    assert item.get("OperatorsName") != "RATCHED^MILDRED"
    rtstruct = run["rtstruct"]
    assert rtstruct.StructureSetLabel not in ("", None, "DOE STRUCTURES")  # D
    assert rtstruct.StructureSetDate == ""  # Z
    assert rtstruct.RTROIObservationsSequence[0].ROIInterpreter == ""  # Z
    assert rtstruct.StructureSetROISequence[0].ROIName == ""  # Z


def test_private_tags_curves_and_overlays_are_removed(run):
    for dataset in [*run["ct"], run["rtstruct"], run["other"]]:
        tags = [element.tag for element in _walk(dataset)]
        assert not [tag for tag in tags if tag.group % 2 == 1]
        assert not [tag for tag in tags if tag.group & 0xFF00 == 0x5000]
        assert 0x60003000 not in tags and 0x60004000 not in tags
        assert "SourceApplicationEntityTitle" not in dataset.file_meta
    assert run["other"][0x60000010].value == 4  # overlay rows: not in the table, kept


def test_source_tree_is_byte_identical(run):
    assert _hashes(run["src"]) == run["before"]


def test_series_grouping_and_patient_pseudonyms(run):
    ct, rtstruct, other = run["ct"], run["rtstruct"], run["other"]
    assert len(ct) == 3
    series = {d.SeriesInstanceUID for d in ct}
    assert len(series) == 1 and SERIES_UID not in series
    sops = [d.SOPInstanceUID for d in ct]
    assert len(set(sops)) == 3 and not set(sops) & set(SLICE_UIDS)
    assert {d.StudyInstanceUID for d in [*ct, rtstruct]} == {ct[0].StudyInstanceUID}
    assert {d.FrameOfReferenceUID for d in ct} == {ct[0].FrameOfReferenceUID}
    patients = {d.PatientID for d in [*ct, rtstruct]}
    assert len(patients) == 1
    assert patients.isdisjoint({"", "MRN-4711-DOE"})
    assert other.PatientID not in patients | {"", "MRN-0815-ROE"}
    for dataset in [*ct, rtstruct, other]:
        assert dataset.file_meta.MediaStorageSOPInstanceUID == dataset.SOPInstanceUID


def test_references_point_at_the_new_instances(run):
    ct, rtstruct = run["ct"], run["rtstruct"]
    for dataset in ct[1:]:
        referenced = dataset.ReferencedImageSequence[0].ReferencedSOPInstanceUID
        assert referenced == ct[0].SOPInstanceUID
    new_sops = {d.SOPInstanceUID for d in ct}
    frame = rtstruct.ReferencedFrameOfReferenceSequence[0]
    assert frame.FrameOfReferenceUID == ct[0].FrameOfReferenceUID
    study = frame.RTReferencedStudySequence[0]
    assert study.ReferencedSOPInstanceUID == ct[0].StudyInstanceUID
    series = study.RTReferencedSeriesSequence[0]
    assert series.SeriesInstanceUID == ct[0].SeriesInstanceUID
    assert {i.ReferencedSOPInstanceUID for i in series.ContourImageSequence} == new_sops
    contour = rtstruct.ROIContourSequence[0].ContourSequence[0]
    # the contour lies on slice 0 (z = 0), i.e. on the first of the sorted outputs
    assert contour.ContourImageSequence[0].ReferencedSOPInstanceUID == ct[0].SOPInstanceUID
    roi = rtstruct.StructureSetROISequence[0]
    assert roi.ReferencedFrameOfReferenceUID == ct[0].FrameOfReferenceUID


def test_pixel_data_is_identical(run):
    for index, dataset in enumerate(run["ct"]):
        source = _ct_slice(index)
        assert dataset.PixelData == source.PixelData
        np.testing.assert_array_equal(dataset.pixel_array, source.pixel_array)


def test_deidentification_is_recorded_in_the_files(run):
    for dataset in [*run["ct"], run["rtstruct"], run["other"]]:
        assert dataset.PatientIdentityRemoved == "YES"
        assert dataset.DeidentificationMethod
        codes = [
            (c.CodeValue, c.CodingSchemeDesignator)
            for c in dataset.DeidentificationMethodCodeSequence
        ]
        assert ("113100", "DCM") in codes


def test_report_lists_keywords_never_values(run, tmp_path):
    report = run["report"]
    assert len(report.files) == 5 and not report.failed
    assert report.skipped == [("DOE_JOHN/notes_DOE_JOHN.txt", "not a DICOM file")]
    assert not report.copied
    record = next(r for r in report.files if r.source == "DOE_JOHN/CT/DOE_JOHN_0.dcm")
    assert "PatientAge" in record.removed
    assert "RequestAttributesSequence" in record.removed
    assert "(0011,0010)" in record.removed  # the private creator inside a sequence item
    assert "PatientName" in record.emptied
    assert record.replaced["SOPInstanceUID"] == 1
    assert record.replaced["MediaStorageSOPInstanceUID"] == 1
    assert record.replaced["OperatorsName"] == 2  # top level and inside the sequence
    other = next(r for r in report.files if r.source == "ROE_RICHARD/img")
    assert other.warnings and "BurnedInAnnotation" in other.warnings[0]
    assert report.totals()["replaced"]["SOPInstanceUID"] == 5
    assert "5 DICOM files" in str(report) and "skipped: 1" in str(report)
    report.write_json(tmp_path / "report.json")
    text = (tmp_path / "report.json").read_text()
    assert json.loads(text)["totals"]["removed"]["PatientAge"] == 5
    for value in [*IDENTIFYING_VALUES, "DOE_JOHN", "ROE_RICHARD"]:
        assert value not in text
    with_sources = report.to_dict(include_sources=True)
    assert {f["source"] for f in with_sources["files"]} >= {"ROE_RICHARD/img"}


def test_same_secret_same_uids_other_secret_other_uids(run):
    root = run["root"]
    again = deidentify(run["src"], root / "again", secret=SECRET, progress=False)
    other = deidentify(run["src"], root / "other", secret="another", progress=False)
    first = sorted(r.output for r in run["report"].files)
    assert sorted(r.output for r in again.files) == first
    assert not set(r.output for r in other.files) & set(first)
    assert _hashes(root / "again") == _hashes(run["dst"])


def test_uid_root_is_used_and_validated(run):
    root = "1.2.826.0.1.3680043.8.498."
    report = deidentify(run["src"], run["root"] / "rooted", uid_root=root, progress=False)
    datasets = [pydicom.dcmread(run["root"] / "rooted" / r.output) for r in report.files]
    ct = [d for d in datasets if "PixelData" in d]
    for dataset in datasets:
        for keyword in ("SOPInstanceUID", "SeriesInstanceUID", "StudyInstanceUID"):
            uid = dataset[keyword].value
            assert uid.startswith(root) and len(uid) <= 64 and UID(uid).is_valid
    rtstruct = next(d for d in datasets if d.Modality == "RTSTRUCT")
    series = rtstruct.ReferencedFrameOfReferenceSequence[0].RTReferencedStudySequence[0]
    contour_images = series.RTReferencedSeriesSequence[0].ContourImageSequence
    assert {i.ReferencedSOPInstanceUID for i in contour_images} == {d.SOPInstanceUID for d in ct}
    with pytest.raises(ValueError, match="uid_root"):
        deidentify(run["src"], run["root"] / "bad-root", uid_root="1.2.x.", progress=False)


def test_refuses_overlapping_folders(run):
    src = run["src"]
    for dst in (src, src / "inside", run["root"]):
        with pytest.raises(LayoutError):
            deidentify(src, dst, secret=SECRET, progress=False)
    assert _hashes(src) == run["before"]


def test_refuses_to_overwrite_unless_asked(run):
    with pytest.raises(LayoutError, match="exists"):
        deidentify(run["src"], run["dst"], secret=SECRET, progress=False)
    report = deidentify(run["src"], run["dst"], secret=SECRET, overwrite=True, progress=False)
    assert len(report.files) == 5


def test_keep_mirror_layout_copy_and_patient_map(run):
    root = run["root"]
    report = deidentify(
        run["src"],
        root / "mirror",
        secret=SECRET,
        keep=("ROIName",),
        layout="mirror",
        copy_non_dicom=True,
        patient_map_path=root / "map.json",
        progress=False,
    )
    assert sorted(_hashes(root / "mirror")) == sorted(run["before"])
    copied = root / "mirror" / "DOE_JOHN" / "notes_DOE_JOHN.txt"
    assert copied.read_bytes() == (run["src"] / "DOE_JOHN" / "notes_DOE_JOHN.txt").read_bytes()
    assert report.copied == ["DOE_JOHN/notes_DOE_JOHN.txt"]
    rtstruct = pydicom.dcmread(root / "mirror" / "DOE_JOHN" / "rtstruct.dcm")
    assert rtstruct.StructureSetROISequence[0].ROIName == "Liver"
    assert "kept ROIName" in rtstruct.DeidentificationMethod
    mapping = json.loads((root / "map.json").read_text())
    assert mapping["MRN-4711-DOE"] == rtstruct.PatientID
    assert set(mapping) == {"MRN-4711-DOE", "MRN-0815-ROE"}
    with pytest.raises(ValueError, match="NotAKeyword"):
        deidentify(run["src"], root / "bad", keep=("NotAKeyword",), progress=False)
    for map_path in (root / "m2" / "map.json", run["src"] / "map.json"):
        with pytest.raises(LayoutError, match="patient_map_path"):
            deidentify(run["src"], root / "m2", patient_map_path=map_path, progress=False)
    with pytest.raises(ValueError, match="secret"):
        deidentify(run["src"], root / "m3", secret="", progress=False)
    assert not (root / "m2").exists() and not (root / "m3").exists()


def test_no_mapping_or_report_written_unless_asked(run):
    names = [p.name for p in run["dst"].rglob("*") if p.is_file()]
    assert len(names) == 5 and all(name.endswith(".dcm") for name in names)


def test_real_ct_and_dicom_seg_keep_their_references(shared_data, tmp_path):
    src = shared_data / "dcmqi-ct3slice" / "data" / "segmentations"
    originals = {p.name: pydicom.dcmread(p) for p in src.rglob("*.dcm")}
    report = deidentify(src, tmp_path / "out", secret=SECRET, progress=False)
    assert len(report.files) == 5 and not report.failed
    outputs = [pydicom.dcmread(p) for p in (tmp_path / "out").rglob("*.dcm")]
    ct = [d for d in outputs if d.Modality == "CT"]
    segs = [d for d in outputs if d.Modality == "SEG"]
    assert len(ct) == 3 and len(segs) == 2
    old_uids = set()
    for dataset in originals.values():
        old_uids |= {dataset.SOPInstanceUID, dataset.SeriesInstanceUID, dataset.StudyInstanceUID}
    new_ct_sops = {d.SOPInstanceUID for d in ct}
    for seg in segs:
        assert not [e for e in _walk(seg) if e.tag.group % 2 == 1]
        referenced = seg.ReferencedSeriesSequence[0]
        assert referenced.SeriesInstanceUID == ct[0].SeriesInstanceUID
        assert {i.ReferencedSOPInstanceUID for i in referenced.ReferencedInstanceSequence} <= (
            new_ct_sops
        )
        for frame in seg.PerFrameFunctionalGroupsSequence:
            source = frame.DerivationImageSequence[0].SourceImageSequence[0]
            assert source.ReferencedSOPInstanceUID in new_ct_sops
        assert seg.FrameOfReferenceUID == ct[0].FrameOfReferenceUID
    by_position = {round(float(d.ImagePositionPatient[2]), 3): d for d in ct}
    for name in ("01.dcm", "02.dcm", "03.dcm"):
        source = originals[name]
        output = by_position[round(float(source.ImagePositionPatient[2]), 3)]
        assert not [e for e in _walk(output) if e.tag.group % 2 == 1]
        np.testing.assert_array_equal(output.pixel_array, source.pixel_array)
    for path in (tmp_path / "out").rglob("*.dcm"):
        data = path.read_bytes()
        assert not [uid for uid in old_uids if uid.encode() in data]


# --- Files that are no Part 10 file: de-identified or refused, never copied -------------------

# pydicom's no_meta.dcm is CT_small.dcm without File Meta (its README), shifted by a stray
# leading byte, so that a forced read gives no dataset; CT_small.dcm names the patient.
NO_META = Path(get_testdata_file("no_meta.dcm"))
CT_SMALL = pydicom.dcmread(get_testdata_file("CT_small.dcm"))


def _variant(index, number):
    """A CT slice of the DOE fixture with a SOP Instance UID of its own."""
    ds = _ct_slice(index)
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = f"{SLICE_UIDS[index]}.{number}"
    return ds


def _raw(ds):
    """The dataset alone: no preamble, no File Meta."""
    raw = Dataset()
    raw.update(ds)
    return raw


def _write_stray_tree(src):
    folder = src / "scanner"
    folder.mkdir(parents=True)
    preambleless = _variant(0, 1)  # File Meta, but no preamble and no DICM prefix
    pydicom.dcmwrite(folder / "PREAMBLELESS", preambleless, enforce_file_format=False)
    pydicom.dcmwrite(folder / "RAW_IMPLICIT", _raw(_variant(1, 2)), implicit_vr=True)
    pydicom.dcmwrite(
        folder / "RAW_BIG_ENDIAN", _raw(_variant(2, 3)), implicit_vr=False, little_endian=False
    )
    _other_patient_with_private_tags().save_as(folder / "part10.dcm", enforce_file_format=True)
    full = folder / "full.tmp"
    _variant(0, 4).save_as(full, enforce_file_format=True)
    data = full.read_bytes()
    full.unlink()
    (folder / "truncated.dcm").write_bytes(data[: data.index(b"MRN-4711-DOE") + 40])
    implicit = folder / "implicit.tmp"
    pydicom.dcmwrite(implicit, _raw(_variant(1, 5)), implicit_vr=True)
    data = implicit.read_bytes()
    implicit.unlink()
    (folder / "truncated_raw").write_bytes(data[: data.index(b"DOE^JOHN") + 4])
    explicit = folder / "explicit.tmp"
    pydicom.dcmwrite(explicit, _raw(_variant(2, 6)), implicit_vr=False)
    (folder / "shifted").write_bytes(b"\x20" + explicit.read_bytes())
    explicit.unlink()
    (folder / "no_meta.dcm").write_bytes(NO_META.read_bytes())
    unknown = _raw(_variant(0, 7))  # a public tag no dictionary knows, as junk reads give
    unknown.add_new(0x77780010, "LO", "seen at night by DOE")
    pydicom.dcmwrite(folder / "RAW_UNKNOWN_TAG", unknown, implicit_vr=True)
    (folder / "notes.txt").write_text("scanner log: 3 series exported\n")
    image = np.random.default_rng(0).normal(0, 300, (16, 64, 64)).astype(np.int16)
    np.save(folder / "image.npy", image)
    (folder / "empty").write_bytes(b"")


STRAY_IDENTIFYING = [
    *IDENTIFYING_VALUES,
    *[f"{SLICE_UIDS[index]}.{number}" for index, number in [(0, 1), (1, 2), (2, 3), (0, 4)]],
    *[f"{SLICE_UIDS[index]}.{number}" for index, number in [(1, 5), (2, 6), (0, 7)]],
    str(CT_SMALL.PatientName),
    str(CT_SMALL.StudyInstanceUID),
    str(CT_SMALL.SOPInstanceUID),
]
NON_DICOM = {"scanner/notes.txt", "scanner/image.npy", "scanner/empty"}
FORCED = {"scanner/PREAMBLELESS": (0, 1), "scanner/RAW_IMPLICIT": (1, 2),
          "scanner/RAW_BIG_ENDIAN": (2, 3)}  # fmt: skip
REFUSED = {"scanner/no_meta.dcm", "scanner/shifted", "scanner/RAW_UNKNOWN_TAG"}


@pytest.fixture(scope="module")
def stray(tmp_path_factory):
    root = tmp_path_factory.mktemp("stray")
    src = root / "src"
    _write_stray_tree(src)
    before = _hashes(src)
    runs = {
        layout: deidentify(
            src, root / layout, secret=SECRET, layout=layout, copy_non_dicom=True, progress=False
        )
        for layout in ("mirror", "uids")
    }
    return {"root": root, "src": src, "before": before, "runs": runs}


def test_stray_fixture_files_are_what_they_claim(stray):
    folder = stray["src"] / "scanner"
    for name in [*FORCED, *REFUSED, *NON_DICOM]:
        with pytest.raises(InvalidDicomError):
            pydicom.dcmread(stray["src"] / name)  # none is a Part 10 file
    assert (folder / "PREAMBLELESS").read_bytes()[128:132] != b"DICM"
    assert (folder / "part10.dcm").read_bytes()[128:132] == b"DICM"
    no_meta = (folder / "no_meta.dcm").read_bytes()
    assert str(CT_SMALL.PatientName).encode() in no_meta
    assert str(CT_SMALL.PatientID).encode() in no_meta
    for name in ("truncated.dcm", "shifted", *FORCED):
        data = (folder / name.split("/")[-1]).read_bytes()
        assert b"DOE^JOHN" in data and b"MRN-4711-DOE" in data, name
    assert (folder / "truncated_raw").read_bytes().endswith(b"DOE^")  # cut inside the name


@pytest.mark.parametrize("layout", ["mirror", "uids"])
def test_no_identifying_byte_reaches_the_output_tree(stray, layout):
    out = stray["root"] / layout
    files = [p for p in out.rglob("*") if p.is_file()]
    assert len(files) >= 7
    for path in files:
        data = path.read_bytes()
        for value in STRAY_IDENTIFYING:
            assert value.encode() not in data, (value, path)
    assert _hashes(stray["src"]) == stray["before"]


@pytest.mark.parametrize("layout", ["mirror", "uids"])
def test_only_non_dicom_files_are_copied(stray, layout):
    report = stray["runs"][layout]
    assert set(report.copied) == NON_DICOM
    assert {source for source, _ in report.skipped} == NON_DICOM
    for name in NON_DICOM:
        copied = stray["root"] / layout / name
        assert copied.read_bytes() == (stray["src"] / name).read_bytes()
    refused = {source: reason for source, reason in report.failed}
    assert set(refused) == REFUSED
    assert all("refused, not copied" in reason for reason in refused.values())
    written = {record.source for record in report.files}
    assert written == {*FORCED, "scanner/part10.dcm", "scanner/truncated.dcm",
                       "scanner/truncated_raw"}  # fmt: skip
    for name in REFUSED:
        assert not (stray["root"] / "mirror" / name).exists()


def test_files_without_preamble_become_de_identified_part10_files(stray):
    out = stray["root"] / "mirror"
    expected_syntax = {
        "scanner/PREAMBLELESS": ExplicitVRLittleEndian,
        "scanner/RAW_IMPLICIT": "1.2.840.10008.1.2",
        "scanner/RAW_BIG_ENDIAN": "1.2.840.10008.1.2.2",
    }
    new_sops = set()
    for name, (index, _) in FORCED.items():
        data = (out / name).read_bytes()
        assert data[128:132] == b"DICM", name
        dataset = pydicom.dcmread(out / name)  # no force needed
        assert dataset.file_meta.TransferSyntaxUID == expected_syntax[name]
        assert dataset.file_meta.MediaStorageSOPInstanceUID == dataset.SOPInstanceUID
        assert dataset.PatientIdentityRemoved == "YES"
        assert dataset.PatientName in ("", None)
        assert dataset.PatientID.startswith("ANON-")
        assert "StudyDescription" not in dataset and "OtherPatientIDs" not in dataset
        assert dataset.PixelData == _ct_slice(index).PixelData
        new_sops.add(dataset.SOPInstanceUID)
    assert len(new_sops) == 3
    patients = {pydicom.dcmread(out / name).PatientID for name in FORCED}
    assert len(patients) == 1  # one patient, one pseudonym, whatever the file's encoding
