"""Monte Carlo dropout: predictive uncertainty from a network trained with dropout.

Keeping dropout active at test time and averaging ``T`` stochastic passes approximates the
Bayesian predictive distribution (Gal and Ghahramani, 2016). The obvious way,
``model(x, training=True)``, is wrong in Keras: ``training=True`` also switches every
BatchNormalization layer to batch statistics, so predictions depend on what else is in the
batch, and it makes BatchNormalization overwrite its moving mean and variance with each
call, silently changing the trained model. :func:`mc_dropout_model` therefore rebuilds the
graph around the *same* layer objects (weights are shared, nothing is copied) with each
dropout layer wrapped so that it alone always runs in training mode; the rebuilt model is
then run in inference mode, so normalisation uses the stored statistics and nothing is
updated.
"""

from __future__ import annotations

import dataclasses

import keras
import numpy as np
from scipy.special import entr

from kseg.inference._predictor import as_batch_predictor

DROPOUT_LAYERS = (
    keras.layers.Dropout,  # SpatialDropout1D/2D/3D derive from it
    keras.layers.GaussianDropout,
    keras.layers.AlphaDropout,
)


class _AlwaysOnDropout(keras.layers.Layer):
    """Runs the wrapped dropout layer with ``training=True`` whatever the model is told.

    Its ``call`` takes no ``training`` argument, so the Functional graph cannot pass the
    model's ``training=False`` down to the dropout layer inside it.
    """

    def __init__(self, dropout: keras.layers.Layer, **kwargs):
        super().__init__(name=f"mc_{dropout.name}", **kwargs)
        self.dropout = dropout

    def call(self, inputs):
        return self.dropout(inputs, training=True)

    def compute_output_shape(self, input_shape):
        return input_shape


def mc_dropout_model(model: keras.Model) -> keras.Model:
    """A view of ``model`` whose dropout layers stay stochastic in inference mode.

    The returned model shares every layer and weight with ``model``; only the dropout layers
    (``Dropout``, ``SpatialDropout*``, ``GaussianDropout``, ``AlphaDropout``) are wrapped to
    run with ``training=True``. BatchNormalization and every other layer keep inference
    behaviour, and no moving statistic is updated. Nested Functional/Sequential models are
    handled; subclassed models cannot be rebuilt this way.

    Args:
        model: a Functional or Sequential ``keras.Model`` containing dropout layers.

    Returns:
        A ``keras.Model``; each call (or ``predict``) draws fresh dropout masks.

    Example:
        >>> stochastic = mc_dropout_model(unet_3d)
        >>> one_sample = sliding_window(stochastic, ct[..., None], roi_size=96)

    Reference:
        Gal and Ghahramani, "Dropout as a Bayesian approximation: representing model
        uncertainty in deep learning", ICML 2016.
    """
    wrapped = []

    def keep_dropout_on(layer):
        if isinstance(layer, DROPOUT_LAYERS):
            wrapped.append(layer.name)
            return _AlwaysOnDropout(layer)
        return layer

    try:
        stochastic = keras.models.clone_model(model, clone_function=keep_dropout_on, recursive=True)
    except ValueError as error:
        raise ValueError(
            f"model {model.name!r} cannot be rebuilt with stochastic dropout "
            f"(only Functional and Sequential models can): {error}"
        ) from error
    if not wrapped:
        raise ValueError(
            f"model {model.name!r} has no dropout layer; MC dropout needs a model trained "
            "with dropout (e.g. build it with a dropout rate > 0)"
        )
    return stochastic


@dataclasses.dataclass(frozen=True)
class MCDropoutResult:
    """Summary of ``T`` stochastic predictions of the same batch.

    Attributes:
        mean: mean probability, shape of one prediction ``(n, *spatial, C)``.
        variance: per-channel variance of the probability over the samples (population
            variance, divisor ``T``), same shape.
        predictive_entropy: entropy in nats of the mean prediction, ``(n, *spatial)``: total
            uncertainty. One channel is read as a sigmoid (binary entropy), several as a
            softmax distribution.
        mutual_information: predictive entropy minus the mean entropy of the single samples,
            ``(n, *spatial)``: the part of the uncertainty that comes from the model (BALD).
    """

    mean: np.ndarray
    variance: np.ndarray
    predictive_entropy: np.ndarray
    mutual_information: np.ndarray


def _entropy(probabilities: np.ndarray) -> np.ndarray:
    if probabilities.shape[-1] == 1:
        p = probabilities[..., 0].astype(np.float64)
        return entr(p) + entr(1.0 - p)
    return entr(probabilities.astype(np.float64)).sum(axis=-1)


def mc_dropout(model: keras.Model, x: np.ndarray, samples: int = 20) -> MCDropoutResult:
    """Predict ``x`` ``samples`` times with dropout on and summarise the spread.

    Running statistics (Welford's mean and variance, summed entropies) are kept instead of
    the samples, so memory is a few copies of one prediction whatever ``samples`` is.

    Args:
        model: a Functional or Sequential model with dropout layers, ending in sigmoid (one
            channel) or softmax (several). See :func:`mc_dropout_model` for how BatchNorm is
            kept in inference mode.
        x: a model input batch ``(n, *spatial, C)``.
        samples: number of stochastic forward passes (at least 2).

    Returns:
        :class:`MCDropoutResult`.

    Example:
        >>> result = mc_dropout(unet_2d, images, samples=20)
        >>> uncertain = result.mutual_information > 0.1

    Reference:
        Gal and Ghahramani, ICML 2016; Houlsby et al., "Bayesian active learning for
        classification and preference learning", 2011 (mutual information, BALD).
    """
    if not isinstance(samples, (int, np.integer)) or samples < 2:
        raise ValueError(f"samples must be an integer >= 2, got {samples!r}")
    predict = as_batch_predictor(mc_dropout_model(model))
    x = np.asarray(x, dtype=np.float32)
    mean = squared_deviations = sample_entropy_sum = None
    for count in range(1, samples + 1):
        probabilities = predict(x).astype(np.float64)
        if mean is None:
            if probabilities.min() < 0 or probabilities.max() > 1:
                raise ValueError(
                    f"model {model.name!r} outputs values outside [0, 1]; MC dropout summarises "
                    "probabilities, so end the model in sigmoid or softmax"
                )
            mean = np.zeros_like(probabilities)
            squared_deviations = np.zeros_like(probabilities)
            sample_entropy_sum = np.zeros(probabilities.shape[:-1])
        deviation = probabilities - mean
        mean += deviation / count
        squared_deviations += deviation * (probabilities - mean)
        sample_entropy_sum += _entropy(probabilities)
    predictive_entropy = _entropy(mean)
    mutual_information = np.maximum(predictive_entropy - sample_entropy_sum / samples, 0.0)
    return MCDropoutResult(
        mean=mean.astype(np.float32),
        variance=(squared_deviations / samples).astype(np.float32),
        predictive_entropy=predictive_entropy.astype(np.float32),
        mutual_information=mutual_information.astype(np.float32),
    )
