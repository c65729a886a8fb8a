"""Resample, reorient and crop :class:`kseg.io.Volume` objects, and map predictions back.

Every function here is pure: it returns a new Volume (or array) whose ``affine`` says
exactly where each voxel sits in RAS+ millimetres, and never writes into its input.
Because every output carries its own affine, one function undoes any chain of these
steps: :func:`to_original_grid` resamples a prediction made on a resampled, reoriented
and/or cropped volume onto the grid of the volume the chain started from.

Conventions (array axes are ``(z, y, x)``, the affine maps index ``(k, j, i, 1)`` to
RAS+ mm, as in :class:`kseg.io.Volume`):

- A voxel's index is the position of its *centre*; voxel ``n`` covers indices
  ``[n - 0.5, n + 0.5]`` along each axis, so the field of view of a grid of shape ``N``
  spans ``[-0.5, N - 0.5]``.
- :func:`resample` keeps the outer corner of the first voxel fixed in world space (the
  corner-aligned convention of ``scipy.ndimage.zoom(grid_mode=True)`` and nnU-Net's
  resizing): the new grid covers the same field of view, starting at the same point,
  with ``round(old_shape * old_spacing / new_spacing)`` voxels per axis. Downsampling
  by 2 therefore puts each new centre midway between two old centres; nearest
  neighbour breaks such exact ties towards the higher index, the same way everywhere.
- Orientation codes are written in the order NIfTI and ITK use, ``(x, y, z)``, i.e.
  for array axes ``(2, 1, 0)``: ``"RAS"`` means columns (axis 2) run towards the
  patient's Right, rows (axis 1) towards Anterior and slices (axis 0) towards Superior
  -- the same string ``nibabel.aff2axcodes`` gives for the equivalent NIfTI image.
  ``"LPS"`` is the DICOM patient frame.
- Outside the source field of view, resampling writes ``fill``; inside it (including
  the half voxel between the outermost centres and the edge) values come from the
  nearest edge voxel, so a grid never loses its border to the background.
- A sheared grid (a gantry-tilted CT: slices that step off their normal) keeps its shear
  through every function here except :func:`deskew`, which resamples it onto the
  orthogonal grid through the same slice planes; sizes in mm are
  :attr:`kseg.io.Volume.plane_spacing` (the distance between slice planes), not the
  column lengths of :attr:`kseg.io.Volume.spacing`.
- ``source_files`` is carried along as provenance: after :func:`crop_foreground` and
  :func:`reorient` it still names the file of each slice in array order when the slice
  axis survives, and so do the per-slice metadata of the DICOM readers
  (``sop_instance_uids``, ``instance_numbers``, ``frame_numbers``), cut or reversed with the
  slices, which the DICOM-SEG and RTSTRUCT writers reference; when the slice axis moves
  those are dropped. Resampling mixes slices, so its output lists every input file and
  holds no per-slice metadata (readers place a SEG or RTSTRUCT on it by position).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import scipy.ndimage
from nibabel import orientations

from kseg.errors import GeometryError, MaskError
from kseg.io.volume import Volume

__all__ = [
    "crop_foreground",
    "deskew",
    "match_grid",
    "orientation",
    "reorient",
    "resample",
    "resample_to",
    "to_original_grid",
    "uncrop",
]

BoundingBox = tuple[slice, slice, slice]

# Composing two float affines leaves ~1e-15 noise in the index map; nearest-neighbour
# ties at exact half-voxel positions (every 2x downsample has them) would then break one
# way at voxel 0 and the other way further along. Rounding the map removes the noise
# while moving a sample by far less than any meaningful fraction of a voxel.
_INDEX_MAP_DECIMALS = 10
# Tolerance, in voxels, for a sample on the edge of the source field of view to count
# as inside it.
_FIELD_OF_VIEW_TOLERANCE = 1e-6
_AXIS_PAIRS = ({"L", "R"}, {"A", "P"}, {"S", "I"})


def _source_of(volume: Volume) -> str | None:
    return volume.source_files[0] if volume.source_files else None


def _check_affine(affine, argument: str, source) -> np.ndarray:
    affine = np.asarray(affine, dtype=np.float64)
    if affine.shape != (4, 4):
        raise GeometryError(source, f"{argument} must be a 4x4 matrix, got shape {affine.shape}")
    if not np.allclose(affine[3], [0.0, 0.0, 0.0, 1.0]):
        raise GeometryError(source, f"{argument} must end in the row [0, 0, 0, 1]")
    if abs(np.linalg.det(affine[:3, :3])) < 1e-12:
        raise GeometryError(source, f"{argument} is singular: its voxels have no volume")
    return affine


def _check_shape(shape, argument: str, source) -> tuple[int, int, int]:
    values = tuple(shape)
    if len(values) != 3 or any(int(v) != v or v < 1 for v in values):
        raise GeometryError(
            source, f"{argument} must be three positive integers (z, y, x), got {values}"
        )
    return tuple(int(v) for v in values)


def _interpolation_order(order: int | None, is_label: bool, source) -> int:
    if order is None:
        return 0 if is_label else 1
    if is_label and order != 0:
        raise GeometryError(
            source,
            f"order={order} would blend label values; label maps are resampled with "
            "nearest neighbour (order=0 or leave order unset)",
        )
    if order not in range(6):
        raise GeometryError(source, f"order must be an integer 0..5 (spline order), got {order}")
    return order


def _check_fill(fill, dtype, source) -> None:
    with np.errstate(invalid="ignore", over="ignore"):
        stored = np.asarray(fill).astype(dtype)
    if not np.array_equal(stored, fill, equal_nan=True):
        raise GeometryError(source, f"fill={fill!r} cannot be stored in a {dtype} array")


# Metadata kseg's DICOM readers store as one value per slice, in array order (the SEG and
# RTSTRUCT writers reference each slice's image by them).
_PER_SLICE_METADATA = (
    "sop_instance_uids", "instance_numbers", "frame_numbers", "source_frame_numbers",
)  # fmt: skip


def _kept_slices(volume: Volume, index: slice | None) -> tuple[tuple[str, ...], dict]:
    """``source_files`` and metadata for ``volume.array[index]`` along the slice axis: the
    per-slice entries cut or reversed with the slices, so each still names its own slice's
    image; with ``index=None`` (the slice axis moved) every file once and no per-slice
    entries, which would otherwise name the images of other planes."""
    count = volume.shape[0]
    metadata = dict(volume.metadata)
    for key in _PER_SLICE_METADATA:
        values = metadata.get(key)
        if isinstance(values, (tuple, list)) and len(values) == count:
            if index is None:
                del metadata[key]
            else:
                metadata[key] = tuple(values[index])
    files = volume.source_files
    if len(files) == count and count > 1:
        files = _provenance_files(volume) if index is None else files[index]
    return files, metadata


def _provenance_files(volume: Volume) -> tuple[str, ...]:
    # A resampled slice mixes several input slices, so the per-slice reading of
    # source_files no longer holds; keep every file as provenance, each once.
    return tuple(dict.fromkeys(volume.source_files))


def _inside_field_of_view(index_map: np.ndarray, source_shape, target_shape) -> np.ndarray:
    """Which target voxels' centres fall inside the source grid's field of view."""
    matrix, offset = index_map[:3, :3], index_map[:3, 3]
    ks, js, is_ = (np.arange(n, dtype=np.float64) for n in target_shape)
    inside = np.ones(target_shape, dtype=bool)
    for axis, size in enumerate(source_shape):
        low, high = -0.5 - _FIELD_OF_VIEW_TOLERANCE, size - 0.5 + _FIELD_OF_VIEW_TOLERANCE
        # The source coordinate is separable: a term per target axis. Build the (j, i)
        # plane once and add the k term slice by slice, so memory stays one plane.
        plane = matrix[axis, 1] * js[:, None] + matrix[axis, 2] * is_[None, :] + offset[axis]
        for k in range(target_shape[0]):
            coordinate = plane + matrix[axis, 0] * ks[k]
            inside[k] &= (coordinate >= low) & (coordinate <= high)
    return inside


def resample_to(
    volume: Volume,
    reference_affine,
    reference_shape,
    *,
    is_label: bool = False,
    order: int | None = None,
    fill: float = 0,
) -> Volume:
    """Resample a volume onto any target grid given by an affine and a shape.

    Each target voxel centre is mapped to world space by ``reference_affine`` and back
    into the source's index space by the inverse of ``volume.affine``; the value there
    is interpolated with ``scipy.ndimage.affine_transform``. The grids may differ in
    spacing, origin, orientation and obliquity.

    Args:
        volume: the volume to resample.
        reference_affine: 4x4 affine of the target grid, index ``(k, j, i, 1)`` to RAS+ mm.
        reference_shape: shape ``(z, y, x)`` of the target grid.
        is_label: the array is a label map; it is resampled with nearest neighbour, so
            the output holds only values present in the input (and ``fill``).
        order: spline order, 0 (nearest) to 5; defaults to 1 (linear) for images and
            0 for label maps. Order 0 keeps the input dtype; higher orders return
            float32 (float64 for float64 input).
        fill: value of target voxels whose centre lies outside the source field of view.

    Returns:
        A Volume on the target grid, with the input's patient and metadata.

    Example:
        >>> import numpy as np
        >>> from kseg.io import Volume
        >>> pet = Volume(np.arange(8, dtype=np.float32).reshape(2, 2, 2),
        ...              np.diag([4.0, 4.0, 4.0, 1.0]), "p1")
        >>> ct_affine = np.diag([2.0, 2.0, 2.0, 1.0])
        >>> ct_affine[:3, 3] = -1.0
        >>> on_ct_grid = resample_to(pet, ct_affine, (4, 4, 4))
        >>> on_ct_grid.spacing
        (2.0, 2.0, 2.0)
        >>> on_ct_grid.array[:, 0, 0]  # PET centres at 0 and 4 mm; edge values held outside
        array([0., 1., 3., 4.], dtype=float32)

    Reference:
        Virtanen et al., "SciPy 1.0: fundamental algorithms for scientific computing in
        Python", Nature Methods 17, 2020 (``scipy.ndimage.affine_transform``).
    """
    source = _source_of(volume)
    target_affine = _check_affine(reference_affine, "reference_affine", source)
    target_shape = _check_shape(reference_shape, "reference_shape", source)
    source_affine = _check_affine(volume.affine, "volume.affine", source)
    order = _interpolation_order(order, is_label, source)

    index_map = np.round(np.linalg.solve(source_affine, target_affine), _INDEX_MAP_DECIMALS)
    array = np.asarray(volume.array)
    if order == 0:
        output_dtype = array.dtype
    else:
        output_dtype = np.float64 if array.dtype == np.float64 else np.float32
    _check_fill(fill, output_dtype, source)
    # scipy.ndimage has no half floats ("data type not supported"); float32 holds every
    # float16 value exactly, so nearest neighbour through it copies values unchanged
    half = array.dtype == np.float16
    if half:
        array = array.astype(np.float32)

    resampled = scipy.ndimage.affine_transform(
        array,
        index_map[:3, :3],
        offset=index_map[:3, 3],
        output_shape=target_shape,
        output=np.float32 if half else output_dtype,
        order=order,
        mode="nearest",
        prefilter=order > 1,
    )
    if resampled.dtype != output_dtype:
        resampled = resampled.astype(output_dtype)
    resampled[~_inside_field_of_view(index_map, array.shape, target_shape)] = fill
    _, metadata = _kept_slices(volume, None)  # new slices: no per-slice image references
    return dataclasses.replace(
        volume,
        array=resampled,
        affine=target_affine.copy(),
        source_files=_provenance_files(volume),
        metadata=metadata,
    )


def resample(
    volume: Volume,
    spacing,
    *,
    is_label: bool = False,
    order: int | None = None,
) -> Volume:
    """Resample a volume to a new voxel spacing, keeping its field of view.

    The new grid keeps the volume's axis directions; it has
    ``round(shape * old_spacing / spacing)`` voxels per axis (at least one; one more where
    coarsening would leave the last old voxel's centre outside it) and is centred on the old
    field of view, so every old voxel centre lies in the new field of view and every new
    centre in the old one: a label map resampled and mapped back (:func:`to_original_grid`)
    keeps its border planes. The new affine is ``directions * spacing``. Spacings are
    :attr:`~kseg.io.Volume.plane_spacing`: on a sheared grid the slice axis keeps its
    slant and ``spacing[0]`` is the distance between the new slice planes, the
    spacing a plan derives from the data (each affine column is scaled by
    ``spacing / plane_spacing``). Use :func:`deskew` first for an orthogonal grid.

    Args:
        volume: the volume to resample.
        spacing: target voxel size in mm along ``(z, y, x)``, or one number for all axes.
        is_label: the array is a label map: nearest neighbour, so no new label values.
        order: spline order, 0 (nearest) to 5; defaults to 1 (linear) for images and
            0 for label maps (see :func:`resample_to` for output dtypes).

    Returns:
        The resampled Volume.

    Raises:
        GeometryError: ``spacing`` is not one or three finite positive numbers, or gives a
            grid too large for memory; or the volume's affine is invalid.

    Example:
        >>> import numpy as np
        >>> from kseg.io import Volume
        >>> ct = Volume(np.zeros((10, 64, 64), np.int16), np.diag([3.0, 0.75, 0.75, 1.0]), "p1")
        >>> iso = resample(ct, 1.5)
        >>> iso.shape, iso.array.dtype
        ((20, 32, 32), dtype('float32'))
        >>> mask = ct.with_array(np.zeros(ct.shape, np.uint8))
        >>> resample(mask, 1.5, is_label=True).array.dtype
        dtype('uint8')

    Reference:
        Isensee et al., "nnU-Net: a self-configuring method for deep learning-based
        biomedical image segmentation", Nature Methods 18, 2021 (resampling to a common
        target spacing before training).
    """
    source = _source_of(volume)
    try:
        target_spacing = np.broadcast_to(np.asarray(spacing, dtype=np.float64), (3,)).copy()
    except (TypeError, ValueError):
        raise GeometryError(
            source, f"spacing must be one or three positive millimetres (z, y, x), got {spacing!r}"
        ) from None
    if not np.all(np.isfinite(target_spacing) & (target_spacing > 0)):
        raise GeometryError(source, f"spacing must be positive millimetres, got {spacing!r}")
    affine = _check_affine(volume.affine, "volume.affine", source)
    old_spacing = np.asarray(volume.plane_spacing)

    extent = np.asarray(volume.shape) * old_spacing
    # round(extent / spacing) voxels, or more where coarsening (a 0.8 mm slice to 2 mm)
    # would leave an old voxel's centre outside the new field of view
    new_counts = np.maximum(
        np.floor(extent / target_spacing + 0.5),
        np.ceil(np.round((extent - old_spacing) / target_spacing, 6)),
    )
    new_shape = tuple(max(1, int(n)) for n in new_counts)
    new_affine = np.eye(4)
    new_affine[:3, :3] = affine[:3, :3] * (target_spacing / old_spacing)
    first_corner = affine[:3, :3] @ np.full(3, -0.5) + affine[:3, 3]
    # centred on the old field of view: every new centre lies in the old field of view and
    # every old centre in the new one, so a label map resampled here and mapped back with
    # to_original_grid loses no voxel at the far border
    overhang = (np.asarray(new_shape) * target_spacing - extent) / 2
    new_affine[:3, 3] = first_corner + new_affine[:3, :3] @ (
        0.5 - overhang / target_spacing
    )
    try:
        return resample_to(volume, new_affine, new_shape, is_label=is_label, order=order)
    except MemoryError:
        raise GeometryError(
            source,
            f"spacing {tuple(target_spacing.tolist())} mm turns the {volume.shape} volume into "
            f"{new_shape} voxels, more than memory holds; is the spacing in millimetres?",
        ) from None


def deskew(
    volume: Volume, *, is_label: bool = False, order: int | None = None, fill: float = 0
) -> Volume:
    """Resample a sheared volume (a gantry-tilted CT) onto an orthogonal grid through the
    same slice planes.

    The new grid keeps the in-plane axes (row and column directions and spacings) and the
    position of every slice plane; its slice axis is the planes' normal, its slice spacing
    the distance between planes (:attr:`kseg.io.Volume.plane_spacing`). Each slice is only
    shifted within its own plane, so slices never mix: linear interpolation (images) or
    nearest neighbour (label maps) acts in-plane. The in-plane grid grows by the shear's
    total offset, so no voxel of the input falls outside it; new voxels outside the input's
    field of view get ``fill``. This is what dcm2niix does to gantry-tilted series; kseg's
    readers never do it behind the user's back. An orthogonal volume comes back on its own
    grid (values unchanged for labels and order 0 and 1). :func:`to_original_grid` brings a
    prediction made on the deskewed grid back to the sheared one.

    Args:
        volume: the sheared volume, e.g. from :func:`kseg.io.read_dicom_series` after a
            :class:`kseg.io.GantryTiltWarning`.
        is_label: the array is a label map: nearest neighbour, no new label values.
        order: spline order, see :func:`resample_to`.
        fill: value of new voxels outside the input's field of view (``-1024`` suits CT).

    Returns:
        The Volume on the orthogonal grid; ``spacing == plane_spacing`` there.

    Raises:
        GeometryError: the volume's affine is not a valid grid.

    Example:
        >>> import numpy as np
        >>> from kseg.io import Volume
        >>> tilted = np.array([[0.0, 0.0, -0.5, 0.0],  # each slice 0.5 mm further anterior
        ...                    [0.5, -0.5, 0.0, 0.0],
        ...                    [2.0, 0.0, 0.0, 0.0],
        ...                    [0.0, 0.0, 0.0, 1.0]])
        >>> ct = Volume(np.zeros((3, 4, 4), np.int16), tilted, "p1")
        >>> round(ct.spacing[0], 3), ct.plane_spacing
        (2.062, (2.0, 0.5, 0.5))
        >>> straight = deskew(ct, fill=-1024)
        >>> straight.shape, straight.spacing  # two more rows hold the shifted slices
        ((3, 6, 4), (2.0, 0.5, 0.5))

    Reference:
        Li X. et al., "The first step for neuroimaging data analysis: DICOM to NIfTI
        conversion", J Neurosci Methods 264 (2016) 47-56 (dcm2niix corrects gantry tilt).
    """
    source = _source_of(volume)
    affine = _check_affine(volume.affine, "volume.affine", source)
    columns = affine[:3, :3]
    normal = _slice_normal(columns)
    straight = columns.copy()
    straight[:, 0] = normal * volume.plane_spacing[0]
    # Slice k of the input sits at in-plane index offset k * shear on the straight grid.
    shear = np.round(np.linalg.solve(straight, columns[:, 0])[1:], _INDEX_MAP_DECIMALS)
    last = (volume.shape[0] - 1) * shear
    low = np.floor(np.minimum(last, 0.0) + _FIELD_OF_VIEW_TOLERANCE)
    high = np.ceil(np.maximum(last, 0.0) - _FIELD_OF_VIEW_TOLERANCE)
    target_affine = np.eye(4)
    target_affine[:3, :3] = straight
    target_affine[:3, 3] = affine[:3, 3] + straight[:, 1:] @ low
    target_shape = (volume.shape[0], *(np.asarray(volume.shape[1:]) + (high - low).astype(int)))
    return resample_to(volume, target_affine, target_shape, is_label=is_label, order=order,
                       fill=fill)


def _slice_normal(columns: np.ndarray) -> np.ndarray:
    """Unit normal of the slice planes of a grid whose 3×3 index-to-mm matrix is
    ``columns``, pointing the way the slice index grows."""
    normal = np.cross(columns[:, 1], columns[:, 2])
    normal /= np.linalg.norm(normal)
    return normal if normal @ columns[:, 0] >= 0 else -normal


def orientation(volume: Volume) -> str:
    """The closest axis codes of a volume, in ``(x, y, z)`` order (see module notes).

    Args:
        volume: any Volume.

    Returns:
        A three-letter string such as ``"RAS"`` or ``"LPS"``: the direction columns
        (axis 2), rows (axis 1) and slices (axis 0) run towards.

    Example:
        >>> import numpy as np
        >>> from kseg.io import Volume
        >>> lps = np.array([[0.0, 0.0, -0.7, 120.0],  # DICOM: columns to L, rows to P
        ...                 [0.0, -0.7, 0.0, 95.0],
        ...                 [2.5, 0.0, 0.0, -300.0],
        ...                 [0.0, 0.0, 0.0, 1.0]])
        >>> dicom_ct = Volume(np.zeros((3, 4, 5), np.int16), lps, "p1")
        >>> orientation(dicom_ct)
        'LPS'
    """
    return _axis_codes(_check_affine(volume.affine, "volume.affine", _source_of(volume)))


def _axis_codes(affine: np.ndarray) -> str:
    per_array_axis = orientations.ornt2axcodes(orientations.io_orientation(affine))
    return "".join(per_array_axis[::-1])


def reorient(volume: Volume, target: str = "RAS") -> Volume:
    """Permute and flip array axes so they run along the target axis codes.

    No interpolation happens: voxels are only moved, and the affine changes so that every
    voxel keeps its world position. ``reorient(reorient(v, "RAS"), orientation(v))``
    gives back ``v``'s array and affine. An oblique volume is brought to the closest
    axes and stays oblique.

    Args:
        volume: the volume to reorient.
        target: three axis codes in ``(x, y, z)`` order, one of each pair L/R, A/P, S/I;
            ``"RAS"`` puts columns towards Right, rows towards Anterior and slices
            towards Superior.

    Returns:
        The reoriented Volume (a copy; the input is untouched).

    Example:
        >>> import numpy as np
        >>> from kseg.io import Volume
        >>> lps = np.array([[0.0, 0.0, -0.7, 120.0],
        ...                 [0.0, -0.7, 0.0, 95.0],
        ...                 [2.5, 0.0, 0.0, -300.0],
        ...                 [0.0, 0.0, 0.0, 1.0]])
        >>> dicom_ct = Volume(np.arange(60, dtype=np.int16).reshape(3, 4, 5), lps, "p1")
        >>> ras = reorient(dicom_ct, "RAS")
        >>> orientation(ras), ras.shape, ras.origin  # origin: the voxel that is now first
        ('RAS', (3, 4, 5), (117.2, 92.9, -300.0))
        >>> back = reorient(ras, orientation(dicom_ct))
        >>> np.array_equal(back.array, dicom_ct.array), np.allclose(back.affine, lps)
        (True, True)

    Reference:
        Brett et al., nibabel (``nibabel.orientations``); NIfTI-1 data format, sform/qform
        orientation codes (https://nifti.nimh.nih.gov/nifti-1).
    """
    source = _source_of(volume)
    codes = target.upper() if isinstance(target, str) else target
    if (
        not isinstance(codes, str)
        or len(codes) != 3
        or any(len(pair & set(codes)) != 1 for pair in _AXIS_PAIRS)
    ):
        raise GeometryError(
            source, f"target must be three codes, one of each L/R, A/P, S/I, got {target!r}"
        )
    affine = _check_affine(volume.affine, "volume.affine", source)
    current = orientations.io_orientation(affine)
    # nibabel orientations describe array axes in order; ours are (z, y, x), so the
    # (x, y, z) code string is reversed before it is handed over.
    transform = orientations.ornt_transform(current, orientations.axcodes2ornt(codes[::-1]))
    array = np.array(orientations.apply_orientation(volume.array, transform), copy=True)
    new_affine = affine @ orientations.inv_ornt_aff(transform, volume.shape)

    new_slice_axis, flip = transform[0]
    files, metadata = _kept_slices(
        volume, None if new_slice_axis != 0 else slice(None, None, -1 if flip < 0 else 1)
    )
    return dataclasses.replace(
        volume, array=array, affine=new_affine, source_files=files, metadata=metadata
    )


def match_grid(volume: Volume, reference, *, tolerance_mm: float = 1e-3) -> Volume | None:
    """``volume`` moved onto ``reference``'s grid without interpolation, when the two grids
    are the same voxel centres stored in another axis order or direction; else ``None``.

    A label map written by another tool often sits on its image's voxels in another
    orientation (a NIfTI label in LAS beside the LPS DICOM series it was drawn on, or
    stored x-first): :func:`reorient` brings it to the reference's axes, and when the
    result has the reference's shape and affine (every entry within ``tolerance_mm``) it is
    the same lattice, returned with the reference's affine. Grids that differ in spacing,
    origin, extent or obliquity give ``None``: those need :func:`resample_to`, which the
    caller decides on.

    Args:
        volume: the volume to move (a label map, say).
        reference: a Volume, or its grid as an ``(affine, shape)`` pair.
        tolerance_mm: largest difference allowed between the two affines' entries.

    Returns:
        The Volume on ``reference``'s grid (``volume`` itself when it is there already), or
        ``None``.

    Example:
        >>> import numpy as np
        >>> from kseg.io import Volume
        >>> lps = np.array([[0.0, 0.0, -0.5, 20.0],
        ...                 [0.0, -0.5, 0.0, 10.0],
        ...                 [2.0, 0.0, 0.0, -30.0],
        ...                 [0.0, 0.0, 0.0, 1.0]])
        >>> ct = Volume(np.zeros((3, 4, 5), np.int16), lps, "p1")
        >>> label = reorient(ct.with_array(np.arange(60).reshape(3, 4, 5)), "RAS")
        >>> back = match_grid(label, ct)
        >>> np.array_equal(back.array, np.arange(60).reshape(3, 4, 5))
        True
        >>> match_grid(resample(label, 1.0, is_label=True), ct) is None
        True
    """
    if isinstance(reference, Volume):
        affine, shape = reference.affine, reference.shape
    else:
        affine, shape = reference
    affine = _check_affine(affine, "reference affine", _source_of(volume))
    shape = _check_shape(np.asarray(shape).ravel(), "reference shape", _source_of(volume))
    if volume.shape == shape and np.allclose(volume.affine, affine, rtol=0.0, atol=tolerance_mm):
        return volume
    if sorted(volume.shape) != sorted(shape):
        return None
    moved = reorient(volume, _axis_codes(affine))
    if moved.shape != shape or not np.allclose(moved.affine, affine, rtol=0.0, atol=tolerance_mm):
        return None
    return dataclasses.replace(moved, affine=affine.copy())


def _margins(margin, source) -> np.ndarray:
    values = np.broadcast_to(np.asarray(margin), (3,)) if np.ndim(margin) == 0 else margin
    values = np.asarray(values)
    if values.shape != (3,) or np.any(values < 0) or np.any(values != np.round(values)):
        raise GeometryError(
            source, f"margin must be a non-negative voxel count or three of them, got {margin!r}"
        )
    return values.astype(int)


def crop_foreground(
    volume: Volume,
    mask=None,
    *,
    margin=0,
    threshold: float | None = None,
) -> tuple[Volume, BoundingBox]:
    """Crop a volume to the bounding box of its foreground plus a margin.

    The foreground is ``mask != 0`` when a mask is given, else ``volume.array >
    threshold`` (``threshold`` defaults to 0). The box is widened by ``margin`` voxels on
    each side and clipped to the volume; the affine's origin moves to the box's first
    voxel, so every kept voxel keeps its world position.

    Args:
        volume: the volume to crop.
        mask: array (or Volume) on the volume's grid whose non-zero voxels are foreground;
            a Volume holding the same voxels in another axis order or direction is moved
            onto the volume's grid first (:func:`match_grid`).
        margin: voxels added on each side, one number or one per axis ``(z, y, x)``.
        threshold: intensity above which a voxel is foreground when no mask is given.

    Returns:
        ``(cropped, bbox)``: the cropped Volume (a copy) and the box as a tuple of three
        slices, so that ``cropped.array == volume.array[bbox]``; pass the box to
        :func:`uncrop` to paste a result back.

    Example:
        >>> import numpy as np
        >>> from kseg.io import Volume
        >>> ct = Volume(np.full((6, 8, 8), -1000, np.int16), np.eye(4), "p1")
        >>> ct.array[2:4, 3:5, 1:6] = 40
        >>> body, bbox = crop_foreground(ct, threshold=-500, margin=1)
        >>> bbox
        (slice(1, 5, None), slice(2, 6, None), slice(0, 7, None))
        >>> body.shape, body.origin
        ((4, 4, 7), (1.0, 2.0, 0.0))

    Reference:
        MONAI ``CropForeground`` (Cardoso et al., "MONAI: An open-source framework for
        deep learning in healthcare", arXiv:2211.02701, 2022).
    """
    source = _source_of(volume)
    if mask is not None and threshold is not None:
        raise GeometryError(source, "give either mask or threshold, not both")
    if mask is None:
        foreground = np.asarray(volume.array) > (0 if threshold is None else threshold)
    else:
        if isinstance(mask, Volume):
            matched = match_grid(mask, volume, tolerance_mm=1e-4)
            if matched is None:
                raise GeometryError(
                    _source_of(mask),
                    f"mask lies on a different grid (affine; shape {mask.shape}) from the "
                    f"volume ({volume.shape}), also with its axes reordered or flipped",
                )
            mask = matched.array
        foreground = np.asarray(mask) != 0
        if foreground.shape != volume.shape:
            raise GeometryError(
                source, f"mask shape {foreground.shape} differs from volume shape {volume.shape}"
            )
    if not foreground.any():
        raise MaskError(source, "nothing to crop to: the foreground is empty")

    widths = _margins(margin, source)
    bbox = []
    for axis in range(3):
        other_axes = tuple(a for a in range(3) if a != axis)
        present = np.flatnonzero(foreground.any(axis=other_axes))
        start = max(0, int(present[0]) - int(widths[axis]))
        stop = min(volume.shape[axis], int(present[-1]) + 1 + int(widths[axis]))
        bbox.append(slice(start, stop))
    bbox = tuple(bbox)

    new_affine = volume.affine.copy()
    first_index = np.array([s.start for s in bbox], dtype=np.float64)
    new_affine[:3, 3] = volume.affine[:3, :3] @ first_index + volume.affine[:3, 3]
    files, metadata = _kept_slices(volume, bbox[0])
    cropped = dataclasses.replace(
        volume,
        array=np.array(volume.array[bbox], copy=True),
        affine=new_affine,
        source_files=files,
        metadata=metadata,
    )
    return cropped, bbox


def uncrop(array, bbox: BoundingBox, original_shape, fill=0) -> np.ndarray:
    """Paste an array computed on a crop back into the full grid it was cut from.

    Args:
        array: values on the cropped grid, shape ``(z, y, x)`` or ``(z, y, x, ...)``
            (trailing axes such as class probabilities are kept).
        bbox: the box :func:`crop_foreground` returned.
        original_shape: the ``(z, y, x)`` shape of the uncropped volume.
        fill: value outside the box.

    Returns:
        A new array of shape ``original_shape + array.shape[3:]`` with ``array`` inside
        the box and ``fill`` elsewhere.

    Example:
        >>> import numpy as np
        >>> from kseg.io import Volume
        >>> ct = Volume(np.zeros((4, 6, 6), np.int16), np.eye(4), "p1")
        >>> ct.array[1:3, 2:4, 2:5] = 100
        >>> body, bbox = crop_foreground(ct)
        >>> prediction = (body.array > 50).astype(np.uint8)  # stands in for a model
        >>> full = uncrop(prediction, bbox, ct.shape)
        >>> full.shape, np.array_equal(full, ct.array > 50)
        ((4, 6, 6), True)
    """
    array = np.asarray(array)
    shape = _check_shape(original_shape, "original_shape", None)
    if len(bbox) != 3 or any(
        not isinstance(s, slice) or s.step not in (None, 1) or s.start is None or s.stop is None
        for s in bbox
    ):
        raise GeometryError(None, f"bbox must be three slices with start and stop, got {bbox!r}")
    box_shape = tuple(s.stop - s.start for s in bbox)
    if any(s.start < 0 or s.stop > n for s, n in zip(bbox, shape, strict=True)):
        raise GeometryError(None, f"bbox {bbox} does not fit in original_shape {shape}")
    if array.ndim < 3 or array.shape[:3] != box_shape:
        raise GeometryError(
            None, f"array of shape {array.shape} does not fill the box of shape {box_shape}"
        )
    _check_fill(fill, array.dtype, None)
    full = np.full(shape + array.shape[3:], fill, dtype=array.dtype)
    full[bbox] = array
    return full


def to_original_grid(
    prediction: Volume,
    original,
    *,
    is_label: bool = True,
    order: int | None = None,
    fill: float = 0,
) -> np.ndarray:
    """Map a prediction made on a preprocessed volume back onto the original grid.

    Works after any chain of :func:`resample`, :func:`resample_to`, :func:`reorient` and
    :func:`crop_foreground`, because each step's output carries its own affine: the
    prediction is resampled with :func:`resample_to` onto ``original``'s affine and
    shape. Voxels outside the prediction's field of view (cropped away) get ``fill``.
    Label maps round-trip exactly through steps that lose no voxel: reorienting,
    cropping, and resampling to a spacing that divides the original one by integers.

    Args:
        prediction: the prediction as a Volume on the preprocessed grid, e.g.
            ``preprocessed.with_array(labels)``; a boolean mask comes back as uint8.
        original: the volume the preprocessing started from (only its grid is used), or
            that grid as an ``(affine, shape)`` pair, e.g. the ``original_affine`` and
            ``original_shape`` a preprocessed ``msd_spleen`` example stores.
        is_label: the prediction is a label map (nearest neighbour); set False for
            probabilities or other continuous maps (linear by default).
        order: spline order, see :func:`resample_to`.
        fill: value outside the prediction's field of view.

    Returns:
        The prediction as an array of the original grid's shape.

    Raises:
        GeometryError: an affine or shape is not a valid grid.

    Example:
        >>> import numpy as np
        >>> from kseg.io import Volume
        >>> hu = np.full((4, 6, 6), -1000.0, np.float32)
        >>> hu[1:3, 2:5, 1:4] = 50.0
        >>> lps = np.array([[0.0, 0.0, -2.0, 0.0],
        ...                 [0.0, -2.0, 0.0, 0.0],
        ...                 [4.0, 0.0, 0.0, 0.0],
        ...                 [0.0, 0.0, 0.0, 1.0]])
        >>> ct = Volume(hu, lps, "p1")
        >>> fine = resample(reorient(ct, "RAS"), 1.0)
        >>> body, bbox = crop_foreground(fine, threshold=-500)
        >>> labels = (body.array > -500).astype(np.uint8)  # stands in for a model
        >>> on_ct = to_original_grid(body.with_array(labels), ct)
        >>> on_ct.shape, np.array_equal(on_ct, hu > -500)
        ((4, 6, 6), True)

        A preprocessed TFDS example stores its grids as arrays; the original grid is then
        given as an ``(affine, shape)`` pair:

        >>> on_file_grid = to_original_grid(Volume(labels, body.affine, "p1"),
        ...                                 (ct.affine, np.array(ct.shape)))
        >>> np.array_equal(on_file_grid, on_ct)
        True
    """
    if isinstance(original, Volume):
        affine, shape = original.affine, original.shape
    else:
        affine, shape = original
        shape = np.asarray(shape).ravel()
    if np.asarray(prediction.array).dtype == np.bool_:
        prediction = prediction.with_array(np.asarray(prediction.array, dtype=np.uint8))
    return resample_to(prediction, affine, shape, is_label=is_label, order=order, fill=fill).array
