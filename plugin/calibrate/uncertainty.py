"""The calibrated pixel size's uncertainty: the score's curvature, the two half maps, a floor.

* ``sigma_halves``: |p_half1 - p_half2| / 2, the standard error of the mean of two independent
  estimates (noise only).
* ``sigma_curvature``: sandwich estimate sigma_p = sd(score') / |score''| at the optimum, with
  ``score''`` from finite differences and ``sd(score')`` from the per-coefficient noise variance,
  measured from the half-map difference (h1 - h2)/2, and the derivative of the whitened model map
  with respect to p (masking correction: the noise variance is divided by the mask's mean square,
  because the derivative template lies inside the mask).
* ``pixel_size_sigma_A`` = sqrt(sigma_curvature^2 + sigma_halves^2 + (systematic_rel p)^2), with
  a systematic floor ``systematic_rel`` = 0.01% (the bias measured on relion_project simulations,
  benchmarks/bench_calibration.py, was +0.005% and +0.009% on one simulation at box 128, +0.010%
  and +0.013% on another (whole box: +0.009%, +0.013%), +0.0004% and -0.0003% at box 192 and 256).

None of these includes errors of the model itself (a model whose geometry is off by x% biases the
ruler by x%).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .search import Matcher
from .target import Target

#: Step of the finite differences of the curvature, relative to the pixel size.
CURVATURE_STEP_REL = 0.004
#: The half maps are refined within this many scan steps of the average's optimum.
HALF_MAP_STEPS = 3


def curvature_sigma(matcher: Matcher, target: Target, p: float, t: np.ndarray) -> float:
    """Sandwich sigma of p (Å, of the cropped grid): sd(score') / |score''| at pixel ``p`` and
    translation ``t`` (voxels, z/y/x); inf where the score is not curved down."""
    h = CURVATURE_STEP_REL * p
    f0 = matcher.score_at(target, p, t)
    fp = matcher.score_at(target, p + h, t)
    fm = matcher.score_at(target, p - h, t)
    d2 = (fp + fm - 2 * f0) / h**2
    if not np.isfinite(d2) or d2 >= 0:
        return float("inf")
    band = target.band
    mdiff = (matcher.whitened(p + h) - matcher.whitened(p - h)) / (2 * h)
    mdiff = mdiff * np.exp(-2j * np.pi * sum(k * tt for k, tt in zip(band.kmat, t)))
    # Var(Re(m' n*)) = |m'|^2 var(n) / 2 per complex coefficient; a Friedel pair counts twice.
    var = np.sum((band.fw * target.w_b) ** 2 * np.abs(mdiff) ** 2
                 * target.noise_var_b / 2.0) / target.norm**2
    return float(np.sqrt(var) / abs(d2))


@dataclass(frozen=True)
class Uncertainty:
    """The pixel size's sigma and its parts, Angstrom (at the map's pixel).

    curvature : sandwich sigma; halves : |p1 - p2| / 2; sigma : these two and the systematic
    floor in quadrature; half_pixels : (p_half1, p_half2); half_sigmas : each half map's own
    sigma, its curvature sigma and the systematic floor in quadrature (their agreement is judged
    on these, see :func:`csrefine.calibrate.verdict.group_verdict`).
    """

    curvature: float
    halves: float
    sigma: float
    half_pixels: tuple[float, float]
    half_sigmas: tuple[float, float]


def uncertainty(matcher: Matcher, halves, p_best: float, sigma_curvature: float,
                scan_step: float, systematic_rel: float, voxel: float) -> Uncertainty:
    """The :class:`Uncertainty` of ``p_best`` (Å, of the cropped grid; see the module docstring),
    each half map refined within :data:`HALF_MAP_STEPS` scan steps of it; its lengths divided by
    ``voxel`` (the cropped grid's voxel in map voxels)."""
    pixels, curvatures = [], []
    for tg in halves:
        width = HALF_MAP_STEPS * scan_step * matcher.p_nom
        ph, _, th, _ = matcher.refine(tg, p_best - width, p_best + width)
        pixels.append(ph)
        curvatures.append(curvature_sigma(matcher, tg, ph, th))
    sig_halves = abs(pixels[0] - pixels[1]) / 2.0
    sigma = float(np.sqrt(sigma_curvature**2 + sig_halves**2 + (systematic_rel * p_best) ** 2))
    # the floor holds for any one calibration: below it, two halves' difference means nothing
    half_sigmas = [float(np.hypot(c, systematic_rel * p)) for c, p in zip(curvatures, pixels)]
    return Uncertainty(sigma_curvature / voxel, sig_halves / voxel, sigma / voxel,
                       tuple(h / voxel for h in pixels), tuple(s / voxel for s in half_sigmas))
