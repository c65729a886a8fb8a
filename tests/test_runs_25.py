"""Run folders, the kseg command, the report, resume, tuning and Beam prediction (session 25).

Each case is checked against a hand-written run folder or config, files written in the test
with PIL / pydicom, or what a stub records being called; no test trains a network.
"""

import types

from kseg.recipes.run_config import CONFIG_VERSION, write_json


def _config(arguments: dict, recipe="xray_multiclass", **extra) -> dict:
    return {"kseg_config_version": CONFIG_VERSION, "recipe": recipe, "arguments": arguments,
            "seed": 0, "created": "2026-12-03T03:00:00+00:00", "versions": {},
            "git_commit": None, "dataset": {"name": "xray", "config": "phantom_3class_3fold"},
            "labels": {"lungs": 1}, "inference": {}, **extra}  # fmt: skip


def _fake_builder(data_dir):
    """What kseg.recipes._common.prepare and dataset_fingerprint read of a prepared TFDS
    builder: its folder (holding dataset_info.json) and split sizes."""
    data_dir.mkdir(parents=True)
    (data_dir / "dataset_info.json").write_text("{}")
    return types.SimpleNamespace(
        data_dir=str(data_dir), is_prepared=lambda: True,
        info=types.SimpleNamespace(splits={"fold0": types.SimpleNamespace(num_examples=3)}),
    )  # fmt: skip


# --- 1. kseg evaluate --split said "Using the dataset prepared in ..." twice ----------------


def test_evaluate_split_names_the_prepared_dataset_once(tmp_path, monkeypatch, capsys):
    """``kseg evaluate RUN --split test`` prepares the dataset to check its fingerprint, then
    the recipe's evaluate prepares it again to score it: the line came out twice."""
    from kseg import cli, recipes
    from kseg.recipes import _common, run_config

    run = tmp_path / "run"
    builder = _fake_builder(tmp_path / "tfds" / "xray" / "generic" / "1.1.0")
    arguments = {"output_dir": str(run), "data_dir": None, "seed": 0, "folds": 3,
                 "test_fold": 0, "validation_fold": 1}
    fingerprint = run_config.dataset_fingerprint(builder)
    write_json(run / "config.json",
               _config(arguments, dataset={"name": "xray", "fingerprint": fingerprint}))
    (run / "best.keras").write_bytes(b"model")
    module = recipes.load("xray_multiclass")

    def prepare(args):  # the recipe's prepare, on the prepared dataset
        _common.prepare(builder, tmp_path / "download")
        return builder

    scored = []
    monkeypatch.setattr(module, "prepare", prepare)
    monkeypatch.setattr(module, "evaluate", lambda args, split, input_dir=None: scored.append(
        prepare(args)))  # as the recipes' evaluate does
    assert cli.main(["evaluate", str(run), "--split", "test"]) == 0
    assert scored == [builder]
    output = capsys.readouterr().out
    assert output.count(f"Using the dataset prepared in {builder.data_dir}") == 1, output
