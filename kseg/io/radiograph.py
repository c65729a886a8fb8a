"""Chest radiograph readers: JSRT's headerless ``.IMG`` files and grey-level images
(PNG, TIFF, BMP, JPEG, DICOM), each returned in its stored units with higher = brighter
(DICOM ones also as a viewer displays them, VOI transform applied).

Example:
    >>> image, bit_depth = read_radiograph("images/CHNCXR_0001_0.png")  # doctest: +SKIP
    >>> jsrt = read_jsrt_image("All247images/JPCLN001.IMG")  # doctest: +SKIP
"""

from __future__ import annotations

import math
import os
import warnings

import numpy as np
import pydicom
from PIL import Image
from pydicom.uid import HTJ2K, JPEG2000, JPEGLSNearLossless

from kseg.errors import UnreadableFileError
from kseg.io._pointer_files import pointer_note
from kseg.io.dicom import (
    DICOM_VALUES,
    LossyImageWarning,
    _check_encapsulated_size,
    _grid,
    _integer,
    _lossy_compression,
    _read_image,
    _read_vetted_file,
    _reading,
    _scan_file,
    _transfer_syntax,
)
from kseg.io.image_files import (
    decoded_image,
    jpeg_2000_stored,
    netpbm_stored,
    tiff_white_is_zero,
    upright,
)

__all__ = ["JSRT_BIT_DEPTH", "read_jsrt_image", "read_radiograph"]

JSRT_BIT_DEPTH = 12

_DICOM_SUFFIXES = (".dcm", ".dicom")


def read_jsrt_image(path: os.PathLike | str) -> np.ndarray:
    """Read a JSRT ``.IMG`` file as ``uint16`` with higher values brighter.

    The files have no header: square images of big-endian 16-bit words holding 12-bit
    values (2048 x 2048 in the real database; the side is taken from the file size, which
    must be twice a square number). JSRT stores the film-density polarity, where a higher
    value is darker, so the values are inverted over the 12-bit range, ``4095 - stored``,
    the convention of DICOM MONOCHROME1 images read by :func:`kseg.io.read_dicom_image`.

    Args:
        path: the ``.IMG`` file.

    Returns:
        ``uint16`` array ``(side, side)`` in ``0 .. 4095``.

    Raises:
        UnreadableFileError: the size is not that of a square 16-bit image, or a value
            exceeds 12 bits.

    Example:
        >>> image = read_jsrt_image("All247images/JPCLN001.IMG")  # doctest: +SKIP
        >>> image.shape, image.dtype  # doctest: +SKIP
        ((2048, 2048), dtype('uint16'))

    Reference:
        Shiraishi et al., "Development of a digital image database for chest radiographs
        with and without a lung nodule", AJR 174(1), 71-74 (2000).
    """
    try:
        with open(path, "rb") as handle:
            size = os.fstat(handle.fileno()).st_size  # checked before reading it all
            side = math.isqrt(size // 2)
            if size == 0 or size != 2 * side * side:
                raise UnreadableFileError(
                    path,
                    f"{size} bytes is not a square image of 16-bit words (a JSRT .IMG file "
                    f"is 2048 x 2048 x 2 = 8388608 bytes, no header){pointer_note(path)}",
                )
            data = handle.read(size)
    except OSError as exc:  # missing, a folder, no permission: name the file
        raise UnreadableFileError(path, f"cannot be read as a JSRT .IMG file ({exc})") from exc
    if len(data) != size:
        raise UnreadableFileError(path, f"ended after {len(data)} of its {size} bytes")
    stored = np.frombuffer(data, dtype=">u2").reshape(side, side)
    maximum = 2**JSRT_BIT_DEPTH - 1
    if int(stored.max()) > maximum:
        raise UnreadableFileError(
            path, f"holds the value {int(stored.max())}, above the 12-bit maximum {maximum}"
        )
    return (maximum - stored.astype(np.int32)).astype(np.uint16)


def read_radiograph(
    path: os.PathLike | str, *, dicom_values: str = "modality"
) -> tuple[np.ndarray, int]:
    """Read a grey-level radiograph (PNG, TIFF, BMP, JPEG or DICOM) in its stored units, or a
    DICOM one as displayed.

    Args:
        path: the image. ``.dcm`` / ``.dicom`` files, and files of other names with the
            DICM marker at byte 128 (archives often name DICOM files without a suffix),
            go through :func:`kseg.io.read_dicom_image` with ``values=dicom_values``
            (modality LUT applied, MONOCHROME1 inverted so that higher is brighter; and with
            ``"displayed"`` the VOI LUT or window and the Presentation LUT Shape, as a
            viewer shows it; PixelPaddingValue padding read black, never setting the
            image's range; an RGB / YBR one whose channels are equal, a grey secondary
            capture, gives its grey samples in either mode); anything else through Pillow,
            turned as its EXIF / TIFF Orientation tag says (as viewers show it, and as
            :func:`kseg.io.read_labels` turns masks); a WhiteIsZero TIFF is inverted so
            that higher is brighter, as MONOCHROME1 DICOM is (Pillow inverts up to 8 bits,
            kseg 16-bit ones: ``65535 - stored``).
        dicom_values: ``"modality"`` (the default: stored / modality units) or
            ``"displayed"``: how DICOM files are read. PNG / JPEG chest X-ray sets
            (Shenzhen, Montgomery) hold what a viewer showed, a DICOM radiograph's VOI
            transform included; ``"displayed"`` gives DICOM files that same contrast.

    Returns:
        ``(image, bit_depth)``: ``uint16`` array ``(rows, columns)`` and the bits of the
        stored values: 8 for 8-bit files (values kept, not rescaled; a palette image gives
        its entries' grey values, not its indices), 16 for 16-bit PNG /
        TIFF, 12 for a 12-bit TIFF (Pillow gives its samples unscaled, 0..4095), the
        precision of a 9- to 16-bit JPEG 2000 file (its stored samples, not Pillow's
        shifted ones), the bits of a PGM's maxval above 255 (its samples, not Pillow's
        stretched ones: maxval 4095 gives 12), DICOM's BitsStored (raised to fit the
        values after the modality LUT); a displayed DICOM image with a VOI transform: the
        bits of its output (BitsStored for a window, the LUTDescriptor's for a VOI LUT).

    Raises:
        ValueError: ``dicom_values`` is not one of ``kseg.io.dicom.DICOM_VALUES``.
        UnreadableFileError: not an image (or one declaring more pixels than Pillow's
            decompression-bomb limit, or a PNG with a chunk running past the end of the
            file or a critical chunk failing its CRC-32), colour content, several frames,
            alpha that is not uniform over non-zero values (transparency hiding pixels), or
            values that do not fit ``uint16`` (negative or fractional DICOM values after
            rescaling).

    Warns:
        LossyImageWarning: a DICOM file whose pixel data are lossy-compressed (as
            :func:`kseg.io.read_dicom_series` warns for a series).

    Example:
        >>> import tempfile
        >>> from pathlib import Path
        >>> import numpy as np
        >>> from PIL import Image
        >>> path = Path(tempfile.mkdtemp()) / "CHNCXR_0001_0.png"  # an 8-bit Shenzhen image
        >>> Image.fromarray(np.arange(256, dtype=np.uint8).reshape(16, 16)).save(path)
        >>> image, bit_depth = read_radiograph(path)
        >>> image.dtype, bit_depth, int(image.max())
        (dtype('uint16'), 8, 255)
    """
    if dicom_values not in DICOM_VALUES:
        raise ValueError(f"dicom_values must be one of {DICOM_VALUES}, got {dicom_values!r}")
    suffix = os.path.splitext(os.fspath(path))[1].lower()
    if suffix in _DICOM_SUFFIXES or _has_dicom_marker(path):
        return _read_dicom_radiograph(path, dicom_values)
    with decoded_image(
        path,
        what="an image",
        error=UnreadableFileError,
        expected="one grey radiograph (a 16-bit grey PNG or TIFF keeps every bit)",
    ) as (image, maxval, _):
        white_is_zero = tiff_white_is_zero(image)
        stored_bits = _tiff_bits_per_sample(image)
        if maxval is not None and maxval > 255:  # a PGM above 8 bits: see netpbm_maxval
            image, stored_bits = Image.fromarray(netpbm_stored(image, maxval)), maxval.bit_length()
        moved = jpeg_2000_stored(os.fspath(path), image) if image.mode == "I;16" else None
        image = upright(os.fspath(path), image)
        if image.mode == "P":  # a palette image's pixels are its entries' colours
            image = image.convert("RGBA" if "transparency" in image.info else "RGB")
        mode, values = image.mode, np.array(image)
    if mode in ("LA", "RGBA"):
        _check_alpha(path, mode, values)
    if white_is_zero and mode in _SIXTEEN_BIT_MODES:  # Pillow inverts only up to 8 bits
        values = np.iinfo(np.uint16).max - values.astype(np.uint16)
    if moved is not None:
        return _jpeg_2000_values(path, *moved)
    values, bit_depth = _grey_values(path, mode, values)
    if mode in _SIXTEEN_BIT_MODES and stored_bits is not None and stored_bits < bit_depth:
        return values, stored_bits
    return values, bit_depth


def _jpeg_2000_values(path, samples: np.ndarray, precision: int) -> tuple[np.ndarray, int]:
    """The stored samples of a 9- to 16-bit JPEG 2000 radiograph that Pillow shifted to 16
    bits or offset from signed (see :func:`kseg.io.image_files.jpeg_2000_stored`)."""
    if samples.min() < 0:
        raise UnreadableFileError(
            path,
            f"is a signed {precision}-bit JPEG 2000 image with values down to "
            f"{int(samples.min())}; expected values 0..{2**precision - 1}",
        )
    return samples.astype(np.uint16), precision


def _tiff_bits_per_sample(image: Image.Image) -> int | None:
    """A TIFF's BitsPerSample (of its first sample), or None for other formats."""
    if image.format != "TIFF":
        return None
    bits = image.tag_v2.get(_TIFF_BITS_PER_SAMPLE)
    bits = bits[0] if isinstance(bits, tuple) and bits else bits
    return bits if isinstance(bits, int) else None


def _check_alpha(path, mode: str, values: np.ndarray) -> None:
    """Refuse a radiograph whose alpha channel hides some of its values.

    Alpha is dropped, which is right while it is uniform, or where every pixel that is not
    fully opaque holds 0 (transparent padding read as black). A radiograph with transparent
    or half-transparent regions over other values (an export with a transparent frame or
    box, an overlay) is shown by viewers without those values, while dropping alpha would
    train on them: what the file holds there is not the image.
    """
    alpha = values[..., -1]
    if alpha.min() == alpha.max():
        return
    grey = values[..., 0]
    hidden = (alpha < 255) & (grey != 0)
    if hidden.any():
        raise UnreadableFileError(
            path,
            f"is a grey image with transparency ({mode}): {int(np.count_nonzero(alpha < 255))}"
            f" of {alpha.size} pixels are not fully opaque, {int(np.count_nonzero(hidden))} "
            "of them over non-zero values, which viewers do not show; expected an opaque "
            "grey radiograph (alpha uniform, or transparent only where the value is 0)",
        )


def _has_dicom_marker(path) -> bool:
    try:
        return pydicom.misc.is_dicom(path)
    except OSError:  # Pillow's open then names the problem
        return False


_SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L")
_TIFF_BITS_PER_SAMPLE = 258


def _grey_values(path, mode: str, values: np.ndarray) -> tuple[np.ndarray, int]:
    if mode == "L":
        return values.astype(np.uint16), 8
    if mode in _SIXTEEN_BIT_MODES:
        return values.astype(np.uint16), 16
    if mode == "I":
        if values.min() < 0 or values.max() > np.iinfo(np.uint16).max:
            raise UnreadableFileError(
                path, f"32-bit values span {values.min()}..{values.max()}, outside 0..65535"
            )
        return values.astype(np.uint16), 16
    if mode in ("LA", "RGB", "RGBA"):
        channels = values[..., : 1 if mode == "LA" else 3]
        if not (channels == channels[..., :1]).all():
            raise UnreadableFileError(path, f"is a colour ({mode}) image; expected grey levels")
        return channels[..., 0].astype(np.uint16), 8
    raise UnreadableFileError(
        path, f"has image mode {mode}; expected an 8- or 16-bit grey-level radiograph"
    )


# Colour encodings of PS3.3 C.7.6.3.1.2 that pydicom decodes to RGB.
_COLOUR_PHOTOMETRICS = frozenset(
    {"RGB", "YBR_FULL", "YBR_FULL_422", "YBR_PARTIAL_420", "YBR_ICT", "YBR_RCT"}
)


def _grey_colour_dicom(path) -> tuple[np.ndarray, int] | None:
    """``(image, BitsStored)`` of a single-frame RGB / YBR DICOM image whose three channels
    are equal once decoded to RGB (a grey radiograph stored as a colour secondary capture),
    else ``None``: other files go to :func:`kseg.io.read_dicom_image`, which refuses colour.

    Secondary captures of radiographs (film digitisers, PACS exports, teaching files) are
    often RGB or YBR_FULL(_422) with grey content; the same pixels as an RGB PNG read as
    grey. The modality and VOI LUTs apply to MONOCHROME images only (PS3.3 C.11), so the
    values are the stored ones whatever ``dicom_values`` says. Real colour is refused.
    """
    path = os.fspath(path)
    header, _ = _scan_file(path)
    if header is None or "PixelData" not in header:
        return None
    with _reading(path, UnreadableFileError):  # a damaged value names the file too
        photometric = str(header.get("PhotometricInterpretation", "") or "").strip().upper()
        if photometric not in _COLOUR_PHOTOMETRICS:
            return None
        samples = _integer(path, header, "SamplesPerPixel", UnreadableFileError, default=1)
        frames = _integer(path, header, "NumberOfFrames", UnreadableFileError, default=1)
        if samples != 3 or frames != 1:
            return None
        dataset = _read_vetted_file(path)
        rows, columns = _grid(path, dataset, UnreadableFileError)
        bits = _integer(path, dataset, "BitsAllocated", UnreadableFileError, allowed=(8, 16))
        bits_stored = _integer(
            path, dataset, "BitsStored", UnreadableFileError, default=bits,
            allowed=range(1, bits + 1),
        )  # fmt: skip
        syntax = _transfer_syntax(dataset)
        if syntax is not None and syntax.is_transfer_syntax and syntax.is_compressed:
            _check_encapsulated_size(path, dataset, syntax, (rows, columns))
        else:  # uncompressed YBR_FULL_422 holds two samples per pixel (PS3.3 C.7.6.3.1.2)
            per_pixel = 2 if photometric == "YBR_FULL_422" else 3
            needed = rows * columns * per_pixel * bits // 8
            if len(dataset.PixelData) < needed:
                raise UnreadableFileError(
                    path,
                    f"Rows {rows} x Columns {columns} of {photometric} in {bits}-bit samples "
                    f"need {needed} bytes of pixel data; the PixelData element holds "
                    f"{len(dataset.PixelData)}",
                )
        pixels = np.asarray(dataset.pixel_array)  # YBR decoded to RGB
    if pixels.shape != (rows, columns, 3):
        raise UnreadableFileError(
            path, f"decoded to shape {pixels.shape}; expected {(rows, columns, 3)}"
        )
    if not (pixels == pixels[..., :1]).all():
        raise UnreadableFileError(
            path, f"is a colour ({photometric}) DICOM image; expected grey levels"
        )
    return pixels[..., 0].astype(np.uint16), bits_stored


# Transfer syntaxes that are lossy or not as their codestream says (read with the pixels).
_READ_CODESTREAM = frozenset({JPEGLSNearLossless, JPEG2000, HTJ2K})


def _warn_if_lossy(path) -> None:
    """A LossyImageWarning, as :func:`kseg.io.read_dicom_series` gives, for a DICOM file whose
    pixel data are lossy-compressed (LossyImageCompression 01, a JPEG baseline / extended
    transfer syntax, near-lossless JPEG-LS, irreversible JPEG 2000); called once the file
    has been read, so its header and pixel data are known to parse."""
    path = os.fspath(path)
    with _reading(path, UnreadableFileError):
        header = pydicom.dcmread(path, stop_before_pixels=True, force=True)
        if _transfer_syntax(header) in _READ_CODESTREAM:  # the codestream says whether
            header = _read_vetted_file(path)
        reason = _lossy_compression(path, header)
    if reason:
        warnings.warn(
            LossyImageWarning(
                f"{path}: lossy-compressed radiograph: {reason}; its values are approximate "
                "(the compression changed the stored values)"
            ),
            stacklevel=3,
        )


def _read_dicom_radiograph(path, dicom_values: str) -> tuple[np.ndarray, int]:
    result = _read_dicom_values(path, dicom_values)
    _warn_if_lossy(path)
    return result


def _read_dicom_values(path, dicom_values: str) -> tuple[np.ndarray, int]:
    grey = _grey_colour_dicom(path)
    if grey is not None:
        return grey
    values, voi_bits = _read_image(path, dicom_values)
    if voi_bits is not None:  # integers 0 .. 2**voi_bits - 1 by construction
        if voi_bits > 16:
            raise UnreadableFileError(
                path,
                f"its window gives {voi_bits}-bit values (BitsStored {voi_bits}); a "
                "radiograph here must fit 0..65535",
            )
        return values.astype(np.uint16), voi_bits
    # read_dicom_image accepted the file, preamble or not; read its header the same way.
    try:
        header = pydicom.dcmread(os.fspath(path), stop_before_pixels=True, force=True)
    except Exception as exc:  # pydicom raises many types on damaged files
        raise UnreadableFileError(path, f"DICOM header cannot be read ({exc})") from exc
    rounded = np.rint(values)
    if not np.array_equal(rounded, values):
        raise UnreadableFileError(path, "has fractional values after the modality LUT")
    low, high = float(rounded.min()), float(rounded.max())
    if low < 0 or high > np.iinfo(np.uint16).max:
        raise UnreadableFileError(
            path, f"values span {low:g}..{high:g}; a radiograph here must fit 0..65535"
        )
    bits_stored = int(header.get("BitsStored", 16) or 16)
    bit_depth = max(bits_stored, int(high).bit_length())
    return rounded.astype(np.uint16), min(bit_depth, 16)
