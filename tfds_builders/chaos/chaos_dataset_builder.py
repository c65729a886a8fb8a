"""CHAOS (Combined CT-MR Healthy Abdominal Organ Segmentation) as a TFDS dataset.

One example per axial slice, slices in ImagePositionPatient order, masks paired with
slices by the challenge organisers' rule (see ``README.md`` beside this file), one TFDS
split per patient-level fold. Masks are read by what each file holds
(:func:`kseg.io.read_labels`: the real CT Ground files are 1-bit PNGs), and every patient's
whole label volume must contain every organ CHAOS annotates in all its patients, so masks
read with the wrong encoding fail loudly instead of training on empty labels; the counts
per split are in ``builder.info.metadata["foreground"]``.

Reference:
    Kavur et al., "CHAOS Challenge - combined (CT-MR) healthy abdominal organ
    segmentation", Medical Image Analysis 69, 101950 (2021).
"""

from __future__ import annotations

import dataclasses
import warnings

import tensorflow_datasets as tfds
from etils import epath

from kseg.data.examples import fold_splits, slice_examples, slice_features_dict, to_image_dtype
from kseg.errors import LayoutError
from kseg.io import SkippedFileWarning, read_dicom_series, read_mask_stack
from tfds_builders._foreground import ForegroundTally
from tfds_builders._manual import manual_folder
from tfds_builders.chaos.layout import (
    EXPECTED_LAYOUT,
    IMAGE_DTYPES,
    LABEL_NAMES,
    MASK_RULES,
    PATIENT_FOLDER,
    masks_in_array_order,
)


@dataclasses.dataclass(eq=False)
class ChaosConfig(tfds.core.BuilderConfig):
    """Which CHAOS series to read and how to split its patients.

    Attributes:
        modality: ``"CT"`` (liver, labels 0/1) or ``"MR"`` (labels 0 background, 1 liver,
            2 right kidney, 3 left kidney, 4 spleen).
        image_folder: folder of the series' DICOM files inside a patient folder.
        mask_folder: folder of its Ground masks inside a patient folder.
        num_folds: number of patient-level folds, written as splits ``fold0`` ..
        split_seed: seed of :func:`kseg.data.splits.assign_folds`.
    """

    modality: str = "CT"
    image_folder: str = "DICOM_anon"
    mask_folder: str = "Ground"
    num_folds: int = 5
    split_seed: int = 0


class Builder(tfds.core.GeneratorBasedBuilder):
    """CHAOS training sets: axial slices with liver (CT) or four-organ (MR) masks.

    Write a config with other folds by giving the builder your own instance, e.g.
    ``Builder(config=dataclasses.replace(Builder.builder_configs["ct"], name="ct_10fold",
    num_folds=10))``; splits are then ``fold0`` .. ``fold9``.
    """

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release."}
    MANUAL_DOWNLOAD_INSTRUCTIONS = f"""\
Register at https://chaos.grand-challenge.org and download CHAOS_Train_Sets.zip from the
CHAOS data record on Zenodo (https://zenodo.org/records/3431873; licence CC BY-NC-SA 4.0).
Extract it into the manual folder (by default ~/tensorflow_datasets/downloads/manual/, or
pass tfds.download.DownloadConfig(manual_dir=...)), so that it holds:

{EXPECTED_LAYOUT}

The files are read, never modified."""

    BUILDER_CONFIGS = [
        ChaosConfig(
            name="ct",
            description="Contrast-enhanced CT (portal phase), liver mask.",
            modality="CT",
        ),
        ChaosConfig(
            name="mr_t2spir",
            description="T2-SPIR MR, masks of liver, both kidneys and spleen.",
            modality="MR",
            image_folder="T2SPIR/DICOM_anon",
            mask_folder="T2SPIR/Ground",
        ),
        ChaosConfig(
            name="mr_t1dual_in",
            description="T1-DUAL in-phase MR, masks of liver, both kidneys and spleen.",
            modality="MR",
            image_folder="T1DUAL/DICOM_anon/InPhase",
            mask_folder="T1DUAL/Ground",
        ),
        ChaosConfig(
            name="mr_t1dual_out",
            description="T1-DUAL opposed-phase MR, masks of liver, both kidneys and spleen.",
            modality="MR",
            image_folder="T1DUAL/DICOM_anon/OutPhase",
            mask_folder="T1DUAL/Ground",
        ),
    ]

    def _info(self) -> tfds.core.DatasetInfo:
        config = self.builder_config
        if config.modality not in ("CT", "MR"):
            raise ValueError(f"config {config.name!r}: modality must be 'CT' or 'MR'")
        return self.dataset_info_from_configs(
            description=(
                "CHAOS challenge training data, one example per axial slice in "
                "ImagePositionPatient order. CT images are Hounsfield units, MR images "
                "stored signal. Splits fold0.. are patient-level folds."
            ),
            features=slice_features_dict(IMAGE_DTYPES[config.modality]),
            supervised_keys=("image", "mask"),
            homepage="https://chaos.grand-challenge.org",
            metadata=tfds.core.MetadataDict(
                class_names=["background", *LABEL_NAMES[config.modality].values()]
            ),
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        config = self.builder_config
        manual_dir = manual_folder(dl_manager, self.MANUAL_DOWNLOAD_INSTRUCTIONS)
        modality_dir = manual_dir / "Train_Sets" / config.modality
        if not modality_dir.is_dir():
            raise LayoutError(
                modality_dir,
                f"not found; expected the extracted CHAOS_Train_Sets.zip:\n{EXPECTED_LAYOUT}",
            )
        folders = [p for p in modality_dir.iterdir() if p.is_dir()]
        patients = sorted((p.name for p in folders if PATIENT_FOLDER.match(p.name)), key=int)
        others = sorted(p.name for p in folders if not PATIENT_FOLDER.match(p.name))
        if others:  # a renamed or copied patient would otherwise vanish without a word
            warnings.warn(
                SkippedFileWarning(
                    f"{modality_dir}: skipped {len(others)} folder(s) not named by a patient "
                    f"number: {', '.join(others[:10])}{' ...' if len(others) > 10 else ''}"
                ),
                stacklevel=2,
            )
        if not patients:
            raise LayoutError(
                modality_dir,
                f"holds no patient folders (named by number); expected:\n{EXPECTED_LAYOUT}",
            )
        splits = fold_splits(
            patients, config.num_folds, seed=config.split_seed, where=str(modality_dir)
        )
        label_names = LABEL_NAMES[config.modality]
        tally = ForegroundTally(
            label_names, required=list(label_names), metadata=self.info.metadata
        )
        return {
            name: self._generate_examples(name, [modality_dir / p for p in members], tally)
            for name, members in splits.items()
        }

    def _generate_examples(self, split: str, patient_dirs, tally: ForegroundTally):
        for patient_dir in patient_dirs:
            yield from self._patient_examples(split, patient_dir, tally)

    def _patient_examples(self, split: str, patient_dir: epath.Path, tally: ForegroundTally):
        """One patient's slices; only this patient's volume is held in memory. Its whole
        label volume is checked (and counted in ``split``) before any slice is yielded."""
        config = self.builder_config
        patient = patient_dir.name
        image_dir = patient_dir / config.image_folder
        mask_dir = patient_dir / config.mask_folder
        for folder in (image_dir, mask_dir):
            if not folder.is_dir():
                raise LayoutError(
                    folder, f"not found; each patient folder must hold:\n{EXPECTED_LAYOUT}"
                )
        volume = read_dicom_series(image_dir, patient_id=patient)
        mask_files = masks_in_array_order(volume.source_files, image_dir, mask_dir)
        labels = read_mask_stack(
            mask_files, expected_shape=volume.shape, rule=MASK_RULES[config.modality]
        )
        tally.check(split, patient, labels, mask_source=mask_dir)
        images = to_image_dtype(
            volume.array, IMAGE_DTYPES[config.modality], source=image_dir, modality=config.modality
        )
        yield from slice_examples(patient, images, labels, volume.spacing)
