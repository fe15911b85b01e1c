"""The search for the scale: a coarse scan of ``p/p_nom`` on the half-map average, then Brent's
method around its best point, the model's blur fitted and the scale refined again.

At each trial pixel size the translation ``t`` is searched globally within ``max_shift_A`` by
FFT, then polished by Newton steps. Rotation is not refined: a docked model is assumed correctly
oriented (a wrong orientation is refused by the pipeline).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import scipy.fft
from scipy import optimize

from .model_maps import ModelMaps
from .records import CalibrationSettings
from .target import Band, Target

#: The refinement searches this many scan steps either side of the scan's best point.
SCAN_BRACKET_STEPS = 2
#: Upper bound of the model B-factor kept for the second pass, Angstrom^2.
MAX_B_MODEL_A2 = 300.0
#: Brent's refinement stops at this tolerance, relative to the pixel size.
REFINE_TOL_REL = 2e-5
#: Newton steps on the translation at each trial pixel size.
NEWTON_STEPS = 3
#: Whitened model maps kept by a Matcher (the band's coefficients of each).
CACHE_SIZE = 6


class Matcher:
    """Scores of the model maps against a target, with the translation refined.

    models : the model maps on the cropped grid; band : the coefficients the targets use;
    max_shift_A : radius of the translation search, Angstrom. Pixel sizes are those of the
    cropped grid (see :class:`ModelMaps`). The refinement's whitened model maps are cached
    (:data:`CACHE_SIZE`, the band's coefficients only); the coarse scan's are not: it visits
    each pixel size once.
    """

    def __init__(self, models: ModelMaps, band: Band, max_shift_A: float):
        self.models = models
        self.band = band
        self._cache: dict[tuple, np.ndarray] = {}
        self.box = models.box
        self.p_nom = models.p_nom
        self.max_shift_vox = max_shift_A / models.p_nom
        c = np.fft.fftfreq(self.box) * self.box
        r2 = c[:, None, None] ** 2 + c[None, :, None] ** 2 + c[None, None, :] ** 2
        self.window_flat = np.flatnonzero(r2 <= self.max_shift_vox**2)  # translations searched

    def whitened(self, p: float) -> np.ndarray:
        """The band's coefficients of the whitened model map at trial pixel ``p`` (Å)."""
        models = self.models
        key = (round(float(p), 10), models.b_model, models.coarse)
        if key in self._cache:
            return self._cache[key]
        mw_b = self.band.whitened(models.grid, models.model_ft(p))[0]
        if not models.coarse:
            self._cache[key] = mw_b
            if len(self._cache) > CACHE_SIZE:
                self._cache.pop(next(iter(self._cache)))
        return mw_b

    def score(self, target: Target, p: float) -> tuple[float, np.ndarray, bool]:
        """(score, translation t in voxels (z, y, x), True if t is on the search limit) of the
        model map at trial pixel ``p`` (Å) against ``target``."""
        mw_b = self.whitened(p)
        # the weights vanish outside the band: products over the band's coefficients only
        y = np.zeros((self.box, self.box, self.box // 2 + 1), dtype=np.complex128)
        y.ravel()[self.band.flat] = np.conj(mw_b) * target.white_w_b * (self.box**3 / target.norm)
        cc = scipy.fft.irfftn(y, s=(self.box,) * 3)
        c = np.fft.fftfreq(self.box) * self.box
        i = self.window_flat[int(np.argmax(cc.ravel()[self.window_flat]))]
        i = np.unravel_index(int(i), cc.shape)
        t = np.array([c[j] for j in i], dtype=float)
        on_edge = bool(np.sqrt((t**2).sum()) > self.max_shift_vox - 1.0)
        t = _parabola_peak(cc, i, t)
        t = _newton_shift(target, mw_b * target.white_w_fw_b, t)
        return _score(target, mw_b, t), t, on_edge

    def score_at(self, target: Target, p: float, t: np.ndarray) -> float:
        """The score at trial pixel ``p`` (Å) and the fixed translation ``t`` (voxels, z/y/x)."""
        return _score(target, self.whitened(p), t)

    def refine(self, target: Target, lo: float, hi: float):
        """(p, score, t, on_edge) at the best pixel size in [lo, hi] (Å; bounded Brent)."""
        res = optimize.minimize_scalar(lambda p: -self.score(target, p)[0], bounds=(lo, hi),
                                       method="bounded",
                                       options={"xatol": REFINE_TOL_REL * self.p_nom, "maxiter": 60})
        p = float(res.x)
        return (p, *self.score(target, p))

    def fit_blur(self, target: Target, p: float, t: np.ndarray, res_A: float):
        """(B-factor of the model, Å^2, that maximises the band-limited unwhitened correlation;
        that correlation) at pixel ``p`` (Å) and translation ``t`` (voxels), up to ``res_A``."""
        g = self.models.grid
        k2 = g.k2 / p**2  # 1/A^2 at the calibrated pixel
        band = (g.shell >= 1) & (np.sqrt(k2) <= 1.0 / res_A)
        b_model = self.models.b_model
        m = (self.models.model_ft(p) * g.phase(t))[band]
        e = target.ft[band]
        fw = g.fw[band]
        kk = k2[band]
        ee = np.sum(fw * np.abs(e) ** 2)

        def cc(b):
            mb = m * np.exp(-b * kk / 4.0)
            return np.sum(fw * (mb * np.conj(e)).real) / np.sqrt(np.sum(fw * np.abs(mb) ** 2) * ee)

        res = optimize.minimize_scalar(lambda b: -cc(b), bounds=(-b_model, 500.0),
                                       method="bounded")
        return float(b_model + res.x), float(cc(res.x))


def _score(target: Target, mw_b: np.ndarray, t: np.ndarray) -> float:
    """The score of the whitened model's band coefficients ``mw_b`` translated by ``t``."""
    z = mw_b * target.white_w_fw_b * target.band.phase(t)
    return float(np.sum(z.real) / target.norm)


def _parabola_peak(cc: np.ndarray, i: tuple, t: np.ndarray) -> np.ndarray:
    """Sub-voxel peak of the cross-correlation ``cc`` at index ``i``: a 3-point parabola per
    axis (at most half a voxel), added to the integer shift ``t`` (voxels, z/y/x)."""
    box = cc.shape[0]
    t = t.copy()
    for ax in range(3):
        ip, im = list(i), list(i)
        ip[ax] = (i[ax] + 1) % box
        im[ax] = (i[ax] - 1) % box
        f0, fp, fm = cc[i], cc[tuple(ip)], cc[tuple(im)]
        den = fp + fm - 2 * f0
        if den < 0:
            t[ax] += float(np.clip(0.5 * (fm - fp) / den, -0.5, 0.5))
    return t


def _newton_shift(target: Target, z0: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Newton steps on the translation (voxels, z/y/x) over the band's coefficients ``z0``
    (model x target products); stops where the Hessian is not negative definite or a step
    exceeds a voxel."""
    kmat = target.band.kmat
    for _ in range(NEWTON_STEPS):
        z = z0 * target.band.phase(t)
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
    return t


@dataclass
class ScaleFit:
    """The search's result on the cropped grid.

    scales, scan : the coarse scan (p / p_nom, dimensionless; scores); best_index : its best
    point; pixel_A : the refined pixel (Å, of the cropped grid); score : the score there;
    shift_vox : the translation (voxels, z/y/x); shift_on_edge : t on the search limit.
    """

    scales: np.ndarray
    scan: np.ndarray
    best_index: int
    pixel_A: float
    score: float
    shift_vox: np.ndarray
    shift_on_edge: bool


def coarse_scan(matcher: Matcher, target: Target, settings: CalibrationSettings,
                progress=None) -> tuple[np.ndarray, np.ndarray]:
    """(scales p / p_nom, scores) of the scan over +-scan_range on the cropped grid's maps;
    ``progress`` is told the step, the time elapsed and left about every 10% of the scan."""
    n_steps = int(round(settings.scan_range / settings.scan_step))
    scales = 1.0 + settings.scan_step * np.arange(-n_steps, n_steps + 1)
    total = scales.size
    scan = np.empty(total)
    t0 = time.monotonic()
    matcher.models.coarse = True
    for i, s in enumerate(scales):
        scan[i] = matcher.score(target, matcher.p_nom * s)[0]
        done, elapsed_s = i + 1, time.monotonic() - t0
        if progress is not None and (done % max(total // 10, 1) == 0 or done == total):
            progress(f"pixel-size calibration: scan step {done} of {total}, {elapsed_s:.0f} s "
                     f"elapsed, about {elapsed_s / done * (total - done):.0f} s left (then "
                     f"refinement against each half map)")
    matcher.models.coarse = False
    return scales, scan


def fit_scale(matcher: Matcher, target: Target, resolution_A: float,
              settings: CalibrationSettings, progress=None) -> ScaleFit:
    """Scan, refine, fit the model's blur, refine again with the model blurred like the map."""
    p_nom = matcher.p_nom
    scales, scan = coarse_scan(matcher, target, settings, progress)
    ib = int(np.argmax(scan))
    # the scan's maps are not anti-aliased: bracket the refinement by two steps either side
    lo = p_nom * scales[max(ib - SCAN_BRACKET_STEPS, 0)]
    hi = p_nom * scales[min(ib + SCAN_BRACKET_STEPS, scales.size - 1)]
    p_best, s_best, t_best, t_edge = matcher.refine(target, lo, hi)
    # Second pass with the model blurred like the map: per-shell whitening removes the B-factor's
    # envelope, but a sharp model map aliases differently from a blurred map (a ~0.03% bias).
    b_fit, _ = matcher.fit_blur(target, p_best, t_best, resolution_A)
    matcher.models.set_b_model(float(np.clip(b_fit, 0.0, MAX_B_MODEL_A2)))
    step = settings.scan_step * p_nom
    p_best, s_best, t_best, t_edge = matcher.refine(target, max(lo, p_best - step),
                                                    min(hi, p_best + step))
    return ScaleFit(scales, scan, ib, p_best, s_best, t_best, t_edge)
