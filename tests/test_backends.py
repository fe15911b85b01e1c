"""Accumulation backends agree with the numpy reference (csrefine.backends.numpy_backend).

* numba and C: the fused compiled kernel (the same algorithm twice), on random data with every
  forward-model ingredient (astigmatism, phase shift, B-factor, scale, origins, odd and even
  aberrations, magnification matrix, both half sets, several cells), to ~1e-9 relative; the C
  library's build, cache and fallback;
* cupy: the GPU driver with numpy standing in for CuPy, and the CUDA kernel source compiled as
  C++ for the CPU (runs everywhere); on a machine with CuPy and a CUDA GPU, the real thing
  (kernels, cuFFT, pinned buffers, the whole refinement) -- skipped, and said so, elsewhere;
* resolve_backend / get_backend;
* the full refinement gives the same Cs with device="numba" and "c" as with device="numpy".
"""

from __future__ import annotations

import importlib
import sys

import numpy as np
import pytest

from csrefine.atomic_map import PACKAGED_MODEL
from csrefine.backends import get_backend, numba_backend, numpy_backend, resolve_backend
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


def _accumulate(module, problem, **kwargs):
    group, band, terms, refs, parts, images, cells, n_cells = problem
    stats = np.zeros((n_cells, 6, band.size))
    for half in (1, 2):
        sel = np.flatnonzero(parts.half_set == half)
        module.accumulate_batch(stats, cells[sel], images[sel], parts.subset(sel), refs[half],
                                terms, band, group.pixel_size_A, 2, **kwargs)
    return stats


def _assert_close(stats, reference, rtol=1e-9):
    # relative to each statistic's scale (sums of signed terms can be near zero per pixel)
    scale = np.abs(reference).max(axis=(0, 2), keepdims=True)
    assert np.all(np.abs(stats - reference) <= rtol * scale), \
        np.max(np.abs(stats - reference) / scale, axis=(0, 2))


@pytest.fixture(params=["numba", "c"])
def fused(request):
    """The fused CPU kernels' backend modules (numba, C)."""
    if request.param == "c":
        from csrefine.backends import c_backend
        if not c_backend.available():  # no C compiler on this machine
            pytest.skip(f"C kernel not built here: {c_backend._STATE.get('error')}")
        return c_backend
    return numba_backend


@pytest.mark.parametrize("mag,bfactor", [(True, 40.0), (False, 0.0)])
def test_fused_kernel_matches_numpy(fused, mag, bfactor):
    problem = _problem(1, mag=mag, bfactor=bfactor)
    ref = _accumulate(numpy_backend, problem)
    got = _accumulate(fused, problem)
    assert np.abs(ref).max() > 0
    _assert_close(got, ref)


def test_fused_touch_pass_on_and_off_give_identical_numbers(fused, monkeypatch):
    """The touch pass only prefetches: the kernel's statistics are bit-identical without it."""
    problem = _problem(3)
    out = {}
    for touch in (True, False):
        monkeypatch.setattr(fused.TOUCH, "choice", touch)
        out[touch] = _accumulate(fused, problem)
    assert np.abs(out[True]).max() > 0
    np.testing.assert_array_equal(out[True], out[False])


def test_c_kernel_equals_numba_kernel():
    """The two fused kernels are one algorithm in one operation order: their statistics agree
    to the last few bits (sin, cos and exp come from different libraries), on float32 and
    float64 images, with and without the separable path."""
    from dataclasses import replace

    from csrefine.backends import c_backend
    if not c_backend.available():
        pytest.skip(f"C kernel not built here: {c_backend._STATE.get('error')}")
    problem = _problem(11, n=40)
    for images_dtype in (np.float32, np.float64):
        for bend in (0.0, 1e-4):
            group, band, terms, refs, parts, images, cells, n_cells = problem
            bent = replace(terms, kx_px=terms.kx_px + bend * terms.ky_px ** 2)
            case = (group, band, bent, refs, parts, images.astype(images_dtype), cells, n_cells)
            _assert_close(_accumulate(c_backend, case), _accumulate(numba_backend, case),
                          rtol=1e-12)


def test_fused_kernel_threads_give_identical_numbers(fused):
    """Each pixel block is owned by one thread whatever the thread count: 1 and 3 threads give
    the same bits."""
    group, band, terms, refs, parts, images, cells, n_cells = _problem(12, n=20)
    out = []
    for threads in (1, 3):
        stats = np.zeros((n_cells, 6, band.size))
        fused.accumulate_batch(stats, cells, images, parts, refs[1], terms, band, PX, threads)
        out.append(stats)
    np.testing.assert_array_equal(out[0], out[1])


def test_touch_choice_keeps_the_faster_variant_after_its_trials(monkeypatch):
    monkeypatch.delenv(numba_backend.TouchChoice.ENV, raising=False)
    choice = numba_backend.TouchChoice()
    big = choice.MIN_SAMPLES
    seen = []
    # (on, off) pairs under a load that falls: the on variant is 10% faster in every pair,
    # although the slowest "on" time is slower than the fastest "off" time
    for on, off in ((3.3, 3.6), (2.0, 2.2), (0.9, 1.0)):
        for variant, per_sample in ((True, on), (False, off)):
            assert choice.get() is variant  # alternating while measuring
            seen.append(variant)
            choice.record(variant, per_sample * big, big)
    assert choice.choice is True and choice.get() is True
    choice.record(False, 0.0, big)  # decided: later timings change nothing
    assert choice.get() is True
    slower = numba_backend.TouchChoice()
    for on, off in ((1.2, 1.0), (1.1, 1.0), (0.5, 1.0)):  # slower in two pairs of three
        slower.record(True, on * big, big)
        slower.record(False, off * big, big)
    assert slower.choice is False
    small = numba_backend.TouchChoice()
    small.record(small.get(), 1.0, big - 1)  # too small a call to time: not counted
    assert small.seconds == {True: [], False: []}
    monkeypatch.setenv(numba_backend.TouchChoice.ENV, "0")
    assert numba_backend.TouchChoice().get() is False


def test_fused_halves_match_per_half_reference(fused):
    """accumulate_halves (one transform per batch) == the reference per half set."""
    group, band, terms, refs, parts, images, cells, n_cells = problem = _problem(9)
    ref = _accumulate(numpy_backend, problem)
    stats = np.zeros_like(ref)
    fused.accumulate_halves(stats, cells, images, parts, refs, terms, band, PX, 2)
    _assert_close(stats, ref)
    swapped = np.zeros_like(ref)
    fused.accumulate_halves(swapped, cells, images, parts, {1: refs[2], 2: refs[1]},
                            terms, band, PX, 2)
    assert not np.allclose(swapped, ref)


def test_fused_accumulates_in_place_over_batches(fused):
    group, band, terms, refs, parts, images, cells, n_cells = _problem(2, n=30)
    ref = np.zeros((n_cells, 6, band.size))
    got = np.zeros_like(ref)
    for lo, hi in ((0, 7), (7, 19), (19, 30)):
        idx = np.arange(lo, hi)
        for module, stats in ((numpy_backend, ref), (fused, got)):
            module.accumulate_batch(stats, cells[idx], images[idx], parts.subset(idx), refs[1],
                                    terms, band, PX, 1)
    _assert_close(got, ref)


def test_fused_linear_frequency_map_and_fallback(fused):
    group, band, terms, *_ = _problem(3)
    lin = numba_backend.linear_frequency_map(terms, band)
    assert np.allclose(lin, group.mag_matrix, atol=1e-12)
    # Non-linear projection frequencies: no separable shift; the direct path must agree too.
    from dataclasses import replace
    bent = replace(terms, kx_px=terms.kx_px + 1e-4 * terms.ky_px ** 2)
    assert numba_backend.linear_frequency_map(bent, band) is None
    problem = _problem(3)
    problem = (problem[0], problem[1], bent) + problem[3:]
    _assert_close(_accumulate(fused, problem), _accumulate(numpy_backend, problem))


def test_fused_reports_sampling_beyond_reference(fused):
    group, band, terms, refs, parts, images, cells, n_cells = _problem(4)
    small = make_padded_reference(np.zeros((BOX,) * 3, np.float32), 0.1)
    stats = np.zeros((n_cells, 6, band.size))
    with pytest.raises(ValueError, match="beyond the cropped reference"):
        fused.accumulate_batch(stats, cells, images, parts, small, terms, band, PX, 1)


def test_c_library_is_built_once_keyed_on_source_and_reused(tmp_path, monkeypatch):
    """The library is compiled into the kernel cache under a name keyed on the source; a
    second load (another process: the state reset) reuses the file; another layout or source
    gives another name."""
    from csrefine.backends import c_backend
    if c_backend.compiler() is None:
        pytest.skip("no C compiler here")
    monkeypatch.setenv("CSREFINE_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(c_backend, "_STATE", {})
    c_backend.load()
    built = list((tmp_path / "c").glob("csrefine_kernel_*.so"))
    assert len(built) == 1
    assert built[0] == c_backend.library_path(c_backend.source(), c_backend.compiler())
    stamp = built[0].stat().st_mtime_ns
    monkeypatch.setattr(c_backend, "_STATE", {})
    c_backend.load()
    assert built[0].stat().st_mtime_ns == stamp
    assert c_backend.library_path(c_backend.source() + "\n", "cc") != \
        c_backend.library_path(c_backend.source(), "cc")


def test_without_a_c_compiler_cpu_runs_on_numba(tmp_path, monkeypatch):
    """No compiler (or a broken one): --device cpu falls back to numba; --device c says why."""
    from csrefine.backends import c_backend
    monkeypatch.setenv("CSREFINE_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("CC", str(tmp_path / "no-such-compiler"))
    monkeypatch.setattr(c_backend, "_STATE", {})
    assert c_backend.available() is False
    assert resolve_backend("cpu") == "numba"
    from csrefine.backends import fallback_note
    assert "no C compiler" in fallback_note("cpu", "numba")
    assert "numba kernel runs instead" in fallback_note("cpu", "numba")
    assert fallback_note("numba", "numba") is None
    with pytest.raises(InputError, match="C kernel is not available.*no C compiler"):
        get_backend("c")
    broken = tmp_path / "broken-cc"
    broken.write_text("#!/bin/sh\necho 'cc: internal error' >&2\nexit 1\n")
    broken.chmod(0o755)
    monkeypatch.setenv("CC", str(broken))
    monkeypatch.setattr(c_backend, "_STATE", {})
    assert resolve_backend("auto") == "numba"
    assert "internal error" in c_backend._STATE["error"]
    assert not list((tmp_path / "c").glob("*.so"))  # nothing half-written left in the cache


def test_c_source_reads_the_tables_through_their_names():
    """The C source gets the table layout as #define lines generated from _tables.py, and its
    body has no literal column or row index."""
    import re

    from csrefine.backends import _tables, c_backend
    src = c_backend.source()
    defines = dict(re.findall(r"^#define (CSREFINE_P[TX]_\w+) (\d+)$", src, flags=re.MULTILINE))
    assert defines == {**{f"CSREFINE_PT_{c.name}": str(int(c)) for c in _tables.ParticleColumn},
                       **{f"CSREFINE_PX_{r.name}": str(int(r)) for r in _tables.PixelRow}}
    body = src[src.index("#include"):]
    assert not re.search(r"\bP[TX]\(\s*\w+\s*,\s*\d", body)
    assert f"#define CSREFINE_LAYOUT_ID {_tables.LAYOUT_ID}LL" in src


@pytest.fixture()
def cupy_on_numpy(monkeypatch):
    """The cupy backend module, imported with numpy installed as ``cupy`` (CPU stand-in)."""
    monkeypatch.setitem(sys.modules, "cupy", np)
    _forget_cupy_backend()
    module = importlib.import_module("csrefine.backends.cupy_backend")
    yield module
    _forget_cupy_backend()


def _forget_cupy_backend():
    import csrefine.backends
    sys.modules.pop("csrefine.backends.cupy_backend", None)
    if hasattr(csrefine.backends, "cupy_backend"):
        delattr(csrefine.backends, "cupy_backend")


def test_cupy_driver_on_numpy_matches_numpy(cupy_on_numpy):
    problem = _problem(5)
    ref = _accumulate(numpy_backend, problem)
    _assert_close(_accumulate(cupy_on_numpy, problem), ref)          # default xp ("cupy" = numpy)
    _assert_close(_accumulate(cupy_on_numpy, problem, xp=np, kernel="array"), ref)


def test_cupy_halves_on_numpy_match_per_half_reference(cupy_on_numpy):
    """accumulate_halves (one copy and transform per batch) == accumulate_batch per half set."""
    group, band, terms, refs, parts, images, cells, n_cells = problem = _problem(8)
    ref = _accumulate(numpy_backend, problem)
    for kernel in ("array", "auto"):
        stats = np.zeros_like(ref)
        cupy_on_numpy.accumulate_halves(stats, cells, images, parts, refs, terms, band, PX, 2,
                                        xp=np, kernel=kernel)
        _assert_close(stats, ref)
    # the references really are used per half set: swapping them changes the result
    stats = np.zeros_like(ref)
    cupy_on_numpy.accumulate_halves(stats, cells, images, parts, {1: refs[2], 2: refs[1]}, terms,
                                    band, PX, 2, xp=np)
    assert not np.allclose(stats, ref)


def test_cupy_batch_size_by_box(cupy_on_numpy):
    assert cupy_on_numpy.default_batch_size(256) == 1024
    assert cupy_on_numpy.default_batch_size(64) == 2048
    assert cupy_on_numpy.default_batch_size(1024) == 64


def test_cupy_driver_reports_sampling_beyond_reference(cupy_on_numpy):
    group, band, terms, refs, parts, images, cells, n_cells = _problem(6)
    small = make_padded_reference(np.zeros((BOX,) * 3, np.float32), 0.1)
    stats = np.zeros((n_cells, 6, band.size))
    with pytest.raises(ValueError, match="beyond the cropped reference"):
        cupy_on_numpy.accumulate_batch(stats, cells, images, parts, small, terms, band, PX, 1,
                                       xp=np)


def test_cuda_source_defines_are_the_tables_indices(cupy_on_numpy):
    """The CUDA source's table indices are generated from csrefine.backends._tables, and its
    kernel body reads the tables through those names only (no literal column or row)."""
    import re

    from csrefine.accumulate import N_STATS
    from csrefine.backends import _tables
    src = cupy_on_numpy._CUDA_SOURCE
    defines = dict(re.findall(r"^#define (CSREFINE_\w+) (\d+)$", src, flags=re.MULTILINE))
    expected = {f"CSREFINE_PT_{c.name}": str(int(c)) for c in _tables.ParticleColumn}
    expected.update({f"CSREFINE_PX_{r.name}": str(int(r)) for r in _tables.PixelRow})
    expected.update(CSREFINE_N_PARTICLE_COLUMNS=str(_tables.N_PARTICLE_COLUMNS),
                    CSREFINE_N_STATS=str(N_STATS))
    assert defines == expected
    body = cupy_on_numpy._CUDA_KERNEL
    assert not re.search(r"\b(t|pix)\[\s*\d", body), "literal table index in the CUDA kernel"
    assert not re.search(r"\b(t|pix)\[[^\]]*\b\d+\s*\*\s*m\b", body)
    # another layout gives another source
    assert cupy_on_numpy.cuda_source(*_permuted_layouts()) != src


def _permuted_layouts(seed=0):
    """ParticleColumn and PixelRow with the same names in a random order where no name keeps
    its index (IntEnums)."""
    from enum import IntEnum

    from csrefine.backends import _tables
    rng = np.random.default_rng(seed)
    layouts = []
    for enum in (_tables.ParticleColumn, _tables.PixelRow):
        order = np.arange(len(enum))
        while np.any(order == np.arange(len(enum))):
            order = rng.permutation(len(enum))
        layouts.append(IntEnum(enum.__name__, {m.name: int(order[m]) for m in enum}))
    return tuple(layouts)


def _relayout(table, enum, new_enum, axis):
    """``table`` (columns or rows ``enum`` along ``axis``) rearranged to ``new_enum``."""
    out = np.empty_like(table)
    for member in enum:
        index = [slice(None)] * table.ndim
        source = list(index)
        index[axis], source[axis] = int(new_enum[member.name]), int(member)
        out[tuple(index)] = table[tuple(source)]
    return np.ascontiguousarray(out)


def _check_backend_interface(module, name):
    """``module`` implements csrefine.backends.Backend: isinstance (runtime_checkable) and each
    method's positional parameters are the Protocol's (names, order, defaults)."""
    import inspect

    from csrefine.backends import Backend
    assert isinstance(module, Backend)
    assert module.name == name
    for method in ("accumulate_batch", "accumulate_halves", "default_batch_size",
                   "reader_threads", "host_buffer", "warm_up"):
        want = list(inspect.signature(getattr(Backend, method)).parameters.values())[1:]
        got = [q for q in inspect.signature(getattr(module, method)).parameters.values()
               if q.kind is not q.KEYWORD_ONLY]
        assert [(q.name, q.default) for q in got] == [(q.name, q.default) for q in want], method


@pytest.mark.parametrize("name", ["numpy", "numba", "c"])
def test_cpu_backends_implement_the_protocol(name):
    from csrefine.backends import c_backend
    if name == "c" and not c_backend.available():
        pytest.skip(f"C kernel not built here: {c_backend._STATE.get('error')}")
    module = get_backend(name)
    _check_backend_interface(module, name)
    assert module.default_batch_size(256) == 256
    assert module.reader_threads(8) == 1
    buffer = module.host_buffer((3, 4, 4))
    assert buffer.shape == (3, 4, 4) and buffer.dtype == np.float32
    assert module.warm_up() is None


def test_cupy_backend_implements_the_protocol(cupy_on_numpy):
    _check_backend_interface(cupy_on_numpy, "cupy")
    assert cupy_on_numpy.reader_threads(8) == 8


def test_protocol_rejects_an_incomplete_backend():
    import types

    from csrefine.backends import Backend
    partial = types.SimpleNamespace(name="x", accumulate_batch=numpy_backend.accumulate_batch)
    assert not isinstance(partial, Backend)


def test_numpy_halves_equal_per_half_batches():
    """numpy accumulate_halves == accumulate_batch per half set, bit for bit."""
    _, band, terms, refs, parts, images, cells, _ = problem = _problem(10)
    ref = _accumulate(numpy_backend, problem)
    stats = np.zeros_like(ref)
    numpy_backend.accumulate_halves(stats, cells, images, parts, refs, terms, band, PX, 2)
    assert np.array_equal(stats, ref)


def test_numba_refuses_a_kernel_compiled_for_another_layout(monkeypatch):
    """numba's cache is keyed on numba_backend.py, not _tables.py: a kernel compiled with an
    older table layout must not be used silently."""
    _, band, terms, refs, parts, images, cells, n_cells = _problem(4)
    stats = np.zeros((n_cells, 6, band.size))
    numba_backend.accumulate_batch(stats, cells, images, parts, refs[1], terms, band, PX, 1)
    monkeypatch.setattr(numba_backend, "LAYOUT_ID", numba_backend.LAYOUT_ID + 1)
    with pytest.raises(RuntimeError, match="table layout"):
        numba_backend.accumulate_batch(stats, cells, images, parts, refs[1], terms, band, PX, 1)


def test_particle_table_columns():
    from csrefine.backends import _tables
    from csrefine.ctf import astigmatism
    from csrefine.geometry import euler_zyz_to_matrix
    parts = _problem(3)[4]
    table = _tables.particle_table(parts)
    c = _tables.ParticleColumn
    assert table.shape == (len(parts), _tables.N_PARTICLE_COLUMNS) == (len(parts), len(c))
    ast = astigmatism(parts.defocus_u_A, parts.defocus_v_A, parts.defocus_angle_deg)
    rot = euler_zyz_to_matrix(parts.rot_deg, parts.tilt_deg, parts.psi_deg)
    for column, value in ((c.MEAN_DEFOCUS_A, ast.mean_A), (c.SIN_2PHI, ast.sin_2phi),
                          (c.NEG_QUARTER_B_A2, -0.25 * parts.bfactor_A2),
                          (c.ORIGIN_Y_A, parts.origin_y_A), (c.R01, rot[:, 0, 1]),
                          (c.R12, rot[:, 1, 2])):
        assert np.array_equal(table[:, column], value), column.name
    terms = _problem(3)[2]
    full = _tables.pixel_table(terms, PX, with_trig=True)
    base = _tables.pixel_table(terms, PX, with_trig=False)
    assert full.shape[0] == _tables.N_PIXEL_ROWS and base.shape[0] == _tables.N_BASE_PIXEL_ROWS
    assert np.array_equal(full[:_tables.N_BASE_PIXEL_ROWS], base)
    assert np.array_equal(full[_tables.PixelRow.SIN_GAMMA_STATIC], np.sin(terms.gamma_static))


def test_resolve_backend():
    from csrefine.backends import c_backend
    try:
        import numba  # noqa: F401
        cpu = "numba"
    except ImportError:
        cpu = "numpy"
    if c_backend.available():
        cpu = "c"
    assert resolve_backend("auto") == cpu
    assert resolve_backend(None) == cpu
    assert resolve_backend("CPU") == cpu
    assert resolve_backend("cuda") == "cupy"
    assert resolve_backend("gpu") == "cupy"
    for name in ("numpy", "numba", "c", "cupy"):
        assert resolve_backend(name) == name
    with pytest.raises(InputError, match="unknown device"):
        resolve_backend("tpu")
    assert get_backend("numpy") is numpy_backend
    with pytest.raises(InputError):
        get_backend("opencl")


def test_get_backend_cupy_without_cupy(monkeypatch):
    monkeypatch.setitem(sys.modules, "cupy", None)  # import cupy -> ImportError
    _forget_cupy_backend()
    with pytest.raises(InputError, match="CuPy"):
        get_backend("cupy")
    _forget_cupy_backend()


def test_refine_compiled_backends_and_numpy_give_the_same_cs(small_map_48):
    from csrefine.options import RefineOptions
    from csrefine.pipeline import refine
    from csrefine.simulate import ArrayImages, simulate_images

    vol, px = small_map_48
    box = vol.shape[0]
    rng = np.random.default_rng(7)
    truth = OpticsGroup(1, "g1", 300.0, 3.0, 0.1, px, box)
    parts = random_particles(300, rng)
    images = ArrayImages(simulate_images(vol, truth, parts, 0.5, rng))
    nominal = {1: truth.with_cs(2.7)}
    halves = tuple(vol + rng.normal(0, 0.005 * vol.max(), vol.shape).astype(np.float32)
                   for _ in range(2))
    from csrefine.backends import c_backend
    results = {}
    for device in ("numpy", "numba", "c") if c_backend.available() else ("numpy", "numba"):
        res = refine(nominal, parts, images, halves,
                     options=RefineOptions(device=device, threads=2, min_particles=50,
                                           batch_size=128))
        assert res.backend == device
        results[device] = res.groups[0]
    for compiled in set(results) - {"numpy"}:
        assert results[compiled].cs_refined_mm == pytest.approx(results["numpy"].cs_refined_mm,
                                                                 abs=1e-6)
        assert results[compiled].defocus_offset_A == pytest.approx(
            results["numpy"].defocus_offset_A, abs=1e-3)


@pytest.fixture(scope="module")
def small_map_48():
    import gemmi

    from csrefine.atomic_map import density_map
    px = 1.6
    return density_map(gemmi.read_structure(str(PACKAGED_MODEL)), 48, px, b_factor_A2=10.0), px


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


@pytest.mark.parametrize("layout", ["tables", "permuted"])
def test_cuda_kernel_source_compiled_for_the_cpu(cupy_on_numpy, tmp_path, layout):
    """The CUDA kernel's source, compiled as C++ (g++) with a tiny CPU stand-in for the CUDA
    built-ins and run thread by thread, matches the numpy reference: checks the kernel's maths
    and indexing without a GPU (not its speed, nor NVRTC-specific behaviour).

    "permuted": the source generated for a random reordering of the particle columns and pixel
    rows, fed tables reordered the same way, gives the same result -- so the kernel reads the
    tables only through the indices generated from csrefine.backends._tables."""
    import ctypes
    import shutil
    import subprocess

    from csrefine.backends import _tables
    if shutil.which("g++") is None:
        pytest.skip("g++ not available")
    columns, rows_enum = ((_tables.ParticleColumn, _tables.PixelRow) if layout == "tables"
                          else _permuted_layouts(1))
    src = cupy_on_numpy.cuda_source(columns, rows_enum)
    if layout == "tables":
        assert src == cupy_on_numpy._CUDA_SOURCE
    src = src.replace("#include <cupy/complex.cuh>", _CPU_STUB)
    (tmp_path / "k.cpp").write_text(src + _CPU_DRIVER)
    lib_path = tmp_path / "k.so"
    subprocess.run(["g++", "-O1", "-shared", "-fPIC", "-D_GNU_SOURCE", "-o", str(lib_path),
                    str(tmp_path / "k.cpp")], check=True)
    lib = ctypes.CDLL(str(lib_path))
    group, band, terms, refs, parts, images, cells, n_cells = _problem(8)
    expected = _accumulate(numpy_backend, (group, band, terms, refs, parts, images, cells, n_cells))
    got = np.zeros_like(expected)
    ptr = ctypes.c_void_p
    for half in (1, 2):
        sel = np.flatnonzero(parts.half_set == half)
        ref = refs[half]
        observed = np.ascontiguousarray(numpy_backend.band_transforms(images[sel], band, 1),
                                        dtype=np.complex64)
        ptab = _relayout(_tables.particle_table(parts.subset(sel)), _tables.ParticleColumn,
                         columns, axis=1)
        pix = _relayout(_tables.pixel_table(terms, PX, with_trig=True), _tables.PixelRow,
                        rows_enum, axis=0)
        data = np.ascontiguousarray(ref.data)
        n, m = observed.shape
        rows = np.empty((n, 6, m))
        n_bad = np.zeros(1, dtype=np.uint64)
        lib.run_all(ptr(observed.ctypes.data), ptr(ptab.ctypes.data), ptr(pix.ctypes.data),
                    ptr(data.ctypes.data), ctypes.c_int(n), ctypes.c_int(m),
                    ctypes.c_int(ref.radius), ctypes.c_int(data.shape[1]),
                    ctypes.c_int(data.shape[2]), ctypes.c_double(ref.scale),
                    ctypes.c_double(terms.defocus_factor), ptr(rows.ctypes.data),
                    ptr(n_bad.ctypes.data))
        assert n_bad[0] == 0
        got += cupy_on_numpy.reduce_cells(np, rows, cells[sel], n_cells)
    _assert_close(got, expected)


# --------------------------------------------------------------------------------------------
# Real GPU (CuPy + CUDA device): skipped without one
# --------------------------------------------------------------------------------------------

# the real kernels run only on a machine with CuPy and a CUDA GPU (tests/conftest.py skips
# them, with the reason, elsewhere)
gpu = pytest.mark.gpu


@gpu
@pytest.mark.parametrize("kernel", ["raw", "array"])
def test_gpu_matches_numpy(kernel):
    from csrefine.backends import cupy_backend
    problem = _problem(11, n=64)
    ref = _accumulate(numpy_backend, problem)
    # single-precision image transforms: cuFFT and pocketfft round differently (~1e-7 relative)
    _assert_close(_accumulate(cupy_backend, problem, kernel=kernel), ref, rtol=1e-5)


@gpu
def test_gpu_halves_from_pinned_buffer_match_numpy():
    from csrefine.backends import cupy_backend
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
def test_refine_cuda_and_numba_give_the_same_cs(small_map_48):
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
    for device in ("cuda", "numba"):
        res = refine({1: truth.with_cs(2.7)}, parts, images, halves,
                     options=RefineOptions(device=device, threads=2, min_particles=50))
        cs[device] = res.groups[0].cs_refined_mm
    assert abs(cs["cuda"] - 3.0) < 0.1
    assert cs["cuda"] == pytest.approx(cs["numba"], abs=1e-5)
