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

import numba
import numpy as np
from numba import njit, prange

from ..accumulate import N_STATS
from . import _fused_cpu as _fused
from . import empty_host_buffer as host_buffer  # noqa: F401  (Backend.host_buffer)
from . import kernel_cache_dir
from ._fused_cpu import (  # noqa: F401  (re-exported: the backend's tables and touch choice)
    PIXEL_BLOCK,
    TOUCH,
    KernelInputs,
    TouchChoice,
    band_transforms,
    default_batch_size,
    defocus_tables,
    grid_indices,
    linear_frequency_map,
    reader_threads,
    row_continuation,
    shift_tables,
)
from ._tables import LAYOUT_ID, ParticleColumn, PixelRow

# numba reads its cache directory when a cached function is decorated (below): point it at the
# user's cache, never the installed package, unless the user chose one with NUMBA_CACHE_DIR.
if not os.environ.get("NUMBA_CACHE_DIR"):
    numba.config.CACHE_DIR = str(kernel_cache_dir())

name = "numba"

# Short names of the table layouts for the kernel (IntEnum members are compile-time constants).
_P = ParticleColumn
_X = PixelRow



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


def set_threads(threads: int) -> int:
    """Use ``threads`` numba threads (bounded by NUMBA_NUM_THREADS); returns the number used."""
    t = max(1, min(int(threads or 1), numba.config.NUMBA_NUM_THREADS))
    numba.set_num_threads(t)
    return t


def kernel(stats, k: KernelInputs, touch: bool, threads: int) -> int:
    """The fused kernel on ``k`` (a :data:`csrefine.backends._fused_cpu.Kernel`)."""
    set_threads(threads)
    bad, _, layout = _accumulate_kernel(stats, k.cells, k.observed, k.ptab, k.pix, k.ref,
                                        k.radius, k.ref_scale, k.defocus_factor, PIXEL_BLOCK,
                                        k.separable, k.shift_x, k.shift_y, k.col, k.row, k.qtab,
                                        k.cont, k.half_box, touch)
    if layout != LAYOUT_ID:
        raise RuntimeError("numba's cached kernel was compiled for another table layout than "
                           "csrefine/backends/_tables.py's: delete csrefine/backends/__pycache__")
    return int(bad)


#: The Backend functions (csrefine.backends.Backend) of this kernel: accumulate_batch (one batch,
#: one reference), accumulate_halves (both half sets, images transformed once) and warm_up
#: (compiles or loads the kernel and runs it on a tiny batch).
accumulate_batch, accumulate_halves, warm_up = _fused.backend_functions(kernel)
