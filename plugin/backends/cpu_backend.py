"""CPU backend: the C kernel (slice + shift + CTF + statistics) run by ``--j`` threads.

The kernel is ``_kernel.c``, compiled at install time into a shared library (``setup.py``) and
called through ctypes, which releases the GIL; its docstring explains the algorithm. Semantics
are those of :func:`csrefine.backends.numpy_backend.accumulate_batch` (the reference);
tests/test_backends.py checks agreement to ~1e-9 relative.

Work split: thread t of T takes the pixel blocks t, t + T, ... of a batch (each block owns
disjoint columns of the statistics: the same bits whatever the thread count). The per-particle
and per-pixel inputs are the numpy tables of :mod:`csrefine.backends._tables`; the kernel is told
their layout (which column or row holds what) with every call.
"""

from __future__ import annotations

import ctypes
import importlib.util
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import scipy.fft

from ..accumulate import N_STATS
from ._tables import KernelInputs, ParticleColumn, PixelRow, centring_sign, kernel_inputs
from .numpy_backend import default_batch_size, host_buffer, reader_threads  # noqa: F401

name = "cpu"


class _ParticleColumns(ctypes.Structure):
    _fields_ = [(f, ctypes.c_int64) for f in
                ("r00", "r01", "r02", "r10", "r11", "r12", "neg_quarter_b", "scale")]


class _PixelRows(ctypes.Structure):
    _fields_ = [(f, ctypes.c_int64) for f in
                ("kx_px", "ky_px", "k2", "cos_odd", "sin_odd", "cos_gamma", "sin_gamma")]


class _KernelArgs(ctypes.Structure):
    """``KernelArgs`` of _kernel.c, field for field."""

    _fields_ = ([(f, ctypes.c_void_p) for f in
                 ("stats", "cells", "observed", "ptab", "pix", "ref", "shift_x", "shift_y", "col",
                  "row", "qtab", "cont")]
                + [(f, ctypes.c_int64) for f in
                   ("n", "m", "n_cells", "n_columns", "ny", "nx", "radius", "half_box",
                    "observed_double")]
                + [("ref_scale", ctypes.c_double), ("pc", _ParticleColumns), ("pr", _PixelRows)])


_P, _X = ParticleColumn, PixelRow
#: The kernel's view of the tables' layout (:mod:`csrefine.backends._tables`).
_COLUMNS = _ParticleColumns(_P.R00, _P.R01, _P.R02, _P.R10, _P.R11, _P.R12, _P.NEG_QUARTER_B_A2,
                            _P.SCALE)
_ROWS = _PixelRows(_X.KX_PX, _X.KY_PX, _X.K2, _X.COS_ODD_PHASE, _X.SIN_ODD_PHASE,
                   _X.COS_GAMMA_STATIC, _X.SIN_GAMMA_STATIC)


def _load_library() -> ctypes.CDLL:
    """The kernel library built by setup.py, next to this module."""
    spec = importlib.util.find_spec("csrefine.backends._kernel")
    if spec is None or not spec.origin:
        raise ImportError("csrefine's CPU kernel (csrefine/backends/_kernel*.so) is not built: "
                          "install csrefine with pip (pip install .), which compiles it")
    lib = ctypes.CDLL(spec.origin)
    lib.csrefine_accumulate.argtypes = [ctypes.POINTER(_KernelArgs), ctypes.c_int64,
                                        ctypes.c_int64]
    lib.csrefine_accumulate.restype = ctypes.c_int64
    lib.csrefine_moments.argtypes = [ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64,
                                     ctypes.c_int64, ctypes.c_void_p, ctypes.c_void_p]
    lib.csrefine_moments.restype = None
    return lib


_LIB = _load_library()


#: Thread pools of the kernel, by number of threads (made on first use, kept for the process).
_POOLS: dict = {}


def _pool(workers: int) -> ThreadPoolExecutor:
    """The kernel threads: ``workers`` Python threads kept for the process, reused by every call
    (the kernel's and the image moments', which run one after the other)."""
    if workers not in _POOLS:
        _POOLS[workers] = ThreadPoolExecutor(workers, thread_name_prefix="csrefine-kernel")
    return _POOLS[workers]


def image_moments(images: np.ndarray, threads: int) -> tuple[np.ndarray, np.ndarray]:
    """Per image of ``images`` (k, box, box): the largest deviation of a pixel from the image's
    mean, and the image's variance (float64 (k,) each), computed by ``threads`` threads without
    the GIL. The images must be finite (:meth:`csrefine.images.StackReader.read` refuses
    others)."""
    flat = np.ascontiguousarray(images, dtype=np.float32).reshape(len(images), -1)
    mean, variance, deviation = np.empty(len(flat)), np.empty(len(flat)), np.empty(len(flat))

    def rows(a: int, z: int) -> None:
        _LIB.csrefine_moments(flat.ctypes.data, flat.shape[1], a, z, mean.ctypes.data,
                              variance.ctypes.data)
        part = flat[a:z]
        deviation[a:z] = np.maximum(part.max(axis=1) - mean[a:z], mean[a:z] - part.min(axis=1))

    _in_shares(rows, len(flat), threads)
    return deviation, variance


def _in_shares(work, n: int, threads: int) -> None:
    """``work(a, z)`` for ``n`` rows cut into at most ``threads`` consecutive shares, each by one
    thread of the kernel's pool (in the calling thread when there is one share)."""
    if n == 0:
        return
    cuts = np.linspace(0, n, max(1, min(int(threads or 1), n)) + 1).astype(int)
    if len(cuts) <= 2:
        work(0, n)
    else:
        list(_pool(len(cuts) - 1).map(work, cuts[:-1], cuts[1:]))


def band_transforms(images: np.ndarray, band, threads: int = 1,
                    rows: np.ndarray | None = None) -> np.ndarray:
    """:func:`csrefine.backends.numpy_backend.band_transforms` (the same bits), the batch cut
    into ``threads`` shares, each transformed, gathered and signed by one thread of the kernel's
    pool (box 128, 256 images, 2 threads: 10.8 ms; scipy's own ``workers=2`` on the whole batch
    and the gather in the calling thread: 13-20 ms). ``rows``: where each image's transform goes
    in the output (a permutation of its rows; default: in order)."""
    sign = centring_sign(band)
    out = np.empty((images.shape[0], band.size), dtype=np.result_type(np.complex64, images.dtype))

    def share(a: int, z: int) -> None:
        ft = scipy.fft.rfft2(images[a:z], workers=1).reshape(z - a, -1)[:, band.flat_index]
        if rows is None:
            np.multiply(ft, sign, out=out[a:z])
        else:
            out[rows[a:z]] = ft * sign

    _in_shares(share, len(images), threads)
    return out


#: Band pixels per block of the kernel (PIXEL_BLOCK in _kernel.c): the unit of work of a thread.
PIXEL_BLOCK = 64


def _kernel_args(stats: np.ndarray, k: KernelInputs) -> _KernelArgs:
    """The C kernel's arguments for ``k``, pointing into its arrays (which must outlive them)."""
    px, n, m = k.pixels, k.observed.shape[0], k.observed.shape[1]
    arrays = (stats, k.cells, k.observed, k.ptab, px.pix, k.ref, k.shift_x, k.shift_y, px.col,
              px.row, k.qtab, px.cont)
    expected = ((np.float64,), (np.int64,), (np.complex64, np.complex128), (np.float64,),
                (np.float64,), (np.complex64,), (np.complex128,), (np.complex128,), (np.int64,),
                (np.int64,), (np.float64,), (np.int8,))
    for a, dtypes in zip(arrays, expected):
        if not a.flags.c_contiguous or a.dtype not in dtypes:
            raise TypeError(f"kernel input {a.dtype} {a.shape} must be a C-contiguous array of "
                            f"{' or '.join(np.dtype(d).name for d in dtypes)}")
    if stats.shape[1:] != (N_STATS, m) or k.shift_x.shape[1] != k.half_box + 1 \
            or k.shift_y.shape[1] != 2 * k.half_box:
        raise ValueError("kernel inputs of inconsistent shapes")
    return _KernelArgs(*(a.ctypes.data for a in arrays), n, m, stats.shape[0], k.ptab.shape[1],
                       k.ref.shape[1], k.ref.shape[2], k.radius, k.half_box,
                       int(k.observed.dtype == np.complex128), k.ref_scale, _COLUMNS, _ROWS)


def kernel(stats: np.ndarray, k: KernelInputs, threads: int) -> int:
    """Add the statistics of ``k`` (:class:`csrefine.backends._tables.KernelInputs`) to
    ``stats`` (n_cells, 6, m) float64 with ``threads`` threads (thread t of T: the pixel blocks
    t, t + T, ...); returns the number of samples beyond the reference.

    Python threads kept in a pool, not an OpenMP layer, whose workers spin between calls and
    took a core from the image transforms between them (batches of 256, box 128, 2 threads:
    1.9-2.1 s per 4,096 particles against 1.1-1.3 s)."""
    if len(k.cells) == 0:
        return 0
    args = _kernel_args(stats, k)
    n_blocks = -(-k.observed.shape[1] // PIXEL_BLOCK)
    workers = max(1, min(int(threads or 1), n_blocks))

    def run(first: int) -> int:
        return _LIB.csrefine_accumulate(ctypes.byref(args), first, workers)

    results = [run(0)] if workers == 1 else list(_pool(workers).map(run, range(workers)))
    if min(results) < 0:
        raise MemoryError("the CPU kernel could not allocate its scratch memory")
    return sum(results)


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
    # the transforms of half set 1, then of half set 2: each half a contiguous block of rows
    order = np.argsort(particles.half_set, kind="stable")
    rows = np.empty_like(order)
    rows[order] = np.arange(order.size)
    observed = band_transforms(images, band, threads, rows)
    cells = np.asarray(cells)[order]
    halves = particles.half_set[order]
    for half in (1, 2):
        a, z = np.searchsorted(halves, half), np.searchsorted(halves, half, side="right")
        if z > a:
            _accumulate_observed(stats, cells[a:z], observed[a:z], particles.subset(order[a:z]),
                                 references[half], terms, band, pixel_size_A, threads)


def warm_up() -> None:
    """Nothing to do: the kernel was compiled at install time and is loaded with this module."""
