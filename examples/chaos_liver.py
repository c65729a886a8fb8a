"""CHAOS liver CT: from DICOM files to a per-patient Dice table.

With no arguments this writes a small SYNTHETIC CHAOS tree (abdominal phantoms in the
challenge's exact on-disk layout; never real data), builds the ``chaos/ct`` TFDS dataset
from it, trains a small U-Net on the CPU for a few minutes, keeps the best model by
whole-volume validation Dice, and prints and saves the per-patient test table. With
``--data-dir`` it does the same on the real CHAOS download (the folder holding
``Train_Sets/``).

Splits are by patient (5 folds: fold0 test, fold1 validation, the rest training). Scores
are per patient, over the whole volume, on the original 512x512 grid. As nnU-Net does,
keeping only the largest connected liver component is applied to the test predictions
only if it raises the mean validation Dice of the best model (``--postprocess``).

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

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import tensorflow_datasets as tfds  # noqa: E402

import kseg  # noqa: E402
import kseg.augment  # noqa: E402
import kseg.losses  # noqa: E402
import kseg.metrics  # noqa: E402
import kseg.models  # noqa: E402
import tfds_builders.chaos  # noqa: E402, F401  (registers the "chaos" dataset)
from kseg.data import phantoms  # noqa: E402
from kseg.data.pipeline import model_input, segmentation_dataset  # noqa: E402
from kseg.data.splits import split_names  # noqa: E402
from kseg.evaluation import evaluate_slices  # noqa: E402
from kseg.inference import keep_largest_component  # noqa: E402
from kseg.training import VolumeValidation, training_callbacks  # noqa: E402

NUM_FOLDS = 5
POSTPROCESSING = {"none": None, "largest-component": keep_largest_component}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", type=pathlib.Path,
                        help="real CHAOS download (folder holding Train_Sets/); "
                             "default: a synthetic phantom tree")
    parser.add_argument("--output-dir", type=pathlib.Path, default=None,
                        help="default: kseg_runs/chaos_liver[_phantom]")
    parser.add_argument("--tfds-dir", type=pathlib.Path, default=None,
                        help="where TFDS writes the prepared dataset (default: in output-dir)")
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--image-size", type=int, default=128,
                        help="in-plane size the model trains at; scores use the original grid")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--base-filters", type=int, default=16)
    parser.add_argument("--learning-rate", type=float, default=2e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--postprocess", choices=("auto", *POSTPROCESSING), default="auto",
                        help="auto: keep the largest component if it raises validation Dice")
    phantom = parser.add_argument_group("synthetic data (used when --data-dir is not given)")
    phantom.add_argument("--phantom-patients", type=int, default=10)
    phantom.add_argument("--phantom-slices", type=int, default=32)
    phantom.add_argument("--phantom-size", type=int, default=512, help="in-plane pixels")
    return parser.parse_args(argv)


def prepare_tfds(args) -> tfds.core.DatasetBuilder:
    if args.data_dir is None:
        manual_dir = args.output_dir / "phantom_chaos"
        if not (manual_dir / "Train_Sets").exists():
            print(f"Writing a SYNTHETIC CHAOS tree (phantoms, not patients) to {manual_dir}")
            phantoms.write_chaos(manual_dir, modality="CT", num_patients=args.phantom_patients,
                                 num_slices=args.phantom_slices, size=args.phantom_size,
                                 seed=args.seed)
    else:
        manual_dir = args.data_dir
    builder = tfds.builder("chaos/ct", data_dir=str(args.tfds_dir))
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=str(manual_dir))
    )
    return builder


def choose_postprocessing(model, validation_split, preprocess, choice: str) -> str:
    """nnU-Net's rule: clean up only if it raises the mean whole-volume validation Dice."""
    if choice != "auto":
        return choice
    mean_dice = {
        name: evaluate_slices(
            model, validation_split, preprocess=preprocess, metrics=("dice",),
            postprocess=step, progress=False,
        ).summary()["dice"]["mean"]
        for name, step in POSTPROCESSING.items()
    }
    chosen = "largest-component" if mean_dice["largest-component"] > mean_dice["none"] else "none"
    print("Validation Dice without / with largest-component cleanup: "
          f"{mean_dice['none']:.4f} / {mean_dice['largest-component']:.4f} -> {chosen}")
    return chosen


def main(argv=None):
    args = parse_args(argv)
    if args.output_dir is None:
        suffix = "" if args.data_dir else "_phantom"
        args.output_dir = pathlib.Path("kseg_runs") / f"chaos_liver{suffix}"
    args.output_dir.mkdir(parents=True, exist_ok=True)
    args.tfds_dir = args.tfds_dir or args.output_dir / "tfds"
    keras.utils.set_random_seed(args.seed)

    builder = prepare_tfds(args)
    splits = split_names(NUM_FOLDS, test_fold=0, validation_fold=1)
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
    model.fit(train, validation_data=validation_slices, epochs=args.epochs,
              callbacks=callbacks, verbose=2)

    best_path = args.output_dir / "best.keras"
    best = kseg.load_model(best_path)
    postprocess = choose_postprocessing(
        best, builder.as_dataset(split=splits["validation"]), preprocess, args.postprocess
    )
    table = evaluate_slices(
        best,
        builder.as_dataset(split=splits["test"]),
        preprocess=preprocess,
        metrics=("dice", "iou", "precision", "recall", "specificity", "hd95", "assd"),
        postprocess=POSTPROCESSING[postprocess],
    )
    table.to_csv(args.output_dir / "test_scores.csv")
    source = "real CHAOS" if args.data_dir else "SYNTHETIC phantom"
    print(f"\nPer-patient test scores ({source} data, whole volumes, original grid, "
          f"post-processing: {postprocess}):")
    print(table)
    print(f"\nSaved {best_path} and {args.output_dir / 'test_scores.csv'}")
    return table


if __name__ == "__main__":
    main()
