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
from .pipeline import Refinement, result_dict


def _clean(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
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
        "groups": [result_dict(g) for g in refinement.groups],
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
    """One row per optics group, for run.out / the cryoSPARC event log."""
    head = (f"{'group':>5} {'name':<16} {'particles':>9} {'Cs nominal':>10} {'Cs refined':>10} "
            f"{'sigma':>7} {'subsets (mm)':<22} {'ddefocus A':>10} {'pixel if Cs nom.':>16} "
            f"{'matters at':>10}  status")
    lines = [head, "-" * len(head)]
    for g in refinement.groups:
        subsets = " ".join(f"{c:.3f}" for c in g.cs_subsets_mm) or "-"
        impact = f"{g.resolution_impact_A:.2f} A" if g.resolution_impact_A else "beyond Nyq."
        lines.append(
            f"{g.optics_group:>5} {g.name[:16]:<16} {g.n_particles:>9} {g.cs_nominal_mm:>10.3f} "
            f"{g.cs_refined_mm:>10.3f} {_fmt(g.cs_sigma_mm, '7.3f'):>7} {subsets:<22} "
            f"{g.defocus_offset_A:>10.1f} {_fmt(g.pixel_size_if_cs_nominal_A, '.4f') + ' A':>16} "
            f"{impact:>10}  {'refined' if g.refined else 'NOT refined: ' + g.reason}")
    return "\n".join(lines)


def interpretation(g) -> list[str]:
    """Plain sentences answering: Cs +- sigma, reproducibility, pixel-size alternative, impact."""
    head = f"Optics group {g.optics_group} ({g.name}, {g.n_particles} particles):"
    if not g.refined:
        return [head, f"  not refined: {g.reason}; Cs stays at the nominal {g.cs_nominal_mm:.3f} mm."]
    held = (f", of which {g.cs_zernike_mm:.3f} mm were held by Z4^0 (rlnEvenZernike) in the input"
            if g.cs_zernike_mm else "")
    lines = [head, f"  Cs = {g.cs_refined_mm:.3f} +- {_fmt(g.cs_sigma_mm, '.3f')} mm{held} "
                   f"(jackknife; nominal {g.cs_nominal_mm:.3f} mm, change "
                   f"{g.cs_refined_mm - g.cs_nominal_mm:+.3f} mm), defocus offset "
                   f"{g.defocus_offset_A:+.1f} A."]
    lines.append(_significance(g))
    if g.cs_subsets_mm:
        spread = float(np.std(g.cs_subsets_mm, ddof=1)) if len(g.cs_subsets_mm) > 1 else float("nan")
        lines.append(f"  Independent random subsets: {', '.join(f'{c:.3f}' for c in g.cs_subsets_mm)} mm "
                     f"(standard deviation {spread:.3f} mm).")
    lines.extend(_pixel_alternative(g))
    nyquist = 2 * g.pixel_size_A
    if g.resolution_impact_A:
        lines.append(f"  The refined CTF departs from the nominal one by 45 degrees at "
                     f"{g.resolution_impact_A:.2f} A: it matters for data beyond that resolution.")
    else:
        lines.append(f"  The refined and nominal CTFs differ by less than 45 degrees up to Nyquist "
                     f"({nyquist:.2f} A): the change has no practical effect at this pixel size.")
    return lines


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


def _pixel_alternative(g) -> list[str]:
    """The pixel size that would explain the refined Cs instead, where that is plausible."""
    p_alt = g.pixel_size_if_cs_nominal_A
    if p_alt is None:
        return []
    if not math.isfinite(p_alt):
        return ["  No pixel size explains this Cs with the nominal Cs (the refined Cs is not "
                "positive): it is not a pixel-size effect."]
    rel = p_alt / g.pixel_size_A - 1
    text = (f"a pixel size of {p_alt:.4f} A instead of {g.pixel_size_A:.4f} A ({100 * rel:+.2f}%)")
    if abs(rel) > PLAUSIBLE_PIXEL_ERROR:
        return [f"  With Cs at its nominal value, only {text} would explain the same CTF: a "
                f"pixel-size error that large is implausible, so this is not a pixel-size effect "
                f"(Cs is a small fraction of its change, as on Cs-corrected microscopes, or the "
                f"k^4 term absorbs another phase error)."]
    return [f"  Alternatively, with Cs at its nominal value, {text} explains the same CTF; only "
            f"an absolute ruler (an atomic model) tells which."]


def interpretation_text(refinement: Refinement) -> str:
    return "\n".join(line for g in refinement.groups for line in interpretation(g))


def figures(refinement: Refinement, extra_lines=()):
    """Matplotlib figures: a summary page, FSC with the band, and per group the likelihood along
    Cs and the measured vs fitted phase change. Returns a list of (title, figure), in the order of
    :func:`figure_raw_data`."""
    import matplotlib
    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    figs = []
    fig = plt.figure(figsize=(11, 4 + 0.9 * len(refinement.groups) + 0.3 * len(extra_lines)))
    import textwrap
    lines = "\n".join([interpretation_text(refinement), *extra_lines]).splitlines()
    text = "\n".join(textwrap.fill(line, 130, subsequent_indent="    ") for line in lines)
    fig.text(0.02, 0.98, "csrefine: Cs per optics group\n\n" + text,
             va="top", ha="left", family="monospace", fontsize=8)
    figs.append(("Summary", fig))
    fig, ax = plt.subplots(figsize=(6, 4))
    fsc = refinement.fsc
    shells = np.arange(1, len(fsc))
    ax.plot(shells, fsc[1:], label="half-map FSC (masked)")
    ax.axhline(FSC_THRESHOLD, color="grey", ls=":", label=f"{FSC_THRESHOLD}")
    ax.set_xlabel("Fourier shell (pixels)")
    ax.set_ylabel("FSC")
    ax.set_title(f"Half-map FSC: {refinement.resolution_A:.2f} A; fitted band "
                 f"{refinement.band_A[0]:.1f}-{refinement.band_A[1]:.2f} A")
    ax.legend()
    figs.append(("Half-map FSC", fig))
    for g in refinement.groups:
        if not g.curves:
            continue
        fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4))
        a1.plot(g.curves["cs_axis_mm"], g.curves["log_likelihood"])
        a1.axvline(g.cs_nominal_mm, color="grey", ls=":", label=f"nominal {g.cs_nominal_mm:.3f} mm")
        a1.axvline(g.curves["cs_fitted_mm"], color="C3", label=f"refined {g.curves['cs_fitted_mm']:.3f} mm")
        for c in g.cs_subsets_mm:
            a1.axvline(c, color="C2", alpha=0.5, lw=0.8)
        a1.set_xlabel("Cs (mm)")
        a1.set_ylabel("log-likelihood (profiled over defocus)")
        a1.set_title(f"Optics group {g.optics_group} ({g.name}), {g.n_particles} particles")
        a1.legend(fontsize=8)
        res = 1.0 / np.sqrt(np.asarray(g.curves["k2"]))
        a2.plot(res, np.rad2deg(g.curves["measured_delta_rad"]), ".", ms=2, label="measured (per bin)")
        a2.plot(res, np.rad2deg(g.curves["fit_delta_rad"]), "-", color="C3", label="fit")
        a2.axhline(45, color="grey", ls=":")
        a2.axhline(-45, color="grey", ls=":")
        a2.set_xlim(res.max(), res.min())
        a2.set_xlabel("resolution (A)")
        a2.set_ylabel("phase change vs nominal CTF (deg)")
        a2.legend(fontsize=8)
        fig.tight_layout()
        figs.append((f"Optics group {g.optics_group}", fig))
    return figs


def figure_raw_data(refinement: Refinement) -> list[dict]:
    """The data behind each figure of :func:`figures` (same order), JSON-ready."""
    out = [report_dict(refinement)]
    out.append(_clean({"fsc": [float(v) for v in refinement.fsc],
                       "resolution_A": refinement.resolution_A, "band_A": refinement.band_A}))
    out += [_clean({**result_dict(g), "curves": g.curves}) for g in refinement.groups if g.curves]
    return out


def write_pdf(path, refinement: Refinement, extra_figures=(), extra_lines=()) -> None:
    """All figures into one PDF (RELION's logfile.pdf), written atomically."""
    import matplotlib
    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    from matplotlib.backends.backend_pdf import PdfPages

    figs = figures(refinement, extra_lines) + list(extra_figures)
    try:
        with atomic_output(path) as tmp, PdfPages(tmp) as pdf:
            for _, fig in figs:
                pdf.savefig(fig)
    finally:
        for _, fig in figs:
            plt.close(fig)
