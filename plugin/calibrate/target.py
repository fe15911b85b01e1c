"""The experimental side of the match: the band, the masked half maps on the cropped grid, whitened
per shell with their weights and noise, and the model's coverage of the density.

Match score
-----------
Both maps are Fourier transformed (the experimental map masked; the model map is compact and is
not masked), whitened per Fourier shell (each shell scaled to unit mean power) and compared with
shell weights ``W(s)``: ``score = sum_s W(s) n(s) rho(s) / sum_s W(s) n(s)``, the weighted mean of
the per-shell correlations ``rho(s)`` (a weighted model-map FSC). ``W(s) = sqrt(2 FSC/(1+FSC))``
(the expected correlation of the half-map average with the true object, from the half-map FSC) for
the average map and ``sqrt(FSC)`` for a single half map, between ``low_res_A`` and the FSC = 0.143
resolution, zero elsewhere. Per-shell whitening makes the score independent of the model's
B-factor. A perfect, correctly docked model has ``rho(s) ~ W(s)``, so ``score / expected``
(``expected`` = the same weighted mean of ``W``) is ~1.

The masked half maps are transformed once, axis by axis (:func:`csrefine.fourier.fourier_crop`);
everything after runs on the cropped grid, whose voxel is p * cube/cropped.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.fft
from scipy import ndimage

from ..errors import InputError
from ..fourier import even_fast, fourier_crop
from ..fsc import FSC_THRESHOLD, fsc_curve, resolution_at_threshold
from .records import CalibrationSettings
from .region import BAND_MARGIN_SHELLS, CropPlan

#: Low-pass (Å, amplitude 0.5) of the density whose coverage by the model is measured.
COVERAGE_LOWPASS_A = 8.0
#: Density above this many noise standard deviations counts for the coverage.
COVERAGE_SIGMA = 3.0


class FourierGrid:
    """rfftn bookkeeping of a cubic grid of side ``box``: frequencies (cycles/voxel), shells
    (rounded radius in voxels; the corners beyond Nyquist in one overflow bin), Friedel weights
    ``fw`` (2 for coefficients standing for a conjugate pair, else 1) and weighted shell counts."""

    def __init__(self, box: int):
        self.box = box
        kz = np.fft.fftfreq(box)[:, None, None]
        ky = np.fft.fftfreq(box)[None, :, None]
        kx = np.fft.rfftfreq(box)[None, None, :]
        shape = (box, box, box // 2 + 1)
        self.k = [np.broadcast_to(kz, shape), np.broadcast_to(ky, shape), np.broadcast_to(kx, shape)]
        self.kz, self.ky, self.kx = kz, ky, kx
        self.k2 = kz**2 + ky**2 + kx**2  # cycles/voxel squared
        self.shell = np.rint(np.sqrt(self.k2) * box).astype(np.int64)
        fw = np.full(shape, 2.0)
        fw[..., 0] = 1.0
        if box % 2 == 0:
            fw[..., -1] = 1.0
        self.fw = fw
        self.nshell = box // 2 + 1
        inside = self.shell < self.nshell
        self.shell_c = np.where(inside, self.shell, self.nshell)  # overflow bin for corners
        self.count = np.bincount(self.shell_c.ravel(), fw.ravel(), minlength=self.nshell + 1)

    def shell_mean(self, values: np.ndarray) -> np.ndarray:
        """Friedel-weighted mean of ``values`` (rfftn layout) per shell, shape (nshell + 1,)."""
        s = np.bincount(self.shell_c.ravel(), (self.fw * values).ravel(), minlength=self.nshell + 1)
        return s / np.maximum(self.count, 1e-300)

    def phase(self, shift_zyx) -> np.ndarray:
        """exp(-2 pi i k.t): translation of a map by +t voxels (t in z, y, x order)."""
        t = np.asarray(shift_zyx, float)
        return np.exp(-2j * np.pi * (self.kz * t[0] + self.ky * t[1] + self.kx * t[2]))


class Band:
    """The cropped grid's coefficients where the shell weights are non-zero (the same shells for
    the average and the half maps): the search's products run over them only, so each target
    and each model map keeps just these, flat.

    flat : their indices in the flattened rfftn layout; index : (iz, iy, ix); kmat : (3, n)
    frequencies (kz, ky, kx), cycles/voxel; fw : Friedel weights; shell : shells (n,).
    """

    def __init__(self, grid: FourierGrid, weight_shell: np.ndarray):
        inside = np.append(weight_shell, 0.0)[grid.shell_c] > 0
        self.flat = np.flatnonzero(inside)
        self.index = tuple(i.astype(np.int32) for i in np.unravel_index(self.flat, inside.shape))
        self.kmat = np.stack([k[inside] for k in grid.k])
        self.fw = grid.fw[inside]
        self.shell = grid.shell_c[inside]
        self.k_1d = (grid.kz.ravel(), grid.ky.ravel(), grid.kx.ravel())

    def whitened(self, grid: FourierGrid, ft: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(the band's coefficients of ``ft`` (rfftn layout on ``grid``), each shell of the whole
        grid scaled to unit mean power (an empty shell to 0); the shell powers before,
        (nshell + 1,))."""
        power = grid.shell_mean(np.abs(ft) ** 2)
        scale = 1.0 / np.sqrt(np.maximum(power, 1e-300))
        scale[power <= 0] = 0.0
        return ft.ravel()[self.flat] * scale[self.shell], power

    def phase(self, t_zyx) -> np.ndarray:
        """exp(-2 pi i k.t) over the band (translation by +t voxels), from three 1D factors."""
        pz, py, px = (np.exp(-2j * np.pi * k * tt)
                      for k, tt in zip(self.k_1d, t_zyx))
        iz, iy, ix = self.index
        return pz[iz] * py[iy] * px[ix]


class Target:
    """One experimental map (average or a half), whitened, with its shell weights, on the band.

    ft : rfftn of the masked map on ``grid`` (Fourier cropped), kept as :attr:`ft` only with
    ``keep_ft`` (the average's, for the model's blur); weight_shell, noise_power_shell : per
    shell of the grid; mask_ms : mean square of the mask over the real-space cube. Per band
    coefficient: ``w_b`` the weight, ``noise_var_b`` the noise variance of the whitened map,
    ``white_w_b`` the whitened map times the weight, ``white_w_fw_b`` its conjugate times the
    Friedel weight.
    """

    def __init__(self, grid: FourierGrid, band: Band, ft: np.ndarray, weight_shell: np.ndarray,
                 noise_power_shell: np.ndarray, mask_ms: float, keep_ft: bool = False):
        ft = np.asarray(ft, dtype=np.complex128)
        self.band = band
        self.ft = ft if keep_ft else None
        white_b, power = band.whitened(grid, ft)
        self.w_b = np.append(weight_shell, 0.0)[band.shell]
        self.norm = float(np.sum(band.fw * self.w_b))
        v = np.append(noise_power_shell / np.maximum(power[:-1], 1e-300), 0.0)
        self.noise_var_b = np.clip(v, 0.0, 1.0)[band.shell] / max(mask_ms, 1e-6)
        self.white_w_b = white_b * self.w_b
        self.white_w_fw_b = np.conj(self.white_w_b) * band.fw


def _fsc_on_cube(cubes, fsc, box: int, side: int, pixel_size_A: float):
    """(resolution_A, the half-map FSC on the cube's shells): measured with the mask on the
    cube, or the given per-shell FSC of the whole box interpolated to the cube's shells."""
    if fsc is None:
        fsc_cube = fsc_curve(cubes[0], cubes[1], cubes[2])
        return resolution_at_threshold(fsc_cube, side, pixel_size_A), fsc_cube
    fsc = np.asarray(fsc, dtype=np.float64)[: box // 2 + 1]
    fsc = np.pad(fsc, (0, box // 2 + 1 - fsc.size))
    resolution = resolution_at_threshold(fsc, box, pixel_size_A)
    # the same frequencies on the cube's shells (shell s: s / (side * p_nom) per A)
    return resolution, np.interp(np.arange(side // 2 + 1) * box / side, np.arange(fsc.size), fsc)


def _band(cubes, fsc, box: int, start_zyx, side: int, pixel_size_A: float,
          settings: CalibrationSettings) -> tuple[float, CropPlan, np.ndarray, np.ndarray]:
    """The band between ``settings.low_res_A`` and the FSC threshold: (the FSC-threshold
    resolution in Å, the crop plan that holds the band, W(s) for the average and for a half map
    per shell of the cropped grid, zero outside the band). Raises InputError when it spans
    fewer than three shells."""
    resolution, fsc_cube = _fsc_on_cube(cubes, fsc, box, side, pixel_size_A)
    s_max = side * pixel_size_A / resolution
    # the cropped grid holds the band with BAND_MARGIN_SHELLS to spare
    nf = even_fast(2 * (np.ceil(s_max) + BAND_MARGIN_SHELLS), side) if settings.crop else side
    plan = CropPlan(start_zyx, side, nf)
    shells = np.arange(nf // 2 + 1)
    s_min = side * pixel_size_A / settings.low_res_A
    inband = (shells >= max(s_min, 1.0)) & (shells <= s_max + 1e-9)
    if inband.sum() < 3:
        raise InputError(f"the half maps' resolution ({resolution:.1f} Å) leaves too few Fourier "
                         f"shells between {settings.low_res_A:.0f} Å and the "
                         f"FSC={FSC_THRESHOLD} limit to calibrate the pixel size")
    f = np.clip(fsc_cube[: nf // 2 + 1], 0.0, 0.999)
    return (float(resolution), plan, np.where(inband, np.sqrt(2 * f / (1 + f)), 0.0),
            np.where(inband, np.sqrt(f), 0.0))


def coverage(grid: FourierGrid, avg_ft: np.ndarray, diff_ft: np.ndarray, mask: np.ndarray,
             atoms_zyx: np.ndarray, pixel_A: float, envelope_A: float) -> float:
    """Fraction of the significant low-passed masked density lying within envelope_A of an atom.

    avg_ft, diff_ft : transforms of the masked half-map average and half difference on ``grid``;
    mask : the mask on the same grid (voxel ``pixel_A``, Angstrom); atoms_zyx : atom positions
    in its voxels, (n, 3). Significant: more than :data:`COVERAGE_SIGMA` noise standard
    deviations above the solvent after a :data:`COVERAGE_LOWPASS_A` low-pass.
    """
    box = grid.box
    b_lp = 4.0 * np.log(2.0) * COVERAGE_LOWPASS_A**2  # amplitude 0.5 at 8 A
    filt = np.exp(-b_lp * grid.k2 / pixel_A**2 / 4.0)
    avg = scipy.fft.irfftn(avg_ft * filt, s=(box,) * 3)
    diff = scipy.fft.irfftn(diff_ft * filt, s=(box,) * 3)
    inside = mask > 0.5
    outside = mask < 0.01
    baseline = float(np.median(avg[outside])) if outside.sum() > 1000 else 0.0
    noise = float(np.std(diff[inside])) if inside.any() else 0.0
    sig = np.where(inside & (avg - baseline > COVERAGE_SIGMA * noise), avg - baseline, 0.0)
    total = float(sig.sum())
    if total <= 0:
        return 0.0
    idx = np.rint(atoms_zyx).astype(np.int64)
    keep = ((idx >= 0) & (idx < box)).all(axis=1)
    occ = np.ones((box,) * 3, dtype=bool)
    occ[tuple(idx[keep].T)] = False
    env = ndimage.distance_transform_edt(occ) * pixel_A <= envelope_A
    return float(sig[env].sum() / total)


@dataclass
class MatchMaps:
    """The experimental maps as the search uses them (on the cropped grid).

    resolution_A : the FSC-threshold resolution, Angstrom; plan : the cube and its Fourier crop;
    grid : the cropped grid's bookkeeping; band : the coefficients the score uses; average,
    halves : the targets of the half-map average and of each half map; expected : the score a
    perfect docked model would give against the average; coverage : fraction of the significant
    masked density the model covers.
    """

    resolution_A: float
    plan: CropPlan
    grid: FourierGrid
    band: Band
    average: Target
    halves: tuple[Target, Target]
    expected: float
    coverage: float


def match_maps(half1, half2, mask, fsc, start_zyx, side: int, atoms_xyz_vox: np.ndarray,
               pixel_size_A: float, settings: CalibrationSettings) -> MatchMaps:
    """The masked half maps on the cube, Fourier cropped to the band, whitened as targets.

    half1, half2, mask : (box, box, box) [z, y, x]; fsc : the half-map FSC per shell of the box
    or None (measured with the mask); atoms_xyz_vox : the atoms in map voxels (n, 3), x/y/z
    order. Raises InputError when the band is too narrow or the model covers too little of the
    masked density.
    """
    box = half1.shape[0]
    cube = tuple(slice(s, s + side) for s in start_zyx)
    cubes = [a[cube].astype(np.float32) for a in (half1, half2, mask)]
    resolution, plan, w_average, w_half = _band(cubes, fsc, box, start_zyx, side, pixel_size_A,
                                                settings)
    nf, q = plan.fourier_box, plan.coarse_voxel
    mask_cube = cubes[2]
    fts = [fourier_crop(c * mask_cube, nf).astype(np.complex128) for c in cubes[:2]]
    mask_ms = float(np.clip(np.mean(mask_cube.astype(np.float64) ** 2), 1e-6, 1.0))
    mask_coarse = ndimage.affine_transform(mask_cube, np.full(3, q), output_shape=(nf,) * 3,
                                           order=1, mode="nearest")
    del cubes, mask_cube
    atoms_coarse = (atoms_xyz_vox[:, ::-1] - np.asarray(plan.start_zyx, float)) / q
    grid = FourierGrid(nf)
    avg_ft, diff_ft = 0.5 * (fts[0] + fts[1]), 0.5 * (fts[0] - fts[1])
    covered = coverage(grid, avg_ft, diff_ft, mask_coarse, atoms_coarse, pixel_size_A * q,
                       settings.envelope_A)
    if covered < settings.min_coverage:
        raise InputError(f"the atomic model covers only {100 * covered:.0f}% of the map density "
                         f"inside the mask (minimum {100 * settings.min_coverage:.0f}%): it is not "
                         f"a model of this map (or of this masked region); the pixel size cannot "
                         f"be calibrated against it")
    # noise power per shell of the average map (D = (h1 - h2)/2 has the same noise power)
    noise_avg = grid.shell_mean(np.abs(diff_ft) ** 2)[:-1]
    del diff_ft
    band = Band(grid, np.maximum(w_average, w_half))
    average = Target(grid, band, avg_ft, w_average, noise_avg, mask_ms, keep_ft=True)
    halves = tuple(Target(grid, band, ft, w_half, 2.0 * noise_avg, mask_ms) for ft in fts)
    del fts, avg_ft
    w = w_average
    expected = float(np.sum(grid.count[:-1] * w * w) / np.sum(grid.count[:-1] * w))
    return MatchMaps(resolution, plan, grid, band, average, halves, expected, covered)
