"""Tests for kseg.geometry against analytic values, hand-worked grids and nibabel."""

import nibabel as nib
import numpy as np
import pytest

from kseg import geometry
from kseg.errors import GeometryError, MaskError
from kseg.io import Volume


def _affine(columns, origin):
    """4x4 affine whose index columns (k, j, i) are the given world vectors."""
    affine = np.eye(4)
    affine[:3, :3] = np.asarray(columns, dtype=np.float64).T
    affine[:3, 3] = origin
    return affine


def _world(affine, shape):
    """RAS+ mm of every voxel centre, shape (3,) + shape, by direct matrix product."""
    index = np.indices(shape).reshape(3, -1).astype(np.float64)
    return (affine[:3, :3] @ index + affine[:3, 3:4]).reshape((3,) + tuple(shape))


def _rotation(axis, degrees):
    angle = np.deg2rad(degrees)
    c, s = np.cos(angle), np.sin(angle)
    a, b = [d for d in range(3) if d != axis]
    rotation = np.eye(3)
    rotation[a, a], rotation[a, b], rotation[b, a], rotation[b, b] = c, -s, s, c
    return rotation


def _dice(a, b):
    a, b = a.astype(bool), b.astype(bool)
    return 2.0 * np.logical_and(a, b).sum() / (a.sum() + b.sum())


def _sphere_volume(shape, spacing, centre_mm, radius_mm, label=1):
    """Label map of a ball on an axis-aligned RAS grid; centre given as (z, y, x) mm."""
    affine = _affine([(0, 0, spacing[0]), (0, spacing[1], 0), (spacing[2], 0, 0)], (0, 0, 0))
    x, y, z = _world(affine, shape)
    inside = (z - centre_mm[0]) ** 2 + (y - centre_mm[1]) ** 2 + (x - centre_mm[2]) ** 2
    array = np.where(inside <= radius_mm**2, label, 0).astype(np.uint8)
    return Volume(array, affine, patient_id="sphere")


def _nifti_volume(path):
    """Volume from a NIfTI file: (x, y, z) data transposed to (z, y, x), affine columns too."""
    image = nib.load(path)
    array = np.asarray(image.dataobj).transpose(2, 1, 0)
    return Volume(array, image.affine[:, [2, 1, 0, 3]], patient_id="ct", source_files=(path,))


# Oblique grid: voxel sizes (z, y, x) = (2.5, 1.2, 0.8) mm, rotated 20 degrees about S.
OBLIQUE = _affine(
    (_rotation(2, 20) @ np.diag([0.8, 1.2, 2.5]))[:, ::-1].T, origin=(-30.0, 12.0, 40.0)
)
RAMP = np.array([0.7, -1.3, 0.4])  # df/dx, df/dy, df/dz in value per mm


def _ramp_volume(affine, shape):
    x, y, z = _world(affine, shape)
    return Volume(RAMP[0] * x + RAMP[1] * y + RAMP[2] * z + 5.0, affine, patient_id="ramp")


def _inside_source_hull(source, target_affine, target_shape):
    """Target voxels whose centres lie among the source centres (where linear is exact)."""
    world = _world(target_affine, target_shape).reshape(3, -1)
    index = np.linalg.solve(source.affine[:3, :3], world - source.affine[:3, 3:4])
    limits = np.asarray(source.shape)[:, None] - 1
    return np.all((index >= -1e-9) & (index <= limits + 1e-9), axis=0).reshape(target_shape)


def test_resample_affine_matches_hand_worked_2x_downsample():
    # Columns: k -> 3 mm towards S, j -> 2 mm towards P, i -> 1 mm towards L.
    affine = _affine([(0, 0, 3), (0, -2, 0), (-1, 0, 0)], origin=(10, 20, 30))
    volume = Volume(np.arange(64, dtype=np.float32).reshape(4, 4, 4), affine, patient_id="p")
    out = geometry.resample(volume, (6.0, 4.0, 2.0))
    # First voxel's outer corner: (10 + 0.5, 20 + 1, 30 - 1.5); new centres half a new
    # voxel in: (10.5 - 1, 21 - 2, 28.5 + 3).
    expected = _affine([(0, 0, 6), (0, -4, 0), (-2, 0, 0)], origin=(9.5, 19.0, 31.5))
    assert out.shape == (2, 2, 2)
    np.testing.assert_allclose(out.affine, expected, atol=1e-12)
    # Each new centre sits at the mean of its 2x2x2 block of old centres, so linear
    # interpolation gives the block mean.
    blocks = volume.array.reshape(2, 2, 2, 2, 2, 2).mean(axis=(1, 3, 5))
    np.testing.assert_allclose(out.array, blocks, rtol=1e-6)
    world_old = _world(affine, volume.shape).reshape(3, 2, 2, 2, 2, 2, 2).mean(axis=(2, 4, 6))
    np.testing.assert_allclose(_world(out.affine, out.shape), world_old, atol=1e-12)


def test_resample_shape_rounds_extent_over_spacing():
    volume = Volume(np.zeros((30, 101, 7)), np.diag([3.0, 0.7, 1.1, 1.0]), patient_id="p")
    out = geometry.resample(volume, (1.5, 2.0, 1.0))
    # 90 / 1.5 = 60, 70.7 / 2 = 35.35, 7.7 / 1 = 7.7
    assert out.shape == (60, 35, 8)
    np.testing.assert_allclose(out.spacing, (1.5, 2.0, 1.0))


@pytest.mark.parametrize("spacing", [(1.7, 0.9, 1.3), (5.0, 2.0, 0.5)])
def test_resample_reproduces_linear_ramp_at_new_centres(spacing):
    volume = _ramp_volume(OBLIQUE, (8, 14, 16))
    before = volume.array.copy()
    out = geometry.resample(volume, spacing)
    assert out.array.dtype == np.float64
    x, y, z = _world(out.affine, out.shape)
    analytic = RAMP[0] * x + RAMP[1] * y + RAMP[2] * z + 5.0
    inside = _inside_source_hull(volume, out.affine, out.shape)
    assert inside.mean() > 0.5
    np.testing.assert_allclose(out.array[inside], analytic[inside], atol=1e-6)
    np.testing.assert_array_equal(volume.array, before)
    # Direction cosines are kept; only the voxel size changes.
    np.testing.assert_allclose(
        out.affine[:3, :3] / spacing, OBLIQUE[:3, :3] / volume.spacing, atol=1e-12
    )


def test_resample_to_rotated_grid_reproduces_ramp_and_fills_outside():
    volume = _ramp_volume(OBLIQUE, (8, 14, 16))
    target = _affine((_rotation(0, 35) @ np.diag([1.5, 1.5, 1.5])).T, origin=(-25.0, 10.0, 42.0))
    out = geometry.resample_to(volume, target, (10, 12, 12), fill=-99.0)
    x, y, z = _world(target, out.shape)
    analytic = RAMP[0] * x + RAMP[1] * y + RAMP[2] * z + 5.0
    inside = _inside_source_hull(volume, target, out.shape)
    assert 0 < inside.sum() < inside.size
    np.testing.assert_allclose(out.array[inside], analytic[inside], atol=1e-6)
    # Outside the source field of view (beyond half a voxel past the edge centres).
    world = _world(target, out.shape).reshape(3, -1)
    index = np.linalg.solve(volume.affine[:3, :3], world - volume.affine[:3, 3:4])
    limits = np.asarray(volume.shape)[:, None] - 0.5
    outside = np.any((index < -0.5) | (index > limits), axis=0).reshape(out.shape)
    assert outside.any()
    np.testing.assert_array_equal(out.array[outside], -99.0)
    np.testing.assert_array_equal(out.affine, target)


def test_nearest_label_resampling_keeps_values_and_volume():
    labels = _sphere_volume((20, 40, 40), (2.0, 1.0, 1.0), (20.0, 20.0, 20.0), 12.0, label=3)
    array = labels.array.copy()
    x, _, z = _world(labels.affine, labels.shape)
    array[z > 26] = 0  # carve off a cap
    array[(array == 0) & (x < 6)] = 1  # and add a second label: a slab at the side
    labels = labels.with_array(array)
    out = geometry.resample(labels, (1.3, 1.7, 1.5), is_label=True)
    assert out.array.dtype == np.uint8
    assert set(np.unique(out.array)) <= set(np.unique(array))
    for value in (1, 3):
        before = (array == value).sum() * np.prod(labels.spacing)
        after = (out.array == value).sum() * np.prod(out.spacing)
        assert after == pytest.approx(before, rel=0.05)


def test_nearest_2x_downsample_breaks_half_voxel_ties_the_same_way_everywhere():
    # Each new centre is exactly midway between old centres 2n and 2n + 1; the documented
    # rule takes 2n + 1 on every axis, even where float noise in the grid would not.
    affine = _affine([(0, 0, 0.7), (0, -0.3, 0), (1.1, 0, 0)], (-177.95632935, 11.319, 94.3017))
    labels = Volume(np.arange(12**3, dtype=np.int32).reshape(12, 12, 12), affine, "p")
    for grid in (labels, labels.with_array(labels.array, affine=LPS_LIKE)):
        out = geometry.resample(grid, np.asarray(grid.spacing) * 2, is_label=True)
        np.testing.assert_array_equal(out.array, grid.array[1::2, 1::2, 1::2])


def test_bool_masks_stay_bool():
    mask = _sphere_volume((6, 8, 8), (2.0, 1.0, 1.0), (5.0, 4.0, 4.0), 3.0)
    mask = mask.with_array(mask.array.astype(bool))
    out = geometry.resample(mask, 0.5, is_label=True)
    assert out.array.dtype == bool
    assert out.array.sum() == mask.array.sum() * 4 * 2 * 2


def test_resample_rejects_bad_arguments():
    volume = Volume(np.zeros((4, 4, 4)), np.eye(4), patient_id="p", source_files=("a.nii",))
    with pytest.raises(GeometryError, match="a.nii: spacing"):
        geometry.resample(volume, (1.0, 0.0, 1.0))
    with pytest.raises(GeometryError, match="blend label values"):
        geometry.resample(volume, 2.0, is_label=True, order=1)
    with pytest.raises(GeometryError, match="reference_shape"):
        geometry.resample_to(volume, np.eye(4), (4, 4))
    with pytest.raises(GeometryError, match="singular"):
        geometry.resample_to(volume, np.diag([1.0, 0.0, 1.0, 1.0]), (4, 4, 4))
    labels = volume.with_array(np.zeros((4, 4, 4), np.uint8))
    with pytest.raises(GeometryError, match="fill"):
        geometry.resample_to(labels, np.eye(4), (4, 4, 4), is_label=True, fill=-1)


# A DICOM-like grid in RAS+: columns (i) run towards patient Left, rows (j) towards
# Posterior, slices (k) towards Superior; spacing (2.5, 0.8, 0.7).
LPS_LIKE = _affine([(0, 0, 2.5), (0, -0.8, 0), (-0.7, 0, 0)], origin=(100.0, 80.0, -50.0))
# Oblique and permuted: slices run mostly Anterior, rows mostly Inferior, columns Right.
PERMUTED = _affine([(0.1, 3.0, 0.2), (0.0, 0.1, -1.0), (0.9, 0.0, 0.05)], origin=(-5.0, 7.0, 3.0))


def _value_at_world_positions(volume, world):
    """Values of volume at world points that are exactly some voxel's centre."""
    index = np.linalg.solve(volume.affine[:3, :3], world - volume.affine[:3, 3:4])
    rounded = np.round(index).astype(int)
    np.testing.assert_allclose(index, rounded, atol=1e-9)
    return volume.array[tuple(rounded)]


@pytest.mark.parametrize(
    "affine, codes", [(LPS_LIKE, "LPS"), (PERMUTED, "RIA")], ids=["lps", "oblique-permuted"]
)
@pytest.mark.parametrize("target", ["RAS", "LPS", "PIR"])
def test_reorient_axis_codes_and_world_positions(affine, codes, target):
    shape = (3, 4, 5)
    volume = Volume(
        np.arange(60, dtype=np.int16).reshape(shape),
        affine,
        patient_id="p",
        source_files=("s0", "s1", "s2"),
    )
    assert geometry.orientation(volume) == codes
    assert "".join(nib.aff2axcodes(affine[:, [2, 1, 0, 3]])) == codes
    out = geometry.reorient(volume, target)
    assert "".join(nib.aff2axcodes(out.affine[:, [2, 1, 0, 3]])) == target
    assert geometry.orientation(out) == target
    assert sorted(out.shape) == sorted(shape)
    world = _world(affine, shape).reshape(3, -1)
    np.testing.assert_array_equal(_value_at_world_positions(out, world), volume.array.reshape(-1))
    back = geometry.reorient(out, codes)
    np.testing.assert_array_equal(back.array, volume.array)
    np.testing.assert_allclose(back.affine, volume.affine, atol=1e-12)
    assert back.source_files == volume.source_files
    assert not np.shares_memory(out.array, volume.array)


def test_reorient_reverses_per_slice_files_when_slices_flip():
    affine = _affine([(0, 0, -2.0), (0, 1.0, 0), (1.0, 0, 0)], origin=(0, 0, 0))
    volume = Volume(np.arange(8.0).reshape(2, 2, 2), affine, "p", source_files=("top", "bottom"))
    out = geometry.reorient(volume, "RAS")
    np.testing.assert_array_equal(out.array, volume.array[::-1])
    assert out.source_files == ("bottom", "top")
    # Slice 0 of the output is the old slice 1, two millimetres further inferior.
    np.testing.assert_allclose(out.affine[:3, 3], (0, 0, -2.0))


def test_reorient_rejects_bad_codes():
    volume = Volume(np.zeros((2, 2, 2)), np.eye(4), patient_id="p")
    for bad in ("RAR", "RA", "XYZ"):
        with pytest.raises(GeometryError, match="target"):
            geometry.reorient(volume, bad)


def test_crop_foreground_box_affine_and_uncrop():
    array = np.zeros((10, 12, 14), dtype=np.int16)
    array[3:5, 4:9, 2:3] = 7
    array[6, 5, 6] = 2
    affine = _affine([(0, 0, 2.0), (0, -1.0, 0), (0.5, 0, 0.5)], origin=(1.0, 2.0, 3.0))
    volume = Volume(array, affine, patient_id="p", source_files=[f"f{n}" for n in range(10)])
    cropped, bbox = geometry.crop_foreground(volume, array == 7, margin=(1, 2, 3))
    # Hand-worked: z 3..4 -> 2..5, y 4..8 -> 2..10, x 2..2 -> 0 (clipped)..5.
    assert bbox == (slice(2, 6), slice(2, 11), slice(0, 6))
    np.testing.assert_array_equal(cropped.array, array[2:6, 2:11, 0:6])
    assert cropped.source_files == ("f2", "f3", "f4", "f5")
    # Every kept voxel keeps its world position.
    np.testing.assert_allclose(
        _world(cropped.affine, cropped.shape), _world(affine, array.shape)[:, 2:6, 2:11, 0:6]
    )
    restored = geometry.uncrop(cropped.array, bbox, array.shape, fill=-1)
    np.testing.assert_array_equal(restored[array == 7], 7)
    np.testing.assert_array_equal(restored[bbox], array[bbox])
    outside = np.ones(array.shape, bool)
    outside[bbox] = False
    np.testing.assert_array_equal(restored[outside], -1)
    assert not np.shares_memory(cropped.array, array)


def test_crop_by_threshold_and_uncrop_keeps_channels():
    array = np.full((6, 6, 6), -1000.0)
    array[1:3, 2:5, 3:4] = 40.0
    volume = Volume(array, np.eye(4), patient_id="p")
    cropped, bbox = geometry.crop_foreground(volume, threshold=-500)
    assert bbox == (slice(1, 3), slice(2, 5), slice(3, 4))
    probabilities = np.stack([np.full(cropped.shape, 0.25), np.full(cropped.shape, 0.75)], -1)
    full = geometry.uncrop(probabilities, bbox, array.shape)
    assert full.shape == (6, 6, 6, 2)
    assert full.sum() == pytest.approx(probabilities.sum())
    np.testing.assert_array_equal(full[bbox], probabilities)


def test_crop_and_uncrop_errors():
    volume = Volume(np.zeros((4, 4, 4)), np.eye(4), patient_id="p", source_files=("v.nii",))
    with pytest.raises(MaskError, match="v.nii: .*empty"):
        geometry.crop_foreground(volume)
    with pytest.raises(GeometryError, match="mask shape"):
        geometry.crop_foreground(volume, np.ones((4, 4, 3)))
    with pytest.raises(GeometryError, match="does not fill"):
        geometry.uncrop(np.zeros((2, 2, 2)), (slice(0, 2), slice(0, 2), slice(0, 3)), (4, 4, 4))
    with pytest.raises(GeometryError, match="fill=-1"):
        geometry.uncrop(np.zeros((2, 2, 2), np.uint8), (slice(0, 2),) * 3, (4, 4, 4), fill=-1)
    with pytest.raises(GeometryError, match="does not fit"):
        geometry.uncrop(np.zeros((2, 2, 2)), (slice(3, 5), slice(0, 2), slice(0, 2)), (4, 4, 4))


def test_to_original_grid_after_resample_and_crop_sphere():
    original = _sphere_volume((24, 40, 40), (2.0, 1.1, 1.1), (24.0, 22.0, 21.0), 13.0)
    before = original.array.copy()
    iso = geometry.resample(original, 1.5, is_label=True)
    cropped, _ = geometry.crop_foreground(iso, margin=2)
    back = geometry.to_original_grid(cropped, original, is_label=True)
    assert back.shape == original.shape
    assert back.dtype == np.uint8
    assert _dice(back, original.array) > 0.95
    np.testing.assert_array_equal(original.array, before)


def test_to_original_grid_is_exact_for_integer_ratios_through_any_chain():
    original = _sphere_volume((10, 16, 16), (2.0, 2.0, 2.0), (10.0, 15.0, 17.0), 9.0, label=2)
    original = Volume(original.array, LPS_LIKE @ np.diag([0.8, 2.5, 2.85, 1]), patient_id="p")
    chain = geometry.reorient(original, "RAS")
    chain = geometry.resample(chain, np.asarray(chain.spacing) / (2, 1, 3), is_label=True)
    chain, _ = geometry.crop_foreground(chain, margin=1)
    back = geometry.to_original_grid(chain, original)
    np.testing.assert_array_equal(back, original.array)


def test_real_ct_liver_resampled_to_1_5_mm_and_back(shared_data):
    folder = shared_data / "totalseg-ct"
    ct = _nifti_volume(str(folder / "example_ct_sm.nii.gz"))
    liver = _nifti_volume(str(folder / "organs" / "liver.nii.gz"))
    assert ct.shape == liver.shape == (30, 101, 122)
    np.testing.assert_allclose(ct.spacing, (3.0, 3.0, 3.0))
    liver_ml = liver.array.sum() * np.prod(liver.spacing) / 1000.0
    assert liver_ml > 100

    fine = geometry.resample(liver, 1.5, is_label=True)
    assert fine.shape == (60, 202, 244)
    assert fine.array.sum() * np.prod(fine.spacing) / 1000.0 == pytest.approx(liver_ml, rel=0.02)
    np.testing.assert_array_equal(geometry.to_original_grid(fine, liver), liver.array)

    coarse = geometry.resample(liver, 4.0, is_label=True)
    coarse_ml = coarse.array.sum() * np.prod(coarse.spacing) / 1000.0
    assert coarse_ml == pytest.approx(liver_ml, rel=0.05)
    assert _dice(geometry.to_original_grid(coarse, liver), liver.array) > 0.9

    # Linear resampling of the CT keeps the liver's mean attenuation.
    ct_coarse = geometry.resample(ct, 4.0)
    inside = coarse.array.astype(bool)
    mean_hu = ct.array[liver.array.astype(bool)].mean()
    assert ct_coarse.array[inside].mean() == pytest.approx(mean_hu, abs=10.0)


def test_to_original_grid_takes_the_grid_as_affine_and_shape():
    # A 3 x 4 x 5 grid at 2 mm; the prediction covers its voxels (1..2, 1..3, 0..4), is a
    # boolean mask and comes back as uint8 zeros outside that box.
    original_affine = np.diag([2.0, 2.0, 2.0, 1.0])
    cropped_affine = original_affine.copy()
    cropped_affine[:3, 3] = (2.0, 2.0, 0.0)  # voxel (1, 1, 0) of the original grid
    mask = np.zeros((2, 3, 5), bool)
    mask[0, 1, 2] = mask[1, 2, 4] = True
    expected = np.zeros((3, 4, 5), np.uint8)
    expected[1, 2, 2] = expected[2, 3, 4] = 1

    prediction = Volume(mask, cropped_affine, patient_id="p")
    back = geometry.to_original_grid(prediction, (original_affine, np.array([3, 4, 5], np.int32)))
    assert back.dtype == np.uint8
    np.testing.assert_array_equal(back, expected)
    as_volume = Volume(np.zeros((3, 4, 5), np.int16), original_affine, patient_id="p")
    np.testing.assert_array_equal(geometry.to_original_grid(prediction, as_volume), expected)
    with pytest.raises(GeometryError, match="three positive integers"):
        geometry.to_original_grid(prediction, (original_affine, (3, 4)))
