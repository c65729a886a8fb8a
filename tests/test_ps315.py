"""Tests for the PS3.15 table kseg de-identifies by (kseg.io._ps315, used by kseg.io.deid).

Three references, none taken from kseg: rows copied by hand from DICOM PS3.15 Table E.1-1
(Basic Prof. column) and its legend, Table E.1-1a; the dicom-anonymizer module read here with
its own list names, so a list that kseg's loader dropped or misread shows as a difference; and
a dataset holding every attribute of the table, de-identified and checked byte by byte.
"""

import importlib
import types

import numpy as np
import pydicom
import pytest
from pydicom.datadict import dictionary_VR
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.tag import Tag
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian

from kseg.io import _ps315, deid

# (tag, action code) copied by hand from PS3.15 2026c Table E.1-1, basic profile column.
HAND_CHECKED = {
    0x00100010: "Z",  # Patient's Name
    0x00100020: "Z/D",  # Patient ID (Z up to 2023e; Z/D since 2024)
    0x00100030: "Z",  # Patient's Birth Date
    0x00100040: "Z",  # Patient's Sex
    0x00101010: "X",  # Patient's Age
    0x00101040: "X",  # Patient's Address
    0x00101000: "X",  # Other Patient IDs
    0x00080018: "U",  # SOP Instance UID
    0x0020000D: "U",  # Study Instance UID
    0x0020000E: "U",  # Series Instance UID
    0x00200052: "U",  # Frame of Reference UID
    0x00020003: "U",  # Media Storage SOP Instance UID
    0x00080014: "U",  # Instance Creator UID
    0x00080020: "Z",  # Study Date
    0x00080030: "Z",  # Study Time
    0x00080050: "Z",  # Accession Number
    0x00080090: "Z",  # Referring Physician's Name
    0x00200010: "Z",  # Study ID
    0x00080021: "X/D",  # Series Date
    0x00080022: "X/Z",  # Acquisition Date
    0x00080023: "Z/D",  # Content Date
    0x00080080: "X/Z/D",  # Institution Name
    0x00080081: "X",  # Institution Address
    0x00081010: "X/Z/D",  # Station Name
    0x00081070: "X/Z/D",  # Operators' Name
    0x00181000: "X/Z/D",  # Device Serial Number
    0x00081030: "X",  # Study Description
    0x0008103E: "X",  # Series Description
    0x00181030: "X/D",  # Protocol Name
    0x00204000: "X",  # Image Comments
    0x00400275: "X",  # Request Attributes Sequence
    0x00081140: "X/Z/U*",  # Referenced Image Sequence
    0x00082112: "X/Z/U*",  # Source Image Sequence
    0x30060002: "D",  # Structure Set Label
    0x30060008: "Z",  # Structure Set Date
    0x30060026: "Z",  # ROI Name
    0x30060024: "U",  # Referenced Frame of Reference UID
    0xFFFAFFFA: "X",  # Digital Signatures Sequence
    0xFFFCFFFC: "X",  # Data Set Trailing Padding
}
# Table E.1-1a: the actions each code allows ("U" for the sequences of X/Z/U*).
ALLOWED = {
    "X": {"X"},
    "Z": {"Z", "D"},  # Z: zero length, or a dummy
    "D": {"D"},
    "U": {"U"},
    "Z/D": {"Z", "D"},
    "X/Z": {"X", "Z", "D"},
    "X/D": {"X", "D"},
    "X/Z/D": {"X", "Z", "D"},
    "X/Z/U*": {"X", "Z", "U"},
}
PACKAGE_LISTS = {
    "D_TAGS": "D",
    "Z_TAGS": "Z",
    "X_TAGS": "X",
    "U_TAGS": "U",
    "Z_D_TAGS": "Z/D",
    "X_Z_TAGS": "X/Z",
    "X_D_TAGS": "X/D",
    "X_Z_D_TAGS": "X/Z/D",
    "X_Z_U_STAR_TAGS": "X/Z/U*",
}


def _package_table():
    module = importlib.import_module(
        "dicomanonymizer.dicom_anonymization_databases.dicomfields_2026c"
    )
    single, ranges = {}, set()
    for name, code in PACKAGE_LISTS.items():
        for entry in getattr(module, name):
            if len(entry) == 2:
                single[Tag(*entry)] = code
            else:
                ranges.add((*entry, code))
    return single, ranges


def test_edition_is_pinned_and_cited():
    assert deid.BASIC_PROFILE_EDITION == _ps315.BASIC_PROFILE_EDITION == "2026c"
    assert _ps315.SOURCE_MODULE.endswith(".dicomfields_2026c")
    assert "2026c" in deid.__doc__ and "2026c" in deid.deidentify.__doc__


def test_table_equals_the_package_table():
    single, ranges = _package_table()
    assert len(single) == 652
    assert {Tag(tag): code for tag, code in deid.BASIC_PROFILE_ACTIONS.items()} == single
    rules = {
        (r.group, r.element, r.group_mask, r.element_mask, r.action)
        for r in deid._REPEATING_GROUP_RULES
    }
    assert rules == ranges


def test_hand_checked_rows_of_the_standard():
    for tag, code in HAND_CHECKED.items():
        assert deid.BASIC_PROFILE_ACTIONS.get(tag) == code, (Tag(tag), code)


def test_repeating_group_and_private_rows():
    action = deid._profile_action
    for tag in (0x50000005, 0x50FE3000, 0x501E0010):  # Curve Data (50xx,xxxx)
        assert action(Tag(tag)) == "X"
    for tag in (0x60003000, 0x60004000, 0x601E3000):  # Overlay Data, Overlay Comments
        assert action(Tag(tag)) == "X"
    assert action(Tag(0x60000010)) == "K"  # Overlay Rows: not in the table
    assert action(Tag(0x00091001)) == action(Tag(0x00290010)) == "X"  # private attributes
    assert action(Tag(0x00280010)) == "K"  # Rows: not in the table


def test_every_attribute_of_the_profile_gets_an_action_its_code_allows():
    for tag, code in deid.BASIC_PROFILE_ACTIONS.items():
        assert deid._profile_action(Tag(tag)) in ALLOWED[code], (Tag(tag), code)


def test_loader_reads_a_table_and_refuses_an_inconsistent_one():
    module = types.ModuleType("fake_table")
    for element, name in enumerate(PACKAGE_LISTS, start=0x1000):
        setattr(module, name, [(0x0011, element)])
    module.X_TAGS.append((0x6000, 0x3000, 0xFF00, 0xFFFF))
    actions, rules = _ps315.load_basic_profile(module)
    assert actions[0x00111000] == "D" and actions[0x00111008] == "X/Z/U*" and len(actions) == 9
    assert rules[0].matches(0x60223000) and not rules[0].matches(0x60220010)
    module.Z_TAGS.append((0x0011, 0x1000))  # already a D
    with pytest.raises(ValueError, match="listed as both"):
        _ps315.load_basic_profile(module)
    module.Z_TAGS.pop()
    del module.U_TAGS
    with pytest.raises(ValueError, match="U_TAGS"):
        _ps315.load_basic_profile(module)
    module.U_TAGS = ["(0010,0010)"]
    with pytest.raises(ValueError, match="unexpected entry"):
        _ps315.load_basic_profile(module)


# A value for each VR of the table's attributes; text values carry a marker to find in bytes.
def _value(vr, index):
    marker = f"LEAK{index:04d}"
    text = {"AE", "CS", "LO", "LT", "PN", "SH", "ST", "UC", "UT", "UR"}
    fixed = {"DA": "20230412", "TM": "101530", "DT": "20230412101530", "AS": "042Y"}
    if vr in text:
        return marker
    if vr in fixed:
        return fixed[vr]
    if vr == "UI":
        return f"1.2.826.0.1.3680043.9999.55.{index}"
    if vr in ("DS", "IS"):
        return "42"
    if vr in ("US", "SS", "UL", "SL", "FL", "FD", "SV", "UV"):
        return 42
    if vr == "AT":
        return 0x00100010
    if vr in ("OB", "OW", "OD", "OF", "OL", "OV", "UN"):
        return marker.encode()
    raise AssertionError(vr)


def test_every_attribute_of_the_table_is_cleaned_in_a_real_file(tmp_path):
    dataset, originals = Dataset(), {}
    for index, tag in enumerate(sorted(deid.BASIC_PROFILE_ACTIONS)):
        if tag >> 16 in (0x0000, 0x0002):  # command and File Meta groups: not in a dataset
            continue
        try:
            vr = dictionary_VR(tag).split(" or ")[0]
        except KeyError:  # newer than pydicom's dictionary: cannot be encoded here
            continue
        if vr == "SQ":
            item = Dataset()
            item.PatientName = f"LEAK{index:04d}"
            dataset.add_new(tag, vr, Sequence([item]))
        else:
            dataset.add_new(tag, vr, _value(vr, index))
        originals[tag] = dataset[tag].value
    assert len(originals) > 600
    dataset.SOPClassUID = CTImageStorage
    dataset.file_meta = FileMetaDataset()
    dataset.file_meta.MediaStorageSOPClassUID = CTImageStorage
    dataset.file_meta.MediaStorageSOPInstanceUID = dataset.SOPInstanceUID
    dataset.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    (tmp_path / "src").mkdir()
    dataset.save_as(tmp_path / "src" / "all.dcm", enforce_file_format=True)
    report = deid.deidentify(tmp_path / "src", tmp_path / "out", layout="mirror", progress=False)
    assert not report.failed and len(report.files) == 1
    data = (tmp_path / "out" / "all.dcm").read_bytes()
    assert b"LEAK" not in data
    assert b"1.2.826.0.1.3680043.9999.55." not in data
    out = pydicom.dcmread(tmp_path / "out" / "all.dcm")
    for tag, original in originals.items():
        code = deid.BASIC_PROFILE_ACTIONS[tag]
        if tag not in out:
            taken = "X"
        elif out[tag].VR == "SQ":
            taken = "U" if len(out[tag].value) else "Z"
        elif out[tag].value in (None, "", b"", []):
            taken = "Z"
        elif out[tag].VR == "UI":
            taken = "U"
        else:
            taken = "D"
        if code == "D" and taken == "U" or code == "D" and out[tag].VR == "SQ":
            # kseg's documented choices (deid module docstring): a D on a UID is a new UID,
            # a D on a sequence leaves it without items (no dummy item is surely clean).
            assert taken in ("U", "Z"), Tag(tag)
            continue
        assert taken in ALLOWED[code], (Tag(tag), code, taken)
        if taken in ("D", "U") and out[tag].VR != "SQ":
            value = out[tag].value
            assert not np.array_equal(np.asarray(value, dtype=object), original), Tag(tag)
