"""Time and memory of sliding-window inference with HighResNet on a CT-sized volume.

Each configuration (window size x overlap) runs in a fresh process, so its peak resident
memory (``ru_maxrss``: TensorFlow, model and arrays) is its own; ``tracemalloc`` gives the
peak of the host arrays that the sliding window allocates (output, weight map, batches).
The model's first calls (graph tracing, once per batch shape) happen before the clock starts.

The full 100 x 512 x 512 volume takes hours on a small CPU; shrink it with ``--depth-slices``
and ``--size``. The last column scales the measured seconds per window to the window count
of ``--full-shape``, an estimate, labelled as such.

    python benchmarks/sliding_window.py                       # 100 x 512 x 512
    python benchmarks/sliding_window.py --depth-slices 48 --size 96 --windows 64 96
"""

from __future__ import annotations

import argparse
import math
import multiprocessing
import os
import resource
import time
import tracemalloc

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def _measure(shape, roi, overlap, batch_size, num_classes, queue):
    import numpy as np

    from kseg.inference import sliding_window
    from kseg.models import highresnet

    model = highresnet((None, None, None, 1), num_classes=num_classes)
    volume = np.random.default_rng(0).normal(size=shape + (1,)).astype(np.float32)
    # Trace every batch shape the run will use (a smaller last batch is traced separately).
    windows = window_count(shape, roi, overlap)
    for warm_up_batch in {batch_size, windows % batch_size} - {0}:
        model.predict_on_batch(np.zeros((warm_up_batch, *roi, 1), dtype=np.float32))

    tracemalloc.start()
    start = time.perf_counter()
    output = sliding_window(
        model, volume, roi, overlap=overlap, batch_size=batch_size, progress=False
    )
    seconds = time.perf_counter() - start
    _, traced_peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    queue.put(
        {
            "seconds": seconds,
            "traced_peak_mib": traced_peak / 2**20,
            "max_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "output_shape": output.shape,
        }
    )


def window_count(shape, roi, overlap) -> int:
    from kseg.inference import window_starts

    return math.prod(
        len(window_starts(max(size, r), r, overlap)) for size, r in zip(shape, roi, strict=True)
    )


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--depth-slices", type=int, default=100, help="slices (z)")
    parser.add_argument("--size", type=int, default=512, help="in-plane size (y = x)")
    parser.add_argument("--windows", type=int, nargs="+", default=[64, 96], help="cubic windows")
    parser.add_argument("--overlaps", type=float, nargs="+", default=[0.25, 0.5])
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--num-classes", type=int, default=2)
    parser.add_argument(
        "--full-shape", type=int, nargs=3, default=[100, 512, 512], metavar=("Z", "Y", "X")
    )
    args = parser.parse_args(argv)

    shape = (args.depth_slices, args.size, args.size)
    full_shape = tuple(args.full_shape)
    context = multiprocessing.get_context("spawn")
    print(f"HighResNet, volume {shape}, batch {args.batch_size}, {os.cpu_count()} CPUs")
    estimate_label = "est. s at " + "x".join(map(str, full_shape))
    header = (
        f"{'window':>7} {'overlap':>7} {'windows':>7} {'seconds':>9} {'s/window':>9} "
        f"{'host arrays MiB':>15} {'peak RSS MiB':>12} {estimate_label:>22}"
    )
    print(header)
    print("-" * len(header))
    for size in args.windows:
        roi = (size,) * 3
        for overlap in args.overlaps:
            queue = context.Queue()
            process = context.Process(
                target=_measure,
                args=(shape, roi, overlap, args.batch_size, args.num_classes, queue),
            )
            process.start()
            result = queue.get()
            process.join()
            windows = window_count(shape, roi, overlap)
            per_window = result["seconds"] / windows
            estimate = per_window * window_count(full_shape, roi, overlap)
            print(
                f"{size:>7} {overlap:>7.2f} {windows:>7} {result['seconds']:>9.1f} "
                f"{per_window:>9.2f} {result['traced_peak_mib']:>15.1f} "
                f"{result['max_rss_mib']:>12.0f} {estimate:>22.0f}",
                flush=True,
            )


if __name__ == "__main__":
    main()
