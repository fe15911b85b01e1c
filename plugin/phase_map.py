"""The measured even phase in 2D: is a k^4 change isotropic (Cs, pixel size) or not?

From one group's accumulated statistics (per band pixel, summed over particles: A, B, C, D, E,
F of :mod:`csrefine.accumulate`), the phase change delta that best explains the images is, per
pixel, the least-squares solution of [[A, B], [B, C]] (c, s) = (D, E), delta = atan2(s, c). Pixels
are pooled into square blocks (``block_px`` Fourier pixels a side) to gain signal; blocks whose
amplitude is below ``MIN_SNR`` times its standard error are masked. The fitted model (defocus
offset and Cs change: isotropic) and the residual complete the picture; the residual's
anisotropic part (cos 2phi, sin 2phi, cos 4phi, sin 4phi terms in k^2 and k^4) is fitted and
compared, at the band's edge, with the isotropic change: magnification anisotropy, astigmatism
or tetrafoil show there, a Cs or pixel-size change does not.

:func:`shifted_curves` re-expresses a group's measured and fitted phase against another CTF
that differs by a known isotropic phase (refinement rounds: against the user's nominal CTF).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from .accumulate import amplitude_variance, least_squares_phase
from .backends._tables import grid_indices
from .forward import magnified

#: Blocks whose fitted amplitude is below this many standard errors are masked.
MIN_SNR = 2.0


@dataclass(frozen=True)
class PhaseMap:
    """Phase change per block, degrees, on a (n, n) grid over the full plane (NaN: masked).

    k_axis_per_A : (n,) block centres along x and y, 1/Å (nominal, before magnification);
    measured_deg, fitted_deg, residual_deg : (n, n), [y, x]; anisotropic_deg / isotropic_deg :
    the largest anisotropic residual term and the isotropic fitted change at the band's edge.
    """

    k_axis_per_A: np.ndarray
    measured_deg: np.ndarray
    fitted_deg: np.ndarray
    residual_deg: np.ndarray
    anisotropic_deg: float
    isotropic_deg: float

    def summary(self) -> dict:
        return anisotropy_summary(self.anisotropic_deg, self.isotropic_deg)


def anisotropy_summary(anisotropic_deg: float, isotropic_deg: float) -> dict:
    """The anisotropic residual and the isotropic change at the band's edge (degrees) and their
    ratio (0 for a pure Cs / pixel-size change; NaN without an isotropic change), rounded."""
    ratio = anisotropic_deg / isotropic_deg if isotropic_deg > 0 else float("nan")
    return {"anisotropic_deg_at_band_edge": round(float(anisotropic_deg), 2),
            "isotropic_change_deg_at_band_edge": round(float(isotropic_deg), 2),
            "anisotropy_ratio": round(float(ratio), 3)}


def wrap_deg(x):
    """Angles wrapped into [-180, 180)."""
    return (np.asarray(x) + 180.0) % 360.0 - 180.0


def phase_map(stats: np.ndarray, band, k2_per_A2: np.ndarray, noise_var: np.ndarray,
              fitted_delta, block_px: int = 2) -> PhaseMap:
    """The 2D phase map of one group.

    stats : (6, m) statistics summed over particles and cells; band : the group's
    :class:`csrefine.fourier.Band`; k2_per_A2, noise_var : (m,) |Mk|^2 of each pixel and its
    noise variance (per particle); fitted_delta : function of k2 (1/Å^2) -> the fitted
    isotropic phase change (radians).
    """
    box, px = band.box, band.pixel_size_A
    col, row = grid_indices(band)                       # 0 .. box/2, 0 .. box
    row = row - box // 2                                # -box/2 .. box/2
    n = (box // 2) // block_px + 1                      # blocks per half axis
    ix, iy = col // block_px, row // block_px           # signed block indices (floor)
    key = (iy + n) * (2 * n) + (ix + n)
    size = (2 * n) ** 2
    a, b, c, d, e, _ = (np.bincount(key, v, minlength=size) for v in stats)
    count = np.bincount(key, minlength=size)
    sigma2 = np.bincount(key, noise_var, minlength=size)
    k2 = np.bincount(key, k2_per_A2, minlength=size) / np.maximum(count, 1)
    kx = np.bincount(key, band.kx_px, minlength=size) / np.maximum(count, 1) / px
    ky = np.bincount(key, band.ky_px, minlength=size) / np.maximum(count, 1) / px
    cs, ss, safe, ok = least_squares_phase(a, b, c, d, e)  # ok: count > 0 too (sums 0)
    var_amp = amplitude_variance(sigma2 / np.maximum(count, 1), a, c, safe)
    snr = np.where(ok, np.hypot(cs, ss) / np.sqrt(np.maximum(var_amp, 1e-300)), 0.0)
    keep = ok & (snr >= MIN_SNR)
    measured = np.where(keep, np.rad2deg(np.arctan2(ss, cs)), np.nan)
    fitted = np.where(count > 0, np.rad2deg(fitted_delta(k2)), np.nan)
    residual = np.where(keep, wrap_deg(measured - fitted), np.nan)
    aniso = _anisotropic_amplitude_deg(residual, kx, ky, snr, keep, band.k_max_per_A)
    iso = abs(float(np.rad2deg(fitted_delta(band.k_max_per_A ** 2))))
    full = [_mirror(v.reshape(2 * n, 2 * n)) for v in (measured, fitted, residual)]
    axis = (np.arange(-n, n) + 0.5) * block_px / (box * px)
    return PhaseMap(axis, *full, aniso, iso)


def _mirror(grid: np.ndarray) -> np.ndarray:
    """Fill the kx < 0 half of a (2n, 2n) block grid [y, x] (indices -n..n-1 on both axes) from
    kx >= 0 by Friedel symmetry, delta(-k) = delta(k): block (i, j) -> (-i-1, -j-1)."""
    out = grid.copy()
    flipped = grid[::-1, ::-1]
    empty = np.isnan(out)
    out[empty] = flipped[empty]
    return out


def _anisotropic_amplitude_deg(residual_deg, kx, ky, snr, keep, k_edge_per_A) -> float:
    """Largest amplitude (degrees, at the band's edge) of the anisotropic terms fitted to the
    residual: k^2 (cos 2phi, sin 2phi), k^4 (cos 2phi, sin 2phi, cos 4phi, sin 4phi)."""
    if keep.sum() < 12:
        return float("nan")
    k2 = kx[keep] ** 2 + ky[keep] ** 2
    phi = np.arctan2(ky[keep], kx[keep])
    scale2, scale4 = k2 / k_edge_per_A**2, (k2 / k_edge_per_A**2) ** 2
    design = np.stack([np.ones_like(k2), scale2, scale4,
                       scale2 * np.cos(2 * phi), scale2 * np.sin(2 * phi),
                       scale4 * np.cos(2 * phi), scale4 * np.sin(2 * phi),
                       scale4 * np.cos(4 * phi), scale4 * np.sin(4 * phi)], axis=1)
    w = np.minimum(snr[keep], 20.0)
    coef, *_ = np.linalg.lstsq(design * w[:, None], residual_deg[keep] * w, rcond=None)
    two = np.hypot(coef[3] + coef[5], coef[4] + coef[6])  # at the edge, scale2 = scale4 = 1
    four = np.hypot(coef[7], coef[8])
    return float(max(two, four))


def shifted_curves(curves: dict, delta_rad: Callable[[np.ndarray], np.ndarray],
                   mag_matrix) -> dict:
    """A group's plot curves with the phase ``delta_rad(k2)`` (radians; k2 = |M k|^2 in 1/Å^2)
    added to the measured and fitted phase change, radial (``measured_delta_rad``,
    ``fit_delta_rad``) and 2D (``phase_map``); the residual is unchanged. A copy; the input is
    not modified."""
    out = dict(curves)
    if "k2" in curves:
        shift = delta_rad(np.asarray(curves["k2"], dtype=float))
        for name in ("measured_delta_rad", "fit_delta_rad"):
            out[name] = (np.asarray(curves[name], dtype=float) + shift).tolist()
    pm = curves.get("phase_map")
    if pm:
        k = np.asarray(pm["k_axis_per_A"], dtype=float)
        kx, ky = magnified(*np.meshgrid(k, k), mag_matrix)  # [y, x], as the maps
        shift = np.rad2deg(delta_rad(kx * kx + ky * ky))
        out["phase_map"] = {**pm, **{name: (np.asarray(pm[name], dtype=float) + shift).tolist()
                                     for name in ("measured_deg", "fitted_deg")}}
    return out


def with_isotropic_change(anisotropy: dict, isotropic_deg: float) -> dict:
    """The anisotropy summary (:meth:`csrefine.phase_map.PhaseMap.summary`) with the isotropic
    change at the band's edge replaced (and the ratio recomputed)."""
    if not anisotropy:
        return anisotropy
    return anisotropy_summary(anisotropy["anisotropic_deg_at_band_edge"], isotropic_deg)
