"""``RUN/config.json``: what a run was trained with, so it can be evaluated, predicted with,
reported and reproduced later.

A recipe's ``train`` writes it (atomically) before the first epoch: every option of the run,
the seed, the versions of kseg and its stack, the git commit of the kseg checkout, the
prepared dataset with a fingerprint of its files, the label values, and the ``inference``
section that ``kseg.predict`` follows to segment new images exactly as evaluation did. A
choice made after training (the post-processing that raised the validation Dice) is
recorded into the same file with :func:`update_inference`.

Standard library only at import time (the ``kseg`` command reads configs before TensorFlow
loads); :func:`write_config` imports the stack to read its versions.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import os
import pathlib
import platform
import subprocess

from kseg._files import atomic_output
from kseg.errors import LayoutError, UnreadableFileError

CONFIG_FILE = "config.json"
CONFIG_VERSION = 1
# Keys every config.json of this version holds (readers rely on them).
REQUIRED_KEYS = (
    "kseg_config_version", "recipe", "arguments", "seed", "created", "versions",
    "git_commit", "dataset", "labels", "inference",
)  # fmt: skip
# kseg.training.training_callbacks' resume backup: while it exists, train continues the run.
BACKUP_FOLDER = "backup"
# Options that name files or folders: strings in config.json, paths again when read back.
PATH_ARGUMENTS = ("data_dir", "output_dir", "tfds_dir", "manual_dir")
# Options that choose which patients train, validate and test. A resumed run that changed
# one would go on from weights (and keep a best model) chosen on other patients.
SPLIT_ARGUMENTS = ("folds", "test_fold", "validation_fold")
# Options that make the network and the images it sees (the 2D recipes' U-Net, the
# spleen's dropout). A backup resumed with another would go on with weights of another
# network (Keras restores them whenever their shapes happen to fit, as a U-Net's do at
# any --image-size), and config.json would describe a model that was never trained.
NETWORK_ARGUMENTS = ("image_size", "depth", "base_filters", "dropout")
# config.json's "dataset" keys that say which prepared data a run trains on.
DATASET_IDENTITY = ("name", "config", "version", "fingerprint")
# When the run's training started and finished (its fit returned; null while it trains):
# a finished run is not trained again (:func:`finished_training`). Not in config.json,
# whose keys MLflow logs as params, which cannot change.
TRAINING_FILE = "training.json"


def json_arguments(args: argparse.Namespace) -> dict:
    """Every option of ``args`` as JSON values: paths as strings, tuples as lists.

    Raises:
        TypeError: an option holds something JSON cannot carry (a recipe bug, not input).
    """

    def safe(name, value):
        if value is None or isinstance(value, (bool, int, float, str)):
            return value
        if isinstance(value, os.PathLike):
            return os.fspath(value)
        if isinstance(value, (list, tuple)):
            return [safe(name, item) for item in value]
        raise TypeError(f"option {name!r} holds {type(value).__name__} {value!r}, not JSON")

    return {name: safe(name, value) for name, value in sorted(vars(args).items())}


def package_versions() -> dict:
    """Versions of kseg, Keras, TensorFlow, TFDS, numpy and Python of this process."""
    import keras
    import numpy
    import tensorflow
    import tensorflow_datasets

    import kseg

    return {
        "kseg": kseg.__version__,
        "keras": keras.__version__,
        "tensorflow": tensorflow.__version__,
        "tensorflow_datasets": tensorflow_datasets.__version__,
        "numpy": numpy.__version__,
        "python": platform.python_version(),
    }


def kseg_source_folder() -> pathlib.Path:
    """The folder holding the ``kseg`` package (a checkout's root, or site-packages)."""
    import kseg

    return pathlib.Path(kseg.__file__).resolve().parent.parent


def git_commit(folder: os.PathLike | str | None = None) -> str | None:
    """``git rev-parse HEAD`` of ``folder`` (default: :func:`kseg_source_folder`) when that
    folder is the root of a git checkout; ``None`` otherwise (an installed kseg, a folder
    inside some other repository, no git)."""
    folder = pathlib.Path(folder) if folder is not None else kseg_source_folder()

    def git(*arguments):
        return subprocess.run(
            ["git", "-C", str(folder), *arguments], capture_output=True, text=True,
            timeout=30, check=True,
        ).stdout.strip()  # fmt: skip

    try:
        top_level = git("rev-parse", "--show-toplevel")
        if pathlib.Path(top_level).resolve() != folder.resolve():
            return None
        return git("rev-parse", "HEAD")
    except (OSError, subprocess.SubprocessError):
        return None


def dataset_fingerprint(builder) -> str:
    """SHA-256 (hex) of a prepared TFDS dataset: its split names and example counts, and
    the relative name and size of every file under ``builder.data_dir``. Preparing other
    data (other patients, folds, files) gives another fingerprint."""
    digest = hashlib.sha256()
    for name, split in sorted(builder.info.splits.items()):
        digest.update(f"split {name} {split.num_examples}\n".encode())
    root = os.fspath(builder.data_dir)
    for folder, subfolders, files in os.walk(root):
        subfolders.sort()
        for file_name in sorted(files):
            path = os.path.join(folder, file_name)
            relative = os.path.relpath(path, root).replace(os.sep, "/")
            digest.update(f"file {relative} {os.path.getsize(path)}\n".encode())
    return digest.hexdigest()


def dataset_section(builder) -> dict:
    return {
        "name": builder.name,
        "config": builder.builder_config.name,
        "version": str(builder.version),
        "data_dir": os.fspath(builder.data_dir),
        "fingerprint": dataset_fingerprint(builder),
    }


def write_config(
    run_dir, args, recipe: str, builder, labels: dict, inference: dict
) -> pathlib.Path:
    """Write ``run_dir/config.json`` (atomically; sorted keys, indent 2) and return its path.

    A run resumed from its backup (``run_dir/backup`` exists and ``config.json`` is the
    same recipe's) keeps its ``created`` time and lists each resumption's time, oldest
    first, under ``resumed``; a new training in the folder starts a new record.

    Args:
        run_dir: the run folder (created if missing).
        args: the recipe's parsed options (``argparse.Namespace``; ``seed`` among them).
        recipe: the recipe's name (:data:`kseg.recipes.RECIPES`).
        builder: the prepared TFDS builder the run trains on.
        labels: ``{structure name: label value}`` of masks and predictions.
        inference: how to segment a new image as evaluation does (see the README).

    The paths among the options (:data:`PATH_ARGUMENTS`) are recorded absolute, so the
    run can be evaluated from any working folder.

    Raises:
        LayoutError: a resumed run's ``config.json`` records another recipe, other
            :data:`SPLIT_ARGUMENTS` or :data:`NETWORK_ARGUMENTS`, or another prepared
            dataset than ``args`` and ``builder``; nothing is written.
    """
    now = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    config = {
        "kseg_config_version": CONFIG_VERSION,
        "recipe": recipe,
        "arguments": json_arguments(args),
        "seed": args.seed,
        "created": now,
        "versions": package_versions(),
        "git_commit": git_commit(),
        "dataset": dataset_section(builder),
        "labels": {name: int(value) for name, value in labels.items()},
        "inference": dict(inference),
    }
    refuse_another_run(run_dir, recipe, config["arguments"])
    earlier = _resumed_config(run_dir, recipe)
    if earlier is not None:
        if holds_backup(run_dir):  # empty: nothing resumed
            _refuse_other_patients(run_dir, earlier, config)
        config["created"] = earlier["created"]
        config["resumed"] = [*earlier.get("resumed", []), now]
    return save_config(run_dir, config)


def holds_backup(run_dir) -> bool:
    """Whether ``run_dir`` holds a resume backup a training would go on from (a file in
    ``run_dir/backup``; an empty folder, as a kill while it was made leaves, resumes
    nothing)."""
    backup = pathlib.Path(run_dir) / BACKUP_FOLDER
    return backup.is_dir() and any(path.is_file() for path in backup.rglob("*"))


def _recorded_run(config: dict) -> str:
    """The run a ``config.json`` records, in a few words: its recipe, dataset and data."""
    dataset = config.get("dataset") if isinstance(config.get("dataset"), dict) else {}
    arguments = config.get("arguments") if isinstance(config.get("arguments"), dict) else {}
    described = "/".join(str(dataset.get(key, "?")) for key in ("name", "config"))
    data = arguments.get("data_dir")
    return (f"recipe {config.get('recipe')}, dataset {described}, "
            f"{'--data-dir ' + str(data) if data else 'the synthetic phantom'}")


def refuse_another_run(run_dir, recipe: str, arguments: dict) -> None:
    """A kseg error when ``run_dir`` holds the resume backup of another run than the one
    ``recipe`` with ``arguments`` (its options as :func:`json_arguments` gives them) would
    train: another recipe, or another ``--data-dir``. Keras restores a backup into any
    network whose weight shapes fit, so the training would go on silently from the other
    run's weights, and write its own config.json over that run's. Nothing when the folder
    holds no backup or no readable config.json (a new training)."""
    if not holds_backup(run_dir):
        return
    try:
        earlier = read_config(run_dir)
    except (LayoutError, UnreadableFileError):
        return
    before = earlier["arguments"] if isinstance(earlier["arguments"], dict) else {}
    changes = []
    if earlier["recipe"] != recipe:
        changes.append(f"the recipe {earlier['recipe']} (now {recipe})")

    def folder(value):
        return None if value is None else os.path.abspath(value)

    def same(first, second):  # one folder, also when named through a link
        if first is None or second is None:
            return first is second
        return os.path.realpath(first) == os.path.realpath(second)

    if "data_dir" in before and "data_dir" in arguments:
        if not same(before["data_dir"], arguments["data_dir"]):
            changes.append(f"--data-dir {folder(before['data_dir']) or 'none'} (now "
                           f"{folder(arguments['data_dir']) or 'none'})")
    if changes:
        _refuse(run_dir, earlier, changes)


def _refuse(run_dir, earlier: dict, changes: list) -> None:
    backup = pathlib.Path(run_dir) / BACKUP_FOLDER
    raise LayoutError(
        run_dir, f"holds the resume backup of a run trained with {'; '.join(changes)} "
        f"({CONFIG_FILE}: {_recorded_run(earlier)}): resuming would go on from that run's "
        "weights, fitted and chosen on other patients, data or settings. "
        f"Rerun with the first command's options, give another --output-dir, or remove "
        f"{backup} to train this folder from epoch 0",
    )  # fmt: skip


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def mark_started(run_dir) -> None:
    """Record in ``run_dir/``:data:`TRAINING_FILE` that a training of the run started (now)
    and has not finished."""
    write_json(pathlib.Path(run_dir) / TRAINING_FILE, {"started": _now(), "finished": None})


def mark_finished(run_dir) -> None:
    """Record in ``run_dir/``:data:`TRAINING_FILE` that the run's training finished (now)."""
    path = pathlib.Path(run_dir) / TRAINING_FILE
    try:
        record = read_json(path)
    except UnreadableFileError:
        record = None
    write_json(path, {**(record if isinstance(record, dict) else {}), "finished": _now()})


def finished_training(run_dir) -> str | None:
    """When the training of the run folder ``run_dir`` finished, or ``None`` while training
    it is new or resumes: no ``best.keras``, a resume backup (an interrupted run), or a
    :data:`TRAINING_FILE` that does not say it finished. A run of a kseg that did not write
    that file finished when it holds ``config.json``, ``best.keras`` and ``history.csv`` and
    no resume backup (Keras deletes the backup when ``fit`` returns), or is a built
    cross-validation (``--validation-fold all``: ``best.keras`` is its ensemble)."""
    run_dir = pathlib.Path(run_dir)
    backup = run_dir / BACKUP_FOLDER
    if not (run_dir / "best.keras").is_file():
        return None
    if backup.is_dir() and any(path.is_file() for path in backup.rglob("*")):
        return None
    try:
        config = read_config(run_dir)
    except (LayoutError, UnreadableFileError):
        return None
    if (run_dir / TRAINING_FILE).is_file():
        try:
            finished = read_json(run_dir / TRAINING_FILE).get("finished")
        except (UnreadableFileError, AttributeError):
            return None
        return finished if isinstance(finished, str) and finished else None
    arguments = config["arguments"] if isinstance(config["arguments"], dict) else {}
    if arguments.get("validation_fold") == "all":
        return "a cross-validation: its best.keras is the ensemble of its members"
    if (run_dir / "history.csv").is_file():
        return "in a run of an earlier kseg (best.keras and history.csv, no resume backup)"
    return None


def _absolute_paths(arguments: dict) -> dict:
    """``arguments`` with the local paths of :data:`PATH_ARGUMENTS` made absolute: a
    relative ``--data-dir`` is relative to the folder train ran in, and ``kseg evaluate``
    run from another folder would look for the data there (URLs such as ``gs://`` kept)."""
    for name in PATH_ARGUMENTS:
        value = arguments.get(name)
        if isinstance(value, str) and value and "://" not in value:
            arguments[name] = os.path.abspath(value)
    return arguments


def _refuse_other_patients(run_dir, earlier: dict, config: dict) -> None:
    """A kseg error when the run being resumed (``earlier``) trained on another split or
    other data than ``config`` asks for: its backup's weights and its best model were
    fitted and chosen on patients this command would validate or test on."""

    def shown(value):
        if value is None:
            return "none"
        return list(value) if isinstance(value, tuple) else value

    before, now = earlier.get("arguments", {}), config["arguments"]
    changes = [f"--{name.replace('_', '-')} {shown(before[name])} (now {shown(now[name])})"
               for name in (*SPLIT_ARGUMENTS, *NETWORK_ARGUMENTS)
               if name in before and name in now
               and shown(before[name]) != shown(now[name])]  # fmt: skip
    recorded = earlier.get("dataset") if isinstance(earlier.get("dataset"), dict) else {}
    if any(key in recorded and recorded[key] != config["dataset"][key]
           for key in DATASET_IDENTITY):  # fmt: skip
        described = "/".join(str(recorded.get(key, "?")) for key in ("name", "config"))
        changes.append(f"the prepared dataset {described} with fingerprint "
                       f"{str(recorded.get('fingerprint'))[:12]} (now "
                       f"{config['dataset']['name']}/{config['dataset']['config']} with "
                       f"{str(config['dataset']['fingerprint'])[:12]})")
    if changes:
        _refuse(run_dir, earlier, changes)


def _resumed_config(run_dir, recipe: str) -> dict | None:
    """The config of the run this training resumes: ``run_dir`` holds a resume backup and
    a readable ``config.json`` of ``recipe``. ``None`` for a new training (no backup: a
    finished run's folder trained again starts over), or a config no resumption can read
    (it is replaced)."""
    if not (pathlib.Path(run_dir) / BACKUP_FOLDER).is_dir():
        return None
    try:
        config = read_config(run_dir)
    except (LayoutError, UnreadableFileError):
        return None
    resumed = config.get("resumed", [])
    if config["recipe"] != recipe or not isinstance(resumed, list):
        return None
    return config


def read_json(path):
    """The JSON value of the file ``path``.

    Raises:
        UnreadableFileError: the file cannot be read, is not UTF-8 or is not JSON.
    """
    try:
        return json.loads(pathlib.Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as error:
        raise UnreadableFileError(path, f"is not a readable JSON file: {error}") from error


def write_json(path, value) -> pathlib.Path:
    """``value`` as JSON (sorted keys, indent 2), atomically: the format of config.json
    and of the other records a run folder keeps."""
    path = pathlib.Path(path)
    with atomic_output(path) as temporary:
        with open(temporary, "w", encoding="utf-8") as handle:
            handle.write(json.dumps(value, sort_keys=True, indent=2) + "\n")
    return path


def save_config(run_dir, config: dict) -> pathlib.Path:
    """Write a changed ``config`` back to ``run_dir/config.json``, atomically; the folders
    among its ``arguments`` (:data:`PATH_ARGUMENTS`) are made absolute, as
    :func:`write_config` records them (a cross-validation's own config.json is built from
    its first member's, with its ``output_dir`` as given)."""
    if isinstance(config.get("arguments"), dict):
        config = {**config, "arguments": _absolute_paths(dict(config["arguments"]))}
    return write_json(pathlib.Path(run_dir) / CONFIG_FILE, config)


def read_config(run_dir) -> dict:
    """The ``config.json`` of a run folder.

    Raises:
        LayoutError: ``run_dir`` is not a folder, or holds no ``config.json`` (not a run
            folder, or a run from before configs were written).
        UnreadableFileError: ``config.json`` is not JSON, not an object, of another
            version, or lacks one of :data:`REQUIRED_KEYS`.
    """
    run_dir = pathlib.Path(run_dir)
    if not run_dir.is_dir():
        raise LayoutError(run_dir, "is not a folder; expected a run folder holding config.json")
    path = run_dir / CONFIG_FILE
    if not path.is_file():
        raise LayoutError(
            run_dir, f"holds no {CONFIG_FILE}; expected the folder of a kseg training run "
            "(train writes config.json before the first epoch)"
        )  # fmt: skip
    config = read_json(path)
    if not isinstance(config, dict):
        raise UnreadableFileError(path, f"holds a JSON {type(config).__name__}, expected an object")
    version = config.get("kseg_config_version")
    if version != CONFIG_VERSION:
        raise UnreadableFileError(
            path, f"has kseg_config_version {version!r}; this kseg reads version {CONFIG_VERSION}"
        )
    missing = [key for key in REQUIRED_KEYS if key not in config]
    if missing:
        raise UnreadableFileError(path, f"lacks the keys {missing}")
    labels = config["labels"]
    if not isinstance(labels, dict) or any(
        isinstance(value, bool) or not isinstance(value, int) or value < 1
        for value in labels.values()
    ):
        raise UnreadableFileError(
            path, f"has labels {labels!r}; expected {{structure name: label value >= 1}}"
        )
    return config


def update_inference(run_dir, **changes) -> dict:
    """Set keys of the ``inference`` section of ``run_dir/config.json`` (atomically) and
    return the whole config; e.g. the post-processing chosen on validation after training."""
    config = read_config(run_dir)
    config["inference"].update(changes)
    save_config(run_dir, config)
    return config


def arguments_namespace(config: dict, run_dir=None) -> argparse.Namespace:
    """The run's options back as the ``argparse.Namespace`` its recipe takes: the names in
    :data:`PATH_ARGUMENTS` as ``pathlib.Path``. With ``run_dir``, ``output_dir`` is that
    folder, and a path recorded inside the recorded ``output_dir`` (the phantom a run
    without ``--data-dir`` wrote into itself, a ``--tfds-dir`` inside the run) is the same
    path inside ``run_dir``: a run folder that was moved, copied or named from another
    working folder is still itself, and reads (or rewrites) nothing at its old place.

    A member of a cross-validation (``CV/folds/fold_<K>``, still in a ``folds`` folder)
    reads what its cross-validation holds (``CV/tfds``, ``CV/phantom*``) from the
    cross-validation folder it lies in now: the whole cross-validation may have moved."""
    arguments = dict(config["arguments"])
    recorded_output = arguments.get("output_dir")
    for name in PATH_ARGUMENTS:
        if arguments.get(name) is not None:
            arguments[name] = pathlib.Path(arguments[name])
    if run_dir is not None:
        moved = [(recorded_output, pathlib.Path(run_dir))]
        member_of = _cross_validation_folders(recorded_output, run_dir)
        if member_of is not None:
            moved.append(member_of)
        for name in PATH_ARGUMENTS:
            for recorded, now in moved:
                inside = _relative_inside(arguments.get(name), recorded)
                if inside is not None:
                    arguments[name] = now / inside
                    break
        arguments["output_dir"] = pathlib.Path(run_dir)
    return argparse.Namespace(**arguments)


# kseg.recipes.cross_validation.FOLDS_FOLDER: a member's run folder is CV/folds/fold_<K>.
_MEMBERS_FOLDER = "folds"


def _cross_validation_folders(recorded_output, run_dir) -> tuple[str, pathlib.Path] | None:
    """``(recorded cross-validation folder, the one it is in now)`` when the run recorded
    at ``recorded_output`` was a cross-validation member and ``run_dir`` still lies in a
    cross-validation's ``folds`` folder; ``None`` otherwise."""
    if not isinstance(recorded_output, str) or not recorded_output:
        return None
    recorded = pathlib.PurePath(recorded_output)
    now = pathlib.Path(os.path.abspath(run_dir))
    if recorded.parent.name != _MEMBERS_FOLDER or now.parent.name != _MEMBERS_FOLDER:
        return None
    return os.fspath(recorded.parent.parent), now.parent.parent


def _relative_inside(path, folder) -> pathlib.PurePath | None:
    """``path`` relative to ``folder`` when it lies inside it (compared as written, as
    the recipes derive such paths from ``output_dir``); ``None`` otherwise."""
    if path is None or not isinstance(folder, str) or not folder:
        return None
    try:
        return pathlib.PurePath(path).relative_to(pathlib.PurePath(folder))
    except ValueError:
        return None
