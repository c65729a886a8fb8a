"""The MSD Task09 download: its folder layout and the cases its dataset.json lists (see
``README.md`` beside this file)."""

from __future__ import annotations

import dataclasses
import json

from etils import epath

from kseg.errors import LayoutError, UnreadableFileError
from kseg.io._pointer_files import pointer_note
from tfds_builders._manual import nested_one_level_hint

TASK_FOLDER = "Task09_Spleen"
_NIFTI_SUFFIX = ".nii.gz"
# macOS writes "._<name>" AppleDouble companions into tar archives; the real Task09 tar
# carries one beside every volume. They are not NIfTI and are never cases.
_APPLE_DOUBLE_PREFIX = "._"

EXPECTED_LAYOUT = """\
<manual_dir>/Task09_Spleen/dataset.json
<manual_dir>/Task09_Spleen/imagesTr/spleen_<n>.nii.gz   (41 CT volumes)
<manual_dir>/Task09_Spleen/labelsTr/spleen_<n>.nii.gz   (their labels, 1 = spleen)
<manual_dir>/Task09_Spleen/imagesTs/spleen_<n>.nii.gz   (20 CT volumes, no labels)
(<manual_dir> may also be the Task09_Spleen folder itself)"""


@dataclasses.dataclass(frozen=True)
class Case:
    """One case: its image volume and, for a training case, its label volume."""

    patient_id: str
    image: epath.Path
    label: epath.Path | None


def task_folder(manual_dir) -> epath.Path:
    """The extracted ``Task09_Spleen`` folder: ``manual_dir/Task09_Spleen``, or
    ``manual_dir`` itself when it holds ``dataset.json``.

    Args:
        manual_dir: the folder the archive was extracted into (or the task folder).

    Raises:
        LayoutError: neither holds a ``dataset.json``.
    """
    manual_dir = epath.Path(manual_dir)
    for candidate in (manual_dir / TASK_FOLDER, manual_dir):
        if (candidate / "dataset.json").is_file():
            return candidate
    raise LayoutError(
        manual_dir / TASK_FOLDER,
        f"no dataset.json found; extract Task09_Spleen.tar so that:\n{EXPECTED_LAYOUT}"
        + nested_one_level_hint(manual_dir, f"{TASK_FOLDER}/dataset.json"),
    )


def _relative_file(task_dir: epath.Path, entry, folder: str, dataset_json) -> epath.Path:
    """A dataset.json path such as ``./imagesTr/spleen_19.nii.gz``, checked and resolved."""
    if not isinstance(entry, str):
        raise LayoutError(dataset_json, f"expected a file path string, got {entry!r}")
    path = epath.Path(entry)
    if path.parent.name != folder or not path.name.endswith(_NIFTI_SUFFIX):
        raise LayoutError(dataset_json, f"expected ./{folder}/<case>{_NIFTI_SUFFIX}, got {entry!r}")
    resolved = task_dir / folder / path.name
    if not resolved.is_file():
        raise LayoutError(resolved, f"listed in {dataset_json} but missing{pointer_note(resolved)}"
                          "; expected:\n"
                          f"{EXPECTED_LAYOUT}")
    return resolved


def cases_from_dataset_json(task_dir: epath.Path) -> tuple[list[Case], list[Case]]:
    """Labelled and unlabelled cases as dataset.json lists them, cross-checked against the
    folders: a volume on disk that dataset.json does not list is an error, not a silent
    omission; AppleDouble ``._*`` files are not volumes."""
    dataset_json = task_dir / "dataset.json"
    try:
        # The bytes go to json, which takes UTF-8 with or without a byte order mark (Windows
        # Notepad, PowerShell 5's Out-File -Encoding utf8; RFC 8259 lets a reader ignore
        # it) and UTF-16 / UTF-32 by their BOM or zero bytes (PowerShell 5's "> dataset.json"
        # and Notepad's "Unicode" write UTF-16 LE). (epath's read_text ignores its encoding.)
        listing = json.loads(dataset_json.read_bytes())
        # "test": null (json.dump of None) means no test cases, as a missing key does
        training, test = listing["training"], listing.get("test") or []
        if not isinstance(training, list) or not isinstance(test, list):
            raise TypeError(
                f"'training' and 'test' must be lists, got {type(training).__name__} and "
                f"{type(test).__name__}"
            )
    except (ValueError, KeyError, TypeError) as exc:
        raise UnreadableFileError(
            dataset_json,
            f"expected the MSD dataset.json with a 'training' list ({exc!r})"
            + pointer_note(dataset_json),
        ) from exc
    labelled = []
    for entry in training:
        if not isinstance(entry, dict) or not {"image", "label"} <= set(entry):
            raise LayoutError(dataset_json, f"training entries need image and label: {entry!r}")
        image = _relative_file(task_dir, entry["image"], "imagesTr", dataset_json)
        label = _relative_file(task_dir, entry["label"], "labelsTr", dataset_json)
        if image.name != label.name:
            raise LayoutError(dataset_json, f"image and label names differ in {entry!r}")
        labelled.append(Case(image.name[: -len(_NIFTI_SUFFIX)], image, label))
    unlabelled = [
        Case(path.name[: -len(_NIFTI_SUFFIX)], path, None)
        for path in (_relative_file(task_dir, e, "imagesTs", dataset_json) for e in test)
    ]
    if not labelled:
        raise LayoutError(dataset_json, "lists no training cases")
    ids = [case.patient_id for case in labelled + unlabelled]
    if len(set(ids)) != len(ids):
        raise LayoutError(dataset_json, "lists a case more than once")
    for folder, cases in (("imagesTr", labelled), ("labelsTr", labelled), ("imagesTs", unlabelled)):
        # Suffixes compared in any case: a spleen_5.Nii.Gz copied in by a Windows tool is a
        # volume too, and must not be left out unnoticed.
        on_disk = {
            path.name
            for path in (task_dir / folder).iterdir()
            if path.name.lower().endswith(_NIFTI_SUFFIX)
            and not path.name.startswith(_APPLE_DOUBLE_PREFIX)
        } if (task_dir / folder).is_dir() else set()
        unlisted = sorted(on_disk - {f"{case.patient_id}{_NIFTI_SUFFIX}" for case in cases})
        if unlisted:
            raise LayoutError(
                task_dir / folder,
                f"holds volumes that {dataset_json.name} does not list: {unlisted}; "
                "add them to dataset.json or move them out",
            )
    return labelled, unlabelled
