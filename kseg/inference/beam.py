"""Predict many volumes on Apache Beam: one model load per worker, resumable outputs.

A trained run's model is applied to a list of volumes (NIfTI files, DICOM series folders)
by a Beam pipeline: ``beam.Create(volumes) | beam.ParDo(PredictVolumeFn)``. Each worker
loads the saved ``.keras`` model once (``DoFn.setup``, not per volume) and, for each volume,
predicts with the run's own preprocessing (:func:`kseg.predict.predict_path`, the
``"inference"`` section of the run's ``config.json``) and writes one prediction file
(:func:`kseg.predict.write_predictions`: written under a temporary name, then renamed).

A volume whose prediction file already exists is skipped, so a run that was stopped, or a
job re-run after a failed worker, only does what is left. The file of a volume is
``OUTPUT/<name>.nii.gz`` (``.seg.dcm`` for ``dicom-seg``, ``.rtstruct.dcm`` for
``rtstruct``), ``<name>`` being the NIfTI file's name without ``.nii``/``.nii.gz`` or the
DICOM series folder's name. Volumes that share a name (CHAOS calls every patient's series
folder ``DICOM_anon``: ``CT/1/DICOM_anon``, ``CT/2/DICOM_anon``) keep the folders above
them below their common folder, as MONAI's ``SaveImage(data_root_dir=...)`` does:
``OUTPUT/1/DICOM_anon.nii.gz``, ``OUTPUT/2/DICOM_anon.nii.gz``; volumes whose paths do not
tell them apart either are refused before anything runs.

Runs on the DirectRunner (``direct_running_mode="multi_processing"``,
``direct_num_workers=N`` for N processes on one machine) and on Dataflow, Flink or Spark
with their pipeline options; the volumes and the output folder must then be on a file
system every worker mounts (kseg writes with local file operations).

Example:
    >>> from apache_beam.options.pipeline_options import PipelineOptions  # doctest: +SKIP
    >>> result = predict_run_volumes(
    ...     "runs/msd_spleen", ["imagesTs/spleen_1.nii.gz", "imagesTs/spleen_7.nii.gz"],
    ...     "predictions", beam_options=PipelineOptions(
    ...         direct_running_mode="multi_processing", direct_num_workers=2)
    ... )  # doctest: +SKIP
    >>> result.written, result.skipped  # doctest: +SKIP
    ((PosixPath('predictions/spleen_1.nii.gz'), PosixPath('predictions/spleen_7.nii.gz')), ())

Run again, it finds both files and skips them: ``written`` is then empty.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
from collections.abc import Mapping, Sequence

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions

from kseg._files import remove_stale_temporaries
from kseg.errors import LayoutError

__all__ = [
    "BatchPrediction",
    "PREDICTION_FORMATS",
    "PredictVolumeFn",
    "prediction_file",
    "predict_run_volumes",
    "predict_volumes",
]

# One file per volume; the png format writes a folder of slices, which cannot be skipped
# safely by its existence alone.
PREDICTION_FORMATS = {"nifti": ".nii.gz", "dicom-seg": ".seg.dcm", "rtstruct": ".rtstruct.dcm"}
_NIFTI_SUFFIXES = (".nii.gz", ".nii")
_COUNTERS = "kseg.inference.beam"


@dataclasses.dataclass(frozen=True)
class BatchPrediction:
    """What a batch prediction did.

    Attributes:
        written: prediction files written by this run, in input order.
        skipped: prediction files that existed before the run, in input order.
    """

    written: tuple[pathlib.Path, ...]
    skipped: tuple[pathlib.Path, ...]


def prediction_file(
    volume: os.PathLike | str, output_dir: os.PathLike | str, format: str = "nifti"
) -> pathlib.Path:
    """The prediction file of ``volume`` (a NIfTI file or a DICOM series folder).

    Example:
        >>> prediction_file("imagesTs/spleen_1.nii.gz", "out").as_posix()
        'out/spleen_1.nii.gz'
        >>> prediction_file("CT/1/DICOM_anon", "out", "dicom-seg").as_posix()
        'out/DICOM_anon.seg.dcm'
    """
    if format not in PREDICTION_FORMATS:
        raise ValueError(
            f"format {format!r} is not one of {', '.join(PREDICTION_FORMATS)} (one file per volume)"
        )
    suffix = PREDICTION_FORMATS[format]
    return pathlib.Path(output_dir) / f"{_volume_name(pathlib.Path(volume))}{suffix}"


def _volume_name(volume: pathlib.Path) -> str:
    name = volume.name
    for suffix in _NIFTI_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return volume.resolve().name if volume.is_dir() else name


def _volumes(inputs: Sequence[os.PathLike | str]) -> list[pathlib.Path]:
    """The volumes of ``inputs``: NIfTI files and DICOM series folders, a folder of NIfTI
    files standing for its NIfTI files (sorted by name), as ``kseg predict`` reads a
    folder: hidden files are none (the ``._<name>.nii.gz`` AppleDouble companion of every
    image in the MSD Task09 tar, extracted on a Mac), and a link whose target is missing
    is an error naming it."""
    from kseg.predict import _input_files

    if isinstance(inputs, (str, os.PathLike)):  # one path, not the characters of one
        inputs = [inputs]
    volumes = []
    for item in inputs:
        path = pathlib.Path(item)
        if path.is_dir():
            niftis = [p for p in _input_files(path) if p.name.lower().endswith(_NIFTI_SUFFIXES)]
            volumes.extend(niftis or [path])
        elif path.is_file() and path.name.lower().endswith(_NIFTI_SUFFIXES):
            volumes.append(path)
        else:
            raise LayoutError(
                path,
                "is neither a NIfTI file (.nii, .nii.gz) nor a folder (a DICOM series, "
                "or NIfTI files)",
            )
    return volumes


def _output_files(volumes, output_dir, format) -> list[pathlib.Path]:
    """The prediction file of each volume: :func:`prediction_file`, but volumes of one name
    in different folders (CHAOS's ``<patient>/DICOM_anon``) each in the folders above it
    below those volumes' common folder (``OUTPUT/<patient>/DICOM_anon.nii.gz``)."""
    outputs = [prediction_file(volume, output_dir, format) for volume in volumes]
    sharing: dict[str, list[int]] = {}
    for index, output in enumerate(outputs):
        sharing.setdefault(output.name.casefold(), []).append(index)
    for indices in sharing.values():
        if len(indices) < 2:
            continue
        parents = [volumes[index].resolve().parent for index in indices]
        root = pathlib.Path(os.path.commonpath(parents))
        for index, parent in zip(indices, parents, strict=True):
            below = parent.relative_to(root)
            outputs[index] = pathlib.Path(output_dir) / below / outputs[index].name
    return outputs


def _check_unique_outputs(volumes, output_dir, format) -> list[pathlib.Path]:
    outputs, seen = _output_files(volumes, output_dir, format), {}
    for volume, output in zip(volumes, outputs, strict=True):
        key = os.path.normcase(os.fspath(output)).casefold()
        if key in seen:
            raise LayoutError(
                volume,
                f"would write {output}, as {seen[key]} does; give the volumes distinct names",
            )
        seen[key] = volume
    return outputs


class PredictVolumeFn(beam.DoFn):
    """Predicts one volume per element and writes its prediction file, unless it exists.

    Its input is volume paths (strings), or ``(volume path, prediction file)`` pairs (the
    file :func:`predict_volumes` chose, when volumes share a name), its output the
    prediction file of each volume, written now or found. :func:`predict_volumes` runs it;
    use it in a pipeline of your own as
    ``beam.ParDo(PredictVolumeFn(model_path, inference, output_dir, labels=...))``.

    Args:
        model_path: the saved ``.keras`` model, loaded once per worker in :meth:`setup`.
        inference, output_dir, labels, format: as in :func:`predict_volumes`.
    """

    def __init__(
        self,
        model_path,
        inference: Mapping,
        output_dir,
        *,
        labels: Mapping[str, int],
        format: str = "nifti",
    ):
        from kseg.predict import checked_inference

        super().__init__()
        prediction_file("volume.nii.gz", output_dir, format)  # refuses an unknown format now
        self.model_path = os.fspath(model_path)
        self.inference = checked_inference(inference)
        self.output_dir = os.fspath(output_dir)
        self.labels = dict(labels)
        self.format = format
        self.written = beam.metrics.Metrics.counter(_COUNTERS, "volumes_written")
        self.skipped = beam.metrics.Metrics.counter(_COUNTERS, "volumes_skipped")
        self.model = None

    def setup(self):
        import kseg

        # Once per DoFn instance, which a worker keeps and reuses for all its bundles: not
        # once per volume or bundle (a worker running bundles in several threads holds one
        # instance, so one model, per thread).
        from kseg.predict import inference_model

        self.model = inference_model(kseg.load_model(self.model_path, compile=False),
                                     self.inference)

    def process(self, volume):
        from kseg.predict import predict_path, write_predictions

        if isinstance(volume, str):
            output = prediction_file(volume, self.output_dir, self.format)
        else:
            volume, output = volume[0], pathlib.Path(volume[1])
        if output.exists():  # finished by an earlier run, or by a retried bundle
            self.skipped.inc()
            yield str(output)
            return
        predictions = predict_path(self.model, self.inference, volume)
        if len(predictions) != 1:
            raise LayoutError(volume, f"holds {len(predictions)} images; expected one volume")
        # Named after the volume's path, so that its output is known before predicting.
        prediction = dataclasses.replace(predictions[0], name=_volume_name(pathlib.Path(volume)))
        # a speculative copy of this bundle may have written the same prediction meanwhile
        write_predictions([prediction], output.parent, self.format, labels=self.labels,
                          overwrite=True)
        self.written.inc()
        yield str(output)

    def __repr__(self) -> str:  # names the step in Beam's errors and monitoring
        return f"PredictVolumeFn({self.model_path})"


def predict_volumes(
    model_path: os.PathLike | str,
    inference: Mapping,
    inputs: Sequence[os.PathLike | str],
    output_dir: os.PathLike | str,
    *,
    labels: Mapping[str, int],
    format: str = "nifti",
    beam_runner=None,
    beam_options=None,
) -> BatchPrediction:
    """Predict every volume of ``inputs`` with a Beam pipeline; skip finished ones.

    Args:
        model_path: the saved ``.keras`` model (a run's ``best.keras``).
        inference: the run config's ``"inference"`` section (how the model's inputs were
            made in training: window, image size or spacing and ROI, classes).
        inputs: NIfTI files, DICOM series folders, or folders of NIfTI files (a list; one
            path alone is one input).
        output_dir: where the prediction files go (created if missing; never an input
            folder).
        labels: ``{name: label value}`` (config.json's ``"labels"``): segment / ROI names.
        format: ``"nifti"``, ``"dicom-seg"`` or ``"rtstruct"`` (one file per volume).
        beam_runner: a Beam runner (name or instance); ``None``: Beam's default, the
            DirectRunner unless ``beam_options`` names another.
        beam_options: ``apache_beam.options.pipeline_options.PipelineOptions``, e.g.
            ``PipelineOptions(direct_running_mode="multi_processing",
            direct_num_workers=2)`` or Dataflow's ``--runner=DataflowRunner --project ...``.

    Returns:
        The files written now and those skipped because they existed.

    Raises:
        LayoutError: an input that is neither a NIfTI file nor a folder, a NIfTI file
            for ``dicom-seg`` or ``rtstruct``, two volumes of one name in one folder, an
            output folder that holds an input file under its prediction's
            name (the NIfTI files' own folder) or lies in a DICOM series folder.
        UnreadableFileError: an invalid ``inference`` section.
        Whatever the runner raises when a worker fails (on the DirectRunner a
        ``RuntimeError`` quoting the worker's kseg error); the volumes finished before the
        failure keep their files and are skipped by the next run.
    """
    from kseg.predict import checked_inference

    inference = checked_inference(inference)
    prediction_file("volume.nii.gz", output_dir, format)  # refuses an unknown format first
    volumes = _volumes(inputs)
    # a NIfTI file cannot take DICOM-SEG or RTSTRUCT: said now, as kseg predict says it,
    # not by a worker after the model ran (DICOM folders are read by the workers only)
    from kseg.predict import NIFTI, check_format

    check_format([(v.name, v, NIFTI, None, False) for v in volumes if v.is_file()], format)
    outputs = _check_unique_outputs(volumes, output_dir, format)
    _check_outputs_spare_inputs(volumes, outputs, output_dir)
    done_before = [output.exists() for output in outputs]
    pending = [(str(v), str(o)) for v, o, done in zip(volumes, outputs, done_before, strict=True)
               if not done]  # fmt: skip
    if pending:
        for output in outputs:  # leftovers of writers killed in an earlier run
            remove_stale_temporaries(output)
        _run(model_path, inference, pending, output_dir, labels, format, beam_runner, beam_options)
    missing = [o for o in outputs if not o.exists()]
    if missing:  # a runner that reports success must have written every file
        raise LayoutError(missing[0], f"was not written ({len(missing)} prediction(s) missing)")
    return BatchPrediction(
        written=tuple(o for o, done in zip(outputs, done_before, strict=True) if not done),
        skipped=tuple(o for o, done in zip(outputs, done_before, strict=True) if done),
    )


def _check_outputs_spare_inputs(volumes, outputs, output_dir) -> None:
    """A NIfTI prediction has its volume's file name, so an output folder that is the input
    folder would find every input "already predicted" and skip it; predictions inside a
    DICOM series folder would join the series."""
    from kseg.predict import _refuse_output_inside

    for volume, output in zip(volumes, outputs, strict=True):
        if volume.is_dir():
            _refuse_output_inside(volume, output_dir)
        elif os.path.realpath(output) == os.path.realpath(volume):
            raise LayoutError(output, "is an input file; write predictions to another folder")


def _run(model_path, inference, volumes, output_dir, labels, format, runner, options):
    # flags=[]: never parse this process's own command line as pipeline options.
    options = options if options is not None else PipelineOptions(flags=[])
    predict = PredictVolumeFn(model_path, inference, output_dir, labels=labels, format=format)
    with beam.Pipeline(runner=runner, options=options) as pipeline:
        _ = pipeline | "Volumes" >> beam.Create(volumes) | "Predict" >> beam.ParDo(predict)


def predict_run_volumes(
    run_dir: os.PathLike | str,
    inputs: Sequence[os.PathLike | str],
    output_dir: os.PathLike | str,
    *,
    format: str = "nifti",
    beam_runner=None,
    beam_options=None,
) -> BatchPrediction:
    """:func:`predict_volumes` with a training run's ``best.keras``, inference and labels.

    Raises:
        LayoutError, UnreadableFileError: as :func:`kseg.predict.read_run` (a folder without
            config.json / best.keras, an invalid config), or as :func:`predict_volumes`.
    """
    from kseg.predict import read_run

    model_path, config = read_run(run_dir)
    return predict_volumes(
        model_path,
        config["inference"],
        inputs,
        output_dir,
        labels=config["labels"],
        format=format,
        beam_runner=beam_runner,
        beam_options=beam_options,
    )
