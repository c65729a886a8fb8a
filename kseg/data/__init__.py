"""From TFDS examples to batches: patient splits, the slice-example contract the builders
write, tf.data building blocks, patch sampling and 3D preprocessing.

Submodules load on first use: ``kseg.data.splits`` and ``kseg.data.examples`` are
numpy-only, ``kseg.data.pipeline`` and ``kseg.data.patches`` import TensorFlow.
"""

import importlib

_SUBMODULES = (
    "examples",
    "patches",
    "pipeline",
    "preprocess3d",
    "splits",
)


def __getattr__(name):
    if name in _SUBMODULES:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module 'kseg.data' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + list(_SUBMODULES))
