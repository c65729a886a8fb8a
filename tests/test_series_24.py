"""Session 24, helper "series": DICOM series reading as hospital exports and archives ship
them. Each expected outcome is worked out from what the files say (written here with
pydicom, or pydicom.data's own files), never from kseg."""

import shutil

import numpy as np
import pydicom
import pytest
from etils import epath
from pydicom.uid import generate_uid
from test_io_dicom import _write_slice

from kseg.errors import DicomSeriesError, LayoutError
from kseg.io import SkippedFileWarning, read_dicom_series
from kseg.phantoms.chaos import write_chaos
from kseg.phantoms.lctsc import write_lctsc, write_lctsc_npz
from tfds_builders.lctsc.layout import npz_cases, tcia_cases


def _copy_as_series(source, target, **changes):
    """Copy every CT file of ``source`` to ``target`` as a new series (new UIDs)."""
    target.mkdir(parents=True)
    series_uid = generate_uid()
    for path in sorted(source.iterdir()):
        ds = pydicom.dcmread(path)
        ds.SeriesInstanceUID = series_uid
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        for keyword, value in changes.items():
            setattr(ds, keyword, value)
        ds.save_as(target / path.name, enforce_file_format=True)
    return series_uid


# --- LCTSC: a CT series no structure set references ------------------------------------------


def test_lctsc_unreferenced_scout_series_is_skipped_with_a_warning(tmp_path):
    """A hospital export holds a scout series beside the planning CT: the case is the series
    the RTSTRUCT references; the other is named in a warning, not a stop of the build."""
    manual = tmp_path / "manual"
    write_lctsc(manual, num_patients=2, num_test_patients=0, num_slices=2, size=16)
    ct_folder = next(manual.rglob("0.000000-CT *"))
    patient = ct_folder.parent.parent.name
    referenced = pydicom.dcmread(next(ct_folder.iterdir())).SeriesInstanceUID
    scout_uid = _copy_as_series(
        ct_folder, ct_folder.parent / "2.000000-Topogram-00001",
        ImageType=["ORIGINAL", "PRIMARY", "LOCALIZER"], SeriesDescription="Topogram",
    )
    with pytest.warns(SkippedFileWarning) as caught:
        cases = tcia_cases(epath.Path(manual))
    messages = [str(w.message) for w in caught if scout_uid in str(w.message)]
    assert len(messages) == 1 and "Topogram" in messages[0] and patient in messages[0]
    assert len(cases) == 2
    (case,) = [case for case in cases if case.patient_id == patient]
    assert case.series_uid == referenced
    assert all(str(ct_folder) in path for path in case.ct_files)


def test_lctsc_two_referenced_series_of_one_patient_stay_an_error(tmp_path):
    manual = tmp_path / "manual"
    write_lctsc(manual, num_patients=1, num_test_patients=0, num_slices=2, size=16)
    ct_folder = next(manual.rglob("0.000000-CT *"))
    rt_file = next(manual.rglob("1-1.dcm"))
    second_uid = _copy_as_series(ct_folder, ct_folder.parent / "3.000000-CT again-00002")
    rt = pydicom.dcmread(rt_file)
    rt.SOPInstanceUID = rt.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    rt.SeriesInstanceUID = generate_uid()
    study = rt.ReferencedFrameOfReferenceSequence[0].RTReferencedStudySequence[0]
    study.RTReferencedSeriesSequence[0].SeriesInstanceUID = second_uid
    second_rt = ct_folder.parent / "4.000000-RTSTRUCT again-00003"
    second_rt.mkdir()
    rt.save_as(second_rt / "1-1.dcm", enforce_file_format=True)
    with pytest.raises(LayoutError, match="has two cases"):
        tcia_cases(epath.Path(manual))


# --- classic single-frame slices of several echoes / time points in one series ---------------


def _retag(path, **values):
    ds = pydicom.dcmread(path)
    for keyword, value in values.items():
        setattr(ds, keyword, value)
    ds.save_as(path, enforce_file_format=True)
    return path


def _two_echo_series(folder, second_offset):
    """Echo 1 at z = 0, 5, 10, 15; echo 2 the same positions shifted by ``second_offset``;
    each slice's pixels hold 100 * echo + its rank."""
    echoes = {1: [], 2: []}
    for echo, offset in ((1, 0.0), (2, second_offset)):
        for rank in range(4):
            path = _write_slice(
                folder / f"IM{echo}{rank}.dcm", position=(0.0, 0.0, 5.0 * rank + offset),
                pixels=np.full((4, 6), 1024 + 100 * echo + rank, np.uint16),
                instance_number=10 * echo + rank,
            )
            echoes[echo].append(_retag(path, EchoNumbers=echo, EchoTime=2.3 * echo))
    return echoes


@pytest.mark.parametrize("offset", [0.0, 2.5], ids=["same_positions", "interleaved"])
def test_two_echoes_in_one_series_are_refused_naming_the_tag(tmp_path, offset):
    """A dual-echo MR series (one SeriesInstanceUID, EchoNumbers 1 and 2): interleaved, it
    read as one volume of 8 slices at 2.5 mm alternating echoes; at the same positions the
    error blamed a duplicated file. Each echo's files read as a list give its own volume."""
    echoes = _two_echo_series(tmp_path, offset)
    with pytest.raises(DicomSeriesError) as raised:
        read_dicom_series(tmp_path)
    message = str(raised.value)
    assert "EchoNumbers" in message and "1.2.3.4" in message and "2 echoes" in message
    for echo, files in echoes.items():
        volume = read_dicom_series(files)
        assert volume.shape[0] == 4
        np.testing.assert_allclose(volume.spacing[0], 5.0)
        np.testing.assert_array_equal(volume.array[:, 0, 0], 100 * echo + np.arange(4))
    # An anonymiser's one UID per file, read with ignore_series_uid: refused alike.
    for files in echoes.values():
        for path in files:
            _retag(path, SeriesInstanceUID=generate_uid())
    with pytest.raises(DicomSeriesError, match="8 series read as one .*2 echoes .EchoNumbers"):
        read_dicom_series(tmp_path, ignore_series_uid=True)


def test_dynamic_series_at_the_same_positions_names_the_temporal_position(tmp_path):
    for phase in (1, 2, 3):
        for rank in range(3):
            path = _write_slice(tmp_path / f"T{phase}S{rank}.dcm", position=(0, 0, 3.0 * rank))
            _retag(path, TemporalPositionIdentifier=phase, NumberOfTemporalPositions=3)
    with pytest.raises(DicomSeriesError, match="3 temporal positions .TemporalPositionIdent"):
        read_dicom_series(tmp_path)


def test_duplicate_positions_name_the_header_value_telling_them_apart(tmp_path):
    """Two acquisitions of one series at the same positions (AcquisitionNumber 1 and 2, as a
    repeated scan keeps its series): the error says what differs, not 'duplicated file'; a
    true copy is called one. AcquisitionNumber changing between blocks of a sequential CT
    (each rotation its own acquisition) is one volume and reads."""
    first = tmp_path / "repeat"
    first.mkdir()
    for acquisition in (1, 2):
        for rank in range(3):
            path = _write_slice(first / f"A{acquisition}S{rank}.dcm", position=(0, 0, rank))
            _retag(path, AcquisitionNumber=acquisition)
    with pytest.raises(DicomSeriesError, match="differ in AcquisitionNumber 1 and 2"):
        read_dicom_series(first)

    copy = tmp_path / "copy"
    copy.mkdir()
    _axial = [_write_slice(copy / f"S{rank}.dcm", position=(0, 0, rank)) for rank in range(3)]
    shutil.copy(_axial[1], copy / "S1 copy.dcm")
    with pytest.raises(DicomSeriesError, match="duplicated file"):
        read_dicom_series(copy)

    sequential = tmp_path / "sequential"
    sequential.mkdir()
    for rank in range(8):
        path = _write_slice(sequential / f"S{rank}.dcm", position=(0, 0, 2.5 * rank))
        _retag(path, AcquisitionNumber=1 + rank // 4)
    assert read_dicom_series(sequential).shape[0] == 8


def test_lctsc_npz_case_folder_with_a_scout_series_reads_the_volume(tmp_path):
    """The npz layout has no reference to choose by, but a scout (every image LOCALIZER in
    ImageType) is never the volume a mask was drawn on: skipped with a warning naming it. A
    second volume series stays an error, now listing both."""
    manual = tmp_path / "manual"
    write_lctsc_npz(manual, num_patients=1, num_slices=2, size=16)
    dicom = next(manual.rglob("mask.npz")).parent / "dicom"
    volume_files = sorted(str(path) for path in dicom.iterdir())
    scout_uid = _copy_as_series(
        dicom, dicom.parent / "scout", ImageType=["ORIGINAL", "PRIMARY", "LOCALIZER"],
        SeriesDescription="Topogram",
    )
    with pytest.warns(SkippedFileWarning, match=f"1 localizer series.*{scout_uid}.*Topogram"):
        (case,) = npz_cases(epath.Path(manual))
    assert sorted(case.ct_files) == volume_files

    _copy_as_series(dicom, dicom.parent / "soft tissue", SeriesDescription="Soft tissue")
    with pytest.warns(SkippedFileWarning), pytest.raises(
        LayoutError, match="holds 2 CT series.*Soft tissue"
    ):
        npz_cases(epath.Path(manual))


def test_lctsc_structure_set_naming_only_its_frame_pairs_with_the_ct_not_the_scout(tmp_path):
    """RTReferencedStudySequence is Type 3 (PS3.3 C.8.8.5): a structure set may name only
    its FrameOfReferenceUID, which a hospital export's scout shares with the CT. The scout
    (LOCALIZER in every ImageType) is no candidate; it is skipped with a warning."""
    manual = tmp_path / "manual"
    write_lctsc(manual, num_patients=1, num_test_patients=0, num_slices=2, size=16)
    ct_folder = next(manual.rglob("0.000000-CT *"))
    referenced = pydicom.dcmread(next(ct_folder.iterdir())).SeriesInstanceUID
    scout_uid = _copy_as_series(
        ct_folder, ct_folder.parent / "2.000000-Topogram-00001",
        ImageType=["ORIGINAL", "PRIMARY", "LOCALIZER"],
    )
    rt_file = next(manual.rglob("1-1.dcm"))
    rt = pydicom.dcmread(rt_file)
    del rt.ReferencedFrameOfReferenceSequence[0].RTReferencedStudySequence
    rt.save_as(rt_file)
    with pytest.warns(SkippedFileWarning, match=scout_uid):
        (case,) = tcia_cases(epath.Path(manual))
    assert case.series_uid == referenced


def test_a_siemens_mosaic_is_refused_not_read_as_one_slice_of_tiles(tmp_path):
    """Siemens fMRI / diffusion series store each volume as one mosaic image (ImageType
    ...\\MOSAIC), its slices tiled 2 x 2 here; read as it stands it is one slice of four
    tiles with a quarter of the true field of view per tile: refused, naming the file."""
    tiles = np.arange(4, dtype=np.uint16).repeat(2 * 3).reshape(4, 2, 3)
    mosaic = np.block([[tiles[0], tiles[1]], [tiles[2], tiles[3]]])
    path = _write_slice(tmp_path / "MR.0001.dcm", position=(0, 0, 0), pixels=mosaic)
    _retag(path, ImageType=["ORIGINAL", "PRIMARY", "M", "ND", "NORM", "MOSAIC"], Modality="MR")
    with pytest.raises(DicomSeriesError, match=r"MR.0001.dcm: is a mosaic .*MOSAIC"):
        read_dicom_series([path])


# --- CHAOS: each file its own SeriesInstanceUID --------------------------------------------


def _chaos_examples(root, config_name, patient, modality):
    from tfds_builders._foreground import ForegroundTally
    from tfds_builders.chaos import chaos_dataset_builder

    config = chaos_dataset_builder.Builder.builder_configs[config_name]
    labels = {1: "liver"} if modality == "CT" else {1: "l", 2: "rk", 3: "lk", 4: "s"}
    tally = ForegroundTally(labels, required=tuple(labels), metadata={})
    return [
        example
        for _, example in chaos_dataset_builder.patient_examples(
            config, epath.Path(root / "Train_Sets" / modality / patient), "train", tally
        )
    ]


@pytest.mark.parametrize(("modality", "config_name", "folder"), [
    ("CT", "ct", "DICOM_anon"),
    ("MR", "mr_t1dual_in", "T1DUAL/DICOM_anon/InPhase"),
])
def test_chaos_files_each_with_their_own_series_uid_read_as_the_folder(
    tmp_path, modality, config_name, folder
):
    """The CHAOS anonymiser gave the files of one series different UIDs (the conversions of
    Teuwen et al. read file by file for that reason; nnU-Net's dicom2nifti reads the whole
    folder): a folder is one series in CHAOS's layout, and must read as the same volume as
    the files with one SeriesInstanceUID."""
    root = write_chaos(tmp_path, modality=modality, num_patients=1, num_slices=4, size=16,
                       progress=False)
    expected = _chaos_examples(root, config_name, "1", modality)
    for path in sorted((root / "Train_Sets" / modality / "1" / folder).iterdir()):
        _retag(path, SeriesInstanceUID=generate_uid())
    examples = _chaos_examples(root, config_name, "1", modality)
    assert len(examples) == len(expected) == 4
    for got, want in zip(examples, expected, strict=True):
        np.testing.assert_array_equal(got["image"], want["image"])
        np.testing.assert_array_equal(got["mask"], want["mask"])


def test_lctsc_structure_set_whose_ct_is_missing_is_not_paired_with_the_scout(tmp_path):
    """A download that lost the CT series but kept the scout (same frame of reference): the
    structure set was paired with the scout, and the build failed later on organs missing
    from a one-slice 'volume'. Now the pairing error says the CT is not there."""
    manual = tmp_path / "manual"
    write_lctsc(manual, num_patients=1, num_test_patients=0, num_slices=2, size=16)
    ct_folder = next(manual.rglob("0.000000-CT *"))
    scout_uid = _copy_as_series(
        ct_folder, ct_folder.parent / "2.000000-Topogram-00001",
        ImageType=["ORIGINAL", "PRIMARY", "LOCALIZER"],
    )
    shutil.rmtree(ct_folder)
    with pytest.raises(LayoutError, match=f"found: none .localizer series left out.*{scout_uid}"):
        tcia_cases(epath.Path(manual))
