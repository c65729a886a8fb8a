"""Pre-converted masks: a 3D ``.npz`` label map beside a DICOM series, aligned by evidence.

Projects that converted LCTSC before training often kept, per case, the DICOM folder and a
3D mask saved with ``numpy.savez``. Such masks were written in whatever slice order the
converter used (file-name order, InstanceNumber order, head first or feet first) and
sometimes with rows or columns flipped (NIfTI or image-library conventions) or swapped (a
``(z, x, y)`` array: nibabel's ``(x, y, z)`` moved slice-first with ``transpose(2, 0, 1)``,
or rt-utils' ``(y, x, z)`` mask with ``.T``), so the index ``k`` of the mask need not be
the slice ``k`` of the volume that :func:`~kseg.io.read_dicom_series` returns in ascending
position order. Nothing in an npz file records its orientation; only the image can tell.

Accepted layout: an ``.npz`` holding one ``uint8``-compatible integer array under the key
``mask`` (or, when the archive holds a single array, under any key, e.g. ``arr_0`` from
``numpy.savez(path, mask)``), of shape ``(z, y, x)`` equal to the DICOM volume's shape (or
``(z, x, y)``, rows and columns swapped), with
values ``{0, 1}`` (lungs) or the LCTSC classes ``0..5`` (0 background, 1 lung_left,
2 lung_right, 3 heart, 4 esophagus, 5 spinal_cord).

:func:`align_mask_to_volume` tries the eight ways of reversing the ``z``, ``y`` and ``x``
axes, each also after swapping the stored rows and columns (when the shapes allow it: always
for square slices), and scores how well each explains the CT:

* the lung labels (air labels) should lie on air inside the body: the score term is the
  fraction of their voxels below -400 HU inside the body (the body is everything above
  -300 HU with its holes filled, slice by slice, so air outside the patient never counts
  as lung). The mask's voxel count is the same for every candidate, so this ranks the
  candidates as the Dice overlap with the body's air would, without being diluted by bowel
  gas in the slices below the lungs;
* every soft-tissue label (heart, esophagus, spinal cord) should lie on soft tissue: the
  term is the fraction of its voxels between -250 and 350 HU.

The score is the mean of the lung term and the mean of the soft-tissue terms (or the one of
the two that the mask gives evidence for): lungs show z reversals and y flips, which tube-like
organs such as the spinal cord cannot; the heart shows x flips, which the nearly symmetric
lungs show only weakly.
An orientation is accepted only when it scores at least ``MIN_SCORE``, beats every other by
``MIN_GAP``, and leaves at most half the disagreement (``1 - score``) of the runner-up;
otherwise :class:`~kseg.errors.AlignmentError` names the file and every score. A mask that is
symmetric under a flip (or empty) is refused: the data cannot say which way it goes.

Example:
    >>> alignment = read_aligned_npz_mask("LCTSC-Train-S1-001/mask.npz", ct)  # doctest: +SKIP
    >>> alignment.flipped_axes, round(alignment.scores[alignment.flipped_axes], 3)  # doctest: +SKIP
    (('z',), 0.962)
"""

from __future__ import annotations

import dataclasses
import itertools
import os

import numpy as np
from scipy import ndimage

from kseg.errors import AlignmentError, MaskError, UnreadableFileError
from kseg.io._pointer_files import pointer_note
from kseg.io.volume import Volume

__all__ = [
    "MaskAlignment",
    "align_mask_to_volume",
    "read_aligned_npz_mask",
    "read_npz_mask",
]

NPZ_MASK_KEY = "mask"
# LCTSC class ids: lungs are air, heart / esophagus / spinal cord soft tissue. A binary
# lungs mask (value 1) fits the same table.
AIR_LABELS = (1, 2)
SOFT_TISSUE_LABELS = (3, 4, 5)
# Hounsfield thresholds: lung parenchyma lies around -850, fat around -100, soft tissue
# 0-100 (contrast-enhanced blood up to about 300).
BODY_THRESHOLD_HU = -300.0
AIR_THRESHOLD_HU = -400.0
SOFT_TISSUE_RANGE_HU = (-250.0, 350.0)
# Acceptance rule, see the module docstring.
MIN_SCORE = 0.5
MIN_GAP = 0.05
MIN_DISAGREEMENT_RATIO = 2.0

_AXES = ("z", "y", "x")
CANDIDATE_FLIPS = tuple(
    tuple(axis for axis, flipped in zip(_AXES, chosen, strict=True) if flipped)
    for chosen in itertools.product((False, True), repeat=3)
)


@dataclasses.dataclass(frozen=True)
class MaskAlignment:
    """A mask put on its volume's grid, with the evidence for the orientation chosen.

    Attributes:
        mask: ``uint8`` ``(z, y, x)`` array on the volume's grid.
        flipped_axes: axes the stored mask was reversed along to fit (after the swap, if
            ``transposed``), e.g. ``()`` or ``("z", "y")``.
        scores: score of every candidate, keyed by its flipped axes, preceded by
            ``"transposed"`` for the candidates that swap rows and columns first.
        transposed: the stored mask's rows and columns were swapped (stored ``(z, x, y)``).
    """

    mask: np.ndarray
    flipped_axes: tuple[str, ...]
    scores: dict[tuple[str, ...], float]
    transposed: bool = False


def read_npz_mask(path: os.PathLike | str, *, key: str | None = None) -> np.ndarray:
    """Read the 3D mask stored in an ``.npz`` file, as stored (no alignment).

    Args:
        path: the ``.npz`` file.
        key: the array to read; by default ``"mask"``, or the only array of the archive.

    Returns:
        ``uint8`` array of shape ``(z, y, x)``.

    Raises:
        UnreadableFileError: not an npz archive, no array under the key (the message
            lists the keys present), or a member that is not a ``.npy`` array (object
            arrays and pickles are refused, never unpickled).
        MaskError: not 3D, an empty dimension, not integer, or values outside ``0..255``.

    Example:
        >>> import tempfile
        >>> from kseg.phantoms.lctsc import write_lctsc_npz
        >>> root = write_lctsc_npz(tempfile.mkdtemp(), num_patients=1, num_slices=8, size=32)
        >>> mask = read_npz_mask(root / "LCTSC-Train-S1-001" / "mask.npz")
        >>> mask.shape, mask.dtype
        ((8, 32, 32), dtype('uint8'))
    """
    path = os.fspath(path)
    try:
        # An open handle rather than a path: TFDS' builder tests accept only file objects.
        with open(path, "rb") as handle:
            loaded = np.load(handle, allow_pickle=False)
            if not hasattr(loaded, "files"):
                keys = None
            else:
                with loaded as archive:
                    keys = list(archive.files)
                    if key is None:
                        only = keys[0] if len(keys) == 1 else NPZ_MASK_KEY
                        key = NPZ_MASK_KEY if NPZ_MASK_KEY in keys else only
                    array = archive[key] if key in keys else None
    except MemoryError as exc:  # an npy header declaring an impossible shape
        raise UnreadableFileError(
            path, f"declares an array larger than memory ({exc}); the archive is damaged"
        ) from exc
    except Exception as exc:  # OSError, ValueError, BadZipFile, EOFError, zlib.error, ...
        raise UnreadableFileError(
            path, f"cannot be read as an npz archive ({exc}){pointer_note(path)}"
        ) from exc
    if keys is None:
        raise UnreadableFileError(path, "expected an .npz archive, got a single .npy array")
    if array is None:
        raise UnreadableFileError(
            path, f"no array {key!r} in the archive; keys present: {keys or 'none'}"
        )
    if not isinstance(array, np.ndarray):
        # numpy returns the raw bytes of a member not named *.npy (a pickle, say)
        raise UnreadableFileError(
            path, f"member {key!r} is not a .npy array ({type(array).__name__}); not loaded"
        )
    if array.ndim != 3:
        raise MaskError(path, f"expected a 3D (z, y, x) mask under {key!r}, got {array.shape}")
    if 0 in array.shape:
        raise MaskError(path, f"the mask under {key!r} has an empty dimension {array.shape}")
    if array.dtype == bool:
        return array.astype(np.uint8)
    if not np.issubdtype(array.dtype, np.integer) and not (
        np.issubdtype(array.dtype, np.floating) and np.array_equal(array, np.round(array))
    ):
        raise MaskError(path, f"expected integer labels under {key!r}, got dtype {array.dtype}")
    if array.size and (array.min() < 0 or array.max() > 255):
        raise MaskError(
            path, f"labels must lie in 0..255, got {array.min()}..{array.max()} under {key!r}"
        )
    return array.astype(np.uint8)


def align_mask_to_volume(
    mask: np.ndarray,
    volume: Volume,
    *,
    source: os.PathLike | str | None = None,
    air_labels: tuple[int, ...] = AIR_LABELS,
    soft_tissue_labels: tuple[int, ...] = SOFT_TISSUE_LABELS,
) -> MaskAlignment:
    """Find which axes of a stored mask are reversed against a CT volume, and undo it.

    Args:
        mask: integer ``(z, y, x)`` mask of the volume's shape, as stored (or ``(z, x, y)``).
        volume: the CT volume in Hounsfield units.
        source: the mask file, named in errors.
        air_labels: labels that must lie on air inside the body (lungs).
        soft_tissue_labels: labels that must lie on soft tissue.

    Returns:
        :class:`MaskAlignment` with the mask on the volume's grid.

    Raises:
        TypeError: ``volume`` is not a :class:`~kseg.io.Volume`.
        AlignmentError: the shapes differ (also with rows and columns swapped); the mask
            holds no air or soft-tissue label (no
            evidence); no candidate scores ``MIN_SCORE``; or the best candidate does not
            beat the runner-up clearly. The message names the file and lists every score.

    Example:
        >>> import tempfile
        >>> from kseg.io import read_dicom_series
        >>> from kseg.phantoms.lctsc import write_lctsc_npz
        >>> root = write_lctsc_npz(tempfile.mkdtemp(), num_patients=1, num_slices=8, size=32)
        >>> patient = root / "LCTSC-Train-S1-001"  # the layout of LCTSC's npz release
        >>> ct = read_dicom_series(patient / "dicom")
        >>> truth = read_npz_mask(patient / "mask.npz")  # stored in the CT's slice order
        >>> stored = truth[::-1]
        >>> align_mask_to_volume(stored, ct).flipped_axes
        ('z',)
    """
    where = os.fspath(source) if source is not None else "mask"
    if not isinstance(volume, Volume):
        raise TypeError(
            "volume must be the kseg.io.Volume of the CT the mask belongs to (e.g. from "
            f"read_dicom_series), got {type(volume).__name__}"
        )
    mask = np.asarray(mask)
    # as stored, and with rows and columns swapped (a (z, x, y) array), where the shape fits
    swapped = np.swapaxes(mask, 1, 2) if mask.ndim == 3 else mask
    layouts = [
        (transposed, stored)
        for transposed, stored in ((False, mask), (True, swapped))
        if stored.shape == volume.shape and (not transposed or mask.ndim == 3)
    ]
    if not layouts:
        raise AlignmentError(
            where,
            f"mask shape {mask.shape} differs from the CT volume's {volume.shape} "
            f"({volume.source_files[0] if volume.source_files else 'volume'}); only flips "
            "and a swap of rows and columns can be undone",
        )
    air = np.isin(mask, air_labels)
    soft = [label for label in soft_tissue_labels if np.any(mask == label)]
    if not air.any() and not soft:
        raise AlignmentError(
            where,
            f"holds no air label {air_labels} and no soft-tissue label {soft_tissue_labels} "
            f"(values present: {np.unique(mask).tolist()}): there is no evidence of its "
            "orientation, so it cannot be aligned safely",
        )
    hu = np.asarray(volume.array)
    in_plane = np.zeros((3, 3, 3), dtype=bool)
    in_plane[1] = ndimage.generate_binary_structure(2, 1)
    body = ndimage.binary_fill_holes(hu > BODY_THRESHOLD_HU, structure=in_plane)
    body_air = body & (hu < AIR_THRESHOLD_HU)
    soft_hu = (hu >= SOFT_TISSUE_RANGE_HU[0]) & (hu <= SOFT_TISSUE_RANGE_HU[1])
    air_count = np.count_nonzero(air)

    scores, candidates = {}, {}
    for transposed, stored in layouts:
        stored_air = np.isin(stored, air_labels)
        soft_masks = [stored == label for label in soft]
        for flips in CANDIDATE_FLIPS:
            axes = tuple(_AXES.index(axis) for axis in flips)
            terms = []
            if air.any():
                on_air = np.count_nonzero(np.flip(stored_air, axis=axes) & body_air)
                terms.append(on_air / air_count)
            if soft_masks:
                fractions = [
                    np.count_nonzero(np.flip(label_mask, axis=axes) & soft_hu)
                    / np.count_nonzero(label_mask)
                    for label_mask in soft_masks
                ]
                terms.append(float(np.mean(fractions)))
            key = ("transposed", *flips) if transposed else flips
            scores[key] = float(np.mean(terms))
            candidates[key] = (transposed, stored, flips, axes)

    ranked = sorted(scores, key=scores.get, reverse=True)
    best, runner_up = ranked[0], ranked[1]
    best_score, second_score = scores[best], scores[runner_up]
    clear = (
        best_score >= MIN_SCORE
        and best_score - second_score >= MIN_GAP
        and (1.0 - second_score) >= MIN_DISAGREEMENT_RATIO * (1.0 - best_score)
    )
    if not clear:
        listing = ", ".join(f"{_describe(flips)}: {scores[flips]:.3f}" for flips in ranked)
        reason = (
            f"no orientation fits the CT (best {best_score:.3f} < {MIN_SCORE})"
            if best_score < MIN_SCORE
            else f"{_describe(best)} ({best_score:.3f}) does not clearly beat "
            f"{_describe(runner_up)} ({second_score:.3f})"
        )
        raise AlignmentError(
            where,
            f"cannot tell how the mask is oriented against the CT volume: {reason}; scores "
            f"(agreement of lung labels with air inside the body, of other labels with soft "
            f"tissue): {listing}. Refusing rather than risking a misaligned mask",
        )
    transposed, stored, flips, axes = candidates[best]
    aligned = np.ascontiguousarray(np.flip(stored, axis=axes)).astype(np.uint8)
    return MaskAlignment(mask=aligned, flipped_axes=flips, scores=scores, transposed=transposed)


def read_aligned_npz_mask(
    path: os.PathLike | str,
    volume: Volume,
    *,
    key: str | None = None,
    air_labels: tuple[int, ...] = AIR_LABELS,
    soft_tissue_labels: tuple[int, ...] = SOFT_TISSUE_LABELS,
) -> MaskAlignment:
    """Read an npz mask and align it to its CT volume (:func:`read_npz_mask` then
    :func:`align_mask_to_volume`).

    Args:
        path: the ``.npz`` file.
        volume: the CT series of the case, from :func:`~kseg.io.read_dicom_series`.
        key: the array to read, see :func:`read_npz_mask`.
        air_labels, soft_tissue_labels: see :func:`align_mask_to_volume`.

    Returns:
        :class:`MaskAlignment`.

    Raises:
        UnreadableFileError, MaskError: see :func:`read_npz_mask`.
        TypeError, AlignmentError: see :func:`align_mask_to_volume`.

    Example:
        >>> import tempfile
        >>> from kseg.io import read_dicom_series
        >>> from kseg.phantoms.lctsc import write_lctsc_npz
        >>> root = write_lctsc_npz(tempfile.mkdtemp(), num_patients=1, num_slices=8, size=32)
        >>> patient = root / "LCTSC-Train-S1-001"  # the layout of LCTSC's npz release
        >>> ct = read_dicom_series(patient / "dicom")
        >>> alignment = read_aligned_npz_mask(patient / "mask.npz", ct)
        >>> alignment.mask.shape, alignment.flipped_axes
        ((8, 32, 32), ())
    """
    stored = read_npz_mask(path, key=key)
    return align_mask_to_volume(
        stored,
        volume,
        source=path,
        air_labels=air_labels,
        soft_tissue_labels=soft_tissue_labels,
    )


def _describe(key: tuple[str, ...]) -> str:
    if key[:1] == ("transposed",):
        flips = key[1:]
        return "rows and columns swapped" + (f", reversed {'+'.join(flips)}" if flips else "")
    return "as stored" if not key else "reversed " + "+".join(key)
