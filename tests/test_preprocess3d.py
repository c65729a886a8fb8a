"""The MSD spleen preprocessing chain, against numpy formulas and hand-built geometry."""

import dataclasses

import nibabel as nib
import numpy as np
import pytest

from kseg import geometry
from kseg.data.preprocess3d import MSD_SPLEEN_SPACING, preprocess_volume
from kseg.errors import AlignmentError
from kseg.io.volume import Volume

SHAPE = (12, 150, 150)
SPACING = (5.0, 0.8, 0.8)  # (z, y, x): the real scans' typical 5 mm slices of 0.8 mm pixels


def _lps_affine(shape, spacing, origin=(60.0, 60.0, -250.0)):
    """Index (k, j, i) -> RAS mm with columns towards the left and rows towards posterior,
    as a NIfTI converted from DICOM without reorientation."""
    affine = np.eye(4)
    affine[:3, 0] = (0.0, 0.0, spacing[0])
    affine[:3, 1] = (0.0, -spacing[1], 0.0)
    affine[:3, 2] = (-spacing[2], 0.0, 0.0)
    affine[:3, 3] = origin
    return affine


def _world_grid(shape, affine):
    k, j, i = np.meshgrid(*(np.arange(n, dtype=np.float64) for n in shape), indexing="ij")
    return [affine[row, 0] * k + affine[row, 1] * j + affine[row, 2] * i + affine[row, 3]
            for row in range(3)]


@pytest.fixture(scope="module")
def scan():
    """A body cylinder of 40 HU in -1000 HU air and an ellipsoidal 'spleen' of 120 HU,
    defined in world millimetres."""
    affine = _lps_affine(SHAPE, SPACING)
    x, y, z = _world_grid(SHAPE, affine)
    body = x**2 + y**2 < 52.0**2
    spleen = ((x - 20.0) / 18.0) ** 2 + ((y + 8.0) / 22.0) ** 2 + ((z + 222.0) / 16.0) ** 2 < 1
    hu = np.where(body, 40, -1000).astype(np.int16)
    hu[spleen] = 120
    image = Volume(hu, affine, "case", source_files=("case.nii.gz",))
    label = Volume(spleen.astype(np.uint8), affine, "case", source_files=("label.nii.gz",))
    return image, label


@pytest.fixture(scope="module")
def prepared(scan):
    return preprocess_volume(*scan)


def _dice(a, b):
    a, b = np.asarray(a) > 0, np.asarray(b) > 0
    return 2.0 * np.logical_and(a, b).sum() / (a.sum() + b.sum())


def _centroid_mm(mask, affine):
    index = np.argwhere(mask).mean(axis=0)
    return affine[:3, :3] @ index + affine[:3, 3]


def test_output_has_the_target_spacing_and_ras_orientation(prepared):
    affine = prepared.image.affine
    np.testing.assert_allclose(np.linalg.norm(affine[:3, :3], axis=0), MSD_SPLEEN_SPACING)
    assert MSD_SPLEEN_SPACING == (2.0, 1.5, 1.5)  # (z, y, x) = 1.5 x 1.5 x 2.0 mm in (x, y, z)
    assert nib.aff2axcodes(affine[:, [2, 1, 0, 3]]) == ("R", "A", "S")
    np.testing.assert_array_equal(prepared.label.affine, affine)
    assert prepared.label.shape == prepared.image.shape


def test_every_voxel_keeps_its_world_position(scan, prepared):
    image, label = scan
    before = _centroid_mm(label.array, label.affine)
    after = _centroid_mm(prepared.label.array, prepared.label.affine)
    # Nearest-neighbour sampling moves no voxel by more than half an input voxel:
    # 0.4 mm along x and y, 2.5 mm along z (world axes).
    assert np.all(np.abs(after - before) <= [0.4, 0.4, 2.5])
    np.testing.assert_allclose(after, (20.0, -8.0, -222.0), atol=1.0)
    # HU are interpolated, not windowed: the body interior stays at 40 HU.
    centre = tuple(n // 2 for n in prepared.image.shape)
    x, y, z = (v[centre] for v in _world_grid(prepared.image.shape, prepared.image.affine))
    assert x**2 + y**2 < 40.0**2
    assert prepared.image.array[centre] == pytest.approx(40.0, abs=1e-3)


def test_crop_is_the_box_of_the_voxels_above_minus_57_hu(prepared):
    hu = prepared.image.array
    # Tight: every face of the box touches the body ...
    for axis in range(3):
        profile = (hu > -57).any(axis=tuple(a for a in range(3) if a != axis))
        assert profile[0] and profile[-1]
    # ... and the air around the 104 mm body was dropped from the 120 mm field of view.
    extent_mm = np.array(hu.shape) * np.array(MSD_SPLEEN_SPACING)
    assert np.all(extent_mm[1:] < 110.0)
    z_box = prepared.crop_box[0]
    assert (z_box.start, z_box.stop) == (0, hu.shape[0])


def test_label_mapped_back_to_the_original_grid_matches_the_original(scan, prepared):
    image, label = scan
    back = geometry.to_original_grid(
        Volume(prepared.label.array, prepared.image.affine, "case"),
        (prepared.original_affine, prepared.original_shape),
    )
    assert back.shape == label.shape
    assert _dice(back, label.array) > 0.95
    np.testing.assert_array_equal(prepared.to_original_grid(prepared.label.array), back)
    np.testing.assert_array_equal(prepared.original_affine, image.affine)


def test_input_volumes_are_not_modified(scan):
    image, label = scan
    hu, mask = image.array.copy(), label.array.copy()
    preprocess_volume(image, label)
    np.testing.assert_array_equal(image.array, hu)
    np.testing.assert_array_equal(label.array, mask)


def test_each_step_can_be_left_out(scan):
    image, label = scan
    same = preprocess_volume(image, label, orientation=None, spacing=None, crop_threshold=None)
    np.testing.assert_array_equal(same.image.array, image.array)
    np.testing.assert_array_equal(same.label.array, label.array)
    assert same.crop_box is None
    flipped = preprocess_volume(image, label, spacing=None, crop_threshold=None)
    # LPS -> RAS flips rows and columns and keeps slices: a pure permutation of voxels.
    np.testing.assert_array_equal(flipped.label.array, label.array[:, ::-1, ::-1])


def test_unlabelled_scan_is_preprocessed_alone(scan, prepared):
    alone = preprocess_volume(scan[0])
    assert alone.label is None
    np.testing.assert_array_equal(alone.image.array, prepared.image.array)


def test_label_on_another_grid_is_refused(scan):
    image, label = scan
    shifted = label.affine.copy()
    shifted[2, 3] += 2.0
    with pytest.raises(AlignmentError, match=r"label.nii.gz: label affine differs"):
        preprocess_volume(image, dataclasses.replace(label, affine=shifted))
    with pytest.raises(AlignmentError, match=r"label.nii.gz: label shape"):
        preprocess_volume(
            image, Volume(label.array[:-1], label.affine, "case", source_files=("label.nii.gz",))
        )


def test_mapping_a_bool_prediction_back_gives_uint8_and_fills_outside_its_view():
    back = geometry.to_original_grid(
        Volume(np.ones((2, 2, 2), bool), np.eye(4), "case"), (np.eye(4), (3, 2, 2))
    )
    assert back.dtype == np.uint8
    np.testing.assert_array_equal(back[:2], 1)
    np.testing.assert_array_equal(back[2], 0)  # outside the prediction's field of view
