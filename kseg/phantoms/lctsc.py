"""Synthetic chest CT phantoms with RT structure sets, in the TCIA LCTSC download layout.

Everything this module makes is SYNTHETIC: star-shaped regions standing in for body, lungs
(air around -850 HU threaded with vessels), heart, esophagus, trachea, spinal cord and bone
(vertebra, sternum, ribs), with textbook CT numbers and noise. It lets the examples, the
tests and the ``lctsc`` builder's ``dummy_data/`` run the LCTSC pipeline without the real
data. Every file written says so in its header (PatientName ``KSEG^PHANTOM``,
ImageComments ``synthetic kseg phantom``, Manufacturer ``kseg synthetic phantom``, and the
structure set's label and description); it must never be presented as patient data.

Each organ is one analytic shape per slice (an ellipse whose radius is rippled by low
harmonics, the left lung dented by the cardiac notch), so the phantom knows its own truth
twice over: the label map marks the pixels whose centre lies inside a shape, and the
RTSTRUCT holds the same shape's outline sampled as a polygon. The two agree up to the
polygon's chords, which is what lets a test check an RTSTRUCT reader against the label map
without trusting the reader.

:func:`write_lctsc` writes the layout of the NBIA Data Retriever's download of the TCIA
collection, including its traps: file names and InstanceNumbers that do not run in slice
order, ROI names spelt differently per institution and patient, training and test patients
side by side. :func:`write_lctsc_npz` writes the pre-converted layout (a DICOM folder and a
3D ``.npz`` mask per case, some masks stored reversed or flipped, some as bool). Regenerate the
builder's dummy data with::

    python -m kseg.phantoms.lctsc tfds_builders/lctsc/dummy_data/tcia \\
        --num-patients 5 --num-test-patients 2 --num-slices 4 --size 64
    python -m kseg.phantoms.lctsc tfds_builders/lctsc/dummy_data/npz --layout npz \\
        --num-patients 5 --num-test-patients 0 --num-slices 6 --size 48

Example:
    >>> phantom = chest_phantom((8, 64, 64), spacing=(3.0, 7.0, 7.0), seed=1)
    >>> phantom.hu.dtype, phantom.labels.dtype, phantom.hu.shape
    (dtype('int16'), dtype('uint8'), (8, 64, 64))
    >>> bool((phantom.labels == ChestLabel.LUNG_LEFT).any())
    True

Reference:
    Yang et al., "Autosegmentation for thoracic radiation treatment planning: A grand
    challenge at AAPM 2017", Medical Physics 45(10), 4568-4581 (2018): the structures, the
    three institutions and the train / test partition mimicked.
"""

from __future__ import annotations

import argparse
import dataclasses
import enum
import os
import pathlib
from collections.abc import Sequence

import numpy as np
import pydicom
from pydicom.uid import CTImageStorage, generate_uid

from kseg._files import atomic_directory
from kseg.errors import LayoutError
from kseg.io.dicom_writer import (
    SeriesReference,
    new_dataset,
    rtstruct_dataset,
    set_grayscale_pixels,
    write_dataset,
)
from kseg.io.rtstruct import LCTSC_ROI_NAMES, Contour, RoiContours
from kseg.phantoms._common import (
    IMPLEMENTATION_VERSION_NAME,
    SYNTHETIC_NOTICE,
    check_seed,
    scrambled_permutation,
)


class ChestLabel(enum.IntEnum):
    """Tissue classes of :func:`chest_phantom`'s label map."""

    BACKGROUND = 0  # air outside the body
    FAT = 1  # subcutaneous fat
    SOFT_TISSUE = 2  # chest wall muscle, mediastinum, spinal canal
    BONE = 3  # vertebra, sternum, ribs
    AIRWAY = 4  # trachea
    LUNG_LEFT = 5
    LUNG_RIGHT = 6
    HEART = 7
    ESOPHAGUS = 8
    SPINAL_CORD = 9


# The structures of an LCTSC structure set, keyed by canonical ROI name.
ROI_LABELS = {
    "lung_left": ChestLabel.LUNG_LEFT,
    "lung_right": ChestLabel.LUNG_RIGHT,
    "heart": ChestLabel.HEART,
    "esophagus": ChestLabel.ESOPHAGUS,
    "spinal_cord": ChestLabel.SPINAL_CORD,
}

# Mean CT numbers (HU); lung parenchyma is air with a little tissue and blood.
THORAX_CT_NUMBERS = {
    ChestLabel.BACKGROUND: -1000.0,
    ChestLabel.FAT: -100.0,
    ChestLabel.SOFT_TISSUE: 40.0,
    ChestLabel.BONE: 600.0,
    ChestLabel.AIRWAY: -990.0,
    ChestLabel.LUNG_LEFT: -850.0,
    ChestLabel.LUNG_RIGHT: -850.0,
    ChestLabel.HEART: 45.0,
    ChestLabel.ESOPHAGUS: 35.0,
    ChestLabel.SPINAL_CORD: 30.0,
}
VESSEL_HU = 40.0
NOISE_HU = 15.0

# ROI names as different institutions write them. Each site draws one spelling per patient,
# so a reader meets case, order and spelling variants within one download.
SITE_ROI_NAMES = {
    1: {
        "lung_left": ("Lung_L", "Lung_l"),
        "lung_right": ("Lung_R", "Lung_r"),
        "heart": ("Heart",),
        "esophagus": ("Esophagus",),
        "spinal_cord": ("SpinalCord",),
    },
    2: {
        "lung_left": ("LUNG_L", "L_Lung"),
        "lung_right": ("LUNG_R", "R_Lung"),
        "heart": ("HEART", "Heart"),
        "esophagus": ("ESOPHAGUS", "Esophagus"),
        "spinal_cord": ("SPINAL_CORD", "Spinal_Cord"),
    },
    3: {
        "lung_left": ("Lung_Left", "LungLeft"),
        "lung_right": ("Lung_Right", "LungRight"),
        "heart": ("Heart",),
        "esophagus": ("Oesophagus", "Esophagus"),
        "spinal_cord": ("Cord", "Spinal_Cord"),
    },
}
# A body outline some planning systems add; it names no LCTSC organ and must be reported.
EXTRA_ROI_NAME = "External"

_ROI_COLORS = {
    "lung_left": (0, 255, 255),
    "lung_right": (255, 255, 0),
    "heart": (255, 0, 0),
    "esophagus": (0, 255, 0),
    "spinal_cord": (0, 0, 255),
    "external": (128, 128, 128),
}
_CONTOUR_VERTICES = 64


@dataclasses.dataclass(frozen=True)
class _Shape:
    """A star-shaped region in patient millimetres (LPS x, y) that changes along the slices.

    In the shape's own frame, normalised by its semi-axes, a point is inside when its radius
    is below ``scale(t) * (1 + ripple(theta, t) - notch(theta))``; the outline is that
    radius sampled at equal angles, mapped back to millimetres.
    """

    centre: tuple[float, float]
    semi_axes: tuple[float, float]
    angle: float
    z_range: tuple[float, float]
    profile: str  # "tube" (constant), "ellipsoid", or "lung" (wide base, narrow apex)
    amplitudes: tuple[float, ...] = (0.0, 0.0, 0.0)
    phases: tuple[float, ...] = (0.0, 0.0, 0.0)
    drifts: tuple[float, ...] = (0.0, 0.0, 0.0)
    centre_drift: tuple[float, float] = (0.0, 0.0)
    notch: tuple[float, float, float] = (0.0, 0.0, 1.0)  # (angle, depth, width) in radians

    @classmethod
    def random(cls, rng, centre, semi_axes, angle_deg, z_range, profile, *, ripple=0.05,
               jitter_mm=4.0, centre_drift=(0.0, 0.0), notch=(0.0, 0.0, 1.0)):
        return cls(
            centre=(centre[0] + rng.uniform(-jitter_mm, jitter_mm),
                    centre[1] + rng.uniform(-jitter_mm, jitter_mm)),
            semi_axes=(semi_axes[0] * rng.uniform(0.92, 1.08),
                       semi_axes[1] * rng.uniform(0.92, 1.08)),
            angle=float(np.deg2rad(angle_deg + rng.uniform(-6.0, 6.0))),
            z_range=z_range,
            profile=profile,
            amplitudes=tuple(rng.uniform(0.0, ripple, size=3) / np.arange(2, 5)),
            phases=tuple(rng.uniform(0.0, 2 * np.pi, size=3)),
            drifts=tuple(rng.uniform(-np.pi, np.pi, size=3)),
            centre_drift=centre_drift,
            notch=notch,
        )

    def scale_at(self, t: float) -> float:
        low, high = self.z_range
        if not low <= t <= high:
            return 0.0
        if self.profile == "tube":
            return 1.0
        length = high - low
        if self.profile == "ellipsoid":
            u = (t - 0.5 * (low + high)) / (0.5 * length)
        else:  # lung: widest a third of the way up, cut flat by the diaphragm at the base
            u = (t - (low + 0.3 * length)) / (0.72 * length)
        return float(np.sqrt(max(0.0, 1.0 - u * u)))

    def centre_at(self, t: float) -> tuple[float, float]:
        offset = t - 0.5
        return (self.centre[0] + self.centre_drift[0] * offset,
                self.centre[1] + self.centre_drift[1] * offset)

    def boundary(self, theta: np.ndarray, t: float, scale: float) -> np.ndarray:
        radius = np.ones_like(theta)
        for harmonic, amplitude, phase, drift in zip(
            range(2, 5), self.amplitudes, self.phases, self.drifts, strict=True
        ):
            radius += amplitude * np.cos(harmonic * theta - phase - drift * t)
        notch_angle, depth, width = self.notch
        if depth:
            offset = np.angle(np.exp(1j * (theta - notch_angle)))
            radius -= depth * np.exp(-0.5 * (offset / width) ** 2)
        return scale * radius

    def _frame(self, x: np.ndarray, y: np.ndarray, t: float):
        cx, cy = self.centre_at(t)
        dx, dy = x - cx, y - cy
        cos_a, sin_a = np.cos(self.angle), np.sin(self.angle)
        p = (dx * cos_a + dy * sin_a) / self.semi_axes[0]
        q = (dy * cos_a - dx * sin_a) / self.semi_axes[1]
        return p, q

    def inside(self, x: np.ndarray, y: np.ndarray, t: float) -> np.ndarray:
        """Whether each point ``(x[i], y[j])`` (broadcast: rows of y, columns of x) is inside."""
        inside = np.zeros((y.size, x.size), dtype=bool)
        scale = self.scale_at(t)
        if scale <= 0.0:
            return inside
        # Only points within the shape's bounding circle can be inside (x, y ascending).
        reach = scale * max(self.semi_axes) * (1.0 + sum(self.amplitudes))
        cx, cy = self.centre_at(t)
        x_lo, x_hi = np.searchsorted(x, [cx - reach, cx + reach])
        y_lo, y_hi = np.searchsorted(y, [cy - reach, cy + reach])
        if x_lo >= x_hi or y_lo >= y_hi:
            return inside
        p, q = self._frame(x[None, x_lo:x_hi], y[y_lo:y_hi, None], t)
        inside[y_lo:y_hi, x_lo:x_hi] = np.hypot(p, q) < self.boundary(np.arctan2(q, p), t, scale)
        return inside

    def outline(self, t: float, vertices: int) -> np.ndarray | None:
        """``(vertices, 2)`` LPS ``(x, y)`` points on the boundary, or None off the shape."""
        scale = self.scale_at(t)
        if scale <= 0.0:
            return None
        theta = np.linspace(0.0, 2 * np.pi, vertices, endpoint=False)
        radius = self.boundary(theta, t, scale)
        p, q = radius * np.cos(theta), radius * np.sin(theta)
        a, b = self.semi_axes
        cos_a, sin_a = np.cos(self.angle), np.sin(self.angle)
        cx, cy = self.centre_at(t)
        x = cx + a * p * cos_a - b * q * sin_a
        y = cy + a * p * sin_a + b * q * cos_a
        return np.stack([x, y], axis=1)


@dataclasses.dataclass(frozen=True)
class ChestCTPhantom:
    """A synthetic chest CT, its label map and its organ outlines.

    Attributes:
        hu: ``int16`` CT numbers ``(z, y, x)``, z from feet (index 0) to head, rows from
            anterior to posterior, columns from the patient's right to left.
        labels: ``uint8`` :class:`ChestLabel` map of the same shape. Where organ shapes
            overlap, the later one in :data:`ROI_LABELS` order wins (lungs, heart,
            esophagus, spinal cord), the order the ``lctsc`` builder paints them in.
        spacing: ``(z, y, x)`` voxel size in mm.
        origin: DICOM LPS position (mm) of the centre of voxel ``(0, 0, 0)``; voxel
            ``(k, j, i)`` lies at ``origin + (i * spacing[2], j * spacing[1], k * spacing[0])``.
        outlines: per canonical ROI name, ``(k, points)`` pairs: the slice index and the
            ``(N, 3)`` LPS polygon of the organ on that slice.
        body_outlines: the same for the outer body surface.
    """

    hu: np.ndarray
    labels: np.ndarray
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    outlines: dict[str, list[tuple[int, np.ndarray]]]
    body_outlines: list[tuple[int, np.ndarray]]


def chest_phantom(
    shape: Sequence[int] = (24, 128, 128),
    spacing: Sequence[float] = (3.0, 3.5, 3.5),
    seed: int = 0,
    *,
    origin: Sequence[float] | None = None,
    sex: str = "M",
) -> ChestCTPhantom:
    """A synthetic axial chest CT with its label map and its organ outlines.

    The anatomy is laid out in millimetres: a body about 34 x 25 cm (a little smaller for
    ``sex="F"``), right lung larger than the left, whose medial border is dented by the
    heart; heart anterior and to the left, esophagus and spinal cord in the midline in front
    of and inside the vertebra; the trachea above the carina. Along z the anatomy spans the
    volume's extent: lungs from about a fifth of the way up to near the top (the left base
    lower than the right), the heart on the diaphragm, esophagus and cord almost the whole
    length, so the first and last slices may hold no lung. Vessels (+40 HU tubes drifting
    along z) run inside the lungs and belong to the lung labels. Each seed perturbs every
    shape (size, position, rotation, z extent, rippled boundary). Noise is Gaussian with
    15 HU standard deviation.

    Args:
        shape: ``(z, y, x)`` voxels, each at least 1.
        spacing: ``(z, y, x)`` voxel size in mm, each positive; the in-plane field of view
            ``shape * spacing`` should be at least about 400 mm to hold the body.
        seed: non-negative integer; the same arguments give identical phantoms.
        origin: LPS mm of voxel ``(0, 0, 0)``; by default the field of view is centred on
            the patient.
        sex: ``"M"`` or ``"F"`` (the body and organs are about 8 % smaller for ``"F"``).

    Returns:
        :class:`ChestCTPhantom`.

    Example:
        >>> phantom = chest_phantom((4, 48, 48), spacing=(5.0, 9.0, 9.0), seed=3)
        >>> sorted(phantom.outlines)
        ['esophagus', 'heart', 'lung_left', 'lung_right', 'spinal_cord']
    """
    shape = tuple(int(s) for s in shape)
    spacing = tuple(float(s) for s in spacing)
    if len(shape) != 3 or min(shape) < 1:
        raise ValueError(f"shape must be three positive sizes (z, y, x), got {shape}")
    if len(spacing) != 3 or not all(np.isfinite(spacing)) or min(spacing) <= 0:
        raise ValueError(f"spacing must be three positive mm sizes (z, y, x), got {spacing}")
    seed = check_seed(seed)
    if sex not in ("M", "F"):
        raise ValueError(f"sex must be 'M' or 'F', got {sex!r}")
    nz, ny, nx = shape
    if origin is None:
        origin = (-(nx - 1) / 2 * spacing[2], -(ny - 1) / 2 * spacing[1], 0.0)
    origin = tuple(float(v) for v in origin)
    rng = np.random.default_rng([seed, 0x6C756E67])  # second word: "lung"
    anatomy = _Anatomy.random(rng, 1.0 if sex == "M" else 0.92)
    x = origin[0] + np.arange(nx) * spacing[2]
    y = origin[1] + np.arange(ny) * spacing[1]
    labels = np.zeros(shape, dtype=np.uint8)
    vessel = np.zeros(shape, dtype=bool)
    outlines: dict[str, list[tuple[int, np.ndarray]]] = {name: [] for name in ROI_LABELS}
    body_outlines = []
    for k in range(nz):
        t = 0.5 if nz == 1 else k / (nz - 1)
        z = origin[2] + k * spacing[0]
        anatomy.paint(labels[k], vessel[k], x, y, t)
        for name, region in anatomy.organs.items():
            points = region.outline(t, _CONTOUR_VERTICES)
            if points is not None:
                outlines[name].append((k, np.column_stack([points, np.full(len(points), z)])))
        body = anatomy.body.outline(t, _CONTOUR_VERTICES)
        body_outlines.append((k, np.column_stack([body, np.full(len(body), z)])))
    means = np.array([THORAX_CT_NUMBERS[label] for label in ChestLabel], dtype=np.float32)
    hu = means[labels]
    hu[vessel] = VESSEL_HU
    hu += rng.standard_normal(shape, dtype=np.float32) * np.float32(NOISE_HU)
    np.clip(np.rint(hu, out=hu), -1024, 3071, out=hu)
    return ChestCTPhantom(
        hu=hu.astype(np.int16),
        labels=labels,
        spacing=spacing,
        origin=origin,
        outlines=outlines,
        body_outlines=body_outlines,
    )


@dataclasses.dataclass(frozen=True)
class _Anatomy:
    body: _Shape
    fat_fraction: float
    bones: tuple[_Shape, ...]
    canal: _Shape
    airway: _Shape
    organs: dict[str, _Shape]  # painted in ROI_LABELS order
    vessels: tuple[tuple[str, _Shape], ...]

    @classmethod
    def random(cls, rng: np.random.Generator, size: float) -> _Anatomy:
        s = size * rng.uniform(0.94, 1.06)
        right_low = rng.uniform(0.10, 0.30)
        left_low = right_low - rng.uniform(0.02, 0.08)
        top = rng.uniform(0.85, 0.98)
        length = top - right_low
        body = _Shape.random(rng, (0.0, 0.0), (175 * s, 128 * s), 0.0, (-1.0, 2.0), "tube",
                             ripple=0.03, jitter_mm=3.0)
        spine_y = 72 * s
        bones = [
            _Shape.random(rng, (0.0, spine_y), (20 * s, 17 * s), 0.0, (-1.0, 2.0), "tube",
                          ripple=0.02, jitter_mm=1.0),
            _Shape.random(rng, (0.0, spine_y + 27 * s), (15 * s, 14 * s), 0.0, (-1.0, 2.0),
                          "tube", ripple=0.0, jitter_mm=0.5),
            _Shape.random(rng, (0.0, -100 * s), (14 * s, 7 * s), 0.0, (-1.0, 2.0), "tube",
                          ripple=0.02, jitter_mm=2.0),
        ]
        for angle in np.deg2rad([20, 45, 70, 110, 135, 160, 200, 340]):
            bones.append(
                _Shape.random(rng, (148 * s * np.cos(angle), 105 * s * np.sin(angle)),
                              (6 * s, 5 * s), 0.0, (-1.0, 2.0), "tube", ripple=0.0,
                              jitter_mm=2.0)
            )
        canal = _Shape(centre=(bones[1].centre[0], bones[1].centre[1]),
                       semi_axes=(8.5 * s, 8.0 * s), angle=0.0, z_range=(-1.0, 2.0),
                       profile="tube")
        organs = {
            "lung_left": _Shape.random(
                rng, (78 * s, 8 * s), (42 * s, 76 * s), 0.0, (left_low, top), "lung",
                notch=(np.deg2rad(215.0), rng.uniform(0.22, 0.32), 0.55),
            ),
            "lung_right": _Shape.random(
                rng, (-78 * s, 5 * s), (48 * s, 80 * s), 0.0, (right_low, top), "lung",
            ),
            "heart": _Shape.random(
                rng, (18 * s, -38 * s), (50 * s, 40 * s), -30.0,
                (left_low, right_low + 0.45 * length), "ellipsoid", ripple=0.04,
            ),
            "esophagus": _Shape.random(
                rng, (8 * s, 42 * s), (9 * s, 7 * s), 0.0,
                (rng.uniform(0.0, 0.1), rng.uniform(0.9, 1.0)), "tube", ripple=0.05,
                jitter_mm=2.0, centre_drift=(-10.0, 0.0),
            ),
            "spinal_cord": _Shape(
                centre=canal.centre, semi_axes=(5.5 * s, 4.5 * s), angle=0.0,
                z_range=(rng.uniform(0.0, 0.1), rng.uniform(0.9, 1.0)), profile="tube",
            ),
        }
        airway = _Shape(centre=(0.0, 14 * s), semi_axes=(9 * s, 8 * s), angle=0.0,
                        z_range=(right_low + 0.6 * length, 2.0), profile="tube")
        vessels = []
        for lung in ("lung_left", "lung_right"):
            region = organs[lung]
            for _ in range(10):
                radius, theta = 0.7 * np.sqrt(rng.uniform()), rng.uniform(0, 2 * np.pi)
                a, b = region.semi_axes
                centre = (region.centre[0] + a * radius * np.cos(theta),
                          region.centre[1] + b * radius * np.sin(theta))
                width = rng.uniform(2.0, 4.0) * s
                vessels.append((lung, _Shape(
                    centre=centre, semi_axes=(width, width), angle=0.0, z_range=(-1.0, 2.0),
                    profile="tube", centre_drift=tuple(rng.uniform(-25.0, 25.0, size=2)),
                )))
        return cls(body=body, fat_fraction=float(rng.uniform(0.05, 0.12)), bones=tuple(bones),
                   canal=canal, airway=airway, organs=organs, vessels=tuple(vessels))

    def paint(self, labels: np.ndarray, vessel: np.ndarray, x, y, t: float) -> None:
        labels[self.body.inside(x, y, t)] = ChestLabel.FAT
        inner = dataclasses.replace(
            self.body, semi_axes=tuple(a * (1 - self.fat_fraction) for a in self.body.semi_axes)
        )
        labels[inner.inside(x, y, t)] = ChestLabel.SOFT_TISSUE
        for bone in self.bones:
            labels[bone.inside(x, y, t)] = ChestLabel.BONE
        labels[self.canal.inside(x, y, t)] = ChestLabel.SOFT_TISSUE
        labels[self.airway.inside(x, y, t)] = ChestLabel.AIRWAY
        for name, region in self.organs.items():
            labels[region.inside(x, y, t)] = ROI_LABELS[name]
        for lung, tube in self.vessels:
            vessel |= tube.inside(x, y, t) & (labels == ROI_LABELS[lung])


@dataclasses.dataclass(frozen=True)
class LctscPhantomCase:
    """One synthetic LCTSC patient, as :func:`write_lctsc` writes it.

    Attributes:
        patient_id: e.g. ``"LCTSC-Train-S2-001"`` or ``"LCTSC-Test-S1-101"``.
        site: institution number 1..3 (the ``S<n>`` of the id).
        sex: PatientSex, ``"M"`` or ``"F"``.
        phantom: the images, labels and outlines.
        roi_names: ``{canonical name: ROIName written}``.
        extra_roi: whether an ``External`` (body) ROI is written too.
        name_ranks: the 0-based rank, in file-name order, of the file holding slice ``k``.
        instance_numbers: the InstanceNumber of slice ``k``.
    """

    patient_id: str
    site: int
    sex: str
    phantom: ChestCTPhantom
    roi_names: dict[str, str]
    extra_roi: bool
    name_ranks: np.ndarray
    instance_numbers: np.ndarray

    @property
    def is_test(self) -> bool:
        return "-Test-" in self.patient_id

    def lctsc_labels(self) -> np.ndarray:
        """The label map in the ``lctsc`` builder's classes: 0 background, 1 lung_left,
        2 lung_right, 3 heart, 4 esophagus, 5 spinal_cord."""
        lut = np.zeros(len(ChestLabel), dtype=np.uint8)
        for index, name in enumerate(LCTSC_ROI_NAMES, start=1):
            lut[ROI_LABELS[name]] = index
        return lut[self.phantom.labels]


def lctsc_patient_id(index: int, *, test: bool = False) -> str:
    """The id of the ``index``-th (0-based) training or test patient the writer makes.

    Patients are dealt to the three institutions in turn, as in the real collection
    (training ``001``-``012``, test ``101``-``104`` and ``201``-``204`` per institution).

    Example:
        >>> [lctsc_patient_id(i) for i in range(4)]
        ['LCTSC-Train-S1-001', 'LCTSC-Train-S2-001', 'LCTSC-Train-S3-001', 'LCTSC-Train-S1-002']
        >>> lctsc_patient_id(0, test=True)
        'LCTSC-Test-S1-101'
    """
    if isinstance(index, bool) or not isinstance(index, int) or index < 0:
        raise ValueError(f"index must be a non-negative integer, got {index!r}")
    site, rank = index % 3 + 1, index // 3
    if test:
        number = 101 + rank if rank < 4 else 201 + (rank - 4)
        return f"LCTSC-Test-S{site}-{number:03d}"
    return f"LCTSC-Train-S{site}-{rank + 1:03d}"


def lctsc_phantom_case(
    index: int, *, test: bool = False, num_slices: int, size: int, seed: int = 0
) -> LctscPhantomCase:
    """The synthetic patient :func:`write_lctsc` writes as its ``index``-th training (or test)
    patient.

    Args:
        index: 0-based position among the training (or test) patients.
        test: a test patient (``LCTSC-Test-*``) instead of a training patient.
        num_slices: slices of the CT series.
        size: rows and columns per slice, at least 8.
        seed: the ``seed`` given to :func:`write_lctsc`.

    Example:
        >>> case = lctsc_phantom_case(1, num_slices=4, size=32)
        >>> case.patient_id, case.phantom.labels.shape
        ('LCTSC-Train-S2-001', (4, 32, 32))
    """
    patient_id = lctsc_patient_id(index, test=test)
    for name, value, minimum in (("num_slices", num_slices, 1), ("size", size, 8)):
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise ValueError(f"{name} must be an integer of at least {minimum}, got {value!r}")
    seed = check_seed(seed)
    site = index % 3 + 1
    rng = np.random.default_rng([seed, index, 1 if test else 0])
    sex = str(rng.choice(["F", "M"]))
    # Field of view and slice thickness in the ranges of the three institutions' scans.
    field_of_view = rng.uniform(450.0, 520.0)
    thickness = float(rng.choice([2.5, 3.0]))
    pixel = round(field_of_view / size, 6)
    spacing = (thickness, pixel, pixel)
    # The patient lies off the centre of the field of view, as on a real couch.
    origin = (
        round(-(size - 1) / 2 * pixel + rng.uniform(-25.0, 25.0), 4),
        round(-(size - 1) / 2 * pixel + rng.uniform(-25.0, 25.0), 4),
        round(rng.uniform(-650.0, -350.0), 4),
    )
    phantom = chest_phantom((num_slices, size, size), spacing, int(rng.integers(2**31)),
                            origin=origin, sex=sex)
    roi_names = {name: str(rng.choice(SITE_ROI_NAMES[site][name])) for name in ROI_LABELS}
    ranks = scrambled_permutation(num_slices, rng)
    instances = scrambled_permutation(num_slices, rng, avoid=ranks) + 1
    return LctscPhantomCase(
        patient_id=patient_id,
        site=site,
        sex=sex,
        phantom=phantom,
        roi_names=roi_names,
        extra_roi=bool(index % 2),
        name_ranks=ranks,
        instance_numbers=instances,
    )


def write_phantom_rtstruct(
    path: os.PathLike | str,
    rois: Sequence[RoiContours],
    reference: SeriesReference,
    *,
    series_instance_uid: str,
    sop_instance_uid: str,
    study_date: str = "20030101",
    series_number: int = 1,
) -> pathlib.Path:
    """Write a synthetic RT Structure Set (PS3.3 A.19) referencing a CT series.

    The structure set is :func:`kseg.io.dicom_writer.rtstruct_dataset`'s (each ROI
    interpreted as its ``interpreted_type`` says, ORGAN where empty), marked synthetic in its
    PatientName, descriptions and StructureSetLabel. The file is written to a temporary
    name beside ``path`` and renamed.

    Args:
        path: the file to write.
        rois: the ROIs (numbers, names, colours, contours in LPS mm).
        reference: the CT series.
        series_instance_uid, sop_instance_uid: UIDs of the structure set itself.
        study_date: StudyDate / StructureSetDate (YYYYMMDD).
        series_number: SeriesNumber of the structure set.

    Returns:
        ``path`` as a path.

    Example:
        >>> ref = SeriesReference("P1", "F", "1.2.3", "1.2.3.4", "1.2.3.5", ("1.2.3.4.1",))
        >>> square = np.array([[0, 0, 0], [10, 0, 0], [10, 10, 0], [0, 10, 0]], float)
        >>> roi = RoiContours(1, "Heart", (255, 0, 0), (Contour("1.2.3.4.1", square),))
        >>> import tempfile
        >>> path = write_phantom_rtstruct(tempfile.mkdtemp() + "/rs.dcm", [roi], ref,
        ...                       series_instance_uid="1.2.3.6", sop_instance_uid="1.2.3.6.1")
        >>> pydicom.dcmread(path).StructureSetROISequence[0].ROIName
        'Heart'
    """
    ds = rtstruct_dataset(
        rois, reference,
        series_instance_uid=series_instance_uid,
        sop_instance_uid=sop_instance_uid,
        implementation_version_name=IMPLEMENTATION_VERSION_NAME,
        label="KSEG PHANTOM",
        date=study_date,
        time="120000",
        series_number=series_number,
    )
    ds.AccessionNumber = ""
    ds.Manufacturer = "kseg synthetic phantom"
    ds.ReferringPhysicianName = ""
    ds.StudyDescription = f"{SYNTHETIC_NOTICE} (LCTSC layout)"
    ds.SeriesDescription = f"{SYNTHETIC_NOTICE} structures"
    ds.OperatorsName = ""
    ds.PatientName = "KSEG^PHANTOM"
    ds.PatientBirthDate = ""
    ds.PatientIdentityRemoved = "YES"
    ds.StudyID = "1"
    ds.StructureSetName = "synthetic"
    ds.StructureSetDescription = SYNTHETIC_NOTICE
    return write_dataset(ds, path)


def write_lctsc(
    root: os.PathLike | str,
    *,
    num_patients: int = 4,
    num_test_patients: int = 2,
    num_slices: int = 24,
    size: int = 256,
    seed: int = 0,
) -> pathlib.Path:
    """Write synthetic patients in the layout of the TCIA LCTSC download.

    The NBIA Data Retriever's "descriptive directory names" layout::

        root/LCTSC/LCTSC-Train-S1-001/11-16-2003-NA-KSEG PHANTOM THORAX-39664/
            0.000000-CT synthetic kseg phantom-84146/1-001.dcm ... 1-NNN.dcm
            1.000000-RTSTRUCT synthetic kseg phantom-62948/1-1.dcm

    Training patients ``LCTSC-Train-S<site>-<nnn>`` and test patients
    ``LCTSC-Test-S<site>-<1nn>`` sit side by side, as in the collection. CT file names
    (``1-NNN``) and InstanceNumbers are both scrambled against slice position. CT pixels
    are ``uint16`` with RescaleIntercept -1024. Each structure set holds the five LCTSC
    organs, named with the spelling its institution (and patient) uses, every contour
    referencing its CT slice; every second patient also has an ``External`` ROI that names
    no organ. UIDs are derived from the arguments, so the output is byte-for-byte
    deterministic. Each patient folder is written under a temporary name and renamed into
    place; existing patient folders are never touched.

    Args:
        root: folder to write into (created if missing); pass it to the ``lctsc`` builder
            as ``manual_dir``.
        num_patients: training patients, at least 0.
        num_test_patients: test patients, at least 0; together at least one patient.
        num_slices: slices per CT series, at least 1.
        size: rows and columns per slice, at least 8.
        seed: non-negative integer.

    Returns:
        ``root`` as a path.

    Raises:
        LayoutError: a patient folder to be written exists already.

    Example:
        >>> import tempfile
        >>> root = write_lctsc(tempfile.mkdtemp(), num_patients=1, num_test_patients=1,
        ...                    num_slices=2, size=16)
        >>> sorted(p.name for p in (root / "LCTSC").iterdir())
        ['LCTSC-Test-S1-101', 'LCTSC-Train-S1-001']
    """
    cases = _cases(num_patients, num_test_patients, num_slices, size, seed)
    root = pathlib.Path(root)
    collection = root / "LCTSC"
    collection.mkdir(parents=True, exist_ok=True)
    for case in cases:
        final = collection / case.patient_id
        if final.exists():
            raise LayoutError(final, "exists already; the phantom writer never overwrites data")
        with atomic_directory(final) as staging:
            _write_tcia_patient(staging, case, seed)
    return root


# The flips write_lctsc_npz applies to the stored masks, case after case, so that a reader
# meets each kind of misalignment the pre-converted layout is known for.
NPZ_STORED_FLIPS = ((), ("z",), ("y",), ("z", "y"), ("x",))
# The dtypes pre-converted masks are saved in: uint8 label maps (the usual choice, and the
# only one of the two that holds the five organs) and bool arrays saved straight from a
# comparison such as ``labels > 0`` (binary lungs only). write_lctsc_npz alternates them.
NPZ_MASK_DTYPES = ("uint8", "bool")


def write_lctsc_npz(
    root: os.PathLike | str,
    *,
    num_patients: int = 4,
    num_test_patients: int = 0,
    num_slices: int = 24,
    size: int = 256,
    seed: int = 0,
    multiclass: bool = False,
    mask_dtype: str | None = None,
) -> pathlib.Path:
    """Write synthetic patients in the pre-converted layout: a DICOM folder and an npz mask.

    ::

        root/<patient id>/dicom/1-NNN.dcm ...     the CT series (names scrambled)
        root/<patient id>/mask.npz                key "mask": uint8 or bool (z, y, x)

    The mask holds the lungs (0 / 1), or with ``multiclass`` the ``lctsc`` classes (0
    background, 1 lung_left, 2 lung_right, 3 heart, 4 esophagus, 5 spinal_cord). Its slice
    axis is in ascending slice position and its rows and columns in pixel order, except
    that case ``n`` is stored reversed along the axes ``NPZ_STORED_FLIPS[n % 5]`` (none,
    z, y, z and y, x), the misalignments such conversions produce. Lung masks are stored
    as ``NPZ_MASK_DTYPES[n % 2]`` (uint8, bool) unless ``mask_dtype`` says otherwise;
    multiclass masks as uint8.

    Args:
        root: folder to write into (created if missing).
        num_patients, num_test_patients, num_slices, size, seed: as :func:`write_lctsc`;
            the same arguments give the same patients as there.
        multiclass: store the five organs instead of the lungs only.
        mask_dtype: ``"uint8"`` or ``"bool"`` for every case; ``None`` alternates them
            (lungs) or keeps uint8 (multiclass).

    Returns:
        ``root`` as a path.

    Raises:
        LayoutError: a patient folder to be written exists already.
        ValueError: an unknown ``mask_dtype``, or ``"bool"`` with ``multiclass``.

    Example:
        >>> import tempfile
        >>> root = write_lctsc_npz(tempfile.mkdtemp(), num_patients=1, num_slices=2, size=16)
        >>> sorted(np.load(root / "LCTSC-Train-S1-001" / "mask.npz"))
        ['mask']
    """
    if mask_dtype not in (None, *NPZ_MASK_DTYPES):
        raise ValueError(f"mask_dtype must be one of {NPZ_MASK_DTYPES} or None, got {mask_dtype!r}")
    if multiclass and mask_dtype == "bool":
        raise ValueError("a bool mask cannot hold the five organs; use mask_dtype='uint8'")
    cases = _cases(num_patients, num_test_patients, num_slices, size, seed)
    root = pathlib.Path(root)
    root.mkdir(parents=True, exist_ok=True)
    for number, case in enumerate(cases):
        final = root / case.patient_id
        if final.exists():
            raise LayoutError(final, "exists already; the phantom writer never overwrites data")
        with atomic_directory(final) as staging:
            _write_ct_series(staging / "dicom", case, seed, _uids(case, seed))
            labels = case.lctsc_labels()
            if multiclass:
                mask = labels
            else:
                dtype = mask_dtype or NPZ_MASK_DTYPES[number % len(NPZ_MASK_DTYPES)]
                mask = ((labels == 1) | (labels == 2)).astype(dtype)
            axes = tuple("zyx".index(axis) for axis in NPZ_STORED_FLIPS[number % 5])
            np.savez_compressed(staging / "mask.npz", mask=np.flip(mask, axis=axes))
    return root


def _cases(num_patients, num_test_patients, num_slices, size, seed) -> list[LctscPhantomCase]:
    for name, value in (("num_patients", num_patients), ("num_test_patients", num_test_patients)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
    if num_patients + num_test_patients < 1:
        raise ValueError("write at least one patient (num_patients + num_test_patients >= 1)")
    return [
        lctsc_phantom_case(i, test=test, num_slices=num_slices, size=size, seed=seed)
        for test, count in ((False, num_patients), (True, num_test_patients))
        for i in range(count)
    ]


def _uids(case: LctscPhantomCase, seed: int) -> dict[str, str]:
    entropy = ["kseg-chest-phantom", str(seed), case.patient_id]
    return {
        name: generate_uid(entropy_srcs=[*entropy, name])
        for name in ("study", "frame", "ct_series", "rt_series", "rt_instance")
    }


def _folder_number(case: LctscPhantomCase, seed: int, what: str) -> int:
    # TCIA appends the last five digits of a UID to each folder name.
    return int(generate_uid(prefix="1.", entropy_srcs=[str(seed), case.patient_id, what])[-5:])


def _write_tcia_patient(folder: pathlib.Path, case: LctscPhantomCase, seed: int) -> None:
    uids = _uids(case, seed)
    study = folder / f"11-16-2003-NA-KSEG PHANTOM THORAX-{_folder_number(case, seed, 'st'):05d}"
    ct_folder = study / f"0.000000-CT {SYNTHETIC_NOTICE}-{_folder_number(case, seed, 'ct'):05d}"
    rt_folder = study / (
        f"1.000000-RTSTRUCT {SYNTHETIC_NOTICE}-{_folder_number(case, seed, 'rt'):05d}"
    )
    sop_uids = _write_ct_series(ct_folder, case, seed, uids)
    rt_folder.mkdir(parents=True)
    rois = []
    for number, (name, outlines) in enumerate(case.phantom.outlines.items(), start=1):
        contours = tuple(Contour(sop_uids[k], points) for k, points in outlines)
        rois.append(RoiContours(number, case.roi_names[name], _ROI_COLORS[name], contours))
    if case.extra_roi:
        contours = tuple(Contour(sop_uids[k], points) for k, points in case.phantom.body_outlines)
        rois.append(
            RoiContours(len(rois) + 1, EXTRA_ROI_NAME, _ROI_COLORS["external"], contours,
                        interpreted_type="EXTERNAL")
        )
    reference = SeriesReference(
        patient_id=case.patient_id,
        patient_sex=case.sex,
        study_instance_uid=uids["study"],
        series_instance_uid=uids["ct_series"],
        frame_of_reference_uid=uids["frame"],
        sop_instance_uids=tuple(sop_uids),
    )
    write_phantom_rtstruct(rt_folder / "1-1.dcm", rois, reference,
                   series_instance_uid=uids["rt_series"], sop_instance_uid=uids["rt_instance"],
                   study_date="20031116")


def _write_ct_series(folder: pathlib.Path, case: LctscPhantomCase, seed: int,
                     uids: dict[str, str]) -> list[str]:
    """Write the CT slices; returns the SOPInstanceUID of slice k at index k."""
    folder.mkdir(parents=True)
    phantom = case.phantom
    nz = phantom.hu.shape[0]
    digits = max(3, len(str(nz)))
    sop_uids = []
    for k in range(nz):
        sop_uid = generate_uid(entropy_srcs=["kseg-chest-phantom", str(seed), case.patient_id,
                                             "slice", str(k)])
        sop_uids.append(sop_uid)
        ds = new_dataset(
            CTImageStorage, sop_uid, implementation_version_name=IMPLEMENTATION_VERSION_NAME
        )
        ds.ImageType = ["DERIVED", "SECONDARY", "AXIAL"]
        ds.StudyDate = ds.SeriesDate = ds.ContentDate = "20031116"
        ds.StudyTime = ds.SeriesTime = ds.ContentTime = "120000"
        ds.AccessionNumber = ""
        ds.Modality = "CT"
        ds.Manufacturer = "kseg synthetic phantom"
        ds.ReferringPhysicianName = ""
        ds.StudyDescription = f"{SYNTHETIC_NOTICE} (LCTSC layout)"
        ds.SeriesDescription = f"CT {SYNTHETIC_NOTICE}"
        ds.PatientName = "KSEG^PHANTOM"
        ds.PatientID = case.patient_id
        ds.PatientBirthDate = ""
        ds.PatientSex = case.sex
        ds.PatientIdentityRemoved = "YES"
        ds.BodyPartExamined = "CHEST"
        ds.PatientPosition = "HFS"
        ds.StudyInstanceUID = uids["study"]
        ds.SeriesInstanceUID = uids["ct_series"]
        ds.StudyID = "1"
        ds.SeriesNumber = 0
        ds.AcquisitionNumber = 1
        ds.InstanceNumber = int(case.instance_numbers[k])
        ds.FrameOfReferenceUID = uids["frame"]
        ds.PositionReferenceIndicator = ""
        z = round(phantom.origin[2] + k * phantom.spacing[0], 4)
        ds.ImagePositionPatient = [phantom.origin[0], phantom.origin[1], z]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.SliceLocation = z
        ds.SliceThickness = phantom.spacing[0]
        ds.PixelSpacing = [phantom.spacing[1], phantom.spacing[2]]
        ds.ImageComments = SYNTHETIC_NOTICE
        ds.BurnedInAnnotation = "NO"
        ds.KVP = 120
        ds.RescaleIntercept = -1024
        ds.RescaleSlope = 1
        ds.RescaleType = "HU"
        ds.WindowCenter, ds.WindowWidth = -600, 1500
        set_grayscale_pixels(ds, (phantom.hu[k].astype(np.int32) + 1024).astype(np.uint16))
        name = f"1-{int(case.name_ranks[k]) + 1:0{digits}d}.dcm"
        pydicom.dcmwrite(folder / name, ds, enforce_file_format=True)
    return sop_uids


def main(argv: Sequence[str] | None = None) -> None:
    """Command line: ``python -m kseg.phantoms.lctsc ROOT [--layout tcia|npz] ...``."""
    parser = argparse.ArgumentParser(
        prog="python -m kseg.phantoms.lctsc",
        description=f"Write {SYNTHETIC_NOTICE} chest CT patients in the LCTSC layout.",
    )
    parser.add_argument("root", type=pathlib.Path, help="folder to write into")
    parser.add_argument("--layout", choices=("tcia", "npz"), default="tcia")
    parser.add_argument("--num-patients", type=int, default=4)
    parser.add_argument("--num-test-patients", type=int, default=2)
    parser.add_argument("--num-slices", type=int, default=24)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--multiclass", action="store_true",
                        help="npz layout: store the five organs instead of the lungs")
    parser.add_argument("--mask-dtype", choices=NPZ_MASK_DTYPES, default=None,
                        help="npz layout: dtype of every mask (default: alternate by patient)")
    args = parser.parse_args(argv)
    common = dict(num_patients=args.num_patients, num_test_patients=args.num_test_patients,
                  num_slices=args.num_slices, size=args.size, seed=args.seed)
    if args.layout == "tcia":
        write_lctsc(args.root, **common)
    else:
        write_lctsc_npz(args.root, multiclass=args.multiclass, mask_dtype=args.mask_dtype,
                        **common)


if __name__ == "__main__":
    main()
