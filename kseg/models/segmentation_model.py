"""The functional model every kseg builder returns: it checks what it is called on."""

from __future__ import annotations

import keras

_AXIS_NAMES = {2: ("height", "width"), 3: ("depth", "height", "width")}


@keras.saving.register_keras_serializable(package="kseg")
class SegmentationModel(keras.Model):
    """A functional ``keras.Model`` that checks the shape of its input before running.

    A plain functional model given one image without its batch axis does not say so: a
    one-channel 2D model reads ``(256, 256, 1)`` as a batch of 256 images of size 256x1 (Keras
    adds the "missing" channel axis) and fails deep inside with a pooling or ``ConcatOp``
    error; an image whose spatial size does not halve cleanly ``depth`` times fails the same
    way when the skip connections meet. This class checks, on every call (eager, symbolic,
    ``predict``, ``fit``), that the input has rank ``spatial_dims + 2``, the model's channel
    count, and known spatial sizes divisible by ``size_divisor``, and raises a
    ``ValueError`` that names the model, the expected axes and the shape received. Keras'
    one convenience is kept: a one-channel model may be given ``(batch, *spatial)`` and gets
    the channel axis added, unless the last axis has size 1 (then the input is read as one
    image without its batch axis and refused).

    Sizes unknown when a step is traced (``None``) are checked when the step runs, by a
    TensorFlow assertion (an ``InvalidArgumentError`` with the same explanation); other
    backends and XLA-compiled steps skip that run-time check, and a mismatch there fails
    when the tensors meet. ``keras.models.clone_model`` keeps the class but not
    ``size_divisor`` (Keras rebuilds clones from inputs and outputs only), so a clone checks
    rank and channels only.

    Args:
        inputs, outputs: as for a functional ``keras.Model``; one input tensor
            ``(batch, *spatial, channels)``.
        size_divisor: every known spatial size of the input must be a multiple of this
            (``2**depth`` for the U-Net family, 1 for models that do not down-sample).
        **kwargs: other ``keras.Model`` arguments (``name``, ...).

    Example:
        >>> import numpy as np
        >>> import kseg
        >>> model = kseg.models.build("unet", input_shape=(None, None, 1))
        >>> model(np.zeros((256, 256, 1)))  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ValueError: unet expects input of rank 4 (batch, height, width, channels); got ...
    """

    def __init__(self, *args, size_divisor=1, **kwargs):
        super().__init__(*args, **kwargs)
        if isinstance(size_divisor, bool) or not isinstance(size_divisor, int):
            raise ValueError(f"size_divisor must be an integer >= 1, got {size_divisor!r}")
        if size_divisor < 1:
            raise ValueError(f"size_divisor must be an integer >= 1, got {size_divisor!r}")
        self.size_divisor = size_divisor

    def __call__(self, *args, **kwargs):
        if args and hasattr(args[0], "shape") and len(self.inputs) == 1:
            self._check_input_shape(tuple(args[0].shape))
            args = (self._check_sizes_when_run(args[0]), *args[1:])
        return super().__call__(*args, **kwargs)

    def fit(self, *args, **kwargs):
        """``keras.Model.fit``, the optimizer built first: the training step is traced once,
        not twice (:func:`kseg.training.build_optimizer`).

        ``class_weight={class: weight}`` weights every voxel by the weight of its class in
        ``y`` (what Keras does for a ``tf.data`` dataset of one-hot or ``(..., 1)`` masks),
        for numpy masks too, and for masks without a channel axis, ``(batch, *spatial)``,
        whose classes are their values (Keras' own conversion crashes on numpy masks and
        reads the last spatial axis of such a mask as one-hot classes). Classes it does not
        name weigh 1. A loss with one value per sample (Dice) cannot take voxel weights
        and says so."""
        # imported here: kseg.training loads the training stack, which inference never needs
        from kseg.training.optimizer import build_optimizer

        build_optimizer(self)
        if kwargs.get("class_weight") is not None and len(self.outputs) == 1:
            args, kwargs = self._voxel_class_weights(list(args), dict(kwargs))
        return super().fit(*args, **kwargs)

    def _voxel_class_weights(self, args: list, kwargs: dict):
        """``fit``'s arguments with ``class_weight`` turned into a per-voxel
        ``sample_weight`` (arrays) or mapped into the dataset (``tf.data``); other inputs
        (generators, ``PyDataset``) are left to Keras."""
        import math

        import numpy as np

        class_weight = kwargs["class_weight"]
        if not isinstance(class_weight, dict) or not class_weight:
            raise ValueError(
                "class_weight must be a non-empty dict {class index: weight}, got "
                f"{class_weight!r}"
            )
        table = {}
        for key, weight in class_weight.items():
            if isinstance(key, bool) or not isinstance(key, int | np.integer) or key < 0:
                raise ValueError(
                    f"class_weight: keys must be class indices (integers >= 0), got {key!r}"
                )
            if isinstance(weight, bool) or not np.isfinite(weight) or weight < 0:
                raise ValueError(
                    f"class_weight[{key}] must be a finite number >= 0, got {weight!r}"
                )
            table[int(key)] = float(weight)
        lookup = np.ones(max(table) + 2, np.float32)  # the last entry: classes not named
        for key, weight in table.items():
            lookup[key] = weight
        output_rank = len(self.outputs[0].shape)
        x = args[0] if args else kwargs.get("x")
        y = args[1] if len(args) > 1 else kwargs.get("y")

        def classes_of(mask, xp):
            """The class index of every voxel of a mask, ``(batch, *spatial)``."""
            if len(mask.shape) == output_rank - 1:  # (batch, *spatial): values are classes
                return xp.round(mask)
            if mask.shape[-1] == 1:
                return xp.round(mask[..., 0])
            return xp.argmax(mask, -1)

        import tensorflow as tf

        if isinstance(x, tf.data.Dataset) and y is None:

            def add_weights(*element):
                if len(element) != 2 or isinstance(element[1], tuple | list | dict):
                    raise ValueError(
                        "class_weight needs a dataset of (image, mask) pairs with one mask; "
                        "give (image, mask, sample_weight) without class_weight instead"
                    )
                image, mask = element
                if mask.shape.rank not in (output_rank - 1, output_rank):
                    raise ValueError(
                        f"class_weight: masks of shape {tuple(mask.shape)} do not fit the "
                        f"model's output {tuple(self.outputs[0].shape)}"
                    )
                classes = tf.cast(classes_of(tf.cast(mask, tf.float32), tf.math), tf.int32)
                classes = tf.clip_by_value(classes, 0, len(lookup) - 1)
                return image, mask, tf.gather(tf.constant(lookup), classes)

            if args:
                args[0] = x.map(add_weights)
            else:
                kwargs["x"] = x.map(add_weights)
        elif y is not None and hasattr(y, "shape") and len(y.shape) >= output_rank - 1:
            if kwargs.get("sample_weight") is not None:
                raise ValueError("fit: give class_weight or sample_weight, not both")
            classes = classes_of(np.asarray(y, np.float32), np).astype(np.int64)
            weights = lookup[np.clip(classes, 0, len(lookup) - 1)]
            split = kwargs.get("validation_split") or 0.0
            if split and kwargs.get("validation_data") is None:
                # Keras weights the training part only: validation_split keeps the samples
                # from floor(n * (1 - split)) on; a weight of 1 leaves their loss unweighted
                weights[int(math.floor(len(weights) * (1.0 - split))) :] = 1.0
            kwargs["sample_weight"] = weights
        else:
            return args, kwargs
        kwargs["class_weight"] = None
        return args, kwargs

    def _check_sizes_when_run(self, inputs):
        """In a traced TensorFlow step, check at run time the sizes and the channel count
        unknown at trace time.

        ``model.predict`` retraces with ``None`` sizes once it has seen two shapes, so a
        trace-time check alone would miss a later odd-sized batch. The assertion runs before
        the network (a control dependency), so its message, not a ``ConcatOp`` error, is
        what the user sees. XLA-compiled steps drop assertions.
        """
        unknown = [axis for axis in range(1, len(inputs.shape) - 1) if inputs.shape[axis] is None]
        if self.size_divisor == 1:
            unknown = []
        channels = self.inputs[0].shape[-1]
        # Keras retraces a step for a batch with a new channel count with the channel axis
        # unknown too, so a wrong count would otherwise fail inside the first convolution.
        # (A one-channel model's (batch, *spatial) input, one axis short, gets its channel
        # axis from Keras and is not checked here.)
        check_channels = (
            channels is not None
            and len(inputs.shape) == len(self.inputs[0].shape)
            and inputs.shape[-1] is None
        )
        if not (unknown or check_channels) or keras.config.backend() != "tensorflow":
            return inputs
        import tensorflow as tf

        symbolic = isinstance(inputs, keras.KerasTensor)
        if tf.executing_eagerly() or symbolic or not tf.is_tensor(inputs):
            return inputs
        names = ("batch", *_AXIS_NAMES.get(len(inputs.shape) - 2, ()), "channels")
        shape = tf.shape(inputs)
        checks = []
        if check_channels:
            checks.append(
                tf.debugging.Assert(
                    tf.equal(shape[-1], channels),
                    [
                        f"{self.name} expects {channels} channel(s) on the last axis "
                        f"({', '.join(names)}); the input has another count. Input shape:",
                        shape,
                    ],
                )
            )
        checks += [
            tf.debugging.Assert(
                tf.equal(tf.math.floormod(shape[axis], self.size_divisor), 0),
                [
                    f"{self.name} needs spatial sizes divisible by {self.size_divisor}, so "
                    "that its down-sampling steps and skip connections line up; axis "
                    f"{axis} ({names[axis]}) of the input is not. Pad or crop it, or build "
                    "the model with a lower depth. Input shape:",
                    shape,
                ],
            )
            for axis in unknown
        ]
        with tf.control_dependencies(checks):
            return tf.identity(inputs)

    def _check_input_shape(self, shape: tuple) -> None:
        expected = tuple(self.inputs[0].shape)
        rank, spatial_dims = len(expected), len(expected) - 2
        axes = ("batch", *_AXIS_NAMES.get(spatial_dims, ()), "channels")
        channels = expected[-1]
        if len(shape) == rank - 1 and channels == 1 and shape[-1] not in (1, None):
            # Keras adds the missing channel axis of a one-channel model's (batch, *spatial)
            # input; that reading is unambiguous when the last axis is not of size 1.
            shape = (*shape, 1)
        if len(shape) != rank:
            hint = "give a batch of shape (" + ", ".join(axes) + ")"
            if len(shape) == rank - 1 and shape[-1] == channels:
                hint = (
                    "add the batch axis, e.g. image[None] for one image (model.predict and "
                    "fit split the first axis of an array into batches, so it needs one too)"
                )
            elif len(shape) == rank - 1:
                hint = "add the channel axis, e.g. x[..., None]"
            raise ValueError(
                f"{self.name} expects input of rank {rank} ({', '.join(axes)}); got shape "
                f"{shape}: {hint}"
            )
        if channels is not None and shape[-1] is not None and shape[-1] != channels:
            raise ValueError(
                f"{self.name} expects {channels} channel(s) on the last axis "
                f"({', '.join(axes)}); got shape {shape}"
            )
        for axis in range(1, rank - 1):
            size, wanted = shape[axis], expected[axis]
            if size is None:
                continue
            if wanted is not None and size != wanted:
                raise ValueError(
                    f"{self.name} was built for input {expected}; got shape {shape}: axis "
                    f"{axis} ({axes[axis]}) has size {size}, expected {wanted}"
                )
            if size % self.size_divisor:
                padded = -(-size // self.size_divisor) * self.size_divisor
                raise ValueError(
                    f"{self.name} needs spatial sizes divisible by {self.size_divisor}, so "
                    "that its down-sampling steps and skip connections line up; got shape "
                    f"{shape}: axis {axis} ({axes[axis]}) has size {size}. Pad or crop it "
                    f"(e.g. to {padded}), or build the model with a lower depth"
                )

    def get_config(self):
        config = super().get_config()
        config["size_divisor"] = self.size_divisor
        return config
