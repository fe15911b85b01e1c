"""What a refined Cs means: the pixel-size alternative and the resolution where it matters."""

from __future__ import annotations

import numpy as np


def pixel_size_if_cs_nominal_A(pixel_size_A: float, cs_nominal_mm: float, cs_refined_mm: float) -> float:
    """Pixel size that explains the refined Cs if the nominal Cs is right.

    A pixel-size error scales the apparent Cs as Cs_apparent = Cs * (p_nominal / p_true)^4, so
    p_true = p_nominal * (Cs_nominal / Cs_refined)^(1/4). NaN if the ratio is not positive.
    """
    ratio = cs_nominal_mm / cs_refined_mm if cs_refined_mm != 0 else np.nan
    return float(pixel_size_A * ratio**0.25) if np.isfinite(ratio) and ratio > 0 else float("nan")


def resolution_impact_A(defocus_factor: float, cs_factor: float, defocus_offset_A: float,
                        cs_change_mm: float, k_limit_per_A: float,
                        threshold_rad: float = np.pi / 4, samples: int = 20000) -> float | None:
    """Resolution (A) at which |delta(k)| between the nominal and the refined CTF first reaches
    ``threshold_rad`` (45 degrees), delta = defocus_factor*ddf*k^2 + cs_factor*dcs*k^4, searched up
    to ``k_limit_per_A`` (usually Nyquist). None if it stays below the threshold."""
    k = np.linspace(0.0, k_limit_per_A, samples)
    k2 = k * k
    delta = np.abs(defocus_factor * defocus_offset_A * k2 + cs_factor * cs_change_mm * k2 * k2)
    hit = np.flatnonzero(delta >= threshold_rad)
    return float(1.0 / k[hit[0]]) if hit.size else None
