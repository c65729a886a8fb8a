"""Label maps out as PNG stacks: one lossless grayscale PNG per slice, label values as pixel
values, the layout many challenges ship their masks in (CHAOS, JSRT) and
:func:`kseg.io.read_mask_stack` reads back.

Example:
    >>> import tempfile
    >>> labels = np.zeros((3, 4, 5), np.uint8)
    >>> labels[1, 1:3, 2:4] = 2
    >>> [p.name for p in write_png_stack(labels, tempfile.mkdtemp())]
    ['slice_0000.png', 'slice_0001.png', 'slice_0002.png']
"""

from __future__ import annotations

import os
import pathlib
from collections.abc import Sequence

import numpy as np
from PIL import Image

from kseg._files import atomic_output
from kseg.io.volume import Volume

__all__ = ["write_png_stack"]

_UINT16_MAX = np.iinfo(np.uint16).max


def write_png_stack(
    labels: np.ndarray | Volume,
    folder: os.PathLike | str,
    *,
    names: Sequence[str] | None = None,
) -> list[pathlib.Path]:
    """Write a ``(z, y, x)`` label map as one PNG per slice, label values as pixel values.

    Every slice is stored with the same bit depth: 8-bit grayscale (mode ``L``) when the
    largest label is at most 255, else 16-bit (mode ``I;16``), so a reader gets the labels
    themselves, not a display scaling. PNG is lossless: the files hold exactly the array.
    Each file is written atomically (temporary name in ``folder``, then renamed); ``folder``
    is created when missing, and files of the same names in it are replaced.

    Args:
        labels: integer (or boolean) label map ``(z, y, x)``, or a Volume holding one.
        folder: where the PNGs go.
        names: one file name per slice in array order (``".png"`` is appended unless the
            name ends in it), e.g. the source DICOM files' names; by default
            ``slice_0000.png``, ``slice_0001.png``, ... (zero-padded, so they sort in slice
            order).

    Returns:
        The written paths, in slice order.

    Raises:
        ValueError: ``labels`` is not 3D, not integral, negative or above 65535; ``names``
            has the wrong length, repeats a name (case-insensitively, for file systems that
            ignore case), or holds an empty name or one with a folder separator; a file
            would replace one of the Volume's source files.

    Example:
        >>> import tempfile
        >>> from pathlib import Path
        >>> import numpy as np
        >>> prediction = np.zeros((3, 4, 4), np.uint8)
        >>> paths = write_png_stack(prediction, Path(tempfile.mkdtemp()) / "pngs")
        >>> [Path(path).name for path in paths]
        ['slice_0000.png', 'slice_0001.png', 'slice_0002.png']

        Named after the DICOM files the slices came from (here a phantom LCTSC series):

        >>> from kseg.io import read_dicom_series
        >>> from kseg.phantoms.lctsc import write_lctsc
        >>> root = write_lctsc(tempfile.mkdtemp(), num_patients=1, num_test_patients=0,
        ...                    num_slices=4, size=32)
        >>> ct = read_dicom_series(next(root.glob("LCTSC/*/*/*-CT *")))
        >>> body = ct.array > -500  # a prediction on the series' grid
        >>> paths = write_png_stack(body, Path(tempfile.mkdtemp()) / "pngs",
        ...                         names=[Path(f).stem for f in ct.source_files])
        >>> [Path(path).name for path in paths]  # slice order: the files' names are scrambled
        ['1-001.png', '1-003.png', '1-004.png', '1-002.png']
    """
    sources = labels.source_files if isinstance(labels, Volume) else ()
    array = _label_array(labels.array if isinstance(labels, Volume) else labels)
    folder = pathlib.Path(folder)
    paths = [folder / name for name in _file_names(names, array.shape[0])]
    protected = {os.path.realpath(f) for f in sources}
    clash = next((p for p in paths if os.path.realpath(p) in protected), None)
    if clash is not None:
        raise ValueError(f"{clash}: is a source file of labels; it would be overwritten")
    dtype = np.uint8 if array.max(initial=0) <= 255 else np.uint16
    for path, plane in zip(paths, array, strict=True):
        image = Image.fromarray(np.ascontiguousarray(plane, dtype=dtype))
        with atomic_output(path) as temporary:
            image.save(temporary, format="PNG")
    return paths


def _label_array(labels) -> np.ndarray:
    array = np.asarray(labels)
    if array.ndim != 3:
        raise ValueError(
            f"labels must be a (z, y, x) label map, got shape {array.shape} (a single slice "
            "is labels[None])"
        )
    if array.dtype == np.bool_:
        return array.astype(np.uint8)
    if not np.issubdtype(array.dtype, np.integer):
        if not np.issubdtype(array.dtype, np.floating) or not np.all(array == np.round(array)):
            raise ValueError(f"labels must hold integer label values, got dtype {array.dtype}")
    if array.size and (array.min() < 0 or array.max() > _UINT16_MAX):
        raise ValueError(
            f"labels must lie in 0..{_UINT16_MAX} to be stored as PNG values, got "
            f"{array.min()}..{array.max()}"
        )
    return array


def _file_names(names, slices: int) -> list[str]:
    if names is None:
        width = max(4, len(str(slices - 1)))
        return [f"slice_{k:0{width}d}.png" for k in range(slices)]
    if isinstance(names, (str, os.PathLike)):
        raise ValueError("names must be a sequence of file names, one per slice, not one name")
    names = [str(name) for name in names]
    if len(names) != slices:
        raise ValueError(f"names has {len(names)} entries for {slices} slices")
    bad = [name for name in names if not name.strip() or name in (".", "..") or any(
        separator in name for separator in ("/", "\\", os.sep)
    )]
    if bad:
        raise ValueError(f"names must be plain file names, got {bad[0]!r}")
    files = [name if name.lower().endswith(".png") else f"{name}.png" for name in names]
    seen: dict[str, int] = {}
    for k, name in enumerate(files):
        if name.casefold() in seen:
            raise ValueError(
                f"names gives slices {seen[name.casefold()]} and {k} the same file {name!r}"
            )
        seen[name.casefold()] = k
    return files
