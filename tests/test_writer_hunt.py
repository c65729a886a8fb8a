"""What kseg writes for other tools, read back by pydicom / highdicom: hostile headers and
layouts a real archive produces (non-Latin text, de-identified series)."""

import functools
import shutil
import warnings

import numpy as np
import pydicom
import pydicom.data
import pytest
from test_io_dicom import _write_scrambled_series

from kseg.errors import LayoutError
from kseg.io import (
    deidentify,
    rasterize_rtstruct,
    read_dicom_seg,
    read_dicom_series,
    write_dicom_seg,
    write_rtstruct,
)
from kseg.io._ps315 import BASIC_PROFILE_EDITION
from kseg.io.dicom_writer import SeriesReference, rtstruct_dataset, write_dataset
from kseg.io.rtstruct import Contour, RoiContours


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


@pytest.mark.parametrize("writer", ["rtstruct", "seg"])
def test_names_dicom_cannot_hold_as_one_value_are_refused(tmp_path, writer):
    # "Lung\Left" was written as ROIName / SegmentLabel and read back (pydicom, kseg's
    # reader) as two values, ['Lung', 'Left']; a 70-character name was written into an LO
    # of at most 64 (PS3.5 Table 6.2-1) with only pydicom's length warning.
    ct = _series(tmp_path / "ct", lambda ds: None)
    labels = np.zeros(ct.shape, np.uint8)
    labels[1:3, 1:3, 1:3] = 1
    if writer == "seg":
        pytest.importorskip("highdicom")
        write = functools.partial(write_dicom_seg, labels, ct, tmp_path / "out.dcm")
    else:
        write = functools.partial(write_rtstruct, labels, ct, tmp_path / "out.dcm")
    with pytest.raises(ValueError, match=r"label 1 .*backslash"):
        write({1: "Lung\\Left"}) if writer == "seg" else write(roi_names={1: "Lung\\Left"})
    with pytest.raises(ValueError, match=r"label 1 .*longer than the 64"):
        write({1: "x" * 65}) if writer == "seg" else write(roi_names={1: "x" * 65})
    assert not (tmp_path / "out.dcm").exists()
    # 64 characters fit exactly, and read back as written
    if writer == "seg":
        path = write({1: "y" * 64})
        assert pydicom.dcmread(path).SegmentSequence[0].SegmentLabel == "y" * 64
    else:
        path = write(roi_names={1: "y" * 64})
        assert pydicom.dcmread(path).StructureSetROISequence[0].ROIName == "y" * 64


def test_rtstruct_label_and_description_fit_their_value_representations(tmp_path):
    # StructureSetLabel is SH (16 characters), SeriesDescription LO (64): longer ones were
    # written, non-conformant, with only pydicom's length warnings.
    ct = _series(tmp_path / "ct", lambda ds: None)
    labels = np.zeros(ct.shape, np.uint8)
    labels[1, 1:3, 1:3] = 1
    with pytest.raises(ValueError, match="label 'a structure set label'.*16"):
        write_rtstruct(labels, ct, tmp_path / "rs.dcm", roi_names=["A"],
                       label="a structure set label")  # fmt: skip
    with pytest.raises(ValueError, match="series_description.*64"):
        write_rtstruct(labels, ct, tmp_path / "rs.dcm", roi_names=["A"],
                       series_description="d" * 65)  # fmt: skip
    assert not (tmp_path / "rs.dcm").exists()


def test_deidentify_zeroes_the_preamble(tmp_path):
    # The 128-byte preamble lies outside the data set: a dual-personality DICOM / TIFF file
    # or a vendor can put anything there, and it was copied byte for byte into the
    # "de-identified" output.
    ds = pydicom.dcmread(pydicom.data.get_testdata_file("CT_small.dcm"))
    ds.preamble = b"II*\x00" + b"Patient Doe^Jane MRN 4711".ljust(124, b"\x00")
    (tmp_path / "src").mkdir()
    ds.save_as(tmp_path / "src" / "ct.dcm")
    source = (tmp_path / "src" / "ct.dcm").read_bytes()
    report = deidentify(tmp_path / "src", tmp_path / "out", secret="k", progress=False)
    written = (tmp_path / "out" / report.files[0].output).read_bytes()
    assert written[:128] == b"\x00" * 128 and written[128:132] == b"DICM"
    assert b"Doe^Jane" not in written and b"4711" not in written
    assert (tmp_path / "src" / "ct.dcm").read_bytes() == source
    out = pydicom.dcmread(tmp_path / "out" / report.files[0].output)
    assert np.array_equal(out.pixel_array, ds.pixel_array)


def test_rtstruct_of_a_deidentified_series_says_how(tmp_path):
    # A de-identified series (TCIA's, or deidentify's output) says Patient Identity Removed
    # YES and how; the structure set copied the YES without the method, which PS3.3 C.7.1.1
    # requires beside it (Type 1C), so validators refused it. highdicom's SEG copies both.
    def deidentified(ds):
        ds.PatientIdentityRemoved = "YES"
        ds.DeidentificationMethod = ["Per DICOM PS 3.15 AnnexE", "TCIA"]
        code = pydicom.Dataset()
        code.CodeValue, code.CodingSchemeDesignator = "113100", "DCM"
        code.CodeMeaning = "Basic Application Confidentiality Profile"
        ds.DeidentificationMethodCodeSequence = [code]

    ct = _series(tmp_path / "ct", deidentified)
    labels = np.zeros(ct.shape, np.uint8)
    labels[1, 1:3, 1:3] = 1
    ds = pydicom.dcmread(write_rtstruct(labels, ct, tmp_path / "rs.dcm", roi_names=["A"]))
    assert ds.PatientIdentityRemoved == "YES"
    assert list(ds.DeidentificationMethod) == ["Per DICOM PS 3.15 AnnexE", "TCIA"]
    assert ds.DeidentificationMethodCodeSequence[0].CodeValue == "113100"


def test_deidentify_follows_linked_patient_folders(tmp_path):
    # A dataset assembled from links into an archive (src/patient1 -> /archive/patient1):
    # os.walk does not enter linked folders, so the patient was left out of the output and
    # out of the report, without a word.
    archive = tmp_path / "archive" / "patient1"
    archive.mkdir(parents=True)
    shutil.copy(pydicom.data.get_testdata_file("CT_small.dcm"), archive / "ct.dcm")
    src = tmp_path / "src"
    src.mkdir()
    shutil.copy(pydicom.data.get_testdata_file("MR_small.dcm"), src / "mr.dcm")
    (src / "patient1").symlink_to(archive, target_is_directory=True)
    (archive / "loop").symlink_to(src, target_is_directory=True)  # back up: no loop
    report = deidentify(src, tmp_path / "out", secret="k", layout="mirror", progress=False)
    assert sorted(f.source for f in report.files) == ["mr.dcm", "patient1/ct.dcm"]
    assert not report.failed and not report.skipped
    assert pydicom.dcmread(tmp_path / "out" / "patient1" / "ct.dcm").PatientName == ""


def test_deidentify_keeps_the_record_of_an_earlier_step(tmp_path):
    # TCIA's collections arrive de-identified, their method recorded; deidentify replaced
    # that record with its own, although De-identification Method is multi-valued for
    # successive steps (PS3.3 C.7.1.1) and deidentify itself appends to the code sequence.
    ds = pydicom.dcmread(pydicom.data.get_testdata_file("CT_small.dcm"))
    ds.PatientIdentityRemoved = "YES"
    ds.DeidentificationMethod = "Per DICOM PS 3.15 AnnexE. Details in 0012,0064"
    (tmp_path / "src").mkdir()
    ds.save_as(tmp_path / "src" / "ct.dcm")
    first = deidentify(tmp_path / "src", tmp_path / "once", secret="k", keep=("ROIName",),
                       progress=False)  # fmt: skip
    out = pydicom.dcmread(tmp_path / "once" / first.files[0].output)
    kseg_method = f"DICOM PS3.15 {BASIC_PROFILE_EDITION} Basic Profile by kseg"
    expected = ["Per DICOM PS 3.15 AnnexE. Details in 0012,0064", kseg_method, "kept ROIName"]
    assert list(out.DeidentificationMethod) == expected
    # run again on its own output: nothing is repeated
    again = deidentify(tmp_path / "once", tmp_path / "twice", secret="k", keep=("ROIName",),
                       progress=False)  # fmt: skip
    out = pydicom.dcmread(tmp_path / "twice" / again.files[0].output)
    assert list(out.DeidentificationMethod) == expected


def test_rtstruct_refuses_colours_it_would_cut_to_black(tmp_path):
    # matplotlib colours are 0..1 floats (plt.cm.tab10(0)[:3]); int() cut each to 0, so
    # every ROI was written ROIDisplayColor 0\0\0 and drawn black, without a word.
    ct = _series(tmp_path / "ct", lambda ds: None)
    labels = np.zeros(ct.shape, np.uint8)
    labels[1, 1:3, 1:3] = 1
    for colour in [(0.12, 0.47, 0.71), (256, 0, 0), (255, 0)]:
        with pytest.raises(ValueError, match=r"label 1 the colour .*0\.\.255"):
            write_rtstruct(labels, ct, tmp_path / "rs.dcm", roi_names=["A"],
                           colors={1: colour})  # fmt: skip
    assert not (tmp_path / "rs.dcm").exists()
    path = write_rtstruct(labels, ct, tmp_path / "rs.dcm", roi_names=["A"],
                          colors={1: np.array([31, 119, 180], np.uint8)})  # fmt: skip
    assert list(pydicom.dcmread(path).ROIContourSequence[0].ROIDisplayColor) == [31, 119, 180]


def test_rtstruct_contour_over_64_kib_stays_readable(tmp_path):
    # A jagged outline of ~2700 points (a noisy prediction, a large matrix) makes ContourData
    # longer than the 2-byte length DS has in explicit VR: pydicom wrote it as UN, and
    # kseg's own rasterize_rtstruct refused its file ("ContourData holds b'...', which is
    # not a number"). Reference: the mask itself, and pydicom reading DS values.
    ct = _series(tmp_path / "ct", lambda ds: None)
    big = tmp_path / "big"
    big.mkdir()
    for path in sorted((tmp_path / "ct").iterdir()):  # the same series on a 256 x 256 grid
        ds = pydicom.dcmread(path)
        ds.Rows = ds.Columns = 256
        ds.PixelData = np.zeros((256, 256), np.uint16).tobytes()
        ds.save_as(big / path.name)
    ct = read_dicom_series(big)
    labels = np.zeros(ct.shape, np.uint8)
    labels[2, 10:240, 10:240] = 1
    for start, stop in ((240, 246), (4, 10)):  # teeth along every edge
        labels[2, 10:240:2, start:stop] = 1
        labels[2, start:stop, 10:240:2] = 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # pydicom warned "exceeds the size of 64 kByte"
        path = write_rtstruct(labels, ct, tmp_path / "rs.dcm", roi_names=["A"])
    (contour,) = pydicom.dcmread(path).ROIContourSequence[0].ContourSequence
    assert int(contour.NumberOfContourPoints) > 2200
    assert contour["ContourData"].VR == "DS"
    assert len(contour.ContourData) == 3 * int(contour.NumberOfContourPoints)
    assert np.array_equal(rasterize_rtstruct(path, ct)["A"], labels == 1)


def test_write_dataset_without_file_meta_gets_pydicoms_error(tmp_path):
    # the implicit-VR switch must not turn pydicom's "set the file meta's Transfer Syntax
    # UID" into an AttributeError on a plain Dataset
    ds = pydicom.Dataset()
    ds.SOPClassUID, ds.SOPInstanceUID = "1.2.840.10008.5.1.4.1.1.2", "1.2.3"
    with pytest.raises(ValueError, match="Transfer Syntax"):
        write_dataset(ds, tmp_path / "x.dcm")
    assert not (tmp_path / "x.dcm").exists()


def test_rtstruct_refuses_slices_sharing_one_sop_instance_uid(tmp_path):
    # An anonymiser that gave every slice one SOPInstanceUID: the series reads, but the
    # structure set referenced every contour to that UID, and rasterize_rtstruct (like any
    # reader going by UID) put them on the wrong slice: the mask came back different.
    def one_uid(ds):
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = "1.2.3.999"

    ct = _series(tmp_path / "ct", one_uid)
    labels = np.zeros(ct.shape, np.uint8)
    labels[1, 1:3, 1:3] = labels[3, 2:4, 3:5] = 1
    with pytest.raises(ValueError, match=r"share SOPInstanceUID 1\.2\.3\.999"):
        write_rtstruct(labels, ct, tmp_path / "rs.dcm", roi_names=["A"])
    assert not (tmp_path / "rs.dcm").exists()


def test_rtstruct_references_each_slice_under_its_own_series(tmp_path):
    # An anonymiser that gave every slice its own SeriesInstanceUID: the series reads with
    # ignore_series_uid=True, but the structure set listed all five slices under the first
    # slice's series, so a reader resolving series then instance found four of them missing.
    (tmp_path / "ct").mkdir()
    for path in _write_scrambled_series(tmp_path / "ct")[0]:
        ds = pydicom.dcmread(path)
        ds.SeriesInstanceUID = pydicom.uid.generate_uid()
        ds.save_as(path)
    ct = read_dicom_series(tmp_path / "ct", ignore_series_uid=True)
    series_of = {}
    for path in (tmp_path / "ct").iterdir():
        ds = pydicom.dcmread(path)
        series_of[ds.SOPInstanceUID] = ds.SeriesInstanceUID
    labels = np.zeros(ct.shape, np.uint8)
    labels[1, 1:3, 1:3] = labels[3, 2:4, 3:5] = 1
    path = write_rtstruct(labels, ct, tmp_path / "rs.dcm", roi_names=["A"])
    study = pydicom.dcmread(path).ReferencedFrameOfReferenceSequence[0]
    items = study.RTReferencedStudySequence[0].RTReferencedSeriesSequence
    listed = {
        image.ReferencedSOPInstanceUID: item.SeriesInstanceUID
        for item in items
        for image in item.ContourImageSequence
    }
    assert listed == series_of and len(items) == 5
    assert np.array_equal(rasterize_rtstruct(path, ct)["A"], labels == 1)


def test_rtstruct_roi_generation_algorithm_is_an_enumerated_value(tmp_path):
    # "automatic" (lower case) or "AI" was written into ROIGenerationAlgorithm, a CS whose
    # values PS3.3 C.8.8.5 enumerates: validators and TPS imports reject the file.
    ct = _series(tmp_path / "ct", lambda ds: None)
    labels = np.zeros(ct.shape, np.uint8)
    labels[1, 1:3, 1:3] = 1
    for value in ("automatic", "AI"):
        with pytest.raises(ValueError, match="roi_generation_algorithm must be one of"):
            write_rtstruct(labels, ct, tmp_path / "rs.dcm", roi_names=["A"],
                           roi_generation_algorithm=value)  # fmt: skip
    assert not (tmp_path / "rs.dcm").exists()
    path = write_rtstruct(labels, ct, tmp_path / "rs.dcm", roi_names=["A"],
                          roi_generation_algorithm="SEMIAUTOMATIC")  # fmt: skip
    roi = pydicom.dcmread(path).StructureSetROISequence[0]
    assert roi.ROIGenerationAlgorithm == "SEMIAUTOMATIC"


def test_deidentify_refused_for_an_existing_output_leaves_dst_as_it_was(tmp_path):
    # A second batch overlapping the first: deidentify raised at the first existing output,
    # but the files before it in the run stayed in dst, a partial run without a report.
    ct = pydicom.dcmread(pydicom.data.get_testdata_file("CT_small.dcm"))
    for patient in ("p1", "p2", "p3"):
        (tmp_path / "src" / patient).mkdir(parents=True)
        ct.SOPInstanceUID = pydicom.uid.generate_uid()
        ct.save_as(tmp_path / "src" / patient / "ct.dcm")
    (tmp_path / "first" / "p2").mkdir(parents=True)
    shutil.copy(tmp_path / "src" / "p2" / "ct.dcm", tmp_path / "first" / "p2")
    dst = tmp_path / "dst"
    deidentify(tmp_path / "first", dst, secret="k", layout="mirror", progress=False)
    def tree():
        return {p.relative_to(dst): p.is_file() and p.read_bytes() for p in dst.rglob("*")}

    before = tree()
    with pytest.raises(LayoutError, match="exists"):
        deidentify(tmp_path / "src", dst, secret="k", layout="mirror", progress=False)
    assert tree() == before  # p1's output and its folder are gone again
    # with overwrite the run completes
    report = deidentify(tmp_path / "src", dst, secret="k", layout="mirror", overwrite=True,
                        progress=False)  # fmt: skip
    assert len(report.files) == 3


def test_seg_keeps_segment_names_latin1_cannot_encode(tmp_path, recwarn):
    # highdicom keeps the source series' character set (ISO_IR 100 here): a Japanese
    # segment name was written "??", and read back under another name.
    pytest.importorskip("highdicom")

    def latin1(ds):
        ds.SpecificCharacterSet = "ISO_IR 100"
        ds.PatientName = "Müller^Jürgen"

    ct = _series(tmp_path / "ct", latin1)
    labels = np.zeros(ct.shape, np.uint8)
    labels[1:4, 1:3, 2:5] = 1
    path = write_dicom_seg(labels, ct, tmp_path / "seg.dcm", {1: "肝臓"})
    ds = pydicom.dcmread(path)
    assert ds.SegmentSequence[0].SegmentLabel == "肝臓"
    assert str(ds.PatientName) == "Müller^Jürgen"
    assert not [w for w in recwarn if "encode" in str(w.message)]
    assert np.array_equal(read_dicom_seg(path, reference_series=ct).array, labels)


def test_seg_of_a_japanese_series_with_an_empty_first_character_set(tmp_path):
    # "\ISO 2022 IR 87", an empty first value being the default repertoire (PS3.3
    # C.12.1.1.2; PS3.5 Annex H's own examples): highdicom raised a bare
    # "ValueError: '' is not a valid SpecificCharacterSetValues", naming no file.
    pytest.importorskip("highdicom")

    def japanese(ds):
        ds.SpecificCharacterSet = ["", "ISO 2022 IR 87"]
        ds.PatientName = "Yamada^Tarou=山田^太郎=やまだ^たろう"

    ct = _series(tmp_path / "ct", japanese)
    labels = np.zeros(ct.shape, np.uint8)
    labels[1:3, 1:3, 2:4] = 1
    path = write_dicom_seg(labels, ct, tmp_path / "seg.dcm", {1: "Liver"})
    ds = pydicom.dcmread(path)
    assert str(ds.PatientName) == "Yamada^Tarou=山田^太郎=やまだ^たろう"
    assert np.array_equal(read_dicom_seg(path, reference_series=ct).array, labels)


def test_seg_refuses_slices_sharing_one_sop_instance_uid(tmp_path):
    # highdicom only warned "Duplicate entries found in the ReferencedSeriesSequence" and
    # wrote a SEG that kseg's own reader then refused (AlignmentError: frame 0 references
    # slice 4 but lies on slice 3).
    pytest.importorskip("highdicom")

    def one_uid(ds):
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = "1.2.3.999"

    ct = _series(tmp_path / "ct", one_uid)
    labels = np.zeros(ct.shape, np.uint8)
    labels[1, 1:3, 1:3] = 1
    with pytest.raises(ValueError, match=r"share SOPInstanceUID 1\.2\.3\.999"):
        write_dicom_seg(labels, ct, tmp_path / "seg.dcm", {1: "A"})
    assert not (tmp_path / "seg.dcm").exists()


def test_contour_data_left_as_un_by_an_explicit_vr_writer_is_read(tmp_path):
    # pydicom (rt-utils-like writers) writes a ContourData over 64 KiB in explicit VR as UN;
    # pydicom keeps it as bytes and kseg refused it as "not a number".
    ct = _series(tmp_path / "ct", lambda ds: None)
    k = 2
    # a 4000-vertex zig-zag polygon around one pixel centre of slice k, in index space
    angles = np.linspace(0, 2 * np.pi, 4000, endpoint=False)
    radius = np.where(np.arange(4000) % 2, 0.3, 0.45)
    index = np.column_stack([np.full(4000, k), 1 + radius * np.sin(angles),
                             4 + radius * np.cos(angles)])  # fmt: skip
    lps = ct.affine.copy()
    lps[:2] *= -1
    points = index @ lps[:3, :3].T + lps[:3, 3]
    uids = tuple(ct.metadata["sop_instance_uids"])
    reference = SeriesReference("P007", "F", "1.2.3", "1.2.3.4", "1.2.3.9", uids)
    roi = RoiContours(1, "A", (255, 0, 0), (Contour(uids[k], points),))
    ds = rtstruct_dataset([roi], reference, series_instance_uid="1.2.3.5",
                          sop_instance_uid="1.2.3.6", implementation_version_name="TEST",
                          label="T", date="20240101", time="000000")  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds.save_as(tmp_path / "rs.dcm", enforce_file_format=True)  # explicit VR
    assert pydicom.dcmread(tmp_path / "rs.dcm").ROIContourSequence[0].ContourSequence[0][
        "ContourData"].VR == "UN"
    expected = np.zeros(ct.shape, bool)
    expected[k, 1, 4] = True
    assert np.array_equal(rasterize_rtstruct(tmp_path / "rs.dcm", ct)["A"], expected)
