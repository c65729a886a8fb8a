"""Tests of the chaos builder.

``dummy_data/`` was written by ``python -m kseg.phantoms.chaos tfds_builders/chaos/dummy_data
--modality CT MR --num-patients 5 --num-slices 4 --size 32`` (seed 0): five synthetic
patients of four slices each, so every one of the five folds holds one patient; each patient's
masks use another encoding (1-bit, 8-bit, 16-bit, palette, ... see
``kseg.phantoms.chaos.default_mask_encoding``).

References: the phantom's own label arrays, and mask files written here with Pillow from
boolean arrays (never the builder's earlier output).
"""

import dataclasses
import re

import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from kseg.data.splits import assign_folds, fold_names
from kseg.errors import LayoutError, MaskError
from kseg.io import LossyMaskWarning
from kseg.phantoms.chaos import (
    CHAOS_MASK_ENCODINGS,
    PhantomLabel,
    chaos_phantom_case,
    default_mask_encoding,
    write_chaos,
)
from tfds_builders.chaos import chaos_dataset_builder


class ChaosTest(tfds.testing.DatasetBuilderTestCase):
    DATASET_CLASS = chaos_dataset_builder.Builder
    BUILDER_CONFIG_NAMES_TO_TEST = ["ct", "mr_t2spir", "mr_t1dual_in", "mr_t1dual_out"]
    SPLITS = {name: 4 for name in fold_names(5)}


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


# Enough patients that the default (per-patient) encodings cover every lossless one.
NUM_CT_PATIENTS = 9
NUM_MR_PATIENTS = 6


@pytest.fixture(scope="module")
def phantom_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("chaos_manual")
    common = {"num_slices": NUM_SLICES, "size": SIZE, "seed": 2, "progress": False}
    write_chaos(root, modality="CT", num_patients=NUM_CT_PATIENTS, **common)
    write_chaos(root, modality="MR", num_patients=NUM_MR_PATIENTS, **common)
    return root


def test_default_phantom_tree_holds_every_lossless_encoding():
    ct = {default_mask_encoding("CT", k) for k in range(NUM_CT_PATIENTS)}
    mr = {default_mask_encoding("MR", k) for k in range(NUM_MR_PATIENTS)}
    assert ct == set(CHAOS_MASK_ENCODINGS) - {"jpg"}
    assert mr == {"8bit", "16bit", "palette_grey", "palette_index", "rgb", "rgba"}


def test_ct_examples_follow_slice_positions_not_file_names(phantom_root, tmp_path):
    builder = _prepare(phantom_root, tmp_path, _config("ct"))
    by_patient, fold_of = _examples_by_patient(builder, 3)
    patients = sorted(by_patient, key=int)
    assert len(patients) == NUM_CT_PATIENTS
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
    write_chaos(manual, modality="CT", num_patients=3, num_slices=3, size=16, progress=False)
    ground = manual / "Train_Sets" / "CT" / "2" / "Ground"
    sorted(ground.iterdir())[-1].unlink()
    with pytest.raises(MaskError, match=r"CT/2/Ground.*2 Ground masks .* for 3 DICOM slices"):
        _prepare(manual, tmp_path / "data", _config("ct"))


def test_wrong_layout_is_a_layout_error_showing_the_expected_layout(tmp_path):
    (tmp_path / "CHAOS_Train_Sets" / "CT").mkdir(parents=True)
    with pytest.raises(LayoutError, match=r"(?s)Train_Sets/CT: not found.*DICOM_anon/\*\.dcm"):
        _prepare(tmp_path, tmp_path / "data", _config("ct"))


def test_folder_not_named_by_a_number_is_skipped_with_a_warning(tmp_path):
    import shutil

    from kseg.io import SkippedFileWarning

    manual = tmp_path / "manual"
    write_chaos(manual, modality="CT", num_patients=3, num_slices=6, size=SIZE, progress=False)
    ct = manual / "Train_Sets" / "CT"
    shutil.copytree(ct / "1", ct / "1 copy")  # what a file manager names a duplicate
    with pytest.warns(SkippedFileWarning, match=r"CT: skipped 1 folder\(s\) .*: 1 copy"):
        builder = _prepare(manual, tmp_path / "data", _config("ct"))
    assert builder.info.splits.total_num_examples == 3 * 6  # three patients of six slices


def test_fewer_patients_than_folds_is_refused(tmp_path):
    manual = tmp_path / "manual"
    write_chaos(manual, modality="CT", num_patients=2, num_slices=2, size=16, progress=False)
    with pytest.raises(ValueError, match="num_folds=3 needs at least 3 patients"):
        _prepare(manual, tmp_path / "data", _config("ct"))


# --- masks read by what each file holds ---------------------------------------------------

GRID = 32
PIL_SLICES = 4


def _written_liver(patient_index: int, rank: int) -> np.ndarray:
    """A liver made of 8 x 8 blocks (so a JPEG round trip keeps it), other per file."""
    rng = np.random.default_rng([patient_index, rank])
    blocks = rng.random((GRID // 8, GRID // 8)) < 0.5
    blocks[0, 0] = True  # never empty
    return np.kron(blocks, np.ones((8, 8), dtype=bool))


def _colour_palette(image):
    image.putpalette([0, 0, 0] + [200, 30, 30] * 255)
    return image


# Each writer stores a boolean liver in one encoding, with Pillow alone.
PIL_WRITERS = {
    "1-bit": (".png", lambda m: Image.fromarray(m)),
    "8-bit 0 255": (".png", lambda m: Image.fromarray(m.astype(np.uint8) * 255)),
    "8-bit 0 1": (".png", lambda m: Image.fromarray(m.astype(np.uint8))),
    "16-bit 0 65535": (".png", lambda m: Image.fromarray(m.astype(np.uint16) * 65535)),
    "16-bit 0 1": (".png", lambda m: Image.fromarray(m.astype(np.uint16))),
    "palette grey": (".png", lambda m: Image.fromarray(m.astype(np.uint8) * 255).convert("P")),
    "palette indices": (
        ".png", lambda m: _colour_palette(Image.fromarray(m.astype(np.uint8), mode="P"))
    ),
    "grey RGB": (".png", lambda m: Image.fromarray(m.astype(np.uint8) * 255).convert("RGB")),
    "grey RGBA": (".png", lambda m: Image.fromarray(m.astype(np.uint8) * 255).convert("RGBA")),
    "JPEG": (".JPG", lambda m: Image.fromarray(m.astype(np.uint8) * 255)),
}


@pytest.fixture(scope="module")
def pil_masks_root(tmp_path_factory):
    """CT phantom DICOMs with every patient's Ground files replaced by Pillow-written masks,
    one encoding per patient; returns the root and {patient: (encoding, {rank: liver})}."""
    root = tmp_path_factory.mktemp("chaos_pil")
    write_chaos(root, modality="CT", num_patients=len(PIL_WRITERS), num_slices=PIL_SLICES,
                size=GRID, seed=5, progress=False)
    written = {}
    for index, (encoding, (suffix, write)) in enumerate(PIL_WRITERS.items()):
        patient = chaos_phantom_case("CT", index, num_slices=PIL_SLICES, size=GRID, seed=5).patient
        ground = root / "Train_Sets" / "CT" / patient / "Ground"
        for old in ground.iterdir():
            old.unlink()
        livers = {}
        for rank in range(PIL_SLICES):
            livers[rank] = _written_liver(index, rank)
            image = write(livers[rank])
            image.save(ground / f"liver_GT_{rank:03d}{suffix}", **(
                {"format": "JPEG", "quality": 95} if encoding == "JPEG" else {}
            ))
        written[patient] = (encoding, livers)
    with Image.open(root / "Train_Sets/CT/1/Ground/liver_GT_000.png") as check:
        assert check.mode == "1"  # a true 1-bit PNG, as the real CHAOS CT ships
    return root, written


def test_pil_written_masks_in_every_encoding_give_the_written_liver(pil_masks_root, tmp_path):
    root, written = pil_masks_root
    with pytest.warns(LossyMaskWarning, match=r"liver_GT_000\.JPG"):
        builder = _prepare(root, tmp_path, _config("ct"))
    by_patient, _ = _examples_by_patient(builder, 3)
    assert sorted(by_patient, key=int) == sorted(written, key=int)
    for index, (patient, (encoding, livers)) in enumerate(sorted(
        written.items(), key=lambda item: int(item[0])
    )):
        case = chaos_phantom_case("CT", index, num_slices=PIL_SLICES, size=GRID, seed=5)
        expected_voxels = sum(int(liver.sum()) for liver in livers.values())
        masks = {int(e["slice_index"]): e["mask"] for e in by_patient[patient]}
        assert sum(int(m.sum()) for m in masks.values()) == expected_voxels, encoding
        for k, mask in masks.items():
            # Slice k holds the file of sorted-name rank name_ranks[k] (CHAOS pairing).
            rank = int(case.name_ranks["CT"][k])
            np.testing.assert_array_equal(mask, livers[rank], err_msg=encoding)


def test_foreground_statistics_are_saved_with_the_dataset(pil_masks_root, tmp_path):
    root, written = pil_masks_root
    with pytest.warns(LossyMaskWarning):
        builder = _prepare(root, tmp_path, _config("ct"))
    folds = assign_folds(sorted(written), 3, seed=0)
    stats = builder.info.metadata["foreground"]
    assert sorted(stats) == fold_names(3)
    for fold, name in enumerate(fold_names(3)):
        patients = [p for p in written if folds[p] == fold]
        livers = [liver for p in patients for liver in written[p][1].values()]
        assert stats[name]["patients"] == len(patients)
        assert stats[name]["slices"] == len(patients) * PIL_SLICES
        assert stats[name]["slices_with_foreground"] == sum(bool(m.any()) for m in livers)
        assert stats[name]["voxels_per_label"] == {"liver": sum(int(m.sum()) for m in livers)}
        assert stats[name]["patients_without_label"] == {"liver": []}
    reloaded = chaos_dataset_builder.Builder(config=_config("ct"), data_dir=tmp_path)
    assert reloaded.info.metadata["foreground"] == stats
    assert reloaded.info.metadata["class_names"] == ["background", "liver"]


def test_patient_with_an_empty_mask_volume_is_a_mask_error_naming_it(tmp_path):
    manual = tmp_path / "manual"
    write_chaos(manual, modality="CT", num_patients=3, num_slices=3, size=16, progress=False)
    ground = manual / "Train_Sets" / "CT" / "5" / "Ground"
    for path in sorted(ground.iterdir()):
        path.unlink()
        Image.fromarray(np.zeros((16, 16), bool)).save(path.with_suffix(".png"))
    with pytest.raises(MaskError, match=r"CT/5/Ground: patient 5: .* no liver \(1\)"):
        _prepare(manual, tmp_path / "data", _config("ct"))


def test_mr_patient_without_spleen_is_a_mask_error(tmp_path):
    manual = tmp_path / "manual"
    write_chaos(manual, modality="MR", num_patients=3, num_slices=NUM_SLICES, size=SIZE,
                mask_encoding="8bit", progress=False)
    ground = manual / "Train_Sets" / "MR" / "2" / "T2SPIR" / "Ground"
    for path in ground.iterdir():
        stored = np.asarray(Image.open(path))
        Image.fromarray(np.where(stored == 252, 0, stored).astype(np.uint8)).save(path)
    with pytest.raises(MaskError, match=r"MR/2/T2SPIR/Ground: patient 2: .* no spleen \(4\)"):
        _prepare(manual, tmp_path / "data", _config("mr_t2spir"))


def test_binary_ct_mask_with_a_foreign_value_is_a_mask_error_naming_the_file(tmp_path):
    manual = tmp_path / "manual"
    write_chaos(manual, modality="CT", num_patients=3, num_slices=3, size=16,
                mask_encoding="8bit", progress=False)
    path = manual / "Train_Sets" / "CT" / "2" / "Ground" / "liver_GT_001.png"
    stored = np.asarray(Image.open(path)).copy()
    stored[0, :3] = 100
    Image.fromarray(stored).save(path)
    with pytest.raises(MaskError, match=r"liver_GT_001\.png: 8-bit grey mask holds .*100 \(3 px"):
        _prepare(manual, tmp_path / "data", _config("ct"))


def test_jpg_ground_files_are_read_with_a_warning_and_mixed_formats_refused(tmp_path):
    manual = tmp_path / "manual"
    write_chaos(manual, modality="CT", num_patients=3, num_slices=NUM_SLICES, size=SIZE,
                mask_encoding="jpg", progress=False)
    with pytest.warns(LossyMaskWarning, match=r"liver_GT_\d{3}\.jpg"):
        builder = _prepare(manual, tmp_path / "data", _config("ct"))
    by_patient, _ = _examples_by_patient(builder, 3)
    for index, patient in enumerate(sorted(by_patient, key=int)):
        case = chaos_phantom_case("CT", index, num_slices=NUM_SLICES, size=SIZE, seed=0)
        truth = case.labels == PhantomLabel.LIVER
        got = np.stack([e["mask"] for e in sorted(
            by_patient[patient], key=lambda e: int(e["slice_index"])
        )])
        # Lossy: at most a few edge pixels differ from the liver that was written.
        assert np.count_nonzero(got != truth) <= 0.02 * truth.sum()
    ground = manual / "Train_Sets" / "CT" / "1" / "Ground"
    first = sorted(ground.iterdir())[0]
    Image.open(first).save(first.with_suffix(".png"))
    first.unlink()
    with pytest.raises(MaskError, match=r"CT/1/Ground: mixes mask formats \(6 \.jpg, 1 \.png\)"):
        _prepare(manual, tmp_path / "data2", _config("ct"))


def _unpad(folder, pattern):
    """Rename ``folder``'s files numbered by ``pattern`` (one zero-padded group) unpadded."""
    for path in sorted(folder.iterdir()):
        match = re.fullmatch(pattern, path.name)
        path.rename(folder / path.name.replace(match.group(1), str(int(match.group(1))), 1))


def _one_patient_examples(root):
    from tfds_builders._foreground import ForegroundTally

    tally = ForegroundTally({1: "liver"}, required=(1,), metadata={})
    return list(chaos_dataset_builder.patient_examples(
        _config("ct"), root / "Train_Sets" / "CT" / "1", "train", tally))  # fmt: skip


@pytest.mark.parametrize("renamed", ["Ground", "DICOM_anon"])
def test_masks_renamed_without_zero_padding_on_one_side_are_refused(tmp_path, renamed):
    """Past the ninth slice, 'liver_GT_10.png' sorts before 'liver_GT_2.png' as text: paired
    with the padded DICOM names by sorted name, slices would take other slices' masks."""
    root = write_chaos(tmp_path, modality="CT", num_patients=1, num_slices=12, size=16,
                       progress=False)  # fmt: skip
    patient = root / "Train_Sets" / "CT" / "1"
    _unpad(patient / renamed, r"liver_GT_(\d+)\.png" if renamed == "Ground" else r"i(\d+),.*")

    with pytest.raises(MaskError, match=r"Ground: pairs .* without zero padding on one side"):
        _one_patient_examples(root)


def test_names_unpadded_on_both_sides_pair_as_the_download_does(tmp_path):
    root = write_chaos(tmp_path / "padded", modality="CT", num_patients=1, num_slices=12,
                       size=16, progress=False)  # fmt: skip
    expected = [example for _, example in _one_patient_examples(root)]
    patient = root / "Train_Sets" / "CT" / "1"
    _unpad(patient / "Ground", r"liver_GT_(\d+)\.png")
    _unpad(patient / "DICOM_anon", r"i(\d+),.*")

    examples = [example for _, example in _one_patient_examples(root)]

    assert len(examples) == len(expected) == 12
    for got, want in zip(examples, expected, strict=True):
        np.testing.assert_array_equal(got["mask"], want["mask"])
        np.testing.assert_array_equal(got["image"], want["image"])
