"""Data model: optics groups and per-particle parameters, in RELION's conventions and units.

Adapters build these from STAR files or cryoSPARC datasets; the numerics only see these arrays.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

import numpy as np

from .errors import InputError, shown

#: Pixel sizes within this relative difference are taken as equal (no rescaling between optics
#: groups and maps; stack headers within it agree with the optics table).
PIXEL_TOLERANCE = 0.005


def nyquist_A(pixel_size_A: float) -> float:
    """The Nyquist resolution, 2 * pixel size (Å)."""
    return 2.0 * pixel_size_A


#: How the cryoSPARC adapter names a group: after its exposure group, numbered from 0.
_EXPOSURE_GROUP = re.compile(r"exposure group \d+")


def group_label(optics_group: int, name: str) -> str:
    """How messages and reports name a group: as cryoSPARC numbers it where the adapter named it
    after its exposure group ("exposure group 0"), else by RELION's number ("optics group 1")."""
    return name if _EXPOSURE_GROUP.fullmatch(name or "") else f"optics group {optics_group}"


@dataclass(frozen=True)
class OpticsGroup:
    """One optics group (RELION) / exposure group (cryoSPARC).

    optics_group : RELION's 1-based rlnOpticsGroup number.
    even_zernike : rlnEvenZernike coefficients (radians, un-normalised Zernike, |k| in 1/A).
    odd_zernike : rlnOddZernike coefficients (radians).
    beam_tilt_x_mrad, beam_tilt_y_mrad : rlnBeamTiltX/Y; has_beam_tilt : whether either column
        exists (RELION then inserts the tilt into the odd Zernike terms, even when it is zero).
    mag_matrix : 2x2 rlnMagMat (identity when absent).
    """

    optics_group: int
    name: str
    voltage_kv: float
    cs_mm: float
    amplitude_contrast: float
    pixel_size_A: float
    box_size: int
    even_zernike: np.ndarray = field(default_factory=lambda: np.zeros(0))
    odd_zernike: np.ndarray = field(default_factory=lambda: np.zeros(0))
    beam_tilt_x_mrad: float = 0.0
    beam_tilt_y_mrad: float = 0.0
    mag_matrix: np.ndarray = field(default_factory=lambda: np.eye(2))
    has_beam_tilt: bool = False


#: Physical ranges of the optics values, checked when a particle file is read (one place for the
#: STAR reader and the cryoSPARC converter): acceleration voltage in kV (0 < V <= 3000; transmission
#: microscopes run at 30..3000 kV), amplitude contrast in [0, 1), |Cs| at most 100 mm (finite;
#: aberration-corrected microscopes may state a small negative Cs), pixel size in Å (0 < p <= 100).
VOLTAGE_MAX_KV = 3000.0
CS_MAX_ABS_MM = 100.0
PIXEL_SIZE_MAX_A = 100.0


def check_optics_values(where: str, group: str, *, voltage_kv, cs_mm, amplitude_contrast,
                        pixel_size_A, box_size, names: dict[str, str]) -> None:
    """Raise InputError naming ``where``, the column (``names[quantity]``, e.g. _rlnVoltage or
    ctf/accel_kv), the group (``group``, e.g. "optics group 2") and the value if an optics
    value is outside its physical range (see :data:`VOLTAGE_MAX_KV` and the constants after it)."""
    checks = (
        ("voltage_kv", voltage_kv, 0 < voltage_kv <= VOLTAGE_MAX_KV,
         f"an acceleration voltage in kV, above 0 and at most {VOLTAGE_MAX_KV:g}"),
        ("cs_mm", cs_mm, abs(cs_mm) <= CS_MAX_ABS_MM,
         f"a finite Cs in mm, at most {CS_MAX_ABS_MM:g} in magnitude"),
        ("amplitude_contrast", amplitude_contrast, 0 <= amplitude_contrast < 1,
         "an amplitude contrast in [0, 1)"),
        ("pixel_size_A", pixel_size_A, 0 < pixel_size_A <= PIXEL_SIZE_MAX_A,
         f"a pixel size in Å, above 0 and at most {PIXEL_SIZE_MAX_A:g}"),
        ("box_size", box_size, float(box_size).is_integer() and box_size >= 2,
         "an image size in pixels, an integer of at least 2"),
    )
    for quantity, value, ok, expected in checks:
        if not (math.isfinite(float(value)) and ok):
            raise InputError(f"{where}: {names[quantity]} of {group} is "
                             f"{shown(value)}; expected {expected}")


PARTICLE_FIELDS = (
    "defocus_u_A", "defocus_v_A", "defocus_angle_deg", "phase_shift_deg", "bfactor_A2", "ctf_scale",
    "rot_deg", "tilt_deg", "psi_deg", "origin_x_A", "origin_y_A",
)
#: Every per-particle array of :class:`Particles`: the float fields and the two integer labels.
ALL_PARTICLE_FIELDS = PARTICLE_FIELDS + ("half_set", "optics_group")


@dataclass
class Particles:
    """Per-particle parameters, each an array of shape (n,).

    Angles in degrees (RELION ZYZ), origins in Angstrom (particle centre = box centre - origin),
    defocus in Angstrom (positive = underfocus), phase shift in degrees, B-factor in A^2.
    half_set : 1 or 2 (rlnRandomSubset); optics_group : 1-based group number.
    """

    defocus_u_A: np.ndarray
    defocus_v_A: np.ndarray
    defocus_angle_deg: np.ndarray
    phase_shift_deg: np.ndarray
    bfactor_A2: np.ndarray
    ctf_scale: np.ndarray
    rot_deg: np.ndarray
    tilt_deg: np.ndarray
    psi_deg: np.ndarray
    origin_x_A: np.ndarray
    origin_y_A: np.ndarray
    half_set: np.ndarray
    optics_group: np.ndarray

    def __post_init__(self):
        n = len(self.defocus_u_A)
        for name in ALL_PARTICLE_FIELDS:
            value = np.asarray(getattr(self, name))
            if value.shape != (n,):
                raise ValueError(f"particle field {name} has shape {value.shape}, expected ({n},)")
            dtype = np.int64 if name in ("half_set", "optics_group") else np.float64
            setattr(self, name, value.astype(dtype, copy=False))

    def __len__(self) -> int:
        return len(self.defocus_u_A)

    def subset(self, index) -> "Particles":
        return Particles(**{name: getattr(self, name)[index]
                            for name in ALL_PARTICLE_FIELDS})

    def concat(self, other: "Particles") -> "Particles":
        """These particles followed by ``other``'s."""
        return Particles(**{name: np.concatenate([getattr(self, name), getattr(other, name)])
                            for name in ALL_PARTICLE_FIELDS})

    def check_finite(self) -> None:
        """Raise ValueError naming the first field with a NaN or infinity."""
        for name in PARTICLE_FIELDS:
            bad = ~np.isfinite(getattr(self, name))
            if bad.any():
                raise ValueError(f"{name} is not finite for particle {int(np.flatnonzero(bad)[0])}")


def per_particle_geometry(groups, optics_group: np.ndarray):
    """(box, pixel size A) arrays per particle from its optics group."""
    box = np.zeros(optics_group.size, dtype=np.int64)
    px = np.zeros(optics_group.size, dtype=np.float64)
    for gid, g in groups.items():
        sel = optics_group == gid
        box[sel], px[sel] = g.box_size, g.pixel_size_A
    return box, px
