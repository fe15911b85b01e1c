"""``csrefine history plot``: Cs (and the calibrated pixel size) per data set over time."""

from __future__ import annotations

from datetime import date
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from .summary import Panel, counted

#: Width of one panel, and height of the Cs row and of the pixel-size row, inches.
PANEL_WIDTH_IN = 7.0
CS_ROW_HEIGHT_IN = 3.6
PIXEL_ROW_HEIGHT_IN = 2.2


def _dates(datasets) -> list[date]:
    return [date.fromisoformat(d.date) for d in datasets]


def plot_panels(panels: list[Panel], out_path) -> Path:
    """Write the figure: one column per instrument and voltage; top row Cs ± sigma per data set
    over time (outliers in red, Cs at the calibrated pixel size as open squares), the nominal Cs
    and the weighted mean (without outliers, ± its standard error); bottom row, where any data
    set calibrated the pixel size, the calibrated pixel size relative to nominal (%).

    out_path : ``.pdf`` or ``.png`` (any format matplotlib writes). Returns the path.
    """
    if not panels:
        raise ValueError("nothing recorded to plot")
    with_pixel = any(d.pixel_size_calibrated_A for p in panels for d in p.datasets)
    heights = [CS_ROW_HEIGHT_IN, PIXEL_ROW_HEIGHT_IN] if with_pixel else [CS_ROW_HEIGHT_IN]
    fig = Figure(figsize=(PANEL_WIDTH_IN * len(panels), sum(heights)), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(heights), len(panels), squeeze=False, sharex="col",
                        gridspec_kw={"height_ratios": heights})
    for col, panel in enumerate(panels):
        _cs_axes(axes[0][col], panel)
        if with_pixel:
            _pixel_axes(axes[1][col], panel)
    for ax in axes[-1]:
        ax.set_xlabel("date of the data set")
        for label in ax.get_xticklabels():
            label.set_rotation(30)
            label.set_horizontalalignment("right")
    out = Path(out_path)
    fig.savefig(out, dpi=120)
    return out


def _cs_axes(ax, panel: Panel) -> None:
    shown = [d for d in panel.datasets if d.cs_mm is not None and d.cs_sigma_mm]
    for outlier, color, name in ((False, "C0", "refined Cs ± σ"), (True, "C3", "outlier")):
        group = [d for d in shown if d.outlier == outlier]
        if group:
            ax.errorbar(_dates(group), [d.cs_mm for d in group],
                        yerr=[d.cs_sigma_mm for d in group], fmt="o", color=color, capsize=3,
                        label=name)
    cal = [d for d in shown if d.cs_at_calibrated_pixel_mm is not None]
    if cal:
        ax.errorbar(_dates(cal), [d.cs_at_calibrated_pixel_mm for d in cal],
                    yerr=[d.cs_at_calibrated_pixel_sigma_mm or 0 for d in cal], fmt="s",
                    mfc="none", color="C2", capsize=3, label="Cs at calibrated pixel size")
    days = sorted(_dates(panel.datasets))
    middle = days[0] + (days[-1] - days[0]) / 2
    for d, day in zip(shown, _dates(shown)):  # labels left of the points in the right half
        right = day > middle
        ax.annotate(d.label, (day, d.cs_mm), fontsize=6,
                    xytext=(-4 if right else 4, 4), textcoords="offset points",
                    ha="right" if right else "left")
    ax.margins(x=0.06, y=0.12)
    if panel.cs_nominal_mm is not None:
        ax.axhline(panel.cs_nominal_mm, color="grey", ls=":", label=f"nominal {panel.cs_nominal_mm:g} mm")
    s = panel.without_outliers
    if s.mean_mm is not None:
        ax.axhline(s.mean_mm, color="C1", label=f"weighted mean {s.mean_mm:.3f} ± {s.se_mm or 0:.3f} mm")
        if s.se_mm:
            ax.axhspan(s.mean_mm - s.se_mm, s.mean_mm + s.se_mm, color="C1", alpha=0.2)
    kv = f"{panel.voltage_kv:.0f} kV" if panel.voltage_kv else "? kV"
    n_out = sum(d.outlier for d in panel.datasets)
    ax.set_title(f"{panel.instrument}, {kv}: {counted(panel.all_data.n, 'data set')}, "
                 f"{counted(n_out, 'outlier')}")
    ax.set_ylabel("Cs (mm)")
    ax.legend(fontsize=7)


def _pixel_axes(ax, panel: Panel) -> None:
    cal = [d for d in panel.datasets if d.pixel_size_calibrated_A and d.pixel_size_A]
    if cal:
        ax.plot(_dates(cal), [100 * (d.pixel_size_calibrated_A / d.pixel_size_A - 1)
                                     for d in cal], "s", color="C2")
    ax.axhline(0, color="grey", ls=":")
    ax.set_ylabel("calibrated pixel size\n vs nominal (%)")
