"""kseg.io.dicom_writer: files read back with pydicom alone."""

import numpy as np
import pydicom
import pytest
from pydicom.uid import (
    CTImageStorage,
    ExplicitVRLittleEndian,
    RTStructureSetStorage,
    SecondaryCaptureImageStorage,
)

from kseg.io.dicom_writer import (
    SeriesReference,
    new_dataset,
    rtstruct_dataset,
    set_grayscale_pixels,
    write_dataset,
)
from kseg.io.rtstruct import Contour, RoiContours

SOP_UID = "1.2.826.0.1.3680043.10.9.1"


def _image(pixels, bits_stored=None):
    ds = new_dataset(SecondaryCaptureImageStorage, SOP_UID, implementation_version_name="TEST")
    set_grayscale_pixels(ds, pixels, bits_stored=bits_stored)
    return ds


@pytest.mark.parametrize(
    "dtype, bits_stored, maximum", [(np.uint8, None, 255), (np.uint16, 12, 4095)]
)
def test_pixels_and_file_meta_read_back_with_pydicom(tmp_path, dtype, bits_stored, maximum):
    pixels = np.arange(12, dtype=dtype).reshape(3, 4) * (maximum // 11)
    path = write_dataset(_image(pixels, bits_stored), tmp_path / "image.dcm")

    ds = pydicom.dcmread(path)
    assert ds.preamble == b"\0" * 128  # a DICOM file, not a bare dataset
    assert ds.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID == SOP_UID
    assert ds.file_meta.MediaStorageSOPClassUID == ds.SOPClassUID == SecondaryCaptureImageStorage
    assert ds.file_meta.ImplementationVersionName == "TEST"
    assert (ds.Rows, ds.Columns, ds.BitsAllocated) == (3, 4, 8 * np.dtype(dtype).itemsize)
    assert ds.HighBit == ds.BitsStored - 1 == (bits_stored or 8) - 1
    np.testing.assert_array_equal(ds.pixel_array, pixels)
    assert [p.name for p in tmp_path.iterdir()] == ["image.dcm"]  # no temporary left


@pytest.mark.parametrize(
    "pixels, bits_stored",
    [
        (np.zeros((2, 2), np.int16), None),  # signed
        (np.zeros((2, 2, 2), np.uint8), None),  # not one frame
        (np.zeros((2, 2), np.uint8), 9),  # more bits than allocated
    ],
)
def test_pixels_the_module_cannot_describe_are_refused(pixels, bits_stored):
    with pytest.raises(ValueError):
        _image(pixels, bits_stored)


def test_rtstruct_references_every_slice_and_keeps_each_contour(tmp_path):
    slices = ("1.2.3.4.1", "1.2.3.4.2")
    reference = SeriesReference("P7", "F", "1.2.3", "1.2.3.4", "1.2.3.5", slices)
    square = np.array([[0, 0, 5], [10.25, 0, 5], [10.25, -3.5, 5], [0, -3.5, 5]], float)
    rois = [
        RoiContours(1, "Heart", (255, 0, 0), (Contour(slices[1], square),)),
        RoiContours(2, "Body", None, (Contour(None, square + [0, 0, 2.5]),), "1.2.3.9",
                    interpreted_type="EXTERNAL"),
    ]
    ds = rtstruct_dataset(
        rois, reference, series_instance_uid="1.2.3.6", sop_instance_uid="1.2.3.6.1",
        implementation_version_name="TEST", label="TEST SET", date="20240102", time="030405",
    )
    read = pydicom.dcmread(write_dataset(ds, tmp_path / "rs.dcm"))

    assert read.SOPClassUID == RTStructureSetStorage and read.Modality == "RTSTRUCT"
    assert (read.PatientID, read.PatientSex, read.StudyInstanceUID) == ("P7", "F", "1.2.3")
    assert read.StructureSetLabel == "TEST SET" and read.StructureSetDate == "20240102"
    frame = read.ReferencedFrameOfReferenceSequence[0]
    series = frame.RTReferencedStudySequence[0].RTReferencedSeriesSequence[0]
    assert frame.FrameOfReferenceUID == "1.2.3.5" and series.SeriesInstanceUID == "1.2.3.4"
    assert [(i.ReferencedSOPClassUID, i.ReferencedSOPInstanceUID)
            for i in series.ContourImageSequence] == [(CTImageStorage, uid) for uid in slices]
    assert [(s.ROINumber, s.ROIName, s.ReferencedFrameOfReferenceUID)
            for s in read.StructureSetROISequence] == [(1, "Heart", "1.2.3.5"),
                                                       (2, "Body", "1.2.3.9")]
    heart, body = read.ROIContourSequence
    assert list(heart.ROIDisplayColor) == [255, 0, 0]
    assert list(body.ROIDisplayColor) == [255, 255, 255]
    (heart_contour,) = heart.ContourSequence
    (body_contour,) = body.ContourSequence
    assert heart_contour.ContourImageSequence[0].ReferencedSOPInstanceUID == slices[1]
    assert "ContourImageSequence" not in body_contour
    assert heart_contour.NumberOfContourPoints == 4
    np.testing.assert_array_equal(np.reshape(heart_contour.ContourData, (-1, 3)), square)
    assert [o.RTROIInterpretedType for o in read.RTROIObservationsSequence] == [
        "ORGAN", "EXTERNAL"
    ]
