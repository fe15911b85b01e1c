"""Global CTF Refinement's higher-order fields as RELION's aberrations.

The fields (k in 1/Å, φ = atan2(ky, kx), λ the electron wavelength in Å) become the optics
group's rlnOddZernike / rlnEvenZernike (RELION's order and un-normalised polynomials,
:mod:`csrefine.zernike`) and magnification matrix; zero fields add nothing (no Zernike arrays,
identity matrix). Magnitudes and polynomial forms follow public sources (pyem, cryoSPARC staff
posts, teamtomo torch-ctf; see docs/conventions.md); signs and directions are unverified, so a
:class:`Convention` names them, and :mod:`csrefine.cryosparc.aberration_choice` lets the
particles choose (:data:`MOST_LIKELY_CONVENTION` where they cannot tell):

- ``tilt_A`` (2,) [Å] = Cs·τ (axial coma): odd phase ``s·2πλ²|k|²(t0·kx + t1·ky)``
  (Z3^±1 with the Z1^±1 that cancels their linear part); most likely s = -1, RELION's sign for
  rlnBeamTiltX/Y (the phase does not change with Cs: cryoSPARC stores Cs·τ).
- ``trefoil_A`` (2,) [Å]: odd phase ``s·(2π/3)λ²|k|³(r0·cos3φ + r1·sin3φ)`` (Z3^3, Z3^-3);
  most likely s = -1 (the sign of the tilt term).
- ``tetra_A`` (4,) [Å]: even phase added to γ, ``s·[2πλ³|k|⁴(q0·cos2φ + q1·sin2φ) +
  (π/2)λ³|k|⁴(q2·cos4φ + q3·sin4φ)]`` (Z4^±2 with Z2^±2 compensation, Z4^±4); most likely
  s = +1 (the sign of the Cs term).
- ``shift_A`` (2,) [Å]: odd phase ``s·2π(k·shift)`` (Z1^±1); most likely s = -1 (the tilt's).
- ``anisomag`` (4,) = M − I row-major: rlnMagMat M = I + A (most likely), (I + A)⁻¹,
  I + Aᵀ or (I + Aᵀ)⁻¹.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from csrefine.ctf import electron_wavelength_A

from .fields import ABERRATION_FIELDS, constant_per_group

#: anisomag directions: rlnMagMat M from A = anisomag.reshape(2, 2) (row-major).
ANISOMAG_DIRECTIONS = ("I+A", "inv(I+A)", "I+A^T", "inv(I+A^T)")


@dataclass(frozen=True)
class Convention:
    """Signs and directions of the higher-order fields (see the module docstring).

    tilt_sign, trefoil_sign, tetra_sign, shift_sign : +1 or -1, the sign s of each phase;
    anisomag : one of :data:`ANISOMAG_DIRECTIONS`.
    """

    tilt_sign: int = -1
    trefoil_sign: int = -1
    tetra_sign: int = 1
    shift_sign: int = -1
    anisomag: str = "I+A"

    def label(self, field: str) -> str:
        """Human-readable convention of ``field`` (a key of :data:`ABERRATION_FIELDS`)."""
        if field == "ctf/anisomag":
            return f"rlnMagMat = {self.anisomag}"
        sign = "-" if getattr(self, FIELD_SETTING[field]) < 0 else "+"
        return {"ctf/tilt_A": f"odd phase {sign}2π λ² |k|² (t·k)",
                "ctf/trefoil_A": f"odd phase {sign}(2π/3) λ² |k|³ (r0 cos3φ + r1 sin3φ)",
                "ctf/tetra_A": f"even phase {sign}λ³|k|⁴ [2π (q0 cos2φ + q1 sin2φ) + "
                               f"(π/2) (q2 cos4φ + q3 sin4φ)]",
                "ctf/shift_A": f"odd phase {sign}2π (k·shift)"}[field]


#: The convention most likely from public sources (used where the data cannot tell).
MOST_LIKELY_CONVENTION = Convention()
#: Which :class:`Convention` attribute each field depends on, and its candidate values (the most
#: likely first).
FIELD_SETTING = {"ctf/tilt_A": "tilt_sign", "ctf/trefoil_A": "trefoil_sign",
                 "ctf/tetra_A": "tetra_sign", "ctf/shift_A": "shift_sign",
                 "ctf/anisomag": "anisomag"}
FIELD_CANDIDATES = {"ctf/tilt_A": (-1, 1), "ctf/trefoil_A": (-1, 1), "ctf/tetra_A": (1, -1),
                    "ctf/shift_A": (-1, 1), "ctf/anisomag": ANISOMAG_DIRECTIONS}


@dataclass(frozen=True)
class GroupAberrations:
    """One exposure group's higher-order fields as stored by cryoSPARC (float64, Å but anisomag).

    tilt_A (2,), trefoil_A (2,), tetra_A (4,), anisomag (4,) (M - I, row-major), shift_A (2,).
    """

    tilt_A: np.ndarray
    trefoil_A: np.ndarray
    tetra_A: np.ndarray
    anisomag: np.ndarray
    shift_A: np.ndarray

    def value(self, field: str) -> np.ndarray:
        return getattr(self, field.split("/")[1])

    def nonzero_fields(self) -> list[str]:
        """The fields (``ctf/...`` names) with any non-zero component, in ABERRATION_FIELDS order."""
        return [f for f in ABERRATION_FIELDS if np.any(self.value(f) != 0)]


def group_aberrations(dset, exp_ids: np.ndarray) -> dict[int, GroupAberrations]:
    """Each exposure group's higher-order fields (absent fields: zeros).

    exp_ids : (n,) ``ctf/exp_group_id`` per particle. Raises InputError naming the field
    component and group where a value is not constant within a group.
    """
    fields = set(dset.fields())
    n = len(exp_ids)
    per_field = {}
    for name, length in ABERRATION_FIELDS.items():
        values = (np.array(dset[name], dtype=np.float64).reshape(n, length) if name in fields
                  else np.zeros((n, length)))
        per_field[name] = [constant_per_group(values[:, i], exp_ids, f"{name}[{i}]")
                           for i in range(length)]
    return {int(eid): GroupAberrations(**{
        name.split("/")[1]: np.array([component[int(eid)] for component in per_field[name]])
        for name in ABERRATION_FIELDS}) for eid in np.unique(exp_ids)}


def odd_zernike_terms(values: GroupAberrations, convention: Convention,
                      wavelength_A: float) -> np.ndarray:
    """rlnOddZernike (6,) radians of tilt, trefoil and shift; (0,) when all are zero.

    Order Z1^-1, Z1^1, Z3^-3, Z3^-1, Z3^1, Z3^3. |k|^3 cosφ = (Z3^1 + 2 Z1^1) / 3.
    """
    if not (np.any(values.tilt_A) or np.any(values.trefoil_A) or np.any(values.shift_A)):
        return np.zeros(0)
    lam2 = wavelength_A**2
    c = np.zeros(6)
    tilt_x, tilt_y = convention.tilt_sign * 2.0 * np.pi * lam2 * values.tilt_A
    c[4] += tilt_x / 3.0
    c[1] += 2.0 * tilt_x / 3.0
    c[3] += tilt_y / 3.0
    c[0] += 2.0 * tilt_y / 3.0
    trefoil = convention.trefoil_sign * (2.0 * np.pi / 3.0) * lam2 * values.trefoil_A
    c[5] += trefoil[0]
    c[2] += trefoil[1]
    shift = convention.shift_sign * 2.0 * np.pi * values.shift_A
    c[1] += shift[0]
    c[0] += shift[1]
    return c


def even_zernike_terms(values: GroupAberrations, convention: Convention,
                       wavelength_A: float) -> np.ndarray:
    """rlnEvenZernike (9,) radians of tetrafoil; (0,) when it is zero.

    Order Z0^0, Z2^-2, Z2^0, Z2^2, Z4^-4, Z4^-2, Z4^0, Z4^2, Z4^4. |k|^4 cos2φ = (Z4^2 + 3 Z2^2) / 4.
    """
    if not np.any(values.tetra_A):
        return np.zeros(0)
    lam3 = wavelength_A**3
    q = convention.tetra_sign * values.tetra_A
    c = np.zeros(9)
    two_fold = 2.0 * np.pi * lam3 * q[:2]
    c[7] += two_fold[0] / 4.0
    c[3] += 3.0 * two_fold[0] / 4.0
    c[5] += two_fold[1] / 4.0
    c[1] += 3.0 * two_fold[1] / 4.0
    c[8] += 0.5 * np.pi * lam3 * q[2]
    c[4] += 0.5 * np.pi * lam3 * q[3]
    return c


def anisomag_matrix(anisomag, direction: str) -> np.ndarray:
    """rlnMagMat (2, 2) of ``anisomag`` = [m00, m01, m10, m11] (M - I) in ``direction``
    (:data:`ANISOMAG_DIRECTIONS`); the identity for zeros."""
    a = np.asarray(anisomag, dtype=np.float64).reshape(2, 2)
    if direction not in ANISOMAG_DIRECTIONS:
        raise ValueError(f"anisomag direction must be one of {ANISOMAG_DIRECTIONS}, got {direction!r}")
    if not np.any(a):
        return np.eye(2)
    if "^T" in direction:
        a = a.T
    m = np.eye(2) + a
    return np.linalg.inv(m) if direction.startswith("inv") else m


def aberration_terms(values: GroupAberrations, convention: Convention, voltage_kv: float) -> dict:
    """One group's fields under ``convention`` as :class:`csrefine.model.OpticsGroup` arguments:
    even_zernike (9,) or (0,) and odd_zernike (6,) or (0,) in radians (RELION order),
    mag_matrix (2, 2)."""
    lam = electron_wavelength_A(voltage_kv)
    return {"even_zernike": even_zernike_terms(values, convention, lam),
            "odd_zernike": odd_zernike_terms(values, convention, lam),
            "mag_matrix": anisomag_matrix(values.anisomag, convention.anisomag)}

