"""kseg.training.build_optimizer: the training step is traced once per fit, and training
is what Keras does without it."""

import keras
import numpy as np
import pytest
from keras.src.backend.tensorflow import trainer

from kseg.training import build_optimizer


def small_model():
    keras.utils.set_random_seed(0)
    model = keras.Sequential([
        keras.Input((8, 8, 1)),
        keras.layers.Conv2D(4, 3, padding="same", activation="relu"),
        keras.layers.BatchNormalization(),
        keras.layers.Conv2D(1, 1, activation="sigmoid"),
    ])  # fmt: skip
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss="binary_crossentropy")
    return model


@pytest.fixture
def traces(monkeypatch):
    """Calls of Keras' ``train_step``, which Python runs only while TensorFlow traces."""
    calls = []
    train_step = trainer.TensorFlowTrainer.train_step

    def counted(self, data):
        calls.append(1)
        return train_step(self, data)

    monkeypatch.setattr(trainer.TensorFlowTrainer, "train_step", counted)
    return calls


def data():
    rng = np.random.default_rng(0)
    x = rng.random((8, 8, 8, 1), dtype=np.float32)
    return x, (x > 0.5).astype(np.float32)


def test_fit_traces_the_training_step_once_and_trains_as_keras_does(traces):
    plain = small_model()
    plain.fit(*data(), batch_size=4, epochs=2, verbose=0)
    # the reference: Keras builds the optimizer in the first trace and TensorFlow traces
    # the step again (variables may be created on a tf.function's first call only)
    assert len(traces) == 2
    traces.clear()
    prebuilt = build_optimizer(small_model())
    assert prebuilt.optimizer.built and int(prebuilt.optimizer.iterations.numpy()) == 0
    prebuilt.fit(*data(), batch_size=4, epochs=2, verbose=0)
    assert len(traces) == 1
    for reference, weight in zip(plain.get_weights(), prebuilt.get_weights(), strict=True):
        np.testing.assert_allclose(weight, reference, rtol=1e-5, atol=1e-6)
    assert int(prebuilt.optimizer.iterations.numpy()) == 4  # 2 epochs of 2 batches


def test_build_optimizer_leaves_uncompiled_and_built_models_alone():
    model = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Conv2D(1, 3)])
    assert build_optimizer(model) is model and getattr(model, "optimizer", None) is None
    compiled = small_model()
    build_optimizer(compiled)
    variables = list(compiled.optimizer.variables)
    build_optimizer(compiled)  # a second call makes nothing new
    assert [v.path for v in compiled.optimizer.variables] == [v.path for v in variables]


@pytest.mark.parametrize("kind", ["mean_teacher", "fixmatch"])
def test_consistency_trainers_trace_their_step_once(kind, monkeypatch):
    import tensorflow as tf

    from kseg.training import FixMatch, MeanTeacher

    trainer_class = MeanTeacher if kind == "mean_teacher" else FixMatch
    calls = []
    train_step = trainer_class.train_step

    def counted(self, data):
        calls.append(1)
        return train_step(self, data)

    monkeypatch.setattr(trainer_class, "train_step", counted)
    student = small_model()
    trainer = (MeanTeacher(student, rampup_steps=2) if kind == "mean_teacher"
               else FixMatch(student, weak=None, strong=None))
    trainer.compile(optimizer=keras.optimizers.Adam(0.01), loss="binary_crossentropy")
    x, y = data()
    stream = tf.data.Dataset.zip((tf.data.Dataset.from_tensor_slices((x, y)).batch(4),
                                  tf.data.Dataset.from_tensor_slices(x).batch(4)))
    trainer.fit(stream, epochs=2, verbose=0)
    assert len(calls) == 1  # Keras' own path: 2, the optimizer built in the first trace
    assert int(trainer.optimizer.iterations.numpy()) == 4  # 2 epochs of 2 batches


def test_kseg_models_build_their_optimizer_in_fit(traces):
    import kseg

    model = kseg.models.build("unet_small", input_shape=(16, 16, 1), num_classes=1,
                              base_filters=2, depth=2)
    model.compile(optimizer="adam", loss="binary_crossentropy")
    x, y = data()
    model.fit(np.pad(x, ((0, 0), (4, 4), (4, 4), (0, 0))),
              np.pad(y, ((0, 0), (4, 4), (4, 4), (0, 0))), batch_size=4, verbose=0)
    assert len(traces) == 1
