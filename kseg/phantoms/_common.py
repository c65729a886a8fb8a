"""What every phantom writer shares: the synthetic marking, seed checks and scrambled orders."""

from __future__ import annotations

import numpy as np

SYNTHETIC_NOTICE = "synthetic kseg phantom"
"""The note every phantom file carries (DICOM ImageComments, PNG Comment, NIfTI descrip)."""

IMPLEMENTATION_VERSION_NAME = "KSEG_PHANTOM"
"""The DICOM file meta ImplementationVersionName of every phantom DICOM file."""


def check_seed(seed) -> int:
    """``seed`` as an ``int``; raises ``ValueError`` unless it is a non-negative integer."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    return int(seed)


def scrambled_permutation(
    n: int, rng: np.random.Generator, avoid: np.ndarray | None = None
) -> np.ndarray:
    """A random permutation of ``0..n-1`` that is neither ascending nor (for n > 2)
    descending, nor equal to ``avoid`` (for n > 3), so no ordering shortcut holds."""
    identity = np.arange(n)
    if n < 2:
        return identity
    forbidden = [identity]
    if n > 2:
        forbidden.append(identity[::-1])
    if avoid is not None and n > 3:
        forbidden.append(np.asarray(avoid))
    while True:
        permutation = rng.permutation(n)
        if not any(np.array_equal(permutation, f) for f in forbidden):
            return permutation
