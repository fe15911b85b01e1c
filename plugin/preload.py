"""Import modules needed late in a run (the plots) in a background thread, so that their import
time overlaps with reading the inputs instead of adding to the wall time."""

from __future__ import annotations

import importlib
import threading

LATE_MODULES = ("matplotlib.pyplot", "matplotlib.backends.backend_pdf")


def _import_all(names, backend):
    if backend:  # first: the compiled backend, needed soonest
        try:
            from .pipeline import load_backend
            load_backend(backend)
        except Exception:  # the run reports backend errors itself
            pass
    import matplotlib
    matplotlib.use("Agg", force=False)
    for name in names:
        try:
            importlib.import_module(name)
        except Exception:  # a failed preload only means the import happens later
            pass


def start_preload(device: str | None = None, names=LATE_MODULES) -> threading.Thread:
    """Start importing (and warming) the backend for ``device``, then ``names``, in a daemon
    thread; returns the thread."""
    backend = None
    if device is not None:
        from .backends import resolve_backend
        try:
            backend = resolve_backend(device)
        except Exception:  # invalid devices are reported by the run itself
            backend = None
    thread = threading.Thread(target=_import_all, args=(names, backend), name="csrefine-preload",
                              daemon=True)
    thread.start()
    return thread
