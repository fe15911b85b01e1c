"""The calibration's entries of csrefine.json."""

from __future__ import annotations

from .records import GroupCalibration, PixelCalibration


def calibration_json(calibration: PixelCalibration, groups: list[GroupCalibration]) -> dict:
    """The csrefine.json keys: pixel_size_calibrated_A, pixel_size_sigma_A (Å) and, per optics
    group (keyed by the group number as a string), cs_at_calibrated_pixel_mm and verdict; plus
    the details under ``pixel_calibration``."""
    c = calibration
    return {
        "pixel_size_calibrated_A": c.pixel_size_calibrated_A,
        "pixel_size_sigma_A": c.pixel_size_sigma_A,
        "cs_at_calibrated_pixel_mm": {str(g.optics_group): g.cs_at_calibrated_pixel_mm
                                      for g in groups},
        "verdict": {str(g.optics_group): g.verdict for g in groups},
        "pixel_calibration": {
            "pixel_size_nominal_A": c.pixel_size_nominal_A,
            "relative_error": c.relative_error,
            "sigma_curvature_A": c.sigma_curvature_A, "sigma_halves_A": c.sigma_halves_A,
            "sigma_systematic_A": c.sigma_systematic_A,
            "sigma_note": "pixel_size_sigma_A = sqrt(sigma_curvature_A^2 + sigma_halves_A^2 + "
                          "sigma_systematic_A^2)",
            "pixel_size_half1_A": c.pixel_size_half1_A, "pixel_size_half2_A": c.pixel_size_half2_A,
            "sigma_half1_A": c.sigma_half1_A, "sigma_half2_A": c.sigma_half2_A,
            "correlation": c.correlation, "correlation_expected": c.correlation_expected,
            "relative_correlation": c.relative_correlation,
            "real_space_correlation": c.real_space_correlation, "b_factor_A2": c.b_factor_A2,
            "shift_A": c.shift_A, "coverage": c.coverage, "band_A": c.band_A,
            "scan_pixel_size_A": c.scan_pixel_size_A, "scan_score": c.scan_score,
            "grid": c.grid,
            "groups": {str(g.optics_group): {
                "cs_at_calibrated_pixel_sigma_mm": g.cs_at_calibrated_pixel_sigma_mm,
                "defocus_offset_at_calibrated_pixel_A": g.defocus_offset_at_calibrated_pixel_A,
                "defocus_scale": g.defocus_scale, "kind": g.kind} for g in groups},
        },
    }
