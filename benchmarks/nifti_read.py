"""Seconds and peak memory of ``kseg.io.read_nifti`` on .nii.gz files.

Each read runs in a fresh Python process, so its peak resident memory (``ru_maxrss``) is
that read's alone plus the interpreter, numpy and nibabel (the "import only" row). The time
is that of the ``read_nifti`` call, imports excluded; the table shows the median and the
fastest of ``--repeats`` processes.

Without file arguments it writes a CT-like 512 x 512 x 200 int16 volume (smooth anatomy
plus noise; 100 MiB of voxels, 59 MB gzipped) into a temporary folder and reads that; give
.nii.gz paths to read those instead. ``PYTHONPATH`` selects which kseg is measured (default:
this checkout's), e.g. an older one unpacked with
``git archive <commit> kseg | tar -x -C /tmp/old``.

    python benchmarks/nifti_read.py --repeats 5
    python benchmarks/nifti_read.py /work/shared/data/totalseg-ct/example_ct_sm.nii.gz
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_CHILD = """
import json, resource, sys, time
import numpy as np
from kseg.io import read_nifti
path = sys.argv[1]
seconds = 0.0
if path:
    start = time.perf_counter()
    volume = read_nifti(path)
    seconds = time.perf_counter() - start
peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"seconds": seconds, "peak_mb": peak_kb / 1024}))
"""


def write_ct_like(path: str, shape=(512, 512, 200), seed: int = 0) -> None:
    """A body-sized int16 volume: air outside an ellipse of soft tissue with a denser core,
    plus Gaussian noise (sd 20 HU), so deflate compresses it about as much as a real CT."""
    import nibabel as nib
    import numpy as np

    rng = np.random.default_rng(seed)
    i, j = np.mgrid[: shape[0], : shape[1]]
    radius = ((i - shape[0] / 2) / (0.45 * shape[0])) ** 2 + (
        (j - shape[1] / 2) / (0.35 * shape[1])
    ) ** 2
    plane = np.where(radius < 1, 40, -1000) + np.where(radius < 0.1, 300, 0)
    volume = np.empty(shape, np.int16)
    for k in range(shape[2]):
        volume[:, :, k] = plane + rng.normal(0, 20, shape[:2])
    nib.save(nib.Nifti1Image(volume, np.diag([0.8, 0.8, 1.5, 1.0])), path)


def measure(path: str, folder: str) -> dict:
    # The child runs in ``folder``: ``python -c`` puts its working directory first on
    # sys.path, and the repository root there would shadow the kseg PYTHONPATH names.
    env = dict(os.environ, PYTHONPATH=os.environ.get("PYTHONPATH") or ROOT)
    output = subprocess.run(
        [sys.executable, "-c", _CHILD, path],
        check=True, capture_output=True, text=True, cwd=folder, env=env,
    ).stdout
    return json.loads(output.splitlines()[-1])


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("paths", nargs="*", help=".nii.gz files (default: a generated CT)")
    parser.add_argument("--repeats", type=int, default=3, help="processes per file")
    parser.add_argument("--write", metavar="PATH", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.write:
        write_ct_like(args.write)
        return
    with tempfile.TemporaryDirectory() as folder:
        paths = [os.path.abspath(path) for path in args.paths]  # the child runs elsewhere
        if not paths:
            paths = [os.path.join(folder, "ct_512x512x200_int16.nii.gz")]
            # In a child too: ru_maxrss carries over from parent to child, so a parent that
            # had held the volume would raise every later child's peak.
            subprocess.run([sys.executable, os.path.abspath(__file__), "--write", paths[0]],
                           check=True)
        print(f"{'file':<40} {'MB on disk':>10} {'s median':>9} {'s min':>7} {'peak MB':>8}")
        for path in ["", *paths]:
            runs = [measure(path, folder) for _ in range(args.repeats)]
            seconds = [run["seconds"] for run in runs]
            name = os.path.basename(path) if path else "(import only)"
            size = os.path.getsize(path) / 1e6 if path else 0.0
            print(
                f"{name:<40} {size:>10.1f} {statistics.median(seconds):>9.3f} "
                f"{min(seconds):>7.3f} {max(run['peak_mb'] for run in runs):>8.0f}"
            )


if __name__ == "__main__":
    main()
