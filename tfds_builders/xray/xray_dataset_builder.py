"""Chest radiographs with per-class masks (JSRT + SCR, Montgomery, or your own set) as TFDS.

One example per radiograph: the image in its stored units (``uint16``, higher = brighter;
DICOM radiographs as a viewer displays them, unless the config says otherwise), a ``uint8``
label map, the patient id, the file name and the bit depth. Patients are dealt
to ``num_folds`` folds (:func:`kseg.data.splits.assign_folds`) and each fold is written as
its own split ``fold0`` .. ``fold{k-1}``, so every train / validation / test arrangement is
a split expression (:func:`kseg.data.splits.split_names`) and no patient is in two splits.
Training-set-size sweeps take nested patient subsets
(:func:`kseg.data.splits.nested_patient_subset`), and a config with ``noise_sigma > 0``
writes a separate, noisy copy for robustness studies. Masks are read by what each file
holds (:func:`kseg.io.read_labels`), and every radiograph's label map must contain the
config's ``required_labels`` (lungs, and in JSRT/SCR heart and clavicles), so wrongly read
masks fail loudly; the counts per split are in ``builder.info.metadata["foreground"]``.
The layouts are in :mod:`tfds_builders.xray.layout`, the reading of one radiograph and its
masks in :mod:`tfds_builders.xray.radiographs`.

Example:
    >>> import tensorflow_datasets as tfds
    >>> from tfds_builders import xray  # registers "xray"  # doctest: +SKIP
    >>> train = tfds.load("xray/generic", split="fold2+fold3+fold4")  # doctest: +SKIP

Reference:
    Shiraishi et al., AJR 174(1), 71-74 (2000) (JSRT); van Ginneken et al., Medical Image
    Analysis 10(1), 19-40 (2006) (SCR); Jaeger et al., Quant Imaging Med Surg 4(6), 475-477
    (2014) (Montgomery and Shenzhen); Stirenko et al., IEEE ELNANO 2018, 422-428 (Shenzhen
    lung masks).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import math
import re

import numpy as np
import tensorflow_datasets as tfds

from kseg.data.examples import fold_splits
from kseg.io import LabelRule
from kseg.io.dicom import DICOM_VALUES
from tfds_builders._beam import BeamOverPatients
from tfds_builders._foreground import ForegroundTally
from tfds_builders._manual import manual_folder
from tfds_builders.xray.layout import (
    GENERIC_LAYOUT,
    JSRT_LAYOUT,
    LAYOUTS,
    MONTGOMERY_LAYOUT,
    Record,
    find_records,
)
from tfds_builders.xray.radiographs import image_format, read_record_image, read_record_mask


@dataclasses.dataclass(eq=False)
class XrayConfig(tfds.core.BuilderConfig):
    """Where the radiographs are, what the masks mean and how patients are split.

    Attributes:
        layout: ``"jsrt_scr"``, ``"montgomery"`` or ``"generic"`` (see ``README.md``).
        class_names: name of every label, background first; label ``i`` is
            ``class_names[i]``.
        mask_folders: per-class binary masks as ``(folder, label)`` pairs, painted in this
            order, so a later pair wins where masks overlap. Each file is read as one
            structure by :func:`kseg.io.read_labels` (1-bit, 0/1, 0/255, 16-bit, palette,
            grey RGB, interpolated edges split at half scale, JPEG with a warning).
            Empty: one label-map mask per image, decoded with ``mask_value_ranges``.
        mask_value_ranges: ``(low, high, label)`` triples of 8-bit grey values, background
            included: stored values ``low..high`` (inclusive) become ``label``; a stored
            value in no range is a MaskError. Empty (the default): each label-map file is
            one binary structure, label 1, read like a ``mask_folders`` file (so the
            0/255 lung masks of the public sets, edges interpolated or not, and 1-bit or
            0/1 files all work, and a file of 0 and 100 is refused).
        required_labels: labels every radiograph of the dataset shows; an image whose label
            map lacks one is a MaskError naming it. Other labels of ``class_names`` only give
            an EmptyLabelWarning per image when absent.
        mask_suffix: appended to an image's stem to name its mask (e.g. ``"_mask"``).
        patient_id_pattern: regular expression searched in every file stem; its group
            ``patient`` (or its first group, or the whole match) is the patient id. ``None``:
            one patient per image, the stem being the id.
        num_folds: number of patient-level folds, written as splits ``fold0`` ..
        split_seed: seed of :func:`kseg.data.splits.assign_folds`.
        noise_sigma: standard deviation of Gaussian noise added to every image, in its
            stored units, rounded and clipped to ``0 .. 2**bit_depth - 1``. 0 writes the
            clean data. Make noisy configs with :func:`noisy_config`, which renames them, so
            a noisy copy never lands in the clean dataset's folder.
        noise_seed: seed of the noise; each image's stream is also keyed by its file name,
            so its noise does not depend on which other files are present.
        dicom_values: how DICOM radiographs are read (:func:`kseg.io.read_radiograph`):
            ``"displayed"`` (the default) applies their VOI LUT or window and Presentation
            LUT Shape, as a viewer shows them; the PNG / JPEG sets (Shenzhen, Montgomery)
            hold exactly that, so both kinds reach a model with one contrast.
            ``"modality"`` keeps their stored / modality units (version 1.0.0's reading).
            Other formats are read the same either way.
    """

    layout: str = "generic"
    class_names: tuple[str, ...] = ("background", "lungs")
    mask_folders: tuple[tuple[str, int], ...] = ()
    mask_value_ranges: tuple[tuple[int, int, int], ...] = ()
    required_labels: tuple[int, ...] = ()
    mask_suffix: str = ""
    patient_id_pattern: str | None = None
    num_folds: int = 5
    split_seed: int = 0
    noise_sigma: float = 0.0
    noise_seed: int = 0
    dicom_values: str = "displayed"


def noisy_config(config: XrayConfig, sigma: float, *, seed: int = 0) -> XrayConfig:
    """A copy of ``config`` that adds Gaussian noise of ``sigma`` stored units.

    The copy is named ``<name>_noise<sigma>`` (a ``.`` in sigma becomes ``p``), so TFDS
    writes it into its own folder and the clean dataset stays untouched.

    Args:
        config: a clean (or noisy) config, e.g. ``Builder.builder_configs["jsrt_scr"]``.
        sigma: noise standard deviation in the image's stored units, positive.
        seed: noise seed.

    Example:
        >>> noisy = noisy_config(Builder.builder_configs["jsrt_scr"], 40)
        >>> noisy.name, noisy.noise_sigma
        ('jsrt_scr_noise40', 40.0)
        >>> Builder(config=noisy, data_dir="/tmp/tfds")  # doctest: +SKIP
    """
    sigma = float(sigma)
    if not (math.isfinite(sigma) and sigma > 0):
        raise ValueError(f"sigma must be a positive number, got {sigma!r}")
    tag = f"{sigma:g}".replace(".", "p").replace("+", "")
    suffix = "" if seed == 0 else f"_seed{seed}"
    return dataclasses.replace(
        config,
        name=f"{config.name}_noise{tag}{suffix}",
        description=f"{config.description} Gaussian noise, sigma {sigma:g} stored units.",
        noise_sigma=sigma,
        noise_seed=seed,
    )


class Builder(BeamOverPatients, tfds.core.GeneratorBasedBuilder):
    """Chest radiographs with lung (and heart, clavicle) label maps, one example per image.

    Configs: ``jsrt_scr`` (background, lungs, heart, clavicles), ``jsrt_scr_left_right``
    (each lung and clavicle separately), ``montgomery`` (background, left lung, right
    lung), ``montgomery_lungs`` (background, lungs) and ``generic`` (your own
    ``images/`` + ``masks/``; background / lungs from binary lung masks). Every config
    requires all its labels in every radiograph. For another class map or fold count, pass
    your own instance, e.g.
    ``Builder(config=dataclasses.replace(Builder.builder_configs["generic"],
    name="mine", class_names=("background", "lungs", "heart"),
    mask_value_ranges=((0, 0, 0), (1, 1, 1), (2, 2, 2)), required_labels=(1, 2)))``.

    With a Beam runner or Beam options in the download config, each split is generated by
    a Beam pipeline over its radiographs (:mod:`tfds_builders._beam`); the examples and the
    foreground statistics are the same either way.
    """

    VERSION = tfds.core.Version("1.2.0")
    RELEASE_NOTES = {
        "1.0.0": "Initial release.",
        "1.1.0": "DICOM radiographs are read as displayed (VOI LUT or window, Presentation "
        "LUT Shape) by default (XrayConfig.dicom_values); metadata image_formats.",
        "1.2.0": "DICOM radiographs: PixelPaddingValue / PixelPaddingRangeLimit padding reads "
        "black and never sets the image's range; MONOCHROME1 is inverted after a Modality "
        "LUT table; an XA / XRF image with PixelIntensityRelationship LOG or DISP keeps its "
        "stored values (its Modality LUT maps back to linear intensity).",
    }
    MANUAL_DOWNLOAD_INSTRUCTIONS = f"""\
The files are read from the manual folder (by default ~/tensorflow_datasets/downloads/manual/,
or tfds.download.DownloadConfig(manual_dir=...)) and never modified. One folder can hold all
three layouts.

jsrt_scr, jsrt_scr_left_right: request the JSRT database from the Japanese Society of
Radiological Technology (http://db.jsrt.or.jp/eng.php; free for research and education after
registration) and extract All247images; download the SCR masks (scr.zip from
https://www.isi.uu.nl/Research/Databases/SCR/ or one of its mirrors; research use, cite van
Ginneken et al. 2006) and extract them beside it, so that the manual folder holds:

{JSRT_LAYOUT}

montgomery, montgomery_lungs: download the Montgomery County chest X-ray set from the U.S.
National Library of Medicine (https://lhncbc.nlm.nih.gov/LHC-downloads/downloads.html,
"Tuberculosis Chest X-ray Image Data Sets") and extract it:

{MONTGOMERY_LAYOUT}

generic: your own set, or the Shenzhen set (same NLM page; lung masks by Stirenko et al.,
CC BY-NC-SA 4.0, https://www.kaggle.com/datasets/yoctoman/shcxr-lung-mask), laid out as:

{GENERIC_LAYOUT}"""

    BUILDER_CONFIGS = [
        XrayConfig(
            name="jsrt_scr",
            description="JSRT radiographs, SCR masks: background, lungs, heart, clavicles.",
            layout="jsrt_scr",
            class_names=("background", "lungs", "heart", "clavicles"),
            mask_folders=(
                ("right lung", 1),
                ("left lung", 1),
                ("heart", 2),
                ("right clavicle", 3),
                ("left clavicle", 3),
            ),
            required_labels=(1, 2, 3),
        ),
        XrayConfig(
            name="jsrt_scr_left_right",
            description="JSRT radiographs, SCR masks with each lung and clavicle separate.",
            layout="jsrt_scr",
            class_names=(
                "background",
                "right lung",
                "left lung",
                "heart",
                "right clavicle",
                "left clavicle",
            ),
            mask_folders=(
                ("right lung", 1),
                ("left lung", 2),
                ("heart", 3),
                ("right clavicle", 4),
                ("left clavicle", 5),
            ),
            required_labels=(1, 2, 3, 4, 5),
        ),
        XrayConfig(
            name="montgomery",
            description="Montgomery County set: background, left lung, right lung.",
            layout="montgomery",
            class_names=("background", "left lung", "right lung"),
            mask_folders=(("leftMask", 1), ("rightMask", 2)),
            required_labels=(1, 2),
            patient_id_pattern=r"^(MCUCXR_\d+)",
        ),
        XrayConfig(
            name="montgomery_lungs",
            description="Montgomery County set: background, lungs (both lung fields).",
            layout="montgomery",
            class_names=("background", "lungs"),
            mask_folders=(("leftMask", 1), ("rightMask", 1)),
            required_labels=(1,),
            patient_id_pattern=r"^(MCUCXR_\d+)",
        ),
        XrayConfig(
            name="generic",
            description="Your own images/ + masks/ folders; binary lung masks by default.",
            layout="generic",
            # Every chest radiograph shows lungs; with another class map, set the labels
            # every image has (none: empty labels only warn).
            required_labels=(1,),
        ),
    ]

    def _info(self) -> tfds.core.DatasetInfo:
        _check_config(self.builder_config)
        return self.dataset_info_from_configs(
            description=(
                "Chest radiographs, one example per image: image in its stored units "
                "(uint16, higher = brighter; DICOM images read with dicom_values="
                f"{self.builder_config.dicom_values!r}), uint8 label map (labels are the config's "
                "class_names), patient id, file name and bit depth. Splits fold0.. are "
                "patient-level folds."
            ),
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Tensor(
                        shape=(None, None), dtype=np.uint16, encoding=tfds.features.Encoding.ZLIB
                    ),
                    "mask": tfds.features.Tensor(
                        shape=(None, None), dtype=np.uint8, encoding=tfds.features.Encoding.ZLIB
                    ),
                    "patient_id": tfds.features.Text(),
                    "image_id": tfds.features.Text(),
                    "bit_depth": np.int32,
                }
            ),
            supervised_keys=("image", "mask"),
            homepage="https://www.isi.uu.nl/Research/Databases/SCR/",
            metadata=tfds.core.MetadataDict(class_names=list(self.builder_config.class_names)),
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        config = self.builder_config
        root = manual_folder(dl_manager, self.MANUAL_DOWNLOAD_INSTRUCTIONS)
        records = find_records(root, config)
        # What the images were, for the run's record of how to read new ones alike.
        self.info.metadata["image_formats"] = sorted({image_format(r.image) for r in records})
        patients = sorted({record.patient_id for record in records})
        splits = fold_splits(patients, config.num_folds, seed=config.split_seed, where=str(root))
        tally = ForegroundTally(
            {label: name for label, name in enumerate(config.class_names) if label},
            required=config.required_labels,
            metadata=self.info.metadata,
        )
        return {
            name: self._generate_examples(
                name, [record for record in records if record.patient_id in members], tally
            )
            for name, members in splits.items()
        }

    def _generate_examples(self, split: str, records, tally: ForegroundTally):
        """Each radiograph's label map is checked and counted as its own unit in ``split``
        before its example is yielded (so the statistics' ``patients`` count radiographs)."""
        return self._examples_by_patient(
            split, records, functools.partial(record_examples, self.builder_config), tally
        )


def record_examples(config: XrayConfig, record: Record, split: str, tally: ForegroundTally):
    """The one example of a radiograph, its label map checked (and counted) first."""
    image, bit_depth = read_record_image(record, config)
    mask = read_record_mask(record, config, image.shape)
    tally.check(
        split,
        f"{record.patient_id}, radiograph {record.image_id}",
        mask,
        mask_source=", ".join(str(path) for path in record.masks),
    )
    if config.noise_sigma > 0:
        image = add_gaussian_noise(
            image,
            config.noise_sigma,
            bit_depth,
            seed=config.noise_seed,
            key=record.image_id,
        )
    yield (
        record.image_id,
        {
            "image": image,
            "mask": mask,
            "patient_id": record.patient_id,
            "image_id": record.image_id,
            "bit_depth": bit_depth,
        },
    )


def add_gaussian_noise(
    image: np.ndarray, sigma: float, bit_depth: int, *, seed: int = 0, key: str = ""
) -> np.ndarray:
    """Add seeded Gaussian noise in stored units, rounded and clipped to the bit depth.

    Args:
        image: ``uint16`` image in its stored units.
        sigma: noise standard deviation in those units.
        bit_depth: the valid range is ``0 .. 2**bit_depth - 1``.
        seed: noise seed.
        key: text mixed into the seed (the file name), so every image gets its own stream.

    Returns:
        ``uint16`` noisy copy; ``image`` is not modified.

    Example:
        >>> flat = np.full((64, 64), 2000, np.uint16)
        >>> noisy = add_gaussian_noise(flat, 20.0, 12, key="a.png")
        >>> bool(15 < noisy.std() < 25)
        True
    """
    digest = hashlib.sha256(key.encode()).digest()
    words = [int.from_bytes(digest[i : i + 4], "little") for i in range(0, 16, 4)]
    rng = np.random.default_rng([int(seed), *words])
    noisy = image.astype(np.float64) + rng.normal(0.0, float(sigma), size=image.shape)
    return np.clip(np.rint(noisy), 0, 2**bit_depth - 1).astype(np.uint16)


# ----------------------------------------------------------------------------- layouts


def _check_config(config: XrayConfig) -> None:
    where = f"config {config.name!r}"
    if config.layout not in LAYOUTS:
        raise ValueError(f"{where}: layout must be one of {LAYOUTS}, got {config.layout!r}")
    num_classes = len(config.class_names)
    if num_classes < 2 or num_classes > 256:
        raise ValueError(f"{where}: class_names needs background and 1..255 classes")
    labels = [label for _, label in config.mask_folders] + [
        label for *_, label in config.mask_value_ranges
    ]
    bad = [label for label in labels if not 0 <= label < num_classes]
    if bad:
        raise ValueError(f"{where}: labels {bad} are outside 0..{num_classes - 1} (class_names)")
    if config.layout != "generic" and not config.mask_folders:
        raise ValueError(f"{where}: layout {config.layout!r} needs mask_folders")
    try:
        LabelRule(grey_levels=config.mask_value_ranges)
    except ValueError as exc:
        raise ValueError(f"{where}: mask_value_ranges: {exc}") from exc
    bad_required = [label for label in config.required_labels if not 0 < label < num_classes]
    if bad_required:
        raise ValueError(
            f"{where}: required_labels {bad_required} are not foreground labels "
            f"1..{num_classes - 1} of class_names"
        )
    if config.dicom_values not in DICOM_VALUES:
        raise ValueError(
            f"{where}: dicom_values must be one of {DICOM_VALUES}, got {config.dicom_values!r}"
        )
    if not (math.isfinite(config.noise_sigma) and config.noise_sigma >= 0):
        raise ValueError(f"{where}: noise_sigma must be >= 0, got {config.noise_sigma!r}")
    if config.patient_id_pattern is not None:
        try:
            re.compile(config.patient_id_pattern)
        except re.error as exc:
            raise ValueError(f"{where}: patient_id_pattern is invalid ({exc})") from exc
