"""NIfTI-1/2 volumes in and out of kseg's Volume.

nibabel stores arrays as ``(i, j, k)`` (x fastest on disk) with an affine to RAS+ world
coordinates. kseg arrays are ``(z, y, x)``: the array is transposed and the affine's first
three columns reversed, so the same voxel keeps the same world position. Writing does the
inverse, so a round trip returns the same array and the same affine.

Reference:
    Cox R. W. et al., "A (sort of) new image data format standard: NiFTI-1", NIfTI Data Format
    Working Group (2004), https://nifti.nimh.nih.gov/nifti-1 (qform / sform, xyzt_units).
"""

from __future__ import annotations

import gzip
import io
import os
import warnings
import zlib

import nibabel as nib
import numpy as np
from nibabel.arrayproxy import ArrayProxy
from nibabel.openers import Opener

from kseg._files import atomic_output
from kseg.errors import GeometryError, MaskError, UnreadableFileError
from kseg.io._pointer_files import pointer_note
from kseg.io.volume import Volume

__all__ = [
    "FormMismatchWarning",
    "NonFiniteVoxelWarning",
    "UnknownOrientationWarning",
    "read_nifti",
    "read_nifti_labels",
    "write_nifti",
]

# A label map stored with scl_slope / scl_inter comes back from the scaling a rounding error off
# its integers (nibabel's 1/255 slope gives 1.00000006 in float32); farther off than this is
# not a label map.
_LABEL_ROUNDING_TOLERANCE = 1e-3

# Millimetres per NIfTI spatial unit; "unknown" is taken as mm, as every viewer does.
_MM_PER_UNIT = {"mm": 1.0, "unknown": 1.0, "meter": 1000.0, "micron": 0.001}
_NIFTI_SUFFIXES = (".nii.gz", ".nii")
# Index (k, j, i) <-> (i, j, k): reverse the three spatial columns, keep the translation.
_REVERSE_AXES = [2, 1, 0, 3]
# The voxel axes of an affine span less than this fraction of the volume of a box with the
# same edge lengths: the axes are (nearly) linearly dependent and the grid has no inverse.
_SINGULAR_TOLERANCE = 1e-6
# qform and sform farther apart than this (mm, in any voxel axis or the origin) place the
# volume differently; both are stored as float32, so exact copies agree far closer.
_FORM_MISMATCH_MM = 1e-2
# NIFTI_XFORM_UNKNOWN, SCANNER_ANAT, ALIGNED_ANAT, TALAIRACH, MNI_152, TEMPLATE_OTHER.
_XFORM_CODES = frozenset(range(6))


class NonFiniteVoxelWarning(UserWarning):
    """A floating-point NIfTI volume holds NaN or infinite voxels.

    The array is returned exactly as stored (NaN stays NaN); the message names the file and
    counts the NaN, +inf and -inf voxels, so the caller can decide (``np.nan_to_num``, a mask,
    or dropping the case). Metrics and losses fed such voxels return NaN.
    """


class FormMismatchWarning(UserWarning):
    """A NIfTI header has both an sform and a qform (codes > 0) and they disagree.

    kseg uses the sform, as nibabel, FSL and the NIfTI standard's "method 3" do; ITK-based
    tools (SimpleITK, ITK-SNAP, nnU-Net's reader) may use the qform and place the same voxels
    elsewhere. The message names the file and the largest difference in millimetres. A
    sheared sform always differs from the qform, which cannot hold a shear.
    """


class UnknownOrientationWarning(UserWarning):
    """A NIfTI header has ``sform_code`` and ``qform_code`` both 0 (NIfTI "method 1").

    The file then states voxel sizes (``pixdim``) but no position or orientation. The affine
    is nibabel's fallback for that case, ``diag(-dx, dy, dz)`` centred on the volume (the
    ANALYZE 7.5 convention): spacing is right, but world positions and the left/right
    direction are guesses, so do not combine such a volume with another by world coordinates.
    """


def read_nifti(path: os.PathLike | str, *, patient_id: str | None = None) -> Volume:
    """Read a NIfTI file (``.nii`` or ``.nii.gz``) into a Volume.

    The suffix is taken in any case, and the file's bytes, not its suffix, say whether it
    is gzip-compressed (an uncompressed ``.nii.gz`` is read, as ITK-based tools read it).

    Args:
        path: the NIfTI file.
        patient_id: patient the volume belongs to; by default the file name without
            ``.nii``/``.nii.gz``, in any case (datasets usually name files after the
            case).

    Returns:
        Volume with ``array`` ``(z, y, x)`` = nibabel's ``(i, j, k)`` transposed, in the
        stored dtype after any scl_slope/scl_inter scaling; ``affine`` = nibabel's affine
        (sform, else qform; RAS+) with its spatial columns reordered to ``(k, j, i)`` and
        converted to millimetres when the header states metres or microns;
        ``source_files`` = ``(path,)``; ``metadata`` with ``sform_code``, ``qform_code`` and the
        header's ``spatial_unit``.

    Raises:
        UnreadableFileError: the file cannot be read as NIfTI (or is another format nibabel
            reads), its dim[0] leaves out a dimension longer than 1, its vox_offset points
            into its header, its data are cut short (or its header declares more voxel
            bytes than the file can hold: checked before anything is allocated), its
            xyzt_units code is unknown, it is not a 3D volume (trailing dimensions of size 1
            are dropped; a 2D image becomes one slice), a dimension is 0, the voxels are
            not real scalars (RGB, complex), or a ``.nii.gz``'s gzip stream is damaged or cut
            short (its CRC-32 and length are checked to the end, which nibabel skips).
        GeometryError: ``sform_code`` or ``qform_code`` is not an xform code (0-5; nibabel
            would reset it to 0 silently); the affine in use (sform when ``sform_code`` > 0,
            else qform when ``qform_code`` > 0, else the pixdim fallback) holds NaN or
            infinity, or is singular (a zero voxel size, or voxel axes that are linearly
            dependent); or the qform / fallback's pixdim voxel sizes are zero, negative or not
            finite (nibabel would silently use 1 mm for a zero one, abs() for a negative one).

    Warns:
        NonFiniteVoxelWarning: float voxels that are NaN or infinite (returned as stored).
        UnknownOrientationWarning: ``sform_code`` and ``qform_code`` are both 0.
        FormMismatchWarning: sform and qform are both set and place the voxels more than
            0.01 mm apart (the sform is used).

    Example:
        >>> ct = read_nifti("example_ct_sm.nii.gz")  # doctest: +SKIP
        >>> ct.shape, ct.spacing  # doctest: +SKIP
        ((30, 101, 122), (3.0, 3.0, 3.0))
    """
    path = os.fspath(path)
    try:
        # Never memory-mapped (_load and _read_voxels read through streams): nibabel's
        # default maps a .nii and the array stayed a view of the file, so saving it back in
        # place (nibabel truncates, then writes from the view) killed the process with
        # SIGBUS and left the file cut short.
        image = _load(path)
    except Exception as exc:  # nibabel raises ImageFileError, OSError, EOFError, zlib.error
        raise UnreadableFileError(
            path, f"cannot be read as NIfTI ({exc}){pointer_note(path)}"
        ) from exc
    if not isinstance(image, (nib.Nifti1Image, nib.Nifti2Image)):
        raise UnreadableFileError(
            path, f"expected a NIfTI-1/2 file, nibabel reads it as {type(image).__name__}"
        )
    header = image.header
    _check_dimension_count(path, header)
    shape = tuple(int(n) for n in header.get_data_shape())
    if 0 in shape:
        raise UnreadableFileError(path, f"has an empty dimension (shape {shape})")
    dtype = header.get_data_dtype()
    if dtype.fields is not None or dtype.kind not in "biuf":
        raise UnreadableFileError(
            path, f"expected real scalar voxels, the file stores {dtype} (RGB or complex?)"
        )
    affine = _checked_affine(path, image)
    _check_declared_size(path, header, shape, dtype)
    _check_data_offset(path, image)
    data = _read_voxels(path, image, shape, dtype)
    while data.ndim > 3 and data.shape[-1] == 1:
        data = data[..., 0]
    if data.ndim == 2:
        data = data[..., np.newaxis]
    if data.ndim != 3:
        raise UnreadableFileError(path, f"expected a 3D volume, got shape {data.shape}")
    if data.dtype.kind == "f":
        _warn_non_finite(path, data)
    try:
        spatial_unit = header.get_xyzt_units()[0]
    except KeyError:
        raise UnreadableFileError(
            path, f"xyzt_units {int(header['xyzt_units'])} holds no known NIfTI unit code"
        ) from None
    if spatial_unit not in _MM_PER_UNIT:
        raise UnreadableFileError(path, f"unsupported spatial unit {spatial_unit!r}")
    affine[:3, :] *= _MM_PER_UNIT[spatial_unit]
    if patient_id is None:
        patient_id = _strip_suffix(os.path.basename(path))
    return Volume(
        array=np.ascontiguousarray(data.transpose(2, 1, 0)),
        affine=affine[:, _REVERSE_AXES],
        patient_id=str(patient_id),
        source_files=(path,),
        metadata={
            "sform_code": int(header["sform_code"]),
            "qform_code": int(header["qform_code"]),
            "spatial_unit": spatial_unit,
            # the file's own grid, to tell it from a new grid that happens to be centred
            # like nibabel's fallback affine (a resampled copy)
            "file_affine": affine[:, _REVERSE_AXES],
        },
    )


def _load(path: str):
    """nibabel's image of a single-file NIfTI-1 / NIfTI-2 at ``path``, opened by its own
    name and read by its content.

    ``nib.load`` derives the file to open from the suffix and lower-cases a mixed-case one:
    ``spleen_5.Nii.Gz`` was looked for as ``spleen_5.nii.Gz`` and reported missing. It also
    decompresses by the suffix, so a ``.nii.gz`` holding uncompressed bytes (a browser that
    undid the server's gzip, a renamed file) was "not a gzip file", though ITK-based tools
    read it; the bytes decide here (:func:`_open_stream`). Anything else goes to
    ``nib.load``, which names what it is."""
    with _open_stream(path) as handle:
        block = handle.read(nib.Nifti2Header.sizeof_hdr)
        for klass, magic in ((nib.Nifti2Image, b"n+2"), (nib.Nifti1Image, b"n+1")):
            header = klass.header_class
            if header.may_contain_header(block):
                fields = np.ndarray(
                    (), dtype=header.template_dtype, buffer=block[: header.sizeof_hdr]
                )
                if fields["magic"] != magic:
                    break  # a header-and-image pair (.hdr / .img): nib.load refuses it by name
                handle.seek(0)
                # header only: _read_voxels reads the voxels from a stream of its own
                holder = nib.FileHolder(filename=path, fileobj=handle)
                return klass.from_file_map({"image": holder, "header": holder}, mmap=False)
    return nib.load(path, mmap=False)


def _open_stream(path: str):
    """The bytes of ``path``: inflated when they are gzip, whatever the suffix says, as they
    are for a ``.nii`` / ``.nii.gz`` name in any case; other compressions (``.bz2``,
    ``.zst``) by their suffix, as nibabel opens them."""
    if _is_gzip(path):
        return gzip.open(path, "rb")
    if path.lower().endswith(_NIFTI_SUFFIXES):
        return open(path, "rb")
    return nib.openers.ImageOpener(path)


def read_nifti_labels(path: os.PathLike | str, *, patient_id: str | None = None) -> Volume:
    """Read a NIfTI label map into a Volume of integer labels.

    Label files ship in any voxel type: uint8, int16, float32, or integers scaled by
    ``scl_slope`` / ``scl_inter``, which come back a rounding error off their integers. This
    reader returns what they encode, so a comparison with ``1`` never silently fails.

    Args:
        path: the NIfTI file.
        patient_id: as for :func:`read_nifti`.

    Returns:
        Volume as :func:`read_nifti` gives it, its ``array`` ``uint8`` (``uint16`` when a
        label exceeds 255); float voxels within 1e-3 of an integer are taken to it.

    Raises:
        MaskError: a voxel is negative, not finite, or farther than 1e-3 from an integer
            (the message lists some of the values found), or a label exceeds 65535.
        UnreadableFileError, GeometryError: as for :func:`read_nifti`.

    Example:
        >>> labels = read_nifti_labels("labelsTr/spleen_2.nii.gz")  # doctest: +SKIP
        >>> np.unique(labels.array)  # doctest: +SKIP
        array([0, 1], dtype=uint8)
    """
    volume = read_nifti(path, patient_id=patient_id)
    array = volume.array
    if array.dtype.kind == "f":
        nearest = np.rint(array)
        off = ~np.isfinite(array) | (np.abs(array - nearest) > _LABEL_ROUNDING_TOLERANCE)
        if off.any():
            raise MaskError(
                path,
                f"is not a label map: {int(off.sum())} voxels are not integers, e.g. "
                f"{np.unique(array[off])[:5].tolist()}",
            )
        array = nearest
    low, high = (array.min(), array.max()) if array.size else (0, 0)
    if low < 0 or high > np.iinfo(np.uint16).max:
        raise MaskError(path, f"label values span {low:g}..{high:g}; expected 0..65535")
    dtype = np.uint8 if high <= np.iinfo(np.uint8).max else np.uint16
    return volume.with_array(array.astype(dtype))


def _check_dimension_count(path: str, header) -> None:
    """Refuse a header whose dim[0] leaves out a dimension longer than 1.

    nibabel (as the standard says) reads only the first dim[0] dimensions: a volume whose
    writer put 2 in dim[0] but 30 in dim[3] comes back as its first slice, the other 29
    ignored without a word. Writers fill unused dimensions with 1 (or 0), so a longer one
    means dim[0] or the dimension is wrong, and the file does not say which.
    """
    dims = [int(n) for n in header["dim"]]
    count = dims[0]
    ignored = dims[count + 1 :] if 1 <= count <= 7 else []
    if any(n > 1 for n in ignored):
        raise UnreadableFileError(
            path,
            f"dim[0] says {count} dimension(s), but dim is {dims[1:]}: dimension(s) "
            f"{[count + 1 + i for i, n in enumerate(ignored) if n > 1]} beyond dim[0] are longer "
            "than 1, and nibabel would ignore them; the header contradicts itself",
        )


def _check_data_offset(path: str, image) -> None:
    """Refuse a single-file NIfTI whose vox_offset points into its own header.

    The standard puts a .nii file's voxels at vox_offset >= 352 (NIfTI-2: 544), after the
    header and its extension flag; nibabel takes a vox_offset of 0 literally and returns the
    header's bytes as the first voxels, silently shifting every voxel after them. Where the
    voxels really start (352? right after the 348-byte header?) the file does not say.
    """
    offset = int(image.dataobj.offset)
    minimum = int(type(image.header).single_vox_offset)
    if offset < minimum:
        raise UnreadableFileError(
            path,
            f"vox_offset is {offset}, inside the header: a single-file NIfTI's voxels start at "
            f"byte {minimum} or later; the header's own bytes would be read as voxels",
        )


def _checked_affine(path: str, image) -> np.ndarray:
    """The affine nibabel uses, refused when it describes no grid."""
    header = image.header
    stored = _stored_header(path, image)
    for name in ("sform_code", "qform_code"):
        code = int(stored[name])
        if code not in _XFORM_CODES:
            # nibabel would reset it to 0 and fall back to another affine without a word.
            raise GeometryError(
                path, f"{name} {code} is not a NIfTI xform code ({sorted(_XFORM_CODES)})"
            )
    sform_code, qform_code = int(header["sform_code"]), int(header["qform_code"])
    if sform_code > 0:
        source = f"sform (sform_code {sform_code})"
    else:
        source = (
            f"qform (qform_code {qform_code})" if qform_code > 0 else "pixdim fallback"
        )
        # nibabel replaces zero voxel sizes by 1 while loading (logging, not raising): the
        # header as stored in the file says what the qform / fallback is really built from.
        zooms = np.asarray(stored["pixdim"][1:4], dtype=np.float64)
        if not np.all(np.isfinite(zooms)) or np.any(zooms <= 0):
            raise GeometryError(
                path,
                f"pixdim voxel sizes {zooms.tolist()} are not all positive finite numbers, and "
                f"the {source} is built from them (sform_code is 0)",
            )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # NaN quaternions
        try:
            affine = np.array(image.affine, dtype=np.float64)
        except Exception as exc:  # HeaderDataError on impossible quaternions
            raise GeometryError(path, f"the {source} cannot be decoded ({exc})") from exc
    _check_affine(path, affine, f"the {source} affine")
    if sform_code > 0 and qform_code > 0:
        _warn_form_mismatch(path, header, affine)
    if sform_code <= 0 and qform_code <= 0:
        warnings.warn(
            UnknownOrientationWarning(
                f"{path}: sform_code and qform_code are both 0: the file gives voxel sizes but "
                "no orientation or position; using nibabel's fallback diag(-dx, dy, dz), "
                "centred (left/right and world positions are guesses)"
            ),
            stacklevel=3,
        )
    return affine


def _warn_form_mismatch(path: str, header, sform: np.ndarray) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        try:
            qform = np.array(header.get_qform(), dtype=np.float64)
        except Exception:  # an impossible quaternion: the sform is used regardless
            qform = np.full((4, 4), np.nan)
    difference = float(np.max(np.abs(qform[:3] - sform[:3])))
    if not difference <= _FORM_MISMATCH_MM:  # NaN (undecodable qform) included
        warnings.warn(
            FormMismatchWarning(
                f"{path}: sform (code {int(header['sform_code'])}) and qform (code "
                f"{int(header['qform_code'])}) disagree by up to {difference:.4g} mm; using the "
                "sform, as nibabel and FSL do (ITK-based tools may use the qform)"
            ),
            stacklevel=4,
        )


# Deflate (gzip) expands at most 1032:1, so a .nii.gz cannot hold more voxel bytes than this
# many times its own size (plus a margin for headers): checked before anything is allocated.
_MAX_GZIP_RATIO = 1100


def _check_declared_size(path: str, header, shape, dtype) -> None:
    """Refuse a header declaring more voxel bytes than the file can hold, before nibabel
    allocates them: a few-kB .nii.gz declaring 1024 x 1024 x 600 float64 would otherwise
    take 5 GB of memory only to fail (or be killed) reading it."""
    declared = int(np.prod(shape, dtype=np.float64) * dtype.itemsize)
    offset = int(header.get("vox_offset", 0) or 0)
    size = os.path.getsize(path)
    if _is_gzip(path):
        limit, how = size * _MAX_GZIP_RATIO + (1 << 20), "decompresses to at most"
    elif not path.endswith((".bz2", ".zst")):
        limit, how = max(size - offset, 0), "has room after its header for"
    else:
        return
    if declared > limit:
        raise UnreadableFileError(
            path,
            f"voxel data cannot be read: the header declares shape {shape} of {dtype} "
            f"({declared} bytes), but the {size}-byte file {how} {limit} bytes; the header is "
            "damaged or the file cut short",
        )


_GZIP_READ_CHUNK = 1 << 20


def _read_voxels(path: str, image, shape, dtype) -> np.ndarray:
    """The voxels, scaled; a .nii.gz's gzip stream is also read to its end, in the same pass.

    nibabel decompresses only as far as the voxels go, so gzip's CRC-32 and length, stored
    after them, were never checked: a flipped bit in the deflate data gave other voxel values
    (in two sweeps, over half of 200 single-bit flips in a label map), a cut trailer went unnoticed.
    nibabel therefore reads the voxels from a gzip stream opened here, 1 MiB at a time, and
    the stream is then read on to its end so gzip checks the CRC-32 and length of everything
    read: one decompression pass, not a checking pass before nibabel's own."""
    proxy = image.dataobj
    spec = (proxy.shape, proxy.dtype, proxy.offset, proxy.slope, proxy.inter)
    if not _is_gzip(path):
        try:  # uncompressed bytes whatever the suffix says; .bz2 / .zst by nibabel's opener
            with _open_stream(path) as stream:
                return np.asarray(ArrayProxy(stream, spec, mmap=False, order=proxy.order))
        except Exception as exc:  # cut-short data: OSError (short read), ValueError
            raise _unreadable_voxels(path, shape, dtype, exc) from exc
    try:
        with gzip.open(path, "rb") as stream:
            voxels = ArrayProxy(_ChunkedReads(stream, path), spec, mmap=False, order=proxy.order)
            data = np.asarray(voxels)
            while stream.read(_GZIP_READ_CHUNK):
                pass
    except (EOFError, zlib.error, gzip.BadGzipFile) as exc:
        raise UnreadableFileError(
            path,
            f"its gzip stream is damaged or cut short ({type(exc).__name__}: {exc}); the "
            "voxel values cannot be trusted",
        ) from exc
    except Exception as exc:  # an intact stream holding too few voxels: nibabel's OSError
        raise _unreadable_voxels(path, shape, dtype, exc) from exc
    return data


class _ChunkedReads(io.RawIOBase):
    """A gzip stream whose ``readinto`` fills the buffer a bounded chunk at a time.

    GzipFile's own ``readinto`` (io.BufferedIOBase's) inflates the whole request into one
    bytes object and copies it over, so reading the voxels would briefly hold them twice."""

    def __init__(self, stream: gzip.GzipFile, name: str):
        super().__init__()
        self._stream = stream
        self.name = name  # nibabel names it in its short-read message

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        return self._stream.seek(offset, whence)

    def tell(self) -> int:
        return self._stream.tell()

    def readinto(self, buffer) -> int:
        view = memoryview(buffer).cast("B")
        filled = 0
        while filled < len(view):
            chunk = self._stream.read(min(_GZIP_READ_CHUNK, len(view) - filled))
            if not chunk:
                break
            view[filled : filled + len(chunk)] = chunk
            filled += len(chunk)
        return filled


def _is_gzip(path: str) -> bool:
    with open(path, "rb") as handle:
        return handle.read(2) == b"\x1f\x8b"


def _unreadable_voxels(path: str, shape, dtype, exc: Exception) -> UnreadableFileError:
    declared = int(np.prod(shape, dtype=np.float64) * dtype.itemsize)
    return UnreadableFileError(
        path,
        f"voxel data cannot be read: the header declares shape {shape} of {dtype} "
        f"({declared} bytes) ({type(exc).__name__}: {exc})",
    )


def _stored_header(path: str, image):
    """The header exactly as in the file, without the fixes nibabel applies on loading."""
    try:
        with _open_stream(path) as handle:
            raw = handle.read(image.header.sizeof_hdr)
        return type(image.header).from_fileobj(io.BytesIO(raw), check=False)
    except Exception as exc:  # it was read once already; this is belt and braces
        raise UnreadableFileError(path, f"header cannot be read ({exc})") from exc


def _warn_non_finite(path: str, data: np.ndarray) -> None:
    nan = int(np.count_nonzero(np.isnan(data)))
    positive = int(np.count_nonzero(np.isposinf(data)))
    negative = int(np.count_nonzero(np.isneginf(data)))
    if nan or positive or negative:
        warnings.warn(
            NonFiniteVoxelWarning(
                f"{path}: {nan + positive + negative} of {data.size} voxels are not finite "
                f"({nan} NaN, {positive} +inf, {negative} -inf); returned as stored"
            ),
            stacklevel=3,
        )


def write_nifti(volume: Volume, path: os.PathLike | str) -> None:
    """Write a Volume as NIfTI-1, atomically (temporary file in the same folder, then rename).

    The affine goes to the sform (code 1, scanner) and, when it has no shear, also to the
    qform; units are millimetres. A volume :func:`read_nifti` read from a file without
    orientation (sform_code and qform_code 0, :class:`UnknownOrientationWarning`), and still
    on that file's grid (a prediction on it, say), is written the same way, codes 0 and its
    voxel sizes, so no reader places it elsewhere than the input. A sheared affine (a
    gantry-tilted CT) is kept whole in the sform with qform_code 0, since a qform cannot
    hold a shear and would place the slices elsewhere; nibabel and FSL read such a file
    right, while ITK-based readers (SimpleITK 2.1+, nnU-Net, TorchIO) refuse it ("ITK only
    supports orthonormal direction cosines", ITK issue #3994): write
    :func:`kseg.geometry.deskew`'s result for them. Boolean arrays are stored as uint8,
    float16 ones (a mixed-precision model's probabilities) as float32, and 64-bit integers
    as int32 when their values fit (else as 64-bit integers); every other type, float64
    included, as it is. An existing file at ``path`` is replaced only once the new one is
    complete.

    Args:
        volume: the Volume to write.
        path: destination ending in ``.nii`` or ``.nii.gz``, in any case (gzip follows the
            suffix; the name is kept as given).

    Raises:
        ValueError: ``path`` does not end in ``.nii`` or ``.nii.gz`` (in any case).
        GeometryError: the affine holds NaN or infinity or is singular (such a file could
            not be read back); nothing is written.

    Example:
        >>> import tempfile
        >>> from kseg.phantoms.msd_spleen import spleen_phantom_case
        >>> ct = spleen_phantom_case(2, shape=(4, 16, 16), spacing=(5.0, 4.0, 4.0)).image
        >>> path = os.path.join(tempfile.mkdtemp(), "case_0001.nii.gz")
        >>> write_nifti(ct, path)
        >>> back = read_nifti(path)
        >>> np.array_equal(back.array, ct.array), np.allclose(back.affine, ct.affine)
        (True, True)

        A DICOM series converted: ``write_nifti(read_dicom_series("DICOM_anon"),
        "case_0001.nii.gz")``.
    """
    path = os.fspath(path)
    suffix = next((s for s in _NIFTI_SUFFIXES if path.lower().endswith(s)), None)
    if suffix is None:
        raise ValueError(f"{path}: NIfTI output must end in .nii or .nii.gz (in any case)")
    data = np.asarray(volume.array).transpose(2, 1, 0)
    if data.dtype == np.bool_:
        data = data.astype(np.uint8)
    elif data.dtype == np.float16:  # NIfTI has no half floats; float32 holds each exactly
        data = data.astype(np.float32)
    affine = volume.affine[:, _REVERSE_AXES]
    # nibabel raised a bare HeaderDataError ("Could not decompose affine") naming no file
    _check_affine(path, affine, "the affine", ", and no NIfTI reader could place the voxels")
    stored = None
    if data.dtype.kind in "iu" and data.dtype.itemsize == 8:
        # 64-bit integers (numpy's argmax labels) as int32, which every NIfTI tool reads,
        # when their values fit; else as they are (NIfTI-1 has INT64 / UINT64). Not
        # nibabel's dtype="compat": it also narrowed float64 to float32, changing values,
        # and raised a bare ValueError for integers beyond int32.
        fits = np.iinfo(np.int32)
        small = data.size == 0 or (data.min() >= fits.min and data.max() <= fits.max)
        stored = np.int32 if small else data.dtype
    image = nib.Nifti1Image(data, affine, dtype=stored)
    image.header.set_xyzt_units("mm")
    if _orientation_unknown(volume, image.header, affine):
        # Read from a file with no sform and no qform: its affine is nibabel's guess, which
        # ITK-based viewers do not share (they put the origin at 0, not the centre); codes
        # 0 again make every reader place this file exactly as it places the input.
        image.set_sform(None, code=0)
        image.set_qform(None, code=0)
    else:
        image.set_sform(affine, code=1)
        image.set_qform(affine, code=1 if _is_orthogonal(affine) else 0)
    # Written through a file object, not nib.save(name): nibabel picks the file by the
    # name's suffix and lower-cases a mixed-case one (".Nii" was saved as ".nii" beside an
    # empty temporary file, and the empty file renamed into place).
    with atomic_output(path) as temporary, open(temporary, "wb") as raw:
        if suffix == ".nii.gz":
            # as nib.save writes a .nii.gz: its default level, no name or time stamp
            with gzip.GzipFile(
                "", "wb", Opener.default_compresslevel, fileobj=raw, mtime=0
            ) as stream:
                image.to_file_map(image.make_file_map({"image": stream}))
        else:
            image.to_file_map(image.make_file_map({"image": raw}))


def _check_affine(path: str, affine: np.ndarray, name: str, consequence: str = "") -> None:
    """A GeometryError naming ``path`` for an affine holding NaN or infinity, or a singular
    one (zero or parallel axes), read or about to be written."""
    if not np.all(np.isfinite(affine)):
        raise GeometryError(path, f"{name} holds NaN or infinity: {affine[:3].tolist()}")
    axes = affine[:3, :3]
    lengths = np.linalg.norm(axes, axis=0)
    if np.any(lengths == 0) or abs(np.linalg.det(axes)) <= _SINGULAR_TOLERANCE * np.prod(lengths):
        raise GeometryError(
            path,
            f"{name} is singular (voxel sizes {lengths.round(6).tolist()}, axes "
            f"{axes.round(6).tolist()}): it maps the voxel grid onto a plane or a line"
            f"{consequence}",
        )


def _orientation_unknown(volume: Volume, header, affine: np.ndarray) -> bool:
    """The volume was read from a NIfTI file with sform_code and qform_code 0 and its grid is
    still that file's: its affine is the pixdim fallback for its shape and voxel sizes."""
    metadata = volume.metadata
    if metadata.get("sform_code") != 0 or metadata.get("qform_code") != 0:
        return False
    file_affine = metadata.get("file_affine")
    if file_affine is not None and not np.allclose(
        volume.affine, file_affine, rtol=0.0, atol=1e-4
    ):
        return False
    return bool(np.allclose(affine, header.get_base_affine(), rtol=0.0, atol=1e-4))


def _strip_suffix(name: str) -> str:
    for suffix in _NIFTI_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def _is_orthogonal(affine: np.ndarray) -> bool:
    columns = affine[:3, :3]
    gram = columns.T @ columns
    return bool(np.allclose(gram, np.diag(np.diag(gram)), atol=1e-6 * np.abs(gram).max()))
