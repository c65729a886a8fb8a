"""predict_on_mask_grid, choose_postprocessing and evaluate_on_original_grid against
hand-worked cases and numpy formulas."""

import nibabel as nib
import numpy as np
import pytest

from kseg.evaluation import (
    choose_postprocessing,
    evaluate_on_original_grid,
    evaluate_volumes,
    predict_on_mask_grid,
)
from kseg.inference import keep_largest_component
from kseg.io import Volume, write_nifti


def numpy_dice(truth, prediction):
    truth, prediction = truth.astype(bool), prediction.astype(bool)
    return 2 * np.sum(truth & prediction) / (truth.sum() + prediction.sum())


def identity(batch):
    """A predictor whose probabilities are its input."""
    return np.asarray(batch, dtype=np.float32)


# ------------------------------------------------------------------ predict_on_mask_grid


def test_slices_and_single_images_come_back_on_the_mask_grid():
    # Bilinear x2 upsampling of a {0, 1} map thresholded at 0.5 equals np.repeat upsampling
    # (every output voxel takes weight >= 0.75 * 0.75 from its own source voxel).
    rng = np.random.default_rng(1)
    coarse = (rng.uniform(size=(3, 4, 4)) > 0.5).astype(np.float32)
    fine = coarse.repeat(2, axis=1).repeat(2, axis=2)
    volumes = [
        ("volume", coarse[..., None], fine.astype(np.uint8), (2.0, 1.0, 1.0)),
        ("image", coarse[0][..., None], fine[0].astype(np.uint8), None),
    ]
    (vid, vmask, vprob, vspacing), (iid, imask, iprob, ispacing) = list(
        predict_on_mask_grid(identity, volumes, batch_size=2)
    )
    assert (vid, vspacing, iid, ispacing) == ("volume", (2.0, 1.0, 1.0), "image", None)
    assert vprob.shape == (3, 8, 8, 1) and iprob.shape == (8, 8, 1)
    np.testing.assert_array_equal(vprob[..., 0] >= 0.5, fine.astype(bool))
    np.testing.assert_array_equal(iprob[..., 0] >= 0.5, fine[0].astype(bool))
    np.testing.assert_array_equal(vmask, fine)
    np.testing.assert_array_equal(imask, fine[0])


# ------------------------------------------------------------------ choose_postprocessing


def _organ_with_island(size=10):
    """Reference: a 3x3 organ. Prediction: the organ found, plus a 1-voxel island."""
    truth = np.zeros((size, size), np.uint8)
    truth[1:4, 1:4] = 1
    prediction = truth.copy()
    prediction[8, 8] = 1
    return truth, prediction


def test_cleanup_chosen_when_it_raises_the_mean_dice():
    truth, prediction = _organ_with_island()
    # patient b: the organ is split and the larger part is a false positive: cleaning hurts
    truth_b = np.zeros((10, 10), np.uint8)
    truth_b[0, 0:2] = 1
    prediction_b = truth_b.copy()
    prediction_b[5:7, 5:7] = 1  # 4 false voxels, larger than the 2 true ones
    cases = [("a", truth, prediction, None), ("b", truth_b, prediction_b, None)]
    # a: 18/19 -> 1.0; b: 4/8 -> 0 (only the false 2x2 block survives)
    without = (18 / 19 + 4 / 8) / 2
    with_cleanup = (1.0 + 0.0) / 2
    choice = choose_postprocessing(cases)
    assert choice.dice_without == {"dice": pytest.approx(without)}
    assert choice.dice_with == {"dice": pytest.approx(with_cleanup)}
    assert without > with_cleanup and choice.labels == () and choice.postprocess is None

    choice = choose_postprocessing(cases[:1])
    assert choice.labels == (1,)
    assert choice.dice_with == {"dice": pytest.approx(1.0)}
    assert choice.dice_without == {"dice": pytest.approx(18 / 19)}
    np.testing.assert_array_equal(choice.postprocess(prediction), truth)


def test_each_class_is_decided_on_its_own_dice():
    # class 1 ("liver") gains from the clean-up, class 2 ("kidneys": two objects) loses
    truth = np.zeros((10, 10), np.uint8)
    truth[1:4, 1:4] = 1
    truth[6:8, 0:2] = 2
    truth[6:8, 8:10] = 2
    prediction = truth.copy()
    prediction[9, 5] = 1  # stray liver voxel
    probabilities = np.eye(3, dtype=np.float32)[prediction]  # one-hot, argmax = prediction
    choice = choose_postprocessing(
        [("p", truth, probabilities, None)], labels={"liver": 1, "kidneys": 2}
    )
    assert choice.labels == (1,)
    assert choice.dice_without == {
        "dice_liver": pytest.approx(18 / 19), "dice_kidneys": pytest.approx(1.0)
    }
    # keeping one kidney: 2 * 4 / (8 + 4)
    assert choice.dice_with == {
        "dice_liver": pytest.approx(1.0), "dice_kidneys": pytest.approx(8 / 12)
    }
    cleaned = choice.postprocess(prediction)
    np.testing.assert_array_equal(cleaned, truth)


def test_a_tie_keeps_the_predictions_as_they_are():
    truth, _ = _organ_with_island()
    choice = choose_postprocessing([("p", truth, truth.copy(), None)])
    assert choice.labels == () and choice.dice_with == choice.dice_without == {"dice": 1.0}
    with pytest.raises(ValueError, match="at least one"):
        choose_postprocessing([])


# ------------------------------------------------------------- evaluate_on_original_grid


def _original_and_model_grids():
    """An LPS-stored label volume at 3 x 2 x 2 mm and the grid a model sees it on:
    reoriented to RAS (rows and columns reversed) and cropped by one row at the front."""
    shape = (4, 8, 6)
    original_affine = np.array(
        [[0.0, 0.0, -2.0, 20.0], [0.0, -2.0, 0.0, 30.0], [3.0, 0.0, 0.0, -5.0], [0, 0, 0, 1]]
    )
    truth = np.zeros(shape, np.uint8)
    truth[1:3, 2:6, 1:4] = 1
    # model grid index (k, j, i) = original (k, 7 - (j + 1), 5 - i): rows reversed then the
    # first reversed row cropped away, columns reversed
    model_affine = original_affine @ np.array(
        [[1, 0, 0, 0], [0, -1, 0, 6], [0, 0, -1, 5], [0, 0, 0, 1]], dtype=float
    )
    return truth, original_affine, model_affine


def test_prediction_is_scored_and_written_on_the_reference_grid(tmp_path):
    truth, original_affine, model_affine = _original_and_model_grids()
    write_nifti(Volume(truth, original_affine, "p"), tmp_path / "p.nii.gz")
    on_model_grid = truth[:, 6::-1, ::-1].copy()  # rows 6..0 reversed, columns reversed
    on_model_grid[0, 0, 0] = 1  # a stray voxel, removed by the clean-up
    on_model_grid[2, 3, 2] = 0  # a missed voxel inside the organ
    expected = on_model_grid[:, ::-1, ::-1]  # back: columns and rows reversed ...
    expected = np.concatenate([expected, np.zeros((4, 1, 6), np.uint8)], axis=1)  # ... row 7
    assert expected.shape == truth.shape

    table = evaluate_on_original_grid(
        identity, [("p", on_model_grid[..., None].astype(np.float32), model_affine,
                    tmp_path / "p.nii.gz")],
        roi_size=(4, 4, 4), metrics=("dice",), prediction_dir=tmp_path / "out", progress=False,
    )  # fmt: skip
    assert table.rows[0]["dice"] == pytest.approx(numpy_dice(truth, expected))
    written = nib.load(tmp_path / "out" / "p.nii.gz")
    # nibabel's array is (x, y, z): kseg's (z, y, x) transposed
    np.testing.assert_array_equal(np.asarray(written.dataobj).transpose(2, 1, 0), expected)
    assert written.get_data_dtype() == np.uint8
    np.testing.assert_allclose(written.affine[:3, :3], original_affine[:3, [2, 1, 0]])

    cleaned = evaluate_on_original_grid(
        identity, [("p", on_model_grid[..., None].astype(np.float32), model_affine,
                    tmp_path / "p.nii.gz")],
        roi_size=(4, 4, 4), metrics=("dice",), postprocess=keep_largest_component,
        progress=False,
    )  # fmt: skip
    expected[0, 6, 5] = 0  # the stray voxel, model (0, 0, 0): original (0, 6 - 0, 5 - 0)
    assert cleaned.rows[0]["dice"] == pytest.approx(numpy_dice(truth, expected))
    assert cleaned.rows[0]["dice"] > table.rows[0]["dice"]


def test_scores_equal_evaluate_volumes_on_the_mapped_labels(tmp_path):
    truth, original_affine, model_affine = _original_and_model_grids()
    write_nifti(Volume(truth, original_affine, "p"), tmp_path / "p.nii.gz")
    probabilities = truth[:, 6::-1, ::-1, None].astype(np.float32) * 0.9
    table = evaluate_on_original_grid(
        identity, [("p", probabilities, model_affine, tmp_path / "p.nii.gz")],
        roi_size=(4, 8, 6), metrics=("dice", "hd95"), progress=False,
    )  # fmt: skip
    direct = evaluate_volumes(
        [("p", truth, truth, (3.0, 2.0, 2.0))], metrics=("dice", "hd95"), progress=False
    )
    # the cropped row holds no organ, so the mapping back loses nothing
    assert table.rows == direct.rows
