"""Every ``>>>`` example in kseg's docstrings runs and shows what it claims.

Examples are run with the standard library's doctest, one test per module, in a fresh
working and temporary directory (an example that saves a file must not write into the
checkout or leave folders in /tmp) and under
numpy's default print options (an earlier test may have changed them, and array reprs are
compared as text). Examples marked ``# doctest: +SKIP`` need data, checkpoints or training
that cannot be made cheap; they are kept correct by reading. A module is collected when at
least one of its examples runs, found by parsing the source, so a new module with examples
is covered without editing this file.
"""

import ast
import doctest
import importlib
import io
import pathlib
import tempfile
import types

import numpy as np
import pytest

KSEG = pathlib.Path(__file__).resolve().parent.parent / "kseg"
# Running the package's __main__ starts the CLI.
NOT_IMPORTABLE = {"kseg.__main__"}
# Their examples write DICOM-SEG files, and highdicom (kseg[seg]) is imported only to write.
EXAMPLES_NEED = {"kseg.io.dicom_seg": "highdicom", "kseg.predict": "highdicom"}

# numpy's defaults, spelled out: np.printoptions() with no arguments keeps whatever an
# earlier test set.
NUMPY_DEFAULT_PRINT = dict(
    precision=8,
    threshold=1000,
    edgeitems=3,
    linewidth=75,
    suppress=False,
    nanstr="nan",
    infstr="inf",
    sign="-",
    floatmode="maxprec",
    legacy=False,
)


def _module_name(path: pathlib.Path) -> str:
    parts = path.relative_to(KSEG.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _docstrings(source: str):
    tree = ast.parse(source)
    nodes = [tree, *ast.walk(tree)]
    kinds = (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)
    return [ast.get_docstring(node, clean=True) or "" for node in nodes if isinstance(node, kinds)]


def _has_running_example(source: str) -> bool:
    parser = doctest.DocTestParser()
    return any(
        not example.options.get(doctest.SKIP, False)
        for docstring in _docstrings(source)
        for example in parser.get_examples(docstring)
    )


def modules_with_examples() -> list[str]:
    return sorted(
        name
        for path in KSEG.rglob("*.py")
        if (name := _module_name(path)) not in NOT_IMPORTABLE
        and _has_running_example(path.read_text(encoding="utf-8"))
    )


def run_examples(module: types.ModuleType) -> tuple[doctest.TestResults, str]:
    """Run a module's doctests; the results and the report of every failure."""
    # ELLIPSIS is pytest's default doctest_optionflags, so `pytest --doctest-modules kseg`
    # and this test agree on every example.
    runner = doctest.DocTestRunner(verbose=False, optionflags=doctest.ELLIPSIS)
    report = io.StringIO()
    with np.printoptions(**NUMPY_DEFAULT_PRINT):
        for test in doctest.DocTestFinder().find(module, module.__name__):
            runner.run(test, out=report.write)
    return runner.summarize(verbose=False), report.getvalue()


MODULES = modules_with_examples()


def test_collection_finds_the_modules_with_examples():
    # Modules whose examples were usage sketches until they were made to run.
    made_runnable = {"kseg.geometry", "kseg.evaluation", "kseg.io.dicom_seg", "kseg.predict"}
    assert made_runnable | {"kseg.metrics", "kseg.losses"} <= set(MODULES)  # always ran
    assert not {"kseg.__main__", "kseg.errors"} & set(MODULES)  # no example runs there


@pytest.mark.parametrize("module_name", MODULES)
def test_docstring_examples_run(module_name, tmp_path, monkeypatch):
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        if error.name and error.name.split(".")[0] == "kseg":
            raise
        pytest.skip(f"{module_name} needs the optional package {error.name}")
    if module_name in EXAMPLES_NEED:
        pytest.importorskip(EXAMPLES_NEED[module_name])
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # the examples' mkdtemp() folders
    results, report = run_examples(module)
    assert results.failed == 0, f"{results.failed} example(s) of {module_name} failed:\n{report}"
    assert results.attempted > 0


def test_a_wrong_example_fails_its_module():
    module = types.ModuleType("wrong_example")
    module.__doc__ = ">>> 0.1 + 0.2\n0.3\n"
    results, report = run_examples(module)
    assert (results.failed, results.attempted) == (1, 1)
    assert "0.30000000000000004" in report


def test_examples_see_numpy_default_print_options():
    module = types.ModuleType("print_options")
    module.__doc__ = ">>> import numpy as np\n>>> np.array([1 / 3])\narray([0.33333333])\n"
    with np.printoptions(precision=2):
        results, report = run_examples(module)
    assert results.failed == 0, report
