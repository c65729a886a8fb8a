"""Consistency training: mean teacher and FixMatch, checked against the papers' formulas."""

import math

import keras
import numpy as np
import pytest
import tensorflow as tf

import kseg
from kseg.losses import DiceCELoss
from kseg.training.consistency import MeanTeacher, consistency_loss, sigmoid_rampup

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


def numpy_mean_teacher_ema(student_history, initial, decay):
    """θ'_t = α_t θ'_{t-1} + (1 - α_t) θ_t, α_t = min(1 - 1/(t + 1), decay) (trainable),
    BatchNorm statistics copied."""
    teacher = [w.copy() for w in initial]
    for t, (weights, trainable) in enumerate(student_history, start=1):
        alpha = min(1.0 - 1.0 / (t + 1), decay)
        teacher = [
            alpha * tw + (1 - alpha) * sw if train else sw.copy()
            for tw, sw, train in zip(teacher, weights, trainable, strict=True)
        ]
    return teacher


def test_mean_teacher_ema_matches_numpy_after_n_steps():
    keras.utils.set_random_seed(0)
    x, y = synthetic(8)
    x_unlabeled, _ = synthetic(8, seed=1)
    model = MeanTeacher(tiny_net(), rampup_steps=3, ema_decay=0.9, noise=None)
    model.compile(keras.optimizers.SGD(0.1), loss=DiceCELoss(from_logits=True))
    initial = [w.numpy() for w in model.teacher.weights]
    assert all(
        np.array_equal(t, s.numpy()) for t, s in zip(initial, model.student.weights, strict=True)
    )
    history = []

    class Record(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            history.append(
                (
                    [w.numpy() for w in model.student.weights],
                    [w.trainable for w in model.student.weights],
                )
            )

    model.fit(zipped(x, y, x_unlabeled), epochs=2, verbose=0, callbacks=[Record()])
    assert len(history) == 4
    expected = numpy_mean_teacher_ema(history, initial, 0.9)
    assert any(not t for t in history[0][1])  # BatchNorm moving statistics are in there
    for got, want in zip(model.teacher.weights, expected, strict=True):
        np.testing.assert_allclose(got.numpy(), want, rtol=1e-5, atol=1e-6)
    # the teacher lags the student: after 4 steps with α up to 0.8 they differ
    kernel = model.student.trainable_weights[0]
    assert not np.allclose(model.teacher.weights[0].numpy(), kernel.numpy())


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
