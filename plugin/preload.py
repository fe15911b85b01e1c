"""Import and warm the compiled backend in a background thread, so that numba's import and its
kernel-cache load overlap with reading the inputs instead of adding to the wall time.

(matplotlib, the other large import, is imported by logfile.pdf's renderer process,
:mod:`csrefine.report_process`, not in this process: in a thread here it would hold the GIL the
run needs.)"""

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
