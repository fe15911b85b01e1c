"""Contrast transfer function, RELION convention.

gamma(k) = -pi*lambda*df(theta)*|k|^2 + (pi/2)*Cs*lambda^3*|k|^4 - phase_shift - atan(Q0/sqrt(1-Q0^2))
           + even_aberration(k)
CTF(k)   = -sin(gamma) * exp(-B*|k|^2/4) * scale

with df(theta) = dfU*cos^2(theta - phi) + dfV*sin^2(theta - phi) (positive = underfocus), k in 1/Angstrom,
lambda the relativistic electron wavelength in Angstrom and Cs in Angstrom (1 mm = 1e7 Angstrom).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

MM_TO_A = 1.0e7


def electron_wavelength_A(voltage_kv: float) -> float:
    """Relativistic electron wavelength in Angstrom for an acceleration voltage in kV."""
    if not np.isfinite(voltage_kv) or voltage_kv <= 0:
        raise ValueError(f"voltage must be a positive number of kV, got {voltage_kv!r}")
    volts = voltage_kv * 1e3
    return float(12.2643247 / np.sqrt(volts * (1.0 + 0.978466e-6 * volts)))


def defocus_phase_factor(wavelength_A: float) -> float:
    """d(gamma)/d(defocus * |k|^2) = -pi*lambda (rad per Angstrom of defocus per (1/A)^2)."""
    return -np.pi * wavelength_A


def cs_phase_factor(wavelength_A: float) -> float:
    """d(gamma)/d(Cs_mm * |k|^4) = (pi/2)*lambda^3*1e7 (rad per mm of Cs per (1/A)^4)."""
    return 0.5 * np.pi * wavelength_A**3 * MM_TO_A


def amplitude_contrast_phase(amplitude_contrast: float) -> float:
    """K3 = atan(Q0 / sqrt(1 - Q0^2)) in radians."""
    q0 = float(amplitude_contrast)
    if not 0.0 <= q0 < 1.0:
        raise ValueError(f"amplitude contrast must be in [0, 1), got {q0!r}")
    return float(np.arctan(q0 / np.sqrt(1.0 - q0 * q0)))


class Astigmatism(NamedTuple):
    """Defocus of an astigmatic CTF as df(theta) = mean + half_difference * cos(2 (theta - phi)).

    All fields have the shape of the inputs of :func:`astigmatism`.

    mean_A : (dfU + dfV) / 2, Angstrom (positive = underfocus).
    half_difference_A : (dfU - dfV) / 2, Angstrom (positive when dfU > dfV).
    cos_2phi, sin_2phi : cos and sin of twice the astigmatism angle phi (dimensionless).
    """

    mean_A: np.ndarray
    half_difference_A: np.ndarray
    cos_2phi: np.ndarray
    sin_2phi: np.ndarray


def astigmatism(defocus_u_A, defocus_v_A, defocus_angle_deg) -> Astigmatism:
    """Split RELION's (dfU, dfV, phi) into mean defocus, half difference and the doubled angle.

    With theta the direction of k, df(theta) = dfU cos^2(theta - phi) + dfV sin^2(theta - phi)
    = mean + half_difference * (cos(2 theta) cos(2 phi) + sin(2 theta) sin(2 phi)).

    Parameters
    ----------
    defocus_u_A, defocus_v_A : array_like, Angstrom (positive = underfocus), same shape.
    defocus_angle_deg : array_like, degrees, angle phi of the dfU axis from the x axis.

    Returns
    -------
    Astigmatism
        Arrays of the inputs' (broadcast) shape; float64 for float64 inputs. The operation order
        (0.5 * (u + v), 0.5 * (u - v), cos/sin of deg2rad(2 * phi)) is that every backend uses,
        so their results agree bit for bit.
    """
    phi2 = np.deg2rad(2.0 * defocus_angle_deg)
    return Astigmatism(0.5 * (defocus_u_A + defocus_v_A), 0.5 * (defocus_u_A - defocus_v_A),
                       np.cos(phi2), np.sin(phi2))
