"""Colours, line styles, the diverging colour map and tick placement of :mod:`csrefine.pdfplot`,
chosen to look like matplotlib's defaults (tab10 colours, RdBu_r, ``MaxNLocator``-like ticks)."""

from __future__ import annotations

import math

import numpy as np

#: matplotlib's default colour cycle ("C0".."C9", tab10).
CYCLE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2",
         "#7f7f7f", "#bcbd22", "#17becf")
NAMED = {"black": "#000000", "k": "#000000", "white": "#ffffff", "w": "#ffffff",
         "grey": "#808080", "gray": "#808080", "red": "#ff0000", "blue": "#0000ff",
         "green": "#008000", "lightgrey": "#d3d3d3", "lightgray": "#d3d3d3"}
#: ColorBrewer's 11-class RdBu, red to blue; RdBu_r runs from blue (low) to red (high).
RDBU = ("#67001f", "#b2182b", "#d6604d", "#f4a582", "#fddbc7", "#f7f7f7", "#d1e5f0", "#92c5de",
        "#4393c3", "#2166ac", "#053061")
#: Dash patterns per unit of line width (matplotlib's scaled dashes).
DASHES = {"-": (), "solid": (), ":": (1.0, 1.65), "dotted": (1.0, 1.65), "--": (3.7, 1.6),
          "dashed": (3.7, 1.6), "-.": (6.4, 1.6, 1.0, 1.6), "dashdot": (6.4, 1.6, 1.0, 1.6)}
#: Colour of "bad" (NaN) image pixels: the white page shows through, as in matplotlib.
BAD_RGB = (255, 255, 255)


def rgb(color) -> tuple[float, float, float]:
    """(r, g, b) in 0..1 of a colour given as "C<n>", a name, "#rrggbb" or a tuple."""
    if isinstance(color, (tuple, list)):
        return tuple(float(c) for c in color[:3])
    text = str(color)
    if len(text) == 2 and text[0] == "C" and text[1].isdigit():
        text = CYCLE[int(text[1])]
    text = NAMED.get(text, text)
    if not (text.startswith("#") and len(text) == 7):
        raise ValueError(f"unknown colour {color!r}")
    return tuple(int(text[i:i + 2], 16) / 255.0 for i in (1, 3, 5))


def dash(style: str | None, width_pt: float) -> tuple:
    """The dash pattern (points) of a matplotlib line style at ``width_pt``."""
    return tuple(d * width_pt for d in DASHES.get(style or "-", ()))


def colormap_rgb(values: np.ndarray, vmin: float, vmax: float, name: str = "RdBu_r") -> np.ndarray:
    """(..., 3) uint8 colours of ``values`` on the linear colour map ``name`` ("RdBu_r" or
    "RdBu") between vmin and vmax; NaN -> :data:`BAD_RGB`."""
    anchors = np.array([rgb(c) for c in RDBU])
    if name == "RdBu_r":
        anchors = anchors[::-1]
    elif name != "RdBu":
        raise ValueError(f"unknown colour map {name!r}")
    values = np.asarray(values, dtype=float)
    span = (vmax - vmin) or 1.0
    t = np.clip((values - vmin) / span, 0.0, 1.0)
    grid = np.linspace(0.0, 1.0, len(anchors))
    out = np.stack([np.interp(np.nan_to_num(t), grid, anchors[:, c]) for c in range(3)], axis=-1)
    out = np.rint(out * 255).astype(np.uint8)
    out[~np.isfinite(values)] = BAD_RGB
    return out


def nice_ticks(lo: float, hi: float, target: int = 6) -> np.ndarray:
    """Ticks at round steps (1, 2, 2.5, 5 x 10^k) inside [lo, hi], about ``target`` of them."""
    if not (math.isfinite(lo) and math.isfinite(hi)) or hi <= lo:
        return np.array([lo]) if math.isfinite(lo) else np.zeros(0)
    raw = (hi - lo) / target
    mag = 10.0 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1.0, 2.0, 2.5, 5.0, 10.0) if m * mag >= raw * 0.999)
    first = math.ceil(lo / step - 1e-9)
    last = math.floor(hi / step + 1e-9)
    return np.arange(first, last + 1) * step


def tick_labels(ticks) -> list[str]:
    """Labels with the fewest decimals that tell the ticks apart exactly."""
    ticks = [float(t) for t in ticks]
    for decimals in range(0, 7):
        labels = [f"{t:.{decimals}f}" for t in ticks]
        if all(abs(float(s) - t) <= 1e-9 * max(1.0, abs(t)) for s, t in zip(labels, ticks)):
            break
    return [s[1:] if s.startswith("-") and s.strip("-0.") == "" else s for s in labels]
