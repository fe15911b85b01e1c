"""Accumulation backends: the hot loop (image transforms, central slices, CTF, statistics).

Every backend is a module implementing :class:`Backend`; its ``accumulate_batch`` has the
semantics of :func:`csrefine.backends.numpy_backend.accumulate_batch` and must agree with it to
floating-point accuracy (tests/test_backends.py).
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np

from ..errors import InputError


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
        """Compile or load kernels and initialise devices before the first batch."""


def kernel_cache_dir(kind: str = "numba") -> Path:
    """Where compiled CPU kernels are cached: ``$CSREFINE_CACHE_DIR``, else
    ``$XDG_CACHE_HOME/csrefine`` (``~/.cache/csrefine``), subfolder ``kind`` (``numba``: numba's
    cache; ``c``: the C kernel's library).

    Never inside the installed package: a cache there is not in the wheel's RECORD, survives
    ``pip uninstall`` and turns the package folder into a namespace package that shadows a later
    editable install. ``NUMBA_CACHE_DIR``, when set, still takes precedence (numba's own rule).
    """
    base = os.environ.get("CSREFINE_CACHE_DIR")
    if not base:
        xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
        base = os.path.join(xdg, "csrefine")
    return Path(base) / kind


def centring_sign(band) -> np.ndarray:
    """(-1)^(kx + ky) at the band pixels (float32, (m,)): the rfft2 of an image centred at
    box//2 times this equals the rfft2 of the image with its centre moved to index 0
    (``ifftshift``), exactly, for the even boxes a band has. The backends transform the images
    as they are and multiply by this, instead of copying each image shifted."""
    col = np.rint(np.asarray(band.kx_px) * band.box).astype(np.int64)
    row = np.rint(np.asarray(band.ky_px) * band.box).astype(np.int64)
    return np.where((col + row) % 2 == 0, 1.0, -1.0).astype(np.float32)


def empty_host_buffer(shape: tuple) -> np.ndarray:
    """``numpy.empty(shape, float32)``: the host buffer of backends that need no special one."""
    return np.empty(shape, dtype=np.float32)

BACKENDS = ("numpy", "numba", "c", "cupy")


def resolve_backend(device: str) -> str:
    """Map a user's --device (cpu, cuda, numpy, numba, c, cupy, auto) to a backend name.

    cpu (and auto): the C kernel where a C compiler built it (once per machine, see
    :mod:`csrefine.backends.c_backend`), else numba, else numpy."""
    device = (device or "auto").lower()
    if device in ("auto", "cpu"):
        from . import c_backend
        if c_backend.available():
            return "c"
        # find_spec, not import: importing numba takes ~0.3 s, which the run spends later in a
        # background thread
        return "numba" if importlib.util.find_spec("numba") is not None else "numpy"
    if device in ("cuda", "gpu"):
        return "cupy"
    if device in BACKENDS:
        return device
    raise InputError(f"unknown device {device!r}: use cpu, cuda, numpy, numba, c or cupy")


def fallback_note(device: str, name: str) -> str | None:
    """Why ``--device cpu`` (or auto) runs backend ``name`` instead of the C kernel, or None."""
    if (device or "auto").lower() not in ("auto", "cpu") or name == "c":
        return None
    from . import c_backend
    return f"{c_backend.unavailable_reason()}; the {name} kernel runs instead"


def get_backend(name: str) -> Backend:
    """The module implementing backend ``name`` (a :class:`Backend`)."""
    if name == "numpy":
        from . import numpy_backend
        return numpy_backend
    if name == "numba":
        from . import numba_backend
        return numba_backend
    if name == "c":
        from . import c_backend
        try:
            c_backend.load()
        except OSError as exc:
            raise InputError(f"--device c: {exc}") from exc
        return c_backend
    if name == "cupy":
        try:
            from . import cupy_backend
        except ImportError as exc:
            raise InputError("--device cuda needs CuPy: pip install 'csrefine[gpu]' "
                             f"({exc})") from exc
        return cupy_backend
    raise InputError(f"unknown backend {name!r}")
