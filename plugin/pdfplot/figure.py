"""Figures and axes with the part of matplotlib's API that csrefine's report pages use.

:func:`csrefine.report.figures` builds its pages through ``plt.figure`` / ``plt.subplots`` and
the Figure / Axes methods below; given :mod:`csrefine.pdfplot` instead of ``matplotlib.pyplot``
it gets these objects, which draw straight into PDF pages (:mod:`csrefine.pdfplot.document`).
Only what the pages use is implemented, with matplotlib's defaults (sizes in points: tick labels
and axis labels 10, titles 12, line width 1.5, frame 0.8, ticks 3.5 long, margins 5% of the data
range). Layout is simpler than matplotlib's: axes keep the rectangle they are given
(``tight_layout`` sets fixed margins), colour bars sit in the figure's right margin.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from . import style
from .document import Page
from .fonts import text_width

TICK_PT, TICK_PAD_PT, FRAME_PT, LINE_PT = 3.5, 3.5, 0.8, 1.5
LABEL_PT, TITLE_PT = 10.0, 12.0
MARGIN = 0.05
#: matplotlib's default subplot parameters (figure fractions).
SUBPLOT = {"left": 0.125, "right": 0.9, "bottom": 0.11, "top": 0.88}


@dataclass
class _Item:
    kind: str  # line, hline, vline, span, errorbar, image, text
    data: dict
    label: str | None = None
    zorder: int = 2


@dataclass
class Image:
    """What ``imshow`` returns (for ``Figure.colorbar``)."""

    cmap: str
    vmin: float
    vmax: float


class Axes:
    """A plot panel at ``rect`` (left, bottom, width, height; figure fractions)."""

    def __init__(self, figure: Figure, rect):
        self.figure, self.rect = figure, list(rect)
        self.items: list[_Item] = []
        self.xlim = self.ylim = None
        self.xticks = self.xticklabels = None
        self.xlabel = self.ylabel = self.title = ""
        self.title_pt = TITLE_PT
        self.legend_spec = None
        self.visible, self.equal_aspect = True, False
        self.table_spec = None

    # matplotlib API -----------------------------------------------------------------------
    def plot(self, x, y, fmt=None, color="C0", label=None, lw=None, linewidth=None, ls=None,
             linestyle=None, alpha=1.0, **_):
        fmt = fmt or "-"
        style_ = ls or linestyle or ("-" if "-" in fmt or fmt == "" else None)
        self.items.append(_Item("line", dict(x=np.asarray(x, float), y=np.asarray(y, float),
                                             color=color, lw=lw or linewidth or LINE_PT,
                                             ls=style_, marker="." in fmt, alpha=alpha), label))

    def axhline(self, y, color="C0", ls="-", lw=LINE_PT, label=None, **_):
        self.items.append(_Item("hline", dict(y=float(y), color=color, ls=ls, lw=lw), label))

    def axvline(self, x, color="C0", ls="-", lw=LINE_PT, label=None, **_):
        self.items.append(_Item("vline", dict(x=float(x), color=color, ls=ls, lw=lw), label))

    def axvspan(self, x0, x1, color="C0", alpha=1.0, label=None, **_):
        self.items.append(_Item("span", dict(x0=float(x0), x1=float(x1), color=color,
                                             alpha=alpha), label, zorder=1))

    def errorbar(self, x, y, yerr=None, fmt=".", ms=6.0, lw=LINE_PT, color="C0", alpha=1.0,
                 label=None, **_):
        y = np.asarray(y, float)
        err = np.zeros_like(y) if yerr is None else np.asarray(yerr, float)
        self.items.append(_Item("errorbar", dict(x=np.asarray(x, float), y=y, err=err, ms=ms,
                                                 lw=lw, color=color, alpha=alpha), label))

    def imshow(self, data, origin="upper", extent=None, cmap="RdBu_r", vmin=None, vmax=None,
               **_):
        data = np.asarray(data, float)
        finite = data[np.isfinite(data)]
        vmin = float(finite.min()) if vmin is None and finite.size else float(vmin or 0.0)
        vmax = float(finite.max()) if vmax is None and finite.size else float(vmax or 1.0)
        rows, cols = data.shape
        extent = list(extent) if extent is not None else [-0.5, cols - 0.5, rows - 0.5, -0.5]
        image = Image(cmap, vmin, vmax)
        self.items.append(_Item("image", dict(data=data, lower=origin == "lower", extent=extent,
                                              image=image), None, zorder=0))
        return image

    def text(self, x, y, s, color="black", fontsize=LABEL_PT, **_):
        self.items.append(_Item("text", dict(x=float(x), y=float(y), s=str(s), color=color,
                                             size=float(fontsize)), None, zorder=3))

    def table(self, cellText, colLabels, cellLoc="center", bbox=(0, 0, 1, 1), **_):
        self.table_spec = {"rows": [[str(c) for c in r] for r in cellText],
                           "head": [str(c) for c in colLabels], "bbox": bbox, "size": LABEL_PT}
        return _TableHandle(self.table_spec)

    def set_xticks(self, ticks):
        self.xticks = [float(t) for t in ticks]

    def set_xticklabels(self, labels):
        self.xticklabels = [str(s) for s in labels]

    def set_xlabel(self, text):
        self.xlabel = str(text)

    def set_ylabel(self, text):
        self.ylabel = str(text)

    def set_title(self, text, fontsize=TITLE_PT):
        self.title, self.title_pt = str(text), float(fontsize)

    def set_xlim(self, lo, hi):
        self.xlim = (float(lo), float(hi))

    def set_ylim(self, lo, hi):
        self.ylim = (float(lo), float(hi))

    def set_aspect(self, aspect):
        self.equal_aspect = aspect == "equal"

    def legend(self, fontsize=LABEL_PT, loc="best", **_):
        self.legend_spec = {"size": float(fontsize), "loc": loc}

    def axis(self, state):
        self.visible = state != "off"

    # drawing ------------------------------------------------------------------------------
    def limits(self) -> tuple[tuple[float, float], tuple[float, float]]:
        """(x limits, y limits): the ones set, else the data's range with 5% margins (images:
        their extent)."""
        xs, ys, tight_x, tight_y = [], [], [], []
        for item in self.items:
            d = item.data
            if item.kind == "line":
                xs.append(d["x"])
                ys.append(d["y"])
            elif item.kind == "errorbar":
                xs.append(d["x"])
                ys += [d["y"] - d["err"], d["y"] + d["err"]]
            elif item.kind == "span":
                xs.append(np.array([d["x0"], d["x1"]]))
            elif item.kind == "hline":
                ys.append(np.array([d["y"]]))
            elif item.kind == "vline":
                xs.append(np.array([d["x"]]))
            elif item.kind == "image":
                tight_x.append(np.array(d["extent"][:2]))
                tight_y.append(np.array(d["extent"][2:]))
        return (self.xlim or _auto_limits(xs, tight_x), self.ylim or _auto_limits(ys, tight_y))

    def box_pt(self, width_pt: float, height_pt: float, xlim, ylim):
        """The panel's rectangle in points (shrunk to equal aspect where asked, centred)."""
        x, y, w, h = (self.rect[0] * width_pt, self.rect[1] * height_pt,
                      self.rect[2] * width_pt, self.rect[3] * height_pt)
        if self.equal_aspect:
            xr, yr = abs(xlim[1] - xlim[0]) or 1.0, abs(ylim[1] - ylim[0]) or 1.0
            scale = min(w / xr, h / yr)
            x, y = x + (w - xr * scale) / 2, y + (h - yr * scale) / 2
            w, h = xr * scale, yr * scale
        return x, y, w, h

    def draw(self, page: Page) -> None:
        if self.table_spec is not None:
            _draw_table(page, self, self.table_spec)
        if not self.visible:
            return
        xlim, ylim = self.limits()
        box = self.box_pt(page.width_pt, page.height_pt, xlim, ylim)
        to_page = _Transform(box, xlim, ylim)
        page.save()
        page.clip_rect(*box)
        for item in sorted(self.items, key=lambda it: it.zorder):
            _DRAW[item.kind](page, item.data, to_page)
        page.restore()
        _draw_frame(page, self, box, xlim, ylim, to_page)
        if self.legend_spec is not None:
            _draw_legend(page, self, box, to_page)


@dataclass
class _Transform:
    """Data coordinates -> page points for one panel."""

    box: tuple
    xlim: tuple
    ylim: tuple

    def x(self, v):
        x0, _, w, _ = self.box
        return x0 + (np.asarray(v, float) - self.xlim[0]) / (self.xlim[1] - self.xlim[0]) * w

    def y(self, v):
        _, y0, _, h = self.box
        return y0 + (np.asarray(v, float) - self.ylim[0]) / (self.ylim[1] - self.ylim[0]) * h


class _TableHandle:
    def __init__(self, spec):
        self.spec = spec

    def auto_set_font_size(self, value):
        pass

    def set_fontsize(self, size):
        self.spec["size"] = float(size)


def _auto_limits(values, tight) -> tuple[float, float]:
    finite = [v[np.isfinite(v)] for v in values]
    finite = [v for v in finite if v.size]
    tight = [v for v in tight if v.size]
    if tight and not finite:
        all_t = np.concatenate(tight)
        return float(all_t[0]), float(all_t[-1])
    if not finite:
        return 0.0, 1.0
    data = np.concatenate(finite)
    lo, hi = float(data.min()), float(data.max())
    if hi == lo:
        lo, hi = lo - 0.5, hi + 0.5
    pad = MARGIN * (hi - lo)
    return lo - pad, hi + pad


# item painters -------------------------------------------------------------------------------
def _paint_line(page, d, t):
    page.save()
    page.alpha(d["alpha"])
    color = style.rgb(d["color"])
    if d["ls"]:
        page.stroke_style(color, d["lw"], style.dash(d["ls"], d["lw"]))
        page.polyline(t.x(d["x"]), t.y(d["y"]))
    if d["marker"]:
        page.fill_color(color)
        page.circles(t.x(d["x"]), t.y(d["y"]), 1.5)
    page.restore()


def _paint_hline(page, d, t):
    page.stroke_style(style.rgb(d["color"]), d["lw"], style.dash(d["ls"], d["lw"]))
    x0, _, w, _ = t.box
    page.polyline([x0, x0 + w], [t.y(d["y"])] * 2)


def _paint_vline(page, d, t):
    page.stroke_style(style.rgb(d["color"]), d["lw"], style.dash(d["ls"], d["lw"]))
    _, y0, _, h = t.box
    page.polyline([t.x(d["x"])] * 2, [y0, y0 + h])


def _paint_span(page, d, t):
    page.save()
    page.alpha(d["alpha"])
    page.fill_color(style.rgb(d["color"]))
    a, b = sorted((float(t.x(d["x0"])), float(t.x(d["x1"]))))
    _, y0, _, h = t.box
    page.rect(a, y0, b - a, h, fill=True, stroke=False)
    page.restore()


def _paint_errorbar(page, d, t):
    page.save()
    page.alpha(d["alpha"])
    color = style.rgb(d["color"])
    page.stroke_style(color, d["lw"])
    x = t.x(d["x"])
    page.segments(x, t.y(d["y"] - d["err"]), x, t.y(d["y"] + d["err"]))
    page.fill_color(color)
    page.circles(x, t.y(d["y"]), d["ms"] / 4.0)
    page.restore()


def _paint_image(page, d, t):
    data = d["data"][::-1] if d["lower"] else d["data"]  # PDF images start at the top row
    image = d["image"]
    x0, x1, y0, y1 = d["extent"]
    left, right = sorted((float(t.x(x0)), float(t.x(x1))))
    bottom, top = sorted((float(t.y(y0)), float(t.y(y1))))
    page.image(style.colormap_rgb(data, image.vmin, image.vmax, image.cmap), left, bottom,
               right - left, top - bottom)


def _paint_text(page, d, t):
    page.text(float(t.x(d["x"])), float(t.y(d["y"])), d["s"], d["size"], style.rgb(d["color"]))


_DRAW = {"line": _paint_line, "hline": _paint_hline, "vline": _paint_vline, "span": _paint_span,
         "errorbar": _paint_errorbar, "image": _paint_image, "text": _paint_text}


# frame, ticks, labels, legend, table ---------------------------------------------------------
def _draw_frame(page, ax: Axes, box, xlim, ylim, t: _Transform) -> None:
    x0, y0, w, h = box
    black = (0.0, 0.0, 0.0)
    page.stroke_style(black, FRAME_PT)
    page.rect(x0, y0, w, h)
    if ax.xticks is not None:
        xt = np.asarray(ax.xticks)
        labels = ax.xticklabels or style.tick_labels(xt)
    else:
        xt = style.nice_ticks(*sorted(xlim))
        labels = style.tick_labels(xt)
    keep = (xt >= min(xlim) - 1e-12) & (xt <= max(xlim) + 1e-12)
    px = t.x(xt)
    page.segments(px[keep], [y0] * int(keep.sum()), px[keep], [y0 - TICK_PT] * int(keep.sum()))
    for p, label, k in zip(px, labels, keep):
        if k:
            page.text(float(p), y0 - TICK_PT - TICK_PAD_PT, label, LABEL_PT, va="top")
    yt = style.nice_ticks(*sorted(ylim))
    widest = _vertical_ticks(page, x0, t.y(yt), style.tick_labels(yt), -1)
    if ax.xlabel:
        page.text(x0 + w / 2, y0 - TICK_PT - TICK_PAD_PT - 1.2 * LABEL_PT - 4, ax.xlabel,
                  LABEL_PT, ha="center", va="top")
    if ax.ylabel:
        page.text(x0 - TICK_PT - TICK_PAD_PT - widest - 4, y0 + h / 2, ax.ylabel, LABEL_PT,
                  ha="center", va="baseline", rotation_deg=90.0)
    if ax.title:
        page.text(x0 + w / 2, y0 + h + 6, ax.title, ax.title_pt, ha="center")


def _vertical_ticks(page, edge_pt: float, positions_pt, labels, side: int) -> float:
    """Ticks out of a vertical edge at the given heights, labelled, to the left (side -1) or
    the right (+1); returns the widest label's width (points)."""
    positions_pt = np.asarray(positions_pt, dtype=float)
    page.segments([edge_pt] * len(positions_pt), positions_pt,
                  [edge_pt + side * TICK_PT] * len(positions_pt), positions_pt)
    widest = 0.0
    for p, label in zip(positions_pt, labels):
        page.text(edge_pt + side * (TICK_PT + TICK_PAD_PT), float(p), label, LABEL_PT,
                  ha="right" if side < 0 else "left", va="center")
        widest = max(widest, text_width(label, LABEL_PT))
    return widest


LEGEND_LOCS = ("upper right", "upper left", "lower left", "lower right")


def _draw_legend(page, ax: Axes, box, t: _Transform) -> None:
    entries = [it for it in ax.items if it.label and not str(it.label).startswith("_")]
    if not entries:
        return
    size = ax.legend_spec["size"]
    handle, pad, row = 2.0 * size, 0.5 * size, 1.3 * size
    width = handle + 3 * pad + max(text_width(str(it.label), size) for it in entries)
    height = len(entries) * row + pad
    loc = ax.legend_spec["loc"]
    if loc not in LEGEND_LOCS:
        loc = _best_corner(ax, box, t, width, height)
    x0, y0, w, h = box
    lx = x0 + pad if "left" in loc else x0 + w - pad - width
    ly = y0 + pad if "lower" in loc else y0 + h - pad - height
    page.save()
    page.alpha(0.8)
    page.fill_color((1.0, 1.0, 1.0))
    page.stroke_style((0.8, 0.8, 0.8), 1.0)
    page.rect(lx, ly, width, height, fill=True, stroke=True)
    page.restore()
    for i, item in enumerate(entries):
        cy = ly + height - pad / 2 - (i + 0.5) * row
        _legend_handle(page, item, lx + pad, cy, handle, size)
        page.text(lx + 2 * pad + handle, cy, str(item.label), size, va="center")


def _legend_handle(page, item: _Item, x: float, y: float, length: float, size: float) -> None:
    d = item.data
    color = style.rgb(d["color"])
    page.save()
    page.alpha(d.get("alpha", 1.0))
    if item.kind == "span":
        page.fill_color(color)
        page.rect(x, y - 0.35 * size, length, 0.7 * size, fill=True, stroke=False)
    elif item.kind == "errorbar":
        page.stroke_style(color, d["lw"])
        page.polyline([x + length / 2] * 2, [y - 0.4 * size, y + 0.4 * size])
        page.fill_color(color)
        page.circles([x + length / 2], [y], d["ms"] / 4.0)
    else:
        ls = d.get("ls") or "-"
        if item.kind != "line" or d.get("ls"):
            page.stroke_style(color, d["lw"], style.dash(ls, d["lw"]))
            page.polyline([x, x + length], [y, y])
        if d.get("marker"):
            page.fill_color(color)
            page.circles([x + length / 2], [y], 1.5)
    page.restore()


def _best_corner(ax: Axes, box, t: _Transform, width: float, height: float) -> str:
    """The corner whose legend would cover the fewest plotted points."""
    xs, ys = [], []
    for item in ax.items:
        if item.kind in ("line", "errorbar"):
            xs.append(t.x(item.data["x"]))
            ys.append(t.y(item.data["y"]))
    px = np.concatenate(xs) if xs else np.zeros(0)
    py = np.concatenate(ys) if ys else np.zeros(0)
    x0, y0, w, h = box
    best, fewest = LEGEND_LOCS[0], math.inf
    for loc in LEGEND_LOCS:
        lx = x0 if "left" in loc else x0 + w - width
        ly = y0 if "lower" in loc else y0 + h - height
        covered = int(np.sum((px >= lx) & (px <= lx + width) & (py >= ly) & (py <= ly + height)))
        if covered < fewest:
            best, fewest = loc, covered
    return best


def _draw_table(page, ax: Axes, spec: dict) -> None:
    fx, fy, fw, fh = ax.rect
    bx, by, bw, bh = spec["bbox"]
    x0 = (fx + bx * fw) * page.width_pt
    y0 = (fy + by * fh) * page.height_pt
    w, h = bw * fw * page.width_pt, bh * fh * page.height_pt
    rows = [spec["head"]] + spec["rows"]
    n_rows, n_cols = len(rows), len(spec["head"])
    cw, ch = w / n_cols, h / n_rows
    page.stroke_style((0.0, 0.0, 0.0), 1.0)
    for r, cells in enumerate(rows):
        top = y0 + h - r * ch
        for c, text in enumerate(cells):
            page.rect(x0 + c * cw, top - ch, cw, ch)
            page.text(x0 + (c + 0.5) * cw, top - ch / 2, text, spec["size"], ha="center",
                      va="center")


# figures -------------------------------------------------------------------------------------
@dataclass
class _SubplotSpec:
    rect: tuple


@dataclass
class GridSpec:
    """``Figure.add_gridspec``: rows x columns of panels inside the subplot margins."""

    nrows: int
    ncols: int
    height_ratios: list = field(default_factory=list)
    hspace: float = 0.2
    wspace: float = 0.2

    def _edges(self, n, ratios, space, lo, hi):
        ratios = np.asarray(ratios or [1.0] * n, float)
        cell = (hi - lo) / (ratios.sum() + space * (n - 1) * ratios.mean())
        sizes = ratios * cell
        starts = lo + np.concatenate([[0.0], np.cumsum(sizes[:-1] + space * ratios.mean() * cell)])
        return starts, sizes

    def __getitem__(self, key) -> _SubplotSpec:
        row, col = key
        rows = range(self.nrows)[row] if isinstance(row, slice) else [row]
        cols = range(self.ncols)[col] if isinstance(col, slice) else [col]
        ys, hs = self._edges(self.nrows, self.height_ratios, self.hspace, SUBPLOT["bottom"],
                             SUBPLOT["top"])
        xs, ws = self._edges(self.ncols, None, self.wspace, SUBPLOT["left"], SUBPLOT["right"])
        top = ys[::-1] + hs[::-1]  # row 0 at the top
        bottom = ys[::-1]
        left, right = xs[min(cols)], xs[max(cols)] + ws[max(cols)]
        low, high = bottom[max(rows)], top[min(rows)]
        return _SubplotSpec((left, low, right - left, high - low))


@dataclass
class _Colorbar:
    image: Image
    rect: tuple
    label: str


class Figure:
    """A page of ``figsize`` inches."""

    def __init__(self, figsize=(6.4, 4.8)):
        self.size_in = tuple(float(s) for s in figsize)
        self.axes: list[Axes] = []
        self.texts: list[dict] = []
        self.colorbars: list[_Colorbar] = []

    def add_axes(self, rect) -> Axes:
        ax = Axes(self, rect)
        self.axes.append(ax)
        return ax

    def add_subplot(self, spec: _SubplotSpec) -> Axes:
        return self.add_axes(spec.rect)

    def add_gridspec(self, nrows, ncols, height_ratios=None, hspace=0.2, wspace=0.2, **_):
        return GridSpec(nrows, ncols, list(height_ratios or []), hspace, wspace)

    def text(self, x, y, s, fontsize=LABEL_PT, weight=None, va="baseline", ha="left", **_):
        self.texts.append(dict(x=float(x), y=float(y), s=str(s), size=float(fontsize),
                               bold=weight == "bold", va=va, ha=ha))

    def suptitle(self, s, fontsize=TITLE_PT, **_):
        self.text(0.5, 0.98, s, fontsize=fontsize, va="top", ha="center")

    def colorbar(self, image: Image, ax=(), shrink=1.0, label="", **_):
        boxes = [a.rect for a in (ax if isinstance(ax, (list, tuple)) else [ax])] or [[0, 0, 1, 1]]
        low = min(b[1] for b in boxes)
        high = max(b[1] + b[3] for b in boxes)
        right = max(b[0] + b[2] for b in boxes)
        height = shrink * (high - low)
        self.colorbars.append(_Colorbar(image, (right + 0.015, low + (high - low - height) / 2,
                                                0.012, height), str(label)))

    def tight_layout(self):
        """Fixed margins for a single panel (room for tick and axis labels and a title)."""
        if len(self.axes) == 1:
            w_pt, h_pt = self.size_in[0] * 72, self.size_in[1] * 72
            left, bottom = 62 / w_pt, 42 / h_pt
            self.axes[0].rect = [left, bottom, 1 - left - 12 / w_pt, 1 - bottom - 28 / h_pt]

    def draw(self) -> Page:
        page = Page(self.size_in[0] * 72, self.size_in[1] * 72)
        for ax in self.axes:
            ax.draw(page)
        for bar in self.colorbars:
            _draw_colorbar(page, bar)
        for t in self.texts:
            _draw_figure_text(page, t)
        return page


def _draw_figure_text(page: Page, t: dict) -> None:
    """Multi-line text at figure fractions (lines 1.2 x the size apart, matplotlib's)."""
    lines = t["s"].split("\n")
    step = 1.2 * t["size"]
    x, y = t["x"] * page.width_pt, t["y"] * page.height_pt
    if t["va"] == "top":
        first = y
        va = "top"
    elif t["va"] == "center":
        first, va = y + step * (len(lines) - 1) / 2, "center"
    else:
        first, va = y + step * (len(lines) - 1), t["va"]
    for i, line in enumerate(lines):
        page.text(x, first - i * step, line, t["size"], bold=t["bold"], ha=t["ha"], va=va)


def _draw_colorbar(page: Page, bar: _Colorbar) -> None:
    x, y, w, h = (bar.rect[0] * page.width_pt, bar.rect[1] * page.height_pt,
                  bar.rect[2] * page.width_pt, bar.rect[3] * page.height_pt)
    image = bar.image
    ramp = np.linspace(image.vmax, image.vmin, 256)[:, None]  # top row = vmax
    page.image(style.colormap_rgb(ramp, image.vmin, image.vmax, image.cmap), x, y, w, h)
    page.stroke_style((0.0, 0.0, 0.0), FRAME_PT)
    page.rect(x, y, w, h)
    ticks = style.nice_ticks(image.vmin, image.vmax)
    span = (image.vmax - image.vmin) or 1.0
    widest = _vertical_ticks(page, x + w, y + (ticks - image.vmin) / span * h,
                             style.tick_labels(ticks), +1)
    if bar.label:
        page.text(x + w + TICK_PT + TICK_PAD_PT + widest + 4 + 0.72 * LABEL_PT, y + h / 2,
                  bar.label, LABEL_PT, ha="center", rotation_deg=90.0)
