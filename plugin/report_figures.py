"""The pages of a refinement's report: the summary, the details, the half-map FSC with the
fitted band and one page per group."""

from __future__ import annotations

import numpy as np
from matplotlib import colormaps

from . import __version__
from .fsc import FSC_THRESHOLD
from .phase_map import wrap_deg
from .report_layout import Flow, caption, fsc_axes, new_page, plot_fsc, resolution_axis
from .report_text import group_kind, headline, interpretation, label, resolution_text, table_rows, verdict_of
from .results import GroupResult, Refinement

#: Colours of the 2D phase maps: red positive, blue negative, white where masked.
PHASE_COLOURS = colormaps["RdBu_r"].with_extremes(bad="white")
#: Page 1's footnote: the table's words.
FOOTNOTE = ("matters beyond: the resolution where the refined and nominal CTFs (with the fitted "
            "defocus shift) first differ by 45°. standard errors: the change over its jackknife "
            "standard error; from 3 on the change is significant. Every group's full text is on "
            "the next page; every number is in csrefine.json.")


def summary_pages(refinement: Refinement, calibration=None, extra_lines=()) -> list:
    """Page 1 (and its continuation where many groups need it): a headline per group, the
    table, the run's few extra lines (rounds, calibration) and the footnote."""
    kind = group_kind(refinement.groups)
    n = sum(g.n_particles for g in refinement.groups)
    resolution = resolution_text(refinement.resolution_A, refinement.map_pixel_size_A)
    subtitle = (f"{n} particles in {len(refinement.groups)} {kind}s; half-map FSC "
                f"{FSC_THRESHOLD} at {resolution}; "
                f"fitted {refinement.band_A[0]:.1f}–{refinement.band_A[1]:.2f} Å; csrefine {__version__}")
    flow = Flow(f"csrefine: Cs per {kind}", subtitle)
    for g in refinement.groups:
        first, *more = headline(g, verdict_of(calibration, g), calibration is not None)
        flow.text([first], fontsize=11)
        flow.text(["    " + line for line in more], fontsize=10, color="dimgray")
        flow.space(0.4)
    flow.space(0.6)
    flow.table(*table_rows(refinement, calibration), fontsize=11)
    if extra_lines:
        flow.space(1.0)
        flow.text(extra_lines, fontsize=10.5)
    flow.space(1.0)
    flow.text([FOOTNOTE], fontsize=8.5, color="dimgray")
    return flow.pages


def details_pages(refinement: Refinement, calibration=None) -> list:
    """Every group's full interpretation, the calibration's lines and the run's warnings."""
    flow = Flow("Details per group")
    for g in refinement.groups:
        head, *body = interpretation(g, verdict_of(calibration, g), calibration is not None)
        flow.text([head], fontsize=10.5, weight="bold")
        flow.text(body, fontsize=9.5)
        flow.space(0.5)
    if calibration is not None:
        flow.text(["Pixel-size calibration"], fontsize=10.5, weight="bold")
        flow.text(calibration.lines, fontsize=9.5)
        flow.space(0.5)
    if refinement.warnings:
        flow.text(["Warnings"], fontsize=10.5, weight="bold")
        flow.text([f"  {w}" for w in refinement.warnings], fontsize=9.5)
    return flow.pages


def fsc_page(refinement: Refinement):
    """The masked half-map FSC with the threshold and the fitted band."""
    fig = new_page()
    ax = fig.add_axes([0.08, 0.22, 0.86, 0.68])
    px = refinement.map_pixel_size_A or 1.0
    k_max = plot_fsc(ax, refinement.fsc, px, color="C0", label="half-map FSC (masked)")
    fsc_axes(ax, k_max)
    low, high = refinement.band_A
    ax.axvspan(1 / low, 1 / high, color="C2", alpha=0.12, label=f"fitted band {low:.1f}–{high:.2f} Å")
    ax.set_ylabel("FSC")
    ax.set_ylim(min(-0.05, float(np.nanmin(refinement.fsc[1:])) - 0.05), 1.05)
    resolution = resolution_text(refinement.resolution_A, refinement.map_pixel_size_A)
    ax.set_title(f"Half-map FSC: {resolution} at {FSC_THRESHOLD}", fontsize=13)
    ax.legend(fontsize=9, loc="lower left")
    note = (f"The fit uses the band from {low:.1f} Å to {high:.2f} Å: to where the FSC drops "
            f"below {FSC_THRESHOLD} (or the resolution you set), never beyond Nyquist "
            f"({2 * px:.2f} Å).")
    caption(fig, 0.08, 0.11, [note], 0.86)
    return fig


def group_page(g: GroupResult):
    """One group: the 2D phase change (measured, fitted, residual), the phase change against
    resolution (radial bins) and the likelihood along Cs."""
    fig = new_page()
    fig.suptitle(f"{label(g)}, {g.n_particles} particles: Cs {g.cs_refined_mm:.3f} ± "
                 f"{g.cs_sigma_mm:.3f} mm (nominal {g.cs_nominal_mm:.3f} mm)", fontsize=13)
    grid = fig.add_gridspec(2, 3, height_ratios=[1, 1], hspace=0.42, wspace=0.3, left=0.07,
                            right=0.93, top=0.9, bottom=0.08)
    pm = g.curves.get("phase_map")
    if pm:
        _phase_maps(fig, grid, pm, g)
    _phase_profile(fig.add_subplot(grid[1, :2]), g)
    _likelihood(fig.add_subplot(grid[1, 2]), g)
    return fig


def _phase_maps(fig, grid, pm: dict, g: GroupResult) -> None:
    k = np.asarray(pm["k_axis_per_A"], dtype=float)
    measured, fitted, residual = (np.asarray(pm[n], dtype=float)
                                  for n in ("measured_deg", "fitted_deg", "residual_deg"))
    # the measured phase is known modulo 360°: shown on the turn of the fit
    panels = [fitted + wrap_deg(measured - fitted), fitted, residual]
    finite = np.concatenate([p[np.isfinite(p)] for p in panels[:2]])
    lim = float(np.clip(np.percentile(np.abs(finite), 98) if finite.size else 45.0, 10.0, 180.0))
    extent = [k[0], k[-1], k[0], k[-1]]
    titles = ("measured phase change", "fitted (isotropic: defocus + Cs)", "residual")
    axes = []
    for i, (title, data) in enumerate(zip(titles, panels)):
        ax = fig.add_subplot(grid[0, i])
        image = ax.imshow(data, origin="lower", extent=extent, cmap=PHASE_COLOURS, vmin=-lim,
                          vmax=lim, interpolation="nearest")
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("kx (1/Å)")
        if i == 0:
            ax.set_ylabel("ky (1/Å)")
        axes.append(ax)
    fig.colorbar(image, ax=axes, shrink=0.85, label="phase change vs nominal CTF (°)")
    a = g.anisotropy
    if a:
        fig.text(0.5, 0.505, f"anisotropic part at the band's edge "
                 f"{a['anisotropic_deg_at_band_edge']:.1f}° against an isotropic change of "
                 f"{a['isotropic_change_deg_at_band_edge']:.1f}° (white: too little signal)",
                 ha="center", fontsize=9)


def _phase_profile(ax, g: GroupResult) -> None:
    k2 = np.asarray(g.curves["k2"], dtype=float)
    measured = np.rad2deg(np.asarray(g.curves["measured_delta_rad"], dtype=float))
    sigma = np.rad2deg(np.asarray(g.curves.get("measured_delta_sigma_rad", np.zeros_like(k2)),
                                  dtype=float))
    fit = np.rad2deg(np.asarray(g.curves["fit_delta_rad"], dtype=float))
    measured = fit + wrap_deg(measured - fit)  # known modulo 360°: shown on the turn of the fit
    ax.errorbar(k2, measured, yerr=sigma, fmt=".", ms=3, lw=0.6, color="C0", alpha=0.7,
                label="measured (radial bins, ± 1 standard error)")
    ax.plot(k2, fit, "-", color="C3", lw=2, label="fit")
    for y in (45, -45):
        ax.axhline(y, color="grey", ls=":", lw=1)
    ax.text(0.01, 47, "±45°", color="grey", fontsize=8, transform=ax.get_yaxis_transform())
    resolution_axis(ax, float(np.sqrt(k2.max())), squared=True)
    ax.set_xlim(0, k2.max() * 1.02)
    lim = max(60.0, float(np.nanmax(np.abs(fit))) * 1.3)
    ax.set_ylim(-lim, lim)
    ax.set_ylabel("phase change vs nominal CTF (°)")
    ax.legend(fontsize=8, loc="lower left")


def _likelihood(ax, g: GroupResult) -> None:
    axis = np.asarray(g.curves["cs_axis_mm"], dtype=float)
    loglik = np.asarray(g.curves["log_likelihood"], dtype=float)
    fit = g.curves["cs_fitted_mm"]
    half = max(10 * (g.cs_sigma_mm or 0.0), 0.1)
    lo, hi = max(axis[0], fit - half), min(axis[-1], fit + half)
    ax.plot(axis, loglik, color="C0")
    ax.axvline(fit, color="C3", label=f"refined {fit:.3f} mm")
    if g.cs_sigma_mm:
        ax.axvspan(fit - g.cs_sigma_mm, fit + g.cs_sigma_mm, color="C3", alpha=0.15,
                   label=f"± σ {g.cs_sigma_mm:.3f} mm")
    for i, c in enumerate(g.cs_subsets_mm):
        ax.axvline(c, color="C2", ls="--", lw=0.8, label="random subsets" if i == 0 else None)
    nominal = g.cs_nominal_mm
    if lo <= nominal <= hi:
        ax.axvline(nominal, color="grey", ls=":", label=f"nominal {nominal:.3f} mm")
    else:  # off the axis: an arrow at the side where it lies, not a legend entry
        left = nominal < lo
        ax.text(0.02 if left else 0.98, 0.97, f"{'← ' if left else ''}nominal {nominal:.3f} mm"
                f"{'' if left else ' →'}", transform=ax.transAxes, ha="left" if left else "right",
                va="top", fontsize=8, color="grey")
    ax.set_xlim(lo, hi)
    shown = loglik[(axis >= lo) & (axis <= hi)]
    if shown.size > 1:
        ax.set_ylim(float(shown.min()) * 1.05 - 1, 1 + 0.02 * abs(float(shown.min())))
    ax.set_xlabel("Cs (mm)")
    ax.set_ylabel("log-likelihood (defocus profiled)")
    ax.legend(fontsize=7, loc="lower center")
