"""LCTSC thoracic CT: a 2D U-Net from DICOM + RTSTRUCT to per-patient Dice tables for the lungs
(or five organs).

The recipe behind ``examples/lctsc_lungs.py`` (its docstring tells the story): an
``lctsc`` builder config (``--config``) in ``--folds`` patient-level folds of the training
patients (fold0 test, fold1 validation), the challenge's own ``LCTSC-Test-*`` patients in
the ``challenge_test`` split, lung window, ``unet_small`` with Dice + cross-entropy (sigmoid
for the lungs, softmax over the organs), the best model kept by whole-volume validation
Dice (the mean over organs) on the original grid.
"""

from __future__ import annotations

import os
import pathlib
import sys

from kseg.recipes import _common, _planned, cross_validation

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

DESCRIPTION = (
    "LCTSC thoracic CT: lungs (or five organs) from DICOM + RTSTRUCT to per-patient Dice tables."
)
DATASET = "lctsc"
WINDOW = "lung"
BINARY_METRICS = ("dice", "iou", "precision", "recall", "hd95", "assd")
# The challenge's own test patients, in no fold (the lctsc builder's rule).
TEST_PATIENT_PREFIX = "LCTSC-Test-"
# Two metrics per organ keep a five-organ table readable on a terminal.
ORGAN_METRICS = ("dice", "hd95")
# evaluate's splits: the internal test and validation folds, and the challenge's test set.
SPLITS = ("test", "validation", "challenge_test")
# The lctsc builder's configs and the manual-folder layout each reads, spelled out here so
# that --help and the option checks answer without importing the builder (TFDS takes
# seconds); tests/test_recipes.py checks them against the builder.
CONFIG_LAYOUTS = {
    "organs": "tcia",
    "organs_merged_lungs": "tcia",
    "lungs": "tcia",
    "lungs_stratified": "tcia",
    "npz_lungs": "npz",
}
# The options --plan auto|PATH sets (unless given) and their session-15 hand-picked
# values, which --plan none keeps.
HAND_PICKED = {
    "epochs": 10, "image_size": 128, "batch_size": 8, "depth": 3, "base_filters": 16,
    "learning_rate": 2e-3, "schedule": "plateau", "window": WINDOW, "augment": "recipe",
}  # fmt: skip


def add_arguments(parser) -> None:
    parser.add_argument(
        "--data-dir",
        type=pathlib.Path,
        help="real LCTSC download (folder holding LCTSC/, or the npz layout "
        "for --config npz_lungs); default: a synthetic phantom tree",
    )
    parser.add_argument(
        "--config",
        default="lungs",
        choices=sorted(CONFIG_LAYOUTS),
        help="lctsc builder config (classes, layout, folds)",
    )
    parser.add_argument(
        "--output-dir",
        type=pathlib.Path,
        default=None,
        help="default: kseg_runs/lctsc_<config>[_phantom]",
    )
    _common.add_tfds_dir_argument(parser)
    _common.add_folds_argument(parser)
    _planned.add_plan_arguments(parser, max_minutes=True)
    planned = _planned.planned_group(parser)
    _planned.add_ct_slice_arguments(planned, HAND_PICKED, "structures'")
    _planned.add_network_arguments(planned, HAND_PICKED)
    planned.add_argument(
        "--augment", choices=("recipe", "nnunet"),
        help="recipe: small affine + kseg's intensity changes; nnunet: nnU-Net's "
             "probabilities and ranges in kseg's layers, mirrored top-bottom only [recipe]",
    )  # fmt: skip
    parser.add_argument("--seed", type=int, default=0)
    _common.add_strategy_argument(parser)
    _common.add_tracking_arguments(parser)
    phantom = parser.add_argument_group("synthetic data (used when --data-dir is not given)")
    phantom.add_argument(
        "--phantom-patients",
        type=int,
        default=10,
        help="LCTSC-Train-* patients (at least one per fold)",
    )
    phantom.add_argument(
        "--phantom-test-patients",
        type=int,
        default=2,
        help="LCTSC-Test-* patients, the challenge_test split",
    )
    phantom.add_argument("--phantom-slices", type=int, default=24)
    phantom.add_argument("--phantom-size", type=int, default=256, help="in-plane pixels")


def finish_arguments(parser, args) -> None:
    _common.check_shared_arguments(parser, args)
    _planned.finish_arguments(parser, args, HAND_PICKED)
    if args.output_dir is None:
        suffix = "" if args.data_dir else "_phantom"
        args.output_dir = pathlib.Path("kseg_runs") / f"lctsc_{args.config}{suffix}"
    args.layout = CONFIG_LAYOUTS[args.config]
    args.manual_dir = args.data_dir or args.output_dir / f"phantom_lctsc_{args.layout}"
    _common.check_patient_folds(
        parser, args, training_patients_on_disk(args.manual_dir, args.layout), "--phantom-patients"
    )


def parse_args(argv=None):
    """The command line, checked before TensorFlow loads (standard library only)."""
    return _common.parse_args(sys.modules[__name__], argv)


def training_patients_on_disk(manual_dir: pathlib.Path, layout: str) -> int | None:
    """Training patients (the ``LCTSC-Test-*`` ones are never in a fold) by folder name:
    ``LCTSC/<patient>/`` in the TCIA layout, ``<patient>/<mask>.npz`` in the npz layout.
    ``None`` when no such folder is there (the builder then says what it expected)."""
    manual_dir = pathlib.Path(manual_dir)
    if layout == "tcia":
        parent, holds_patient = manual_dir / "LCTSC", pathlib.Path.is_dir
    else:
        parent, holds_patient = manual_dir, lambda folder: any(folder.glob("*.npz"))
    if not parent.is_dir():
        return None
    folders = [p for p in parent.iterdir() if p.is_dir() and holds_patient(p)]
    training = [p for p in folders if not p.name.startswith(TEST_PATIENT_PREFIX)]
    return len(training) if folders else None


def prepare(args):
    """Build the chosen config in ``--folds`` folds once (later runs reuse it) from the
    phantom (written on first use) or the download."""
    from kseg.phantoms import lctsc
    from tfds_builders.lctsc import Builder

    manual_dir = pathlib.Path(args.manual_dir)
    if args.data_dir is None and not manual_dir.exists():
        tcia = args.layout == "tcia"
        write = lctsc.write_lctsc if tcia else lctsc.write_lctsc_npz
        count = args.phantom_patients + args.phantom_test_patients
        with _common.writing_phantom(manual_dir, count):
            write(
                manual_dir,
                num_patients=args.phantom_patients,
                num_test_patients=args.phantom_test_patients,
                num_slices=args.phantom_slices,
                size=args.phantom_size,
                seed=args.seed,
            )
    config = _common.with_folds(Builder.builder_configs[args.config], args.folds)
    builder = Builder(config=config, data_dir=str(_common.tfds_dir(args)))
    _common.prepare(builder, manual_dir)
    return builder


def _classes(builder) -> tuple[int, dict]:
    """Model output channels (one sigmoid channel for the lungs, softmax over every class
    for the organ configs) and ``{structure: label value}``."""
    class_names = list(builder.info.metadata["class_names"])
    num_classes = 1 if len(class_names) == 2 else len(class_names)
    return num_classes, {name: index for index, name in enumerate(class_names) if index}


def splits(args) -> dict:
    """``{"train": ..., "validation": ..., "test": ..., "challenge_test": ...}``: the TFDS
    split of each role (``challenge_test``: the challenge's own test patients; no ``"test"``
    with ``--test-fold none``)."""
    from tfds_builders.lctsc.lctsc_dataset_builder import CHALLENGE_TEST_SPLIT

    return {**_common.fold_splits(args), "challenge_test": CHALLENGE_TEST_SPLIT}


def _image_size(args) -> tuple[int, int]:
    return (args.image_size, args.image_size)


def _window(args):
    """The intensity window (runs recorded before ``--window`` used the lung window)."""
    return getattr(args, "window", WINDOW)


def plan_settings(plan, training: int, args) -> dict:
    """The options a :class:`kseg.plan.Plan` sets (:func:`_planned.unet_settings`), with
    its CT normalisation as a window (the loss is already nnU-Net's Dice + CE)."""
    return {**_planned.unet_settings(plan, training, args), "window": _planned.ct_window(plan)}


def prepare_planned(args):
    """:func:`prepare`, then the plan's options filled into ``args`` (``--plan``)."""
    builder = prepare(args)
    _planned.apply(args, builder, plan_settings, training_split=splits(args)["train"])
    return builder


def augmenter(args):
    """The training augmentation: a small random affine (rotation up to 10 degrees, scale
    0.9-1.1, half the slices) and kseg's default intensity changes; with ``--augment
    nnunet`` nnU-Net's (:func:`_planned.nnunet_augmenter`), mirrored top-bottom only."""
    from kseg.augment import RandomAffine, segmentation_augmenter

    if getattr(args, "augment", "recipe") == "nnunet":
        # kseg's rule_mirror_axes spares the left-right axis of left/right classes
        return _planned.nnunet_augmenter(args.image_size, "CT", (0,), args.seed)

    # No flips: a left-right flip would swap the lungs of the organ classes.
    return segmentation_augmenter(
        2,
        spatial=[RandomAffine(2, rotation=10.0, scale=(0.9, 1.1), probability=0.5, seed=args.seed)],
        seed=args.seed + 1,
    )


def build_model(args, num_classes: int):
    """The compiled network: ``unet_small`` (``--depth`` poolings, dropout 0.1) with Dice +
    cross-entropy, Adam
    at ``--learning-rate``; ``num_classes`` output channels (1: sigmoid, else softmax)."""
    import kseg.losses

    return _common.compiled_unet_small(args, num_classes, loss=kseg.losses.DiceCELoss(),
                                       dropout=0.1)


def _training_data(args, builder, splits, num_classes, labels):
    """:func:`_common.slice_training_data`, the whole-volume validation Dice a mean over
    organs for the multi-class configs."""
    return _common.slice_training_data(
        args, builder, splits, augmenter, window=_window(args), num_classes=num_classes,
        labels=_common.scored_labels(num_classes, labels),
    )  # fmt: skip


def _train(args):
    """Train under ``--strategy``; returns ``(RUN/best.keras, fit seconds, chief)``."""
    from kseg.recipes import run_config

    run_dir = pathlib.Path(args.output_dir)
    start = _common.start_training(args, prepare_planned)
    builder = start.builder
    num_classes, labels = _classes(builder)
    if start.chief:
        inference = _planned.slice_inference(
            args, augmenter, labels, window=_window(args), num_classes=num_classes,
            postprocess="none", modality="CT",
        )  # fmt: skip
        run_config.write_config(run_dir, args, "lctsc_lungs", builder, labels, inference)
        _planned.record_sources(run_dir, args, HAND_PICKED)
    run_splits = splits(args)
    if start.chief:  # the chief describes the data for every worker
        for role, split in run_splits.items():
            if split in builder.info.splits:
                count = builder.info.splits[split].num_examples
                print(f"{role:>14}: {split:<18} {count} slices")
        print(f"classes: {list(builder.info.metadata['class_names'])}")
    training, validation_slices, validation = _training_data(
        start.training_args, builder, run_splits, num_classes, labels
    )
    with start.strategy.scope():
        model = build_model(start.training_args, num_classes)
    return _planned.fit(start, args, model, training, validation_slices, validation)


def train(args) -> pathlib.Path:
    """Write ``RUN/config.json`` and train (resuming a crashed run); returns
    ``RUN/best.keras``."""
    return _train(args)[0]


def evaluate(args, *, split: str = "test", input_dir=None):
    """Score the best model per patient, whole volumes on the original grid: on ``split``
    (``"test"`` = fold0, ``"validation"``, ``"challenge_test"``) or on every patient of
    ``input_dir`` (a folder in the layout of ``--config``). Writes
    ``RUN/evaluation/<name>/scores.csv`` and ``cases/<patient>.npz``."""
    if input_dir is None:
        _common.check_split(args, split)  # before TensorFlow loads
    from kseg.errors import LayoutError
    from kseg.predict import postprocessing
    from kseg.recipes import _evaluation
    from tfds_builders.lctsc import Builder

    run_dir = pathlib.Path(args.output_dir)
    model, inference = _evaluation.run_model(run_dir)
    # a cross-validation records the clean-up its out-of-fold predictions chose
    clean_up = postprocessing(inference)
    name = _common.evaluation_name(split, input_dir)
    if input_dir is None:
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        builder = prepare(args)
        examples_split = splits(args)[split]
        if examples_split not in builder.info.splits:
            raise LayoutError(
                args.manual_dir,
                f"holds no {TEST_PATIENT_PREFIX}* patients, so the prepared dataset has no "
                f"{examples_split} split to evaluate",
            )
        source = "real LCTSC" if args.data_dir else "SYNTHETIC phantom"
    else:
        builder = _evaluation.input_builder(
            Builder, Builder.builder_configs[args.config], input_dir, run_dir, name
        )
        examples_split = _evaluation.every_split(builder)
        source = str(input_dir)
    # an input folder is prepared with the run's config: the same classes
    num_classes, labels = _classes(builder)
    folder = _evaluation.scoring_folder(run_dir, name)
    scored_labels = _common.scored_labels(num_classes, labels)
    table = _evaluation.score_slice_cases(
        model,
        _evaluation.slice_volumes(lambda: builder.as_dataset(split=examples_split),
                                  window=_window(args), image_size=_image_size(args)),
        cases_dir=folder / "cases", labels=scored_labels, postprocess=clean_up,
        metrics=BINARY_METRICS if scored_labels is None else ORGAN_METRICS,
    )  # fmt: skip
    return _evaluation.show_table(
        args, table, folder, f"\nPer-patient scores on {name} = {examples_split} ({source} "
        "data, whole volumes, original grid, distances in mm):",
    )  # fmt: skip


def tune(args) -> dict | None:
    """Random / Bayesian / Hyperband / grid / staged search of the U-Net's width, loss and
    learning rate on the training folds, trials ranked by whole-volume validation Dice;
    results in ``RUN/tuning/<strategy>/``."""
    import keras

    from kseg.recipes import _tuning

    keras.utils.set_random_seed(args.seed)
    builder = prepare_planned(args)
    num_classes, labels = _classes(builder)
    return _tuning.search_unet_small(
        args, num_classes, _training_data(args, builder, splits(args), num_classes, labels),
        losses=["dice_ce", "dice"], learning_rate=(args.learning_rate / 10, args.learning_rate),
        dropout=0.1,
    )  # fmt: skip


def _report(args, best_path):
    builder = prepare(args)
    run_splits = splits(args)
    # the internal test fold, and the challenge's own test patients when the data has them
    evaluated = (["test"] if _common.has_test_fold(args) else []) + (
        ["challenge_test"] if run_splits["challenge_test"] in builder.info.splits else []
    )
    if not _common.has_test_fold(args):
        _common.skipping_test_evaluation(args)
    tables = {run_splits[split]: evaluate(args, split=split) for split in evaluated}
    num_classes, labels = _classes(builder)
    if tables:
        print("\nMean Dice per test split (the internal fold against the challenge's "
              "partition):")
    for split, table in tables.items():
        columns = (
            ["dice"]
            if _common.scored_labels(num_classes, labels) is None
            else [f"dice_{organ}" for organ in labels]
        )
        means = ", ".join(f"{column} {table.summary()[column]['mean']:.4f}" for column in columns)
        print(f"  {split:<15} {len(table)} patients: {means}")
    tables_saved = (f" and the test tables in {pathlib.Path(args.output_dir) / 'evaluation'}"
                    if tables else "")
    print(f"\nSaved {best_path}{tables_saved}")
    return tables


def main(argv=None):
    """The example: prepare, train, evaluate on the test fold and the challenge's test
    patients; returns ``{split: table}`` (without the test fold with ``--test-fold none``)."""
    # --validation-fold all: one member per non-test fold, RUN/best.keras their ensemble
    return cross_validation.run_main(sys.modules[__name__], argv, _train, _report)
