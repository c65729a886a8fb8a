"""The CPU path, measured: TensorFlow's matmul and convolution peaks, kseg training and
inference throughput, and the settings that move them.

Every row runs in a fresh Python process, because ``TF_ENABLE_ONEDNN_OPTS`` is read when
TensorFlow is imported and the thread pools are fixed when its runtime starts; the
process's peak resident memory (``ru_maxrss``) is reported beside its speed.

Two speeds per row: GFLOP/s (per second of wall clock) and GFLOP per CPU-second (per
second of CPU time of the whole process, all threads: ``time.process_time``). On a loaded
machine the second is the steadier one, and it is the one the targets use. FLOPs are
counted independently of TensorFlow, from each layer's kernel and output shape:
a convolution costs ``2 * output voxels * prod(kernel) * in_channels * out_channels``
per sample and pass, a transposed convolution the same with its input voxels; training
costs the forward pass, the gradient for the weights and the gradient for the input
(except the first layer's, which nothing needs), i.e. about three forward passes.
Normalisation, activations, pooling and the loss are not counted (a few percent).

The training rows build ``unet_small`` with ``kseg.models.build``, as a user does, so they
measure kseg's layers: its batch norm runs TensorFlow's fused kernel
(``kseg.models.normalization.FusedBatchNormalization``); the "stock keras BN" row
builds the same network with ``keras.layers.BatchNormalization`` for comparison.

Layout: NHWC (channels last) is TensorFlow's CPU layout. With oneDNN off its CPU kernels
refuse NCHW convolutions; with oneDNN on they run them, and the table shows at what speed.

    python benchmarks/cpu_path.py                 # everything, 2 rounds, ~20 min on 2 cores
    python benchmarks/cpu_path.py --only peak inference --repeats 3
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
SECONDS_PER_MEASUREMENT = 4.0


# ---------------------------------------------------------------------------------------------
# child side: one measurement per process


def _timed(run, flops_per_run: float, min_seconds: float = SECONDS_PER_MEASUREMENT) -> dict:
    """Call ``run`` until ``min_seconds`` of wall clock have passed (after one warm-up call,
    which traces the graph)."""
    run()
    calls = 0
    wall_start, cpu_start = time.perf_counter(), time.process_time()
    while True:
        run()
        calls += 1
        wall = time.perf_counter() - wall_start
        if wall >= min_seconds:
            break
    cpu = time.process_time() - cpu_start
    flops = flops_per_run * calls
    return {
        "calls": calls,
        "seconds_per_call": wall / calls,
        "gflops_per_s": flops / wall / 1e9,
        "gflop_per_cpu_s": flops / cpu / 1e9,
        "cpu_per_wall": cpu / wall,
    }


def _configure_threads(config):
    import tensorflow as tf

    if config.get("intra") is not None:
        tf.config.threading.set_intra_op_parallelism_threads(config["intra"])
    if config.get("inter") is not None:
        tf.config.threading.set_inter_op_parallelism_threads(config["inter"])
    return tf


def conv_flops(layer, input_shape, output_shape) -> int:
    """Forward multiply-adds x 2 of one convolution layer for one sample."""
    import math

    kernel = tuple(layer.kernel.shape)
    transposed = "Transpose" in type(layer).__name__
    # Conv kernels are (*k, in, out); transposed ones (*k, out, in). Either way the product
    # of all kernel dimensions is prod(k) * in * out.
    voxels = math.prod(input_shape[1:-1] if transposed else output_shape[1:-1])
    return 2 * voxels * math.prod(kernel)


def model_conv_flops(model) -> tuple[int, int]:
    """(forward FLOPs, training-step FLOPs) per sample of a functional model's convolutions."""
    forward = training = 0
    first = True
    for layer in model.layers:
        if not hasattr(layer, "kernel") or "Conv" not in type(layer).__name__:
            continue
        flops = conv_flops(layer, tuple(layer.input.shape), tuple(layer.output.shape))
        forward += flops
        # weights' gradient always; input's gradient for every layer but the first
        training += flops * (2 if first else 3)
        first = False
    return forward, training


def full_resolution_flops(model, voxels: int) -> int:
    """Forward FLOPs of a network whose convolutions all keep the input grid (HighResNet):
    2 x voxels x every convolution weight, summed over nested layers."""
    import math

    total = 0
    for weight in model.weights:
        if weight.path.endswith("kernel"):
            total += math.prod(weight.shape)
    return 2 * voxels * total


def _child_peak(config) -> dict:
    tf = _configure_threads(config)
    results = {}
    n = 2048
    for dtype in ("float32", "bfloat16"):
        a = tf.random.normal((n, n), dtype=tf.float32)
        b = tf.random.normal((n, n), dtype=tf.float32)
        a, b = tf.cast(a, dtype), tf.cast(b, dtype)
        results[f"matmul {dtype} {n}x{n}"] = _timed(
            lambda a=a, b=b: tf.matmul(a, b).numpy(), 2 * n**3
        )
    x2 = tf.random.normal((8, 64, 64, 64))
    k2 = tf.random.normal((3, 3, 64, 64))
    conv2d_flops = 2 * 8 * 64 * 64 * 9 * 64 * 64
    results["conv2d 8x64x64x64 k3 64->64"] = _timed(
        lambda: tf.nn.conv2d(x2, k2, 1, "SAME").numpy(), conv2d_flops
    )
    x3 = tf.random.normal((1, 32, 32, 32, 32))
    k3 = tf.random.normal((3, 3, 3, 32, 32))
    results["conv3d 1x32^3x32 k3 32->32"] = _timed(
        lambda: tf.nn.conv3d(x3, k3, [1] * 5, "SAME").numpy(), 2 * 32**3 * 27 * 32 * 32
    )
    x2_nchw = tf.transpose(x2, (0, 3, 1, 2))
    try:
        tf.nn.conv2d(x2_nchw, k2, 1, "SAME", data_format="NCHW").numpy()
    except Exception as error:  # noqa: BLE001 - the refusal is what is reported
        results["nchw"] = f"refused: {type(error).__name__}: {str(error).splitlines()[0][:120]}"
    else:
        results["nchw"] = "runs"
        results["conv2d NCHW (same sizes)"] = _timed(
            lambda: tf.nn.conv2d(x2_nchw, k2, 1, "SAME", data_format="NCHW").numpy(),
            conv2d_flops,
        )
    return results


def _child_train(config) -> dict:
    tf = _configure_threads(config)
    import keras
    import numpy as np

    from kseg import models
    from kseg.losses import DiceCELoss
    from kseg.models import _building_blocks

    if config.get("stock_bn"):
        # kseg's models as built before kseg ran TensorFlow's fused batch norm, for the
        # side-by-side row: every kseg block takes its layer class from this name.
        _building_blocks.FusedBatchNormalization = keras.layers.BatchNormalization
    if config.get("bf16"):
        keras.mixed_precision.set_global_policy("mixed_bfloat16")
    size, batch, classes = config["size"], config["batch"], 3
    model = models.build(
        "unet_small", input_shape=(size, size, 1), num_classes=classes, base_filters=16
    )
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss=DiceCELoss())
    _, train_flops = model_conv_flops(model)
    rng = np.random.default_rng(0)
    images = rng.normal(size=(batch, size, size, 1)).astype(np.float32)
    labels = np.eye(classes, dtype=np.float32)[rng.integers(0, classes, (batch, size, size))]
    result = _timed(lambda: model.train_on_batch(images, labels), train_flops * batch)
    result["images_per_s"] = batch / result["seconds_per_call"]
    del tf
    return {"train": result}


def _child_infer(config) -> dict:
    tf = _configure_threads(config)
    import keras
    import numpy as np

    from kseg.models import highresnet

    if config.get("bf16"):
        keras.mixed_precision.set_global_policy("mixed_bfloat16")
    roi, batch = config["roi"], config["batch"]
    model = highresnet((None, None, None, 1), num_classes=2)
    flops = full_resolution_flops(model, roi**3) * batch
    x = np.random.default_rng(0).normal(size=(batch, roi, roi, roi, 1)).astype(np.float32)
    mode = config["mode"]
    if mode == "predict_on_batch":
        run = lambda: model.predict_on_batch(x)  # noqa: E731
    elif mode == "call":
        tensor = tf.constant(x)
        run = lambda: model(tensor, training=False).numpy()  # noqa: E731
    else:
        function = tf.function(
            lambda t: model(t, training=False), jit_compile=(mode == "tf.function jit")
        )
        tensor = tf.constant(x)
        run = lambda: function(tensor).numpy()  # noqa: E731
    result = _timed(run, flops)
    result["windows_per_s"] = batch / result["seconds_per_call"]
    return {"infer": result}


def _child(config) -> None:
    start = time.perf_counter()
    task = {"peak": _child_peak, "train": _child_train, "infer": _child_infer}[config["task"]]
    result = task(config)
    result["max_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    result["process_seconds"] = time.perf_counter() - start
    print("RESULT " + json.dumps(result), flush=True)


# ---------------------------------------------------------------------------------------------
# parent side


def _run_child(config: dict) -> dict:
    env = dict(os.environ)
    env["TF_CPP_MIN_LOG_LEVEL"] = "3"
    env["KSEG_RUNTIME_DEFAULTS"] = "0"  # measure TensorFlow's own defaults, not kseg's
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    env.pop("TF_ENABLE_ONEDNN_OPTS", None)
    if config.get("onednn") is not None:
        env["TF_ENABLE_ONEDNN_OPTS"] = "1" if config["onednn"] else "0"
    completed = subprocess.run(
        [sys.executable, os.path.abspath(__file__), "--child", json.dumps(config)],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    for line in completed.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    raise RuntimeError(
        f"measurement {config} failed (exit {completed.returncode}):\n{completed.stderr[-3000:]}"
    )


def _onednn_label(value) -> str:
    return {None: "default", True: "on", False: "off"}[value]


def _threads_label(config) -> str:
    intra, inter = config.get("intra"), config.get("inter")
    return f"{intra if intra is not None else 'auto'}/{inter if inter is not None else 'auto'}"


def configurations(only) -> list[tuple[str, dict]]:
    rows = []
    if "peak" in only:
        for onednn in (True, False):
            rows.append(("peak", {"task": "peak", "onednn": onednn}))
    if "train" in only:
        base = {"task": "train", "size": 256, "batch": 8, "onednn": True}
        rows += [
            ("train", base),
            ("train", {**base, "stock_bn": True}),
            ("train", {**base, "onednn": False}),
            ("train", {**base, "intra": 1, "inter": 1}),
            ("train", {**base, "batch": 4}),
            ("train", {**base, "batch": 16}),
            ("train", {**base, "bf16": True}),
        ]
    if "inference" in only:
        base = {"task": "infer", "roi": 48, "batch": 2, "mode": "predict_on_batch",
                "onednn": True}
        rows += [
            ("infer", {**base, "onednn": None}),
            ("infer", base),
            ("infer", {**base, "onednn": False}),
            ("infer", {**base, "intra": 1, "inter": 1}),
            ("infer", {**base, "batch": 1}),
            ("infer", {**base, "batch": 4}),
            ("infer", {**base, "mode": "call"}),
            ("infer", {**base, "mode": "tf.function"}),
            ("infer", {**base, "mode": "tf.function jit"}),
            ("infer", {**base, "bf16": True}),
        ]
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--only", nargs="+", choices=("peak", "train", "inference"),
                        default=["peak", "train", "inference"])
    parser.add_argument("--repeats", type=int, default=2,
                        help="rounds over all configurations (interleaved); medians are shown")
    parser.add_argument("--json", help="write every measurement to this file as it comes")
    parser.add_argument("--table-from", metavar="JSON",
                        help="print the table of a --json file (complete or not); measure nothing")
    args = parser.parse_args(argv)
    if args.child:
        _child(json.loads(args.child))
        return

    if args.table_from:
        with open(args.table_from) as file:
            records = [r for r in json.load(file) if r["results"]]
        rows = [("peak" if r["config"]["task"] == "peak" else r["config"]["task"], r["config"])
                for r in records]
        measured = [r["results"] for r in records]
        rounds = max(len(m) for m in measured)
    else:
        rows = configurations(args.only)
        measured = [[] for _ in rows]
        rounds = args.repeats
        # Rounds over all rows, so that a burst of load from elsewhere hits every
        # configuration rather than one.
        for repeat in range(args.repeats):
            for index, (_, config) in enumerate(rows):
                measured[index].append(_run_child(config))
                print(f"  round {repeat + 1}/{args.repeats}, {index + 1}/{len(rows)} done",
                      file=sys.stderr, flush=True)
                if args.json:
                    records = [{"config": c, "results": m}
                               for (_, c), m in zip(rows, measured, strict=True)]
                    with open(args.json + ".tmp", "w") as file:
                        json.dump(records, file, indent=1)
                    os.replace(args.json + ".tmp", args.json)

    def median(results, *keys):
        values = []
        for result in results:
            for key in keys[:-1]:
                result = result[key]
            values.append(result[keys[-1]])
        return statistics.median(values)

    print(f"{os.cpu_count()} CPUs; load average now {os.getloadavg()}; "
          f"medians of up to {rounds} interleaved rounds (n: measurements in the row)")
    header = (f"{'what':<46} {'oneDNN':>7} {'intra/inter':>11} {'GFLOP/s':>8} "
              f"{'GFLOP/CPU-s':>11} {'per call':>9} {'peak RSS MiB':>12} {'n':>2}")
    print(header)
    print("-" * len(header))
    nchw = {}
    for (kind, config), results in zip(rows, measured, strict=True):
        common = f"{_onednn_label(config.get('onednn')):>7} {_threads_label(config):>11}"
        rss = median(results, "max_rss_mib")
        if kind == "peak":
            for name in results[0]:
                if name in ("max_rss_mib", "process_seconds", "nchw"):
                    continue
                print(f"{name:<46} {common} {median(results, name, 'gflops_per_s'):>8.1f} "
                      f"{median(results, name, 'gflop_per_cpu_s'):>11.1f} "
                      f"{median(results, name, 'seconds_per_call') * 1e3:>7.1f}ms {rss:>12.0f} "
                      f"{len(results):>2}")
            nchw[_onednn_label(config.get("onednn"))] = results[0]["nchw"]
        else:
            key = "train" if kind == "train" else "infer"
            if kind == "train":
                what = (f"train unet_small {config['size']}^2 b{config['batch']}"
                        f"{' bf16' if config.get('bf16') else ''}"
                        f"{' stock keras BN' if config.get('stock_bn') else ''}")
                rate = f"{median(results, key, 'images_per_s'):.2f} img/s"
            else:
                what = (f"infer highresnet {config['roi']}^3 b{config['batch']} "
                        f"{config['mode']}{' bf16' if config.get('bf16') else ''}")
                rate = f"{median(results, key, 'windows_per_s'):.2f} win/s"
            print(f"{what:<46} {common} {median(results, key, 'gflops_per_s'):>8.1f} "
                  f"{median(results, key, 'gflop_per_cpu_s'):>11.1f} "
                  f"{median(results, key, 'seconds_per_call'):>8.2f}s {rss:>12.0f} "
                  f"{len(results):>2}  {rate}")
    for onednn, answer in nchw.items():
        print(f"NCHW conv2d on this CPU with oneDNN {onednn}: {answer}")


if __name__ == "__main__":
    main()
