"""CPU backend: one fused numba kernel (slice + shift + CTF + statistics), multi-threaded.

Semantics are those of :func:`csrefine.backends.numpy_backend.accumulate_batch` (the reference);
tests/test_backends.py checks agreement to ~1e-9 relative. The kernel keeps the reference's
operation order (float64 arithmetic, complex64 reference and image transforms upcast on use,
``F = |X|^2`` in float32 like numpy for complex64 input), so the two agree to rounding.

Work split: blocks of PIXEL_BLOCK band pixels, dealt to ``threads`` Python threads that run the
compiled code without the GIL; each thread owns disjoint columns of ``stats`` (no write races,
the same bits whatever the thread count). Inside a block the loop runs particle by particle,
then over the block's pixels (mostly along one rfft2 row); the block's sums live in a private
array added to ``stats`` once per call. Per-particle and per-pixel inputs are the numpy tables
of :mod:`csrefine.backends._tables` (read by column name); the image transforms are the
reference's.

Trigonometry leaves the per-pixel loop because the projection frequencies are a linear map of
the grid indices (the magnification matrix): the origin shift exp(2 pi i k.o) factorises into
per-particle tables along columns and rows; exp(i gamma) = exp(i D) exp(i gamma_static)
exp(-i phase shift), where the defocus phase D is a quadratic in the column index along a row,
so exp(i D) advances by a second-order complex recurrence (re-seeded with sin/cos at the start
of every row segment of a block; error ~1e-13).

The rest of the cost is memory latency: each sample reads four cache lines of the padded 3D
transform (tens of MB) at effectively random places. The kernel prefetches them (LLVM's
prefetch, :func:`_prefetch`): the first PREFETCH_DISTANCE samples of a particle's block as soon
as their coordinates are known, each later one PREFETCH_DISTANCE samples ahead of its
interpolation, so that several misses are in flight (box-128 benchmark set: 1.6-1.7x faster
than without; distances 6-10 alike). A hint only: the numbers are the same bits without it.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numba
import numpy as np
import scipy.fft
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

from ..accumulate import N_STATS
from ..forward import pixel_terms
from ..fourier import make_band
from ..model import OpticsGroup, Particles
from ..projection import make_padded_reference
from ._tables import LAYOUT_ID, KernelInputs, ParticleColumn, PixelRow, centring_sign, kernel_inputs
from .numpy_backend import default_batch_size, host_buffer, reader_threads  # noqa: F401


def kernel_cache_dir() -> Path:
    """Where numba caches the compiled kernel: ``$CSREFINE_CACHE_DIR/numba``, else
    ``$XDG_CACHE_HOME/csrefine/numba`` (``~/.cache/csrefine/numba``).

    Never inside the installed package: a cache there is not in the wheel's RECORD, survives
    ``pip uninstall`` and turns the package folder into a namespace package that shadows a later
    editable install. ``NUMBA_CACHE_DIR``, when set, still takes precedence (numba's own rule).
    """
    base = os.environ.get("CSREFINE_CACHE_DIR")
    if not base:
        xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
        base = os.path.join(xdg, "csrefine")
    return Path(base) / "numba"


# numba reads its cache directory when a cached function is decorated (below): point it at the
# user's cache, never the installed package, unless the user chose one with NUMBA_CACHE_DIR.
if not os.environ.get("NUMBA_CACHE_DIR"):
    numba.config.CACHE_DIR = str(kernel_cache_dir())

name = "numba"

#: Band pixels per block: each thread owns whole blocks (disjoint columns of the statistics).
PIXEL_BLOCK = 64
#: How many samples ahead of the interpolation the reference's cache lines are prefetched.
PREFETCH_DISTANCE = 8

# Short names of the table layouts for the kernel (IntEnum members are compile-time constants).
_P = ParticleColumn
_X = PixelRow


@intrinsic
def _prefetch(typingctx, array, z, y, x):
    """Hint the CPU to load the cache line of ``array[z, y, x]`` (LLVM's prefetch: read,
    highest locality, data cache); no bounds check, no effect on the numbers."""
    def codegen(context, builder, signature, args):
        aryty = signature.args[0]
        ary = context.make_array(aryty)(context, builder, args[0])
        index = [context.cast(builder, a, t, types.intp)
                 for a, t in zip(args[1:], signature.args[1:])]
        ptr = cgutils.get_item_pointer(context, builder, aryty, ary, index, wraparound=False)
        i8p, i32 = ir.IntType(8).as_pointer(), ir.IntType(32)
        fn = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(ir.VoidType(), [i8p, i32, i32, i32]),
            "llvm.prefetch.p0i8")
        builder.call(fn, [builder.bitcast(ptr, i8p), i32(0), i32(3), i32(1)])
        return context.get_dummy_value()
    return types.void(array, z, y, x), codegen


@njit(fastmath=False, cache=True, nogil=True)
def _accumulate_block(stats, cells, observed, ptab, pix, ref, radius, ref_scale, p0, p1,
                      shift_x, shift_y, col, row, qtab, cont, half_box):
    """Pixels p0:p1 of one batch (serial); returns the number of out-of-range samples.

    Per particle: a coordinate loop computes the sampling coordinates (scale * A^T (kx, ky, 0),
    Friedel-flipped for x < 0; trilinear cell and weights); a gather loop interpolates (memory
    bound, with prefetches); a third loop applies shift, CTF and sums (compute bound)."""
    n = observed.shape[0]
    n_cells = stats.shape[0]
    r = radius
    width = p1 - p0
    acc = np.zeros((n_cells, N_STATS, width), dtype=np.float64)
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
                if q < PREFETCH_DISTANCE:  # the later samples: in the gather loop
                    _prefetch(ref, z0, y0, x0)
                    _prefetch(ref, z0, y0 + 1, x0)
                    _prefetch(ref, z0 + 1, y0, x0)
                    _prefetch(ref, z0 + 1, y0 + 1, x0)
            else:
                ix[q] = -1
        for q in range(width):
            a = q + PREFETCH_DISTANCE
            if a < width and ix[a] >= 0:
                _prefetch(ref, iz[a], iy[a], ix[a])
                _prefetch(ref, iz[a], iy[a] + 1, ix[a])
                _prefetch(ref, iz[a] + 1, iy[a], ix[a])
                _prefetch(ref, iz[a] + 1, iy[a] + 1, ix[a])
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
        nb4 = ptab[i, _P.NEG_QUARTER_B_A2]
        sc = ptab[i, _P.SCALE]
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
            # origin shift and odd phase: exp(i 2pi k.o) = ex[col] * ey[row] (k linear in the
            # grid indices), times exp(i odd) precomputed per pixel (cos/sin of the odd phase)
            ex = shift_x[i, col[p]]
            ey = shift_y[i, row[p]]
            er = ex.real * ey.real - ex.imag * ey.imag
            ei = ex.real * ey.imag + ex.imag * ey.real
            ca = er * pix[_X.COS_ODD_PHASE, p] - ei * pix[_X.SIN_ODD_PHASE, p]
            sa = er * pix[_X.SIN_ODD_PHASE, p] + ei * pix[_X.COS_ODD_PHASE, p]
            pr = sr * ca - si * sa
            pim = sr * sa + si * ca
            # CTF phase: exp(i gamma) = exp(i D) exp(i gamma_static) exp(-i phase_shift), with
            # the defocus phase D a quadratic in the column j along a row: exp(i D) advances by
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
            # envelope
            k2 = pix[_X.K2, p]
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
    return bad


@njit(fastmath=False, cache=True, nogil=True)
def _accumulate_blocks(stats, cells, observed, ptab, pix, ref, radius, ref_scale, shift_x,
                       shift_y, col, row, qtab, cont, half_box, first, step):
    """stats (n_cells, 6, m) += sums over particles for the pixel blocks first, first + step,
    ... (serial: one call per thread, without the GIL). Returns (number of out-of-range
    samples, table layout compiled with)."""
    m = observed.shape[1]
    n_blocks = (m + PIXEL_BLOCK - 1) // PIXEL_BLOCK
    bad = 0
    for b in range(first, n_blocks, step):
        p0 = b * PIXEL_BLOCK
        bad += _accumulate_block(stats, cells, observed, ptab, pix, ref, radius, ref_scale, p0,
                                 min(p0 + PIXEL_BLOCK, m), shift_x, shift_y, col, row, qtab,
                                 cont, half_box)
    # LAYOUT_ID: the table layout this kernel was compiled with (numba's cache may predate
    # _tables.py)
    return bad, LAYOUT_ID


#: Thread pools of the kernel, by number of threads (made on first use, kept for the process).
_POOLS: dict = {}


def _pool(workers: int) -> ThreadPoolExecutor:
    """The kernel threads: ``workers`` Python threads kept for the process, reused by every call
    (the kernel's and the image moments', which run one after the other)."""
    if workers not in _POOLS:
        _POOLS[workers] = ThreadPoolExecutor(workers, thread_name_prefix="csrefine-kernel")
    return _POOLS[workers]


@njit(fastmath=True, cache=True, nogil=True)
def _sums_rows(flat, mean, variance, start, stop):
    # One pass in float64 (the images hold no NaN or infinity: the reader refuses them, so
    # fastmath's reordering is safe; float64 sums neither overflow nor cancel at image values).
    # Vectorised by LLVM; the extremes are numpy's (SIMD), which numba's min/max loops are not.
    n = flat.shape[1]
    for i in range(start, stop):
        row = flat[i]
        total, square = 0.0, 0.0
        for j in range(n):
            x = np.float64(row[j])
            total += x
            square += x * x
        m = total / n
        mean[i] = m
        variance[i] = max(square / n - m * m, 0.0)


def image_moments(images: np.ndarray, threads: int) -> tuple[np.ndarray, np.ndarray]:
    """Per image of ``images`` (k, box, box): the largest deviation of a pixel from the image's
    mean, and the image's variance (float64 (k,) each), computed by ``threads`` threads without
    the GIL (box 192, 256 images, 2 threads: 3.9 ms). The images must be finite
    (:meth:`csrefine.images.StackReader.read` refuses others)."""
    flat = images.reshape(len(images), -1)
    mean, variance, deviation = np.empty(len(flat)), np.empty(len(flat)), np.empty(len(flat))

    def rows(a: int, z: int) -> None:
        _sums_rows(flat, mean, variance, a, z)
        part = flat[a:z]
        deviation[a:z] = np.maximum(part.max(axis=1) - mean[a:z], mean[a:z] - part.min(axis=1))

    cuts = _cuts(len(flat), threads)
    if len(cuts) <= 2:
        rows(0, len(flat))
    else:
        list(_pool(len(cuts) - 1).map(rows, cuts[:-1], cuts[1:]))
    return deviation, variance

def _cuts(n: int, threads: int) -> np.ndarray:
    """``n`` rows cut into at most ``threads`` consecutive shares: their bounds."""
    return np.linspace(0, n, max(1, min(int(threads or 1), n)) + 1).astype(int)


def band_transforms(images: np.ndarray, band, threads: int = 1) -> np.ndarray:
    """:func:`csrefine.backends.numpy_backend.band_transforms` (the same bits), the batch cut
    into ``threads`` shares, each transformed, gathered and signed by one thread of the kernel's
    pool (box 128, 256 images, 2 threads: 10.8 ms; scipy's own ``workers=2`` on the whole batch
    and the gather in the calling thread: 13-20 ms)."""
    sign = centring_sign(band)
    out = np.empty((images.shape[0], band.size), dtype=np.result_type(np.complex64, images.dtype))

    def share(a: int, z: int) -> None:
        ft = scipy.fft.rfft2(images[a:z], workers=1)
        np.multiply(ft.reshape(z - a, -1)[:, band.flat_index], sign, out=out[a:z])

    cuts = _cuts(len(images), threads)
    if len(images) == 0:
        return out
    if len(cuts) <= 2:
        share(0, len(images))
    else:
        list(_pool(len(cuts) - 1).map(share, cuts[:-1], cuts[1:]))
    return out


def kernel(stats: np.ndarray, k: KernelInputs, threads: int) -> int:
    """Add the statistics of ``k`` (:class:`csrefine.backends._tables.KernelInputs`) to
    ``stats`` (n_cells, 6, m) float64 with ``threads`` threads (thread t of T: the pixel blocks
    t, t + T, ...); returns the number of samples beyond the reference.

    Python threads that wait on a queue, not numba's parallel layer, whose OpenMP workers spin
    between calls and took a core from the image transforms between them (batches of 256, box
    128, 2 threads: 1.9-2.1 s per 4,096 particles against 1.1-1.3 s)."""
    px = k.pixels
    n_blocks = -(-k.observed.shape[1] // PIXEL_BLOCK)
    workers = max(1, min(int(threads or 1), n_blocks))

    def run(first: int):
        return _accumulate_blocks(stats, k.cells, k.observed, k.ptab, px.pix, k.ref, k.radius,
                                  k.ref_scale, k.shift_x, k.shift_y, px.col, px.row, k.qtab,
                                  px.cont, k.half_box, first, workers)

    if workers == 1:
        results = [run(0)]
    else:
        results = list(_pool(workers).map(run, range(workers)))
    if any(layout != LAYOUT_ID for _, layout in results):
        raise RuntimeError("numba's cached kernel was compiled for another table layout than "
                           "csrefine/backends/_tables.py's: delete the numba cache "
                           f"({kernel_cache_dir()})")
    return sum(bad for bad, _ in results)


def _accumulate_observed(stats, cells, observed, particles, reference, terms, band,
                         pixel_size_A, threads: int) -> None:
    inputs = kernel_inputs(cells, observed, particles, reference, terms, band, pixel_size_A)
    if kernel(stats, inputs, threads):
        raise ValueError("sampling beyond the cropped reference; increase k_max_px")


def accumulate_batch(stats, cells, images, particles, reference, terms, band, pixel_size_A,
                     threads: int = 1) -> None:
    """:meth:`csrefine.backends.Backend.accumulate_batch`: add one batch, all of one half set
    and predicted from ``reference``, to ``stats``."""
    if len(particles):
        _accumulate_observed(stats, cells, band_transforms(images, band, threads), particles,
                             reference, terms, band, pixel_size_A, threads)


def accumulate_halves(stats, cells, images, particles, references, terms, band, pixel_size_A,
                      threads: int = 1) -> None:
    """:meth:`csrefine.backends.Backend.accumulate_halves`: images transformed once, then the
    particles of half set h (h = 1, 2) predicted from ``references[h]``."""
    if len(particles) == 0:
        return
    observed = band_transforms(images, band, threads)
    cells = np.asarray(cells)
    for half in (1, 2):
        sel = np.flatnonzero(particles.half_set == half)
        if sel.size:
            _accumulate_observed(stats, cells[sel], observed[sel], particles.subset(sel),
                                 references[half], terms, band, pixel_size_A, threads)


def warm_up() -> None:
    """Compile the kernel, or load it from numba's cache, by running it on a tiny batch."""
    box, px = 16, 2.0
    group = OpticsGroup(1, "warm-up", 300.0, 2.7, 0.1, px, box)
    band = make_band(box, px, 0.0, 0.5 / px)
    one = np.ones(1)
    parts = Particles(one * 1e4, one * 1e4, 0 * one, 0 * one, 0 * one, one, 0 * one, 0 * one,
                      0 * one, 0 * one, 0 * one, one.astype(int), one.astype(int))
    ref = make_padded_reference(np.zeros((box,) * 3, np.float32), 0.5, margin=1.01)
    stats = np.zeros((1, N_STATS, band.size))
    accumulate_batch(stats, np.zeros(1, np.int64), np.zeros((1, box, box), np.float32), parts,
                     ref, pixel_terms(group, band), band, px, 1)
