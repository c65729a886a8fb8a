"""Session 24 findings of the MSD spleen / 3D path: builder, preprocessing, sliding window,
HighResNet. Expected values come from nibabel, numpy formulas or hand-worked cases."""

import nibabel as nib
import numpy as np
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
