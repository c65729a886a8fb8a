"""Gantry-tilted (sheared) CT series: detection, physical measures, deskew and exports.

A tilted series is written with pydicom: slice k sits k * STEP_MM along the slice normal
plus k * tan(tilt) * STEP_MM along the column direction, as a CT gantry tilted about the
patient's left-right axis places it. References are numpy on physical coordinates.
"""

import hashlib
import math
import warnings

import nibabel as nib
import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.dataelem import RawDataElement
from pydicom.sequence import Sequence
from pydicom.tag import Tag
from scipy import ndimage
from test_io_dicom import ROWS, _write_slice
from test_io_enhanced_dicom import _item, _write_enhanced

from kseg import metrics
from kseg.evaluation import evaluate_volumes
from kseg.geometry import deskew, resample, to_original_grid
from kseg.io import (
    Volume,
    rasterize_rtstruct,
    read_dicom_series,
    read_nifti,
    read_rtstruct,
    write_dicom_seg,
    write_nifti,
    write_rtstruct,
)
from kseg.io.dicom import GantryTiltWarning, HeaderValueWarning
from kseg.io.rtstruct import RoiNameWarning
from kseg.plan import _example_spacing
from tfds_builders._foreground import ForegroundTally
from tfds_builders.chaos import chaos_dataset_builder as chaos
from tfds_builders.lctsc import lctsc_dataset_builder as lctsc
from tfds_builders.lctsc.layout import Case

TILT_DEGREES = 20.0
STEP_MM = 2.5  # distance between slice planes
ROW_MM, COLUMN_MM = 0.5, 0.75  # _write_slice's PixelSpacing
SHIFT_MM = STEP_MM * math.tan(math.radians(TILT_DEGREES))
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])
TILT_TAG = Tag("GantryDetectorTilt")


def _tilted_positions(count, shift_mm=SHIFT_MM, origin=(-10.0, 20.0, 30.0)):
    """ImagePositionPatient (LPS) of axial slices stepping off the normal along +y."""
    return [np.asarray(origin) + k * np.array([0.0, shift_mm, STEP_MM]) for k in range(count)]


def _write_series(folder, positions, tilt=None):
    paths = []
    for k, position in enumerate(positions):
        path = _write_slice(folder / f"s{k:02d}.dcm", position=position,
                            pixels=np.full((ROWS, 6), 1024 + k, np.uint16))  # fmt: skip
        if tilt is not None:
            ds = pydicom.dcmread(path)
            text = str(tilt).encode("ascii")
            text += b" " * (len(text) % 2)
            # raw, so that a malformed value reaches the file as written
            ds[TILT_TAG] = RawDataElement(TILT_TAG, "DS", len(text), text, 0, False, True)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # pydicom's warning about invalid values
                ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def _digest(paths):
    return [(hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns) for p in paths]


def _tilt_warnings(record):
    return [w for w in record if issubclass(w.category, GantryTiltWarning)]


def _sheared_affine(tilt_degrees=TILT_DEGREES):
    """RAS affine of the tilted axial grid: index (k, j, i) -> mm."""
    affine = np.eye(4)
    affine[:3, 0] = LPS_TO_RAS @ [0.0, STEP_MM * math.tan(math.radians(tilt_degrees)), STEP_MM]
    affine[:3, 1] = LPS_TO_RAS @ [0.0, ROW_MM, 0.0]
    affine[:3, 2] = LPS_TO_RAS @ [COLUMN_MM, 0.0, 0.0]
    affine[:3, 3] = [3.0, -4.0, 5.0]
    return affine


def _centres(affine, shape):
    """RAS mm of every voxel centre, shape (*shape, 3)."""
    index = np.stack(np.meshgrid(*map(np.arange, shape), indexing="ij"), axis=-1)
    return index @ affine[:3, :3].T + affine[:3, 3]


def _ball(affine, shape, centre, radius):
    return np.linalg.norm(_centres(affine, shape) - centre, axis=-1) <= radius


# --- detection --------------------------------------------------------------------------------


def test_tilted_series_warns_once_and_keeps_every_slice_where_the_scanner_put_it(tmp_path):
    positions = _tilted_positions(6)
    paths = _write_series(tmp_path, positions, tilt=TILT_DEGREES)
    before = _digest(paths)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        volume = read_dicom_series(tmp_path)
    (warning,) = _tilt_warnings(record)
    message = str(warning.message)
    assert str(tmp_path) in message and "series 1.2.3.4 " in message and "20.00°" in message
    assert "GantryDetectorTilt 20°" in message
    for k, position in enumerate(positions):
        centre = volume.affine @ [k, 0, 0, 1]
        np.testing.assert_allclose(LPS_TO_RAS @ centre[:3], position, atol=1e-9)
    np.testing.assert_allclose(volume.spacing[0], STEP_MM / math.cos(math.radians(20)))
    np.testing.assert_allclose(volume.plane_spacing, (STEP_MM, ROW_MM, COLUMN_MM))
    np.testing.assert_allclose(volume.voxel_volume, STEP_MM * ROW_MM * COLUMN_MM)
    assert _digest(paths) == before


def test_tilt_without_the_header_tag_is_measured_from_the_positions(tmp_path):
    _write_series(tmp_path, _tilted_positions(4, shift_mm=STEP_MM * math.tan(math.radians(7))))
    with pytest.warns(GantryTiltWarning, match=r"7\.00° .*no GantryDetectorTilt"):
        read_dicom_series(tmp_path)


def test_a_malformed_tilt_tag_is_left_out_with_a_header_warning(tmp_path):
    _write_series(tmp_path, _tilted_positions(3), tilt="twenty")
    with pytest.warns(GantryTiltWarning, match="no GantryDetectorTilt"), pytest.warns(
        HeaderValueWarning, match="GantryDetectorTilt 'twenty'"
    ):
        read_dicom_series(tmp_path)


def test_straight_series_and_rounded_positions_do_not_warn(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    _write_series(tmp_path / "a", _tilted_positions(5, shift_mm=0.0), tilt=0)
    # Positions written to two decimals: one rounds 0.01 mm off, the mean step leans 0.5°.
    _write_series(tmp_path / "b", [(0.0, 0.0, 0.0), (0.0, 0.0, 0.62), (0.0, 0.01, 1.24)])
    with warnings.catch_warnings():
        warnings.simplefilter("error", GantryTiltWarning)
        straight = read_dicom_series(tmp_path / "a")
        read_dicom_series(tmp_path / "b")
    assert straight.plane_spacing == pytest.approx(straight.spacing)
    assert straight.voxel_volume == pytest.approx(math.prod(straight.spacing))


def test_enhanced_frames_are_checked_for_tilt_like_slices(tmp_path):
    positions = _tilted_positions(4)
    stored = np.full((4, ROWS, 6), 1000, np.uint16)
    path = _write_enhanced(tmp_path / "enhanced.dcm", stored, positions)
    ds = pydicom.dcmread(path)
    ds.SharedFunctionalGroupsSequence[0].CTAcquisitionDetailsSequence = Sequence(
        [_item(GantryDetectorTilt=TILT_DEGREES)]
    )
    ds.save_as(path, enforce_file_format=True)
    with pytest.warns(GantryTiltWarning, match="20.00° .*GantryDetectorTilt 20°"):
        volume = read_dicom_series(tmp_path)
    np.testing.assert_allclose(volume.plane_spacing[0], STEP_MM)


def test_real_series_rewritten_with_a_tilt_reads_the_same_pixels_sheared(shared_data, tmp_path):
    source = shared_data / "totalseg-ct" / "ct_dicom"
    if not source.is_dir():
        pytest.skip("totalseg-ct/ct_dicom not in the shared data")
    with warnings.catch_warnings():
        warnings.simplefilter("error", GantryTiltWarning)
        straight = read_dicom_series(source)
    assert straight.plane_spacing == pytest.approx(straight.spacing)
    for k, name in enumerate(straight.source_files):
        ds = pydicom.dcmread(name)
        x, y, z = (float(v) for v in ds.ImagePositionPatient)
        ds.ImagePositionPatient = [x, y + k * 1.5, z]
        ds.GantryDetectorTilt = 12
        ds.save_as(tmp_path / f"{k:03d}", enforce_file_format=True)
    with pytest.warns(GantryTiltWarning, match="GantryDetectorTilt 12°"):
        tilted = read_dicom_series(tmp_path)
    np.testing.assert_array_equal(tilted.array, straight.array)
    np.testing.assert_allclose(tilted.affine[:, 1:], straight.affine[:, 1:])
    np.testing.assert_allclose(tilted.affine[:3, 0], straight.affine[:3, 0] + [0, -1.5, 0])
    np.testing.assert_allclose(tilted.plane_spacing, straight.spacing)


# --- physical measures ------------------------------------------------------------------------


def test_volume_in_ml_of_a_ball_on_a_sheared_grid_is_the_analytic_volume():
    affine, shape, radius = _sheared_affine(30.0), (28, 90, 60), 15.0
    centre = _centres(affine, shape)[14, 45, 30]
    ball = _ball(affine, shape, centre, radius)
    analytic_ml = 4 / 3 * math.pi * radius**3 / 1000
    assert metrics.volume_ml(ball, affine) == pytest.approx(analytic_ml, rel=0.01)
    # the column lengths' product: 1 / cos(30°), 15 % too large
    spacing = Volume(ball, affine, "p").spacing
    assert metrics.volume_ml(ball, spacing) == pytest.approx(analytic_ml / math.cos(math.pi / 6),
                                                             rel=0.01)  # fmt: skip


def _brute_force_distances(a, b, affine):
    """Surface voxel centres in mm (the documented surface: mask minus its face-connected
    erosion) and every pairwise distance, directed both ways."""
    structure = ndimage.generate_binary_structure(3, 1)

    def surface_points(mask):
        surface = mask & ~ndimage.binary_erosion(mask, structure, border_value=0)
        return np.argwhere(surface) @ affine[:3, :3].T

    pa, pb = surface_points(a), surface_points(b)
    pairwise = np.linalg.norm(pa[:, None, :] - pb[None, :, :], axis=-1)
    return pairwise.min(axis=0), pairwise.min(axis=1)  # b -> a, a -> b


def test_surface_distances_on_a_sheared_grid_match_brute_force_in_mm():
    affine, shape = _sheared_affine(25.0), (12, 40, 30)
    centres = _centres(affine, shape)
    a = _ball(affine, shape, centres[6, 20, 15], 7.0)
    b = _ball(affine, shape, centres[6, 20, 15] + [0.0, 0.0, 5.0], 6.0)
    pred_to_true, true_to_pred = _brute_force_distances(a, b, affine)
    hd = max(pred_to_true.max(), true_to_pred.max())
    hd95 = max(np.percentile(pred_to_true, 95), np.percentile(true_to_pred, 95))
    assd = np.concatenate([pred_to_true, true_to_pred]).mean()
    assert metrics.hausdorff_distance(a, b, affine) == pytest.approx(hd, rel=1e-9)
    assert metrics.hd95(a, b, affine) == pytest.approx(hd95, rel=1e-9)
    assert metrics.average_surface_distance(a, b, affine) == pytest.approx(assd, rel=1e-9)
    # the column lengths taken as an orthogonal spacing: 27 % too far apart
    assert metrics.hausdorff_distance(a, b, Volume(a, affine, "p").spacing) > 1.2 * hd
    table = evaluate_volumes([("p", a, b, affine)], metrics=("hd95", "assd"), progress=False)
    assert table.rows[0]["hd95"] == pytest.approx(hd95, rel=1e-9)


def test_exact_search_and_distance_transform_agree_on_an_orthogonal_oblique_grid():
    angle = 0.5
    rotation = np.array([[1, 0, 0], [0, math.cos(angle), -math.sin(angle)],
                         [0, math.sin(angle), math.cos(angle)]])  # fmt: skip
    affine = np.eye(4)
    affine[:3, :3] = rotation @ np.diag([2.0, 0.7, 0.9])
    shape = (10, 30, 30)
    centres = _centres(affine, shape)
    a = _ball(affine, shape, centres[5, 15, 15], 6.0)
    b = _ball(affine, shape, centres[5, 15, 15] + [1.5, 2.0, -1.0], 5.0)
    sizes = (2.0, 0.7, 0.9)
    exact = metrics._surface_distances(a, b, (sizes, affine[:3, :3]))
    transform = metrics._surface_distances(a, b, (sizes, None))
    for left, right in zip(exact, transform, strict=True):
        np.testing.assert_allclose(left, right, rtol=1e-9)
    reference = _brute_force_distances(a, b, affine)
    np.testing.assert_allclose(exact[0], reference[0], rtol=1e-9)
    assert metrics.hd95(a, b, affine) == metrics.hd95(a, b, sizes)


def test_a_singular_grid_affine_is_refused():
    mask = np.ones((2, 2, 2), bool)
    with pytest.raises(ValueError, match="non-singular"):
        metrics.hd95(mask, mask, np.zeros((4, 4)))


def test_plan_fingerprint_takes_the_distance_between_slice_planes():
    affine = _sheared_affine()
    stored = np.asarray(Volume(np.zeros((1, 1, 1)), affine, "p").spacing, np.float32)
    assert _example_spacing({"affine": affine, "spacing": stored}) == pytest.approx(
        (STEP_MM, ROW_MM, COLUMN_MM)
    )
    assert _example_spacing({"spacing": np.float32([3, 1, 1])}) == (3.0, 1.0, 1.0)


# --- deskew and the way back ------------------------------------------------------------------


def test_deskew_gives_the_analytic_phantom_on_the_orthogonal_grid():
    affine, shape = _sheared_affine(), (8, 30, 20)
    centres = _centres(affine, shape)
    gradient, offset = np.array([3.0, -2.0, 0.5]), 7.0
    image = Volume((centres @ gradient + offset).astype(np.float32), affine, "p")
    centre = centres[4, 15, 10]
    labels = Volume(_ball(affine, shape, centre, 5.0).astype(np.uint8), affine, "p")

    straight = deskew(image, fill=-1000)
    columns = straight.affine[:3, :3]
    np.testing.assert_allclose(columns.T @ columns, np.diag(np.diag(columns.T @ columns)),
                               atol=1e-12)  # fmt: skip
    np.testing.assert_allclose(straight.spacing, image.plane_spacing)
    np.testing.assert_allclose(columns[:, 1:], affine[:3, 1:3])
    normal = columns[:, 0] / np.linalg.norm(columns[:, 0])
    for k in range(shape[0]):  # every slice plane where it was
        assert (straight.affine @ [k, 0, 0, 1])[:3] @ normal == pytest.approx(
            (affine @ [k, 0, 0, 1])[:3] @ normal
        )
    # a linear function is interpolated exactly within the planes
    on_grid = _centres(straight.affine, straight.shape) @ gradient + offset
    inside = straight.array != -1000
    # each slice keeps its rows, shifted (one more where the field of view's edge is a centre)
    assert np.all(np.isin(inside.sum(axis=1), (shape[1], shape[1] + 1)))
    source_index = np.linalg.solve(affine, straight.affine)[:3] @ np.vstack(
        [np.indices(straight.shape).reshape(3, -1), np.ones(straight.array.size)]
    )
    between_centres = np.all(
        (source_index > -1e-9) & (source_index < np.array(shape)[:, None] - 1 + 1e-9), axis=0
    ).reshape(straight.shape)
    assert between_centres.sum() > 0.9 * (shape[0] * (shape[1] - 1) * shape[2])
    np.testing.assert_allclose(straight.array[between_centres], on_grid[between_centres],
                               atol=1e-3)  # fmt: skip

    straight_labels = deskew(labels, is_label=True)
    analytic = _ball(straight.affine, straight.shape, centre, 5.0)
    wrong = straight_labels.array.astype(bool) != analytic
    distance_to_sphere = np.abs(
        np.linalg.norm(_centres(straight.affine, straight.shape) - centre, axis=-1) - 5.0
    )
    assert analytic.sum() > 100
    assert np.all(distance_to_sphere[wrong] < ROW_MM)  # nearest neighbour: half a voxel
    np.testing.assert_array_equal(to_original_grid(straight_labels, labels), labels.array)


def test_deskew_leaves_an_orthogonal_volume_on_its_grid():
    affine = np.diag([2.0, 0.5, 0.75, 1.0])
    array = np.arange(60, dtype=np.int16).reshape(3, 4, 5)
    result = deskew(Volume(array, affine, "p"), is_label=True)
    np.testing.assert_array_equal(result.array, array)
    np.testing.assert_allclose(result.affine, affine)


def test_resample_takes_the_spacing_between_slice_planes():
    volume = Volume(np.zeros((8, 10, 10), np.float32), _sheared_affine(), "p")
    coarse = resample(volume, (5.0, ROW_MM, COLUMN_MM))
    assert coarse.shape == (4, 10, 10)
    np.testing.assert_allclose(coarse.plane_spacing, (5.0, ROW_MM, COLUMN_MM))


def test_nifti_keeps_the_shear_in_the_sform_and_writes_no_qform(tmp_path):
    affine = _sheared_affine()
    volume = Volume(np.arange(60, dtype=np.int16).reshape(3, 4, 5), affine, "p")
    write_nifti(volume, tmp_path / "tilted.nii.gz")
    header = nib.load(tmp_path / "tilted.nii.gz").header
    assert int(header["sform_code"]) == 1 and int(header["qform_code"]) == 0
    np.testing.assert_allclose(header.get_sform()[:, [2, 1, 0, 3]], affine, atol=1e-5)
    back = read_nifti(tmp_path / "tilted.nii.gz")
    np.testing.assert_allclose(back.affine, affine, atol=1e-5)
    np.testing.assert_array_equal(back.array, volume.array)


def test_rtstruct_of_a_tilted_series_outlines_each_slice_at_its_own_position(tmp_path):
    (tmp_path / "ct").mkdir()
    paths = _write_series(tmp_path / "ct", _tilted_positions(6), tilt=TILT_DEGREES)
    with pytest.warns(GantryTiltWarning):
        series = read_dicom_series(tmp_path / "ct")
    labels = np.zeros(series.shape, np.uint8)
    labels[1:5, 1:3, 2:5] = 1
    write_rtstruct(labels, series, tmp_path / "rt.dcm", roi_names={1: "GTV"})
    positions = {}
    for path in paths:
        ds = pydicom.dcmread(path)
        positions[ds.SOPInstanceUID] = np.array([float(v) for v in ds.ImagePositionPatient])
    (roi,) = read_rtstruct(tmp_path / "rt.dcm")
    assert len(roi.contours) == 4
    for contour in roi.contours:
        position = positions[contour.referenced_sop_instance_uid]
        # pixel edges of columns 2..4 and rows 1..2, from this slice's own position
        low = position + [(2 - 0.5) * COLUMN_MM, (1 - 0.5) * ROW_MM, 0.0]
        high = position + [(4 + 0.5) * COLUMN_MM, (2 + 0.5) * ROW_MM, 0.0]
        np.testing.assert_allclose(contour.points.min(axis=0), low, atol=1e-3)
        np.testing.assert_allclose(contour.points.max(axis=0), high, atol=1e-3)
    (back,) = rasterize_rtstruct(tmp_path / "rt.dcm", series).values()
    np.testing.assert_array_equal(back.astype(bool), labels.astype(bool))


def test_chaos_slices_of_a_tilted_series_carry_the_distance_between_planes(tmp_path):
    patient_dir = tmp_path / "7"
    (patient_dir / "DICOM_anon").mkdir(parents=True)
    paths = _write_series(patient_dir / "DICOM_anon", _tilted_positions(4))
    (patient_dir / "Ground").mkdir()
    for path in paths:
        mask = np.zeros((ROWS, 6), np.uint8)
        mask[1:3, 2:4] = 255
        Image.fromarray(mask).save(patient_dir / "Ground" / f"{path.stem}.png")
    config = next(c for c in chaos.Builder.BUILDER_CONFIGS if c.name == "ct")
    tally = ForegroundTally({1: "liver"}, required=(1,), metadata={})

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", GantryTiltWarning)
        examples = list(chaos.patient_examples(config, patient_dir, "train", tally))

    assert len(examples) == 4
    for _, example in examples:  # planes STEP_MM apart, not STEP_MM / cos(tilt)
        np.testing.assert_allclose(example["spacing"], [STEP_MM, ROW_MM, COLUMN_MM], rtol=1e-5)


def test_lctsc_case_of_a_tilted_series_carries_the_distance_between_planes(tmp_path):
    (tmp_path / "ct").mkdir()
    paths = _write_series(tmp_path / "ct", _tilted_positions(4), tilt=TILT_DEGREES)
    with pytest.warns(GantryTiltWarning):
        series = read_dicom_series(tmp_path / "ct")
    labels = np.zeros(series.shape, np.uint8)
    labels[:, 1:3, 1:3], labels[:, 1:3, 4:6] = 1, 2
    write_rtstruct(labels, series, tmp_path / "rt.dcm", roi_names={1: "Lung_L", 2: "Lung_R"})
    config = next(c for c in lctsc.Builder.BUILDER_CONFIGS if c.name == "lungs")
    case = Case("LCTSC-Test-S1-101", "F", tuple(map(str, paths)),
                series.metadata["series_instance_uid"], str(tmp_path / "rt.dcm"))  # fmt: skip

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", GantryTiltWarning)
        warnings.simplefilter("ignore", RoiNameWarning)  # the other three organs: none drawn
        arrays = lctsc.read_case(config, case, check=lambda labels: None)

    assert arrays.labels.any()  # planes STEP_MM apart, not STEP_MM / cos(tilt)
    np.testing.assert_allclose(arrays.spacing, [STEP_MM, ROW_MM, COLUMN_MM], rtol=1e-5)


def test_seg_of_a_tilted_series_without_slice_thickness_gives_the_plane_distance(tmp_path):
    (tmp_path / "ct").mkdir()
    for path in _write_series(tmp_path / "ct", _tilted_positions(4), tilt=TILT_DEGREES):
        ds = pydicom.dcmread(path)
        del ds.SliceThickness  # optional (type 2) in CT; the SEG's pixel measures need one
        ds.save_as(path)
    with pytest.warns(GantryTiltWarning):
        series = read_dicom_series(tmp_path / "ct")
    labels = np.zeros(series.shape, np.uint8)
    labels[:, 1:3, 1:4] = 1

    write_dicom_seg(labels, series, tmp_path / "seg.dcm", {1: "tumour"})

    shared = pydicom.dcmread(tmp_path / "seg.dcm").SharedFunctionalGroupsSequence[0]
    assert float(shared.PixelMeasuresSequence[0].SliceThickness) == pytest.approx(STEP_MM)
