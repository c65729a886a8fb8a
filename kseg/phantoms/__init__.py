"""Synthetic patients written in each dataset's official on-disk layout, so that examples,
tests and the builders' ``dummy_data/`` run the whole pipeline without the real data.

One module per dataset: ``chaos`` (abdominal CT / MR, DICOM + PNG masks), ``lctsc`` (chest
CT + RTSTRUCT, or DICOM + npz masks), ``xray`` (chest radiographs: JSRT/SCR, Montgomery,
generic) and ``msd_spleen`` (NIfTI, Task09_Spleen). Each has a command line,
``python -m kseg.phantoms.<dataset> DIR``. Every file they write says it is synthetic
(:data:`SYNTHETIC_NOTICE`); the formats themselves are written by :mod:`kseg.io`.

Submodules load on first use; none imports TensorFlow.
"""

import importlib

from kseg.phantoms._common import SYNTHETIC_NOTICE

__all__ = ["SYNTHETIC_NOTICE"]

_SUBMODULES = ("chaos", "lctsc", "msd_spleen", "xray")


def __getattr__(name):
    if name in _SUBMODULES:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module 'kseg.phantoms' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + list(_SUBMODULES))
