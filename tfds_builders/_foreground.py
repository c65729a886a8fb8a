"""Foreground bookkeeping shared by the builders: no silent empty masks.

A labelled dataset whose stored masks came out empty trains a model that learns nothing and
scores Dice 1.0 on every empty-vs-empty case (that happened with CHAOS' 1-bit PNGs read as
0/255). So every builder passes each patient's whole label volume through
:class:`ForegroundTally` before writing its examples:

- a label that every patient of the dataset has (``required``) but this patient's volume
  lacks is a :class:`kseg.errors.MaskError` naming the patient and the mask folder;
- a label whose absence is legal (``optional``) gives one :class:`EmptyLabelWarning` per
  patient;
- per split, the counts (patients, slices, slices with foreground, voxels per label, the
  patients without each label) are kept and written into the dataset's
  ``builder.info.metadata["foreground"]``, so they are visible next to the data.

Under Beam generation (:mod:`tfds_builders._beam`) each patient is checked by a tally of its
own in a worker, which collects its warnings instead of emitting them; the driver adds the
patients' counts with :meth:`ForegroundTally.add_counts` in the plain path's order and emits
their warnings, so both paths give the same statistics and warnings.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping, Sequence

import numpy as np

from kseg.errors import MaskError

__all__ = ["EmptyLabelWarning", "ForegroundTally"]


class EmptyLabelWarning(UserWarning):
    """A patient's whole mask volume has no voxel of a label that may legally be absent."""


class ForegroundTally:
    """Checks each patient's label volume and counts foreground per split.

    Args:
        label_names: label value -> name, background excluded (e.g. ``{1: "liver"}``).
        required: labels every patient of the dataset has; a patient without one is an
            error. Labels of ``label_names`` not listed here only warn when absent.
        metadata: the builder's ``info.metadata`` (a ``tfds.core.MetadataDict``); the
            statistics are stored under its ``"foreground"`` key as they grow, so they are
            saved with the dataset.
        collect_warnings: keep the EmptyLabelWarning messages in ``collected_warnings``
            instead of emitting them (a Beam worker hands them to the driver).

    Example:
        >>> tally = ForegroundTally({1: "liver"}, required=[1], metadata={})
        >>> tally.check("fold0", "7", np.array([[[0, 1]]]), mask_source="CT/7/Ground")
    """

    def __init__(
        self,
        label_names: Mapping[int, str],
        *,
        required: Sequence[int],
        metadata: dict,
        collect_warnings: bool = False,
    ):
        self.label_names = {int(k): str(v) for k, v in label_names.items()}
        if 0 in self.label_names:
            # Background is in every volume; counting it would hide an empty mask.
            raise ValueError("label_names must leave out background (0)")
        unknown = sorted(set(required) - set(self.label_names))
        if unknown:
            raise ValueError(f"required labels {unknown} are not in label_names")
        self.required = frozenset(int(label) for label in required)
        self._splits: dict[str, dict] = metadata.setdefault("foreground", {})
        self.collect_warnings = collect_warnings
        self.collected_warnings: list[str] = []

    def check(
        self,
        split: str,
        patient: str,
        labels: np.ndarray,
        *,
        mask_source: os.PathLike | str,
    ) -> None:
        """Check one patient's whole label volume (slices first) and count it in ``split``.

        Args:
            split: the split the patient's examples go to.
            patient: the patient id, named in errors and in ``patients_without_label``.
            labels: the label map as written: ``(slices, rows, columns)``, or one 2D
                ``(rows, columns)`` map (a radiograph), which counts as one slice.
            mask_source: the mask file or folder the labels were read from, named in errors.

        Raises:
            ValueError: ``labels`` is neither 2D nor 3D.
            MaskError: a required label has no voxel; the message names the patient and
                ``mask_source`` and lists the values that were found.

        Warns:
            EmptyLabelWarning: an optional label has no voxel.
        """
        labels = np.asarray(labels)
        if labels.ndim not in (2, 3):
            raise ValueError(
                f"{os.fspath(mask_source)}: patient {patient}: expected a 2D or 3D label map, "
                f"got shape {labels.shape}"
            )
        values, counts = np.unique(labels, return_counts=True)
        voxels = dict(zip(values.tolist(), counts.tolist(), strict=True))
        missing = [label for label in self.label_names if voxels.get(label, 0) == 0]
        missing_required = [label for label in missing if label in self.required]
        if missing_required:
            names = ", ".join(f"{self.label_names[m]} ({m})" for m in missing_required)
            raise MaskError(
                mask_source,
                f"patient {patient}: the whole mask volume has no {names}, which every "
                f"patient of this dataset has; values found: {sorted(voxels)}. The masks "
                "were probably read with the wrong encoding or belong to another series.",
            )
        for label in missing:
            message = (
                f"{os.fspath(mask_source)}: patient {patient} has no "
                f"{self.label_names[label]} ({label}) voxel"
            )
            if self.collect_warnings:
                self.collected_warnings.append(message)
            else:
                warnings.warn(EmptyLabelWarning(message), stacklevel=2)
        self._count(split, patient, labels, voxels, missing)

    def split_counts(self, split: str) -> dict | None:
        """The counts of ``split`` so far (JSON-safe), None when no patient was counted."""
        return self._splits.get(split)

    def add_counts(self, split: str, counts: Mapping) -> None:
        """Add counts of ``split`` made by another tally of the same labels (one patient's,
        in a Beam worker); lists of patients are extended in the order added."""
        stats = self._split_stats(split)
        for key in ("patients", "slices", "slices_with_foreground"):
            stats[key] += int(counts[key])
        for name in self.label_names.values():
            stats["voxels_per_label"][name] += int(counts["voxels_per_label"][name])
            stats["patients_without_label"][name].extend(
                counts["patients_without_label"][name]
            )

    def _split_stats(self, split: str) -> dict:
        return self._splits.setdefault(
            split,
            {
                "patients": 0,
                "slices": 0,
                "slices_with_foreground": 0,
                "voxels_per_label": {name: 0 for name in self.label_names.values()},
                "patients_without_label": {name: [] for name in self.label_names.values()},
            },
        )

    def _count(self, split, patient, labels, voxels, missing) -> None:
        stats = self._split_stats(split)
        stats["patients"] += 1
        slices = labels if labels.ndim == 3 else labels[np.newaxis]
        # Explicit sizes: reshape(-1) cannot infer a row length when there are no slices.
        planes = slices.reshape(slices.shape[0], slices.shape[1] * slices.shape[2])
        stats["slices"] += int(planes.shape[0])
        stats["slices_with_foreground"] += int(np.count_nonzero(planes.any(axis=1)))
        for label, name in self.label_names.items():
            stats["voxels_per_label"][name] += int(voxels.get(label, 0))
        for label in missing:
            stats["patients_without_label"][self.label_names[label]].append(str(patient))
