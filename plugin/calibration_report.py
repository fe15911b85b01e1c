"""Pixel-size calibration inside a refinement run: JSON keys, report lines and the scan plot.

The adapters read the model file (:func:`csrefine.atomic_map.read_model`) before any work, so a missing
or unreadable model fails the run before anything is written. A model that cannot serve as a ruler
(not docked, not covering the map) is reported with its reason and *no* calibration; the Cs
refinement itself still stands.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .calibrate import apply_calibration, calibrate_pixel_size
from .errors import InputError

WHAT_TO_DO = ("csrefine leaves the pixel size in the particle STAR/.cs unchanged (RELION advises "
              "against editing it). To use the calibrated pixel size, give it where the map's scale "
              "is set (e.g. --angpix of relion_postprocess, the map header before model building "
              "and deposition); if the pixel size explains the Cs departure, keep the nominal Cs.")


@dataclass
class CalibrationOutcome:
    json: dict
    lines: list
    figures: list = field(default_factory=list)


def calibrate_refinement(refinement, half_maps, mask, pixel_size_A: float, structure,
                         progress=None) -> CalibrationOutcome:
    """Calibrate the half maps' pixel size against ``structure`` and re-express each group.

    Returns the csrefine.json additions (top level: pixel_size_calibrated_A, pixel_size_sigma_A,
    cs_at_calibrated_pixel_mm and verdict per group; the per-group entries are also merged into
    the groups by :func:`merge_into_groups`), plain report lines, and the scan figure.
    """
    try:
        cal = calibrate_pixel_size(half_maps[0], half_maps[1], pixel_size_A, structure, mask=mask,
                                   fsc=refinement.fsc, progress=progress)
    except InputError as exc:
        return CalibrationOutcome({"pixel_calibration_error": str(exc)},
                                  [f"Pixel-size calibration NOT done: {exc}"])
    extra = apply_calibration(refinement.groups, cal)
    rel = 100 * (cal.pixel_size_calibrated_A / pixel_size_A - 1)
    lines = [f"Pixel size calibrated against the atomic model: {cal.pixel_size_calibrated_A:.4f} "
             f"± {cal.pixel_size_sigma_A:.4f} Å (nominal {pixel_size_A:.4f} Å, {rel:+.2f}%; half "
             f"maps {cal.pixel_size_half1_A:.4f} / {cal.pixel_size_half2_A:.4f} Å)."]
    lines += [f"  Optics group {gid}: {text}" for gid, text in extra["verdict"].items()]
    lines.append("  " + WHAT_TO_DO)
    return CalibrationOutcome(extra, lines, [("Pixel-size calibration", _scan_figure(cal))])


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
    import matplotlib
    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(cal.scan_pixel_size_A, cal.scan_score, ".-")
    ax.axvline(cal.pixel_size_nominal_A, color="grey", ls=":",
               label=f"nominal {cal.pixel_size_nominal_A:.4f} Å")
    ax.axvline(cal.pixel_size_calibrated_A, color="C3",
               label=f"calibrated {cal.pixel_size_calibrated_A:.4f} ± {cal.pixel_size_sigma_A:.4f} Å")
    ax.set_xlabel("pixel size (A)")
    ax.set_ylabel("model-map match (FSC-weighted correlation)")
    ax.set_title("Pixel size against the atomic model")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig
