"""Reports of a refinement: JSON, a plain-text table, and figures (PDF/PNG).

Writers are atomic (:mod:`csrefine.io_atomic`); :mod:`csrefine.run` stages them with the
particle file and moves them into place together.
"""

from __future__ import annotations

import json
import math

import numpy as np

from . import __version__
from .fsc import FSC_THRESHOLD
from .io_atomic import atomic_output, atomic_write_bytes
from .results import Refinement, result_dict

#: Significant digits of the floats in csrefine.json: beyond every quantity's precision (Cs to
#: 1e-6 mm, pixel sizes to 1e-6 Å), without float32 artefacts such as 1.6079999999999999.
JSON_SIGNIFICANT_DIGITS = 7


def _clean(value):
    """JSON-ready: numpy scalars to Python, non-finite floats to null, floats rounded."""
    if isinstance(value, float):
        return float(f"{value:.{JSON_SIGNIFICANT_DIGITS}g}") if math.isfinite(value) else None
    if isinstance(value, (np.floating,)):
        return _clean(float(value))
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


def report_dict(refinement: Refinement, inputs: dict | None = None, extra: dict | None = None) -> dict:
    """The csrefine.json content: per-group results, band, FSC resolution, timings."""
    out = {
        "csrefine_version": __version__,
        "inputs": inputs or {},
        "resolution_fsc_A": refinement.resolution_A,
        "map_pixel_size_A": refinement.map_pixel_size_A,
        "band_A": refinement.band_A,
        "backend": refinement.backend,
        "groups": [{**result_dict(g), "curves": g.curves} for g in refinement.groups],
        "fsc": [float(v) for v in refinement.fsc] if refinement.fsc is not None else [],
        "timings_s": refinement.timings_s,
    }
    if extra:
        out.update(extra)
    return _clean(out)


def write_json(path, content: dict) -> None:
    atomic_write_bytes(path, (json.dumps(content, indent=2) + "\n").encode())


def _fmt(value, spec, none="-"):
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return none
    return format(value, spec)


def summary_table(refinement: Refinement) -> str:
    """One row per optics group, at most 100 characters wide, for run.out / the event log ("—"
    where a group was not refined; its reason is in the text above)."""
    head = (f"{'group':>5} {'name':<14} {'particles':>9} {'Cs nom.':>7} {'Cs refined (mm)':>15} "
            f"{'z':>6} {'ddef. (Å)':>9} {'matters at':>11}  status")
    lines = [head, "-" * len(head)]
    for g in refinement.groups:
        if g.refined:
            cs = f"{g.cs_refined_mm:.3f} ± {_fmt(g.cs_sigma_mm, '.3f')}"
            z, ddf = _fmt(g.cs_change_z, "+.1f"), f"{g.defocus_offset_A:+.1f}"
            impact = f"{g.resolution_impact_A:.2f} Å" if g.resolution_impact_A else "beyond Nyq."
            status = "refined"
        else:
            cs = z = ddf = impact = "—"
            status = "not refined"
        lines.append(f"{g.optics_group:>5} {g.name[:14]:<14} {g.n_particles:>9} "
                     f"{g.cs_nominal_mm:>7.3f} {cs:>15} {z:>6} {ddf:>9} {impact:>11}  {status}")
    return "\n".join(lines)


def interpretation(g, model_given: bool = False) -> list[str]:
    """Plain sentences answering: Cs +- sigma, reproducibility, pixel-size alternative, impact.

    model_given : an atomic model was given, so the pixel-size calibration (reported after these
    lines) tells a pixel-size error from a Cs error."""
    head = f"Optics group {g.optics_group} ({g.name}, {g.n_particles} particles):"
    if not g.refined:
        return [head, f"  not refined: {g.reason}; Cs stays at the nominal {g.cs_nominal_mm:.3f} mm."]
    held = (f", of which {g.cs_zernike_mm:.3f} mm were held by Z4^0 (rlnEvenZernike) in the input"
            if g.cs_zernike_mm else "")
    lines = [head, f"  Cs = {g.cs_refined_mm:.3f} ± {_fmt(g.cs_sigma_mm, '.3f')} mm{held} "
                   f"(jackknife; nominal {g.cs_nominal_mm:.3f} mm, change "
                   f"{g.cs_refined_mm - g.cs_nominal_mm:+.3f} mm), defocus offset "
                   f"{g.defocus_offset_A:+.1f} Å."]
    lines.append(_significance(g))
    if g.cs_subsets_mm:
        spread = float(np.std(g.cs_subsets_mm, ddof=1)) if len(g.cs_subsets_mm) > 1 else float("nan")
        lines.append(f"  Independent random subsets: {', '.join(f'{c:.3f}' for c in g.cs_subsets_mm)} mm "
                     f"(standard deviation {spread:.3f} mm).")
    lines.extend(_pixel_alternative(g, model_given))
    lines.extend(_anisotropy(g))
    nyquist = 2 * g.pixel_size_A
    if g.resolution_impact_A:
        lines.append(f"  The refined CTF departs from the nominal one by 45 degrees at "
                     f"{g.resolution_impact_A:.2f} Å: it matters for data beyond that resolution.")
    else:
        lines.append(f"  The refined and nominal CTFs differ by less than 45 degrees up to Nyquist "
                     f"({nyquist:.2f} Å): the change has no practical effect at this pixel size.")
    return lines


#: Below this isotropic change (degrees at the band's edge) the anisotropy ratio means little.
SMALL_PHASE_DEG = 5.0


def _anisotropy(g) -> list[str]:
    """How isotropic the measured phase change is (the 2D phase maps quantified)."""
    a = g.anisotropy
    if not a or not math.isfinite(a.get("anisotropic_deg_at_band_edge", float("nan"))):
        return []
    aniso, iso = a["anisotropic_deg_at_band_edge"], a["isotropic_change_deg_at_band_edge"]
    if iso < SMALL_PHASE_DEG:
        return [f"  The measured phase change is small at the band's edge ({iso:.1f} deg); its "
                f"anisotropic part is {aniso:.1f} deg."]
    kind = ("isotropic, as a Cs or pixel-size change is" if aniso < 0.2 * iso else
            "partly anisotropic: look at the 2D phase maps (magnification anisotropy, "
            "astigmatism or tetrafoil also change the k^4 term)")
    return [f"  At the band's edge the isotropic change is {iso:.1f} deg and the anisotropic part "
            f"of the measured phase {aniso:.1f} deg ({100 * aniso / iso:.0f}%): the change is {kind}."]


#: A change of Cs is called significant when it exceeds this many standard errors.
SIGNIFICANT_Z = 3.0


def _significance(g) -> str:
    """Whether the data show a change of Cs at all, whatever the point estimate."""
    z = g.cs_change_z
    if z is None or not math.isfinite(z):
        return "  The significance of the change cannot be judged (no standard error)."
    if abs(z) < SIGNIFICANT_Z:
        return (f"  No significant change: the change is {abs(z):.1f} standard errors "
                f"(|z| < {SIGNIFICANT_Z:g}); the data are consistent with the nominal Cs.")
    return f"  The change is significant: {abs(z):.1f} standard errors (z = {z:+.1f})."


#: Pixel-size errors beyond this (relative) are not taken as an explanation of a Cs change: a
#: microscope's magnification calibration is rarely off by more than a few percent.
PLAUSIBLE_PIXEL_ERROR = 0.05


def _pixel_alternative(g, model_given: bool = False) -> list[str]:
    """The pixel size that would explain the refined Cs instead, where that is plausible."""
    p_alt = g.pixel_size_if_cs_nominal_A
    if p_alt is None:
        return []
    if not math.isfinite(p_alt):
        return ["  No pixel size explains this Cs with the nominal Cs (the refined Cs is not "
                "positive): it is not a pixel-size effect."]
    rel = p_alt / g.pixel_size_A - 1
    text = (f"a pixel size of {p_alt:.4f} Å instead of {g.pixel_size_A:.4f} Å ({100 * rel:+.2f}%)")
    if abs(rel) > PLAUSIBLE_PIXEL_ERROR:
        return [f"  With Cs at its nominal value, only {text} would explain the same CTF: a "
                f"pixel-size error that large is implausible, so this is not a pixel-size effect "
                f"(Cs is a small fraction of its change, as on Cs-corrected microscopes, or the "
                f"k^4 term absorbs another phase error)."]
    which = ("the pixel-size calibration against the given atomic model (below) tells which"
             if model_given else "only an absolute ruler (an atomic model) tells which")
    return [f"  Alternatively, with Cs at its nominal value, {text} explains the same CTF; "
            f"{which}."]


def interpretation_text(refinement: Refinement, model_given: bool = False) -> str:
    """Every group's :func:`interpretation`, one line each."""
    return "\n".join(line for g in refinement.groups for line in interpretation(g, model_given))


def figures(refinement: Refinement, extra_lines=(), plt=None, model_given: bool = False):
    """The report's pages: a summary page (table and verdicts), the half-map FSC with the band,
    and per group the 2D phase change (measured, fitted, residual), the phase change against
    resolution and the likelihood along Cs. Returns a list of (title, figure), in the order of
    :func:`figure_raw_data`.

    plt : the pyplot-like module that makes the figures: ``matplotlib.pyplot`` (the default;
        matplotlib figures) or :mod:`csrefine.pdfplot` (figures that draw straight into a PDF).
    model_given : an atomic model was given (see :func:`interpretation`).
    """
    if plt is None:
        import matplotlib
        matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt

    figs = [("Summary", _summary_figure(plt, refinement, extra_lines, model_given)),
            ("Half-map FSC", _fsc_figure(plt, refinement))]
    figs += [(f"Optics group {g.optics_group}", _group_figure(plt, g))
             for g in refinement.groups if g.curves]
    return figs


def _summary_figure(plt, refinement: Refinement, extra_lines, model_given: bool = False):
    import textwrap

    fig = plt.figure(figsize=(11.7, 8.3))  # A4 landscape
    fig.text(0.04, 0.95, "csrefine: Cs per optics group", fontsize=16, weight="bold", va="top")
    rows = [[str(g.optics_group), g.name[:18], str(g.n_particles), f"{g.cs_nominal_mm:.3f}",
             f"{g.cs_refined_mm:.3f} ± {_fmt(g.cs_sigma_mm, '.3f')}" if g.refined else "—",
             _fmt(g.cs_change_z, "+.1f", "—") if g.refined else "—",
             " ".join(f"{c:.3f}" for c in g.cs_subsets_mm) or "—",
             (f"{g.resolution_impact_A:.2f} Å" if g.resolution_impact_A else "beyond Nyquist")
             if g.refined else "—",
             "refined" if g.refined else "not refined"] for g in refinement.groups]
    cols = ["group", "name", "particles", "Cs nominal (mm)", "Cs refined (mm)", "z",
            "subsets (mm)", "matters at", "status"]
    height = 0.04 * (len(rows) + 1)
    ax = fig.add_axes([0.04, 0.9 - height, 0.92, height])
    ax.axis("off")
    table = ax.table(cellText=rows, colLabels=cols, loc="upper center", cellLoc="center",
                     bbox=[0, 0, 1, 1])
    table.auto_set_font_size(False)
    table.set_fontsize(10)
    lines = "\n".join([interpretation_text(refinement, model_given), *extra_lines]).splitlines()
    text = "\n".join(textwrap.fill(line, 120, subsequent_indent="    ") for line in lines)
    fig.text(0.04, 0.86 - height, text, va="top", ha="left", fontsize=8.5)
    return fig


def _fsc_figure(plt, refinement: Refinement):
    fig, ax = plt.subplots(figsize=(8, 5))
    fsc = np.asarray(refinement.fsc)
    box = 2 * (len(fsc) - 1)
    px = refinement.map_pixel_size_A or 1.0
    k = np.arange(1, len(fsc)) / (box * px)
    ax.plot(k, fsc[1:], color="C0", label="half-map FSC (masked)")
    ax.axhline(FSC_THRESHOLD, color="grey", ls=":", label=f"FSC = {FSC_THRESHOLD}")
    low, high = refinement.band_A
    ax.axvspan(1 / low, 1 / high, color="C2", alpha=0.12, label=f"fitted band {low:.1f}–{high:.2f} Å")
    _resolution_axis(ax, k.max())
    ax.set_ylabel("FSC")
    ax.set_ylim(min(-0.05, float(np.nanmin(fsc[1:])) - 0.05), 1.05)
    ax.set_title(f"Half-map FSC: {refinement.resolution_A:.2f} Å at {FSC_THRESHOLD}")
    ax.legend(fontsize=9)
    fig.tight_layout()
    return fig


def _resolution_axis(ax, k_max_per_A: float, squared: bool = False) -> None:
    """Label an axis in 1/Å (or 1/Å^2) with resolutions in Å."""
    ticks_A = [A for A in (50, 20, 10, 7, 5, 4, 3.5, 3, 2.5, 2.2, 2, 1.8, 1.6, 1.5, 1.4, 1.2, 1)
               if 1 / A <= k_max_per_A * 1.0001]
    power = 2 if squared else 1
    # no crowding at low resolution: ticks at least 6% of the axis apart
    kept = []
    for A in ticks_A:
        if not kept or (1 / A) ** power - (1 / kept[-1]) ** power > 0.06 * k_max_per_A ** power:
            kept.append(A)
    ticks_A = kept
    ax.set_xticks([1 / A**2 if squared else 1 / A for A in ticks_A])
    ax.set_xticklabels([f"{A:g}" for A in ticks_A])
    ax.set_xlabel("resolution (Å)" + (", axis linear in k²" if squared else ""))


def _group_figure(plt, g):
    fig = plt.figure(figsize=(11.7, 8.3))
    fig.suptitle(f"Optics group {g.optics_group} ({g.name}), {g.n_particles} particles: Cs "
                 f"{g.cs_refined_mm:.3f} ± {_fmt(g.cs_sigma_mm, '.3f')} mm (nominal "
                 f"{g.cs_nominal_mm:.3f})", fontsize=12)
    grid = fig.add_gridspec(2, 3, height_ratios=[1, 1], hspace=0.35, wspace=0.3)
    pm = g.curves.get("phase_map")
    if pm:
        _phase_maps(fig, grid, pm, g)
    _phase_profile(fig.add_subplot(grid[1, :2]), g)
    _likelihood(fig.add_subplot(grid[1, 2]), g)
    return fig


def _phase_maps(fig, grid, pm: dict, g) -> None:
    k = np.asarray(pm["k_axis_per_A"], dtype=float)
    panels = [np.asarray(pm[n], dtype=float) for n in ("measured_deg", "fitted_deg",
                                                        "residual_deg")]
    finite = np.concatenate([p[np.isfinite(p)] for p in panels[:2]]) if panels else np.zeros(1)
    lim = float(np.clip(np.percentile(np.abs(finite), 98) if finite.size else 45.0, 10.0, 180.0))
    extent = [k[0], k[-1], k[0], k[-1]]
    titles = ("measured phase change", "fitted (isotropic: defocus + Cs)", "residual")
    for i, (title, data) in enumerate(zip(titles, panels)):
        ax = fig.add_subplot(grid[0, i])
        image = ax.imshow(data, origin="lower", extent=extent, cmap="RdBu_r", vmin=-lim,
                          vmax=lim, interpolation="none")
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("kx (1/Å)")
        if i == 0:
            ax.set_ylabel("ky (1/Å)")
        ax.set_aspect("equal")
    fig.colorbar(image, ax=fig.axes[-3:], shrink=0.8, label="phase (degrees)")
    a = g.anisotropy
    if a:
        fig.text(0.5, 0.485, f"anisotropic part at the band's edge {a['anisotropic_deg_at_band_edge']}"
                 f"° vs isotropic change {a['isotropic_change_deg_at_band_edge']}° (white: too "
                 f"little signal)", ha="center", fontsize=9)


def _phase_profile(ax, g) -> None:
    k2 = np.asarray(g.curves["k2"], dtype=float)
    measured = np.rad2deg(np.asarray(g.curves["measured_delta_rad"], dtype=float))
    sigma = np.rad2deg(np.asarray(g.curves.get("measured_delta_sigma_rad",
                                               np.zeros_like(k2)), dtype=float))
    ax.errorbar(k2, measured, yerr=sigma, fmt=".", ms=3, lw=0.6, color="C0", alpha=0.7,
                label="measured (radial bins, ± 1 s.e.)")
    ax.plot(k2, np.rad2deg(g.curves["fit_delta_rad"]), "-", color="C3", lw=2, label="fit")
    for y in (45, -45):
        ax.axhline(y, color="grey", ls=":", lw=1)
    ax.text(k2.min(), 47, "±45°", color="grey", fontsize=8)
    _resolution_axis(ax, float(np.sqrt(k2.max())), squared=True)
    ax.set_xlim(0, k2.max() * 1.02)
    lim = max(60.0, float(np.nanmax(np.abs(np.rad2deg(g.curves["fit_delta_rad"])))) * 1.3)
    ax.set_ylim(-lim, lim)
    ax.set_ylabel("phase change vs nominal CTF (°)")
    ax.legend(fontsize=8, loc="lower left")


def _likelihood(ax, g) -> None:
    ax.plot(g.curves["cs_axis_mm"], g.curves["log_likelihood"], color="C0")
    ax.axvline(g.cs_nominal_mm, color="grey", ls=":", label=f"nominal {g.cs_nominal_mm:.3f} mm")
    fit = g.curves["cs_fitted_mm"]
    ax.axvline(fit, color="C3", label=f"refined {fit:.3f} mm")
    if g.cs_sigma_mm:
        ax.axvspan(fit - g.cs_sigma_mm, fit + g.cs_sigma_mm, color="C3", alpha=0.15,
                   label=f"± σ {g.cs_sigma_mm:.3f} mm")
    for i, c in enumerate(g.cs_subsets_mm):
        ax.axvline(c, color="C2", ls="--", lw=0.8, label="random subsets" if i == 0 else None)
    half = max(10 * (g.cs_sigma_mm or 0.0), 0.1)
    axis = np.asarray(g.curves["cs_axis_mm"], dtype=float)
    lo, hi = max(axis[0], fit - half), min(axis[-1], fit + half)
    ax.set_xlim(lo, hi)
    shown = np.asarray(g.curves["log_likelihood"], dtype=float)[(axis >= lo) & (axis <= hi)]
    if shown.size > 1:
        ax.set_ylim(float(shown.min()) * 1.05 - 1, 1 + 0.02 * abs(float(shown.min())))
    ax.set_xlabel("Cs (mm)")
    ax.set_ylabel("log-likelihood (defocus profiled)")
    ax.legend(fontsize=7)


def figure_raw_data(refinement: Refinement) -> list[dict]:
    """The data behind each figure of :func:`figures` (same order), JSON-ready."""
    out = [report_dict(refinement)]
    out.append(_clean({"fsc": [float(v) for v in refinement.fsc],
                       "resolution_A": refinement.resolution_A, "band_A": refinement.band_A}))
    out += [_clean({**result_dict(g), "curves": g.curves}) for g in refinement.groups if g.curves]
    return out


def write_pdf(path, refinement: Refinement, extra_figures=(), extra_lines=(),
              model_given: bool = False) -> None:
    """All figures into one PDF (RELION's logfile.pdf), written atomically: drawn by
    :mod:`csrefine.pdfplot` (milliseconds, no matplotlib), or by matplotlib when
    ``extra_figures`` (matplotlib figures of a calibration or of rounds) are to be added."""
    if not extra_figures:
        from . import pdfplot

        pages = [fig for _, fig in figures(refinement, extra_lines, plt=pdfplot,
                                           model_given=model_given)]
        atomic_write_bytes(path, pdfplot.pdf_bytes(pages, "csrefine: Cs per optics group"))
        return
    import matplotlib
    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    from matplotlib.backends.backend_pdf import PdfPages

    figs = figures(refinement, extra_lines, model_given=model_given) + list(extra_figures)
    try:
        with atomic_output(path) as tmp, PdfPages(tmp) as pdf:
            for _, fig in figs:
                pdf.savefig(fig)
    finally:
        for _, fig in figs:
            plt.close(fig)
