"""The refinement proper: FSC band, streaming accumulation per optics group, fit, uncertainty.

:func:`refine` takes arrays and records and never touches paths; :mod:`csrefine.run` wraps it
into the one run that every entry point uses (inputs, calibration, reports, outputs).
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from dataclasses import dataclass, replace
from typing import Callable

import numpy as np

from .backends import get_backend
from .ctf import cs_phase_factor, electron_wavelength_A
from .errors import InputError, check_abort
from .fit import (
    FitResult,
    PhaseModel,
    default_search_range,
    fit_many,
    fit_phase,
    jackknife_sigma,
    log_likelihood,
    pool,
    radial_bins,
)
from .forward import pixel_terms
from .fourier import band_limited_box, band_limited_map, make_band
from .fsc import default_mask, fsc_curve, resolution_at_threshold
from .halfsets import (
    INDEPENDENT,
    OTHER_SPLIT,
    SWAPPED,
    HalfMapCheck,
    own_noise_statistics,
    staged_check,
)
from .interpret import pixel_size_if_cs_nominal_A, resolution_impact_A
from .model import PIXEL_TOLERANCE, OpticsGroup, Particles, group_label, nyquist_A
from .options import RefineOptions
from .phase_map import PhaseMap, phase_map
from .projection import PaddedReference, for_particles, make_padded_reference
from .results import GroupResult, Refinement, RefinementInputs
from .screening import ImageScreen, screen_for
from .streaming import BatchStream
from .zernike import isotropic_k4_rad

#: Points of the log-likelihood profile along Cs drawn in the report, over the refined Cs
#: +- PROFILE_CS_HALF_WIDTH_MM (fine enough to show the peak of a well-determined group).
PROFILE_CS_POINTS = 121
PROFILE_CS_HALF_WIDTH_MM = 0.2
#: Defocus points (over +-1/4 of the defocus search) over which that profile is maximised.
PROFILE_DEFOCUS_POINTS = 41
#: A group is fitted only if its band spans at least this factor in resolution: with
#: resolution_high_A > BAND_MIN_RATIO * resolution_low_A the k^4 term cannot be told from
#: defocus (k^2) over the few shells left.
BAND_MIN_RATIO = 0.8
#: Extra radius of the cropped 3D references beyond the highest sampled frequency (1%), so
#: that trilinear interpolation at the band's edge stays inside the stored shell.
REFERENCE_MARGIN = 1.01
#: Progress lines at most this often (seconds) or every this fraction of a group's particles.
PROGRESS_EVERY_S = 5.0
PROGRESS_EVERY_FRACTION = 0.02
#: Radial bins per Fourier shell in which the per-pixel statistics are pooled for the fit.
BINS_PER_SHELL = 8
#: The statistics that change sign with the images (D and E of :mod:`csrefine.accumulate`).
CROSS_ROWS = slice(3, 5)


ProgressFn = Callable[[str], None]


def assign_cells(n: int, subsets: int, cells_per_subset: int, seed: int) -> np.ndarray:
    """Random balanced cell of each particle; cell // cells_per_subset is its subset."""
    n_cells = subsets * cells_per_subset
    rng = np.random.default_rng(seed)
    cells = np.empty(n, dtype=np.int64)
    cells[rng.permutation(n)] = np.arange(n) % n_cells
    return cells


def map_pixel_size(groups: dict[int, OpticsGroup], half_maps,
                   map_pixel_size_A: float | None) -> float:
    """The half maps' pixel size (A), which the optics groups are rescaled to.

    Groups of one pixel size (within 0.5%): that pixel size; the header, if set, must agree.
    Groups of several pixel sizes (data merged across detectors or magnifications, as RELION
    3.1+ allows): the header's, which must be set and match one of the groups within 0.5%
    (guarding against a default or foreign header, which would scale the apparent Cs by the
    fourth power of the error). Box sizes may differ freely.
    """
    if half_maps[1].shape != half_maps[0].shape:
        raise InputError(f"half maps differ in shape: {half_maps[0].shape} vs {half_maps[1].shape}")
    sizes = sorted({g.pixel_size_A for g in groups.values()})
    one_size = sizes[-1] / sizes[0] - 1 <= PIXEL_TOLERANCE
    if one_size:
        px = next(iter(groups.values())).pixel_size_A
        if map_pixel_size_A and abs(px / map_pixel_size_A - 1) > PIXEL_TOLERANCE:
            raise InputError(f"optics groups' pixel size {px:.4f} Å differs from the half maps' "
                             f"{map_pixel_size_A:.4f} Å (header)")
        return float(px)
    listing = ", ".join(f"{g.optics_group}: {g.pixel_size_A:.4f} Å" for g in groups.values())
    if not map_pixel_size_A:
        raise InputError(f"optics groups have different pixel sizes ({listing}) and the half maps' "
                         f"header states none: cannot tell which pixel size the maps have")
    if not any(abs(g.pixel_size_A / map_pixel_size_A - 1) <= PIXEL_TOLERANCE
               for g in groups.values()):
        raise InputError(f"the half maps' pixel size {map_pixel_size_A:.4f} Å (header) matches "
                         f"none of the optics groups ({listing})")
    return float(map_pixel_size_A)


def group_references(references: dict, group: OpticsGroup, map_px_A: float) -> dict:
    """The half-map references as sampled for ``group`` (rescaled if its pixel size differs)."""
    if abs(group.pixel_size_A / map_px_A - 1) <= PIXEL_TOLERANCE:
        return references
    return {h: for_particles(ref, map_px_A, group.pixel_size_A) for h, ref in references.items()}


def _log(progress: ProgressFn | None, text: str):
    if progress is not None:
        progress(text)


@dataclass(frozen=True)
class GroupStatistics:
    """A group's accumulated statistics, (n_cells, 6, m), and how many of its images were
    down-weighted as unusual (:mod:`csrefine.screening`)."""

    stats: np.ndarray
    downweighted: int


def accumulate_group(group: OpticsGroup, positions: np.ndarray, particles: Particles, images,
                     references, band, cells, n_cells, backend, options: RefineOptions,
                     progress=None, should_abort=None, screen: ImageScreen | None = None,
                     inverted: bool = False) -> GroupStatistics:
    """Stream one group's particles (``particles``: theirs, ``positions``: where ``images`` holds
    them) through the backend, each image screened (``screen``, default: the group's own); with
    ``inverted``, as if every image's sign were flipped."""
    stats = np.zeros((n_cells, 6, band.size), dtype=np.float64)
    terms = pixel_terms(group, band)
    screen = screen or screen_for(images, positions)
    done = downweighted = 0
    meter = ProgressMeter(group_label(group.optics_group, group.name), positions.size,
                          progress)
    # The next batch is read from the (memory-mapped) stacks in background threads while this
    # one is computed; the backends release the GIL in their FFTs and kernels.
    stream = BatchStream(images, positions, batch_size_for(backend, options, group.box_size),
                         group.box_size, buffer=backend.host_buffer,
                         readers=reader_threads(backend, options))
    with closing(iter(stream)) as batches:  # readers stopped at once on abort or error
        for idx, imgs in batches:
            if should_abort is not None:
                check_abort(should_abort)
            batch, unusual = screen.weigh(imgs, particles.subset(idx), positions[idx], images)
            _accumulate_one(stats, cells[idx], imgs, batch, references, terms, band, group,
                            backend, options)
            done += idx.size
            downweighted += unusual
            meter.update(done)
    if inverted:
        stats[:, CROSS_ROWS] *= -1.0  # X -> -X flips exactly the two cross sums
    return GroupStatistics(stats, downweighted)


class ProgressMeter:
    """Progress lines as RELION prints them: done/total, percentage, elapsed and estimated time
    left, at most every PROGRESS_EVERY_S seconds or PROGRESS_EVERY_FRACTION of the work (and at
    the end), so that a million particles make about fifty lines, not four thousand. The last
    line gives the time taken instead of the time left."""

    def __init__(self, label: str, total: int, progress: ProgressFn | None):
        self.label, self.total, self.progress = label, max(int(total), 1), progress
        self.t0 = time.monotonic()
        self.last_time, self.last_done = self.t0, 0

    def update(self, done: int) -> None:
        now = time.monotonic()
        due = (now - self.last_time >= PROGRESS_EVERY_S
               or done - self.last_done >= PROGRESS_EVERY_FRACTION * self.total
               or done >= self.total)
        if self.progress is None or not due:
            return
        self.last_time, self.last_done = now, done
        elapsed = now - self.t0
        rate = done / max(elapsed, 1e-9)
        head = f"{self.label}: {done}/{self.total} particles"
        if done >= self.total:
            self.progress(f"{head} in {duration_text(elapsed)}, {rate:.0f} particles/s")
            return
        left = (self.total - done) / max(rate, 1e-9)
        self.progress(f"{head} ({100 * done / self.total:.0f}%), {duration_text(elapsed)} "
                      f"elapsed, about {duration_text(left)} left, {rate:.0f} particles/s")


def duration_text(seconds: float) -> str:
    """A duration as people read it: "0.4 s", "38 s", "2:05 min", "1:02:05 h"."""
    if seconds < 10:
        return f"{seconds:.1f} s"
    whole = int(round(seconds))
    if whole < 60:
        return f"{whole} s"
    if whole < 3600:
        return f"{whole // 60}:{whole % 60:02d} min"
    return f"{whole // 3600}:{whole % 3600 // 60:02d}:{whole % 60:02d} h"


def batch_size_for(backend, options: RefineOptions, box: int) -> int:
    """``options.batch_size``, or the backend's preferred batch for this box."""
    if options.batch_size:
        return int(options.batch_size)
    return int(backend.default_batch_size(box))


def reader_threads(backend, options: RefineOptions) -> int:
    """Threads reading images: the backend's choice given ``--j``."""
    return int(backend.reader_threads(options.threads))


def load_backend(device: str):
    """The backend running ``device`` (a :class:`csrefine.backends.Backend`: numba for cpu,
    CuPy for cuda), warmed up (kernel compiled or loaded from numba's cache, CUDA initialised)."""
    backend = get_backend(device)
    backend.warm_up()
    return backend


def reference_for(half: int, policy: str) -> int:
    """Which half map (1 or 2) predicts a particle of half set ``half``."""
    if policy == "own":
        return half
    if policy == "opposite":
        return 3 - half
    raise InputError(f"reference_half must be 'opposite' or 'own', got {policy!r}")


def _accumulate_one(stats, cells, imgs, batch, references, terms, band, group, backend,
                    options):
    """One batch (both half sets) through the backend's ``accumulate_halves``, each half set
    predicted from the half map :func:`reference_for` names."""
    refs = {half: references[reference_for(half, options.reference_half)] for half in (1, 2)}
    backend.accumulate_halves(stats, cells, imgs, batch, refs, terms, band,
                              group.pixel_size_A, options.threads)


def _curvature_sigma(fit: FitResult) -> tuple[float | None, float | None]:
    try:
        cov = np.linalg.inv(fit.hessian)
    except np.linalg.LinAlgError:
        return None, None
    if cov[0, 0] <= 0 or cov[1, 1] <= 0:
        return None, None
    return float(np.sqrt(cov[1, 1])), float(np.sqrt(cov[0, 0]))


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


def fit_group(group: OpticsGroup, stats: np.ndarray, band, cells_count: int, n_particles: int,
              options: RefineOptions) -> GroupFit:
    """Fit the pooled statistics: all particles, leave-one-cell-out, and each subset."""
    terms = pixel_terms(group, band)
    model = PhaseModel(terms.defocus_factor, terms.cs_factor)
    k_box = np.hypot(band.kx_px, band.ky_px) * band.box
    radial = pool(stats, terms.k2, k_box, band.friedel_weight, n_particles, BINS_PER_SHELL)
    sums = radial.sums  # (n_cells, 5, n_bins)
    total = sums.sum(axis=0)
    k_max_per_A = float(np.sqrt(terms.k2.max()))
    search = default_search_range(model, k_max_per_A, options.cs_search_mm)
    best = fit_phase(radial, total, model, k_max_per_A, search)
    start = (best.defocus_offset_A, best.cs_change_mm)
    loo = fit_many(radial, total[None] - sums[:cells_count], model, k_max_per_A, start)
    per = options.cells_per_subset
    subsets = [fit_phase(radial, sums[s * per:(s + 1) * per].sum(axis=0), model, k_max_per_A, search)
               for s in range(options.subsets)]
    # Log-likelihood along Cs (defocus re-optimised on the grid) for the report's plot.
    cs_axis = best.cs_change_mm + np.linspace(-PROFILE_CS_HALF_WIDTH_MM, PROFILE_CS_HALF_WIDTH_MM,
                                              PROFILE_CS_POINTS)
    df_axis = np.linspace(best.defocus_offset_A - search.defocus_A / 4,
                          best.defocus_offset_A + search.defocus_A / 4, PROFILE_DEFOCUS_POINTS)
    profile = log_likelihood(radial, total, model, df_axis[:, None], cs_axis[None, :]).max(axis=0)
    _, shell = radial_bins(k_box, BINS_PER_SHELL)
    pmap = phase_map(stats.sum(axis=0), band, terms.k2, radial.noise_var,
                     np.unique(shell, return_inverse=True)[1],
                     lambda k2: model.delta(best.defocus_offset_A, best.cs_change_mm, k2))
    return GroupFit(best, loo, subsets, model, cs_axis, profile, radial, pmap)


def zernike_cs_mm(group: OpticsGroup) -> float:
    """The Cs equivalent (mm) of the isotropic k^4 part of the group's even aberrations."""
    k4 = isotropic_k4_rad(group.even_zernike)
    return k4 / cs_phase_factor(electron_wavelength_A(group.voltage_kv)) if k4 else 0.0


def _not_refined(group: OpticsGroup, n: int, reason: str, band_A) -> GroupResult:
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
    that is not finite, zero or above ``options.max_cs_sigma_mm``; a best fit (``cs_mm``, a
    change ``cs_change_mm`` from the input's Cs) at or beyond the edge of the search around the
    nominal Cs; subsets that all give the same value (a degenerate fit, e.g. one image
    dominating every block)."""
    if not np.isfinite(cs_sigma_mm) or cs_sigma_mm > options.max_cs_sigma_mm:
        return (f"too uncertain: jackknife sigma {cs_sigma_mm:.3f} mm exceeds "
                f"{options.max_cs_sigma_mm} mm (too few particles or too low resolution)")
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
    cs_curv, _ = _curvature_sigma(best)
    model = fitted.model
    impact = resolution_impact_A(model.defocus_factor, model.cs_factor, best.defocus_offset_A,
                                 cs_ref - group.cs_mm, 1.0 / nyquist_A(group.pixel_size_A))
    reason = failed_fit(best.cs_change_mm, cs_sigma, [s.cs_change_mm for s in fitted.subsets],
                        cs_ref, group.cs_mm, options)
    refined = reason is None
    reason = reason or "refined"
    result = GroupResult(
        optics_group=group.optics_group, name=group.name, n_particles=n, refined=refined,
        reason=reason, cs_nominal_mm=group.cs_mm,
        cs_refined_mm=cs_ref if refined else cs_input, cs_zernike_mm=cs_zernike,
        cs_sigma_mm=cs_sigma, cs_sigma_curvature_mm=cs_curv,
        cs_change_z=(cs_ref - group.cs_mm) / cs_sigma if cs_sigma > 0 else None,
        cs_subsets_mm=[cs_input + s.cs_change_mm for s in fitted.subsets],
        defocus_offset_A=best.defocus_offset_A if refined else 0.0,
        defocus_offset_sigma_A=df_sigma, pixel_size_A=group.pixel_size_A,
        pixel_size_if_cs_nominal_A=pixel_size_if_cs_nominal_A(group.pixel_size_A, group.cs_mm,
                                                              cs_ref),
        resolution_impact_A=impact, band_A=list(band_A), voltage_kv=group.voltage_kv)
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


def check_half_maps(group: OpticsGroup, positions: np.ndarray, particles: Particles, images,
                    references: dict, band, backend, threads: int = 1,
                    screen: ImageScreen | None = None) -> HalfMapCheck:
    """Measure whether the half maps match the group's half sets and the particles' contrast
    (:mod:`csrefine.halfsets`), on an evenly spread sample of the group's particles (``screen``:
    as :func:`accumulate_group`)."""
    terms = pixel_terms(group, band)
    screen = screen or screen_for(images, positions)

    def statistics(sample):
        imgs = images.read(sample)
        parts, _ = screen.weigh(imgs, particles.subset(sample), sample, images)
        return own_noise_statistics(backend, imgs, parts, references, terms, band,
                                    group.pixel_size_A, threads)

    return staged_check(statistics, positions)


def _apply_half_map_check(check: HalfMapCheck, label: str, references: dict, warnings: list,
                          progress, names: str = "the half maps") -> tuple[dict, str | None]:
    """The references to use after the check, and the reason not to refine (None: refine)."""
    figures = (f"own-noise excess {check.excess:.3f} ± {check.excess_sigma:.3f}, "
               f"{check.z:+.1f} standard errors")
    if check.inverted:
        text = (f"{label}: the particles' contrast is inverted relative to the maps (their "
                f"correlation with the maps' predictions is {-check.contrast_z:.0f} standard "
                f"errors below zero): look at blob/sign (cryoSPARC) or the extraction's "
                f"invert-contrast setting (RELION); the group was refined with every image's "
                f"sign flipped")
        warnings.append(text)
        _log(progress, f"WARNING: {text}")
    text = None
    if check.verdict == SWAPPED:
        references = {1: references[2], 2: references[1]}
        text = (f"{label}: the half maps were given the other way round ({figures}): "
                f"each particle correlates better with the half map of the other half set; "
                f"they were swapped for the refinement")
    elif check.verdict == INDEPENDENT:
        text = (f"{label}: neither half map shows a measurable trace of these "
                f"particles' noise ({figures}): they were not reconstructed from these particles "
                f"(e.g. simulated maps), which biases nothing, or the group is too large for the "
                f"check's sample to resolve their own noise; the half maps are used as given")
    if text:
        warnings.append(text)
        _log(progress, f"WARNING: {text}")
    if check.verdict == OTHER_SPLIT:
        return references, (f"{names} do not match the particles' half sets "
                            f"(rlnRandomSubset / alignments3D/split): they contain these "
                            f"particles' noise in another split ({figures}), e.g. half maps of "
                            f"another refinement; every prediction would be biased toward the "
                            f"nominal Cs. Give the half maps of the refinement these particles "
                            f"come from")
    return references, None


def _binned_phase(radial) -> tuple[np.ndarray, np.ndarray]:
    """Per-bin least-squares phase atan2(s, c) of the pooled statistics and its standard error
    (radians; the amplitude's standard error over the amplitude), for plots."""
    a, b, c, d, e = radial.sums.sum(axis=0)
    det = a * c - b * b
    det = np.where(np.abs(det) > 0, det, 1.0)
    cs, ss = (c * d - b * e) / det, (a * e - b * d) / det
    var_amp = 0.5 * radial.noise_var[radial.shell] * (a + c) / det
    sigma = np.sqrt(np.maximum(var_amp, 0)) / np.maximum(np.hypot(cs, ss), 1e-300)
    return np.arctan2(ss, cs), np.minimum(sigma, np.pi)


@dataclass(frozen=True)
class ReferenceSetup:
    """What every group's fit shares: the half-map FSC, the resolution it reaches, the maps'
    pixel size (Å), the band (low, high resolution in Å) and the padded half-map references."""

    fsc: np.ndarray
    resolution_A: float
    map_pixel_size_A: float
    band_A: tuple[float, float]
    references: dict


def band_limited_reference(half_map: np.ndarray, k_max_px: float, options: RefineOptions,
                           margin: float) -> PaddedReference:
    """The padded reference of a half map for frequencies up to ``k_max_px`` (cycles per map
    pixel), built from the map Fourier cropped to that band (plus a margin of shells): on the
    same padded-grid coordinates as the whole map's, equal on the even points and within ~0.2% rms
    in between for the signal (tests/test_band_limited.py), at a cost and memory set by the band,
    not the box (a box-400 map at 0.85 A fitted to 3.5 A is built at box 216)."""
    box = half_map.shape[0]
    n_crop = band_limited_box(box, k_max_px * margin)
    small = band_limited_map(half_map, n_crop, options.threads)
    ref = make_padded_reference(small, k_max_px * box / n_crop, options.pad, options.threads,
                                margin=margin)
    # coordinate u on the cropped padded grid is frequency u / (pad * n_crop * pixel * box /
    # n_crop): the whole map's padded-grid coordinate; particles scale by pad * box
    return replace(ref, box=box)


def reference_margin(groups: dict[int, OpticsGroup], mag_matrices=()) -> float:
    """The factor on the band's k_max that the references hold: the largest stretch of the
    groups' (and ``mag_matrices``') magnification matrices, at least 1, times REFERENCE_MARGIN."""
    matrices = [g.mag_matrix for g in groups.values()] + list(mag_matrices)
    return max(1.0, max(float(np.linalg.norm(m, 2)) for m in matrices)) * REFERENCE_MARGIN


def _per_half(build, half_maps, options: RefineOptions) -> list:
    """``build(half_map, options)`` for both half maps: in two threads, each with half the FFT
    workers, when there are two threads or more (the builds are numpy and FFT work that releases
    the GIL: about a third faster on two cores; the results are the same bits)."""
    if options.threads < 2:
        return [build(h, options) for h in half_maps]
    each = replace(options, threads=max(1, options.threads // 2))
    with ThreadPoolExecutor(max_workers=2, thread_name_prefix="csrefine-reference") as pool:
        return list(pool.map(lambda h: build(h, each), half_maps))


def prepare_references(groups: dict[int, OpticsGroup], half_maps, mask=None,
                       map_pixel_size_A: float | None = None,
                       options: RefineOptions | None = None,
                       mag_matrices=()) -> ReferenceSetup:
    """The masked half-map FSC, the band and the padded references, as every fit uses them.

    The band's high-resolution end is the user's, else where the FSC drops below the
    threshold, never beyond the maps' Nyquist. mag_matrices : more (2, 2) magnification
    matrices than the groups' that predictions will use (the references then hold every
    frequency any of them samples).
    """
    options = options or RefineOptions()
    px = map_pixel_size(groups, half_maps, map_pixel_size_A)  # the maps'; groups may differ
    box = half_maps[0].shape[0]
    if mask is None:
        mask = default_mask(box)
    elif mask.shape != half_maps[0].shape:
        raise InputError(f"mask shape {mask.shape} differs from the half maps' {half_maps[0].shape}")
    fsc = fsc_curve(half_maps[0], half_maps[1], mask, workers=options.threads)
    resolution = resolution_at_threshold(fsc, box, px, options.fsc_threshold)
    high_A = max(options.resolution_high_A or resolution, nyquist_A(px))
    margin = reference_margin(groups, mag_matrices)
    references = dict(zip((1, 2), _per_half(
        lambda half_map, opts: band_limited_reference(half_map, px / high_A, opts, margin),
        half_maps, options)))
    return ReferenceSetup(fsc, float(resolution), float(px),
                          (float(options.resolution_low_A), float(high_A)), references)


def check_band(low_A: float, high_A: float, resolution_A: float, options: RefineOptions) -> None:
    """InputError when the band to fit is empty: the half maps' FSC stays below the threshold
    down to the band's low-resolution end (maps of other particles, pure noise, a wrong mask)."""
    if high_A < low_A:
        return
    raise InputError(f"the half maps' FSC reaches {options.fsc_threshold} only at "
                     f"{resolution_A:.1f} Å, coarser than the band's low end (resolution_low_A "
                     f"{low_A:g} Å): there is no band to fit. Are the half maps reconstructions "
                     f"of these particles, and is the mask right?")


@dataclass
class GroupContext:
    """What every optics group's refinement shares within one run (see :func:`refine`)."""

    particles: Particles
    images: object
    references: dict
    map_pixel_size_A: float
    band_A: list
    backend: object
    options: RefineOptions
    progress: ProgressFn | None
    should_abort: Callable[[], bool] | None
    half_map_names: tuple[str, str] | None
    timings: dict
    warnings: list

    def not_refined(self, group: OpticsGroup, n: int, reason: str, band_A) -> GroupResult:
        _log(self.progress, f"{group_label(group.optics_group, group.name)}: not refined "
                            f"({reason})")
        return _not_refined(group, n, reason, band_A)


def refine_group(group: OpticsGroup, positions: np.ndarray, ctx: GroupContext) -> GroupResult:
    """Refine one optics group (its particles at ``positions``): screen its images, check the
    half maps and the contrast against a sample, accumulate, fit, and judge the fit."""
    options, gid, n = ctx.options, group.optics_group, positions.size
    low_A, high_A = ctx.band_A
    n_cells = options.subsets * options.cells_per_subset
    if n < max(options.min_particles, n_cells):
        return ctx.not_refined(group, n, f"too few particles ({n} < "
                                          f"{max(options.min_particles, n_cells)})", ctx.band_A)
    high_g_A = max(high_A, nyquist_A(group.pixel_size_A))  # capped at this group's Nyquist
    band_g = [float(low_A), float(high_g_A)]
    if high_g_A > BAND_MIN_RATIO * low_A:
        return ctx.not_refined(group, n, f"resolution too low: the band {low_A:g}-{high_g_A:.1f} "
                                          f"Å is too narrow", band_g)
    band = make_band(group.box_size, group.pixel_size_A, 1.0 / low_A, 1.0 / high_g_A)
    refs = group_references(ctx.references, group, ctx.map_pixel_size_A)
    t0 = time.monotonic()
    screen = screen_for(ctx.images, positions)
    check = check_half_maps(group, positions, ctx.particles, ctx.images, refs, band, ctx.backend,
                            options.threads, screen)
    ctx.timings[f"half_map_check_group{gid}"] = time.monotonic() - t0
    names = (f"the half maps {ctx.half_map_names[0]} and {ctx.half_map_names[1]}"
             if ctx.half_map_names else "the half maps")
    label = group_label(gid, group.name)
    refs, problem = _apply_half_map_check(check, label, refs, ctx.warnings, ctx.progress, names)
    if problem:
        result = ctx.not_refined(group, n, problem, band_g)
        result.half_maps = check.as_dict()
        return result
    cells = assign_cells(n, options.subsets, options.cells_per_subset, options.seed + gid)
    t0 = time.monotonic()
    accumulated = accumulate_group(group, positions, ctx.particles.subset(positions), ctx.images,
                                   refs, band, cells, n_cells, ctx.backend, options, ctx.progress,
                                   ctx.should_abort, screen, check.inverted)
    ctx.timings[f"accumulate_group{gid}"] = time.monotonic() - t0
    t0 = time.monotonic()
    fitted = fit_group(group, accumulated.stats, band, n_cells, n, options)
    ctx.timings[f"fit_group{gid}"] = time.monotonic() - t0
    result = summarise_group(group, n, fitted, band_g, options)
    result.half_maps = check.as_dict()
    result.contrast = check.contrast
    result.images_downweighted = accumulated.downweighted
    if not result.refined:
        _log(ctx.progress, f"{label}: not refined ({result.reason})")
    return result


def refine(groups: dict[int, OpticsGroup], particles: Particles, images, half_maps,
           mask: np.ndarray | None = None, map_pixel_size_A: float | None = None,
           options: RefineOptions | None = None, progress: ProgressFn | None = None,
           should_abort: Callable[[], bool] | None = None, *,
           half_map_names: tuple[str, str] | None = None) -> Refinement:
    """Refine Cs (and a defocus offset) per optics group.

    Parameters
    ----------
    groups : optics groups by RELION number; particles : all particles (file order);
    images : object with ``read(positions, out=None) -> (k, box, box) float32`` in particle
        order (box: the particles' optics group's; groups may differ in box and pixel size, the
        references are rescaled as in RELION);
    half_maps : (half1, half2) real-space maps (box^3, [z, y, x]);
    mask : optional real-space mask for the FSC (:func:`csrefine.fsc.default_mask` if None).
    map_pixel_size_A : the half maps' pixel size if known (checked against the optics groups).
    progress : called with plain-text progress lines; should_abort : polled between batches.
    half_map_names : how to name the half maps in messages (e.g. their files).
    """
    options = options or RefineOptions()
    timings = {}
    t_start = time.monotonic()
    particles.check_finite()
    map_pixel_size(groups, half_maps, map_pixel_size_A)  # validate before starting the backend
    backend = load_backend(options.device)
    _log(progress, "set-up: half-map FSC and padded references")
    setup = prepare_references(groups, half_maps, mask, map_pixel_size_A, options)
    fsc, resolution, px, references = (setup.fsc, setup.resolution_A, setup.map_pixel_size_A,
                                       setup.references)
    low_A, high_A = setup.band_A
    band_A = [float(low_A), float(high_A)]
    check_band(low_A, high_A, resolution, options)
    reach = (f"stays above {options.fsc_threshold} up to Nyquist ({resolution:.2f} Å)"
             if np.isclose(resolution, nyquist_A(px), rtol=1e-6)
             else f"reaches {options.fsc_threshold} at {resolution:.2f} Å")
    _log(progress, f"half-map FSC {reach}; fitting {low_A:.1f}-{high_A:.2f} Å")
    warnings = []
    if options.resolution_high_A and options.resolution_high_A < high_A:
        warnings.append(f"resolution_high_A {options.resolution_high_A:g} Å is beyond the half "
                        f"maps' Nyquist resolution ({high_A:.2f} Å): the band ends there")
        _log(progress, f"WARNING: {warnings[-1]}")
    timings["setup"] = time.monotonic() - t_start
    results = []
    context = GroupContext(particles, images, references, px, band_A, backend, options, progress,
                           should_abort, half_map_names, timings, warnings)
    for gid in sorted(groups):
        positions = np.flatnonzero(particles.optics_group == gid)
        if positions.size:
            results.append(refine_group(groups[gid], positions, context))
    timings["refine"] = time.monotonic() - t_start
    return Refinement(results, fsc, float(resolution), band_A, backend.name, timings, float(px),
                      warnings)


def refine_inputs(inputs: RefinementInputs, options: RefineOptions, progress: ProgressFn | None,
                  should_abort: Callable[[], bool] | None = None) -> Refinement:
    """:func:`refine` on a run's inputs (its half maps named as the inputs name them)."""
    names = inputs.sources.get("half_maps")
    return refine(inputs.groups, inputs.particles, inputs.images, inputs.half_maps, inputs.mask,
                  inputs.map_pixel_size_A, options, progress, should_abort,
                  half_map_names=tuple(names) if names and len(names) == 2 else None)
