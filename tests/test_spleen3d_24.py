"""Session 24 findings of the MSD spleen / 3D path: builder, preprocessing, sliding window,
HighResNet. Expected values come from nibabel, numpy formulas or hand-worked cases."""

import nibabel as nib
import numpy as np
import pytest
from etils import epath

from tfds_builders.msd_spleen import msd_spleen_dataset_builder
from tfds_builders.msd_spleen.layout import Case


def _raw_config():
    return msd_spleen_dataset_builder.Builder.builder_configs["raw"]


def _case(folder, image, image_affine, label, label_affine, name="spleen_7"):
    nib.save(nib.Nifti1Image(image, image_affine), str(folder / f"{name}.nii.gz"))
    nib.save(nib.Nifti1Image(label, label_affine), str(folder / f"label_{name}.nii.gz"))
    folder = epath.Path(folder)
    return Case(name, folder / f"{name}.nii.gz", folder / f"label_{name}.nii.gz")


def test_label_stored_las_beside_an_lps_image_lands_on_its_voxels(tmp_path):
    # The CT in LPS (as dcm2niix / ITK write a DICOM series), its label saved in LAS by
    # another tool: the same voxel centres, the first axis flipped. The builder refused it.
    lps = np.array([[-0.8, 0.0, 0.0, 100.0],
                    [0.0, -0.8, 0.0, 90.0],
                    [0.0, 0.0, 2.5, -40.0],
                    [0.0, 0.0, 0.0, 1.0]])
    shape = (7, 6, 5)  # (i, j, k)
    rng = np.random.default_rng(0)
    image = rng.integers(-1000, 1000, shape).astype(np.int16)
    spleen = np.zeros(shape, np.uint8)
    spleen[1:3, 2:5, 1:4] = 1
    spleen[6, 0, 0] = 1  # one corner voxel, to see the flip
    # LAS: index i' = 6 - i, x = 100 - 0.8 * (6 - i') -> +0.8 per i', origin 100 - 4.8
    las = lps.copy()
    las[0, 0], las[0, 3] = 0.8, 100.0 - 0.8 * 6
    case = _case(tmp_path, image, lps, spleen[::-1].copy(), las)
    example = msd_spleen_dataset_builder.case_example(_raw_config(), case)
    np.testing.assert_array_equal(example["label"], spleen.transpose(2, 1, 0))
    np.testing.assert_array_equal(example["image"], image.transpose(2, 1, 0))


def test_label_stored_with_swapped_axes_lands_on_its_voxels(tmp_path):
    affine = np.diag([0.8, 0.7, 2.5, 1.0])
    affine[:3, 3] = (-10.0, 5.0, 30.0)
    shape = (7, 6, 5)
    image = np.arange(np.prod(shape), dtype=np.int16).reshape(shape)
    spleen = np.zeros(shape, np.uint8)
    spleen[2:4, 1:3, 0:2] = 1
    swapped = affine[:, [1, 0, 2, 3]]  # label stored (j, i, k)
    case = _case(tmp_path, image, affine, spleen.transpose(1, 0, 2).copy(), swapped)
    example = msd_spleen_dataset_builder.case_example(_raw_config(), case)
    np.testing.assert_array_equal(example["label"], spleen.transpose(2, 1, 0))


def test_evaluation_case_file_shows_the_ct_on_its_label_files_grid(tmp_path, monkeypatch):
    # A Task09-style case whose label is stored in LAS beside its LPS CT (accepted by the
    # builder since it holds the same voxels): the report's case file paired the CT as
    # stored with the label as stored, so the overlay showed the spleen mirrored.
    import argparse

    import kseg
    from kseg.data.pipeline import WINDOWS, window
    from kseg.recipes import msd_spleen

    task = tmp_path / "Task09_Spleen"
    for folder in ("imagesTr", "labelsTr"):
        (task / folder).mkdir(parents=True)
    (task / "dataset.json").write_text("{}")
    lps = np.array([[-2.0, 0.0, 0.0, 10.0], [0.0, -2.0, 0.0, 8.0],
                    [0.0, 0.0, 3.0, -4.0], [0.0, 0.0, 0.0, 1.0]])
    shape = (7, 6, 5)  # (i, j, k)
    image = np.arange(np.prod(shape), dtype=np.int16).reshape(shape) * 3 - 50
    spleen = np.zeros(shape, np.uint8)
    spleen[0:2, 1:4, 1:4] = 1  # at the low-i side only
    las = lps.copy()
    las[0, 0], las[0, 3] = 2.0, 10.0 - 2.0 * 6
    nib.save(nib.Nifti1Image(image, lps), str(task / "imagesTr" / "spleen_2.nii.gz"))
    nib.save(nib.Nifti1Image(spleen[::-1].copy(), las),
             str(task / "labelsTr" / "spleen_2.nii.gz"))
    # The model's input on the image's own grid (no preprocessing), and a model that
    # predicts the spleen exactly.
    truth = spleen.transpose(2, 1, 0)
    example = {"patient_id": "spleen_2", "input": truth[..., None].astype(np.float32),
               "affine": lps[:, [2, 1, 0, 3]]}
    monkeypatch.setattr(kseg, "load_model", lambda *a, **k: (lambda batch: batch))
    monkeypatch.setattr(msd_spleen, "prepare", lambda args: None)
    monkeypatch.setattr(msd_spleen, "whole_volumes", lambda builder, split: [example])
    args = argparse.Namespace(
        output_dir=tmp_path / "run", manual_dir=tmp_path, folds=5, test_fold=0,
        validation_fold=1, roi_size=4, overlap=0.25, batch_size=1, largest_component=False,
    )
    table = msd_spleen.evaluate(args, split="test")
    assert table.column("dice") == pytest.approx([1.0])
    case = np.load(tmp_path / "run" / "evaluation" / "test" / "cases" / "spleen_2.npz")
    # the label file's (k, j, i') order, i' = 6 - i
    expected_image = window(image[::-1].transpose(2, 1, 0), *WINDOWS["spleen_msd"]).numpy()
    np.testing.assert_array_equal(case["reference"], spleen[::-1].transpose(2, 1, 0))
    np.testing.assert_array_equal(case["prediction"], case["reference"])
    np.testing.assert_allclose(case["image"], expected_image)


def test_real_spleen_label_saved_las_beside_the_real_ras_ct(shared_data, tmp_path):
    # TotalSegmentator's real CT (RAS, 3 mm) and its spleen, the label re-saved by nibabel
    # in LAS (first axis flipped), as another tool could write it.
    folder = shared_data / "totalseg-ct"
    stored = nib.load(str(folder / "organs" / "spleen.nii.gz"))
    spleen = np.asarray(stored.dataobj)
    las = nib.as_closest_canonical(stored).affine.copy()
    las[:, 0] *= -1
    las[:3, 3] = stored.affine[:3, :3] @ (spleen.shape[0] - 1, 0, 0) + stored.affine[:3, 3]
    nib.save(nib.Nifti1Image(spleen[::-1].copy(), las), str(tmp_path / "spleen_las.nii.gz"))
    case = Case("spleen_1", epath.Path(folder / "example_ct_sm.nii.gz"),
                epath.Path(tmp_path / "spleen_las.nii.gz"))
    example = msd_spleen_dataset_builder.case_example(_raw_config(), case)
    assert spleen.sum() > 9000
    np.testing.assert_array_equal(example["label"], spleen.transpose(2, 1, 0))


def test_sliding_window_refuses_windows_a_unet_cannot_take_naming_roi_size():
    # A 3D U-Net of depth 2 halves twice: windows must be multiples of 4. The 10-voxel
    # windows failed in TensorFlow (InvalidArgumentError, "Pad or crop" the input), which
    # sliding_window's caller cannot do: the windows' size is roi_size.
    from kseg.inference import sliding_window
    from kseg.models import unet

    model = unet((None, None, None, 1), num_classes=1, depth=2, base_filters=2)
    volume = np.zeros((12, 20, 20, 1), np.float32)
    with pytest.raises(ValueError, match=r"roi_size \(8, 10, 10\): unet needs window sizes "
                                         r"divisible by 4 .*axes \[1, 2\]"):
        sliding_window(model, volume, (8, 10, 10), progress=False)
    # whole axes (None) of 12 and 20 voxels are multiples of 4: accepted
    assert sliding_window(model, volume, (None, 8, None), progress=False).shape == (12, 20, 20, 1)
