"""The spleen phantom and its MSD Task09 writer, read back with nibabel and json only."""

import gzip
import json

import nibabel as nib
import numpy as np
import pytest

from kseg.errors import LayoutError
from kseg.phantoms import SYNTHETIC_NOTICE
from kseg.phantoms.msd_spleen import (
    LABEL_ENCODINGS,
    MSD_SPLEEN_TEST_CASES,
    MSD_SPLEEN_TRAINING_CASES,
    main,
    spleen_phantom_case,
    write_msd_spleen,
)

SHAPE = (10, 48, 48)
SPACING = (5.0, 3.0, 3.0)
# Top-level keys of the real Task09_Spleen/dataset.json, in its order.
MSD_DATASET_JSON_KEYS = [
    "name", "description", "reference", "licence", "release", "tensorImageSize", "modality",
    "labels", "numTraining", "numTest", "training", "test",
]  # fmt: skip


@pytest.fixture(scope="module")
def task(tmp_path_factory):
    return write_msd_spleen(
        tmp_path_factory.mktemp("msd"), num_training=3, num_test=2, shape=SHAPE,
        spacing=SPACING, seed=1,
    )


def test_layout_and_dataset_json_follow_the_real_archive(task):
    assert task.name == "Task09_Spleen"
    listing = json.loads((task / "dataset.json").read_text())
    assert list(listing) == MSD_DATASET_JSON_KEYS
    assert listing["labels"] == {"0": "background", "1": "spleen"}
    assert listing["modality"] == {"0": "CT"}
    assert SYNTHETIC_NOTICE in listing["description"] and SYNTHETIC_NOTICE in listing["reference"]
    training = [f"spleen_{n}" for n in MSD_SPLEEN_TRAINING_CASES[:3]]
    test = [f"spleen_{n}" for n in MSD_SPLEEN_TEST_CASES[:2]]
    assert training == ["spleen_19", "spleen_31", "spleen_52"]
    assert listing["training"] == [
        {"image": f"./imagesTr/{n}.nii.gz", "label": f"./labelsTr/{n}.nii.gz"} for n in training
    ]
    assert listing["test"] == [f"./imagesTs/{n}.nii.gz" for n in test]
    assert (listing["numTraining"], listing["numTest"]) == (3, 2)
    for folder, names in (("imagesTr", training), ("labelsTr", training), ("imagesTs", test)):
        expected = sorted([f"{n}.nii.gz" for n in names] + [f"._{n}.nii.gz" for n in names])
        assert sorted(p.name for p in (task / folder).iterdir()) == expected
        for name in names:
            assert (task / folder / f"._{name}.nii.gz").read_bytes()[:4] == b"\x00\x05\x16\x07"
    assert not [p for p in task.parent.iterdir() if p.name.startswith(".Task09")]


def test_files_hold_the_case_as_nibabel_reads_them(task):
    case = spleen_phantom_case(31, shape=SHAPE, spacing=SPACING, seed=1)
    # spleen_31 is the second training case: its label is the second encoding, int16.
    for folder, volume, dtype in (
        ("imagesTr", case.image, np.int16),
        ("labelsTr", case.label, np.int16),
    ):
        stored = nib.load(str(task / folder / "spleen_31.nii.gz"))
        assert stored.get_data_dtype() == dtype
        assert stored.header["descrip"].tobytes().rstrip(b"\0").decode() == SYNTHETIC_NOTICE
        assert nib.aff2axcodes(stored.affine) == ("L", "P", "S")
        np.testing.assert_allclose(stored.header.get_zooms(), SPACING[::-1])
        assert int(stored.header["sform_code"]) == 1 and int(stored.header["qform_code"]) == 1
        np.testing.assert_array_equal(np.asarray(stored.dataobj).transpose(2, 1, 0), volume.array)
        np.testing.assert_allclose(stored.affine[:, [2, 1, 0, 3]], volume.affine, atol=1e-4)


def _stored_header(path):
    """The header as written, before nibabel folds scl_slope / scl_inter into the data."""
    with gzip.open(path) as handle:
        return nib.Nifti1Header.from_fileobj(handle)


# encoding: (on-disk dtype, scl_slope, scl_inter, stored values of background and spleen);
# nibabel writes 1 / 0 for unscaled data, and NIfTI-1 reads a slope of 0 as unscaled too.
STORED_LABELS = {
    "uint8": (np.uint8, 1.0, 0.0, (0, 1)),
    "int16": (np.int16, 1.0, 0.0, (0, 1)),
    "float32": (np.float32, 0.0, 0.0, (0, 1)),
    "float32_scaled": (np.float32, np.float32(1 / 255), 0.0, (0, 255)),
    "uint8_scaled": (np.uint8, np.float32(1 / 255), 0.0, (0, 255)),
}


@pytest.mark.parametrize("encoding", LABEL_ENCODINGS)
def test_label_encodings_are_stored_as_documented(tmp_path, encoding):
    shape, spacing = (4, 16, 16), (5.0, 4.0, 4.0)
    task = write_msd_spleen(tmp_path, num_training=1, num_test=0, shape=shape, spacing=spacing,
                            label_encoding=encoding, apple_double=False)
    path = task / "labelsTr" / "spleen_19.nii.gz"
    header = _stored_header(path)
    dtype, slope, inter, (background, spleen) = STORED_LABELS[encoding]
    assert header.get_data_dtype() == dtype
    np.testing.assert_equal([float(header["scl_slope"]), float(header["scl_inter"])],
                            [slope, inter])
    truth = spleen_phantom_case(19, shape=shape, spacing=spacing).label.array
    raw = nib.load(str(path)).dataobj.get_unscaled().transpose(2, 1, 0)
    np.testing.assert_array_equal(raw, np.where(truth == 1, spleen, background))
    # After the scaling, within float32 rounding of 0 / 1 (1/255 * 255 = 1.00000006).
    scaled = np.asarray(nib.load(str(path)).dataobj).transpose(2, 1, 0)
    np.testing.assert_allclose(scaled, truth, rtol=0, atol=1e-6)


def test_default_label_encoding_changes_from_case_to_case(tmp_path):
    task = write_msd_spleen(tmp_path, num_training=6, num_test=0, shape=(4, 16, 16),
                            spacing=(5.0, 4.0, 4.0), apple_double=False)
    stored = [
        _stored_header(task / "labelsTr" / f"spleen_{n}.nii.gz").get_data_dtype()
        for n in MSD_SPLEEN_TRAINING_CASES[:6]
    ]
    assert stored == [STORED_LABELS[e][0] for e in LABEL_ENCODINGS] + [np.uint8]


def test_ct_numbers_and_noise_are_plausible():
    case = spleen_phantom_case(2, seed=0)  # default 40 x 96 x 96 at 5 x 0.8 x 0.8 mm
    hu, spleen = case.image.array, case.label.array.astype(bool)
    assert case.image.spacing == (5.0, 0.8, 0.8) and hu.shape == (40, 96, 96)
    assert set(np.unique(case.label.array)) == {0, 1}
    assert 0.001 < spleen.mean() < 0.05
    # Enhanced spleen: 120 HU shifted by at most 6 HU; noise 10 HU at this voxel size.
    assert 112.0 < np.median(hu[spleen]) < 128.0
    interior = spleen & np.roll(spleen, 1, axis=2) & np.roll(spleen, -1, axis=2)
    assert 9.0 < hu[interior].std() < 11.0
    assert hu[0, 0, 0] < -950  # air in the corner of the field of view


def test_same_seed_same_case_other_seed_other_case():
    a = spleen_phantom_case(9, shape=SHAPE, spacing=SPACING, seed=4)
    b = spleen_phantom_case(9, shape=SHAPE, spacing=SPACING, seed=4)
    c = spleen_phantom_case(9, shape=SHAPE, spacing=SPACING, seed=5)
    np.testing.assert_array_equal(a.image.array, b.image.array)
    np.testing.assert_array_equal(a.image.affine, b.image.affine)
    assert not np.array_equal(a.label.array, c.label.array)


def test_existing_task_folder_is_never_overwritten(task):
    before = (task / "dataset.json").read_bytes()
    with pytest.raises(LayoutError, match="Task09_Spleen: already exists"):
        write_msd_spleen(task.parent, num_training=1, num_test=0, shape=SHAPE, spacing=SPACING)
    assert (task / "dataset.json").read_bytes() == before


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"num_training": 0}, "num_training must be in 1..41"),
        ({"num_test": 21}, "num_test must be in 0..20"),
        ({"seed": -1}, "seed must be a non-negative integer"),
        ({"label_encoding": "float64"}, "label_encoding must be one of"),
    ],
)
def test_bad_arguments_are_refused(tmp_path, kwargs, message):
    with pytest.raises(ValueError, match=message):
        write_msd_spleen(tmp_path, shape=SHAPE, spacing=SPACING, **kwargs)
    assert not (tmp_path / "Task09_Spleen").exists()


def test_command_line_writes_without_apple_double_when_asked(tmp_path, capsys):
    main([str(tmp_path), "--num-training", "1", "--num-test", "0", "--shape", "4", "16", "16",
          "--spacing", "5", "4", "4", "--no-apple-double", "--label-encoding", "float32"])
    task = tmp_path / "Task09_Spleen"
    assert _stored_header(task / "labelsTr" / "spleen_19.nii.gz").get_data_dtype() == np.float32
    assert capsys.readouterr().out.strip() == str(task)
    assert sorted(p.name for p in (task / "imagesTr").iterdir()) == ["spleen_19.nii.gz"]
    assert nib.load(str(task / "imagesTr" / "spleen_19.nii.gz")).shape == (16, 16, 4)
