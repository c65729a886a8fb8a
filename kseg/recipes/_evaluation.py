"""What the recipes' ``evaluate`` share: the run's model, the ``RUN/evaluation/<name>/``
folder, the per-case ``.npz`` files the report's slice viewer reads, scoring a 2D model
with those files written, the TFDS dataset of an ``--input`` folder, and the saved and
printed table.

Each case file holds exactly the arrays its table row was scored on: the prediction is the
label map after thresholding (or argmax) and post-processing, the reference is the stored
mask, both on the grid the scores were computed on.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
import pathlib
import re
import shutil

import numpy as np

from kseg._files import atomic_output
from kseg.evaluation import (
    PatientTable,
    _postprocessed,
    _warn_empty_references,
    evaluate_volumes,
    labels_from_probabilities,
    predict_on_mask_grid,
    reassemble_slices,
)

# A patient id becomes a file name; a path separator would put it elsewhere.
_SAFE_FILE_NAME = re.compile(r"^[^/\\\x00]+$")


# Written into RUN/evaluation/input-<name>/: the folder whose cases it scores.
INPUT_RECORD = "input.json"


def evaluation_folder(run_dir, name: str) -> pathlib.Path:
    """``RUN/evaluation/<name>``. For an ``--input`` evaluation
    (:class:`kseg.recipes._common.InputEvaluationName`) the folder that records this input
    (:data:`INPUT_RECORD`), else the first of ``input-<folder>``, ``input-<folder>-2``, ...
    that is free, claimed for it: results of ``A/test`` and ``B/test`` never replace one
    another (nor those of an evaluation whose input is not recorded)."""
    input_dir = getattr(name, "input_dir", None)
    root = pathlib.Path(run_dir) / "evaluation"
    if input_dir is None:
        return root / name
    from kseg.recipes import run_config

    source = os.path.realpath(input_dir)
    for number in itertools.count(1):
        folder = root / (name if number == 1 else f"{name}-{number}")
        record = folder / INPUT_RECORD
        if record.is_file():
            try:
                recorded = json.loads(record.read_text(encoding="utf-8")).get("input")
            except (OSError, UnicodeDecodeError, ValueError, AttributeError):
                recorded = None
            if recorded == source:
                return folder
        elif not folder.is_dir() or next(folder.iterdir(), None) is None:
            run_config.write_json(record, {"input": source})
            if number > 1:
                print(f"{root / name} holds the evaluation of another input folder: the "
                      f"scores of {input_dir} go to {folder}", flush=True)
            return folder
    raise AssertionError("unreachable")  # itertools.count never ends


def scoring_folder(run_dir, name: str) -> pathlib.Path:
    """:func:`evaluation_folder`, called when scoring starts: the table an earlier
    evaluation left there is removed, since this one rewrites the case files as it scores;
    an evaluation stopped part-way then leaves no table describing case files it no longer
    matches (the report shows it without scores), and one that finishes writes its own."""
    folder = evaluation_folder(run_dir, name)
    (folder / "scores.csv").unlink(missing_ok=True)
    return folder


def input_folder_name(run_dir, name: str) -> str:
    """The name of the folder ``RUN/evaluation/<...>`` an evaluation named ``name`` writes
    into (:func:`evaluation_folder`)."""
    return evaluation_folder(run_dir, name).name


def run_model(run_dir):
    """``(model, inference)``: ``RUN/best.keras`` made into what ``config.json``'s
    ``inference`` section says the run predicts with
    (:func:`kseg.predict.inference_model`), and that section."""
    import kseg
    from kseg.predict import inference_model
    from kseg.recipes import run_config

    inference = run_config.read_config(run_dir)["inference"]
    path = pathlib.Path(run_dir) / "best.keras"
    model = kseg.load_model(path)
    channels, classes = model.output_shape[-1], inference.get("num_classes")
    if classes is not None and channels != int(classes):
        # a best.keras copied in from another run would be scored without a word
        from kseg.errors import UnreadableFileError

        raise UnreadableFileError(
            path, f"outputs {channels} channels, but {pathlib.Path(run_dir) / 'config.json'} "
            f"says the run predicts {classes} (inference num_classes): is this model from "
            "another run?",
        )  # fmt: skip
    return inference_model(model, inference), inference


def write_case(
    cases_dir, patient_id: str, *, image, reference, prediction, spacing
) -> pathlib.Path:
    """Write ``cases_dir/<patient_id>.npz`` (atomically) for the report's slice viewer.

    Args:
        image: display intensities in [0, 1], ``(S, H, W)`` (``(H, W)`` for one image).
        reference: label values on the same grid, or ``None`` for an unlabelled case.
        prediction: predicted label values on the same grid.
        spacing: mm of (slice, row, column).

    Raises:
        ValueError: a patient id that cannot be a file name, arrays on different grids,
            an image outside [0, 1], labels outside 0..255 or a spacing not of 3 numbers.
    """
    patient_id = str(patient_id)
    if not _SAFE_FILE_NAME.match(patient_id) or patient_id in (".", ".."):
        raise ValueError(f"patient id {patient_id!r} cannot name a case file")
    image = np.asarray(image, dtype=np.float32)
    if image.ndim == 2:
        image = image[None]
    arrays = {"image": image}
    for key, labels in (("reference", reference), ("prediction", prediction)):
        if labels is None:
            continue
        labels = np.asarray(labels)
        labels = labels[None] if labels.ndim == 2 else labels
        if labels.shape != image.shape:
            raise ValueError(
                f"case {patient_id}: {key} {labels.shape} is not on the image grid {image.shape}"
            )
        if labels.size and (labels.min() < 0 or labels.max() > 255):
            raise ValueError(f"case {patient_id}: {key} labels outside 0..255")
        arrays[key] = labels.astype(np.uint8)
    if image.ndim != 3:
        raise ValueError(f"case {patient_id}: image must be (S, H, W), got {image.shape}")
    if image.size and not (np.all(np.isfinite(image)) and image.min() >= 0 and image.max() <= 1):
        raise ValueError(f"case {patient_id}: display image must lie in [0, 1]")
    arrays["spacing"] = np.asarray(spacing, dtype=np.float64)
    if arrays["spacing"].shape != (3,):
        raise ValueError(f"case {patient_id}: spacing must be 3 numbers, got {spacing!r}")
    path = pathlib.Path(cases_dir) / f"{patient_id}.npz"
    with atomic_output(path) as temporary:
        np.savez_compressed(temporary, **arrays)
    return path


def score_slice_cases(
    model,
    volumes,
    *,
    cases_dir,
    metrics,
    labels=None,
    threshold: float = 0.5,
    postprocess=None,
    case_spacing=None,
) -> PatientTable:
    """Score a 2D model per patient and write each case file as the row is scored.

    Args:
        model: a 2D ``keras.Model``.
        volumes: ``(patient_id, model inputs (S, h, w, C), display image (S, H, W, 1) in
            [0, 1], mask (S, H, W), spacing)``; one radiograph as ``(h, w, C)``,
            ``(H, W, 1)`` and ``(H, W)`` (scored in 2D, so distances measure its outline).
            Spacing ``None`` scores distances in pixels and records ``case_spacing``'s
            spacing of the patient (else 1 mm) in the case file.
        metrics, labels, threshold: as in :func:`kseg.evaluation.evaluate_volumes`.
        postprocess: ``label map -> label map`` applied before scoring.
        case_spacing: ``{patient_id: (slice, row, column) mm}`` the case files record
            for cases scored in pixels (:func:`radiograph_case_spacing`: a radiograph's
            pixel spacing, which the report draws its pixels with).

    Returns:
        The table, rows sorted by patient id (as :func:`kseg.evaluation.evaluate_slices`).
    """

    def cases():
        for patient_id, inputs, display, mask, spacing in volumes:
            ((_, mask, probabilities, _),) = predict_on_mask_grid(
                model, [(patient_id, inputs, mask, spacing)]
            )
            predicted = labels_from_probabilities(probabilities, threshold).astype(np.uint8)
            predicted = _postprocessed(patient_id, predicted, postprocess)
            shown = np.asarray(display)[..., 0]
            drawn = spacing
            if spacing is None:
                drawn = (case_spacing or {}).get(patient_id, (1.0, 1.0, 1.0))
            write_case(
                cases_dir,
                patient_id,
                image=shown,
                reference=mask,
                prediction=predicted,
                spacing=drawn,
            )
            yield patient_id, mask, predicted, spacing

    table = evaluate_volumes(
        cases(),
        metrics=metrics,
        labels=labels,
        threshold=threshold,
        progress=False,
        warn_empty=False,
    )
    table = PatientTable(sorted(table.rows, key=lambda row: row["patient_id"]))
    _warn_empty_references("evaluate", table)
    return table


def radiograph_case_spacing(config, folder) -> dict:
    """``{image_id: (1, row mm, column mm)}`` of the radiographs of ``folder`` (the X-ray
    dataset's layout, ``config`` its builder config) whose files state their pixel size:
    DICOM's PixelSpacing, else ImagerPixelSpacing (projection radiographs), as ``kseg
    predict`` places a DICOM radiograph. Images that state none (PNG, JSRT's raw files), or
    state no two positive numbers, are left out: their case files keep 1 mm. Empty when
    ``folder`` is no longer in the layout (its scores do not depend on it)."""
    import pydicom
    from etils import epath

    from kseg.errors import KsegError
    from tfds_builders.xray.layout import find_records
    from tfds_builders.xray.radiographs import image_format

    try:
        records = find_records(epath.Path(folder), config)
    except (KsegError, OSError):
        return {}
    spacing = {}
    for record in records:
        try:
            if image_format(record.image) != "dicom":
                continue
            header = pydicom.dcmread(os.fspath(record.image), stop_before_pixels=True,
                                     force=True)  # fmt: skip
            stated = header.get("PixelSpacing") or header.get("ImagerPixelSpacing")
            row, column = (float(value) for value in stated)
        except (KsegError, OSError, TypeError, ValueError, pydicom.errors.InvalidDicomError):
            continue
        if np.isfinite([row, column]).all() and row > 0 and column > 0:
            spacing[record.image_id] = (1.0, row, column)
    return spacing


def slice_volumes(make_dataset, *, window, image_size):
    """Whole volumes of a per-slice split for :func:`score_slice_cases`: the model input
    made exactly as training made it (:func:`kseg.data.pipeline.model_input`) and the same
    intensities on the stored grid for display.

    Args:
        make_dataset: ``() -> tf.data.Dataset`` of the split's slice examples (read twice).
        window, image_size: as in ``model_input``.
    """
    from kseg.data.pipeline import model_input

    model_inputs = reassemble_slices(
        make_dataset(), preprocess=model_input(window=window, image_size=image_size)
    )
    displays = reassemble_slices(make_dataset(), preprocess=model_input(window=window))
    for (patient_id, inputs, mask, spacing), (shown_id, display, _, _) in zip(
        model_inputs, displays, strict=True
    ):
        if shown_id != patient_id:
            raise ValueError(
                f"slices of {patient_id!r} and {shown_id!r} arrived interleaved "
                "differently in two reads of one split"
            )
        yield patient_id, inputs, display, mask, spacing


def input_builder(builder_class, config, input_dir, run_dir, name: str):
    """The TFDS dataset of ``input_dir`` (a folder in the download's layout), prepared
    in ``run_dir/tfds-<name>`` with ``config``'s classes and checks in one fold (every
    patient of it is scored, a single case too; an input prepared by an earlier kseg in
    two folds is read whole as well). Prepared once and reused while
    ``input_dir`` holds the same files; prepared again when it does not (another folder of
    the same name, files added or changed): the folder is kseg's own cache."""
    from kseg.errors import KsegError, LayoutError
    from kseg.recipes import _common

    config = dataclasses.replace(config, name=f"{config.name}_input", num_folds=1)
    # beside the evaluation folder of this input (input-<folder>-2 for a second input of
    # the same folder name), so two inputs keep a prepared dataset each
    data_dir = pathlib.Path(run_dir) / f"tfds-{input_folder_name(run_dir, name)}"
    builder = builder_class(config=config, data_dir=str(data_dir))
    listing = _common.source_listing(input_dir)
    if _common.is_prepared(builder) and _common.stale_source(builder, input_dir, listing):
        print(f"{input_dir} holds other files than the dataset in {data_dir} was prepared "
              "from: preparing it again", flush=True)
        shutil.rmtree(data_dir)
        builder = builder_class(config=config, data_dir=str(data_dir))
    try:
        _common.prepare(builder, input_dir, listing)
    except KsegError:
        raise
    except ValueError as error:  # the fold assignment: patient ids it cannot tell apart
        message = str(error).removeprefix(f"{input_dir}: ")
        raise LayoutError(input_dir, f"cannot be scored: {message}") from error
    return builder


def every_split(builder, *, exclude=()) -> str:
    """All splits of a prepared dataset as one TFDS split expression (``fold0+fold1``)."""
    return "+".join(sorted(split for split in builder.info.splits if split not in exclude))


def save_table(table: PatientTable, folder) -> pathlib.Path:
    """``folder/scores.csv``, and ``folder/cases`` cleared of case files of patients the
    table does not hold: an earlier evaluation into the same folder (``kseg evaluate
    --input`` of the same folder before cases were removed from it) left its own there."""
    path = pathlib.Path(folder) / "scores.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(path)
    scored = set(table.patient_ids)
    cases = pathlib.Path(folder) / "cases"
    for case in sorted(cases.glob("*.npz")) if cases.is_dir() else []:
        if case.stem not in scored:
            case.unlink()
    return path


def show_table(args, table: PatientTable, folder, heading: str) -> PatientTable:
    """The end of a recipe's ``evaluate``: ``folder/scores.csv`` saved, ``heading`` and the
    table printed, the evaluation logged with ``--mlflow``; returns ``table``."""
    from kseg.recipes import _common

    save_table(table, folder)
    print(heading)
    print(table)
    _common.log_evaluation(args)
    return table
