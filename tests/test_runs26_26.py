"""Run folders, the kseg command, evaluation and resume (session 26).

Each case is checked against a hand-written run folder or config, files written in the test,
or what a stub records being called; no test trains a network.
"""

import argparse
import re

import pytest
from test_runs_25 import _config, _fake_builder, _interrupted_run

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
