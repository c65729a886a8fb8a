"""Test-time augmentation by flipping: average the predictions of every mirrored copy.

Each prediction is flipped back before averaging, so the result is on the input's grid.
Wrapping the model rather than the volume lets the same function serve slice-wise and
sliding-window inference: ``sliding_window(flip_tta(model), volume, roi)`` mirrors every
window, as nnU-Net does.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence

import numpy as np

from kseg.inference._predictor import as_batch_predictor


def flip_tta(predictor, *, axes: Sequence[int] | None = None) -> Callable[[np.ndarray], np.ndarray]:
    """Wrap a predictor so it returns the mean prediction over all flips of ``axes``.

    With ``k`` axes the predictor runs ``2**k`` times per batch (every subset of the axes
    flipped, the unflipped batch included); each output is flipped back along the same axes.

    Args:
        predictor: a ``keras.Model`` or a callable ``(n, *spatial, C) -> (n, *spatial, C')``
            that keeps the spatial shape.
        axes: spatial axes to mirror, counted without the batch and channel axes (``0`` is the
            first spatial axis). ``None`` mirrors every spatial axis.

    Returns:
        A callable batch -> float32 batch, usable wherever a predictor is accepted.

    Example:
        >>> probabilities = predict_slices(flip_tta(unet_2d), ct[..., None])

    Reference:
        Isensee et al., "nnU-Net: a self-configuring method for deep learning-based biomedical
        image segmentation", Nature Methods 18, 2021 (mirroring test-time augmentation).
    """
    predict = as_batch_predictor(predictor)
    requested_axes = None if axes is None else tuple(axes)
    if requested_axes is not None and len(set(requested_axes)) != len(requested_axes):
        raise ValueError(f"axes must not repeat an axis, got {requested_axes}")

    def predict_with_flips(batch: np.ndarray) -> np.ndarray:
        batch = np.asarray(batch)
        spatial_dims = batch.ndim - 2
        mirrored = tuple(range(spatial_dims)) if requested_axes is None else requested_axes
        for axis in mirrored:
            if not 0 <= axis < spatial_dims:
                raise ValueError(
                    f"flip axis {axis} is not a spatial axis of a batch with "
                    f"{spatial_dims} spatial axes (shape {batch.shape})"
                )
        total = None
        count = 0
        for subset_size in range(len(mirrored) + 1):
            for subset in itertools.combinations(mirrored, subset_size):
                batch_axes = tuple(axis + 1 for axis in subset)
                prediction = np.flip(predict(np.flip(batch, batch_axes)), batch_axes)
                if total is None:
                    total = prediction.astype(np.float32, copy=True)
                else:
                    total += prediction
                count += 1
        return total / np.float32(count)

    return predict_with_flips
