"""What consumes a gantry-tilted (sheared) volume: figures, DICOM-SEG read without its
series, and ``kseg predict``.

Tilted series are written with pydicom by tests/test_gantry_tilt.py's helpers: slice k sits
k * STEP_MM along the slice normal plus k * tan(tilt) * STEP_MM along the column direction.
References are numpy on physical coordinates.
"""

import math
import warnings

import numpy as np
import pytest
from test_gantry_tilt import (
    COLUMN_MM,
    ROW_MM,
    STEP_MM,
    TILT_DEGREES,
    _sheared_affine,
    _tilt_warnings,
    _tilted_positions,
    _write_series,
)

from kseg.io import Volume, read_dicom_series
from kseg.io.dicom import GantryTiltWarning


def test_tri_planar_of_a_sheared_volume_takes_the_distance_between_planes():
    pytest.importorskip("matplotlib")
    from kseg import viz

    volume = Volume(np.zeros((6, 8, 10)), _sheared_affine(), "tilted")
    assert volume.spacing[0] == pytest.approx(STEP_MM / math.cos(math.radians(20.0)))

    figure = viz.tri_planar(volume)

    # imshow's aspect: the displayed height of one row over the width of one column
    assert [ax.get_aspect() for ax in figure.axes] == pytest.approx(
        [ROW_MM / COLUMN_MM, STEP_MM / COLUMN_MM, STEP_MM / ROW_MM]
    )


# --- DICOM-SEG read without its series ---------------------------------------------------------


def _tilted_series(folder, count=6):
    folder.mkdir()
    _write_series(folder, _tilted_positions(count), tilt=TILT_DEGREES)
    with pytest.warns(GantryTiltWarning):
        return read_dicom_series(folder)


def test_seg_of_a_tilted_series_read_alone_has_the_series_sheared_affine(tmp_path):
    pytest.importorskip("highdicom")
    from kseg.io import read_dicom_seg, read_dicom_seg_masks, write_dicom_seg

    series = _tilted_series(tmp_path / "ct")
    labels = np.zeros(series.shape, np.uint8)
    labels[:, 1:3, 1:4] = 1  # on every slice: the SEG spans the series' grid
    labels[[1, 2, 4], 0, 0] = 2
    write_dicom_seg(labels, series, tmp_path / "seg.dcm", {1: "tumour", 2: "node"})

    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        volume = read_dicom_seg(tmp_path / "seg.dcm")
    (warning,) = _tilt_warnings(record)
    assert str(tmp_path / "seg.dcm") in str(warning.message)
    assert f"{TILT_DEGREES:.2f}°" in str(warning.message)
    np.testing.assert_allclose(volume.affine, series.affine, atol=1e-6)
    np.testing.assert_array_equal(volume.array, labels)
    assert volume.plane_spacing == pytest.approx((STEP_MM, ROW_MM, COLUMN_MM))

    # frames on slices 1, 2 and 4 only: the grid spans them, sheared as the series
    sparse = np.zeros(series.shape, np.uint8)
    sparse[[1, 2, 4], 2, 3] = 1
    write_dicom_seg(sparse, series, tmp_path / "sparse.dcm", {1: "node"})
    with pytest.warns(GantryTiltWarning):
        (node,) = read_dicom_seg_masks(tmp_path / "sparse.dcm").values()
    shifted = series.affine.copy()
    shifted[:3, 3] = series.affine[:3, :3] @ [1, 0, 0] + series.affine[:3, 3]
    np.testing.assert_allclose(node.affine, shifted, atol=1e-6)
    np.testing.assert_array_equal(node.array, sparse[1:5])
