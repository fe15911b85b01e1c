"""Per-pixel sufficient statistics for an extra CTF phase delta(k), per optics group.

Model for particle i at band pixel p (complex, Gaussian noise):

    X = alpha * w * (-sin(gamma + delta)) * P = alpha * (cos(delta) * u + sin(delta) * v)
    u = -w sin(gamma) P,   v = -w cos(gamma) P

so the squared residual is linear in six sums over particles (per pixel and per cell of the
particle partition used for the jackknife and subsets):

    A = sum w^2 |P|^2 sin^2 g      B = sum w^2 |P|^2 sin g cos g     C = sum w^2 |P|^2 cos^2 g
    D = -sum w Re(X P*) sin g      E = -sum w Re(X P*) cos g         F = sum |X|^2

|X - c u - s v|^2 summed = F - 2 (c D + s E) + c^2 A + 2 c s B + s^2 C.
This module holds the reference (numpy) implementation; compiled backends must agree with it.
"""

from __future__ import annotations

import numpy as np

#: Number of statistics per pixel and cell (A..F above, in that order).
N_STATS = 6


def accumulate_numpy(stats: np.ndarray, cells: np.ndarray, observed: np.ndarray,
                     projections: np.ndarray, gamma: np.ndarray, envelope: np.ndarray) -> None:
    """Add a batch to ``stats`` in place.

    Parameters
    ----------
    stats : (n_cells, 6, m) float64.
    cells : (n,) int, cell of each particle.
    observed : (n, m) complex, image transforms at the band pixels (X).
    projections : (n, m) complex, shifted central slices with odd phase (P).
    gamma : (n, m) float, CTF phase (radians); envelope : (n, m) float, w.
    """
    sg, cg = np.sin(gamma), np.cos(gamma)
    pp = envelope**2 * (projections.real**2 + projections.imag**2)
    xp = envelope * (observed.real * projections.real + observed.imag * projections.imag)
    rows = np.stack([pp * sg * sg, pp * sg * cg, pp * cg * cg, -xp * sg, -xp * cg,
                     observed.real**2 + observed.imag**2], axis=1)  # (n, 6, m)
    np.add.at(stats, cells, rows)


def least_squares_phase(a, b, c, d, e) -> tuple:
    """The least-squares amplitudes (c, s) of X = c u + s v from the sums A..E above, per
    pixel or bin (arrays of one shape): the solution of [[A, B], [B, C]] (c, s) = (D, E).

    Returns (cos_amp, sin_amp, det, ok): ok where the system is well conditioned
    (A C - B^2 > 1e-12 A C); there det is A C - B^2, elsewhere 1 and both amplitudes 0.
    """
    det = a * c - b * b
    ok = det > 1e-12 * np.maximum(a * c, 1e-300)
    det = np.where(ok, det, 1.0)
    cos_amp = np.where(ok, (c * d - b * e) / det, 0.0)
    return cos_amp, np.where(ok, (a * e - b * d) / det, 0.0), det, ok


def amplitude_variance(noise_var, a, c, det):
    """Variance of each least-squares amplitude of :func:`least_squares_phase` for noise of
    variance ``noise_var`` per complex pixel: sigma^2 / 2 * ((M^-1)_cc + (M^-1)_ss) =
    sigma^2 (A + C) / (2 det)."""
    return 0.5 * noise_var * (a + c) / det
