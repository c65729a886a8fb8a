"""Reading one radiograph of the xray dataset: the image in stored units, or a DICOM one as
displayed (JSRT images brought to the SCR mask grid), and its label map, painted from
per-class masks or decoded from one label-map file."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from etils import epath
from PIL import Image

from kseg.errors import AlignmentError
from kseg.io import JSRT_BIT_DEPTH, LabelRule, read_jsrt_image, read_labels, read_radiograph
from kseg.io.image_files import image_errors_named, seek_full_resolution_page, upright_size
from tfds_builders.xray.layout import Record

if TYPE_CHECKING:  # the builder imports this module, so only type checkers import it back
    from tfds_builders.xray.xray_dataset_builder import XrayConfig


def _block_mean(image: np.ndarray, factor: int) -> np.ndarray:
    rows, columns = image.shape
    blocks = image.reshape(rows // factor, factor, columns // factor, factor)
    return np.rint(blocks.mean(axis=(1, 3))).astype(np.uint16)


def read_record_image(record: Record, config: XrayConfig) -> tuple[np.ndarray, int]:
    """``(image, bit_depth)`` of a radiograph in stored units (a DICOM one read as
    ``config.dicom_values`` says), on its mask's grid."""
    if config.layout != "jsrt_scr":
        return read_radiograph(record.image, dicom_values=config.dicom_values)
    image = read_jsrt_image(record.image)
    mask_shape = _image_size(record.masks[0])
    side = image.shape[0]
    factor = side // mask_shape[0]
    if mask_shape[0] != mask_shape[1] or factor < 1 or factor * mask_shape[0] != side:
        raise AlignmentError(
            record.masks[0],
            f"mask is {mask_shape[0]}x{mask_shape[1]}, which does not divide the "
            f"{side}x{side} JSRT image {record.image.name} into whole blocks",
        )
    # SCR masks were drawn on 1024 x 1024 copies of the 2048 x 2048 images: the image is
    # brought to the mask grid by averaging factor x factor blocks (half-even rounding).
    return (_block_mean(image, factor) if factor > 1 else image), JSRT_BIT_DEPTH


def image_format(path: epath.Path) -> str:
    """``"dicom"`` for a file :func:`kseg.io.read_radiograph` reads as DICOM (by its suffix
    or the DICM marker at byte 128), else the lower-case suffix (``"png"``, ``"img"``)."""
    suffix = path.suffix.lower()
    if suffix in (".dcm", ".dicom"):
        return "dicom"
    with image_errors_named(path, "a radiograph"), path.open("rb") as handle:
        if handle.read(132)[128:] == b"DICM":
            return "dicom"
    return suffix.lstrip(".")


def _image_size(path: epath.Path) -> tuple[int, int]:
    with (
        image_errors_named(path, "a mask image"),
        path.open("rb") as handle,
        Image.open(handle) as image,
    ):
        # The size read_labels gives the mask: of its full-resolution page, after its
        # Orientation tag turned it.
        seek_full_resolution_page(image)
        return upright_size(str(path), image)


# One structure per file (mask_folders, or a label map without mask_value_ranges): resized
# masks' interpolated edges are common in the public X-ray sets (cxr-lungs), so accepted.
_STRUCTURE_RULE = LabelRule(interpolated_edges=True)


def read_record_mask(record: Record, config: XrayConfig, shape) -> np.ndarray:
    """The ``uint8`` label map of a radiograph in the config's classes, of the image's
    ``shape``."""
    if config.mask_folders:
        labels = np.zeros(shape, dtype=np.uint8)
        for (_, label), path in zip(config.mask_folders, record.masks, strict=True):
            structure = read_labels(path, _STRUCTURE_RULE)
            _check_mask_shape(path, structure.shape, shape, record)
            labels[structure > 0] = label
        return labels
    path = record.masks[0]
    rule = (
        LabelRule(grey_levels=config.mask_value_ranges)
        if config.mask_value_ranges
        else _STRUCTURE_RULE
    )
    labels = read_labels(path, rule)
    _check_mask_shape(path, labels.shape, shape, record)
    return labels


def _check_mask_shape(path, mask_shape, image_shape, record: Record) -> None:
    if tuple(mask_shape) != tuple(image_shape):
        raise AlignmentError(
            path,
            f"mask is {mask_shape[0]}x{mask_shape[1]}, image {record.image.name} is "
            f"{image_shape[0]}x{image_shape[1]}; they must share one grid",
        )
