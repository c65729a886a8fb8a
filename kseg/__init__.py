"""kseg: Keras 3 / TensorFlow medical image segmentation, from challenge files to
per-patient results.

Subpackages load on first use, so ``import kseg.io`` (pure numpy / pydicom) does not pay
for importing TensorFlow. Importing kseg sets TensorFlow's CPU options that the user has
not set (``TF_ENABLE_ONEDNN_OPTS=1``; :mod:`kseg._runtime`), so import kseg before
TensorFlow or Keras.
"""

import importlib

from kseg import _runtime

__version__ = "0.1.0"

# Before any kseg module imports TensorFlow, which reads these once (see kseg._runtime).
_runtime.apply_defaults()

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
    "phantoms",
    "plan",
    "predict",
    "recipes",
    "report",
    "studies",
    "tracking",
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

    The file is checked before Keras reads it, because Keras reports a truncated or foreign
    file as "File not found" and a zip without a model as a bare ``KeyError``.

    Args:
        filepath: path of the ``.keras`` file (a zip archive written by ``model.save``;
            legacy ``.h5`` / ``.hdf5`` files are passed to Keras as well).
        **kwargs: passed to ``keras.saving.load_model`` (e.g. ``compile=False``).

    Raises:
        FileNotFoundError: nothing exists at ``filepath``.
        kseg.errors.UnreadableFileError: ``filepath`` is a folder, is not a zip archive
            (truncated, empty or another format), is a zip archive without a Keras model
            in it, has a damaged member or a config.json that is not JSON, or holds a
            model Keras cannot rebuild (a class that neither Keras nor kseg registers, a
            Python lambda refused by ``safe_mode``); the message names the file and what
            was expected.
        TypeError: a keyword argument ``keras.saving.load_model`` does not take.

    Example:
        >>> import os
        >>> import tempfile
        >>> import keras
        >>> import kseg
        >>> net = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Conv2D(1, 1)])
        >>> dice = kseg.losses.DiceLoss(from_logits=True)
        >>> net.compile(optimizer="sgd", loss=dice)  # SGD: no per-weight state to restore
        >>> path = os.path.join(tempfile.mkdtemp(), "best.keras")
        >>> net.save(path)
        >>> model = kseg.load_model(path)  # kseg's loss found without custom_objects
        >>> type(model.loss).__name__, model.loss.from_logits
        ('DiceLoss', True)

        A training run's model: ``kseg.load_model("runs/chaos_liver/best.keras")``.
    """
    path = _checked_model_file(filepath)
    for module in _KERAS_REGISTRIES:
        importlib.import_module(module)
    import inspect
    import json
    import zipfile
    import zlib

    import keras

    try:  # a wrong keyword is the caller's error, not the file's: report it as Python would
        inspect.signature(keras.saving.load_model).bind(path, **kwargs)
    except TypeError as error:
        raise TypeError(f"kseg.load_model: {error}") from None
    try:
        return keras.saving.load_model(path, **kwargs)
    except json.JSONDecodeError as error:
        from kseg.errors import UnreadableFileError

        raise UnreadableFileError(
            path, f"holds a config.json that is not JSON ({error}); save the model again"
        ) from error
    except (TypeError, ValueError) as error:
        # Raised while rebuilding the model from its config: a class neither Keras nor kseg
        # registers, a config that does not fit its class, or a Python lambda refused by
        # safe_mode.
        from kseg.errors import UnreadableFileError

        raise UnreadableFileError(
            path,
            f"cannot be rebuilt as a Keras model ({type(error).__name__}: {error}); it was "
            "saved from code kseg does not provide, or is damaged",
        ) from error
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError) as error:
        # Only the archive's contents are left to fail here: its layout was checked.
        from kseg.errors import UnreadableFileError

        legacy = path.lower().endswith((".h5", ".hdf5"))
        kind = "legacy Keras .h5 model" if legacy else ".keras archive"
        raise UnreadableFileError(
            path, f"is a damaged {kind} ({error!r}); save the model again"
        ) from error


_KERAS_ARCHIVE = "a .keras model file (a zip archive written by model.save)"


def _checked_model_file(filepath) -> str:
    """``filepath`` as a string, or the reason it cannot hold a saved Keras model."""
    import errno
    import os
    import zipfile

    from kseg.errors import UnreadableFileError

    path = os.fspath(filepath)
    if not os.path.exists(path):
        raise FileNotFoundError(errno.ENOENT, f"no such file; expected {_KERAS_ARCHIVE}", path)
    if os.path.isdir(path):
        raise UnreadableFileError(
            path,
            f"is a folder; expected {_KERAS_ARCHIVE}. A TensorFlow SavedModel folder cannot "
            "be loaded as a Keras 3 model",
        )
    extension = os.path.splitext(path)[1].lower()
    if extension in (".h5", ".hdf5"):
        import h5py

        if not h5py.is_hdf5(path):
            raise UnreadableFileError(
                path,
                "is not an HDF5 file (truncated or another format?); expected a legacy "
                "Keras .h5 model",
            )
        return path
    if extension != ".keras":
        return path  # Keras names the formats it supports
    size = os.path.getsize(path)
    if not zipfile.is_zipfile(path):
        raise UnreadableFileError(
            path,
            f"is not a zip archive ({size} bytes: truncated, empty or another format); "
            f"expected {_KERAS_ARCHIVE}",
        )
    try:
        with zipfile.ZipFile(path) as archive:
            members = archive.namelist()
    except (zipfile.BadZipFile, OSError) as error:
        raise UnreadableFileError(path, f"is a damaged zip archive ({error})") from error
    if "config.json" not in members:
        raise UnreadableFileError(
            path,
            f"is a zip archive without config.json (it holds {sorted(members)[:5]}); "
            f"expected {_KERAS_ARCHIVE}",
        )
    return path


def __getattr__(name):
    if name in _SUBMODULES:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module 'kseg' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + list(_SUBMODULES))
