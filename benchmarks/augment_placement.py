"""Where should joint augmentation run: in tf.data, or on the accelerator in the train step?

Prints slices per second for the default 2D augmenter (``kseg.augment.segmentation_augmenter``)

- alone: in ``tf.data`` (``segmentation_dataset(..., augment=...)``, iterated without a
  model) and as a jit-compiled function on the default device (what ``AugmentedModel`` adds
  to a step);
- in training: ``model.fit`` of kseg's U-Net with the augmenter in ``tf.data`` versus inside
  the train step (``AugmentedModel``), both fed from an in-memory cached dataset.

On a CPU-only machine both placements share the same cores, so expect them close; on a GPU
the in-step placement moves the resampling off the CPU that also decodes and windows.
Tracing and compilation happen in a warm-up pass before the clock starts.

Usage:
    python benchmarks/augment_placement.py                       # 256 x 256, batch 16
    python benchmarks/augment_placement.py --size 128 --batch-size 8 --steps 5
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def _slices(count, size):
    import numpy as np

    rng = np.random.default_rng(0)
    images = rng.integers(-1024, 1500, size=(count, size, size)).astype(np.int16)
    masks = np.zeros((count, size, size), np.uint8)
    masks[:, size // 4 : size // 2, size // 3 : 2 * size // 3] = 1
    return {"image": images, "mask": masks}


def _rate(function, slices):
    start = time.perf_counter()
    function()
    return slices / (time.perf_counter() - start)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=256, help="slice height and width")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--steps", type=int, default=10, help="batches timed per measurement")
    parser.add_argument("--base-filters", type=int, default=16, help="U-Net width")
    args = parser.parse_args(argv)

    import keras
    import tensorflow as tf

    from kseg.augment import AugmentedModel, segmentation_augmenter
    from kseg.data.pipeline import segmentation_dataset
    from kseg.models import unet

    count = args.batch_size * args.steps
    source = tf.data.Dataset.from_tensor_slices(_slices(count, args.size))
    timed_slices = count

    def dataset(augment):
        return segmentation_dataset(
            source,
            window="abdomen",
            batch_size=args.batch_size,
            cache=True,
            drop_remainder=True,
            augment=augment,
        )

    rows = []

    augmented = dataset(segmentation_augmenter(seed=0))
    for _ in augmented:  # warm-up: trace, fill the cache
        pass
    rows.append(
        ("augmenter alone", "tf.data", _rate(lambda: [None for _ in augmented], timed_slices))
    )

    augmenter = segmentation_augmenter(seed=0)
    compiled = tf.function(lambda batch: augmenter(batch, training=True), jit_compile=True)
    batches = [{"images": images, "segmentation_masks": masks} for images, masks in dataset(None)]
    compiled(batches[0])

    def run_compiled():
        for batch in batches:
            result = compiled(batch)
        result["images"].numpy()  # wait for the device

    rows.append(("augmenter alone", "jit on device", _rate(run_compiled, timed_slices)))

    def fit_rate(model, ds):
        model.compile(optimizer="adam", loss="binary_crossentropy")
        model.fit(ds, epochs=1, verbose=0)  # warm-up: trace and compile
        return _rate(lambda: model.fit(ds, epochs=1, verbose=0), timed_slices)

    def network():
        return unet((args.size, args.size, 1), base_filters=args.base_filters, depth=4)

    rows.append(
        ("fit U-Net", "tf.data", fit_rate(network(), dataset(segmentation_augmenter(seed=0))))
    )
    in_step = AugmentedModel(network(), segmentation_augmenter(seed=0))
    rows.append(("fit U-Net", "train step", fit_rate(in_step, dataset(None))))

    device = "GPU" if tf.config.list_physical_devices("GPU") else "CPU only"
    print(
        f"\n{args.size}x{args.size} slices, batch {args.batch_size}, {args.steps} batches, "
        f"{device}, Keras {keras.__version__}"
    )
    print(f"{'what':<18}{'placement':<16}{'slices/s':>10}")
    for what, placement, rate in rows:
        print(f"{what:<18}{placement:<16}{rate:>10.1f}")


if __name__ == "__main__":
    main()
