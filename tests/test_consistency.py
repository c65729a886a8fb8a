"""Consistency training: mean teacher and FixMatch, checked against the papers' formulas."""

import math

import keras
import numpy as np
import pytest
import tensorflow as tf

import kseg
from kseg.augment import SegmentationAugmenter
from kseg.augment.random_axis_flip import RandomAxisFlip
from kseg.losses import DiceCELoss
from kseg.training.consistency import (
    FixMatch,
    MeanTeacher,
    consistency_loss,
    fixmatch_loss,
    masked_cross_entropy,
    pseudo_labels,
    sigmoid_rampup,
)

SIZE = 16


def tiny_net(channels=1, batch_norm=True, dtype=None):
    """A few hundred parameters: conv → (BN) → ReLU → 1×1 conv to logits."""
    inputs = keras.Input((SIZE, SIZE, 1))
    h = keras.layers.Conv2D(4, 3, padding="same", dtype=dtype)(inputs)
    if batch_norm:
        h = keras.layers.BatchNormalization(momentum=0.9, dtype=dtype)(h)
    h = keras.layers.ReLU(dtype=dtype)(h)
    outputs = keras.layers.Conv2D(channels, 1, dtype=dtype)(h)
    return keras.Model(inputs, outputs)


def synthetic(n=8, seed=0):
    """Bright disc on a dark background: a task a 3×3 conv learns in a few steps."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:SIZE, :SIZE]
    images, masks = [], []
    for _ in range(n):
        cy, cx, r = rng.uniform(5, 11), rng.uniform(5, 11), rng.uniform(2.5, 4.5)
        mask = ((yy - cy) ** 2 + (xx - cx) ** 2 <= r * r).astype("float32")
        images.append(0.2 + 0.6 * mask + rng.normal(0, 0.05, mask.shape))
        masks.append(mask)
    return np.stack(images)[..., None].astype("float32"), np.stack(masks)[..., None]


def zipped(x, y, x_unlabeled, batch=4):
    labeled = tf.data.Dataset.from_tensor_slices((x, y)).batch(batch)
    unlabeled = tf.data.Dataset.from_tensor_slices(x_unlabeled).batch(batch)
    return tf.data.Dataset.zip((labeled, unlabeled))


# --- ramp-up and consistency loss ---------------------------------------------------------


@pytest.mark.parametrize("step", [0, 1, 7, 50, 99, 100, 250])
def test_sigmoid_rampup_is_the_papers_formula(step):
    length = 100
    t = min(max(step / length, 0.0), 1.0)
    expected = math.exp(-5.0 * (1.0 - t) ** 2)  # Tarvainen & Valpola 2017, appendix
    assert float(sigmoid_rampup(step, length)) == pytest.approx(expected, rel=1e-6)


def test_sigmoid_rampup_without_length_is_one():
    assert float(sigmoid_rampup(0, 0)) == 1.0


@pytest.mark.parametrize("bad", [-1, 2.5, True, "10"])
def test_sigmoid_rampup_refuses_bad_lengths(bad):
    with pytest.raises(ValueError, match="rampup_steps"):
        sigmoid_rampup(3, bad)


@pytest.mark.parametrize("channels", [1, 3])
def test_consistency_loss_is_zero_when_models_agree(channels):
    logits = np.random.default_rng(1).normal(0, 3, (2, 4, 4, channels)).astype("float32")
    assert float(consistency_loss(logits, logits)) == 0.0


def test_consistency_loss_matches_numpy_mse_of_probabilities():
    rng = np.random.default_rng(2)
    a, b = rng.normal(0, 2, (2, 2, 3, 4, 3)).astype("float32")
    pa = np.exp(a) / np.exp(a).sum(-1, keepdims=True)
    pb = np.exp(b) / np.exp(b).sum(-1, keepdims=True)
    assert float(consistency_loss(a, b)) == pytest.approx(np.mean((pa - pb) ** 2), rel=1e-5)
    sa, sb = 1 / (1 + np.exp(-a[..., :1])), 1 / (1 + np.exp(-b[..., :1]))
    assert float(consistency_loss(a[..., :1], b[..., :1])) == pytest.approx(
        np.mean((sa - sb) ** 2), rel=1e-5
    )


@pytest.mark.parametrize("channels", [1, 3])
def test_consistency_loss_is_finite_with_huge_float16_logits(channels):
    big = np.full((1, 4, 4, channels), 1e4, "float32")
    big[..., 0] = -1e4
    student = tf.constant(big, tf.float16)  # ±1e4 fits float16 (max 65504)
    value = consistency_loss(student, -tf.constant(big, tf.float16))
    assert value.dtype == tf.float32
    assert np.isfinite(float(value)) and 0.0 <= float(value) <= 1.0
    grad_input = tf.Variable(big)
    with tf.GradientTape() as tape:
        loss = consistency_loss(grad_input, -tf.constant(big))
    assert np.all(np.isfinite(tape.gradient(loss, grad_input).numpy()))


def test_consistency_loss_refuses_mismatched_shapes():
    with pytest.raises(ValueError, match="student_logits and teacher_logits"):
        consistency_loss(np.zeros((1, 4, 4, 1), "float32"), np.zeros((1, 4, 4, 2), "float32"))


# --- mean teacher -------------------------------------------------------------------------


def numpy_conv3x3_same(images, kernel, bias):
    """Keras' Conv2D(padding="same") for a 3×3 kernel: cross-correlation on a zero-padded
    grid."""
    padded = np.pad(images, ((0, 0), (1, 1), (1, 1), (0, 0)))
    height, width = images.shape[1:3]
    out = np.zeros((*images.shape[:3], kernel.shape[-1]))
    for di in range(3):
        for dj in range(3):
            out += padded[:, di : di + height, dj : dj + width, :] @ kernel[di, dj]
    return out + bias


def numpy_mean_teacher(initial, student_history, batches, decay, momentum=0.9):
    """The tiny net's teacher after each step: before the student's update the teacher
    (training mode) normalises its conv activations on the labeled, then on the unlabeled
    batch, moving its own BatchNorm statistics each time, ``m ← momentum m + (1 -
    momentum) batch_moment`` (biased variance); after it,
    ``θ'_t = α_t θ'_{t-1} + (1 - α_t) θ_t`` with ``α_t = min(1 - 1/(t + 1), decay)`` for the
    trainable weights."""
    kernel, bias, gamma, beta, mean, variance, head_kernel, head_bias = [
        w.astype("float64") for w in initial
    ]
    for t, (student, pair) in enumerate(zip(student_history, batches, strict=True), 1):
        for images in pair:
            activations = numpy_conv3x3_same(images, kernel, bias)
            mean = momentum * mean + (1 - momentum) * activations.mean(axis=(0, 1, 2))
            variance = momentum * variance + (1 - momentum) * activations.var(axis=(0, 1, 2))
        alpha = min(1.0 - 1.0 / (t + 1), decay)
        kernel, bias, gamma, beta, head_kernel, head_bias = [
            alpha * teacher + (1 - alpha) * new
            for teacher, new in zip(
                (kernel, bias, gamma, beta, head_kernel, head_bias), student, strict=True
            )
        ]
    return [kernel, bias, gamma, beta, mean, variance, head_kernel, head_bias]


def test_mean_teacher_matches_numpy_ema_and_its_own_batchnorm_statistics():
    keras.utils.set_random_seed(0)
    x, y = synthetic(8)
    x_unlabeled, _ = synthetic(8, seed=1)
    model = MeanTeacher(tiny_net(), rampup_steps=3, ema_decay=0.9, noise=None)
    model.compile(keras.optimizers.SGD(0.1), loss=DiceCELoss(from_logits=True))
    initial = [w.numpy() for w in model.teacher.weights]
    assert all(
        np.array_equal(t, s.numpy()) for t, s in zip(initial, model.student.weights, strict=True)
    )
    # the optimizer moves the student's weights only
    assert [w.path for w in model.trainable_weights] == [
        w.path for w in model.student.trainable_weights
    ]
    history = []

    class Record(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            history.append([w.numpy() for w in model.student.trainable_weights])

    model.fit(zipped(x, y, x_unlabeled), epochs=2, verbose=0, callbacks=[Record()])
    assert len(history) == 4
    # zipped() batches 4 + 4 in order, the same two batches each epoch
    batches = [(x[i : i + 4], x_unlabeled[i : i + 4]) for i in (0, 4, 0, 4)]
    expected = numpy_mean_teacher(initial, history, batches, 0.9)
    for got, want in zip(model.teacher.weights, expected, strict=True):
        np.testing.assert_allclose(got.numpy(), want, rtol=1e-4, atol=1e-5, err_msg=got.path)
    # the teacher's statistics are not the student's (they came from other weights)
    student_mean = model.student.non_trainable_weights[0].numpy()
    assert not np.allclose(model.teacher.weights[4].numpy(), student_mean)


def test_mean_teacher_without_averaging_or_noise_is_the_student():
    """ema_decay 0 makes the teacher the student's weights after every step; both then
    normalise the same batch with the same weights, so the BatchNorm statistics the teacher
    gathers on its own equal the student's, and both models predict alike."""
    keras.utils.set_random_seed(2)
    x, y = synthetic(8)
    x_unlabeled, _ = synthetic(8, seed=4)
    model = MeanTeacher(tiny_net(), rampup_steps=2, ema_decay=0.0, noise=None)
    model.compile(keras.optimizers.Adam(0.05), loss=DiceCELoss(from_logits=True))
    model.fit(zipped(x, y, x_unlabeled), epochs=3, verbose=0)
    for teacher, student in zip(model.teacher.weights, model.student.weights, strict=True):
        np.testing.assert_allclose(teacher.numpy(), student.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(
        model.teacher.predict(x, verbose=0), model.predict(x, verbose=0), rtol=1e-4, atol=1e-5
    )


def test_mean_teacher_consistency_weight_follows_the_ramp_up():
    x, y = synthetic(4)
    model = MeanTeacher(tiny_net(), consistency_weight=2.0, rampup_steps=5, noise=None)
    model.compile(keras.optimizers.SGD(0.01), loss=DiceCELoss(from_logits=True))
    weights = []

    class Record(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            weights.append(logs["consistency_weight"])

    model.fit(zipped(x, y, x, batch=1), epochs=2, verbose=0, callbacks=[Record()])
    # logs are running means over the epoch; recover each step's value
    per_step = []
    for epoch in range(2):
        means = weights[epoch * 4 : (epoch + 1) * 4]
        for i, mean in enumerate(means):
            per_step.append(mean * (i + 1) - (means[i - 1] * i if i else 0.0))
    expected = [2.0 * math.exp(-5.0 * (1.0 - min(t / 5, 1.0)) ** 2) for t in range(8)]
    np.testing.assert_allclose(per_step, expected, rtol=1e-4, atol=1e-6)


def test_mean_teacher_training_reduces_supervised_loss_and_stays_finite():
    keras.utils.set_random_seed(1)
    x, y = synthetic(8)
    x_unlabeled, _ = synthetic(16, seed=3)
    model = MeanTeacher(tiny_net(), rampup_steps=10)
    model.compile(keras.optimizers.Adam(0.05), loss=DiceCELoss(from_logits=True))
    data = zipped(x, y, x_unlabeled[:8])
    first = model.evaluate(x, y, verbose=0)
    history = model.fit(data, epochs=12, verbose=0).history
    assert history["supervised_loss"][-1] < history["supervised_loss"][0]
    assert model.evaluate(x, y, verbose=0) < first
    for weight in [*model.student.weights, *model.teacher.weights]:
        assert np.all(np.isfinite(weight.numpy())), weight.path
    assert all(np.isfinite(v).all() for v in history.values())


def test_mean_teacher_evaluate_and_predict_run_the_student(tmp_path):
    x, y = synthetic(4)
    net = tiny_net()
    model = MeanTeacher(net, rampup_steps=2)
    model.compile(keras.optimizers.Adam(0.01), loss=DiceCELoss(from_logits=True))
    model.fit(zipped(x, y, x), epochs=1, verbose=0)
    np.testing.assert_allclose(
        model.predict(x, verbose=0), net.predict(x, verbose=0), rtol=1e-6, atol=1e-6
    )
    results = model.evaluate(x, y, verbose=0, return_dict=True)
    assert set(results) == {"loss"}
    net.save(tmp_path / "student.keras")
    reloaded = kseg.load_model(tmp_path / "student.keras")
    np.testing.assert_allclose(
        reloaded.predict(x, verbose=0), net.predict(x, verbose=0), rtol=1e-6, atol=1e-6
    )


def test_mean_teacher_accepts_unlabeled_batches_as_one_tuples_and_refuses_other_data():
    x, y = synthetic(4)
    model = MeanTeacher(tiny_net(batch_norm=False), rampup_steps=2)
    model.compile(keras.optimizers.Adam(0.01), loss=DiceCELoss(from_logits=True))
    labeled = tf.data.Dataset.from_tensor_slices((x, y)).batch(2)
    unlabeled = tf.data.Dataset.from_tensor_slices((x,)).batch(2)
    model.fit(tf.data.Dataset.zip((labeled, unlabeled)), epochs=1, verbose=0)
    with pytest.raises(ValueError, match="labeled batch must be"):
        model.fit(labeled, epochs=1, verbose=0)


def test_mean_teacher_under_mixed_float16_stays_finite():
    x, y = synthetic(8)
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_float16")
    try:
        model = MeanTeacher(tiny_net(), rampup_steps=2)
        model.compile(keras.optimizers.Adam(0.05), loss=DiceCELoss(from_logits=True))
        # huge inputs drive float16 logits towards overflow
        history = model.fit(zipped(x * 300.0, y, x * 300.0), epochs=3, verbose=0).history
    finally:
        keras.config.set_dtype_policy(previous)
    assert model.student.outputs[0].dtype == "float16"
    assert all(np.isfinite(v).all() for v in history.values())
    for weight in [*model.student.weights, *model.teacher.weights]:
        assert np.all(np.isfinite(weight.numpy())), weight.path


def test_mean_teacher_empty_masks_keep_losses_finite():
    x, _ = synthetic(4)
    y = np.zeros_like(x)
    model = MeanTeacher(tiny_net(), rampup_steps=0)
    model.compile(keras.optimizers.Adam(0.01), loss=DiceCELoss(from_logits=True))
    history = model.fit(zipped(x, y, x), epochs=2, verbose=0).history
    assert all(np.isfinite(v).all() for v in history.values())


@pytest.mark.parametrize(
    ("argument", "value"),
    [
        ("consistency_weight", -1.0),
        ("consistency_weight", float("nan")),
        ("rampup_steps", -5),
        ("ema_decay", 1.0),
        ("ema_decay", -0.1),
        ("noise", "gaussian"),
    ],
)
def test_mean_teacher_refuses_bad_arguments(argument, value):
    with pytest.raises(ValueError, match=argument):
        MeanTeacher(tiny_net(), **{argument: value})


def test_mean_teacher_refuses_a_non_model_student():
    with pytest.raises(ValueError, match="student"):
        MeanTeacher("unet")


# --- both: the labeled batch is normalised on its own -----------------------------------


def supervised_weights(net, x, y, steps):
    """The trainable weights of ``net`` (a copy) after ``steps`` steps of plain
    supervised ``fit`` on the labeled batches alone."""
    reference = keras.models.clone_model(net)
    reference.set_weights(net.get_weights())
    reference.compile(keras.optimizers.Adam(0.02), loss=DiceCELoss(from_logits=True))
    labeled = tf.data.Dataset.from_tensor_slices((x, y)).batch(2).repeat()
    reference.fit(labeled, steps_per_epoch=steps, epochs=1, verbose=0)
    return [w.numpy() for w in reference.trainable_weights]


@pytest.mark.parametrize("kind", ["mean_teacher", "fixmatch"])
def test_with_unlabeled_loss_at_zero_the_student_trains_as_supervised_only(kind):
    """Two labeled images per step next to eight unlabeled ones: with the unlabeled term
    weighted 0, the student's weights must follow supervised training on the labeled
    batches exactly, so the unlabeled images may not enter the labeled images'
    BatchNorm statistics."""
    keras.utils.set_random_seed(5)
    x, y = synthetic(4)
    x_unlabeled, _ = synthetic(32, seed=6)
    x_unlabeled = x_unlabeled * 2.0 + 0.5  # other statistics than the labeled images
    net = tiny_net(channels=1)
    expected = supervised_weights(net, x, y, steps=6)
    if kind == "mean_teacher":
        model = MeanTeacher(net, consistency_weight=0.0, noise=None)
    else:
        model = FixMatch(net, weak=None, strong=None, threshold=0.5, unlabeled_weight=0.0)
    model.compile(keras.optimizers.Adam(0.02), loss=DiceCELoss(from_logits=True))
    labeled = tf.data.Dataset.from_tensor_slices((x, y)).batch(2).repeat()
    unlabeled = tf.data.Dataset.from_tensor_slices(x_unlabeled).batch(8).repeat()
    model.fit(tf.data.Dataset.zip((labeled, unlabeled)), steps_per_epoch=6, epochs=1, verbose=0)
    for got, want in zip(net.trainable_weights, expected, strict=True):
        np.testing.assert_allclose(got.numpy(), want, rtol=1e-5, atol=1e-6, err_msg=got.path)


# --- FixMatch -----------------------------------------------------------------------------


def test_fixmatch_loss_binary_hand_worked_case():
    weak = np.array([3.0, -4.0, 0.5, 0.0], "float32").reshape(1, 2, 2, 1)
    strong = np.array([1.0, 2.0, -7.0, 9.0], "float32").reshape(1, 2, 2, 1)
    # sigmoid(3) = 0.9526 >= 0.95 → label 1; sigmoid(4) = 0.9820 → label 0;
    # 0.5 and 0.0 give 0.62 and 0.5: not confident.
    # CE: -log sigmoid(1) = log(1 + e^-1) = 0.3132617; -log(1 - sigmoid(2)) = log(1 + e^2)
    expected = (math.log1p(math.exp(-1.0)) + math.log1p(math.exp(2.0))) / 2
    assert float(fixmatch_loss(weak, strong, 0.95)) == pytest.approx(expected, rel=1e-6)
    labels, confident = pseudo_labels(weak, 0.95)
    np.testing.assert_array_equal(np.asarray(labels).ravel(), [1, 0, 1, 0])
    np.testing.assert_array_equal(np.asarray(confident).ravel(), [1, 1, 0, 0])


def test_fixmatch_loss_multiclass_against_numpy():
    rng = np.random.default_rng(4)
    weak = rng.normal(0, 4, (2, 3, 3, 3)).astype("float64")
    strong = rng.normal(0, 2, (2, 3, 3, 3)).astype("float64")
    q = np.exp(weak) / np.exp(weak).sum(-1, keepdims=True)
    mask = q.max(-1) >= 0.9
    labels = q.argmax(-1)
    log_q_strong = strong - np.log(np.exp(strong).sum(-1, keepdims=True))
    ce = -np.take_along_axis(log_q_strong, labels[..., None], -1)[..., 0]
    assert 0 < mask.sum() < mask.size
    expected = ce[mask].mean()
    got = fixmatch_loss(weak.astype("float32"), strong.astype("float32"), 0.9)
    assert float(got) == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("channels", [1, 3])
def test_fixmatch_loss_without_confident_voxels_is_zero_with_finite_gradient(channels):
    weak = np.zeros((2, 4, 4, channels), "float32")  # p = 0.5 or 1/3 everywhere
    strong = tf.Variable(np.random.default_rng(5).normal(0, 1, weak.shape).astype("float32"))
    with tf.GradientTape() as tape:
        loss = fixmatch_loss(weak, strong, 0.95)
    assert float(loss) == 0.0
    gradient = tape.gradient(loss, strong).numpy()
    assert np.all(np.isfinite(gradient)) and np.all(gradient == 0.0)


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_fixmatch_loss_is_finite_with_logits_of_1e4(channels, dtype):
    weak = np.full((1, 4, 4, channels), -1e4, "float32")
    weak[..., -1] = 1e4  # certain of the last class (label 1 when binary)
    strong = -weak  # certain of the wrong class
    loss = fixmatch_loss(tf.constant(weak, dtype), tf.constant(strong, dtype), 0.95)
    assert loss.dtype == tf.float32
    # binary: -log sigmoid(-1e4) = 1e4; three classes, strong (1e4, 1e4, -1e4) against label 2:
    # -log_softmax = logsumexp - (-1e4) = (1e4 + log 2) + 1e4
    expected = 1e4 if channels == 1 else 2e4 + math.log(2.0)
    assert float(loss) == pytest.approx(expected, rel=1e-7)
    variable = tf.Variable(tf.constant(strong, dtype))
    with tf.GradientTape() as tape:
        loss = fixmatch_loss(weak, variable, 0.95)
    assert np.all(np.isfinite(tape.gradient(loss, variable).numpy().astype("float32")))


def test_masked_cross_entropy_refuses_mismatched_shapes():
    with pytest.raises(ValueError, match="labels and confident"):
        masked_cross_entropy(
            np.zeros((1, 4, 4), "int32"),
            np.zeros((1, 4, 3), "float32"),
            np.zeros((1, 4, 4, 2), "float32"),
        )


@pytest.mark.parametrize("bad", [1.5, -0.1, float("nan"), "high"])
def test_pseudo_labels_refuse_bad_thresholds(bad):
    with pytest.raises(ValueError, match="threshold"):
        pseudo_labels(np.zeros((1, 2, 2, 1), "float32"), bad)


def test_fixmatch_strong_view_moves_pseudo_labels_with_the_image():
    flip = SegmentationAugmenter([RandomAxisFlip(2, probability=1.0)])
    model = FixMatch(tiny_net(), strong=flip)
    rng = np.random.default_rng(6)
    images = rng.random((2, SIZE, SIZE, 1)).astype("float32")
    labels = rng.integers(0, 3, (2, SIZE, SIZE)).astype("int32")
    confident = (rng.random((2, SIZE, SIZE)) > 0.5).astype("float32")
    out_images, out_labels, out_confident = model.strong_view(images, labels, confident)
    flipped = np.flip(images, (1, 2))
    np.testing.assert_allclose(np.asarray(out_images), flipped, rtol=1e-6)
    np.testing.assert_array_equal(np.asarray(out_confident), np.flip(confident, (1, 2)))
    keep = np.flip(confident, (1, 2)) > 0
    np.testing.assert_array_equal(np.asarray(out_labels)[keep], np.flip(labels, (1, 2))[keep])


def fixmatch(net, **kwargs):
    weak = SegmentationAugmenter([RandomAxisFlip(2, probability=0.5, seed=1)])
    strong = SegmentationAugmenter([RandomAxisFlip(2, probability=0.5, seed=2)])
    return FixMatch(net, weak=weak, strong=strong, **kwargs)


def test_fixmatch_training_reduces_supervised_loss_and_stays_finite(tmp_path):
    keras.utils.set_random_seed(2)
    x, y = synthetic(8)
    x_unlabeled, _ = synthetic(8, seed=7)
    net = tiny_net()
    model = fixmatch(net, threshold=0.7)
    model.compile(keras.optimizers.Adam(0.05), loss=DiceCELoss(from_logits=True))
    first = model.evaluate(x, y, verbose=0)
    history = model.fit(zipped(x, y, x_unlabeled), epochs=12, verbose=0).history
    assert history["supervised_loss"][-1] < history["supervised_loss"][0]
    assert model.evaluate(x, y, verbose=0) < first
    assert history["confident_fraction"][-1] > 0.0  # the unlabeled loss did take part
    assert all(np.isfinite(v).all() for v in history.values())
    for weight in model.student.weights:
        assert np.all(np.isfinite(weight.numpy())), weight.path
    np.testing.assert_allclose(
        model.predict(x, verbose=0), net.predict(x, verbose=0), rtol=1e-6, atol=1e-6
    )
    net.save(tmp_path / "student.keras")
    reloaded = kseg.load_model(tmp_path / "student.keras")
    np.testing.assert_allclose(
        reloaded.predict(x, verbose=0), net.predict(x, verbose=0), rtol=1e-6, atol=1e-6
    )


def test_fixmatch_with_no_confident_voxel_and_empty_masks_stays_finite():
    x, _ = synthetic(4)
    model = fixmatch(tiny_net(), threshold=1.0)  # sigmoid never reaches 1 in float32 here
    model.compile(keras.optimizers.Adam(0.01), loss=DiceCELoss(from_logits=True))
    history = model.fit(zipped(x, np.zeros_like(x), x), epochs=2, verbose=0).history
    assert history["unlabeled_loss"] == [0.0, 0.0]
    assert all(np.isfinite(v).all() for v in history.values())


def test_fixmatch_under_mixed_float16_stays_finite():
    x, y = synthetic(8)
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_float16")
    try:
        model = fixmatch(tiny_net(channels=2), threshold=0.6)
        model.compile(keras.optimizers.Adam(0.05), loss=DiceCELoss(from_logits=True))
        history = model.fit(zipped(x * 300.0, y, x * 300.0), epochs=3, verbose=0).history
    finally:
        keras.config.set_dtype_policy(previous)
    assert model.student.outputs[0].dtype == "float16"
    assert all(np.isfinite(v).all() for v in history.values())
    for weight in model.student.weights:
        assert np.all(np.isfinite(weight.numpy())), weight.path


@pytest.mark.parametrize(
    ("argument", "value"),
    [("threshold", 1.2), ("unlabeled_weight", -1.0), ("weak", "flips"), ("strong", 3)],
)
def test_fixmatch_refuses_bad_arguments(argument, value):
    with pytest.raises(ValueError, match=argument):
        FixMatch(tiny_net(), **{argument: value})


@pytest.mark.parametrize("kind", ["mean_teacher", "fixmatch"])
def test_whole_wrapper_reloads_from_keras_file_and_keeps_training(tmp_path, kind):
    x, y = synthetic(4)
    model = (
        MeanTeacher(tiny_net(), rampup_steps=2) if kind == "mean_teacher" else fixmatch(tiny_net())
    )
    model.compile(keras.optimizers.Adam(0.01), loss=DiceCELoss(from_logits=True))
    model.fit(zipped(x, y, x), epochs=1, verbose=0)
    model.save(tmp_path / "wrapper.keras")
    restored = kseg.load_model(tmp_path / "wrapper.keras")
    assert type(restored) is type(model)
    np.testing.assert_allclose(
        restored.predict(x, verbose=0), model.predict(x, verbose=0), rtol=1e-6, atol=1e-6
    )
    if kind == "mean_teacher":
        for got, want in zip(restored.teacher.weights, model.teacher.weights, strict=True):
            np.testing.assert_array_equal(got.numpy(), want.numpy())
    # the optimizer state (Adam moments, step count) comes back too
    assert len(restored.optimizer.variables) == len(model.optimizer.variables) > 2
    for got, want in zip(restored.optimizer.variables, model.optimizer.variables, strict=True):
        np.testing.assert_array_equal(got.numpy(), want.numpy())
    history = restored.fit(zipped(x, y, x), epochs=1, verbose=0).history
    assert all(np.isfinite(v).all() for v in history.values())
