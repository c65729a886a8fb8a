"""Average the probabilities of several models or saved checkpoints."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence

import numpy as np

from kseg.inference._predictor import as_batch_predictor


def _load_member(member):
    if isinstance(member, (str, os.PathLike)):
        from kseg import load_model

        # kseg.load_model registers kseg's layers first; losses and metrics are not needed to
        # predict, and compile=False keeps checkpoints trained with other custom losses loadable.
        return load_model(os.fspath(member), compile=False)
    return member


def ensemble_predictor(
    members: Sequence, *, weights: Sequence[float] | None = None
) -> Callable[[np.ndarray], np.ndarray]:
    """Wrap several predictors into one that returns their weighted mean probability.

    Averaging probabilities (not labels) of models trained on different folds or seeds is
    the ensembling nnU-Net uses for its final predictions.

    Args:
        members: ``keras.Model`` objects, callables batch -> batch, or paths of saved
            ``.keras`` checkpoints (loaded once with :func:`kseg.load_model`,
            ``compile=False``). All must produce the same output shape.
        weights: one non-negative weight per member (normalised to sum 1); equal by default.

    Returns:
        A callable batch -> float32 batch, usable wherever a predictor is accepted
        (:func:`kseg.inference.sliding_window`, :func:`kseg.inference.predict_slices`).

    Example:
        >>> folds = ensemble_predictor([f"fold{k}/best.keras" for k in range(5)])
        >>> probabilities = sliding_window(folds, ct[..., None], roi_size=96)

    Reference:
        Isensee et al., "nnU-Net: a self-configuring method for deep learning-based biomedical
        image segmentation", Nature Methods 18, 2021 (five-fold ensemble).
    """
    members = list(members)
    if not members:
        raise ValueError("members must hold at least one model, callable or checkpoint path")
    if weights is None:
        weights = np.full(len(members), 1.0 / len(members))
    else:
        weights = np.asarray(weights, dtype=np.float64)
        if weights.shape != (len(members),) or (weights < 0).any() or weights.sum() <= 0:
            raise ValueError(
                f"weights must be {len(members)} non-negative numbers with a positive sum, "
                f"got {weights.tolist()}"
            )
        weights = weights / weights.sum()
    predictors = [as_batch_predictor(_load_member(member)) for member in members]

    def predict_mean(batch: np.ndarray) -> np.ndarray:
        total = None
        for index, (predict, weight) in enumerate(zip(predictors, weights, strict=True)):
            prediction = predict(batch)
            if total is None:
                total = prediction * np.float32(weight)
            elif prediction.shape != total.shape:
                raise ValueError(
                    f"ensemble member {index} predicts shape {prediction.shape}, "
                    f"member 0 predicts {total.shape}"
                )
            else:
                total += prediction * np.float32(weight)
        return total

    return predict_mean
