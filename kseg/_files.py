"""Atomic output files: written under a temporary name beside the target, then renamed.

A crash (or a full disk) mid-write then leaves the previous file, never a truncated one.
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import tempfile
from collections.abc import Iterator


def _file_mode() -> int:
    # mkstemp creates 0600 files; a finished output gets the mode open() would have given it.
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


_FILE_MODE = _file_mode()


@contextlib.contextmanager
def atomic_output(path: os.PathLike | str) -> Iterator[str]:
    """Yield a temporary path to write ``path``'s content to; on success it replaces ``path``.

    The temporary file sits in the target's folder (created if missing), so the final
    ``os.replace`` is an atomic rename, and keeps the target's suffixes (``.nii.gz``,
    ``.keras``), which some writers use to pick the format. On error it is removed.

    Example:
        >>> with atomic_output("scores.csv") as temporary:  # doctest: +SKIP
        ...     write_table(temporary)
    """
    target = pathlib.Path(path)
    folder = target.absolute().parent
    folder.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(
        dir=folder, prefix=f".{target.name}.", suffix="".join(target.suffixes)
    )
    os.close(handle)
    try:
        yield temporary
        os.chmod(temporary, _FILE_MODE)
        os.replace(temporary, target)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)
