"""``--validation-fold all``: one member per non-test fold, RUN/best.keras their mirrored
ensemble, post-processing chosen on the pooled out-of-fold predictions, resumable.

One tiny cross-validation of the X-ray phantom (4 folds: 3 members, one epoch each) is
shared by the tests; every figure it records is checked against numpy computed here from
the members loaded on their own.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import types

import numpy as np
import pytest
from child_processes import run_forked

from kseg import cli
from kseg.recipes import _common, cross_validation

REPOSITORY = pathlib.Path(__file__).resolve().parents[1]
# --plan none: the recipe's hand-picked options (a plan would time training steps first)
OPTIONS = [
    "--plan", "none", "--validation-fold", "all", "--folds", "4", "--phantom-images", "8",
    "--phantom-size", "32", "--image-size", "32", "--epochs", "1", "--batch-size", "2",
    "--base-filters", "4",
]  # fmt: skip


def _recipe():
    from kseg import recipes

    return recipes.load("xray_multiclass")


def _counting(module, calls: list):
    """``module`` with a ``train`` that records each member's validation fold."""
    counted = types.SimpleNamespace(**{name: getattr(module, name) for name in dir(module)
                                       if not name.startswith("__")})

    def train(args):
        calls.append(args.validation_fold)
        return module.train(args)

    counted.train = train
    return counted


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A finished cross-validation: ``(args, folder, member folds trained)``."""
    folder = tmp_path_factory.mktemp("cross_validation") / "run"
    module = _recipe()
    args = module.parse_args([*OPTIONS, "--output-dir", str(folder)])
    calls = []
    cross_validation.train(_counting(module, calls), args)
    return args, folder, calls


def _members(folder):
    import kseg

    return {fold: kseg.load_model(folder / "folds" / f"fold_{fold}" / "best.keras",
                                  compile=False) for fold in (1, 2, 3)}


def _images(args, split: str):
    """``(image_id, model input (1, s, s, 1), mask (1, H, W))`` of one split, made as the
    recipe makes them."""
    module = _recipe()
    builder = module.prepare(args)
    return [(image_id, inputs, mask)
            for image_id, inputs, mask, _ in module.image_cases(builder, split, args.image_size)]


def test_members_are_complete_runs_of_each_non_test_fold(run):
    args, folder, calls = run
    assert calls == [1, 2, 3]
    config = json.loads((folder / "config.json").read_text())
    assert config["arguments"]["validation_fold"] == "all"
    assert [m["validation_fold"] for m in config["ensemble"]["members"]] == [1, 2, 3]
    # the recipe's augmentation flips nothing (left and right lungs), so neither does TTA
    assert config["ensemble"]["mirror_axes"] == []
    # RUN/best.keras holds the ensemble's mirroring: evaluation must not mirror it again
    assert config["inference"]["mirror_axes"] == []
    for fold in (1, 2, 3):
        member = json.loads((folder / "folds" / f"fold_{fold}" / "config.json").read_text())
        assert member["arguments"]["validation_fold"] == fold
        assert (folder / "folds" / f"fold_{fold}" / "history.csv").is_file()


def test_ensemble_model_is_the_numpy_mean_over_members_and_flips(run):
    from kseg.inference.ensemble import ensemble_model

    _, folder, _ = run
    members = _members(folder)
    batch = np.random.default_rng(0).random((2, 32, 32, 1), dtype=np.float32)
    expected = np.mean([np.flip(model.predict(np.flip(batch, axes), verbose=0), axes)
                        for model in members.values()
                        for axes in [(), (1,), (2,), (1, 2)]], axis=0)
    mirrored = ensemble_model(list(members.values()), mirror_axes=(0, 1))
    np.testing.assert_allclose(mirrored.predict(batch, verbose=0), expected, atol=1e-6)
    # RUN/best.keras: the plain mean (the recipe mirrors no axis)
    import kseg

    saved = kseg.load_model(folder / "best.keras")
    plain = np.mean([model.predict(batch, verbose=0) for model in members.values()], axis=0)
    np.testing.assert_allclose(saved.predict(batch, verbose=0), plain, atol=1e-6)


def test_ensemble_reloads_in_a_fresh_process(run, tmp_path, zygote):
    import kseg

    _, folder, _ = run
    batch = np.random.default_rng(1).random((1, 32, 32, 1), dtype=np.float32)
    np.save(tmp_path / "batch.npy", batch)
    code = ("import sys, numpy as np, kseg; m = kseg.load_model(sys.argv[1]); "
            "np.save(sys.argv[3], m.predict(np.load(sys.argv[2]), verbose=0))")
    # forked from a process that imported TensorFlow and Keras, never kseg
    returncode, _, stderr = run_forked(
        zygote, code, [folder / "best.keras", tmp_path / "batch.npy", tmp_path / "out.npy"],
        stderr_path=tmp_path / "child.stderr",
    )
    assert returncode == 0, stderr[-3000:]
    here = kseg.load_model(folder / "best.keras").predict(batch, verbose=0)
    np.testing.assert_allclose(np.load(tmp_path / "out.npy"), here, atol=1e-6)


def test_postprocessing_is_chosen_on_the_out_of_fold_predictions(run):
    from kseg.evaluation import choose_postprocessing

    args, folder, _ = run
    members = _members(folder)
    cases = []
    for fold, model in members.items():
        for image_id, inputs, mask in _images(args, f"fold{fold}"):
            labels = model.predict(inputs, verbose=0).argmax(axis=-1)
            cases.append((image_id, mask, labels, None))
    config = json.loads((folder / "config.json").read_text())
    expected = choose_postprocessing(cases, labels=config["labels"], warn_empty=False)
    recorded = config["ensemble"]["postprocessing"]
    assert recorded["labels"] == list(expected.labels)
    assert recorded["dice_without"] == pytest.approx(expected.dice_without, abs=1e-6)
    assert recorded["dice_with"] == pytest.approx(expected.dice_with, abs=1e-6)
    assert config["inference"]["postprocess_labels"] == list(expected.labels)
    # the pooled out-of-fold table holds every non-test image once
    table = cross_validation.evaluate(_recipe(), args, split="validation")
    assert sorted(table.patient_ids) == sorted(case[0] for case in cases)


def test_evaluate_test_split_scores_the_ensemble(run):
    from kseg.inference import keep_largest_component
    from kseg.metrics import dice

    args, folder, _ = run
    assert cli.main(["evaluate", str(folder), "--split", "test"]) == 0
    members = _members(folder)
    scores = (folder / "evaluation" / "test" / "scores.csv").read_text().splitlines()
    header = scores[0].split(",")
    rows = {line.split(",")[0]: line.split(",") for line in scores[1:]}
    test_images = _images(args, "fold0")
    assert sorted(rows) == sorted(image_id for image_id, _, _ in test_images)
    # the clean-up chosen on the out-of-fold predictions applies to the test fold too
    chosen = json.loads((folder / "config.json").read_text())["inference"]["postprocess_labels"]
    for image_id, inputs, mask in test_images:
        mean = np.mean([m.predict(inputs, verbose=0) for m in members.values()], axis=0)
        labels = mean.argmax(axis=-1)
        if chosen:
            labels = keep_largest_component(labels, labels=chosen)
        case = np.load(folder / "evaluation" / "test" / "cases" / f"{image_id}.npz")
        np.testing.assert_array_equal(case["prediction"], labels)
        for name, value in json.loads((folder / "config.json").read_text())["labels"].items():
            expected = dice(mask == value, labels == value)
            assert float(rows[image_id][header.index(f"dice_{name}")]) == pytest.approx(
                expected, abs=1e-4)


def test_rerun_keeps_finished_members_and_resumes_the_rest(run):
    args, folder, _ = run
    kept = {fold: (folder / "folds" / f"fold_{fold}" / "best.keras").stat().st_mtime_ns
            for fold in (1, 2, 3)}
    # a crash while member 3 trained: its folder does not say it finished
    (folder / "folds" / "fold_3" / cross_validation.FINISHED_FILE).unlink()
    calls = []
    cross_validation.train(_counting(_recipe(), calls), args)
    assert calls == [3]
    for fold in (1, 2):
        assert (folder / "folds" / f"fold_{fold}" / "best.keras").stat().st_mtime_ns == kept[fold]
    calls.clear()
    cross_validation.train(_counting(_recipe(), calls), args)
    assert calls == []


def test_rerun_with_other_options_names_them(run):
    from kseg.errors import LayoutError

    args, _, _ = run
    changed = argparse.Namespace(**vars(args))
    changed.epochs = args.epochs + 1
    calls = []
    with pytest.raises(LayoutError, match="other options \\(epochs\\)"):
        cross_validation.train(_counting(_recipe(), calls), changed)
    assert calls == []


def test_an_unreadable_member_record_names_its_file(tmp_path):
    from kseg.errors import UnreadableFileError

    member = argparse.Namespace(output_dir=cross_validation.member_dir(tmp_path, 1))
    member.output_dir.mkdir(parents=True)
    record = member.output_dir / cross_validation.FINISHED_FILE
    record.write_text('{"validation_fold": 1,', encoding="utf-8")  # cut off mid-write
    with pytest.raises(UnreadableFileError) as raised:
        cross_validation._finished_record(member)
    assert str(raised.value).startswith(f"{record}: is not a readable JSON file")
    assert record.read_text(encoding="utf-8") == '{"validation_fold": 1,'


def _usage_error(capsys, call) -> str:
    with pytest.raises(SystemExit) as raised:
        call()
    assert raised.value.code == 2
    message = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
    assert len(message) == 1
    return message[0]


@pytest.mark.parametrize("argv, expected", [
    (["--folds", "all"], "use --validation-fold all"),
    (["--folds", "2", "--validation-fold", "all"], "--folds must be at least 3"),
    (["--folds", "1", "--validation-fold", "all", "--test-fold", "none"],
     "--folds must be at least 2"),
    (["--validation-fold", "all", "--strategy", "multi-worker"], "one after another"),
    (["--validation-fold", "every"], "expected a fold number or all"),
])  # fmt: skip
def test_usage_errors(capsys, tmp_path, argv, expected):
    out = ["--output-dir", str(tmp_path / "run")]
    assert expected in _usage_error(capsys, lambda: _recipe().parse_args([*argv, *out]))
    assert expected in _usage_error(
        capsys, lambda: cli.main(["train", "xray_multiclass", *argv, *out]))


def test_tuning_refuses_all_folds(capsys, tmp_path):
    line = _usage_error(capsys, lambda: cli.main(
        ["tune", "xray_multiclass", "--validation-fold", "all", "--output-dir", str(tmp_path)]))
    assert "applies to training runs" in line


def test_without_test_fold_members_cover_every_fold():
    args = types.SimpleNamespace(folds=4, test_fold=None, validation_fold="all")
    assert _common.member_folds(args) == [0, 1, 2, 3]
    assert _common.fold_splits(args) == {"train": "fold0+fold1+fold2+fold3"}
    args.test_fold = 2
    assert _common.member_folds(args) == [0, 1, 3]
    assert _common.fold_splits(args) == {"train": "fold0+fold1+fold3", "test": "fold2"}


def test_a_recipes_own_train_refuses_all_folds(tmp_path):
    from kseg.errors import KsegError

    module = _recipe()
    args = module.parse_args([*OPTIONS, "--output-dir", str(tmp_path / "run")])
    with pytest.raises(KsegError, match="cross_validation.train"):
        module.train(args)


def test_members_share_the_plan_the_first_member_derived(tmp_path, monkeypatch):
    """With --plan auto only the first member derives a plan; the others train from its
    plan.json, also when a rerun resumes after the first member finished."""
    seen, crash = [], [True]

    def train(member):
        seen.append((member.validation_fold, member.plan))
        folder = pathlib.Path(member.output_dir)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "best.keras").write_bytes(b"")
        (folder / "plan.json").write_text(json.dumps({"fold": member.validation_fold}))
        if member.validation_fold == 3 and crash:
            crash.clear()  # the first run crashes here, the rerun does not
            raise RuntimeError("crash in the last member")

    module = types.SimpleNamespace(train=train)
    monkeypatch.setattr(cross_validation, "build_ensemble", lambda module, args: "built")
    args = argparse.Namespace(plan="auto", folds=4, test_fold=0, validation_fold="all",
                              output_dir=tmp_path / "run", tfds_dir=None)
    with pytest.raises(RuntimeError, match="crash"):
        cross_validation.train(module, args)
    first_plan = os.fspath(cross_validation.member_dir(tmp_path / "run", 1) / "plan.json")
    assert seen == [(1, "auto"), (2, first_plan), (3, first_plan)]

    seen.clear()
    assert cross_validation.train(module, args) == "built"
    assert seen == [(3, first_plan)]  # members 1 and 2 kept, the crashed one retrained

    none_args = argparse.Namespace(**{**vars(args), "plan": "none",
                                      "output_dir": tmp_path / "hand_picked"})
    seen.clear()
    cross_validation.train(module, none_args)
    assert [plan for _, plan in seen] == ["none", "none", "none"]
