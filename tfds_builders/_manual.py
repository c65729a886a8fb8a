"""The manual download folder every builder reads, checked before TFDS' own assertion."""

from __future__ import annotations

from etils import epath

from kseg.errors import LayoutError

__all__ = ["manual_folder", "nested_one_level_hint"]


def manual_folder(dl_manager, instructions: str) -> epath.Path:
    """``dl_manager.manual_dir``, or a LayoutError naming it when it is not a usable folder.

    TFDS answers a missing or empty manual folder with a bare ``AssertionError`` and a file
    given as the folder with ``NotADirectoryError``; kseg's errors name the folder and what
    it should hold.

    Args:
        dl_manager: the ``tfds.download.DownloadManager`` passed to ``_split_generators``.
        instructions: the builder's ``MANUAL_DOWNLOAD_INSTRUCTIONS``.

    Raises:
        LayoutError: the folder does not exist, is a file, or is empty.
    """
    folder = getattr(dl_manager, "_manual_dir", None)
    if folder is not None and epath.Path(folder).exists() and not epath.Path(folder).is_dir():
        raise LayoutError(
            folder, f"is a file; expected the manual download folder:\n{instructions}"
        )
    try:
        return epath.Path(dl_manager.manual_dir)
    except AssertionError as exc:
        raise LayoutError(
            folder,
            f"the manual download folder does not exist or is empty ({exc.args[0].split('.')[0]})"
            f"; expected:\n{instructions}",
        ) from exc


def nested_one_level_hint(manual_dir, expected: str) -> str:
    """The end of a LayoutError's message when ``expected`` (a path relative to the manual
    folder) is missing there but found one folder down: archives extract into a folder of
    their own (``NLM-MontgomeryCXRSet/MontgomerySet``), and pointing one level too high is
    the usual slip. Empty when it is not found there either."""
    manual_dir = epath.Path(manual_dir)
    if not manual_dir.is_dir():
        return ""
    found = sorted(
        child for child in manual_dir.iterdir()
        if child.is_dir() and not child.name.startswith((".", "__MACOSX"))
        and (child / expected).exists()
    )  # fmt: skip
    if not found:
        return ""
    return f"\n(found {found[0] / expected}: point the manual folder at {found[0]})"
