"""kseg: Keras 3 / TensorFlow medical image segmentation, from challenge files to
per-patient results.

Subpackages load on first use, so ``import kseg.io`` (pure numpy / pydicom) does not pay
for importing TensorFlow.
"""

import importlib

__version__ = "0.1.0"

_SUBMODULES = (
    "augment",
    "data",
    "errors",
    "evaluation",
    "geometry",
    "inference",
    "io",
    "losses",
    "metrics",
    "models",
    "training",
    "tuning",
    "viz",
)


def __getattr__(name):
    if name in _SUBMODULES:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module 'kseg' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + list(_SUBMODULES))
