"""Vector PDF figures without matplotlib, for logfile.pdf.

A run's report pages are built by :func:`csrefine.report.figures` through a pyplot-like module;
given this package (``figure``, ``subplots``, ``close``) instead of ``matplotlib.pyplot`` the same
page code draws straight into PDF pages (:mod:`.figure`, :mod:`.document`), in milliseconds and
without importing matplotlib (about 1 s of CPU, and 0.5 s more to lay out and save the pages:
most of a small run's fixed cost). matplotlib still renders the pages where a figure object is
wanted (cryoSPARC's event log) and the pages of calibration and rounds runs.
"""

from __future__ import annotations

from .document import to_bytes
from .figure import Axes, Figure

__all__ = ["Axes", "Figure", "close", "figure", "pdf_bytes", "subplots"]


def figure(figsize=(6.4, 4.8), **_) -> Figure:
    """A new figure (``matplotlib.pyplot.figure``)."""
    return Figure(figsize)


def subplots(figsize=(6.4, 4.8), **_) -> tuple[Figure, Axes]:
    """A figure with one panel at matplotlib's default subplot position."""
    fig = Figure(figsize)
    return fig, fig.add_axes([0.125, 0.11, 0.775, 0.77])


def close(fig) -> None:
    """Nothing to release (``matplotlib.pyplot.close``)."""


def pdf_bytes(figures, title: str = "") -> bytes:
    """The PDF file with one page per figure."""
    return to_bytes([f.draw() for f in figures], title)
