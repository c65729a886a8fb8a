"""Session 26 hunt of the readers (kseg.io, tfds_builders): inputs real archives ship."""

import pathlib
import warnings

import numpy as np
import pydicom
import pytest
from pydicom.fileset import FileSet
from test_io_dicom import _write_slice

from kseg.errors import LayoutError
from kseg.io import SkippedFileWarning, read_dicom_series


def _dicom_media(tmp_path, count=3):
    """A DICOM CD / DVD export (PS3.10 / PS3.11): DICOMDIR at the top, the images in
    PT000000/ST000000/SE00000<n>, written by pydicom's FileSet: a CT series of ``count``
    slices and a one-slice series 2."""
    slices = tmp_path / "slices"
    slices.mkdir()
    fileset = FileSet()
    for k in range(count + 1):
        series = 1 if k < count else 2
        path = _write_slice(
            slices / f"s{k}.dcm", position=(0.0, 0.0, 2.5 * k), series_uid=f"1.2.3.4.{series}"
        )
        dataset = pydicom.dcmread(path)
        dataset.PatientName, dataset.StudyDate, dataset.StudyTime = "X", "20200101", "1200"
        dataset.StudyID, dataset.SeriesNumber = "1", series
        fileset.add(dataset)
    media = tmp_path / "cd"
    fileset.write(media)
    return media


def test_a_cd_export_names_the_series_folder_its_dicomdir_lists(tmp_path):
    # Before: "cd: no DICOM image files found", though the DICOMDIR beside the user's
    # finger lists every image, one folder down: where to point was left to guesswork.
    media = _dicom_media(tmp_path)
    series = media / "PT000000" / "ST000000" / "SE000000"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SkippedFileWarning)  # the DICOMDIR, no image
        with pytest.raises(LayoutError) as caught:
            read_dicom_series(media)
    message = str(caught.value)
    assert message.startswith(f"{media}: no DICOM image files found")
    assert (
        f"DICOMDIR lists 2 image series: series 1 (CT, 3 images) in {series}; series 2 (CT, 1 "
        f"images) in {series.with_name('SE000001')}. Pass the folder of one series"
    ) in message
    assert read_dicom_series(series).shape == (3, 4, 6)  # the folder named is the series
    # the DICOMDIR itself, as viewers take it: before, "it is not a folder (pass a list)"
    with pytest.raises(LayoutError, match=r"DICOMDIR: .*not the index of a CD: this DICOMDIR "
                       r"lists 2 image series: series 1 \(CT, 3 images\)"):
        read_dicom_series(media / "DICOMDIR")


def test_a_cd_mounted_with_lower_case_names_names_the_folders_as_they_are(tmp_path):
    # Linux mounts an ISO 9660 CD without Joliet names in lower case (mount option
    # map=normal, the default), while the DICOMDIR keeps PT000000/ST000000/...
    media = _dicom_media(tmp_path)
    for folder in sorted(media.rglob("*"), key=lambda p: -len(p.parts)):
        if folder.name != "DICOMDIR":
            folder.rename(folder.with_name(folder.name.lower()))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SkippedFileWarning)
        with pytest.raises(LayoutError) as caught:
            read_dicom_series(media)
    assert f"series 1 (CT, 3 images) in {media / 'pt000000' / 'st000000' / 'se000000'};" in str(
        caught.value
    )


def test_a_folder_of_series_folders_and_a_note_lists_the_subfolders(tmp_path):
    # Before: only a folder holding no file at all listed its subfolders; one note beside
    # them (a README, TCIA's metadata.csv) hid them.
    for name in ("CT", "PET"):
        (tmp_path / name).mkdir()
        _write_slice(tmp_path / name / "s0.dcm", position=(0.0, 0.0, 0.0))
    (tmp_path / "README.txt").write_text("exported 2020-01-01\n")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SkippedFileWarning)
        with pytest.raises(LayoutError, match=r"subfolders: CT, PET\): pass the folder of one"):
            read_dicom_series(tmp_path)


def test_lctsc_leaves_out_a_patient_moved_to_the_drives_trash(tmp_path):
    # A patient deleted on a removable drive goes to <drive>/.Trash-1000/files (Linux;
    # macOS: .Trashes). Before: the header walk went into hidden folders and the deleted
    # patient was a case again, silently; the prepared dataset's source record, which
    # leaves hidden folders out as "no builder reads them", did not notice either.
    from etils import epath

    from kseg.phantoms.lctsc import write_lctsc
    from tfds_builders.lctsc.layout import tcia_cases

    root = write_lctsc(tmp_path, num_patients=2, num_test_patients=0, num_slices=2, size=16)
    trash = root / ".Trash-1000" / "files"
    trash.mkdir(parents=True)
    (root / "LCTSC" / "LCTSC-Train-S2-001").rename(trash / "LCTSC-Train-S2-001")
    cases = tcia_cases(epath.Path(root))
    assert [case.patient_id for case in cases] == ["LCTSC-Train-S1-001"]


@pytest.fixture(scope="module")
def lctsc_case():
    from kseg.io import Volume
    from kseg.phantoms.lctsc import lctsc_phantom_case

    phantom_case = lctsc_phantom_case(2, num_slices=10, size=48, seed=5)
    volume = Volume(phantom_case.phantom.hu, np.diag([2.5, 9.0, 9.0, 1.0]), "p")
    return volume, phantom_case.lctsc_labels()


@pytest.mark.parametrize("flips", [(), ("z",), ("y", "x"), ("z", "y", "x")],
                         ids=lambda f: "+".join(f) or "as_stored")
def test_npz_mask_stored_with_rows_and_columns_swapped_is_aligned(lctsc_case, flips, tmp_path):
    # nibabel's (x, y, z) array moved slice-first with transpose(2, 0, 1), or rt-utils'
    # (y, x, z) mask with .T, is (z, x, y). Before: refused, "no orientation fits the CT"
    # (only the eight flips were tried), though the data tell the swap as clearly.
    from kseg.io import read_aligned_npz_mask

    volume, truth = lctsc_case
    axes = tuple("zyx".index(axis) for axis in flips)
    np.savez(tmp_path / "mask.npz", mask=np.swapaxes(np.flip(truth, axis=axes), 1, 2))
    alignment = read_aligned_npz_mask(tmp_path / "mask.npz", volume)
    assert alignment.transposed and alignment.flipped_axes == flips
    np.testing.assert_array_equal(alignment.mask, truth)
    assert len(alignment.scores) == 16


def test_npz_mask_of_non_square_slices_stored_swapped_is_aligned(lctsc_case):
    # Slices of 48 x 40 pixels, mask stored 40 x 48: before, "mask shape differs".
    from kseg.io import Volume, align_mask_to_volume

    volume, truth = lctsc_case
    narrow = Volume(volume.array[:, :, 4:44], volume.affine, "p")
    alignment = align_mask_to_volume(np.swapaxes(truth[:, :, 4:44], 1, 2), narrow)
    assert alignment.transposed and alignment.flipped_axes == ()
    np.testing.assert_array_equal(alignment.mask, truth[:, :, 4:44])
    assert len(alignment.scores) == 8  # only the swap fits the shape


def test_real_ct_lung_mask_stored_x_first_is_aligned_back(shared_data):
    # The real TotalSegmentator CT (cropped to square slices) and its lung lobes, the mask
    # moved slice-first from nibabel's (x, y, z) with transpose(2, 0, 1): (z, x, y).
    import nibabel as nib

    from kseg.io import Volume, align_mask_to_volume

    folder = shared_data / "totalseg-ct"
    ct = np.asarray(nib.load(folder / "example_ct_sm.nii.gz").dataobj)
    seg = np.asarray(nib.load(folder / "example_seg.nii.gz").dataobj)
    hu, lungs = ct[10:111].transpose(2, 1, 0), np.isin(seg[10:111], [10, 11, 12, 13, 14])
    volume = Volume(hu, np.eye(4), "totalseg-example")
    alignment = align_mask_to_volume(lungs.astype(np.uint8).transpose(2, 0, 1), volume)
    assert alignment.transposed and alignment.flipped_axes == ()
    np.testing.assert_array_equal(alignment.mask, lungs.transpose(2, 1, 0))


def test_lctsc_reads_patient_folders_linked_in_and_ends_a_link_loop(tmp_path):
    # A subset of patients assembled from links (ln -s /data/LCTSC/<patient> subset/),
    # or a patient kept on another disk. Before: the header walk did not enter linked
    # folders, so a linked patient was left out without a word (the prepared dataset's
    # source record follows them, "as the builders read through them").
    from etils import epath

    from kseg.phantoms.lctsc import write_lctsc
    from tfds_builders.lctsc.layout import tcia_cases

    store = write_lctsc(tmp_path / "store", num_patients=2, num_test_patients=0,
                        num_slices=2, size=16)  # fmt: skip
    subset = tmp_path / "subset" / "LCTSC"
    subset.mkdir(parents=True)
    (store / "LCTSC" / "LCTSC-Train-S1-001").rename(subset / "LCTSC-Train-S1-001")
    (subset / "LCTSC-Train-S2-001").symlink_to(store / "LCTSC" / "LCTSC-Train-S2-001")
    (subset / "LCTSC-Train-S1-001" / "up").symlink_to(subset)  # a loop: walked once
    cases = tcia_cases(epath.Path(tmp_path / "subset"))
    assert [case.patient_id for case in cases] == ["LCTSC-Train-S1-001", "LCTSC-Train-S2-001"]
    assert str(cases[1].ct_files[0]).startswith(str(subset / "LCTSC-Train-S2-001"))


def _generic_xray(root, names, subfolder=None):
    """The X-ray builder's generic layout: images/<name>.png with masks/<name>.png."""
    from PIL import Image

    for name in names:
        image, mask = np.full((8, 8), 100, np.uint8), np.zeros((8, 8), np.uint8)
        mask[2:6, 2:6] = 255
        where = root / "images" / (subfolder or "")
        where.mkdir(parents=True, exist_ok=True)
        (root / "masks").mkdir(exist_ok=True)
        Image.fromarray(image).save(where / f"{name}.png")
        if subfolder is None:
            Image.fromarray(mask).save(root / "masks" / f"{name}.png")


def test_xray_images_in_a_subfolder_of_images_are_named_not_dropped(tmp_path):
    # images/ holding radiographs and a subfolder of more (a batch, a class): before, the
    # subfolder's images were left out without a word; with nothing but subfolders the
    # error said only "holds no images".
    from tfds_builders.xray import Builder
    from tfds_builders.xray.layout import find_records

    config = Builder.builder_configs["generic"]
    _generic_xray(tmp_path, ["a"])
    _generic_xray(tmp_path, ["b"], subfolder="tb")
    with pytest.warns(SkippedFileWarning, match=r"images: skipped 1 subfolder\(s\), .*: tb"):
        records = find_records(tmp_path, config)
    assert [record.image_id for record in records] == ["a.png"]
    (tmp_path / "images" / "a.png").rename(tmp_path / "images" / "tb" / "a.png")
    with pytest.raises(LayoutError, match=r"holds no images, only 1 subfolder\(s\), .*: tb"):
        find_records(tmp_path, config)


def test_lctsc_kept_in_a_git_annex_dataset_reads_each_file_once(tmp_path):
    # DataLad / git-annex keep every file as a link into .git/annex/objects. Before, the
    # walk also went into .git and found each slice and structure set a second time under
    # its content key: "references CT series ..., which .git/annex/objects/... references
    # too".
    import hashlib

    from etils import epath

    from kseg.phantoms.lctsc import write_lctsc
    from tfds_builders.lctsc.layout import tcia_cases

    root = write_lctsc(tmp_path, num_patients=1, num_test_patients=0, num_slices=2, size=16)
    for path in [p for p in (root / "LCTSC").rglob("*") if p.is_file()]:
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        key = f"SHA256E-s{path.stat().st_size}--{digest}{path.suffix}"
        stored = root / ".git" / "annex" / "objects" / digest[:2] / digest[2:4] / key / key
        stored.parent.mkdir(parents=True)
        path.rename(stored)
        path.symlink_to(stored)
    (case,) = tcia_cases(epath.Path(root))
    assert ".git" not in case.mask_file and not any(".git" in f for f in case.ct_files)


def test_deidentify_a_git_annex_dataset_writes_each_file_once(tmp_path):
    # DataLad / git-annex: each file a link into .git/annex/objects. Before, the walk went
    # into .git: with layout="uids" every file failed as a duplicate SOPInstanceUID of
    # itself, with layout="mirror" the de-identified copies were written twice, once under
    # .git/annex/objects named by the SHA-256 of the identified original.
    import hashlib

    import pydicom.data

    from kseg.io import deidentify

    src = tmp_path / "src"
    (src / "ct").mkdir(parents=True)
    original = pydicom.data.get_testdata_file("CT_small.dcm")
    data = open(original, "rb").read()
    digest = hashlib.sha256(data).hexdigest()
    key = f"SHA256E-s{len(data)}--{digest}.dcm"
    stored = src / ".git" / "annex" / "objects" / digest[:2] / digest[2:4] / key / key
    stored.parent.mkdir(parents=True)
    stored.write_bytes(data)
    (src / "ct" / "1.dcm").symlink_to(stored)
    for layout in ("uids", "mirror"):
        report = deidentify(src, tmp_path / layout, layout=layout, progress=False)
        assert not report.failed and [record.source for record in report.files] == ["ct/1.dcm"]
        assert report.skipped == [(".git/", report.skipped[0][1])]
        written = [p for p in (tmp_path / layout).rglob("*") if p.is_file()]
        assert len(written) == 1 and ".git" not in str(written[0])


def test_xray_image_name_that_is_not_utf8_is_refused_before_generating(tmp_path):
    # "Röntgen.png" from a zip made on Windows, unpacked with unzip: its name's bytes are
    # cp1252, which Python hands over as a lone surrogate. Before: TFDS failed part way
    # through a split ("Error while serializing feature `patient_id`", UnicodeEncodeError),
    # the file unnamed.
    import os

    from tfds_builders.xray import Builder
    from tfds_builders.xray.layout import find_records

    _generic_xray(tmp_path, ["a"])
    raw = os.fsdecode(b"r\xf6ntgen")
    _generic_xray(tmp_path, [raw])
    with pytest.raises(LayoutError) as caught:
        find_records(tmp_path, Builder.builder_configs["generic"])
    message = str(caught.value)
    assert message.startswith(f"{tmp_path / 'images'}/r\\xf6ntgen.png: the file name b'r\\xf6n")
    message.encode("utf-8")  # the message itself is text: a log file can take it


@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-le", "utf-32"])
def test_msd_dataset_json_saved_as_utf16_by_powershell_is_read(tmp_path, encoding):
    # Windows PowerShell 5 writes "... | ConvertTo-Json > dataset.json" as UTF-16 LE with a
    # byte order mark, Notepad's "Unicode" too. Before: refused, "expected the MSD
    # dataset.json with a 'training' list (UnicodeDecodeError('utf-8', b'\xff\xfe{...".
    from etils import epath

    from kseg.phantoms.msd_spleen import write_msd_spleen
    from tfds_builders.msd_spleen.layout import cases_from_dataset_json, task_folder

    task = task_folder(epath.Path(write_msd_spleen(tmp_path, num_training=2, num_test=1,
                                                   shape=(2, 4, 4), apple_double=False)))
    listing = (task / "dataset.json").read_text()
    expected = cases_from_dataset_json(task)
    (task / "dataset.json").write_bytes(listing.encode(encoding))
    assert cases_from_dataset_json(task) == expected


def test_xray_dicom_radiographs_named_without_a_suffix_are_images(tmp_path):
    # PACS and CD exports name DICOM files IM000001 or by their SOPInstanceUID
    # (1.2.826....320, whose last component reads as a suffix); read_radiograph reads them by
    # their DICM marker. Before: the generic layout refused them, "is not a supported image
    # file ... expected suffixes .png, ..., .dcm".
    from PIL import Image
    from pydicom.uid import DigitalXRayImageStorageForPresentation as DX

    from kseg.io.dicom_writer import new_dataset, set_grayscale_pixels, write_dataset
    from tfds_builders.xray import Builder
    from tfds_builders.xray.layout import find_records
    from tfds_builders.xray.radiographs import read_record_image

    config = Builder.builder_configs["generic"]
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    stored = np.arange(64, dtype=np.uint16).reshape(8, 8) * 60
    mask = np.zeros((8, 8), np.uint8)
    mask[2:6, 2:6] = 255
    for name in ("IM000001", "1.2.826.0.1.3680043.2.1125.320"):
        dataset = new_dataset(DX, f"2.25.{len(name)}", implementation_version_name="TEST")
        dataset.Modality, dataset.PhotometricInterpretation = "DX", "MONOCHROME2"
        set_grayscale_pixels(dataset, stored, bits_stored=12)
        write_dataset(dataset, tmp_path / "images" / name)
        Image.fromarray(mask).save(tmp_path / "masks" / f"{name}.png")
    records = find_records(tmp_path, config)
    assert [(r.image_id, r.masks[0].name) for r in records] == [
        ("1.2.826.0.1.3680043.2.1125.320", "1.2.826.0.1.3680043.2.1125.320.png"),
        ("IM000001", "IM000001.png"),
    ]
    image, _ = read_record_image(records[1], config)
    assert image.shape == (8, 8)


_LFS_POINTER = (
    "version https://git-lfs.github.com/spec/v1\n"
    "oid sha256:4d7a214614ab2935c943f9e0ff69d22eadbb8f32b1258daaa5e2ca24d17e2393\n"
    "size 7340032\n"
)


def test_version_control_pointers_are_named_as_such_by_every_reader(tmp_path):
    # A dataset cloned without its Git LFS objects (GitHub, Hugging Face) holds a text
    # pointer in place of each file; a DataLad dataset whose content was not fetched holds
    # /annex/objects/<key> pointers where it is unlocked. Before: "cannot be read as NIfTI
    # (... not a gzip file ...)", "cannot identify image file", "not DICOM" / "no DICOM image
    # files found": true, but silent on the cause and the cure.
    from kseg.errors import UnreadableFileError
    from kseg.io import (
        LabelRule,
        read_dicom_image,
        read_jsrt_image,
        read_labels,
        read_nifti,
        read_npz_mask,
        read_radiograph,
        read_rtstruct,
    )

    annex = "/annex/objects/SHA256E-s7340032--4d7a2146.nii.gz\n"
    readers = [
        ("ct.nii.gz", _LFS_POINTER, read_nifti), ("ct2.nii.gz", annex, read_nifti),
        ("mask.png", _LFS_POINTER, lambda p: read_labels(p, LabelRule())),
        ("cxr.png", _LFS_POINTER, read_radiograph), ("cxr.dcm", _LFS_POINTER, read_dicom_image),
        ("JPCLN001.IMG", _LFS_POINTER, read_jsrt_image), ("m.npz", _LFS_POINTER, read_npz_mask),
        ("rs.dcm", _LFS_POINTER, read_rtstruct),
    ]  # fmt: skip
    for name, text, reader in readers:
        (tmp_path / name).write_text(text)
        with pytest.raises(UnreadableFileError) as caught:
            reader(tmp_path / name)
        kind = "Git LFS" if text is _LFS_POINTER else "git-annex"
        assert f"it is a {kind} pointer file, not the data" in str(caught.value), name
    from etils import epath

    from kseg.phantoms.msd_spleen import write_msd_spleen
    from tfds_builders.msd_spleen.layout import cases_from_dataset_json, task_folder

    task = task_folder(epath.Path(write_msd_spleen(tmp_path / "msd", num_training=1, num_test=0,
                                                   shape=(2, 4, 4), apple_double=False)))
    (task / "dataset.json").write_text(_LFS_POINTER)
    with pytest.raises(UnreadableFileError, match="it is a Git LFS pointer file, not the data"):
        cases_from_dataset_json(task)
    # A fetch cut short: three slices here, the fourth still a pointer. Skipped as "not
    # DICOM", it left a three-slice volume and a warning; it is refused as a file cut short is.
    series = tmp_path / "series"
    series.mkdir()
    for k in range(3):
        _write_slice(series / f"1-00{k}.dcm", position=(0.0, 0.0, 2.5 * k))
    (series / "1-003.dcm").write_text(_LFS_POINTER)
    with pytest.raises(UnreadableFileError, match=r"1-003\.dcm: is not the file it stands for; "
                       "it is a Git LFS pointer file"):
        read_dicom_series(series)


def test_a_git_annex_dataset_not_fetched_is_named_by_each_layout(tmp_path):
    # DataLad's default (locked) files are links into .git/annex/objects that lead nowhere
    # until `datalad get`. Before: "is a link to ..., which does not exist" (DICOM folder,
    # X-ray images, LCTSC headers) or "listed ... but missing" (MSD): the cure unsaid.
    from etils import epath

    from kseg.errors import UnreadableFileError
    from kseg.phantoms.msd_spleen import write_msd_spleen
    from tfds_builders.lctsc.layout import tcia_cases
    from tfds_builders.msd_spleen.layout import cases_from_dataset_json, task_folder
    from tfds_builders.xray import Builder
    from tfds_builders.xray.layout import find_records

    target = "../.git/annex/objects/Xk/7G/SHA256E-s1958--ed0f/SHA256E-s1958--ed0f"
    note = "it is a git-annex link whose content was not fetched (run `datalad get`"
    series = tmp_path / "series"
    series.mkdir()
    (series / "1-001.dcm").symlink_to(target)
    with pytest.raises(UnreadableFileError, match="which does not exist") as caught:
        read_dicom_series(series)
    assert note in str(caught.value)
    with pytest.raises(UnreadableFileError) as caught:
        tcia_cases(epath.Path(series))
    assert note in str(caught.value)
    _generic_xray(tmp_path / "xray", ["a"])
    (tmp_path / "xray" / "images" / "b.png").symlink_to(target)
    with pytest.raises(UnreadableFileError) as caught:
        find_records(tmp_path / "xray", Builder.builder_configs["generic"])
    assert note in str(caught.value)
    task = task_folder(epath.Path(write_msd_spleen(tmp_path / "msd", num_training=1, num_test=0,
                                                   shape=(2, 4, 4), apple_double=False)))
    (image,) = pathlib.Path(task, "imagesTr").iterdir()
    image.unlink()
    image.symlink_to(target)
    with pytest.raises(LayoutError, match="listed in .* but missing; it is a git-annex link"):
        cases_from_dataset_json(task)
