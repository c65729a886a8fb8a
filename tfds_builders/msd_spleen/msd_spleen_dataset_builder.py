"""Medical Segmentation Decathlon Task09 (spleen CT) as a TFDS dataset.

One example per volume, read with :func:`kseg.io.read_nifti` one case at a time; labelled
cases split by patient into ``fold0`` .. ``fold{k-1}``, the unlabelled ``imagesTs`` cases in
the split ``unlabeled``. Config ``raw`` stores the volumes as shipped, ``preprocessed`` after
the MSD spleen chain of :mod:`kseg.data.preprocess3d` (see ``README.md`` beside this file).
A labelled case without a spleen voxel is refused with a :class:`kseg.errors.MaskError`
naming the patient and the label file; each fold's foreground statistics are saved in
``builder.info.metadata["foreground"]`` (:mod:`tfds_builders._foreground`).

Reference:
    Antonelli et al., "The Medical Segmentation Decathlon", Nature Communications 13, 4128
    (2022); Simpson et al., "A large annotated medical image dataset for the development and
    evaluation of segmentation algorithms", arXiv:1902.09063 (2019).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import tensorflow_datasets as tfds

from kseg.data.examples import fold_splits, to_image_dtype
from kseg.data.preprocess3d import (
    MSD_SPLEEN_ORIENTATION,
    MSD_SPLEEN_SPACING,
    MSD_SPLEEN_WINDOW,
    preprocess_volume,
)
from kseg.errors import AlignmentError, MaskError, UnreadableFileError
from kseg.io import read_nifti, read_nifti_labels
from tfds_builders._foreground import ForegroundTally
from tfds_builders._manual import manual_folder
from tfds_builders.msd_spleen.layout import (
    EXPECTED_LAYOUT,
    Case,
    cases_from_dataset_json,
    task_folder,
)

UNLABELED_SPLIT = "unlabeled"
# Image and label affines of one case, each stored as float32 in its header, agree to far
# better than this (mm); a larger difference means the files belong to different grids.
_SAME_GRID_MM = 1e-3
SPLEEN = 1


@dataclasses.dataclass(eq=False)
class MsdSpleenConfig(tfds.core.BuilderConfig):
    """How to store the volumes and split the patients.

    Attributes:
        preprocess: ``False`` stores the volumes as shipped; ``True`` runs
            :func:`kseg.data.preprocess3d.preprocess_volume` with the fields below.
        orientation: axis codes in ``(x, y, z)`` order the preprocessed volumes share.
        target_spacing: preprocessed voxel size in mm, in kseg's ``(z, y, x)`` order:
            ``(2.0, 1.5, 1.5)`` is the literature's 1.5 x 1.5 x 2.0 mm in ``(x, y, z)``.
        crop_threshold: HU above which a voxel counts as foreground for the crop (the
            lower bound of the -57..164 HU window).
        num_folds: patient-level folds of the labelled cases, splits ``fold0`` ...
        split_seed: seed of :func:`kseg.data.splits.assign_folds`.
    """

    preprocess: bool = False
    orientation: str = MSD_SPLEEN_ORIENTATION
    target_spacing: tuple[float, float, float] = MSD_SPLEEN_SPACING
    crop_threshold: float = MSD_SPLEEN_WINDOW[0]
    num_folds: int = 5
    split_seed: int = 0


class Builder(tfds.core.GeneratorBasedBuilder):
    """MSD Task09 spleen CT volumes with spleen labels, one example per volume.

    Write a config with other folds or another spacing by giving the builder your own
    instance, e.g. ``Builder(config=dataclasses.replace(Builder.builder_configs
    ["preprocessed"], name="preprocessed_10fold", num_folds=10))``.
    """

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release."}
    MANUAL_DOWNLOAD_INSTRUCTIONS = f"""\
Download Task09_Spleen.tar from the Medical Segmentation Decathlon,
http://medicaldecathlon.com (licence CC BY-SA 4.0; cite Antonelli et al. 2022), and extract
it into the manual folder (by default ~/tensorflow_datasets/downloads/manual/, or pass
tfds.download.DownloadConfig(manual_dir=...)), so that it holds:

{EXPECTED_LAYOUT}

The macOS "._*" files inside the archive are ignored. The files are read, never modified."""

    BUILDER_CONFIGS = [
        MsdSpleenConfig(
            name="raw",
            description="Volumes as shipped: int16 HU and uint8 labels on the stored grid.",
            preprocess=False,
        ),
        MsdSpleenConfig(
            name="preprocessed",
            description=(
                "Reoriented to RAS, resampled to 1.5 x 1.5 x 2.0 mm (x, y, z) = (2.0, 1.5, "
                "1.5) mm (z, y, x), cropped to the voxels above -57 HU; image kept in int16 "
                "HU, window -57..164 HU to [0, 1] when reading."
            ),
            preprocess=True,
        ),
    ]

    def _info(self) -> tfds.core.DatasetInfo:
        volume = (None, None, None)
        return self.dataset_info_from_configs(
            description=(
                "Medical Segmentation Decathlon Task09: portal venous phase CT of patients "
                "followed for liver metastases, spleen labelled. One example per volume, "
                "arrays (z, y, x). Splits fold0.. are patient-level folds of the labelled "
                "cases; 'unlabeled' holds imagesTs (label of shape (0, 0, 0))."
            ),
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Tensor(
                        shape=volume, dtype=np.int16, encoding=tfds.features.Encoding.ZLIB
                    ),
                    "label": tfds.features.Tensor(
                        shape=volume, dtype=np.uint8, encoding=tfds.features.Encoding.ZLIB
                    ),
                    "patient_id": tfds.features.Text(),
                    "spacing": tfds.features.Tensor(shape=(3,), dtype=np.float32),
                    "affine": tfds.features.Tensor(shape=(4, 4), dtype=np.float64),
                    "original_shape": tfds.features.Tensor(shape=(3,), dtype=np.int32),
                    "original_affine": tfds.features.Tensor(shape=(4, 4), dtype=np.float64),
                }
            ),
            supervised_keys=("image", "label"),
            homepage="http://medicaldecathlon.com",
            metadata=tfds.core.MetadataDict(),
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        config = self.builder_config
        task_dir = task_folder(manual_folder(dl_manager, self.MANUAL_DOWNLOAD_INSTRUCTIONS))
        labelled, unlabelled = cases_from_dataset_json(task_dir)
        folds = fold_splits(
            [case.patient_id for case in labelled],
            config.num_folds,
            seed=config.split_seed,
            where=str(task_dir / "dataset.json"),
        )
        # Every Task09 training case shows a spleen. The unlabeled split has no masks to
        # check and gets no foreground entry.
        tally = ForegroundTally({SPLEEN: "spleen"}, required=[SPLEEN],
                                metadata=self.info.metadata)
        by_patient = {case.patient_id: case for case in labelled}
        splits = {
            name: self._generate_examples([by_patient[p] for p in members], name, tally)
            for name, members in folds.items()
        }
        if unlabelled:  # a copy without imagesTs has no unlabeled split, not an empty one
            splits[UNLABELED_SPLIT] = self._generate_examples(unlabelled, UNLABELED_SPLIT, tally)
        return splits

    def _generate_examples(self, cases, split: str, tally: ForegroundTally):
        for case in cases:
            example = self._example(case)
            if case.label is not None:
                tally.check(split, case.patient_id, example["label"], mask_source=case.label)
            yield case.patient_id, example

    def _example(self, case: Case) -> dict:
        """One case; only this case's volumes are in memory."""
        config = self.builder_config
        image = read_nifti(case.image, patient_id=case.patient_id)
        label = None
        if case.label is not None:
            label = read_nifti_labels(case.label, patient_id=case.patient_id)
            if label.shape != image.shape:
                raise AlignmentError(
                    case.label, f"label shape {label.shape} differs from image {image.shape}"
                )
            if not np.allclose(label.affine, image.affine, rtol=0.0, atol=_SAME_GRID_MM):
                raise AlignmentError(
                    case.label,
                    f"label affine differs from the image's ({case.image}):\n"
                    f"{label.affine}\nvs\n{image.affine}",
                )
            _check_binary(label.array, case.label)
        original_affine, original_shape = image.affine, image.shape
        if config.preprocess:
            prepared = preprocess_volume(
                image,
                label,
                orientation=config.orientation,
                spacing=config.target_spacing,
                crop_threshold=config.crop_threshold,
            )
            image, label = prepared.image, prepared.label
        return {
            "image": to_image_dtype(
                image.array, np.int16, source=case.image, error=UnreadableFileError
            ),
            "label": np.zeros((0, 0, 0), np.uint8) if label is None else label.array,
            "patient_id": case.patient_id,
            "spacing": np.asarray(image.spacing, dtype=np.float32),
            "affine": image.affine,
            "original_shape": np.asarray(original_shape, dtype=np.int32),
            "original_affine": original_affine,
        }


def _check_binary(labels: np.ndarray, path) -> None:
    """MSD spleen labels are 0 (background) and 1 (spleen); anything else is refused."""
    values = np.unique(labels)
    if not np.isin(values, (0, 1)).all():
        raise MaskError(path, f"spleen labels must be 0 or 1, found values {values.tolist()}")
