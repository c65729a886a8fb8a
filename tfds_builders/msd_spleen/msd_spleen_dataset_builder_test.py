"""Tests of the msd_spleen builder.

``dummy_data/`` was written by ``python -m kseg.phantoms.msd_spleen
tfds_builders/msd_spleen/dummy_data --num-training 5 --num-test 2 --shape 6 16 16
--spacing 5 2 2`` (seed 0): five synthetic labelled cases, one per fold, each label file in
another of the phantom's five encodings, two unlabelled cases, and the macOS ``._*``
companions the real archive carries. Expected values are read from the files with nibabel
directly, or are the phantom's own truth, not kseg's reader's output.
"""

import dataclasses
import gzip
import json

import nibabel as nib
import numpy as np
import pytest
import tensorflow_datasets as tfds
from etils import epath

from kseg.data.splits import fold_names
from kseg.errors import AlignmentError, LayoutError, MaskError, UnreadableFileError
from kseg.geometry import to_original_grid
from kseg.io import NonFiniteVoxelWarning, Volume
from kseg.phantoms.msd_spleen import (
    LABEL_ENCODINGS,
    MSD_SPLEEN_TEST_CASES,
    MSD_SPLEEN_TRAINING_CASES,
    spleen_phantom_case,
    write_msd_spleen,
)
from tfds_builders.msd_spleen import msd_spleen_dataset_builder
from tfds_builders.msd_spleen.layout import Case

NUM_FOLDS = 3
SHAPE = (6, 20, 20)
SPACING = (5.0, 2.5, 2.5)


class MsdSpleenTest(tfds.testing.DatasetBuilderTestCase):
    DATASET_CLASS = msd_spleen_dataset_builder.Builder
    BUILDER_CONFIG_NAMES_TO_TEST = ["raw", "preprocessed"]
    SPLITS = {**{name: 1 for name in fold_names(5)}, "unlabeled": 2}


def _config(name, **changes):
    return dataclasses.replace(
        msd_spleen_dataset_builder.Builder.builder_configs[name],
        name=f"{name}_{NUM_FOLDS}fold",
        num_folds=NUM_FOLDS,
        **changes,
    )


def _prepare(manual_dir, data_dir, config):
    builder = msd_spleen_dataset_builder.Builder(config=config, data_dir=data_dir)
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=str(manual_dir))
    )
    return builder


def _by_split(builder):
    return {s: list(tfds.as_numpy(builder.as_dataset(split=s))) for s in builder.info.splits}


def _nibabel_volume(path):
    """Array (z, y, x) and affine for index (k, j, i), straight from nibabel."""
    image = nib.load(str(path))
    return np.asarray(image.dataobj).transpose(2, 1, 0), image.affine[:, [2, 1, 0, 3]]


@pytest.fixture(scope="module")
def task_dir(tmp_path_factory):
    return write_msd_spleen(
        tmp_path_factory.mktemp("msd_manual"), num_training=6, num_test=2, shape=SHAPE,
        spacing=SPACING, seed=3,
    )


@pytest.fixture(scope="module")
def raw_builder(task_dir, tmp_path_factory):
    return _prepare(task_dir.parent, tmp_path_factory.mktemp("raw"), _config("raw"))


@pytest.fixture(scope="module")
def raw_examples(raw_builder):
    return _by_split(raw_builder)


@pytest.fixture(scope="module")
def preprocessed_examples(task_dir, tmp_path_factory):
    # The Task09_Spleen folder itself is accepted as manual_dir too.
    builder = _prepare(task_dir, tmp_path_factory.mktemp("pre"), _config("preprocessed"))
    return _by_split(builder)


def test_raw_examples_are_the_files_as_nibabel_reads_them(task_dir, raw_examples):
    labelled = [e for s, es in raw_examples.items() if s != "unlabeled" for e in es]
    assert sorted(e["patient_id"].decode() for e in labelled) == sorted(
        f"spleen_{n}" for n in MSD_SPLEEN_TRAINING_CASES[:6]
    )
    for example in labelled:
        patient = example["patient_id"].decode()
        name = f"{patient}.nii.gz"
        image, affine = _nibabel_volume(task_dir / "imagesTr" / name)
        label, _ = _nibabel_volume(task_dir / "labelsTr" / name)
        truth = spleen_phantom_case(int(patient.split("_")[1]), shape=SHAPE, spacing=SPACING,
                                    seed=3).label.array
        assert example["image"].dtype == np.int16 and example["label"].dtype == np.uint8
        np.testing.assert_array_equal(example["image"], image)
        # Scaled labels read back a float32 rounding error off 0 / 1.
        np.testing.assert_allclose(label, truth, rtol=0, atol=1e-6)
        np.testing.assert_array_equal(example["label"], truth)
        np.testing.assert_allclose(example["affine"], affine, atol=1e-5)
        np.testing.assert_allclose(example["original_affine"], affine, atol=1e-5)
        np.testing.assert_array_equal(example["original_shape"], SHAPE)
        np.testing.assert_allclose(example["spacing"], SPACING, rtol=1e-6)
    assert sum(int(e["label"].sum()) for e in labelled) > 0


def test_label_files_come_in_every_encoding(task_dir):
    stored = []
    for number in MSD_SPLEEN_TRAINING_CASES[:6]:
        with gzip.open(task_dir / "labelsTr" / f"spleen_{number}.nii.gz") as handle:
            header = nib.Nifti1Header.from_fileobj(handle)
        stored.append((header.get_data_dtype().name, round(float(header["scl_slope"]), 6)))
    # uint8, int16, float32 with NIfTI's "unscaled" slope 0, float32 0/255 and uint8 0/255
    # both scaled by 1/255, then the cycle again.
    assert stored == [("uint8", 1.0), ("int16", 1.0), ("float32", 0.0),
                      ("float32", 0.003922), ("uint8", 0.003922), ("uint8", 1.0)]
    assert len(LABEL_ENCODINGS) == 5


def test_foreground_statistics_count_the_written_spleens(task_dir, raw_builder):
    stats = raw_builder.info.metadata["foreground"]
    assert sorted(stats) == fold_names(NUM_FOLDS)  # no entry for the unlabeled split
    for split in fold_names(NUM_FOLDS):
        patients = [e["patient_id"].decode()
                    for e in tfds.as_numpy(raw_builder.as_dataset(split=split))]
        written = [
            spleen_phantom_case(int(p.split("_")[1]), shape=SHAPE, spacing=SPACING, seed=3)
            for p in patients
        ]
        assert stats[split]["patients"] == len(patients)
        assert stats[split]["slices"] == len(patients) * SHAPE[0]
        assert stats[split]["voxels_per_label"] == {
            "spleen": sum(int(case.label.array.sum()) for case in written)
        }
        assert stats[split]["slices_with_foreground"] == sum(
            int(case.label.array.any(axis=(1, 2)).sum()) for case in written
        )


def test_splits_are_the_folds_and_unlabeled(raw_examples):
    assert sorted(raw_examples) == sorted([*fold_names(NUM_FOLDS), "unlabeled"])


def test_folds_are_disjoint_and_cover_every_labelled_patient(raw_examples):
    folds = [
        {e["patient_id"].decode() for e in raw_examples[name]} for name in fold_names(NUM_FOLDS)
    ]
    assert sum(len(f) for f in folds) == 6 and len(set().union(*folds)) == 6
    assert all(len(f) == 2 for f in folds)


def test_unlabeled_split_is_images_ts_without_labels(task_dir, raw_examples):
    unlabelled = raw_examples["unlabeled"]
    assert sorted(e["patient_id"].decode() for e in unlabelled) == sorted(
        f"spleen_{n}" for n in MSD_SPLEEN_TEST_CASES[:2]
    )
    for example in unlabelled:
        assert example["label"].shape == (0, 0, 0)
        name = f"{example['patient_id'].decode()}.nii.gz"
        image, _ = _nibabel_volume(task_dir / "imagesTs" / name)
        np.testing.assert_array_equal(example["image"], image)


def test_apple_double_files_are_in_the_layout_and_ignored(task_dir, raw_examples):
    companion = task_dir / "imagesTr" / "._spleen_19.nii.gz"
    # An AppleDouble header (magic 0x00051607), not gzip: a reader that globbed *.nii.gz
    # would fail on it.
    assert companion.read_bytes()[:4] == bytes.fromhex("00051607")
    assert not any(e["patient_id"].decode().startswith("._") for es in raw_examples.values()
                   for e in es)


def test_preprocessed_examples_sit_on_the_target_grid_and_map_back(task_dir,
                                                                    preprocessed_examples):
    for split, examples in preprocessed_examples.items():
        for example in examples:
            folder = "imagesTs" if split == "unlabeled" else "imagesTr"
            name = f"{example['patient_id'].decode()}.nii.gz"
            hu, affine = _nibabel_volume(task_dir / folder / name)
            np.testing.assert_allclose(example["spacing"], (2.0, 1.5, 1.5), rtol=1e-6)
            np.testing.assert_allclose(
                np.linalg.norm(example["affine"][:3, :3], axis=0), (2.0, 1.5, 1.5), rtol=1e-6
            )
            assert nib.aff2axcodes(example["affine"][:, [2, 1, 0, 3]]) == ("R", "A", "S")
            np.testing.assert_array_equal(example["original_shape"], hu.shape)
            np.testing.assert_allclose(example["original_affine"], affine, atol=1e-5)
            # The crop keeps the voxels above -57 HU and nothing outside their box.
            image = example["image"]
            for axis in range(3):
                others = tuple(a for a in range(3) if a != axis)
                inside = (image > -57).any(axis=others)
                assert inside[0] and inside[-1]
            if split == "unlabeled":
                assert example["label"].shape == (0, 0, 0)
                continue
            assert example["label"].shape == image.shape
            # Every target voxel is finer than the stored one, so nearest neighbour there
            # and back must reproduce the label exactly.
            truth = spleen_phantom_case(int(name[len("spleen_"):-len(".nii.gz")]),
                                        shape=SHAPE, spacing=SPACING, seed=3).label.array
            back = to_original_grid(
                Volume(example["label"], example["affine"], name),
                (example["original_affine"], example["original_shape"]),
            )
            np.testing.assert_array_equal(back, truth)


def test_volume_missing_from_dataset_json_is_a_layout_error(tmp_path):
    task = write_msd_spleen(tmp_path / "manual", num_training=3, num_test=0, shape=(4, 12, 12),
                            spacing=(5.0, 4.0, 4.0))
    listing = json.loads((task / "dataset.json").read_text())
    listing["training"] = listing["training"][:2]
    (task / "dataset.json").write_text(json.dumps(listing))
    with pytest.raises(LayoutError, match=r"imagesTr: holds volumes .*spleen_52\.nii\.gz"):
        _prepare(tmp_path / "manual", tmp_path / "data", _config("raw"))


def test_missing_task_folder_is_a_layout_error_showing_the_layout(tmp_path):
    with pytest.raises(LayoutError, match=r"(?s)Task09_Spleen: no dataset.json.*labelsTr"):
        _prepare(tmp_path, tmp_path / "data", _config("raw"))


def test_label_values_other_than_0_and_1_are_a_mask_error(tmp_path):
    task = write_msd_spleen(tmp_path / "manual", num_training=3, num_test=0, shape=(4, 12, 12),
                            spacing=(5.0, 4.0, 4.0), apple_double=False)
    path = task / "labelsTr" / "spleen_31.nii.gz"
    stored = nib.load(str(path))
    nib.save(nib.Nifti1Image(np.asarray(stored.dataobj) * 2, stored.affine), str(path))
    with pytest.raises(MaskError, match=r"spleen_31\.nii\.gz: .*found values \[0, 2\]"):
        _prepare(tmp_path / "manual", tmp_path / "data", _config("raw"))


def test_label_on_another_grid_is_an_alignment_error(tmp_path):
    task = write_msd_spleen(tmp_path / "manual", num_training=3, num_test=0, shape=(4, 12, 12),
                            spacing=(5.0, 4.0, 4.0), apple_double=False)
    path = task / "labelsTr" / "spleen_19.nii.gz"
    stored = nib.load(str(path))
    shifted = stored.affine.copy()
    shifted[2, 3] += 5.0
    nib.save(nib.Nifti1Image(np.asarray(stored.dataobj), shifted), str(path))
    with pytest.raises(AlignmentError, match=r"spleen_19\.nii\.gz: label affine differs"):
        _prepare(tmp_path / "manual", tmp_path / "data", _config("preprocessed"))


def test_label_written_with_nibabel_is_counted_voxel_for_voxel(tmp_path):
    task = write_msd_spleen(tmp_path / "manual", num_training=3, num_test=0, shape=(4, 12, 12),
                            spacing=(5.0, 4.0, 4.0), apple_double=False)
    path = task / "labelsTr" / "spleen_31.nii.gz"
    affine = nib.load(str(path)).affine
    # (i, j, k) = (x, y, z): a 3 x 2 x 2 block and two single voxels, 14 in all, stored as
    # int16 with ITK's explicit identity scaling.
    spleen = np.zeros((12, 12, 4), np.int16)
    spleen[4:7, 5:7, 1:3] = 1
    spleen[0, 0, 0] = spleen[11, 11, 3] = 1
    written = nib.Nifti1Image(spleen, affine)
    written.header.set_slope_inter(1.0, 0.0)
    nib.save(written, str(path))
    builder = _prepare(tmp_path / "manual", tmp_path / "data", _config("raw"))
    # Three cases in three folds: the fold of spleen_31 holds it alone.
    split, example = next(
        (split, e) for split, examples in _by_split(builder).items() for e in examples
        if e["patient_id"].decode() == "spleen_31"
    )
    stats = builder.info.metadata["foreground"][split]
    assert stats["patients"] == 1
    assert stats["voxels_per_label"] == {"spleen": 14}
    assert stats["slices_with_foreground"] == 4  # z = 0, 1, 2, 3
    np.testing.assert_array_equal(example["label"], spleen.transpose(2, 1, 0))


def test_empty_label_is_a_mask_error_naming_patient_and_file(tmp_path):
    task = write_msd_spleen(tmp_path / "manual", num_training=3, num_test=0, shape=(4, 12, 12),
                            spacing=(5.0, 4.0, 4.0), apple_double=False)
    path = task / "labelsTr" / "spleen_52.nii.gz"
    stored = nib.load(str(path))
    nib.save(nib.Nifti1Image(np.zeros(stored.shape, np.uint8), stored.affine), str(path))
    with pytest.raises(MaskError, match=rf"^{path}: patient spleen_52: .*no spleen \(1\)"):
        _prepare(tmp_path / "manual", tmp_path / "data", _config("raw"))



@pytest.mark.parametrize("config", ["raw", "preprocessed"])
def test_image_with_nan_voxels_is_unreadable_not_water(tmp_path, config):
    # A float CT written with nibabel; the NaN voxel was cast to 0 HU (water) silently.
    affine = np.diag([2.0, 2.0, 3.0, 1.0])
    image = np.full((6, 5, 4), -100.0, np.float32)
    image[1, 1, 1] = np.nan
    label = np.zeros((6, 5, 4), np.uint8)
    label[2, 2, 2] = msd_spleen_dataset_builder.SPLEEN
    nib.save(nib.Nifti1Image(image, affine), str(tmp_path / "spleen_7.nii.gz"))
    nib.save(nib.Nifti1Image(label, affine), str(tmp_path / "label_7.nii.gz"))
    folder = epath.Path(tmp_path)
    case = Case("spleen_7", folder / "spleen_7.nii.gz", folder / "label_7.nii.gz")
    with pytest.warns(NonFiniteVoxelWarning), pytest.raises(
        UnreadableFileError, match=r"spleen_7\.nii\.gz: 1 of 120 voxels are NaN"
    ):
        msd_spleen_dataset_builder.case_example(_config(config), case)
