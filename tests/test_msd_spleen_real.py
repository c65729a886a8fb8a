"""The msd_spleen builder on real CT and a real spleen mask (skipped without the sample data).

The TotalSegmentator sample CT and its spleen mask (``../shared/data/totalseg-ct``) are laid
out as two Task09 cases in a temporary folder; the builder's spleen voxel count must equal
the count nibabel reads from the mask file.
"""

import dataclasses
import json
import shutil

import nibabel as nib
import numpy as np
import tensorflow_datasets as tfds

from tfds_builders.msd_spleen import msd_spleen_dataset_builder


def test_real_spleen_mask_is_counted_voxel_for_voxel(shared_data, tmp_path):
    source = shared_data / "totalseg-ct"
    task = tmp_path / "manual" / "Task09_Spleen"
    for folder in ("imagesTr", "labelsTr"):
        (task / folder).mkdir(parents=True)
    names = ("spleen_1", "spleen_2")
    for name in names:
        shutil.copyfile(source / "example_ct_sm.nii.gz", task / "imagesTr" / f"{name}.nii.gz")
        shutil.copyfile(source / "organs" / "spleen.nii.gz", task / "labelsTr" / f"{name}.nii.gz")
    training = [{"image": f"./imagesTr/{n}.nii.gz", "label": f"./labelsTr/{n}.nii.gz"}
                for n in names]
    (task / "dataset.json").write_text(json.dumps({"training": training, "test": []}))
    truth = int(np.count_nonzero(nib.load(str(source / "organs" / "spleen.nii.gz")).dataobj))
    assert truth > 0
    config = dataclasses.replace(msd_spleen_dataset_builder.Builder.builder_configs["raw"],
                                 name="raw_2fold", num_folds=2)
    builder = msd_spleen_dataset_builder.Builder(config=config, data_dir=tmp_path / "data")
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=str(tmp_path / "manual"))
    )
    stats = builder.info.metadata["foreground"]
    assert {split: s["voxels_per_label"]["spleen"] for split, s in stats.items()} == {
        "fold0": truth, "fold1": truth
    }
    assert builder.info.splits.keys() == {"fold0", "fold1"}  # no empty unlabeled split
