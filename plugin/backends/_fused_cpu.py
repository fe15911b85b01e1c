"""What the fused CPU kernels (numba, C) share apart from the kernel itself: their inputs
(per-particle and per-pixel tables beyond :mod:`csrefine.backends._tables`), the image
transforms, the measured choice of the touch pass, and the batch driver.

Everything here is numpy. Both kernels take one :class:`KernelInputs` and read its arrays in the
same order (see ``numba_backend``'s docstring for the algorithm), so that both reproduce the
numpy reference backend to rounding.
"""

from __future__ import annotations

import os
import threading
import time
import weakref
from dataclasses import dataclass
from functools import partial
from typing import Callable

import numpy as np

from ..accumulate import N_STATS
from ..ctf import astigmatism
from ._tables import particle_table, pixel_table
from .numpy_backend import band_transforms as numpy_band_transforms

#: Band pixels per block: each thread owns whole blocks (disjoint columns of the statistics).
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


@dataclass(frozen=True)
class KernelInputs:
    """One kernel call's arrays (C-contiguous) and scalars; n particles, m band pixels.

    cells (n,) int64; observed (n, m) complex64 or complex128 band transforms; ptab (n, columns)
    and pix (rows, m) float64 (:mod:`csrefine.backends._tables`); ref: the padded reference's
    complex64 data, radius, scale; separable: the projection frequencies are a linear map of the
    grid (then shift_x (n, box/2 + 1), shift_y (n, box) complex128 and qtab (n, 7) float64 hold
    the factorised shift and defocus phase, else they are dummies); col, row (m,) int64 grid
    indices; cont (m,) int8 row continuation; half_box = box // 2."""

    cells: np.ndarray
    observed: np.ndarray
    ptab: np.ndarray
    pix: np.ndarray
    ref: np.ndarray
    radius: int
    ref_scale: float
    defocus_factor: float
    separable: bool
    shift_x: np.ndarray
    shift_y: np.ndarray
    col: np.ndarray
    row: np.ndarray
    qtab: np.ndarray
    cont: np.ndarray
    half_box: int


def kernel_inputs(cells, observed, particles, reference, terms, band,
                  pixel_size_A: float) -> KernelInputs:
    """The :class:`KernelInputs` of band transforms ``observed`` (n, m) of ``particles``."""
    pix, lin, col, row, cont = _pixel_inputs(terms, band, pixel_size_A)
    if lin is not None:
        shift_x, shift_y = shift_tables(particles, lin, band, pixel_size_A)
        qtab = defocus_tables(particles, lin, band, pixel_size_A, float(terms.defocus_factor))
    else:
        shift_x = shift_y = np.ones((1, 1), dtype=np.complex128)
        qtab = np.zeros((1, 7))
    return KernelInputs(np.ascontiguousarray(cells, dtype=np.int64), np.ascontiguousarray(observed),
                        particle_table(particles), pix, reference.data, int(reference.radius),
                        float(reference.scale), float(terms.defocus_factor), lin is not None,
                        shift_x, shift_y, col, row, qtab, cont, band.box // 2)


#: A fused kernel: (stats, inputs, touch, threads) -> number of samples beyond the reference.
Kernel = Callable[[np.ndarray, KernelInputs, bool, int], int]


def observed_transforms(images, band, threads: int) -> np.ndarray:
    """The band transforms the kernels take: complex64 for float32 images, else complex128."""
    observed = np.ascontiguousarray(band_transforms(images, band, threads))
    if observed.dtype not in (np.complex64, np.complex128):
        observed = observed.astype(np.complex128)
    return observed


def accumulate_observed(kernel: Kernel, stats, cells, observed, particles, reference, terms, band,
                        pixel_size_A, threads: int) -> None:
    """``kernel`` on band transforms ``observed`` (n, m), timed for :data:`TOUCH`."""
    inputs = kernel_inputs(cells, observed, particles, reference, terms, band, pixel_size_A)
    touch = TOUCH.get()
    t0 = time.perf_counter()
    bad = kernel(stats, inputs, touch, threads)
    TOUCH.record(touch, time.perf_counter() - t0, observed.shape[0] * observed.shape[1])
    if bad:
        raise ValueError("sampling beyond the cropped reference; increase k_max_px")


def accumulate_batch(kernel: Kernel, stats, cells, images, particles, reference, terms, band,
                     pixel_size_A, threads: int = 1) -> None:
    """:meth:`csrefine.backends.Backend.accumulate_batch` with ``kernel``."""
    if len(particles):
        accumulate_observed(kernel, stats, cells, observed_transforms(images, band, threads),
                            particles, reference, terms, band, pixel_size_A, threads)


def accumulate_halves(kernel: Kernel, stats, cells, images, particles, references, terms, band,
                      pixel_size_A, threads: int = 1) -> None:
    """:meth:`csrefine.backends.Backend.accumulate_halves` with ``kernel``: images transformed
    once, then the particles of half set h predicted from ``references[h]``."""
    if len(particles) == 0:
        return
    observed = observed_transforms(images, band, threads)
    cells = np.asarray(cells)
    for half in (1, 2):
        sel = np.flatnonzero(particles.half_set == half)
        if sel.size:
            accumulate_observed(kernel, stats, cells[sel], observed[sel], particles.subset(sel),
                                references[half], terms, band, pixel_size_A, threads)


def warm_up(kernel: Kernel) -> None:
    """Run ``kernel`` once on a tiny batch (compiles or loads it)."""
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
    accumulate_batch(kernel, stats, np.zeros(1, np.int64), np.zeros((1, box, box), np.float32),
                     parts, ref, pixel_terms(group, band), band, px, 1)


def backend_functions(kernel: Kernel):
    """A fused kernel's :class:`csrefine.backends.Backend` functions: (accumulate_batch,
    accumulate_halves, warm_up), with the Protocol's parameters."""
    return (partial(accumulate_batch, kernel), partial(accumulate_halves, kernel),
            partial(warm_up, kernel))


def default_batch_size(box: int) -> int:
    """256 particles per batch, whatever the box."""
    return 256


def reader_threads(threads: int) -> int:
    """One thread reads images ahead; the kernel uses the ``threads`` threads."""
    return 1
