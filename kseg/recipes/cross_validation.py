"""Cross-validation of a recipe (``--validation-fold all``): one model per non-test fold,
averaged into one model, as nnU-Net trains and reports its results.

For every fold ``k`` but the test fold, ``RUN/folds/fold_<k>/`` is a complete run folder of
the recipe (its own ``config.json``, ``best.keras``, ``history.csv``), trained by the
recipe's own ``train`` with ``--validation-fold k`` and every other option of the command;
with ``--plan auto`` the first member derives the plan and every later member trains from
that ``plan.json``, so all members share one plan, as nnU-Net's folds do. Then:

- ``RUN/best.keras`` is ONE Keras model (:func:`kseg.inference.ensemble.ensemble_model`)
  that returns the mean probability of the members over every flip of the mirror axes, so
  ``kseg evaluate``, ``kseg predict``, ``kseg report`` and the studies take ``RUN`` as any
  run folder.
- The mirror axes are those the training augmentation mirrored (nnU-Net mirrors at
  inference exactly the axes it mirrored in training) that the labels allow
  (:func:`kseg.plan.rule_mirror_axes`: never the left-right axis when a class name says left
  or right). Every combination of them is averaged (``2**axes`` copies), as nnU-Net does.
- Out-of-fold validation: each member, mirrored the same way, predicts its own validation
  fold (``RUN/folds/fold_<k>/out_of_fold/``, a run folder of that one mirrored member); the
  pooled table is ``RUN/evaluation/validation/``, and the post-processing is chosen on these
  pooled predictions (:func:`kseg.evaluation.choose_postprocessing`, nnU-Net's rule).
- ``RUN/config.json`` is the recipe's config with ``--validation-fold all``, the chosen
  post-processing in its ``inference`` section and an ``"ensemble"`` section naming the
  members, the mirror axes and the post-processing decision.

Resumable: a member is finished when its folder holds :data:`FINISHED_FILE` (written after
its training returned); running the same command again skips finished members, resumes a
crashed one from its backup, and rebuilds the ensemble.

Standard library only at import time, like the recipes.
"""

from __future__ import annotations

import argparse
import datetime
import os
import pathlib
import shutil
import time

from kseg.recipes import _common

FOLDS_FOLDER = "folds"
# Written into a member's run folder when its training has returned: the member is done.
FINISHED_FILE = "cross_validation_member.json"
# The run folder of one mirrored member scoring its own validation fold.
OUT_OF_FOLD_FOLDER = "out_of_fold"
# nnU-Net's name for the rule; kseg applies it to the pooled out-of-fold predictions.
POSTPROCESSING_RULE = (
    "keep the largest component of a structure when that raises its mean Dice over the "
    "pooled out-of-fold validation predictions (nnU-Net, determine_postprocessing)"
)


def member_dir(run_dir, fold: int) -> pathlib.Path:
    """``RUN/folds/fold_<fold>``: the run folder of the member validated on ``fold``."""
    return pathlib.Path(run_dir) / FOLDS_FOLDER / f"fold_{fold}"


def member_args(args: argparse.Namespace, fold: int) -> argparse.Namespace:
    """The options of the member validated on ``fold``: the command's, with its own run
    folder and the cross-validation's one prepared dataset (``RUN/tfds`` unless
    ``--tfds-dir``), so the data is built once for all members."""
    member = argparse.Namespace(**vars(args))
    member.validation_fold = fold
    member.output_dir = member_dir(args.output_dir, fold)
    member.tfds_dir = _common.tfds_dir(args)
    return member


def unbuilt(run_dir) -> str | None:
    """What ``run_dir`` is when it holds the members of a cross-validation
    (``folds/fold_<k>/``) but not its ``config.json`` yet (written with the ensemble, once
    every member has finished): which members have finished and how to go on; ``None``
    for any other folder."""
    run_dir = pathlib.Path(run_dir)
    folds = run_dir / FOLDS_FOLDER
    if (run_dir / "config.json").exists() or not folds.is_dir():
        return None
    members = sorted((path for path in folds.glob("fold_*")
                      if path.is_dir() and path.name[len("fold_"):].isdigit()),
                     key=lambda path: int(path.name[len("fold_"):]))  # fmt: skip
    if not members:
        return None
    done = [path.name for path in members if (path / FINISHED_FILE).is_file()]
    not_done = [path.name for path in members if path.name not in done]
    states = [f"{', '.join(names)} {verb}" for names, verb in (
        (done, "has finished" if len(done) == 1 else "have finished"),
        (not_done, "has not" if len(not_done) == 1 else "have not")) if names]  # fmt: skip
    finished = (f"; a finished member is a run folder of its own (kseg evaluate "
                f"{members[0].parent / done[0]} --split test)" if done else "")
    return (f"is a cross-validation (--validation-fold all) whose ensemble is not built yet: "
            f"of its members in {folds}, {', '.join(states)}. Its config.json and best.keras "
            "are written once every member has finished: run the same kseg train command "
            f"again to finish it{finished}")


def _finished_record(args: argparse.Namespace) -> dict | None:
    """The finished-member record of ``args.output_dir``, or ``None`` while the member is
    not finished. A record of other options is an error: skipping it would put a model
    of another command into this ensemble."""
    from kseg.errors import LayoutError
    from kseg.recipes import run_config

    folder = pathlib.Path(args.output_dir)
    path = folder / FINISHED_FILE
    if not path.is_file():
        return None
    record = run_config.read_json(path)
    if not (folder / "best.keras").is_file():
        raise LayoutError(folder, f"says in {FINISHED_FILE} that it finished training but "
                                  "holds no best.keras; remove the folder to train it again")
    wanted = _same_download(_placed(run_config.json_arguments(args)))
    recorded = _same_download(_placed(dict(record.get("arguments", {}))))
    # an option unset on one side is not a change: a plan may fill on a rerun what it
    # could not before the first run wrote the phantom
    changed = sorted(name for name in set(wanted) & set(recorded) - set(_NOT_COMPARED)
                     if None not in (wanted[name], recorded[name])
                     and wanted[name] != recorded[name])
    if changed:
        raise LayoutError(
            folder, "is a cross-validation member trained with other options "
            f"({', '.join(changed)}); rerun with the options of the first command, or give "
            "another --output-dir",
        )  # fmt: skip
    return record


# Options a finished member is not compared on, as a finished single run is not: where it
# is logged changes nothing it learns (a rerun may add --mlflow for the members still to
# train). The devices are compared: several replicas train a larger global batch at a
# scaled learning rate.
_NOT_COMPARED = ("mlflow", "mlflow_uri")


def _same_download(arguments: dict) -> dict:
    """``arguments`` with ``--data-dir`` (and the folder read from, ``manual_dir``, which
    is the download with ``--data-dir``) as real paths: the same download named relative to
    another working folder, or through a link, is the same data. Folders
    :func:`_placed` made relative to the cross-validation stay as they are."""
    for name in ("data_dir", "manual_dir"):
        value = arguments.get(name)
        if (isinstance(value, str) and value and "://" not in value
                and not value.startswith("<cross-validation>")):  # fmt: skip
            arguments[name] = os.path.realpath(value)
    return arguments


# A member's paths that lie in its cross-validation's folder when it was trained (plan:
# the first member's plan.json, which the later members train from).
_CROSS_VALIDATION_FOLDERS = ("output_dir", "manual_dir", "tfds_dir", "plan")


def _placed(arguments: dict) -> dict:
    """A member's ``arguments`` with the folders inside its cross-validation's folder
    (``CV/folds/fold_K``, ``CV/tfds``, ``CV/phantom*``) as paths relative to it: a moved
    cross-validation, or one named from another working folder, trained its members with
    the same options."""
    output = arguments.get("output_dir")
    if not isinstance(output, str) or not output:
        return arguments
    root = pathlib.PurePath(output).parent.parent
    for name in _CROSS_VALIDATION_FOLDERS:
        value = arguments.get(name)
        if isinstance(value, str) and value:
            try:
                inside = pathlib.PurePath(value).relative_to(root)
            except ValueError:
                continue
            arguments[name] = f"<cross-validation>/{inside.as_posix()}"
    return arguments


def _plan_to_share(args: argparse.Namespace, member: argparse.Namespace) -> pathlib.Path | None:
    """The plan the first member derived (``--plan auto``), which every later member then
    trains from, as nnU-Net's folds share one plan: derived again per member, the rules
    that time training steps on a loaded machine could give members other epochs."""
    if getattr(args, "plan", "none") != "auto":
        return None
    path = pathlib.Path(member.output_dir) / "plan.json"
    return path if path.is_file() else None


def train(module, args: argparse.Namespace) -> pathlib.Path:
    """Train every member not finished yet (in fold order), then build ``RUN/best.keras``,
    the out-of-fold table and ``RUN/config.json``; returns ``RUN/best.keras``.

    Args:
        module: the recipe module (:func:`kseg.recipes.load`).
        args: its checked options, ``validation_fold == "all"``.
    """
    run_dir = pathlib.Path(args.output_dir)
    _common.refuse_a_foreign_config(run_dir)  # the ensemble's config.json would replace it
    _refuse_a_single_run(run_dir)
    folds = _common.member_folds(args)
    print(f"Cross-validation: {len(folds)} members, validation folds {folds}"
          f"{'' if _common.has_test_fold(args) else ' (no test fold)'}, in "
          f"{run_dir / FOLDS_FOLDER}", flush=True)
    shared_plan = None
    for number, fold in enumerate(folds, start=1):
        member = member_args(args, fold)
        if shared_plan is not None:
            member.plan = os.fspath(shared_plan)
        record = _finished_record(member)
        if record is not None:
            print(f"Member {number}/{len(folds)} (validation fold {fold}): finished in an "
                  f"earlier run, kept ({member.output_dir})", flush=True)
            shared_plan = shared_plan or _plan_to_share(args, member)
            continue
        print(f"\nMember {number}/{len(folds)}: validation fold {fold} -> "
              f"{member.output_dir}", flush=True)
        from kseg.recipes import run_config

        # the options as given: a recipe's train may fill some in (from a plan) as it runs
        given = run_config.json_arguments(member)
        started = time.perf_counter()
        try:
            module.train(member)
        except _common.TrainingFinished:  # it finished, then the run stopped before the record
            print(f"Member {number}/{len(folds)}: its training had finished, kept", flush=True)
        run_config.write_json(member.output_dir / FINISHED_FILE, {
            "validation_fold": fold,
            "train_seconds": round(time.perf_counter() - started, 1),
            "finished": datetime.datetime.now(datetime.timezone.utc).isoformat(
                timespec="seconds"),
            "arguments": given,
        })  # fmt: skip
        shared_plan = shared_plan or _plan_to_share(args, member)
        import keras

        keras.backend.clear_session()  # the next member starts from a clean graph
    return build_ensemble(module, args)


def _refuse_a_single_run(run_dir: pathlib.Path) -> None:
    """A kseg error when ``run_dir`` holds the trained model of a run that is no
    cross-validation: the ensemble would replace its ``best.keras`` and ``config.json``,
    while its ``evaluation/`` and ``report.html`` went on describing the single model; or
    the resume backup of such a run, interrupted: the ensemble would take its
    ``config.json`` and leave the backup (which makes the folder an interrupted run) and
    its ``history.csv`` beside it."""
    from kseg.errors import LayoutError, UnreadableFileError
    from kseg.recipes import run_config

    interrupted = run_config.holds_backup(run_dir)
    if not (run_dir / "best.keras").is_file() and not interrupted:
        return
    try:
        # runs recorded before --validation-fold validated on fold 1
        validation_fold = run_config.read_config(run_dir)["arguments"].get("validation_fold", 1)
    except (LayoutError, UnreadableFileError, AttributeError):
        return
    if validation_fold == _common.ALL_FOLDS:
        return
    if interrupted:
        backup = run_dir / run_config.BACKUP_FOLDER
        raise LayoutError(
            run_dir, f"holds the resume backup of an interrupted run trained with "
            f"--validation-fold {validation_fold} ({backup}); a cross-validation writes its "
            "ensemble as RUN/best.keras and RUN/config.json and would leave that run's backup "
            f"and history beside them: resume it with --validation-fold {validation_fold}, or "
            "give --validation-fold all another --output-dir",
        )  # fmt: skip
    raise LayoutError(
        run_dir, f"holds a run trained with --validation-fold {validation_fold} (its "
        "best.keras, config.json and evaluations); a cross-validation writes its "
        "ensemble as RUN/best.keras and RUN/config.json: give another --output-dir",
    )  # fmt: skip


def mirror_axes(module, args: argparse.Namespace, spatial_dims: int, class_names) -> tuple:
    """The axes the ensemble mirrors: those the recipe's training augmentation flips
    (:func:`kseg.inference.tta.augmentation_mirror_axes`; a member never saw the other
    flips) that the labels allow (:func:`kseg.plan.rule_mirror_axes`)."""
    from kseg.inference.tta import inference_mirror_axes

    if hasattr(module, "augmenter"):
        augmenter = module.augmenter(args)
    elif hasattr(module, "build_augmenter"):  # msd_spleen: --augment names the augmentation
        augmenter = module.build_augmenter(args.augment, args.seed)
    else:
        augmenter = None
    return inference_mirror_axes(augmenter, spatial_dims, class_names)


def _save_model(model, path: pathlib.Path) -> None:
    from kseg._files import atomic_output

    with atomic_output(path) as temporary:
        model.save(temporary)


def _out_of_fold_run(module, args, fold: int, axes: tuple) -> pathlib.Path:
    """``RUN/folds/fold_<fold>/out_of_fold``: the member mirrored over ``axes``, scored on
    its own validation fold by the recipe's ``evaluate`` (without post-processing, which
    is chosen on these predictions). Kept once scored; rebuilt when the member is newer."""
    from kseg.inference.ensemble import ensemble_model
    from kseg.recipes import run_config

    source = member_dir(args.output_dir, fold)
    view = source / OUT_OF_FOLD_FOLDER
    scores = view / "evaluation" / "validation" / "scores.csv"
    if scores.is_file() and scores.stat().st_mtime >= (source / "best.keras").stat().st_mtime:
        return view
    config = run_config.read_config(source)
    config["inference"]["postprocess"] = "none"
    config["inference"]["mirror_axes"] = []  # the saved model mirrors
    # the member's folders as they are now (a moved cross-validation reads its own tfds)
    config["arguments"] = run_config.json_arguments(
        run_config.arguments_namespace(config, source))
    config["arguments"]["output_dir"] = str(view)
    if "largest_component" in config["arguments"]:  # msd_spleen's post-processing option
        config["arguments"]["largest_component"] = False
    config["mirror_axes"] = list(axes)
    view.mkdir(parents=True, exist_ok=True)
    _save_model(ensemble_model([source / "best.keras"], mirror_axes=axes,
                               name=f"fold_{fold}_mirrored"), view / "best.keras")
    run_config.save_config(view, config)
    print(f"\nOut-of-fold: member of validation fold {fold}, mirrored over axes "
          f"{list(axes)}, on its validation fold", flush=True)
    module.evaluate(run_config.arguments_namespace(config, view), split="validation")
    return view


def _read_case(path: pathlib.Path):
    import numpy as np

    with np.load(path) as case:
        return path.stem, case["reference"], case["prediction"], tuple(case["spacing"])


def _scored_labels(config: dict):
    """The ``labels`` argument the recipe scored with: ``None`` for one structure (one
    sigmoid channel), else ``{name: value}``."""
    return _common.scored_labels(int(config["inference"]["num_classes"]), dict(config["labels"]))


def out_of_fold(args: argparse.Namespace):
    """The pooled out-of-fold table of a cross-validation (every member's rows on its own
    validation fold), written to ``RUN/evaluation/validation/`` with the case files."""
    from kseg.evaluation import PatientTable
    from kseg.recipes import _evaluation

    run_dir = pathlib.Path(args.output_dir)
    folder = _evaluation.scoring_folder(run_dir, "validation")
    rows, sources = [], []
    for fold in _common.member_folds(args):
        scored = member_dir(run_dir, fold) / OUT_OF_FOLD_FOLDER / "evaluation" / "validation"
        if not (scored / "scores.csv").is_file():  # removed since the ensemble was built
            from kseg.errors import LayoutError

            raise LayoutError(
                scored / "scores.csv", f"is missing: the out-of-fold table of the member "
                f"validated on fold {fold}; run the cross-validation's kseg train "
                "--validation-fold all command again: it keeps the finished members and "
                "scores each missing out-of-fold table again",
            )  # fmt: skip
        rows += PatientTable.from_csv(scored / "scores.csv").rows
        sources.append(scored / "cases")
    table = PatientTable(sorted(rows, key=lambda row: row["patient_id"]))
    (folder / "cases").mkdir(parents=True, exist_ok=True)
    for cases in sources:
        for path in sorted(cases.glob("*.npz")):
            shutil.copyfile(path, folder / "cases" / path.name)
    _evaluation.save_table(table, folder)
    return table


def choose_postprocessing(args: argparse.Namespace, config: dict):
    """:func:`kseg.evaluation.choose_postprocessing` on the pooled out-of-fold predictions
    (the label maps the members' out-of-fold evaluations scored)."""
    from kseg.evaluation import choose_postprocessing as choose

    cases = []
    for fold in _common.member_folds(args):
        scored = member_dir(args.output_dir, fold) / OUT_OF_FOLD_FOLDER / "evaluation"
        cases += [_read_case(path) for path in sorted((scored / "validation" / "cases")
                                                      .glob("*.npz"))]
    return choose(cases, labels=_scored_labels(config), warn_empty=False)


def _differences(arguments: dict, reference: dict) -> dict:
    """The options of ``arguments`` that ``reference`` holds otherwise, but for the run
    folder and the validation fold, which differ by design."""
    return {name: value for name, value in sorted(arguments.items())
            if name not in ("output_dir", "validation_fold")
            and reference.get(name) != value}


def build_ensemble(module, args: argparse.Namespace) -> pathlib.Path:
    """``RUN/best.keras``, the out-of-fold table and ``RUN/config.json`` from the finished
    members (see the module docstring); returns ``RUN/best.keras``."""
    import kseg
    from kseg.inference.ensemble import ensemble_model, mirror_subsets
    from kseg.recipes import run_config

    run_dir = pathlib.Path(args.output_dir)
    folds = _common.member_folds(args)
    members = [member_dir(run_dir, fold) / "best.keras" for fold in folds]
    first = run_config.read_config(member_dir(run_dir, folds[0]))
    spatial_dims = len(kseg.load_model(members[0], compile=False).input_shape) - 2
    # the augmentation the members trained with (a plan may have chosen it)
    axes = mirror_axes(module, run_config.arguments_namespace(first), spatial_dims,
                       list(first["labels"]))
    for fold in folds:
        _out_of_fold_run(module, args, fold, axes)
    table = out_of_fold(args)
    choice = choose_postprocessing(args, first)
    model = ensemble_model(members, mirror_axes=axes, name="fold_ensemble")
    _save_model(model, run_dir / "best.keras")
    config = dict(first)
    # the options the members trained with (a plan fills some in as training starts), so
    # that evaluating RUN prepares its images as the members saw them
    config["arguments"] = {**first["arguments"], "output_dir": str(run_dir),
                           "validation_fold": _common.ALL_FOLDS}
    member_configs = {fold: run_config.read_config(member_dir(run_dir, fold)) for fold in folds}
    inference = dict(first["inference"], mirror_axes=[])  # RUN/best.keras mirrors
    structures = 1 if _scored_labels(first) is None else len(first["labels"])
    # kseg.predict knows "none" and "largest-component" (every structure); a choice of some
    # structures only is recorded by label for the evaluations that read it
    inference["postprocess"] = ("largest-component" if len(choice.labels) == structures
                                else "none")
    inference["postprocess_labels"] = list(choice.labels)
    config["inference"] = inference
    if "largest_component" in config["arguments"]:  # msd_spleen evaluates by this option
        config["arguments"]["largest_component"] = bool(choice.labels)
    dice_columns = [column for column in table.metric_names if column.startswith("dice")]
    config["ensemble"] = {
        "kind": "mean probability over members and mirrored copies",
        "members": [
            {"validation_fold": fold, "run": f"{FOLDS_FOLDER}/fold_{fold}",
             "model": f"{FOLDS_FOLDER}/fold_{fold}/best.keras",
             # options a member's plan set otherwise than the first member's (epochs ...)
             "arguments_unlike_first": _differences(member_configs[fold]["arguments"],
                                                    first["arguments"])}
            for fold in folds
        ],
        "mirror_axes": list(axes),
        "mirrored_copies": len(mirror_subsets(axes)),
        "mirror_axes_rule": "axes the training augmentation flips, less the left-right axis "
                            "when a class name says left or right (kseg.plan.rule_mirror_axes)",
        "out_of_fold": {
            "table": "evaluation/validation/scores.csv",
            "mean": {column: float(table.summary()[column]["mean"]) for column in dice_columns},
        },
        "postprocessing": {
            "labels": list(choice.labels), "dice_without": choice.dice_without,
            "dice_with": choice.dice_with, "rule": POSTPROCESSING_RULE,
        },
    }  # fmt: skip
    for name in ("plan.json", "fingerprint.json"):  # the plan the members were trained from
        source = member_dir(run_dir, folds[0]) / name
        if source.is_file():
            shutil.copyfile(source, run_dir / name)
    run_config.save_config(run_dir, config)
    means = ", ".join(f"{column} {value:.4f}"
                      for column, value in config["ensemble"]["out_of_fold"]["mean"].items())
    print(f"\nOut-of-fold validation ({len(table)} cases, each scored by the member that did "
          f"not train on it): {means}")
    chosen = inference["postprocess"]
    if choice.labels and chosen == "none":
        chosen = f"largest component of labels {list(choice.labels)} only"
    print(f"Post-processing chosen on it: {chosen}; mean Dice without "
          f"{choice.dice_without}, with {choice.dice_with}")
    print(f"Ensemble of {len(folds)} members x {len(mirror_subsets(axes))} mirrored copies "
          f"(axes {list(axes)}): {run_dir / 'best.keras'}", flush=True)
    return run_dir / "best.keras"


def evaluate(module, args: argparse.Namespace, *, split: str = "test", input_dir=None):
    """The recipe's ``evaluate``, except ``split="validation"`` of a cross-validation: the
    pooled out-of-fold table (each member on its own validation fold), printed and
    returned."""
    if not (_common.cross_validating(args) and input_dir is None and split == "validation"):
        return module.evaluate(args, split=split, input_dir=input_dir)
    table = out_of_fold(args)
    print("\nOut-of-fold validation of the cross-validation, one row per case (each scored "
          "by the member validated on its fold, without post-processing):")
    print(table)
    return table


def run_main(module, argv, train_run, report=None):
    """A recipe's ``main``: parse ``argv``, train (:func:`train_for_main`), and on the chief
    ``report(args, best.keras)`` (without one, :func:`test_fold_report`), whose value
    ``main`` returns, then the time line. A kseg error ends the script with its message
    (:func:`kseg.recipes._common.run`)."""

    def main():
        args = module.parse_args(argv)
        clock = _common.RunClock()
        best_path, fit_seconds, chief = train_for_main(module, args, train_run)
        if not chief:  # the chief evaluates and reports for the cluster
            return None
        if report is None:
            result = test_fold_report(module, args)
        else:
            result = report(args, best_path)
        print(f"training {fit_seconds:.0f} s; whole run {clock.summary()}")
        return result

    return _common.run(main)


def test_fold_report(module, args: argparse.Namespace):
    """What a recipe's ``main`` reports by default: the recipe's test table
    (:func:`kseg.recipes._common.evaluate_test_fold`), then where the run's outputs are."""
    table = _common.evaluate_test_fold(args, module.evaluate)
    print(f"\nOutputs in {args.output_dir}")
    return table


def train_for_main(module, args: argparse.Namespace, train_run):
    """What a recipe's ``main`` trains: ``train_run(args)`` (``(best.keras, fit seconds,
    chief)``), or with ``--validation-fold all`` the cross-validation (its seconds are
    the whole of it, members and ensemble). A run folder whose training finished is not
    trained again: that is said, ``args`` become the options it was trained with (as
    :func:`kseg.recipes.load_run` reads them) and its ``best.keras`` goes on (0 fit
    seconds)."""
    if not _common.cross_validating(args):
        try:
            return train_run(args)
        except _common.TrainingFinished as finished:  # a rerun of a finished run
            from kseg.recipes import load_run

            if finished.chief:
                print(f"{finished}\nGoing on with {finished.best}", flush=True)
            # what follows (the test table) treats the model as kseg evaluate RUN does:
            # with the options it was trained with, the plan's among them
            vars(args).update(vars(load_run(args.output_dir)[1]))
            return finished.best, 0.0, finished.chief
    started = time.perf_counter()
    best = train(module, args)
    return best, time.perf_counter() - started, True
