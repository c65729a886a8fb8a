"""Atomic outputs: files and folders written under a temporary name beside the target,
then renamed.

A crash (or a full disk) mid-write then leaves the previous file, never a truncated one, and
never a half-written folder under the final name.
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import shutil
import tempfile
from collections.abc import Iterator


def _umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


# mkstemp / mkdtemp create private (0600 / 0700) entries; a finished output gets the mode
# open() / mkdir() would have given it.
_FILE_MODE = 0o666 & ~_umask()
_DIRECTORY_MODE = 0o777 & ~_umask()


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


@contextlib.contextmanager
def atomic_directory(path: os.PathLike | str) -> Iterator[pathlib.Path]:
    """Yield an empty staging folder to fill; on success it is renamed to ``path``.

    The staging folder sits beside ``path`` (its parent is created if missing), so the
    rename is atomic; on error it is removed with everything in it. ``path`` must not exist
    (``os.replace`` cannot replace a folder that has content): callers check first and say
    why in their own words.

    Example:
        >>> with atomic_directory("Task09_Spleen") as staging:  # doctest: +SKIP
        ...     (staging / "dataset.json").write_text("{}")
    """
    target = pathlib.Path(path)
    parent = target.absolute().parent
    parent.mkdir(parents=True, exist_ok=True)
    staging = pathlib.Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=parent))
    try:
        staging.chmod(_DIRECTORY_MODE)
        yield staging
        os.replace(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
