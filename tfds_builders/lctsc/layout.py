"""The LCTSC download: its two layouts, how cases are found in them (by DICOM header, not
by folder name) and the organ label tables (see ``README.md`` beside this file)."""

from __future__ import annotations

import dataclasses
import os
import warnings

import numpy as np
import pydicom
from etils import epath

from kseg.errors import DicomSeriesError, LayoutError, MaskError
from kseg.io.dicom import (
    SkippedFileWarning,
    _describe_series,
    _image_type,
    scan_dicom_files,
)
from kseg.io.npz import read_npz_mask
from kseg.io.rtstruct import (
    LCTSC_ROI_NAMES,
    match_roi_names,
    one_roi_per_name,
    rasterize_roi,
    read_rtstruct,
    read_rtstruct_references,
)

# Class names per ``classes`` option; the organ ids of the RTSTRUCT rasterisation are
# 1 lung_left, 2 lung_right, 3 heart, 4 esophagus, 5 spinal_cord, and each option maps them
# through its lookup table.
CLASS_NAMES = {
    "organs": ("background", *LCTSC_ROI_NAMES),
    "organs_merged_lungs": ("background", "lungs", "heart", "esophagus", "spinal_cord"),
    "lungs": ("background", "lungs"),
}
ORGAN_TO_CLASS = {
    "organs": np.array([0, 1, 2, 3, 4, 5], dtype=np.uint8),
    "organs_merged_lungs": np.array([0, 1, 1, 2, 3, 4], dtype=np.uint8),
    "lungs": np.array([0, 1, 1, 0, 0, 0], dtype=np.uint8),
}

TCIA_LAYOUT = """\
<manual_dir>/LCTSC/LCTSC-Train-S1-001/<date>-<study description>-<id>/
    <n>.000000-<CT series description>-<id>/1-001.dcm ... (CT slices)
    <n>.000000-<RTSTRUCT series description>-<id>/1-1.dcm   (RT Structure Set)
<manual_dir>/LCTSC/LCTSC-Test-S1-101/...
(any folder names and depth: series are found by their headers)"""

NPZ_LAYOUT = """\
<manual_dir>/<patient id>/<any folders>/*.dcm   one CT series
<manual_dir>/<patient id>/<any name>.npz        one mask: key "mask", uint8 (z, y, x),
                                                0/1 lungs or 0..5 LCTSC organs"""


@dataclasses.dataclass(frozen=True)
class Case:
    """One patient: the files of its CT series and its mask."""

    patient_id: str
    patient_sex: str
    ct_files: tuple[str, ...]
    series_uid: str
    mask_file: str  # the RTSTRUCT (tcia) or the npz (npz)


def organ_label_map(rtstruct_path, volume, *, aliases=None) -> np.ndarray:
    """Rasterise the five LCTSC organs of a structure set into one label map.

    Organs are found by their canonical names (:func:`kseg.io.rtstruct.match_roi_names`)
    among the drawn ROIs that may be organs (the body outline, targets and devices are left
    out by their RTROIInterpretedType, :attr:`kseg.io.rtstruct.RoiContours.may_be_organ`;
    ROIs without contours, which hold no voxels, are left out too), and
    painted in the order lung_left, lung_right, heart, esophagus, spinal_cord, each over
    the previous ones, so where contours overlap the smaller, later organ keeps its voxels.

    Args:
        rtstruct_path: the case's RTSTRUCT file.
        volume: its CT volume.
        aliases: extra ``{ROIName: canonical name}`` spellings.

    Returns:
        ``uint8`` map of the volume's shape: 0 background, 1 lung_left, 2 lung_right,
        3 heart, 4 esophagus, 5 spinal_cord.

    Example:
        >>> labels = organ_label_map(rtstruct_file, ct)  # doctest: +SKIP
        >>> np.unique(labels)  # doctest: +SKIP
        array([0, 1, 2, 3, 4, 5], dtype=uint8)
    """
    path = str(rtstruct_path)
    # ROIs without contours (planning templates keep empty ones, often beside a drawn ROI of
    # the same organ under another spelling) hold no voxels: left out before matching.
    rois = {
        roi.name: roi
        for roi in one_roi_per_name(path, read_rtstruct(path))
        if roi.may_be_organ and roi.contours
    }
    found = match_roi_names(list(rois), aliases=aliases, source=path)
    labels = np.zeros(volume.shape, dtype=np.uint8)
    for organ_id, organ in enumerate(LCTSC_ROI_NAMES, start=1):
        if organ in found:
            labels[rasterize_roi(rois[found[organ]], volume, source=path) > 0] = organ_id
    return labels


def npz_organ_ids(path: str, classes: str) -> np.ndarray:
    """An npz mask as stored, as organ ids: 0/1 masks are lungs, 0..5 masks LCTSC organs."""
    mask = read_npz_mask(path)
    values = np.unique(mask)
    if values.max(initial=0) > len(LCTSC_ROI_NAMES):
        raise MaskError(
            path,
            f"holds labels {values.tolist()}; expected 0/1 (lungs) or the LCTSC organ ids 0..5",
        )
    if values.max(initial=0) <= 1 and classes != "lungs":
        raise MaskError(
            path,
            f"holds a binary (lungs) mask, which cannot give the {classes!r} classes; use a "
            "lungs config",
        )
    # A binary mask's 1 reads as organ id 1 (lung_left), which the lungs classes map to lung.
    return mask


def _scan_dicom(files, where) -> tuple[list[tuple[str, pydicom.Dataset]], list[str]]:
    """The CT slice headers and the RT Structure Set files among ``files``.

    Headers come from :func:`kseg.io.dicom.scan_dicom_files`, the header pass of
    :func:`kseg.io.read_dicom_series`, so a slice stored without the 128-byte preamble (real
    archives hold such files) is found here exactly when the series reader reads it; files
    that are not DICOM are reported there in one warning. DICOM of other modalities is
    not part of a case.
    """
    ct_headers, rtstructs = [], []
    for path, dataset in scan_dicom_files(files, where=where, progress="LCTSC headers"):
        modality = str(dataset.get("Modality", ""))
        if modality == "CT":
            ct_headers.append((path, dataset))
        elif modality == "RTSTRUCT":
            rtstructs.append(path)
    return ct_headers, rtstructs


def _files_under(folder: epath.Path, *, suffix: str | None = None,
                 exclude_suffix: str | None = None) -> list[epath.Path]:
    """Every file below ``folder``, walked folder by folder, since gfile paths do not take
    recursive glob patterns. Linked folders are walked too, each real folder once (a
    patient linked in from another disk, a subset of patients assembled from links; a link
    to a folder above ends there). Hidden files and folders are no data (README
    "Datasets"): a drive's ``.Trash-1000`` / ``.Trashes`` keeps deleted patients, which
    would otherwise be read back in without a word."""
    root = os.fspath(folder)
    local = os.path.isdir(root)  # else a gfile path (gs://...): no links to follow
    walk = os.walk(root, followlinks=True) if local else (
        (os.fspath(parent), folders, names) for parent, folders, names in folder.walk()
    )
    seen = {os.path.realpath(root)}
    found = []
    for parent, folders, names in walk:
        entered = []
        for name in folders:
            if name.startswith("."):
                continue
            if local:
                real = os.path.realpath(os.path.join(parent, name))
                if real in seen:
                    continue
                seen.add(real)
            entered.append(name)
        folders[:] = entered  # os.walk prunes
        if not local and any(  # backends that do not prune
            part.startswith(".") for part in epath.Path(parent).relative_to(folder).parts
        ):
            continue
        for name in names:
            path = epath.Path(parent) / name
            if name.startswith(".") or (suffix is not None and path.suffix != suffix):
                continue
            if exclude_suffix is None or path.suffix != exclude_suffix:
                found.append(path)
    return sorted(found)


def tcia_cases(manual_dir: epath.Path) -> list[Case]:
    """Every CT series under ``manual_dir`` paired with the RT Structure Set that references
    it, one case per patient, sorted by patient id. A CT series no structure set references
    is skipped with a :class:`~kseg.io.SkippedFileWarning` when its patient has a referenced
    one (a scout or a second reconstruction), else a LayoutError."""
    ct_headers, rtstructs = _scan_dicom(_files_under(manual_dir), manual_dir)
    series: dict[str, list[tuple[str, pydicom.Dataset]]] = {}
    for path, dataset in ct_headers:
        series.setdefault(str(dataset.get("SeriesInstanceUID", "")), []).append((path, dataset))
    if not series or not rtstructs:
        raise LayoutError(
            manual_dir,
            f"found {len(series)} CT series and {len(rtstructs)} RT Structure Sets; expected "
            f"the LCTSC download:\n{TCIA_LAYOUT}",
        )
    paired: dict[str, str] = {}
    for rtstruct in rtstructs:
        uid = _referenced_series(rtstruct, series)
        if uid in paired:
            raise LayoutError(
                rtstruct,
                f"references CT series {uid}, which {paired[uid]} references too; keep one "
                "structure set per CT series",
            )
        paired[uid] = rtstruct
    unpaired = _skip_unreferenced_beside_referenced(sorted(set(series) - set(paired)), paired,
                                                    series)
    if unpaired:
        described = "; ".join(
            f"{uid} ({epath.Path(series[uid][0][0]).parent})" for uid in unpaired[:5]
        )
        raise LayoutError(
            manual_dir,
            f"{len(unpaired)} CT series have no RT Structure Set referencing them: {described}",
        )
    cases = []
    for uid, rtstruct in paired.items():
        files = series[uid]
        first = files[0][1]
        patient_id = str(first.get("PatientID", "") or "")
        if not patient_id:
            raise DicomSeriesError(files[0][0], "has no PatientID; LCTSC splits by patient")
        cases.append(
            Case(
                patient_id=patient_id,
                patient_sex=str(first.get("PatientSex", "") or ""),
                ct_files=tuple(sorted(path for path, _ in files)),
                series_uid=uid,
                mask_file=rtstruct,
            )
        )
    return _unique_patients(cases, manual_dir)


def _skip_unreferenced_beside_referenced(unpaired: list[str], paired, series) -> list[str]:
    """Warn about and leave out each CT series no structure set references whose patient has
    a referenced one (a scout / localizer or a second reconstruction in a hospital export):
    the case is the series the structure set was drawn on, as nnU-Net's and MONAI's RTSTRUCT
    converters take it. Returns the unreferenced series of patients with no referenced one,
    which stay an error (their cases would be silently lost)."""
    referenced_patients = {_patient_of(series[uid]) for uid in paired} - {""}
    skipped, left = [], []
    for uid in unpaired:
        (skipped if _patient_of(series[uid]) in referenced_patients else left).append(uid)
    if skipped:
        described = "; ".join(
            f"{uid} of patient {_patient_of(series[uid])} ({len(series[uid])} files in "
            f"{epath.Path(series[uid][0][0]).parent}){_describe_series(series[uid])}"
            for uid in skipped
        )
        warnings.warn(
            SkippedFileWarning(
                f"{len(skipped)} CT series skipped: no RT Structure Set references them, and "
                f"their patient's referenced CT series is the case: {described}"
            ),
            stacklevel=3,
        )
    return left


def _patient_of(files) -> str:
    return str(files[0][1].get("PatientID", "") or "")


def _referenced_series(rtstruct: str, series) -> str:
    """The CT series a structure set was drawn on: named by SeriesInstanceUID, else the
    only CT series of its frame of reference."""
    references = read_rtstruct_references(rtstruct)
    named = sorted(uid for uid in references.series_instance_uids if uid in series)
    if len(named) == 1:
        return named[0]
    same_frame = sorted(
        uid
        for uid, files in series.items()
        if str(files[0][1].get("FrameOfReferenceUID", "")) in references.frame_of_reference_uids
    )
    # A scout shares the CT's frame of reference, but no structure set is drawn on it.
    scouts = [uid for uid in same_frame if _is_localizer(series[uid])]
    same_frame = [uid for uid in same_frame if uid not in scouts]
    if not named and len(same_frame) == 1:
        return same_frame[0]
    candidates = named or same_frame
    left_out = f" (localizer series left out: {scouts})" if scouts and not named else ""
    raise LayoutError(
        rtstruct,
        f"cannot be paired with one CT series: it references series "
        f"{sorted(references.series_instance_uids) or 'none'} and frames of reference "
        f"{sorted(references.frame_of_reference_uids) or 'none'}; matching CT series found: "
        f"{candidates or 'none'}{left_out}",
    )


def npz_cases(manual_dir: epath.Path) -> list[Case]:
    """Every folder under ``manual_dir`` holding one ``.npz`` mask, with the one CT series
    beside it, one case per patient (the folder name), sorted by patient id."""
    masks = _files_under(manual_dir, suffix=".npz")
    if not masks:
        raise LayoutError(manual_dir, f"holds no .npz mask; expected:\n{NPZ_LAYOUT}")
    by_folder: dict[epath.Path, list[epath.Path]] = {}
    for mask in masks:
        by_folder.setdefault(mask.parent, []).append(mask)
    cases = []
    for folder, folder_masks in sorted(by_folder.items()):
        if len(folder_masks) > 1:
            raise LayoutError(
                folder,
                f"holds {len(folder_masks)} .npz files ({', '.join(m.name for m in folder_masks)}"
                "); expected one mask per case folder",
            )
        headers, _ = _scan_dicom(_files_under(folder, exclude_suffix=".npz"), folder)
        headers = _without_localizers(headers, folder)
        uids = sorted({str(ds.get("SeriesInstanceUID", "")) for _, ds in headers})
        if len(uids) != 1:
            listed = "; ".join(
                f"{uid}{_describe_series([h for h in headers if _series_of(h) == uid])}"
                for uid in uids
            )
            raise LayoutError(
                folder,
                f"holds {len(uids)} CT series beside {folder_masks[0].name} ({listed}); "
                f"expected one:\n{NPZ_LAYOUT}",
            )
        cases.append(
            Case(
                patient_id=folder.name,
                patient_sex=str(headers[0][1].get("PatientSex", "") or ""),
                ct_files=tuple(sorted(str(path) for path, _ in headers)),
                series_uid=uids[0],
                mask_file=str(folder_masks[0]),
            )
        )
    return _unique_patients(cases, manual_dir)


def _is_localizer(files) -> bool:
    """Every image of the series says LOCALIZER in ImageType: a scout / topogram."""
    return all("LOCALIZER" in _image_type(dataset) for _, dataset in files)


def _series_of(header) -> str:
    return str(header[1].get("SeriesInstanceUID", ""))


def _without_localizers(headers, folder):
    """The CT headers of a case folder less its localizer (scout / topogram) series, every
    image of which says LOCALIZER in ImageType: a hospital export stores the scout beside the
    volume, and no npz mask of a volume is drawn on it. Skipped series are named in a
    warning."""
    series: dict[str, list] = {}
    for header in headers:
        series.setdefault(_series_of(header), []).append(header)
    scouts = [uid for uid, files in series.items() if _is_localizer(files)]
    if not scouts or len(scouts) == len(series):
        return headers
    warnings.warn(
        SkippedFileWarning(
            f"{folder}: skipped {len(scouts)} localizer series, not the case's volume: "
            + "; ".join(
                f"{uid} ({len(series[uid])} files){_describe_series(series[uid])}"
                for uid in sorted(scouts)
            )
        ),
        stacklevel=3,
    )
    return [header for header in headers if _series_of(header) not in scouts]


def _unique_patients(cases: list[Case], manual_dir) -> list[Case]:
    seen: dict[str, Case] = {}
    for case in cases:
        if case.patient_id in seen:
            raise LayoutError(
                manual_dir,
                f"patient {case.patient_id} has two cases ({seen[case.patient_id].mask_file} "
                f"and {case.mask_file}); one case per patient keeps the splits by patient",
            )
        seen[case.patient_id] = case
    return sorted(cases, key=lambda case: case.patient_id)
