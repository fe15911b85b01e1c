"""Let the particles decide between candidate optics models of one group.

Where an adapter cannot verify how a field of its format maps onto the core's model (a sign, a
direction), it builds one :class:`csrefine.model.OpticsGroup` per candidate and asks
:func:`score_candidates` which fits the data best. Each candidate is scored by the maximised
log-likelihood of the Cs/defocus fit (:func:`csrefine.fit.fit_phase`) over the same
deterministic subsample of the group's particles, with the same FSC band, references, backend
and options as :func:`csrefine.pipeline.refine`, so that a wrong candidate fits measurably worse
than the right one once its aberration matters. Cs and defocus are re-fitted for every
candidate: a wrong nominal Cs does not bias the choice.

The log-likelihoods share one noise variance per shell (that of the first candidate scored, or
one passed in), so that their differences are log-likelihood ratios of the same noise model.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Sequence

import numpy as np

from .fit import fit_phase
from .fourier import Band, make_band
from .group_fit import pooled
from .halfsets import sample_positions
from .model import OpticsGroup, Particles
from .options import RefineOptions
from .pipeline import accumulate_group, load_backend
from .projection import PaddedReference
from .references import group_band_A, group_references, prepare_references

#: Particles of a group used to score candidates (evenly spaced through the group).
SCORING_PARTICLES = 2000


@dataclass(frozen=True)
class ScoringContext:
    """What scoring shares with the refinement: references at the maps' pixel size, the band
    (low, high resolution in Å, as :func:`csrefine.pipeline.refine` chooses it), the backend
    and the options."""

    references: dict[int, PaddedReference]
    map_pixel_size_A: float
    band_A: tuple[float, float]
    backend: object
    options: RefineOptions


def scoring_context(groups: dict[int, OpticsGroup], half_maps, mask=None,
                    map_pixel_size_A: float | None = None, options: RefineOptions | None = None,
                    mag_matrices: Sequence[np.ndarray] = ()) -> ScoringContext:
    """References, band and backend as :func:`csrefine.pipeline.refine` sets them up.

    mag_matrices : (2, 2) magnification matrices the candidates will use (besides the groups'),
    so that the references hold every frequency any candidate samples.
    """
    options = options or RefineOptions()
    setup = prepare_references(groups, half_maps, mask, map_pixel_size_A, options, mag_matrices)
    backend = load_backend(options.device)
    return ScoringContext(setup.references, setup.map_pixel_size_A, setup.band_A, backend,
                          options)


def subsample_positions(particles: Particles, optics_group: int,
                        max_particles: int = SCORING_PARTICLES) -> np.ndarray:
    """Indices (into ``particles``) of at most ``max_particles`` of the group, evenly spaced
    through it (deterministic)."""
    return sample_positions(np.flatnonzero(particles.optics_group == optics_group), max_particles)


def group_band(group: OpticsGroup, context: ScoringContext) -> Band:
    """The group's band (its high end capped at the group's Nyquist), as in the refinement."""
    low_A, high_g_A = group_band_A(group, context.band_A)
    return make_band(group.box_size, group.pixel_size_A, 1.0 / low_A, 1.0 / high_g_A)


@dataclass(frozen=True)
class CandidateScore:
    """One candidate's fit on the subsample: log_likelihood (shared noise model), the fitted Cs
    change (mm) and defocus offset (Å) from the candidate's nominal values, and the noise
    variance per shell the log-likelihood used (pass it on to score more candidates
    comparably)."""

    log_likelihood: float
    cs_change_mm: float
    defocus_offset_A: float
    noise_variance: np.ndarray


def score_candidates(candidates: Sequence[OpticsGroup], positions: np.ndarray,
                     particles: Particles, images, context: ScoringContext,
                     noise_variance: np.ndarray | None = None) -> list[CandidateScore]:
    """Score each candidate model of one optics group on the particles at ``positions``.

    candidates : the group under each candidate (same group number, box and pixel size; they
    differ in aberrations, magnification or Cs). Returns one :class:`CandidateScore` each, in
    order; log-likelihoods use ``noise_variance`` per shell (from an earlier score), else the
    first candidate's.
    """
    sub = particles.subset(positions)
    n = positions.size
    options = context.options
    scores, noise_var = [], noise_variance
    for group in candidates:
        band = group_band(group, context)
        refs = group_references(context.references, group, context.map_pixel_size_A)
        stats = accumulate_group(group, positions, sub, images, refs, band,
                                 np.zeros(n, dtype=np.int64), 1, context.backend, options).stats
        _, model, radial, k_max, search = pooled(group, stats, band, n, options.cs_search_mm)
        if noise_var is None:
            noise_var = radial.noise_var
        radial = replace(radial, noise_var=noise_var)
        fit = fit_phase(radial, radial.sums.sum(axis=0), model, k_max, search)
        scores.append(CandidateScore(fit.log_likelihood, fit.cs_change_mm, fit.defocus_offset_A,
                                     noise_var))
    return scores

