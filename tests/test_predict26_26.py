"""Session 26, predict26: kseg predict, inference, evaluation and geometry on inputs real
users give. Each test failed on the code before its fix."""

import numpy as np
import pytest

from kseg.errors import MaskError
from kseg.evaluation import evaluate_volumes


def _block_mask() -> np.ndarray:
    mask = np.zeros((4, 8, 8), np.uint8)
    mask[1:3, 2:6, 2:6] = 1
    return mask


@pytest.mark.parametrize(
    "fraction, labels",
    [(0.5, None), (0.5, {"organ": 1}), (np.float32(0.99999994), None)],
    ids=["interpolated-edge", "interpolated-edge-labels", "float-scale"],
)
def test_a_reference_of_fractional_values_is_refused_not_scored(fraction, labels):
    """kseg.metrics.dice refuses a 0.5 in a reference; evaluate_volumes compared it with 1
    and dropped the voxel: a mask resampled by interpolation scored Dice 0.933 against
    the prediction it came from, and a label file read through a float scale
    (0.99999994 for 1) scored as an empty reference."""
    mask = _block_mask()
    reference = mask.astype(np.float32)
    if fraction == 0.5:
        reference[1, 2, 2:6] = 0.5  # the mask's edge row after linear resampling
    else:
        reference *= fraction
    with pytest.raises(MaskError, match=r"patient 'p1'.*not whole numbers \((0\.5|0\.99999994)\)"):
        evaluate_volumes([("p1", reference, mask, (1.0, 1.0, 1.0))], metrics=("dice",),
                         labels=labels, progress=False)  # fmt: skip
    # whole-valued floats (nibabel's get_fdata of a label file) are labels, as before
    table = evaluate_volumes([("p1", mask.astype(np.float64), mask, None)], metrics=("dice",),
                             labels=labels, progress=False)  # fmt: skip
    assert table.rows[0][f"dice{'_organ' if labels else ''}"] == 1.0
