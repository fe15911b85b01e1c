"""Accumulation backends agree with the numpy reference (csrefine.backends.numpy_backend).

* the C kernel (``--device cpu``): on random data with every forward-model ingredient
  (astigmatism, phase shift, B-factor, scale, origins, odd and even aberrations, magnification
  matrix, both half sets, several cells), float32 and float64 images, to ~1e-9 relative; the
  same bits for any thread count;
* cupy (``--device cuda``): the CUDA kernel's source compiled as C++ for the CPU (where g++ is
  installed); on a machine with CuPy and a CUDA GPU, the real thing (kernel, cuFFT, pinned
  buffers, the whole refinement) -- skipped, and said so, elsewhere;
* devices and the Backend protocol;
* the full refinement gives the same Cs with the C kernel as with the numpy reference.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from csrefine.atomic_map import PACKAGED_MODEL
from csrefine.backends import _tables, cpu_backend, cupy_backend, get_backend, numpy_backend
from csrefine.errors import InputError
from csrefine.forward import pixel_terms
from csrefine.fourier import make_band
from csrefine.model import OpticsGroup
from csrefine.projection import make_padded_reference
from csrefine.simulate import random_particles

BOX, PX = 32, 1.5


def _problem(seed=0, n=24, n_cells=5, mag=True, bfactor=40.0):
    rng = np.random.default_rng(seed)
    group = OpticsGroup(
        1, "g", 300.0, 2.7, 0.1, PX, BOX,
        even_zernike=np.array([0.0, 0.1, -0.2, 0.15, 0.05, 0.0, 0.3]),
        odd_zernike=np.array([0.1, -0.2, 0.05, 0.1, -0.03, 0.02]),
        beam_tilt_x_mrad=0.3, beam_tilt_y_mrad=-0.2, has_beam_tilt=True,
        mag_matrix=np.array([[1.01, 0.006], [-0.004, 0.985]]) if mag else np.eye(2))
    band = make_band(BOX, PX, 1 / 25.0, 1 / (2.3 * PX))
    terms = pixel_terms(group, band)
    refs = {h: make_padded_reference(rng.normal(size=(BOX,) * 3).astype(np.float32),
                                     1 / 2.3, margin=1.05) for h in (1, 2)}
    parts = random_particles(n, rng, bfactor_A2=bfactor, max_origin_A=6.0)
    parts.phase_shift_deg[:] = rng.uniform(0, 120, n)
    parts.ctf_scale[:] = rng.uniform(0.5, 1.5, n)
    parts.half_set[:] = rng.integers(1, 3, n)
    images = rng.normal(size=(n, BOX, BOX)).astype(np.float32)
    cells = rng.integers(0, n_cells, n)
    return group, band, terms, refs, parts, images, cells, n_cells


def _accumulate(module, problem):
    group, band, terms, refs, parts, images, cells, n_cells = problem
    stats = np.zeros((n_cells, 6, band.size))
    for half in (1, 2):
        sel = np.flatnonzero(parts.half_set == half)
        module.accumulate_batch(stats, cells[sel], images[sel], parts.subset(sel), refs[half],
                                terms, band, group.pixel_size_A, 2)
    return stats


def _assert_close(stats, reference, rtol=1e-9):
    # relative to each statistic's scale (sums of signed terms can be near zero per pixel)
    scale = np.abs(reference).max(axis=(0, 2), keepdims=True)
    assert np.all(np.abs(stats - reference) <= rtol * scale), \
        np.max(np.abs(stats - reference) / scale, axis=(0, 2))


def _bent(problem):
    """``problem`` with projection frequencies that are no linear map of the grid's."""
    terms = problem[2]
    return problem[:2] + (replace(terms, kx_px=terms.kx_px + 1e-4 * terms.ky_px ** 2),) + problem[3:]


@pytest.mark.parametrize("mag,bfactor", [(True, 40.0), (False, 0.0)])
@pytest.mark.parametrize("images_dtype", [np.float32, np.float64])
def test_cpu_matches_numpy(mag, bfactor, images_dtype):
    problem = _problem(1, mag=mag, bfactor=bfactor)
    problem = problem[:5] + (problem[5].astype(images_dtype),) + problem[6:]
    lin = _tables.linear_frequency_map(problem[2], problem[1])
    assert np.allclose(lin, problem[0].mag_matrix, atol=1e-12)
    ref = _accumulate(numpy_backend, problem)
    assert np.abs(ref).max() > 0
    _assert_close(_accumulate(cpu_backend, problem), ref)


def test_cpu_refuses_frequencies_that_are_no_linear_map():
    """The kernel factorises the shift and defocus phases along the grid: projection frequencies
    that are no linear map of the grid's are refused, not computed wrongly."""
    with pytest.raises(ValueError, match="no linear map"):
        _accumulate(cpu_backend, _bent(_problem(1)))


def test_cpu_threads_give_identical_numbers():
    """Each pixel block is owned by one thread whatever the thread count: 1 and 3 threads give
    the same bits."""
    group, band, terms, refs, parts, images, cells, n_cells = _problem(12, n=20)
    out = []
    for threads in (1, 3):
        stats = np.zeros((n_cells, 6, band.size))
        cpu_backend.accumulate_batch(stats, cells, images, parts, refs[1], terms, band, PX,
                                       threads)
        out.append(stats)
    assert np.abs(out[0]).max() > 0
    np.testing.assert_array_equal(out[0], out[1])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n", [1, 5, 64])
def test_cpu_band_transforms_are_the_references_bits(n, dtype):
    """The CPU backend's transforms, cut into shares for its threads, are the numpy reference's
    bits for every thread count (including more threads than images)."""
    rng = np.random.default_rng(n)
    band = make_band(BOX, PX, 1 / 20.0, 1 / 3.5)
    images = rng.normal(size=(n, BOX, BOX)).astype(dtype)
    ref = numpy_backend.band_transforms(images, band, 1)
    for threads in (1, 2, 3, 8):
        got = cpu_backend.band_transforms(images, band, threads)
        assert got.dtype == ref.dtype == np.result_type(np.complex64, dtype)
        np.testing.assert_array_equal(got, ref)


@pytest.mark.parametrize("module", [numpy_backend, cpu_backend])
def test_halves_match_per_half_reference(module):
    """accumulate_halves (one transform per batch) == accumulate_batch per half set."""
    group, band, terms, refs, parts, images, cells, n_cells = problem = _problem(9)
    ref = _accumulate(numpy_backend, problem)
    stats = np.zeros_like(ref)
    module.accumulate_halves(stats, cells, images, parts, refs, terms, band, PX, 2)
    _assert_close(stats, ref)
    swapped = np.zeros_like(ref)
    module.accumulate_halves(swapped, cells, images, parts, {1: refs[2], 2: refs[1]}, terms,
                             band, PX, 2)
    assert not np.allclose(swapped, ref)


def test_cpu_accumulates_in_place_over_batches():
    group, band, terms, refs, parts, images, cells, n_cells = _problem(2, n=30)
    ref = np.zeros((n_cells, 6, band.size))
    got = np.zeros_like(ref)
    for lo, hi in ((0, 7), (7, 19), (19, 30)):
        idx = np.arange(lo, hi)
        for module, stats in ((numpy_backend, ref), (cpu_backend, got)):
            module.accumulate_batch(stats, cells[idx], images[idx], parts.subset(idx), refs[1],
                                    terms, band, PX, 1)
    _assert_close(got, ref)


@pytest.mark.parametrize("backend, seed", [
    pytest.param(cpu_backend, 4, id="cpu"),
    pytest.param(cupy_backend, 6, id="cuda", marks=pytest.mark.gpu),
])
def test_a_backend_reports_sampling_beyond_reference(backend, seed):
    group, band, terms, refs, parts, images, cells, n_cells = _problem(seed)
    small = make_padded_reference(np.zeros((BOX,) * 3, np.float32), 0.1)
    stats = np.zeros((n_cells, 6, band.size))
    with pytest.raises(ValueError, match="beyond the cropped reference"):
        backend.accumulate_batch(stats, cells, images, parts, small, terms, band, PX, 1)


def test_particle_and_pixel_tables():
    parts, terms = _problem(3)[4], _problem(3)[2]
    table = _tables.particle_table(parts)
    c = _tables.ParticleColumn
    assert table.shape == (len(parts), _tables.N_PARTICLE_COLUMNS) == (len(parts), len(c))
    assert np.array_equal(table[:, c.NEG_QUARTER_B_A2], -0.25 * parts.bfactor_A2)
    assert np.array_equal(table[:, c.ORIGIN_Y_A], parts.origin_y_A)
    full = _tables.pixel_table(terms, PX, with_trig=True)
    base = _tables.pixel_table(terms, PX, with_trig=False)
    assert full.shape[0] == _tables.N_PIXEL_ROWS and base.shape[0] == _tables.N_BASE_PIXEL_ROWS
    assert np.array_equal(full[:_tables.N_BASE_PIXEL_ROWS], base)
    assert np.array_equal(full[_tables.PixelRow.SIN_GAMMA_STATIC], np.sin(terms.gamma_static))


def _check_backend_interface(module, name):
    """``module`` implements csrefine.backends.Backend: isinstance (runtime_checkable) and each
    method's parameters are the Protocol's (names, order, defaults)."""
    import inspect

    from csrefine.backends import Backend
    assert isinstance(module, Backend)
    assert module.name == name
    for method in ("accumulate_batch", "accumulate_halves", "default_batch_size",
                   "reader_threads", "host_buffer", "warm_up"):
        want = list(inspect.signature(getattr(Backend, method)).parameters.values())[1:]
        got = list(inspect.signature(getattr(module, method)).parameters.values())
        assert [(q.name, q.default) for q in got] == [(q.name, q.default) for q in want], method


def test_backends_implement_the_protocol():
    for module in (numpy_backend, cpu_backend):
        _check_backend_interface(module, module.name)
        assert module.default_batch_size(256) == 256
        assert module.reader_threads(8) == 1
        buffer = module.host_buffer((3, 4, 4))
        assert buffer.shape == (3, 4, 4) and buffer.dtype == np.float32
        assert module.warm_up() is None
    _check_backend_interface(cupy_backend, "cupy")  # importable without CuPy
    assert cupy_backend.reader_threads(8) == 8
    assert [cupy_backend.default_batch_size(b) for b in (64, 256, 1024)] == [2048, 1024, 64]


def test_devices(monkeypatch):
    import sys

    assert get_backend("cpu") is cpu_backend
    for bad in ("numpy", "CPU", "auto", None):
        with pytest.raises(InputError, match="device must be one of cpu, cuda"):
            get_backend(bad)
    monkeypatch.setitem(sys.modules, "cupy", None)  # import cupy -> ImportError
    with pytest.raises(InputError, match="needs CuPy"):
        get_backend("cuda")


def test_validating_options_imports_no_cupy():
    """RefineOptions.validate() checks the device's name only: CuPy (optional) is imported only
    when a cuda run starts."""
    import subprocess
    import sys

    code = ("import sys; from csrefine.options import RefineOptions; "
            "RefineOptions(device='cuda').validate(); RefineOptions().validate(); "
            "print('cupy' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_kernel_refuses_inputs_of_another_type():
    """The C kernel reads raw memory: arrays of another type or layout are refused before."""
    _, band, terms, refs, parts, images, cells, n_cells = _problem(5)
    observed = cpu_backend.band_transforms(images, band, 1)
    k = _tables.kernel_inputs(cells, observed, parts, refs[1], terms, band, PX)
    stats = np.zeros((n_cells, 6, band.size))
    with pytest.raises(TypeError, match="C-contiguous"):
        cpu_backend.kernel(stats.astype(np.float32), k, 1)
    with pytest.raises(TypeError, match="C-contiguous"):
        cpu_backend.kernel(np.asfortranarray(stats), k, 1)
    with pytest.raises(ValueError, match="inconsistent shapes"):
        cpu_backend.kernel(np.zeros((n_cells, 5, band.size)), k, 1)
    assert cpu_backend.kernel(stats, k, 2) == 0 and np.abs(stats).max() > 0


def test_refine_cpu_and_numpy_give_the_same_cs(small_map_48, monkeypatch):
    """The whole refinement with the C kernel and with the numpy reference backend in its
    place: the same Cs and defocus offset."""
    import csrefine.pipeline
    from csrefine.options import RefineOptions
    from csrefine.simulate import ArrayImages, simulate_images

    vol, px = small_map_48
    rng = np.random.default_rng(7)
    truth = OpticsGroup(1, "g1", 300.0, 3.0, 0.1, px, vol.shape[0])
    parts = random_particles(300, rng)
    images = ArrayImages(simulate_images(vol, truth, parts, 0.5, rng))
    halves = tuple(vol + rng.normal(0, 0.005 * vol.max(), vol.shape).astype(np.float32)
                   for _ in range(2))
    options = RefineOptions(threads=2, min_particles=50, batch_size=128)
    results = {}
    for name in ("cpu", "numpy"):
        if name == "numpy":
            monkeypatch.setattr(csrefine.pipeline, "get_backend", lambda device: numpy_backend)
        res = csrefine.pipeline.refine({1: replace(truth, cs_mm=2.7)}, parts, images, halves,
                                       options=options)
        assert res.backend == name
        results[name] = res.groups[0]
    assert abs(results["cpu"].cs_refined_mm - 3.0) < 0.1
    assert results["cpu"].cs_refined_mm == pytest.approx(results["numpy"].cs_refined_mm,
                                                           abs=1e-6)
    assert results["cpu"].defocus_offset_A == pytest.approx(results["numpy"].defocus_offset_A,
                                                              abs=1e-3)


@pytest.fixture(scope="module")
def small_map_48():
    import gemmi

    from csrefine.atomic_map import density_map
    px = 1.6
    return density_map(gemmi.read_structure(str(PACKAGED_MODEL)), 48, px, b_factor_A2=10.0), px


# --------------------------------------------------------------------------------------------
# The CUDA kernel's source on the CPU: compiled as C++ with a stand-in for the CUDA built-ins
# --------------------------------------------------------------------------------------------

_CPU_STUB = r"""
#include <complex>
#include <cmath>
using std::complex;
#define __global__
#define __restrict__
struct csrefine_dim3 { long long x; };
static csrefine_dim3 blockIdx, threadIdx, blockDim;
static unsigned long long atomicAdd(unsigned long long* a, unsigned long long v)
{ unsigned long long o = *a; *a += v; return o; }
"""

_CPU_DRIVER = r"""
extern "C" void run_all(const complex<float>* obs, const double* ptab, const double* pix,
                        const complex<float>* ref, int n, int m, int radius, int ny, int nx,
                        double ref_scale, double defocus_factor, double* rows,
                        unsigned long long* n_bad)
{
    blockDim.x = 1; threadIdx.x = 0;
    for (long long b = 0; b < (long long)n * m; ++b) {
        blockIdx.x = b;
        csrefine_rows(obs, ptab, pix, ref, n, m, radius, ny, nx, ref_scale, defocus_factor,
                      rows, n_bad);
    }
}
"""


def test_cuda_kernel_source_compiled_for_the_cpu(tmp_path):
    """The CUDA kernel's source, compiled as C++ (g++) with a tiny CPU stand-in for the CUDA
    built-ins and run thread by thread, matches the numpy reference: checks the kernel's maths
    and table indexing without a GPU (not NVRTC-specific behaviour). Its body reads the tables
    only through the names generated from csrefine.backends._tables."""
    import ctypes
    import re
    import shutil
    import subprocess

    body = cupy_backend._CUDA_KERNEL
    assert not re.search(r"\b(t|pix)\[\s*\d", body), "literal table index in the CUDA kernel"
    if shutil.which("g++") is None:
        pytest.skip("g++ not available")
    src = cupy_backend.cuda_source().replace("#include <cupy/complex.cuh>", _CPU_STUB)
    (tmp_path / "k.cpp").write_text(src + _CPU_DRIVER)
    subprocess.run(["g++", "-O1", "-shared", "-fPIC", "-D_GNU_SOURCE", "-o",
                    str(tmp_path / "k.so"), str(tmp_path / "k.cpp")], check=True)
    lib = ctypes.CDLL(str(tmp_path / "k.so"))
    group, band, terms, refs, parts, images, cells, n_cells = problem = _problem(8)
    expected = _accumulate(numpy_backend, problem)
    got = np.zeros_like(expected)
    ptr, cint, cdouble = ctypes.c_void_p, ctypes.c_int, ctypes.c_double
    pix = _tables.pixel_table(terms, PX, with_trig=False)
    for half in (1, 2):
        sel = np.flatnonzero(parts.half_set == half)
        observed = np.ascontiguousarray(numpy_backend.band_transforms(images[sel], band, 1),
                                        dtype=np.complex64)
        ptab = _tables.particle_table(parts.subset(sel))
        data = refs[half].data
        n, m = observed.shape
        rows = np.empty((n, 6, m))
        n_bad = np.zeros(1, dtype=np.uint64)
        lib.run_all(ptr(observed.ctypes.data), ptr(ptab.ctypes.data), ptr(pix.ctypes.data),
                    ptr(data.ctypes.data), cint(n), cint(m), cint(refs[half].radius),
                    cint(data.shape[1]), cint(data.shape[2]), cdouble(refs[half].scale),
                    cdouble(terms.defocus_factor), ptr(rows.ctypes.data), ptr(n_bad.ctypes.data))
        assert n_bad[0] == 0
        for i, cell in enumerate(cells[sel]):
            got[cell] += rows[i]
    _assert_close(got, expected)


# --------------------------------------------------------------------------------------------
# Real GPU (CuPy + CUDA device): skipped without one (tests/conftest.py says why)
# --------------------------------------------------------------------------------------------

gpu = pytest.mark.gpu


@gpu
def test_gpu_matches_numpy():
    problem = _problem(11, n=64)
    ref = _accumulate(numpy_backend, problem)
    # single-precision image transforms: cuFFT and pocketfft round differently (~1e-7 relative)
    _assert_close(_accumulate(cupy_backend, problem), ref, rtol=1e-5)


@gpu
def test_gpu_halves_from_pinned_buffer_match_numpy():
    group, band, terms, refs, parts, images, cells, n_cells = problem = _problem(12, n=96)
    ref = _accumulate(numpy_backend, problem)
    cupy_backend.warm_up()
    buffer = cupy_backend.host_buffer(images.shape)
    buffer[...] = images
    assert cupy_backend._is_pinned(buffer[:50]) and not cupy_backend._is_pinned(images)
    stats = np.zeros_like(ref)
    cupy_backend.accumulate_halves(stats, cells[:50], buffer[:50], parts.subset(np.arange(50)),
                                   refs, terms, band, PX)
    cupy_backend.accumulate_halves(stats, cells[50:], buffer[50:], parts.subset(np.arange(50, 96)),
                                   refs, terms, band, PX)
    _assert_close(stats, ref, rtol=1e-5)


@gpu
def test_refine_cuda_and_cpu_give_the_same_cs(small_map_48):
    from csrefine.options import RefineOptions
    from csrefine.pipeline import refine
    from csrefine.simulate import ArrayImages, simulate_images

    vol, px = small_map_48
    rng = np.random.default_rng(8)
    truth = OpticsGroup(1, "g1", 300.0, 3.0, 0.1, px, vol.shape[0])
    parts = random_particles(400, rng)
    images = ArrayImages(simulate_images(vol, truth, parts, 0.5, rng))
    halves = tuple(vol + rng.normal(0, 0.005 * vol.max(), vol.shape).astype(np.float32)
                   for _ in range(2))
    cs = {}
    for device in ("cuda", "cpu"):
        res = refine({1: replace(truth, cs_mm=2.7)}, parts, images, halves,
                     options=RefineOptions(device=device, threads=2, min_particles=50))
        assert res.backend == {"cuda": "cupy", "cpu": "cpu"}[device]
        cs[device] = res.groups[0].cs_refined_mm
    assert abs(cs["cuda"] - 3.0) < 0.1
    assert cs["cuda"] == pytest.approx(cs["cpu"], abs=1e-5)
