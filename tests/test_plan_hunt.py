"""Plans from degenerate data and files a user edits or mixes up (session 23 hunt).

Fast: rule functions and the recipes' plan helpers on hand-made fingerprints, no training.
"""

from __future__ import annotations

import json
import math

import pytest

from kseg import plan as kplan
from kseg.errors import KsegError, UnreadableFileError
from kseg.recipes import _planned


class _Args:
    def __init__(self, **values):
        self.__dict__.update({"max_minutes": None, "memory_budget_mb": None, "folds": 5,
                              "test_fold": 0, "validation_fold": 1, **values})


def _fingerprint(modality="CT", foreground=True, shape=(40, 512, 512), cases=3):
    n = math.prod(shape)
    labels = {0: n - n // 10, 1: n // 10} if foreground else {0: n}
    stats = [kplan.CaseStats(f"p{k}", shape, (5.0, 0.7, 0.7) if len(shape) == 3 else None,
                             dict(labels), n - labels[0]) for k in range(cases)]
    intensity = {"mean": 60.0, "std": 10.0, "min": 0.0, "max": 120.0,
                 "percentile_00_5": 20.0, "percentile_50_0": 60.0,
                 "percentile_99_5": 100.0} if foreground else None
    return kplan.Fingerprint(
        dataset={"name": "chaos", "config": "ct"}, modality=modality, class_names=None,
        cases=stats, foreground_intensity=intensity,
        foreground_fraction=kplan._foreground_fraction(stats), layout="slices")


def _saved_plan(tmp_path):
    p = kplan.plan(_fingerprint(), memory_budget_mb=2000, time_budget_minutes=1.5,
                   spatial_dims=2, training_examples=80)
    path = tmp_path / "plan.json"
    p.save(path)
    return p, path


def test_plan_path_that_is_not_a_plan_names_the_file_and_the_keys(tmp_path):
    """--plan PATH given a run's config.json, a fingerprint.json, a plan.json missing a key
    (edited by hand, or from another kseg version) or a file that is not JSON: a
    kseg error naming the file and what is wrong, not a bare KeyError / JSONDecodeError."""
    saved, plan_path = _saved_plan(tmp_path)
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"recipe": "chaos_liver", "arguments": {}}))
    fingerprint = tmp_path / "fingerprint.json"
    _fingerprint().save(fingerprint)
    older = tmp_path / "older_plan.json"
    data = saved.to_dict()
    del data["tta_mirror_axes"]
    older.write_text(json.dumps(data))
    broken = tmp_path / "broken.json"
    broken.write_text(plan_path.read_text()[:100])
    for path, named in ((config, "missing keys"), (fingerprint, "'median_shape'"),
                        (older, "'tta_mirror_axes'"), (broken, "not JSON")):
        with pytest.raises(UnreadableFileError) as raised:
            _planned.derive(_Args(plan=str(path)), None, None, training_examples=80)
        assert str(path) in str(raised.value) and named in str(raised.value)
        assert "plan.json" in str(raised.value)
    # and the other way round: a plan is no fingerprint
    with pytest.raises(UnreadableFileError, match="missing keys.*'cases'"):
        kplan.Fingerprint.load(plan_path)
    # a plan written by save still reads back as it was
    assert _planned.derive(_Args(plan=str(plan_path)), None, None,
                           training_examples=1) == saved


def test_memory_budget_below_a_one_pooling_unet_is_refused():
    """Hand-worked: a 2D U-Net of 16 filters and one pooling keeps
    4 B x 12 tensors x (16 + 32 / 4) = 1152 B per input pixel; a batch of 2 patches of
    8 x 8 (the smallest with a 4-pixel feature map after one pooling) needs
    2 x 64 x 1152 = 147456 B = 0.1406 MB. Below that the rule planned a 2 x 3 pixel patch
    with no pooling (depth 0, which the recipes refuse as --depth) instead of saying so."""
    assert kplan.rule_patch_size((512, 512), 2, 0.15, 16, 256, 5, (0.7, 0.7)) == ((8, 8), 1)
    for budget in (0.14, 0.01):
        with pytest.raises(ValueError, match=f"memory_budget_mb={budget} cannot hold"):
            kplan.rule_patch_size((512, 512), 2, budget, 16, 256, 5, (0.7, 0.7))
    with pytest.raises(ValueError, match="memory_budget_mb=0.01"):
        kplan.plan(_fingerprint(), memory_budget_mb=0.01, time_budget_minutes=1.5,
                   spatial_dims=2, training_examples=80)


@pytest.mark.parametrize("fingerprint, memory, named", [
    (_fingerprint(foreground=False), None, "no foreground voxels"),  # masks all empty
    (_fingerprint(), 0.01, "memory_budget_mb=0.01"),
])
def test_a_dataset_or_budget_no_plan_fits_is_a_kseg_error(fingerprint, memory, named):
    """--plan auto on CT data without foreground, or with --memory-budget-mb too small for
    any U-Net: a KsegError (kseg's one-line CLI error) naming the dataset, the budgets and
    the way out, not a ValueError traceback."""
    args = _Args(plan="auto", memory_budget_mb=memory, data_dir=None)
    with pytest.raises(KsegError) as raised:
        _planned.derive(args, None, fingerprint, training_examples=80)
    message = str(raised.value)
    assert named in message and "chaos/ct" in message and "--plan none" in message


def _chaos_plan():
    """The CHAOS phantom's plan: 112 x 112 slices, 4 poolings (README's table)."""
    p = kplan.plan(_fingerprint(shape=(40, 512, 512), cases=10), memory_budget_mb=2000,
                   time_budget_minutes=1.5, spatial_dims=2, training_examples=192)
    assert (p.patch_size, p.depth) == ((112, 112), 4)
    return p


@pytest.mark.parametrize("given, values, image_size, depth", [
    # 200 passes the hand-picked depth 3 (200 = 25 x 8), but the plan's 4 poolings would
    # halve it to 12.5: 3 poolings, the most that halve 200 exactly
    (["image_size"], {"image_size": 200}, 200, 3),
    (["image_size"], {"image_size": 96}, 96, 4),  # 96 = 6 x 16: the plan's depth stays
    # --depth 5 passes with the hand-picked 128 (4 x 32), but the plan's 112 is not a
    # multiple of 32: rounded up to 128
    (["depth"], {"depth": 5}, 128, 5),
    (["depth"], {"depth": 2}, 112, 2),
])
def test_a_given_size_or_depth_and_the_planned_other_fit_the_unet(given, values, image_size,
                                                                 depth):
    """One of --image-size / --depth given, the other from the plan: the U-Net must halve
    the input --depth times exactly, or kseg.models.build refuses the shape after the
    dataset was fingerprinted (ValueError: input_shape[0]=200 must be divisible by 16)."""
    args = _Args(plan="auto", plan_given=given, **values)
    settings = _planned.unet_settings(_chaos_plan(), 192, args)
    chosen = {"image_size": settings["image_size"], "depth": settings["depth"], **values}
    assert (chosen["image_size"], chosen["depth"]) == (image_size, depth)
    assert chosen["image_size"] % 2 ** chosen["depth"] == 0


@pytest.mark.parametrize("recipe", ["chaos_liver", "xray_multiclass"])
def test_memory_budget_with_plan_none_is_a_usage_error(recipe, tmp_path, capsys):
    """--plan none --memory-budget-mb 500 trained the hand-picked settings and silently
    ignored the budget the user set (config.json even recorded it)."""
    from kseg.recipes import load

    with pytest.raises(SystemExit) as stopped:
        load(recipe).parse_args(["--output-dir", str(tmp_path / "run"), "--plan", "none",
                                 "--memory-budget-mb", "500"])
    assert stopped.value.code == 2
    assert "--memory-budget-mb sizes the plan" in capsys.readouterr().err
    # with a plan it is what the plan is sized by
    args = load(recipe).parse_args(["--output-dir", str(tmp_path / "run"),
                                    "--memory-budget-mb", "500"])
    assert args.memory_budget_mb == 500


def test_plan_path_of_other_data_names_the_file(tmp_path, monkeypatch):
    """--plan PATH with the plan.json of an X-ray run given to the CHAOS CT recipe crashed
    with a bare KeyError 'clip' (an X-ray plan has no CT window); a CT plan given to the
    X-ray recipe trained radiographs mirrored, and a 3D plan's patch is no slice size."""
    xray_cases = [kplan.CaseStats(f"r{k}", (64, 64), None, {0: 9, 1: 1}, 1) for k in range(4)]
    xray = kplan.Fingerprint(dataset={"name": "xray"}, modality="XRAY", class_names=None,
                             cases=xray_cases, foreground_intensity=None,
                             foreground_fraction={1: 0.1}, layout="images")
    ct = _fingerprint()
    plans = {
        "xray": kplan.plan(xray, memory_budget_mb=100, time_budget_minutes=1, spatial_dims=2),
        "ct": kplan.plan(ct, memory_budget_mb=2000, time_budget_minutes=1.5, spatial_dims=2,
                         training_examples=80),
        "ct3d": kplan.plan(ct, memory_budget_mb=2000, time_budget_minutes=1.5,
                           spatial_dims=3),
    }
    for name, p in plans.items():
        p.save(tmp_path / f"{name}.json")
    monkeypatch.setattr(_planned, "fingerprint", lambda args, builder, splits: builder)
    monkeypatch.setattr(_planned, "training_examples", lambda builder, split: 80)

    from kseg.recipes import chaos_liver, xray_multiclass

    recipe_settings = {"CT": chaos_liver.plan_settings, "XRAY": xray_multiclass.plan_settings}
    for name, data in (("xray", ct), ("ct", xray), ("ct3d", ct)):
        args = _Args(plan=str(tmp_path / f"{name}.json"), output_dir=str(tmp_path / name))
        (tmp_path / name).mkdir()
        with pytest.raises(UnreadableFileError) as raised:
            _planned.apply(args, data, recipe_settings[data.modality], training_split="train")
        message = str(raised.value)
        assert str(tmp_path / f"{name}.json") in message
        assert f"{plans[name].modality} data" in message and f"{data.modality} data" in message
    # the plan of the same kind of data is taken as it is
    args = _Args(plan=str(tmp_path / "ct.json"), output_dir=str(tmp_path / "same"))
    (tmp_path / "same").mkdir()
    assert _planned.apply(args, ct, chaos_liver.plan_settings, training_split="train")
    assert args.window == _planned.ct_window(plans["ct"])


@pytest.mark.parametrize("edit, named", [
    ({"depth": 5}, "not a multiple of 2**depth = 32"),  # 112 px halved 5 times: 3.5
    ({"depth": 0}, "depth 0 is not a whole number of at least 1"),
    ({"patch_size": []}, "patch_size [] is not a multiple of 2**depth"),
    ({"batch_size": 0}, "batch_size 0 is not"),
    ({"training_steps": 0}, "training_steps 0 is not"),
    ({"seconds_per_step": -1.0}, "seconds_per_step -1.0 is not a positive number"),
    ({"optimizer": {"name": "Adam", "learning_rate": 0, "schedule": "cosine",
                    "warmup_fraction": 0.05}}, "learning_rate 0 is not a positive number"),
])
def test_a_hand_edited_plan_kseg_cannot_train_names_the_file(edit, named, tmp_path,
                                                             monkeypatch):
    """A plan.json edited by hand (depth 5 on the 112 px CHAOS plan) went through
    --plan PATH and crashed in kseg.models.build after fingerprinting, with a ValueError
    that named neither plan.json nor the key; batch 0 divided by zero in epochs_for."""
    from kseg.recipes import chaos_liver

    path = tmp_path / "plan.json"
    data = _chaos_plan().to_dict()
    data.update(edit)
    path.write_text(json.dumps(data))
    monkeypatch.setattr(_planned, "fingerprint", lambda args, builder, splits: builder)
    monkeypatch.setattr(_planned, "training_examples", lambda builder, split: 192)
    args = _Args(plan=str(path), output_dir=str(tmp_path))
    with pytest.raises(UnreadableFileError) as raised:
        _planned.apply(args, _fingerprint(), chaos_liver.plan_settings, training_split="t")
    assert str(path) in str(raised.value) and named in str(raised.value)


def test_the_plan_is_fingerprinted_without_the_test_fold(tmp_path):
    """--plan auto fingerprinted every split, the test fold included: the CT window the
    model is trained and scored with came partly from the test patients' intensities
    (LCTSC's challenge_test too). nnU-Net fingerprints its training cases only. Reference:
    numpy percentiles of the phantom's liver HU on the non-test patients alone."""
    import dataclasses

    import numpy as np
    import tensorflow_datasets as tfds

    from kseg.phantoms.chaos import PhantomLabel, chaos_phantom_case, write_chaos
    from kseg.recipes import chaos_liver
    from tfds_builders.chaos import chaos_dataset_builder

    write_chaos(tmp_path / "manual", modality="CT", num_patients=3, num_slices=3, size=16,
                progress=False)
    config = dataclasses.replace(chaos_dataset_builder.Builder.builder_configs["ct"],
                                 name="ct_3fold", num_folds=3)
    builder = chaos_dataset_builder.Builder(config=config, data_dir=str(tmp_path / "data"))
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=str(tmp_path / "manual")))
    test_patients = {example["patient_id"].decode() for example in
                     tfds.as_numpy(builder.as_dataset(split="fold0"))}
    sources = [chaos_phantom_case("CT", k, num_slices=3, size=16) for k in range(3)]
    kept = [case for case in sources if case.patient not in test_patients]
    assert test_patients and len(kept) == 2
    liver = np.concatenate([case.images["CT"][case.labels == PhantomLabel.LIVER]
                            for case in kept]).astype(np.float64)
    low, high = np.percentile(liver, [0.5, 99.5])

    run = tmp_path / "run"
    run.mkdir()
    args = _Args(plan="auto", output_dir=str(run), folds=3, test_fold=0, validation_fold=1,
                 plan_given=[], image_size=None, data_dir=None)
    plan = _planned.apply(args, builder, chaos_liver.plan_settings,
                          training_split="fold2")
    saved = json.loads((run / "fingerprint.json").read_text())
    assert saved["dataset"]["splits"] == ["fold1", "fold2"]
    assert {case["case_id"] for case in saved["cases"]} == {case.patient for case in kept}
    assert plan.normalization["clip"] == pytest.approx([low, high])
    assert args.window == pytest.approx([(low + high) / 2, high - low])
    # another test fold is another fingerprint, not the cached one
    other = _Args(plan="auto", output_dir=str(run), folds=3, test_fold=2, validation_fold=1,
                  plan_given=[], image_size=None, data_dir=None)
    _planned.apply(other, builder, chaos_liver.plan_settings, training_split="fold0")
    assert json.loads((run / "fingerprint.json").read_text())["dataset"]["splits"] == [
        "fold0", "fold1"]


def test_kseg_tune_keeps_max_minutes_per_trial(tmp_path):
    """kseg tune accepted --max-minutes (its help: stop mid-epoch when one more batch and
    the validation would pass it) and trained every trial all its epochs: only the plan's
    epoch count saw the budget, and with --plan none nothing did. Each trial now stops on
    the clock as a kseg train run does: 6 ms is less than one batch, so of 3 epochs a
    trial trains one batch of the first and validates it (TimeBudget always trains one)."""
    import types

    import keras
    import numpy as np
    import tensorflow as tf

    from kseg.recipes import _tuning
    from kseg.training import VolumeValidation
    from kseg.tuning import SegmentationHyperModel

    class CountingValidation(VolumeValidation):
        epochs = []  # a class attribute: Keras Tuner deep-copies the callback per trial

        def on_epoch_end(self, epoch, logs=None):
            super().on_epoch_end(epoch, logs)
            CountingValidation.epochs.append(epoch)

    rng = np.random.default_rng(0)
    images = rng.normal(size=(8, 8, 8, 1)).astype(np.float32)
    labels = (images > 0.3).astype(np.float32)
    training = tf.data.Dataset.from_tensor_slices((images, labels)).batch(2)
    volumes = [("p0", images[:4], labels[:4, ..., 0].astype(np.uint8), (1.0, 1.0, 1.0))]
    hypermodel = SegmentationHyperModel(
        (8, 8, 1), 1, models="unet", depth=1, base_filters=2, losses="dice",
        learning_rate=1e-3, compile_kwargs={"run_eagerly": True})
    args = types.SimpleNamespace(strategy="random", max_trials=1, epochs=3, seed=0,
                                 output_dir=str(tmp_path), max_minutes=1e-4)
    keras.utils.set_random_seed(0)
    results = _tuning.run_search(args, hypermodel, training=training,
                                 validation_data=training,
                                 volume_validation=CountingValidation(volumes))
    assert CountingValidation.epochs == [0]
    assert results["trials"][0]["status"] == "COMPLETED"
    assert results["best_score"] is not None


def test_a_gpu_plan_is_a_one_line_error_naming_the_file(tmp_path, monkeypatch):
    """README: "--plan PATH reuses a saved plan.json (a GPU plan's SGD is refused)"; the
    refusal was a ValueError from unet_settings, which kseg's CLI shows as a traceback
    (it catches KsegError only); now kseg's one-line error naming the file."""
    from kseg.recipes import chaos_liver

    path = tmp_path / "gpu_plan.json"
    kplan.plan(_fingerprint(), memory_budget_mb=8000, time_budget_minutes=60, device="gpu",
               seconds_per_step=0.5, spatial_dims=2).save(path)
    monkeypatch.setattr(_planned, "fingerprint", lambda args, builder, splits: builder)
    monkeypatch.setattr(_planned, "training_examples", lambda builder, split: 192)
    args = _Args(plan=str(path), output_dir=str(tmp_path))
    with pytest.raises(UnreadableFileError, match="optimiser is SGD") as raised:
        _planned.apply(args, _fingerprint(), chaos_liver.plan_settings, training_split="t")
    assert str(path) in str(raised.value)
