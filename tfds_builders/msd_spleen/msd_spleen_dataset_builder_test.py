"""Tests of the msd_spleen builder.

``dummy_data/`` was written by ``python -m kseg.data.spleen_phantom
tfds_builders/msd_spleen/dummy_data --num-training 5 --num-test 2 --shape 6 16 16
--spacing 5 2 2`` (seed 0): five synthetic labelled cases, one per fold, two unlabelled ones,
and the macOS ``._*`` companions the real archive carries. Expected values are read from the
files with nibabel directly, not with kseg's reader.
"""

import dataclasses
import json

import nibabel as nib
import numpy as np
import pytest
import tensorflow_datasets as tfds

from kseg.data.preprocess3d import to_original_grid
from kseg.data.spleen_phantom import (
    MSD_SPLEEN_TEST_CASES,
    MSD_SPLEEN_TRAINING_CASES,
    write_msd_spleen,
)
from kseg.data.splits import fold_names
from kseg.errors import AlignmentError, LayoutError, MaskError
from tfds_builders.msd_spleen import msd_spleen_dataset_builder

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
    splits = [*fold_names(NUM_FOLDS), "unlabeled"]
    return {s: list(tfds.as_numpy(builder.as_dataset(split=s))) for s in splits}


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
def raw_examples(task_dir, tmp_path_factory):
    return _by_split(_prepare(task_dir.parent, tmp_path_factory.mktemp("raw"), _config("raw")))


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
        name = f"{example['patient_id'].decode()}.nii.gz"
        image, affine = _nibabel_volume(task_dir / "imagesTr" / name)
        label, _ = _nibabel_volume(task_dir / "labelsTr" / name)
        assert example["image"].dtype == np.int16 and example["label"].dtype == np.uint8
        np.testing.assert_array_equal(example["image"], image)
        np.testing.assert_array_equal(example["label"], label)
        np.testing.assert_allclose(example["affine"], affine, atol=1e-5)
        np.testing.assert_allclose(example["original_affine"], affine, atol=1e-5)
        np.testing.assert_array_equal(example["original_shape"], SHAPE)
        np.testing.assert_allclose(example["spacing"], SPACING, rtol=1e-6)
    assert sum(int(e["label"].sum()) for e in labelled) > 0


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
            truth, _ = _nibabel_volume(task_dir / "labelsTr" / name)
            back = to_original_grid(
                example["label"], example["affine"], example["original_affine"],
                example["original_shape"],
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
