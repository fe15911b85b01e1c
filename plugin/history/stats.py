"""Statistics of Cs over data sets: pure functions on arrays (no database).

Each data set contributes a value x_i (a refined Cs, mm) with its standard error sigma_i.

* Weighted mean: w_i = 1 / sigma_i^2, mean = sum(w x) / sum(w), its statistical standard error
  1 / sqrt(sum w).
* Scatter: chi^2 = sum w_i (x_i - mean)^2 with n - 1 degrees of freedom; chi^2/dof near 1 means
  the data sets agree within their sigmas. The excess is the systematic part, the between-data-set
  standard deviation tau (DerSimonian-Laird: tau^2 = max(0, (chi^2 - dof) / (S1 - S2 / S1)),
  S1 = sum w, S2 = sum w^2). The reported standard error of the mean is the statistical one times
  sqrt(max(1, chi^2/dof)) (the Birge ratio), so that scatter beyond the sigmas widens it.
* Deviation of data set i, in sigma: from the weighted mean of the *other* data sets, so that an
  outlier with a small sigma cannot pull the mean toward itself and hide:
  dev_i = (x_i - mean_-i) / sqrt(sigma_i^2 + se_-i^2 + tau_-i^2), where se_-i and tau_-i are the
  statistical standard error and the systematic scatter of the others (data set i excluded).
  A data set is an outlier when |dev_i| > :data:`OUTLIER_SIGMA` (3) and there are at least
  :data:`MIN_DATASETS_FOR_OUTLIERS` (3) data sets: two that disagree cannot say which is off.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..interpret import pixel_size_if_cs_nominal_A

#: |deviation| (in combined sigma) beyond which a data set is flagged as an outlier.
OUTLIER_SIGMA = 3.0
#: Fewer data sets than this flag no outlier (of two that disagree, neither can be blamed).
MIN_DATASETS_FOR_OUTLIERS = 3


@dataclass(frozen=True)
class WeightedMean:
    """Inverse-variance weighted mean of n values (units of the values).

    mean, se_stat : the weighted mean and its statistical standard error 1/sqrt(sum w);
    se : se_stat * sqrt(max(1, chi2/dof)) (NaN if n = 0); chi2, dof : the scatter about the
    mean and n - 1; tau : the systematic between-data-set standard deviation (0 when the scatter
    is within the sigmas).
    """

    n: int
    mean: float
    se_stat: float
    se: float
    chi2: float
    dof: int
    tau: float

    @property
    def chi2_per_dof(self) -> float:
        """chi^2 / dof (NaN for fewer than two values)."""
        return self.chi2 / self.dof if self.dof > 0 else float("nan")


def weighted_mean(values, sigmas) -> WeightedMean:
    """Weighted mean, its standard error, chi^2/dof and systematic scatter (module docstring).

    values, sigmas : arrays of equal length; sigmas must be positive and finite.
    """
    x = np.asarray(values, dtype=float)
    s = np.asarray(sigmas, dtype=float)
    if x.size == 0:
        nan = float("nan")
        return WeightedMean(0, nan, nan, nan, 0.0, 0, 0.0)
    if not np.all(np.isfinite(s) & (s > 0)):
        raise ValueError("every sigma must be positive and finite")
    w = 1.0 / s**2
    s1 = float(w.sum())
    mean = float((w * x).sum() / s1)
    se_stat = 1.0 / np.sqrt(s1)
    chi2 = float((w * (x - mean) ** 2).sum())
    dof = x.size - 1
    tau = 0.0
    if dof > 0:
        denom = s1 - float((w**2).sum()) / s1
        tau = float(np.sqrt(max(0.0, (chi2 - dof) / denom))) if denom > 0 else 0.0
    birge = np.sqrt(max(1.0, chi2 / dof)) if dof > 0 else 1.0
    return WeightedMean(int(x.size), mean, float(se_stat), float(se_stat * birge), chi2, dof, tau)


def deviations_sigma(values, sigmas) -> np.ndarray:
    """Each value's deviation from the weighted mean of the others, in combined sigma.

    dev_i = (x_i - mean_-i) / sqrt(sigma_i^2 + se_stat_-i^2 + tau_-i^2); NaN where fewer than
    two values are given.
    """
    x = np.asarray(values, dtype=float)
    s = np.asarray(sigmas, dtype=float)
    out = np.full(x.shape, np.nan)
    if x.size < 2:
        return out
    for i in range(x.size):
        keep = np.arange(x.size) != i
        others = weighted_mean(x[keep], s[keep])
        combined = np.sqrt(s[i] ** 2 + others.se_stat**2 + others.tau**2)
        out[i] = (x[i] - others.mean) / combined
    return out


def outlier_flags(deviations, threshold_sigma: float = OUTLIER_SIGMA) -> np.ndarray:
    """True where |deviation| exceeds ``threshold_sigma`` (NaN deviations are not outliers),
    given at least :data:`MIN_DATASETS_FOR_OUTLIERS` finite deviations (else none)."""
    dev = np.asarray(deviations, dtype=float)
    finite = np.isfinite(dev)
    if finite.sum() < MIN_DATASETS_FOR_OUTLIERS:
        return np.zeros(dev.shape, dtype=bool)
    return finite & (np.abs(dev) > threshold_sigma)


def cs_sigma_at_calibrated_pixel_mm(cs_sigma_mm: float, pixel_ratio: float,
                                    cs_at_calibrated_pixel_mm: float,
                                    pixel_relative_sigma: float | None) -> float:
    """Standard error of Cs re-expressed at the calibrated pixel size, mm.

    Cs_cal = Cs r^4 with r = ``pixel_ratio`` = p_cal / p_nom, the map's calibrated over its
    nominal pixel size (a group's pixel sizes scale alike), so sigma^2 = (sigma_Cs r^4)^2
    + (4 Cs_cal sigma_p / p_cal)^2 (the two errors taken as independent);
    ``pixel_relative_sigma``: sigma_p / p_cal.
    """
    pixel_term = 4.0 * cs_at_calibrated_pixel_mm * (pixel_relative_sigma or 0.0)
    return float(np.hypot(cs_sigma_mm * pixel_ratio**4, pixel_term))


def pixel_change_explaining(cs_apparent_mm: float, cs_reference_mm: float) -> float:
    """Relative pixel-size change (p_true / p_nominal - 1) that turns ``cs_reference_mm`` into
    the apparent ``cs_apparent_mm`` (apparent = Cs (p_nom / p_true)^4):
    :func:`csrefine.interpret.pixel_size_if_cs_nominal_A` with the reference (e.g. the
    instrument's mean) as the nominal Cs, per unit pixel size. Negative: the true pixel size is
    smaller than the nominal one."""
    return pixel_size_if_cs_nominal_A(1.0, cs_reference_mm, cs_apparent_mm) - 1.0
