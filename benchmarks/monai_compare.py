"""kseg's sliding window vs MONAI's ``sliding_window_inference``, HighResNet on both sides.

The same network on both sides: MONAI's ``HighResNet`` with its default layer list
(3x3x3 convolution to 16 features; three stages of three pre-activation residual units,
16/32/64 features at dilation 1/2/4, zero-padded shortcuts; 1x1x1 to 80 features; 1x1x1
to the classes) and ``kseg.models.highresnet``, which follows the same list. The script
prints both parameter counts: the convolution weights are equal, the heads differ by a
few numbers (MONAI ends with batch norm + ReLU on the class channels, kseg with a bias;
kseg is built with ``activation=None`` so both return logits).

Both blend with a gaussian (sigma = 0.125 x window) and give the same window count per
axis (``ceil((size - roi) / (roi * (1 - overlap))) + 1``; MONAI steps by the rounded-down
interval and moves its last window to the border, kseg spreads the windows evenly). Each
configuration runs in its own process (``ru_maxrss`` is its peak memory: library, model,
arrays; the table also shows it after importing the library and building the model, "RSS
model", the runtime's share, and after the warm-up call, "RSS before"; "of it files" is the
part mapped from files at the end, mostly library code, shared between processes) with as
many threads as the machine has cores; the first network call of each
batch shape happens before the clock starts. MONAI runs under ``torch.inference_mode``
on a model in ``eval()`` mode, in its default layout (NCDHW) and in ``channels_last_3d``
(model and input converted). Configurations are interleaved over ``--repeats`` rounds and
the table shows medians.

Needs PyTorch and MONAI (not kseg requirements): ``pip install -e '.[benchmarks]'`` or
``pip install torch monai``.

    python benchmarks/monai_compare.py                        # 1x1x80x112x112, ~10 min on 2 cores
    python benchmarks/monai_compare.py --shape 128 160 160 --repeats 1
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
IMPLEMENTATIONS = ("kseg", "monai", "monai channels_last_3d")


def _volume(shape):
    import numpy as np

    return np.random.default_rng(0).normal(size=shape).astype(np.float32)


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _file_rss_mib() -> float:
    """Resident pages mapped from files (mostly the libraries' code), which processes share
    and the kernel can drop; part of ``ru_maxrss``. NaN where /proc does not say."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("RssFile:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return math.nan


def _finish(result: dict, model_rss_mib: float, start_rss_mib: float) -> None:
    result["max_rss_mib"] = _peak_rss_mib()
    result["rss_model_mib"] = model_rss_mib
    result["rss_file_mib"] = _file_rss_mib()
    result["rss_before_mib"] = start_rss_mib
    print("RESULT " + json.dumps(result), flush=True)


def _child_kseg(config) -> None:
    import numpy as np  # noqa: I001 - kseg first: its runtime settings precede TensorFlow

    import kseg  # noqa: F401
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(config["threads"])
    from kseg.inference import sliding_window, window_starts
    from kseg.models import highresnet

    model = highresnet((None, None, None, 1), num_classes=config["classes"], activation=None)
    model_rss = _peak_rss_mib()
    roi, batch = (config["roi"],) * 3, config["batch"]
    shape = tuple(config["shape"])
    windows = math.prod(
        len(window_starts(s, r, config["overlap"]))
        for s, r in zip(shape, roi, strict=True)
    )
    for size in {batch, windows % batch} - {0}:
        model.predict_on_batch(np.zeros((size, *roi, 1), dtype=np.float32))
    volume = _volume(shape)[..., None]
    rss = _peak_rss_mib()
    start, cpu_start = time.perf_counter(), time.process_time()
    output = sliding_window(
        model, volume, roi, overlap=config["overlap"], blend="gaussian", batch_size=batch,
        progress=False,
    )
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    _finish(
        {"seconds": seconds, "cpu_seconds": cpu, "windows": windows,
         "output_shape": list(output.shape)}
        | {name: os.environ.get(name)
           for name in ("TF_ENABLE_ONEDNN_OPTS", "TF_ONEDNN_USE_SYSTEM_ALLOCATOR")},
        model_rss, rss,
    )


def _child_monai(config) -> None:
    import torch
    from monai.inferers import sliding_window_inference
    from monai.networks.nets import HighResNet

    torch.set_num_threads(config["threads"])
    channels_last = config["implementation"] == "monai channels_last_3d"
    model = HighResNet(spatial_dims=3, in_channels=1, out_channels=config["classes"]).eval()
    model_rss = _peak_rss_mib()
    volume = torch.from_numpy(_volume(tuple(config["shape"])))[None, None]
    if channels_last:
        model = model.to(memory_format=torch.channels_last_3d)
        volume = volume.contiguous(memory_format=torch.channels_last_3d)
    roi, batch = (config["roi"],) * 3, config["batch"]
    seen = []

    def predictor(windows):
        seen.append(windows.shape[0])
        if channels_last:
            windows = windows.contiguous(memory_format=torch.channels_last_3d)
        return model(windows)

    with torch.inference_mode():
        warm_up = torch.zeros((batch, 1, *roi))
        if channels_last:
            warm_up = warm_up.contiguous(memory_format=torch.channels_last_3d)
        model(warm_up)
        rss = _peak_rss_mib()
        start, cpu_start = time.perf_counter(), time.process_time()
        output = sliding_window_inference(
            volume, roi, batch, predictor, overlap=config["overlap"], mode="gaussian",
            sigma_scale=0.125,
        )
        seconds, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    _finish({"seconds": seconds, "cpu_seconds": cpu, "windows": sum(seen),
             "output_shape": list(output.shape)}, model_rss, rss)


def _child_parameters(config) -> None:
    import torch  # noqa: F401
    from monai.networks.nets import HighResNet

    from kseg.models import highresnet

    monai_model = HighResNet(spatial_dims=3, in_channels=1, out_channels=config["classes"])
    kseg_model = highresnet((None, None, None, 1), num_classes=config["classes"],
                            activation=None)
    monai_conv = sum(
        p.numel() for name, p in monai_model.named_parameters()
        if name.endswith("conv.weight")
    )
    kseg_conv = sum(
        math.prod(w.shape) for w in kseg_model.trainable_weights if w.path.endswith("kernel")
    )
    result = {
        "monai_trainable": sum(p.numel() for p in monai_model.parameters()),
        "kseg_trainable": int(sum(math.prod(w.shape) for w in kseg_model.trainable_weights)),
        "monai_conv_weights": monai_conv,
        "kseg_conv_weights": int(kseg_conv),
        "monai_convs": sum(1 for n, _ in monai_model.named_parameters()
                           if n.endswith("conv.weight")),
        "kseg_convs": sum(1 for w in kseg_model.trainable_weights if w.path.endswith("kernel")),
    }
    print("RESULT " + json.dumps(result), flush=True)


def _run_child(config: dict) -> dict:
    env = dict(os.environ)
    env["TF_CPP_MIN_LOG_LEVEL"] = "3"
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    completed = subprocess.run(
        [sys.executable, os.path.abspath(__file__), "--child", json.dumps(config)],
        env=env, capture_output=True, text=True, check=False,
    )
    for line in completed.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    raise RuntimeError(
        f"configuration {config} failed (exit {completed.returncode}):\n"
        f"{completed.stderr[-3000:]}"
    )


def _check_requirements() -> None:
    missing = [name for name in ("torch", "monai") if importlib.util.find_spec(name) is None]
    if missing:
        sys.exit(
            f"benchmarks/monai_compare.py needs {' and '.join(missing)}, which kseg does not "
            "install: pip install -e '.[benchmarks]' (or pip install torch monai)"
        )


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--shape", type=int, nargs=3, default=[80, 112, 112],
                        metavar=("D", "H", "W"), help="volume (one channel)")
    parser.add_argument("--roi", type=int, default=64, help="cubic window")
    parser.add_argument("--overlaps", type=float, nargs="+", default=[0.25, 0.5])
    parser.add_argument("--batch-size", type=int, default=4,
                        help="windows per network call, both libraries")
    parser.add_argument("--classes", type=int, default=2)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--only", nargs="+", choices=IMPLEMENTATIONS, default=list(IMPLEMENTATIONS))
    parser.add_argument("--json", help="write every measurement to this file as it comes")
    parser.add_argument("--table-from", metavar="JSON",
                        help="print the table of a --json file (complete or not); measure nothing")
    args = parser.parse_args(argv)
    if args.child:
        config = json.loads(args.child)
        if config["implementation"] == "parameters":
            _child_parameters(config)
        elif config["implementation"] == "kseg":
            _child_kseg(config)
        else:
            _child_monai(config)
        return
    if args.table_from:
        with open(args.table_from) as file:
            saved = json.load(file)
        _print_table(saved["parameters"], saved["records"])
        return
    _check_requirements()

    common = {"shape": args.shape, "roi": args.roi, "batch": args.batch_size,
              "classes": args.classes, "threads": args.threads}
    counts = _run_child({**common, "implementation": "parameters"})
    if counts["monai_conv_weights"] != counts["kseg_conv_weights"]:
        sys.exit("the two networks' convolutions differ; the comparison would not be fair")
    records = [{"config": {**common, "implementation": implementation, "overlap": overlap},
                "results": []}
               for overlap in args.overlaps for implementation in args.only]
    for repeat in range(args.repeats):
        for record in records:
            result = _run_child(record["config"])
            result["load_average"] = os.getloadavg()[0]
            record["results"].append(result)
            print(f"  round {repeat + 1}/{args.repeats}: {record['config']['implementation']} "
                  f"overlap {record['config']['overlap']}: {result['seconds']:.1f} s",
                  file=sys.stderr, flush=True)
            if args.json:
                with open(args.json + ".tmp", "w") as file:
                    json.dump({"parameters": counts, "records": records}, file, indent=1)
                os.replace(args.json + ".tmp", args.json)
    _print_table(counts, records)


def _print_table(counts: dict, records: list[dict]) -> None:
    records = [record for record in records if record["results"]]
    config = records[0]["config"]
    print(
        f"HighResNet, {config['classes']} classes: MONAI {counts['monai_trainable']:,} "
        f"trainable parameters ({counts['monai_convs']} convolutions, "
        f"{counts['monai_conv_weights']:,} weights), kseg {counts['kseg_trainable']:,} "
        f"({counts['kseg_convs']} convolutions, {counts['kseg_conv_weights']:,} weights)"
    )
    loads = [r["load_average"] for record in records for r in record["results"]]
    rounds = max(len(record["results"]) for record in records)
    print(
        f"volume 1x1x{'x'.join(map(str, config['shape']))}, roi {config['roi']}^3, gaussian, "
        f"batch {config['batch']}, {config['threads']} threads; medians of up to {rounds} "
        f"interleaved rounds; 1-minute load average after each run "
        f"{min(loads):.1f}-{max(loads):.1f}"
    )
    header = (f"{'overlap':>7} {'implementation':<24} {'windows':>7} {'seconds':>8} "
              f"{'CPU-s':>7} {'s/window':>8} {'RSS model':>9} {'RSS before':>10} "
              f"{'peak RSS MiB':>12} {'of it files':>11}  "
              "kseg time / MONAI time (CPU-s ratio)")
    print(header)
    print("-" * len(header))
    by_key = {}
    for record in records:
        by_key[(record["config"]["overlap"], record["config"]["implementation"])] = {
            key: statistics.median(r[key] for r in record["results"])
            for key in ("seconds", "cpu_seconds", "rss_before_mib", "max_rss_mib")
        } | {"windows": record["results"][0]["windows"],
             # absent from files written before the column existed
             **{key: statistics.median(r.get(key, math.nan) for r in record["results"])
                for key in ("rss_model_mib", "rss_file_mib")}}
    for (overlap, implementation), row in by_key.items():
        ratios = ""
        if implementation == "kseg":
            ratios = ", ".join(
                f"{row['seconds'] / other['seconds']:.2f} "
                f"({row['cpu_seconds'] / other['cpu_seconds']:.2f}) vs "
                f"{'channels_last_3d' if 'channels' in name else 'default'}"
                for (other_overlap, name), other in by_key.items()
                if other_overlap == overlap and name != "kseg"
            )
        print(f"{overlap:>7.2f} {implementation:<24} {row['windows']:>7} "
              f"{row['seconds']:>8.1f} {row['cpu_seconds']:>7.1f} "
              f"{row['seconds'] / row['windows']:>8.2f} {row['rss_model_mib']:>9.0f} "
              f"{row['rss_before_mib']:>10.0f} "
              f"{row['max_rss_mib']:>12.0f} {row['rss_file_mib']:>11.0f}  {ratios}")


if __name__ == "__main__":
    main()
