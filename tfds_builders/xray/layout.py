"""The three X-ray layouts (JSRT + SCR, Montgomery, your own ``images/`` + ``masks/``)
and how each radiograph is paired with its mask files (see ``README.md`` beside this file).
"""

from __future__ import annotations

import dataclasses
import os
import re
import warnings
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

from etils import epath

from kseg.errors import LayoutError, MaskError, UnreadableFileError
from kseg.io import SkippedFileWarning
from kseg.io._pointer_files import pointer_note
from kseg.io.radiograph import _has_dicom_marker
from tfds_builders._manual import nested_one_level_hint

if TYPE_CHECKING:  # the builder imports this module, so only type checkers import it back
    from tfds_builders.xray.xray_dataset_builder import XrayConfig

LAYOUTS = ("jsrt_scr", "montgomery", "generic")

JSRT_IMAGE_FOLDER = "All247images"
MONTGOMERY_IMAGE_FOLDER = "MontgomerySet/CXR_png"
MONTGOMERY_MASK_FOLDER = "MontgomerySet/ManualMask"

_IMAGE_SUFFIXES = (".png", ".tif", ".tiff", ".dcm", ".dicom", ".jpg", ".jpeg", ".bmp")
_MASK_SUFFIXES = (".png", ".tif", ".tiff", ".gif", ".bmp", ".jpg", ".jpeg")
# Files operating systems drop into image folders (the NLM archives carry Thumbs.db).
_IGNORED_FILES = frozenset({"thumbs.db", "desktop.ini"})

JSRT_LAYOUT = """\
<manual_dir>/All247images/JPCLN001.IMG ... JPCNN093.IMG   (JSRT, 247 raw images)
<manual_dir>/<any>/masks/<structure>/JPCLN001.gif ...    (SCR, e.g. scratch/fold1/masks/)
  with <structure> one of: right lung, left lung, heart, right clavicle, left clavicle"""

MONTGOMERY_LAYOUT = """\
<manual_dir>/MontgomerySet/CXR_png/MCUCXR_0001_0.png ...
<manual_dir>/MontgomerySet/ManualMask/leftMask/MCUCXR_0001_0.png ...
<manual_dir>/MontgomerySet/ManualMask/rightMask/MCUCXR_0001_0.png ..."""

GENERIC_LAYOUT = """\
<manual_dir>/images/<name>.png|.tif|.jpg|.bmp|.dcm ...  (grey PNG/TIFF, JPEG, BMP, DICOM)
<manual_dir>/masks/<name><mask_suffix>.png ...   (label map), or
<manual_dir>/masks/<class folder>/<name><mask_suffix>.png ...   (one binary mask per class)"""


@dataclasses.dataclass(frozen=True)
class Record:
    """One radiograph: its file, its mask files and the patient it belongs to."""

    image_id: str
    patient_id: str
    image: epath.Path
    masks: tuple[epath.Path, ...]  # one label map, or one file per config.mask_folders pair


def find_records(root: epath.Path, config: XrayConfig) -> list[Record]:
    """Every radiograph of the config's layout under ``root``, with its mask files, in
    file-name order; an image without a mask is a MaskError naming it, a mask without an
    image a SkippedFileWarning."""
    if config.layout == "jsrt_scr":
        images = _listed(root, JSRT_IMAGE_FOLDER, (".img",), JSRT_LAYOUT)
        mask_dirs = _scr_mask_dirs(root, config)
        mask_index = {
            folder: _index_masks([d / folder for d in dirs], "") for folder, dirs in mask_dirs
        }
        searched = {folder: dirs for folder, dirs in mask_dirs}
    elif config.layout == "montgomery":
        images = _listed(root, MONTGOMERY_IMAGE_FOLDER, (".png",), MONTGOMERY_LAYOUT)
        base = root / MONTGOMERY_MASK_FOLDER
        mask_index = {f: _index_masks([base / f], "") for f, _ in config.mask_folders}
        searched = {f: [base] for f, _ in config.mask_folders}
    else:
        images = _listed(root, "images", _IMAGE_SUFFIXES, GENERIC_LAYOUT, dicom_by_marker=True)
        base = root / "masks"
        if not base.is_dir():
            raise LayoutError(base, f"not found; expected:\n{GENERIC_LAYOUT}")
        folders = [f for f, _ in config.mask_folders] or [""]
        mask_index = {
            f: _index_masks([base / f if f else base], config.mask_suffix) for f in folders
        }
        searched = {f: [base] for f in folders}

    firsts: dict[str, epath.Path] = {}
    for image in images:  # two files of one stem would share its mask without a word
        first = firsts.setdefault(_image_stem(image), image)
        if first is not image:
            raise LayoutError(
                image,
                f"a second image named {_image_stem(image)}, besides {first.name}: both would pair "
                f"with the one mask of that name (keep one file per radiograph in "
                f"{image.parent})",
            )
    records = []
    for image in images:
        stem = _image_stem(image)
        masks = []
        for folder, index in mask_index.items():
            if stem not in index:
                dirs = [d / folder if folder else d for d in searched[folder]]
                where = ", ".join(str(d) for d in dirs)
                raise MaskError(
                    image,
                    f"has no mask named {stem}{config.mask_suffix}.* in {where}"
                    + _near_misses(stem, config.mask_suffix, dirs),
                )
            masks.append(index[stem])
        records.append(
            Record(
                image_id=image.name,
                patient_id=_patient_id(stem, config.patient_id_pattern, image),
                image=image,
                masks=tuple(masks),
            )
        )
    stems = {_image_stem(image) for image in images}
    orphans = sorted(
        str(path) for index in mask_index.values() for stem, path in index.items()
        if stem not in stems
    )  # fmt: skip
    if orphans:  # a renamed or missing image would otherwise drop its mask without a word
        warnings.warn(
            SkippedFileWarning(
                f"{root}: skipped {len(orphans)} mask file(s) without an image of the same "
                f"name: {', '.join(orphans[:5])}{' ...' if len(orphans) > 5 else ''}"
            ),
            stacklevel=2,
        )
    return records


def _image_stem(image: epath.Path) -> str:
    """The name an image's masks are named after: without its suffix, or whole for a DICOM
    file read by its marker (``IM000001`` of a CD, ``1.2.840....320`` named by its UID, whose
    last component is no suffix)."""
    return image.stem if image.suffix.lower() in (*_IMAGE_SUFFIXES, ".img") else image.name


def _listed(
    root: epath.Path, relative: str, suffixes: Sequence[str], layout: str, *,
    dicom_by_marker: bool = False,
) -> list[epath.Path]:
    """The images of ``folder``: by suffix, and with ``dicom_by_marker`` also DICOM files of
    any other name (the DICM marker at byte 128, as :func:`kseg.io.read_radiograph` reads
    them: PACS and CD exports name them ``IM000001`` or by their UID)."""
    folder = root / relative
    if not folder.is_dir():
        raise LayoutError(
            folder, f"not found; expected:\n{layout}{nested_one_level_hint(root, relative)}"
        )
    files, unsupported, subfolders = [], [], []
    for path in sorted(folder.iterdir()):
        if path.name.startswith(".") or path.name.lower() in _IGNORED_FILES:
            continue
        if os.path.islink(path) and not os.path.exists(path):  # else its image vanishes unnamed
            raise UnreadableFileError(
                path, f"is a link to {os.readlink(path)}, which does not exist; expected "
                f"a link to an image file{pointer_note(path)}",
            )  # fmt: skip
        if path.is_dir():
            subfolders.append(path.name)
        elif path.is_file():
            known = path.suffix.lower() in suffixes or (
                dicom_by_marker and _has_dicom_marker(path)
            )
            (files if known else unsupported).append(path)
            _check_text_name(path)
    if unsupported:
        raise LayoutError(
            unsupported[0],
            f"is not a supported image file ({len(unsupported)} such files in the folder); "
            f"expected suffixes {', '.join(suffixes)}"
            + (" or DICOM files of any name" if dicom_by_marker else ""),
        )
    # images are read from the folder itself: images in a subfolder (a class or a batch of
    # their own) would otherwise vanish without a word, as a misnamed CHAOS patient would
    below = (
        f"{len(subfolders)} subfolder(s), whose images are not read (images are read from "
        f"the folder itself): {', '.join(subfolders[:10])}{' ...' if len(subfolders) > 10 else ''}"
    )
    if not files:
        held = f"holds no images, only {below}" if subfolders else "holds no images"
        raise LayoutError(folder, f"{held}; expected:\n{layout}")
    if subfolders:
        warnings.warn(SkippedFileWarning(f"{folder}: skipped {below}"), stacklevel=3)
    return files


def _check_text_name(path: epath.Path) -> None:
    """Refuse an image whose file name is not text: bytes that are not UTF-8 (a zip made on
    Windows, unpacked by ``unzip``: ``Röntgen.png`` in cp1252) reach Python as lone
    surrogates, which the example's ``image_id`` and ``patient_id`` (text features) cannot
    store: TFDS failed part way through a split with a bare UnicodeEncodeError."""
    try:
        path.name.encode("utf-8")
    except UnicodeEncodeError:
        raw = os.fsencode(path.name)
        raise LayoutError(  # named by its bytes: the name itself cannot be printed as text
            os.fsencode(path).decode("utf-8", "backslashreplace"),
            f"the file name {raw!r} is not UTF-8 text (written in another encoding, as a zip "
            "made on Windows and unpacked with unzip leaves it); the dataset stores it as the "
            "image id: rename the file (convmv -f cp1252 -t utf-8 converts a folder)",
        ) from None


def _index_masks(folders: Iterable[epath.Path], suffix: str) -> dict[str, epath.Path]:
    """Map image stem -> mask file over ``folders``; a stem found twice is an error."""
    index: dict[str, epath.Path] = {}
    for folder in folders:
        if not folder.is_dir():
            raise LayoutError(folder, "mask folder not found")
        for path in sorted(folder.iterdir()):
            if path.name.startswith(".") or path.suffix.lower() not in _MASK_SUFFIXES:
                continue
            stem = path.stem
            if suffix:
                if not stem.endswith(suffix):
                    continue
                stem = stem[: -len(suffix)]
            if stem in index:
                raise LayoutError(path, f"a second mask for {stem}, besides {index[stem]}")
            index[stem] = path
    return index


def _near_misses(stem: str, suffix: str, folders: Sequence[epath.Path]) -> str:
    """What a MaskError adds about mask files named like the image but not paired with it:
    another suffix after its stem (the Shenzhen masks' ``_mask``; mixed compilations), or
    another case; ``""`` when there are none."""
    wanted = stem.casefold()
    names = [
        path.name
        for folder in folders
        for path in sorted(folder.iterdir())
        if not path.name.startswith(".")
        and path.suffix.lower() in _MASK_SUFFIXES
        and path.stem.casefold().startswith(wanted)
    ][:3]
    if not names:
        return ""
    extra = epath.Path(names[0]).stem[len(stem) :]
    advice = (
        f"mask_suffix={extra!r} pairs {names[0]}"
        if epath.Path(names[0]).stem.startswith(stem) and extra != suffix
        else "names are paired exactly, case included"
    )
    return f"; there: {', '.join(names)} (mask_suffix is {suffix!r}; {advice})"


def _scr_mask_dirs(root: epath.Path, config: XrayConfig):
    """Every ``masks`` folder one or two levels down that holds the config's structures
    (the SCR archive has ``scratch/fold1/masks`` and ``scratch/fold2/masks``)."""
    candidates = sorted(
        {p for pattern in ("*/masks", "*/*/masks") for p in root.glob(pattern) if p.is_dir()}
    )
    found = []
    for folder, _ in config.mask_folders:
        dirs = [d for d in candidates if (d / folder).is_dir()]
        if not dirs:
            raise LayoutError(
                root, f"no SCR mask folder '<any>/masks/{folder}' found; expected:\n{JSRT_LAYOUT}"
            )
        found.append((folder, dirs))
    return found


def _patient_id(stem: str, pattern: str | None, path) -> str:
    if pattern is None:
        return stem
    match = re.search(pattern, stem)
    if match is None:
        raise LayoutError(path, f"file name does not match patient_id_pattern {pattern!r}")
    if "patient" in match.re.groupindex:
        return match.group("patient")
    return match.group(1) if match.re.groups else match.group(0)
