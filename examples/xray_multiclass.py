"""Chest X-ray segmentation with a small U-Net, scored per image on a held-out fold.

The seed this follows segmented lungs, heart and clavicles on chest radiographs with a
3-class U-Net and swept the training-set size from 5 to 105 images. This script runs that
recipe through kseg:

- data: the ``xray`` TFDS builder (``tfds_builders/xray``), patient-level folds: one for
  testing, one for validation, the rest for training; ``--max-train N`` keeps the first
  ``N`` training patients of a nested, seeded order (``nested_patient_subset``), so runs
  with growing ``N`` add patients and never swap them;
- input: each image scaled to [0, 1] by its own minimum and maximum (8-bit and 12-bit
  sources land on one scale), resized to ``--image-size`` (bilinear; masks nearest);
  small rotations / scalings and contrast changes as augmentation, no flips (a flip would
  swap left and right lungs and put the heart on the wrong side);
- training: ``unet_small`` (3 levels), Dice + cross-entropy, Adam, and
  ``kseg.training.training_callbacks``: after every epoch each validation radiograph is
  segmented and scored on its stored mask grid (``VolumeValidation``, every image a
  one-slice volume), and the mean of those per-image Dice scores (``val_volume_dice``;
  for several classes the mean over classes) keeps ``best.keras`` (written atomically)
  and halves the learning rate on a plateau; ``history.csv`` logs every epoch and
  ``BackupAndRestore`` resumes an interrupted run at the epoch it reached, best score
  included; ``--max-minutes`` is a training budget the run keeps (``TimeBudget``: it
  stops mid-epoch when one more batch and the validation after it would pass the budget,
  validates and checkpoints what it trained, and a resumed run keeps the budget left at its
  last backup). (Keras'
  own ``val_dice`` pools the pixels of the whole validation set, which weighs large images
  and large structures more than the per-image mean a paper reports.)
- evaluation: the best model segments every test image the same way; probabilities are
  resized back to the stored mask's grid and scored there
  (``kseg.evaluation.evaluate_volumes``), one row per image (Dice, IoU, precision, recall,
  HD95 in pixels), saved as ``test_per_image.csv`` beside ``best.keras``.

Usage::

    python examples/xray_multiclass.py                    # synthetic 3-class phantom, CPU
    python examples/xray_multiclass.py --data-dir /data/cxr --config generic \\
        --image-size 256 --max-minutes 10                  # your images/ + masks/ folders
    python examples/xray_multiclass.py --data-dir /data/xray --config jsrt_scr --max-train 25

With no ``--data-dir`` the script writes 60 synthetic 96 x 96 radiographs
(``kseg.phantoms.xray``, generic layout, masks 85 lungs / 170 heart / 255 clavicles;
``--phantom-images``, ``--phantom-size``) under ``--output-dir`` and trains for a few CPU
minutes. Outputs: ``best.keras`` (reload with ``kseg.load_model``), ``best.keras.json``
(its validation score and epoch), ``history.csv``, ``test_per_image.csv``. ``--config``
names one of the builder's configs (``generic``, ``montgomery``, ``montgomery_lungs``,
``jsrt_scr``, ``jsrt_scr_left_right``); see ``tfds_builders/xray/README.md`` for the layouts.

Reference:
    Ronneberger O., Fischer P., Brox T., "U-Net: Convolutional Networks for Biomedical Image
    Segmentation", MICCAI 2015; van Ginneken B. et al., "Segmentation of anatomical
    structures in chest radiographs using supervised methods", Medical Image Analysis 10(1),
    19-40 (2006).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import pathlib
import time

import _common

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

PHANTOM_DEFAULTS = {"image_size": 96, "epochs": 15, "batch_size": 4}
REAL_DEFAULTS = {"image_size": 256, "epochs": 40, "batch_size": 8}
METRICS = ("dice", "iou", "precision", "recall", "hd95")


def parse_args(argv=None) -> argparse.Namespace:
    """The command line, checked before TensorFlow loads (the builder module is light)."""
    from tfds_builders.xray import Builder

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", type=pathlib.Path,
                        help="manual folder of the chosen --config's layout; default: a "
                             "synthetic 3-class phantom written under --output-dir")
    parser.add_argument("--config", default="generic",
                        choices=sorted(Builder.builder_configs),
                        help="xray builder config used with --data-dir")
    parser.add_argument("--output-dir", type=pathlib.Path,
                        help="default: kseg_runs/xray_<config or phantom>")
    _common.add_folds_argument(parser)
    parser.add_argument("--test-fold", type=int, default=0)
    parser.add_argument("--validation-fold", type=int, default=1)
    parser.add_argument("--max-train", type=int,
                        help="train on this many patients (nested: 5 within 10 within ...)")
    parser.add_argument("--image-size", type=int, help="side the images are resized to")
    parser.add_argument("--epochs", type=int)
    parser.add_argument("--max-minutes", type=float,
                        help="training time budget in minutes: stop mid-epoch when one more "
                             "batch and the validation would pass it; the best model is kept")
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--base-filters", type=int, default=16)
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    phantom = parser.add_argument_group("synthetic data (used when --data-dir is not given)")
    phantom.add_argument("--phantom-images", type=int, default=60)
    phantom.add_argument("--phantom-size", type=int, default=96, help="pixels per side")
    args = parser.parse_args(argv)
    _common.check_arguments(parser, args)
    defaults = PHANTOM_DEFAULTS if args.data_dir is None else REAL_DEFAULTS
    for name, value in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    if args.output_dir is None:
        run = "phantom" if args.data_dir is None else args.config
        args.output_dir = pathlib.Path("kseg_runs") / f"xray_{run}"
    if args.image_size % 8:
        parser.error("--image-size must be a multiple of 8 (three 2x poolings)")
    args.manual_dir = args.data_dir or args.output_dir / "phantom"
    layout = "generic" if args.data_dir is None else Builder.builder_configs[args.config].layout
    patients, source = _common.patients_and_source(
        images_on_disk(args.manual_dir, layout), args.manual_dir,
        None if args.data_dir else args.phantom_images, "--phantom-images",
    )
    _common.check_folds(parser, args.folds, patients, source, test_fold=args.test_fold,
                        validation_fold=args.validation_fold)
    return args


def images_on_disk(manual_dir: pathlib.Path, layout: str) -> int | None:
    """Radiographs in the layout's image folder, or ``None`` when it is not there yet (the
    builder then says what it expected). Every public set has one radiograph per patient,
    so this is the patient count the folds are dealt from."""
    from tfds_builders.xray.layout import JSRT_IMAGE_FOLDER, MONTGOMERY_IMAGE_FOLDER

    folder = manual_dir / {"generic": "images", "montgomery": MONTGOMERY_IMAGE_FOLDER,
                           "jsrt_scr": JSRT_IMAGE_FOLDER}[layout]
    if not folder.is_dir():
        return None
    return sum(1 for path in folder.iterdir() if path.is_file() and not path.name.startswith("."))


def prepare_dataset(args):
    """Build the dataset in ``--folds`` folds once (later runs reuse it): the phantom
    (written on first use) or the real download."""
    from kseg.phantoms import xray
    from tfds_builders.xray import Builder

    if args.data_dir is None:
        if not (args.manual_dir / "images").exists():
            with _common.writing_phantom(args.manual_dir, args.phantom_images, "images"):
                xray.write_generic(
                    args.manual_dir, num_images=args.phantom_images, size=args.phantom_size,
                    seed=args.seed, classes=xray.GENERIC_CLASSES,
                )
        values = xray.mask_values(xray.GENERIC_CLASSES)
        config = dataclasses.replace(
            Builder.builder_configs["generic"],
            name="phantom_3class",
            description="Synthetic 3-class phantom (kseg.phantoms.xray).",
            class_names=("background", *xray.GENERIC_CLASSES),
            mask_value_ranges=((0, 0, 0), *((v, v, i + 1) for i, v in enumerate(values.values()))),
        )
    else:
        config = Builder.builder_configs[args.config]
    builder = Builder(config=_common.with_folds(config, args.folds),
                      data_dir=str(args.output_dir / "tfds"))
    _common.prepare(builder, args.manual_dir)
    return builder


def batches(builder, split, args, num_classes, *, patients=None, augment=None):
    from kseg.data.pipeline import keep_patients, scale_intensity, segmentation_dataset

    examples = builder.as_dataset(split=split, shuffle_files=augment is not None)
    if patients is not None:
        examples = keep_patients(examples, patients)
    return segmentation_dataset(
        examples,
        window=scale_intensity,
        image_size=(args.image_size, args.image_size),
        num_classes=num_classes,
        batch_size=args.batch_size,
        augment=augment,
        shuffle_buffer=512 if augment is not None else None,
        cache=True,
        seed=args.seed,
    )


def build_model(args, num_classes: int):
    import keras

    from kseg import models
    from kseg.losses import DiceCELoss
    from kseg.metrics import DiceScore

    model = models.build(
        "unet_small",
        input_shape=(args.image_size, args.image_size, 1),
        num_classes=num_classes,
        base_filters=args.base_filters,
    )
    model.compile(
        optimizer=keras.optimizers.Adam(args.learning_rate),
        loss=DiceCELoss(),
        metrics=[DiceScore(num_classes=num_classes)],
    )
    return model


def image_cases(builder, split, size: int):
    """``(image_id, model input (1, size, size, 1), mask (1, H, W), None)`` per image.

    Each radiograph is a one-slice volume, so ``VolumeValidation`` takes kseg's slice-wise
    path: predict at the model's size, resize the probabilities back to the stored mask's
    grid, score there.
    """
    from kseg.data.pipeline import model_input, scale_intensity

    preprocess = model_input(window=scale_intensity, image_size=(size, size))
    examples = builder.as_dataset(split=split, shuffle_files=False)
    for example in examples:
        inputs = preprocess(example).numpy()[None]
        yield example["image_id"].numpy().decode(), inputs, example["mask"].numpy()[None], None


def evaluate_test_split(model, cases, labels):
    """Per-image scores on the stored mask grid, in 2D (so HD95 measures the outline)."""
    from kseg.evaluation import evaluate_volumes, predict_on_mask_grid

    images = ((image_id, inputs[0], mask[0], spacing) for image_id, inputs, mask, spacing in cases)
    return evaluate_volumes(predict_on_mask_grid(model, images), metrics=METRICS, labels=labels)


def main(argv=None):
    args = parse_args(argv)
    clock = _common.RunClock()

    import keras

    import kseg
    from kseg.augment import RandomAffine, RandomContrast, segmentation_augmenter
    from kseg.data.pipeline import split_patient_ids
    from kseg.data.splits import nested_patient_subset, split_names
    from kseg.training import VolumeValidation, training_callbacks

    keras.utils.set_random_seed(args.seed)
    args.output_dir.mkdir(parents=True, exist_ok=True)
    builder = prepare_dataset(args)
    class_names = builder.builder_config.class_names
    # One sigmoid channel for a binary task, softmax over every class otherwise.
    num_classes = 1 if len(class_names) == 2 else len(class_names)
    labels = None
    if num_classes > 1:
        labels = {name.replace(" ", "_"): i for i, name in enumerate(class_names) if i}
    splits = split_names(args.folds, test_fold=args.test_fold,
                         validation_fold=args.validation_fold)
    patients = split_patient_ids(builder, splits["train"])
    if args.max_train is not None:
        patients = nested_patient_subset(patients, args.max_train, seed=args.seed)
    print(f"dataset {builder.info.full_name} in {builder.data_dir}; classes {class_names}; "
          f"{len(patients)} training patients; splits {splits}")

    augmenter = segmentation_augmenter(
        2,
        spatial=[RandomAffine(2, rotation=10.0, scale=(0.9, 1.1), probability=0.5,
                              seed=args.seed)],
        intensity=[RandomContrast(0.5, factor=(0.8, 1.25), seed=args.seed + 1)],
    )
    train = batches(builder, splits["train"], args, num_classes, patients=patients,
                    augment=augmenter)
    validation = batches(builder, splits["validation"], args, num_classes)
    model = build_model(args, num_classes)

    callbacks = training_callbacks(
        args.output_dir,
        VolumeValidation(image_cases(builder, splits["validation"], args.image_size),
                         labels=labels),
        max_minutes=args.max_minutes,
    )
    fit_started = time.perf_counter()
    model.fit(train, validation_data=validation, epochs=args.epochs, callbacks=callbacks,
              verbose=_common.fit_verbosity())
    fit_seconds = time.perf_counter() - fit_started

    best = kseg.load_model(args.output_dir / "best.keras")
    table = evaluate_test_split(
        best, image_cases(builder, splits["test"], args.image_size), labels
    )
    table.to_csv(args.output_dir / "test_per_image.csv")
    print(f"\nTest fold {args.test_fold}, one row per image, scored on the stored mask grid "
          "(HD95 in pixels):")
    print(table)
    print(f"\nOutputs in {args.output_dir}")
    print(f"training {fit_seconds:.0f} s; whole run {clock.summary()}")
    return table


if __name__ == "__main__":
    _common.run(main)
