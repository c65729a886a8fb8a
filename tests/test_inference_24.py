"""Session 24 findings in inference, metrics, viz and the report, each against an
independent reference (numpy formulas, hand-worked cases)."""

import numpy as np
import pytest

pytest.importorskip("matplotlib")

from kseg import metrics, viz  # noqa: E402, F401


def constant_model(value, name, channels=1):
    import keras

    return keras.Sequential(
        [
            keras.Input((None, None, 1)),
            keras.layers.Conv2D(
                channels, 1, activation="sigmoid", kernel_initializer="zeros",
                bias_initializer=keras.initializers.Constant(value),
            ),
        ],
        name=name,
    )  # fmt: skip


# --------------------------------------------------------------------------- ensembles


def test_ensemble_model_leaves_the_members_names_as_they_were(tmp_path):
    import kseg
    from kseg.inference.ensemble import ensemble_model

    # two fold models under the same name, as two runs' best.keras load
    first, second = constant_model(1.0, "unet"), constant_model(-1.0, "unet")
    ensemble = ensemble_model([first, second], mirror_axes=(0,))
    assert (first.name, second.name) == ("unet", "unet")
    x = np.zeros((1, 4, 6, 1), np.float32)
    # sigmoid(1) and sigmoid(-1) sum to 1: their mean is 0.5 everywhere
    np.testing.assert_allclose(ensemble.predict_on_batch(x), 0.5, atol=1e-6)
    ensemble.save(tmp_path / "ensemble.keras")
    reloaded = kseg.load_model(tmp_path / "ensemble.keras", compile=False)
    np.testing.assert_allclose(reloaded.predict_on_batch(x), 0.5, atol=1e-6)


def test_mirrored_inference_model_keeps_the_callers_model_name():
    from kseg.predict import inference_model

    model = constant_model(0.0, "my_unet")
    mirrored = inference_model(model, {"mirror_axes": [0, 1]})
    assert model.name == "my_unet"
    assert mirrored.name == "my_unet_mirrored"


# --------------------------------------------------------------------------- bfloat16


def bfloat16_softmax(voxels=400, classes=3, seed=0):
    """A mixed_bfloat16 model's softmax: computed in float32, stored in bfloat16."""
    import ml_dtypes

    logits = np.random.default_rng(seed).normal(0, 2, (voxels, classes))
    softmax = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    return softmax.astype(np.float32).astype(ml_dtypes.bfloat16)


def test_calibration_scores_take_bfloat16_softmax_outputs():
    probabilities = bfloat16_softmax()
    values = probabilities.astype(np.float64)
    # bfloat16 keeps 8 significant bits: the class sums miss 1 by more than float32 would
    assert np.abs(values.sum(-1) - 1).max() > 1e-3
    labels = np.random.default_rng(1).integers(0, 3, len(values))
    one_hot = np.eye(3)[labels]
    expected_brier = np.mean(np.sum((values - one_hot) ** 2, axis=-1))
    assert metrics.brier_score(probabilities, labels) == pytest.approx(expected_brier, rel=1e-12)
    # top-label ECE by hand: 15 equal bins (lower, upper], |sum conf - sum correct| / N
    confidence, correct = values.max(-1), values.argmax(-1) == labels
    bins = np.clip(np.ceil(confidence * 15).astype(int) - 1, 0, 14)
    gaps = [confidence[bins == b].sum() - correct[bins == b].sum() for b in range(15)]
    expected_ece = np.abs(gaps).sum() / len(values)
    ece = metrics.expected_calibration_error(probabilities, labels, mode="top_label")
    assert ece == pytest.approx(expected_ece, rel=1e-9)
    foreground = probabilities[:, 1]
    assert metrics.expected_calibration_error(foreground, labels == 1) == pytest.approx(
        metrics.expected_calibration_error(values[:, 1], labels == 1), rel=1e-12
    )


def test_uncertainty_error_auroc_takes_a_bfloat16_uncertainty_map():
    import ml_dtypes

    uncertainty = np.array([0.9, 0.1, 0.2, 0.8], ml_dtypes.bfloat16)
    # both errors (voxels 0 and 3) are more uncertain than both right voxels: AUROC 1
    assert metrics.uncertainty_error_auroc(uncertainty, [1, 0, 0, 0], [0, 0, 0, 1]) == 1.0


def test_uncertainty_map_shows_a_bfloat16_map():
    import ml_dtypes

    uncertainty = np.zeros((8, 8), ml_dtypes.bfloat16)
    uncertainty[2:6, 2:6] = 0.5
    figure = viz.uncertainty_map(np.zeros((8, 8)), uncertainty)
    np.testing.assert_array_equal(figure.axes[1].images[0].get_array(), uncertainty.astype(float))


# --------------------------------------------------------------------------- report figures


def test_slice_dice_heatmap_of_3000_patients_renders_with_each_rows_lowest_dice():
    rng = np.random.default_rng(0)
    patients, slices = 3000, 10
    scores = rng.random((patients, slices))
    scores[rng.random(scores.shape) < 0.3] = np.nan
    scores[17, 4] = 0.0  # one failed slice must stay visible
    scores[:, 9] = np.nan  # a position no patient scores stays nan (grey)
    per_patient = {f"p{i:04d}": s for i, s in enumerate(scores)}
    # the default: one row per patient up to HEATMAP_MAX_ROWS, so 0.3 in x 200 rows at most
    default = viz.slice_dice_heatmap(per_patient)
    assert default.axes[0].images[0].get_array().shape == (viz.HEATMAP_MAX_ROWS, slices)
    assert default.get_size_inches()[1] < 2**16 / 100  # renders at savefig's 100 dpi
    rows = 50  # fewer rows of 60 patients each: the same path, rendered quickly
    figure = viz.slice_dice_heatmap(per_patient, max_rows=rows)
    png = viz.png_bytes(figure)  # one row per patient failed past ~2700 (2**16 pixels)
    assert png.startswith(b"\x89PNG")
    ax = figure.axes[0]
    shown = np.ma.filled(ax.images[0].get_array().astype(float), np.nan)
    assert shown.shape == (rows, slices)
    # each cell is the lowest Dice of its row's 60 consecutive patients
    with np.errstate(all="ignore"), pytest.warns(RuntimeWarning):
        expected = np.nanmin(scores.reshape(rows, patients // rows, slices), axis=1)
    np.testing.assert_array_equal(shown, expected)
    assert shown[0, 4] == 0.0
    labels = [label.get_text() for label in ax.get_yticklabels()]
    assert labels[0] == "p0000 … p0059" and labels[-1] == "p2940 … p2999"
    assert "3000 patients" in ax.get_title() and "lowest Dice" in ax.get_title()


def test_slice_dice_heatmap_keeps_one_row_per_patient_up_to_max_rows():
    scores = {"a": [1.0, 0.5], "b": [0.0, np.nan], "c": [0.25, 0.75]}
    figure = viz.slice_dice_heatmap(scores, max_rows=3)
    shown = np.ma.filled(figure.axes[0].images[0].get_array().astype(float), np.nan)
    np.testing.assert_array_equal(shown, [[1.0, 0.5], [0.0, np.nan], [0.25, 0.75]])
    grouped = viz.slice_dice_heatmap(scores, max_rows=2)  # rows {a}, {b, c}
    shown = np.ma.filled(grouped.axes[0].images[0].get_array().astype(float), np.nan)
    np.testing.assert_array_equal(shown, [[1.0, 0.5], [0.0, 0.75]])
    assert [t.get_text() for t in grouped.axes[0].get_yticklabels()] == ["a", "b … c"]
    with pytest.raises(ValueError, match="max_rows"):
        viz.slice_dice_heatmap(scores, max_rows=0)


def drawn_size(figure, ax, shape):
    """Width and height in display pixels of an image of ``shape`` drawn on ``ax``."""
    figure.canvas.draw()  # constrained layout and the aspect settle on drawing
    rows, columns = shape
    (x0, y0), (x1, y1) = ax.transData.transform([(-0.5, -0.5), (columns - 0.5, rows - 0.5)])
    return abs(x1 - x0), abs(y1 - y0)


def physical_ratio(shape, spacing):
    """Width / height in mm of a slice of ``shape`` with ``(row, column)`` spacing."""
    return shape[1] * spacing[1] / (shape[0] * spacing[0])


# a reformatted CT slice: 0.7 mm columns, 2.5 mm rows (sagittal of 2.5 mm slices)
SLICE_SHAPE, SLICE_SPACING = (20, 60), (2.5, 0.7)


def box_slice():
    image = np.linspace(0, 1, np.prod(SLICE_SHAPE)).reshape(SLICE_SHAPE)
    truth = np.zeros(SLICE_SHAPE, bool)
    truth[5:15, 10:40] = True
    return image, truth, np.roll(truth, 3, axis=1)


@pytest.mark.parametrize("function", ["overlay", "error_map", "uncertainty_map"])
def test_slice_figures_draw_pixels_with_the_spacing_aspect(function):
    image, truth, predicted = box_slice()
    if function == "uncertainty_map":
        figure = viz.uncertainty_map(image, image, reference=truth, spacing=SLICE_SPACING)
        axes = figure.axes[:2]
    else:
        figure = getattr(viz, function)(image, truth, predicted, spacing=SLICE_SPACING)
        axes = figure.axes
    for ax in axes:
        width, height = drawn_size(figure, ax, SLICE_SHAPE)
        # 60 x 0.7 = 42 mm wide, 20 x 2.5 = 50 mm high: taller than wide, not 3:1 wide
        assert width / height == pytest.approx(physical_ratio(SLICE_SHAPE, SLICE_SPACING),
                                               rel=0.02)  # fmt: skip
    square = (viz.uncertainty_map(image, image) if function == "uncertainty_map"
              else getattr(viz, function)(image, truth, predicted))  # fmt: skip
    width, height = drawn_size(square, square.axes[0], SLICE_SHAPE)
    assert width / height == pytest.approx(3.0, rel=0.02)
    with pytest.raises(ValueError, match="spacing must be two positive numbers"):
        viz.overlay(image, spacing=(0.0, 1.0))


def test_uncertainty_study_figure_draws_the_example_slice_with_its_spacing():
    from types import SimpleNamespace

    from kseg import studies

    image, truth, predicted = box_slice()
    rows, columns = SLICE_SHAPE
    batch = image[None, ..., None].astype(np.float32)  # one slice, model input = mask grid
    entropy = np.zeros((1, rows, columns))
    pooled = {"tta": (np.array([1.0]), np.array([0.5]), np.array([0.5]))}
    table = SimpleNamespace(column=lambda name, method: [0.5])
    example = (0.5, "sag", batch, truth[None], predicted[None], entropy, (1.0, *SLICE_SPACING))
    figure = studies._uncertainty_figure(SimpleNamespace(num_classes=1), table, pooled, example)
    for ax in figure.axes[2:4]:
        width, height = drawn_size(figure, ax, SLICE_SHAPE)
        assert width / height == pytest.approx(physical_ratio(SLICE_SHAPE, SLICE_SPACING),
                                               rel=0.02)  # fmt: skip


# --------------------------------------------------------------------------- evaluation


def numpy_dice(truth, predicted):
    return 2 * np.sum(truth & predicted) / (truth.sum() + predicted.sum())


def test_a_float_label_map_is_scored_as_labels_when_structures_are_named():
    from kseg.evaluation import choose_postprocessing, evaluate_volumes

    reference = np.zeros((4, 8, 8), np.uint8)
    reference[1:3, 1:4, 1:4], reference[1:3, 5:7, 5:7] = 1, 2
    prediction = reference.copy()
    prediction[1, 5, 5] = 1  # one spleen voxel called liver
    as_floats = prediction.astype(np.float64)  # a label NIfTI read with get_fdata()
    table = evaluate_volumes([("p", reference, as_floats, (3.0, 1.0, 1.0))], metrics=("dice",),
                             labels={"liver": 1, "spleen": 2}, progress=False)  # fmt: skip
    (row,) = table.rows
    assert row["dice_liver"] == pytest.approx(numpy_dice(reference == 1, prediction == 1))
    assert row["dice_spleen"] == pytest.approx(numpy_dice(reference == 2, prediction == 2))
    choice = choose_postprocessing([("p", reference, as_floats, None)],
                                   labels={"liver": 1, "spleen": 2})  # fmt: skip
    assert choice.dice_without["dice_spleen"] == pytest.approx(2 * 7 / (8 + 7))


def test_a_0_255_integer_prediction_of_one_structure_is_refused_not_scored_0():
    from kseg.errors import MaskError
    from kseg.evaluation import evaluate_volumes

    reference = np.zeros((2, 6, 6), np.uint8)
    reference[:, 1:4, 1:4] = 1
    png_mask = reference * 255  # a prediction read from 0/255 PNG masks with PIL
    with pytest.raises(MaskError, match=r"patient 'p'.*prediction holds labels \[0, 255\]"):
        evaluate_volumes([("p", reference, png_mask, None)], metrics=("dice",), progress=False)
    # 0/1 integer masks are scored as before
    table = evaluate_volumes([("p", reference, reference, None)], metrics=("dice",),
                             progress=False)  # fmt: skip
    assert table.rows[0]["dice"] == 1.0


def test_bfloat16_probabilities_are_thresholded_and_checked_for_nan():
    import ml_dtypes

    from kseg.evaluation import evaluate_volumes

    reference = np.zeros((2, 6, 6), np.uint8)
    reference[:, 1:4, 1:4] = 1
    probabilities = np.where(reference == 1, 0.9, 0.1).astype(ml_dtypes.bfloat16)
    predicted = probabilities.astype(np.float32) >= 0.5
    expected = numpy_dice(reference == 1, predicted)  # 1.0: the map thresholded by hand
    for given in (probabilities, probabilities[..., None]):  # without / with channel axis
        table = evaluate_volumes([("p", reference, given, None)], metrics=("dice",),
                                 progress=False)  # fmt: skip
        assert table.rows[0]["dice"] == expected
    probabilities[0, 0, 0] = np.nan  # a diverged mixed-precision model
    with pytest.raises(ValueError, match="patient 'p': the prediction holds 1 NaN"):
        evaluate_volumes([("p", reference, probabilities[..., None], None)], progress=False)


# --------------------------------------------------------------------------- report


@pytest.fixture(scope="module")
def report_page(tmp_path_factory):
    """One report of three one-slice cases with 2.5 x 0.7 mm pixels, a scores.csv ending in
    blank lines, and max_viewers=2; the error map figures it draws are kept."""
    from test_report import box_case, parse, write_config, write_evaluation

    from kseg import report

    run = tmp_path_factory.mktemp("report") / "run"
    write_config(run)
    # Dice by hand: a 1.0 (same boxes), b 0.5 (shifted by half), c 0.75 (by a quarter)
    rows = write_evaluation(run, {
        "a": box_case(1, 8, 8, (0, 1, 2, 6, 2, 6), (0, 1, 2, 6, 2, 6), 0),
        "b": box_case(1, 8, 8, (0, 1, 2, 6, 2, 6), (0, 1, 2, 6, 4, 8), 1),
        "c": box_case(1, 8, 8, (0, 1, 2, 6, 2, 6), (0, 1, 2, 6, 3, 7), 2),
    })  # fmt: skip
    evaluation = run / "evaluation" / "test"
    for case in (evaluation / "cases").glob("*.npz"):
        arrays = dict(np.load(case))
        np.savez_compressed(case, **{**arrays, "spacing": np.array([1.0, *SLICE_SPACING])})
    scores = evaluation / "scores.csv"
    # blank lines after the rows, and the byte-order mark of Excel's "CSV UTF-8"
    scores.write_bytes(b"\xef\xbb\xbf" + scores.read_bytes() + b"\r\n\r\n")
    drawn = []
    error_map = viz.error_map

    def recorded(*args, **kwargs):
        drawn.append(error_map(*args, **kwargs))
        return drawn[-1]

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(viz, "error_map", recorded)
        page = parse(report.write_report(run, max_viewers=2))
    return page, rows, drawn


def test_report_reads_a_scores_csv_with_blank_lines(report_page):
    page, rows, _ = report_page
    scores = page.find("table", "scores")
    assert len(list(scores.find_all("tr"))) == len(rows)  # the header and a, b, c only
    assert scores.find("th").all_text() == "patient_id"  # the byte-order mark is not shown


def test_report_error_map_uses_the_case_spacing(report_page):
    _, _, drawn = report_page
    (figure,) = drawn  # patient b's, the lowest Dice
    width, height = drawn_size(figure, figure.axes[0], (8, 8))
    assert width / height == pytest.approx(physical_ratio((8, 8), SLICE_SPACING), rel=0.02)


def test_report_of_a_large_evaluation_shows_viewers_of_the_lowest_dice_patients(report_page):
    from test_report import viewers

    from kseg import report

    page, _, _ = report_page
    assert report.DEFAULT_MAX_VIEWERS >= 100  # small evaluations keep a viewer each
    assert list(viewers(page)) == ["b", "c"]
    assert "2 patients of lowest Dice of 3" in page.all_text()
    with pytest.raises(ValueError, match="max_viewers must be a positive integer"):
        report.write_report(".", max_viewers=0)


# --------------------------------------------------------------------------- post-processing


def test_keep_largest_component_takes_one_label_and_refuses_text():
    from kseg.inference import keep_largest_component

    prediction = np.array([[1, 1, 0, 0, 1], [1, 1, 0, 2, 2], [0, 0, 0, 0, 0], [2, 0, 0, 0, 0]])
    expected = prediction.copy()
    expected[0, 4] = 0  # label 1's one-voxel component goes; label 2 is not cleaned
    for one_label in (1, np.int64(1)):
        np.testing.assert_array_equal(keep_largest_component(prediction, labels=one_label),
                                      expected)  # fmt: skip
    # a generator of labels is read once, whole
    np.testing.assert_array_equal(keep_largest_component(prediction, labels=(v for v in [1])),
                                  expected)  # fmt: skip
    for text in ("12", True):  # '12' iterated as labels 1 and 2
        with pytest.raises(ValueError, match="labels must be None, one integer label"):
            keep_largest_component(prediction, labels=text)


# --------------------------------------------------------------------------- metrics


def test_per_class_takes_the_labels_mapping_evaluate_volumes_takes():
    reference, prediction = [0, 1, 2, 2], [0, 1, 1, 2]
    # by hand: liver TP 1, FP 1 -> 2/3; spleen TP 1, FN 1 -> 2/3
    scores = metrics.per_class(metrics.dice, reference, prediction,
                               labels={"liver": 1, "spleen": 2})  # fmt: skip
    assert scores == {1: pytest.approx(2 / 3), 2: pytest.approx(2 / 3)}
    # a label no voxel can hold scored both masks empty: a perfect 1.0 for nothing
    with pytest.raises(ValueError, match="labels must be integer label values"):
        metrics.per_class(metrics.dice, reference, prediction, labels=[1.5])


def test_a_label_map_with_a_trailing_axis_of_one_is_scored_as_labels():
    from kseg.evaluation import evaluate_volumes

    reference = np.zeros((4, 8, 8), np.uint8)
    reference[1:3, 1:4, 1:4], reference[1:3, 5:7, 5:7] = 1, 2
    prediction = reference.copy()
    prediction[1, 5, 5] = 1  # one spleen voxel called liver
    expected = {"dice_liver": numpy_dice(reference == 1, prediction == 1),
                "dice_spleen": numpy_dice(reference == 2, prediction == 2)}  # fmt: skip
    for given in (prediction[..., None], prediction[..., None].astype(np.float32)):
        table = evaluate_volumes([("p", reference, given, None)], metrics=("dice",),
                                 labels={"liver": 1, "spleen": 2}, progress=False)  # fmt: skip
        for column, value in expected.items():
            assert table.rows[0][column] == pytest.approx(value)
    # a sigmoid's one channel is still thresholded
    probabilities = np.where(reference == 1, 0.8, 0.2)[..., None]
    table = evaluate_volumes([("p", reference, probabilities, None)], metrics=("dice",),
                             labels={"liver": 1}, progress=False)  # fmt: skip
    assert table.rows[0]["dice_liver"] == 1.0


def test_tables_saved_by_excel_with_a_byte_order_mark_are_read(tmp_path):
    from kseg.evaluation import PatientTable

    scores = tmp_path / "scores.csv"
    scores.write_bytes(b"\xef\xbb\xbfpatient_id,dice\r\np1,0.5\r\n")  # Excel's "CSV UTF-8"
    table = PatientTable.from_csv(scores)
    assert table.patient_ids == ["p1"] and table.column("dice").tolist() == [0.5]
    # a resumed run's history: epochs 4 and 5 of the file are epochs 5 and 6 counted from 1
    history = tmp_path / "history.csv"
    history.write_bytes(b"\xef\xbb\xbfepoch,loss\r\n4,0.9\r\n5,0.5\r\n")
    figure = viz.training_curves(history)
    (loss,) = [line for line in figure.axes[0].get_lines() if line.get_label() == "loss"]
    assert loss.get_xdata().tolist() == [5, 6]
    assert loss.get_ydata().tolist() == [0.9, 0.5]


def test_hausdorff_percentile_takes_numpy_numbers():
    reference = np.zeros((1, 5), bool)
    reference[0, 0] = True
    prediction = np.zeros((1, 5), bool)
    prediction[0, 3] = True
    # one surface voxel each, 3 voxels of 2 mm apart: 6 mm at every percentile
    for percentile in np.arange(90, 101, 5):
        assert metrics.hausdorff_distance(reference, prediction, (1.0, 2.0),
                                          percentile=percentile) == 6.0  # fmt: skip
    with pytest.raises(ValueError, match="percentile must be a number in"):
        metrics.hausdorff_distance(reference, prediction, percentile=np.bool_(True))
