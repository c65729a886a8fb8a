"""Synthetic phantoms and the CHAOS-layout writer, read back with pydicom and PIL only."""

import pathlib

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, MRImageStorage

from kseg.errors import LayoutError
from kseg.phantoms.chaos import (
    CHAOS_CT_PATIENTS,
    CHAOS_MASK_ENCODINGS,
    CHAOS_MR_PATIENTS,
    PhantomLabel,
    abdominal_phantom,
    chaos_phantom_case,
    default_mask_encoding,
    main,
    mr_signal,
    write_chaos,
)

SHAPE = (16, 96, 96)
SPACING = (3.0, 4.0, 4.0)


@pytest.fixture(scope="module")
def phantom():
    return abdominal_phantom(SHAPE, SPACING, seed=4)


def test_same_seed_same_phantom_other_seed_other_anatomy(phantom):
    hu, labels = phantom
    again_hu, again_labels = abdominal_phantom(SHAPE, SPACING, seed=4)
    np.testing.assert_array_equal(hu, again_hu)
    np.testing.assert_array_equal(labels, again_labels)
    _, other_labels = abdominal_phantom(SHAPE, SPACING, seed=5)
    assert not np.array_equal(labels, other_labels)
    assert hu.dtype == np.int16 and labels.dtype == np.uint8 and hu.shape == SHAPE


@pytest.mark.parametrize(
    "label, low, high",
    [
        (PhantomLabel.BACKGROUND, -1003, -997),
        (PhantomLabel.FAT, -110, -90),
        (PhantomLabel.MUSCLE, 30, 50),
        (PhantomLabel.LIVER, 50, 70),
        (PhantomLabel.SPLEEN, 40, 60),
        (PhantomLabel.RIGHT_KIDNEY, 20, 40),
        (PhantomLabel.LEFT_KIDNEY, 20, 40),
        (PhantomLabel.BONE, 400, 500),
    ],
)
def test_mean_ct_number_of_each_tissue_is_textbook(phantom, label, low, high):
    hu, labels = phantom
    region = labels == label
    assert region.sum() > 20
    assert low <= hu[region].mean() <= high


def test_noise_follows_voxel_volume():
    # 12 HU at 0.75 x 0.75 x 3 mm; 4x the voxel volume halves the standard deviation.
    # Measured in soft tissue: one mean per tissue, and far from the -1024 clip of air.
    for spacing, expected in (((3.0, 0.75, 0.75), 12.0), ((3.0, 1.5, 1.5), 6.0)):
        hu, labels = abdominal_phantom((4, 128, 128), spacing, seed=0)
        tissue = hu[labels == PhantomLabel.SOFT_TISSUE].astype(float)
        assert abs(tissue.std() - expected) < 0.1 * expected


def test_anatomy_is_where_radiologists_expect_it(phantom):
    _, labels = phantom
    nz, ny, nx = labels.shape
    z, _, x = (np.nonzero(labels == PhantomLabel.LIVER)[axis].mean() for axis in range(3))
    assert x < nx / 2  # patient's right is on the image's left
    assert np.nonzero(labels == PhantomLabel.SPLEEN)[2].mean() > nx / 2
    assert np.nonzero(labels == PhantomLabel.RIGHT_KIDNEY)[2].mean() < nx / 2
    assert np.nonzero(labels == PhantomLabel.LEFT_KIDNEY)[2].mean() > nx / 2
    kidneys_z = np.nonzero(labels == PhantomLabel.RIGHT_KIDNEY)[0].mean()
    assert kidneys_z < z  # kidneys below the liver (z index 0 is the feet)
    liver_per_slice = (labels == PhantomLabel.LIVER).sum(axis=(1, 2))
    # The liver appears and disappears inside the volume.
    assert liver_per_slice[0] == 0 and liver_per_slice[-1] == 0 and liver_per_slice.max() > 0
    # Bone lies posterior to the centre, on the midline.
    bone_y, bone_x = (np.nonzero(labels == PhantomLabel.BONE)[axis].mean() for axis in (1, 2))
    assert bone_y > ny / 2 and abs(bone_x - (nx - 1) / 2) < 2


def test_in_plane_anatomy_is_laid_out_in_millimetres():
    # The same field of view at two resolutions holds the same organ fractions.
    _, coarse = abdominal_phantom((6, 64, 64), (3.0, 6.0, 6.0), seed=2)
    _, fine = abdominal_phantom((6, 128, 128), (3.0, 3.0, 3.0), seed=2)
    for label in (PhantomLabel.LIVER, PhantomLabel.BONE, PhantomLabel.FAT):
        coarse_fraction = (coarse == label).mean()
        fine_fraction = (fine == label).mean()
        assert abs(coarse_fraction - fine_fraction) < 0.1 * fine_fraction


def test_mr_signal_has_the_expected_contrasts():
    _, labels = abdominal_phantom((6, 64, 64), (7.0, 6.0, 6.0), seed=1)
    t1 = mr_signal(labels, "T1_IN", seed=1)
    t2 = mr_signal(labels, "T2SPIR", seed=1)
    assert t1.dtype == np.uint16 and t1.shape == labels.shape and t1.max() <= 4095

    def mean(image, label):
        return image[labels == label].astype(float).mean()

    assert mean(t1, PhantomLabel.FAT) > 2 * mean(t2, PhantomLabel.FAT)  # fat suppression
    assert mean(t2, PhantomLabel.SPLEEN) > mean(t2, PhantomLabel.LIVER)
    assert mean(t1, PhantomLabel.LIVER) > mean(t1, PhantomLabel.SPLEEN)
    # Rician noise keeps air positive: its mean is sigma * sqrt(pi / 2) = 18.8.
    assert 16 < mean(t1, PhantomLabel.BACKGROUND) < 22
    with pytest.raises(ValueError, match="sequence"):
        mr_signal(labels, "FLAIR")


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"shape": (0, 8, 8)}, "shape"),
        ({"spacing": (1.0, -1.0, 1.0)}, "spacing"),
        ({"seed": -3}, "seed"),
    ],
)
def test_phantom_rejects_bad_geometry(kwargs, message):
    with pytest.raises(ValueError, match=message):
        abdominal_phantom(**kwargs)


# --- the CHAOS layout --------------------------------------------------------------------


def _position_index(dataset, case):
    """Slice index from the DICOM header's position, independent of the file's name."""
    z = float(dataset.ImagePositionPatient[2])
    k = (z - case.origin[2]) / case.spacing[0]
    assert abs(k - round(k)) < 1e-3
    return int(round(k))


def _name_order_is_not_position_order(datasets, case):
    positions = [float(ds.ImagePositionPatient[2]) for ds in datasets]
    instances = [int(ds.InstanceNumber) for ds in datasets]
    by_instance = [p for _, p in sorted(zip(instances, positions, strict=True))]
    assert positions != sorted(positions) and positions != sorted(positions, reverse=True)
    assert by_instance != sorted(positions) and by_instance != sorted(positions, reverse=True)
    assert sorted(_position_index(ds, case) for ds in datasets) == list(range(len(datasets)))


_MODE_OF_ENCODING = {
    "1bit": "1", "8bit": "L", "8bit_01": "L", "16bit": "I;16", "16bit_01": "I;16",
    "palette_grey": "P", "palette_index": "P", "rgb": "RGB", "rgba": "RGBA", "jpg": "L",
}


def _chaos_grey(path, encoding, modality):
    """The CHAOS grey values (0/255 CT, 63..252 MR) a mask file holds, decoded with Pillow
    by what each encoding is documented to store."""
    with Image.open(path) as image:
        assert image.mode == _MODE_OF_ENCODING[encoding], path
        stored = np.asarray(image).astype(np.int64)
        colours = np.asarray(image.convert("RGB")).astype(np.int64)
    if encoding in ("1bit", "8bit_01", "16bit_01"):
        assert set(np.unique(stored).tolist()) <= {0, 1}
        return stored * 255
    if encoding == "16bit":
        assert not (stored % 257).any()
        return stored // 257
    if encoding in ("palette_grey", "rgb", "rgba"):
        assert (colours == colours[..., :1]).all()  # grey entries / equal channels
        if encoding == "rgba":
            assert (stored[..., 3] == 255).all()
        return colours[..., 0]
    if encoding == "palette_index":
        used = colours[stored > 0]
        assert not (used == used[..., :1]).all(axis=-1).any()  # colour entries
        return stored * 255 if modality == "CT" else stored
    return stored  # 8bit, jpg


@pytest.fixture(scope="module")
def ct_root(tmp_path_factory):
    return write_chaos(
        tmp_path_factory.mktemp("chaos_ct"), modality="CT", num_patients=3, num_slices=6,
        size=48, seed=1, progress=False,
    )


def test_ct_layout_headers_and_name_rank_pairing(ct_root):
    patients = sorted((ct_root / "Train_Sets" / "CT").iterdir(), key=lambda p: int(p.name))
    assert [p.name for p in patients] == [str(n) for n in CHAOS_CT_PATIENTS[:3]]
    series_uids = set()
    for index, patient in enumerate(patients):
        case = chaos_phantom_case("CT", index, num_slices=6, size=48, seed=1)
        dicoms = sorted((patient / "DICOM_anon").glob("*.dcm"))
        masks = sorted((patient / "Ground").glob("*.png"))
        assert [p.name for p in dicoms][:2] == ["i0000,0000b.dcm", "i0001,0000b.dcm"]
        assert [p.name for p in masks][:2] == ["liver_GT_000.png", "liver_GT_001.png"]
        assert len(dicoms) == len(masks) == 6
        datasets = [pydicom.dcmread(p) for p in dicoms]
        _name_order_is_not_position_order(datasets, case)
        for dataset, mask_path in zip(datasets, masks, strict=True):
            assert dataset.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
            assert dataset.SOPClassUID == CTImageStorage and dataset.Modality == "CT"
            assert str(dataset.PatientName) == "KSEG^PHANTOM"
            assert dataset.ImageComments == "synthetic kseg phantom"
            assert dataset.PatientSex in ("F", "M")
            assert (dataset.Rows, dataset.Columns, dataset.BitsAllocated) == (48, 48, 16)
            assert 360 <= float(dataset.PixelSpacing[0]) * 48 <= 405
            assert float(dataset.RescaleIntercept) == -1024 and float(dataset.RescaleSlope) == 1
            k = _position_index(dataset, case)
            slope, intercept = float(dataset.RescaleSlope), float(dataset.RescaleIntercept)
            hu = dataset.pixel_array * slope + intercept
            np.testing.assert_array_equal(hu, case.images["CT"][k])
            # The official rule: the mask with this file's sorted-name rank is its mask.
            grey = _chaos_grey(mask_path, default_mask_encoding("CT", index), "CT")
            expected = np.where(case.labels[k] == PhantomLabel.LIVER, 255, 0)
            np.testing.assert_array_equal(grey, expected)
        series_uids |= {ds.SeriesInstanceUID for ds in datasets}
        assert len({ds.SOPInstanceUID for ds in datasets}) == 6
    assert len(series_uids) == 3
    liver_masks = [np.asarray(Image.open(p)) for p in (ct_root / "Train_Sets/CT").rglob("*.png")]
    assert any(m.any() for m in liver_masks) and not all(m.any() for m in liver_masks)
    with Image.open(patients[0] / "Ground" / "liver_GT_000.png") as first:
        assert first.mode == "1"  # patient 0 gets the real CHAOS CT format: 1-bit PNG


def test_same_arguments_write_identical_files(ct_root, tmp_path):
    again = write_chaos(
        tmp_path, modality="CT", num_patients=3, num_slices=6, size=48, seed=1, progress=False
    )
    first = sorted(p.relative_to(ct_root) for p in ct_root.rglob("*") if p.is_file())
    second = sorted(p.relative_to(again) for p in again.rglob("*") if p.is_file())
    assert first == second
    for relative in first:
        assert (ct_root / relative).read_bytes() == (again / relative).read_bytes()


def test_existing_patient_folders_are_never_overwritten(tmp_path):
    existing = tmp_path / "Train_Sets" / "CT" / "1"
    existing.mkdir(parents=True)
    (existing / "keep.txt").write_text("real data")
    with pytest.raises(LayoutError, match="already exists"):
        write_chaos(tmp_path, num_patients=1, num_slices=2, size=16)
    assert [p.name for p in existing.iterdir()] == ["keep.txt"]
    assert [p.name for p in existing.parent.iterdir()] == ["1"]  # no staging folder left


def test_mr_layout_pairs_one_t1_ground_stack_with_both_phases(tmp_path):
    root = write_chaos(
        tmp_path, modality="MR", num_patients=2, num_slices=5, size=32, seed=3, progress=False
    )
    lut = {0: 0, PhantomLabel.LIVER: 63, PhantomLabel.RIGHT_KIDNEY: 126,
           PhantomLabel.LEFT_KIDNEY: 189, PhantomLabel.SPLEEN: 252}
    patients = sorted((root / "Train_Sets" / "MR").iterdir(), key=lambda p: int(p.name))
    assert [p.name for p in patients] == [str(n) for n in CHAOS_MR_PATIENTS[:2]]
    seen_values = set()
    for index, patient in enumerate(patients):
        case = chaos_phantom_case("MR", index, num_slices=5, size=32, seed=3)
        expected_masks = np.vectorize(lambda v: lut.get(v, 0))(case.labels)
        for dicom_dir, ground_dir, sequence in (
            ("T1DUAL/DICOM_anon/InPhase", "T1DUAL/Ground", "T1_IN"),
            ("T1DUAL/DICOM_anon/OutPhase", "T1DUAL/Ground", "T1_OUT"),
            ("T2SPIR/DICOM_anon", "T2SPIR/Ground", "T2SPIR"),
        ):
            dicoms = sorted((patient / dicom_dir).glob("*.dcm"))
            masks = sorted((patient / ground_dir).glob("*.png"))
            assert len(dicoms) == len(masks) == 5
            assert all(p.name.startswith("IMG-") for p in dicoms)
            datasets = [pydicom.dcmread(p) for p in dicoms]
            _name_order_is_not_position_order(datasets, case)
            for dataset, mask_path in zip(datasets, masks, strict=True):
                assert dataset.SOPClassUID == MRImageStorage and dataset.Modality == "MR"
                assert str(dataset.PatientName) == "KSEG^PHANTOM"
                k = _position_index(dataset, case)
                np.testing.assert_array_equal(dataset.pixel_array, case.images[sequence][k])
                grey = _chaos_grey(mask_path, default_mask_encoding("MR", index), "MR")
                np.testing.assert_array_equal(grey, expected_masks[k])
                seen_values |= set(np.unique(grey).tolist())
        in_counters = [int(p.stem[-5:]) for p in (patient / "T1DUAL/DICOM_anon/InPhase").iterdir()]
        assert all(c % 2 == 0 for c in in_counters)
    assert seen_values <= {0, 63, 126, 189, 252} and 63 in seen_values


def test_command_line_writes_both_modalities(tmp_path):
    main([str(tmp_path), "--modality", "CT", "MR", "--num-patients", "1", "--num-slices", "2",
          "--size", "16", "--mask-encoding", "rgb"])
    assert len(list((tmp_path / "Train_Sets/CT/1/DICOM_anon").iterdir())) == 2
    assert len(list((tmp_path / "Train_Sets/MR/1/T2SPIR/Ground").iterdir())) == 2
    assert pathlib.Path(tmp_path / "Train_Sets/MR/1/T1DUAL/DICOM_anon/OutPhase").is_dir()
    for path in (tmp_path / "Train_Sets").rglob("Ground/*.png"):
        assert Image.open(path).mode == "RGB"


def test_command_line_default_fills_the_builders_five_folds_with_a_progress_bar(
    tmp_path, capsys
):
    main([str(tmp_path), "--num-slices", "1", "--size", "8"])
    patients = sorted((tmp_path / "Train_Sets" / "CT").iterdir(), key=lambda p: int(p.name))
    assert [p.name for p in patients] == [str(n) for n in CHAOS_CT_PATIENTS[:10]]
    err = capsys.readouterr().err
    assert "synthetic CHAOS CT patients" in err and "10/10" in err


@pytest.mark.parametrize("modality", ["CT", "MR"])
@pytest.mark.parametrize("encoding", sorted(CHAOS_MASK_ENCODINGS))
def test_every_mask_encoding_stores_the_chaos_values(tmp_path, modality, encoding):
    binary_only = encoding in ("1bit", "8bit_01", "16bit_01", "jpg")
    if modality == "MR" and binary_only:
        with pytest.raises(ValueError, match="cannot hold the MR grey levels"):
            write_chaos(tmp_path, modality="MR", num_patients=1, mask_encoding=encoding)
        return
    root = write_chaos(tmp_path, modality=modality, num_patients=1, num_slices=6, size=48,
                       seed=2, mask_encoding=encoding, progress=False)
    case = chaos_phantom_case(modality, 0, num_slices=6, size=48, seed=2)
    lut = np.zeros(len(PhantomLabel), np.int64)
    if modality == "CT":
        lut[PhantomLabel.LIVER] = 255
        grounds = ["Ground"]
    else:
        lut[[PhantomLabel.LIVER, PhantomLabel.RIGHT_KIDNEY, PhantomLabel.LEFT_KIDNEY,
             PhantomLabel.SPLEEN]] = [63, 126, 189, 252]
        grounds = ["T1DUAL/Ground", "T2SPIR/Ground"]
    sequence = "CT" if modality == "CT" else "T2SPIR"
    for ground in grounds:
        files = sorted((root / "Train_Sets" / modality / case.patient / ground).iterdir())
        assert {p.suffix for p in files} == {".jpg" if encoding == "jpg" else ".png"}
        for k, rank in enumerate(case.name_ranks[sequence if ground != "T1DUAL/Ground"
                                                 else "T1_IN"]):
            grey = _chaos_grey(files[rank], encoding, modality)
            expected = lut[case.labels[k]]
            if encoding == "jpg":  # lossy: all but a few edge pixels on the right side
                assert np.count_nonzero((grey > 127) != (expected > 0)) <= 0.02 * expected.size
            else:
                np.testing.assert_array_equal(grey, expected)


def test_unknown_mask_encoding_is_refused(tmp_path):
    with pytest.raises(ValueError, match="mask_encoding must be None or one of"):
        write_chaos(tmp_path, num_patients=1, mask_encoding="png")
