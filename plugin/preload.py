"""Import modules needed late in a run (plots, optimiser) in a background thread, so that their
import time overlaps with reading the inputs instead of adding to the wall time."""

from __future__ import annotations

import importlib
import threading

LATE_MODULES = ("scipy.optimize", "matplotlib.pyplot", "matplotlib.backends.backend_pdf")


def _import_all(names):
    import matplotlib
    matplotlib.use("Agg", force=False)
    for name in names:
        try:
            importlib.import_module(name)
        except Exception:  # noqa: BLE001 - a failed preload only means the import happens later
            pass


def start_preload(names=LATE_MODULES) -> threading.Thread:
    """Start importing ``names`` in a daemon thread; returns the thread."""
    thread = threading.Thread(target=_import_all, args=(names,), name="csrefine-preload", daemon=True)
    thread.start()
    return thread
