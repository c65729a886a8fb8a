"""How kseg's work scales from one worker to two, on this machine.

Prints one table, one row per measurement: what was run, on how many workers, and its
throughput. Every row runs on a synthetic phantom and measures the whole job as a user runs
it, start-up included (for Beam: launching the worker processes, which import TensorFlow),
so small jobs show the fixed cost and large jobs the per-item rate; ``--scale`` makes the
jobs larger.

Rows (each a function in :data:`ROWS`):

- TFDS generation of the ``chaos/ct`` dataset: examples (slices) written per second by the
  plain path, and by the Beam DirectRunner in multi-process mode with 1 and 2 worker
  processes (:mod:`tfds_builders._beam`);
- batch prediction of NIfTI volumes with a small saved 2D model: volumes per second with 1
  and 2 Beam worker processes (:mod:`kseg.inference.beam`).

To add a measurement, write a function ``row(workdir: pathlib.Path, scale: int) -> Row``
and append it to :data:`ROWS` (``functools.partial`` fixes a worker count). Rows run one
after the other, each in its own scratch folder, so they never compete for the cores.

Usage:
    python benchmarks/scaling.py                  # all rows
    python benchmarks/scaling.py --only generation --scale 2
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import os
import pathlib
import tempfile
import time
from collections.abc import Callable

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402


@dataclasses.dataclass(frozen=True)
class Row:
    """One measurement.

    Attributes:
        task: what ran (e.g. ``"chaos/ct generation, Beam DirectRunner"``).
        workers: worker processes (1 for a plain, single-process run).
        items: how many units of work were done.
        unit: what an item is (``"examples"``, ``"volumes"``, ``"steps"``, ``"trials"``).
        seconds: wall-clock time of the whole job.
        rate_per: the time unit of the rate (``"s"`` or ``"h"``).
        load: the 1-minute load average when the row started (filled in by :func:`main`):
            a second worker only helps when a core is free.
    """

    task: str
    workers: int
    items: int
    unit: str
    seconds: float
    rate_per: str = "s"
    load: float | None = None

    @property
    def rate(self) -> float:
        return self.items / self.seconds * (3600.0 if self.rate_per == "h" else 1.0)


def _beam_options(workers: int):
    from apache_beam.options.pipeline_options import PipelineOptions

    return PipelineOptions(
        flags=[], direct_running_mode="multi_processing", direct_num_workers=workers
    )


# --- TFDS generation --------------------------------------------------------------------------


def _chaos_phantom(workdir: pathlib.Path, scale: int) -> pathlib.Path:
    from kseg.phantoms.chaos import write_chaos

    manual = workdir.parent / "chaos_manual"
    if not manual.exists():  # shared by the generation rows: one phantom, several datasets
        write_chaos(
            manual,
            modality="CT",
            num_patients=6 * scale,
            num_slices=24,
            size=256,
            seed=0,
            progress=False,
        )
    return manual


def generation(workdir: pathlib.Path, scale: int, *, workers: int | None) -> Row:
    """Examples per second preparing ``chaos/ct`` (5 folds); ``workers=None``: plain path."""
    import tensorflow_datasets as tfds

    import tfds_builders.chaos  # noqa: F401  (registers "chaos")

    manual = _chaos_phantom(workdir, scale)
    beam = {} if workers is None else {"beam_options": _beam_options(workers)}
    builder = tfds.builder("chaos/ct", data_dir=str(workdir / "tfds"))
    start = time.perf_counter()
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=str(manual), **beam)
    )
    seconds = time.perf_counter() - start
    examples = sum(split.num_examples for split in builder.info.splits.values())
    task = "chaos/ct generation, " + ("plain" if workers is None else "Beam DirectRunner")
    return Row(task, workers or 1, examples, "examples", seconds)


# --- batch prediction -------------------------------------------------------------------------

_INFERENCE_SIZE = 128
_INFERENCE = {
    "kind": "slices",
    "window": [-100.0, 200.0],
    "image_size": [_INFERENCE_SIZE, _INFERENCE_SIZE],
    "num_classes": 2,
}


def _inference_inputs(workdir: pathlib.Path, scale: int):
    import keras
    import nibabel as nib

    folder = workdir.parent / "inference_inputs"
    model_path = folder / "model.keras"
    if not model_path.exists():
        rng = np.random.default_rng(0)
        volumes = folder / "volumes"
        volumes.mkdir(parents=True)
        for index in range(8 * scale):
            hu = rng.normal(0.0, 30.0, size=(256, 256, 32)).astype(np.int16)
            nib.save(
                nib.Nifti1Image(hu, np.diag([0.8, 0.8, 2.5, 1.0])),
                str(volumes / f"case_{index:03d}.nii.gz"),
            )
        keras.utils.set_random_seed(0)
        inputs = keras.Input((_INFERENCE_SIZE, _INFERENCE_SIZE, 1))
        hidden = keras.layers.Conv2D(16, 3, padding="same", activation="relu")(inputs)
        hidden = keras.layers.Conv2D(16, 3, padding="same", activation="relu")(hidden)
        outputs = keras.layers.Conv2D(2, 1, activation="softmax")(hidden)
        keras.Model(inputs, outputs).save(model_path)
    return folder / "volumes", model_path


def batch_prediction(workdir: pathlib.Path, scale: int, *, workers: int) -> Row:
    """Volumes (256 x 256 x 32 NIfTI, a 2D model on 128 x 128 slices) per second."""
    from kseg.inference.beam import predict_volumes

    volumes, model_path = _inference_inputs(workdir, scale)
    start = time.perf_counter()
    result = predict_volumes(
        model_path,
        _INFERENCE,
        [volumes],
        workdir / "predictions",
        labels={"foreground": 1},
        beam_options=_beam_options(workers),
    )
    seconds = time.perf_counter() - start
    return Row(
        "batch prediction, Beam DirectRunner", workers, len(result.written), "volumes", seconds
    )


# --- the table --------------------------------------------------------------------------------

RowFunction = Callable[[pathlib.Path, int], Row]

ROWS: list[RowFunction] = [
    functools.partial(generation, workers=None),
    functools.partial(generation, workers=1),
    functools.partial(generation, workers=2),
    functools.partial(batch_prediction, workers=1),
    functools.partial(batch_prediction, workers=2),
]


def _name(function: RowFunction) -> str:
    return getattr(function, "func", function).__name__


def format_table(rows: list[Row]) -> str:
    """A Markdown table of ``rows``."""
    lines = [
        "| task | workers | items | seconds | rate | load before |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        load = "" if row.load is None else f"{row.load:.1f}"
        lines.append(
            f"| {row.task} | {row.workers} | {row.items} {row.unit} | {row.seconds:.1f} | "
            f"{row.rate:.2f} {row.unit}/{row.rate_per} | {load} |"
        )
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", nargs="*", help="run only the rows of these functions")
    parser.add_argument("--scale", type=int, default=1, help="multiply the job sizes")
    args = parser.parse_args(argv)
    selected = [f for f in ROWS if not args.only or _name(f) in args.only]
    print(f"{os.cpu_count()} CPU cores", flush=True)
    rows = []
    with tempfile.TemporaryDirectory(prefix="kseg-scaling-") as scratch:
        for index, function in enumerate(selected):
            workdir = pathlib.Path(scratch) / f"row{index}"
            workdir.mkdir()
            load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
            rows.append(dataclasses.replace(function(workdir, args.scale), load=load))
            print(format_table(rows[-1:]).splitlines()[-1], flush=True)
    print()
    print(format_table(rows))


if __name__ == "__main__":
    main()
