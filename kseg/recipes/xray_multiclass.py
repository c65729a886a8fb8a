"""Chest X-ray segmentation with a small U-Net, scored per image on a held-out fold.

The recipe behind ``examples/xray_multiclass.py`` (its docstring tells the story): the
``xray`` TFDS builder (``--config``, or a synthetic 3-class phantom) in ``--folds``
patient-level folds, ``--max-train`` nested training subsets, each image scaled to [0, 1]
by its own minimum and maximum, ``unet_small`` with Dice + cross-entropy, the best model
kept by the mean per-image validation Dice on the stored mask grid, and a per-image test
table (HD95 in pixels).
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import sys

from kseg.recipes import _common, _planned, cross_validation

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

DESCRIPTION = "Chest X-ray segmentation with a small U-Net, scored per image on a held-out fold."
DATASET = "xray"
PHANTOM_DEFAULTS = {"image_size": 96, "epochs": 15, "batch_size": 4}
REAL_DEFAULTS = {"image_size": 256, "epochs": 40, "batch_size": 8}
# The other options --plan auto|PATH sets (unless given) and their session-15 hand-picked
# values, which --plan none keeps (with PHANTOM_DEFAULTS or REAL_DEFAULTS).
HAND_PICKED = {
    "depth": 3, "base_filters": 16, "learning_rate": 1e-3, "schedule": "plateau",
    "augment": "recipe",
}  # fmt: skip
HAND_PICKED_ALL = {**PHANTOM_DEFAULTS, **HAND_PICKED}  # the planned options' names
METRICS = ("dice", "iou", "precision", "recall", "hd95")
# kseg.data.pipeline.scale_intensity: each radiograph's own minimum and maximum to [0, 1].
INTENSITY = "scale_intensity"
# The xray builder's configs and the manual-folder layout each reads, spelled out here so
# that --help and the option checks answer without importing the builder (TFDS and kseg.io
# take seconds); tests/test_recipes.py checks them against the builder.
CONFIG_LAYOUTS = {
    "generic": "generic",
    "jsrt_scr": "jsrt_scr",
    "jsrt_scr_left_right": "jsrt_scr",
    "montgomery": "montgomery",
    "montgomery_lungs": "montgomery",
}
# Where each layout keeps its radiographs (tfds_builders.xray.layout's folder names).
IMAGE_FOLDERS = {
    "generic": "images",
    "jsrt_scr": "All247images",
    "montgomery": "MontgomerySet/CXR_png",
}


def add_arguments(parser) -> None:
    parser.add_argument(
        "--data-dir",
        type=pathlib.Path,
        help="manual folder of the chosen --config's layout; default: a "
        "synthetic 3-class phantom written under --output-dir",
    )
    parser.add_argument(
        "--config",
        default="generic",
        choices=sorted(CONFIG_LAYOUTS),
        help="xray builder config used with --data-dir",
    )
    parser.add_argument(
        "--output-dir", type=pathlib.Path, help="default: kseg_runs/xray_<config or phantom>"
    )
    _common.add_tfds_dir_argument(parser)
    _common.add_folds_argument(parser)
    parser.add_argument(
        "--max-train", type=int, help="train on this many patients (nested: 5 within 10 within ...)"
    )
    _planned.add_plan_arguments(parser, max_minutes=True)
    planned = _planned.planned_group(parser, ", phantom / real data")
    planned.add_argument("--image-size", type=int,
                         help="side the images are resized to [96 / 256]")
    planned.add_argument("--epochs", type=int, help="[15 / 40]")
    planned.add_argument("--batch-size", type=int,
                         help="examples per step and replica [4 / 8]")
    _planned.add_network_arguments(planned, HAND_PICKED)
    planned.add_argument(
        "--augment", choices=("recipe", "nnunet"),
        help="recipe: small affine + contrast; nnunet: nnU-Net's probabilities and ranges "
             "in kseg's layers, rotation at most 15 degrees and no mirroring (a flip would "
             "put the heart on the wrong side) [recipe]",
    )  # fmt: skip
    parser.add_argument(
        "--dropout", type=float, default=0.0,
        help="dropout rate at the U-Net's bottleneck (default %(default)s: no dropout "
             "layer; above 0 the model can give Monte Carlo dropout uncertainty)",
    )  # fmt: skip
    parser.add_argument("--seed", type=int, default=0)
    _common.add_strategy_argument(parser)
    _common.add_tracking_arguments(parser)
    phantom = parser.add_argument_group("synthetic data (used when --data-dir is not given)")
    phantom.add_argument("--phantom-images", type=int, default=60)
    phantom.add_argument("--phantom-size", type=int, default=96, help="pixels per side")


def finish_arguments(parser, args) -> None:
    _common.check_shared_arguments(parser, args)
    defaults = PHANTOM_DEFAULTS if args.data_dir is None else REAL_DEFAULTS
    _planned.finish_arguments(parser, args, {**defaults, **HAND_PICKED})
    if args.output_dir is None:
        run = "phantom" if args.data_dir is None else args.config
        args.output_dir = pathlib.Path("kseg_runs") / f"xray_{run}"
    args.manual_dir = args.data_dir or args.output_dir / "phantom"
    layout = "generic" if args.data_dir is None else CONFIG_LAYOUTS[args.config]
    _common.check_patient_folds(
        parser, args, images_on_disk(args.manual_dir, layout), "--phantom-images"
    )


def parse_args(argv=None):
    """The command line, checked before TensorFlow loads (standard library only)."""
    return _common.parse_args(sys.modules[__name__], argv)


def images_on_disk(manual_dir: pathlib.Path, layout: str) -> int | None:
    """Radiographs in the layout's image folder, or ``None`` when it is not there yet (the
    builder then says what it expected). Every public set has one radiograph per patient,
    so this is the patient count the folds are dealt from."""
    folder = pathlib.Path(manual_dir) / IMAGE_FOLDERS[layout]
    if not folder.is_dir():
        return None
    return sum(1 for path in folder.iterdir() if path.is_file() and not path.name.startswith("."))


def _base_config(args):
    """The builder config: ``--config`` for real data, the 3-class phantom's otherwise."""
    from kseg.phantoms import xray
    from tfds_builders.xray import Builder

    if args.data_dir is not None:
        return Builder.builder_configs[args.config]
    values = xray.mask_values(xray.GENERIC_CLASSES)
    return dataclasses.replace(
        Builder.builder_configs["generic"],
        name="phantom_3class",
        description="Synthetic 3-class phantom (kseg.phantoms.xray).",
        class_names=("background", *xray.GENERIC_CLASSES),
        mask_value_ranges=((0, 0, 0), *((v, v, i + 1) for i, v in enumerate(values.values()))),
    )


def prepare(args):
    """Build the dataset in ``--folds`` folds once (later runs reuse it): the phantom
    (written on first use) or the real download."""
    from kseg.phantoms import xray
    from tfds_builders.xray import Builder

    manual_dir = pathlib.Path(args.manual_dir)
    if args.data_dir is None and not (manual_dir / "images").exists():
        with _common.writing_phantom(manual_dir, args.phantom_images, "images"):
            xray.write_generic(
                manual_dir,
                num_images=args.phantom_images,
                size=args.phantom_size,
                seed=args.seed,
                classes=xray.GENERIC_CLASSES,
            )
    builder = Builder(
        config=_common.with_folds(_base_config(args), args.folds),
        data_dir=str(_common.tfds_dir(args)),
    )
    _common.prepare(builder, manual_dir)
    return builder


def _classes(builder) -> tuple[int, dict]:
    """Model output channels (one sigmoid channel for a binary task, softmax over every
    class otherwise) and ``{structure: label value}`` (spaces in names as ``_``)."""
    class_names = builder.builder_config.class_names
    num_classes = 1 if len(class_names) == 2 else len(class_names)
    return num_classes, {name.replace(" ", "_"): i for i, name in enumerate(class_names) if i}


def splits(args) -> dict:
    """``{"train": ..., "validation": ..., "test": ...}``: the TFDS split of each role
    (no ``"test"`` with ``--test-fold none``)."""
    return _common.fold_splits(args)


def batches(builder, split, args, num_classes, *, patients=None, examples_per_patient=None,
            augment=None):
    """Batches of ``split`` (of ``patients`` only, when given; ``examples_per_patient``,
    :func:`kseg.data.pipeline.split_patient_examples`, gives them a known number of steps)."""
    import tensorflow_datasets as tfds

    from kseg.data.pipeline import keep_patients, scale_intensity, segmentation_dataset

    # the file order is shuffled from the run's seed: an unseeded one differs run to run
    examples = builder.as_dataset(
        split=split, shuffle_files=augment is not None,
        read_config=tfds.ReadConfig(shuffle_seed=args.seed),
    )  # fmt: skip
    if patients is not None:
        examples = keep_patients(examples, patients, examples_per_patient)
    return segmentation_dataset(
        examples, window=scale_intensity, image_size=(args.image_size, args.image_size),
        num_classes=num_classes, batch_size=args.batch_size, augment=augment,
        shuffle_buffer=512 if augment is not None else None, cache=True, seed=args.seed,
    )  # fmt: skip


def build_model(args, num_classes: int):
    """The compiled network: ``unet_small`` (``--dropout``) with Dice + cross-entropy, Adam
    at ``--learning-rate``; ``num_classes`` output channels (1: sigmoid, else softmax)."""
    from kseg.losses import DiceCELoss

    # runs recorded before --dropout existed trained without it
    return _common.compiled_unet_small(args, num_classes, loss=DiceCELoss(),
                                       dropout=getattr(args, "dropout", 0.0))


def image_cases(builder, split, size: int):
    """``(image_id, model input (1, size, size, 1), mask (1, H, W), None)`` per image.

    Each radiograph is a one-slice volume, so ``VolumeValidation`` takes kseg's slice-wise
    path: predict at the model's size, resize the probabilities back to the stored mask's
    grid, score there.
    """
    from kseg.data.pipeline import model_input, scale_intensity

    preprocess = model_input(window=scale_intensity, image_size=(size, size))
    for example in builder.as_dataset(split=split, shuffle_files=False):
        inputs = preprocess(example).numpy()[None]
        yield example["image_id"].numpy().decode(), inputs, example["mask"].numpy()[None], None


def _scored_images(builder, split, size: int):
    """``(image_id, model input (size, size, 1), display image (H, W, 1), mask (H, W),
    None)`` per radiograph, for :func:`kseg.recipes._evaluation.score_slice_cases`."""
    from kseg.data.pipeline import model_input, scale_intensity

    preprocess = model_input(window=scale_intensity, image_size=(size, size))
    display = model_input(window=scale_intensity)
    for example in builder.as_dataset(split=split, shuffle_files=False):
        yield (
            example["image_id"].numpy().decode(),
            preprocess(example).numpy(),
            display(example).numpy(),
            example["mask"].numpy(),
            None,
        )


def plan_settings(plan, training: int, args) -> dict:
    """The options a :class:`kseg.plan.Plan` sets (:func:`_planned.unet_settings`); the
    loss is already nnU-Net's Dice + CE, and each radiograph keeps its per-image scaling
    to [0, 1] (the plan's per-image z-score is an affine map of it per image, and
    ``scale_intensity`` is what ``kseg predict`` reproduces)."""
    return _planned.unet_settings(plan, training, args)


def prepare_planned(args):
    """:func:`prepare`, then the plan's options filled into ``args`` (``--plan``)."""
    builder = prepare(args)
    _planned.apply(args, builder, plan_settings, training_split=splits(args)["train"],
                   most_examples=args.max_train)  # one image per patient
    return builder


def augmenter(args):
    """The training augmentation: a small random affine (rotation up to 10 degrees, scale
    0.9-1.1, half the images) and a random contrast change (0.8-1.25, half the images);
    with ``--augment nnunet`` nnU-Net's (:func:`_planned.nnunet_augmenter`) without
    mirroring."""
    from kseg.augment import RandomAffine, RandomContrast, segmentation_augmenter

    if getattr(args, "augment", "recipe") == "nnunet":
        return _planned.nnunet_augmenter(args.image_size, "XRAY", (), args.seed)

    # No flips: a flip would swap left and right lungs and put the heart on the wrong side.
    return segmentation_augmenter(
        2,
        spatial=[RandomAffine(2, rotation=10.0, scale=(0.9, 1.1), probability=0.5, seed=args.seed)],
        intensity=[RandomContrast(0.5, factor=(0.8, 1.25), seed=args.seed + 1)],
    )


def _training_data(args, builder, splits, num_classes, labels, *, chief=True):
    """Training and validation batches and the per-image validation; ``chief``: print
    what they hold (on the chief alone, which speaks for every worker)."""
    from kseg.data.pipeline import split_patient_examples
    from kseg.data.splits import nested_patient_subset
    from kseg.training import VolumeValidation

    examples_per_patient = split_patient_examples(builder, splits["train"])
    patients = list(examples_per_patient)
    if args.max_train is not None:
        patients = nested_patient_subset(patients, args.max_train, seed=args.seed)
    if chief:
        print(
            f"dataset {builder.info.full_name} in {builder.data_dir}; classes "
            f"{builder.builder_config.class_names}; {len(patients)} training patients; "
            f"splits {splits}"
        )
    training = batches(
        builder, splits["train"], args, num_classes, patients=patients,
        examples_per_patient=examples_per_patient, augment=augmenter(args),
    )  # fmt: skip
    validation_batches = batches(builder, splits["validation"], args, num_classes)
    validation = VolumeValidation(
        image_cases(builder, splits["validation"], args.image_size),
        labels=_common.scored_labels(num_classes, labels),
    )
    return training, validation_batches, validation


def _train(args):
    """Train under ``--strategy``; returns ``(RUN/best.keras, fit seconds, chief)``."""
    from kseg.recipes import run_config

    run_dir = pathlib.Path(args.output_dir)
    start = _common.start_training(args, prepare_planned)
    builder = start.builder
    num_classes, labels = _classes(builder)
    if start.chief:
        inference = _planned.slice_inference(
            args, augmenter, labels, window=INTENSITY, num_classes=num_classes,
            postprocess="none", modality="radiograph",
        )  # fmt: skip
        inference.update(radiograph_reading(builder))
        run_config.write_config(run_dir, args, "xray_multiclass", builder, labels, inference)
        _planned.record_sources(run_dir, args, HAND_PICKED_ALL)
    training, validation_batches, validation = _training_data(
        start.training_args, builder, splits(args), num_classes, labels, chief=start.chief
    )
    with start.strategy.scope():
        model = build_model(start.training_args, num_classes)
    return _planned.fit(start, args, model, training, validation_batches, validation)


def radiograph_reading(builder) -> dict:
    """config.json's record of how the run's radiographs were read, for ``kseg predict`` to
    read new ones alike: ``image_formats`` (the training images' formats, the builder's
    metadata) and ``dicom_values`` (:func:`kseg.io.read_radiograph`): the builder config's
    when DICOM images were among them, else ``"displayed"``, since PNG / JPEG images hold
    what a viewer showed."""
    formats = list(builder.info.metadata.get("image_formats", []))
    trained_on_dicom = "dicom" in formats or not formats  # no record: trust the config
    values = builder.builder_config.dicom_values if trained_on_dicom else "displayed"
    return {"dicom_values": values, "image_formats": formats}


def train(args) -> pathlib.Path:
    """Write ``RUN/config.json`` and train (resuming a crashed run, keeping the time
    budget); returns ``RUN/best.keras``."""
    return _train(args)[0]


def evaluate(args, *, split: str = "test", input_dir=None):
    """Score the best model per radiograph on its stored mask grid (HD95 in pixels): on
    ``split`` (``"test"`` or ``"validation"``) or on every image of ``input_dir`` (a folder
    in the layout of the run's config). Writes ``RUN/evaluation/<name>/scores.csv`` and
    ``cases/<image>.npz`` (one slice; spacing the pixel size a DICOM radiograph states,
    else 1)."""
    if input_dir is None:
        _common.check_split(args, split)  # before TensorFlow loads
    from kseg.predict import postprocessing, radiograph_dicom_values
    from kseg.recipes import _evaluation
    from tfds_builders.xray import Builder

    run_dir = pathlib.Path(args.output_dir)
    model, inference = _evaluation.run_model(run_dir)
    # a cross-validation records the clean-up its out-of-fold predictions chose
    clean_up = postprocessing(inference)
    name = _common.evaluation_name(split, input_dir)
    if input_dir is None:
        if split not in ("test", "validation"):
            raise ValueError(f"split must be 'test' or 'validation', got {split!r}")
        builder = prepare(args)
        examples_split = splits(args)[split]
        title = f"{split.capitalize()} fold {getattr(args, f'{split}_fold')}"
    else:
        # the input folder's DICOM radiographs are read as the run's were
        config = dataclasses.replace(
            _base_config(args), dicom_values=radiograph_dicom_values(inference)
        )
        builder = _evaluation.input_builder(Builder, config, input_dir, run_dir, name)
        examples_split = _evaluation.every_split(builder)
        title = f"Every image of {input_dir}"
    # an input folder is prepared with the run's config: the same classes
    num_classes, labels = _classes(builder)
    folder = _evaluation.scoring_folder(run_dir, name)
    table = _evaluation.score_slice_cases(
        model,
        _scored_images(builder, examples_split, args.image_size),
        cases_dir=folder / "cases",
        metrics=METRICS,
        labels=_common.scored_labels(num_classes, labels),
        postprocess=clean_up,
        # the report draws each radiograph with the pixel size its file states
        case_spacing=_evaluation.radiograph_case_spacing(
            builder.builder_config, args.manual_dir if input_dir is None else input_dir
        ),
    )
    return _evaluation.show_table(
        args, table, folder,
        f"\n{title}, one row per image, scored on the stored mask grid (HD95 in pixels):",
    )  # fmt: skip


def tune(args) -> dict | None:
    """Random / Bayesian / Hyperband / grid / staged search of the U-Net's width, loss and
    learning rate on the training folds, trials ranked by the mean per-image validation
    Dice; results in ``RUN/tuning/<strategy>/``."""
    import keras

    from kseg.recipes import _tuning

    keras.utils.set_random_seed(args.seed)
    builder = prepare_planned(args)
    num_classes, labels = _classes(builder)
    return _tuning.search_unet_small(
        args, num_classes, _training_data(args, builder, splits(args), num_classes, labels),
        losses=["dice_ce", "dice"],
        learning_rate=(args.learning_rate / 10, args.learning_rate * 10),
    )


def main(argv=None):
    """The example: prepare, train, evaluate on the test fold; returns the test table
    (``None`` with ``--test-fold none``)."""
    # --validation-fold all: one member per non-test fold, RUN/best.keras their ensemble
    return cross_validation.run_main(sys.modules[__name__], argv, _train)
