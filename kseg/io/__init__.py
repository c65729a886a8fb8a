"""Readers for the formats challenge datasets ship; every reader returns a Volume."""

from kseg.io.volume import Volume

__all__ = ["Volume"]
