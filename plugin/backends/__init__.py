"""Accumulation backends: the hot loop (image transforms, central slices, CTF, statistics).

Every backend is a module implementing :class:`Backend`; its ``accumulate_batch`` has the
semantics of :func:`csrefine.backends.numpy_backend.accumulate_batch` (the reference) and must
agree with it to floating-point accuracy (tests/test_backends.py). ``--device cpu`` runs
:mod:`csrefine.backends.cpu_backend` (a C kernel compiled at install time), ``--device cuda``
:mod:`csrefine.backends.cupy_backend`.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np

from ..errors import InputError, shown
from . import cpu_backend, cupy_backend


@runtime_checkable
class Backend(Protocol):
    """What the pipeline needs of a backend (implemented by the backend modules themselves).

    Shapes: n particles in the batch, m band pixels, box the image size in pixels.
    """

    #: The backend's name, as in :data:`BACKENDS`.
    name: str

    def accumulate_batch(self, stats: np.ndarray, cells: np.ndarray, images: np.ndarray,
                         particles, reference, terms, band, pixel_size_A: float,
                         threads: int = 1) -> None:
        """Add one batch, all of one half set and predicted from ``reference``, to ``stats``.

        stats : (n_cells, 6, m) float64, added to in place; cells : (n,) int; images :
        (n, box, box) float32, centred at box // 2; particles : :class:`csrefine.model.Particles`
        (n); reference : :class:`csrefine.projection.PaddedReference`; terms :
        :class:`csrefine.forward.PixelTerms` on ``band`` (:class:`csrefine.fourier.Band`, m
        pixels); pixel_size_A : Angstrom; threads : CPU threads the backend may use.
        """

    def accumulate_halves(self, stats: np.ndarray, cells: np.ndarray, images: np.ndarray,
                          particles, references: dict, terms, band, pixel_size_A: float,
                          threads: int = 1) -> None:
        """Add one batch holding both half sets: the particles of half set h (h = 1, 2) are
        predicted from ``references[h]``; same result as :meth:`accumulate_batch` per half set."""

    def default_batch_size(self, box: int) -> int:
        """Particles per batch when the user sets none, for images of ``box`` pixels."""

    def reader_threads(self, threads: int) -> int:
        """Threads reading images ahead while the backend computes, given ``--j threads``."""

    def host_buffer(self, shape: tuple) -> np.ndarray:
        """A float32 host array of ``shape`` for the pipeline to read images into (called twice
        per optics group; pinned memory on the GPU, a plain ``numpy.empty`` on the CPU)."""

    def warm_up(self) -> None:
        """Compile or load the kernel and initialise the device (the run calls it once, before
        its set-up, so that a device that cannot run fails early)."""


#: The user's ``--device`` values: ``cpu`` runs the C kernel, ``cuda`` CuPy's CUDA kernel.
#: (The numpy reference backend, the yardstick of the tests, is not a device.)
DEVICES = ("cpu", "cuda")


def check_device(device) -> None:
    """Raise InputError unless ``device`` is one of :data:`DEVICES` (imports nothing)."""
    if not isinstance(device, str) or device not in DEVICES:
        raise InputError(f"device must be one of {', '.join(DEVICES)}, got {shown(device)}")


def get_backend(device: str) -> Backend:
    """The backend module running ``device`` (a :class:`Backend`): the C kernel's (cpu) or CuPy's
    (cuda: CuPy, an optional dependency, is imported here); InputError for an unknown device or
    a missing CuPy."""
    check_device(device)
    if device == "cpu":
        return cpu_backend
    try:
        cupy_backend._cupy()
    except ImportError as exc:
        raise InputError("--device cuda needs CuPy: pip install 'csrefine[gpu]' "
                         f"(cupy-cuda12x) or 'csrefine[gpu-cuda13]' ({exc})") from exc
    return cupy_backend
