"""Tests of kseg.data.examples, the slice-example contract the builders share."""

import numpy as np
import pytest
import tensorflow_datasets as tfds

from kseg.data.examples import (
    SLICE_FEATURES,
    fold_splits,
    slice_examples,
    slice_features_dict,
    to_image_dtype,
)
from kseg.errors import DicomSeriesError, UnreadableFileError


def test_slice_examples_key_and_describe_every_slice_in_array_order():
    images = np.arange(3 * 2 * 2, dtype=np.int16).reshape(3, 2, 2)
    labels = (images % 2).astype(np.uint8)
    examples = list(slice_examples("P7", images, labels, (2.5, 0.7, 0.7), patient_sex="F"))
    assert [key for key, _ in examples] == ["P7_0000", "P7_0001", "P7_0002"]
    for index, (_, example) in enumerate(examples):
        assert set(example) == {*SLICE_FEATURES, "patient_sex"}
        np.testing.assert_array_equal(example["image"], images[index])
        np.testing.assert_array_equal(example["mask"], labels[index])
        assert example["patient_id"] == "P7" and example["patient_sex"] == "F"
        assert example["slice_index"] == index and example["num_slices"] == 3
        assert example["spacing"].dtype == np.float32
        np.testing.assert_array_equal(example["spacing"], np.float32([2.5, 0.7, 0.7]))


def test_slice_features_dict_declares_the_contract_then_the_extras():
    features = slice_features_dict(np.uint16, patient_sex=tfds.features.Text())
    assert list(features.keys()) == [*SLICE_FEATURES, "patient_sex"]
    assert features["image"].np_dtype == np.uint16 and features["mask"].np_dtype == np.uint8
    assert features["image"].shape == (None, None) and features["spacing"].shape == (3,)
    assert features["slice_index"].np_dtype == np.int32
    assert features["num_slices"].np_dtype == np.int32


def test_fold_splits_put_every_patient_in_one_split_keeping_the_given_order():
    patients = [f"p{k}" for k in range(11)]
    splits = fold_splits(patients, 3, seed=4, where="manual")
    assert list(splits) == ["fold0", "fold1", "fold2"]
    assert sorted(sum(splits.values(), [])) == sorted(patients)
    assert sorted(len(members) for members in splits.values()) == [3, 4, 4]
    for members in splits.values():
        assert members == sorted(members, key=patients.index)
    # The folds depend on the set of patients, not on the order they are given in.
    reordered = fold_splits(patients[::-1], 3, seed=4, where="manual")
    assert {name: set(m) for name, m in reordered.items()} == {
        name: set(m) for name, m in splits.items()
    }


def test_fold_splits_deal_each_stratum_over_the_folds():
    strata = {f"p{k}": ("F" if k < 4 else "M") for k in range(8)}
    splits = fold_splits(list(strata), 4, seed=0, strata=strata, where="manual")
    for members in splits.values():
        assert sorted(strata[p] for p in members) == ["F", "M"]


def test_fold_splits_name_where_the_patients_came_from():
    with pytest.raises(ValueError, match=r"^/data/CHAOS/CT: num_folds=5 needs at least 5"):
        fold_splits(["1", "2"], 5, seed=0, where="/data/CHAOS/CT")


def test_image_values_are_rounded_into_the_feature_dtype_or_refused():
    # A fractional MR RescaleSlope gives floats: rounded, never truncated.
    np.testing.assert_array_equal(
        to_image_dtype(np.array([[0.4, 1.6], [2.5, 4095.2]]), np.uint16, source="series"),
        np.array([[0, 2], [2, 4095]], dtype=np.uint16),
    )
    kept = np.array([[-1024, 3071]], np.int16)
    assert to_image_dtype(kept, np.int16, source="series") is kept
    with pytest.raises(DicomSeriesError, match=r"series: MR values span -3..7"):
        to_image_dtype(np.array([[-3, 7]], np.int16), np.uint16, source="series", modality="MR")
    with pytest.raises(DicomSeriesError, match="int16 range"):
        to_image_dtype(np.array([[0.0, 40000.0]]), np.int16, source="series")
    with pytest.raises(UnreadableFileError, match=r"case\.nii\.gz: CT values span"):
        to_image_dtype(np.array([40000.0]), np.int16, source="case.nii.gz",
                       error=UnreadableFileError)
    # NaN passes any range check and numpy casts it to 0 (water): refused, counted
    with pytest.raises(DicomSeriesError, match=r"series: 2 CT values are NaN or infinite"):
        to_image_dtype(np.array([[np.nan, 1.0], [np.inf, 2.0]]), np.int16, source="series")
