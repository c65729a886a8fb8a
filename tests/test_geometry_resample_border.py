import numpy as np
import pytest

from kseg.data.preprocess3d import preprocess_volume
from kseg.geometry import to_original_grid
from kseg.io import Volume


@pytest.mark.parametrize("slice_mm, slices", [(0.8, 26), (1.25, 23), (0.625, 17)])
def test_prediction_mapped_back_keeps_the_last_slice_of_a_thin_slice_ct(slice_mm, slices):
    # A thin-slice CT resampled to the MSD spleen grid (2 mm slices) and a prediction mapped
    # back: the grid of round(extent / 2 mm) slices started at the first slice's outer edge
    # ended short of the last slice's centre (26 x 0.8 mm = 20.8 mm -> 10 slices, 20 mm),
    # so to_original_grid wrote background on the whole last slice. Reference: the label
    # itself, which a body-filling prediction must reproduce voxel for voxel.
    shape = (slices, 8, 8)
    affine = np.eye(4)  # index (z, y, x) -> RAS (x, y, z)
    affine[:3, :3] = [[0.0, 0.0, 0.75], [0.0, 0.75, 0.0], [slice_mm, 0.0, 0.0]]
    ct = Volume(np.full(shape, 40, np.int16), affine, "thin")
    spleen = ct.with_array(np.ones(shape, np.uint8))
    prepared = preprocess_volume(ct, spleen)
    back = to_original_grid(prepared.label, ct)
    np.testing.assert_array_equal(back, spleen.array)
