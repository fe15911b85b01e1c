"""The refinement proper: FSC band, streaming accumulation per optics group, fit, uncertainty.

:func:`refine` takes arrays and records and never touches paths; :mod:`csrefine.run` wraps it
into the one run that every entry point uses (inputs, calibration, reports, outputs).
"""

from __future__ import annotations

import time
from contextlib import closing
from dataclasses import dataclass
from typing import Callable

import numpy as np

from .backends import get_backend
from .errors import check_abort
from .forward import pixel_terms
from .fourier import make_band
from .fsc import reach_text
from .group_fit import CELLS_PER_SUBSET, fit_group, not_refined_result, summarise_group
from .halfsets import (
    INDEPENDENT,
    OTHER_SPLIT,
    SWAPPED,
    HalfMapCheck,
    own_noise_statistics,
    staged_check,
)
from .model import OpticsGroup, Particles, group_label
from .options import RefineOptions
from .references import check_band, group_band_A, group_references, map_pixel_size, prepare_references
from .results import GroupResult, Refinement, RefinementInputs
from .screening import ImageScreen, image_moments, screen_for
from .streaming import BatchStream

#: A group is fitted only if its band spans at least this factor in resolution: with
#: resolution_high_A > BAND_MIN_RATIO * resolution_low_A the k^4 term cannot be told from
#: defocus (k^2) over the few shells left.
BAND_MIN_RATIO = 0.8
#: Progress lines at most this often (seconds) or every this fraction of a group's particles.
PROGRESS_EVERY_S = 5.0
PROGRESS_EVERY_FRACTION = 0.02
#: The statistics that change sign with the images (D and E of :mod:`csrefine.accumulate`).
CROSS_ROWS = slice(3, 5)


ProgressFn = Callable[[str], None]
AbortFn = Callable[[], bool]


def assign_cells(n: int, subsets: int, cells_per_subset: int, seed: int) -> np.ndarray:
    """Random balanced cell of each particle; cell // cells_per_subset is its subset."""
    n_cells = subsets * cells_per_subset
    rng = np.random.default_rng(seed)
    cells = np.empty(n, dtype=np.int64)
    cells[rng.permutation(n)] = np.arange(n) % n_cells
    return cells


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
    screen = screen or screen_for(images, positions, options.threads)
    done = downweighted = 0
    meter = ProgressMeter(group_label(group.optics_group, group.name), positions.size, progress)
    # The next batch is read from the (memory-mapped) stacks, and its images measured for the
    # screen (image_moments, one thread each), in background threads while this one is computed;
    # the backends release the GIL in their FFTs and kernels.
    stream = BatchStream(images, positions,
                         options.batch_size or backend.default_batch_size(group.box_size),
                         group.box_size, buffer=backend.host_buffer,
                         readers=backend.reader_threads(options.threads),
                         measure=lambda imgs: image_moments(imgs, 1))
    # each half set predicted from the half map reference_for names
    refs = {half: references[reference_for(half, options.reference_half)] for half in (1, 2)}
    with closing(iter(stream)) as batches:  # readers stopped at once on abort or error
        for idx, imgs, moments in batches:
            if should_abort is not None:
                check_abort(should_abort)
            batch, unusual = screen.weigh(imgs, particles.subset(idx), positions[idx], images,
                                          moments=moments)
            backend.accumulate_halves(stats, cells[idx], imgs, batch, refs, terms, band,
                                      group.pixel_size_A, options.threads)
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


def load_backend(device: str):
    """The backend running ``device`` (a :class:`csrefine.backends.Backend`: the C kernel for
    cpu, CuPy for cuda), warmed up (CUDA initialised, its kernel compiled)."""
    backend = get_backend(device)
    backend.warm_up()
    return backend


def reference_for(half: int, policy: str) -> int:
    """Which half map (1 or 2) predicts a particle of half set ``half`` under ``policy``
    ("own" or "opposite", :meth:`RefineOptions.validate` refuses any other)."""
    return half if policy == "own" else 3 - half


def check_half_maps(group: OpticsGroup, positions: np.ndarray, particles: Particles, images,
                    references: dict, band, backend, threads: int,
                    screen: ImageScreen) -> HalfMapCheck:
    """Measure whether the half maps match the group's half sets and the particles' contrast
    (:mod:`csrefine.halfsets`), on an evenly spread sample of the group's particles, each image
    screened by ``screen``."""
    terms = pixel_terms(group, band)

    def statistics(sample):
        imgs = images.read(sample)
        parts, _ = screen.weigh(imgs, particles.subset(sample), sample, images, threads)
        return own_noise_statistics(backend, imgs, parts, references, terms, band,
                                    group.pixel_size_A, threads)

    return staged_check(statistics, positions)


def _apply_half_map_check(check: HalfMapCheck, label: str, references: dict, warnings: list,
                          progress, names: str) -> tuple[dict, str | None]:
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
        progress(f"WARNING: {text}")
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
        progress(f"WARNING: {text}")
    if check.verdict == OTHER_SPLIT:
        return references, (f"{names} do not match the particles' half sets "
                            f"(rlnRandomSubset / alignments3D/split): they contain these "
                            f"particles' noise in another split ({figures}), e.g. half maps of "
                            f"another refinement; every prediction would be biased toward the "
                            f"nominal Cs. Give the half maps of the refinement these particles "
                            f"come from")
    return references, None


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
    progress: ProgressFn
    should_abort: AbortFn | None
    half_map_names: tuple[str, str] | None
    timings: dict
    warnings: list

    def not_refined(self, group: OpticsGroup, n: int, reason: str, band_A) -> GroupResult:
        self.progress(f"{group_label(group.optics_group, group.name)}: not refined ({reason})")
        return not_refined_result(group, n, reason, band_A)


def refine_group(group: OpticsGroup, positions: np.ndarray, ctx: GroupContext) -> GroupResult:
    """Refine one optics group (its particles at ``positions``): screen its images, check the
    half maps and the contrast against a sample, accumulate, fit, and judge the fit."""
    options, gid, n = ctx.options, group.optics_group, positions.size
    n_cells = options.subsets * CELLS_PER_SUBSET
    if n < max(options.min_particles, n_cells):
        return ctx.not_refined(group, n, f"too few particles ({n} < "
                                          f"{max(options.min_particles, n_cells)})", ctx.band_A)
    band_g = group_band_A(group, ctx.band_A)
    low_A, high_g_A = band_g
    if high_g_A > BAND_MIN_RATIO * low_A:
        return ctx.not_refined(group, n, f"resolution too low: the band {low_A:g}-{high_g_A:.1f} "
                                          f"Å is too narrow", band_g)
    band = make_band(group.box_size, group.pixel_size_A, 1.0 / low_A, 1.0 / high_g_A)
    refs = group_references(ctx.references, group, ctx.map_pixel_size_A)
    t0 = time.monotonic()
    screen = screen_for(ctx.images, positions, options.threads)
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
    cells = assign_cells(n, options.subsets, CELLS_PER_SUBSET, options.seed + gid)
    t0 = time.monotonic()
    accumulated = accumulate_group(group, positions, ctx.particles.subset(positions), ctx.images,
                                   refs, band, cells, n_cells, ctx.backend, options, ctx.progress,
                                   ctx.should_abort, screen, check.inverted)
    ctx.timings[f"accumulate_group{gid}"] = time.monotonic() - t0
    t0 = time.monotonic()
    fitted = fit_group(group, accumulated.stats, band, n, options)
    ctx.timings[f"fit_group{gid}"] = time.monotonic() - t0
    result = summarise_group(group, n, fitted, band_g, options)
    result.half_maps = check.as_dict()
    result.contrast = check.contrast
    result.images_downweighted = accumulated.downweighted
    if not result.refined:
        ctx.progress(f"{label}: not refined ({result.reason})")
    return result


def refine(groups: dict[int, OpticsGroup], particles: Particles, images, half_maps,
           mask: np.ndarray | None = None, map_pixel_size_A: float | None = None,
           options: RefineOptions | None = None, progress: ProgressFn | None = None,
           should_abort: AbortFn | None = None, *,
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
    progress = progress or (lambda text: None)
    timings = {}
    t_start = time.monotonic()
    particles.check_finite()
    map_pixel_size(groups, half_maps, map_pixel_size_A)  # validate before starting the backend
    backend = load_backend(options.device)
    progress("set-up: half-map FSC and padded references")
    setup = prepare_references(groups, half_maps, mask, map_pixel_size_A, options)
    fsc, resolution, px, references = (setup.fsc, setup.resolution_A, setup.map_pixel_size_A,
                                       setup.references)
    low_A, high_A = setup.band_A
    band_A = [float(low_A), float(high_A)]
    check_band(low_A, high_A, resolution)
    progress(f"half-map FSC {reach_text(resolution, px)}; fitting {low_A:.1f}-{high_A:.2f} Å")
    warnings = []
    if options.resolution_high_A and options.resolution_high_A < high_A:
        warnings.append(f"resolution_high_A {options.resolution_high_A:g} Å is beyond the half "
                        f"maps' Nyquist resolution ({high_A:.2f} Å): the band ends there")
        progress(f"WARNING: {warnings[-1]}")
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
                  should_abort: AbortFn | None = None) -> Refinement:
    """:func:`refine` on a run's inputs (its half maps named as the inputs name them)."""
    names = inputs.sources.get("half_maps")
    return refine(inputs.groups, inputs.particles, inputs.images, inputs.half_maps, inputs.mask,
                  inputs.map_pixel_size_A, options, progress, should_abort,
                  half_map_names=tuple(names) if names and len(names) == 2 else None)
