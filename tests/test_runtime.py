"""kseg's TensorFlow CPU settings: set on import unless the user chose, and seen by TensorFlow."""

import os
import subprocess
import sys
import warnings

import pytest

from kseg import _runtime

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _python(code: str, **environment) -> subprocess.Popen:
    """Start a fresh interpreter with the given variables set (``None``: removed)."""
    env = dict(os.environ, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="3")
    for name in ("TF_ENABLE_ONEDNN_OPTS", _runtime.OPT_OUT_VARIABLE):
        env.pop(name, None)
    for name, value in environment.items():
        if value is not None:
            env[name] = value
    return subprocess.Popen(
        [sys.executable, "-c", code],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _output(process: subprocess.Popen) -> str:
    stdout, stderr = process.communicate(timeout=300)
    assert process.returncode == 0, stderr[-2000:]
    return stdout.strip()


def test_defaults_fill_only_unset_variables():
    environ = {}
    assert _runtime.apply_defaults(environ) == {"TF_ENABLE_ONEDNN_OPTS": "1"}
    assert environ == {"TF_ENABLE_ONEDNN_OPTS": "1"}
    users = {"TF_ENABLE_ONEDNN_OPTS": "0"}
    assert _runtime.apply_defaults(users) == {}
    assert users == {"TF_ENABLE_ONEDNN_OPTS": "0"}


@pytest.mark.parametrize("value", ["0", " 0 "])
def test_opt_out_leaves_the_environment_alone(value):
    environ = {"KSEG_RUNTIME_DEFAULTS": value}
    assert _runtime.apply_defaults(environ) == {}
    assert environ == {"KSEG_RUNTIME_DEFAULTS": value}


def test_import_sets_the_variable_without_importing_tensorflow():
    code = (
        "import os, sys, kseg; "
        "print(os.environ.get('TF_ENABLE_ONEDNN_OPTS'), 'tensorflow' in sys.modules)"
    )
    runs = {
        "unset": _python(code),
        "user 0": _python(code, TF_ENABLE_ONEDNN_OPTS="0"),
        "opted out": _python(code, KSEG_RUNTIME_DEFAULTS="0"),
    }
    assert {name: _output(run) for name, run in runs.items()} == {
        "unset": "1 False",
        "user 0": "0 False",
        "opted out": "None False",
    }


def test_tensorflow_sees_the_setting():
    # TensorFlow's own answer to "are the oneDNN kernels on", after `import kseg` came first.
    code = (
        "import kseg, tensorflow; "
        "from tensorflow.python.util import _pywrap_util_port as port; "
        "print(port.IsMklEnabled())"
    )
    runs = {"kseg's default": _python(code), "user 0": _python(code, TF_ENABLE_ONEDNN_OPTS="0")}
    assert {name: _output(run) for name, run in runs.items()} == {
        "kseg's default": "True",
        "user 0": "False",
    }


@pytest.mark.parametrize("enabled, warned", [(False, True), (True, False)])
def test_warns_when_tensorflow_came_first_with_onednn_off(monkeypatch, enabled, warned):
    monkeypatch.setitem(sys.modules, "tensorflow", sys.modules.get("tensorflow", object()))
    monkeypatch.setattr(_runtime, "_onednn_enabled", lambda: enabled)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _runtime.apply_defaults({})
    messages = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
    assert bool(messages) == warned
    if warned:
        assert "import kseg first" in messages[0]
