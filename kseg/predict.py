"""``kseg predict``: a trained run's model on new files, predictions written on the input's
own grid.

A run folder holds the model (``best.keras``) and, in ``config.json``'s ``"inference"``
section, how its inputs were made during training. :func:`predict_command` reads both,
segments every input and writes one prediction per input:

* inputs: a DICOM series folder (slices ordered by position, :func:`kseg.io.read_dicom_series`),
  a NIfTI file or a folder of them (:func:`kseg.io.read_nifti`), and radiographs: one
  PNG / JPEG / TIFF / BMP / DICOM image or a folder of them (:func:`kseg.io.read_radiograph`;
  DICOM files are recognised by their bytes, whatever their names, and read as config.json's
  ``dicom_values`` records: as displayed, VOI transform applied, for runs trained on PNG /
  JPEG images or on DICOM images read so; modality units for runs without the key);
* models: ``"kind": "slices"`` (a 2D model run on every slice with
  :func:`kseg.data.pipeline.model_input`, probabilities resized back to each slice's plane
  with :func:`kseg.evaluation.resize_probabilities`; a CT model sees the slices of a NIfTI
  volume or DICOM series the way a head-first supine series shows them, LPS, whatever the
  storage order: a RAS NIfTI file, a series with its columns toward the patient's right or
  a prone one), or
  ``"kind": "volume"`` (a 3D model:
  :func:`kseg.data.preprocess3d.preprocess_volume`, a gaussian-blended
  :func:`kseg.inference.sliding_window`, then :func:`kseg.geometry.to_original_grid`);
* gantry-tilted (sheared) inputs, a DICOM series whose slices step off their normal or a
  NIfTI file with such an sform: a 3D model sees them on the orthogonal grid through the same
  slice planes (:func:`kseg.geometry.deskew`, said once per input by a
  :class:`kseg.io.GantryTiltWarning`) and its labels come back onto the sheared grid by
  nearest neighbour; a 2D model predicts each acquired slice as stored, which the shear only
  shifts as a whole, so nothing is resampled;
* outputs on the input's grid and geometry: ``nifti`` (the input's affine), ``dicom-seg``
  (highdicom, referencing the DICOM images), ``png`` (one lossless PNG per slice, labels as
  values), ``rtstruct`` (contours of a DICOM series' labels).

Example:
    >>> written = predict_command("runs/chaos_liver", "CT/1/DICOM_anon", "out", "dicom-seg")
    ... # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import functools
import os
import pathlib
import re
import warnings
from collections.abc import Mapping, Sequence

import numpy as np
from tqdm.auto import tqdm

from kseg.errors import DicomSeriesError, LayoutError, UnreadableFileError
from kseg.inference.sliding_window import BLEND_MODES
from kseg.io.dicom import (
    DICOM_VALUES,
    SkippedFileWarning,
    _is_rt_dose,
    _sop_class_name,
    read_dicom_series,
    scan_dicom_files,
)
from kseg.io.nifti import read_nifti, write_nifti
from kseg.io.png_stack import write_png_stack
from kseg.io.radiograph import read_radiograph
from kseg.io.volume import Volume, image_affine

__all__ = [
    "FORMATS",
    "INFERENCE_KINDS",
    "Prediction",
    "check_format",
    "checked_inference",
    "inference_model",
    "postprocessing",
    "predict_command",
    "predict_path",
    "radiograph_dicom_values",
    "read_inputs",
    "read_run",
    "write_predictions",
]

FORMATS = ("nifti", "dicom-seg", "png", "rtstruct")
INFERENCE_KINDS = ("slices", "volume")
POSTPROCESSING = ("none", "largest-component")

# Series kinds of the inputs: which formats can reference what.
DICOM_SERIES, NIFTI, RADIOGRAPH = "dicom-series", "nifti", "radiograph"

# Axis codes (x, y, z) of an axial DICOM series as kseg.io.read_dicom_series returns it.
DICOM_AXIAL = "LPS"

_NIFTI_SUFFIXES = (".nii.gz", ".nii")
# Files Pillow reads as radiographs; anything else in a radiograph folder is DICOM or skipped.
_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
# Windows per 3D model call: on a CPU one is as fast as several for a fraction of the
# memory (kseg.inference.sliding_window's batch_size).
_VOLUME_BATCH = 1
# Keys each inference kind needs in config.json (the rest have defaults).
_REQUIRED_KEYS = {
    "slices": ("window", "image_size", "num_classes"),
    "volume": ("window", "spacing", "roi_size", "num_classes"),
}


@dataclasses.dataclass(frozen=True, eq=False)
class Prediction:
    """One input's predicted label map, on the input's own grid.

    Attributes:
        name: the output's file stem (the series folder's, NIfTI file's or image's name).
        source: the input file or DICOM series folder.
        kind: ``"dicom-series"``, ``"nifti"`` or ``"radiograph"``.
        image: the input as read (HU for CT, stored units for radiographs, DICOM ones as
            config.json's ``dicom_values`` says), with its geometry; a radiograph is one
            slice, ``(1, rows, columns)``.
        labels: ``uint8`` label map (``uint16`` past 255 classes) on ``image``'s grid and
            affine, 0 background, values by kseg.evaluation's conventions (one sigmoid
            channel: 1 where the probability is at least the threshold; several channels:
            the argmax channel).
        dicom: ``image.source_files`` are DICOM files a DICOM-SEG can reference.
    """

    name: str
    source: pathlib.Path
    kind: str
    image: Volume
    labels: Volume
    dicom: bool


# --- reading inputs ---------------------------------------------------------------------------


def read_inputs(input_path: os.PathLike | str, inference: Mapping) -> list[tuple]:
    """The images ``input_path`` holds, read as :func:`predict_path` reads them.

    A NIfTI file, or a folder of them, gives one volume each. A folder with image files
    (PNG, JPEG, TIFF, BMP), or any folder when ``inference["modality"]`` is
    ``"radiograph"``, gives one radiograph per image or DICOM file (sorted by name; other
    files, DICOM-SEG objects among them, are skipped with a
    :class:`kseg.io.SkippedFileWarning`). Any other folder is one
    DICOM series. Hidden files (the ``._*`` companions of archives extracted on a Mac) are
    never inputs. A single non-NIfTI file is a radiograph, or a one-slice DICOM series for
    CT models. DICOM radiographs are read with ``inference["dicom_values"]``
    (:func:`radiograph_dicom_values`); when the run's ``image_formats`` hold no DICOM, a
    warning says once that they are read as displayed, as the training images were.

    Returns:
        ``[(name, source path, kind, Volume, is DICOM)]`` in a stable order.

    Raises:
        LayoutError: ``input_path`` does not exist, holds nothing readable, holds NIfTI
            files and DICOM images (one kind would be left out), holds
            radiographs for a 3D volume model or a CT model (``inference["modality"]``
            ``"CT"``: an image file holds no Hounsfield units), a DICOM series of a modality
            without Hounsfield units (MR, PET, ...) for a CT or 3D model, a volume of
            several slices for a radiograph model, or two inputs would write outputs of
            the same name.
        UnreadableFileError, DicomSeriesError: from the readers, naming the file; a
            link in the folder whose target is missing.
    """
    inputs = []
    for load in _input_loaders(input_path, inference):
        inputs.append(load())
        _check_input(inputs[-1], inference)
    _check_unique_names(inputs)
    return inputs


def _input_loaders(input_path: os.PathLike | str, inference: Mapping) -> list:
    """One function per input that ``input_path`` holds, each reading it as
    :func:`read_inputs` does, so that inputs can be read one at a time."""
    path = pathlib.Path(input_path)
    radiograph_model = inference.get("modality") == "radiograph"
    if path.is_file():
        if _is_nifti(path):
            return [functools.partial(_nifti_input, path)]
        if radiograph_model or path.suffix.lower() in _IMAGE_SUFFIXES:
            return _radiograph_loaders(path, [path], inference)
        return [functools.partial(_series_input, [path], path, inference)]
    if path.is_dir():
        files = _input_files(path)
        niftis = [entry for entry in files if _is_nifti(entry)]
        if niftis:
            _refuse_dicom_beside_nifti(path, niftis, [e for e in files if not _is_nifti(e)])
            return [functools.partial(_nifti_input, entry) for entry in niftis]
        if radiograph_model or any(entry.suffix.lower() in _IMAGE_SUFFIXES for entry in files):
            return _radiograph_loaders(path, files, inference)
        return [functools.partial(_series_input, path, path, inference)]
    raise LayoutError(
        path,
        "does not exist; expected a DICOM series folder, a NIfTI file (or a folder of "
        "them), or radiographs (one image or a folder of PNG / JPEG / TIFF / BMP / DICOM "
        "files)",
    )


def _refuse_dicom_beside_nifti(folder: pathlib.Path, niftis, others) -> None:
    """A folder read as NIfTI inputs must not also hold DICOM images: they would be left
    out without a word (dcm2niix writes its NIfTI into the DICOM folder by default, and a
    folder of inputs may hold one patient's series beside other patients' volumes)."""
    dicoms = []
    for entry in others:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # SkippedFileWarning: a sidecar, a README
                [(_, header)] = scan_dicom_files([entry], where=folder) or [(None, {})]
        except UnreadableFileError:
            continue  # not read as an input either way
        if "PixelData" in header and not _labels_or_dose(header):
            dicoms.append(entry)
    if dicoms:
        raise LayoutError(
            folder, f"holds NIfTI files ({_listed(niftis)}) and DICOM images "
            f"({_listed(dicoms)}); kseg predict reads a folder as NIfTI volumes or as one "
            "DICOM series, so one kind would be left out: give each kind a folder of its "
            "own (a series converted by dcm2niix: move its .nii.gz out, or give the NIfTI "
            "file itself as --input)",
        )  # fmt: skip


def _listed(paths, shown: int = 2) -> str:
    names = ", ".join(path.name for path in paths[:shown])
    return f"{len(paths)}: {names}{', ...' if len(paths) > shown else ''}"


def _check_input(item: tuple, inference: Mapping) -> None:
    """Refuse an input the run's model cannot take (see :func:`read_inputs`)."""
    _, source, kind, image, dicom = item
    if kind == RADIOGRAPH and inference.get("kind") == "volume":
        raise LayoutError(
            source, "is a radiograph; the run's model is a 3D volume model, which "
            "takes a DICOM series folder or NIfTI files",
        )  # fmt: skip
    if kind == RADIOGRAPH and inference.get("modality") == "CT":
        # an image file holds display values; the CT window would be applied to them as HU
        raise LayoutError(
            source, f"is a {_describe_kind(RADIOGRAPH, source, dicom)}; "
            "the run's model is a CT model (config.json's inference modality 'CT'), which "
            "reads Hounsfield units: give it a DICOM series folder or NIfTI files",
        )  # fmt: skip
    modality = str(image.metadata.get("modality", "") or "").strip().upper()
    if kind == DICOM_SERIES and modality in _NO_HOUNSFIELD_UNITS and _reads_hu(inference):
        # an MR series (CHAOS ships MR beside CT) windowed as HU: labels with no meaning
        raise LayoutError(
            source, f"is a DICOM series of modality {modality} "
            f"({_NO_HOUNSFIELD_UNITS[modality]}); the run's model is a CT model "
            f"({_ct_model_reason(inference)}), which reads Hounsfield units and windows "
            "them: give it CT series or NIfTI CT volumes, or a run trained on this modality",
        )  # fmt: skip
    if (kind != RADIOGRAPH and inference.get("modality") == "radiograph"
            and image.array.shape[0] > 1):  # fmt: skip
        # a volume's slices are no radiographs: the model would label each as a chest image
        raise LayoutError(
            source, f"is a volume of {image.array.shape[0]} slices; the run's "
            "model segments radiographs (config.json's inference modality "
            "'radiograph'): give it radiograph images or one-slice NIfTI files",
        )  # fmt: skip


# DICOM Modality values (PS3.3 C.7.3.1.1.1) whose pixel values are no Hounsfield units
_NO_HOUNSFIELD_UNITS = {
    "MR": "magnetic resonance", "PT": "PET", "NM": "nuclear medicine", "US": "ultrasound",
    "CR": "computed radiography", "DX": "digital radiography", "MG": "mammography",
    "XA": "X-ray angiography", "RF": "radiofluoroscopy", "IO": "intra-oral radiography",
    "PX": "panoramic X-ray", "OP": "ophthalmic photography", "OPT": "ophthalmic tomography",
    "SM": "slide microscopy", "XC": "external camera photography", "ES": "endoscopy",
}  # fmt: skip


def _refuse_several_series(path: pathlib.Path, error) -> None:
    """The series reader's error for a folder of several series says to pass
    ``series_uid=``, which kseg predict has no option for: say what to do instead."""
    text, prefix = str(error), f"{path}: "
    if not (isinstance(error, DicomSeriesError) and text.startswith(prefix)
            and "; pass series_uid=" in text):  # fmt: skip
        return
    listing = text[len(prefix):].split("; pass series_uid=")[0]
    raise LayoutError(
        path, f"{listing}; kseg predict reads one series per folder: move the files of the "
        "series to predict into a folder of their own and give that folder (a PACS or CD "
        "export puts the localizer and dose report series beside the volume)",
    ) from error  # fmt: skip


def _refuse_unknown_file(path: pathlib.Path) -> None:
    """A single input file that is not DICOM would fail as a one-file series, whose error
    names the folder it lies in and that folder's subfolders: name the file and what is
    read."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # SkippedFileWarning: said here instead
        try:
            is_dicom = bool(scan_dicom_files([path], where=path.parent))
        except UnreadableFileError:
            return  # a broken DICOM file: the reader's error says what is wrong with it
    if not is_dicom:
        raise LayoutError(
            path, "is not a DICOM file (by its bytes), a NIfTI file (.nii, .nii.gz) or an "
            "image file (.png, .jpg, .tif, .bmp); kseg predict reads a DICOM series folder, "
            "NIfTI files and radiographs: convert other volumes (NRRD, MHA, MetaImage ...) "
            "to NIfTI first (e.g. SimpleITK.WriteImage(SimpleITK.ReadImage(file), "
            "'case.nii.gz')), and extract archives",
        )  # fmt: skip


def _refuse_images_without_hu(source, path: pathlib.Path, inference: Mapping, error) -> None:
    """Raise the CT model's refusal when every DICOM image ``source`` holds is of a
    modality without Hounsfield units (CR, DX, MR, ...)."""
    files = _input_files(path) if isinstance(source, pathlib.Path) else list(source)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the series reader said what it skipped, or will
        try:
            headers = [header for _, header in scan_dicom_files(files, where=path)
                       if "PixelData" in header]  # fmt: skip
        except UnreadableFileError:
            return
    modalities = {str(header.get("Modality", "") or "").strip().upper() for header in headers}
    if headers and modalities <= set(_NO_HOUNSFIELD_UNITS):
        described = ", ".join(f"{m} ({_NO_HOUNSFIELD_UNITS[m]})" for m in sorted(modalities))
        raise LayoutError(
            path, f"holds DICOM images of modality {described}; the run's model is a CT "
            f"model ({_ct_model_reason(inference)}), which reads Hounsfield units and "
            "windows them: give it CT series or NIfTI CT volumes, or a run trained on this "
            "modality",
        ) from error  # fmt: skip


def _reads_hu(inference: Mapping) -> bool:
    """A run whose model reads Hounsfield units: a 2D run of modality ``"CT"``, or a 3D
    run, whose window is ``[low, high]`` HU."""
    return inference.get("modality") == "CT" or inference.get("kind") == "volume"


def _ct_model_reason(inference: Mapping) -> str:
    if inference.get("modality") == "CT":
        return "config.json's inference modality 'CT'"
    low, high = inference["window"]
    return f"a 3D model windowed at [{low}, {high}] HU"


def _input_files(folder: pathlib.Path) -> list[pathlib.Path]:
    """The files of ``folder`` that can be inputs, sorted by name.

    Hidden files are never inputs: archives extracted on a Mac carry an AppleDouble
    ``._<name>`` companion beside every file (the MSD Task09 tar does), which has the
    image's suffix but not its format. A link whose target is missing is an error, not a
    silently shorter folder: the image it names would be dropped without a word.
    """
    files = []
    for entry in sorted(folder.iterdir()):
        if entry.name.startswith("."):
            continue
        if entry.is_symlink() and not entry.exists():
            raise UnreadableFileError(
                entry, f"is a link to {os.readlink(entry)}, which does not exist; expected "
                "a link to an image file",
            )  # fmt: skip
        if entry.is_file():
            files.append(entry)
    return files


def _is_nifti(path: pathlib.Path) -> bool:
    return path.name.lower().endswith(_NIFTI_SUFFIXES)


def _stem(path: pathlib.Path) -> str:
    name = path.name
    for suffix in _NIFTI_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem if path.suffix.lower() in _IMAGE_SUFFIXES + (".dcm", ".dicom") else name


def _nifti_input(path: pathlib.Path) -> tuple:
    return _stem(path), path, NIFTI, read_nifti(path), False


def _series_input(source, path: pathlib.Path, inference: Mapping | None = None) -> tuple:
    if path.is_file():
        _refuse_unknown_file(path)
    try:
        series = read_dicom_series(source)
    except (LayoutError, DicomSeriesError) as error:
        # radiographs (no patient position) or several MR series in one folder fail as a
        # series; for a CT model, say what they are rather than how to pick a series
        if inference is not None and _reads_hu(inference):
            _refuse_images_without_hu(source, path, inference, error)
        _refuse_several_series(path, error)
        raise
    name = (path.resolve().name or "series") if path.is_dir() else _stem(path)
    return name, path, DICOM_SERIES, series, True


def radiograph_dicom_values(inference: Mapping) -> str:
    """How a run's ``inference`` section says to read DICOM radiographs
    (:func:`kseg.io.read_radiograph`'s ``dicom_values``): its ``"dicom_values"``, or
    ``"modality"`` for config.json files written before kseg recorded it (what they were
    trained and predicted with)."""
    return inference.get("dicom_values", "modality")


def _radiograph_loaders(where: pathlib.Path, files, inference: Mapping) -> list:
    """Image files by their suffix, DICOM images by their bytes; the rest is skipped."""
    images = [entry for entry in files if entry.suffix.lower() in _IMAGE_SUFFIXES]
    others = [entry for entry in files if entry not in images]
    headers, labels = {}, []
    for path, header in scan_dicom_files(others, where=where):
        if "PixelData" not in header:
            continue
        if "Segmentation" in _sop_class_name(header):
            # a DICOM-SEG has pixel data, but they are labels drawn on another image (an
            # annotation tool saves it beside the radiograph), as the series reader says
            labels.append(f"{path} ({_sop_class_name(header)}: labels, not a radiograph)")
            continue
        headers[pathlib.Path(path)] = header
    if labels:
        warnings.warn(
            SkippedFileWarning(f"{where}: skipped {len(labels)} file(s): " + "; ".join(labels)),
            stacklevel=5,
        )
    dicom_values = radiograph_dicom_values(inference)
    formats = inference.get("image_formats")
    if headers and dicom_values == "displayed" and formats and "dicom" not in formats:
        warnings.warn(
            f"{where}: {len(headers)} DICOM radiograph(s) read as displayed (VOI LUT or "
            "window and Presentation LUT Shape applied), as config.json's dicom_values "
            f"records: the run's model was trained on {', '.join(formats).upper()} images, "
            "which hold what a viewer showed",
            UserWarning,
            stacklevel=5,
        )
    inputs = [
        functools.partial(_radiograph_input, entry, headers.get(entry), dicom_values)
        for entry in files
        if entry in headers or entry in images
    ]
    if not inputs:
        # the root of a dataset (images/ and masks/ beside each other) is given often
        subfolders = []
        if where.is_dir():
            subfolders = sorted(
                entry.name
                for entry in where.iterdir()
                if entry.is_dir() and not entry.name.startswith(".")
            )
        hint = ""
        if subfolders:
            more = ", ..." if len(subfolders) > 6 else ""
            hint = (
                f" (subfolders are not read; it has {', '.join(subfolders[:6])}{more}: pass "
                "the one of images)"
            )
        raise LayoutError(
            where,
            f"holds no radiograph{hint}: expected PNG, JPEG, TIFF, BMP or DICOM image files",
        )
    return inputs


def _labels_or_dose(header) -> bool:
    """A DICOM-SEG or RT Dose object: pixel data, but no image an input could be read from
    (the series reader skips both)."""
    return "Segmentation" in _sop_class_name(header) or _is_rt_dose(header)


def _radiograph_input(path: pathlib.Path, header, dicom_values: str) -> tuple:
    """One radiograph as a one-slice Volume; ``header``: its DICOM header, or ``None``."""
    image, _ = read_radiograph(path, dicom_values=dicom_values)
    affine, metadata, patient_id = image_affine(), {}, _stem(path)
    if header is not None:
        affine, metadata, patient_id = _dicom_image_geometry(path, header)
    volume = Volume(image[None], affine, patient_id, (str(path),), metadata)
    return _stem(path), path, RADIOGRAPH, volume, header is not None


def _dicom_image_geometry(path: pathlib.Path, header) -> tuple[np.ndarray, dict, str]:
    """Affine, metadata and patient of one DICOM image: a one-slice series' when the header
    places the image in the patient (ImagePositionPatient ...), else the pixel spacing
    (PixelSpacing, or ImagerPixelSpacing of projection radiographs) on plain axes."""
    # A grey RGB / YBR secondary capture (read_radiograph reads it as grey) is no series
    # slice: read_dicom_series refuses colour samples, so it is placed by its pixel spacing.
    grey_samples = str(header.get("SamplesPerPixel", 1) or 1).strip() == "1"
    if grey_samples and all(key in header for key in ("ImagePositionPatient",
                                                      "ImageOrientationPatient",
                                                      "PixelSpacing")):  # fmt: skip
        series = read_dicom_series([path])
        return series.affine, series.metadata, series.patient_id
    spacing = header.get("PixelSpacing") or header.get("ImagerPixelSpacing") or (1.0, 1.0)
    try:
        row_spacing, column_spacing = (float(v) for v in spacing)
    except (TypeError, ValueError):
        row_spacing = column_spacing = float("nan")
    if not (
        row_spacing > 0 and column_spacing > 0 and np.isfinite([row_spacing, column_spacing]).all()
    ):
        raise UnreadableFileError(path, f"pixel spacing {spacing!r} is not two positive numbers")
    file_meta = getattr(header, "file_meta", None) or {}
    uid = str(header.get("SOPInstanceUID", "") or "") or str(
        file_meta.get("MediaStorageSOPInstanceUID", "") or ""
    )
    metadata = {
        "modality": str(header.get("Modality", "") or ""),
        "sop_instance_uids": (uid,),
        "frame_of_reference_uid": str(header.get("FrameOfReferenceUID", "") or ""),
    }
    patient_id = str(header.get("PatientID", "") or "") or _stem(path)
    return image_affine(row_spacing, column_spacing), metadata, patient_id


def _check_unique_names(inputs) -> None:
    seen: dict[str, pathlib.Path] = {}
    for name, source, *_ in inputs:
        if name.casefold() in seen:
            raise LayoutError(
                source,
                f"would write outputs named {name!r}, as {seen[name.casefold()]} does; "
                "rename one of them or predict them separately",
            )
        seen[name.casefold()] = source


# --- predicting -------------------------------------------------------------------------------


def predict_path(model, inference: Mapping, input_path: os.PathLike | str) -> list[Prediction]:
    """Segment every image ``input_path`` holds, each on its own grid.

    Args:
        model: a ``keras.Model`` (or callable batch -> batch), 2D for ``"slices"``, 3D for
            ``"volume"``.
        inference: the ``"inference"`` section of a run's ``config.json``.
        input_path: a DICOM series folder, a NIfTI file or folder of them, a radiograph or
            a folder of radiographs (see :func:`read_inputs`).

    Returns:
        One :class:`Prediction` per input, in :func:`read_inputs` order.

    Raises:
        UnreadableFileError: ``inference`` lacks a key or has an unknown kind, window or
            postprocessing (``source`` ``None``: the caller names its config file).
        LayoutError, UnreadableFileError, DicomSeriesError: the input cannot be read.

    Example:
        A NIfTI CT (stored RAS, so each slice reaches the 2D model the DICOM way and its
        labels are turned back) and a threshold in a 2D model's place:

        >>> import tempfile
        >>> ct = np.full((2, 16, 16), -1000.0)  # air, with a block of soft tissue
        >>> ct[:, 3:9, 4:14] = 60.0
        >>> path = pathlib.Path(tempfile.mkdtemp()) / "case_0001.nii.gz"
        >>> write_nifti(Volume(ct, np.diag([2.0, 1.0, 1.0, 1.0]), "case_0001"), path)
        >>> inference = {"kind": "slices", "window": "abdomen", "image_size": [16, 16],
        ...              "num_classes": 1}
        >>> tissue = lambda batch: (batch > 0.5).astype(np.float32)  # abdomen window: 40 HU is 0.5
        >>> [prediction] = predict_path(tissue, inference, path)
        >>> prediction.name, prediction.kind, prediction.labels.array.dtype
        ('case_0001', 'nifti', dtype('uint8'))
        >>> np.array_equal(prediction.labels.array, ct > 40)  # on the input's own grid
        True
        >>> written = write_predictions([prediction], path.parent / "out", "nifti",
        ...                             labels={"tissue": 1})
        >>> [file.name for file in written], int(read_nifti(written[0]).array.sum())
        (['case_0001.nii.gz'], 120)
    """
    inference = checked_inference(inference)
    return [
        _predict_input(model, inference, *item)
        for item in _progress(read_inputs(input_path, inference))
    ]


def _progress(inputs: list) -> list:
    return inputs if len(inputs) < 2 else tqdm(inputs, desc="predict", unit="input")


def _predict_input(model, inference, name, source, kind, image, dicom) -> Prediction:
    values = np.asarray(image.array)
    if values.dtype.kind == "f" and not np.isfinite(values).all():
        # read_nifti only warns (NonFiniteVoxelWarning); a model fed NaN predicts NaN over
        # its receptive field, and NaN probabilities become background labels
        bad = int(np.count_nonzero(~np.isfinite(values)))
        raise UnreadableFileError(
            source,
            f"{bad} of {values.size} voxels are NaN or infinite (converters write NaN outside "
            "the field of view); replace them with the scan's background value first, e.g. "
            "numpy.nan_to_num(array, nan=-1024.0) for CT",
        )
    if inference["kind"] == "volume":
        labels = _predict_volume(model, inference, image, source)
    elif kind in (NIFTI, DICOM_SERIES) and inference.get("modality") != "radiograph":
        # A 2D CT model has seen the slices of head-first supine DICOM series: columns
        # toward the patient's left, rows toward posterior (LPS). NIfTI files often store
        # RAS, i.e. each slice turned upside down and mirrored, and a series may store its
        # columns toward the patient's right (some scanners' feet-first scans) or be turned
        # half round (a prone series, IOP [-1,0,0,0,-1,0]); they are shown to the
        # model the LPS way and the labels turned back (no interpolation either way), so a
        # model that tells the patient's left from right labels the right side.
        from kseg.geometry import orientation, reorient

        axial = reorient(image, DICOM_AXIAL)
        predicted = axial.with_array(_predict_slices(model, inference, axial.array))
        labels = reorient(predicted, orientation(image)).array
    else:
        labels = _predict_slices(model, inference, image.array)
    dtype = np.uint8 if int(inference["num_classes"]) <= 256 else np.uint16
    return Prediction(name, source, kind, image, image.with_array(labels.astype(dtype)), dicom)


def _predict_slices(model, inference, array: np.ndarray) -> np.ndarray:
    import tensorflow as tf

    from kseg.data.pipeline import model_input
    from kseg.evaluation import labels_from_probabilities, resize_probabilities
    from kseg.inference import predict_slices

    preprocess = model_input(
        window=_window_argument(inference["window"]), image_size=inference["image_size"]
    )
    slices = tf.data.Dataset.from_tensor_slices({"image": array}).map(preprocess)
    inputs = np.stack(list(slices.as_numpy_iterator()))
    probabilities = predict_slices(model, inputs, progress=False)
    probabilities = resize_probabilities(probabilities, array.shape[1:])
    labels = labels_from_probabilities(probabilities, float(inference.get("threshold", 0.5)))
    return _postprocessed(inference, labels.astype(np.int32))


def _window_argument(window):
    """config.json's ``window`` as :func:`kseg.data.pipeline.model_input` takes it; the name
    ``"scale_intensity"`` is the per-image min-max scaling of the radiograph recipe."""
    if window == "scale_intensity":
        from kseg.data.pipeline import scale_intensity

        return scale_intensity
    return window


def _predict_volume(model, inference, image: Volume, source: pathlib.Path) -> np.ndarray:
    from kseg.data.pipeline import window
    from kseg.data.preprocess3d import preprocess_volume
    from kseg.evaluation import labels_from_probabilities
    from kseg.geometry import to_original_grid
    from kseg.inference import sliding_window

    low, high = (float(v) for v in inference["window"])
    spacing_xyz = inference["spacing"]
    _warn_if_tilted(image, source)
    prepared = preprocess_volume(
        image,
        orientation=inference.get("orientation", "RAS"),
        spacing=None if spacing_xyz is None else tuple(float(v) for v in spacing_xyz)[::-1],
        # the MSD chain crops to the voxels above the window's lower bound
        crop_threshold=low,
    )
    inputs = window(prepared.image.array, (low + high) / 2.0, high - low).numpy()[..., None]
    probabilities = sliding_window(
        model, inputs, tuple(inference["roi_size"]), overlap=float(inference.get("overlap", 0.25)),
        blend=inference.get("blend", "gaussian"), batch_size=_VOLUME_BATCH,
        progress=False,
    )  # fmt: skip
    labels = labels_from_probabilities(probabilities, float(inference.get("threshold", 0.5)))
    # on the model's grid, as evaluation and checkpoint selection apply it
    labels = prepared.image.with_array(_postprocessed(inference, labels.astype(np.int32)))
    # straight from the model's grid onto the input's, sheared or not: one nearest neighbour
    return to_original_grid(labels, image)


def _warn_if_tilted(image: Volume, source: pathlib.Path) -> None:
    """Say once per input that a gantry-tilted scan goes to the 3D model on the orthogonal
    grid through its slice planes (:func:`kseg.data.preprocess3d.preprocess_volume`)."""
    from kseg.data.preprocess3d import gantry_tilt_degrees
    from kseg.io.dicom import GantryTiltWarning

    angle = gantry_tilt_degrees(image)
    if angle is not None:
        warnings.warn(
            GantryTiltWarning(
                f"{source}: the slices step {angle:.2f}° off the slice normal (a gantry "
                "tilt); the 3D model predicts on the orthogonal grid through the same slice "
                "planes (kseg.geometry.deskew) and the labels are written on the input's "
                "sheared grid"
            ),
            stacklevel=5,
        )

def postprocessing(inference: Mapping):
    """The clean-up a config.json ``inference`` section records, as a ``label map -> label
    map`` function, or ``None`` for none: nnU-Net's largest connected component for the
    labels in ``postprocess_labels`` when the section lists them (a cross-validation chooses
    per label on its out-of-fold predictions), else for every label when ``postprocess`` is
    ``"largest-component"``."""
    import functools

    from kseg.inference import keep_largest_component

    chosen = inference.get("postprocess_labels")
    if chosen:
        return functools.partial(keep_largest_component, labels=[int(v) for v in chosen])
    if inference.get("postprocess", "none") == "largest-component":
        return keep_largest_component
    return None


def inference_model(model, inference: Mapping):
    """``model`` as the run's evaluation uses it: averaged over every flip of the
    ``mirror_axes`` config.json's ``inference`` section lists (mirroring test-time
    augmentation over the axes the training augmentation flipped, as nnU-Net predicts;
    :func:`kseg.inference.ensemble.ensemble_model`), or ``model`` itself when it lists
    none (runs before this key, ``--plan none``, cross-validations, whose saved model
    mirrors already)."""
    axes = tuple(int(axis) for axis in inference.get("mirror_axes", ()))
    if not axes:
        return model
    from kseg.inference.ensemble import ensemble_model

    return ensemble_model([model], mirror_axes=axes, name=f"{model.name}_mirrored")


def _postprocessed(inference, labels: np.ndarray) -> np.ndarray:
    clean_up = postprocessing(inference)
    return labels if clean_up is None else clean_up(labels)


def checked_inference(inference, source: os.PathLike | str | None = None) -> dict:
    """The ``"inference"`` section of a run's config.json, checked before any input is read.

    Args:
        inference: the section.
        source: the config file, named in errors.

    Raises:
        UnreadableFileError: not a mapping, an unknown ``kind`` or ``postprocess``, a
            missing key the kind needs, or a value of the wrong shape.
    """
    if not isinstance(inference, Mapping):
        raise UnreadableFileError(source, f'"inference" must be an object, got {inference!r}')
    kind = inference.get("kind")
    if kind not in INFERENCE_KINDS:
        raise UnreadableFileError(
            source, f"inference kind {kind!r} is not one of {', '.join(INFERENCE_KINDS)}"
        )
    missing = [key for key in _REQUIRED_KEYS[kind] if key not in inference]
    if missing:
        raise UnreadableFileError(
            source, f"the {kind!r} inference section lacks {', '.join(map(repr, missing))}"
        )
    postprocess = inference.get("postprocess", "none")
    if postprocess not in POSTPROCESSING:
        raise UnreadableFileError(
            source, f"inference postprocess {postprocess!r} is not one of {POSTPROCESSING}"
        )
    chosen = inference.get("postprocess_labels", [])
    if not isinstance(chosen, list) or not _positive_ints(chosen, len(chosen)):
        raise UnreadableFileError(
            source, f"inference postprocess_labels {chosen!r} is not a list of label values"
        )
    problems = {
        "mirror_axes": _valid_axes(inference.get("mirror_axes", []), 2 if kind == "slices" else 3),
        "num_classes": _positive_ints([inference["num_classes"]], 1),
        "threshold": _numbers([inference.get("threshold", 0.5)], 1),
        "window": _valid_window(kind, inference["window"]),
        "image_size": kind != "slices" or _positive_ints(inference["image_size"], 2),
        "roi_size": kind != "volume" or _positive_ints(inference["roi_size"], 3),
        "spacing": kind != "volume"
        or inference["spacing"] is None
        or _numbers(inference["spacing"], 3),
        "overlap": kind != "volume" or _fraction(inference.get("overlap", 0.25)),
        "blend": kind != "volume" or inference.get("blend", "gaussian") in BLEND_MODES,
        "dicom_values": inference.get("dicom_values", "modality") in DICOM_VALUES,
        "image_formats": isinstance(inference.get("image_formats", []), list)
        and all(isinstance(name, str) for name in inference.get("image_formats", [])),
    }
    wrong = [key for key, fine in problems.items() if not fine]
    if wrong:
        key = wrong[0]
        raise UnreadableFileError(source, f"inference {key} {inference.get(key)!r} is not valid")
    return dict(inference)


def _valid_axes(axes, spatial_dims: int) -> bool:
    """Distinct spatial axes, counted without the batch and channel axes."""
    return (
        isinstance(axes, list)
        and all(type(axis) is int and 0 <= axis < spatial_dims for axis in axes)
        and len(set(axes)) == len(axes)
    )


def _positive_ints(values, count: int) -> bool:
    try:
        return len(values) == count and all(
            isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v >= 1 for v in values
        )
    except TypeError:
        return False


def _valid_window(kind: str, window) -> bool:
    """A 3D model's window is ``[low, high]`` HU; a 2D model's is what
    :func:`kseg.data.pipeline.model_input` takes (``None``, a preset name, ``[centre,
    width]``) or ``"scale_intensity"``."""
    if kind == "volume":
        return _numbers(window, 2) and float(window[0]) < float(window[1])
    if window is None or window == "scale_intensity":
        return True
    if isinstance(window, str):
        from kseg.data.pipeline import WINDOWS

        return window in WINDOWS
    return _numbers(window, 2) and float(window[1]) > 0


def _fraction(value) -> bool:
    return _numbers([value], 1) and 0.0 <= float(value) < 1.0


def _numbers(value, count: int) -> bool:
    try:
        return len(value) == count and all(np.isfinite(float(v)) for v in value)
    except (TypeError, ValueError):
        return False


# --- writing ----------------------------------------------------------------------------------


def check_format(predictions_or_inputs, format: str) -> None:
    """Refuse an output format the inputs cannot take, before any model runs.

    Args:
        predictions_or_inputs: :class:`Prediction` objects or :func:`read_inputs` tuples.
        format: one of :data:`FORMATS`.

    Raises:
        ValueError: an unknown format.
        LayoutError: DICOM-SEG for a non-DICOM input, RTSTRUCT for anything but a DICOM
            series; the message names the input.
    """
    if format not in FORMATS:
        raise ValueError(f"format {format!r} is not one of {', '.join(FORMATS)}")
    for item in predictions_or_inputs:
        source, kind, dicom = _source_kind_dicom(item)
        if format == "dicom-seg" and not dicom:
            raise LayoutError(
                source,
                f"is a {_describe_kind(kind, source, dicom)}; a DICOM-SEG references the DICOM "
                "images it was drawn on, so it needs DICOM inputs (choose --format nifti or "
                "png for this input)",
            )
        if format == "rtstruct" and kind != DICOM_SERIES:
            raise LayoutError(
                source,
                f"is a {_describe_kind(kind, source, dicom)}; an RT Structure Set references the "
                "slices of a DICOM series (CT), so it needs a DICOM series folder (choose "
                "--format nifti, png or dicom-seg)",
            )


def _source_kind_dicom(item) -> tuple[pathlib.Path, str, bool]:
    if isinstance(item, Prediction):
        return item.source, item.kind, item.dicom
    _, source, kind, _, dicom = item
    return source, kind, dicom


def _describe_kind(kind: str, source: pathlib.Path, dicom: bool) -> str:
    if kind == RADIOGRAPH:
        return f"{'DICOM' if dicom else source.suffix.lstrip('.').upper()} radiograph"
    return "NIfTI volume" if kind == NIFTI else "DICOM series"


def write_predictions(
    predictions: Sequence[Prediction],
    output_dir: os.PathLike | str,
    format: str,
    *,
    labels: Mapping[str, int],
    overwrite: bool = False,
) -> list[pathlib.Path]:
    """Write predictions in one format, each on its input's grid, every file atomically.

    Existing outputs are never replaced silently: a DICOM series is named after its folder,
    and layouts such as CHAOS call every series folder ``DICOM_anon``, so a second patient
    predicted into the same folder would otherwise replace the first one's file. Every
    planned output is checked before anything is written.

    Files, for a prediction named ``NAME``:

    * ``nifti``: ``NAME.nii.gz``, with the input's affine (uint8 labels);
    * ``dicom-seg``: ``NAME.seg.dcm``, one segment per label of ``labels``, referencing the
      input's DICOM images (:func:`kseg.io.write_dicom_seg`);
    * ``png``: ``NAME.png`` for a radiograph; ``NAME/slice_0000.png`` ... for a volume, one
      per slice in array order (a DICOM series' position order), labels as pixel values
      (:func:`kseg.io.write_png_stack`);
    * ``rtstruct``: ``NAME.rtstruct.dcm``, one ROI per label (:func:`kseg.io.write_rtstruct`).

    Args:
        predictions: from :func:`predict_path`.
        output_dir: created if missing; must not be an input folder or lie inside one.
        format: one of :data:`FORMATS`.
        labels: ``{name: label value}`` (config.json's ``"labels"``), the segment / ROI
            names.
        overwrite: replace outputs that already exist (a PNG folder of a volume then loses
            the ``slice_NNNN.png`` files the new prediction does not write, so it never
            mixes two predictions); by default an existing output is refused.

    Returns:
        The written files, in prediction order.

    Raises:
        ValueError: an unknown format.
        LayoutError: a format the input cannot take (see :func:`check_format`), an output
            that would land in an input folder or replace an input file, or an output that
            exists already and ``overwrite`` is false (with ``overwrite``: one of the other
            kind, a folder for a file), or ``output_dir`` or a folder above it is a file;
            nothing is written then.
    """
    check_format(predictions, format)
    output_dir = pathlib.Path(output_dir)
    names = {int(value): str(name) for name, value in labels.items()}
    planned = [(prediction, _output_path(prediction.name, prediction.kind, output_dir, format))
               for prediction in predictions]  # fmt: skip
    _check_outputs_spare_inputs(output_dir, planned)
    _check_output_targets(output_dir, [(prediction.kind, path) for prediction, path in planned],
                          format, overwrite=overwrite)
    output_dir.mkdir(parents=True, exist_ok=True)
    written: list[pathlib.Path] = []
    for prediction, path in planned:
        files = _write(prediction, path, format, names)
        if format == "png" and prediction.kind != RADIOGRAPH:
            _remove_stale_slices(path, files)
        written.extend(files)
    return written


def _check_output_targets(output_dir: pathlib.Path, planned, format: str, *,
                          overwrite: bool) -> None:
    """Refuse, before any model runs, outputs that cannot be written: ``output_dir`` (or a
    folder above it) is a file, or, with ``overwrite``, a planned output of the other kind
    (a folder where a file goes, a file where a volume's PNG folder goes) exists; without
    ``overwrite``, any planned output that exists (:func:`_refuse_existing_outputs`)."""
    for folder in (output_dir, *output_dir.parents):
        if os.path.lexists(folder):
            if not folder.is_dir():
                raise LayoutError(
                    folder, "is not a folder; --output is the folder predictions are "
                    "written into (created if missing)",
                )  # fmt: skip
            break
    if not overwrite:
        _refuse_existing_outputs(path for _, path in planned)
        return
    for kind, path in planned:
        folder_output = format == "png" and kind != RADIOGRAPH
        if os.path.lexists(path) and path.is_dir() != folder_output:
            found, expected = ("a folder", "file") if path.is_dir() else ("a file", "folder")
            raise LayoutError(
                path, f"is {found}; --overwrite replaces an earlier prediction, which is a "
                f"{expected} here: move it away or choose another --output folder",
            )  # fmt: skip


def _refuse_existing_outputs(paths) -> None:
    for path in paths:
        if os.path.lexists(path):
            raise LayoutError(
                path,
                "exists already (an earlier prediction, or another input of the same name: "
                "a DICOM series is named after its folder); kseg predict does not replace "
                "outputs: choose another --output folder, move this one away, or pass "
                "--overwrite to replace it",
            )


# the names write_png_stack gives a volume's slices by default
_SLICE_FILE = re.compile(r"slice_\d{4,}\.png")


def _remove_stale_slices(folder: pathlib.Path, written) -> None:
    """An overwritten PNG folder keeps only this prediction's slices (an earlier series of
    more slices left ``slice_NNNN.png`` files past this one's last)."""
    keep = {path.name for path in written}
    for entry in folder.iterdir():
        if entry.is_file() and _SLICE_FILE.fullmatch(entry.name) and entry.name not in keep:
            entry.unlink()


def _write_slice_folder(array: np.ndarray, folder: pathlib.Path) -> list[pathlib.Path]:
    """A volume's PNG slices, written into a hidden staging folder beside ``folder`` and
    moved in once all are written: an interrupted prediction never leaves a folder that
    holds part of a volume under the output's name (a kill leaves the staging folder)."""
    import shutil
    import tempfile

    from kseg._files import _DIRECTORY_MODE

    staging = pathlib.Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
    try:
        staging.chmod(_DIRECTORY_MODE)
        written = write_png_stack(array, staging)
        if not os.path.lexists(folder):
            os.replace(staging, folder)
        else:  # --overwrite: the earlier slices are replaced file by file, other files kept
            for path in written:
                os.replace(path, folder / path.name)
        return [folder / path.name for path in written]
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _output_path(name: str, kind: str, output_dir: pathlib.Path, format: str) -> pathlib.Path:
    if format == "nifti":
        return output_dir / f"{name}.nii.gz"
    if format == "dicom-seg":
        return output_dir / f"{name}.seg.dcm"
    if format == "rtstruct":
        return output_dir / f"{name}.rtstruct.dcm"
    return output_dir / (f"{name}.png" if kind == RADIOGRAPH else name)


def _check_outputs_spare_inputs(output_dir: pathlib.Path, planned) -> None:
    for prediction, path in planned:
        if prediction.source.is_dir():
            _refuse_output_inside(prediction.source, output_dir)
        inputs = {os.path.realpath(f) for f in prediction.image.source_files}
        if os.path.realpath(path) in inputs | {os.path.realpath(prediction.source)}:
            raise LayoutError(path, "is an input file; write predictions to another folder")


def _refuse_output_inside(input_folder: os.PathLike | str, output_dir: os.PathLike | str):
    """Outputs in an input folder would change what the next run reads from it."""
    folder, target = os.path.realpath(input_folder), os.path.realpath(output_dir)
    if target == folder or target.startswith(folder.rstrip(os.sep) + os.sep):
        raise LayoutError(
            output_dir,
            f"lies in the input folder {input_folder}; write predictions elsewhere, inputs "
            "are never modified",
        )


def _write(prediction: Prediction, path: pathlib.Path, format: str, names) -> list:
    labels = prediction.labels
    if format == "nifti":
        write_nifti(labels, path)
        return [path]
    if format == "png":
        if prediction.kind == RADIOGRAPH:
            return write_png_stack(labels.array, path.parent, names=[path.name])
        return _write_slice_folder(labels.array, path)
    if format == "dicom-seg":
        from kseg.io.dicom_seg import write_dicom_seg

        return [write_dicom_seg(labels, prediction.image, path, names)]
    from kseg.io.rtstruct_writer import write_rtstruct

    return [write_rtstruct(labels, prediction.image, path, roi_names=names)]


# --- the command ------------------------------------------------------------------------------


def read_run(run_dir: os.PathLike | str) -> tuple[pathlib.Path, dict]:
    """The model file and the checked config of a run folder, before anything heavy loads.

    Returns:
        ``(RUN/best.keras, config)`` with ``config["inference"]`` checked.

    Raises:
        LayoutError: ``run_dir`` is not a folder, or lacks ``config.json`` / ``best.keras``.
        UnreadableFileError: ``config.json`` is not a kseg run config
            (:func:`kseg.recipes.run_config.read_config`), its ``labels`` are not names of
            positive label values the model can output (1 for one sigmoid channel, up to
            ``num_classes - 1`` otherwise), or its inference section is not valid; the
            file is named.
    """
    from kseg.recipes.run_config import CONFIG_FILE, read_config

    config = read_config(run_dir)
    config_path = pathlib.Path(run_dir) / CONFIG_FILE
    model_path = pathlib.Path(run_dir) / "best.keras"
    if not model_path.is_file():
        raise LayoutError(
            model_path, "is missing: the run folder holds no trained model (kseg train "
            "writes best.keras when a validation score first improves)"
        )  # fmt: skip
    labels = config["labels"]
    if (
        not isinstance(labels, dict)
        or not labels
        or not all(
            isinstance(value, int) and not isinstance(value, bool) and value > 0
            for value in labels.values()
        )
    ):
        raise UnreadableFileError(
            config_path, f'"labels" must map names to positive label values, got {labels!r}'
        )
    config["inference"] = checked_inference(config["inference"], config_path)
    largest = _largest_label(config["inference"])
    beyond = sorted({value for value in labels.values() if value > largest})
    if beyond:
        raise UnreadableFileError(
            config_path, f'"labels" {labels!r} name label values {beyond} the model cannot '
            f"output: {_outputs(config['inference'])}",
        )  # fmt: skip
    return model_path, config


def _largest_label(inference: Mapping) -> int:
    """The largest label value a model of ``inference["num_classes"]`` channels predicts:
    1 for one sigmoid channel, else ``num_classes - 1`` (0 is background)."""
    return max(1, int(inference["num_classes"]) - 1)


def _outputs(inference: Mapping) -> str:
    classes = int(inference["num_classes"])
    if classes == 1:
        return "inference num_classes 1 is one sigmoid channel, label 1"
    return f"inference num_classes {classes} gives labels 1..{classes - 1} (0 is background)"


def predict_command(
    run_dir: os.PathLike | str,
    input_path: os.PathLike | str,
    output_dir: os.PathLike | str,
    format: str,
    *,
    overwrite: bool = False,
) -> list[pathlib.Path]:
    """``kseg predict RUN --input PATH --output DIR --format FORMAT [--overwrite]``.

    Checks the run, reads the inputs and checks that they can take ``format`` and that no
    planned output exists already (unless ``overwrite``) before the model is loaded, then
    predicts each input and writes it with :func:`write_predictions`, one input at a time:
    each is read again when its turn comes (one input is kept from the check) and written
    before the next is read, so memory holds one input and one prediction, whatever the
    folder holds, and an error on a later input leaves the earlier outputs written.
    Outputs are named after the inputs (a DICOM series after its folder): predicting CHAOS
    patients one by one, whose series folders are all ``DICOM_anon``, needs one
    ``output_dir`` per patient.

    Returns:
        The written files.

    Raises:
        ValueError: an unknown format.
        LayoutError, UnreadableFileError, DicomSeriesError: a run folder without
            config.json / best.keras, an invalid config, an unreadable input, a format
            the input cannot take, an ``output_dir`` that is a file, or an existing output
            and ``overwrite`` false; the file is named.

    Example:
        A run folder whose model labels every voxel of at least -600 HU (the lung
        window's centre) as body, on a phantom CT series, written as a DICOM-SEG:

        >>> import tempfile
        >>> import keras
        >>> from kseg.io import read_dicom_seg
        >>> from kseg.phantoms.lctsc import write_lctsc
        >>> from kseg.recipes.run_config import CONFIG_VERSION, REQUIRED_KEYS, write_json
        >>> work = pathlib.Path(tempfile.mkdtemp())
        >>> root = write_lctsc(work, num_patients=1, num_test_patients=0, num_slices=4, size=32)
        >>> series = next(root.glob("LCTSC/*/*/*-CT *"))
        >>> run = work / "run"
        >>> run.mkdir()
        >>> net = keras.Sequential([keras.Input((32, 32, 1)), keras.layers.Conv2D(
        ...     1, 1, activation="sigmoid", kernel_initializer="ones",
        ...     bias_initializer=keras.initializers.Constant(-0.5))])  # windowed >= 0.5
        >>> net.save(run / "best.keras")
        >>> inference = {"kind": "slices", "window": "lung", "image_size": [32, 32],
        ...              "num_classes": 1}
        >>> # kseg train writes every required key; predicting reads labels and inference
        >>> _ = write_json(run / "config.json", {key: None for key in REQUIRED_KEYS} | {
        ...     "kseg_config_version": CONFIG_VERSION, "labels": {"body": 1},
        ...     "inference": inference})
        >>> written = predict_command(run, series, work / "out", "dicom-seg")
        >>> [path.name for path in written]  # named after the series folder
        ['0.000000-CT synthetic kseg phantom-....seg.dcm']
        >>> ct = read_dicom_series(series)
        >>> body = read_dicom_seg(written[0], reference_series=ct)
        >>> body.metadata["segment_labels"], np.array_equal(body.array, ct.array >= -600)
        ({1: 'body'}, True)
    """
    if format not in FORMATS:
        raise ValueError(f"format {format!r} is not one of {', '.join(FORMATS)}")
    model_path, config = read_run(run_dir)
    inference = config["inference"]
    if os.path.isdir(input_path):
        _refuse_output_inside(input_path, output_dir)
    loaders, inputs, only = _checked_inputs(input_path, inference, format)
    check_format(inputs, format)
    if format in ("dicom-seg", "rtstruct"):
        _check_dicom_names(config["labels"], pathlib.Path(run_dir) / "config.json", inference)
    output_dir = pathlib.Path(output_dir)
    _check_output_targets(output_dir, [(kind, _output_path(name, kind, output_dir, format))
                                       for name, _, kind, *_ in inputs],
                          format, overwrite=overwrite)  # fmt: skip

    import kseg

    model = kseg.load_model(model_path, compile=False)
    channels = model.output_shape[-1]
    if channels != int(inference["num_classes"]):
        raise UnreadableFileError(
            pathlib.Path(run_dir) / "config.json",
            f"inference num_classes is {inference['num_classes']} but {model_path} outputs "
            f"{channels} channels",
        )
    model = inference_model(model, inference)
    written = []
    for load in _progress(loaders):
        # one input at a time, read again (a single input is kept from the check), predicted
        # and written before the next is read: memory holds one input and its prediction,
        # and an error on a later input leaves the earlier ones written
        item, only = only or load(), None
        prediction = _predict_input(model, inference, *item)
        del item
        written += write_predictions(
            [prediction], output_dir, format, labels=config["labels"], overwrite=overwrite
        )
        del prediction
    return written


def _check_dicom_references(item: tuple, format: str | None) -> None:
    """Refuse, before the model runs, a DICOM series the DICOM-SEG / RTSTRUCT writer would
    refuse after it: no FrameOfReferenceUID, slices without or sharing a SOPInstanceUID,
    frames highdicom cannot take as one source image (the writers' own checks, on the
    headers)."""
    _, source, kind, image, _ = item
    if kind != DICOM_SERIES or format not in ("dicom-seg", "rtstruct"):
        return  # check_format refuses the other kinds
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # BlankSeriesUidWarning: said once, when written
        try:
            if format == "dicom-seg":
                from kseg.io.dicom_seg import _source_datasets

                _source_datasets(image)
            else:
                from kseg.io.rtstruct_writer import _series_reference

                _series_reference(image)
        except ValueError as error:
            what = "a DICOM-SEG" if format == "dicom-seg" else "an RT Structure Set"
            raise LayoutError(source, f"cannot be referenced by {what}: {error}") from error


def _check_dicom_names(
    labels: Mapping[str, int], config_path: pathlib.Path, inference: Mapping | None = None
) -> None:
    """Refuse, before the model runs, structure names a DICOM-SEG or RTSTRUCT cannot hold
    (the writers' own rule: one LO value, at most 64 characters, no backslash or control
    character), and, given ``inference``, label values the model outputs that ``labels``
    leaves unnamed (the writers name every structure they hold, and would refuse the first
    prediction holding one, after the model ran)."""
    from kseg.io.rtstruct_writer import _roi_names

    if inference is not None:
        named = {int(value) for value in labels.values()}
        unnamed = [value for value in range(1, _largest_label(inference) + 1)
                   if value not in named]  # fmt: skip
        if unnamed:
            raise UnreadableFileError(
                config_path, f'"labels" {dict(labels)!r} name no structure for label values '
                f"{unnamed} the model outputs ({_outputs(inference)}); a DICOM-SEG or RT "
                "Structure Set names every structure it holds: add them to \"labels\", or "
                "choose --format nifti or png",
            )  # fmt: skip

    try:
        _roi_names({int(value): str(name) for name, value in labels.items()})
    except ValueError as error:
        raise UnreadableFileError(
            config_path, f"labels cannot name DICOM segments or ROIs: {error}"
        ) from error


def _checked_inputs(
    input_path, inference: Mapping, format: str | None = None
) -> tuple[list, list[tuple], tuple | None]:
    """``(loaders, inputs, only)``: every input read and checked as :func:`read_inputs`
    checks them (and, for ``format``, as its DICOM writer checks the images it references),
    holding one at a time; ``inputs`` keeps name, source, kind, ``None`` for the image and
    the DICOM flag; ``only`` is the input as read when there is one, else ``None``."""
    loaders = _input_loaders(input_path, inference)
    inputs, item = [], None
    for load in loaders:
        item = None  # the previous input is let go before the next is read
        item = load()
        _check_input(item, inference)
        _check_dicom_references(item, format)
        name, source, kind, _, dicom = item
        inputs.append((name, source, kind, None, dicom))
    _check_unique_names(inputs)
    return loaders, inputs, item if len(loaders) == 1 else None
