"""Exceptions shared by the core and the adapters (standard library only: the entry points
import this before anything heavy)."""

from __future__ import annotations

import signal
import warnings
from contextlib import contextmanager


class InputError(ValueError):
    """Bad input (file, column or value): reported as one line, with a non-zero exit."""


class OutputError(InputError):
    """The outputs cannot be written (directory not writable, disk full, locked by another job):
    reported as one line, like bad input."""


class AbortRequested(RuntimeError):
    """The user (e.g. RELION's RELION_JOB_ABORT_NOW) asked the job to stop."""


def check_abort(should_abort) -> None:
    """Raise AbortRequested if ``should_abort()`` says so (called between steps of a run)."""
    if should_abort():
        raise AbortRequested("abort requested")


class Interrupted(AbortRequested):
    """A signal (SIGTERM, SIGINT, SIGHUP) asked the job to stop (see :mod:`csrefine.signals`)."""

    def __init__(self, signum: int):
        self.signum = int(signum)
        try:
            name = signal.Signals(self.signum).name  # 'SIGTERM' for 15
        except ValueError:
            name = f"signal {self.signum}"
        super().__init__(f"interrupted by {name}")


def shown(value) -> str:
    """A value as it should appear in a message: numpy scalars as plain numbers (never
    ``np.float64(...)``), strings quoted."""
    if hasattr(value, "item") and getattr(value, "ndim", None) == 0:
        value = value.item()
    return repr(value) if isinstance(value, str) else str(value)


@contextmanager
def quiet_library_warnings():
    """Silence the libraries' warnings (mrcfile's header complaints, numpy's floating-point and
    complex-casting warnings) within the block: csrefine's own checks name the problem in one
    line instead, and its own warnings go through the run's progress output."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=RuntimeWarning)
        warnings.filterwarnings("ignore", module=r"mrcfile(\.|$)")
        warnings.filterwarnings("ignore", message=r"Casting complex values")
        yield
