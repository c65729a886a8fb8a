"""The CT volume preprocessing chain of the MSD spleen literature, as plain numpy functions.

One chain serves the dataset builder (``tfds_builders/msd_spleen``, config
``preprocessed``) and inference on new scans, so a model never sees a volume prepared
differently from the ones it was trained on:

1. **reorient** to a common orientation, ``"RAS"`` by default (no interpolation);
2. **resample** to a target spacing, by default 1.5 x 1.5 x 2.0 mm in ``(x, y, z)``,
   which is ``(2.0, 1.5, 1.5)`` in kseg's ``(z, y, x)`` array order (:data:`MSD_SPLEEN_SPACING`);
   linear interpolation for the image, nearest neighbour for the label;
3. **crop** to the foreground: the bounding box of the voxels above the lower bound of the
   HU window (-57 HU), as MONAI's spleen tutorial does with ``CropForegroundd`` on the
   windowed image (windowed value ``> 0``);
4. **window** :data:`MSD_SPLEEN_WINDOW`, -57..164 HU, to [0, 1] when the volume is read
   (:func:`kseg.data.pipeline.window` with ``WINDOWS["spleen_msd"]``, the same window as
   centre and width). Steps 1-3 keep Hounsfield units, so a dataset can store the result as
   int16 (half the bytes of float32, losing at most 0.5 HU to rounding).

Every step returns a :class:`kseg.io.Volume` whose affine says where each voxel lies, so
:func:`kseg.geometry.to_original_grid` brings a prediction made on the preprocessed grid
back onto the grid of the file the scan came from with one resampling
(:meth:`PreprocessedVolume.to_original_grid` calls it with the original affine and shape,
so the original array need not be kept).

Example:
    >>> import numpy as np
    >>> from kseg.data.pipeline import WINDOWS, window
    >>> from kseg.inference import sliding_window
    >>> from kseg.phantoms.msd_spleen import spleen_phantom_case
    >>> scan = spleen_phantom_case(2, shape=(8, 32, 32), spacing=(5.0, 4.0, 4.0)).image
    >>> prepared = preprocess_volume(scan)  # e.g. read_nifti("imagesTs/spleen_1.nii.gz")
    >>> hu = prepared.image.array
    >>> inputs = window(hu, *WINDOWS["spleen_msd"]).numpy()[..., None]
    >>> model = lambda batch: (batch > 0.5).astype(np.float32)  # stands in for a 3D model
    >>> probabilities = sliding_window(model, inputs, (96, 96, 96), progress=False)
    >>> labels = prepared.to_original_grid(probabilities[..., 0] >= 0.5)
    >>> hu.shape, labels.shape == scan.shape
    ((20, 47, 65), True)

Reference:
    Cardoso et al., "MONAI: An open-source framework for deep learning in healthcare",
    arXiv:2211.02701 (2022), spleen segmentation tutorial (Orientationd "RAS", Spacingd
    (1.5, 1.5, 2.0), ScaleIntensityRanged -57..164, CropForegroundd); Antonelli et al.,
    "The Medical Segmentation Decathlon", Nature Communications 13, 4128 (2022).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from kseg import geometry
from kseg.errors import AlignmentError, UnreadableFileError
from kseg.geometry import BoundingBox, crop_foreground, deskew, reorient, resample, resample_to
from kseg.io.volume import Volume

__all__ = [
    "MSD_SPLEEN_ORIENTATION",
    "MSD_SPLEEN_SPACING",
    "MSD_SPLEEN_WINDOW",
    "PreprocessedVolume",
    "preprocess_volume",
]

MSD_SPLEEN_ORIENTATION = "RAS"
# (z, y, x) in mm: the (x, y, z) = (1.5, 1.5, 2.0) mm of the MONAI spleen tutorial.
MSD_SPLEEN_SPACING = (2.0, 1.5, 1.5)
# (low, high) HU mapped to (0, 1): ScaleIntensityRanged(a_min=-57, a_max=164) of MONAI's
# spleen tutorial. kseg.data.pipeline.WINDOWS["spleen_msd"] is this window as (centre, width).
MSD_SPLEEN_WINDOW = (-57.0, 164.0)
# Two affines describing the same grid after a round trip through float32 NIfTI headers
# differ by far less than this (mm).
_SAME_GRID_TOLERANCE_MM = 1e-3


@dataclasses.dataclass(frozen=True, eq=False)
class PreprocessedVolume:
    """A scan (and its label) after :func:`preprocess_volume`, with what maps results back.

    Attributes:
        image: the image on the preprocessed grid, in the input's units (HU for CT);
            float32 after linear resampling.
        label: the label map on the same grid (same dtype as given), or ``None``.
        original_affine: 4x4 affine of the input grid, index ``(k, j, i)`` to RAS+ mm.
        original_shape: ``(z, y, x)`` shape of the input grid.
        crop_box: the foreground box in the reoriented and resampled grid, as
            :func:`kseg.geometry.crop_foreground` returned it, or ``None`` without cropping.
    """

    image: Volume
    label: Volume | None
    original_affine: np.ndarray
    original_shape: tuple[int, int, int]
    crop_box: BoundingBox | None

    def to_original_grid(self, prediction, *, is_label: bool = True, fill: float = 0):
        """Bring an array on the preprocessed grid back onto the original grid.

        Args:
            prediction: array of ``image.shape`` (a label map, or probabilities with
                ``is_label=False``).
            is_label: nearest neighbour (labels) or linear interpolation (probabilities).
            fill: value of original voxels outside the preprocessed field of view (cropped
                away).

        Returns:
            Array of ``original_shape`` (uint8 for a boolean mask), by
            :func:`kseg.geometry.to_original_grid`.
        """
        return geometry.to_original_grid(
            self.image.with_array(np.asarray(prediction)),
            (self.original_affine, self.original_shape),
            is_label=is_label,
            fill=fill,
        )


def gantry_tilt_degrees(volume: Volume) -> float | None:
    """Degrees the slices of ``volume`` step off their planes' normal, or ``None`` when that
    is no gantry tilt by the thresholds of the DICOM reader's GantryTiltWarning."""
    from kseg.io.dicom import _gantry_tilt

    columns = volume.affine[:3, :3]
    return _gantry_tilt(columns[:, 0], geometry._slice_normal(columns), volume.shape[0])


def _source_of(volume: Volume) -> str | None:
    return volume.source_files[0] if volume.source_files else None


def _label_on_image_grid(image: Volume, label: Volume) -> Volume:
    """The label on the image's grid: as given, or moved without interpolation when it holds
    the image's voxels in another axis order or direction (a NIfTI label in LAS beside its
    LPS DICOM series); a label on any other grid is refused."""
    matched = geometry.match_grid(label, image, tolerance_mm=_SAME_GRID_TOLERANCE_MM)
    if matched is not None:
        return matched
    if sorted(label.shape) != sorted(image.shape):
        raise AlignmentError(
            _source_of(label),
            f"label shape {label.shape} differs from image shape {image.shape} "
            f"({_source_of(image)})",
        )
    raise AlignmentError(
        _source_of(label),
        f"label affine differs from the image's ({_source_of(image)}) by more than "
        f"{_SAME_GRID_TOLERANCE_MM} mm, also with its axes reordered or flipped:\n"
        f"{label.affine}\nvs\n{image.affine}",
    )


def _check_finite(image: Volume) -> None:
    """Refuse NaN or infinite voxels before anything is interpolated.

    Some converters write NaN outside the field of view (the corners of a CT's circular
    reconstruction); the body crop keeps those corners when the body fills the circle.
    Linear resampling spreads each NaN to the neighbouring voxels, and a 3D model given one
    predicts NaN over its whole receptive field, written out as background."""
    values = np.asarray(image.array)
    if values.dtype.kind != "f":
        return
    bad = int(np.count_nonzero(~np.isfinite(values)))
    if bad:
        raise UnreadableFileError(
            _source_of(image),
            f"{bad} of {values.size} voxels are NaN or infinite (converters write NaN outside "
            "the field of view); resampling would spread them and a model fed them predicts "
            "NaN, scored and written as background: replace them with the scan's background "
            "value first, e.g. numpy.nan_to_num(array, nan=-1024.0) for CT",
        )


def preprocess_volume(
    image: Volume,
    label: Volume | None = None,
    *,
    orientation: str | None = MSD_SPLEEN_ORIENTATION,
    spacing: Sequence[float] | float | None = MSD_SPLEEN_SPACING,
    crop_threshold: float | None = MSD_SPLEEN_WINDOW[0],
    crop_margin: int | Sequence[int] = 0,
) -> PreprocessedVolume:
    """Reorient, resample and crop a CT volume (and its label) the MSD spleen way.

    The label is checked to lie on the image's grid (a label holding the image's voxels in
    another axis order or direction, such as a LAS NIfTI beside its LPS DICOM series, is
    first moved onto it, without interpolation), then follows the image through every
    step onto exactly the same output grid (nearest neighbour, so it keeps its values).
    A gantry-tilted (sheared) scan, whose slices step off their planes' normal by
    :class:`kseg.io.GantryTiltWarning`'s thresholds, goes onto the orthogonal grid through
    its slice planes (:func:`kseg.geometry.deskew`) before the spacing is set, as dcm2niix
    converts such series: a 3D model learns and predicts on straight neighbourhoods. The
    output grid's values are then one interpolation of the scan itself, not of the deskewed
    copy; voxels the straight grid adds outside the scan get the scan's minimum (at most
    ``crop_threshold``, so the crop leaves them out).
    Windowing is left to the reader of the result (:func:`kseg.data.pipeline.window` with
    ``WINDOWS["spleen_msd"]``), so it can be stored in HU.

    Args:
        image: the scan, e.g. from :func:`kseg.io.read_nifti`.
        label: its label map on the same grid (its voxels in any axis order or direction),
            or ``None`` (unlabelled scans).
        orientation: axis codes in ``(x, y, z)`` order (:func:`kseg.geometry.reorient`), or
            ``None`` to keep the stored orientation.
        spacing: target voxel size in mm along ``(z, y, x)`` -- note the order: the
            literature's 1.5 x 1.5 x 2.0 mm in ``(x, y, z)`` is ``(2.0, 1.5, 1.5)`` here --
            or one number for every axis, or ``None`` to keep the spacing.
        crop_threshold: crop to the bounding box of the voxels above this value (HU), or
            ``None`` not to crop. The default, the window's lower bound -57 HU, keeps the
            body and drops the air around it.
        crop_margin: voxels kept around the box, one number or one per axis.

    Returns:
        :class:`PreprocessedVolume`.

    Raises:
        AlignmentError: the label lies on another grid than the image (not only its axes
            reordered or flipped).
        UnreadableFileError: an image voxel is NaN or infinite (named by the image's file).
        GeometryError: an invalid orientation or spacing.
        MaskError: nothing in the image is above ``crop_threshold``.

    Example:
        >>> import numpy as np
        >>> from kseg.phantoms.msd_spleen import spleen_phantom_case
        >>> case = spleen_phantom_case(2, shape=(8, 32, 32), spacing=(5.0, 4.0, 4.0))
        >>> prepared = preprocess_volume(case.image, case.label)  # e.g. read_nifti(...) twice
        >>> np.allclose(prepared.image.spacing, (2.0, 1.5, 1.5))
        True
        >>> prepared.label.shape == prepared.image.shape, np.unique(prepared.label.array)
        (True, array([0, 1], dtype=uint8))

    Reference:
        Cardoso et al., "MONAI: An open-source framework for deep learning in healthcare",
        arXiv:2211.02701 (2022), spleen segmentation tutorial.
    """
    _check_finite(image)
    if label is not None:
        label = _label_on_image_grid(image, label)
    original = image
    original_affine, original_shape = image.affine.copy(), image.shape

    sheared = gantry_tilt_degrees(image) is not None
    if sheared:
        outside = float(np.min(image.array))
        if crop_threshold is not None:
            outside = min(outside, float(crop_threshold))
        image = deskew(image, fill=outside)
    if orientation is not None:
        image = reorient(image, orientation)
    if spacing is not None:
        image = resample(image, spacing)
        if sheared:
            # deskewing and resampling chose the grid; its values come from the scan in one
            # interpolation, not two
            image = resample_to(original, image.affine, image.shape, fill=outside)
    if label is not None:
        # Onto the image's output grid itself: one grid, whatever rounding each step does.
        label = resample_to(label, image.affine, image.shape, is_label=True)

    crop_box = None
    if crop_threshold is not None:
        foreground = np.asarray(image.array) > crop_threshold
        image, crop_box = crop_foreground(image, mask=foreground, margin=crop_margin)
        if label is not None:
            label, _ = crop_foreground(label, mask=foreground, margin=crop_margin)
    return PreprocessedVolume(
        image=image,
        label=label,
        original_affine=original_affine,
        original_shape=tuple(int(n) for n in original_shape),
        crop_box=crop_box,
    )

