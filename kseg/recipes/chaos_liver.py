"""CHAOS liver CT: a 2D U-Net from the challenge's DICOM files to a per-patient Dice table.

The recipe behind ``examples/chaos_liver.py`` (its docstring tells the story): the
``chaos/ct`` TFDS dataset in ``--folds`` patient-level folds (fold0 test, fold1
validation), abdomen window, ``unet_small`` with Combo loss, the best model kept by
whole-volume validation Dice on the original grid, and nnU-Net's post-processing rule
(keep the largest liver component if that raises the mean validation Dice), decided once
after training and recorded in ``config.json``.
"""

from __future__ import annotations

import os
import pathlib
import sys

from kseg.recipes import _common, _planned, cross_validation

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

DESCRIPTION = "CHAOS liver CT: from DICOM files to a per-patient Dice table."
DATASET = "chaos"
LABELS = {"liver": 1}
WINDOW = "abdomen"
POSTPROCESSING_CHOICES = ("none", "largest-component")
METRICS = ("dice", "iou", "precision", "recall", "specificity", "hd95", "assd")
# The options --plan auto|PATH sets (unless given) and their session-15 hand-picked
# values, which --plan none keeps.
HAND_PICKED = {
    "epochs": 12, "image_size": 128, "batch_size": 8, "depth": 3, "base_filters": 16,
    "learning_rate": 2e-3, "schedule": "plateau", "loss": "combo", "window": WINDOW,
    "augment": "recipe",
}  # fmt: skip
LOSSES = ("combo", "dice_ce")


def add_arguments(parser) -> None:
    parser.add_argument(
        "--data-dir",
        type=pathlib.Path,
        help="real CHAOS download (folder holding Train_Sets/); default: a synthetic phantom tree",
    )
    parser.add_argument(
        "--output-dir",
        type=pathlib.Path,
        default=None,
        help="default: kseg_runs/chaos_liver[_phantom]",
    )
    _common.add_tfds_dir_argument(parser)
    _common.add_folds_argument(parser)
    _planned.add_plan_arguments(parser, max_minutes=True)
    planned = _planned.planned_group(parser)
    _planned.add_ct_slice_arguments(planned, HAND_PICKED, "liver's")
    _planned.add_network_arguments(planned, HAND_PICKED)
    planned.add_argument("--loss", choices=LOSSES, help="Combo or Dice + cross-entropy [combo]")
    planned.add_argument(
        "--augment", choices=("recipe", "nnunet"),
        help="recipe: kseg's default 2D augmentation; nnunet: nnU-Net's probabilities and "
             "ranges in kseg's layers [recipe]",
    )  # fmt: skip
    parser.add_argument("--seed", type=int, default=0)
    _common.add_strategy_argument(parser)
    parser.add_argument(
        "--postprocess",
        choices=("auto", *POSTPROCESSING_CHOICES),
        default="auto",
        help="auto: keep the largest component if it raises validation Dice",
    )
    _common.add_tracking_arguments(parser)
    phantom = parser.add_argument_group("synthetic data (used when --data-dir is not given)")
    phantom.add_argument("--phantom-patients", type=int, default=10)
    phantom.add_argument("--phantom-slices", type=int, default=32)
    phantom.add_argument("--phantom-size", type=int, default=512, help="in-plane pixels")


def finish_arguments(parser, args) -> None:
    _common.check_shared_arguments(parser, args)
    _planned.finish_arguments(parser, args, HAND_PICKED)
    if args.output_dir is None:
        suffix = "" if args.data_dir else "_phantom"
        args.output_dir = pathlib.Path("kseg_runs") / f"chaos_liver{suffix}"
    args.manual_dir = args.data_dir or args.output_dir / "phantom_chaos"
    _common.check_patient_folds(
        parser, args, ct_patients_on_disk(args.manual_dir), "--phantom-patients"
    )


def parse_args(argv=None):
    """The command line, checked before TensorFlow loads (standard library only)."""
    return _common.parse_args(sys.modules[__name__], argv)


def ct_patients_on_disk(manual_dir: pathlib.Path) -> int | None:
    """CT patient folders (named by number, as the ``chaos`` builder reads them), or
    ``None`` when there is no ``Train_Sets/CT`` yet."""
    ct_dir = pathlib.Path(manual_dir) / "Train_Sets" / "CT"
    if not ct_dir.is_dir():
        return None
    return sum(1 for path in ct_dir.iterdir() if path.is_dir() and path.name.isdigit())


def prepare(args):
    """The ``chaos`` CT dataset in ``--folds`` folds, built once from the phantom (written
    on first use) or the download."""
    from kseg.phantoms import chaos
    from tfds_builders.chaos import Builder

    manual_dir = pathlib.Path(args.manual_dir)
    if args.data_dir is None and not (manual_dir / "Train_Sets").exists():
        with _common.writing_phantom(manual_dir, args.phantom_patients):
            chaos.write_chaos(
                manual_dir,
                modality="CT",
                num_patients=args.phantom_patients,
                num_slices=args.phantom_slices,
                size=args.phantom_size,
                seed=args.seed,
            )
    config = _common.with_folds(Builder.builder_configs["ct"], args.folds)
    builder = Builder(config=config, data_dir=str(_common.tfds_dir(args)))
    _common.prepare(builder, manual_dir)
    return builder


def splits(args) -> dict:
    """``{"train": ..., "validation": ..., "test": ...}``: the TFDS split of each role
    (no ``"test"`` with ``--test-fold none``)."""
    return _common.fold_splits(args)


def _image_size(args) -> tuple[int, int]:
    return (args.image_size, args.image_size)


def _window(args):
    """The intensity window (runs recorded before ``--window`` used the abdomen's)."""
    return getattr(args, "window", WINDOW)


def plan_settings(plan, training: int, args) -> dict:
    """The options a :class:`kseg.plan.Plan` sets (:func:`_planned.unet_settings`), with
    nnU-Net's Dice + cross-entropy and its CT normalisation as a window."""
    return {**_planned.unet_settings(plan, training, args), "loss": "dice_ce",
            "window": _planned.ct_window(plan)}


def prepare_planned(args):
    """:func:`prepare`, then the plan's options filled into ``args`` (``--plan``)."""
    builder = prepare(args)
    _planned.apply(args, builder, plan_settings, training_split=splits(args)["train"])
    return builder


def augmenter(args):
    """The training augmentation: kseg's default 2D joint augmentation (flips included:
    the liver task has one class, so a flip swaps nothing), or with ``--augment nnunet``
    nnU-Net's (:func:`_planned.nnunet_augmenter`, every axis mirrored)."""
    import kseg.augment

    if getattr(args, "augment", "recipe") == "nnunet":
        return _planned.nnunet_augmenter(args.image_size, "CT", (0, 1), args.seed)
    return kseg.augment.segmentation_augmenter(seed=args.seed)


def build_model(args, num_classes: int = 1):
    """The compiled network: ``unet_small`` (``--depth`` poolings, dropout 0.1) with
    ``--loss`` (Combo or Dice + cross-entropy), Adam at ``--learning-rate``;
    ``num_classes`` output channels (the liver task's 1: sigmoid)."""
    import kseg.losses

    if getattr(args, "loss", "combo") == "dice_ce":
        loss = kseg.losses.DiceCELoss()
    else:
        loss = kseg.losses.ComboLoss(alpha=2 / 3, beta=0.5)
    return _common.compiled_unet_small(args, num_classes, loss=loss, dropout=0.1)


def _training_data(args, builder, splits):
    """Augmented training batches, validation slice batches, and the whole-volume
    validation that picks the checkpoint (:func:`_common.slice_training_data`)."""
    return _common.slice_training_data(args, builder, splits, augmenter, window=_window(args))


def _train(args):
    """Train under ``--strategy``; returns ``(RUN/best.keras, fit seconds, chief)``."""
    from kseg.recipes import _evaluation, run_config

    run_dir = pathlib.Path(args.output_dir)
    start = _common.start_training(args, prepare_planned)
    builder = start.builder
    if start.chief:
        inference = _planned.slice_inference(
            args, augmenter, LABELS, window=_window(args), num_classes=1,
            postprocess=args.postprocess, modality="CT",
        )  # fmt: skip
        run_config.write_config(run_dir, args, "chaos_liver", builder, LABELS, inference)
        _planned.record_sources(run_dir, args, HAND_PICKED)
    run_splits = splits(args)
    training, validation_slices, validation = _training_data(
        start.training_args, builder, run_splits
    )
    if start.chief:  # the chief describes the data for every worker
        for name, split in run_splits.items():
            count = builder.info.splits[split].num_examples
            print(f"{name:>10}: {split:<18} {count} slices")

    with start.strategy.scope():
        model = build_model(start.training_args, 1)
    best_path, fit_seconds, chief = _planned.fit(
        start, args, model, training, validation_slices, validation
    )
    if args.postprocess == "auto" and chief:  # it rewrites config.json
        model, _ = _evaluation.run_model(run_dir)
        _choose_postprocessing(args, model, builder, run_splits)
    return best_path, fit_seconds, chief


def train(args) -> pathlib.Path:
    """Write ``RUN/config.json``, train (resuming a crashed run), decide the
    post-processing on validation; returns ``RUN/best.keras``."""
    return _train(args)[0]


def _choose_postprocessing(args, model, builder, splits) -> str:
    """nnU-Net's choice on the validation patients
    (:func:`kseg.evaluation.choose_postprocessing`), recorded in ``config.json``."""
    from kseg.data.pipeline import model_input
    from kseg.evaluation import choose_postprocessing, predict_on_mask_grid, reassemble_slices
    from kseg.recipes import run_config

    preprocess = model_input(window=_window(args), image_size=_image_size(args))
    validation = predict_on_mask_grid(
        model,
        reassemble_slices(builder.as_dataset(split=splits["validation"]), preprocess=preprocess),
    )
    chosen = choose_postprocessing(validation)
    name = "largest-component" if chosen.labels else "none"
    print(
        "Validation Dice without / with largest-component cleanup: "
        f"{chosen.dice_without['dice']:.4f} / {chosen.dice_with['dice']:.4f} -> {name}"
    )
    run_config.update_inference(args.output_dir, postprocess=name)
    return name


def evaluate(args, *, split: str = "test", input_dir=None):
    """Score the best model per patient, whole volumes on the original grid, with the
    post-processing recorded in ``config.json``: on ``split`` (``"test"`` or
    ``"validation"``) or on every patient of ``input_dir`` (a folder in the CHAOS layout).
    Writes ``RUN/evaluation/<name>/scores.csv`` and ``cases/<patient>.npz``."""
    if input_dir is None:
        _common.check_split(args, split)  # before TensorFlow loads
    from kseg.inference import keep_largest_component
    from kseg.recipes import _evaluation
    from tfds_builders.chaos import Builder

    run_dir = pathlib.Path(args.output_dir)
    model, inference = _evaluation.run_model(run_dir)
    postprocess = inference["postprocess"]
    if postprocess == "auto":  # training stopped before it chose
        postprocess = _choose_postprocessing(args, model, prepare(args), splits(args))
    name = _common.evaluation_name(split, input_dir)
    if input_dir is None:
        if split not in ("test", "validation"):
            raise ValueError(f"split must be 'test' or 'validation', got {split!r}")
        builder = prepare(args)
        examples_split = splits(args)[split]
    else:
        builder = _evaluation.input_builder(
            Builder, Builder.builder_configs["ct"], input_dir, run_dir, name
        )
        examples_split = _evaluation.every_split(builder)
    folder = _evaluation.scoring_folder(run_dir, name)
    table = _evaluation.score_slice_cases(
        model,
        _evaluation.slice_volumes(lambda: builder.as_dataset(split=examples_split),
                                  window=_window(args), image_size=_image_size(args)),
        cases_dir=folder / "cases", metrics=METRICS,
        postprocess={"none": None, "largest-component": keep_largest_component}[postprocess],
    )  # fmt: skip
    source = "real CHAOS" if args.data_dir else "SYNTHETIC phantom"
    if input_dir is not None:
        source = str(input_dir)
    return _evaluation.show_table(
        args, table, folder, f"\nPer-patient {name} scores ({source} data, whole volumes, "
        f"original grid, post-processing: {postprocess}):",
    )  # fmt: skip


def tune(args) -> dict | None:
    """Random / Bayesian / Hyperband / grid / staged search of the U-Net's width, loss and
    learning rate on the training folds, trials ranked by whole-volume validation Dice;
    results in ``RUN/tuning/<strategy>/``."""
    import keras

    from kseg.recipes import _tuning

    keras.utils.set_random_seed(args.seed)
    builder = prepare_planned(args)
    return _tuning.search_unet_small(
        args, 1, _training_data(args, builder, splits(args)), losses=LOSSES,
        learning_rate=(args.learning_rate / 10, args.learning_rate), dropout=0.1,
        loss_kwargs={"combo": {"alpha": 2 / 3, "beta": 0.5}},
    )  # fmt: skip


def _report(args, best_path):
    if _common.has_test_fold(args):
        table = evaluate(args, split="test")
        print(f"\nSaved {best_path} and {pathlib.Path(args.output_dir) / 'evaluation' / 'test'}")
        return table
    _common.skipping_test_evaluation(args)
    print(f"\nSaved {best_path}")
    return None


def main(argv=None):
    """The example: prepare, train, evaluate on the test fold; returns the test table
    (``None`` with ``--test-fold none``)."""
    # --validation-fold all: one member per non-test fold, RUN/best.keras their ensemble
    return cross_validation.run_main(sys.modules[__name__], argv, _train, _report)
