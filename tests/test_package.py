"""The names ``kseg`` advertises for lazy loading are modules that exist."""

import importlib.util

import kseg


def test_every_advertised_submodule_exists():
    missing = [
        name for name in kseg._SUBMODULES if importlib.util.find_spec(f"kseg.{name}") is None
    ]
    assert missing == []
    assert set(kseg._SUBMODULES) <= set(dir(kseg))
