"""De-identify DICOM files with the DICOM PS3.15 Basic Application Level Confidentiality Profile.

``deidentify(src, dst)`` reads every file under ``src``, applies the basic profile of PS3.15
Annex E to each DICOM file and writes the de-identified copy under ``dst``. Nothing under ``src``
is ever written to, and every output is written atomically (temporary file, then rename).

Where the table comes from
    ``BASIC_PROFILE_ACTIONS`` is DICOM PS3.15 **2026c** Table E.1-1, "Basic Prof." column (652
    attributes), read at import from the ``dicom-anonymizer`` package (KitwareMedical,
    BSD-3-Clause), which generates one module per edition from the standard's own Annex E page;
    kseg pins the edition (``kseg.io._ps315`` says how and how to move it). The table's
    repeating-group rows (Curve Data (50xx,xxxx), Overlay Data (60xx,3000), Overlay Comments
    (60xx,4000)) come from the same module; its "Private Attributes" row (odd groups, X) is a
    rule in ``_profile_action``. tests/test_ps315.py checks the table against rows copied by
    hand from the standard.

How each action code is carried out
    - X: the attribute is removed. Z: kept with a zero-length value. D: replaced with a dummy
      of its VR ("ANONYMIZED", date 19000101, time 000000, 0, or zero bytes).
    - U: every UID is replaced by a keyed hash of it, HMAC-SHA256(secret, UID), written as a
      ``2.25.<128-bit integer>`` UID (or appended to ``uid_root``). The same original UID gets
      the same new UID wherever it appears, so series grouping and every reference survive:
      Study/Series/SOP Instance and Frame of Reference UIDs, RTSTRUCT contour image references,
      DICOM-SEG referenced instances, and the file meta Media Storage SOP Instance UID. The same
      secret gives the same UIDs in a later run; with no secret a random one is drawn, so two
      runs cannot be linked.
    - Combined codes (X/Z, X/D, X/Z/D, Z/D, X/Z/U*) choose the weaker action only where the IOD
      of the file requires the attribute (Type 1 or 2). kseg has no IOD module tables, so it
      takes the branch that keeps a file conformant whatever the attribute's Type:
      X/Z -> Z, X/D, X/Z/D and Z/D -> D, X/Z/U* -> U. Every branch discards the original value,
      so the choice costs no confidentiality; it keeps, for instance, DICOM-SEG files valid,
      where Device Serial Number, Content Date and Content Time are Type 1.
    - Sequences: K keeps a sequence and applies the profile to its items; U (from X/Z/U*) does
      the same, which remaps the UIDs inside; Z and D leave the sequence with zero items, since
      no dummy item could be both conformant and surely free of identifying text (an empty
      sequence is no D, so an X/D sequence is removed, its X branch); X removes it. A D on a
      UI attribute is carried out as U.
    - Patient ID (Z/D) gets a keyed-hash pseudonym ``ANON-<16 hex digits>`` instead of a fixed
      dummy, so one patient's files stay grouped for patient-level splits. The mapping from
      original to pseudonym is written only where ``patient_map_path`` says.
    - Beyond the table, the File Meta elements that name the sending and receiving stations and
      the file meta private information are removed: they identify a station exactly as Station
      AE Title (0008,0055) does, which the table removes. SOP Instance UID of Concatenation
      Source (0020,0242), which the table does not list, is replaced (U) like the instance
      UIDs it stands beside, so references to the undivided image keep naming it. The
      128-byte preamble, which the profile does not cover and which can hold anything (a
      TIFF header naming the patient, an executable), is written as zeros (PS3.10 7.1).
    - Patient Identity Removed (0012,0062) is set to YES, De-identification Method (0012,0063)
      names the profile and any attribute kept through ``keep`` after the methods of earlier
      steps it already named, and De-identification Method Code Sequence (0012,0064) gets
      (113100, DCM, "Basic Application Confidentiality Profile").

What the basic profile does not do
    Its options are not implemented: text burned into pixels (Clean Pixel Data), descriptors
    (Clean Descriptors), dates, UIDs or device identity kept (the Retain options). A file whose
    Burned In Annotation or Recognizable Visual Features is YES is written, with a warning in
    the report. ``keep`` retains named attributes unchanged, for example ``keep=("ROIName",)``
    for the organ names of RTSTRUCT files, which the profile empties.

Files and layout
    Folders under ``src`` reached through a link are searched like any other (each real
    folder once, none inside ``dst``). Hidden folders (a DataLad / git-annex dataset's
    ``.git``, whose annexed objects are the files its links point at, a drive's
    ``.Trash-1000``) are not read; each is listed in the report's ``skipped``. Every file is
    first read as a DICOM Part 10 file. A file pydicom refuses that way (no 128-byte
    preamble, no File Meta Information, a raw dataset as some scanners and scripts write) is
    read again with ``force=True``; if that gives a dataset holding an attribute of the
    profile or of the Patient group (0010,xxxx), it is de-identified like any other and
    written as a Part 10 file (preamble and File Meta
    added). If the forced read gives no such
    dataset but the file's bytes still hold an encoded patient attribute (a Patient's Name
    element with a text value, say, in a damaged or shifted dataset), the file is refused: it
    is listed in ``failed`` and never copied. Only the remaining files are non-DICOM: they are
    reported and not copied, unless ``copy_non_dicom=True``: then they are copied unchanged to
    the same relative path, and neither their names nor their contents are de-identified (a
    PDF report or a spreadsheet can still name the patient). DICOMDIR files are never copied:
    their records name patients and point at the source layout; rebuild one from the output
    with ``pydicom.fileset.FileSet``. With ``layout="uids"`` (the default) outputs go to
    ``dst/<pseudonym>/<StudyInstanceUID>/<SeriesInstanceUID>/<SOPInstanceUID>.dcm``, all new
    values, so no source file or folder name (which often holds a patient name) reaches the
    output; ``layout="mirror"`` keeps the source relative paths, for datasets whose names carry
    no identity and whose layout a dataset builder expects.

Reference:
    DICOM PS3.15 2026c, Security and System Management Profiles, Annex E "Attribute
    Confidentiality Profiles", Tables E.1-1a and E.1-1. NEMA, 2026.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import hashlib
import hmac
import json
import os
import re
import secrets
import shutil
import struct
import warnings
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import pydicom
from pydicom.datadict import dictionary_VR, keyword_for_tag, tag_for_keyword
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.errors import InvalidDicomError
from pydicom.sequence import Sequence
from pydicom.tag import BaseTag
from pydicom.uid import (
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    MediaStorageDirectoryStorage,
    generate_uid,
)
from tqdm.auto import tqdm

from kseg._files import atomic_output
from kseg.errors import LayoutError
from kseg.io._ps315 import BASIC_PROFILE_EDITION, load_basic_profile

__all__ = [
    "BASIC_PROFILE_ACTIONS",
    "BASIC_PROFILE_EDITION",
    "DeidFileRecord",
    "DeidReport",
    "deidentify",
]

# DICOM PS3.15 Table E.1-1, basic profile column: tag -> action code, and its repeating-group
# rows (curves, overlays), read from the dicom-anonymizer package (see kseg.io._ps315).
BASIC_PROFILE_ACTIONS, _REPEATING_GROUP_RULES = load_basic_profile()

# The combined codes' branch that is conformant whatever the attribute's Type in the IOD.
_CONFORMANT_BRANCH = {"X/Z": "Z", "X/D": "D", "X/Z/D": "D", "Z/D": "D", "X/Z/U*": "U"}

# File Meta elements naming the sending/receiving station, and the file meta private block.
_FILE_META_REMOVALS = frozenset(
    {0x00020016, 0x00020017, 0x00020018, 0x00020026, 0x00020027, 0x00020028, 0x00020100, 0x00020102}
)

# SOP Instance UID of Concatenation Source: an instance UID the table leaves out. Kept, it
# would leak the original UID and stop matching the (replaced) references of a SEG or RTSTRUCT
# drawn on the image before it was split into a concatenation.
_CONCATENATION_SOURCE_UID = 0x00200242

_DUMMY_TEXT = {
    "AE": "ANONYMIZED", "AS": "000D", "CS": "ANONYMIZED", "DA": "19000101",
    "DT": "19000101000000", "LO": "ANONYMIZED", "LT": "ANONYMIZED", "PN": "ANONYMIZED",
    "SH": "ANONYMIZED", "ST": "ANONYMIZED", "TM": "000000", "UC": "ANONYMIZED",
    "UR": "ANONYMIZED", "UT": "ANONYMIZED",
}  # fmt: skip
_NUMBER_VRS = frozenset({"AT", "DS", "FD", "FL", "IS", "SL", "SS", "SV", "UL", "US", "UV"})
# Eight zero bytes: a whole number of values for every binary VR (OW 2, OF/OL 4, OD/OV 8 bytes).
_DUMMY_BYTES = b"\x00" * 8

_PATIENT_ID = 0x00100020
# PS3.10 7.1: a preamble no Application Profile uses is 128 zero bytes.
_ZERO_PREAMBLE = b"\x00" * 128
_DEID_METHOD_CODE = ("113100", "DCM", "Basic Application Confidentiality Profile")
_LAYOUTS = ("uids", "mirror")
# A uid_root longer than this leaves fewer than 24 hash digits: collisions become plausible.
_MAX_UID_ROOT = 40
_UNSAFE_PATH_CHARS = re.compile(r"[^A-Za-z0-9._-]")

# Reading files that are no Part 10 file (no preamble or File Meta).
_PATIENT_GROUP = 0x0010
_DIRECTORY_RECORD_SEQUENCE = 0x00041220
_TRANSFER_SYNTAXES = {
    (True, True): ImplicitVRLittleEndian,
    (False, True): ExplicitVRLittleEndian,
    (False, False): ExplicitVRBigEndian,
}
# The byte search for encoded attributes: the groups of the patient's and the visit's identity
# (General Study/Series/Equipment attributes are in group 0008), their text VRs, the VRs with a
# 4-byte length in explicit VR, and the longest value taken as a plausible name or identifier.
_SIGNATURE_GROUPS = (0x0008, 0x0010)
_TEXT_VRS = frozenset(
    {"AE", "AS", "CS", "DA", "DS", "DT", "IS", "LO", "LT", "PN", "SH", "ST", "TM", "UC", "UI",
     "UR", "UT"}
)  # fmt: skip
_LONG_LENGTH_VRS = frozenset(
    {"OB", "OD", "OF", "OL", "OV", "OW", "SQ", "SV", "UC", "UN", "UR", "UT", "UV"}
)
_MAX_SIGNATURE_VALUE = 1024
_SCAN_CHUNK = 1 << 23
_SCAN_MARGIN = _MAX_SIGNATURE_VALUE + 16


def _profile_action(tag: BaseTag, is_sequence: bool = False) -> str:
    """The basic profile's action for ``tag``, combined codes resolved; "K" where not listed."""
    if tag.is_private or int(tag) in _FILE_META_REMOVALS:
        return "X"
    if int(tag) == _CONCATENATION_SOURCE_UID:
        return "U"
    action = BASIC_PROFILE_ACTIONS.get(int(tag))
    if action is None:
        action = next((r.action for r in _REPEATING_GROUP_RULES if r.matches(int(tag))), "K")
    if is_sequence and action == "X/D":
        return "X"  # a sequence left without items (kseg's D) is no D; X is a branch of X/D
    return _CONFORMANT_BRANCH.get(action, action)


def _attribute_name(tag: BaseTag) -> str:
    return keyword_for_tag(tag) or str(tag)


@dataclasses.dataclass
class DeidFileRecord:
    """What was done to one DICOM file: attribute keywords (never values) and how often.

    Attributes without a keyword (private or newer than pydicom's dictionary) appear as
    ``(gggg,eeee)``. Counts include the attribute's occurrences inside sequence items.

    Args:
        source: the input file, relative to ``src``.
        output: the written file, relative to ``dst``.
        removed: keyword -> number of elements removed (X).
        emptied: keyword -> number of elements left with a zero-length value (Z; D on a
            sequence; an empty Patient ID).
        replaced: keyword -> number of elements given a dummy, a pseudonym or a new UID (D, U).
        warnings: what the basic profile cannot fix in this file (burned-in text, faces).
    """

    source: str
    output: str
    removed: dict[str, int] = dataclasses.field(default_factory=dict)
    emptied: dict[str, int] = dataclasses.field(default_factory=dict)
    replaced: dict[str, int] = dataclasses.field(default_factory=dict)
    warnings: list[str] = dataclasses.field(default_factory=list)

    def to_dict(self, *, include_sources: bool = False) -> dict:
        record = dataclasses.asdict(self)
        if not include_sources:
            del record["source"]
        return record


@dataclasses.dataclass
class DeidReport:
    """The outcome of one :func:`deidentify` run.

    Args:
        src: the input folder.
        dst: the output folder.
        layout: ``"uids"`` or ``"mirror"``.
        files: one record per DICOM file written.
        skipped: ``(source, reason)`` for each file not de-identified on purpose (non-DICOM,
            DICOMDIR) and each hidden folder not read (its source ends in ``/``), relative
            to ``src``.
        copied: the non-DICOM files copied unchanged (``copy_non_dicom=True``).
        failed: ``(source, reason)`` for each DICOM file that could not be read or written,
            and each file refused because it holds DICOM attributes the profile acts on but is
            no dataset pydicom can read whole (never copied).
    """

    src: str
    dst: str
    layout: str
    files: list[DeidFileRecord] = dataclasses.field(default_factory=list)
    skipped: list[tuple[str, str]] = dataclasses.field(default_factory=list)
    copied: list[str] = dataclasses.field(default_factory=list)
    failed: list[tuple[str, str]] = dataclasses.field(default_factory=list)

    def totals(self) -> dict[str, collections.Counter]:
        """For removed, emptied and replaced: keyword -> number of files it happened in."""
        totals = {action: collections.Counter() for action in ("removed", "emptied", "replaced")}
        for record in self.files:
            for action, counter in totals.items():
                counter.update(getattr(record, action).keys())
        return totals

    def __str__(self) -> str:
        lines = [
            f"de-identified {len(self.files)} DICOM files from {self.src} into {self.dst} "
            f"(DICOM PS3.15 {BASIC_PROFILE_EDITION} basic profile, layout {self.layout!r})",
            f"  skipped: {len(self.skipped)} (copied unchanged: {len(self.copied)}); "
            f"failed: {len(self.failed)}",
        ]
        for action, counter in self.totals().items():
            shown = ", ".join(f"{name} {count}" for name, count in counter.most_common(8))
            more = f" and {len(counter) - 8} more" if len(counter) > 8 else ""
            lines.append(f"  {action} (attribute: files): {shown or 'none'}{more}")
        warned = sum(1 for record in self.files if record.warnings)
        if warned:
            lines.append(f"  files with warnings: {warned} (see .files[i].warnings)")
        lines.extend(f"  FAILED {source}: {reason}" for source, reason in self.failed)
        return "\n".join(lines)

    def to_dict(self, *, include_sources: bool = False) -> dict:
        """A JSON-ready dict. Source paths and folders (which may hold patient names) and
        failure messages are left out unless ``include_sources``; counts are always kept.
        With ``layout="mirror"`` the output paths are the source paths."""
        report = {
            "profile": f"DICOM PS3.15 {BASIC_PROFILE_EDITION} Table E.1-1 basic profile",
            "layout": self.layout,
            "files": [record.to_dict(include_sources=include_sources) for record in self.files],
            "skipped": len(self.skipped),
            "copied": len(self.copied),
            "failed": len(self.failed),
            "totals": {action: dict(counter) for action, counter in self.totals().items()},
        }
        if include_sources:
            report.update(
                src=self.src,
                dst=self.dst,
                skipped=[{"source": s, "reason": r} for s, r in self.skipped],
                copied=list(self.copied),
                failed=[{"source": s, "reason": r} for s, r in self.failed],
            )
        return report

    def write_json(self, path: os.PathLike | str, *, include_sources: bool = False) -> None:
        """Write :meth:`to_dict` as JSON to ``path``, atomically."""
        text = json.dumps(self.to_dict(include_sources=include_sources), indent=2, sort_keys=True)
        _write_atomically(Path(path), lambda handle: handle.write(text.encode("utf-8")))


def _write_atomically(path: Path, write: Callable) -> None:
    with atomic_output(path) as temporary, open(temporary, "wb") as handle:
        write(handle)


class _Deidentifier:
    """Applies the profile to datasets; holds the secret, the kept tags and the mappings."""

    def __init__(self, secret: bytes, uid_root: str | None, keep: frozenset[int]):
        self.secret = secret
        self.uid_root = uid_root
        self.keep = keep
        self.uids: dict[str, str] = {}
        self.patients: dict[str, str] = {}

    def _digest(self, domain: bytes, value: str) -> bytes:
        message = domain + b"\x00" + value.encode("utf-8")
        return hmac.new(self.secret, message, hashlib.sha256).digest()

    def new_uid(self, uid: str) -> str:
        original = str(uid).strip("\x00 ")
        if not original:
            return original
        if original not in self.uids:
            digest = self._digest(b"uid", original)
            if self.uid_root is None:
                # 2.25 UIDs are UUIDs (ISO/IEC 9834-8): mark the hash as RFC 9562 version 8.
                raw = bytearray(digest[:16])
                raw[6] = (raw[6] & 0x0F) | 0x80
                raw[8] = (raw[8] & 0x3F) | 0x80
                self.uids[original] = f"2.25.{int.from_bytes(raw, 'big')}"
            else:
                self.uids[original] = generate_uid(self.uid_root, entropy_srcs=[digest.hex()])
        return self.uids[original]

    def pseudonym(self, patient_id: str) -> str:
        original = str(patient_id).strip("\x00 ")
        if original not in self.patients:
            digest = self._digest(b"patient", original)
            self.patients[original] = "ANON-" + digest.hex()[:16].upper()
        return self.patients[original]

    def clean(self, dataset: Dataset, record: DeidFileRecord) -> None:
        """Apply the profile to ``dataset`` in place, items of sequences included."""
        for element in list(dataset):
            tag = element.tag
            name = _attribute_name(tag)
            is_sequence = element.VR == "SQ"
            action = "K" if int(tag) in self.keep else _profile_action(tag, is_sequence)
            if action == "X":
                del dataset[tag]
                _count(record.removed, name)
            elif action == "K" or (action == "U" and is_sequence):
                if is_sequence:
                    for item in element.value:
                        self.clean(item, record)
            elif action == "Z" or is_sequence:
                element.value = Sequence() if is_sequence else None
                _count(record.emptied, name)
            elif action == "U" or element.VR == "UI":
                element.value = self._remapped(element.value)
                _count(record.replaced, name)
            elif int(tag) == _PATIENT_ID and not element.value:
                _count(record.emptied, name)
            elif int(tag) == _PATIENT_ID:
                element.value = self.pseudonym(element.value)
                _count(record.replaced, name)
            else:
                element.value = _dummy(element.VR)
                _count(record.replaced, name)

    def _remapped(self, value):
        if value is None or isinstance(value, str):
            return self.new_uid(value) if value else value
        return [self.new_uid(uid) for uid in value]

    def mark(self, dataset: Dataset, kept_keywords: Iterable[str]) -> None:
        """Record that and how the dataset was de-identified (PS3.15 E.1.1, PS3.3 C.7.1.1)."""
        dataset.PatientIdentityRemoved = "YES"
        methods = [f"DICOM PS3.15 {BASIC_PROFILE_EDITION} Basic Profile by kseg"]
        methods += [f"kept {keyword}"[:64] for keyword in kept_keywords]
        # An earlier step's record (TCIA's, say) stays: the attribute is multi-valued for
        # successive de-identification steps (PS3.3 C.7.1.1).
        earlier = dataset.get("DeidentificationMethod") or []
        earlier = [earlier] if isinstance(earlier, str) else [str(value) for value in earlier]
        dataset.DeidentificationMethod = earlier + [m for m in methods if m not in earlier]
        codes = dataset.get("DeidentificationMethodCodeSequence") or Sequence()
        if not any(
            (item.get("CodeValue"), item.get("CodingSchemeDesignator")) == _DEID_METHOD_CODE[:2]
            for item in codes
        ):
            code = Dataset()
            code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = _DEID_METHOD_CODE
            codes.append(code)
        dataset.DeidentificationMethodCodeSequence = codes


def _count(counter: dict[str, int], name: str) -> None:
    counter[name] = counter.get(name, 0) + 1


def _dummy(vr: str):
    if vr in _DUMMY_TEXT:
        return _DUMMY_TEXT[vr]
    if vr in _NUMBER_VRS:
        return 0
    return _DUMMY_BYTES


def _warnings(dataset: Dataset) -> list[str]:
    found = []
    if str(dataset.get("BurnedInAnnotation", "")).upper() == "YES":
        found.append("BurnedInAnnotation is YES: the basic profile leaves text in the pixels")
    if str(dataset.get("RecognizableVisualFeatures", "")).upper() == "YES":
        found.append("RecognizableVisualFeatures is YES: the image may show a recognisable face")
    return found


def _path_part(value, missing: str) -> str:
    text = _UNSAFE_PATH_CHARS.sub("_", str(value or "").strip("\x00 "))
    return text if text.strip(".") else missing


def _uids_layout_path(dataset: Dataset) -> Path | None:
    sop_uid = dataset.get("SOPInstanceUID") or dataset.file_meta.get("MediaStorageSOPInstanceUID")
    if not sop_uid:
        return None
    return Path(
        _path_part(dataset.get("PatientID"), "NO-PATIENT-ID"),
        _path_part(dataset.get("StudyInstanceUID"), "NO-STUDY-UID"),
        _path_part(dataset.get("SeriesInstanceUID"), "NO-SERIES-UID"),
        _path_part(sop_uid, "NO-SOP-UID") + ".dcm",
    )


def _remove_outputs(files: Iterable[Path], folders: Iterable[Path]) -> None:
    """Delete the files a run wrote and the folders it made for them (deepest first, only
    while empty)."""
    for path in files:
        path.unlink(missing_ok=True)
    for folder in sorted(folders, key=lambda folder: len(folder.parts), reverse=True):
        try:
            folder.rmdir()
        except OSError:
            pass


def _inside(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def _is_identifying(tag: int) -> bool:
    """An attribute of the profile's table or of the Patient group (0010,xxxx)."""
    return tag in BASIC_PROFILE_ACTIONS or tag >> 16 == _PATIENT_GROUP


def _is_unknown(tag: int) -> bool:
    """A public tag, not a group length, that pydicom's dictionary does not know."""
    return (tag >> 16) % 2 == 0 and bool(tag & 0xFFFF) and not keyword_for_tag(tag)


def _read_forced(path: Path) -> tuple[Dataset | None, str | None]:
    """Read a file that is no Part 10 file (pydicom refused it without ``force``).

    Returns ``(dataset, None)`` for a DICOM dataset without preamble or File Meta that holds an
    attribute the profile acts on; ``(None, reason)`` for a file that holds such attributes but
    cannot be read whole, and so must be refused, never copied; ``(None, None)`` for a file
    with no DICOM attribute the profile acts on, which is not DICOM.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a forced read of a text file warns about every byte
        try:
            probe = pydicom.dcmread(path, force=True, defer_size=1024, stop_before_pixels=True)
            tags = [int(tag) for tag in probe.keys()]
        except Exception:  # bytes pydicom cannot even start to parse as a dataset
            tags = []
        found = [_attribute_name(BaseTag(tag)) for tag in tags if _is_identifying(tag)]
        if found:
            try:
                dataset = pydicom.dcmread(path, force=True)
            except Exception as error:
                return None, (
                    f"refused, not copied: holds {found[0]} but cannot be read whole "
                    f"({type(error).__name__})"
                )
            # A forced read of arbitrary bytes gives tags no dictionary knows: then the file
            # is no dataset that can be cleaned with confidence (the profile keeps unknown
            # public tags), and is refused.
            unknown = [str(BaseTag(tag)) for tag in dataset.keys() if _is_unknown(int(tag))]
            if unknown:
                return None, (
                    f"refused, not copied: holds {found[0]} but also tags no DICOM dictionary "
                    f"knows ({', '.join(unknown[:3])}), so it is no dataset that can be cleaned"
                )
            return dataset, None
    keyword = _encoded_attribute(path)
    if keyword is not None:
        return None, (
            f"refused, not copied: its bytes hold an encoded {keyword} element, but no dataset "
            "pydicom can read"
        )
    return None, None


@functools.cache
def _signature_tags() -> np.ndarray:
    """Text attributes of the profile in the Patient and Study/Series/Equipment groups."""
    tags = []
    for tag in BASIC_PROFILE_ACTIONS:
        if tag >> 16 not in _SIGNATURE_GROUPS:
            continue
        try:
            vr = dictionary_VR(tag)
        except KeyError:
            continue
        if vr in _TEXT_VRS:
            tags.append(tag)
    return np.array(sorted(tags), dtype=np.uint32)


def _looks_like_text(value: bytes) -> bool:
    text = value.rstrip(b" \x00")
    if len(text) < 2 or any(byte < 0x20 and byte != 0x1B or byte == 0x7F for byte in text):
        return False
    alphanumeric = sum(1 for byte in text if chr(byte).isalnum() and byte < 0x80)
    return alphanumeric >= 2 and 2 * alphanumeric > len(text) - text.count(b" ")


def _text_element_at(buffer: bytes, start: int, little: bool) -> bool:
    """Whether an element with a text value begins at ``start`` (explicit or implicit VR)."""
    order = "<" if little else ">"
    forms = []
    vr = buffer[start + 4 : start + 6]
    if len(vr) == 2 and vr.isalpha() and vr.isupper():
        if vr.decode("ascii") in _LONG_LENGTH_VRS:
            forms.append((start + 8, f"{order}I", start + 12))
        else:
            forms.append((start + 6, f"{order}H", start + 8))
    if little:  # implicit VR, which is little endian only
        forms.append((start + 4, "<I", start + 8))
    for length_at, length_format, value_at in forms:
        if length_at + struct.calcsize(length_format) > len(buffer):
            continue
        (length,) = struct.unpack_from(length_format, buffer, length_at)
        if 2 <= length <= _MAX_SIGNATURE_VALUE and value_at + length <= len(buffer):
            if _looks_like_text(buffer[value_at : value_at + length]):
                return True
    return False


def _tag_candidates(data: np.ndarray, count: int, little: bool) -> tuple[np.ndarray, np.ndarray]:
    """Start offsets below ``count`` where a signature tag is encoded, and those tags."""
    first, second = data[:count], data[1 : count + 1]
    low, high = (first, second) if little else (second, first)
    mask = np.zeros(count, dtype=bool)
    for group in _SIGNATURE_GROUPS:
        mask |= (low == group & 0xFF) & (high == group >> 8)
    starts = np.flatnonzero(mask)
    byte = [data[starts + i].astype(np.uint32) for i in range(4)]
    if little:
        tags = byte[1] << 24 | byte[0] << 16 | byte[3] << 8 | byte[2]
    else:
        tags = byte[0] << 24 | byte[1] << 16 | byte[2] << 8 | byte[3]
    known = np.isin(tags, _signature_tags())
    return starts[known], tags[known]


def _encoded_attribute(path: Path) -> str | None:
    """The keyword of the first profile text attribute found encoded in the file's bytes.

    Finds the element of, say, Patient's Name (0010,0010) wherever it lies (in a damaged file,
    a dataset shifted by stray bytes, an unknown wrapper), in explicit or implicit VR, little
    or big endian, and accepts it only where a text value of plausible length follows.
    """
    with path.open("rb") as handle:
        offset = 0
        while True:
            handle.seek(offset)
            buffer = handle.read(_SCAN_CHUNK + _SCAN_MARGIN)
            if len(buffer) < 8:
                return None
            data = np.frombuffer(buffer, dtype=np.uint8)
            count = min(_SCAN_CHUNK, len(data) - 3)
            for little in (True, False):
                for start, tag in zip(*_tag_candidates(data, count, little), strict=True):
                    if _text_element_at(buffer, int(start), little):
                        return _attribute_name(BaseTag(int(tag)))
            if len(buffer) < _SCAN_CHUNK + _SCAN_MARGIN:
                return None
            offset += _SCAN_CHUNK


def _complete_file_meta(dataset: Dataset) -> bool:
    """Give a dataset read with ``force`` the preamble and File Meta of a Part 10 file.

    False where it has no SOP Class and Instance UIDs to name in the File Meta; it is then
    written as it was read, a dataset without File Meta.
    """
    sop_class, sop_instance = dataset.get("SOPClassUID"), dataset.get("SOPInstanceUID")
    if not sop_class or not sop_instance:
        return False
    if not isinstance(getattr(dataset, "file_meta", None), FileMetaDataset):
        dataset.file_meta = FileMetaDataset()
    meta = dataset.file_meta
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop_instance
    if "TransferSyntaxUID" not in meta:
        meta.TransferSyntaxUID = _TRANSFER_SYNTAXES[tuple(dataset.original_encoding)]
    dataset.preamble = _ZERO_PREAMBLE
    return True


def _list_files(src: Path, dst: Path) -> tuple[list[Path], list[Path]]:
    """``(files, hidden folders)`` under ``src``: every file, linked folders followed
    (datasets are often assembled from links into an archive), each real folder once (a link
    back up is no loop) and none inside ``dst`` (a link to the output would read what this
    run writes); hidden folders are not entered, only listed. A DataLad / git-annex dataset
    keeps each file as a link into ``.git/annex/objects``: walked, its every DICOM file was
    read twice (the second a duplicate SOPInstanceUID, or with ``layout="mirror"`` a copy
    named by the SHA-256 of the identified original), and a drive's ``.Trash-1000`` holds
    files the user deleted."""
    found, hidden, seen = [], [], set()
    for folder, subfolders, names in os.walk(src, followlinks=True):
        real = Path(os.path.realpath(folder))
        if real in seen or _inside(real, dst):
            subfolders.clear()
            continue
        seen.add(real)
        hidden.extend(Path(folder, name) for name in sorted(subfolders) if name.startswith("."))
        subfolders[:] = sorted(name for name in subfolders if not name.startswith("."))
        found.extend(Path(folder, name) for name in sorted(names))
    return found, hidden


def _keep_tags(keep: Iterable[str]) -> tuple[frozenset[int], tuple[str, ...]]:
    if isinstance(keep, str):
        keep = (keep,)
    keywords = tuple(keep)
    tags = []
    for keyword in keywords:
        tag = tag_for_keyword(keyword) if isinstance(keyword, str) else None
        if tag is None:
            raise ValueError(f"keep: {keyword!r} is not a DICOM attribute keyword (e.g. 'ROIName')")
        tags.append(tag)
    return frozenset(tags), keywords


def deidentify(
    src: os.PathLike | str,
    dst: os.PathLike | str,
    *,
    secret: str | bytes | None = None,
    uid_root: str | None = None,
    keep: Iterable[str] = (),
    layout: str = "uids",
    copy_non_dicom: bool = False,
    overwrite: bool = False,
    patient_map_path: os.PathLike | str | None = None,
    progress: bool = True,
) -> DeidReport:
    """De-identify every DICOM file under ``src`` into ``dst`` (PS3.15 basic profile).

    See the module docstring for how each action code, sequence and combined code is carried
    out and what the basic profile leaves undone. ``src`` is only read. Each output is written
    to a temporary file and renamed into place.

    Args:
        src: folder searched recursively, linked folders too, hidden folders not (listed in
            ``skipped``); nothing in it is written to.
        dst: output folder; must not be ``src``, inside ``src``, or contain ``src``.
        secret: key of the HMAC that derives new UIDs and Patient ID pseudonyms. The same
            secret gives the same UIDs and pseudonyms in every run, so data de-identified in
            several batches stays linked; keep it as private as the identities. ``None`` draws
            a random secret: consistent within this run, unlinkable across runs.
        uid_root: your organisation's UID root (at most 40 characters, ending in ".") to put
            the new UIDs under; ``None`` writes ``2.25.<integer>`` UIDs, which need no root.
        keep: attribute keywords to keep unchanged although the profile would change them,
            e.g. ``("ROIName",)``; recorded in De-identification Method.
        layout: ``"uids"`` (default) names outputs by the new UIDs, which leaks no source
            name; ``"mirror"`` keeps the source relative paths.
        copy_non_dicom: copy non-DICOM files unchanged to the same relative path (their names
            and contents are not de-identified). By default they are only reported. A file
            without preamble or File Meta that parses as a DICOM dataset is de-identified, and
            one whose bytes hold an encoded patient attribute is refused: neither is copied.
        overwrite: replace output files that already exist; otherwise finding one raises.
        patient_map_path: where to write the JSON mapping original Patient ID -> pseudonym.
            Nothing records the mapping unless this is given; it must lie outside ``dst``.
        progress: show a tqdm progress bar.

    Returns:
        A :class:`DeidReport`: per written file, the keywords removed, emptied or replaced.

    Raises:
        LayoutError: ``src`` is not a folder, ``dst`` is (or lies under) a file, ``src`` and
            ``dst`` overlap, ``patient_map_path`` lies inside ``dst`` or ``src``, or an output
            file exists and ``overwrite`` is False (the files this run had written are then
            removed again, so ``dst`` is left as it was).
        ValueError: an empty ``secret``, an unknown ``keep`` keyword, ``layout`` or ``uid_root``.

    Example:
        >>> import shutil
        >>> import tempfile
        >>> import pydicom.data
        >>> work = Path(tempfile.mkdtemp())
        >>> (work / "raw").mkdir()
        >>> _ = shutil.copy(pydicom.data.get_testdata_file("CT_small.dcm"), work / "raw")
        >>> secret = "kept apart from the data"  # in practice e.g. os.environ["DEID_SECRET"]
        >>> report = deidentify(work / "raw", work / "deid", secret=secret, keep=("ROIName",))
        >>> print(report)  # doctest: +ELLIPSIS
        de-identified 1 DICOM files from ... (DICOM PS3.15 2026c basic profile, layout 'uids')
          skipped: 0 (copied unchanged: 0); failed: 0
        ...
        >>> report.files[0].output.startswith("ANON-")  # the patient's pseudonym folder
        True
        >>> report.write_json(work / "deid_report.json")

    Reference:
        DICOM PS3.15 2026c, Annex E, Table E.1-1 (Basic Application Level Confidentiality
        Profile). NEMA, 2026.
    """
    src_path, dst_path = Path(src).resolve(), Path(dst).resolve()
    if not src_path.is_dir():
        raise LayoutError(src, "src must be an existing folder of files to de-identify")
    if _inside(dst_path, src_path) or _inside(src_path, dst_path):
        raise LayoutError(dst, f"dst must lie outside src ({src_path}) and not contain it")
    blocking = next((p for p in (dst_path, *dst_path.parents) if p.exists()), None)
    if blocking is not None and not blocking.is_dir():
        raise LayoutError(dst, f"dst must be a folder to write into, but {blocking} is a file")
    map_path = None if patient_map_path is None else Path(patient_map_path).resolve()
    if map_path is not None and _inside(map_path, dst_path):
        raise LayoutError(
            patient_map_path,
            "patient_map_path must lie outside dst: the mapping re-identifies the patients",
        )
    if map_path is not None and _inside(map_path, src_path):
        raise LayoutError(
            patient_map_path, "patient_map_path must lie outside src: src is read-only"
        )
    if layout not in _LAYOUTS:
        raise ValueError(f"layout must be one of {_LAYOUTS}, got {layout!r}")
    if uid_root is not None:
        if len(uid_root) > _MAX_UID_ROOT:
            raise ValueError(f"uid_root must be at most {_MAX_UID_ROOT} characters: {uid_root!r}")
        try:
            generate_uid(uid_root, entropy_srcs=["check"])
        except ValueError as error:
            raise ValueError(f"uid_root {uid_root!r} is not a UID prefix: {error}") from None
    keep_tags, kept_keywords = _keep_tags(keep)
    if secret is None:
        key = secrets.token_bytes(32)
    else:
        key = secret.encode("utf-8") if isinstance(secret, str) else bytes(secret)
        if not key:
            raise ValueError("secret is empty; pass None to draw a random one for this run")

    deidentifier = _Deidentifier(key, uid_root, keep_tags)
    report = DeidReport(src=str(src_path), dst=str(dst_path), layout=layout)
    written: dict[Path, str] = {}
    new_folders: set[Path] = set()

    def claim(out_path: Path, source: str) -> bool:
        if out_path in written:
            report.failed.append(
                (source, f"same output path as {written[out_path]} (duplicate SOPInstanceUID)")
            )
            return False
        if out_path.exists() and not overwrite:
            # Without overwrite nothing this run claimed existed before it: take it all back,
            # so a refused run leaves dst as it found it.
            _remove_outputs(written, new_folders)
            raise LayoutError(
                out_path, "exists; pass overwrite=True to replace it (nothing was written)"
            )
        new_folders.update(
            folder for folder in out_path.parents
            if _inside(folder, dst_path) and not folder.exists()
        )  # fmt: skip
        written[out_path] = source
        return True

    files, hidden = _list_files(src_path, dst_path)
    for folder in hidden:
        report.skipped.append(
            (folder.relative_to(src_path).as_posix() + "/", "hidden folder, not read (a "
             "DataLad / git-annex .git, a trash folder): nothing in it is written")
        )  # fmt: skip
    for path in tqdm(files, desc="de-identifying", unit="file", disable=not progress):
        relative = path.relative_to(src_path)
        source = relative.as_posix()
        forced = False
        try:
            dataset = pydicom.dcmread(path)
        except InvalidDicomError:
            # No Part 10 file; it may still be a DICOM dataset, which is never copied as is.
            dataset, refusal = _read_forced(path)
            if refusal is not None:
                report.failed.append((source, refusal))
                continue
            if dataset is None:
                if copy_non_dicom and claim(dst_path / relative, source):
                    with path.open("rb") as original:
                        _write_atomically(
                            dst_path / relative,
                            lambda handle: shutil.copyfileobj(original, handle),
                        )
                    report.copied.append(source)
                report.skipped.append((source, "not a DICOM file"))
                continue
            forced = True
        except Exception as error:  # a DICOM header pydicom cannot parse: report, go on
            report.failed.append((source, f"unreadable: {type(error).__name__}: {error}"))
            continue
        if (
            dataset.file_meta.get("MediaStorageSOPClassUID") == MediaStorageDirectoryStorage
            or _DIRECTORY_RECORD_SEQUENCE in dataset
        ):
            report.skipped.append(
                (source, "DICOMDIR: rebuild it from the output with pydicom.fileset.FileSet")
            )
            continue
        try:
            record = DeidFileRecord(source=source, output="", warnings=_warnings(dataset))
            deidentifier.clean(dataset.file_meta, record)
            deidentifier.clean(dataset, record)
            deidentifier.mark(dataset, kept_keywords)
            if dataset.preamble is not None:
                # The preamble is outside the data set, unread by the profile: it can hold a
                # TIFF header (dual-personality files), vendor data or an executable.
                dataset.preamble = _ZERO_PREAMBLE
            # A file read as Part 10 is written as it came; a forced one becomes Part 10.
            enforce = forced and _complete_file_meta(dataset)
            out_relative = relative if layout == "mirror" else _uids_layout_path(dataset)
        except Exception as error:  # a value pydicom cannot decode while cleaning
            report.failed.append((source, f"cannot de-identify: {type(error).__name__}: {error}"))
            continue
        if out_relative is None:
            report.failed.append((source, "no SOPInstanceUID to name the output after"))
            continue
        out_path = dst_path / out_relative
        if not claim(out_path, source):
            continue
        try:
            _write_atomically(
                out_path, functools.partial(dataset.save_as, enforce_file_format=enforce)
            )
        except OSError:
            raise
        except Exception as error:  # a value pydicom cannot encode: report, go on
            report.failed.append((source, f"cannot write: {type(error).__name__}: {error}"))
            continue
        record.output = out_relative.as_posix()
        report.files.append(record)

    if map_path is not None:
        mapping = json.dumps(deidentifier.patients, indent=2, sort_keys=True)
        _write_atomically(map_path, lambda handle: handle.write(mapping.encode("utf-8")))
    return report
