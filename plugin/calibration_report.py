"""Pixel-size calibration inside a refinement run: JSON keys, report lines and the scan page.

The adapters read the model (:func:`csrefine.atomic_map.read_model`) before any work, so that a
missing or unreadable model fails the run before anything is written; a model that cannot serve
as a ruler (not docked, not covering the map) is reported with its reason and *no* calibration,
and the Cs refinement still stands. Each group's verdict is decided at the report's significance
(:data:`csrefine.report_text.SIGNIFICANT_Z`), so that it never contradicts its Cs text.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .calibrate import apply_calibration, calibrate_pixel_size
from .calibrate.records import calibration_json
from .errors import InputError
from .report_layout import caption, new_page
from .report_text import SIGNIFICANT_Z, PixelVerdict, verdict_sentence

WHAT_TO_DO = ("csrefine leaves the pixel size in the particle STAR/.cs unchanged (RELION advises "
              "against editing it). To use the calibrated pixel size, give it where the map's scale "
              "is set (e.g. --angpix of relion_postprocess, the map header before model building "
              "and deposition); where the pixel size explains the Cs change, keep the nominal Cs.")


@dataclass
class CalibrationOutcome:
    """The calibration's part of a run: csrefine.json additions, report lines (the calibrated
    pixel size and what to do with it; each group's verdict is in that group's text), the scan
    page and each group's verdict by optics group number."""

    json: dict
    lines: list
    figures: list = field(default_factory=list)
    verdicts: dict = field(default_factory=dict)


def calibrate_refinement(refinement, half_maps, mask, pixel_size_A: float, structure,
                         progress=None) -> CalibrationOutcome:
    """Calibrate the half maps' pixel size against ``structure`` and re-express each group.

    Returns the csrefine.json additions (top level: pixel_size_calibrated_A, pixel_size_sigma_A,
    cs_at_calibrated_pixel_mm and verdict per group; the per-group entries are also merged into
    the groups by :func:`merge_into_groups`), plain report lines, the scan page and the verdicts.
    """
    try:
        cal = calibrate_pixel_size(half_maps[0], half_maps[1], pixel_size_A, structure, mask=mask,
                                   fsc=refinement.fsc, progress=progress)
    except InputError as exc:
        return CalibrationOutcome({"pixel_calibration_error": str(exc)},
                                  [f"Pixel-size calibration NOT done: {exc}"])
    records = apply_calibration(refinement.groups, cal, n_sigma=SIGNIFICANT_Z)
    verdicts = {g.optics_group: PixelVerdict(c.kind, c.pixel_size_A, c.pixel_size_sigma_A,
                                             g.pixel_size_A, c.cs_at_calibrated_pixel_mm,
                                             c.cs_at_calibrated_pixel_sigma_mm, c.pixel_status)
                for g, c in zip(refinement.groups, records)}
    sentences = {g.optics_group: verdict_sentence(g, verdicts[g.optics_group])
                 for g in refinement.groups}
    extra = calibration_json(cal, records, sentences)
    rel = 100 * (cal.pixel_size_calibrated_A / pixel_size_A - 1)
    lines = [f"Pixel size calibrated against the atomic model: {cal.pixel_size_calibrated_A:.4f} "
             f"± {cal.pixel_size_sigma_A:.4f} Å (nominal {pixel_size_A:.4f} Å, {rel:+.2f}%; half "
             f"maps {cal.pixel_size_half1_A:.4f} / {cal.pixel_size_half2_A:.4f} Å).",
             "  " + WHAT_TO_DO]
    return CalibrationOutcome(extra, lines, [("Pixel-size calibration", _scan_figure(cal))],
                              verdicts)


#: Per-group calibration facts, written into each group's entry of csrefine.json (only there:
#: one place per fact).
PER_GROUP = ("cs_at_calibrated_pixel_mm", "verdict")


def merge_into_groups(report: dict, extra: dict) -> dict:
    """csrefine.json with the calibration: the pixel size at the top level, and each group's
    cs_at_calibrated_pixel_mm, verdict and calibration details in that group's entry."""
    out = {**report, **{k: v for k, v in extra.items() if k not in PER_GROUP}}
    details = dict(out.get("pixel_calibration", {}))
    per_group_details = details.pop("groups", {})
    if "pixel_calibration" in out:
        out["pixel_calibration"] = details
    for g in out.get("groups", []):
        key = str(g["optics_group"])
        for name in PER_GROUP:
            if name in extra and key in extra[name]:
                g[name] = extra[name][key]
        g.update(per_group_details.get(key, {}))
    return out


def _scan_figure(cal):
    """The scan page: the model-map match against the trial pixel size, nominal and calibrated
    marked, and the figures beneath."""
    fig = new_page()
    ax = fig.add_axes([0.08, 0.3, 0.86, 0.6])
    ax.plot(cal.scan_pixel_size_A, cal.scan_score, ".-", color="C0", label="match per trial pixel size")
    ax.axvline(cal.pixel_size_nominal_A, color="grey", ls=":",
               label=f"nominal {cal.pixel_size_nominal_A:.4f} Å")
    ax.axvline(cal.pixel_size_calibrated_A, color="C3",
               label=f"calibrated {cal.pixel_size_calibrated_A:.4f} ± {cal.pixel_size_sigma_A:.4f} Å")
    ax.set_xlabel("pixel size (Å)")
    ax.set_ylabel("model-map match (FSC-weighted correlation)")
    ax.set_title("Pixel size against the atomic model", fontsize=13)
    ax.legend(fontsize=9, loc="lower center")
    text = (f"The half maps calibrated one by one give {cal.pixel_size_half1_A:.4f} and "
            f"{cal.pixel_size_half2_A:.4f} Å. The model covers {100 * cal.coverage:.0f}% of the "
            f"masked density; its best match is {cal.relative_correlation:.2f} of what a perfect "
            f"model would give, with a B-factor of {cal.b_factor_A2:.0f} Å² and a shift of "
            f"{sum(s * s for s in cal.shift_A) ** 0.5:.2f} Å. Fitted band "
            f"{cal.band_A[0]:.1f}–{cal.band_A[1]:.2f} Å.")
    caption(fig, 0.08, 0.2, [text], 0.86)
    return fig
