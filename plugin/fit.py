"""Fit delta(k) = defocus_factor * ddf * |k|^2 + cs_factor * dcs * |k|^4 to accumulated statistics.

The likelihood of the statistics of :mod:`csrefine.accumulate` under the model
X = alpha_s (cos(delta) u + sin(delta) v) + noise, with an amplitude alpha_s and a noise variance
sigma_s^2 per Fourier shell s, profiled over alpha_s, is

    log L(ddf, dcs) = sum_s Ql_s^2 / (2 sigma_s^2 Qq_s)
    Ql_s = sum_{p in s} f_p (c_p D_p + s_p E_p)
    Qq_s = sum_{p in s} f_p (c_p^2 A_p + 2 c_p s_p B_p + s_p^2 C_p),   c_p, s_p = cos, sin delta(k_p)

(f_p the Friedel weight). alpha_s is signed on purpose: half maps reconstructed with the nominal
Cs are attenuated by cos(delta) (averaged over defoci), which changes sign beyond delta = pi/2 for
a large Cs error; a signed per-shell amplitude absorbs that, and the smooth delta(k) still fixes
delta (delta and delta + pi cannot both fit across shells). sigma_s^2 comes from the same data:
the residual of the unconstrained per-pixel least-squares fit of (c, s). Because delta depends on
|k'| only, pixels are pooled into fine radial bins (``bins_per_shell`` per Fourier shell) before
the search, which makes every evaluation cheap. A grid search over (ddf, dcs), with steps small
enough that the phase at k_max moves by at most pi/6 per step, precedes a local refinement, so
phase wrapping cannot trap the fit.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import minimize

from .accumulate import least_squares_phase


@dataclass(frozen=True)
class RadialStatistics:
    """Statistics pooled into radial bins.

    sums : (..., 5, n_bins) Friedel-weighted sums of A, B, C, D, E per bin.
    k2 : (n_bins,) mean |k'|^2 (1/A^2) of each bin; shell : (n_bins,) Fourier shell of each bin.
    noise_var : (n_shells,) noise variance sigma_s^2 per shell (per complex pixel and particle).
    pixel_shell : (m,) each pixel's index into noise_var.
    """

    sums: np.ndarray
    k2: np.ndarray
    shell: np.ndarray
    noise_var: np.ndarray
    pixel_shell: np.ndarray


@dataclass(frozen=True)
class PhaseModel:
    """Phase factors: delta = defocus_factor*ddf*k2 + cs_factor*dcs*k2^2 (radians)."""

    defocus_factor: float
    cs_factor: float

    def delta(self, ddf_A, dcs_mm, k2):
        return self.defocus_factor * ddf_A * k2 + self.cs_factor * dcs_mm * k2 * k2


def shell_noise_variance(stats: np.ndarray, shell: np.ndarray, n_shells: int,
                         n_particles: int) -> np.ndarray:
    """sigma^2 per shell from per-pixel least-squares residuals.

    stats : (6, m) summed over cells; shell : (m,) shell index of each pixel.
    """
    cs, ss, _, _ = least_squares_phase(*stats[:5])
    resid = np.maximum(stats[5] - cs * stats[3] - ss * stats[4], 0.0)
    dof = np.full(resid.shape, max(n_particles - 1, 1), dtype=np.float64)
    num = np.bincount(shell, resid, minlength=n_shells)
    den = np.bincount(shell, dof, minlength=n_shells)
    var = num / np.maximum(den, 1.0)
    positive = var[var > 0]
    floor = positive.min() if positive.size else 1.0
    return np.where(var > 0, var, floor)


def radial_bins(k_px: np.ndarray, bins_per_shell: int) -> tuple[np.ndarray, np.ndarray]:
    """(fine bin, shell) of each pixel from |k| in cycles per box (Fourier pixel units)."""
    fine = np.floor(k_px * bins_per_shell).astype(np.int64)
    return fine, fine // bins_per_shell


def pool(stats: np.ndarray, k2_phys: np.ndarray, k_box: np.ndarray, friedel: np.ndarray,
         n_particles: int, bins_per_shell: int) -> RadialStatistics:
    """Pool per-pixel statistics (..., 6, m) into radial bins.

    k2_phys : (m,) |k'|^2 in 1/A^2 (after the magnification matrix), where delta is evaluated.
    k_box : (m,) |k| in Fourier pixels (nominal), defines shells and bins.
    friedel : (m,) Friedel weights. The noise variance uses the total over leading axes.
    """
    fine, shell = radial_bins(k_box, bins_per_shell)
    used, fine_idx = np.unique(fine, return_inverse=True)
    n_bins = used.size
    shells_used, shell_idx = np.unique(shell, return_inverse=True)
    bin_shell = np.zeros(n_bins, dtype=np.int64)
    bin_shell[fine_idx] = shell_idx
    lead = stats.shape[:-2]
    flat = stats.reshape((-1, 6, stats.shape[-1]))
    sums = np.zeros((flat.shape[0], 5, n_bins))
    for i in range(flat.shape[0]):
        for j in range(5):
            sums[i, j] = np.bincount(fine_idx, flat[i, j] * friedel, minlength=n_bins)
    weight = np.bincount(fine_idx, friedel, minlength=n_bins)
    k2 = np.bincount(fine_idx, k2_phys * friedel, minlength=n_bins) / np.maximum(weight, 1e-300)
    total = flat.sum(axis=0)
    noise = shell_noise_variance(total, shell_idx, shells_used.size, n_particles)
    return RadialStatistics(sums.reshape(lead + (5, n_bins)), k2, bin_shell, noise, shell_idx)


def shell_terms(radial: RadialStatistics, sums: np.ndarray, model: PhaseModel, ddf_A, dcs_mm):
    """cos and sin of delta per bin and the profiled likelihood's Ql_s, Qq_s per shell (module
    docstring). ddf_A, dcs_mm broadcast against the bins (a trailing axis of length 1 for arrays
    of parameters); sums : (..., 5, n_bins) as broadcastable. Returns (c, s, ql, qq)."""
    delta = model.delta(ddf_A, dcs_mm, radial.k2)
    c, s = np.cos(delta), np.sin(delta)
    a, b, cc, d, e = sums
    ql_bins = c * d + s * e
    qq_bins = c * c * a + 2.0 * c * s * b + s * s * cc
    # Bins are sorted by radius, so each shell is a contiguous run of bins.
    starts = np.flatnonzero(np.r_[True, np.diff(radial.shell) != 0])
    ql = np.add.reduceat(ql_bins, starts, axis=-1)
    qq = np.add.reduceat(qq_bins, starts, axis=-1)
    return c, s, ql, qq


def log_likelihood(radial: RadialStatistics, sums: np.ndarray, model: PhaseModel,
                   ddf_A, dcs_mm) -> np.ndarray:
    """Profiled log-likelihood for (arrays of) parameters; sums : (5, n_bins)."""
    ddf = np.asarray(ddf_A, dtype=np.float64)[..., None]
    dcs = np.asarray(dcs_mm, dtype=np.float64)[..., None]
    _, _, ql, qq = shell_terms(radial, sums, model, ddf, dcs)
    gain = np.where(qq > 0, ql * ql / np.where(qq > 0, qq, 1.0), 0.0)
    return (gain / (2.0 * radial.noise_var)).sum(axis=-1)


@dataclass(frozen=True)
class SearchRange:
    """Half-widths of the global search: defocus offset (A) and Cs change (mm)."""

    defocus_A: float
    cs_mm: float


def default_search_range(model: PhaseModel, k_max_per_A: float, cs_mm: float) -> SearchRange:
    """Cs change within +-cs_mm; defocus offsets up to what compensates that Cs change at k_max
    (|cs_factor * dcs * k^2 / defocus_factor|) plus 500 A."""
    k2 = k_max_per_A**2
    compensating = abs(model.cs_factor * cs_mm * k2 / model.defocus_factor)
    return SearchRange(500.0 + compensating, cs_mm)


@dataclass(frozen=True)
class FitResult:
    defocus_offset_A: float
    cs_change_mm: float
    log_likelihood: float
    hessian: np.ndarray  # 2x2 of -log L in (ddf_A, dcs_mm)


def _local(radial, sums, model, start, scales):
    fun = lambda x: -float(log_likelihood(radial, sums, model, x[0] * scales[0], x[1] * scales[1]))  # noqa: E731
    res = minimize(fun, np.asarray(start) / scales, method="Nelder-Mead",
                   options={"xatol": 1e-4, "fatol": 1e-9 * max(1.0, abs(fun(np.asarray(start) / scales))),
                            "maxiter": 2000})
    return res.x * scales, -res.fun


def numerical_hessian(radial, sums, model, ddf, dcs, h_df, h_cs) -> np.ndarray:
    """Hessian of -log L by central differences (steps h_df in A, h_cs in mm)."""
    f = lambda a, b: -float(log_likelihood(radial, sums, model, a, b))  # noqa: E731
    f0 = f(ddf, dcs)
    hxx = (f(ddf + h_df, dcs) - 2 * f0 + f(ddf - h_df, dcs)) / h_df**2
    hyy = (f(ddf, dcs + h_cs) - 2 * f0 + f(ddf, dcs - h_cs)) / h_cs**2
    hxy = (f(ddf + h_df, dcs + h_cs) - f(ddf + h_df, dcs - h_cs)
           - f(ddf - h_df, dcs + h_cs) + f(ddf - h_df, dcs - h_cs)) / (4 * h_df * h_cs)
    return np.array([[hxx, hxy], [hxy, hyy]])


def fit_phase(radial: RadialStatistics, sums: np.ndarray, model: PhaseModel, k_max_per_A: float,
              search: SearchRange) -> FitResult:
    """Maximise the profiled likelihood: grid search (steps of :func:`parameter_scales`), then
    local (:func:`fit_many` from the 4 best grid points).

    sums : (5, n_bins) pooled statistics to fit (a subset's, or all).
    """
    scales = parameter_scales(model, k_max_per_A)
    n_df, n_cs = np.ceil(np.array([search.defocus_A, search.cs_mm]) / scales).astype(int)
    df_axis = np.linspace(-search.defocus_A, search.defocus_A, 2 * n_df + 1)
    cs_axis = np.linspace(-search.cs_mm, search.cs_mm, 2 * n_cs + 1)
    grid = log_likelihood(radial, sums, model, df_axis[:, None], cs_axis[None, :])
    order = np.argsort(grid, axis=None)[::-1][:4]
    starts = np.array([(df_axis[i], cs_axis[j])
                       for i, j in zip(*np.unravel_index(order, grid.shape))])
    found = fit_many(radial, np.repeat(sums[None], len(starts), axis=0), model, k_max_per_A,
                     starts)
    ll = log_likelihood(radial, sums, model, found[:, 0], found[:, 1])
    ddf, dcs = found[int(np.argmax(ll))]
    hess = numerical_hessian(radial, sums, model, ddf, dcs, 0.05 * scales[0], 0.05 * scales[1])
    return FitResult(float(ddf), float(dcs), float(ll.max()), hess)


#: Newton steps of :func:`fit_many` (each one vectorised call on a 9-point stencil) and the
#: step (scaled units: 1 = a 30 degree phase change at k_max) below which a fit has converged;
#: NEWTON_STENCIL is the stencil's spacing in the same units.
NEWTON_STEPS, NEWTON_TOLERANCE, NEWTON_STENCIL = 8, 1e-6, 0.01


def _stencil_values(radial, stack, model, x, scales, h) -> np.ndarray:
    """-log L of each of ``stack``'s sums (k, 5, n_bins) on a 3x3 stencil around x (k, 2)
    (scaled units, spacing h): (k, 3, 3), [defocus step, Cs step] from -h to +h."""
    steps = np.array([-h, 0.0, h])
    ddf = (x[:, 0, None, None] + steps[None, :, None]) * scales[0]
    dcs = (x[:, 1, None, None] + steps[None, None, :]) * scales[1]
    sums = np.moveaxis(stack, 1, 0)[:, :, None, None, :]  # (5, k, 1, 1, n_bins)
    return -log_likelihood(radial, sums, model, ddf, dcs)


def fit_many(radial: RadialStatistics, stack: np.ndarray, model: PhaseModel, k_max_per_A: float,
             starts) -> np.ndarray:
    """Maximise the profiled likelihood of each of several sums locally, e.g. the
    leave-one-cell-out sums from the total's optimum, or one sum from several grid points.

    Vectorised Newton iterations (gradient and Hessian by central differences on a 3x3 stencil,
    all fits in one call per step, steps at most one scaled unit); a fit whose Hessian is not
    positive definite or that has not converged after NEWTON_STEPS falls back to Nelder-Mead
    (:func:`_local`) from its start.

    stack : (k, 5, n_bins) sums; starts : (k, 2) or (2,): defocus offset (A), Cs change (mm).
    Returns (k, 2): defocus offset (A) and Cs change (mm) of each.
    """
    scales = parameter_scales(model, k_max_per_A)
    h = NEWTON_STENCIL
    starts = np.broadcast_to(np.asarray(starts, dtype=np.float64), (stack.shape[0], 2))
    x = starts / scales
    done = np.zeros(stack.shape[0], dtype=bool)
    for _ in range(NEWTON_STEPS):
        active = np.flatnonzero(~done)
        if active.size == 0:
            break
        f = _stencil_values(radial, stack[active], model, x[active], scales, h)
        grad = np.stack([f[:, 2, 1] - f[:, 0, 1], f[:, 1, 2] - f[:, 1, 0]], axis=1) / (2 * h)
        hxx = (f[:, 2, 1] - 2 * f[:, 1, 1] + f[:, 0, 1]) / h**2
        hyy = (f[:, 1, 2] - 2 * f[:, 1, 1] + f[:, 1, 0]) / h**2
        hxy = (f[:, 2, 2] - f[:, 2, 0] - f[:, 0, 2] + f[:, 0, 0]) / (4 * h * h)
        det = hxx * hyy - hxy * hxy
        ok = (hxx > 0) & (det > 0)
        safe = np.where(ok, det, 1.0)
        step = -np.stack([hyy * grad[:, 0] - hxy * grad[:, 1],
                          hxx * grad[:, 1] - hxy * grad[:, 0]], axis=1) / safe[:, None]
        step = np.where(ok[:, None], np.clip(step, -1.0, 1.0), 0.0)
        x[active] += step
        converged = ok & (np.abs(step).max(axis=1) < NEWTON_TOLERANCE)
        done[active[converged]] = True
        failed = active[~ok]
        x[failed] = np.nan  # not positive definite: Nelder-Mead below
        done[failed] = True
    out = x * scales
    for i in np.flatnonzero(~np.isfinite(out).all(axis=1) | ~done):
        out[i] = _local(radial, stack[i], model, starts[i], scales)[0]
    return out


def parameter_scales(model: PhaseModel, k_max_per_A: float) -> np.ndarray:
    """Parameter scales (defocus A, Cs mm) that change the phase at k_max by 30 degrees."""
    k2 = k_max_per_A**2
    return np.array([(np.pi / 6) / abs(model.defocus_factor * k2),
                     (np.pi / 6) / abs(model.cs_factor * k2 * k2)])


def jackknife_sigma(estimates: np.ndarray) -> float:
    """Delete-one jackknife standard error from the leave-one-out estimates (n,)."""
    n = estimates.size
    return float(np.sqrt((n - 1) / n * np.sum((estimates - estimates.mean()) ** 2)))
