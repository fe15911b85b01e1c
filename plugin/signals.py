"""SIGTERM, SIGINT and SIGHUP turned into :class:`csrefine.errors.Interrupted` (standard
library only).

Entry points (``csrefine``, ``csrefine-relion``, ``csrefine-cryosparc``) wrap their work in
:func:`interrupts_raise`: a signal then raises ``Interrupted`` in the main thread, so that every
``finally`` runs (the staging directory and the lock are removed) and the entry point can report
it (RELION_JOB_EXIT_ABORTED, a non-zero exit). The core library never installs handlers; it only
marks the few steps that must not be cut in half with :func:`deferred` (moving the staged outputs
into place): a signal arriving there is raised when the step is complete.
"""

from __future__ import annotations

import signal
import threading
from contextlib import contextmanager

from .errors import Interrupted

#: The signals an entry point turns into Interrupted: a cluster's time limit or RELION's GUI
#: (SIGTERM), Ctrl-C (SIGINT), a closed terminal (SIGHUP).
HANDLED_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)

_state = {"depth": 0, "pending": None}


def _handler(signum, frame):
    if _state["depth"]:
        _state["pending"] = signum
        return
    raise Interrupted(signum)


@contextmanager
def interrupts_raise(signals=HANDLED_SIGNALS):
    """Within the block, ``signals`` raise Interrupted in the main thread; the previous
    handlers are restored on exit. Outside the main thread this does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.signal(s, _handler) for s in signals}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


@contextmanager
def deferred(raise_pending: bool = True):
    """A step that must complete once started: a signal arriving within it is held, and raised
    as Interrupted when the block ends without an error (dropped when ``raise_pending`` is
    False: the job is complete by then)."""
    _state["depth"] += 1
    try:
        yield
    finally:
        _state["depth"] -= 1
    if _state["depth"] == 0 and _state["pending"] is not None:
        signum, _state["pending"] = _state["pending"], None
        if raise_pending:
            raise Interrupted(signum)
