"""Page layout of logfile.pdf (and the cryoSPARC event log's plots), drawn by matplotlib.

Every page is one size, A4 landscape (:data:`PAGE_SIZE_IN`), a :class:`matplotlib.figure.Figure`
with an Agg canvas (no pyplot state). Text is wrapped by measuring it with the canvas' renderer,
so that no line runs off the page and no table cell is clipped: :class:`Flow` lays out lines and
tables down as many pages as they need.
"""

from __future__ import annotations

import re
import textwrap

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.font_manager import FontProperties
from matplotlib.lines import Line2D

from .fsc import FSC_THRESHOLD

#: Every page: A4 landscape, inches.
PAGE_SIZE_IN = (11.69, 8.27)
#: Margins of text pages, as fractions of the page.
MARGIN_X, MARGIN_TOP, MARGIN_BOTTOM = 0.05, 0.06, 0.05
#: Line height in units of the font size, and where the baseline lies below a line's top.
LINE_SPACING = 1.45
BASELINE = 1.05
#: Horizontal padding of a table cell, points, and as a fraction of the page width.
CELL_PAD_PT = 8.0
CELL_PAD = CELL_PAD_PT / 72 / PAGE_SIZE_IN[0]
#: Smallest font size a table is shrunk to before it is allowed to run over its width.
MIN_TABLE_FONTSIZE = 6.5


def new_page() -> Figure:
    """An empty page with an Agg canvas."""
    fig = Figure(figsize=PAGE_SIZE_IN)
    FigureCanvasAgg(fig)
    return fig


def text_width(fig: Figure, text: str, fontsize: float, weight: str = "normal") -> float:
    """Width of ``text`` as a fraction of the page width."""
    renderer = fig.canvas.get_renderer()
    width, _, _ = renderer.get_text_width_height_descent(
        text, FontProperties(size=fontsize, weight=weight), ismath=False)
    return width / fig.bbox.width


#: Where a line is never broken: between a number and its unit, around "±", and within
#: "round 2", "group 1".
_UNBREAKABLE = re.compile(r"(?<=\d) (?=Å|mm|°|%|s\b|±)|(?<=±) (?=\d)|(?<=round|group) (?=\d)")


def wrapped_lines(fig: Figure, lines, width: float, fontsize: float, indent: str = "    ") -> list[str]:
    """``lines`` wrapped so that each fits ``width`` (fraction of the page) at ``fontsize``;
    continuation lines indented by ``indent`` plus the line's own leading spaces; never between
    a number and its unit."""
    out = []
    for line in (_UNBREAKABLE.sub("\u00a0", text) for text in lines):
        if text_width(fig, line, fontsize) <= width:
            out.append(line)
            continue
        lead = line[:len(line) - len(line.lstrip())]
        chars = max(20, int(len(line) * width / text_width(fig, line, fontsize)))
        while True:
            parts = textwrap.wrap(line, chars, subsequent_indent=lead + indent, break_on_hyphens=False)
            if chars <= 20 or all(text_width(fig, p, fontsize) <= width for p in parts):
                break
            chars -= 2
        out.extend(parts)
    return out


class Flow:
    """Lines and tables laid out down a sequence of pages (a new page, with ``title``
    continued, when the next line does not fit)."""

    def __init__(self, title: str, subtitle: str = ""):
        self.title, self.pages = title, []
        self._page(subtitle)

    def _page(self, subtitle: str = "") -> None:
        self.fig = new_page()
        self.pages.append(self.fig)
        title = self.title if len(self.pages) == 1 else f"{self.title} (continued)"
        self.fig.text(MARGIN_X, 1 - MARGIN_TOP, title, fontsize=16, weight="bold", va="top")
        self.y = 1 - MARGIN_TOP - self._height(16) * 1.2
        if subtitle:
            self.text([subtitle], fontsize=10, color="dimgray")
        self.space(0.5)

    def _height(self, fontsize: float) -> float:
        return fontsize * LINE_SPACING / 72 / PAGE_SIZE_IN[1]

    def _baseline(self, fontsize: float) -> float:
        return fontsize * BASELINE / 72 / PAGE_SIZE_IN[1]

    def space(self, lines: float = 1.0, fontsize: float = 10) -> None:
        self.y -= lines * self._height(fontsize)

    def text(self, lines, fontsize: float = 10, color: str = "black", weight: str = "normal",
             family: str = "sans-serif") -> None:
        """Draw ``lines`` (wrapped to the page's width), one under the other."""
        for line in wrapped_lines(self.fig, lines, 1 - 2 * MARGIN_X, fontsize):
            if self.y - self._height(fontsize) < MARGIN_BOTTOM:
                self._page()
            self.fig.text(MARGIN_X, self.y - self._baseline(fontsize), line, fontsize=fontsize,
                          color=color, weight=weight, family=family, va="baseline")
            self.y -= self._height(fontsize)

    def table(self, header: list[str], rows: list[list[str]], fontsize: float = 10) -> None:
        """A table whose columns are as wide as their widest cell (the font shrunk until the
        table fits the page's width), the header repeated on each page it runs onto."""
        width = 1 - 2 * MARGIN_X
        while True:
            cols = [max([text_width(self.fig, part, fontsize, "bold") for part in header[i].split("\n")]
                        + [text_width(self.fig, r[i], fontsize) for r in rows]) + 2 * CELL_PAD
                    for i in range(len(header))]
            if sum(cols) <= width or fontsize <= MIN_TABLE_FONTSIZE:
                break
            fontsize -= 0.5
        lefts = np.concatenate([[MARGIN_X], MARGIN_X + np.cumsum(cols)[:-1]])
        right = MARGIN_X + sum(cols)
        self._row(header, lefts, cols, fontsize, "bold", right, rule=True)
        for row in rows:
            if self.y - 2 * self._height(fontsize) < MARGIN_BOTTOM:
                self._page()
                self._row(header, lefts, cols, fontsize, "bold", right, rule=True)
            self._row(row, lefts, cols, fontsize, "normal", right)
        self._rule(right, 0.8)

    def _rule(self, right: float, lw: float) -> None:
        self.fig.add_artist(Line2D([MARGIN_X, right], [self.y, self.y], color="black", lw=lw))

    def _row(self, cells, lefts, cols, fontsize, weight, right, rule=False) -> None:
        """One row; cells of several lines (newlines) bottom-aligned."""
        h = self._height(fontsize)
        if rule:
            self._rule(right, 0.8)
        parts = [cell.split("\n") for cell in cells]
        depth = max(len(p) for p in parts)
        for i, (lines, left, w) in enumerate(zip(parts, lefts, cols)):
            x, ha = (left + CELL_PAD, "left") if i in (0, len(cells) - 1) else (left + w - CELL_PAD, "right")
            for j, text in enumerate(lines, start=depth - len(lines)):
                self.fig.text(x, self.y - (0.2 + j) * h - self._baseline(fontsize), text,
                              fontsize=fontsize, weight=weight, ha=ha, va="baseline")
        self.y -= (depth + 0.4) * h
        if rule:
            self._rule(right, 0.5)


def resolution_axis(ax, k_max_per_A: float, squared: bool = False) -> None:
    """Label an x axis in 1/Å (or 1/Å², ``squared``) with resolutions in Å, ticks no closer
    than 6% of the axis."""
    candidates = [A for A in (50, 20, 10, 7, 5, 4, 3.5, 3, 2.5, 2.2, 2, 1.8, 1.6, 1.5, 1.4,
                              1.2, 1) if 1 / A <= k_max_per_A * 1.0001]
    power = 2 if squared else 1
    kept = []
    for A in candidates:
        if not kept or (1 / A) ** power - (1 / kept[-1]) ** power > 0.06 * k_max_per_A ** power:
            kept.append(A)
    ax.set_xticks([(1 / A) ** power for A in kept])
    ax.set_xticklabels([f"{A:g}" for A in kept])
    ax.set_xlabel("resolution (Å)" + (", axis linear in k²" if squared else ""))


def caption(fig: Figure, x: float, y: float, lines, width: float, fontsize: float = 10) -> None:
    """``lines`` wrapped to ``width`` (:func:`wrapped_lines`) below ``(x, y)``, their top left
    corner (fractions of the page)."""
    fig.text(x, y, "\n".join(wrapped_lines(fig, lines, width, fontsize)), fontsize=fontsize,
             va="top")


def plot_fsc(ax, fsc, pixel_size_A: float, **style) -> float:
    """An FSC curve against spatial frequency in 1/Å (the zero frequency left out) for a map of
    ``pixel_size_A`` Å; ``style``: the line's keywords. Returns the highest frequency, 1/Å."""
    fsc = np.asarray(fsc, dtype=float)
    k = np.arange(1, len(fsc)) / (2 * (len(fsc) - 1) * pixel_size_A)
    ax.plot(k, fsc[1:], **style)
    return float(k.max())


def fsc_axes(ax, k_max_per_A: float) -> None:
    """:data:`csrefine.fsc.FSC_THRESHOLD` dotted, and the x axis in resolution up to
    ``k_max_per_A`` (1/Å)."""
    ax.axhline(FSC_THRESHOLD, color="grey", ls=":", label=f"FSC = {FSC_THRESHOLD}")
    resolution_axis(ax, k_max_per_A)
    ax.set_xlim(0, k_max_per_A * 1.01)
