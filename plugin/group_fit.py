"""One optics group's fit from its accumulated statistics: the best Cs and defocus offset, the
jackknife and the subsets, the likelihood profile and the phase map, and the group's result
(refined, or why not)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .accumulate import amplitude_variance, least_squares_phase
from .ctf import cs_phase_factor, electron_wavelength_A
from .fit import (
    FitResult,
    PhaseModel,
    default_search_range,
    fit_many,
    fit_phase,
    jackknife_sigma,
    log_likelihood,
    pool,
)
from .forward import pixel_terms
from .interpret import interpretation_fields
from .model import OpticsGroup
from .options import RefineOptions
from .phase_map import PhaseMap, phase_map
from .results import GroupResult
from .zernike import isotropic_k4_rad

#: Points of the log-likelihood profile along Cs drawn in the report, over the refined Cs
#: +- PROFILE_CS_HALF_WIDTH_MM (fine enough to show the peak of a well-determined group).
PROFILE_CS_POINTS = 121
PROFILE_CS_HALF_WIDTH_MM = 0.2
#: Defocus points (over +-1/4 of the defocus search) over which that profile is maximised.
PROFILE_DEFOCUS_POINTS = 41
#: Radial bins per Fourier shell in which the per-pixel statistics are pooled for the fit.
BINS_PER_SHELL = 8
#: Jackknife blocks per random subset: the jackknife uses subsets * CELLS_PER_SUBSET blocks (39
#: by default), so that the sigma itself is known to about 11% (12 blocks: about 21%).
CELLS_PER_SUBSET = 13
#: Groups whose jackknife sigma (mm) exceeds this keep their nominal Cs.
MAX_CS_SIGMA_MM = 0.5


def _curvature_sigma_cs_mm(fit: FitResult) -> float | None:
    """Cs sigma (mm) from the inverse Hessian (None where it is singular or not positive)."""
    try:
        cov = np.linalg.inv(fit.hessian)
    except np.linalg.LinAlgError:
        return None
    return None if cov[0, 0] <= 0 or cov[1, 1] <= 0 else float(np.sqrt(cov[1, 1]))


@dataclass(frozen=True)
class GroupFit:
    """Fits of one group's statistics.

    best : all particles; leave_one_out : (cells, 2) [defocus offset A, Cs change mm] with
    each jackknife cell left out; subsets : one fit per random subset; model : the phase model
    fitted (defocus and Cs factors); profile_cs_change_mm / profile_log_likelihood : the
    likelihood along the Cs change (mm, relative to the input's Cs), defocus re-optimised;
    radial : the pooled statistics; phase_map : the measured, fitted and residual phase change
    in 2D (:mod:`csrefine.phase_map`).
    """

    best: FitResult
    leave_one_out: np.ndarray
    subsets: list
    model: PhaseModel
    profile_cs_change_mm: np.ndarray
    profile_log_likelihood: np.ndarray
    radial: object
    phase_map: PhaseMap | None = None


def pooled(group: OpticsGroup, stats: np.ndarray, band, n_particles: int, cs_search_mm: float):
    """What every fit of a group's statistics ((..., 6, m) on ``band``) starts from: the pixel
    terms, the phase model, the statistics pooled into radial bins, the band's largest |k|
    (1/Å) and the grid search's range."""
    terms = pixel_terms(group, band)
    model = PhaseModel(terms.defocus_factor, terms.cs_factor)
    k_box = np.hypot(band.kx_px, band.ky_px) * band.box
    radial = pool(stats, terms.k2, k_box, band.friedel_weight, n_particles, BINS_PER_SHELL)
    k_max_per_A = float(np.sqrt(terms.k2.max()))
    return terms, model, radial, k_max_per_A, default_search_range(model, k_max_per_A,
                                                                   cs_search_mm)


def fit_group(group: OpticsGroup, stats: np.ndarray, band, n_particles: int,
              options: RefineOptions) -> GroupFit:
    """Fit the pooled statistics ((cells, 6, m), CELLS_PER_SUBSET cells per subset): all
    particles, leave-one-cell-out, and each subset."""
    terms, model, radial, k_max_per_A, search = pooled(group, stats, band, n_particles,
                                                       options.cs_search_mm)
    sums = radial.sums  # (n_cells, 5, n_bins)
    total = sums.sum(axis=0)
    best = fit_phase(radial, total, model, k_max_per_A, search)
    start = (best.defocus_offset_A, best.cs_change_mm)
    loo = fit_many(radial, total[None] - sums, model, k_max_per_A, start)
    per = CELLS_PER_SUBSET
    subsets = [fit_phase(radial, sums[s * per:(s + 1) * per].sum(axis=0), model, k_max_per_A, search)
               for s in range(options.subsets)]
    # Log-likelihood along Cs (defocus re-optimised on the grid) for the report's plot.
    cs_axis = best.cs_change_mm + np.linspace(-PROFILE_CS_HALF_WIDTH_MM, PROFILE_CS_HALF_WIDTH_MM,
                                              PROFILE_CS_POINTS)
    df_axis = np.linspace(best.defocus_offset_A - search.defocus_A / 4,
                          best.defocus_offset_A + search.defocus_A / 4, PROFILE_DEFOCUS_POINTS)
    profile = log_likelihood(radial, total, model, df_axis[:, None], cs_axis[None, :]).max(axis=0)
    pmap = phase_map(stats.sum(axis=0), band, terms.k2, radial.noise_var[radial.pixel_shell],
                     lambda k2: model.delta(best.defocus_offset_A, best.cs_change_mm, k2))
    return GroupFit(best, loo, subsets, model, cs_axis, profile, radial, pmap)


def zernike_cs_mm(group: OpticsGroup) -> float:
    """The Cs equivalent (mm) of the isotropic k^4 part of the group's even aberrations."""
    k4 = isotropic_k4_rad(group.even_zernike)
    return k4 / cs_phase_factor(electron_wavelength_A(group.voltage_kv)) if k4 else 0.0


def not_refined_result(group: OpticsGroup, n: int, reason: str, band_A) -> GroupResult:
    cs_zernike = zernike_cs_mm(group)
    return GroupResult(
        optics_group=group.optics_group, name=group.name, n_particles=n, refined=False,
        reason=reason, cs_nominal_mm=group.cs_mm, cs_refined_mm=group.cs_mm + cs_zernike,
        cs_zernike_mm=cs_zernike, cs_sigma_mm=None,
        cs_sigma_curvature_mm=None, cs_subsets_mm=[], defocus_offset_A=0.0,
        defocus_offset_sigma_A=None, pixel_size_A=group.pixel_size_A,
        pixel_size_if_cs_nominal_A=None, resolution_impact_A=None, band_A=list(band_A),
        voltage_kv=group.voltage_kv)


#: A Cs change within this fraction of the search's half-width from its edge is at the edge.
AT_SEARCH_EDGE = 0.995


def failed_fit(cs_change_mm: float, cs_sigma_mm: float, subset_changes_mm: list, cs_mm: float,
               cs_nominal_mm: float, options: RefineOptions) -> str | None:
    """Why a group's fit cannot be reported as a refined Cs (None: it can): a standard error
    that is not finite, zero or above :data:`MAX_CS_SIGMA_MM`; a best fit (``cs_mm``, a
    change ``cs_change_mm`` from the input's Cs) at or beyond the edge of the search around the
    nominal Cs; subsets that all give the same value (a degenerate fit, e.g. one image
    dominating every block)."""
    if not np.isfinite(cs_sigma_mm) or cs_sigma_mm > MAX_CS_SIGMA_MM:
        return (f"too uncertain: jackknife sigma {cs_sigma_mm:.3f} mm exceeds "
                f"{MAX_CS_SIGMA_MM} mm (too few particles or too low resolution)")
    search = options.cs_search_mm
    if abs(cs_change_mm) > search:
        typo = (" The nominal Cs is negative: is its sign a typo (rlnSphericalAberration, "
                "ctf/cs_mm)?" if cs_nominal_mm < 0 else "")
        return (f"the best fit, Cs {cs_mm:.3f} mm, lies {abs(cs_change_mm):.2f} mm from the "
                f"nominal {cs_nominal_mm:.3f} mm, outside the ±{search:g} mm search: the nominal "
                f"Cs is far off or the data are dominated by something else.{typo}")
    if abs(cs_change_mm) >= AT_SEARCH_EDGE * search:
        return (f"the likelihood is largest at the edge of the ±{search:g} mm search (Cs "
                f"{cs_mm:.3f} mm): the data do not determine Cs within it (widen cs_search_mm "
                f"only if the nominal Cs may be that far off)")
    if cs_sigma_mm <= 0 or np.ptp(subset_changes_mm) == 0:
        return ("the fit is degenerate: every block of particles gives the same Cs (standard "
                "error 0), as when a few images dominate the statistics")
    return None


def summarise_group(group: OpticsGroup, n: int, fitted: GroupFit, band_A,
                    options: RefineOptions) -> GroupResult:
    """The group's result from its fits: Cs +- jackknife sigma, subsets, interpretation."""
    best, loo = fitted.best, fitted.leave_one_out
    cs_zernike = zernike_cs_mm(group)
    cs_input = group.cs_mm + cs_zernike  # the effective Cs of the input optics
    cs_ref = cs_input + best.cs_change_mm
    cs_sigma = jackknife_sigma(loo[:, 1])
    df_sigma = jackknife_sigma(loo[:, 0])
    cs_curv = _curvature_sigma_cs_mm(best)
    model = fitted.model
    reason = failed_fit(best.cs_change_mm, cs_sigma, [s.cs_change_mm for s in fitted.subsets],
                        cs_ref, group.cs_mm, options)
    refined = reason is None
    reason = reason or "refined"
    result = GroupResult(
        optics_group=group.optics_group, name=group.name, n_particles=n, refined=refined,
        reason=reason, cs_nominal_mm=group.cs_mm,
        cs_refined_mm=cs_ref if refined else cs_input, cs_zernike_mm=cs_zernike,
        cs_sigma_mm=cs_sigma, cs_sigma_curvature_mm=cs_curv,
        cs_subsets_mm=[cs_input + s.cs_change_mm for s in fitted.subsets],
        defocus_offset_A=best.defocus_offset_A if refined else 0.0,
        defocus_offset_sigma_A=df_sigma, pixel_size_A=group.pixel_size_A,
        band_A=list(band_A), voltage_kv=group.voltage_kv,
        **interpretation_fields(model, group.pixel_size_A, group.cs_mm, cs_ref, cs_sigma,
                                best.defocus_offset_A))
    radial = fitted.radial
    delta, delta_sigma = _binned_phase(radial)
    profile = fitted.profile_log_likelihood
    result.curves = {"cs_axis_mm": (cs_input + fitted.profile_cs_change_mm).tolist(),
                     "log_likelihood": (profile - profile.max()).tolist(),
                     "cs_fitted_mm": cs_ref, "k2": radial.k2.tolist(),
                     "fit_delta_rad": model.delta(best.defocus_offset_A, best.cs_change_mm,
                                                  radial.k2).tolist(),
                     "measured_delta_rad": delta.tolist(),
                     "measured_delta_sigma_rad": delta_sigma.tolist()}
    if fitted.phase_map is not None:
        pm = fitted.phase_map
        result.anisotropy = pm.summary()
        result.curves["phase_map"] = {
            "k_axis_per_A": pm.k_axis_per_A.tolist(),
            **{name: np.round(getattr(pm, name), 2).tolist()
               for name in ("measured_deg", "fitted_deg", "residual_deg")}}
    return result


def _binned_phase(radial) -> tuple[np.ndarray, np.ndarray]:
    """Per-bin least-squares phase atan2(s, c) of the pooled statistics and its standard error
    (radians; the amplitude's standard error over the amplitude), for plots."""
    a, b, c, d, e = radial.sums.sum(axis=0)
    cs, ss, det, _ = least_squares_phase(a, b, c, d, e)
    var_amp = amplitude_variance(radial.noise_var[radial.shell], a, c, det)
    sigma = np.sqrt(np.maximum(var_amp, 0)) / np.maximum(np.hypot(cs, ss), 1e-300)
    return np.arctan2(ss, cs), np.minimum(sigma, np.pi)
