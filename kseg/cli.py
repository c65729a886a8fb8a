"""The ``kseg`` command: prepare a dataset, train a recipe, evaluate, predict, tune, report.

::

    kseg prepare DATASET --manual-dir DIR [--config NAME] [--tfds-dir DIR] [--folds K]
    kseg train RECIPE [recipe options]            (resumable: the same command continues)
    kseg evaluate RUN (--split test|validation | --input DIR)
    kseg predict RUN --input PATH --output DIR --format nifti|dicom-seg|png|rtstruct [--overwrite]
    kseg tune RECIPE --strategy random|bayesian|hyperband|grid|staged --max-trials N [options]
    kseg report RUN [--output FILE]
    kseg study NAME RUN|RECIPE [study options] [recipe options]

``RUN`` is the folder a ``kseg train`` run writes (its ``--output-dir``): ``config.json``
says which recipe trained it with which options, so ``evaluate``, ``predict`` and
``report`` need nothing else.

Only the standard library is imported until the command line is parsed: ``--help`` and a
mistyped option answer at once instead of after TensorFlow's start-up (tens of seconds on
a busy machine). A recipe's options are added to its parser only when that recipe is named.

A :class:`kseg.errors.KsegError` (a file or folder that is not what it should be) ends the
command with ``kseg: error: <message>`` on stderr and exit status 1, without a traceback,
and so does an ``OSError`` naming a file (``kseg: error: <file>: <reason>``: a read-only
run folder, a full disk); ``--debug`` shows the traceback instead. A usage error exits
with status 2 (argparse).
"""

from __future__ import annotations

import argparse
import os
import pathlib
import sys
import traceback

import kseg
from kseg.errors import KsegError, LayoutError

__all__ = ["DatasetChangedWarning", "TrainingDataWarning", "build_parser", "main"]


class DatasetChangedWarning(UserWarning):
    """``kseg evaluate RUN --split``: the prepared dataset is not the one RUN trained on."""


class TrainingDataWarning(UserWarning):
    """``kseg evaluate RUN --input DIR``: DIR is the download RUN trained on, so its table
    holds the patients the model was fitted and chosen on."""

# Each dataset's builder config the recipe training on it uses; ``--config`` picks another.
DEFAULT_CONFIGS = {
    "chaos": "ct",
    "lctsc": "lungs",
    "msd_spleen": "preprocessed",
    "xray": "generic",
}
PREDICTION_FORMATS = ("nifti", "dicom-seg", "png", "rtstruct")
TUNING_STRATEGIES = ("random", "bayesian", "hyperband", "grid", "staged")
EVALUATION_SPLITS = ("test", "validation")
# kseg.data.splits.split_names needs a test fold, a validation fold and a training fold.
MIN_FOLDS = 3


def main(argv=None) -> int:
    """Run the ``kseg`` command line ``argv`` (default ``sys.argv[1:]``); returns the exit
    status (0, or 1 after a kseg error; usage errors exit with 2 from argparse)."""
    parser = build_parser()
    # Options no parser knows are a study's recipe options (kseg study NAME RECIPE ...);
    # after any other command they are argparse's usual usage error.
    args, unknown = parser.parse_known_args(argv)
    if args.command == "study":
        args.recipe_arguments = unknown
    elif unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    # Quiets TensorFlow's C++ start-up lines (CPU features, CUDA probing) unless asked for.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    # --debug may stand before or after the command; given nowhere, it is absent (the
    # parsers share one --debug option, so no parser may set it False for the others).
    debug = getattr(args, "debug", False)
    try:
        args.handler(args)
    except KsegError as error:
        if debug:
            raise
        print(error_line(error), file=sys.stderr)
        return 1
    except OSError as error:
        # a file the system refuses (a run folder on a read-only share, a full disk): one
        # line naming it, as a kseg error names its file
        if debug or error.filename is None:
            raise
        print(f"kseg: error: {error.filename}: {error.strerror or error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        if debug:
            traceback.print_exc()
        print("kseg: interrupted", file=sys.stderr)
        return 130
    return 0


def error_line(error: KsegError) -> str:
    """``kseg: error: <message>``. A message that goes on to show an expected layout keeps
    it, indented under the error line, so the folder tree stays readable."""
    first, *rest = str(error).splitlines() or [""]
    return "\n".join([f"kseg: error: {first}", *(f"  {line}" for line in rest)])


def build_parser() -> argparse.ArgumentParser:
    """The ``kseg`` parser; recipe parsers fill in their options when a recipe is named."""
    debug = argparse.ArgumentParser(add_help=False)
    debug.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                       help="show the traceback of an error instead of its one-line message")
    parser = argparse.ArgumentParser(
        prog="kseg", parents=[debug],
        description="Medical image segmentation with Keras: prepare a dataset, train a "
                    "recipe, evaluate, predict, tune and report.",
        epilog="`kseg COMMAND --help` describes each command.",
    )
    parser.add_argument("--version", action="version", version=f"kseg {kseg.__version__}")
    commands = parser.add_subparsers(dest="command", title="commands", metavar="COMMAND")

    def command(name, handler, summary, description):
        sub = commands.add_parser(name, parents=[debug], help=summary,
                                  description=description)
        sub.set_defaults(handler=handler, command_parser=sub)
        return sub

    _add_prepare(command("prepare", _prepare, "build a TFDS dataset from a manual download",
                         _PREPARE_DESCRIPTION))
    _add_recipes(command("train", _train, "train a recipe (run it again to resume)",
                         _TRAIN_DESCRIPTION), tuning=False, debug=debug)
    _add_evaluate(command("evaluate", _evaluate, "score a run's best model per patient",
                          _EVALUATE_DESCRIPTION))
    _add_predict(command("predict", _predict, "segment new images with a run's best model",
                         _PREDICT_DESCRIPTION))
    _add_recipes(command("tune", _tune, "search a recipe's hyperparameters with Keras Tuner",
                         _TUNE_DESCRIPTION), tuning=True, debug=debug)
    _add_report(command("report", _report, "write a run's self-contained HTML report",
                        _REPORT_DESCRIPTION))
    _add_studies(command("study", _study, "how a model holds up: noise, training size, "
                         "losses, uncertainty ...", _STUDY_DESCRIPTION), debug=debug)
    return parser


# --- prepare -------------------------------------------------------------------------------

_PREPARE_DESCRIPTION = """\
Build the TFDS dataset DATASET from the files of its manual download (never modified),
split by patient into --folds folds written as splits fold0 .. fold{K-1}. Prints where
the dataset went and how many examples each split holds. A dataset already prepared there
is reused. tfds_builders/<DATASET>/README.md has the download steps and the layouts."""


def _add_prepare(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dataset", metavar="DATASET", choices=sorted(DEFAULT_CONFIGS),
                        help=f"one of {', '.join(sorted(DEFAULT_CONFIGS))}")
    parser.add_argument("--manual-dir", type=pathlib.Path, required=True, metavar="DIR",
                        help="the folder the download was extracted into")
    parser.add_argument("--config", metavar="NAME",
                        help="builder config (default: the one the dataset's recipe uses: "
                             + ", ".join(f"{name} {config}"
                                         for name, config in sorted(DEFAULT_CONFIGS.items()))
                             + ")")
    parser.add_argument("--tfds-dir", type=pathlib.Path, metavar="DIR",
                        help="TFDS data_dir to write into (default: TFDS' own, "
                             "$TFDS_DATA_DIR or ~/tensorflow_datasets, where tfds.load looks)")
    from kseg.recipes._common import fold_count

    parser.add_argument("--folds", type=fold_count, metavar="K",
                        help=f"patient-level folds, at least {MIN_FOLDS} (a test, a validation "
                             "and a training fold; default: the config's, 5). Another count "
                             "is prepared as its own config, <config>_<K>fold")


def _prepare(args: argparse.Namespace) -> None:
    import importlib

    check_manual_dir(args.manual_dir, args.dataset)
    from kseg.recipes._common import file_in_the_way

    blocked = None if args.tfds_dir is None else file_in_the_way(args.tfds_dir)
    if blocked is not None:
        _usage_error(args, f"--tfds-dir {args.tfds_dir}: {blocked} is a file; expected the "
                           "folder to write the dataset into")
    if args.tfds_dir is not None:
        # as kseg train refuses a --tfds-dir in --data-dir: the dataset written into the
        # download changes the files it was prepared from, and every later use refuses it
        download = os.path.realpath(args.manual_dir)
        inside = os.path.realpath(args.tfds_dir)
        if inside == download or inside.startswith(download.rstrip(os.sep) + os.sep):
            _usage_error(args, f"--tfds-dir {args.tfds_dir} lies in --manual-dir "
                               f"{args.manual_dir}; the download is never written to: "
                               "choose a folder outside it")
    module = importlib.import_module(f"tfds_builders.{args.dataset}")
    configs = module.Builder.builder_configs
    name = args.config or DEFAULT_CONFIGS[args.dataset]
    if name not in configs:
        _usage_error(args, f"argument --config: invalid choice for {args.dataset}: {name!r} "
                           f"(choose from {', '.join(sorted(configs))})")
    config = configs[name]
    folds = config.num_folds if args.folds is None else args.folds
    if folds < MIN_FOLDS:
        _usage_error(args, f"--folds must be at least {MIN_FOLDS} (a test, a validation and "
                           f"a training fold), got {folds}")
    from kseg.recipes._common import with_folds

    builder = module.Builder(config=with_folds(config, folds),
                             data_dir=None if args.tfds_dir is None else str(args.tfds_dir))
    prepare_builder(builder, args.manual_dir)
    print(split_table(builder))


def check_manual_dir(path: pathlib.Path, dataset: str) -> pathlib.Path:
    """``path`` when it is a folder with something in it; else a one-line LayoutError (the
    builder's own would recite every layout of the dataset) naming the dataset's README,
    which is installed with the builders."""
    import tfds_builders  # an empty package: nothing heavy loads

    readme = pathlib.Path(tfds_builders.__file__).parent / dataset / "README.md"
    expected = (f"expected the folder the {dataset} download was extracted into (layouts: "
                f"{readme})")
    if not path.exists():
        raise LayoutError(path, f"no such folder; {expected}")
    if not path.is_dir():
        raise LayoutError(path, f"is a file; {expected}")
    if next(path.iterdir(), None) is None:
        raise LayoutError(path, f"is empty; {expected}")
    return path


def prepare_builder(builder, manual_dir: pathlib.Path) -> None:
    """Build ``builder``'s dataset from ``manual_dir`` unless it is prepared already (the
    recipes' step).

    The builders raise kseg errors for a folder without the expected layout; a patient
    count the folds cannot split is a ValueError of the fold assignment, reported here as
    a kseg error naming the folder (``--debug`` shows where it came from)."""
    from kseg.recipes import _common

    try:
        _common.prepare(builder, manual_dir)
    except KsegError:  # a MaskError is a ValueError too; it names its file already
        raise
    except ValueError as error:
        raise KsegError(f"preparing {builder.info.full_name} failed: {error}") from error


def split_table(builder) -> str:
    """Where the dataset is and the examples (and patients, where the builder counted them)
    of every split, with the total."""
    splits = builder.info.splits
    foreground = builder.info.metadata.get("foreground", {}) if builder.info.metadata else {}
    names = sorted(splits.keys(), key=_split_order)
    rows = [("split", "examples", "patients")]
    for name in names:
        patients = foreground.get(name, {}).get("patients")
        rows.append((name, str(splits[name].num_examples),
                     "" if patients is None else str(patients)))
    total_patients = [foreground.get(name, {}).get("patients") for name in names]
    rows.append(("total", str(sum(splits[name].num_examples for name in names)),
                 "" if None in total_patients else str(sum(total_patients))))
    widths = [max(len(row[column]) for row in rows) for column in range(3)]
    lines = [f"Dataset {builder.info.full_name} in {builder.data_dir}"]
    lines += ["  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True))
              .rstrip() for row in rows]
    return "\n".join(lines)


def _split_order(name: str):
    """fold0, fold1, .. fold10 in numeric order, other splits (challenge test sets, the
    unlabeled cases) after them."""
    if name.startswith("fold") and name[4:].isdigit():
        return (0, int(name[4:]), "")
    return (1, 0, name)


# --- train and tune: one sub-parser per recipe ---------------------------------------------

_TRAIN_DESCRIPTION = """\
Train RECIPE: prepare its data (a synthetic phantom in the dataset's layout when there is
no --data-dir), train, keep the best model by whole-volume validation Dice. Writes the run
folder (--output-dir): config.json first, then best.keras, history.csv, tensorboard/ ...
Running the same command again resumes an interrupted run; on a run whose training
finished it says so and trains nothing (remove RUN/best.keras to train the folder again
from epoch 0). With --validation-fold all,
one run per non-test fold in OUTPUT_DIR/folds/ and OUTPUT_DIR/best.keras their ensemble
(finished folds are kept when the command runs again). `kseg train RECIPE --help` lists
the recipe's options."""

_TUNE_DESCRIPTION = """\
Search RECIPE's hyperparameters with Keras Tuner on its training folds, every trial ranked
by whole-volume validation Dice; results in RUN/tuning/<strategy>/. Running the same
command again continues a stopped search. `kseg tune RECIPE --help` lists the options."""


class _RecipeParser(argparse.ArgumentParser):
    """A recipe's parser that adds the recipe's options when it first parses, so
    ``kseg --help`` and the other commands never pay for them (a recipe's options may
    read its dataset builder's configs)."""

    def __init__(self, *args, recipe: str, tuning: bool, **kwargs):
        super().__init__(*args, **kwargs)
        self.recipe = recipe
        self._tuning = tuning
        self._filled = False
        self.set_defaults(recipe_parser=self)

    def parse_known_args(self, args=None, namespace=None):
        if not self._filled:
            self._filled = True
            from kseg import recipes

            recipes.load(self.recipe).add_arguments(self)
            if self._tuning:
                from kseg.recipes._common import add_tuning_arguments

                add_tuning_arguments(self.add_argument_group("search (Keras Tuner)"))
        return super().parse_known_args(args, namespace)


def _add_recipes(parser: argparse.ArgumentParser, *, tuning: bool, debug) -> None:
    from kseg import recipes

    sub = parser.add_subparsers(dest="recipe", title="recipes", metavar="RECIPE",
                                parser_class=_RecipeParser, required=True)
    for name in recipes.RECIPES:
        description = recipes.load(name).DESCRIPTION
        sub.add_parser(name, parents=[debug], help=description, description=description,
                       recipe=name, tuning=tuning)


def _recipe(args: argparse.Namespace):
    """The recipe module of a ``train`` / ``tune`` command line, after the recipe checked
    and completed the options (``finish_arguments``; a usage error exits with status 2)."""
    from kseg import recipes

    module = recipes.load(args.recipe)
    module.finish_arguments(args.recipe_parser, args)
    return module


def _without_cli_options(args: argparse.Namespace) -> argparse.Namespace:
    """The recipe's own options: what the command line added is not a recipe argument, and
    config.json records every argument the recipe gets."""
    cli_only = ("command", "handler", "command_parser", "recipe", "recipe_parser", "debug")
    return argparse.Namespace(**{name: value for name, value in vars(args).items()
                                 if name not in cli_only})


def _train(args: argparse.Namespace) -> None:
    from kseg.recipes import cross_validation

    module = _recipe(args)
    # --validation-fold all: the cross-validation, on one machine (its own chief)
    best, _, chief = cross_validation.train_for_main(
        module, _without_cli_options(args), module._train
    )
    if not chief:  # every worker of a multi-worker run trains; the chief speaks for them
        return
    # a run trained with --test-fold none has no test fold to score
    split = "test" if getattr(args, "test_fold", 0) is not None else "validation"
    print(f"Best model: {best}\nNext: kseg evaluate {args.output_dir} --split {split}")


def _tune(args: argparse.Namespace) -> None:
    module = _recipe(args)
    module.tune(_without_cli_options(args))


# --- evaluate, predict, report: commands on a run folder ---------------------------------

_EVALUATE_DESCRIPTION = """\
Score RUN's best model per patient on a split of its dataset (--split) or on a folder of
labeled cases (--input). Writes RUN/evaluation/<name>/scores.csv and cases/*.npz (<name> is
the split, or input-<folder name>; another input folder of the same name gets
input-<folder name>-2, ...) and prints the table."""

_PREDICT_DESCRIPTION = """\
Segment the images at --input with RUN's best model, preprocessed as RUN was trained
(config.json's inference section), and write one segmentation per case into --output."""

_REPORT_DESCRIPTION = """\
Write RUN's report: one self-contained HTML file (training curves, per-patient tables,
slice viewer of the evaluated cases), by default RUN/report.html."""


def _add_run(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run", metavar="RUN", type=pathlib.Path,
                        help="run folder written by kseg train (its --output-dir)")


def _add_evaluate(parser: argparse.ArgumentParser) -> None:
    _add_run(parser)
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--split", choices=EVALUATION_SPLITS,
                       help="a split of the run's dataset (its test or validation fold)")
    where.add_argument("--input", type=pathlib.Path, metavar="DIR",
                       help="a folder of labeled cases in the layout of the run's dataset")


def _add_predict(parser: argparse.ArgumentParser) -> None:
    _add_run(parser)
    parser.add_argument("--input", type=pathlib.Path, required=True, metavar="PATH",
                        help="a DICOM series folder, a NIfTI file or a folder of them, a "
                             "radiograph or a folder of radiographs (PNG/JPEG/TIFF/BMP/DICOM)")
    parser.add_argument("--output", type=pathlib.Path, required=True, metavar="DIR",
                        help="folder the segmentations are written into")
    parser.add_argument("--format", required=True, choices=PREDICTION_FORMATS,
                        help="NIfTI label volume, DICOM SEG, PNG label map or RTSTRUCT")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace prediction files that exist in --output already "
                             "(by default kseg predict refuses, naming the file)")


def _add_report(parser: argparse.ArgumentParser) -> None:
    _add_run(parser)
    parser.add_argument("--output", type=pathlib.Path, metavar="FILE",
                        help="where to write the HTML file (default: RUN/report.html)")


def run_folder(path: pathlib.Path) -> pathlib.Path:
    """``path`` when it is a run folder with a readable ``config.json``; else a kseg error
    saying what RUN should be, before anything heavy is imported."""
    from kseg.recipes.run_config import read_config

    if not path.exists():
        raise LayoutError(path, "no such run folder; expected the --output-dir of a "
                                "`kseg train` run (it holds config.json)")
    if not path.is_dir():
        raise LayoutError(path, "is a file; expected the --output-dir of a `kseg train` run "
                                "(a folder holding config.json)")
    from kseg.recipes import cross_validation

    in_progress = cross_validation.unbuilt(path)
    if in_progress is not None:
        raise LayoutError(path, in_progress)
    read_config(path)
    return path


def check_model(run: pathlib.Path) -> pathlib.Path:
    """``RUN/best.keras`` when it is a file; else a kseg error saying why a run folder can
    lack it (a run stopped before its first validation, which its backup resumes), before
    any data is read."""
    from kseg.recipes.run_config import BACKUP_FOLDER

    model = run / "best.keras"
    if model.is_file():
        return model
    resume = (f"; {run / BACKUP_FOLDER} holds its resume backup: run the same kseg train "
              "command again to continue it" if (run / BACKUP_FOLDER).is_dir() else "")
    raise LayoutError(model, "is missing: the run folder holds no trained model (kseg train "
                             f"writes best.keras when a validation score first improves){resume}")


def _evaluate(args: argparse.Namespace) -> None:
    run = run_folder(args.run)
    if args.input is not None and not args.input.is_dir():
        problem = "is a file" if args.input.exists() else "no such folder"
        raise LayoutError(args.input, f"{problem}; expected a folder of labeled cases in the "
                                      "layout of the run's dataset")
    from kseg import recipes
    from kseg.recipes import _common, cross_validation

    module, recipe_args = recipes.load_run(run)
    # a cross-validation's validation table is the pooled out-of-fold one, of its members
    pooled = args.split == "validation" and _common.cross_validating(recipe_args)
    if not pooled:
        if args.input is None:  # a run without a test fold says so first
            _common.check_split(recipe_args, args.split)
        check_model(run)
    if args.input is None:
        # the run's split as it was prepared, also when the download holds other files now
        with _common.reading_as_prepared():
            if not pooled:
                _warn_of_another_dataset(module, recipe_args, run)
            cross_validation.evaluate(module, recipe_args, split=args.split)
    else:
        _warn_of_training_data(recipe_args, args.input, run)
        cross_validation.evaluate(module, recipe_args, input_dir=args.input)


def _warn_of_training_data(recipe_args, input_dir: pathlib.Path, run: pathlib.Path) -> None:
    """A :class:`TrainingDataWarning` when ``--input`` is the folder the run's dataset was
    prepared from (its ``--data-dir``, or the phantom it wrote): every patient of it is
    scored, the ones the model trained on and was chosen on among them, so the table reads
    better than the model generalises."""
    import warnings

    trained_on = getattr(recipe_args, "manual_dir", None) or getattr(recipe_args, "data_dir",
                                                                     None)  # fmt: skip
    if trained_on is None or os.path.realpath(input_dir) != os.path.realpath(trained_on):
        return
    held_out = (f"kseg evaluate {run} --split test scores the patients it never saw"
                if getattr(recipe_args, "test_fold", 0) is not None
                else "the run holds no patient out (--test-fold none): score other data")
    warnings.warn(
        f"{input_dir} is the folder {run} was trained on: its table holds the patients the "
        "model was fitted and chosen on, so it reads better than the model does on new "
        f"patients; {held_out}",
        TrainingDataWarning, stacklevel=2,
    )  # fmt: skip


def _warn_of_another_dataset(module, recipe_args, run: pathlib.Path) -> None:
    """A :class:`DatasetChangedWarning` when the run's prepared dataset is no longer the
    one it trained on (``config.json``'s dataset fingerprint): prepared again from other
    files, its folds hold other patients, and the split may hold some the model trained
    on."""
    import warnings

    from kseg.recipes import run_config

    recorded = run_config.read_config(run).get("dataset")
    fingerprint = recorded.get("fingerprint") if isinstance(recorded, dict) else None
    if not isinstance(fingerprint, str):  # runs recorded before the fingerprint
        return
    from kseg.recipes import _common

    with _common.reuse_named_later():  # the evaluation prepares it again and names it
        builder = module.prepare(recipe_args)
    now = run_config.dataset_fingerprint(builder)
    if now != fingerprint:
        warnings.warn(
            f"{run} was trained on a prepared dataset with fingerprint {fingerprint[:12]}, "
            f"but {builder.data_dir} has {now[:12]} now (prepared again from other files?): "
            "its folds may hold other patients, some of which the model trained on; "
            "evaluate other data with --input instead",
            DatasetChangedWarning, stacklevel=2,
        )  # fmt: skip


def _predict(args: argparse.Namespace) -> None:
    run = run_folder(args.run)
    if not args.input.exists():
        raise LayoutError(args.input, "no such file or folder; expected a DICOM series "
                                      "folder, a NIfTI file or radiographs")
    from kseg.predict import predict_command

    written = predict_command(run, args.input, args.output, args.format,
                              overwrite=args.overwrite)
    print(f"Wrote {len(written)} file{'' if len(written) == 1 else 's'} to {args.output}")
    for path in written:
        print(f"  {path}")


def _report(args: argparse.Namespace) -> None:
    run = run_folder(args.run)
    from kseg.report import write_report

    print(f"Wrote {write_report(run, args.output)}")


# --- study: kseg.studies on a run folder or a recipe -------------------------------------

_STUDY_DESCRIPTION = """\
Run study NAME (kseg.studies) on the data of a 2D recipe: on a trained run folder RUN
(config.json names its recipe and options), or on RECIPE followed by that recipe's options
(a recipe without a trained model is trained first where the study needs one). Writes
RUN/studies/NAME/table.csv (one row per patient and setting), table.txt and figure.png.
`kseg study NAME --help` lists the study's options."""

# One line per study for `kseg study --help` (kseg.studies' module docstring has the detail).
_STUDY_SUMMARIES = {
    "noise": "per-patient Dice of a trained run under Gaussian image noise",
    "train-size": "one model per number of training patients (nested subsets)",
    "augment": "the recipe's augmentation on vs off",
    "losses": "one model per loss: BCE, Dice, IoU, Combo, TopK, Dice+CE",
    "uncertainty": "MC dropout and test-time augmentation: calibration, error detection",
    "ensemble": "members vs mean, fitted weights and majority vote",
    "consistency": "few labels plus unlabeled patients: supervised vs mean teacher vs FixMatch",
}


class _StudyParser(argparse.ArgumentParser):
    """A study's parser that adds the study's options (:func:`kseg.studies.add_arguments`)
    when it first parses. No abbreviations: a recipe option (``--seed``) must not be read
    as a study option it begins (``--seeds``); it goes to the recipe."""

    def __init__(self, *args, study: str, **kwargs):
        super().__init__(*args, allow_abbrev=False, **kwargs)
        self.study = study
        self._filled = False
        self.set_defaults(study_parser=self)

    def parse_known_args(self, args=None, namespace=None):
        if not self._filled:
            self._filled = True
            from kseg import studies

            studies.add_arguments(self, self.study)
        return super().parse_known_args(args, namespace)


def _add_studies(parser: argparse.ArgumentParser, *, debug) -> None:
    from kseg import studies  # standard library only at import time

    sub = parser.add_subparsers(dest="study", title="studies", metavar="NAME",
                                parser_class=_StudyParser, required=True)
    for name in studies.STUDIES:
        summary = _STUDY_SUMMARIES.get(name, f"the {name} study")
        sub.add_parser(name, parents=[debug], help=summary,
                       description=f"The {name} study: {summary}. {_STUDY_SOURCE}",
                       study=name)


_STUDY_SOURCE = ("The source is a run folder written by kseg train, or a recipe name followed by "
                 "that recipe's options (`kseg train RECIPE --help` lists them).")


def _study(args: argparse.Namespace) -> None:
    from kseg import recipes, studies

    source = str(args.source)
    if source in recipes.RECIPES and os.path.isfile(os.path.join(source, "config.json")):
        # kseg train RECIPE --output-dir RECIPE: read as the recipe, the study would train
        # a new run of it and study that
        args.study_parser.error(
            f"{source} is the name of a recipe and of a run folder here; give ./{source} "
            f"to study the run folder, or run the command from another folder to study "
            f"the recipe {source}"
        )
    if source in recipes.RECIPES:
        # the recipe's own checks and usage errors, named as this command, before TensorFlow
        recipe = recipes.load(source)
        recipe_parser = argparse.ArgumentParser(
            prog=f"kseg study {args.study} {source}", description=recipe.DESCRIPTION)
        recipe.add_arguments(recipe_parser)
        recipe.finish_arguments(recipe_parser, recipe_parser.parse_args(args.recipe_arguments))
    else:
        if args.recipe_arguments:
            args.study_parser.error("unrecognized arguments after a run folder: "
                                    f"{' '.join(args.recipe_arguments)} (recipe options follow "
                                    "a recipe name)")
        path = pathlib.Path(source)
        if not path.exists():
            raise LayoutError(path, "no such run folder, and not a recipe name; expected the "
                                    "--output-dir of a `kseg train` run or one of "
                                    f"{', '.join(recipes.RECIPES)}")
        run_folder(path)
    cli_only = ("command", "handler", "command_parser", "study", "study_parser", "debug")
    study_args = argparse.Namespace(**{name: value for name, value in vars(args).items()
                                       if name not in cli_only})
    studies.run_study(args.study, study_args)


def _usage_error(args: argparse.Namespace, message: str) -> None:
    """argparse's usage error (exit status 2) for a check only possible after parsing."""
    args.command_parser.error(message)
