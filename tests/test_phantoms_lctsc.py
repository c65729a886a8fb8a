"""The synthetic chest phantom and its LCTSC-layout writers, read back with pydicom, numpy
and matplotlib only (no kseg reader)."""

import pathlib
import re

import numpy as np
import pydicom
import pytest
from matplotlib.path import Path as PolygonPath
from pydicom.uid import CTImageStorage, RTStructureSetStorage

from kseg.errors import LayoutError
from kseg.phantoms.lctsc import (
    NPZ_STORED_FLIPS,
    ROI_LABELS,
    SITE_ROI_NAMES,
    ChestLabel,
    chest_phantom,
    lctsc_patient_id,
    lctsc_phantom_case,
    main,
    write_lctsc,
    write_lctsc_npz,
)

SHAPE, SPACING = (12, 96, 96), (3.0, 5.0, 5.0)


@pytest.fixture(scope="module")
def phantom():
    return chest_phantom(SHAPE, SPACING, seed=4)


def test_same_seed_same_phantom_other_seed_other_anatomy(phantom):
    again = chest_phantom(SHAPE, SPACING, seed=4)
    np.testing.assert_array_equal(phantom.hu, again.hu)
    np.testing.assert_array_equal(phantom.labels, again.labels)
    assert not np.array_equal(phantom.labels, chest_phantom(SHAPE, SPACING, seed=5).labels)
    assert phantom.hu.dtype == np.int16 and phantom.labels.dtype == np.uint8


@pytest.mark.parametrize(
    "label, low, high",
    [
        (ChestLabel.BACKGROUND, -1005, -995),
        (ChestLabel.FAT, -110, -90),
        (ChestLabel.SOFT_TISSUE, 30, 50),
        (ChestLabel.BONE, 550, 650),
        (ChestLabel.HEART, 35, 55),
        # Lungs: air at -850 with +40 HU vessels inside.
        (ChestLabel.LUNG_LEFT, -850, -650),
        (ChestLabel.LUNG_RIGHT, -850, -650),
    ],
)
def test_mean_ct_number_of_each_tissue_is_textbook(phantom, label, low, high):
    region = phantom.labels == label
    assert region.sum() > 20
    assert low <= phantom.hu[region].mean() <= high


def test_anatomy_is_where_radiologists_expect_it(phantom):
    labels = phantom.labels
    nx = labels.shape[2]

    def centroid(label):
        return np.array([np.nonzero(labels == label)[axis].mean() for axis in range(3)])

    left, right = centroid(ChestLabel.LUNG_LEFT), centroid(ChestLabel.LUNG_RIGHT)
    heart, cord = centroid(ChestLabel.HEART), centroid(ChestLabel.SPINAL_CORD)
    esophagus = centroid(ChestLabel.ESOPHAGUS)
    # Columns run towards the patient's left, rows towards posterior (DICOM axial view).
    assert right[2] < nx / 2 < left[2]
    assert heart[1] < esophagus[1] < cord[1]  # anterior to posterior
    assert heart[2] > nx / 2 - 2  # heart towards the left
    assert heart[0] < left[0]  # the heart sits low, on the diaphragm
    # The right lung is the larger; the first and last slices hold no lung.
    assert (labels == ChestLabel.LUNG_RIGHT).sum() > (labels == ChestLabel.LUNG_LEFT).sum()
    lungs = np.isin(labels, (ChestLabel.LUNG_LEFT, ChestLabel.LUNG_RIGHT))
    assert not lungs[0].any() and not lungs[-1].any()
    # Lungs are enclosed by the body: no lung pixel touches the air outside.
    outside = labels == ChestLabel.BACKGROUND
    shifted = outside[:, 1:, :] | outside[:, :-1, :]
    assert not (lungs[:, 1:, :] & shifted).any()


def test_label_map_agrees_with_the_organ_outlines(phantom):
    """Pixels whose centre lies inside an outline (matplotlib's point-in-polygon test), less
    the organs painted later, are that organ's label, up to the polygon's chords."""
    nz, ny, nx = phantom.labels.shape
    x = phantom.origin[0] + np.arange(nx) * phantom.spacing[2]
    y = phantom.origin[1] + np.arange(ny) * phantom.spacing[1]
    centres = np.column_stack([np.tile(x, ny), np.repeat(y, nx)])
    inside = {name: np.zeros(phantom.labels.shape, bool) for name in ROI_LABELS}
    for name, outlines in phantom.outlines.items():
        for k, points in outlines:
            np.testing.assert_allclose(points[:, 2], phantom.origin[2] + k * phantom.spacing[0])
            inside[name][k] = PolygonPath(points[:, :2]).contains_points(centres).reshape(ny, nx)
    names = list(ROI_LABELS)
    for index, name in enumerate(names):
        expected = inside[name].copy()
        for later in names[index + 1:]:
            expected &= ~inside[later]
        actual = phantom.labels == ROI_LABELS[name]
        assert expected.sum() > 0
        disagreement = np.logical_xor(expected, actual).sum() / expected.sum()
        assert disagreement < 0.01, (name, disagreement)


def test_patient_ids_follow_the_collection():
    assert [lctsc_patient_id(i) for i in (0, 1, 2, 3, 35)] == [
        "LCTSC-Train-S1-001", "LCTSC-Train-S2-001", "LCTSC-Train-S3-001", "LCTSC-Train-S1-002",
        "LCTSC-Train-S3-012"]
    assert [lctsc_patient_id(i, test=True) for i in (0, 11, 12, 23)] == [
        "LCTSC-Test-S1-101", "LCTSC-Test-S3-104", "LCTSC-Test-S1-201", "LCTSC-Test-S3-204"]


@pytest.fixture(scope="module")
def tcia_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("lctsc")
    return write_lctsc(root, num_patients=3, num_test_patients=2, num_slices=5, size=32, seed=9)


def _series_folders(root, patient):
    (study,) = (root / "LCTSC" / patient).iterdir()
    return sorted(study.iterdir())


def test_tcia_layout_and_headers(tcia_root):
    patients = sorted(p.name for p in (tcia_root / "LCTSC").iterdir())
    assert patients == ["LCTSC-Test-S1-101", "LCTSC-Test-S2-101", "LCTSC-Train-S1-001",
                        "LCTSC-Train-S2-001", "LCTSC-Train-S3-001"]
    for index, patient in enumerate(["LCTSC-Train-S1-001", "LCTSC-Train-S2-001",
                                     "LCTSC-Train-S3-001"]):
        case = lctsc_phantom_case(index, num_slices=5, size=32, seed=9)
        (study,) = (tcia_root / "LCTSC" / patient).iterdir()
        assert re.fullmatch(r"\d\d-\d\d-\d{4}-NA-.+-\d{5}", study.name)
        ct_folder, rt_folder = _series_folders(tcia_root, patient)
        assert re.fullmatch(r"0\.000000-.+-\d{5}", ct_folder.name)
        assert re.fullmatch(r"1\.000000-.+-\d{5}", rt_folder.name)
        names = sorted(p.name for p in ct_folder.iterdir())
        assert names == [f"1-{n:03d}.dcm" for n in range(1, 6)]
        slices = [pydicom.dcmread(ct_folder / name) for name in names]
        positions = [float(ds.ImagePositionPatient[2]) for ds in slices]
        instances = [int(ds.InstanceNumber) for ds in slices]
        # Neither file names nor InstanceNumbers run in slice order.
        assert positions != sorted(positions) and positions != sorted(positions, reverse=True)
        order = np.argsort(positions)
        assert [instances[i] for i in order] != sorted(instances)
        for k, i in enumerate(order):
            ds = slices[i]
            assert ds.SOPClassUID == CTImageStorage and ds.Modality == "CT"
            assert ds.PatientID == patient and ds.PatientSex == case.sex
            assert ds.PatientName == "KSEG^PHANTOM" and "synthetic" in ds.ImageComments
            np.testing.assert_array_equal(
                ds.pixel_array.astype(np.int32) + int(ds.RescaleIntercept), case.phantom.hu[k])

        (rt_file,) = rt_folder.iterdir()
        assert rt_file.name == "1-1.dcm"
        rs = pydicom.dcmread(rt_file)
        assert rs.SOPClassUID == RTStructureSetStorage and rs.Modality == "RTSTRUCT"
        assert "synthetic" in rs.StructureSetDescription and rs.PatientSex == case.sex
        frame = rs.ReferencedFrameOfReferenceSequence[0]
        assert frame.FrameOfReferenceUID == slices[0].FrameOfReferenceUID
        series = frame.RTReferencedStudySequence[0].RTReferencedSeriesSequence[0]
        assert series.SeriesInstanceUID == slices[0].SeriesInstanceUID
        ct_uids = {ds.SOPInstanceUID for ds in slices}
        assert {item.ReferencedSOPInstanceUID for item in series.ContourImageSequence} == ct_uids
        roi_names = [item.ROIName for item in rs.StructureSetROISequence]
        site = SITE_ROI_NAMES[index % 3 + 1]
        for organ in ROI_LABELS:
            assert case.roi_names[organ] in site[organ]
            assert case.roi_names[organ] in roi_names
        assert ("External" in roi_names) == case.extra_roi
        assert len(rs.RTROIObservationsSequence) == len(roi_names)
        uid_z = {ds.SOPInstanceUID: float(ds.ImagePositionPatient[2]) for ds in slices}
        for item in rs.ROIContourSequence:
            for contour in item.ContourSequence:
                points = np.asarray(contour.ContourData, float).reshape(-1, 3)
                assert contour.ContourGeometricType == "CLOSED_PLANAR"
                assert int(contour.NumberOfContourPoints) == len(points)
                referenced = contour.ContourImageSequence[0].ReferencedSOPInstanceUID
                np.testing.assert_allclose(points[:, 2], uid_z[referenced], atol=1e-3)


def test_spellings_vary_between_patients_and_institutions():
    spellings = {
        lctsc_phantom_case(i, num_slices=1, size=8).roi_names["lung_left"] for i in range(12)
    }
    assert len(spellings) >= 4


def test_writers_never_overwrite(tcia_root):
    with pytest.raises(LayoutError, match="LCTSC-Train-S1-001: exists already"):
        write_lctsc(tcia_root, num_patients=1, num_test_patients=0, num_slices=2, size=16)


def test_npz_layout_stores_the_documented_flips(tmp_path):
    root = write_lctsc_npz(tmp_path, num_patients=5, num_slices=4, size=24, seed=2,
                           multiclass=True)
    for index in range(5):
        case = lctsc_phantom_case(index, num_slices=4, size=24, seed=2)
        folder = root / case.patient_id
        with np.load(folder / "mask.npz") as archive:
            stored = archive["mask"]
        axes = tuple("zyx".index(a) for a in NPZ_STORED_FLIPS[index])
        np.testing.assert_array_equal(stored, np.flip(case.lctsc_labels(), axis=axes))
        assert len(list((folder / "dicom").iterdir())) == 4


def test_npz_lung_masks_alternate_uint8_and_bool_unless_told(tmp_path):
    root = write_lctsc_npz(tmp_path / "varied", num_patients=4, num_slices=3, size=16, seed=2)
    for index, dtype in enumerate(("uint8", "bool", "uint8", "bool")):
        case = lctsc_phantom_case(index, num_slices=3, size=16, seed=2)
        with np.load(root / case.patient_id / "mask.npz") as archive:
            stored = archive["mask"]
        assert stored.dtype == np.dtype(dtype)
        axes = tuple("zyx".index(a) for a in NPZ_STORED_FLIPS[index])
        lungs = np.isin(case.lctsc_labels(), (1, 2))
        np.testing.assert_array_equal(stored, np.flip(lungs, axis=axes))
    root = write_lctsc_npz(tmp_path / "bool", num_patients=2, num_slices=3, size=16,
                           mask_dtype="bool")
    assert {np.load(path)["mask"].dtype for path in root.glob("*/mask.npz")} == {np.dtype(bool)}


def test_bool_cannot_hold_the_organs(tmp_path):
    with pytest.raises(ValueError, match="bool mask cannot hold the five organs"):
        write_lctsc_npz(tmp_path, num_patients=1, num_slices=2, size=16, multiclass=True,
                        mask_dtype="bool")
    with pytest.raises(ValueError, match="mask_dtype must be one of"):
        write_lctsc_npz(tmp_path, num_patients=1, num_slices=2, size=16, mask_dtype="int64")
    assert not list(tmp_path.iterdir())


def test_command_line_writes_the_requested_layout(tmp_path):
    main([str(tmp_path / "tcia"), "--num-patients", "1", "--num-test-patients", "1",
          "--num-slices", "2", "--size", "16"])
    main([str(tmp_path / "npz"), "--layout", "npz", "--num-patients", "1",
          "--num-test-patients", "0", "--num-slices", "2", "--size", "16", "--mask-dtype",
          "bool"])
    assert len(list(pathlib.Path(tmp_path / "tcia" / "LCTSC").iterdir())) == 2
    with np.load(tmp_path / "npz" / "LCTSC-Train-S1-001" / "mask.npz") as archive:
        assert archive["mask"].dtype == bool


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(num_patients=0, num_test_patients=0), "at least one patient"),
        (dict(num_patients=-1), "non-negative"),
        (dict(size=4), "size must be an integer of at least 8"),
        (dict(seed=-2), "seed"),
    ],
)
def test_bad_arguments_are_refused(tmp_path, kwargs, message):
    arguments = dict(num_patients=1, num_test_patients=0, num_slices=2, size=16) | kwargs
    with pytest.raises(ValueError, match=message):
        write_lctsc(tmp_path, **arguments)
