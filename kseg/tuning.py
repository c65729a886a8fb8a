"""Keras Tuner searches over kseg models and losses that rank trials by whole-volume Dice.

A hyperparameter search is only as good as the number it ranks trials by. The Dice Keras
logs as ``val_dice`` pools the voxels of whatever ``validation_data`` holds: for 3D work
that is random patches (or slices), which rarely contain the false positives a model makes
far from the organ, so it flatters. In kseg's motivating case a model scored 0.94 patch
Dice and 0.43 whole-volume Dice; a search ranked by the patch score would have kept it.
So here the objective defaults to ``val_volume_dice``, the mean over validation patients of
the Dice of each whole volume, which :class:`kseg.training.VolumeValidation` writes into the
epoch logs, and the tuners refuse objectives that cannot be right:

- a training-set number (no ``val_`` prefix, e.g. ``"dice"`` or ``"loss"``);
- a direction that contradicts the name (maximising a loss or a surface distance,
  minimising a Dice);
- a ``val_volume_*`` objective while no ``VolumeValidation`` in ``search(callbacks=...)``
  writes that key, or while a callback that monitors it runs before the one that writes it;
- resuming a search directory with another objective than the one its trials were scored
  by.

An explicitly chosen patch- or slice-level objective such as ``"val_dice"`` is accepted,
with a :class:`SliceLevelObjectiveWarning` at ``search()``: it is the right number only when
the validation batches hold the whole images the results are reported on (2D X-rays, say).

Keras Tuner takes a trial's score from the ``History`` of ``model.fit``: the best epoch
value of the objective. ``History`` is appended by Keras after the user's callbacks and
reads the same ``logs`` dict at each epoch end, so it records what ``VolumeValidation``
wrote; the tuner's own best-epoch checkpoint is appended after the user's callbacks too.

Besides Keras Tuner's random, Bayesian and Hyperband searches, :func:`tuner` runs a
``"grid"`` search (``keras_tuner.GridSearch`` over every combination of discrete values)
and a ``"staged"`` one (:class:`StagedSearch`: one hyperparameter at a time, each stage's
best value carried into the next, a CSV table per stage), ranked and checked the same way.

A search runs on several processes or machines with Keras Tuner's own distributed mode,
nothing of kseg's: start the same search script once as the chief, which serves the oracle
over gRPC and trains nothing, and once per worker, each with its own tuner id, all with the
same directory (shared storage) and the oracle's address::

    export KERASTUNER_ORACLE_IP=127.0.0.1 KERASTUNER_ORACLE_PORT=8000   # the chief's host
    KERASTUNER_TUNER_ID=chief  python search.py &
    KERASTUNER_TUNER_ID=tuner0 python search.py &
    KERASTUNER_TUNER_ID=tuner1 python search.py &

Each worker asks the chief for a trial, trains it with the callbacks given to ``search``
(so ``VolumeValidation`` scores it on whole volumes on the worker) and reports the epoch
logs; the chief ranks and records every trial and returns from ``search`` when all are
done (:func:`distributed_role` tells a script which part it plays; only the chief's
``get_best_hyperparameters`` is meaningful after the search). A worker that dies is
restarted with the same ``KERASTUNER_TUNER_ID``: the chief gives it back the trial it left
unfinished, and finished trials are never run again. A staged search uses one port per
stage, ``KERASTUNER_ORACLE_PORT`` to ``KERASTUNER_ORACLE_PORT + stages - 1``.

Example:
    >>> import tempfile
    >>> from kseg.training import BestModelCheckpoint, ResumableCSVLogger, VolumeValidation
    >>> hypermodel = SegmentationHyperModel(
    ...     (128, 128, 1), 1, models=("unet", "attention_unet"), losses=("dice", "dice_ce"))
    >>> runs = tempfile.mkdtemp()
    >>> search = tuner("bayesian", hypermodel, directory=runs, project_name="liver",
    ...                max_trials=20, seed=0)
    >>> search.search(train_patches, validation_data=val_patches, epochs=30,  # doctest: +SKIP
    ...               callbacks=[VolumeValidation(val_volumes, every=5)])
    >>> best = search.get_best_hyperparameters()[0].values  # doctest: +SKIP

Reference:
    O'Malley T, Bursztein E, Long J, Chollet F, Jin H, Invernizzi L, et al. "KerasTuner".
    https://github.com/keras-team/keras-tuner, 2019.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import functools
import importlib.util
import inspect
import io
import json
import numbers
import os
import time
import warnings
from collections.abc import Mapping, Sequence

import keras
import keras_tuner
import numpy as np
import tensorflow as tf

from kseg import losses as kseg_losses
from kseg.errors import LayoutError
from kseg.evaluation import metric_columns
from kseg.metrics import DiceScore
from kseg.models import MODELS
from kseg.training import BestModelCheckpoint, ResumableCSVLogger, VolumeValidation
from kseg.training.callbacks import metric_direction, output_kind
from kseg.training.optimizer import build_optimizer

DEFAULT_OBJECTIVE = "val_volume_dice"
"""Mean over validation patients of whole-volume Dice, written by ``VolumeValidation``."""

LOSSES = {
    "dice": kseg_losses.DiceLoss,
    "iou": kseg_losses.IoULoss,
    "tversky": kseg_losses.TverskyLoss,
    "generalized_dice": kseg_losses.GeneralizedDiceLoss,
    "combo": kseg_losses.ComboLoss,
    "dice_ce": kseg_losses.DiceCELoss,
    "focal": kseg_losses.FocalLoss,
    "topk": kseg_losses.TopKLoss,
}
"""Loss names of the search space and the ``kseg.losses`` classes they build."""


def _sgd(learning_rate):
    # nnU-Net's optimiser: SGD with Nesterov momentum 0.99.
    return keras.optimizers.SGD(learning_rate, momentum=0.99, nesterov=True)


OPTIMIZERS = {
    "adam": keras.optimizers.Adam,
    "adamw": keras.optimizers.AdamW,
    "rmsprop": keras.optimizers.RMSprop,
    "sgd": _sgd,
}
"""Optimizer names of the search space; ``"sgd"`` is Nesterov SGD with momentum 0.99."""

HYPERPARAMETERS = (
    "model",
    "base_filters",
    "depth",
    "dropout",
    "loss",
    "topk_k",
    "optimizer",
    "learning_rate",
    "batch_size",
)
"""Names of the hyperparameters :class:`SegmentationHyperModel` declares."""

# Arguments the hypermodel sets itself, so ``model_kwargs`` may not.
_SEARCHED_MODEL_ARGUMENTS = ("input_shape", "num_classes", "depth", "base_filters", "dropout")

_NOT_OBJECTIVES = {
    "volume_difference": "it is signed (over- and under-segmentation have opposite signs), "
    "so neither direction is better; use 'val_volume_ravd'",
    "patch_volume_gap": "it is a difference between two scores, which a model that is bad "
    "on patches and volumes alike also minimises; use 'val_volume_dice'",
}

_OBJECTIVE_RECORD = "kseg_objective.json"


class SliceLevelObjectiveWarning(UserWarning):
    """A search ranks trials by a patch- or slice-level number, not by whole volumes."""


def resolve_objective(objective=DEFAULT_OBJECTIVE) -> keras_tuner.Objective:
    """Turn an objective name or ``keras_tuner.Objective`` into a checked ``Objective``.

    A name's direction is inferred: ``max`` for Dice, IoU, precision, recall,
    specificity, accuracy and AUC (per-class keys such as ``val_volume_dice_liver``
    included), ``min`` for losses and the surface distances ``hd95``, ``hausdorff``,
    ``assd`` and ``ravd``. A name outside these needs an explicit
    ``keras_tuner.Objective(name, direction)``.

    Args:
        objective: a log key such as ``"val_volume_dice"`` (the default), or a
            ``keras_tuner.Objective``.

    Returns:
        ``keras_tuner.Objective`` with its direction.

    Raises:
        ValueError: the objective is a training-set number (no ``val_`` prefix), a signed
            or difference value, has a direction that contradicts its name, is several
            objectives, or is a name whose direction cannot be inferred.

    Example:
        >>> resolve_objective("val_volume_hd95").direction
        'min'
    """
    if isinstance(objective, keras_tuner.Objective):
        name, direction = objective.name, objective.direction
    elif isinstance(objective, str):
        name, direction = objective, None
    else:
        raise ValueError(
            f"objective must be one log key or a keras_tuner.Objective, got {objective!r}; "
            "kseg tuners rank trials by one validation score"
        )
    if not name.startswith("val_"):
        raise ValueError(
            f"objective {name!r} is computed on the training batches, so the search would "
            f"reward overfitting; rank by a validation score such as {DEFAULT_OBJECTIVE!r}"
        )
    # the rule kseg.training.BestModelCheckpoint checks its mode by
    inferred, score = metric_direction(name)
    if score in _NOT_OBJECTIVES:
        raise ValueError(f"objective {name!r} cannot rank trials: {_NOT_OBJECTIVES[score]}")
    if direction is None:
        if inferred is None:
            raise ValueError(
                f"cannot tell whether higher or lower {name!r} is better; pass "
                f"keras_tuner.Objective({name!r}, direction='max' or 'min')"
            )
        direction = inferred
    elif inferred is not None and direction != inferred:
        better = "higher" if inferred == "max" else "lower"
        raise ValueError(
            f"objective {name!r} with direction={direction!r}: {better} {score} is better, "
            f"so the search would keep the worst trials; use direction={inferred!r}"
        )
    return keras_tuner.Objective(name, direction=direction)


def _volume_keys(validation: VolumeValidation) -> set[str]:
    """The log keys a ``VolumeValidation`` writes (see its ``_logs_from``)."""
    keys = set()
    patient_ids = [volume[0] for volume in validation.volumes]
    for metric in validation.metrics:
        keys.add(f"val_volume_{metric}")
        if validation.labels is not None:
            keys.update(
                f"val_volume_{column}" for column in metric_columns(metric, validation.labels)
            )
        if validation.log_per_patient:
            keys.update(f"val_volume_{metric}/{patient_id}" for patient_id in patient_ids)
    return keys


def check_search_callbacks(objective, callbacks) -> None:
    """Check that the callbacks of a search put its objective in the epoch logs in time.

    For a ``val_volume_*`` objective some :class:`kseg.training.VolumeValidation` in
    ``callbacks`` must write that key, and no callback that monitors it (``EarlyStopping``,
    ``ModelCheckpoint``, ``ReduceLROnPlateau``) may come before that one: Keras runs
    ``on_epoch_end`` in list order on one shared ``logs`` dict. Any other objective is
    computed on ``validation_data`` batches, which gets a
    :class:`SliceLevelObjectiveWarning`.

    Args:
        objective: the search objective (name or ``keras_tuner.Objective``).
        callbacks: the ``callbacks`` list that will be given to ``search()``.

    Raises:
        ValueError: the objective is a ``val_volume_*`` key that no callback writes, or
            one monitored before it is written; or a callback that writes a run folder
            (:class:`kseg.training.BestModelCheckpoint`, ``ResumableCSVLogger``, a
            ``BackupAndRestore``, as :func:`kseg.training.training_callbacks` gives them)
            would write the same files for every trial.

    Example:
        >>> import keras
        >>> import numpy as np
        >>> image = np.zeros((8, 8, 8, 1), np.float32)
        >>> label = np.zeros((8, 8, 8), np.uint8)
        >>> label[2:5, 2:5, 2:5] = 1
        >>> validation = VolumeValidation([("p1", image, label, (1.0, 1.0, 1.0))])
        >>> check_search_callbacks("val_volume_dice", [validation])
        >>> stop = keras.callbacks.EarlyStopping("val_volume_dice", mode="max")
        >>> check_search_callbacks("val_volume_dice", [stop, validation])  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ValueError: callbacks[0] (EarlyStopping) monitors 'val_volume_dice' but runs before ...
    """
    name = objective.name if isinstance(objective, keras_tuner.Objective) else objective
    callbacks = list(callbacks or ())
    run_folder = [
        f"callbacks[{position}] ({type(callback).__name__})"
        for position, callback in enumerate(callbacks)
        if isinstance(
            callback,
            BestModelCheckpoint | ResumableCSVLogger | keras.callbacks.BackupAndRestore,
        )
    ]
    if run_folder:
        raise ValueError(
            f"{', '.join(run_folder)} would write one file for every trial: each trial's "
            "fit starts at epoch 0, a new run, so the best model would be the last trial's "
            "and a stopped trial's backup would be restored into the next trial's model; "
            "Keras Tuner keeps each trial's best epoch (get_best_models) and resumes a "
            "stopped search itself: give search() VolumeValidation (and EarlyStopping or "
            "TimeBudget), and train the best hyperparameters with training_callbacks"
        )
    validations = [
        (position, callback)
        for position, callback in enumerate(callbacks)
        if isinstance(callback, VolumeValidation)
    ]
    if not name.startswith("val_volume_"):
        if validations:
            advice = (
                "VolumeValidation is in the callbacks, so rank by its whole-volume score "
                f"instead: objective={DEFAULT_OBJECTIVE!r}"
            )
        else:
            advice = (
                "when those batches are patches or slices of volumes, add "
                "kseg.training.VolumeValidation(val_volumes) to the callbacks and use "
                f"objective={DEFAULT_OBJECTIVE!r}"
            )
        warnings.warn(
            f"the search ranks trials by {name!r}, computed on the validation_data batches: "
            "a whole-volume score only if those batches are the whole images you report on "
            f"(patch Dice can read 0.94 where whole volumes score 0.43); {advice}",
            SliceLevelObjectiveWarning,
            stacklevel=3,
        )
        return
    writers = [position for position, callback in validations if name in _volume_keys(callback)]
    if not writers:
        written = sorted(set().union(*(_volume_keys(callback) for _, callback in validations)))
        raise ValueError(
            f"objective {name!r} is written by kseg.training.VolumeValidation, but "
            + (
                f"the VolumeValidation callbacks in search(callbacks=...) write only {written}"
                if validations
                else "search(callbacks=...) holds none; add VolumeValidation(val_volumes) "
                "first in the list"
            )
        )
    first_writer = writers[0]
    for callback in callbacks[:first_writer]:
        if getattr(callback, "monitor", None) == name:
            raise ValueError(
                f"callbacks[{callbacks.index(callback)}] ({type(callback).__name__}) monitors "
                f"{name!r} but runs before the VolumeValidation that writes it "
                f"(callbacks[{first_writer}]), so it would read last epoch's value or none; "
                "put VolumeValidation first"
            )


def _check_outputs(validations, logits: bool, reason: str) -> None:
    """A fatal error (Keras Tuner stops the search: every trial would fail, or be scored
    wrongly, the same way) when the search's models (outputting logits or not, ``reason``)
    would be scored by a ``VolumeValidation`` that reads their outputs as the other kind:
    logits without ``from_logits=True`` are refused at the first validation, after a whole
    epoch of training, in every trial; probabilities with it go through a sigmoid again (all
    at 0.5 or above: every pixel foreground) and the trials are ranked by that."""
    for validation in validations:
        if logits and not validation.from_logits:
            raise keras_tuner.errors.FatalValueError(
                f"VolumeValidation: the search's models output logits ({reason}): a model "
                "that outputs logits (activation=None) needs VolumeValidation(..., "
                "from_logits=True), or its whole-volume scores would threshold logits at "
                f"{validation.threshold}"
            )  # fmt: skip
        if not logits and validation.from_logits:
            raise keras_tuner.errors.FatalValueError(
                f"VolumeValidation(from_logits=True): the search's models output "
                f"probabilities ({reason}), which it would pass through a sigmoid or "
                "softmax again (a sigmoid's output then lies in [0.5, 0.73]: every pixel "
                "foreground); drop from_logits=True, or build the models with "
                "activation=None"
            )  # fmt: skip


def _has_tensorboard_callback(callbacks) -> bool:
    return any(isinstance(callback, keras.callbacks.TensorBoard) for callback in callbacks or ())


def _write_json_atomically(path: str, content) -> None:
    # tf.io.gfile, like Keras Tuner itself, so the search directory may also be gs://...
    temporary = f"{path}.tmp"
    with tf.io.gfile.GFile(temporary, "w") as handle:
        handle.write(json.dumps(content))
    tf.io.gfile.rename(temporary, path, overwrite=True)


def distributed_role() -> str | None:
    """This process's part in a distributed Keras Tuner search, from Keras Tuner's variables.

    Keras Tuner distributes a search when ``KERASTUNER_ORACLE_IP`` is set (with
    ``KERASTUNER_ORACLE_PORT`` and ``KERASTUNER_TUNER_ID``): the process whose tuner id
    contains ``"chief"`` runs the oracle as a gRPC server, every other one is a worker that
    asks it for trials and reports their scores.

    Returns:
        ``"chief"``, ``"worker"``, or ``None`` for a search in one process.

    Raises:
        ValueError: ``KERASTUNER_ORACLE_IP`` is set without the other two variables.
    """
    if "KERASTUNER_ORACLE_IP" not in os.environ:
        return None
    missing = [
        name
        for name in ("KERASTUNER_ORACLE_PORT", "KERASTUNER_TUNER_ID")
        if not os.environ.get(name)
    ]
    if missing:
        raise ValueError(
            f"KERASTUNER_ORACLE_IP is set, so this is a distributed search, but {missing} "
            "are not; give every process the oracle's port and its own tuner id "
            "(KERASTUNER_TUNER_ID=chief for the oracle, tuner0, tuner1, ... for workers)"
        )
    return "chief" if "chief" in os.environ["KERASTUNER_TUNER_ID"] else "worker"


# seconds a worker waits before asking again when the oracle has no trial for it yet
_IDLE_WAIT = 0.5


class _RanksByCheckedObjective:
    """Tuner mixin: a checked objective, checked callbacks, and no objective switch on resume.

    In a distributed search it also keeps workers off the chief's files: a worker leaves
    the search directory and its objective record to the chief (``overwrite`` is the
    chief's to do), and waits between requests while the oracle has no trial for it.
    """

    def __init__(self, hypermodel=None, objective=DEFAULT_OBJECTIVE, **kwargs):
        objective = resolve_objective(objective)
        self._worker = distributed_role() == "worker"
        if self._worker:
            # the chief deletes and recreates the shared search directory, not its workers
            kwargs["overwrite"] = False
        self._asked_without_trial = 0
        super().__init__(hypermodel=hypermodel, objective=objective, **kwargs)
        self._record_objective(objective)

    def pre_create_trial(self):
        # Keras Tuner's workers ask again at once while the oracle answers IDLE (a grid or
        # Hyperband waiting for running trials), which keeps a core busy; back off instead.
        if self._asked_without_trial:
            time.sleep(min(_IDLE_WAIT * self._asked_without_trial, 5.0))
        self._asked_without_trial += 1
        super().pre_create_trial()

    def on_trial_begin(self, trial):
        self._asked_without_trial = 0
        super().on_trial_begin(trial)

    def _record_objective(self, objective: keras_tuner.Objective) -> None:
        record_path = os.path.join(self.project_dir, _OBJECTIVE_RECORD)
        wanted = {"name": objective.name, "direction": objective.direction}
        if tf.io.gfile.exists(record_path):
            with tf.io.gfile.GFile(record_path) as handle:
                recorded = json.loads(handle.read())
            if recorded != wanted:
                raise ValueError(
                    f"{record_path}: this search's trials were scored by objective "
                    f"{recorded['name']!r} ({recorded['direction']}), not {objective.name!r} "
                    f"({objective.direction}); resuming would rank old and new trials by "
                    "different numbers. Use the recorded objective, another project_name, "
                    "or overwrite=True"
                )
            return
        if not self._worker:  # in a distributed search the chief writes the record
            _write_json_atomically(record_path, wanted)

    def search(self, *fit_args, **fit_kwargs):
        """Run the search; ``fit_kwargs["callbacks"]`` is checked by ``check_search_callbacks``,
        and each model built against its ``VolumeValidation`` callbacks
        (:func:`_check_outputs`): a model that outputs logits is refused before it trains
        when one of them thresholds probabilities, and one that outputs probabilities when
        one of them reads logits."""
        callbacks = fit_kwargs.get("callbacks")
        check_search_callbacks(self.oracle.objective, callbacks)
        self._validations = [callback for callback in callbacks or ()
                             if isinstance(callback, VolumeValidation)]  # fmt: skip
        if getattr(self.hypermodel, "from_logits", False) is True:  # a SegmentationHyperModel's
            _check_outputs(self._validations, True, "the hypermodel builds with activation=None")
        if _has_tensorboard_callback(callbacks) and importlib.util.find_spec("tensorboard") is None:
            raise ImportError(
                "Keras Tuner logs each trial's hyperparameters next to a TensorBoard callback "
                "with the tensorboard package: pip install tensorboard"
            )
        return super().search(*fit_args, **fit_kwargs)

    def _try_build(self, hp):
        model = super()._try_build(hp)
        kind = output_kind(model)
        if kind is not None:
            _check_outputs(getattr(self, "_validations", ()), *kind)
        return model

    def _configure_tensorboard_dir(self, callbacks, trial, execution=0):
        # Keras Tuner imports tensorboard here for every trial on the TensorFlow backend, but
        # only uses it for TensorBoard callbacks; TensorFlow 2.21 no longer installs it,
        # so without such a callback there is nothing to configure and nothing to import.
        if _has_tensorboard_callback(callbacks):
            super()._configure_tensorboard_dir(callbacks, trial, execution)


class RandomSearch(_RanksByCheckedObjective, keras_tuner.RandomSearch):
    """``keras_tuner.RandomSearch`` ranking by ``val_volume_dice`` unless told otherwise."""


class BayesianOptimization(_RanksByCheckedObjective, keras_tuner.BayesianOptimization):
    """``keras_tuner.BayesianOptimization`` ranking by ``val_volume_dice`` by default."""


class Hyperband(_RanksByCheckedObjective, keras_tuner.Hyperband):
    """``keras_tuner.Hyperband`` ranking by ``val_volume_dice`` unless told otherwise."""


class _ResumableGridSearchOracle(keras_tuner.oracles.GridSearchOracle):
    """``GridSearchOracle`` that goes on walking its grid after a reload.

    Keras Tuner 1.4's grid oracle keeps its walk (the tried combinations in grid order and
    the trials whose next combination is still to be proposed) in memory only, so a
    reloaded grid search proposes nothing new and stops. Both are rebuilt here from the
    reloaded trials.
    """

    def set_state(self, state):
        super().set_state(state)
        started = [trial_id for trial_id in self.start_order if trial_id in self.trials]

        def compare(first, second):
            return self._compare(
                self.trials[first].hyperparameters.values,
                self.trials[second].hyperparameters.values,
            )

        ordered_ids = type(self._ordered_ids)()
        for trial_id in sorted(started, key=functools.cmp_to_key(compare)):
            ordered_ids.insert(trial_id)
        self._ordered_ids = ordered_ids
        # trials that were running are retried by Oracle.reload and queued when they end
        self._populate_next = [trial_id for trial_id in self.end_order if trial_id in self.trials]


class _ResumableGridSearch(keras_tuner.GridSearch):
    """``keras_tuner.GridSearch`` with :class:`_ResumableGridSearchOracle`."""

    def __init__(
        self,
        hypermodel=None,
        objective=None,
        max_trials=None,
        seed=None,
        hyperparameters=None,
        tune_new_entries=True,
        allow_new_entries=True,
        max_retries_per_trial=0,
        max_consecutive_failed_trials=3,
        **kwargs,
    ):
        self.seed = seed
        oracle = _ResumableGridSearchOracle(
            objective=objective,
            max_trials=max_trials,
            seed=seed,
            hyperparameters=hyperparameters,
            tune_new_entries=tune_new_entries,
            allow_new_entries=allow_new_entries,
            max_retries_per_trial=max_retries_per_trial,
            max_consecutive_failed_trials=max_consecutive_failed_trials,
        )
        keras_tuner.Tuner.__init__(self, oracle, hypermodel, **kwargs)


class GridSearch(_RanksByCheckedObjective, _ResumableGridSearch):
    """``keras_tuner.GridSearch`` over every combination, ranked by ``val_volume_dice``.

    Its oracle rebuilds the grid walk when a search directory is reloaded, so a crashed
    grid search goes on with the combinations it had not finished.
    """


TUNERS = {
    "random": RandomSearch,
    "bayesian": BayesianOptimization,
    "hyperband": Hyperband,
    "grid": GridSearch,
}
"""Tuner kinds accepted by :func:`tuner` (and ``"staged"``, see :class:`StagedSearch`)."""


def _declared_space(hypermodel) -> keras_tuner.HyperParameters:
    """The hyperparameters a hypermodel declares, found by declaring them once."""
    hp = keras_tuner.HyperParameters()
    if isinstance(hypermodel, SegmentationHyperModel):
        hypermodel.declare(hp)
    elif isinstance(hypermodel, keras_tuner.HyperModel):
        hypermodel.declare_hyperparameters(hp)
        hypermodel.build(hp)
    else:
        hypermodel(hp)
    return hp


def _continuous(space: keras_tuner.HyperParameters) -> list[str]:
    """Names of ``Int`` / ``Float`` ranges without a ``step`` (a grid cannot list them)."""
    return [hp.name for hp in space.space if hasattr(hp, "step") and hp.step is None]


_STAGES_RECORD = "kseg_stages.json"


class StagedSearchMismatchError(LayoutError, ValueError):
    """A staged search's folder holds a search with other stages or another objective.

    A :class:`kseg.errors.LayoutError`, so ``kseg tune`` prints it as one line, and a
    ``ValueError`` as it was before it had a kseg type, so ``except ValueError`` keeps
    catching it.
    """


def _stages_text(stages) -> str:
    """Stages the way ``kseg tune --stages`` takes them: ``loss=dice,dice_ce base_filters=8``."""
    return " ".join(f"{name}={','.join(map(str, values))}" for name, values in stages)


def _mismatch(project_dir: str, record_path: str, recorded, wanted) -> StagedSearchMismatchError:
    """What differs between the recorded search and the requested one, and the ways on."""
    if not isinstance(recorded, Mapping):
        recorded = {}
    differences = []
    if recorded.get("stages") != wanted["stages"]:
        differences.append(
            f"it ran the stages {_stages_text(recorded.get('stages') or [])!r}, this search "
            f"asks for {_stages_text(wanted['stages'])!r}"
        )
    if recorded.get("objective") != wanted["objective"]:
        differences.append(
            f"it ranked trials by {recorded.get('objective')}, this search by {wanted['objective']}"
        )
    return StagedSearchMismatchError(
        project_dir,
        f"holds another staged search ({'; '.join(differences)}; recorded in "
        f"{os.path.basename(record_path)}); resuming would mix the trials of two searches. "
        "Give another --output-dir (in Python: another directory or project_name) for a new "
        "search, rerun with the recorded stages and objective to resume it, or delete it "
        "(overwrite=True)",
    )


@contextlib.contextmanager
def _oracle_port_of_stage(index: int):
    """In a distributed search, ``KERASTUNER_ORACLE_PORT`` of stage ``index`` (1-based).

    Each stage gets its own port so that a worker done with one stage cannot reach the
    previous stage's oracle, which Keras Tuner leaves serving, and be told it has stopped.
    """
    if distributed_role() is None:
        yield
        return
    base = os.environ["KERASTUNER_ORACLE_PORT"]
    try:
        port = int(base)
    except ValueError:
        raise ValueError(f"KERASTUNER_ORACLE_PORT must be a port number, got {base!r}") from None
    os.environ["KERASTUNER_ORACLE_PORT"] = str(port + index - 1)
    try:
        yield
    finally:
        os.environ["KERASTUNER_ORACLE_PORT"] = base


@dataclasses.dataclass(frozen=True)
class StageResult:
    """What one stage of a :class:`StagedSearch` found.

    Attributes:
        name: the hyperparameter the stage searched.
        values: the values it tried, in order.
        best_value: the value of its best trial, carried into the later stages.
        best_score: that trial's objective.
        best_hyperparameters: all hyperparameter values of that trial.
        table: path of the stage's CSV table (trial id, values, objective).
        tuner: the stage's :class:`GridSearch`, for Keras Tuner's own queries.
    """

    name: str
    values: tuple
    best_value: object
    best_score: float
    best_hyperparameters: keras_tuner.HyperParameters
    table: str
    tuner: GridSearch


def _check_stages(stages, space: keras_tuner.HyperParameters) -> list[tuple[str, list]]:
    if isinstance(stages, (str, Mapping)) or not isinstance(stages, Sequence) or not stages:
        raise ValueError(
            "stages must be a non-empty list of (hyperparameter name, [values]) pairs, got "
            f"{stages!r}"
        )
    declared = [hp.name for hp in space.space]
    checked = []
    for position, stage in enumerate(stages):
        if isinstance(stage, str) or not isinstance(stage, Sequence) or len(stage) != 2:
            raise ValueError(
                f"stages[{position}] must be a (hyperparameter name, [values]) pair, got {stage!r}"
            )
        name, values = stage
        if name not in declared:
            raise ValueError(
                f"stages[{position}]: the hypermodel declares no hyperparameter {name!r}; it "
                f"declares {declared}"
            )
        if name in [earlier for earlier, _ in checked]:
            raise ValueError(f"stages[{position}]: {name!r} is searched by an earlier stage")
        if isinstance(values, np.ndarray):  # values computed with numpy
            values = values.tolist()
        if isinstance(values, (str, Mapping)) or not isinstance(values, Sequence) or not values:
            raise ValueError(f"stages[{position}]: {name!r} needs a non-empty list of values")
        values = [_python_value(value) for value in values]
        if not all(isinstance(value, (str, numbers.Real)) for value in values):
            raise ValueError(
                f"stages[{position}]: values of {name!r} must be strings, numbers or booleans, "
                f"got {values!r}"
            )
        if len({type(value) for value in values}) > 1:
            raise ValueError(
                f"stages[{position}]: values of {name!r} mix types {values!r}; Keras Tuner's "
                "Choice takes values of one type (write 1.0, not 1, beside 0.5)"
            )
        if len(set(values)) != len(values):
            raise ValueError(f"stages[{position}]: values of {name!r} repeat: {values!r}")
        checked.append((name, list(values)))
    return checked


def _write_text_atomically(path: str, text: str) -> None:
    temporary = f"{path}.tmp"
    with tf.io.gfile.GFile(temporary, "w") as handle:
        handle.write(text)
    tf.io.gfile.rename(temporary, path, overwrite=True)


class StagedSearch:
    """One hyperparameter at a time: a grid search per stage, each stage's best carried on.

    Stage ``i`` runs a :class:`GridSearch` over the values of its hyperparameter with the
    winners of stages ``1 .. i-1`` fixed and every other hyperparameter at its default
    (Keras Tuner's ``hyperparameters=`` with ``tune_new_entries=False``), keeps the value
    of its best trial by the objective, and writes ``stage_<i>_<name>.csv`` (trial id, the
    trial's hyperparameter values, the objective; one row per completed trial) into
    ``directory/project_name``. Each stage's trials live in
    ``directory/project_name/stage_<i>_<name>/``, so a search run again over the same
    directory reloads the finished stages and trials instead of training them again and
    goes on where it stopped. The stages and objective are recorded there, and resuming
    with others is refused (:class:`StagedSearchMismatchError`, naming the folder and what
    differs). A stage may list values the hypermodel's own space does not
    hold, or search a hyperparameter it pins: the declared default (or pinned value) is
    what the stages before it use.

    Args:
        hypermodel: a ``keras_tuner.HyperModel``, usually a
            :class:`SegmentationHyperModel`.
        stages: ``[(hyperparameter name, [values]), ...]`` in search order; each name must
            be declared by the hypermodel, once.
        objective: see :func:`resolve_objective` (default ``"val_volume_dice"``).
        directory, project_name: where the search state lives.
        seed: seed passed to each stage's oracle.
        overwrite: delete an existing search in ``directory/project_name`` first.
        **kwargs: passed to each stage's :class:`GridSearch` (``executions_per_trial``,
            ``max_consecutive_failed_trials``, ...).

    Example:
        >>> import tempfile
        >>> hypermodel = SegmentationHyperModel((128, 128, 1), 1, models="unet", depth=4,
        ...                                     base_filters=16, losses="topk")
        >>> runs = tempfile.mkdtemp()
        >>> search = tuner("staged", hypermodel, directory=runs, project_name="staged",
        ...                stages=[("topk_k", [5, 10, 20]),
        ...                        ("learning_rate", [1e-3, 3e-4]),
        ...                        ("base_filters", [8, 16])])
        >>> type(search).__name__
        'StagedSearch'

        Searching trains a model per trial, so it is not run here; the first
        stage's table is also written to ``runs/staged/stage_1_topk_k.csv`` and the last
        line gives the best trial of all stages:

        >>> search.search(train, validation_data=val, epochs=30,  # doctest: +SKIP
        ...               callbacks=[VolumeValidation(val_volumes)])
        >>> search.best_values()  # doctest: +SKIP
        {'topk_k': ..., 'learning_rate': ..., 'base_filters': ...}
        >>> search.results[0].table  # doctest: +SKIP
        '.../staged/stage_1_topk_k.csv'
        >>> best = search.get_best_hyperparameters()[0].values  # doctest: +SKIP
    """

    def __init__(
        self,
        hypermodel,
        stages,
        *,
        objective=DEFAULT_OBJECTIVE,
        directory,
        project_name: str,
        seed: int | None = None,
        overwrite: bool = False,
        **kwargs,
    ):
        self.objective = resolve_objective(objective)
        self.space = _declared_space(hypermodel)
        self.stages = _check_stages(stages, self.space)
        self.hypermodel = hypermodel
        self.project_dir = os.path.join(os.fspath(directory), project_name)
        self.seed = seed
        self.tuner_kwargs = kwargs
        self.results: list[StageResult] = []
        self._role = distributed_role()
        # in a distributed search the chief owns the shared directory (see _RanksByCheckedObjective)
        if overwrite and self._role != "worker" and tf.io.gfile.exists(self.project_dir):
            tf.io.gfile.rmtree(self.project_dir)
        record_path = os.path.join(self.project_dir, _STAGES_RECORD)
        wanted = {
            "objective": {"name": self.objective.name, "direction": self.objective.direction},
            "stages": [[name, values] for name, values in self.stages],
        }
        if tf.io.gfile.exists(record_path):
            with tf.io.gfile.GFile(record_path) as handle:
                recorded = json.loads(handle.read())
            if recorded != wanted:
                raise _mismatch(self.project_dir, record_path, recorded, wanted)
        elif self._role != "worker":
            tf.io.gfile.makedirs(self.project_dir)
            _write_json_atomically(record_path, wanted)

    def _stage_hyperparameters(
        self, name, values, winners, *, check: bool = True
    ) -> keras_tuner.HyperParameters:
        """Earlier winners ``Fixed`` and this stage's values a ``Choice``, under the same
        conditions as the hypermodel declares them (``base_filters`` only for models that
        have it), so the hypermodel's own declarations pick these up."""
        declared = {}
        for parameter in self.space.space:
            declared.setdefault(parameter.name, parameter)
        hp = keras_tuner.HyperParameters()
        registered = set()

        def register(key):
            if key in registered:
                return
            registered.add(key)
            for condition in declared[key].conditions:
                register(condition.name)
            with contextlib.ExitStack() as scopes:
                for condition in declared[key].conditions:
                    scopes.enter_context(hp.conditional_scope(condition.name, condition.values))
                if key == name:
                    hp.Choice(key, values)
                else:
                    hp.Fixed(key, winners.get(key, declared[key].default))

        register(name)
        for earlier in winners:
            register(earlier)
        if check and not hp.is_active(name):
            unmet = {
                condition.name: list(condition.values)
                for condition in declared[name].conditions
                if not condition.is_active(hp.values)
            }
            fixed = {parent: hp.values.get(parent) for parent in unmet}
            raise ValueError(
                f"stages: {name!r} is only used when {unmet}, but this stage runs with "
                f"{fixed} (an earlier stage's best or the default), so every value would "
                "train the same model; search or fix the parent first"
            )
        return hp

    def search(self, *fit_args, **fit_kwargs) -> StagedSearch:
        """Run (or resume) the stages in order; arguments as in ``Tuner.search``.

        In a distributed search (see :func:`distributed_role`) each stage is one Keras Tuner
        distributed search, stage ``i`` on port ``KERASTUNER_ORACLE_PORT + i - 1``: the chief
        serves a stage's oracle until every worker is done with it, ranks it and carries its
        best value on, and a worker's requests for the next stage wait until the chief serves
        it. Workers train the trials they are given (which carry the earlier winners) and
        keep no :attr:`results`; the chief has them.

        Returns:
            this search, with :attr:`results` holding one :class:`StageResult` per stage.

        Raises:
            RuntimeError: no trial of a stage completed, so it has no value to carry on.
        """
        winners: dict[str, object] = {}
        self.results = []
        worker = self._role == "worker"
        for index, (name, values) in enumerate(self.stages, 1):
            with _oracle_port_of_stage(index):
                stage_tuner = GridSearch(
                    hypermodel=self.hypermodel,
                    objective=self.objective,
                    # a worker does not know the winners; its trials bring them from the chief
                    hyperparameters=self._stage_hyperparameters(
                        name, values, winners, check=not worker
                    ),
                    tune_new_entries=False,
                    directory=self.project_dir,
                    project_name=f"stage_{index}_{name}",
                    seed=self.seed,
                    **self.tuner_kwargs,
                )
                stage_tuner.search(*fit_args, **fit_kwargs)
            if worker:
                continue
            completed = self._completed_trials(stage_tuner)
            if not completed:
                raise RuntimeError(
                    f"stage {index} ({name!r}): no trial completed in "
                    f"{stage_tuner.project_dir}, so there is no best value to carry on"
                )
            best = stage_tuner.oracle.get_best_trials(1)[0]
            winners[name] = best.hyperparameters.get(name)
            table = os.path.join(self.project_dir, f"stage_{index}_{name}.csv")
            _write_text_atomically(table, self._table(completed))
            self.results.append(
                StageResult(
                    name=name,
                    values=tuple(values),
                    best_value=winners[name],
                    best_score=best.score,
                    best_hyperparameters=best.hyperparameters.copy(),
                    table=table,
                    tuner=stage_tuner,
                )
            )
        return self

    @staticmethod
    def _completed_trials(stage_tuner) -> list:
        trials = [
            trial
            for trial in stage_tuner.oracle.trials.values()
            if trial.status == keras_tuner.engine.trial.TrialStatus.COMPLETED
        ]
        return sorted(trials, key=lambda trial: int(trial.trial_id))

    def _table(self, trials) -> str:
        names = []
        for trial in trials:
            names.extend(key for key in trial.hyperparameters.values if key not in names)
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(["trial_id", *names, self.objective.name])
        for trial in trials:
            values = trial.hyperparameters.values
            writer.writerow([trial.trial_id, *(values.get(key, "") for key in names), trial.score])
        return buffer.getvalue()

    def _require_results(self) -> None:
        if self._role == "worker":
            raise RuntimeError(
                "this process is a worker of a distributed staged search; the chief "
                "(KERASTUNER_TUNER_ID=chief) ranks the stages and holds the results"
            )
        if len(self.results) != len(self.stages):
            raise RuntimeError("the staged search has not run all its stages; call search()")

    def best_values(self) -> dict:
        """``{stage hyperparameter: its best value}``, in stage order."""
        self._require_results()
        return {result.name: result.best_value for result in self.results}

    def get_best_hyperparameters(self, num_trials: int = 1) -> list:
        """The hyperparameters of the best ``num_trials`` trials over all stages, best first."""
        self._require_results()
        trials = [
            trial for result in self.results for trial in self._completed_trials(result.tuner)
        ]
        trials.sort(key=lambda trial: trial.score, reverse=self.objective.direction == "max")
        return [trial.hyperparameters.copy() for trial in trials[:num_trials]]


def tuner(
    kind: str,
    hypermodel: keras_tuner.HyperModel,
    *,
    objective=DEFAULT_OBJECTIVE,
    directory,
    project_name: str,
    max_trials: int | None = None,
    max_epochs: int | None = None,
    seed: int | None = None,
    overwrite: bool = False,
    stages=None,
    **kwargs,
):
    """A Keras Tuner tuner that ranks trials by whole-volume validation Dice by default.

    The search state lives in ``directory/project_name``: with ``overwrite=False`` (the
    default) a new tuner over an existing directory reloads the finished trials and goes
    on where a crashed or stopped search left off, instead of running them again. The
    objective a directory was searched with is recorded there, and resuming with another
    one is refused. With Keras Tuner's ``KERASTUNER_*`` variables set the search is
    distributed (see the module documentation); a worker then never deletes the
    directory, whatever ``overwrite`` says: the chief does.

    Pass :class:`kseg.training.VolumeValidation` first in ``search(callbacks=[...])``; it
    writes ``val_volume_dice`` at each epoch end and Keras Tuner scores a trial by the
    best epoch value. Keras Tuner deep-copies the callbacks for every trial, validation
    volumes included.

    Args:
        kind: ``"random"``, ``"bayesian"`` (Gaussian-process Bayesian optimisation; needs
            scikit-learn, ``pip install keras-tuner[bayesian]``), ``"hyperband"``,
            ``"grid"`` (every combination of the hypermodel's discrete values; continuous
            ranges are refused) or ``"staged"`` (one hyperparameter at a time, see
            :class:`StagedSearch`; needs ``stages``).
        hypermodel: a ``keras_tuner.HyperModel``, usually a
            :class:`SegmentationHyperModel`.
        objective: a validation log key or ``keras_tuner.Objective``; checked by
            :func:`resolve_objective` (default ``"val_volume_dice"``, maximised).
        directory: folder that holds the search state (local or any ``tf.io.gfile`` path).
        project_name: sub-folder of ``directory`` for this search.
        max_trials: number of trials of a random or Bayesian search (required there); a
            grid search runs every combination unless it is given (then it stops after
            ``max_trials``).
        max_epochs: largest number of epochs Hyperband trains a model (required there;
            Hyperband derives its number of trials from it). Random and Bayesian searches
            take ``epochs`` in ``search()``.
        seed: seed of the oracle's hyperparameter sampling (model weights are not seeded
            here; use ``keras.utils.set_random_seed``).
        overwrite: delete an existing search in ``directory/project_name`` and start over.
        stages: for ``kind="staged"`` only: ``[(hyperparameter name, [values]), ...]``.
        **kwargs: passed to the Keras Tuner class (``executions_per_trial``,
            ``num_initial_points``, ``factor``, ``max_consecutive_failed_trials``, ...).

    Returns:
        A :class:`RandomSearch`, :class:`BayesianOptimization`, :class:`Hyperband` or
        :class:`GridSearch` (subclasses of the Keras Tuner classes of the same names), or
        a :class:`StagedSearch`.

    Raises:
        ValueError: unknown ``kind``, a missing or misplaced ``max_trials`` /
            ``max_epochs`` / ``stages``, continuous ranges in a grid, bad ``stages`` (see
            :class:`StagedSearch`), a wrong objective (see :func:`resolve_objective`), or a
            resumed directory that was searched with another objective.
        StagedSearchMismatchError: (a ``LayoutError`` and a ``ValueError``) a staged
            search's directory holds a search with other stages or another objective.

    Example:
        >>> import tempfile
        >>> hypermodel = SegmentationHyperModel((128, 128, 1), 1, models=("unet", "res_unet"))
        >>> search = tuner("hyperband", hypermodel, directory=tempfile.mkdtemp(),
        ...                project_name="h", max_epochs=27, seed=1)
        >>> type(search).__name__
        'Hyperband'

    Reference:
        Li L, Jamieson K, DeSalvo G, Rostamizadeh A, Talwalkar A. "Hyperband: A Novel
        Bandit-Based Approach to Hyperparameter Optimization". JMLR 18(185):1-52, 2018.
    """
    if kind == "staged":
        for argument, value in (("max_trials", max_trials), ("max_epochs", max_epochs)):
            if value is not None:
                raise ValueError(
                    f"{argument} does not apply to kind='staged', which runs every value of "
                    "each stage once"
                )
        return StagedSearch(
            hypermodel,
            stages,
            objective=objective,
            directory=directory,
            project_name=project_name,
            seed=seed,
            overwrite=overwrite,
            **kwargs,
        )
    if stages is not None:
        raise ValueError(f"stages applies to kind='staged' only, not kind={kind!r}")
    if kind not in TUNERS:
        known = ", ".join([*TUNERS, "staged"])
        raise ValueError(f"unknown tuner kind {kind!r}; known kinds: {known}")
    budget = {}
    if kind == "grid":
        if max_epochs is not None:
            raise ValueError(
                "max_epochs applies to kind='hyperband' only; give kind='grid' its epochs in "
                "search(..., epochs=...)"
            )
        if max_trials is not None and not _is_positive_int(max_trials):
            raise ValueError(f"max_trials must be None or an integer >= 1, got {max_trials!r}")
        resolve_objective(objective)  # refuse a wrong objective before building models
        continuous = _continuous(_declared_space(hypermodel))
        if continuous:
            raise ValueError(
                f"kind='grid' runs every combination of discrete values, but {continuous} "
                "are continuous ranges (Keras Tuner would grid them at 10 arbitrary points); "
                "pin them (SegmentationHyperModel(fixed=...)), give them a step, or search "
                "listed values with kind='staged'"
            )
        budget["max_trials"] = max_trials
    elif kind == "hyperband":
        if max_trials is not None:
            raise ValueError(
                "max_trials does not apply to kind='hyperband', which derives the number of "
                "trials from max_epochs and factor"
            )
        if not _is_positive_int(max_epochs):
            raise ValueError(f"kind='hyperband' needs max_epochs >= 1, got {max_epochs!r}")
        budget["max_epochs"] = max_epochs
    else:
        if max_epochs is not None:
            raise ValueError(
                f"max_epochs applies to kind='hyperband' only; give kind={kind!r} its epochs "
                "in search(..., epochs=...)"
            )
        if not _is_positive_int(max_trials):
            raise ValueError(f"kind={kind!r} needs max_trials >= 1, got {max_trials!r}")
        budget["max_trials"] = max_trials
    return TUNERS[kind](
        hypermodel=hypermodel,
        objective=objective,
        directory=directory,
        project_name=project_name,
        seed=seed,
        overwrite=overwrite,
        **budget,
        **kwargs,
    )


def _is_positive_int(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool) and value >= 1


def _python_value(value):
    """A numpy scalar as the Python one Keras Tuner takes (its ``Choice`` and ``Fixed``
    refuse numpy types, and trials are saved as JSON)."""
    return value.item() if isinstance(value, np.generic) else value


def _as_tuple(name: str, value) -> tuple:
    if isinstance(value, np.ndarray):  # choices computed with numpy
        value = value.tolist()
    if isinstance(value, str) or not isinstance(value, Sequence):
        return (_python_value(value),)
    if not value:
        raise ValueError(f"{name} must not be empty")
    return tuple(_python_value(v) for v in value)


def _check_range(name: str, value, low_limit, integer: bool) -> tuple:
    """A scalar or an inclusive ``(low, high)`` range of numbers, as a tuple."""
    kind = numbers.Integral if integer else numbers.Real
    values = _as_tuple(name, value)
    if (
        len(values) not in (1, 2)
        or any(isinstance(v, bool) or not isinstance(v, kind) for v in values)
        or not all(low_limit(v) for v in values)
        or values[0] > values[-1]
    ):
        raise ValueError(f"{name} must be a number or a (low, high) range, got {value!r}")
    return values


def _builder_arguments(model_name: str) -> set[str]:
    return set(inspect.signature(MODELS[model_name]).parameters)


class SegmentationHyperModel(keras_tuner.HyperModel):
    """Search space over kseg models, their size, loss, optimiser and learning rate.

    Every trial builds ``kseg.models.build(model, input_shape=..., num_classes=...,
    depth=..., base_filters=..., dropout=...)`` and compiles it with the chosen
    ``kseg.losses`` class, optimiser and learning rate, and with
    :class:`kseg.metrics.DiceScore` so the logs hold ``dice`` / ``val_dice`` beside the
    ``val_volume_dice`` that :class:`kseg.training.VolumeValidation` adds.

    Each search-space argument takes a single value (pinned, a ``Fixed`` hyperparameter)
    or the set to search: a sequence of choices for names and filter counts, an inclusive
    ``(low, high)`` range for depth, dropout and learning rate (sampled log-uniformly).
    ``depth`` and ``base_filters`` only apply to models that have them (not
    ``highresnet``); they are conditional on the model hyperparameter. ``fixed`` pins any
    hyperparameter of :data:`HYPERPARAMETERS` whatever the space says, e.g. to re-run the
    best configuration with one value changed.

    Args:
        input_shape: model input ``(*spatial, channels)``, 2D or 3D; ``None`` for sizes
            that vary. Known sizes must be divisible by ``2**depth`` for the largest depth.
        num_classes: output channels (1 for a binary sigmoid model).
        models: names of ``kseg.models.MODELS``.
        base_filters: filter counts of the first level.
        depth: number of downsampling levels, or an inclusive ``(low, high)`` range.
        dropout: dropout rate in [0, 1), or an inclusive ``(low, high)`` range.
        losses: names of :data:`LOSSES`.
        topk_k: percentage ``k`` of the hardest voxels :class:`kseg.losses.TopKLoss`
            keeps, or the percentages to search; only declared when ``"topk"`` is among
            ``losses`` (conditional on it).
        optimizers: names of :data:`OPTIMIZERS`.
        learning_rate: a rate, or an inclusive ``(low, high)`` range searched on a log scale.
        batch_sizes: batch sizes to search in ``fit`` (``None``: the batch size given to
            ``search``). Then ``x`` of ``search`` must be arrays (Keras batches them) or a
            function ``batch_size -> tf.data.Dataset`` that builds the batched pipeline.
        fixed: ``{hyperparameter name: value}`` pinned for every trial.
        model_kwargs: further fixed arguments of the model builders (``upsampling``,
            ``batch_norm``, ``activation=None`` for logits, which switches the losses and
            the Dice metric to ``from_logits=True``).
        loss_kwargs: ``{loss name: arguments}`` of the loss classes, e.g.
            ``{"tversky": {"alpha": 0.3, "beta": 0.7}}``.
        compile_kwargs: further ``model.compile`` arguments (``jit_compile``,
            ``run_eagerly``, ``steps_per_execution``).
        name: name of the hypermodel.

    Example:
        >>> hypermodel = SegmentationHyperModel(
        ...     (64, 64, 64, 1), 3, models=("unet", "res_unet"), base_filters=(16, 32),
        ...     depth=(3, 4), losses=("dice_ce", "topk"), optimizers="sgd",
        ...     learning_rate=(1e-3, 1e-1), fixed={"dropout": 0.0})

    Reference:
        Isensee F, Jaeger PF, Kohl SAA, Petersen J, Maier-Hein KH. "nnU-Net: a
        self-configuring method for deep learning-based biomedical image segmentation".
        Nature Methods 18:203-211, 2021 (the SGD settings of ``"sgd"``).
    """

    def __init__(
        self,
        input_shape: Sequence[int | None],
        num_classes: int = 1,
        *,
        models: str | Sequence[str] = ("unet",),
        base_filters: int | Sequence[int] = (16, 32),
        depth: int | tuple[int, int] = (3, 4),
        dropout: float | tuple[float, float] = 0.0,
        losses: str | Sequence[str] = ("dice", "dice_ce"),
        topk_k: float | Sequence[float] = 10.0,
        optimizers: str | Sequence[str] = "adam",
        learning_rate: float | tuple[float, float] = (1e-4, 1e-2),
        batch_sizes: int | Sequence[int] | None = None,
        fixed: Mapping[str, object] | None = None,
        model_kwargs: Mapping[str, object] | None = None,
        loss_kwargs: Mapping[str, Mapping[str, object]] | None = None,
        compile_kwargs: Mapping[str, object] | None = None,
        name: str | None = None,
    ):
        super().__init__(name=name)
        self.input_shape = tuple(input_shape)
        if len(self.input_shape) not in (3, 4):
            raise ValueError(
                f"input_shape must be (*spatial, channels) with 2 or 3 spatial axes, got "
                f"{input_shape!r}"
            )
        if not _is_positive_int(num_classes):
            raise ValueError(f"num_classes must be an integer >= 1, got {num_classes!r}")
        self.num_classes = int(num_classes)
        self.fixed = dict(fixed or {})
        unknown = sorted(set(self.fixed) - set(HYPERPARAMETERS))
        if unknown:
            raise ValueError(
                f"fixed names unknown hyperparameters {unknown}; known: {list(HYPERPARAMETERS)}"
            )

        def space(name, value):
            return (self.fixed[name],) if name in self.fixed else value

        self.models = self._checked_names("models", space("model", models), MODELS)
        self.losses = self._checked_names("losses", space("loss", losses), LOSSES)
        self.topk_k = _as_tuple("topk_k", space("topk_k", topk_k))
        if not all(
            isinstance(k, numbers.Real) and not isinstance(k, bool) and 0 < k <= 100
            for k in self.topk_k
        ):
            raise ValueError(f"topk_k must be percentages in (0, 100], got {topk_k!r}")
        self.optimizers = self._checked_names(
            "optimizers", space("optimizer", optimizers), OPTIMIZERS
        )
        self.base_filters = _as_tuple("base_filters", space("base_filters", base_filters))
        if not all(_is_positive_int(v) for v in self.base_filters):
            raise ValueError(f"base_filters must be integers >= 1, got {base_filters!r}")
        self.depth = _check_range("depth", space("depth", depth), lambda v: v >= 1, True)
        self.dropout = _check_range(
            "dropout", space("dropout", dropout), lambda v: 0 <= v < 1, False
        )
        self.learning_rate = _check_range(
            "learning_rate", space("learning_rate", learning_rate), lambda v: v > 0, False
        )
        batch_sizes = space("batch_size", batch_sizes)
        self.batch_sizes = None if batch_sizes is None else _as_tuple("batch_sizes", batch_sizes)
        if self.batch_sizes is not None and not all(_is_positive_int(v) for v in self.batch_sizes):
            raise ValueError(f"batch_sizes must be integers >= 1, got {batch_sizes!r}")

        self.model_kwargs = dict(model_kwargs or {})
        self.loss_kwargs = {key: dict(value) for key, value in (loss_kwargs or {}).items()}
        self.compile_kwargs = dict(compile_kwargs or {})
        self._check_model_kwargs()
        unused = sorted(set(self.loss_kwargs) - set(self.losses))
        if unused:
            raise ValueError(f"loss_kwargs names losses outside the search space: {unused}")
        if "k" in self.loss_kwargs.get("topk", {}):
            raise ValueError(
                "loss_kwargs: give TopK's k as topk_k=, a hyperparameter the search can vary"
            )
        self._check_spatial_dims()
        self.from_logits = self.model_kwargs.get("activation", "auto") is None

    @staticmethod
    def _checked_names(argument: str, value, known: Mapping) -> tuple[str, ...]:
        names = _as_tuple(argument, value)
        unknown = [name for name in names if name not in known]
        if unknown:
            raise ValueError(f"{argument}: unknown {unknown}; known: {', '.join(known)}")
        return names

    def _models_taking(self, argument: str) -> list[str]:
        return [name for name in self.models if argument in _builder_arguments(name)]

    def _check_model_kwargs(self) -> None:
        searched = sorted(set(self.model_kwargs) & set(_SEARCHED_MODEL_ARGUMENTS))
        if searched:
            raise ValueError(
                f"model_kwargs sets {searched}, which the hypermodel sets itself; use the "
                "search-space arguments or fixed instead"
            )
        for model_name in self.models:
            refused = sorted(set(self.model_kwargs) - _builder_arguments(model_name))
            if refused:
                raise ValueError(f"model_kwargs: model {model_name!r} takes no {refused}")
        if self.model_kwargs.get("deep_supervision"):
            raise ValueError(
                "model_kwargs: deep_supervision=True gives the model several outputs; the "
                "hypermodel compiles one loss and one Dice metric for one output"
            )

    def _check_spatial_dims(self) -> None:
        spatial_dims = len(self.input_shape) - 1
        for model_name in self.models:
            preset = getattr(MODELS[model_name], "keywords", {}).get("spatial_dims")
            if preset is not None and preset != spatial_dims:
                raise ValueError(
                    f"models: {model_name!r} is {preset}D but input_shape {self.input_shape} "
                    f"has {spatial_dims} spatial axes"
                )
        if self._models_taking("depth"):
            factor = 2 ** self.depth[-1]
            for axis, size in enumerate(self.input_shape[:-1]):
                if size is not None and size % factor:
                    raise ValueError(
                        f"input_shape[{axis}]={size} is not divisible by 2**depth={factor} "
                        f"for the largest depth {self.depth[-1]}; lower depth or change the "
                        "input size"
                    )

    @staticmethod
    def _choice(hp, name, values):
        if len(values) == 1:
            return hp.Fixed(name, values[0])
        return hp.Choice(name, list(values))

    @staticmethod
    def _range(hp, name, values, integer, sampling="linear"):
        if values[0] == values[-1]:
            return hp.Fixed(name, values[0])
        if integer:
            return hp.Int(name, values[0], values[-1])
        return hp.Float(name, values[0], values[-1], sampling=sampling)

    def declare(self, hp: keras_tuner.HyperParameters) -> dict:
        """Declare the search space on ``hp`` and return this trial's values.

        Args:
            hp: the trial's ``keras_tuner.HyperParameters``.

        Returns:
            ``{name: value}`` for every hyperparameter active in this trial (``depth`` and
            ``base_filters`` are absent for models without them, ``topk_k`` for losses
            other than ``"topk"``).
        """
        values = {"model": self._choice(hp, "model", self.models)}
        for argument, declare in (
            ("base_filters", lambda: self._choice(hp, "base_filters", self.base_filters)),
            ("depth", lambda: self._range(hp, "depth", self.depth, integer=True)),
        ):
            taking = self._models_taking(argument)
            if taking:
                with hp.conditional_scope("model", taking):
                    value = declare()
                if value is not None:
                    values[argument] = value
        values["dropout"] = self._range(hp, "dropout", self.dropout, integer=False)
        values["loss"] = self._choice(hp, "loss", self.losses)
        if "topk" in self.losses:
            with hp.conditional_scope("loss", ["topk"]):
                topk_k = self._choice(hp, "topk_k", self.topk_k)
            if topk_k is not None:
                values["topk_k"] = topk_k
        values["optimizer"] = self._choice(hp, "optimizer", self.optimizers)
        values["learning_rate"] = self._range(
            hp, "learning_rate", self.learning_rate, integer=False, sampling="log"
        )
        if self.batch_sizes is not None:
            values["batch_size"] = self._choice(hp, "batch_size", self.batch_sizes)
        return values

    def build(self, hp: keras_tuner.HyperParameters) -> keras.Model:
        """Build and compile the model of one trial.

        Args:
            hp: the trial's ``keras_tuner.HyperParameters``.

        Returns:
            A compiled ``keras.Model`` with the metric :class:`kseg.metrics.DiceScore`.
        """
        values = self.declare(hp)
        architecture = {key: values[key] for key in ("base_filters", "depth") if key in values}
        model = MODELS[values["model"]](
            input_shape=self.input_shape,
            num_classes=self.num_classes,
            dropout=values["dropout"],
            **architecture,
            **self.model_kwargs,
        )
        loss_arguments = dict(self.loss_kwargs.get(values["loss"], {}))
        if "topk_k" in values:
            loss_arguments["k"] = values["topk_k"]
        loss = LOSSES[values["loss"]](from_logits=self.from_logits, **loss_arguments)
        model.compile(
            optimizer=OPTIMIZERS[values["optimizer"]](values["learning_rate"]),
            loss=loss,
            metrics=[DiceScore(num_classes=self.num_classes, from_logits=self.from_logits)],
            **self.compile_kwargs,
        )
        return model

    def fit(self, hp: keras_tuner.HyperParameters, model: keras.Model, *args, **kwargs):
        """Train one trial's model, at the trial's batch size when ``batch_sizes`` is set.

        With ``batch_sizes``, arrays get ``batch_size=`` and a function ``x`` is called with
        the batch size to build the training dataset.

        Args:
            hp: the trial's ``keras_tuner.HyperParameters``.
            model: the model ``build`` returned.
            *args, **kwargs: the arguments of ``search``, passed to ``model.fit``.

        Returns:
            The ``History`` of ``model.fit``, from which Keras Tuner reads the objective.
        """
        build_optimizer(model)
        if self.batch_sizes is None:
            return model.fit(*args, **kwargs)
        if "batch_size" in kwargs:
            raise ValueError(
                "search() got batch_size while the hypermodel searches batch_sizes "
                f"{self.batch_sizes}; leave batch_size out of search()"
            )
        batch_size = hp.get("batch_size")
        data = args[0] if args else kwargs.get("x")
        if isinstance(data, tf.data.Dataset):
            raise ValueError(
                "batch_sizes cannot rebatch a tf.data.Dataset (it arrives batched, and "
                "rebatching loses its length); pass x as a function batch_size -> dataset"
            )
        if callable(data):
            if args:
                args = (data(batch_size), *args[1:])
            else:
                kwargs["x"] = data(batch_size)
        else:
            kwargs["batch_size"] = batch_size
        return model.fit(*args, **kwargs)


__all__ = [
    "DEFAULT_OBJECTIVE",
    "HYPERPARAMETERS",
    "LOSSES",
    "OPTIMIZERS",
    "TUNERS",
    "BayesianOptimization",
    "Hyperband",
    "RandomSearch",
    "SegmentationHyperModel",
    "GridSearch",
    "SliceLevelObjectiveWarning",
    "StageResult",
    "StagedSearch",
    "StagedSearchMismatchError",
    "check_search_callbacks",
    "distributed_role",
    "resolve_objective",
    "tuner",
]
