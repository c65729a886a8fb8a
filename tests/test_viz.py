"""kseg.viz: figures checked by their pixels, their artists' data and their errors.

Each figure is rendered on its Agg canvas and read back as RGBA; a colour is checked at the
centre of a hand-made region, where no edge or antialiasing reaches.
"""

import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("matplotlib")

from kseg import viz  # noqa: E402

TOLERANCE = 3  # 8-bit levels: rounding of colours and blending on the Agg canvas


def rendered(figure) -> np.ndarray:
    figure.canvas.draw()
    return np.asarray(figure.canvas.buffer_rgba())


def pixel(figure, ax, x: float, y: float) -> np.ndarray:
    """The RGB colour (0-255) drawn at data point ``(x, y)`` of ``ax``."""
    image = rendered(figure)  # drawing first: constrained layout moves the axes
    column, row_from_bottom = ax.transData.transform((x, y))
    return image[image.shape[0] - 1 - int(row_from_bottom), int(column), :3].astype(int)


def blended(color, alpha: float, under) -> np.ndarray:
    """``color`` at opacity ``alpha`` over the RGB ``under`` (0-255), as Agg composes it."""
    return alpha * 255 * np.asarray(color) + (1 - alpha) * np.asarray(under, dtype=float)


def assert_color(actual, expected):
    assert np.all(np.abs(np.asarray(actual) - np.asarray(expected)) <= TOLERANCE), (
        actual,
        expected,
    )


def grey_of(value: float, low: float, high: float) -> np.ndarray:
    """The grey Agg draws for ``value`` under the window ``(low, high)``: gray colormap."""
    level = (value - low) / (high - low)
    return np.full(3, level * 255)


def square(shape, top, left, size) -> np.ndarray:
    mask = np.zeros(shape, dtype=bool)
    mask[top : top + size, left : left + size] = True
    return mask


def test_importing_viz_imports_neither_tensorflow_nor_keras():
    code = (
        "import sys, kseg.viz; "
        "print(sorted(m for m in ('tensorflow', 'keras') if m in sys.modules))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]"


def test_without_matplotlib_the_import_error_says_how_to_install_it():
    code = (
        "import sys; sys.modules['matplotlib'] = None\n"
        "try:\n    import kseg.viz\nexcept ImportError as error:\n    print(error)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert "pip install 'kseg[viz]'" in result.stdout


def test_viz_is_a_lazily_loaded_kseg_submodule():
    import kseg

    assert "viz" in kseg._SUBMODULES
    assert kseg.viz is viz


# --------------------------------------------------------------------------- overlay


def overlay_case():
    image = np.full((40, 40), 0.5)
    image[0, 0], image[0, 1] = 0.0, 1.0  # window 0..1: background grey is 50 %
    reference = square(image.shape, 5, 5, 12)
    prediction = square(image.shape, 22, 22, 12)
    return image, reference, prediction


def test_overlay_fills_the_prediction_and_leaves_the_reference_inside_grey():
    image, reference, prediction = overlay_case()
    figure = viz.overlay(image, reference, prediction, alpha=0.4)
    (ax,) = figure.axes
    grey = grey_of(0.5, 0.0, 1.0)
    assert_color(pixel(figure, ax, 28, 28), blended(viz.PREDICTION_COLOR, 0.4, grey))
    assert_color(pixel(figure, ax, 11, 11), grey)  # inside the reference: outline only
    assert_color(pixel(figure, ax, 38, 3), grey)  # outside both


def test_overlay_outlines_run_along_the_pixel_borders_in_their_colours():
    image, reference, prediction = overlay_case()
    figure = viz.overlay(image, reference, prediction, alpha=0.0, linewidth=6)
    (ax,) = figure.axes
    outlines = {c.get_gid(): c for c in ax.collections}
    assert len(ax.collections) == 2
    reference_outline, prediction_outline = ax.collections
    for outline, mask_square in ((reference_outline, (5, 17)), (prediction_outline, (22, 34))):
        vertices = np.concatenate([path.vertices for path in outline.get_paths()])
        first, last = mask_square  # pixels first..last-1: borders half a pixel outside
        np.testing.assert_allclose(vertices.min(axis=0), [first - 0.5, first - 0.5])
        np.testing.assert_allclose(vertices.max(axis=0), [last - 0.5, last - 0.5])
    assert set(outlines) == {"outline 1"}
    # The middle of each square's left border, drawn 6 points wide.
    assert_color(pixel(figure, ax, 4.5, 11), 255 * np.array(viz.REFERENCE_COLOR))
    assert_color(pixel(figure, ax, 21.5, 28), 255 * np.array(viz.PREDICTION_COLOR))
    legend = [text.get_text() for text in ax.get_legend().get_texts()]
    assert legend == ["reference", "prediction"]


def test_overlay_outlines_each_label_of_a_label_map():
    image = np.zeros((30, 30))
    labels = np.zeros((30, 30), dtype=np.uint8)
    labels[2:8, 2:8] = 1
    labels[15:25, 15:25] = 2
    figure = viz.overlay(image, reference=labels)
    gids = sorted(c.get_gid() for c in figure.axes[0].collections)
    assert gids == ["outline 1", "outline 2"]


def test_overlay_window_sets_the_grey_levels():
    image = np.zeros((20, 20))
    image[:, 10:] = 100.0
    figure = viz.overlay(image, window=(-100, 300))
    ax = figure.axes[0]
    assert_color(pixel(figure, ax, 5, 10), grey_of(0.0, -100, 300))
    assert_color(pixel(figure, ax, 15, 10), grey_of(100.0, -100, 300))


def test_overlay_of_a_constant_image_is_mid_grey():
    figure = viz.overlay(np.full((10, 10), -1000.0))
    assert_color(pixel(figure, figure.axes[0], 5, 5), grey_of(0.5, 0.0, 1.0))


@pytest.mark.parametrize(
    "arguments, named",
    [
        ({"image": np.zeros((4, 4, 4))}, "image"),
        ({"image": np.array([[0.0, np.nan], [1.0, 2.0]])}, "image"),
        ({"image": np.zeros((4, 4)), "reference": np.zeros((4, 5))}, "reference"),
        ({"image": np.zeros((4, 4)), "prediction": np.full((4, 4), 0.5)}, "prediction"),
        ({"image": np.zeros((4, 4)), "prediction": -np.ones((4, 4))}, "prediction"),
        ({"image": np.zeros((4, 4)), "alpha": 1.5}, "alpha"),
        ({"image": np.zeros((4, 4)), "alpha": "half"}, "alpha"),
        ({"image": np.zeros((4, 4)), "window": (5, 1)}, "window"),
        ({"image": np.zeros((4, 4)), "window": "abdomen"}, "window"),
    ],
)
def test_overlay_rejects_bad_arguments_by_name(arguments, named):
    with pytest.raises(ValueError, match=named):
        viz.overlay(**arguments)


# --------------------------------------------------------------------------- error map


def error_case():
    image = np.full((48, 48), 0.5)
    image[0, 0], image[0, 1] = 0.0, 1.0
    reference = square(image.shape, 4, 4, 12) | square(image.shape, 30, 30, 12)
    prediction = square(image.shape, 30, 30, 12) | square(image.shape, 4, 30, 12)
    # false negative square at rows/cols 4..15, false positive at rows 4..15 cols 30..41,
    # true positive at rows/cols 30..41
    return image, reference, prediction


def test_error_map_paints_false_positives_and_false_negatives_in_their_colours():
    image, reference, prediction = error_case()
    figure = viz.error_map(image, reference, prediction, alpha=1.0)
    (ax,) = figure.axes
    grey = grey_of(0.5, 0.0, 1.0)
    assert_color(pixel(figure, ax, 35, 10), 255 * np.array(viz.FALSE_POSITIVE_COLOR))
    assert_color(pixel(figure, ax, 10, 10), 255 * np.array(viz.FALSE_NEGATIVE_COLOR))
    assert_color(pixel(figure, ax, 35, 35), grey)  # true positives hidden by default
    assert_color(pixel(figure, ax, 10, 40), grey)  # background
    assert "FP 144 px, FN 144 px, TP 144 px" in ax.get_title()


def test_error_map_blends_with_alpha_and_can_show_true_positives():
    image, reference, prediction = error_case()
    figure = viz.error_map(image, reference, prediction, show_true_positives=True)
    (ax,) = figure.axes
    grey = grey_of(0.5, 0.0, 1.0)
    assert_color(pixel(figure, ax, 35, 10), blended(viz.FALSE_POSITIVE_COLOR, 0.6, grey))
    assert_color(pixel(figure, ax, 35, 35), blended(viz.TRUE_POSITIVE_COLOR, 0.6, grey))
    legend = [text.get_text() for text in ax.get_legend().get_texts()]
    assert legend == ["false positive", "false negative", "true positive"]


@pytest.mark.parametrize("named", ["reference", "prediction"])
def test_error_map_refuses_label_maps_naming_the_mask(named):
    image, reference, prediction = error_case()
    masks = {"reference": reference, "prediction": prediction}
    masks[named] = masks[named].astype(int) * 2
    with pytest.raises(ValueError, match=f"{named} must be binary"):
        viz.error_map(image, **masks)


# --------------------------------------------------------------------------- tri-planar


def test_tri_planar_cuts_through_the_reference_centre_with_the_spacing_aspect():
    volume = np.zeros((20, 30, 40))
    reference = np.zeros(volume.shape, dtype=bool)
    reference[4:9, 10:21, 26:35] = True  # centre of mass (6, 15, 30)
    volume[reference] = 1.0
    figure = viz.tri_planar(volume, reference=reference, spacing=(5.0, 0.5, 1.0))
    axial, coronal, sagittal = figure.axes
    assert [ax.get_title() for ax in figure.axes] == [
        "axial (z = 6)", "coronal (y = 15)", "sagittal (x = 30)",
    ]  # fmt: skip
    assert [(ax.get_xlabel(), ax.get_ylabel()) for ax in figure.axes] == [
        ("x", "y"), ("x", "z"), ("y", "z"),
    ]  # fmt: skip
    # imshow's aspect: the displayed height of one row over the width of one column.
    assert [ax.get_aspect() for ax in figure.axes] == [0.5 / 1.0, 5.0 / 1.0, 5.0 / 0.5]
    shown = [ax.images[0].get_array() for ax in figure.axes]
    np.testing.assert_array_equal(shown[0], volume[6])
    np.testing.assert_array_equal(shown[1], volume[:, 15, :])
    np.testing.assert_array_equal(shown[2], volume[:, :, 30])
    # Coronal and sagittal put slice 0 at the bottom.
    assert axial.yaxis_inverted() and not coronal.yaxis_inverted()
    assert not sagittal.yaxis_inverted()
    # Inside the reference's cut (off the dashed cut lines) white, outside black.
    assert_color(pixel(figure, coronal, 28, 5), [255, 255, 255])
    assert_color(pixel(figure, coronal, 5, 15), [0, 0, 0])


def test_tri_planar_defaults_to_the_volume_centre_and_takes_an_index():
    volume = np.arange(7 * 8 * 9, dtype=float).reshape(7, 8, 9)
    titles = [ax.get_title() for ax in viz.tri_planar(volume).axes]
    assert titles == ["axial (z = 3)", "coronal (y = 4)", "sagittal (x = 4)"]
    figure = viz.tri_planar(volume, index=(1, 2, 3))
    np.testing.assert_array_equal(figure.axes[2].images[0].get_array(), volume[:, :, 3])


def test_tri_planar_takes_the_spacing_of_a_kseg_volume():
    from kseg.io import Volume

    affine = np.diag([3.0, 0.75, 1.5, 1.0])  # index (k, j, i) to mm: spacing (3, 0.75, 1.5)
    volume = Volume(np.zeros((6, 8, 10)), affine, patient_id="p")
    aspects = [ax.get_aspect() for ax in viz.tri_planar(volume).axes]
    assert aspects == [0.75 / 1.5, 3.0 / 1.5, 3.0 / 0.75]
    given = [ax.get_aspect() for ax in viz.tri_planar(volume, spacing=(1, 1, 1)).axes]
    assert given == [1.0, 1.0, 1.0]
    labels = np.zeros((6, 8, 10), dtype=np.uint8)
    labels[1:4, 2:5, 5:8] = 1  # centre of mass (2, 3, 6)
    figure = viz.tri_planar(volume, reference=Volume(labels, affine, patient_id="p"))
    titles = [ax.get_title() for ax in figure.axes]
    assert titles == ["axial (z = 2)", "coronal (y = 3)", "sagittal (x = 6)"]


@pytest.mark.parametrize(
    "arguments, named",
    [
        ({"volume": np.zeros((4, 4))}, "volume"),
        ({"volume": np.zeros((4, 4, 4)), "index": (0, 0, 4)}, "index"),
        ({"volume": np.zeros((4, 4, 4)), "index": (1, 2)}, "index"),
        ({"volume": np.zeros((4, 4, 4)), "spacing": (1.0, 0.0, 1.0)}, "spacing"),
        ({"volume": np.zeros((4, 4, 4)), "spacing": (1.0, 1.0)}, "spacing"),
        ({"volume": np.zeros((4, 4, 4)), "reference": np.zeros((4, 4, 3))}, "reference"),
    ],
)
def test_tri_planar_rejects_bad_arguments_by_name(arguments, named):
    with pytest.raises(ValueError, match=named):
        viz.tri_planar(**arguments)


# --------------------------------------------------------------------------- training curves

HISTORY = {
    "loss": [0.9, 0.5, 0.3],
    "val_loss": [1.0, 0.6, 0.45],
    "dice": [0.2, 0.7, 0.9],
    "val_dice": [0.3, 0.8, 0.92],
    "val_volume_dice": [0.1, 0.5, 0.85],
    "val_patch_volume_gap": [0.2, 0.3, 0.07],
    "lr": [1e-3, 1e-3, 5e-4],
}


def curves_by_label(figure) -> dict:
    return {
        line.get_label(): line
        for ax in figure.axes
        for line in ax.lines
        if not line.get_label().startswith("_")
    }


def test_training_curves_plot_the_history_values_per_epoch_from_one():
    figure = viz.training_curves(HISTORY)
    assert [ax.get_ylabel() for ax in figure.axes] == ["loss", "Dice", "patch - volume Dice"]
    assert figure.axes[-1].get_xlabel() == "epoch"
    curves = curves_by_label(figure)
    assert set(curves) == set(HISTORY) - {"lr"}
    for key, line in curves.items():
        np.testing.assert_array_equal(line.get_xdata(), [1, 2, 3])
        np.testing.assert_array_equal(line.get_ydata(), HISTORY[key])
    assert [line.get_label() for line in figure.axes[1].lines] == [
        "dice", "val_dice", "val_volume_dice",
    ]  # fmt: skip
    zero = [line for line in figure.axes[2].lines if line.get_label().startswith("_")]
    np.testing.assert_array_equal(zero[0].get_ydata(), [0, 0])


def test_training_curves_read_the_csv_that_training_callbacks_write(tmp_path):
    # As keras.callbacks.CSVLogger writes it: epoch from 0, keys sorted, NA where missing.
    path = tmp_path / "history.csv"
    path.write_text(
        "epoch,dice,loss,val_dice,val_loss,val_patch_volume_gap,val_volume_dice\n"
        "0,0.2,0.9,0.3,1.0,NA,NA\n"
        "1,0.7,0.5,0.8,0.6,0.3,0.5\n"
        "2,0.9,0.3,0.92,0.45,0.07,0.85\n"
    )
    curves = curves_by_label(viz.training_curves(path))
    np.testing.assert_array_equal(curves["loss"].get_xdata(), [1, 2, 3])
    np.testing.assert_array_equal(curves["val_dice"].get_ydata(), [0.3, 0.8, 0.92])
    np.testing.assert_array_equal(curves["val_volume_dice"].get_ydata(), [np.nan, 0.5, 0.85])
    assert viz.training_curves(str(path)).axes[0].get_ylabel() == "loss"


def test_training_curves_take_a_keras_history_and_its_epoch_numbers():
    class History:  # keras.callbacks.History's two attributes, without importing Keras
        history = {"loss": [0.5, 0.4]}
        epoch = [3, 4]  # a run resumed at epoch 3

    figure = viz.training_curves(History())
    assert len(figure.axes) == 1
    np.testing.assert_array_equal(figure.axes[0].lines[0].get_xdata(), [4, 5])


def test_training_curves_show_only_the_panels_the_history_holds():
    figure = viz.training_curves({"dice": [0.1, 0.2], "val_dice": [0.2, 0.3]})
    assert [ax.get_ylabel() for ax in figure.axes] == ["Dice"]


@pytest.mark.parametrize(
    "history, message",
    [
        ({"lr": [0.1]}, "history holds none of"),
        ({"loss": [0.1, 0.2], "dice": [0.5]}, "history has keys with different numbers"),
        ([0.1, 0.2], "history must be"),
        ({"loss": ["low", "high"]}, r"history\['loss'\] must be per-epoch numbers"),
    ],
)
def test_training_curves_reject_bad_histories(history, message):
    with pytest.raises(ValueError, match=message):
        viz.training_curves(history)


# --------------------------------------------------------------------------- score tables


def two_class_table():
    from kseg.evaluation import PatientTable

    rng = np.random.default_rng(0)
    rows = []
    for number in range(12):
        rows.append(
            {
                "patient_id": f"p{number}",
                "dice_liver": float(rng.uniform(0.7, 1.0)),
                "dice_spleen": float(rng.uniform(0.3, 1.0)),
                "hd95_liver": float(rng.uniform(1.0, 20.0)),
                "hd95_spleen": float(rng.uniform(1.0, 40.0)),
                "reference_empty_liver": False,
                "reference_empty_spleen": number == 0,  # patient 0 has no spleen
            }
        )
    rows[1]["hd95_spleen"] = float("inf")  # spleen missed entirely
    rows[2]["dice_liver"] = float("nan")
    return PatientTable(rows)


def bar_heights(ax) -> np.ndarray:
    return np.array([patch.get_height() for patch in ax.patches])


def test_score_histograms_count_what_numpy_counts_per_metric_and_class():
    table = two_class_table()
    figure = viz.score_histograms(table, ("dice", "hd95"), bins=5)
    assert len(figure.axes) == 4
    dice_liver, dice_spleen, hd95_liver, hd95_spleen = figure.axes
    liver = table.column("dice_liver")[~np.isnan(table.column("dice_liver"))]
    np.testing.assert_array_equal(
        bar_heights(dice_liver), np.histogram(liver, bins=5, range=(0, 1))[0]
    )
    spleen = table.column("dice_spleen")[1:]  # patient 0 has an empty reference
    np.testing.assert_array_equal(
        bar_heights(dice_spleen), np.histogram(spleen, bins=5, range=(0, 1))[0]
    )
    distances = table.column("hd95_spleen")[2:]  # empty reference, then inf
    np.testing.assert_array_equal(bar_heights(hd95_spleen), np.histogram(distances, 5)[0])
    assert dice_liver.get_title() == "dice – liver (n = 11)\n(1 nan left out)"
    assert dice_spleen.get_title() == "dice – spleen (n = 11)\n(1 empty reference left out)"
    assert hd95_spleen.get_title() == "hd95 – spleen (n = 10)\n(1 inf, 1 empty reference left out)"
    assert hd95_liver.get_xlabel() == "hd95 (mm)"
    assert dice_liver.get_ylabel() == "patients"


def test_score_histograms_of_a_binary_table_and_with_empty_references_kept():
    from kseg.evaluation import PatientTable

    table = PatientTable(
        [
            {"patient_id": "a", "dice": 0.95, "reference_empty": False},
            {"patient_id": "b", "dice": 0.85, "reference_empty": False},
            {"patient_id": "c", "dice": 1.0, "reference_empty": True},
        ]
    )
    (ax,) = viz.score_histograms(table, "dice", bins=2).axes
    np.testing.assert_array_equal(bar_heights(ax), [0, 2])
    (ax,) = viz.score_histograms(table, "dice", bins=2, skip_empty_references=False).axes
    np.testing.assert_array_equal(bar_heights(ax), [0, 3])
    assert ax.get_title() == "dice (n = 3)"


def test_score_boxplots_draw_quartiles_and_every_patient():
    table = two_class_table()
    figure = viz.score_boxplots(table, ("dice", "hd95"))
    assert [ax.get_title() for ax in figure.axes] == ["dice", "hd95"]
    dice_ax = figure.axes[0]
    lines = {line.get_gid(): line for line in dice_ax.lines if line.get_gid()}
    spleen = table.column("dice_spleen")[1:]
    q1, median, q3 = np.percentile(spleen, [25, 50, 75])
    np.testing.assert_allclose(lines["median dice_spleen"].get_ydata(), [median, median])
    np.testing.assert_allclose(sorted(set(lines["box dice_spleen"].get_ydata())), [q1, q3])
    points = {c.get_gid(): c for c in dice_ax.collections}
    np.testing.assert_array_equal(
        np.sort(points["patients dice_spleen"].get_offsets()[:, 1]), np.sort(spleen)
    )
    labels = [label.get_text() for label in dice_ax.get_xticklabels()]
    assert labels == [
        "liver\nn = 11 (1 nan left out)",
        "spleen\nn = 11 (1 empty reference left out)",
    ]
    assert figure.axes[1].get_ylabel() == "hd95 (mm)"


@pytest.mark.parametrize("function", [viz.score_histograms, viz.score_boxplots])
def test_score_plots_reject_unknown_metrics_and_empty_tables(function):
    from kseg.evaluation import PatientTable

    with pytest.raises(ValueError, match="metrics: the table has no 'assd' columns"):
        function(two_class_table(), ("dice", "assd"))
    with pytest.raises(ValueError, match="table has no patients"):
        function(PatientTable(), "dice")
    with pytest.raises(ValueError, match="table must be a kseg.evaluation.PatientTable"):
        function({"dice": [0.5]}, "dice")


def test_score_histograms_reject_bad_bins():
    with pytest.raises(ValueError, match="bins"):
        viz.score_histograms(two_class_table(), "dice", bins=0)


# --------------------------------------------------------------------------- accuracy vs Dice


def test_accuracy_vs_dice_places_each_case_at_its_dice_and_accuracy():
    shape = (100, 100)
    small = square(shape, 10, 10, 2)  # 4 pixels: 0.04 % of the image
    large = square(shape, 20, 20, 50)  # 2500 pixels: 25 %
    cases = {
        "small missed": (small, np.zeros(shape, dtype=bool)),
        "large half": (large, square(shape, 20, 20, 50) & (np.arange(100) < 45)),
        "empty": (np.zeros(shape), np.zeros(shape)),
    }
    figure = viz.accuracy_vs_dice(cases)
    scatter_ax, colorbar_ax = figure.axes
    (points,) = [c for c in scatter_ax.collections if c.get_gid() == "cases"]
    # Hand-worked: a missed 4-pixel organ is 99.96 % accurate with Dice 0; the large organ
    # predicted over columns 20..44 (25 of 50) has Dice 2*1250/(2500+1250) and 1250 wrong.
    np.testing.assert_allclose(
        points.get_offsets(), [[0.0, 0.9996], [2 * 1250 / 3750, 1 - 1250 / 10000]]
    )
    np.testing.assert_allclose(points.get_array(), [4 / 10000, 2500 / 10000])
    assert scatter_ax.get_xlabel() == "Dice"
    assert scatter_ax.get_ylabel() == "pixel accuracy"
    assert "2 cases (1 with an empty reference left out)" in scatter_ax.get_title()
    assert colorbar_ax.get_ylabel() == "foreground fraction (reference)"
    diagonal = scatter_ax.lines[0]
    assert diagonal.get_label() == "accuracy = Dice"


def test_accuracy_vs_dice_takes_a_sequence_of_pairs():
    pair = (square((10, 10), 2, 2, 3), square((10, 10), 2, 2, 3))
    points = viz.accuracy_vs_dice([pair, pair]).axes[0].collections[0]
    np.testing.assert_allclose(points.get_offsets(), [[1.0, 1.0], [1.0, 1.0]])


@pytest.mark.parametrize(
    "cases, message",
    [
        ({}, "cases is empty"),
        ({"a": (np.zeros((4, 4)), np.zeros((4, 4)))}, "cases: all 1 references are empty"),
        ({"a": np.zeros((4, 4))}, "cases: case 'a' must be a"),
        ({"a": (np.ones((4, 4)), np.ones((4, 5)))}, r"cases\['a'\] prediction has shape"),
        ({"a": (np.full((4, 4), 2), np.ones((4, 4)))}, r"cases\['a'\] reference must be binary"),
    ],
)
def test_accuracy_vs_dice_rejects_bad_cases(cases, message):
    with pytest.raises(ValueError, match=message):
        viz.accuracy_vs_dice(cases)


# --------------------------------------------------------------------------- per-slice Dice


def test_per_slice_dice_scores_each_slice_and_marks_empty_ones_nan():
    reference = np.zeros((3, 4, 4), dtype=bool)
    prediction = np.zeros((3, 4, 4), dtype=bool)
    reference[0, :2, :2] = True  # 4 pixels
    prediction[0, :2, :1] = True  # 2 of them
    prediction[2, 0, 0] = True  # a false positive on a slice without reference
    np.testing.assert_allclose(viz.per_slice_dice(reference, prediction), [2 * 2 / 6, np.nan, 0.0])
    # Along x: column 0 holds 2 reference pixels and 3 predicted (2 shared): Dice 4/5;
    # column 1 holds 2 reference pixels, none predicted; columns 2 and 3 hold nothing.
    np.testing.assert_allclose(
        viz.per_slice_dice(reference, prediction, axis=2), [4 / 5, 0.0, np.nan, np.nan]
    )
    with pytest.raises(ValueError, match="axis"):
        viz.per_slice_dice(reference, prediction, axis=3)


def test_slice_dice_heatmap_resamples_patients_to_slice_positions():
    scores = {
        "p1": np.array([np.nan, 0.0, 1.0, np.nan]),
        "p2": np.array([0.2, 0.4, 0.6, 0.8, 1.0, np.nan, np.nan, np.nan]),
    }
    figure = viz.slice_dice_heatmap(scores, positions=4)
    heatmap_ax, colorbar_ax = figure.axes
    shown = heatmap_ax.images[0].get_array()
    # p2 has two slices per column: means of (0.2, 0.4), (0.6, 0.8), (1.0, nan), (nan, nan)
    np.testing.assert_allclose(
        shown.filled(np.nan), [[np.nan, 0.0, 1.0, np.nan], [0.3, 0.7, 1.0, np.nan]]
    )
    assert [label.get_text() for label in heatmap_ax.get_yticklabels()] == ["p1", "p2"]
    assert colorbar_ax.get_ylabel() == "Dice"
    # Cell colours: p1's column 1 is viridis(0), column 2 viridis(1), column 0 no score.
    import matplotlib

    viridis = matplotlib.colormaps["viridis"]
    assert_color(pixel(figure, heatmap_ax, 0.375, 0), 255 * np.array(viridis(0.0)[:3]))
    assert_color(pixel(figure, heatmap_ax, 0.625, 0), 255 * np.array(viridis(1.0)[:3]))
    assert_color(pixel(figure, heatmap_ax, 0.125, 0), 255 * np.array(viz.NO_SCORE_COLOR))
    assert_color(pixel(figure, heatmap_ax, 0.875, 1), 255 * np.array(viz.NO_SCORE_COLOR))


def test_slice_dice_heatmap_spreads_few_slices_over_many_positions():
    figure = viz.slice_dice_heatmap({"p": [0.5, 1.0]}, positions=4)
    np.testing.assert_allclose(figure.axes[0].images[0].get_array(), [[0.5, 0.5, 1.0, 1.0]])
    default = viz.slice_dice_heatmap({"a": np.zeros(3), "b": np.zeros(7)})
    assert default.axes[0].images[0].get_array().shape == (2, 7)


@pytest.mark.parametrize(
    "scores, positions, message",
    [
        ({}, None, "per_slice_scores must be a non-empty"),
        ([0.5, 0.6], None, "per_slice_scores must be a non-empty"),
        ({"p": np.zeros((2, 2))}, None, r"per_slice_scores\['p'\] must be a non-empty 1D"),
        ({"p": [0.5, 1.5]}, None, r"per_slice_scores\['p'\] holds Dice values outside"),
        ({"p": [0.5]}, 0, "positions must be a positive integer"),
    ],
)
def test_slice_dice_heatmap_rejects_bad_input(scores, positions, message):
    with pytest.raises(ValueError, match=message):
        viz.slice_dice_heatmap(scores, positions=positions)


# --------------------------------------------------------------------------- uncertainty


def test_uncertainty_map_shows_the_uncertainty_in_its_colormap_beside_the_image():
    import matplotlib

    image = np.full((40, 40), 0.5)
    image[0, 0], image[0, 1] = 0.0, 1.0
    uncertainty = np.zeros((40, 40))
    uncertainty[5:15, 5:15] = 0.25
    uncertainty[25:35, 25:35] = 1.0
    reference = square((40, 40), 20, 20, 10)
    figure = viz.uncertainty_map(image, uncertainty, reference=reference)
    image_ax, uncertainty_ax, colorbar_ax = figure.axes
    assert [image_ax.get_title(), uncertainty_ax.get_title()] == ["image", "uncertainty"]
    assert colorbar_ax.get_ylabel() == "uncertainty"
    magma = matplotlib.colormaps["magma"]
    assert_color(pixel(figure, uncertainty_ax, 10, 10), 255 * np.array(magma(0.25)[:3]))
    assert_color(pixel(figure, uncertainty_ax, 32, 32), 255 * np.array(magma(1.0)[:3]))
    assert_color(pixel(figure, uncertainty_ax, 36, 4), 255 * np.array(magma(0.0)[:3]))
    assert_color(pixel(figure, image_ax, 10, 10), grey_of(0.5, 0.0, 1.0))
    for ax in (image_ax, uncertainty_ax):
        assert [c.get_gid() for c in ax.collections] == ["outline 1"]
    halved = viz.uncertainty_map(image, uncertainty, vmax=0.5)
    assert_color(pixel(halved, halved.axes[1], 10, 10), 255 * np.array(magma(0.5)[:3]))


@pytest.mark.parametrize(
    "arguments, message",
    [
        ({"uncertainty": np.zeros((4, 5))}, "uncertainty has shape"),
        ({"uncertainty": np.full((4, 4), np.nan)}, "uncertainty holds 16 NaN"),
        ({"uncertainty": np.zeros((4, 4)), "vmax": -1.0}, "vmax must be above"),
        ({"uncertainty": np.zeros((4, 4)), "reference": np.zeros(4)}, "reference has shape"),
    ],
)
def test_uncertainty_map_rejects_bad_arguments_by_name(arguments, message):
    with pytest.raises(ValueError, match=message):
        viz.uncertainty_map(np.zeros((4, 4)), **arguments)
