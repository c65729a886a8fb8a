"""Placeholders that version control leaves where the data should be.

A repository cloned without its Git LFS objects (GitHub, Hugging Face and GitLab datasets)
holds a ~130-byte text pointer in place of every image, and a DataLad / git-annex dataset
whose content was not fetched holds ``/annex/objects/<key>`` pointers where it is unlocked,
and links into ``.git/annex/objects`` that lead nowhere where it is locked (the default).
Read as an image, a volume or a DICOM file they gave "cannot identify image file", "not
DICOM" or "not a gzip file": true, but silent on the cause and the cure.

Reference:
    Git LFS specification, "pointer file" (https://github.com/git-lfs/git-lfs/blob/main/docs/
    spec.md); git-annex, "unlocked files" (https://git-annex.branchable.com/tips/unlocked_files/).
"""

from __future__ import annotations

import os

__all__ = ["pointer_note"]

_GIT_LFS = b"version https://git-lfs.github.com/spec/v1"
_GIT_ANNEX = b"/annex/objects/"
# Pointers are one or a few lines; a data file is never read past this by the check.
_POINTER_BYTES = 1024


def pointer_note(path: os.PathLike | str) -> str:
    """``"; it is a Git LFS pointer ..."`` when the file at ``path`` is such a placeholder
    (to end an error message with), else ``""``.

    Example:
        >>> import tempfile
        >>> path = os.path.join(tempfile.mkdtemp(), "case_01.nii.gz")
        >>> with open(path, "w") as handle:
        ...     _ = handle.write("version https://git-lfs.github.com/spec/v1\\n"
        ...                      "oid sha256:4d7a\\nsize 734003\\n")
        >>> pointer_note(path).split(":")[0]
        '; it is a Git LFS pointer file, not the data'
    """
    if os.path.islink(path) and not os.path.exists(path):
        # git-annex's locked files (DataLad's default) link into .git/annex/objects; the
        # link dangles until the content is fetched
        if "annex/objects/" in os.readlink(path).replace(os.sep, "/"):
            return (
                "; it is a git-annex link whose content was not fetched (run `datalad get` "
                "or `git annex get` on it)"
            )
        return ""
    try:
        if os.path.getsize(path) > _POINTER_BYTES:
            return ""
        with open(path, "rb") as handle:
            head = handle.read(_POINTER_BYTES)
    except OSError:
        return ""
    if head.startswith(_GIT_LFS):
        return (
            "; it is a Git LFS pointer file, not the data: the repository was cloned without "
            "its LFS objects (run `git lfs pull` in it)"
        )
    if head.startswith(_GIT_ANNEX):
        return (
            "; it is a git-annex pointer file, not the data: the dataset's content was not "
            "fetched (run `datalad get` or `git annex get` on it)"
        )
    return ""
