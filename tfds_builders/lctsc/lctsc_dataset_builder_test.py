"""Tests of the lctsc builder.

``dummy_data/`` was written by::

    python -m kseg.phantoms.lctsc tfds_builders/lctsc/dummy_data/tcia \\
        --num-patients 5 --num-test-patients 2 --num-slices 4 --size 64
    python -m kseg.phantoms.lctsc tfds_builders/lctsc/dummy_data/npz --layout npz \\
        --num-patients 5 --num-test-patients 0 --num-slices 6 --size 48

(seed 0): five synthetic training patients, so each of the five folds holds one, and in
the TCIA layout two test patients for the ``challenge_test`` split. Four slices of 64
pixels is the least at which every dummy patient shows all five organs (the builder
refuses a patient whose volume lacks one); the npz masks alternate uint8 and bool.
"""

import dataclasses
import pathlib
import shutil
import warnings

import numpy as np
import pydicom
import pytest
import tensorflow_datasets as tfds
from pydicom.dataset import FileMetaDataset

from kseg.data.splits import fold_names
from kseg.errors import LayoutError, MaskError
from kseg.io import SkippedFileWarning
from kseg.io.rtstruct import RoiNameWarning
from kseg.phantoms.lctsc import lctsc_phantom_case, write_lctsc, write_lctsc_npz
from tfds_builders.lctsc import lctsc_dataset_builder

DUMMY_DATA = pathlib.Path(__file__).parent / "dummy_data"
ORGANS = ("lung_left", "lung_right", "heart", "esophagus", "spinal_cord")


class LctscTest(tfds.testing.DatasetBuilderTestCase):
    DATASET_CLASS = lctsc_dataset_builder.Builder
    BUILDER_CONFIG_NAMES_TO_TEST = ["organs", "organs_merged_lungs"]
    EXAMPLE_DIR = str(DUMMY_DATA / "tcia")
    SPLITS = {**{name: 4 for name in fold_names(5)}, "challenge_test": 8}


class LctscNpzTest(tfds.testing.DatasetBuilderTestCase):
    DATASET_CLASS = lctsc_dataset_builder.Builder
    BUILDER_CONFIG_NAMES_TO_TEST = ["npz_lungs"]
    EXAMPLE_DIR = str(DUMMY_DATA / "npz")
    SPLITS = {name: 6 for name in fold_names(5)}


NUM_TRAIN, NUM_TEST, NUM_SLICES, SIZE, SEED = 4, 2, 10, 128, 3


def _prepare(manual_dir, data_dir, base, **changes):
    config = dataclasses.replace(
        lctsc_dataset_builder.Builder.builder_configs[base],
        name=f"{base}_{'_'.join(f'{k}{v}' for k, v in changes.items()) or 'test'}",
        **changes,
    )
    builder = lctsc_dataset_builder.Builder(config=config, data_dir=data_dir)
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=str(manual_dir))
    )
    return builder


def _by_patient(builder, splits):
    by_patient, split_of = {}, {}
    for split in splits:
        for example in tfds.as_numpy(builder.as_dataset(split=split)):
            patient = example["patient_id"].decode()
            assert split_of.setdefault(patient, split) == split, f"{patient} in two splits"
            by_patient.setdefault(patient, {})[int(example["slice_index"])] = example
    return by_patient, split_of


def _dice(a, b):
    return 2.0 * np.logical_and(a, b).sum() / (a.sum() + b.sum())


@pytest.fixture(scope="module")
def organs_build(tmp_path_factory):
    manual = tmp_path_factory.mktemp("lctsc_manual")
    write_lctsc(manual, num_patients=NUM_TRAIN, num_test_patients=NUM_TEST,
                num_slices=NUM_SLICES, size=SIZE, seed=SEED)
    # The phantom's body outline is typed EXTERNAL: no organ, so no name warning for it.
    with warnings.catch_warnings():
        warnings.simplefilter("error", RoiNameWarning)
        builder = _prepare(manual, tmp_path_factory.mktemp("lctsc_data"), "organs", num_folds=2)
    return _by_patient(builder, ["fold0", "fold1", "challenge_test"]) + (builder,)


def test_every_slice_mask_matches_the_phantom_truth(organs_build):
    by_patient, _, _ = organs_build
    cases = [lctsc_phantom_case(i, num_slices=NUM_SLICES, size=SIZE, seed=SEED)
             for i in range(NUM_TRAIN)]
    cases += [lctsc_phantom_case(i, test=True, num_slices=NUM_SLICES, size=SIZE, seed=SEED)
              for i in range(NUM_TEST)]
    assert sorted(by_patient) == sorted(case.patient_id for case in cases)
    for case in cases:
        examples = by_patient[case.patient_id]
        assert sorted(examples) == list(range(NUM_SLICES))
        # The truth: organ shapes sampled at pixel centres by the phantom generator.
        truth = case.lctsc_labels()
        masks = np.stack([examples[k]["mask"] for k in range(NUM_SLICES)])
        images = np.stack([examples[k]["image"] for k in range(NUM_SLICES)])
        np.testing.assert_array_equal(images, case.phantom.hu)
        for class_id, organ in enumerate(ORGANS, start=1):
            assert truth[truth == class_id].size > 0, organ
            dice = _dice(masks == class_id, truth == class_id)
            assert dice > 0.97, f"{case.patient_id} {organ}: Dice {dice:.3f}"
        example = examples[0]
        assert example["patient_sex"].decode() == case.sex
        assert int(example["num_slices"]) == NUM_SLICES
        np.testing.assert_allclose(example["spacing"], case.phantom.spacing, rtol=1e-5)
        assert example["image"].dtype == np.int16 and example["mask"].dtype == np.uint8


def test_challenge_test_split_holds_exactly_the_test_patients(organs_build):
    _, split_of, _ = organs_build
    test_ids = {lctsc_phantom_case(i, test=True, num_slices=1, size=8).patient_id
                for i in range(NUM_TEST)}
    assert {p for p, s in split_of.items() if s == "challenge_test"} == test_ids
    train = {p for p, s in split_of.items() if s != "challenge_test"}
    assert train and all(p.startswith("LCTSC-Train-") for p in train)
    # Folds are disjoint by construction of _by_patient; both are used.
    assert {split_of[p] for p in train} == {"fold0", "fold1"}


def test_stratified_folds_balance_sex_and_empty_slice_fraction(tmp_path):
    num_patients, num_slices = 8, 6
    write_lctsc(tmp_path / "manual", num_patients=num_patients, num_test_patients=0,
                num_slices=num_slices, size=32, seed=7)
    builder = _prepare(tmp_path / "manual", tmp_path / "data", "lungs_stratified", num_folds=2)
    _, split_of = _by_patient(builder, ["fold0", "fold1"])
    strata = {}
    for i in range(num_patients):
        case = lctsc_phantom_case(i, num_slices=num_slices, size=32, seed=7)
        lungs = np.isin(case.lctsc_labels(), (1, 2))
        empty = float(np.mean(~lungs.any(axis=(1, 2))))
        # Independent of the builder: sex from the writer, bins (0.2, 0.4) by hand.
        strata[case.patient_id] = (case.sex, 0 if empty < 0.2 else 1 if empty < 0.4 else 2)
    for stratum in set(strata.values()):
        members = [p for p, s in strata.items() if s == stratum]
        counts = [sum(split_of[p] == fold for p in members) for fold in ("fold0", "fold1")]
        assert abs(counts[0] - counts[1]) <= 1, (stratum, counts)
    assert len(set(strata.values())) > 1  # the balance is tested on more than one stratum


def test_stratified_folds_read_and_rasterise_each_case_once(tmp_path, monkeypatch):
    write_lctsc(tmp_path / "manual", num_patients=4, num_test_patients=1, num_slices=4,
                size=32, seed=2)
    rasterised = []
    rasterise = lctsc_dataset_builder.organ_label_map

    def counting(rtstruct_path, volume, **kwargs):
        rasterised.append(volume.patient_id)
        return rasterise(rtstruct_path, volume, **kwargs)

    monkeypatch.setattr(lctsc_dataset_builder, "organ_label_map", counting)
    builder = _prepare(tmp_path / "manual", tmp_path / "data", "lungs_stratified", num_folds=2)
    by_patient, _ = _by_patient(builder, ["fold0", "fold1", "challenge_test"])
    assert sorted(rasterised) == sorted(by_patient) and len(by_patient) == 5


def test_foreground_statistics_are_in_the_dataset_info(organs_build, tmp_path):
    by_patient, split_of, builder = organs_build
    stats = builder.info.metadata["foreground"]
    assert sorted(stats) == ["challenge_test", "fold0", "fold1"]
    for split, split_stats in stats.items():
        patients = [p for p, s in split_of.items() if s == split]
        masks = np.stack([e["mask"] for p in patients for e in by_patient[p].values()])
        assert split_stats["patients"] == len(patients)
        assert split_stats["slices"] == len(patients) * NUM_SLICES
        assert split_stats["slices_with_foreground"] == int(masks.any(axis=(1, 2)).sum())
        assert split_stats["voxels_per_label"] == {
            organ: int((masks == class_id).sum()) for class_id, organ in enumerate(ORGANS, 1)
        }
        assert split_stats["patients_without_label"] == {organ: [] for organ in ORGANS}
    # Saved with the dataset: a builder that only reads the prepared files sees them too.
    reread = lctsc_dataset_builder.Builder(config=builder.builder_config,
                                           data_dir=builder.data_dir_root)
    assert reread.info.metadata["foreground"] == stats


def test_an_organ_without_contours_is_a_mask_error_naming_patient_and_file(tmp_path):
    manual = tmp_path / "manual"
    write_lctsc(manual, num_patients=2, num_test_patients=0, num_slices=NUM_SLICES, size=64,
                seed=SEED)
    patient = "LCTSC-Train-S2-001"
    rtstruct = next((manual / "LCTSC" / patient).rglob("1-1.dcm"))
    structure_set = pydicom.dcmread(rtstruct)
    heart = next(roi.ROINumber for roi in structure_set.StructureSetROISequence
                 if roi.ROIName.lower() == "heart")
    # The ROI stays named, as in a structure set whose heart was never drawn.
    for roi in structure_set.ROIContourSequence:
        if roi.ReferencedROINumber == heart:
            del roi.ContourSequence
    structure_set.save_as(rtstruct)
    with pytest.raises(MaskError) as raised:
        _prepare(manual, tmp_path / "data", "organs", num_folds=2)
    message = str(raised.value)
    assert message.startswith(f"{rtstruct}: patient {patient}:")
    assert "no heart (3)" in message


def _strip_preamble(path):
    """Rewrite a DICOM file as some archives store them: no 128-byte preamble, no "DICM",
    no file meta group, implicit VR little endian from the first byte."""
    dataset = pydicom.dcmread(path)
    dataset.preamble = None
    dataset.file_meta = FileMetaDataset()
    pydicom.dcmwrite(path, dataset, implicit_vr=True, little_endian=True)
    raw = path.read_bytes()
    assert raw[128:132] != b"DICM" and raw[:2] == b"\x08\x00"  # starts at tag (0008,xxxx)


def test_files_without_dicom_preamble_are_read(tmp_path):
    manual = tmp_path / "manual"
    write_lctsc(manual, num_patients=2, num_test_patients=0, num_slices=4, size=64, seed=0)
    patient = "LCTSC-Train-S1-001"
    _strip_preamble(sorted((manual / "LCTSC" / patient).rglob("1-00*.dcm"))[1])
    _strip_preamble(next((manual / "LCTSC" / patient).rglob("1-1.dcm")))
    builder = _prepare(manual, tmp_path / "data", "organs", num_folds=2)
    by_patient, _ = _by_patient(builder, ["fold0", "fold1"])
    case = lctsc_phantom_case(0, num_slices=4, size=64, seed=0)
    images = np.stack([by_patient[patient][k]["image"] for k in range(4)])
    masks = np.stack([by_patient[patient][k]["mask"] for k in range(4)])
    np.testing.assert_array_equal(images, case.phantom.hu)
    truth = case.lctsc_labels()
    for class_id, organ in enumerate(ORGANS, start=1):
        assert _dice(masks == class_id, truth == class_id) > 0.9, organ


def test_npz_layout_aligns_reversed_and_flipped_masks(tmp_path):
    write_lctsc_npz(tmp_path / "manual", num_patients=5, num_slices=8, size=48, seed=1)
    stored = {
        path.parent.name: np.load(path)["mask"]
        for path in (tmp_path / "manual").glob("*/mask.npz")
    }
    # The writer alternates the two dtypes pre-converted masks come in.
    assert {mask.dtype.name for mask in stored.values()} == {"uint8", "bool"}
    builder = _prepare(tmp_path / "manual", tmp_path / "data", "npz_lungs", num_folds=2)
    by_patient, split_of = _by_patient(builder, ["fold0", "fold1"])
    assert len(by_patient) == 5
    for i in range(5):
        case = lctsc_phantom_case(i, num_slices=8, size=48, seed=1)
        truth = np.isin(case.lctsc_labels(), (1, 2)).astype(np.uint8)
        masks = np.stack([by_patient[case.patient_id][k]["mask"] for k in range(8)])
        np.testing.assert_array_equal(masks, truth)
    for split in ("fold0", "fold1"):
        written = sum(int(np.count_nonzero(stored[p])) for p, s in split_of.items() if s == split)
        assert builder.info.metadata["foreground"][split]["voxels_per_label"] == {
            "lungs": written
        }


def test_npz_layout_refuses_an_empty_mask_naming_patient_and_file(tmp_path):
    manual = tmp_path / "manual"
    write_lctsc_npz(manual, num_patients=2, num_slices=4, size=32, seed=1)
    mask_file = manual / "LCTSC-Train-S2-001" / "mask.npz"
    np.savez_compressed(mask_file, mask=np.zeros((4, 32, 32), bool))
    with pytest.raises(MaskError, match=f"^{mask_file}: patient LCTSC-Train-S2-001: .*no lungs"):
        _prepare(manual, tmp_path / "data", "npz_lungs", num_folds=2)


def test_ct_series_without_structure_set_is_a_layout_error(tmp_path):
    manual = tmp_path / "manual"
    write_lctsc(manual, num_patients=2, num_test_patients=0, num_slices=2, size=16)
    rtstruct = next(manual.rglob("1-1.dcm"))
    shutil.rmtree(rtstruct.parent)
    # The NBIA Data Retriever leaves a metadata.csv beside the collection: skipped, reported.
    (manual / "metadata.csv").write_text("Series UID,Collection\n")
    with pytest.warns(SkippedFileWarning, match="metadata.csv"), pytest.raises(
        LayoutError, match="1 CT series have no RT Structure Set"
    ):
        _prepare(manual, tmp_path / "data", "organs", num_folds=2)
