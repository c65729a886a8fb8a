"""tf.data building blocks: intensity windows and scaling, joint resizing, and one function
that turns a TFDS split of (image, mask) examples into training batches.

Everything here is TensorFlow graph code (no ``py_function``, no numpy), so it runs inside
``Dataset.map`` at full parallelism and can be saved with the dataset.

Order of :func:`segmentation_dataset`, and why:

    select/decode -> intensity (window) -> labels -> resize -> cache -> shuffle -> batch
    -> augment -> prefetch

Deterministic, per-example work comes first so ``cache`` stores its result once; random
augmentation comes after the cache, or every epoch would replay epoch one's augmentations.
Augmentation runs on whole batches, where Keras layers are vectorised.
"""

from __future__ import annotations

import collections
import hashlib
import math
import numbers
from collections.abc import Iterable, Mapping

import tensorflow as tf
import tensorflow_datasets as tfds

from kseg.data.preprocess3d import MSD_SPLEEN_WINDOW


def _center_and_width(low: float, high: float) -> tuple[float, float]:
    return (low + high) / 2.0, high - low


# (center, width) in Hounsfield units. Radiopaedia, "Windowing (CT)"; "spleen_msd" is the
# MSD spleen chain's -57..164 HU window (kseg.data.preprocess3d.MSD_SPLEEN_WINDOW, from
# MONAI's spleen tutorial), i.e. (53.5, 221.0).
WINDOWS = {
    "abdomen": (40.0, 400.0),
    "liver": (30.0, 150.0),
    "lung": (-600.0, 1500.0),
    "mediastinum": (50.0, 350.0),
    "bone": (400.0, 1800.0),
    "brain": (40.0, 80.0),
    "spleen_msd": _center_and_width(*MSD_SPLEEN_WINDOW),
}


def window(image, center: float, width: float):
    """Map a Hounsfield-unit window to [0, 1], clipping what falls outside.

    ``center - width / 2`` maps to 0 and ``center + width / 2`` to 1, linearly, as MONAI's
    ``ScaleIntensityRange(a_min, a_max, b_min=0, b_max=1, clip=True)``.

    Args:
        image: tensor of any shape and real dtype (int16 HU from the TFDS builders).
        center: window level in HU.
        width: window width in HU, > 0.

    Returns:
        float32 tensor of ``image``'s shape with values in [0, 1].

    Example:
        >>> window(tf.constant([-1000, -160, 40, 240, 3000], tf.int16), *WINDOWS["abdomen"])
        <tf.Tensor: shape=(5,), dtype=float32, numpy=array([0. , 0. , 0.5, 1. , 1. ], ...)>

    Reference:
        Radiopaedia, "Windowing (CT)", https://radiopaedia.org/articles/windowing-ct
    """
    given = [float(v) for v in (center, width) if isinstance(v, numbers.Real)]
    if not all(math.isfinite(v) for v in given) or (
        isinstance(width, numbers.Real) and not width > 0
    ):
        raise ValueError(
            f"window needs a finite center and a width > 0 HU, got center={center!r}, "
            f"width={width!r}"
        )
    low = center - width / 2.0
    scaled = (tf.cast(image, tf.float32) - low) / width
    return tf.clip_by_value(scaled, 0.0, 1.0)


def scale_intensity(image, minimum: float | None = None, maximum: float | None = None):
    """Map ``[minimum, maximum]`` linearly to [0, 1] with clipping (X-ray, 8/16-bit images).

    Args:
        image: tensor of any shape and real dtype; one image (the extremes are taken over
            the whole tensor).
        minimum: value mapped to 0; ``None`` takes the image's own minimum.
        maximum: value mapped to 1; ``None`` takes the image's own maximum.

    Returns:
        float32 tensor in [0, 1]; a constant image maps to 0.

    Raises:
        ValueError: ``minimum`` and ``maximum`` both given and ``minimum`` not below
            ``maximum`` (swapped bounds scaled every value to 0), or a bound that is not
            finite.

    Example:
        >>> scale_intensity(tf.constant([0, 51, 255], tf.uint8), 0, 255)
        <tf.Tensor: shape=(3,), dtype=float32, numpy=array([0. , 0.2, 1. ], ...)>
    """
    bounds = [float(v) for v in (minimum, maximum) if isinstance(v, numbers.Real)]
    swapped = len(bounds) == 2 and not bounds[0] < bounds[1]
    if swapped or not all(math.isfinite(v) for v in bounds):
        raise ValueError(
            f"scale_intensity needs finite bounds with minimum < maximum, got minimum="
            f"{minimum!r}, maximum={maximum!r} (the value mapped to 0, then the one mapped to 1)"
        )
    image = tf.cast(image, tf.float32)
    low = tf.reduce_min(image) if minimum is None else tf.constant(minimum, tf.float32)
    high = tf.reduce_max(image) if maximum is None else tf.constant(maximum, tf.float32)
    span = high - low
    safe_span = tf.where(span > 0, span, 1.0)
    return tf.where(span > 0, tf.clip_by_value((image - low) / safe_span, 0.0, 1.0), 0.0)


def z_normalize(image, nonzero: bool = False, epsilon: float = 1e-8):
    """Zero mean, unit standard deviation per image (MR, where intensities have no unit).

    Args:
        image: tensor of any shape and real dtype; one image or volume.
        nonzero: take the statistics over non-zero voxels only and keep zeros at 0, as
            nnU-Net does for MR cropped to the body (background outside stays background).
        epsilon: added to the standard deviation, so a constant image maps to 0.

    Returns:
        float32 tensor of ``image``'s shape.

    Reference:
        Isensee F. et al., "nnU-Net: a self-configuring method for deep learning-based
        biomedical image segmentation", Nature Methods 18, 203-211 (2021) (z-score
        normalisation; use_mask_for_norm).
    """
    image = tf.cast(image, tf.float32)
    if not nonzero:
        return (image - tf.reduce_mean(image)) / (tf.math.reduce_std(image) + epsilon)
    inside = tf.not_equal(image, 0.0)
    values = tf.boolean_mask(image, inside)
    normalized = (image - tf.reduce_mean(values)) / (tf.math.reduce_std(values) + epsilon)
    return tf.where(inside, normalized, 0.0)


def resize(image, mask, size):
    """Resize an image bilinearly (antialiased) and its mask by nearest neighbour.

    Nearest neighbour keeps the mask's dtype and its label values: it never invents a
    label between two neighbouring ones.

    Args:
        image: ``(H, W, C)`` or ``(B, H, W, C)`` tensor.
        mask: ``(H, W, C)`` or ``(B, H, W, C)`` label tensor on the image's grid.
        size: ``(height, width)`` of the output.

    Returns:
        ``(image float32, mask in its own dtype)`` at ``size``.

    Example:
        >>> image, mask = resize(tf.zeros((512, 512, 1)), tf.zeros((512, 512, 1), tf.uint8),
        ...                      (256, 256))
    """
    size = _check_size(size)
    return _resize_image(image, size), tf.image.resize(mask, size, method="nearest")


def _resize_image(image, size):
    return tf.image.resize(tf.cast(image, tf.float32), size, method="bilinear", antialias=True)


def model_input(*, image_key: str = "image", window=None, image_size=None):
    """The per-example image transform of :func:`segmentation_dataset`, for inference.

    Evaluation (``kseg.evaluation.evaluate_slices``, ``VolumeValidation.from_slices``)
    needs the model's input made exactly as training made it; building it from the same
    arguments keeps the two from drifting apart (a missing antialias, another window).

    Args:
        image_key, window, image_size: as in :func:`segmentation_dataset`.

    Returns:
        A TensorFlow function ``example dict -> (h, w, C) float32 image``.

    Example:
        >>> prep = model_input(window="abdomen", image_size=(128, 128))
        >>> table = evaluate_slices(model, test_slices, preprocess=prep)  # doctest: +SKIP
    """
    intensity = _intensity_function(window)
    size = None if image_size is None else _check_size(image_size)

    def preprocess(example):
        image = intensity(_as_channels_last_image(example[image_key], image_key))
        return image if size is None else _resize_image(image, size)

    return preprocess


def center_crop_or_pad(image, mask, size):
    """Crop the centre of, or zero-pad evenly around, an image and its mask to ``size``.

    Keeps the pixel grid (no resampling), so physical pixel size is unchanged. Pads with 0:
    apply after windowing, where 0 is the bottom of the window, and to masks, where 0 is
    background.

    Args:
        image: ``(H, W, C)`` or ``(B, H, W, C)`` tensor.
        mask: label tensor of the same spatial shape.
        size: ``(height, width)`` of the output.

    Returns:
        ``(image, mask)`` of spatial size ``size``, dtypes unchanged.
    """
    height, width = _check_size(size)
    return (
        tf.image.resize_with_crop_or_pad(image, height, width),
        tf.image.resize_with_crop_or_pad(mask, height, width),
    )


def _check_size(size) -> tuple[int, int]:
    try:
        height, width = (int(v) for v in size)
    except (TypeError, ValueError):
        raise ValueError(f"size must be (height, width), got {size!r}") from None
    if height < 1 or width < 1:
        raise ValueError(f"size must be positive, got {size!r}")
    return height, width


def _intensity_function(window_argument):
    """The per-image intensity transform that ``segmentation_dataset``'s ``window`` names."""
    if window_argument is None:
        return lambda image: tf.cast(image, tf.float32)
    if callable(window_argument):
        return window_argument
    if isinstance(window_argument, str):
        if window_argument not in WINDOWS:
            raise ValueError(
                f"window {window_argument!r} is not a preset; choose one of {sorted(WINDOWS)} "
                "or pass (center, width)"
            )
        center, width = WINDOWS[window_argument]
    else:
        try:
            center, width = (float(v) for v in window_argument)
        except (TypeError, ValueError):
            raise ValueError(
                "window must be a preset name, (center, width), a callable or None, "
                f"got {window_argument!r}"
            ) from None
    if not (width > 0 and math.isfinite(width) and math.isfinite(center)):
        raise ValueError(f"window width must be > 0 HU, got {window_argument!r}")
    return lambda image: window(image, center, width)


def _check_label_map(label_map, num_classes: int) -> dict[int, int] | None:
    if label_map is None:
        return None
    try:
        mapping = {int(source): int(target) for source, target in dict(label_map).items()}
    except (TypeError, ValueError):
        raise ValueError(
            f"label_map must map int labels to int labels, got {label_map!r}"
        ) from None
    top = max(num_classes, 2) - 1
    bad = {s: t for s, t in mapping.items() if not 0 <= t <= top}
    if bad:
        raise ValueError(
            f"label_map targets must lie in [0, {top}] for num_classes={num_classes}, got {bad}"
        )
    return mapping


def _map_labels(mask, num_classes: int, label_map: dict[int, int] | None):
    """Training labels: float32 {0, 1} for one class, int32 0..C-1 for several.

    A floating-point mask (nibabel's ``get_fdata``, a label map scaled by a NIfTI
    ``scl_slope``) is rounded to the nearest label first: a cast truncates, so a stored
    0.99999994 became background and 1.9999999 label 1.
    """
    if mask.dtype.is_floating:
        mask = tf.round(mask)
    mask = tf.cast(mask, tf.int32)
    if label_map is not None:
        mapped = tf.zeros_like(mask)
        for source, target in label_map.items():
            mapped = tf.where(tf.equal(mask, source), target, mapped)
        mask = mapped
    if num_classes == 1:
        return tf.cast(mask > 0, tf.float32)
    checks = [
        tf.debugging.assert_less(
            mask, num_classes, message=f"mask labels must be < num_classes={num_classes}"
        ),
        tf.debugging.assert_non_negative(mask, message="mask labels must be >= 0"),
    ]
    with tf.control_dependencies(checks):
        return tf.identity(mask)


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_JPEG_SIGNATURE = b"\xff\xd8\xff"


def _decode_stored_values(contents, name: str = "image", mask: bool = False):
    """An encoded PNG / JPEG / BMP / GIF as ``(H, W, 1)`` uint16 holding its stored values.

    ``tf.io.decode_image`` decodes to uint8 by default, which rescales a 16-bit PNG to 8
    bits (a 0/1 mask becomes all 0, a 12-bit radiograph loses its low bits), and with
    ``dtype=uint16`` it rescales 8-bit images by 257. A 16-bit PNG (bit depth 16 in its
    IHDR chunk, byte 24) is therefore decoded at 16 bits, everything else at 8, and both
    come out as uint16 with the values the file stores.

    TensorFlow refuses to decode BMP and GIF files to one channel, so those are decoded
    with their own channels and turned grey here. A mask (``mask``) is always decoded with
    its own channels and its grey one kept (grey stored as RGB or a grey palette gives its
    grey; alpha is dropped): asked for one channel, TensorFlow turned a colour palette's
    label map into the luma of its colours. Real colour and JPEG masks are an
    InvalidArgumentError naming ``name``: a JPEG's compression noise made background pixels
    1, 2, 3 ... and so foreground (kseg.io.read_labels reads such files with a threshold and
    a warning, which a graph cannot give).
    """
    sixteen_bit = tf.logical_and(
        tf.equal(tf.strings.substr(contents, 0, 8), _PNG_SIGNATURE),
        tf.equal(tf.strings.substr(contents, 24, 1), b"\x10"),
    )

    def decode(channels):
        return tf.cond(
            sixteen_bit,
            lambda: tf.io.decode_png(contents, channels=channels, dtype=tf.uint16),
            lambda: tf.cast(
                tf.io.decode_image(contents, channels=channels, expand_animations=False),
                tf.uint16,
            ),
        )

    if not mask:
        own_channels = tf.logical_or(
            tf.equal(tf.strings.substr(contents, 0, 2), b"BM"),
            tf.equal(tf.strings.substr(contents, 0, 3), b"GIF"),
        )
        return tf.cond(own_channels, lambda: _grey_of(decode(0)), lambda: decode(1))
    lossy = tf.debugging.assert_equal(
        tf.equal(tf.strings.substr(contents, 0, 3), _JPEG_SIGNATURE),
        False,
        message=f"'{name}' is an encoded JPEG: a lossy mask, whose compression noise reads as "
        "labels. Store masks as PNG, or read them with kseg.io.read_labels",
    )
    with tf.control_dependencies([lossy]):
        decoded = decode(0)
    channels = tf.shape(decoded)[-1]
    colour = tf.cond(channels >= 3, lambda: decoded[..., :3], lambda: decoded[..., :1])
    grey = decoded[..., :1]
    check = tf.debugging.assert_equal(
        tf.reduce_all(tf.equal(colour, grey)),
        True,
        message=f"'{name}' is an encoded colour image; expected a grey label mask (a label "
        "map's colours are not its labels: read it with kseg.io.read_labels)",
    )
    with tf.control_dependencies([check]):
        return tf.identity(grey)


def _grey_of(decoded):
    """``(H, W, 1)`` uint16: the grey of an 8-bit image decoded with its own channels (luma
    of real colour, as decoding to one channel gives; alpha dropped)."""
    channels = tf.shape(decoded)[-1]

    def luma():
        return tf.cast(
            tf.round(tf.image.rgb_to_grayscale(tf.cast(decoded[..., :3], tf.float32))), tf.uint16
        )

    return tf.cond(channels >= 3, luma, lambda: decoded[..., :1])


def _as_channels_last_image(tensor, name: str, mask: bool = False):
    """Decode encoded images and give 2D arrays a channel axis: ``(H, W, C)``."""
    if tensor.dtype == tf.string:
        tensor = _decode_stored_values(tensor, name, mask)
    rank = tensor.shape.rank
    if rank == 2:
        return tensor[..., tf.newaxis]
    if rank == 3:
        return tensor
    raise ValueError(f"{name} must be (H, W) or (H, W, C) per example, got shape {tensor.shape}")


def segmentation_dataset(
    ds: tf.data.Dataset,
    *,
    image_key: str = "image",
    mask_key: str = "mask",
    window=None,
    image_size=None,
    num_classes: int = 1,
    label_map=None,
    batch_size: int = 8,
    augment=None,
    shuffle_buffer: int | None = None,
    cache=False,
    seed: int | None = None,
    drop_remainder: bool = False,
    deterministic: bool | None = None,
) -> tf.data.Dataset:
    """Turn per-slice examples into ``(image, mask)`` training batches for a 2D model.

    Order: select/decode, intensity, labels, resize, cache, shuffle, batch, augment,
    prefetch (module docstring says why).

    Args:
        ds: dataset of dicts (TFDS examples; ``image_key`` / ``mask_key`` are read, other keys
            such as ``patient_id`` are dropped) or of ``(image, mask)`` tuples. Images
            ``(H, W)`` / ``(H, W, C)`` of any real dtype or encoded PNG/JPEG/BMP strings
            (decoded to one channel with the values they store, 16-bit PNGs at 16 bits);
            masks the same shape in integer labels.
        image_key: key of the image in dict examples.
        mask_key: key of the mask in dict examples.
        window: intensity transform: a preset name from ``WINDOWS`` (``"abdomen"``,
            ``"liver"``, ``"lung"``, ``"spleen_msd"``, ...), a ``(center, width)`` pair in HU,
            a callable ``image -> float32 image`` (e.g. ``z_normalize``, or
            ``functools.partial(scale_intensity, minimum=0, maximum=255)`` for 8-bit X-ray),
            or ``None`` to only cast to float32.
        image_size: ``(height, width)`` to resize to (bilinear image, nearest mask), or
            ``None`` to keep the size (examples must then share one).
        num_classes: 1 for a binary task (mask float32 in {0, 1}, label > 0 is foreground),
            or the number of classes C for sparse int32 labels 0..C-1.
        label_map: optional ``{source label: training label}``; unlisted labels become 0.
            E.g. ``{6: 1}`` trains a binary liver model from a multi-organ mask.
        batch_size: examples per batch.
        augment: ``None`` or a Keras layer, called with ``training=True``, taking and returning
            ``{"images": (B, H, W, 1) float32, "segmentation_masks": (B, H, W, 1)}``, e.g.
            ``kseg.augment.segmentation_augmenter()``. Runs after ``cache``.
        shuffle_buffer: examples in the shuffle buffer; ``None`` or 0 for no shuffling.
        cache: ``False``, ``True`` (in memory) or a file path prefix (on disk) for the
            prepared, un-augmented examples. The files are named ``PREFIX-<fingerprint>``,
            the fingerprint covering window, size, labels, keys and the source's structure
            and length, since TensorFlow replays existing cache files whatever the pipeline
            now computes; give each source dataset (each split) its own prefix.
        seed: seed of the shuffle; with it the dataset defaults to deterministic order.
        drop_remainder: drop a last, smaller batch (static batch shapes for XLA).
        deterministic: keep element order and run ``augment`` sequentially so a seeded
            augmenter repeats exactly; defaults to ``seed is not None``.

    Returns:
        ``tf.data.Dataset`` of ``(image (B, H, W, C) float32, mask (B, H, W, 1))``.

    Example:
        >>> import numpy as np
        >>> import tensorflow as tf
        >>> import kseg
        >>> ct = np.full((4, 64, 64), -1000, np.int16)
        >>> ct[:, 16:48, 16:48] = 60
        >>> mask = (ct > 0).astype(np.uint8)
        >>> slices = tf.data.Dataset.from_tensor_slices(  # as tfds.load("chaos_ct") gives
        ...     {"image": ct, "mask": mask, "patient_id": ["1"] * 4})
        >>> train = segmentation_dataset(
        ...     slices, window="abdomen", image_size=(32, 32),
        ...     batch_size=2, shuffle_buffer=4, cache=True, seed=0,
        ...     augment=kseg.augment.segmentation_augmenter(seed=0))
        >>> [tuple(tensor.shape) for tensor in next(iter(train))]
        [(2, 32, 32, 1), (2, 32, 32, 1)]
        >>> model.fit(train, epochs=50)  # doctest: +SKIP
    """
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be an integer >= 1, got {num_classes!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    intensity = _intensity_function(window)
    mapping = _check_label_map(label_map, num_classes)
    size = None if image_size is None else _check_size(image_size)
    if deterministic is None:
        deterministic = seed is not None

    def prepare(element):
        if isinstance(element, dict):
            missing = [key for key in (image_key, mask_key) if key not in element]
            if missing:
                raise ValueError(
                    f"examples have no {missing} key(s); they hold {sorted(element)}. "
                    "Set image_key / mask_key."
                )
            image, mask = element[image_key], element[mask_key]
        else:
            image, mask = element
        image = _as_channels_last_image(image, image_key)
        mask = _as_channels_last_image(mask, mask_key, mask=True)
        check = tf.debugging.assert_equal(
            tf.shape(image)[:2],
            tf.shape(mask)[:2],
            message=f"'{image_key}' and '{mask_key}' must share their height and width",
        )
        with tf.control_dependencies([check]):
            image = intensity(image)
        mask = _map_labels(mask, num_classes, mapping)
        if size is not None:
            image, mask = resize(image, mask, size)
        return image, mask

    def prepare_example(*element):
        return prepare(element[0] if len(element) == 1 else element)

    source = ds
    options = tf.data.Options()
    options.deterministic = deterministic
    ds = ds.with_options(options)
    ds = ds.map(prepare_example, num_parallel_calls=tf.data.AUTOTUNE)
    if cache is True:
        ds = ds.cache()
    elif cache:
        ds = ds.cache(_cache_path(cache, source, window, size, num_classes, mapping, image_key,
                                  mask_key))
    if shuffle_buffer:
        ds = ds.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
    ds = ds.batch(batch_size, drop_remainder=drop_remainder)
    if augment is not None:

        def augment_batch(image, mask):
            augmented = augment({"images": image, "segmentation_masks": mask}, training=True)
            return augmented["images"], augmented["segmentation_masks"]

        # A seeded Keras augmenter keeps its random state in a variable: parallel calls
        # would read it in whatever order the threads run.
        ds = ds.map(augment_batch, num_parallel_calls=None if deterministic else tf.data.AUTOTUNE)
    return ds.prefetch(tf.data.AUTOTUNE)


def _code_fingerprint(code) -> str:
    """A function's bytecode, constants and names, the same in every process (nested code
    objects by their own fingerprint, not their ``repr``, which holds a memory address)."""
    if code is None:
        return ""
    constants = tuple(
        _code_fingerprint(value) if hasattr(value, "co_code") else repr(value)
        for value in code.co_consts
    )
    return repr((code.co_code.hex(), constants, code.co_names))


def _values_fingerprint(values) -> str:
    """Numbers, strings and their tuples / lists by value; other objects by type (their
    ``repr`` may hold a memory address, which would change the fingerprint every run)."""

    def plain(value):
        if value is None or isinstance(value, (bool, numbers.Number, str, bytes)):
            return repr(value)
        if isinstance(value, (tuple, list)):
            return repr([plain(item) for item in value])
        if hasattr(value, "__code__"):
            return _code_fingerprint(value.__code__)
        return type(value).__qualname__

    return repr([plain(value) for value in values])


def _cache_path(prefix, source, window_argument, size, num_classes, mapping, *keys) -> str:
    """``prefix`` plus a fingerprint of what the cached examples were prepared with.

    ``Dataset.cache(path)`` reads existing files without checking what produced them: a
    rerun with another window or size would train on the old run's examples.
    """
    if callable(window_argument):
        func = getattr(window_argument, "func", window_argument)  # functools.partial
        window_argument = (
            getattr(func, "__module__", ""),
            getattr(func, "__qualname__", type(func).__name__),
            repr(getattr(window_argument, "args", ())),
            repr(sorted(getattr(window_argument, "keywords", {}).items())),
            # Two lambdas, or one window function edited between runs, share module and
            # name: their code, defaults and closed-over values tell them apart.
            _code_fingerprint(getattr(func, "__code__", None)),
            _values_fingerprint(getattr(func, "__defaults__", None) or ()),
            _values_fingerprint(
                cell.cell_contents for cell in getattr(func, "__closure__", None) or ()
            ),
        )
    cardinality = int(source.cardinality())
    described = repr(
        (window_argument, size, num_classes, sorted((mapping or {}).items()), keys,
         repr(source.element_spec), cardinality)
    )
    return f"{prefix}-{hashlib.sha256(described.encode()).hexdigest()[:12]}"


def split_patient_examples(builder: tfds.core.DatasetBuilder, split: str) -> dict[str, int]:
    """How many examples each patient of a prepared split has, read without decoding images.

    Args:
        builder: a prepared kseg builder (examples carry ``patient_id``).
        split: any TFDS split expression, e.g. ``"fold2+fold3+fold4"``.

    Returns:
        ``{patient id: examples}``, ordered by patient id; what :func:`keep_patients` needs
        to give its result a known length.

    Example:
        >>> split_patient_examples(builder, "fold1+fold2")  # doctest: +SKIP
        {'CHNCXR_0003_0': 1, ...}
    """
    skip = {
        name: tfds.decode.SkipDecoding()
        for name in builder.info.features
        if name != "patient_id"
    }
    dataset = builder.as_dataset(split=split, decoders=skip, shuffle_files=False)
    ids = dataset.map(lambda example: example["patient_id"])
    counts = collections.Counter(value.decode() for value in ids.as_numpy_iterator())
    return dict(sorted(counts.items()))


def split_patient_ids(builder: tfds.core.DatasetBuilder, split: str) -> list[str]:
    """The distinct patient ids of a prepared split, read without decoding images.

    Args:
        builder: a prepared kseg builder (examples carry ``patient_id``).
        split: any TFDS split expression, e.g. ``"fold2+fold3+fold4"``.

    Example:
        >>> split_patient_ids(builder, "fold1+fold2")  # doctest: +SKIP
        ['CHNCXR_0003_0', ...]
    """
    return list(split_patient_examples(builder, split))


def keep_patients(
    dataset: tf.data.Dataset,
    patient_ids: Iterable[str],
    examples_per_patient: Mapping[str, int] | None = None,
) -> tf.data.Dataset:
    """Keep the examples whose ``patient_id`` is one of ``patient_ids``.

    A filter leaves the dataset's length unknown, and Keras then ends every epoch on
    running out of data, warning "Your input ran out of data" each time. With
    ``examples_per_patient`` the result declares its length (an error when the data
    yields another number).

    Args:
        dataset: examples with a ``patient_id`` string feature (before batching).
        patient_ids: ids to keep, e.g. :func:`kseg.data.splits.nested_patient_subset`'s result.
        examples_per_patient: ``{patient id: examples}`` of ``dataset``
            (:func:`split_patient_examples`), or ``None`` to leave the length unknown.

    Raises:
        ValueError: ``patient_ids`` is empty, or names a patient ``examples_per_patient``
            does not count.

    Example:
        >>> import numpy as np
        >>> examples = tf.data.Dataset.from_tensor_slices(
        ...     {"patient_id": ["a", "a", "b", "c"], "image": np.zeros((4, 2, 2))})
        >>> train = keep_patients(examples, ["a", "c"], {"a": 2, "b": 1, "c": 1})
        >>> len(train), [example["patient_id"].decode() for example in train.as_numpy_iterator()]
        (3, ['a', 'a', 'c'])

        On a prepared builder's split (reads every example's ``patient_id``):

        >>> counts = split_patient_examples(builder, "fold2+fold3")  # doctest: +SKIP
        >>> examples = builder.as_dataset(split="fold2+fold3")  # doctest: +SKIP
        >>> train = keep_patients(examples, chosen, counts)  # doctest: +SKIP
    """
    kept_ids = sorted({str(p) for p in patient_ids})
    if not kept_ids:
        raise ValueError("patient_ids is empty; keep_patients would yield no examples")
    wanted = tf.constant(kept_ids, dtype=tf.string)
    kept = dataset.filter(lambda example: tf.reduce_any(tf.equal(example["patient_id"], wanted)))
    if examples_per_patient is None:
        return kept
    uncounted = [p for p in kept_ids if p not in examples_per_patient]
    if uncounted:
        raise ValueError(
            f"examples_per_patient has no count for patient(s) {uncounted[:5]}; it counts "
            f"{len(examples_per_patient)} patients of another split or dataset"
        )
    total = sum(int(examples_per_patient[p]) for p in kept_ids)
    return kept.apply(tf.data.experimental.assert_cardinality(total))
