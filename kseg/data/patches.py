"""Random 3D training patches from whole volumes, balanced towards the foreground.

Whole CT/MR volumes do not fit a 3D network's memory, and the organ or lesion to learn
often fills a few percent of the voxels; uniform patches would be nearly all background.
Like nnU-Net's oversampling, a fixed fraction of patches is centred on a random foreground
voxel and the rest are drawn uniformly. Graph-only TensorFlow (stateless random ops keyed by
``tf.data.Dataset.random``), so it runs in parallel inside ``tf.data`` and repeats for a
fixed seed while still drawing new patches every epoch.
"""

from __future__ import annotations

import numbers

import tensorflow as tf


def _check_patch_size(patch_size) -> tuple[int, int, int]:
    try:
        sizes = tuple(int(v) for v in patch_size)
        # a size computed with numpy (np.int64, or a whole np.float64) is a size; 72.75 is
        # not one, and int() would cut it to 72 without a word
        whole = all(isinstance(v, numbers.Integral) or float(v) == int(v) for v in patch_size)
    except (TypeError, ValueError, OverflowError):
        raise ValueError(f"patch_size must be (depth, height, width), got {patch_size!r}") from None
    if not whole:
        raise ValueError(f"patch_size must be three whole numbers of voxels, got {patch_size!r}")
    if len(sizes) != 3 or min(sizes) < 1:
        raise ValueError(f"patch_size must be three positive sizes, got {patch_size!r}")
    return sizes


def _as_volume(tensor, name: str):
    """``(Z, Y, X)`` or ``(Z, Y, X, 1)`` as ``(Z, Y, X, 1)``."""
    rank = tensor.shape.rank
    if rank == 3:
        return tensor[..., tf.newaxis]
    if rank == 4:
        return tensor
    raise ValueError(f"{name} must be a (Z, Y, X) or (Z, Y, X, C) volume, got shape {tensor.shape}")


def random_patches(
    ds: tf.data.Dataset,
    patch_size=(64, 64, 64),
    *,
    positive_fraction: float = 0.5,
    patches_per_volume: int = 4,
    seed: int | None = None,
    image_key: str = "image",
    label_key: str = "label",
) -> tf.data.Dataset:
    """Sample random 3D patches from ``(image, label)`` volumes.

    For each volume, ``patches_per_volume`` patches are cut. Each is, with probability
    ``positive_fraction``, centred on a foreground voxel (label > 0) chosen uniformly, or
    otherwise placed uniformly over all positions where it fits; a foreground-centred patch
    near the border is shifted inwards to fit. A volume with no foreground gives only uniform
    patches. Volumes smaller than the patch along an axis are padded evenly on both sides:
    each image channel with its own minimum (air for CT), the label with 0.

    Patches of one volume come out consecutively: shuffle with a buffer of several volumes'
    patches before batching.

    Args:
        ds: dataset of dicts (the 3D TFDS builders' examples; other keys are dropped) or of
            ``(image, label)`` tuples; volumes ``(Z, Y, X)`` or ``(Z, Y, X, C)``.
        patch_size: ``(depth, height, width)`` in voxels.
        positive_fraction: chance that a patch is centred on foreground, in [0, 1].
        patches_per_volume: patches cut from each volume per pass over ``ds``.
        seed: int for repeatable draws (new patches every epoch, the same sequence every
            run), or ``None``.
        image_key: key of the image in dict examples.
        label_key: key of the label in dict examples.

    Returns:
        ``tf.data.Dataset`` of unbatched ``(image (d, h, w, C) float32,
        label (d, h, w, 1) int32)``.

    Example:
        >>> import numpy as np
        >>> import tensorflow as tf
        >>> label = np.zeros((40, 40, 40), np.uint8)
        >>> label[10:14, 20:24, 5:9] = 1
        >>> image = np.random.default_rng(0).normal(size=label.shape).astype(np.float32)
        >>> volumes = tf.data.Dataset.from_tensors({"image": image, "label": label})
        >>> patches = random_patches(volumes, (16, 16, 16), positive_fraction=1.0,
        ...                          patches_per_volume=4, seed=0)
        >>> [int(patch_label.numpy().max()) for _, patch_label in patches]  # all on foreground
        [1, 1, 1, 1]
        >>> train = patches.shuffle(64, seed=0).batch(2)
        >>> [tuple(tensor.shape) for tensor in next(iter(train))]
        [(2, 16, 16, 16, 1), (2, 16, 16, 16, 1)]

        On MSD spleen: ``random_patches(tfds.load("msd_spleen", split="train"), (96, 96, 96),
        positive_fraction=0.33, patches_per_volume=4, seed=0)``.

    Reference:
        Isensee F. et al., "nnU-Net: a self-configuring method for deep learning-based
        biomedical image segmentation", Nature Methods 18, 203-211 (2021) (foreground
        oversampling: a third of the patches forced onto foreground).
    """
    patch = _check_patch_size(patch_size)
    if isinstance(positive_fraction, bool) or not 0.0 <= float(positive_fraction) <= 1.0:
        raise ValueError(f"positive_fraction must be in [0, 1], got {positive_fraction!r}")
    positive_fraction = float(positive_fraction)
    if (
        isinstance(patches_per_volume, bool)
        or not isinstance(patches_per_volume, numbers.Integral)  # np.int64 of a numpy count
        or patches_per_volume < 1
    ):
        raise ValueError(f"patches_per_volume must be an integer >= 1, got {patches_per_volume!r}")
    patches_per_volume = int(patches_per_volume)
    patch_shape = tf.constant(patch, tf.int32)

    def select(element):
        if isinstance(element, dict):
            missing = [key for key in (image_key, label_key) if key not in element]
            if missing:
                raise ValueError(
                    f"examples have no {missing} key(s); they hold {sorted(element)}. "
                    "Set image_key / label_key."
                )
            return element[image_key], element[label_key]
        return element

    def sample(element, random_key):
        image, label = select(element)
        image = tf.cast(_as_volume(image, image_key), tf.float32)
        label = _as_volume(label, label_key)
        if label.dtype.is_floating:  # nibabel's get_fdata: 0.99999994 is label 1, not 0
            label = tf.round(label)
        label = tf.cast(label, tf.int32)
        if label.shape[-1] not in (1, None):
            raise ValueError(
                f"'{label_key}' must be one label map, (Z, Y, X) or (Z, Y, X, 1); "
                f"got shape {label.shape}"
            )
        check = tf.debugging.assert_equal(
            tf.shape(image)[:3],
            tf.shape(label)[:3],
            message=f"'{image_key}' and '{label_key}' must share their (Z, Y, X) shape",
        )
        with tf.control_dependencies([check]):
            shortfall = tf.maximum(patch_shape - tf.shape(label)[:3], 0)
        before = shortfall // 2
        paddings = tf.concat(
            [tf.stack([before, shortfall - before], axis=1), tf.zeros((1, 2), tf.int32)], axis=0
        )
        # Each channel is padded with its own minimum: channels of other units (CT in HU
        # beside PET, MR sequences) must not take one another's background value.
        inside = tf.pad(tf.ones_like(image[..., :1], tf.bool), paddings, constant_values=False)
        image = tf.where(inside, tf.pad(image, paddings), tf.reduce_min(image, axis=(0, 1, 2)))
        label = tf.pad(label, paddings)
        volume_shape = tf.shape(label)[:3]

        foreground = tf.cast(tf.where(tf.reduce_any(label > 0, axis=-1)), tf.int32)
        foreground_count = tf.shape(foreground)[0]
        stateless_seed = tf.stack([random_key, tf.constant(0, tf.int64)])
        draws = tf.random.stateless_uniform((patches_per_volume, 5), seed=stateless_seed)

        positive = tf.logical_and(draws[:, 0] < positive_fraction, foreground_count > 0)
        # With no foreground, index 0 of the zero row appended below keeps the gather valid;
        # those draws are not positive, so the row is never used.
        choice = tf.cast(draws[:, 1] * tf.cast(foreground_count, tf.float32), tf.int32)
        choice = tf.minimum(choice, tf.maximum(foreground_count - 1, 0))
        centres = tf.gather(tf.concat([foreground, tf.zeros((1, 3), tf.int32)], 0), choice)
        highest_start = volume_shape - patch_shape
        centred_starts = tf.clip_by_value(centres - patch_shape // 2, 0, highest_start)
        uniform_starts = tf.cast(
            tf.floor(draws[:, 2:] * tf.cast(highest_start + 1, tf.float32)), tf.int32
        )
        uniform_starts = tf.minimum(uniform_starts, highest_start)
        starts = tf.where(positive[:, tf.newaxis], centred_starts, uniform_starts)

        channels = tf.shape(image)[-1]
        image_patches, label_patches = [], []
        for index in range(patches_per_volume):
            start = tf.concat([starts[index], [0]], axis=0)
            image_patches.append(tf.slice(image, start, tf.concat([patch_shape, [channels]], 0)))
            label_patches.append(tf.slice(label, start, tf.concat([patch_shape, [1]], 0)))
        image_patches = tf.ensure_shape(
            tf.stack(image_patches), (patches_per_volume, *patch, image.shape[-1])
        )
        label_patches = tf.ensure_shape(tf.stack(label_patches), (patches_per_volume, *patch, 1))
        return image_patches, label_patches

    keys = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True)
    paired = tf.data.Dataset.zip((ds, keys))
    patches = paired.map(sample, num_parallel_calls=tf.data.AUTOTUNE)
    return patches.unbatch()
