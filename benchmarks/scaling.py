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
  and 2 Beam worker processes (:mod:`kseg.inference.beam`);
- training a small 2D U-Net with ``training_callbacks``: steps per second of one process and
  of two ``MultiWorkerMirroredStrategy`` worker processes on 127.0.0.1 with the same global
  batch (:mod:`kseg.training.distribute`);
- a Keras Tuner random search ranked by whole-volume Dice: trials per hour with a chief and
  1 or 2 worker processes (Keras Tuner's distributed mode, :mod:`kseg.tuning`).

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
import json
import os
import pathlib
import socket
import subprocess
import sys
import tempfile
import textwrap
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


# --- multi-worker training and distributed tuning --------------------------------------------

_REPOSITORY = pathlib.Path(__file__).resolve().parents[1]

_TRAINING = textwrap.dedent(
    """
    import sys

    import numpy as np

    from kseg.training import distribute

    run_dir, strategy_name, steps = sys.argv[1], sys.argv[2], int(sys.argv[3])
    distribution = distribute.strategy(strategy_name)  # first: it starts the worker's server

    import keras
    import tensorflow as tf

    from kseg.models import build
    from kseg.training import VolumeValidation, training_callbacks

    GLOBAL_BATCH, EPOCHS = 16, 2
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    images = rng.normal(size=(GLOBAL_BATCH * steps // EPOCHS, 64, 64, 1)).astype("float32")
    labels = (images[..., 0] > 0.5).astype("uint8")[..., None]
    train = tf.data.Dataset.from_tensor_slices((images, labels)).batch(GLOBAL_BATCH)
    train = distribute.shard(train, distribution)
    learning_rate = distribute.scaled_learning_rate(1e-3, GLOBAL_BATCH, base_batch_size=8)
    with distribution.scope():
        model = build("unet", input_shape=(64, 64, 1), num_classes=1, depth=2, base_filters=8)
        model.compile(optimizer=keras.optimizers.Adam(learning_rate), loss="binary_crossentropy")
    validation = VolumeValidation([("p0", images[:8], labels[:8, ..., 0], (1.0, 1.0, 1.0))])
    model.fit(train, epochs=EPOCHS, verbose=0,
              callbacks=training_callbacks(run_dir, validation, reduce_lr_patience=None))
    """
)


def _free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for one in sockets:
            one.bind(("127.0.0.1", 0))
        return [one.getsockname()[1] for one in sockets]
    finally:
        for one in sockets:
            one.close()


def _run_together(commands: list[tuple[list[str], dict]], timeout: float) -> float:
    """Start the processes together, wait for all; their wall-clock seconds.

    A process that fails or outlives ``timeout`` fails the row; every process is killed on
    the way out, so none outlives the benchmark.
    """
    processes = []
    start = time.perf_counter()
    try:
        for command, extra_environment in commands:
            environment = dict(os.environ, PYTHONPATH=str(_REPOSITORY), TF_CPP_MIN_LOG_LEVEL="2")
            environment.update(extra_environment)
            processes.append(
                subprocess.Popen(
                    command,
                    env=environment,
                    cwd=_REPOSITORY,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.PIPE,
                    text=True,
                )
            )
        deadline = time.monotonic() + timeout
        for process in processes:
            _, stderr = process.communicate(timeout=max(deadline - time.monotonic(), 1.0))
            if process.returncode:
                raise RuntimeError(f"{process.args[:3]} failed:\n{stderr[-3000:]}")
        return time.perf_counter() - start
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()


def training(workdir: pathlib.Path, scale: int, *, workers: int) -> Row:
    """Training steps per second (global batch 16 of 64 x 64 slices, 2D U-Net), one process
    or ``workers`` MultiWorkerMirroredStrategy processes on 127.0.0.1."""
    steps = 60 * scale
    if workers == 1:
        commands = [
            ([sys.executable, "-c", _TRAINING, str(workdir / "run"), "default", str(steps)], {})
        ]
    else:
        ports = _free_ports(workers)
        commands = [
            (
                [sys.executable, "-c", _TRAINING, str(workdir / "run"), "multi-worker", str(steps)],
                {
                    "TF_CONFIG": json.dumps(
                        {
                            "cluster": {"worker": [f"127.0.0.1:{port}" for port in ports]},
                            "task": {"type": "worker", "index": index},
                        }
                    )
                },
            )
            for index in range(workers)
        ]
    seconds = _run_together(commands, timeout=1800)
    task = "training, " + ("one process" if workers == 1 else "MultiWorkerMirroredStrategy")
    return Row(task, workers, steps, "steps", seconds)


_TUNING = textwrap.dedent(
    """
    import sys

    import numpy as np

    from kseg.training import VolumeValidation
    from kseg.tuning import SegmentationHyperModel, tuner

    directory, trials = sys.argv[1], int(sys.argv[2])
    rng = np.random.default_rng(0)
    images = rng.normal(size=(40, 32, 32, 1)).astype("float32")
    labels = (images[..., 0] > 0.5).astype("uint8")
    volumes = [(f"p{index}", images[32 + 4 * index: 36 + 4 * index],
                labels[32 + 4 * index: 36 + 4 * index], (2.0, 1.0, 1.0)) for index in range(2)]
    hypermodel = SegmentationHyperModel(
        (32, 32, 1), 1, models="unet", base_filters=(4, 8), depth=(1, 2),
        losses=("dice", "dice_ce"), learning_rate=(1e-3, 1e-2))
    search = tuner("random", hypermodel, directory=directory, project_name="scaling",
                   max_trials=trials, seed=0)
    search.search(images[:32], labels[:32, ..., None], batch_size=8, epochs=3, verbose=0,
                  validation_data=(images[32:], labels[32:, ..., None]),
                  callbacks=[VolumeValidation(volumes)])
    """
)


def tuning(workdir: pathlib.Path, scale: int, *, workers: int) -> Row:
    """Trials per hour of a random search (small 2D U-Nets, 3 epochs, ranked by whole-volume
    Dice) with a Keras Tuner chief and ``workers`` worker processes on 127.0.0.1."""
    trials = 6 * scale
    port = _free_ports(1)[0]
    command = [sys.executable, "-c", _TUNING, str(workdir / "search"), str(trials)]
    oracle = {"KERASTUNER_ORACLE_IP": "127.0.0.1", "KERASTUNER_ORACLE_PORT": str(port)}
    commands = [(command, {**oracle, "KERASTUNER_TUNER_ID": "chief"})] + [
        (command, {**oracle, "KERASTUNER_TUNER_ID": f"tuner{index}"}) for index in range(workers)
    ]
    seconds = _run_together(commands, timeout=3600)
    return Row(
        "random search, Keras Tuner chief + workers", workers, trials, "trials", seconds, "h"
    )


# --- the table --------------------------------------------------------------------------------

RowFunction = Callable[[pathlib.Path, int], Row]

ROWS: list[RowFunction] = [
    functools.partial(generation, workers=None),
    functools.partial(generation, workers=1),
    functools.partial(generation, workers=2),
    functools.partial(batch_prediction, workers=1),
    functools.partial(batch_prediction, workers=2),
    functools.partial(training, workers=1),
    functools.partial(training, workers=2),
    functools.partial(tuning, workers=1),
    functools.partial(tuning, workers=2),
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
