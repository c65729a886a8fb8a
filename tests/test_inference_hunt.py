"""Inputs from real users that kseg's inference and models handled wrongly (session 23b hunt)."""

import numpy as np
import pytest


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
