"""Semi-supervised consistency training for segmentation on labeled + unlabeled batches.

``FixMatch`` (Sohn et al. 2020, for segmentation) predicts per-voxel pseudo-labels on a
weakly augmented unlabeled image, keeps the voxels whose confidence reaches a threshold, and
trains the model to predict them on a strongly augmented view (cross-entropy averaged over
the confident voxels).

``MeanTeacher`` (Tarvainen & Valpola 2017) trains a student ``keras.Model`` on the
supervised loss of the labeled batch plus a consistency loss: the mean squared difference
between the student's and an EMA teacher's class probabilities, on labeled and unlabeled
images under independent input noise, weighted by a sigmoid ramp-up. The teacher keeps
its own BatchNorm statistics, from its own activations.

Both models take one dataset of ``(labeled_batch, unlabeled_batch)`` pairs, e.g.
``tf.data.Dataset.zip((labeled, unlabeled))`` where ``labeled`` yields ``(x, y)`` batches and
``unlabeled`` yields ``x_u`` batches (or ``(x_u,)``) of the same spatial size. ``evaluate`` and
``predict`` take ordinary ``(x, y)`` / ``x`` data and run the *student*.

The wrapped network must output **logits** (kseg builders: ``activation=None``): every loss
here is computed from logits in float32 with log-sum-exp forms (``log_softmax``,
``log_sigmoid``), never the log of a probability, so ``mixed_float16``, logits of ±1e4,
empty masks and batches without a confident voxel give finite losses. Compile with a loss
that takes logits, e.g. ``kseg.losses.DiceCELoss(from_logits=True)``.

Like ``kseg.augment.AugmentedModel``, these models override the TensorFlow backend's
``train_step`` (the backend kseg's ``tf.data`` pipelines need); other backends raise at
construction. The loss functions (``sigmoid_rampup``, ``consistency_loss``, ``pseudo_labels``,
``masked_cross_entropy``, ``fixmatch_loss``) are plain ``keras.ops`` and run on any backend.
"""

from __future__ import annotations

import math

import keras
from keras import ops

from kseg.augment._base import IMAGES, MASKS
from kseg.augment.augmented_model import augment_batch
from kseg.training.optimizer import build_optimizer

__all__ = [
    "FixMatch",
    "MeanTeacher",
    "consistency_loss",
    "fixmatch_loss",
    "masked_cross_entropy",
    "pseudo_labels",
    "sigmoid_rampup",
]


def _check_number(name, value, low, high, low_open=False, high_open=False):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    below = value <= low if low_open else value < low
    above = value >= high if high_open else value > high
    if below or above:
        left, right = "(" if low_open else "[", ")" if high_open else "]"
        raise ValueError(f"{name} must be in {left}{low}, {high}{right}, got {value!r}")


def sigmoid_rampup(step, rampup_steps):
    """The mean-teacher ramp-up ``exp(-5 (1 - T)^2)``, ``T = clip(step / rampup_steps, 0, 1)``.

    Tarvainen & Valpola (2017), appendix: the consistency weight rises from ``exp(-5) ≈
    0.0067`` at step 0 to 1 at ``rampup_steps`` and stays there. ``rampup_steps=0`` means no
    ramp-up (1 from the start).

    Args:
        step: the training step (a number or a scalar tensor).
        rampup_steps: int >= 0, the length of the ramp-up in steps.

    Returns:
        A float32 scalar tensor.
    """
    if isinstance(rampup_steps, bool) or not isinstance(rampup_steps, int) or rampup_steps < 0:
        raise ValueError(f"rampup_steps must be an int >= 0, got {rampup_steps!r}")
    if rampup_steps == 0:
        return ops.ones((), "float32")
    phase = 1.0 - ops.clip(ops.cast(step, "float32") / float(rampup_steps), 0.0, 1.0)
    return ops.exp(-5.0 * phase * phase)


def _probabilities32(logits):
    logits = ops.cast(logits, "float32")
    if logits.shape[-1] == 1:
        return ops.sigmoid(logits)
    return ops.softmax(logits, axis=-1)


def consistency_loss(student_logits, teacher_logits):
    """Mean squared difference of class probabilities, the mean-teacher consistency cost.

    Probabilities are sigmoid (one channel) or softmax (several) of the logits, in float32;
    the squared differences are averaged over batch, voxels and channels, so the value lies
    in ``[0, 1]`` and is 0 exactly when the two models agree. No gradient is stopped here:
    the caller stops the teacher's.

    Args:
        student_logits: ``(B, *spatial, C)`` logits.
        teacher_logits: logits of the same shape.

    Returns:
        A float32 scalar tensor.
    """
    if tuple(student_logits.shape) != tuple(teacher_logits.shape):
        raise ValueError(
            f"student_logits and teacher_logits must have the same shape, got "
            f"{tuple(student_logits.shape)} and {tuple(teacher_logits.shape)}"
        )
    difference = _probabilities32(student_logits) - _probabilities32(teacher_logits)
    return ops.mean(ops.square(difference))


def _split_batch(name, data):
    """``((x, y, sample_weight), x_unlabeled)`` from one ``(labeled, unlabeled)`` element."""
    if not isinstance(data, (tuple, list)) or len(data) != 2:
        raise ValueError(
            f"{name}.fit takes (labeled_batch, unlabeled_batch) pairs, e.g. "
            "tf.data.Dataset.zip((labeled, unlabeled)); got "
            f"{type(data).__name__} of length {len(data) if hasattr(data, '__len__') else '?'}"
        )
    labeled, unlabeled = data
    if not isinstance(labeled, (tuple, list)) or len(labeled) not in (2, 3):
        raise ValueError(
            f"{name}: the labeled batch must be (x, y) or (x, y, sample_weight), got "
            f"{type(labeled).__name__}"
        )
    x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(tuple(labeled))
    if isinstance(unlabeled, (tuple, list)):
        if len(unlabeled) != 1:
            raise ValueError(
                f"{name}: the unlabeled batch must be x_u or (x_u,), got a tuple of "
                f"{len(unlabeled)}"
            )
        unlabeled = unlabeled[0]
    return (x, y, sample_weight), unlabeled


class _ConsistencyModel(keras.Model):
    """What mean teacher and FixMatch share: the student, the data split, the trackers.

    The labeled and the unlabeled images go through the network as two batches, never one
    concatenated batch, so BatchNorm normalises the labeled images with their own batch
    statistics exactly as supervised-only training does, and with the unlabeled loss
    weighted 0 the student's weights follow supervised training step for step (tested).
    In one batch, a few labeled images were normalised with the statistics of many
    unlabeled ones: on the X-ray phantom with 1 labelled image (batch of 1 + 4) the
    student trained that way with the consistency weight at 0 scored 0.33 validation
    Dice, where supervised-only training from the same seed scored 0.94.
    """

    def __init__(self, student, tracked, **kwargs):
        super().__init__(**kwargs)
        if keras.backend.backend() != "tensorflow":
            raise RuntimeError(
                f"{type(self).__name__} overrides the TensorFlow train_step; the Keras backend "
                f"is {keras.backend.backend()!r}."
            )
        if isinstance(student, dict):
            student = keras.saving.deserialize_keras_object(student)
        if not isinstance(student, keras.Model):
            raise ValueError(f"student must be a keras.Model, got {student!r}")
        self.student = student
        self.trackers = {name: keras.metrics.Mean(name=name) for name in tracked}

    def build(self, input_shape):
        if not self.student.built:
            self.student.build(input_shape)
        self.built = True

    def call(self, inputs, training=None):
        return self.student(inputs, training=training)

    def fit(self, *args, **kwargs):
        build_optimizer(self)  # the student's optimizer state now: one trace of the step
        return super().fit(*args, **kwargs)

    def _build_from_student(self):
        # A functional student knows its input shape: build now, so a saved wrapper holds
        # its weights and optimizer state and reloads them (Keras skips both when unbuilt).
        inputs = getattr(self.student, "inputs", None)
        if self.student.built and inputs:
            self.build(tuple(inputs[0].shape))

    def test_step(self, data):
        # evaluate scores the student on (x, y); the training-only trackers are left out.
        results = super().test_step(data)
        return {name: value for name, value in results.items() if name not in self.trackers}

    def _supervised(self, x, y, sample_weight, logits):
        return self._compute_loss(
            x=x,
            y=y,
            y_pred=ops.cast(logits, "float32"),
            sample_weight=sample_weight,
            training=True,
        )

    def _apply(self, tape, loss):
        variables = self.student.trainable_variables
        gradients = tape.gradient(loss, variables)
        self.optimizer.apply_gradients(zip(gradients, variables, strict=True))

    def _results(self, x, y, logits, sample_weight, values):
        for name, value in values.items():
            self.trackers[name].update_state(value)
        results = self.compute_metrics(
            x, y, ops.cast(logits, "float32"), sample_weight=sample_weight
        )
        results.update({name: self.trackers[name].result() for name in values})
        return results


@keras.saving.register_keras_serializable(package="kseg")
class MeanTeacher(_ConsistencyModel):
    """Mean-teacher training of a segmentation model on labeled + unlabeled batches.

    Each step the student sees the labeled and unlabeled images with one draw of ``noise``,
    the teacher (training mode, no gradient) sees them with another; the student minimises

        ``L = L_sup(y, student(x_l)) + w(t) · MSE(p_student, p_teacher)``

    with ``L_sup`` the compiled loss on the labeled part, the MSE from
    ``consistency_loss`` over labeled and unlabeled voxels, and ``w(t) =
    consistency_weight · sigmoid_rampup(t, rampup_steps)``. After the optimizer step the
    teacher's trainable weights become an exponential moving average of the student's,
    ``θ' ← α θ' + (1 - α) θ`` with ``α = min(1 - 1 / (t + 1), ema_decay)`` (``t`` the
    number of steps taken; the paper's warm start, so the early teacher is not stuck at the
    random initialisation). The paper uses ``ema_decay`` 0.99 during ramp-up and 0.999
    after it; 0.99 is the default here because segmentation runs are short.

    BatchNorm: the teacher runs in training mode, as in the authors' code
    (``ema_model.train()``): it normalises with the statistics of its own activations on
    the batch, like the student, and its moving mean and variance follow those
    activations, so it is scored (inference mode) with statistics of its own weights.
    Only the trainable weights are averaged; the teacher's other state is its own.
    Copying the student's moving statistics instead normalises the averaged weights'
    activations with another network's statistics: on the X-ray phantom (3 labelled
    images, 135 steps) that teacher scored 0.70 validation Dice where the same weights with
    their own statistics scored 0.91, and its targets pulled the student down with it.
    In training mode the teacher also applies the student's dropout, if any (the
    authors' teacher does).

    ``evaluate``, ``predict`` and ``__call__`` run the student. Save the student alone for
    inference (``model.student.save("student.keras")``, reloaded by ``kseg.load_model``);
    ``model.teacher`` is an ordinary model too (evaluate it with ``model.teacher(x)``).

    Args:
        student: the segmentation model, outputting logits ``(B, *spatial, C)``.
        consistency_weight: the weight ``w`` reached after ramp-up, >= 0 (default 1.0).
        rampup_steps: steps of the sigmoid ramp-up, int >= 0 (default 1000).
        ema_decay: the teacher's EMA decay ``α`` in ``[0, 1)`` (default 0.99).
        noise: a layer applied to the images, independently for student and teacher, with
            ``training=True``; default ``keras.layers.GaussianNoise(0.05)``. It must not
            move voxels (the two predictions are compared voxel by voxel). ``None`` for no
            noise, which ``kseg study consistency`` uses unless given ``--teacher-noise``
            (on the X-ray phantom, 1 labelled image, 0.05 cost 0.010 validation Dice).
        **kwargs: standard ``keras.Model`` arguments.

    Example:
        >>> import os
        >>> import tempfile
        >>> import kseg
        >>> net = kseg.models.build("unet_small", input_shape=(64, 64, 1), num_classes=1,
        ...                         activation=None)
        >>> model = MeanTeacher(net, rampup_steps=500)
        >>> model.compile("adam", loss=kseg.losses.DiceCELoss(from_logits=True))
        >>> model.fit(tf.data.Dataset.zip((labeled, unlabeled)))  # doctest: +SKIP
        >>> run_dir = tempfile.mkdtemp()
        >>> net.save(os.path.join(run_dir, "student.keras"))

    Reference:
        Tarvainen A., Valpola H., "Mean teachers are better role models: Weight-averaged
        consistency targets improve semi-supervised deep learning results", NeurIPS 2017.
    """

    def __init__(
        self,
        student,
        consistency_weight=1.0,
        rampup_steps=1000,
        ema_decay=0.99,
        noise="default",
        **kwargs,
    ):
        super().__init__(
            student, ("supervised_loss", "consistency_loss", "consistency_weight"), **kwargs
        )
        _check_number("consistency_weight", consistency_weight, 0.0, math.inf, high_open=True)
        sigmoid_rampup(0, rampup_steps)  # validates rampup_steps
        _check_number("ema_decay", ema_decay, 0.0, 1.0, high_open=True)
        if isinstance(noise, str) and noise == "default":
            noise = keras.layers.GaussianNoise(0.05)
        elif isinstance(noise, dict):
            noise = keras.saving.deserialize_keras_object(noise)
        if noise is not None and not isinstance(noise, keras.layers.Layer):
            raise ValueError(f"noise must be a keras.layers.Layer or None, got {noise!r}")
        self.consistency_weight = float(consistency_weight)
        self.rampup_steps = rampup_steps
        self.ema_decay = float(ema_decay)
        self.noise = noise
        self.teacher = keras.models.clone_model(self.student)
        # The teacher's layers stay trainable so that its BatchNorm runs in training mode
        # (Keras runs a non-trainable BatchNorm in inference mode); its variables are
        # flagged non-trainable so that the wrapper's trainable_weights, the optimizer's
        # variables, are the student's alone. The EMA, not the optimizer, moves them.
        for variable in self.teacher.weights:
            variable.trainable = False
        if self.student.built:
            self._copy_to_teacher()
        self._build_from_student()

    def build(self, input_shape):
        super().build(input_shape)
        if not self.teacher.built:
            self.teacher.build(input_shape)
            self._copy_to_teacher()

    def _copy_to_teacher(self):
        for teacher, student in zip(self.teacher.weights, self.student.weights, strict=True):
            teacher.assign(student)

    def _perturb(self, images):
        if self.noise is None:
            return images
        return self.noise(images, training=True)

    def ema_update(self, step):
        """``teacher ← α teacher + (1 - α) student`` for the student's trainable weights,
        ``α = min(1 - 1/(step + 1), ema_decay)``; the teacher's BatchNorm statistics (the
        non-trainable weights) are its own and left as they are."""
        step = ops.cast(step, "float32")
        alpha = ops.minimum(1.0 - 1.0 / (step + 1.0), self.ema_decay)
        for teacher, student in zip(self.teacher.weights, self.student.weights, strict=True):
            if student.trainable:
                a = ops.cast(alpha, teacher.dtype)
                teacher.assign(a * teacher + (1.0 - a) * ops.cast(student, teacher.dtype))

    def train_step(self, data):
        import tensorflow as tf

        (x, y, sample_weight), x_unlabeled = _split_batch(self.name, data)
        x_unlabeled = ops.cast(x_unlabeled, x.dtype)
        # Outside the tape: no gradient reaches the teacher. Training mode updates its own
        # BatchNorm statistics (see the class docstring). Labeled and unlabeled images go
        # through each network as separate batches (see _separate_batches).
        teacher_logits = ops.stop_gradient(
            ops.concatenate(
                [
                    self.teacher(self._perturb(x), training=True),
                    self.teacher(self._perturb(x_unlabeled), training=True),
                ],
                axis=0,
            )
        )
        step = self.optimizer.iterations
        weight = self.consistency_weight * sigmoid_rampup(step, self.rampup_steps)
        with tf.GradientTape() as tape:
            labeled_logits = self.student(self._perturb(x), training=True)
            unlabeled_logits = self.student(self._perturb(x_unlabeled), training=True)
            supervised = self._supervised(x, y, sample_weight, labeled_logits)
            logits = ops.concatenate([labeled_logits, unlabeled_logits], axis=0)
            consistency = consistency_loss(logits, teacher_logits)
            loss = ops.cast(supervised, "float32") + weight * consistency
            scaled = self.optimizer.scale_loss(loss)
        self._apply(tape, scaled)
        self.ema_update(self.optimizer.iterations)
        self._loss_tracker.update_state(loss)
        return self._results(
            x,
            y,
            labeled_logits,
            sample_weight,
            {
                "supervised_loss": supervised,
                "consistency_loss": consistency,
                "consistency_weight": weight,
            },
        )

    def get_config(self):
        return {
            "name": self.name,
            "trainable": self.trainable,
            "student": keras.saving.serialize_keras_object(self.student),
            "consistency_weight": self.consistency_weight,
            "rampup_steps": self.rampup_steps,
            "ema_decay": self.ema_decay,
            "noise": None
            if self.noise is None
            else keras.saving.serialize_keras_object(self.noise),
        }


def _check_threshold(threshold):
    _check_number("threshold", threshold, 0.0, 1.0)
    return float(threshold)


def pseudo_labels(weak_logits, threshold=0.95):
    """Per-voxel pseudo-labels and the mask of voxels confident enough to train on.

    One channel: label ``logit > 0``, confidence ``max(p, 1 - p) = sigmoid(|logit|)``.
    Several channels: label ``argmax``, confidence the largest softmax probability
    (``exp(max log_softmax)``). A voxel is confident when its confidence is ``>=
    threshold`` (FixMatch's ``1(max q >= τ)``). Computed in float32, without gradient.

    Args:
        weak_logits: ``(B, *spatial, C)`` logits on the weakly augmented images.
        threshold: confidence threshold ``τ`` in ``[0, 1]`` (default 0.95, the paper's).

    Returns:
        ``(labels, confident)``: int32 labels ``(B, *spatial)`` and a float32 ``{0, 1}`` mask
        of the same shape.
    """
    threshold = _check_threshold(threshold)
    logits = ops.stop_gradient(ops.cast(weak_logits, "float32"))
    if logits.shape[-1] == 1:
        logits = ops.squeeze(logits, axis=-1)
        labels = ops.cast(logits > 0.0, "int32")
        confidence = ops.sigmoid(ops.abs(logits))
    else:
        labels = ops.cast(ops.argmax(logits, axis=-1), "int32")
        confidence = ops.exp(ops.max(ops.log_softmax(logits, axis=-1), axis=-1))
    return labels, ops.cast(confidence >= threshold, "float32")


def masked_cross_entropy(labels, confident, logits):
    """Cross-entropy of ``logits`` against ``labels``, averaged over the ``confident`` voxels.

    ``sum(confident · CE) / max(sum(confident), 1)``: a batch with no confident voxel
    costs 0 (with a zero gradient), never 0/0. The cross-entropy is taken from logits in
    float32 (``-log_sigmoid(±logit)`` for one channel, ``-log_softmax`` for several), so
    logits of ±1e4 give a large but finite loss.

    Args:
        labels: int ``(B, *spatial)`` labels (``0``/``1`` for one channel, ``0..C-1``).
        confident: ``(B, *spatial)`` weights in ``[0, 1]`` (the mask of ``pseudo_labels``).
        logits: ``(B, *spatial, C)`` logits on the strongly augmented images.

    Returns:
        A float32 scalar tensor.
    """
    logits = ops.cast(logits, "float32")
    if tuple(labels.shape) != tuple(logits.shape[:-1]) or tuple(confident.shape) != tuple(
        labels.shape
    ):
        raise ValueError(
            f"labels and confident must have the shape of logits without its channel axis: "
            f"got labels {tuple(labels.shape)}, confident {tuple(confident.shape)}, logits "
            f"{tuple(logits.shape)}"
        )
    confident = ops.cast(confident, "float32")
    if logits.shape[-1] == 1:
        logits = ops.squeeze(logits, axis=-1)
        sign = 2.0 * ops.cast(labels, "float32") - 1.0
        cross_entropy = -ops.log_sigmoid(sign * logits)
    else:
        one_hot = ops.one_hot(ops.cast(labels, "int32"), logits.shape[-1], dtype="float32")
        cross_entropy = -ops.sum(one_hot * ops.log_softmax(logits, axis=-1), axis=-1)
    count = ops.sum(confident)
    return ops.sum(confident * cross_entropy) / ops.maximum(count, 1.0)


def fixmatch_loss(weak_logits, strong_logits, threshold=0.95):
    """FixMatch's unlabeled loss for segmentation on voxel-aligned weak and strong views.

    ``masked_cross_entropy(*pseudo_labels(weak_logits, threshold), strong_logits)``; the
    weak prediction carries no gradient.
    """
    labels, confident = pseudo_labels(weak_logits, threshold)
    return masked_cross_entropy(labels, confident, strong_logits)


def _default_weak(spatial_dims):
    from kseg.augment.random_axis_flip import RandomAxisFlip
    from kseg.augment.segmentation_augmenter import SegmentationAugmenter

    return SegmentationAugmenter([RandomAxisFlip(spatial_dims, probability=0.5)])


def _default_strong(spatial_dims):
    from kseg.augment.segmentation_augmenter import segmentation_augmenter

    return segmentation_augmenter(spatial_dims)


def _augmenter(name, value, default, spatial_dims):
    if isinstance(value, str) and value == "default":
        return default(spatial_dims)
    if isinstance(value, dict):
        value = keras.saving.deserialize_keras_object(value)
    if value is not None and not isinstance(value, keras.layers.Layer):
        raise ValueError(f'{name} must be a keras.layers.Layer, "default" or None, got {value!r}')
    return value


@keras.saving.register_keras_serializable(package="kseg")
class FixMatch(_ConsistencyModel):
    """FixMatch-style weak/strong consistency training for segmentation.

    Each step:

    1. the labeled batch ``(x, y)`` and the unlabeled images go through ``weak``
       augmentation (jointly with the masks for the labeled batch);
    2. the model, in inference mode and without gradient, predicts the weak unlabeled
       images; ``pseudo_labels`` keeps the voxels whose confidence is ``>= threshold``;
    3. ``strong`` augmentation transforms the weak unlabeled images *jointly with the
       pseudo-labels and their confidence mask* (packed into one mask, ``label + 1`` where
       confident and 0 elsewhere, so voxels moved in from outside the grid are unconfident:
       the strong augmenter must fill masks with 0, as kseg's layers do);
    4. the model, in training mode, predicts the weak labeled and the strong unlabeled
       images as two batches (the paper concatenates them; see ``_ConsistencyModel`` for
       why not here) and minimises ``L_sup + unlabeled_weight · masked_cross_entropy``, the
       cross-entropy averaged over the confident voxels (0 when none is; FixMatch divides
       by all unlabeled samples instead, which shrinks the loss while few voxels are
       confident).

    ``evaluate``, ``predict`` and ``__call__`` run the wrapped model on the data as given.
    Save it alone (``model.student.save(...)``) for ``kseg.load_model``.

    Args:
        student: the segmentation model, outputting logits ``(B, *spatial, C)``.
        weak: joint augmentation layer for the weak view (``{"images",
            "segmentation_masks"}`` in and out, e.g. a ``SegmentationAugmenter``);
            ``"default"``: random flips of every spatial axis; ``None``: none.
        strong: joint augmentation for the strong view; ``"default"``:
            ``kseg.augment.segmentation_augmenter(spatial_dims)`` (flips, affine, elastic,
            noise, contrast, blur); ``None``: none.
        threshold: confidence threshold ``τ`` in ``[0, 1]`` (default 0.95, the paper's).
        unlabeled_weight: weight ``λ_u`` of the unlabeled loss, >= 0 (default 1.0).
        **kwargs: standard ``keras.Model`` arguments.

    Example:
        >>> import kseg
        >>> net = kseg.models.build("unet_small", input_shape=(64, 64, 1), num_classes=1,
        ...                         activation=None)
        >>> model = FixMatch(net, threshold=0.95)
        >>> model.compile("adam", loss=kseg.losses.DiceCELoss(from_logits=True))
        >>> model.fit(tf.data.Dataset.zip((labeled, unlabeled)))  # doctest: +SKIP

    Reference:
        Sohn K. et al., "FixMatch: Simplifying Semi-Supervised Learning with Consistency and
        Confidence", NeurIPS 2020.
    """

    def __init__(
        self,
        student,
        weak="default",
        strong="default",
        threshold=0.95,
        unlabeled_weight=1.0,
        **kwargs,
    ):
        super().__init__(
            student, ("supervised_loss", "unlabeled_loss", "confident_fraction"), **kwargs
        )
        spatial_dims = len(self.student.inputs[0].shape) - 2 if self.student.inputs else 2
        self.weak = _augmenter("weak", weak, _default_weak, spatial_dims)
        self.strong = _augmenter("strong", strong, _default_strong, spatial_dims)
        self.threshold = _check_threshold(threshold)
        _check_number("unlabeled_weight", unlabeled_weight, 0.0, math.inf, high_open=True)
        self.unlabeled_weight = float(unlabeled_weight)
        self._build_from_student()

    def build(self, input_shape):
        super().build(input_shape)
        for layer in (self.weak, self.strong):
            if layer is not None and not layer.built:
                layer.build({IMAGES: input_shape, MASKS: input_shape})

    def strong_view(self, images, labels, confident):
        """Strongly augment ``images`` with ``labels`` and ``confident`` moved alongside.

        Returns ``(images, labels, confident)``; voxels that the augmentation brings in from
        outside the grid come back unconfident.
        """
        if self.strong is None:
            return images, labels, confident
        packed = ops.where(confident > 0.0, labels + 1, 0)
        augmented = self.strong(
            {IMAGES: images, MASKS: ops.expand_dims(ops.cast(packed, "int32"), -1)},
            training=True,
        )
        packed = ops.squeeze(ops.cast(augmented[MASKS], "int32"), -1)
        strong_images = ops.cast(augmented[IMAGES], images.dtype)
        return strong_images, ops.maximum(packed - 1, 0), ops.cast(packed > 0, "float32")

    def _weak_view(self, images, masks=None):
        if self.weak is None:
            return images, masks
        data = {IMAGES: images}
        if masks is not None:
            data[MASKS] = masks
        augmented = self.weak(data, training=True)
        return ops.cast(augmented[IMAGES], images.dtype), augmented.get(MASKS)

    def _weak_labeled_view(self, x, y, sample_weight):
        """The weak view of the labeled batch; a per-voxel ``sample_weight`` moves with the
        mask, as in :class:`kseg.augment.AugmentedModel` (both call
        :func:`kseg.augment.augment_batch`)."""
        if self.weak is None:
            return x, y, sample_weight
        images, masks, sample_weight = augment_batch(self.weak, x, y, sample_weight)
        return ops.cast(images, x.dtype), masks, sample_weight

    def train_step(self, data):
        import tensorflow as tf

        (x, y, sample_weight), x_unlabeled = _split_batch(self.name, data)
        x, y, sample_weight = self._weak_labeled_view(x, y, sample_weight)
        weak_unlabeled, _ = self._weak_view(ops.cast(x_unlabeled, x.dtype))
        weak_logits = ops.stop_gradient(self.student(weak_unlabeled, training=False))
        labels, confident = pseudo_labels(weak_logits, self.threshold)
        strong_unlabeled, labels, confident = self.strong_view(weak_unlabeled, labels, confident)
        with tf.GradientTape() as tape:
            # separate batches, see _ConsistencyModel
            labeled_logits = self.student(x, training=True)
            strong_logits = self.student(strong_unlabeled, training=True)
            supervised = self._supervised(x, y, sample_weight, labeled_logits)
            unlabeled = masked_cross_entropy(labels, confident, strong_logits)
            loss = ops.cast(supervised, "float32") + self.unlabeled_weight * unlabeled
            scaled = self.optimizer.scale_loss(loss)
        self._apply(tape, scaled)
        self._loss_tracker.update_state(loss)
        return self._results(
            x,
            y,
            labeled_logits,
            sample_weight,
            {
                "supervised_loss": supervised,
                "unlabeled_loss": unlabeled,
                "confident_fraction": ops.mean(confident),
            },
        )

    def get_config(self):
        def serialize(layer):
            return None if layer is None else keras.saving.serialize_keras_object(layer)

        return {
            "name": self.name,
            "trainable": self.trainable,
            "student": keras.saving.serialize_keras_object(self.student),
            "weak": serialize(self.weak),
            "strong": serialize(self.strong),
            "threshold": self.threshold,
            "unlabeled_weight": self.unlabeled_weight,
        }
