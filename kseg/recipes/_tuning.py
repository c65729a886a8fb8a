"""What the recipes' ``tune`` share: one Keras Tuner search (:func:`kseg.tuning.tuner`) over
a :class:`kseg.tuning.SegmentationHyperModel`, trials ranked by the whole-volume validation
Dice that :class:`kseg.training.VolumeValidation` writes, its state and a ``results.json``
in ``RUN/tuning/<strategy>/``. A search that was stopped continues when run again.

A distributed search (Keras Tuner's ``KERASTUNER_*`` variables,
:func:`kseg.tuning.distributed_role`) runs the same command in every process: the chief's
oracle hands out the trials, the workers train them, and the chief alone writes
``results.json``.
"""

from __future__ import annotations

import json
import pathlib

from kseg._files import atomic_output
from kseg.recipes import _common

DEFAULT_MAX_TRIALS = 4
# RUN/tuning/<strategy>/search.json: the options the search's trials were trained with.
SEARCH_RECORD = "search.json"
# Options a stopped search may be continued with otherwise: where the run and its data lie
# (the data are compared by --data-dir), how many trials, each trial's clock budget, and
# how it is tracked and distributed.
_CONTINUABLE = ("output_dir", "manual_dir", "tfds_dir", "max_trials", "max_minutes",
                "mlflow", "mlflow_uri", "distribution", "plan_given")


def search_space(args, space: dict, *, stages) -> tuple[dict, list | None]:
    """The hypermodel arguments and stages for ``args.strategy``. A grid searches listed
    values only, and a staged search keeps every hyperparameter outside its stages at its
    default (for a range, its low end), so both train at ``--learning-rate`` unless a
    stage searches it. A staged search takes ``--stages`` or the recipe's ``stages``."""
    strategy = getattr(args, "strategy", "random")
    space = dict(space)
    if strategy not in ("grid", "staged"):
        return space, None
    stages = (getattr(args, "stages", None) or stages) if strategy == "staged" else None
    if "learning_rate" not in {name for name, _ in stages or ()}:
        space["learning_rate"] = args.learning_rate
    return space, stages


def search_unet_small(args, num_classes: int, data, *, losses, learning_rate, **hypermodel_options):
    """The 2D recipes' search (:func:`run_search`) of ``unet_small`` (``--depth``
    poolings) on ``--image-size`` squares: ``--base-filters`` or twice as many, each of
    ``losses``, Adam's rate in the ``learning_rate`` range; a staged search tries the
    losses, then the widths. ``data``: ``(training batches, validation batches,
    VolumeValidation)``; ``hypermodel_options`` go to
    :class:`kseg.tuning.SegmentationHyperModel` as they are (``dropout``, ``loss_kwargs``)."""
    from kseg.tuning import SegmentationHyperModel

    training, validation_data, volume_validation = data
    base_filters = [args.base_filters, 2 * args.base_filters]
    losses = list(losses)
    space, stages = search_space(
        args,
        {"base_filters": base_filters, "losses": losses, "learning_rate": learning_rate},
        stages=[("loss", losses), ("base_filters", base_filters)],
    )
    hypermodel = SegmentationHyperModel(
        (args.image_size, args.image_size, 1), num_classes, models="unet_small",
        depth=getattr(args, "depth", 3), **hypermodel_options, **space,
    )  # fmt: skip
    return run_search(
        args,
        hypermodel,
        training=training,
        validation_data=validation_data,
        volume_validation=volume_validation,
        stages=stages,
    )


def run_search(
    args,
    hypermodel,
    *,
    training,
    validation_data,
    volume_validation,
    stages=None,
    steps_per_epoch=None,
) -> dict:
    """Run the search of ``args.strategy`` (``args.max_trials``, ``args.epochs`` per trial,
    each trial stopped on the clock after ``args.max_minutes`` when given) and write
    ``RUN/tuning/<strategy>/results.json``; returns its content (``None`` on a worker of a
    distributed search: the chief ranks the trials and writes the results)."""
    import keras

    from kseg.tuning import DEFAULT_OBJECTIVE, distributed_role, tuner

    strategy = getattr(args, "strategy", "random")
    max_trials = getattr(args, "max_trials", None)
    budget = {}
    if strategy in ("random", "bayesian"):
        budget["max_trials"] = max_trials or DEFAULT_MAX_TRIALS
    elif strategy == "grid":
        budget["max_trials"] = max_trials
    elif strategy == "hyperband":
        budget["max_epochs"] = args.epochs
    folder = pathlib.Path(args.output_dir) / "tuning"
    _check_continued_search(folder / strategy, args, write=distributed_role() != "worker")
    keras.utils.set_random_seed(args.seed)
    search = tuner(
        strategy,
        hypermodel,
        directory=str(folder),
        project_name=strategy,
        seed=args.seed,
        stages=stages,
        **budget,
    )
    callbacks = [volume_validation]
    if getattr(args, "max_minutes", None):
        # each trial is a training run: --max-minutes bounds it on the clock, as it bounds a
        # kseg train run or a cross-validation member (Keras Tuner copies the callback per
        # trial, and its start resets the clock); after VolumeValidation, whose time it counts
        from kseg.training import TimeBudget

        callbacks.append(TimeBudget(args.max_minutes))
    fit = {
        "epochs": args.epochs,
        "callbacks": callbacks,
        "verbose": _common.fit_verbosity(),
        "shuffle": False,  # the pipeline shuffles; Keras warns that it ignores True
    }
    if steps_per_epoch is not None:
        fit["steps_per_epoch"] = steps_per_epoch
    search.search(training, validation_data=validation_data, **fit)
    if distributed_role() == "worker":
        print("This worker's trials are done; the chief writes the results", flush=True)
        return None

    trials = _trials(search)
    # val_volume_dice: higher is better; trials that failed (no score) are listed last
    ranked = sorted(
        ((name, trial) for name, trial in trials if trial.score is not None),
        key=lambda named: named[1].score, reverse=True,
    )  # fmt: skip
    unscored = [(name, trial) for name, trial in trials if trial.score is None]
    results = {
        "strategy": strategy,
        "objective": DEFAULT_OBJECTIVE,
        "epochs_per_trial": args.epochs,
        "best_hyperparameters": ranked[0][1].hyperparameters.values if ranked else None,
        "best_score": ranked[0][1].score if ranked else None,
        "trials": [
            {
                "trial": name,
                "score": trial.score,
                "status": str(trial.status),
                "hyperparameters": trial.hyperparameters.values,
            }
            for name, trial in ranked + unscored
        ],
    }
    path = folder / strategy / "results.json"
    with atomic_output(path) as temporary:
        pathlib.Path(temporary).write_text(json.dumps(results, indent=2, default=str) + "\n")
    print(f"\n{len(ranked)} trials ranked by whole-volume validation Dice ({DEFAULT_OBJECTIVE}):")
    if unscored:
        print(f"  ({len(unscored)} trials failed and have no score)")
    for _, trial in ranked:
        print(f"  {trial.score:.4f}  {trial.hyperparameters.values}")
    print(f"Results in {path}")
    return results


def _searched_options(args) -> dict:
    """The options that make a search's trials: every option but :data:`_CONTINUABLE`,
    ``--data-dir`` as its real path (the same download named through a link is the same)."""
    import os

    from kseg.recipes.run_config import json_arguments

    options = {name: value for name, value in json_arguments(args).items()
               if name not in _CONTINUABLE}  # fmt: skip
    if isinstance(options.get("data_dir"), str):
        options["data_dir"] = os.path.realpath(options["data_dir"])
    return options


def _check_continued_search(project, args, *, write: bool) -> None:
    """Refuse to continue the search in ``project`` (``RUN/tuning/<strategy>``) with other
    options than its trials were trained with, and record them for the next run.

    Keras Tuner continues a search from its saved state whatever the command: trials of
    another ``--epochs``, other folds or another ``--data-dir`` were ranked together with
    the new ones (``results.json`` giving the new ``epochs_per_trial`` for all), and a new
    ``--learning-rate`` or ``--base-filters`` range was silently ignored (the saved search
    space wins). A search without trials yet, or recorded by an earlier kseg, takes any
    options."""
    from kseg.errors import LayoutError, UnreadableFileError
    from kseg.recipes.run_config import read_json, write_json

    project = pathlib.Path(project)
    record = project / SEARCH_RECORD
    wanted = _searched_options(args)
    # Keras Tuner's trial_<id> folders (a staged search's in stage_<n>_<name>/)
    trained = project.is_dir() and next(project.rglob("trial_*"), None) is not None
    if trained and record.is_file():
        try:
            recorded = read_json(record).get("options", {})
        except (UnreadableFileError, AttributeError):
            recorded = {}
        def shown(value):
            return "none" if value is None else value

        changes = [f"--{name.replace('_', '-')} {shown(recorded[name])} (now "
                   f"{shown(wanted[name])})"
                   for name in sorted(set(recorded) & set(wanted))
                   if recorded[name] != wanted[name]]  # fmt: skip
        if changes:
            raise LayoutError(
                project, f"holds a search whose trials were trained with "
                f"{'; '.join(changes)} ({record}): continuing it would rank trials of "
                "other settings or data together, in the search space it saved. Rerun with "
                f"the first command's options (a larger --max-trials continues it), give "
                f"another --output-dir, or remove {project} to search again",
            )  # fmt: skip
        return
    if write:
        write_json(record, {"options": wanted})


def _trials(search) -> list[tuple[str, object]]:
    """``(name, trial)`` of every trial of the search; a staged search's trials are named
    ``<stage hyperparameter>/<trial id>`` (each stage numbers its trials from 0)."""
    from kseg.tuning import StagedSearch

    if isinstance(search, StagedSearch):
        return [
            (f"{result.name}/{trial.trial_id}", trial)
            for result in search.results
            for trial in result.tuner.oracle.trials.values()
        ]
    return [(trial.trial_id, trial) for trial in search.oracle.trials.values()]
