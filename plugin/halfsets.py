"""Do the half maps match the particles' half sets? Measured from the data.

A half map reconstructed from a half set contains the noise of every particle of that set, so a
particle correlates better with its own half map than with the other one. Per particle i of half
set h (rlnRandomSubset), with X its image transform and P_1, P_2 the CTF-modulated predictions
from the two half maps over the fitted band (Friedel weights w):

    d_i = sum_p w_p Re(X_p conj(P_own,p - P_other,p)),   own = h, other = 3 - h

Under the null hypothesis that neither map contains the particle's noise, a = CTF (P_1 - P_2)
is the projection of the two maps' independent noise, and d_i has mean zero. Its null spread is
measured, not assumed: the same statistic with each particle's image paired with the pose
(orientation and origin) of another particle of the sample, d0_i, keeps the image, its CTF and
the structure of the map noise, but cannot contain the particle's own noise. (An analytic
variance, sum |X|^2 |a|^2 / 2, ignores that neighbouring Fourier pixels of a particle's image
and of the interpolated map noise are correlated; with strong signal it came out ~10% low.)
Two statistics follow, over a sample of the group's particles:

* z = mean(d) / (std(d) / sqrt(n)), the t statistic of the d_i: the direction. z >> 0: the maps
  are as given; z << 0: they were given the other way round (each particle correlates better
  with the map labelled *other*). Its standard error is the d_i's own scatter, so a split the
  maps do not follow (each particle's noise in either map at random) gives z ~ N(0, 1);
* excess = mean(d^2) / mean(d0^2) - 1: the size of the own-noise term, whatever the
  assignment. Half maps from another refinement (another random split) contain each particle's
  noise in one map or the other at random: z ~ 0 but the excess stays; maps that contain none of
  these particles' noise (simulated, or from other particles) have z ~ 0 and excess ~ 0, and
  bias nothing.

Predicting a particle from a half map that contains its own noise biases the fitted Cs toward
the nominal one (the reconstruction's CTF): with z ~ 0 and a clear excess, the group cannot be
refined without bias.

The same sample measures the particles' contrast against the maps: c_i = sum_p w_p Re(X_p
conj(P_1,p + P_2,p)) is the correlation of the image with its prediction from both maps, positive
on average when images and maps have the same contrast. Its t statistic far below zero means the
particles' contrast is inverted relative to the maps (a cryoSPARC ``blob/sign`` that does not match
the images, say, or RELION's extraction with the other "invert contrast"); flipping every image's
sign then flips every d_i too, so the verdict on the half maps is taken on the flipped statistics
and never mistakes inverted contrast for swapped maps.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

import numpy as np

from .accumulate import N_STATS

#: |z| beyond which the assignment (as given / swapped) is taken as established; also the
#: contrast's t statistic below which the contrast is taken as inverted.
Z_DECIDED = 5.0
#: Excess beyond which (in standard errors) the maps are taken to contain these particles' noise.
EXCESS_DECIDED = 5.0
#: Particles per group used for the check (evenly spread over the group): 1% of the group,
#: at least SAMPLE_MIN and at most SAMPLE_MAX. The own-noise term shrinks as 1/N with the
#: particles N per half map, so a larger group needs a larger sample to see it (measured: z ~ 120
#: and excess ~ 34 +- 0.6 with 400 of 5,000 relion_project particles; a sample of 1% keeps
#: z > 5 and the excess > 5 sigma up to about a million particles).
SAMPLE_MIN, SAMPLE_MAX = 400, 2000
#: The check runs in two stages: first on SAMPLE_FIRST particles of that sample (evenly spread);
#: when their direction statistic is already beyond Z_AT_ONCE (twice the decision threshold), the
#: verdict cannot change with more particles and the rest of the sample is not used. Otherwise
#: (swapped-or-not undecided, another split, independent maps) the whole sample is used. Maps
#: given as they should be are the common case: z ~ 50 with 100 of 5,000 relion_project
#: particles, so the check costs 200 particle predictions instead of 800.
SAMPLE_FIRST = 100
Z_AT_ONCE = 2.0 * Z_DECIDED
#: Particles of the sample predicted at once (twice: with their own and with shuffled poses).
OWN_NOISE_BATCH = 64

AS_GIVEN, SWAPPED, OTHER_SPLIT, INDEPENDENT = "as given", "swapped", "another split", "independent"
#: The particles' contrast relative to the maps.
CONTRAST_AS_MAPS, CONTRAST_INVERTED = "as the maps", "inverted"
#: The fields that place a particle's prediction (orientation and origin); the null pairs an
#: image with another particle's.
POSE_FIELDS = ("rot_deg", "tilt_deg", "psi_deg", "origin_x_A", "origin_y_A")


@dataclass(frozen=True)
class HalfMapCheck:
    """The measured relation of the half maps to a group's half sets.

    verdict : "as given", "swapped", "another split" (the maps contain these particles' noise in
        a split other than rlnRandomSubset's: no unbiased prediction), or "independent" (no
        particle's noise in either map: no bias, e.g. simulated maps);
    z : the direction statistic; excess, excess_sigma : the own-noise excess and its standard
        error; n_particles : the particles used; contrast : the particles' contrast relative to
        the maps ("as the maps" or "inverted"; the other statistics are then those of the
        images with their sign flipped); contrast_z : its t statistic.
    """

    verdict: str
    z: float
    excess: float
    excess_sigma: float
    n_particles: int
    contrast: str = CONTRAST_AS_MAPS
    contrast_z: float = float("nan")

    @property
    def inverted(self) -> bool:
        return self.contrast == CONTRAST_INVERTED

    def as_dict(self) -> dict:
        return {k: (round(v, 3) if isinstance(v, float) else v) for k, v in asdict(self).items()}


def check_stages(positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The particles of the check's two stages (module constants SAMPLE_FIRST, Z_AT_ONCE):
    (first, rest), disjoint, together :func:`sample_positions` of ``positions``."""
    sample = sample_positions(positions)
    if sample.size <= SAMPLE_FIRST:
        return sample, sample[:0]
    first = sample_positions(sample, SAMPLE_FIRST)
    return first, np.setdiff1d(sample, first)


def staged_check(statistics, positions: np.ndarray) -> HalfMapCheck:
    """The verdict of :func:`decide` over the stages of :func:`check_stages`.

    statistics : function(positions) -> (d, d0, c) for those particles (see
    :func:`own_noise_statistics`)."""
    first, rest = check_stages(positions)
    stats = statistics(first)
    check = decide(*stats)
    if rest.size == 0 or abs(check.z) >= Z_AT_ONCE:
        return check
    more = statistics(rest)
    return decide(*(np.concatenate([a, b]) for a, b in zip(stats, more)))


def sample_positions(positions: np.ndarray, limit: int | None = None) -> np.ndarray:
    """Up to ``limit`` of ``positions`` (default: 1% of them, within SAMPLE_MIN..SAMPLE_MAX),
    evenly spread (deterministic)."""
    if limit is None:
        limit = int(np.clip(positions.size // 100, SAMPLE_MIN, SAMPLE_MAX))
    if positions.size <= limit:
        return positions
    return positions[np.linspace(0, positions.size - 1, limit).round().astype(np.int64)]


def own_noise_statistics(backend, images, particles, references: dict, terms, band,
                         pixel_size_A: float, threads: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(d_i, d0_i, c_i) of the module docstring for ``particles`` (their ``images``: (n, box,
    box)), computed with the accumulation backend, one statistics cell per particle,
    :data:`OWN_NOISE_BATCH` particles at a time. A cell's cross sum D = sum Re(X conj(CTF P)) is
    linear in the prediction P, so D for the difference
    (d) and the sum (c) of the half maps are the difference and sum of D_1 and D_2, each
    accumulated against its own half map (no third reference is built); d0 pairs each image
    with the pose of another particle of the sample. Three arrays of shape (n,)."""
    n, m = len(particles), band.size
    w = band.friedel_weight
    others = particles.subset(np.roll(np.arange(n), 1))
    null = replace(particles, **{f: getattr(others, f) for f in POSE_FIELDS})
    d, d0, c = np.zeros(n), np.zeros(n), np.zeros(n)
    for lo in range(0, n, OWN_NOISE_BATCH):
        idx = np.arange(lo, min(lo + OWN_NOISE_BATCH, n))
        k = idx.size
        own_sign = np.where(particles.half_set[idx] == 1, 1.0, -1.0)
        # each half map: the images with their own poses (cells 0..k-1), then with the
        # shuffled poses (cells k..2k-1)
        twice = np.concatenate([images[idx]] * 2)
        poses = particles.subset(idx).concat(null.subset(idx))
        cross = {}
        for half in (1, 2):
            per = np.zeros((2 * k, N_STATS, m))
            backend.accumulate_batch(per, np.arange(2 * k), twice, poses, references[half], terms,
                                     band, pixel_size_A, threads)
            cross[half] = (w * per[:, 3, :]).sum(axis=1)
        difference, total = cross[1] - cross[2], cross[1] + cross[2]
        d[idx], d0[idx] = own_sign * difference[:k], own_sign * difference[k:]
        c[idx] = total[:k]
    return d, d0, c


def _t(values: np.ndarray) -> float:
    """The t statistic of the mean of ``values``."""
    spread = values.std(ddof=1)
    return float(values.mean() / (spread / np.sqrt(values.size))) if spread > 0 else 0.0


def decide(d: np.ndarray, d0: np.ndarray, c: np.ndarray) -> HalfMapCheck:
    """The verdict from the per-particle statistics, their pose-shuffled null and the contrast
    statistic (see the module docstring)."""
    d, d0 = np.asarray(d, float), np.asarray(d0, float)
    n = int(d.size)
    if n < 10 or not np.any(d0):
        return HalfMapCheck("not checked", float("nan"), float("nan"), float("nan"), n)
    contrast_z = _t(np.asarray(c, float))
    contrast = CONTRAST_INVERTED if contrast_z <= -Z_DECIDED else CONTRAST_AS_MAPS
    if contrast == CONTRAST_INVERTED:  # the images' sign flipped flips every d_i too
        d, d0 = -d, -d0
    z = _t(d)
    m2, m0 = float(np.mean(d * d)), float(np.mean(d0 * d0))
    excess = m2 / m0 - 1.0
    # delta method for the ratio of two means
    excess_sigma = float(np.sqrt(np.var(d * d, ddof=1) / m0**2
                                 + np.var(d0 * d0, ddof=1) * m2**2 / m0**4) / np.sqrt(n))
    if z >= Z_DECIDED:
        verdict = AS_GIVEN
    elif z <= -Z_DECIDED:
        verdict = SWAPPED
    elif excess > EXCESS_DECIDED * excess_sigma:
        verdict = OTHER_SPLIT
    else:
        verdict = INDEPENDENT
    return HalfMapCheck(verdict, z, excess, excess_sigma, n, contrast, contrast_z)
