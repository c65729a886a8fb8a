"""Turn a Keras model or any callable into a numpy batch -> numpy batch function.

Kept free of TensorFlow imports: Keras is imported only when a predictor hands back a
backend tensor, in which case the backend is already loaded.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import numpy as np


class _CrossModelRetracingNotice(logging.Filter):
    """Drops TensorFlow's "N out of the last M calls to <function TensorFlowTrainer.
    make_predict_function.<locals>...> triggered tf.function retracing" warning.

    TensorFlow counts traces per Python code object, and every Keras model's predict function
    is the same closure, so the first traces of each model evaluated in one process (a model
    loaded per split, fold ensembles) are counted together: two splits of the LCTSC example
    printed it twice. Keras builds that function with ``reduce_retracing=True``, so one model
    traces once per batch shape and then once for any; the warning names no retracing a user
    could avoid. The same warning about any other function still shows.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        message = str(record.msg)
        return not (
            "triggered tf.function retracing" in message
            and "make_predict_function.<locals>" in message
        )


logging.getLogger("tensorflow").addFilter(_CrossModelRetracingNotice())


def to_numpy(values) -> np.ndarray:
    """A predictor's output as a float32 numpy array (backend tensors are converted)."""
    if isinstance(values, (list, tuple, dict)):
        raise ValueError(
            "the predictor returned several outputs "
            f"({type(values).__name__}); inference expects a single output tensor, "
            "e.g. build the model without deep-supervision heads"
        )
    if not isinstance(values, np.ndarray):
        import keras

        values = keras.ops.convert_to_numpy(values)
    return np.asarray(values, dtype=np.float32)


def as_batch_predictor(predictor) -> Callable[[np.ndarray], np.ndarray]:
    """``predictor`` as a function from a numpy batch to a float32 numpy batch.

    A Keras model is run through ``predict_on_batch`` (its compiled inference function, with
    ``training=False``); any other callable is called on the batch as it is.

    Args:
        predictor: a ``keras.Model`` or a callable ``batch -> batch``.
    """
    if hasattr(predictor, "predict_on_batch"):
        run = predictor.predict_on_batch
    elif callable(predictor):
        run = predictor
    else:
        raise ValueError(
            f"predictor must be a keras Model or a callable batch -> batch, got {predictor!r}"
        )

    def predict(batch: np.ndarray) -> np.ndarray:
        return to_numpy(run(batch))

    return predict
