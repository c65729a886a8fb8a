"""Exceptions raised by kseg.

Every error names the offending file (or folder) and says what was expected, so a user
holding a 20 000-file challenge download can find the one file that is wrong. Each class
also derives from the matching built-in (``ValueError`` for bad content, ``OSError`` for
files that cannot be read or layouts that are not there), so ``except ValueError`` code
written before kseg keeps working.
"""

from __future__ import annotations

import os


class KsegError(Exception):
    """Base class of every error kseg raises on purpose."""


def _describe(path: os.PathLike | str | None, problem: str) -> str:
    return f"{os.fspath(path)}: {problem}" if path is not None else problem


class UnreadableFileError(KsegError, OSError):
    """A file exists but cannot be parsed as the format it should be in."""

    def __init__(self, path, problem: str):
        self.path = path
        super().__init__(_describe(path, problem))


class LayoutError(KsegError, OSError):
    """A folder does not have the on-disk layout of the dataset it should hold."""

    def __init__(self, path, problem: str):
        self.path = path
        super().__init__(_describe(path, problem))


class DicomSeriesError(KsegError, ValueError):
    """The files of a DICOM series do not form one consistent volume."""

    def __init__(self, path, problem: str):
        self.path = path
        super().__init__(_describe(path, problem))


class MaskError(KsegError, ValueError):
    """A segmentation mask does not match its image or holds values it should not."""

    def __init__(self, path, problem: str):
        self.path = path
        super().__init__(_describe(path, problem))


class AlignmentError(KsegError, ValueError):
    """Two arrays that must share a grid (image and mask) cannot be aligned safely."""

    def __init__(self, path, problem: str):
        self.path = path
        super().__init__(_describe(path, problem))


class GeometryError(KsegError, ValueError):
    """A geometric operation got arguments that describe no valid grid or orientation."""

    def __init__(self, path, problem: str):
        self.path = path
        super().__init__(_describe(path, problem))
