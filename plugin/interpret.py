"""What a refined Cs means: the pixel-size alternative and the resolution where it matters."""

from __future__ import annotations

import numpy as np

from .fit import PhaseModel
from .model import nyquist_A

#: The phase change (radians, 45 degrees) at which the refined CTF matters for the resolution.
IMPACT_THRESHOLD_RAD = np.pi / 4
#: Frequencies sampled from 0 to the limit in search of that phase change.
IMPACT_SAMPLES = 20000


def pixel_size_if_cs_nominal_A(pixel_size_A: float, cs_nominal_mm: float, cs_refined_mm: float) -> float:
    """Pixel size that explains the refined Cs if the nominal Cs is right.

    A pixel-size error scales the apparent Cs as Cs_apparent = Cs * (p_nominal / p_true)^4, so
    p_true = p_nominal * (Cs_nominal / Cs_refined)^(1/4). NaN if the ratio is not positive.
    """
    ratio = cs_nominal_mm / cs_refined_mm if cs_refined_mm != 0 else np.nan
    return float(pixel_size_A * ratio**0.25) if np.isfinite(ratio) and ratio > 0 else float("nan")


def resolution_impact_A(model: PhaseModel, defocus_offset_A: float, cs_change_mm: float,
                        k_limit_per_A: float) -> float | None:
    """Resolution (A) at which |delta(k)| between the nominal and the refined CTF
    (:meth:`PhaseModel.delta`) first reaches :data:`IMPACT_THRESHOLD_RAD`, searched up to
    ``k_limit_per_A`` (usually Nyquist). None if it stays below the threshold."""
    k = np.linspace(0.0, k_limit_per_A, IMPACT_SAMPLES)
    delta = np.abs(model.delta(defocus_offset_A, cs_change_mm, k * k))
    hit = np.flatnonzero(delta >= IMPACT_THRESHOLD_RAD)
    return float(1.0 / k[hit[0]]) if hit.size else None


def interpretation_fields(model: PhaseModel, pixel_size_A: float, cs_nominal_mm: float,
                          cs_refined_mm: float, cs_sigma_mm: float | None,
                          defocus_offset_A: float) -> dict:
    """A refined group's interpretation fields of :class:`csrefine.results.GroupResult`: the
    change from the nominal Cs in standard errors (``cs_change_z``; None without a positive
    sigma), the pixel size that would explain it with the nominal Cs, and the resolution (Å)
    where the change and the defocus offset reach 45 degrees, up to the group's Nyquist."""
    change = cs_refined_mm - cs_nominal_mm
    return {"cs_change_z": change / cs_sigma_mm if cs_sigma_mm is not None and cs_sigma_mm > 0
            else None,
            "pixel_size_if_cs_nominal_A": pixel_size_if_cs_nominal_A(pixel_size_A, cs_nominal_mm,
                                                                     cs_refined_mm),
            "resolution_impact_A": resolution_impact_A(model, defocus_offset_A, change,
                                                       1.0 / nyquist_A(pixel_size_A))}
