"""Readers for segmentation masks stored as 2D images (one file per slice or per radiograph).

:func:`read_labels` is what dataset builders use: it turns one mask file into labels from the
file's own mode and value set, given the dataset's :class:`LabelRule`, so a 1-bit PNG, an
8-bit 0/255 or 0/1 PNG, a 16-bit PNG, a palette GIF or a grey RGB PNG of the same mask all
give the same labels, and a file whose values fit no reading of the rule is a MaskError
naming it and the values found (never a silently empty mask).

:func:`read_mask` returns the stored values themselves. Lossless formats (PNG 8/16-bit,
TIFF, BMP, GIF) keep their values, so a label encoding such as CHAOS MR's grey levels
survives and can be decoded explicitly by ``map_label_ranges``. JPEG is lossy: edges and
flat regions pick up compression noise, so a JPEG mask is thresholded into ``{0, 1}`` and a
LossyMaskWarning names the file. nnU-Net refuses lossy masks outright
(``natural_image_reader_writer.py``); kseg accepts binary ones with the warning because some
public challenge sets only ship JPG masks.

Pillow is the only image library used.

Reference:
    Isensee F. et al., "nnU-Net: a self-configuring method for deep learning-based biomedical
    image segmentation", Nature Methods 18 (2021) 203-211.
    Kavur A. E. et al., "CHAOS Challenge - combined (CT-MR) healthy abdominal organ
    segmentation", Medical Image Analysis 69 (2021) 101950 (MR label grey levels).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import warnings
from collections.abc import Mapping, Sequence

import numpy as np
from PIL import Image, ImageOps

from kseg.errors import MaskError
from kseg.io.image_files import (
    decoded_image,
    is_lossy,
    jpeg_2000_stored,
    netpbm_stored,
    tiff_white_is_zero,
    upright,
    value_counts,
)

__all__ = [
    "CHAOS_MR_LABEL_RANGES",
    "LabelRule",
    "LossyMaskWarning",
    "apply_value_ranges",
    "binarize",
    "map_label_ranges",
    "read_labels",
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

_FAX_TIFF_COMPRESSIONS = frozenset({"tiff_ccitt", "group3", "group4"})  # 2, 3 and 4


class LossyMaskWarning(UserWarning):
    """A mask was stored in a lossy format (JPEG, lossy JPEG 2000, AVIF, lossy WebP) and had to
    be thresholded.

    Rule: the mask is converted to grey and split in two. :func:`read_labels` splits at
    half of the 8-bit full scale (foreground above 127), so the compression noise of an empty
    mask stays background; :func:`read_mask` splits at half of the image's own maximum
    (an all-zero image stays all zero). This is only right for binary masks; a multi-label
    mask saved as JPEG cannot be recovered reliably and :func:`read_labels` refuses it.
    """


@dataclasses.dataclass(frozen=True)
class LabelRule:
    """How a dataset stores its labels in mask files: the rule :func:`read_labels` applies.

    A rule is one of two kinds:

    * **binary** (``grey_levels`` empty): every file holds one structure, which becomes
      label ``foreground``. A file's values must be 0 and one "on" value: 1 (1-bit files,
      0/1 PNGs, palette indices), 255 (8-bit full scale) or the full scale of a 2-, 4- or
      16-bit file (3, 15, 65535); an
      all-zero file is all background. With ``interpolated_edges`` a file may also hold
      values between 0 and its full scale, as masks resized with interpolation do (the
      cxr-lungs masks): they are split at half the full scale, provided the full-scale value
      is present and the in-between pixels are no more numerous than the full-scale ones
      (on real resized lung masks they are 1-3 %), so a mask of 0 and 100 is still refused.
    * **grey levels** (``grey_levels`` given): inclusive ``(low, high, label)`` ranges of
      8-bit grey values, background included, e.g. CHAOS MR's 63 / 126 / 189 / 252 (see
      :meth:`from_label_ranges`). Every stored value must lie in one range.

    Attributes:
        grey_levels: ``(low, high, label)`` triples that do not overlap; labels 0..255.
        foreground: label of a binary mask's structure, 1..255.
        interpolated_edges: binary rules only; accept interpolated edges as described.

    Raises:
        ValueError: overlapping or reversed ranges, labels outside 0..255, or
            ``interpolated_edges`` on a grey-level rule.

    Example:
        >>> LabelRule().labels  # binary: background and structure
        (0, 1)
        >>> LabelRule.from_label_ranges(CHAOS_MR_LABEL_RANGES).labels
        (0, 1, 2, 3, 4)
    """

    grey_levels: tuple[tuple[int, int, int], ...] = ()
    foreground: int = 1
    interpolated_edges: bool = False

    def __post_init__(self):
        try:
            levels = tuple(tuple(int(v) for v in triple) for triple in self.grey_levels)
            foreground = int(self.foreground)
        except (TypeError, ValueError) as exc:
            raise ValueError(
                "grey_levels must be (low, high, label) triples of integers and foreground an "
                f"integer label; got grey_levels={self.grey_levels!r}, "
                f"foreground={self.foreground!r} ({exc})"
            ) from exc
        if any(len(triple) != 3 for triple in levels):
            raise ValueError(f"grey_levels must be (low, high, label) triples, got {levels}")
        object.__setattr__(self, "grey_levels", levels)
        if not 1 <= foreground <= 255:
            raise ValueError(f"foreground must be a label in 1..255, got {self.foreground!r}")
        if levels and self.interpolated_edges:
            raise ValueError("interpolated_edges applies to binary rules, not to grey levels")
        spans = sorted(levels)
        for low, high, label in spans:
            if low > high or not 0 <= label <= 255:
                raise ValueError(f"grey level range ({low}, {high}) -> {label} is invalid")
        for (_, high, label), (low, _, other) in zip(spans, spans[1:], strict=False):
            if low <= high:
                raise ValueError(f"grey level ranges of labels {label} and {other} overlap")

    @classmethod
    def from_label_ranges(
        cls, ranges: Mapping[int, tuple[int, int]], *, background: int = 0
    ) -> LabelRule:
        """A grey-level rule from ``label -> (low, high)`` ranges plus one background value.

        Example:
            >>> LabelRule.from_label_ranges({1: (250, 255)}).grey_levels
            ((0, 0, 0), (250, 255, 1))
        """
        triples = [(low, high, label) for label, (low, high) in sorted(ranges.items())]
        return cls(grey_levels=((background, background, 0), *triples))

    @property
    def labels(self) -> tuple[int, ...]:
        """Every label the rule can give, background included, ascending."""
        if self.grey_levels:
            return tuple(sorted({label for *_, label in self.grey_levels}))
        return (0, int(self.foreground))


@contextlib.contextmanager
def _one_mask_image(path: str):
    """``(image, lossy, sub_byte_bits)``: the single frame of the mask file ``path``, decoded
    whole, its stored samples where Pillow moved them, turned upright; whether its format is
    lossy; 2 or 4 for a 2- or 4-bit grey file (see :func:`sub_byte_grey_bits`)."""
    with decoded_image(
        path,
        what="a mask image",
        error=MaskError,
        expected="one single-channel mask of labels 0 and up (8- or 16-bit grey PNG or TIFF)",
    ) as (image, maxval, bits):
        if maxval is not None:
            image = Image.fromarray(netpbm_stored(image, maxval))
        lossy = is_lossy(path, image)
        image = _jpeg_2000_as_stored(path, image)
        inverted_by_pillow = (
            tiff_white_is_zero(image)
            and image.mode in ("1", "L")
            and image.info.get("compression") not in _FAX_TIFF_COMPRESSIONS
        )
        image = upright(path, image)  # a new image when turned: no TIFF tags left
        if inverted_by_pillow:
            image = ImageOps.invert(image)  # back to the stored samples: see tiff_white_is_zero
        yield image, lossy, bits


def _jpeg_2000_as_stored(path: str, image: Image.Image) -> Image.Image:
    """``image``, or for a JPEG 2000 file whose samples Pillow moved, an image of its stored
    samples (see :func:`jpeg_2000_stored`); negative ones are refused."""
    moved = jpeg_2000_stored(path, image)
    if moved is None:
        return image
    samples, precision = moved
    if samples.min() < 0:
        raise MaskError(
            path,
            f"is a signed {precision}-bit JPEG 2000 image holding "
            f"{value_counts(samples[samples < 0])}; a mask holds labels 0 and up",
        )
    return Image.fromarray(samples.astype(np.uint16 if precision > 8 else np.uint8))


def read_labels(path: os.PathLike | str, rule: LabelRule) -> np.ndarray:
    """Read one 2D mask file as labels, by its mode and value set, under a dataset's rule.

    How each kind of file is read (the stored values, then the rule):

    * 1-bit (mode ``"1"``): ``{0, 1}``; binary rules only.
    * 8-bit grey: its values (0/255, 0/1, grey levels, interpolated edges).
    * 2- or 4-bit grey (PNG, TIFF): its stored samples, full scale 3 or 15, so a 0/1 label
      map and a 0/full-scale mask both read; under a grey-level rule the samples on the 8-bit
      scale, as the PNG standard displays them (a 2-bit 1, 2, 3 is grey 85, 170, 255).
    * 16-bit (or 32-bit integer) grey: its values, with full scale 65535; under a grey-level
      rule, values above 255 must be the 8-bit levels times 257 (how Pillow and ImageMagick
      widen 8-bit images) and are divided back.
    * palette (``"P"``): when every colour the image uses is grey (R = G = B), as GIF and
      other image editors write grey masks (SCR's GIFs), the grey value of each pixel's entry,
      so the palette order does not matter; otherwise by which entry is the background:
      the used entry that is transparent, else black, else the one grey or white entry if
      it covers most pixels, else index 0 if it covers most pixels (files with none of
      these are refused). At index 0 the
      palette indices are the labels, as label tools (PASCAL VOC, CVAT) write label maps
      whose colours are only for display; at another index the order is a colour
      quantizer's (a colour mask saved as GIF): the background is 0 and one other colour
      the structure (more colours are refused: their indices are no labels). A palette of
      the 256 greys from white to black is ImageJ's inverting LUT: its indices are the stored
      values (structure 255 shown black), read like a WhiteIsZero TIFF's. A palette of the 4
      or 16 greys from black to white (4-bit BMP's grey palette) is read like a 2- or 4-bit
      grey file, by its indices.
    * grey RGB / RGBA / LA: the grey channel (alpha ignored); real colour is refused.
    * JPEG, JPEG-compressed TIFF, JPEG 2000 of the irreversible wavelet, AVIF or lossy WebP:
      binary rules only: grey above 127 is the structure, with a :class:`LossyMaskWarning`;
      colour is refused here too (channels differing by more than compression noise). A
      lossy file's pixels more transparent than opaque are background (lossy WebP does not
      keep the colours under them).

    A file with an EXIF / TIFF Orientation tag is turned as the tag says, as viewers and
    annotation tools show it (see :func:`upright`). A WhiteIsZero TIFF gives its stored
    samples, not Pillow's inverted display, unless fax-compressed (see
    :func:`tiff_white_is_zero`). Alpha is
    ignored only where it agrees with the values (uniform, or transparent exactly where the
    value is 0); an overlay keeping the structure in its alpha channel is a MaskError.

    Args:
        path: the mask file.
        rule: the dataset's :class:`LabelRule`.

    Returns:
        ``uint8`` label array ``(rows, columns)`` with values in ``rule.labels``.

    Raises:
        UnreadableFileError: the file cannot be opened or decoded as an image, declares
            more pixels than Pillow's decompression-bomb limit, or is a PNG with a chunk
            running past the end of the file or a critical chunk failing its CRC-32.
        MaskError: several frames, real colour, alpha that disagrees with the values, or
            values that fit no reading of the rule (the message names the file, how it was
            read and the values found with their pixel counts).

    Warns:
        LossyMaskWarning: the file is lossy (see :class:`LossyMaskWarning`).

    Example:
        >>> import tempfile
        >>> from pathlib import Path
        >>> from PIL import Image
        >>> grey = np.zeros((4, 6), np.uint8)
        >>> grey[1:3, 1:5] = 255  # a CHAOS CT liver mask stores the liver as 255
        >>> path = Path(tempfile.mkdtemp()) / "liver_GT_045.png"
        >>> Image.fromarray(grey).save(path)
        >>> liver = read_labels(path, LabelRule())
        >>> np.unique(liver)
        array([0, 1], dtype=uint8)
    """
    path = os.fspath(path)
    with _one_mask_image(path) as (image, lossy, bits):
        if lossy:
            return _lossy_labels(path, _lossy_grey(path, image), rule)
        stored, full_scale, reading = _stored_values(path, image, bits)
    if rule.grey_levels:
        return _grey_level_labels(path, stored, full_scale, reading, rule)
    return _binary_labels(path, stored, full_scale, reading, rule)


def read_mask(path: os.PathLike | str) -> np.ndarray:
    """Read one 2D mask image.

    Args:
        path: PNG (8 or 16 bit), TIFF, BMP or GIF file; JPEG, JPEG-compressed TIFF, lossy
            JPEG 2000, AVIF and lossy WebP are accepted with a warning.

    Returns:
        2D array ``(rows, columns)``. Lossless files keep their stored values: uint8 for
        2-, 4- and 8-bit images (a 2-bit file gives 0..3, not Pillow's 0..255 widening; a
        JPEG 2000 file or a PGM its stored samples, not Pillow's shifted, offset or
        stretched ones),
        uint16 for 16-bit ones, palette images give their palette indices, bilevel images
        give ``{0, 1}``; an RGB(A) image whose three channels are equal gives
        that channel (alpha must be uniform or transparent exactly where the value is 0).
        JPEG files give uint8 ``{0, 1}`` thresholded at half their maximum (see
        LossyMaskWarning). An EXIF / TIFF Orientation tag is applied (see :func:`upright`).

    Raises:
        UnreadableFileError: the file cannot be opened or decoded as an image, declares
            more pixels than Pillow's decompression-bomb limit, or is a PNG with a chunk
            running past the end of the file or a critical chunk failing its CRC-32.
        MaskError: the image has several pages/frames, real colour (lossy files too),
            alpha that disagrees with the values, or non-integer values.

    Warns:
        LossyMaskWarning: the file is lossy (see :class:`LossyMaskWarning`).

    Example:
        >>> import tempfile
        >>> from pathlib import Path
        >>> from PIL import Image
        >>> grey = np.array([[0, 63, 126], [189, 252, 0]], np.uint8)  # CHAOS MR grey levels
        >>> path = Path(tempfile.mkdtemp()) / "IMG-0004-00020.png"
        >>> Image.fromarray(grey).save(path)
        >>> mask = read_mask(path)
        >>> np.unique(mask)  # stored grey levels, decoded by map_label_ranges
        array([  0,  63, 126, 189, 252], dtype=uint8)
    """
    path = os.fspath(path)
    with _one_mask_image(path) as (image, lossy, bits):
        if lossy:
            return _threshold_lossy(path, _lossy_grey(path, image))
        if bits:
            return _sub_byte_stored(image, bits)
        return _lossless_values(path, image)


def read_mask_stack(
    paths: Sequence[os.PathLike | str],
    *,
    expected_shape: Sequence[int] | None = None,
    rule: LabelRule | None = None,
) -> np.ndarray:
    """Read one mask per slice and stack them in the given order into ``(z, y, x)``.

    The order of ``paths`` is kept: pairing masks with image slices is the caller's job (for
    CHAOS see the dataset's README: masks follow the sorted file names).

    Args:
        paths: mask files, one per slice, in array order.
        expected_shape: ``(rows, columns)`` every slice must have, or ``(slices, rows,
            columns)`` to also check the number of files; by default the first file's shape.
        rule: read every slice as labels with :func:`read_labels` under this rule; by
            default the stored values (:func:`read_mask`).

    Returns:
        Array ``(len(paths), rows, columns)``: ``uint8`` labels with a rule, otherwise the
        common dtype of the stored slices.

    Raises:
        ValueError: ``paths`` is a single path rather than a sequence of them.
        UnreadableFileError: a file cannot be read (see :func:`read_mask`).
        MaskError: no paths, the wrong number of files, or a slice whose shape differs (the
            message names it and the expected shape).

    Example:
        >>> import tempfile
        >>> from pathlib import Path
        >>> from PIL import Image
        >>> ground = Path(tempfile.mkdtemp()) / "Ground"
        >>> ground.mkdir()
        >>> for k in range(3):
        ...     Image.fromarray(np.full((4, 6), 255, np.uint8)).save(ground / f"liver_{k}.png")
        >>> stack = read_mask_stack(sorted(ground.glob("*.png")), rule=LabelRule())
        >>> stack.shape, stack.dtype, int(stack.max())
        ((3, 4, 6), dtype('uint8'), 1)
    """
    if isinstance(paths, (str, bytes, os.PathLike)):
        raise ValueError(
            f"paths must be a sequence of mask files, one per slice; got the single path "
            f"{os.fspath(paths)!r}"
        )
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
        mask = read_mask(path) if rule is None else read_labels(path, rule)
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
        listed = value_counts(mask[~covered])
        raise MaskError(source, f"values in no range of {tuple(ranges)}: {listed}")
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


# The most a lossy grey mask's channels may differ: a grey image saved as colour JPEG decodes
# with equal channels, chroma noise adds a few levels; a label colour differs by far more.
_LOSSY_GREY_TOLERANCE = 32
_COLOUR_MODES = ("RGB", "RGBA", "RGBX", "CMYK", "YCbCr", "LAB", "HSV")


def _lossy_grey(path: str, image: Image.Image) -> np.ndarray:
    """The grey values of a lossy mask; a colour one is refused, as lossless colour masks are.

    Pillow's conversion to grey weighs the channels (ITU-R 601-2 luma), so a red structure
    (255, 0, 0) becomes 76, below the split at 127: a red lung read as background and a
    left-red / right-green mask as the right lung alone, without a word.

    Pixels more transparent than opaque (alpha 127 or less) are background, grey 0, as a
    viewer shows the mask over black: a lossy WebP encoder does not keep the colours under
    transparent pixels (libwebp's default replaces them to compress better: a white mask on
    a transparent background read 649 of its 3209 background pixels as structure), so only
    the alpha says what is there. (A lossless mask keeps them and is checked against its
    alpha instead.)
    """
    if image.mode in _COLOUR_MODES:
        channels = np.asarray(image.convert("RGB")).astype(np.int16)
        spread = channels.max(axis=-1) - channels.min(axis=-1)
        coloured = int(np.count_nonzero(spread > _LOSSY_GREY_TOLERANCE))
        if coloured:
            raise MaskError(
                path,
                f"is a colour image in a lossy format: {coloured} of {spread.size} pixels "
                f"have channels differing by more than {_LOSSY_GREY_TOLERANCE} (up to "
                f"{int(spread.max())}); expected a grey mask (a label colour's brightness "
                "is not its label)",
            )
    grey = np.asarray(image.convert("L"))
    if image.mode in ("LA", "RGBA", "PA") or "transparency" in image.info:
        alpha = np.asarray(image.convert("RGBA").getchannel("A"))
        if alpha.min() != alpha.max():
            grey = np.where(alpha > 127, grey, 0).astype(np.uint8)
    return grey


def _threshold_lossy(path: str, grey: np.ndarray) -> np.ndarray:
    warnings.warn(
        LossyMaskWarning(
            f"{path}: lossy (JPEG, JPEG 2000, AVIF or WebP) mask; thresholded at half its maximum "
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
        _check_alpha(path, image, values)
        return values.astype(np.uint16) if values.dtype.itemsize == 2 else values
    if mode == "LA":
        values = np.array(image)[..., 0]
        _check_alpha(path, image, values)
        return values
    if mode in ("RGB", "RGBA"):
        channels = np.array(image)[..., :3]
        if not (
            np.array_equal(channels[..., 0], channels[..., 1])
            and np.array_equal(channels[..., 0], channels[..., 2])
        ):
            raise MaskError(path, "is a colour image; expected a single-channel label image")
        _check_alpha(path, image, channels[..., 0])
        return channels[..., 0]
    if mode in ("I", "F"):
        values = _integer_values(path, image)
        if values.max() <= np.iinfo(np.uint16).max:
            return values.astype(np.uint16)
        return values.astype(np.uint32)
    raise MaskError(path, f"has image mode {mode}; expected a grey-level or palette mask")


def _integer_values(path: str, image: Image.Image) -> np.ndarray:
    """The values of a 32-bit ("I") or float ("F") image, refused unless they are finite,
    non-negative integers: labels, not intensities."""
    values = np.array(image)
    if not np.all(np.isfinite(values)):
        raise MaskError(
            path,
            f"holds {int(np.count_nonzero(~np.isfinite(values)))} NaN or infinite values "
            f"(mode {image.mode}); a mask holds integer labels",
        )
    if not np.array_equal(values, np.round(values)) or values.min() < 0:
        raise MaskError(path, f"holds non-integer or negative values (mode {image.mode})")
    return values


_GREY_BYTE_MODES = {"L": "8-bit grey", "LA": "8-bit grey with alpha"}
_SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L")
_SIXTEEN_BIT_FULL_SCALE = 65535
_KEYED_TRANSPARENCY_MODES = ("L", "RGB", *_SIXTEEN_BIT_MODES)


def _sub_byte_stored(image: Image.Image, bits: int) -> np.ndarray:
    """The stored 2- or 4-bit samples of a grey image Pillow has widened to 8 bits."""
    return (np.array(image) // (255 // (2**bits - 1))).astype(np.uint8)


def _stored_values(
    path: str, image: Image.Image, sub_byte_bits: int | None = None
) -> tuple[np.ndarray, int, str]:
    """The values :func:`read_labels` decodes: ``(values, full scale, how they were read)``."""
    mode = image.mode
    if mode == "1":
        return np.array(image, dtype=np.uint8), 1, "1-bit"
    if sub_byte_bits:
        full_scale = 2**sub_byte_bits - 1
        return _sub_byte_stored(image, sub_byte_bits), full_scale, f"{sub_byte_bits}-bit grey"
    if mode in _GREY_BYTE_MODES:
        values = np.array(image)
        values = values[..., 0] if mode == "LA" else values
        _check_alpha(path, image, values)
        return values, 255, _GREY_BYTE_MODES[mode]
    if mode in _SIXTEEN_BIT_MODES:
        values = np.array(image).astype(np.uint16)
        _check_alpha(path, image, values)
        return values, _SIXTEEN_BIT_FULL_SCALE, "16-bit grey"
    if mode in ("I", "F"):
        values = _integer_values(path, image)
        if values.max() > _SIXTEEN_BIT_FULL_SCALE:
            raise MaskError(path, f"holds {values.max():g}, above 16 bits (mode {mode})")
        return values.astype(np.uint16), _SIXTEEN_BIT_FULL_SCALE, f"{mode} grey"
    if mode == "P":
        colours = np.array(image.convert("RGB"))
        ramp_bits = _grey_ramp_palette_bits(image)
        if ramp_bits:
            values = np.array(image)
            _check_alpha(path, image, values)
            return values, 2**ramp_bits - 1, f"{ramp_bits}-bit palette of the grey ramp"
        if _is_inverting_lut(image):
            values, reading = np.array(image), "palette of ImageJ's inverting LUT, read as indices"
        elif _is_grey(colours):
            values, reading = colours[..., 0], "palette of grey entries, read as grey"
        else:
            values, reading = _colour_palette_indices(path, image)
        _check_alpha(path, image, values)
        return values, 255, reading
    if mode in ("RGB", "RGBA"):
        colours = np.array(image)[..., :3]
        if not _is_grey(colours):
            raise MaskError(path, "is a colour image; expected a single-channel label image")
        _check_alpha(path, image, colours[..., 0])
        return colours[..., 0], 255, f"grey {mode}"
    raise MaskError(path, f"has image mode {mode}; expected a grey-level or palette mask")


def _colour_palette_indices(path: str, image: Image.Image) -> tuple[np.ndarray, str]:
    """The labels of a palette image of colour entries, as the file says which entry is
    the background: transparent, else black, else the one grey or white entry.

    Label tools (PASCAL VOC, CVAT, LabelMe) put the background, black, at index 0, and their
    indices are the labels. Pillow's GIF writer and quantizers (``quantize``,
    ``convert("P")``, image editors saving a colour mask as GIF or 8-bit PNG) order the
    entries by colour instead: a red structure on black became index 0 and its black
    background index 1, a green one on grey 128 index 0 and the grey index 1, so the mask
    read inverted, background as the structure, without a word. The background entry is
    therefore the used entry that is transparent (a tRNS / GIF transparency: nothing
    there), else black, else the one neutral (grey or white) entry among colours, provided
    it covers more pixels than the rest (a coloured structure drawn on white or grey), else
    index 0 if it covers more pixels than the rest (where label tools and the majority
    agree). At index 0 the indices are the labels; elsewhere, with one other colour, it is
    0 and that colour 1, and with more colours the indices are a colour order, no labels,
    and the file is refused, as it is when no entry is told apart (green structure at
    index 0 on red, say).
    """
    indices = np.array(image)
    palette = np.asarray(image.getpalette("RGB") or [], dtype=np.int64).reshape(-1, 3)
    used, counts = np.unique(indices, return_counts=True)
    known = used < len(palette)
    used, counts = used[known], counts[known]
    colours = ", ".join(
        f"{int(i)}: {tuple(int(v) for v in palette[i])} ({int(n)} px)"
        for i, n in zip(used[:8], counts[:8], strict=True)
    ) + (" ..." if len(used) > 8 else "")
    alpha = _palette_alpha(image, len(palette))
    transparent = [int(i) for i in used if alpha[i] == 0]
    black = [int(i) for i in used if not palette[i].any()]
    if len(transparent) == 1:
        background, what = transparent[0], "the transparent entry"
    elif black:
        background, what = black[0], "black"
    else:
        total = int(counts.sum())
        neutral = [
            int(i) for i in used if palette[i].min() == palette[i].max() and palette[i].any()
        ]
        most = [int(i) for i, n in zip(used, counts, strict=True) if 2 * int(n) > total]
        if len(neutral) == 1 and most == neutral:
            background = neutral[0]
            what = f"the grey {int(palette[background][0])} entry"
        elif most == [0]:
            background, what = 0, "index 0 covering most pixels"
        else:
            raise MaskError(
                path,
                "is a palette image of colour entries none of which is the background by "
                "what the file says (no transparent or black entry, and neither one grey or "
                "white entry nor index 0 covers most pixels; entries used: "
                f"{colours}), and a quantizer orders colours so that index 0 may be the "
                "structure. Expected a grey mask, or a label map with black (or transparent) "
                "background",
            )
    if background == 0:
        return indices, f"palette of colour entries with {what} at index 0, read as indices"
    if len(used) <= 2:
        return (
            (indices != background).astype(np.uint8),
            f"palette of colour entries with {what} as the background at index "
            f"{background} (a colour-ordered palette), read as it 0 and the other colour 1",
        )
    raise MaskError(
        path,
        f"is a palette image of colour entries whose background ({what}) is at index "
        f"{background}, not 0: its order is a colour quantizer's, not a label tool's "
        f"(background black at index 0), so its indices are no labels (entries used: "
        f"{colours}). Expected a grey or 0-based label-map mask",
    )


def _palette_alpha(image: Image.Image, entries: int) -> np.ndarray:
    """The alpha of each palette entry of ``image`` (255 where the file gives none)."""
    alpha = np.full(max(entries, 256), 255, np.int64)
    transparency = image.info.get("transparency")
    if isinstance(transparency, int) and 0 <= transparency < len(alpha):
        alpha[transparency] = 0
    elif isinstance(transparency, bytes):
        alpha[: len(transparency)] = np.frombuffer(transparency, np.uint8)
    return alpha


def _check_alpha(path: str, image: Image.Image, values: np.ndarray) -> None:
    """Refuse a mask whose transparency says something other than its values.

    The values are read and alpha ignored, which is right while alpha is uniform, or
    transparent exactly where the value is 0 (a mask saved with a transparent background). An
    overlay exported from a viewer instead paints one colour everywhere and keeps the
    structure in alpha: read by its values it would be all structure (white) or all
    background (black), silently. A grey or RGB PNG may instead name one transparent value
    in its tRNS chunk (optipng stores a grey + alpha image whose alpha is 0 or 255 this way),
    which Pillow keeps aside in ``info``.
    """
    if image.mode in ("LA", "RGBA"):
        alpha = np.array(image.getchannel("A"))
    elif image.mode == "P" and "transparency" in image.info:
        alpha = np.array(image.convert("RGBA").getchannel("A"))
    elif image.mode in _KEYED_TRANSPARENCY_MODES and "transparency" in image.info:
        pixels = np.array(image)
        transparent = pixels == np.asarray(image.info["transparency"])
        alpha = np.where(transparent.all(axis=-1) if pixels.ndim == 3 else transparent, 0, 255)
    else:
        return
    if alpha.min() == alpha.max():
        return
    disagree = int(np.count_nonzero((alpha == 0) != (values == 0)))
    if disagree:
        raise MaskError(
            path,
            f"is a mask with transparency ({image.mode}) whose alpha channel and values "
            f"disagree on {disagree} of {values.size} pixels (transparent but not 0, or 0 but "
            "not transparent): an overlay keeping the structure in its alpha channel? "
            "Expected labels in the values, with alpha uniform or transparent exactly where "
            "the value is 0",
        )


_INVERTING_LUT = np.repeat(np.arange(255, -1, -1), 3)


def _grey_ramp_palette_bits(image: Image.Image) -> int | None:
    """2 or 4 when the palette of ``image`` is the 4 or 16 evenly spaced greys from black to
    white, else None: such a file is a 2- or 4-bit grey image stored as a palette (BMP has no
    other way below 8 bits; Windows and most editors write this palette), read like a 2- or
    4-bit grey PNG, by its indices with full scale 3 or 15."""
    palette = image.getpalette("RGB")
    for bits in (2, 4):
        entries = 2**bits
        ramp = np.repeat(np.arange(entries) * (255 // (entries - 1)), 3)
        if palette is not None and np.array_equal(palette, ramp):
            return bits
    return None


def _is_inverting_lut(image: Image.Image) -> bool:
    """Whether the palette of ``image`` is the 256 greys from white to black: ImageJ's
    inverting LUT, as Java's PNG, GIF and BMP writers store it.

    ImageJ / Fiji keep binary masks with the structure stored as 255 and, with an inverting
    LUT, shown black; saved as PNG, GIF or BMP the stored values become palette indices and
    the LUT the palette. Read through the palette, the structure would be 0 and the
    background 255: a binary mask inverted, silently. The indices are the stored values, as
    for an ImageJ WhiteIsZero TIFF (see :func:`tiff_white_is_zero`). Shorter palettes whose
    order is reversed are read through, as palette optimisers reorder entries.
    """
    palette = image.getpalette("RGB")
    return palette is not None and np.array_equal(palette, _INVERTING_LUT)


def _is_grey(colours: np.ndarray) -> bool:
    return bool(
        np.array_equal(colours[..., 0], colours[..., 1])
        and np.array_equal(colours[..., 0], colours[..., 2])
    )


def _binary_labels(
    path: str, stored: np.ndarray, full_scale: int, reading: str, rule: LabelRule
) -> np.ndarray:
    present = set(np.unique(stored).tolist())
    on_values = sorted(v for v in {1, 255, full_scale} if v <= full_scale)
    for on in on_values:
        if present <= {0, on}:
            return np.where(stored == on, rule.foreground, 0).astype(np.uint8)
    if rule.interpolated_edges and full_scale > 1:
        at_full_scale = int(np.count_nonzero(stored == full_scale))
        in_between = int(np.count_nonzero((stored > 0) & (stored < full_scale)))
        if at_full_scale and in_between <= at_full_scale:
            return np.where(stored > full_scale / 2, rule.foreground, 0).astype(np.uint8)
    edges = (
        f"; values between 0 and {full_scale} are accepted only as interpolated edges (the "
        f"value {full_scale} present and at least as frequent)"
        if rule.interpolated_edges
        else ""
    )
    raise MaskError(
        path,
        f"{reading} mask holds {value_counts(stored)}; a binary mask of this dataset holds "
        f"0 and one of {', '.join(map(str, on_values))}{edges}",
    )


def _grey_level_labels(
    path: str, stored: np.ndarray, full_scale: int, reading: str, rule: LabelRule
) -> np.ndarray:
    if full_scale == 1:
        raise MaskError(
            path,
            f"is a 1-bit mask, which cannot hold this dataset's grey levels {rule.grey_levels}",
        )
    if 1 < full_scale < 255:
        # A 2- or 4-bit file's grey levels are its samples on the 8-bit scale, as the PNG
        # standard displays them (optipng stores 8-bit 0 / 85 / 170 / 255 masks this way).
        stored = stored * (255 // full_scale)
    if full_scale == _SIXTEEN_BIT_FULL_SCALE and stored.max() > 255:
        if np.any(stored % 257):
            raise MaskError(
                path,
                f"{reading} mask holds {value_counts(stored)}; this dataset's labels are 8-bit "
                f"grey levels {rule.grey_levels}, stored as they are or times 257",
            )
        stored = stored // 257
    return apply_value_ranges(stored, rule.grey_levels, source=path)


def _lossy_labels(path: str, grey: np.ndarray, rule: LabelRule) -> np.ndarray:
    if rule.grey_levels:
        raise MaskError(
            path,
            "is lossy (JPEG, JPEG 2000, AVIF or WebP); its compression noise makes the grey levels "
            f"{rule.grey_levels} of this dataset unrecoverable. Store the masks as PNG.",
        )
    warnings.warn(
        LossyMaskWarning(
            f"{path}: lossy (JPEG, JPEG 2000, AVIF or WebP) mask; grey values above 127 taken "
            "as the structure. Store masks as PNG to avoid this."
        ),
        stacklevel=3,
    )
    return np.where(grey > 127, rule.foreground, 0).astype(np.uint8)
