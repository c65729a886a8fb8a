"""Malformed RT Structure Sets: a kseg error naming the file and the ROI, never a mask with
extra pixels or numpy RuntimeWarnings.

The broken files are pydicom's own ``rtstruct.dcm`` with one value rewritten as raw bytes
(so pydicom's writer cannot "fix" it); the file is never modified by the reader.
"""

import shutil
import warnings

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataelem import RawDataElement
from pydicom.tag import Tag

from kseg.errors import MaskError, UnreadableFileError
from kseg.io import Volume
from kseg.io.rtstruct import Contour, RoiContours, rasterize_roi, read_rtstruct


def _rtstruct_with(tmp_path, values, *, roi=0, contour=0):
    """pydicom's rtstruct.dcm with ``{keyword: text}`` set in one contour (ReferencedROINumber:
    in its ROI item); returns the path and the name of the ROI changed."""
    dataset = pydicom.dcmread(get_testdata_file("rtstruct.dcm"), force=True)
    roi_item = dataset.ROIContourSequence[roi]
    number = int(roi_item.ReferencedROINumber)
    name = next(
        str(r.ROIName) for r in dataset.StructureSetROISequence if int(r.ROINumber) == number
    )
    for keyword, text in values.items():
        item = roi_item if keyword == "ReferencedROINumber" else roi_item.ContourSequence[contour]
        tag = Tag(pydicom.datadict.tag_for_keyword(keyword))
        data = text.encode("ascii")
        data += b" " * (len(data) % 2)
        vr = pydicom.datadict.dictionary_VR(tag)
        item[tag] = RawDataElement(tag, vr, len(data), data, 0, True, True)
    path = tmp_path / "RS.dcm"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns while writing the invalid values
        dataset.save_as(path)
    return path, name


def test_pydicom_rtstruct_reads_as_pydicom_sees_it():
    path = get_testdata_file("rtstruct.dcm")
    reference = pydicom.dcmread(path, force=True)  # the file has no preamble
    rois = read_rtstruct(path)
    assert [r.name for r in rois] == [str(r.ROIName) for r in reference.StructureSetROISequence]
    first = reference.ROIContourSequence[0].ContourSequence[0]
    roi = next(r for r in rois if r.number == int(reference.ROIContourSequence[0]
                                                   .ReferencedROINumber))
    np.testing.assert_allclose(roi.contours[0].points.ravel(), [float(v) for v in
                                                               first.ContourData])
    # Its body outline and isocentres, typed by RTROIObservationsSequence: none is an organ.
    typed = {int(o.ReferencedROINumber): str(o.RTROIInterpretedType)
             for o in reference.RTROIObservationsSequence}
    assert {r.number: r.interpreted_type for r in rois} == typed
    assert sorted(typed.values()) == ["EXTERNAL", "ISOCENTER", "ISOCENTER"]
    assert not any(r.may_be_organ for r in rois)


@pytest.mark.parametrize(
    "text, needle",
    [
        ("1\\2\\NaN\\4\\5\\6\\7\\8\\9", "NaN or infinite"),
        ("1\\2\\3\\inf\\5\\6\\7\\8\\9", "NaN or infinite"),
        ("1\\2\\3\\4\\5\\6\\7\\8", "8 values"),  # not a multiple of three
        ("1\\2\\3\\4\\x\\6\\7\\8\\9", "'x'"),
    ],
)
def test_bad_contour_data_is_an_error_naming_file_and_roi(tmp_path, text, needle):
    points = str(len(text.split("\\")) // 3)
    path, name = _rtstruct_with(tmp_path, {"ContourData": text, "NumberOfContourPoints": points})
    before = path.read_bytes()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no RuntimeWarning from NaN arithmetic either
        with pytest.raises(UnreadableFileError, match=needle) as raised:
            read_rtstruct(path)
    assert "RS.dcm" in str(raised.value) and repr(name) in str(raised.value)
    assert path.read_bytes() == before


def test_declared_point_count_must_match(tmp_path):
    path, name = _rtstruct_with(tmp_path, {"NumberOfContourPoints": "99"})
    with pytest.raises(UnreadableFileError, match="99 points declared") as raised:
        read_rtstruct(path)
    assert repr(name) in str(raised.value)
    path, _ = _rtstruct_with(tmp_path, {"NumberOfContourPoints": "many"})
    with pytest.raises(UnreadableFileError, match="NumberOfContourPoints"):
        read_rtstruct(path)


def test_bad_roi_reference_is_named(tmp_path):
    path, _ = _rtstruct_with(tmp_path, {"ReferencedROINumber": "x1"})
    with pytest.raises(UnreadableFileError, match="ReferencedROINumber") as raised:
        read_rtstruct(path)
    assert "RS.dcm" in str(raised.value)


def test_contours_built_in_code_with_nan_points_are_refused():
    volume = Volume(np.zeros((3, 8, 8), np.int16), np.eye(4), "p")
    points = np.array([[-1.0, -1.0, 1.0], [-5.0, -1.0, 1.0], [np.nan, -5.0, 1.0]])
    roi = RoiContours(1, "Heart", None, (Contour(None, points),))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(MaskError, match="'Heart'"):
            rasterize_roi(roi, volume, source="RS.dcm")


def test_the_reader_never_writes_to_the_file(tmp_path):
    path = tmp_path / "RS.dcm"
    shutil.copy(get_testdata_file("rtstruct.dcm"), path)
    before = path.read_bytes()
    read_rtstruct(path)
    assert path.read_bytes() == before


@pytest.mark.parametrize("fraction", [0.5, 0.8, 0.99])
def test_a_structure_set_cut_short_is_an_error_not_fewer_contours(tmp_path, fraction):
    dataset = pydicom.dcmread(get_testdata_file("rtstruct.dcm"), force=True)
    full = tmp_path / "full.dcm"
    dataset.save_as(full, enforce_file_format=True)
    cut = tmp_path / "RS.dcm"
    data = full.read_bytes()
    cut.write_bytes(data[: int(len(data) * fraction)])
    with pytest.raises(UnreadableFileError, match="RS.dcm"):
        read_rtstruct(cut)
    assert len(read_rtstruct(full)) == len(dataset.StructureSetROISequence)


@pytest.mark.parametrize("keyword", ["StructureSetROISequence", "ROIContourSequence"])
def test_a_structure_set_cut_between_elements_is_an_error(tmp_path, keyword):
    # Cut at an element boundary, the file parses as a shorter, valid-looking data set.
    dataset = pydicom.dcmread(get_testdata_file("rtstruct.dcm"), force=True)
    delattr(dataset, keyword)
    dataset.save_as(tmp_path / "RS.dcm", enforce_file_format=True)
    with pytest.raises(UnreadableFileError, match=keyword):
        read_rtstruct(tmp_path / "RS.dcm")
