"""``--plan auto|none|PATH``: the 2D recipes' options from the dataset's fingerprint.

A recipe lists its planned options with their session-15 hand-picked values
(``HAND_PICKED``). Every planned option's command-line default is ``None`` ("not given");
:func:`finish_arguments` fills the hand-picked value into each one that was not given, so
that a parsed command line is complete before anything is read (``--help``, the checks,
``build_model`` on a fresh namespace), and remembers which ones the user gave
(``args.plan_given``). With ``--plan none`` that is all: the run is the session-15 recipe.

With ``--plan auto`` (the default) or ``--plan PATH`` the recipe's training calls
:func:`apply` once the dataset is prepared: it fingerprints the folds the model is
trained and validated on, never the test fold (:func:`kseg.plan.fingerprint`, cached as
``RUN/fingerprint.json`` and recomputed when the prepared dataset's files or the folds
change), derives the plan (:func:`kseg.plan.plan` with
``--memory-budget-mb`` and the time budget ``--max-minutes``, else
:func:`default_minutes`) or reads the saved ``plan.json``, saves it as
``RUN/plan.json`` and sets every planned option the user did not give from it. Options
given on the command line always win. :func:`record_sources` then writes, into
``RUN/config.json``, a ``"plan"`` section saying for each planned option whether it came
from the plan or the command line.

Standard library only at import time.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import pathlib

PLAN_FILE = "plan.json"
FINGERPRINT_FILE = "fingerprint.json"
# Training activations the plan may use when --memory-budget-mb is not given: a quarter
# of an 8 GB laptop, room for the data pipeline, TensorFlow and the evaluation besides.
DEFAULT_MEMORY_BUDGET_MB = 2000.0
# The training budget (minutes of wall-clock time on this machine's cores) when
# --max-minutes is not given: the README's "a few CPU minutes" for a phantom example.
# It sets how many epochs the plan trains (kseg.plan.rule_training_steps); unlike a given
# --max-minutes it does not stop the run on the clock, so a busy machine trains the same
# epochs, only slower, and the result does not depend on the load.
DEFAULT_TIME_BUDGET_MINUTES = 1.5
# The same for a real download (--data-dir): the phantom's minute and a half would plan a
# real dataset down to a few passes at a tiny input size. Half an hour is issue 9's CPU
# budget for the chest X-ray target (30 CPU-minutes on 2 cores is about 15 wall-minutes).
DEFAULT_REAL_DATA_BUDGET_MINUTES = 30.0
# Wall-clock seconds an epoch costs besides its training steps on a quiet 2-core machine:
# the whole-volume validation, the Keras validation batches, the checkpoint and the resume
# backup. kseg's estimate (not measured apart from the steps): without it a small dataset
# (60 radiographs, 12 steps of 0.03 s) would be planned hundreds of epochs.
EPOCH_OVERHEAD_SECONDS = 2.0
# What the 2D recipes make of plan settings kseg cannot express as nnU-Net does; added to
# the saved plan's ``rules`` (RUN/plan.json).
RECIPE_RULES = {
    "normalization (recipes)": (
        "CT: kseg's window, clip to the foreground 0.5-99.5 percentiles and map to [0, 1] "
        "(ct_window); nnU-Net's z-score with the foreground mean and std is an affine map "
        "of the same clipped values, which the first convolution and its batch norm absorb, "
        "and a window is what config.json's inference section and kseg predict reproduce. "
        "X-ray: each image's own min-max scaling to [0, 1] (scale_intensity) in place of "
        "its own z-score, also an affine map per image"
    ),
    "augmentation (recipes)": (
        "kseg.augment layers (nnunet_augmenter): RandomAffine draws rotation and scaling "
        "together at the larger of nnU-Net's two probabilities; RandomAxisFlip on the "
        "mirror axes (X-ray: none, a flip puts the heart on the wrong side; LCTSC: top-bottom "
        "only, left/right organs); noise std rescaled from z-score units to the [0, 1] "
        "window (/ NORMAL_RANGE_IN_STD); blur and contrast as nnU-Net. kseg.augment has no "
        "brightness, gamma or low-resolution simulation: left out"
    ),
    "optimizer (recipes)": (
        "Adam at the plan's rate; the cosine schedule with warm-up is applied per epoch "
        "(schedule_callbacks), so a resumed run follows the same curve"
    ),
    "training_steps (recipes)": (
        "epochs = plan time / (steps per epoch x seconds per step + EPOCH_OVERHEAD_SECONDS)"
        " (epochs_for); --max-minutes, when given, also stops the run on the clock"
    ),
    "tta_mirror_axes (recipes)": (
        "recorded only: a single model's evaluate and kseg predict do not mirror; "
        "--validation-fold all's ensemble does"
    ),
}
# Width of a normal distribution's 0.5-99.5 percentile range in standard deviations
# (2 x 2.576): how many z-score units kseg's [0, 1] CT window spans.
NORMAL_RANGE_IN_STD = 5.15


def add_plan_arguments(parser: argparse.ArgumentParser, *, max_minutes: bool) -> None:
    """``--plan``, ``--memory-budget-mb`` and (``max_minutes=True``) ``--max-minutes``."""
    parser.add_argument(
        "--plan", default="auto", metavar="auto|none|PATH",
        help="auto (default): derive the training plan from the dataset's fingerprint "
             "(kseg.plan) and take every planned option not given on the command line "
             "from it; none: the recipe's hand-picked settings (its figures before plans, "
             "the values in brackets below); PATH: a saved plan.json. auto and PATH write "
             "RUN/fingerprint.json and RUN/plan.json",
    )  # fmt: skip
    parser.add_argument(
        "--memory-budget-mb", type=float, default=None,
        help=f"memory for training activations the plan may use (default "
             f"{DEFAULT_MEMORY_BUDGET_MB:g} MB)",
    )  # fmt: skip
    if max_minutes:
        parser.add_argument(
            "--max-minutes", type=float,
            help="training time budget in minutes: stop mid-epoch when one more batch and "
                 "the validation would pass it; the best model is kept. The plan also "
                 f"sets the epochs from it (without it: {DEFAULT_TIME_BUDGET_MINUTES:g} "
                 f"minutes on the phantom, {DEFAULT_REAL_DATA_BUDGET_MINUTES:g} with "
                 "--data-dir, for the epochs only)",
        )  # fmt: skip


def planned_group(parser: argparse.ArgumentParser, note: str = ""):
    """The help group of a recipe's planned options; ``note`` says what the bracketed
    hand-picked values depend on."""
    return parser.add_argument_group(
        "planned options (--plan auto: from the plan unless given; --plan none: the "
        f"hand-picked value in brackets{note})"
    )


def add_ct_slice_arguments(group, hand_picked: dict, structures: str) -> None:
    """``--epochs``, ``--image-size``, ``--batch-size`` and ``--window`` of the CT slice
    recipes; ``structures`` names what the plan's window covers."""
    group.add_argument("--epochs", type=int, help=f"[{hand_picked['epochs']}]")
    group.add_argument(
        "--image-size", type=int,
        help="in-plane size the slices are resampled to for the model; scores use the "
             f"original grid [{hand_picked['image_size']}]",
    )  # fmt: skip
    group.add_argument("--batch-size", type=int,
                       help=f"slices per step and replica [{hand_picked['batch_size']}]")
    group.add_argument(
        "--window", type=window_argument, metavar="NAME|CENTER,WIDTH",
        help="CT intensity window mapped to [0, 1]: a kseg.data.pipeline.WINDOWS preset or "
             f"CENTER,WIDTH in HU; the plan's is the {structures} 0.5-99.5 percentiles "
             f"[{hand_picked['window']}]",
    )  # fmt: skip


def add_network_arguments(group, hand_picked: dict) -> None:
    """``--depth``, ``--base-filters``, ``--learning-rate`` and ``--schedule``, which every
    2D recipe plans alike; their help shows the recipe's hand-picked values."""
    group.add_argument("--depth", type=int, help=f"U-Net poolings [{hand_picked['depth']}]")
    group.add_argument("--base-filters", type=int, help=f"[{hand_picked['base_filters']}]")
    group.add_argument("--learning-rate", type=float,
                       help=f"Adam's [{hand_picked['learning_rate']:g}]")
    group.add_argument(
        "--schedule", choices=("plateau", "cosine"),
        help="plateau: lower the rate when validation stalls; cosine: warm-up, then cosine "
             f"decay over the epochs [{hand_picked['schedule']}]",
    )  # fmt: skip


def finish_arguments(parser, args, hand_picked: dict) -> None:
    """Check ``--plan`` and ``--memory-budget-mb`` (refused with ``--plan none``, which
    would ignore it); fill the hand-picked value into every planned option not given and
    check ``--depth`` against ``--image-size``; remember the given ones as
    ``args.plan_given`` (``--plan auto|PATH`` only: a ``--plan none`` run's options are
    those of session 15)."""
    if args.plan not in ("auto", "none") and not os.path.isfile(args.plan):
        parser.error(f"--plan must be auto, none or a plan.json file; {args.plan} is not a file")
    if args.memory_budget_mb is not None and not (
        args.memory_budget_mb > 0 and math.isfinite(args.memory_budget_mb)
    ):
        parser.error(f"--memory-budget-mb must be a positive number, got {args.memory_budget_mb}")
    if args.plan == "none" and args.memory_budget_mb is not None:
        parser.error("--memory-budget-mb sizes the plan, and --plan none trains the "
                     "hand-picked settings without one; leave out one of the two")
    given = sorted(name for name in hand_picked if getattr(args, name) is not None)
    for name, value in hand_picked.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    if args.plan != "none":
        args.plan_given = given
    # the U-Net halves the image --depth times; the plan keeps to this, a user may not
    if args.depth < 1:
        parser.error(f"--depth must be at least 1, got {args.depth}")
    if args.image_size % 2**args.depth:
        parser.error(f"--image-size must be a multiple of {2**args.depth} ({args.depth} 2x "
                     f"poolings, --depth), got {args.image_size}")


def planned(args) -> bool:
    """Whether ``args`` trains from a plan (runs recorded before ``--plan`` did not)."""
    return getattr(args, "plan", "none") != "none"


def fingerprint(args, builder, splits=None):
    """The dataset's :class:`kseg.plan.Fingerprint` of ``splits`` (a list of split names;
    ``None``: every split): ``RUN/fingerprint.json`` when it was taken of the same splits
    of the same prepared files (:func:`kseg.recipes.run_config.dataset_fingerprint`), else
    computed and saved there."""
    from kseg import plan as kplan
    from kseg.recipes import run_config

    path = pathlib.Path(args.output_dir) / FINGERPRINT_FILE
    files = run_config.dataset_fingerprint(builder)
    if path.is_file():
        try:
            cached = json.loads(path.read_text(encoding="utf-8"))
            if cached.get("dataset", {}).get("files_sha256") == files and (
                splits is None or cached["dataset"].get("splits") == list(splits)
            ):
                return kplan.Fingerprint.from_dict(cached)
        except (OSError, ValueError, KeyError, TypeError):
            pass  # an unreadable cache is taken again
    print(f"Fingerprinting {builder.info.full_name} (once per prepared dataset)", flush=True)
    result = kplan.fingerprint(builder) if splits is None else kplan.fingerprint(
        builder, split=list(splits))
    result.dataset["files_sha256"] = files
    result.save(path)
    return result


def derive(args, builder, fp, *, training_examples: int):
    """The :class:`kseg.plan.Plan` of this run: ``--plan PATH`` read back, or derived from
    ``fp`` for the memory and time budgets and ``training_examples`` 2D training images."""
    from kseg import plan as kplan

    if args.plan != "auto":
        return kplan.Plan.load(args.plan)
    minutes = args.max_minutes if getattr(args, "max_minutes", None) else default_minutes(args)
    memory = args.memory_budget_mb or DEFAULT_MEMORY_BUDGET_MB
    try:
        return kplan.plan(fp, memory_budget_mb=memory, time_budget_minutes=minutes,
                          spatial_dims=2, training_examples=training_examples)
    except ValueError as error:  # data or budgets no plan fits: a usage error, not a crash
        from kseg.errors import KsegError

        name = fp.dataset.get("name"), fp.dataset.get("config")
        raise KsegError(
            f"--plan auto: no plan for {'/'.join(str(n) for n in name if n)} with "
            f"--memory-budget-mb {memory:g} and {minutes:g} minutes: {error}; give other "
            "budgets, or --plan none for the recipe's hand-picked settings"
        ) from error


def default_minutes(args) -> float:
    """The plan's time budget without ``--max-minutes``: a phantom's or a real download's."""
    if getattr(args, "data_dir", None) is None:
        return DEFAULT_TIME_BUDGET_MINUTES
    return DEFAULT_REAL_DATA_BUDGET_MINUTES


def training_examples(builder, split: str) -> int:
    """Examples (2D slices or images) in a ``+``-joined TFDS split expression."""
    return sum(builder.info.splits[name].num_examples for name in split.split("+"))


def apply(args, builder, settings, *, training_split: str, most_examples: int | None = None):
    """Fill the planned options of ``args`` the user did not give from the plan; save
    ``RUN/fingerprint.json`` and ``RUN/plan.json``; return the plan (``None`` with
    ``--plan none``).

    Args:
        args: the recipe's options, changed in place.
        builder: the prepared TFDS builder.
        settings: ``(plan, training examples, args) -> {option: value}``, the recipe's
            reading of a plan (``args`` holds the given options).
        training_split: the TFDS split expression the model trains on.
        most_examples: at most this many of its examples train (``--max-train``).
    """
    if not planned(args):
        return None
    # nnU-Net fingerprints its training cases (imagesTr) only: the test fold (and LCTSC's
    # challenge_test) must not shape the window or the sizes the test is scored with
    fp = fingerprint(args, builder, fitting_splits(args))
    training = training_examples(builder, training_split)
    if most_examples is not None:
        training = min(training, most_examples)
    result = derive(args, builder, fp, training_examples=training)
    if args.plan != "auto":
        check_plan_fits(args.plan, result, fp)
    result.rules.update(RECIPE_RULES)
    given = set(getattr(args, "plan_given", ()))
    chosen = []
    for name, value in settings(result, training, args).items():
        if name not in given:
            setattr(args, name, value)
            chosen.append(f"{name} {value}")
    # a resumed run goes on with what it trained with: before its plan.json is replaced
    # (a tuning command line, whose --strategy is the search's, resumes no backup)
    if not hasattr(args, "strategy"):
        from kseg.recipes import _common

        _common.refuse_other_training(args)
    result.save(pathlib.Path(args.output_dir) / PLAN_FILE)
    print(f"Plan ({args.plan}, {PLAN_FILE}): {', '.join(chosen) or 'every option given'}"
          + (f"; given: {', '.join(sorted(given))}" if given else ""), flush=True)
    return result


def check_plan_fits(path, plan, fp) -> None:
    """A ``--plan PATH`` plan must be a 2D plan of data of the fingerprint's modality (an
    X-ray plan has no CT window, a CT plan mirrors what a radiograph must not, a 3D plan's
    patch is no slice size), with a U-Net that halves its input ``depth`` times, a batch
    and training steps, and Adam (a GPU plan's SGD is refused).

    Raises:
        kseg.errors.UnreadableFileError: naming ``path`` and what does not fit.
    """
    from kseg.errors import UnreadableFileError

    if plan.modality != fp.modality or plan.spatial_dims != 2:
        raise UnreadableFileError(
            path, f"a {plan.spatial_dims}D plan of {plan.modality} data "
            f"({plan.dataset.get('name')}); this recipe trains a 2D model on "
            f"{fp.modality} data ({fp.dataset.get('name')}): give a plan.json of a run of "
            "this recipe, or --plan auto",
        )  # fmt: skip
    # what a hand edit can break that kseg's rules never plan: a U-Net that cannot halve
    # its input depth times, an empty batch, no training
    side = max(plan.patch_size, default=0)
    wrong = [
        f"{name} {value!r} is not {expected}" for name, value, expected, right in (
            ("depth", plan.depth, "a whole number of at least 1", _whole(plan.depth, 1)),
            ("batch_size", plan.batch_size, "a whole number of at least 1",
             _whole(plan.batch_size, 1)),
            ("training_steps", plan.training_steps, "a whole number of at least 1",
             _whole(plan.training_steps, 1)),
            ("seconds_per_step", plan.seconds_per_step, "a positive number",
             _number(plan.seconds_per_step)),
            ("optimizer learning_rate", plan.optimizer.get("learning_rate"),
             "a positive number", _number(plan.optimizer.get("learning_rate"))),
        ) if not right
    ]
    if not wrong and (side < 1 or side % 2**plan.depth):
        wrong.append(f"patch_size {list(plan.patch_size)} is not a multiple of 2**depth = "
                     f"{2**plan.depth}, which the U-Net's {plan.depth} poolings halve")
    if wrong:
        raise UnreadableFileError(path, f"{'; '.join(wrong)}: not a plan kseg can train "
                                        "(edited by hand?); derive it again with --plan auto")
    if plan.optimizer.get("name") != "Adam":
        raise UnreadableFileError(
            path, f"the plan's optimiser is {plan.optimizer.get('name')} (a GPU plan); the 2D "
            "recipes train with Adam: use a CPU plan (kseg.plan.plan with device='cpu')",
        )  # fmt: skip


def _whole(value, least: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= least


def _number(value) -> bool:
    return (isinstance(value, int | float) and not isinstance(value, bool)
            and math.isfinite(value) and value > 0)


def fitting_splits(args) -> list[str]:
    """The TFDS splits the model is fitted and validated on (``--folds`` less the test
    fold), sorted: what the fingerprint reads."""
    from kseg.recipes import _common

    roles = _common.fold_splits(args)
    return sorted({name for role, expression in roles.items() if role != "test"
                   for name in expression.split("+")})


def sources(args, hand_picked: dict) -> dict:
    """``{option: "plan" | "command line"}`` for every planned option (``{}`` with
    ``--plan none``)."""
    if not planned(args):
        return {}
    given = set(getattr(args, "plan_given", ()))
    return {name: "command line" if name in given else "plan" for name in sorted(hand_picked)}


def mirror_axes(args, augmenter, class_names) -> list[int]:
    """config.json's ``inference`` ``mirror_axes`` of a 2D run: with a plan, the axes its
    training augmentation flipped that the labels allow
    (:func:`kseg.inference.tta.inference_mirror_axes`), which evaluation and ``kseg
    predict`` then average over, as nnU-Net predicts; none with ``--plan none`` (the
    hand-picked recipes predict without test-time augmentation)."""
    if not planned(args):
        return []
    from kseg.inference.tta import inference_mirror_axes

    return list(inference_mirror_axes(augmenter, 2, list(class_names)))


def slice_inference(args, augmenter, labels, *, window, num_classes: int, postprocess: str,
                    modality: str) -> dict:
    """config.json's ``inference`` section of a 2D run on ``--image-size`` squares:
    ``window`` (a CT window or the X-ray's per-image scaling), threshold 0.5, and the
    mirror axes of :func:`mirror_axes`."""
    return {
        "kind": "slices", "window": window, "image_size": [args.image_size] * 2,
        "num_classes": num_classes, "threshold": 0.5, "postprocess": postprocess,
        "modality": modality, "mirror_axes": mirror_axes(args, augmenter(args), labels),
    }  # fmt: skip


def record_sources(run_dir, args, hand_picked: dict) -> None:
    """Add a ``"plan"`` section to ``RUN/config.json`` (atomically): the ``--plan`` value,
    the files, and where each planned option came from. Nothing with ``--plan none``."""
    if not planned(args):
        return
    from kseg.recipes import run_config

    config = run_config.read_config(run_dir)
    plan_path = pathlib.Path(run_dir) / PLAN_FILE
    config["plan"] = {
        "plan": args.plan,
        "plan_file": PLAN_FILE,
        "plan_sha256": hashlib.sha256(plan_path.read_bytes()).hexdigest(),
        "fingerprint_file": FINGERPRINT_FILE,
        "options": sources(args, hand_picked),
    }
    run_config.save_config(run_dir, config)


# kseg.data.pipeline.WINDOWS' names, spelled out: --window is checked before TensorFlow
# loads (tests/test_runs26_26.py checks them against the pipeline's).
WINDOW_PRESETS = ("abdomen", "liver", "lung", "mediastinum", "bone", "brain", "spleen_msd")


def window_argument(text: str):
    """A ``--window`` value: a preset name of :data:`kseg.data.pipeline.WINDOWS` (in any
    case) or ``CENTER,WIDTH`` in HU (as ``[center, width]``). Another name is a usage error
    here: taken as given, training would stop in the data pipeline after preparing the data
    and writing config.json."""
    if "," not in text:
        preset = text.strip().lower()
        if preset not in WINDOW_PRESETS:
            raise argparse.ArgumentTypeError(
                f"{text!r} is neither a window preset ({', '.join(WINDOW_PRESETS)}) nor "
                "CENTER,WIDTH in HU"
            )
        return preset
    try:
        center, width = (float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a window preset name or CENTER,WIDTH in HU, got {text!r}"
        ) from None
    if not width > 0:
        raise argparse.ArgumentTypeError(f"window width must be > 0 HU, got {text!r}")
    return [center, width]


def ct_window(plan) -> list[float]:
    """The plan's CT normalisation as kseg's intensity window ``[center, width]``: clip to
    the foreground's 0.5-99.5 percentiles and map that range linearly to [0, 1]. nnU-Net
    then z-scores with the foreground mean and std; both are affine maps of the same
    clipped values (the first convolution and its batch norm absorb the difference), and
    a window is what the ``inference`` section, hence ``kseg predict``, already
    reproduces."""
    low, high = (float(v) for v in plan.normalization["clip"])
    if not high > low:  # one foreground value: a window of 1 HU around it
        high = low + 1.0
    return [(low + high) / 2.0, high - low]


def nnunet_augmenter(image_size: int, modality: str, mirror_axes, seed: int):
    """nnU-Net's 2D augmentation (:func:`kseg.plan.rule_augmentation` for an
    ``image_size`` square, ``modality`` and ``mirror_axes``) in kseg's layers, as one
    augmenter.

    Rotation and scaling: one ``RandomAffine`` with nnU-Net's ranges at the larger of its
    two probabilities (kseg draws both together); mirroring of each of ``mirror_axes``
    (p = 0.5); Gaussian noise (a standard deviation up to the square root of nnU-Net's
    variance bound, in stds of the foreground, rescaled to the [0, 1] window), blur and
    contrast at nnU-Net's probabilities and ranges. kseg has no brightness, gamma or low-resolution
    augmentation: those are left out.
    """
    from kseg.augment import (
        RandomAffine,
        RandomAxisFlip,
        RandomContrast,
        RandomGaussianBlur,
        RandomGaussianNoise,
        segmentation_augmenter,
    )
    from kseg.plan import rule_augmentation

    aug = rule_augmentation((image_size, image_size), modality, mirror_axes)
    spatial = [RandomAffine(2, rotation=float(aug["rotation_degrees"]),
                            scale=tuple(aug["scale"]),
                            probability=max(aug["p_rotation"], aug["p_scale"]), seed=seed)]
    if aug["mirror_axes"]:
        spatial.append(RandomAxisFlip(2, axes=tuple(aug["mirror_axes"]),
                                      probability=aug["p_mirror"], seed=seed + 1))
    # nnU-Net's noise is on z-scored intensities (unit = one std); kseg's input is the
    # 0.5-99.5 percentile range mapped to [0, 1], about NORMAL_RANGE_IN_STD stds wide
    noise = math.sqrt(aug["noise_variance"]) / NORMAL_RANGE_IN_STD
    intensity = [
        RandomGaussianNoise(aug["p_noise"], stddev=(0.0, noise),
                            clip=(0.0, 1.0), spatial_dims=2, seed=seed + 2),
        RandomGaussianBlur(aug["p_blur"], sigma=tuple(aug["blur_sigma"]), spatial_dims=2,
                           seed=seed + 3),
        RandomContrast(aug["p_contrast"], factor=tuple(aug["contrast"]), spatial_dims=2,
                       seed=seed + 4),
    ]
    return segmentation_augmenter(2, spatial=spatial, intensity=intensity)


def schedule_callbacks(args) -> list:
    """The learning-rate schedule as callbacks: none with ``--schedule plateau`` (the
    training callbacks lower the rate on a validation plateau, session 15); with
    ``--schedule cosine`` a ``keras.callbacks.LearningRateScheduler`` that warms the rate
    up linearly over the first 5 % of ``--epochs`` (at least one epoch) and then follows a
    cosine from ``--learning-rate`` towards 0, evaluated at each epoch's middle (the plan's
    CPU optimiser, :func:`kseg.plan.rule_optimizer`; per epoch rather than per step so
    that a resumed run, which restarts at an epoch, follows the same curve)."""
    if getattr(args, "schedule", "plateau") != "cosine":
        return []
    import keras

    from kseg.plan import rule_optimizer

    base, epochs = float(args.learning_rate), int(args.epochs)
    return [keras.callbacks.LearningRateScheduler(
        lambda epoch, _rate: cosine_rate(epoch, epochs, base,
                                         rule_optimizer("cpu")["warmup_fraction"])
    )]


def cosine_rate(epoch: int, epochs: int, base: float, warmup_fraction: float) -> float:
    """Learning rate of ``epoch`` (0-based) of ``epochs``: ``base * (epoch + 1) / W`` in
    the ``W = max(1, round(warmup_fraction * epochs))`` warm-up epochs (none when
    ``epochs`` is 1), then ``base * (1 + cos(pi * (epoch - W + 0.5) / (epochs - W))) / 2``."""
    warmup = max(1, round(warmup_fraction * epochs)) if epochs > 1 else 0
    if epoch < warmup:
        return base * (epoch + 1) / warmup
    return base * 0.5 * (1.0 + math.cos(math.pi * (epoch - warmup + 0.5) / (epochs - warmup)))


def reduce_lr_patience(args) -> int | None:
    """The callbacks' plateau patience: 4 epochs with ``--schedule plateau`` (session
    15), none with a cosine schedule (the schedule sets the rate)."""
    return None if getattr(args, "schedule", "plateau") == "cosine" else 4


def fit(start, args, model, training, validation_data, volume_validation):
    """:func:`kseg.recipes._common.fit` with ``--schedule``: the plateau patience
    (:func:`reduce_lr_patience`) or the cosine schedule (:func:`schedule_callbacks`)."""
    from kseg.recipes import _common

    return _common.fit(
        start, args, model, training, validation_data, volume_validation,
        reduce_lr_patience=reduce_lr_patience(args),
        schedule=schedule_callbacks(start.training_args),
    )  # fmt: skip


def unet_settings(plan, training: int, args) -> dict:
    """The options a plan sets in every 2D recipe: the input size, batch, depth and width of
    the U-Net, Adam's learning rate and its cosine schedule, nnU-Net's augmentation, and
    the epochs the plan's training steps make (a GPU plan's SGD is refused: the recipes
    train with Adam). A ``--image-size`` given without
    ``--depth`` keeps its feature maps at least 4 pixels wide (:func:`kseg.plan.rule_depth`)
    and gets at most as many poolings as halve it exactly; a ``--depth`` given without
    ``--image-size`` rounds the plan's size up to a multiple of ``2**depth``."""
    from kseg.plan import rule_depth

    if plan.optimizer["name"] != "Adam":
        raise ValueError(
            f"--plan {args.plan}: the plan's optimiser is {plan.optimizer['name']} (a GPU "
            "plan); the 2D recipes train with Adam: use a CPU plan (kseg.plan.plan with "
            "device='cpu')"
        )
    given = set(getattr(args, "plan_given", ()))
    depth, image_size = plan.depth, int(max(plan.patch_size))
    if "image_size" in given:
        depth = min(depth, rule_depth((args.image_size, args.image_size)))
        while depth > 1 and args.image_size % 2**depth:  # the U-Net halves it depth times
            depth -= 1
    elif "depth" in given:  # the plan's size, rounded up to what --depth poolings halve
        image_size = math.ceil(image_size / 2**args.depth) * 2**args.depth
    return {
        "image_size": image_size,
        "batch_size": int(plan.batch_size),
        "depth": int(depth),
        "base_filters": int(plan.base_filters),
        "learning_rate": float(plan.optimizer["learning_rate"]),
        "schedule": "cosine" if plan.optimizer["schedule"] == "cosine" else "plateau",
        "augment": "nnunet",
        "epochs": epochs_for(plan, training, plan.batch_size),
    }


def epochs_for(plan, training: int, batch_size: int) -> int:
    """The epochs the plan's training time holds: ``floor(training_steps *
    seconds_per_step / (steps_per_epoch * seconds_per_step + EPOCH_OVERHEAD_SECONDS))``,
    ``steps_per_epoch = ceil(training / batch_size)``; at least 1."""
    steps_per_epoch = max(1, math.ceil(training / batch_size))
    seconds = plan.training_steps * plan.seconds_per_step
    per_epoch = steps_per_epoch * plan.seconds_per_step + EPOCH_OVERHEAD_SECONDS
    return max(1, math.floor(seconds / per_epoch))
