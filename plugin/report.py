"""Reports of a refinement: csrefine.json, logfile.pdf and the pages of the cryoSPARC event log.

The words are :mod:`csrefine.report_text`'s, the pages :mod:`csrefine.report_figures`'
(matplotlib). The writers write in place: :class:`csrefine.outputs.OutputDirectory` stages them
with the particle file and moves them into place together.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_pdf import PdfPages

from . import __version__
from .report_figures import details_pages, fsc_page, group_page, summary_pages
from .report_text import label
from .results import Refinement, result_dict

#: Significant digits of the floats in csrefine.json: beyond every quantity's precision (Cs to
#: 1e-6 mm, pixel sizes to 1e-6 Å), without float32 artefacts such as 1.6079999999999999.
JSON_SIGNIFICANT_DIGITS = 7
#: Significant digits of the plotted curves (FSC, phase and likelihood curves): beyond what a
#: plot or a reader of the numbers resolves.
CURVE_SIGNIFICANT_DIGITS = 4
#: Decimals of the 2D phase maps (degrees).
PHASE_MAP_DECIMALS = 1
#: A JSON array of numbers (no strings, objects or arrays inside), as json.dumps indents it.
_FLAT_ARRAY = re.compile(r"\[[^\[\]{}\"]*\]")


def _clean(value, digits: int = JSON_SIGNIFICANT_DIGITS):
    """JSON-ready: numpy scalars to Python, non-finite floats to null, floats rounded to
    ``digits`` significant digits."""
    if isinstance(value, float):
        return float(f"{value:.{digits}g}") if math.isfinite(value) else None
    if isinstance(value, np.floating):
        return _clean(float(value), digits)
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.ndarray):
        return _clean(value.tolist(), digits)
    if isinstance(value, dict):
        return {k: _clean(v, digits) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v, digits) for v in value]
    return value


def _group_json(g) -> dict:
    """A group's results with its plot curves at the precision they carry (the 2D maps to 0.1°)."""
    curves = g.curves
    out = {k: _clean(v, JSON_SIGNIFICANT_DIGITS if k == "cs_fitted_mm" else CURVE_SIGNIFICANT_DIGITS)
           for k, v in curves.items() if k != "phase_map"}
    pm = curves.get("phase_map")
    if pm:
        out["phase_map"] = {k: _clean(np.round(np.asarray(v, dtype=float),
                                               PHASE_MAP_DECIMALS if k != "k_axis_per_A" else 6),
                                      CURVE_SIGNIFICANT_DIGITS + 1)
                            for k, v in pm.items()}
    return _clean({**result_dict(g), "curves": out})


def report_dict(refinement: Refinement, inputs: dict | None = None, extra: dict | None = None) -> dict:
    """The csrefine.json content: per-group results with their plot curves, the band, the FSC
    resolution and curve, timings (``timings_s``: seconds; ``refine`` is the refinement of the
    given half maps, ``wall`` the whole run)."""
    out = {
        "csrefine_version": __version__,
        "inputs": inputs or {},
        "resolution_fsc_A": refinement.resolution_A,
        "map_pixel_size_A": refinement.map_pixel_size_A,
        "band_A": refinement.band_A,
        "backend": refinement.backend,
        "groups": [_group_json(g) for g in refinement.groups],
        "fsc": _clean(refinement.fsc if refinement.fsc is not None else [],
                      CURVE_SIGNIFICANT_DIGITS),
        "timings_s": refinement.timings_s,
    }
    if extra:
        out.update(extra)
    return _clean(out)


def write_json(path, content: dict) -> None:
    """csrefine.json: indented, with each array of numbers on one line."""
    text = json.dumps(content, indent=2, ensure_ascii=False)
    text = _FLAT_ARRAY.sub(lambda m: re.sub(r"\s*\n\s*", " ", m.group(0))
                           .replace("[ ", "[").replace(" ]", "]"), text)
    Path(path).write_bytes((text + "\n").encode())


def _numbered(title: str, index: int) -> str:
    """'Summary', then 'Summary, page 2', ... for the pages of one flow."""
    return title if index == 0 else f"{title}, page {index + 1}"


def refinement_pages(refinement: Refinement, calibration=None, extra_lines=(),
                     report: dict | None = None) -> list[tuple]:
    """The report's pages of a refinement as (title, figure, raw data), in logfile.pdf's order:
    the summary (a headline per group, the table; ``extra_lines`` beneath), the details, the
    half-map FSC with the band, one page per refined group, and the pages of ``calibration``
    (the run's pixel-size calibration, whose verdicts decide each group's status; None without
    an atomic model). Raw data: JSON-ready, the summary's and the details' ``report`` (default:
    :func:`report_dict` of the refinement)."""
    report = report_dict(refinement) if report is None else report
    summary = summary_pages(refinement, calibration, extra_lines)
    details = details_pages(refinement, calibration)
    pages = [(_numbered("Summary", i), fig, report) for i, fig in enumerate(summary)]
    pages += [(_numbered("Details", i), fig, report) for i, fig in enumerate(details)]
    pages.append(("Half-map FSC", fsc_page(refinement),
                  _clean({"fsc": refinement.fsc, "resolution_A": refinement.resolution_A,
                          "band_A": refinement.band_A}, CURVE_SIGNIFICANT_DIGITS)))
    pages += [(label(g), group_page(g), _group_json(g)) for g in refinement.groups if g.curves]
    if calibration is not None:
        pages += [(title, fig, calibration.json) for title, fig in calibration.figures]
    return pages


def write_pdf(path, pages) -> None:
    """logfile.pdf: the figures of ``pages`` ((title, figure, raw data), e.g.
    :func:`refinement_pages`), one a page."""
    metadata = {"Title": "csrefine: Cs per optics group", "Creator": f"csrefine {__version__}"}
    with PdfPages(path, metadata=metadata) as pdf:
        for _, fig, _ in pages:
            pdf.savefig(fig)
