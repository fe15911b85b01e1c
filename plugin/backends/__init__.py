"""Accumulation backends: the hot loop (image transforms, central slices, CTF, statistics).

Every backend implements ``accumulate_batch(stats, cells, images, particles, reference, terms,
band, pixel_size_A, threads)`` with the semantics of :func:`csrefine.backends.numpy_backend.accumulate_batch`
and must agree with it to floating-point accuracy (tests/test_backends.py).
"""

from __future__ import annotations

from ..errors import InputError

BACKENDS = ("numpy", "numba", "cupy")


def resolve_backend(device: str) -> str:
    """Map a user's --device (cpu, cuda, numpy, numba, cupy, auto) to a backend name."""
    device = (device or "auto").lower()
    if device in ("auto", "cpu"):
        try:
            import numba  # noqa: F401
            return "numba"
        except ImportError:
            return "numpy"
    if device in ("cuda", "gpu"):
        return "cupy"
    if device in BACKENDS:
        return device
    raise InputError(f"unknown device {device!r}: use cpu, cuda, numpy, numba or cupy")


def get_backend(name: str):
    """The module implementing backend ``name``."""
    if name == "numpy":
        from . import numpy_backend
        return numpy_backend
    if name == "numba":
        from . import numba_backend
        return numba_backend
    if name == "cupy":
        try:
            from . import cupy_backend
        except ImportError as exc:
            raise InputError("--device cuda needs CuPy: pip install 'csrefine[gpu]' "
                             f"({exc})") from exc
        return cupy_backend
    raise InputError(f"unknown backend {name!r}")
