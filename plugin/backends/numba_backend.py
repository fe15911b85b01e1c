"""CPU backend: one fused, multi-threaded numba kernel (slice + shift + CTF + statistics).

Semantics are those of :func:`csrefine.backends.numpy_backend.accumulate_batch` (the reference);
tests/test_backends.py checks agreement to ~1e-9 relative. The kernel reproduces the reference's
operation order (float64 arithmetic, complex64 reference and image transforms upcast on use, and
``F = |X|^2`` evaluated in float32 like numpy does for complex64 input) so that the two agree to
rounding.

Work split: ``prange`` over blocks of band pixels, so each thread owns disjoint columns of
``stats`` (no write races, no atomics). Inside a block the loop runs particle by particle and then
over the block's pixels (consecutive pixels of the band, mostly along one rfft2 row); the
per-block sums live in a small private array that is added to ``stats`` once per batch.

Per-particle quantities (rotation rows, mean / half-difference defocus, cos/sin of twice the
astigmatism angle, phase shift in radians, -B/4, scale, origins) are precomputed with numpy
into the tables of :mod:`csrefine.backends._tables`, which the kernel reads by column name;
image transforms are the reference's (batched scipy.fft ``rfft2`` with ``workers=threads``,
gathered at the band pixels, times the centring sign).

Trigonometry is taken out of the per-pixel loop where the projection frequencies are a linear
map of the grid indices (always, for RELION's magnification matrices):
* the origin shift exp(2 pi i k.o) factorises into per-particle tables along columns and rows;
* exp(i gamma) = exp(i D) exp(i gamma_static) exp(-i phase shift), where the defocus phase D is a
  quadratic in the column index along a row, so exp(i D) is advanced by a second-order complex
  recurrence (re-seeded with sin/cos at the start of every row segment of a pixel block; the
  error stays ~1e-13, far below the 1e-9 agreement required).
Otherwise the kernel falls back to sin/cos per pixel (same results).

The rest of the cost is memory latency: every sample reads four cache lines of the padded 3D
transform (tens of MB, larger than the caches) at effectively random places. Per particle and
block, a "touch" loop with independent iterations can first read one value of each of those
lines, so that the misses overlap, before the interpolation proper; whether that pays depends on
the machine's caches, so it is measured on the first batches (:class:`TouchChoice`).
"""

from __future__ import annotations

import os
import threading
import time
import weakref

import numba
import numpy as np
from numba import njit, prange

from ..accumulate import N_STATS
from ..ctf import astigmatism
from . import empty_host_buffer as host_buffer  # noqa: F401  (Backend.host_buffer)
from . import kernel_cache_dir
from ._tables import LAYOUT_ID, ParticleColumn, PixelRow, particle_table, pixel_table
from .numpy_backend import band_transforms as numpy_band_transforms

# numba reads its cache directory when a cached function is decorated (below): point it at the
# user's cache, never the installed package, unless the user chose one with NUMBA_CACHE_DIR.
if not os.environ.get("NUMBA_CACHE_DIR"):
    numba.config.CACHE_DIR = str(kernel_cache_dir())

name = "numba"

# Short names of the table layouts for the kernel (IntEnum members are compile-time constants).
_P = ParticleColumn
_X = PixelRow

PIXEL_BLOCK = 64


def defocus_tables(particles, lin: np.ndarray, band, pixel_size_A: float,
                   defocus_factor: float) -> np.ndarray:
    """Per-particle coefficients of the defocus phase as a quadratic in the grid indices.

    With k' = (j u + y v) (1/A; j the column, y the signed row, u, v the columns of the linear
    frequency map over box * pixel), the defocus phase defocus_factor * defocus(theta) * |k'|^2
    is k'^T S k' with S = defocus_factor * [[mean + h cos2phi, h sin2phi],
    [h sin2phi, mean - h cos2phi]] (h: half the astigmatism). Columns: uSu, uSv, vSv,
    cos(2 uSu), sin(2 uSu), cos(phase shift), sin(phase shift)."""
    ast = astigmatism(particles.defocus_u_A, particles.defocus_v_A, particles.defocus_angle_deg)
    mean, half = ast.mean_A, ast.half_difference_A
    sxx = defocus_factor * (mean + half * ast.cos_2phi)
    syy = defocus_factor * (mean - half * ast.cos_2phi)
    sxy = defocus_factor * half * ast.sin_2phi
    u = lin[:, 0] / (band.box * pixel_size_A)
    v = lin[:, 1] / (band.box * pixel_size_A)
    suu = u[0] * u[0] * sxx + 2.0 * u[0] * u[1] * sxy + u[1] * u[1] * syy
    suv = u[0] * v[0] * sxx + (u[0] * v[1] + u[1] * v[0]) * sxy + u[1] * v[1] * syy
    svv = v[0] * v[0] * sxx + 2.0 * v[0] * v[1] * sxy + v[1] * v[1] * syy
    ph = np.deg2rad(particles.phase_shift_deg)
    return np.ascontiguousarray(np.stack([suu, suv, svv, np.cos(2.0 * suu), np.sin(2.0 * suu),
                                          np.cos(ph), np.sin(ph)], axis=1))


def row_continuation(band) -> np.ndarray:
    """1 where a band pixel directly follows the previous one on the same rfft2 row."""
    col, row = grid_indices(band)
    cont = np.zeros(col.size, dtype=np.int8)
    cont[1:] = (row[1:] == row[:-1]) & (col[1:] == col[:-1] + 1)
    return cont


def grid_indices(band) -> tuple[np.ndarray, np.ndarray]:
    """Column j (0..box/2) and row (0..box-1, ky index + box/2) of each band pixel."""
    col = np.rint(band.kx_px * band.box).astype(np.int64)
    row = np.rint(band.ky_px * band.box).astype(np.int64) + band.box // 2
    return col, row


def linear_frequency_map(terms, band) -> np.ndarray | None:
    """The 2x2 matrix L with (terms.kx_px, terms.ky_px) = L (band.kx_px, band.ky_px), or None
    when the projection frequencies are not a linear map of the grid's (then the shift phase is
    evaluated directly per pixel)."""
    basis = np.stack([band.kx_px, band.ky_px], axis=1)
    target = np.stack([terms.kx_px, terms.ky_px], axis=1)
    if basis.shape[0] < 2:
        return None
    sol, *_ = np.linalg.lstsq(basis, target, rcond=None)
    if np.max(np.abs(basis @ sol - target), initial=0.0) > 1e-12:
        return None
    return sol.T


def shift_tables(particles, lin: np.ndarray, band, pixel_size_A: float):
    """Per-particle factors of exp(2 pi i k.origin) along grid columns and rows:
    (n, box/2 + 1) and (n, box) complex128, with k = L k_grid / pixel_size."""
    box = band.box
    ox, oy = particles.origin_x_A, particles.origin_y_A
    # k.o = (kx_g (L00 ox + L10 oy) + ky_g (L01 ox + L11 oy)) / pixel
    sx = (lin[0, 0] * ox + lin[1, 0] * oy) / pixel_size_A
    sy = (lin[0, 1] * ox + lin[1, 1] * oy) / pixel_size_A
    kcol = np.arange(box // 2 + 1) / box
    krow = (np.arange(box) - box // 2) / box
    shift_x = np.exp(2j * np.pi * sx[:, None] * kcol[None, :])
    shift_y = np.exp(2j * np.pi * sy[:, None] * krow[None, :])
    return shift_x, shift_y


@njit(fastmath=False, cache=True, nogil=True)
def _accumulate_block(stats, cells, observed, ptab, pix, ref, radius, ref_scale, defocus_factor,
                      p0, p1, separable, shift_x, shift_y, col, row, qtab, cont, half_box, touch):
    """Pixels p0:p1 of one batch (serial); returns (number of out-of-range samples, touch sum).

    Per particle: a touch loop computes the sampling coordinates (scale * A^T (kx, ky, 0),
    Friedel-flipped for x < 0; trilinear cell and weights) and reads one value of each cache
    line the sample needs; a gather loop interpolates (memory bound); a third loop applies shift,
    CTF and sums (compute bound)."""
    n = observed.shape[0]
    n_cells = stats.shape[0]
    two_pi = 2.0 * np.pi
    r = radius
    width = p1 - p0
    acc = np.zeros((n_cells, N_STATS, width), dtype=np.float64)
    sink = np.zeros(1)  # keeps the touch loads alive
    ix = np.empty(width, dtype=np.int64)
    iy = np.empty(width, dtype=np.int64)
    iz = np.empty(width, dtype=np.int64)
    wx = np.empty(width, dtype=np.float64)
    wy_ = np.empty(width, dtype=np.float64)
    wz_ = np.empty(width, dtype=np.float64)
    flips = np.empty(width, dtype=np.bool_)
    buf_r = np.empty(width, dtype=np.float64)
    buf_i = np.empty(width, dtype=np.float64)
    bad = 0
    for i in range(n):
        c = cells[i]
        a00 = ptab[i, _P.R00]
        a01 = ptab[i, _P.R01]
        a02 = ptab[i, _P.R02]
        a10 = ptab[i, _P.R10]
        a11 = ptab[i, _P.R11]
        a12 = ptab[i, _P.R12]
        # Touch pass: read one value from each of the four cache lines every sample needs, in a
        # loop with independent iterations, so the cache misses of the whole block are in
        # flight together; the gather below then hits the cache.
        tsum = 0.0
        for q in range(width):
            kxp = pix[_X.KX_PX, p0 + q]
            kyp = pix[_X.KY_PX, p0 + q]
            x = (a00 * kxp + a10 * kyp) * ref_scale
            y = (a01 * kxp + a11 * kyp) * ref_scale
            z = (a02 * kxp + a12 * kyp) * ref_scale
            fl = x < 0
            if fl:
                x = -x
                y = -y
                z = -z
            if x <= r and abs(y) <= r - 1 and abs(z) <= r - 1:
                y = y + r
                z = z + r
                x0 = int(x)
                y0 = int(y)
                z0 = int(z)
                ix[q] = x0
                iy[q] = y0
                iz[q] = z0
                wx[q] = x - x0
                wy_[q] = y - y0
                wz_[q] = z - z0
                flips[q] = fl
                if touch:
                    tsum += (ref[z0, y0, x0].real + ref[z0, y0 + 1, x0].real
                             + ref[z0 + 1, y0, x0].real + ref[z0 + 1, y0 + 1, x0].real)
            else:
                ix[q] = -1
        sink[0] += tsum
        for q in range(width):
            x0 = ix[q]
            if x0 < 0:
                bad += 1
                buf_r[q] = 0.0
                buf_i[q] = 0.0
                continue
            y0 = iy[q]
            z0 = iz[q]
            fx = wx[q]
            fy = wy_[q]
            fz = wz_[q]
            gx = 1.0 - fx
            sr = 0.0
            si = 0.0
            for dz in range(2):
                wz = fz if dz else 1.0 - fz
                for dy in range(2):
                    wy = fy if dy else 1.0 - fy
                    wzy = wz * wy
                    v0 = ref[z0 + dz, y0 + dy, x0]
                    v1 = ref[z0 + dz, y0 + dy, x0 + 1]
                    w0 = wzy * gx
                    w1 = wzy * fx
                    sr += w0 * np.float64(v0.real)
                    si += w0 * np.float64(v0.imag)
                    sr += w1 * np.float64(v1.real)
                    si += w1 * np.float64(v1.imag)
            if flips[q]:
                si = -si
            buf_r[q] = sr
            buf_i[q] = si
        mean = ptab[i, _P.MEAN_DEFOCUS_A]
        half = ptab[i, _P.HALF_ASTIGMATISM_A]
        cphi = ptab[i, _P.COS_2PHI]
        sphi = ptab[i, _P.SIN_2PHI]
        ph = ptab[i, _P.PHASE_SHIFT_RAD]
        nb4 = ptab[i, _P.NEG_QUARTER_B_A2]
        sc = ptab[i, _P.SCALE]
        ox = ptab[i, _P.ORIGIN_X_A]
        oy = ptab[i, _P.ORIGIN_Y_A]
        suu = qtab[i, 0]
        suv = qtab[i, 1]
        svv = qtab[i, 2]
        wr = qtab[i, 3]
        wi = qtab[i, 4]
        pcos = qtab[i, 5]
        psin = qtab[i, 6]
        rr = 1.0
        ri = 0.0
        tr = 1.0
        ti = 0.0
        for q in range(width):
            p = p0 + q
            sr = buf_r[q]
            si = buf_i[q]
            # origin shift and odd phase
            if separable:
                # exp(i 2pi k.o) = ex[col] * ey[row] (k linear in the grid indices), times
                # exp(i odd) precomputed per pixel (cos/sin of the odd phase)
                ex = shift_x[i, col[p]]
                ey = shift_y[i, row[p]]
                er = ex.real * ey.real - ex.imag * ey.imag
                ei = ex.real * ey.imag + ex.imag * ey.real
                ca = er * pix[_X.COS_ODD_PHASE, p] - ei * pix[_X.SIN_ODD_PHASE, p]
                sa = er * pix[_X.SIN_ODD_PHASE, p] + ei * pix[_X.COS_ODD_PHASE, p]
            else:
                arg = two_pi * (pix[_X.KX_PER_A, p] * ox + pix[_X.KY_PER_A, p] * oy) + pix[_X.ODD_PHASE, p]
                ca = np.cos(arg)
                sa = np.sin(arg)
            pr = sr * ca - si * sa
            pim = sr * sa + si * ca
            # CTF phase and envelope
            k2 = pix[_X.K2, p]
            if separable:
                # exp(i gamma) = exp(i D) exp(i gamma_static) exp(-i phase_shift), with the
                # defocus phase D a quadratic in the column j along a row: exp(i D) advances by
                # T = exp(i (D(j+1) - D(j))), and T by W = exp(2 i uSu) (no trig per pixel).
                if q == 0 or cont[p] == 0:
                    jj = np.float64(col[p])
                    yy = np.float64(row[p] - half_box)
                    d = jj * jj * suu + 2.0 * jj * yy * suv + yy * yy * svv
                    rr = np.cos(d)
                    ri = np.sin(d)
                    t = (2.0 * jj + 1.0) * suu + 2.0 * yy * suv
                    tr = np.cos(t)
                    ti = np.sin(t)
                else:
                    nr = rr * tr - ri * ti
                    ri = rr * ti + ri * tr
                    rr = nr
                    nr = tr * wr - ti * wi
                    ti = tr * wi + ti * wr
                    tr = nr
                er = rr * pix[_X.COS_GAMMA_STATIC, p] - ri * pix[_X.SIN_GAMMA_STATIC, p]
                ei = rr * pix[_X.SIN_GAMMA_STATIC, p] + ri * pix[_X.COS_GAMMA_STATIC, p]
                cg = er * pcos + ei * psin
                sg = ei * pcos - er * psin
            else:
                defocus = mean + half * (pix[_X.COS_2THETA, p] * cphi + pix[_X.SIN_2THETA, p] * sphi)
                g = defocus_factor * defocus * k2 + pix[_X.GAMMA_STATIC, p] - ph
                sg = np.sin(g)
                cg = np.cos(g)
            env = sc if nb4 == 0.0 else sc * np.exp(nb4 * k2)
            xv = observed[i, p]
            xr = xv.real
            xi = xv.imag
            pp = env * env * (pr * pr + pim * pim)
            xp = env * (np.float64(xr) * pr + np.float64(xi) * pim)
            acc[c, 0, q] += pp * sg * sg
            acc[c, 1, q] += pp * sg * cg
            acc[c, 2, q] += pp * cg * cg
            acc[c, 3, q] += -xp * sg
            acc[c, 4, q] += -xp * cg
            acc[c, 5, q] += np.float64(xr * xr + xi * xi)
    for c in range(n_cells):
        for s in range(N_STATS):
            for q in range(width):
                stats[c, s, p0 + q] += acc[c, s, q]
    return bad, sink[0]


@njit(parallel=True, fastmath=False, cache=True, nogil=True)
def _accumulate_kernel(stats, cells, observed, ptab, pix, ref, radius, ref_scale, defocus_factor,
                       block, separable, shift_x, shift_y, col, row, qtab, cont, half_box, touch):
    """stats (n_cells, 6, m) += sums over particles; prange over blocks of pixels (each thread
    owns disjoint columns of stats). Returns (number of out-of-range samples, touch sum,
    table layout compiled with)."""
    m = observed.shape[1]
    n_blocks = (m + block - 1) // block
    errors = np.zeros(n_blocks, dtype=np.int64)
    sinks = np.zeros(n_blocks, dtype=np.float64)
    for b in prange(n_blocks):
        p0 = b * block
        p1 = min(p0 + block, m)
        errors[b], sinks[b] = _accumulate_block(
            stats, cells, observed, ptab, pix, ref, radius, ref_scale, defocus_factor, p0, p1,
            separable, shift_x, shift_y, col, row, qtab, cont, half_box, touch)
    # the touch sums are returned only so that the compiler keeps the touch loads; LAYOUT_ID is
    # the table layout this kernel was compiled with (numba's cache may predate _tables.py)
    return errors.sum(), sinks.sum(), LAYOUT_ID


class TouchChoice:
    """Whether the kernel's touch pass pays on this machine, measured on the run's first batches.

    The touch pass overlaps the reference's cache misses; whether that wins depends on the
    caches (measured: 5-15% faster on an AMD EPYC host, 15-25% slower on a Xeon host whose L3
    holds the whole reference). The first batches alternate (on, off, on, off, ...; each call at
    least MIN_SAMPLES particle-pixels) and are timed per sample; after PAIRS consecutive
    (on, off) pairs the variant with the lower median ratio is kept for the rest of the process.
    Comparing neighbours cancels the load that other work puts on the machine meanwhile (at the
    start of a run, logfile.pdf's renderer process is still importing). Both variants compute
    the same numbers. ``$CSREFINE_TOUCH`` = 1 or 0 forces it.
    """

    PAIRS = 3
    MIN_SAMPLES = 100_000
    ENV = "CSREFINE_TOUCH"

    def __init__(self):
        self._lock = threading.Lock()
        forced = os.environ.get(self.ENV, "").strip()
        self.choice = {"1": True, "0": False}.get(forced)
        self.seconds = {True: [], False: []}

    def get(self) -> bool:
        """The variant for the next kernel call."""
        with self._lock:
            if self.choice is not None:
                return self.choice
            return len(self.seconds[True]) <= len(self.seconds[False])

    def record(self, touch: bool, seconds: float, samples: int) -> None:
        """Time of a kernel call that used ``touch`` on ``samples`` particle-pixels."""
        if samples < self.MIN_SAMPLES:
            return
        with self._lock:
            if self.choice is not None:
                return
            self.seconds[touch].append(seconds / samples)
            on, off = self.seconds[True], self.seconds[False]
            if min(len(on), len(off)) >= self.PAIRS:
                ratios = np.asarray(on[:self.PAIRS]) / np.asarray(off[:self.PAIRS])
                self.choice = bool(np.median(ratios) < 1.0)


TOUCH = TouchChoice()

def band_transforms(images: np.ndarray, band, threads: int = 1) -> np.ndarray:
    """rfft2 of centred images at the band pixels, (n, m) complex (complex64 for float32 input),
    centre moved to index 0 by :func:`csrefine.backends.centring_sign`: the reference backend's
    transforms (:func:`csrefine.backends.numpy_backend.band_transforms`; measured: pocketfft's
    2D transform with ``workers`` beats transforming along y only the band's columns, which
    needs a strided copy)."""
    images = np.asarray(images)
    if images.dtype not in (np.float32, np.float64):
        images = images.astype(np.float64)
    return numpy_band_transforms(images, band, threads)


def set_threads(threads: int) -> int:
    """Use ``threads`` numba threads (bounded by NUMBA_NUM_THREADS); returns the number used."""
    t = max(1, min(int(threads or 1), numba.config.NUMBA_NUM_THREADS))
    numba.set_num_threads(t)
    return t


_PIXEL_INPUTS = {}


def _pixel_inputs(terms, band, pixel_size_A: float):
    """Per-pixel kernel inputs of (terms, band), computed once per group and cached while
    ``terms`` lives: (pixel table, linear frequency map or None, column, row, continuation)."""
    key = (id(terms), id(band), float(pixel_size_A))
    hit = _PIXEL_INPUTS.get(key)
    if hit is not None and hit[0]() is terms and hit[1]() is band:
        return hit[2]
    col, row = grid_indices(band)
    value = (pixel_table(terms, pixel_size_A), linear_frequency_map(terms, band), col, row,
             row_continuation(band))
    try:
        _PIXEL_INPUTS[key] = (weakref.ref(terms), weakref.ref(band), value)
        weakref.finalize(terms, _PIXEL_INPUTS.pop, key, None)
    except TypeError:  # not weak-referenceable: no caching
        pass
    return value


def accumulate_batch(stats, cells, images, particles, reference, terms, band, pixel_size_A,
                     threads: int = 1) -> None:
    """Add one batch of particles (all predicted from ``reference``) to ``stats``.

    Same arguments and result as :func:`csrefine.backends.numpy_backend.accumulate_batch`.
    """
    if len(particles) == 0:
        return
    set_threads(threads)
    _accumulate_observed(stats, cells, _observed(images, band, threads), particles, reference,
                         terms, band, pixel_size_A)


def accumulate_halves(stats, cells, images, particles, references, terms, band, pixel_size_A,
                      threads: int = 1) -> None:
    """Add one batch holding both half sets: images transformed once, then the particles of
    half set h predicted from ``references[h]`` (h = 1, 2). Same result as
    :func:`accumulate_batch` per half set (tests/test_backends.py)."""
    if len(particles) == 0:
        return
    set_threads(threads)
    observed = _observed(images, band, threads)
    cells = np.asarray(cells)
    for half in (1, 2):
        sel = np.flatnonzero(particles.half_set == half)
        if sel.size:
            _accumulate_observed(stats, cells[sel], observed[sel], particles.subset(sel),
                                 references[half], terms, band, pixel_size_A)


def _observed(images, band, threads):
    observed = np.ascontiguousarray(band_transforms(images, band, threads))
    if observed.dtype not in (np.complex64, np.complex128):
        observed = observed.astype(np.complex128)
    return observed


def _accumulate_observed(stats, cells, observed, particles, reference, terms, band, pixel_size_A):
    """The fused kernel on band transforms ``observed`` (n, m)."""
    pix, lin, col, row, cont = _pixel_inputs(terms, band, pixel_size_A)
    if lin is not None:
        shift_x, shift_y = shift_tables(particles, lin, band, pixel_size_A)
        qtab = defocus_tables(particles, lin, band, pixel_size_A, float(terms.defocus_factor))
    else:
        shift_x = shift_y = np.ones((1, 1), dtype=np.complex128)
        qtab = np.zeros((1, 7))
    touch = TOUCH.get()
    t0 = time.perf_counter()
    bad, _, layout = _accumulate_kernel(stats, np.ascontiguousarray(cells, dtype=np.int64),
                                np.ascontiguousarray(observed), particle_table(particles), pix,
                                reference.data, int(reference.radius), float(reference.scale),
                                float(terms.defocus_factor), PIXEL_BLOCK, lin is not None,
                                shift_x, shift_y, col, row, qtab, cont, band.box // 2, touch)
    TOUCH.record(touch, time.perf_counter() - t0, observed.shape[0] * observed.shape[1])
    if layout != LAYOUT_ID:
        raise RuntimeError("numba's cached kernel was compiled for another table layout than "
                           "csrefine/backends/_tables.py's: delete csrefine/backends/__pycache__")
    if bad:
        raise ValueError("sampling beyond the cropped reference; increase k_max_px")


def default_batch_size(box: int) -> int:
    """256 particles per batch, whatever the box."""
    return 256


def reader_threads(threads: int) -> int:
    """One thread reads images ahead; the kernel uses the ``threads`` numba threads."""
    return 1


def warm_up() -> None:
    """Compile the kernel (or load it from numba's on-disk cache) with a tiny batch."""
    from ..forward import pixel_terms
    from ..fourier import make_band
    from ..model import OpticsGroup, Particles
    from ..projection import make_padded_reference

    box, px = 16, 2.0
    group = OpticsGroup(1, "warm-up", 300.0, 2.7, 0.1, px, box)
    band = make_band(box, px, 0.0, 0.5 / px)
    one = np.ones(1)
    parts = Particles(one * 1e4, one * 1e4, 0 * one, 0 * one, 0 * one, one, 0 * one, 0 * one,
                      0 * one, 0 * one, 0 * one, one.astype(int), one.astype(int))
    ref = make_padded_reference(np.zeros((box,) * 3, np.float32), 0.5, margin=1.01)
    stats = np.zeros((1, N_STATS, band.size))
    accumulate_batch(stats, np.zeros(1, np.int64), np.zeros((1, box, box), np.float32), parts, ref,
                     pixel_terms(group, band), band, px, 1)
