"""GPU backend (CuPy, optional extra ``csrefine[gpu]`` / ``csrefine[gpu-cuda13]``): batched FFT,
fused slice+shift+CTF kernel and per-cell reduction on the device.

Tested in two ways (tests/test_backends.py):
* everywhere: the same Python-level driver with numpy standing in for CuPy (the "array" kernel,
  an element-wise formulation of the fused kernel), and the CUDA source ``_CUDA_SOURCE``
  compiled as C++ with g++ (a few lines stand in for the CUDA built-ins) and run thread by
  thread on the CPU, both against the numpy reference backend;
* on a machine with CuPy and a CUDA GPU (skipped, and said so, elsewhere): the RawKernel (NVRTC),
  cuFFT, pinned host buffers and the whole refinement, against the numpy and numba backends.
  Run on an NVIDIA H100 (CuPy 14.2, CUDA 13): all pass; speed in README.md ("Performance").

Driver per batch (both half sets):
  1. images -> device by DMA from the pinned host buffer the pipeline read them into
     (:func:`host_buffer`; other arrays go through a pinned staging copy) on a dedicated stream;
     ``rfft2(.)`` batched, gathered at the band pixels and multiplied by the centring sign --
     once for both half sets;
  2. per-particle table (rotation rows, defocus, astigmatism, phase shift, B, scale, origins) made
     on the host (tiny) and copied; per-pixel tables and the padded references are copied once
     and cached on the device for the life of the reference;
  3. per half set, a fused element-wise kernel, one thread per (particle, band pixel), writes the
     six terms (n, 6, m) using that half set's reference;
  4. a one-hot (n_cells x n) matrix product reduces them per cell on the device; the small
     (n_cells, 6, m) result is copied back and added to ``stats``.
Overlap: the pipeline reads the next batch with ``--j`` threads (:func:`reader_threads`) while
this batch is computed; CuPy releases the GIL while it waits for the device.
"""

from __future__ import annotations

import weakref

import numpy as np

from ..accumulate import N_STATS
from . import centring_sign
from ._tables import ParticleColumn, PixelRow, cuda_defines, particle_table, pixel_table

try:
    import cupy as _cupy_module
except ImportError as exc:  # pragma: no cover - depends on the installation
    raise ImportError("the cupy backend needs CuPy and a CUDA GPU: pip install 'csrefine[gpu]' "
                      "(cupy-cuda12x), or use --device cpu") from exc


name = "cupy"


def _cupy():
    return _cupy_module


# --------------------------------------------------------------------------------------------
# The fused kernel: element-wise array formulation (any xp) and CUDA source (CuPy only)
# --------------------------------------------------------------------------------------------

def rows_array(xp, observed, ptab, pix, ref, radius: int, ref_scale: float,
               defocus_factor: float):
    """The six terms per particle and pixel, (n, 6, m) float64, with array operations.

    observed (n, m) complex64/128 band transforms; ptab (n, N_PARTICLE_COLUMNS), columns
    :class:`~csrefine.backends._tables.ParticleColumn`; pix (rows, m), rows
    :class:`~csrefine.backends._tables.PixelRow` (with or without the trigonometric rows);
    ref the padded reference data (complex64, [z + R, y + R, x]).
    Returns (rows, n_out_of_range).
    """
    c, w = ParticleColumn, PixelRow
    t = ptab[:, :, None]
    kxp, kyp = pix[w.KX_PX][None, :], pix[w.KY_PX][None, :]
    x = (t[:, c.R00] * kxp + t[:, c.R10] * kyp) * ref_scale
    y = (t[:, c.R01] * kxp + t[:, c.R11] * kyp) * ref_scale
    z = (t[:, c.R02] * kxp + t[:, c.R12] * kyp) * ref_scale
    flip = x < 0
    x, y, z = xp.where(flip, -x, x), xp.where(flip, -y, y), xp.where(flip, -z, z)
    r = radius
    bad = (x > r) | (xp.abs(y) > r - 1) | (xp.abs(z) > r - 1)
    n_bad = int(bad.sum())
    x = xp.where(bad, 0.0, x)
    y = xp.where(bad, 0.0, y) + r
    z = xp.where(bad, 0.0, z) + r
    x0 = xp.floor(x).astype(np.int64)
    y0 = xp.floor(y).astype(np.int64)
    z0 = xp.floor(z).astype(np.int64)
    fx, fy, fz = x - x0, y - y0, z - z0
    gx = 1.0 - fx
    sr = xp.zeros(x.shape, dtype=np.float64)
    si = xp.zeros(x.shape, dtype=np.float64)
    for dz, wz in ((0, 1.0 - fz), (1, fz)):
        for dy, wy in ((0, 1.0 - fy), (1, fy)):
            wzy = wz * wy
            v0 = ref[z0 + dz, y0 + dy, x0]
            v1 = ref[z0 + dz, y0 + dy, x0 + 1]
            w0, w1 = wzy * gx, wzy * fx
            sr = sr + w0 * v0.real.astype(np.float64)
            si = si + w0 * v0.imag.astype(np.float64)
            sr = sr + w1 * v1.real.astype(np.float64)
            si = si + w1 * v1.imag.astype(np.float64)
    si = xp.where(flip, -si, si)
    arg = (2.0 * np.pi * (pix[w.KX_PER_A][None, :] * t[:, c.ORIGIN_X_A]
                          + pix[w.KY_PER_A][None, :] * t[:, c.ORIGIN_Y_A])
           + pix[w.ODD_PHASE][None, :])
    ca, sa = xp.cos(arg), xp.sin(arg)
    pr = sr * ca - si * sa
    pim = sr * sa + si * ca
    k2 = pix[w.K2][None, :]
    defocus = t[:, c.MEAN_DEFOCUS_A] + t[:, c.HALF_ASTIGMATISM_A] * (
        pix[w.COS_2THETA][None, :] * t[:, c.COS_2PHI]
        + pix[w.SIN_2THETA][None, :] * t[:, c.SIN_2PHI])
    g = defocus_factor * defocus * k2 + pix[w.GAMMA_STATIC][None, :] - t[:, c.PHASE_SHIFT_RAD]
    sg, cg = xp.sin(g), xp.cos(g)
    env = t[:, c.SCALE] * xp.exp(t[:, c.NEG_QUARTER_B_A2] * k2)
    xr, xi = observed.real, observed.imag  # float32 for complex64 input, as in the reference
    pp = env * env * (pr * pr + pim * pim)
    xpr = env * (xr.astype(np.float64) * pr + xi.astype(np.float64) * pim)
    f = (xr * xr + xi * xi).astype(np.float64)
    rows = xp.stack([pp * sg * sg, pp * sg * cg, pp * cg * cg, -xpr * sg, -xpr * cg, f], axis=1)
    rows = xp.where(bad[:, None, :], 0.0, rows)
    return rows, n_bad


#: The kernel body; it reads the tables only through the names CSREFINE_PT_<column> (index in
#: a particle's row ``t``) and CSREFINE_PX_<row> (row of ``pix``) that
#: :func:`csrefine.backends._tables.cuda_defines` generates.
_CUDA_KERNEL = r"""
#define CSREFINE_PI 3.141592653589793238462643383279502884
#define PT(name) t[CSREFINE_PT_##name]
#define PX(name) pix[(long long)CSREFINE_PX_##name * m + p]
extern "C" __global__
void csrefine_rows(const complex<float>* __restrict__ obs, const double* __restrict__ ptab,
                   const double* __restrict__ pix, const complex<float>* __restrict__ ref,
                   const int n, const int m, const int radius, const int ny, const int nx,
                   const double ref_scale, const double defocus_factor,
                   double* __restrict__ rows, unsigned long long* __restrict__ n_bad)
{
    const long long idx = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= (long long)n * m) return;
    const int i = (int)(idx / m);
    const int p = (int)(idx % m);
    const double* t = ptab + (long long)CSREFINE_N_PARTICLE_COLUMNS * i;
    const double kxp = PX(KX_PX), kyp = PX(KY_PX);
    double x = (PT(R00) * kxp + PT(R10) * kyp) * ref_scale;
    double y = (PT(R01) * kxp + PT(R11) * kyp) * ref_scale;
    double z = (PT(R02) * kxp + PT(R12) * kyp) * ref_scale;
    const bool flip = x < 0;
    if (flip) { x = -x; y = -y; z = -z; }
    double* out = rows + (long long)i * CSREFINE_N_STATS * m + p;
    const double r = radius;
    if (x > r || fabs(y) > r - 1 || fabs(z) > r - 1) {
        atomicAdd(n_bad, 1ULL);
        for (int s = 0; s < CSREFINE_N_STATS; ++s) out[(long long)s * m] = 0.0;
        return;
    }
    y += r; z += r;
    const int x0 = (int)floor(x), y0 = (int)floor(y), z0 = (int)floor(z);
    const double fx = x - x0, fy = y - y0, fz = z - z0, gx = 1.0 - fx;
    double sr = 0.0, si = 0.0;
    for (int dz = 0; dz < 2; ++dz) {
        const double wz = dz ? fz : 1.0 - fz;
        for (int dy = 0; dy < 2; ++dy) {
            const double wy = dy ? fy : 1.0 - fy;
            const double wzy = wz * wy;
            const long long base = ((long long)(z0 + dz) * ny + (y0 + dy)) * nx + x0;
            const complex<float> v0 = ref[base], v1 = ref[base + 1];
            const double w0 = wzy * gx, w1 = wzy * fx;
            sr += w0 * (double)v0.real(); si += w0 * (double)v0.imag();
            sr += w1 * (double)v1.real(); si += w1 * (double)v1.imag();
        }
    }
    if (flip) si = -si;
    const double arg = 2.0 * CSREFINE_PI * (PX(KX_PER_A) * PT(ORIGIN_X_A)
                                            + PX(KY_PER_A) * PT(ORIGIN_Y_A))
                       + PX(ODD_PHASE);
    double sa, ca;
    sincos(arg, &sa, &ca);
    const double pr = sr * ca - si * sa, pim = sr * sa + si * ca;
    const double k2 = PX(K2);
    const double defocus = PT(MEAN_DEFOCUS_A)
        + PT(HALF_ASTIGMATISM_A) * (PX(COS_2THETA) * PT(COS_2PHI) + PX(SIN_2THETA) * PT(SIN_2PHI));
    const double g = defocus_factor * defocus * k2 + PX(GAMMA_STATIC) - PT(PHASE_SHIFT_RAD);
    double sg, cg;
    sincos(g, &sg, &cg);
    const double env = PT(SCALE) * exp(PT(NEG_QUARTER_B_A2) * k2);
    const complex<float> xv = obs[(long long)i * m + p];
    const float xr = xv.real(), xi = xv.imag();
    const double pp = env * env * (pr * pr + pim * pim);
    const double xpr = env * ((double)xr * pr + (double)xi * pim);
    out[0] = pp * sg * sg;
    out[(long long)m] = pp * sg * cg;
    out[2LL * m] = pp * cg * cg;
    out[3LL * m] = -xpr * sg;
    out[4LL * m] = -xpr * cg;
    out[5LL * m] = (double)(xr * xr + xi * xi);
}
"""


def cuda_source(particle_columns=ParticleColumn, pixel_rows=PixelRow) -> str:
    """The CUDA source of the fused kernel for the given table layouts (default: those of
    :mod:`csrefine.backends._tables`): CuPy's complex header, the generated index ``#define``
    lines, then :data:`_CUDA_KERNEL`. Tests pass a permuted layout to check that the kernel
    reads the tables only through the generated names."""
    return ("#include <cupy/complex.cuh>\n" + cuda_defines(particle_columns, pixel_rows)
            + _CUDA_KERNEL)


_CUDA_SOURCE = cuda_source()

_KERNELS = {}


def _raw_kernel(cp):
    if "rows" not in _KERNELS:
        _KERNELS["rows"] = cp.RawKernel(_CUDA_SOURCE, "csrefine_rows")
    return _KERNELS["rows"]


def rows_raw(cp, observed, ptab, pix, ref, radius: int, ref_scale: float, defocus_factor: float):
    """CUDA version of :func:`rows_array` (CuPy arrays in and out); tested on a GPU only."""
    n, m = observed.shape
    observed = cp.ascontiguousarray(observed, dtype=cp.complex64)
    rows = cp.empty((n, N_STATS, m), dtype=cp.float64)
    n_bad = cp.zeros(1, dtype=cp.uint64)
    threads = 256
    blocks = (n * m + threads - 1) // threads
    _raw_kernel(cp)((blocks,), (threads,),
                    (observed, cp.ascontiguousarray(ptab), cp.ascontiguousarray(pix), ref,
                     np.int32(n), np.int32(m), np.int32(radius), np.int32(ref.shape[1]),
                     np.int32(ref.shape[2]), np.float64(ref_scale), np.float64(defocus_factor),
                     rows, n_bad))
    return rows, int(n_bad.get()[0])


# --------------------------------------------------------------------------------------------
# Driver
# --------------------------------------------------------------------------------------------

class _DeviceCache:
    """Device copies of references and pixel tables, kept while the host object lives."""

    def __init__(self):
        self._items = {}

    def get(self, key_obj, tag, make):
        key = (id(key_obj), tag)
        if key not in self._items:
            self._items[key] = make()
            weakref.finalize(key_obj, self._items.pop, key, None)
        return self._items[key]


_CACHE = _DeviceCache()


def band_transforms_xp(xp, images, flat_index, sign, threads: int = 1):
    """rfft2(images) at the band pixels times ``sign`` (:func:`csrefine.backends.centring_sign`,
    on xp's device), i.e. the transforms of the images with their centre at index 0: (n, m)
    complex.

    Single-precision transforms (like the reference's scipy.fft on float32 images); on the CPU
    stand-in scipy.fft itself is used, so the results match the reference exactly (cuFFT's
    float32 rounding differs from pocketfft's at the ~1e-7 level)."""
    if xp is np:
        import scipy.fft
        ft = scipy.fft.rfft2(images, workers=threads)
    else:
        ft = xp.fft.rfft2(images)
    return ft.reshape(images.shape[0], -1)[:, flat_index] * sign


def reduce_cells(xp, rows, cells, n_cells: int):
    """Sum rows (n, 6, m) per cell with a one-hot matrix product: (n_cells, 6, m)."""
    n = rows.shape[0]
    onehot = xp.zeros((n_cells, n), dtype=np.float64)
    onehot[cells, xp.arange(n)] = 1.0
    return (onehot @ rows.reshape(n, -1)).reshape((n_cells,) + rows.shape[1:])


#: Address ranges (start, stop) of the pinned host buffers handed out by :func:`host_buffer`.
_PINNED = {}


def host_buffer(shape) -> np.ndarray:
    """A float32 host array in pinned (page-locked) memory, for the pipeline to read images into;
    views of it go to the device by DMA without a staging copy."""
    cp = _cupy()
    count = int(np.prod(shape))
    memory = cp.cuda.alloc_pinned_memory(count * 4)
    array = np.frombuffer(memory, np.float32, count).reshape(shape)  # keeps ``memory`` alive
    start = array.ctypes.data
    _PINNED[start] = start + count * 4
    weakref.finalize(array, _PINNED.pop, start, None)
    return array


def _is_pinned(array: np.ndarray) -> bool:
    """Whether ``array`` is a C-contiguous view into a live :func:`host_buffer`."""
    if not array.flags.c_contiguous:
        return False
    lo = array.ctypes.data
    hi = lo + array.nbytes
    return any(start <= lo and hi <= stop for start, stop in list(_PINNED.items()))


def default_batch_size(box: int) -> int:
    """About 256 MiB of images per batch (1024 at box 256), between 64 and 2048."""
    return int(np.clip((256 << 20) // (4 * box * box), 64, 2048))


def reader_threads(threads: int) -> int:
    """With the work on the GPU, all ``--j`` threads of the host read images."""
    return max(1, int(threads))


def warm_up() -> None:
    """Initialise CUDA, compile the kernel (NVRTC) and create cuFFT/cuBLAS handles."""
    cp = _cupy()
    kernel = _raw_kernel(cp)
    if hasattr(kernel, "compile"):
        kernel.compile()
    cp.fft.rfft2(cp.zeros((1, 8, 8), dtype=cp.float32))
    cp.ones((2, 2)) @ cp.ones((2, 2))
    cp.cuda.Device().synchronize()


def _to_device(xp, array, stream=None):
    """(device array, staging buffer): an asynchronous copy on ``stream`` from pinned host
    memory (the array itself if it is a :func:`host_buffer`, else a staging copy); the caller
    keeps the staging buffer alive until the stream is synchronised."""
    if xp is np:
        return np.asarray(array), None
    if _is_pinned(array):
        host, pinned = array, None
    else:
        pinned = xp.cuda.alloc_pinned_memory(array.nbytes)
        host = np.frombuffer(pinned, array.dtype, array.size).reshape(array.shape)
        host[...] = array
    out = xp.empty(array.shape, dtype=array.dtype)
    out.set(host, stream=stream)
    return out, pinned


def accumulate_batch(stats, cells, images, particles, reference, terms, band, pixel_size_A,
                     threads: int = 1, *, xp=None, kernel: str = "auto") -> None:
    """Add one batch of particles (all predicted from ``reference``) to ``stats``.

    Same arguments and result as :func:`csrefine.backends.numpy_backend.accumulate_batch`.
    ``xp``: the array module (default CuPy; numpy for the CPU stand-in used in tests);
    ``kernel``: "raw" (CUDA RawKernel), "array" (element-wise xp operations) or "auto" (raw
    with CuPy, array otherwise). ``threads``: FFT workers of the CPU stand-in (unused on the
    device).
    """
    _accumulate(stats, cells, images, particles, [(np.arange(len(particles)), reference)],
                terms, band, pixel_size_A, threads, xp, kernel)


def accumulate_halves(stats, cells, images, particles, references, terms, band, pixel_size_A,
                      threads: int = 1, *, xp=None, kernel: str = "auto") -> None:
    """Add one batch holding both half sets: images copied and transformed once, then the
    particles of half set h predicted from ``references[h]`` (h = 1, 2).

    Equivalent to :func:`accumulate_batch` called per half set (tests/test_backends.py).
    """
    parts = [(np.flatnonzero(particles.half_set == h), references[h]) for h in (1, 2)]
    _accumulate(stats, cells, images, particles, parts, terms, band, pixel_size_A, threads, xp,
                kernel)


def _accumulate(stats, cells, images, particles, parts, terms, band, pixel_size_A, threads, xp,
                kernel):
    if len(particles) == 0:
        return
    xp = _cupy() if xp is None else xp
    use_raw = kernel == "raw" or (kernel == "auto" and xp is not np)
    if xp is np:
        _accumulate_on(xp, None, stats, cells, images, particles, parts, terms, band,
                       pixel_size_A, threads, use_raw)
        return
    stream = _STREAMS.get("compute")
    if stream is None:
        stream = _STREAMS["compute"] = xp.cuda.Stream(non_blocking=True)
    with stream:
        _accumulate_on(xp, stream, stats, cells, images, particles, parts, terms, band,
                       pixel_size_A, threads, use_raw)
        stream.synchronize()


_STREAMS = {}


def _accumulate_on(xp, stream, stats, cells, images, particles, parts, terms, band,
                   pixel_size_A, threads, use_raw):
    n_cells = stats.shape[0]
    pix = _CACHE.get(terms, ("pix", id(xp), float(pixel_size_A)),
                     lambda: xp.asarray(pixel_table(terms, pixel_size_A,
                                                              with_trig=False)))
    flat = _CACHE.get(band, ("flat", id(xp)), lambda: xp.asarray(band.flat_index))
    sign = _CACHE.get(band, ("sign", id(xp)), lambda: xp.asarray(centring_sign(band)))
    imgs, staging = _to_device(xp, np.ascontiguousarray(images, dtype=np.float32), stream)
    observed = band_transforms_xp(xp, imgs, flat, sign, threads)
    del imgs
    ptab_all = particle_table(particles)
    cells = np.asarray(cells, dtype=np.int64)
    total = None
    for sel, reference in parts:
        if sel.size == 0:
            continue
        ref = _CACHE.get(reference, ("ref", id(xp)), lambda r=reference: xp.asarray(r.data))
        obs = observed if sel.size == len(particles) else observed[xp.asarray(sel)]
        args = (xp, obs, xp.asarray(ptab_all[sel]), pix, ref, int(reference.radius),
                float(reference.scale), float(terms.defocus_factor))
        rows, n_bad = rows_raw(*args) if use_raw else rows_array(*args)
        if n_bad:
            raise ValueError("sampling beyond the cropped reference; increase k_max_px")
        part = reduce_cells(xp, rows, xp.asarray(cells[sel]), n_cells)
        total = part if total is None else total + part
    if total is not None:
        stats += total if xp is np else xp.asnumpy(total, stream=stream)  # blocking copy
    del staging
