"""kseg.tuning: search space, checked objectives, whole-volume ranking and resumable searches."""

import importlib.util
import json
import math
import pathlib
import warnings

import keras
import keras_tuner
import numpy as np
import pytest
import tensorflow as tf

from kseg import losses as kseg_losses
from kseg.training import VolumeValidation
from kseg.tuning import (
    LOSSES,
    SegmentationHyperModel,
    SliceLevelObjectiveWarning,
    check_search_callbacks,
    resolve_objective,
    tuner,
)

SHAPE = (8, 8, 1)


def numpy_dice(truth, prediction):
    truth, prediction = truth.astype(bool), prediction.astype(bool)
    return 2 * np.sum(truth & prediction) / (truth.sum() + prediction.sum())


def blobs(rng, count):
    """Images whose foreground is where a smoothed noise field is positive."""
    field = rng.normal(size=(count, 8, 8))
    field = (field + np.roll(field, 1, axis=1) + np.roll(field, 1, axis=2)) / 3
    labels = (field > 0.2).astype(np.uint8)
    images = (field + 0.3 * rng.normal(size=field.shape)).astype(np.float32)
    return images[..., None], labels


def problem(seed=0):
    """Training slices, validation slices, and two validation volumes of stacked slices."""
    rng = np.random.default_rng(seed)
    train_images, train_labels = blobs(rng, 8)
    val_images, val_labels = blobs(rng, 8)
    volumes = [
        (
            f"p{index}",
            val_images[4 * index : 4 * index + 4],
            val_labels[4 * index : 4 * index + 4],
            (2.0, 1.0, 1.0),
        )
        for index in range(2)
    ]
    return (train_images, train_labels[..., None]), (val_images, val_labels[..., None]), volumes


def small_hypermodel(**overrides):
    arguments = dict(
        models=("unet", "res_unet"),
        base_filters=(2, 4),
        depth=(1, 2),
        dropout=(0.0, 0.2),
        losses=("dice", "dice_ce"),
        learning_rate=(1e-3, 1e-1),
        compile_kwargs={"run_eagerly": True},
    )
    arguments.update(overrides)
    return SegmentationHyperModel(SHAPE, 1, **arguments)


def recorded_trials(project_dir):
    """Trial files as Keras Tuner wrote them.

    Returns ``{trial_id: (status, hyperparameter values, val_volume_dice observations, score)}``.
    """
    trials = {}
    for path in pathlib.Path(project_dir).glob("trial_*/trial.json"):
        record = json.loads(path.read_text())
        metrics = record["metrics"]["metrics"]
        volume_dice = [
            value
            for observation in metrics.get("val_volume_dice", {}).get("observations", [])
            for value in observation["value"]
        ]
        trials[record["trial_id"]] = (
            record["status"],
            record["hyperparameters"]["values"],
            volume_dice,
            record["score"],
        )
    return trials


class CountTrainings(keras.callbacks.Callback):
    """Counts the batches of each model.fit, across the deep copies Keras Tuner makes."""

    batches_per_training = []

    def on_train_begin(self, logs=None):
        type(self).batches_per_training.append(0)

    def on_train_batch_begin(self, batch, logs=None):
        type(self).batches_per_training[-1] += 1


class SimulatedCrash(BaseException):
    """Stands for a killed process: not an Exception, so Keras Tuner does not catch it."""


class CrashOnTraining(keras.callbacks.Callback):
    """Counts trainings; the ``crash_at``-th one crashes after its first epoch."""

    trainings = 0

    def __init__(self, crash_at):
        super().__init__()
        self.crash_at = crash_at

    def on_epoch_end(self, epoch, logs=None):
        if epoch == 0:
            type(self).trainings += 1
            if type(self).trainings == self.crash_at:
                raise SimulatedCrash


# --- the hypermodel -------------------------------------------------------------------


@pytest.mark.parametrize(
    "model_name", ["unet", "attention_unet", "res_unet", "unet_plus_plus", "highresnet"]
)
def test_each_model_builds_compiled_with_dice_metric(model_name):
    hypermodel = small_hypermodel(models=model_name, fixed={"base_filters": 2, "depth": 1})
    model = hypermodel.build(keras_tuner.HyperParameters())
    assert model.name == model_name
    assert model.output_shape == (None, *SHAPE[:-1], 1)
    assert isinstance(model.loss, (kseg_losses.DiceLoss, kseg_losses.DiceCELoss))
    (images, labels), _, _ = problem()
    probabilities = model.predict_on_batch(images[:4])
    logs = model.evaluate(images[:4], labels[:4], batch_size=4, verbose=0, return_dict=True)
    assert logs["dice"] == pytest.approx(numpy_dice(labels[:4], probabilities >= 0.5), rel=1e-5)


@pytest.mark.parametrize("loss_name", sorted(LOSSES))
def test_each_loss_is_the_compiled_loss(loss_name):
    hypermodel = small_hypermodel(
        models="unet",
        fixed={"loss": loss_name, "base_filters": 2, "depth": 1},
        loss_kwargs={"tversky": {"alpha": 0.3, "beta": 0.7}} if loss_name == "tversky" else None,
    )
    model = hypermodel.build(keras_tuner.HyperParameters())
    assert type(model.loss) is LOSSES[loss_name]
    (images, labels), _, _ = problem()
    expected = LOSSES[loss_name](**hypermodel.loss_kwargs.get(loss_name, {}))(
        labels[:2], model.predict_on_batch(images[:2])
    )
    logs = model.evaluate(images[:2], labels[:2], batch_size=2, verbose=0, return_dict=True)
    assert logs["loss"] == pytest.approx(float(expected), rel=1e-5)
    assert {"loss", "dice"} <= set(logs)


def test_search_space_holds_what_was_asked_and_fixed_pins():
    hypermodel = SegmentationHyperModel(
        (16, 16, 1),
        2,
        models=("unet", "highresnet"),
        base_filters=(4, 8),
        depth=(2, 4),
        dropout=(0.0, 0.5),
        losses=("dice", "topk", "focal"),
        topk_k=(5, 10, 20),
        optimizers=("adam", "sgd"),
        learning_rate=(1e-4, 1e-2),
        batch_sizes=(2, 4),
        fixed={"loss": "topk", "dropout": 0.1},
    )
    hp = keras_tuner.HyperParameters()
    hypermodel.declare(hp)
    space = {parameter.name: parameter for parameter in hp.space}
    assert set(space) == {
        "model",
        "base_filters",
        "depth",
        "dropout",
        "loss",
        "topk_k",
        "optimizer",
        "learning_rate",
        "batch_size",
    }
    assert space["model"].values == ["unet", "highresnet"]
    assert space["base_filters"].values == [4, 8]
    assert (space["depth"].min_value, space["depth"].max_value) == (2, 4)
    assert (space["learning_rate"].min_value, space["learning_rate"].max_value) == (1e-4, 1e-2)
    assert space["learning_rate"].sampling == "log"
    assert space["optimizer"].values == ["adam", "sgd"]
    assert space["batch_size"].values == [2, 4]
    assert space["topk_k"].values == [5, 10, 20]
    (condition,) = space["topk_k"].conditions
    assert condition.name == "loss" and condition.values == ["topk"]
    assert type(space["loss"]).__name__ == "Fixed" and space["loss"].value == "topk"
    assert type(space["dropout"]).__name__ == "Fixed" and space["dropout"].value == 0.1
    # highresnet has no depth or filter count: those two exist only for the U-Net
    for name in ("base_filters", "depth"):
        (condition,) = space[name].conditions
        assert condition.name == "model" and condition.values == ["unet"]

    highresnet_trial = keras_tuner.HyperParameters()
    hypermodel.declare(highresnet_trial)
    highresnet_trial.values["model"] = "highresnet"
    model = hypermodel.build(highresnet_trial)
    assert model.name == "highresnet" and model.output_shape == (None, 16, 16, 2)
    assert isinstance(model.optimizer, keras.optimizers.Adam)
    assert float(model.optimizer.learning_rate) == pytest.approx(1e-4)  # the range's default


def test_fixed_model_and_depth_build_that_model():
    hypermodel = SegmentationHyperModel(
        (16, 16, 1),
        fixed={
            "model": "attention_unet",
            "depth": 2,
            "base_filters": 4,
            "optimizer": "sgd",
            "learning_rate": 0.05,
        },
    )
    model = hypermodel.build(keras_tuner.HyperParameters())
    assert model.name == "attention_unet"
    # depth 2: the bottleneck of a 16x16 input is 4x4 with 4 * 2**2 filters
    assert any(layer.output.shape[1:] == (4, 4, 16) for layer in model.layers)
    assert not any(layer.output.shape[1] == 2 for layer in model.layers)
    assert isinstance(model.optimizer, keras.optimizers.SGD)
    assert model.optimizer.momentum == pytest.approx(0.99) and model.optimizer.nesterov
    assert float(model.optimizer.learning_rate) == pytest.approx(0.05)


@pytest.mark.parametrize(
    "arguments, named",
    [
        ({"fixed": {"epochs": 3}}, "epochs"),
        ({"models": ("unet", "vnet")}, "vnet"),
        ({"losses": "hinge"}, "hinge"),
        ({"depth": (3, 2)}, "depth"),
        ({"dropout": (0.0, 1.0)}, "dropout"),
        ({"learning_rate": 0.0}, "learning_rate"),
        ({"depth": (1, 4)}, "2**depth=16"),
        ({"models": "unet3d"}, "unet3d"),
        ({"model_kwargs": {"depth": 2}}, "depth"),
        (
            {"models": ("unet", "highresnet"), "model_kwargs": {"upsampling": "bilinear"}},
            "highresnet",
        ),
        (
            {"model_kwargs": {"deep_supervision": True}, "models": "unet_plus_plus"},
            "deep_supervision",
        ),
        ({"loss_kwargs": {"focal": {"gamma": 1.0}}}, "focal"),
        ({"topk_k": (5, 0)}, "topk_k"),
        ({"topk_k": (5, 101)}, "topk_k"),
        ({"losses": "topk", "loss_kwargs": {"topk": {"k": 5}}}, "topk_k"),
    ],
)
def test_bad_search_space_is_refused_by_name(arguments, named):
    with pytest.raises(ValueError, match=named.replace("*", r"\*")):
        SegmentationHyperModel(SHAPE, 1, **arguments)


def test_topk_k_is_the_k_of_the_compiled_topk_loss():
    hypermodel = small_hypermodel(
        models="unet",
        losses=("dice", "topk"),
        topk_k=(5, 20),
        fixed={"base_filters": 2, "depth": 1},
    )
    hp = keras_tuner.HyperParameters()
    hp.Fixed("loss", "topk")
    with hp.conditional_scope("loss", ["topk"]):
        hp.Fixed("topk_k", 20)
    model = hypermodel.build(hp)
    assert type(model.loss) is kseg_losses.TopKLoss and model.loss.k == 20
    # per image: the mean cross-entropy of its hardest 20% voxels (12 of 64), then the
    # mean over the 2 images; the default k=10 would keep 6
    (images, labels), _, _ = problem()
    probabilities = np.clip(model.predict_on_batch(images[:2]), 1e-7, 1 - 1e-7).astype(float)
    truth = labels[:2].astype(float)
    cross_entropy = -(truth * np.log(probabilities) + (1 - truth) * np.log(1 - probabilities))
    hardest = -np.sort(-cross_entropy.reshape(2, -1), axis=1)
    logs = model.evaluate(images[:2], labels[:2], batch_size=2, verbose=0, return_dict=True)
    assert logs["loss"] == pytest.approx(hardest[:, :12].mean(), rel=1e-4)
    assert hardest[:, :12].mean() != pytest.approx(hardest[:, :6].mean(), rel=1e-4)

    dice_trial = keras_tuner.HyperParameters()
    hypermodel.declare(dice_trial)
    assert "topk_k" not in hypermodel.declare(dice_trial)  # loss "dice": no k


def test_logit_models_get_logit_losses_and_metric():
    hypermodel = small_hypermodel(
        models="unet",
        model_kwargs={"activation": None},
        fixed={"base_filters": 2, "depth": 1, "loss": "dice"},
    )
    model = hypermodel.build(keras_tuner.HyperParameters())
    (images, labels), _, _ = problem()
    logits = model.predict_on_batch(images[:2])
    probabilities = 1 / (1 + np.exp(-logits))
    assert model.loss.from_logits
    expected = kseg_losses.DiceLoss()(labels[:2], probabilities)
    logs = model.evaluate(images[:2], labels[:2], batch_size=2, verbose=0, return_dict=True)
    assert logs["loss"] == pytest.approx(float(expected), rel=1e-5)
    assert logs["dice"] == pytest.approx(numpy_dice(labels[:2], probabilities >= 0.5), rel=1e-5)


def test_batch_size_search_batches_arrays_and_builds_datasets():
    hypermodel = small_hypermodel(
        models="unet", batch_sizes=(2, 4), fixed={"base_filters": 2, "depth": 1, "batch_size": 4}
    )
    hp = keras_tuner.HyperParameters()
    model = hypermodel.build(hp)
    (images, labels), _, _ = problem()

    def make_dataset(batch_size):
        return tf.data.Dataset.from_tensor_slices((images, labels)).batch(batch_size)

    CountTrainings.batches_per_training = []
    for x, y in ((images, labels), (make_dataset, None)):
        hypermodel.fit(
            hp, model, x, y, epochs=1, shuffle=False, verbose=0, callbacks=[CountTrainings()]
        )
    assert CountTrainings.batches_per_training == [8 // 4, 8 // 4]
    with pytest.raises(ValueError, match="batch_size"):
        hypermodel.fit(hp, model, images, labels, batch_size=2, epochs=1, verbose=0)
    with pytest.raises(ValueError, match="tf.data.Dataset"):
        hypermodel.fit(hp, model, make_dataset(3), epochs=1, verbose=0)


# --- objectives -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "objective, direction",
    [
        ("val_volume_dice", "max"),
        ("val_volume_dice_liver", "max"),
        ("val_volume_hd95", "min"),
        ("val_volume_dice/p7", "max"),
        ("val_loss", "min"),
        ("val_dice", "max"),
        (keras_tuner.Objective("val_custom_score", "max"), "max"),
    ],
)
def test_objective_directions(objective, direction):
    assert resolve_objective(objective).direction == direction


@pytest.mark.parametrize(
    "objective, named",
    [
        ("dice", "'dice'"),
        ("loss", "'loss'"),
        ("volume_dice", "'volume_dice'"),
        (keras_tuner.Objective("val_loss", "max"), "'val_loss'"),
        (keras_tuner.Objective("val_volume_dice", "min"), "'val_volume_dice'"),
        (keras_tuner.Objective("val_volume_hd95", "max"), "'val_volume_hd95'"),
        ("val_volume_volume_difference", "'val_volume_volume_difference'"),
        ("val_patch_volume_gap", "'val_patch_volume_gap'"),
        ("val_custom_score", "'val_custom_score'"),
        (["val_volume_dice", "val_dice"], "val_dice"),
    ],
)
def test_wrong_objectives_are_refused_by_name(objective, named, tmp_path):
    with pytest.raises(ValueError, match=named):
        resolve_objective(objective)
    with pytest.raises(ValueError, match=named):
        tuner(
            "random",
            small_hypermodel(),
            objective=objective,
            directory=tmp_path,
            project_name="p",
            max_trials=1,
        )
    assert not (tmp_path / "p").exists()


@pytest.mark.parametrize("kind", ["random", "bayesian", "hyperband"])
def test_default_objective_is_whole_volume_dice_maximised(kind, tmp_path):
    if kind == "bayesian":
        pytest.importorskip("sklearn", reason="BayesianOptimization needs keras-tuner[bayesian]")
    budget = {"max_epochs": 2} if kind == "hyperband" else {"max_trials": 2}
    search = tuner(
        kind,
        small_hypermodel(models="unet"),
        directory=tmp_path,
        project_name=kind,
        seed=1,
        **budget,
    )
    assert isinstance(search, keras_tuner.Tuner)
    assert search.oracle.objective.name == "val_volume_dice"
    assert search.oracle.objective.direction == "max"


@pytest.mark.parametrize(
    "kind, budget, named",
    [
        ("grid", {"max_trials": 2}, "learning_rate"),  # a continuous range cannot be gridded
        ("grid", {"max_epochs": 3}, "max_epochs"),
        ("annealing", {"max_trials": 2}, "annealing"),
        ("random", {}, "max_trials"),
        ("random", {"max_trials": 2, "max_epochs": 3}, "max_epochs"),
        ("hyperband", {"max_trials": 2, "max_epochs": 3}, "max_trials"),
        ("hyperband", {}, "max_epochs"),
    ],
)
def test_tuner_budget_arguments(kind, budget, named, tmp_path):
    with pytest.raises(ValueError, match=named):
        tuner(kind, small_hypermodel(), directory=tmp_path, project_name="p", **budget)


def test_search_callbacks_must_write_the_objective_before_it_is_monitored():
    _, _, volumes = problem()
    validation = VolumeValidation(volumes)
    early_stop = keras.callbacks.EarlyStopping(monitor="val_volume_dice", mode="max")
    check_search_callbacks("val_volume_dice", [validation, early_stop])
    with pytest.raises(ValueError, match="VolumeValidation"):
        check_search_callbacks("val_volume_dice", [early_stop])
    with pytest.raises(ValueError, match=r"callbacks\[0\] \(EarlyStopping\)"):
        check_search_callbacks("val_volume_dice", [early_stop, validation])
    with pytest.raises(ValueError, match="val_volume_hd95"):
        check_search_callbacks("val_volume_hd95", [validation])
    check_search_callbacks("val_volume_hd95", [VolumeValidation(volumes, metrics=("hd95",))])
    check_search_callbacks("val_volume_dice/p1", [VolumeValidation(volumes, log_per_patient=True)])
    with pytest.warns(SliceLevelObjectiveWarning, match="objective='val_volume_dice'"):
        check_search_callbacks("val_dice", [validation])
    with pytest.warns(SliceLevelObjectiveWarning, match="add kseg.training.VolumeValidation"):
        check_search_callbacks("val_dice", [])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_search_callbacks("val_volume_dice", [validation])


def test_tensorboard_callback_without_tensorboard_is_refused_before_training(tmp_path):
    if importlib.util.find_spec("tensorboard") is not None:
        pytest.skip("tensorboard is installed")
    train, validation_data, volumes = problem()
    search = tuner(
        "random",
        small_hypermodel(models="unet"),
        directory=tmp_path,
        project_name="tb",
        max_trials=1,
    )
    callbacks = [VolumeValidation(volumes), keras.callbacks.TensorBoard(tmp_path / "logs")]
    with pytest.raises(ImportError, match="pip install tensorboard"):
        search.search(*train, validation_data=validation_data, epochs=1, callbacks=callbacks)
    assert not list(pathlib.Path(search.project_dir).glob("trial_*"))


# --- searches -------------------------------------------------------------------------


# get_best_models restores weights only; the fresh model's optimizer has no slots to fill
@pytest.mark.filterwarnings("ignore:Skipping variable loading for optimizer")
def test_search_ranks_trials_by_recorded_whole_volume_dice(tmp_path):
    keras.utils.set_random_seed(3)
    train, validation_data, volumes = problem()
    hypermodel = small_hypermodel(batch_sizes=(2, 8))
    search = tuner(
        "random", hypermodel, directory=tmp_path, project_name="search", max_trials=2, seed=4
    )
    CountTrainings.batches_per_training = []
    search.search(
        *train,
        validation_data=validation_data,
        epochs=2,
        verbose=0,
        callbacks=[VolumeValidation(volumes), CountTrainings()],
    )

    trials = recorded_trials(search.project_dir)
    assert sorted(trials) == ["0", "1"]
    assert all(status == "COMPLETED" for status, *_ in trials.values())
    for _, _, volume_dice, score in trials.values():
        assert len(volume_dice) == 1 and score == pytest.approx(volume_dice[0])
    best_id = max(trials, key=lambda trial_id: trials[trial_id][2][0])
    assert trials["0"][3] != trials["1"][3]
    assert search.get_best_hyperparameters()[0].values == trials[best_id][1]
    # each trial trained at its own batch size: count the batches Keras ran in 2 epochs
    assert CountTrainings.batches_per_training == [
        2 * math.ceil(8 / trials[trial_id][1]["batch_size"]) for trial_id in ("0", "1")
    ]

    # the recorded score is the whole-volume Dice: recompute it with numpy from the best
    # epoch's weights, predicting each volume slice by slice
    best_model = search.get_best_models()[0]
    recomputed = np.mean(
        [
            numpy_dice(label, best_model.predict(image, verbose=0)[..., 0] >= 0.5)
            for _, image, label, _ in volumes
        ]
    )
    assert trials[best_id][3] == pytest.approx(recomputed, rel=1e-5)


def test_crashed_search_resumes_without_repeating_finished_trials(tmp_path):
    keras.utils.set_random_seed(5)
    train, validation_data, volumes = problem(1)
    hypermodel = small_hypermodel(models="unet", losses="dice")
    arguments = dict(directory=tmp_path, project_name="resume", max_trials=2, seed=6)
    fit = dict(validation_data=validation_data, epochs=1, verbose=0)

    first = tuner("random", hypermodel, **arguments)
    CrashOnTraining.trainings = 0
    with pytest.raises(SimulatedCrash):
        first.search(*train, callbacks=[VolumeValidation(volumes), CrashOnTraining(2)], **fit)
    before = recorded_trials(first.project_dir)
    assert before["0"][0] == "COMPLETED" and before["1"][0] == "RUNNING"

    second = tuner("random", hypermodel, **arguments)
    assert second.oracle.trials["0"].score == pytest.approx(before["0"][3])
    CrashOnTraining.trainings = 0
    second.search(*train, callbacks=[VolumeValidation(volumes), CrashOnTraining(0)], **fit)
    after = recorded_trials(second.project_dir)

    assert CrashOnTraining.trainings == 1  # only the interrupted trial ran again
    assert sorted(after) == ["0", "1"]
    assert after["0"] == before["0"]
    assert after["1"][0] == "COMPLETED" and after["1"][1] == before["1"][1]

    with pytest.raises(ValueError, match="kseg_objective.json.*'val_volume_dice'"):
        tuner("random", hypermodel, objective="val_dice", **arguments)
