"""keep_largest_component against hand-built label maps."""

import numpy as np
import pytest

from kseg.inference import keep_largest_component


def test_keeps_the_largest_object_of_each_listed_class():
    labels = np.zeros((5, 8), dtype=np.uint8)
    labels[0:3, 0:3] = 1  # 9 voxels: kept
    labels[4, 6:8] = 1  # 2 voxels: removed
    labels[0, 6] = 2  # class 2, two single voxels: one is kept
    labels[2, 6] = 2
    labels[4, 0] = 3  # class 3 not listed: untouched even though it has two parts
    labels[4, 3] = 3
    original = labels.copy()
    cleaned = keep_largest_component(labels, labels=[1, 2])
    expected = original.copy()
    expected[4, 6:8] = 0
    expected[2, 6] = 0  # tie broken towards the first component in scan order
    np.testing.assert_array_equal(cleaned, expected)
    np.testing.assert_array_equal(labels, original)  # input not modified


def test_connectivity_decides_whether_diagonal_voxels_touch():
    labels = np.zeros((4, 4, 4), dtype=np.int32)
    labels[0, 0, 0] = labels[1, 1, 1] = 1  # corner neighbours
    labels[3, 3, 3] = 1
    faces = keep_largest_component(labels, connectivity=1)
    assert faces.sum() == 1  # three single voxels: one survives
    corners = keep_largest_component(labels, connectivity=3)
    assert corners[0, 0, 0] == corners[1, 1, 1] == 1 and corners[3, 3, 3] == 0


def test_rejects_probabilities_and_bad_connectivity():
    with pytest.raises(ValueError, match="integer labels"):
        keep_largest_component(np.zeros((2, 2), dtype=np.float32))
    with pytest.raises(ValueError, match="connectivity"):
        keep_largest_component(np.zeros((2, 2), dtype=np.uint8), connectivity=3)
