"""Studies: how far a segmentation model holds up, one function (and one command) each.

Every study runs on the data of a 2D recipe (:mod:`kseg.recipes`: ``xray_multiclass``,
``chaos_liver``, ``lctsc_lungs``) and writes ``RUN/studies/<name>/table.csv`` (one row per
scored patient and setting), ``table.txt`` (the summary per setting, then the rows) and
``figure.png``, and returns the :class:`StudyTable`:

- ``noise``: Gaussian noise of standard deviation σ added to the test images of a trained
  run (in model-input units: after the window or intensity scaling, where images lie in
  [0, 1]); per-patient Dice per σ. σ = 0 reproduces the run's own test table.
- ``train-size``: one model per number of training patients, the subsets nested
  (:func:`kseg.data.splits.nested_patient_subset`); whole-volume test Dice against size.
- ``augment``: the recipe's augmentation on vs off.
- ``losses``: BCE / Dice / IoU / Combo / TopK / Dice+CE.
- ``uncertainty``: MC dropout and test-time augmentation maps of a trained run's test
  cases; calibration (ECE, reliability diagram, Brier), how well the uncertainty finds the
  wrong voxels (AUROC) and the per-patient uncertainty-Dice correlation.
- ``ensemble``: each member (one seed each) vs the mean, the weights fitted on validation
  whole-volume Dice (:func:`kseg.inference.fit_ensemble_weights`) and the majority vote.
- ``consistency``: few labelled training patients plus the rest unlabelled;
  supervised-only vs :class:`kseg.training.MeanTeacher` (student and EMA teacher) vs
  :class:`kseg.training.FixMatch`.

Studies that train (all but ``noise`` and ``uncertainty``) give every setting the same
budget: ``--steps`` optimizer steps from the same seed, and score the model as it is after
the last step (no checkpoint selection, which would spend validation differently per
setting). The model, loss and augmentation are the recipe's (its ``build_model`` and
``augmenter``; the ``losses`` study recompiles with each loss), as are
the splits, the intensity window, the image size, the batch size and the learning rate.
Models trained by a study are scored without post-processing; ``noise`` and
``uncertainty`` apply the run's recorded post-processing, as its evaluation does.

Source: a run folder (``RUN/config.json`` names its recipe and options) or a recipe name
plus that recipe's options; a recipe without a trained run is trained first (by the
recipe) for ``noise`` and ``uncertainty``.

Standard library only at import time: the command line answers ``--help`` before
TensorFlow loads.

Example:
    python -m kseg.studies noise kseg_runs/xray_phantom --sigmas 0 0.05 0.1
    python -m kseg.studies consistency xray_multiclass --labeled 3 --steps 300 --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import importlib.util
import io
import math
import os
import pathlib
import sys
import time
import warnings

from kseg.errors import KsegError

STUDIES = ("noise", "train-size", "augment", "losses", "uncertainty", "ensemble", "consistency")
LOSSES = ("bce", "dice", "iou", "combo", "topk", "dice_ce")
CONSISTENCY_METHODS = ("supervised", "mean-teacher", "fixmatch")
TRAINING_STUDIES = ("train-size", "augment", "losses", "ensemble", "consistency")
DEFAULT_SIGMAS = (0.0, 0.02, 0.05, 0.1, 0.2)

# The 2D slice recipes: each has the public training hooks the studies train with,
# splits(args), augmenter(args) and build_model(args, num_classes) (compiled).
SLICE_RECIPES = ("xray_multiclass", "chaos_liver", "lctsc_lungs")


class StudySettingsError(KsegError, ValueError):
    """A study setting the data cannot honour (more training patients than the run has, a
    test split the run does not hold out, ...): the command prints it as one line."""


# --------------------------------------------------------------------------- the table


@dataclasses.dataclass
class StudyTable:
    """What a study measured.

    Attributes:
        name: the study.
        columns: the column names of :attr:`rows`, settings first, then ``patient_id``,
            then the scores.
        rows: one dict per scored patient and setting (``table.csv``).
        summary: one dict per setting: the mean, median and standard deviation over its
            patients of ``score`` and study-specific numbers (calibration, validation Dice).
        score: the column the summary and the figure are about (``dice``, or ``dice_mean``,
            the mean over the structures, for a multi-class task).
        folder: ``RUN/studies/<name>``.
        notes: lines printed under the table (what was skipped and why).
    """

    name: str
    columns: list
    rows: list
    summary: list
    score: str
    folder: pathlib.Path
    notes: list = dataclasses.field(default_factory=list)

    def column(self, name: str, **where) -> list:
        """Values of column ``name`` over the rows whose settings equal ``where``."""
        return [
            row[name]
            for row in self.rows
            if all(row.get(key) == value for key, value in where.items())
        ]

    def __str__(self) -> str:
        lines = [
            f"Study {self.name}: {self.score} per setting "
            f"(per-patient rows in {self.folder / 'table.csv'})",
            "",
        ]
        lines += _format_rows(self.summary)
        if self.notes:
            lines += [""] + list(self.notes)
        lines += ["", "Per patient:", ""] + _format_rows(self.rows, self.columns)
        return "\n".join(lines)


def _format_value(value) -> str:
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.4f}"
    return str(value)


def _format_rows(rows, columns=None) -> list:
    if not rows:
        return ["(no rows)"]
    columns = columns or list(rows[0])
    cells = [[_format_value(row.get(column, "")) for column in columns] for row in rows]
    widths = [
        max(len(column), *(len(line[i]) for line in cells)) for i, column in enumerate(columns)
    ]
    header = "  ".join(column.rjust(width) for column, width in zip(columns, widths, strict=True))
    return [header] + [
        "  ".join(cell.rjust(width) for cell, width in zip(line, widths, strict=True))
        for line in cells
    ]


def _write_text(path: pathlib.Path, text: str) -> None:
    from kseg._files import atomic_output

    with atomic_output(path) as temporary:
        pathlib.Path(temporary).write_text(text, encoding="utf-8")


def _save(table: StudyTable, figure) -> StudyTable:
    """Write ``table.csv``, ``table.txt`` and ``figure.png`` atomically, print the table."""
    from kseg._files import atomic_output

    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=table.columns, lineterminator="\n")
    writer.writeheader()
    for row in table.rows:
        writer.writerow({key: _csv_value(row.get(key, "")) for key in table.columns})
    _write_text(table.folder / "table.csv", buffer.getvalue())
    _write_text(table.folder / "table.txt", str(table) + "\n")
    with atomic_output(table.folder / "figure.png") as temporary:
        figure.savefig(temporary, dpi=100, format="png")
    print(table)
    print(f"\nWrote {table.folder / 'table.csv'}, table.txt and figure.png")
    return table


def _csv_value(value):
    return repr(value) if isinstance(value, float) else value


# --------------------------------------------------------------------------- the data


@dataclasses.dataclass
class StudyData:
    """A 2D recipe's data and conventions, as its training and evaluation use them.

    Attributes:
        recipe_name, recipe: the recipe and its module.
        args: the recipe's options (``output_dir`` is the run folder).
        run_dir: the run folder; studies write into ``run_dir/studies``.
        builder: the prepared TFDS builder.
        splits: ``{"train", "validation", "test"}`` TFDS split expressions.
        window: the intensity transform :func:`kseg.data.pipeline.model_input` takes.
        image_size: model input ``(height, width)``.
        num_classes: model output channels (1: sigmoid binary).
        labels: ``{structure: label}`` scored one column each, or ``None`` (one binary
            structure, column ``dice``).
        threshold: probability threshold of a one-channel model.
        postprocess: the run's post-processing (label map -> label map) or ``None``.
        metrics: the metric names the recipe's tables hold.
        mirror_axes: the axes the run's evaluation averages flips over (config.json's
            ``inference`` ``mirror_axes``; :func:`kseg.predict.inference_model`).
    """

    recipe_name: str
    recipe: object
    args: argparse.Namespace
    run_dir: pathlib.Path
    builder: object
    splits: dict
    window: object
    image_size: tuple
    num_classes: int
    labels: dict | None
    threshold: float
    postprocess: object
    metrics: tuple
    mirror_axes: tuple = ()

    @property
    def score(self) -> str:
        return "dice" if self.labels is None else "dice_mean"


def _window_argument(window):
    """config.json's ``window`` as ``model_input`` takes it (as :mod:`kseg.predict` reads
    it): the name ``"scale_intensity"`` is the radiograph recipe's per-image scaling."""
    if window == "scale_intensity":
        from kseg.data.pipeline import scale_intensity

        return scale_intensity
    return window


def _class_names(builder) -> list | None:
    names = builder.info.metadata.get("class_names") if builder.info.metadata else None
    if names is None:
        names = getattr(builder.builder_config, "class_names", None)
    return None if names is None else list(names)


def _derived_conventions(recipe, builder) -> tuple[dict, dict]:
    """``(inference section, labels)`` of a recipe whose run has no ``config.json`` yet,
    from the recipe's constants and its dataset's class names (as its ``train`` writes
    them)."""
    window = getattr(recipe, "WINDOW", None) or getattr(recipe, "INTENSITY", None)
    labels = getattr(recipe, "LABELS", None)
    if labels is None:
        names = _class_names(builder)
        if names is None:
            raise StudySettingsError(f"dataset {builder.info.full_name} names no classes")
        labels = {name.replace(" ", "_"): index for index, name in enumerate(names) if index}
    num_classes = 1 if len(labels) == 1 else len(labels) + 1
    return {
        "kind": "slices",
        "window": window,
        "num_classes": num_classes,
        "threshold": 0.5,
        "postprocess": "none",
    }, dict(labels)


def study_data(recipe_name: str, args: argparse.Namespace, config: dict | None = None) -> StudyData:
    """The recipe's data for a study: its dataset prepared (``recipe.prepare``), splits,
    intensity window, classes and post-processing, from ``config`` (a run's
    ``config.json``) when given, else from the recipe's own constants.

    Raises:
        ValueError: a recipe that is not a 2D slice recipe (msd_spleen is 3D).
    """
    from kseg import recipes

    _check_slice_recipe(recipe_name)
    recipe = recipes.load(recipe_name)
    # a run's config.json holds the options its plan filled in; a fresh recipe command line
    # gets them from the plan (--plan) as the recipe's own training would
    prepare = recipe.prepare if config is not None else getattr(recipe, "prepare_planned",
                                                                  recipe.prepare)
    builder = prepare(args)
    if config is not None:
        inference, labels = config["inference"], config["labels"]
        if inference.get("kind") != "slices":
            raise StudySettingsError(
                f"run {args.output_dir} holds a {inference.get('kind')!r} model; "
                "kseg.studies needs a 2D slice model"
            )
    else:
        inference, labels = _derived_conventions(recipe, builder)
    num_classes = int(inference["num_classes"])
    postprocess = inference.get("postprocess", "none")
    if postprocess not in ("none", "largest-component"):
        raise StudySettingsError(
            f"run {args.output_dir}: unknown post-processing {postprocess!r} in config.json"
        )
    from kseg.predict import postprocessing

    postprocess = postprocessing(inference)
    splits = recipe.splits(args)
    return StudyData(
        recipe_name=recipe_name, recipe=recipe, args=args, run_dir=pathlib.Path(args.output_dir),
        builder=builder, splits=splits, window=_window_argument(inference["window"]),
        image_size=(args.image_size, args.image_size), num_classes=num_classes,
        labels=None if num_classes == 1 else dict(labels),
        threshold=float(inference.get("threshold", 0.5)), postprocess=postprocess,
        metrics=tuple(getattr(recipe, "METRICS", ("dice",))),
        mirror_axes=tuple(inference.get("mirror_axes", ())),
    )  # fmt: skip


def load_cases(data: StudyData, split: str) -> list:
    """``(case_id, model inputs, mask, spacing)`` per case of ``split`` ("train",
    "validation" or "test"), sorted by id: a patient's slices as ``(Z, h, w, C)`` inputs and
    a ``(Z, H, W)`` mask on the stored grid, or one radiograph as ``(h, w, C)`` and
    ``(H, W)`` (spacing ``None``: distances in pixels), with the model input made exactly as
    the recipe makes it."""
    from kseg.data.pipeline import model_input
    from kseg.evaluation import reassemble_slices

    _check_split(data.splits, split, data.run_dir)
    preprocess = model_input(window=data.window, image_size=data.image_size)
    examples = data.builder.as_dataset(split=data.splits[split], shuffle_files=False)
    if "slice_index" in data.builder.info.features:
        cases = list(reassemble_slices(examples, preprocess=preprocess))
    else:
        cases = [
            (
                example["image_id"].numpy().decode(),
                preprocess(example).numpy(),
                example["mask"].numpy(),
                None,
            )
            for example in examples
        ]
    return sorted(cases, key=lambda case: case[0])


def _check_split(splits: dict, split: str, run_dir) -> None:
    """A study of the test split needs a run that holds a test fold out."""
    if split not in splits:
        raise StudySettingsError(
            f"run {run_dir} has no test fold (trained with --test-fold none): study "
            f"--split validation instead, or a run with a test fold"
            if split == "test"
            else f"run {run_dir} has no {split!r} split; it has {', '.join(splits)}"
        )


def _probability_cases(predictor, cases) -> list:
    """``(case_id, mask, probabilities on the mask grid, spacing)`` per case."""
    from kseg.evaluation import predict_on_mask_grid

    return list(predict_on_mask_grid(predictor, cases))


def score_cases(data: StudyData, probability_cases, *, postprocess=True) -> list:
    """Score rows (dicts with ``patient_id`` and the recipe's metrics, ``dice_mean`` for a
    multi-class task) of ``(case_id, mask, probabilities or label map, spacing)``, as the
    recipe's evaluation scores them."""
    from kseg.evaluation import evaluate_volumes

    table = evaluate_volumes(
        probability_cases, metrics=data.metrics, labels=data.labels, threshold=data.threshold,
        postprocess=data.postprocess if postprocess else None, progress=False, warn_empty=False,
    )  # fmt: skip
    rows = sorted(table.rows, key=lambda row: row["patient_id"])
    if data.labels is not None:
        for row in rows:
            row["dice_mean"] = float(
                sum(row[f"dice_{name}"] for name in data.labels) / len(data.labels)
            )
    return rows


def _score_columns(data: StudyData, rows) -> list:
    return [column for column in rows[0] if column != "patient_id"]


def _setting_rows(settings: dict, rows) -> list:
    return [{**settings, **row} for row in rows]


def _summaries(rows, keys, score, extra=None) -> list:
    """Mean / median / std / count of ``score`` per distinct value of ``keys``."""
    import numpy as np

    groups = {}
    for row in rows:
        groups.setdefault(tuple(row[key] for key in keys), []).append(row[score])
    summary = []
    for group, values in groups.items():
        values = np.asarray(values, dtype=float)
        finite = values[np.isfinite(values)]
        entry = dict(zip(keys, group, strict=True))
        entry.update({
            f"{score}_mean": float(finite.mean()) if finite.size else math.nan,
            f"{score}_median": float(np.median(finite)) if finite.size else math.nan,
            f"{score}_std": float(finite.std(ddof=1)) if finite.size > 1 else math.nan,
            "patients": int(values.size),
        })  # fmt: skip
        if extra:
            entry.update(extra.get(group, {}))
        summary.append(entry)
    return summary


def _study_folder(data: StudyData, name: str) -> pathlib.Path:
    folder = data.run_dir / "studies" / name
    folder.mkdir(parents=True, exist_ok=True)
    return folder


# --------------------------------------------------------------------------- training


def _loss(name: str):
    from kseg import losses

    makers = {
        "bce": lambda: losses.BinaryCrossentropy(beta=0.5),
        "dice": lambda: losses.DiceLoss(),
        "iou": lambda: losses.IoULoss(),
        "combo": lambda: losses.ComboLoss(alpha=2 / 3, beta=0.5),
        "topk": lambda: losses.TopKLoss(k=10),
        "dice_ce": lambda: losses.DiceCELoss(),
    }
    if name not in makers:
        raise StudySettingsError(f"loss must be one of {', '.join(LOSSES)}, got {name!r}")
    return makers[name]()


def _with_seed(args: argparse.Namespace, seed: int) -> argparse.Namespace:
    """A copy of the recipe's options with another ``seed`` (every model of a study draws
    its own augmentation from its own seed; the run's options stay as they are)."""
    return argparse.Namespace(**{**vars(args), "seed": seed})


def _augmenter(data: StudyData, seed: int):
    """The recipe's training augmentation (``recipe.augmenter``), seeded by ``seed``."""
    return data.recipe.augmenter(_with_seed(data.args, seed))


def _strong_augmenter(data: StudyData, seed: int):
    """FixMatch's strong view: the recipe's spatial augmentation (its layers that are not
    kseg intensity layers; no flips where the recipe has none) plus kseg's default
    intensity augmentation."""
    from kseg.augment import segmentation_augmenter
    from kseg.augment.segmentation_augmenter import default_intensity_layers

    intensity_kinds = tuple({type(layer) for layer in default_intensity_layers(2)})
    spatial = [
        layer
        for layer in _augmenter(data, seed).augmentation_layers
        if not isinstance(layer, intensity_kinds)
    ]
    return segmentation_augmenter(2, spatial=spatial, intensity=True, seed=seed + 1)


def _batches(data: StudyData, patients, *, seed: int, augment: bool, images_only=False):
    """Endless shuffled training batches of ``patients`` (the recipe's pipeline)."""
    import tensorflow_datasets as tfds

    from kseg.data.pipeline import keep_patients, segmentation_dataset

    # Unseeded, TFDS deals the training files in another order for each model of a process,
    # so two settings of one study would see different batches from the same seed.
    examples = data.builder.as_dataset(
        split=data.splits["train"], shuffle_files=True,
        read_config=tfds.ReadConfig(shuffle_seed=seed),
    )  # fmt: skip
    examples = keep_patients(examples, patients)
    batches = segmentation_dataset(
        examples, window=data.window, image_size=data.image_size, num_classes=data.num_classes,
        batch_size=data.args.batch_size, augment=_augmenter(data, seed) if augment else None,
        shuffle_buffer=512, cache=True, seed=seed,
    )  # fmt: skip
    if images_only:
        batches = batches.map(lambda images, masks: images)
    return batches.repeat()


def _network(data: StudyData):
    """The recipe's network, compiled with its loss and optimizer
    (``recipe.build_model``)."""
    return data.recipe.build_model(data.args, data.num_classes)


def _logits_network(data: StudyData):
    """``(network, loss)``: the recipe's network without its output activation, sharing
    its layers, and the recipe's loss configured to take logits (the consistency methods
    compute their losses from logits).

    kseg's models end in the segmentation head's ``Activation`` layer
    (``kseg.models._building_blocks.segmentation_head``); its input is the logits.
    """
    import keras

    network = _network(data)
    head = network.layers[-1]
    if not isinstance(head, keras.layers.Activation):
        raise TypeError(
            f"{data.recipe_name}.build_model's network ends in {type(head).__name__}, not "
            "the output Activation layer the consistency study removes to get logits"
        )
    # network.input, not .inputs: a one-element list would make Keras warn at each call
    logits = keras.Model(network.input, head.input, name=f"{network.name}_logits")
    return logits, type(network.loss).from_config(
        {**network.loss.get_config(), "from_logits": True}
    )


def _compile(model, data: StudyData, loss):
    """``model`` compiled with ``loss`` (a name from ``LOSSES`` or a loss object) and the
    recipe's optimizer (Adam at ``--learning-rate``, as every 2D recipe's
    ``build_model``)."""
    import keras

    model.compile(
        optimizer=keras.optimizers.Adam(data.args.learning_rate),
        loss=_loss(loss) if isinstance(loss, str) else loss,
    )
    return model


def train_model(
    data: StudyData, *, patients=None, seed: int, steps: int, loss=None, augment: bool = True
):
    """The recipe's model (``recipe.build_model``: its loss unless ``loss`` names
    another) after exactly ``steps`` optimizer steps on ``patients`` (default: every
    training patient), seeded by ``seed``."""
    import keras

    from kseg.data.pipeline import split_patient_ids
    from kseg.training import build_optimizer

    keras.utils.set_random_seed(seed)
    if patients is None:
        patients = split_patient_ids(data.builder, data.splits["train"])
    model = _network(data)
    if loss is not None:
        model = _compile(model, data, loss)
    build_optimizer(model).fit(
        _batches(data, patients, seed=seed, augment=augment),
        steps_per_epoch=steps,
        epochs=1,
        verbose=0,
        shuffle=False,
    )  # the pipeline shuffles
    return model


def _train_and_score(data, cases, label: str, **training) -> list:
    started = time.perf_counter()
    model = train_model(data, **training)
    rows = score_cases(data, _probability_cases(model, cases), postprocess=False)
    mean = sum(row[data.score] for row in rows) / len(rows)
    print(
        f"  {label}: {training['steps']} steps in {time.perf_counter() - started:.0f} s; "
        f"mean {data.score} {mean:.4f}",
        flush=True,
    )
    return rows


def _training_patients(data: StudyData) -> list:
    from kseg.data.pipeline import split_patient_ids

    return split_patient_ids(data.builder, data.splits["train"])


# --------------------------------------------------------------------------- figures


def _figure(width: float, height: float, columns: int = 1):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(figure)
    return figure, figure.subplots(1, columns, squeeze=False)[0]


def _box_figure(table_rows, setting: str, score: str, title: str, order=None):
    """Per-patient scores as a box per setting, each patient a dot."""
    import numpy as np

    order = order or list(dict.fromkeys(row[setting] for row in table_rows))
    figure, (axes,) = _figure(max(4.0, 1.1 * len(order) + 2), 3.6)
    values = [
        np.asarray([row[score] for row in table_rows if row[setting] == value], float)
        for value in order
    ]
    axes.boxplot([v[np.isfinite(v)] for v in values], showfliers=False)
    for index, value in enumerate(values, start=1):
        axes.plot(
            np.full(value.shape, index) + np.linspace(-0.08, 0.08, value.size),
            value,
            "o",
            markersize=3,
            alpha=0.6,
            color="tab:blue",
        )
    axes.set_xticks(range(1, len(order) + 1), [str(value) for value in order])
    axes.set_xlabel(setting)
    axes.set_ylabel(f"{score} per patient")
    axes.set_title(title)
    return figure


def _line_figure(table_rows, setting: str, score: str, title: str, xlabel: str):
    """Mean (± std) per setting against a numeric setting, each patient a faint dot."""
    import numpy as np

    xs = sorted({row[setting] for row in table_rows})
    figure, (axes,) = _figure(5.0, 3.6)
    for x in xs:
        values = np.asarray([row[score] for row in table_rows if row[setting] == x], float)
        axes.plot(np.full(values.shape, x), values, "o", markersize=3, alpha=0.3, color="tab:blue")
    means = [np.nanmean([row[score] for row in table_rows if row[setting] == x]) for x in xs]
    stds = [np.nanstd([row[score] for row in table_rows if row[setting] == x]) for x in xs]
    axes.errorbar(xs, means, yerr=stds, marker="s", color="tab:red", capsize=3, label="mean ± std")
    axes.set_xlabel(xlabel)
    axes.set_ylabel(f"{score} per patient")
    axes.set_title(title)
    axes.legend(loc="lower left")
    return figure


# --------------------------------------------------------------------------- the studies


def _trained_model(data: StudyData, *, mirrored: bool = True):
    """The run's best model; ``mirrored``: as its evaluation runs it (averaged over the
    flips of ``data.mirror_axes``)."""
    import kseg

    path = data.run_dir / "best.keras"
    if not path.is_file():
        from kseg.errors import LayoutError

        raise LayoutError(
            data.run_dir, f"holds no best.keras; train the run first "
            f"(kseg train {data.recipe_name})"
        )
    model = kseg.load_model(path)
    if not mirrored:
        return model
    from kseg.predict import inference_model

    return inference_model(model, {"mirror_axes": list(data.mirror_axes)})


def _with_noise(inputs, sigma: float, rng):
    import numpy as np

    if sigma == 0:
        return inputs
    return inputs + rng.normal(0.0, sigma, inputs.shape).astype(np.float32)


def noise_study(
    data: StudyData, *, sigmas=DEFAULT_SIGMAS, split: str = "test", seed: int = 0
) -> StudyTable:
    """Test Dice of the run's model with Gaussian noise of each σ added to the model input.

    The noise is added after the intensity window or scaling (where images lie in [0, 1]),
    independently per voxel, from ``numpy.random.default_rng((seed, index of σ))`` in case
    order; nothing is clipped. σ = 0 is the run's own evaluation.
    """
    import numpy as np

    sigmas = [float(sigma) for sigma in sigmas]
    if not sigmas or any(not (math.isfinite(s) and s >= 0) for s in sigmas):
        raise StudySettingsError(f"sigmas must be finite numbers >= 0, got {sigmas}")
    model = _trained_model(data)
    cases = load_cases(data, split)
    rows = []
    for index, sigma in enumerate(sigmas):
        rng = np.random.default_rng((seed, index))
        noisy = [(case_id, _with_noise(inputs, sigma, rng), mask, spacing)
                 for case_id, inputs, mask, spacing in cases]  # fmt: skip
        scored = score_cases(data, _probability_cases(model, noisy))
        rows += _setting_rows({"sigma": sigma}, scored)
        print(
            f"  sigma {sigma:g}: mean {data.score} "
            f"{np.mean([row[data.score] for row in scored]):.4f}",
            flush=True,
        )
    table = StudyTable(
        "noise", ["sigma", "patient_id", *_score_columns(data, scored)], rows,
        _summaries(rows, ["sigma"], data.score), data.score, _study_folder(data, "noise"),
        [f"Gaussian noise on the {split} images' model input ([0, 1] intensities), seed "
         f"{seed}; post-processing as the run's."],
    )  # fmt: skip
    figure = _line_figure(
        rows,
        "sigma",
        data.score,
        f"{data.recipe_name}: {split} Dice vs noise",
        "noise σ (model-input intensity units)",
    )
    return _save(table, figure)


def train_size_study(
    data: StudyData, *, sizes=None, steps: int, seeds=(0,), split: str = "test"
) -> StudyTable:
    """One model per number of training patients (nested subsets, the same ``steps``)."""
    from kseg.data.splits import nested_patient_subset

    pool = _training_patients(data)
    if sizes is None:
        sizes = sorted(
            {max(1, len(pool) // 8), max(1, len(pool) // 4), max(1, len(pool) // 2), len(pool)}
        )
    sizes = sorted({int(size) for size in sizes})
    if any(not 1 <= size <= len(pool) for size in sizes):
        raise StudySettingsError(
            f"sizes must lie in 1..{len(pool)} (the training patients), got {sizes}"
        )
    cases = load_cases(data, split)
    rows = []
    for seed in seeds:
        for size in sizes:
            patients = nested_patient_subset(pool, size, seed=seed)
            scored = _train_and_score(
                data,
                cases,
                f"{size} patients, seed {seed}",
                patients=patients,
                seed=seed,
                steps=steps,
            )
            rows += _setting_rows({"train_patients": size, "seed": seed}, scored)
    table = StudyTable(
        "train-size", ["train_patients", "seed", "patient_id", *_score_columns(data, scored)],
        rows, _summaries(rows, ["train_patients"], data.score), data.score,
        _study_folder(data, "train-size"),
        [f"{steps} steps per model; subsets nested (kseg.data.splits.nested_patient_subset) "
         f"from {len(pool)} training patients; seeds {list(seeds)}."],
    )  # fmt: skip
    figure = _line_figure(
        rows,
        "train_patients",
        data.score,
        f"{data.recipe_name}: {split} Dice vs training patients",
        "training patients",
    )
    return _save(table, figure)


def augment_study(data: StudyData, *, steps: int, seeds=(0,), split: str = "test") -> StudyTable:
    """The recipe's augmentation on vs off, same seed and steps."""
    cases = load_cases(data, split)
    rows = []
    for seed in seeds:
        for augment in (True, False):
            setting = "on" if augment else "off"
            scored = _train_and_score(
                data,
                cases,
                f"augmentation {setting}, seed {seed}",
                seed=seed,
                steps=steps,
                augment=augment,
            )
            rows += _setting_rows({"augmentation": setting, "seed": seed}, scored)
    table = StudyTable(
        "augment", ["augmentation", "seed", "patient_id", *_score_columns(data, scored)], rows,
        _summaries(rows, ["augmentation"], data.score), data.score, _study_folder(data, "augment"),
        [f"{steps} steps per model; augmentation: the recipe's ({data.recipe_name}.augmenter); "
         f"seeds {list(seeds)}."],
    )  # fmt: skip
    figure = _box_figure(
        rows, "augmentation", data.score, f"{data.recipe_name}: augmentation, {steps} steps"
    )
    return _save(table, figure)


def losses_study(
    data: StudyData, *, losses=LOSSES, steps: int, seeds=(0,), split: str = "test"
) -> StudyTable:
    """One model per loss, the same seed, steps and augmentation."""
    for name in losses:
        if name not in LOSSES:
            raise StudySettingsError(f"losses must be names from {', '.join(LOSSES)}, got {name!r}")
    cases = load_cases(data, split)
    rows = []
    for seed in seeds:
        for name in losses:
            scored = _train_and_score(
                data, cases, f"loss {name}, seed {seed}", seed=seed, steps=steps, loss=name
            )
            rows += _setting_rows({"loss": name, "seed": seed}, scored)
    table = StudyTable(
        "losses", ["loss", "seed", "patient_id", *_score_columns(data, scored)], rows,
        _summaries(rows, ["loss"], data.score), data.score, _study_folder(data, "losses"),
        [f"{steps} steps per model; bce = kseg.losses.BinaryCrossentropy(beta=0.5) "
         "(one-vs-rest for several classes), combo alpha 2/3 beta 0.5, topk k = 10 %; "
         f"seeds {list(seeds)}."],
    )  # fmt: skip
    figure = _box_figure(rows, "loss", data.score, f"{data.recipe_name}: losses, {steps} steps")
    return _save(table, figure)


# ---- uncertainty


def _on_mask_grid(maps, mask_shape):
    """Per-slice maps ``(Z, h, w)`` or ``(Z, h, w, C)`` resized to the mask plane."""
    from kseg.evaluation import resize_probabilities

    flat = maps.ndim == 3
    resized = resize_probabilities(maps[..., None] if flat else maps, tuple(mask_shape[-2:]))
    return resized[..., 0] if flat else resized


def _entropy(probabilities):
    import numpy as np
    from scipy.special import entr

    p = np.clip(probabilities.astype(np.float64), 0.0, 1.0)
    if p.shape[-1] == 1:
        return entr(p[..., 0]) + entr(1.0 - p[..., 0])
    return entr(p).sum(axis=-1)


def _calibration(data: StudyData, probabilities, mask, bins: int):
    from kseg import metrics

    mode = "binary" if data.num_classes == 1 else "top_label"
    labels = (mask > 0) if data.num_classes == 1 else mask
    probabilities = probabilities[..., 0] if data.num_classes == 1 else probabilities
    diagram = metrics.reliability_diagram(probabilities, labels, bins=bins, mode=mode)
    return (
        metrics.expected_calibration_error(probabilities, labels, bins=bins, mode=mode),
        metrics.brier_score(probabilities, labels),
        diagram,
    )


def _auroc(uncertainty, prediction, reference) -> float:
    from kseg.metrics import uncertainty_error_auroc

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # no error to find: nan, counted
        return uncertainty_error_auroc(uncertainty, prediction, reference)


def uncertainty_study(
    data: StudyData,
    *,
    mc_samples: int = 10,
    tta_samples: int = 8,
    tta_noise: float = 0.02,
    tta_flips: bool = False,
    bins: int = 15,
    split: str = "test",
    seed: int = 0,
) -> StudyTable:
    """Uncertainty of the run's model on each test case, three ways: the model's own
    probabilities (entropy), MC dropout (predictive entropy; mutual information, the
    epistemic part, gets its own AUROC column) and test-time augmentation (intensity noise
    of ``tta_noise``, plus flips and quarter turns with ``tta_flips``).

    Per patient and method: Dice of that method's prediction, ECE and Brier score of its
    probabilities, the mean uncertainty inside its predicted foreground, and the AUROC of
    the per-voxel uncertainty as a detector of its wrong voxels (``nan`` for a case without
    error). Per method: ECE pooled over every voxel of every case (the reliability diagram's
    bins summed), the mean AUROC, and the Spearman correlation of per-patient uncertainty
    with Dice. A model without dropout layers gets no MC dropout rows (a note says so).
    The model is the run's network without the mirroring its evaluation may average over:
    MC dropout samples the network itself, and test-time augmentation is a method here.
    """
    import numpy as np

    from kseg.evaluation import _postprocessed, labels_from_probabilities
    from kseg.inference import mc_dropout, tta_uncertainty
    from kseg.inference.uncertainty import DROPOUT_LAYERS
    from kseg.metrics import uncertainty_dice_correlation

    model = _trained_model(data, mirrored=False)
    cases = load_cases(data, split)
    dice_only = dataclasses.replace(data, metrics=("dice",))
    notes = []
    methods = ["model"]
    has_dropout = _has_layer(model, DROPOUT_LAYERS)
    if has_dropout:
        methods.append("mc_dropout")
    else:
        notes.append(
            "MC dropout skipped: the model has no dropout layer (train it with "
            "dropout > 0 to sample it)."
        )
    methods.append("tta")
    rows, pooled, example = [], {method: None for method in methods}, None
    for index, (case_id, inputs, mask, spacing) in enumerate(cases):
        batch = inputs if inputs.ndim == 4 else inputs[None]
        reference = mask if mask.ndim == 3 else mask[None]
        plain = model.predict_on_batch(batch)
        results = {"model": {"mean": np.asarray(plain)}}
        if has_dropout:
            sampled = mc_dropout(model, batch, samples=mc_samples)
            results["mc_dropout"] = {
                "mean": sampled.mean,
                "mutual_information": sampled.mutual_information,
            }
        # the classes, so flips and turns that swap left / right classes are left out
        flips = (
            {"class_names": list(data.labels or ())}
            if tta_flips
            else {"flip_axes": (), "rotation_plane": None}
        )
        augmented = tta_uncertainty(
            model, batch, samples=tta_samples, noise_std=tta_noise, seed=seed + index, **flips
        )
        results["tta"] = {"mean": augmented.mean}
        for method in methods:
            probabilities = _on_mask_grid(results[method]["mean"], reference.shape)
            entropy = _entropy(probabilities)
            predicted = _postprocessed(
                case_id,
                labels_from_probabilities(probabilities, data.threshold).astype(np.uint8),
                data.postprocess,
            )
            (scored,) = score_cases(
                dice_only, [(case_id, reference, predicted, spacing)], postprocess=False
            )
            ece, brier, diagram = _calibration(data, probabilities, reference, bins)
            foreground = predicted > 0
            row = {
                "method": method,
                "patient_id": case_id,
                "dice": scored[data.score],
                "ece": ece,
                "brier": brier,
                "uncertainty_foreground": float(entropy[foreground].mean())
                if foreground.any()
                else math.nan,
                "auroc_entropy": _auroc(entropy, predicted, reference),
            }
            if "mutual_information" in results[method]:
                information = _on_mask_grid(results[method]["mutual_information"], reference.shape)
                row["auroc_mutual_information"] = _auroc(information, predicted, reference)
            rows.append(row)
            sums = np.stack(
                [
                    diagram.count,
                    np.nan_to_num(diagram.mean_predicted) * diagram.count,
                    np.nan_to_num(diagram.observed_frequency) * diagram.count,
                ]
            )
            pooled[method] = sums if pooled[method] is None else pooled[method] + sums
            if method == "tta" and (example is None or row["dice"] < example[0]):
                example = (row["dice"], case_id, batch, reference, predicted, entropy, spacing)
    extra = {}
    for method in methods:
        count, confidence, observed = pooled[method]
        method_rows = [row for row in rows if row["method"] == method]
        uncertainty = np.array([row["uncertainty_foreground"] for row in method_rows])
        dice = np.array([row["dice"] for row in method_rows])
        usable = np.isfinite(uncertainty)
        if usable.sum() >= 3 and np.ptp(uncertainty[usable]) > 0 and np.ptp(dice[usable]) > 0:
            correlation = uncertainty_dice_correlation(uncertainty[usable], dice[usable])
        else:
            correlation = (math.nan, math.nan, int(usable.sum()))
            notes.append(
                f"{method}: no uncertainty-Dice correlation (it needs at least 3 "
                f"patients with a predicted foreground and varying values; "
                f"{int(usable.sum())} here)."
            )
        aurocs = np.array([row["auroc_entropy"] for row in method_rows])
        extra[(method,)] = {
            "ece_pooled": float(np.abs(confidence - observed).sum() / count.sum()),
            "auroc_entropy_mean": float(np.nanmean(aurocs))
            if np.isfinite(aurocs).any()
            else math.nan,
            "spearman_uncertainty_dice": float(correlation[0]),
            "spearman_p": float(correlation[1]),
        }
    columns = [
        "method",
        "patient_id",
        "dice",
        "ece",
        "brier",
        "uncertainty_foreground",
        "auroc_entropy",
    ] + (["auroc_mutual_information"] if has_dropout else [])
    for row in rows:
        row.setdefault("auroc_mutual_information", math.nan)
    calibration = "binary" if data.num_classes == 1 else "top-label"
    notes.append(
        f"{split} split; MC dropout {mc_samples} samples; TTA {tta_samples} samples, "
        f"intensity noise {tta_noise:g}"
        + (", flips and turns" if tta_flips else "")
        + f"; {bins} calibration bins ({calibration}); uncertainty = entropy of the "
        "method's mean probability (nats)."
    )
    table = StudyTable(
        "uncertainty",
        columns,
        rows,
        _summaries(rows, ["method"], "dice", extra),
        "dice",
        _study_folder(data, "uncertainty"),
        notes,
    )
    return _save(table, _uncertainty_figure(data, table, pooled, example))


def _has_layer(model, kinds) -> bool:
    """Whether ``model`` or a model nested in it has a layer of one of ``kinds``."""
    for layer in model.layers:
        if isinstance(layer, kinds):
            return True
        if hasattr(layer, "layers") and _has_layer(layer, kinds):
            return True
    return False


def _uncertainty_figure(data, table, pooled, example):
    import numpy as np

    figure = _figure(13.0, 3.6, 4)[0]
    axes = figure.axes
    axes[0].plot([0, 1], [0, 1], ":", color="grey")
    for method, (count, confidence, observed) in pooled.items():
        filled = count > 0
        axes[0].plot(
            confidence[filled] / count[filled],
            observed[filled] / count[filled],
            "o-",
            markersize=3,
            label=method,
        )
    kind = "foreground probability" if data.num_classes == 1 else "confidence"
    axes[0].set(xlabel=kind, ylabel="observed frequency", title="reliability (pooled)")
    axes[0].legend(fontsize=8)
    for method in pooled:
        axes[1].plot(
            table.column("uncertainty_foreground", method=method),
            table.column("dice", method=method),
            "o",
            markersize=4,
            label=method,
        )
    axes[1].set(xlabel="mean entropy in predicted foreground", ylabel="Dice", title="per patient")
    axes[1].legend(fontsize=8)
    _, case_id, batch, reference, predicted, entropy, spacing = example
    slice_index = int(np.argmax((reference > 0).sum(axis=(1, 2)))) if reference.ndim == 3 else 0
    image = _on_mask_grid(batch[..., :1], reference.shape)[slice_index, ..., 0]
    # pixels drawn with the case's (row, column) spacing, as kseg.viz draws slices
    aspect = 1.0 if spacing is None else float(spacing[-2]) / float(spacing[-1])
    axes[2].imshow(image, cmap="gray", aspect=aspect)
    axes[2].contour(reference[slice_index] > 0, levels=[0.5], colors="lime", linewidths=0.8)
    axes[2].contour(predicted[slice_index] > 0, levels=[0.5], colors="magenta", linewidths=0.8)
    axes[2].set_title(f"{case_id}: reference / TTA prediction", fontsize=9)
    shown = axes[3].imshow(entropy[slice_index], cmap="inferno", aspect=aspect)
    axes[3].set_title("TTA entropy (nats)", fontsize=9)
    figure.colorbar(shown, ax=axes[3], shrink=0.8)
    for ax in axes[2:]:
        ax.set_axis_off()
    return figure


# ---- ensemble


def ensemble_study(
    data: StudyData,
    *,
    members: int = 3,
    steps: int,
    seed: int = 0,
    weight_step: float = 0.05,
    split: str = "test",
) -> StudyTable:
    """``members`` models (seeds ``seed``, ``seed + 1``, ...) alone, their mean, their
    weighted mean with the weights fitted on validation whole-volume Dice, and their
    majority vote; scored on ``split``. The summary holds each method's validation Dice
    (the fit's criterion: mean over validation cases of the mean Dice over structures)."""
    import numpy as np

    from kseg.inference import fit_ensemble_weights, majority_vote

    if members < 2:
        raise StudySettingsError(f"an ensemble needs at least 2 members, got {members}")
    validation_cases, test_cases = load_cases(data, "validation"), load_cases(data, split)
    models = []
    for member in range(members):
        started = time.perf_counter()
        models.append(train_model(data, seed=seed + member, steps=steps))
        print(
            f"  member {member} (seed {seed + member}): {steps} steps in "
            f"{time.perf_counter() - started:.0f} s",
            flush=True,
        )
    validation = [_probability_cases(model, validation_cases) for model in models]
    test = [_probability_cases(model, test_cases) for model in models]
    references = [case[1] for case in validation[0]]
    fitted = fit_ensemble_weights(
        [[member[i][2] for member in validation] for i in range(len(references))], references,
        labels=None if data.labels is None else sorted(data.labels.values()),
        step=weight_step, progress=False,
    )  # fmt: skip
    weights = {f"member-{m}": np.eye(members)[m] for m in range(members)}
    weights["mean"] = np.full(members, 1.0 / members)
    weights["fitted"] = fitted.weights

    def combined(per_member, method):
        for i, (case_id, mask, _, spacing) in enumerate(per_member[0]):
            stack = np.stack([member[i][2] for member in per_member])
            if method == "majority":
                yield case_id, mask, majority_vote(stack).astype(np.uint8), spacing
            else:
                yield (
                    case_id,
                    mask,
                    np.tensordot(weights[method].astype(np.float32), stack, axes=1),
                    spacing,
                )

    rows, extra = [], {}
    for method in [*weights, "majority"]:
        scored = score_cases(data, combined(test, method), postprocess=False)
        rows += _setting_rows({"method": method}, scored)
        on_validation = score_cases(
            dataclasses.replace(data, metrics=("dice",)),
            combined(validation, method),
            postprocess=False,
        )
        extra[(method,)] = {
            "validation_dice": float(np.mean([row[data.score] for row in on_validation])),
            "weights": " ".join(f"{w:.2f}" for w in weights[method]) if method in weights else "",
        }
    table = StudyTable(
        "ensemble", ["method", "patient_id", *_score_columns(data, scored)], rows,
        _summaries(rows, ["method"], data.score, extra), data.score,
        _study_folder(data, "ensemble"),
        [f"{members} members (seeds {seed}..{seed + members - 1}), {steps} steps each; "
         f"weights fitted on {len(references)} validation cases (grid step {weight_step}); "
         f"fitted validation Dice {fitted.dice:.4f}, members "
         + " ".join(f"{d:.4f}" for d in fitted.member_dice) + "."],
    )  # fmt: skip
    return _save(
        table, _box_figure(rows, "method", data.score, f"{data.recipe_name}: ensemble of {members}")
    )


# ---- consistency


def _as_probabilities(network):
    """A logits network as a batch -> probabilities predictor."""
    import numpy as np
    from scipy.special import expit, softmax

    def predict(batch):
        logits = np.asarray(network.predict_on_batch(batch), dtype=np.float32)
        return expit(logits) if logits.shape[-1] == 1 else softmax(logits, axis=-1)

    return predict


def consistency_study(
    data: StudyData,
    *,
    labeled: int = 3,
    unlabeled: int | None = None,
    methods=CONSISTENCY_METHODS,
    steps: int,
    seeds=(0,),
    consistency_weight: float = 1.0,
    teacher_noise: float = 0.0,
    ema_decay: float = 0.99,
    threshold: float = 0.95,
    split: str = "test",
) -> StudyTable:
    """Few labelled training patients and the others unlabelled, one model per method.

    The first ``labeled`` patients of the nested order (per seed) keep their masks; the
    next ``unlabeled`` (default: every other training patient) have theirs dropped before
    training and are fed un-augmented. Supervised-only vs mean teacher (the student and its
    EMA teacher both scored) vs FixMatch, each ``steps`` steps from the same seed. The
    labelled batches get the recipe's augmentation in every method. MeanTeacher adds
    Gaussian input noise of ``teacher_noise`` independently to student and teacher (default
    0, none: on the X-ray phantom's validation images, 1 labelled image, seeds 10 and 11,
    the student scored 0.947 without noise and 0.937 with kseg's 0.05, supervised-only
    0.943), averages the teacher with ``ema_decay`` and ramps the consistency weight up
    over the first third of the steps. FixMatch's weak view is
    the labelled pipeline's (no extra augmentation), its strong view the recipe's spatial
    augmentation plus kseg's default intensity augmentation.
    """
    import keras
    import tensorflow as tf

    from kseg.data.splits import nested_patient_subset
    from kseg.training import FixMatch, MeanTeacher

    for method in methods:
        if method not in CONSISTENCY_METHODS:
            raise StudySettingsError(
                f"methods must be names from {', '.join(CONSISTENCY_METHODS)}, got {method!r}"
            )
    pool = _training_patients(data)
    if not 1 <= labeled < len(pool):
        raise StudySettingsError(
            f"labeled must lie in 1..{len(pool) - 1} (the training patients "
            f"less one unlabelled), got {labeled}"
        )
    available = len(pool) - labeled
    unlabeled = available if unlabeled is None else unlabeled
    if not 1 <= unlabeled <= available:
        raise StudySettingsError(f"unlabeled must lie in 1..{available}, got {unlabeled}")
    cases = load_cases(data, split)
    rows = []
    for seed in seeds:
        order = nested_patient_subset(pool, labeled + unlabeled, seed=seed)
        labeled_patients, unlabeled_patients = order[:labeled], order[labeled:]
        for method in methods:
            started = time.perf_counter()
            keras.utils.set_random_seed(seed)
            network, loss = _logits_network(data)
            labeled_batches = _batches(data, labeled_patients, seed=seed, augment=True)
            if method == "supervised":
                trainer, data_stream = network, labeled_batches
            else:
                unlabeled_batches = _batches(
                    data, unlabeled_patients, seed=seed + 1, augment=False, images_only=True
                )
                data_stream = tf.data.Dataset.zip((labeled_batches, unlabeled_batches))
                if method == "mean-teacher":
                    noise = keras.layers.GaussianNoise(teacher_noise) if teacher_noise else None
                    trainer = MeanTeacher(
                        network,
                        consistency_weight=consistency_weight,
                        rampup_steps=max(1, steps // 3),
                        ema_decay=ema_decay,
                        noise=noise,
                    )
                else:
                    strong = _strong_augmenter(data, seed + 2)
                    trainer = FixMatch(network, weak=None, strong=strong, threshold=threshold)
            _compile(trainer, data, loss)
            trainer.fit(data_stream, steps_per_epoch=steps, epochs=1, verbose=0, shuffle=False)
            seconds = time.perf_counter() - started
            scored_models = {method: network}
            if method == "mean-teacher":
                scored_models["mean-teacher-ema"] = trainer.teacher
            for name, scored_model in scored_models.items():
                scored = score_cases(
                    data,
                    _probability_cases(_as_probabilities(scored_model), cases),
                    postprocess=False,
                )
                rows += _setting_rows(
                    {"method": name, "seed": seed, "labeled": labeled, "unlabeled": unlabeled},
                    scored,
                )
                mean = sum(row[data.score] for row in scored) / len(scored)
                print(
                    f"  {name}, seed {seed}: trained {steps} steps in {seconds:.0f} s; "
                    f"mean {data.score} {mean:.4f}",
                    flush=True,
                )
    table = StudyTable(
        "consistency",
        ["method", "seed", "labeled", "unlabeled", "patient_id", *_score_columns(data, scored)],
        rows, _summaries(rows, ["method"], data.score), data.score,
        _study_folder(data, "consistency"),
        [f"{labeled} labelled + {unlabeled} unlabelled training patients (nested order of "
         f"each seed), {steps} steps per model, seeds {list(seeds)}; consistency weight "
         f"{consistency_weight:g}, mean-teacher input noise {teacher_noise:g} and EMA decay "
         f"{ema_decay:g}, FixMatch threshold {threshold:g}; loss {type(loss).__name__} "
         "from logits."],
    )  # fmt: skip
    return _save(
        table,
        _box_figure(
            rows,
            "method",
            data.score,
            f"{data.recipe_name}: {labeled} labelled, {unlabeled} unlabelled, {steps} steps",
        ),
    )


# --------------------------------------------------------------------------- command line


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _non_negative_float(text: str) -> float:
    value = float(text)
    if not (math.isfinite(value) and value >= 0):
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text}")
    return value


def _at_least_two(text: str) -> int:
    value = int(text)
    if value < 2:
        raise argparse.ArgumentTypeError(f"must be at least 2, got {value}")
    return value


def _fraction(text: str, *, low_open: bool, high_open: bool) -> float:
    value = float(text)
    low_ok = value > 0 if low_open else value >= 0
    high_ok = value < 1 if high_open else value <= 1
    if not (math.isfinite(value) and low_ok and high_ok):
        interval = f"{'(' if low_open else '['}0, 1{')' if high_open else ']'}"
        raise argparse.ArgumentTypeError(f"must lie in {interval}, got {text}")
    return value


def _weight_step(text: str) -> float:
    value = _fraction(text, low_open=True, high_open=False)
    # the fitted weights' grid (kseg.inference.fit_ensemble_weights) needs 1 / step whole
    if abs(1 / value - round(1 / value)) > 1e-6:
        raise argparse.ArgumentTypeError(f"1 / step must be a whole number, got step {text}")
    return value


def _decay(text: str) -> float:
    return _fraction(text, low_open=False, high_open=True)


def _probability(text: str) -> float:
    return _fraction(text, low_open=False, high_open=False)


def add_arguments(parser: argparse.ArgumentParser, name: str) -> None:
    """The options of study ``name``: the source (a run folder or a recipe name; a
    recipe's own options follow it, see :func:`parse_args`) and the study's settings."""
    if name not in STUDIES:
        raise ValueError(f"unknown study {name!r}; studies: {', '.join(STUDIES)}")
    parser.add_argument(
        "source",
        help="a run folder (with config.json) or a recipe name followed by that recipe's options",
    )
    if name in (
        "noise",
        "train-size",
        "augment",
        "losses",
        "uncertainty",
        "ensemble",
        "consistency",
    ):
        parser.add_argument(
            "--split",
            choices=("test", "validation"),
            default="test",
            help="cases scored (default %(default)s)",
        )
    if name in TRAINING_STUDIES:
        parser.add_argument(
            "--steps",
            type=_positive_int,
            default=None,
            help="optimizer steps per model, the same for every setting "
            "(default: the recipe's epochs x batches per epoch of the "
            "whole training set)",
        )
    if name in ("train-size", "augment", "losses", "consistency"):
        parser.add_argument(
            "--seeds",
            type=int,
            nargs="+",
            default=None,
            help="one model per setting and seed (default: the run's seed)",
        )
    if name == "noise":
        parser.add_argument(
            "--sigmas",
            type=_non_negative_float,
            nargs="+",
            default=list(DEFAULT_SIGMAS),
            help="noise standard deviations in model-input units (images "
            "in [0, 1]); default %(default)s",
        )
    if name == "train-size":
        parser.add_argument(
            "--sizes",
            type=_positive_int,
            nargs="+",
            default=None,
            help="training patients per model (default: 1/8, 1/4, 1/2 and "
            "all of the training patients)",
        )
    if name == "losses":
        parser.add_argument("--losses", nargs="+", choices=LOSSES, default=list(LOSSES))
    if name == "uncertainty":
        parser.add_argument("--mc-samples", type=_positive_int, default=10)
        parser.add_argument("--tta-samples", type=_positive_int, default=8)
        parser.add_argument(
            "--tta-noise",
            type=_non_negative_float,
            default=0.02,
            help="standard deviation of the Gaussian intensity noise of each TTA copy, in "
            "model-input units (default %(default)s; keep it below the level the noise "
            "study shows hurting the model, or TTA measures a worse model)",
        )
        parser.add_argument(
            "--tta-flips",
            action="store_true",
            help="also flip and turn the TTA copies (only for models trained with flips)",
        )
        parser.add_argument("--bins", type=_positive_int, default=15)
    if name == "ensemble":
        parser.add_argument(
            "--members",
            type=_at_least_two,
            default=3,
            help="models, one seed each (default %(default)s)",
        )
        parser.add_argument(
            "--weight-step",
            type=_weight_step,
            default=0.05,
            help="grid step of the fitted weights (default %(default)s)",
        )
    if name == "consistency":
        parser.add_argument(
            "--labeled",
            type=_positive_int,
            default=3,
            help="labelled training patients (default %(default)s)",
        )
        parser.add_argument(
            "--unlabeled",
            type=_positive_int,
            default=None,
            help="unlabelled training patients (default: all the others)",
        )
        parser.add_argument(
            "--methods", nargs="+", choices=CONSISTENCY_METHODS, default=list(CONSISTENCY_METHODS)
        )
        parser.add_argument("--consistency-weight", type=_non_negative_float, default=1.0)
        parser.add_argument(
            "--teacher-noise",
            type=_non_negative_float,
            default=0.0,
            help="mean teacher's Gaussian input noise (default %(default)s)",
        )
        parser.add_argument(
            "--ema-decay",
            type=_decay,
            default=0.99,
            help="mean teacher's EMA decay (default %(default)s)",
        )
        parser.add_argument(
            "--threshold",
            type=_probability,
            default=0.95,
            help="FixMatch confidence threshold (default %(default)s)",
        )


def parse_args(name: str, argv=None) -> argparse.Namespace:
    """Study ``name``'s command line: ``SOURCE [study options] [recipe options]``; the
    options the study does not know go to the recipe (``args.recipe_arguments``) and are
    an error after a run folder."""
    # Without allow_abbrev=False a recipe option would be read as the study option it
    # begins: the recipe's --seed 3 as the study's --seeds 3.
    parser = argparse.ArgumentParser(
        prog=f"kseg study {name}",
        description=f"The {name} study (kseg.studies).",
        allow_abbrev=False,
    )
    add_arguments(parser, name)
    args, rest = parser.parse_known_args(argv)
    if rest and _is_run(args.source):
        parser.error(f"unrecognized arguments after a run folder: {' '.join(rest)}")
    args.recipe_arguments = rest
    return args


def _is_run(source) -> bool:
    return os.path.isdir(source) and os.path.isfile(os.path.join(source, "config.json"))


def _check_slice_recipe(recipe_name: str) -> None:
    if recipe_name not in SLICE_RECIPES:
        raise StudySettingsError(
            f"kseg.studies runs on the 2D recipes {', '.join(SLICE_RECIPES)}; "
            f"{recipe_name!r} is not one (3D volume studies are not implemented)"
        )


def _source(args, needs_model: bool):
    """``(recipe name, recipe options, config or None)`` of the study's source."""
    from kseg import recipes
    from kseg.recipes import _common, run_config

    source = str(args.source)
    if source in recipes.RECIPES:
        _check_slice_recipe(source)  # before the recipe prepares its data or trains a model
        recipe = recipes.load(source)
        recipe_args = recipe.parse_args(list(getattr(args, "recipe_arguments", []) or []))
        if getattr(args, "split", None) == "test" and not _common.has_test_fold(recipe_args):
            # refused here, before the recipe prepares its data or trains a model
            raise StudySettingsError(
                f"a --test-fold none run has no test fold to study: use --split validation "
                f"(recipe {source}, output {recipe_args.output_dir})"
            )
        if not needs_model:
            return source, recipe_args, None
        run_dir = pathlib.Path(recipe_args.output_dir)
        if not (run_dir / "best.keras").is_file():
            print(
                f"{run_dir} holds no trained model: training the {source} recipe first", flush=True
            )
            recipe.train(recipe_args)
        source = run_dir  # the trained model is scored with the options it was trained with
    elif getattr(args, "recipe_arguments", None):
        raise StudySettingsError(
            f"recipe options {args.recipe_arguments} given after run folder "
            f"{source}; they apply only after a recipe name"
        )
    if needs_model:
        from kseg.cli import check_model

        check_model(pathlib.Path(source))  # before the study prepares any data
    _, recipe_args = recipes.load_run(source)
    config = run_config.read_config(source)
    return config["recipe"], recipe_args, config


def _default_steps(data: StudyData) -> int:
    """The recipe's own training budget: epochs x batches per epoch of all training
    patients."""
    split = data.splits["train"]
    examples = sum(data.builder.info.splits[part].num_examples for part in split.split("+"))
    return int(data.args.epochs) * math.ceil(examples / int(data.args.batch_size))


def run_study(name: str, args: argparse.Namespace) -> StudyTable:
    """Run study ``name`` with the options :func:`add_arguments` declared (``args.source``
    a run folder or a recipe name, ``args.recipe_arguments`` the recipe's options)."""
    if name not in STUDIES:
        raise ValueError(f"unknown study {name!r}; studies: {', '.join(STUDIES)}")
    if importlib.util.find_spec("matplotlib") is None:
        # figure.png is drawn last: refuse before the training, not after it
        raise StudySettingsError(
            "kseg study draws figure.png with matplotlib, which is not installed: "
            "pip install 'kseg[viz]'"
        )
    recipe_name, recipe_args, config = _source(args, needs_model=name in ("noise", "uncertainty"))
    data = study_data(recipe_name, recipe_args, config)
    seed = int(getattr(recipe_args, "seed", 0))
    steps = getattr(args, "steps", None) or (
        _default_steps(data) if name in TRAINING_STUDIES else None
    )
    seeds = tuple(getattr(args, "seeds", None) or (seed,))
    print(
        f"Study {name} on {data.recipe_name} ({data.builder.info.full_name}), run folder "
        f"{data.run_dir}" + (f", {steps} steps per model" if steps else ""),
        flush=True,
    )
    if name == "noise":
        return noise_study(data, sigmas=args.sigmas, split=args.split, seed=seed)
    if name == "train-size":
        return train_size_study(data, sizes=args.sizes, steps=steps, seeds=seeds, split=args.split)
    if name == "augment":
        return augment_study(data, steps=steps, seeds=seeds, split=args.split)
    if name == "losses":
        return losses_study(data, losses=args.losses, steps=steps, seeds=seeds, split=args.split)
    if name == "uncertainty":
        return uncertainty_study(
            data,
            mc_samples=args.mc_samples,
            tta_samples=args.tta_samples,
            tta_noise=args.tta_noise,
            tta_flips=args.tta_flips,
            bins=args.bins,
            split=args.split,
            seed=seed,
        )
    if name == "ensemble":
        return ensemble_study(
            data,
            members=args.members,
            steps=steps,
            seed=seed,
            weight_step=args.weight_step,
            split=args.split,
        )
    return consistency_study(
        data,
        labeled=args.labeled,
        unlabeled=args.unlabeled,
        methods=args.methods,
        steps=steps,
        seeds=seeds,
        consistency_weight=args.consistency_weight,
        teacher_noise=args.teacher_noise,
        ema_decay=args.ema_decay,
        threshold=args.threshold,
        split=args.split,
    )


def main(argv=None) -> StudyTable:
    """``python -m kseg.studies NAME SOURCE [options]``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in STUDIES:
        names = ", ".join(STUDIES)
        if argv and argv[0] in ("-h", "--help"):
            print(f"usage: python -m kseg.studies NAME SOURCE [options]\nstudies: {names}")
            sys.exit(0)
        print(
            f"usage: python -m kseg.studies NAME SOURCE [options]\nNAME must be one of {names}",
            file=sys.stderr,
        )
        sys.exit(2)
    name = argv[0]
    args = parse_args(name, argv[1:])
    from kseg.errors import KsegError

    try:
        return run_study(name, args)
    except KsegError as error:
        print(f"kseg: error: {error}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
