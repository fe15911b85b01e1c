"""GPU backend (CuPy, optional extra ``csrefine[gpu]`` / ``csrefine[gpu-cuda13]``): batched FFT,
fused slice+shift+CTF kernel and per-cell reduction on the device.

CuPy is imported on first use (:func:`_cupy`), so that this module, and the kernel's CUDA source
in it, can be read without CuPy. Tests (tests/test_backends.py): everywhere, the CUDA source
compiled as C++ with g++ and run thread by thread on the CPU against the numpy reference
backend; on a machine with CuPy and a CUDA GPU (tests marked ``gpu``, skipped elsewhere), the
RawKernel (NVRTC), cuFFT, pinned host buffers and the whole refinement.

Driver per batch (both half sets):
  1. images -> device by DMA from the pinned host buffer the pipeline read them into
     (:func:`host_buffer`; other arrays go through a pinned staging copy) on a dedicated stream;
     ``rfft2(.)`` batched, gathered at the band pixels and multiplied by the centring sign --
     once for both half sets;
  2. per-particle table (rotation rows, defocus, astigmatism, phase shift, B, scale, origins) made
     on the host (tiny) and copied; per-pixel tables and the padded references are copied once
     and cached on the device for the life of the host objects;
  3. per half set, the fused kernel, one thread per (particle, band pixel), writes the six terms
     (n, 6, m) using that half set's reference;
  4. a one-hot (n_cells x n) matrix product reduces them per cell on the device; the small
     (n_cells, 6, m) result is copied back and added to ``stats``.
Overlap: the pipeline reads the next batch with ``--j`` threads (:func:`reader_threads`) while
this batch is computed; CuPy releases the GIL while it waits for the device.
"""

from __future__ import annotations

import weakref

import numpy as np

from ..accumulate import N_STATS
from ._tables import centring_sign, cuda_defines, particle_table, pixel_table

name = "cupy"


def _cupy():
    """The CuPy module (ImportError where it is not installed)."""
    import cupy
    return cupy


#: The kernel body; it reads the tables only through the names CSREFINE_PT_<column> (index in
#: a particle's row ``t``) and CSREFINE_PX_<row> (row of ``pix``) that
#: :func:`csrefine.backends._tables.cuda_defines` generates. One thread per (particle i, band
#: pixel p): the same arithmetic as the numpy reference (float64, complex64 reference and image
#: transforms upcast on use), the shift and CTF phases with sincos per pixel.
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


def cuda_source() -> str:
    """The CUDA source of the fused kernel: CuPy's complex header, the table layout's
    ``#define`` lines (:func:`csrefine.backends._tables.cuda_defines`), then the kernel."""
    return "#include <cupy/complex.cuh>\n" + cuda_defines() + _CUDA_KERNEL


_KERNELS = {}


def _raw_kernel(cp):
    if "rows" not in _KERNELS:
        _KERNELS["rows"] = cp.RawKernel(cuda_source(), "csrefine_rows")
    return _KERNELS["rows"]


def _rows(cp, observed, ptab, pix, ref, radius: int, ref_scale: float, defocus_factor: float):
    """The six terms per particle and pixel, (n, 6, m) float64 on the device, and the number of
    samples beyond the reference. observed (n, m) band transforms; ptab (n, columns) and pix
    (base rows, m) float64 tables (:mod:`csrefine.backends._tables`); ref the padded
    reference's complex64 data."""
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


def reduce_cells(cp, rows, cells, n_cells: int):
    """Sum rows (n, 6, m) per cell with a one-hot matrix product: (n_cells, 6, m)."""
    n = rows.shape[0]
    onehot = cp.zeros((n_cells, n), dtype=np.float64)
    onehot[cells, cp.arange(n)] = 1.0
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


def _to_device(cp, array, stream):
    """(device array, staging buffer): an asynchronous copy on ``stream`` from pinned host
    memory (the array itself if it is a :func:`host_buffer`, else a staging copy); the caller
    keeps the staging buffer alive until the stream is synchronised."""
    if _is_pinned(array):
        host, pinned = array, None
    else:
        pinned = cp.cuda.alloc_pinned_memory(array.nbytes)
        host = np.frombuffer(pinned, array.dtype, array.size).reshape(array.shape)
        host[...] = array
    out = cp.empty(array.shape, dtype=array.dtype)
    out.set(host, stream=stream)
    return out, pinned


def accumulate_batch(stats, cells, images, particles, reference, terms, band, pixel_size_A,
                     threads: int = 1) -> None:
    """:meth:`csrefine.backends.Backend.accumulate_batch` (``threads`` is unused: the work is
    on the device)."""
    _accumulate(stats, cells, images, particles, [(np.arange(len(particles)), reference)],
                terms, band, pixel_size_A)


def accumulate_halves(stats, cells, images, particles, references, terms, band, pixel_size_A,
                      threads: int = 1) -> None:
    """:meth:`csrefine.backends.Backend.accumulate_halves`: images copied and transformed once,
    then the particles of half set h predicted from ``references[h]`` (h = 1, 2)."""
    parts = [(np.flatnonzero(particles.half_set == h), references[h]) for h in (1, 2)]
    _accumulate(stats, cells, images, particles, parts, terms, band, pixel_size_A)


_STREAMS = {}


def _accumulate(stats, cells, images, particles, parts, terms, band, pixel_size_A):
    if len(particles) == 0:
        return
    cp = _cupy()
    stream = _STREAMS.get("compute")
    if stream is None:
        stream = _STREAMS["compute"] = cp.cuda.Stream(non_blocking=True)
    with stream:
        total = _accumulate_on(cp, stream, stats.shape[0], cells, images, particles, parts,
                               terms, band, pixel_size_A)
    if total is not None:
        stats += total


def _accumulate_on(cp, stream, n_cells, cells, images, particles, parts, terms, band,
                   pixel_size_A):
    """The per-cell sums of the batch, (n_cells, 6, m) float64 on the host (None: no particle)."""
    pix = _CACHE.get(terms, ("pix", float(pixel_size_A)),
                     lambda: cp.asarray(pixel_table(terms, pixel_size_A, with_trig=False)))
    flat = _CACHE.get(band, "flat", lambda: cp.asarray(band.flat_index))
    sign = _CACHE.get(band, "sign", lambda: cp.asarray(centring_sign(band)))
    imgs, staging = _to_device(cp, np.ascontiguousarray(images, dtype=np.float32), stream)
    # rfft2 at the band pixels times the centring sign: the transforms of the images with their
    # centre at index 0 (single precision, as the reference's scipy.fft on float32 images)
    observed = cp.fft.rfft2(imgs).reshape(imgs.shape[0], -1)[:, flat] * sign
    del imgs
    ptab_all = particle_table(particles)
    cells = np.asarray(cells, dtype=np.int64)
    total = None
    for sel, reference in parts:
        if sel.size == 0:
            continue
        ref = _CACHE.get(reference, "ref", lambda r=reference: cp.asarray(r.data))
        obs = observed if sel.size == len(particles) else observed[cp.asarray(sel)]
        rows, n_bad = _rows(cp, obs, cp.asarray(ptab_all[sel]), pix, ref, int(reference.radius),
                            float(reference.scale), float(terms.defocus_factor))
        if n_bad:
            raise ValueError("sampling beyond the cropped reference; increase k_max_px")
        part = reduce_cells(cp, rows, cp.asarray(cells[sel]), n_cells)
        total = part if total is None else total + part
    result = None if total is None else cp.asnumpy(total, stream=stream)  # blocking copy
    stream.synchronize()  # the staging buffer is released only after its copy
    del staging
    return result
