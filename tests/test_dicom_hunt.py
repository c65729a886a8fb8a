"""Valid but unusual DICOM series, structure sets and SEGs as scanners and planning systems
write them: each test holds a file written here with pydicom (or highdicom), and the
expected outcome is worked out from what the file says, never from kseg."""

import numpy as np
import pydicom
import pytest
from pydicom.uid import generate_uid
from test_io_dicom import _write_slice
from test_io_enhanced_dicom import _shuffled_volume, _write_enhanced

from kseg.errors import DicomSeriesError
from kseg.io import rasterize_rtstruct, read_dicom_series, write_dicom_seg, write_rtstruct

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
