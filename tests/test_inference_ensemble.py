"""Ensemble averaging against numpy, including a saved checkpoint."""

import keras
import numpy as np
import pytest

from kseg.inference import ensemble_predictor


def scaling_model(factor):
    inputs = keras.Input((4, 4, 1))
    conv = keras.layers.Conv2D(1, 1, use_bias=False)
    model = keras.Model(inputs, conv(inputs))
    conv.set_weights([np.full((1, 1, 1, 1), factor, dtype=np.float32)])
    return model


def test_mean_of_models_and_a_checkpoint(tmp_path):
    path = tmp_path / "member.keras"
    scaling_model(5.0).save(path)
    batch = np.random.default_rng(5).normal(size=(3, 4, 4, 1)).astype(np.float32)
    output = ensemble_predictor([scaling_model(1.0), scaling_model(3.0), path])(batch)
    np.testing.assert_allclose(output, batch * (1 + 3 + 5) / 3, rtol=1e-6)


def test_weights_are_normalised():
    batch = np.ones((1, 4, 4, 1), dtype=np.float32)
    output = ensemble_predictor([lambda b: b * 2, lambda b: b * 10], weights=[3, 1])(batch)
    np.testing.assert_allclose(output, np.full_like(batch, (3 * 2 + 10) / 4))


def test_rejects_members_with_different_outputs_and_bad_weights():
    mismatched = ensemble_predictor([lambda b: b, lambda b: np.concatenate([b, b], axis=-1)])
    with pytest.raises(ValueError, match="member 1"):
        mismatched(np.ones((1, 2, 2, 1)))
    with pytest.raises(ValueError, match="weights"):
        ensemble_predictor([np.square, np.square], weights=[1.0])
