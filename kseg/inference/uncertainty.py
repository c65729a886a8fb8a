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

The rest of the module turns probability samples into uncertainty maps, with numpy on the
host: :func:`decompose_uncertainty` splits the predictive entropy of MC dropout or ensemble
samples into aleatoric and epistemic parts (Depeweg et al., 2018), :func:`tta_uncertainty`
estimates aleatoric uncertainty from flipped, turned and noised copies of the input (Wang et
al., 2019), and :func:`uncertainty_summary` reduces any of the maps to per-patient means.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

import keras
import numpy as np
from scipy.special import entr

from kseg.inference._predictor import as_batch_predictor
from kseg.inference.tta import check_batch_rank, spatial_transforms

# A softmax computed or stored in 16 bits (a mixed-precision model's own head, float16
# files) reaches these functions as float32 that sums to 1 only within about one bfloat16
# epsilon (2**-7) per channel; maps that are not one distribution per voxel are off by far
# more (sigmoid maps without their channel axis sum to about half their width).
SOFTMAX_ROUNDING = 2.0**-7

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
        >>> import keras
        >>> import numpy as np
        >>> net = keras.Sequential([keras.Input((None, None, 1)), keras.layers.Dropout(0.5),
        ...                         keras.layers.Activation("sigmoid")])
        >>> stochastic = mc_dropout_model(net)
        >>> x = np.ones((1, 8, 8, 1), np.float32)
        >>> np.array_equal(net.predict_on_batch(x), net.predict_on_batch(x))
        True
        >>> np.array_equal(stochastic.predict_on_batch(x), stochastic.predict_on_batch(x))
        False

        A 3D model's sample of a whole volume:
        ``sliding_window(mc_dropout_model(unet_3d), ct[..., None], roi_size=96)``.

    Reference:
        Gal and Ghahramani, "Dropout as a Bayesian approximation: representing model
        uncertainty in deep learning", ICML 2016.
    """
    wrapped = []

    def keep_dropout_on(layer):
        if isinstance(layer, DROPOUT_LAYERS):
            # a rate-0 layer (Dropout(config.dropout) with dropout 0) draws no masks
            if float(getattr(layer, "rate", 1.0)) > 0:
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
    # clone_model rebuilds a SegmentationModel from its inputs and outputs only: carry its
    # input-size rule over, so an odd-sized batch is named, not a ConcatOp error.
    if hasattr(model, "size_divisor") and hasattr(stochastic, "size_divisor"):
        stochastic.size_divisor = model.size_divisor
    if not wrapped:
        raise ValueError(
            f"model {model.name!r} has no dropout layer with a rate above 0; MC dropout "
            "needs a model trained with dropout (e.g. build it with a dropout rate > 0), "
            "else every sample is the same prediction and the uncertainty is 0"
        )
    return stochastic


class _SampleStatistics:
    """Running mean, variance and mean entropy of probability samples (Welford).

    Keeps a few copies of one prediction instead of the samples, so memory does not grow
    with the number of samples.
    """

    def __init__(self, source: str):
        self.source = source
        self.count = 0
        self.mean = self.squared_deviations = self.sample_entropy_sum = None

    def add(self, probabilities: np.ndarray) -> None:
        probabilities = np.asarray(probabilities, dtype=np.float64)
        nan_count = int(np.count_nonzero(np.isnan(probabilities)))
        if nan_count:
            # NaN compares false with everything: without this check a diverged model's
            # samples pass the range test and every map comes out NaN, silently
            raise ValueError(
                f"{self.source}: sample {self.count} holds NaN in {nan_count} of "
                f"{probabilities.size} values; a model that outputs NaN has diverged and "
                "its uncertainty is undefined"
            )
        if probabilities.min() < 0 or probabilities.max() > 1:
            raise ValueError(
                f"{self.source} holds values outside [0, 1]; uncertainty summarises "
                "probabilities, so end the model in sigmoid or softmax"
            )
        channels = probabilities.shape[-1] if probabilities.ndim else 1
        if channels > 1:
            # Several channels are read as one softmax distribution per voxel: sigmoid maps
            # without their channel axis ((H, W) slices) or independent sigmoids would have
            # their last spatial axis or their classes summed into one wrong entropy.
            sums = probabilities.sum(axis=-1)
            if np.max(np.abs(sums - 1.0)) > channels * SOFTMAX_ROUNDING:
                raise ValueError(
                    f"{self.source}: sample {self.count} has shape {probabilities.shape}, "
                    f"read as {channels} class probabilities per voxel, but they sum to "
                    f"{sums.min():.4g} .. {sums.max():.4g}, not 1; one sigmoid channel needs "
                    "its channel axis (p[..., None]); independent sigmoid channels have no "
                    "joint entropy: pass each as its own one-channel map (p[..., c:c + 1])"
                )
        if self.mean is None:
            self.mean = np.zeros_like(probabilities)
            self.squared_deviations = np.zeros_like(probabilities)
            self.sample_entropy_sum = np.zeros(probabilities.shape[:-1])
        elif probabilities.shape != self.mean.shape:
            raise ValueError(
                f"{self.source}: sample {self.count} has shape {probabilities.shape}, "
                f"sample 0 has {self.mean.shape}"
            )
        self.count += 1
        deviation = probabilities - self.mean
        self.mean += deviation / self.count
        self.squared_deviations += deviation * (probabilities - self.mean)
        self.sample_entropy_sum += _entropy(probabilities)

    def variance(self) -> np.ndarray:
        return self.squared_deviations / self.count

    def decomposition(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(total, aleatoric, epistemic) in float64, with total = aleatoric + epistemic.

        Jensen's inequality makes the entropy of the mean at least the mean entropy; where
        rounding breaks that by a few ulps the expected entropy is clipped to the total, so
        the epistemic part is never negative and the identity holds exactly.
        """
        total = _entropy(self.mean)
        aleatoric = np.minimum(self.sample_entropy_sum / self.count, total)
        return total, aleatoric, total - aleatoric


@dataclasses.dataclass(frozen=True)
class MCDropoutResult:
    """Summary of ``T`` stochastic predictions of the same batch.

    The three entropy maps decompose the uncertainty (Depeweg et al., 2018):
    ``predictive_entropy = expected_entropy + mutual_information``, i.e.
    total = aleatoric + epistemic.

    Attributes:
        mean: mean probability, shape of one prediction ``(n, *spatial, C)``.
        variance: per-channel variance of the probability over the samples (population
            variance, divisor ``T``), same shape.
        predictive_entropy: entropy in nats of the mean prediction, ``(n, *spatial)``: total
            uncertainty. One channel is read as a sigmoid (binary entropy), several as a
            softmax distribution.
        mutual_information: predictive entropy minus the mean entropy of the single samples,
            ``(n, *spatial)``: the part of the uncertainty that comes from the model (BALD),
            epistemic.
        expected_entropy: mean entropy of the single samples, ``(n, *spatial)``: the part
            every plausible model agrees is uncertain, aleatoric.
    """

    mean: np.ndarray
    variance: np.ndarray
    predictive_entropy: np.ndarray
    mutual_information: np.ndarray
    expected_entropy: np.ndarray


def _entropy(probabilities: np.ndarray) -> np.ndarray:
    if probabilities.shape[-1] == 1:
        p = probabilities[..., 0].astype(np.float64)
        return entr(p) + entr(1.0 - p)
    return entr(probabilities.astype(np.float64)).sum(axis=-1)


def _finite_input(x: np.ndarray) -> np.ndarray:
    """``x`` as float32, refused when it holds NaN or infinite values (named, counted)."""
    x = np.asarray(x, dtype=np.float32)
    bad = int(np.count_nonzero(~np.isfinite(x)))
    if bad:
        raise ValueError(
            f"x holds {bad} NaN or infinite values of {x.size}; the model would predict NaN "
            "around each of them (replace them first, e.g. numpy.nan_to_num)"
        )
    return x


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
        >>> import keras
        >>> import numpy as np
        >>> net = keras.Sequential([keras.Input((4, 4, 1)), keras.layers.Dropout(0.5),
        ...                         keras.layers.Activation("sigmoid")])  # stands in for a U-Net
        >>> images = np.ones((2, 4, 4, 1), np.float32)
        >>> result = mc_dropout(net, images, samples=20)
        >>> result.mean.shape, result.mutual_information.shape
        ((2, 4, 4, 1), (2, 4, 4))
        >>> np.allclose(result.predictive_entropy,
        ...             result.expected_entropy + result.mutual_information, atol=1e-6)
        True
        >>> uncertain = result.mutual_information > 0.1

    Reference:
        Gal and Ghahramani, ICML 2016; Houlsby et al., "Bayesian active learning for
        classification and preference learning", 2011 (mutual information, BALD);
        Depeweg et al., "Decomposition of uncertainty in Bayesian deep learning for efficient
        and risk-sensitive learning", ICML 2018 (total = aleatoric + epistemic).
    """
    if not isinstance(samples, (int, np.integer)) or samples < 2:
        raise ValueError(f"samples must be an integer >= 2, got {samples!r}")
    x = _finite_input(x)
    check_batch_rank(model, x)
    predict = as_batch_predictor(mc_dropout_model(model))
    statistics = _SampleStatistics(f"the output of model {model.name!r}")
    for _ in range(samples):
        statistics.add(predict(x))
    total, aleatoric, epistemic = statistics.decomposition()
    return MCDropoutResult(
        mean=statistics.mean.astype(np.float32),
        variance=statistics.variance().astype(np.float32),
        predictive_entropy=total.astype(np.float32),
        mutual_information=epistemic.astype(np.float32),
        expected_entropy=aleatoric.astype(np.float32),
    )


@dataclasses.dataclass(frozen=True)
class UncertaintyDecomposition:
    """Per-voxel split of the predictive entropy of a set of probability samples, in nats.

    ``total == aleatoric + epistemic`` at every voxel.

    Attributes:
        total: entropy of the mean prediction ``H[E_w p(y | x, w)]``, ``(n, *spatial)``.
        aleatoric: expected entropy of the samples ``E_w H[p(y | x, w)]``: uncertainty each
            sampled model has on its own (noise, ambiguous borders).
        epistemic: mutual information between the label and the model weights, total minus
            aleatoric: disagreement between the sampled models.
    """

    total: np.ndarray
    aleatoric: np.ndarray
    epistemic: np.ndarray


def decompose_uncertainty(samples, *, axis: int = 0) -> UncertaintyDecomposition:
    """Split the uncertainty of stacked probability samples into aleatoric and epistemic maps.

    The samples are predictions of the same input by models drawn from the posterior: MC
    dropout passes (:func:`mc_dropout_model` called repeatedly) or ensemble members. One
    channel is read as a sigmoid (binary entropy), several as a softmax distribution. For
    a summary without holding the samples in memory use :func:`mc_dropout`, which returns
    the same three maps.

    Args:
        samples: array of probabilities with the samples along ``axis`` (at least 2), e.g.
            ``(T, n, *spatial, C)``, or a sequence of ``T`` equally shaped arrays.
        axis: the sample axis of ``samples``.

    Returns:
        :class:`UncertaintyDecomposition`, float32 maps of the sample shape without ``C``.

    Example:
        >>> import numpy as np
        >>> samples = [np.array([[0.9], [0.5]]),  # two samples of 2 voxels, one channel:
        ...            np.array([[0.1], [0.5]])]  # they disagree on the first voxel only
        >>> maps = decompose_uncertainty(samples)
        >>> maps.epistemic.round(3), maps.aleatoric.round(3)
        (array([0.368, 0.   ], dtype=float32), array([0.325, 0.693], dtype=float32))
        >>> np.allclose(maps.total, maps.aleatoric + maps.epistemic)
        True

        MC dropout samples of a batch ``x``: ``decompose_uncertainty(
        [mc_dropout_model(unet_2d).predict_on_batch(x) for _ in range(20)])``.

    Reference:
        Depeweg et al., "Decomposition of uncertainty in Bayesian deep learning for efficient
        and risk-sensitive learning", ICML 2018; Kendall and Gal, "What uncertainties do we
        need in Bayesian deep learning for computer vision?", NeurIPS 2017.
    """
    stack = np.asarray(samples, dtype=np.float64)
    if stack.ndim < 2:
        raise ValueError(
            f"samples must stack at least 2 predictions with a channel axis, got shape "
            f"{stack.shape}"
        )
    if not -stack.ndim <= axis < stack.ndim - 1 or axis % stack.ndim == stack.ndim - 1:
        raise ValueError(
            f"axis {axis} is not a sample axis of samples with shape {stack.shape} "
            "(the last axis holds the channels)"
        )
    stack = np.moveaxis(stack, axis, 0)
    if stack.shape[0] < 2:
        raise ValueError(f"samples must hold at least 2 predictions, got {stack.shape[0]}")
    statistics = _SampleStatistics("samples")
    for sample in stack:
        statistics.add(sample)
    total, aleatoric, epistemic = statistics.decomposition()
    return UncertaintyDecomposition(
        total=total.astype(np.float32),
        aleatoric=aleatoric.astype(np.float32),
        epistemic=epistemic.astype(np.float32),
    )


@dataclasses.dataclass(frozen=True)
class TTAUncertainty:
    """Summary of the predictions of augmented copies of one batch, mapped back to its grid.

    Attributes:
        mean: mean probability over the augmented predictions, ``(n, *spatial, C)``.
        variance: per-channel population variance over the augmented predictions.
        entropy: entropy in nats of the mean prediction, ``(n, *spatial)``: the aleatoric
            uncertainty map of Wang et al. (how much the prediction changes under
            transformations the label should not depend on).
        samples: number of augmented predictions summarised.
    """

    mean: np.ndarray
    variance: np.ndarray
    entropy: np.ndarray
    samples: int


def tta_uncertainty(
    predictor,
    x: np.ndarray,
    *,
    samples: int | None = None,
    flip_axes: Sequence[int] | None = None,
    rotation_plane: Sequence[int] | None = (-2, -1),
    noise_std: float = 0.0,
    seed: int | None = None,
    class_names: Sequence[str] | None = None,
) -> TTAUncertainty:
    """Aleatoric uncertainty by test-time augmentation: predict transformed copies, invert.

    Each copy of ``x`` is flipped and turned by quarter turns (transforms with an exact
    inverse on the voxel grid, see :func:`kseg.inference.tta.spatial_transforms`), gets
    independent gaussian intensity noise of standard deviation ``noise_std`` when that is
    positive, and is predicted; the prediction is transformed back onto ``x``'s grid. The
    spread of the back-transformed predictions is the uncertainty.

    Wang et al. sample continuous rotations and scalings too and take the entropy of the
    predicted labels' frequencies; interpolating transforms are left out here because their
    inverse blurs the prediction, and the entropy is taken of the mean probability, which
    agrees with the label-frequency entropy for confident predictions and is smoother.

    Args:
        predictor: a ``keras.Model`` or a callable batch -> batch of probabilities (sigmoid
            with one channel, softmax with several) that keeps the spatial shape.
        x: an input batch ``(n, *spatial, C)``.
        samples: ``None`` predicts every distinct transform once (8 for a square 2D image,
            16 for a 3D volume with square slices); an integer draws that many transforms
            at random, with replacement (useful with ``noise_std > 0``).
        flip_axes: spatial axes that may be mirrored (without batch and channel axes);
            ``None`` means all that ``class_names`` allow.
        rotation_plane: the two spatial axes to turn in, default the last two; ``None`` for
            flips only. Quarter turns are used only where the two axes have equal length.
        noise_std: standard deviation of the additive gaussian intensity noise, in the
            units of ``x`` (e.g. 0.05 for z-scored images); 0 adds none.
        seed: seed of the transform draws and the noise.
        class_names: the model's classes, channel order. When one says "left" or "right"
            (LCTSC's ``lung_left`` / ``lung_right``), a copy mirrored along the last
            (left-right) spatial axis, or turned in a plane holding it, would be predicted
            with those classes swapped, so such transforms are left out, as the evaluation's
            mirroring leaves them out (:func:`kseg.plan.rule_mirror_axes`); a ``flip_axes``
            naming that axis is refused. ``None``: nothing is known of the classes.

    Returns:
        :class:`TTAUncertainty`.

    Example:
        >>> import numpy as np
        >>> ramp = lambda batch: np.broadcast_to(  # a predictor biased to one side
        ...     np.linspace(0, 1, batch.shape[2], dtype=np.float32)[None, None, :, None],
        ...     batch.shape)
        >>> result = tta_uncertainty(ramp, np.zeros((1, 4, 4, 1), np.float32))
        >>> result.samples, float(result.mean.min()), float(result.mean.max())
        (8, 0.5, 0.5)
        >>> aleatoric = result.entropy

        With random transforms and intensity noise:
        ``tta_uncertainty(unet_2d, images, samples=20, noise_std=0.05, seed=0)``.

    Reference:
        Wang et al., "Aleatoric uncertainty estimation with test-time augmentation for
        medical image segmentation with convolutional neural networks", Neurocomputing
        338:34-45, 2019.
    """
    x = _finite_input(x)
    if x.ndim < 3:
        raise ValueError(f"x must be a batch (n, *spatial, C), got shape {x.shape}")
    check_batch_rank(predictor, x)
    if not np.isfinite(noise_std) or noise_std < 0:
        raise ValueError(f"noise_std must be a finite number >= 0, got {noise_std!r}")
    transforms = _label_preserving_transforms(
        x.shape[1:-1], flip_axes, rotation_plane, class_names
    )
    rng = np.random.default_rng(seed)
    if samples is None:
        chosen = transforms
        if len(chosen) < 2:
            raise ValueError(
                "flip_axes and rotation_plane leave only the identity transform; allow a flip "
                "or a turn, or pass samples with noise_std > 0"
            )
    elif not isinstance(samples, (int, np.integer)) or samples < 2:
        raise ValueError(f"samples must be None or an integer >= 2, got {samples!r}")
    else:
        chosen = [transforms[i] for i in rng.integers(len(transforms), size=samples)]
    predict = as_batch_predictor(predictor)
    statistics = _SampleStatistics("the predictor's output")
    for transform in chosen:
        augmented = transform.apply(x)
        if noise_std > 0:
            augmented = augmented + rng.normal(0.0, noise_std, augmented.shape).astype(np.float32)
        statistics.add(transform.invert(predict(np.ascontiguousarray(augmented))))
    return TTAUncertainty(
        mean=statistics.mean.astype(np.float32),
        variance=statistics.variance().astype(np.float32),
        entropy=_entropy(statistics.mean).astype(np.float32),
        samples=statistics.count,
    )


def _label_preserving_transforms(spatial_shape, flip_axes, rotation_plane, class_names):
    """:func:`spatial_transforms` without those that mirror or move the left-right axis
    (the last spatial axis) when ``class_names`` hold left / right classes."""
    from kseg.plan import class_name_list, rule_mirror_axes

    spatial_dims = len(spatial_shape)
    class_names = class_name_list(class_names)
    allowed = rule_mirror_axes(spatial_dims, class_names)
    lateral = spatial_dims - 1 not in allowed
    if lateral and flip_axes is not None and spatial_dims - 1 in tuple(flip_axes):
        raise ValueError(
            f"flip_axes {tuple(flip_axes)} holds the left-right axis {spatial_dims - 1}, but "
            f"class_names {list(class_names)} hold left / right classes: a mirrored copy is "
            "predicted with them swapped; leave that axis out"
        )
    transforms = spatial_transforms(
        spatial_shape,
        flip_axes=allowed if lateral and flip_axes is None else flip_axes,
        rotation_plane=rotation_plane,
    )
    if not lateral:
        return transforms
    # keep the transforms under which a ramp along the left-right axis stays where it is
    probe = np.broadcast_to(
        np.arange(3).reshape((1,) + (1,) * (spatial_dims - 1) + (3, 1)),
        (1,) + (3,) * spatial_dims + (1,),
    )
    return [t for t in transforms if np.array_equal(t.apply(probe), probe)]


def uncertainty_summary(maps, foreground) -> dict[str, float]:
    """Per-patient means of uncertainty maps, inside the predicted foreground and overall.

    Pass one patient's maps (a 2D model's slices stacked along the batch axis, or a 3D
    model's batch of one). Maps with a trailing channel axis (``variance``) are first
    averaged over the channels.

    Args:
        maps: a mapping ``{name: array}`` or one of :class:`MCDropoutResult`,
            :class:`TTAUncertainty`, :class:`UncertaintyDecomposition` (every array field but
            ``mean`` is summarised).
        foreground: boolean mask of the predicted foreground, shape of the maps without
            channels, e.g. ``result.mean[..., 0] >= 0.5`` or ``result.mean.argmax(-1) > 0``.

    Returns:
        ``{"<name>_foreground": float, "<name>_volume": float, ..., "foreground_voxels":
        int}``; a foreground mean is ``nan`` when the predicted foreground is empty (there
        is nothing to average, and 0 would read as "certain").

    Example:
        >>> import keras
        >>> import numpy as np
        >>> net = keras.Sequential([keras.Input((4, 4, 1)), keras.layers.Dropout(0.5),
        ...                         keras.layers.Activation("sigmoid")])
        >>> result = mc_dropout(net, np.ones((2, 4, 4, 1), np.float32))
        >>> row = uncertainty_summary(result, result.mean[..., 0] >= 0.5)
        >>> row["foreground_voxels"], sorted(row)[:2]
        (32, ['expected_entropy_foreground', 'expected_entropy_volume'])
        >>> mutual_information = row["mutual_information_foreground"]
    """
    if dataclasses.is_dataclass(maps) and not isinstance(maps, type):
        maps = {
            field.name: getattr(maps, field.name)
            for field in dataclasses.fields(maps)
            if field.name != "mean" and isinstance(getattr(maps, field.name), np.ndarray)
        }
    elif not isinstance(maps, Mapping):
        raise ValueError(
            f"maps must be a mapping of name -> array or an uncertainty result, got "
            f"{type(maps).__name__}"
        )
    foreground = np.asarray(foreground)
    if foreground.dtype != bool:
        raise ValueError(f"foreground must be a boolean mask, got dtype {foreground.dtype}")
    summary = {}
    for name, values in maps.items():
        values = np.asarray(values, dtype=np.float64)
        if values.shape == foreground.shape + values.shape[-1:] and values.ndim > foreground.ndim:
            values = values.mean(axis=-1)
        if values.shape != foreground.shape:
            raise ValueError(
                f"maps[{name!r}] has shape {values.shape}, foreground has {foreground.shape}"
            )
        nan_count = int(np.count_nonzero(np.isnan(values)))
        if nan_count:
            raise ValueError(
                f"maps[{name!r}] holds NaN in {nan_count} of {values.size} values (maps of "
                "a diverged model); its means would be NaN"
            )
        inside = values[foreground]
        summary[f"{name}_foreground"] = float(inside.mean()) if inside.size else float("nan")
        summary[f"{name}_volume"] = float(values.mean())
    summary["foreground_voxels"] = int(np.count_nonzero(foreground))
    return summary


def _split_heteroscedastic_outputs(outputs) -> tuple[np.ndarray, np.ndarray]:
    """``(logits, bounded log-variance)`` of a heteroscedastic model's output, float64."""
    from kseg.losses import LOG_VARIANCE_BOUND

    outputs = np.asarray(outputs, dtype=np.float64)
    if outputs.ndim < 3 or outputs.shape[-1] < 2:
        raise ValueError(
            "outputs must be a heteroscedastic model's output (n, *spatial, num_classes + 1): "
            f"logits then one log-variance channel, got shape {outputs.shape}"
        )
    bad = int(np.count_nonzero(~np.isfinite(outputs)))
    if bad:
        raise ValueError(
            f"outputs holds {bad} NaN or infinite values of {outputs.size}; a model that "
            "outputs them has diverged and its aleatoric uncertainty is undefined"
        )
    log_variance = LOG_VARIANCE_BOUND * np.tanh(outputs[..., -1] / LOG_VARIANCE_BOUND)
    return outputs[..., :-1], log_variance


def aleatoric_variance(outputs) -> np.ndarray:
    """The learned aleatoric variance ``σ²`` of a heteroscedastic model, per voxel.

    ``outputs`` is the ``(n, *spatial, num_classes + 1)`` output of a model ending in
    :class:`kseg.models.HeteroscedasticHead`: logits, then the log-variance ``s``. The map
    is ``exp(20 tanh(s / 20))``, the variance of the logit noise exactly as
    :class:`kseg.losses.HeteroscedasticCrossEntropy` samples it (in logit units, shared by
    the classes of a voxel), float32 of shape ``(n, *spatial)``.

    Example:
        >>> import numpy as np
        >>> outputs = np.zeros((1, 1, 2, 2))  # one logit channel, then the log-variance s
        >>> outputs[0, 0, :, 1] = [0.0, np.log(4.0)]
        >>> aleatoric_variance(outputs).round(2)  # exp(s), bounded by the tanh
        array([[[1.  , 3.99]]], dtype=float32)
    """
    return np.exp(_split_heteroscedastic_outputs(outputs)[1]).astype(np.float32)


@dataclasses.dataclass(frozen=True)
class HeteroscedasticUncertainty:
    """Probabilities and aleatoric maps of a heteroscedastic model's output.

    Attributes:
        mean: probabilities ``(n, *spatial, C)``: sigmoid (one logit channel) or softmax of
            the logits ``f`` when ``samples == 0``, else the mean over ``samples`` draws of
            the sigmoid / softmax of ``f + σ ε``, the predictive distribution the loss was
            trained on.
        variance: ``σ²`` per voxel, ``(n, *spatial)``, see :func:`aleatoric_variance`.
        entropy: entropy in nats of ``mean``, ``(n, *spatial)``: the aleatoric uncertainty
            in probability terms (it includes the noise only when ``samples > 0``).
        samples: number of logit draws averaged (0: none).
    """

    mean: np.ndarray
    variance: np.ndarray
    entropy: np.ndarray
    samples: int


def heteroscedastic_uncertainty(
    outputs, *, samples: int = 0, seed: int | None = None
) -> HeteroscedasticUncertainty:
    """Split a heteroscedastic model's output into probabilities and aleatoric maps.

    Args:
        outputs: ``(n, *spatial, C + 1)`` logits then log-variance, e.g.
            ``model.predict(x)`` for a model ending in :class:`kseg.models.HeteroscedasticHead`.
        samples: 0 reads the probabilities off the logits alone; ``T >= 1`` averages the
            probabilities of ``T`` noisy logit draws ``f + σ ε`` (numpy, ``seed``).
        seed: seed of the draws.

    Returns:
        :class:`HeteroscedasticUncertainty`, float32 arrays.

    Example:
        >>> import numpy as np
        >>> outputs = np.zeros((1, 1, 2, 2))  # model.predict(images): logits, log-variance
        >>> outputs[0, 0, :, 1] = [0.0, np.log(4.0)]
        >>> result = heteroscedastic_uncertainty(outputs, samples=50, seed=0)
        >>> result.mean.shape, result.variance > 1.0
        ((1, 1, 2, 1), array([[[False,  True]]]))

    Reference:
        Kendall A, Gal Y. "What Uncertainties Do We Need in Bayesian Deep Learning for
        Computer Vision?". NeurIPS 2017.
    """
    if isinstance(samples, bool) or not isinstance(samples, (int, np.integer)) or samples < 0:
        raise ValueError(f"samples must be an integer >= 0, got {samples!r}")
    logits, log_variance = _split_heteroscedastic_outputs(outputs)

    def probabilities(values):
        if values.shape[-1] == 1:
            return 0.5 * (1.0 + np.tanh(0.5 * values))  # sigmoid without overflow
        shifted = np.exp(values - values.max(axis=-1, keepdims=True))
        return shifted / shifted.sum(axis=-1, keepdims=True)

    if samples == 0:
        mean = probabilities(logits)
    else:
        rng = np.random.default_rng(seed)
        sigma = np.exp(0.5 * log_variance)[..., None]
        mean = np.zeros_like(logits)
        for _ in range(samples):
            mean += probabilities(logits + sigma * rng.standard_normal(logits.shape))
        mean /= samples
    return HeteroscedasticUncertainty(
        mean=mean.astype(np.float32),
        variance=np.exp(log_variance).astype(np.float32),
        entropy=_entropy(mean).astype(np.float32),
        samples=int(samples),
    )
