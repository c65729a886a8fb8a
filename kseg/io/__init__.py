"""Readers for the formats challenge datasets ship (series and volumes as a Volume, single
radiographs and masks as arrays), and de-identification of DICOM trees."""

from kseg.io.deid import DeidReport, deidentify
from kseg.io.dicom import (
    GantryTiltWarning,
    HeaderValueWarning,
    LossyImageWarning,
    SkippedFileWarning,
    UnevenSliceSpacingWarning,
    read_dicom_image,
    read_dicom_series,
    scan_dicom_files,
)
from kseg.io.dicom_seg import read_dicom_seg, read_dicom_seg_masks, write_dicom_seg
from kseg.io.masks import (
    CHAOS_MR_LABEL_RANGES,
    LabelRule,
    LossyMaskWarning,
    apply_value_ranges,
    binarize,
    map_label_ranges,
    read_labels,
    read_mask,
    read_mask_stack,
)
from kseg.io.nifti import (
    FormMismatchWarning,
    NonFiniteVoxelWarning,
    UnknownOrientationWarning,
    read_nifti,
    read_nifti_labels,
    write_nifti,
)
from kseg.io.npz import MaskAlignment, align_mask_to_volume, read_aligned_npz_mask, read_npz_mask
from kseg.io.png_stack import write_png_stack
from kseg.io.radiograph import JSRT_BIT_DEPTH, read_jsrt_image, read_radiograph
from kseg.io.rtstruct import (
    LCTSC_ROI_NAMES,
    ContourOutsideVolumeWarning,
    ContourReferenceWarning,
    RoiContours,
    RoiNameWarning,
    canonical_roi_name,
    match_roi_names,
    rasterize_rtstruct,
    read_rtstruct,
)
from kseg.io.rtstruct_writer import BlankSeriesUidWarning, label_outlines, write_rtstruct
from kseg.io.volume import Volume

__all__ = [
    "JSRT_BIT_DEPTH",
    "LCTSC_ROI_NAMES",
    "ContourOutsideVolumeWarning",
    "ContourReferenceWarning",
    "MaskAlignment",
    "RoiContours",
    "RoiNameWarning",
    "align_mask_to_volume",
    "canonical_roi_name",
    "match_roi_names",
    "rasterize_rtstruct",
    "read_aligned_npz_mask",
    "read_npz_mask",
    "read_rtstruct",
    "CHAOS_MR_LABEL_RANGES",
    "DeidReport",
    "GantryTiltWarning",
    "HeaderValueWarning",
    "FormMismatchWarning",
    "NonFiniteVoxelWarning",
    "UnknownOrientationWarning",
    "LabelRule",
    "LossyImageWarning",
    "LossyMaskWarning",
    "SkippedFileWarning",
    "UnevenSliceSpacingWarning",
    "Volume",
    "apply_value_ranges",
    "binarize",
    "deidentify",
    "map_label_ranges",
    "read_dicom_image",
    "read_dicom_series",
    "read_jsrt_image",
    "read_labels",
    "read_mask",
    "read_mask_stack",
    "read_nifti",
    "read_nifti_labels",
    "read_radiograph",
    "scan_dicom_files",
    "write_nifti",
    "BlankSeriesUidWarning",
    "label_outlines",
    "write_rtstruct",
    "write_png_stack",
    "read_dicom_seg",
    "read_dicom_seg_masks",
    "write_dicom_seg",
]
