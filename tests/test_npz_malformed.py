"""Damaged npz masks: an UnreadableFileError naming the file, never a zlib or numpy traceback."""

import zipfile

import numpy as np
import pytest

from kseg.errors import MaskError, UnreadableFileError
from kseg.io import read_npz_mask


def _npy_bytes(header: str, payload: bytes = b"") -> bytes:
    """An .npy member written by hand (format 1.0), so its header may lie."""
    header = header.ljust(118) + "\n"
    return b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header.encode() + payload


def test_corrupt_compressed_member_is_unreadable(tmp_path):
    path = tmp_path / "mask.npz"
    labels = np.random.default_rng(0).integers(0, 6, (20, 64, 64)).astype(np.uint8)
    np.savez_compressed(path, mask=labels)
    data = bytearray(path.read_bytes())
    data[300:340] = bytes(40)  # inside the deflated stream
    path.write_bytes(bytes(data))
    before = path.read_bytes()
    with pytest.raises(UnreadableFileError, match="mask.npz"):
        read_npz_mask(path)
    assert path.read_bytes() == before


@pytest.mark.parametrize(
    "shape, needle", [("(65535, 65535, 65535)", "larger than memory"), ("(4, 4, 4)", "npz")]
)
def test_header_claiming_more_than_the_member_holds_is_unreadable(tmp_path, shape, needle):
    path = tmp_path / "mask.npz"
    member = _npy_bytes(f"{{'descr': '|u1', 'fortran_order': False, 'shape': {shape}, }}",
                        bytes(8))
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("mask.npy", member)
    with pytest.raises(UnreadableFileError, match=needle):
        read_npz_mask(path)


def test_nan_labels_are_a_mask_error(tmp_path):
    labels = np.zeros((2, 3, 4), np.float32)
    labels[1, 1, 1] = np.nan
    np.savez(tmp_path / "mask.npz", mask=labels)
    with pytest.raises(MaskError, match="integer labels"):
        read_npz_mask(tmp_path / "mask.npz")
