"""Multi-frame Enhanced CT / MR files read as volumes, and lossy-compressed images warned of.

Every file is written here with pydicom (or highdicom, from the real sample series), the
frames in shuffled order; references are the frames' stored values and positions as written.
"""

import io
import warnings

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate
from pydicom.sequence import Sequence
from pydicom.uid import (
    JPEG2000,
    EnhancedCTImageStorage,
    EnhancedMRImageStorage,
    JPEGBaseline8Bit,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
    generate_uid,
)
from test_io_dicom import AXIAL, _oblique_geometry, _write_slice

from kseg.errors import DicomSeriesError, UnreadableFileError
from kseg.io import read_dicom_series
from kseg.io.dicom import LossyImageWarning

ROWS, COLUMNS = 4, 6
SPACING = (0.5, 0.75)


def _item(**values) -> Dataset:
    item = Dataset()
    for keyword, value in values.items():
        setattr(item, keyword, value)
    return item


def _write_enhanced(
    path,
    stored,
    positions,
    *,
    orientation=AXIAL,
    rescales=None,
    shared_groups=True,
    frame_contents=None,
    dimensions=(),
    sop_class=EnhancedCTImageStorage,
    **top_level,
):
    """An Enhanced image of ``stored`` (frames, rows, columns) in file order.

    ``positions`` per frame; ``rescales``: one (slope, intercept) per frame (``None``: no
    rescale), else every frame is rescaled by (1, -1024); ``shared_groups``: orientation,
    pixel measures and a common rescale in the shared functional groups, else repeated in
    every frame's;
    ``frame_contents``: extra FrameContentSequence values per frame; ``dimensions``:
    DimensionIndexPointer keywords of the DimensionIndexSequence.
    """
    stored = np.asarray(stored)
    # A classic slice's patient, study and pixel module, its placing and rescale moved out.
    _write_slice(path, position=positions[0])
    ds = pydicom.dcmread(path)
    for keyword in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing",
                    "SliceThickness", "RescaleSlope", "RescaleIntercept"):  # fmt: skip
        delattr(ds, keyword)
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.Modality = "CT" if sop_class == EnhancedCTImageStorage else "MR"
    ds.NumberOfFrames = len(stored)
    ds.Rows, ds.Columns = stored.shape[1:]
    ds.BitsAllocated = 8 * stored.dtype.itemsize
    ds.BitsStored = 8 if stored.dtype.itemsize == 1 else 12
    ds.HighBit = ds.BitsStored - 1
    common = {
        "PlaneOrientationSequence": _item(ImageOrientationPatient=[float(v) for v in orientation]),
        "PixelMeasuresSequence": _item(PixelSpacing=list(SPACING), SliceThickness=9.0),
    }
    if rescales is None:
        common["PixelValueTransformationSequence"] = _item(
            RescaleSlope=1.0, RescaleIntercept=-1024.0, RescaleType="HU"
        )
    shared = _item(**{keyword: Sequence([item]) for keyword, item in common.items()})
    frames = []
    for index, position in enumerate(positions):
        content = _item(**(frame_contents[index] if frame_contents else {}))
        if dimensions:
            content.DimensionIndexValues = [1] * len(dimensions)
        group = _item(
            PlanePositionSequence=Sequence(
                [_item(ImagePositionPatient=[float(v) for v in position])]
            ),
            FrameContentSequence=Sequence([content]),
        )
        if rescales is not None and rescales[index] is not None:
            slope, intercept = rescales[index]
            group.PixelValueTransformationSequence = Sequence(
                [_item(RescaleSlope=slope, RescaleIntercept=intercept, RescaleType="HU")]
            )
        if not shared_groups:
            for keyword, item in common.items():
                setattr(group, keyword, Sequence([item]))
        frames.append(group)
    if shared_groups:
        ds.SharedFunctionalGroupsSequence = Sequence([shared])
    ds.PerFrameFunctionalGroupsSequence = Sequence(frames)
    if dimensions:
        ds.DimensionIndexSequence = Sequence(
            [_item(DimensionIndexPointer=pydicom.tag.Tag(keyword)) for keyword in dimensions]
        )
    for keyword, value in top_level.items():
        setattr(ds, keyword, value)
    ds.PixelData = stored.tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


def _shuffled_volume(count=5, seed=3):
    """Stored frames whose spatial rank r holds 100 * r + marker, in a shuffled file order,
    with their oblique positions 2.5 mm apart: ``(file order, stored, positions, geometry)``."""
    row, column, normal = _oblique_geometry()
    order = np.random.default_rng(seed).permutation(count)
    stored = np.empty((count, ROWS, COLUMNS), np.uint16)
    positions = np.empty((count, 3))
    for slot, rank in enumerate(order):
        stored[slot] = 1024 + 100 * rank + np.arange(ROWS * COLUMNS).reshape(ROWS, COLUMNS)
        positions[slot] = np.array([10.0, -20.0, 30.0]) + rank * 2.5 * normal
    return order, stored, positions, (*row, *column)


@pytest.mark.parametrize("shared_groups", [True, False], ids=["shared", "per-frame"])
def test_enhanced_file_reads_like_the_same_classic_series(tmp_path, shared_groups):
    order, stored, positions, orientation = _shuffled_volume()
    classic = tmp_path / "classic"
    classic.mkdir()
    for slot in range(len(order)):
        _write_slice(
            classic / f"slice{slot}.dcm",
            position=positions[slot],
            orientation=orientation,
            pixels=stored[slot],
            pixel_spacing=SPACING,
        )
    enhanced = tmp_path / "enhanced"
    enhanced.mkdir()
    file = _write_enhanced(
        enhanced / "ct.dcm", stored, positions, orientation=orientation,
        shared_groups=shared_groups,
    )  # fmt: skip

    expected = read_dicom_series(classic)
    volume = read_dicom_series(enhanced)

    np.testing.assert_array_equal(volume.array, expected.array)
    assert volume.array.dtype == expected.array.dtype == np.int16
    np.testing.assert_allclose(volume.affine, expected.affine, atol=1e-9)
    # The numpy reference: frames by rank along the normal, minus the intercept.
    np.testing.assert_array_equal(volume.array, stored[np.argsort(order)].astype(int) - 1024)
    assert volume.source_files == (str(file),) * len(order)
    assert volume.metadata["frame_numbers"] == tuple(int(i) + 1 for i in np.argsort(order))
    for key in ("frame_of_reference_uid", "series_instance_uid", "study_instance_uid",
                "modality", "patient_sex"):  # fmt: skip
        assert volume.metadata[key] == expected.metadata[key]
    assert volume.patient_id == "P007"


def test_per_frame_rescale_is_applied_to_its_own_frame(tmp_path):
    order, stored, positions, orientation = _shuffled_volume(count=4, seed=8)
    rescales = [(1.0 + 0.5 * slot, -1000.0 - 10 * slot) for slot in range(4)]
    path = _write_enhanced(
        tmp_path / "ct.dcm", stored, positions, orientation=orientation, rescales=rescales
    )

    volume = read_dicom_series([path])

    by_rank = np.argsort(order)
    slopes = np.array([rescales[slot][0] for slot in by_rank])[:, None, None]
    intercepts = np.array([rescales[slot][1] for slot in by_rank])[:, None, None]
    reference = stored[by_rank].astype(np.float64) * slopes + intercepts
    assert volume.array.dtype == np.float32  # slope 1.5 gives halves
    np.testing.assert_array_equal(volume.array, reference.astype(np.float32))


def test_compressed_enhanced_file_reads_like_the_uncompressed_one(tmp_path):
    order, stored, positions, orientation = _shuffled_volume(count=3)
    plain = _write_enhanced(tmp_path / "plain.dcm", stored, positions, orientation=orientation)
    dataset = pydicom.dcmread(plain)
    dataset.compress(RLELossless)
    dataset.save_as(tmp_path / "rle.dcm")

    volume = read_dicom_series([tmp_path / "rle.dcm"])

    np.testing.assert_array_equal(volume.array, read_dicom_series([plain]).array)
    np.testing.assert_array_equal(volume.array, stored[np.argsort(order)].astype(int) - 1024)


def test_frame_order_in_the_file_does_not_matter_to_the_volume(tmp_path):
    order, stored, positions, orientation = _shuffled_volume(count=4, seed=1)
    # the frames' own orientation: positions along its normal make a straight grid
    first = _write_enhanced(tmp_path / "a.dcm", stored, positions, orientation=orientation)
    reverse = slice(None, None, -1)
    second = _write_enhanced(
        tmp_path / "b.dcm", stored[reverse], positions[reverse], orientation=orientation
    )

    one, other = read_dicom_series([first]), read_dicom_series([second])

    np.testing.assert_array_equal(one.array, other.array)
    np.testing.assert_allclose(one.affine, other.affine)


def _axial(count):
    """``count`` distinct axial frames 2 mm apart, in position order."""
    stored = np.arange(count * ROWS * COLUMNS, dtype=np.uint16).reshape(count, ROWS, COLUMNS)
    return stored, [(0.0, 0.0, 2.0 * index) for index in range(count)]


@pytest.mark.parametrize(
    ("contents", "dimensions", "named"),
    [
        ([{"StackID": str(1 + k % 2), "InStackPositionNumber": 1 + k // 2} for k in range(4)],
         (), r"2 stacks \(StackID 1, 2\)"),
        ([{"TemporalPositionIndex": 1 + k % 2} for k in range(4)], (),
         r"2 temporal positions \(TemporalPositionIndex 1, 2\)"),
    ],
    ids=["stacks", "time"],
)  # fmt: skip
def test_frames_of_several_volumes_are_refused_by_their_frame_content(
    tmp_path, contents, dimensions, named
):
    stored, _ = _axial(4)
    # Every frame at its own position: only what the file says tells the volumes apart.
    positions = [(0.0, 0.0, 2.0 * k) for k in range(4)]
    path = _write_enhanced(tmp_path / "ct.dcm", stored, positions, frame_contents=contents)

    with pytest.raises(DicomSeriesError, match=named) as caught:
        read_dicom_series([path])
    assert str(path) in str(caught.value)


def test_echoes_given_only_as_a_dimension_are_refused(tmp_path):
    stored, _ = _axial(4)
    positions = [(0.0, 0.0, 2.0 * (k // 2)) for k in range(4)]
    path = _write_enhanced(
        tmp_path / "mr.dcm", stored, positions, sop_class=EnhancedMRImageStorage,
        dimensions=("InStackPositionNumber", "EffectiveEchoTime"),
    )  # fmt: skip
    dataset = pydicom.dcmread(path)
    for k, group in enumerate(dataset.PerFrameFunctionalGroupsSequence):
        group.FrameContentSequence[0].DimensionIndexValues = [1 + k // 2, 1 + k % 2]
    dataset.save_as(path)

    with pytest.raises(DicomSeriesError, match=r"2 echoes \(EffectiveEchoTime dimension index"):
        read_dicom_series([path])


def test_b_values_in_the_per_frame_groups_are_refused(tmp_path):
    stored, _ = _axial(4)
    positions = [(0.0, 0.0, 2.0 * (k % 2)) for k in range(4)]
    path = _write_enhanced(
        tmp_path / "dwi.dcm", stored, positions, sop_class=EnhancedMRImageStorage
    )
    dataset = pydicom.dcmread(path)
    for k, group in enumerate(dataset.PerFrameFunctionalGroupsSequence):
        group.MRDiffusionSequence = Sequence([_item(DiffusionBValue=[0.0, 1000.0][k // 2])])
    dataset.save_as(path)

    with pytest.raises(DicomSeriesError, match=r"2 b-values \(DiffusionBValue 0.0, 1000.0\)"):
        read_dicom_series([path])


def test_magnitude_and_phase_frames_are_refused(tmp_path):
    stored, _ = _axial(4)
    positions = [(0.0, 0.0, 2.0 * (k // 2)) for k in range(4)]
    path = _write_enhanced(
        tmp_path / "mr.dcm", stored, positions, sop_class=EnhancedMRImageStorage
    )
    dataset = pydicom.dcmread(path)
    for k, group in enumerate(dataset.PerFrameFunctionalGroupsSequence):
        component = ["MAGNITUDE", "PHASE"][k % 2]
        group.MRImageFrameTypeSequence = Sequence([_item(ComplexImageComponent=component)])
    dataset.save_as(path)

    with pytest.raises(DicomSeriesError, match=r"2 image components \(ComplexImageComponent"):
        read_dicom_series([path])


def test_frames_at_one_position_without_a_reason_name_both_frames(tmp_path):
    stored, _ = _axial(3)
    positions = [(0.0, 0.0, 0.0), (0.0, 0.0, 2.0), (0.0, 0.0, 0.0)]
    path = _write_enhanced(tmp_path / "ct.dcm", stored, positions)

    with pytest.raises(DicomSeriesError, match="same slice position") as caught:
        read_dicom_series([path])
    assert f"{path} frame 1" in str(caught.value) and f"{path} frame 3" in str(caught.value)


def test_frames_of_different_orientation_are_refused(tmp_path):
    stored, positions = _axial(3)
    path = _write_enhanced(tmp_path / "ct.dcm", stored, positions, shared_groups=False)
    dataset = pydicom.dcmread(path)
    tilted = dataset.PerFrameFunctionalGroupsSequence[2].PlaneOrientationSequence[0]
    tilted.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 0.0, -1.0]
    dataset.save_as(path)

    with pytest.raises(DicomSeriesError, match=f"{path} frame 3: ImageOrientationPatient"):
        read_dicom_series([path])


def test_enhanced_file_beside_classic_slices_of_its_series_is_refused(tmp_path):
    stored, positions = _axial(2)
    path = _write_enhanced(tmp_path / "ct.dcm", stored, positions)
    _write_slice(tmp_path / "slice.dcm", position=(0, 0, 4.0))

    with pytest.raises(DicomSeriesError, match="alone") as caught:
        read_dicom_series(tmp_path)
    assert str(path) in str(caught.value) and "slice.dcm" in str(caught.value)


def test_a_frame_count_that_the_groups_do_not_match_is_refused(tmp_path):
    stored, positions = _axial(3)
    path = _write_enhanced(tmp_path / "ct.dcm", stored, positions)
    dataset = pydicom.dcmread(path)
    del dataset.PerFrameFunctionalGroupsSequence[2]
    dataset.save_as(path)

    with pytest.raises(UnreadableFileError, match="holds 2 item"):
        read_dicom_series([path])


def test_top_level_rescale_contradicting_a_frame_is_refused(tmp_path):
    stored, positions = _axial(2)
    path = _write_enhanced(
        tmp_path / "ct.dcm", stored, positions, rescales=[(1.0, -1024.0), (1.0, -1000.0)],
        RescaleSlope=1.0, RescaleIntercept=-1024.0,
    )  # fmt: skip

    with pytest.raises(UnreadableFileError, match=f"{path} frame 2: RescaleIntercept"):
        read_dicom_series([path])


def test_a_modality_lut_too_large_for_the_header_pass_is_applied_to_every_frame(tmp_path):
    stored, positions = _axial(3)
    lut = (np.arange(2048) * 3 + 24).astype(np.uint16)  # 4 KiB: left on disk by the scan
    item = _item(LUTDescriptor=[2048, 0, 16], ModalityLUTType="US")
    item.LUTData = lut.tobytes()
    item["LUTData"].VR = "OW"
    path = _write_enhanced(
        tmp_path / "ct.dcm", stored, positions, rescales=[None] * 3,
        ModalityLUTSequence=Sequence([item]),
    )  # fmt: skip

    volume = read_dicom_series([path])

    np.testing.assert_array_equal(volume.array, lut[stored])


def test_predict_reads_an_enhanced_file_and_its_folder_as_a_series(tmp_path):
    from kseg.predict import DICOM_SERIES, read_inputs

    order, stored, positions, orientation = _shuffled_volume(count=3)
    path = _write_enhanced(tmp_path / "ct.dcm", stored, positions, orientation=orientation)
    reference = stored[np.argsort(order)].astype(int) - 1024

    for given in (path, tmp_path):
        [(_, _, kind, volume, is_dicom)] = read_inputs(given, {"kind": "volume"})
        assert kind == DICOM_SERIES and is_dicom
        np.testing.assert_array_equal(volume.array, reference)


@pytest.mark.filterwarnings("ignore:The string .* person name:UserWarning")  # highdicom's
def test_real_series_as_a_legacy_converted_enhanced_file_reads_identically(
    shared_data, tmp_path
):
    highdicom = pytest.importorskip("highdicom")
    folder = shared_data / "dcmqi-ct3slice" / "data" / "segmentations" / "ct-3slice"
    classic = read_dicom_series(folder)
    slices = [pydicom.dcmread(path) for path in reversed(classic.source_files)]
    converted = highdicom.legacy.LegacyConvertedEnhancedCTImage(
        legacy_datasets=slices,
        series_instance_uid=generate_uid(),
        series_number=99,
        sop_instance_uid=generate_uid(),
        instance_number=1,
    )
    converted.save_as(tmp_path / "legacy.dcm")

    volume = read_dicom_series([tmp_path / "legacy.dcm"])

    np.testing.assert_array_equal(volume.array, classic.array)
    np.testing.assert_allclose(volume.affine, classic.affine, atol=1e-6)
    assert volume.metadata["frame_of_reference_uid"] == classic.metadata["frame_of_reference_uid"]


# --- lossy compression ------------------------------------------------------------------------


def _jls_series(folder, count, **compress_options):
    paths = []
    for index in range(count):
        pixels = (np.arange(ROWS * COLUMNS).reshape(ROWS, COLUMNS) * 37 + 100 * index) % 4000
        path = _write_slice(
            folder / f"s{index}.dcm", position=(0, 0, 2.0 * index), pixels=pixels.astype(np.uint16)
        )
        dataset = pydicom.dcmread(path)
        dataset.compress(**compress_options)
        dataset.save_as(path)
        paths.append(path)
    return paths


def test_near_lossless_jpeg_ls_series_warns_once_naming_a_file(tmp_path):
    paths = _jls_series(tmp_path, 3, transfer_syntax_uid=JPEGLSNearLossless, jls_error=3)

    with pytest.warns(LossyImageWarning) as caught:
        read_dicom_series(tmp_path)

    lossy = [w for w in caught if issubclass(w.category, LossyImageWarning)]
    assert len(lossy) == 1
    message = str(lossy[0].message)
    assert "NEAR 3" in message and "and 2 more file(s)" in message
    assert any(str(path) in message for path in paths)


@pytest.mark.parametrize(
    "options",
    [{"transfer_syntax_uid": JPEGLSLossless},
     {"transfer_syntax_uid": JPEGLSNearLossless, "jls_error": 0}],
    ids=["lossless-uid", "near-0"],
)  # fmt: skip
def test_lossless_jpeg_ls_reads_without_a_warning(tmp_path, options):
    _jls_series(tmp_path, 2, **options)
    with warnings.catch_warnings():
        warnings.simplefilter("error", LossyImageWarning)
        read_dicom_series(tmp_path)


def test_lossy_image_compression_01_warns_for_an_uncompressed_file(tmp_path):
    _write_slice(tmp_path / "s.dcm", position=(0, 0, 0))
    dataset = pydicom.dcmread(tmp_path / "s.dcm")
    dataset.LossyImageCompression = "01"
    dataset.LossyImageCompressionMethod = "ISO_10918_1"
    dataset.save_as(tmp_path / "s.dcm")

    with pytest.warns(LossyImageWarning, match=r"LossyImageCompression is 01 \(ISO_10918_1\)"):
        read_dicom_series(tmp_path)


def _pillow_encoded_enhanced(path, syntax, **save_options):
    """An 8-bit two-frame Enhanced CT whose frames Pillow compressed (JPEG / JPEG 2000)."""
    stored = np.stack([np.full((16, 16), 60, np.uint8), np.full((16, 16), 120, np.uint8)])
    stored[:, 4:12, 4:12] += 50
    _write_enhanced(path, stored, [(0.0, 0.0, 0.0), (0.0, 0.0, 2.0)])
    dataset = pydicom.dcmread(path)
    fragments = []
    for frame in stored:
        buffer = io.BytesIO()
        Image.fromarray(frame).save(buffer, **save_options)
        fragments.append(buffer.getvalue())
    dataset.PixelData = encapsulate(fragments)
    dataset["PixelData"].VR = "OB"
    dataset.file_meta.TransferSyntaxUID = syntax
    dataset.save_as(path)
    return stored


@pytest.mark.parametrize(
    ("syntax", "options", "lossy"),
    [(JPEGBaseline8Bit, {"format": "JPEG", "quality": 70}, "always lossy"),
     (JPEG2000, {"format": "JPEG2000", "irreversible": True, "quality_mode": "rates",
                 "quality_layers": [3]}, "9-7 irreversible wavelet"),
     (JPEG2000, {"format": "JPEG2000", "irreversible": False}, None)],
    ids=["jpeg-baseline", "j2k-9-7", "j2k-5-3"],
)  # fmt: skip
def test_jpeg_and_jpeg_2000_warn_by_syntax_and_wavelet(tmp_path, syntax, options, lossy):
    stored = _pillow_encoded_enhanced(tmp_path / "ct.dcm", syntax, **options)

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        volume = read_dicom_series([tmp_path / "ct.dcm"])

    messages = [str(w.message) for w in caught if issubclass(w.category, LossyImageWarning)]
    if lossy is None:
        assert messages == []
        np.testing.assert_array_equal(volume.array, stored.astype(int) - 1024)
    else:
        assert len(messages) == 1 and lossy in messages[0]
        assert np.abs(volume.array - (stored.astype(int) - 1024)).mean() < 20


def test_multi_frame_file_without_functional_groups_is_refused(tmp_path):
    stored, positions = _axial(2)
    path = _write_enhanced(tmp_path / "ct.dcm", stored, positions)
    dataset = pydicom.dcmread(path)
    del dataset.PerFrameFunctionalGroupsSequence, dataset.SharedFunctionalGroupsSequence
    dataset.save_as(path)

    with pytest.raises(DicomSeriesError, match="2 frames but no functional groups"):
        read_dicom_series([path])
