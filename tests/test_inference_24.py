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
