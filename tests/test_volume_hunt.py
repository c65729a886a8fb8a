"""NIfTI volumes as users and archives ship them, through kseg's readers, writers and the
3D preprocessing chain: each test a file written directly with nibabel and checked against
nibabel, numpy or a hand-worked case."""

import warnings

import nibabel as nib
import numpy as np
import pytest

from kseg.data.preprocess3d import preprocess_volume
from kseg.errors import UnreadableFileError
from kseg.io import read_nifti
from kseg.io.nifti import NonFiniteVoxelWarning


def _circular_fov_ct(path, outside=np.nan):
    """A float CT whose reconstruction circle is filled by the body (40 HU, a 300 HU block),
    with ``outside`` in the square's corners, as converters write NaN outside the field of
    view; LPS-stored like a DICOM conversion, 4 mm pixels, 5 mm slices."""
    k, j, i = np.mgrid[0:8, 0:32, 0:32]
    inside = (j - 15.5) ** 2 + (i - 15.5) ** 2 <= 16.0**2
    hu = np.where(inside, 40.0, outside).astype(np.float32)
    hu[:, 12:20, 12:20] = 300.0
    affine = np.diag([-4.0, -4.0, 5.0, 1.0])  # nibabel's (i, j, k): x to L, y to P
    nib.save(nib.Nifti1Image(hu.transpose(2, 1, 0), affine), path)
    return path


@pytest.mark.parametrize("outside", [np.nan, np.inf, -np.inf])
def test_non_finite_voxels_are_refused_before_they_reach_a_model(tmp_path, outside):
    # The body fills the circle, so its crop box keeps the NaN corners; resampling spread
    # each NaN to its neighbours (a quarter of the prepared voxels were NaN or inf), which a 3D
    # model turns into NaN over its receptive field and kseg predict into background.
    path = _circular_fov_ct(tmp_path / "ct.nii.gz", outside)
    with pytest.warns(NonFiniteVoxelWarning):
        ct = read_nifti(path)
    with pytest.raises(UnreadableFileError, match=r"ct\.nii\.gz: 1696 of 8192 voxels are NaN"):
        preprocess_volume(ct)
    # the remedy the message gives works: background in the corners, nothing refused
    filled = ct.with_array(np.nan_to_num(ct.array, nan=-1024.0, posinf=-1024.0, neginf=-1024.0))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        prepared = preprocess_volume(filled)
    assert np.isfinite(prepared.image.array).all()
