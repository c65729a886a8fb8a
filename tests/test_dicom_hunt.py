"""Valid but unusual DICOM series, structure sets and SEGs as scanners and planning systems
write them: each test holds a file written here with pydicom (or highdicom), and the
expected outcome is worked out from what the file says, never from kseg."""

import pydicom
import pytest
from test_io_dicom import _write_slice

from kseg.errors import DicomSeriesError
from kseg.io import read_dicom_series

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
