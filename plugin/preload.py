"""Import and warm the compiled backend in a background thread, so that its loading (numba's
import and kernel-cache load; the C kernel's library, compiled on first use) overlaps with reading
the inputs instead of adding to the wall time."""

from __future__ import annotations

import threading


def _load(backend):
    if backend:
        try:
            from .pipeline import load_backend
            load_backend(backend)
        except Exception:  # the run reports backend errors itself
            pass


def start_preload(device: str | None = None) -> threading.Thread:
    """Start importing (and warming) the backend for ``device`` in a daemon thread; returns the
    thread."""
    backend = None
    if device is not None:
        from .backends import resolve_backend
        try:
            backend = resolve_backend(device)
        except Exception:  # invalid devices are reported by the run itself
            backend = None
    thread = threading.Thread(target=_load, args=(backend,), name="csrefine-preload",
                              daemon=True)
    thread.start()
    return thread
