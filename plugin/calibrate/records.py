"""The calibration's records: its settings, the map's calibrated pixel size, each optics group
re-expressed at it, and their entries of csrefine.json."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class CalibrationSettings:
    """How the pixel size is calibrated (defaults: the values the benchmarks were measured with)."""

    scan_range: float = 0.05  # half-width of the coarse scan of p / p_nom (0.05 = ±5%)
    scan_step: float = 0.0025  # its step (0.0025 = 0.25%)
    low_res_A: float = 20.0  # low-resolution end of the band the match uses, Å
    max_shift_A: float = 6.0  # radius of the rigid-body translation search, Å
    b_model_A2: float = 20.0  # B-factor of the model maps before the blur is fitted, Å^2
    # refuse the model when its weighted correlation is below this fraction of a perfect
    # docked model's, or when it covers less than min_coverage of the significant masked
    # density (density within envelope_A, Å, of an atom counts as covered)
    min_relative_correlation: float = 0.35
    min_coverage: float = 0.5
    envelope_A: float = 6.0
    max_sigma_rel: float = 0.01  # refuse when the curvature sigma exceeds this fraction of p
    # relative systematic floor added to the sigma in quadrature (the method's bias on
    # simulated relion_project data was <= 0.01%)
    systematic_rel: float = 1e-4
    # work on the cube around the mask, Fourier cropped to the band (cost and memory follow the
    # mask's size and the resolution, not the box); False: the whole box at every frequency
    # (the reference the cropped calibration is tested against)
    crop: bool = True


@dataclass
class PixelCalibration:
    """Pixel size of a map calibrated against a docked atomic model (all lengths in Angstrom)."""

    pixel_size_nominal_A: float
    pixel_size_calibrated_A: float
    pixel_size_sigma_A: float
    sigma_curvature_A: float
    sigma_halves_A: float
    pixel_size_half1_A: float
    pixel_size_half2_A: float
    correlation: float              # weighted whitened correlation (score) at the optimum
    correlation_expected: float     # what a perfect docked model would give
    relative_correlation: float     # correlation / correlation_expected
    real_space_correlation: float   # band-limited unwhitened correlation with the fitted blur
    b_factor_A2: float              # model B-factor that best matches the map
    shift_A: list                   # rigid-body translation (x, y, z) refined at the optimum
    coverage: float                 # fraction of the masked map density covered by the model
    resolution_A: float             # FSC = 0.143 limit used for the weights
    band_A: list                    # [low_res_A, resolution_A]
    scan_pixel_size_A: list = field(default_factory=list, repr=False)
    scan_score: list = field(default_factory=list, repr=False)
    sigma_systematic_A: float = 0.0  # the systematic floor; sigma is the three in quadrature
    grid: dict = field(default_factory=dict, repr=False)  # box, cube_box, fourier_box, model_box
    sigma_half1_A: float | None = None  # each half map's sigma: curvature and floor (None: unknown)
    sigma_half2_A: float | None = None

    @property
    def relative_error(self) -> float:
        """p_calibrated / p_nominal - 1 (dimensionless)."""
        return self.pixel_size_calibrated_A / self.pixel_size_nominal_A - 1.0


@dataclass
class GroupCalibration:
    """One optics group re-expressed at the calibrated pixel size.

    cs_at_calibrated_pixel_mm, cs_at_calibrated_pixel_sigma_mm : Cs * r^4 and its sigma, mm
    (sigma None where the group was not refined); defocus_offset_at_calibrated_pixel_A : the
    refined defocus offset * r^2, Angstrom; defocus_scale : r^2 (multiply the data's defoci by
    it); kind : see :func:`csrefine.calibrate.verdict.group_verdict`; pixel_size_A,
    pixel_size_sigma_A : the map's calibration scaled to the group's nominal pixel size, Å;
    pixel_status : what the calibration says about the pixel size, in words.
    """

    optics_group: int
    cs_at_calibrated_pixel_mm: float
    cs_at_calibrated_pixel_sigma_mm: float | None
    defocus_offset_at_calibrated_pixel_A: float
    defocus_scale: float
    kind: str
    pixel_size_A: float
    pixel_size_sigma_A: float
    pixel_status: str


def calibration_json(calibration: PixelCalibration, groups: list[GroupCalibration],
                     verdicts: dict[int, str]) -> dict:
    """The csrefine.json keys: pixel_size_calibrated_A, pixel_size_sigma_A (Å) and, per optics
    group (keyed by the group number as a string), cs_at_calibrated_pixel_mm and its verdict
    (``verdicts``, by group number); plus the details under ``pixel_calibration``."""
    c = calibration
    return {
        "pixel_size_calibrated_A": c.pixel_size_calibrated_A,
        "pixel_size_sigma_A": c.pixel_size_sigma_A,
        "cs_at_calibrated_pixel_mm": {str(g.optics_group): g.cs_at_calibrated_pixel_mm
                                      for g in groups},
        "verdict": {str(g.optics_group): verdicts[g.optics_group] for g in groups},
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
