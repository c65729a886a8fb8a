"""Run folders, the kseg command, evaluation and resume (session 26).

Each case is checked against a hand-written run folder or config, files written in the test,
or what a stub records being called; no test trains a network.
"""

import argparse
import json
import re

import pytest
from test_runs_25 import _config, _fake_builder, _interrupted_run, finished_member

from kseg.errors import LayoutError
from kseg.recipes.run_config import write_json

# --- 1. a second command in one process did not name the prepared dataset it used ---------


def test_every_evaluation_of_a_process_names_the_prepared_dataset_once(
    tmp_path, monkeypatch, capsys
):
    """``kseg evaluate RUN --split test`` said "Using the dataset prepared in ..." once per
    dataset folder per process: a notebook that evaluated (or prepared) the same dataset a
    second time got no line at all, as if nothing was read. Each command says it once."""
    from kseg import cli, recipes
    from kseg.recipes import _common, run_config

    run = tmp_path / "run"
    builder = _fake_builder(tmp_path / "tfds" / "xray" / "generic" / "1.1.0")
    arguments = {"output_dir": str(run), "data_dir": None, "seed": 0, "folds": 3,
                 "test_fold": 0, "validation_fold": 1}
    write_json(run / "config.json", _config(arguments, dataset={
        "name": "xray", "fingerprint": run_config.dataset_fingerprint(builder)}))
    (run / "best.keras").write_bytes(b"model")
    module = recipes.load("xray_multiclass")

    def prepare(args):  # the recipe's prepare, on the prepared dataset
        _common.prepare(builder, tmp_path / "download")
        return builder

    monkeypatch.setattr(module, "prepare", prepare)
    monkeypatch.setattr(module, "evaluate", lambda args, split, input_dir=None: prepare(args))
    said = f"Using the dataset prepared in {builder.data_dir}"
    for _ in range(2):  # the same command twice in one process (a notebook)
        assert cli.main(["evaluate", str(run), "--split", "test"]) == 0
        output = capsys.readouterr().out
        assert output.count(said) == 1, output
    for _ in range(2):  # a recipe's prepare, twice: recipes.load(...).prepare(args)
        prepare(None)
        assert capsys.readouterr().out.count(said) == 1


# --- 3. --validation-fold all into the folder of an interrupted single run -----------------


def test_a_cross_validation_into_an_interrupted_single_runs_folder_is_refused(tmp_path):
    """``kseg train RECIPE --validation-fold all --output-dir RUN`` where RUN holds a single
    run killed before its first best model (config.json, backup/, history.csv): the
    members trained in RUN/folds/ and the ensemble took RUN/config.json, while RUN/backup
    (and the run's history.csv, training.json "not finished") stayed behind: the ensemble
    folder then counted as interrupted and the report drew the single run's curves.
    Refused as a trained single run is, before any member trains, naming the backup."""
    from kseg.recipes import cross_validation

    run = _interrupted_run(tmp_path / "run")
    (run / "history.csv").write_text("epoch,loss\n0,0.9\n")
    before = sorted(path.relative_to(run) for path in run.rglob("*"))
    trained = []
    recipe = argparse.Namespace(train=trained.append)
    args = argparse.Namespace(output_dir=run, folds=3, test_fold=0, validation_fold="all",
                              seed=0, tfds_dir=None, plan="none")
    with pytest.raises(LayoutError, match=re.escape(
            f"{run}: holds the resume backup of an interrupted run trained with "
            f"--validation-fold 1 ({run / 'backup'})")):
        cross_validation.train(recipe, args)
    assert trained == []
    assert sorted(path.relative_to(run) for path in run.rglob("*")) == before
    # a single run's folder without a backup (killed before its first epoch ended, or the
    # backup removed to start over) holds nothing a cross-validation would leave behind
    for path in (run / "backup").iterdir():
        path.unlink()
    cross_validation._refuse_a_single_run(run)


# --- 4. a resumed run given another loss, learning rate or other training options ----------


def _resumable(run, **arguments):
    """An interrupted CHAOS run (--plan none unless ``arguments`` say otherwise):
    config.json and a resume backup."""
    return _interrupted_run(run, recipe="chaos_liver", **{
        "plan": "none", "loss": "combo", "learning_rate": 0.002, "schedule": "plateau",
        "batch_size": 8, "augment": "recipe", "window": "abdomen", **arguments})


def test_resuming_with_another_loss_or_learning_rate_is_refused(tmp_path, monkeypatch):
    """``kseg train chaos_liver`` rerun on an interrupted run with ``--loss dice_ce
    --learning-rate 1e-4`` (or another --batch-size, --window, --augment, --schedule)
    went on from the backup's weights and Adam state with the new loss and rate, and
    config.json recorded only the new ones: a model trained half one way, described as
    trained the other. Refused as other folds and another network are, before anything is
    prepared, naming the recorded and the given values; more --epochs still resume."""
    from kseg import recipes
    from kseg.recipes import _common

    monkeypatch.chdir(tmp_path)
    run = _resumable(tmp_path / "run")
    recorded = (run / "config.json").read_bytes()
    prepared = []

    def prepare(args):
        prepared.append(args)

    prepare.__module__ = recipes.load("chaos_liver").__name__

    def args(**changes):
        options = {**json.loads(recorded)["arguments"], "output_dir": run,
                   "distribution": "default", **changes}
        return argparse.Namespace(**options)

    for changes, named in (
            ({"loss": "dice_ce", "learning_rate": 1e-4},
             "--loss combo (now dice_ce); --learning-rate 0.002 (now 0.0001)"),
            ({"batch_size": 4}, "--batch-size 8 (now 4)"),
            ({"window": [40.0, 400.0]}, "--window abdomen (now [40.0, 400.0])"),
            ({"augment": "nnunet", "schedule": "cosine"},
             "--schedule plateau (now cosine); --augment recipe (now nnunet)")):
        with pytest.raises(LayoutError, match=re.escape(
                f"{run}: holds the resume backup of a run trained with {named} (config.json: "
                "recipe chaos_liver")) as error:
            _common.start_training(args(**changes), prepare)
        assert f"remove {run / 'backup'}" in str(error.value)
        assert prepared == [] and (run / "config.json").read_bytes() == recorded
    _common.start_training(args(epochs=9), prepare)  # more epochs: it resumes
    assert len(prepared) == 1
    # a planned run: an option left to the plan holds the hand-picked value until the plan
    # is read, and is compared once it is
    planned = _resumable(tmp_path / "planned", plan="auto")
    _common.start_training(args(output_dir=planned, plan="auto", plan_given=[],
                                loss="dice_ce", learning_rate=0.002), prepare)
    assert len(prepared) == 2
    given = args(output_dir=planned, plan="auto", plan_given=["loss"], loss="dice_ce")
    with pytest.raises(LayoutError, match=re.escape("--loss combo (now dice_ce)")):
        _common.start_training(given, prepare)
    # the X-ray recipe plans its --image-size and --batch-size too (HAND_PICKED_ALL)
    xray = _interrupted_run(tmp_path / "xray", plan="auto", plan_given=[], batch_size=2,
                            learning_rate=0.001)
    prepare.__module__ = recipes.load("xray_multiclass").__name__
    _common.start_training(args(output_dir=xray, plan="auto", plan_given=[], batch_size=4,
                                image_size=96), prepare)
    assert len(prepared) == 3


def test_a_resumed_run_whose_plan_sets_another_learning_rate_is_refused(tmp_path, monkeypatch):
    """A planned run resumed with other budgets (--max-minutes, --memory-budget-mb) whose
    plan then sets another batch or learning rate went on with it from the backup, and its
    plan.json was replaced by the new plan. Refused once the plan is read, before the run's
    plan.json is replaced."""
    from kseg.recipes import _planned

    run = _resumable(tmp_path / "run", plan="auto", plan_given=[])
    builder = _fake_builder(tmp_path / "tfds")
    saved = []
    plan = argparse.Namespace(rules={}, save=saved.append)
    monkeypatch.setattr(_planned, "fingerprint", lambda *args, **kwargs: None)
    monkeypatch.setattr(_planned, "derive", lambda *args, **kwargs: plan)
    arguments = {**json.loads((run / "config.json").read_text())["arguments"],
                 "output_dir": run, "learning_rate": 0.002}

    def settings(rate):
        return lambda plan, training, args: {"learning_rate": rate, "loss": "combo"}

    with pytest.raises(LayoutError, match=re.escape("--learning-rate 0.002 (now 0.001)")):
        _planned.apply(argparse.Namespace(**arguments), builder, settings(0.001),
                       training_split="fold0")
    assert saved == []
    assert _planned.apply(argparse.Namespace(**arguments), builder, settings(0.002),
                          training_split="fold0") is plan
    assert saved == [run / _planned.PLAN_FILE]
    # kseg tune RECIPE --output-dir RUN (its trials in RUN/tuning/) resumes no backup
    tuning = argparse.Namespace(**arguments, strategy="random")
    assert _planned.apply(tuning, builder, settings(0.001), training_split="fold0") is plan


# --- 2. one labelled case cannot be dealt into folds --------------------------------------


def test_one_labelled_case_is_prepared_as_one_fold(tmp_path):
    """``kseg evaluate RUN --input DIR`` of a folder holding one labelled case could not be
    scored: the input is prepared as a dataset of folds and the fold assignment refused
    fewer than 2 folds, so the smallest input dataset needed 2 patients. One fold, every
    patient in it, is a dataset that is only scored: one case is prepared (as the
    evaluation then reads it, ``fold0``)."""
    from kseg.data.examples import fold_splits
    from kseg.data.splits import assign_folds, fold_names

    assert fold_names(1) == ["fold0"]
    assert assign_folds(["P9"], 1) == {"P9": 0}
    assert assign_folds(["c", "a", "b"], 1, seed=4) == {"a": 0, "b": 0, "c": 0}
    with pytest.raises(ValueError, match="at least 1, got 0"):
        assign_folds(["a"], 0)
    # what every dataset builder writes its fold splits from
    assert fold_splits(["P9"], 1, seed=0, where="one case") == {"fold0": ["P9"]}


# --- a cross-validation rerun with tracking or devices of its own --------------------------


def test_a_cross_validation_rerun_may_log_to_mlflow(tmp_path):
    """A --validation-fold all run stopped in its third member, rerun with ``--mlflow`` (to
    log the members still to train): every finished member was refused as "trained with
    other options (mlflow)", though where a run is logged changes nothing a member learns,
    and a finished single run is not compared on it. Other training options, and other
    devices (a larger global batch at a scaled rate), are still refused."""
    from kseg.recipes import cross_validation

    first = argparse.Namespace(output_dir=tmp_path / "cv", data_dir=None, folds=3, test_fold=0,
                               validation_fold="all", seed=0, epochs=2, mlflow=False,
                               mlflow_uri=None, distribution="default")
    finished_member(first, 1)

    def rerun(**changes):
        return cross_validation.member_args(argparse.Namespace(**{**vars(first), **changes}), 1)

    for changes in ({"mlflow": True}, {"mlflow": True, "mlflow_uri": str(tmp_path / "mlruns")}):
        assert cross_validation._finished_record(rerun(**changes))["validation_fold"] == 1
    for changes, named in (({"epochs": 5, "mlflow": True}, "epochs"),
                           ({"distribution": "mirrored"}, "distribution")):
        with pytest.raises(LayoutError, match=re.escape(f"trained with other options ({named})")):
            cross_validation._finished_record(rerun(**changes))


# --- a cross-validation whose ensemble is not built yet -----------------------------------


@pytest.mark.parametrize("command", ["evaluate", "report"])
def test_a_cross_validation_in_progress_is_named_as_one(tmp_path, capsys, command):
    """``kseg evaluate RUN --split test`` or ``kseg report RUN`` while RUN's
    --validation-fold all trains its members (or after it stopped in one): "RUN: holds no
    config.json; expected the folder of a kseg training run", though RUN is one; its
    config.json and best.keras come when every member has finished. The error says so now,
    naming the finished members, how to finish it and that a member is a run of its own."""
    from kseg import cli
    from kseg.recipes import cross_validation

    run = tmp_path / "cv"
    for fold in (1, 2):
        _interrupted_run(cross_validation.member_dir(run, fold), validation_fold=fold)
    finished = cross_validation.member_dir(run, 1)
    (finished / "backup" / "training_metadata.json").unlink()
    (finished / "best.keras").write_bytes(b"model")
    write_json(finished / cross_validation.FINISHED_FILE, {"validation_fold": 1})
    argv = ["evaluate", str(run), "--split", "test"] if command == "evaluate" else [
        "report", str(run)]
    assert cli.main(argv) == 1
    error = capsys.readouterr().err
    assert error.startswith(
        f"kseg: error: {run}: is a cross-validation (--validation-fold all) whose ensemble "
        f"is not built yet: of its members in {run / 'folds'}, fold_1 has finished, fold_2 "
        "has not"), error
    assert "the same kseg train command" in error and f"{finished}" in error
    if command == "report":  # and from Python
        from kseg.report import write_report

        with pytest.raises(LayoutError, match="whose ensemble is not built yet"):
            write_report(run)
    assert not (run / "report.html").exists()


# --- a download or input folder whose subfolders are links --------------------------------


def test_files_reached_through_a_linked_folder_make_a_prepared_dataset_stale(tmp_path):
    """A download (or an ``evaluate --input`` folder) whose subfolder is a link, as a lab
    keeps a large archive on another disk (``CHAOS/Train_Sets -> /data/CHAOS/Train_Sets``):
    the builders read the patients through the link, but the source listing that says
    which files a prepared dataset was made from did not follow it and recorded 0 files,
    so the dataset was reused silently whatever the link came to hold (another input
    folder of the same name scored with the first one's images). The listing follows
    linked folders (each real folder once: a link to a folder above ends), and a dataset
    recorded by the earlier kseg (its listing without the linked files) is still reused."""
    import hashlib
    import os

    from kseg.recipes import _common

    archive = tmp_path / "disk2" / "Train_Sets"
    (archive / "CT" / "1").mkdir(parents=True)
    (archive / "CT" / "1" / "i1.dcm").write_bytes(b"x" * 7)
    download = tmp_path / "CHAOS"
    download.mkdir()
    os.symlink(archive, download / "Train_Sets")
    os.symlink(download, download / "Train_Sets" / "CT" / "loop")  # a link to a folder above
    (download / "notes.txt").write_bytes(b"abc")
    listing = _common.source_listing(download)
    expected = "\n".join(["Train_Sets/CT/1/i1.dcm\t7", "notes.txt\t3"])
    assert listing["files"] == 2
    assert listing["listing_sha256"] == hashlib.sha256(expected.encode()).hexdigest()

    builder = _fake_builder(tmp_path / "tfds")
    write_json(tmp_path / "tfds" / _common.SOURCE_FILE, listing)
    _common.prepare(builder, download)  # the same files: reused
    (archive / "CT" / "2").mkdir()
    (archive / "CT" / "2" / "i1.dcm").write_bytes(b"y" * 7)  # a patient added in the archive
    with pytest.raises(LayoutError, match=re.escape(
            f"{download.resolve()} holds other files now (3 files")):
        _common.prepare(builder, download)
    # recorded by the earlier kseg, which listed the download without its linked folders
    unlinked = hashlib.sha256(b"notes.txt\t3").hexdigest()
    write_json(tmp_path / "tfds" / _common.SOURCE_FILE,
               {**listing, "files": 1, "listing_sha256": unlinked})
    _common.prepare(builder, download)


def test_a_link_whose_target_is_gone_is_listed_not_a_crash(tmp_path):
    """A download holding a link whose target is gone (``README.txt -> /mnt/nas/...``, the
    share unmounted; a folder link the same): ``kseg prepare`` and ``kseg train
    --data-dir`` ended in a bare FileNotFoundError traceback from the source listing, before
    the builder, which never reads that file, was asked. It is listed as missing; its
    target coming back is a change of the download."""
    import hashlib
    import os

    from kseg.recipes import _common

    download = tmp_path / "download"
    (download / "images").mkdir(parents=True)
    (download / "images" / "a.png").write_bytes(b"png")
    os.symlink(tmp_path / "nas" / "readme.txt", download / "README.txt")
    os.symlink(tmp_path / "nas" / "old masks", download / "masks_old")
    listing = _common.source_listing(download)
    expected = "\n".join(["README.txt\tmissing", "images/a.png\t3", "masks_old\tmissing"])
    assert listing["files"] == 3
    assert listing["listing_sha256"] == hashlib.sha256(expected.encode()).hexdigest()
    (tmp_path / "nas").mkdir()
    (tmp_path / "nas" / "readme.txt").write_bytes(b"hello")
    assert _common.source_listing(download)["listing_sha256"] != listing["listing_sha256"]


# --- evaluate --input . -----------------------------------------------------------------


def test_an_input_given_as_the_working_folder_is_named_after_it(tmp_path, monkeypatch):
    """``kseg evaluate RUN --input .`` run from inside the input folder (``~/data/site-B``)
    wrote its scores into ``RUN/evaluation/input-.`` and its dataset into
    ``RUN/tfds-input-.`` (``..``: ``input-..``), names that say nothing of the folder; the
    same folder given by its path went to ``input-site-B``. Both are ``input-site-B`` now."""
    from kseg.recipes import _common

    site = tmp_path / "site-B"
    (site / "images").mkdir(parents=True)
    monkeypatch.chdir(site / "images")
    for given in ("..", "../", str(site), str(site) + "/"):
        assert _common.evaluation_name("test", given) == "input-site-B", given
    monkeypatch.chdir(site)
    assert _common.evaluation_name("test", ".") == "input-site-B"
    assert _common.evaluation_name("test", ".").input_dir == "."  # read where it was given


# --- the pooled out-of-fold table of a cross-validation missing a member's scores ---------


def test_a_missing_out_of_fold_table_is_named_with_how_to_score_it_again(tmp_path, capsys):
    """``kseg evaluate CV --split validation`` after a member's ``out_of_fold/`` was
    removed (it holds a mirrored copy of the member's model: a large folder to clean up)
    ended in a bare FileNotFoundError traceback. It names the missing table and says that
    running the cross-validation's kseg train command again scores it again (it does:
    finished members are kept and their out-of-fold tables rebuilt when missing)."""
    from kseg import cli
    from kseg.evaluation import PatientTable
    from kseg.recipes import cross_validation

    run = tmp_path / "cv"
    arguments = {"output_dir": str(run), "data_dir": None, "seed": 0, "folds": 3,
                 "test_fold": 0, "validation_fold": "all"}
    write_json(run / "config.json", _config(arguments))
    (run / "best.keras").write_bytes(b"ensemble")
    scored = (cross_validation.member_dir(run, 1) / cross_validation.OUT_OF_FOLD_FOLDER
              / "evaluation" / "validation")
    scored.mkdir(parents=True)
    PatientTable([{"patient_id": "P1", "dice": 0.9}]).to_csv(scored / "scores.csv")
    missing = (cross_validation.member_dir(run, 2) / cross_validation.OUT_OF_FOLD_FOLDER
               / "evaluation" / "validation" / "scores.csv")
    assert cli.main(["evaluate", str(run), "--split", "validation"]) == 1
    error = capsys.readouterr().err
    assert error.startswith(f"kseg: error: {missing}: "), error
    assert "--validation-fold all command again" in error
    assert not (run / "evaluation" / "validation" / "scores.csv").exists()


# --- kseg study NAME SOURCE where SOURCE is a recipe name and a run folder ------------------


def test_a_study_source_that_is_a_recipe_and_a_run_folder_is_refused(tmp_path, monkeypatch,
                                                                      capsys):
    """``kseg train chaos_liver --output-dir chaos_liver`` then ``kseg study noise
    chaos_liver``: the source was read as the recipe name, so the study trained a new
    phantom run in kseg_runs/chaos_liver_phantom (minutes) and studied that, not the run the
    user named. Refused as ambiguous now, before anything is read or trained, saying how
    to name either; ``./chaos_liver`` is the run folder."""
    from kseg import cli, studies

    monkeypatch.chdir(tmp_path)
    run = tmp_path / "chaos_liver"
    write_json(run / "config.json", _config({"output_dir": str(run)}, recipe="chaos_liver"))
    studied = []
    monkeypatch.setattr(studies, "run_study", lambda name, args: studied.append(args.source))
    with pytest.raises(SystemExit) as exited:
        cli.main(["study", "noise", "chaos_liver"])
    assert exited.value.code == 2
    error = capsys.readouterr().err
    assert "chaos_liver is the name of a recipe and of a run folder here" in error, error
    assert "./chaos_liver" in error
    assert studied == [] and not (tmp_path / "kseg_runs").exists()
    assert cli.main(["study", "noise", "./chaos_liver"]) == 0
    assert studied == ["./chaos_liver"]


# --- kseg evaluate --split after files were added to the download ------------------------


def test_evaluating_a_split_after_the_download_changed_reads_the_prepared_dataset(
    tmp_path, monkeypatch, capsys
):
    """``kseg evaluate RUN --split test`` after patients were added to (or changed in) the
    run's --data-dir: refused, "give another --output-dir or --tfds-dir to prepare them, or
    delete this folder to prepare them here again": options evaluate does not have, and
    preparing again deals the patients into new folds, whose test fold holds patients the
    model trained on. The run's split is scored from the dataset as it was prepared (as
    when the download is gone), saying so and how to score the new files; training on it
    is still refused."""
    from kseg import cli, recipes
    from kseg.recipes import _common, run_config

    run, download = tmp_path / "run", tmp_path / "download"
    (download / "images").mkdir(parents=True)
    (download / "images" / "P1.png").write_bytes(b"png")
    builder = _fake_builder(tmp_path / "tfds")
    write_json(tmp_path / "tfds" / _common.SOURCE_FILE, _common.source_listing(download))
    arguments = {"output_dir": str(run), "data_dir": str(download), "seed": 0, "folds": 3,
                 "test_fold": 0, "validation_fold": 1}
    write_json(run / "config.json", _config(arguments, dataset={
        "name": "xray", "fingerprint": run_config.dataset_fingerprint(builder)}))
    (run / "best.keras").write_bytes(b"model")
    (download / "images" / "P2.png").write_bytes(b"png2")  # a patient added since
    module = recipes.load("xray_multiclass")

    def prepare(args):
        _common.prepare(builder, download)
        return builder

    scored = []
    monkeypatch.setattr(module, "prepare", prepare)
    monkeypatch.setattr(module, "evaluate",
                        lambda args, split, input_dir=None: scored.append(prepare(args)))
    assert cli.main(["evaluate", str(run), "--split", "test"]) == 0, capsys.readouterr().err
    assert scored == [builder]
    output = capsys.readouterr().out
    assert output.count(f"Using the dataset prepared in {builder.data_dir}") == 1, output
    assert "holds other files now (2 files" in output
    assert f"kseg evaluate RUN --input {download}" in output
    with pytest.raises(LayoutError, match="holds other files now"):  # training on it
        prepare(None)


# --- --window with a preset name that is not one --------------------------------------------


def test_a_window_preset_is_checked_when_the_command_is_parsed(capsys):
    """``kseg train chaos_liver --window Liver`` (or a misspelt preset): the name was taken
    as given, the phantom written, the dataset prepared and config.json written with
    window "Liver", and training then ended in a bare ValueError traceback from the data
    pipeline ("window 'Liver' is not a preset"), leaving a run folder that records a window
    no run can use. The preset is checked when the command is parsed now (a usage error,
    before TensorFlow loads); its case does not matter."""
    from kseg import recipes
    from kseg.data.pipeline import WINDOWS
    from kseg.recipes import _planned

    assert set(_planned.WINDOW_PRESETS) == set(WINDOWS)  # the presets the pipeline knows
    chaos = recipes.load("chaos_liver")
    assert chaos.parse_args(["--window", "Liver", "--plan", "none"]).window == "liver"
    assert chaos.parse_args(["--window", "40,400"]).window == [40.0, 400.0]
    with pytest.raises(SystemExit) as exited:
        chaos.parse_args(["--window", "livr"])
    assert exited.value.code == 2
    error = capsys.readouterr().err
    assert "argument --window: 'livr' is neither a window preset" in error, error
    assert "abdomen" in error and "CENTER,WIDTH" in error


# --- --seed outside what the random generators take ----------------------------------------


@pytest.mark.parametrize("recipe", ["chaos_liver", "msd_spleen"])
@pytest.mark.parametrize("seed", ["-1", str(2**32)])
def test_a_seed_the_generators_refuse_is_a_usage_error(recipe, seed, capsys):
    """``kseg train RECIPE --seed -1`` (as some tools read "random") loaded TensorFlow and
    ended in a bare ``ValueError: Seed must be between 0 and 2**32 - 1`` traceback from
    keras.utils.set_random_seed. A usage error now, before TensorFlow loads."""
    from kseg import recipes

    with pytest.raises(SystemExit) as exited:
        recipes.load(recipe).parse_args(["--seed", seed])
    assert exited.value.code == 2
    assert f"--seed must be in 0..{2**32 - 1}, got {seed}" in capsys.readouterr().err


# --- --tfds-dir / --output-dir that is a file or lies below one -----------------------------


def test_a_tfds_or_output_dir_that_is_a_file_is_a_usage_error(tmp_path, capsys):
    """``kseg prepare chaos --tfds-dir FILE`` and ``kseg train RECIPE --tfds-dir FILE`` (or
    an ``--output-dir`` / ``--tfds-dir`` below a file) ended in a bare NotADirectoryError
    traceback from TFDS' or pathlib's makedirs, after TensorFlow had loaded. A usage error
    now, naming the option and the file, before anything is read or written."""
    from kseg import cli, recipes
    from kseg.phantoms import xray

    afile = tmp_path / "notes.txt"
    afile.write_text("x")
    download = xray.write_generic(tmp_path / "download", num_images=3, size=16, seed=0)
    xray_recipe = recipes.load("xray_multiclass")
    for option, value, named in (("--tfds-dir", afile, afile),
                                 ("--tfds-dir", afile / "tfds", afile),
                                 ("--output-dir", afile / "run", afile)):
        with pytest.raises(SystemExit) as exited:
            xray_recipe.parse_args(["--data-dir", str(download), "--folds", "3", option,
                                    str(value)])
        assert exited.value.code == 2
        error = capsys.readouterr().err
        assert f"{option} {value}: {named} is a file; expected a folder" in error, error
    with pytest.raises(SystemExit) as exited:
        cli.main(["prepare", "xray", "--manual-dir", str(download), "--tfds-dir", str(afile)])
    assert exited.value.code == 2
    assert f"--tfds-dir {afile}: {afile} is a file" in capsys.readouterr().err
    assert sorted(path.name for path in tmp_path.iterdir()) == ["download", "notes.txt"]


def test_a_single_run_into_a_cross_validation_in_progress_is_refused(tmp_path, monkeypatch):
    """``kseg train RECIPE --validation-fold 1 --output-dir CV`` where CV's
    --validation-fold all stopped in a member: the single run wrote its config.json and
    best.keras into CV, after which the cross-validation could not be finished (its rerun
    refused CV as "a run trained with --validation-fold 1"). Refused before anything is
    prepared, as a single run into a built cross-validation already was."""
    from kseg.recipes import _common, cross_validation

    monkeypatch.chdir(tmp_path)
    run = tmp_path / "cv"
    _interrupted_run(cross_validation.member_dir(run, 1), validation_fold=1)
    prepared = []
    single = argparse.Namespace(output_dir=run, folds=3, test_fold=0, validation_fold=1,
                                data_dir=None, seed=0)
    with pytest.raises(LayoutError, match=re.escape(
            f"{run}: is a cross-validation (--validation-fold all) whose ensemble is not "
            "built yet")) as error:
        _common.start_training(single, prepared.append)
    assert "give a single run another --output-dir" in str(error.value)
    assert prepared == [] and sorted(path.name for path in run.iterdir()) == ["folds"]


# --- a run folder kseg cannot write ---------------------------------------------------------


@pytest.mark.parametrize("problem", [
    (13, "Permission denied"),  # a colleague's run on a read-only share
    (28, "No space left on device"),
])
def test_a_file_the_system_refuses_ends_in_one_line_naming_it(tmp_path, monkeypatch, capsys,
                                                            problem):
    """``kseg report RUN`` (or evaluate, predict ...) on a run folder it cannot write (a
    colleague's run on a read-only share; a full disk) ended in a bare PermissionError /
    OSError traceback. The README promises file problems as one line: ``kseg: error:
    <file>: <reason>``, exit status 1 (``--debug`` still shows the traceback)."""
    from kseg import cli, report

    run = tmp_path / "run"
    write_json(run / "config.json", _config({"output_dir": str(run)}))
    target = run / "report.html"

    def refused(run_dir, output=None):
        raise OSError(problem[0], problem[1], str(target))

    monkeypatch.setattr(report, "write_report", refused)
    assert cli.main(["report", str(run)]) == 1
    assert capsys.readouterr().err == f"kseg: error: {target}: {problem[1]}\n"
    with pytest.raises(OSError):
        cli.main(["--debug", "report", str(run)])
    # python examples/<script>.py: the same line, named after the script
    from kseg.recipes import _common

    monkeypatch.setattr("sys.argv", ["chaos_liver.py"])
    with pytest.raises(SystemExit) as exited:
        _common.run(lambda: refused(run))
    assert exited.value.code == 1
    assert capsys.readouterr().err == f"chaos_liver.py: error: {target}: {problem[1]}\n"


# --- evaluating an --mlflow run where MLflow is not installed --------------------------------


def test_an_mlflow_run_is_evaluated_where_mlflow_is_not_installed(tmp_path, monkeypatch):
    """A run trained with --mlflow on a cluster, evaluated on a laptop without MLflow: the
    table was scored and saved, then the command ended in an ImportError traceback from the
    MLflow logging (exit status 1 after a finished evaluation). Logging is what --mlflow
    adds, not the evaluation: it warns, naming what was not logged and how to log it."""
    import sys

    from kseg.recipes import _common

    monkeypatch.setitem(sys.modules, "mlflow", None)  # as where it is not installed
    run = tmp_path / "run"
    write_json(run / "config.json", _config({"output_dir": str(run), "mlflow": True}))
    args = argparse.Namespace(output_dir=run, mlflow=True, mlflow_uri=None)
    with pytest.warns(UserWarning, match=re.escape(
            f"{tmp_path / 'run'} was trained with --mlflow, but MLflow is not installed "
            "here: this evaluation is saved in its evaluation folder and not logged")):
        _common.log_evaluation(args)


# --- an --output-dir holding a config.json that is not a run's --------------------------------


def test_a_config_json_that_is_not_a_runs_is_not_written_over(tmp_path, monkeypatch):
    """``kseg train RECIPE --output-dir ~/project`` where the project keeps its own
    config.json (a common name): kseg read it as "no run here", prepared, and wrote its run
    config over it; a cross-validation did the same with its ensemble's. Refused now before
    anything is prepared or trained, naming the file; the file is left as it was."""
    from kseg.recipes import _common, cross_validation

    monkeypatch.chdir(tmp_path)
    project = tmp_path / "project"
    project.mkdir()
    (project / "config.json").write_text('{"lr": 0.1, "layers": [64, 64]}\n')
    before = (project / "config.json").read_bytes()
    prepared = []
    single = argparse.Namespace(output_dir=project, folds=3, test_fold=0, validation_fold=1,
                                data_dir=None, seed=0)
    with pytest.raises(LayoutError, match=re.escape(
            f"{project}: holds a config.json that is not a kseg run's")) as error:
        _common.start_training(single, prepared.append)
    assert "give another --output-dir" in str(error.value)
    recipe = argparse.Namespace(train=prepared.append)
    every = argparse.Namespace(**{**vars(single), "validation_fold": "all", "tfds_dir": None,
                                  "plan": "none"})
    with pytest.raises(LayoutError, match="holds a config.json that is not a kseg run's"):
        cross_validation.train(recipe, every)
    assert prepared == [] and (project / "config.json").read_bytes() == before
    assert sorted(path.name for path in project.iterdir()) == ["config.json"]


# --- a download holding a file name that is not UTF-8 -----------------------------------------


def test_a_file_name_that_is_not_utf8_is_listed_by_its_bytes(tmp_path):
    """A download extracted from an archive made on Windows can hold names in Latin-1
    (``Befund_M\\xfcller.txt``, a byte that is not UTF-8): Python reads such a name with a
    surrogate, and the source listing's UTF-8 encoding ended ``kseg prepare`` / ``kseg
    train --data-dir`` / ``kseg evaluate --input`` in a bare UnicodeEncodeError traceback,
    before the builder (which may never read that file) was asked. The name is listed by
    its bytes, as the file system holds it."""
    import hashlib
    import os

    from kseg.recipes import _common

    download = tmp_path / "download"
    (download / "images").mkdir(parents=True)
    (download / "images" / "a.png").write_bytes(b"png")
    with open(os.path.join(os.fsencode(download), b"Befund_M\xfcller.txt"), "wb") as handle:
        handle.write(b"notes")
    listing = _common.source_listing(download)
    expected = b"Befund_M\xfcller.txt\t5\nimages/a.png\t3"
    assert listing["files"] == 2
    assert listing["listing_sha256"] == hashlib.sha256(expected).hexdigest()
