"""What the recipes share: the ``--folds`` option and its check (``--validation-fold all``:
cross-validation, :mod:`kseg.recipes.cross_validation`), the tuning options, the
``--strategy`` of a training run, its start (:func:`start_training`) and its ``fit``
(:func:`fit`), the 2D recipes' network and CT slice data, the TFDS build step, progress
settings and the closing run-time line.

Standard library only at import time: the recipes import this before parsing their
arguments, and ``--help`` or a bad argument must answer before TensorFlow loads (tens of
seconds on a busy machine).
"""

from __future__ import annotations

import argparse
import contextlib
import contextvars
import dataclasses
import io
import os
import pathlib
import sys
import time

from kseg.errors import LayoutError

# kseg.data.splits.split_names needs a test fold, a validation fold and a training fold;
# without a test fold (--test-fold none) one fewer.
MIN_FOLDS = 3
DEFAULT_FOLDS = 5
# --validation-fold all: one model per non-test fold as validation, averaged into one model.
ALL_FOLDS = "all"


def add_folds_argument(parser: argparse.ArgumentParser) -> None:
    """``--folds``, ``--test-fold K|none`` and ``--validation-fold K|all``."""
    parser.add_argument(
        "--folds", type=fold_count, default=DEFAULT_FOLDS,
        help=f"patient-level folds the dataset is split into (at least {MIN_FOLDS}, "
             f"{MIN_FOLDS - 1} with --test-fold none; at most the number of patients; "
             "default %(default)s)",
    )
    parser.add_argument(
        "--test-fold", type=fold_or_none, default=0, metavar="K|none",
        help="fold held out for the test table (default %(default)s); none: no test fold, "
             "every fold but the validation one trains (a final model on all patients; "
             "evaluate it on other data with --input)",
    )
    parser.add_argument(
        "--validation-fold", type=fold_or_all, default=1, metavar="K|all",
        help="fold that chooses the best model (default %(default)s); all: cross-validation "
             "as nnU-Net runs it, one complete run per non-test fold as validation in "
             "OUTPUT_DIR/folds/fold_<K>/, and OUTPUT_DIR/best.keras one model averaging "
             "their probabilities with mirroring test-time augmentation (post-processing "
             "chosen on the pooled out-of-fold predictions); each member trains under "
             "--max-minutes on its own; rerun the same command to resume, finished folds "
             "are kept",
    )


def fold_count(text: str) -> int:
    """A ``--folds`` value: a whole number. ``all`` is what ``--validation-fold all`` means
    (nnU-Net's "all folds"), and says so."""
    if text.strip().lower() == ALL_FOLDS:
        raise argparse.ArgumentTypeError(
            "--folds is the number of folds the patients are split into; for one model per "
            "fold averaged into an ensemble (nnU-Net's all folds) use --validation-fold all"
        )
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of folds, got {text!r}") from None


def fold_or_all(text: str) -> int | str:
    """A ``--validation-fold`` value: a fold number, or ``all`` for cross-validation."""
    return _fold_or_word(text, ALL_FOLDS, ALL_FOLDS)


def cross_validating(args) -> bool:
    """Whether ``args`` ask for cross-validation (``--validation-fold all``)."""
    return getattr(args, "validation_fold", 1) == ALL_FOLDS


def member_folds(args) -> list[int]:
    """The validation fold of each member of a cross-validation: every fold but the test
    fold."""
    test_fold = getattr(args, "test_fold", 0)
    return [fold for fold in range(args.folds) if fold != test_fold]


def fold_or_none(text: str) -> int | None:
    """A ``--test-fold`` value: a fold number, or ``none`` for no test fold."""
    return _fold_or_word(text, "none", None)


def _fold_or_word(text: str, word: str, meaning):
    """``meaning`` for ``word`` (any case, spaces around it), else ``text`` as a fold
    number."""
    if text.strip().lower() == word:
        return meaning
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a fold number or {word}, got {text!r}"
        ) from None


def has_test_fold(args) -> bool:
    """Whether the run holds a test fold out (runs recorded before ``--test-fold`` did:
    fold 0)."""
    return getattr(args, "test_fold", 0) is not None


def fold_splits(args) -> dict:
    """``{"train": ..., "validation": ..., "test": ...}``, the TFDS split of each role
    (:func:`kseg.data.splits.split_names`); without a test fold, no ``"test"`` and every
    fold but the validation one trains. Runs recorded before ``--test-fold`` and
    ``--validation-fold`` existed used folds 0 and 1.

    A cross-validation (``--validation-fold all``) has no validation fold of its own (each
    member has one): ``"train"`` is every non-test fold the ensemble learnt from and there
    is no ``"validation"``."""
    from kseg.data.splits import fold_names, split_names

    validation_fold = getattr(args, "validation_fold", 1)
    if validation_fold == ALL_FOLDS:
        names = fold_names(args.folds)
        roles = {"train": "+".join(names[fold] for fold in member_folds(args))}
        if has_test_fold(args):
            roles["test"] = names[args.test_fold]
        return roles
    if has_test_fold(args):
        return split_names(
            args.folds, test_fold=getattr(args, "test_fold", 0), validation_fold=validation_fold
        )
    names = fold_names(args.folds)
    return {
        "train": "+".join(name for fold, name in enumerate(names) if fold != validation_fold),
        "validation": names[validation_fold],
    }


def check_split(args, split: str) -> None:
    """A kseg error (before TensorFlow loads) for ``split="test"`` on a run trained with
    ``--test-fold none``, and for the recipe's own ``split="validation"`` on a
    cross-validation, whose validation table is the out-of-fold one
    (:func:`kseg.recipes.cross_validation.evaluate`)."""
    if split == "validation" and cross_validating(args):
        from kseg.errors import LayoutError

        raise LayoutError(
            args.output_dir, "is a cross-validation (--validation-fold all): its ensemble "
            "learnt from every non-test fold, so its validation table is the out-of-fold "
            "one, each member scoring its own validation fold: kseg evaluate RUN --split "
            "validation, or kseg.recipes.cross_validation.evaluate",
        )  # fmt: skip
    if split == "test" and not has_test_fold(args):
        from kseg.errors import LayoutError

        trained = ("every fold trained, one member per fold as validation"
                   if cross_validating(args) else "every fold but the validation one trained")
        raise LayoutError(
            args.output_dir, f"was trained with --test-fold none: {trained}, so it has no "
            "test fold to evaluate; use --split validation, or --input DIR with other "
            "labeled cases",
        )  # fmt: skip


def skipping_test_evaluation(args) -> None:
    """What ``main`` says instead of a test table for a run without a test fold."""
    trained = ("every fold (one member per fold as validation)" if cross_validating(args)
               else f"every fold but the validation fold {args.validation_fold}")
    print(f"\nNo test evaluation: --test-fold none trained on {trained}. Score other "
          f"labeled cases with: kseg evaluate {args.output_dir} --input DIR", flush=True)


def evaluate_test_fold(args, evaluate):
    """``main``'s test table (``evaluate(args, split="test")``), or ``None`` after saying
    why for a run trained with ``--test-fold none``."""
    if has_test_fold(args):
        return evaluate(args, split="test")
    skipping_test_evaluation(args)
    return None


def check_shared_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """The checks of the options every recipe has: values, search, tracking, strategy."""
    check_arguments(parser, args)
    check_tuning_arguments(parser, args)
    check_tracking_arguments(parser, args)
    check_strategy_argument(parser, args)


def check_patient_folds(
    parser: argparse.ArgumentParser, args: argparse.Namespace, on_disk: int | None,
    phantom_option: str,
) -> None:
    """:func:`check_folds` for ``args``' folds on the patients ``args.manual_dir`` holds
    (``on_disk``), or on the phantom this run will write (the count ``phantom_option``
    gives) when there is no ``--data-dir`` and nothing on disk yet."""
    phantom_count = None if args.data_dir else getattr(args, phantom_option[2:].replace("-", "_"))
    patients, source = patients_and_source(on_disk, args.manual_dir, phantom_count, phantom_option)
    check_folds(parser, args.folds, patients, source, test_fold=args.test_fold,
                validation_fold=args.validation_fold)


def check_folds(
    parser: argparse.ArgumentParser,
    folds: int,
    patients: int | None,
    source: str,
    *,
    test_fold: int | None = 0,
    validation_fold: int = 1,
) -> None:
    """Exit with one clear line (argparse's usage error, exit code 2) when ``folds`` cannot
    split ``patients`` patients, before anything is written or trained.

    Args:
        parser: the example's parser; its ``error`` prints the message and exits.
        folds: the ``--folds`` value.
        patients: how many patients the data holds, or ``None`` when the folder does not
            have the expected layout yet (the dataset builder then says what is missing).
        source: where the patients are, for the message (a folder or the phantom option).
        test_fold, validation_fold: the folds the example tests and validates on
            (``test_fold=None``: no test fold).
    """
    minimum = MIN_FOLDS if test_fold is not None else MIN_FOLDS - 1
    if folds < minimum:
        roles = ("a test, a validation and a training fold" if test_fold is not None
                 else "a validation and a training fold")
        if validation_fold == ALL_FOLDS:
            roles += " for each member of --validation-fold all"
        parser.error(f"--folds must be at least {minimum} ({roles}), got {folds}")
    if validation_fold == ALL_FOLDS:
        validation_fold = None  # every non-test fold in turn: each is checked with the test fold
    for option, fold in (("--test-fold", test_fold), ("--validation-fold", validation_fold)):
        if fold is not None and not 0 <= fold < folds:
            parser.error(f"{option} must be in 0..{folds - 1} with --folds {folds}, got {fold}")
    if test_fold is not None and test_fold == validation_fold:
        parser.error(f"--test-fold and --validation-fold must differ, both are {test_fold}")
    if patients is not None and patients < folds:
        advice = (f"use --folds {patients} or fewer" if patients >= minimum
                  else f"the examples need at least {minimum} patients")
        parser.error(f"--folds {folds} needs at least {folds} patients; {source} holds "
                     f"{patients}: {advice}")


# Options that count or size something: 0 or less is never a run (argparse's usage error).
_POSITIVE_INTEGERS = (
    "epochs", "image_size", "batch_size", "base_filters", "steps_per_epoch", "patch_size",
    "roi_size", "validate_every", "max_train", "phantom_patients", "phantom_slices",
    "phantom_size", "phantom_images", "phantom_cases",
)
_POSITIVE_NUMBERS = ("learning_rate", "max_minutes")


def check_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Exit with one clear line (argparse's usage error, exit code 2) for a value no run can
    use, before TensorFlow loads: a ``--data-dir`` that is missing, a file or an empty folder,
    an ``--output-dir`` or ``--tfds-dir`` that is a file or lies below one, or either of them
    inside the ``--data-dir`` (the download is never written to), a count, size or rate that is not
    positive, or a ``--seed`` outside 0..2**32-1 (Keras' and NumPy's seeds)."""
    data_dir = getattr(args, "data_dir", None)
    if data_dir is not None:
        if not os.path.exists(data_dir):
            parser.error(f"--data-dir {data_dir} does not exist")
        if not os.path.isdir(data_dir):
            parser.error(f"--data-dir {data_dir} is a file; give the folder the download was "
                         "extracted into")
        with os.scandir(data_dir) as entries:
            if next(entries, None) is None:
                parser.error(f"--data-dir {data_dir} is empty; extract the download into it "
                             "(see the dataset's README for the layout)")
    for option in ("output_dir", "tfds_dir"):
        folder = getattr(args, option, None)
        blocked = None if folder is None else file_in_the_way(folder)
        if blocked is not None:
            parser.error(f"--{option.replace('_', '-')} {folder}: {blocked} is a file; "
                         "expected a folder to write into")
    if data_dir is not None:
        # a run (or its prepared dataset) inside the download changes the files it was
        # prepared from: every later run and evaluate would find the dataset stale
        download = os.path.realpath(data_dir)
        for option in ("output_dir", "tfds_dir"):
            folder = getattr(args, option, None)
            if folder is None:
                continue
            inside = os.path.realpath(folder)
            if inside == download or inside.startswith(download.rstrip(os.sep) + os.sep):
                parser.error(f"--{option.replace('_', '-')} {folder} lies in --data-dir "
                             f"{data_dir}; the download is never written to: choose a "
                             "folder outside it")
    for name in _POSITIVE_INTEGERS:
        value = getattr(args, name, None)
        if value is not None and value < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1, got {value}")
    for name in _POSITIVE_NUMBERS:
        value = getattr(args, name, None)
        if value is not None and not value > 0:
            parser.error(f"--{name.replace('_', '-')} must be positive, got {value}")
    seed = getattr(args, "seed", None)
    if seed is not None and not 0 <= seed < 2**32:  # what keras.utils.set_random_seed takes
        parser.error(f"--seed must be in 0..{2**32 - 1}, got {seed}")
    dropout = getattr(args, "dropout", None)
    if dropout is not None and not 0 <= dropout < 1:
        parser.error(f"--dropout must be in [0, 1), got {dropout}")
    max_minutes = getattr(args, "max_minutes", None)
    if max_minutes is not None and max_minutes == float("inf"):
        parser.error("--max-minutes must be a finite number of minutes; leave it out for no "
                     "time budget")


def file_in_the_way(folder) -> str | None:
    """``folder``, or the nearest of its parents that exists, when that is not a folder:
    nothing can be written there (makedirs would end in NotADirectoryError); else
    ``None``."""
    path = pathlib.Path(folder)
    for candidate in (path, *path.parents):
        if os.path.exists(candidate):
            return None if os.path.isdir(candidate) else os.fspath(candidate)
    return None


def run(main):
    """Call ``main()`` and return what it returns; a kseg error (a file or folder of the
    data that is wrong) ends the script with its message, which names the file, instead of
    a traceback (exit code 1), and so does an ``OSError`` naming a file (a run folder on a
    read-only share, a full disk), as the ``kseg`` command ends it."""
    from kseg.errors import KsegError  # standard library only: TensorFlow is not loaded here

    try:
        return main()
    except KsegError as error:
        print(f"{os.path.basename(sys.argv[0])}: error: {error}", file=sys.stderr)
        sys.exit(1)
    except OSError as error:
        if error.filename is None:
            raise
        print(f"{os.path.basename(sys.argv[0])}: error: {error.filename}: "
              f"{error.strerror or error}", file=sys.stderr)
        sys.exit(1)


def patients_and_source(
    on_disk: int | None, manual_dir, phantom_count: int | None, phantom_option: str
) -> tuple[int | None, str]:
    """The patient count :func:`check_folds` tests and where it comes from: the data folder
    when it already has its layout (a real download, or a phantom an earlier run wrote),
    else the phantom this run will write (``phantom_count``; ``None`` with ``--data-dir``)."""
    if on_disk is not None:
        return on_disk, str(manual_dir)
    if phantom_count is not None:
        return phantom_count, f"the phantom ({phantom_option})"
    return None, str(manual_dir)


def add_tfds_dir_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--tfds-dir",
        type=pathlib.Path,
        default=None,
        help="where TFDS writes the prepared dataset (default: OUTPUT_DIR/tfds); give the "
             "--tfds-dir of `kseg prepare` to reuse the dataset it prepared",
    )


def tfds_dir(args) -> pathlib.Path:
    """The TFDS data_dir of a run: ``--tfds-dir``, else ``OUTPUT_DIR/tfds`` (also for runs
    recorded before the option existed)."""
    chosen = getattr(args, "tfds_dir", None)
    return pathlib.Path(chosen) if chosen is not None else pathlib.Path(args.output_dir) / "tfds"


def add_tracking_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("experiment tracking (TensorBoard logs are always written)")
    group.add_argument(
        "--mlflow", action="store_true",
        help="also log the run to MLflow: config.json as params, every epoch's logs, and "
             "each evaluation's per-patient table and means (needs pip install "
             "'kseg[mlflow]')",
    )  # fmt: skip
    group.add_argument(
        "--mlflow-uri", metavar="URI",
        help="MLflow tracking URI or folder (default: $MLFLOW_TRACKING_URI, else mlruns "
             "beside the output folder)",
    )  # fmt: skip


def check_tracking_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Usage errors (exit 2) for ``--mlflow-uri`` without ``--mlflow`` and for ``--mlflow``
    without MLflow installed; a tracking folder made absolute, so that evaluating the run
    from another working folder logs to the same store."""
    import importlib.util
    import urllib.parse

    uri = getattr(args, "mlflow_uri", None)
    if uri is not None and not getattr(args, "mlflow", False):
        parser.error("--mlflow-uri applies with --mlflow only")
    if getattr(args, "mlflow", False) and hasattr(args, "strategy"):  # a tuning command line
        parser.error("--mlflow applies to training runs; a tuning search writes its trials "
                     "to RUN/tuning/<strategy>/")
    if getattr(args, "mlflow", False) and importlib.util.find_spec("mlflow") is None:
        parser.error("--mlflow needs the mlflow package: pip install 'kseg[mlflow]' (or pip "
                     "install mlflow-skinny)")
    if uri is not None and len(urllib.parse.urlparse(uri).scheme) <= 1:  # a folder path
        args.mlflow_uri = os.path.abspath(uri)


def tracking_callbacks(run_dir, args, *, chief: bool = True) -> list:
    """TensorBoard logging of every epoch, and MLflow logging with ``--mlflow``
    (:func:`kseg.tracking.tracking_callbacks`); after the training callbacks in ``fit``.
    None on a worker that is not the chief: only the chief writes the run folder."""
    from kseg import tracking

    if not chief:
        return []
    return tracking.tracking_callbacks(
        run_dir, mlflow=getattr(args, "mlflow", False),
        tracking_uri=getattr(args, "mlflow_uri", None),
    )  # fmt: skip


def log_evaluation(args) -> None:
    """With ``--mlflow``, log the run folder's evaluations (per-patient tables, their means)
    to the run's MLflow run (:func:`kseg.tracking.log_run_to_mlflow`); where MLflow is not
    installed (a run trained elsewhere), warn that the saved evaluation is not logged."""
    if not getattr(args, "mlflow", False):
        return
    import importlib.util

    if importlib.util.find_spec("mlflow") is None:  # trained elsewhere, evaluated here
        import warnings

        warnings.warn(
            f"{args.output_dir} was trained with --mlflow, but MLflow is not installed "
            "here: this evaluation is saved in its evaluation folder and not logged; pip "
            "install 'kseg[mlflow]' and evaluate again to log it",
            UserWarning, stacklevel=2,
        )  # fmt: skip
        return
    from kseg import tracking

    run_id = tracking.log_run_to_mlflow(
        args.output_dir, tracking_uri=getattr(args, "mlflow_uri", None)
    )
    print(f"Logged the evaluation to MLflow run {run_id}")


def with_folds(config, folds: int):
    """``config`` (a builder config with ``num_folds``) split into ``folds`` folds. A
    changed count gets its own name, hence its own TFDS folder: a dataset prepared with
    other folds is never read back as if it had these."""
    if folds == config.num_folds:
        return config
    return dataclasses.replace(config, name=f"{config.name}_{folds}fold", num_folds=folds)


@contextlib.contextmanager
def writing_phantom(folder, count: int, unit: str = "patients"):
    """Say where a synthetic tree goes before it is written, and when it is done."""
    print(f"Writing a SYNTHETIC tree ({count} {unit}; phantoms, not real data) to {folder} ...",
          flush=True)
    started = time.perf_counter()
    yield
    print(f"Wrote {count} phantom {unit} in {time.perf_counter() - started:.0f} s", flush=True)


# Written beside a prepared dataset's dataset_info.json: the files it was prepared from.
SOURCE_FILE = "kseg_source.json"


# What file managers drop into a download that no builder reads: hidden files and folders
# (macOS Finder's .DS_Store, the ._<name> AppleDouble companions of an archive extracted
# on a Mac) and Windows Explorer's thumbnail cache and folder settings.
_NOT_DATA = frozenset({"thumbs.db", "desktop.ini"})


def source_listing(manual_dir) -> dict:
    """What a prepared dataset was made from: ``manual_dir``'s files by relative name and
    size (a fingerprint of the listing, not of the bytes: reading a CT archive to check a
    cached dataset would cost what preparing it does). Modification times are left out,
    so a copy of the same download (``cp`` without ``-p``) still matches; so are the files
    a file manager adds by browsing the folder (hidden files and folders, ``Thumbs.db``,
    ``desktop.ini``), which no builder reads. ``every_file_sha256`` fingerprints the
    listing with them, as kseg recorded it before it left them out; both come from one
    walk of the folder.

    A link whose target is gone is listed as ``missing`` (a builder that needs it names
    it). Linked folders are followed, as the builders read through them (an archive kept on
    another disk, ``Train_Sets -> /data/CHAOS/Train_Sets``); each real folder is listed
    once, so a link to a folder above ends. When the folder holds such links,
    ``unlinked_sha256`` holds the two fingerprints without the files below them, as kseg
    recorded them before it followed links."""
    import hashlib

    root = pathlib.Path(manual_dir)
    data, every, unlinked_data, unlinked_every = [], [], [], []
    seen = {os.path.realpath(root)}
    below_link = {os.fspath(root): False}  # the folders os.walk is to enter
    for folder, folders, names in os.walk(root, followlinks=True):
        linked = below_link.pop(folder, False)
        entered = []
        for name in folders:  # each real folder once: a link to one above would loop
            path = os.path.join(folder, name)
            real = os.path.realpath(path)
            if real not in seen:
                seen.add(real)
                entered.append(name)
                below_link[path] = linked or os.path.islink(path)
        folders[:] = entered
        hidden_folder = any(part.startswith(".")
                            for part in pathlib.Path(folder).relative_to(root).parts)
        for name in names:
            path = pathlib.Path(folder) / name
            try:
                size = path.stat().st_size
            except FileNotFoundError:  # a link whose target is gone (a share unmounted)
                size = "missing"
            entry = f"{path.relative_to(root).as_posix()}\t{size}"
            is_data = not (hidden_folder or name.startswith(".") or name.lower() in _NOT_DATA)
            every.append(entry)
            if is_data:
                data.append(entry)
            if not linked:
                unlinked_every.append(entry)
                if is_data:
                    unlinked_data.append(entry)

    def digest(entries):
        # surrogateescape: a name that is not UTF-8 (an archive made on Windows) as its bytes
        text = "\n".join(sorted(entries))
        return hashlib.sha256(text.encode("utf-8", "surrogateescape")).hexdigest()

    listing = {"folder": os.fspath(root.resolve()), "files": len(data),
               "listing_sha256": digest(data), "every_file_sha256": digest(every)}
    if len(unlinked_every) < len(every):
        listing["unlinked_sha256"] = [digest(unlinked_data), digest(unlinked_every)]
    return listing


def prepared_source(builder) -> dict | None:
    """The :func:`source_listing` recorded when ``builder``'s dataset was prepared, or
    ``None`` (prepared by a kseg that did not record it, or not prepared)."""
    import json

    path = pathlib.Path(builder.data_dir) / SOURCE_FILE
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def stale_source(builder, manual_dir, listing: dict | None = None) -> str | None:
    """Why ``builder``'s prepared dataset is not a dataset of ``manual_dir``'s files as they
    are now, or ``None`` when it is (or when no source was recorded, or ``manual_dir`` is
    gone: there are no other files to compare, and the prepared dataset is complete without
    them). ``listing``: :func:`source_listing` of ``manual_dir`` when the caller already
    made it (listing a CT archive takes a while)."""
    recorded = prepared_source(builder)
    if recorded is None or not os.path.isdir(manual_dir):
        return None
    current = source_listing(manual_dir) if listing is None else listing
    # every_file_sha256: recorded by a kseg that listed every file, the same download
    # unlinked_sha256: recorded by a kseg that did not follow linked folders
    if recorded.get("listing_sha256") in (current["listing_sha256"],
                                          current["every_file_sha256"],
                                          *current.get("unlinked_sha256", ())):
        return None
    return (f"was prepared from {recorded.get('folder')} ({recorded.get('files')} files), but "
            f"{current['folder']} holds other files now ({current['files']} files, other "
            "names or sizes)")


def is_prepared(builder) -> bool:
    """TFDS's ``builder.is_prepared()``, without the warning it logs for a dataset folder
    that does not exist yet ("Variant folder ... has no dataset_info.json": every first run
    printed it)."""
    from etils import epath

    return (epath.Path(builder.data_dir) / "dataset_info.json").exists() and (
        builder.is_prepared()
    )


def prepare(builder, manual_dir, listing: dict | None = None) -> None:
    """Build the TFDS dataset from ``manual_dir`` unless an earlier run did (TFDS shows a
    progress bar per split while it writes), and record which files it was built from
    (``listing``: :func:`source_listing` of ``manual_dir`` when the caller already made it).

    Raises:
        LayoutError: the dataset was prepared from other files than ``manual_dir`` holds
            now: training or scoring on it would silently use the old ones.
    """
    import tensorflow_datasets as tfds

    from kseg.errors import LayoutError
    from kseg.recipes.run_config import write_json

    if is_prepared(builder):
        problem = stale_source(builder, manual_dir, listing)
        if problem is not None and not _READ_AS_PREPARED.get():
            raise LayoutError(
                builder.data_dir, f"{problem}; give another --output-dir or --tfds-dir to "
                "prepare them, or delete this folder to prepare them here again",
            )  # fmt: skip
        _announce_reuse(builder.data_dir, manual_dir, problem)
        return
    _refuse_to_prepare_on_a_tuner_worker(builder)
    print(f"Preparing TFDS dataset {builder.info.full_name} from {manual_dir} (once; later "
          "runs reuse it)", flush=True)
    source = source_listing(manual_dir) if listing is None else listing
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=str(manual_dir))
    )
    write_json(pathlib.Path(builder.data_dir) / SOURCE_FILE, source)


# False while a check prepares the dataset that the step after it prepares again and
# names (kseg evaluate --split compares the dataset's fingerprint, then scores it): the
# reused dataset is named once per command, and again by every later command of the
# process (a notebook's second run).
_NAME_REUSE = contextvars.ContextVar("kseg_name_reused_dataset", default=True)


@contextlib.contextmanager
def reuse_named_later():
    """Within it, :func:`prepare` does not say which prepared dataset it reuses: the step
    after it prepares the same dataset again and says so."""
    token = _NAME_REUSE.set(False)
    try:
        yield
    finally:
        _NAME_REUSE.reset(token)


# True while kseg evaluate scores a split of a trained run: the run was split, trained and
# tested on its prepared dataset, which is read as it was prepared when the download holds
# other files now (prepared again, its folds would deal the patients anew).
_READ_AS_PREPARED = contextvars.ContextVar("kseg_read_as_prepared", default=False)


@contextlib.contextmanager
def reading_as_prepared():
    """Within it, :func:`prepare` reads a prepared dataset whose download holds other
    files now as it was prepared, saying so, instead of refusing it: the evaluation of a
    trained run's own split (``kseg evaluate RUN --split``)."""
    token = _READ_AS_PREPARED.set(True)
    try:
        yield
    finally:
        _READ_AS_PREPARED.reset(token)


def _announce_reuse(data_dir, manual_dir, problem: str | None = None) -> None:
    """"Using the dataset prepared in ...", saying so when the download it was prepared
    from is gone (moved or deleted after training) or, within :func:`reading_as_prepared`,
    holds other files now (``problem``); nothing within :func:`reuse_named_later`."""
    if not _NAME_REUSE.get():
        return
    if problem is not None:
        note = (f" (it {problem}: it is read as it was prepared, the run's folds as it was "
                "split, trained and tested on them; score the files as they are now with "
                f"kseg evaluate RUN --input {manual_dir})")
    elif not os.path.isdir(manual_dir):
        note = (f" ({manual_dir}, which it was prepared from, is gone: it is read as it was "
                "prepared)")
    else:
        note = ""
    print(f"Using the dataset prepared in {data_dir}{note}", flush=True)


def _refuse_to_prepare_on_a_tuner_worker(builder) -> None:
    """A worker of a distributed Keras Tuner search reads the dataset its chief prepared:
    two processes building one TFDS folder at once would write over each other."""
    from kseg.errors import LayoutError
    from kseg.tuning import distributed_role

    if distributed_role() == "worker":
        raise LayoutError(
            builder.data_dir, "is not a prepared TFDS dataset yet; start the workers of a "
            "distributed search (KERASTUNER_TUNER_ID other than chief) after the chief has "
            "prepared it (it prints 'Dataset ... downloaded and prepared')",
        )  # fmt: skip


def fit_verbosity(chief: bool = True) -> int:
    """Keras ``verbose``: a live progress bar within each epoch on a terminal, one line per
    epoch in a log file (a bar's redraws would fill it); silent on a worker that is not the
    chief (every worker trains the same steps: the chief's lines say it for all)."""
    if not chief:
        return 0
    return 1 if sys.stdout.isatty() else 2


# kseg.training.distribute.STRATEGIES, spelled out: --help answers before TensorFlow loads.
DISTRIBUTION_STRATEGIES = ("default", "mirrored", "multi-worker")


def add_strategy_argument(parser: argparse.ArgumentParser) -> None:
    """``--strategy default|mirrored|multi-worker`` of a training run, as
    ``args.distribution`` (a tuning command line replaces it with the search's
    ``--strategy``, ``args.strategy``: :func:`add_tuning_arguments`)."""
    parser.add_argument(
        "--strategy", dest="distribution", choices=DISTRIBUTION_STRATEGIES, default="default",
        help="training on several devices (kseg.training.distribute): default (one device), "
             "mirrored (every GPU of this machine), multi-worker (every worker of the "
             "TF_CONFIG cluster; start the same command on each, worker 0 is the chief and "
             "alone writes the run folder, which all of them must see). --batch-size is per "
             "replica; the learning rate is scaled by the linear rule, --learning-rate x "
             "replicas (default %(default)s)",
    )  # fmt: skip


def check_strategy_argument(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Usage error (exit 2) for ``--strategy multi-worker`` without ``TF_CONFIG``, before
    TensorFlow loads."""
    if getattr(args, "distribution", None) == "multi-worker" and cross_validating(args):
        parser.error("--validation-fold all trains its members one after another on one "
                     "machine; use --strategy default or mirrored (or one --validation-fold "
                     "K per multi-worker run)")
    if getattr(args, "distribution", None) == "multi-worker" and not os.environ.get("TF_CONFIG"):
        parser.error(
            "--strategy multi-worker reads the cluster from the TF_CONFIG environment "
            'variable, which is not set; e.g. TF_CONFIG=\'{"cluster": {"worker": '
            '["host0:12345", "host1:12345"]}, "task": {"type": "worker", "index": 0}}\''
        )


class TrainingFinished(LayoutError):
    """A recipe's ``train`` on a run folder whose training finished: it is not trained
    again (nnU-Net's ``--c`` on a finished fold), so ``best.keras`` stays the model that
    ``evaluation/`` and ``report.html`` describe. ``kseg train`` and the examples say so
    and go on with that model (:func:`kseg.recipes.cross_validation.train_for_main`).

    Attributes:
        best: ``RUN/best.keras``.
        chief: whether this process is the one that writes the run folder.
    """

    def __init__(self, run_dir, finished: str, *, chief: bool = True, unused=()):
        run_dir = pathlib.Path(run_dir)
        self.best, self.chief = run_dir / "best.keras", chief
        unused = (f" (the options given now unlike its own are not used: "
                  f"{'; '.join(unused)})" if unused else "")
        super().__init__(
            run_dir, f"its training finished ({finished}); it is not trained again{unused}, "
            f"and {self.best} stays the model its evaluation/ and report.html describe. To "
            f"train this folder again from epoch 0, remove {self.best} (then evaluate and "
            "report again); or give another --output-dir",
        )  # fmt: skip


# Options a finished run is not compared on: its folders (compared where they matter, as
# paths), tracking, the devices it trained on, and which options the plan left alone.
_NOT_COMPARED = ("output_dir", "manual_dir", "tfds_dir", "data_dir", "mlflow", "mlflow_uri",
                 "distribution", "plan_given")


def _recipe_of(prepare) -> str | None:
    """The recipe whose ``prepare`` (or ``prepare_planned``) this is, or ``None``."""
    module = getattr(prepare, "__module__", None) or ""
    return module.rsplit(".", 1)[-1] if module.startswith("kseg.recipes.") else None


def _finished_run_error(args, prepare, finished: str, chief: bool) -> LayoutError:
    """What :func:`start_training` raises on a run folder whose training finished: a
    :class:`TrainingFinished`, or a :class:`LayoutError` naming what changed when the
    command asks for another recipe, other folds or other data (going on with that
    ``best.keras`` would score it on patients it was fitted or chosen on)."""
    from kseg.recipes import run_config

    run_dir = pathlib.Path(args.output_dir)
    config = run_config.read_config(run_dir)
    recorded = vars(run_config.arguments_namespace(config, run_dir))
    given = vars(args)

    def shown(name, value):
        if value is None:
            return "none"
        if name == "data_dir":
            return os.path.abspath(value)
        return list(value) if isinstance(value, tuple) else value

    recipe = _recipe_of(prepare)
    changes = []
    if recipe is not None and config["recipe"] != recipe:
        changes.append(f"the recipe {config['recipe']} (now {recipe})")
    for name in (*run_config.SPLIT_ARGUMENTS, "data_dir"):
        if name in recorded and name in given:
            before, now = shown(name, recorded[name]), shown(name, given[name])
            if name == "data_dir" and "none" not in (before, now):  # also through a link
                differs = os.path.realpath(before) != os.path.realpath(now)
            else:
                differs = before != now
            if differs:
                changes.append(f"--{name.replace('_', '-')} {before} (now {now})")
    if changes:
        best = run_dir / "best.keras"
        return LayoutError(
            run_dir, f"holds a finished run trained with {'; '.join(changes)}: its "
            f"{best} was fitted and chosen on other patients or data. Give another "
            f"--output-dir, or remove {best} to train this folder again from epoch 0",
        )  # fmt: skip
    # a planned option the command leaves to the plan holds the recipe's hand-picked value
    # until the plan is read: not an option given otherwise
    plan = config.get("plan") if isinstance(config.get("plan"), dict) else {}
    left_to_plan = set(plan.get("options") or ()) - set(getattr(args, "plan_given", ()) or ())
    unused = [f"--{name.replace('_', '-')} {shown(name, recorded[name])} (now "
              f"{shown(name, given[name])})"
              for name in sorted(set(recorded) & set(given) - left_to_plan)
              if name not in _NOT_COMPARED
              and None not in (recorded[name], given[name])
              and shown(name, recorded[name]) != shown(name, given[name])]  # fmt: skip
    return TrainingFinished(run_dir, finished, chief=chief, unused=unused)


# Options that say how a run trains: its loss, optimiser, batches, augmentation and the
# intensities its images are mapped with. A resume backup goes on with the weights and
# the optimiser state the first command's options trained; resumed with others, the model
# would be trained half one way and half another while config.json recorded the second.
# The number of epochs and the time budget are not among them: more --epochs resume.
TRAINING_ARGUMENTS = (
    "loss", "learning_rate", "schedule", "batch_size", "augment", "window", "max_train",
    "top_k", "patch_size", "positive_fraction", "accumulate_steps", "mixed_precision",
)  # fmt: skip


def refuse_other_training(args, *, left_to_plan=()) -> None:
    """A kseg error when ``args.output_dir`` holds the resume backup of a run whose
    ``config.json`` records other folds, another network or other training options
    (:data:`kseg.recipes.run_config.SPLIT_ARGUMENTS`,
    :data:`~kseg.recipes.run_config.NETWORK_ARGUMENTS`, :data:`TRAINING_ARGUMENTS`) than
    ``args``, naming each with its recorded and given value, as nnU-Net keeps one
    configuration per output folder. Options in ``left_to_plan`` are not compared (the plan
    has not set them yet); nothing without a backup (a new training) or without a readable
    ``config.json``.

    Raises:
        LayoutError: naming the run folder, the changes and the run ``config.json``
            records; rerun with the first command's options, give another
            ``--output-dir``, or remove ``RUN/backup`` to train the folder from epoch 0.
    """
    from kseg.errors import UnreadableFileError
    from kseg.recipes import run_config

    run_dir = getattr(args, "output_dir", None)
    if run_dir is None or not run_config.holds_backup(run_dir):
        return
    try:
        earlier = run_config.read_config(run_dir)
    except (LayoutError, UnreadableFileError):
        return
    before = earlier["arguments"] if isinstance(earlier["arguments"], dict) else {}
    now = run_config.json_arguments(args)

    def shown(value):
        return "none" if value is None else value

    names = (*run_config.SPLIT_ARGUMENTS, *run_config.NETWORK_ARGUMENTS, *TRAINING_ARGUMENTS)
    changes = [f"--{name.replace('_', '-')} {shown(before[name])} (now {shown(now[name])})"
               for name in names
               if name in before and name in now and name not in left_to_plan
               and before[name] != now[name]]  # fmt: skip
    if changes:
        run_config._refuse(run_dir, earlier, changes)


def refuse_a_foreign_config(run_dir) -> None:
    """A kseg error when ``run_dir`` holds a ``config.json`` that is not a kseg run's (a
    project's own settings, a file of another tool): training writes the run's
    ``config.json`` there and would replace it.

    Raises:
        LayoutError: naming the folder and why the file is not a run configuration.
    """
    from kseg.errors import UnreadableFileError
    from kseg.recipes import run_config

    if not (pathlib.Path(run_dir) / run_config.CONFIG_FILE).is_file():
        return
    try:
        run_config.read_config(run_dir)
    except UnreadableFileError as error:
        raise LayoutError(
            run_dir, f"holds a config.json that is not a kseg run's ({error}); training "
            "writes the run's config.json there, over it: give another --output-dir, or "
            "move that file away",
        ) from error  # fmt: skip


def _left_to_plan(args, prepare) -> set:
    """The planned options of ``prepare``'s recipe that ``args`` leave to the plan: until
    the plan is read they hold the hand-picked values. A recipe names its planned options
    in ``HAND_PICKED_ALL`` (the X-ray recipe, whose size, batch and epochs differ between
    the phantom and real data), else ``HAND_PICKED``."""
    if getattr(args, "plan", "none") == "none":
        return set()
    module = sys.modules.get(getattr(prepare, "__module__", None) or "")
    planned = getattr(module, "HAND_PICKED_ALL", None) or getattr(module, "HAND_PICKED", {})
    return set(planned) - set(getattr(args, "plan_given", ()) or ())


@dataclasses.dataclass(frozen=True)
class TrainingStart:
    """What :func:`start_training` made: the ``tf.distribute`` strategy (build and compile
    the model in ``strategy.scope()``), whether this process is the chief (the only one
    that writes the run folder), the prepared TFDS builder, and the options the model and
    its batches are built from: ``batch_size`` the global batch (``--batch-size`` per
    replica x replicas) and ``learning_rate`` scaled by the same factor (Goyal et al.
    2017's linear rule, :func:`kseg.training.distribute.scaled_learning_rate`); with one
    replica they equal the command line's."""

    strategy: object
    chief: bool
    builder: object
    training_args: argparse.Namespace

    def shard(self, dataset):
        """``dataset`` (batched with the global batch) split among the workers:
        :func:`kseg.training.distribute.shard` with ``AutoShardPolicy.DATA``."""
        from kseg.training import distribute

        return distribute.shard(dataset, self.strategy)


def start_training(args, prepare) -> TrainingStart:
    """Make ``--strategy``'s ``tf.distribute`` strategy, seed Keras, and prepare the data.

    The strategy comes first: a multi-worker strategy must be made before any other
    TensorFlow operation. Under it the chief writes the phantom and builds the TFDS dataset
    (``prepare(args)``) while the other workers wait (:func:`kseg.training.distribute.barrier`)
    and then read what it built; on one machine ``prepare`` simply runs. The chief alone
    creates the run folder.

    Raises:
        TrainingFinished: the run folder holds a run whose training finished (an
            interrupted one, with its resume backup, resumes), before anything is prepared.
        LayoutError: the same, trained as another recipe, on other folds or other data;
            or the folder holds the resume backup of another recipe's run, or of a run on
            another ``--data-dir``, or of one with other options
            (:func:`refuse_other_training`); or it is a cross-validation whose members
            are still training, or holds a config.json that is not a kseg run's
            (:func:`refuse_a_foreign_config`).
    """
    if cross_validating(args):
        from kseg.errors import KsegError

        raise KsegError(
            "--validation-fold all trains one model per non-test fold: "
            "kseg.recipes.cross_validation.train(recipe, args) (kseg train and the examples "
            "call it); a recipe's own train trains one model on one --validation-fold K"
        )
    from kseg.recipes import cross_validation

    in_progress = cross_validation.unbuilt(args.output_dir)
    if in_progress is not None:  # its members' ensemble would find a single run here
        raise LayoutError(args.output_dir, f"{in_progress}; give a single run another "
                                           "--output-dir")
    refuse_a_foreign_config(args.output_dir)
    import keras

    from kseg.training import distribute

    # runs recorded before --strategy existed trained on one device
    distribution = distribute.strategy(getattr(args, "distribution", "default"))
    keras.utils.set_random_seed(args.seed)
    chief = distribute.is_chief(distribution)
    from kseg.recipes.run_config import finished_training

    finished = finished_training(args.output_dir)
    if finished is not None:
        raise _finished_run_error(args, prepare, finished, chief)
    recipe = _recipe_of(prepare)
    if recipe is not None:  # before anything is prepared or written into the folder
        from kseg.recipes.run_config import refuse_another_run

        refuse_another_run(args.output_dir, recipe, {"data_dir": args.data_dir})
    # the options the plan fills in are compared once it has (kseg.recipes._planned.apply)
    refuse_other_training(args, left_to_plan=_left_to_plan(args, prepare))
    builder = None
    if chief:
        from kseg.recipes.run_config import mark_started

        pathlib.Path(args.output_dir).mkdir(parents=True, exist_ok=True)
        mark_started(args.output_dir)
        builder = prepare(args)
    distribute.barrier(distribution)
    if not chief:
        # what preparing finds (the prepared dataset, the plan) the chief has just said
        with contextlib.redirect_stdout(io.StringIO()):
            builder = prepare(args)
    global_batch = distribute.global_batch_size(args.batch_size, distribution)
    training_args = argparse.Namespace(**vars(args))
    training_args.batch_size = global_batch
    training_args.learning_rate = distribute.scaled_learning_rate(
        args.learning_rate, global_batch, args.batch_size
    )
    if global_batch != args.batch_size and chief:
        print(f"--strategy {args.distribution}: {distribution.num_replicas_in_sync} replicas, "
              f"global batch {global_batch}, learning rate {training_args.learning_rate:g}",
              flush=True)
    return TrainingStart(distribution, chief, builder, training_args)


def fit(start: TrainingStart, args, model, training, validation_data, volume_validation, *,
        reduce_lr_patience: int | None, schedule=(), **fit_options):
    """Train ``model`` for ``--epochs`` on ``training`` (Keras validation on
    ``validation_data``), both split among ``start``'s workers; returns ``(RUN/best.keras,
    fit seconds, chief)``.

    The callbacks: :func:`kseg.training.training_callbacks` (``volume_validation`` drives
    the best checkpoint and, with ``reduce_lr_patience``, the learning rate;
    BackupAndRestore makes a crashed run resumable; ``--max-minutes`` stops it on the
    clock), then ``schedule`` (learning-rate callbacks) and the tracking ones.
    ``fit_options`` go to ``model.fit`` (``steps_per_epoch``)."""
    from kseg.training import build_optimizer, training_callbacks

    run_dir = pathlib.Path(args.output_dir)
    callbacks = (
        training_callbacks(run_dir, volume_validation,
                           max_minutes=getattr(args, "max_minutes", None),
                           reduce_lr_patience=reduce_lr_patience)
        + list(schedule)
        + tracking_callbacks(run_dir, args, chief=start.chief)
    )  # fmt: skip
    fit_started = time.perf_counter()
    build_optimizer(model).fit(
        start.shard(training),
        validation_data=start.shard(validation_data),
        epochs=args.epochs,
        callbacks=callbacks,
        verbose=fit_verbosity(start.chief),
        shuffle=False,  # the pipeline shuffles; Keras warns that it ignores True
        **fit_options,
    )
    if start.chief:  # a rerun of the same command does not train it again
        from kseg.recipes.run_config import mark_finished

        mark_finished(run_dir)
    return run_dir / "best.keras", time.perf_counter() - fit_started, start.chief


def scored_labels(num_classes: int, labels: dict) -> dict | None:
    """The ``labels`` argument of the scoring functions for a model of ``num_classes``
    output channels: ``None`` scores one binary structure (one sigmoid channel) in plain
    columns (``dice``), a dict one column per structure (``dice_heart``)."""
    return None if num_classes == 1 else labels


def compiled_unet_small(args, num_classes: int, *, loss, dropout: float):
    """The 2D recipes' network: ``unet_small`` on ``--image-size`` squares of one channel
    (``--depth`` poolings, ``--base-filters``, ``dropout`` at the bottleneck) with
    ``num_classes`` output channels (1: sigmoid, else softmax), compiled with ``loss`` and
    Adam at ``--learning-rate``, Dice logged as ``dice``."""
    import keras

    import kseg.metrics
    import kseg.models

    model = kseg.models.build(
        "unet_small",
        input_shape=(args.image_size, args.image_size, 1),
        num_classes=num_classes,
        base_filters=args.base_filters,
        # runs recorded before --depth existed: unet_small's 3
        depth=getattr(args, "depth", 3),
        dropout=dropout,
    )
    model.compile(
        optimizer=keras.optimizers.Adam(args.learning_rate),
        loss=loss,
        metrics=[kseg.metrics.DiceScore(num_classes=num_classes, name="dice")],
    )
    return model


def slice_training_data(args, builder, splits, augmenter, *, window, num_classes: int = 1,
                        labels: dict | None = None):
    """The training data of a per-slice CT dataset: augmented training batches
    (``augmenter(args)``), validation slice batches, and the whole-volume validation that
    picks the checkpoint (the Dice of each validation patient, its mean over ``labels``'
    structures when given, on the original grid, with the model input exactly as
    training makes it)."""
    from kseg.data.pipeline import model_input, segmentation_dataset
    from kseg.training import VolumeValidation

    size = (args.image_size, args.image_size)
    training = segmentation_dataset(
        builder.as_dataset(split=splits["train"]), window=window, image_size=size,
        num_classes=num_classes, batch_size=args.batch_size, augment=augmenter(args),
        shuffle_buffer=1024, cache=True, seed=args.seed,
    )  # fmt: skip
    validation_slices = segmentation_dataset(
        builder.as_dataset(split=splits["validation"]),
        window=window,
        image_size=size,
        num_classes=num_classes,
        batch_size=args.batch_size,
        cache=True,
    )
    validation = VolumeValidation.from_slices(
        builder.as_dataset(split=splits["validation"]),
        preprocess=model_input(window=window, image_size=size),
        labels=labels,
    )
    return training, validation_slices, validation


class RunClock:
    """Wall-clock and CPU time (user + system, of this process and the child processes it
    waited for) since it was made; what ``time python examples/...`` would report."""

    def __init__(self):
        self._wall = time.perf_counter()
        self._times = os.times()

    def summary(self) -> str:
        now = os.times()
        user = now.user + now.children_user - self._times.user - self._times.children_user
        system = (now.system + now.children_system
                  - self._times.system - self._times.children_system)
        wall = time.perf_counter() - self._wall
        return (f"{wall:.0f} s wall clock, {user + system:.0f} s CPU "
                f"({user:.0f} s user + {system:.0f} s system)")


def parse_args(recipe, argv=None) -> argparse.Namespace:
    """A recipe's command line (its ``add_arguments`` and ``finish_arguments``), checked
    before TensorFlow loads; usage errors exit with code 2."""
    parser = argparse.ArgumentParser(description=recipe.DESCRIPTION)
    recipe.add_arguments(parser)
    args = parser.parse_args(argv)
    recipe.finish_arguments(parser, args)
    return args


TUNING_STRATEGIES = ("random", "bayesian", "hyperband", "grid", "staged")


def add_tuning_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of a recipe's ``tune``: the search strategy, its budget and, for the
    staged search, its stages. Epochs per trial are the recipe's ``--epochs``.

    Here ``--strategy`` names the Keras Tuner search and replaces the training run's
    ``--strategy`` (:func:`add_strategy_argument`) that the recipe's options hold: a search
    is spread over machines by Keras Tuner's own ``KERASTUNER_*`` variables, each worker
    training its trials on one device."""
    training_strategy = parser._option_string_actions.get("--strategy")
    if training_strategy is not None:
        parser._handle_conflict_resolve(None, [("--strategy", training_strategy)])
    parser.add_argument("--strategy", choices=TUNING_STRATEGIES, default="random",
                        help="Keras Tuner search (kseg.tuning.tuner); default %(default)s")
    parser.add_argument("--max-trials", type=int, default=None,
                        help="trials of a random or bayesian search (default 4), at most "
                             "this many of a grid (default: every combination); hyperband "
                             "derives its trials from --epochs")
    parser.add_argument("--stages", nargs="+", metavar="NAME=V1,V2", default=None,
                        help="staged search: one hyperparameter per stage with the values "
                             "to try, e.g. loss=dice,dice_ce base_filters=8,16 (default: "
                             "the recipe's stages)")


def parse_stages(parser: argparse.ArgumentParser, stages) -> list[tuple[str, list]] | None:
    """``["loss=dice,dice_ce", "base_filters=8,16"]`` as ``[("loss", ["dice", "dice_ce"]),
    ("base_filters", [8, 16])]``; numbers become ``int`` or ``float``. Usage error (exit 2)
    for an item without ``=`` or without values."""
    if stages is None:
        return None
    parsed = []
    for item in stages:
        name, separator, values = item.partition("=")
        listed = [value for value in values.split(",") if value]
        if not separator or not name or not listed:
            parser.error(f"--stages takes NAME=V1,V2,... items, got {item!r}")
        parsed.append((name, [_number_or_text(value) for value in listed]))
    return parsed


def _number_or_text(value: str):
    for kind in (int, float):
        try:
            return kind(value)
        except ValueError:
            continue
    return value


def check_tuning_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Usage errors (exit 2) for a tuning budget no search can use, and the stages parsed."""
    if hasattr(args, "strategy") and cross_validating(args):  # a tuning command line
        parser.error("--validation-fold all applies to training runs; a search ranks its "
                     "trials on one validation fold (--validation-fold K)")
    max_trials = getattr(args, "max_trials", None)
    if max_trials is not None and max_trials < 1:
        parser.error(f"--max-trials must be at least 1, got {max_trials}")
    strategy = getattr(args, "strategy", "random")
    if strategy == "hyperband" and max_trials is not None:
        parser.error("--max-trials does not apply to --strategy hyperband, which derives its "
                     "trials from --epochs")
    if getattr(args, "stages", None) is not None:
        if strategy != "staged":
            parser.error(f"--stages applies to --strategy staged only, not {strategy}")
        args.stages = parse_stages(parser, args.stages)


class InputEvaluationName(str):
    """``input-<folder name>``, the name of an ``--input`` evaluation, holding the input
    folder it names (``input_dir``): two inputs of one folder name (``A/test`` and
    ``B/test``) are scored into folders of their own
    (:func:`kseg.recipes._evaluation.evaluation_folder`)."""

    input_dir: str

    def __new__(cls, name: str, input_dir):
        self = super().__new__(cls, name)
        self.input_dir = os.fspath(input_dir)
        return self


def evaluation_name(split: str, input_dir) -> str:
    """The folder name under ``RUN/evaluation``: the split, or ``input-<folder name>`` (an
    :class:`InputEvaluationName`; another input of the same folder name gets
    ``input-<folder name>-2`` ...)."""
    if input_dir is None:
        return split
    # absolute first: "." or ".." (kseg evaluate RUN --input . inside the folder) is named
    # after the folder it stands for
    return InputEvaluationName(
        f"input-{os.path.basename(os.path.abspath(os.fspath(input_dir)))}", input_dir
    )
