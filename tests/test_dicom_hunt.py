"""Valid but unusual DICOM series, structure sets and SEGs as scanners and planning systems
write them: each test holds a file written here with pydicom (or highdicom), and the
expected outcome is worked out from what the file says, never from kseg."""

import warnings

import numpy as np
import pydicom
import pytest
from pydicom.uid import generate_uid
from test_io_dicom import _write_slice
from test_io_enhanced_dicom import _shuffled_volume, _write_enhanced

from kseg.errors import DicomSeriesError, MaskError
from kseg.io import (
    UnevenSliceSpacingWarning,
    rasterize_rtstruct,
    read_dicom_series,
    write_dicom_seg,
    write_rtstruct,
)
from kseg.io.dicom_writer import SeriesReference
from kseg.io.rtstruct import (
    Contour,
    ContourOutsideVolumeWarning,
    RoiContours,
    RoiNameWarning,
    match_roi_names,
)
from kseg.phantoms.lctsc import write_phantom_rtstruct
from tfds_builders.lctsc.layout import organ_label_map

CORONAL = (1.0, 0.0, 0.0, 0.0, 0.0, -1.0)


def _axial_stack(folder, count, *, first_name=2, gap=2.5, **slice_options):
    return [
        _write_slice(folder / f"IM{first_name + k:04d}.dcm", position=(0.0, 0.0, gap * k),
                     instance_number=first_name + k, **slice_options)
        for k in range(count)
    ]


def test_a_localizer_sorted_first_in_its_series_is_named_not_the_slices(tmp_path):
    """A scout stored in the series of its axial slices (same SeriesInstanceUID, instance 1,
    so its file sorts first): the error names the scout and says it is one, not the first
    axial slice as if it were the odd one out."""
    scout = _write_slice(tmp_path / "IM0001.dcm", position=(0.0, 0.0, 0.0), orientation=CORONAL)
    ds = pydicom.dcmread(scout)
    ds.ImageType = ["ORIGINAL", "PRIMARY", "LOCALIZER"]
    ds.save_as(scout)
    slices = _axial_stack(tmp_path, 5)

    with pytest.raises(DicomSeriesError) as raised:
        read_dicom_series(tmp_path)
    message = str(raised.value)
    assert message.startswith(f"{scout}: ImageOrientationPatient [1, 0, 0, 0, 0, -1]")
    assert "LOCALIZER" in message and "other 5 slice(s)" in message
    assert not any(path.name in message.split("(first:")[0] for path in slices)
    # Without it, the five slices read.
    assert read_dicom_series(slices).shape == (5, 4, 6)


def test_the_one_slice_of_another_pixel_spacing_is_named_even_when_it_sorts_first(tmp_path):
    odd = _write_slice(tmp_path / "IM0001.dcm", position=(0.0, 0.0, -2.5),
                       pixel_spacing=(0.6, 0.75))
    _axial_stack(tmp_path, 3)
    with pytest.raises(DicomSeriesError) as raised:
        read_dicom_series(tmp_path)
    message = str(raised.value)
    # numbers as the header writes them, not numpy reprs
    assert message.startswith(f"{odd}: PixelSpacing [0.6, 0.75] differs from [0.5, 0.75]")
    assert "np.float64" not in message


def test_a_seg_on_a_series_of_one_frame_enhanced_files_is_refused_naming_them(tmp_path):
    """Enhanced CT written one frame per file (one file per slice): highdicom 0.28 takes a
    single multi-frame source, so the SEG writer says so, naming a file, instead of passing
    on highdicom's 'Only one source image should be provided'; write_rtstruct references
    each file and rasterises back exactly."""
    pytest.importorskip("highdicom")
    _, stored, positions, orientation = _shuffled_volume(count=4)
    series = generate_uid()
    (tmp_path / "ct").mkdir()
    for slot in range(4):
        _write_enhanced(tmp_path / "ct" / f"{slot}.dcm", stored[slot:slot + 1],
                        positions[slot:slot + 1], orientation=orientation,
                        SeriesInstanceUID=series, InstanceNumber=slot + 1)
    volume = read_dicom_series(tmp_path / "ct")
    labels = np.zeros(volume.shape, np.uint8)
    labels[1:3, 1:3, 2:5] = 1

    with pytest.raises(ValueError, match=r"ct/\d\.dcm: .* 4 files, Enhanced .*write_rtstruct"):
        write_dicom_seg(labels, volume, tmp_path / "seg.dcm", ["A"])
    assert not (tmp_path / "seg.dcm").exists()
    written = write_rtstruct(labels, volume, tmp_path / "rs.dcm", roi_names=["A"])
    np.testing.assert_array_equal(rasterize_rtstruct(written, volume)["A"], labels)


def _stack_at(folder, z):
    for k, position in enumerate(z):
        _write_slice(folder / f"{k:03d}.dcm", position=(0.0, 0.0, float(position)))


def test_a_series_of_two_slice_spacings_is_refused_not_read_on_the_mean_step(tmp_path):
    """A head CT as GE writes it: the posterior fossa at 2.5 mm, the cerebrum at 5 mm, one
    series. On the mean step (4.167 mm) slice 9 would sit 15 mm (3.6 slices) from where the
    scanner put it (9 x 2.5 mm = 22.5 mm, placed at 37.5 mm); it was read with a warning."""
    z = np.concatenate([np.arange(10) * 2.5, 22.5 + np.arange(1, 19) * 5.0])
    _stack_at(tmp_path, z)
    with pytest.raises(DicomSeriesError) as raised:
        read_dicom_series(tmp_path)
    message = str(raised.value)
    assert "slice spacing changes" in message and "2.500 mm" in message and "5.000 mm" in message
    assert "009.dcm would sit 15.000 mm" in message
    # Each part, read alone, is a regular volume with its own step.
    fossa = read_dicom_series([tmp_path / f"{k:03d}.dcm" for k in range(10)])
    cerebrum = read_dicom_series([tmp_path / f"{k:03d}.dcm" for k in range(9, 28)])
    assert (fossa.spacing[0], cerebrum.spacing[0]) == (2.5, 5.0)


def test_a_finer_part_sorted_first_is_not_reported_as_slices_missing_only(tmp_path):
    """The other way round (more 2.5 mm slices than 5 mm ones) the wide gaps are reported,
    capped, and said to be more likely a second spacing than nine slices lost in a row."""
    z = np.concatenate([np.arange(19) * 2.5, 45.0 + np.arange(1, 10) * 5.0])
    _stack_at(tmp_path, z)
    with pytest.raises(DicomSeriesError) as raised:
        read_dicom_series(tmp_path)
    message = str(raised.value)
    assert "(and 4 more)" in message and message.count("between ") == 5
    assert "slice spacing changes within the series (9 gaps in a row" in message


def test_slightly_uneven_positions_still_read_on_the_mean_step(tmp_path):
    """Positions rounded by the scanner (jitter well under half a step) keep their warning."""
    z = np.arange(12) * 1.25 + np.tile([0.0, 0.03, -0.02], 4)
    _stack_at(tmp_path, z)
    with pytest.warns(UnevenSliceSpacingWarning):
        volume = read_dicom_series(tmp_path)
    np.testing.assert_allclose(volume.spacing[0], (z[-1] - z[0]) / 11)


def _write_rois(path, rois, volume, paths):
    """A structure set of ``rois`` drawn on the series ``_write_slice`` wrote (its UIDs)."""
    reference = SeriesReference(
        "P007", "F", "1.2.3", "1.2.3.4", volume.metadata["frame_of_reference_uid"],
        tuple(str(pydicom.dcmread(p).SOPInstanceUID) for p in paths),
    )
    return write_phantom_rtstruct(path, rois, reference, series_instance_uid=generate_uid(),
                                  sop_instance_uid=generate_uid())


def test_a_contour_exported_twice_fills_its_slice_once_with_a_warning(tmp_path):
    """A planning system that writes one contour twice (the second copy starting at another
    vertex and running the other way): filled together by the even-odd rule the copies
    cancelled, and the organ vanished from that slice without a word. Reference: the pixel
    centres inside the square by the DICOM geometry formula."""
    folder = tmp_path / "ct"
    folder.mkdir()
    paths = [_write_slice(folder / f"{k}.dcm", position=(-10.0, -20.0, 2.5 * k),
                          pixels=np.zeros((20, 30), np.uint16)) for k in range(3)]
    volume = read_dicom_series(folder)
    uid = pydicom.dcmread(paths[1]).SOPInstanceUID
    x0, x1, y0, y1 = -10.0 + 0.75 * 3.4, -10.0 + 0.75 * 11.6, -20.0 + 0.5 * 5.3, -20.0 + 0.5 * 12.2
    square = [(x0, y0), (x1, y0), (x1, y1), (x0, y1)]
    again = square[2:] + square[:2]
    contours = tuple(
        Contour(uid, np.array([(x, y, 2.5) for x, y in outline]))
        for outline in (square, again[::-1])
    )
    path = _write_rois(tmp_path / "rs.dcm", [RoiContours(1, "Heart", None, contours)],
                       volume, paths)
    with pytest.warns(ContourOutsideVolumeWarning, match=r"'Heart': 1 contour\(s\) on slice"
                      r"\(s\) 1 repeating another"):
        mask = rasterize_rtstruct(path, volume)["Heart"]
    x = -10.0 + 0.75 * np.arange(30)  # column centres (row cosine +x, column spacing 0.75)
    y = -20.0 + 0.5 * np.arange(20)  # row centres (column cosine +y, row spacing 0.5)
    inside = ((y > y0) & (y < y1))[:, None] & ((x > x0) & (x < x1))[None, :]
    np.testing.assert_array_equal(mask[1], inside.astype(np.uint8))
    assert mask[1].sum() == 8 * 7 and mask[[0, 2]].sum() == 0


def test_a_series_whose_field_of_view_moves_is_refused_not_read_as_a_tilt(tmp_path):
    """Slices 0-3 centred at x = 0, slices 4-7 at x = 10 mm (the reconstruction centre moved
    part way through the series). It was read as a 35.5-degree gantry tilt, each slice
    placed on the line from the first to the last: slice 3 at x = 4.286 mm instead of 0."""
    for k in range(8):
        _write_slice(tmp_path / f"{k}.dcm", position=(10.0 if k >= 4 else 0.0, 0.0, 2.0 * k))
    with pytest.raises(DicomSeriesError) as raised:
        read_dicom_series(tmp_path)
    message = str(raised.value)
    assert "do not lie on one line" in message and "3.dcm would sit 4.286 mm" in message
    # Each part alone is a straight stack.
    for part in (range(4), range(4, 8)):
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            volume = read_dicom_series([tmp_path / f"{k}.dcm" for k in part])
        assert volume.spacing[0] == 2.0


def test_an_alias_chooses_between_two_spellings_of_one_organ():
    """The error for two ROIs of one organ says 'pass aliases to choose one', but an alias
    only added a spelling: the built-in table still matched the other name, and the error
    stayed, whatever the alias. Now a name an alias maps sets aside the table's matches."""
    names = ["Esophagus", "Oesophagus", "Heart"]
    with pytest.raises(MaskError, match="esophagus: 'Esophagus', 'Oesophagus'"):
        match_roi_names(names, wanted=["esophagus", "heart"])
    with pytest.warns(RoiNameWarning, match=r"set aside for an alias: 'Esophagus' \(esophagus\)"):
        found = match_roi_names(names, wanted=["esophagus", "heart"],
                                aliases={"oesophagus ": "esophagus"})
    assert found == {"esophagus": "Oesophagus", "heart": "Heart"}


def test_an_empty_template_roi_beside_the_drawn_organ_does_not_stop_the_case(tmp_path):
    """A planning template's empty 'HEART' beside the drawn 'Heart': two names of one organ
    refused the LCTSC case (MaskError), though the empty one holds no voxel."""
    folder = tmp_path / "ct"
    folder.mkdir()
    paths = [_write_slice(folder / f"{k}.dcm", position=(-10.0, -20.0, 2.5 * k),
                          pixels=np.zeros((20, 30), np.uint16)) for k in range(3)]
    volume = read_dicom_series(folder)
    uid = pydicom.dcmread(paths[1]).SOPInstanceUID
    square = np.array([(-7.45, -17.35, 2.5), (-1.3, -17.35, 2.5), (-1.3, -13.9, 2.5),
                       (-7.45, -13.9, 2.5)])  # columns 4..11, rows 6..12 (as above)
    rois = [RoiContours(1, "HEART", None, ()),
            RoiContours(2, "Heart", None, (Contour(uid, square),))]
    path = _write_rois(tmp_path / "rs.dcm", rois, volume, paths)
    with pytest.warns(RoiNameWarning, match="organs with no ROI"):
        labels = organ_label_map(path, volume)
    expected = np.zeros(volume.shape, np.uint8)
    expected[1, 6:13, 4:12] = 3  # heart is organ 3
    np.testing.assert_array_equal(labels, expected)


def test_several_series_in_a_folder_are_listed_with_what_tells_them_apart(tmp_path):
    """A PACS export folder: the topogram series beside the axial series. The choice the
    error asks for was between bare UIDs; it now shows modality, number, description and
    which series is a localizer."""
    _axial_stack(tmp_path, 3)
    for path in tmp_path.iterdir():
        ds = pydicom.dcmread(path)
        ds.SeriesNumber, ds.SeriesDescription = 2, "Thorax 1.0 B31f"
        ds.save_as(path)
    scout = _write_slice(tmp_path / "scout.dcm", position=(0.0, 0.0, 0.0), orientation=CORONAL,
                         series_uid="1.2.3.5")
    ds = pydicom.dcmread(scout)
    ds.ImageType = ["ORIGINAL", "PRIMARY", "LOCALIZER"]
    ds.SeriesNumber, ds.SeriesDescription = 1, "Topogram  0.6  T20s"
    ds.save_as(scout)
    with pytest.raises(DicomSeriesError) as raised:
        read_dicom_series(tmp_path)
    message = str(raised.value)
    assert "1.2.3.4 (3 files) [CT, series 2, 'Thorax 1.0 B31f']" in message
    assert "1.2.3.5 (1 files) [CT, series 1, 'Topogram  0.6  T20s', localizer]" in message
