"""HighResNet for spleen CT (MSD Task09): train on patches, choose the model on whole volumes.

The recipe behind ``examples/msd_spleen_highresnet.py`` (its docstring tells the story):
``msd_spleen/preprocessed`` (RAS, 1.5 x 1.5 x 2.0 mm, window -57..164 HU) in ``--folds``
patient-level folds, random 3D patches (a third centred on the spleen) with 3D joint
augmentation, HighResNet with a top-k cross-entropy, the checkpoint chosen by
sliding-window whole-volume validation Dice, and a test table scored on each label file's
own grid after mapping the prediction back onto it.
"""

from __future__ import annotations

import json
import os
import pathlib
import sys

from kseg.recipes import _common, cross_validation

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

DESCRIPTION = (
    "HighResNet for spleen CT (MSD Task09): train on patches, choose the model on whole volumes."
)
DATASET = "msd_spleen"
LABELS = {"spleen": 1}
# Settings that differ between the few-minute phantom run and the real data (the seed's).
PHANTOM_DEFAULTS = {
    "patch_size": 24, "roi_size": 48, "learning_rate": 3e-3, "epochs": 16,
    "steps_per_epoch": 10, "validate_every": 1, "overlap": 0.25, "augment": "anatomical",
}  # fmt: skip
REAL_DEFAULTS = {
    "patch_size": 64, "roi_size": 96, "learning_rate": 1e-4, "epochs": 200,
    "steps_per_epoch": 250, "validate_every": 5, "overlap": 0.5, "augment": "full",
}  # fmt: skip
PHANTOM_SPACING = (5.0, 0.8, 0.8)
PHANTOM_UNLABELLED_CASES = 2
METRICS = ("dice", "hd95")


def add_arguments(parser) -> None:
    parser.add_argument(
        "--data-dir",
        type=pathlib.Path,
        help="folder holding Task09_Spleen/ (or that folder); "
        "default: a synthetic phantom written under --output-dir",
    )
    parser.add_argument(
        "--output-dir", type=pathlib.Path, default=pathlib.Path("kseg_runs/msd_spleen_highresnet")
    )
    _common.add_tfds_dir_argument(parser)
    _common.add_folds_argument(parser)
    parser.add_argument(
        "--plan", choices=("none",), default="none",
        help="none (the only choice here): this recipe keeps its hand-picked settings. "
             "kseg.plan's rules size a U-Net (depth and filters from poolings, patch and "
             "batch from a U-Net's activation memory, Adam with a cosine schedule); "
             "HighResNet has no poolings and 20 full-resolution dilated residual layers, "
             "so those rules do not describe its memory or cost, and the data it trains "
             "on (msd_spleen/preprocessed) is already resampled to 1.5 x 1.5 x 2 mm and "
             "windowed to -57..164 HU, MONAI's spleen chain, with which its figures are "
             "compared",
    )  # fmt: skip
    parser.add_argument("--patch-size", type=int, help="cubic training patch side (voxels)")
    parser.add_argument(
        "--positive-fraction",
        type=float,
        default=0.33,
        help="share of patches centred on a spleen voxel (nnU-Net's 1/3: the "
        "rest teach the network what is not spleen, anywhere)",
    )
    parser.add_argument(
        "--no-largest-component",
        dest="largest_component",
        action="store_false",
        help="keep every predicted spleen island (default: keep the largest "
        "connected one, as nnU-Net's post-processing; the spleen is one "
        "organ, accessory spleens aside)",
    )
    parser.add_argument("--batch-size", type=int, default=2, help="patches per step and replica")
    parser.add_argument("--epochs", type=int)
    parser.add_argument(
        "--max-minutes", type=float,
        help="training time budget in minutes: stop mid-epoch when one more batch and the "
             "validation would pass it; the best model is kept",
    )  # fmt: skip
    parser.add_argument("--steps-per-epoch", type=int)
    parser.add_argument("--learning-rate", type=float)
    parser.add_argument(
        "--top-k", type=float, default=10.0, help="percentage of hardest voxels the loss averages"
    )
    parser.add_argument("--dropout", type=float, default=0.0)
    parser.add_argument("--roi-size", type=int, help="cubic sliding-window side (voxels)")
    parser.add_argument("--overlap", type=float, help="sliding-window overlap in [0, 1)")
    parser.add_argument("--validate-every", type=int, help="epochs between volume validations")
    parser.add_argument(
        "--mixed-precision",
        action="store_true",
        help="float16 compute, float32 weights and output activation",
    )
    parser.add_argument(
        "--accumulate-steps",
        type=int,
        default=1,
        help="batches whose gradients are summed before each update",
    )
    parser.add_argument(
        "--augment",
        choices=("anatomical", "full"),
        help="anatomical: small affine + intensity; full: also flips and "
        "in-plane quarter turns (default: full on real data, anatomical "
        "on the phantom)",
    )
    parser.add_argument("--seed", type=int, default=0)
    _common.add_strategy_argument(parser)
    _common.add_tracking_arguments(parser)
    phantom = parser.add_argument_group("synthetic data (used when --data-dir is not given)")
    phantom.add_argument("--phantom-cases", type=int, default=10, help="labelled cases")
    phantom.add_argument(
        "--phantom-shape",
        type=int,
        nargs=3,
        default=(40, 96, 96),
        metavar=("Z", "Y", "X"),
        help="voxels at 5 x 0.8 x 0.8 mm",
    )


def finish_arguments(parser, args) -> None:
    _common.check_shared_arguments(parser, args)
    defaults = PHANTOM_DEFAULTS if args.data_dir is None else REAL_DEFAULTS
    for name, value in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    if args.accumulate_steps < 1:
        parser.error("--accumulate-steps must be at least 1")
    distribution = getattr(args, "distribution", "default")
    if args.accumulate_steps > 1 and distribution != "default":
        # Keras 3 applies accumulated gradients inside a conditional, which the
        # strategy's gradient all-reduce cannot cross (TensorFlow: "merge_call called
        # while defining a new graph")
        parser.error(f"--accumulate-steps applies to --strategy default only, not "
                     f"{distribution}: Keras cannot accumulate gradients under a "
                     "tf.distribute strategy; more replicas make the larger batch instead")
    args.manual_dir = args.data_dir or args.output_dir / "phantom"
    _common.check_patient_folds(
        parser, args, labelled_cases_on_disk(args.manual_dir), "--phantom-cases"
    )


def parse_args(argv=None):
    """The command line, checked before TensorFlow loads (standard library only)."""
    return _common.parse_args(sys.modules[__name__], argv)


def labelled_cases_on_disk(manual_dir: pathlib.Path) -> int | None:
    """The labelled cases ``dataset.json`` lists (``Task09_Spleen/`` under ``manual_dir``,
    or ``manual_dir`` itself), the patients the folds are dealt from; ``None`` when there is
    no readable ``dataset.json`` yet (the builder then says what it expected)."""
    manual_dir = pathlib.Path(manual_dir)
    for task_dir in (manual_dir / "Task09_Spleen", manual_dir):
        try:
            return len(json.loads((task_dir / "dataset.json").read_text())["training"])
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return None


def prepare(args):
    """Build ``msd_spleen/preprocessed`` in ``--folds`` folds (once; later runs reuse it)
    from the data folder or from a phantom written on first use."""
    from kseg.phantoms.msd_spleen import write_msd_spleen
    from tfds_builders.msd_spleen import Builder

    manual_dir = pathlib.Path(args.manual_dir)
    if args.data_dir is None and not (manual_dir / "Task09_Spleen").exists():
        count = args.phantom_cases + PHANTOM_UNLABELLED_CASES
        with _common.writing_phantom(manual_dir, count, "cases"):
            write_msd_spleen(
                manual_dir,
                num_training=args.phantom_cases,
                num_test=PHANTOM_UNLABELLED_CASES,
                shape=tuple(args.phantom_shape),
                spacing=PHANTOM_SPACING,
                seed=args.seed,
            )
    config = _common.with_folds(Builder.builder_configs["preprocessed"], args.folds)
    builder = Builder(config=config, data_dir=str(_common.tfds_dir(args)))
    _common.prepare(builder, manual_dir)
    return builder


def splits(args) -> dict:
    """``{"train": ..., "validation": ..., "test": ...}``: the TFDS split of each role
    (no ``"test"`` with ``--test-fold none``)."""
    return _common.fold_splits(args)


def build_augmenter(kind: str, seed: int):
    """kseg's default 3D augmentation (``full``), or the same without flips and in-plane
    quarter turns (``anatomical``). After reorientation every scan shows the spleen on the
    patient's left; flips and quarter turns move it to where other organs lie (a left-right
    flip puts it where the liver is), so the network must tell them apart by appearance
    alone. Long runs on real data learn that; the phantom's few steps do not (its test
    Dice stayed near 0.05 with them)."""
    from kseg.augment import RandomAffine, segmentation_augmenter

    if kind == "full":
        return segmentation_augmenter(3, seed=seed)
    small_affine = RandomAffine(
        3, rotation=(15.0, 5.0, 5.0), scale=(0.9, 1.1), probability=0.3, seed=seed
    )
    return segmentation_augmenter(3, spatial=[small_affine], seed=seed)


def windowed(volumes):
    """Each volume's image windowed -57..164 HU to [0, 1], and its label; geometry dropped."""
    import tensorflow as tf

    from kseg.data.pipeline import WINDOWS, window

    return volumes.map(
        lambda example: {
            "image": window(example["image"], *WINDOWS["spleen_msd"]),
            "label": example["label"],
        },
        num_parallel_calls=tf.data.AUTOTUNE,
    )


def _patches(volumes, args, seed: int):
    """Random ``--patch-size`` cubes, 4 per volume, ``--positive-fraction`` of them centred
    on a spleen voxel."""
    from kseg.data.patches import random_patches

    return random_patches(
        volumes,
        (args.patch_size,) * 3,
        positive_fraction=args.positive_fraction,
        patches_per_volume=4,
        seed=seed,
    )


def training_batches(builder, split, args, augmenter):
    import tensorflow as tf

    # The decoded int16 volumes are cached (decompressing every epoch would dominate on
    # small patches); windowing, patch sampling and augmentation run fresh each epoch.
    volumes = windowed(
        builder.as_dataset(split=split)
        .map(lambda e: {"image": e["image"], "label": e["label"]})
        .cache()
        .repeat()
    )
    patches = _patches(volumes, args, args.seed)

    def augment(image, label):
        out = augmenter({"images": image, "segmentation_masks": label}, training=True)
        return out["images"], out["segmentation_masks"]

    # Sequential: the seeded augmenter keeps its random state in a variable, which parallel
    # calls would read in whatever order the threads run (two runs of one command differed
    # from the first epoch on).
    return (
        patches.shuffle(32, seed=args.seed)
        .batch(args.batch_size, drop_remainder=True)
        .map(augment)
        .prefetch(tf.data.AUTOTUNE)
    )


def validation_patches(builder, split, args):
    """A fixed set of validation patches drawn like the training ones (same positive
    fraction), cached after the first pass: the patch Dice the seed reported."""
    volumes = windowed(builder.as_dataset(split=split))
    return _patches(volumes, args, args.seed + 1).cache().batch(args.batch_size)


def whole_volumes(builder, split) -> list[dict]:
    """Every example of a split as numpy, windowed image ``(z, y, x, 1)``."""
    import tensorflow_datasets as tfds

    from kseg.data.pipeline import WINDOWS, window

    volumes = []
    for example in tfds.as_numpy(builder.as_dataset(split=split)):
        example = dict(example)
        example["patient_id"] = example["patient_id"].decode()
        example["input"] = window(example["image"], *WINDOWS["spleen_msd"]).numpy()[..., None]
        volumes.append(example)
    return volumes


def build_model(args):
    import keras

    from kseg.losses import TopKLoss
    from kseg.metrics import DiceScore
    from kseg.models import highresnet

    if args.mixed_precision:
        # Convolutions in float16; kseg's segmentation head computes its sigmoid in float32.
        keras.mixed_precision.set_global_policy("mixed_float16")
    model = highresnet((None, None, None, 1), num_classes=1, dropout=args.dropout)
    optimizer = keras.optimizers.Adam(
        args.learning_rate,
        gradient_accumulation_steps=args.accumulate_steps if args.accumulate_steps > 1 else None,
    )
    model.compile(optimizer=optimizer, loss=TopKLoss(k=args.top_k), metrics=[DiceScore()])
    return model


def _postprocess(args):
    from kseg.inference import keep_largest_component

    return keep_largest_component if args.largest_component else None


def _volume_validation(args, builder, splits):
    from kseg.training import VolumeValidation

    return VolumeValidation(
        # the grid's affine, not its spacing: a sheared sform stays sheared through
        # preprocessing, and distances across its slanted slices need the affine
        [(v["patient_id"], v["input"], v["label"], v["affine"])
         for v in whole_volumes(builder, splits["validation"])],
        roi_size=(args.roi_size,) * 3, every=args.validate_every, overlap=args.overlap,
        batch_size=args.batch_size,
        # select the checkpoint on what the test table will score
        postprocess=_postprocess(args),
    )  # fmt: skip


def _inference(args, builder) -> dict:
    from kseg.data.preprocess3d import MSD_SPLEEN_WINDOW

    config = builder.builder_config
    return {
        "kind": "volume", "window": list(MSD_SPLEEN_WINDOW),
        # (x, y, z) mm; the builder keeps kseg's (z, y, x) order
        "spacing": list(reversed(config.target_spacing)), "orientation": config.orientation,
        "roi_size": [args.roi_size] * 3, "overlap": args.overlap, "blend": "gaussian",
        "num_classes": 1, "threshold": 0.5,
        "postprocess": "largest-component" if args.largest_component else "none",
    }  # fmt: skip


def _train(args):
    """Train under ``--strategy``; returns ``(RUN/best.keras, fit seconds, chief)``."""
    from kseg.recipes import run_config
    from tfds_builders.msd_spleen import task_folder

    run_dir = pathlib.Path(args.output_dir)
    start = _common.start_training(args, prepare)
    builder = start.builder
    if start.chief:
        run_config.write_config(
            run_dir, args, "msd_spleen", builder, LABELS, _inference(args, builder)
        )
    run_splits = splits(args)
    if start.chief:  # the chief describes the data for every worker
        print(f"data: {task_folder(args.manual_dir)} -> {builder.data_dir}; splits {run_splits}")

    with start.strategy.scope():
        model = build_model(start.training_args)
    # patches in global batches (--batch-size per replica); the sliding-window validation
    # runs on the chief alone, --batch-size windows at a time
    training = training_batches(
        builder, run_splits["train"], start.training_args,
        build_augmenter(args.augment, args.seed),
    )  # fmt: skip
    validation = validation_patches(builder, run_splits["validation"], start.training_args)
    return _common.fit(
        start, args, model, training, validation, _volume_validation(args, builder, run_splits),
        reduce_lr_patience=None, steps_per_epoch=args.steps_per_epoch,
    )  # fmt: skip


def train(args) -> pathlib.Path:
    """Write ``RUN/config.json`` and train (resuming a crashed run); returns
    ``RUN/best.keras``."""
    return _train(args)[0]


def evaluate(args, *, split: str = "test", input_dir=None):
    """Segment each volume (gaussian-blended sliding window, largest component unless
    ``--no-largest-component``), map it back onto the grid of its label file and score it
    there (Dice, HD95 in mm): on ``split`` (``"test"`` or ``"validation"``) or on every
    labelled case of ``input_dir`` (a folder in the Task09 layout). Writes
    ``RUN/evaluation/<name>/scores.csv``, ``cases/<patient>.npz`` and the predicted label
    maps as ``predictions/<patient>.nii.gz``."""
    if input_dir is None:
        _common.check_split(args, split)  # before TensorFlow loads
    import kseg
    from kseg.data.pipeline import WINDOWS, window
    from kseg.errors import AlignmentError
    from kseg.evaluation import evaluate_on_original_grid
    from kseg.geometry import match_grid
    from kseg.io import read_nifti, read_nifti_labels
    from kseg.recipes import _evaluation
    from tfds_builders.msd_spleen import UNLABELED_SPLIT, Builder, task_folder

    run_dir = pathlib.Path(args.output_dir)
    # Inference only: the optimizer state (loss scale, accumulators) is not needed.
    model = kseg.load_model(run_dir / "best.keras", compile=False)
    name = _common.evaluation_name(split, input_dir)
    if input_dir is None:
        if split not in ("test", "validation"):
            raise ValueError(f"split must be 'test' or 'validation', got {split!r}")
        builder = prepare(args)
        examples_split = splits(args)[split]
        task_dir = pathlib.Path(task_folder(args.manual_dir))
        title = f"{split.capitalize()} fold {getattr(args, f'{split}_fold')}"
    else:
        builder = _evaluation.input_builder(
            Builder, Builder.builder_configs["preprocessed"], input_dir, run_dir, name
        )
        examples_split = _evaluation.every_split(builder, exclude=(UNLABELED_SPLIT,))
        task_dir = pathlib.Path(task_folder(input_dir))
        title = f"Every labelled case of {task_dir}"
    folder = _evaluation.scoring_folder(run_dir, name)
    # each prediction mapped onto the grid of its label file, written there and scored
    table = evaluate_on_original_grid(
        model,
        [(v["patient_id"], v["input"], v["affine"],
          task_dir / "labelsTr" / f"{v['patient_id']}.nii.gz")
         for v in whole_volumes(builder, examples_split)],
        roi_size=(args.roi_size,) * 3, overlap=args.overlap, batch_size=args.batch_size,
        postprocess=_postprocess(args), metrics=METRICS,
        prediction_dir=folder / "predictions", progress=False,
    )  # fmt: skip
    for patient_id in table.patient_ids:
        # the arrays the row was scored on: the label file and the prediction written on
        # its grid, with the CT in the training window for display
        reference = read_nifti_labels(
            task_dir / "labelsTr" / f"{patient_id}.nii.gz", patient_id=patient_id
        )
        prediction = read_nifti_labels(
            folder / "predictions" / f"{patient_id}.nii.gz", patient_id=patient_id
        )
        image_file = task_dir / "imagesTr" / f"{patient_id}.nii.gz"
        image = read_nifti(image_file, patient_id=patient_id)
        # a label stored in another axis order or direction than its CT (which the builder
        # reads) is shown over the CT's voxels moved onto its grid, not over the stored array
        on_label_grid = match_grid(image, reference)
        if on_label_grid is None:
            raise AlignmentError(
                image_file, "not on the voxels of its label file "
                f"{task_dir / 'labelsTr' / image_file.name}"
            )
        _evaluation.write_case(
            folder / "cases",
            patient_id,
            image=window(on_label_grid.array, *WINDOWS["spleen_msd"]).numpy(),
            reference=reference.array,
            prediction=prediction.array,
            spacing=reference.plane_spacing,  # the distance between slice planes
        )
    return _evaluation.show_table(
        args, table, folder,
        f"\n{title}, whole volumes on their original grids (Dice, HD95 in mm):",
    )  # fmt: skip


def tune(args) -> dict | None:
    """Random / Bayesian / Hyperband / grid / staged search of HighResNet's loss and
    learning rate on the training folds, trials ranked by sliding-window whole-volume
    validation Dice; results in ``RUN/tuning/<strategy>/``."""
    import keras

    from kseg.recipes import _tuning
    from kseg.tuning import SegmentationHyperModel

    keras.utils.set_random_seed(args.seed)
    builder = prepare(args)
    run_splits = splits(args)
    training = training_batches(
        builder, run_splits["train"], args, build_augmenter(args.augment, args.seed)
    )
    losses = ["topk", "dice_ce"]
    space, stages = _tuning.search_space(
        args,
        {"losses": losses,
         "learning_rate": (args.learning_rate / 10, args.learning_rate)},
        stages=[("loss", losses)],
    )  # fmt: skip
    hypermodel = SegmentationHyperModel(
        (None, None, None, 1),
        1,
        models="highresnet",
        dropout=args.dropout,
        topk_k=args.top_k,
        **space,
    )
    return _tuning.run_search(
        args, hypermodel, training=training,
        validation_data=validation_patches(builder, run_splits["validation"], args),
        volume_validation=_volume_validation(args, builder, run_splits), stages=stages,
        steps_per_epoch=args.steps_per_epoch,
    )  # fmt: skip


def main(argv=None):
    """The example: prepare, train, evaluate on the test fold; returns the test table
    (``None`` with ``--test-fold none``)."""
    # --validation-fold all: one member per non-test fold, RUN/best.keras their ensemble
    return cross_validation.run_main(sys.modules[__name__], argv, _train)
