"""Whole-volume inference: slice-wise, sliding window, flip TTA, MC dropout, ensembles,
and post-processing of the predicted label maps.

Every entry point takes a ``keras.Model`` or any callable batch -> batch, and the wrappers
(:func:`flip_tta`, :func:`ensemble_predictor`, :func:`mc_dropout_model`) return such
predictors, so they compose: ``sliding_window(flip_tta(ensemble_predictor(paths)), ...)``.

Importing this package stays numpy-only; the MC dropout names, which need Keras, and the
batch prediction on Apache Beam (:mod:`kseg.inference.beam`, the extra ``kseg[beam]``) load
on first use.
"""

import importlib

from kseg.inference.ensemble import (
    FittedEnsembleWeights,
    ensemble_predictor,
    fit_ensemble_weights,
    majority_vote,
)
from kseg.inference.postprocess import keep_largest_component
from kseg.inference.slices import predict_slices
from kseg.inference.sliding_window import gaussian_importance_map, sliding_window, window_starts
from kseg.inference.tta import SpatialTransform, flip_tta, spatial_transforms

_KERAS_EXPORTS = ("MCDropoutResult", "mc_dropout", "mc_dropout_model")
# uncertainty.py imports Keras for mc_dropout_model, so its numpy-only maps load lazily too.
_KERAS_EXPORTS += (
    "TTAUncertainty",
    "UncertaintyDecomposition",
    "decompose_uncertainty",
    "HeteroscedasticUncertainty",
    "aleatoric_variance",
    "heteroscedastic_uncertainty",
    "tta_uncertainty",
    "uncertainty_summary",
)
# beam.py imports apache-beam, the optional extra kseg[beam].
_BEAM_EXPORTS = (
    "BatchPrediction",
    "PredictVolumeFn",
    "predict_run_volumes",
    "predict_volumes",
    "prediction_file",
)

__all__ = [
    "BatchPrediction",
    "FittedEnsembleWeights",
    "HeteroscedasticUncertainty",
    "MCDropoutResult",
    "PredictVolumeFn",
    "SpatialTransform",
    "TTAUncertainty",
    "UncertaintyDecomposition",
    "aleatoric_variance",
    "decompose_uncertainty",
    "ensemble_predictor",
    "fit_ensemble_weights",
    "flip_tta",
    "gaussian_importance_map",
    "heteroscedastic_uncertainty",
    "keep_largest_component",
    "majority_vote",
    "mc_dropout",
    "mc_dropout_model",
    "predict_run_volumes",
    "predict_slices",
    "predict_volumes",
    "prediction_file",
    "sliding_window",
    "spatial_transforms",
    "tta_uncertainty",
    "uncertainty_summary",
    "window_starts",
]


def __getattr__(name):
    if name in _KERAS_EXPORTS:
        return getattr(importlib.import_module(f"{__name__}.uncertainty"), name)
    if name in _BEAM_EXPORTS:
        return getattr(importlib.import_module(f"{__name__}.beam"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + list(_KERAS_EXPORTS) + list(_BEAM_EXPORTS))
