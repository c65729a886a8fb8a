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
    # the right count still runs through the step traced for any shape
    assert model.predict_on_batch(np.zeros((3, 6, 4, 1), "float32")).shape == (3, 6, 4, 1)


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
