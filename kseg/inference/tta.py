"""Test-time augmentation by flipping: average the predictions of every mirrored copy.

Each prediction is flipped back before averaging, so the result is on the input's grid.
Wrapping the model rather than the volume lets the same function serve slice-wise and
sliding-window inference: ``sliding_window(flip_tta(model), volume, roi)`` mirrors every
window, as nnU-Net does.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Callable, Sequence

import numpy as np

from kseg.inference._predictor import as_batch_predictor


def carry_size_divisor(wrapper, predictors, kind: str | None = None):
    """Give ``wrapper`` the ``size_divisor`` its wrapped ``predictors`` need (their least
    common multiple), so :func:`kseg.inference.sliding_window` names a ``roi_size`` the
    wrapped U-Net cannot take before the first window, as it does for the model itself;
    a wrapper function is named ``kind(<wrapped names>)`` for that message."""
    divisors = [getattr(predictor, "size_divisor", 1) for predictor in predictors]
    divisors = [int(d) for d in divisors if isinstance(d, (int, np.integer)) and d > 1]
    if divisors:
        wrapper.size_divisor = math.lcm(*divisors)
        if kind is not None:
            names = (
                getattr(p, "name", None) or getattr(p, "__name__", type(p).__name__)
                for p in predictors
            )
            wrapper.name = f"{kind}({', '.join(names)})"
    return wrapper


def check_batch_rank(predictor, x: np.ndarray, name: str = "x") -> None:
    """Refuse ``x`` whose rank is not the model's input rank: Keras adds a trailing axis
    to an input one rank short, so one ``(H, W, C)`` image ran as ``H`` images of ``W x C``
    pixels and came back as garbage maps of shape ``(H, W, C, 1)``."""
    inputs = getattr(predictor, "inputs", None)
    if not inputs or len(inputs) != 1 or getattr(inputs[0], "shape", None) is None:
        return
    rank = len(inputs[0].shape)
    if x.ndim != rank:
        hint = f"; add the batch axis: {name}[None]" if x.ndim == rank - 1 else ""
        raise ValueError(
            f"{name} has shape {x.shape}, but model {getattr(predictor, 'name', '')!r} takes "
            f"batches of rank {rank}, (n, *spatial, C){hint}"
        )


def flip_tta(
    predictor, *, axes: Sequence[int] | None = None, class_names: Sequence[str] | None = None
) -> Callable[[np.ndarray], np.ndarray]:
    """Wrap a predictor so it returns the mean prediction over all flips of ``axes``.

    With ``k`` axes the predictor runs ``2**k`` times per batch (every subset of the axes
    flipped, the unflipped batch included); each output is flipped back along the same axes.

    Args:
        predictor: a ``keras.Model`` or a callable ``(n, *spatial, C) -> (n, *spatial, C')``
            that keeps the spatial shape.
        axes: spatial axes to mirror, counted without the batch and channel axes (``0`` is the
            first spatial axis). ``None`` mirrors every spatial axis ``class_names`` allow.
        class_names: the model's classes, channel order. When one says "left" or "right"
            (LCTSC's ``lung_left`` / ``lung_right``) the last (left-right) spatial axis is
            never mirrored: the mirrored copy is predicted with those classes swapped
            (:func:`kseg.plan.rule_mirror_axes`, as kseg's evaluation mirrors); ``axes``
            naming it is refused. ``None``: nothing is known of the classes.

    Returns:
        A callable batch -> float32 batch, usable wherever a predictor is accepted.

    Example:
        >>> import numpy as np
        >>> ramp = lambda batch: np.broadcast_to(  # a predictor biased to one side
        ...     np.linspace(0, 1, batch.shape[2], dtype=np.float32)[None, None, :, None],
        ...     batch.shape)
        >>> x = np.zeros((1, 1, 5, 1), np.float32)
        >>> ramp(x)[0, 0, :, 0]
        array([0.  , 0.25, 0.5 , 0.75, 1.  ], dtype=float32)
        >>> flip_tta(ramp)(x)[0, 0, :, 0]
        array([0.5, 0.5, 0.5, 0.5, 0.5], dtype=float32)

        A 2D model on a volume, slice by slice:
        ``predict_slices(flip_tta(unet_2d), ct[..., None])``.

    Reference:
        Isensee et al., "nnU-Net: a self-configuring method for deep learning-based biomedical
        image segmentation", Nature Methods 18, 2021 (mirroring test-time augmentation).
    """
    from kseg.plan import class_name_list, rule_mirror_axes

    predict = as_batch_predictor(predictor)
    requested_axes = None if axes is None else tuple(axes)
    if requested_axes is not None and len(set(requested_axes)) != len(requested_axes):
        raise ValueError(f"axes must not repeat an axis, got {requested_axes}")
    names = class_name_list(class_names)

    def predict_with_flips(batch: np.ndarray) -> np.ndarray:
        batch = np.asarray(batch)
        check_batch_rank(predictor, batch, "batch")
        spatial_dims = batch.ndim - 2
        allowed = rule_mirror_axes(spatial_dims, names)
        mirrored = allowed if requested_axes is None else requested_axes
        lateral = spatial_dims - 1 not in allowed
        if lateral and requested_axes is not None and spatial_dims - 1 in requested_axes:
            raise ValueError(
                f"axes {requested_axes} hold the left-right axis {spatial_dims - 1}, but "
                f"class_names {names} hold left / right classes: a mirrored copy is "
                "predicted with them swapped; leave that axis out"
            )
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

    return carry_size_divisor(predict_with_flips, [predictor], "flip_tta")


@dataclasses.dataclass(frozen=True)
class SpatialTransform:
    """A flip of some spatial axes followed by quarter turns in one plane: exactly invertible.

    Axes are spatial axes, counted without the batch and channel axes, so the same transform
    serves 2D and 3D batches ``(n, *spatial, C)``.

    Attributes:
        flip_axes: spatial axes mirrored first.
        quarter_turns: number of 90° turns (``np.rot90``'s ``k``, 0–3) applied after the flip.
        plane: the two spatial axes the turns rotate.
    """

    flip_axes: tuple[int, ...]
    quarter_turns: int
    plane: tuple[int, int]

    def apply(self, batch: np.ndarray) -> np.ndarray:
        batch = np.flip(batch, tuple(axis + 1 for axis in self.flip_axes))
        if self.quarter_turns == 0:
            return batch
        return np.rot90(batch, self.quarter_turns, axes=tuple(axis + 1 for axis in self.plane))

    def invert(self, batch: np.ndarray) -> np.ndarray:
        if self.quarter_turns != 0:
            batch = np.rot90(
                batch, -self.quarter_turns, axes=tuple(axis + 1 for axis in self.plane)
            )
        return np.flip(batch, tuple(axis + 1 for axis in self.flip_axes))


def spatial_transforms(
    spatial_shape: Sequence[int],
    *,
    flip_axes: Sequence[int] | None = None,
    rotation_plane: Sequence[int] | None = (-2, -1),
) -> list[SpatialTransform]:
    """Every distinct flip-and-quarter-turn transform of a grid, the identity first.

    Flipping both axes of the rotation plane equals a half turn, so combinations are
    deduplicated by their action on a probe grid of distinct values (side 3 on every axis,
    which tells every flip and axis permutation apart). Quarter turns swap the plane's two
    axes, so they are used only where those axes have the same length (a batch predictor
    needs its input shape kept); otherwise only the half turn is.

    Args:
        spatial_shape: the spatial shape of the batches to transform, e.g. ``(H, W)``.
        flip_axes: spatial axes that may be mirrored; ``None`` means every spatial axis.
        rotation_plane: the two spatial axes to turn in (negative counts from the last
            spatial axis; default the last two, the in-plane axes of a ``(Z, H, W)`` volume),
            or ``None`` for no turns. A grid with one spatial axis is never turned.

    Returns:
        A list of :class:`SpatialTransform`: 8 for a square 2D grid (the dihedral group), 16
        for a 3D grid with square slices.

    Example:
        >>> len(spatial_transforms((64, 64)))
        8
    """
    spatial_dims = len(spatial_shape)
    flip_axes = tuple(range(spatial_dims)) if flip_axes is None else tuple(flip_axes)
    for axis in flip_axes:
        if not 0 <= axis < spatial_dims:
            raise ValueError(
                f"flip_axes holds {axis}, not a spatial axis of a grid with {spatial_dims} axes"
            )
    if rotation_plane is None or spatial_dims < 2:
        plane, turns = (0, 0), (0,)
    else:
        if len(rotation_plane) != 2:
            raise ValueError(f"rotation_plane must name two axes, got {rotation_plane!r}")
        in_range = all(-spatial_dims <= int(axis) < spatial_dims for axis in rotation_plane)
        plane = tuple(int(axis) % spatial_dims for axis in rotation_plane)
        if not in_range or plane[0] == plane[1]:
            raise ValueError(
                f"rotation_plane must be two different spatial axes of a grid with "
                f"{spatial_dims} axes, got {tuple(rotation_plane)}"
            )
        square = spatial_shape[plane[0]] == spatial_shape[plane[1]]
        turns = (0, 1, 2, 3) if square else (0, 2)
    probe = np.arange(3**spatial_dims).reshape((1,) + (3,) * spatial_dims + (1,))
    seen, transforms = set(), []
    for subset_size in range(len(flip_axes) + 1):
        for subset in itertools.combinations(flip_axes, subset_size):
            for quarter_turns in turns:
                transform = SpatialTransform(tuple(subset), quarter_turns, plane)
                key = transform.apply(probe).tobytes()
                if key not in seen:
                    seen.add(key)
                    transforms.append(transform)
    return transforms


def augmentation_mirror_axes(augmenter, spatial_dims: int) -> tuple[int, ...]:
    """The spatial axes a training augmentation mirrors: the axes mirroring test-time
    augmentation may flip without showing the model images it never trained on (nnU-Net
    mirrors at inference exactly the axes it mirrored in training,
    ``inference_allowed_mirroring_axes``).

    Reads kseg's :class:`kseg.augment.RandomAxisFlip` (its ``axes``) and Keras'
    ``RandomFlip`` (``"vertical"``: axis 0, ``"horizontal"``: axis 1, both for
    ``"horizontal_and_vertical"``), inside a :class:`kseg.augment.SegmentationAugmenter`
    or a :class:`kseg.augment.RandomApply`, at any depth.

    Args:
        augmenter: the training augmentation layer, or ``None`` (no augmentation).
        spatial_dims: 2 or 3.

    Returns:
        The mirrored axes, sorted (``()`` for an augmentation without flips).
    """
    import keras

    from kseg.augment import RandomAxisFlip

    found = set()

    def visit(layer):
        if layer is None:
            return
        if isinstance(layer, RandomAxisFlip):
            found.update(int(axis) for axis in layer.axes)
        elif isinstance(layer, keras.layers.RandomFlip):
            if "vertical" in layer.mode:
                found.add(spatial_dims - 2)
            if "horizontal" in layer.mode:
                found.add(spatial_dims - 1)
        for child in getattr(layer, "augmentation_layers", ()):
            visit(child)
        visit(getattr(layer, "layer", None))

    visit(augmenter)
    return tuple(sorted(found))


def inference_mirror_axes(augmenter, spatial_dims: int, class_names) -> tuple[int, ...]:
    """The axes mirroring test-time augmentation averages over for a model trained with
    ``augmenter``: those it flipped in training (:func:`augmentation_mirror_axes`; the model
    never saw the other flips) that the labels allow (:func:`kseg.plan.rule_mirror_axes`:
    never the left-right axis of left/right classes)."""
    from kseg.plan import rule_mirror_axes

    trained = set(augmentation_mirror_axes(augmenter, spatial_dims))
    return tuple(sorted(trained & set(rule_mirror_axes(spatial_dims, class_names))))
