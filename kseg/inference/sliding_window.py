"""Sliding-window inference over an image or volume of any size with any number of spatial axes.

A network trained on patches sees a whole volume as a grid of overlapping windows. The
windows are spread so that the first starts at 0 and the last ends at the border (nnU-Net's
rule, so no voxel is predicted from a window hanging over padding), their predictions are
blended with a gaussian importance map (centre voxels, which saw the most context, count
most) and divided by the summed weights.

Memory stays at the volume, one float32 output of the volume's size, one float32 weight map
and one batch of windows: windows are cut, predicted and accumulated ``batch_size`` at a
time on the host.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import numpy as np
from tqdm.auto import tqdm

from kseg.errors import AlignmentError
from kseg.inference._predictor import as_batch_predictor

BLEND_MODES = ("gaussian", "constant")
# numpy.pad's modes that need no function argument
PAD_MODES = (
    *("constant", "edge", "linear_ramp", "maximum", "mean", "median", "minimum"),
    *("reflect", "symmetric", "wrap", "empty"),
)


def window_starts(size: int, roi: int, overlap: float) -> list[int]:
    """Start indices of the windows along one axis, first at 0 and last at ``size - roi``.

    The number of windows is the smallest that keeps the step at most ``roi * (1 - overlap)``:
    ``ceil((size - roi) / (roi * (1 - overlap))) + 1``; the windows are then spread evenly
    between 0 and ``size - roi`` and rounded to whole voxels. With a step below one voxel
    (``roi * (1 - overlap) < 1``) rounding would repeat starts; repeats are dropped.

    Args:
        size: length of the axis (at least ``roi``).
        roi: window length along the axis.
        overlap: fraction of a window shared with its neighbour, in ``[0, 1)``.

    Example:
        >>> window_starts(110, 64, 0.5)
        [0, 23, 46]

    Reference:
        Isensee et al., "nnU-Net: a self-configuring method for deep learning-based biomedical
        image segmentation", Nature Methods 18, 2021 (``compute_steps_for_sliding_window``).
    """
    if not 0.0 <= overlap < 1.0:  # 1 would never advance, < 0 would leave gaps
        raise ValueError(f"overlap must be in [0, 1), got {overlap!r}")
    if not roi >= 1:
        raise ValueError(f"window length must be at least 1, got {roi!r}")
    if roi > size:
        raise ValueError(f"window length {roi} is larger than the axis length {size}")
    target_step = roi * (1.0 - overlap)
    num_windows = math.ceil((size - roi) / target_step) + 1
    if num_windows == 1:
        return [0]
    step = (size - roi) / (num_windows - 1)
    return sorted({int(round(step * i)) for i in range(num_windows)})


def gaussian_importance_map(roi_size: Sequence[int], sigma_scale: float = 0.125) -> np.ndarray:
    """Weights for blending one window: a gaussian centred on the window, peak 1.

    ``sigma = sigma_scale * roi`` along each axis. The centre is ``(roi - 1) / 2``, the
    window's true middle, so the map is symmetric and a flipped window (test-time
    augmentation) keeps the same weights; nnU-Net places it at ``roi // 2``. Weights that
    underflow to 0 in float32 are raised to the smallest non-zero weight, so every voxel of
    every window counts and the final division never meets a zero.

    Args:
        roi_size: window shape, one length per spatial axis.
        sigma_scale: standard deviation as a fraction of the window length.

    Returns:
        float32 array of shape ``roi_size``.

    Reference:
        Isensee et al., nnU-Net, Nature Methods 18, 2021 (``compute_gaussian``); MONAI
        ``compute_importance_map``.
    """
    if not sigma_scale > 0:
        raise ValueError(f"sigma_scale must be positive, got {sigma_scale!r}")
    weights = np.ones((), dtype=np.float64)
    for length in roi_size:
        offsets = np.arange(length) - (length - 1) / 2.0
        profile = np.exp(-0.5 * (offsets / (sigma_scale * length)) ** 2)
        weights = np.multiply.outer(weights, profile)
    weights = (weights / weights.max()).astype(np.float32)
    if not weights.all():
        weights[weights == 0] = weights[weights > 0].min()
    return weights


def _check_roi(roi_size, spatial_shape: tuple[int, ...]) -> tuple[int, ...]:
    if isinstance(roi_size, (int, np.integer)) or roi_size is None:
        roi_size = (roi_size,) * len(spatial_shape)
    roi_size = tuple(roi_size)
    if len(roi_size) != len(spatial_shape):
        raise ValueError(
            f"roi_size {roi_size} has {len(roi_size)} axes but the volume has "
            f"{len(spatial_shape)} spatial axes {spatial_shape} (plus a trailing channel axis)"
        )
    resolved = []
    for roi, size in zip(roi_size, spatial_shape, strict=True):
        if roi is None:
            roi = size
        if not isinstance(roi, (int, np.integer)) or roi < 1:
            raise ValueError(f"roi_size entries must be positive integers or None, got {roi_size}")
        resolved.append(int(roi))
    return tuple(resolved)


def _check_divisible(predictor, roi_size: tuple[int, ...]) -> None:
    """A model that down-samples (a :class:`kseg.models.SegmentationModel` of the U-Net
    family, ``size_divisor`` ``2**depth``) takes only windows whose sizes it divides; every
    window has ``roi_size``, so a misfit is the choice of ``roi_size``, said before the first
    window runs (the model's own check says to pad or crop the input, which would not help)."""
    divisor = getattr(predictor, "size_divisor", 1)
    if not isinstance(divisor, (int, np.integer)) or divisor <= 1:
        return
    odd = [axis for axis, roi in enumerate(roi_size) if roi % divisor]
    if odd:
        name = getattr(predictor, "name", type(predictor).__name__)
        raise ValueError(
            f"roi_size {roi_size}: {name} needs window sizes divisible by {divisor} (its "
            f"down-sampling steps), and along spatial axes {odd} they are not; choose "
            f"multiples of {divisor} (a None entry takes the whole axis)"
        )


def _check_volume_rank(predictor, volume: np.ndarray) -> None:
    """A Keras model of input rank ``r`` takes volumes ``(*spatial, C)`` of rank ``r - 1``.

    A volume without its channel axis was cut into windows whose last spatial axis the
    model (Keras adds a trailing axis to an input one rank short) read as pixels, failing
    after the first window with an alignment error about the predictor; a volume given to a
    2D model failed inside Keras ("Cannot take the length of shape with unknown rank").
    """
    inputs = getattr(predictor, "inputs", None)
    if not inputs or len(inputs) != 1 or getattr(inputs[0], "shape", None) is None:
        return
    rank = len(inputs[0].shape)
    if volume.ndim == rank - 1:
        return
    name = getattr(predictor, "name", type(predictor).__name__)
    if volume.ndim == rank - 2:
        hint = "add the channel axis: volume[..., None]"
    elif volume.ndim == rank and rank == 4:
        hint = "a 2D model predicts a volume slice by slice: kseg.inference.predict_slices"
    else:
        hint = f"give it {rank - 2} spatial axes and a trailing channel axis"
    raise ValueError(
        f"volume has shape {volume.shape}, but {name} takes batches of rank {rank} "
        f"(n, *spatial, C), so volume must be (*spatial, C) with {rank - 2} spatial axes; "
        f"{hint}"
    )


def sliding_window(
    predictor,
    volume: np.ndarray,
    roi_size,
    *,
    overlap: float = 0.5,
    blend: str = "gaussian",
    sigma_scale: float = 0.125,
    batch_size: int = 1,
    pad_mode: str = "constant",
    pad_value: float = 0.0,
    progress: bool = True,
) -> np.ndarray:
    """Predict a whole image or volume window by window and blend the windows.

    Args:
        predictor: a ``keras.Model`` (run with ``predict_on_batch``) or any callable mapping a
            batch ``(n, *roi_size, channels)`` to ``(n, *roi_size, out_channels)``, e.g. the
            wrappers of :mod:`kseg.inference.tta` or :mod:`kseg.inference.ensemble`.
        volume: array ``(*spatial, channels)``: ``(H, W, C)`` for a 2D image,
            ``(D, H, W, C)`` for a volume, any number of spatial axes. Not modified.
        roi_size: window shape, an int for every axis or one per spatial axis; ``None``
            takes the whole axis. A predictor with a ``size_divisor`` (kseg's U-Net family)
            needs multiples of it.
        overlap: fraction of a window shared with its neighbour along each axis, in
            ``[0, 1)``. ``0.5`` is nnU-Net's default.
        blend: ``"gaussian"`` (window centres count most) or ``"constant"`` (plain mean).
        sigma_scale: gaussian standard deviation as a fraction of the window length.
        batch_size: windows per predictor call. 1, as MONAI's ``sw_batch_size`` and
            nnU-Net's predictor: on a CPU it does as much work per CPU-second as 4 for half
            the memory (kseg's measurement, HighResNet on 2 cores: 64^3 windows 7.8 vs 7.7 s,
            1056 vs 2137 MiB peak, ``benchmarks/monai_compare.py``; 48^3 windows 186 vs
            188 GFLOP per CPU-second, 844 vs 1363 MiB, ``benchmarks/cpu_path.py``). On a
            GPU a larger batch may keep it busier (not measured by kseg).
        pad_mode: ``numpy.pad`` mode used where the volume is smaller than the window; it is
            padded evenly on both sides and the output cropped back.
        pad_value: fill value for ``pad_mode="constant"``.
        progress: show a tqdm bar over the windows.

    Returns:
        float32 array ``(*spatial, out_channels)`` on the volume's grid.

    Example:
        >>> import numpy as np
        >>> threshold = lambda batch: (batch > 0).astype(np.float32)  # stands in for a model
        >>> ct = np.random.default_rng(0).normal(size=(20, 40, 40)).astype(np.float32)
        >>> probabilities = sliding_window(threshold, ct[..., None], roi_size=(16, 32, 32),
        ...                                progress=False)
        >>> probabilities.shape, np.allclose(probabilities[..., 0], ct > 0)
        ((20, 40, 40, 1), True)

    Reference:
        Isensee et al., "nnU-Net: a self-configuring method for deep learning-based biomedical
        image segmentation", Nature Methods 18, 2021; MONAI ``sliding_window_inference``.
    """
    volume = np.asarray(volume)
    if volume.ndim < 2:
        raise ValueError(
            f"volume must be (*spatial, channels) with at least one spatial axis, "
            f"got shape {volume.shape}"
        )
    if not 0.0 <= overlap < 1.0:
        raise ValueError(f"overlap must be in [0, 1), got {overlap!r}")
    if blend not in BLEND_MODES:
        raise ValueError(f"blend must be one of {BLEND_MODES}, got {blend!r}")
    if not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    if pad_mode not in PAD_MODES:  # checked even when this volume needs no padding
        raise ValueError(f"pad_mode must be one of numpy.pad's modes {PAD_MODES}, got {pad_mode!r}")
    _check_volume_rank(predictor, volume)
    spatial_shape = volume.shape[:-1]
    roi_size = _check_roi(roi_size, spatial_shape)
    _check_divisible(predictor, roi_size)
    predict = as_batch_predictor(predictor)

    padding = []
    for roi, size in zip(roi_size, spatial_shape, strict=True):
        missing = max(roi - size, 0)
        padding.append((missing // 2, missing - missing // 2))
    padded = any(before or after for before, after in padding)
    if padded:
        pad_kwargs = {"constant_values": pad_value} if pad_mode == "constant" else {}
        volume = np.pad(volume, padding + [(0, 0)], mode=pad_mode, **pad_kwargs)
    padded_shape = volume.shape[:-1]

    starts = [
        window_starts(size, roi, overlap) for size, roi in zip(padded_shape, roi_size, strict=True)
    ]
    windows = [
        tuple(slice(start, start + roi) for start, roi in zip(corner, roi_size, strict=True))
        for corner in itertools.product(*starts)
    ]
    importance = gaussian_importance_map(roi_size, sigma_scale) if blend == "gaussian" else None

    output = None
    weight_sum = np.zeros(padded_shape, dtype=np.float32)
    with tqdm(
        total=len(windows), desc="sliding window", unit="window", disable=not progress
    ) as bar:
        for first in range(0, len(windows), batch_size):
            batch_windows = windows[first : first + batch_size]
            batch = np.stack([volume[window] for window in batch_windows]).astype(
                np.float32, copy=False
            )
            prediction = predict(batch)
            if prediction.ndim != batch.ndim or prediction.shape[:-1] != batch.shape[:-1]:
                raise AlignmentError(
                    None,
                    f"predictor turned a batch of windows {batch.shape} into {prediction.shape}; "
                    "sliding_window needs outputs with the same batch and spatial shape",
                )
            if output is None:
                output = np.zeros(padded_shape + prediction.shape[-1:], dtype=np.float32)
            for window, window_prediction in zip(batch_windows, prediction, strict=True):
                if importance is None:
                    output[window] += window_prediction
                    weight_sum[window] += 1.0
                else:
                    output[window] += window_prediction * importance[..., None]
                    weight_sum[window] += importance
            bar.update(len(batch_windows))

    output /= weight_sum[..., None]
    if padded:
        crop = tuple(
            slice(before, before + size)
            for (before, _), size in zip(padding, spatial_shape, strict=True)
        )
        return np.ascontiguousarray(output[crop])
    return output
