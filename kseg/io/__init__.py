"""Readers for the formats challenge datasets ship; every reader returns a Volume."""

from kseg.io.dicom import (
    SkippedFileWarning,
    UnevenSliceSpacingWarning,
    read_dicom_image,
    read_dicom_series,
)
from kseg.io.volume import Volume

__all__ = [
    "SkippedFileWarning",
    "UnevenSliceSpacingWarning",
    "Volume",
    "read_dicom_image",
    "read_dicom_series",
]
