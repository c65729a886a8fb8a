"""Corrupted files found by a seeded mutation sweep over the public readers (truncations,
byte and 4-byte overwrites at header offsets, inflated length fields), one test per class
of finding, and a small sweep of the same kind kept as a guard.

Every reader must read a file correctly or raise a kseg error naming it, allocate nothing
the file cannot back, and leave the file as it was. The seed files are written here with
PIL, nibabel, numpy or pydicom, or are pydicom's own test files or the real samples in
../shared/data; the damage is done to their bytes here, never by kseg.
"""

from __future__ import annotations

import gzip
import io
import os
import random
import struct
import time
import tracemalloc
import warnings
import zlib

import nibabel as nib
import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.data import get_testdata_file
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, RLELossless
from test_hostile_inputs import _fingerprint, _png_chunk

from kseg.errors import KsegError, UnreadableFileError
from kseg.io import (
    LabelRule,
    read_dicom_image,
    read_dicom_seg,
    read_dicom_seg_masks,
    read_labels,
    read_mask,
    read_mask_stack,
    read_nifti,
    read_nifti_labels,
    read_npz_mask,
    read_radiograph,
    read_rtstruct,
)


def _refused(reader, path, *needles, error=UnreadableFileError) -> str:
    before = _fingerprint(path)
    with pytest.raises(error) as caught:
        reader(path)
    message = str(caught.value)
    assert os.fspath(path) in message
    for needle in needles:
        assert needle in message
    assert _fingerprint(path) == before
    return message


# --- PNG: a chunk length larger than the file ------------------------------------------------


def _png_mask(path) -> bytes:
    mask = np.zeros((32, 32), np.uint8)
    mask[8:24, 4:20] = 255
    Image.fromarray(mask).save(path)
    return path.read_bytes()


def _idat_offset(data: bytes) -> int:
    position = 8
    while data[position + 4 : position + 8] != b"IDAT":
        position += 12 + struct.unpack(">I", data[position : position + 4])[0]
    return position


_PNG_READERS = {
    "read_mask": read_mask,
    "read_labels": lambda p: read_labels(p, LabelRule()),
    "read_mask_stack": lambda p: read_mask_stack([p]),
    "read_radiograph": read_radiograph,
}


@pytest.mark.parametrize("reader", _PNG_READERS.values(), ids=_PNG_READERS.keys())
def test_png_chunk_length_past_the_end_is_refused_without_allocating_it(tmp_path, reader):
    # Pillow read the rest of the IDAT chunk by its declared length in one call, and Python
    # allocates that length first: 2 GiB for a 100-byte file, or a bare MemoryError.
    path = tmp_path / "inflated.png"
    data = bytearray(_png_mask(path))
    idat = _idat_offset(data)
    data[idat : idat + 4] = struct.pack(">I", 0x7FFFFFF0)
    path.write_bytes(bytes(data))
    tracemalloc.start()
    try:
        _refused(reader, path, "'IDAT' chunk", str(0x7FFFFFF0))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 64 << 20


def test_png_cut_inside_its_last_chunk_is_refused(tmp_path):
    # The image data were whole, but the file was cut in the IDAT chunk's CRC.
    path = tmp_path / "cut.png"
    data = _png_mask(path)
    idat = _idat_offset(data)
    end = idat + 12 + struct.unpack(">I", data[idat : idat + 4])[0]
    path.write_bytes(data[: end - 2])
    _refused(read_mask, path, "'IDAT' chunk", "truncated")


def _flip_pillow_reads_as_another_mask(data: bytes) -> bytes:
    """``data`` with one bit of its IDAT data flipped such that Pillow, left to itself, still
    loads an image, but another one."""
    original = np.asarray(Image.open(io.BytesIO(data)))
    idat = _idat_offset(data)
    length = struct.unpack(">I", data[idat : idat + 4])[0]
    for offset in range(idat + 8 + 2, idat + 8 + length - 4):  # past zlib's header
        damaged = bytearray(data)
        damaged[offset] ^= 0x01
        try:
            with Image.open(io.BytesIO(bytes(damaged))) as image:
                flipped = np.asarray(image)
        except (OSError, SyntaxError, ValueError):
            continue
        if flipped.shape == original.shape and not np.array_equal(flipped, original):
            return bytes(damaged)
    raise AssertionError("every flip here is caught by Pillow itself")


def test_png_mask_with_a_bit_flipped_in_its_image_data_is_refused(tmp_path):
    # Pillow checks no IDAT CRC, and stops inflating once the image is full, before zlib's
    # own checksum: a flipped bit gave another mask without a word.
    path = tmp_path / "flipped.png"
    mask = np.zeros((96, 96), np.uint8)
    mask[20:70, 10:50] = 255
    mask[30:80, 55:90] = 255
    Image.fromarray(mask).save(path)
    path.write_bytes(_flip_pillow_reads_as_another_mask(path.read_bytes()))
    _refused(read_mask, path, "'IDAT' chunk", "CRC-32")


def _png_with_one_idat(path, image: np.ndarray) -> int:
    """``image`` saved by Pillow, its IDAT chunks joined into one; the IDAT data's offset."""
    Image.fromarray(image).save(path, compress_level=0)
    data, position, chunks = path.read_bytes(), 8, {}
    while position < len(data):
        length = struct.unpack(">I", data[position : position + 4])[0]
        kind = data[position + 4 : position + 8]
        chunks[kind] = chunks.get(kind, b"") + data[position + 8 : position + 8 + length]
        position += 12 + length
    header = b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", chunks[b"IHDR"])
    path.write_bytes(header + _png_chunk(b"IDAT", chunks[b"IDAT"]) + _png_chunk(b"IEND", b""))
    return len(header) + 8


def test_png_crc_is_checked_across_an_idat_longer_than_one_read(tmp_path):
    # The CRC is summed in 1 MiB reads; a 2.9 MB IDAT reads whole and a flip past 1 MiB counts.
    image = np.random.default_rng(0).integers(0, 65535, (1200, 1200), dtype=np.uint16)
    path = tmp_path / "wide.png"
    idat = _png_with_one_idat(path, image)
    np.testing.assert_array_equal(read_radiograph(path)[0], image)
    data = bytearray(path.read_bytes())
    data[idat + (1 << 20) + 7] ^= 0x04
    path.write_bytes(bytes(data))
    _refused(read_radiograph, path, "'IDAT' chunk", "CRC-32")


# --- NIfTI: a damaged gzip stream ------------------------------------------------------------


def _nifti_gz(path) -> tuple[bytes, np.ndarray]:
    labels = np.zeros((12, 10, 8), np.uint8)
    labels[2:9, 3:7, 1:6] = 1
    labels[5:7, 4:6, 2:4] = 2
    nib.save(nib.Nifti1Image(labels, np.eye(4)), path)
    return path.read_bytes(), labels


def _flip_that_still_inflates(data: bytes) -> bytes:
    """``data`` with one bit of its deflate stream flipped such that it still inflates to a
    stream of the same length (only gzip's CRC-32 can tell)."""
    body_start, body_end = 10, len(data) - 8  # nibabel writes no optional gzip fields
    original = zlib.decompress(data[body_start:body_end], -zlib.MAX_WBITS)
    for offset in range(body_end - 1, body_start, -1):
        for bit in range(8):
            damaged = bytearray(data)
            damaged[offset] ^= 1 << bit
            try:
                inflated = zlib.decompress(damaged[body_start:body_end], -zlib.MAX_WBITS)
            except zlib.error:
                continue
            if len(inflated) == len(original) and inflated != original:
                return bytes(damaged)
    raise AssertionError("no single-bit flip keeps this stream inflatable")


@pytest.mark.parametrize(
    "damage",
    [
        _flip_that_still_inflates,
        lambda data: data[:-8] + b"\x00\x00\x00\x00" + data[-4:],  # CRC-32 zeroed
        lambda data: data[:-4] + b"\xff\xff\xff\x7f",  # ISIZE wrong
        lambda data: data[:-3],  # trailer cut
    ],
    ids=["flipped bit", "crc", "isize", "cut trailer"],
)
@pytest.mark.parametrize("reader", [read_nifti, read_nifti_labels], ids=["image", "labels"])
def test_nifti_gz_with_a_damaged_gzip_stream_is_refused(tmp_path, damage, reader):
    # nibabel inflates only as far as the voxels go, so gzip's CRC-32 and length, stored
    # after them, went unchecked: a flipped bit gave other voxel values without a word.
    path = tmp_path / "case.nii.gz"
    data, _ = _nifti_gz(path)
    path.write_bytes(damage(data))
    _refused(reader, path, "gzip stream")


def test_nifti_gz_intact_reads_its_voxels(tmp_path):
    path = tmp_path / "case.nii.gz"
    _, labels = _nifti_gz(path)
    np.testing.assert_array_equal(read_nifti_labels(path).array, labels.transpose(2, 1, 0))


def test_nifti_gz_whose_intact_stream_holds_too_few_voxels_says_so(tmp_path):
    # A whole, valid gzip stream that ends before the voxels do is short data, not a damaged
    # stream: the message gives the declared shape instead of blaming gzip.
    path = tmp_path / "case.nii.gz"
    data, _ = _nifti_gz(path)
    path.write_bytes(gzip.compress(gzip.decompress(data)[:-100], mtime=0))
    message = _refused(read_nifti, path, "voxel data cannot be read", "(12, 10, 8) of uint8")
    assert "gzip stream" not in message


def test_real_nifti_gz_with_its_crc_zeroed_is_refused(tmp_path, shared_data):
    data = (shared_data / "totalseg-ct/organs/liver.nii.gz").read_bytes()
    path = tmp_path / "liver.nii.gz"
    path.write_bytes(data[:-8] + b"\x00\x00\x00\x00" + data[-4:])
    _refused(read_nifti_labels, path, "gzip stream")


# --- DICOM: elements pydicom cannot convert --------------------------------------------------


def _stored(data: bytes, tag: int):
    """Top-level element ``tag`` of the file ``data`` as parsed: its value's offset in the
    file (``value_tell``) and stored length."""
    dataset = pydicom.dcmread(io.BytesIO(data), force=True)
    return dataset._dict[pydicom.tag.Tag(tag)]


def _explicit_vr_rtstruct(path) -> bytes:
    """pydicom's rtstruct.dcm (implicit VR, no preamble) rewritten with explicit VRs, so that
    a damaged VR can be written."""
    dataset = pydicom.dcmread(get_testdata_file("rtstruct.dcm"), force=True)
    dataset.file_meta = FileMetaDataset()
    dataset.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    dataset.file_meta.MediaStorageSOPClassUID = dataset.SOPClassUID
    dataset.file_meta.MediaStorageSOPInstanceUID = dataset.SOPInstanceUID
    dataset.save_as(path, enforce_file_format=True)
    return path.read_bytes()


def test_rtstruct_with_an_unknown_vr_is_refused(tmp_path):
    # pydicom converts values on first access: the reader's Modality check raised pydicom's
    # NotImplementedError("Unknown Value Representation 'TS'").
    path = tmp_path / "rs.dcm"
    data = bytearray(_explicit_vr_rtstruct(path))
    assert len(read_rtstruct(path)) == 3  # the rewritten seed reads
    vr = _stored(bytes(data), 0x00080060).value_tell - 4  # Modality: tag, VR, length, value
    assert data[vr : vr + 2] == b"CS"
    data[vr : vr + 2] = b"TS"
    path.write_bytes(bytes(data))
    _refused(read_rtstruct, path, "Unknown Value Representation", "(0008,0060)")


@pytest.fixture
def liver_seg(shared_data, tmp_path):
    source = shared_data / "dcmqi-ct3slice/data/segmentations/liver.dcm"
    path = tmp_path / "liver.dcm"
    path.write_bytes(source.read_bytes())
    return path


def _rewrite(path, tag: int, value: bytes, *, at: int = 0) -> None:
    data = bytearray(path.read_bytes())
    start = _stored(bytes(data), tag).value_tell + at
    data[start : start + len(value)] = value
    path.write_bytes(bytes(data))


_SEG_READERS = {"masks": read_dicom_seg_masks, "labels": read_dicom_seg}


@pytest.mark.parametrize("reader", _SEG_READERS.values(), ids=_SEG_READERS.keys())
def test_seg_with_an_unknown_vr_is_refused(liver_seg, reader):
    _rewrite(liver_seg, 0x00080016, b"U!", at=-4)  # SOPClassUID's VR
    _refused(reader, liver_seg, "Unknown Value Representation", "(0008,0016)")


@pytest.mark.parametrize("reader", _SEG_READERS.values(), ids=_SEG_READERS.keys())
def test_seg_number_of_frames_that_is_no_integer_is_named(liver_seg, reader):
    # int("1e") raised a bare ValueError deep in the frame reading.
    stored = _stored(liver_seg.read_bytes(), 0x00280008)
    _rewrite(liver_seg, 0x00280008, b"1e".ljust(stored.length, b" "))
    _refused(reader, liver_seg, "NumberOfFrames", "expected one of 1..")


@pytest.mark.parametrize(
    "keyword, needle",
    [("Rows", "lacks Rows"), ("Columns", "lacks Columns"), ("SegmentSequence", "SegmentSequence")],
)
def test_seg_without_its_size_or_segments_is_named(liver_seg, keyword, needle):
    # An AttributeError ('FileDataset' object has no attribute 'Rows') when placing frames.
    dataset = pydicom.dcmread(liver_seg)
    delattr(dataset, keyword)
    dataset.save_as(liver_seg)
    _refused(read_dicom_seg_masks, liver_seg, needle)


def test_seg_declaring_fewer_frames_than_it_holds_is_named(liver_seg):
    # pydicom returns every frame the data hold; numpy's reshape to NumberOfFrames failed.
    dataset = pydicom.dcmread(liver_seg)
    assert dataset.NumberOfFrames == 3
    dataset.NumberOfFrames = 1
    dataset.save_as(liver_seg)
    _refused(read_dicom_seg_masks, liver_seg, "NumberOfFrames is 1", "hold 3 frames")


def _frames_placed_by_shared_groups(dataset, frames: int) -> None:
    """Move the first frame's segment and position into the shared functional groups, drop
    the per-frame ones and declare ``frames`` frames: nothing but the pixel data bounds it."""
    shared = dataset.SharedFunctionalGroupsSequence[0]
    first = dataset.PerFrameFunctionalGroupsSequence[0]
    for keyword in ("SegmentIdentificationSequence", "PlanePositionSequence"):
        setattr(shared, keyword, getattr(first, keyword))
    del dataset.PerFrameFunctionalGroupsSequence
    dataset.NumberOfFrames = frames


def test_seg_declaring_a_million_frames_is_refused_before_walking_them(liver_seg):
    # The reader walked every declared frame (39 s for a million, an hour for 10**8) before
    # finding the pixel data short.
    dataset = pydicom.dcmread(liver_seg)
    _frames_placed_by_shared_groups(dataset, 10**6)
    dataset.save_as(liver_seg)
    started = time.perf_counter()
    _refused(read_dicom_seg_masks, liver_seg, "NumberOfFrames is 1000000", "hold 3 frames")
    assert time.perf_counter() - started < 2


def _rle_fractional(dataset) -> None:
    """The SEG's masks stored again as an RLE-compressed FRACTIONAL SEG (by pydicom)."""
    pixels = dataset.pixel_array.astype(np.uint8) * 255
    dataset.SegmentationType = "FRACTIONAL"
    dataset.SegmentationFractionalType = "PROBABILITY"
    dataset.MaximumFractionalValue = 255
    dataset.BitsAllocated = dataset.BitsStored = 8
    dataset.HighBit = 7
    dataset.compress(RLELossless, pixels)


def test_compressed_seg_reads_as_its_uncompressed_original(liver_seg):
    expected = read_dicom_seg_masks(liver_seg)
    dataset = pydicom.dcmread(liver_seg)
    _rle_fractional(dataset)
    dataset.save_as(liver_seg)
    masks = read_dicom_seg_masks(liver_seg)
    assert masks.keys() == expected.keys()
    for number, mask in masks.items():
        np.testing.assert_array_equal(mask.array, expected[number].array)


def test_compressed_seg_declaring_more_frames_than_fragments_is_refused(liver_seg):
    # Walked frame by frame, then decoded: pydicom asked for 24 GiB for 10**5 frames.
    dataset = pydicom.dcmread(liver_seg)
    _rle_fractional(dataset)
    _frames_placed_by_shared_groups(dataset, 10**5)
    dataset.save_as(liver_seg)
    started = time.perf_counter()
    _refused(read_dicom_seg_masks, liver_seg, "NumberOfFrames is 100000", "3 fragments")
    assert time.perf_counter() - started < 2


# --- a small seeded sweep, kept as a guard ---------------------------------------------------


def _seed_png(path):
    _png_mask(path)


def _seed_nifti(path):
    _nifti_gz(path)


def _seed_npz(path):
    labels = np.zeros((3, 8, 8), np.uint8)
    labels[1, 2:6, 2:6] = 1
    np.savez_compressed(path, mask=labels)


def _seed_ct(path):
    path.write_bytes(open(get_testdata_file("CT_small.dcm"), "rb").read())


def _seed_rtstruct(path):
    _explicit_vr_rtstruct(path)


_SWEEP_SEEDS = [
    ("mask.png", _seed_png, read_mask, 64),
    ("case.nii.gz", _seed_nifti, read_nifti, 352),
    ("mask.npz", _seed_npz, read_npz_mask, 256),
    ("ct.dcm", _seed_ct, read_dicom_image, 1024),
    ("rs.dcm", _seed_rtstruct, read_rtstruct, 1024),
]
_MUTATIONS_PER_SEED = 40
_INTERESTING_WORDS = (0, 1, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF, 0x0000FFFF, 0x00010000)


def _mutated(data: bytes, header: int, rng: random.Random) -> bytes:
    """A truncation, a byte or a 4-byte word overwritten (mostly in the first ``header``
    bytes, where the sizes, lengths and offsets are); for a .nii.gz the same applies to the
    inflated stream, written back compressed."""
    kind = rng.choice(("truncate", "byte", "word"))
    span = min(len(data), header) if rng.random() < 0.8 else len(data)
    offset = rng.randrange(1, span)
    if kind == "truncate":
        return data[:offset]
    damaged = bytearray(data)
    if kind == "byte":
        damaged[offset] = rng.randrange(256)
    else:
        damaged[offset : offset + 4] = struct.pack("<I", rng.choice(_INTERESTING_WORDS))
    return bytes(damaged[: len(data)])


@pytest.mark.parametrize("name, seed, reader, header", _SWEEP_SEEDS,
                         ids=[s[0] for s in _SWEEP_SEEDS])
def test_seeded_corruption_sweep_gives_reads_or_named_kseg_errors(
    tmp_path, name, seed, reader, header
):
    rng = random.Random(f"kseg-22-{name}")
    source = tmp_path / f"seed-{name}"
    seed(source)
    data = source.read_bytes()
    reader(source)  # the undamaged seed reads
    inflated = gzip.decompress(data) if name.endswith(".gz") else None
    unexpected = []
    for index in range(_MUTATIONS_PER_SEED):
        path = tmp_path / f"{index}-{name}"
        if inflated is not None and rng.random() < 0.5:
            path.write_bytes(gzip.compress(_mutated(inflated, header, rng), mtime=0))
        else:
            path.write_bytes(_mutated(data, header, rng))
        before = _fingerprint(path)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # documented warnings on odd values are fine
            try:
                reader(path)
            except KsegError as exc:
                if os.fspath(path) not in str(exc):
                    unexpected.append(f"{path.name}: unnamed {type(exc).__name__}: {exc}")
            except Exception as exc:  # noqa: BLE001 - any other class is what this looks for
                unexpected.append(f"{path.name}: {type(exc).__name__}: {exc}")
        if _fingerprint(path) != before:
            unexpected.append(f"{path.name}: modified by the reader")
    assert not unexpected, "\n".join(unexpected)
