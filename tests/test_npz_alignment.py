"""Pre-converted npz masks: read as stored, aligned to the CT by evidence, or refused.

Every check compares with the truth written beforehand: the phantom's own label map (or the
real TotalSegmentator lung masks of the shared sample CT), flipped by numpy.
"""

import itertools

import nibabel as nib
import numpy as np
import pytest

from kseg.errors import AlignmentError, MaskError, UnreadableFileError
from kseg.io.npz import align_mask_to_volume, read_aligned_npz_mask, read_npz_mask
from kseg.io.volume import Volume
from kseg.phantoms.lctsc import lctsc_phantom_case

ALL_FLIPS = [
    tuple(axis for axis, flip in zip("zyx", chosen, strict=True) if flip)
    for chosen in itertools.product((False, True), repeat=3)
]


def _flip(array, flips):
    return np.flip(array, axis=tuple("zyx".index(axis) for axis in flips))


@pytest.fixture(scope="module")
def case():
    phantom_case = lctsc_phantom_case(2, num_slices=10, size=48, seed=5)
    volume = Volume(phantom_case.phantom.hu, np.diag([2.5, 9.0, 9.0, 1.0]), "p")
    return volume, phantom_case.lctsc_labels()


@pytest.mark.parametrize("flips", ALL_FLIPS, ids=lambda f: "+".join(f) or "as_stored")
@pytest.mark.parametrize("classes", ["organs", "lungs"])
def test_stored_flips_are_detected_and_undone(case, tmp_path, flips, classes):
    volume, truth = case
    if classes == "lungs":
        truth = np.isin(truth, (1, 2)).astype(np.uint8)
    path = tmp_path / "mask.npz"
    np.savez_compressed(path, mask=_flip(truth, flips))
    alignment = read_aligned_npz_mask(path, volume)
    assert alignment.flipped_axes == flips
    np.testing.assert_array_equal(alignment.mask, truth)
    assert alignment.mask.dtype == np.uint8


def test_real_ct_lung_masks_are_aligned_back(shared_data):
    ct = nib.load(shared_data / "totalseg-ct" / "example_ct_sm.nii.gz")
    seg = nib.load(shared_data / "totalseg-ct" / "example_seg.nii.gz")
    # NIfTI (i, j, k) -> kseg (z, y, x); TotalSegmentator v2 ids 10-14 are the lung lobes.
    hu = np.asarray(ct.dataobj).transpose(2, 1, 0)
    lungs = np.isin(np.asarray(seg.dataobj).transpose(2, 1, 0), [10, 11, 12, 13, 14])
    volume = Volume(hu, ct.affine, "totalseg-example")
    truth = lungs.astype(np.uint8)
    assert truth.sum() > 1000
    for flips in ALL_FLIPS:
        alignment = align_mask_to_volume(_flip(truth, flips), volume)
        assert alignment.flipped_axes == flips
        np.testing.assert_array_equal(alignment.mask, truth)


def test_mask_without_evidence_is_refused(case):
    volume, _ = case
    with pytest.raises(AlignmentError, match=r"cases/7/mask\.npz: .*no evidence"):
        align_mask_to_volume(np.zeros(volume.shape, np.uint8), volume, source="cases/7/mask.npz")


def test_mirror_symmetric_case_is_refused_naming_the_scores(case):
    volume, truth = case
    # Mirror the left half of image and mask onto the right: flipping x changes nothing, so
    # no data can say whether the mask was stored flipped.
    half = volume.shape[2] // 2
    hu = volume.array.copy()
    hu[:, :, -half:] = hu[:, :, :half][:, :, ::-1]
    lungs = np.isin(truth, (1, 2)).astype(np.uint8)
    lungs[:, :, -half:] = lungs[:, :, :half][:, :, ::-1]
    symmetric = volume.with_array(hu)
    with pytest.raises(AlignmentError, match=r"m\.npz: .*does not clearly beat.*scores") as err:
        align_mask_to_volume(lungs, symmetric, source="m.npz")
    assert "as stored" in str(err.value) and "reversed x" in str(err.value)


def test_mask_that_fits_no_orientation_is_refused(case):
    volume, _ = case
    rng = np.random.default_rng(0)
    noise = (rng.uniform(size=volume.shape) < 0.3).astype(np.uint8)
    with pytest.raises(AlignmentError, match="no orientation fits the CT"):
        align_mask_to_volume(noise, volume)


def test_other_shapes_are_refused(case):
    volume, truth = case
    with pytest.raises(AlignmentError, match=r"mask shape \(10, 48, 47\) differs"):
        align_mask_to_volume(truth[:, :, :47], volume)


def test_read_npz_mask_keys_and_contents(tmp_path):
    mask = np.zeros((2, 3, 4), np.uint8)
    mask[1, 2, 3] = 5
    np.savez(tmp_path / "named.npz", mask=mask, extra=np.ones(3))
    np.testing.assert_array_equal(read_npz_mask(tmp_path / "named.npz"), mask)
    np.savez(tmp_path / "single.npz", mask.astype(np.int64))  # stored as arr_0
    assert read_npz_mask(tmp_path / "single.npz").dtype == np.uint8
    np.savez(tmp_path / "two.npz", a=mask, b=mask)
    with pytest.raises(UnreadableFileError, match=r"two\.npz: no array 'mask'.*\['a', 'b'\]"):
        read_npz_mask(tmp_path / "two.npz")
    np.testing.assert_array_equal(read_npz_mask(tmp_path / "two.npz", key="b"), mask)
    np.save(tmp_path / "plain.npy", mask)
    with pytest.raises(UnreadableFileError, match="single .npy array"):
        read_npz_mask(tmp_path / "plain.npy")
    (tmp_path / "broken.npz").write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(UnreadableFileError, match="broken.npz"):
        read_npz_mask(tmp_path / "broken.npz")
    np.savez(tmp_path / "flat.npz", mask=mask[0])
    with pytest.raises(MaskError, match=r"3D \(z, y, x\)"):
        read_npz_mask(tmp_path / "flat.npz")
    np.savez(tmp_path / "soft.npz", mask=mask * 0.5)
    with pytest.raises(MaskError, match="integer labels"):
        read_npz_mask(tmp_path / "soft.npz")
    np.savez(tmp_path / "wide.npz", mask=mask.astype(np.int32) * 100)
    with pytest.raises(MaskError, match=r"0\.\.255"):
        read_npz_mask(tmp_path / "wide.npz")
