"""Shared fixtures.

The real sample data in ``../shared/data`` (see its README) sits beside the checkout in
development and CI, and is absent on a user's machine: tests that need it ask for the
``shared_data`` fixture and are skipped cleanly when it is not there.
"""

import os
import pathlib

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pytest  # noqa: E402

_BESIDE_CHECKOUT = pathlib.Path(__file__).resolve().parents[2] / "shared" / "data"
SHARED_DATA = pathlib.Path(os.environ.get("KSEG_SHARED_DATA", _BESIDE_CHECKOUT))


@pytest.fixture(scope="session")
def shared_data() -> pathlib.Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real sample data not found at {SHARED_DATA}")
    return SHARED_DATA
