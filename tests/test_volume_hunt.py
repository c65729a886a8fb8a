"""NIfTI volumes as users and archives ship them, through kseg's readers, writers and the
3D preprocessing chain: each test a file written directly with nibabel and checked against
nibabel, numpy or a hand-worked case."""

import json
import pathlib
import subprocess
import sys
import warnings

import nibabel as nib
import numpy as np
import pytest

from kseg.data.preprocess3d import preprocess_volume
from kseg.errors import GeometryError, UnreadableFileError
from kseg.geometry import resample
from kseg.io import Volume, read_nifti, write_nifti
from kseg.io.nifti import NonFiniteVoxelWarning, UnknownOrientationWarning
from kseg.phantoms.msd_spleen import write_msd_spleen
from tfds_builders.msd_spleen.layout import cases_from_dataset_json, task_folder


def _circular_fov_ct(path, outside=np.nan):
    """A float CT whose reconstruction circle is filled by the body (40 HU, a 300 HU block),
    with ``outside`` in the square's corners, as converters write NaN outside the field of
    view; LPS-stored like a DICOM conversion, 4 mm pixels, 5 mm slices."""
    k, j, i = np.mgrid[0:8, 0:32, 0:32]
    inside = (j - 15.5) ** 2 + (i - 15.5) ** 2 <= 16.0**2
    hu = np.where(inside, 40.0, outside).astype(np.float32)
    hu[:, 12:20, 12:20] = 300.0
    affine = np.diag([-4.0, -4.0, 5.0, 1.0])  # nibabel's (i, j, k): x to L, y to P
    nib.save(nib.Nifti1Image(hu.transpose(2, 1, 0), affine), path)
    return path


@pytest.mark.parametrize("outside", [np.nan, np.inf, -np.inf])
def test_non_finite_voxels_are_refused_before_they_reach_a_model(tmp_path, outside):
    # The body fills the circle, so its crop box keeps the NaN corners; resampling spread
    # each NaN to its neighbours (a quarter of the prepared voxels were NaN or inf), which a 3D
    # model turns into NaN over its receptive field and kseg predict into background.
    path = _circular_fov_ct(tmp_path / "ct.nii.gz", outside)
    with pytest.warns(NonFiniteVoxelWarning):
        ct = read_nifti(path)
    with pytest.raises(UnreadableFileError, match=r"ct\.nii\.gz: 1696 of 8192 voxels are NaN"):
        preprocess_volume(ct)
    # the remedy the message gives works: background in the corners, nothing refused
    filled = ct.with_array(np.nan_to_num(ct.array, nan=-1024.0, posinf=-1024.0, neginf=-1024.0))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        prepared = preprocess_volume(filled)
    assert np.isfinite(prepared.image.array).all()


def test_prediction_on_a_file_without_orientation_is_written_without_one(tmp_path):
    # nibabel.Nifti1Image(array, None), the usual way to save a numpy array, writes
    # sform_code = qform_code = 0: voxel sizes, no position. kseg wrote predictions on such
    # a file with sform_code 1 and nibabel's guessed affine (origin at the centre), which
    # ITK-based viewers (origin 0 for such files) placed half a field of view away.
    ct = np.random.default_rng(0).integers(-1000, 1000, (6, 5, 4)).astype(np.int16)
    source = nib.Nifti1Image(ct, None)
    source.header.set_zooms((0.8, 0.7, 2.5))
    nib.save(source, tmp_path / "case.nii.gz")
    with pytest.warns(UnknownOrientationWarning):
        image = read_nifti(tmp_path / "case.nii.gz")
    write_nifti(image.with_array((image.array > 0).astype(np.uint8)), tmp_path / "pred.nii.gz")

    written, stored = nib.load(tmp_path / "pred.nii.gz"), nib.load(tmp_path / "case.nii.gz")
    assert int(written.header["sform_code"]) == int(written.header["qform_code"]) == 0
    np.testing.assert_array_equal(written.header.get_zooms(), stored.header.get_zooms())
    np.testing.assert_array_equal(written.affine, stored.affine)
    np.testing.assert_array_equal(np.asarray(written.dataobj), ct > 0)

    # once the grid is no longer the file's, its affine is kseg's own and is written
    moved = resample(image, 1.0)
    write_nifti(moved, tmp_path / "resampled.nii.gz")
    resampled = nib.load(tmp_path / "resampled.nii.gz")
    assert int(resampled.header["sform_code"]) == 1
    np.testing.assert_allclose(resampled.affine[:, [2, 1, 0, 3]], moved.affine, atol=1e-5)


def test_dataset_json_saved_with_a_byte_order_mark_is_read(tmp_path):
    # kseg's own LayoutError tells the user to add unlisted volumes to dataset.json; Windows
    # Notepad (before 2019) and PowerShell 5's "Out-File -Encoding utf8" save it with a BOM,
    # which json.loads refused ("Unexpected UTF-8 BOM") and the builder with it.
    task = write_msd_spleen(tmp_path, num_training=2, num_test=1, shape=(2, 8, 8))
    listing = json.loads((task / "dataset.json").read_text())
    (task / "dataset.json").write_bytes(b"\xef\xbb\xbf" + json.dumps(listing).encode())
    labelled, unlabelled = cases_from_dataset_json(task_folder(tmp_path))
    assert [case.image.name for case in labelled] == [
        pathlib.PurePosixPath(entry["image"]).name for entry in listing["training"]
    ]
    assert [case.image.name for case in unlabelled] == [
        pathlib.PurePosixPath(entry).name for entry in listing["test"]
    ]


@pytest.mark.parametrize(
    "column, needle", [([0.0, 0.0, 0.0], "singular"), ([np.nan, 0.0, 1.0], "NaN or infinity")]
)
def test_writing_an_affine_no_reader_could_use_is_a_geometry_error(tmp_path, column, needle):
    # README: singular or non-finite affines are a GeometryError for write_nifti too; it
    # raised nibabel's HeaderDataError ("Could not decompose affine"), naming no file.
    affine = np.diag([2.0, 0.8, 0.8, 1.0])
    affine[:3, 0] = column
    with pytest.raises(GeometryError, match=needle) as raised, warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # numpy's det of a NaN matrix
        write_nifti(Volume(np.zeros((2, 3, 4), np.uint8), affine, "p"), tmp_path / "p.nii.gz")
    assert "p.nii.gz" in str(raised.value)
    assert list(tmp_path.iterdir()) == []


def test_float16_probabilities_are_written_exactly_as_float32(tmp_path):
    # A mixed_float16 model's probabilities: nibabel raised HeaderDataError('data dtype
    # "float16" not supported'), naming no file. float32 holds every float16 exactly.
    probabilities = np.random.default_rng(2).random((3, 4, 5)).astype(np.float16)
    path = tmp_path / "probabilities.nii.gz"
    write_nifti(Volume(probabilities, np.diag([2.0, 0.8, 0.8, 1.0]), "p"), path)
    stored = np.asarray(nib.load(path).dataobj)
    assert stored.dtype == np.float32
    np.testing.assert_array_equal(stored, probabilities.astype(np.float32).transpose(2, 1, 0))


def test_a_nii_read_and_saved_back_in_place_keeps_its_voxels(tmp_path):
    # nibabel maps an uncompressed .nii into memory by default, and kseg's array was a view
    # of that mapping: "read it, fix the header, save it back" with nibabel truncated the
    # file under the view and the process died of SIGBUS, the file left cut short. Run in a
    # child process so that the old behaviour fails the test instead of killing pytest.
    voxels = np.arange(32 * 32 * 32, dtype=np.int16).reshape(32, 32, 32)
    path = tmp_path / "ct.nii"
    nib.save(nib.Nifti1Image(voxels, np.eye(4)), path)
    script = (
        "import sys, numpy as np, nibabel as nib\n"
        "from kseg.io import read_nifti\n"
        "ct = read_nifti(sys.argv[1])\n"
        "nib.save(nib.Nifti1Image(ct.array.transpose(2, 1, 0), np.diag([2, 2, 2, 1.0])),"
        " sys.argv[1])\n"
    )
    done = subprocess.run([sys.executable, "-c", script, str(path)], capture_output=True,
                          timeout=120)  # fmt: skip
    assert done.returncode == 0, (done.returncode, done.stderr.decode()[-500:])
    np.testing.assert_array_equal(np.asarray(nib.load(path).dataobj), voxels)


@pytest.mark.parametrize("name", ["spleen_5.Nii.Gz", "SPLEEN_5.NII.GZ", "spleen_5.NII"])
def test_nifti_suffix_in_any_case_is_read_and_left_out_of_the_patient(tmp_path, name):
    # kseg predict takes suffixes in any case (README: ".NII.GZ"); nib.load lower-cased a
    # mixed-case suffix to find the file and reported "No such file ... spleen_5.nii.Gz"
    # for a file that is there. An upper-case one was read, its suffix kept in patient_id.
    voxels = np.arange(24, dtype=np.int16).reshape(2, 3, 4)
    image = nib.Nifti1Image(voxels, np.diag([2.0, 3.0, 4.0, 1.0]))
    plain = tmp_path / ("plain.nii" if name.lower().endswith(".nii") else "plain.nii.gz")
    nib.save(image, plain)
    plain.rename(tmp_path / name)
    volume = read_nifti(tmp_path / name)
    np.testing.assert_array_equal(volume.array, voxels.transpose(2, 1, 0))
    assert volume.patient_id == name.split(".")[0]
    assert volume.source_files == (str(tmp_path / name),)


@pytest.mark.parametrize("change", [{"test": None}, {"training": None}, {"test": 3}])
def test_dataset_json_lists_of_the_wrong_kind_are_named_or_empty(tmp_path, change):
    # "test": null (json.dump of None for a set without test cases) or "training": null
    # raised a bare TypeError ("'NoneType' object is not iterable") naming no file.
    task = write_msd_spleen(tmp_path, num_training=2, num_test=0, shape=(2, 8, 8))
    listing = {**json.loads((task / "dataset.json").read_text()), **change}
    (task / "dataset.json").write_text(json.dumps(listing))
    if change == {"test": None}:
        labelled, unlabelled = cases_from_dataset_json(task_folder(tmp_path))
        assert (len(labelled), unlabelled) == (2, [])
    else:
        with pytest.raises(UnreadableFileError, match=r"dataset\.json.*must be lists"):
            cases_from_dataset_json(task_folder(tmp_path))


@pytest.mark.parametrize("stored, named", [(".nii", "case.nii.gz"), (".nii.gz", "case.nii")])
def test_nifti_whose_suffix_lies_about_compression_is_read_by_its_bytes(tmp_path, stored, named):
    # An uncompressed .nii.gz (a browser that undid the server's gzip, a renamed file:
    # nibabel issues 898 and 966) was "not a gzip file", a gzipped .nii "Cannot work out
    # file type"; ITK-based tools read both. The MSD builder only takes .nii.gz names, so a
    # user could not even rename the file. Reference: nibabel on the file correctly named.
    voxels = np.random.default_rng(3).integers(-1000, 1000, (6, 5, 4)).astype(np.int16)
    image = nib.Nifti1Image(voxels, np.diag([0.7, 0.8, 2.5, 1.0]))
    image.header.set_slope_inter(2.0, -1024.0)
    nib.save(image, tmp_path / f"right{stored}")
    reference = nib.load(tmp_path / f"right{stored}")
    (tmp_path / named).write_bytes((tmp_path / f"right{stored}").read_bytes())
    volume = read_nifti(tmp_path / named)
    np.testing.assert_array_equal(volume.array, reference.get_fdata().transpose(2, 1, 0))
    np.testing.assert_allclose(volume.affine, reference.affine[:, [2, 1, 0, 3]])
