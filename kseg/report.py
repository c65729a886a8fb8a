"""One self-contained HTML page about a run folder: configuration, training, scores, slices.

:func:`write_report` reads the files a run folder holds (``config.json``, ``history.csv``,
``evaluation/<name>/scores.csv``, ``evaluation/<name>/cases/<patient>.npz`` and each
study's ``studies/<name>/figure.png`` and ``table.txt``; the layout
is in the README) and writes one HTML file that opens in any browser from the disk: the
figures are PNG data URIs, the script and styles are inline, nothing is fetched. Each
evaluated patient gets a slice viewer (a slider and the mouse wheel move through the slices;
reference and prediction layers with an opacity control; the patient's Dice in its header).

A run is reported at any stage: a file not written yet (no ``history.csv`` before the first
epoch ends, no ``evaluation/`` before ``kseg evaluate``) or one that cannot be read is
described in the page where its section would be; only ``config.json``, which makes a folder
a run, is required. A ``config.json`` that is a JSON object but not a run configuration
:func:`kseg.recipes.run_config.read_config` accepts (another ``kseg_config_version``, a
missing key) is reported with read_config's message at the top of the configuration
section (the ``kseg`` commands on a run folder, ``kseg report`` included, refuse such a run;
:func:`write_report` shows what the file holds).

To keep the page small, a viewer shows at most ``max_slices`` slices of a case, evenly
spread, and shrinks slices larger than ``max_side`` pixels by keeping every k-th row and
column; the viewer says when it did either.

Needs matplotlib (``pip install 'kseg[viz]'``); imports neither TensorFlow nor Keras.
"""

from __future__ import annotations

import base64
import csv
import datetime
import html
import json
import math
import numbers
import os
import pathlib
import zipfile
from collections.abc import Mapping

import numpy as np

from kseg import viz
from kseg._files import atomic_output
from kseg.errors import LayoutError, UnreadableFileError
from kseg.evaluation import REFERENCE_EMPTY, PatientTable

__all__ = ["DEFAULT_MAX_SIDE", "DEFAULT_MAX_SLICES", "DEFAULT_MAX_VIEWERS", "write_report"]

DEFAULT_MAX_SLICES = 64
DEFAULT_MAX_SIDE = 256
# Each viewer holds up to max_slices PNG slices: a few MB for a CT, so a page of thousands
# of viewers would not fit in memory, nor open in a browser.
DEFAULT_MAX_VIEWERS = 100

_FIGURE_DPI = 80
# Viewer layers: (colour, opacity of the inside). As kseg.viz.overlay draws them, the
# reference is an outline and the prediction is filled too: a filled green over a filled
# magenta would mix to grey where they overlap, hiding both.
_LAYER_STYLES = {
    "reference": (viz.REFERENCE_COLOR, 0.0),
    "prediction": (viz.PREDICTION_COLOR, 0.35),
}
# The files of a run folder (README "Run folder"), listed with whether they exist yet.
_RUN_FILES = (
    ("config.json", "the run's configuration, written when training starts"),
    ("training.json", "when training started and finished (kseg train on a finished run "
                      "trains nothing)"),
    ("best.keras", "the best model so far (BestModelCheckpoint)"),
    ("best.keras.json", "the epoch and score of best.keras"),
    ("history.csv", "per-epoch losses and scores"),
    ("fingerprint.json", "the dataset fingerprint the plan derives from (--plan auto)"),
    ("plan.json", "the plan the run's settings came from (--plan auto)"),
    ("backup", "state to resume training from"),
    ("tensorboard", "TensorBoard logs"),
    ("evaluation", "per-patient scores and case files (kseg evaluate)"),
    ("studies", "robustness and training studies (kseg study)"),
    ("folds", "a cross-validation's members, one run folder each (--validation-fold all)"),
)
# Written by kseg evaluate --input into RUN/evaluation/input-<folder>/
# (kseg.recipes._evaluation.INPUT_RECORD): the input folder the scores are of.
INPUT_RECORD = "input.json"
# The line of a study's table.txt (kseg.studies.StudyTable) where the per-patient rows begin;
# the lines before it are the summary per setting and the study's notes.
_STUDY_ROWS_MARKER = "Per patient:"
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# Metrics worth a box plot when the table has them, in this order.
_PLOTTED_METRICS = ("dice", "hd95", "assd", "iou")


def write_report(
    run_dir: os.PathLike | str,
    output: os.PathLike | str | None = None,
    *,
    max_slices: int = DEFAULT_MAX_SLICES,
    max_side: int = DEFAULT_MAX_SIDE,
    max_viewers: int = DEFAULT_MAX_VIEWERS,
) -> pathlib.Path:
    """Write the HTML report of a run folder, atomically.

    Args:
        run_dir: the run folder (holds ``config.json``).
        output: the HTML file to write; default ``run_dir/report.html``.
        max_slices: most slices a patient's viewer holds; longer cases show this many,
            evenly spread from the first slice to the last.
        max_side: largest slice height or width kept; a larger slice keeps every k-th row
            and column (k the smallest integer that fits).
        max_viewers: most patients of an evaluation given a slice viewer; a larger
            evaluation shows the viewers of its ``max_viewers`` patients of lowest Dice
            (mean over the Dice columns; unscored patients last), in patient order, and
            says so. The tables and figures still cover every patient.

    Returns:
        The path of the written report.

    Raises:
        LayoutError: ``run_dir`` is not a folder or has no ``config.json``; ``output`` is
            a folder or lies below a file.
        UnreadableFileError: ``config.json`` is not a JSON object (one of another version
            or lacking keys is described in the page instead).
        ValueError: ``max_slices``, ``max_side`` or ``max_viewers`` is not a positive
            integer.

    Example:
        >>> write_report("runs/chaos_liver")  # doctest: +SKIP
        PosixPath('runs/chaos_liver/report.html')
    """
    for name, value in (("max_slices", max_slices), ("max_side", max_side),
                        ("max_viewers", max_viewers)):  # fmt: skip
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    run = pathlib.Path(run_dir)
    config = _read_config(run)
    config_problem = _config_problem(run)
    output = run / "report.html" if output is None else pathlib.Path(output)
    _check_output(output)
    page = _Page(
        run, config, config_problem, max_slices=int(max_slices), max_side=int(max_side),
        max_viewers=int(max_viewers),
    ).render()  # fmt: skip
    with atomic_output(output) as temporary:
        pathlib.Path(temporary).write_text(page, encoding="utf-8")
    return output


def _check_output(output: pathlib.Path) -> None:
    """A kseg error, before the page is made, for an output that is a folder or lies
    below a file: the report is one HTML file."""
    if output.is_dir():
        raise LayoutError(output, "is a folder; expected the HTML file to write the report "
                                  f"to, e.g. {output / 'report.html'}")
    for folder in output.parents:
        if os.path.lexists(folder):
            if not folder.is_dir():
                raise LayoutError(folder, f"is not a folder, so {output} cannot be written "
                                          "in it; expected the HTML file to write the report to")
            return


def _read_config(run: pathlib.Path) -> dict:
    if not run.is_dir():
        raise LayoutError(run, "is not a folder; expected a kseg run folder holding config.json")
    path = run / "config.json"
    from kseg.recipes import cross_validation

    in_progress = cross_validation.unbuilt(run)
    if in_progress is not None:
        raise LayoutError(run, in_progress)
    if not path.is_file():
        raise LayoutError(
            path,
            "not found; a kseg run folder starts with the config.json that training writes "
            "when it starts (is this the run folder?)",
        )
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise UnreadableFileError(path, f"is not readable JSON: {error}") from error
    if not isinstance(config, dict):
        raise UnreadableFileError(
            path, f"must hold a JSON object (the run's configuration), got {type(config).__name__}"
        )
    return config


def _config_problem(run: pathlib.Path) -> str | None:
    """read_config's message for a config.json the report can show but the other commands
    refuse (another version, missing keys); ``None`` for a valid one."""
    from kseg.recipes.run_config import read_config

    try:
        read_config(run)
    except UnreadableFileError as error:
        return str(error)
    return None


# --------------------------------------------------------------------------- html pieces


def _escape(value) -> str:
    return html.escape(str(value), quote=True)


def _data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _figure_html(figure, caption: str, gid: str) -> str:
    return (
        f'<figure class="plot" id="{_escape(gid)}"><img alt="{_escape(caption)}" '
        f'src="{_data_uri(viz.png_bytes(figure, dpi=_FIGURE_DPI))}">'
        f"<figcaption>{_escape(caption)}</figcaption></figure>"
    )


def _json_object(path: pathlib.Path) -> dict | None:
    """The JSON object in ``path``, or ``None`` (missing, unreadable, not an object)."""
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def _training_times(path: pathlib.Path) -> str:
    """``"; started ..., finished ..."`` for a run's training.json, else ``""``."""
    if path.name != "training.json":
        return ""
    record = _json_object(path)
    if record is None:
        return "; not a JSON object"
    finished = record.get("finished")
    return (f"; started {record.get('started')}, "
            + (f"finished {finished}" if finished else "not finished"))


def _note(text: str, kind: str = "missing") -> str:
    return f'<p class="note {kind}">{_escape(text)}</p>'


def _number_text(text: str) -> str:
    """A CSV cell shown with 4 decimals when it is a number, as written otherwise."""
    try:
        int(text)
        return text  # counts and epoch numbers stay whole
    except ValueError:
        pass
    try:
        value = float(text)
    except ValueError:
        return text
    return f"{value:.4f}" if math.isfinite(value) else text


def _table_html(header: list[str], rows: list[list[str]], css_class: str) -> str:
    """A table whose cells show rounded numbers and keep the exact text in ``data-value``."""
    head = "".join(f"<th>{_escape(name)}</th>" for name in header)
    body = "".join(
        "<tr>"
        + "".join(
            f'<td data-column="{_escape(name)}" data-value="{_escape(cell)}">'
            f"{_escape(_number_text(cell))}</td>"
            for name, cell in zip(header, row, strict=True)
        )
        + "</tr>"
        for row in rows
    )
    return f'<table class="{css_class}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _dice_columns(header: list[str]) -> list[tuple[str | None, str]]:
    """``[(class name or None, column)]`` of the Dice columns of a scores.csv header."""
    if "dice" in header:
        return [(None, "dice")]
    return [(name[len("dice_") :], name) for name in header if name.startswith("dice_")]


# --------------------------------------------------------------------------- cases


def _load_case(path: pathlib.Path) -> dict[str, np.ndarray]:
    """The arrays of a case file, checked against the run-folder layout."""
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {key: archive[key] for key in archive.files}
    except (OSError, ValueError, zipfile.BadZipFile) as error:
        raise UnreadableFileError(path, f"is not a readable .npz file: {error}") from error
    for key in ("image", "prediction"):
        if key not in arrays:
            raise UnreadableFileError(
                path, f"has no {key!r} array; a case file holds image, prediction, spacing "
                "and (when labelled) reference"
            )  # fmt: skip
    image = arrays["image"]
    if image.ndim != 3 or image.size == 0:
        raise UnreadableFileError(path, f"image must be (slices, rows, columns), got {image.shape}")
    if not np.issubdtype(image.dtype, np.floating) or not np.all(np.isfinite(image)):
        raise UnreadableFileError(
            path, f"image must hold finite floats in [0, 1], got dtype {image.dtype}"
            + ("" if not np.issubdtype(image.dtype, np.floating) else " with NaN or inf")
        )  # fmt: skip
    for key in ("reference", "prediction"):
        if key not in arrays:
            continue
        labels = arrays[key]
        if labels.shape != image.shape:
            raise UnreadableFileError(
                path, f"{key} has shape {labels.shape}, the image {image.shape}"
            )
        if not (labels.dtype == bool or np.issubdtype(labels.dtype, np.integer)):
            raise UnreadableFileError(
                path, f"{key} must hold integer labels (uint8), got dtype {labels.dtype}"
            )
        if labels.size and labels.min() < 0:
            raise UnreadableFileError(path, f"{key} holds negative labels")
    return arrays


def _spacing(arrays: Mapping[str, np.ndarray]) -> tuple[float, float, float]:
    """The case's (slice, row, column) spacing in mm; 1 mm where it has none usable."""
    try:
        spacing = np.asarray(arrays.get("spacing", ()), dtype=np.float64).ravel()
    except (TypeError, ValueError):
        return (1.0, 1.0, 1.0)
    if spacing.shape == (3,) and np.all(np.isfinite(spacing) & (spacing > 0)):
        return tuple(float(value) for value in spacing)
    return (1.0, 1.0, 1.0)


def _shown_slices(count: int, max_slices: int) -> np.ndarray:
    if count <= max_slices:
        return np.arange(count)
    return np.unique(np.round(np.linspace(0, count - 1, max_slices)).astype(int))


def _class_values(config: Mapping) -> dict[str | None, int]:
    """``{class name: label value}`` of config.json's labels; ``{None: value}`` for one
    structure (scored in the ``dice`` column), ``{None: 1}`` when config.json has none."""
    labels = config.get("labels")
    if isinstance(labels, Mapping):
        # a hand-edited or foreign config.json may hold a name for a value, or null: such
        # a class cannot be told in the masks, so it is left out (the table shows it)
        labels = {
            name: int(value)
            for name, value in labels.items()
            if isinstance(value, numbers.Real) and math.isfinite(value) and value == int(value)
        }
    if isinstance(labels, Mapping) and len(labels) > 1:
        return {str(name): value for name, value in labels.items()}
    if isinstance(labels, Mapping) and len(labels) == 1:
        return {None: next(iter(labels.values()))}
    return {None: 1}


class _Page:
    def __init__(
        self,
        run: pathlib.Path,
        config: dict,
        config_problem: str | None,
        *,
        max_slices: int,
        max_side: int,
        max_viewers: int = DEFAULT_MAX_VIEWERS,
    ):
        self.run = run
        self.max_viewers = max_viewers
        self.config = config
        self.config_problem = config_problem
        self.max_slices = max_slices
        self.max_side = max_side
        self.classes = _class_values(config)
        # each history.csv read once: a live run appends to it between two reads, and
        # the member table, the curves and the epoch table must show the same epochs
        self._history_rows: dict[pathlib.Path, list[list[str]]] = {}

    # ---- page

    def render(self) -> str:
        recipe = self.config.get("recipe", "run")
        generated = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
        sections = [
            self._configuration(),
            *self._cross_validation(),
            self._training(),
            *self._evaluations(),
            self._studies(),
        ]
        title = f"kseg report: {recipe}"
        return _TEMPLATE.format(
            title=_escape(title),
            style=_STYLE,
            script=_SCRIPT,
            heading=_escape(title),
            run=_escape(self.run.absolute()),
            generated=_escape(generated),
            body="\n".join(sections),
        )

    # ---- configuration

    def _configuration(self) -> str:
        config = self.config
        dataset = config.get("dataset") if isinstance(config.get("dataset"), Mapping) else {}
        dataset_name = " ".join(
            str(dataset[key]) for key in ("name", "config", "version") if dataset.get(key)
        )
        facts = [
            ("recipe", config.get("recipe")),
            ("created", config.get("created")),
            ("seed", config.get("seed")),
            ("git commit", config.get("git_commit")),
            ("dataset", dataset_name or None),
            ("dataset fingerprint", dataset.get("fingerprint")),
            ("labels", config.get("labels")),
            ("versions", config.get("versions")),
        ]
        rows = "".join(
            f"<tr><th>{_escape(name)}</th><td>{_escape(_compact(value))}</td></tr>"
            for name, value in facts
            if value is not None
        )
        arguments = config.get("arguments")
        argument_rows = ""
        if isinstance(arguments, Mapping) and arguments:
            argument_rows = (
                '<h3>Arguments</h3><table class="arguments">'
                + "".join(
                    f"<tr><th>{_escape(name)}</th><td>{_escape(_compact(value))}</td></tr>"
                    for name, value in sorted(arguments.items())
                )
                + "</table>"
            )
        full = json.dumps(config, indent=2, sort_keys=True)
        problem = ""
        if self.config_problem is not None:
            problem = _note(
                f"{self.config_problem}. The kseg commands on a run folder (evaluate, "
                "predict, report, study) refuse this run; the page shows what the file holds.",
                "problem",
            )
        return (
            '<section id="configuration"><h2>Configuration</h2>'
            f'{problem}<table class="facts">{rows}</table>{argument_rows}'
            f"<details><summary>config.json</summary><pre>{_escape(full)}</pre></details>"
            f"{self._files()}</section>"
        )

    def _files(self) -> str:
        """Which of the run folder's files exist yet, with their sizes."""
        cells = []
        for name, what in _RUN_FILES:
            path = self.run / name
            if path.is_file():
                state = f"{path.stat().st_size:,} bytes" + _training_times(path)
            elif path.is_dir():
                state = f"folder of {sum(1 for _ in path.iterdir())} entries"
            else:
                state = "not there yet"
            cells.append(
                f'<tr data-file="{_escape(name)}"><th>{_escape(name)}</th>'
                f"<td>{_escape(state)}</td><td>{_escape(what)}</td></tr>"
            )
        return f'<h3>Run folder</h3><table class="files">{"".join(cells)}</table>'

    # ---- training

    def _members(self) -> list[Mapping]:
        """The members of a cross-validation run (config.json's ``ensemble`` section)."""
        ensemble = self.config.get("ensemble")
        members = ensemble.get("members") if isinstance(ensemble, Mapping) else None
        if not isinstance(members, list):
            return []
        return [m for m in members if isinstance(m, Mapping) and isinstance(m.get("run"), str)]

    def _training(self) -> str:
        members = self._members()
        if not members:
            content = self._history(self.run / "history.csv", "Training curves (history.csv)",
                                    "training-curves")  # fmt: skip
            return f'<section id="training"><h2>Training</h2>{"".join(content)}</section>'
        content = [_note(
            "A cross-validation: RUN/best.keras averages the members below, each trained as "
            "a run of its own; their curves follow.", "info",
        )]  # fmt: skip
        for member in members:
            fold = member.get("validation_fold")
            content.append(f"<h3>Member validated on fold {_escape(fold)} "
                           f"({_escape(member['run'])})</h3>")  # fmt: skip
            content += self._history(
                self.run / member["run"] / "history.csv",
                f"Training curves of the member validated on fold {fold}",
                f"training-curves-fold-{fold}",
            )
        return f'<section id="training"><h2>Training</h2>{"".join(content)}</section>'

    def _history(self, path: pathlib.Path, caption: str, gid: str) -> list[str]:
        content = []
        if not path.is_file():
            content.append(_note(
                f"No training history: {path.name} is not in {path.parent} yet (it is "
                "written at the end of each epoch)."
            ))  # fmt: skip
        else:
            try:
                rows = self._read_history(path)
                header, body = (rows[0], rows[1:]) if rows else ([], [])
                if not body:
                    raise ValueError("it holds no epochs yet")
                if any(len(row) != len(header) for row in body):
                    raise ValueError("its rows do not all have as many cells as its header")
                content.append(_figure_html(
                    viz.training_curves(viz.history_of_csv_rows(header, body)), caption, gid
                ))  # fmt: skip
                content.append(
                    f"<details><summary>history.csv ({len(body)} epochs)</summary>"
                    + _table_html(header, body, "history")
                    + "</details>"
                )
            except (OSError, UnicodeDecodeError, csv.Error, ValueError) as error:
                content.append(_note(f"{path} cannot be shown: {error}", "problem"))
        return content

    def _read_history(self, path: pathlib.Path) -> list[list[str]]:
        """The rows of the ``history.csv`` at ``path``, read on first use only."""
        if path not in self._history_rows:
            with open(path, newline="", encoding="utf-8-sig") as handle:
                self._history_rows[path] = list(csv.reader(handle))
        return self._history_rows[path]

    # ---- cross-validation

    def _cross_validation(self) -> list[str]:
        members = self._members()
        if not members:
            return []
        ensemble = self.config["ensemble"]
        rows = []
        for member in members:
            folder = self.run / member["run"]
            epochs, best = "not there yet", "not there yet"
            history = folder / "history.csv"
            if history.is_file():
                try:
                    epochs = str(max(len(self._read_history(history)) - 1, 0))
                except (OSError, UnicodeDecodeError, csv.Error) as error:
                    epochs = f"{history.name} unreadable: {error}"
            checkpoint = folder / "best.keras.json"
            if checkpoint.is_file():
                try:
                    record = json.loads(checkpoint.read_text(encoding="utf-8"))
                    best = (f"{record['monitor']} {float(record['best']):.4f} "
                            f"(epoch {int(record['epoch']) + 1})")  # fmt: skip
                except (OSError, ValueError, KeyError, TypeError) as error:
                    best = f"{checkpoint.name} unreadable: {error}"
            unlike = member.get("arguments_unlike_first") or {}
            rows.append([str(member.get("validation_fold")), member["run"], epochs, best,
                         _compact(unlike) if unlike else "none"])  # fmt: skip
        facts = [
            ("model", f"{ensemble.get('kind', 'ensemble')}: {len(members)} members x "
                      f"{ensemble.get('mirrored_copies', 1)} mirrored copies (axes "
                      f"{_compact(ensemble.get('mirror_axes', []))})"),
        ]  # fmt: skip
        out_of_fold = ensemble.get("out_of_fold")
        if isinstance(out_of_fold, Mapping):
            means = out_of_fold.get("mean") or {}
            facts.append(("out-of-fold validation", f"mean {_scores_text(means)} "
                          f"({out_of_fold.get('table', '')}: each case scored by the member "
                          "that did not train on it)"))  # fmt: skip
        chosen = ensemble.get("postprocessing")
        if isinstance(chosen, Mapping):
            labels = chosen.get("labels") or []
            decision = (f"largest component of labels {_compact(labels)}" if labels
                        else "none")  # fmt: skip
            facts.append(("post-processing", f"{decision}; mean without: "
                          f"{_scores_text(chosen.get('dice_without'))}; with: "
                          f"{_scores_text(chosen.get('dice_with'))}. Rule: "
                          f"{chosen.get('rule', '')}"))  # fmt: skip
        fact_rows = "".join(f"<tr><th>{_escape(name)}</th><td>{_escape(value)}</td></tr>"
                            for name, value in facts)  # fmt: skip
        table = _table_html(
            ["validation fold", "run folder", "epochs", "best checkpoint", "options unlike "
             "the first member"], rows, "members",
        )  # fmt: skip
        return [
            '<section id="cross-validation"><h2>Cross-validation</h2>'
            f'<table class="facts ensemble">{fact_rows}</table>{table}</section>'
        ]

    # ---- evaluations

    def _evaluations(self) -> list[str]:
        folder = self.run / "evaluation"
        names = sorted(p.name for p in folder.iterdir() if p.is_dir()) if folder.is_dir() else []
        if not names:
            return [
                '<section id="evaluations"><h2>Evaluation</h2>'
                + _note(
                    "No evaluation yet: the run folder has no evaluation/<name>/ folder "
                    "(kseg evaluate RUN --split test writes one)."
                )
                + "</section>"
            ]
        return [self._evaluation(folder / name) for name in names]

    def _evaluation(self, folder: pathlib.Path) -> str:
        name = folder.name
        parts = [f'<section class="evaluation" id="evaluation-{_escape(name)}">'
                 f"<h2>Evaluation: {_escape(name)}</h2>"]  # fmt: skip
        if (folder / INPUT_RECORD).is_file():  # kseg evaluate --input: what it scored
            record = _json_object(folder / INPUT_RECORD)
            source = record.get("input") if record is not None else None
            parts.append(
                f'<p class="input" data-file="{_escape(INPUT_RECORD)}">Input folder: '
                f"<code>{_escape(str(source))}</code> ({_escape(name)}/{INPUT_RECORD})</p>"
                if isinstance(source, str) else
                _note(f"{name}/{INPUT_RECORD} does not name the input folder it scores: "
                      f"expected a JSON object with an \"input\" folder", "problem")
            )  # fmt: skip
        scores_path = folder / "scores.csv"
        header, rows, table = [], [], None
        if not scores_path.is_file():
            parts.append(_note(f"No scores: {name}/scores.csv is not there."))
        else:
            try:
                with open(scores_path, newline="", encoding="utf-8-sig") as handle:
                    lines = list(csv.reader(handle))
                # blank lines (a hand-edited or concatenated file) are no patients, as
                # csv.DictReader, which PatientTable.from_csv reads with, skips them
                lines = [line for line in lines if line]
                header, rows = (lines[0], lines[1:]) if lines else ([], [])
                table = PatientTable.from_csv(scores_path)
            except (OSError, UnicodeDecodeError, csv.Error, ValueError) as error:
                parts.append(_note(f"{name}/scores.csv cannot be read: {error}", "problem"))
                header, rows, table = [], [], None
        scores_by_patient = {row[0]: dict(zip(header, row, strict=True)) for row in rows}
        if table is not None:
            parts.append(self._scores(table, header, rows))

        cases_folder = folder / "cases"
        case_paths = sorted(cases_folder.glob("*.npz")) if cases_folder.is_dir() else []
        # an evaluation into a folder of an earlier one (kseg evaluate --input of another
        # folder of the same name) leaves the earlier patients' case files beside its own
        stale = [path for path in case_paths if path.stem not in scores_by_patient]
        if table is not None and stale:
            case_paths = [path for path in case_paths if path.stem in scores_by_patient]
            parts.append(_note(
                f"{len(stale)} case files of {name}/cases/ are of no patient of scores.csv "
                "(left by an earlier evaluation into this folder) and are not shown: "
                + ", ".join(path.name for path in stale), "problem"
            ))  # fmt: skip
        if not case_paths:
            parts.append(_note(
                f"No slices to view: {name}/cases/ holds no .npz case files."
            ))  # fmt: skip
        else:
            parts.append(self._case_figures(name, case_paths, scores_by_patient, header))
            viewed = case_paths
            if len(case_paths) > self.max_viewers:
                viewed = _lowest_dice_paths(case_paths, scores_by_patient, header,
                                            self.max_viewers)  # fmt: skip
                parts.append(_note(
                    f"Slice viewers of the {len(viewed)} patients of lowest Dice of "
                    f"{len(case_paths)} (max_viewers={self.max_viewers}); every patient is "
                    "in the tables and figures above.", "info",
                ))  # fmt: skip
            parts.append('<h3>Patients</h3><div class="viewers">')
            for path in viewed:
                try:
                    parts.append(self._viewer(name, path, scores_by_patient.get(path.stem), header))
                except UnreadableFileError as error:
                    parts.append(_note(str(error), "problem"))
            parts.append("</div>")
        missing = sorted(set(scores_by_patient) - {p.stem for p in case_paths})
        if missing and case_paths:
            parts.append(_note(
                f"{len(missing)} patients of scores.csv have no case file to view: "
                + ", ".join(missing)
            ))  # fmt: skip
        parts.append("</section>")
        return "".join(parts)

    # ---- studies

    def _studies(self) -> str:
        """Each ``studies/<name>/`` (kseg.studies): its figure and the summary of its
        ``table.txt``, in the order of ``kseg.studies.STUDIES``, other folders after."""
        from kseg.studies import STUDIES

        folder = self.run / "studies"
        names = sorted(p.name for p in folder.iterdir() if p.is_dir()) if folder.is_dir() else []
        parts = ['<section id="studies"><h2>Studies</h2>']
        if not names:
            parts.append(_note(
                "No studies: the run folder has no studies/<name>/ folder "
                "(kseg study NAME RUN writes one)."
            ))  # fmt: skip
        known = [name for name in STUDIES if name in names]
        for name in known + [name for name in names if name not in known]:
            parts.append(self._study(folder / name))
        parts.append("</section>")
        return "".join(parts)

    def _study(self, folder: pathlib.Path) -> str:
        name = folder.name
        parts = [f'<section class="study" id="study-{_escape(name)}">'
                 f"<h3>Study: {_escape(name)}</h3>"]  # fmt: skip
        table_path = folder / "table.txt"
        if not table_path.is_file():
            parts.append(_note(f"No summary: studies/{name}/table.txt is not there."))
        else:
            try:
                lines = table_path.read_text(encoding="utf-8").splitlines()
                if _STUDY_ROWS_MARKER not in lines:
                    raise ValueError(
                        f"it has no {_STUDY_ROWS_MARKER!r} line, so it is not a study table "
                        "as kseg.studies writes it"
                    )
                summary = lines[: lines.index(_STUDY_ROWS_MARKER)]
                while summary and not summary[-1].strip():
                    summary.pop()
                text = "\n".join(summary)
                parts.append(f'<pre class="study-summary">{_escape(text)}</pre>')
            except (OSError, UnicodeDecodeError, ValueError) as error:
                parts.append(_note(f"studies/{name}/table.txt cannot be shown: {error}", "problem"))
        figure_path = folder / "figure.png"
        if not figure_path.is_file():
            parts.append(_note(f"No figure: studies/{name}/figure.png is not there."))
        else:
            try:
                png = figure_path.read_bytes()
                if not png.startswith(_PNG_SIGNATURE):
                    raise ValueError("it is not a PNG image (no PNG signature)")
                caption = f"Study {name} (studies/{name}/figure.png)"
                parts.append(
                    f'<figure class="plot" id="study-figure-{_escape(name)}">'
                    f'<img alt="{_escape(caption)}" src="{_data_uri(png)}">'
                    f"<figcaption>{_escape(caption)}</figcaption></figure>"
                )
            except (OSError, ValueError) as error:
                parts.append(
                    _note(f"studies/{name}/figure.png cannot be shown: {error}", "problem")
                )
        parts.append("</section>")
        return "".join(parts)

    def _scores(self, table: PatientTable, header: list[str], rows: list[list[str]]) -> str:
        summary = table.summary()
        statistics = ("mean", "median", "std", "count")
        summary_rows = [
            [name, *(
                str(summary[name][s]) if s == "count" else repr(summary[name][s])
                for s in statistics
            )]
            for name in table.metric_names
        ]  # fmt: skip
        parts = [
            "<h3>Summary</h3>",
            _table_html(["column", *statistics], summary_rows, "summary"),
            f"<h3>Per patient ({len(rows)})</h3>",
            _table_html(header, rows, "scores"),
        ]
        plotted = [m for m in _PLOTTED_METRICS if _has_metric(table, m)]
        if plotted and len(table):
            for function, caption in (
                (viz.score_boxplots, "Per-patient scores"),
                (viz.score_histograms, "Score histograms"),
            ):
                try:
                    figure = function(table, plotted)
                except ValueError as error:
                    parts.append(_note(f"{caption}: {error}", "problem"))
                    continue
                parts.append(_figure_html(figure, caption, f"{function.__name__}"))
        empty = table.empty_references
        if empty:
            parts.append(_note(
                f"Reference empty for {len(empty)} patients ({', '.join(empty)}): their "
                "scores follow the empty-mask conventions and are left out of the plots.",
                "info",
            ))  # fmt: skip
        return "".join(parts)

    # ---- figures over all cases

    def _case_figures(self, name, case_paths, scores_by_patient, header) -> str:
        # First pass: the readable labelled cases and their per-slice Dice per class.
        labelled = []
        per_slice = {class_name: {} for class_name in self.classes}
        for path in case_paths:
            try:
                arrays = _load_case(path)
            except UnreadableFileError:
                continue  # its viewer names the problem
            if "reference" not in arrays:
                continue
            labelled.append(path)
            for class_name, value in self.classes.items():
                per_slice[class_name][path.stem] = viz.per_slice_dice(
                    arrays["reference"] == value, arrays["prediction"] == value
                )
        if not labelled:
            return _note("No reference masks in the case files: no overlap figures.", "info")
        parts = []
        for class_name, value in self.classes.items():
            suffix = "" if class_name is None else f" – {class_name}"
            gid = f"{name}-{class_name or 'foreground'}"
            try:
                parts.append(_figure_html(
                    viz.slice_dice_heatmap(per_slice[class_name]), f"Per-slice Dice{suffix}",
                    f"slice-dice-{gid}",
                ))  # fmt: skip
            except ValueError as error:
                parts.append(_note(f"Per-slice Dice{suffix}: {error}", "problem"))
            # A generator: accuracy_vs_dice reduces each case before the next is loaded.
            pairs = (
                (arrays["reference"] == value, arrays["prediction"] == value)
                for arrays in map(_load_case, labelled)
            )
            try:
                parts.append(_figure_html(
                    viz.accuracy_vs_dice(pairs), f"Pixel accuracy vs Dice{suffix}",
                    f"accuracy-dice-{gid}",
                ))  # fmt: skip
            except ValueError as error:
                parts.append(_note(f"Pixel accuracy vs Dice{suffix}: {error}", "info"))
        parts.append(self._lowest_dice_figures(labelled, scores_by_patient, header))
        return '<h3>Figures</h3><div class="figures">' + "".join(parts) + "</div>"

    def _lowest_dice_figures(self, labelled, scores_by_patient, header) -> str:
        """The lowest-Dice patient: the error map of its slice with the most wrong pixels
        and, for a volume, the three planes through its reference."""
        candidates = []
        for class_name, column in _dice_columns(header):
            value = self.classes.get(class_name, 1)
            for path in labelled:
                text = scores_by_patient.get(path.stem, {}).get(column, "nan")
                try:
                    dice = float(text)
                except ValueError:
                    continue
                if math.isfinite(dice):
                    candidates.append((dice, path, class_name, value))
        if not candidates:
            return ""
        dice, path, class_name, value = min(candidates, key=lambda c: c[0])
        arrays = _load_case(path)
        truth, predicted = arrays["reference"] == value, arrays["prediction"] == value
        wrong = np.sum(truth != predicted, axis=(1, 2))
        index = int(np.argmax(wrong))
        which = "" if class_name is None else f" {class_name}"
        patient = f"patient {path.stem} (Dice{which} {dice:.4f})"
        parts = [_figure_html(
            viz.error_map(
                arrays["image"][index], truth[index], predicted[index], window=(0.0, 1.0),
                title=f"{viz._plain(path.stem)}, slice {index}", spacing=_spacing(arrays)[1:],
            ),
            f"Errors of the lowest Dice{which}: {patient}, slice {index} (the slice with the "
            "most wrong pixels)",
            "worst-error-map",
        )]  # fmt: skip
        if truth.shape[0] > 1:
            parts.append(_figure_html(
                viz.tri_planar(
                    arrays["image"], reference=truth, prediction=predicted, window=(0.0, 1.0),
                    spacing=_spacing(arrays),
                ),
                f"Axial, coronal and sagittal planes of {patient} through the reference's "
                "centre",
                "worst-tri-planar",
            ))  # fmt: skip
        return "".join(parts)

    # ---- viewer

    def _viewer(self, evaluation: str, path: pathlib.Path, scores, header) -> str:
        arrays = _load_case(path)
        image = arrays["image"]
        count, rows, columns = image.shape
        shown = _shown_slices(count, self.max_slices)
        step = max(1, math.ceil(max(rows, columns) / self.max_side))
        plane = np.s_[::step, ::step]
        layers = {"image": [], "reference": [], "prediction": []}
        for index in shown:
            layers["image"].append(
                _data_uri(viz.png_bytes(viz.grey_levels(image[index][plane], window=(0, 1))))
            )
            for key, (color, fill_alpha) in _LAYER_STYLES.items():
                if key not in arrays:
                    continue
                labels = arrays[key][index][plane]
                # An empty layer is an empty string: no PNG for the slices a mask misses.
                layers[key].append(
                    _data_uri(viz.png_bytes(viz.label_layer(labels, color, fill_alpha=fill_alpha)))
                    if np.any(labels) else ""
                )  # fmt: skip
        _, row_mm, column_mm = _spacing(arrays)
        start = _start_position(arrays, shown)
        patient = path.stem
        notes = []
        if shown.size < count:
            notes.append(f"{shown.size} of {count} slices shown, evenly spread")
        if step > 1:
            notes.append(
                f"one row and column in {step} of {rows} × {columns} shown "
                f"({len(range(0, rows, step))} × {len(range(0, columns, step))} pixels)"
            )
        if "reference" not in arrays:
            notes.append("no reference (unlabelled input)")
        data = {
            "slices": [int(i) for i in shown],
            **{key: value for key, value in layers.items() if value},
        }
        width_mm, height_mm = columns * column_mm, rows * row_mm
        layer_inputs = "".join(
            f'<label><input type="checkbox" class="show-{key}" checked> '
            f'<span class="swatch" style="background: {_css_color(_LAYER_STYLES[key][0])}">'
            f"</span> {key}</label> "
            for key in ("reference", "prediction")
            if key in data
        )
        viewer_id = f"viewer-{evaluation}-{patient}"
        return (
            f'<section class="viewer" id="{_escape(viewer_id)}" '
            f'data-patient="{_escape(patient)}" data-evaluation="{_escape(evaluation)}" '
            f'data-slice-count="{shown.size}" data-position="{start}">'
            f"<h4>Patient {_escape(patient)}{_dice_header(scores, header)}</h4>"
            f'<div class="stage" style="aspect-ratio: {width_mm:.6g} / {height_mm:.6g}">'
            '<img class="layer layer-image" alt="slice">'
            # The reference on top, as kseg.viz.overlay draws it: the truth stays visible.
            + "".join(
                f'<img class="layer layer-{key}" alt="{key}">'
                for key in ("prediction", "reference")
                if key in data
            )
            + "</div>"
            '<div class="controls">'
            f'<label>slice <input type="range" class="slice-slider" min="0" '
            f'max="{shown.size - 1}" step="1" value="{start}"></label> '
            '<span class="slice-label"></span><br>'
            f"{layer_inputs} "
            '<label>opacity <input type="range" class="opacity" min="0" max="100" '
            'value="70"></label>'
            "</div>"
            + (f'<p class="note info">{_escape("; ".join(notes))}.</p>' if notes else "")
            + f'<script type="application/json" class="slice-data">{_json_for_script(data)}'
            "</script></section>"
        )


def _lowest_dice_paths(case_paths, scores_by_patient, header, count: int) -> list:
    """The ``count`` case files of lowest mean Dice (over the Dice columns; patients
    without a finite Dice last), in their given order."""
    columns = [column for _, column in _dice_columns(header)]

    def mean_dice(path) -> float:
        values = []
        for column in columns:
            try:
                values.append(float(scores_by_patient.get(path.stem, {}).get(column, "nan")))
            except ValueError:
                continue
        finite = [value for value in values if math.isfinite(value)]
        return sum(finite) / len(finite) if finite else math.inf

    ranked = sorted(range(len(case_paths)), key=lambda i: (mean_dice(case_paths[i]), i))
    return [case_paths[i] for i in sorted(ranked[:count])]


def _start_position(arrays: Mapping[str, np.ndarray], shown: np.ndarray) -> int:
    """The shown slice with the most reference (else prediction) pixels; else the middle."""
    for key in ("reference", "prediction"):
        if key in arrays:
            area = np.sum(arrays[key][shown] > 0, axis=(1, 2))
            if area.max() > 0:
                return int(np.argmax(area))
    return int(shown.size // 2)


def _dice_header(scores: Mapping[str, str] | None, header: list[str]) -> str:
    if scores is None:
        return ' <span class="no-scores">(not in scores.csv)</span>'
    parts = []
    for class_name, column in _dice_columns(header):
        text = scores.get(column, "")
        empty_flag = REFERENCE_EMPTY if class_name is None else f"{REFERENCE_EMPTY}_{class_name}"
        empty = scores.get(empty_flag) == "True"
        label = "Dice" if class_name is None else f"Dice {class_name}"
        parts.append(
            f'<span class="dice" data-column="{_escape(column)}" data-value="{_escape(text)}">'
            f"{_escape(label)} {_escape(_number_text(text))}"
            + (" (empty reference)" if empty else "")
            + "</span>"
        )
    return " — " + ", ".join(parts) if parts else ""


def _has_metric(table: PatientTable, metric: str) -> bool:
    names = table.metric_names
    return metric in names or any(name.startswith(f"{metric}_") for name in names)


def _css_color(rgb) -> str:
    red, green, blue = (round(255 * channel) for channel in rgb)
    return f"rgb({red}, {green}, {blue})"


def _scores_text(scores) -> str:
    """``{"dice": 0.93972...}`` as ``dice 0.9397``; anything else as it is."""
    if not isinstance(scores, Mapping):
        return _compact(scores)
    return ", ".join(f"{name} {_number_text(str(value))}" for name, value in scores.items())


def _compact(value) -> str:
    if isinstance(value, (dict, list)):
        return json.dumps(value, sort_keys=True)
    return str(value)


def _json_for_script(data) -> str:
    # "</" inside a <script> element would end it early.
    return json.dumps(data, separators=(",", ":")).replace("</", "<\\/")


_TEMPLATE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="icon" href="data:,">
<title>{title}</title>
<style>{style}</style>
</head>
<body>
<header><h1>{heading}</h1>
<p>Run folder <code>{run}</code>; report written {generated}. Self-contained: open it from
the disk, nothing is fetched.</p></header>
{body}
<script>{script}</script>
</body>
</html>
"""

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5em auto; max-width: 1100px;
       color: #222; padding: 0 1em; }
h1 { font-size: 1.5em; } h2 { border-bottom: 1px solid #ccc; margin-top: 2em; }
table { border-collapse: collapse; margin: 0.5em 0; font-size: 0.9em; }
td, th { border: 1px solid #ddd; padding: 2px 6px; text-align: left; }
table.scores td, table.summary td, table.history td { text-align: right;
       font-variant-numeric: tabular-nums; }
table.facts td, table.arguments td { font-family: monospace; word-break: break-all; }
pre { background: #f6f6f6; padding: 0.5em; overflow: auto; max-height: 30em; }
figure.plot { margin: 1em 0; } figure.plot img { max-width: 100%; }
figcaption { font-size: 0.9em; color: #555; }
.note { padding: 0.4em 0.6em; border-left: 4px solid #999; background: #f6f6f6; }
.note.problem { border-color: #d33; background: #fdeeee; }
.note.missing { border-color: #c90; background: #fff8e6; }
.viewers { display: flex; flex-wrap: wrap; gap: 1em; align-items: flex-start; }
.viewer { border: 1px solid #ddd; padding: 0.5em; width: 480px; max-width: 100%; }
.viewer h4 { margin: 0 0 0.4em 0; }
.stage { position: relative; width: 100%; background: #000; overflow: hidden; }
.stage .layer { position: absolute; left: 0; top: 0; width: 100%; height: 100%;
       image-rendering: pixelated; }
.controls { margin-top: 0.4em; font-size: 0.9em; }
.controls .slice-slider { width: 16em; vertical-align: middle; }
.swatch { display: inline-block; width: 0.8em; height: 0.8em; vertical-align: middle; }
.figures { display: flex; flex-wrap: wrap; gap: 0 1.5em; align-items: flex-end; }
"""

_SCRIPT = """
(function () {
  "use strict";
  function setupViewer(viewer) {
    var data = JSON.parse(viewer.querySelector("script.slice-data").textContent);
    var slider = viewer.querySelector(".slice-slider");
    var label = viewer.querySelector(".slice-label");
    var opacity = viewer.querySelector(".opacity");
    var stage = viewer.querySelector(".stage");
    var layers = {};
    ["image", "reference", "prediction"].forEach(function (key) {
      layers[key] = viewer.querySelector(".layer-" + key);
    });
    var count = data.slices.length;
    function show(position) {
      position = Math.max(0, Math.min(count - 1, position));
      slider.value = String(position);
      viewer.dataset.position = String(position);
      viewer.dataset.slice = String(data.slices[position]);
      layers.image.src = data.image[position];
      ["reference", "prediction"].forEach(function (key) {
        if (!layers[key]) { return; }
        var source = data[key][position];
        // An empty string is a slice the mask misses: hide the layer, load nothing.
        if (source) { layers[key].src = source; layers[key].hidden = false; }
        else { layers[key].removeAttribute("src"); layers[key].hidden = true; }
      });
      label.textContent = "slice " + data.slices[position] + " (" + (position + 1) +
        " of " + count + " shown)";
    }
    function applyVisibility() {
      ["reference", "prediction"].forEach(function (key) {
        var box = viewer.querySelector(".show-" + key);
        if (!layers[key] || !box) { return; }
        layers[key].style.opacity = box.checked ? String(opacity.value / 100) : "0";
      });
    }
    slider.addEventListener("input", function () { show(parseInt(slider.value, 10)); });
    stage.addEventListener("wheel", function (event) {
      event.preventDefault();
      if (event.deltaY === 0) { return; }
      show(parseInt(slider.value, 10) + (event.deltaY > 0 ? 1 : -1));
    }, { passive: false });
    opacity.addEventListener("input", applyVisibility);
    viewer.querySelectorAll("input[type=checkbox]").forEach(function (box) {
      box.addEventListener("change", applyVisibility);
    });
    show(parseInt(slider.value, 10));
    applyVisibility();
  }
  document.querySelectorAll("section.viewer").forEach(setupViewer);
})();
"""
