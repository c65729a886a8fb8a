"""Shared fixtures.

The real sample data in ``../shared/data`` (see its README) sits beside the checkout in
development and CI, and is absent on a user's machine: tests that need it ask for the
``shared_data`` fixture and are skipped cleanly when it is not there.
"""

import atexit
import os
import pathlib
import shutil
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# TensorFlow Datasets leaves an empty mkdtemp folder for each builder it constructs before
# the data are prepared, and Beam leaves its temp folders: one run of the suite left about
# 260 in /tmp. Every process of the run (xdist workers, the multi-process tests' children,
# which inherit TMPDIR) makes them in one folder, removed when the process that made it
# exits; pytest's own tmp_path stays where it was (PYTEST_DEBUG_TEMPROOT).
os.environ.setdefault("PYTEST_DEBUG_TEMPROOT", tempfile.gettempdir())
if "KSEG_TESTS_TMPDIR" not in os.environ:
    _RUN_TMPDIR = tempfile.mkdtemp(prefix="kseg-tests-")
    os.environ["KSEG_TESTS_TMPDIR"] = os.environ["TMPDIR"] = _RUN_TMPDIR
    tempfile.tempdir = _RUN_TMPDIR
    atexit.register(shutil.rmtree, _RUN_TMPDIR, ignore_errors=True)

import pytest  # noqa: E402

_BESIDE_CHECKOUT = pathlib.Path(__file__).resolve().parents[2] / "shared" / "data"
SHARED_DATA = pathlib.Path(os.environ.get("KSEG_SHARED_DATA", _BESIDE_CHECKOUT))


@pytest.fixture(scope="session")
def zygote(tmp_path_factory):
    """One process per test worker that imports TensorFlow once and forks the children of
    the multi-process and fresh-process tests (tests/child_processes.py): each child would
    otherwise pay the import, about 6 CPU-s."""
    from child_processes import Zygote

    with Zygote(tmp_path_factory.mktemp("zygote")) as forking:
        yield forking


@pytest.fixture(scope="session")
def shared_data() -> pathlib.Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real sample data not found at {SHARED_DATA}")
    return SHARED_DATA


# Test files heaviest first, by their seconds in quiet two-core runs of the whole suite (each
# test's completion time per worker with -v, session 20; every file above 9 s in one of two
# runs; session 23's new files that train, by their times run alone). pytest-xdist's --dist
# loadfile hands whole files to its workers in collection order
# (setup.cfg turns off its own reordering, which puts the files with the MOST tests first and
# so left the few-test, long multi-process files to run alone at the end while the other
# worker idled); long files first, short ones fill the gaps. A file not listed comes after
# these, those holding a test marked slow first, each group in collection order.
HEAVIEST_FIRST = (
    "tests/test_cli.py",
    "tests/test_tuning_staged.py",
    "tests/test_cross_validation.py",
    "tests/test_examples_2d.py",
    "tests/test_studies.py",
    "tests/test_resume_kill.py",
    "tests/test_recipes.py",
    "tests/test_multi_worker.py",
    "tests/test_examples.py",
    "tests/test_distributed_tuner.py",
    "tests/test_models.py",
    "tests/test_recipes_strategy.py",
    "tests/test_beam_generation.py",
    "tests/test_tracking.py",
    "tests/test_consistency.py",
    "tfds_builders/xray/xray_dataset_builder_test.py",
    "tests/test_report.py",
    "tests/test_tuning.py",
    "tests/test_predict.py",
    "tests/test_plan_hunt.py",
    "tests/test_run_guards.py",
    "tests/test_inference_hunt.py",
    "tests/test_training_hunt.py",
    "tfds_builders/lctsc/lctsc_dataset_builder_test.py",
    "tests/test_beam_inference.py",
    "tfds_builders/chaos/chaos_dataset_builder_test.py",
    "tfds_builders/msd_spleen/msd_spleen_dataset_builder_test.py",
    "tests/test_docstring_examples.py",
    "tests/test_fused_batch_norm.py",
    "tests/test_recorded_postprocessing.py",
    "tests/test_runtime.py",
)


def pytest_collection_modifyitems(config, items):
    rank = {path: index for index, path in enumerate(HEAVIEST_FIRST)}
    for item in items:
        path = item.nodeid.split("::")[0]
        if path not in rank and item.get_closest_marker("slow") is not None:
            rank[path] = len(HEAVIEST_FIRST)
    # a stable sort: each file's tests stay together and in their own order
    items.sort(key=lambda item: rank.get(item.nodeid.split("::")[0], len(HEAVIEST_FIRST) + 1))


def pytest_collection_finish(session):
    """Keras Tuner runs ``gc.collect()`` before every trial; with TensorFlow, Keras and every
    test module loaded, each full collection walked their millions of objects (~0.5 s;
    the tuning files' 89 tests took 45 s, 20 s with this). Frozen, the objects collection
    loaded are skipped; what the tests make after it is collected as before."""
    import gc

    gc.freeze()
