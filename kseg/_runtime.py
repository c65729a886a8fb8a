"""TensorFlow settings kseg picks for the CPU, applied when ``kseg`` is imported.

TensorFlow reads them once, when it is imported, so they are environment variables set
before that; ``import kseg`` itself stays free of TensorFlow (``kseg --help`` is instant),
and every kseg module that needs TensorFlow imports it after this ran. A variable the
user has set is never changed, and ``KSEG_RUNTIME_DEFAULTS=0`` leaves all of them alone.

``TF_ENABLE_ONEDNN_OPTS=1``: TensorFlow turns its oneDNN kernels on by default only on
CPUs with AVX-512 VNNI / BF16 or AMX; on an AVX2-only AMD EPYC they stayed off and the
HighResNet sliding window ran 1.9x slower (59-61 s vs 31.6 s) for 27 % less peak memory
(1603 vs 2192 MiB) (issue 9). On an AVX-512 EPYC (Zen 5), where they are on by default,
turning them off cut the 3D convolution from 222 to 109 GFLOP per CPU-second and U-Net
training from 101 to 44, for about the same peak memory (``benchmarks/cpu_path.py``).
With the variable set, every x86 CPU takes the faster path.

What kseg leaves to TensorFlow, measured with ``benchmarks/cpu_path.py``: the thread
pools (TensorFlow sizes them to the CPUs the process may run on; one thread each gave no
more work per CPU-second), the layout (NHWC, channels last: with oneDNN off TensorFlow
refuses NCHW convolutions on the CPU, with it on they run but do less work per
CPU-second) and float32 (``keras.mixed_precision.set_global_policy("mixed_bfloat16")``
is faster where the CPU has AVX-512 BF16 or AMX, but it is a precision choice, left to
the user).
"""

from __future__ import annotations

import os
import sys
import warnings

#: Environment variables kseg sets when the user has not.
ENVIRONMENT_DEFAULTS = {"TF_ENABLE_ONEDNN_OPTS": "1"}
#: Set to ``0`` to keep TensorFlow's own defaults.
OPT_OUT_VARIABLE = "KSEG_RUNTIME_DEFAULTS"


def apply_defaults(environ=None) -> dict[str, str]:
    """Set each of :data:`ENVIRONMENT_DEFAULTS` that ``environ`` does not hold yet.

    Args:
        environ: the mapping to update; ``os.environ`` when ``None``.

    Returns:
        the variables this call set, with their values (empty when the user opted out
        with ``KSEG_RUNTIME_DEFAULTS=0`` or had set them all).
    """
    environ = os.environ if environ is None else environ
    if environ.get(OPT_OUT_VARIABLE, "1").strip() == "0":
        return {}
    applied = {}
    for name, value in ENVIRONMENT_DEFAULTS.items():
        if name not in environ:
            environ[name] = value
            applied[name] = value
    if applied and "tensorflow" in sys.modules:
        _warn_if_onednn_missed(applied)
    return applied


def _onednn_enabled() -> bool:
    from tensorflow.python.util import _pywrap_util_port

    return bool(_pywrap_util_port.IsMklEnabled())


def _warn_if_onednn_missed(applied) -> None:
    """TensorFlow was imported before kseg: the variable came too late to count. Say so
    only where it costs something, i.e. TensorFlow left oneDNN off."""
    if "TF_ENABLE_ONEDNN_OPTS" not in applied:
        return
    try:
        enabled = _onednn_enabled()
    except (ImportError, AttributeError):  # a TensorFlow without the probe: nothing to tell
        return
    if not enabled:
        warnings.warn(
            "TensorFlow was imported before kseg with its oneDNN kernels off, which makes "
            "convolutions on this CPU up to ~2x slower; import kseg first or set "
            "TF_ENABLE_ONEDNN_OPTS=1 before starting Python (TF_ENABLE_ONEDNN_OPTS=0 "
            "silences this)",
            RuntimeWarning,
            stacklevel=3,
        )
