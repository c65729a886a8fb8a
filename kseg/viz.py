"""Figures for segmentation studies: overlays, error maps, curves and score plots.

Every function returns a :class:`matplotlib.figure.Figure` drawn on the non-interactive Agg
canvas. No pyplot state is touched, so the functions work without a display and from
several threads at once; save a figure with ``figure.savefig("overlay.png")`` or embed it in
a report.

Images are 2D arrays ``(rows, columns)`` shown with row 0 at the top; volumes are
``(z, y, x)`` as :class:`kseg.io.Volume` holds them. Masks are binary (bool or 0/1) or, where
a function says so, integer label maps. The colours are module constants, so a report's
legend and a test can name them:

- :data:`REFERENCE_COLOR` (green) and :data:`PREDICTION_COLOR` (magenta) outline the
  reference and the prediction; green against magenta stays distinct for red-green colour
  blindness.
- :data:`FALSE_POSITIVE_COLOR` (red-orange), :data:`FALSE_NEGATIVE_COLOR` (blue) and
  :data:`TRUE_POSITIVE_COLOR` (yellow) fill an error map.
- :data:`NO_SCORE_COLOR` (light grey) marks heatmap cells without a score.

matplotlib is an optional dependency: ``pip install 'kseg[viz]'``. This module imports
neither TensorFlow nor Keras, so plotting a results table stays light.
"""

from __future__ import annotations

import csv
import io
import math
import os
import types
from collections.abc import Mapping

import numpy as np

try:
    import matplotlib.colors
    import matplotlib.lines
    import matplotlib.patches
    import PIL.Image
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
except ImportError as error:  # pragma: no cover - exercised in a subprocess by the tests
    raise ImportError(
        "kseg.viz draws its figures with matplotlib, which is not installed; install it "
        "with: pip install 'kseg[viz]'"
    ) from error

__all__ = [
    "FALSE_NEGATIVE_COLOR",
    "FALSE_POSITIVE_COLOR",
    "HEATMAP_MAX_ROWS",
    "NO_SCORE_COLOR",
    "PREDICTION_COLOR",
    "REFERENCE_COLOR",
    "TRUE_POSITIVE_COLOR",
    "accuracy_vs_dice",
    "error_map",
    "grey_levels",
    "history_of_csv_rows",
    "label_layer",
    "overlay",
    "png_bytes",
    "per_slice_dice",
    "score_boxplots",
    "score_histograms",
    "slice_dice_heatmap",
    "training_curves",
    "tri_planar",
    "uncertainty_map",
]

REFERENCE_COLOR = (0.0, 0.8, 0.0)
PREDICTION_COLOR = (1.0, 0.0, 1.0)
FALSE_POSITIVE_COLOR = (1.0, 0.3, 0.0)
FALSE_NEGATIVE_COLOR = (0.0, 0.45, 1.0)
TRUE_POSITIVE_COLOR = (1.0, 0.9, 0.0)
NO_SCORE_COLOR = (0.8, 0.8, 0.8)
# slice_dice_heatmap draws at most this many rows (0.3 in each); a larger cohort shares them
HEATMAP_MAX_ROWS = 200

# Scores bounded by [0, 1]: their histograms share fixed bins, so two tables compare.
_UNIT_INTERVAL_METRICS = ("dice", "iou", "precision", "recall", "specificity", "accuracy")
_UNITS = {"hd95": "mm", "hausdorff": "mm", "assd": "mm", "volume_difference": "%", "ravd": "%"}
_REFERENCE_EMPTY = "reference_empty"  # kseg.evaluation.REFERENCE_EMPTY, without importing it


# --------------------------------------------------------------------------- helpers


def _new_figure(width: float, height: float) -> Figure:
    figure = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(figure)  # attaches itself: draw() and buffer_rgba() need no pyplot
    return figure


def _image_2d(name: str, image) -> np.ndarray:
    array = np.asarray(image)
    if array.ndim != 2:
        raise ValueError(f"{name} must be a 2D array (rows, columns), got shape {array.shape}")
    if array.dtype.kind == "V" and array.dtype.name.startswith(("bfloat16", "float8")):
        array = array.astype(np.float32)  # a mixed-precision model's output (ml_dtypes)
    if not (np.issubdtype(array.dtype, np.number) or array.dtype == bool):
        raise ValueError(f"{name} must hold numbers, got dtype {array.dtype}")
    if array.size == 0:
        raise ValueError(f"{name} is empty (shape {array.shape})")
    array = array.astype(np.float64)
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{name} holds {int(np.sum(~np.isfinite(array)))} NaN or inf values")
    return array


def _window(image: np.ndarray, window) -> tuple[float, float]:
    if window is None:
        low, high = float(image.min()), float(image.max())
        # A constant image (an empty slice, padding) is shown mid-grey, not refused.
        return (low, high) if low < high else (low - 0.5, high + 0.5)
    try:
        low, high = (float(value) for value in window)
    except (TypeError, ValueError) as error:
        raise ValueError(f"window must be a (low, high) pair of numbers, got {window!r}") from error
    if not (math.isfinite(low) and math.isfinite(high) and low < high):
        raise ValueError(f"window must be finite with low < high, got {window!r}")
    return low, high


def _label_map(name: str, mask, shape: tuple[int, ...], *, binary: bool = False) -> np.ndarray:
    """``mask`` as an int array of ``shape``, checked to hold whole non-negative labels."""
    array = np.asarray(mask)
    if array.shape != tuple(shape):
        raise ValueError(f"{name} has shape {array.shape}; expected {tuple(shape)}")
    if array.dtype != bool and not np.issubdtype(array.dtype, np.number):
        raise ValueError(f"{name} must be a mask of numbers or booleans, got dtype {array.dtype}")
    if array.dtype != bool:
        if not np.all(np.isfinite(array)) or np.any(array != np.round(array)) or np.any(array < 0):
            raise ValueError(
                f"{name} must hold whole non-negative labels (0 = background); threshold "
                "probabilities first, e.g. probabilities >= 0.5"
            )
    labels = array.astype(np.int64)
    if binary and labels.size and labels.max() > 1:
        raise ValueError(
            f"{name} must be binary (0/1 or bool), got labels {np.unique(labels)[:6].tolist()}; "
            f"pass {name} == k to show label k"
        )
    return labels


def _show_grey(ax, image: np.ndarray, window, *, aspect=1.0, origin="upper") -> None:
    low, high = _window(image, window)
    ax.imshow(
        image, cmap="gray", vmin=low, vmax=high, aspect=aspect, origin=origin,
        interpolation="nearest",
    )  # fmt: skip


def _outline(ax, labels: np.ndarray, color, linewidth: float) -> None:
    """Contour every non-zero label of ``labels`` at the boundary between its pixels.

    Without ``origin`` the contour puts ``labels[i, j]`` at data point ``(j, i)``, where
    ``imshow`` puts that pixel's centre whichever its origin.
    """
    for label in np.unique(labels):
        if label == 0:
            continue
        # Level 0.5 of the indicator runs half-way between inside and outside pixel centres.
        contours = ax.contour(
            (labels == label).astype(np.float64), levels=[0.5], colors=[color],
            linewidths=linewidth,
        )  # fmt: skip
        contours.set_gid(f"outline {label}")


def _fill(ax, mask: np.ndarray, color, alpha: float, *, aspect=1.0, origin="upper") -> None:
    """Paint ``color`` at opacity ``alpha`` where ``mask`` is set, transparent elsewhere."""
    rgba = np.zeros((*mask.shape, 4))
    rgba[mask] = (*color, alpha)
    ax.imshow(rgba, interpolation="nearest", aspect=aspect, origin=origin)


def _pixel_aspect(spacing) -> float:
    """Pixel height / width of a slice of ``spacing`` ``(row, column)`` mm; 1 for None."""
    if spacing is None:
        return 1.0
    row, column = _checked_spacing(spacing, "two", "(row, column)")
    return row / column


def _checked_spacing(spacing, count: str, axes: str) -> tuple[float, ...]:
    """``spacing`` as floats, each finite and > 0, as many as ``axes`` names."""
    try:
        values = tuple(float(value) for value in spacing)
    except (TypeError, ValueError) as error:
        message = f"spacing must be {count} numbers {axes} in mm, got {spacing!r}"
        raise ValueError(message) from error
    if len(values) != axes.count(",") + 1 or not all(math.isfinite(v) and v > 0 for v in values):
        raise ValueError(f"spacing must be {count} positive numbers {axes}, got {spacing!r}")
    return values


def _check_alpha(alpha) -> float:
    try:
        alpha = float(alpha)
    except (TypeError, ValueError) as error:
        raise ValueError(f"alpha must be a number in [0, 1], got {alpha!r}") from error
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    return alpha


def _legend_line(color, label: str):
    return matplotlib.lines.Line2D([], [], color=color, linewidth=2, label=label)


def _legend_patch(color, label: str):
    return matplotlib.patches.Patch(facecolor=color, edgecolor="none", label=label)


def _draw_masks(ax, reference, prediction, alpha, linewidth, *, aspect=1.0, origin="upper"):
    handles = []
    if prediction is not None and alpha > 0:
        _fill(ax, prediction > 0, PREDICTION_COLOR, alpha, aspect=aspect, origin=origin)
    if reference is not None:
        _outline(ax, reference, REFERENCE_COLOR, linewidth)
        handles.append(_legend_line(REFERENCE_COLOR, "reference"))
    if prediction is not None:
        _outline(ax, prediction, PREDICTION_COLOR, linewidth)
        handles.append(_legend_line(PREDICTION_COLOR, "prediction"))
    return handles


# --------------------------------------------------------------------------- slices


def overlay(
    image,
    reference=None,
    prediction=None,
    *,
    alpha: float = 0.3,
    linewidth: float = 1.5,
    window=None,
    title: str | None = None,
    spacing=None,
) -> Figure:
    """One slice in grey with the reference and prediction outlined.

    The reference is outlined in :data:`REFERENCE_COLOR` (green), the prediction in
    :data:`PREDICTION_COLOR` (magenta), which also fills the predicted area at opacity
    ``alpha``. Outlines run along pixel borders (the 0.5 level of each label's indicator),
    so a one-pixel structure is still visible. Label maps get one outline per label.

    Args:
        image: 2D array ``(rows, columns)``, shown in grey, row 0 at the top.
        reference: optional mask or integer label map of the image's shape.
        prediction: optional mask or integer label map of the image's shape.
        alpha: opacity of the prediction's fill, in [0, 1]; 0 draws outlines only.
        linewidth: outline width in points.
        window: ``(low, high)`` intensities mapped to black and white (e.g. ``(-57, 164)``,
            kseg's MSD spleen CT window); default the image's minimum and maximum.
        title: axes title.
        spacing: pixel size ``(row, column)`` in mm (a CT slice's in-plane spacing, a
            radiograph's PixelSpacing): pixels are drawn with that physical aspect, so a
            0.7 x 2.5 mm reformat is not squashed; default square pixels.

    Returns:
        A Figure with one axes.

    Raises:
        ValueError: a non-2D or non-finite image, a mask of another shape or with
            negative / fractional labels, ``alpha`` outside [0, 1], a bad ``window``, a
            ``spacing`` that is not two positive numbers.

    Example:
        >>> ct_slice = np.linspace(-200.0, 300.0, 32 * 32).reshape(32, 32)  # a HU ramp
        >>> liver = np.zeros((32, 32), np.uint8)
        >>> liver[8:24, 8:24] = 1
        >>> predicted = np.roll(liver, 3, axis=1)  # three columns too far right
        >>> figure = overlay(ct_slice, reference=liver, prediction=predicted,
        ...                  window=(-57, 164), title="slice 40")
        >>> len(figure.axes), figure.axes[0].get_title()
        (1, 'slice 40')
        >>> [text.get_text() for text in figure.axes[0].get_legend().get_texts()]
        ['reference', 'prediction']

        Save it with ``figure.savefig("overlay.png")``.
    """
    image = _image_2d("image", image)
    alpha = _check_alpha(alpha)
    reference = None if reference is None else _label_map("reference", reference, image.shape)
    prediction = None if prediction is None else _label_map("prediction", prediction, image.shape)
    aspect = _pixel_aspect(spacing)
    figure = _new_figure(6, 6)
    ax = figure.add_subplot()
    _show_grey(ax, image, window, aspect=aspect)
    handles = _draw_masks(ax, reference, prediction, alpha, linewidth, aspect=aspect)
    if handles:
        ax.legend(handles=handles, loc="upper right", fontsize="small")
    ax.set_axis_off()
    if title:
        ax.set_title(title)
    return figure


def error_map(
    image,
    reference,
    prediction,
    *,
    show_true_positives: bool = False,
    alpha: float = 0.6,
    window=None,
    title: str | None = None,
    spacing=None,
) -> Figure:
    """Where a binary prediction is wrong: false positives and false negatives over the image.

    False positives (predicted, not in the reference) are painted in
    :data:`FALSE_POSITIVE_COLOR` (red-orange), false negatives (in the reference, missed) in
    :data:`FALSE_NEGATIVE_COLOR` (blue) and, with ``show_true_positives``, true positives in
    :data:`TRUE_POSITIVE_COLOR` (yellow), each at opacity ``alpha`` over the grey image.
    The title counts the pixels of each kind.

    Args:
        image: 2D array ``(rows, columns)``.
        reference: binary mask (bool or 0/1) of the image's shape.
        prediction: binary mask of the image's shape. For a label map pass ``labels == k``.
        show_true_positives: also paint the pixels both masks hold.
        alpha: opacity of the error colours, in [0, 1].
        window: ``(low, high)`` grey window; default the image's minimum and maximum.
        title: text before the pixel counts in the axes title.
        spacing: pixel size ``(row, column)`` in mm, drawn with that aspect (see
            :func:`overlay`); default square pixels.

    Returns:
        A Figure with one axes.

    Raises:
        ValueError: the image or a mask is malformed (see :func:`overlay`), a mask holds a
            label other than 0 and 1, ``alpha`` is outside [0, 1], a bad ``spacing``.

    Example:
        >>> ct_slice = np.linspace(-200.0, 300.0, 32 * 32).reshape(32, 32)
        >>> liver = np.zeros((32, 32), bool)
        >>> liver[8:24, 8:24] = True  # 16 x 16 pixels
        >>> predicted = np.roll(liver, 3, axis=1)  # 3 columns of 16 missed, 3 added
        >>> error_map(ct_slice, liver, predicted).axes[0].get_title()
        'FP 48 px, FN 48 px, TP 208 px'
    """
    image = _image_2d("image", image)
    alpha = _check_alpha(alpha)
    truth = _label_map("reference", reference, image.shape, binary=True).astype(bool)
    predicted = _label_map("prediction", prediction, image.shape, binary=True).astype(bool)
    false_positive = predicted & ~truth
    false_negative = truth & ~predicted
    true_positive = truth & predicted
    aspect = _pixel_aspect(spacing)

    figure = _new_figure(6, 6)
    ax = figure.add_subplot()
    _show_grey(ax, image, window, aspect=aspect)
    rgba = np.zeros((*image.shape, 4))
    rgba[false_positive] = (*FALSE_POSITIVE_COLOR, alpha)
    rgba[false_negative] = (*FALSE_NEGATIVE_COLOR, alpha)
    handles = [
        _legend_patch(FALSE_POSITIVE_COLOR, "false positive"),
        _legend_patch(FALSE_NEGATIVE_COLOR, "false negative"),
    ]
    if show_true_positives:
        rgba[true_positive] = (*TRUE_POSITIVE_COLOR, alpha)
        handles.append(_legend_patch(TRUE_POSITIVE_COLOR, "true positive"))
    ax.imshow(rgba, interpolation="nearest", aspect=aspect)
    ax.legend(handles=handles, loc="upper right", fontsize="small")
    ax.set_axis_off()
    counts = (
        f"FP {int(false_positive.sum())} px, FN {int(false_negative.sum())} px, "
        f"TP {int(true_positive.sum())} px"
    )
    ax.set_title(f"{title}\n{counts}" if title else counts)
    return figure


def _volume_and_spacing(volume, spacing):
    """The (z, y, x) array and spacing of an array or of a :class:`kseg.io.Volume`.

    A Volume's through-plane size is its distance between slice planes: on a gantry-tilted
    (sheared) grid the step between slice centres is longer, and would stretch the coronal
    and sagittal views by ``1 / cos(tilt)``.
    """
    if hasattr(volume, "array") and hasattr(volume, "affine"):
        array = np.asarray(volume.array)
        spacing = volume.plane_spacing if spacing is None else spacing
    else:
        array = np.asarray(volume)
    if array.ndim != 3:
        raise ValueError(f"volume must be a 3D array (z, y, x), got shape {array.shape}")
    if array.size == 0:
        raise ValueError(f"volume is empty (shape {array.shape})")
    if not np.issubdtype(array.dtype, np.number) and array.dtype != bool:
        raise ValueError(f"volume must hold numbers, got dtype {array.dtype}")
    array = array.astype(np.float64)
    if not np.all(np.isfinite(array)):
        raise ValueError(f"volume holds {int(np.sum(~np.isfinite(array)))} NaN or inf values")
    if spacing is None:
        spacing = (1.0, 1.0, 1.0)
    return array, _checked_spacing(spacing, "three", "(z, y, x)")


def _cut_point(shape, reference, index) -> tuple[int, int, int]:
    if index is None:
        if reference is not None and np.any(reference):
            centre = np.argwhere(reference > 0).mean(axis=0)
            return tuple(int(round(c)) for c in centre)
        return tuple(size // 2 for size in shape)
    try:
        point = tuple(int(value) for value in index)
    except (TypeError, ValueError) as error:
        raise ValueError(f"index must be three integers (z, y, x), got {index!r}") from error
    if len(point) != 3 or any(not 0 <= p < size for p, size in zip(point, shape, strict=False)):
        raise ValueError(f"index must be three integers (z, y, x) inside {shape}, got {index!r}")
    return point


def tri_planar(
    volume,
    *,
    reference=None,
    prediction=None,
    index=None,
    spacing=None,
    alpha: float = 0.3,
    linewidth: float = 1.5,
    window=None,
) -> Figure:
    """Axial, coronal and sagittal slices through one point of a volume.

    Axes are kseg's ``(z, y, x)``: the axial view is ``volume[z]`` (y down, x across), the
    coronal view ``volume[:, y, :]`` and the sagittal view ``volume[:, :, x]``, both with
    slice 0 at the bottom (an axial series in kseg's position order runs from the feet up,
    so the head is at the top). Pixels
    are drawn with their physical aspect (``spacing``), so a 5 mm-slice CT is not squashed.
    Dashed lines mark where the other two planes cut. Reference and prediction are drawn as
    in :func:`overlay`.

    Args:
        volume: 3D array ``(z, y, x)`` or a :class:`kseg.io.Volume` (its
            :attr:`~kseg.io.Volume.plane_spacing` is used unless ``spacing`` is given: the
            distance between slice planes, also on a gantry-tilted series).
        reference: optional mask or label map of the volume's shape (array or Volume).
        prediction: optional mask or label map of the volume's shape (array or Volume).
        index: the ``(z, y, x)`` voxel the three planes pass through; default the rounded
            centre of mass of the reference's foreground, or the volume's centre when there
            is no reference or it is empty.
        spacing: voxel size ``(z, y, x)`` in mm; default 1 mm (or the Volume's plane
            spacing).
        alpha: opacity of the prediction's fill, in [0, 1].
        linewidth: outline width in points.
        window: ``(low, high)`` grey window; default the volume's minimum and maximum.

    Returns:
        A Figure with three axes, titled ``axial``, ``coronal`` and ``sagittal`` with the
        slice index.

    Raises:
        ValueError: a non-3D or non-finite volume, masks of another shape, an index outside
            the volume, a spacing that is not three positive numbers.

    Example:
        >>> volume = np.zeros((9, 20, 20))
        >>> volume[2:5, 4:9, 10:17] = 1.0  # a box, centred on voxel (3, 6, 13)
        >>> figure = tri_planar(volume, reference=volume > 0, spacing=(5.0, 0.8, 0.8))
        >>> [ax.get_title() for ax in figure.axes]
        ['axial (z = 3)', 'coronal (y = 6)', 'sagittal (x = 13)']

        A Volume brings its own spacing, e.g. an MSD spleen case and its label:
        ``tri_planar(read_nifti("imagesTr/spleen_10.nii.gz"),
        reference=read_nifti("labelsTr/spleen_10.nii.gz"))``.
    """
    array, (dz, dy, dx) = _volume_and_spacing(volume, spacing)
    alpha = _check_alpha(alpha)
    # Label volumes read with kseg.io come as Volumes too.
    reference = getattr(reference, "array", reference)
    prediction = getattr(prediction, "array", prediction)
    reference = None if reference is None else _label_map("reference", reference, array.shape)
    prediction = None if prediction is None else _label_map("prediction", prediction, array.shape)
    z, y, x = _cut_point(array.shape, reference, index)
    window = _window(array, window)

    def cut(labels, where):
        return None if labels is None else labels[where]

    # (title, slicer, aspect = pixel height / width, origin, axis names, cut lines (v, h))
    views = (
        (f"axial (z = {z})", np.s_[z, :, :], dy / dx, "upper", ("x", "y"), (x, y)),
        (f"coronal (y = {y})", np.s_[:, y, :], dz / dx, "lower", ("x", "z"), (x, z)),
        (f"sagittal (x = {x})", np.s_[:, :, x], dz / dy, "lower", ("y", "z"), (y, z)),
    )
    figure = _new_figure(13, 4.8)
    axes = figure.subplots(1, 3)
    handles = []
    for ax, (title, where, aspect, origin, (across, up), (vertical, horizontal)) in zip(
        axes, views, strict=True
    ):
        _show_grey(ax, array[where], window, aspect=aspect, origin=origin)
        handles = _draw_masks(
            ax, cut(reference, where), cut(prediction, where), alpha, linewidth,
            aspect=aspect, origin=origin,
        )  # fmt: skip
        ax.axvline(vertical, color="yellow", linewidth=0.6, linestyle="--", alpha=0.6)
        ax.axhline(horizontal, color="yellow", linewidth=0.6, linestyle="--", alpha=0.6)
        ax.set_title(title)
        ax.set_xlabel(across)
        ax.set_ylabel(up)
    if handles:
        axes[0].legend(handles=handles, loc="upper right", fontsize="small")
    return figure


# --------------------------------------------------------------------------- training curves

_LOSS_KEYS = ("loss", "val_loss")
_SCORE_KEYS = ("dice", "val_dice", "val_volume_dice")
_GAP_KEY = "val_patch_volume_gap"


def _number(text: str) -> float:
    """A CSV cell as a float; Keras' CSVLogger writes ``NA`` for a value an epoch lacked."""
    try:
        return float(text)
    except ValueError:
        return math.nan


def history_of_csv_rows(header: list[str], body: list[list[str]]) -> types.SimpleNamespace:
    """A ``history.csv`` already read (header and rows) in the shape of the
    ``keras.callbacks.History`` :func:`training_curves` draws: ``history`` ``{key: per-epoch
    numbers}`` (a cell that is no number, Keras' ``NA``, or missing is a gap) and ``epoch``
    from its 0-based ``epoch`` column, when it has one."""
    columns = {
        key: [_number(row[index] if index < len(row) else "") for row in body]
        for index, key in enumerate(header)
    }
    return types.SimpleNamespace(history=columns, epoch=columns.pop("epoch", None))


def _read_history(history) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """``(epochs counted from 1, {key: values})`` from a History, a dict or a CSV path."""
    epochs = None
    if isinstance(history, (str, os.PathLike)):
        # utf-8-sig: a history.csv re-saved by Excel ("CSV UTF-8") starts with a byte-order mark
        with open(history, newline="", encoding="utf-8-sig") as handle:
            rows = list(csv.reader(handle))
        if len(rows) < 2:
            raise ValueError(f"history file {os.fspath(history)!r} has no epochs")
        history = history_of_csv_rows(rows[0], rows[1:])
    if hasattr(history, "history") and isinstance(history.history, Mapping):
        columns = dict(history.history)
        if getattr(history, "epoch", None):
            epochs = np.asarray(history.epoch, dtype=np.float64) + 1
    elif isinstance(history, Mapping):
        columns = dict(history)
    else:
        raise ValueError(
            "history must be a keras History, a dict of per-epoch lists or the path of a "
            f"history.csv, got {type(history).__name__}"
        )
    values = {}
    for key, value in columns.items():
        try:
            values[key] = np.asarray(value, dtype=np.float64).ravel()
        except (TypeError, ValueError) as error:
            raise ValueError(
                f"history[{key!r}] must be per-epoch numbers, got {value!r}"
            ) from error
    lengths = {key: value.size for key, value in values.items()}
    if len(set(lengths.values())) > 1:
        raise ValueError(f"history has keys with different numbers of epochs: {lengths}")
    count = next(iter(lengths.values()), 0)
    if epochs is None:
        epochs = np.arange(1, count + 1, dtype=np.float64)
    if epochs.size != count:
        raise ValueError(f"history has {epochs.size} epoch numbers for {count} values")
    return epochs, values


def training_curves(history, *, title: str | None = None) -> Figure:
    """Loss, Dice and the patch-volume gap per epoch.

    Panels appear for what the history holds: ``loss`` / ``val_loss``; ``dice`` /
    ``val_dice`` (patch or slice Dice) with ``val_volume_dice`` (whole-volume, per-patient
    Dice from :class:`kseg.training.VolumeValidation`); and ``val_patch_volume_gap``
    (``val_dice - val_volume_dice``: how much patch scores flatter) with a zero line. Each
    curve's label is its history key. Epochs are counted from 1, as Keras prints them; a
    ``NA`` cell of the CSV is a gap in the curve.

    Args:
        history: the ``keras.callbacks.History`` that ``fit`` returns, a dict of per-epoch
            lists (``History.history``), or the path of the ``history.csv`` that
            :func:`kseg.training.training_callbacks` writes (its ``epoch`` column counts
            from 0).
        title: figure title.

    Returns:
        A Figure with one axes per panel present (1 to 3), sharing the epoch axis.

    Raises:
        ValueError: ``history`` is of another type, its keys have different lengths, or it
            holds none of the keys above (the message lists what it holds).
        FileNotFoundError: the CSV path does not exist.

    Example:
        >>> import tempfile
        >>> path = os.path.join(tempfile.mkdtemp(), "history.csv")  # as CSVLogger writes it
        >>> with open(path, "w") as csv_file:
        ...     _ = csv_file.write("epoch,dice,loss,val_dice,val_loss\\n"
        ...                        "0,0.41,0.62,0.38,0.66\\n1,0.63,0.41,NA,NA\\n")
        >>> figure = training_curves(path, title="liver")
        >>> [ax.get_ylabel() for ax in figure.axes]
        ['loss', 'Dice']
        >>> [line.get_label() for line in figure.axes[1].get_lines()]
        ['dice', 'val_dice']
    """
    epochs, values = _read_history(history)
    panels = [
        (keys, ylabel)
        for keys, ylabel in (
            ([k for k in _LOSS_KEYS if k in values], "loss"),
            ([k for k in _SCORE_KEYS if k in values], "Dice"),
            ([_GAP_KEY] if _GAP_KEY in values else [], "patch - volume Dice"),
        )
        if keys
    ]
    if not panels:
        raise ValueError(
            f"history holds none of {[*_LOSS_KEYS, *_SCORE_KEYS, _GAP_KEY]}; it has "
            f"{sorted(values)}"
        )
    figure = _new_figure(6.5, 2.6 * len(panels) + 0.4)
    axes = figure.subplots(len(panels), 1, sharex=True, squeeze=False)[:, 0]
    for ax, (keys, ylabel) in zip(axes, panels, strict=True):
        for key in keys:
            # Validation curves dashed, so train and validation read apart without colour.
            style = "--" if key.startswith("val_") else "-"
            ax.plot(epochs, values[key], style, marker=".", label=key)
        if keys == [_GAP_KEY]:
            ax.axhline(0.0, color="grey", linewidth=0.8, label="_no gap")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    axes[-1].set_xlabel("epoch")
    if title:
        figure.suptitle(title)
    return figure


# --------------------------------------------------------------------------- score tables


def _class_columns(table, metric: str) -> list[tuple[str | None, str]]:
    """``[(class name or None, column)]`` of ``metric`` in a :class:`PatientTable`.

    :func:`kseg.evaluation.evaluate_volumes` writes ``dice`` for one binary structure and
    ``dice_<class>`` per class of a label map.
    """
    names = table.metric_names
    if metric in names:
        return [(None, metric)]
    columns = [(name[len(metric) + 1 :], name) for name in names if name.startswith(f"{metric}_")]
    if not columns:
        raise ValueError(f"metrics: the table has no {metric!r} columns; it has {names}")
    return columns


def _scored_values(table, class_name: str | None, column: str, skip_empty_references: bool):
    """Finite values of ``column``, and how many were left out as ``nan`` / ``inf`` / empty."""
    values = table.column(column)
    keep = ~np.isnan(values)
    undefined = int(np.sum(~keep))
    empty = 0
    flag = _REFERENCE_EMPTY if class_name is None else f"{_REFERENCE_EMPTY}_{class_name}"
    if skip_empty_references and flag in table.flag_names:
        flagged = table.column(flag)
        empty = int(np.sum(flagged & keep))
        keep &= ~flagged
    infinite = int(np.sum(np.isinf(values) & keep))
    keep &= np.isfinite(values)
    return values[keep], {"nan": undefined, "inf": infinite, "empty reference": empty}


def _left_out(counts: Mapping[str, int], before: str = " ") -> str:
    parts = [f"{count} {why}" for why, count in counts.items() if count]
    return f"{before}({', '.join(parts)} left out)" if parts else ""


def _checked_table(table, metrics) -> tuple[str, ...]:
    if not (hasattr(table, "metric_names") and hasattr(table, "column")):
        raise ValueError(
            f"table must be a kseg.evaluation.PatientTable, got {type(table).__name__}"
        )
    if len(table) == 0:
        raise ValueError("table has no patients")
    metrics = (metrics,) if isinstance(metrics, str) else tuple(metrics)
    if not metrics:
        raise ValueError("metrics must name at least one metric")
    return metrics


def _with_unit(metric: str) -> str:
    return _plain(f"{metric} ({_UNITS[metric]})" if metric in _UNITS else metric)


def _class_label(metric: str, class_name: str | None) -> str:
    return _plain(metric if class_name is None else f"{metric} – {class_name}")


def _plain(text: str) -> str:
    """A name from the data (patient id, class, metric) as matplotlib text shown as it is:
    two ``$`` would start mathtext, which renders ``case$1$`` as an italic "case1" and fails
    the whole figure on a name that is no valid TeX (``a$\\frac$``)."""
    return str(text).replace("$", r"\$")


def score_histograms(
    table,
    metrics=("dice", "hd95"),
    *,
    bins: int = 10,
    skip_empty_references: bool = True,
) -> Figure:
    """Histograms of per-patient scores, one row per metric and one column per class.

    Overlap scores bounded by [0, 1] (Dice, IoU, precision, recall, specificity, accuracy)
    share ``bins`` equal bins over [0, 1], so histograms of two tables compare; others
    (HD95 and the distances, in mm) span their values. Left out, and counted in the axes
    title: ``nan`` scores, ``inf`` distances (an empty prediction), and with
    ``skip_empty_references`` the patients whose reference lacks the class (flagged
    ``reference_empty``: their Dice of 1.0 or 0.0 measures no segmentation).

    Args:
        table: a :class:`kseg.evaluation.PatientTable`.
        metrics: metric names; each matches the column of that name or the per-class columns
            ``<metric>_<class>``.
        bins: number of bins.
        skip_empty_references: leave out patients flagged ``reference_empty`` for the class.

    Returns:
        A Figure with ``len(metrics)`` rows of axes, as many columns as the metric with the
        most classes; each axes titled ``"<metric> – <class> (n = ...)"``.

    Raises:
        ValueError: ``table`` is not a PatientTable or is empty, a metric has no column,
            ``bins`` is not a positive integer.

    Example:
        >>> from kseg.evaluation import PatientTable
        >>> table = PatientTable([{"patient_id": "1", "dice": 0.91, "hd95": 4.2},
        ...                       {"patient_id": "2", "dice": 0.84, "hd95": 7.9},
        ...                       {"patient_id": "3", "dice": 0.0, "hd95": float("inf")}])
        >>> figure = score_histograms(table, ("dice", "hd95"))
        >>> [ax.get_title() for ax in figure.axes]
        ['dice (n = 3)', 'hd95 (n = 2)\\n(1 inf left out)']
    """
    metrics = _checked_table(table, metrics)
    if isinstance(bins, bool) or not isinstance(bins, (int, np.integer)) or bins < 1:
        raise ValueError(f"bins must be a positive integer, got {bins!r}")
    layout = [(metric, _class_columns(table, metric)) for metric in metrics]
    columns = max(len(classes) for _, classes in layout)
    figure = _new_figure(3.4 * columns + 0.4, 2.8 * len(layout) + 0.3)
    axes = figure.subplots(len(layout), columns, squeeze=False)
    for row, (metric, classes) in zip(axes, layout, strict=True):
        for ax in row[len(classes) :]:
            figure.delaxes(ax)
        for ax, (class_name, column) in zip(row, classes, strict=False):
            values, left_out = _scored_values(table, class_name, column, skip_empty_references)
            bounded = metric in _UNIT_INTERVAL_METRICS
            edges = np.histogram_bin_edges(values, bins, range=(0.0, 1.0) if bounded else None)
            ax.hist(values, bins=edges, color="#4c72b0", edgecolor="white")
            shown = f"{_class_label(metric, class_name)} (n = {values.size})"
            ax.set_title(shown + _left_out(left_out, before="\n"), fontsize="medium")
            ax.set_xlabel(_with_unit(metric))
            ax.set_ylabel("patients")
    return figure


def score_boxplots(
    table,
    metrics=("dice", "hd95"),
    *,
    skip_empty_references: bool = True,
) -> Figure:
    """Box plots of per-patient scores, one axes per metric and one box per class.

    Boxes span the quartiles with the median inside, whiskers reach the furthest patient
    within 1.5 interquartile ranges (matplotlib's default); every patient is drawn as a
    point beside its box, so small cohorts are not hidden behind five numbers. Scores are
    left out as in :func:`score_histograms`, and counted under the class name.

    Args:
        table: a :class:`kseg.evaluation.PatientTable`.
        metrics: metric names, matched to columns as in :func:`score_histograms`.
        skip_empty_references: leave out patients flagged ``reference_empty`` for the class.

    Returns:
        A Figure with one axes per metric; the box lines carry gids ``"median <column>"``,
        ``"box <column>"``, the points ``"patients <column>"``.

    Raises:
        ValueError: ``table`` is not a PatientTable or is empty, a metric has no column.

    Example:
        >>> from kseg.evaluation import PatientTable
        >>> table = PatientTable([{"patient_id": "1", "dice": 0.91, "hd95": 4.2},
        ...                       {"patient_id": "2", "dice": 0.84, "hd95": 7.9},
        ...                       {"patient_id": "3", "dice": 0.0, "hd95": float("inf")}])
        >>> figure = score_boxplots(table, ("dice", "hd95"))
        >>> [label.get_text() for ax in figure.axes for label in ax.get_xticklabels()]
        ['dice\\nn = 3', 'hd95\\nn = 2 (1 inf left out)']
    """
    metrics = _checked_table(table, metrics)
    layout = [(metric, _class_columns(table, metric)) for metric in metrics]
    figure = _new_figure(max(4.0, 1.6 * max(len(c) for _, c in layout) + 1.5) * len(layout), 4)
    axes = figure.subplots(1, len(layout), squeeze=False)[0]
    for ax, (metric, classes) in zip(axes, layout, strict=True):
        tick_labels = []
        for position, (class_name, column) in enumerate(classes, start=1):
            values, left_out = _scored_values(table, class_name, column, skip_empty_references)
            name = _plain(class_name or metric)
            tick_labels.append(f"{name}\nn = {values.size}{_left_out(left_out)}")
            if not values.size:
                continue
            parts = ax.boxplot(values, positions=[position], widths=0.5, showfliers=False)
            parts["medians"][0].set_gid(f"median {column}")
            parts["boxes"][0].set_gid(f"box {column}")
            # Spread the points evenly beside the box: a fixed layout, no random jitter.
            offsets = np.linspace(-0.15, 0.15, values.size) if values.size > 1 else [0.0]
            points = ax.scatter(
                position + 0.4 + np.asarray(offsets), values, s=12, alpha=0.7, color="#4c72b0"
            )
            points.set_gid(f"patients {column}")
        ax.set_xticks(range(1, len(classes) + 1), tick_labels, fontsize="small")
        ax.set_xlim(0.4, len(classes) + 0.8)
        ax.set_ylabel(_with_unit(metric))
        ax.set_title(_plain(metric))
        ax.grid(axis="y", alpha=0.3)
    return figure


# --------------------------------------------------------------------------- overlap scores


def _binary_pair(name: str, case, key) -> tuple[np.ndarray, np.ndarray]:
    try:
        reference, prediction = case
    except (TypeError, ValueError) as error:
        raise ValueError(f"{name}: case {key!r} must be a (reference, prediction) pair") from error
    reference = np.asarray(reference)
    truth = _label_map(f"{name}[{key!r}] reference", reference, reference.shape, binary=True)
    predicted = _label_map(f"{name}[{key!r}] prediction", prediction, reference.shape, binary=True)
    return truth.astype(bool), predicted.astype(bool)


def _dice(truth: np.ndarray, predicted: np.ndarray) -> float:
    """Dice, ``nan`` when both masks are empty (no segmentation to score)."""
    denominator = int(truth.sum()) + int(predicted.sum())
    return 2.0 * int(np.sum(truth & predicted)) / denominator if denominator else math.nan


def accuracy_vs_dice(cases, *, title: str | None = None) -> Figure:
    """Per-case pixel accuracy against Dice: why accuracy misleads on small structures.

    Accuracy counts every correct background pixel, so a structure covering 0.1 % of the
    image scores 99.9 % accuracy with an empty prediction, while its Dice is 0. Each case
    is a point at ``(Dice, accuracy)`` coloured by the reference's foreground fraction on a
    log scale; the dotted diagonal marks accuracy = Dice. Points of small structures sit
    at the top whatever their Dice. Cases whose reference is empty are left out (they have
    no structure to find) and counted in the title.

    Args:
        cases: a mapping ``{case name: (reference, prediction)}`` or an iterable of
            ``(reference, prediction)`` pairs of binary masks (bool or 0/1; any number of
            dimensions, the two of a pair of one shape). For a label map pass
            ``(labels == k, predicted == k)``. Each pair is reduced to its scores before
            the next is read, so a generator that loads one case at a time keeps memory
            to one case.
        title: axes title; default says how many cases are shown.

    Returns:
        A Figure with the scatter axes and a colour bar axes (``foreground fraction``).

    Raises:
        ValueError: ``cases`` is empty, not pairs, masks of different shapes or not binary,
            or every reference is empty.

    Example:
        >>> truth = np.zeros((64, 64), bool)
        >>> truth[30:34, 30:34] = True  # 16 of 4096 pixels
        >>> figure = accuracy_vs_dice({"missed": (truth, np.zeros_like(truth)),
        ...                            "found": (truth, truth)})
        >>> figure.axes[0].get_title()
        'accuracy vs Dice, 2 cases'
        >>> [points] = [c for c in figure.axes[0].collections if c.get_gid() == "cases"]
        >>> points.get_offsets().tolist()  # (Dice, accuracy): the miss is 99.6 % accurate
        [[0.0, 0.99609375], [1.0, 1.0]]
    """
    # One pair at a time, reduced to three numbers: a generator that loads each case when
    # asked never holds more than one case's masks.
    items = cases.items() if isinstance(cases, Mapping) else enumerate(cases)
    scores = []
    skipped = 0
    for key, case in items:
        truth, predicted = _binary_pair("cases", case, key)
        if not truth.any():
            skipped += 1
            continue
        accuracy = float(np.mean(truth == predicted))
        scores.append((_dice(truth, predicted), accuracy, float(truth.mean())))
    if not scores and not skipped:
        raise ValueError("cases is empty; give (reference, prediction) pairs")
    if not scores:
        raise ValueError(f"cases: all {skipped} references are empty; nothing to score")
    dice, accuracy, fraction = (np.array(column) for column in zip(*scores, strict=True))

    figure = _new_figure(6.2, 5)
    ax = figure.add_subplot()
    ax.plot([0, 1], [0, 1], ":", color="grey", linewidth=1, label="accuracy = Dice")
    low, high = fraction.min(), fraction.max()
    norm = matplotlib.colors.LogNorm(vmin=low, vmax=high if high > low else low * 10)
    points = ax.scatter(dice, accuracy, c=fraction, norm=norm, cmap="viridis", s=36,
                        edgecolors="black", linewidths=0.4)  # fmt: skip
    points.set_gid("cases")
    figure.colorbar(points, ax=ax, label="foreground fraction (reference)")
    ax.set_xlim(-0.02, 1.02)
    ax.set_ylim(min(0.0, float(accuracy.min())) - 0.02, 1.02)
    ax.set_xlabel("Dice")
    ax.set_ylabel("pixel accuracy")
    ax.legend(loc="lower right", fontsize="small")
    ax.grid(alpha=0.3)
    shown = f"{len(scores)} cases"
    if skipped:
        shown += f" ({skipped} with an empty reference left out)"
    ax.set_title(title or f"accuracy vs Dice, {shown}")
    return figure


def per_slice_dice(reference, prediction, *, axis: int = 0) -> np.ndarray:
    """Dice of each slice of a binary volume, ``nan`` where a slice holds neither mask.

    The input of :func:`slice_dice_heatmap`: a slice where reference and prediction are
    both empty has no segmentation to score, and ``nan`` keeps it apart from a miss (0).

    Args:
        reference: binary volume (bool or 0/1), e.g. ``(z, y, x)``.
        prediction: binary volume of the same shape.
        axis: the slice axis.

    Returns:
        float64 array with one Dice per slice along ``axis``.

    Raises:
        ValueError: the masks differ in shape, are not binary, or ``axis`` is out of range.

    Example:
        >>> per_slice_dice(np.array([[1, 1], [0, 0]]), np.array([[1, 0], [0, 0]]))
        array([0.66666667,        nan])
    """
    reference = np.asarray(reference)
    truth = _label_map("reference", reference, reference.shape, binary=True).astype(bool)
    predicted = _label_map("prediction", prediction, reference.shape, binary=True).astype(bool)
    if not -truth.ndim <= axis < truth.ndim:
        raise ValueError(f"axis {axis} is out of range for {truth.ndim} dimensions")
    truth, predicted = np.moveaxis(truth, axis, 0), np.moveaxis(predicted, axis, 0)
    return np.array([_dice(t, p) for t, p in zip(truth, predicted, strict=True)])


def _position_bins(scores: np.ndarray, positions: int) -> np.ndarray:
    """Mean score over the slices overlapping each of ``positions`` equal position bins.

    Slice ``s`` of ``n`` covers ``[s / n, (s + 1) / n)``, bin ``b`` covers
    ``[b / B, (b + 1) / B)``; compared in integers, so equal counts map slice to bin one to
    one. A bin whose slices are all ``nan`` stays ``nan``.
    """
    n = scores.size
    slices, bins = np.arange(n), np.arange(positions)[:, None]
    # (positions, n): 1 where slice s overlaps bin b; one product per patient, not a loop
    overlap = ((slices * positions < (bins + 1) * n) & ((slices + 1) * positions > bins * n))
    scored = ~np.isnan(scores)
    counts = overlap @ scored.astype(np.float64)
    sums = overlap.astype(np.float64) @ np.where(scored, scores, 0.0)
    cells = np.full(positions, math.nan)
    np.divide(sums, counts, out=cells, where=counts > 0)
    return cells


def slice_dice_heatmap(
    per_slice_scores, *, positions: int | None = None, max_rows: int = HEATMAP_MAX_ROWS
) -> Figure:
    """Per-slice Dice of several patients: rows are patients, columns slice positions.

    Patients have different slice counts, so each row is resampled to ``positions``
    columns over the normalised slice position 0 (first slice, left) to 1 (last slice):
    a cell is the mean Dice of the slices overlapping it. Colours follow ``viridis`` from
    Dice 0 (dark purple) to 1 (yellow); cells whose slices hold neither a reference nor a
    prediction (``nan`` from :func:`per_slice_dice`) are :data:`NO_SCORE_COLOR` (light
    grey). Misses at the ends of an organ, where slices hold little of it, show as dark
    columns at the edges of the grey-free span.

    Args:
        per_slice_scores: a mapping ``{patient id: per-slice Dice}``, each a 1D array of
            values in [0, 1] or ``nan``.
        positions: number of columns; default the largest slice count, at most 100.
        max_rows: most rows drawn. A larger cohort (one row per patient would make a
            figure too tall to render past a few thousand patients) is drawn in
            ``max_rows`` rows of consecutive patients, each cell the LOWEST Dice of its
            row's patients at that position, so a failed case still shows; the title and
            the row labels (``first … last`` patient) say so.

    Returns:
        A Figure with the heatmap axes (one tick per row, labelled with its patient id,
        or its first and last patients' ids) and a colour bar axes (``Dice``).

    Raises:
        ValueError: ``per_slice_scores`` is empty or not a mapping, a patient's scores are
            not a non-empty 1D array in [0, 1] or ``nan``, ``positions`` or ``max_rows``
            < 1.

    Example:
        >>> liver = np.zeros((4, 8, 8), bool)
        >>> liver[1:3, 2:6, 2:6] = True
        >>> scores = {"p1": per_slice_dice(liver, liver),
        ...           "p2": per_slice_dice(liver, np.roll(liver, 2, axis=2))}
        >>> scores["p2"]
        array([nan, 0.5, 0.5, nan])
        >>> figure = slice_dice_heatmap(scores)
        >>> [label.get_text() for label in figure.axes[0].get_yticklabels()], len(figure.axes)
        (['p1', 'p2'], 2)
    """
    if not isinstance(per_slice_scores, Mapping) or not per_slice_scores:
        raise ValueError("per_slice_scores must be a non-empty {patient id: scores} mapping")
    rows = {}
    for patient, scores in per_slice_scores.items():
        scores = np.asarray(scores, dtype=np.float64)
        if scores.ndim != 1 or scores.size == 0:
            raise ValueError(
                f"per_slice_scores[{patient!r}] must be a non-empty 1D array, got shape "
                f"{scores.shape}"
            )
        scored = scores[~np.isnan(scores)]
        if np.any((scored < 0) | (scored > 1)):
            raise ValueError(f"per_slice_scores[{patient!r}] holds Dice values outside [0, 1]")
        rows[str(patient)] = scores
    if positions is None:
        positions = min(max(scores.size for scores in rows.values()), 100)
    if isinstance(positions, bool) or not isinstance(positions, (int, np.integer)) or positions < 1:
        raise ValueError(f"positions must be a positive integer, got {positions!r}")
    if isinstance(max_rows, bool) or not isinstance(max_rows, (int, np.integer)) or max_rows < 1:
        raise ValueError(f"max_rows must be a positive integer, got {max_rows!r}")
    matrix = np.stack([_position_bins(scores, positions) for scores in rows.values()])
    names = [_plain(patient) for patient in rows]
    title = "per-slice Dice (grey: no reference and no prediction)"
    if len(names) > max_rows:
        # consecutive patients share a row; its cell is their lowest Dice (nan: none scored)
        starts = np.arange(max_rows) * len(names) // max_rows
        ends = np.append(starts[1:], len(names))
        grouped = np.full((max_rows, positions), math.nan)
        for row, (start, end) in enumerate(zip(starts, ends, strict=True)):
            block = matrix[start:end]
            scored = ~np.all(np.isnan(block), axis=0)
            grouped[row, scored] = np.nanmin(block[:, scored], axis=0)
        fewest, most = len(names) // max_rows, -(-len(names) // max_rows)
        per_row = str(fewest) if fewest == most else f"{fewest}-{most}"
        title = (
            f"per-slice Dice of {len(names)} patients in {max_rows} rows of {per_row}\n"
            "consecutive patients, each cell their lowest Dice\n(grey: no reference and no "
            "prediction)"
        )
        names = [
            names[start] if end - start == 1 else f"{names[start]} … {names[end - 1]}"
            for start, end in zip(starts, ends, strict=True)
        ]
        matrix = grouped

    figure = _new_figure(8, 1.2 + 0.3 * len(names))
    ax = figure.add_subplot()
    colormap = matplotlib.colormaps["viridis"].with_extremes(bad=NO_SCORE_COLOR)
    heatmap = ax.imshow(
        np.ma.masked_invalid(matrix), cmap=colormap, vmin=0.0, vmax=1.0, aspect="auto",
        interpolation="nearest", extent=(0.0, 1.0, len(names) - 0.5, -0.5),
    )  # fmt: skip
    figure.colorbar(heatmap, ax=ax, label="Dice")
    ax.set_yticks(range(len(names)), names)
    ax.set_xlabel("normalised slice position (0 = first slice)")
    ax.set_ylabel("patient")
    ax.set_title(title)
    return figure


# --------------------------------------------------------------------------- uncertainty


def uncertainty_map(
    image,
    uncertainty,
    *,
    reference=None,
    window=None,
    vmax: float | None = None,
    cmap: str = "magma",
    linewidth: float = 1.5,
    spacing=None,
) -> Figure:
    """A slice beside its voxel-wise uncertainty, both outlined with the reference.

    The left axes shows the image in grey, the right one the uncertainty (e.g. the
    predictive entropy or mutual information of :func:`kseg.inference.mc_dropout`) in
    ``cmap`` from 0 (or the smallest value, if negative) to ``vmax``, with a colour bar.
    The reference outline (:data:`REFERENCE_COLOR`) on both shows whether the uncertain
    pixels lie on the organ's border, where annotators disagree too, or away from it.

    Args:
        image: 2D array ``(rows, columns)``.
        uncertainty: 2D finite array of the image's shape.
        reference: optional mask or label map of the image's shape.
        window: ``(low, high)`` grey window of the image; default its minimum and maximum.
        vmax: uncertainty shown in the brightest colour; default the largest value.
        cmap: matplotlib colormap name of the uncertainty.
        linewidth: outline width in points.
        spacing: pixel size ``(row, column)`` in mm, drawn with that aspect (see
            :func:`overlay`); default square pixels.

    Returns:
        A Figure with the image axes, the uncertainty axes and the colour bar axes.

    Raises:
        ValueError: ``image`` / ``uncertainty`` not 2D, of different shapes or not finite,
            a malformed ``reference``, ``vmax`` not above the lower end, a bad ``spacing``.

    Example:
        >>> import numpy as np
        >>> image = np.linspace(0.0, 1.0, 32 * 32).reshape(32, 32)
        >>> uncertainty = np.zeros((32, 32))
        >>> uncertainty[8:24, 8:24] = 0.4
        >>> figure = uncertainty_map(image, uncertainty, reference=uncertainty > 0)
        >>> len(figure.axes)  # image, uncertainty, colour bar
        3

        With a model, the predictive entropy of :func:`kseg.inference.mc_dropout`:

        >>> import keras
        >>> from kseg.inference import mc_dropout
        >>> model = keras.Sequential([keras.Input((32, 32, 1)), keras.layers.Dropout(0.5),
        ...                           keras.layers.Activation("sigmoid")])  # a U-Net's place
        >>> ct_slice = image[..., None]
        >>> result = mc_dropout(model, ct_slice[None], samples=20)
        >>> figure = uncertainty_map(ct_slice[..., 0], result.predictive_entropy[0])
        >>> figure.axes[1].images[0].get_array().shape
        (32, 32)
    """
    image = _image_2d("image", image)
    uncertainty = _image_2d("uncertainty", uncertainty)
    if uncertainty.shape != image.shape:
        raise ValueError(f"uncertainty has shape {uncertainty.shape}, the image {image.shape}")
    reference = None if reference is None else _label_map("reference", reference, image.shape)
    low = min(0.0, float(uncertainty.min()))
    high = float(uncertainty.max()) if vmax is None else float(vmax)
    if high <= low:
        if vmax is not None:
            raise ValueError(f"vmax must be above {low}, got {vmax}")
        high = low + 1.0  # all-zero uncertainty: show it as the lowest colour
    aspect = _pixel_aspect(spacing)
    figure = _new_figure(11, 5)
    image_ax, uncertainty_ax = figure.subplots(1, 2)
    _show_grey(image_ax, image, window, aspect=aspect)
    shown = uncertainty_ax.imshow(
        uncertainty, cmap=cmap, vmin=low, vmax=high, interpolation="nearest", aspect=aspect
    )
    figure.colorbar(shown, ax=uncertainty_ax, label="uncertainty")
    for ax, title in ((image_ax, "image"), (uncertainty_ax, "uncertainty")):
        if reference is not None:
            _outline(ax, reference, REFERENCE_COLOR, linewidth)
        ax.set_title(title)
        ax.set_axis_off()
    if reference is not None:
        image_ax.legend(
            handles=[_legend_line(REFERENCE_COLOR, "reference")], loc="upper right",
            fontsize="small",
        )  # fmt: skip
    return figure


# --------------------------------------------------------------------------- viewer layers


def grey_levels(image, window=None) -> np.ndarray:
    """A slice as 8-bit grey levels: ``window`` low to black (0), high to white (255).

    The pixels an HTML slice viewer (:mod:`kseg.report`) stacks the mask layers of
    :func:`label_layer` on. Values outside the window are clipped; the window defaults to
    the image's minimum and maximum, and a constant image is mid-grey, as in
    :func:`overlay`. Levels are rounded to the nearest of the 256.

    Args:
        image: 2D array ``(rows, columns)``.
        window: ``(low, high)`` intensities shown as black and white.

    Returns:
        uint8 array of the image's shape.

    Raises:
        ValueError: a non-2D, empty or non-finite image, a bad ``window``.

    Example:
        >>> grey_levels(np.array([[0.0, 0.5, 1.0]]), window=(0, 1))
        array([[  0, 128, 255]], dtype=uint8)
    """
    image = _image_2d("image", image)
    low, high = _window(image, window)
    scaled = np.clip((image - low) / (high - low), 0.0, 1.0)
    return np.round(scaled * 255).astype(np.uint8)


def label_layer(labels, color, *, fill_alpha: float = 0.35) -> np.ndarray:
    """An RGBA layer painting a mask in ``color``: its border opaque, its inside see-through.

    A pixel of a non-zero label is a border pixel when one of its four neighbours holds
    another label or lies outside the image (so a mask touching the edge is closed); border
    pixels get opacity 1, the other labelled pixels ``fill_alpha``, background pixels 0.
    Laid over :func:`grey_levels` in a browser the outline stays readable at any fill
    opacity, and a label map's labels are told apart by the borders between them.

    Args:
        labels: 2D binary mask or integer label map (0 = background).
        color: RGB triple in [0, 1], e.g. :data:`REFERENCE_COLOR`.
        fill_alpha: opacity of the inside, in [0, 1].

    Returns:
        uint8 array ``(rows, columns, 4)``: RGB of ``color`` wherever a label is, alpha
        255 on the border, ``round(255 * fill_alpha)`` inside, 0 elsewhere (RGB 0 there).

    Raises:
        ValueError: ``labels`` is not 2D or holds negative / fractional labels, ``color``
            is not three numbers in [0, 1], ``fill_alpha`` is outside [0, 1].

    Example:
        >>> layer = label_layer(np.pad(np.ones((3, 3)), 1), REFERENCE_COLOR)
        >>> layer[..., 3]
        array([[  0,   0,   0,   0,   0],
               [  0, 255, 255, 255,   0],
               [  0, 255,  89, 255,   0],
               [  0, 255, 255, 255,   0],
               [  0,   0,   0,   0,   0]], dtype=uint8)
    """
    array = np.asarray(labels)
    if array.ndim != 2:
        raise ValueError(f"labels must be a 2D array (rows, columns), got shape {array.shape}")
    labels = _label_map("labels", array, array.shape)
    fill_alpha = _check_alpha(fill_alpha)
    try:
        rgb = np.array([float(value) for value in color])
    except (TypeError, ValueError) as error:
        raise ValueError(f"color must be an RGB triple in [0, 1], got {color!r}") from error
    if rgb.shape != (3,) or not np.all((rgb >= 0) & (rgb <= 1)):
        raise ValueError(f"color must be an RGB triple in [0, 1], got {color!r}")
    # -1 around the image: no label equals it, so pixels on the edge are border pixels.
    padded = np.pad(labels, 1, constant_values=-1)
    centre = padded[1:-1, 1:-1]
    border = np.zeros(labels.shape, dtype=bool)
    for neighbour in (padded[:-2, 1:-1], padded[2:, 1:-1], padded[1:-1, :-2], padded[1:-1, 2:]):
        border |= neighbour != centre
    inside = labels > 0
    layer = np.zeros((*labels.shape, 4), dtype=np.uint8)
    layer[inside, :3] = np.round(rgb * 255).astype(np.uint8)
    layer[inside, 3] = round(255 * fill_alpha)
    layer[inside & border, 3] = 255
    return layer


def png_bytes(picture, *, dpi: float = 80) -> bytes:
    """A figure or an 8-bit image as PNG file content, for a data URI or a file.

    Args:
        picture: a :class:`matplotlib.figure.Figure` (rendered at ``dpi``), or a uint8 array
            ``(rows, columns)`` (grey), ``(rows, columns, 3)`` (RGB) or
            ``(rows, columns, 4)`` (RGBA) written pixel for pixel.
        dpi: dots per inch of a figure; ignored for arrays.

    Returns:
        The bytes of a PNG file.

    Raises:
        ValueError: an array that is not uint8 or not of one of the three shapes, or a
            picture of another type.

    Example:
        >>> png_bytes(np.zeros((2, 2), dtype=np.uint8))[:8]
        b'\\x89PNG\\r\\n\\x1a\\n'
    """
    buffer = io.BytesIO()
    if isinstance(picture, Figure):
        picture.savefig(buffer, format="png", dpi=dpi)
        return buffer.getvalue()
    if not isinstance(picture, np.ndarray):
        raise ValueError(
            f"picture must be a matplotlib Figure or a uint8 array, got {type(picture).__name__}"
        )
    if picture.dtype != np.uint8:
        raise ValueError(f"picture must be a uint8 array, got dtype {picture.dtype}")
    grey = picture.ndim == 2
    colour = picture.ndim == 3 and picture.shape[-1] in (3, 4)
    if not (grey or colour) or picture.size == 0:
        raise ValueError(
            "picture must be (rows, columns), (rows, columns, 3) or (rows, columns, 4), got "
            f"shape {picture.shape}"
        )
    # Pillow reads the mode from the shape: L, RGB or RGBA.
    PIL.Image.fromarray(np.ascontiguousarray(picture)).save(buffer, format="PNG")
    return buffer.getvalue()
