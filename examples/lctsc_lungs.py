"""LCTSC thoracic CT: lungs (or five organs) from DICOM + RTSTRUCT to per-patient Dice tables.

With no arguments this writes a small SYNTHETIC LCTSC tree (chest phantoms in the TCIA
download's exact layout, RT Structure Sets included; never real data), builds the
``lctsc/lungs`` TFDS dataset from it, trains a small U-Net on the CPU for a few minutes,
keeps the best model by whole-volume validation Dice, and prints and saves two per-patient
test tables: one on the internal test fold (``fold0``) and one on the challenge's own test
patients (``challenge_test``), so the two ways of splitting LCTSC can be compared. With
``--data-dir`` it does the same on the real TCIA download (the folder holding ``LCTSC/``).

``--config`` picks the ``lctsc`` builder config: ``lungs`` (binary, the default),
``lungs_stratified`` (folds stratified by sex and empty-slice fraction), ``organs`` (left
lung, right lung, heart, esophagus, spinal cord) or ``organs_merged_lungs`` (one lungs
class), or ``npz_lungs`` (the pre-converted DICOM + npz layout). A multi-class config
trains a softmax U-Net on sparse labels with Dice + cross-entropy and scores every organ
in its own columns (``dice_heart``, ...); the best checkpoint follows the mean over organs.
On the default phantom at 128 x 128 the esophagus and the spinal cord are 2 to 5 pixels
across and differ from the surrounding soft tissue by 5 to 10 HU, so the few CPU epochs of
the default run learn the lungs and the heart but not these two (their Dice stays 0); give
them ``--image-size 256`` or more and many more epochs.

Splits are by patient: the training patients in ``--folds`` folds (5 by default; fold0
test, fold1 validation, the rest training); ``LCTSC-Test-*`` patients only in
``challenge_test``. Inputs are the lung window (-600 / 1500 HU) resized to
``--image-size``; scores are per patient, over the whole volume, on the original grid. No
flips in the augmentation: a left-right flip would swap the lungs of the ``organs`` classes.

Outputs in ``--output-dir``: ``best.keras`` (reload with ``kseg.load_model``),
``best.keras.json`` (its validation score and epoch), ``test_fold0.csv``,
``test_challenge_test.csv`` (when the data has test patients), ``history.csv``. A crash
mid-training resumes from the last epoch when the same command is run again.

Usage:
    python examples/lctsc_lungs.py
    python examples/lctsc_lungs.py --config organs
    python examples/lctsc_lungs.py --data-dir ~/data/tcia --image-size 256 --epochs 50

Reference:
    Yang et al., "Autosegmentation for thoracic radiation treatment planning: A grand
    challenge at AAPM 2017", Medical Physics 45(10), 4568-4581 (2018).
"""

from __future__ import annotations

import argparse
import os
import pathlib
import time

import _common

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

BINARY_METRICS = ("dice", "iou", "precision", "recall", "hd95", "assd")
# The challenge's own test patients, in no fold (the lctsc builder's rule).
TEST_PATIENT_PREFIX = "LCTSC-Test-"
# Two metrics per organ keep a five-organ table readable on a terminal.
ORGAN_METRICS = ("dice", "hd95")


def parse_args(argv=None) -> argparse.Namespace:
    """The command line, checked before TensorFlow loads (the builder module is light)."""
    from tfds_builders.lctsc import Builder

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", type=pathlib.Path,
                        help="real LCTSC download (folder holding LCTSC/, or the npz layout "
                             "for --config npz_lungs); default: a synthetic phantom tree")
    parser.add_argument("--config", default="lungs", choices=sorted(Builder.builder_configs),
                        help="lctsc builder config (classes, layout, folds)")
    parser.add_argument("--output-dir", type=pathlib.Path, default=None,
                        help="default: kseg_runs/lctsc_<config>[_phantom]")
    parser.add_argument("--tfds-dir", type=pathlib.Path, default=None,
                        help="where TFDS writes the prepared dataset (default: in output-dir)")
    _common.add_folds_argument(parser)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--image-size", type=int, default=128,
                        help="in-plane size the model trains at; scores use the original grid")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--base-filters", type=int, default=16)
    parser.add_argument("--learning-rate", type=float, default=2e-3)
    parser.add_argument("--seed", type=int, default=0)
    phantom = parser.add_argument_group("synthetic data (used when --data-dir is not given)")
    phantom.add_argument("--phantom-patients", type=int, default=10,
                         help="LCTSC-Train-* patients (at least one per fold)")
    phantom.add_argument("--phantom-test-patients", type=int, default=2,
                         help="LCTSC-Test-* patients, the challenge_test split")
    phantom.add_argument("--phantom-slices", type=int, default=24)
    phantom.add_argument("--phantom-size", type=int, default=256, help="in-plane pixels")
    args = parser.parse_args(argv)
    _common.check_arguments(parser, args)
    if args.image_size % 8:
        parser.error("--image-size must be a multiple of 8 (three 2x poolings)")
    if args.output_dir is None:
        suffix = "" if args.data_dir else "_phantom"
        args.output_dir = pathlib.Path("kseg_runs") / f"lctsc_{args.config}{suffix}"
    args.tfds_dir = args.tfds_dir or args.output_dir / "tfds"
    args.layout = Builder.builder_configs[args.config].layout
    args.manual_dir = args.data_dir or args.output_dir / f"phantom_lctsc_{args.layout}"
    patients, source = _common.patients_and_source(
        training_patients_on_disk(args.manual_dir, args.layout), args.manual_dir,
        None if args.data_dir else args.phantom_patients, "--phantom-patients",
    )
    _common.check_folds(parser, args.folds, patients, source)
    return args


def training_patients_on_disk(manual_dir: pathlib.Path, layout: str) -> int | None:
    """Training patients (the ``LCTSC-Test-*`` ones are never in a fold) by folder name:
    ``LCTSC/<patient>/`` in the TCIA layout, ``<patient>/<mask>.npz`` in the npz layout.
    ``None`` when no such folder is there (the builder then says what it expected)."""
    if layout == "tcia":
        parent, holds_patient = manual_dir / "LCTSC", pathlib.Path.is_dir
    else:
        parent, holds_patient = manual_dir, lambda folder: any(folder.glob("*.npz"))
    if not parent.is_dir():
        return None
    folders = [p for p in parent.iterdir() if p.is_dir() and holds_patient(p)]
    training = [p for p in folders if not p.name.startswith(TEST_PATIENT_PREFIX)]
    return len(training) if folders else None


def prepare_tfds(args):
    """Build the chosen config in ``--folds`` folds once (later runs reuse it) from the
    phantom (written on first use) or the download."""
    from kseg.phantoms import lctsc
    from tfds_builders.lctsc import Builder

    if args.data_dir is None and not args.manual_dir.exists():
        tcia = args.layout == "tcia"
        write = lctsc.write_lctsc if tcia else lctsc.write_lctsc_npz
        count = args.phantom_patients + args.phantom_test_patients
        with _common.writing_phantom(args.manual_dir, count):
            write(args.manual_dir, num_patients=args.phantom_patients,
                  num_test_patients=args.phantom_test_patients, num_slices=args.phantom_slices,
                  size=args.phantom_size, seed=args.seed)
    config = _common.with_folds(Builder.builder_configs[args.config], args.folds)
    builder = Builder(config=config, data_dir=str(args.tfds_dir))
    _common.prepare(builder, args.manual_dir)
    return builder


def main(argv=None):
    args = parse_args(argv)
    clock = _common.RunClock()

    import keras

    import kseg
    import kseg.losses
    import kseg.metrics
    import kseg.models
    from kseg.augment import RandomAffine, segmentation_augmenter
    from kseg.data.pipeline import model_input, segmentation_dataset
    from kseg.data.splits import split_names
    from kseg.evaluation import evaluate_slices
    from kseg.training import VolumeValidation, training_callbacks
    from tfds_builders.lctsc.lctsc_dataset_builder import CHALLENGE_TEST_SPLIT

    args.output_dir.mkdir(parents=True, exist_ok=True)
    keras.utils.set_random_seed(args.seed)

    builder = prepare_tfds(args)
    class_names = list(builder.info.metadata["class_names"])
    # One sigmoid channel for the lungs, softmax over every class for the organ configs.
    num_classes = 1 if len(class_names) == 2 else len(class_names)
    labels = None if num_classes == 1 else {
        name: index for index, name in enumerate(class_names) if index
    }
    metrics = BINARY_METRICS if labels is None else ORGAN_METRICS
    splits = split_names(args.folds, test_fold=0, validation_fold=1)
    test_splits = [splits["test"]]
    if CHALLENGE_TEST_SPLIT in builder.info.splits:
        test_splits.append(CHALLENGE_TEST_SPLIT)
    for role, split in [*splits.items(), *(("test", split) for split in test_splits[1:])]:
        count = builder.info.splits[split].num_examples
        print(f"{role:>10}: {split:<18} {count} slices")
    print(f"classes: {class_names}")

    size = (args.image_size, args.image_size)
    augmenter = segmentation_augmenter(
        2,
        spatial=[RandomAffine(2, rotation=10.0, scale=(0.9, 1.1), probability=0.5,
                              seed=args.seed)],
        seed=args.seed + 1,
    )
    train = segmentation_dataset(
        builder.as_dataset(split=splits["train"]),
        window="lung",
        image_size=size,
        num_classes=num_classes,
        batch_size=args.batch_size,
        augment=augmenter,
        shuffle_buffer=1024,
        cache=True,
        seed=args.seed,
    )
    validation_slices = segmentation_dataset(
        builder.as_dataset(split=splits["validation"]),
        window="lung", image_size=size, num_classes=num_classes, batch_size=args.batch_size,
        cache=True,
    )
    # the model input exactly as segmentation_dataset makes it for training
    preprocess = model_input(window="lung", image_size=size)

    model = kseg.models.build(
        "unet_small", input_shape=(*size, 1), num_classes=num_classes,
        base_filters=args.base_filters, dropout=0.1,
    )
    model.compile(
        optimizer=keras.optimizers.Adam(args.learning_rate),
        loss=kseg.losses.DiceCELoss(),
        metrics=[kseg.metrics.DiceScore(num_classes=num_classes, name="dice")],
    )
    # whole-volume Dice of each validation patient (mean over organs for the multi-class
    # configs), on the original grid, drives the best checkpoint and the learning rate
    callbacks = training_callbacks(
        args.output_dir,
        VolumeValidation.from_slices(
            builder.as_dataset(split=splits["validation"]), preprocess=preprocess,
            labels=labels,
        ),
    )
    fit_started = time.perf_counter()
    model.fit(train, validation_data=validation_slices, epochs=args.epochs,
              callbacks=callbacks, verbose=_common.fit_verbosity())
    fit_seconds = time.perf_counter() - fit_started

    best_path = args.output_dir / "best.keras"
    best = kseg.load_model(best_path)
    source = "real LCTSC" if args.data_dir else "SYNTHETIC phantom"
    tables = {}
    for split in test_splits:
        table = evaluate_slices(
            best, builder.as_dataset(split=split), preprocess=preprocess, metrics=metrics,
            labels=labels,
        )
        table.to_csv(args.output_dir / f"test_{split}.csv")
        print(f"\nPer-patient scores on {split} ({source} data, whole volumes, original grid, "
              "distances in mm):")
        print(table)
        tables[split] = table

    print("\nMean Dice per test split (the internal fold against the challenge's partition):")
    for split, table in tables.items():
        columns = ["dice"] if labels is None else [f"dice_{organ}" for organ in labels]
        means = ", ".join(f"{column} {table.summary()[column]['mean']:.4f}" for column in columns)
        print(f"  {split:<15} {len(table)} patients: {means}")
    print(f"\nSaved {best_path} and the test tables in {args.output_dir}")
    print(f"training {fit_seconds:.0f} s; whole run {clock.summary()}")
    return tables


if __name__ == "__main__":
    _common.run(main)
