"""Beam generation for the builders: the same examples from a pipeline over patients.

TFDS generates a split with Apache Beam when the builder's ``_generate_examples`` returns a
``beam.PTransform`` instead of a generator; the pipeline runs on the runner of
``tfds.download.DownloadConfig(beam_runner=..., beam_options=...)`` (the DirectRunner on one
machine; Dataflow, Flink or Spark at scale). Every kseg builder writes its examples patient by
patient (:class:`BeamOverPatients`): without a Beam runner or options in the download config
a split is the plain loop over its patients, exactly as before; with them it is
``beam.Create(patients) | beam.FlatMap(examples of one patient)``, so patients are spread
over the workers, each worker holding one patient's volume at a time.

The foreground checks and statistics (:mod:`tfds_builders._foreground`) hold either way: a
worker checks each patient with a tally of its own before yielding the patient's examples
(a required label missing fails the pipeline with the same :class:`kseg.errors.MaskError`
message), and hands that patient's counts and EmptyLabelWarning messages to a per-split
side output, written as a JSON file into the dataset's folder being generated (a path every
worker can reach, as TFDS' own shard bookkeeping does). When the pipeline has finished, the
driver adds the counts in the patients' plain-path order into
``builder.info.metadata["foreground"]``, emits the warnings, and removes the files.

Warnings of the readers (``SkippedFileWarning``, ``UnevenSliceSpacingWarning``, ...) raised
in a worker stay in that worker's log: ``warnings.catch_warnings`` is not thread-safe, and
Beam workers run bundles in threads.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence

from etils import epath

from tfds_builders._foreground import EmptyLabelWarning, ForegroundTally

__all__ = ["BeamOverPatients", "UnitExamples"]

# One patient (or radiograph) of a split -> its (key, example) pairs, after checking its
# labels with the tally: unit_examples(unit, split, tally). Must be picklable for Beam (a
# module-level function, or functools.partial of one with the builder config).
UnitExamples = Callable[[object, str, ForegroundTally], Iterator[tuple[str, dict]]]

_FOREGROUND = "foreground"
_TALLY_FILE = "kseg-foreground-{split}.beam.json"


class BeamOverPatients:
    """Mixin of a ``tfds.core.GeneratorBasedBuilder`` that writes its splits per patient.

    Put it before the TFDS base class and have ``_generate_examples`` return
    ``self._examples_by_patient(split, units, unit_examples, tally)``: a generator over the
    patients (the plain path) or, when the download config carries a Beam runner or Beam
    options, a ``beam.PTransform`` producing the same examples.
    """

    _beam_tallies: dict[str, tuple[epath.Path, ForegroundTally]] | None = None

    @property
    def generating_with_beam(self) -> bool:
        """True while ``download_and_prepare`` runs with a Beam runner or Beam options."""
        return self._beam_tallies is not None

    def _download_and_prepare(self, dl_manager, download_config):
        beam_requested = (
            download_config.beam_runner is not None or download_config.beam_options is not None
        )
        self._beam_tallies = {} if beam_requested else None
        try:
            super()._download_and_prepare(dl_manager, download_config)
            if beam_requested:
                self._collect_beam_tallies()
        finally:
            if beam_requested:
                for path, _ in self._beam_tallies.values():
                    path.unlink(missing_ok=True)
            self._beam_tallies = None

    def _examples_by_patient(
        self,
        split: str,
        units: Sequence,
        unit_examples: UnitExamples,
        tally: ForegroundTally,
    ):
        """The examples of ``split``: a generator, or a ``beam.PTransform`` under Beam."""
        if self._beam_tallies is None:
            return _examples_in_order(split, units, unit_examples, tally)
        # self.data_path is TFDS' temporary folder of the dataset being generated.
        path = self.data_path / _TALLY_FILE.format(split=split)
        self._beam_tallies[split] = (path, tally)
        return _patient_pipeline(split, list(units), unit_examples, tally, path)

    def _collect_beam_tallies(self) -> None:
        # Every pipeline that finished wrote its split's file: a missing one is an error
        # (FileNotFoundError naming it), never statistics silently left out.
        for split, (path, tally) in self._beam_tallies.items():
            for _, counts, messages in sorted(json.loads(path.read_text())):
                for message in messages:
                    warnings.warn(EmptyLabelWarning(message), stacklevel=2)
                if counts is not None:
                    tally.add_counts(split, counts)


def _examples_in_order(split, units, unit_examples, tally):
    for unit in units:
        yield from unit_examples(unit, split, tally)


def _patient_pipeline(split, units, unit_examples, tally, tally_path):
    # Imported here: apache-beam is the optional extra kseg[beam].
    import apache_beam as beam

    @beam.ptransform_fn
    def generate(pipeline):
        outputs = (
            pipeline
            | "Patients" >> beam.Create(list(enumerate(units)))
            | "Examples"
            >> beam.FlatMap(
                _UnitInWorker(split, unit_examples, tally.label_names, sorted(tally.required))
            ).with_outputs(_FOREGROUND, main="examples")
        )
        _ = (
            outputs[_FOREGROUND]
            | "CollectForeground" >> beam.combiners.ToList()
            | "WriteForeground" >> beam.Map(_write_json, path=str(tally_path))
        )
        return outputs.examples

    return generate()


class _UnitInWorker:
    """``beam.FlatMap`` body: one unit's examples, then its foreground record.

    The record is ``(index, counts or None, warning messages)`` on the ``foreground``
    output; ``index`` is the unit's place in the split, so the driver adds the counts in
    the plain path's order.
    """

    def __init__(self, split: str, unit_examples: UnitExamples, label_names, required):
        self.split = split
        self.unit_examples = unit_examples
        self.label_names = dict(label_names)
        self.required = list(required)

    def __repr__(self) -> str:  # names the step in Beam's errors and monitoring
        return f"examples of each {self.split} patient"

    def __call__(self, indexed_unit) -> Iterable:
        import apache_beam as beam

        index, unit = indexed_unit
        tally = ForegroundTally(
            self.label_names, required=self.required, metadata={}, collect_warnings=True
        )
        yield from self.unit_examples(unit, self.split, tally)
        yield beam.pvalue.TaggedOutput(
            _FOREGROUND, (index, tally.split_counts(self.split), tally.collected_warnings)
        )


def _write_json(records, *, path: str) -> None:
    epath.Path(path).write_text(json.dumps(records))
