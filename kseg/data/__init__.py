"""From TFDS examples to batches: patient splits, tf.data building blocks, patch sampling,
and the synthetic phantoms written in each dataset's official on-disk layout.

Submodules load on first use: ``kseg.data.splits`` and the phantom writers are numpy-only,
``kseg.data.pipeline`` and ``kseg.data.patches`` import TensorFlow.
"""

import importlib

_SUBMODULES = (
    "chest_phantom",
    "patches",
    "phantoms",
    "pipeline",
    "preprocess3d",
    "spleen_phantom",
    "splits",
    "xray_phantom",
)


def __getattr__(name):
    if name in _SUBMODULES:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module 'kseg.data' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + list(_SUBMODULES))
