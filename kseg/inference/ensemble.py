"""Combine several models: weighted mean probability, majority vote, weights fitted on validation.

Everything here works on the host with numpy; Keras is imported only to load checkpoints
and by the Dice of :mod:`kseg.metrics` when weights are fitted.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import numbers
import os
from collections.abc import Callable, Sequence

import numpy as np
from tqdm.auto import tqdm

from kseg.inference._predictor import as_batch_predictor
from kseg.inference.tta import carry_size_divisor, check_batch_rank


def _load_member(member):
    if isinstance(member, (str, os.PathLike)):
        from kseg import load_model

        # kseg.load_model registers kseg's layers first; losses and metrics are not needed to
        # predict, and compile=False keeps checkpoints trained with other custom losses loadable.
        return load_model(os.fspath(member), compile=False)
    return member


def _normalised_weights(weights, members: int) -> np.ndarray:
    """Weights as ``(members, 1)`` or ``(members, C)`` float64 columns that sum to 1."""
    if weights is None:
        return np.full((members, 1), 1.0 / members)
    weights = np.asarray(weights, dtype=np.float64)
    if weights.ndim == 1:
        weights = weights[:, None]
    if (
        weights.ndim != 2
        or weights.shape[0] != members
        or weights.shape[1] == 0
        or not np.isfinite(weights).all()
        or (weights < 0).any()
        or (weights.sum(axis=0) <= 0).any()
    ):
        raise ValueError(
            f"weights must be {members} non-negative numbers with a positive sum, or a "
            f"({members}, classes) array whose every column has a positive sum, got "
            f"{np.asarray(weights).tolist()}"
        )
    return weights / weights.sum(axis=0)


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
        weights: one non-negative weight per member (normalised to sum 1), or per-class
            weights of shape ``(members, channels)``, each column normalised to sum 1, so
            output channel ``c`` is the ``weights[:, c]``-weighted mean of the members'
            channel ``c`` (e.g. trust one model for the spleen, another for the liver). With
            per-class weights the channels of softmax members need no longer sum to 1 at a
            voxel; the argmax is what they are for (divide by the channel sum if a
            distribution is needed). Equal weights by default; fitted ones come from
            :func:`fit_ensemble_weights`.

    Returns:
        A callable batch -> float32 batch, usable wherever a predictor is accepted
        (:func:`kseg.inference.sliding_window`, :func:`kseg.inference.predict_slices`).

    Example:
        >>> import numpy as np
        >>> sure = lambda batch: np.ones(batch.shape, np.float32)
        >>> unsure = lambda batch: np.full(batch.shape, 0.5, np.float32)
        >>> ensemble = ensemble_predictor([sure, unsure], weights=[3, 1])
        >>> ensemble(np.zeros((1, 2, 2, 1), np.float32))[0, ..., 0]
        array([[0.875, 0.875],
               [0.875, 0.875]], dtype=float32)

        The models of a cross-validation, from their checkpoints (here two folds whose
        one-layer models output sigmoid(1) and sigmoid(-1), which sum to 1):

        >>> import tempfile
        >>> import keras
        >>> from kseg.inference import sliding_window
        >>> runs = tempfile.mkdtemp()
        >>> for k, bias in enumerate([1.0, -1.0]):
        ...     net = keras.Sequential([keras.Input((None, None, None, 1)), keras.layers.Conv3D(
        ...         1, 1, activation="sigmoid", kernel_initializer="zeros",
        ...         bias_initializer=keras.initializers.Constant(bias))])
        ...     os.makedirs(os.path.join(runs, f"fold{k}"))
        ...     net.save(os.path.join(runs, f"fold{k}", "best.keras"))
        >>> folds = ensemble_predictor([os.path.join(runs, f"fold{k}", "best.keras")
        ...                             for k in range(2)])
        >>> ct = np.zeros((12, 12, 12), np.float32)
        >>> probabilities = sliding_window(folds, ct[..., None], roi_size=8, progress=False)
        >>> probabilities.shape, np.allclose(probabilities, 0.5)
        ((12, 12, 12, 1), True)

    Reference:
        Isensee et al., "nnU-Net: a self-configuring method for deep learning-based biomedical
        image segmentation", Nature Methods 18, 2021 (five-fold ensemble).
    """
    members = list(members)
    if not members:
        raise ValueError("members must hold at least one model, callable or checkpoint path")
    weights = _normalised_weights(weights, len(members))
    loaded = [_load_member(member) for member in members]
    predictors = [as_batch_predictor(member) for member in loaded]

    def predict_mean(batch: np.ndarray) -> np.ndarray:
        total = None
        for member in loaded:
            check_batch_rank(member, np.asarray(batch), "batch")
        for index, (predict, weight) in enumerate(zip(predictors, weights, strict=True)):
            prediction = predict(batch)
            if weight.size > 1 and prediction.shape[-1] != weight.size:
                raise ValueError(
                    f"weights hold {weight.size} per-class columns but ensemble member {index} "
                    f"predicts {prediction.shape[-1]} channels"
                )
            if total is None:
                total = prediction * weight.astype(np.float32)
            elif prediction.shape != total.shape:
                raise ValueError(
                    f"ensemble member {index} predicts shape {prediction.shape}, "
                    f"member 0 predicts {total.shape}"
                )
            else:
                total += prediction * weight.astype(np.float32)
        return total

    return carry_size_divisor(predict_mean, loaded, "ensemble_predictor")


def mirror_subsets(axes: Sequence[int]) -> list[tuple[int, ...]]:
    """Every subset of ``axes``, the empty one first: the flips mirroring test-time
    augmentation averages over (``2**len(axes)`` of them, as nnU-Net's
    ``predict_sliding_window_return_logits`` with ``use_mirroring``)."""
    axes = tuple(int(axis) for axis in axes)
    return [
        subset for size in range(len(axes) + 1) for subset in itertools.combinations(axes, size)
    ]


def ensemble_model(members: Sequence, *, mirror_axes: Sequence[int] = (), name: str = "ensemble"):
    """One ``keras.Model`` that returns the mean probability of ``members`` over every flip of
    ``mirror_axes``: what :func:`ensemble_predictor` wrapped in :func:`kseg.inference.flip_tta`
    computes, as a model that is saved, loaded (:func:`kseg.load_model`) and called like any
    other, so everything that takes a run's ``best.keras`` takes the ensemble unchanged.

    For each member and each subset of ``mirror_axes`` the input is flipped along the
    subset, the member predicts, the prediction is flipped back; the output is the plain
    mean of all ``members x 2**len(mirror_axes)`` maps. The graph holds only Keras layers,
    ``keras.ops.flip`` and the members themselves (nested), so it reloads in a fresh
    process with no custom objects beyond the members' own.

    Args:
        members: ``keras.Model`` objects or paths of ``.keras`` files (loaded with
            :func:`kseg.load_model`, ``compile=False``), all with the same input and output
            shapes.
        mirror_axes: spatial axes to mirror, counted without the batch and channel axes;
            ``()`` averages the members alone.
        name: the model's name.

    Returns:
        An uncompiled ``keras.Model`` with the members' input and output shapes.

    Raises:
        ValueError: no members, members with different input or output shapes, or a mirror
            axis that is not a spatial axis or repeats.

    Reference:
        Isensee et al., "nnU-Net: a self-configuring method for deep learning-based biomedical
        image segmentation", Nature Methods 18, 2021 (five-fold ensemble with mirroring).
    """
    import keras
    from keras import ops

    models = [_load_member(member) for member in members]
    if not models:
        raise ValueError("members must hold at least one model or checkpoint path")
    input_shape = tuple(models[0].input_shape)
    output_shape = tuple(models[0].output_shape)
    for index, model in enumerate(models):
        if tuple(model.input_shape) != input_shape or tuple(model.output_shape) != output_shape:
            raise ValueError(
                f"ensemble member {index} maps {model.input_shape} to {model.output_shape}, "
                f"member 0 maps {input_shape} to {output_shape}"
            )
    spatial_dims = len(input_shape) - 2
    axes = tuple(int(axis) for axis in mirror_axes)
    if len(set(axes)) != len(axes) or any(not 0 <= axis < spatial_dims for axis in axes):
        raise ValueError(
            f"mirror_axes must be distinct spatial axes in 0..{spatial_dims - 1}, got {axes}"
        )
    inputs = keras.Input(shape=input_shape[1:], name="image")
    outputs = []
    for index, model in enumerate(models):
        # Nested models need distinct names in the ensemble's graph; renaming the caller's
        # model would change an object they still hold (and the name their checkpoints and
        # logs use), so each member is nested in a one-layer wrapper of its own name.
        member_input = keras.Input(shape=input_shape[1:])
        member = keras.Model(
            member_input, model(member_input, training=False), name=f"member_{index}"
        )
        for subset in mirror_subsets(axes):
            batch_axes = tuple(axis + 1 for axis in subset)
            flipped = ops.flip(inputs, axis=batch_axes) if batch_axes else inputs
            prediction = member(flipped, training=False)
            outputs.append(ops.flip(prediction, axis=batch_axes) if batch_axes else prediction)
    mean = outputs[0] if len(outputs) == 1 else keras.layers.Average(name="mean")(outputs)
    return carry_size_divisor(keras.Model(inputs, mean, name=name), models)


def _member_stack(member_probabilities, argument: str) -> np.ndarray:
    """Members' probability maps as one float array ``(members, *spatial, C)``, checked."""
    if isinstance(member_probabilities, np.ndarray):
        arrays = list(member_probabilities)
    else:
        arrays = [np.asarray(member) for member in member_probabilities]
    if not arrays:
        raise ValueError(f"{argument} must hold at least one member's probabilities")
    shapes = {np.shape(member) for member in arrays}
    if len(shapes) != 1:
        raise ValueError(
            f"{argument} must hold equally shaped probability maps (*spatial, C), got shapes "
            f"{sorted(shapes)}"
        )
    stack = np.asarray(arrays, dtype=np.float32)
    if stack.ndim < 2:
        raise ValueError(f"{argument} maps need a channel axis, got shape {stack.shape[1:]}")
    for index, member in enumerate(stack):
        nan_count = int(np.count_nonzero(np.isnan(member)))
        if nan_count:
            raise ValueError(
                f"{argument}: member {index} holds NaN in {nan_count} of {member.size} values; "
                "a model that outputs NaN has diverged (leave it out of the ensemble)"
            )
        if member.min() < 0 or member.max() > 1:
            raise ValueError(
                f"{argument} must hold probabilities in [0, 1]: member {index} holds values "
                f"from {member.min()} to {member.max()} (logits? apply the sigmoid or softmax)"
            )
    if stack.shape[-1] > 1:
        # several channels are classes (argmax): sigmoid maps squeezed to (H, W) would
        # vote over their last spatial axis, giving an (H,) "label map"
        sums = stack.sum(axis=-1, dtype=np.float64)
        # as in kseg.inference.uncertainty: a 16-bit softmax is off by up to ~2**-7 a channel
        if np.max(np.abs(sums - 1.0)) > stack.shape[-1] * 2.0**-7:
            raise ValueError(
                f"{argument}: maps of shape {stack.shape[1:]} are read as {stack.shape[-1]} "
                f"softmax channels, but they sum to {sums.min():.4g} .. {sums.max():.4g}, not "
                "1 per voxel; give a sigmoid model's maps their channel axis (p[..., None])"
            )
    return stack


def _class_probabilities(probabilities: np.ndarray) -> np.ndarray:
    """One channel (sigmoid) as the two classes ``[1 - p, p]``; softmax channels as they are."""
    if probabilities.shape[-1] == 1:
        return np.concatenate([1.0 - probabilities, probabilities], axis=-1)
    return probabilities


def _labels(probabilities: np.ndarray) -> np.ndarray:
    """Label map of a probability map: ``p >= 0.5`` for one channel, else the argmax."""
    if probabilities.shape[-1] == 1:
        return (probabilities[..., 0] >= 0.5).astype(np.int64)
    return probabilities.argmax(axis=-1)


def majority_vote(member_probabilities) -> np.ndarray:
    """Per-voxel majority vote of the members' labels.

    Each member's label map is its argmax (one channel: ``p >= 0.5``). The label most
    members give wins; a tie between labels is broken by the highest mean probability of
    the tied labels over all members (so two sigmoid members that disagree give the label
    the averaged ensemble would), and an exact tie of that too by the lowest label.

    Args:
        member_probabilities: a sequence of members' probability maps ``(*spatial, C)``
            of one shape, or an array ``(members, *spatial, C)``.

    Returns:
        int64 label map ``(*spatial)``.

    Example:
        >>> import numpy as np
        >>> members = [np.array([[0.9], [0.2], [0.6]]),  # three sigmoid members, 3 voxels
        ...            np.array([[0.8], [0.7], [0.4]]),
        ...            np.array([[0.1], [0.6], [0.3]])]
        >>> majority_vote(members)
        array([1, 1, 0])

        On volumes, one member's probabilities per fold model:
        ``majority_vote([sliding_window(m, ct[..., None], 96) for m in folds])``.

    Reference:
        Kittler et al., "On combining classifiers", IEEE TPAMI 20(3):226-239, 1998
        (majority vote); Rohlfing et al., "Performance-based classifier combination in
        atlas-based image segmentation using expectation-maximization parameter
        estimation", IEEE TMI 23(8), 2004 (label voting for segmentation).
    """
    stack = _member_stack(member_probabilities, "member_probabilities")
    member_labels = np.stack([_labels(member) for member in stack])
    class_probabilities = _class_probabilities(stack)
    classes = class_probabilities.shape[-1]
    votes = np.stack([(member_labels == label).sum(axis=0) for label in range(classes)], axis=-1)
    # counts differ by at least 1 and a mean probability by at most 1, so halving the mean
    # probability lets it decide only between labels with equal counts
    key = votes + class_probabilities.mean(axis=0, dtype=np.float64) / 2
    return key.argmax(axis=-1)


@dataclasses.dataclass(frozen=True)
class FittedEnsembleWeights:
    """Ensemble weights fitted on validation volumes.

    Attributes:
        weights: one weight per member, non-negative and summing to 1; pass them as
            ``ensemble_predictor(members, weights=fitted.weights)``.
        dice: the mean validation Dice these weights reach (mean over cases of the mean
            over ``labels``).
        member_dice: the same score for each member alone, for comparison.
    """

    weights: np.ndarray
    dice: float
    member_dice: np.ndarray


def _simplex_grid(members: int, divisions: int) -> np.ndarray:
    """Every weight vector with entries in multiples of ``1 / divisions`` that sum to 1."""
    # stars and bars: choosing members - 1 bar positions among divisions + members - 1 slots
    points = []
    for bars in itertools.combinations(range(divisions + members - 1), members - 1):
        edges = (-1, *bars, divisions + members - 1)
        points.append([edges[i + 1] - edges[i] - 1 for i in range(members)])
    return np.asarray(points, dtype=np.float64) / divisions


# Probability values held at once while scoring grid points (64 MiB of float32).
_GRID_CHUNK_VALUES = 16 * 2**20


def _grid_scores(grid, stacks, references, labels, *, progress: bool):
    """Per weight vector of ``grid``: the mean over cases of the mean Dice over ``labels``
    of the combined labels (``p >= 0.5`` for one channel, else the argmax; a label absent
    from both scores 1), and the mean soft Dice of the combined probabilities. Many grid
    points are scored per pass over a case (one matrix product), not one at a time."""
    points = len(grid)
    hard = np.zeros((points, len(stacks), len(labels)))
    soft = np.zeros_like(hard)
    weights = grid.astype(np.float32)
    bar = tqdm(total=points * len(stacks), desc="ensemble weights", unit="point",
               disable=not progress)  # fmt: skip
    for case, (stack, reference) in enumerate(zip(stacks, references, strict=True)):
        members, channels = stack.shape[0], stack.shape[-1]
        flat = stack.reshape(members, -1, channels)
        truths = [reference.reshape(-1) == label for label in labels]
        chunk = max(1, _GRID_CHUNK_VALUES // flat[0].size)
        for start in range(0, points, chunk):
            combined = np.tensordot(weights[start : start + chunk], flat, axes=1)  # (g, N, C)
            if channels == 1:
                predicted = (combined[..., 0] >= 0.5).astype(np.int64)
                class_probability = {1: combined[..., 0], 0: 1.0 - combined[..., 0]}
            else:
                predicted = combined.argmax(axis=-1)
                class_probability = {label: combined[..., label] for label in labels}
            for index, (label, truth) in enumerate(zip(labels, truths, strict=True)):
                is_label = predicted == label
                overlap = np.logical_and(is_label, truth).sum(axis=1)
                total = is_label.sum(axis=1) + truth.sum()
                hard[start : start + chunk, case, index] = np.where(
                    total > 0, 2 * overlap / np.maximum(total, 1), 1.0
                )
                probability = class_probability[label]
                soft_overlap = (probability * truth).sum(axis=1, dtype=np.float64)
                soft_total = probability.sum(axis=1, dtype=np.float64) + truth.sum()
                soft[start : start + chunk, case, index] = np.where(
                    soft_total > 0, 2 * soft_overlap / np.where(soft_total > 0, soft_total, 1),
                    1.0,
                )
            bar.update(len(combined))
    bar.close()
    return hard.mean(axis=2).mean(axis=1), soft.mean(axis=(1, 2))


def fit_ensemble_weights(
    member_probabilities,
    references,
    *,
    labels: Sequence[int] | None = None,
    step: float = 0.05,
    max_grid_points: int = 20_000,
    progress: bool = True,
) -> FittedEnsembleWeights:
    """Fit one weight per member on validation whole-volume Dice, the weights on the simplex.

    The search is exhaustive over the simplex grid of weights in multiples of ``step``
    (21 points for 2 members at ``step=0.05``, 231 for 3). A grid, not a gradient method
    such as SLSQP: the Dice of the thresholded or argmax labels is piecewise constant in
    the weights, so its gradient is zero almost everywhere and a gradient method stays at
    its start; the grid scores the exact target and keeps the constraints by construction.
    Many weights usually reach the same best Dice (any weight above 1/2 on a perfect member
    thresholds to the same labels), so ties are broken by the soft Dice of the combined
    probabilities, which prefers the weights whose probabilities agree best with the
    reference, then by the first grid point.

    Args:
        member_probabilities: one entry per validation case, each the members' probability
            maps of that case (a sequence of ``(*spatial, C)`` arrays, same member order in
            every case, or an array ``(members, *spatial, C)``). One channel is a sigmoid
            output (label ``p >= 0.5``), several a softmax output (argmax).
        references: one integer label map ``(*spatial)`` per case.
        labels: the labels whose Dice is averaged; default every foreground label (``1`` for
            one channel, ``1 .. C-1`` for several). A case where a label is absent from both
            reference and prediction scores 1 for it (:func:`kseg.metrics.dice`'s default).
        step: grid spacing of the weights; ``1 / step`` must be a whole number.
        max_grid_points: refuse grids larger than this (the grid grows as
            ``binomial(1 / step + members - 1, members - 1)``).
        progress: show a tqdm bar over the grid points.

    Returns:
        :class:`FittedEnsembleWeights`.

    Example:
        >>> import numpy as np
        >>> reference = np.array([0, 1, 1, 0])  # one validation case of 4 voxels
        >>> good = np.array([[0.1], [0.9], [0.8], [0.2]])
        >>> bad = np.array([[0.9], [0.2], [0.3], [0.7]])
        >>> fitted = fit_ensemble_weights([[good, bad]], [reference], step=0.25,
        ...                               progress=False)
        >>> fitted.weights.tolist(), float(fitted.dice), fitted.member_dice.tolist()
        ([1.0, 0.0], 1.0, [1.0, 0.0])

        Then ``ensemble_predictor(fold_models, weights=fitted.weights)``.

    Reference:
        Caruana et al., "Ensemble selection from libraries of models", ICML 2004 (weights
        chosen on a validation set by the target metric).
    """

    if isinstance(member_probabilities, (str, bytes)) or not isinstance(
        member_probabilities, (Sequence, np.ndarray)
    ):
        raise ValueError(
            "member_probabilities must be a sequence with one entry of member maps per case, "
            f"got {type(member_probabilities).__name__}"
        )
    if isinstance(references, (str, bytes)) or not isinstance(references, (Sequence, np.ndarray)):
        raise ValueError(
            f"references must be a sequence of label maps, got {type(references).__name__}"
        )
    if len(member_probabilities) == 0 or len(member_probabilities) != len(references):
        raise ValueError(
            f"member_probabilities ({len(member_probabilities)} cases) and references "
            f"({len(references)} label maps) must hold the same, non-zero number of cases"
        )
    stacks = [
        _member_stack(case, f"member_probabilities[{index}]")
        for index, case in enumerate(member_probabilities)
    ]
    members, channels = stacks[0].shape[0], stacks[0].shape[-1]
    reference_maps = []
    for index, (stack, reference) in enumerate(zip(stacks, references, strict=True)):
        reference = np.asarray(reference)
        if stack.shape[0] != members or stack.shape[-1] != channels:
            raise ValueError(
                f"member_probabilities[{index}] holds {stack.shape[0]} members with "
                f"{stack.shape[-1]} channels, case 0 holds {members} with {channels}"
            )
        if reference.shape != stack.shape[1:-1]:
            raise ValueError(
                f"references[{index}] has shape {reference.shape}, its probability maps "
                f"have spatial shape {stack.shape[1:-1]}"
            )
        reference_maps.append(reference)
    classes = 2 if channels == 1 else channels
    for index, reference in enumerate(reference_maps):
        # A 0/255 mask read from a PNG scores every weight 0 for label 1 and fits nonsense.
        values = np.unique(reference)
        if not (np.issubdtype(values.dtype, np.number) or values.dtype == np.bool_):
            raise ValueError(
                f"references[{index}] must be an integer label map, got dtype {reference.dtype}"
            )
        outside = [v for v in values.tolist() if not 0 <= v < classes or v != int(v)]
        if outside:
            raise ValueError(
                f"references[{index}] holds values {outside[:5]} that are not labels of the "
                f"{classes} classes 0 .. {classes - 1} the members predict ({channels} "
                "channel(s)); convert the mask to labels first (e.g. mask > 0 for a 0/255 mask)"
            )
    labels = list(range(1, classes)) if labels is None else [int(label) for label in labels]
    if not labels or any(not 0 <= label < classes for label in labels):
        raise ValueError(f"labels must be non-empty and within 0 .. {classes - 1}, got {labels}")
    if isinstance(step, bool) or not (isinstance(step, numbers.Real) and 0 < step <= 1):
        raise ValueError(f"step must be a number in (0, 1], got {step!r}")
    divisions = round(1 / step)
    if not math.isclose(divisions * step, 1.0, rel_tol=1e-9):
        raise ValueError(f"step must divide 1 into whole parts (e.g. 0.05, 0.1), got {step}")
    grid_points = math.comb(divisions + members - 1, members - 1)
    if grid_points > max_grid_points:
        raise ValueError(
            f"step {step} gives {grid_points} grid points for {members} members, more than "
            f"max_grid_points={max_grid_points}; use a coarser step"
        )

    grid = _simplex_grid(members, divisions)
    hard, soft = _grid_scores(grid, stacks, reference_maps, labels, progress=progress)
    best = None
    for index, key in enumerate(zip(hard, soft, strict=True)):
        if best is None or key > best[1]:
            best = (index, key)
    member_dice, _ = _grid_scores(np.eye(members), stacks, reference_maps, labels,
                                  progress=False)  # fmt: skip
    best_weights, best_key = grid[best[0]], best[1]
    return FittedEnsembleWeights(weights=best_weights, dice=best_key[0], member_dice=member_dice)
