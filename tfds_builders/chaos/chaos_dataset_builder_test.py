"""Tests of the chaos builder.

``dummy_data/`` was written by ``python -m kseg.data.phantoms tfds_builders/chaos/dummy_data
--modality CT MR --num-patients 5 --num-slices 3 --size 32`` (seed 0): five synthetic
patients of three slices each, so every one of the five folds holds one patient.
"""

import dataclasses

import numpy as np
import pytest
import tensorflow_datasets as tfds

from kseg.data.phantoms import PhantomLabel, chaos_phantom_case, write_chaos
from kseg.data.splits import assign_folds, fold_names
from kseg.errors import DicomSeriesError, LayoutError, MaskError
from tfds_builders.chaos import chaos_dataset_builder


class ChaosTest(tfds.testing.DatasetBuilderTestCase):
    DATASET_CLASS = chaos_dataset_builder.Builder
    BUILDER_CONFIG_NAMES_TO_TEST = ["ct", "mr_t2spir", "mr_t1dual_in", "mr_t1dual_out"]
    SPLITS = {name: 3 for name in fold_names(5)}


NUM_SLICES = 7
SIZE = 32


def _prepare(manual_dir, data_dir, config):
    builder = chaos_dataset_builder.Builder(config=config, data_dir=data_dir)
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=str(manual_dir))
    )
    return builder


def _config(name, **changes):
    return dataclasses.replace(
        chaos_dataset_builder.Builder.builder_configs[name], name=f"{name}_3fold",
        num_folds=3, **changes,
    )


def _examples_by_patient(builder, num_folds):
    by_patient, fold_of = {}, {}
    for fold in fold_names(num_folds):
        for example in tfds.as_numpy(builder.as_dataset(split=fold)):
            patient = example["patient_id"].decode()
            assert fold_of.setdefault(patient, fold) == fold, f"{patient} in two folds"
            by_patient.setdefault(patient, []).append(example)
    return by_patient, fold_of


@pytest.fixture(scope="module")
def phantom_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("chaos_manual")
    write_chaos(root, modality="CT", num_patients=4, num_slices=NUM_SLICES, size=SIZE, seed=2)
    write_chaos(root, modality="MR", num_patients=3, num_slices=NUM_SLICES, size=SIZE, seed=2)
    return root


def test_ct_examples_follow_slice_positions_not_file_names(phantom_root, tmp_path):
    builder = _prepare(phantom_root, tmp_path, _config("ct"))
    by_patient, fold_of = _examples_by_patient(builder, 3)
    patients = sorted(by_patient, key=int)
    assert fold_of == {p: f"fold{f}" for p, f in assign_folds(patients, 3, seed=0).items()}
    for index, patient in enumerate(patients):
        case = chaos_phantom_case("CT", index, num_slices=NUM_SLICES, size=SIZE, seed=2)
        assert case.patient == patient
        examples = sorted(by_patient[patient], key=lambda e: int(e["slice_index"]))
        assert [int(e["slice_index"]) for e in examples] == list(range(NUM_SLICES))
        for k, example in enumerate(examples):
            # Slice k of the phantom lies at origin + k * thickness: position order.
            np.testing.assert_array_equal(example["image"], case.images["CT"][k])
            expected_mask = (case.labels[k] == PhantomLabel.LIVER).astype(np.uint8)
            np.testing.assert_array_equal(example["mask"], expected_mask)
            np.testing.assert_allclose(example["spacing"], case.spacing, rtol=1e-5)
            assert int(example["num_slices"]) == NUM_SLICES
        assert example["image"].dtype == np.int16 and example["mask"].dtype == np.uint8
    assert any(e["mask"].any() for es in by_patient.values() for e in es)


@pytest.mark.parametrize(
    "config_name, sequence", [("mr_t1dual_out", "T1_OUT"), ("mr_t2spir", "T2SPIR")]
)
def test_mr_examples_carry_four_organ_labels_in_position_order(
    phantom_root, tmp_path, config_name, sequence
):
    builder = _prepare(phantom_root, tmp_path, _config(config_name))
    by_patient, _ = _examples_by_patient(builder, 3)
    label_of = {PhantomLabel.LIVER: 1, PhantomLabel.RIGHT_KIDNEY: 2,
                PhantomLabel.LEFT_KIDNEY: 3, PhantomLabel.SPLEEN: 4}
    for index, patient in enumerate(sorted(by_patient, key=int)):
        case = chaos_phantom_case("MR", index, num_slices=NUM_SLICES, size=SIZE, seed=2)
        expected = np.zeros_like(case.labels)
        for tissue, label in label_of.items():
            expected[case.labels == tissue] = label
        for example in by_patient[patient]:
            k = int(example["slice_index"])
            assert example["image"].dtype == np.uint16
            np.testing.assert_array_equal(example["image"], case.images[sequence][k])
            np.testing.assert_array_equal(example["mask"], expected[k])


def test_missing_ground_png_is_a_mask_error_naming_the_folder(tmp_path):
    manual = tmp_path / "manual"
    write_chaos(manual, modality="CT", num_patients=3, num_slices=3, size=16)
    ground = manual / "Train_Sets" / "CT" / "2" / "Ground"
    sorted(ground.iterdir())[-1].unlink()
    with pytest.raises(MaskError, match=r"CT/2/Ground.*2 Ground PNGs for 3 DICOM slices"):
        _prepare(manual, tmp_path / "data", _config("ct"))


def test_wrong_layout_is_a_layout_error_showing_the_expected_layout(tmp_path):
    (tmp_path / "CHAOS_Train_Sets" / "CT").mkdir(parents=True)
    with pytest.raises(LayoutError, match=r"(?s)Train_Sets/CT: not found.*DICOM_anon/\*\.dcm"):
        _prepare(tmp_path, tmp_path / "data", _config("ct"))


def test_fewer_patients_than_folds_is_refused(tmp_path):
    manual = tmp_path / "manual"
    write_chaos(manual, modality="CT", num_patients=2, num_slices=2, size=16)
    with pytest.raises(ValueError, match="num_folds=3 needs at least 3 patients"):
        _prepare(manual, tmp_path / "data", _config("ct"))


def test_image_values_are_rounded_into_the_feature_dtype_or_refused():
    convert = chaos_dataset_builder._as_feature_dtype
    # A fractional MR RescaleSlope gives floats: rounded, never truncated.
    np.testing.assert_array_equal(
        convert(np.array([[0.4, 1.6], [2.5, 4095.2]]), "MR", "series"),
        np.array([[0, 2], [2, 4095]], dtype=np.uint16),
    )
    assert convert(np.array([[-1024, 3071]], np.int16), "CT", "series").dtype == np.int16
    with pytest.raises(DicomSeriesError, match=r"series: MR values span -3..7"):
        convert(np.array([[-3, 7]], np.int16), "MR", "series")
    with pytest.raises(DicomSeriesError, match="int16 range"):
        convert(np.array([[0.0, 40000.0]]), "CT", "series")
