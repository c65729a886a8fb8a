"""Is the input pipeline what limits training?

Prints, per image size, the slices per second of

- the kseg tf.data pipeline: TFDS read of the ``chaos/ct`` dataset + HU window + resize +
  the default joint augmentation (``kseg.augment.segmentation_augmenter``) + batching,
  nothing cached, so every slice is read and augmented afresh;
- a naive per-sample generator doing the same augmentation with numpy / scipy in Python
  (what hand-written pipelines usually do), fed through ``tf.data.Dataset.from_generator``;
- what training consumes: ``model.fit`` steps of the example's U-Net on in-memory batches.

The pipeline keeps up when its rate is above the training rate. On this CPU-only machine the
three compete for the same cores, so each is measured alone; on a GPU machine training runs
on the accelerator and the pipeline keeps the CPU to itself.

Usage:
    python benchmarks/pipeline.py                 # 256 and 512, synthetic CHAOS phantom
    python benchmarks/pipeline.py --sizes 256 --batches 10
"""

from __future__ import annotations

import argparse
import os
import pathlib
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
import tensorflow_datasets as tfds  # noqa: E402
from scipy import ndimage  # noqa: E402

import kseg.augment  # noqa: E402
import kseg.losses  # noqa: E402
import kseg.metrics  # noqa: E402
import kseg.models  # noqa: E402
import tfds_builders.chaos  # noqa: E402, F401  (registers the "chaos" builder)
from kseg.data import pipeline  # noqa: E402
from kseg.phantoms import chaos  # noqa: E402

ABDOMEN_WINDOW = pipeline.WINDOWS["abdomen"]


def build_phantom_dataset(workdir: pathlib.Path, patients: int, slices: int):
    manual_dir = chaos.write_chaos(
        workdir / "manual", modality="CT", num_patients=patients, num_slices=slices, seed=0
    )
    builder = tfds.builder("chaos/ct", data_dir=str(workdir / "tfds"))
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=str(manual_dir))
    )
    folds = "+".join(builder.info.splits.keys())
    return builder, folds, builder.info.splits[folds].num_examples


def kseg_pipeline(builder, split: str, size: int, batch_size: int) -> tf.data.Dataset:
    return pipeline.segmentation_dataset(
        builder.as_dataset(split=split).repeat(),
        window="abdomen",
        image_size=(size, size),
        batch_size=batch_size,
        augment=kseg.augment.segmentation_augmenter(seed=0),
        shuffle_buffer=64,
        seed=0,
        deterministic=False,
    )


def _elastic(image, mask, rng, alpha_fraction=0.05, grid=4):
    """Control-point displacement up to alpha_fraction of the side, cubic-upsampled."""
    size = image.shape[0]
    coarse = rng.uniform(-1, 1, size=(2, grid, grid)) * alpha_fraction * size
    displacement = np.stack(
        [ndimage.zoom(c, size / grid, order=3)[:size, :size] for c in coarse]
    )
    rows, columns = np.meshgrid(np.arange(size), np.arange(size), indexing="ij")
    coordinates = np.stack([rows + displacement[0], columns + displacement[1]])
    return (
        ndimage.map_coordinates(image, coordinates, order=1, mode="constant"),
        ndimage.map_coordinates(mask, coordinates, order=0, mode="constant"),
    )


def naive_augment(image, mask, rng):
    """The default augmentation, written per sample with numpy/scipy as people usually do."""
    if rng.random() < 0.5:
        image, mask = image[:, ::-1], mask[:, ::-1]
    if rng.random() < 0.5:
        image, mask = image[::-1], mask[::-1]
    if rng.random() < 0.5:
        angle = rng.uniform(-15, 15)
        scale = rng.uniform(0.85, 1.15)
        image = ndimage.rotate(image, angle, reshape=False, order=1)
        mask = ndimage.rotate(mask, angle, reshape=False, order=0)
        image = ndimage.affine_transform(image, np.eye(2) / scale, order=1)
        mask = ndimage.affine_transform(mask, np.eye(2) / scale, order=0)
    if rng.random() < 0.2:
        image, mask = _elastic(image, mask, rng)
    if rng.random() < 0.5:
        image = np.clip(image + rng.normal(0, rng.uniform(0.01, 0.05), image.shape), 0, 1)
    if rng.random() < 0.5:
        mean = image.mean()
        image = (image - mean) * rng.uniform(0.8, 1.5) + mean
    if rng.random() < 0.3:
        image = ndimage.gaussian_filter(image, rng.uniform(0.4, 0.8))
    return image.astype(np.float32), mask.astype(np.float32)


def naive_generator_pipeline(builder, split: str, size: int, batch_size: int):
    center, width = ABDOMEN_WINDOW

    def generate():
        rng = np.random.default_rng(0)
        for example in tfds.as_numpy(builder.as_dataset(split=split).repeat()):
            hu = example["image"].astype(np.float32)
            image = np.clip((hu - (center - width / 2)) / width, 0, 1)
            zoom = size / hu.shape[0]
            image = ndimage.zoom(image, zoom, order=1)
            mask = ndimage.zoom((example["mask"] > 0).astype(np.float32), zoom, order=0)
            image, mask = naive_augment(image, mask, rng)
            yield image[..., None], mask[..., None]

    signature = (
        tf.TensorSpec((size, size, 1), tf.float32),
        tf.TensorSpec((size, size, 1), tf.float32),
    )
    return tf.data.Dataset.from_generator(generate, output_signature=signature).batch(batch_size)


def slices_per_second(dataset: tf.data.Dataset, batches: int, batch_size: int) -> float:
    iterator = iter(dataset)
    next(iterator)  # trace, open files, fill buffers
    start = time.perf_counter()
    for _ in range(batches):
        next(iterator)
    return batches * batch_size / (time.perf_counter() - start)


def training_slices_per_second(size: int, batch_size: int, steps: int) -> float:
    model = kseg.models.build("unet_small", input_shape=(size, size, 1), base_filters=16)
    model.compile(
        optimizer=keras.optimizers.Adam(1e-3),
        loss=kseg.losses.ComboLoss(),
        metrics=[kseg.metrics.DiceScore()],
    )
    rng = np.random.default_rng(0)
    images = rng.random((batch_size, size, size, 1), dtype=np.float32)
    masks = (images > 0.5).astype(np.float32)
    batches = tf.data.Dataset.from_tensors((images, masks)).repeat()
    model.fit(batches, steps_per_epoch=1, epochs=1, verbose=0)  # compile the step
    start = time.perf_counter()
    model.fit(batches, steps_per_epoch=steps, epochs=1, verbose=0)
    return steps * batch_size / (time.perf_counter() - start)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 512])
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--batches", type=int, default=20, help="batches timed per pipeline")
    parser.add_argument("--train-steps", type=int, default=5, help="training steps timed")
    parser.add_argument("--patients", type=int, default=5)
    parser.add_argument("--slices", type=int, default=24)
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="kseg-bench-") as workdir:
        builder, split, count = build_phantom_dataset(
            pathlib.Path(workdir), args.patients, args.slices
        )
        print(f"synthetic chaos/ct: {count} slices of 512x512, batch size {args.batch_size}, "
              f"{os.cpu_count()} CPU cores, TensorFlow {tf.__version__}")
        header = ("size", "kseg tf.data", "naive numpy", "training", "pipeline / training")
        print("| " + " | ".join(header) + " |")
        print("|" + "---|" * len(header))
        for size in args.sizes:
            fast = slices_per_second(
                kseg_pipeline(builder, split, size, args.batch_size), args.batches,
                args.batch_size,
            )
            naive = slices_per_second(
                naive_generator_pipeline(builder, split, size, args.batch_size),
                max(2, args.batches // 4), args.batch_size,
            )
            training = training_slices_per_second(size, args.batch_size, args.train_steps)
            print(f"| {size}x{size} | {fast:.1f} slices/s | {naive:.1f} slices/s | "
                  f"{training:.1f} slices/s | {fast / training:.1f}x |")


if __name__ == "__main__":
    main()
