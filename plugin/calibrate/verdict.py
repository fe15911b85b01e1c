"""Cs and defocus at the calibrated pixel size, and what the refined Cs departure is.

With r = p_cal / p_nom: Cs_true = Cs_refined * r^4, defocus_true = defocus * r^2
(:func:`reexpress_cs_defocus`). :func:`group_verdict` splits the refined Cs departure
D = Cs_refined - Cs_nominal into the pixel-size part D_pix = Cs_refined - Cs_at_cal
(sigma 4 Cs_refined r^3 sigma_p / p_nom) and the Cs part D_cs = Cs_at_cal - Cs_nominal (sigma from
the refined Cs sigma and the pixel sigma); each is significant if it exceeds ``n_sigma`` (2) times
its sigma *and* a practical floor ``floor_mm`` (0.01 mm). Verdict: "pixel size", "Cs", "both" or
"neither".
"""

from __future__ import annotations

from dataclasses import asdict

import numpy as np

from .json_keys import calibration_json
from .records import GroupCalibration, PixelCalibration


def reexpress_cs_defocus(cs_mm: float, defocus_A: float, pixel_nominal_A: float,
                         pixel_calibrated_A: float) -> tuple[float, float]:
    """(Cs, mm; defocus, Å) at the calibrated pixel size: Cs * r^4, defocus * r^2,
    r = p_cal / p_nom."""
    r = pixel_calibrated_A / pixel_nominal_A
    return float(cs_mm * r**4), float(defocus_A * r**2)


def _decimals(sigma: float, minimum: int = 4, maximum: int = 6) -> int:
    """Decimals that show ``sigma`` with at least one significant digit (4 to 6)."""
    if not np.isfinite(sigma) or sigma <= 0:
        return minimum
    return int(np.clip(-np.floor(np.log10(sigma)), minimum, maximum))


def group_verdict(cs_refined_mm: float, cs_sigma_mm: float | None, cs_nominal_mm: float,
                  pixel_nominal_A: float, pixel_calibrated_A: float, pixel_sigma_A: float, *,
                  n_sigma: float = 2.0, floor_mm: float = 0.01, refined: bool = True
                  ) -> tuple[str, str, float, float | None]:
    """(kind, one-line verdict, Cs at the calibrated pixel in mm, its sigma in mm) for one group.

    kind is "pixel size", "Cs", "both", "neither" or "not refined" (see the module docstring);
    Cs in mm, pixel sizes in Angstrom.
    """
    r = pixel_calibrated_A / pixel_nominal_A
    sr = pixel_sigma_A / pixel_nominal_A
    pct = 100.0 * (r - 1.0)
    nd = _decimals(pixel_sigma_A)
    p_txt = f"{pixel_calibrated_A:.{nd}f} ± {pixel_sigma_A:.{nd}f} Å"
    pix_txt = f"the map's pixel size is {p_txt} (nominal {pixel_nominal_A:.4f}, {pct:+.2f}%)"
    if not refined or cs_sigma_mm is None or not np.isfinite(cs_sigma_mm):
        cs_cal = cs_refined_mm * r**4
        return ("not refined",
                f"not refined: Cs was not refined for this group; {pix_txt}", float(cs_cal), None)
    cs_cal = cs_refined_mm * r**4
    sig_pix_mm = 4.0 * abs(cs_refined_mm) * r**3 * sr
    sig_cal = float(np.hypot(r**4 * cs_sigma_mm, sig_pix_mm))
    d_pix = cs_refined_mm - cs_cal
    d_cs = cs_cal - cs_nominal_mm
    pix_sig = abs(d_pix) >= n_sigma * sig_pix_mm and abs(d_pix) >= floor_mm
    cs_sig = abs(d_cs) >= n_sigma * sig_cal and abs(d_cs) >= floor_mm
    cs_txt = f"at that pixel size Cs = {cs_cal:.3f} ± {sig_cal:.3f} mm"
    nom = f"the nominal {cs_nominal_mm:.2f} mm"
    refined_txt = f"refined Cs {cs_refined_mm:.3f} ± {cs_sigma_mm:.3f} mm"
    if pix_sig and not cs_sig:
        kind = "pixel size"
        text = (f"pixel size: {pix_txt}; {cs_txt}, consistent with {nom} — the {refined_txt} "
                f"reflects the pixel size, not Cs")
    elif cs_sig and not pix_sig:
        kind = "Cs"
        text = (f"Cs: the pixel size is confirmed, {p_txt} (nominal {pixel_nominal_A:.4f}, "
                f"{pct:+.2f}%); {cs_txt}, {d_cs:+.3f} mm from {nom}")
    elif cs_sig and pix_sig:
        kind = "both"
        text = (f"both: {pix_txt}, which accounts for {d_pix:+.3f} mm of the {refined_txt}; "
                f"{cs_txt}, still {d_cs:+.3f} mm from {nom}")
    else:
        kind = "neither"
        text = (f"neither: the pixel size is confirmed, {p_txt} (nominal {pixel_nominal_A:.4f}, "
                f"{pct:+.2f}%); {cs_txt}, consistent with {nom}")
    return kind, text, float(cs_cal), sig_cal


def apply_calibration(groups_results_dicts, calibration: PixelCalibration, **verdict_options) -> dict:
    """Re-express each group's refined Cs and defocus offset at the calibrated pixel size.

    groups_results_dicts : iterable of :func:`csrefine.results.result_dict` dicts or GroupResult
    objects (keys used: optics_group, refined, cs_nominal_mm, cs_refined_mm, cs_sigma_mm,
    defocus_offset_A, pixel_size_A). Returns :func:`calibration_json`'s dict, ready to merge
    into csrefine.json.
    """
    out = []
    for g in groups_results_dicts:
        if not isinstance(g, dict):  # a GroupResult dataclass
            g = {k: v for k, v in asdict(g).items() if k != "curves"}
        p_nom = float(g.get("pixel_size_A") or calibration.pixel_size_nominal_A)
        # the calibration is of the map; scale it to this group's nominal pixel size
        p_cal = calibration.pixel_size_calibrated_A * p_nom / calibration.pixel_size_nominal_A
        s_cal = calibration.pixel_size_sigma_A * p_nom / calibration.pixel_size_nominal_A
        kind, text, cs_cal, sig = group_verdict(
            float(g["cs_refined_mm"]), g.get("cs_sigma_mm"), float(g["cs_nominal_mm"]), p_nom,
            p_cal, s_cal, refined=bool(g.get("refined", True)), **verdict_options)
        _, df_cal = reexpress_cs_defocus(0.0, float(g.get("defocus_offset_A") or 0.0), p_nom, p_cal)
        out.append(GroupCalibration(int(g["optics_group"]), cs_cal, sig, df_cal,
                                    float((p_cal / p_nom) ** 2), kind, text))
    return calibration_json(calibration, out)
