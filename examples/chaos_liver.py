"""CHAOS liver CT: from DICOM files to a per-patient Dice table.

With no arguments this writes a small SYNTHETIC CHAOS tree (abdominal phantoms in the
challenge's exact on-disk layout; never real data), builds the ``chaos/ct`` TFDS dataset
from it, trains a small U-Net on the CPU for a few minutes, keeps the best model by
whole-volume validation Dice, and prints and saves the per-patient test table. With
``--data-dir`` it does the same on the real CHAOS download (the folder holding
``Train_Sets/``).

Splits are by patient (``--folds``, 5 by default: fold0 test, fold1 validation, the rest
training). Scores are per patient, over the whole volume, on the original 512x512 grid.
As nnU-Net does, keeping only the largest connected liver component is applied to the
test predictions only if it raises the mean validation Dice of the best model
(``--postprocess``). The last line gives the run's wall-clock and CPU time.

Outputs in ``--output-dir``: ``best.keras`` (reload with ``kseg.load_model``),
``best.keras.json`` (its validation score and epoch), ``test_scores.csv``, ``history.csv``.
A crash mid-training resumes from the last epoch when the same command is run again.

Usage:
    python examples/chaos_liver.py
    python examples/chaos_liver.py --data-dir ~/data/CHAOS --image-size 256 --epochs 50
"""

from __future__ import annotations

import argparse
import os
import pathlib
import time

import _common

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

POSTPROCESSING_CHOICES = ("none", "largest-component")


def parse_args(argv=None) -> argparse.Namespace:
    """The command line, checked before TensorFlow loads (standard library only)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", type=pathlib.Path,
                        help="real CHAOS download (folder holding Train_Sets/); "
                             "default: a synthetic phantom tree")
    parser.add_argument("--output-dir", type=pathlib.Path, default=None,
                        help="default: kseg_runs/chaos_liver[_phantom]")
    parser.add_argument("--tfds-dir", type=pathlib.Path, default=None,
                        help="where TFDS writes the prepared dataset (default: in output-dir)")
    _common.add_folds_argument(parser)
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--image-size", type=int, default=128,
                        help="in-plane size the model trains at; scores use the original grid")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--base-filters", type=int, default=16)
    parser.add_argument("--learning-rate", type=float, default=2e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--postprocess", choices=("auto", *POSTPROCESSING_CHOICES),
                        default="auto",
                        help="auto: keep the largest component if it raises validation Dice")
    phantom = parser.add_argument_group("synthetic data (used when --data-dir is not given)")
    phantom.add_argument("--phantom-patients", type=int, default=10)
    phantom.add_argument("--phantom-slices", type=int, default=32)
    phantom.add_argument("--phantom-size", type=int, default=512, help="in-plane pixels")
    args = parser.parse_args(argv)
    _common.check_arguments(parser, args)
    if args.output_dir is None:
        suffix = "" if args.data_dir else "_phantom"
        args.output_dir = pathlib.Path("kseg_runs") / f"chaos_liver{suffix}"
    args.tfds_dir = args.tfds_dir or args.output_dir / "tfds"
    args.manual_dir = args.data_dir or args.output_dir / "phantom_chaos"
    patients, source = _common.patients_and_source(
        ct_patients_on_disk(args.manual_dir), args.manual_dir,
        None if args.data_dir else args.phantom_patients, "--phantom-patients",
    )
    _common.check_folds(parser, args.folds, patients, source)
    return args


def ct_patients_on_disk(manual_dir: pathlib.Path) -> int | None:
    """CT patient folders (named by number, as the ``chaos`` builder reads them), or
    ``None`` when there is no ``Train_Sets/CT`` yet."""
    ct_dir = manual_dir / "Train_Sets" / "CT"
    if not ct_dir.is_dir():
        return None
    return sum(1 for path in ct_dir.iterdir() if path.is_dir() and path.name.isdigit())


def prepare_tfds(args):
    """The ``chaos`` CT dataset in ``--folds`` folds, built once from the phantom (written
    on first use) or the download."""
    from kseg.phantoms import chaos
    from tfds_builders.chaos import Builder

    if args.data_dir is None and not (args.manual_dir / "Train_Sets").exists():
        with _common.writing_phantom(args.manual_dir, args.phantom_patients):
            chaos.write_chaos(args.manual_dir, modality="CT",
                              num_patients=args.phantom_patients,
                              num_slices=args.phantom_slices, size=args.phantom_size,
                              seed=args.seed)
    config = _common.with_folds(Builder.builder_configs["ct"], args.folds)
    builder = Builder(config=config, data_dir=str(args.tfds_dir))
    _common.prepare(builder, args.manual_dir)
    return builder


def choose_postprocessing(model, validation_split, preprocess, choice: str):
    """The clean-up ``--postprocess`` names, or with ``auto`` nnU-Net's choice on the
    validation patients (:func:`kseg.evaluation.choose_postprocessing`); returns its name
    and the ``postprocess`` function (``None``: labels as predicted)."""
    from kseg.evaluation import choose_postprocessing, predict_on_mask_grid, reassemble_slices
    from kseg.inference import keep_largest_component

    if choice != "auto":
        return choice, {"none": None, "largest-component": keep_largest_component}[choice]
    validation = predict_on_mask_grid(
        model, reassemble_slices(validation_split, preprocess=preprocess)
    )
    chosen = choose_postprocessing(validation)
    name = "largest-component" if chosen.labels else "none"
    print("Validation Dice without / with largest-component cleanup: "
          f"{chosen.dice_without['dice']:.4f} / {chosen.dice_with['dice']:.4f} -> {name}")
    return name, chosen.postprocess


def main(argv=None):
    args = parse_args(argv)
    clock = _common.RunClock()

    import keras

    import kseg
    import kseg.augment
    import kseg.losses
    import kseg.metrics
    import kseg.models
    from kseg.data.pipeline import model_input, segmentation_dataset
    from kseg.data.splits import split_names
    from kseg.evaluation import evaluate_slices
    from kseg.training import VolumeValidation, training_callbacks

    args.output_dir.mkdir(parents=True, exist_ok=True)
    keras.utils.set_random_seed(args.seed)

    builder = prepare_tfds(args)
    splits = split_names(args.folds, test_fold=0, validation_fold=1)
    size = (args.image_size, args.image_size)
    train = segmentation_dataset(
        builder.as_dataset(split=splits["train"]),
        window="abdomen",
        image_size=size,
        batch_size=args.batch_size,
        augment=kseg.augment.segmentation_augmenter(seed=args.seed),
        shuffle_buffer=1024,
        cache=True,
        seed=args.seed,
    )
    validation_slices = segmentation_dataset(
        builder.as_dataset(split=splits["validation"]),
        window="abdomen", image_size=size, batch_size=args.batch_size, cache=True,
    )
    # the model input exactly as segmentation_dataset makes it for training
    preprocess = model_input(window="abdomen", image_size=size)
    for name, split in splits.items():
        count = builder.info.splits[split].num_examples
        print(f"{name:>10}: {split:<18} {count} slices")

    model = kseg.models.build(
        "unet_small", input_shape=(*size, 1), num_classes=1, base_filters=args.base_filters,
        dropout=0.1,
    )
    model.compile(
        optimizer=keras.optimizers.Adam(args.learning_rate),
        loss=kseg.losses.ComboLoss(alpha=2 / 3, beta=0.5),
        metrics=[kseg.metrics.DiceScore(name="dice")],
    )
    # whole-volume Dice of each validation patient, on the original grid, drives the best
    # checkpoint and the learning rate; BackupAndRestore makes a crashed run resumable
    callbacks = training_callbacks(
        args.output_dir,
        VolumeValidation.from_slices(
            builder.as_dataset(split=splits["validation"]), preprocess=preprocess
        ),
    )
    fit_started = time.perf_counter()
    model.fit(train, validation_data=validation_slices, epochs=args.epochs,
              callbacks=callbacks, verbose=_common.fit_verbosity())
    fit_seconds = time.perf_counter() - fit_started

    best_path = args.output_dir / "best.keras"
    best = kseg.load_model(best_path)
    postprocess_name, postprocess = choose_postprocessing(
        best, builder.as_dataset(split=splits["validation"]), preprocess, args.postprocess
    )
    table = evaluate_slices(
        best,
        builder.as_dataset(split=splits["test"]),
        preprocess=preprocess,
        metrics=("dice", "iou", "precision", "recall", "specificity", "hd95", "assd"),
        postprocess=postprocess,
    )
    table.to_csv(args.output_dir / "test_scores.csv")
    source = "real CHAOS" if args.data_dir else "SYNTHETIC phantom"
    print(f"\nPer-patient test scores ({source} data, whole volumes, original grid, "
          f"post-processing: {postprocess_name}):")
    print(table)
    print(f"\nSaved {best_path} and {args.output_dir / 'test_scores.csv'}")
    print(f"training {fit_seconds:.0f} s; whole run {clock.summary()}")
    return table


if __name__ == "__main__":
    _common.run(main)
