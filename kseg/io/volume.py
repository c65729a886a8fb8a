"""The one in-memory type every kseg reader returns."""

from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True, eq=False)
class Volume:
    """A 3D image (or label map) with its geometry and provenance.

    Array axes are ``(z, y, x)``: slice, row, column. ``affine`` maps an index in that
    same order, ``(k, j, i, 1)``, to RAS+ world coordinates in millimetres (NIfTI's world
    convention; DICOM's LPS positions are converted by negating x and y). Spacing and
    orientation are read off the affine, never stored twice.

    Args:
        array: voxel values, shape ``(z, y, x)``. CT readers return Hounsfield units.
        affine: 4x4 float matrix, index ``(k, j, i)`` to RAS+ millimetres.
        patient_id: the patient this volume belongs to; splits are made on it.
        source_files: the file each slice came from, in array order (one entry for a
            single-file volume such as NIfTI).
        metadata: free-form facts from the header (modality, series UID, ...).
    """

    array: np.ndarray
    affine: np.ndarray
    patient_id: str
    source_files: tuple[str, ...] = ()
    metadata: dict = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        affine = np.asarray(self.affine, dtype=np.float64)
        if affine.shape != (4, 4):
            raise ValueError(f"affine must be 4x4, got shape {affine.shape}")
        if np.ndim(self.array) != 3:
            raise ValueError(f"Volume arrays are (z, y, x); got shape {np.shape(self.array)}")
        object.__setattr__(self, "affine", affine)
        object.__setattr__(self, "source_files", tuple(str(f) for f in self.source_files))

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.array.shape)

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Distance in mm between neighbouring voxel centres along each array axis ``(z, y, x)``:
        the lengths of the affine's columns (nibabel's ``voxel_sizes``, NIfTI's pixdim).

        On a sheared grid (a gantry-tilted CT, whose slices step off the slice normal) the
        slice entry is the step from one slice centre to the next, longer than the distance
        between the slice planes; :attr:`plane_spacing` and :attr:`voxel_volume` are the
        physical sizes there, and equal ``spacing`` and its product on orthogonal grids.
        """
        return tuple(float(s) for s in np.linalg.norm(self.affine[:3, :3], axis=0))

    @property
    def plane_spacing(self) -> tuple[float, float, float]:
        """Voxel size in mm of the orthogonal grid that keeps this grid's slice planes:
        the distance between neighbouring slice planes (planes of constant ``k``), then the
        row and column spacing. It is :attr:`spacing` on any grid whose slice axis is
        perpendicular to its slices; on a gantry-tilted CT its slice entry is the true slice
        spacing, which :attr:`spacing` overstates by ``1 / cos(tilt)``. The grid
        :func:`kseg.geometry.deskew` resamples to has this spacing.
        """
        columns = self.affine[:3, :3]
        in_plane = np.cross(columns[:, 1], columns[:, 2])
        # the slice step projected on the unit normal: exact on axis-aligned grids, where
        # a determinant over an area would round (3 mm -> 3.0000000000000004)
        between_planes = abs(float(columns[:, 0] @ (in_plane / np.linalg.norm(in_plane))))
        _, row, column = self.spacing
        return (between_planes, row, column)

    @property
    def voxel_volume(self) -> float:
        """Volume of one voxel in mm³, ``|det(affine)|``: right on sheared and oblique grids,
        where the product of :attr:`spacing` is too large."""
        return abs(float(np.linalg.det(self.affine[:3, :3])))

    @property
    def origin(self) -> tuple[float, float, float]:
        """RAS+ position in mm of the centre of voxel ``(0, 0, 0)``."""
        return tuple(float(v) for v in self.affine[:3, 3])

    def with_array(self, array: np.ndarray, **changes) -> Volume:
        """The same geometry and provenance around a new array of the same grid."""
        if np.shape(array) != self.shape:
            raise ValueError(f"new array {np.shape(array)} is not on the grid {self.shape}")
        return dataclasses.replace(self, array=array, **changes)


def image_affine(row_spacing: float = 1.0, column_spacing: float = 1.0) -> np.ndarray:
    """The affine of images that carry no patient geometry (PNG radiographs, DICOM
    projection radiographs), one 1 mm thick slice each: index ``(k, j, i)`` to
    ``(x, y, z) = (i * column_spacing, j * row_spacing, k)`` mm, axes as stored."""
    affine = np.zeros((4, 4))
    affine[0, 2], affine[1, 1], affine[2, 0], affine[3, 3] = column_spacing, row_spacing, 1, 1
    return affine
