"""Downloads as they arrive on users' disks, found by a probe over the builders' and
``kseg predict``'s file listing: archives extracted on a Mac, links, copied patient folders.
Inputs are written here with nibabel and PIL, never by kseg."""

from __future__ import annotations

import json
import os
import types

import nibabel as nib
import numpy as np
import pytest
from etils import epath
from PIL import Image

from kseg.errors import LayoutError, UnreadableFileError
from kseg.predict import read_inputs

# What macOS writes as "._<name>" beside every file it archives: AppleDouble magic, version.
_APPLE_DOUBLE = b"\x00\x05\x16\x07\x00\x02\x00\x00Mac OS X        " + bytes(50)


def test_a_nifti_folder_extracted_on_a_mac_gives_its_volumes_only(tmp_path):
    """The MSD Task09 tar carries a ``._spleen_<n>.nii.gz`` beside every volume."""
    volume = np.arange(2 * 3 * 4, dtype=np.int16).reshape(2, 3, 4)
    nib.save(nib.Nifti1Image(volume, np.eye(4)), tmp_path / "spleen_1.nii.gz")
    (tmp_path / "._spleen_1.nii.gz").write_bytes(_APPLE_DOUBLE)

    [(name, path, _, read, _)] = read_inputs(tmp_path, {"modality": "CT", "kind": "volume"})

    assert (name, path) == ("spleen_1", tmp_path / "spleen_1.nii.gz")
    # kseg volumes are (z, y, x); the NIfTI array is (x, y, z)
    np.testing.assert_array_equal(read.array, volume.transpose(2, 1, 0))


def test_a_link_to_a_missing_radiograph_is_named_not_dropped(tmp_path):
    Image.fromarray(np.full((8, 8), 200, np.uint8)).save(tmp_path / "a.png")
    os.symlink(tmp_path / "moved away.png", tmp_path / "b.png")

    with pytest.raises(UnreadableFileError, match="b.png: is a link to .*moved away.png"):
        read_inputs(tmp_path, {"modality": "radiograph", "kind": "slice"})


def _chaos_ct_split_generators(manual):
    """The CT builder's split generators; folders are listed, no file is read yet."""
    from tfds_builders.chaos.chaos_dataset_builder import Builder

    builder = Builder(config="ct", data_dir=str(manual.parent / "tfds"))
    dl_manager = types.SimpleNamespace(manual_dir=str(manual), _manual_dir=str(manual))
    return builder._split_generators(dl_manager)


def test_a_chaos_patient_copied_as_01_beside_1_is_refused(tmp_path):
    """Both folder names read as patient 1: built as two patients, one person's slices
    could land in two folds."""
    for name in ("1", "01", "2", "3", "4", "5"):  # enough patients for five folds
        (tmp_path / "manual" / "Train_Sets" / "CT" / name).mkdir(parents=True)

    with pytest.raises(LayoutError, match=r"CT/1: is patient 1, as .*CT/01 is"):
        _chaos_ct_split_generators(tmp_path / "manual")


def test_a_link_to_a_missing_xray_image_is_named_not_dropped(tmp_path):
    """Only its mask's orphan warning hinted at the image the builder left out."""
    from tfds_builders.xray.layout import find_records
    from tfds_builders.xray.xray_dataset_builder import Builder

    for folder in ("images", "masks"):
        (tmp_path / folder).mkdir()
        for name in ("a.png", "b.png"):
            Image.fromarray(np.full((8, 8), 255, np.uint8)).save(tmp_path / folder / name)
    (tmp_path / "images" / "b.png").unlink()
    os.symlink(tmp_path / "elsewhere" / "b.png", tmp_path / "images" / "b.png")

    with pytest.raises(UnreadableFileError, match="images/b.png: is a link to .*elsewhere"):
        find_records(epath.Path(tmp_path), Builder.builder_configs["generic"])


def test_an_msd_volume_with_an_upper_case_suffix_is_not_left_out_unlisted(tmp_path):
    from tfds_builders.msd_spleen.layout import cases_from_dataset_json

    task = tmp_path / "Task09_Spleen"
    volume = nib.Nifti1Image(np.zeros((4, 4, 2), np.int16), np.eye(4))
    for folder, name in (("imagesTr", "spleen_2"), ("labelsTr", "spleen_2"),
                         ("imagesTr", "spleen_3")):  # fmt: skip
        (task / folder).mkdir(parents=True, exist_ok=True)
        nib.save(volume, task / folder / f"{name}.nii.gz")
    # renamed after saving: nibabel rewrites the case of the suffixes it is given
    (task / "imagesTr" / "spleen_3.nii.gz").rename(task / "imagesTr" / "spleen_3.Nii.Gz")
    entry = {"image": "./imagesTr/spleen_2.nii.gz", "label": "./labelsTr/spleen_2.nii.gz"}
    (task / "dataset.json").write_text(json.dumps({"training": [entry]}))

    with pytest.raises(LayoutError, match=r"imagesTr: holds volumes .* \['spleen_3.Nii.Gz'\]"):
        cases_from_dataset_json(epath.Path(task))


def _ground_folder(tmp_path):
    """A CHAOS Ground folder of two masks (their content is not read when pairing)."""
    ground = tmp_path / "Ground"
    ground.mkdir()
    for name in ("liver_GT_000.png", "liver_GT_001.png"):
        (ground / name).write_bytes(b"")
    return ground


def test_a_folder_named_like_a_chaos_mask_is_not_counted_as_one(tmp_path):
    from tfds_builders.chaos.layout import masks_in_array_order

    ground = _ground_folder(tmp_path)
    (ground / "liver_GT_002.png").mkdir()
    slices = [str(tmp_path / "DICOM_anon" / name) for name in ("i0001.dcm", "i0000.dcm")]

    paired = masks_in_array_order(slices, tmp_path / "DICOM_anon", epath.Path(ground))

    assert paired == [str(ground / "liver_GT_001.png"), str(ground / "liver_GT_000.png")]


def test_a_link_to_a_missing_chaos_mask_is_named(tmp_path):
    from tfds_builders.chaos.layout import masks_in_array_order

    ground = _ground_folder(tmp_path)
    os.symlink(tmp_path / "gone.png", ground / "liver_GT_002.png")
    slices = [str(tmp_path / "DICOM_anon" / f"i000{n}.dcm") for n in range(3)]

    with pytest.raises(UnreadableFileError, match="liver_GT_002.png: is a link to .*gone.png"):
        masks_in_array_order(slices, tmp_path / "DICOM_anon", epath.Path(ground))


def _msd_layout_error(manual):
    from tfds_builders.msd_spleen.layout import task_folder

    task_folder(manual)


def _montgomery_layout_error(manual):
    from tfds_builders.xray.layout import find_records
    from tfds_builders.xray.xray_dataset_builder import Builder

    find_records(manual, Builder.builder_configs["montgomery"])


@pytest.mark.parametrize(
    ("archive_folder", "inside", "read"),
    [
        ("chaos_zip", "Train_Sets/CT/1", _chaos_ct_split_generators),
        ("msd_tar", "Task09_Spleen/dataset.json", _msd_layout_error),
        ("montgomery_zip", "MontgomerySet/CXR_png/x.png", _montgomery_layout_error),
    ],
)
def test_a_manual_folder_one_level_too_high_says_where_the_data_is(
    tmp_path, archive_folder, inside, read
):
    manual = tmp_path / "manual"
    (manual / archive_folder / inside).parent.mkdir(parents=True)
    (manual / archive_folder / inside).touch()
    # a Mac-made zip's copy of the tree, which sorts first, holds no data to point at
    (manual / "__MACOSX" / inside).parent.mkdir(parents=True)

    with pytest.raises(LayoutError) as caught:
        read(epath.Path(manual))

    assert str(caught.value).endswith(f": point the manual folder at {manual / archive_folder})")


def test_a_dead_link_in_a_dicom_series_folder_is_named_not_left_out(tmp_path):
    """read_dicom_series itself: the slice behind the link would be missing without a
    word (the series one slice shorter at either end)."""
    import shutil

    from pydicom.data import get_testdata_file

    from kseg.io import read_dicom_series

    folder = tmp_path / "series"
    folder.mkdir()
    shutil.copy(get_testdata_file("CT_small.dcm"), folder / "01.dcm")
    (folder / "02.dcm").symlink_to(tmp_path / "gone.dcm")

    with pytest.raises(UnreadableFileError, match=r"02\.dcm: is a link to .*gone\.dcm, which "):
        read_dicom_series(folder)
