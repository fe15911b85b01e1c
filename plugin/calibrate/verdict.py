"""Cs and defocus at the calibrated pixel size, and what the refined Cs departure is.

With r = p_cal / p_nom: Cs_true = Cs_refined * r^4, defocus_true = defocus * r^2
(:func:`reexpress_cs_defocus`). :func:`group_verdict` splits the refined Cs departure
D = Cs_refined - Cs_nominal into the pixel-size part D_pix = Cs_refined - Cs_at_cal
(sigma 4 Cs_refined r^3 sigma_p / p_nom) and the Cs part D_cs = Cs_at_cal - Cs_nominal (sigma from
the refined Cs sigma and the pixel sigma).

The pixel size is

* **different** from the nominal only when the shift is significant (|D_pix| at least
  :data:`SIGNIFICANT_SIGMA` times its sigma, i.e. the pixel size that many standard errors from
  the nominal, and at least the practical floor :data:`FLOOR_MM`) *and* consistent: the two half
  maps' calibrations agree within :data:`HALVES_AGREE_SIGMA` of their combined standard errors;
* **undetermined** when the half maps disagree, or when its uncertainty alone could account for
  the refined Cs departure (SIGNIFICANT_SIGMA sigma of it move Cs by as much as the departure
  and more than SIGNIFICANT_SIGMA sigma of the refined Cs);
* **confirmed** otherwise.

Verdict (``kind``): "pixel size" (different, Cs at the calibrated pixel consistent with the
nominal), "both" (different, and Cs still departs), "Cs" (pixel size confirmed, Cs departs),
"no change" (the refined Cs is consistent with the nominal), "undetermined" (the Cs departs and
the pixel size is undetermined: the calibration cannot tell how much of the departure it is) or
"not refined". A Cs departure is significant from SIGNIFICANT_SIGMA sigma and FLOOR_MM, as the
refinement's report judges the change of Cs.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .records import GroupCalibration, PixelCalibration


def reexpress_cs_defocus(cs_mm: float, defocus_A: float, pixel_nominal_A: float,
                         pixel_calibrated_A: float) -> tuple[float, float]:
    """(Cs, mm; defocus, Å) at the calibrated pixel size: Cs * r^4, defocus * r^2,
    r = p_cal / p_nom."""
    r = pixel_calibrated_A / pixel_nominal_A
    return float(cs_mm * r**4), float(defocus_A * r**2)


#: Departures are significant from this many standard errors (as the refinement's report
#: judges the change of Cs).
SIGNIFICANT_SIGMA = 3.0
#: The practical floor: departures of Cs (or of the Cs a pixel-size shift accounts for) below
#: this, mm, are not called real.
FLOOR_MM = 0.01
#: The half maps' calibrations agree when they differ by at most this many of their combined
#: standard errors (a 95% test: one standard error would call a third of consistent pairs
#: inconsistent).
HALVES_AGREE_SIGMA = 2.0


def _decimals(sigma: float) -> int:
    """Decimals that show ``sigma`` with at least one significant digit (4 to 6)."""
    if not np.isfinite(sigma) or sigma <= 0:
        return 4
    return int(np.clip(-np.floor(np.log10(sigma)), 4, 6))


@dataclass(frozen=True)
class PixelEvidence:
    """The map's calibration at one group's nominal pixel size (all in Angstrom).

    halves_A, halves_sigma_A : each half map's calibrated pixel size and sigma (curvature and the
    systematic floor; None: not known, the agreement is not checked).
    """

    nominal_A: float
    calibrated_A: float
    sigma_A: float
    halves_A: tuple | None = None
    halves_sigma_A: tuple | None = None

    @property
    def z(self) -> float:
        """(calibrated - nominal) / sigma."""
        d = self.calibrated_A - self.nominal_A
        return d / self.sigma_A if self.sigma_A > 0 else float("inf") * np.sign(d)

    @property
    def halves_z(self) -> float | None:
        """|half1 - half2| / their combined sigma (None when not known)."""
        if self.halves_A is None or self.halves_sigma_A is None:
            return None
        combined = float(np.hypot(*self.halves_sigma_A))
        diff = abs(self.halves_A[0] - self.halves_A[1])
        return diff / combined if combined > 0 else (0.0 if diff == 0 else float("inf"))

    def text(self) -> str:
        """'1.1004 ± 0.0001 Å (nominal 1.1000, +0.04%)'."""
        nd = _decimals(self.sigma_A)
        pct = 100.0 * (self.calibrated_A / self.nominal_A - 1.0)
        return (f"{self.calibrated_A:.{nd}f} ± {self.sigma_A:.{nd}f} Å (nominal "
                f"{self.nominal_A:.4f}, {pct:+.2f}%)")

    def halves_text(self) -> str:
        """'1.1054 ± 0.0006 and 1.1008 ± 0.0006 Å'."""
        nd = _decimals(min(self.halves_sigma_A))
        (a, b), (sa, sb) = self.halves_A, self.halves_sigma_A
        return f"{a:.{nd}f} ± {sa:.{nd}f} and {b:.{nd}f} ± {sb:.{nd}f} Å"


@dataclass(frozen=True)
class PixelStatus:
    """What the calibration says about the pixel size: state ("different", "confirmed",
    "undetermined") and the words for it."""

    state: str
    text: str


def _pixel_status(ev: PixelEvidence, n_sigma: float, sig_pix_mm: float | None = None,
                  d_pix_mm: float | None = None, d_total_mm: float | None = None,
                  cs_sigma_mm: float | None = None) -> PixelStatus:
    """The pixel size's state (see the module docstring).

    sig_pix_mm, d_pix_mm : the Cs sigma and departure the pixel-size shift accounts for, mm;
    d_total_mm, cs_sigma_mm : the refined Cs departure and its sigma, mm (all None where Cs was
    not refined: the pixel size is then judged on its own standard errors).
    """
    hz = ev.halves_z
    if hz is not None and hz > HALVES_AGREE_SIGMA:
        return PixelStatus("undetermined", (
            f"the pixel size is undetermined: the two half maps calibrate to {ev.halves_text()}, "
            f"{hz:.1f} standard errors apart (together {ev.text()})"))
    z = ev.z
    if d_pix_mm is None:
        shifted, below_floor = abs(z) >= n_sigma, False
    else:
        shifted = abs(d_pix_mm) >= n_sigma * sig_pix_mm
        below_floor = shifted and abs(d_pix_mm) < FLOOR_MM
        shifted = shifted and not below_floor
    if shifted:
        agree = "" if hz is None else f", and the two half maps agree ({ev.halves_text()})"
        return PixelStatus("different", (
            f"the map's pixel size is {ev.text()}, {abs(z):.1f} standard errors from the "
            f"nominal{agree}"))
    if d_total_mm is not None and n_sigma * sig_pix_mm >= max(abs(d_total_mm),
                                                              n_sigma * cs_sigma_mm):
        return PixelStatus("undetermined", (
            f"the pixel size is undetermined: {ev.text()} is too uncertain "
            f"({n_sigma:g} standard errors of it move Cs by {n_sigma * sig_pix_mm:.3f} mm)"))
    if below_floor:
        return PixelStatus("confirmed", (
            f"the pixel size is confirmed, {ev.text()}: {abs(z):.1f} standard errors from the "
            f"nominal, but too close to it to move Cs by {FLOOR_MM:g} mm"))
    return PixelStatus("confirmed", f"the pixel size is confirmed, {ev.text()}")


def group_verdict(cs_refined_mm: float, cs_sigma_mm: float | None, cs_nominal_mm: float,
                  pixel_nominal_A: float, pixel_calibrated_A: float, pixel_sigma_A: float, *,
                  pixel_halves_A: tuple | None = None, pixel_halves_sigma_A: tuple | None = None,
                  n_sigma: float = SIGNIFICANT_SIGMA, refined: bool = True
                  ) -> tuple[str, str, float, float | None]:
    """(kind, what the calibration says about the pixel size, Cs at the calibrated pixel in mm,
    its sigma in mm) for one group.

    Cs in mm, pixel sizes in Angstrom (the group's nominal, the map's calibration scaled to it);
    pixel_halves_A, pixel_halves_sigma_A : each half map's calibration and its sigma (None: their
    agreement is not checked). kind: see the module docstring.
    """
    ev = PixelEvidence(pixel_nominal_A, pixel_calibrated_A, pixel_sigma_A, pixel_halves_A,
                       pixel_halves_sigma_A)
    r = pixel_calibrated_A / pixel_nominal_A
    cs_cal = cs_refined_mm * r**4
    if not refined or cs_sigma_mm is None or not np.isfinite(cs_sigma_mm):
        return "not refined", _pixel_status(ev, n_sigma).text, float(cs_cal), None
    sig_pix_mm = 4.0 * abs(cs_refined_mm) * r**3 * (pixel_sigma_A / pixel_nominal_A)
    sig_cal = float(np.hypot(r**4 * cs_sigma_mm, sig_pix_mm))
    d_pix, d_cs = cs_refined_mm - cs_cal, cs_cal - cs_nominal_mm
    d_total = cs_refined_mm - cs_nominal_mm
    pix = _pixel_status(ev, n_sigma, sig_pix_mm, d_pix, d_total, cs_sigma_mm)
    if pix.state == "undetermined":
        cs_sig = abs(d_total) >= n_sigma * cs_sigma_mm and abs(d_total) >= FLOOR_MM
    else:
        cs_sig = abs(d_cs) >= n_sigma * sig_cal and abs(d_cs) >= FLOOR_MM
    kind = {("different", False): "pixel size", ("different", True): "both",
            ("confirmed", True): "Cs", ("undetermined", True): "undetermined"}.get(
        (pix.state, cs_sig), "no change")
    return kind, pix.text, float(cs_cal), sig_cal


def _halves_at(calibration: PixelCalibration, pixel_nominal_A: float) -> dict:
    """The half maps' calibrations and sigmas scaled to a group's nominal pixel (Å), as
    :func:`group_verdict`'s keywords (empty where their sigmas were not measured)."""
    if calibration.sigma_half1_A is None or calibration.sigma_half2_A is None:
        return {}
    f = pixel_nominal_A / calibration.pixel_size_nominal_A
    return {"pixel_halves_A": (calibration.pixel_size_half1_A * f,
                               calibration.pixel_size_half2_A * f),
            "pixel_halves_sigma_A": (calibration.sigma_half1_A * f, calibration.sigma_half2_A * f)}


def apply_calibration(groups_results_dicts, calibration: PixelCalibration,
                      n_sigma: float = SIGNIFICANT_SIGMA) -> list[GroupCalibration]:
    """Re-express each group's refined Cs and defocus offset at the calibrated pixel size; a
    departure is significant from ``n_sigma`` standard errors.

    groups_results_dicts : iterable of :func:`csrefine.results.result_dict` dicts or GroupResult
    objects (keys used: optics_group, refined, cs_nominal_mm, cs_refined_mm, cs_sigma_mm,
    defocus_offset_A, pixel_size_A). Returns one record per group
    (:func:`csrefine.calibrate.records.calibration_json` writes them into csrefine.json).
    """
    out = []
    for g in groups_results_dicts:
        g = g if isinstance(g, dict) else vars(g)  # a GroupResult dataclass
        p_nom = float(g.get("pixel_size_A") or calibration.pixel_size_nominal_A)
        # the calibration is of the map; scale it to this group's nominal pixel size
        p_cal = calibration.pixel_size_calibrated_A * p_nom / calibration.pixel_size_nominal_A
        s_cal = calibration.pixel_size_sigma_A * p_nom / calibration.pixel_size_nominal_A
        kind, pixel_status, cs_cal, sig = group_verdict(
            float(g["cs_refined_mm"]), g.get("cs_sigma_mm"), float(g["cs_nominal_mm"]), p_nom,
            p_cal, s_cal, refined=bool(g.get("refined", True)),
            n_sigma=n_sigma, **_halves_at(calibration, p_nom))
        _, df_cal = reexpress_cs_defocus(0.0, float(g.get("defocus_offset_A") or 0.0), p_nom, p_cal)
        out.append(GroupCalibration(int(g["optics_group"]), cs_cal, sig, df_cal,
                                    float((p_cal / p_nom) ** 2), kind, p_cal, s_cal, pixel_status))
    return out
