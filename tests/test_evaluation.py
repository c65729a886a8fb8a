"""Per-patient evaluation against numpy formulas and hand-worked volumes."""

import csv
import math
import warnings

import keras
import numpy as np
import pytest
import tensorflow as tf

from kseg import evaluation
from kseg.errors import AlignmentError, MaskError, UnreadableFileError
from kseg.evaluation import (
    EmptyReferenceWarning,
    PatientTable,
    evaluate_slices,
    evaluate_volumes,
)


def numpy_dice(truth, prediction):
    truth, prediction = truth.astype(bool), prediction.astype(bool)
    return 2 * np.sum(truth & prediction) / (truth.sum() + prediction.sum())


# ---------------------------------------------------------------------------- PatientTable


def example_table():
    return PatientTable(
        [
            {"patient_id": "p1", "dice": 0.9, "hd95": 2.0},
            {"patient_id": "p2", "dice": 0.5, "hd95": math.nan},
            {"patient_id": "p3", "dice": 0.7, "hd95": 4.5},
            {"patient_id": "p4", "dice": 0.8},
        ]
    )


def test_summary_matches_numpy_ignoring_nan():
    summary = example_table().summary()
    dice = np.array([0.9, 0.5, 0.7, 0.8])
    assert summary["dice"]["mean"] == pytest.approx(np.mean(dice))
    assert summary["dice"]["median"] == pytest.approx(np.median(dice))
    assert summary["dice"]["std"] == pytest.approx(np.std(dice, ddof=1))
    assert summary["dice"]["count"] == 4
    assert summary["hd95"]["mean"] == pytest.approx(3.25)  # p2 nan and p4 missing left out
    assert summary["hd95"]["median"] == pytest.approx(3.25)
    assert summary["hd95"]["std"] == pytest.approx(np.std([2.0, 4.5], ddof=1))
    assert summary["hd95"]["count"] == 2


def test_an_infinite_distance_shows_in_the_mean_and_leaves_no_spread():
    table = PatientTable([
        {"patient_id": "p1", "hd95": 2.0},
        {"patient_id": "p2", "hd95": math.inf},  # an empty prediction
        {"patient_id": "p3", "hd95": 4.0},
    ])  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # numpy's inf - inf would warn "invalid value"
        summary = table.summary()["hd95"]
    assert summary["mean"] == math.inf and summary["median"] == 4.0
    assert math.isnan(summary["std"]) and summary["count"] == 3


def test_csv_is_readable_by_the_csv_module_and_round_trips(tmp_path):
    path = tmp_path / "scores.csv"
    table = example_table()
    table.to_csv(path)
    with open(path, newline="") as handle:
        lines = list(csv.reader(handle))
    assert lines[0] == ["patient_id", "dice", "hd95"]
    assert [line[0] for line in lines[1:]] == ["p1", "p2", "p3", "p4"]
    assert float(lines[1][1]) == 0.9 and math.isnan(float(lines[2][2]))
    reread = PatientTable.from_csv(path)
    assert reread.patient_ids == table.patient_ids
    np.testing.assert_array_equal(reread.column("hd95"), table.column("hd95"))
    assert [p.name for p in tmp_path.iterdir()] == ["scores.csv"]


def test_failed_write_leaves_the_old_file_and_no_temporary(tmp_path, monkeypatch):
    path = tmp_path / "scores.csv"
    path.write_text("previous results\n")

    class BrokenWriter:
        def __init__(self, handle):
            self.handle = handle

        def writerow(self, row):
            self.handle.write("partial")
            raise OSError("disk full")

    monkeypatch.setattr(evaluation.csv, "writer", BrokenWriter)
    with pytest.raises(OSError, match="disk full"):
        example_table().to_csv(path)
    assert path.read_text() == "previous results\n"
    assert [p.name for p in tmp_path.iterdir()] == ["scores.csv"]


def test_text_table_is_aligned_and_ends_with_summary():
    lines = str(example_table()).splitlines()
    assert len({len(line) for line in lines}) == 1
    assert lines[0].split() == ["patient_id", "dice", "hd95"]
    assert lines[-4].split() == ["mean", "0.7250", "3.2500"]
    assert lines[-1].split() == ["count", "4", "2"]


def test_duplicate_patient_and_bad_csv_are_rejected(tmp_path):
    with pytest.raises(ValueError, match="'p1' is already"):
        PatientTable([{"patient_id": "p1", "dice": 1.0}, {"patient_id": "p1", "dice": 0.0}])
    bad = tmp_path / "bad.csv"
    bad.write_text("patient_id,dice\np1,high\n")
    with pytest.raises(UnreadableFileError, match="line 2"):
        PatientTable.from_csv(bad)


# ------------------------------------------------------------------------ evaluate_volumes


def test_binary_probabilities_scored_against_numpy_formulas():
    rng = np.random.default_rng(7)
    truth = (rng.uniform(size=(4, 6, 6)) > 0.6).astype(np.uint8)
    probabilities = rng.uniform(size=(4, 6, 6, 1)).astype(np.float32)
    predicted = probabilities[..., 0] >= 0.3
    table = evaluate_volumes([("a", truth, probabilities, None)], threshold=0.3, progress=False)
    t, p = truth.astype(bool), predicted
    tp, fp, fn, tn = (t & p).sum(), (~t & p).sum(), (t & ~p).sum(), (~t & ~p).sum()
    row = table.rows[0]
    assert row["dice"] == pytest.approx(2 * tp / (2 * tp + fp + fn))
    assert row["iou"] == pytest.approx(tp / (tp + fp + fn))
    assert row["precision"] == pytest.approx(tp / (tp + fp))
    assert row["recall"] == pytest.approx(tp / (tp + fn))
    assert row["specificity"] == pytest.approx(tn / (tn + fp))


def test_multi_class_columns_and_distances_in_millimetres():
    truth = np.zeros((3, 4, 4), dtype=np.int64)
    truth[0] = 1  # "liver" occupies slice 0
    truth[1, :2] = 2  # "spleen": half of slice 1
    scores = np.zeros((3, 4, 4, 3), dtype=np.float32)
    scores[..., 0] = 0.5
    scores[2, :, :, 1] = 0.9  # liver predicted on slice 2: two slices (2 x 3 mm) too deep
    scores[1, :2, :2, 2] = 0.95  # spleen: a quarter of slice 1, inside the reference
    table = evaluate_volumes(
        [("a", truth, scores, (3.0, 1.0, 1.0))],
        metrics=("dice", "hd95"),
        labels={"liver": 1, "spleen": 2},
        progress=False,
    )
    row = table.rows[0]
    assert table.metric_names == ["dice_liver", "hd95_liver", "dice_spleen", "hd95_spleen"]
    assert row["dice_liver"] == 0.0
    assert row["hd95_liver"] == pytest.approx(6.0)
    assert row["dice_spleen"] == pytest.approx(2 * 4 / (8 + 4))


def test_label_map_predictions_and_shape_checks():
    truth = np.array([[0, 1, 1, 0]])
    table = evaluate_volumes([("b", truth, np.array([[0, 1, 0, 0]]), None)], progress=False)
    assert table.rows[0]["dice"] == pytest.approx(2 / 3)
    with pytest.raises(AlignmentError, match="patient 'c'"):
        evaluate_volumes([("c", truth, np.zeros((1, 5)), None)], progress=False)
    with pytest.raises(MaskError, match="labels="):
        evaluate_volumes([("d", truth * 2, truth, None)], progress=False)
    with pytest.raises(ValueError, match="metrics"):
        evaluate_volumes([], metrics=("f1",), progress=False)


# ------------------------------------------------------------------------- evaluate_slices


def slice_dataset(volumes, rng):
    """A shuffled per-slice dataset of dicts, as the TFDS builders produce."""
    examples = []
    for patient_id, (image, mask) in volumes.items():
        for index in range(image.shape[0]):
            examples.append(
                {
                    "image": image[index][..., None].astype(np.float32),
                    "mask": mask[index][..., None].astype(np.uint8),
                    "patient_id": patient_id,
                    "slice_index": index,
                    "num_slices": image.shape[0],
                    "spacing": np.array([2.5, 0.7, 0.7], dtype=np.float32),
                }
            )
    order = rng.permutation(len(examples))
    columns = {key: np.stack([examples[i][key] for i in order]) for key in examples[0]}
    return tf.data.Dataset.from_tensor_slices(columns)


def identity_model():
    return keras.Sequential([keras.Input((None, None, 1)), keras.layers.Identity()])


def test_shuffled_slices_are_reassembled_and_scored_per_volume():
    rng = np.random.default_rng(8)
    # patient "a": slice 0 predicted perfectly (10 voxels), slice 1 holds one reference voxel
    # and one wrongly placed predicted voxel. Whole-volume Dice 20/22; mean slice Dice 0.5.
    mask_a = np.zeros((2, 5, 5), dtype=np.uint8)
    mask_a[0, :2, :] = 1
    mask_a[1, 4, 4] = 1
    prediction_a = mask_a.copy()
    prediction_a[1, 4, 4], prediction_a[1, 0, 0] = 0, 1
    mask_b = (rng.uniform(size=(3, 5, 5)) > 0.5).astype(np.uint8)
    prediction_b = (rng.uniform(size=(3, 5, 5)) > 0.5).astype(np.uint8)
    volumes = {
        "b": (prediction_b * 0.8 + 0.1, mask_b),
        "a": (prediction_a * 0.8 + 0.1, mask_a),
    }

    table = evaluate_slices(
        identity_model(),
        slice_dataset(volumes, rng),
        preprocess=lambda example: example["image"],
        metrics=("dice", "assd"),
        batch_size=2,
        progress=False,
    )
    assert table.patient_ids == ["a", "b"]
    assert table.rows[0]["dice"] == pytest.approx(numpy_dice(mask_a, prediction_a))
    assert table.rows[0]["dice"] == pytest.approx(20 / 22)
    mean_slice_dice = np.mean([numpy_dice(mask_a[i], prediction_a[i]) for i in range(2)])
    assert mean_slice_dice == pytest.approx(0.5)
    assert table.rows[1]["dice"] == pytest.approx(numpy_dice(mask_b, prediction_b))


def test_prediction_is_resized_back_to_the_mask_grid():
    # The model works at 4x4; masks are 8x8 with detail finer than the model grid. Bilinear
    # x2 upsampling of a {0, 1} map thresholded at 0.5 equals nearest (np.repeat) upsampling:
    # every output voxel takes weight >= 0.75 * 0.75 from its own source voxel.
    rng = np.random.default_rng(9)
    coarse = (rng.uniform(size=(3, 4, 4)) > 0.5).astype(np.float32)
    upsampled = coarse.repeat(2, axis=1).repeat(2, axis=2)
    mask = upsampled.astype(np.uint8)
    mask[:, 0, 0] = 1 - mask[:, 0, 0]  # single-voxel disagreements only visible at 8x8
    mask[1, 5, 2] = 1 - mask[1, 5, 2]

    table = evaluate_slices(
        identity_model(),
        slice_dataset({"p": (upsampled, mask)}, rng),
        preprocess=lambda example: tf.image.resize(example["image"], (4, 4), method="nearest"),
        progress=False,
    )
    assert table.rows[0]["dice"] == pytest.approx(numpy_dice(mask, upsampled))
    assert table.rows[0]["dice"] < 1


def test_incomplete_or_repeated_slices_name_the_patient():
    rng = np.random.default_rng(10)
    volume = np.zeros((3, 4, 4)), np.zeros((3, 4, 4), dtype=np.uint8)
    complete = slice_dataset({"x": volume}, rng)
    with pytest.raises(ValueError, match=r"'x'.*\[1\]"):
        evaluate_slices(
            identity_model(),
            complete.filter(lambda example: example["slice_index"] != 1),
            preprocess=lambda example: example["image"],
            progress=False,
        )
    with pytest.raises(ValueError, match="patient 'x': slice 2 appears twice"):
        evaluate_slices(
            identity_model(),
            complete.filter(lambda example: example["slice_index"] != 0).concatenate(
                complete.filter(lambda example: example["slice_index"] == 2)
            ),
            preprocess=lambda example: example["image"],
            progress=False,
        )


# ---------------------------------------------------------------------------- post-processing


def liver_with_a_stray_island():
    """A 2x3x3 organ predicted exactly, plus one false-positive voxel on a slice of its own."""
    truth = np.zeros((5, 6, 6), dtype=np.uint8)
    truth[0:2, 0:3, 0:3] = 1
    prediction = truth.copy()
    prediction[4, 5, 5] = 1
    return truth, prediction


def test_postprocess_removes_the_stray_island_before_scoring():
    from kseg.inference import keep_largest_component

    truth, prediction = liver_with_a_stray_island()
    cases = [("p", truth, prediction.astype(np.float32)[..., None], (3.0, 1.0, 1.0))]
    raw = evaluate_volumes(cases, metrics=("dice", "hausdorff"), progress=False)
    cleaned = evaluate_volumes(
        cases, metrics=("dice", "hausdorff"), postprocess=keep_largest_component, progress=False
    )
    # 18 reference voxels, 19 predicted: Dice 36/37; the island's nearest organ voxel is
    # (1, 2, 2), (3 slices, 3 rows, 3 columns) away at (3, 1, 1) mm spacing
    assert raw.rows[0]["dice"] == pytest.approx(36 / 37)
    assert raw.rows[0]["hausdorff"] == pytest.approx(math.sqrt(9**2 + 3**2 + 3**2))
    assert cleaned.rows[0]["dice"] == 1.0
    assert cleaned.rows[0]["hausdorff"] == 0.0


def test_slice_wise_postprocess_sees_the_whole_volume():
    from kseg.inference import keep_largest_component

    truth, prediction = liver_with_a_stray_island()
    seen_shapes = []

    def largest_component(label_map):
        seen_shapes.append(label_map.shape)
        return keep_largest_component(label_map)

    table = evaluate_slices(
        identity_model(),
        slice_dataset({"p": (prediction * 0.8 + 0.1, truth)}, np.random.default_rng(3)),
        preprocess=lambda example: example["image"],
        postprocess=largest_component,
        progress=False,
    )
    # per slice, the island is the largest object of slice 4 and would survive
    assert seen_shapes == [(5, 6, 6)]
    assert table.rows[0]["dice"] == 1.0


def test_postprocess_that_changes_the_grid_is_refused():
    truth, prediction = liver_with_a_stray_island()
    with pytest.raises(ValueError, match="must keep the grid"):
        evaluate_volumes(
            [("p", truth, prediction, None)],
            postprocess=lambda label_map: label_map[1:],
            progress=False,
        )


# ----------------------------------------------------------------------- empty references
# An empty reference scored against an empty prediction gives Dice 1.0: a perfect score that
# measures nothing. It must show in the table, its summary, its CSV and a warning.


def two_cases():
    truth = np.zeros((2, 4, 4), dtype=np.uint8)
    truth[0, :2, :2] = 1
    prediction = truth.copy()
    prediction[1, 3, 3] = 1  # 4 reference voxels, 5 predicted: Dice 8/9
    empty = np.zeros_like(truth)
    return [("full", truth, prediction, None), ("empty", empty, empty, None)]


def test_empty_reference_is_flagged_counted_and_warned():
    with pytest.warns(EmptyReferenceWarning, match=r"empty for 1 of 2 patients \(empty\)") as w:
        table = evaluate_volumes(two_cases(), metrics=("dice", "hd95"), progress=False)
    assert len(w) == 1
    assert table.metric_names == ["dice", "hd95"]  # the flag is not a metric
    assert table.flag_names == ["reference_empty"]
    np.testing.assert_array_equal(table.column("reference_empty"), [False, True])
    assert table.empty_references == ["empty"]
    assert table.rows[1] == {
        "patient_id": "empty",
        "dice": 1.0,  # the convention, now marked
        "hd95": pytest.approx(math.nan, nan_ok=True),
        "reference_empty": True,
    }
    assert table.rows[0]["dice"] == pytest.approx(8 / 9)
    summary = table.summary()
    assert summary["reference_empty"]["count"] == 1
    assert summary["reference_empty"]["mean"] == 0.5
    assert summary["dice"]["count"] == 2  # the metric summaries are unchanged


def test_text_table_shows_the_flag_its_count_and_the_patients():
    with pytest.warns(EmptyReferenceWarning):
        table = evaluate_volumes(two_cases(), metrics=("dice",), progress=False)
    lines = str(table).splitlines()
    assert lines[0].split() == ["patient_id", "dice", "reference_empty"]
    assert lines[2].split() == ["full", "0.8889", "no"]
    assert lines[3].split() == ["empty", "1.0000", "yes"]
    assert lines[-2].split() == ["count", "2", "1"]
    assert lines[-1] == (
        "reference empty for 1 of 2 patients (empty): their scores follow the empty-mask "
        "conventions"
    )


def test_flags_round_trip_through_csv(tmp_path):
    with pytest.warns(EmptyReferenceWarning):
        table = evaluate_volumes(two_cases(), metrics=("dice",), progress=False)
    path = tmp_path / "scores.csv"
    table.to_csv(path)
    with open(path, newline="") as handle:
        lines = list(csv.reader(handle))
    assert lines == [
        ["patient_id", "dice", "reference_empty"],
        ["full", repr(8 / 9), "False"],
        ["empty", "1.0", "True"],
    ]
    reread = PatientTable.from_csv(path)
    assert reread.flag_names == ["reference_empty"] and reread.metric_names == ["dice"]
    assert reread.rows == table.rows


def test_each_label_has_its_own_flag():
    truth = np.zeros((2, 4, 4), dtype=np.int64)
    truth[0, :2, :2] = 1  # liver only: the spleen is absent from patient "a"
    both = truth.copy()
    both[1, 3, 3] = 2
    with pytest.warns(EmptyReferenceWarning, match=r"1 of 2 patients \(a: spleen\)"):
        table = evaluate_volumes(
            [("a", truth, truth, None), ("b", both, both, None)],
            metrics=("dice",),
            labels={"liver": 1, "spleen": 2},
            progress=False,
        )
    assert table.flag_names == ["reference_empty_liver", "reference_empty_spleen"]
    assert evaluation.metric_columns(evaluation.REFERENCE_EMPTY, {"liver": 1, "spleen": 2}) == (
        table.flag_names
    )
    np.testing.assert_array_equal(table.column("reference_empty_spleen"), [True, False])
    np.testing.assert_array_equal(table.column("reference_empty_liver"), [False, False])
    assert table.empty_references == ["a"]
    assert table.summary()["reference_empty_spleen"]["count"] == 1


def test_no_warning_without_empty_references_or_when_declined():
    with warnings.catch_warnings():
        warnings.simplefilter("error", EmptyReferenceWarning)
        table = evaluate_volumes(two_cases()[:1], progress=False)
        declined = evaluate_volumes(two_cases(), progress=False, warn_empty=False)
    assert table.empty_references == [] and not str(table).splitlines()[-1].startswith("ref")
    assert declined.empty_references == ["empty"]  # still flagged
    with pytest.raises(ValueError, match="warn_empty"):
        evaluate_volumes([], warn_empty="no", progress=False)


def test_slice_evaluation_flags_and_warns_once():
    mask = np.zeros((2, 4, 4), dtype=np.uint8)
    mask[0, 1:3, 1:3] = 1
    empty = np.zeros_like(mask)
    volumes = {"z": (empty * 1.0, empty), "a": (mask * 0.8 + 0.1, mask)}
    with pytest.warns(
        EmptyReferenceWarning, match=r"evaluate_slices: .*1 of 2 patients \(z\)"
    ) as w:
        table = evaluate_slices(
            identity_model(),
            slice_dataset(volumes, np.random.default_rng(4)),
            preprocess=lambda example: example["image"],
            progress=False,
        )
    assert len(w) == 1
    assert table.patient_ids == ["a", "z"]
    np.testing.assert_array_equal(table.column("reference_empty"), [False, True])


def test_table_refuses_a_column_that_is_both_score_and_flag():
    with pytest.raises(ValueError, match="'x' holds scores in some rows and True/False flags"):
        PatientTable([{"patient_id": "1", "x": 0.5}, {"patient_id": "2", "x": True}])
