"""Run folders reused, rerun, moved and evaluated on several inputs (session 24).

Each case is checked against a hand-written run folder or config, file contents written
before the command, or a count of what was called, never against kseg's own description
of itself. No test trains a real network.
"""

import argparse
import dataclasses
import json
import pathlib
import re
import shutil
import warnings

import pytest

from kseg.recipes.run_config import CONFIG_VERSION, write_json


def _config(arguments: dict, recipe="chaos_liver", **extra) -> dict:
    return {"kseg_config_version": CONFIG_VERSION, "recipe": recipe, "arguments": arguments,
            "seed": 0, "created": "2026-12-02T03:00:00+00:00", "versions": {},
            "git_commit": None, "dataset": {"name": "chaos"}, "labels": {"liver": 1},
            "inference": {}, **extra}  # fmt: skip


def test_a_member_of_a_moved_cross_validation_reads_the_moved_tfds_and_phantom(tmp_path):
    """A member's config.json records RUN/tfds and RUN/phantom of its cross-validation,
    outside its own folder RUN/folds/fold_1. Evaluated alone after the whole
    cross-validation folder was moved, it read them at the old place (which no longer
    exists, or is another run's)."""
    from kseg.recipes import load_run

    old = tmp_path / "runs" / "cv"
    member = {"output_dir": str(old / "folds" / "fold_1"), "data_dir": None,
              "manual_dir": str(old / "phantom_chaos"), "tfds_dir": str(old / "tfds"),
              "validation_fold": 1, "folds": 3, "test_fold": 0, "seed": 0}
    write_json(old / "folds" / "fold_1" / "config.json", _config(member))
    moved = tmp_path / "elsewhere" / "cv moved"
    moved.parent.mkdir()
    shutil.move(old, moved)
    _, args = load_run(moved / "folds" / "fold_1")
    assert args.output_dir == moved / "folds" / "fold_1"
    assert (args.manual_dir, args.tfds_dir) == (moved / "phantom_chaos", moved / "tfds")
    # a --data-dir and a --tfds-dir outside the cross-validation stay as recorded
    shared = tmp_path / "data"
    write_json(moved / "folds" / "fold_1" / "config.json", _config(
        {**member, "data_dir": str(shared), "manual_dir": str(shared),
         "tfds_dir": str(tmp_path / "prepared")}))  # fmt: skip
    _, args = load_run(moved / "folds" / "fold_1")
    assert (args.manual_dir, args.tfds_dir) == (shared, tmp_path / "prepared")
    # a run that is no member (its folder not in a folds/ folder) is not remapped upward
    single = {**member, "output_dir": str(tmp_path / "single" / "run"),
              "manual_dir": str(tmp_path / "single" / "phantom_chaos"),
              "tfds_dir": str(tmp_path / "single" / "tfds")}
    write_json(tmp_path / "other" / "run" / "config.json", _config(single))
    _, args = load_run(tmp_path / "other" / "run")
    assert args.tfds_dir == tmp_path / "single" / "tfds"


def test_out_of_fold_scoring_of_a_moved_cross_validation_reads_the_moved_tfds(
    tmp_path, monkeypatch
):
    """Rerunning a moved cross-validation scores each member's out-of-fold predictions
    again when the member is newer than its scores; the out-of-fold run folder copied the
    member's recorded paths, so it read CV/tfds at the old place."""
    from kseg.inference import ensemble
    from kseg.recipes import cross_validation

    old = tmp_path / "runs" / "cv"
    member = {"output_dir": str(old / "folds" / "fold_1"), "data_dir": None,
              "manual_dir": str(old / "phantom_chaos"), "tfds_dir": str(old / "tfds"),
              "validation_fold": 1, "folds": 3, "test_fold": 0, "seed": 0}
    write_json(old / "folds" / "fold_1" / "config.json", _config(member))
    (old / "folds" / "fold_1" / "best.keras").write_bytes(b"model")
    moved = tmp_path / "moved"
    shutil.move(old, moved)
    monkeypatch.setattr(ensemble, "ensemble_model", lambda *args, **kwargs: None)
    monkeypatch.setattr(cross_validation, "_save_model",
                        lambda model, path: path.write_bytes(b"ensemble"))
    scored = []
    recipe = argparse.Namespace(evaluate=lambda args, split: scored.append(args))
    args = argparse.Namespace(output_dir=moved)
    cross_validation._out_of_fold_run(recipe, args, 1, ())
    (view_args,) = scored
    assert view_args.output_dir == moved / "folds" / "fold_1" / "out_of_fold"
    assert (view_args.tfds_dir, view_args.manual_dir) == (moved / "tfds",
                                                          moved / "phantom_chaos")


@dataclasses.dataclass
class _BuilderConfig:
    name: str
    num_folds: int


def test_two_inputs_of_one_folder_name_are_evaluated_into_folders_of_their_own(
    tmp_path, monkeypatch
):
    """``kseg evaluate RUN --input A/test`` then ``--input B/test``: both were named
    ``input-test``, so B's scores.csv replaced A's (and A's case files were deleted as of
    no patient of B's table), and B's dataset was prepared over A's. Each input keeps its
    own results and prepared dataset; evaluating A again writes into A's folder."""
    from kseg.evaluation import PatientTable
    from kseg.recipes import _common, _evaluation

    prepared = []
    monkeypatch.setattr(_common, "is_prepared", lambda builder: False)
    monkeypatch.setattr(_common, "prepare", lambda builder, *args: prepared.append(builder))
    run = tmp_path / "run"
    inputs = {}
    for site in ("a", "b"):
        inputs[site] = tmp_path / site / "test"
        inputs[site].mkdir(parents=True)
        (inputs[site] / f"{site}.png").write_bytes(site.encode())

    def evaluate(site):  # what each recipe's evaluate does with an input folder
        name = _common.evaluation_name("test", inputs[site])
        builder = _evaluation.input_builder(argparse.Namespace, _BuilderConfig("x", 5),
                                            inputs[site], run, name)
        folder = _evaluation.evaluation_folder(run, name)
        _evaluation.save_table(PatientTable([{"patient_id": site, "dice": 0.5}]), folder)
        (folder / "cases").mkdir(exist_ok=True)
        (folder / "cases" / f"{site}.npz").write_bytes(site.encode())
        return folder, pathlib.Path(builder.data_dir)

    folder_a, data_a = evaluate("a")
    scores_a = (folder_a / "scores.csv").read_text()
    folder_b, data_b = evaluate("b")
    assert folder_a == run / "evaluation" / "input-test" and folder_b != folder_a
    assert folder_b.parent == folder_a.parent
    assert (folder_a / "scores.csv").read_text() == scores_a
    assert (folder_a / "cases" / "a.npz").read_bytes() == b"a"
    assert data_a == run / "tfds-input-test" and data_b not in (data_a, folder_b)
    assert evaluate("a")[::-1] == (data_a, folder_a)
    assert evaluate("b")[::-1] == (data_b, folder_b)
    # an evaluation folder that records no input (written before kseg recorded it) is kept
    (folder_a / _evaluation.INPUT_RECORD).unlink()
    folder = _evaluation.evaluation_folder(run, _common.evaluation_name("test", inputs["a"]))
    assert folder not in (folder_a, folder_b)
    assert (folder_a / "scores.csv").read_text() == scores_a


def _trained_run(run, *, finished, backup=False, history=True) -> pathlib.Path:
    """A run folder as kseg train leaves it: config.json, best.keras, history.csv,
    training.json saying it ``finished`` (a time, or None; ``...``: no training.json, a
    run of a kseg that did not write it) and a resume backup holding weights when
    ``backup``."""
    extra = {"plan": {"plan": "auto", "options": {"image_size": "plan", "epochs": "plan",
                                                  "batch_size": "command line"}}}
    write_json(run / "config.json", _config(
        {"output_dir": str(run), "data_dir": None, "seed": 0, "test_fold": 0,
         "validation_fold": 1, "folds": 3, "epochs": 1, "batch_size": 2,
         "learning_rate": 1e-3, "image_size": 64}, recipe="xray_multiclass",
        **extra))  # fmt: skip
    if finished is not ...:
        write_json(run / "training.json", {"started": "2026-12-03T08:00:00+00:00",
                                           "finished": finished})
    (run / "best.keras").write_bytes(b"the model evaluation/ describes")
    if history:
        (run / "history.csv").write_text("epoch,loss\n0,0.5\n")
    if backup:
        (run / "backup").mkdir()
        (run / "backup" / "latest.weights.h5").write_bytes(b"weights")
    return run


@pytest.mark.parametrize(("finished", "backup", "history", "is_finished"), [
    ("2026-12-03T09:00:00+00:00", False, True, True),
    (None, False, True, False),  # best.keras of epoch 0, killed before the first backup
    ("2026-12-03T09:00:00+00:00", True, True, False),  # backup: resumed (kept as it was)
    (..., False, True, True),  # a finished run of an earlier kseg
    (..., True, True, False),  # an interrupted run of an earlier kseg
    (..., False, False, False),
])  # fmt: skip
def test_which_run_folders_count_as_finished(tmp_path, finished, backup, history,
                                             is_finished):
    from kseg.recipes import run_config

    run = _trained_run(tmp_path / "run", finished=finished, backup=backup, history=history)
    assert (run_config.finished_training(run) is not None) == is_finished
    (run / "best.keras").unlink()
    assert run_config.finished_training(run) is None


def test_rerunning_a_finished_run_does_not_train_it_again(tmp_path, capsys):
    """``kseg train`` (or an example) run again on a folder whose training finished
    trained again from epoch 0 and replaced best.keras, while evaluation/ and report.html
    still described the earlier model. As nnU-Net's --c on a finished fold, kseg now says
    it finished and goes on with its best.keras, evaluated with the options it was trained
    with (the image size its plan chose, not the hand-picked value a command that left it
    to the plan holds before the plan is read); options given otherwise are named as not
    used. A rerun asking for other folds
    is refused: that best.keras was chosen on other patients. An interrupted run still
    resumes."""
    from kseg.errors import LayoutError
    from kseg.recipes import _common, cross_validation

    run = _trained_run(tmp_path / "run", finished="2026-12-03T09:00:00+00:00")
    model = (run / "best.keras").read_bytes()
    prepared = []

    def command(**changes):
        return argparse.Namespace(**{
            "output_dir": run, "seed": 0, "batch_size": 2, "learning_rate": 1e-3,
            "epochs": 5, "image_size": 256, "data_dir": None, "test_fold": 0,
            "validation_fold": 1, "folds": 3, "plan": "auto",
            "plan_given": ["batch_size", "epochs"], **changes})  # fmt: skip

    def train_run(args):  # a recipe's _train: start_training, then fit
        _common.start_training(args, prepared.append)
        raise AssertionError("trained a finished run again")

    with pytest.raises(_common.TrainingFinished, match="best.keras"):
        _common.start_training(command(), prepared.append)
    args = command()
    assert cross_validation.train_for_main(None, args, train_run) == (
        run / "best.keras", 0.0, True)
    assert prepared == [] and (run / "best.keras").read_bytes() == model
    assert (args.image_size, args.epochs, args.output_dir) == (64, 1, run)
    out = capsys.readouterr().out
    assert str(run) in out and "finished" in out and "remove" in out
    # --image-size was left to the plan: 256 is the hand-picked value before the plan
    assert "--epochs 1 (now 5)" in out and "--image-size" not in out
    for changes, named in (({"test_fold": 2, "validation_fold": 0}, "--test-fold 0 (now 2)"),
                           ({"data_dir": tmp_path}, f"--data-dir none (now {tmp_path})")):
        with pytest.raises(LayoutError, match=re.escape(named)) as refused:
            _common.start_training(command(**changes), prepared.append)
        assert not isinstance(refused.value, _common.TrainingFinished)
    # another recipe's training into it (its prepare step is never reached)
    from kseg import recipes

    with pytest.raises(LayoutError, match=re.escape("the recipe xray_multiclass (now "
                                                    "chaos_liver)")):
        _common.start_training(command(), recipes.load("chaos_liver").prepare_planned)
    assert prepared == [] and (run / "best.keras").read_bytes() == model
    # an interrupted run (its resume backup) still resumes
    (run / "backup").mkdir()
    (run / "backup" / "latest.weights.h5").write_bytes(b"weights")
    start = _common.start_training(args, lambda args: prepared.append(args) or "builder")
    assert start.builder == "builder" and prepared == [args]


@pytest.mark.filterwarnings("ignore:BestModelCheckpoint")  # the test has no validation
def test_a_finished_fit_is_recorded_in_training_json(tmp_path):
    """The record a rerun reads: kseg's fit writes when its training finished into
    RUN/training.json, not config.json, whose keys MLflow logs as params that cannot
    change (one tiny model, one epoch of one step)."""
    import keras
    import numpy as np
    import tensorflow as tf

    from kseg.recipes import _common, run_config

    run = _trained_run(tmp_path / "run", finished=None, history=False)
    (run / "best.keras").unlink()
    args = argparse.Namespace(output_dir=run, epochs=1, max_minutes=None, mlflow=False)
    start = _common.TrainingStart(tf.distribute.get_strategy(), True, None, args)
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.compile(optimizer="adam", loss="mse")
    data = tf.data.Dataset.from_tensor_slices((np.ones((2, 2), "float32"),
                                               np.ones((2, 1), "float32"))).batch(2)
    record = json.loads((run / "training.json").read_text())
    _common.fit(start, args, model, data, data, None, reduce_lr_patience=None)
    finished = json.loads((run / "training.json").read_text())
    assert finished["started"] == record["started"] and finished["finished"] is not None
    assert run_config.finished_training(run) is None  # no best.keras: nothing validated
    (run / "best.keras").write_bytes(b"model")
    assert run_config.finished_training(run) == finished["finished"]


def _listing(folder: pathlib.Path) -> dict:
    return {path.relative_to(folder).as_posix(): path.read_bytes()
            for path in sorted(folder.rglob("*")) if path.is_file()}


def test_prepare_into_its_own_download_is_a_usage_error_before_anything_is_written(
    tmp_path, capsys
):
    """``kseg prepare xray --manual-dir D --tfds-dir D/tfds`` wrote the dataset into the
    download (which kseg never writes to), and the next prepare or train of D found D
    holding other files than the dataset was prepared from and refused it. As ``kseg
    train`` refuses a --tfds-dir inside --data-dir, so does prepare, before TensorFlow."""
    from kseg import cli
    from kseg.phantoms import xray

    download = tmp_path / "cxr"
    xray.write_generic(download, num_images=3, size=16, seed=0)
    before = _listing(download)
    for inside in (download / "tfds", download):
        with pytest.raises(SystemExit) as exited:
            cli.main(["prepare", "xray", "--manual-dir", str(download), "--tfds-dir",
                      str(inside)])
        assert exited.value.code == 2
        err = capsys.readouterr().err
        assert f"--tfds-dir {inside} lies in --manual-dir {download}" in err
    assert _listing(download) == before


def test_a_cross_validation_into_the_folder_of_a_single_run_is_refused(tmp_path):
    """``kseg train RECIPE --validation-fold all --output-dir RUN`` where RUN holds a
    trained single run: the members trained in RUN/folds/ and the ensemble then replaced
    RUN/best.keras and RUN/config.json, while RUN/evaluation/ and report.html still scored
    the single model (the case a rerun of a finished run had, one level up). Refused
    before any member trains, naming the folder."""
    from kseg.errors import LayoutError
    from kseg.recipes import cross_validation

    run = _trained_run(tmp_path / "run", finished="2026-12-03T09:00:00+00:00")
    config = (run / "config.json").read_bytes()
    trained = []
    recipe = argparse.Namespace(train=trained.append)
    args = argparse.Namespace(output_dir=run, folds=3, test_fold=0, validation_fold="all",
                              seed=0, tfds_dir=None, plan="none")
    with pytest.raises(LayoutError, match=re.escape(f"{run}: holds a run trained with "
                                                    "--validation-fold 1")):
        cross_validation.train(recipe, args)
    assert trained == [] and (run / "config.json").read_bytes() == config
    assert not (run / "folds").exists()
    # and a single run into the folder of a built cross-validation, whose config.json
    # and best.keras are its ensemble's
    from kseg.recipes import _common

    ensemble = tmp_path / "cv"
    write_json(ensemble / "config.json", _config(
        {"output_dir": str(ensemble), "data_dir": None, "seed": 0, "test_fold": 0,
         "validation_fold": "all", "folds": 3}))  # fmt: skip
    (ensemble / "best.keras").write_bytes(b"ensemble")
    single = argparse.Namespace(output_dir=ensemble, folds=3, test_fold=0, validation_fold=1,
                                data_dir=None, seed=0)
    with pytest.raises(LayoutError, match=re.escape("--validation-fold all (now 1)")):
        _common.start_training(single, trained.append)
    assert trained == [] and (ensemble / "best.keras").read_bytes() == b"ensemble"


def test_evaluating_a_split_of_a_dataset_prepared_again_from_other_data_warns(
    tmp_path, monkeypatch
):
    """``kseg evaluate RUN --split test`` after the run's prepared dataset was prepared
    again from other data (RUN/tfds deleted to save space and the download grown, or a
    shared --tfds-dir prepared anew): the test fold is drawn from other patients, some of
    which the model may have trained on, and the table was printed without a word.
    config.json records the fingerprint of the dataset the run trained on; a split
    evaluation now warns when the prepared dataset has another."""
    from types import SimpleNamespace

    from kseg import cli, recipes
    from kseg.recipes import run_config

    def builder(examples):
        data_dir = tmp_path / "tfds" / "xray" / "generic" / "1.0.0"
        data_dir.mkdir(parents=True, exist_ok=True)
        (data_dir / "xray-fold0.tfrecord").write_bytes(b"x" * examples)
        return SimpleNamespace(data_dir=str(data_dir), info=SimpleNamespace(splits={
            f"fold{fold}": SimpleNamespace(num_examples=examples) for fold in range(3)}))

    run = _trained_run(tmp_path / "run", finished="2026-12-03T09:00:00+00:00")
    config = json.loads((run / "config.json").read_text())
    config["dataset"]["fingerprint"] = run_config.dataset_fingerprint(builder(4))
    write_json(run / "config.json", config)
    recipe = recipes.load("xray_multiclass")
    evaluated = []
    monkeypatch.setattr(recipe, "evaluate", lambda args, **kwargs: evaluated.append(kwargs))
    for examples, changed in ((4, False), (6, True)):
        monkeypatch.setattr(recipe, "prepare", lambda args, examples=examples: builder(examples))
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            assert cli.main(["evaluate", str(run), "--split", "test"]) == 0
        said = [str(warning.message) for warning in caught
                if issubclass(warning.category, cli.DatasetChangedWarning)]
        assert len(said) == changed
        if changed:
            assert str(run) in said[0] and "other patients" in said[0]
    assert [kwargs["split"] for kwargs in evaluated] == ["test", "test"]


def test_a_moved_cross_validation_keeps_its_finished_members_on_a_rerun(tmp_path,
                                                                        monkeypatch):
    """The same ``--validation-fold all`` command run again on a cross-validation that was
    moved (or named from another working folder) found every finished member "trained
    with other options (manual_dir, output_dir, tfds_dir)": the folders a member's record
    holds are where the cross-validation was. They follow the cross-validation; an option
    that changed is still named."""
    from kseg.errors import LayoutError
    from kseg.recipes import cross_validation, run_config

    old = tmp_path / "runs" / "cv"
    first = argparse.Namespace(output_dir=old, folds=3, test_fold=0, validation_fold="all",
                               seed=0, epochs=2, data_dir=None, tfds_dir=None,
                               manual_dir=old / "phantom_chaos")
    member = cross_validation.member_args(first, 2)
    member.plan = str(old / "folds" / "fold_1" / "plan.json")  # the first member's
    member.output_dir.mkdir(parents=True)
    (member.output_dir / "best.keras").write_bytes(b"member")
    write_json(member.output_dir / cross_validation.FINISHED_FILE,
               {"validation_fold": 2, "arguments": run_config.json_arguments(member)})
    moved = tmp_path / "moved"
    shutil.move(old, moved)
    for output_dir in (moved, pathlib.Path("moved")):  # absolute, or from tmp_path
        monkeypatch.chdir(tmp_path)
        again = argparse.Namespace(**{**vars(first), "output_dir": output_dir,
                                      "manual_dir": output_dir / "phantom_chaos"})
        kept = cross_validation.member_args(again, 2)
        kept.plan = str(output_dir / "folds" / "fold_1" / "plan.json")
        assert cross_validation._finished_record(kept)
    changed = argparse.Namespace(**{**vars(kept), "epochs": 3})
    with pytest.raises(LayoutError, match=re.escape("other options (epochs)")):
        cross_validation._finished_record(changed)
