"""Un-normalised Zernike polynomials in RELION's ordering, and beam tilt as odd aberrations.

rho = |k| in 1/Angstrom (no normalisation to a unit disc), phi = atan2(ky, kx).
Z_n^m = R_n^|m|(rho) * cos(m*phi) for m >= 0 and R_n^|m|(rho) * sin(|m|*phi) for m < 0.
Even terms (n even) add to the CTF phase gamma; odd terms (n odd) multiply the prediction by
exp(i * sum). Ordering within each n is m = -n, -n+2, ..., n; even: Z0^0, Z2^-2, Z2^0, Z2^2, Z4^-4, ...;
odd: Z1^-1, Z1^1, Z3^-3, Z3^-1, Z3^1, Z3^3, ...
"""

from __future__ import annotations

from math import factorial

import numpy as np


def _radial(n: int, m: int, rho):
    m = abs(m)
    out = np.zeros_like(rho, dtype=np.float64)
    for s in range((n - m) // 2 + 1):
        c = (-1) ** s * factorial(n - s) / (
            factorial(s) * factorial((n + m) // 2 - s) * factorial((n - m) // 2 - s))
        out = out + c * rho ** (n - 2 * s)
    return out


def zernike_nm(n: int, m: int, kx, ky):
    """Z_n^m at frequencies (kx, ky) in 1/A."""
    rho = np.hypot(kx, ky)
    phi = np.arctan2(ky, kx)
    ang = np.cos(m * phi) if m >= 0 else np.sin(-m * phi)
    return _radial(n, m, rho) * ang


def _indices(parity: int, count: int):
    out, n = [], parity
    while len(out) < count:
        out.extend((n, m) for m in range(-n, n + 1, 2))
        n += 2
    return out[:count]


def _zernike_sum(coefficients, parity: int, kx, ky):
    coefficients = np.asarray(coefficients, dtype=np.float64).ravel()
    total = np.zeros(np.broadcast(kx, ky).shape)
    for c, (n, m) in zip(coefficients, _indices(parity, coefficients.size)):
        if c != 0.0:
            total = total + c * zernike_nm(n, m, kx, ky)
    return total


def even_zernike_phase(coefficients, kx, ky):
    """Sum of c_i * Z_i (even terms, RELION order) in radians; zero for no coefficients."""
    return _zernike_sum(coefficients, 0, kx, ky)


def odd_zernike_phase(coefficients, kx, ky):
    """Sum of c_i * Z_i (odd terms, RELION order) in radians."""
    return _zernike_sum(coefficients, 1, kx, ky)


def insert_beam_tilt(odd_coefficients, beam_tilt_x_mrad: float, beam_tilt_y_mrad: float,
                     cs_mm: float, wavelength_A: float) -> np.ndarray:
    """Odd Zernike coefficients with a beam tilt inserted, as RELION does when rlnBeamTiltX/Y exist.

    With s = pi * 2e4 * Cs_mm * lambda^2, Z3x = -s*tx/3 and Z3y = -s*ty/3 (tilt in mrad):
    c[1] += 2*Z3x, c[0] += 2*Z3y, and c[4] = Z3x, c[3] = Z3y (overwritten). The net phase is
    -2*pi*Cs_A*lambda^2*(tx_rad*kx + ty_rad*ky)*|k|^2: proportional to Cs, so changing Cs at a fixed
    beam tilt changes the coma (see :func:`rescale_beam_tilt`).
    """
    c = np.zeros(max(6, np.size(odd_coefficients)))
    c[:np.size(odd_coefficients)] = np.ravel(odd_coefficients)
    s = np.pi * 2e4 * cs_mm * wavelength_A**2
    z3x, z3y = -s * beam_tilt_x_mrad / 3.0, -s * beam_tilt_y_mrad / 3.0
    c[1] += 2.0 * z3x
    c[0] += 2.0 * z3y
    c[4] = z3x
    c[3] = z3y
    return c


def rescale_beam_tilt(beam_tilt_mrad, cs_old_mm: float, cs_new_mm: float):
    """Beam tilt that gives the same coma phase with Cs changed from cs_old_mm to cs_new_mm."""
    if cs_new_mm == 0.0:
        raise ValueError("cannot express a beam tilt with Cs = 0")
    return np.asarray(beam_tilt_mrad, dtype=np.float64) * (cs_old_mm / cs_new_mm)


# ----------------------------------------------------------------------------------------------
# The isotropic (m = 0) even terms as a polynomial in |k|^2: the k^4 part is a Cs.

def _radial_power_series(n: int) -> np.ndarray:
    """Coefficients a[j] of R_n^0(rho) = sum_j a[j] rho^(2j), j = 0..n/2 (n even)."""
    a = np.zeros(n // 2 + 1)
    for s in range(n // 2 + 1):
        a[(n - 2 * s) // 2] += (-1) ** s * factorial(n - s) / (
            factorial(s) * factorial(n // 2 - s) ** 2)
    return a


def _isotropic_positions(count: int) -> dict[int, int]:
    """{n: index of Z_n^0 in RELION's even order} for the first ``count`` even terms."""
    return {n: i for i, (n, m) in enumerate(_indices(0, count)) if m == 0}


def isotropic_power_series(even_coefficients) -> np.ndarray:
    """The m = 0 even terms as sum_j p[j] |k|^(2j) (radians, |k| in 1/Å), j = 0..n_max/2."""
    c = np.ravel(np.asarray(even_coefficients, dtype=np.float64))
    positions = _isotropic_positions(c.size)
    p = np.zeros(max(positions, default=0) // 2 + 1)
    for n, i in positions.items():
        a = _radial_power_series(n)
        p[:a.size] += c[i] * a
    return p


def isotropic_k4_rad(even_coefficients) -> float:
    """The coefficient of |k|^4 (radians Å^4) in the even Zernike phase: the part of the phase
    that a Cs produces (Z4^0 = 6 rho^4 - 6 rho^2 + 1 holds 6 c; Z6^0 holds -30 c, ...)."""
    p = isotropic_power_series(even_coefficients)
    return float(p[2]) if p.size > 2 else 0.0


def fold_out_k4(even_coefficients) -> np.ndarray:
    """Even Zernike coefficients (RELION order, same length) whose phase equals the input's minus
    its isotropic |k|^4 part: that part then belongs to Cs (rlnSphericalAberration), and the
    lower orders it came with (Z4^0's -6 rho^2 + 1) move to Z2^0 and Z0^0. Anisotropic terms are
    unchanged."""
    c = np.array(np.ravel(even_coefficients), dtype=np.float64)
    positions = _isotropic_positions(c.size)
    p = isotropic_power_series(c)
    if p.size <= 2 or p[2] == 0.0:
        return c
    p[2] = 0.0
    for n in sorted(positions, reverse=True):  # triangular: Z_n^0 is the only term with rho^n
        a = _radial_power_series(n)
        c[positions[n]] = p[n // 2] / a[n // 2]
        p[:a.size] -= c[positions[n]] * a
    return c
