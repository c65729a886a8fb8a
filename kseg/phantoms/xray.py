"""Synthetic chest radiographs, written in the on-disk layouts of the public lung-field sets.

Everything this module makes is SYNTHETIC: a posteroanterior chest radiograph drawn from
ellipses and bands (body, two lung fields darker than the mediastinum, heart, clavicles,
posterior ribs, spine) with Gaussian quantum noise. It lets the ``xray`` dataset builder's
tests, its ``dummy_data/`` and ``examples/xray_multiclass.py`` run without the real data,
whose licences forbid redistribution. Every folder written holds ``SYNTHETIC.txt`` and
every PNG / TIFF / DICOM says so in its metadata (PNG text ``Comment``, TIFF
``ImageDescription``, DICOM ``ImageComments`` and PatientName ``KSEG^PHANTOM``); raw JSRT
``.IMG`` files have no header to carry the note.

Orientation is the radiological view of a PA film: the patient's right side is on the
image's left, so ``"right lung"`` occupies low column indices. Lung fields exclude the
heart; the clavicles overlap the lung apices, as in the SCR annotations.

Layouts (see ``tfds_builders/xray/README.md``):

* :func:`write_jsrt_scr`: ``All247images/*.IMG`` (raw big-endian 12-bit, stored with
  JSRT's polarity: a higher stored value is darker) and SCR-style GIF masks at half the
  image resolution in ``scratch/fold{1,2}/masks/<structure>/``.
* :func:`write_montgomery`: ``MontgomerySet/CXR_png`` (16-bit PNG holding 12-bit values)
  and ``MontgomerySet/ManualMask/{leftMask,rightMask}``.
* :func:`write_generic`: ``images/`` + ``masks/`` (one label-map PNG per image, or one
  folder of binary masks per class), images as 8/16-bit PNG, TIFF or DICOM.

Masks come in every encoding a reader meets (:data:`MASK_ENCODINGS`: 1-bit, 8- and 16-bit
grey, palettes, grey RGB(A), interpolated edges, JPEG), by default a different one per image
(:func:`default_mask_encoding`), so one phantom folder exercises them all.

Regenerate the builder's dummy data with::

    python -m kseg.phantoms.xray tfds_builders/xray/dummy_data

Example:
    >>> phantom = chest_radiograph((64, 64), seed=1)
    >>> phantom.image.dtype, phantom.image.shape, int(phantom.image.max()) < 2**12
    (dtype('uint16'), (64, 64), True)
    >>> sorted(phantom.structures)[:2]
    ['heart', 'left clavicle']

Reference:
    Shiraishi et al., "Development of a digital image database for chest radiographs with
    and without a lung nodule", AJR 174(1), 71-74 (2000) (JSRT layout);
    van Ginneken, Stegmann and Loog, "Segmentation of anatomical structures in chest
    radiographs using supervised methods", Medical Image Analysis 10(1), 19-40 (2006) (SCR
    structures); Jaeger et al., "Two public chest X-ray datasets for computer-aided screening
    of pulmonary diseases", Quant Imaging Med Surg 4(6), 475-477 (2014) (Montgomery layout).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import pathlib
import shutil
import tempfile
from collections.abc import Sequence

import numpy as np
import pydicom
from PIL import Image, PngImagePlugin, TiffImagePlugin
from pydicom.uid import ComputedRadiographyImageStorage, generate_uid

from kseg.errors import LayoutError
from kseg.io.dicom_writer import new_dataset, set_grayscale_pixels
from kseg.io.radiograph import JSRT_BIT_DEPTH
from kseg.phantoms._common import IMPLEMENTATION_VERSION_NAME, SYNTHETIC_NOTICE, check_seed

STRUCTURES = ("right lung", "left lung", "heart", "right clavicle", "left clavicle")
"""Structures of :class:`ChestRadiographPhantom`, named as the SCR mask folders (patient's
sides)."""

GENERIC_CLASSES = ("lungs", "heart", "clavicles")
"""Foreground classes :func:`write_generic` can draw; 1, 2, 3 in a label map."""

_CLASS_STRUCTURES = {
    "lungs": ("right lung", "left lung"),
    "heart": ("heart",),
    "clavicles": ("right clavicle", "left clavicle"),
}

_SEED_TAG = 0x63787220  # "cxr ": keeps these streams apart from other kseg phantoms

MASK_ENCODINGS = {
    "1bit": "1-bit PNG (mode '1'); binary masks only",
    "8bit": "8-bit grey PNG: 0 / 255, or the class grey values of a label map",
    "8bit_01": "8-bit grey PNG holding 0 / 1; binary masks only",
    "8bit_edges": "8-bit grey PNG, 0 / 255 with interpolated edges (drawn 4x finer and "
    "averaged, like a resized mask); binary masks only",
    "16bit": "16-bit grey PNG: 0 / 65535, or the class grey values times 257",
    "16bit_01": "16-bit grey PNG holding 0 / 1; binary masks only",
    "palette_grey": "palette file of grey entries in reverse order (index is not the value)",
    "palette_index": "palette file of colour entries; the index is 1 (binary) or the grey value",
    "rgb": "RGB PNG with three equal channels",
    "rgba": "RGBA PNG with three equal channels and opaque alpha",
    "jpg": "JPEG (quality 95) of the 0 / 255 mask, suffix .jpg; binary masks only, lossy",
}
"""Mask encodings the writers can store; the value says what each one stores."""

DICOM_DISPLAY_ENCODINGS = {
    "none": "MONOCHROME2, no VOI transform: the stored values are the image",
    "window": "MONOCHROME2 with two windows (the first clips the image), VOILUTFunction "
    "absent (LINEAR)",
    "linear_exact": "the windows of 'window' with VOILUTFunction LINEAR_EXACT",
    "sigmoid": "the windows of 'window' with VOILUTFunction SIGMOID",
    "voi_lut": "a VOILUTSequence table (square-root curve, 16-bit entries) beside the "
    "windows, which it takes precedence over",
    "monochrome1": "MONOCHROME1 (stored = maximum - image) with Presentation LUT Shape "
    "INVERSE, as DX files pair them, and a window on the stored values",
    "inverse": "MONOCHROME2 with Presentation LUT Shape INVERSE (stored = maximum - image) "
    "and a window on the stored values",
}
"""How :func:`write_generic` encodes the display of DICOM radiographs (PS3.3 C.11): each
key's value says what it writes. Every one but ``"none"`` shows the image, higher
brighter, through a VOI transform."""

_BINARY_ONLY_ENCODINGS = frozenset({"1bit", "8bit_01", "8bit_edges", "16bit_01", "jpg"})
# Image k gets entry k % len of its cycle by default, so a folder of a few images holds
# several encodings. Edges and JPEG are left out of the defaults: they do not round-trip a
# mask exactly. SCR's masks are GIFs, which only palettes can be.
_DEFAULT_ENCODING_CYCLES = {
    "binary": ("8bit", "1bit", "16bit", "palette_grey", "8bit_01", "palette_index", "rgb",
               "16bit_01", "rgba"),
    "label_map": ("8bit", "16bit", "palette_grey", "palette_index", "rgb", "rgba"),
    "gif": ("palette_grey", "palette_index"),
}
_EDGE_OVERSAMPLING = 4


@dataclasses.dataclass(frozen=True)
class ChestRadiographPhantom:
    """One synthetic PA chest radiograph.

    Attributes:
        image: ``uint16`` ``(rows, columns)``, higher = brighter (more attenuation), in
            ``0 .. 2**bit_depth - 1``.
        structures: boolean mask of every name in :data:`STRUCTURES`, on the image grid.
        bit_depth: bits of the stored values.
    """

    image: np.ndarray
    structures: dict[str, np.ndarray]
    bit_depth: int


@dataclasses.dataclass(frozen=True)
class _Anatomy:
    """Seeded anatomy in normalised coordinates (column, row in [0, 1]); grid-free, so the
    same seed gives the same shapes on the image grid and on a coarser mask grid."""

    body: tuple[float, float, float, float]  # centre u, v, semi-axes a, b
    lungs: dict[str, tuple[float, float, float, float]]
    heart: tuple[float, float, float, float, float]  # u, v, a, b, angle (degrees)
    clavicles: dict[str, tuple[float, float, float, float, float]]
    rib_start: float
    rib_step: float

    @classmethod
    def draw(cls, seed: int) -> _Anatomy:
        rng = np.random.default_rng([check_seed(seed), _SEED_TAG])

        def jitter(scale: float) -> float:
            return float(rng.uniform(-scale, scale))

        lung_top = 0.17 + jitter(0.02)
        lung_height = 0.27 + jitter(0.02)
        lungs = {
            "right lung": (
                0.31 + jitter(0.015),
                lung_top + lung_height,
                0.14 + jitter(0.01),
                lung_height,
            ),
            "left lung": (
                0.69 + jitter(0.015),
                lung_top + lung_height + 0.01,
                0.13 + jitter(0.01),
                lung_height - 0.01,
            ),
        }
        clavicle_row = lung_top + 0.04 + jitter(0.01)
        clavicle_angle = 14.0 + jitter(4.0)
        clavicles = {
            # The lateral end rises: image left for the right clavicle, image right for the left.
            "right clavicle": (0.33 + jitter(0.01), clavicle_row, 0.16, 0.022, clavicle_angle),
            "left clavicle": (0.67 + jitter(0.01), clavicle_row, 0.16, 0.022, -clavicle_angle),
        }
        heart = (
            0.56 + jitter(0.02),
            0.64 + jitter(0.02),
            0.15 + jitter(0.015),
            0.12 + jitter(0.01),
            -20.0 + jitter(6.0),
        )
        return cls(
            body=(0.5, 0.62, 0.43 + jitter(0.02), 0.62),
            lungs=lungs,
            heart=heart,
            clavicles=clavicles,
            rib_start=lung_top + 0.03 + jitter(0.01),
            rib_step=0.055 + jitter(0.004),
        )


def _grid(shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    rows, columns = shape
    v = (np.arange(rows, dtype=np.float64)[:, None] + 0.5) / rows
    u = (np.arange(columns, dtype=np.float64)[None, :] + 0.5) / columns
    return u, v


def _ellipse_radius(u, v, centre_u, centre_v, a, b, angle_deg=0.0, power=2.0):
    """Generalised radius: < 1 inside the (super)ellipse."""
    angle = np.deg2rad(angle_deg)
    du, dv = u - centre_u, v - centre_v
    along = du * np.cos(angle) + dv * np.sin(angle)
    across = -du * np.sin(angle) + dv * np.cos(angle)
    return (np.abs(along / a) ** power + np.abs(across / b) ** power) ** (1.0 / power)


def _structure_masks(anatomy: _Anatomy, shape: tuple[int, int]) -> dict[str, np.ndarray]:
    u, v = _grid(shape)
    heart = _ellipse_radius(u, v, *anatomy.heart) < 1.0
    masks = {"heart": heart}
    for name, (cu, cv, a, b) in anatomy.lungs.items():
        masks[name] = (_ellipse_radius(u, v, cu, cv, a, b, power=2.6) < 1.0) & ~heart
    for name, params in anatomy.clavicles.items():
        masks[name] = _ellipse_radius(u, v, *params) < 1.0
    return {name: masks[name] for name in STRUCTURES}


def structure_masks(shape: Sequence[int], seed: int = 0) -> dict[str, np.ndarray]:
    """The anatomy of :func:`chest_radiograph` with ``seed``, drawn on any grid.

    Args:
        shape: ``(rows, columns)`` of the grid, each at least 8.
        seed: the phantom's seed.

    Returns:
        Boolean mask of every name in :data:`STRUCTURES`.

    Example:
        >>> masks = structure_masks((32, 32), seed=3)
        >>> bool((masks["heart"] & masks["left lung"]).any())
        False
    """
    return _structure_masks(_Anatomy.draw(seed), _check_shape(shape))


def chest_radiograph(
    shape: Sequence[int] = (256, 256),
    *,
    seed: int = 0,
    bit_depth: int = JSRT_BIT_DEPTH,
    noise: float = 0.01,
) -> ChestRadiographPhantom:
    """A synthetic PA chest radiograph and its structure masks.

    The image is a sum of projected thicknesses (body with an elliptical thickness profile,
    air of the lungs subtracted, heart, spine, ribs and clavicles added), mapped linearly
    onto 8 % .. 83 % of the stored range, plus Gaussian noise of ``noise`` times the
    range's maximum, rounded and clipped.

    Args:
        shape: ``(rows, columns)``, each at least 8.
        seed: non-negative integer; anatomy and noise are fixed by it.
        bit_depth: bits of the stored values, 8 to 16.
        noise: noise standard deviation as a fraction of ``2**bit_depth - 1``.

    Returns:
        A :class:`ChestRadiographPhantom`.

    Example:
        >>> phantom = chest_radiograph((48, 48), seed=0, bit_depth=8)
        >>> lungs = phantom.structures["right lung"] | phantom.structures["left lung"]
        >>> bool(phantom.image[lungs].mean() < phantom.image[phantom.structures["heart"]].mean())
        True
    """
    shape = _check_shape(shape)
    if isinstance(bit_depth, bool) or not isinstance(bit_depth, int) or not 8 <= bit_depth <= 16:
        raise ValueError(f"bit_depth must be an integer in 8..16, got {bit_depth!r}")
    if not noise >= 0:
        raise ValueError(f"noise must be non-negative, got {noise!r}")
    anatomy = _Anatomy.draw(seed)
    masks = _structure_masks(anatomy, shape)
    u, v = _grid(shape)

    body_radius = _ellipse_radius(u, v, *anatomy.body)
    thickness = np.sqrt(np.clip(1.0 - body_radius**2, 0.0, None))
    lung_air = np.zeros(shape)
    for cu, cv, a, b in anatomy.lungs.values():
        lung_radius = _ellipse_radius(u, v, cu, cv, a, b, power=2.6)
        lung_air += np.sqrt(np.clip(1.0 - lung_radius**2, 0.0, None))
    heart = np.sqrt(np.clip(1.0 - _ellipse_radius(u, v, *anatomy.heart) ** 2, 0.0, None))
    spine = np.clip(1.0 - np.abs(u - 0.5) / 0.045, 0.0, None) * (v > 0.12)
    ribs = np.zeros(shape)
    for k in range(10):
        # Posterior ribs: arcs sagging laterally, visible inside the body.
        centre_row = anatomy.rib_start + k * anatomy.rib_step + 0.4 * (u - 0.5) ** 2
        ribs += np.clip(1.0 - np.abs(v - centre_row) / 0.012, 0.0, None)
    ribs *= (body_radius < 1.0) & (np.abs(u - 0.5) > 0.05)
    clavicles = masks["right clavicle"] | masks["left clavicle"]

    attenuation = (
        thickness - 0.6 * lung_air + 0.35 * heart + 0.3 * spine + 0.15 * ribs + 0.3 * clavicles
    )
    attenuation = np.clip(attenuation, 0.0, 1.4) / 1.4
    maximum = 2**bit_depth - 1
    rng = np.random.default_rng([check_seed(seed), _SEED_TAG, 1])
    image = maximum * (0.08 + 0.75 * attenuation)
    image += rng.standard_normal(shape) * (noise * maximum)
    image = np.clip(np.rint(image), 0, maximum).astype(np.uint16)
    return ChestRadiographPhantom(image=image, structures=masks, bit_depth=bit_depth)


def label_map(
    structures: dict[str, np.ndarray], classes: Sequence[str] = GENERIC_CLASSES
) -> np.ndarray:
    """Merge structure masks into a label map: ``classes[i]`` becomes label ``i + 1``.

    Classes are painted in the given order, so a later class wins where two overlap (with
    the default order the clavicles cover the lung apices, as in the seed's 3-class masks).

    Args:
        structures: masks of :data:`STRUCTURES` (from :class:`ChestRadiographPhantom` or
            :func:`structure_masks`).
        classes: names from :data:`GENERIC_CLASSES`.

    Example:
        >>> labels = label_map(structure_masks((32, 32)), ("lungs",))
        >>> sorted(np.unique(labels).tolist())
        [0, 1]
    """
    classes = _check_classes(classes)
    first = next(iter(structures.values()))
    labels = np.zeros(first.shape, dtype=np.uint8)
    for label, name in enumerate(classes, start=1):
        for structure in _CLASS_STRUCTURES[name]:
            labels[structures[structure]] = label
    return labels


def mask_values(classes: Sequence[str] = GENERIC_CLASSES) -> dict[str, int]:
    """Stored grey value of each class in :func:`write_generic`'s label-map PNGs.

    Classes are spread evenly over 0..255 (``255 // len(classes)`` apart), so with one
    class it is 255, the convention of the public lung-mask sets, and with three 85, 170,
    255.

    Example:
        >>> mask_values()
        {'lungs': 85, 'heart': 170, 'clavicles': 255}
    """
    classes = _check_classes(classes)
    step = 255 // len(classes)
    return {name: step * label for label, name in enumerate(classes, start=1)}


def default_mask_encoding(kind: str, index: int) -> str:
    """The mask encoding the writers give image ``index`` by default.

    Args:
        kind: ``"binary"`` (one structure per file), ``"label_map"`` (several classes in one
            file) or ``"gif"`` (SCR's GIF masks).
        index: 0-based image number.

    Example:
        >>> [default_mask_encoding("binary", k) for k in range(3)]
        ['8bit', '1bit', '16bit']
    """
    if kind not in _DEFAULT_ENCODING_CYCLES:
        raise ValueError(f"kind must be one of {sorted(_DEFAULT_ENCODING_CYCLES)}, got {kind!r}")
    cycle = _DEFAULT_ENCODING_CYCLES[kind]
    return cycle[index % len(cycle)]


def write_jsrt_scr(
    root: os.PathLike | str,
    *,
    num_images: int = 5,
    size: int = 64,
    seed: int = 0,
    mask_encoding: str | None = None,
) -> pathlib.Path:
    """Write synthetic radiographs in the JSRT + SCR layout::

        root/All247images/JPCLN001.IMG ...  JPCNN001.IMG ...
        root/scratch/fold1/masks/<structure>/JPCLN001.gif  (odd image numbers)
        root/scratch/fold2/masks/<structure>/JPCLN002.gif  (even image numbers)

    ``.IMG`` files are headerless ``size x size`` big-endian 16-bit words holding 12-bit
    values stored with JSRT's polarity, ``4095 - image`` (the real files are 2048 x 2048).
    Masks are ``size/2 x size/2`` GIFs (black background, white structure), drawn from the
    same anatomy on the coarser grid, as SCR's were drawn on 1024 x 1024 copies. Image names
    alternate between nodule (``JPCLN``) and non-nodule (``JPCNN``) cases.

    Args:
        root: folder to write into (created if missing); ``All247images`` must not exist.
        num_images: number of radiographs, at least 1.
        size: image side in pixels, an even number of at least 16.
        seed: non-negative integer; image ``k`` uses phantom seed ``seed * 1000 + k``.
        mask_encoding: ``"palette_grey"`` (grey palette, as SCR's GIFs) or
            ``"palette_index"`` (colour palette, index 1 the structure) for every mask, or
            ``None`` to alternate them per image.

    Returns:
        ``root`` as a path.

    Example:
        >>> import tempfile
        >>> root = write_jsrt_scr(tempfile.mkdtemp(), num_images=2, size=16)
        >>> sorted(p.name for p in (root / "All247images").iterdir())
        ['JPCLN001.IMG', 'JPCNN001.IMG']
    """
    num_images = _check_positive("num_images", num_images)
    if isinstance(size, bool) or not isinstance(size, int) or size < 16 or size % 2:
        raise ValueError(f"size must be an even integer of at least 16, got {size!r}")
    if mask_encoding not in (None, *_DEFAULT_ENCODING_CYCLES["gif"]):
        raise ValueError(
            f"mask_encoding of GIF masks must be None, 'palette_grey' or 'palette_index', "
            f"got {mask_encoding!r}"
        )
    root = pathlib.Path(root)
    with _staged(root, ("All247images", "scratch")) as staging:
        images_dir = staging / "All247images"
        images_dir.mkdir()
        for k, name in enumerate(jsrt_names(num_images)):
            phantom = chest_radiograph((size, size), seed=seed * 1000 + k)
            stored = (2**JSRT_BIT_DEPTH - 1 - phantom.image.astype(np.int32)).astype(">u2")
            (images_dir / f"{name}.IMG").write_bytes(stored.tobytes())
            fold = 1 if int(name[-3:]) % 2 else 2
            masks = structure_masks((size // 2, size // 2), seed=seed * 1000 + k)
            encoding = mask_encoding or default_mask_encoding("gif", k)
            for structure, mask in masks.items():
                folder = staging / "scratch" / f"fold{fold}" / "masks" / structure
                folder.mkdir(parents=True, exist_ok=True)
                grey = np.where(mask, 255, 0).astype(np.uint8)
                _save_mask(grey, folder / name, encoding, binary=True, suffix=".gif")
    return root


def jsrt_names(num_images: int) -> list[str]:
    """File stems :func:`write_jsrt_scr` uses: nodule and non-nodule cases alternating.

    Example:
        >>> jsrt_names(3)
        ['JPCLN001', 'JPCNN001', 'JPCLN002']
    """
    num_images = _check_positive("num_images", num_images)
    return [f"{'JPCLN' if k % 2 == 0 else 'JPCNN'}{k // 2 + 1:03d}" for k in range(num_images)]


def write_montgomery(
    root: os.PathLike | str,
    *,
    num_images: int = 5,
    size: int = 64,
    seed: int = 0,
    mask_encoding: str | None = None,
) -> pathlib.Path:
    """Write synthetic radiographs in the Montgomery County set's layout::

        root/MontgomerySet/CXR_png/MCUCXR_0001_0.png ...
        root/MontgomerySet/ManualMask/leftMask/MCUCXR_0001_0.png ...
        root/MontgomerySet/ManualMask/rightMask/MCUCXR_0001_0.png ...

    Images are 16-bit PNGs holding 12-bit values; masks binary (8-bit 0 / 255 in the real
    set), with ``leftMask`` the patient's left lung. File names end in ``_0`` (normal) and
    ``_1`` (tuberculosis) alternately, as in the real set. The set's other folders
    (``ClinicalReadings``, ``NLM-MontgomeryCXRSet-ReadMe.pdf``) are not written.

    Args:
        root: folder to write into; ``MontgomerySet`` must not exist yet.
        num_images: number of radiographs, at least 1.
        size: rows and columns, at least 8.
        seed: non-negative integer; image ``k`` uses phantom seed ``seed * 1000 + k``.
        mask_encoding: one of :data:`MASK_ENCODINGS` for every mask, or ``None`` for
            ``default_mask_encoding("binary", k)`` (image ``k``).

    Returns:
        ``root`` as a path.

    Example:
        >>> import tempfile
        >>> root = write_montgomery(tempfile.mkdtemp(), num_images=2, size=16)
        >>> sorted(p.name for p in (root / "MontgomerySet" / "CXR_png").iterdir())
        ['MCUCXR_0001_0.png', 'MCUCXR_0002_1.png']
    """
    num_images = _check_positive("num_images", num_images)
    size = _check_shape((size, size))[0]
    _check_encoding(mask_encoding, binary=True)
    root = pathlib.Path(root)
    with _staged(root, ("MontgomerySet",)) as staging:
        base = staging / "MontgomerySet"
        images_dir = base / "CXR_png"
        left_dir = base / "ManualMask" / "leftMask"
        right_dir = base / "ManualMask" / "rightMask"
        for folder in (images_dir, left_dir, right_dir):
            folder.mkdir(parents=True)
        for k in range(num_images):
            name = f"MCUCXR_{k + 1:04d}_{k % 2}.png"
            phantom = chest_radiograph((size, size), seed=seed * 1000 + k)
            _save_png(phantom.image, images_dir / name, bit_depth=16)
            encoding = mask_encoding or default_mask_encoding("binary", k)
            for folder, structure in ((left_dir, "left lung"), (right_dir, "right lung")):
                mask = np.where(phantom.structures[structure], 255, 0).astype(np.uint8)
                edges = _edges_if(encoding, (size, size), seed * 1000 + k, (structure,))
                _save_mask(mask, folder / name[:-4], encoding, binary=True, edges=edges)
    return root


def write_generic(
    root: os.PathLike | str,
    *,
    num_images: int = 5,
    size: int = 64,
    seed: int = 0,
    classes: Sequence[str] = ("lungs",),
    image_format: str = "png",
    bit_depth: int = 8,
    per_class_folders: bool = False,
    images_per_patient: int = 1,
    mask_encoding: str | None = None,
    dicom_display: str = "none",
) -> pathlib.Path:
    """Write synthetic radiographs in the generic ``images/`` + ``masks/`` layout::

        root/images/P0001_0.png ...
        root/masks/P0001_0.png ...                    (label map, the default)
        root/masks/<class>/P0001_0.png ...            (per_class_folders=True)

    Label-map masks store each class as the grey value of :func:`mask_values` (one class:
    255, as the public lung-mask sets do; three: 85 / 170 / 255), painted in ``classes``
    order (:func:`label_map`), in the file's encoding. Per-class masks are binary and may
    overlap. File stems are ``P<patient>_<view>``, so the patient id pattern ``^(P\\d+)_``
    groups the views of one patient.

    Args:
        root: folder to write into; ``images`` and ``masks`` must not exist yet.
        num_images: number of patients, at least 1.
        size: rows and columns, at least 8.
        seed: non-negative integer; image ``k`` uses phantom seed ``seed * 1000 + k``.
        classes: names from :data:`GENERIC_CLASSES` drawn in the masks.
        image_format: ``"png"``, ``"tiff"`` or ``"dicom"`` (``.dcm``, MONOCHROME2
            Computed Radiography with BitsStored = ``bit_depth``).
        bit_depth: bits of the image values, 8 to 16; above 8 images are stored in 16-bit
            containers (``uint16`` PNG / TIFF).
        per_class_folders: write ``masks/<class>/`` binary masks instead of label maps.
        images_per_patient: views per patient, at least 1.
        mask_encoding: one of :data:`MASK_ENCODINGS` for every mask (label maps of several
            classes accept only those that hold grey values), or ``None`` for
            :func:`default_mask_encoding` of image ``k`` (``"binary"`` for one class or
            per-class folders, ``"label_map"`` otherwise).
        dicom_display: one of :data:`DICOM_DISPLAY_ENCODINGS`: the VOI transform and
            polarity of DICOM images (``image_format="dicom"`` only).

    Returns:
        ``root`` as a path.

    Example:
        >>> import tempfile
        >>> root = write_generic(tempfile.mkdtemp(), num_images=2, size=16)
        >>> sorted(p.name for p in (root / "masks").iterdir())
        ['P0001_0.png', 'P0002_0.png']
    """
    num_images = _check_positive("num_images", num_images)
    images_per_patient = _check_positive("images_per_patient", images_per_patient)
    size = _check_shape((size, size))[0]
    classes = _check_classes(classes)
    if image_format not in ("png", "tiff", "dicom"):
        raise ValueError(f"image_format must be 'png', 'tiff' or 'dicom', got {image_format!r}")
    if dicom_display not in DICOM_DISPLAY_ENCODINGS or (
        dicom_display != "none" and image_format != "dicom"
    ):
        raise ValueError(
            f"dicom_display must be one of {sorted(DICOM_DISPLAY_ENCODINGS)} (not 'none' only "
            f"with image_format 'dicom'), got {dicom_display!r} for {image_format!r}"
        )
    binary = per_class_folders or len(classes) == 1
    _check_encoding(mask_encoding, binary=binary)
    values = mask_values(classes)
    root = pathlib.Path(root)
    with _staged(root, ("images", "masks")) as staging:
        images_dir, masks_dir = staging / "images", staging / "masks"
        images_dir.mkdir()
        masks_dir.mkdir()
        for folder in classes if per_class_folders else ():
            (masks_dir / folder).mkdir()
        for k in range(num_images * images_per_patient):
            stem = generic_stem(k, images_per_patient)
            phantom = chest_radiograph((size, size), seed=seed * 1000 + k, bit_depth=bit_depth)
            if image_format == "png":
                _save_png(phantom.image, images_dir / f"{stem}.png", bit_depth)
            elif image_format == "tiff":
                _save_tiff(phantom.image, images_dir / f"{stem}.tif", bit_depth)
            else:
                _save_dicom(
                    phantom.image, images_dir / f"{stem}.dcm", bit_depth, stem, seed,
                    dicom_display,
                )  # fmt: skip
            encoding = mask_encoding or default_mask_encoding(
                "binary" if binary else "label_map", k
            )
            if per_class_folders:
                for name in classes:
                    mask = np.zeros(phantom.image.shape, dtype=np.uint8)
                    for structure in _CLASS_STRUCTURES[name]:
                        mask[phantom.structures[structure]] = 255
                    edges = _edges_if(
                        encoding, (size, size), seed * 1000 + k, _CLASS_STRUCTURES[name]
                    )
                    _save_mask(mask, masks_dir / name / stem, encoding, binary=True, edges=edges)
            else:
                lut = np.array([0] + [values[name] for name in classes], dtype=np.uint8)
                edges = _edges_if(
                    encoding, (size, size), seed * 1000 + k, _CLASS_STRUCTURES[classes[0]]
                )
                grey = lut[label_map(phantom.structures, classes)]
                _save_mask(grey, masks_dir / stem, encoding, binary=binary, edges=edges)
    return root


def generic_stem(index: int, images_per_patient: int = 1) -> str:
    """File stem of image ``index`` (0-based) in :func:`write_generic`.

    Example:
        >>> generic_stem(0), generic_stem(3, images_per_patient=2)
        ('P0001_0', 'P0002_1')
    """
    patient, view = divmod(index, images_per_patient)
    return f"P{patient + 1:04d}_{view}"


@contextlib.contextmanager
def _staged(root: pathlib.Path, entries: Sequence[str]):
    """Write into a hidden folder inside ``root`` and move the finished top-level entries
    into place, so an interrupted run leaves nothing half-written behind."""
    root.mkdir(parents=True, exist_ok=True)
    for entry in entries:
        if (root / entry).exists():
            raise LayoutError(
                root / entry, "already exists; the phantom writers only write new folders"
            )
    staging = pathlib.Path(tempfile.mkdtemp(prefix=".xray-phantom-", dir=root))
    try:
        yield staging
        (staging / "SYNTHETIC.txt").write_text(
            f"Every file in this folder is a {SYNTHETIC_NOTICE} "
            "(kseg.phantoms.xray), not patient data.\n"
        )
        for entry in (*entries, "SYNTHETIC.txt"):
            if (staging / entry).exists():
                os.replace(staging / entry, root / entry)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _save_png(array: np.ndarray, path: pathlib.Path, bit_depth: int = 8) -> None:
    info = PngImagePlugin.PngInfo()
    info.add_text("Comment", SYNTHETIC_NOTICE)
    Image.fromarray(array.astype(np.uint8 if bit_depth <= 8 else np.uint16)).save(
        path, pnginfo=info
    )


def interpolated_edges(
    shape: Sequence[int], seed: int, structures: Sequence[str]
) -> np.ndarray:
    """The ``"8bit_edges"`` mask: the structures drawn 4x finer, averaged over each pixel.

    Args:
        shape: ``(rows, columns)`` of the mask.
        seed: the phantom's seed.
        structures: names from :data:`STRUCTURES`, merged.

    Returns:
        ``uint8`` grey mask: 255 inside, 0 outside, in between on the edges.

    Example:
        >>> edges = interpolated_edges((32, 32), 0, ("heart",))
        >>> bool(((edges > 0) & (edges < 255)).any())
        True
    """
    rows, columns = _check_shape(shape)
    factor = _EDGE_OVERSAMPLING
    fine = structure_masks((rows * factor, columns * factor), seed=seed)
    union = np.zeros((rows * factor, columns * factor), dtype=bool)
    for structure in structures:
        union |= fine[structure]
    coverage = union.reshape(rows, factor, columns, factor).mean(axis=(1, 3))
    return np.rint(255 * coverage).astype(np.uint8)


def _edges_if(encoding: str, shape, seed: int, structures) -> np.ndarray | None:
    return interpolated_edges(shape, seed, structures) if encoding == "8bit_edges" else None


def _save_mask(
    grey: np.ndarray,
    stem: pathlib.Path,
    encoding: str,
    *,
    binary: bool,
    edges: np.ndarray | None = None,
    suffix: str = ".png",
) -> None:
    """Write one mask given as grey values (0 / 255, or a label map's class values)."""
    on = grey > 0
    if encoding == "jpg":
        Image.fromarray(grey).save(stem.with_suffix(".jpg"), quality=95)
        return
    if encoding == "1bit":
        image = Image.fromarray(on)
    elif encoding == "8bit":
        image = Image.fromarray(grey)
    elif encoding == "8bit_01":
        image = Image.fromarray(on.astype(np.uint8))
    elif encoding == "8bit_edges":
        image = Image.fromarray(edges)
    elif encoding == "16bit":
        image = Image.fromarray(grey.astype(np.uint16) * 257)
    elif encoding == "16bit_01":
        image = Image.fromarray(on.astype(np.uint16))
    elif encoding == "palette_grey":
        levels = np.union1d([0], np.unique(grey))[::-1]
        index_of = np.zeros(256, np.uint8)
        index_of[levels] = np.arange(len(levels))
        image = Image.fromarray(index_of[grey], mode="P")
        image.putpalette([v for level in levels for v in (int(level),) * 3])
    elif encoding == "palette_index":
        image = Image.fromarray(on.astype(np.uint8) if binary else grey, mode="P")
        # Entry i is (i, 0, 255 - i): colours, never grey, as label tools' palettes are.
        image.putpalette([v for i in range(256) for v in (i, 0, 255 - i)])
    else:  # rgb, rgba
        channels = [grey] * 3 + ([np.full_like(grey, 255)] if encoding == "rgba" else [])
        image = Image.fromarray(np.dstack(channels))
    if suffix == ".png":
        info = PngImagePlugin.PngInfo()
        info.add_text("Comment", SYNTHETIC_NOTICE)
        image.save(stem.with_suffix(".png"), pnginfo=info)
    else:
        image.save(stem.with_suffix(suffix))


def _check_encoding(encoding: str | None, *, binary: bool) -> None:
    if encoding is not None and encoding not in MASK_ENCODINGS:
        raise ValueError(
            f"mask_encoding must be None or one of {sorted(MASK_ENCODINGS)}, got {encoding!r}"
        )
    if not binary and encoding in _BINARY_ONLY_ENCODINGS:
        raise ValueError(f"mask_encoding {encoding!r} cannot hold a label map of several classes")


def _save_tiff(array: np.ndarray, path: pathlib.Path, bit_depth: int) -> None:
    tags = TiffImagePlugin.ImageFileDirectory_v2()
    tags[270] = SYNTHETIC_NOTICE  # ImageDescription
    dtype = np.uint8 if bit_depth <= 8 else np.uint16
    Image.fromarray(array.astype(dtype)).save(path, tiffinfo=tags)


def _save_dicom(
    array: np.ndarray, path: pathlib.Path, bit_depth: int, stem: str, seed: int, display: str
):
    entropy = [seed, _SEED_TAG, *stem.encode()]
    dataset = new_dataset(
        ComputedRadiographyImageStorage,
        generate_uid(entropy_srcs=[str(e) for e in entropy]),
        implementation_version_name=IMPLEMENTATION_VERSION_NAME,
    )
    dataset.StudyInstanceUID = generate_uid(entropy_srcs=["study", stem, str(seed)])
    dataset.SeriesInstanceUID = generate_uid(entropy_srcs=["series", stem, str(seed)])
    dataset.Modality = "CR"
    dataset.Manufacturer = "kseg synthetic phantom"
    dataset.PatientName = "KSEG^PHANTOM"
    dataset.PatientID = stem.split("_")[0]
    dataset.ImageComments = SYNTHETIC_NOTICE
    maximum = 2**bit_depth - 1
    inverted = display in ("monochrome1", "inverse")
    stored = maximum - array.astype(np.int64) if inverted else array
    set_grayscale_pixels(
        dataset, stored.astype(np.uint8 if bit_depth <= 8 else np.uint16), bits_stored=bit_depth
    )
    if display != "none":
        _set_display(dataset, display, maximum)
    dataset.save_as(path, enforce_file_format=True)


def _set_display(dataset, display: str, maximum: int) -> None:
    """The VOI (and presentation) attributes of a :data:`DICOM_DISPLAY_ENCODINGS` entry."""
    # The phantom spans 8 % .. 83 % of the range; the first window clips both ends of it, the
    # second (which readers must not take) would leave it almost unchanged.
    inverted = display in ("monochrome1", "inverse")
    center = 0.55 * maximum if inverted else 0.45 * maximum  # stored = maximum - image
    dataset.WindowCenter = [round(center), round(0.5 * maximum)]
    dataset.WindowWidth = [round(0.6 * maximum), maximum + 1]
    dataset.WindowCenterWidthExplanation = ["SYNTHETIC SOFT", "SYNTHETIC FULL"]
    if display in ("linear_exact", "sigmoid"):
        dataset.VOILUTFunction = display.upper()
    if display == "voi_lut":
        entries = maximum + 1
        curve = np.sqrt(np.arange(entries) / maximum) * 65535
        item = pydicom.Dataset()
        item.LUTDescriptor = [entries % 65536, 0, 16]
        # OW: a US value's 16-bit length cannot hold the 65536 entries of a 16-bit image.
        item.add_new(0x00283006, "OW", np.rint(curve).astype("<u2").tobytes())
        item.LUTExplanation = "SYNTHETIC SQUARE ROOT"
        dataset.VOILUTSequence = [item]
    if display == "monochrome1":
        dataset.PhotometricInterpretation = "MONOCHROME1"
    if inverted:
        dataset.PresentationLUTShape = "INVERSE"


def _check_shape(shape) -> tuple[int, int]:
    shape = tuple(shape)
    if len(shape) != 2 or any(
        isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 8 for n in shape
    ):
        raise ValueError(f"shape must be two integers of at least 8, got {shape!r}")
    return int(shape[0]), int(shape[1])


def _check_positive(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return value


def _check_classes(classes) -> tuple[str, ...]:
    classes = tuple(classes)
    unknown = [name for name in classes if name not in _CLASS_STRUCTURES]
    if not classes or unknown or len(set(classes)) != len(classes):
        raise ValueError(f"classes must be distinct names from {GENERIC_CLASSES}, got {classes!r}")
    return classes


def main(argv: Sequence[str] | None = None) -> None:
    """Write the ``xray`` builder's dummy data: every layout, in one folder."""
    parser = argparse.ArgumentParser(
        prog="python -m kseg.phantoms.xray",
        description=f"Write {SYNTHETIC_NOTICE} chest radiographs in the JSRT/SCR, Montgomery "
        "and generic layouts (the xray builder's manual_dir).",
    )
    parser.add_argument("root", type=pathlib.Path)
    parser.add_argument("--num-images", type=int, default=5)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    common = {"num_images": args.num_images, "size": args.size, "seed": args.seed}
    write_jsrt_scr(args.root, **common)
    write_montgomery(args.root, **common)
    write_generic(args.root, **common)


if __name__ == "__main__":
    main()
