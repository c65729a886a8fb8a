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


# Modules that register Keras objects (layers, losses, metrics) under the "kseg" package.
_KERAS_REGISTRIES = ("kseg.augment", "kseg.losses", "kseg.metrics", "kseg.models")


def load_model(filepath, **kwargs):
    """Load a ``.keras`` file saved from a kseg model, with no ``custom_objects``.

    ``keras.saving.load_model`` finds kseg's layers, losses and metrics by their registered
    names (``kseg>DiceLoss`` ...) only once the modules defining them are imported; kseg
    loads its subpackages lazily, so this imports them first.

    Args:
        filepath: path of the ``.keras`` file.
        **kwargs: passed to ``keras.saving.load_model`` (e.g. ``compile=False``).

    Example:
        >>> model = kseg.load_model("runs/chaos_liver/best.keras")  # doctest: +SKIP
    """
    for module in _KERAS_REGISTRIES:
        importlib.import_module(module)
    import keras

    return keras.saving.load_model(filepath, **kwargs)


def __getattr__(name):
    if name in _SUBMODULES:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module 'kseg' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + list(_SUBMODULES))
