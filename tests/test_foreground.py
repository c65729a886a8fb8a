"""ForegroundTally: required labels missing are errors, optional ones warn, counts per split.

Every expected count below is worked out by hand from the small arrays in the test.
"""

import json
import warnings

import numpy as np
import pytest
import tensorflow_datasets as tfds

from kseg.errors import MaskError
from tfds_builders._foreground import EmptyLabelWarning, ForegroundTally

ORGANS = {1: "liver", 2: "spleen"}


def _volume(*slices):
    return np.stack([np.array(s, dtype=np.uint8) for s in slices])


# Three 3x3 slices: the first empty, the second with two liver voxels, the third with three
# liver voxels and one spleen voxel.
THREE_SLICES = _volume(
    [[0, 0, 0], [0, 0, 0], [0, 0, 0]],
    [[0, 1, 1], [0, 0, 0], [0, 0, 0]],
    [[1, 1, 0], [0, 2, 0], [1, 0, 0]],
)


def test_required_label_missing_is_a_mask_error_naming_patient_and_folder():
    metadata = {}
    tally = ForegroundTally(ORGANS, required=[1, 2], metadata=metadata)
    liver_only = np.where(THREE_SLICES == 2, 0, THREE_SLICES)
    with pytest.raises(MaskError) as raised:
        tally.check("fold0", "CT-7", liver_only, mask_source="Train_Sets/CT/7/Ground")
    message = str(raised.value)
    assert message.startswith("Train_Sets/CT/7/Ground: patient CT-7:")
    assert "no spleen (2)" in message and "values found: [0, 1]" in message
    assert raised.value.path == "Train_Sets/CT/7/Ground"
    # The refused patient is not counted.
    assert metadata == {"foreground": {}}


def test_all_zero_volume_names_every_missing_required_label():
    tally = ForegroundTally(ORGANS, required=[1, 2], metadata={})
    with pytest.raises(MaskError, match=r"no liver \(1\), spleen \(2\).*values found: \[0\]"):
        tally.check("fold0", "p1", np.zeros((2, 4, 4), np.uint8), mask_source="masks/p1")


def test_optional_label_missing_warns_once_per_patient_and_is_listed():
    metadata = {}
    tally = ForegroundTally(ORGANS, required=[1], metadata=metadata)
    liver_only = np.where(THREE_SLICES == 2, 0, THREE_SLICES)
    with pytest.warns(EmptyLabelWarning, match=r"^masks/p3: patient p3 has no spleen \(2\) voxel"):
        tally.check("fold1", "p3", liver_only, mask_source="masks/p3")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a patient with both labels warns nothing
        tally.check("fold1", "p4", THREE_SLICES, mask_source="masks/p4")
    stats = metadata["foreground"]["fold1"]
    assert stats["patients_without_label"] == {"liver": [], "spleen": ["p3"]}
    assert stats["patients"] == 2


def test_counts_per_split_match_the_hand_count():
    metadata = {}
    tally = ForegroundTally(ORGANS, required=[1], metadata=metadata)
    tally.check("fold0", "a", THREE_SLICES, mask_source="a")
    with pytest.warns(EmptyLabelWarning):
        # Two more slices, one with a single liver voxel in the corner.
        tally.check("fold0", "b", _volume([[0, 0], [0, 1]], [[0, 0], [0, 0]]), mask_source="b")
        tally.check("test", "c", _volume([[1, 1], [1, 1]]), mask_source="c")
    assert metadata["foreground"] == {
        "fold0": {
            "patients": 2,
            "slices": 5,
            "slices_with_foreground": 3,
            "voxels_per_label": {"liver": 5 + 1, "spleen": 1},
            "patients_without_label": {"liver": [], "spleen": ["b"]},
        },
        "test": {
            "patients": 1,
            "slices": 1,
            "slices_with_foreground": 1,
            "voxels_per_label": {"liver": 4, "spleen": 0},
            "patients_without_label": {"liver": [], "spleen": ["c"]},
        },
    }


def test_a_2d_label_map_counts_as_one_slice():
    metadata = {}
    tally = ForegroundTally({1: "lungs"}, required=[1], metadata=metadata)
    radiograph = np.zeros((5, 6), np.uint8)
    radiograph[1:3, 2:5] = 1  # 2 rows x 3 columns
    tally.check("train", "CHNCXR_0001_0", radiograph, mask_source="masks/CHNCXR_0001_0.png")
    tally.check("train", "CHNCXR_0002_0", radiograph.T, mask_source="masks/CHNCXR_0002_0.png")
    stats = metadata["foreground"]["train"]
    assert (stats["patients"], stats["slices"], stats["slices_with_foreground"]) == (2, 2, 2)
    assert stats["voxels_per_label"] == {"lungs": 12}


@pytest.mark.parametrize(
    "encoding",
    [np.bool_, np.uint8, np.int16, np.float32],
    ids=lambda dtype: np.dtype(dtype).name,
)
def test_binary_masks_count_the_same_in_every_stored_dtype(encoding):
    metadata = {}
    tally = ForegroundTally({1: "spleen"}, required=[1], metadata=metadata)
    spleen = (THREE_SLICES > 0).astype(encoding)
    tally.check("fold0", "spleen_19", spleen, mask_source="labelsTr/spleen_19.nii.gz")
    stats = metadata["foreground"]["fold0"]
    assert stats["voxels_per_label"] == {"spleen": 6}
    assert stats["slices_with_foreground"] == 2


def test_an_empty_volume_of_optional_labels_counts_its_slices():
    metadata = {}
    tally = ForegroundTally(ORGANS, required=[], metadata=metadata)
    with pytest.warns(EmptyLabelWarning):
        tally.check("fold0", "p", np.zeros((0, 4, 4), np.uint8), mask_source="p")
    assert metadata["foreground"]["fold0"]["slices"] == 0


def test_statistics_survive_the_tfds_metadata_file(tmp_path):
    metadata = tfds.core.MetadataDict()
    tally = ForegroundTally(ORGANS, required=[1], metadata=metadata)
    tally.check("fold0", "a", THREE_SLICES, mask_source="a")
    metadata.save_metadata(str(tmp_path))
    reloaded = tfds.core.MetadataDict()
    reloaded.load_metadata(str(tmp_path))
    assert reloaded["foreground"]["fold0"]["voxels_per_label"] == {"liver": 5, "spleen": 1}
    assert json.loads(json.dumps(reloaded["foreground"])) == metadata["foreground"]


@pytest.mark.parametrize(
    "label_names, required, message",
    [
        ({1: "liver"}, [2], r"required labels \[2\] are not in label_names"),
        ({0: "background", 1: "liver"}, [1], r"leave out background \(0\)"),
    ],
)
def test_inconsistent_arguments_are_refused(label_names, required, message):
    with pytest.raises(ValueError, match=message):
        ForegroundTally(label_names, required=required, metadata={})


def test_a_label_map_that_is_neither_2d_nor_3d_is_refused():
    tally = ForegroundTally(ORGANS, required=[1], metadata={})
    with pytest.raises(ValueError, match=r"masks/p: patient p: expected a 2D or 3D"):
        tally.check("fold0", "p", THREE_SLICES[np.newaxis], mask_source="masks/p")
