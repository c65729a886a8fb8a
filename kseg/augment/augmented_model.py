"""A model wrapper that augments each training batch on the accelerator."""

from __future__ import annotations

import keras

from kseg.augment._base import IMAGES, MASKS


def augment_batch(augmenter, x, y, sample_weight=None):
    """``(x, y, sample_weight)`` of one training batch after ``augmenter``'s draw.

    The step :class:`AugmentedModel` and :class:`kseg.training.FixMatch` (its weak labeled
    view) run on each batch: ``augmenter`` takes ``{"images": x, "segmentation_masks": y}``
    with ``training=True``. A per-voxel ``sample_weight`` (``(B, *spatial)`` or
    ``(B, *spatial, 1)``) is moved with the mask by the same draw (nearest neighbour,
    weight 0 where the transform left the grid); per-sample weights ``(B,)`` and ``None``
    pass unchanged.

    Example:
        >>> import numpy as np
        >>> import kseg
        >>> flip = kseg.augment.RandomAxisFlip(axes=(0,), probability=1.0)
        >>> x = np.arange(4, dtype="float32").reshape(1, 2, 2, 1)
        >>> images, masks, _ = augment_batch(flip, x, (x > 1).astype("float32"))
        >>> np.asarray(images)[0, :, :, 0].tolist(), np.asarray(masks)[0, :, :, 0].tolist()
        ([[2.0, 3.0], [0.0, 1.0]], [[1.0, 1.0], [0.0, 0.0]])
    """
    rank = len(x.shape)
    weight_rank = None
    if sample_weight is not None:
        weight_rank = getattr(sample_weight.shape, "rank", len(sample_weight.shape))
    # (a retrace after weights of another rank can leave the rank unknown)
    if weight_rank is None or weight_rank < rank - 1:
        augmented = augmenter({IMAGES: x, MASKS: y}, training=True)
        return augmented[IMAGES], augmented[MASKS], sample_weight
    # A per-voxel weight map ((B, *spatial) or (B, *spatial, 1), e.g. U-Net's border
    # weights) belongs to the mask's voxels: it rides along as an extra mask channel, so
    # the same draw moves it (nearest neighbour, 0 where the grid was left). It rides as
    # weight + 1, so that no mask with it looks one-hot to the layers (a label map of
    # 0s beside weights of 1 sums to 1 per voxel, and would read label 1 where the
    # grid was left); outside the grid it reads 0, hence weight -1, clipped to 0.
    weight = keras.ops.convert_to_tensor(sample_weight)
    if len(weight.shape) == rank - 1:
        weight = keras.ops.expand_dims(weight, -1)
    mask_channels = y.shape[-1]
    joint = keras.ops.concatenate(
        [keras.ops.cast(y, "float32"), keras.ops.cast(weight, "float32") + 1.0], axis=-1
    )
    augmented = augmenter({IMAGES: x, MASKS: joint}, training=True)
    moved = augmented[MASKS]
    moved_weight = keras.ops.maximum(moved[..., mask_channels:] - 1.0, 0.0)
    return (
        augmented[IMAGES],
        keras.ops.cast(moved[..., :mask_channels], y.dtype),
        keras.ops.reshape(
            keras.ops.cast(moved_weight, sample_weight.dtype), keras.ops.shape(sample_weight)
        ),
    )


@keras.saving.register_keras_serializable(package="kseg")
class AugmentedModel(keras.Model):
    """Wraps a segmentation model so ``fit`` augments ``(x, y)`` jointly inside the train step.

    The second placement of augmentation, next to ``tf.data``: the batch is transformed on
    the device that trains, inside the same (optionally XLA-compiled) step, so the input
    pipeline only decodes, windows and batches. ``train_step`` runs
    ``augmenter({"images": x, "segmentation_masks": y}, training=True)`` and then Keras'
    standard step on the result; ``evaluate``, ``predict`` and ``__call__`` run the wrapped
    model on the data as given, never augmented.

    The override is of the TensorFlow backend's ``train_step`` (the backend kseg's
    ``tf.data`` pipelines require); other backends raise at construction.

    Args:
        model: the segmentation model; ``x`` is its single input tensor and ``y`` a single
            mask tensor with the image's spatial shape.
        augmenter: a layer taking and returning ``{"images", "segmentation_masks"}``, e.g.
            ``kseg.augment.segmentation_augmenter()``. A per-voxel ``sample_weight``
            (``(B, *spatial)`` or ``(B, *spatial, 1)``) is moved with the mask by the same
            draw (nearest neighbour, weight 0 where the transform left the grid);
            per-sample weights ``(B,)`` pass unchanged.
        **kwargs: standard ``keras.Model`` arguments (``name``, ...).

    Example:
        >>> import os
        >>> import tempfile
        >>> import kseg
        >>> net = kseg.models.build("unet", input_shape=(128, 128, 1), num_classes=1)
        >>> model = AugmentedModel(net, kseg.augment.segmentation_augmenter(seed=0))
        >>> model.compile(optimizer="adam", loss="binary_crossentropy")
        >>> model.fit(train_ds, validation_data=val_ds, epochs=10)  # doctest: +SKIP
        >>> run_dir = tempfile.mkdtemp()
        >>> net.save(os.path.join(run_dir, "unet.keras"))  # the net alone serves inference
    """

    def __init__(self, model, augmenter, **kwargs):
        super().__init__(**kwargs)
        if keras.backend.backend() != "tensorflow":
            raise RuntimeError(
                "AugmentedModel overrides the TensorFlow train_step; the Keras backend is "
                f"{keras.backend.backend()!r}. Augment in tf.data instead "
                "(kseg.data.pipeline.segmentation_dataset(..., augment=augmenter))."
            )
        if isinstance(model, dict):
            model = keras.saving.deserialize_keras_object(model)
        if isinstance(augmenter, dict):
            augmenter = keras.saving.deserialize_keras_object(augmenter)
        if not isinstance(model, keras.Model):
            raise ValueError(f"model must be a keras.Model, got {model!r}")
        if not isinstance(augmenter, keras.layers.Layer):
            raise ValueError(f"augmenter must be a keras.layers.Layer, got {augmenter!r}")
        self.model = model
        self.augmenter = augmenter

    def build(self, input_shape):
        # Reloading builds from the input shape alone; the augmenter holds only seed state.
        if not self.model.built:
            self.model.build(input_shape)
        if not self.augmenter.built:
            self.augmenter.build({IMAGES: input_shape, MASKS: input_shape})
        self.built = True

    def call(self, inputs, training=None):
        return self.model(inputs, training=training)

    def train_step(self, data):
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        if not keras.ops.is_tensor(y):
            raise ValueError(
                f"{self.name}: y must be one mask tensor to augment with x, got {type(y).__name__}"
            )
        x, y, sample_weight = self.augment_batch(x, y, sample_weight)
        return super().train_step(keras.utils.pack_x_y_sample_weight(x, y, sample_weight))

    def augment_batch(self, x, y, sample_weight=None):
        """``(x, y, sample_weight)`` of one training batch after the augmenter's draw
        (:func:`augment_batch` with this model's ``augmenter``)."""
        return augment_batch(self.augmenter, x, y, sample_weight)

    def get_config(self):
        return {
            "name": self.name,
            "trainable": self.trainable,
            "model": keras.saving.serialize_keras_object(self.model),
            "augmenter": keras.saving.serialize_keras_object(self.augmenter),
        }
