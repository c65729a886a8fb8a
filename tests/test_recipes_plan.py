"""--plan on the recipes: ``none`` is the session-15 recipe exactly, ``auto`` fills every
planned option the user did not give from kseg.plan and records where each came from.

Expected values are literal: the session-15 defaults as they stood in the recipe files
before plans, and hand-worked arithmetic for the plan's reading (epochs, cosine rates,
CT window, fingerprint cache).
"""

import json
import math
import pathlib

import pytest

from kseg.recipes import _planned, load, run_config

# The options (config.json "arguments") of each recipe's example with no arguments before
# --plan existed (kseg at commit 6637981), output folder and phantom paths left out.
SESSION_15 = {
    "chaos_liver": {
        "data_dir": None, "tfds_dir": None, "folds": 5, "test_fold": 0,
        "validation_fold": 1, "epochs": 12, "image_size": 128, "batch_size": 8,
        "base_filters": 16, "learning_rate": 2e-3, "seed": 0, "distribution": "default",
        "postprocess": "auto", "mlflow": False, "mlflow_uri": None,
        "phantom_patients": 10, "phantom_slices": 32, "phantom_size": 512,
    },
    "lctsc_lungs": {
        "data_dir": None, "config": "lungs", "tfds_dir": None, "folds": 5, "test_fold": 0,
        "validation_fold": 1, "epochs": 10, "image_size": 128, "batch_size": 8,
        "base_filters": 16, "learning_rate": 2e-3, "seed": 0, "distribution": "default",
        "mlflow": False, "mlflow_uri": None, "phantom_patients": 10,
        "phantom_test_patients": 2, "phantom_slices": 24, "phantom_size": 256,
        "layout": "tcia",
    },
    "xray_multiclass": {
        "data_dir": None, "config": "generic", "tfds_dir": None, "folds": 5, "test_fold": 0,
        "validation_fold": 1, "max_train": None, "image_size": 96, "epochs": 15,
        "max_minutes": None, "batch_size": 4, "base_filters": 16, "dropout": 0.0,
        "learning_rate": 1e-3, "seed": 0, "distribution": "default", "mlflow": False,
        "mlflow_uri": None, "phantom_images": 60, "phantom_size": 96,
    },
}
# What the hand-picked settings were as fixed code before they became options.
SESSION_15_FIXED = {
    "chaos_liver": {"depth": 3, "schedule": "plateau", "loss": "combo", "window": "abdomen",
                    "augment": "recipe"},
    "lctsc_lungs": {"depth": 3, "schedule": "plateau", "window": "lung", "augment": "recipe"},
    "xray_multiclass": {"depth": 3, "schedule": "plateau", "augment": "recipe"},
}
# Options new with --plan; each is None ("not given") unless set.
NEW_OPTIONS = {"plan": "none", "memory_budget_mb": None}
PATHS = ("output_dir", "manual_dir")


@pytest.mark.parametrize("name", sorted(SESSION_15))
def test_plan_none_is_the_session_15_recipe(name, tmp_path):
    recipe = load(name)
    args = recipe.parse_args(["--output-dir", str(tmp_path / "run"), "--plan", "none"])
    arguments = run_config.json_arguments(args)
    for path in PATHS:
        arguments.pop(path)
    expected = {**SESSION_15[name], **SESSION_15_FIXED[name], **NEW_OPTIONS,
                "max_minutes": None}
    assert arguments == expected
    # the config.json arguments of session 15 are all there, with their values
    assert {k: arguments[k] for k in SESSION_15[name]} == SESSION_15[name]


def test_plan_none_real_xray_keeps_its_real_data_defaults(tmp_path):
    data = tmp_path / "data"
    (data / "images").mkdir(parents=True)
    for k in range(5):
        (data / "images" / f"{k}.png").write_bytes(b"x")
    args = load("xray_multiclass").parse_args(["--data-dir", str(data), "--output-dir",
                                               str(tmp_path / "run"), "--plan", "none"])
    assert (args.image_size, args.epochs, args.batch_size) == (256, 40, 8)


@pytest.mark.parametrize("name", sorted(SESSION_15))
def test_plan_auto_remembers_the_given_options(name, tmp_path):
    recipe = load(name)
    args = recipe.parse_args(["--output-dir", str(tmp_path / "run"), "--image-size", "64",
                              "--learning-rate", "0.01"])
    assert args.plan == "auto" and args.plan_given == ["image_size", "learning_rate"]
    # complete before the plan is applied: the hand-picked values stand in
    assert args.batch_size == SESSION_15[name]["batch_size"] and args.depth == 3


@pytest.mark.parametrize("argv, message", [
    (["--plan", "nowhere.json"], "--plan must be auto, none or a plan.json file"),
    (["--memory-budget-mb", "0"], "--memory-budget-mb must be a positive number, got 0.0"),
    (["--depth", "4", "--image-size", "40"], "--image-size must be a multiple of 16"),
])
def test_plan_usage_errors(argv, message, tmp_path, capsys):
    with pytest.raises(SystemExit) as stopped:
        load("chaos_liver").parse_args(["--output-dir", str(tmp_path / "run"), *argv])
    assert stopped.value.code == 2
    assert message in capsys.readouterr().err


def test_msd_spleen_keeps_its_settings_and_says_why(capsys):
    recipe = load("msd_spleen")
    with pytest.raises(SystemExit):
        recipe.parse_args(["--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "--plan {none}" in help_text and "HighResNet has no poolings" in help_text
    with pytest.raises(SystemExit) as stopped:
        recipe.parse_args(["--plan", "auto"])
    assert stopped.value.code == 2


class _Plan:
    """The fields of kseg.plan.Plan that the recipes read."""

    def __init__(self, **fields):
        self.__dict__.update(fields)


PLAN = _Plan(patch_size=(112, 112), batch_size=20, depth=4, base_filters=16,
             optimizer={"name": "Adam", "learning_rate": 1e-3, "schedule": "cosine"},
             training_steps=269, seconds_per_step=0.3, normalization={
                 "scheme": "ct", "clip": [29.0, 93.0], "mean": 60.8, "std": 12.2})


def test_unet_settings_read_the_plan():
    args = _Namespace(plan_given=[], image_size=128)
    settings = _planned.unet_settings(PLAN, 192, args)
    # 192 slices in batches of 20: 10 steps of 0.3 s + 2 s overhead per epoch = 5 s;
    # 269 steps x 0.3 s = 80.7 s of training -> 16 epochs
    assert settings == {"image_size": 112, "batch_size": 20, "depth": 4, "base_filters": 16,
                        "learning_rate": 1e-3, "schedule": "cosine", "augment": "nnunet",
                        "epochs": 16}
    # a given --image-size of 32 keeps 4-pixel feature maps: log2(32 / 4) = 3 poolings
    given = _planned.unet_settings(PLAN, 192, _Namespace(plan_given=["image_size"],
                                                         image_size=32))
    assert given["depth"] == 3
    sgd = _Plan(**{**PLAN.__dict__, "optimizer": {"name": "SGD", "learning_rate": 0.01,
                                                  "schedule": "poly"}})
    with pytest.raises(ValueError, match="the plan's optimiser is SGD"):
        _planned.unet_settings(sgd, 192, _Namespace(plan="p.json", plan_given=[]))


def test_ct_window_is_the_foreground_percentile_range():
    assert _planned.ct_window(PLAN) == [61.0, 64.0]  # (29 + 93) / 2, 93 - 29


def test_cosine_rates_hand_computed():
    # 20 epochs: warm-up round(0.05 * 20) = 1 epoch, then 19 on the cosine
    rates = [_planned.cosine_rate(e, 20, 1e-3, 0.05) for e in range(20)]
    assert rates[0] == pytest.approx(1e-3)
    assert rates[1] == pytest.approx(1e-3 * 0.5 * (1 + math.cos(math.pi * 0.5 / 19)))
    assert rates[19] == pytest.approx(1e-3 * 0.5 * (1 + math.cos(math.pi * 18.5 / 19)))
    assert all(a > b for a, b in zip(rates[1:], rates[2:], strict=False))
    # 60 epochs: 3 warm-up epochs rising linearly
    assert [_planned.cosine_rate(e, 60, 3e-3, 0.05) for e in range(3)] == pytest.approx(
        [1e-3, 2e-3, 3e-3])
    assert _planned.cosine_rate(0, 1, 1e-3, 0.05) == pytest.approx(1e-3 * 0.5 * (1 + 0.0))


def test_window_argument():
    assert _planned.window_argument("abdomen") == "abdomen"
    assert _planned.window_argument("61,64") == [61.0, 64.0]
    with pytest.raises(Exception, match="window width must be > 0"):
        _planned.window_argument("61,0")


def test_fingerprint_is_cached_until_the_prepared_files_change(tmp_path, monkeypatch):
    from kseg import plan as kplan

    calls = []
    files = {"sha": "aaa"}

    def fake_fingerprint(builder):
        calls.append(builder)
        return kplan.Fingerprint(dataset={"name": "x"}, modality="CT", class_names=None,
                                 cases=[kplan.CaseStats("p", (2, 4, 4), (1.0, 1.0, 1.0),
                                                        {0: 31, 1: 1}, 1)],
                                 foreground_intensity=None, foreground_fraction={1: 1 / 32})

    monkeypatch.setattr(kplan, "fingerprint", fake_fingerprint)
    monkeypatch.setattr(run_config, "dataset_fingerprint", lambda builder: files["sha"])

    class Builder:
        class info:
            full_name = "x/1.0.0"

    args = _Namespace(output_dir=tmp_path)
    first = _planned.fingerprint(args, Builder)
    saved = json.loads((tmp_path / "fingerprint.json").read_text())
    assert saved["dataset"] == {"name": "x", "files_sha256": "aaa"}
    again = _planned.fingerprint(args, Builder)
    assert len(calls) == 1 and again.cases == first.cases
    files["sha"] = "bbb"  # the dataset was prepared again from other files
    _planned.fingerprint(args, Builder)
    assert len(calls) == 2
    assert json.loads((tmp_path / "fingerprint.json").read_text())["dataset"][
        "files_sha256"] == "bbb"


def test_sources_say_plan_or_command_line():
    hand_picked = {"epochs": 1, "image_size": 2, "window": 3}
    args = _Namespace(plan="auto", plan_given=["image_size"])
    assert _planned.sources(args, hand_picked) == {
        "epochs": "plan", "image_size": "command line", "window": "plan"}
    assert _planned.sources(_Namespace(plan="none"), hand_picked) == {}


class _Namespace:
    def __init__(self, **values):
        self.__dict__.update(values)


def test_plan_path_reads_the_saved_plan(tmp_path):
    from kseg import plan as kplan

    cases = [kplan.CaseStats(f"r{k}", (64, 64), None, {0: 9, 1: 1}, 1) for k in range(4)]
    fp = kplan.Fingerprint(dataset={"name": "x"}, modality="XRAY", class_names=None,
                           cases=cases, foreground_intensity=None,
                           foreground_fraction={1: 0.1}, layout="images")
    saved = kplan.plan(fp, memory_budget_mb=100, time_budget_minutes=1, spatial_dims=2)
    saved.save(tmp_path / "plan.json")
    args = _Namespace(plan=str(tmp_path / "plan.json"), max_minutes=None,
                      memory_budget_mb=None)
    # the saved plan as it is, whatever the data and budgets now
    assert _planned.derive(args, None, None, training_examples=1000) == saved


TINY_XRAY = ["--phantom-images", "9", "--phantom-size", "32", "--folds", "3",
             "--epochs", "1", "--image-size", "32"]


def test_xray_trains_from_the_plan_and_records_where_each_option_came_from(tmp_path):
    recipe = load("xray_multiclass")
    run = tmp_path / "run"
    args = recipe.parse_args(["--output-dir", str(run), *TINY_XRAY])
    recipe.train(args)
    config = json.loads((run / "config.json").read_text())
    plan = json.loads((run / "plan.json").read_text())
    fingerprint = json.loads((run / "fingerprint.json").read_text())
    # 9 radiographs in 3 folds: the test fold's 3 are not fingerprinted (nnU-Net's imagesTr)
    assert fingerprint["modality"] == "XRAY" and len(fingerprint["cases"]) == 6
    assert fingerprint["dataset"]["splits"] == ["fold1", "fold2"]
    # what the recipe makes of settings kseg cannot express as nnU-Net does, said in rules
    assert "no brightness, gamma or low-resolution" in plan["rules"]["augmentation (recipes)"]
    assert config["plan"]["options"] == {
        "augment": "plan", "base_filters": "plan", "batch_size": "plan", "depth": "plan",
        "epochs": "command line", "image_size": "command line", "learning_rate": "plan",
        "schedule": "plan",
    }
    arguments = config["arguments"]
    # given on the command line: kept; planned: the plan's values
    assert arguments["epochs"] == 1 and arguments["image_size"] == 32
    assert arguments["batch_size"] == plan["batch_size"] == 2  # nnU-Net's minimum
    # 32 pixels, 4-pixel feature maps at least: 3 poolings
    assert arguments["depth"] == 3 and arguments["schedule"] == "cosine"
    assert arguments["learning_rate"] == plan["optimizer"]["learning_rate"]
    assert config["inference"]["image_size"] == [32, 32]
    assert pathlib.Path(run / "best.keras").is_file()


def test_a_real_download_gets_a_longer_default_budget_than_the_phantom(monkeypatch):
    """Without --max-minutes the plan's time budget is the phantom's minute and a half, but
    half an hour for a real download: the phantom's budget would plan a real dataset down to
    a few passes at a tiny input size."""
    import argparse

    from kseg import plan as kplan

    budgets = []
    monkeypatch.setattr(kplan, "plan", lambda fp, **kw: budgets.append(kw["time_budget_minutes"]))
    for data_dir, max_minutes in ((None, None), (pathlib.Path("CHAOS"), None),
                                  (pathlib.Path("CHAOS"), 7.0)):
        args = argparse.Namespace(plan="auto", data_dir=data_dir, max_minutes=max_minutes,
                                  memory_budget_mb=None)
        _planned.derive(args, builder=None, fp=None, training_examples=100)
    assert budgets == [1.5, 30.0, 7.0]
