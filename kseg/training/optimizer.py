"""One trace of the training step per ``fit``: the optimizer's variables made beforehand.

Keras 3 on TensorFlow, without a distribution strategy, leaves the optimizer unbuilt until
the first trace of the training step ("to maximize backwards compatibility",
``keras.src.backend.tensorflow.trainer``). Its slot variables are then created inside that
trace, and a ``tf.function`` may create variables only on its first call, so TensorFlow
traces the whole training step a second time. For kseg's small U-Nets that second trace
is about half of a first ``fit``'s CPU time (``benchmarks/fit_startup.py``; figures in
the README).
"""

from __future__ import annotations

import keras


def build_optimizer(model: keras.Model) -> keras.Model:
    """Create the variables of ``model``'s optimizer now, in the model's distribution
    strategy, as Keras would inside the first traced training step; returns ``model``.

    Does nothing for a model that is not compiled, whose optimizer is built already, or
    whose variables do not exist yet (a subclassed model before its first call). The
    optimizer state is what Keras makes (zeros, iteration 0): training is the same, one
    trace cheaper.

    Example:
        >>> import keras
        >>> model = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Conv2D(1, 3)])
        >>> model.compile(optimizer="adam", loss="mse")
        >>> build_optimizer(model).optimizer.built
        True
    """
    optimizer = getattr(model, "optimizer", None)
    if optimizer is None or optimizer.built or not model.built:
        return model
    with model.distribute_strategy.scope():
        optimizer.build(model.trainable_variables)
    return model
