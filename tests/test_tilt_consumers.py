"""What consumes a gantry-tilted (sheared) volume: figures, DICOM-SEG read without its
series, and ``kseg predict``.

Tilted series are written with pydicom by tests/test_gantry_tilt.py's helpers: slice k sits
k * STEP_MM along the slice normal plus k * tan(tilt) * STEP_MM along the column direction.
References are numpy on physical coordinates.
"""

import math

import numpy as np
import pytest
from test_gantry_tilt import COLUMN_MM, ROW_MM, STEP_MM, _sheared_affine

from kseg.io import Volume


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
