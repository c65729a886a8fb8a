"""A 2D model over a 3D volume, slice by slice.

Slice-wise prediction is the sliding window with a one-slice, full-plane window and no
overlap, so it shares :func:`kseg.inference.sliding_window`'s batching, progress bar and
output checks; only the window's singleton slice axis is dropped before the 2D model sees it.
"""

from __future__ import annotations

import numpy as np

from kseg.inference._predictor import as_batch_predictor
from kseg.inference.sliding_window import sliding_window


def predict_slices(model, volume: np.ndarray, *, batch_size: int = 16, progress: bool = True):
    """Run a 2D segmentation model on every axial slice of a volume.

    Args:
        model: a 2D ``keras.Model`` taking ``(n, H, W, C)`` (run with ``predict_on_batch``) or
            any callable batch -> batch, e.g. :func:`kseg.inference.flip_tta` around a model.
        volume: array ``(Z, H, W, C)`` already at the model's in-plane resolution. Not modified.
        batch_size: slices per model call.
        progress: show a tqdm bar over the slices.

    Returns:
        float32 array ``(Z, H, W, out_channels)``.

    Example:
        >>> import numpy as np
        >>> threshold = lambda batch: (batch > 0).astype(np.float32)  # stands in for a model
        >>> ct_resized = np.random.default_rng(0).normal(size=(6, 8, 8)).astype(np.float32)
        >>> probabilities = predict_slices(threshold, ct_resized[..., None], progress=False)
        >>> probabilities.shape, np.array_equal(probabilities[..., 0], ct_resized > 0)
        ((6, 8, 8, 1), True)
    """
    volume = np.asarray(volume)
    if volume.ndim != 4:
        raise ValueError(
            f"volume must be (Z, H, W, C) for slice-wise prediction, got shape {volume.shape}"
        )
    predict_2d = as_batch_predictor(model)

    def predict_slab(slab: np.ndarray) -> np.ndarray:
        return predict_2d(slab[:, 0])[:, None]

    return sliding_window(
        predict_slab,
        volume,
        roi_size=(1, None, None),
        overlap=0.0,
        blend="constant",
        batch_size=batch_size,
        progress=progress,
    )
