"""Atomic outputs: files and folders written under a temporary name beside the target,
then renamed.

A crash (or a full disk) mid-write then leaves the previous file, never a truncated one, and
never a half-written folder under the final name. A file is flushed to the disk (``fsync``)
before the rename and its folder after it, as databases do, so a power cut cannot leave the
new name pointing at data the disk never got. A process killed mid-write (``kill -9``, out of
memory) cannot remove its temporary file; :func:`remove_stale_temporaries` removes such
leftovers when the next run starts.
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import re
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
    ``.keras``), which some writers use to pick the format. On error it is removed. Its name is
    ``.<target name>.<8 random characters><target suffixes>``, the pattern
    :func:`remove_stale_temporaries` looks for.

    Example:
        >>> import tempfile
        >>> target = pathlib.Path(tempfile.mkdtemp()) / "scores.csv"
        >>> with atomic_output(target) as temporary:
        ...     _ = pathlib.Path(temporary).write_text("patient_id,dice")
        ...     target.exists()  # nothing at the target until the block succeeds
        False
        >>> target.read_text()
        'patient_id,dice'
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
        _fsync(temporary)
        os.replace(temporary, target)
        _fsync_folder(folder)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)


def _fsync(path: str) -> None:
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _fsync_folder(folder: os.PathLike | str) -> None:
    """Persist a rename in ``folder``; a no-op where folders cannot be opened (Windows)."""
    if os.name != "posix":
        return
    _fsync(os.fspath(folder))


# tempfile.mkstemp names: prefix, 8 characters of tempfile's alphabet, suffix
_RANDOM_PART = "[a-z0-9_]{8}"


def _temporary_pattern(name: str) -> re.Pattern:
    suffixes = "".join(pathlib.PurePath(name).suffixes)
    return re.compile(rf"\.{re.escape(name)}\.{_RANDOM_PART}{re.escape(suffixes)}")


def remove_stale_temporaries(path: os.PathLike | str) -> list[pathlib.Path]:
    """Remove the temporary files :func:`atomic_output` left beside ``path`` when killed.

    Only plain files named as :func:`atomic_output` names the temporaries of ``path`` are
    removed (``.best.keras.k3x_9a0q.keras`` for ``best.keras``), nothing else in the folder.
    Call it when a run starts, before anything writes ``path``: a temporary of a writer
    still running would be removed too.

    Returns:
        The removed files.
    """
    target = pathlib.Path(path)
    folder = target.absolute().parent
    if not folder.is_dir():
        return []
    pattern = _temporary_pattern(target.name)
    removed = []
    for entry in folder.iterdir():
        if pattern.fullmatch(entry.name) and entry.is_file() and not entry.is_symlink():
            entry.unlink(missing_ok=True)
            removed.append(entry)
    return removed


@contextlib.contextmanager
def atomic_directory(path: os.PathLike | str) -> Iterator[pathlib.Path]:
    """Yield an empty staging folder to fill; on success it is renamed to ``path``.

    The staging folder sits beside ``path`` (its parent is created if missing), so the
    rename is atomic; on error it is removed with everything in it. ``path`` must not exist
    (``os.replace`` cannot replace a folder that has content): callers check first and say
    why in their own words.

    Example:
        >>> import tempfile
        >>> target = pathlib.Path(tempfile.mkdtemp()) / "Task09_Spleen"
        >>> with atomic_directory(target) as staging:
        ...     _ = (staging / "dataset.json").write_text("{}")
        ...     target.exists()
        False
        >>> sorted(path.name for path in target.iterdir())
        ['dataset.json']
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
