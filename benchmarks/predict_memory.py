"""Peak memory of ``kseg predict`` on a folder of NIfTI volumes, against the number of volumes.

Each prediction runs ``kseg.predict.predict_command`` (what ``kseg predict RUN --input
FOLDER --output OUT --format nifti`` runs) in a fresh Python process, so its peak resident
memory (``ru_maxrss``) is that command's alone. The run folder holds a 2D model of one 3x3
convolution, so the table shows what the command holds of its inputs and predictions, not a
network's activations. Volumes are float32 CT-like noise of ``--shape`` slices x rows x
columns (``.nii.gz``). ``PYTHONPATH`` selects which kseg is measured (default: this
checkout's; the process starts in a temporary folder, so the working folder does not), e.g.
an older one unpacked with ``git archive <commit> kseg | tar -x -C /tmp/old``.

    python benchmarks/predict_memory.py --counts 1 4 8
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_CHILD = """
import json, resource, sys, time
from kseg.predict import predict_command
start = time.perf_counter()
written = predict_command(sys.argv[1], sys.argv[2], sys.argv[3], "nifti")
seconds = time.perf_counter() - start
peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"seconds": seconds, "peak_mib": peak_kb / 1024, "written": len(written)}))
"""


def write_run(run_dir: str, shape) -> None:
    import keras

    os.makedirs(run_dir)
    inputs = keras.Input((None, None, 1))
    outputs = keras.layers.Conv2D(1, 3, padding="same", activation="sigmoid")(inputs)
    keras.Model(inputs, outputs).save(os.path.join(run_dir, "best.keras"))
    inference = {"kind": "slices", "window": "abdomen", "image_size": list(shape[1:]),
                 "num_classes": 1, "threshold": 0.5, "postprocess": "none",
                 "modality": "CT"}  # fmt: skip
    config = {"kseg_config_version": 1, "recipe": "chaos_liver", "arguments": {}, "seed": 0,
              "created": "2026-12-03T00:00:00+00:00", "versions": {}, "git_commit": None,
              "dataset": {"name": "benchmark"}, "labels": {"organ": 1},
              "inference": inference}  # fmt: skip
    with open(os.path.join(run_dir, "config.json"), "w") as file:
        json.dump(config, file)


def write_volumes(folder: str, count: int, shape) -> None:
    import nibabel as nib
    import numpy as np

    os.makedirs(folder)
    rng = np.random.default_rng(0)
    for index in range(count):
        hu = rng.normal(40.0, 300.0, size=shape[::-1]).astype(np.float32)
        nib.save(nib.Nifti1Image(hu, np.eye(4)), os.path.join(folder, f"case_{index:03d}.nii.gz"))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--counts", type=int, nargs="+", default=[1, 4, 8])
    parser.add_argument("--shape", type=int, nargs=3, default=[64, 256, 256],
                        metavar=("SLICES", "ROWS", "COLUMNS"))  # fmt: skip
    args = parser.parse_args(argv)
    environment = dict(os.environ)
    environment.setdefault("PYTHONPATH", ROOT)
    environment.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    volume_mib = 4 * args.shape[0] * args.shape[1] * args.shape[2] / 2**20
    print(f"kseg from {environment['PYTHONPATH']}; volumes {tuple(args.shape)} float32, "
          f"{volume_mib:.0f} MiB each")  # fmt: skip
    print("| volumes | peak RSS MiB | seconds |")
    print("|---|---|---|")
    with tempfile.TemporaryDirectory() as work:
        run_dir = os.path.join(work, "run")
        write_run(run_dir, args.shape)
        for count in args.counts:
            folder = os.path.join(work, f"in_{count}")
            write_volumes(folder, count, args.shape)
            result = subprocess.run(
                [sys.executable, "-c", _CHILD, run_dir, folder, os.path.join(work, f"out_{count}")],
                capture_output=True, text=True, env=environment, check=True, cwd=work,
            )  # fmt: skip
            row = json.loads(result.stdout.strip().splitlines()[-1])
            print(f"| {count} | {row['peak_mib']:.0f} | {row['seconds']:.1f} |")


if __name__ == "__main__":
    main()
