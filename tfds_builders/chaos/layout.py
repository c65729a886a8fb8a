"""The CHAOS download: where its files are, what its mask values mean and how each mask is
paired with its DICOM slice (see ``README.md`` beside this file)."""

from __future__ import annotations

import os
import re

import numpy as np
from etils import epath

from kseg.errors import MaskError, UnreadableFileError
from kseg.io._pointer_files import pointer_note
from kseg.io.masks import CHAOS_MR_LABEL_RANGES, LabelRule

PATIENT_FOLDER = re.compile(r"^\d+$")
# Mask files CHAOS ships (PNG; JPEG where present), suffixes compared case-insensitively.
_MASK_SUFFIXES = (".png", ".jpg", ".jpeg")

# Label names and the rule their Ground files follow. Every CHAOS training patient has each
# of these organs, so each is required in every patient's label volume.
LABEL_NAMES = {
    "CT": {1: "liver"},
    "MR": {1: "liver", 2: "right kidney", 3: "left kidney", 4: "spleen"},
}
MASK_RULES = {
    # Liver 1 bit (real CT Ground files), or 0/255, 0/1, 16-bit, palette, grey RGB, JPEG.
    "CT": LabelRule(),
    # Grey levels 63 / 126 / 189 / 252, ranges as nnU-Net's CHAOS converter uses them.
    "MR": LabelRule.from_label_ranges(CHAOS_MR_LABEL_RANGES),
}

EXPECTED_LAYOUT = """\
<manual_dir>/Train_Sets/CT/<patient number>/DICOM_anon/*.dcm
<manual_dir>/Train_Sets/CT/<patient number>/Ground/*.png (or *.jpg)
<manual_dir>/Train_Sets/MR/<patient number>/T1DUAL/DICOM_anon/InPhase/*.dcm
<manual_dir>/Train_Sets/MR/<patient number>/T1DUAL/DICOM_anon/OutPhase/*.dcm
<manual_dir>/Train_Sets/MR/<patient number>/T1DUAL/Ground/*.png
<manual_dir>/Train_Sets/MR/<patient number>/T2SPIR/DICOM_anon/*.dcm
<manual_dir>/Train_Sets/MR/<patient number>/T2SPIR/Ground/*.png"""

# Stored dtype of each modality's images: CT in Hounsfield units, MR as stored signal.
IMAGE_DTYPES = {"CT": np.int16, "MR": np.uint16}


def masks_in_array_order(source_files, image_dir, mask_dir) -> list[str]:
    """The Ground mask of every slice, in the volume's (position) order.

    CHAOS pairs the i-th DICOM file in sorted-name order with the i-th mask in sorted-name
    order (the organisers' evaluation code, emrekavur/CHAOS-evaluation). The pairs are
    made on names first and only then carried into position order through the volume's
    source_files, so a pair never shifts when slices are re-ordered. Masks are the folder's
    ``.png`` / ``.jpg`` / ``.jpeg`` files (any case) of one suffix: a folder mixing suffixes
    has no single sorted order to pair by and is refused.
    """
    slice_names = [epath.Path(f).name for f in source_files]
    image_names = sorted(slice_names)
    named_as_masks = [
        p for p in mask_dir.iterdir()
        if p.suffix.lower() in _MASK_SUFFIXES and not p.name.startswith(".")
    ]
    for path in named_as_masks:  # else it counts as a mask and the count error misleads
        if os.path.islink(path) and not os.path.exists(path):
            raise UnreadableFileError(
                path, f"is a link to {os.readlink(path)}, which does not exist; expected a "
                f"Ground mask file{pointer_note(path)}",
            )  # fmt: skip
    masks = [p for p in named_as_masks if p.is_file()]
    suffixes = sorted({p.suffix.lower() for p in masks})
    if len(suffixes) > 1:
        counts = ", ".join(
            f"{sum(p.suffix.lower() == s for p in masks)} {s}" for s in suffixes
        )
        raise MaskError(
            mask_dir,
            f"mixes mask formats ({counts}); CHAOS pairs the masks of one format with the "
            "DICOM files by sorted file name, so keep one format per folder",
        )
    mask_names = sorted(p.name for p in masks)
    if len(mask_names) != len(image_names):
        raise MaskError(
            mask_dir,
            f"{len(mask_names)} Ground masks ({', '.join(_MASK_SUFFIXES)}) for "
            f"{len(image_names)} DICOM slices in {image_dir}; CHAOS pairs them one to one "
            "by sorted file name",
        )
    _check_one_pairing(image_dir, image_names, mask_dir, mask_names)
    rank = {name: r for r, name in enumerate(image_names)}
    return [str(mask_dir / mask_names[rank[name]]) for name in slice_names]


def _number_order(name: str) -> list:
    """Sort key reading runs of digits as numbers: ``liver_GT_2`` before ``liver_GT_10``."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def _check_one_pairing(image_dir, image_names, mask_dir, mask_names) -> None:
    """Refuse folders whose names pair one way sorted as text and another sorted as
    numbers: a copy renamed without zero padding on one side only (``liver_GT_2.png`` for
    ``liver_GT_002.png``) would otherwise pair every slice past the ninth with another
    slice's mask, silently. The CHAOS download pads every number, so both orders agree."""
    by_number = dict(zip(sorted(image_names, key=_number_order),
                         sorted(mask_names, key=_number_order), strict=True))  # fmt: skip
    for image, mask in zip(image_names, mask_names, strict=True):
        if by_number[image] != mask:
            raise MaskError(
                mask_dir,
                f"pairs {image} with {mask} by sorted file name but with {by_number[image]} "
                f"when numbers in the names are read as numbers (DICOM files in "
                f"{image_dir}): the names are numbered without zero padding on one side, so "
                "which mask is whose is ambiguous; rename them with zero-padded numbers, as "
                "the CHAOS download has (liver_GT_000.png ...)",
            )
