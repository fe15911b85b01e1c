"""The calibration's phases in order: inputs checked, the region planned, the maps prepared, the
scale searched, the model checked as a ruler, the uncertainty measured, the result assembled.

Refusal (:class:`csrefine.errors.InputError`, never a wrong number)
------------------------------------------------------------------
* the model's atoms fall outside the map box;
* the model does not cover the masked density: ``coverage`` (the fraction of the significant,
  low-passed masked map density (> 3 noise sigma, 8 A low-pass) lying within ``envelope_A`` of an
  atom) is below ``min_coverage`` (0.5);
* the model is not docked: ``relative_correlation`` < ``min_relative_correlation`` (0.35), or the
  best translation lies on the search limit, or the best scale lies on the scan's edge, or the
  curvature sigma exceeds 1% (no clear optimum).
"""

from __future__ import annotations

import numpy as np

from ..atomic_map import centroid_A
from ..errors import InputError
from .model_maps import MODEL_OVERSAMPLING, ModelMaps
from .records import CalibrationSettings, PixelCalibration
from .region import docked_voxels, model_mask, region_cube
from .search import Matcher, ScaleFit, fit_scale
from .target import MatchMaps, match_maps
from .uncertainty import Uncertainty, curvature_sigma, uncertainty


def _checked_inputs(half1, half2, pixel_size_A, mask, structure, origin_A) -> tuple:
    """(half1, half2, pixel size in Å, the atoms in map voxels, mask) after the checks: cubic
    maps of equal shape, a positive pixel, the model docked in the box, the mask of the maps'
    shape (default: :func:`model_mask` around the model)."""
    half1, half2 = np.asarray(half1), np.asarray(half2)
    if half1.ndim != 3 or len(set(half1.shape)) != 1 or half1.shape != half2.shape:
        raise InputError(f"half maps must be cubic and of equal shape, got {half1.shape} and "
                         f"{half2.shape}")
    if not pixel_size_A or pixel_size_A <= 0:
        raise InputError(f"pixel size must be positive, got {pixel_size_A}")
    atoms = docked_voxels(structure, half1.shape[0], float(pixel_size_A), origin_A)
    if mask is None:
        mask = model_mask(structure, half1.shape[0], float(pixel_size_A), origin_A=origin_A)
    mask = np.asarray(mask)
    if mask.shape != half1.shape:
        raise InputError(f"mask shape {mask.shape} differs from the half maps' {half1.shape}")
    return half1, half2, float(pixel_size_A), atoms, mask


def _matcher(structure, maps: MatchMaps, pixel_size_A: float, origin_A,
             settings: CalibrationSettings) -> Matcher:
    """The model maps and the search on the cropped grid (voxel ``pixel_size_A`` * q, Å)."""
    plan = maps.plan
    q = plan.coarse_voxel
    centre = (centroid_A(structure) - np.asarray(origin_A, float))[::-1] / pixel_size_A
    centre = (centre - np.asarray(plan.start_zyx, float)) / q
    models = ModelMaps(structure, maps.grid, plan, pixel_size_A * q, centre,
                       settings.b_model_A2, MODEL_OVERSAMPLING if settings.crop else 1.0)
    return Matcher(models, maps.band, settings.max_shift_A)


def _refuse(why: str):
    raise InputError(f"the atomic model does not match this map ({why}); it is not docked, or "
                     f"it is a model of something else: the pixel size cannot be calibrated "
                     f"against it")


def _check_ruler(matcher: Matcher, maps: MatchMaps, fit: ScaleFit,
                 settings: CalibrationSettings) -> tuple[float, float]:
    """Refuse a model that is not docked or has no clear optimum; returns (the score as a
    fraction of what a perfect docked model would give, the curvature sigma in Å of the cropped
    grid)."""
    rel = fit.score / maps.expected if maps.expected > 0 else 0.0
    if rel < settings.min_relative_correlation:
        _refuse(f"weighted model-map correlation {fit.score:.3f} is {100 * rel:.0f}% of the "
                f"{maps.expected:.3f} a docked model would give; minimum "
                f"{100 * settings.min_relative_correlation:.0f}%")
    if fit.shift_on_edge:
        _refuse(f"the best translation lies at the {settings.max_shift_A:.0f} Å search limit")
    if fit.best_index in (0, fit.scales.size - 1):
        _refuse(f"the best pixel size lies at the edge of the ±{100 * settings.scan_range:.0f}% "
                f"scan")
    sig_curv = curvature_sigma(matcher, maps.average, fit.pixel_A, fit.shift_vox)
    if not np.isfinite(sig_curv) or sig_curv > settings.max_sigma_rel * matcher.p_nom:
        _refuse("the match score has no clear optimum in pixel size")
    return rel, sig_curv


def _result(box: int, p_nom: float, matcher: Matcher, maps: MatchMaps, fit: ScaleFit, rel: float,
            unc: Uncertainty, settings: CalibrationSettings) -> PixelCalibration:
    """The record, every length back at the map's pixel (the cropped grid's voxel is q map
    voxels); box : the maps' side, voxels."""
    plan = maps.plan
    q = plan.coarse_voxel
    b_fit, cc_rs = matcher.fit_blur(maps.average, fit.pixel_A, fit.shift_vox, maps.resolution_A)
    shift_A = [float(v) for v in (fit.shift_vox[::-1] * fit.pixel_A)]
    p_best = fit.pixel_A / q
    return PixelCalibration(
        pixel_size_nominal_A=p_nom, pixel_size_calibrated_A=p_best, pixel_size_sigma_A=unc.sigma,
        sigma_curvature_A=float(unc.curvature), sigma_halves_A=float(unc.halves),
        pixel_size_half1_A=float(unc.half_pixels[0]), pixel_size_half2_A=float(unc.half_pixels[1]),
        correlation=float(fit.score), correlation_expected=maps.expected,
        relative_correlation=float(rel), real_space_correlation=cc_rs,
        b_factor_A2=b_fit, shift_A=shift_A, coverage=maps.coverage,
        resolution_A=maps.resolution_A, band_A=[float(settings.low_res_A), maps.resolution_A],
        scan_pixel_size_A=[float(v) for v in p_nom * fit.scales],
        scan_score=[float(v) for v in fit.scan],
        sigma_systematic_A=float(settings.systematic_rel * p_best),
        grid={"box": box, "cube_box": plan.cube_box, "fourier_box": plan.fourier_box,
              "model_box": matcher.models.model_box, "cube_start_zyx": list(plan.start_zyx)},
        sigma_half1_A=float(unc.half_sigmas[0]), sigma_half2_A=float(unc.half_sigmas[1]))


def calibrate_pixel_size(half1: np.ndarray, half2: np.ndarray, pixel_size_A: float, structure, *,
                         mask: np.ndarray | None = None, fsc: np.ndarray | None = None,
                         origin_A=(0.0, 0.0, 0.0), settings: CalibrationSettings | None = None,
                         progress=None) -> PixelCalibration:
    """Pixel size of the half maps (nominal ``pixel_size_A``, Å) calibrated against ``structure``.

    Parameters
    ----------
    half1, half2 : numpy.ndarray
        Half maps, (box, box, box), [z, y, x].
    pixel_size_A : float
        Their nominal pixel size, Angstrom.
    structure : gemmi.Structure
        The model docked at the nominal pixel size (see :mod:`csrefine.calibrate.region`).
    mask : numpy.ndarray, optional
        Real-space mask of the maps' shape (default: :func:`model_mask`).
    fsc : numpy.ndarray, optional
        Half-map FSC per shell of the box (default: computed with the mask).
    origin_A : (3,) floats
        The map's origin (x, y, z), Angstrom.
    settings : CalibrationSettings, optional
        How to calibrate (default: ``CalibrationSettings()``).
    progress : callable, optional
        Called with progress lines during the scan.

    Returns
    -------
    PixelCalibration
        Raises InputError when the model cannot serve as a ruler (see the module docstring).
    """
    settings = settings or CalibrationSettings()
    half1, half2, p_nom, atoms, mask = _checked_inputs(half1, half2, pixel_size_A, mask, structure,
                                                       origin_A)
    box = half1.shape[0]
    start, side = region_cube(mask, atoms, p_nom, settings.max_shift_A, settings.scan_range,
                              settings.crop)
    maps = match_maps(half1, half2, mask, fsc, start, side, atoms, p_nom, settings)
    matcher = _matcher(structure, maps, p_nom, origin_A, settings)
    fit = fit_scale(matcher, maps.average, maps.resolution_A, settings, progress)
    rel, sig_curv = _check_ruler(matcher, maps, fit, settings)
    unc = uncertainty(matcher, maps.halves, fit.pixel_A, sig_curv, settings.scan_step,
                      settings.systematic_rel, maps.plan.coarse_voxel)
    return _result(box, p_nom, matcher, maps, fit, rel, unc, settings)
