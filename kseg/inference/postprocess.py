"""Post-processing of predicted label maps.

A single organ (liver, spleen, each lung) is one connected object; scattered false positives
far from it cost little Dice but dominate surface distances (HD95). nnU-Net keeps only the
largest connected component of a class when that improves validation scores; this module
holds the operation, :func:`kseg.evaluation.choose_postprocessing` makes the decision on
validation predictions.
"""

from __future__ import annotations

import numbers
from collections.abc import Iterable

import numpy as np
from scipy import ndimage


def keep_largest_component(
    label_map: np.ndarray, labels: Iterable[int] | int | None = None, *, connectivity: int = 1
) -> np.ndarray:
    """Keep, per class, only its largest connected component; the rest becomes background.

    Args:
        label_map: integer label map (any number of spatial dims), 0 is background.
        labels: classes to clean, one label or several; ``None`` cleans every non-zero
            label present. Classes not listed are left untouched (e.g. the two lungs of a
            merged "lungs" class are two objects: do not list it).
        connectivity: neighbourhood of ``scipy.ndimage.generate_binary_structure``: 1 (faces),
            up to ``label_map.ndim`` (faces, edges and corners).

    Returns:
        A new label map of the same shape and dtype; the input is not modified.

    Example:
        >>> import numpy as np
        >>> prediction = np.array([[1, 1, 0, 0, 1],
        ...                        [1, 1, 0, 2, 2]])
        >>> keep_largest_component(prediction, labels=[1])  # label 2 is left as it is
        array([[1, 1, 0, 0, 0],
               [1, 1, 0, 2, 2]])

    Reference:
        Isensee F. et al., "nnU-Net: a self-configuring method for deep learning-based
        biomedical image segmentation", Nature Methods 18, 203-211 (2021) (post-processing).
    """
    label_map = np.asarray(label_map)
    if not np.issubdtype(label_map.dtype, np.integer) and label_map.dtype != np.bool_:
        raise ValueError(f"label_map must hold integer labels, got dtype {label_map.dtype}")
    if not 1 <= connectivity <= label_map.ndim:
        raise ValueError(f"connectivity must be in 1..{label_map.ndim}, got {connectivity!r}")
    if isinstance(labels, numbers.Integral) and not isinstance(labels, bool):
        labels = [labels]  # one label, as MONAI's applied_labels takes it
    elif labels is not None:
        given = labels
        if isinstance(labels, (str, bytes, bool)) or not isinstance(labels, Iterable):
            labels = [None]
        labels = list(labels)
        if not all(isinstance(v, numbers.Integral) and not isinstance(v, bool) for v in labels):
            raise ValueError(
                f"labels must be None, one integer label or integer labels, got {given!r}"
            )
    structure = ndimage.generate_binary_structure(label_map.ndim, connectivity)
    present = [int(v) for v in np.unique(label_map) if v != 0]
    wanted = present if labels is None else [int(v) for v in labels if int(v) in present]
    cleaned = label_map.copy()
    for label in wanted:
        components, count = ndimage.label(label_map == label, structure=structure)
        if count > 1:
            sizes = np.bincount(components.ravel())[1:]
            cleaned[(components > 0) & (components != 1 + int(np.argmax(sizes)))] = 0
    return cleaned
