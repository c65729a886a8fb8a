"""Session 24, geometry / NIfTI / DICOM writing: failures a real user or archive can hit,
each against an independent reference (numpy index arithmetic, nibabel, pydicom)."""

import gzip
import os
import warnings

import nibabel as nib
import numpy as np
import pydicom
import pytest

from kseg.data.preprocess3d import preprocess_volume
from kseg.errors import AlignmentError, GeometryError
from kseg.geometry import crop_foreground, orientation, reorient, resample, resample_to
from kseg.io import (
    Volume,
    read_dicom_seg,
    read_dicom_series,
    read_nifti,
    write_dicom_seg,
    write_nifti,
    write_rtstruct,
)
from kseg.io.rtstruct_writer import BlankSeriesUidWarning

# A DICOM-like grid: columns towards patient left, rows towards posterior (LPS), 2 mm slices.
_LPS = np.array(
    [
        [0.0, 0.0, -0.8, 40.0],
        [0.0, -0.8, 0.0, 30.0],
        [2.0, 0.0, 0.0, -50.0],
        [0.0, 0.0, 0.0, 1.0],
    ]
)


def _image_and_labels(shape=(4, 6, 7)):
    rng = np.random.default_rng(24)
    image = Volume(rng.normal(size=shape).astype(np.float32), _LPS, "p1", ("ct.nii.gz",))
    labels = rng.integers(0, 4, size=shape).astype(np.uint8)
    return image, labels


def _las_label(labels):
    """The label map as a LAS NIfTI holds it: rows flipped (anterior first), by hand."""
    affine = _LPS.copy()
    affine[:3, 1] = -_LPS[:3, 1]
    affine[:3, 3] = _LPS[:3, 3] + _LPS[:3, 1] * (labels.shape[1] - 1)
    return Volume(labels[:, ::-1, :].copy(), affine, "p1", ("label.nii.gz",))


def _x_first_label(labels):
    """The label map stored with its axes in (x, y, z) order: a transposed array."""
    affine = np.eye(4)
    affine[:3, :3] = _LPS[:3, :3][:, ::-1]
    affine[:3, 3] = _LPS[:3, 3]
    return Volume(labels.transpose(2, 1, 0).copy(), affine, "p1", ("label.nii.gz",))


@pytest.mark.parametrize("stored", [_las_label, _x_first_label])
def test_label_on_the_image_voxels_in_another_axis_order_is_taken(stored):
    image, labels = _image_and_labels()
    label = stored(labels)
    assert label.shape != image.shape or not np.allclose(label.affine, image.affine)
    prepared = preprocess_volume(image, label, orientation=None, spacing=None,
                                 crop_threshold=None)  # fmt: skip
    np.testing.assert_array_equal(prepared.label.array, labels)
    np.testing.assert_allclose(prepared.label.affine, image.affine)


def test_label_on_another_grid_is_still_refused():
    image, labels = _image_and_labels()
    label = _las_label(labels)
    shifted = label.affine.copy()
    shifted[:3, 3] += 0.4  # half a voxel off: another lattice, not another axis order
    with pytest.raises(AlignmentError, match=r"label.nii.gz: label affine differs"):
        preprocess_volume(image, Volume(label.array, shifted, "p1", ("label.nii.gz",)),
                          orientation=None, spacing=None, crop_threshold=None)  # fmt: skip
    finer = Volume(np.zeros((4, 12, 7), np.uint8), label.affine @ np.diag([1, 0.5, 1, 1]),
                   "p1", ("label.nii.gz",))  # fmt: skip
    with pytest.raises(AlignmentError, match=r"label.nii.gz: label shape"):
        preprocess_volume(image, finer, orientation=None, spacing=None, crop_threshold=None)


def test_crop_mask_volume_in_another_axis_order():
    image, labels = _image_and_labels()
    body = (labels == 3).astype(np.uint8)
    cropped, box = crop_foreground(image, mask=_x_first_label(body))
    z, y, x = np.nonzero(body)
    assert box == (slice(z.min(), z.max() + 1), slice(y.min(), y.max() + 1),
                   slice(x.min(), x.max() + 1))  # fmt: skip
    with pytest.raises(GeometryError, match="different grid"):
        crop_foreground(image, mask=Volume(body, _LPS @ np.diag([1, 1, 2, 1]), "p1"))


def _real_series_and_seg(shared_data, first=6, count=4):
    """``count`` consecutive slices of the shared DICOM series (decoding all 20 JPEG 2000
    slices costs seconds), the LAS NIfTI labels cut to the same slices, and the reference:
    each DICOM voxel's label through the two affines (nibabel's header vs pydicom's
    positions), a signed permutation with an integer offset."""
    folder = shared_data / "totalseg-ct"
    headers = {
        path: pydicom.dcmread(path, stop_before_pixels=True)
        for path in (folder / "ct_dicom").iterdir()
    }
    files = sorted(headers, key=lambda path: float(headers[path].ImagePositionPatient[2]))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ct = read_dicom_series(files[first : first + count])
    seg = read_nifti(folder / "ct_dicom_seg.nii.gz")  # LAS: slice k at the k-th lowest z
    affine = seg.affine.copy()
    affine[:3, 3] += affine[:3, 0] * first
    seg = Volume(seg.array[first : first + count].copy(), affine, "p1", seg.source_files)
    image = nib.load(folder / "ct_dicom_seg.nii.gz")
    to_seg = np.linalg.inv(image.affine) @ ct.affine[:, [2, 1, 0, 3]]
    to_seg = np.round(to_seg).astype(int)
    ijk = np.indices(ct.shape)[::-1].reshape(3, -1)  # (i, j, k) of every DICOM voxel
    nifti_index = to_seg[:3, :3] @ ijk + to_seg[:3, 3:]
    expected = np.asarray(image.dataobj)[tuple(nifti_index)].reshape(ct.shape)
    return ct, seg, expected


def test_real_las_nifti_labels_written_onto_their_lps_dicom_series(shared_data, tmp_path):
    pytest.importorskip("highdicom")
    ct, seg, expected = _real_series_and_seg(shared_data)
    liver = seg.with_array((seg.array == 5).astype(np.uint8))  # TotalSegmentator v2: liver
    assert expected.shape == ct.shape and (expected == 5).sum() > 1_000
    prepared = preprocess_volume(ct, seg, orientation=None, spacing=None, crop_threshold=None)
    np.testing.assert_array_equal(prepared.label.array, expected)
    with pytest.warns(BlankSeriesUidWarning):
        path = write_dicom_seg(liver, ct, tmp_path / "liver.seg.dcm", ["liver"])
    np.testing.assert_array_equal(read_dicom_seg(path, reference_series=ct).array,
                                  expected == 5)  # fmt: skip


@pytest.mark.parametrize("codes", [("L", "P", "S"), ("S", "A", "R"), ("I", "L", "P")])
def test_real_label_reoriented_by_nibabel_is_taken_back_exactly(shared_data, tmp_path, codes):
    folder = shared_data / "totalseg-ct"
    stored = nib.load(folder / "organs" / "liver.nii.gz")
    turn = nib.orientations.ornt_transform(
        nib.orientations.io_orientation(stored.affine), nib.orientations.axcodes2ornt(codes)
    )
    nib.save(stored.as_reoriented(turn), tmp_path / "liver.nii.gz")
    image = read_nifti(folder / "example_ct_sm.nii.gz")
    label = read_nifti(tmp_path / "liver.nii.gz")
    prepared = preprocess_volume(image, label, orientation=None, spacing=None,
                                 crop_threshold=None)  # fmt: skip
    expected = np.asarray(stored.dataobj).transpose(2, 1, 0)  # RAS file: (z, y, x) as stored
    np.testing.assert_array_equal(prepared.label.array, expected)


@pytest.mark.parametrize("name", ["OUT.NII.GZ", "case.Nii", "case.nii.GZ", "Case.Nii.Gz"])
def test_write_nifti_takes_upper_case_suffixes(tmp_path, name):
    image, labels = _image_and_labels()
    volume = image.with_array(labels)
    write_nifti(volume, tmp_path / name)
    assert os.listdir(tmp_path) == [name]  # no stray file under a lower-cased name
    data = (tmp_path / name).read_bytes()
    gzipped = name.lower().endswith(".gz")
    assert (data[:2] == b"\x1f\x8b") == gzipped
    back = nib.Nifti1Image.from_bytes(gzip.decompress(data) if gzipped else data)
    np.testing.assert_array_equal(np.asarray(back.dataobj).transpose(2, 1, 0), labels)
    np.testing.assert_allclose(back.affine, _LPS[:, [2, 1, 0, 3]], atol=1e-5)


@pytest.mark.parametrize(
    "values",
    [
        np.array([1 + 1e-12, 0.1, -1024.25, 123456789.123]),  # float64: a numpy result
        np.array([0, 1, 5, 2**40], np.int64),  # 64-bit ids beyond int32
    ],
)
def test_write_nifti_keeps_float64_and_large_int64_values(tmp_path, values):
    volume = Volume(values.reshape(1, 2, 2), np.eye(4), "p1")
    write_nifti(volume, tmp_path / "map.nii.gz")
    image = nib.load(tmp_path / "map.nii.gz")
    assert image.get_data_dtype() == values.dtype
    np.testing.assert_array_equal(np.asarray(image.dataobj).transpose(2, 1, 0), volume.array)


def test_nearest_resampling_of_float16_copies_values():
    values = np.random.default_rng(0).normal(size=(2, 3, 4)).astype(np.float16)
    volume = Volume(values, np.diag([2.0, 2.0, 2.0, 1.0]), "p1")
    # halving the spacing, corner-aligned: each voxel becomes a 2x2x2 block of itself
    expected = values.repeat(2, 0).repeat(2, 1).repeat(2, 2)
    fine = resample(volume, 1.0, order=0)
    assert fine.array.dtype == np.float16
    np.testing.assert_array_equal(fine.array, expected)
    same = resample_to(volume, volume.affine, volume.shape, order=0, fill=-1024)
    np.testing.assert_array_equal(same.array, values)


def _blank_study_series(folder):
    from test_writer_hunt import _series

    def blank(ds):
        ds.StudyInstanceUID = ""
        del ds.SeriesInstanceUID

    return _series(folder, blank)


def test_seg_and_rtstruct_of_a_series_without_study_uid_share_one_study(tmp_path):
    pytest.importorskip("highdicom")
    ct = _blank_study_series(tmp_path / "ct")
    labels = np.zeros(ct.shape, np.uint8)
    labels[1:4, 1:3, 1:5] = 1
    with pytest.warns(BlankSeriesUidWarning, match="the same for every RTSTRUCT and SEG"):
        seg_path = write_dicom_seg(labels, ct, tmp_path / "a.seg.dcm", ["organ"])
    with pytest.warns(BlankSeriesUidWarning, match="the same for every RTSTRUCT and SEG"):
        rt_path = write_rtstruct(labels, ct, tmp_path / "a.rtstruct.dcm", roi_names=["organ"])
    seg, rt = pydicom.dcmread(seg_path), pydicom.dcmread(rt_path)
    assert seg.StudyInstanceUID and seg.StudyInstanceUID == rt.StudyInstanceUID
    (frame,) = rt.ReferencedFrameOfReferenceSequence
    (study,) = frame.RTReferencedStudySequence
    assert study.ReferencedSOPInstanceUID == rt.StudyInstanceUID
    (rt_series,) = study.RTReferencedSeriesSequence
    (seg_series,) = seg.ReferencedSeriesSequence
    assert rt_series.SeriesInstanceUID == seg_series.SeriesInstanceUID
    # a second SEG of the series lands in the same study too
    with pytest.warns(BlankSeriesUidWarning):
        again = write_dicom_seg(labels, ct, tmp_path / "b.seg.dcm", ["organ"])
    assert pydicom.dcmread(again).StudyInstanceUID == seg.StudyInstanceUID


@pytest.mark.parametrize("blank", [True, False])
def test_seg_of_a_series_without_frame_of_reference_is_refused_naming_it(tmp_path, blank):
    pytest.importorskip("highdicom")
    from test_writer_hunt import _series

    def drop(ds):
        if blank:
            ds.FrameOfReferenceUID = ""  # as some anonymisers leave it
        else:
            del ds.FrameOfReferenceUID

    ct = _series(tmp_path / "ct", drop)
    labels = np.zeros(ct.shape, np.uint8)
    labels[1:3, 1:3, 1:4] = 1
    with pytest.raises(ValueError, match=r"ct\) has no FrameOfReferenceUID"):
        write_dicom_seg(labels, ct, tmp_path / "a.seg.dcm", ["organ"])
    assert not (tmp_path / "a.seg.dcm").exists()


def _contours_on_their_images(path, files):
    """Every contour of an RTSTRUCT against the image it references, read with pydicom:
    the distance of its points from that image's plane, in mm (0 when it is drawn there)."""
    rt = pydicom.dcmread(path)
    images = {ds.SOPInstanceUID: ds for ds in map(pydicom.dcmread, files)}
    distances = []
    for roi in rt.ROIContourSequence:
        for contour in roi.ContourSequence:
            (image,) = contour.ContourImageSequence
            ds = images[image.ReferencedSOPInstanceUID]
            normal = np.cross(*np.reshape(np.asarray(ds.ImageOrientationPatient, float), (2, 3)))
            points = np.reshape(np.asarray(contour.ContourData, float), (-1, 3))
            distances.append(np.abs((points - np.asarray(ds.ImagePositionPatient)) @ normal))
    return np.concatenate(distances)


@pytest.mark.parametrize("step", ["reoriented feet first", "cropped"])
def test_rtstruct_on_a_reoriented_or_cropped_series_references_the_right_slices(
    tmp_path, step
):
    from test_io_dicom import _axial_series

    (tmp_path / "ct").mkdir()
    files = _axial_series(tmp_path / "ct", [0.0, 2.5, 5.0, 7.5, 10.0])
    ct = read_dicom_series(tmp_path / "ct")
    labels = np.zeros(ct.shape, np.uint8)
    labels[1:4, 1:3, 1:5] = 1
    if step == "cropped":
        series, box = crop_foreground(ct, mask=labels)
        labels = labels[box]
    else:
        series = reorient(ct, "LPI")  # slices now run head to feet
        labels = labels[::-1]
    path = write_rtstruct(labels, series, tmp_path / "rs.dcm", roi_names=["organ"])
    assert _contours_on_their_images(path, files).max() < 1e-3


def test_seg_on_an_in_plane_cropped_series_is_refused_naming_a_file(tmp_path):
    pytest.importorskip("highdicom")
    from test_io_dicom import _axial_series

    (tmp_path / "ct").mkdir()
    _axial_series(tmp_path / "ct", [0.0, 2.5, 5.0])
    ct = read_dicom_series(tmp_path / "ct")
    labels = np.zeros(ct.shape, np.uint8)
    labels[1, 1:3, 1:5] = 1
    body, box = crop_foreground(ct, mask=labels)
    with pytest.raises(ValueError, match=r"s01.dcm: its image is 4 x 6 pixels, reference_series 2"):
        write_dicom_seg(labels[box], body, tmp_path / "a.seg.dcm", ["organ"])
    assert not (tmp_path / "a.seg.dcm").exists()


@pytest.mark.parametrize(
    "argument", [{"algorithm_version": "v" * 70}, {"series_description": "Lungs\\Heart"}]
)
def test_seg_text_arguments_dicom_cannot_hold_are_refused_naming_them(tmp_path, argument):
    pytest.importorskip("highdicom")
    from test_io_dicom import _axial_series

    (tmp_path / "ct").mkdir()
    _axial_series(tmp_path / "ct", [0.0, 2.5])
    ct = read_dicom_series(tmp_path / "ct")
    labels = np.ones(ct.shape, np.uint8)
    (name,) = argument
    with pytest.raises(ValueError, match=name):
        write_dicom_seg(labels, ct, tmp_path / "a.seg.dcm", ["organ"], **argument)
    assert not (tmp_path / "a.seg.dcm").exists()


def test_seg_and_rtstruct_on_a_reoriented_enhanced_ct_land_on_their_frames(tmp_path):
    pytest.importorskip("highdicom")
    from test_enhanced_references import _enhanced_ct

    from kseg.io import rasterize_rtstruct

    _, ct, _, _ = _enhanced_ct(tmp_path)  # one multi-frame file, frames shuffled in it
    codes = orientation(ct)
    turned = reorient(ct, codes[:2] + {"S": "I", "I": "S"}[codes[2]])  # slices reversed
    labels = np.zeros(ct.shape, np.uint8)
    labels[0, 1:3, 1:3] = 1
    labels[2, 0, 0] = 1
    seg = write_dicom_seg(labels[::-1], turned, tmp_path / "a.seg.dcm", ["organ"])
    np.testing.assert_array_equal(read_dicom_seg(seg, reference_series=ct).array, labels)
    rt = write_rtstruct(labels[::-1], turned, tmp_path / "a.rt.dcm", roi_names=["organ"])
    np.testing.assert_array_equal(rasterize_rtstruct(rt, ct)["organ"], labels)


@pytest.mark.parametrize("count", [3, 5])
def test_seg_and_rtstruct_read_onto_a_resampled_part_of_their_series(tmp_path, count):
    pytest.importorskip("highdicom")
    from test_io_dicom import _axial_series

    from kseg.io import rasterize_rtstruct

    (tmp_path / "ct").mkdir()
    _axial_series(tmp_path / "ct", [0.0, 2.5, 5.0, 7.5, 10.0])
    ct = read_dicom_series(tmp_path / "ct")
    labels = np.zeros(ct.shape, np.uint8)
    labels[1:4, 1:3, 1:5] = 1
    labels[1, 1, 1] = 0
    seg = write_dicom_seg(labels, ct, tmp_path / "a.seg.dcm", ["organ"])
    rt = write_rtstruct(labels, ct, tmp_path / "a.rt.dcm", roi_names=["organ"])
    # the grid one slice up, as resample_to makes it (a model's region, say)
    affine = ct.affine.copy()
    affine[:3, 3] += affine[:3, 0]
    part = resample_to(ct, affine, (count, *ct.shape[1:]))
    expected = np.zeros(part.shape, np.uint8)
    expected[:3] = labels[1:4]
    np.testing.assert_array_equal(read_dicom_seg(seg, reference_series=part).array, expected)
    np.testing.assert_array_equal(rasterize_rtstruct(rt, part)["organ"], expected)


@pytest.mark.parametrize("format", ["dicom-seg", "rtstruct"])
def test_predict_refuses_a_series_its_dicom_writer_cannot_reference_before_the_model(
    tmp_path, monkeypatch, format
):
    import json

    from test_writer_hunt import _series

    import kseg
    from kseg.errors import LayoutError
    from kseg.predict import predict_command

    def drop(ds):
        ds.FrameOfReferenceUID = ""  # blanked by an anonymiser

    _series(tmp_path / "ct", drop)
    run = tmp_path / "run"
    run.mkdir()
    (run / "best.keras").write_bytes(b"")  # never loaded: the input is refused first
    inference = {"kind": "slices", "window": [40, 400], "image_size": [4, 6],
                 "num_classes": 1, "threshold": 0.5, "postprocess": "none", "modality": "CT"}
    (run / "config.json").write_text(json.dumps({
        "kseg_config_version": 1, "recipe": "chaos_liver", "arguments": {}, "seed": 0,
        "created": "2026-12-02T03:00:00+00:00", "versions": {}, "git_commit": None,
        "dataset": {"name": "test"}, "labels": {"organ": 1}, "inference": inference,
    }))  # fmt: skip

    def loaded(*args, **kwargs):
        raise AssertionError("the model was loaded before the input was refused")

    monkeypatch.setattr(kseg, "load_model", loaded, raising=False)
    with pytest.raises(LayoutError, match=r"ct: cannot be referenced by .*FrameOfReferenceUID"):
        predict_command(run, tmp_path / "ct", tmp_path / "out", format)
    assert not (tmp_path / "out").exists()
