"""Calibrate the map's pixel size against a docked atomic model: tell a pixel-size error from a Cs error.

A CTF fit cannot tell Cs from the pixel size: if the true pixel size is ``p_true`` but the data
say ``p_nom``, a fit returns Cs * (p_nom/p_true)^4 and defocus * (p_nom/p_true)^2. An atomic model
(true bond geometry, Angstrom) docked in the map is an absolute ruler: the map is the true object
sampled at ``p_true`` and a model map computed at a trial pixel size ``p`` matches it best when
``p = p_true``.

Geometry and docking convention
-------------------------------
Maps are indexed [z, y, x]; a model coordinate ``x`` (Angstrom, x/y/z order) was docked at the
*nominal* pixel size, i.e. it sits at voxel ``(x - origin_A) / p_nom`` (``origin_A`` is the MRC
header origin, zero for RELION maps). Docking (e.g. in ChimeraX) places the model's centre right;
what a wrong pixel size changes is the *scale* about that centre. So every trial map is built with
the model's centroid ``c`` at its docked voxel ``(c - origin_A)/p_nom`` and the other atoms at
``(x - c)/p`` from it: the scale is fitted about the docked model centroid (equivalent to scaling
about the box centre followed by a translation), and a small rigid-body translation ``t`` (searched
globally within ``max_shift_A`` by FFT, then polished by Newton steps) is refined at each trial
pixel size. Rotation is not refined: a docked model is assumed correctly oriented (a wrong
orientation is detected and refused, see below).

Match score
-----------
Both maps are Fourier transformed (the experimental map masked; the model map is compact and is
not masked), whitened per Fourier shell (each shell scaled to unit mean power) and compared with
shell weights ``W(s)``: ``score = sum_s W(s) n(s) rho(s) / sum_s W(s) n(s)``, the weighted mean of
the per-shell correlations ``rho(s)`` (a weighted model-map FSC). ``W(s) = sqrt(2 FSC/(1+FSC))``
(the expected correlation of the half-map average with the true object, from the half-map FSC) for
the average map and ``sqrt(FSC)`` for a single half map, between ``low_res_A`` and the FSC = 0.143
resolution, zero elsewhere. Per-shell whitening makes the score independent of the model's B-factor,
so the blur is fitted separately (at the optimum, by maximising the band-limited unwhitened
correlation) and reported with that correlation (``real_space_correlation``).

A perfect, correctly docked model has ``rho(s) ~ W(s)``, so ``score / expected`` (``expected`` =
the same weighted mean of ``W``) is ~1; ``relative_correlation`` reports that ratio.

Cost: the information used, not the box
---------------------------------------
The match uses only the masked density and the frequencies of the band, so the calibration works
on (:class:`CropPlan`) the smallest FFT-friendly cube holding the mask's support and the atoms
plus a margin (translation search + the scan's excursion + :data:`CROP_MARGIN_A`), Fourier
cropped to the band's highest shell plus :data:`BAND_MARGIN_SHELLS` (frequency index j keeps its
frequency j / (cube * p)). The masked half maps are transformed once, axis by axis
(:func:`csrefine.fourier.fourier_crop`); everything after runs on the cropped grid, whose voxel is
p * cube/cropped: the trial pixel sizes there are the map's times that factor, and the results
are scaled back. Model maps are computed on a grid :data:`MODEL_OVERSAMPLING` times finer than
the cropped one (at most the map's own sampling) with an extra blur that keeps aliased power
below :data:`MODEL_ALIAS_FRACTION`, transformed, cropped and un-blurred; the coarse scan, which
only brackets the refinement (:data:`SCAN_BRACKET_STEPS` either side of its best point), uses
model maps on the cropped grid itself. Cost and memory thus
follow the mask's size and the resolution: a box-400 map of a 100 A particle at 3.5 A is matched
on a grid of ~64^3 instead of 400^3. ``crop=False`` runs the whole box at every frequency (the
reference the tests compare against).

Search: a coarse scan of the scale ``p/p_nom`` over +-``scan_range`` (default 5%, 0.25% steps) on
the half-map average, then Brent's method between the neighbours of the best scan point. Each half
map is refined the same way (Brent around the average map's optimum).

Uncertainty
-----------
* ``sigma_halves``: |p_half1 - p_half2| / 2, the standard error of the mean of two independent
  estimates (noise only).
* ``sigma_curvature``: sandwich estimate sigma_p = sd(score') / |score''| at the optimum, with
  ``score''`` from finite differences and ``sd(score')`` from the per-coefficient noise variance,
  measured from the half-map difference (h1 - h2)/2, and the derivative of the whitened model map
  with respect to p (masking correction: the noise variance is divided by the mask's mean square,
  because the derivative template lies inside the mask).
* ``pixel_size_sigma_A`` = sqrt(sigma_curvature^2 + sigma_halves^2 + (systematic_rel p)^2), with
  a systematic floor ``systematic_rel`` = 0.01% (the bias measured on relion_project simulations,
  benchmarks/bench_calibration.py, was +0.005% and +0.009% on one simulation at box 128, +0.010%
  and +0.013% on another (whole box: +0.009%, +0.013%), +0.0004% and -0.0003% at box 192 and 256).
None of these includes errors of the model itself (a model whose geometry is off by x% biases the
ruler by x%).

Refusal (:class:`csrefine.errors.InputError`, never a wrong number)
------------------------------------------------------------------
* the model's atoms fall outside the map box;
* the model does not cover the masked density: ``coverage`` (the fraction of the significant,
  low-passed masked map density (> 3 noise sigma, 8 A low-pass) lying within ``envelope_A`` of an
  atom) is below ``min_coverage`` (0.5);
* the model is not docked: ``relative_correlation`` < ``min_relative_correlation`` (0.35), or the
  best translation lies on the search limit, or the best scale lies on the scan's edge, or the
  curvature sigma exceeds 1% (no clear optimum).

Cs and defocus at the calibrated pixel size
-------------------------------------------
With r = p_cal / p_nom: Cs_true = Cs_refined * r^4, defocus_true = defocus * r^2
(:func:`reexpress_cs_defocus`). :func:`group_verdict` splits the refined Cs departure
D = Cs_refined - Cs_nominal into the pixel-size part D_pix = Cs_refined - Cs_at_cal
(sigma 4 Cs_refined r^3 sigma_p / p_nom) and the Cs part D_cs = Cs_at_cal - Cs_nominal (sigma from
the refined Cs sigma and the pixel sigma); each is significant if it exceeds ``n_sigma`` (2) times
its sigma *and* a practical floor ``floor_mm`` (0.01 mm). Verdict: "pixel size", "Cs", "both" or
"neither".

Entry points: :func:`calibrate_pixel_size` (arrays + gemmi Structure) and
:func:`apply_calibration` (group result dicts -> the csrefine.json keys).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field

import numpy as np
import scipy.fft
from scipy import ndimage, optimize

from .atomic_map import density_map
from .errors import InputError
from .fourier import crop_rfftn, fourier_crop
from .fsc import FSC_THRESHOLD, fsc_curve, resolution_at_threshold

__all__ = ["PixelCalibration", "GroupCalibration", "calibrate_pixel_size",
           "model_mask", "reexpress_cs_defocus", "group_verdict", "apply_calibration",
           "calibration_json", "atom_positions_A"]


# ----------------------------------------------------------------------------------------------
# Results


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

    @property
    def relative_error(self) -> float:
        return self.pixel_size_calibrated_A / self.pixel_size_nominal_A - 1.0

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class GroupCalibration:
    """One optics group re-expressed at the calibrated pixel size."""

    optics_group: int
    cs_at_calibrated_pixel_mm: float
    cs_at_calibrated_pixel_sigma_mm: float | None
    defocus_offset_at_calibrated_pixel_A: float
    defocus_scale: float            # multiply the data's defoci by this (r^2)
    kind: str                       # "pixel size", "Cs", "both", "neither", "not refined"
    verdict: str


# ----------------------------------------------------------------------------------------------
# Model helpers


def atom_positions_A(structure) -> np.ndarray:
    """Non-hydrogen atom positions (n, 3) in x, y, z order of the first model."""
    pos = [[a.pos.x, a.pos.y, a.pos.z] for ch in structure[0] for res in ch for a in res
           if not a.is_hydrogen()]
    if not pos:
        raise InputError("the atomic model has no (non-hydrogen) atoms")
    return np.asarray(pos, dtype=np.float64)


def centroid_A(structure) -> np.ndarray:
    """Mean non-hydrogen atom position (x, y, z), Å: the centre density_map() docks (it
    removes hydrogens before centring)."""
    return atom_positions_A(structure).mean(axis=0)


def model_mask(structure, box: int, pixel_size_A: float, *, origin_A=(0.0, 0.0, 0.0),
               dilate_A: float = 4.0, edge_A: float = 6.0) -> np.ndarray:
    """Soft mask (float32, [z, y, x]) around the docked model: voxels within ``dilate_A`` of an
    atom (at the nominal pixel size) are 1, with a raised-cosine edge of ``edge_A``.

    The distance transform runs only over the atoms' bounding box plus the mask's reach, so its
    cost and memory follow the model, not the box (the rest of the box is 0)."""
    pos = (atom_positions_A(structure) - np.asarray(origin_A, float)) / pixel_size_A
    idx = np.rint(pos[:, ::-1]).astype(np.int64)
    keep = ((idx >= 0) & (idx < box)).all(axis=1)
    idx = idx[keep]
    out = np.zeros((box,) * 3, dtype=np.float32)
    if idx.size == 0:
        return out
    reach = int(np.ceil((dilate_A + edge_A) / pixel_size_A)) + 1
    lo = np.maximum(idx.min(axis=0) - reach, 0)
    hi = np.minimum(idx.max(axis=0) + reach + 1, box)
    occ = np.ones(tuple(hi - lo), dtype=bool)
    occ[tuple((idx - lo).T)] = False
    dist = ndimage.distance_transform_edt(occ) * pixel_size_A
    x = np.clip((dist - dilate_A) / edge_A, 0.0, 1.0)
    out[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]] = 0.5 + 0.5 * np.cos(np.pi * x)
    return out


# ----------------------------------------------------------------------------------------------
# The information the calibration uses: the mask's region, the band's frequencies

#: Margin (Å) kept around the mask's and the model's extent when the maps are cropped in real
#: space, beyond the translation search and the scale scan's excursion: the model map's tails.
CROP_MARGIN_A = 6.0
#: Fourier shells kept beyond the band's highest shell (rounding of shells, the whitening's
#: neighbourhood); the Nyquist shell of the cropped grid is never in the band.
BAND_MARGIN_SHELLS = 3
#: Model maps are computed on a grid this many times finer than the cropped one, then Fourier
#: cropped: frequencies above its Nyquist fold back only beyond twice the cropped Nyquist.
MODEL_OVERSAMPLING = 1.5
#: Aliased model-map power at the cropped Nyquist is kept below this fraction (an extra blur
#: that is divided out after the transform, see :func:`_antialias_blur_A2`).
MODEL_ALIAS_FRACTION = 1e-3


#: The refinement searches this many scan steps either side of the scan's best point.
SCAN_BRACKET_STEPS = 2


@dataclass(frozen=True)
class CropPlan:
    """Where the calibration looks: a real-space cube around the mask, and its Fourier crop.

    start_zyx : first voxel (z, y, x) of the cube in the map; cube_box : its side (voxels at the
    nominal pixel size); fourier_box : side of the Fourier-cropped grid (frequency index j holds
    j / (cube_box * pixel) per Angstrom on both); coarse_voxel : cube_box / fourier_box, the
    cropped grid's voxel in map voxels.
    """

    start_zyx: tuple
    cube_box: int
    fourier_box: int

    @property
    def coarse_voxel(self) -> float:
        return self.cube_box / self.fourier_box

    def cube(self, volume: np.ndarray) -> np.ndarray:
        """The cube of ``volume`` (a view)."""
        z, y, x = self.start_zyx
        n = self.cube_box
        return volume[z:z + n, y:y + n, x:x + n]


def _even_fast(n: float, limit: int) -> int:
    """Smallest even FFT-friendly size >= n, at most ``limit``."""
    m = int(np.ceil(n))
    while True:
        m = scipy.fft.next_fast_len(m + (m % 2), real=True)
        if m % 2 == 0:
            return min(m, limit)
        m += 1


def crop_cube(mask: np.ndarray, atom_voxels_zyx: np.ndarray, margin_vox: float) -> tuple:
    """(start_zyx, side) of the smallest FFT-friendly cube (even side) holding the mask's support
    and the atoms with ``margin_vox`` voxels around them (the model map's reach), inside the box:
    the masked map is zero beyond the mask, so the transform on the cube is the map's, and the
    model map, shifted within the search, does not wrap onto the map."""
    box = mask.shape[0]
    support = [np.flatnonzero(np.any(mask > 0, axis=tuple(a for a in range(3) if a != ax)))
               for ax in range(3)]
    lo = np.array([s[0] if s.size else box // 2 for s in support], float)
    hi = np.array([s[-1] if s.size else box // 2 for s in support], float)
    if atom_voxels_zyx.size:
        lo = np.minimum(lo, atom_voxels_zyx.min(axis=0) - margin_vox)
        hi = np.maximum(hi, atom_voxels_zyx.max(axis=0) + margin_vox)
    side = _even_fast(float((hi - lo).max()) + 1, box)
    start = np.clip(np.floor((lo + hi) / 2 - side // 2), 0, box - side).astype(int)
    return tuple(int(v) for v in start), int(side)


def fourier_box_for(cube_box: int, shell_max: float) -> int:
    """Side of the Fourier-cropped grid that holds the band up to shell ``shell_max`` (shells of
    the cube) with :data:`BAND_MARGIN_SHELLS` to spare."""
    return _even_fast(2 * (np.ceil(shell_max) + BAND_MARGIN_SHELLS), cube_box)


def _antialias_blur_A2(k_nyquist_per_A: float, b_model_A2: float,
                      oversampling: float = MODEL_OVERSAMPLING) -> float:
    """Extra B-factor (Å^2) for model maps on a grid ``oversampling`` times finer than the
    cropped one (Nyquist ``k_nyquist_per_A`` at the cropped grid): power from beyond the fine
    grid's Nyquist folds into the cropped grid only from 2*os - 1 times its Nyquist, where the
    blurred amplitude is :data:`MODEL_ALIAS_FRACTION` of the amplitude at its Nyquist."""
    fold = (2 * oversampling - 1) ** 2 - 1
    b_total = -4.0 * np.log(MODEL_ALIAS_FRACTION) / (fold * k_nyquist_per_A**2)
    return float(max(b_total - b_model_A2, 0.0))


# ----------------------------------------------------------------------------------------------
# Fourier bookkeeping


class _Grid:
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
        s = np.bincount(self.shell_c.ravel(), (self.fw * values).ravel(), minlength=self.nshell + 1)
        return s / np.maximum(self.count, 1e-300)

    def phase(self, shift_zyx) -> np.ndarray:
        """exp(-2 pi i k.t): translation of a map by +t voxels."""
        t = np.asarray(shift_zyx, float)
        return np.exp(-2j * np.pi * (self.kz * t[0] + self.ky * t[1] + self.kx * t[2]))


def _whiten(grid: _Grid, ft: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    power = grid.shell_mean(np.abs(ft) ** 2)
    scale = 1.0 / np.sqrt(np.maximum(power, 1e-300))
    scale[power <= 0] = 0.0
    return ft * scale[grid.shell_c], power


class _Target:
    """One experimental map (average or a half), whitened, with its shell weights.

    ft : rfftn of the masked map on ``grid`` (Fourier cropped); weight_shell, noise_power_shell :
    per shell of the grid; mask_ms : mean square of the mask over the real-space cube."""

    def __init__(self, grid: _Grid, ft: np.ndarray, weight_shell: np.ndarray,
                 noise_power_shell: np.ndarray, mask_ms: float):
        self.grid = grid
        ft = np.asarray(ft, dtype=np.complex128)
        self.ft = ft
        self.white, power = _whiten(grid, ft)
        w = np.append(weight_shell, 0.0)
        self.w = w[grid.shell_c]
        self.norm = float(np.sum(grid.fw * self.w))
        self.band = self.w > 0
        # noise variance per whitened coefficient
        v = np.append(noise_power_shell / np.maximum(power[:-1], 1e-300), 0.0)
        self.noise_var = np.clip(v, 0.0, 1.0)[grid.shell_c] / max(mask_ms, 1e-6)
        self.weight_shell = weight_shell
        self.band_k = [k[self.band] for k in grid.k]  # (kz, ky, kx) of the band, cycles/voxel
        self.band_kmat = np.stack(self.band_k)         # the same as one (3, n) array
        self.band_flat = np.flatnonzero(self.band)
        self.band_index = np.unravel_index(self.band_flat, self.band.shape)  # (iz, iy, ix)
        white_b = self.white.ravel()[self.band_flat]
        self.white_w_b = white_b * self.w.ravel()[self.band_flat]
        self.white_w_fw_b = np.conj(self.white_w_b) * grid.fw.ravel()[self.band_flat]

    def band_phase(self, t_zyx) -> np.ndarray:
        """exp(-2 pi i k.t) over the band (translation by +t voxels), from three 1D factors."""
        g = self.grid
        pz, py, px = (np.exp(-2j * np.pi * k.ravel() * tt)
                      for k, tt in zip((g.kz, g.ky, g.kx), t_zyx))
        iz, iy, ix = self.band_index
        return pz[iz] * py[iy] * px[ix]


# ----------------------------------------------------------------------------------------------
# Core search


class _Calibrator:
    """The search on the cropped grid. Pixel sizes here are those of the cropped grid's voxel
    (the nominal pixel times :attr:`CropPlan.coarse_voxel`); their ratios are the map's."""

    def __init__(self, structure, plan: CropPlan, p_nom: float, centre_vox_zyx, b_model_A2: float,
                 max_shift_A: float, oversampling: float = MODEL_OVERSAMPLING):
        self.structure = structure
        self.box = plan.fourier_box
        self.p_nom = p_nom
        self.grid = _Grid(self.box)
        self.centre_A = centroid_A(structure)
        self.d_zyx = np.asarray(centre_vox_zyx, float) - self.box // 2
        self.d_phase = self.grid.phase(self.d_zyx)
        self.b_model = b_model_A2
        self.max_shift_vox = max_shift_A / p_nom
        c = np.fft.fftfreq(self.box) * self.box
        r2 = c[:, None, None] ** 2 + c[None, :, None] ** 2 + c[None, None, :] ** 2
        self.window_flat = np.flatnonzero(r2 <= self.max_shift_vox**2)  # translations searched
        # never finer than the map's own sampling (the cube): there the map has all it holds
        self.model_box = max(self.box, _even_fast(self.box * oversampling, plan.cube_box))
        self.k_nyquist_per_A = 0.5 / p_nom
        self.blur_A2 = 0.0
        self._cache: dict[tuple, tuple[np.ndarray, np.ndarray]] = {}
        self.set_b_model(b_model_A2)

    #: True during the coarse scan: model maps on the cropped grid itself (no oversampling; the
    #: scan only brackets the optimum for the refinement, which uses the anti-aliased maps)
    coarse = False

    def set_b_model(self, b_model_A2: float):
        self.b_model = b_model_A2
        if self.model_box > self.box:
            self.blur_A2 = _antialias_blur_A2(self.k_nyquist_per_A, b_model_A2,
                                              self.model_box / self.box)
        self._cache.clear()

    def model_ft(self, p: float) -> tuple[np.ndarray, np.ndarray]:
        """(unwhitened, whitened) FT of the model map at trial pixel p (of the cropped grid),
        centroid at its docked voxel: computed on a grid ``model_box/box`` times finer with the
        anti-alias blur, Fourier cropped, the blur divided out."""
        key = (round(float(p), 10), self.coarse)
        if key not in self._cache:
            model_box, blur_A2 = (self.box, 0.0) if self.coarse else (self.model_box, self.blur_A2)
            m = density_map(self.structure, model_box, p * self.box / model_box,
                            b_factor_A2=self.b_model, centre_A=self.centre_A, blur_A2=blur_A2)
            if model_box > self.box:
                ft = crop_rfftn(scipy.fft.rfftn(m), self.box).astype(np.complex128)
                ft *= np.exp(self.blur_A2 * self.grid.k2 / p**2 / 4.0)
            else:
                ft = scipy.fft.rfftn(m.astype(np.float64))
            ft = ft * self.d_phase
            self._cache[key] = (ft, _whiten(self.grid, ft)[0])
            if len(self._cache) > 6:  # each entry is two complex arrays of the cropped grid
                self._cache.pop(next(iter(self._cache)))
        return self._cache[key]

    def best_shift(self, target: _Target, mw: np.ndarray) -> tuple[float, np.ndarray, bool]:
        """Best translation (voxels, zyx) and score; flag True if on the search limit."""
        # the weights vanish outside the band: products over the band's coefficients only
        mw_b = mw.ravel()[target.band_flat]
        y = np.zeros(mw.shape, dtype=np.complex128)
        y.ravel()[target.band_flat] = (np.conj(mw_b) * target.white_w_b
                                       * (self.box**3 / target.norm))
        cc = scipy.fft.irfftn(y, s=(self.box,) * 3)
        c = np.fft.fftfreq(self.box) * self.box
        lim = self.max_shift_vox
        i = self.window_flat[int(np.argmax(cc.ravel()[self.window_flat]))]
        i = np.unravel_index(int(i), cc.shape)
        t = np.array([c[j] for j in i], dtype=float)
        on_edge = bool(np.sqrt((t**2).sum()) > lim - 1.0)
        # sub-voxel: 3-point parabola per axis, then Newton on the band coefficients
        for ax in range(3):
            ip, im = list(i), list(i)
            ip[ax] = (i[ax] + 1) % self.box
            im[ax] = (i[ax] - 1) % self.box
            f0, fp, fm = cc[i], cc[tuple(ip)], cc[tuple(im)]
            den = fp + fm - 2 * f0
            if den < 0:
                t[ax] += float(np.clip(0.5 * (fm - fp) / den, -0.5, 0.5))
        z0 = mw_b * target.white_w_fw_b
        kmat = target.band_kmat
        for _ in range(3):
            z = z0 * target.band_phase(t)
            # d/dt Re(z) = Re(-2 pi i k z) = 2 pi k Im(z); second: -4 pi^2 k_a k_b Re(z)
            grad = 2 * np.pi * (kmat @ z.imag)
            hess = -4 * np.pi**2 * ((kmat * z.real) @ kmat.T)
            try:
                step = np.linalg.solve(hess, grad)
            except np.linalg.LinAlgError:
                break
            if not np.all(np.linalg.eigvalsh(hess) < 0) or np.abs(step).max() > 1.0:
                break
            t = t - step
            if np.abs(step).max() < 1e-4:
                break
        z = z0 * target.band_phase(t)
        return float(np.sum(z.real) / target.norm), t, on_edge

    def score(self, target: _Target, p: float) -> tuple[float, np.ndarray, bool]:
        return self.best_shift(target, self.model_ft(p)[1])

    def score_at(self, target: _Target, p: float, t: np.ndarray) -> float:
        mw = self.model_ft(p)[1]
        z = mw.ravel()[target.band_flat] * target.white_w_fw_b * target.band_phase(t)
        return float(np.sum(z.real) / target.norm)

    def refine(self, target: _Target, lo: float, hi: float, tol_rel: float = 2e-5):
        res = optimize.minimize_scalar(lambda p: -self.score(target, p)[0], bounds=(lo, hi),
                                       method="bounded",
                                       options={"xatol": tol_rel * self.p_nom, "maxiter": 60})
        p = float(res.x)
        s, t, edge = self.score(target, p)
        return p, s, t, edge

    def curvature_sigma(self, target: _Target, p: float, t: np.ndarray, h_rel: float = 0.004):
        """Sandwich sigma of p: sd(score') / |score''| (see module docstring)."""
        h = h_rel * p
        f0 = self.score_at(target, p, t)
        fp = self.score_at(target, p + h, t)
        fm = self.score_at(target, p - h, t)
        d2 = (fp + fm - 2 * f0) / h**2
        if not np.isfinite(d2) or d2 >= 0:
            return float("inf")
        g = self.grid
        band = target.band
        mdiff = ((self.model_ft(p + h)[1] - self.model_ft(p - h)[1]) / (2 * h))[band]
        mdiff = mdiff * np.exp(-2j * np.pi * sum(k[band] * tt for k, tt in zip(g.k, t)))
        # Var(Re(m' n*)) = |m'|^2 var(n) / 2 per complex coefficient; a Friedel pair counts twice.
        var = np.sum((g.fw[band] * target.w[band]) ** 2 * np.abs(mdiff) ** 2
                     * target.noise_var[band] / 2.0) / target.norm**2
        return float(np.sqrt(var) / abs(d2))

    def fit_blur(self, target: _Target, p: float, t: np.ndarray, res_A: float):
        """B-factor added to the model that maximises the band-limited unwhitened correlation."""
        g = self.grid
        k2 = g.k2 / p**2  # 1/A^2 at the calibrated pixel
        band = (g.shell >= 1) & (np.sqrt(k2) <= 1.0 / res_A)
        m = (self.model_ft(p)[0] * g.phase(t))[band]
        e = target.ft[band]
        fw = g.fw[band]
        kk = k2[band]
        ee = np.sum(fw * np.abs(e) ** 2)

        def cc(b):
            mb = m * np.exp(-b * kk / 4.0)
            return np.sum(fw * (mb * np.conj(e)).real) / np.sqrt(np.sum(fw * np.abs(mb) ** 2) * ee)

        res = optimize.minimize_scalar(lambda b: -cc(b), bounds=(-self.b_model, 500.0),
                                       method="bounded")
        return float(self.b_model + res.x), float(cc(res.x))


def _coverage(grid: _Grid, avg_ft: np.ndarray, diff_ft: np.ndarray, mask: np.ndarray,
              atoms_zyx: np.ndarray, pixel_A: float, envelope_A: float) -> float:
    """Fraction of the significant low-passed masked density lying within envelope_A of an atom.

    avg_ft, diff_ft : transforms of the masked half-map average and half difference on ``grid``;
    mask : the mask on the same grid (voxel ``pixel_A``); atoms_zyx : atom positions in its voxels.
    """
    box = grid.box
    b_lp = 4.0 * np.log(2.0) * 8.0**2  # amplitude 0.5 at 8 A
    filt = np.exp(-b_lp * grid.k2 / pixel_A**2 / 4.0)
    avg = scipy.fft.irfftn(avg_ft * filt, s=(box,) * 3)
    diff = scipy.fft.irfftn(diff_ft * filt, s=(box,) * 3)
    inside = mask > 0.5
    outside = mask < 0.01
    baseline = float(np.median(avg[outside])) if outside.sum() > 1000 else 0.0
    noise = float(np.std(diff[inside])) if inside.any() else 0.0
    sig = np.where(inside & (avg - baseline > 3.0 * noise), avg - baseline, 0.0)
    total = float(sig.sum())
    if total <= 0:
        return 0.0
    idx = np.rint(atoms_zyx).astype(np.int64)
    keep = ((idx >= 0) & (idx < box)).all(axis=1)
    occ = np.ones((box,) * 3, dtype=bool)
    occ[tuple(idx[keep].T)] = False
    env = ndimage.distance_transform_edt(occ) * pixel_A <= envelope_A
    return float(sig[env].sum() / total)


def _scan_progress(progress, done: int, total: int, elapsed_s: float) -> None:
    """'pixel-size scan: step k of n, elapsed, left' about every 10% of the scan."""
    if progress is None or (done % max(total // 10, 1) and done != total):
        return
    left = elapsed_s / done * (total - done)
    progress(f"pixel-size calibration: scan step {done} of {total}, {elapsed_s:.0f} s elapsed, "
             f"about {left:.0f} s left (then refinement against each half map)")


def calibrate_pixel_size(half1: np.ndarray, half2: np.ndarray, pixel_size_A: float, structure, *,
                         mask: np.ndarray | None = None, fsc: np.ndarray | None = None,
                         origin_A=(0.0, 0.0, 0.0), scan_range: float = 0.05,
                         scan_step: float = 0.0025, low_res_A: float = 20.0,
                         max_shift_A: float = 6.0, b_model_A2: float = 20.0,
                         min_relative_correlation: float = 0.35, min_coverage: float = 0.5,
                         envelope_A: float = 6.0, max_sigma_rel: float = 0.01,
                         fsc_threshold: float = FSC_THRESHOLD,
                         systematic_rel: float = 1e-4, progress=None,
                         crop: bool = True) -> PixelCalibration:
    """Pixel size of the half maps (nominal ``pixel_size_A``) calibrated against ``structure``.

    half1, half2 : half maps (box^3, [z, y, x]); structure : gemmi Structure docked at the nominal
    pixel size (see the module docstring for the convention, ``origin_A`` = map origin in A);
    mask : real-space mask (default: :func:`model_mask`); fsc : half-map FSC per shell (default:
    computed with the mask); progress : called with progress lines during the scan;
    systematic_rel : relative systematic floor added in quadrature to
    the reported sigma (1e-4: the method's bias on simulated relion_project data was <= 0.01%).
    crop : work on the cube around the mask, Fourier cropped to the band (default; cost and
    memory follow the mask's size and the resolution, not the box); False: the whole box at
    every frequency (the reference the cropped calibration is tested against).
    Raises InputError when the model cannot serve as a ruler.
    """
    half1, half2 = np.asarray(half1), np.asarray(half2)
    if half1.ndim != 3 or len(set(half1.shape)) != 1 or half1.shape != half2.shape:
        raise InputError(f"half maps must be cubic and of equal shape, got {half1.shape} and "
                         f"{half2.shape}")
    if not pixel_size_A or pixel_size_A <= 0:
        raise InputError(f"pixel size must be positive, got {pixel_size_A}")
    box = half1.shape[0]
    p_nom = float(pixel_size_A)
    pos = (atom_positions_A(structure) - np.asarray(origin_A, float)) / p_nom
    outside = ((pos < 0) | (pos > box - 1)).any(axis=1)
    if outside.mean() > 0.01:
        raise InputError(f"the atomic model is not docked in this map: {100 * outside.mean():.0f}% "
                         f"of its atoms lie outside the {box}^3 box at {p_nom:.4f} Å/pixel")
    if mask is None:
        mask = model_mask(structure, box, p_nom, origin_A=origin_A)
    mask = np.asarray(mask)
    if mask.shape != half1.shape:
        raise InputError(f"mask shape {mask.shape} differs from the half maps' {half1.shape}")
    atoms_zyx = pos[:, ::-1]
    radius_A = float(np.sqrt(((pos - pos.mean(axis=0)) ** 2).sum(axis=1)).max()) * p_nom
    margin_A = max_shift_A + scan_range * radius_A + CROP_MARGIN_A
    start, side = crop_cube(mask, atoms_zyx, margin_A / p_nom) if crop else ((0, 0, 0), box)
    cubes = [CropPlan(start, side, side).cube(a).astype(np.float32) for a in (half1, half2, mask)]
    if fsc is None:
        fsc_cube = fsc_curve(cubes[0], cubes[1], cubes[2])
        resolution = resolution_at_threshold(fsc_cube, side, p_nom, fsc_threshold)
    else:
        fsc = np.asarray(fsc, dtype=np.float64)[: box // 2 + 1]
        if fsc.size < box // 2 + 1:
            fsc = np.concatenate([fsc, np.zeros(box // 2 + 1 - fsc.size)])
        resolution = resolution_at_threshold(fsc, box, p_nom, fsc_threshold)
        # the same frequencies on the cube's shells (shell s: s / (side * p_nom) per A)
        fsc_cube = np.interp(np.arange(side // 2 + 1) * box / side, np.arange(fsc.size), fsc)
    s_max = side * p_nom / resolution
    plan = CropPlan(start, side, fourier_box_for(side, s_max) if crop else side)
    nf = plan.fourier_box
    shells = np.arange(nf // 2 + 1)
    s_min = side * p_nom / low_res_A
    inband = (shells >= max(s_min, 1.0)) & (shells <= s_max + 1e-9)
    if inband.sum() < 3:
        raise InputError(f"the half maps' resolution ({resolution:.1f} Å) leaves too few Fourier "
                         f"shells between {low_res_A:.0f} Å and the FSC={fsc_threshold} limit to "
                         f"calibrate the pixel size")
    f = np.clip(fsc_cube[: nf // 2 + 1], 0.0, 0.999)
    w_avg = np.where(inband, np.sqrt(2 * f / (1 + f)), 0.0)
    w_half = np.where(inband, np.sqrt(f), 0.0)

    # The masked half maps on the cropped grid; from here on, lengths in voxels are the cropped
    # grid's, whose voxel is p_eff = p_nom * coarse_voxel.
    q = plan.coarse_voxel
    p_eff = p_nom * q
    mask_cube = cubes[2]
    fts = [fourier_crop(c * mask_cube, nf).astype(np.complex128) for c in cubes[:2]]
    mask_ms = float(np.clip(np.mean(mask_cube.astype(np.float64) ** 2), 1e-6, 1.0))
    mask_coarse = ndimage.affine_transform(mask_cube, np.full(3, q), output_shape=(nf,) * 3,
                                           order=1, mode="nearest")
    del cubes
    atoms_coarse = (atoms_zyx - np.asarray(plan.start_zyx, float)) / q
    grid = _Grid(nf)
    avg_ft, diff_ft = 0.5 * (fts[0] + fts[1]), 0.5 * (fts[0] - fts[1])
    coverage = _coverage(grid, avg_ft, diff_ft, mask_coarse, atoms_coarse, p_eff, envelope_A)
    if coverage < min_coverage:
        raise InputError(f"the atomic model covers only {100 * coverage:.0f}% of the map density "
                         f"inside the mask (minimum {100 * min_coverage:.0f}%): it is not a model "
                         f"of this map (or of this masked region); the pixel size cannot be "
                         f"calibrated against it")

    # noise power per shell of the average map (D = (h1 - h2)/2 has the same noise power)
    noise_avg = grid.shell_mean(np.abs(diff_ft) ** 2)[:-1]
    target = _Target(grid, avg_ft, w_avg, noise_avg, mask_ms)
    targets_half = [_Target(grid, ft, w_half, 2.0 * noise_avg, mask_ms) for ft in fts]
    del fts, avg_ft, diff_ft
    expected = float(np.sum(grid.count[:-1] * w_avg * w_avg) / np.sum(grid.count[:-1] * w_avg))

    centre_coarse = (centroid_A(structure) - np.asarray(origin_A, float))[::-1] / p_nom
    centre_coarse = (centre_coarse - np.asarray(plan.start_zyx, float)) / q
    cal = _Calibrator(structure, plan, p_eff, centre_coarse, b_model_A2, max_shift_A,
                      MODEL_OVERSAMPLING if crop else 1.0)
    p_cal_nom = p_nom  # the map's nominal pixel; the search runs at p_eff = p_nom * q
    p_nom = p_eff
    n_steps = int(round(scan_range / scan_step))
    scales = 1.0 + scan_step * np.arange(-n_steps, n_steps + 1)
    scan = np.empty(scales.size)
    t0 = time.monotonic()
    cal.coarse = True
    for i, s in enumerate(scales):
        scan[i] = cal.score(target, p_nom * s)[0]
        _scan_progress(progress, i + 1, scales.size, time.monotonic() - t0)
    cal.coarse = False
    ib = int(np.argmax(scan))
    # the scan's maps are not anti-aliased: bracket the refinement by two steps either side
    lo = p_nom * scales[max(ib - SCAN_BRACKET_STEPS, 0)]
    hi = p_nom * scales[min(ib + SCAN_BRACKET_STEPS, scales.size - 1)]
    p_best, s_best, t_best, t_edge = cal.refine(target, lo, hi)
    # Second pass with the model blurred like the map: per-shell whitening removes the B-factor's
    # envelope, but a sharp model map aliases differently from a blurred map (a ~0.03% bias).
    b_fit, _ = cal.fit_blur(target, p_best, t_best, resolution)
    cal.set_b_model(float(np.clip(b_fit, 0.0, 300.0)))
    p_best, s_best, t_best, t_edge = cal.refine(target, max(lo, p_best - scan_step * p_nom),
                                                min(hi, p_best + scan_step * p_nom))
    rel = s_best / expected if expected > 0 else 0.0

    def refuse(why: str):
        raise InputError(f"the atomic model does not match this map ({why}); it is not docked, or "
                         f"it is a model of something else: the pixel size cannot be calibrated "
                         f"against it")

    if rel < min_relative_correlation:
        refuse(f"weighted model-map correlation {s_best:.3f} is {100 * rel:.0f}% of the "
               f"{expected:.3f} a docked model would give; minimum "
               f"{100 * min_relative_correlation:.0f}%")
    if t_edge:
        refuse(f"the best translation lies at the {max_shift_A:.0f} Å search limit")
    if ib in (0, scales.size - 1):
        refuse(f"the best pixel size lies at the edge of the ±{100 * scan_range:.0f}% scan")
    sig_curv = cal.curvature_sigma(target, p_best, t_best)
    if not np.isfinite(sig_curv) or sig_curv > max_sigma_rel * p_nom:
        refuse("the match score has no clear optimum in pixel size")

    halves = []
    for tg in targets_half:
        width = 3 * scan_step * p_nom
        ph, _, _, _ = cal.refine(tg, p_best - width, p_best + width)
        halves.append(ph)
    sig_halves = abs(halves[0] - halves[1]) / 2.0
    sigma = float(np.sqrt(sig_curv**2 + sig_halves**2 + (systematic_rel * p_best) ** 2))
    b_fit, cc_rs = cal.fit_blur(target, p_best, t_best, resolution)
    shift_A = [float(v) for v in (t_best[::-1] * p_best)]
    # back to the map's pixel: the cropped grid's voxel is q map voxels
    p_best, sig_curv, sig_halves, sigma = (v / q for v in (p_best, sig_curv, sig_halves, sigma))
    halves = [h / q for h in halves]
    return PixelCalibration(
        pixel_size_nominal_A=p_cal_nom, pixel_size_calibrated_A=p_best, pixel_size_sigma_A=sigma,
        sigma_curvature_A=float(sig_curv), sigma_halves_A=float(sig_halves),
        pixel_size_half1_A=float(halves[0]), pixel_size_half2_A=float(halves[1]),
        correlation=float(s_best), correlation_expected=expected, relative_correlation=float(rel),
        real_space_correlation=cc_rs, b_factor_A2=b_fit, shift_A=shift_A, coverage=coverage,
        resolution_A=float(resolution), band_A=[float(low_res_A), float(resolution)],
        scan_pixel_size_A=[float(v) for v in p_cal_nom * scales],
        scan_score=[float(v) for v in scan], sigma_systematic_A=float(systematic_rel * p_best),
        grid={"box": box, "cube_box": plan.cube_box, "fourier_box": plan.fourier_box,
              "model_box": cal.model_box, "cube_start_zyx": list(plan.start_zyx)})


# ----------------------------------------------------------------------------------------------
# Cs and defocus at the calibrated pixel size


def reexpress_cs_defocus(cs_mm: float, defocus_A: float, pixel_nominal_A: float,
                         pixel_calibrated_A: float) -> tuple[float, float]:
    """(Cs, defocus) at the calibrated pixel size: Cs * r^4, defocus * r^2, r = p_cal / p_nom."""
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
    """(kind, one-line verdict, Cs at the calibrated pixel, its sigma) for one optics group.

    kind is "pixel size", "Cs", "both", "neither" or "not refined" (see the module docstring).
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


def calibration_json(calibration: PixelCalibration, groups: list[GroupCalibration]) -> dict:
    """The csrefine.json keys: pixel_size_calibrated_A, pixel_size_sigma_A and, per optics group
    (keyed by the group number as a string), cs_at_calibrated_pixel_mm and verdict; plus details."""
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


def apply_calibration(groups_results_dicts, calibration: PixelCalibration, **verdict_options) -> dict:
    """Re-express each group's refined Cs and defocus offset at the calibrated pixel size.

    groups_results_dicts : iterable of :func:`csrefine.pipeline.result_dict` dicts or GroupResult
    objects (keys used:
    optics_group, refined, cs_nominal_mm, cs_refined_mm, cs_sigma_mm, defocus_offset_A,
    pixel_size_A). Returns :func:`calibration_json`'s dict, ready to merge into csrefine.json.
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
