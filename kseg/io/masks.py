"""Readers for segmentation masks stored as 2D images (one file per slice or per radiograph).

Lossless formats (PNG 8/16-bit, TIFF, BMP, GIF) are returned with their stored values, so a
label encoding such as CHAOS MR's grey levels survives and is decoded explicitly by
``map_label_ranges``. JPEG is lossy: edges and flat regions pick up compression noise, so a
JPEG mask is thresholded at half its maximum into ``{0, 1}`` and a LossyMaskWarning names the
file. nnU-Net refuses lossy masks outright (``natural_image_reader_writer.py``); kseg accepts
them with the warning because some public challenge sets only ship JPG masks.

Pillow is the only image library used.

Reference:
    Isensee F. et al., "nnU-Net: a self-configuring method for deep learning-based biomedical
    image segmentation", Nature Methods 18 (2021) 203-211.
    Kavur A. E. et al., "CHAOS Challenge - combined (CT-MR) healthy abdominal organ
    segmentation", Medical Image Analysis 69 (2021) 101950 (MR label grey levels).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping, Sequence

import numpy as np
from PIL import Image, UnidentifiedImageError

from kseg.errors import MaskError, UnreadableFileError

__all__ = [
    "CHAOS_MR_LABEL_RANGES",
    "LossyMaskWarning",
    "apply_value_ranges",
    "binarize",
    "map_label_ranges",
    "read_mask",
    "read_mask_stack",
]

# CHAOS MR ground truth stores organs as grey levels 63 / 126 / 189 / 252; resampled or
# re-saved masks drift around them, hence ranges (the ones nnU-Net's CHAOS converter uses).
CHAOS_MR_LABEL_RANGES: dict[int, tuple[int, int]] = {
    1: (55, 70),  # liver, stored 63
    2: (110, 135),  # right kidney, stored 126
    3: (175, 200),  # left kidney, stored 189
    4: (240, 255),  # spleen, stored 252
}

_LOSSY_FORMATS = frozenset({"JPEG", "MPO"})


class LossyMaskWarning(UserWarning):
    """A mask was stored in a lossy format (JPEG) and had to be thresholded.

    Rule: the mask is converted to grey, then every pixel above half of the image's maximum
    becomes 1 and the rest 0 (an all-zero image stays all zero). This is only right for
    binary masks; a multi-label mask saved as JPEG cannot be recovered reliably.
    """


def read_mask(path: os.PathLike | str) -> np.ndarray:
    """Read one 2D mask image.

    Args:
        path: PNG (8 or 16 bit), TIFF, BMP or GIF file; JPEG is accepted with a warning.

    Returns:
        2D array ``(rows, columns)``. Lossless files keep their stored values: uint8 for
        8-bit images, uint16 for 16-bit ones, palette images give their palette indices,
        bilevel images give ``{0, 1}``; an RGB(A) image whose three channels are equal gives
        that channel (alpha is ignored). JPEG files give uint8 ``{0, 1}`` thresholded at half
        their maximum (see LossyMaskWarning).

    Raises:
        UnreadableFileError: the file cannot be opened or decoded as an image.
        MaskError: the image has several pages/frames, real colour, or non-integer values.

    Warns:
        LossyMaskWarning: the file is a JPEG.

    Example:
        >>> mask = read_mask("Train_Sets/CT/1/Ground/liver_GT_045.png")  # doctest: +SKIP
        >>> np.unique(mask)  # doctest: +SKIP
        array([  0, 255], dtype=uint8)
    """
    path = os.fspath(path)
    try:
        with Image.open(path) as image:
            image.load()
            if getattr(image, "n_frames", 1) != 1:
                raise MaskError(path, f"has {image.n_frames} frames; expected one 2D mask")
            if image.format in _LOSSY_FORMATS:
                return _threshold_lossy(path, np.asarray(image.convert("L")))
            return _lossless_values(path, image)
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:
        raise UnreadableFileError(path, f"cannot be read as a mask image ({exc})") from exc


def read_mask_stack(
    paths: Sequence[os.PathLike | str], *, expected_shape: Sequence[int] | None = None
) -> np.ndarray:
    """Read one mask per slice and stack them in the given order into ``(z, y, x)``.

    The order of ``paths`` is kept: pairing masks with image slices is the caller's job (for
    CHAOS see the dataset's README: masks follow the sorted file names).

    Args:
        paths: mask files, one per slice, in array order.
        expected_shape: ``(rows, columns)`` every slice must have, or ``(slices, rows,
            columns)`` to also check the number of files; by default the first file's shape.

    Returns:
        Array ``(len(paths), rows, columns)`` of the common dtype of the slices.

    Raises:
        MaskError: no paths, the wrong number of files, or a slice whose shape differs (the
            message names it and the expected shape).

    Example:
        >>> stack = read_mask_stack(sorted(Path("Ground").glob("*.png")))  # doctest: +SKIP
    """
    paths = [os.fspath(p) for p in paths]
    if not paths:
        raise MaskError(None, "read_mask_stack got no mask files")
    if expected_shape is not None:
        expected_shape = tuple(int(n) for n in expected_shape)
        if len(expected_shape) == 3:
            if expected_shape[0] != len(paths):
                folder = os.path.dirname(paths[0])
                raise MaskError(
                    folder, f"{len(paths)} mask files, expected {expected_shape[0]} slices"
                )
            expected_shape = expected_shape[1:]
        elif len(expected_shape) != 2:
            raise MaskError(None, f"expected_shape must have 2 or 3 entries, got {expected_shape}")
    slices = []
    for path in paths:
        mask = read_mask(path)
        if expected_shape is None:
            expected_shape = mask.shape
        if mask.shape != expected_shape:
            raise MaskError(
                path,
                f"is {mask.shape[0]}x{mask.shape[1]}, expected {expected_shape[0]}x"
                f"{expected_shape[1]} like the other slices",
            )
        slices.append(mask)
    return np.stack(slices)


def apply_value_ranges(mask: np.ndarray, ranges, *, source=None) -> np.ndarray:
    """Map stored mask values to labels by inclusive ``(low, high, label)`` ranges.

    Args:
        mask: stored values, any shape.
        ranges: ``(low, high, label)`` triples that do not overlap; together they must
            cover every stored value (background too, as a range for label 0).
        source: the file, named in errors.

    Returns:
        ``uint8`` label map.

    Raises:
        MaskError: a value is in no range (the message lists values and pixel counts).

    Example:
        >>> apply_value_ranges(np.array([0, 100, 200, 255]), ((0, 127, 0), (128, 255, 1)))
        array([0, 0, 1, 1], dtype=uint8)
    """
    mask = np.asarray(mask)
    labels = np.zeros(mask.shape, dtype=np.uint8)
    covered = np.zeros(mask.shape, dtype=bool)
    for low, high, label in ranges:
        inside = (mask >= low) & (mask <= high)
        labels[inside] = label
        covered |= inside
    if not covered.all():
        values, counts = np.unique(mask[~covered], return_counts=True)
        listed = ", ".join(f"{v:g} ({c} px)" for v, c in zip(values[:10], counts[:10], strict=True))
        more = f" and {len(values) - 10} more values" if len(values) > 10 else ""
        raise MaskError(source, f"values in no range of {tuple(ranges)}: {listed}{more}")
    return labels


def map_label_ranges(
    mask: np.ndarray,
    ranges: Mapping[int, tuple[float, float]],
    *,
    background: float = 0,
    source: os.PathLike | str | None = None,
) -> np.ndarray:
    """Turn a grey-level label encoding into a label map ``0..C``.

    Args:
        mask: stored mask values, any shape.
        ranges: label -> inclusive ``(low, high)`` range of stored values, e.g.
            ``CHAOS_MR_LABEL_RANGES``. Labels must be 1..255 and ranges must not overlap.
        background: the stored value of background, mapped to 0.
        source: file the mask came from, named in errors.

    Returns:
        uint8 array of the same shape: 0 for background, the label inside its range.

    Raises:
        MaskError: a value is neither background nor inside a range (the message lists the
            values and their pixel counts), or the ranges are invalid.

    Example:
        >>> map_label_ranges(np.array([[0, 63], [126, 252]]), CHAOS_MR_LABEL_RANGES)
        array([[0, 1],
               [2, 4]], dtype=uint8)
    """
    mask = np.asarray(mask)
    spans = sorted((float(low), float(high), int(label)) for label, (low, high) in ranges.items())
    for low, high, label in spans:
        if not 1 <= label <= 255 or low > high:
            raise MaskError(source, f"invalid label range {label}: ({low}, {high})")
    for (_, high, label), (low, _, next_label) in zip(spans, spans[1:], strict=False):
        if low <= high:
            raise MaskError(source, f"label ranges {label} and {next_label} overlap")
    return apply_value_ranges(mask, [(background, background, 0), *spans], source=source)


def binarize(mask: np.ndarray, threshold: float | None = None) -> np.ndarray:
    """``{0, 1}`` uint8 mask: 1 where ``mask > threshold``.

    Args:
        mask: stored mask values, any shape.
        threshold: cut-off; by default half of the mask's maximum, so 0/255 masks with
            interpolated edges split at 127.5 and 0/1 masks at 0.5. An all-zero mask stays 0.

    Example:
        >>> binarize(np.array([0, 100, 128, 255], np.uint8))
        array([0, 0, 1, 1], dtype=uint8)
    """
    mask = np.asarray(mask)
    if threshold is None:
        threshold = float(mask.max()) / 2.0 if mask.size else 0.0
    return (mask > threshold).astype(np.uint8)


def _threshold_lossy(path: str, grey: np.ndarray) -> np.ndarray:
    warnings.warn(
        LossyMaskWarning(
            f"{path}: JPEG mask is lossy; thresholded at half its maximum "
            f"({float(grey.max()) / 2:g}) into {{0, 1}}. Store masks as PNG to avoid this."
        ),
        stacklevel=3,
    )
    return binarize(grey)


def _lossless_values(path: str, image: Image.Image) -> np.ndarray:
    mode = image.mode
    if mode == "1":
        return np.array(image, dtype=np.uint8)
    if mode in ("L", "P", "I;16", "I;16B", "I;16L"):
        values = np.array(image)
        return values.astype(np.uint16) if values.dtype.itemsize == 2 else values
    if mode == "LA":
        return np.array(image)[..., 0]
    if mode in ("RGB", "RGBA"):
        channels = np.array(image)[..., :3]
        if not (
            np.array_equal(channels[..., 0], channels[..., 1])
            and np.array_equal(channels[..., 0], channels[..., 2])
        ):
            raise MaskError(path, "is a colour image; expected a single-channel label image")
        return channels[..., 0]
    if mode in ("I", "F"):
        values = np.array(image)
        if not np.array_equal(values, np.round(values)) or values.min() < 0:
            raise MaskError(path, f"holds non-integer or negative values (mode {mode})")
        if values.max() <= np.iinfo(np.uint16).max:
            return values.astype(np.uint16)
        return values.astype(np.uint32)
    raise MaskError(path, f"has image mode {mode}; expected a grey-level or palette mask")
