"""Joint image + mask augmentation for 2D slices and 3D volumes.

Every layer takes Keras' augmentation structure, ``{"images": ..., "segmentation_masks":
...}`` (or an image tensor), moves images and masks with one random draw and leaves masks
untouched under intensity changes. Keras' own ``RandomFlip`` / ``RandomRotation`` /
``RandomZoom`` / ``RandomTranslation`` take the same dict and mix freely with these; kseg adds
what Keras lacks: per-sample probabilities, 3D, XLA-compilable resampling, an elastic
deformation that warps image and mask alike, and CT-style intensity operations.
"""

from kseg.augment.augmented_model import AugmentedModel, augment_batch
from kseg.augment.random_affine import RandomAffine
from kseg.augment.random_apply import RandomApply
from kseg.augment.random_axis_flip import RandomAxisFlip
from kseg.augment.random_contrast import RandomContrast
from kseg.augment.random_elastic_deformation import RandomElasticDeformation
from kseg.augment.random_gaussian_blur import RandomGaussianBlur
from kseg.augment.random_gaussian_noise import RandomGaussianNoise
from kseg.augment.random_rotate90 import RandomRotate90
from kseg.augment.resample import sample_at
from kseg.augment.segmentation_augmenter import SegmentationAugmenter, segmentation_augmenter

__all__ = [
    "AugmentedModel",
    "RandomAffine",
    "RandomApply",
    "RandomAxisFlip",
    "RandomContrast",
    "RandomElasticDeformation",
    "RandomGaussianBlur",
    "RandomGaussianNoise",
    "RandomRotate90",
    "SegmentationAugmenter",
    "augment_batch",
    "sample_at",
    "segmentation_augmenter",
]
