"""The start-up of ``model.fit``: traces of the training step and CPU-seconds of a first
``fit``, with and without :func:`kseg.training.build_optimizer`.

Each configuration runs in a fresh Python process (TensorFlow's function caches and
thread pools start cold, as in a user's run): build the model, compile it with Adam, then
time one ``fit`` of one epoch of ``--steps`` batches. The training-step traces are counted
by wrapping Keras' ``train_step`` (Python runs it only while TensorFlow traces). Models:
kseg's ``unet_small`` (depth 3, 8 base filters, 64 x 64, what the example tests train) and
HighResNet (32^3 patches).

    python benchmarks/fit_startup.py --repeats 2
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_CHILD = """
import json, sys, time
import numpy as np
import keras
from keras.src.backend.tensorflow import trainer
import kseg
from kseg.training import build_optimizer

model_name, prebuild, steps = sys.argv[1], sys.argv[2] == "1", int(sys.argv[3])
traces = []
train_step = trainer.TensorFlowTrainer.train_step
def counted(self, data):
    traces.append(1)
    return train_step(self, data)
trainer.TensorFlowTrainer.train_step = counted
if model_name == "unet_small":
    model = kseg.models.build("unet_small", input_shape=(64, 64, 1), num_classes=1,
                              base_filters=8, depth=3)
    shape = (4, 64, 64, 1)
else:
    model = kseg.models.highresnet((None, None, None, 1), num_classes=1)
    shape = (1, 32, 32, 32, 1)
model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="binary_crossentropy")
rng = np.random.default_rng(0)
x = rng.random((shape[0] * steps, *shape[1:]), dtype=np.float32)
y = (x > 0.5).astype(np.float32)
cpu, wall = time.process_time(), time.perf_counter()
if prebuild:  # what kseg's models do in their fit
    build_optimizer(model)
keras.Model.fit(model, x, y, batch_size=shape[0], epochs=1, verbose=0)  # Keras' own fit
print(json.dumps({"traces": len(traces), "cpu": time.process_time() - cpu,
                  "wall": time.perf_counter() - wall}))
"""


def run_child(model: str, prebuild: bool, steps: int) -> dict:
    environment = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES="")
    environment["PYTHONPATH"] = os.pathsep.join(
        filter(None, [ROOT, environment.get("PYTHONPATH")]))
    done = subprocess.run(
        [sys.executable, "-c", _CHILD, model, "1" if prebuild else "0", str(steps)],
        capture_output=True, text=True, env=environment, check=False,
    )  # fmt: skip
    if done.returncode != 0:
        raise SystemExit(f"{model} prebuild={prebuild} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["unet_small", "highresnet"],
                        choices=["unet_small", "highresnet"])
    parser.add_argument("--steps", type=int, default=4, help="batches in the one epoch [4]")
    parser.add_argument("--repeats", type=int, default=2,
                        help="interleaved rounds; the table shows medians [2]")
    args = parser.parse_args(argv)
    results = {}
    for _ in range(args.repeats):
        for model in args.models:
            for prebuild in (False, True):
                results.setdefault((model, prebuild), []).append(
                    run_child(model, prebuild, args.steps))
    print(f"first fit of one epoch of {args.steps} batches, medians of {args.repeats}")
    print("| model | optimizer | train-step traces | fit CPU-s | fit seconds |")
    print("|---|---|---|---|---|")
    for (model, prebuild), runs in results.items():
        print(f"| {model} | {'build_optimizer' if prebuild else 'built by Keras in the trace'}"
              f" | {statistics.median(r['traces'] for r in runs):.0f}"
              f" | {statistics.median(r['cpu'] for r in runs):.2f}"
              f" | {statistics.median(r['wall'] for r in runs):.2f} |")


if __name__ == "__main__":
    main()
