"""LCTSC (AAPM 2017 Lung CT Segmentation Challenge, TCIA) as a TFDS dataset.

One example per axial CT slice, slices in ImagePositionPatient order, with the organs of
the case's RT Structure Set rasterised onto the slice (:mod:`kseg.io.rtstruct`). Files are
found by their DICOM headers, not by folder names: each CT series is paired with the
RTSTRUCT that references it. Patients are split by the challenge's own partition where the
ids carry it (``LCTSC-Test-*`` in the split ``challenge_test``) and the training patients
into seeded patient-level folds ``fold0`` .. ``fold{k-1}``, optionally stratified by
PatientSex and the fraction of slices with an empty mask. The ``npz_*`` configs read the
pre-converted layout instead (a DICOM folder and a 3D ``.npz`` mask per case), aligning
each mask to its CT by evidence (:mod:`kseg.io.npz`). Every LCTSC patient has all five
organs: a patient whose whole mask lacks one of the config's classes is refused with a
:class:`kseg.errors.MaskError` naming the patient and the mask file, and each split's
foreground statistics are saved in ``builder.info.metadata["foreground"]``
(:mod:`tfds_builders._foreground`). See ``README.md`` beside this file.

Example:
    >>> train = tfds.load("lctsc/organs", split="fold1+fold2+fold3+fold4")  # doctest: +SKIP
    >>> test = tfds.load("lctsc/organs", split="challenge_test")  # doctest: +SKIP

Reference:
    Yang et al., "Autosegmentation for thoracic radiation treatment planning: A grand
    challenge at AAPM 2017", Medical Physics 45(10), 4568-4581 (2018).
"""

from __future__ import annotations

import dataclasses
import functools
import os
import re
import tempfile

import numpy as np
import tensorflow_datasets as tfds
from tqdm.auto import tqdm

from kseg.data.examples import fold_splits, slice_examples, slice_features_dict, to_image_dtype
from kseg.errors import LayoutError
from kseg.io import align_mask_to_volume, read_dicom_series
from tfds_builders._beam import BeamOverPatients
from tfds_builders._foreground import ForegroundTally
from tfds_builders._manual import manual_folder
from tfds_builders.lctsc.layout import (
    CLASS_NAMES,
    NPZ_LAYOUT,
    ORGAN_TO_CLASS,
    TCIA_LAYOUT,
    Case,
    npz_cases,
    npz_organ_ids,
    organ_label_map,
    tcia_cases,
)

CHALLENGE_TEST_SPLIT = "challenge_test"
_TEST_PATIENT = re.compile(r"^LCTSC-Test-S\d+-\d+$")


@dataclasses.dataclass(eq=False)
class LctscConfig(tfds.core.BuilderConfig):
    """Which classes to write, which layout to read and how to split the patients.

    Attributes:
        classes: ``"organs"`` (0 background, 1 lung_left, 2 lung_right, 3 heart,
            4 esophagus, 5 spinal_cord), ``"organs_merged_lungs"`` (0 background, 1 lungs,
            2 heart, 3 esophagus, 4 spinal_cord) or ``"lungs"`` (binary).
        layout: ``"tcia"`` (the TCIA download: CT series and RTSTRUCT files) or ``"npz"``
            (the pre-converted layout: a DICOM folder and an ``.npz`` mask per case).
        num_folds: patient-level folds of the training patients, splits ``fold0`` ...
        split_seed: seed of :func:`kseg.data.splits.assign_folds`.
        stratify: deal each stratum ``(PatientSex, binned fraction of slices whose mask is
            empty)`` evenly over the folds.
        empty_fraction_bins: bin edges of the empty-slice fraction for ``stratify``.
        roi_aliases: extra ``(ROIName, canonical name)`` pairs for spellings the built-in
            table does not know (:func:`kseg.io.rtstruct.canonical_roi_name`).
    """

    classes: str = "organs"
    layout: str = "tcia"
    num_folds: int = 5
    split_seed: int = 0
    stratify: bool = False
    empty_fraction_bins: tuple[float, ...] = (0.2, 0.4)
    roi_aliases: tuple[tuple[str, str], ...] = ()


@dataclasses.dataclass(frozen=True)
class _CaseArrays:
    image: np.ndarray  # as read_dicom_series returns it
    labels: np.ndarray  # the config's classes, on the CT grid
    spacing: np.ndarray


class _ReadCases:
    """Cases read for stratification, kept in a temporary folder until their split is
    written (holding all training volumes in memory would not fit)."""

    def __init__(self):
        self._folder = None
        self._files: dict[str, str] = {}

    def keep(self, patient_id: str, arrays: _CaseArrays, *, checked_labels: np.ndarray):
        """Keep a patient's arrays and the mask its foreground check is to see."""
        if self._folder is None:
            # Removed when the builder's split generators are done with this object.
            self._folder = tempfile.TemporaryDirectory(prefix="lctsc-cases-")
        # Numbered files: patient ids need not be valid file names.
        path = os.path.join(self._folder.name, f"case{len(self._files)}.npz")
        np.savez(path, checked_labels=checked_labels, **dataclasses.asdict(arrays))
        self._files[patient_id] = path

    def take(self, patient_id: str) -> tuple[_CaseArrays, np.ndarray] | None:
        """``(arrays, checked_labels)`` of a kept patient, removed from the folder; None
        for a patient not kept."""
        path = self._files.pop(patient_id, None)
        if path is None:
            return None
        with np.load(path) as stored:
            arrays = _CaseArrays(stored["image"], stored["labels"], stored["spacing"])
            checked_labels = stored["checked_labels"]
        os.remove(path)
        return arrays, checked_labels


class Builder(BeamOverPatients, tfds.core.GeneratorBasedBuilder):
    """LCTSC: thoracic CT slices with lung, heart, esophagus and spinal-cord masks.

    With a Beam runner or Beam options in the download config, each split is generated by
    a Beam pipeline over its patients (:mod:`tfds_builders._beam`); the examples and the
    foreground statistics are the same either way. Stratified configs still read every
    training mask on the driver first (the folds depend on them); under Beam the workers
    then read each case again rather than share the driver's temporary copies.

    Write a config of your own by giving the builder an instance, e.g.
    ``Builder(config=dataclasses.replace(Builder.builder_configs["lungs"],
    name="lungs_10fold", num_folds=10))``.
    """

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release."}
    MANUAL_DOWNLOAD_INSTRUCTIONS = f"""\
Download the LCTSC collection from The Cancer Imaging Archive
(https://www.cancerimagingarchive.net/collection/lctsc/, doi:10.7937/K9/TCIA.2017.3r3fvz08):
60 thoracic CT series with one RT Structure Set each (36 LCTSC-Train-*, 24 LCTSC-Test-*
patients from three institutions). Open the collection's .tcia manifest with the NBIA Data
Retriever and download into the manual folder (by default
~/tensorflow_datasets/downloads/manual/, or pass
tfds.download.DownloadConfig(manual_dir=...)). Either directory-naming option works; the
descriptive one gives:

{TCIA_LAYOUT}

For the npz_* configs, the manual folder holds the pre-converted layout instead:

{NPZ_LAYOUT}

The files are read, never modified. Cite the data DOI and Yang et al., Med Phys 2018."""

    BUILDER_CONFIGS = [
        LctscConfig(
            name="organs",
            description="Five organs: left lung, right lung, heart, esophagus, spinal cord.",
        ),
        LctscConfig(
            name="organs_merged_lungs",
            description="Four organs, both lungs as one class.",
            classes="organs_merged_lungs",
        ),
        LctscConfig(name="lungs", description="Both lungs, binary mask.", classes="lungs"),
        LctscConfig(
            name="lungs_stratified",
            description="Both lungs, binary; folds stratified by PatientSex and the fraction "
            "of slices without lung.",
            classes="lungs",
            stratify=True,
        ),
        LctscConfig(
            name="npz_lungs",
            description="Pre-converted layout (DICOM folder + npz mask per case), both lungs.",
            classes="lungs",
            layout="npz",
        ),
    ]

    def _info(self) -> tfds.core.DatasetInfo:
        config = self.builder_config
        if config.classes not in CLASS_NAMES:
            raise ValueError(
                f"config {config.name!r}: classes must be one of {sorted(CLASS_NAMES)}, "
                f"got {config.classes!r}"
            )
        if config.layout not in ("tcia", "npz"):
            raise ValueError(
                f"config {config.name!r}: layout must be 'tcia' or 'npz', got {config.layout!r}"
            )
        return self.dataset_info_from_configs(
            description=(
                "LCTSC (AAPM 2017 Lung CT Segmentation Challenge) thoracic CT, one example per "
                "axial slice in ImagePositionPatient order; images in Hounsfield units, masks "
                f"with classes {', '.join(CLASS_NAMES[config.classes])}. Splits fold0.. are "
                "patient-level folds of the training patients; challenge_test holds the "
                "challenge's test patients when the patient ids carry the partition."
            ),
            features=slice_features_dict(np.int16, patient_sex=tfds.features.Text()),
            supervised_keys=("image", "mask"),
            homepage="https://www.cancerimagingarchive.net/collection/lctsc/",
            metadata=tfds.core.MetadataDict(class_names=list(CLASS_NAMES[config.classes])),
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        config = self.builder_config
        manual_dir = manual_folder(dl_manager, self.MANUAL_DOWNLOAD_INSTRUCTIONS)
        if not manual_dir.is_dir():
            raise LayoutError(manual_dir, "the manual download folder does not exist")
        cases = tcia_cases(manual_dir) if config.layout == "tcia" else npz_cases(manual_dir)
        test_cases = [case for case in cases if _TEST_PATIENT.match(case.patient_id)]
        train_cases = [case for case in cases if not _TEST_PATIENT.match(case.patient_id)]
        # Stratifying needs every training mask before the folds exist; each case read for
        # it is kept, so no volume is read and rasterised twice (on one machine: Beam
        # workers cannot reach the driver's temporary folder).
        read_cases = None if self.generating_with_beam else _ReadCases()
        strata = None
        if config.stratify:
            strata = {}
            for case in tqdm(train_cases, desc="LCTSC strata", unit="patient"):
                checked = []
                arrays = read_case(config, case, check=checked.append)
                if read_cases is not None:
                    read_cases.keep(case.patient_id, arrays, checked_labels=checked[0])
                strata[case.patient_id] = fold_stratum(
                    case.patient_sex, _empty_fraction(arrays.labels), config.empty_fraction_bins
                )
        # A folder of the challenge's test patients alone (its test set downloaded apart,
        # scored with kseg evaluate --input) has no folds; training patients are dealt.
        folds = {} if test_cases and not train_cases else fold_splits(
            [case.patient_id for case in train_cases],
            config.num_folds,
            seed=config.split_seed,
            strata=strata,
            where=f"{manual_dir}: training patients",
        )
        # Every LCTSC patient has all five organs, so an organ missing from a patient's
        # whole volume is an error, whatever the classes.
        class_names = CLASS_NAMES[config.classes]
        tally = ForegroundTally(
            dict(enumerate(class_names[1:], start=1)),
            required=range(1, len(class_names)),
            metadata=self.info.metadata,
        )
        by_patient = {case.patient_id: case for case in train_cases}
        splits = {
            name: self._generate_examples([by_patient[p] for p in members], name, tally,
                                          read_cases)
            for name, members in folds.items()
        }
        if test_cases:
            splits[CHALLENGE_TEST_SPLIT] = self._generate_examples(
                test_cases, CHALLENGE_TEST_SPLIT, tally, read_cases
            )
        return splits

    def _generate_examples(self, cases, split: str, tally: ForegroundTally, read_cases):
        return self._examples_by_patient(
            split,
            cases,
            functools.partial(case_examples, self.builder_config, read_cases),
            tally,
        )


def case_examples(
    config: LctscConfig,
    read_cases: _ReadCases | None,
    case: Case,
    split: str,
    tally: ForegroundTally,
):
    """One patient's slices; only this patient's volume is held in memory. Its whole mask
    is checked (and counted in ``split``) before any slice is yielded. A case kept in
    ``read_cases`` while stratifying is taken from there instead of being read again."""
    check = functools.partial(tally.check, split, case.patient_id, mask_source=case.mask_file)
    kept = None if read_cases is None else read_cases.take(case.patient_id)
    if kept is None:
        arrays = read_case(config, case, check=check)
    else:
        arrays, checked_labels = kept
        check(checked_labels)
    images = to_image_dtype(arrays.image, np.int16, source=case.ct_files[0])
    yield from slice_examples(case.patient_id, images, arrays.labels, arrays.spacing,
                              patient_sex=case.patient_sex)


def read_case(config: LctscConfig, case: Case, *, check) -> _CaseArrays:
    """The case's CT volume and its mask in the config's classes.

    ``check`` sees the whole mask in the config's classes before it is used; for the npz
    layout that is the mask as stored, before alignment, so an empty mask is reported as
    empty rather than as lacking evidence for an orientation (flips move voxels and slices
    but change no count).
    """
    lookup = ORGAN_TO_CLASS[config.classes]
    volume = read_dicom_series(
        list(case.ct_files), series_uid=case.series_uid, patient_id=case.patient_id
    )
    if config.layout == "tcia":
        organs = organ_label_map(case.mask_file, volume, aliases=dict(config.roi_aliases))
        labels = lookup[organs]
        check(labels)
    else:
        stored = npz_organ_ids(case.mask_file, config.classes)
        check(lookup[stored])
        labels = lookup[align_mask_to_volume(stored, volume, source=case.mask_file).mask]
    return _CaseArrays(volume.array, labels, np.asarray(volume.plane_spacing))


def fold_stratum(sex: str, empty_fraction: float, bins) -> tuple[str, int]:
    """The stratum of a patient for stratified folds: ``(sex, bin of the empty fraction)``.

    Args:
        sex: PatientSex (``"M"``, ``"F"``, ``"O"`` or ``""``).
        empty_fraction: fraction of the patient's slices whose mask is empty.
        bins: increasing bin edges; the bin is the number of edges at or below the fraction.

    Example:
        >>> fold_stratum("F", 0.25, (0.2, 0.4))
        ('F', 1)
    """
    edges = np.asarray(bins, dtype=np.float64)
    if edges.ndim != 1 or np.any(np.diff(edges) <= 0):
        raise ValueError(f"empty_fraction_bins must be increasing edges, got {tuple(bins)}")
    return str(sex), int(np.searchsorted(edges, empty_fraction, side="right"))


def _empty_fraction(labels: np.ndarray) -> float:
    return float(np.mean(~labels.reshape(labels.shape[0], -1).any(axis=1)))
