"""Inputs from real users that kseg's inference and models handled wrongly (session 23b hunt)."""

import numpy as np
import pytest

from kseg.inference import fit_ensemble_weights


def test_wrong_channel_count_is_named_after_predict_retraced_for_any_shape():
    """Predicting volumes of different sizes makes Keras retrace the step with unknown
    sizes; a later batch with the wrong channel count (an RGB image for a grey model) then
    retraces with the channel axis unknown too, and failed inside the first convolution
    with a bare XLA "Depth of output must be a multiple of the number of groups"."""
    import tensorflow as tf

    from kseg import models

    model = models.build("unet", input_shape=(None, None, 1), depth=1, base_filters=2)
    for shape in ((1, 8, 8, 1), (2, 4, 6, 1)):
        assert model.predict_on_batch(np.zeros(shape, "float32")).shape == shape
    with pytest.raises(
        tf.errors.InvalidArgumentError, match=r"unet expects 1 channel\(s\) on the last axis"
    ):
        model.predict_on_batch(np.zeros((1, 8, 8, 3), "float32"))


@pytest.mark.parametrize(
    ("reference", "named"),
    [
        (np.array([0, 255, 255, 0], np.uint8), "255"),  # a 0/255 PNG mask
        (np.array([0.0, 0.5, 1.0, 0.0]), "0.5"),  # a resampled mask, not labels
        (np.array([0.0, np.nan, 1.0, 0.0]), "nan"),
    ],
)
def test_fit_ensemble_weights_refuses_references_that_are_not_labels(reference, named):
    """A 0/255 mask has no voxel of label 1: every weight scored Dice 0 and the fit returned
    arbitrary weights (the last grid point) as if fitted, with no word of the mask."""
    good = np.array([[0.1], [0.9], [0.8], [0.2]])
    bad = np.array([[0.9], [0.2], [0.3], [0.7]])
    with pytest.raises(ValueError, match=rf"references\[0\] holds values \[{named}"):
        fit_ensemble_weights([[good, bad]], [reference], step=0.25, progress=False)
    # the same mask as labels fits the good member (hand-worked: it thresholds to 0 1 1 0)
    fitted = fit_ensemble_weights(
        [[good, bad]], [np.array([0, 1, 1, 0])], step=0.25, progress=False
    )
    assert fitted.weights.tolist() == [1.0, 0.0] and fitted.dice == 1.0


def test_beam_prediction_refuses_an_output_folder_that_holds_its_inputs(tmp_path):
    """A NIfTI prediction has its volume's file name: with the input folder as output_dir
    every volume was "already predicted" (the input itself), so nothing ran and the result
    listed the inputs as skipped predictions. The docstring said: never an input folder."""
    pytest.importorskip("apache_beam")
    import nibabel as nib

    from kseg.errors import LayoutError
    from kseg.inference import predict_volumes

    scans = tmp_path / "imagesTs"
    scans.mkdir()
    volume = scans / "spleen_1.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 2), np.int16), np.eye(4)), str(volume))
    content = volume.read_bytes()
    inference = {"kind": "slices", "window": [-100.0, 200.0], "image_size": [8, 8],
                 "num_classes": 2}  # fmt: skip
    model = tmp_path / "never_loaded.keras"
    for given in (scans, volume):
        with pytest.raises(LayoutError, match="spleen_1.nii.gz: is an input file"):
            predict_volumes(model, inference, [given], scans, labels={"spleen": 1})
    # a DICOM series folder (a folder without NIfTI files): predictions inside it would
    # join the series the next run reads
    series = tmp_path / "CT" / "DICOM_anon"
    series.mkdir(parents=True)
    (series / "IM-0001.dcm").write_bytes(b"")
    with pytest.raises(LayoutError, match="lies in the input folder"):
        predict_volumes(model, inference, [series], series, format="dicom-seg",
                        labels={"spleen": 1})  # fmt: skip
    assert volume.read_bytes() == content and sorted(scans.iterdir()) == [volume]
    assert sorted(series.iterdir()) == [series / "IM-0001.dcm"]


def test_mc_dropout_refuses_a_model_whose_dropout_rate_is_zero():
    """``Dropout(config.dropout)`` built with dropout 0 is a dropout layer that drops
    nothing: every MC sample was the same prediction and mc_dropout reported a variance of
    exactly 0 everywhere, as if the model were certain."""
    import keras

    from kseg.inference import mc_dropout

    x = np.linspace(-1, 1, 16, dtype=np.float32).reshape(1, 4, 4, 1)

    def net(rate):
        return keras.Sequential([keras.Input((None, None, 1)), keras.layers.Dropout(rate),
                                 keras.layers.Activation("sigmoid")])  # fmt: skip

    with pytest.raises(ValueError, match="no dropout layer with a rate above 0"):
        mc_dropout(net(0.0), x, samples=3)
    keras.utils.set_random_seed(0)
    assert mc_dropout(net(0.5), x, samples=8).variance.max() > 0


@pytest.mark.parametrize("labels", [{"liver": "one", "spleen": 2}, {"liver": None}])
def test_report_of_a_config_whose_labels_are_not_numbers_is_written(tmp_path, labels):
    """config.json is a file a user may edit; a label value that is no number crashed the
    whole report with a bare ``int()`` ValueError/TypeError, though the report otherwise
    shows what a config.json holds. The class is left out, the rest of the page stays."""
    pytest.importorskip("matplotlib")
    import json

    from test_report import box_case, parse, viewers, write_config, write_evaluation

    from kseg import report

    run = tmp_path / "run"
    config = write_config(run)
    config["labels"] = labels
    (run / "config.json").write_text(json.dumps(config))
    write_evaluation(run, {"p1": box_case(3, 8, 8, (0, 2, 1, 5, 1, 5), (0, 2, 1, 5, 2, 6), 0)})
    page = parse(report.write_report(run))
    assert list(viewers(page)) == ["p1"]
    facts = {row.find("th").all_text(): row.find("td").all_text()
             for row in page.find("table", "facts").find_all("tr")}  # fmt: skip
    assert json.loads(facts["labels"]) == labels


def test_patient_ids_with_dollar_signs_are_drawn_as_written():
    """Matplotlib reads text between two ``$`` as TeX: the per-slice Dice heatmap drew the
    patient ``b$x$`` as an italic "bx", and one id that is no valid TeX (``a$\\frac$``)
    made the whole figure fail when drawn, so the report lost it for every patient."""
    pytest.importorskip("matplotlib")
    from matplotlib import cbook

    from kseg import viz

    scores = {"a$\\frac$": np.array([0.5, 1.0]), "b$x$": np.array([0.25]), "c$": np.ones(3)}
    figure = viz.slice_dice_heatmap(scores)
    assert viz.png_bytes(figure).startswith(b"\x89PNG")
    shown = []
    for label in figure.axes[0].get_yticklabels():
        assert not cbook.is_math_text(label.get_text())
        shown.append(label.get_text().replace(r"\$", "$"))
    assert shown == list(scores)


def test_mc_dropout_of_a_unet_names_the_input_size_rule():
    """mc_dropout_model clones the model, and the clone of a SegmentationModel lost its
    size_divisor: an odd-sized batch failed deep inside with a bare Concatenate error,
    where the same model outside MC dropout names the "divisible by 2**depth" rule."""
    from kseg import models
    from kseg.inference import mc_dropout, mc_dropout_model

    model = models.build("unet", input_shape=(None, None, 1), depth=2, base_filters=2,
                         dropout=0.2)  # fmt: skip
    odd = np.zeros((1, 6, 8, 1), np.float32)
    message = r"unet needs spatial sizes divisible by 4.*axis 1 \(height\) has size 6"
    with pytest.raises(ValueError, match=message):
        model(odd)  # the rule outside MC dropout
    with pytest.raises(ValueError, match=message):
        mc_dropout(model, odd, samples=2)
    assert mc_dropout_model(model).predict_on_batch(np.zeros((1, 8, 4, 1), "float32")).shape == (
        1, 8, 4, 1
    )


@pytest.mark.parametrize(
    ("arguments", "message"),
    [((10, 4, 1.0), "overlap must be in"), ((100, 10, -1.0), "overlap must be in"),
     ((10, 0, 0.5), "window length must be at least 1")],
)  # fmt: skip
def test_window_starts_refuses_what_sliding_window_refuses(arguments, message):
    """window_starts is public: overlap 1 or a 0-voxel window died in a bare
    ZeroDivisionError, and a negative overlap returned windows with gaps between them
    ([0, 18, 36, ...] for 10-voxel windows: 8 voxels per gap covered by none)."""
    from kseg.inference import window_starts

    with pytest.raises(ValueError, match=message):
        window_starts(*arguments)
    # the documented case still holds: every voxel of the axis in some window
    starts = window_starts(110, 64, 0.5)
    assert starts == [0, 23, 46]
    covered = np.zeros(110, bool)
    for start in starts:
        covered[start : start + 64] = True
    assert covered.all()
