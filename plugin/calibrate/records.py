"""The calibration's records: its settings, the map's calibrated pixel size, each optics group
re-expressed at it."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from ..fsc import FSC_THRESHOLD


@dataclass(frozen=True)
class CalibrationSettings:
    """How the pixel size is calibrated (defaults: the values the benchmarks were measured with).

    Attributes
    ----------
    scan_range : float
        Half-width of the coarse scan of the scale p / p_nom (dimensionless; 0.05 = +-5%).
    scan_step : float
        Step of the coarse scan (dimensionless; 0.0025 = 0.25%).
    low_res_A : float
        Low-resolution end of the band the match uses, Angstrom.
    max_shift_A : float
        Radius of the rigid-body translation search, Angstrom.
    b_model_A2 : float
        B-factor of the model maps before the blur is fitted, Angstrom^2.
    min_relative_correlation : float
        Refuse the model when its weighted correlation is below this fraction of a perfect
        docked model's.
    min_coverage : float
        Refuse the model when it covers less than this fraction of the significant masked density.
    envelope_A : float
        Density within this distance of an atom counts as covered, Angstrom.
    max_sigma_rel : float
        Refuse when the curvature sigma exceeds this fraction of the pixel size (no clear optimum).
    fsc_threshold : float
        FSC value that sets the band's high-resolution end.
    systematic_rel : float
        Relative systematic floor added in quadrature to the sigma (1e-4: the method's bias on
        simulated relion_project data was <= 0.01%).
    crop : bool
        Work on the cube around the mask, Fourier cropped to the band (cost and memory follow the
        mask's size and the resolution, not the box); False: the whole box at every frequency
        (the reference the cropped calibration is tested against).
    """

    scan_range: float = 0.05
    scan_step: float = 0.0025
    low_res_A: float = 20.0
    max_shift_A: float = 6.0
    b_model_A2: float = 20.0
    min_relative_correlation: float = 0.35
    min_coverage: float = 0.5
    envelope_A: float = 6.0
    max_sigma_rel: float = 0.01
    fsc_threshold: float = FSC_THRESHOLD
    systematic_rel: float = 1e-4
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

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class GroupCalibration:
    """One optics group re-expressed at the calibrated pixel size.

    cs_at_calibrated_pixel_mm, cs_at_calibrated_pixel_sigma_mm : Cs * r^4 and its sigma, mm
    (sigma None where the group was not refined); defocus_offset_at_calibrated_pixel_A : the
    refined defocus offset * r^2, Angstrom; defocus_scale : r^2 (multiply the data's defoci by
    it); kind : see :func:`csrefine.calibrate.verdict.group_verdict`; verdict : one line.
    """

    optics_group: int
    cs_at_calibrated_pixel_mm: float
    cs_at_calibrated_pixel_sigma_mm: float | None
    defocus_offset_at_calibrated_pixel_A: float
    defocus_scale: float
    kind: str
    verdict: str
