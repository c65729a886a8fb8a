"""Opening 2D image files with Pillow, read by what they say.

Pillow decodes some valid files as something other than what they hold, without a word: it
widens 2- and 4-bit samples and netpbm maxvals to full scale, inverts WhiteIsZero TIFFs of
up to 8 bits, cuts 16-bit colour samples to their high byte, reads signed 8-bit samples as
unsigned, shifts JPEG 2000 samples of 9 to 15 bits, opens the first page of a TIFF whose
full image follows its thumbnail, and memory-maps an uncompressed TIFF opened by name with
the size its Orientation turns it to. The helpers here say, before or after loading, what
Pillow did, so that the mask reader (:mod:`kseg.io.masks`) and the radiograph reader
(:mod:`kseg.io.radiograph`) can undo it or refuse the file; they also name the file in
Pillow's own failures, keep cut-short files refused and turn images as viewers show them.
"""

from __future__ import annotations

import contextlib
import os
import zlib

import numpy as np
from PIL import Image, ImageFile, ImageOps

from kseg.errors import KsegError, UnreadableFileError
from kseg.io._pointer_files import pointer_note

_LOSSY_FORMATS = frozenset({"JPEG", "MPO", "AVIF"})  # AVIF: lossless only with rare settings
_LOSSY_TIFF_COMPRESSIONS = frozenset({"jpeg", "tiff_jpeg"})  # Pillow's names: 7 and old 6


@contextlib.contextmanager
def image_errors_named(path, what: str):
    """Whatever Pillow raises on a damaged or hostile file becomes an UnreadableFileError
    naming ``path``; kseg's own errors pass through unchanged.

    Pillow raises OSError and SyntaxError, but also ValueError ("buffer is not large enough",
    "tile cannot extend outside image", a zTXt chunk inflating past MAX_TEXT_CHUNK), TypeError
    ("Missing dimensions") and struct.error on damaged TIFF, GIF and PNG files, and
    DecompressionBombError (neither OSError nor ValueError) on a few hundred bytes declaring
    more pixels than MAX_IMAGE_PIXELS.
    """
    try:
        yield
    except (KsegError, MemoryError):
        raise
    except Exception as exc:
        raise UnreadableFileError(path, image_read_problem(exc, what) + pointer_note(path)) from exc


_EXIF_ORIENTATION = 0x0112
_TIFF_PHOTOMETRIC = 262
_TIFF_SAMPLE_FORMAT = 339
_SIGNED_INTEGER = 2  # a SampleFormat value
# Transpose, rotate 270, transverse, rotate 90: the turns that swap width and height.
_SIDE_SWAPPING_ORIENTATIONS = frozenset({5, 6, 7, 8})


@contextlib.contextmanager
def whole_images_only():
    """Pillow refuses cut-short files inside this block, whatever the global
    ``PIL.ImageFile.LOAD_TRUNCATED_IMAGES`` says outside it.

    tensorflow_datasets sets that flag to True for good when it renders an image thumbnail
    (``create_thumbnail``: the HTML of ``tfds.as_dataframe`` in a notebook, for uint16 or RGB
    images), and notebooks set it to silence "image file is truncated": a mask cut short
    would then load with its missing rows as 0, background, without a word. The flag is
    global, so another thread loading an image meanwhile is strict too.
    """
    allowed = ImageFile.LOAD_TRUNCATED_IMAGES
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    try:
        yield
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = allowed


@contextlib.contextmanager
def decoded_image(path: str, *, what: str, error: type[KsegError], expected: str):
    """``(image, maxval, sub_byte_bits)``: the one image of the file ``path``, loaded, with
    what only its decoder knew (:func:`netpbm_maxval`, :func:`sub_byte_grey_bits`: gone once
    it is loaded). What every reader of 2D files here needs, in one place:

    * opened through a handle: Pillow memory-maps an uncompressed file opened by name, and
      maps a TIFF that its Orientation turns by a quarter with the turned size, which swaps
      its rows and columns (Pillow 12.3);
    * Pillow's failures named (``what``: "a mask image"), cut-short files refused
      (:func:`image_errors_named`, :func:`whole_images_only`);
    * a TIFF's full-resolution page, not its thumbnail (:func:`seek_full_resolution_page`);
    * refused as ``error``, the message ending in ``expected``: several frames, samples
      Pillow cuts to their high byte (:func:`high_bytes_only`), negative signed bytes read
      as unsigned (:func:`negative_bytes_read_unsigned`).
    """
    with (
        image_errors_named(path, what),
        open(path, "rb") as handle,
        Image.open(handle) as image,
        whole_images_only(),
    ):
        chunk_problem = png_chunk_problem(handle) if image.format == "PNG" else None
        if chunk_problem:
            raise UnreadableFileError(path, f"cannot be read as {what}: {chunk_problem}")
        frames = seek_full_resolution_page(image)
        high_bytes = high_bytes_only(image)
        if high_bytes:
            raise error(path, f"{high_bytes}. Expected {expected}")
        maxval, sub_byte_bits = netpbm_maxval(image), sub_byte_grey_bits(image)
        image.load()
        if frames != 1:
            raise error(path, f"has {frames} frames; expected {expected}")
        negative = negative_bytes_read_unsigned(image)
        if negative:
            raise error(path, f"{negative}; expected {expected}")
        yield image, maxval, sub_byte_bits


_PNG_SIGNATURE_SIZE = 8
_PNG_CHUNK_OVERHEAD = 12  # length, type and CRC around a chunk's data
_PNG_CRC_PIECE = 1 << 20


def png_chunk_problem(handle) -> str | None:
    """What is wrong with the chunks of the open PNG file ``handle``, if anything: a chunk
    declaring more data than the file holds, or a critical chunk (IHDR, PLTE, IDAT, IEND)
    whose CRC-32 does not match its bytes (libpng refuses those too).

    Pillow reads the rest of a chunk by its declared length in one call, and Python
    allocates that length before reading: an inflated length (up to 4 GiB in 4 bytes) made a
    small file a MemoryError, or gigabytes allocated, instead of an error naming it. Pillow
    does not check the CRC of IDAT chunks, nor zlib's checksum once the image is full: a
    flipped bit in a mask's image data gave another mask, still of 0 and 255, without a
    word (26 of 100 single-bit flips in a cxr-lungs mask).
    """
    start = handle.tell()
    size = os.fstat(handle.fileno()).st_size
    position = _PNG_SIGNATURE_SIZE
    try:
        while position + 8 <= size:
            handle.seek(position)
            header = handle.read(8)
            length = int.from_bytes(header[:4], "big")
            kind = header[4:].decode("latin-1")
            if position + _PNG_CHUNK_OVERHEAD + length > size:
                return (
                    f"its {kind!r} chunk at byte {position} declares {length} bytes of data, "
                    f"but the file ends at byte {size} (truncated, or the length is damaged)"
                )
            if kind[:1].isupper():  # critical chunks, as libpng checks them
                crc = zlib.crc32(header[4:])
                for offset in range(0, length, _PNG_CRC_PIECE):  # bounded reads of a big IDAT
                    crc = zlib.crc32(handle.read(min(_PNG_CRC_PIECE, length - offset)), crc)
                if crc != int.from_bytes(handle.read(4), "big"):
                    return (
                        f"its {kind!r} chunk at byte {position} fails its CRC-32 check: its "
                        "bytes were changed after it was written"
                    )
            if kind == "IEND":
                return None
            position += _PNG_CHUNK_OVERHEAD + length
        return None
    finally:
        handle.seek(start)


def upright(path: str, image: Image.Image) -> Image.Image:
    """``image`` as viewers show it: its EXIF / TIFF Orientation (rotation, mirroring) applied.

    Cameras, phones and some scanners' JPEG / PNG / TIFF exports store the pixels as captured
    and say in the Orientation tag how to turn them; viewers and annotation tools (CVAT,
    LabelMe) show, and so draw masks on, the turned image. Reading the raw pixels would give
    an image turned against its mask, or a mask turned against its image. Files without the
    tag (or with the value 1) come back unchanged.

    Raises:
        UnreadableFileError: the EXIF block cannot be parsed, so the orientation is unknown.
    """
    if _orientation(path, image) in (None, 1):
        return image
    return ImageOps.exif_transpose(image)


def upright_size(path: str, image: Image.Image) -> tuple[int, int]:
    """``(height, width)`` of :func:`upright`'s image, from the header alone (no decoding)."""
    if image.format == "TIFF":  # Pillow turns TIFFs itself and gives the turned size at open
        return image.height, image.width
    if _orientation(path, image) in _SIDE_SWAPPING_ORIENTATIONS:
        return image.width, image.height
    return image.height, image.width


def tiff_white_is_zero(image: Image.Image) -> bool:
    """Whether ``image`` is a TIFF whose PhotometricInterpretation is WhiteIsZero (0): its
    lowest value is displayed white.

    Pillow decodes 1- to 8-bit WhiteIsZero samples as displayed (inverted: a stored 1-bit 1
    reads as 0, an 8-bit 255 as 0) and 16-bit ones as stored. A mask's labels are its stored
    values (ImageJ / Fiji save binary masks with an inverting LUT this way, the structure
    stored as 255 and shown black), so the mask readers undo Pillow's inversion; a
    radiograph is read as displayed (as DICOM MONOCHROME1 is inverted), so
    :func:`kseg.io.read_radiograph` inverts the 16-bit ones Pillow left as stored.

    Bilevel TIFFs compressed with a fax code (CCITT, Group 3, Group 4) are the exception:
    fax pages are WhiteIsZero by convention, so writers choose WhiteIsZero for the code, not
    for the meaning, and store the image so that it shows unchanged (ImageMagick sets it
    exactly when writing Fax or Group4: a white structure is stored as 0). Masks read them
    as displayed, as Pillow decodes them.
    """
    tags = getattr(image, "tag_v2", None)
    return image.format == "TIFF" and tags is not None and tags.get(_TIFF_PHOTOMETRIC) == 0


def _orientation(path: str, image: Image.Image):
    try:
        return image.getexif().get(_EXIF_ORIENTATION, 1)
    except Exception as exc:  # Pillow's EXIF parser raises struct.error, KeyError, ...
        raise UnreadableFileError(
            path, f"has an EXIF block that cannot be parsed ({exc}); its orientation is unknown"
        ) from exc


def image_read_problem(exc: BaseException, what: str) -> str:
    """The message of an UnreadableFileError for a Pillow failure ``exc`` reading ``what``."""
    if isinstance(exc, Image.DecompressionBombError):
        return (
            f"declares an image too large to be {what} ({exc}); the file is damaged or "
            "hostile, refused before decoding"
        )
    return f"cannot be read as {what} ({type(exc).__name__}: {exc})"


_TIFF_NEW_SUBFILE_TYPE = 254
_REDUCED_RESOLUTION = 1  # bit 0 of NewSubfileType


def seek_full_resolution_page(image: Image.Image) -> int:
    """The number of frames of ``image`` that count: 1 for a TIFF whose pages are one
    full-resolution image and reduced-resolution copies of it (thumbnails, pyramid levels:
    NewSubfileType bit 0), whichever page comes first, after seeking ``image`` to the full
    one; otherwise its frame count, as it is. Call before loading.

    Scanners and slide or microscopy software write such files; Pillow opens the first page,
    which may be the thumbnail. A camera or phone JPEG whose Multi-Picture index holds its
    primary image and large thumbnails of it (Pillow: format MPO, several frames) likewise
    counts as one image, the primary.
    """
    frames = getattr(image, "n_frames", 1)
    if image.format == "MPO" and frames > 1 and _mpo_primary_and_thumbnails(image):
        image.seek(0)
        return 1
    if image.format != "TIFF" or frames == 1:
        return frames
    full_pages = []
    for page in range(frames):
        image.seek(page)
        if not image.tag_v2.get(_TIFF_NEW_SUBFILE_TYPE, 0) & _REDUCED_RESOLUTION:
            full_pages.append(page)
    image.seek(full_pages[0] if len(full_pages) == 1 else 0)
    return 1 if len(full_pages) == 1 else frames


_MPO_PRIMARY = "Baseline MP Primary Image"
_MPO_THUMBNAIL = "Large Thumbnail"  # Pillow's names of MPType 0x010001 and 0x010002


def _mpo_primary_and_thumbnails(image: Image.Image) -> bool:
    """Whether a JPEG's Multi-Picture index (CIPA DC-007) lists one primary image and, after
    it, only large thumbnails of it: what cameras and phones write (Pillow opens such files
    as several frames, format MPO). Stereo pairs, panoramas and undefined images are not."""
    try:
        entries = image.mpinfo[0xB002]
        kinds = [entry["Attribute"]["MPType"] for entry in entries]
    except Exception:  # no or damaged MP index: the frames stay what Pillow counts
        return False
    return (
        len(kinds) == getattr(image, "n_frames", 1)
        and kinds[0] == _MPO_PRIMARY
        and all(str(kind).startswith(_MPO_THUMBNAIL) for kind in kinds[1:])
    )


def high_bytes_only(image: Image.Image) -> str | None:
    """Why Pillow would keep only the high byte of ``image``'s samples, or None: a file of
    16-bit colour, colour with alpha or grey with alpha samples (Pillow has no 16-bit
    multi-channel mode and decodes them to 8 bits). Read before loading.

    The raw modes of 16-bit samples name their byte order (``RGB;16B``, ``RGBA;16L``); a
    16-bit BMP's ``BGR;16`` is 5-6-5 bits per pixel, which Pillow widens to 8 bits whole.
    """
    raw_mode = _raw_mode(image)
    maxval = netpbm_maxval(image)
    if image.mode == "RGB" and maxval is not None and maxval > 255:
        return (
            f"is a 16-bit colour PPM (maxval {maxval}), whose samples Pillow, kseg's image "
            "library, scales down to 8 bits"
        )
    sixteen_bit_samples = any(f";16{order}" in raw_mode for order in "BLN")
    if image.mode in ("RGB", "RGBA", "CMYK") and sixteen_bit_samples:
        kind = "grey with alpha" if raw_mode.startswith("LA") else image.mode
        return (
            f"is a 16-bit {kind} image ({raw_mode}), whose samples Pillow, kseg's image "
            "library, decodes to their high byte only"
        )
    return None


def netpbm_maxval(image: Image.Image) -> int | None:
    """The maxval of a PGM or PPM file whose samples Pillow rescales, read before loading:
    None for other files, and for maxval 255 (or 65535 in a PGM), read as stored.

    A netpbm file's samples run from 0 to its header's maxval (netpbm tools write label maps
    with maxval 1 or the number of labels, 12-bit images with 4095); Pillow stretches grey
    ones to its mode's full scale, so a maxval-4 label 1 reads as 64 and a 12-bit 1 as 16,
    and scales colour ones to 8 bits (a 16-bit colour label 1 reads as 0).
    """
    if image.format != "PPM" or image.mode not in ("L", "I", "RGB") or not image.tile:
        return None
    tile = image.tile[0]
    if tile.codec_name not in ("ppm", "ppm_plain") or len(tile.args) < 2:
        return None
    maxval, stored_as_is = tile.args[1], 65535 if image.mode == "I" else 255
    return maxval if isinstance(maxval, int) and maxval != stored_as_is else None


def netpbm_stored(image: Image.Image, maxval: int) -> np.ndarray:
    """The stored samples of a loaded PGM (or PPM of maxval below 255) image that Pillow
    stretched from 0..``maxval`` to its full scale (the rounding undone exactly: the stretch
    is at least one step per sample); ``uint8`` up to maxval 255, else ``uint16``."""
    full_scale = 65535 if image.mode == "I" else 255
    stored = np.rint(np.asarray(image).astype(np.float64) * maxval / full_scale)
    return stored.astype(np.uint8 if maxval <= 255 else np.uint16)


def negative_bytes_read_unsigned(image: Image.Image) -> str | None:
    """What is wrong with a loaded 8-bit TIFF of signed samples (SampleFormat 2, as numpy
    ``int8`` arrays are saved) holding negative values, or None.

    Pillow has no signed 8-bit mode and decodes such samples as unsigned: -1 reads as 255,
    -128 as 128, so an "ignore" label of -1 became the full-scale structure value. Files of
    non-negative signed samples hold the same bytes as unsigned ones and read right.
    """
    if image.format != "TIFF" or image.mode != "L":
        return None
    sample_format = image.tag_v2.get(_TIFF_SAMPLE_FORMAT)  # one value per sample: a tuple
    if _SIGNED_INTEGER not in (sample_format if isinstance(sample_format, tuple) else ()):
        return None
    as_signed = np.asarray(image).view(np.int8)
    if as_signed.min() >= 0:
        return None
    return (
        f"is a signed 8-bit TIFF (SampleFormat 2) holding {value_counts(as_signed[as_signed < 0])}"
        ", which Pillow, kseg's image library, would read as unsigned (-1 as 255)"
    )


def _raw_mode(image: Image.Image) -> str:
    """The decoder's raw mode of a not yet loaded image ("" once loaded)."""
    if not image.tile:
        return ""
    args = image.tile[0].args
    raw_mode = args if isinstance(args, str) else args[0] if args else ""
    return raw_mode if isinstance(raw_mode, str) else ""


def sub_byte_grey_bits(image: Image.Image) -> int | None:
    """2 or 4 for a grey image stored with 2 or 4 bits per pixel, else None; read from the
    decoder's raw mode, which is gone once the image is loaded.

    Pillow widens such samples to the 8-bit scale (a 2-bit 1 reads as 85, a 4-bit 1 as 17),
    as the PNG standard says to display them; a label tool that writes label maps at the
    smallest bit depth means the stored 1, and optimisers (optipng) write 8-bit 0 / 85 / 170 /
    255 masks as 2-bit files. Knowing the depth, both readings are possible.
    """
    if image.mode != "L":
        return None
    raw_mode = _raw_mode(image)
    for bits in (2, 4):
        if raw_mode.startswith(f"L;{bits}"):
            return bits
    return None


def is_lossy(path: str, image: Image.Image) -> bool:
    """JPEG, AVIF, a TIFF of JPEG-compressed strips or tiles, a JPEG 2000 file of the
    irreversible wavelet, or a WebP whose image chunk is lossy VP8 rather than lossless VP8L."""
    if image.format in _LOSSY_FORMATS:
        return True
    if image.format == "TIFF":
        return image.info.get("compression") in _LOSSY_TIFF_COMPRESSIONS
    if image.format == "JPEG2000":
        return _jpeg_2000_irreversible(path)
    if image.format != "WEBP":
        return False
    with open(path, "rb") as handle:
        data = handle.read(1 << 16)
    offset = 12  # RIFF chunks after "RIFF" <size> "WEBP"
    while offset + 8 <= len(data):
        chunk = data[offset : offset + 4]
        if chunk in (b"VP8 ", b"VP8L"):
            return chunk == b"VP8 "
        size = int.from_bytes(data[offset + 4 : offset + 8], "little")
        offset += 8 + size + (size & 1)
    return True  # no lossless chunk found where one would be: treat as lossy


_JPEG_2000_SOC_SIZ = b"\xff\x4f\xff\x51"  # start of codestream, then the size marker
_JPEG_2000_COD = 0x52
_JPEG_2000_TILE_START = 0x90


def _jpeg_2000_irreversible(path: str) -> bool:
    """Whether a JPEG 2000 file (.jp2 or raw codestream) uses the irreversible 9-7 wavelet,
    which is always lossy; the reversible 5-3 one is lossless unless the encoder dropped
    quality layers, which its header does not say (Pillow decodes both without a word). A
    file whose main header names no wavelet is taken as lossy."""
    with open(path, "rb") as handle:
        data = handle.read(1 << 16)
    return jpeg_2000_irreversible(data) is not False


def jpeg_2000_irreversible(data: bytes) -> bool | None:
    """Whether the JPEG 2000 codestream in ``data`` (bare, or inside .jp2 boxes) uses the
    irreversible 9-7 wavelet (True) or the reversible 5-3 one (False); None when no coding
    style (COD) segment comes before the first tile.

    Read from the COD segment of the main header (ISO/IEC 15444-1 A.6.1): the byte 13 places
    after the marker's start is the transformation, 0 for 9-7, 1 for 5-3.
    """
    offset = data.find(_JPEG_2000_SOC_SIZ)
    if offset < 0:
        return None
    offset += 2
    while offset + 4 <= len(data) and data[offset] == 0xFF:
        marker = data[offset + 1]
        length = int.from_bytes(data[offset + 2 : offset + 4], "big")
        if marker == _JPEG_2000_COD:
            return data[offset + 13] == 0 if offset + 13 < len(data) else None
        if marker == _JPEG_2000_TILE_START or length < 2:
            return None
        offset += 2 + length
    return None


def jpeg_2000_stored(path: str, image: Image.Image) -> tuple[np.ndarray, int] | None:
    """``(samples, precision)``: the stored samples of a loaded grey JPEG 2000 image whose
    values Pillow has moved, as ``int64`` (negative where the file's samples are signed and
    negative); None when Pillow's values are the stored ones (unsigned 8- or 16-bit).

    Pillow shifts a p-bit component to the top of its 8- or 16-bit mode and adds
    ``2**(p - 1)`` to signed ones: a 13-bit sample 1 reads as 8, a signed 16-bit -30 as
    32738. Precision and sign are the first component's Ssiz in the size (SIZ) segment,
    ISO/IEC 15444-1 A.5.1: the byte 40 places after the marker's start, its low 7 bits the
    precision minus 1, its high bit the sign.
    """
    if image.format != "JPEG2000" or image.mode not in ("L", "I;16"):
        return None
    with open(path, "rb") as handle:
        data = handle.read(1 << 16)
    size_segment = data.find(_JPEG_2000_SOC_SIZ) + 2
    if size_segment < 2 or size_segment + 41 > len(data):
        return None  # Pillow found the segment to open the file; nothing to undo without it
    component = data[size_segment + 40]
    precision, signed = (component & 0x7F) + 1, bool(component & 0x80)
    mode_bits = 8 if image.mode == "L" else 16
    if precision == mode_bits and not signed:
        return None
    shifted = np.asarray(image).astype(np.int64) >> max(mode_bits - precision, 0)
    return shifted - (2 ** (precision - 1) if signed else 0), precision


def value_counts(values: np.ndarray, limit: int = 10) -> str:
    """``"0 (1200 px), 100 (30 px)"``: the distinct values and their pixel counts."""
    distinct, counts = np.unique(values, return_counts=True)
    listed = ", ".join(
        f"{v:g} ({c} px)" for v, c in zip(distinct[:limit], counts[:limit], strict=True)
    )
    more = f" and {len(distinct) - limit} more values" if len(distinct) > limit else ""
    return listed + more
