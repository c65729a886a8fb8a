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
