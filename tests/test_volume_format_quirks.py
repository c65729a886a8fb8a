"""Valid volume files that real tools write and that pydicom, nibabel or kseg's own code
could read differently from what the file says, each checked against a reference built
independently in the test (a hand-worked mask, values written with pydicom or nibabel)."""

import struct
import warnings

import nibabel as nib
import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import (
    EnhancedCTImageStorage,
    ExplicitVRLittleEndian,
    RTStructureSetStorage,
    generate_uid,
)
from test_io_dicom import COLUMNS, ROWS, _write_slice

from kseg.errors import MaskError, UnreadableFileError
from kseg.io import (
    ContourOutsideVolumeWarning,
    Volume,
    rasterize_rtstruct,
    read_dicom_image,
    read_dicom_seg,
    read_dicom_seg_masks,
    read_dicom_series,
    read_nifti,
)

# --- DICOM images --------------------------------------------------------------------------------


def _item(**values):
    item = Dataset()
    for keyword, value in values.items():
        setattr(item, keyword, value)
    return Sequence([item])


def _enhanced_ct_slice(path, z, stored):
    """A one-frame Enhanced CT file as scanners and legacy converters write it: rescale,
    position, orientation and spacing only in its functional groups (PS3.3 C.7.6.16)."""
    _write_slice(path, position=(0, 0, z), pixels=np.full((ROWS, COLUMNS), stored, np.uint16))
    ds = pydicom.dcmread(path)
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = EnhancedCTImageStorage
    ds.NumberOfFrames = 1
    per_frame = Dataset()
    per_frame.PlanePositionSequence = _item(ImagePositionPatient=[0.0, 0.0, float(z)])
    shared = Dataset()
    shared.PlaneOrientationSequence = _item(ImageOrientationPatient=[1.0, 0, 0, 0, 1.0, 0])
    shared.PixelMeasuresSequence = _item(PixelSpacing=[0.5, 0.75], SliceThickness=2.5)
    shared.PixelValueTransformationSequence = _item(
        RescaleSlope=1, RescaleIntercept=-1024, RescaleType="HU"
    )
    ds.PerFrameFunctionalGroupsSequence = Sequence([per_frame])
    ds.SharedFunctionalGroupsSequence = Sequence([shared])
    for keyword in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing",
                    "SliceThickness", "RescaleSlope", "RescaleIntercept"):
        delattr(ds, keyword)
    ds.save_as(path)
    return path


def test_one_frame_enhanced_ct_is_rescaled_and_placed_by_its_functional_groups(tmp_path):
    # Before: the series was refused for lacking ImagePositionPatient, and the image came
    # back in stored values, 1024 HU too bright.
    for z, stored in ((0.0, 1000), (2.5, 1100)):
        _enhanced_ct_slice(tmp_path / f"e{int(z * 10):03d}.dcm", z, stored)
    volume = read_dicom_series(tmp_path)
    np.testing.assert_array_equal(volume.array[:, 0, 0], [1000 - 1024, 1100 - 1024])
    assert volume.spacing == pytest.approx((2.5, 0.5, 0.75))
    np.testing.assert_allclose(volume.affine @ [1, 0, 0, 1], [0, 0, 2.5, 1])
    image = read_dicom_image(tmp_path / "e000.dcm")
    np.testing.assert_array_equal(image, np.full((ROWS, COLUMNS), 1000 - 1024, np.float32))


def test_signed_modality_lut_first_value_written_as_us_is_read_as_signed(tmp_path):
    # LUTDescriptor [4 entries, first mapped -2, 16 bits] with -2 written as US 65534 by an
    # explicit-VR writer: pydicom failed on it (65534 is out of int16's range).
    stored = np.array([[-2, -1, 0, 1, 1, 1]] * ROWS, np.int16)
    for k in range(2):
        path = _write_slice(tmp_path / f"s{k}.dcm", position=(0, 0, k), pixels=stored,
                            bits_stored=16, signed=True)
        ds = pydicom.dcmread(path)
        del ds.RescaleSlope, ds.RescaleIntercept
        lut = Dataset()
        lut.add_new(0x00283002, "US", [4, 65534, 16])  # LUTDescriptor
        lut.ModalityLUTType = "HU"
        lut.add_new(0x00283006, "US", [100, 200, 300, 400])  # LUTData
        ds.ModalityLUTSequence = Sequence([lut])
        ds.save_as(path)
    assert pydicom.dcmread(path).ModalityLUTSequence[0]["LUTDescriptor"].VR == "US"
    expected = np.array([[100, 200, 300, 400, 400, 400]] * ROWS)  # values past the LUT: last
    np.testing.assert_array_equal(read_dicom_series(tmp_path).array, [expected] * 2)
    np.testing.assert_array_equal(read_dicom_image(path), expected)


def test_cosines_rounded_to_two_decimals_do_not_stretch_the_pixel_spacing(tmp_path):
    # A 45-degree plane written to two decimals (0.71, 0.71): the cosines are 0.4% long, and
    # so was the in-plane spacing of the volume (0.753 mm for PixelSpacing 0.75).
    rounded = (0.71, 0.71, 0.0, -0.71, 0.71, 0.0)
    for k in range(3):
        _write_slice(tmp_path / f"s{k}.dcm", position=(0, 0, 2.5 * k), orientation=rounded)
    volume = read_dicom_series(tmp_path)
    assert volume.spacing == pytest.approx((2.5, 0.5, 0.75), abs=1e-9)
    np.testing.assert_allclose(volume.affine[:3, 2], [-0.75 / np.sqrt(2), -0.75 / np.sqrt(2), 0])


def test_samples_aligned_above_bit_0_are_refused(tmp_path):
    # BitsStored 12 with HighBit 15 (ACR-NEMA-era files): the value 1000 sits in bits 4-15
    # as 16000; pydicom keeps the low 12 bits, 16000 & 0xFFF = 3712, and that came back.
    paths = []
    for k in range(2):
        path = _write_slice(tmp_path / f"s{k}.dcm", position=(0, 0, k), intercept=0,
                            pixels=np.full((ROWS, COLUMNS), 1000 << 4, np.uint16))
        ds = pydicom.dcmread(path)
        ds.HighBit = 15
        ds.save_as(path)
        paths.append(path)
    with pytest.raises(UnreadableFileError, match="HighBit is 15 with BitsStored 12"):
        read_dicom_series(tmp_path)
    with pytest.raises(UnreadableFileError, match="HighBit is 15"):
        read_dicom_image(paths[0])


def test_enhanced_rescale_contradicting_the_top_level_is_refused(tmp_path):
    path = _enhanced_ct_slice(tmp_path / "e.dcm", 0.0, 1000)
    ds = pydicom.dcmread(path)
    ds.RescaleSlope, ds.RescaleIntercept = 1, 0
    ds.save_as(path)
    with pytest.raises(UnreadableFileError, match="RescaleIntercept is .* at the top level"):
        read_dicom_image(path)


# --- RT Structure Sets ---------------------------------------------------------------------------

# An axial 3 x 10 x 10 grid of 1 mm voxels at the LPS origin: pixel (j, i) of slice k has its
# centre at LPS (i, j, k) mm, so contour coordinates below read directly as column, row.
_AXIAL_GRID = Volume(
    array=np.zeros((3, 10, 10), np.int16),
    affine=np.array([[0, 0, -1.0, 0], [0, -1.0, 0, 0], [1.0, 0, 0, 0], [0, 0, 0, 1]]),
    patient_id="p",
)


def _square(low, high, z):
    """A square outline through LPS (low, low) .. (high, high) mm on the plane z."""
    return [low, low, z, high, low, z, high, high, z, low, high, z]


def _write_structure_set(path, rois):
    """``rois``: ``[(ROINumber, ROIName, [(ContourGeometricType, ContourData), ...])]``."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = RTStructureSetStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = RTStructureSetStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "RTSTRUCT"
    ds.PatientID = "p"
    definitions, contour_items = [], []
    for number, name, contours in rois:
        definition = Dataset()
        definition.ROINumber, definition.ROIName = number, name
        definitions.append(definition)
        item = Dataset()
        item.ReferencedROINumber = number
        drawn = []
        for geometric_type, data in contours:
            contour = Dataset()
            contour.ContourGeometricType = geometric_type
            contour.NumberOfContourPoints = len(data) // 3
            contour.ContourData = [float(v) for v in data]
            drawn.append(contour)
        item.ContourSequence = Sequence(drawn)
        contour_items.append(item)
    ds.StructureSetROISequence = Sequence(definitions)
    ds.ROIContourSequence = Sequence(contour_items)
    ds.save_as(path, enforce_file_format=True)
    return path


def test_closedplanar_xor_contours_are_filled_with_their_holes(tmp_path):
    # PS3.3 C.8.8.6.3: CLOSEDPLANAR_XOR contours of one plane combine by exclusive or, one
    # of the standard's encodings of an organ with a hole. Before, they were dropped as
    # having no area and the ROI came back empty.
    path = _write_structure_set(
        tmp_path / "rs.dcm",
        [(1, "Liver", [("CLOSEDPLANAR_XOR", _square(0.5, 7.5, 1.0)),
                       ("CLOSEDPLANAR_XOR", _square(2.5, 4.5, 1.0))])],
    )
    expected = np.zeros(_AXIAL_GRID.shape, np.uint8)
    expected[1, 1:8, 1:8] = 1  # centres 1..7 inside the outer square
    expected[1, 3:5, 3:5] = 0  # centres 3, 4 inside the hole
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        masks = rasterize_rtstruct(path, _AXIAL_GRID)
    np.testing.assert_array_equal(masks["Liver"], expected)


def test_contours_drawn_on_a_finer_grid_keep_the_plane_of_each_slice(tmp_path):
    # Contours every 0.5 mm on the 1 mm grid: planes 0.5 and 1.5 fall on slices 1 and 2 with
    # the planes 1 and 2; filled together by the even-odd rule the copies cancelled out and
    # two of the three slices came back empty, without a warning.
    path = _write_structure_set(
        tmp_path / "rs.dcm",
        [(1, "Cube", [("CLOSED_PLANAR", _square(0.5, 7.5, z)) for z in (0, 0.5, 1, 1.5, 2)])],
    )
    expected = np.zeros(_AXIAL_GRID.shape, np.uint8)
    expected[:, 1:8, 1:8] = 1
    with pytest.warns(ContourOutsideVolumeWarning, match="2 contour.*slice.*1, 2.*other than"):
        masks = rasterize_rtstruct(path, _AXIAL_GRID)
    np.testing.assert_array_equal(masks["Cube"], expected)


def test_two_drawn_rois_sharing_a_name_are_refused_naming_both(tmp_path):
    path = _write_structure_set(
        tmp_path / "rs.dcm",
        [(3, "GTV", [("CLOSED_PLANAR", _square(0.5, 3.5, 0.0))]),
         (7, "GTV", [("CLOSED_PLANAR", _square(4.5, 8.5, 2.0))])],
    )
    with pytest.raises(MaskError, match=r"'GTV' is shared by ROI numbers 3 \(1 contours\), 7"):
        rasterize_rtstruct(path, _AXIAL_GRID)


def test_an_empty_duplicate_name_does_not_replace_the_drawn_roi(tmp_path):
    path = _write_structure_set(
        tmp_path / "rs.dcm",
        [(1, "Heart", [("CLOSED_PLANAR", _square(0.5, 3.5, 2.0))]), (2, "Heart", [])],
    )
    expected = np.zeros(_AXIAL_GRID.shape, np.uint8)
    expected[2, 1:4, 1:4] = 1
    masks = rasterize_rtstruct(path, _AXIAL_GRID, roi_names=["Heart"])
    np.testing.assert_array_equal(masks["Heart"], expected)
    assert pydicom.dcmread(path).StructureSetROISequence[1].ROIName == "Heart"


# --- DICOM-SEG -----------------------------------------------------------------------------------


def _label_map_seg(hd, folder, labels, orientation=(1.0, 0, 0, 0, 1.0, 0), **options):
    """A LABELMAP SEG (Label Map Segmentation Storage) as highdicom writes it, drawn
    on a 3-slice axial series; returns the series and the SEG file."""
    from pydicom.sr.codedict import codes

    (folder / "ct").mkdir()
    for k in range(labels.shape[0]):
        _write_slice(folder / "ct" / f"s{k}.dcm", position=(0, 0, 2.0 * k),
                     orientation=orientation)
    ct = read_dicom_series(folder / "ct")
    sources = [pydicom.dcmread(path) for path in ct.source_files]
    for source in sources:  # type 2 patient / study attributes highdicom copies
        for keyword in ("PatientName", "PatientBirthDate", "StudyDate", "StudyTime",
                        "ReferringPhysicianName", "StudyID", "AccessionNumber"):
            setattr(source, keyword, "")
    descriptions = [
        hd.seg.SegmentDescription(
            segment_number=number,
            segment_label=name,
            segmented_property_category=codes.SCT.AnatomicalStructure,
            segmented_property_type=codes.SCT.Organ,
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL,
        )
        for number, name in ((1, "Liver"), (2, "Spleen"))
    ]
    seg = hd.seg.Segmentation(
        source_images=sources,
        pixel_array=labels,
        segmentation_type=hd.seg.SegmentationTypeValues.LABELMAP,
        segment_descriptions=descriptions,
        series_instance_uid=generate_uid(),
        series_number=2,
        sop_instance_uid=generate_uid(),
        instance_number=1,
        manufacturer="test",
        manufacturer_model_name="test",
        software_versions="1",
        device_serial_number="1",
        omit_empty_frames=False,
        **options,
    )
    seg.save_as(folder / "labelmap.dcm")
    return ct, folder / "labelmap.dcm"


@pytest.mark.parametrize("photometric", ["MONOCHROME2", "PALETTE COLOR"])
def test_labelmap_seg_reads_as_the_label_map_written(tmp_path, photometric):
    # Before: refused ("SegmentationType 'LABELMAP' is not BINARY or FRACTIONAL"). With a
    # palette the pixels are still segment numbers: indices into the colours, not colours.
    hd = pytest.importorskip("highdicom")
    if not hasattr(hd.seg.SegmentationTypeValues, "LABELMAP"):
        pytest.skip("this highdicom writes no LABELMAP SEG")
    options = {}
    if photometric == "PALETTE COLOR":
        options["palette_color_lut_transformation"] = (
            hd.PaletteColorLUTTransformation.from_colors(["black", "red", "green"])
        )
    labels = np.random.default_rng(3).integers(0, 3, size=(3, ROWS, COLUMNS)).astype(np.uint8)
    ct, path = _label_map_seg(hd, tmp_path, labels, **options)
    written = pydicom.dcmread(path)
    assert written.SegmentSequence[0].SegmentLabel == "Background"
    assert written.PhotometricInterpretation == photometric
    on_series = read_dicom_seg(path, reference_series=ct)
    np.testing.assert_array_equal(on_series.array, labels)
    assert on_series.metadata["segment_labels"] == {1: "Liver", 2: "Spleen"}
    alone = read_dicom_seg_masks(path)  # highdicom stores the last slice's frame first
    assert sorted(alone) == [1, 2]
    np.testing.assert_array_equal(alone[2].array, labels == 2)
    np.testing.assert_allclose(alone[2].affine, ct.affine, atol=1e-6)


def test_labelmap_pixel_naming_no_segment_is_refused(tmp_path):
    hd = pytest.importorskip("highdicom")
    if not hasattr(hd.seg.SegmentationTypeValues, "LABELMAP"):
        pytest.skip("this highdicom writes no LABELMAP SEG")
    _, path = _label_map_seg(hd, tmp_path, np.ones((3, ROWS, COLUMNS), np.uint8))
    ds = pydicom.dcmread(path)
    assert ds.BitsAllocated == 8
    stored = bytearray(ds.PixelData)
    stored[5] = 7
    ds.PixelData = bytes(stored)
    ds.save_as(path)
    with pytest.raises(UnreadableFileError, match=r"pixel value\(s\) \[7\]"):
        read_dicom_seg(path)


# --- NIfTI ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("image_type", "field", "minimum"),
    [(nib.Nifti1Image, (108, "<f"), 352), (nib.Nifti2Image, (168, "<q"), 544)],
    ids=["nifti1", "nifti2"],
)
def test_single_file_vox_offset_inside_the_header_is_refused(tmp_path, image_type, field, minimum):
    # nibabel reads a .nii whose vox_offset is 0 from byte 0: the header becomes voxels.
    path = tmp_path / "ct.nii"
    voxels = np.arange(2 * 3 * 4, dtype=np.int16).reshape(2, 3, 4)
    nib.save(image_type(voxels, np.eye(4)), path)
    stored = bytearray(path.read_bytes())
    where, form = field
    assert struct.unpack_from(form, stored, where) == (minimum,)
    np.testing.assert_array_equal(read_nifti(path).array, voxels.transpose(2, 1, 0))
    struct.pack_into(form, stored, where, 0)
    path.write_bytes(bytes(stored))
    with pytest.raises(UnreadableFileError, match=f"vox_offset is 0.*byte {minimum}"):
        read_nifti(path)


def _nifti_with_dims(path, dims):
    """A nibabel-written 6 x 5 x 4 int16 NIfTI-1 whose dim field (byte 40, eight int16) is
    then overwritten with ``dims``."""
    voxels = np.arange(4 * 5 * 6, dtype=np.int16).reshape(4, 5, 6)
    nib.save(nib.Nifti1Image(voxels, np.eye(4)), path)
    stored = bytearray(path.read_bytes())
    assert struct.unpack_from("<8h", stored, 40) == (3, 4, 5, 6, 1, 1, 1, 1)
    struct.pack_into("<8h", stored, 40, *dims)
    path.write_bytes(bytes(stored))
    return voxels


@pytest.mark.parametrize(
    ("dims", "beyond"),
    [((2, 4, 5, 6, 1, 1, 1, 1), r"\[3\]"), ((3, 4, 5, 6, 7, 1, 1, 1), r"\[4\]")],
    ids=["3d-called-2d", "3d-with-a-4th-length"],
)
def test_dim0_leaving_out_a_longer_dimension_is_refused(tmp_path, dims, beyond):
    # nibabel reads dim[0] dimensions only: the first case came back as 1 slice of 6.
    path = tmp_path / "ct.nii"
    _nifti_with_dims(path, dims)
    with pytest.raises(UnreadableFileError, match=f"dim\\[0\\] says {dims[0]}.*{beyond}"):
        read_nifti(path)


def test_unused_dimensions_written_as_zero_are_ignored(tmp_path):
    path = tmp_path / "ct.nii"
    voxels = _nifti_with_dims(path, (3, 4, 5, 6, 0, 0, 0, 0))
    np.testing.assert_array_equal(read_nifti(path).array, voxels.transpose(2, 1, 0))


def test_seg_on_a_series_with_rounded_cosines_lies_on_its_grid(tmp_path):
    # highdicom copies the series' rounded ImageOrientationPatient (0.71, 0.71, 0, ...) into
    # the SEG; the series reader normalises it, so the SEG's must be normalised alike.
    hd = pytest.importorskip("highdicom")
    if not hasattr(hd.seg.SegmentationTypeValues, "LABELMAP"):
        pytest.skip("this highdicom writes no LABELMAP SEG")
    labels = np.random.default_rng(5).integers(0, 3, size=(3, ROWS, COLUMNS)).astype(np.uint8)
    ct, path = _label_map_seg(hd, tmp_path, labels, orientation=(0.71, 0.71, 0, -0.71, 0.71, 0))
    np.testing.assert_array_equal(read_dicom_seg(path, reference_series=ct).array, labels)
    alone = read_dicom_seg(path)
    np.testing.assert_allclose(alone.affine, ct.affine, atol=1e-6)


def test_lctsc_organ_map_keeps_the_drawn_roi_of_a_shared_name(tmp_path):
    # The LCTSC builder keyed ROIs by name too: an empty duplicate after the drawn heart
    # left the heart out of every label map, silently.
    from tfds_builders.lctsc.layout import organ_label_map

    path = _write_structure_set(
        tmp_path / "rs.dcm",
        [(1, "Heart", [("CLOSED_PLANAR", _square(0.5, 3.5, 2.0))]), (2, "Heart", [])],
    )
    expected = np.zeros(_AXIAL_GRID.shape, np.uint8)
    expected[2, 1:4, 1:4] = 3  # heart is organ 3
    np.testing.assert_array_equal(organ_label_map(path, _AXIAL_GRID), expected)

    path = _write_structure_set(
        tmp_path / "rs2.dcm",
        [(1, "Heart", [("CLOSED_PLANAR", _square(0.5, 3.5, 2.0))]),
         (2, "Heart", [("CLOSED_PLANAR", _square(4.5, 8.5, 0.0))])],
    )  # fmt: skip
    with pytest.raises(MaskError, match=r"rs2\.dcm.*'Heart' is shared by ROI numbers 1"):
        organ_label_map(path, _AXIAL_GRID)
